//! Delayed delivery: the x-delayed-message exchange (and LavinMQ's
//! x-delayed-exchange argument) with a time index that lives on disk.
//!
//! A delayed message is stored once in the message store, its record naming
//! the exchange's id as if it were a durable queue (so persistence, recovery
//! and space reclamation are the store's usual ones). What is not in memory is
//! the time index: entries `(due ms, sequence, position)` collect in a small
//! in-memory heap and, every [`SPILL`] entries, are sorted and written as a
//! run file; the next due message is the smallest head of the heap and the
//! runs (a k-way merge that reads each run sequentially). Memory therefore
//! stays flat however many messages are pending: about 24 bytes per entry in
//! the heap, plus a few KiB per run.
//!
//! The index is a cache: at start it is rebuilt from the store's recovered
//! records (due = arrival time + x-delay), so run files never need fsync. A
//! message released at its due time is routed through the exchange's
//! bindings at that moment, copied into a record naming the durable queues
//! that took it, and its delayed record released.
//!
//! Replication seam: run files are created, written, and removed only
//! through the store's [`Durable`] gate (never `std::fs`), so a replication
//! observer sees them like every other file of the data directory; they are
//! read back with plain reads.

use crate::broker::exchange::Exchange;
use crate::broker::publish::{publish, Origin, Outcome, Parsed, Publish, Scratch};
use crate::broker::vhost::VHost;
use crate::clock::now_ms;
use crate::store::durable::Durable;
use crate::store::{MsgPos, Store};
use amq_protocol::types::{AMQPValue, FieldTable};
use parking_lot::Mutex;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet, VecDeque};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

/// In-memory entries before they are sorted and written as a run (6 MiB).
pub const SPILL: usize = 262_144;
/// Runs are merged into one when there are more than this many (about 134M
/// pending messages): merging rewrites every entry, under the index lock.
const MAX_RUNS: usize = 512;
/// Entries read ahead per run.
const READ_AHEAD: usize = 256;
/// Bytes of entries written to a run file at a time.
const WRITE_CHUNK: usize = 1 << 20;
/// At most this many releases per batch; the release task yields between
/// batches so a restart with a million overdue messages does not stall others.
const RELEASE_BATCH: usize = 2_000;

type Entry = (u64, u64, MsgPos);
const ENTRY: usize = 24;

/// A sorted run on disk. No file stays open (hundreds of runs must not use
/// hundreds of descriptors): each refill opens, seeks and reads READ_AHEAD
/// entries.
struct Run {
    /// Where to read it.
    path: PathBuf,
    /// Relative to the data directory: what the store's gate writes and removes.
    rel: PathBuf,
    /// Byte offset of the next unread entry.
    offset: u64,
    /// Entries not yet read from the file.
    unread: u64,
    buf: VecDeque<Entry>,
}

impl Run {
    fn head(&mut self) -> Option<Entry> {
        if self.buf.is_empty() && self.unread > 0 {
            let n = (self.unread as usize).min(READ_AHEAD);
            let mut bytes = vec![0u8; n * ENTRY];
            let read = File::open(&self.path).and_then(|mut f| {
                f.seek(SeekFrom::Start(self.offset))?;
                f.read_exact(&mut bytes)
            });
            if read.is_err() {
                tracing::error!(path = %self.path.display(), "delay index run unreadable; its entries are skipped until restart");
                self.unread = 0;
                return None;
            }
            self.offset += (n * ENTRY) as u64;
            self.unread -= n as u64;
            for e in bytes.chunks_exact(ENTRY) {
                self.buf.push_back(decode(e));
            }
        }
        self.buf.front().copied()
    }
}

fn encode(out: &mut Vec<u8>, e: &Entry) {
    out.extend_from_slice(&e.0.to_le_bytes());
    out.extend_from_slice(&e.1.to_le_bytes());
    out.extend_from_slice(&e.2 .0.to_le_bytes());
}

fn decode(b: &[u8]) -> Entry {
    (
        u64::from_le_bytes(b[0..8].try_into().unwrap()),
        u64::from_le_bytes(b[8..16].try_into().unwrap()),
        MsgPos(u64::from_le_bytes(b[16..24].try_into().unwrap())),
    )
}

