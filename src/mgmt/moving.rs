//! `POST /api/queues/{vhost}/{name}/move`: move ready messages to another
//! queue, a batch per call, with the same safety as `lepusctl move`.
//!
//! A call takes up to `count` ready messages from the source (they leave its
//! ready list, as if delivered to a consumer), publishes each through the
//! broker's one pipeline to the default exchange with the destination's name
//! as routing key (same properties, same body), waits until the store has
//! synced those publishes (as a publisher confirm would), and only then
//! drops them from the source (as an ack would). So:
//!
//! - nothing is lost: a message leaves the source only once its copy is
//!   stored in the destination; a crash in between brings the source's copy
//!   back at restart;
//! - at most one batch can end up in both queues, if the broker dies between
//!   the sync and the drop (the same bound as `lepusctl move --prefetch`);
//! - a publish that fails (the destination gone, or full with
//!   `reject-publish`) puts that message and every later one back in the
//!   source, in order, marked redelivered as a nacked delivery would be.
//!
//! The console calls it repeatedly and shows the progress; the answer says
//! how many moved and how many are left.

use super::common::{blocking, parse_body, ApiError, ApiResult, Caller};
use super::exchanges::publish_message;
use super::App;
use crate::broker::publish;
use crate::broker::Access;
use crate::metrics::Counters;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

/// The most messages one call moves.
const MAX_BATCH: u64 = 1000;

#[derive(Deserialize, Default)]
struct MoveReq {
    destination: Option<String>,
    count: Option<u64>,
}

pub async fn move_messages(
    State(app): State<App>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let req: MoveReq = parse_body(&body)?;
    let b = app.broker.clone();
    let v = caller.vhost(&b, &vhost)?;
    let src = v.queue(&name).ok_or_else(ApiError::not_found)?;
    let dest_name = req
        .destination
        .filter(|d| !d.is_empty())
        .ok_or_else(|| ApiError::bad_request("destination must be set"))?;
    if dest_name == name {
        return Err(ApiError::bad_request(
            "destination must be another queue than the source",
        ));
    }
    let dest = v.queue(&dest_name).ok_or_else(|| {
        ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            "not_found",
            format!("no queue '{dest_name}' in vhost '{vhost}'"),
        )
    })?;
    for q in [&src, &dest] {
        if q.exclusive_owner.is_some() {
            return Err(ApiError::bad_request(format!(
                "resource_locked: queue '{}' in vhost '{vhost}' is exclusive to another connection",
                q.name
            )));
        }
    }
    let count = req.count.unwrap_or(MAX_BATCH).clamp(1, MAX_BATCH);
    // As `lepusctl move` over AMQP: read on the source, write on the
    // default exchange (which routes to the destination).
    caller.check(&b, &vhost, Access::Read, "queue", &name)?;
    caller.check(&b, &vhost, Access::Write, "exchange", "")?;
    let default = v.get_exchange("")?;

    let b2 = b.clone();
    let (moved, last_sync, failed, back) = blocking(move || {
        let taken = src.take(count as usize);
        let store = src.store().clone();
        let mut moved = vec![];
        let mut last_sync = None;
        let mut failed: Option<ApiError> = None;
        let mut rest = taken.into_iter();
        for t in rest.by_ref() {
            let copy =
                store.with_message(t.1, |m| (publish::properties_of(m.header), m.body.to_vec()));
            let Some((props, body)) = copy else {
                // Gone from the store (expired and released): nothing to move.
                src.drop_taken(t.1);
                continue;
            };
            match publish_message(&b2, &v, &default, &dest_name, &props, &body) {
                Ok((true, sync)) => {
                    if sync.is_some() {
                        last_sync = sync.max(last_sync);
                    }
                    moved.push(t);
                }
                Ok((false, _)) => {
                    failed = Some(ApiError::internal(format!(
                        "queue '{dest_name}' no longer routes from the default exchange"
                    )));
                    let back: Vec<_> = std::iter::once(t).chain(rest).collect();
                    return (moved, last_sync, failed, (src, back));
                }
                Err(e) => {
                    failed = Some(e);
                    let back: Vec<_> = std::iter::once(t).chain(rest).collect();
                    return (moved, last_sync, failed, (src, back));
                }
            }
        }
        (moved, last_sync, failed, (src, vec![]))
    })
    .await?;
    let (src, back) = back;
    if !back.is_empty() {
        src.return_taken(back.into_iter().map(|(s, p, d)| (s, p, d + 1)).collect());
    }
    // As a publisher confirm: the copies are on disk before the originals go.
    if let Some(seq) = last_sync {
        let mut synced = b.store.synced();
        let _ = synced.wait_for(|s| *s >= seq).await;
        if b.store.sync_failed(seq) {
            // Keep the originals (the copies may be lost): at worst duplicates.
            src.return_taken(moved);
            return Err(ApiError::internal(
                "the moved messages could not be written to disk; they stay in the source",
            ));
        }
    }
    let n = moved.len() as u64;
    for (_, pos, _) in moved {
        src.drop_taken(pos);
    }
    Counters::add(&src.counters.delivered, n);
    Counters::add(&src.counters.acked, n);
    src.store().flush_acks();
    if let Some(e) = failed {
        if n == 0 {
            return Err(e);
        }
        tracing::warn!(queue = %src.name, moved = n, reason = %e.reason, "move stopped early");
    }
    Ok(Json(json!({
        "moved": n,
        "remaining": src.message_count(),
    })))
}
