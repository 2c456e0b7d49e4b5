//! `/api/exchanges`: list, show, declare, delete; publish to an exchange;
//! a delayed exchange's pending messages (list, purge, cancel one).
//! An exchange's bindings are served by `bindings.rs`.
//!
//! Declaring and deleting are the broker's
//! ([`crate::broker::Broker::declare_exchange`],
//! [`crate::broker::Broker::delete_exchange`]), with their checks and
//! texts. Publishing routes and stores through [`publish_message`]; pending
//! delayed messages are the exchange's [`crate::broker::delayed::Delayed`].

use super::common::{
    blocking, created, exchange_name, flag, parse_body, sorted_exchanges, visible_vhosts, ApiError,
    ApiResult, Caller, Q,
};
use super::json::{json_to_properties, json_to_table, table_to_json};
use super::App;
use crate::broker::exchange::Exchange;
use crate::broker::publish::{self, Outcome};
use crate::broker::vhost::VHost;
use crate::broker::{Access, Broker};
use crate::store::SyncSeq;
use amq_protocol::protocol::BasicProperties;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

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
        "policy": e.applied().policy_json(),
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
        return Err(ApiError::from(crate::error::AmqpError::default_exchange()));
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

// ----- publish -----

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

/// Publish through the broker's one pipeline, as a basic.publish would be
/// (without mandatory): deduplication, CC/BCC, delayed exchanges,
/// per-message TTL and priority included. Returns whether it was routed,
/// and the sync to wait for before answering, if any.
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

/// GET /api/exchanges/{vhost}/{name}/delayed?limit=N&offset=M: pending
/// messages in due order, the first M skipped.
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
    // The console pages through them: skip the first `offset`.
    let offset = query
        .get("offset")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0usize);
    let store = app.broker.store.clone();
    let rows = blocking(move || {
        let d = e.delayed.as_ref().expect("delayed");
        let now = crate::clock::now_ms();
        d.list(offset.saturating_add(limit))
            .into_iter()
            .skip(offset)
            .filter_map(|(due, pos)| {
                store.with_message(pos, |m| {
                    json!({
                        "due": due,
                        "due_in_ms": due as i64 - now as i64,
                        "message_id": publish::message_id_of(m.header),
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
