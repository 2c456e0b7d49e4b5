//! Exchanges: each type answers "which destinations does this message go to".
//!
//! Bindings hold `Arc`s of their destinations, so routing needs no lookups;
//! deleting a queue or exchange removes the bindings that point at it.
//! Exchange-to-exchange bindings and alternate exchanges are followed by
//! [`crate::broker::vhost::VHost::route`], with a visited set against cycles.

use crate::broker::queue::Queue;
use amq_protocol::types::{AMQPValue, FieldTable};
use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeKind {
    Direct,
    Fanout,
    Topic,
    Headers,
    /// RabbitMQ's x-consistent-hash: one destination per message, chosen on a
    /// hash ring where each binding's key is its weight.
    ConsistentHash,
}

impl ExchangeKind {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "direct" => ExchangeKind::Direct,
            "fanout" => ExchangeKind::Fanout,
            "topic" => ExchangeKind::Topic,
            "headers" => ExchangeKind::Headers,
            "x-consistent-hash" => ExchangeKind::ConsistentHash,
            _ => return None,
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeKind::Direct => "direct",
            ExchangeKind::Fanout => "fanout",
            ExchangeKind::Topic => "topic",
            ExchangeKind::Headers => "headers",
            ExchangeKind::ConsistentHash => "x-consistent-hash",
        }
    }
}

#[derive(Clone)]
pub enum Dest {
    Queue(Arc<Queue>),
    Exchange(Arc<Exchange>),
}

