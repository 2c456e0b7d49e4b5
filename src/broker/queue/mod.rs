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

use crate::broker::dead_letter::{self, Dead, Reason};
use crate::broker::delivery::{self, ChannelShared, Consumer, Handout, Unacked};
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

/// A slot of a ready list whose message expired in place.
const GONE: MsgPos = MsgPos(u64::MAX);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overflow {
    DropHead,
    RejectPublish,
    RejectPublishDlx,
}

/// Queue arguments, parsed once (they were validated at declare time).
#[derive(Clone, Debug)]
pub struct QueueArgs {
    pub message_ttl: Option<u64>,
    pub expires: Option<u64>,
    pub dlx: Option<String>,
    pub dlrk: Option<String>,
    pub max_length: Option<u64>,
    pub max_length_bytes: Option<u64>,
    pub overflow: Overflow,
    pub max_priority: u8,
    pub single_active_consumer: bool,
    pub delivery_limit: Option<u32>,
    /// x-queue-type quorum: every message stored and synced, x-delivery-count.
    pub quorum: bool,
}

impl QueueArgs {
    pub fn parse(a: &FieldTable) -> Self {
        use crate::broker::args::{get_bool, get_int, get_str};
        QueueArgs {
            message_ttl: get_int(a, "x-message-ttl").map(|v| v.max(0) as u64),
            expires: get_int(a, "x-expires").map(|v| v.max(1) as u64),
            dlx: get_str(a, "x-dead-letter-exchange"),
            dlrk: get_str(a, "x-dead-letter-routing-key"),
            max_length: get_int(a, "x-max-length").map(|v| v.max(0) as u64),
            max_length_bytes: get_int(a, "x-max-length-bytes").map(|v| v.max(0) as u64),
            overflow: match get_str(a, "x-overflow").as_deref() {
                Some("reject-publish") => Overflow::RejectPublish,
                Some("reject-publish-dlx") => Overflow::RejectPublishDlx,
                _ => Overflow::DropHead,
            },
            max_priority: get_int(a, "x-max-priority")
                .map(|v| v.clamp(0, 255) as u8)
                .unwrap_or(0),
            single_active_consumer: get_bool(a, "x-single-active-consumer").unwrap_or(false),
            delivery_limit: get_int(a, "x-delivery-limit").map(|v| v.max(0) as u32),
            quorum: crate::broker::args::is_quorum(a),
        }
    }
}

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

#[derive(Clone, Copy, Debug)]
struct Requeued {
    pos: MsgPos,
    deliveries: u32,
}

#[derive(Default)]
struct Level {
    /// Never-delivered messages in order; `ready[i]` has sequence `head_seq + i`.
    ready: VecDeque<MsgPos>,
    head_seq: u64,
}

