//! The `/api` handlers: RabbitMQ's paths and JSON shapes.

use super::json::{
    encode_payload, json_to_properties, json_to_table, properties_to_json, table_to_json,
};
use super::stats::{Rates, Sample};
use super::{blocking, node_name, parse_body, ApiError, ApiResult, App, Caller};
use crate::broker::delivery::{ChannelShared, ConnShared, Consumer};
use crate::broker::exchange::{Dest, Exchange};
use crate::broker::publish::{self, Outcome};
use crate::broker::queue::Queue;
use crate::broker::vhost::VHost;
use crate::broker::{Access, Broker, ConnInfo};
use crate::metrics::Counters;
use crate::store::SyncSeq;
use amq_protocol::protocol::BasicProperties;
use amq_protocol::types::FieldTable;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;

type Q = Query<HashMap<String, String>>;

/// The default exchange is "amq.default" in paths.
fn exchange_name(path_name: &str) -> &str {
    if path_name == "amq.default" {
        ""
    } else {
        path_name
    }
}

fn rate(x: f64) -> Value {
    json!({ "rate": (x * 10.0).round() / 10.0 })
}

fn created(existed: bool) -> StatusCode {
    if existed {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::CREATED
    }
}

fn flag(q: &Q, key: &str) -> bool {
    q.get(key).is_some_and(|v| v == "true")
}

/// The vhosts the caller may see, sorted by name.
fn visible_vhosts(app: &App, caller: &Caller) -> Vec<Arc<VHost>> {
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

fn sorted_queues(v: &VHost) -> Vec<Arc<Queue>> {
    let mut qs: Vec<_> = v.queues.read().values().cloned().collect();
    qs.sort_by(|a, b| a.name.cmp(&b.name));
    qs
}

fn sorted_exchanges(v: &VHost) -> Vec<Arc<Exchange>> {
    let mut xs: Vec<_> = v.exchanges.read().values().cloned().collect();
    xs.sort_by(|a, b| a.name.cmp(&b.name));
    xs
}

fn connections(broker: &Broker) -> Vec<(ConnInfo, Arc<ConnShared>)> {
    let mut c: Vec<_> = broker.connections.lock().values().cloned().collect();
    c.sort_by_key(|(i, _)| i.id);
    c
}

fn peer_parts(peer: &str) -> (String, u16) {
    match peer.parse::<std::net::SocketAddr>() {
        Ok(a) => (a.ip().to_string(), a.port()),
        Err(_) => (peer.to_owned(), 0),
    }
}

// ----- overview, health -----

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
        "listeners": [
            {"node": node_name(), "protocol": "amqp", "ip_address": cfg.bind,
             "port": app.amqp_addr.map(|a| a.port()).unwrap_or(cfg.port)},
            {"node": node_name(), "protocol": "http", "ip_address": cfg.mgmt_bind,
             "port": app.mgmt_addr.map(|a| a.port()).unwrap_or(cfg.mgmt_port)},
        ],
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
    Ok(Json(json!([node_json(&app)])))
}