impl Dest {
    pub fn name(&self) -> &str {
        match self {
            Dest::Queue(q) => &q.name,
            Dest::Exchange(e) => &e.name,
        }
    }
    pub fn kind(&self) -> &'static str {
        match self {
            Dest::Queue(_) => "queue",
            Dest::Exchange(_) => "exchange",
        }
    }
    fn same(&self, other: &Dest) -> bool {
        match (self, other) {
            (Dest::Queue(a), Dest::Queue(b)) => Arc::ptr_eq(a, b),
            (Dest::Exchange(a), Dest::Exchange(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
    pub fn is_durable(&self) -> bool {
        match self {
            Dest::Queue(q) => q.is_durable(),
            Dest::Exchange(e) => e.durable,
        }
    }
}

#[derive(Clone)]
pub struct Binding {
    pub dest: Dest,
    pub routing_key: String,
    pub arguments: FieldTable,
}

#[derive(Default)]
pub struct Bindings {
    pub all: Vec<Binding>,
    /// direct: routing key -> indexes into `all`
    direct: HashMap<String, Vec<usize>>,
    /// x-consistent-hash: buckets (indexes into `all`), `weight` buckets per
    /// binding; a message picks a bucket by jump consistent hash, as RabbitMQ's
    /// plugin does since 3.8, so shares follow the weights closely.
    buckets: Vec<usize>,
}

/// The largest x-consistent-hash weight a binding may have (buckets are
/// allocated per unit of weight).
pub const MAX_HASH_WEIGHT: u32 = 1024;

impl Bindings {
    fn reindex(&mut self, kind: ExchangeKind) {
        self.direct.clear();
        self.buckets.clear();
        for (i, b) in self.all.iter().enumerate() {
            match kind {
                ExchangeKind::Direct => self
                    .direct
                    .entry(b.routing_key.clone())
                    .or_default()
                    .push(i),
                ExchangeKind::ConsistentHash => {
                    let weight: u32 = b.routing_key.trim().parse().unwrap_or(0);
                    self.buckets
                        .extend(std::iter::repeat_n(i, weight.min(MAX_HASH_WEIGHT) as usize));
                }
                _ => {}
            }
        }
    }
}

/// Jump consistent hash (Lamping and Veach): a bucket in `0..n` for `key`;
/// adding a bucket moves only 1/n of the keys.
pub fn jump_hash(mut key: u64, n: usize) -> usize {
    let (mut b, mut j) = (-1i64, 0i64);
    while j < n as i64 {
        b = j;
        key = key.wrapping_mul(2862933555777941757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b.max(0) as usize
}

/// A stable 64-bit hash (FNV-1a with a final mix), the same on every build,
/// so a key maps to the same queue across restarts.
pub fn hash64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in data {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51afd7ed558ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ceb9fe1a85ec53);
    h ^ (h >> 33)
}

pub struct Exchange {
    pub name: String,
    /// How bindings are matched (for a delayed exchange: its x-delayed-type).
    pub kind: ExchangeKind,
    /// The declared type ("x-delayed-message" for a delayed exchange).
    pub type_name: String,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: FieldTable,
    /// The `alternate-exchange` argument, if declared with one.
    declared_alternate: Option<String>,
    /// The alternate exchange in force: the argument, else the policy's
    /// (the argument wins, as RabbitMQ's). Read only for unroutable messages.
    alternate: RwLock<Option<String>>,
    /// Which policies apply, and their merged definition.
    applied: parking_lot::Mutex<Arc<crate::broker::policy::Applied>>,
    pub bindings: RwLock<Bindings>,
    pub deleted: AtomicBool,
    /// x-message-deduplication on the exchange: duplicates are not routed.
    pub dedup: crate::broker::dedup::DedupSlot,
    /// Where a durable exchange keeps its deduplication log.
    pub dedup_log: Option<std::path::PathBuf>,
    /// Delayed delivery (x-delayed-message, or x-delayed-exchange=true).
    pub delayed: Option<crate::broker::delayed::Delayed>,
    /// x-consistent-hash: hash this header instead of the routing key...
    pub hash_header: Option<String>,
    /// ...or this property (message_id, correlation_id, timestamp, ...).
    pub hash_property: Option<String>,
}

impl Exchange {
    pub fn new(
        name: &str,
        kind: ExchangeKind,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        arguments: FieldTable,
    ) -> Self {
        let alternate = match arguments.inner().get("alternate-exchange") {
            Some(AMQPValue::LongString(s)) => {
                Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
            }
            Some(AMQPValue::ShortString(s)) => Some(s.as_str().to_owned()),
            _ => None,
        };
        let hash_header = crate::broker::args::get_str(&arguments, "hash-header");
        let hash_property = crate::broker::args::get_str(&arguments, "hash-property");
        Exchange {
            name: name.to_owned(),
            type_name: kind.as_str().to_owned(),
            kind,
            durable,
            auto_delete,
            internal,
            arguments,
            alternate: RwLock::new(alternate.clone()),
            declared_alternate: alternate,
            applied: Default::default(),
            bindings: RwLock::new(Bindings::default()),
            deleted: AtomicBool::new(false),
            dedup: Default::default(),
            dedup_log: None,
            delayed: None,
            hash_header,
            hash_property,
        }
    }

    pub fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }

    /// The alternate exchange in force (argument, else policy).
    pub fn alternate(&self) -> Option<String> {
        self.alternate.read().clone()
    }

    pub fn applied(&self) -> Arc<crate::broker::policy::Applied> {
        self.applied.lock().clone()
    }

    /// Take the policies' settings (`alternate-exchange`, the lepus-only
    /// deduplication keys) at run time.
    pub fn apply_policy(
        &self,
        applied: crate::broker::policy::Applied,
        files: &Arc<crate::store::durable::Durable>,
    ) {
        self.dedup
            .apply_policy(&applied.definition, self.dedup_log.clone(), files);
        let from_policy = applied
            .definition
            .get("alternate-exchange")
            .and_then(|v| v.as_str())
            .map(str::to_owned);
        *self.alternate.write() = self.declared_alternate.clone().or(from_policy);
        *self.applied.lock() = Arc::new(applied);
    }

    /// Add a binding; false if it already existed.
    pub fn bind(&self, dest: Dest, routing_key: &str, arguments: FieldTable) -> bool {
        let mut b = self.bindings.write();
        if b.all
            .iter()
            .any(|x| x.dest.same(&dest) && x.routing_key == routing_key && x.arguments == arguments)
        {
            return false;
        }
        b.all.push(Binding {
            dest,
            routing_key: routing_key.to_owned(),
            arguments,
        });
        b.reindex(self.kind);
        true
    }

    pub fn has_binding(&self, dest: &Dest, routing_key: &str, arguments: &FieldTable) -> bool {
        self.bindings
            .read()
            .all
            .iter()
            .any(|x| x.dest.same(dest) && x.routing_key == routing_key && &x.arguments == arguments)
    }

    /// Remove a binding; false if there was none.
    pub fn unbind(&self, dest: &Dest, routing_key: &str, arguments: &FieldTable) -> bool {
        let mut b = self.bindings.write();
        let before = b.all.len();
        b.all.retain(|x| {
            !(x.dest.same(dest) && x.routing_key == routing_key && &x.arguments == arguments)
        });
        let removed = b.all.len() != before;
        if removed {
            b.reindex(self.kind);
        }
        removed
    }

    /// Remove every binding to `dest`; returns what was removed.
    pub fn unbind_all_to(&self, dest: &Dest) -> Vec<Binding> {
        let mut b = self.bindings.write();
        let (gone, keep): (Vec<_>, Vec<_>) = b.all.drain(..).partition(|x| x.dest.same(dest));
        b.all = keep;
        b.reindex(self.kind);
        gone
    }

    pub fn has_bindings(&self) -> bool {
        !self.bindings.read().all.is_empty()
    }

    /// The destinations directly bound for this message (one hop).
    pub fn matches(
        &self,
        routing_key: &str,
        headers: Option<&FieldTable>,
        raw_header: &[u8],
        out: &mut Vec<Dest>,
    ) {
        let b = self.bindings.read();
        match self.kind {
            ExchangeKind::ConsistentHash => {
                if b.buckets.is_empty() {
                    return;
                }
                let Some(key) = self.hash_key(routing_key, headers, raw_header) else {
                    return;
                };
                let i = b.buckets[jump_hash(hash64(&key), b.buckets.len())];
                out.push(b.all[i].dest.clone());
            }
            ExchangeKind::Direct => {
                if let Some(ix) = b.direct.get(routing_key) {
                    out.extend(ix.iter().map(|&i| b.all[i].dest.clone()));
                }
            }
            ExchangeKind::Fanout => out.extend(b.all.iter().map(|x| x.dest.clone())),
            ExchangeKind::Topic => out.extend(
                b.all
                    .iter()
                    .filter(|x| topic_matches(&x.routing_key, routing_key))
                    .map(|x| x.dest.clone()),
            ),
            ExchangeKind::Headers => out.extend(
                b.all
                    .iter()
                    .filter(|x| headers_match(&x.arguments, headers))
                    .map(|x| x.dest.clone()),
            ),
        }
    }
}

impl Exchange {
    /// What x-consistent-hash hashes for this message.
    fn hash_key(
        &self,
        routing_key: &str,
        headers: Option<&FieldTable>,
        raw_header: &[u8],
    ) -> Option<Vec<u8>> {
        if let Some(h) = &self.hash_header {
            let v = headers?.inner().get(h.as_str())?;
            return Some(crate::broker::args::show(v).into_bytes());
        }
        if let Some(p) = &self.hash_property {
            let props = crate::protocol::props::full_properties(raw_header)?;
            let v = match p.as_str() {
                "message_id" => props.message_id().as_ref().map(|s| s.as_str().to_owned()),
                "correlation_id" => props
                    .correlation_id()
                    .as_ref()
                    .map(|s| s.as_str().to_owned()),
                "timestamp" => props.timestamp().map(|t| t.to_string()),
                "app_id" => props.app_id().as_ref().map(|s| s.as_str().to_owned()),
                "type" => props.kind().as_ref().map(|s| s.as_str().to_owned()),
                "user_id" => props.user_id().as_ref().map(|s| s.as_str().to_owned()),
                "reply_to" => props.reply_to().as_ref().map(|s| s.as_str().to_owned()),
                "content_type" => props.content_type().as_ref().map(|s| s.as_str().to_owned()),
                _ => None,
            }?;
            return Some(v.into_bytes());
        }
        Some(routing_key.as_bytes().to_vec())
    }
}

/// AMQP topic matching as RabbitMQ does it: words separated by '.', '*'
/// matches exactly one word, '#' zero or more words.
pub fn topic_matches(pattern: &str, key: &str) -> bool {
    // An empty routing key or pattern has zero words (RabbitMQ: `*` does not match "").
    fn words(s: &str) -> Vec<&str> {
        if s.is_empty() {
            vec![]
        } else {
            s.split('.').collect()
        }
    }
    let mut p: Vec<&str> = words(pattern);
    // "#.#" matches what "#" matches.
    p.dedup_by(|a, b| *a == "#" && *b == "#");
    let k: Vec<&str> = words(key);
    // ok[j]: the pattern words seen so far match exactly the first j key
    // words. One row per pattern word: O(pattern × key), whatever the
    // pattern (a recursive matcher is exponential in the number of '#').
    let mut ok = vec![false; k.len() + 1];
    ok[0] = true;
    for w in &p {
        let mut next = vec![false; k.len() + 1];
        match *w {
            "#" => {
                let mut any = false;
                for j in 0..=k.len() {
                    any |= ok[j];
                    next[j] = any;
                }
            }
            "*" => next[1..].copy_from_slice(&ok[..k.len()]),
            word => {
                for j in 1..=k.len() {
                    next[j] = ok[j - 1] && k[j - 1] == word;
                }
            }
        }
        ok = next;
    }
    ok[k.len()]
}

/// Headers exchange matching: x-match all (default), any, all-with-x, any-with-x.
pub fn headers_match(args: &FieldTable, headers: Option<&FieldTable>) -> bool {
    let mode = match args.inner().get("x-match") {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        Some(AMQPValue::ShortString(s)) => s.as_str().to_owned(),
        _ => "all".to_owned(),
    };
    let (any, with_x) = match mode.as_str() {
        "any" => (true, false),
        "all-with-x" => (false, true),
        "any-with-x" => (true, true),
        _ => (false, false),
    };
    let empty = FieldTable::default();
    let headers = headers.unwrap_or(&empty).inner();
    let mut considered = 0;
    let mut matched = 0;
    for (k, v) in args.inner() {
        if k.as_str() == "x-match" || (!with_x && k.as_str().starts_with("x-")) {
            continue;
        }
        considered += 1;
        let ok = match (v, headers.get(k)) {
            (AMQPValue::Void, Some(_)) => true,
            (_, Some(h)) => crate::broker::args::values_equal(v, h),
            (_, None) => false,
        };
        if ok {
            matched += 1;
            if any {
                return true;
            }
        } else if !any {
            return false;
        }
    }
    if any {
        matched > 0
    } else {
        let _ = considered;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_rules_as_rabbitmq() {
        assert!(topic_matches("a.#", "a"));
        assert!(topic_matches("a.#", "a.b.c"));
        assert!(topic_matches("#", ""));
        assert!(topic_matches("#", "a.b"));
        assert!(topic_matches("*.b", "a.b"));
        assert!(!topic_matches("*.b", "b"));
        assert!(!topic_matches("a.*", "a"));
        assert!(topic_matches("a.*.c", "a.x.c"));
        assert!(!topic_matches("a.*.c", "a.x.y.c"));
        assert!(topic_matches("a.#.c", "a.c"));
        assert!(topic_matches("a.#.c", "a.x.y.c"));
        assert!(topic_matches("#.#", "a"));
        assert!(topic_matches("", ""));
        assert!(!topic_matches("", "a"));
        assert!(topic_matches("a.#.#.b", "a.b"));
    }

    fn table(pairs: &[(&str, AMQPValue)]) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in pairs {
            t.insert((*k).into(), v.clone());
        }
        t
    }

    #[test]
    fn headers_rules() {
        let s = |x: &str| AMQPValue::LongString(x.into());
        let h = table(&[("a", s("1")), ("b", s("2")), ("x-k", s("x"))]);
        assert!(headers_match(&table(&[("a", s("1"))]), Some(&h)));
        assert!(!headers_match(
            &table(&[("a", s("1")), ("c", s("3"))]),
            Some(&h)
        ));
        assert!(headers_match(
            &table(&[("x-match", s("any")), ("a", s("1")), ("c", s("3"))]),
            Some(&h)
        ));
        assert!(!headers_match(
            &table(&[("x-match", s("any")), ("c", s("3"))]),
            Some(&h)
        ));
        assert!(headers_match(
            &table(&[("x-match", s("all")), ("x-k", s("nope"))]),
            Some(&h)
        ));
        assert!(!headers_match(
            &table(&[("x-match", s("all-with-x")), ("x-k", s("nope"))]),
            Some(&h)
        ));
        assert!(headers_match(
            &table(&[("x-match", s("any-with-x")), ("x-k", s("x"))]),
            Some(&h)
        ));
        assert!(headers_match(
            &table(&[("a", AMQPValue::LongInt(5))]),
            Some(&table(&[("a", AMQPValue::ShortShortUInt(5))]))
        ));
    }
}

#[cfg(test)]
mod topic_cost_tests {
    use super::topic_matches;

    #[test]
    fn many_hashes_stay_fast() {
        // A recursive matcher takes about 4e15 steps here (the test would hang).
        let pattern = format!("{}.x", vec!["#"; 20].join(".#.a."));
        let key = vec!["a"; 60].join(".");
        assert!(!topic_matches(&pattern, &key));
        assert!(topic_matches("#.#.#.a", "a"));
        assert!(topic_matches("a.#.#.b.#", "a.x.b"));
    }
}
