//! The queue: ordered positions into the store, its consumers, and the
//! messages it has handed out and not yet seen acked.
//!
//! Owns: order (a per-queue sequence number; a requeued message goes back to
//! its old place), priorities, fair dispatch within prefetch (single active
//! consumer, consumer priorities), per-message expiry wherever the message
//! sits (a heap of deadlines, not a scan from the head), length limits with
//! their overflow modes, the delivery limit, deduplication, and queue expiry.
//! Delegates: bodies to the store, tags and unacked lists to the channel
//! ([`crate::broker::delivery`]), dead-lettering to [`crate::broker::dead_letter`] (always
//! after the queue lock is released: a DLX may lead back to this queue).
//! After a crash: rebuilt from the store's recovery ([`Queue::restore`]).

mod args;
mod dispatch;
mod ready;
mod timer;

pub use args::{Overflow, QueueArgs};
pub use dispatch::{FLOW_HIGH, FLOW_LOW};
use ready::{key, Level, Requeued};

use crate::broker::dead_letter::{self, Dead, Reason};
use crate::broker::delivery::{self, ChannelShared, Consumer, Handout, Unacked};
use crate::broker::policy::Applied;
use crate::broker::vhost::VHost;
use crate::metrics::Counters;
use crate::protocol::props;
use crate::store::{MsgPos, Recovered, Store};
use amq_protocol::types::FieldTable;
use parking_lot::Mutex;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// What the queue needs to know about a message it takes.
#[derive(Clone, Debug, Default)]
pub struct EnqueueInfo {
    /// Per-message TTL from the expiration property, ms.
    pub expiration: Option<u64>,
    pub priority: u8,
    pub body_len: u64,
    /// Arrival time, ms since the epoch.
    pub arrival_ms: u64,
}

/// Result of offering a message to a queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Enqueued {
    Accepted {
        pressure: bool,
    },
    /// x-overflow reject-publish(-dlx): the publisher gets a nack.
    Rejected,
}

#[derive(Default)]
struct QueueInner {
    levels: Vec<Level>,
    /// Messages that were delivered and came back, by key. At equal level they
    /// precede `ready`: they were delivered from its head.
    requeued: BTreeMap<u64, Requeued>,
    /// Ready messages (without expired slots).
    ready_count: usize,
    ready_bytes: u64,
    /// Per-message sizes, kept only when a byte limit needs them.
    sizes: HashMap<u64, u64>,
    /// Deadlines: (expiry ms, key). A key names one message's slot for its
    /// whole life in the queue (requeue keeps it); entries of messages that
    /// left are dropped lazily. Positions are not kept here, so compaction
    /// can move a message without touching the heap.
    /// are dropped lazily.
    expiry: BinaryHeap<Reverse<(u64, u64)>>,
    consumers: Vec<Arc<Consumer>>,
    next_consumer: usize,
    unacked: u64,
    had_consumers: bool,
    last_used_ms: u64,
    dead: Vec<Dead>,
}

pub struct Queue {
    pub name: String,
    pub vhost_name: String,
    /// Stable id; the store's records name durable queues by it.
    pub id: u32,
    pub durable: bool,
    /// Connection id of the owner of an exclusive queue.
    pub exclusive_owner: Option<u64>,
    pub auto_delete: bool,
    pub arguments: FieldTable,
    /// The settings its arguments alone give (what cannot change at run time
    /// is read here: quorum, priorities, single active consumer).
    pub args: QueueArgs,
    /// The settings in force: the arguments combined with the policy and the
    /// operator policy ([`QueueArgs::with_policy`]). Replaced under the queue
    /// lock by [`Queue::apply_policy`], so whoever holds that lock sees one
    /// consistent value for its whole step.
    settings: parking_lot::RwLock<Arc<QueueArgs>>,
    /// Which policies apply, and their merged definition.
    applied: Mutex<Arc<Applied>>,
    /// `settings.max_length_bytes.is_some()`, read on every pop.
    sizes_on: AtomicBool,
    store: Arc<Store>,
    vhost: Weak<VHost>,
    inner: Mutex<QueueInner>,
    deleted: AtomicBool,
    pub counters: Counters,
    /// x-message-deduplication.
    pub dedup: crate::broker::dedup::DedupSlot,
    /// Where a durable queue keeps its deduplication log.
    dedup_log: Option<std::path::PathBuf>,
    flow: tokio::sync::Notify,
    throttling: AtomicBool,
    timer: Arc<tokio::sync::Notify>,
    timer_started: AtomicBool,
    /// Some message of this queue ever had a deadline.
    expiring: AtomicBool,
    /// Earliest deadline the timer task is sleeping towards (ms), or u64::MAX.
    timer_deadline: AtomicU64,
}

