//! The one publish pipeline: every message that enters a queue comes
//! through [`publish`], whoever made it.
//!
//! Callers: the AMQP channel (basic.publish and tx.commit), the management
//! API's publish, dead-lettering ([`crate::broker::dead_letter`]) and the
//! release of delayed messages ([`crate::broker::delayed`]). The caller has
//! validated the message first (access, internal exchange, user-id,
//! expiration: named guards before any side effect); this module owns the
//! steps after that, in one order:
//!
//! 1. exchange deduplication (client publishes only);
//! 2. the routing keys: the routing key plus the `CC` and `BCC` headers;
//! 3. routing through the vhost (exchange-to-exchange, alternate exchanges);
//! 4. x-delay on a delayed exchange: store once and schedule (client
//!    publishes only: released and dead-lettered copies are not delayed again);
//! 5. queue deduplication (client publishes only) and, for dead-lettered
//!    copies, RabbitMQ's cycle check;
//! 6. one store append for all queues (BCC stripped), naming the durable ones;
//! 7. enqueue into each queue; a queue that refuses it (reject-publish)
//!    makes the outcome a nack; a failed append or a refusal makes the dedup
//!    caches forget the message, so that a retry is not taken for a duplicate.
//!
//! Delegates: routing to [`VHost::route`], storage to [`Store::append`],
//! ordering and dispatch to [`Queue::enqueue_with`]. Writes no frames: the
//! caller turns the [`Outcome`] into a confirm, a basic.return or a JSON
//! answer. Nothing here survives a crash by itself: what the store appended
//! is recovered by the store.

use crate::broker::dead_letter::is_cycle;
use crate::broker::exchange::Exchange;
use crate::broker::queue::{EnqueueInfo, Enqueued, Queue};
use crate::broker::vhost::VHost;
use crate::protocol::props;
use crate::store::{self, AppendError, Store, SyncSeq};
use amq_protocol::protocol::BasicProperties;
use amq_protocol::types::{AMQPValue, FieldTable};
use std::sync::Arc;

/// One message to publish, validated and parsed by the caller.
pub struct Publish<'a> {
    pub exchange: &'a Arc<Exchange>,
    pub routing_key: &'a str,
    /// The raw content header (properties), as stored and delivered.
    pub header: &'a [u8],
    pub body: &'a [u8],
    /// The parsed headers table, if the message has one.
    pub headers: Option<&'a FieldTable>,
    pub persistent: bool,
    pub priority: u8,
    /// Per-message TTL (the expiration property), ms.
    pub expiration: Option<u64>,
    /// mandatory: an unroutable message is not stored (and the caller
    /// returns it); also judged for delayed messages, against the bindings
    /// at publish time.
    pub mandatory: bool,
}

/// Who publishes: decides which steps apply (see the module header).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A client: over AMQP or the management API.
    Client,
    /// A dead-lettered copy.
    DeadLetter,
    /// A delayed message that fell due.
    DelayedRelease,
}

/// What became of a publish.
#[derive(Debug)]
pub enum Outcome {
    /// Stored and enqueued; a confirm waits for this sync, if any.
    Routed { sync: Option<SyncSeq> },
    /// x-delay: stored and scheduled; `routed_now` whether the bindings as
    /// they are now would route it.
    Scheduled {
        sync: Option<SyncSeq>,
        routed_now: bool,
    },
    /// No queue took it (nothing stored).
    Unroutable,
    /// A deduplication cache had seen it: dropped, confirmed.
    Duplicate,
    /// A queue refused it (x-overflow reject-publish): the publisher gets a nack.
    Rejected,
    /// The store could not take it (disk full, shut down): a nack.
    NotStored(AppendError),
}

/// How a publisher confirm is decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Confirm {
    /// basic.ack now.
    Ack,
    /// basic.ack once the store's sync covers this sequence number.
    AckAfter(SyncSeq),
    /// basic.nack now.
    Nack,
}

