//! What the `/api` handlers share.
//!
//! - [`ApiError`] / [`ApiResult`]: errors as RabbitMQ's API answers them,
//!   including the mapping of the broker's [`AmqpError`]s to HTTP statuses.
//! - [`Caller`]: the authenticated user of a request (HTTP basic auth against
//!   the broker's users, then RabbitMQ's user tags), with the vhost and AMQP
//!   permission checks the handlers make. Authentication and permission
//!   checks are the broker's ([`Broker::authenticate`], [`Broker::check_access`]).
//! - Request helpers ([`parse_body`], [`blocking`], `created`, `flag`) and
//!   listing helpers (visible vhosts, sorted queues and exchanges, open
//!   connections) that read the broker's maps and change nothing.

use super::App;
use crate::broker::delivery::ConnShared;
use crate::broker::exchange::Exchange;
use crate::broker::queue::Queue;
use crate::broker::vhost::VHost;
use crate::broker::{Access, Broker, ConnInfo};
use crate::error::{AmqpError, ReplyCode};
use axum::extract::{ConnectInfo, FromRequestParts, Query};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

// ----- errors -----

/// An error as RabbitMQ's API answers it: `{"error": ..., "reason": ...}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub error: String,
    pub reason: String,
}

impl ApiError {
    pub fn new(status: StatusCode, error: &str, reason: impl Into<String>) -> Self {
        ApiError {
            status,
            error: error.into(),
            reason: reason.into(),
        }
    }
    pub fn bad_request(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", reason)
    }
    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "Object Not Found", "Not Found")
    }
    pub fn not_authorised(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "not_authorised", reason)
    }
    pub fn internal(reason: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_server_error",
            reason,
        )
    }
}

impl From<AmqpError> for ApiError {
    fn from(e: AmqpError) -> Self {
        let status = match e.code {
            ReplyCode::NotFound => StatusCode::NOT_FOUND,
            ReplyCode::AccessRefused => StatusCode::FORBIDDEN,
            ReplyCode::ResourceLocked => StatusCode::CONFLICT,
            ReplyCode::InternalError | ReplyCode::ResourceError => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            _ => StatusCode::BAD_REQUEST,
        };
        let error = match status {
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::FORBIDDEN => "access_refused",
            StatusCode::CONFLICT => "resource_locked",
            StatusCode::INTERNAL_SERVER_ERROR => "internal_server_error",
            _ => "bad_request",
        };
        ApiError::new(status, error, e.reply_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (
            self.status,
            axum::Json(json!({"error": self.error, "reason": self.reason})),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"RabbitMQ Management\""),
            );
        }
        r
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

// ----- authentication -----

/// The authenticated user of a request.
#[derive(Clone, Debug)]
pub struct Caller {
    pub name: String,
    pub admin: bool,
    /// administrator or monitoring: sees every vhost and connection.
    pub sees_all: bool,
    /// administrator or policymaker: may set policies (in the vhosts it can access).
    pub policymaker: bool,
}

impl Caller {
    pub fn require_admin(&self) -> ApiResult<()> {
        if self.admin {
            Ok(())
        } else {
            Err(ApiError::not_authorised("Not administrator user"))
        }
    }

    pub fn sees_vhost(&self, broker: &Broker, vhost: &str) -> bool {
        self.sees_all || broker.can_access_vhost(&self.name, vhost)
    }

    /// The vhost, if it exists (404) and the caller may see it (401).
    pub fn vhost(&self, broker: &Broker, name: &str) -> ApiResult<Arc<VHost>> {
        let v = broker.vhost(name).ok_or_else(ApiError::not_found)?;
        if !self.sees_vhost(broker, name) {
            return Err(ApiError::not_authorised("Access refused."));
        }
        Ok(v)
    }

