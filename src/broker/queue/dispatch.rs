//! Dispatch: picking a consumer (single active consumer, priorities,
//! round-robin, prefetch, outbox room), handing a message out through
//! [`crate::broker::delivery`], basic.get, and flow control for publishers
//! that outrun the consumers.

use super::*;

/// Flow control: a publisher that pushes a queue with consumers past this
/// many ready messages waits (after its current read batch) until the queue
/// is back under [`FLOW_LOW`]. As RabbitMQ's credit flow, this keeps a fast
/// publisher from taking all the CPU while its consumers fall behind; a
/// queue without consumers (a backlog being filled) never throttles.
pub const FLOW_HIGH: usize = 8192;

pub const FLOW_LOW: usize = 4096;

/// A waiting publisher goes on if the queue delivered nothing for this long
/// (its consumers are stuck, not slow): flow control must never deadlock.
pub(super) const FLOW_STALL: Duration = Duration::from_millis(10);

impl Queue {
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

    /// Pick the consumer for the next message: single active consumer, then
    /// the highest priority with credit, round-robin among equals.
    pub(super) fn pick_consumer(
        self: &Arc<Self>,
        q: &mut QueueInner,
    ) -> Option<(usize, Arc<Consumer>)> {
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

    pub(super) fn dispatch_locked(self: &Arc<Self>, q: &mut QueueInner) {
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
    pub(super) fn deliver_locked(
        self: &Arc<Self>,
        q: &mut QueueInner,
        c: &Arc<Consumer>,
        seg_cache: &mut Option<Arc<crate::store::segment::Segment>>,
    ) -> bool {
        let ch = &c.channel;
        let mut st = ch.state.lock();
        if st.closed {
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
            (self.args.quorum || self.cfg().delivery_limit.is_some()) && deliveries > 0;
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

    pub(super) fn get_locked(
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
            (self.args.quorum || self.cfg().delivery_limit.is_some()) && deliveries > 0;
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
}
