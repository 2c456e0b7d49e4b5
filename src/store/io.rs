//! The store's I/O, behind a trait so tests can inject faults.
//!
//! Everything that can fail on a full or broken disk goes through [`StoreIo`]:
//! creating and allocating a segment, syncing it, and appending to the small
//! ack logs. Reads go through the memory map and cannot fail once mapped.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

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
    /// fdatasync: every byte written so far (also through a shared mapping) is on disk.
    fn sync(&self, file: &File) -> io::Result<()> {
        file.sync_data()
    }
    fn append(&self, mut file: &File, bytes: &[u8]) -> io::Result<()> {
        file.write_all(bytes)
    }
}

/// The real thing.
pub struct RealIo;
impl StoreIo for RealIo {}

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
