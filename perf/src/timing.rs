//! Timing-accuracy scenarios: how close to its due time does a broker release
//! a message whose release is deferred?
//!
//! - `ttl`: a work queue without consumers, dead-lettering through the default
//!   exchange to a DLQ that we consume; every message has its own `expiration`
//!   (per-message TTL).
//! - `delay`: an `x-delayed-message` exchange (x-delayed-type direct) bound to
//!   the queue we consume; every message has its own `x-delay` header.
//! - `delay-via-ttl`: the same delays emulated with per-message TTL + DLX on a
//!   holding queue, for brokers without the delayed-message plugin.
//!
//! Every message body carries a run id, a sequence number, its publish time
//! (wall clock, ns since the Unix epoch) and its delay in ms; the consumer
//! records lateness = arrival - (publish time + delay) for each message.
//!
//! The publish time is taken when a batch is encoded and taken again for the
//! part of a batch still unsent after the socket was full, so it is never
//! later than the moment the broker could have read the message: a negative
//! lateness means the broker really released the message before its delay
//! had passed (brokers that keep arrival times in whole milliseconds can be
//! up to 1 ms early by truncation, which is why early releases by more than
//! 1 ms are counted separately).

use crate::conn::{self, BoxError, Conn, Result, ServerClosed, CONTROL_TIMEOUT};
use crate::stats::process_cpu_time;
use crate::stream::{Rd, Wr};
use crate::uri::AmqpUri;
use crate::wire::{
    self, DelayProp, FrameBuf, TimedPublish, FRAME_BODY, FRAME_HEADER, FRAME_METHOD,
    TIMED_BODY_LEN, TIMED_DELAY_MS, TIMED_PUB_NS, TIMED_RUN_ID, TIMED_SEQ,
};
use amq_protocol::protocol::{channel, connection, AMQPClass};
use amq_protocol::types::{AMQPValue, FieldTable};
use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::*};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{watch, Notify};

const CH: u16 = 1;

/// The two delays of a head-of-line run, in publish order: a long one, then a
/// short one that a FIFO-only expiry would hold back behind the first.
pub const HOL_DELAYS: [u32; 2] = [5000, 100];

/// At most this many per-message arrivals are listed in the summary.
const MAX_ARRIVALS_LISTED: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    Ttl,
    Delay,
    DelayViaTtl,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Ttl => "ttl",
            Scenario::Delay => "delay",
            Scenario::DelayViaTtl => "delay-via-ttl",
        }
    }
}

pub struct TimingConfig {
    pub uri: AmqpUri,
    pub scenario: Scenario,
    /// Messages to publish (ignored with head_of_line).
    pub messages: u64,
    /// Delays (TTL or x-delay) are uniform in [0, max_ms].
    pub max_ms: u32,
    pub seed: u64,
    pub head_of_line: bool,
    /// Queue (and exchange) names are derived from this.
    pub base: String,
    pub durable: bool,
    pub persistent: bool,
    /// Publish rate limit in msg/s (0 = unlimited).
    pub rate: u64,
    /// Publisher confirms, at most this many unconfirmed (0 = off).
    pub confirm_window: u64,
    pub batch_bytes: usize,
    /// The consumer waits until max_ms + grace after the last publish; a
    /// publisher making no progress for grace gives up.
    pub grace: Duration,
    pub broker_pid: Option<u32>,
    pub keep: bool,
    pub json: bool,
    /// Write seq,delay_ms,lateness_ms (empty = never arrived) per message.
    pub csv: Option<std::path::PathBuf>,
}

/// Names and the delay property of a scenario.
struct Topology {
    exchange: String,
    routing_key: String,
    prop: DelayProp,
    /// TTL scenarios: the queue where messages wait to expire.
    hold_queue: Option<String>,
    /// The queue we consume.
    target_queue: String,
    delayed_exchange: Option<String>,
}

impl Topology {
    fn new(scenario: Scenario, base: &str) -> Topology {
        match scenario {
            Scenario::Ttl | Scenario::DelayViaTtl => {
                let (hold, target) = if scenario == Scenario::Ttl {
                    (format!("{base}-ttl-work"), format!("{base}-ttl-dlq"))
                } else {
                    (format!("{base}-delay-hold"), format!("{base}-delay-target"))
                };
                Topology {
                    exchange: String::new(),
                    routing_key: hold.clone(),
                    prop: DelayProp::Expiration,
                    hold_queue: Some(hold),
                    target_queue: target,
                    delayed_exchange: None,
                }
            }
            Scenario::Delay => {
                let ex = format!("{base}-delayed");
                let target = format!("{base}-delay-target");
                Topology {
                    exchange: ex.clone(),
                    routing_key: target.clone(),
                    prop: DelayProp::XDelay,
                    hold_queue: None,
                    target_queue: target,
                    delayed_exchange: Some(ex),
                }
            }
        }
    }
}

/// Wall clock in ns since the Unix epoch.
#[inline]
pub fn wall_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// SplitMix64: tiny, seedable, good enough to spread delays.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, n) (multiply-shift, no modulo bias worth the name).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
}

/// The delay of every message, in publish order.
pub fn gen_delays(n: u64, max_ms: u32, seed: u64) -> Vec<u32> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|_| rng.below(max_ms as u64 + 1) as u32)
        .collect()
}

/// Value at quantile q of sorted values (nearest rank).
pub fn quantile(sorted: &[f32], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1] as f64)
}

/// Shared by the publisher, the consumer, the sampler and the reporter.
#[derive(Default)]
struct Progress {
    published: AtomicU64,
    publish_start_ns: AtomicU64,
    /// Wall clock when publishing ended (0 = still publishing).
    publish_done_ns: AtomicU64,
    /// Distinct messages of this run received.
    received: AtomicU64,
    confirmed: AtomicU64,
    nacked: AtomicU64,
    early: AtomicU64,
    max_late_us: AtomicI64,
    blocked: AtomicBool,
    blocked_ever: AtomicBool,
    blocked_reason: Mutex<Option<String>>,
    stalled: AtomicBool,
    stop: AtomicBool,
    failed: AtomicBool,
    rss_peak_kb: AtomicU64,
}

