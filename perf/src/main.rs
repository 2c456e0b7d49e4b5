//! lepus-perf: a lean AMQP 0-9-1 load generator.
//!
//! In the spirit of RabbitMQ's PerfTest and lavinmqperf, but built so that the
//! client is never the bottleneck: a minimal raw client (see `wire`) writes
//! pre-encoded publishes in large batches and parses deliveries without
//! allocating. The run reports its own CPU time per message so that claim can
//! be checked on every run.

mod conn;
mod consumer;
mod producer;
mod stats;
mod stream;
mod timing;
mod uri;
mod wire;

use clap::Parser;
use conn::{Conn, Result};
use consumer::{Consumer, ConsumerConfig};
use producer::{Producer, ProducerConfig};
use serde::Serialize;
use stats::{now_ns, process_cpu_time, Shared, Snapshot};
use std::process::ExitCode;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use uri::AmqpUri;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "lepus-perf",
    version,
    about = "Lean AMQP 0-9-1 load generator (publish/consume throughput, latency, client CPU)"
)]
struct Args {
    /// Broker URI: amqp://user:pass@host:port/vhost (vhost percent-encoded);
    /// amqps://... for TLS, with --cacert
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    uri: String,
    /// CA certificates (PEM) trusted for an amqps URI
    #[arg(long)]
    cacert: Option<std::path::PathBuf>,
    /// Publishing connections
    #[arg(long, default_value_t = 1)]
    producers: usize,
    /// Consuming connections
    #[arg(long, default_value_t = 1)]
    consumers: usize,
    /// Message body size in bytes (>= 8 to measure end-to-end latency)
    #[arg(long, default_value_t = 16)]
    size: usize,
    /// Publisher confirms with at most WINDOW unconfirmed messages per producer
    /// (0 = off; default off, but 1000 in the ttl and delay modes)
    #[arg(long, value_name = "WINDOW")]
    confirm: Option<u64>,
    /// Publish with delivery mode 2 (persistent)
    #[arg(long)]
    persistent: bool,
    /// basic.qos prefetch count per consumer (0 = unlimited)
    #[arg(long, default_value_t = 1000)]
    prefetch: u16,
    /// Send one multiple=true ack every N deliveries (default: half the prefetch)
    #[arg(long, value_name = "N")]
    multi_ack_every: Option<u64>,
    /// Consume with auto-ack instead of batched manual acks
    #[arg(long)]
    no_ack: bool,
    /// Run time in seconds
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    duration: f64,
    /// Queue to declare, publish to and consume from
    #[arg(long, default_value = "lepus-perf")]
    queue: String,
    /// Declare the queue durable
    #[arg(long)]
    durable_queue: bool,
    /// Declare the queue as a quorum queue (x-queue-type quorum; implies durable)
    #[arg(long)]
    quorum: bool,
    /// Do not delete the queue at the end (implied by --publish-only)
    #[arg(long)]
    keep_queue: bool,
    /// Exchange to publish to, routing key = queue name; a non-default exchange
    /// must exist and gets the queue bound to it
    #[arg(long, default_value = "")]
    exchange: String,
    /// Publish rate limit per producer in msg/s (0 = unlimited)
    #[arg(long, value_name = "MSGS_PER_SEC", default_value_t = 0)]
    rate: u64,
    /// Stop each producer after N messages (with confirms: after N are confirmed)
    #[arg(long, value_name = "N")]
    pmessages: Option<u64>,
    /// Only consume; ends when no message arrived for 1 s, or at --duration
    #[arg(long, conflicts_with = "publish_only")]
    consume_only: bool,
    /// Only publish (e.g. with --pmessages to fill a queue for a drain test)
    #[arg(long)]
    publish_only: bool,
    /// Print a single JSON object at the end (progress lines go to stderr)
    #[arg(long)]
    json: bool,
    /// Bytes of pre-encoded publishes written per syscall
    #[arg(long, default_value_t = 65536)]
    batch_bytes: usize,
    /// Tokio worker threads (default: number of CPUs)
    #[arg(long)]
    threads: Option<usize>,
    /// Scenario: throughput (publish/consume load), ttl (per-message TTL +
    /// dead-lettering lateness) or delay (delayed-exchange lateness)
    #[arg(long, value_enum, default_value_t = Mode::Throughput)]
    mode: Mode,
    /// ttl/delay: messages to publish (default 100000 for ttl, 1000000 for delay)
    #[arg(long, value_name = "N")]
    messages: Option<u64>,
    /// ttl: each message's TTL is a random integer in [0, MAX] ms
    #[arg(long, value_name = "MS", default_value_t = 5000)]
    max_ttl: u32,
    /// delay: each message's x-delay is a random integer in [0, SPREAD] ms
    #[arg(long, value_name = "MS", default_value_t = 60000)]
    spread: u32,
    /// ttl/delay: seed of the random delays (same seed, same delays)
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// ttl/delay: publish just two messages, delay 5000 ms then 100 ms, and
    /// report when each arrives
    #[arg(long)]
    head_of_line: bool,
    /// delay: emulate the delays with per-message TTL on a holding queue
    /// dead-lettering to the target queue (for brokers without x-delayed-message)
    #[arg(long)]
    via_ttl: bool,
    /// ttl/delay: sample this broker process's RSS (peak and end) and CPU
    #[arg(long, value_name = "PID")]
    broker_pid: Option<u32>,
    /// ttl/delay: wait for messages until MAX (or SPREAD) + GRACE seconds
    /// after the last publish
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    grace: f64,
    /// ttl/delay: write one line per message (seq,delay_ms,lateness_ms) to PATH
    #[arg(long, value_name = "PATH")]
    lateness_csv: Option<std::path::PathBuf>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Throughput,
    Ttl,
    Delay,
}

