//! The ready lists: one per priority level, in sequence order, plus the
//! requeued messages by key (they keep their old place), with expired slots
//! left as tombstones until the head passes them. Taking messages out
//! (pop, expiry, purge, management get and move) and compaction's
//! relocation work here.

use super::*;

/// A slot of a ready list whose message expired in place.
pub(super) const GONE: MsgPos = MsgPos(u64::MAX);

#[derive(Clone, Copy, Debug)]
pub(super) struct Requeued {
    pub(super) pos: MsgPos,
    pub(super) deliveries: u32,
}

#[derive(Default)]
pub(super) struct Level {
    /// Never-delivered messages in order; `ready[i]` has sequence `head_seq + i`.
    pub(super) ready: VecDeque<MsgPos>,
    pub(super) head_seq: u64,
}

/// A message's key: priority level (inverted, so higher sorts first) in the
/// top byte, sequence number below.
pub(super) fn key(level: u8, seq: u64) -> u64 {
    ((255 - level as u64) << 56) | seq
}

pub(super) fn key_level(k: u64) -> u8 {
    255 - (k >> 56) as u8
}

pub(super) fn key_seq(k: u64) -> u64 {
    k & ((1 << 56) - 1)
}

impl Queue {
    /// Pop the next ready message: (key, position, deliveries so far).
    pub(super) fn pop(&self, q: &mut QueueInner) -> Option<(u64, MsgPos, u32)> {
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
    pub(super) fn expire_due(&self, q: &mut QueueInner, now: u64) {
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

    /// A byte limit came with a policy: count the bytes of the messages
    /// already here (their sizes were not kept without one).
    pub(super) fn rebuild_sizes(&self, q: &mut QueueInner) {
        let mut sizes = HashMap::with_capacity(q.ready_count);
        let mut total = 0u64;
        for (l, lv) in q.levels.iter().enumerate() {
            for (i, pos) in lv.ready.iter().enumerate() {
                if *pos != GONE {
                    let len = self.store.body_len(*pos);
                    sizes.insert(key(l as u8, lv.head_seq + i as u64), len);
                    total += len;
                }
            }
        }
        for (k, r) in &q.requeued {
            let len = self.store.body_len(r.pos);
            sizes.insert(*k, len);
            total += len;
        }
        q.sizes = sizes;
        q.ready_bytes = total;
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
}
