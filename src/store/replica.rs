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
    /// `path` is about to be synced (fdatasync or, for a rename, the
    /// directory). A replicator can ask its followers to sync now, so that
    /// their disks and this one work at the same time; `synced` follows.
    fn syncing(&self, _path: &Path) {}
    /// What was written to `path` so far is on disk (fdatasync returned; for
    /// a rename, the directory was synced too). An error means the write is
    /// not durable where it must be (a replicator that cannot reach enough
    /// followers, or lost its leadership): the store treats it as a failed
    /// sync, so the publishes it covers are nacked, never confirmed.
    fn synced(&self, path: &Path) -> io::Result<()>;
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
    fn synced(&self, path: &Path) -> io::Result<()> {
        self.push(Op::Synced(path.to_owned()));
        Ok(())
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
    /// fdatasync on `synced` (a test may skip it). A follower turns it off
    /// and calls [`Mirror::sync_dirty`] once per batch instead.
    pub sync: bool,
    /// Skip changes to files that are not there (a write, cut, rename or sync
    /// of a missing file). A follower replays the changes made while it
    /// copied the primary's files leniently: the copy may already hold their
    /// result (a file written, then renamed away, before it was copied).
    pub lenient: bool,
    /// Files written since the last [`Mirror::sync_dirty`].
    dirty: std::collections::HashSet<PathBuf>,
    /// Directories whose entries changed since then.
    dirty_dirs: std::collections::HashSet<PathBuf>,
}

impl Mirror {
    pub fn new(root: &Path) -> io::Result<Mirror> {
        std::fs::create_dir_all(root)?;
        Ok(Mirror {
            root: root.to_owned(),
            open: HashMap::new(),
            sync: true,
            lenient: false,
            dirty: Default::default(),
            dirty_dirs: Default::default(),
        })
    }