/// The time index.
pub struct DelayIndex {
    files: Arc<Durable>,
    /// The runs' directory, relative to the data directory.
    dir: PathBuf,
    /// Heap entries that make a run ([`SPILL`]; smaller in tests).
    spill_at: usize,
    /// Runs kept before they are merged ([`MAX_RUNS`]; smaller in tests).
    max_runs: usize,
    heap: BinaryHeap<Reverse<Entry>>,
    runs: Vec<Run>,
    next_run: u64,
    next_seq: u64,
    pending: u64,
}

impl DelayIndex {
    /// The index whose runs live in `dir`, inside the data directory of `files`.
    pub fn new(files: Arc<Durable>, dir: PathBuf) -> Self {
        Self::with_limits(files, dir, SPILL, MAX_RUNS)
    }

    fn with_limits(files: Arc<Durable>, dir: PathBuf, spill_at: usize, max_runs: usize) -> Self {
        let dir = files.relative(&dir).unwrap_or_else(|| {
            tracing::error!(dir = %dir.display(), "delay index outside the data dir; runs go to delayed/");
            Path::new("delayed").join(dir.file_name().unwrap_or_default())
        });
        // The index is rebuilt from the store at start: old runs are stale.
        if let Err(e) = files.remove_dir_all(&dir) {
            tracing::warn!(error = %e, "cannot remove stale delay index runs");
        }
        let _ = std::fs::create_dir_all(files.path(&dir));
        DelayIndex {
            files,
            dir,
            spill_at,
            max_runs,
            heap: BinaryHeap::new(),
            runs: vec![],
            next_run: 0,
            next_seq: 0,
            pending: 0,
        }
    }

    pub fn len(&self) -> u64 {
        self.pending
    }

    pub fn is_empty(&self) -> bool {
        self.pending == 0
    }

    pub fn insert(&mut self, due: u64, pos: MsgPos) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.heap.push(Reverse((due, seq, pos)));
        self.pending += 1;
        if self.heap.len() >= self.spill_at {
            self.spill();
        }
    }

    fn spill(&mut self) {
        let mut entries: Vec<Entry> = std::mem::take(&mut self.heap)
            .into_iter()
            .map(|Reverse(e)| e)
            .collect();
        entries.sort_unstable();
        if let Err(e) = self.write_run(&entries) {
            tracing::error!(error = %e, "cannot write delay index run; keeping entries in memory");
            self.heap = entries.into_iter().map(Reverse).collect();
            return;
        }
        if self.runs.len() > self.max_runs {
            self.merge_runs();
        }
    }

    fn next_run_path(&mut self) -> PathBuf {
        let rel = self.dir.join(format!("run-{:08}", self.next_run));
        self.next_run += 1;
        rel
    }

    /// Write `entries` (sorted) as a new run file, through the store's gate
    /// in chunks; a run that could not be written whole is removed.
    fn write_entries(
        &self,
        rel: &Path,
        entries: impl Iterator<Item = Entry>,
    ) -> std::io::Result<u64> {
        let result = (|| {
            let mut f = self.files.create(rel)?;
            let mut buf = Vec::with_capacity(WRITE_CHUNK);
            let mut n = 0u64;
            for e in entries {
                encode(&mut buf, &e);
                n += 1;
                if buf.len() + ENTRY > WRITE_CHUNK {
                    f.append(&buf)?;
                    buf.clear();
                }
            }
            if !buf.is_empty() {
                f.append(&buf)?;
            }
            Ok(n)
        })();
        if result.is_err() {
            let _ = self.files.remove(rel);
        }
        result
    }

    fn write_run(&mut self, entries: &[Entry]) -> std::io::Result<()> {
        let rel = self.next_run_path();
        self.write_entries(&rel, entries.iter().copied())?;
        self.runs.push(Run {
            path: self.files.path(&rel),
            rel,
            offset: 0,
            unread: entries.len() as u64,
            buf: VecDeque::new(),
        });
        Ok(())
    }

    /// Merge all runs into one (streaming), to bound their number.
    fn merge_runs(&mut self) {
        let mut runs = std::mem::take(&mut self.runs);
        let rel = self.next_run_path();
        let merged = std::iter::from_fn(|| {
            let mut best: Option<(usize, Entry)> = None;
            for (i, r) in runs.iter_mut().enumerate() {
                if let Some(e) = r.head() {
                    if best.is_none_or(|(_, b)| e < b) {
                        best = Some((i, e));
                    }
                }
            }
            let (i, e) = best?;
            runs[i].buf.pop_front();
            Some(e)
        });
        let result = self.write_entries(&rel, merged);
        for r in &runs {
            self.remove_run(r);
        }
        match result {
            Ok(n) => self.runs.push(Run {
                path: self.files.path(&rel),
                rel,
                offset: 0,
                unread: n,
                buf: VecDeque::new(),
            }),
            Err(e) => {
                tracing::error!(error = %e, "delay index merge failed; entries lost until restart rebuilds them")
            }
        }
    }

    /// The smallest entry, without removing it.
    pub fn peek(&mut self) -> Option<Entry> {
        let mut best = self.heap.peek().map(|Reverse(e)| *e);
        for r in self.runs.iter_mut() {
            if let Some(e) = r.head() {
                if best.is_none_or(|b| e < b) {
                    best = Some(e);
                }
            }
        }
        best
    }

    pub fn pop(&mut self) -> Option<Entry> {
        let best = self.peek()?;
        if self.heap.peek().is_some_and(|Reverse(e)| *e == best) {
            self.heap.pop();
        } else if let Some(i) = self
            .runs
            .iter_mut()
            .position(|r| r.buf.front() == Some(&best))
        {
            self.runs[i].buf.pop_front();
            if self.runs[i].buf.is_empty() && self.runs[i].unread == 0 {
                let r = self.runs.remove(i);
                self.remove_run(&r);
            }
        }
        self.pending = self.pending.saturating_sub(1);
        Some(best)
    }

    /// Every entry, in due order (for listing, cancelling and purging).
    /// Reads the runs from disk without disturbing the index.
    pub fn all(&self) -> Vec<Entry> {
        let mut out: Vec<Entry> = self.heap.iter().map(|Reverse(e)| *e).collect();
        for r in &self.runs {
            out.extend(r.buf.iter().copied());
            if r.unread > 0 {
                if let Ok(mut f) = File::open(&r.path) {
                    let mut bytes = vec![];
                    if f.seek(SeekFrom::Start(r.offset)).is_ok()
                        && f.read_to_end(&mut bytes).is_ok()
                    {
                        out.extend(bytes.chunks_exact(ENTRY).map(decode));
                    }
                }
            }
        }
        out.sort_unstable();
        out
    }

    pub fn clear(&mut self) {
        self.heap.clear();
        for r in std::mem::take(&mut self.runs) {
            self.remove_run(&r);
        }
        self.pending = 0;
    }

    fn remove_run(&self, r: &Run) {
        if let Err(e) = self.files.remove(&r.rel) {
            tracing::warn!(path = %r.path.display(), error = %e, "cannot remove delay index run");
        }
    }
}

