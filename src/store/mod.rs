//! The message store: shared, append-only, memory-mapped segments.
//!
//! Owns: every message body in the broker (transient ones too, so a backlog
//! never lives on the heap), the group-commit sync thread, and the ack logs.
//! Queues hold only 8-byte [`MsgPos`]itions into it and a reference each; a
//! segment is deleted when its last reference is released.
//!
//! A message routed to several queues is written once; its record lists the
//! durable queues that took it when it is persistent, which is all recovery
//! needs: replay each segment's records, drop what its `.acks` file says was
//! removed, mark what it says was delivered as redelivered.
//!
//! Survives a crash: every persistent record that was confirmed (fdatasync
//! returned before the confirm was sent), and every ack-log entry that reached
//! the kernel. A torn record at the end of a segment fails its CRC and is cut.
//!
//! Replication seam: every durable byte under the data directory is written
//! through the store's [`Durable`] gate (handed out by [`Store::files`] to the
//! definitions log, dedup logs and delay-index runs) or, for segment records,
//! reported by the segment right after its copy into the map; an observer
//! attached through [`StoreIo::observer`] sees all of it (see [`replica`]).
//!
//! Never imports the broker, channel, connection or mgmt layers: the store
//! knows no AMQP session, socket or HTTP request (and no network: a
//! replicator is just an observer).

pub mod definitions;
pub mod durable;
pub mod io;
pub mod replica;
pub mod segment;

use self::durable::Durable;
use self::io::StoreIo;
use self::segment::{Segment, SEGMENT_HEADER};
use parking_lot::{Condvar, Mutex, RwLock};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Where a message lives: segment id in the high 32 bits, offset in the low 31,
/// and bit 31 set when the message's record names the holding queue (a
/// persistent message in a durable queue), so its removal must be logged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MsgPos(pub u64);

const LOGGED_BIT: u64 = 1 << 31;

impl MsgPos {
    pub fn new(seg: u32, off: u32, logged: bool) -> Self {
        debug_assert!(off < (1 << 31));
        MsgPos(((seg as u64) << 32) | off as u64 | if logged { LOGGED_BIT } else { 0 })
    }
    pub fn segment(self) -> u32 {
        (self.0 >> 32) as u32
    }
    pub fn offset(self) -> u32 {
        (self.0 & (LOGGED_BIT - 1)) as u32
    }
    pub fn logged(self) -> bool {
        self.0 & LOGGED_BIT != 0
    }
    pub fn with_logged(self, logged: bool) -> Self {
        MsgPos::new(self.segment(), self.offset(), logged)
    }
}

/// A message as stored: what is needed to deliver it again.
pub struct MessageView<'a> {
    pub persistent: bool,
    pub timestamp_ms: u64,
    /// For a record relocated by compaction: the original position, which
    /// gives its place in queue order at recovery.
    pub order: Option<u64>,
    pub queues: &'a [u8],
    pub exchange: &'a str,
    pub routing_key: &'a str,
    /// Raw content-header payload: class, weight, body size, property flags and list.
    pub header: &'a [u8],
    pub body: &'a [u8],
}

impl<'a> MessageView<'a> {
    pub fn decode(p: &'a [u8]) -> Option<Self> {
        if p.len() < 12 || p[0] != 1 {
            return None;
        }
        let persistent = p[1] & 1 != 0;
        let timestamp_ms = u64::from_le_bytes(p[2..10].try_into().ok()?);
        let mut at = 10;
        let order = if p[1] & 2 != 0 {
            at += 8;
            Some(u64::from_le_bytes(p.get(10..18)?.try_into().ok()?))
        } else {
            None
        };
        let nq = u16::from_le_bytes([*p.get(at)?, *p.get(at + 1)?]) as usize;
        at += 2;
        let queues = p.get(at..at + nq * 4)?;
        at += nq * 4;
        let exl = *p.get(at)? as usize;
        let exchange = std::str::from_utf8(p.get(at + 1..at + 1 + exl)?).ok()?;
        at += 1 + exl;
        let rkl = *p.get(at)? as usize;
        let routing_key = std::str::from_utf8(p.get(at + 1..at + 1 + rkl)?).ok()?;
        at += 1 + rkl;
        let hl = u32::from_le_bytes(p.get(at..at + 4)?.try_into().ok()?) as usize;
        at += 4;
        let header = p.get(at..at + hl)?;
        at += hl;
        Some(MessageView {
            persistent,
            timestamp_ms,
            order,
            queues,
            exchange,
            routing_key,
            header,
            body: &p[at..],
        })
    }

