//! Message deduplication as LavinMQ and RabbitMQ's message-deduplication
//! plugin do it, on queues and exchanges: arguments x-message-deduplication,
//! x-cache-size, x-cache-ttl (ms) and x-deduplication-header (the name of the
//! header holding the key; default `x-deduplication-header`). A message's
//! own `x-cache-ttl` header (ms) overrides the cache TTL for its key.
//!
//! Lepus extension: a message without the key header is keyed by its
//! message-id property, if it has one (LavinMQ and the plugin never treat
//! it as a duplicate).
//!
//! A bounded cache of recently seen ids. For durable queues and exchanges the
//! accepted ids are appended to a small log (`data/dedup/*.log`) that is read
//! back at start, so the cache survives a restart; the log is rewritten when
//! it holds twice the cache size.
//!
//! Replication seam: the logs are created, appended to, rewritten and removed
//! only through the store's [`Durable`] gate (never `std::fs`), so a
//! replication observer sees every byte of them. They are not fsynced.

use crate::protocol::props;
use crate::store::durable::{Durable, DurableFile};
use amq_protocol::types::{AMQPValue, FieldTable};
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A queue's or exchange's deduplication cache: from its arguments (set
/// once), or from a policy (replaced when the policies change). Reading it
/// on the publish path is one relaxed load while there is none.
#[derive(Default)]
pub struct DedupSlot {
    on: std::sync::atomic::AtomicBool,
    cache: parking_lot::RwLock<Option<Arc<Dedup>>>,
    /// From the arguments: a policy never replaces it.
    declared: bool,
}

impl DedupSlot {
    pub fn new(d: Option<Dedup>) -> Self {
        DedupSlot {
            on: std::sync::atomic::AtomicBool::new(d.is_some()),
            declared: d.is_some(),
            cache: parking_lot::RwLock::new(d.map(Arc::new)),
        }
    }

    pub fn get(&self) -> Option<Arc<Dedup>> {
        if !self.on.load(std::sync::atomic::Ordering::Acquire) {
            return None;
        }
        self.cache.read().clone()
    }

    /// Whether the arguments asked for deduplication (a policy then does not apply).
    pub fn declared(&self) -> bool {
        self.declared
    }

    /// Put a policy's cache in place (or none); the old one is returned, to
    /// be forgotten by the caller.
    pub fn replace(&self, d: Option<Dedup>) -> Option<Arc<Dedup>> {
        let mut c = self.cache.write();
        self.on
            .store(d.is_some(), std::sync::atomic::Ordering::Release);
        std::mem::replace(&mut *c, d.map(Arc::new))
    }
}

/// The `x-` arguments that the lepus-only policy keys `message-deduplication`,
/// `cache-size`, `cache-ttl` and `deduplication-header` stand for.
pub fn args_from_policy(def: &serde_json::Map<String, serde_json::Value>) -> Option<FieldTable> {
    if def.get("message-deduplication").and_then(|v| v.as_bool()) != Some(true) {
        return None;
    }
    let mut t = FieldTable::default();
    t.insert("x-message-deduplication".into(), AMQPValue::Boolean(true));
    if let Some(n) = def.get("cache-size").and_then(|v| v.as_i64()) {
        t.insert("x-cache-size".into(), AMQPValue::LongLongInt(n));
    }
    if let Some(n) = def.get("cache-ttl").and_then(|v| v.as_i64()) {
        t.insert("x-cache-ttl".into(), AMQPValue::LongLongInt(n));
    }
    if let Some(h) = def.get("deduplication-header").and_then(|v| v.as_str()) {
        t.insert(
            "x-deduplication-header".into(),
            AMQPValue::LongString(h.into()),
        );
    }
    Some(t)
}

/// The logs' directory, inside the data directory.
pub const DIR: &str = "dedup";

#[derive(Clone, Debug, PartialEq)]
pub struct DedupConfig {
    pub cache_size: usize,
    pub ttl_ms: Option<u64>,
    /// The header holding the key (the `x-deduplication-header` argument).
    pub header: String,
}

impl DedupConfig {
    /// The configuration the arguments ask for, if they ask for deduplication.
    pub fn from_args(args: &FieldTable) -> Option<DedupConfig> {
        if crate::broker::args::get_bool(args, "x-message-deduplication") != Some(true) {
            return None;
        }
        Some(DedupConfig {
            cache_size: crate::broker::args::get_int(args, "x-cache-size")
                .filter(|n| *n > 0)
                .map(|n| n as usize)
                .unwrap_or(10_000),
            ttl_ms: crate::broker::args::get_int(args, "x-cache-ttl")
                .filter(|n| *n > 0)
                .map(|n| n as u64),
            header: crate::broker::args::get_str(args, "x-deduplication-header")
                .unwrap_or_else(|| DEFAULT_HEADER.to_owned()),
        })
    }
}

impl DedupSlot {
    /// Follow a policy's deduplication keys (unless the arguments set it):
    /// a new or changed configuration starts a new cache, one that went
    /// away is forgotten (its log removed).
    pub fn apply_policy(
        &self,
        def: &serde_json::Map<String, serde_json::Value>,
        log_path: Option<PathBuf>,
        files: &Arc<Durable>,
    ) {
        if self.declared {
            return;
        }
        let want = args_from_policy(def);
        let cur = self.get();
        let want_cfg = want.as_ref().and_then(DedupConfig::from_args);
        if cur.as_ref().map(|d| &d.config) == want_cfg.as_ref() {
            return;
        }
        if let Some(old) = self.replace(None) {
            old.forget();
        }
        if let Some(t) = want {
            self.replace(Dedup::from_args(&t, log_path, files));
        }
    }
}

/// The header that holds a message's key unless an argument names another.
pub const DEFAULT_HEADER: &str = "x-deduplication-header";

struct Cache {
    seen: HashMap<Vec<u8>, u64>,
    order: VecDeque<(Vec<u8>, u64)>,
    log: Option<DurableFile>,
    logged: usize,
    /// The log was removed (its queue or exchange is gone): never recreate it.
    forgotten: bool,
}

pub struct Dedup {
    pub config: DedupConfig,
    cache: Mutex<Cache>,
    /// The log (relative to the data directory) and the gate it is written
    /// through; `None` for a transient queue or exchange.
    log: Option<(Arc<Durable>, PathBuf)>,
}

use crate::clock::now_ms;

impl Dedup {
    /// `log_path`, for a durable queue or exchange, is where its log lives
    /// inside the data directory of `files`.
    pub fn from_args(
        args: &FieldTable,
        log_path: Option<PathBuf>,
        files: &Arc<Durable>,
    ) -> Option<Dedup> {
        let config = DedupConfig::from_args(args)?;
        let log = log_path.and_then(|p| match files.relative(&p) {
            Some(rel) => Some((files.clone(), rel)),
            None => {
                tracing::error!(path = %p.display(), "deduplication log outside the data dir: not kept");
                None
            }
        });
        let d = Dedup {
            config,
            cache: Mutex::new(Cache {
                seen: HashMap::new(),
                order: VecDeque::new(),
                log: None,
                logged: 0,
                forgotten: false,
            }),
            log,
        };
        d.load();
        Some(d)
    }

    /// The deduplication key of a message (the key header's value, else
    /// its message-id) and its own `x-cache-ttl` header, if positive.
    pub fn key(&self, header: &[u8]) -> Option<(Vec<u8>, Option<u64>)> {
        let peek = props::peek(header)?;
        let headers = peek
            .headers
            .and_then(|_| crate::protocol::props::full_headers(header));
        let from_header = headers
            .as_ref()
            .and_then(|h| h.inner().get(self.config.header.as_str()))
            .map(|v| match v {
                AMQPValue::LongString(s) => s.as_bytes().to_vec(),
                AMQPValue::ShortString(s) => s.as_str().as_bytes().to_vec(),
                other => crate::broker::args::show(other).into_bytes(),
            });
        let key = from_header.or_else(|| peek.message_id.map(|m| m.as_bytes().to_vec()))?;
        let ttl = headers
            .as_ref()
            .and_then(|h| crate::broker::args::get_int(h, "x-cache-ttl"))
            .filter(|t| *t > 0)
            .map(|t| t as u64);
        Some((key, ttl))
    }

    /// True if the message was seen already (and is to be dropped); else
    /// remembers it, for its own `x-cache-ttl` or the cache's.
    pub fn is_duplicate(&self, header: &[u8]) -> bool {
        let Some((k, ttl)) = self.key(header) else {
            return false;
        };
        let now = now_ms();
        let mut c = self.cache.lock();
        if let Some(&exp) = c.seen.get(&k) {
            if exp > now {
                return true;
            }
        }
        let exp = ttl
            .or(self.config.ttl_ms)
            .map(|t| now.saturating_add(t))
            .unwrap_or(u64::MAX);
        self.insert(&mut c, k.clone(), exp);
        if self.log.is_some() {
            self.append_log(&mut c, &k, exp);
        }
        false
    }

    /// Forget a message remembered by [`Self::is_duplicate`] (its publish
    /// was refused after all). Its log entry stays: if the broker restarts
    /// before the publisher retries, the retry still counts as a duplicate
    /// until the entry's cache TTL (a narrow case, left as is).
    pub fn forget_message(&self, header: &[u8]) {
        if let Some((k, _)) = self.key(header) {
            self.cache.lock().seen.remove(&k);
        }
    }

    fn insert(&self, c: &mut Cache, k: Vec<u8>, exp: u64) {
        c.seen.insert(k.clone(), exp);
        c.order.push_back((k, exp));
        while c.order.len() > self.config.cache_size {
            let (old, e) = c.order.pop_front().unwrap();
            if c.seen.get(&old) == Some(&e) {
                c.seen.remove(&old);
            }
        }
    }

    fn append_log(&self, c: &mut Cache, k: &[u8], exp: u64) {
        let Some((files, rel)) = &self.log else {
            return;
        };
        if c.forgotten {
            return;
        }
        if c.logged >= 2 * self.config.cache_size {
            // Rewrite with what the cache holds now.
            let mut buf = vec![];
            for (k, e) in &c.order {
                encode(&mut buf, k, *e);
            }
            match files.replace(rel, &buf, false) {
                Ok(()) => {
                    c.log = None;
                    c.logged = c.order.len();
                    return;
                }
                Err(e) => tracing::warn!(error = %e, "cannot rewrite deduplication log"),
            }
        }
        if c.log.is_none() {
            c.log = files
                .open_append(rel)
                .map_err(|e| tracing::warn!(error = %e, "cannot open deduplication log"))
                .ok();
        }
        if let Some(f) = c.log.as_mut() {
            let mut buf = vec![];
            encode(&mut buf, k, exp);
            if let Err(e) = f.append(&buf) {
                tracing::warn!(error = %e, "cannot write deduplication log");
            }
            c.logged += 1;
        }
    }

    fn load(&self) {
        let Some((files, rel)) = &self.log else {
            return;
        };
        let Ok(bytes) = std::fs::read(files.path(rel)) else {
            return;
        };
        let now = now_ms();
        let mut c = self.cache.lock();
        let mut at = 0;
        while at + 10 <= bytes.len() {
            let n = u16::from_le_bytes([bytes[at], bytes[at + 1]]) as usize;
            let Some(k) = bytes.get(at + 2..at + 2 + n) else {
                break;
            };
            let Some(e) = bytes.get(at + 2 + n..at + 10 + n) else {
                break;
            };
            let exp = u64::from_le_bytes(e.try_into().unwrap());
            if exp > now {
                self.insert(&mut c, k.to_vec(), exp);
            }
            at += 10 + n;
            c.logged += 1;
        }
    }

    /// Remove the log (the queue or exchange was deleted). Under the cache
    /// lock, so a publish racing with the delete does not recreate it.
    pub fn forget(&self) {
        let Some((files, rel)) = &self.log else {
            return;
        };
        let mut c = self.cache.lock();
        c.forgotten = true;
        c.log = None;
        if let Err(e) = files.remove(rel) {
            tracing::warn!(error = %e, "cannot remove deduplication log");
        }
    }
}

/// Remove the logs of queues that no longer exist (deleted while the broker
/// was down, or with their vhost). Called at start.
pub fn remove_stale_logs(files: &Durable, live: &HashSet<u32>) {
    let Ok(entries) = std::fs::read_dir(files.path(Path::new(DIR))) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if let Some(id) = name
            .strip_prefix('q')
            .and_then(|n| n.strip_suffix(".log"))
            .and_then(|n| n.parse::<u32>().ok())
        {
            if !live.contains(&id) {
                if let Err(e) = files.remove(&Path::new(DIR).join(&name)) {
                    tracing::warn!(error = %e, "cannot remove stale deduplication log");
                }
            }
        }
    }
}

fn encode(buf: &mut Vec<u8>, k: &[u8], exp: u64) {
    let k = &k[..k.len().min(u16::MAX as usize)];
    buf.extend_from_slice(&(k.len() as u16).to_le_bytes());
    buf.extend_from_slice(k);
    buf.extend_from_slice(&exp.to_le_bytes());
}
