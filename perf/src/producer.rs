//! Publisher: one connection, one channel, two tasks.
//!
//! The writer task copies a pre-encoded batch of publishes to the socket, one
//! syscall per batch; the only per-batch work is rewriting a few timestamps.
//! The reader task handles everything the broker sends back (confirms,
//! connection.blocked, closes) so the writer never stops to parse.

use crate::conn::{self, BoxError, Conn, Result, ServerClosed, CONTROL_TIMEOUT};
use crate::stats::{now_ns, Histogram, Shared};
use crate::stream::{Rd, Wr};
use crate::uri::AmqpUri;
use crate::wire::{self, FrameBuf, FRAME_METHOD};
use amq_protocol::protocol::{channel, connection, AMQPClass};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};

const CH: u16 = 1;

pub struct ProducerConfig {
    pub uri: AmqpUri,
    pub exchange: String,
    pub routing_key: String,
    pub size: usize,
    pub persistent: bool,
    /// Max unconfirmed messages; 0 = confirms off.
    pub confirm_window: u64,
    /// Messages per second, 0 = unlimited.
    pub rate: u64,
    pub pmessages: Option<u64>,
    pub batch_bytes: usize,
    /// Embed timestamps for end-to-end latency.
    pub timestamps: bool,
}

pub struct Producer {
    id: usize,
    conn: Conn,
    cfg: Arc<ProducerConfig>,
}

/// State shared by the writer and the reader of one producer.
struct PubState {
    /// Send time (now_ns) of tag t at ring[t % window]; 0 = resolved. A slot
    /// is only reused once its previous tag is below the watermark, because
    /// the writer keeps next_tag - watermark <= window.
    ring: Box<[AtomicU64]>,
    /// Next delivery tag the writer will use (tags start at 1). Published
    /// before the bytes hit the socket so an ack can never outrun it.
    next_tag: AtomicU64,
    /// Every tag below this is confirmed or nacked.
    watermark: AtomicU64,
    blocked: AtomicBool,
    channel_closed: AtomicBool,
    /// The reader has exited (error, EOF or connection.close-ok).
    reader_done: AtomicBool,
    /// The server sent connection.close: we owe it a close-ok.
    server_closed: AtomicBool,
    notify: Notify,
}

impl Producer {
    pub async fn setup(id: usize, cfg: Arc<ProducerConfig>) -> Result<Producer> {
        let mut conn = Conn::open(&cfg.uri, &format!("lepus-perf-producer-{id}")).await?;
        conn.channel_open(CH).await?;
        if cfg.confirm_window > 0 {
            conn.confirm_select(CH).await?;
        }
        Ok(Producer { id, conn, cfg })
    }

