//! Durable definitions: vhosts, users, permissions, durable exchanges, queues
//! and bindings, as an append-only log of operations.
//!
//! Each record is `[u32 len][u32 crc32][JSON op]`. At start the log is
//! replayed (a torn or corrupt tail is dropped) and rewritten compactly as a
//! new file that atomically replaces the old one. Every change is appended and
//! fdatasync'ed before the client gets its -ok, so a declare-ok means durable.

use amq_protocol::types::FieldTable;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

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
}

pub struct DefinitionsLog {
    path: PathBuf,
    file: File,
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

    /// Write `ops` (the compacted state) as the new log, atomically.
    pub fn rewrite(dir: &Path, ops: &[DefOp]) -> io::Result<DefinitionsLog> {
        std::fs::create_dir_all(dir)?;
        let tmp = dir.join("definitions.log.tmp");
        let mut buf = MAGIC.to_vec();
        for op in ops {
            encode(&mut buf, op);
        }
        {
            let mut f = File::create(&tmp)?;
            f.write_all(&buf)?;
            f.sync_all()?;
        }
        let path = dir.join(FILE_NAME);
        std::fs::rename(&tmp, &path)?;
        File::open(dir)?.sync_all()?;
        let file = std::fs::OpenOptions::new().append(true).open(&path)?;
        Ok(DefinitionsLog {
            path,
            file,
            ops_since_compaction: 0,
        })
    }

    pub fn append(&mut self, op: &DefOp) -> io::Result<()> {
        let mut buf = vec![];
        encode(&mut buf, op);
        self.file.write_all(&buf)?;
        self.file.sync_data()?;
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

    #[test]
    fn round_trip_and_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let mut log =
            DefinitionsLog::rewrite(dir.path(), &[DefOp::AddVhost { name: "/".into() }]).unwrap();
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