    pub fn queue_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.queues
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
    }
}

/// Encode the part of a message record before the body into `out`.
pub fn encode_prefix(
    out: &mut Vec<u8>,
    persistent: bool,
    timestamp_ms: u64,
    durable_queues: &[u32],
    exchange: &str,
    routing_key: &str,
    header: &[u8],
) {
    encode_prefix_ordered(
        out,
        persistent,
        timestamp_ms,
        None,
        durable_queues,
        exchange,
        routing_key,
        header,
    )
}

/// [`encode_prefix`] for a relocated record that keeps its original order key.
#[allow(clippy::too_many_arguments)]
pub fn encode_prefix_ordered(
    out: &mut Vec<u8>,
    persistent: bool,
    timestamp_ms: u64,
    order: Option<u64>,
    durable_queues: &[u32],
    exchange: &str,
    routing_key: &str,
    header: &[u8],
) {
    out.clear();
    out.push(1);
    out.push(persistent as u8 | if order.is_some() { 2 } else { 0 });
    out.extend_from_slice(&timestamp_ms.to_le_bytes());
    if let Some(o) = order {
        out.extend_from_slice(&o.to_le_bytes());
    }
    out.extend_from_slice(&(durable_queues.len() as u16).to_le_bytes());
    for q in durable_queues {
        out.extend_from_slice(&q.to_le_bytes());
    }
    // Both are shortstrs everywhere they come from (the wire, validated
    // arguments, the management API); cut defensively rather than write a
    // length that disagrees with the bytes.
    let exchange = &exchange.as_bytes()[..exchange.len().min(255)];
    let routing_key = &routing_key.as_bytes()[..routing_key.len().min(255)];
    debug_assert!(exchange.len() < 256 && routing_key.len() < 256);
    out.push(exchange.len() as u8);
    out.extend_from_slice(exchange);
    out.push(routing_key.len() as u8);
    out.extend_from_slice(routing_key);
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    out.extend_from_slice(header);
}

/// Where the persistent writes stand: everything with a sync sequence number
/// up to `done` has been through fdatasync (or failed, see [`Store::sync_failed`]).
pub type SyncSeq = u64;

struct Writer {
    active: Arc<Segment>,
    next_id: u32,
    /// Sequence number of the last persistent append.
    persist_seq: SyncSeq,
    /// Segments written since the last sync.
    dirty: Vec<Arc<Segment>>,
    shutdown: bool,
    /// An allocation failed (disk full): appends fail until one succeeds.
    full: bool,
}

#[derive(Debug)]
pub enum AppendError {
    /// No space for a new segment.
    DiskFull(std::io::Error),
    /// The store was shut down.
    Closed,
}

impl std::fmt::Display for AppendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AppendError::DiskFull(e) => write!(f, "cannot allocate a new segment: {e}"),
            AppendError::Closed => write!(f, "the store is shut down"),
        }
    }
}

/// One recovered message of a queue, in queue order.
#[derive(Debug, Clone, Copy)]
pub struct Recovered {
    pub pos: MsgPos,
    pub delivered: bool,
    /// Sort key for queue order: the original position of a relocated
    /// (compacted) record, else its own.
    pub order: u64,
}

/// Recovered messages per durable queue (or delayed exchange) id, in order.
pub type RecoveredQueues = HashMap<u32, Vec<Recovered>>;

pub struct Store {
    dir: PathBuf,
    files: Arc<Durable>,
    segment_size: usize,
    sync_delay: Duration,
    segments: RwLock<BTreeMap<u32, Arc<Segment>>>,
    writer: Mutex<Writer>,
    wake_sync: Condvar,
    synced_tx: watch::Sender<SyncSeq>,
    failed: Mutex<Vec<(SyncSeq, SyncSeq)>>,
    pending_acks: Mutex<Vec<(u32, [u8; 8])>>,
    pub fsync_histogram: crate::metrics::Histogram,
    stopped: AtomicBool,
    /// Set at the end of [`Store::shutdown`]: from then on nothing touches
    /// the files (another store may own the directory by now).
    closed: AtomicBool,
    /// The highest queue id any record named at start.
    pub max_recorded_id: u32,
}

