//! The replication seam: an [`Observer`] sees every change the store makes
//! to a durable file, and [`Mirror`] applies such changes to another
//! directory (what a follower does with them).
//!
//! Contract: every durable byte under the data directory (segments, ack
//! logs, the definitions log, delay-index runs, dedup logs) is written
//! through [`Durable`](super::durable::Durable), which reports each change
//! after it succeeded, with the path relative to the data directory. Applied
//! in the order reported, the changes rebuild the directory byte for byte.
//! The store knows no network: a replicator is just an observer.
//!
//! Order and threads: changes to one file are reported in the order they
//! were made. Changes to different files may interleave in any order and
//! come from any thread (segment writes from the publisher's, ack logs from
//! the sync thread, ...). `wrote` for a segment record is reported under the
//! store's writer lock, before the fdatasync that covers it; `synced` is
//! reported after fdatasync returned, and for segments before the confirms it
//! covers are released, so an observer that blocks in `synced` (waiting for
//! followers) holds those confirms back. Calls must be quick otherwise: the
//! segment `wrote` runs on the publish path, once per message.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Watches the store's writes. Paths are relative to the data directory.
pub trait Observer: Send + Sync + 'static {
    /// `path` exists now and is empty (new, or an existing file cut to zero).
    fn created(&self, path: &Path);
    /// `bytes` were written at `offset` of `path`. For a segment this is a
    /// slice of the mapped file, right after the copy into the map.
    fn wrote(&self, path: &Path, offset: u64, bytes: &[u8]);
    /// `path` was cut, or extended with zeros (preallocation), to `len` bytes.
    fn set_len(&self, path: &Path, len: u64);
    /// `from` replaced `to` (atomically; `from` is gone).
    fn renamed(&self, from: &Path, to: &Path);
    /// `path` was removed.
    fn deleted(&self, path: &Path);
    /// What was written to `path` so far is on disk (fdatasync returned; for
    /// a rename, the directory was synced too).
    fn synced(&self, path: &Path);
}

/// One observed change, owned (what a replicator would send).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Created(PathBuf),
    Wrote {
        path: PathBuf,
        offset: u64,
        bytes: Vec<u8>,
    },
    SetLen {
        path: PathBuf,
        len: u64,
    },
    Renamed {
        from: PathBuf,
        to: PathBuf,
    },
    Deleted(PathBuf),
    Synced(PathBuf),
}

impl Op {
    /// The file the change is about (for a rename: its new name).
    pub fn path(&self) -> &Path {
        match self {
            Op::Created(p) | Op::Deleted(p) | Op::Synced(p) => p,
            Op::Wrote { path, .. } | Op::SetLen { path, .. } => path,
            Op::Renamed { to, .. } => to,
        }
    }
}

/// An observer that keeps every change in memory, in the order reported.
#[derive(Default)]
pub struct Recorder {
    ops: parking_lot::Mutex<Vec<Op>>,
}

impl Recorder {
    /// The changes recorded so far, leaving none behind.
    pub fn take(&self) -> Vec<Op> {
        std::mem::take(&mut *self.ops.lock())
    }
    pub fn len(&self) -> usize {
        self.ops.lock().len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn push(&self, op: Op) {
        self.ops.lock().push(op);
    }
}

impl Observer for Recorder {
    fn created(&self, path: &Path) {
        self.push(Op::Created(path.to_owned()));
    }
    fn wrote(&self, path: &Path, offset: u64, bytes: &[u8]) {
        self.push(Op::Wrote {
            path: path.to_owned(),
            offset,
            bytes: bytes.to_vec(),
        });
    }
    fn set_len(&self, path: &Path, len: u64) {
        self.push(Op::SetLen {
            path: path.to_owned(),
            len,
        });
    }
    fn renamed(&self, from: &Path, to: &Path) {
        self.push(Op::Renamed {
            from: from.to_owned(),
            to: to.to_owned(),
        });
    }
    fn deleted(&self, path: &Path) {
        self.push(Op::Deleted(path.to_owned()));
    }
    fn synced(&self, path: &Path) {
        self.push(Op::Synced(path.to_owned()));
    }
}

/// Applies observed changes to a directory: a follower's side of the seam.
///
/// Strict: a write to, cut of or rename of a file it never saw created is an
/// error (the stream missed something), and so is a path that leaves the
/// directory. Removing a file that is not there is not (the primary may
/// remove a file that it is about to recreate, or remove twice).
pub struct Mirror {
    root: PathBuf,
    open: HashMap<PathBuf, File>,
    /// fdatasync on `synced` (a real follower does; a test may skip it).
    pub sync: bool,
}

impl Mirror {
    pub fn new(root: &Path) -> io::Result<Mirror> {
        std::fs::create_dir_all(root)?;
        Ok(Mirror {
            root: root.to_owned(),
            open: HashMap::new(),
            sync: true,
        })
    }

    fn target(&self, rel: &Path) -> io::Result<PathBuf> {
        if rel.is_absolute()
            || rel
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a plain relative path", rel.display()),
            ));
        }
        Ok(self.root.join(rel))
    }

    fn file(&mut self, rel: &Path) -> io::Result<&File> {
        if !self.open.contains_key(rel) {
            let path = self.target(rel)?;
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
            self.open.insert(rel.to_owned(), f);
        }
        Ok(&self.open[rel])
    }

    /// Apply one change.
    pub fn apply(&mut self, op: &Op) -> io::Result<()> {
        match op {
            Op::Created(p) => {
                let path = self.target(p)?;
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                self.open.insert(p.clone(), File::create(&path)?);
            }
            Op::Wrote {
                path,
                offset,
                bytes,
            } => self.file(path)?.write_all_at(bytes, *offset)?,
            Op::SetLen { path, len } => self.file(path)?.set_len(*len)?,
            Op::Renamed { from, to } => {
                let (f, t) = (self.target(from)?, self.target(to)?);
                if let Some(dir) = t.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                std::fs::rename(&f, &t)?;
                self.open.remove(to);
                if let Some(file) = self.open.remove(from) {
                    self.open.insert(to.clone(), file);
                }
            }
            Op::Deleted(p) => {
                self.open.remove(p);
                match std::fs::remove_file(self.target(p)?) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            Op::Synced(p) => {
                if self.sync {
                    if let Ok(f) = self.file(p) {
                        f.sync_data()?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Apply changes in order; stops at the first that fails.
    pub fn apply_all<'a>(&mut self, ops: impl IntoIterator<Item = &'a Op>) -> io::Result<()> {
        for op in ops {
            self.apply(op)
                .map_err(|e| io::Error::new(e.kind(), format!("replaying {:?}: {e}", short(op))))?;
        }
        Ok(())
    }
}

/// An op for error messages: without its bytes.
fn short(op: &Op) -> String {
    match op {
        Op::Wrote {
            path,
            offset,
            bytes,
        } => format!(
            "Wrote {} bytes at {offset} of {}",
            bytes.len(),
            path.display()
        ),
        other => format!("{other:?}"),
    }
}
