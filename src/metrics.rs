//! Lock-free counters and histograms shared by the broker and the management API.
//!
//! Base layer: imports nothing from the crate.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A latency histogram with fixed buckets (seconds), Prometheus-style.
pub struct Histogram {
    bounds: Vec<f64>,
    counts: Vec<AtomicU64>,
    sum_ns: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub fn new_latency() -> Self {
        let bounds = vec![
            0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
            0.5, 1.0,
        ];
        let counts = bounds.iter().map(|_| AtomicU64::new(0)).collect();
        Histogram {
            bounds,
            counts,
            sum_ns: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        if let Some(i) = self.bounds.iter().position(|b| s <= *b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_ns
            .fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// (upper bound, cumulative count) pairs, then the total count and sum in seconds.
    pub fn snapshot(&self) -> (Vec<(f64, u64)>, u64, f64) {
        let mut cum = 0;
        let buckets = self
            .bounds
            .iter()
            .zip(&self.counts)
            .map(|(b, c)| {
                cum += c.load(Ordering::Relaxed);
                (*b, cum)
            })
            .collect();
        (
            buckets,
            self.count.load(Ordering::Relaxed),
            self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9,
        )
    }
}

/// Message counters, kept per queue and broker-wide.
#[derive(Default)]
pub struct Counters {
    pub published: AtomicU64,
    pub delivered: AtomicU64,
    pub acked: AtomicU64,
    pub redelivered: AtomicU64,
}

impl Counters {
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// What the cluster reports about itself (filled in by `cluster/` on the
/// leader; the management API and `/metrics` read it through
/// [`ClusterView`] and never import the cluster).
#[derive(Clone, Debug, Default)]
pub struct ClusterNode {
    pub name: String,
    /// "leader" or "follower".
    pub role: &'static str,
    /// Member of the in-sync replica set (the leader always is).
    pub isr: bool,
    /// A replication session with the leader is open (the leader: true).
    pub connected: bool,
    /// Bytes sent to the follower that it has not yet acknowledged as durable.
    pub lag_bytes: u64,
    /// Age of the oldest synced write it has not acknowledged.
    pub lag_ms: u64,
    /// Where the node takes AMQP and HTTP connections ("host:port").
    pub amqp_address: String,
    pub http_address: String,
}

pub trait ClusterView: Send + Sync {
    /// Every registered node, the leader first.
    fn nodes(&self) -> Vec<ClusterNode>;
    /// Leader changes since the cluster first formed.
    fn failovers(&self) -> u64;
    /// Bytes of the replication stream sent by this leader.
    fn replication_bytes(&self) -> u64;
    /// Followers required in sync before a confirm.
    fn min_insync(&self) -> usize;
}