pub async fn run(cfg: TimingConfig) -> Result<bool> {
    let cfg = Arc::new(cfg);
    let topo = Arc::new(Topology::new(cfg.scenario, &cfg.base));
    let say = |line: String| {
        if cfg.json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    };
    let delays: Arc<Vec<u32>> = Arc::new(if cfg.head_of_line {
        HOL_DELAYS.to_vec()
    } else {
        gen_delays(cfg.messages, cfg.max_ms, cfg.seed)
    });
    let max_delay = delays.iter().copied().max().unwrap_or(0);
    let n = delays.len();
    let run_id = Rng::new(wall_ns()).next_u64();

    let mut admin = Conn::open(&cfg.uri, "lepus-perf-setup").await?;
    admin.channel_open(CH).await?;
    let mut scratch = CH + 1;
    admin.channel_open(scratch).await?;
    delete_all(&mut admin, &mut scratch, &topo).await?;
    declare(&mut admin, &topo, cfg.durable).await?;
    say(format!(
        "lepus-perf: {}:{} vhost {:?}, mode {}{}, {} messages, delays {} ms, seed {}, publish to {:?}/{:?}{}, consume {:?}",
        cfg.uri.host,
        cfg.uri.port,
        cfg.uri.vhost,
        cfg.scenario.name(),
        if cfg.head_of_line { " (head-of-line)" } else { "" },
        n,
        if cfg.head_of_line {
            format!("{HOL_DELAYS:?}")
        } else {
            format!("0..={}", cfg.max_ms)
        },
        cfg.seed,
        topo.exchange,
        topo.routing_key,
        if cfg.confirm_window > 0 {
            format!(" (confirm window {})", cfg.confirm_window)
        } else {
            String::new()
        },
        topo.target_queue,
    ));

    // Subscribe before anything is published; both connections are set up
    // before the clock starts.
    let mut cconn = Conn::open(&cfg.uri, "lepus-perf-consumer").await?;
    cconn.channel_open(CH).await?;
    cconn
        .consume(CH, &topo.target_queue, "lepus-perf-timing", true)
        .await?;
    let mut pconn = Conn::open(&cfg.uri, "lepus-perf-producer").await?;
    pconn.channel_open(CH).await?;
    if cfg.confirm_window > 0 {
        pconn.confirm_select(CH).await?;
    }

    let prog = Arc::new(Progress::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let rss0 = cfg.broker_pid.and_then(read_rss_kb);
    let bcpu0 = cfg.broker_pid.and_then(read_cpu_s);
    if let Some(kb) = rss0 {
        prog.rss_peak_kb.store(kb, Relaxed);
    }
    let t0 = Instant::now();
    let cpu0 = process_cpu_time();

    let consumer = {
        let prog = prog.clone();
        let rx = stop_rx.clone();
        tokio::spawn(async move {
            let (out, r) = consume(cconn, n, run_id, &prog, rx).await;
            if let Err(e) = &r {
                eprintln!("consumer: {e}");
                prog.failed.store(true, Relaxed);
            }
            out
        })
    };
    let publisher = {
        let (prog, cfg, topo, delays) = (prog.clone(), cfg.clone(), topo.clone(), delays.clone());
        let rx = stop_rx.clone();
        tokio::spawn(async move {
            let r = publish(pconn, &cfg, &topo, &delays, run_id, &prog, rx).await;
            if let Err(e) = &r {
                eprintln!("producer: {e}");
                prog.failed.store(true, Relaxed);
            }
        })
    };
    let sampler = cfg.broker_pid.map(|pid| {
        let prog = prog.clone();
        let mut rx = stop_rx.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = rx.changed() => return,
                }
                if let Some(kb) = read_rss_kb(pid) {
                    prog.rss_peak_kb.fetch_max(kb, Relaxed);
                }
            }
        })
    });

    // Reporter: end conditions every 100 ms, a progress line every second.
    let deadline_after = Duration::from_millis(max_delay as u64) + cfg.grace;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut next_print = Duration::from_secs(1);
    let mut last_recv = 0u64;
    let mut timed_out = false;
    loop {
        tick.tick().await;
        if prog.failed.load(Relaxed) {
            break;
        }
        let published = prog.published.load(Acquire);
        let received = prog.received.load(Relaxed);
        let done_ns = prog.publish_done_ns.load(Acquire);
        if done_ns != 0 {
            if received >= published {
                break;
            }
            if wall_ns() > done_ns + deadline_after.as_nanos() as u64 {
                timed_out = true;
                break;
            }
        }
        if t0.elapsed() >= next_print {
            let max_late = prog.max_late_us.load(Relaxed);
            let mut line = format!(
                "t={}s published {}{}, received {} (+{}/s), early {}",
                next_print.as_secs(),
                published,
                if done_ns != 0 { " (done)" } else { "" },
                received,
                received - last_recv,
                prog.early.load(Relaxed),
            );
            if received > 0 {
                line += &format!(", max lateness {:.3} ms", max_late as f64 / 1e3);
            }
            if let Some(pid) = cfg.broker_pid {
                if let Some(kb) = read_rss_kb(pid) {
                    line += &format!(", broker RSS {:.0} MB", kb as f64 / 1024.0);
                }
            }
            if prog.blocked.load(Relaxed) {
                line += " [BLOCKED by broker]";
            }
            say(line);
            last_recv = received;
            next_print += Duration::from_secs(1);
        }
    }

    let duration_s = t0.elapsed().as_secs_f64();
    prog.stop.store(true, Relaxed);
    let _ = stop_tx.send(true);
    let (pub_res, cons_res) = tokio::join!(
        tokio::time::timeout(Duration::from_secs(15), publisher),
        tokio::time::timeout(Duration::from_secs(15), consumer),
    );
    if pub_res.is_err() {
        eprintln!("lepus-perf: the producer did not finish in time");
        prog.failed.store(true, Relaxed);
    }
    let outcome = match cons_res {
        Ok(Ok(o)) => Some(o),
        _ => {
            eprintln!("lepus-perf: the consumer did not finish in time");
            prog.failed.store(true, Relaxed);
            None
        }
    };
    if let Some(s) = sampler {
        let _ = s.await;
    }
    let cpu = process_cpu_time().saturating_sub(cpu0);
    let rss_end = cfg.broker_pid.and_then(read_rss_kb);
    let bcpu1 = cfg.broker_pid.and_then(read_cpu_s);
    if let Some(kb) = rss_end {
        prog.rss_peak_kb.fetch_max(kb, Relaxed);
    }

    // What is still waiting in the broker, then clean up.
    let left_hold = match &topo.hold_queue {
        Some(q) => message_count(&mut admin, &mut scratch, q).await,
        None => None,
    };
    let left_target = message_count(&mut admin, &mut scratch, &topo.target_queue).await;
    if !cfg.keep {
        if let Err(e) = delete_all(&mut admin, &mut scratch, &topo).await {
            eprintln!("lepus-perf: cleaning up: {e}");
        }
    }
    if let Err(e) = admin.close(CH).await {
        eprintln!("lepus-perf: closing setup connection: {e}");
    }

    let published = prog.published.load(Acquire);
    let publish_s = prog
        .publish_done_ns
        .load(Acquire)
        .saturating_sub(prog.publish_start_ns.load(Acquire)) as f64
        / 1e9;
    let outcome = outcome.unwrap_or(ConsumeOutcome {
        lateness: Vec::new(),
        duplicates: 0,
        foreign: 0,
    });
    let mut s = Summary {
        mode: cfg.scenario.name(),
        head_of_line: cfg.head_of_line,
        messages: n as u64,
        max_delay_ms: max_delay,
        seed: cfg.seed,
        published,
        publish_rate: if publish_s > 0.0 {
            published as f64 / publish_s
        } else {
            0.0
        },
        publish_s,
        confirmed: prog.confirmed.load(Relaxed),
        nacked: prog.nacked.load(Relaxed),
        duplicates: outcome.duplicates,
        foreign: outcome.foreign,
        timed_out,
        left_in_hold_queue: left_hold,
        left_in_target_queue: left_target,
        blocked: prog.blocked_ever.load(Relaxed),
        blocked_reason: prog.blocked_reason.lock().unwrap().clone(),
        publish_stalled: prog.stalled.load(Relaxed),
        broker_pid: cfg.broker_pid,
        broker_rss_start_mb: rss0.map(mb),
        broker_rss_peak_mb: cfg.broker_pid.map(|_| mb(prog.rss_peak_kb.load(Relaxed))),
        broker_rss_end_mb: rss_end.map(mb),
        broker_cpu_s: match (bcpu0, bcpu1) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        },
        client_cpu_us_per_msg: (published > 0).then(|| cpu.as_secs_f64() * 1e6 / published as f64),
        client_cpu_s: cpu.as_secs_f64(),
        duration_s,
        failed: prog.failed.load(Relaxed),
        ..Summary::default()
    };
    analyse(&mut s, &outcome.lateness, &delays, published as usize);
    if let Some(path) = &cfg.csv {
        if let Err(e) = write_csv(path, &outcome.lateness, &delays, published as usize) {
            eprintln!("lepus-perf: writing {}: {e}", path.display());
        }
    }
    if cfg.json {
        println!("{}", serde_json::to_string(&s)?);
    } else {
        print_summary(&s);
    }
    Ok(!s.failed)
}

