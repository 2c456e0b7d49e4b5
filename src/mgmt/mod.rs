//! The HTTP management API: RabbitMQ's paths and JSON for the common calls,
//! and Prometheus metrics at `/metrics`, on its own port (`mgmt_port`),
//! over HTTPS with the `[tls]` certificate when `mgmt_tls` is set
//! ([`https`]).
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
//! Users, vhosts, permissions, operator policies, limits and definitions are
//! for administrators only; policies for administrators and policymakers.
//! Queue, exchange and binding operations by other users are checked against
//! their AMQP permissions (configure, write, read), as over AMQP.
//!
//! The web console (`console.rs`) is served at `/`, its assets under
//! `/console/`; it uses the same `/api` calls as any client.
//!
//! Endpoints are listed in docs/management.md. Every path also answers with
//! a trailing slash; `listing.rs` applies RabbitMQ's pagination, filter,
//! sort and `columns=` parameters to any GET's JSON.
//!
//! Never writes AMQP frames nor imports the channel, connection or protocol
//! layers: everything goes through the broker (its publish pipeline, its
//! checks), so the API and AMQP cannot drift apart.

mod bindings;
mod common;
pub use common::set_node_name;
mod connections;
mod console;
mod definitions;
mod exchanges;
mod https;
pub mod json;
mod limits;
mod listing;
mod moving;
mod overview;
mod permissions;
mod policies;
mod prometheus;
mod queues;
pub mod stats;
mod users;
mod vhosts;

pub use common::{blocking, node_name, parse_body, ApiError, ApiResult, Caller};

use crate::broker::Broker;
use axum::routing::{delete, get, post, put, MethodRouter};
use axum::Router;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// What every handler gets.
#[derive(Clone)]
pub struct App {
    pub broker: Arc<Broker>,
    pub stats: Arc<stats::Stats>,
    /// Where AMQP, amqps and the API actually listen (the config may say
    /// port 0).
    pub amqp_addr: Option<SocketAddr>,
    pub amqps_addr: Option<SocketAddr>,
    pub mgmt_addr: Option<SocketAddr>,
    /// The API is served over HTTPS.
    pub https: bool,
}

/// Serve the API on every listener until `stop` turns true: over HTTPS if
/// `tls` is given (`mgmt_tls`). `amqp_addr` and `amqps_addr` are where AMQP
/// clients connect, for the overview's listeners.
pub async fn serve(
    listeners: Vec<TcpListener>,
    amqp_addr: Option<SocketAddr>,
    amqps_addr: Option<SocketAddr>,
    tls: Option<Arc<crate::tls::Tls>>,
    broker: Arc<Broker>,
    stop: watch::Receiver<bool>,
) {
    overview::mark_started();
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
        amqps_addr,
        mgmt_addr: listeners.first().and_then(|l| l.local_addr().ok()),
        https: tls.is_some(),
    };
    let mut servers = tokio::task::JoinSet::new();
    for listener in listeners {
        match &tls {
            Some(tls) => match https::HttpsListener::new(listener, tls) {
                Ok(l) => {
                    servers.spawn(serve_on(l, app.clone(), stop.clone()));
                }
                Err(e) => tracing::error!(error = %e, "management API listener lost"),
            },
            None => {
                servers.spawn(serve_on(listener, app.clone(), stop.clone()));
            }
        }
    }
    while servers.join_next().await.is_some() {}
    sampler.abort();
}

/// Run the router on one listener, plain or TLS, until `stop`.
async fn serve_on<L>(listener: L, app: App, mut stop: watch::Receiver<bool>)
where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    use axum::serve::ListenerExt;
    let service = router(app).into_make_service_with_connect_info::<SocketAddr>();
    // tap_io (doing nothing) gives any listener axum's ConnectInfo<SocketAddr>,
    // which the guest-from-loopback check reads.
    let r = axum::serve(listener.tap_io(|_| {}), service)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await;
    if let Err(e) = r {
        tracing::error!(error = %e, "management API stopped");
    }
}

