//! What a queue sees of its consumers: the consumer, its channel's delivery
//! state (tags, unacked messages, prefetch) and the connection's outbox;
//! and the one place in the core that writes frames for a message handed
//! out (basic.deliver, basic.get-ok, their content), including a direct
//! reply that comes from a publish rather than the store, or a consumer
//! cancelled by the server (basic.cancel). Never imports the channel or
//! connection layers: they read the outbox this module fills.
//!
//! Queues deliver from whichever task holds their lock (usually the
//! publisher's), so these are shared. Lock order, always: queue, then
//! channel state, then outbox. Nothing takes a queue lock while holding a
//! channel state or outbox lock.

use crate::broker::queue::Queue;
use crate::protocol::{fast, props};
use crate::store::{MessageView, MsgPos};
use amq_protocol::protocol::{basic, AMQPClass};
use bytes::BytesMut;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use tokio::sync::Notify;

/// Above this many buffered bytes, queues stop delivering to a connection
/// until its writer has flushed: a slow reader must not make us buffer a
/// whole backlog in memory.
pub const OUTBOX_HIGH_WATER: usize = 4 << 20;

/// Per-connection state shared with queues: the single output buffer that the
/// writer task drains to the socket.
pub struct ConnShared {
    pub id: u64,
    out: Mutex<BytesMut>,
    pub notify: Notify,
    pub frame_max: AtomicU32,
    pub closed: AtomicBool,
    /// The client understands basic.cancel from the server.
    pub cancel_notify: AtomicBool,
    /// Queues that skipped us because the outbox was full.
    paused: Mutex<Vec<Weak<Queue>>>,
    /// Ack-log entries must be written before the next socket write.
    pub flush_store: AtomicBool,
    pub bytes_out: AtomicU64,
    /// The management API asked to close this connection (with this reason).
    pub close_requested: Notify,
    pub close_reason: Mutex<Option<String>>,
    /// The open channels, for the management API's channel list.
    pub channels: Mutex<Vec<Weak<ChannelShared>>>,
}

impl ConnShared {
    pub fn new(id: u64) -> Self {
        ConnShared {
            id,
            out: Mutex::new(BytesMut::new()),
            notify: Notify::new(),
            frame_max: AtomicU32::new(131072),
            closed: AtomicBool::new(false),
            cancel_notify: AtomicBool::new(false),
            paused: Mutex::new(vec![]),
            flush_store: AtomicBool::new(false),
            bytes_out: AtomicU64::new(0),
            close_requested: Notify::new(),
            close_reason: Mutex::new(None),
            channels: Mutex::new(vec![]),
        }
    }

    /// Ask the connection's task to close it with 320 CONNECTION_FORCED.
    pub fn request_close(&self, reason: &str) {
        *self.close_reason.lock() = Some(reason.to_owned());
        self.close_requested.notify_one();
    }

    /// Append frames to the outbox and wake the writer.
    pub fn send(&self, f: impl FnOnce(&mut BytesMut)) {
        if self.closed.load(Ordering::Relaxed) {
            return;
        }
        let mut g = self.out.lock();
        let was_empty = g.is_empty();
        f(&mut g);
        drop(g);
        if was_empty {
            self.notify.notify_one();
        }
    }

    /// Lock the outbox to write into it directly (the caller wakes the writer with [`Self::wake`]).
    pub fn outbox(&self) -> parking_lot::MutexGuard<'_, BytesMut> {
        self.out.lock()
    }

    pub fn wake(&self) {
        self.notify.notify_one();
    }

    pub fn is_full(&self) -> bool {
        self.out.lock().len() > OUTBOX_HIGH_WATER
    }

    pub fn frame_max(&self) -> u32 {
        self.frame_max.load(Ordering::Relaxed)
    }

    /// Swap the outbox with `spare` (the writer's buffer).
    pub fn take(&self, spare: &mut BytesMut) {
        std::mem::swap(&mut *self.out.lock(), spare);
    }

    /// Register `q` for [`Self::resume`]; returns whether the outbox is
    /// still full. If the writer drained it between the caller's check and
    /// this registration, its resume may already have run: the caller then
    /// delivers right away instead of waiting for a resume that won't come.
    pub fn pause(&self, q: &Arc<Queue>) -> bool {
        {
            let mut p = self.paused.lock();
            if !p.iter().any(|w| w.as_ptr() == Arc::as_ptr(q)) {
                p.push(Arc::downgrade(q));
            }
        }
        self.is_full()
    }

    /// Full, and registered for a resume (see [`Self::pause`]).
    pub fn full_and_paused(&self, q: &Arc<Queue>) -> bool {
        self.is_full() && self.pause(q)
    }

    /// Called by the writer once the outbox has drained.
    pub fn resume(&self) {
        let paused = std::mem::take(&mut *self.paused.lock());
        for q in paused.into_iter().filter_map(|w| w.upgrade()) {
            q.dispatch();
        }
    }
}

/// One message handed to a consumer (or basic.get) and not yet acked.
pub struct Unacked {
    pub tag: u64,
    pub queue: Arc<Queue>,
    pub seq: u64,
    pub pos: MsgPos,
    pub deliveries: u32,
    pub consumer: Option<Arc<Consumer>>,
}

/// A channel's delivery bookkeeping.
pub struct DeliveryState {
    pub next_tag: u64,
    /// In delivery-tag order.
    pub unacked: VecDeque<Unacked>,
    /// basic.qos global=true: limit for the whole channel (0 = none).
    pub global_prefetch: u32,
    pub closed: bool,
    pub consumers: Vec<Arc<Consumer>>,
    /// The channel's consumer of the direct reply-to pseudo-queue, if any.
    pub reply: Option<ReplyConsumer>,
}

