//! Consumer: one connection, one channel, one task.
//!
//! Frames are sliced out of a reusable buffer; per message the loop reads the
//! delivery tag and (for sampled messages) an 8-byte timestamp, nothing else.
//! Acks are batched with multiple=true.

use crate::conn::{self, Conn, Result, ServerClosed};
use crate::stats::{now_ns, Histogram, Shared};
use crate::uri::AmqpUri;
use crate::wire::{self, FRAME_BODY, FRAME_HEADER, FRAME_METHOD};
use amq_protocol::protocol::{channel, connection, AMQPClass};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

const CH: u16 = 1;

/// If deliveries pause with acks pending, flush them after this long so the
/// broker's unacked count does not sit at the batching threshold.
const ACK_IDLE: Duration = Duration::from_millis(10);

pub struct ConsumerConfig {
    pub uri: AmqpUri,
    pub queue: String,
    pub prefetch: u16,
    pub no_ack: bool,
    /// Send one multiple-ack every this many deliveries.
    pub ack_every: u64,
    /// Timestamps in bodies come from this process's clock (not true in
    /// consume-only mode, where another process published them).
    pub measure_latency: bool,
}

pub struct Consumer {
    id: usize,
    conn: Conn,
    cfg: Arc<ConsumerConfig>,
}

impl Consumer {
    pub async fn setup(id: usize, cfg: Arc<ConsumerConfig>) -> Result<Consumer> {
        let mut conn = Conn::open(&cfg.uri, &format!("lepus-perf-consumer-{id}")).await?;
        conn.channel_open(CH).await?;
        if !cfg.no_ack {
            conn.qos(CH, cfg.prefetch).await?;
        }
        Ok(Consumer { id, conn, cfg })
    }

    pub async fn run(self, shared: Arc<Shared>, stop: watch::Receiver<bool>) -> Result<()> {
        let Consumer { id, mut conn, cfg } = self;
        // Subscribe only now, at the start of the measurement, so a backlog is
        // not half-delivered during setup.
        conn.consume(CH, &cfg.queue, &format!("lepus-perf-{id}"), cfg.no_ack)
            .await?;
        let hist = cfg.measure_latency.then(|| shared.latency.register());
        let res = consume_loop(&mut conn, &cfg, &shared, hist.as_deref(), stop).await;
        match res {
            Ok(()) => conn.close(CH).await,
            Err(e) => {
                if e.downcast_ref::<ServerClosed>()
                    .is_some_and(|s| s.what == "channel")
                {
                    let _ = conn.send(0, conn::connection_close()).await;
                }
                Err(e)
            }
        }
    }
}

async fn consume_loop(
    conn: &mut Conn,
    cfg: &ConsumerConfig,
    shared: &Shared,
    hist: Option<&Histogram>,
    mut stop: watch::Receiver<bool>,
) -> Result<()> {
    let mut last_tag = 0u64;
    let ack_every = cfg.ack_every.max(1);
    let mut unacked: u64 = 0;
    let mut acked_tag: u64 = 0;
    // Set by a content header, cleared by the first body frame after it: that
    // frame holds the first 8 body bytes, where the timestamp is.
    let mut want_ts = false;
    let mut ack_buf = Vec::with_capacity(32);
    loop {
        let now = now_ns();
        let mut delivered = 0u64;
        while let Some(f) = conn.rbuf.next_frame()? {
            match f.kind {
                FRAME_BODY if want_ts => {
                    want_ts = false;
                    if let (Some(h), Some(b)) = (hist, f.payload.get(..8)) {
                        let ts = u64::from_be_bytes(b.try_into().unwrap());
                        // 0 = not a sampled message; ts > now = not ours.
                        if ts != 0 && ts <= now {
                            h.record(now - ts);
                        }
                    }
                }
                FRAME_HEADER => want_ts = true,
                FRAME_METHOD => match f.method_id() {
                    Some((wire::CLASS_BASIC, wire::BASIC_DELIVER)) => {
                        last_tag = wire::deliver_tag(f.payload)?;
                        delivered += 1;
                    }
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
                },
                _ => {}
            }
        }
        if delivered > 0 {
            shared.consumed.fetch_add(delivered, Relaxed);
            shared.last_delivery_ns.fetch_max(now, Relaxed);
            unacked += delivered;
        }
        if !cfg.no_ack && unacked >= ack_every {
            send_ack(conn, &mut ack_buf, last_tag).await?;
            acked_tag = last_tag;
            unacked = 0;
        }
        if shared.stopping() {
            // Ack what we counted so it is not redelivered, then let the
            // caller close.
            if !cfg.no_ack && last_tag > acked_tag {
                send_ack(conn, &mut ack_buf, last_tag).await?;
            }
            return Ok(());
        }

        // Try the read first: under load data is usually waiting and this
        // avoids any timer or select! machinery per read.
        match conn.stream.try_read(conn.rbuf.read_space()) {
            Ok(0) => return Err("consumer: connection closed by the server (EOF)".into()),
            Ok(n) => {
                conn.rbuf.commit(n);
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e.into()),
        }
        let ack_pending = !cfg.no_ack && last_tag > acked_tag;
        tokio::select! {
            r = conn.stream.readable() => r?,
            _ = tokio::time::sleep(ACK_IDLE), if ack_pending => {
                send_ack(conn, &mut ack_buf, last_tag).await?;
                acked_tag = last_tag;
                unacked = 0;
            }
            _ = stop.changed() => {}
        }
    }
}

async fn send_ack(conn: &mut Conn, buf: &mut Vec<u8>, tag: u64) -> Result<()> {
    buf.clear();
    wire::encode_ack(buf, CH, tag, true);
    conn.stream.write_all(buf).await?;
    Ok(())
}
