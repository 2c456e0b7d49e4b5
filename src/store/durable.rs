//! The one gate for durable writes: [`Durable`] owns the data directory's
//! [`StoreIo`] and the replication [`Observer`], and every file under the
//! data directory that holds state (segments, ack logs, the definitions log,
//! delay-index runs, dedup logs) is created, written, cut, renamed, synced
//! and removed through it, or through a [`DurableFile`] it handed out.
//!
//! Contract: each change goes to `StoreIo` first and, once it succeeded, is
//! reported to the observer (if any) with the path relative to the data
//! directory, so that replaying the reports rebuilds the directory (see
//! [`super::replica`]). Segment records are the one write that does not pass
//! here: they are copied into the memory map by `Segment::append`, which
//! reports them itself (one branch when there is no observer). After
//! [`Durable::close`] (store shutdown) every change fails: another broker may
//! own the directory by then.

use super::io::StoreIo;
use super::replica::Observer;
use std::fs::File;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub struct Durable {
    root: PathBuf,
    io: Arc<dyn StoreIo>,
    obs: Option<Arc<dyn Observer>>,
    closed: AtomicBool,
}

impl Durable {
    /// The gate for the data directory `root`; the observer is the one `io`
    /// hands out.
    pub fn new(root: &Path, io: Arc<dyn StoreIo>) -> Durable {
        Durable {
            root: root.to_owned(),
            obs: io.observer(),
            io,
            closed: AtomicBool::new(false),
        }
    }

