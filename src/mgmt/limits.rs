//! `/api/vhost-limits` and `/api/user-limits` (administrators only), in
//! RabbitMQ's shapes: a list of `{"vhost": .., "value": {"max-connections": ..}}`
//! (or `"user"`), and `PUT .../{vhost}/{name}` with `{"value": N}`.
//!
//! Validation and durability are the broker's ([`crate::broker::limits`]);
//! bad input is a 400 with RabbitMQ's validation text and changes nothing.

use super::common::{blocking, ApiError, ApiResult, Caller};
use super::policies::policy_error;
use super::App;
use crate::broker::limits::{check_limits, Limits, USER_LIMITS, VHOST_LIMITS};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

fn rows(key: &str, all: Vec<(String, Limits)>) -> Value {
    Value::Array(
        all.into_iter()
            .map(|(k, l)| json!({ key: k, "value": l }))
            .collect(),
    )
}

/// The `value` of a PUT body, checked as one limit of `known` in the set `what`.
fn one_limit(body: &[u8], name: &str, known: &[&str], what: &str) -> ApiResult<i64> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("malformed JSON: {e}")))?;
    let value = v
        .get("value")
        .cloned()
        .ok_or_else(|| ApiError::bad_request("[{key_missing,value}]"))?;
    let mut m = serde_json::Map::new();
    m.insert(name.to_owned(), value);
    let l = check_limits(&m, known, what).map_err(ApiError::bad_request)?;
    Ok(l[name])
}

pub async fn list_vhost_limits(State(app): State<App>, caller: Caller) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    Ok(Json(rows("vhost", app.broker.all_vhost_limits())))
}

pub async fn get_vhost_limits(
    State(app): State<App>,
    caller: Caller,
    Path(vhost): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    caller.vhost(&app.broker, &vhost)?;
    let l = app.broker.vhost_limits(&vhost);
    let all = if l.is_empty() {
        vec![]
    } else {
        vec![(vhost, l)]
    };
    Ok(Json(rows("vhost", all)))
}

pub async fn put_vhost_limit(
    State(app): State<App>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    caller.vhost(&app.broker, &vhost)?;
    let n = one_limit(&body, &name, VHOST_LIMITS, "limits")?;
    let b = app.broker.clone();
    blocking(move || {
        let mut l = b.vhost_limits(&vhost);
        l.insert(name, n);
        b.set_vhost_limits(&vhost, l)
    })
    .await?
    .map_err(policy_error)?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn delete_vhost_limit(
    State(app): State<App>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    caller.vhost(&app.broker, &vhost)?;
    let b = app.broker.clone();
    blocking(move || {
        let mut l = b.vhost_limits(&vhost);
        if l.remove(&name).is_none() {
            return Err(crate::broker::policy::PolicyError::NotFound);
        }
        b.set_vhost_limits(&vhost, l)
    })
    .await?
    .map_err(policy_error)?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn list_user_limits(State(app): State<App>, caller: Caller) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    Ok(Json(rows("user", app.broker.all_user_limits())))
}

pub async fn get_user_limits(
    State(app): State<App>,
    caller: Caller,
    Path(user): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    if !app.broker.users.read().contains_key(&user) {
        return Err(ApiError::not_found());
    }
    let l = app.broker.user_limits(&user);
    let all = if l.is_empty() {
        vec![]
    } else {
        vec![(user, l)]
    };
    Ok(Json(rows("user", all)))
}

pub async fn put_user_limit(
    State(app): State<App>,
    caller: Caller,
    Path((user, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    if !app.broker.users.read().contains_key(&user) {
        return Err(ApiError::not_found());
    }
    let n = one_limit(&body, &name, USER_LIMITS, "user-limits")?;
    let b = app.broker.clone();
    blocking(move || {
        let mut l = b.user_limits(&user);
        l.insert(name, n);
        b.set_user_limits(&user, l)
    })
    .await?
    .map_err(policy_error)?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn delete_user_limit(
    State(app): State<App>,
    caller: Caller,
    Path((user, name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    let b = app.broker.clone();
    blocking(move || {
        let mut l = b.user_limits(&user);
        if l.remove(&name).is_none() {
            return Err(crate::broker::policy::PolicyError::NotFound);
        }
        b.set_user_limits(&user, l)
    })
    .await?
    .map_err(policy_error)?;
    Ok(StatusCode::NO_CONTENT)
}
