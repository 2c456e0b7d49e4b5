//! `/api/users` and `/api/users/{user}`: list, show, create or update,
//! delete (administrators only). A user's permissions are in `permissions.rs`.
//!
//! Password hashing and the user store are the broker's
//! ([`crate::broker::hash_password`], [`crate::broker::Broker::put_user`],
//! [`crate::broker::Broker::delete_user`]). Parsing RabbitMQ's tag formats
//! and checking an imported hash's shape is done here, for this API and for
//! definitions import.

use super::common::{blocking, created, parse_body, ApiError, ApiResult, Caller};
use super::App;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};

fn user_json(u: &crate::broker::User) -> Value {
    json!({
        "name": u.name,
        "password_hash": u.password_hash,
        "hashing_algorithm": "rabbit_password_hashing_sha256",
        "tags": u.tags,
        "limits": {},
    })
}

pub async fn list_users(State(app): State<App>, caller: Caller) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    let mut users: Vec<_> = app.broker.users.read().values().cloned().collect();
    users.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Json(Value::Array(users.iter().map(user_json).collect())))
}

pub async fn get_user(
    State(app): State<App>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    let u = app
        .broker
        .users
        .read()
        .get(&name)
        .cloned()
        .ok_or_else(ApiError::not_found)?;
    Ok(Json(user_json(&u)))
}

#[derive(Deserialize, Default)]
struct PutUser {
    password: Option<String>,
    password_hash: Option<String>,
    hashing_algorithm: Option<String>,
    #[serde(default)]
    tags: Value,
}

pub async fn put_user(
    State(app): State<App>,
    caller: Caller,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    let req: PutUser = parse_body(&body)?;
    let tags = parse_tags(&req.tags)?;
    let existing = app.broker.users.read().get(&name).cloned();
    let hash = match (req.password, req.password_hash) {
        (Some(p), _) => crate::broker::hash_password(&p),
        (None, Some(h)) => {
            check_password_hash(&h, req.hashing_algorithm.as_deref())
                .map_err(ApiError::bad_request)?;
            h
        }
        (None, None) => match &existing {
            Some(u) => u.password_hash.clone(),
            None => {
                return Err(ApiError::bad_request(
                    "password or password_hash must be set",
                ))
            }
        },
    };
    if name.is_empty() {
        return Err(ApiError::bad_request("user name must not be empty"));
    }
    let b = app.broker.clone();
    blocking(move || b.put_user(&name, hash, tags)).await??;
    Ok(created(existing.is_some()))
}

pub async fn delete_user(
    State(app): State<App>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    let b = app.broker.clone();
    if !blocking(move || b.delete_user(&name)).await?? {
        return Err(ApiError::not_found());
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Tags as RabbitMQ accepts them: "a,b" or ["a", "b"].
pub fn parse_tags(v: &Value) -> ApiResult<Vec<String>> {
    match v {
        Value::Null => Ok(vec![]),
        Value::String(s) => Ok(s
            .split(',')
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
            .collect()),
        Value::Array(a) => a
            .iter()
            .map(|t| {
                t.as_str()
                    .map(|s| s.trim().to_owned())
                    .ok_or_else(|| ApiError::bad_request("tags must be strings"))
            })
            .collect(),
        _ => Err(ApiError::bad_request(
            "tags must be a string or a list of strings",
        )),
    }
}

/// A password hash in RabbitMQ's sha256 scheme: base64 of salt(4) ++ sha256 (or "" for no password).
pub fn check_password_hash(hash: &str, algorithm: Option<&str>) -> Result<(), String> {
    match algorithm {
        None | Some("rabbit_password_hashing_sha256") => {}
        Some(other) => {
            return Err(format!(
                "unsupported hashing_algorithm {other:?}: only rabbit_password_hashing_sha256"
            ))
        }
    }
    if hash.is_empty() {
        return Ok(());
    }
    match base64::engine::general_purpose::STANDARD.decode(hash) {
        Ok(raw) if raw.len() == 36 => Ok(()),
        _ => Err("password_hash is not a base64 salted SHA-256 hash (36 bytes)".into()),
    }
}
