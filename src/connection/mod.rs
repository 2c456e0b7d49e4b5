//! One client connection: handshake ([`handshake`]), the read loop,
//! heartbeats, blocking on resource alarms, and the writer task that owns
//! the socket's write half ([`writer`]). Generic over the byte stream
//! ([`Transport`]): TCP and TLS share this code.
//!
//! The read loop decodes every complete frame in the buffer and handles it
//! before reading again, so a burst of publishes costs one read and, through
//! the shared outbox, one write. Errors on a channel close that channel;
//! errors at connection level (5xx) close the connection, as RabbitMQ does.
//!
//! A client's connection.close is handled in turn, after every frame before
//! it; the answer is close-ok, and the socket is the client's to close (we
//! close it after [`CLOSE_TIMEOUT`]), as RabbitMQ leaves it to the client.

use crate::broker::delivery::ConnShared;
use crate::broker::{Broker, ConnInfo};
use crate::channel::{Channel, ConnCtx};
use crate::error::{AmqpError, AmqpResult, ReplyCode};
use crate::protocol::{
    self, fast, put_method, RawFrame, FRAME_BODY, FRAME_HEADER, FRAME_HEARTBEAT, FRAME_METHOD,
};
use amq_protocol::protocol::{
    basic as bm, channel as chm, connection as cm, parse_class, AMQPClass,
};
use amq_protocol::types::AMQPValue;
use bytes::BytesMut;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::watch;

mod handshake;
mod transport;
mod writer;

use handshake::handshake;
pub use transport::{Stream, Transport};
use writer::write_loop;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a closed connection keeps its socket: after our connection.close
/// (waiting for close-ok), or after our close-ok (waiting for the client to
/// close the socket, as RabbitMQ leaves that to the client).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Read buffer: starts at READ_MIN; a read that fills it doubles the next
/// reservation up to READ_MAX, so a busy publisher gets large reads (one
/// syscall per batch of messages) and an idle connection keeps 4 KiB.
const READ_MIN: usize = 4096;
const READ_MAX: usize = 256 * 1024;

/// Serve one client connection over `socket` until it closes or `shutdown`
/// turns true.
pub async fn serve<T: Transport>(
    broker: Arc<Broker>,
    socket: T,
    peer: SocketAddr,
    mut shutdown: watch::Receiver<bool>,
) {
    // RabbitMQ names a connection "client_ip:port -> server_ip:port".
    let local = socket.local_addr();
    let ssl = socket.is_tls();
    let tls = socket.tls_info();
    let conn_id = broker.next_connection_id();
    let (mut rd, mut wr) = socket.into_split();
    // Buffers start small (idle connections cost little) and grow with traffic.
    let mut buf = BytesMut::with_capacity(READ_MIN);
    let hs = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        handshake(
            &broker,
            &mut rd,
            &mut wr,
            &mut buf,
            peer,
            tls.as_ref().and_then(|t| t.peer.as_ref()),
        ),
    )
    .await;
    let hs = match hs {
        Ok(Ok(Some(h))) => h,
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            tracing::info!(%peer, error = %e, "handshake failed");
            return;
        }
        Err(_) => {
            tracing::info!(%peer, "handshake timed out");
            return;
        }
    };
    let shared = Arc::new(ConnShared::new(conn_id));
    shared.frame_max.store(hs.frame_max, Ordering::Relaxed);
    shared
        .cancel_notify
        .store(hs.cancel_notify, Ordering::Relaxed);
    let user_provided_name = match hs.client_properties.inner().get("connection_name") {
        Some(AMQPValue::LongString(s)) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        Some(AMQPValue::ShortString(s)) => Some(s.as_str().to_owned()),
        _ => None,
    };
    let local = match local {
        Some(a) => a.to_string(),
        None => format!("{}:{}", broker.config.bind[0], broker.config.port),
    };
    let info = ConnInfo {
        id: conn_id,
        name: format!("{peer} -> {local}"),
        user: hs.user.clone(),
        vhost: hs.vhost.name.clone(),
        peer: peer.to_string(),
        channels: 0,
        connected_at: crate::clock::now_ms(),
        client_properties: hs.client_properties.clone(),
        user_provided_name,
        ssl,
        tls,
        auth_mechanism: hs.mechanism.clone(),
    };
    broker
        .connections
        .lock()
        .insert(conn_id, (info, shared.clone()));
    tracing::debug!(%peer, user = %hs.user, vhost = %hs.vhost.name, "connection open");
    let writer = tokio::spawn(write_loop(shared.clone(), wr, broker.store.clone()));
    let ctx = ConnCtx {
        broker: broker.clone(),
        vhost: hs.vhost.clone(),
        user: hs.user.clone(),
        conn: shared.clone(),
        conn_id,
    };
    let mut c = Conn {
        ctx,
        channels: HashMap::new(),
        channel_max: hs.channel_max,
        frame_max: hs.frame_max,
        heartbeat: hs.heartbeat,
        blocked_capability: hs.blocked_capability,
        closing: false,
        closed_by_client: false,
        done: false,
    };
    c.run(&mut rd, &mut buf, &mut shutdown).await;
    c.teardown();
    shared.closed.store(true, Ordering::SeqCst);
    shared.wake();
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
    broker.connection_closed(conn_id, &hs.vhost);
    tracing::debug!(%peer, "connection closed");
}

