//! Durable definitions: vhosts, users, permissions, durable exchanges, queues
//! and bindings, policies and operator policies, vhost and user limits, as an
//! append-only log of operations.
//!
//! Each record is `[u32 len][u32 crc32][JSON op]`. At start the log is
//! replayed (a torn or corrupt tail is dropped) and rewritten compactly as a
//! new file that atomically replaces the old one. Every change is appended and
//! fdatasync'ed before the client gets its -ok, so a declare-ok means durable.
//!
//! Replication seam: the log is written only through the store's
//! [`Durable`] gate (a [`DurableFile`] for appends, [`Durable::replace`] for
//! the rewrite), so an observer sees each record before its fdatasync.

use super::durable::{Durable, DurableFile};
use amq_protocol::types::FieldTable;
use serde::{Deserialize, Serialize};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum DefOp {
    AddVhost {
        name: String,
    },
    DeleteVhost {
        name: String,
    },
    PutUser {
        name: String,
        password_hash: String,
        tags: Vec<String>,
    },
    DeleteUser {
        name: String,
    },
    SetPermissions {
        user: String,
        vhost: String,
        configure: String,
        write: String,
        read: String,
    },
    ClearPermissions {
        user: String,
        vhost: String,
    },
    DeclareExchange {
        vhost: String,
        name: String,
        kind: String,
        auto_delete: bool,
        internal: bool,
        arguments: FieldTable,
        /// Store id of a delayed exchange (its pending messages name it).
        #[serde(default)]
        id: u32,
    },
    DeleteExchange {
        vhost: String,
        name: String,
    },
    DeclareQueue {
        vhost: String,
        name: String,
        id: u32,
        auto_delete: bool,
        arguments: FieldTable,
    },
    DeleteQueue {
        vhost: String,
        name: String,
    },
    Bind {
        vhost: String,
        source: String,
        destination: String,
        /// "queue" or "exchange"
        destination_type: String,
        routing_key: String,
        arguments: FieldTable,
    },
    Unbind {
        vhost: String,
        source: String,
        destination: String,
        destination_type: String,
        routing_key: String,
        arguments: FieldTable,
    },
    /// A policy (or, with `operator`, an operator policy) set or replaced.
    SetPolicy {
        vhost: String,
        name: String,
        #[serde(default)]
        operator: bool,
        pattern: String,
        apply_to: String,
        /// The definition as given (a JSON object; validated before logging).
        definition: serde_json::Value,
        /// A JSON number, as given.
        priority: serde_json::Value,
    },
    ClearPolicy {
        vhost: String,
        name: String,
        #[serde(default)]
        operator: bool,
    },
    /// A vhost's limits, whole (`max-connections`, `max-queues`); empty clears them.
    SetVhostLimits {
        vhost: String,
        limits: std::collections::BTreeMap<String, i64>,
    },
    /// A user's limits, whole (`max-connections`, `max-channels`); empty clears them.
    SetUserLimits {
        user: String,
        limits: std::collections::BTreeMap<String, i64>,
    },
}

pub struct DefinitionsLog {
    path: PathBuf,
    file: DurableFile,
    ops_since_compaction: usize,
}

const FILE_NAME: &str = "definitions.log";
const MAGIC: &[u8; 16] = b"LEPUSDEF\x01\x00\x00\x00\x00\x00\x00\x00";

impl DefinitionsLog {
    /// Read every op in the log (tolerating a torn tail).
    pub fn read_all(dir: &Path) -> io::Result<Vec<DefOp>> {
        let path = dir.join(FILE_NAME);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(e),
        };
        if bytes.len() < MAGIC.len() || bytes[..8] != MAGIC[..8] {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is not a lepus definitions log", path.display()),
            ));
        }
        let mut ops = vec![];
        let mut at = MAGIC.len();
        while at + 8 <= bytes.len() {
            let n = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
            let crc = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap());
            let Some(p) = bytes.get(at + 8..at + 8 + n) else {
                tracing::warn!("definitions log: torn record at the end dropped");
                break;
            };
            if crc32fast::hash(p) != crc {
                tracing::warn!("definitions log: corrupt record at the end dropped");
                break;
            }
            match serde_json::from_slice(p) {
                Ok(op) => ops.push(op),
                Err(e) => tracing::error!(error = %e, "definitions log: unreadable op skipped"),
            }
            at += 8 + n;
        }
        Ok(ops)
    }

    /// Write `ops` (the compacted state) as the new log in the data
    /// directory of `files`, atomically (`definitions.log.tmp`, synced, then
    /// renamed over the log, and the directory synced).
    pub fn rewrite(files: &Arc<Durable>, ops: &[DefOp]) -> io::Result<DefinitionsLog> {
        let mut buf = MAGIC.to_vec();
        for op in ops {
            encode(&mut buf, op);
        }
        let rel = Path::new(FILE_NAME);
        files.replace(rel, &buf, true)?;
        let file = files.open_append(rel)?;
        Ok(DefinitionsLog {
            path: files.path(rel),
            file,
            ops_since_compaction: 0,
        })
    }

    pub fn append(&mut self, op: &DefOp) -> io::Result<()> {
        let mut buf = vec![];
        encode(&mut buf, op);
        self.file.append(&buf)?;
        self.file.sync()?;
        self.ops_since_compaction += 1;
        Ok(())
    }

    pub fn ops_since_compaction(&self) -> usize {
        self.ops_since_compaction
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn encode(buf: &mut Vec<u8>, op: &DefOp) {
    let json = serde_json::to_vec(op).expect("definitions serialize");
    buf.extend_from_slice(&(json.len() as u32).to_le_bytes());
    buf.extend_from_slice(&crc32fast::hash(&json).to_le_bytes());
    buf.extend_from_slice(&json);
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::io::Write;

    #[test]
    fn round_trip_and_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let files = Arc::new(Durable::new(dir.path(), Arc::new(crate::store::io::RealIo)));
        let mut log =
            DefinitionsLog::rewrite(&files, &[DefOp::AddVhost { name: "/".into() }]).unwrap();
        let mut args = FieldTable::default();
        args.insert(
            "x-max-length".into(),
            amq_protocol::types::AMQPValue::LongInt(5),
        );
        let q = DefOp::DeclareQueue {
            vhost: "/".into(),
            name: "q".into(),
            id: 3,
            auto_delete: false,
            arguments: args,
        };
        log.append(&q).unwrap();
        let path = log.path().to_path_buf();
        drop(log);
        // a torn write at the end
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(&[50, 0, 0, 0, 1, 2]).unwrap();
        let ops = DefinitionsLog::read_all(dir.path()).unwrap();
        assert_eq!(ops.len(), 2);
        assert_eq!(ops[1], q);
    }
}