impl Outcome {
    pub fn confirm(&self) -> Confirm {
        match self {
            Outcome::Routed { sync } | Outcome::Scheduled { sync, .. } => match sync {
                Some(s) => Confirm::AckAfter(*s),
                None => Confirm::Ack,
            },
            Outcome::Unroutable | Outcome::Duplicate => Confirm::Ack,
            Outcome::Rejected | Outcome::NotStored(_) => Confirm::Nack,
        }
    }
}

/// Buffers and caches a publisher keeps between publishes, so the hot path
/// allocates nothing per message.
#[derive(Default)]
pub struct Scratch {
    queues: Vec<Arc<Queue>>,
    prefix: Vec<u8>,
    durable_ids: Vec<u32>,
    keys: Vec<String>,
    /// The queue the default exchange last routed to.
    default_route: Option<Arc<Queue>>,
    /// Queues that publishes pushed past their flow-control mark, for the
    /// publisher's connection to wait on (see [`Queue::flow_wait`]).
    pub pressure: Vec<Arc<Queue>>,
}

/// Publish one message: route, store once, enqueue everywhere.
pub fn publish(
    vh: &VHost,
    store: &Store,
    msg: &Publish,
    origin: Origin,
    s: &mut Scratch,
) -> Outcome {
    let ex = msg.exchange;
    let client = origin == Origin::Client;
    if client {
        if let Some(d) = ex.dedup.get() {
            if d.is_duplicate(msg.header) {
                return Outcome::Duplicate;
            }
        }
    }
    // CC and BCC add routing keys.
    s.keys.clear();
    let mut bcc = false;
    if let Some(h) = msg.headers {
        for k in ["CC", "BCC"] {
            if let Some(AMQPValue::FieldArray(a)) = h.inner().get(k) {
                bcc |= k == "BCC";
                s.keys
                    .extend(a.as_slice().iter().filter_map(super::args::str_value));
            }
        }
    }
    // Without CC/BCC (nearly always) the keys are the routing key alone: no allocation.
    let with_cc: Vec<&str>;
    let keys: &[&str] = if s.keys.is_empty() {
        std::slice::from_ref(&msg.routing_key)
    } else {
        with_cc = std::iter::once(msg.routing_key)
            .chain(s.keys.iter().map(|k| k.as_str()))
            .collect();
        &with_cc
    };

    let mut queues = std::mem::take(&mut s.queues);
    queues.clear();
    // The default exchange routes by queue name: remember the last one.
    match &s.default_route {
        Some(q)
            if ex.name.is_empty() && keys.len() == 1 && q.name == keys[0] && !q.is_deleted() =>
        {
            queues.push(q.clone())
        }
        _ => {
            vh.route(ex, keys, msg.headers, msg.header, &mut queues);
            if ex.name.is_empty() && queues.len() == 1 {
                s.default_route = Some(queues[0].clone());
            }
        }
    }
    let outcome = deliver_to(store, msg, origin, &mut queues, bcc, s);
    queues.clear();
    s.queues = queues;
    outcome
}

