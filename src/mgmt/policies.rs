//! `/api/policies` and `/api/operator-policies`: list, show, set and clear,
//! in RabbitMQ's JSON shape (`vhost`, `name`, `pattern`, `apply-to`,
//! `definition`, `priority`).
//!
//! Validation, durability and re-evaluation are the broker's
//! ([`crate::broker::Broker::set_policy`], [`crate::broker::Broker::clear_policy`]);
//! bad input is a 400 with RabbitMQ's validation text and changes nothing.
//! Policies are for administrators and policymakers (in the vhosts they can
//! access); operator policies for administrators only; any management user
//! may read the policies of the vhosts it sees.

use super::common::{blocking, created, visible_vhosts, ApiError, ApiResult, Caller};
use super::App;
use crate::broker::policy::PolicyError;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::Value;

pub(super) fn policy_error(e: PolicyError) -> ApiError {
    match e {
        PolicyError::Invalid(reason) => ApiError::bad_request(reason),
        PolicyError::NotFound => ApiError::not_found(),
        PolicyError::Failed(e) => e.into(),
    }
}

fn list(app: &App, caller: &Caller, vhost: Option<&str>, operator: bool) -> Value {
    let seen: Vec<String> = visible_vhosts(app, caller)
        .iter()
        .map(|v| v.name.clone())
        .collect();
    Value::Array(
        app.broker
            .list_policies(vhost, operator)
            .iter()
            .filter(|p| seen.contains(&p.vhost))
            .map(|p| p.to_json())
            .collect(),
    )
}

fn may_write(caller: &Caller, app: &App, vhost: &str, operator: bool) -> ApiResult<()> {
    if operator {
        return caller.require_admin();
    }
    if !caller.policymaker {
        return Err(ApiError::not_authorised("Not policymaker user"));
    }
    caller.vhost(&app.broker, vhost).map(|_| ())
}

async fn list_all(app: App, caller: Caller, operator: bool) -> ApiResult<Json<Value>> {
    if operator {
        caller.require_admin()?;
    }
    Ok(Json(list(&app, &caller, None, operator)))
}

async fn list_vhost(
    app: App,
    caller: Caller,
    vhost: String,
    operator: bool,
) -> ApiResult<Json<Value>> {
    if operator {
        caller.require_admin()?;
    }
    caller.vhost(&app.broker, &vhost)?;
    Ok(Json(list(&app, &caller, Some(&vhost), operator)))
}

async fn get_one(
    app: App,
    caller: Caller,
    vhost: String,
    name: String,
    operator: bool,
) -> ApiResult<Json<Value>> {
    if operator {
        caller.require_admin()?;
    }
    caller.vhost(&app.broker, &vhost)?;
    let p = app
        .broker
        .get_policy(&vhost, &name, operator)
        .ok_or_else(ApiError::not_found)?;
    Ok(Json(p.to_json()))
}

async fn put_one(
    app: App,
    caller: Caller,
    vhost: String,
    name: String,
    operator: bool,
    body: Bytes,
) -> ApiResult<StatusCode> {
    may_write(&caller, &app, &vhost, operator)?;
    let v: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("malformed JSON: {e}")))?;
    // As rabbit_mgmt_util:with_decode([pattern, definition], ...).
    let missing: Vec<String> = ["pattern", "definition"]
        .iter()
        .filter(|k| v.get(**k).is_none())
        .map(|k| format!("{{key_missing,{k}}}"))
        .collect();
    if !missing.is_empty() {
        return Err(ApiError::bad_request(format!("[{}]", missing.join(","))));
    }
    let b = app.broker.clone();
    let existed = blocking(move || b.set_policy(&vhost, &name, operator, &v))
        .await?
        .map_err(policy_error)?;
    Ok(created(existed))
}

async fn delete_one(
    app: App,
    caller: Caller,
    vhost: String,
    name: String,
    operator: bool,
) -> ApiResult<StatusCode> {
    may_write(&caller, &app, &vhost, operator)?;
    let b = app.broker.clone();
    if blocking(move || b.clear_policy(&vhost, &name, operator)).await?? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found())
    }
}

pub async fn list_policies(State(app): State<App>, caller: Caller) -> ApiResult<Json<Value>> {
    list_all(app, caller, false).await
}

pub async fn list_policies_vhost(
    State(app): State<App>,
    caller: Caller,
    Path(vhost): Path<String>,
) -> ApiResult<Json<Value>> {
    list_vhost(app, caller, vhost, false).await
}

pub async fn get_policy(
    State(app): State<App>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    get_one(app, caller, vhost, name, false).await
}

pub async fn put_policy(
    State(app): State<App>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    put_one(app, caller, vhost, name, false, body).await
}

pub async fn delete_policy(
    State(app): State<App>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    delete_one(app, caller, vhost, name, false).await
}

pub async fn list_operator_policies(
    State(app): State<App>,
    caller: Caller,
) -> ApiResult<Json<Value>> {
    list_all(app, caller, true).await
}

pub async fn list_operator_policies_vhost(
    State(app): State<App>,
    caller: Caller,
    Path(vhost): Path<String>,
) -> ApiResult<Json<Value>> {
    list_vhost(app, caller, vhost, true).await
}

pub async fn get_operator_policy(
    State(app): State<App>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    get_one(app, caller, vhost, name, true).await
}

pub async fn put_operator_policy(
    State(app): State<App>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    put_one(app, caller, vhost, name, true, body).await
}

pub async fn delete_operator_policy(
    State(app): State<App>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    delete_one(app, caller, vhost, name, true).await
}