pub async fn get_node(
    State(app): State<App>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    if !caller.sees_all {
        return Err(ApiError::not_authorised("Not monitor user"));
    }
    if name != node_name() {
        return Err(ApiError::not_found());
    }
    Ok(Json(node_json(&app)))
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

// ----- vhosts -----

fn vhost_json(v: &VHost) -> Value {
    let mut s = Sample::default();
    for q in v.queues.read().values() {
        s.add(&Sample::of(q));
    }
    json!({
        "name": v.name,
        "description": "",
        "tags": [],
        "metadata": {"description": "", "tags": []},
        "tracing": false,
        "default_queue_type": "classic",
        "messages": s.ready + s.unacked,
        "messages_ready": s.ready,
        "messages_unacknowledged": s.unacked,
        "cluster_state": {node_name(): "running"},
    })
}

pub async fn list_vhosts(State(app): State<App>, caller: Caller) -> Json<Value> {
    Json(Value::Array(
        visible_vhosts(&app, &caller)
            .iter()
            .map(|v| vhost_json(v))
            .collect(),
    ))
}

pub async fn get_vhost(
    State(app): State<App>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let v = caller.vhost(&app.broker, &name)?;
    Ok(Json(vhost_json(&v)))
}

pub async fn put_vhost(
    State(app): State<App>,
    caller: Caller,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    let _: Value = parse_body(&body)?;
    if name.is_empty() {
        return Err(ApiError::bad_request("vhost name must not be empty"));
    }
    let existed = app.broker.vhost(&name).is_some();
    let b = app.broker.clone();
    blocking(move || b.add_vhost(&name)).await??;
    Ok(created(existed))
}

pub async fn delete_vhost(
    State(app): State<App>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    let b = app.broker.clone();
    let n = name.clone();
    if !blocking(move || b.delete_vhost(&n)).await?? {
        return Err(ApiError::not_found());
    }
    for (info, conn) in connections(&app.broker) {
        if info.vhost == name {
            conn.request_close(&format!("vhost '{name}' is deleted"));
        }
    }
    Ok(StatusCode::NO_CONTENT)
}

// ----- users -----

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

// ----- permissions -----

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

// ----- exchanges -----

fn exchange_json(vhost: &str, e: &Exchange) -> Value {
    let mut v = json!({
        "name": e.name,
        "vhost": vhost,
        "type": e.type_name,
        "durable": e.durable,
        "auto_delete": e.auto_delete,
        "internal": e.internal,
        "arguments": table_to_json(&e.arguments),
        "user_who_performed_action": "",
        "policy": null,
    });
    if let Some(d) = &e.delayed {
        v["delayed"] = json!({
            "pending": d.pending(),
            "next_due": d.next_due(),
            "released": d.released.load(std::sync::atomic::Ordering::Relaxed),
        });
    }
    v
}

// ----- delayed messages -----

fn delayed_exchange(v: &VHost, name: &str) -> ApiResult<Arc<Exchange>> {
    let e = v
        .exchange(exchange_name(name))
        .ok_or_else(ApiError::not_found)?;
    if e.delayed.is_none() {
        return Err(ApiError::bad_request(format!(
            "exchange '{}' is not a delayed exchange",
            e.name
        )));
    }
    Ok(e)
}

/// GET /api/exchanges/{vhost}/{name}/delayed?limit=N: pending messages in due order.
pub async fn list_delayed(
    State(app): State<App>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    query: Q,
) -> ApiResult<Json<Value>> {
    let v = caller.vhost(&app.broker, &vhost)?;
    let e = delayed_exchange(&v, &name)?;
    let limit = query
        .get("limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(100usize);
    let store = app.broker.store.clone();
    let rows = blocking(move || {
        let d = e.delayed.as_ref().expect("delayed");
        let now = crate::clock::now_ms();
        d.list(limit)
            .into_iter()
            .filter_map(|(due, pos)| {
                store.with_message(pos, |m| {
                    let p = crate::protocol::props::peek(m.header).unwrap_or_default();
                    json!({
                        "due": due,
                        "due_in_ms": due as i64 - now as i64,
                        "message_id": p.message_id,
                        "routing_key": m.routing_key,
                        "payload_bytes": m.body.len(),
                        "persistent": m.persistent,
                    })
                })
            })
            .collect::<Vec<_>>()
    })
    .await?;
    Ok(Json(Value::Array(rows)))
}

/// DELETE /api/exchanges/{vhost}/{name}/delayed: drop every pending message.
pub async fn purge_delayed(
    State(app): State<App>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let v = caller.vhost(&app.broker, &vhost)?;
    let e = delayed_exchange(&v, &name)?;
    caller.check(&app.broker, &vhost, Access::Configure, "exchange", &e.name)?;
    let n = blocking(move || e.delayed.as_ref().expect("delayed").purge()).await?;
    Ok(Json(json!({ "purged": n })))
}

/// DELETE /api/exchanges/{vhost}/{name}/delayed/{message_id}: cancel by message-id.
pub async fn cancel_delayed(
    State(app): State<App>,
    caller: Caller,
    Path((vhost, name, message_id)): Path<(String, String, String)>,
) -> ApiResult<Json<Value>> {
    let v = caller.vhost(&app.broker, &vhost)?;
    let e = delayed_exchange(&v, &name)?;
    caller.check(&app.broker, &vhost, Access::Configure, "exchange", &e.name)?;
    let n = blocking(move || e.delayed.as_ref().expect("delayed").cancel(&message_id)).await?;
    if n == 0 {
        return Err(ApiError::not_found());
    }
    Ok(Json(json!({ "cancelled": n })))
}

pub async fn list_exchanges(State(app): State<App>, caller: Caller) -> Json<Value> {
    let mut out = vec![];
    for v in visible_vhosts(&app, &caller) {
        out.extend(
            sorted_exchanges(&v)
                .iter()
                .map(|e| exchange_json(&v.name, e)),
        );
    }
    Json(Value::Array(out))
}

pub async fn list_exchanges_vhost(
    State(app): State<App>,
    caller: Caller,
    Path(vhost): Path<String>,
) -> ApiResult<Json<Value>> {
    let v = caller.vhost(&app.broker, &vhost)?;
    Ok(Json(Value::Array(
        sorted_exchanges(&v)
            .iter()
            .map(|e| exchange_json(&v.name, e))
            .collect(),
    )))
}

pub async fn get_exchange(
    State(app): State<App>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let v = caller.vhost(&app.broker, &vhost)?;
    let e = v
        .exchange(exchange_name(&name))
        .ok_or_else(ApiError::not_found)?;
    Ok(Json(exchange_json(&v.name, &e)))
}

#[derive(Deserialize, Default)]
struct PutExchange {
    #[serde(rename = "type")]
    kind: Option<String>,
    durable: Option<bool>,
    auto_delete: Option<bool>,
    internal: Option<bool>,
    #[serde(default)]
    arguments: Value,
}

pub async fn put_exchange(
    State(app): State<App>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let req: PutExchange = parse_body(&body)?;
    let b = app.broker.clone();
    let v = caller.vhost(&b, &vhost)?;
    if name == "amq.default" {
        return Err(ApiError::from(crate::error::AmqpError::access_refused(
            "operation not permitted on the default exchange",
        )));
    }
    let kind = req
        .kind
        .ok_or_else(|| ApiError::bad_request("type must be set"))?;
    let args = json_to_table(&req.arguments)
        .map_err(|e| ApiError::bad_request(format!("arguments: {e}")))?;
    caller.check(&b, &vhost, Access::Configure, "exchange", &name)?;
    let existed = v.exchange(&name).is_some();
    let (durable, auto_delete, internal) = (
        req.durable.unwrap_or(true),
        req.auto_delete.unwrap_or(false),
        req.internal.unwrap_or(false),
    );
    blocking(move || {
        b.declare_exchange(
            &v,
            &name,
            &kind,
            false,
            durable,
            auto_delete,
            internal,
            args,
        )
        .map(|_| ())
    })
    .await??;
    Ok(created(existed))
}

pub async fn delete_exchange(
    State(app): State<App>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    query: Q,
) -> ApiResult<StatusCode> {
    let b = app.broker.clone();
    let v = caller.vhost(&b, &vhost)?;
    let name = exchange_name(&name).to_owned();
    if v.exchange(&name).is_none() {
        return Err(ApiError::not_found());
    }
    caller.check(&b, &vhost, Access::Configure, "exchange", &name)?;
    let if_unused = flag(&query, "if-unused");
    blocking(move || b.delete_exchange(&v, &name, if_unused)).await??;
    Ok(StatusCode::NO_CONTENT)
}

// ----- publish and get -----

/// Route and store a message as a basic.publish would (deduplication,
/// delayed exchanges, per-message TTL and priority included). Returns
/// whether it was routed, and the sync its durability waits for.
/// Publish through the broker's one pipeline, as a basic.publish would be
/// (without mandatory). Returns whether it was routed, and the sync to
/// wait for before answering, if any.
pub fn publish_message(
    broker: &Broker,
    v: &VHost,
    ex: &Arc<Exchange>,
    routing_key: &str,
    props: &BasicProperties,
    body: &[u8],
) -> ApiResult<(bool, Option<SyncSeq>)> {
    let header = publish::content_header(body.len(), props);
    let parsed = publish::Parsed::of(&header);
    let msg = publish::Publish {
        exchange: ex,
        routing_key,
        header: &header,
        body,
        headers: parsed.headers.as_ref(),
        persistent: parsed.persistent,
        priority: parsed.priority,
        expiration: parsed.expiration,
        mandatory: false,
    };
    let mut scratch = publish::Scratch::default();
    match publish::publish(
        v,
        &broker.store,
        &msg,
        publish::Origin::Client,
        &mut scratch,
    ) {
        Outcome::Routed { sync } => Ok((true, sync)),
        Outcome::Scheduled { sync, routed_now } => Ok((routed_now, sync)),
        Outcome::Duplicate => Ok((true, None)),
        Outcome::Unroutable => Ok((false, None)),
        // RabbitMQ answers a nacked publish (a queue at its limit with
        // reject-publish) with this 400.
        Outcome::Rejected => Err(ApiError::bad_request(
            "Unable to publish message. Check queue limits.",
        )),
        Outcome::NotStored(e) => Err(ApiError::internal(format!("message not stored: {e}"))),
    }
}

#[derive(Deserialize, Default)]
struct PublishReq {
    #[serde(default)]
    properties: Value,
    routing_key: Option<String>,
    payload: Option<String>,
    payload_encoding: Option<String>,
}

pub async fn publish(
    State(app): State<App>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let req: PublishReq = parse_body(&body)?;
    if req.routing_key.as_ref().is_some_and(|k| k.len() > 255) {
        return Err(ApiError::bad_request(
            "routing_key is longer than 255 bytes",
        ));
    }
    let b = app.broker.clone();
    let v = caller.vhost(&b, &vhost)?;
    let ex_name = exchange_name(&name);
    let ex = v.exchange(ex_name).ok_or_else(ApiError::not_found)?;
    caller.check(&b, &vhost, Access::Write, "exchange", ex_name)?;
    if ex.internal {
        return Err(ApiError::bad_request(format!(
            "cannot publish to internal exchange '{ex_name}'"
        )));
    }
    let routing_key = req
        .routing_key
        .ok_or_else(|| ApiError::bad_request("routing_key must be set"))?;
    let payload = req
        .payload
        .ok_or_else(|| ApiError::bad_request("payload must be set"))?;
    let payload = match req.payload_encoding.as_deref().unwrap_or("string") {
        "string" => payload.into_bytes(),
        "base64" => base64::engine::general_purpose::STANDARD
            .decode(payload.trim())
            .map_err(|_| ApiError::bad_request("payload is not valid base64"))?,
        other => {
            return Err(ApiError::bad_request(format!(
                "payload_encoding must be string or base64, not {other:?}"
            )))
        }
    };
    if payload.len() as u64 > b.config.max_message_size {
        return Err(ApiError::bad_request(
            "payload is larger than max_message_size",
        ));
    }
    let props = json_to_properties(&req.properties).map_err(ApiError::bad_request)?;
    if let Some(e) = props.expiration() {
        if e.as_str().parse::<u64>().is_err() {
            return Err(ApiError::bad_request(format!(
                "invalid expiration '{}'",
                e.as_str()
            )));
        }
    }
    if let Some(uid) = props.user_id() {
        if uid.as_str() != caller.name {
            return Err(ApiError::bad_request(format!(
                "user_id property set to '{}' but authenticated user was '{}'",
                uid.as_str(),
                caller.name
            )));
        }
    }
    let (routed, seq) = publish_message(&b, &v, &ex, &routing_key, &props, &payload)?;
    if let Some(seq) = seq {
        // Answer once the message is on disk, as a confirm would.
        let mut synced = b.store.synced();
        let _ = synced.wait_for(|s| *s >= seq).await;
        if b.store.sync_failed(seq) {
            return Err(ApiError::internal(
                "the message could not be written to disk",
            ));
        }
    }
    Ok(Json(json!({ "routed": routed })))
}

#[derive(Deserialize, Default)]
struct GetReq {
    count: Option<u64>,
    ackmode: Option<String>,
    encoding: Option<String>,
    truncate: Option<u64>,
}

pub async fn get_messages(
    State(app): State<App>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let req: GetReq = parse_body(&body)?;
    let b = app.broker.clone();
    let v = caller.vhost(&b, &vhost)?;
    let q = v.queue(&name).ok_or_else(ApiError::not_found)?;
    if q.exclusive_owner.is_some() {
        // As over AMQP (405): only the owning connection may use it.
        return Err(ApiError::bad_request(format!(
            "resource_locked: queue '{name}' in vhost '{vhost}' is exclusive to another connection"
        )));
    }
    let count = req
        .count
        .ok_or_else(|| ApiError::bad_request("count must be set"))?;
    let ackmode = req
        .ackmode
        .ok_or_else(|| ApiError::bad_request("ackmode must be set"))?;
    let requeue = match ackmode.as_str() {
        "ack_requeue_true" | "reject_requeue_true" => true,
        "ack_requeue_false" | "reject_requeue_false" => false,
        other => return Err(ApiError::bad_request(format!("unknown ackmode {other:?}"))),
    };
    let encoding = req.encoding.unwrap_or_else(|| "auto".into());
    if encoding != "auto" && encoding != "base64" {
        return Err(ApiError::bad_request(format!(
            "unknown encoding {encoding:?}"
        )));
    }
    caller.check(&b, &vhost, Access::Read, "queue", &name)?;
    let taken = q.take(count.min(100_000) as usize);
    let remaining = q.message_count() as usize;
    let n = taken.len();
    let store = q.store().clone();
    let mut out = Vec::with_capacity(n);
    for (i, (_, pos, deliveries)) in taken.iter().enumerate() {
        let m = store.with_message(*pos, |m| {
            let props = crate::protocol::props::full_properties(m.header).unwrap_or_default();
            let body = match req.truncate {
                Some(t) if (t as usize) < m.body.len() => &m.body[..t as usize],
                _ => m.body,
            };
            let (payload, payload_encoding) = encode_payload(body, &encoding);
            json!({
                "payload_bytes": m.body.len(),
                "redelivered": *deliveries > 0,
                "exchange": m.exchange,
                "routing_key": m.routing_key,
                "message_count": remaining + (n - i - 1),
                "properties": properties_to_json(&props),
                "payload": payload,
                "payload_encoding": payload_encoding,
            })
        });
        if let Some(m) = m {
            out.push(m);
        }
    }
    Counters::add(&q.counters.delivered, n as u64);
    if requeue {
        let back = taken
            .into_iter()
            .map(|(seq, pos, d)| {
                if pos.logged() {
                    store.mark_delivered(pos, q.id);
                }
                (seq, pos, d + 1)
            })
            .collect();
        q.return_taken(back);
    } else {
        for (_, pos, _) in taken {
            q.drop_taken(pos);
        }
        Counters::add(&q.counters.acked, n as u64);
    }
    store.flush_acks();
    Ok(Json(Value::Array(out)))
}

// ----- queues -----

/// Rough heap bytes of a queue: positions, unacked entries, consumers.
fn queue_memory(s: &Sample, consumers: u32) -> u64 {
    1024 + 8 * s.ready + 64 * s.unacked + 256 * consumers as u64
}

fn queue_json(app: &App, q: &Queue, owners: &HashMap<u64, String>) -> Value {
    let s = Sample::of(q);
    let r: Rates = app.stats.queue_rates(q.id);
    let consumers = q.consumer_count();
    let mut j = json!({
        "name": q.name,
        "vhost": q.vhost_name,
        "durable": q.durable,
        "auto_delete": q.auto_delete,
        "exclusive": q.exclusive_owner.is_some(),
        "arguments": table_to_json(&q.arguments),
        "node": node_name(),
        "state": "running",
        "type": if q.args.quorum { "quorum" } else { "classic" },
        "policy": null,
        "exclusive_consumer_tag": null,
        "messages": s.ready + s.unacked,
        "messages_details": rate(r.messages),
        "messages_ready": s.ready,
        "messages_ready_details": rate(r.ready),
        "messages_unacknowledged": s.unacked,
        "messages_unacknowledged_details": rate(r.unacked),
        "consumers": consumers,
        "memory": queue_memory(&s, consumers),
        "message_stats": {
            "publish": s.published, "publish_details": rate(r.publish),
            "deliver_get": s.delivered, "deliver_get_details": rate(r.deliver),
            "ack": s.acked, "ack_details": rate(r.ack),
            "redeliver": s.redelivered, "redeliver_details": rate(r.redeliver),
        },
    });
    if let Some(owner) = q.exclusive_owner {
        if let Some(name) = owners.get(&owner) {
            j["owner_pid_details"] = json!({"name": name});
        }
    }
    j
}

fn conn_names(broker: &Broker) -> HashMap<u64, String> {
    broker
        .connections
        .lock()
        .values()
        .map(|(i, _)| (i.id, i.name.clone()))
        .collect()
}

pub async fn list_queues(State(app): State<App>, caller: Caller) -> Json<Value> {
    let owners = conn_names(&app.broker);
    let mut out = vec![];
    for v in visible_vhosts(&app, &caller) {
        out.extend(
            sorted_queues(&v)
                .iter()
                .map(|q| queue_json(&app, q, &owners)),
        );
    }
    Json(Value::Array(out))
}

pub async fn list_queues_vhost(
    State(app): State<App>,
    caller: Caller,
    Path(vhost): Path<String>,
) -> ApiResult<Json<Value>> {
    let v = caller.vhost(&app.broker, &vhost)?;
    let owners = conn_names(&app.broker);
    Ok(Json(Value::Array(
        sorted_queues(&v)
            .iter()
            .map(|q| queue_json(&app, q, &owners))
            .collect(),
    )))
}

pub async fn get_queue(
    State(app): State<App>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let v = caller.vhost(&app.broker, &vhost)?;
    let q = v.queue(&name).ok_or_else(ApiError::not_found)?;
    let mut j = queue_json(&app, &q, &conn_names(&app.broker));
    // As RabbitMQ: the single-queue view lists its consumers.
    let conns = conn_infos(&app.broker);
    j["consumer_details"] = Value::Array(
        q.consumers()
            .iter()
            .map(|c| consumer_json(c, &conns))
            .collect(),
    );
    Ok(Json(j))
}

#[derive(Deserialize, Default)]
struct PutQueue {
    durable: Option<bool>,
    auto_delete: Option<bool>,
    #[serde(default)]
    arguments: Value,
}

pub async fn put_queue(
    State(app): State<App>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let req: PutQueue = parse_body(&body)?;
    let b = app.broker.clone();
    let v = caller.vhost(&b, &vhost)?;
    if name.is_empty() {
        return Err(ApiError::bad_request("queue name must not be empty"));
    }
    let args = json_to_table(&req.arguments)
        .map_err(|e| ApiError::bad_request(format!("arguments: {e}")))?;
    caller.check(&b, &vhost, Access::Configure, "queue", &name)?;
    let existed = v.queue(&name).is_some();
    let (durable, auto_delete) = (
        req.durable.unwrap_or(true),
        req.auto_delete.unwrap_or(false),
    );
    blocking(move || {
        b.declare_queue(&v, &name, false, durable, false, auto_delete, args, 0)
            .map(|_| ())
    })
    .await??;
    Ok(created(existed))
}

pub async fn delete_queue(
    State(app): State<App>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    query: Q,
) -> ApiResult<StatusCode> {
    let b = app.broker.clone();
    let v = caller.vhost(&b, &vhost)?;
    let q = v.queue(&name).ok_or_else(ApiError::not_found)?;
    caller.check(&b, &vhost, Access::Configure, "queue", &name)?;
    let (if_unused, if_empty) = (flag(&query, "if-unused"), flag(&query, "if-empty"));
    blocking(move || b.delete_queue(&v, &q, if_unused, if_empty)).await??;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn purge_queue(
    State(app): State<App>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let b = app.broker.clone();
    let v = caller.vhost(&b, &vhost)?;
    let q = v.queue(&name).ok_or_else(ApiError::not_found)?;
    caller.check(&b, &vhost, Access::Read, "queue", &name)?;
    blocking(move || q.purge()).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ----- bindings -----

struct B {
    vhost: String,
    source: String,
    destination: String,
    destination_type: &'static str,
    routing_key: String,
    arguments: FieldTable,
}

/// RabbitMQ's "properties key" naming one binding between two objects:
/// the routing key, or "~" for an empty one, plus "~" and a hash of the
/// arguments when there are any.
fn props_key(routing_key: &str, args: &FieldTable) -> String {
    if args.inner().is_empty() {
        return if routing_key.is_empty() {
            "~".into()
        } else {
            routing_key.into()
        };
    }
    use sha2::Digest;
    let h = sha2::Sha256::digest(table_to_json(args).to_string().as_bytes());
    format!(
        "{routing_key}~{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&h[..6])
    )
}

impl B {
    fn json(&self) -> Value {
        json!({
            "source": self.source,
            "vhost": self.vhost,
            "destination": self.destination,
            "destination_type": self.destination_type,
            "routing_key": self.routing_key,
            "arguments": table_to_json(&self.arguments),
            "properties_key": props_key(&self.routing_key, &self.arguments),
        })
    }
}

/// Every binding of a vhost, the default exchange's implicit ones first.
fn vhost_bindings(v: &VHost) -> Vec<B> {
    let mut out = vec![];
    for q in sorted_queues(v) {
        out.push(B {
            vhost: v.name.clone(),
            source: String::new(),
            destination: q.name.clone(),
            destination_type: "queue",
            routing_key: q.name.clone(),
            arguments: FieldTable::default(),
        });
    }
    for e in sorted_exchanges(v) {
        if e.name.is_empty() {
            continue;
        }
        for b in e.bindings.read().all.iter() {
            out.push(B {
                vhost: v.name.clone(),
                source: e.name.clone(),
                destination: b.dest.name().to_owned(),
                destination_type: b.dest.kind(),
                routing_key: b.routing_key.clone(),
                arguments: b.arguments.clone(),
            });
        }
    }
    out
}

fn bindings_json(bs: impl Iterator<Item = B>) -> Json<Value> {
    Json(Value::Array(bs.map(|b| b.json()).collect()))
}

pub async fn list_bindings(State(app): State<App>, caller: Caller) -> Json<Value> {
    let mut all = vec![];
    for v in visible_vhosts(&app, &caller) {
        all.extend(vhost_bindings(&v));
    }
    bindings_json(all.into_iter())
}

pub async fn list_bindings_vhost(
    State(app): State<App>,
    caller: Caller,
    Path(vhost): Path<String>,
) -> ApiResult<Json<Value>> {
    let v = caller.vhost(&app.broker, &vhost)?;
    Ok(bindings_json(vhost_bindings(&v).into_iter()))
}

pub async fn exchange_bindings_source(
    State(app): State<App>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let v = caller.vhost(&app.broker, &vhost)?;
    let name = exchange_name(&name);
    v.exchange(name).ok_or_else(ApiError::not_found)?;
    Ok(bindings_json(
        vhost_bindings(&v).into_iter().filter(|b| b.source == name),
    ))
}

pub async fn exchange_bindings_destination(
    State(app): State<App>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let v = caller.vhost(&app.broker, &vhost)?;
    let name = exchange_name(&name);
    v.exchange(name).ok_or_else(ApiError::not_found)?;
    Ok(bindings_json(vhost_bindings(&v).into_iter().filter(|b| {
        b.destination_type == "exchange" && b.destination == name
    })))
}

pub async fn queue_bindings(
    State(app): State<App>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let v = caller.vhost(&app.broker, &vhost)?;
    v.queue(&name).ok_or_else(ApiError::not_found)?;
    Ok(bindings_json(vhost_bindings(&v).into_iter().filter(|b| {
        b.destination_type == "queue" && b.destination == name
    })))
}

/// Source exchange and destination of a binding path (404 for unknown ones).
fn binding_ends(
    v: &VHost,
    source: &str,
    kind: &str,
    dest: &str,
) -> ApiResult<(Arc<Exchange>, Dest)> {
    let src = v
        .exchange(exchange_name(source))
        .ok_or_else(ApiError::not_found)?;
    let d = match kind {
        "q" => Dest::Queue(v.queue(dest).ok_or_else(ApiError::not_found)?),
        "e" => Dest::Exchange(
            v.exchange(exchange_name(dest))
                .ok_or_else(ApiError::not_found)?,
        ),
        _ => return Err(ApiError::not_found()),
    };
    Ok((src, d))
}

fn between(v: &VHost, src: &Exchange, d: &Dest) -> Vec<B> {
    vhost_bindings(v)
        .into_iter()
        .filter(|b| {
            b.source == src.name && b.destination_type == d.kind() && b.destination == d.name()
        })
        .collect()
}

pub async fn bindings_between(
    State(app): State<App>,
    caller: Caller,
    Path((vhost, source, kind, dest)): Path<(String, String, String, String)>,
) -> ApiResult<Json<Value>> {
    let v = caller.vhost(&app.broker, &vhost)?;
    let (src, d) = binding_ends(&v, &source, &kind, &dest)?;
    Ok(bindings_json(between(&v, &src, &d).into_iter()))
}

#[derive(Deserialize, Default)]
struct BindReq {
    routing_key: Option<String>,
    #[serde(default)]
    arguments: Value,
}

pub async fn create_binding(
    State(app): State<App>,
    caller: Caller,
    Path((vhost, source, kind, dest)): Path<(String, String, String, String)>,
    body: Bytes,
) -> ApiResult<Response> {
    let req: BindReq = parse_body(&body)?;
    let b = app.broker.clone();
    let v = caller.vhost(&b, &vhost)?;
    let (src, d) = binding_ends(&v, &source, &kind, &dest)?;
    if let crate::broker::exchange::Dest::Queue(q) = &d {
        if q.exclusive_owner.is_some() {
            // As over AMQP (405): only the owning connection may use it.
            return Err(ApiError::bad_request(format!(
                "resource_locked: queue '{}' in vhost '{vhost}' is exclusive to another connection",
                q.name
            )));
        }
    }
    let args = json_to_table(&req.arguments)
        .map_err(|e| ApiError::bad_request(format!("arguments: {e}")))?;
    let rk = req.routing_key.unwrap_or_default();
    caller.check(&b, &vhost, Access::Write, d.kind(), d.name())?;
    caller.check(&b, &vhost, Access::Read, "exchange", &src.name)?;
    let key = props_key(&rk, &args);
    blocking(move || b.bind(&v, &src, d, &rk, args)).await??;
    let enc = |s: &str| percent_encoding::utf8_percent_encode(s, PATH_SEGMENT).to_string();
    let location = format!(
        "/api/bindings/{}/e/{}/{}/{}/{}",
        enc(&vhost),
        enc(&source),
        kind,
        enc(&dest),
        enc(&key)
    );
    Ok((StatusCode::CREATED, [(header::LOCATION, location)]).into_response())
}

/// Everything but unreserved characters is escaped in a path segment.
pub const PATH_SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

pub async fn get_binding(
    State(app): State<App>,
    caller: Caller,
    Path((vhost, source, kind, dest, props)): Path<(String, String, String, String, String)>,
) -> ApiResult<Json<Value>> {
    let v = caller.vhost(&app.broker, &vhost)?;
    let (src, d) = binding_ends(&v, &source, &kind, &dest)?;
    let b = between(&v, &src, &d)
        .into_iter()
        .find(|b| props_key(&b.routing_key, &b.arguments) == props)
        .ok_or_else(ApiError::not_found)?;
    Ok(Json(b.json()))
}

pub async fn delete_binding(
    State(app): State<App>,
    caller: Caller,
    Path((vhost, source, kind, dest, props)): Path<(String, String, String, String, String)>,
) -> ApiResult<StatusCode> {
    let br = app.broker.clone();
    let v = caller.vhost(&br, &vhost)?;
    let (src, d) = binding_ends(&v, &source, &kind, &dest)?;
    let b = between(&v, &src, &d)
        .into_iter()
        .find(|b| props_key(&b.routing_key, &b.arguments) == props)
        .ok_or_else(ApiError::not_found)?;
    caller.check(&br, &vhost, Access::Write, d.kind(), d.name())?;
    caller.check(&br, &vhost, Access::Read, "exchange", &src.name)?;
    blocking(move || br.unbind(&v, &src, d, &b.routing_key, b.arguments)).await??;
    Ok(StatusCode::NO_CONTENT)
}

// ----- connections, channels, consumers -----

fn connection_json(i: &ConnInfo, c: &ConnShared) -> Value {
    let (peer_host, peer_port) = peer_parts(&i.peer);
    json!({
        "name": i.name,
        "node": node_name(),
        "user": i.user,
        "vhost": i.vhost,
        "peer_host": peer_host,
        "peer_port": peer_port,
        "channels": i.channels,
        "connected_at": i.connected_at,
        "state": if c.closed.load(std::sync::atomic::Ordering::Relaxed) { "closing" } else { "running" },
        "protocol": "AMQP 0-9-1",
        "type": "network",
        "frame_max": c.frame_max(),
        "send_oct": c.bytes_out.load(std::sync::atomic::Ordering::Relaxed),
        "client_properties": {},
        "client_properties_text": i.client_properties,
    })
}

fn visible_connections(app: &App, caller: &Caller) -> Vec<(ConnInfo, Arc<ConnShared>)> {
    connections(&app.broker)
        .into_iter()
        .filter(|(i, _)| caller.sees_all || i.user == caller.name)
        .collect()
}

pub async fn list_connections(State(app): State<App>, caller: Caller) -> Json<Value> {
    Json(Value::Array(
        visible_connections(&app, &caller)
            .iter()
            .map(|(i, c)| connection_json(i, c))
            .collect(),
    ))
}

pub async fn vhost_connections(
    State(app): State<App>,
    caller: Caller,
    Path(vhost): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.vhost(&app.broker, &vhost)?;
    Ok(Json(Value::Array(
        visible_connections(&app, &caller)
            .iter()
            .filter(|(i, _)| i.vhost == vhost)
            .map(|(i, c)| connection_json(i, c))
            .collect(),
    )))
}

fn find_connection(
    app: &App,
    caller: &Caller,
    name: &str,
) -> ApiResult<(ConnInfo, Arc<ConnShared>)> {
    visible_connections(app, caller)
        .into_iter()
        .find(|(i, _)| i.name == name)
        .ok_or_else(ApiError::not_found)
}

pub async fn get_connection(
    State(app): State<App>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let (i, c) = find_connection(&app, &caller, &name)?;
    Ok(Json(connection_json(&i, &c)))
}

pub async fn close_connection(
    State(app): State<App>,
    caller: Caller,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> ApiResult<StatusCode> {
    let (i, c) = find_connection(&app, &caller, &name)?;
    if !caller.admin && i.user != caller.name {
        return Err(ApiError::not_authorised("Not administrator user"));
    }
    let reason = headers
        .get("x-reason")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("Closed via management plugin");
    c.request_close(reason);
    Ok(StatusCode::NO_CONTENT)
}

fn channel_json(i: &ConnInfo, ch: &ChannelShared) -> Value {
    let (peer_host, peer_port) = peer_parts(&i.peer);
    let st = ch.state.lock();
    let prefetch = st.consumers.first().map(|c| c.prefetch).unwrap_or(0);
    json!({
        "name": format!("{} ({})", i.name, ch.id),
        "node": node_name(),
        "number": ch.id,
        "user": i.user,
        "vhost": i.vhost,
        "connection_details": {"name": i.name, "peer_host": peer_host, "peer_port": peer_port},
        "consumer_count": st.consumers.len(),
        "messages_unacknowledged": st.unacked.len(),
        "prefetch_count": prefetch,
        "global_prefetch_count": st.global_prefetch,
        "state": if st.flow { "running" } else { "flow" },
    })
}

fn channels_of(i: &ConnInfo, c: &ConnShared) -> Vec<Value> {
    let mut chs: Vec<_> = c
        .channels
        .lock()
        .iter()
        .filter_map(|w| w.upgrade())
        .collect();
    chs.sort_by_key(|ch| ch.id);
    chs.iter().map(|ch| channel_json(i, ch)).collect()
}

pub async fn list_channels(State(app): State<App>, caller: Caller) -> Json<Value> {
    let mut out = vec![];
    for (i, c) in visible_connections(&app, &caller) {
        out.extend(channels_of(&i, &c));
    }
    Json(Value::Array(out))
}

pub async fn vhost_channels(
    State(app): State<App>,
    caller: Caller,
    Path(vhost): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.vhost(&app.broker, &vhost)?;
    let mut out = vec![];
    for (i, c) in visible_connections(&app, &caller) {
        if i.vhost == vhost {
            out.extend(channels_of(&i, &c));
        }
    }
    Ok(Json(Value::Array(out)))
}

pub async fn connection_channels(
    State(app): State<App>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let (i, c) = find_connection(&app, &caller, &name)?;
    Ok(Json(Value::Array(channels_of(&i, &c))))
}

pub async fn get_channel(
    State(app): State<App>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    for (i, c) in visible_connections(&app, &caller) {
        for ch in channels_of(&i, &c) {
            if ch["name"] == name.as_str() {
                return Ok(Json(ch));
            }
        }
    }
    Err(ApiError::not_found())
}

fn consumer_json(c: &Consumer, conns: &HashMap<u64, ConnInfo>) -> Value {
    let conn = conns.get(&c.channel.conn.id);
    let (peer_host, peer_port) = conn.map(|i| peer_parts(&i.peer)).unwrap_or_default();
    let conn_name = conn.map(|i| i.name.clone()).unwrap_or_default();
    json!({
        "consumer_tag": c.tag,
        "queue": {"name": c.queue.name, "vhost": c.queue.vhost_name},
        "channel_details": {
            "name": format!("{conn_name} ({})", c.channel.id),
            "number": c.channel.id,
            "connection_name": conn_name,
            "peer_host": peer_host,
            "peer_port": peer_port,
            "user": conn.map(|i| i.user.clone()).unwrap_or_default(),
            "node": node_name(),
        },
        "ack_required": !c.no_ack,
        "exclusive": c.exclusive,
        "prefetch_count": c.prefetch,
        "priority": c.priority,
        "arguments": table_to_json(&c.arguments),
        "active": true,
        "activity_status": "up",
    })
}

/// The open connections' info by id (for consumer JSON).
fn conn_infos(b: &Broker) -> HashMap<u64, ConnInfo> {
    b.connections
        .lock()
        .values()
        .map(|(i, _)| (i.id, i.clone()))
        .collect()
}

fn consumers_in(app: &App, vhosts: &[Arc<VHost>]) -> Json<Value> {
    let conns = conn_infos(&app.broker);
    let mut out = vec![];
    for v in vhosts {
        for q in sorted_queues(v) {
            for c in q.consumers() {
                out.push(consumer_json(&c, &conns));
            }
        }
    }
    Json(Value::Array(out))
}

pub async fn list_consumers(State(app): State<App>, caller: Caller) -> Json<Value> {
    consumers_in(&app, &visible_vhosts(&app, &caller))
}

pub async fn list_consumers_vhost(
    State(app): State<App>,
    caller: Caller,
    Path(vhost): Path<String>,
) -> ApiResult<Json<Value>> {
    let v = caller.vhost(&app.broker, &vhost)?;
    Ok(consumers_in(&app, &[v]))
}