/// Steps 4 to 7, for the queues routing found.
fn deliver_to(
    store: &Store,
    msg: &Publish,
    origin: Origin,
    queues: &mut Vec<Arc<Queue>>,
    bcc: bool,
    s: &mut Scratch,
) -> Outcome {
    let ex = msg.exchange;
    let client = origin == Origin::Client;
    if client {
        if let Some(d) = &ex.delayed {
            if let Some(delay) = super::delayed::x_delay(msg.headers) {
                let routed_now = !queues.is_empty();
                if msg.mandatory && !routed_now {
                    return Outcome::Unroutable;
                }
                return match d.store_and_schedule(
                    &ex.name,
                    msg.routing_key,
                    msg.header,
                    msg.body,
                    msg.persistent,
                    delay,
                    &mut s.prefix,
                ) {
                    Ok(sync) => Outcome::Scheduled { sync, routed_now },
                    Err(e) => Outcome::NotStored(e),
                };
            }
        }
    }
    if queues.is_empty() {
        return Outcome::Unroutable;
    }
    match origin {
        Origin::Client => {
            queues.retain(|q| !q.dedup.get().is_some_and(|d| d.is_duplicate(msg.header)));
            if queues.is_empty() {
                return Outcome::Duplicate;
            }
        }
        Origin::DeadLetter => {
            // RabbitMQ drops a copy that would close a cycle no client took part in.
            if let Some(h) = msg.headers {
                queues.retain(|q| !is_cycle(h, &q.name));
            }
            if queues.is_empty() {
                return Outcome::Unroutable;
            }
        }
        Origin::DelayedRelease => {}
    }

    s.durable_ids.clear();
    for q in queues.iter() {
        if q.logs(msg.persistent) {
            s.durable_ids.push(q.id);
        }
    }
    // BCC is removed before delivery (RabbitMQ strips it).
    let stripped;
    let header: &[u8] = if bcc {
        stripped = props::strip_bcc(msg.header).unwrap_or_else(|| msg.header.to_vec());
        &stripped
    } else {
        msg.header
    };
    let now = crate::clock::now_ms_ceil();
    store::encode_prefix(
        &mut s.prefix,
        // Recovered for the queues it names (a quorum queue names transient ones too).
        msg.persistent || !s.durable_ids.is_empty(),
        now,
        &s.durable_ids,
        &ex.name,
        msg.routing_key,
        header,
    );
    let (pos, sync) = match store.append(
        &s.prefix,
        msg.body,
        queues.len() as u64,
        !s.durable_ids.is_empty(),
    ) {
        Ok(x) => x,
        Err(e) => {
            // Nacked: a retry with the same id must not count as a duplicate.
            forget_dedup(ex, queues, msg.header);
            return Outcome::NotStored(e);
        }
    };
    let info = EnqueueInfo {
        expiration: msg.expiration,
        priority: msg.priority,
        body_len: msg.body.len() as u64,
        arrival_ms: now,
    };
    let mut rejected = false;
    for q in queues.drain(..) {
        match q.enqueue_with(pos.with_logged(q.logs(msg.persistent)), &info) {
            Enqueued::Accepted { pressure: true } => {
                if !s.pressure.iter().any(|p| Arc::ptr_eq(p, &q)) {
                    s.pressure.push(q);
                }
            }
            Enqueued::Accepted { pressure: false } => {}
            Enqueued::Rejected => {
                rejected = true;
                if let Some(d) = q.dedup.get() {
                    d.forget_message(msg.header);
                }
            }
        }
    }
    if rejected {
        if let Some(d) = ex.dedup.get() {
            d.forget_message(msg.header);
        }
        return Outcome::Rejected;
    }
    Outcome::Routed { sync }
}

/// A nacked publish was remembered by deduplication caches: forget it.
fn forget_dedup(ex: &Exchange, queues: &[Arc<Queue>], header: &[u8]) {
    if let Some(d) = ex.dedup.get() {
        d.forget_message(header);
    }
    for q in queues {
        if let Some(d) = q.dedup.get() {
            d.forget_message(header);
        }
    }
}

/// The parsed fields of a message made inside the broker or by the
/// management API, read leniently from its content header (a client's
/// publish is parsed strictly by its channel).
pub struct Parsed {
    pub headers: Option<FieldTable>,
    pub persistent: bool,
    pub priority: u8,
    pub expiration: Option<u64>,
}

impl Parsed {
    pub fn of(header: &[u8]) -> Parsed {
        let peek = props::peek(header).unwrap_or_default();
        Parsed {
            headers: peek.headers.and_then(|_| props::full_headers(header)),
            persistent: peek.persistent(),
            priority: peek.priority.unwrap_or(0),
            expiration: peek.expiration.and_then(|e| e.parse::<u64>().ok()),
        }
    }
}

/// The content header for a message given as properties (the management
/// API's publish).
pub fn content_header(body_len: usize, props: &BasicProperties) -> Vec<u8> {
    props::encode_header(body_len as u64, props)
}

/// A stored message's properties (for the management API, which reads
/// messages but never parses the wire itself).
pub fn properties_of(header: &[u8]) -> BasicProperties {
    props::full_properties(header).unwrap_or_default()
}

/// A stored message's message-id property, if any.
pub fn message_id_of(header: &[u8]) -> Option<&str> {
    props::peek(header).and_then(|p| p.message_id)
}