impl Store {
    /// Open (or create) the store in `dir`, recovering the messages of the
    /// durable queues in `live_queues`. Segments nobody references are deleted.
    pub fn open(
        dir: &Path,
        io: Arc<dyn StoreIo>,
        segment_size: u32,
        sync_delay_us: u64,
        live_queues: &HashSet<u32>,
    ) -> std::io::Result<(Arc<Store>, RecoveredQueues)> {
        let files = Arc::new(Durable::new(dir, io));
        let dir = dir.join(segment::DIR);
        std::fs::create_dir_all(&dir)?;
        let mut ids = vec![];
        for e in std::fs::read_dir(&dir)? {
            let name = e?.file_name().to_string_lossy().to_string();
            if let Some(stem) = name.strip_suffix(".seg") {
                if let Ok(id) = stem.parse::<u32>() {
                    ids.push(id);
                }
            }
        }
        ids.sort_unstable();
        let mut recovered: HashMap<u32, Vec<Recovered>> = HashMap::new();
        // Ids named by any surviving record: a new queue must never get one,
        // or it would inherit a deleted queue's messages at the next restart.
        let mut max_recorded = 0u32;
        let mut segments = BTreeMap::new();
        for &id in &ids {
            let seg = match Segment::open(&files, id) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(segment = id, error = %e, "unreadable segment skipped");
                    continue;
                }
            };
            let acks = read_acks(&dir, id);
            let mut off = SEGMENT_HEADER;
            let mut refs = 0u64;
            let mut total_records = 0u64;
            while let Some(p) = seg.record(off, true) {
                let n = p.len();
                total_records += 1;
                if let Some(view) = MessageView::decode(p) {
                    if view.persistent {
                        for q in view.queue_ids() {
                            max_recorded = max_recorded.max(q);
                            if !live_queues.contains(&q) {
                                continue;
                            }
                            let state = acks.get(&(q, off as u32)).copied().unwrap_or(0);
                            if state & ACK_REMOVED != 0 {
                                continue;
                            }
                            refs += 1;
                            let pos = MsgPos::new(id, off as u32, true);
                            recovered.entry(q).or_default().push(Recovered {
                                pos,
                                delivered: state & ACK_DELIVERED != 0,
                                order: view.order.unwrap_or(pos.0 & !LOGGED_BIT),
                            });
                        }
                    }
                }
                off += segment::RECORD_HEADER + n;
            }
            if off < seg.capacity() {
                tracing::info!(
                    segment = id,
                    valid_bytes = off,
                    "segment end cut after the last valid record"
                );
                seg.truncate_to(off)?;
            }
            if refs == 0 {
                seg.delete_files();
                continue;
            }
            seg.refs.store(refs, Ordering::Relaxed);
            seg.total_refs
                .store(total_records.max(refs), Ordering::Relaxed);
            segments.insert(id, Arc::new(seg));
        }
        // Compaction moves records forward; their order keys put them back.
        for msgs in recovered.values_mut() {
            msgs.sort_by_key(|r| r.order);
        }
        let next_id = ids.last().map(|i| i + 1).unwrap_or(1);
        let active = Arc::new(Segment::create(&files, next_id, segment_size as usize)?);
        segments.insert(next_id, active.clone());
        let (synced_tx, _) = watch::channel(0);
        let store = Arc::new(Store {
            dir,
            files,
            segment_size: segment_size as usize,
            sync_delay: Duration::from_micros(sync_delay_us),
            segments: RwLock::new(segments),
            writer: Mutex::new(Writer {
                active,
                next_id: next_id + 1,
                persist_seq: 0,
                dirty: vec![],
                shutdown: false,
                full: false,
            }),
            wake_sync: Condvar::new(),
            synced_tx,
            failed: Mutex::new(vec![]),
            pending_acks: Mutex::new(vec![]),
            fsync_histogram: crate::metrics::Histogram::new_latency(),
            stopped: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            max_recorded_id: max_recorded,
        });
        let s = store.clone();
        std::thread::Builder::new()
            .name("lepus-sync".into())
            .spawn(move || s.sync_loop())?;
        Ok((store, recovered))
    }

    /// The segments' directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The gate every other durable file of the data directory is written
    /// through (definitions log, dedup logs, delay-index runs).
    pub fn files(&self) -> &Arc<Durable> {
        &self.files
    }

    /// Append a message record referenced by `refs` queues. Returns its
    /// position and, when `persistent_sync` (a persistent message that a
    /// durable queue took), the sync sequence number its confirm must wait for.
    pub fn append(
        &self,
        prefix: &[u8],
        body: &[u8],
        refs: u64,
        persistent_sync: bool,
    ) -> Result<(MsgPos, Option<SyncSeq>), AppendError> {
        let mut w = self.writer.lock();
        if self.is_closed() {
            return Err(AppendError::Closed);
        }
        let off = match w.active.append(&[prefix, body]) {
            Some(off) => off,
            None => {
                self.roll(&mut w, prefix.len() + body.len())?;
                w.active
                    .append(&[prefix, body])
                    .expect("fresh segment fits the record")
            }
        };
        w.active.refs.fetch_add(refs, Ordering::SeqCst);
        w.active.total_refs.fetch_add(refs, Ordering::Relaxed);
        let seg = w.active.id;
        let seq = if persistent_sync {
            w.persist_seq += 1;
            if !w.dirty.iter().any(|d| Arc::ptr_eq(d, &w.active)) {
                let a = w.active.clone();
                w.dirty.push(a);
            }
            self.wake_sync.notify_one();
            Some(w.persist_seq)
        } else {
            None
        };
        Ok((MsgPos::new(seg, off, false), seq))
    }

    fn roll(&self, w: &mut Writer, need: usize) -> Result<(), AppendError> {
        let cap = self
            .segment_size
            .max(need + SEGMENT_HEADER + segment::RECORD_HEADER);
        let id = w.next_id;
        let seg = match Segment::create(&self.files, id, cap) {
            Ok(s) => Arc::new(s),
            Err(e) => {
                if !w.full {
                    tracing::error!(error = %e, "cannot allocate a new segment; publishes fail until space is available");
                }
                w.full = true;
                return Err(AppendError::DiskFull(e));
            }
        };
        w.full = false;
        w.next_id += 1;
        self.segments.write().insert(id, seg.clone());
        let old = std::mem::replace(&mut w.active, seg);
        let len = old.len();
        if let Err(e) = old.truncate_to(len) {
            tracing::warn!(segment = old.id, error = %e, "cannot shrink sealed segment");
        }
        old.sealed.store(true, Ordering::SeqCst);
        if old.refs.load(Ordering::SeqCst) == 0 {
            self.delete_segment(&old);
        }
        Ok(())
    }

    fn delete_segment(&self, seg: &Arc<Segment>) {
        if self.is_closed() || seg.deleted.swap(true, Ordering::SeqCst) {
            return;
        }
        self.segments.write().remove(&seg.id);
        // Deleting the file is safe even while mapped: the map lives on until
        // the last Arc is dropped.
        seg.delete_files();
    }

    pub fn segment(&self, id: u32) -> Option<Arc<Segment>> {
        self.segments.read().get(&id).cloned()
    }

    /// Read a message. `f` sees a view that borrows the segment.
    pub fn with_message<R>(&self, pos: MsgPos, f: impl FnOnce(&MessageView) -> R) -> Option<R> {
        let seg = self.segment(pos.segment())?;
        let p = seg.record(pos.offset() as usize, false)?;
        let view = MessageView::decode(p)?;
        Some(f(&view))
    }

    /// [`Self::with_message`] with a caller-held segment cache, for loops that
    /// read many messages (dispatch): one segment lookup per segment, not
    /// per message. Keep the cache short-lived: it pins the segment's map.
    pub fn with_message_cached<R>(
        &self,
        cache: &mut Option<Arc<Segment>>,
        pos: MsgPos,
        f: impl FnOnce(&MessageView) -> R,
    ) -> Option<R> {
        if cache.as_ref().is_none_or(|s| s.id != pos.segment()) {
            *cache = Some(self.segment(pos.segment())?);
        }
        let seg = cache.as_ref()?;
        let p = seg.record(pos.offset() as usize, false)?;
        let view = MessageView::decode(p)?;
        Some(f(&view))
    }

    /// Release many positions of one queue (acks): one segment lookup and one
    /// reference update per run of positions in the same segment.
    pub fn release_many(&self, positions: &[MsgPos], queue_id: u32) {
        let logged: Vec<(u32, [u8; 8])> = positions
            .iter()
            .filter(|p| p.logged())
            .map(|p| (p.segment(), ack_entry(*p, queue_id, false)))
            .collect();
        if !logged.is_empty() {
            self.pending_acks.lock().extend(logged);
        }
        let mut i = 0;
        while i < positions.len() {
            let seg_id = positions[i].segment();
            let mut n = 0u64;
            while i < positions.len() && positions[i].segment() == seg_id {
                n += 1;
                i += 1;
            }
            if let Some(seg) = self.segment(seg_id) {
                let before = seg.refs.fetch_sub(n, Ordering::SeqCst);
                debug_assert!(before >= n, "segment reference count underflow");
                if before == n && seg.sealed.load(Ordering::SeqCst) {
                    self.delete_segment(&seg);
                }
            }
        }
    }

    /// Size of the stored message body (for byte limits and stats).
    pub fn body_len(&self, pos: MsgPos) -> u64 {
        self.with_message(pos, |m| m.body.len() as u64).unwrap_or(0)
    }

    /// A queue let go of a message (acked, expired, dropped, purged, ...).
    /// `queue_id` matters only for logged positions.
    pub fn release(&self, pos: MsgPos, queue_id: u32) {
        if pos.logged() {
            self.log(pos, queue_id, false);
        }
        if let Some(seg) = self.segment(pos.segment()) {
            let before = seg.refs.fetch_sub(1, Ordering::SeqCst);
            debug_assert!(before > 0, "segment reference count underflow");
            if before == 1 && seg.sealed.load(Ordering::SeqCst) {
                self.delete_segment(&seg);
            }
        }
    }

    /// Record that a logged message was handed to a consumer, so that it
    /// comes back with redelivered=true after a restart.
    pub fn mark_delivered(&self, pos: MsgPos, queue_id: u32) {
        self.log(pos, queue_id, true);
    }

    fn log(&self, pos: MsgPos, queue_id: u32, delivered: bool) {
        let e = ack_entry(pos, queue_id, delivered);
        self.pending_acks.lock().push((pos.segment(), e));
    }

    /// Whether ack-log entries wait to be written.
    pub fn has_pending_acks(&self) -> bool {
        !self.pending_acks.lock().is_empty()
    }

    /// Write pending ack-log entries to their segments' `.acks` files (one
    /// write per segment; no fsync: an ack lost in a power failure means a
    /// redelivery, which at-least-once allows).
    pub fn flush_acks(&self) {
        let mut pending = std::mem::take(&mut *self.pending_acks.lock());
        if pending.is_empty() || self.is_closed() {
            return;
        }
        pending.sort_by_key(|(s, _)| *s);
        let mut buf = Vec::with_capacity(pending.len() * 8);
        let mut i = 0;
        while i < pending.len() {
            let seg_id = pending[i].0;
            buf.clear();
            while i < pending.len() && pending[i].0 == seg_id {
                buf.extend_from_slice(&pending[i].1);
                i += 1;
            }
            if let Some(seg) = self.segment(seg_id) {
                if let Err(e) = seg.log_acks(&buf) {
                    tracing::error!(segment = seg_id, error = %e, "cannot write ack log");
                }
            }
        }
    }

    /// Subscribe to sync progress.
    pub fn synced(&self) -> watch::Receiver<SyncSeq> {
        self.synced_tx.subscribe()
    }

    /// Whether the sync covering `seq` failed (its confirm must be a nack).
    pub fn sync_failed(&self, seq: SyncSeq) -> bool {
        self.failed
            .lock()
            .iter()
            .any(|&(lo, hi)| seq > lo && seq <= hi)
    }

    fn sync_loop(self: Arc<Self>) {
        let mut done: SyncSeq = 0;
        loop {
            {
                let mut w = self.writer.lock();
                while w.persist_seq == done && !w.shutdown {
                    let t = self.wake_sync.wait_for(&mut w, Duration::from_millis(200));
                    if t.timed_out() {
                        drop(w);
                        self.flush_acks();
                        w = self.writer.lock();
                    }
                }
                if w.shutdown && w.persist_seq == done {
                    break;
                }
            }
            if !self.sync_delay.is_zero() {
                std::thread::sleep(self.sync_delay);
            }
            let (target, dirty) = {
                let mut w = self.writer.lock();
                (w.persist_seq, std::mem::take(&mut w.dirty))
            };
            let started = std::time::Instant::now();
            let mut ok = true;
            for seg in &dirty {
                if seg.deleted.load(Ordering::Acquire) {
                    continue;
                }
                if let Err(e) = seg.sync() {
                    tracing::error!(segment = seg.id, error = %e, "fdatasync failed: the affected publishes are nacked");
                    ok = false;
                }
            }
            self.fsync_histogram.observe(started.elapsed());
            if !ok {
                self.failed.lock().push((done, target));
            }
            done = target;
            self.synced_tx.send_replace(done);
            self.flush_acks();
        }
        self.flush_acks();
        self.stopped.store(true, Ordering::SeqCst);
    }

    /// Drop mapped pages from our RSS (they stay in the page cache). Called
    /// periodically; the active segment keeps its last 4 MiB mapped since
    /// consumers usually read what was just written.
    pub fn trim_rss(&self) {
        let active = self.writer.lock().active.clone();
        for seg in self.segments.read().values() {
            if Arc::ptr_eq(seg, &active) {
                seg.trim_rss(seg.len().saturating_sub(4 << 20));
            } else {
                seg.trim_rss(seg.len());
            }
        }
    }

    /// Sealed segments worth compacting: still referenced, but by less than a
    /// quarter of what they held.
    pub fn sparse_segments(&self) -> Vec<u32> {
        let active = self.writer.lock().active.id;
        self.segments
            .read()
            .values()
            .filter(|s| s.id != active && s.sealed.load(Ordering::Acquire))
            .filter(|s| {
                let live = s.refs.load(Ordering::Acquire);
                live > 0 && live * 4 < s.total_refs.load(Ordering::Relaxed)
            })
            .map(|s| s.id)
            .collect()
    }

    /// fdatasync every segment written since the last sync, now, on this
    /// thread (compaction must know its copies are on disk before it logs the
    /// originals as removed).
    pub fn sync_now(&self) -> std::io::Result<()> {
        let dirty: Vec<Arc<Segment>> = {
            let w = self.writer.lock();
            let mut d = w.dirty.clone();
            if !d.iter().any(|x| Arc::ptr_eq(x, &w.active)) {
                d.push(w.active.clone());
            }
            d
        };
        for s in dirty {
            if !s.deleted.load(Ordering::Acquire) {
                s.sync()?;
            }
        }
        Ok(())
    }

    /// Copy a stored message into a new record (for compaction) naming
    /// `queue_ids`; returns the new position (one reference taken).
    pub fn copy(&self, pos: MsgPos, queue_ids: &[u32]) -> Option<MsgPos> {
        let (prefix, body) = self.with_message(pos, |m| {
            let mut prefix = Vec::with_capacity(64 + m.header.len());
            let order = m.order.unwrap_or(pos.0 & !LOGGED_BIT);
            encode_prefix_ordered(
                &mut prefix,
                m.persistent,
                m.timestamp_ms,
                Some(order),
                queue_ids,
                m.exchange,
                m.routing_key,
                m.header,
            );
            (prefix, m.body.to_vec())
        })?;
        self.append(&prefix, &body, 1, !queue_ids.is_empty())
            .ok()
            .map(|(p, _)| p)
    }

    /// Bytes of segment files on disk (allocated size for the active one).
    pub fn disk_bytes(&self) -> u64 {
        self.segments
            .read()
            .values()
            .map(|s| s.capacity() as u64)
            .sum()
    }

    /// Bytes of records written and still on disk (without preallocation).
    pub fn bytes_used(&self) -> u64 {
        self.segments.read().values().map(|s| s.len() as u64).sum()
    }

    pub fn segment_count(&self) -> usize {
        self.segments.read().len()
    }

    /// Sync everything and stop the sync thread.
    pub fn shutdown(&self) {
        {
            let mut w = self.writer.lock();
            w.shutdown = true;
            self.wake_sync.notify_all();
        }
        for _ in 0..500 {
            if self.stopped.load(Ordering::SeqCst) {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        self.flush_acks();
        let active = self.writer.lock().active.clone();
        let _ = active.sync();
        self.closed.store(true, Ordering::SeqCst);
        // Nothing in the data dir changes any more, through any file.
        self.files.close();
    }

    /// Whether [`Store::shutdown`] has finished: appends fail, releases and
    /// acks are no longer written, no file is deleted.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }
}

/// An ack-log entry: queue id, then the offset with bit 31 for "delivered".
fn ack_entry(pos: MsgPos, queue_id: u32, delivered: bool) -> [u8; 8] {
    let mut e = [0u8; 8];
    e[..4].copy_from_slice(&queue_id.to_le_bytes());
    let v = pos.offset() | if delivered { 1 << 31 } else { 0 };
    e[4..].copy_from_slice(&v.to_le_bytes());
    e
}

const ACK_REMOVED: u8 = 1;
const ACK_DELIVERED: u8 = 2;

/// Read a segment's ack log into (queue, offset) -> flags. A torn last entry
/// (file length not a multiple of 8 after the header) is ignored.
fn read_acks(dir: &Path, id: u32) -> HashMap<(u32, u32), u8> {
    let mut map = HashMap::new();
    let Ok(bytes) = std::fs::read(dir.join(Segment::acks_name(id))) else {
        return map;
    };
    if bytes.len() < 16 || &bytes[..8] != segment::ACKS_MAGIC {
        return map;
    }
    for e in bytes[16..].chunks_exact(8) {
        let q = u32::from_le_bytes(e[..4].try_into().unwrap());
        let v = u32::from_le_bytes(e[4..].try_into().unwrap());
        let flag = if v & (1 << 31) != 0 {
            ACK_DELIVERED
        } else {
            ACK_REMOVED
        };
        *map.entry((q, v & !(1 << 31))).or_insert(0) |= flag;
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path, live: &[u32]) -> (Arc<Store>, HashMap<u32, Vec<Recovered>>) {
        Store::open(
            dir,
            Arc::new(io::RealIo),
            1 << 20,
            0,
            &live.iter().copied().collect(),
        )
        .unwrap()
    }

    fn put(store: &Store, queues: &[u32], body: &[u8]) -> MsgPos {
        let mut prefix = vec![];
        encode_prefix(&mut prefix, true, 1, queues, "ex", "rk", b"hdr");
        store
            .append(&prefix, body, queues.len() as u64, true)
            .unwrap()
            .0
    }

    #[test]
    fn recovery_drops_acked_and_marks_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let (s, _) = open(dir.path(), &[]);
        let a = put(&s, &[1, 2], b"a");
        let b = put(&s, &[1], b"b");
        let _c = put(&s, &[2], b"c");
        s.mark_delivered(b.with_logged(true), 1);
        s.release(a.with_logged(true), 1);
        s.flush_acks();
        s.shutdown();
        drop(s);
        let (s, rec) = open(dir.path(), &[1, 2]);
        let q1: Vec<_> = rec[&1]
            .iter()
            .map(|r| (r.pos.offset(), r.delivered))
            .collect();
        assert_eq!(q1, vec![(b.offset(), true)]);
        assert_eq!(rec[&2].len(), 2);
        s.with_message(rec[&2][0].pos, |m| {
            assert_eq!(m.body, b"a");
            assert_eq!(m.exchange, "ex");
            assert_eq!(m.header, b"hdr");
        })
        .unwrap();
        s.shutdown();
    }

    #[test]
    fn torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let (s, _) = open(dir.path(), &[]);
        let a = put(&s, &[7], b"first");
        let b = put(&s, &[7], b"second");
        s.shutdown();
        let seg = s.segment(a.segment()).unwrap();
        drop(s);
        // Corrupt the second record's body: its CRC no longer matches.
        let path = seg.path.clone();
        drop(seg);
        let mut bytes = std::fs::read(&path).unwrap();
        let at = b.offset() as usize + 8 + 20;
        bytes[at] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let (s, rec) = open(dir.path(), &[7]);
        assert_eq!(rec[&7].len(), 1);
        assert_eq!(rec[&7][0].pos.offset(), a.offset());
        s.shutdown();
    }

    #[test]
    fn segments_are_deleted_when_released() {
        let dir = tempfile::tempdir().unwrap();
        let (s, _) = open(dir.path(), &[]);
        let body = vec![0u8; 300 * 1024];
        let ps: Vec<_> = (0..8).map(|_| put(&s, &[1], &body)).collect();
        assert!(s.segment_count() > 2);
        for p in ps {
            s.release(p.with_logged(true), 1);
        }
        assert_eq!(s.segment_count(), 1, "only the active segment remains");
        s.shutdown();
    }
}
