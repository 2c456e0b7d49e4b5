//! `/api/vhosts` and `/api/vhosts/{vhost}`: list, show, create, delete.
//!
//! Creating and deleting are the broker's ([`crate::broker::Broker::add_vhost`],
//! [`crate::broker::Broker::delete_vhost`]); deleting also asks the vhost's
//! open connections to close. A vhost's permissions, connections and
//! channels are served by `permissions.rs` and `connections.rs`.

use super::common::{
    blocking, connections, created, node_name, parse_body, visible_vhosts, ApiError, ApiResult,
    Caller,
};
use super::stats::Sample;
use super::App;
use crate::broker::vhost::VHost;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

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
