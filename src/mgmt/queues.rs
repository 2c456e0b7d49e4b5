//! `/api/queues`: list, show (with its consumers), declare, delete, purge
//! (`/contents`), and get messages (`/get`). A queue's bindings are served
//! by `bindings.rs`.
//!
//! Declaring and deleting are the broker's
//! ([`crate::broker::Broker::declare_queue`],
//! [`crate::broker::Broker::delete_queue`]), with their checks and texts;
//! purge and get use the queue's own take/return/drop and the store.

use super::common::{
    blocking, created, flag, node_name, parse_body, rate, sorted_queues, visible_vhosts, ApiError,
    ApiResult, Caller, Q,
};
use super::connections::{conn_infos, consumer_json};
use super::json::{encode_payload, json_to_table, properties_to_json, table_to_json};
use super::listing::{set_at, Window};
use super::stats::{Rates, Sample};
use super::App;
use crate::broker::queue::Queue;
use crate::broker::{Access, Broker};
use crate::metrics::Counters;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Extension;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;

/// Rough heap bytes of a queue: positions, unacked entries, consumers.
fn queue_memory(s: &Sample, consumers: u32) -> u64 {
    1024 + 8 * s.ready + 64 * s.unacked + 256 * consumers as u64
}

fn queue_json(app: &App, q: &Queue, owners: &HashMap<u64, String>) -> Value {
    let s = Sample::of(q);
    let r: Rates = app.stats.queue_rates(q.id);
    let consumers = q.consumer_count();
    let applied = q.applied();
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
        "policy": applied.policy_json(),
        "operator_policy": applied.operator_policy.as_ref().map_or(Value::Null, |p| json!(p)),
        "effective_policy_definition": applied.definition,
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

/// A queue's value for a sort key, when it is cheap to get without the
/// queue's full JSON (the same value `queue_json` would show).
fn sort_value(app: &App, q: &Queue, key: &[String]) -> Option<Value> {
    let k: Vec<&str> = key.iter().map(String::as_str).collect();
    let s = || Sample::of(q);
    let r = || app.stats.queue_rates(q.id);
    Some(match k.as_slice() {
        ["name"] => json!(q.name),
        ["vhost"] => json!(q.vhost_name),
        ["type"] => json!(if q.args.quorum { "quorum" } else { "classic" }),
        ["messages_ready"] => json!(s().ready),
        ["messages_unacknowledged"] => json!(s().unacked),
        ["messages"] => {
            let s = s();
            json!(s.ready + s.unacked)
        }
        ["consumers"] => json!(q.consumer_count()),
        ["message_stats", which, "rate"] => {
            let r = r();
            let x = match *which {
                "publish_details" => r.publish,
                "deliver_get_details" => r.deliver,
                "ack_details" => r.ack,
                "redeliver_details" => r.redeliver,
                _ => return None,
            };
            rate(x)["rate"].clone()
        }
        _ => return None,
    })
}

/// The queues as JSON, in order; with a [`Window`], only those on the
/// requested page in full (the rest as stubs that the listing middleware
/// drops), so a page of 10,000 queues costs a page. A page item's sort
/// value is the one its stub was sorted by (the same instant's), so the
/// middleware's sort lands on the same page.
fn queues_json(app: &App, queues: &[Arc<Queue>], window: Option<&Window>) -> Value {
    let owners = conn_names(&app.broker);
    let key = window.and_then(|w| w.sort_key()).map(<[String]>::to_vec);
    let stub = |q: &Queue| {
        let mut v = json!({"name": q.name, "vhost": q.vhost_name});
        if let Some(k) = &key {
            set_at(&mut v, k, sort_value(app, q, k)?);
        }
        Some(v)
    };
    let stubs: Option<Vec<Value>> = match window {
        Some(w) if w.paged() => queues.iter().map(|q| stub(q)).collect(),
        _ => None,
    };
    let shown = stubs
        .as_ref()
        .and_then(|st| window.and_then(|w| w.shown(st)));
    let (Some(shown), Some(mut stubs)) = (shown, stubs) else {
        return Value::Array(queues.iter().map(|q| queue_json(app, q, &owners)).collect());
    };
    for (i, q) in queues.iter().enumerate() {
        if shown.contains(&i) {
            let mut full = queue_json(app, q, &owners);
            if let Some(k) = &key {
                if let Some(v) = at(&stubs[i], k) {
                    set_at(&mut full, k, v.clone());
                }
            }
            stubs[i] = full;
        }
    }
    Value::Array(stubs)
}

fn at<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(k))
}

pub async fn list_queues(
    State(app): State<App>,
    caller: Caller,
    window: Option<Extension<Window>>,
) -> ApiResult<Json<Value>> {
    let queues: Vec<_> = visible_vhosts(&app, &caller)
        .iter()
        .flat_map(|v| sorted_queues(v))
        .collect();
    // Off the runtime's workers: a long list takes a while to build.
    let j = blocking(move || queues_json(&app, &queues, window.as_ref().map(|w| &w.0))).await?;
    Ok(Json(j))
}

pub async fn list_queues_vhost(
    State(app): State<App>,
    caller: Caller,
    Path(vhost): Path<String>,
    window: Option<Extension<Window>>,
) -> ApiResult<Json<Value>> {
    let v = caller.vhost(&app.broker, &vhost)?;
    let queues = sorted_queues(&v);
    let j = blocking(move || queues_json(&app, &queues, window.as_ref().map(|w| &w.0))).await?;
    Ok(Json(j))
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

// ----- get -----

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
            let props = crate::broker::publish::properties_of(m.header);
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