    pub async fn run(self, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) -> Result<()> {
        let Producer { id, conn, cfg } = self;
        let (stream, rbuf, frame_max) = conn.into_parts();
        let (rd, mut wr) = stream.into_split();
        let window = cfg.confirm_window;
        let st = Arc::new(PubState {
            ring: (0..window.max(1)).map(|_| AtomicU64::new(0)).collect(),
            next_tag: AtomicU64::new(1),
            watermark: AtomicU64::new(1),
            blocked: AtomicBool::new(false),
            channel_closed: AtomicBool::new(false),
            reader_done: AtomicBool::new(false),
            server_closed: AtomicBool::new(false),
            notify: Notify::new(),
        });
        let hist = (window > 0).then(|| shared.confirm_latency.register());
        let reader = tokio::spawn(read_loop(
            rd,
            rbuf,
            st.clone(),
            shared.clone(),
            hist,
            window,
        ));

        let res = write_loop(&cfg, frame_max, &mut wr, &st, &shared, &mut stop).await;

        // Teardown. Whatever happened, try to leave the broker in a clean state
        // and never wait longer than CONTROL_TIMEOUT per step.
        let stalled = matches!(res, Ok(false));
        if stalled || (st.blocked.load(Acquire) && !st.reader_done.load(Acquire)) {
            // The broker is not reading from us (resource alarm, or a batch
            // still half written at the end): a close handshake would only
            // time out, and after a partial frame it is impossible anyway.
            eprintln!(
                "producer {id}: broker not reading (blocked or flow-controlled) at the end; \
                 dropping the connection without a close handshake"
            );
            reader.abort();
            return res.map(|_| ());
        }
        let mut out = Vec::new();
        if st.server_closed.load(Acquire) {
            wire::encode_method(
                &mut out,
                0,
                AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
            );
            send_bounded(&mut wr, &out).await;
        } else if !st.reader_done.load(Acquire) {
            wire::encode_method(&mut out, CH, conn::channel_close());
            if send_bounded(&mut wr, &out).await {
                wait_until(&st, CONTROL_TIMEOUT, || {
                    st.channel_closed.load(Acquire) || st.reader_done.load(Acquire)
                })
                .await;
            }
            out.clear();
            wire::encode_method(&mut out, 0, conn::connection_close());
            send_bounded(&mut wr, &out).await;
        } else {
            // The reader died (channel error, EOF): say goodbye best effort.
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
}

/// write_all that gives up after CONTROL_TIMEOUT; false if it did not finish.
async fn send_bounded(wr: &mut Wr, bytes: &[u8]) -> bool {
    matches!(
        tokio::time::timeout(CONTROL_TIMEOUT, wr.write_all(bytes)).await,
        Ok(Ok(()))
    )
}

/// How long a batch may still take to leave once the run is over.
const STOP_GRACE: Duration = Duration::from_secs(1);

/// Write a whole batch. The common case is one successful try_write (no
/// timer, no select!). If the socket is full we wait for it, but once the run
/// is stopping only for STOP_GRACE: returns Ok(false) if the batch was left
/// partly written because the broker stopped reading.
async fn write_batch(
    wr: &mut Wr,
    buf: &[u8],
    stop: &mut watch::Receiver<bool>,
) -> std::io::Result<bool> {
    let mut off = 0;
    while off < buf.len() {
        match wr.try_write(&buf[off..]) {
            Ok(n) => off += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if *stop.borrow() {
                    match tokio::time::timeout(STOP_GRACE, wr.writable()).await {
                        Ok(r) => r?,
                        Err(_) => return Ok(false),
                    }
                } else {
                    tokio::select! {
                        r = wr.writable() => r?,
                        _ = stop.changed() => {}
                    }
                }
            }
            Err(e) => return Err(e),
        }
    }
    // TLS: records rustls could not send yet must leave too.
    while !wr.is_flushed() {
        if *stop.borrow() {
            match tokio::time::timeout(STOP_GRACE, wr.writable()).await {
                Ok(r) => r?,
                Err(_) => return Ok(false),
            }
        } else {
            tokio::select! {
                r = wr.writable() => r?,
                _ = stop.changed() => {}
            }
        }
    }
    Ok(true)
}

/// Wait (polling at most every 50 ms, so shutdown is never missed) until
/// `cond` holds, or `limit` passes.
async fn wait_until(st: &PubState, limit: Duration, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !cond() {
        if tokio::time::Instant::now() >= deadline {
            return;
        }
        let _ = tokio::time::timeout(Duration::from_millis(50), st.notify.notified()).await;
    }
}

async fn write_loop(
    cfg: &ProducerConfig,
    frame_max: u32,
    wr: &mut Wr,
    st: &PubState,
    shared: &Shared,
    stop: &mut watch::Receiver<bool>,
) -> Result<bool> {
    let one = wire::encode_publish(
        CH,
        &cfg.exchange,
        &cfg.routing_key,
        cfg.size,
        cfg.persistent,
        frame_max,
    );
    let msg_len = one.bytes.len();
    // K copies of the message back to back: a batch of n messages is simply
    // the first n * msg_len bytes.
    let per_batch = (cfg.batch_bytes / msg_len).max(1);
    let mut batch = Vec::with_capacity(per_batch * msg_len);
    for _ in 0..per_batch {
        batch.extend_from_slice(&one.bytes);
    }
    // Timestamp at most 16 messages per batch (the others carry 0 and are not
    // measured): enough samples for percentiles, negligible cost.
    let stride = per_batch.div_ceil(16);
    let ts_slots: Vec<usize> = match (cfg.timestamps, one.ts_offset) {
        (true, Some(off)) => (0..per_batch)
            .step_by(stride)
            .map(|i| i * msg_len + off)
            .collect(),
        _ => Vec::new(),
    };

    let window = cfg.confirm_window;
    let limit = cfg.pmessages.unwrap_or(u64::MAX);
    let mut started = now_ns();
    let mut sent: u64 = 0;
    let mut next_tag: u64 = 1;

    while !shared.stopping() && !st.reader_done.load(Relaxed) {
        if sent >= limit {
            break;
        }
        if st.blocked.load(Acquire) {
            let _ = tokio::time::timeout(Duration::from_millis(50), st.notify.notified()).await;
            continue;
        }
        let mut n = (per_batch as u64).min(limit - sent);
        if window > 0 {
            let outstanding = next_tag - st.watermark.load(Acquire);
            if outstanding >= window {
                let _ = tokio::time::timeout(Duration::from_millis(50), st.notify.notified()).await;
                continue;
            }
            n = n.min(window - outstanding);
        }
        if cfg.rate > 0 {
            let elapsed = now_ns() - started;
            let mut due = (cfg.rate as u128 * elapsed as u128 / 1_000_000_000) as u64 + 1;
            // After a stall (blocked, slow broker) do not burst to catch up:
            // allow at most 100 ms worth of backlog, drop the rest.
            let max_burst = (cfg.rate / 10).max(1);
            if due > sent + max_burst {
                let skip = due - sent - max_burst;
                started += (skip as u128 * 1_000_000_000 / cfg.rate as u128) as u64;
                due = sent + max_burst;
            }
            if due <= sent {
                // Sleep until the next message is due (tokio timers have 1 ms
                // resolution, so high rates are sent in small bursts).
                let next_at = (sent as u128 * 1_000_000_000 / cfg.rate as u128) as u64;
                let wait = next_at.saturating_sub(elapsed).max(100_000);
                tokio::time::sleep(Duration::from_nanos(wait)).await;
                continue;
            }
            n = n.min(due - sent);
        }

        let n = n as usize;
        let now = now_ns();
        for &off in &ts_slots {
            if off >= n * msg_len {
                break;
            }
            batch[off..off + 8].copy_from_slice(&now.to_be_bytes());
        }
        if window > 0 {
            for t in next_tag..next_tag + n as u64 {
                st.ring[(t % window) as usize].store(now, Relaxed);
            }
            st.next_tag.store(next_tag + n as u64, Release);
        }
        next_tag += n as u64;
        let complete = write_batch(wr, &batch[..n * msg_len], stop).await?;
        if !complete {
            return Ok(false);
        }
        sent += n as u64;
        shared.published.fetch_add(n as u64, Relaxed);
    }

    if sent >= limit && cfg.pmessages.is_some() {
        // Done: with confirms, "done" means every message is confirmed, so a
        // fill run only ends once the broker has really taken the messages.
        if window > 0 {
            while !shared.stopping() && !st.reader_done.load(Relaxed) {
                if st.watermark.load(Acquire) >= next_tag {
                    break;
                }
                let _ = tokio::time::timeout(Duration::from_millis(50), st.notify.notified()).await;
            }
        }
        shared.producers_done.fetch_add(1, Relaxed);
        shared.producers_done_ns.fetch_max(now_ns(), Relaxed);
    }
    Ok(true)
}

async fn read_loop(
    rd: Rd,
    fb: FrameBuf,
    st: Arc<PubState>,
    shared: Arc<Shared>,
    hist: Option<Arc<Histogram>>,
    window: u64,
) -> Result<()> {
    let r = read_loop_inner(rd, fb, &st, &shared, hist.as_deref(), window).await;
    st.reader_done.store(true, Release);
    st.notify.notify_one();
    r
}

async fn read_loop_inner(
    mut rd: Rd,
    mut fb: FrameBuf,
    st: &PubState,
    shared: &Shared,
    hist: Option<&Histogram>,
    window: u64,
) -> Result<()> {
    // Lowest unresolved tag, mirrored to st.watermark after each read.
    let mut low: u64 = 1;
    loop {
        let now = now_ns();
        let (mut confirmed, mut nacked) = (0u64, 0u64);
        let mut wake = false;
        while let Some(f) = fb.next_frame()? {
            if f.kind != FRAME_METHOD {
                // Heartbeats, or content of a basic.return: nothing to do.
                continue;
            }
            match f.method_id() {
                Some((wire::CLASS_BASIC, m @ (wire::BASIC_ACK | wire::BASIC_NACK)))
                    if window > 0 =>
                {
                    let (tag, multiple) = wire::ack_fields(f.payload)?;
                    let ok = m == wire::BASIC_ACK;
                    let next = st.next_tag.load(Acquire);
                    if tag < low || tag >= next {
                        // Duplicate or bogus: ignore rather than corrupt the ring.
                        continue;
                    }
                    let from = if multiple { low } else { tag };
                    for t in from..=tag {
                        let slot = &st.ring[(t % window) as usize];
                        let sent_at = slot.load(Relaxed);
                        if sent_at != 0 {
                            slot.store(0, Relaxed);
                            if ok {
                                confirmed += 1;
                                if let Some(h) = hist {
                                    h.record(now.saturating_sub(sent_at));
                                }
                            } else {
                                nacked += 1;
                            }
                        }
                    }
                    while low < next && st.ring[(low % window) as usize].load(Relaxed) == 0 {
                        low += 1;
                    }
                    wake = true;
                }
                Some((wire::CLASS_BASIC, wire::BASIC_RETURN)) => {
                    shared.returned.fetch_add(1, Relaxed);
                }
                Some((wire::CLASS_CONNECTION, wire::CONNECTION_BLOCKED)) => {
                    let reason = match conn::decode_method(f.bytes)? {
                        (_, AMQPClass::Connection(connection::AMQPMethod::Blocked(b))) => {
                            b.reason.to_string()
                        }
                        _ => String::new(),
                    };
                    eprintln!("producer connection blocked by the broker: {reason}");
                    st.blocked.store(true, Release);
                    shared.blocked.fetch_add(1, Relaxed);
                }
                Some((wire::CLASS_CONNECTION, wire::CONNECTION_UNBLOCKED)) => {
                    if st.blocked.swap(false, AcqRel) {
                        shared.blocked.fetch_sub(1, Relaxed);
                    }
                    wake = true;
                }
                Some((wire::CLASS_CHANNEL, wire::CHANNEL_CLOSE_OK)) => {
                    st.channel_closed.store(true, Release);
                    wake = true;
                }
                Some((wire::CLASS_CONNECTION, wire::CONNECTION_CLOSE_OK)) => return Ok(()),
                Some((wire::CLASS_CONNECTION, wire::CONNECTION_CLOSE)) => {
                    let (_, m) = conn::decode_method(f.bytes)?;
                    st.server_closed.store(true, Release);
                    return Err(match m {
                        AMQPClass::Connection(connection::AMQPMethod::Close(c)) => {
                            Box::new(ServerClosed::from_connection(&c))
                        }
                        _ => BoxError::from("server closed the connection"),
                    });
                }
                Some((wire::CLASS_CHANNEL, wire::CHANNEL_CLOSE)) => {
                    // A channel error (e.g. 404 no exchange) ends the run; the
                    // writer's teardown closes the connection, which implies
                    // the channel's close-ok.
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
        if wake {
            if window > 0 {
                st.watermark.store(low, Release);
                shared.confirmed.fetch_add(confirmed, Relaxed);
                shared.nacked.fetch_add(nacked, Relaxed);
            }
            st.notify.notify_one();
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
