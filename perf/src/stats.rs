//! Counters, latency histograms, the clock and CPU accounting.
//!
//! Everything here is written from the hot loops, so writes must cost a few
//! nanoseconds and never take a lock: counters are bumped once per batch, and
//! each task owns its histograms (single writer), which the reporter reads
//! once a second without stopping anyone.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

static START: OnceLock<Instant> = OnceLock::new();

/// Fix the process's time origin (call first thing in main).
pub fn init_clock() {
    START.get_or_init(Instant::now);
}

/// Monotonic nanoseconds since process start, never 0 (0 marks "no timestamp"
/// in message bodies and "already confirmed" in the confirm ring).
#[inline]
pub fn now_ns() -> u64 {
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64 + 1
}

/// Log-linear buckets: values below 32 ns are exact, above that each power of
/// two is split into 32 sub-buckets, i.e. about 3% relative precision over
/// the whole u64 range in 1920 buckets (15 KiB per histogram).
const SUB_BITS: u32 = 5;
const SUB: usize = 1 << SUB_BITS;
pub const BUCKETS: usize = (64 - SUB_BITS as usize + 1) * SUB;

#[inline]
fn bucket_of(v: u64) -> usize {
    if v < SUB as u64 {
        return v as usize;
    }
    let msb = 63 - v.leading_zeros();
    let shift = msb - SUB_BITS;
    let sub = (v >> shift) as usize & (SUB - 1);
    ((shift as usize + 1) << SUB_BITS) + sub
}

fn bucket_low(i: usize) -> u64 {
    if i < SUB {
        return i as u64;
    }
    let shift = (i >> SUB_BITS) - 1;
    ((SUB + (i & (SUB - 1))) as u64) << shift
}

/// Representative value of a bucket: the middle of its range.
fn bucket_mid(i: usize) -> u64 {
    let lo = bucket_low(i);
    let hi = if i + 1 < BUCKETS {
        bucket_low(i + 1)
    } else {
        u64::MAX
    };
    lo + (hi - lo) / 2
}

/// Histogram with exactly one writer task; readers may look at any time.
/// Relaxed load+store instead of fetch_add: no locked instruction on the hot
/// path, and a reader seeing a slightly stale count is harmless.
pub struct Histogram {
    counts: Box<[AtomicU64]>,
    max: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            max: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    #[inline]
    pub fn record(&self, v: u64) {
        let c = &self.counts[bucket_of(v)];
        c.store(c.load(Relaxed) + 1, Relaxed);
        if v > self.max.load(Relaxed) {
            self.max.store(v, Relaxed);
        }
    }

    fn add_to(&self, snap: &mut Snapshot) {
        for (s, c) in snap.counts.iter_mut().zip(self.counts.iter()) {
            *s += c.load(Relaxed);
        }
        snap.max = snap.max.max(self.max.load(Relaxed));
    }
}

/// A point-in-time copy of (the sum of) histograms.
#[derive(Clone)]
pub struct Snapshot {
    counts: Vec<u64>,
    max: u64,
}

impl Default for Snapshot {
    fn default() -> Self {
        Snapshot {
            counts: vec![0; BUCKETS],
            max: 0,
        }
    }
}

impl Snapshot {
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Counts recorded since `earlier` (max is the max overall, which is
    /// good enough for a per-second line that only shows percentiles).
    pub fn since(&self, earlier: &Snapshot) -> Snapshot {
        Snapshot {
            counts: self
                .counts
                .iter()
                .zip(&earlier.counts)
                .map(|(a, b)| a.saturating_sub(*b))
                .collect(),
            max: self.max,
        }
    }

    /// Value at quantile q (0..=1) in nanoseconds, `None` if empty.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(bucket_mid(i).min(self.max));
            }
        }
        Some(self.max)
    }

    pub fn max(&self) -> Option<u64> {
        (self.count() > 0).then_some(self.max)
    }
}

/// A set of per-task histograms of one kind.
#[derive(Default)]
pub struct HistogramSet {
    members: Mutex<Vec<Arc<Histogram>>>,
}

impl HistogramSet {
    pub fn register(&self) -> Arc<Histogram> {
        let h = Arc::new(Histogram::default());
        self.members.lock().unwrap().push(h.clone());
        h
    }

    pub fn snapshot(&self) -> Snapshot {
        let mut s = Snapshot::default();
        for h in self.members.lock().unwrap().iter() {
            h.add_to(&mut s);
        }
        s
    }
}

/// State shared by all tasks and the reporter.
#[derive(Default)]
pub struct Shared {
    pub published: AtomicU64,
    pub confirmed: AtomicU64,
    pub nacked: AtomicU64,
    pub returned: AtomicU64,
    pub consumed: AtomicU64,
    /// now_ns() of the latest delivery, for "queue drained" detection.
    pub last_delivery_ns: AtomicU64,
    /// Producers that reached --pmessages (and got their confirms).
    pub producers_done: AtomicU64,
    /// now_ns() when the last producer finished.
    pub producers_done_ns: AtomicU64,
    /// Set when the measurement is over; hot loops check it once per batch.
    pub stop: AtomicBool,
    /// Set by any task that hit an error (server close, I/O, protocol).
    pub failed: AtomicBool,
    /// Someone's connection is blocked by the broker (resource alarm).
    pub blocked: AtomicU64,
    /// End-to-end latency (publish to deliver), sampled.
    pub latency: HistogramSet,
    /// Publish to confirm latency, every confirmed message.
    pub confirm_latency: HistogramSet,
}

impl Shared {
    pub fn stopping(&self) -> bool {
        self.stop.load(Relaxed)
    }
}

/// User + system CPU time of the whole process (all threads).
pub fn process_cpu_time() -> Duration {
    // SAFETY: getrusage only writes into the struct we hand it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    if rc != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_tight() {
        let mut last = 0;
        for v in (0..100_000u64).chain([1 << 40, u64::MAX / 3, u64::MAX]) {
            let b = bucket_of(v);
            assert!(b >= last || v >= 1 << 40);
            assert!(b < BUCKETS);
            assert!(bucket_low(b) <= v, "v={v} b={b}");
            if b + 1 < BUCKETS {
                assert!(v < bucket_low(b + 1), "v={v} b={b}");
            }
            last = b;
        }
    }

    #[test]
    fn quantiles_are_within_a_few_percent() {
        let h = Histogram::default();
        for v in 1..=10_000u64 {
            h.record(v * 1000);
        }
        let mut s = Snapshot::default();
        h.add_to(&mut s);
        let p50 = s.quantile(0.5).unwrap() as f64;
        let p99 = s.quantile(0.99).unwrap() as f64;
        assert!((p50 / 5_000_000.0 - 1.0).abs() < 0.04, "{p50}");
        assert!((p99 / 9_900_000.0 - 1.0).abs() < 0.04, "{p99}");
        assert_eq!(s.max(), Some(10_000_000));
        assert_eq!(Snapshot::default().quantile(0.5), None);
    }
}
