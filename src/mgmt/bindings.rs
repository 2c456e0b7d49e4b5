//! `/api/bindings` (all, per vhost, between two objects, one binding) and
//! the binding lists of an exchange (`bindings/source`,
//! `bindings/destination`) and of a queue (`/api/queues/{vhost}/{name}/bindings`).
//!
//! Binding and unbinding are the broker's ([`crate::broker::Broker::bind`],
//! [`crate::broker::Broker::unbind`]), with their checks and texts. Here:
//! the default exchange's implicit bindings and RabbitMQ's "properties key"
//! that names one binding in a path.

use super::common::{
    blocking, exchange_name, parse_body, sorted_exchanges, sorted_queues, visible_vhosts, ApiError,
    ApiResult, Caller,
};
use super::json::{json_to_table, table_to_json};
use super::App;
use crate::broker::exchange::{Dest, Exchange};
use crate::broker::vhost::VHost;
use crate::broker::Access;
use amq_protocol::types::FieldTable;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

struct B {
    vhost: String,
    source: String,
    destination: String,
    destination_type: &'static str,
    routing_key: String,
    arguments: FieldTable,
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
