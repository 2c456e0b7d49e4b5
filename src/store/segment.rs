//! One message segment: a preallocated, memory-mapped, append-only file.
//!
//! Layout (see docs/storage.md): a 16-byte file header, then records
//! `[u32 len][u32 crc32][payload]`. The writer copies a record into the map
//! beyond `len` and then publishes the new `len` with Release ordering; readers
//! only ever look below `len` (Acquire), so no byte is read while written.
//! Beside it, `<id>.acks` logs which queue let go of which record, so a
//! restart does not bring acked messages back.
//!
//! Replication seam: a record is copied into the map and then reported to
//! the observer as `wrote(path, offset, the mapped bytes)`, under the
//! store's writer lock (no copy, no allocation, one branch without an
//! observer); creating, cutting, syncing and deleting the files and the ack
//! log's appends go through [`Durable`].

use super::durable::{Durable, DurableFile};
use super::replica::Observer;
use memmap2::{MmapOptions, MmapRaw};
use parking_lot::Mutex;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// The segments' directory, inside the data directory.
pub const DIR: &str = "msgs";

pub const SEGMENT_MAGIC: &[u8; 8] = b"LEPUSSEG";
pub const ACKS_MAGIC: &[u8; 8] = b"LEPUSACK";
pub const FORMAT_VERSION: u32 = 1;
pub const SEGMENT_HEADER: usize = 16;
pub const RECORD_HEADER: usize = 8;

pub struct Segment {
    pub id: u32,
    pub path: PathBuf,
    /// `path` relative to the data directory, as the observer sees it.
    rel: PathBuf,
    acks_rel: PathBuf,
    files: Arc<Durable>,
    /// The observer, if any (the store's, copied here for the append path).
    obs: Option<Arc<dyn Observer>>,
    file: File,
    map: MmapRaw,
    cap: usize,
    /// Bytes written and visible to readers (includes the file header).
    len: AtomicUsize,
    /// Live references: one per queue that still holds a message of this segment.
    pub refs: AtomicU64,
    /// References ever taken (refs at their peak, roughly): compaction picks
    /// segments whose live references are a small part of this.
    pub total_refs: AtomicU64,
    /// No more appends; deleted once `refs` reaches zero.
    pub sealed: AtomicBool,
    pub deleted: AtomicBool,
    /// The ack log, once opened; `None` again once the segment is deleted
    /// (under this lock, so an append never recreates a deleted log).
    acks: Mutex<Option<DurableFile>>,
}

// SAFETY: the raw map is only written beyond `len` by the single writer (under
// the store's writer lock) and only read below `len`.
unsafe impl Sync for Segment {}
unsafe impl Send for Segment {}

impl Segment {
    pub fn file_name(id: u32) -> String {
        format!("{id:010}.seg")
    }
    pub fn acks_name(id: u32) -> String {
        format!("{id:010}.acks")
    }

    fn rel(id: u32) -> PathBuf {
        Path::new(DIR).join(Self::file_name(id))
    }
    fn acks_rel(id: u32) -> PathBuf {
        Path::new(DIR).join(Self::acks_name(id))
    }

