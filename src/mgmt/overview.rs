//! The node as a whole: `/api/overview`, `/api/whoami`, `/api/nodes`,
//! `/api/health/checks/*alarms` and `/api/aliveness-test/{vhost}`.
//!
//! Reads the broker's totals, alarms, config and store sizes, and the
//! sampled rates in [`super::stats`]; the aliveness test declares its queue
//! through [`crate::broker::Broker::declare_queue`] and publishes with
//! [`super::exchanges::publish_message`]. Nothing here changes broker state
//! except that test queue.

use super::common::{connections, node_name, rate, visible_vhosts, ApiError, ApiResult, Caller};
use super::exchanges::publish_message;
use super::App;
use crate::broker::Access;
use amq_protocol::protocol::BasicProperties;
use amq_protocol::types::FieldTable;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

pub async fn overview(State(app): State<App>, caller: Caller) -> Json<Value> {
    let b = &app.broker;
    let vhosts = visible_vhosts(&app, &caller);
    let mut queues = vec![];
    let mut exchanges = 0;
    for v in &vhosts {
        queues.extend(v.queues.read().values().cloned());
        exchanges += v.exchanges.read().len();
    }
    let totals = app.stats.totals(&queues);
    let r = app.stats.total_rates();
    let conns: Vec<_> = connections(b)
        .into_iter()
        .filter(|(i, _)| caller.sees_all || i.user == caller.name)
        .collect();
    let channels: u32 = conns.iter().map(|(i, _)| i.channels).sum();
    let consumers: u32 = queues.iter().map(|q| q.consumer_count()).sum();
    let cfg = &b.config;
    Json(json!({
        "management_version": "3.10.0",
        "rates_mode": "basic",
        "rabbitmq_version": "3.10.0",
        "product_name": "Lepus",
        "product_version": env!("CARGO_PKG_VERSION"),
        "cluster_name": "lepus",
        "node": node_name(),
        "erlang_version": "none (Rust)",
        "exchange_types": [
            {"name": "direct", "description": "AMQP direct exchange, as per the AMQP specification", "enabled": true},
            {"name": "fanout", "description": "AMQP fanout exchange, as per the AMQP specification", "enabled": true},
            {"name": "headers", "description": "AMQP headers exchange, as per the AMQP specification", "enabled": true},
            {"name": "topic", "description": "AMQP topic exchange, as per the AMQP specification", "enabled": true},
            {"name": "x-consistent-hash", "description": "Consistent Hashing Exchange", "enabled": true},
            {"name": "x-delayed-message", "description": "Delayed Message Exchange", "enabled": true},
        ],
        "message_stats": {
            "publish": totals.published, "publish_details": rate(r.publish),
            "deliver_get": totals.delivered, "deliver_get_details": rate(r.deliver),
            "ack": totals.acked, "ack_details": rate(r.ack),
            "redeliver": totals.redelivered, "redeliver_details": rate(r.redeliver),
            "confirm": b.confirms.load(std::sync::atomic::Ordering::Relaxed),
            "confirm_details": rate(r.confirm),
        },
        "queue_totals": {
            "messages": totals.ready + totals.unacked, "messages_details": rate(r.messages),
            "messages_ready": totals.ready, "messages_ready_details": rate(r.ready),
            "messages_unacknowledged": totals.unacked, "messages_unacknowledged_details": rate(r.unacked),
        },
        "object_totals": {
            "connections": conns.len(),
            "channels": channels,
            "exchanges": exchanges,
            "queues": queues.len(),
            "consumers": consumers,
        },
        // One per address, as RabbitMQ lists its listeners.
        "listeners": cfg.bind.iter().map(|ip| json!(
            {"node": node_name(), "protocol": "amqp", "ip_address": ip,
             "port": app.amqp_addr.map(|a| a.port()).unwrap_or(cfg.port)}))
            .chain(app.amqps_addr.iter().flat_map(|a| cfg.bind.iter().map(|ip| json!(
            {"node": node_name(), "protocol": "amqp/ssl", "ip_address": ip,
             "port": a.port()}))))
            .chain(cfg.mgmt_bind.iter().map(|ip| json!(
            {"node": node_name(), "protocol": if app.https { "https" } else { "http" }, "ip_address": ip,
             "port": app.mgmt_addr.map(|a| a.port()).unwrap_or(cfg.mgmt_port)})))
            .collect::<Vec<_>>(),
        "alarms": *b.alarm_reasons.lock(),
        "store": {
            "disk_bytes": b.store.disk_bytes(),
            "bytes_used": b.store.bytes_used(),
            "segments": b.store.segment_count(),
        },
    }))
}

pub async fn whoami(caller: Caller, State(app): State<App>) -> Json<Value> {
    let tags = app
        .broker
        .users
        .read()
        .get(&caller.name)
        .map(|u| u.tags.clone())
        .unwrap_or_default();
    Json(json!({"name": caller.name, "tags": tags}))
}

/// When this process started serving (for a node's uptime).
static STARTED: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