fn write_csv(
    path: &std::path::Path,
    lateness: &[f32],
    delays: &[u32],
    published: usize,
) -> std::io::Result<()> {
    use std::io::Write;
    let mut w = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(w, "seq,delay_ms,lateness_ms")?;
    for (i, &l) in lateness.iter().enumerate().take(published) {
        if l.is_nan() {
            writeln!(w, "{i},{},", delays[i])?;
        } else {
            writeln!(w, "{i},{},{l:.3}", delays[i])?;
        }
    }
    w.flush()
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

#[derive(Serialize, Default)]
struct Example {
    seq: u64,
    delay_ms: u32,
    lateness_ms: f64,
}

#[derive(Serialize, Default)]
struct Arrival {
    seq: u64,
    delay_ms: u32,
    /// Arrival, ms after the publish time (null if it never arrived).
    arrival_ms: Option<f64>,
}

#[derive(Serialize, Default)]
struct Summary {
    mode: &'static str,
    head_of_line: bool,
    messages: u64,
    max_delay_ms: u32,
    seed: u64,
    published: u64,
    publish_rate: f64,
    publish_s: f64,
    confirmed: u64,
    nacked: u64,
    received: u64,
    missing: u64,
    duplicates: u64,
    foreign: u64,
    lateness_p50_ms: Option<f64>,
    lateness_p99_ms: Option<f64>,
    lateness_p999_ms: Option<f64>,
    lateness_max_ms: Option<f64>,
    lateness_min_ms: Option<f64>,
    lateness_mean_ms: Option<f64>,
    early: u64,
    early_over_1ms: u64,
    timed_out: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    arrivals: Vec<Arrival>,
    /// Up to 10 messages that never arrived: [seq, delay_ms].
    #[serde(skip_serializing_if = "Vec::is_empty")]
    missing_examples: Vec<[u64; 2]>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    earliest: Vec<Example>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    latest: Vec<Example>,
    left_in_hold_queue: Option<u32>,
    left_in_target_queue: Option<u32>,
    blocked: bool,
    blocked_reason: Option<String>,
    publish_stalled: bool,
    broker_pid: Option<u32>,
    broker_rss_start_mb: Option<f64>,
    broker_rss_peak_mb: Option<f64>,
    broker_rss_end_mb: Option<f64>,
    broker_cpu_s: Option<f64>,
    client_cpu_us_per_msg: Option<f64>,
    client_cpu_s: f64,
    duration_s: f64,
    failed: bool,
}

/// Fill the lateness statistics from the per-message lateness (NaN = never
/// arrived) of the first `published` messages.
fn analyse(s: &mut Summary, lateness: &[f32], delays: &[u32], published: usize) {
    let lateness = &lateness[..published.min(lateness.len())];
    let mut got: Vec<f32> = lateness.iter().copied().filter(|v| !v.is_nan()).collect();
    got.sort_unstable_by(|a, b| a.total_cmp(b));
    s.received = got.len() as u64;
    s.missing = (published as u64).saturating_sub(s.received);
    s.lateness_p50_ms = quantile(&got, 0.5);
    s.lateness_p99_ms = quantile(&got, 0.99);
    s.lateness_p999_ms = quantile(&got, 0.999);
    s.lateness_max_ms = got.last().map(|&v| v as f64);
    s.lateness_min_ms = got.first().map(|&v| v as f64);
    s.lateness_mean_ms =
        (!got.is_empty()).then(|| got.iter().map(|&v| v as f64).sum::<f64>() / got.len() as f64);
    s.early = got.partition_point(|&v| v < 0.0) as u64;
    s.early_over_1ms = got.partition_point(|&v| v < -1.0) as u64;

    if published <= MAX_ARRIVALS_LISTED {
        s.arrivals = (0..published)
            .map(|i| Arrival {
                seq: i as u64,
                delay_ms: delays[i],
                arrival_ms: (!lateness[i].is_nan()).then(|| lateness[i] as f64 + delays[i] as f64),
            })
            .collect();
    }
    s.missing_examples = lateness
        .iter()
        .enumerate()
        .filter(|(_, v)| v.is_nan())
        .take(10)
        .map(|(i, _)| [i as u64, delays[i] as u64])
        .collect();
    let example = |i: usize| Example {
        seq: i as u64,
        delay_ms: delays[i],
        lateness_ms: lateness[i] as f64,
    };
    let mut order: Vec<u32> = (0..lateness.len() as u32)
        .filter(|&i| !lateness[i as usize].is_nan())
        .collect();
    if order.len() > MAX_ARRIVALS_LISTED {
        order.sort_unstable_by(|&a, &b| lateness[a as usize].total_cmp(&lateness[b as usize]));
        s.earliest = order
            .iter()
            .take(5)
            .filter(|&&i| lateness[i as usize] < 0.0)
            .map(|&i| example(i as usize))
            .collect();
        s.latest = order
            .iter()
            .rev()
            .take(5)
            .map(|&i| example(i as usize))
            .collect();
    }
}

fn opt_ms(v: Option<f64>) -> String {
    match v {
        Some(v) => format!("{v:.3} ms"),
        None => "-".into(),
    }
}

fn print_summary(s: &Summary) {
    println!("---- lepus-perf {} summary ----", s.mode);
    println!("duration        {:.2} s", s.duration_s);
    println!(
        "published       {} msgs in {:.2} s, {:.0} msg/s{}",
        s.published,
        s.publish_s,
        s.publish_rate,
        if s.publish_stalled {
            " (STALLED: the broker stopped reading)"
        } else {
            ""
        }
    );
    if s.confirmed > 0 || s.nacked > 0 {
        println!("confirmed       {} msgs, nacked {}", s.confirmed, s.nacked);
    }
    println!(
        "received        {} msgs, missing {}, duplicates {}{}",
        s.received,
        s.missing,
        s.duplicates,
        if s.timed_out {
            " (deadline reached)"
        } else {
            ""
        }
    );
    if s.foreign > 0 {
        println!("foreign         {} msgs not from this run", s.foreign);
    }
    println!(
        "lateness        p50 {} p99 {} p99.9 {} max {} (min {}, mean {})",
        opt_ms(s.lateness_p50_ms),
        opt_ms(s.lateness_p99_ms),
        opt_ms(s.lateness_p999_ms),
        opt_ms(s.lateness_max_ms),
        opt_ms(s.lateness_min_ms),
        opt_ms(s.lateness_mean_ms),
    );
    println!(
        "early           {} msgs ({} by more than 1 ms)",
        s.early, s.early_over_1ms
    );
    for a in &s.arrivals {
        println!(
            "message {}       delay {} ms, arrived {} after publish",
            a.seq,
            a.delay_ms,
            opt_ms(a.arrival_ms)
        );
    }
    for e in &s.earliest {
        println!(
            "early example   seq {} delay {} ms lateness {:.3} ms",
            e.seq, e.delay_ms, e.lateness_ms
        );
    }
    for e in &s.latest {
        println!(
            "late example    seq {} delay {} ms lateness {:.3} ms",
            e.seq, e.delay_ms, e.lateness_ms
        );
    }
    for [seq, d] in &s.missing_examples {
        println!("missing         seq {seq} delay {d} ms");
    }
    if s.left_in_hold_queue.is_some() || s.left_in_target_queue.is_some() {
        println!(
            "left in broker  hold queue {}, target queue {}",
            s.left_in_hold_queue
                .map_or("-".to_string(), |v| v.to_string()),
            s.left_in_target_queue
                .map_or("-".to_string(), |v| v.to_string())
        );
    }
    if s.blocked {
        println!(
            "BLOCKED         the broker blocked the publisher: {}",
            s.blocked_reason.as_deref().unwrap_or("")
        );
    }
    if let Some(pid) = s.broker_pid {
        println!(
            "broker {pid:<8} RSS start {} peak {} end {} MB, CPU {} s",
            s.broker_rss_start_mb
                .map_or("-".to_string(), |v| format!("{v:.0}")),
            s.broker_rss_peak_mb
                .map_or("-".to_string(), |v| format!("{v:.0}")),
            s.broker_rss_end_mb
                .map_or("-".to_string(), |v| format!("{v:.0}")),
            s.broker_cpu_s
                .map_or("-".to_string(), |v| format!("{v:.2}")),
        );
    }
    match s.client_cpu_us_per_msg {
        Some(us) => println!("client CPU      {:.2} s, {:.3} µs/msg", s.client_cpu_s, us),
        None => println!("client CPU      {:.2} s", s.client_cpu_s),
    }
    if s.failed {
        println!("RUN FAILED (see errors above)");
    }
}

fn is_channel_close(e: &BoxError) -> bool {
    e.downcast_ref::<ServerClosed>()
        .is_some_and(|s| s.what == "channel")
}

/// Best effort: delete the scenario's queues and exchange. A broker that
/// answers a missing one with a channel error gets a fresh scratch channel.
async fn delete_all(admin: &mut Conn, scratch: &mut u16, topo: &Topology) -> Result<()> {
    let queues = topo.hold_queue.iter().chain([&topo.target_queue]);
    for q in queues {
        match admin.queue_delete(*scratch, q).await {
            Ok(_) => {}
            Err(e) if is_channel_close(&e) => {
                *scratch += 1;
                admin.channel_open(*scratch).await?;
            }
            Err(e) => return Err(e),
        }
    }
    if let Some(ex) = &topo.delayed_exchange {
        match admin.exchange_delete(*scratch, ex).await {
            Ok(_) => {}
            Err(e) if is_channel_close(&e) => {
                *scratch += 1;
                admin.channel_open(*scratch).await?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

async fn declare(admin: &mut Conn, topo: &Topology, durable: bool) -> Result<()> {
    admin
        .queue_declare_with(
            CH,
            &topo.target_queue,
            durable,
            false,
            FieldTable::default(),
        )
        .await?;
    if let Some(hold) = &topo.hold_queue {
        let mut args = FieldTable::default();
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString("".into()),
        );
        args.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(topo.target_queue.as_str().into()),
        );
        admin
            .queue_declare_with(CH, hold, durable, false, args)
            .await?;
    }
    if let Some(ex) = &topo.delayed_exchange {
        let mut args = FieldTable::default();
        args.insert(
            "x-delayed-type".into(),
            AMQPValue::LongString("direct".into()),
        );
        admin
            .exchange_declare(CH, ex, "x-delayed-message", durable, args)
            .await?;
        admin
            .queue_bind(CH, &topo.target_queue, ex, &topo.target_queue)
            .await?;
    }
    Ok(())
}

/// Messages in a queue (passive declare), None if that failed.
async fn message_count(admin: &mut Conn, scratch: &mut u16, q: &str) -> Option<u32> {
    match admin
        .queue_declare_with(*scratch, q, false, true, FieldTable::default())
        .await
    {
        Ok(n) => Some(n),
        Err(e) => {
            if is_channel_close(&e) {
                *scratch += 1;
                let _ = admin.channel_open(*scratch).await;
            }
            None
        }
    }
}

/// VmRSS of a process in KiB.
pub fn read_rss_kb(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// User + system CPU seconds of a process.
pub fn read_cpu_s(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces): state is
    // field 3 of the man page, utime 14 and stime 15.
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| (utime + stime) / hz as f64)
}

// ---------------------------------------------------------------- consumer

struct ConsumeOutcome {
    /// Lateness in ms by sequence number; NaN = not received.
    lateness: Vec<f32>,
    duplicates: u64,
    foreign: u64,
}

async fn consume(
    mut conn: Conn,
    n: usize,
    run_id: u64,
    prog: &Progress,
    mut stop: watch::Receiver<bool>,
) -> (ConsumeOutcome, Result<()>) {
    let mut out = ConsumeOutcome {
        lateness: vec![f32::NAN; n],
        duplicates: 0,
        foreign: 0,
    };
    let r = match consume_loop(&mut conn, &mut out, run_id, prog, &mut stop).await {
        Ok(()) => conn.close(CH).await,
        Err(e) => {
            if is_channel_close(&e) {
                let _ = conn.send(0, conn::connection_close()).await;
            }
            Err(e)
        }
    };
    (out, r)
}

async fn consume_loop(
    conn: &mut Conn,
    out: &mut ConsumeOutcome,
    run_id: u64,
    prog: &Progress,
    stop: &mut watch::Receiver<bool>,
) -> Result<()> {
    // Set by a content header, cleared by the body frame after it (a 32-byte
    // body always fits one frame).
    let mut want_body = false;
    loop {
        // Everything in the buffer arrived before this instant.
        let now = wall_ns() as i64;
        let (mut got, mut early, mut max_late) = (0u64, 0u64, i64::MIN);
        while let Some(f) = conn.rbuf.next_frame()? {
            match f.kind {
                FRAME_HEADER => want_body = true,
                FRAME_BODY if want_body => {
                    want_body = false;
                    let Some(b) = f.payload.get(..TIMED_BODY_LEN) else {
                        out.foreign += 1;
                        continue;
                    };
                    let field = |at: usize| u64::from_be_bytes(b[at..at + 8].try_into().unwrap());
                    let seq = field(TIMED_SEQ) as usize;
                    if field(TIMED_RUN_ID) != run_id || seq >= out.lateness.len() {
                        out.foreign += 1;
                        continue;
                    }
                    let due = field(TIMED_PUB_NS) + field(TIMED_DELAY_MS) * 1_000_000;
                    let late = now - due as i64;
                    let slot = &mut out.lateness[seq];
                    if !slot.is_nan() {
                        out.duplicates += 1;
                        continue;
                    }
                    *slot = (late as f64 / 1e6) as f32;
                    got += 1;
                    early += (late < 0) as u64;
                    max_late = max_late.max(late);
                }
                FRAME_METHOD => {
                    want_body = false;
                    match f.method_id() {
                        Some((wire::CLASS_CONNECTION, wire::CONNECTION_CLOSE)) => {
                            let (_, m) = conn::decode_method(f.bytes)?;
                            let _ = conn
                                .send(
                                    0,
                                    AMQPClass::Connection(connection::AMQPMethod::CloseOk(
                                        connection::CloseOk {},
                                    )),
                                )
                                .await;
                            return Err(match m {
                                AMQPClass::Connection(connection::AMQPMethod::Close(c)) => {
                                    Box::new(ServerClosed::from_connection(&c))
                                }
                                _ => "server closed the connection".into(),
                            });
                        }
                        Some((wire::CLASS_CHANNEL, wire::CHANNEL_CLOSE)) => {
                            let (_, m) = conn::decode_method(f.bytes)?;
                            let _ = conn
                                .send(
                                    CH,
                                    AMQPClass::Channel(channel::AMQPMethod::CloseOk(
                                        channel::CloseOk {},
                                    )),
                                )
                                .await;
                            return Err(match m {
                                AMQPClass::Channel(channel::AMQPMethod::Close(c)) => {
                                    Box::new(ServerClosed::from_channel(&c))
                                }
                                _ => "server closed the channel".into(),
                            });
                        }
                        Some((wire::CLASS_BASIC, wire::BASIC_CANCEL)) => {
                            return Err("consumer cancelled by the server (queue deleted?)".into());
                        }
                        _ => {}
                    }
                }
                _ => {}
            }
        }
        if got > 0 {
            prog.received.fetch_add(got, Relaxed);
            prog.early.fetch_add(early, Relaxed);
            prog.max_late_us.fetch_max(max_late / 1000, Relaxed);
        }
        if prog.stop.load(Relaxed) {
            return Ok(());
        }
        match conn.stream.try_read(conn.rbuf.read_space()) {
            Ok(0) => return Err("consumer: connection closed by the server (EOF)".into()),
            Ok(n) => {
                conn.rbuf.commit(n);
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e.into()),
        }
        tokio::select! {
            r = conn.stream.readable() => r?,
            _ = stop.changed() => {}
        }
    }
}

// ---------------------------------------------------------------- producer

#[derive(Default)]
struct PubFlags {
    /// Next delivery tag (confirms); stored before the bytes leave.
    next_tag: AtomicU64,
    /// Every tag below this is confirmed or nacked.
    watermark: AtomicU64,
    blocked: AtomicBool,
    channel_closed: AtomicBool,
    reader_done: AtomicBool,
    server_closed: AtomicBool,
    notify: Notify,
}

async fn publish(
    conn: Conn,
    cfg: &TimingConfig,
    topo: &Topology,
    delays: &[u32],
    run_id: u64,
    prog: &Arc<Progress>,
    mut stop: watch::Receiver<bool>,
) -> Result<()> {
    let (stream, rbuf, _) = conn.into_parts();
    let (rd, mut wr) = stream.into_split();
    let flags = Arc::new(PubFlags::default());
    flags.next_tag.store(1, Relaxed);
    flags.watermark.store(1, Relaxed);
    let reader = tokio::spawn(pub_reader(
        rd,
        rbuf,
        flags.clone(),
        prog.clone(),
        cfg.confirm_window,
    ));
    prog.publish_start_ns.store(wall_ns(), Release);
    let res = publish_loop(cfg, topo, delays, run_id, &mut wr, &flags, prog, &mut stop).await;
    prog.publish_done_ns.store(wall_ns(), Release);

    // Teardown, as in the throughput producer: never hang on a broker that
    // does not read, never send a close after half a frame.
    let complete = matches!(res, Ok(true));
    if !complete || (flags.blocked.load(Acquire) && !flags.reader_done.load(Acquire)) {
        eprintln!(
            "producer: broker not reading (blocked or flow-controlled) at the end; \
             dropping the connection without a close handshake"
        );
        reader.abort();
        return res.map(|_| ());
    }
    let mut out = Vec::new();
    if flags.server_closed.load(Acquire) {
        wire::encode_method(
            &mut out,
            0,
            AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
        );
        send_bounded(&mut wr, &out).await;
    } else {
        if !flags.reader_done.load(Acquire) {
            wire::encode_method(&mut out, CH, conn::channel_close());
            if send_bounded(&mut wr, &out).await {
                let deadline = Instant::now() + CONTROL_TIMEOUT;
                while !flags.channel_closed.load(Acquire)
                    && !flags.reader_done.load(Acquire)
                    && Instant::now() < deadline
                {
                    let _ =
                        tokio::time::timeout(Duration::from_millis(50), flags.notify.notified())
                            .await;
                }
            }
            out.clear();
        }
        wire::encode_method(&mut out, 0, conn::connection_close());
        send_bounded(&mut wr, &out).await;
    }
    let reader_res = match tokio::time::timeout(CONTROL_TIMEOUT, reader).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err("producer: connection.close-ok not received".into()),
    };
    res?;
    reader_res
}

async fn send_bounded(wr: &mut Wr, bytes: &[u8]) -> bool {
    matches!(
        tokio::time::timeout(CONTROL_TIMEOUT, wr.write_all(bytes)).await,
        Ok(Ok(()))
    )
}

/// Publish every message; Ok(false) if the broker stopped reading for longer
/// than the grace period (the run goes on with what was published).
#[allow(clippy::too_many_arguments)]
async fn publish_loop(
    cfg: &TimingConfig,
    topo: &Topology,
    delays: &[u32],
    run_id: u64,
    wr: &mut Wr,
    flags: &PubFlags,
    prog: &Progress,
    stop: &mut watch::Receiver<bool>,
) -> Result<bool> {
    let enc = TimedPublish::new(
        CH,
        &topo.exchange,
        &topo.routing_key,
        topo.prop,
        cfg.persistent,
    );
    let n = delays.len();
    let batch_bytes = cfg.batch_bytes.max(1);
    let mut batch = Vec::with_capacity(batch_bytes + 256);
    let mut ts_pos: Vec<usize> = Vec::with_capacity(batch_bytes / 64 + 1);
    let mut body = [0u8; TIMED_BODY_LEN];
    body[TIMED_RUN_ID..TIMED_RUN_ID + 8].copy_from_slice(&run_id.to_be_bytes());
    let started = Instant::now();
    let mut last_progress = Instant::now();
    let mut i = 0usize;
    let window = cfg.confirm_window;
    let mut next_tag = 1u64;
    while i < n {
        if *stop.borrow() || flags.reader_done.load(Acquire) {
            break;
        }
        if flags.blocked.load(Acquire) {
            if last_progress.elapsed() > cfg.grace {
                prog.stalled.store(true, Relaxed);
                return Ok(false);
            }
            let _ = tokio::time::timeout(Duration::from_millis(50), flags.notify.notified()).await;
            continue;
        }
        let mut room = n - i;
        if window > 0 {
            let outstanding = next_tag - flags.watermark.load(Acquire);
            if outstanding >= window {
                if last_progress.elapsed() > cfg.grace {
                    prog.stalled.store(true, Relaxed);
                    return Ok(true);
                }
                let _ =
                    tokio::time::timeout(Duration::from_millis(50), flags.notify.notified()).await;
                continue;
            }
            room = room.min((window - outstanding) as usize);
        }
        if cfg.rate > 0 {
            let elapsed = started.elapsed().as_nanos();
            let due = ((cfg.rate as u128 * elapsed / 1_000_000_000) as usize + 1).min(n);
            if due <= i {
                let next_at = i as u128 * 1_000_000_000 / cfg.rate as u128;
                let wait = (next_at.saturating_sub(elapsed) as u64).max(100_000);
                tokio::time::sleep(Duration::from_nanos(wait)).await;
                continue;
            }
            room = room.min(due - i);
        }
        batch.clear();
        ts_pos.clear();
        body[TIMED_PUB_NS..TIMED_PUB_NS + 8].copy_from_slice(&wall_ns().to_be_bytes());
        while room > 0 && batch.len() < batch_bytes {
            let d = delays[i];
            body[TIMED_SEQ..TIMED_SEQ + 8].copy_from_slice(&(i as u64).to_be_bytes());
            body[TIMED_DELAY_MS..TIMED_DELAY_MS + 8].copy_from_slice(&(d as u64).to_be_bytes());
            let at = enc.push(&mut batch, d, &body);
            ts_pos.push(at + TIMED_PUB_NS);
            i += 1;
            room -= 1;
        }
        next_tag += ts_pos.len() as u64;
        if window > 0 {
            flags.next_tag.store(next_tag, Release);
        }
        if !write_restamping(wr, &mut batch, &ts_pos, stop, cfg.grace).await? {
            if !*stop.borrow() {
                prog.stalled.store(true, Relaxed);
            }
            return Ok(false);
        }
        prog.published.store(i as u64, Release);
        last_progress = Instant::now();
    }
    // With confirms, publishing is over once the broker has taken everything.
    let mut low = flags.watermark.load(Acquire);
    while window > 0 && low < next_tag && !*stop.borrow() && !flags.reader_done.load(Acquire) {
        let _ = tokio::time::timeout(Duration::from_millis(50), flags.notify.notified()).await;
        let now_low = flags.watermark.load(Acquire);
        if now_low > low {
            low = now_low;
            last_progress = Instant::now();
        } else if last_progress.elapsed() > cfg.grace {
            prog.stalled.store(true, Relaxed);
            break;
        }
    }
    Ok(true)
}

/// Write a whole batch. When the socket is full, wait (up to `limit`), and
/// re-stamp the publish time of every message not yet sent: it leaves now,
/// not when it was encoded. Ok(false) if the batch is left partly written.
async fn write_restamping(
    wr: &mut Wr,
    buf: &mut [u8],
    ts_pos: &[usize],
    stop: &mut watch::Receiver<bool>,
    limit: Duration,
) -> std::io::Result<bool> {
    let mut off = 0;
    while off < buf.len() {
        match wr.try_write(&buf[off..]) {
            Ok(n) => off += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                tokio::select! {
                    r = tokio::time::timeout(limit, wr.writable()) => match r {
                        Ok(r) => r?,
                        Err(_) => return Ok(false),
                    },
                    _ = stop.changed() => return Ok(false),
                }
                let now = wall_ns().to_be_bytes();
                let first = ts_pos.partition_point(|&p| p < off);
                for &p in &ts_pos[first..] {
                    buf[p..p + 8].copy_from_slice(&now);
                }
            }
            Err(e) => return Err(e),
        }
    }
    // TLS: records rustls could not send yet must leave too.
    while !wr.is_flushed() {
        tokio::select! {
            r = tokio::time::timeout(limit, wr.writable()) => match r {
                Ok(r) => r?,
                Err(_) => return Ok(false),
            },
            _ = stop.changed() => return Ok(false),
        }
    }
    Ok(true)
}