/// Read the x-delay header: an integer, or a string or float as the plugin
/// accepts. `None` (or <= 0) means route at once.
pub fn x_delay(headers: Option<&FieldTable>) -> Option<u64> {
    let v = headers?.inner().get("x-delay")?;
    let ms: f64 = match v {
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes())
            .ok()?
            .trim()
            .parse()
            .ok()?,
        AMQPValue::ShortString(s) => s.as_str().trim().parse().ok()?,
        AMQPValue::Float(f) => *f as f64,
        AMQPValue::Double(d) => *d,
        other => crate::broker::args::int_value(other)? as f64,
    };
    (ms >= 1.0).then_some(ms as u64)
}

/// The delayed side of an exchange.
pub struct Delayed {
    /// The id the store's records name (0 for a transient exchange).
    pub id: u32,
    pub durable: bool,
    store: Arc<Store>,
    index: Mutex<DelayIndex>,
    wake: Arc<tokio::sync::Notify>,
    cancelled: Mutex<HashSet<MsgPos>>,
    exchange: OnceLock<Weak<Exchange>>,
    vhost: OnceLock<Weak<VHost>>,
    started: AtomicBool,
    /// Earliest due time the release task sleeps towards.
    sleeping_until: AtomicU64,
    pub released: AtomicU64,
}

impl Delayed {
    pub fn new(id: u32, durable: bool, store: Arc<Store>, dir: PathBuf) -> Self {
        let index = DelayIndex::new(store.files().clone(), dir);
        Delayed {
            id,
            durable,
            store,
            index: Mutex::new(index),
            wake: Arc::new(tokio::sync::Notify::new()),
            cancelled: Mutex::new(HashSet::new()),
            exchange: OnceLock::new(),
            vhost: OnceLock::new(),
            started: AtomicBool::new(false),
            sleeping_until: AtomicU64::new(u64::MAX),
            released: AtomicU64::new(0),
        }
    }