struct Conn {
    ctx: ConnCtx,
    channels: HashMap<u16, Channel>,
    channel_max: u16,
    frame_max: u32,
    heartbeat: u16,
    blocked_capability: bool,
    /// We sent connection.close and wait for close-ok.
    closing: bool,
    /// The client sent connection.close and we answered close-ok: the
    /// channels are gone, and we read (and drop) until the client closes
    /// the socket or [`CLOSE_TIMEOUT`] passes.
    closed_by_client: bool,
    done: bool,
}

/// Runs on every exit, a panic in a handler included: unacked messages go
/// back to their queues, consumers and exclusive queues go away. (After a
/// normal exit `serve` has done all this already; doing it again is a no-op.)
impl Drop for Conn {
    fn drop(&mut self) {
        self.teardown();
        self.ctx.conn.closed.store(true, Ordering::SeqCst);
        self.ctx.conn.wake();
        self.ctx
            .broker
            .connection_closed(self.ctx.conn_id, &self.ctx.vhost);
    }
}

impl Conn {
    async fn run(
        &mut self,
        rd: &mut (impl AsyncRead + Unpin),
        buf: &mut BytesMut,
        shutdown: &mut watch::Receiver<bool>,
    ) {
        let store = self.ctx.broker.store.clone();
        let mut synced = store.synced();
        let mut alarm = self.ctx.broker.alarm.subscribe();
        let hb = if self.heartbeat > 0 {
            Duration::from_secs(self.heartbeat as u64)
        } else {
            Duration::from_secs(3600)
        };
        // Tick at half the interval, as RabbitMQ: a heartbeat goes out on
        // every tick that saw no other traffic.
        let mut ticker = tokio::time::interval(hb / 2);
        ticker.tick().await;
        let mut last_read = Instant::now();
        let mut last_bytes_out = 0u64;
        let mut blocked_sent = false;
        let mut close_deadline: Option<Instant> = None;
        let mut want = READ_MIN;
        while !self.done {
            let wait_sync = self.channels.values().any(|c| c.waits_for_sync());
            let blocked =
                *alarm.borrow() && self.channels.values().any(|c| c.published) && !self.closing;
            if blocked && !blocked_sent {
                blocked_sent = true;
                if self.blocked_capability {
                    let reason = self.ctx.broker.alarm_reasons.lock().join(", ");
                    self.send0(AMQPClass::Connection(cm::AMQPMethod::Blocked(
                        cm::Blocked {
                            reason: reason.into(),
                        },
                    )));
                }
            } else if !blocked && blocked_sent {
                blocked_sent = false;
                if self.blocked_capability {
                    self.send0(AMQPClass::Connection(cm::AMQPMethod::Unblocked(
                        cm::Unblocked {},
                    )));
                }
            }
            if buf.capacity() - buf.len() < want / 2 {
                buf.reserve(want);
            }
            let spare = buf.capacity() - buf.len();
            tokio::select! {
                r = rd.read_buf(buf), if !blocked => {
                    if let Ok(n) = r {
                        want = if n >= spare { (want * 2).min(READ_MAX) } else { (want / 2).max(READ_MIN) };
                    }
                    match r {
                        Ok(0) | Err(_) => {
                            if !buf.is_empty() && !self.closing && !self.closed_by_client {
                                tracing::info!(conn = self.ctx.conn_id, "client closed the socket in the middle of a frame");
                            }
                            return;
                        }
                        Ok(_) => {
                            self.process(buf);
                            let s = *synced.borrow();
                            for ch in self.channels.values_mut() {
                                if ch.has_confirms() || ch.waits_for_sync() {
                                    ch.flush_confirms(&self.ctx, s);
                                }
                            }
                            if self.ctx.broker.store.has_pending_acks() {
                                self.ctx.conn.flush_store.store(true, Ordering::Relaxed);
                            }
                            if buf.is_empty() && buf.capacity() > 4 * want {
                                *buf = BytesMut::with_capacity(want);
                            }
                            // Flow control: let slow consumers catch up before reading more.
                            let pressured: Vec<_> = self.channels.values_mut().flat_map(|c| c.scratch.pressure.drain(..)).collect();
                            for q in pressured {
                                q.flow_wait(self.ctx.conn_id, (hb / 2).min(Duration::from_secs(1))).await;
                            }
                            // Set after any flow-control wait: not reading
                            // while we waited is not the client's silence.
                            last_read = Instant::now();
                        }
                    }
                }
                r = synced.changed(), if wait_sync => {
                    if r.is_err() { return; }
                    let s = *synced.borrow_and_update();
                    for ch in self.channels.values_mut() {
                        ch.flush_confirms(&self.ctx, s);
                    }
                }
                _ = alarm.changed() => {}
                _ = ticker.tick() => {
                    if blocked {
                        // We are not reading while blocked: the client's
                        // heartbeats wait in the socket, it is not silent.
                        last_read = Instant::now();
                    }
                    if self.heartbeat > 0 && !self.closed_by_client {
                        if last_read.elapsed() > hb * 2 {
                            tracing::warn!(conn = self.ctx.conn_id, "missed heartbeats from client, timeout: {}s", self.heartbeat);
                            return;
                        }
                        let out = self.ctx.conn.bytes_out.load(Ordering::Relaxed);
                        if out == last_bytes_out {
                            self.ctx.conn.send(protocol::put_heartbeat);
                            // The heartbeat's own 8 bytes are not traffic.
                            last_bytes_out = out + 8;
                        } else {
                            last_bytes_out = out;
                        }
                    }
                    if let Some(d) = close_deadline {
                        if Instant::now() > d { return; }
                    }
                }
                _ = self.ctx.conn.close_requested.notified() => {
                    let reason = self.ctx.conn.close_reason.lock().take().unwrap_or_default();
                    self.close_connection(AmqpError::new(ReplyCode::ConnectionForced, reason));
                }
                _ = shutdown.changed() => {
                    if !self.closing && !self.closed_by_client {
                        self.close_connection(AmqpError::new(ReplyCode::ConnectionForced, "broker forced connection closure with reason 'shutdown'"));
                    }
                    close_deadline = Some(Instant::now() + Duration::from_secs(1));
                    ticker = tokio::time::interval(Duration::from_millis(200));
                }
            }
            if (self.closing || self.closed_by_client) && close_deadline.is_none() {
                close_deadline = Some(Instant::now() + CLOSE_TIMEOUT);
                ticker = tokio::time::interval(Duration::from_millis(200));
            }
        }
    }