    /// AMQP permission check for an operation on an object; administrators pass.
    pub fn check(
        &self,
        broker: &Broker,
        vhost: &str,
        access: Access,
        kind: &str,
        name: &str,
    ) -> ApiResult<()> {
        if self.admin {
            return Ok(());
        }
        broker
            .check_access(&self.name, vhost, access, kind, name)
            .map_err(|e| ApiError::not_authorised(e.text))
    }
}

impl FromRequestParts<App> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Self::Rejection> {
        let bad = || ApiError::not_authorised("Login failed");
        let value = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(bad)?;
        let encoded = value
            .strip_prefix("Basic ")
            .or_else(|| value.strip_prefix("basic "))
            .ok_or_else(bad)?;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(bad)?;
        let (user, password) = decoded.split_once(':').ok_or_else(bad)?;
        let broker = &app.broker;
        if broker.config.loopback_users.iter().any(|u| u == user) {
            let local = parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip().is_loopback())
                .unwrap_or(true);
            if !local {
                return Err(ApiError::not_authorised(
                    "User can only log in via localhost",
                ));
            }
        }
        let u = broker.authenticate(user, password).ok_or_else(bad)?;
        let has = |t: &str| u.tags.iter().any(|x| x == t);
        let admin = has("administrator");
        let monitoring = has("monitoring");
        if !(admin || monitoring || has("management") || has("policymaker")) {
            return Err(ApiError::not_authorised("Not management user"));
        }
        Ok(Caller {
            name: u.name,
            admin,
            sees_all: admin || monitoring,
            policymaker: admin || has("policymaker"),
        })
    }
}

// ----- requests and answers -----

/// Parse a JSON request body; an empty body is `T::default()`.
pub fn parse_body<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> ApiResult<T> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("malformed JSON: {e}")))
}

/// Used by handlers that change nothing for a while yet must not block the runtime.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))
}

pub(super) fn created(existed: bool) -> StatusCode {
    if existed {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::CREATED
    }
}

pub(super) type Q = Query<HashMap<String, String>>;

pub(super) fn flag(q: &Q, key: &str) -> bool {
    q.get(key).is_some_and(|v| v == "true")
}

/// The default exchange is "amq.default" in paths.
pub(super) fn exchange_name(path_name: &str) -> &str {
    if path_name == "amq.default" {
        ""
    } else {
        path_name
    }
}

/// The name of the node, as RabbitMQ shows it ("lepus@hostname").
static NODE: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Name this node (a cluster member's `node_name`), before the API starts.
pub fn set_node_name(name: &str) {
    let _ = NODE.set(name.to_owned());
}

pub fn node_name() -> &'static str {
    NODE.get_or_init(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "localhost".into());
        format!("lepus@{host}")
    })
}

pub(super) fn rate(x: f64) -> Value {
    json!({ "rate": (x * 10.0).round() / 10.0 })
}

// ----- listing helpers -----

/// The vhosts the caller may see, sorted by name.
pub(super) fn visible_vhosts(app: &App, caller: &Caller) -> Vec<Arc<VHost>> {
    let mut v: Vec<_> = app
        .broker
        .vhosts
        .read()
        .values()
        .filter(|v| caller.sees_vhost(&app.broker, &v.name))
        .cloned()
        .collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

pub(super) fn sorted_queues(v: &VHost) -> Vec<Arc<Queue>> {
    let mut qs: Vec<_> = v.queues.read().values().cloned().collect();
    qs.sort_by(|a, b| a.name.cmp(&b.name));
    qs
}

pub(super) fn sorted_exchanges(v: &VHost) -> Vec<Arc<Exchange>> {
    let mut xs: Vec<_> = v.exchanges.read().values().cloned().collect();
    xs.sort_by(|a, b| a.name.cmp(&b.name));
    xs
}

pub(super) fn connections(broker: &Broker) -> Vec<(ConnInfo, Arc<ConnShared>)> {
    let mut c: Vec<_> = broker.connections.lock().values().cloned().collect();
    c.sort_by_key(|(i, _)| i.id);
    c
}
