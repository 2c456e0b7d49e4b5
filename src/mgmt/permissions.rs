//! `/api/permissions`, `/api/permissions/{vhost}/{user}` and the
//! per-user and per-vhost lists (administrators only).
//!
//! The regexes are checked by the broker's [`crate::broker::Permission::new`];
//! setting and clearing are [`crate::broker::Broker::set_permissions`] and
//! [`crate::broker::Broker::clear_permissions`].

use super::common::{blocking, created, parse_body, ApiError, ApiResult, Caller};
use super::App;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

fn permissions_where(app: &App, f: impl Fn(&str, &str) -> bool) -> Value {
    let mut ps: Vec<_> = app
        .broker
        .permissions
        .read()
        .iter()
        .filter(|((u, v), _)| f(u, v))
        .map(|((u, v), p)| (v.clone(), u.clone(), p.clone()))
        .collect();
    ps.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    Value::Array(
        ps.into_iter()
            .map(|(v, u, p)| json!({"user": u, "vhost": v, "configure": p.configure, "write": p.write, "read": p.read}))
            .collect(),
    )
}

pub async fn list_permissions(State(app): State<App>, caller: Caller) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    Ok(Json(permissions_where(&app, |_, _| true)))
}

pub async fn user_permissions(
    State(app): State<App>,
    caller: Caller,
    Path(user): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    if !app.broker.users.read().contains_key(&user) {
        return Err(ApiError::not_found());
    }
    Ok(Json(permissions_where(&app, |u, _| u == user)))
}

pub async fn vhost_permissions(
    State(app): State<App>,
    caller: Caller,
    Path(vhost): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    caller.vhost(&app.broker, &vhost)?;
    Ok(Json(permissions_where(&app, |_, v| v == vhost)))
}

pub async fn get_permission(
    State(app): State<App>,
    caller: Caller,
    Path((vhost, user)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    let p = app
        .broker
        .permissions
        .read()
        .get(&(user.clone(), vhost.clone()))
        .cloned()
        .ok_or_else(ApiError::not_found)?;
    Ok(Json(
        json!({"user": user, "vhost": vhost, "configure": p.configure, "write": p.write, "read": p.read}),
    ))
}

#[derive(Deserialize, Default)]
struct PutPermission {
    configure: Option<String>,
    write: Option<String>,
    read: Option<String>,
}

pub async fn put_permission(
    State(app): State<App>,
    caller: Caller,
    Path((vhost, user)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    let req: PutPermission = parse_body(&body)?;
    let b = app.broker.clone();
    if b.vhost(&vhost).is_none() || !b.users.read().contains_key(&user) {
        return Err(ApiError::not_found());
    }
    let (Some(c), Some(w), Some(r)) = (req.configure, req.write, req.read) else {
        return Err(ApiError::bad_request(
            "configure, write and read must all be set",
        ));
    };
    crate::broker::Permission::new(&c, &w, &r).map_err(ApiError::bad_request)?;
    let existed = b
        .permissions
        .read()
        .contains_key(&(user.clone(), vhost.clone()));
    blocking(move || b.set_permissions(&user, &vhost, &c, &w, &r)).await??;
    Ok(created(existed))
}

pub async fn delete_permission(
    State(app): State<App>,
    caller: Caller,
    Path((vhost, user)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    let b = app.broker.clone();
    if !b
        .permissions
        .read()
        .contains_key(&(user.clone(), vhost.clone()))
    {
        return Err(ApiError::not_found());
    }
    blocking(move || b.clear_permissions(&user, &vhost)).await??;
    Ok(StatusCode::NO_CONTENT)
}