/// A message's key: priority level (inverted, so higher sorts first) in the
/// top byte, sequence number below.
fn key(level: u8, seq: u64) -> u64 {
    ((255 - level as u64) << 56) | seq
}
fn key_level(k: u64) -> u8 {
    255 - (k >> 56) as u8
}
fn key_seq(k: u64) -> u64 {
    k & ((1 << 56) - 1)
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
    pub args: QueueArgs,
    store: Arc<Store>,
    vhost: Weak<VHost>,
    inner: Mutex<QueueInner>,
    deleted: AtomicBool,
    pub counters: Counters,
    /// x-message-deduplication.
    pub dedup: Option<crate::broker::dedup::Dedup>,
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
        let dedup = crate::broker::dedup::Dedup::from_args(&arguments, dedup_log, store.files());
        Queue {
            name: name.to_owned(),
            vhost_name: vhost.name.clone(),
            id,
            durable,
            exclusive_owner,
            auto_delete,
            arguments,
            args,
            store,
            vhost: Arc::downgrade(vhost),
            inner: Mutex::new(inner),
            deleted: AtomicBool::new(false),
            counters: Counters::default(),
            dedup,
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

    fn needs_sizes(&self) -> bool {
        self.args.max_length_bytes.is_some()
    }

    /// The deadline of a message arriving now with per-message TTL `expiration`.
    fn deadline(&self, arrival_ms: u64, expiration: Option<u64>) -> Option<u64> {
        let ttl = match (self.args.message_ttl, expiration) {
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
        let timed = self.args.message_ttl.is_some();
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
        // Length limits with reject-publish: refuse before taking it.
        let over = |q: &QueueInner, extra_bytes: u64| {
            self.args
                .max_length
                .is_some_and(|m| q.ready_count as u64 + 1 > m)
                || self
                    .args
                    .max_length_bytes
                    .is_some_and(|m| q.ready_bytes + extra_bytes > m)
        };
        if self.args.overflow != Overflow::DropHead && over(&q, info.body_len) {
            if self.args.overflow == Overflow::RejectPublishDlx {
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
        if self.needs_sizes() {
            q.sizes.insert(k, info.body_len);
        }
        let deadline = if self.args.message_ttl.is_some() || info.expiration.is_some() {
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
        if self.args.overflow == Overflow::DropHead {
            while self
                .args
                .max_length
                .is_some_and(|m| q.ready_count as u64 > m)
                || self
                    .args
                    .max_length_bytes
                    .is_some_and(|m| q.ready_bytes > m)
            {
                let Some((_, p, _)) = self.pop(&mut q) else {
                    break;
                };
                q.dead.push(Dead {
                    pos: p,
                    reason: Reason::Maxlen,
                });
            }
        }
        let mut pressure = false;
        if !q.consumers.is_empty() {
            self.dispatch_locked(&mut q);
            pressure = q.ready_count > FLOW_HIGH;
        }
        // TTL 0: deliver now or never. (Deadlines are rounded up to the next
        // ms, so this one may still lie a fraction of a ms ahead.)
        let ttl_zero = info.expiration == Some(0) || self.args.message_ttl == Some(0);
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

    /// Wait until the queue's consumers have caught up (see [`FLOW_HIGH`]).
    /// `conn_id` is the waiting publisher's connection: if one of the
    /// consumers is on it too, its acks are behind us in the same socket, so
    /// waiting would only stall both.
    /// Returns after `max` at the latest: the caller must keep its
    /// heartbeats going.
    pub async fn flow_wait(&self, conn_id: u64, max: Duration) {
        let until = tokio::time::Instant::now() + max;
        loop {
            if tokio::time::Instant::now() >= until {
                return;
            }
            let delivered = Counters::get(&self.counters.delivered);
            let notified = self.flow.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let q = self.inner.lock();
                if q.ready_count <= FLOW_LOW
                    || q.consumers.is_empty()
                    || self.is_deleted()
                    || q.consumers.iter().any(|c| c.channel.conn.id == conn_id)
                {
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
        let dead = {
            let mut q = self.inner.lock();
            self.dispatch_locked(&mut q);
            std::mem::take(&mut q.dead)
        };
        dead_letter::process(self, dead);
    }

    /// Pop the next ready message: (key, position, deliveries so far).
    fn pop(&self, q: &mut QueueInner) -> Option<(u64, MsgPos, u32)> {
        loop {
            let rq = q.requeued.first_key_value().map(|(k, _)| *k);
            let lvl = q.levels.iter().rposition(|l| !l.ready.is_empty());
            let rd = lvl.map(|l| key(l as u8, q.levels[l].head_seq));
            let take_requeued = match (rq, rd) {
                (None, None) => return None,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (Some(a), Some(b)) => a < b,
            };
            let (k, pos, deliveries) = if take_requeued {
                let (k, r) = q.requeued.pop_first().unwrap();
                (k, r.pos, r.deliveries)
            } else {
                let l = lvl.unwrap();
                let lv = &mut q.levels[l];
                let pos = lv.ready.pop_front().unwrap();
                let k = key(l as u8, lv.head_seq);
                lv.head_seq += 1;
                if pos == GONE {
                    continue;
                }
                (k, pos, 0)
            };
            q.ready_count -= 1;
            let len = if self.needs_sizes() {
                q.sizes.remove(&k).unwrap_or(0)
            } else {
                0
            };
            q.ready_bytes = q.ready_bytes.saturating_sub(len);
            return Some((k, pos, deliveries));
        }
    }

    /// Remove every message whose deadline has passed (wherever it sits) and
    /// queue it for dead-lettering.
    fn expire_due(&self, q: &mut QueueInner, now: u64) {
        while let Some(Reverse((d, k))) = q.expiry.peek().copied() {
            if d > now {
                break;
            }
            q.expiry.pop();
            let pos = if let Some(r) = q.requeued.remove(&k) {
                r.pos
            } else {
                let lv = &mut q.levels[key_level(k) as usize];
                let seq = key_seq(k);
                if seq < lv.head_seq {
                    continue;
                }
                let i = (seq - lv.head_seq) as usize;
                match lv.ready.get(i).copied() {
                    None | Some(GONE) => continue,
                    Some(_) if i == 0 => {
                        lv.head_seq += 1;
                        lv.ready.pop_front().expect("slot")
                    }
                    Some(p) => {
                        lv.ready[i] = GONE;
                        p
                    }
                }
            };
            q.ready_count -= 1;
            let len = if self.needs_sizes() {
                q.sizes.remove(&k).unwrap_or(0)
            } else {
                0
            };
            q.ready_bytes = q.ready_bytes.saturating_sub(len);
            q.dead.push(Dead {
                pos,
                reason: Reason::Expired,
            });
        }
    }

    /// Pick the consumer for the next message: single active consumer, then
    /// the highest priority with credit, round-robin among equals.
    fn pick_consumer(self: &Arc<Self>, q: &mut QueueInner) -> Option<(usize, Arc<Consumer>)> {
        let n = q.consumers.len();
        if n == 0 {
            return None;
        }
        if self.args.single_active_consumer {
            let c = q.consumers[0].clone();
            if c.has_credit() && !c.channel.conn.full_and_paused(self) {
                return Some((0, c));
            }
            return None;
        }
        let mut best: Option<(i32, usize)> = None;
        for i in 0..n {
            let idx = (q.next_consumer + i) % n;
            let c = &q.consumers[idx];
            if best.is_some_and(|(p, _)| c.priority <= p) || !c.has_credit() {
                continue;
            }
            if c.channel.conn.full_and_paused(self) {
                continue;
            }
            best = Some((c.priority, idx));
        }
        best.map(|(_, i)| (i, q.consumers[i].clone()))
    }

    fn dispatch_locked(self: &Arc<Self>, q: &mut QueueInner) {
        // Strictly past deadlines only: a TTL-0 message (deadline = now) gets
        // its chance at a consumer first; enqueue expires it right after.
        if !q.expiry.is_empty() {
            self.expire_due(q, now_ms().saturating_sub(1));
        }
        let mut seg_cache = None;
        while q.ready_count > 0 {
            let Some((idx, c)) = self.pick_consumer(q) else {
                break;
            };
            if !self.deliver_locked(q, &c, &mut seg_cache) {
                // Its channel cannot take more (flow or global prefetch): try
                // the others once, then stop.
                let others: Vec<_> = q
                    .consumers
                    .iter()
                    .filter(|x| !Arc::ptr_eq(x, &c))
                    .cloned()
                    .collect();
                if !others.iter().any(|o| {
                    o.has_credit()
                        && !o.channel.conn.is_full()
                        && self.deliver_locked(q, o, &mut seg_cache)
                }) {
                    break;
                }
                continue;
            }
            q.next_consumer = (idx + 1) % q.consumers.len().max(1);
        }
        if self.throttling.load(Ordering::Acquire) && q.ready_count <= FLOW_LOW {
            self.throttling.store(false, Ordering::Release);
            self.flow.notify_waiters();
        }
    }

    /// Deliver the next message to `c`; false if its channel cannot take it.
    fn deliver_locked(
        self: &Arc<Self>,
        q: &mut QueueInner,
        c: &Arc<Consumer>,
        seg_cache: &mut Option<Arc<crate::store::segment::Segment>>,
    ) -> bool {
        let ch = &c.channel;
        let mut st = ch.state.lock();
        if st.closed || !st.flow {
            return false;
        }
        if !c.no_ack && st.global_prefetch > 0 && st.unacked.len() as u32 >= st.global_prefetch {
            return false;
        }
        let Some((k, pos, deliveries)) = self.pop(q) else {
            return false;
        };
        let tag = st.next_tag;
        st.next_tag += 1;
        let count_header =
            (self.args.delivery_limit.is_some() || self.args.quorum) && deliveries > 0;
        let wrote = self.store.with_message_cached(seg_cache, pos, |m| {
            delivery::write_message(
                ch,
                Handout::Deliver {
                    consumer_tag: &c.tag,
                },
                tag,
                m,
                deliveries,
                count_header,
            )
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
                seq: k,
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
        let (found, dead) = {
            let mut q = self.inner.lock();
            q.last_used_ms = now_ms();
            if !q.expiry.is_empty() {
                self.expire_due(&mut q, now_ms());
            }
            let found = self.get_locked(&mut q, ch, no_ack);
            (found, std::mem::take(&mut q.dead))
        };
        dead_letter::process(self, dead);
        found
    }

    fn get_locked(
        self: &Arc<Self>,
        q: &mut QueueInner,
        ch: &Arc<ChannelShared>,
        no_ack: bool,
    ) -> bool {
        let Some((k, pos, deliveries)) = self.pop(q) else {
            return false;
        };
        let remaining = q.ready_count as u32;
        let mut st = ch.state.lock();
        let tag = st.next_tag;
        st.next_tag += 1;
        let count_header =
            (self.args.delivery_limit.is_some() || self.args.quorum) && deliveries > 0;
        let wrote = self.store.with_message(pos, |m| {
            delivery::write_message(
                ch,
                Handout::GetOk { remaining },
                tag,
                m,
                deliveries,
                count_header,
            )
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
                seq: k,
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
                if self.args.delivery_limit.is_some_and(|l| e.deliveries > l) {
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
        if q.consumers.is_empty() && self.args.expires.is_some() {
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

    /// Remove every ready message; returns how many.
    pub fn purge(&self) -> u32 {
        let taken: Vec<MsgPos> = {
            let mut q = self.inner.lock();
            let mut out = Vec::with_capacity(q.ready_count);
            for lv in q.levels.iter_mut() {
                lv.head_seq += lv.ready.len() as u64;
                out.extend(lv.ready.drain(..).filter(|p| *p != GONE));
            }
            out.extend(std::mem::take(&mut q.requeued).into_values().map(|r| r.pos));
            q.ready_count = 0;
            q.ready_bytes = 0;
            q.sizes.clear();
            q.expiry.clear();
            out
        };
        self.store.release_many(&taken, self.id);
        self.store.flush_acks();
        taken.len() as u32
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

    /// Take up to `n` ready messages out of the queue in order (management
    /// get and move). The caller owns one store reference per message and must
    /// give each back with [`Self::return_taken`] or [`Self::drop_taken`].
    pub fn take(&self, n: usize) -> Vec<(u64, MsgPos, u32)> {
        let mut q = self.inner.lock();
        let mut out = Vec::with_capacity(n.min(1024));
        while out.len() < n {
            match self.pop(&mut q) {
                Some(x) => out.push(x),
                None => break,
            }
        }
        out
    }

    /// Put messages taken with [`Self::take`] back at their places.
    pub fn return_taken(self: &Arc<Self>, taken: Vec<(u64, MsgPos, u32)>) {
        let dead = {
            let mut q = self.inner.lock();
            for (k, pos, deliveries) in taken {
                if self.is_deleted() {
                    self.store.release(pos, self.id);
                    continue;
                }
                q.requeued.insert(k, Requeued { pos, deliveries });
                q.ready_count += 1;
                if self.needs_sizes() {
                    let len = self.store.body_len(pos);
                    q.sizes.insert(k, len);
                    q.ready_bytes += len;
                }
            }
            self.dispatch_locked(&mut q);
            std::mem::take(&mut q.dead)
        };
        dead_letter::process(self, dead);
    }

    /// Release a message taken with [`Self::take`] for good.
    pub fn drop_taken(&self, pos: MsgPos) {
        self.store.release(pos, self.id);
    }

    /// Compaction: move this queue's ready messages out of segment `seg` into
    /// fresh records, in place (order kept). Returns the old positions, to be
    /// released once the copies are synced.
    pub fn relocate(&self, seg: u32) -> Vec<MsgPos> {
        // In batches, so the queue lock is never held for long: publishers,
        // consumers and the expiry timer interleave with compaction.
        const BATCH: usize = 1024;
        let ids = [self.id];
        let mut old = vec![];
        let relocate_one = |pos: &mut MsgPos, deliveries: u32, old: &mut Vec<MsgPos>| {
            if *pos == GONE || pos.segment() != seg {
                return;
            }
            let logged = pos.logged();
            let Some(new) = self.store.copy(*pos, if logged { &ids } else { &[] }) else {
                return;
            };
            let new = new.with_logged(logged);
            if logged && deliveries > 0 {
                self.store.mark_delivered(new, self.id);
            }
            old.push(*pos);
            *pos = new;
        };
        let levels = self.inner.lock().levels.len();
        for l in 0..levels {
            // Walk by sequence number: the head may move between batches.
            let mut next_seq = 0u64;
            loop {
                let mut q = self.inner.lock();
                let lv = &mut q.levels[l];
                let start = next_seq.max(lv.head_seq);
                let from = (start - lv.head_seq) as usize;
                if from >= lv.ready.len() {
                    break;
                }
                let to = (from + BATCH).min(lv.ready.len());
                for i in from..to {
                    relocate_one(&mut lv.ready[i], 0, &mut old);
                }
                next_seq = lv.head_seq + to as u64;
            }
        }
        let mut q = self.inner.lock();
        for r in q.requeued.values_mut() {
            relocate_one(&mut r.pos, r.deliveries, &mut old);
        }
        old
    }

    /// Release positions handed out by [`Self::relocate`].
    pub fn release_relocated(&self, old: Vec<MsgPos>) {
        self.store.release_many(&old, self.id);
    }

    // ----- the timer: message expiry and queue expiry -----

    /// Make sure the timer task runs and looks at the deadlines again.
    fn kick_timer(self: &Arc<Self>) {
        if !self.timer_started.swap(true, Ordering::AcqRel) {
            match tokio::runtime::Handle::try_current() {
                Ok(h) => {
                    h.spawn(timer_loop(Arc::downgrade(self)));
                }
                Err(_) => {
                    self.timer_started.store(false, Ordering::Release);
                    return;
                }
            }
        }
        self.timer.notify_one();
    }

    /// Start the timer if this queue has any timed behaviour (x-expires,
    /// or restored messages that expire).
    pub fn start_timers(self: &Arc<Self>) {
        if self.args.expires.is_some() || self.expiring.load(Ordering::Relaxed) {
            self.kick_timer();
        }
    }

    /// The timer's next deadline, recorded in `timer_deadline` under the
    /// queue lock: whoever adds an earlier deadline holds that lock too, so
    /// it either is seen here or sees the recorded value and wakes the timer.
    fn arm_deadline(&self) -> Option<u64> {
        let q = self.inner.lock();
        let msg = q.expiry.peek().map(|Reverse((d, _))| *d);
        let queue = match self.args.expires {
            Some(e) if q.consumers.is_empty() => Some(q.last_used_ms.saturating_add(e)),
            _ => None,
        };
        let next = match (msg, queue) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.timer_deadline
            .store(next.unwrap_or(u64::MAX), Ordering::Release);
        next
    }

    fn on_timer(self: &Arc<Self>) {
        let now = now_ms();
        let (dead, expire_queue) = {
            let mut q = self.inner.lock();
            self.expire_due(&mut q, now);
            let expire_queue = self
                .args
                .expires
                .is_some_and(|e| q.consumers.is_empty() && q.last_used_ms.saturating_add(e) <= now);
            (std::mem::take(&mut q.dead), expire_queue)
        };
        dead_letter::process(self, dead);
        if expire_queue && !self.is_deleted() {
            if let Some(vh) = self.vhost() {
                if let Some(b) = vh.broker() {
                    tracing::debug!(queue = %self.name, "queue expired (x-expires)");
                    let _ = b.delete_queue(&vh, self, false, false);
                }
            }
        }
    }
}

async fn timer_loop(weak: Weak<Queue>) {
    loop {
        let Some(q) = weak.upgrade() else { return };
        if q.is_deleted() {
            return;
        }
        let timer = q.timer.clone();
        let notified = timer.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let deadline = q.arm_deadline();
        match deadline {
            Some(d) => {
                let now = now_ms();
                if d > now {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(d - now)) => {}
                        _ = &mut notified => continue,
                    }
                }
            }
            None => {
                // Hold no strong reference while idle: a dropped queue ends the task.
                drop(q);
                notified.await;
                continue;
            }
        }
        q.on_timer();
    }
}