    /// fdatasync every file written, and fsync every directory whose entries
    /// changed, since the last call: what was applied so far is on disk.
    pub fn sync_dirty(&mut self) -> io::Result<()> {
        for rel in std::mem::take(&mut self.dirty) {
            match self.file(&rel) {
                Ok(f) => f.sync_data()?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        for dir in std::mem::take(&mut self.dirty_dirs) {
            match File::open(&dir) {
                Ok(d) => d.sync_all()?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn dir_changed(&mut self, path: &Path) {
        if let Some(d) = path.parent() {
            self.dirty_dirs.insert(d.to_owned());
        }
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
        match self.apply_strict(op) {
            Err(e) if self.lenient && e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r,
        }
    }

    fn apply_strict(&mut self, op: &Op) -> io::Result<()> {
        match op {
            Op::Created(p) => {
                let path = self.target(p)?;
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                self.open.insert(p.clone(), File::create(&path)?);
                self.dirty.insert(p.clone());
                self.dir_changed(&path);
            }
            Op::Wrote {
                path,
                offset,
                bytes,
            } => {
                self.file(path)?.write_all_at(bytes, *offset)?;
                self.dirty.insert(path.clone());
            }
            Op::SetLen { path, len } => {
                self.file(path)?.set_len(*len)?;
                self.dirty.insert(path.clone());
            }
            Op::Renamed { from, to } => {
                let (f, t) = (self.target(from)?, self.target(to)?);
                if let Some(dir) = t.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                std::fs::rename(&f, &t)?;
                self.dir_changed(&t);
                if self.dirty.remove(from) {
                    self.dirty.insert(to.clone());
                }
                self.open.remove(to);
                if let Some(file) = self.open.remove(from) {
                    self.open.insert(to.clone(), file);
                }
            }
            Op::Deleted(p) => {
                self.open.remove(p);
                self.dirty.remove(p);
                let path = self.target(p)?;
                match std::fs::remove_file(&path) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => self.dir_changed(&path),
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

/// Every data file under `root`, relative to it and sorted. `lepus.lock`
/// and `lepus.node` (the cluster's marker) belong to the node, not to the
/// data, and are skipped.
pub fn data_files(root: &Path) -> io::Result<Vec<PathBuf>> {
    fn walk(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
        let entries = match std::fs::read_dir(root.join(rel)) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        for e in entries {
            let e = e?;
            let child = rel.join(e.file_name());
            if e.file_type()?.is_dir() {
                walk(root, &child, out)?;
            } else if child != Path::new("lepus.lock") && child != Path::new("lepus.node") {
                out.push(child);
            }
        }
        Ok(())
    }
    let mut out = vec![];
    walk(root, Path::new(""), &mut out)?;
    out.sort();
    Ok(out)
}

/// How two data directories differ, file by file (`lepus.lock` is not data
/// and is skipped): files only on one side, and files whose bytes differ.
/// Empty when the replica reproduces the primary.
pub fn differences(primary: &Path, replica: &Path) -> io::Result<Vec<String>> {
    let a = data_files(primary)?;
    let b = data_files(replica)?;
    let mut out = vec![];
    for p in &b {
        if a.binary_search(p).is_err() {
            out.push(format!("{}: only in the replica", p.display()));
        }
    }
    for p in &a {
        if b.binary_search(p).is_err() {
            out.push(format!("{}: missing in the replica", p.display()));
            continue;
        }
        let x = std::fs::read(primary.join(p))?;
        let y = std::fs::read(replica.join(p))?;
        if x != y {
            let at = x.iter().zip(&y).position(|(i, j)| i != j);
            out.push(format!(
                "{}: {} bytes, replica {} bytes, first difference at {}",
                p.display(),
                x.len(),
                y.len(),
                at.map_or("the end of the shorter".to_string(), |i| i.to_string())
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::definitions::{DefOp, DefinitionsLog};
    use crate::store::io::{FaultyIo, Observed, RealIo, StoreIo};
    use crate::store::{encode_prefix, MsgPos, RecoveredQueues, Store};
    use std::collections::HashSet;
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    const SEG: u32 = 256 * 1024;

    fn open(dir: &Path, io: &Arc<dyn StoreIo>) -> (Arc<Store>, RecoveredQueues) {
        let live: HashSet<u32> = [1, 2].into();
        Store::open(dir, io.clone(), SEG, 0, &live).unwrap()
    }

    fn put(store: &Store, queues: &[u32], body: &[u8]) -> MsgPos {
        let mut prefix = vec![];
        encode_prefix(&mut prefix, true, 1, queues, "ex", "rk", b"hdr");
        let (pos, _) = store
            .append(
                &prefix,
                body,
                queues.len().max(1) as u64,
                !queues.is_empty(),
            )
            .unwrap();
        pos.with_logged(!queues.is_empty())
    }

    fn queue_decl(name: &str, id: u32) -> DefOp {
        DefOp::DeclareQueue {
            vhost: "/".into(),
            name: name.into(),
            id,
            auto_delete: false,
            arguments: Default::default(),
        }
    }

    /// Per queue: (delivered, body) of each message, in order.
    type Contents = Vec<(u32, Vec<(bool, Vec<u8>)>)>;

    /// What a store recovered, comparable across directories.
    fn contents(s: &Store, rec: &RecoveredQueues) -> Contents {
        let mut out: Vec<_> = rec
            .iter()
            .map(|(q, msgs)| {
                let m = msgs
                    .iter()
                    .map(|r| {
                        let body = s.with_message(r.pos, |m| m.body.to_vec()).unwrap();
                        (r.delivered, body)
                    })
                    .collect();
                (*q, m)
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn replaying_what_the_store_reports_rebuilds_its_directory() {
        let primary = tempfile::tempdir().unwrap();
        let replica = tempfile::tempdir().unwrap();
        let rec = Arc::new(Recorder::default());
        let io: Arc<dyn StoreIo> = Arc::new(Observed::new(RealIo, rec.clone()));

        let (s, _) = open(primary.path(), &io);
        let mut defs =
            DefinitionsLog::rewrite(s.files(), &[DefOp::AddVhost { name: "/".into() }]).unwrap();
        defs.append(&queue_decl("a", 1)).unwrap();
        defs.append(&queue_decl("b", 2)).unwrap();
        // Several segments: rolled (cut to size), some emptied (deleted).
        let body: Vec<u8> = (0..40 * 1024).map(|i| (i % 251) as u8).collect();
        let ps: Vec<MsgPos> = (0..30)
            .map(|i| put(&s, if i % 2 == 0 { &[1, 2] } else { &[1] }, &body))
            .collect();
        put(&s, &[], b"transient");
        s.mark_delivered(ps[12], 1);
        s.mark_delivered(ps[14], 2);
        for p in &ps[..10] {
            s.release(*p, 1);
        }
        for p in ps[..10].iter().step_by(2) {
            s.release(*p, 2);
        }
        s.release(ps[20], 2);
        s.flush_acks();
        s.sync_now().unwrap();
        assert!(s.segment_count() > 2);
        // A small file appended to, replaced and removed, as dedup logs are.
        let small = Path::new("dedup/q9.log");
        let mut f = s.files().open_append(small).unwrap();
        f.append(b"one").unwrap();
        f.append(b"two").unwrap();
        drop(f);
        s.files().replace(small, b"three", false).unwrap();
        s.files()
            .open_append(small)
            .unwrap()
            .append(b"four")
            .unwrap();
        s.files().remove(small).unwrap();
        s.files()
            .open_append(Path::new("dedup/q1.log"))
            .unwrap()
            .append(b"kept")
            .unwrap();
        s.shutdown();
        drop((s, defs));

        // Recovery writes too (cuts the last segment, deletes emptied ones,
        // starts a new one, rewrites the definitions): all of it reported.
        let (s, _) = open(primary.path(), &io);
        let ops = DefinitionsLog::read_all(primary.path()).unwrap();
        let mut defs = DefinitionsLog::rewrite(s.files(), &ops).unwrap();
        defs.append(&DefOp::DeleteQueue {
            vhost: "/".into(),
            name: "nothing".into(),
        })
        .unwrap();
        let more = put(&s, &[2], b"after the restart");
        s.mark_delivered(more, 2);
        s.flush_acks();
        s.shutdown();
        drop((s, defs));

        let ops = rec.take();
        let kinds = |f: fn(&Op) -> bool| ops.iter().filter(|o| f(o)).count();
        assert!(kinds(|o| matches!(o, Op::Renamed { .. })) >= 3);
        assert!(kinds(|o| matches!(o, Op::Deleted(_))) >= 2);
        assert!(kinds(|o| matches!(o, Op::SetLen { .. })) >= 4);
        assert!(kinds(|o| matches!(o, Op::Synced(_))) >= 3);
        let mut mirror = Mirror::new(replica.path()).unwrap();
        mirror.apply_all(&ops).unwrap();
        assert_eq!(
            differences(primary.path(), replica.path()).unwrap(),
            Vec::<String>::new()
        );

        // The replica recovers what the primary does.
        let real: Arc<dyn StoreIo> = Arc::new(RealIo);
        let (a, ra) = open(primary.path(), &real);
        let (b, rb) = open(replica.path(), &real);
        let (ca, cb) = (contents(&a, &ra), contents(&b, &rb));
        assert_eq!(ca.len(), 2);
        assert_eq!(ca, cb);
        assert_eq!(
            DefinitionsLog::read_all(primary.path()).unwrap(),
            DefinitionsLog::read_all(replica.path()).unwrap()
        );
        a.shutdown();
        b.shutdown();
    }

    #[test]
    fn a_failed_sync_is_not_reported_as_synced() {
        let dir = tempfile::tempdir().unwrap();
        let rec = Arc::new(Recorder::default());
        let faulty = Arc::new(Observed::new(FaultyIo::default(), rec.clone()));
        let io: Arc<dyn StoreIo> = faulty.clone();
        let (s, _) = open(dir.path(), &io);
        put(&s, &[1], b"x");
        rec.take();
        faulty.io.fail_all_syncs.store(true, Ordering::SeqCst);
        assert!(s.sync_now().is_err());
        assert!(rec.take().iter().all(|o| !matches!(o, Op::Synced(_))));
        faulty.io.fail_all_syncs.store(false, Ordering::SeqCst);
        s.sync_now().unwrap();
        assert!(rec.take().iter().any(|o| matches!(o, Op::Synced(_))));
        s.shutdown();
        // After shutdown the gate refuses every change.
        assert!(s.files().remove(Path::new("definitions.log")).is_err());
        assert!(s.files().open_append(Path::new("dedup/q1.log")).is_err());
        assert!(rec.is_empty() || rec.take().iter().all(|o| matches!(o, Op::Synced(_))));
    }
}