pub fn mark_started() {
    STARTED.get_or_init(std::time::Instant::now);
}

/// The open-files limit (RLIMIT_NOFILE).
fn fd_limit() -> u64 {
    let mut r: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: a valid out-pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } == 0 {
        r.rlim_cur
    } else {
        0
    }
}

/// This node, in the shape of RabbitMQ's /api/nodes entries (the fields
/// monitoring tools read: memory, disk, alarms, file descriptors, uptime).
fn node_json(app: &App) -> Value {
    let b = &app.broker;
    let limits = &b.config.limits;
    let reasons = b.alarm_reasons.lock().clone();
    let mem_limit = crate::sys::total_memory()
        .map(|t| (t as f64 * limits.memory_high_watermark) as u64)
        .unwrap_or(0);
    let fd_used = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0);
    let fd_total = fd_limit();
    json!({
        "name": node_name(),
        "type": "disc",
        "running": true,
        "being_drained": false,
        "os_pid": std::process::id().to_string(),
        "processors": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "uptime": STARTED.get().map(|s| s.elapsed().as_millis() as u64).unwrap_or(0),
        "mem_used": crate::sys::rss_bytes().unwrap_or(0),
        "mem_limit": mem_limit,
        "mem_alarm": reasons.iter().any(|r| r.starts_with("memory")),
        "mem_calculation_strategy": "rss",
        "disk_free": crate::sys::disk_free(&b.config.data_dir).unwrap_or(0),
        "disk_free_limit": limits.disk_free_limit,
        "disk_free_alarm": reasons.iter().any(|r| r.starts_with("disk")),
        "fd_used": fd_used,
        "fd_total": fd_total,
        "sockets_used": b.connections.lock().len(),
        "sockets_total": fd_total,
        "partitions": [],
        "net_ticktime": 60,
        "db_dir": b.config.data_dir.display().to_string(),
        "enabled_plugins": [],
        "config_files": [],
        "log_files": [],
    })
}

/// GET /api/nodes: this one node (monitoring and administrator users).
pub async fn list_nodes(State(app): State<App>, caller: Caller) -> ApiResult<Json<Value>> {
    if !caller.sees_all {
        return Err(ApiError::not_authorised("Not monitor user"));
    }
    Ok(Json(Value::Array(all_nodes(&app))))
}

/// This node, plus (when it leads a cluster) every other member, each with
/// its `role`, `isr` membership and replication lag.
fn all_nodes(app: &App) -> Vec<Value> {
    let mut me = node_json(app);
    let Some(c) = app.broker.cluster.get() else {
        return vec![me];
    };
    let mut out = vec![];
    for n in c.nodes() {
        if n.role == "leader" {
            me["role"] = json!("leader");
            me["isr"] = json!(true);
            me["lag_bytes"] = json!(0);
            me["lag_ms"] = json!(0);
            me["amqp_address"] = json!(n.amqp_address);
            me["http_address"] = json!(n.http_address);
            out.insert(0, me.clone());
        } else {
            out.push(json!({
                "name": n.name,
                "type": "disc",
                "running": n.connected,
                "role": n.role,
                "isr": n.isr,
                "lag_bytes": n.lag_bytes,
                "lag_ms": n.lag_ms,
                "amqp_address": n.amqp_address,
                "http_address": n.http_address,
            }));
        }
    }
    out
}

pub async fn get_node(
    State(app): State<App>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    if !caller.sees_all {
        return Err(ApiError::not_authorised("Not monitor user"));
    }
    all_nodes(&app)
        .into_iter()
        .find(|n| n["name"] == json!(name))
        .map(Json)
        .ok_or_else(ApiError::not_found)
}

pub async fn health_alarms(State(app): State<App>, _caller: Caller) -> Response {
    let reasons = app.broker.alarm_reasons.lock().clone();
    if reasons.is_empty() {
        Json(json!({"status": "ok"})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "failed", "reason": format!("resource alarm(s) in effect: {}", reasons.join("; "))})),
        )
            .into_response()
    }
}

pub async fn aliveness(
    State(app): State<App>,
    caller: Caller,
    Path(vhost): Path<String>,
) -> ApiResult<Json<Value>> {
    let b = app.broker.clone();
    let v = caller.vhost(&b, &vhost)?;
    caller.check(&b, &vhost, Access::Configure, "queue", "aliveness-test")?;
    let q = b.declare_queue(
        &v,
        "aliveness-test",
        false,
        false,
        false,
        false,
        FieldTable::default(),
        0,
    )?;
    let default = v.get_exchange("")?;
    let (routed, _) = publish_message(
        &b,
        &v,
        &default,
        "aliveness-test",
        &BasicProperties::default(),
        b"test_message",
    )?;
    let got = q.take(1);
    let ok = routed && !got.is_empty();
    for (_, pos, _) in got {
        q.drop_taken(pos);
    }
    if ok {
        Ok(Json(json!({"status": "ok"})))
    } else {
        Err(ApiError::internal(
            "aliveness test message was not routed back",
        ))
    }
}