/// What the channel learns from removing a consumer.
pub struct Cancelled {
    /// auto-delete queue lost its last consumer: delete it.
    pub auto_delete_now: bool,
}

use crate::clock::now_ms;

impl Queue {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: &str,
        vhost: &Arc<VHost>,
        id: u32,
        durable: bool,
        exclusive_owner: Option<u64>,
        auto_delete: bool,
        arguments: FieldTable,
        store: Arc<Store>,
    ) -> Self {
        let args = QueueArgs::parse(&arguments);
        let args_ttl = args.message_ttl.is_some();
        let inner = QueueInner {
            levels: (0..=args.max_priority).map(|_| Level::default()).collect(),
            last_used_ms: now_ms(),
            ..Default::default()
        };
        let dedup_log = durable.then(|| {
            store
                .dir()
                .join("..")
                .join("dedup")
                .join(format!("q{id}.log"))
        });
        let dedup = crate::broker::dedup::DedupSlot::new(crate::broker::dedup::Dedup::from_args(
            &arguments,
            dedup_log.clone(),
            store.files(),
        ));
        Queue {
            name: name.to_owned(),
            vhost_name: vhost.name.clone(),
            id,
            durable,
            exclusive_owner,
            auto_delete,
            arguments,
            settings: parking_lot::RwLock::new(Arc::new(args.clone())),
            sizes_on: AtomicBool::new(args.max_length_bytes.is_some()),
            applied: Mutex::new(Arc::new(Applied::default())),
            args,
            store,
            vhost: Arc::downgrade(vhost),
            inner: Mutex::new(inner),
            deleted: AtomicBool::new(false),
            counters: Counters::default(),
            dedup,
            dedup_log,
            flow: tokio::sync::Notify::new(),
            throttling: AtomicBool::new(false),
            timer: Arc::new(tokio::sync::Notify::new()),
            timer_started: AtomicBool::new(false),
            expiring: AtomicBool::new(args_ttl),
            timer_deadline: AtomicU64::new(u64::MAX),
        }
    }

    pub fn vhost(&self) -> Option<Arc<VHost>> {
        self.vhost.upgrade()
    }

    pub fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }

    /// The settings in force (arguments, policy and operator policy combined).
    pub fn cfg(&self) -> Arc<QueueArgs> {
        self.settings.read().clone()
    }

    /// The policy and operator policy that apply, and their merged definition.
    pub fn applied(&self) -> Arc<Applied> {
        self.applied.lock().clone()
    }

    /// Take new settings from the policies (RabbitMQ's policy_changed): a
    /// lower length limit drops from the head now (drop-head), a byte limit
    /// starts counting the messages already here, a new x-expires arms the
    /// timer; a new TTL applies to messages that arrive from now on (their
    /// deadline is set on arrival, as RabbitMQ's). `live`: the queue is in
    /// use (not being built at declare or boot), so its timer may start.
    pub fn apply_policy(self: &Arc<Self>, applied: Applied, live: bool) {
        let new = Arc::new(QueueArgs::with_policy(&self.arguments, &applied.definition));
        self.dedup.apply_policy(
            &applied.definition,
            self.dedup_log.clone(),
            self.store.files(),
        );
        let dead = {
            let mut q = self.inner.lock();
            let old = std::mem::replace(&mut *self.settings.write(), new.clone());
            *self.applied.lock() = Arc::new(applied);
            self.sizes_on
                .store(new.max_length_bytes.is_some(), Ordering::Relaxed);
            match (old.max_length_bytes, new.max_length_bytes) {
                (None, Some(_)) => self.rebuild_sizes(&mut q),
                (Some(_), None) => q.sizes.clear(),
                _ => {}
            }
            if new.message_ttl.is_some() {
                self.expiring.store(true, Ordering::Relaxed);
            }
            if new.overflow == Overflow::DropHead {
                self.drop_head_over(&mut q, &new);
            }
            std::mem::take(&mut q.dead)
        };
        if live && (new.expires.is_some() || self.timer_started.load(Ordering::Acquire)) {
            // Let the timer look at x-expires again (or start it).
            self.timer_deadline.store(0, Ordering::Release);
            self.kick_timer();
        }
        dead_letter::process(self, dead);
    }

    /// drop-head: dead-letter from the head while over a length limit.
    fn drop_head_over(&self, q: &mut QueueInner, a: &QueueArgs) {
        while a.max_length.is_some_and(|m| q.ready_count as u64 > m)
            || a.max_length_bytes.is_some_and(|m| q.ready_bytes > m)
        {
            let Some((_, p, _)) = self.pop(q) else {
                break;
            };
            q.dead.push(Dead {
                pos: p,
                reason: Reason::Maxlen,
            });
        }
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Durable and not exclusive: survives a restart (an exclusive queue
    /// dies with its connection, whatever its durable flag says).
    pub fn is_durable(&self) -> bool {
        self.durable && self.exclusive_owner.is_none()
    }

    /// Whether a message in this queue must have its removal logged.
    /// Whether this queue logs (recovers after a restart) a message: a
    /// durable queue logs persistent ones, a quorum queue all of them.
    pub fn logs(&self, persistent: bool) -> bool {
        self.is_durable() && (persistent || self.args.quorum)
    }

    /// Whether per-message sizes are kept (a byte limit is in force); changed
    /// only under the queue lock, read under it.
    fn needs_sizes(&self) -> bool {
        self.sizes_on.load(Ordering::Relaxed)
    }

    /// The deadline of a message arriving now with per-message TTL `expiration`.
    fn deadline(&self, arrival_ms: u64, expiration: Option<u64>) -> Option<u64> {
        let ttl = match (self.cfg().message_ttl, expiration) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }?;
        Some(arrival_ms.saturating_add(ttl))
    }

    /// The deadline of a stored message in this queue, from its arrival time
    /// and expiration property.
    fn deadline_of(&self, pos: MsgPos) -> Option<u64> {
        self.store
            .with_message(pos, |m| {
                let exp = props::peek(m.header)
                    .and_then(|p| p.expiration)
                    .and_then(|e| e.parse::<u64>().ok());
                self.deadline(m.timestamp_ms, exp)
            })
            .flatten()
    }

    /// Fill a recovered durable queue with its messages, in order. Those that
    /// had been delivered before the restart come first, marked redelivered.
    pub fn restore(self: &Arc<Self>, msgs: Vec<Recovered>) {
        let mut q = self.inner.lock();
        let mut seq = 0;
        let timed = self.cfg().message_ttl.is_some();
        let prio = self.args.max_priority > 0;
        let sizes = self.needs_sizes();
        for delivered_pass in [true, false] {
            for r in msgs.iter().filter(|r| r.delivered == delivered_pass) {
                // Reading the header is needed only for what a plain queue never uses.
                let (level, deadline, len) = self
                    .store
                    .with_message(r.pos, |m| {
                        let p = props::peek(m.header).unwrap_or_default();
                        let level = if prio {
                            p.priority.unwrap_or(0).min(self.args.max_priority)
                        } else {
                            0
                        };
                        let exp = p.expiration.and_then(|e| e.parse::<u64>().ok());
                        let deadline = if timed || exp.is_some() {
                            self.deadline(m.timestamp_ms, exp)
                        } else {
                            None
                        };
                        (level, deadline, m.body.len() as u64)
                    })
                    .unwrap_or((0, None, 0));
                let lv = &mut q.levels[level as usize];
                let k;
                if delivered_pass {
                    k = key(level, seq);
                    seq += 1;
                    q.requeued.insert(
                        k,
                        Requeued {
                            pos: r.pos,
                            deliveries: 1,
                        },
                    );
                } else {
                    if lv.ready.is_empty() {
                        lv.head_seq = lv.head_seq.max(seq);
                    }
                    k = key(level, lv.head_seq + lv.ready.len() as u64);
                    lv.ready.push_back(r.pos);
                }
                q.ready_count += 1;
                q.ready_bytes += len;
                if sizes {
                    q.sizes.insert(k, len);
                }
                if let Some(d) = deadline {
                    q.expiry.push(Reverse((d, k)));
                    self.expiring.store(true, Ordering::Relaxed);
                }
            }
        }
        drop(q);
        // The timer starts from `start_timers`, once everything is restored.
    }

    /// Take a message (already in the store, with one reference for us).
    pub fn enqueue_with(self: &Arc<Self>, pos: MsgPos, info: &EnqueueInfo) -> Enqueued {
        let mut q = self.inner.lock();
        if self.is_deleted() {
            drop(q);
            self.store.release(pos, self.id);
            return Enqueued::Accepted { pressure: false };
        }
        let a = self.cfg();
        // Length limits with reject-publish: refuse before taking it.
        let over = |q: &QueueInner, extra_bytes: u64| {
            a.max_length.is_some_and(|m| q.ready_count as u64 + 1 > m)
                || a.max_length_bytes
                    .is_some_and(|m| q.ready_bytes + extra_bytes > m)
        };
        if a.overflow != Overflow::DropHead && over(&q, info.body_len) {
            if a.overflow == Overflow::RejectPublishDlx {
                q.dead.push(Dead {
                    pos,
                    reason: Reason::Maxlen,
                });
                let dead = std::mem::take(&mut q.dead);
                drop(q);
                dead_letter::process(self, dead);
            } else {
                drop(q);
                self.store.release(pos, self.id);
            }
            return Enqueued::Rejected;
        }
        Counters::add(&self.counters.published, 1);
        let level = info.priority.min(self.args.max_priority);
        let lv = &mut q.levels[level as usize];
        let k = key(level, lv.head_seq + lv.ready.len() as u64);
        lv.ready.push_back(pos);
        q.ready_count += 1;
        q.ready_bytes += info.body_len;
        if a.max_length_bytes.is_some() {
            q.sizes.insert(k, info.body_len);
        }
        let deadline = if a.message_ttl.is_some() || info.expiration.is_some() {
            self.deadline(info.arrival_ms, info.expiration)
        } else {
            None
        };
        let mut kick = false;
        if let Some(d) = deadline {
            self.expiring.store(true, Ordering::Relaxed);
            q.expiry.push(Reverse((d, k)));
            kick = d < self.timer_deadline.load(Ordering::Acquire);
        }
        // drop-head: make room by dead-lettering from the head.
        if a.overflow == Overflow::DropHead {
            self.drop_head_over(&mut q, &a);
        }
        let mut pressure = false;
        if !q.consumers.is_empty() {
            self.dispatch_locked(&mut q);
            pressure = q.ready_count > FLOW_HIGH;
        }
        // TTL 0: deliver now or never. (Deadlines are rounded up to the next
        // ms, so this one may still lie a fraction of a ms ahead.)
        let ttl_zero = info.expiration == Some(0) || a.message_ttl == Some(0);
        if let Some(d) = deadline.filter(|d| ttl_zero || *d <= now_ms()) {
            self.expire_due(&mut q, d.max(now_ms()));
        }
        let dead = std::mem::take(&mut q.dead);
        drop(q);
        if kick {
            self.kick_timer();
        }
        dead_letter::process(self, dead);
        Enqueued::Accepted { pressure }
    }

    /// Messages acked: gone for good.
    pub fn ack(self: &Arc<Self>, entries: &[Unacked]) {
        let positions: Vec<MsgPos> = entries.iter().map(|e| e.pos).collect();
        self.store.release_many(&positions, self.id);
        for e in entries {
            if let Some(c) = &e.consumer {
                c.unacked.fetch_sub(1, Ordering::Relaxed);
            }
        }
        Counters::add(&self.counters.acked, entries.len() as u64);
        self.settled(entries.len(), vec![]);
    }

    /// Rejected without requeue: dead-lettered (or dropped without a DLX).
    pub fn reject(self: &Arc<Self>, entries: &[Unacked]) {
        let mut dead = Vec::with_capacity(entries.len());
        for e in entries {
            if let Some(c) = &e.consumer {
                c.unacked.fetch_sub(1, Ordering::Relaxed);
            }
            dead.push(Dead {
                pos: e.pos,
                reason: Reason::Rejected,
            });
        }
        self.settled(entries.len(), dead);
    }

    fn settled(self: &Arc<Self>, n: usize, mut dead: Vec<Dead>) {
        {
            let mut q = self.inner.lock();
            q.unacked = q.unacked.saturating_sub(n as u64);
            self.dispatch_locked(&mut q);
            dead.append(&mut q.dead);
        }
        dead_letter::process(self, dead);
    }

    /// A message that left the queue through dead-lettering: release it.
    pub fn release_dead(&self, pos: MsgPos) {
        self.store.release(pos, self.id);
    }

    /// Messages back to their old place, to be redelivered (or dead-lettered
    /// when they reached the delivery limit or expired meanwhile).
    pub fn requeue(self: &Arc<Self>, entries: &[Unacked]) {
        let dead = {
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
                // As RabbitMQ's quorum queues: dead-lettered once delivered more than the limit.
                if self.cfg().delivery_limit.is_some_and(|l| e.deliveries > l) {
                    q.dead.push(Dead {
                        pos: e.pos,
                        reason: Reason::DeliveryLimit,
                    });
                    continue;
                }
                // A message keeps its deadline while delivered; past it, it expires now.
                if self.expiring.load(Ordering::Relaxed) {
                    if let Some(d) = self.deadline_of(e.pos) {
                        if d <= now_ms() {
                            q.dead.push(Dead {
                                pos: e.pos,
                                reason: Reason::Expired,
                            });
                            continue;
                        }
                        q.expiry.push(Reverse((d, e.seq)));
                        if d < self.timer_deadline.load(Ordering::Acquire) {
                            self.timer.notify_one();
                        }
                    }
                }
                q.requeued.insert(
                    e.seq,
                    Requeued {
                        pos: e.pos,
                        deliveries: e.deliveries,
                    },
                );
                q.ready_count += 1;
                if self.needs_sizes() {
                    let len = self.store.body_len(e.pos);
                    q.sizes.insert(e.seq, len);
                    q.ready_bytes += len;
                }
            }
            self.dispatch_locked(&mut q);
            std::mem::take(&mut q.dead)
        };
        dead_letter::process(self, dead);
    }

    pub fn add_consumer(self: &Arc<Self>, c: Arc<Consumer>) {
        let dead = {
            let mut q = self.inner.lock();
            q.consumers.push(c);
            q.had_consumers = true;
            q.last_used_ms = now_ms();
            self.dispatch_locked(&mut q);
            std::mem::take(&mut q.dead)
        };
        dead_letter::process(self, dead);
    }

    pub fn remove_consumer(self: &Arc<Self>, c: &Arc<Consumer>) -> Cancelled {
        let mut q = self.inner.lock();
        let was_active = q.consumers.first().is_some_and(|x| Arc::ptr_eq(x, c));
        q.consumers.retain(|x| !Arc::ptr_eq(x, c));
        q.last_used_ms = now_ms();
        if q.consumers.is_empty() && self.cfg().expires.is_some() {
            self.timer_deadline.store(0, Ordering::Release);
            self.timer.notify_one();
        }
        // A new single active consumer takes over.
        if was_active && self.args.single_active_consumer && !q.consumers.is_empty() {
            self.dispatch_locked(&mut q);
        }
        Cancelled {
            auto_delete_now: self.auto_delete
                && q.had_consumers
                && q.consumers.is_empty()
                && !self.is_deleted(),
        }
    }

    /// Exclusive-consumer checks for basic.consume.
    pub fn consumer_conflict(&self, exclusive: bool) -> bool {
        let q = self.inner.lock();
        q.consumers.iter().any(|c| c.exclusive) || (exclusive && !q.consumers.is_empty())
    }

    pub fn message_count(&self) -> u32 {
        self.inner.lock().ready_count as u32
    }

    pub fn ready_bytes(&self) -> u64 {
        self.inner.lock().ready_bytes
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

    /// The queue was declared again, or used: x-expires starts over.
    pub fn touch(&self) {
        self.inner.lock().last_used_ms = now_ms();
    }

    /// Mark deleted, drop the messages; returns (message count, consumers to notify).
    pub fn delete(&self) -> (u32, Vec<Arc<Consumer>>) {
        self.deleted.store(true, Ordering::Release);
        let consumers = std::mem::take(&mut self.inner.lock().consumers);
        let n = self.purge();
        self.timer.notify_one();
        (n, consumers)
    }

    /// Whether the queue has no consumers (for delete if-unused).
    pub fn is_unused(&self) -> bool {
        self.inner.lock().consumers.is_empty()
    }

    // ----- the timer: message expiry and queue expiry -----
}