#[derive(Serialize)]
struct Summary {
    published: u64,
    consumed: u64,
    confirmed: u64,
    nacked: u64,
    returned: u64,
    publish_rate: f64,
    consume_rate: f64,
    latency_p50_ms: Option<f64>,
    latency_p99_ms: Option<f64>,
    latency_max_ms: Option<f64>,
    latency_samples: u64,
    confirm_latency_p50_ms: Option<f64>,
    confirm_latency_p99_ms: Option<f64>,
    confirm_latency_max_ms: Option<f64>,
    /// Process CPU (user + system) during the measurement divided by
    /// max(published, consumed): what one message costs this client.
    client_cpu_us_per_msg: Option<f64>,
    client_cpu_s: f64,
    duration_s: f64,
    failed: bool,
}

fn main() -> ExitCode {
    stats::init_clock();
    let args = Args::parse();
    if let Some(ca) = &args.cacert {
        if let Err(e) = stream::init_tls(ca) {
            eprintln!("lepus-perf: {e}");
            return ExitCode::FAILURE;
        }
    }
    let timing = match timing_config(&args) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("lepus-perf: {e}");
            return ExitCode::FAILURE;
        }
    };
    if timing.is_none() {
        if args.producers == 0 && args.consumers == 0 {
            eprintln!("lepus-perf: nothing to do with 0 producers and 0 consumers");
            return ExitCode::FAILURE;
        }
        if args.duration <= 0.0 || !args.duration.is_finite() {
            eprintln!("lepus-perf: --duration must be positive");
            return ExitCode::FAILURE;
        }
    }
    let threads = args.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    });
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lepus-perf: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match timing {
        Some(cfg) => rt.block_on(timing::run(cfg)),
        None => rt.block_on(run(args)),
    };
    let code = match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("lepus-perf: {e}");
            ExitCode::FAILURE
        }
    };
    // Tasks stuck on a dead socket must not keep the process alive.
    rt.shutdown_timeout(Duration::from_secs(1));
    code
}

/// Confirm window of the ttl and delay modes: it bounds how long a message
/// can wait in socket buffers before the broker takes it (and starts its
/// clock), which would otherwise count as lateness.
const DEFAULT_TIMING_CONFIRM: u64 = 1000;