    /// Attach to its exchange and vhost and start the release task.
    pub fn start(&self, ex: &Arc<Exchange>, vhost: &Arc<VHost>) {
        let _ = self.exchange.set(Arc::downgrade(ex));
        let _ = self.vhost.set(Arc::downgrade(vhost));
        if !self.started.swap(true, Ordering::AcqRel) {
            if let Ok(h) = tokio::runtime::Handle::try_current() {
                h.spawn(release_loop(Arc::downgrade(ex)));
            } else {
                self.started.store(false, Ordering::Release);
            }
        }
        self.wake.notify_one();
    }

    pub fn logs(&self, persistent: bool) -> bool {
        self.durable && persistent && self.id != 0
    }

    /// Store a message published to this exchange with an x-delay and
    /// schedule it; returns the sync its confirm waits for, if any.
    #[allow(clippy::too_many_arguments)]
    pub fn store_and_schedule(
        &self,
        exchange: &str,
        routing_key: &str,
        header: &[u8],
        body: &[u8],
        persistent: bool,
        delay: u64,
        prefix: &mut Vec<u8>,
    ) -> Result<Option<crate::store::SyncSeq>, crate::store::AppendError> {
        let logged = self.logs(persistent);
        let ids: &[u32] = if logged {
            std::slice::from_ref(&self.id)
        } else {
            &[]
        };
        let now = crate::clock::now_ms_ceil();
        crate::store::encode_prefix(prefix, persistent, now, ids, exchange, routing_key, header);
        let (pos, seq) = self.store.append(prefix, body, 1, logged)?;
        self.schedule(now.saturating_add(delay), pos.with_logged(logged));
        Ok(seq)
    }

    /// Schedule a stored message (one store reference is ours now).
    pub fn schedule(&self, due: u64, pos: MsgPos) {
        let sleeping_until = {
            let mut idx = self.index.lock();
            idx.insert(due, pos);
            // Read under the lock the release task records it under.
            self.sleeping_until.load(Ordering::Acquire)
        };
        if due < sleeping_until {
            self.wake.notify_one();
        }
    }

    /// The earliest due time, recorded as what the release task sleeps
    /// towards, under the index lock (see `schedule`).
    fn arm(&self) -> Option<u64> {
        let mut idx = self.index.lock();
        let next = idx.peek().map(|e| e.0);
        self.sleeping_until
            .store(next.unwrap_or(u64::MAX), Ordering::Release);
        next
    }

    /// Rebuild from recovered records: due = arrival + x-delay.
    pub fn restore(&self, recovered: Vec<crate::store::Recovered>) {
        let mut idx = self.index.lock();
        for r in recovered {
            let due = self
                .store
                .with_message(r.pos, |m| {
                    let h = crate::protocol::props::full_headers(m.header);
                    m.timestamp_ms
                        .saturating_add(x_delay(h.as_ref()).unwrap_or(0))
                })
                .unwrap_or(0);
            idx.insert(due, r.pos);
        }
        drop(idx);
        // The release task may have looked at the empty index already.
        self.wake.notify_one();
    }

    /// Messages still to be released: a cancelled one stays in the index
    /// (skipped when due) but is no longer pending. Lock order: index, then
    /// cancelled; every cancelled position is in the index.
    pub fn pending(&self) -> u64 {
        let idx = self.index.lock();
        let cancelled = self.cancelled.lock().len() as u64;
        idx.len().saturating_sub(cancelled)
    }

    pub fn next_due(&self) -> Option<u64> {
        self.index.lock().peek().map(|e| e.0)
    }

    /// Pending messages in due order: (due ms, position).
    pub fn list(&self, limit: usize) -> Vec<(u64, MsgPos)> {
        let cancelled = self.cancelled.lock().clone();
        self.index
            .lock()
            .all()
            .into_iter()
            .filter(|e| !cancelled.contains(&e.2))
            .take(limit)
            .map(|e| (e.0, e.2))
            .collect()
    }

    /// Cancel the pending messages with this message-id; returns how many.
    /// Ownership is decided under the index lock (lock order: index, then
    /// cancelled), so a message being released at the same moment is either
    /// released or cancelled, never both.
    pub fn cancel(&self, message_id: &str) -> usize {
        let idx = self.index.lock();
        let mut cancelled = self.cancelled.lock();
        let mut gone = vec![];
        for (_, _, pos) in idx.all() {
            if cancelled.contains(&pos) {
                continue;
            }
            let hit = self
                .store
                .with_message(pos, |m| {
                    crate::protocol::props::peek(m.header).and_then(|p| p.message_id)
                        == Some(message_id)
                })
                .unwrap_or(false);
            if hit {
                cancelled.insert(pos);
                gone.push(pos);
            }
        }
        drop(cancelled);
        drop(idx);
        self.store.release_many(&gone, self.id);
        self.store.flush_acks();
        gone.len()
    }

