//! The queue: an ordered list of positions into the store, its consumers,
//! and the messages it has handed out and not yet seen acked.
//!
//! Owns: order (a per-queue sequence number; a requeued message goes back to
//! its old place), fair dispatch across consumers within their prefetch, and
//! releasing store references when a message leaves for good.
//! Delegates: bodies to the store, tags and unacked lists to the channel
//! ([`crate::delivery`]), durability of its existence to the definitions log.
//! After a crash: rebuilt from the store's recovery (see [`Queue::restore`]).

use crate::delivery::{ChannelShared, Consumer, Unacked};
use crate::metrics::Counters;
use crate::protocol::fast;
use crate::store::{MsgPos, Recovered, Store};
use amq_protocol::types::FieldTable;
use parking_lot::Mutex;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Flow control: a publisher that pushes a queue with consumers past this
/// many ready messages waits (after its current read batch) until the queue
/// is back under [`FLOW_LOW`]. As RabbitMQ's credit flow, this keeps a fast
/// publisher from taking all the CPU while its consumers fall behind; a
/// queue without consumers (a backlog being filled) never throttles.
pub const FLOW_HIGH: usize = 8192;
pub const FLOW_LOW: usize = 4096;
/// A waiting publisher goes on if the queue delivered nothing for this long
/// (its consumers are stuck, not slow): flow control must never deadlock.
const FLOW_STALL: Duration = Duration::from_millis(10);

#[derive(Clone, Copy, Debug)]
struct Requeued {
    pos: MsgPos,
    deliveries: u32,
}

#[derive(Default)]
pub struct QueueInner {
    /// Never-delivered messages in order; `ready[i]` has sequence `head_seq + i`.
    ready: VecDeque<MsgPos>,
    head_seq: u64,
    /// Messages that were delivered and came back, by their original sequence
    /// number. They always precede `ready`: they were delivered from its head.
    requeued: BTreeMap<u64, Requeued>,
    consumers: Vec<Arc<Consumer>>,
    next_consumer: usize,
    /// Handed out, not yet acked.
    unacked: u64,
    had_consumers: bool,
}

pub struct Queue {
    pub name: String,
    pub vhost: String,
    /// Stable id; the store's records name durable queues by it.
    pub id: u32,
    pub durable: bool,
    /// Connection id of the owner of an exclusive queue.
    pub exclusive_owner: Option<u64>,
    pub auto_delete: bool,
    pub arguments: FieldTable,
    store: Arc<Store>,
    inner: Mutex<QueueInner>,
    deleted: AtomicBool,
    pub counters: Counters,
    flow: tokio::sync::Notify,
    throttling: AtomicBool,
}

/// What the channel learns from removing a consumer.
pub struct Cancelled {
    /// auto-delete queue lost its last consumer: delete it.
    pub auto_delete_now: bool,
}

impl Queue {
    pub fn new(
        name: &str,
        vhost: &str,
        id: u32,
        durable: bool,
        exclusive_owner: Option<u64>,
        auto_delete: bool,
        arguments: FieldTable,
        store: Arc<Store>,
    ) -> Self {
        Queue {
            name: name.to_owned(),
            vhost: vhost.to_owned(),
            id,
            durable,
            exclusive_owner,
            auto_delete,
            arguments,
            store,
            inner: Mutex::new(QueueInner::default()),
            deleted: AtomicBool::new(false),
            counters: Counters::default(),
            flow: tokio::sync::Notify::new(),
            throttling: AtomicBool::new(false),
        }
    }