/// The timing scenario the arguments ask for, None for the throughput mode.
fn timing_config(args: &Args) -> Result<Option<timing::TimingConfig>> {
    let scenario = match (args.mode, args.via_ttl) {
        (Mode::Throughput, _) => {
            if args.head_of_line || args.via_ttl || args.messages.is_some() {
                return Err(
                    "--head-of-line, --via-ttl and --messages need --mode ttl or --mode delay"
                        .into(),
                );
            }
            return Ok(None);
        }
        (Mode::Ttl, true) => return Err("--via-ttl goes with --mode delay".into()),
        (Mode::Ttl, false) => timing::Scenario::Ttl,
        (Mode::Delay, false) => timing::Scenario::Delay,
        (Mode::Delay, true) => timing::Scenario::DelayViaTtl,
    };
    let (default_n, max_ms) = match args.mode {
        Mode::Ttl => (100_000, args.max_ttl),
        _ => (1_000_000, args.spread),
    };
    let messages = args.messages.unwrap_or(default_n);
    if messages == 0 {
        return Err("--messages must be at least 1".into());
    }
    if args.head_of_line && args.messages.is_some() {
        return Err("--head-of-line publishes exactly two messages; drop --messages".into());
    }
    if args.grace < 0.0 || !args.grace.is_finite() {
        return Err("--grace must be a non-negative number of seconds".into());
    }
    Ok(Some(timing::TimingConfig {
        uri: args.uri.parse()?,
        scenario,
        messages,
        max_ms,
        seed: args.seed,
        head_of_line: args.head_of_line,
        base: args.queue.clone(),
        durable: args.durable_queue,
        persistent: args.persistent,
        rate: args.rate,
        confirm_window: args.confirm.unwrap_or(DEFAULT_TIMING_CONFIRM),
        batch_bytes: args.batch_bytes,
        grace: Duration::from_secs_f64(args.grace),
        broker_pid: args.broker_pid,
        keep: args.keep_queue,
        json: args.json,
        csv: args.lateness_csv.clone(),
    }))
}

fn ms(ns: Option<u64>) -> Option<f64> {
    ns.map(|v| v as f64 / 1e6)
}

fn fmt_ms(ns: Option<u64>) -> String {
    match ns {
        Some(v) => format!("{:.3} ms", v as f64 / 1e6),
        None => "-".into(),
    }
}