    fn send0(&self, m: AMQPClass) {
        self.ctx.conn.send(|out| put_method(out, 0, m));
    }

    fn process(&mut self, buf: &mut BytesMut) {
        while !self.done {
            let frame = match protocol::decode_frame(buf, self.frame_max) {
                Ok(Some(f)) => f,
                Ok(None) => return,
                Err(e) => {
                    self.close_connection(e);
                    buf.clear();
                    return;
                }
            };
            if let Err(e) = self.frame(frame) {
                if e.hard {
                    self.close_connection(e);
                    buf.clear();
                    return;
                }
            }
        }
    }

    /// Handle one frame. Channel errors are dealt with here; connection
    /// errors are returned.
    fn frame(&mut self, f: RawFrame) -> AmqpResult<()> {
        if self.closing || self.closed_by_client {
            // After connection.close only close-ok (or close) matters; as
            // RabbitMQ, a repeated close is answered with close-ok again.
            if f.kind == FRAME_METHOD && f.channel == 0 {
                if let Ok((_, AMQPClass::Connection(m))) = parse_class(&f.payload[..]) {
                    match m {
                        cm::AMQPMethod::CloseOk(_) => self.done = true,
                        cm::AMQPMethod::Close(_) => {
                            self.send0(AMQPClass::Connection(cm::AMQPMethod::CloseOk(
                                cm::CloseOk {},
                            )));
                            // We sent close and the client's crossed it: done.
                            self.done = self.closing;
                        }
                        _ => {}
                    }
                }
            }
            return Ok(());
        }
        match f.kind {
            FRAME_HEARTBEAT => {
                if f.channel != 0 {
                    return Err(AmqpError::unexpected_frame(
                        "heartbeat frame on a non-zero channel",
                    )
                    .hard());
                }
                Ok(())
            }
            FRAME_METHOD if f.channel == 0 => self.connection_method(&f),
            FRAME_METHOD => self.channel_method(f),
            FRAME_HEADER | FRAME_BODY => {
                if f.channel == 0 {
                    return Err(AmqpError::unexpected_frame(unexpected_frame_text(
                        f.kind, &f.payload,
                    ))
                    .hard());
                }
                let Some(ch) = self.channels.get_mut(&f.channel) else {
                    return Err(AmqpError::unexpected_frame(format!(
                        "content frame on channel {} that is not open",
                        f.channel
                    ))
                    .hard());
                };
                if ch.closing {
                    return Ok(());
                }
                let ctx = &self.ctx;
                let r = if f.kind == FRAME_HEADER {
                    ch.on_header(ctx, f.payload)
                } else {
                    ch.on_body(ctx, f.payload)
                };
                self.channel_result(f.channel, r)
            }
            _ => Err(AmqpError::frame_error(format!(
                "unexpected frame type {}",
                f.kind
            ))),
        }
    }

