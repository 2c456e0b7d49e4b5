//! The store's I/O, behind a trait so tests can inject faults.
//!
//! Everything that changes a durable file goes through [`StoreIo`]: creating
//! and allocating a segment, creating, appending to, cutting, renaming and
//! removing the small files (ack logs, definitions log, dedup logs, delay
//! runs), and syncing. Reads go through the memory map (or plain reads at
//! recovery) and never change a file.
//!
//! Contract: nothing outside `src/store/` calls these directly; the store's
//! [`Durable`](super::durable::Durable) gate calls them and reports each
//! change that succeeded to the replication
//! [`Observer`](super::replica::Observer), which an implementation hands out
//! through [`StoreIo::observer`] (see [`Observed`]).

use super::replica::Observer;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

pub trait StoreIo: Send + Sync + 'static {
    /// Create `path` and reserve `len` bytes for it on disk, so that writes
    /// through the memory map can never hit a full disk (which would be SIGBUS).
    fn create_allocated(&self, path: &Path, len: u64) -> io::Result<File> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        // SAFETY: plain syscall on a valid fd.
        let r = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len as libc::off_t) };
        if r != 0 {
            let _ = std::fs::remove_file(path);
            return Err(io::Error::from_raw_os_error(r));
        }
        Ok(file)
    }
    /// Create `path` empty (cutting what was there), for sequential writes.
    fn create(&self, path: &Path) -> io::Result<File> {
        File::create(path)
    }
    /// Open `path` for appending, creating it if missing.
    fn open_append(&self, path: &Path) -> io::Result<File> {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
    }
    /// fdatasync: every byte written so far (also through a shared mapping) is on disk.
    fn sync(&self, file: &File) -> io::Result<()> {
        file.sync_data()
    }
    /// fsync a directory: the names created, renamed or removed in it are on disk.
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
    /// Write `bytes` at the file's position (its end, for an appending file).
    fn append(&self, mut file: &File, bytes: &[u8]) -> io::Result<()> {
        file.write_all(bytes)
    }
    /// Cut (or extend with zeros) to `len` bytes.
    fn set_len(&self, file: &File, len: u64) -> io::Result<()> {
        file.set_len(len)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }
    /// Who watches the store's writes (a replicator), if anyone. Asked once,
    /// when the store opens.
    fn observer(&self) -> Option<Arc<dyn Observer>> {
        None
    }
}

/// The real thing.
pub struct RealIo;
impl StoreIo for RealIo {}

/// Another [`StoreIo`] (`RealIo`, `FaultyIo`, ...) with an observer attached:
/// what a replicator (or a test) passes to `Broker::open`.
pub struct Observed<I> {
    pub io: I,
    pub observer: Arc<dyn Observer>,
}

impl<I: StoreIo> Observed<I> {
    pub fn new(io: I, observer: Arc<dyn Observer>) -> Self {
        Observed { io, observer }
    }
}

impl<I: StoreIo> StoreIo for Observed<I> {
    fn create_allocated(&self, path: &Path, len: u64) -> io::Result<File> {
        self.io.create_allocated(path, len)
    }
    fn create(&self, path: &Path) -> io::Result<File> {
        self.io.create(path)
    }
    fn open_append(&self, path: &Path) -> io::Result<File> {
        self.io.open_append(path)
    }
    fn sync(&self, file: &File) -> io::Result<()> {
        self.io.sync(file)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.io.sync_dir(dir)
    }
    fn append(&self, file: &File, bytes: &[u8]) -> io::Result<()> {
        self.io.append(file, bytes)
    }
    fn set_len(&self, file: &File, len: u64) -> io::Result<()> {
        self.io.set_len(file, len)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.io.rename(from, to)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        self.io.remove(path)
    }
    fn observer(&self) -> Option<Arc<dyn Observer>> {
        Some(self.observer.clone())
    }
}

/// Fault injection for tests: fail the next N syncs or allocations.
#[derive(Default)]
pub struct FaultyIo {
    pub fail_syncs: AtomicU32,
    pub fail_allocations: AtomicU32,
    pub fail_all_syncs: AtomicBool,
}

impl StoreIo for FaultyIo {
    fn create_allocated(&self, path: &Path, len: u64) -> io::Result<File> {
        if take_one(&self.fail_allocations) {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        RealIo.create_allocated(path, len)
    }
    fn sync(&self, file: &File) -> io::Result<()> {
        if self.fail_all_syncs.load(Ordering::SeqCst) || take_one(&self.fail_syncs) {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        RealIo.sync(file)
    }
}

fn take_one(counter: &AtomicU32) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}