    /// The data directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn io(&self) -> &dyn StoreIo {
        self.io.as_ref()
    }

    pub fn observer(&self) -> Option<&Arc<dyn Observer>> {
        self.obs.as_ref()
    }

    /// From now on every change fails (the store shut down).
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    fn check_open(&self) -> io::Result<()> {
        if self.is_closed() {
            return Err(io::Error::other("the store is shut down"));
        }
        Ok(())
    }

    /// `path` (absolute, or relative to the working directory as data-dir
    /// paths are built) as a path relative to the data directory; `None` if
    /// it is not inside it. Lexical: `..` is resolved without the filesystem.
    pub fn relative(&self, path: &Path) -> Option<PathBuf> {
        let root = normalize(&self.root);
        let p = normalize(path);
        let rel = p.strip_prefix(&root).ok()?;
        (!rel.as_os_str().is_empty()).then(|| rel.to_owned())
    }

    /// The path of `rel` (relative to the data directory).
    pub fn path(&self, rel: &Path) -> PathBuf {
        debug_assert!(rel.is_relative(), "{} is not relative", rel.display());
        self.root.join(rel)
    }

    fn parent_dir(&self, rel: &Path) -> io::Result<()> {
        if let Some(dir) = self.path(rel).parent() {
            std::fs::create_dir_all(dir)?;
        }
        Ok(())
    }

    /// Create a segment file of `len` bytes, preallocated (zeros).
    pub fn create_allocated(&self, rel: &Path, len: u64) -> io::Result<File> {
        self.check_open()?;
        let f = self.io.create_allocated(&self.path(rel), len)?;
        if let Some(o) = &self.obs {
            o.created(rel);
            o.set_len(rel, len);
        }
        Ok(f)
    }

    /// Create `rel` empty (cutting what was there) for appending.
    pub fn create(self: &Arc<Self>, rel: &Path) -> io::Result<DurableFile> {
        self.check_open()?;
        self.parent_dir(rel)?;
        let file = self.io.create(&self.path(rel))?;
        if let Some(o) = &self.obs {
            o.created(rel);
        }
        Ok(DurableFile {
            files: self.clone(),
            rel: rel.to_owned(),
            file,
            len: 0,
        })
    }

    /// Open `rel` for appending, creating it (empty) if missing.
    pub fn open_append(self: &Arc<Self>, rel: &Path) -> io::Result<DurableFile> {
        self.check_open()?;
        self.parent_dir(rel)?;
        let path = self.path(rel);
        let existed = path.exists();
        let file = self.io.open_append(&path)?;
        let len = file.metadata()?.len();
        if !existed {
            if let Some(o) = &self.obs {
                o.created(rel);
            }
        }
        Ok(DurableFile {
            files: self.clone(),
            rel: rel.to_owned(),
            file,
            len,
        })
    }

    /// Replace `rel` with `bytes` atomically: write `<rel>.tmp`, optionally
    /// sync it, rename it over `rel`, and (when syncing) sync the directory.
    pub fn replace(self: &Arc<Self>, rel: &Path, bytes: &[u8], sync: bool) -> io::Result<()> {
        let mut tmp_name = rel.as_os_str().to_owned();
        tmp_name.push(".tmp");
        let tmp = PathBuf::from(tmp_name);
        {
            let mut f = self.create(&tmp)?;
            f.append(bytes)?;
            if sync {
                f.sync()?;
            }
        }
        self.rename(&tmp, rel)?;
        if sync {
            let dir = self.path(rel);
            let dir = dir.parent().unwrap_or(&self.root);
            if let Some(o) = &self.obs {
                o.syncing(rel);
            }
            self.io.sync_dir(dir)?;
            if let Some(o) = &self.obs {
                o.synced(rel)?;
            }
        }
        Ok(())
    }

    pub fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.check_open()?;
        self.io.rename(&self.path(from), &self.path(to))?;
        if let Some(o) = &self.obs {
            o.renamed(from, to);
        }
        Ok(())
    }

    /// Remove `rel`. `Ok(false)` if it was not there.
    pub fn remove(&self, rel: &Path) -> io::Result<bool> {
        self.check_open()?;
        match self.io.remove(&self.path(rel)) {
            Ok(()) => {
                if let Some(o) = &self.obs {
                    o.deleted(rel);
                }
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Remove every file below the directory `rel`, then the directories.
    pub fn remove_dir_all(&self, rel: &Path) -> io::Result<()> {
        self.check_open()?;
        let entries = match std::fs::read_dir(self.path(rel)) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        for e in entries {
            let e = e?;
            let child = rel.join(e.file_name());
            if e.file_type()?.is_dir() {
                self.remove_dir_all(&child)?;
            } else {
                self.remove(&child)?;
            }
        }
        match std::fs::remove_dir(self.path(rel)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Cut (or extend) the open file `rel` to `len` bytes.
    pub fn set_len(&self, rel: &Path, file: &File, len: u64) -> io::Result<()> {
        self.check_open()?;
        self.io.set_len(file, len)?;
        if let Some(o) = &self.obs {
            o.set_len(rel, len);
        }
        Ok(())
    }

    /// fdatasync the open file `rel`.
    pub fn sync(&self, rel: &Path, file: &File) -> io::Result<()> {
        if let Some(o) = &self.obs {
            o.syncing(rel);
        }
        self.io.sync(file)?;
        if let Some(o) = &self.obs {
            o.synced(rel)?;
        }
        Ok(())
    }
}

/// An append-only file under the data directory whose every change is
/// reported (see [`Durable`]). Keeps its length, so each append is reported
/// at its offset.
pub struct DurableFile {
    files: Arc<Durable>,
    rel: PathBuf,
    file: File,
    len: u64,
}

impl DurableFile {
    /// Append `bytes`. After a failed write, what reached the file anyway
    /// (a short write) is reported too.
    pub fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.files.check_open()?;
        let at = self.len;
        let r = self.files.io.append(&self.file, bytes);
        let n = match &r {
            Ok(()) => bytes.len() as u64,
            Err(_) => self
                .file
                .metadata()
                .map(|m| m.len().saturating_sub(at).min(bytes.len() as u64))
                .unwrap_or(0),
        };
        if n > 0 {
            self.len = at + n;
            if let Some(o) = &self.files.obs {
                o.wrote(&self.rel, at, &bytes[..n as usize]);
            }
        }
        r
    }

    /// fdatasync.
    pub fn sync(&self) -> io::Result<()> {
        self.files.sync(&self.rel, &self.file)
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Relative to the data directory.
    pub fn rel_path(&self) -> &Path {
        &self.rel
    }

    pub fn path(&self) -> PathBuf {
        self.files.path(&self.rel)
    }
}

/// Lexically: drop `.`, resolve `..` against the previous component.
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if matches!(out.components().next_back(), Some(Component::Normal(_))) {
                    out.pop();
                } else {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::io::RealIo;

    #[test]
    fn relative_paths() {
        let d = Durable::new(Path::new("./data"), Arc::new(RealIo));
        assert_eq!(
            d.relative(Path::new("data/msgs/../dedup/q1.log")),
            Some(PathBuf::from("dedup/q1.log"))
        );
        assert_eq!(d.relative(Path::new("other/x")), None);
        assert_eq!(d.relative(Path::new("data")), None);
        let d = Durable::new(Path::new("/tmp/a/b"), Arc::new(RealIo));
        assert_eq!(
            d.relative(Path::new("/tmp/a/b/delayed/x3")),
            Some(PathBuf::from("delayed/x3"))
        );
    }
}