/// A consumer of `amq.rabbitmq.reply-to` (always no-ack): replies reach it
/// straight from their publisher's channel (see [`deliver_reply`]).
pub struct ReplyConsumer {
    pub tag: String,
    /// The token in the reply routing keys that name this consumer
    /// ([`crate::broker::reply_to`]).
    pub token: String,
}

pub struct ChannelShared {
    pub id: u16,
    pub conn: Arc<ConnShared>,
    pub state: Mutex<DeliveryState>,
}

impl ChannelShared {
    pub fn new(id: u16, conn: Arc<ConnShared>) -> Self {
        ChannelShared {
            id,
            conn,
            state: Mutex::new(DeliveryState {
                next_tag: 1,
                unacked: VecDeque::new(),
                global_prefetch: 0,
                closed: false,
                consumers: vec![],
                reply: None,
            }),
        }
    }
}

pub struct Consumer {
    pub tag: String,
    pub channel: Arc<ChannelShared>,
    pub no_ack: bool,
    pub exclusive: bool,
    /// basic.qos global=false at consume time (0 = none).
    pub prefetch: u32,
    pub unacked: AtomicU32,
    pub priority: i32,
    pub queue: Arc<Queue>,
    pub arguments: amq_protocol::types::FieldTable,
}

impl Consumer {
    pub fn has_credit(&self) -> bool {
        self.no_ack || self.prefetch == 0 || self.unacked.load(Ordering::Relaxed) < self.prefetch
    }
}

/// The queue was deleted under a consumer: tell its client (basic.cancel).
pub fn server_cancel(c: &Arc<Consumer>) {
    let ch = &c.channel;
    {
        let mut st = ch.state.lock();
        st.consumers.retain(|x| !Arc::ptr_eq(x, c));
    }
    if ch.conn.cancel_notify.load(Ordering::Relaxed) {
        let id = ch.id;
        let tag = c.tag.clone();
        ch.conn.send(|out| {
            crate::protocol::put_method(
                out,
                id,
                AMQPClass::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
                    consumer_tag: tag.into(),
                    nowait: true,
                })),
            )
        });
    }
}

/// A direct reply: hand a message, as its responder published it, straight
/// to `ch`'s reply consumer if it is still the one `token` names (never
/// stored, never queued). Returns whether it was delivered. As in RabbitMQ,
/// the delivery carries the channel's next delivery tag without using it up
/// (a no-ack delivery is never acked).
pub fn deliver_reply(
    ch: &ChannelShared,
    token: &str,
    exchange: &str,
    routing_key: &str,
    header: &[u8],
    body: &[u8],
) -> bool {
    let st = ch.state.lock();
    let Some(rc) = st.reply.as_ref().filter(|r| r.token == token) else {
        return false;
    };
    if st.closed || ch.conn.closed.load(Ordering::Relaxed) {
        return false;
    }
    let frame_max = ch.conn.frame_max();
    {
        let mut out = ch.conn.outbox();
        fast::put_deliver(
            &mut out,
            ch.id,
            &rc.tag,
            st.next_tag,
            false,
            exchange,
            routing_key,
        );
        fast::put_content(&mut out, ch.id, header, body, frame_max);
    }
    drop(st);
    ch.conn.wake();
    true
}

/// Consumers the server cancelled whose basic.cancel is not written yet:
/// dropping this writes them ([`server_cancel`]). A channel that deletes a
/// queue drops it after its queue.delete-ok, so that its client sees
/// delete-ok first and then the cancel, in RabbitMQ's order.
#[must_use = "dropping it writes the basic.cancel frames"]
#[derive(Default)]
pub struct Cancels(pub Vec<Arc<Consumer>>);

impl Drop for Cancels {
    fn drop(&mut self) {
        for c in self.0.drain(..) {
            server_cancel(&c);
        }
    }
}

/// How a message is handed out.
pub enum Handout<'a> {
    /// basic.deliver to a consumer.
    Deliver { consumer_tag: &'a str },
    /// basic.get-ok, with the count of messages left in the queue.
    GetOk { remaining: u32 },
}

/// Write one handed-out message into `ch`'s connection outbox: the method
/// frame, then the content header and body frames, read straight from the
/// store's record (the one copy on the way out). `deliveries` counts earlier
/// deliveries (redelivered when > 0); with `count_header` a redelivery
/// carries x-delivery-count (quorum queues, delivery limits). The caller
/// holds the queue lock and the channel state lock (lock order: queue,
/// channel state, outbox) and wakes the writer.
pub fn write_message(
    ch: &ChannelShared,
    how: Handout,
    tag: u64,
    m: &MessageView,
    deliveries: u32,
    count_header: bool,
) {
    let frame_max = ch.conn.frame_max();
    let mut out = ch.conn.outbox();
    let redelivered = deliveries > 0;
    match how {
        Handout::Deliver { consumer_tag } => fast::put_deliver(
            &mut out,
            ch.id,
            consumer_tag,
            tag,
            redelivered,
            m.exchange,
            m.routing_key,
        ),
        Handout::GetOk { remaining } => fast::put_get_ok(
            &mut out,
            ch.id,
            tag,
            redelivered,
            m.exchange,
            m.routing_key,
            remaining,
        ),
    }
    if count_header && redelivered {
        let h = props::with_delivery_count(m.header, m.body.len() as u64, deliveries);
        fast::put_content(&mut out, ch.id, &h, m.body, frame_max);
    } else {
        fast::put_content(&mut out, ch.id, m.header, m.body, frame_max);
    }
}