    pub fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }

    /// Fill a recovered durable queue with its messages, in order. Those that
    /// had been delivered before the restart come first, marked redelivered.
    pub fn restore(&self, msgs: Vec<Recovered>) {
        let mut q = self.inner.lock();
        let mut seq = 0;
        for r in msgs.iter().filter(|r| r.delivered) {
            q.requeued.insert(seq, Requeued { pos: r.pos, deliveries: 1 });
            seq += 1;
        }
        q.head_seq = seq;
        q.ready.extend(msgs.iter().filter(|r| !r.delivered).map(|r| r.pos));
    }

    /// Whether a message in this queue must have its removal logged.
    pub fn logs(&self, persistent: bool) -> bool {
        self.durable && persistent
    }

    /// Take a message (already in the store, with one reference for us).
    /// Returns true when the publisher should wait for [`Self::flow_wait`].
    pub fn enqueue(self: &Arc<Self>, pos: MsgPos) -> bool {
        Counters::add(&self.counters.published, 1);
        let mut q = self.inner.lock();
        if self.is_deleted() {
            drop(q);
            self.store.release(pos, self.id);
            return false;
        }
        q.ready.push_back(pos);
        if !q.consumers.is_empty() {
            self.dispatch_locked(&mut q);
            return q.ready.len() > FLOW_HIGH;
        }
        false
    }

    /// Wait until the queue's consumers have caught up (see [`FLOW_HIGH`]).
    pub async fn flow_wait(&self) {
        loop {
            let delivered = Counters::get(&self.counters.delivered);
            let notified = self.flow.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let q = self.inner.lock();
                if q.ready.len() + q.requeued.len() <= FLOW_LOW || q.consumers.is_empty() || self.is_deleted() {
                    return;
                }
                self.throttling.store(true, Ordering::Release);
            }
            if tokio::time::timeout(FLOW_STALL, notified).await.is_err()
                && delivered == Counters::get(&self.counters.delivered)
            {
                return;
            }
        }
    }

    pub fn dispatch(self: &Arc<Self>) {
        let mut q = self.inner.lock();
        self.dispatch_locked(&mut q);
    }

    fn pop(q: &mut QueueInner) -> Option<(u64, MsgPos, u32)> {
        if let Some((seq, r)) = q.requeued.pop_first() {
            return Some((seq, r.pos, r.deliveries));
        }
        let pos = q.ready.pop_front()?;
        let seq = q.head_seq;
        q.head_seq += 1;
        Some((seq, pos, 0))
    }

    fn has_ready(q: &QueueInner) -> bool {
        !q.ready.is_empty() || !q.requeued.is_empty()
    }

    fn dispatch_locked(self: &Arc<Self>, q: &mut QueueInner) {
        while Self::has_ready(q) && !q.consumers.is_empty() {
            let n = q.consumers.len();
            let mut delivered = false;
            for i in 0..n {
                let idx = (q.next_consumer + i) % n;
                let c = q.consumers[idx].clone();
                if !c.has_credit() {
                    continue;
                }
                if c.channel.conn.is_full() {
                    c.channel.conn.pause(self);
                    continue;
                }
                if self.deliver_locked(q, &c) {
                    q.next_consumer = (idx + 1) % n;
                    delivered = true;
                    break;
                }
            }
            if !delivered {
                break;
            }
        }
        if self.throttling.load(Ordering::Acquire) && q.ready.len() <= FLOW_LOW {
            self.throttling.store(false, Ordering::Release);
            self.flow.notify_waiters();
        }
    }

    /// Deliver the next message to `c`; false if its channel cannot take it.
    fn deliver_locked(self: &Arc<Self>, q: &mut QueueInner, c: &Arc<Consumer>) -> bool {
        let ch = &c.channel;
        let mut st = ch.state.lock();
        if st.closed || !st.flow {
            return false;
        }
        if !c.no_ack && st.global_prefetch > 0 && st.unacked.len() as u32 >= st.global_prefetch {
            return false;
        }
        let Some((seq, pos, deliveries)) = Self::pop(q) else {
            return false;
        };
        let tag = st.next_tag;
        st.next_tag += 1;
        let frame_max = ch.conn.frame_max();
        let wrote = self.store.with_message(pos, |m| {
            let mut out = ch.conn.outbox();
            fast::put_deliver(&mut out, ch.id, &c.tag, tag, deliveries > 0, m.exchange, m.routing_key);
            fast::put_content(&mut out, ch.id, m.header, m.body, frame_max);
        });
        if wrote.is_none() {
            tracing::error!(queue = %self.name, ?pos, "message missing from the store; dropped");
            return true;
        }
        Counters::add(&self.counters.delivered, 1);
        if deliveries > 0 {
            Counters::add(&self.counters.redelivered, 1);
        }
        if c.no_ack {
            drop(st);
            self.store.release(pos, self.id);
            if pos.logged() {
                ch.conn.flush_store.store(true, Ordering::Relaxed);
            }
        } else {
            if pos.logged() {
                self.store.mark_delivered(pos, self.id);
                ch.conn.flush_store.store(true, Ordering::Relaxed);
            }
            st.unacked.push_back(Unacked {
                tag,
                queue: self.clone(),
                seq,
                pos,
                deliveries: deliveries + 1,
                consumer: Some(c.clone()),
            });
            c.unacked.fetch_add(1, Ordering::Relaxed);
            q.unacked += 1;
            drop(st);
        }
        ch.conn.wake();
        true
    }

    /// basic.get: deliver one message on `ch` if there is one.
    pub fn get(self: &Arc<Self>, ch: &Arc<ChannelShared>, no_ack: bool) -> bool {
        let mut q = self.inner.lock();
        let Some((seq, pos, deliveries)) = Self::pop(&mut q) else {
            return false;
        };
        let remaining = (q.ready.len() + q.requeued.len()) as u32;
        let mut st = ch.state.lock();
        let tag = st.next_tag;
        st.next_tag += 1;
        let frame_max = ch.conn.frame_max();
        let wrote = self.store.with_message(pos, |m| {
            let mut out = ch.conn.outbox();
            fast::put_get_ok(&mut out, ch.id, tag, deliveries > 0, m.exchange, m.routing_key, remaining);
            fast::put_content(&mut out, ch.id, m.header, m.body, frame_max);
        });
        if wrote.is_none() {
            tracing::error!(queue = %self.name, ?pos, "message missing from the store; dropped");
            return false;
        }
        Counters::add(&self.counters.delivered, 1);
        if no_ack {
            drop(st);
            self.store.release(pos, self.id);
        } else {
            if pos.logged() {
                self.store.mark_delivered(pos, self.id);
            }
            st.unacked.push_back(Unacked {
                tag,
                queue: self.clone(),
                seq,
                pos,
                deliveries: deliveries + 1,
                consumer: None,
            });
            q.unacked += 1;
        }
        if pos.logged() {
            ch.conn.flush_store.store(true, Ordering::Relaxed);
        }
        ch.conn.wake();
        true
    }

    /// Messages acked (or rejected without requeue): gone for good.
    pub fn ack(self: &Arc<Self>, entries: &[Unacked]) {
        for e in entries {
            self.store.release(e.pos, self.id);
            if let Some(c) = &e.consumer {
                c.unacked.fetch_sub(1, Ordering::Relaxed);
            }
        }
        Counters::add(&self.counters.acked, entries.len() as u64);
        let mut q = self.inner.lock();
        q.unacked = q.unacked.saturating_sub(entries.len() as u64);
        self.dispatch_locked(&mut q);
    }

    /// Messages back to their old place, to be redelivered.
    pub fn requeue(self: &Arc<Self>, entries: &[Unacked]) {
        let mut q = self.inner.lock();
        for e in entries {
            if let Some(c) = &e.consumer {
                c.unacked.fetch_sub(1, Ordering::Relaxed);
            }
            q.unacked = q.unacked.saturating_sub(1);
            if self.is_deleted() {
                self.store.release(e.pos, self.id);
                continue;
            }
            q.requeued.insert(
                e.seq,
                Requeued {
                    pos: e.pos,
                    deliveries: e.deliveries,
                },
            );
        }
        self.dispatch_locked(&mut q);
    }

    pub fn add_consumer(self: &Arc<Self>, c: Arc<Consumer>) {
        let mut q = self.inner.lock();
        q.consumers.push(c);
        q.had_consumers = true;
        self.dispatch_locked(&mut q);
    }

    pub fn remove_consumer(&self, c: &Arc<Consumer>) -> Cancelled {
        let mut q = self.inner.lock();
        q.consumers.retain(|x| !Arc::ptr_eq(x, c));
        Cancelled {
            auto_delete_now: self.auto_delete && q.had_consumers && q.consumers.is_empty() && !self.is_deleted(),
        }
    }

    /// Exclusive-consumer checks for basic.consume.
    pub fn consumer_conflict(&self, exclusive: bool) -> bool {
        let q = self.inner.lock();
        q.consumers.iter().any(|c| c.exclusive) || (exclusive && !q.consumers.is_empty())
    }

    pub fn message_count(&self) -> u32 {
        let q = self.inner.lock();
        (q.ready.len() + q.requeued.len()) as u32
    }

    pub fn consumer_count(&self) -> u32 {
        self.inner.lock().consumers.len() as u32
    }

    pub fn unacked_count(&self) -> u64 {
        self.inner.lock().unacked
    }

    pub fn consumers(&self) -> Vec<Arc<Consumer>> {
        self.inner.lock().consumers.clone()
    }

    /// Remove every ready message; returns how many.
    pub fn purge(&self) -> u32 {
        let (ready, requeued) = {
            let mut q = self.inner.lock();
            let ready = std::mem::take(&mut q.ready);
            q.head_seq += ready.len() as u64;
            (ready, std::mem::take(&mut q.requeued))
        };
        let n = ready.len() + requeued.len();
        for pos in ready.into_iter().chain(requeued.into_values().map(|r| r.pos)) {
            self.store.release(pos, self.id);
        }
        self.store.flush_acks();
        n as u32
    }

    /// Mark deleted, drop the messages; returns (message count, consumers to notify).
    pub fn delete(&self) -> (u32, Vec<Arc<Consumer>>) {
        self.deleted.store(true, Ordering::Release);
        let consumers = std::mem::take(&mut self.inner.lock().consumers);
        let n = self.purge();
        (n, consumers)
    }

    /// Take up to `n` ready messages out of the queue in order (management
    /// get and move). The caller owns one store reference per message and must
    /// give each back with [`Self::return_taken`] or release it.
    pub fn take(&self, n: usize) -> Vec<(u64, MsgPos, u32)> {
        let mut q = self.inner.lock();
        let mut out = Vec::with_capacity(n.min(1024));
        while out.len() < n {
            match Self::pop(&mut q) {
                Some(x) => out.push(x),
                None => break,
            }
        }
        out
    }

    /// Put messages taken with [`Self::take`] back at their places, with their
    /// delivery counts (redelivered when > 0).
    pub fn return_taken(self: &Arc<Self>, taken: Vec<(u64, MsgPos, u32)>) {
        let mut q = self.inner.lock();
        for (seq, pos, deliveries) in taken {
            q.requeued.insert(seq, Requeued { pos, deliveries });
        }
        self.dispatch_locked(&mut q);
    }

    /// Release a message taken with [`Self::take`] for good.
    pub fn drop_taken(&self, pos: MsgPos) {
        self.store.release(pos, self.id);
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Whether the queue has no consumers (for delete if-unused).
    pub fn is_unused(&self) -> bool {
        self.inner.lock().consumers.is_empty()
    }
}

impl Queue {
    /// Rejected without requeue: dropped (dead-lettered once the queue has a DLX).
    pub fn reject(self: &Arc<Self>, entries: &[Unacked]) {
        self.ack(entries);
    }
}