    /// Drop every pending message; returns how many.
    pub fn purge(&self) -> usize {
        let mut idx = self.index.lock();
        let all = idx.all();
        idx.clear();
        let mut cancelled = self.cancelled.lock();
        let mine: Vec<MsgPos> = all
            .into_iter()
            .map(|(_, _, pos)| pos)
            .filter(|pos| !cancelled.remove(pos))
            .collect();
        drop(cancelled);
        drop(idx);
        self.store.release_many(&mine, self.id);
        self.store.flush_acks();
        mine.len()
    }

    /// Release every message due by `now`, at most `max`; returns how many.
    ///
    /// Each due message is copied into a record naming the queues that take
    /// it; the originals are released only after the copies are on disk
    /// (when an original was durable), so a power loss cannot keep the
    /// removal and lose the copy. A copy that cannot be stored (disk full)
    /// is rescheduled a second later instead of dropped.
    fn release_due(&self, ex: &Arc<Exchange>, vh: &Arc<VHost>, now: u64, max: usize) -> usize {
        let mut n = 0;
        let mut done: Vec<MsgPos> = vec![];
        while n < max {
            let pos = {
                let mut idx = self.index.lock();
                let due = match idx.peek() {
                    Some(e) if e.0 <= now => idx.pop(),
                    _ => None,
                };
                let Some((_, _, pos)) = due else { break };
                // Under the index lock: a cancel either got it first or never will.
                if self.cancelled.lock().remove(&pos) {
                    n += 1;
                    continue;
                }
                pos
            };
            n += 1;
            if route_released(&self.store, vh, ex, pos) {
                done.push(pos);
                self.released.fetch_add(1, Ordering::Relaxed);
            } else {
                self.index.lock().insert(now.saturating_add(1000), pos);
            }
        }
        if done.iter().any(|p| p.logged()) {
            if let Err(e) = self.store.sync_now() {
                tracing::error!(error = %e, "delayed release: sync failed; originals kept and rescheduled");
                let mut idx = self.index.lock();
                for pos in done {
                    idx.insert(now.saturating_add(1000), pos);
                }
                return n;
            }
        }
        self.store.release_many(&done, self.id);
        if n > 0 {
            self.store.flush_acks();
        }
        n
    }
}

/// Route a due message through the exchange's bindings as they are now,
/// by the one publish pipeline. False if it had to be stored and could not be.
fn route_released(store: &Arc<Store>, vh: &Arc<VHost>, ex: &Arc<Exchange>, pos: MsgPos) -> bool {
    let copied = store.with_message(pos, |m| {
        (
            m.header.to_vec(),
            m.body.to_vec(),
            m.routing_key.to_owned(),
            m.persistent,
        )
    });
    let Some((header, body, rk, persistent)) = copied else {
        tracing::error!(exchange = %ex.name, ?pos, "delayed message missing from the store");
        return true;
    };
    let parsed = Parsed::of(&header);
    let msg = Publish {
        exchange: ex,
        routing_key: &rk,
        header: &header,
        body: &body,
        headers: parsed.headers.as_ref(),
        persistent,
        priority: parsed.priority,
        expiration: parsed.expiration,
        mandatory: false,
    };
    let mut scratch = Scratch::default();
    match publish(vh, store, &msg, Origin::DelayedRelease, &mut scratch) {
        Outcome::NotStored(e) => {
            tracing::error!(exchange = %ex.name, error = %e, "released delayed message not stored; retried in 1 s");
            false
        }
        _ => true,
    }
}