    fn connection_method(&mut self, f: &RawFrame) -> AmqpResult<()> {
        let m = decode_method(&f.payload)?;
        match m {
            AMQPClass::Connection(cm::AMQPMethod::Close(_)) => {
                // Everything the client sent before its close has been
                // handled (frames are handled in order). As RabbitMQ: close
                // the channels, delete the exclusive queues, answer close-ok
                // and leave closing the socket to the client.
                self.teardown();
                self.ctx
                    .broker
                    .connection_closed(self.ctx.conn_id, &self.ctx.vhost);
                self.send0(AMQPClass::Connection(cm::AMQPMethod::CloseOk(
                    cm::CloseOk {},
                )));
                self.closed_by_client = true;
                Ok(())
            }
            AMQPClass::Connection(cm::AMQPMethod::UpdateSecret(u)) => {
                self.update_secret(u.new_secret.as_bytes(), u.reason.as_str());
                Ok(())
            }
            // RabbitMQ 3.10 answers anything else on channel 0, a
            // connection method out of turn or another class's method, with
            // 504 (and the method's ids).
            other => Err(
                AmqpError::channel_error("unexpected method in connection state running")
                    .with_method(other.get_amqp_class_id(), other.get_amqp_method_id())
                    .hard(),
            ),
        }
    }

    /// connection.update-secret: re-authenticate the connection's user with
    /// the new secret and answer update-secret-ok. A secret that does not
    /// match is answered the same way, as RabbitMQ 3.10 does for users of
    /// its internal database (their authentication state never expires, so
    /// it does not check the new secret); the connection keeps the rights it
    /// was opened with.
    fn update_secret(&self, secret: &[u8], reason: &str) {
        let user = &self.ctx.user;
        let ok = std::str::from_utf8(secret)
            .ok()
            .and_then(|s| self.ctx.broker.authenticate(user, s))
            .is_some();
        if ok {
            tracing::info!(conn = self.ctx.conn_id, %user, %reason, "user updated secret");
        } else {
            tracing::warn!(
                conn = self.ctx.conn_id,
                %user,
                %reason,
                "update-secret: the new secret does not match the user's password; the connection keeps its authentication"
            );
        }
        self.send0(AMQPClass::Connection(cm::AMQPMethod::UpdateSecretOk(
            cm::UpdateSecretOk {},
        )));
    }