/// Every route, grouped by the module that serves it.
pub fn router(app: App) -> Router {
    Router::new()
        // overview.rs: the node as a whole
        .route_both("/api/overview", get(overview::overview))
        .route_both("/api/whoami", get(overview::whoami))
        .route_both("/api/nodes", get(overview::list_nodes))
        .route_both("/api/nodes/{name}", get(overview::get_node))
        .route_both("/api/health/checks/alarms", get(overview::health_alarms))
        .route_both(
            "/api/health/checks/local-alarms",
            get(overview::health_alarms),
        )
        .route_both("/api/aliveness-test/{vhost}", get(overview::aliveness))
        // vhosts.rs
        .route_both("/api/vhosts", get(vhosts::list_vhosts))
        .route_both(
            "/api/vhosts/{vhost}",
            get(vhosts::get_vhost)
                .put(vhosts::put_vhost)
                .delete(vhosts::delete_vhost),
        )
        // users.rs
        .route_both("/api/users", get(users::list_users))
        .route_both(
            "/api/users/{user}",
            get(users::get_user)
                .put(users::put_user)
                .delete(users::delete_user),
        )
        // permissions.rs
        .route_both("/api/permissions", get(permissions::list_permissions))
        .route_both(
            "/api/permissions/{vhost}/{user}",
            get(permissions::get_permission)
                .put(permissions::put_permission)
                .delete(permissions::delete_permission),
        )
        .route_both(
            "/api/users/{user}/permissions",
            get(permissions::user_permissions),
        )
        .route_both(
            "/api/vhosts/{vhost}/permissions",
            get(permissions::vhost_permissions),
        )
        // exchanges.rs: exchanges, publish, delayed messages
        .route_both("/api/exchanges", get(exchanges::list_exchanges))
        .route_both(
            "/api/exchanges/{vhost}",
            get(exchanges::list_exchanges_vhost),
        )
        .route_both(
            "/api/exchanges/{vhost}/{name}",
            get(exchanges::get_exchange)
                .put(exchanges::put_exchange)
                .delete(exchanges::delete_exchange),
        )
        .route_both(
            "/api/exchanges/{vhost}/{name}/publish",
            post(exchanges::publish),
        )
        .route_both(
            "/api/exchanges/{vhost}/{name}/delayed",
            get(exchanges::list_delayed).delete(exchanges::purge_delayed),
        )
        .route_both(
            "/api/exchanges/{vhost}/{name}/delayed/{message_id}",
            delete(exchanges::cancel_delayed),
        )
        // queues.rs: queues, purge, get
        .route_both("/api/queues", get(queues::list_queues))
        .route_both("/api/queues/{vhost}", get(queues::list_queues_vhost))
        .route_both(
            "/api/queues/{vhost}/{name}",
            get(queues::get_queue)
                .put(queues::put_queue)
                .delete(queues::delete_queue),
        )
        .route_both(
            "/api/queues/{vhost}/{name}/contents",
            delete(queues::purge_queue),
        )
        .route_both("/api/queues/{vhost}/{name}/get", post(queues::get_messages))
        // moving.rs: a batch of a queue's messages to another, safely
        .route_both(
            "/api/queues/{vhost}/{name}/move",
            post(moving::move_messages),
        )
        // bindings.rs, including an exchange's and a queue's binding lists
        .route_both("/api/bindings", get(bindings::list_bindings))
        .route_both("/api/bindings/{vhost}", get(bindings::list_bindings_vhost))
        .route_both(
            "/api/bindings/{vhost}/e/{source}/{kind}/{dest}",
            get(bindings::bindings_between).post(bindings::create_binding),
        )
        .route_both(
            "/api/bindings/{vhost}/e/{source}/{kind}/{dest}/{props}",
            get(bindings::get_binding).delete(bindings::delete_binding),
        )
        .route_both(
            "/api/exchanges/{vhost}/{name}/bindings/source",
            get(bindings::exchange_bindings_source),
        )
        .route_both(
            "/api/exchanges/{vhost}/{name}/bindings/destination",
            get(bindings::exchange_bindings_destination),
        )
        .route_both(
            "/api/queues/{vhost}/{name}/bindings",
            get(bindings::queue_bindings),
        )
        // connections.rs: connections, channels, consumers
        .route_both("/api/connections", get(connections::list_connections))
        .route_both(
            "/api/connections/{name}",
            get(connections::get_connection).delete(connections::close_connection),
        )
        .route_both(
            "/api/connections/{name}/channels",
            get(connections::connection_channels),
        )
        .route_both(
            "/api/vhosts/{vhost}/connections",
            get(connections::vhost_connections),
        )
        .route_both("/api/channels", get(connections::list_channels))
        .route_both("/api/channels/{name}", get(connections::get_channel))
        .route_both(
            "/api/vhosts/{vhost}/channels",
            get(connections::vhost_channels),
        )
        .route_both("/api/consumers", get(connections::list_consumers))
        .route_both(
            "/api/consumers/{vhost}",
            get(connections::list_consumers_vhost),
        )
        // policies.rs: policies and operator policies
        .route_both("/api/policies", get(policies::list_policies))
        .route_both("/api/policies/{vhost}", get(policies::list_policies_vhost))
        .route_both(
            "/api/policies/{vhost}/{name}",
            get(policies::get_policy)
                .put(policies::put_policy)
                .delete(policies::delete_policy),
        )
        .route_both(
            "/api/operator-policies",
            get(policies::list_operator_policies),
        )
        .route_both(
            "/api/operator-policies/{vhost}",
            get(policies::list_operator_policies_vhost),
        )
        .route_both(
            "/api/operator-policies/{vhost}/{name}",
            get(policies::get_operator_policy)
                .put(policies::put_operator_policy)
                .delete(policies::delete_operator_policy),
        )
        // limits.rs: vhost and user limits
        .route_both("/api/vhost-limits", get(limits::list_vhost_limits))
        .route_both("/api/vhost-limits/{vhost}", get(limits::get_vhost_limits))
        .route_both(
            "/api/vhost-limits/{vhost}/{name}",
            put(limits::put_vhost_limit).delete(limits::delete_vhost_limit),
        )
        .route_both("/api/user-limits", get(limits::list_user_limits))
        .route_both("/api/user-limits/{user}", get(limits::get_user_limits))
        .route_both(
            "/api/user-limits/{user}/{name}",
            put(limits::put_user_limit).delete(limits::delete_user_limit),
        )
        // definitions.rs
        .route_both(
            "/api/definitions",
            get(definitions::export_all).post(definitions::import_all),
        )
        .route_both(
            "/api/definitions/{vhost}",
            get(definitions::export_vhost).post(definitions::import_vhost),
        )
        // prometheus.rs
        .route_both("/metrics", get(prometheus::metrics))
        // console.rs: the web console's page and assets
        .route("/", get(console::index))
        .route("/console/{*file}", get(console::asset))
        .fallback(not_found)
        .layer(axum::middleware::from_fn(listing::list_params))
        .layer(axum::middleware::from_fn(console::no_browser_prompt))
        .with_state(app)
}

async fn not_found() -> ApiError {
    ApiError::not_found()
}

/// Every path also answers with a trailing slash (`/api/connections/`), as
/// RabbitMQ's API does.
trait RouteBoth {
    fn route_both(self, path: &str, method: MethodRouter<App>) -> Self;
}

impl RouteBoth for Router<App> {
    fn route_both(self, path: &str, method: MethodRouter<App>) -> Self {
        self.route(path, method.clone())
            .route(&format!("{path}/"), method)
    }
}
