//! Dead-lettering: RabbitMQ's x-death bookkeeping, cycle detection, and
//! republishing into the dead-letter exchange.
//!
//! A closed set of reasons; the new message is a new store record (its headers
//! change) routed through the DLX by the one publish pipeline
//! ([`crate::broker::publish`]). As in RabbitMQ's default
//! (at-most-once) mode, no confirm is involved: the original is released once
//! the copy is stored.

use crate::broker::publish::{publish, Origin, Outcome, Publish, Scratch};
use crate::broker::queue::Queue;
use crate::clock::now_ms;
use crate::protocol::props::{encode_header, full_properties};
use crate::store::{self, MsgPos};
use amq_protocol::types::{AMQPValue, FieldArray, FieldTable, LongString};
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    Rejected,
    Expired,
    Maxlen,
    DeliveryLimit,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Rejected => "rejected",
            Reason::Expired => "expired",
            Reason::Maxlen => "maxlen",
            Reason::DeliveryLimit => "delivery_limit",
        }
    }
}

/// A message leaving a queue for good, with why.
#[derive(Clone, Copy, Debug)]
pub struct Dead {
    pub pos: MsgPos,
    pub reason: Reason,
}

fn ls(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

/// The headers of a dead-lettered copy: x-death updated, x-first-death-* set
/// once, x-last-death-* every time.
pub fn death_headers(
    old: Option<&FieldTable>,
    queue: &str,
    reason: Reason,
    exchange: &str,
    routing_keys: &[String],
    original_expiration: Option<&str>,
) -> FieldTable {
    let mut h = old.cloned().unwrap_or_default().inner().clone();
    let mut deaths: Vec<AMQPValue> = match h.get("x-death") {
        Some(AMQPValue::FieldArray(a)) => a.as_slice().to_vec(),
        _ => vec![],
    };
    let same = |t: &FieldTable| {
        crate::broker::args::get_str(t, "queue").as_deref() == Some(queue)
            && crate::broker::args::get_str(t, "reason").as_deref() == Some(reason.as_str())
    };
    let existing = deaths
        .iter()
        .position(|d| matches!(d, AMQPValue::FieldTable(t) if same(t)));
    let entry = match existing {
        Some(i) => {
            let AMQPValue::FieldTable(t) = deaths.remove(i) else {
                unreachable!()
            };
            let mut m = t.inner().clone();
            let n = crate::broker::args::get_int(&t, "count").unwrap_or(0) + 1;
            m.insert("count".into(), AMQPValue::LongLongInt(n));
            FieldTable::from(m)
        }
        None => {
            let mut t = FieldTable::default();
            t.insert("count".into(), AMQPValue::LongLongInt(1));
            t.insert("reason".into(), ls(reason.as_str()));
            t.insert("queue".into(), ls(queue));
            t.insert("time".into(), AMQPValue::Timestamp(now_ms() / 1000));
            t.insert("exchange".into(), ls(exchange));
            t.insert(
                "routing-keys".into(),
                AMQPValue::FieldArray(FieldArray::from(
                    routing_keys.iter().map(|k| ls(k)).collect::<Vec<_>>(),
                )),
            );
            if let Some(e) = original_expiration {
                t.insert("original-expiration".into(), ls(e));
            }
            t
        }
    };
    deaths.insert(0, AMQPValue::FieldTable(entry));
    h.insert(
        "x-death".into(),
        AMQPValue::FieldArray(FieldArray::from(deaths)),
    );
    if !h.contains_key("x-first-death-reason") {
        h.insert("x-first-death-reason".into(), ls(reason.as_str()));
        h.insert("x-first-death-queue".into(), ls(queue));
        h.insert("x-first-death-exchange".into(), ls(exchange));
    }
    h.insert("x-last-death-reason".into(), ls(reason.as_str()));
    h.insert("x-last-death-queue".into(), ls(queue));
    h.insert("x-last-death-exchange".into(), ls(exchange));
    FieldTable::from(h)
}

/// Whether sending a message with these headers to `target` closes a cycle
/// that no client took part in (no `rejected` death on the way): RabbitMQ
/// drops such messages instead of looping forever.
pub fn is_cycle(headers: &FieldTable, target: &str) -> bool {
    let Some(AMQPValue::FieldArray(a)) = headers.inner().get("x-death") else {
        return false;
    };
    for d in a.as_slice() {
        let AMQPValue::FieldTable(t) = d else {
            continue;
        };
        if crate::broker::args::get_str(t, "reason").as_deref() == Some("rejected") {
            return false;
        }
        if crate::broker::args::get_str(t, "queue").as_deref() == Some(target) {
            return true;
        }
    }
    false
}

/// Dead-letter `dead` messages of `queue`: republish each to the queue's DLX
/// (if it has one and it exists), then release the original.
pub fn process(queue: &Arc<Queue>, dead: Vec<Dead>) {
    if dead.is_empty() {
        return;
    }
    let store = queue.store().clone();
    let cfg = queue.cfg();
    let dlx = cfg.dlx.clone();
    let vhost = queue.vhost();
    for d in dead {
        if let (Some(dlx), Some(vh)) = (&dlx, &vhost) {
            if let Some(ex) = vh.exchange(dlx) {
                republish(queue, &store, vh, &ex, d);
            } else {
                tracing::debug!(queue = %queue.name, dlx = %dlx, "dead-letter exchange missing; message dropped");
            }
        }
        queue.release_dead(d.pos);
    }
}

fn republish(
    queue: &Arc<Queue>,
    store: &Arc<store::Store>,
    vh: &Arc<crate::broker::vhost::VHost>,
    ex: &Arc<crate::broker::exchange::Exchange>,
    d: Dead,
) {
    let copied = store.with_message(d.pos, |m| {
        let props = full_properties(m.header).unwrap_or_default();
        let body_size = m.body.len() as u64;
        let mut keys = vec![m.routing_key.to_owned()];
        if let Some(h) = props.headers() {
            if let Some(AMQPValue::FieldArray(a)) = h.inner().get("CC") {
                keys.extend(
                    a.as_slice()
                        .iter()
                        .filter_map(crate::broker::args::str_value),
                );
            }
        }
        let expiration = props.expiration().as_ref().map(|e| e.as_str().to_owned());
        let mut headers = death_headers(
            props.headers().as_ref(),
            &queue.name,
            d.reason,
            m.exchange,
            &keys,
            expiration.as_deref(),
        );
        // The copy is routed by its routing key plus the CC header (the
        // publish pipeline adds CC keys); with an explicit dead-letter
        // routing key, CC no longer applies.
        let route_key = match &queue.cfg().dlrk {
            Some(k) => {
                let mut inner = headers.inner().clone();
                inner.remove("CC");
                headers = FieldTable::from(inner);
                k.clone()
            }
            None => m.routing_key.to_owned(),
        };
        // The per-message TTL does not follow the message (RabbitMQ keeps it
        // as original-expiration).
        let mut new_props = amq_protocol::protocol::BasicProperties::default();
        macro_rules! copy {
            ($get:ident, $with:ident) => {
                if let Some(v) = props.$get() {
                    new_props = new_props.$with(v.clone());
                }
            };
        }
        copy!(content_type, with_content_type);
        copy!(content_encoding, with_content_encoding);
        copy!(delivery_mode, with_delivery_mode);
        copy!(priority, with_priority);
        copy!(correlation_id, with_correlation_id);
        copy!(reply_to, with_reply_to);
        copy!(message_id, with_message_id);
        copy!(timestamp, with_timestamp);
        copy!(kind, with_type);
        copy!(user_id, with_user_id);
        copy!(app_id, with_app_id);
        copy!(cluster_id, with_cluster_id);
        new_props = new_props.with_headers(headers.clone());
        let header = encode_header(body_size, &new_props);
        (
            header,
            m.body.to_vec(),
            route_key,
            m.persistent,
            headers,
            new_props.priority().unwrap_or(0),
        )
    });
    let Some((header, body, route_key, persistent, headers, priority)) = copied else {
        return;
    };
    let msg = Publish {
        exchange: ex,
        routing_key: &route_key,
        header: &header,
        body: &body,
        headers: Some(&headers),
        persistent,
        priority,
        // The per-message TTL does not follow the copy.
        expiration: None,
        mandatory: false,
    };
    let mut scratch = Scratch::default();
    if let Outcome::NotStored(e) = publish(vh, store, &msg, Origin::DeadLetter, &mut scratch) {
        tracing::error!(queue = %queue.name, error = %e, "dead-lettered message not stored");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn x_death_counts_and_cycles() {
        let h = death_headers(
            None,
            "q1",
            Reason::Expired,
            "ex",
            &["rk".into()],
            Some("100"),
        );
        let h2 = death_headers(Some(&h), "q2", Reason::Expired, "dlx", &["rk".into()], None);
        let h3 = death_headers(Some(&h2), "q1", Reason::Expired, "ex", &["rk".into()], None);
        let AMQPValue::FieldArray(a) = &h3.inner()["x-death"] else {
            panic!()
        };
        assert_eq!(a.as_slice().len(), 2);
        let AMQPValue::FieldTable(first) = &a.as_slice()[0] else {
            panic!()
        };
        assert_eq!(
            crate::broker::args::get_str(first, "queue").as_deref(),
            Some("q1")
        );
        assert_eq!(crate::broker::args::get_int(first, "count"), Some(2));
        assert_eq!(
            crate::broker::args::get_str(&h3, "x-first-death-queue").as_deref(),
            Some("q1")
        );
        assert!(is_cycle(&h2, "q1"));
        let r = death_headers(Some(&h2), "q3", Reason::Rejected, "x", &[], None);
        assert!(!is_cycle(&r, "q1"));
    }
}