async fn pub_reader(
    rd: Rd,
    fb: FrameBuf,
    flags: Arc<PubFlags>,
    prog: Arc<Progress>,
    window: u64,
) -> Result<()> {
    let r = pub_reader_inner(rd, fb, &flags, &prog, window).await;
    flags.reader_done.store(true, Release);
    flags.notify.notify_one();
    r
}

async fn pub_reader_inner(
    mut rd: Rd,
    mut fb: FrameBuf,
    flags: &PubFlags,
    prog: &Progress,
    window: u64,
) -> Result<()> {
    // resolved[t % window]: tag t (>= low) is confirmed or nacked. The writer
    // keeps next_tag - low <= window, so slots never collide.
    let mut resolved = vec![false; window.max(1) as usize];
    let mut low = 1u64;
    loop {
        let (mut confirmed, mut nacked) = (0u64, 0u64);
        while let Some(f) = fb.next_frame()? {
            if f.kind != FRAME_METHOD {
                continue;
            }
            match f.method_id() {
                Some((wire::CLASS_BASIC, m @ (wire::BASIC_ACK | wire::BASIC_NACK)))
                    if window > 0 =>
                {
                    let (tag, multiple) = wire::ack_fields(f.payload)?;
                    let next = flags.next_tag.load(Acquire);
                    if tag < low || tag >= next {
                        continue;
                    }
                    let from = if multiple { low } else { tag };
                    for t in from..=tag {
                        let slot = &mut resolved[(t % window) as usize];
                        if !*slot {
                            *slot = true;
                            if m == wire::BASIC_ACK {
                                confirmed += 1;
                            } else {
                                nacked += 1;
                            }
                        }
                    }
                    while low < next && resolved[(low % window) as usize] {
                        resolved[(low % window) as usize] = false;
                        low += 1;
                    }
                }
                Some((wire::CLASS_CONNECTION, wire::CONNECTION_BLOCKED)) => {
                    let reason = match conn::decode_method(f.bytes)? {
                        (_, AMQPClass::Connection(connection::AMQPMethod::Blocked(b))) => {
                            b.reason.to_string()
                        }
                        _ => String::new(),
                    };
                    eprintln!("producer connection blocked by the broker: {reason}");
                    flags.blocked.store(true, Release);
                    prog.blocked.store(true, Relaxed);
                    prog.blocked_ever.store(true, Relaxed);
                    prog.blocked_reason.lock().unwrap().get_or_insert(reason);
                }
                Some((wire::CLASS_CONNECTION, wire::CONNECTION_UNBLOCKED)) => {
                    flags.blocked.store(false, Release);
                    prog.blocked.store(false, Relaxed);
                    flags.notify.notify_one();
                }
                Some((wire::CLASS_CHANNEL, wire::CHANNEL_CLOSE_OK)) => {
                    flags.channel_closed.store(true, Release);
                    flags.notify.notify_one();
                }
                Some((wire::CLASS_CONNECTION, wire::CONNECTION_CLOSE_OK)) => return Ok(()),
                Some((wire::CLASS_CONNECTION, wire::CONNECTION_CLOSE)) => {
                    let (_, m) = conn::decode_method(f.bytes)?;
                    flags.server_closed.store(true, Release);
                    return Err(match m {
                        AMQPClass::Connection(connection::AMQPMethod::Close(c)) => {
                            Box::new(ServerClosed::from_connection(&c))
                        }
                        _ => BoxError::from("server closed the connection"),
                    });
                }
                Some((wire::CLASS_CHANNEL, wire::CHANNEL_CLOSE)) => {
                    let (_, m) = conn::decode_method(f.bytes)?;
                    return Err(match m {
                        AMQPClass::Channel(channel::AMQPMethod::Close(c)) => {
                            Box::new(ServerClosed::from_channel(&c))
                        }
                        _ => BoxError::from("server closed the channel"),
                    });
                }
                _ => {}
            }
        }
        if confirmed + nacked > 0 {
            prog.confirmed.fetch_add(confirmed, Relaxed);
            prog.nacked.fetch_add(nacked, Relaxed);
            flags.watermark.store(low, Release);
            flags.notify.notify_one();
        }
        rd.readable().await?;
        match rd.try_read(fb.read_space()) {
            Ok(0) => return Err("producer: connection closed by the server (EOF)".into()),
            Ok(n) => fb.commit(n),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_are_reproducible_and_cover_the_range() {
        let a = gen_delays(100_000, 5000, 7);
        assert_eq!(a, gen_delays(100_000, 5000, 7));
        assert_ne!(a, gen_delays(100_000, 5000, 8));
        assert_eq!(*a.iter().max().unwrap(), 5000);
        assert_eq!(*a.iter().min().unwrap(), 0);
        let mean = a.iter().map(|&v| v as f64).sum::<f64>() / a.len() as f64;
        assert!((mean - 2500.0).abs() < 30.0, "{mean}");
        assert!(gen_delays(10, 0, 1).iter().all(|&v| v == 0));
    }

    #[test]
    fn nearest_rank_quantiles() {
        let v: Vec<f32> = (1..=100).map(|i| i as f32).collect();
        assert_eq!(quantile(&v, 0.5), Some(50.0));
        assert_eq!(quantile(&v, 0.99), Some(99.0));
        assert_eq!(quantile(&v, 1.0), Some(100.0));
        assert_eq!(quantile(&v, 0.0), Some(1.0));
        assert_eq!(quantile(&[], 0.5), None);
    }

    #[test]
    fn analysis_counts_missing_early_and_lists_arrivals() {
        let delays = [5000, 100, 300];
        let lateness = [1.5f32, f32::NAN, -2.0];
        let mut s = Summary::default();
        analyse(&mut s, &lateness, &delays, 3);
        assert_eq!((s.received, s.missing), (2, 1));
        assert_eq!((s.early, s.early_over_1ms), (1, 1));
        assert_eq!(s.missing_examples, vec![[1, 100]]);
        assert_eq!(s.arrivals.len(), 3);
        assert_eq!(s.arrivals[0].arrival_ms, Some(5001.5));
        assert_eq!(s.arrivals[1].arrival_ms, None);
        assert_eq!(s.lateness_max_ms, Some(1.5));
        assert_eq!(s.lateness_min_ms, Some(-2.0));
    }

    #[test]
    fn proc_readers_see_this_process() {
        let pid = std::process::id();
        assert!(read_rss_kb(pid).unwrap() > 0);
        assert!(read_cpu_s(pid).is_some());
        assert_eq!(read_rss_kb(u32::MAX), None);
    }
}