/// Returns Ok(true) on success, Ok(false) if a task failed during the run.
async fn run(args: Args) -> Result<bool> {
    let uri: AmqpUri = args.uri.parse()?;
    let confirm = args.confirm.unwrap_or(0);
    let n_prod = if args.consume_only { 0 } else { args.producers };
    let n_cons = if args.publish_only { 0 } else { args.consumers };
    // Filling a queue and then deleting it would be pointless.
    let keep_queue = args.keep_queue || args.publish_only;
    let say = |line: String| {
        if args.json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    };

    let mut admin = Conn::open(&uri, "lepus-perf-setup").await?;
    admin.channel_open(1).await?;
    let backlog = if args.quorum {
        let mut a = amq_protocol::types::FieldTable::default();
        a.insert(
            "x-queue-type".into(),
            amq_protocol::types::AMQPValue::LongString("quorum".into()),
        );
        admin
            .queue_declare_with(1, &args.queue, true, false, a)
            .await?
    } else {
        admin
            .queue_declare(1, &args.queue, args.durable_queue)
            .await?
    };
    if !args.exchange.is_empty() {
        admin
            .queue_bind(1, &args.queue, &args.exchange, &args.queue)
            .await?;
    }
    say(format!(
        "lepus-perf: {}:{} vhost {:?}, queue {:?} ({} messages), {} producer(s), {} consumer(s), {} B{}{}",
        uri.host,
        uri.port,
        uri.vhost,
        args.queue,
        backlog,
        n_prod,
        n_cons,
        args.size,
        if args.persistent { ", persistent" } else { "" },
        if confirm > 0 {
            format!(", confirm window {confirm}")
        } else {
            String::new()
        }
    ));

    let pcfg = Arc::new(ProducerConfig {
        uri: uri.clone(),
        exchange: args.exchange.clone(),
        routing_key: args.queue.clone(),
        size: args.size,
        persistent: args.persistent,
        confirm_window: confirm,
        rate: args.rate,
        pmessages: args.pmessages,
        batch_bytes: args.batch_bytes.max(1),
        timestamps: n_cons > 0,
    });
    let ccfg = Arc::new(ConsumerConfig {
        uri: uri.clone(),
        queue: args.queue.clone(),
        prefetch: args.prefetch,
        no_ack: args.no_ack,
        ack_every: args.multi_ack_every.unwrap_or(if args.prefetch == 0 {
            500
        } else {
            (args.prefetch as u64 / 2).max(1)
        }),
        // Timestamps are relative to this process's start, so they only
        // mean something when this process published them.
        measure_latency: n_prod > 0,
    });

    // Connect everyone before the clock starts: handshakes are not load.
    let mut setups_c = Vec::new();
    for i in 0..n_cons {
        setups_c.push(tokio::spawn(Consumer::setup(i, ccfg.clone())));
    }
    let mut setups_p = Vec::new();
    for i in 0..n_prod {
        setups_p.push(tokio::spawn(Producer::setup(i, pcfg.clone())));
    }
    let mut consumers = Vec::new();
    for h in setups_c {
        consumers.push(h.await??);
    }
    let mut producers = Vec::new();
    for h in setups_p {
        producers.push(h.await??);
    }

    let shared = Arc::new(Shared::default());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let t0 = now_ns();
    let cpu0 = process_cpu_time();
    let mut tasks = Vec::new();
    for (i, c) in consumers.into_iter().enumerate() {
        let sh = shared.clone();
        let rx = stop_rx.clone();
        tasks.push(tokio::spawn(async move {
            let r = c.run(sh.clone(), rx).await;
            if let Err(e) = &r {
                eprintln!("consumer {i}: {e}");
                sh.failed.store(true, Relaxed);
            }
        }));
    }
    for (i, p) in producers.into_iter().enumerate() {
        let sh = shared.clone();
        let rx = stop_rx.clone();
        tasks.push(tokio::spawn(async move {
            let r = p.run(sh.clone(), rx).await;
            if let Err(e) = &r {
                eprintln!("producer {i}: {e}");
                sh.failed.store(true, Relaxed);
            }
        }));
    }

    // Reporter: wake every 100 ms to check the end conditions, print a line
    // every second.
    let duration_ns = (args.duration * 1e9) as u64;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut next_print = 1_000_000_000u64;
    let (mut last_pub, mut last_con, mut last_t) = (0u64, 0u64, t0);
    let mut last_lat = Snapshot::default();
    let mut last_conf = Snapshot::default();
    let mut drained = false;
    loop {
        tick.tick().await;
        let now = now_ns();
        let el = now - t0;
        if shared.failed.load(Relaxed) || el >= duration_ns {
            break;
        }
        let published = shared.published.load(Relaxed);
        let consumed = shared.consumed.load(Relaxed);
        let prods_done = n_prod == 0 || shared.producers_done.load(Relaxed) == n_prod as u64;
        if n_prod > 0 && n_cons == 0 && prods_done {
            break;
        }
        if n_cons > 0 && prods_done {
            if n_prod > 0 && consumed >= published {
                break;
            }
            let last = shared
                .last_delivery_ns
                .load(Relaxed)
                .max(shared.producers_done_ns.load(Relaxed))
                .max(t0);
            if now.saturating_sub(last) >= 1_000_000_000 {
                drained = true;
                break;
            }
        }
        if el >= next_print {
            let dt = (now - last_t) as f64 / 1e9;
            let mut line = format!(
                "t={}s published {:.0} msg/s, consumed {:.0} msg/s",
                next_print / 1_000_000_000,
                (published - last_pub) as f64 / dt,
                (consumed - last_con) as f64 / dt
            );
            let lat = shared.latency.snapshot();
            let d = lat.since(&last_lat);
            if d.count() > 0 {
                line += &format!(
                    ", latency p50 {} p99 {}",
                    fmt_ms(d.quantile(0.5)),
                    fmt_ms(d.quantile(0.99))
                );
            }
            let conf = shared.confirm_latency.snapshot();
            let d = conf.since(&last_conf);
            if d.count() > 0 {
                line += &format!(
                    ", confirm p50 {} p99 {}",
                    fmt_ms(d.quantile(0.5)),
                    fmt_ms(d.quantile(0.99))
                );
            }
            if shared.blocked.load(Relaxed) > 0 {
                line += " [BLOCKED by broker]";
            }
            say(line);
            (last_pub, last_con, last_t) = (published, consumed, now);
            (last_lat, last_conf) = (lat, conf);
            next_print += 1_000_000_000;
        }
    }

    let t1 = now_ns();
    let cpu = process_cpu_time().saturating_sub(cpu0);
    let published = shared.published.load(Relaxed);
    let consumed = shared.consumed.load(Relaxed);
    shared.stop.store(true, Relaxed);
    let _ = stop_tx.send(true);

    // Orderly close of every connection, bounded.
    let close_all = async {
        for t in tasks {
            let _ = t.await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(15), close_all)
        .await
        .is_err()
    {
        eprintln!("lepus-perf: some connections did not close in time");
        shared.failed.store(true, Relaxed);
    }
    if !keep_queue {
        if let Err(e) = admin.queue_delete(1, &args.queue).await {
            eprintln!("lepus-perf: deleting queue {:?}: {e}", args.queue);
        }
    }
    if let Err(e) = admin.close(1).await {
        eprintln!("lepus-perf: closing setup connection: {e}");
    }

    let failed = shared.failed.load(Relaxed);
    let duration_s = (t1 - t0) as f64 / 1e9;
    // Rates over the time the work actually took: a fill run ends when the
    // producers are done, a drain run at the last delivery (not 1 s later).
    let pub_time = if n_prod > 0 && shared.producers_done.load(Relaxed) == n_prod as u64 {
        (shared.producers_done_ns.load(Relaxed).saturating_sub(t0)) as f64 / 1e9
    } else {
        duration_s
    };
    let last_delivery = shared.last_delivery_ns.load(Relaxed);
    let con_time = if drained && last_delivery > t0 {
        (last_delivery - t0) as f64 / 1e9
    } else {
        duration_s
    };
    let rate = |n: u64, t: f64| if t > 0.0 { n as f64 / t } else { 0.0 };
    let lat = shared.latency.snapshot();
    let conf = shared.confirm_latency.snapshot();
    let msgs = published.max(consumed);
    let summary = Summary {
        published,
        consumed,
        confirmed: shared.confirmed.load(Relaxed),
        nacked: shared.nacked.load(Relaxed),
        returned: shared.returned.load(Relaxed),
        publish_rate: rate(published, pub_time),
        consume_rate: rate(consumed, con_time),
        latency_p50_ms: ms(lat.quantile(0.5)),
        latency_p99_ms: ms(lat.quantile(0.99)),
        latency_max_ms: ms(lat.max()),
        latency_samples: lat.count(),
        confirm_latency_p50_ms: ms(conf.quantile(0.5)),
        confirm_latency_p99_ms: ms(conf.quantile(0.99)),
        confirm_latency_max_ms: ms(conf.max()),
        client_cpu_us_per_msg: (msgs > 0).then(|| cpu.as_secs_f64() * 1e6 / msgs as f64),
        client_cpu_s: cpu.as_secs_f64(),
        duration_s,
        failed,
    };
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        print_summary(&summary, &lat, &conf, confirm > 0);
    }
    Ok(!failed)
}

fn print_summary(s: &Summary, lat: &Snapshot, conf: &Snapshot, confirms: bool) {
    println!("---- lepus-perf summary ----");
    println!("duration        {:.2} s", s.duration_s);
    println!(
        "published       {} msgs, {:.0} msg/s",
        s.published, s.publish_rate
    );
    if confirms {
        println!("confirmed       {} msgs, nacked {}", s.confirmed, s.nacked);
    }
    if s.returned > 0 {
        println!("returned        {} msgs", s.returned);
    }
    println!(
        "consumed        {} msgs, {:.0} msg/s",
        s.consumed, s.consume_rate
    );
    if lat.count() > 0 {
        println!(
            "latency         p50 {} p99 {} max {} ({} samples)",
            fmt_ms(lat.quantile(0.5)),
            fmt_ms(lat.quantile(0.99)),
            fmt_ms(lat.max()),
            lat.count()
        );
    }
    if conf.count() > 0 {
        println!(
            "confirm latency p50 {} p99 {} max {}",
            fmt_ms(conf.quantile(0.5)),
            fmt_ms(conf.quantile(0.99)),
            fmt_ms(conf.max())
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
