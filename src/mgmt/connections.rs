//! `/api/connections` (list, show, close), their channels (`/api/channels`,
//! per connection, per vhost) and consumers (`/api/consumers`, per vhost).
//!
//! Everything here reads the broker's connection table and the
//! connections' shared state; closing is
//! [`crate::broker::delivery::ConnShared::request_close`] (the connection itself
//! sends connection.close). The consumer JSON is also the queue page's
//! `consumer_details`.

use super::common::{
    connections, node_name, sorted_queues, visible_vhosts, ApiError, ApiResult, Caller,
};
use super::json::table_to_json;
use super::App;
use crate::broker::delivery::{ChannelShared, ConnShared, Consumer};
use crate::broker::vhost::VHost;
use crate::broker::{Broker, ConnInfo};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;

fn peer_parts(peer: &str) -> (String, u16) {
    match peer.parse::<std::net::SocketAddr>() {
        Ok(a) => (a.ip().to_string(), a.port()),
        Err(_) => (peer.to_owned(), 0),
    }
}

fn connection_json(i: &ConnInfo, c: &ConnShared) -> Value {
    let (peer_host, peer_port) = peer_parts(&i.peer);
    // RabbitMQ's TLS fields: null on plain connections, and the
    // certificate fields null when the client sent no certificate.
    let tls = i.tls.as_ref();
    let cert = tls.and_then(|t| t.peer.as_ref());
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
        "client_properties": table_to_json(&i.client_properties),
        "user_provided_name": i.user_provided_name,
        "ssl": i.ssl,
        "ssl_protocol": tls.map(|t| t.protocol),
        "ssl_key_exchange": tls.map(|t| t.key_exchange),
        "ssl_cipher": tls.map(|t| t.cipher),
        "ssl_hash": tls.map(|t| t.hash),
        "peer_cert_subject": cert.map(|p| &p.subject),
        "peer_cert_issuer": cert.map(|p| &p.issuer),
        "peer_cert_validity": cert.map(|p| &p.validity),
        "auth_mechanism": i.auth_mechanism,
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

// ----- channels -----

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
        "state": "running",
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

// ----- consumers -----

pub(super) fn consumer_json(c: &Consumer, conns: &HashMap<u64, ConnInfo>) -> Value {
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
pub(super) fn conn_infos(b: &Broker) -> HashMap<u64, ConnInfo> {
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