async fn release_loop(ex: Weak<Exchange>) {
    loop {
        let Some(e) = ex.upgrade() else { return };
        if e.is_deleted() {
            return;
        }
        let Some(d) = e.delayed.as_ref() else { return };
        let wake = d.wake.clone();
        let notified = wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let next = d.arm();
        match next {
            None => {
                drop(e);
                notified.await;
                continue;
            }
            Some(due) => {
                let now = now_ms();
                if due > now {
                    drop(e);
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(due - now)) => {}
                        _ = &mut notified => {}
                    }
                    continue;
                }
            }
        }
        let Some(vh) = d.vhost.get().and_then(|v| v.upgrade()) else {
            return;
        };
        let n = d.release_due(&e, &vh, now_ms(), RELEASE_BATCH);
        drop(e);
        if n >= RELEASE_BATCH {
            // More are due: let other tasks run between batches.
            tokio::task::yield_now().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_orders_across_heap_and_runs() {
        let dir = tempfile::tempdir().unwrap();
        let files = Arc::new(Durable::new(dir.path(), Arc::new(crate::store::io::RealIo)));
        let mut idx = DelayIndex::new(files, dir.path().join("d"));
        let n = SPILL * 3 + 123;
        // Pseudo-random due times; positions carry the insertion number.
        let mut x: u64 = 12345;
        let mut expect = vec![];
        for i in 0..n as u64 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let due = (x >> 33) % 10_000;
            idx.insert(due, MsgPos(i));
            expect.push((due, i));
        }
        assert!(idx.runs.len() >= 3);
        assert_eq!(idx.len(), n as u64);
        expect.sort();
        let all = idx.all();
        assert_eq!(all.len(), n);
        let mut got = vec![];
        while let Some((due, _, pos)) = idx.pop() {
            got.push((due, pos.0));
        }
        // Same due: insertion (publish) order.
        assert_eq!(got, expect);
        assert!(idx.is_empty());
        assert_eq!(std::fs::read_dir(dir.path().join("d")).unwrap().count(), 0);
    }

    #[test]
    fn runs_are_written_through_the_store_gate() {
        use crate::store::io::{Observed, RealIo};
        use crate::store::replica::{differences, Mirror, Recorder};
        let primary = tempfile::tempdir().unwrap();
        let replica = tempfile::tempdir().unwrap();
        let rec = Arc::new(Recorder::default());
        let files = Arc::new(Durable::new(
            primary.path(),
            Arc::new(Observed::new(RealIo, rec.clone())),
        ));
        let dir = primary.path().join("delayed").join("x1");
        let mut mirror = Mirror::new(replica.path()).unwrap();
        let mut check = |expect_runs: bool| {
            mirror.apply_all(&rec.take()).unwrap();
            let runs = std::fs::read_dir(&dir).map_or(0, |d| d.count());
            assert_eq!(runs > 0, expect_runs, "{runs} run files");
            assert_eq!(
                differences(primary.path(), replica.path()).unwrap(),
                Vec::<String>::new()
            );
        };
        // Spills every 10 entries, merges beyond 3 runs.
        let mut idx = DelayIndex::with_limits(files.clone(), dir.clone(), 10, 3);
        for i in 0..95u64 {
            idx.insert((i * 7919) % 100, MsgPos(i));
        }
        // 9 spills, and merges: more run files written than there are runs.
        assert!(!idx.runs.is_empty() && idx.runs.len() <= 4);
        assert!(idx.next_run > 9, "{} runs written", idx.next_run);
        check(true);
        // Popping empties runs, which are removed.
        for _ in 0..60 {
            idx.pop().unwrap();
        }
        check(true);
        // A new index on the same directory (a restart) removes the old runs.
        drop(idx);
        let mut idx = DelayIndex::with_limits(files.clone(), dir.clone(), 10, 3);
        check(false);
        for i in 0..25u64 {
            idx.insert(i, MsgPos(i));
        }
        check(true);
        idx.clear();
        check(false);
        let ops = rec.take();
        assert!(ops.is_empty(), "{ops:?}");
    }

    #[test]
    fn x_delay_forms() {
        let mut t = FieldTable::default();
        t.insert("x-delay".into(), AMQPValue::LongInt(1500));
        assert_eq!(x_delay(Some(&t)), Some(1500));
        t.insert("x-delay".into(), AMQPValue::LongString("250".into()));
        assert_eq!(x_delay(Some(&t)), Some(250));
        t.insert("x-delay".into(), AMQPValue::Double(99.7));
        assert_eq!(x_delay(Some(&t)), Some(99));
        t.insert("x-delay".into(), AMQPValue::LongInt(-5));
        assert_eq!(x_delay(Some(&t)), None);
        t.insert("x-delay".into(), AMQPValue::LongLongInt(5_000_000_000_000));
        assert_eq!(x_delay(Some(&t)), Some(5_000_000_000_000));
        assert_eq!(x_delay(None), None);
    }
}
