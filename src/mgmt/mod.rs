//! The HTTP management API: RabbitMQ's paths and JSON for the common calls,
//! and Prometheus metrics at `/metrics`, on its own port (`mgmt_port`).
//!
//! Runs on the broker's tokio runtime ([`serve`], started by
//! [`crate::server::run_with_mgmt`]). Every `/api` call needs HTTP basic
//! auth against the broker's users; what a user may do follows RabbitMQ's
//! user tags:
//!
//! - `administrator`: everything.
//! - `monitoring`: sees every vhost, connection and channel.
//! - `management` (and `policymaker`): sees the vhosts it has permissions in
//!   and its own connections.
//!
//! Users, vhosts, permissions and definitions are for administrators only.
//! Queue, exchange and binding operations by other users are checked against
//! their AMQP permissions (configure, write, read), as over AMQP.
//!
//! Endpoints are listed in docs/management.md.

mod api;
mod definitions;
pub mod json;
mod prometheus;
pub mod stats;

use crate::broker::vhost::VHost;
use crate::broker::{Access, Broker};
use crate::error::{AmqpError, ReplyCode};
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use base64::Engine;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// What every handler gets.
#[derive(Clone)]
pub struct App {
    pub broker: Arc<Broker>,
    pub stats: Arc<stats::Stats>,
    /// Where AMQP and the API actually listen (the config may say port 0).
    pub amqp_addr: Option<SocketAddr>,
    pub mgmt_addr: Option<SocketAddr>,
}

/// Serve the API on `listener` until `stop` turns true. `amqp_addr` is
/// where AMQP clients connect, for the overview's listeners.
pub async fn serve(
    listener: TcpListener,
    amqp_addr: Option<SocketAddr>,
    broker: Arc<Broker>,
    stop: watch::Receiver<bool>,
) {
    api::mark_started();
    let stats = Arc::new(stats::Stats::default());
    stats.sample(&broker);
    let sampler = tokio::spawn(stats::sample_loop(
        broker.clone(),
        stats.clone(),
        stop.clone(),
    ));
    let app = App {
        broker,
        stats,
        amqp_addr,
        mgmt_addr: listener.local_addr().ok(),
    };
    let mut stop2 = stop.clone();
    let r = axum::serve(
        listener,
        router(app).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        let _ = stop2.wait_for(|s| *s).await;
    })
    .await;
    if let Err(e) = r {
        tracing::error!(error = %e, "management API stopped");
    }
    sampler.abort();
}

pub fn router(app: App) -> Router {
    use api::*;
    Router::new()
        .route("/api/overview", get(overview))
        .route("/api/nodes", get(list_nodes))
        .route("/api/nodes/{name}", get(get_node))
        .route("/api/whoami", get(whoami))
        .route("/api/health/checks/alarms", get(health_alarms))
        .route("/api/health/checks/local-alarms", get(health_alarms))
        .route("/api/aliveness-test/{vhost}", get(aliveness))
        .route("/api/vhosts", get(list_vhosts))
        .route(
            "/api/vhosts/{vhost}",
            get(get_vhost).put(put_vhost).delete(delete_vhost),
        )
        .route("/api/vhosts/{vhost}/permissions", get(vhost_permissions))
        .route("/api/vhosts/{vhost}/connections", get(vhost_connections))
        .route("/api/vhosts/{vhost}/channels", get(vhost_channels))
        .route("/api/users", get(list_users))
        .route(
            "/api/users/{user}",
            get(get_user).put(put_user).delete(delete_user),
        )
        .route("/api/users/{user}/permissions", get(user_permissions))
        .route("/api/permissions", get(list_permissions))
        .route(
            "/api/permissions/{vhost}/{user}",
            get(get_permission)
                .put(put_permission)
                .delete(delete_permission),
        )
        .route("/api/exchanges", get(list_exchanges))
        .route("/api/exchanges/{vhost}", get(list_exchanges_vhost))
        .route(
            "/api/exchanges/{vhost}/{name}",
            get(get_exchange).put(put_exchange).delete(delete_exchange),
        )
        .route("/api/exchanges/{vhost}/{name}/publish", post(publish))
        .route(
            "/api/exchanges/{vhost}/{name}/delayed",
            get(list_delayed).delete(purge_delayed),
        )
        .route(
            "/api/exchanges/{vhost}/{name}/delayed/{message_id}",
            delete(cancel_delayed),
        )
        .route(
            "/api/exchanges/{vhost}/{name}/bindings/source",
            get(exchange_bindings_source),
        )
        .route(
            "/api/exchanges/{vhost}/{name}/bindings/destination",
            get(exchange_bindings_destination),
        )
        .route("/api/queues", get(list_queues))
        .route("/api/queues/{vhost}", get(list_queues_vhost))
        .route(
            "/api/queues/{vhost}/{name}",
            get(get_queue).put(put_queue).delete(delete_queue),
        )
        .route("/api/queues/{vhost}/{name}/contents", delete(purge_queue))
        .route("/api/queues/{vhost}/{name}/get", post(get_messages))
        .route("/api/queues/{vhost}/{name}/bindings", get(queue_bindings))
        .route("/api/bindings", get(list_bindings))
        .route("/api/bindings/{vhost}", get(list_bindings_vhost))
        .route(
            "/api/bindings/{vhost}/e/{source}/{kind}/{dest}",
            get(bindings_between).post(create_binding),
        )
        .route(
            "/api/bindings/{vhost}/e/{source}/{kind}/{dest}/{props}",
            get(get_binding).delete(delete_binding),
        )
        .route("/api/connections", get(list_connections))
        .route(
            "/api/connections/{name}",
            get(get_connection).delete(close_connection),
        )
        .route("/api/connections/{name}/channels", get(connection_channels))
        .route("/api/channels", get(list_channels))
        .route("/api/channels/{name}", get(get_channel))
        .route("/api/consumers", get(list_consumers))
        .route("/api/consumers/{vhost}", get(list_consumers_vhost))
        .route(
            "/api/definitions",
            get(definitions::export_all).post(definitions::import_all),
        )
        .route(
            "/api/definitions/{vhost}",
            get(definitions::export_vhost).post(definitions::import_vhost),
        )
        .route("/metrics", get(prometheus::metrics))
        .fallback(not_found)
        .with_state(app)
}

async fn not_found() -> ApiError {
    ApiError::not_found()
}

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
        })
    }
}

/// Parse a JSON request body; an empty body is `T::default()`.
pub fn parse_body<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> ApiResult<T> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("malformed JSON: {e}")))
}

/// The name of the node, as RabbitMQ shows it ("lepus@hostname").
pub fn node_name() -> &'static str {
    static NODE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NODE.get_or_init(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "localhost".into());
        format!("lepus@{host}")
    })
}

/// Used by handlers that change nothing for a while yet must not block the runtime.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))
}