    fn channel_method(&mut self, f: RawFrame) -> AmqpResult<()> {
        let id = f.channel;
        // Hot path: publish and ack, decoded without allocating.
        if let Some(ch) = self.channels.get_mut(&id) {
            if !ch.closing {
                if let Some(p) = fast::decode_publish(&f.payload) {
                    if ch.expects_content() {
                        return Err(AmqpError::unexpected_frame(
                            "expected content header for class 60, got non content header frame instead",
                        ));
                    }
                    let r = ch.on_publish(&self.ctx, p);
                    return self.channel_result(id, r);
                }
                if let Some((tag, multiple)) = fast::decode_ack(&f.payload) {
                    if ch.expects_content() {
                        return Err(AmqpError::unexpected_frame(
                            "expected content header for class 60, got non content header frame instead",
                        ));
                    }
                    let r = ch.on_ack(tag, multiple);
                    return self.channel_result(id, r);
                }
            }
        }
        let m = decode_method(&f.payload)?;
        if let AMQPClass::Basic(bm::AMQPMethod::Qos(_)) = &m {
            // amq-protocol drops prefetch_size; RabbitMQ refuses a non-zero one.
            let size = f
                .payload
                .get(4..8)
                .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
            if size != 0 {
                return Err(
                    AmqpError::not_implemented(format!("prefetch_size!=0 ({size})"))
                        .with_method(60, 10)
                        .hard(),
                );
            }
        }
        // As RabbitMQ 3.10: channel_max limits how many channels are open,
        // not their numbers; any frame for a new channel counts.
        if self.channel_max != 0
            && self.channels.len() >= self.channel_max as usize
            && !self.channels.contains_key(&id)
        {
            return Err(AmqpError::not_allowed(format!(
                "number of channels opened ({}) has reached the negotiated channel_max ({})",
                self.channels.len(),
                self.channel_max
            ))
            .hard());
        }
        match self.channels.get_mut(&id) {
            None => match m {
                AMQPClass::Channel(chm::AMQPMethod::Open(_)) => {
                    // The user's channel limit over all its connections
                    // (RabbitMQ names no method in this close).
                    self.ctx.broker.check_channel_limit(&self.ctx.user)?;
                    self.channels
                        .insert(id, Channel::new(id, self.ctx.conn.clone()));
                    self.ctx.conn.send(|out| {
                        put_method(
                            out,
                            id,
                            AMQPClass::Channel(chm::AMQPMethod::OpenOk(chm::OpenOk {})),
                        )
                    });
                    self.update_channel_count();
                    Ok(())
                }
                // A close-ok for a channel we already forgot, or a late close: answer politely.
                AMQPClass::Channel(chm::AMQPMethod::CloseOk(_)) => Ok(()),
                other => Err(AmqpError::channel_error(format!(
                    "expected 'channel.open' for channel {id}"
                ))
                .with_method(other.get_amqp_class_id(), other.get_amqp_method_id())
                .hard()),
            },
            Some(ch) => {
                if ch.closing {
                    match m {
                        AMQPClass::Channel(chm::AMQPMethod::CloseOk(_)) => {
                            self.channels.remove(&id);
                            self.update_channel_count();
                        }
                        AMQPClass::Channel(chm::AMQPMethod::Close(_)) => {
                            self.ctx.conn.send(|out| {
                                put_method(
                                    out,
                                    id,
                                    AMQPClass::Channel(chm::AMQPMethod::CloseOk(chm::CloseOk {})),
                                )
                            });
                            self.channels.remove(&id);
                            self.update_channel_count();
                        }
                        _ => {}
                    }
                    return Ok(());
                }
                if ch.expects_content() {
                    return Err(AmqpError::unexpected_frame(
                        "expected content header for class 60, got non content header frame instead",
                    ));
                }
                match m {
                    AMQPClass::Channel(chm::AMQPMethod::Open(_)) => Err(AmqpError::channel_error(
                        format!("second 'channel.open' seen on channel {id}"),
                    )
                    .with_method(20, 10)
                    .hard()),
                    AMQPClass::Channel(chm::AMQPMethod::Close(_)) => {
                        let mut ch = self.channels.remove(&id).unwrap();
                        ch.close(&self.ctx);
                        self.ctx.conn.send(|out| {
                            put_method(
                                out,
                                id,
                                AMQPClass::Channel(chm::AMQPMethod::CloseOk(chm::CloseOk {})),
                            )
                        });
                        self.update_channel_count();
                        Ok(())
                    }
                    AMQPClass::Channel(chm::AMQPMethod::CloseOk(_)) => Ok(()),
                    m => {
                        let r = ch.handle(&self.ctx, m);
                        self.channel_result(id, r)
                    }
                }
            }
        }
    }

    /// A soft error closes the channel; a hard one is passed up.
    fn channel_result(&mut self, id: u16, r: AmqpResult<()>) -> AmqpResult<()> {
        let Err(e) = r else { return Ok(()) };
        if e.hard {
            return Err(e);
        }
        tracing::info!(conn = self.ctx.conn_id, channel = id, error = %e, "channel error");
        if let Some(ch) = self.channels.get_mut(&id) {
            ch.close(&self.ctx);
            ch.closing = true;
        }
        self.ctx.conn.send(|out| {
            put_method(
                out,
                id,
                AMQPClass::Channel(chm::AMQPMethod::Close(chm::Close {
                    reply_code: e.code as u16,
                    reply_text: e.reply_text().into(),
                    class_id: e.class_id,
                    method_id: e.method_id,
                })),
            )
        });
        Ok(())
    }