    /// Create a new segment with room for `cap` bytes.
    pub fn create(files: &Arc<Durable>, id: u32, cap: usize) -> io::Result<Segment> {
        let rel = Self::rel(id);
        let file = files.create_allocated(&rel, cap as u64)?;
        let map = MmapOptions::new().len(cap).map_raw(&file)?;
        let seg = Segment {
            id,
            path: files.path(&rel),
            rel,
            acks_rel: Self::acks_rel(id),
            files: files.clone(),
            obs: files.observer().cloned(),
            file,
            map,
            cap,
            len: AtomicUsize::new(0),
            refs: AtomicU64::new(0),
            total_refs: AtomicU64::new(0),
            sealed: AtomicBool::new(false),
            deleted: AtomicBool::new(false),
            acks: Mutex::new(None),
        };
        let mut hdr = [0u8; SEGMENT_HEADER];
        hdr[..8].copy_from_slice(SEGMENT_MAGIC);
        hdr[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        hdr[12..16].copy_from_slice(&id.to_le_bytes());
        // SAFETY: fresh map of at least 16 bytes, nobody reads it yet.
        unsafe {
            std::ptr::copy_nonoverlapping(hdr.as_ptr(), seg.map.as_mut_ptr(), SEGMENT_HEADER)
        };
        seg.len.store(SEGMENT_HEADER, Ordering::Release);
        if let Some(o) = &seg.obs {
            o.wrote(&seg.rel, 0, seg.bytes(0, SEGMENT_HEADER));
        }
        Ok(seg)
    }

    /// Open an existing segment read-only for recovery and later reads.
    pub fn open(files: &Arc<Durable>, id: u32) -> io::Result<Segment> {
        let rel = Self::rel(id);
        let path = files.path(&rel);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)?;
        let cap = file.metadata()?.len() as usize;
        if cap < SEGMENT_HEADER {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "segment too short",
            ));
        }
        let map = MmapOptions::new().len(cap).map_raw(&file)?;
        let seg = Segment {
            id,
            path,
            rel,
            acks_rel: Self::acks_rel(id),
            files: files.clone(),
            obs: files.observer().cloned(),
            file,
            map,
            cap,
            len: AtomicUsize::new(cap),
            refs: AtomicU64::new(0),
            total_refs: AtomicU64::new(0),
            sealed: AtomicBool::new(true),
            deleted: AtomicBool::new(false),
            acks: Mutex::new(None),
        };
        let hdr = seg.bytes(0, SEGMENT_HEADER);
        if &hdr[..8] != SEGMENT_MAGIC {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "bad segment magic",
            ));
        }
        let version = u32::from_le_bytes(hdr[8..12].try_into().unwrap());
        if version != FORMAT_VERSION {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("segment format version {version}, this build reads {FORMAT_VERSION}"),
            ));
        }
        Ok(seg)
    }

    pub fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }
    pub fn is_empty(&self) -> bool {
        self.len() <= SEGMENT_HEADER
    }
    pub fn capacity(&self) -> usize {
        self.cap
    }
    pub fn file(&self) -> &File {
        &self.file
    }

    /// fdatasync the segment (and report it).
    pub fn sync(&self) -> io::Result<()> {
        self.files.sync(&self.rel, &self.file)
    }

    /// Bytes `[off, off+n)`, which must lie below `len`.
    pub fn bytes(&self, off: usize, n: usize) -> &[u8] {
        assert!(
            off + n <= self.len(),
            "read beyond the written end of a segment"
        );
        // SAFETY: within the map and below the published length: immutable.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(off), n) }
    }

    /// Append one record made of `parts` (already including nothing but the
    /// payload); returns its offset. Caller holds the store's writer lock.
    pub fn append(&self, parts: &[&[u8]]) -> Option<u32> {
        let payload: usize = parts.iter().map(|p| p.len()).sum();
        let off = self.len.load(Ordering::Relaxed);
        if off + RECORD_HEADER + payload > self.cap {
            return None;
        }
        let mut crc = crc32fast::Hasher::new();
        for p in parts {
            crc.update(p);
        }
        let mut hdr = [0u8; RECORD_HEADER];
        hdr[..4].copy_from_slice(&(payload as u32).to_le_bytes());
        hdr[4..].copy_from_slice(&crc.finalize().to_le_bytes());
        // SAFETY: [off, off+8+payload) is inside the map and beyond `len`,
        // so no reader looks at it; we are the only writer. The slice handed
        // to the observer is that range, which nobody writes again.
        let written = unsafe {
            let base = self.map.as_mut_ptr().add(off);
            std::ptr::copy_nonoverlapping(hdr.as_ptr(), base, RECORD_HEADER);
            let mut at = RECORD_HEADER;
            for p in parts {
                std::ptr::copy_nonoverlapping(p.as_ptr(), base.add(at), p.len());
                at += p.len();
            }
            std::slice::from_raw_parts(base as *const u8, RECORD_HEADER + payload)
        };
        self.len
            .store(off + RECORD_HEADER + payload, Ordering::Release);
        if let Some(o) = &self.obs {
            o.wrote(&self.rel, off as u64, written);
        }
        Some(off as u32)
    }

    /// The payload of the record at `off`, verified against its checksum when
    /// `verify` (recovery); `None` if there is no valid record there.
    pub fn record(&self, off: usize, verify: bool) -> Option<&[u8]> {
        let len = self.len();
        if off + RECORD_HEADER > len {
            return None;
        }
        let h = self.bytes(off, RECORD_HEADER);
        let n = u32::from_le_bytes(h[..4].try_into().unwrap()) as usize;
        let crc = u32::from_le_bytes(h[4..].try_into().unwrap());
        if n == 0 || off + RECORD_HEADER + n > len {
            return None;
        }
        let p = self.bytes(off + RECORD_HEADER, n);
        if verify && crc32fast::hash(p) != crc {
            return None;
        }
        Some(p)
    }

    /// Shrink the file to what was written, after recovery or when sealed.
    pub fn truncate_to(&self, len: usize) -> io::Result<()> {
        self.len.store(len, Ordering::Release);
        self.files.set_len(&self.rel, &self.file, len as u64)
    }

    /// Drop our page-table entries for this segment: the pages stay in the page
    /// cache (and on disk), but no longer count in our RSS. A later read faults
    /// them back in.
    pub fn trim_rss(&self, upto: usize) {
        let page = 4096;
        let end = upto.min(self.cap) / page * page;
        if end == 0 {
            return;
        }
        // SAFETY: advisory call on our own mapping; MADV_DONTNEED on a shared
        // file mapping never loses data.
        unsafe {
            libc::madvise(
                self.map.as_mut_ptr() as *mut libc::c_void,
                end,
                libc::MADV_DONTNEED,
            );
        }
    }

    /// Append ack-log entries (8 bytes each) for this segment.
    pub fn log_acks(&self, entries: &[u8]) -> io::Result<()> {
        let mut g = self.acks.lock();
        if self.deleted.load(Ordering::Acquire) {
            return Ok(());
        }
        if g.is_none() {
            let mut f = self.files.open_append(&self.acks_rel)?;
            if f.is_empty() {
                let mut hdr = [0u8; 16];
                hdr[..8].copy_from_slice(ACKS_MAGIC);
                hdr[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
                hdr[12..16].copy_from_slice(&self.id.to_le_bytes());
                f.append(&hdr)?;
            }
            *g = Some(f);
        }
        g.as_mut().unwrap().append(entries)
    }

    /// Remove the files (once no queue references this segment). The ack
    /// log goes under its lock, so no append recreates it afterwards.
    pub fn delete_files(&self) {
        self.deleted.store(true, Ordering::Release);
        if let Err(e) = self.files.remove(&self.rel) {
            tracing::warn!(segment = self.id, error = %e, "cannot remove segment file");
        }
        let mut g = self.acks.lock();
        *g = None;
        if let Err(e) = self.files.remove(&self.acks_rel) {
            tracing::warn!(segment = self.id, error = %e, "cannot remove ack log");
        }
    }
}
