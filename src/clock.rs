//! Broker time: the one place the core reads the clock.
//!
//! Owns: "now" in milliseconds since the Unix epoch, as stored in message
//! records (arrival times) and compared with deadlines (TTL, x-expires,
//! x-delay, dedup cache TTL). Imports nothing from the crate.
//!
//! Why not `SystemTime::now()` everywhere: time is read as the wall clock at
//! the first call plus the elapsed time of tokio's clock. So deadlines that
//! the core computes and the tokio timers that sleep towards them share one
//! time line: a test that runs on tokio's paused time (`start_paused`,
//! `tokio::time::advance`) moves both together and needs no real sleeps.
//! Outside a paused runtime, tokio's clock is the monotonic clock, so
//! "now" never runs backwards when the wall clock is stepped; records keep
//! wall-clock meaning across restarts because each process starts from the
//! wall clock.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

struct Origin {
    /// Wall clock at the origin, µs since the epoch.
    wall_us: u64,
    instant: tokio::time::Instant,
}

static ORIGIN: OnceLock<Origin> = OnceLock::new();

fn origin() -> &'static Origin {
    ORIGIN.get_or_init(|| Origin {
        wall_us: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0),
        instant: tokio::time::Instant::now(),
    })
}

/// Now, in µs since the epoch.
fn now_us() -> u64 {
    let o = origin();
    let elapsed = tokio::time::Instant::now().saturating_duration_since(o.instant);
    o.wall_us.saturating_add(elapsed.as_micros() as u64)
}

/// Now in ms since the epoch (rounded down).
pub fn now_ms() -> u64 {
    now_us() / 1000
}

/// Now in ms, rounded up: deadlines computed from it (arrival + TTL or
/// x-delay) are never before the exact ones, so nothing is released early.
pub fn now_ms_ceil() -> u64 {
    now_us().div_ceil(1000)
}

/// How long from now until `deadline_ms` (zero if it has passed): what a
/// timer task sleeps for.
pub fn until(deadline_ms: u64) -> Duration {
    Duration::from_millis(deadline_ms.saturating_sub(now_ms()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn follows_tokio_time() {
        let a = now_ms();
        tokio::time::advance(Duration::from_secs(3600)).await;
        let b = now_ms();
        assert!((3_600_000..3_600_002).contains(&(b - a)), "{a} {b}");
        assert!(now_ms_ceil() >= b);
    }

    #[test]
    fn close_to_the_wall_clock() {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        assert!(now_ms().abs_diff(wall) < 5_000);
    }
}