    fn close_connection(&mut self, e: AmqpError) {
        if self.closing || self.closed_by_client {
            return;
        }
        tracing::info!(conn = self.ctx.conn_id, error = %e, "closing connection");
        self.closing = true;
        self.teardown();
        self.send0(AMQPClass::Connection(cm::AMQPMethod::Close(cm::Close {
            reply_code: e.code as u16,
            reply_text: e.reply_text().into(),
            class_id: e.class_id,
            method_id: e.method_id,
        })));
    }

    fn teardown(&mut self) {
        for (_, mut ch) in self.channels.drain() {
            ch.close(&self.ctx);
        }
        self.ctx.broker.store.flush_acks();
    }

    fn update_channel_count(&self) {
        if let Some((info, _)) = self
            .ctx
            .broker
            .connections
            .lock()
            .get_mut(&self.ctx.conn_id)
        {
            info.channels = self.channels.len() as u32;
        }
        *self.ctx.conn.channels.lock() = self
            .channels
            .values()
            .map(|c| Arc::downgrade(&c.shared))
            .collect();
    }
}

/// Decode a method payload; unknown class or method ids are 540, malformed
/// arguments 502, as RabbitMQ answers them.
fn decode_method(payload: &[u8]) -> AmqpResult<AMQPClass> {
    match parse_class(payload) {
        Ok((&[], m)) => Ok(m),
        Ok(_) => {
            let (c, m) = fast::method_ids(payload).unwrap_or((0, 0));
            Err(
                AmqpError::frame_error(format!("cannot decode method {c}/{m}: trailing bytes"))
                    .with_method(c, m)
                    .hard(),
            )
        }
        Err(_) => {
            let (c, m) = fast::method_ids(payload).unwrap_or((0, 0));
            if known_method(c, m) {
                Err(
                    AmqpError::frame_error(format!("cannot decode arguments of method {c}/{m}"))
                        .with_method(c, m)
                        .hard(),
                )
            } else {
                Err(AmqpError::new(
                    ReplyCode::NotImplemented,
                    format!("unknown class or method {c}/{m}"),
                )
                .with_method(c, m)
                .hard())
            }
        }
    }
}

/// RabbitMQ's text for a frame it did not expect: "type 2, all octets =
/// <<0,60,...>>" (the payload as Erlang prints a binary, at most 16 bytes).
fn unexpected_frame_text(kind: u8, payload: &[u8]) -> String {
    let (which, shown) = if payload.len() <= 16 {
        ("all", payload)
    } else {
        ("first 16", &payload[..16])
    };
    let printable = !shown.is_empty() && shown.iter().all(|b| (0x20..0x7f).contains(b));
    let bin = if printable {
        format!(
            "<<\"{}\">>",
            String::from_utf8_lossy(shown)
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
        )
    } else {
        let n: Vec<String> = shown.iter().map(|b| b.to_string()).collect();
        format!("<<{}>>", n.join(","))
    };
    format!("type {kind}, {which} octets = {bin}")
}

fn known_method(class: u16, method: u16) -> bool {
    match class {
        10 => matches!(
            method,
            10 | 11 | 20 | 21 | 30 | 31 | 40 | 41 | 50 | 51 | 60 | 61 | 70 | 71
        ),
        20 => matches!(method, 10 | 11 | 20 | 21 | 40 | 41),
        30 => matches!(method, 10 | 11),
        40 => matches!(method, 10 | 11 | 20 | 21 | 30 | 31 | 40 | 51),
        50 => matches!(method, 10 | 11 | 20 | 21 | 30 | 31 | 40 | 41 | 50 | 51),
        60 => matches!(
            method,
            10 | 11
                | 20
                | 21
                | 30
                | 31
                | 40
                | 50
                | 60
                | 70
                | 71
                | 72
                | 80
                | 90
                | 100
                | 110
                | 111
                | 120
        ),
        85 => matches!(method, 10 | 11),
        90 => matches!(method, 10 | 11 | 20 | 21 | 30 | 31),
        _ => false,
    }
}
