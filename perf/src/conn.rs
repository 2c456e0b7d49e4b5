//! Connection setup and control methods (the slow path).
//!
//! Everything before and after the measurement goes through amq-protocol's
//! typed frames: correctness matters there, speed does not. The receive
//! buffer is handed over to the hot loops afterwards so no byte that already
//! arrived is lost.

use crate::stream::Stream;
use crate::uri::AmqpUri;
use crate::wire::{self, FrameBuf, FRAME_HEARTBEAT, FRAME_METHOD};
use amq_protocol::frame::{parse_frame, AMQPFrame};
use amq_protocol::protocol::{basic, channel, confirm, connection, exchange, queue, AMQPClass};
use amq_protocol::types::{AMQPValue, FieldTable, LongString};
use std::fmt;
use std::time::Duration;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Result<T> = std::result::Result<T, BoxError>;

/// Our frame_max cap: large enough that 1 MiB bodies need few frames, small
/// enough to keep the receive buffer (twice this) cache friendly.
pub const CLIENT_FRAME_MAX: u32 = 131_072;
/// Every setup/teardown step must finish within this, so a silent broker
/// cannot hang the run.
pub const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);

/// The broker closed the connection or a channel on us.
#[derive(Debug)]
pub struct ServerClosed {
    pub what: &'static str,
    pub code: u16,
    pub text: String,
    pub class_id: u16,
    pub method_id: u16,
}

impl fmt::Display for ServerClosed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "server closed the {}: {} {}",
            self.what, self.code, self.text
        )?;
        if self.class_id != 0 {
            write!(f, " (in method {}.{})", self.class_id, self.method_id)?;
        }
        Ok(())
    }
}

impl std::error::Error for ServerClosed {}

impl ServerClosed {
    pub fn from_connection(c: &connection::Close) -> Self {
        ServerClosed {
            what: "connection",
            code: c.reply_code,
            text: c.reply_text.to_string(),
            class_id: c.class_id,
            method_id: c.method_id,
        }
    }

    pub fn from_channel(c: &channel::Close) -> Self {
        ServerClosed {
            what: "channel",
            code: c.reply_code,
            text: c.reply_text.to_string(),
            class_id: c.class_id,
            method_id: c.method_id,
        }
    }
}

fn err(msg: impl Into<String>) -> BoxError {
    msg.into().into()
}

/// Decode a complete frame (as sliced by FrameBuf) into a typed method.
pub fn decode_method(bytes: &[u8]) -> Result<(u16, AMQPClass)> {
    match parse_frame(bytes) {
        Ok((_, AMQPFrame::Method(ch, m))) => Ok((ch, m)),
        Ok((_, other)) => Err(err(format!("expected a method frame, got {other}"))),
        Err(e) => Err(err(format!("cannot decode frame: {e:?}"))),
    }
}

pub struct Conn {
    pub stream: Stream,
    pub rbuf: FrameBuf,
    pub frame_max: u32,
    wbuf: Vec<u8>,
}

impl Conn {
    /// TCP connect + full AMQP 0-9-1 handshake up to connection.open-ok.
    pub async fn open(uri: &AmqpUri, name: &str) -> Result<Conn> {
        tokio::time::timeout(CONTROL_TIMEOUT, Self::open_inner(uri, name))
            .await
            .map_err(|_| {
                err(format!(
                    "{name}: handshake with {}:{} timed out",
                    uri.host, uri.port
                ))
            })?
    }

    async fn open_inner(uri: &AmqpUri, name: &str) -> Result<Conn> {
        let stream = Stream::connect(&uri.host, uri.port, uri.tls)
            .await
            .map_err(|e| err(format!("connect to {}:{}: {e}", uri.host, uri.port)))?;
        let mut c = Conn {
            stream,
            rbuf: FrameBuf::new(2 * CLIENT_FRAME_MAX as usize),
            frame_max: CLIENT_FRAME_MAX,
            wbuf: Vec::with_capacity(4096),
        };
        c.stream.write_all(b"AMQP\x00\x00\x09\x01").await?;

        let start = match c.recv_method().await? {
            (0, AMQPClass::Connection(connection::AMQPMethod::Start(s))) => s,
            (_, m) => return Err(err(format!("expected connection.start, got {m:?}"))),
        };
        let mechanisms = String::from_utf8_lossy(start.mechanisms.as_bytes()).to_string();
        if !mechanisms.split(' ').any(|m| m == "PLAIN") {
            return Err(err(format!(
                "server does not offer PLAIN auth (offers {mechanisms:?})"
            )));
        }
        let mut caps = FieldTable::default();
        for cap in [
            "publisher_confirms",
            "consumer_cancel_notify",
            "basic.nack",
            "connection.blocked",
            // Without this RabbitMQ drops the socket on bad credentials
            // instead of telling us why with connection.close.
            "authentication_failure_close",
        ] {
            caps.insert(cap.into(), AMQPValue::Boolean(true));
        }
        let mut props = FieldTable::default();
        props.insert("product".into(), long_str("lepus-perf"));
        props.insert("version".into(), long_str(env!("CARGO_PKG_VERSION")));
        props.insert("platform".into(), long_str("Rust/tokio"));
        props.insert("connection_name".into(), long_str(name));
        props.insert("capabilities".into(), AMQPValue::FieldTable(caps));
        let mut response = Vec::with_capacity(uri.user.len() + uri.password.len() + 2);
        response.push(0);
        response.extend_from_slice(uri.user.as_bytes());
        response.push(0);
        response.extend_from_slice(uri.password.as_bytes());
        c.send(
            0,
            AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties: props,
                mechanism: "PLAIN".into(),
                response: LongString::from(response),
                locale: "en_US".into(),
            })),
        )
        .await?;

        let tune = match c.recv_method().await? {
            (_, AMQPClass::Connection(connection::AMQPMethod::Tune(t))) => t,
            (_, AMQPClass::Connection(connection::AMQPMethod::Secure(_))) => {
                return Err(err(
                    "server asked for a SASL challenge; only PLAIN is supported",
                ))
            }
            (_, m) => return Err(err(format!("expected connection.tune, got {m:?}"))),
        };
        // 0 means "no limit" from the server.
        let frame_max = if tune.frame_max == 0 {
            CLIENT_FRAME_MAX
        } else {
            tune.frame_max.min(CLIENT_FRAME_MAX)
        };
        c.frame_max = frame_max;
        c.send(
            0,
            AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                channel_max: tune.channel_max,
                frame_max,
                // Heartbeats off: runs are short and bounded, and a heartbeat
                // timer would only add wakeups to the hot loops.
                heartbeat: 0,
            })),
        )
        .await?;
        c.rbuf.set_max_frame(frame_max as usize);
        c.send(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
                virtual_host: uri.vhost.as_str().into(),
            })),
        )
        .await?;
        match c.recv_method().await? {
            (_, AMQPClass::Connection(connection::AMQPMethod::OpenOk(_))) => Ok(c),
            (_, m) => Err(err(format!("expected connection.open-ok, got {m:?}"))),
        }
    }

    /// Hand the socket and any already-received bytes to a hot loop.
    pub fn into_parts(self) -> (Stream, FrameBuf, u32) {
        (self.stream, self.rbuf, self.frame_max)
    }

    pub async fn send(&mut self, channel: u16, m: AMQPClass) -> Result<()> {
        self.wbuf.clear();
        wire::encode_method(&mut self.wbuf, channel, m);
        self.stream.write_all(&self.wbuf).await?;
        Ok(())
    }

    /// Next method frame. Heartbeats are skipped; content frames only appear
    /// here for messages we are discarding (during close), so they are too.
    /// A server connection.close or channel.close is answered and returned as
    /// an error.
    pub async fn recv_method(&mut self) -> Result<(u16, AMQPClass)> {
        loop {
            if let Some(f) = self.rbuf.next_frame()? {
                match f.kind {
                    FRAME_METHOD => {}
                    FRAME_HEARTBEAT | wire::FRAME_HEADER | wire::FRAME_BODY => continue,
                    k => {
                        return Err(err(format!(
                            "unknown frame type {k} on channel {}",
                            f.channel
                        )))
                    }
                }
                let (ch, m) = decode_method(f.bytes)?;
                match m {
                    AMQPClass::Connection(connection::AMQPMethod::Close(c)) => {
                        let _ = self
                            .send(
                                0,
                                AMQPClass::Connection(connection::AMQPMethod::CloseOk(
                                    connection::CloseOk {},
                                )),
                            )
                            .await;
                        return Err(Box::new(ServerClosed::from_connection(&c)));
                    }
                    AMQPClass::Channel(channel::AMQPMethod::Close(c)) => {
                        let _ = self
                            .send(
                                ch,
                                AMQPClass::Channel(channel::AMQPMethod::CloseOk(
                                    channel::CloseOk {},
                                )),
                            )
                            .await;
                        return Err(Box::new(ServerClosed::from_channel(&c)));
                    }
                    m => return Ok((ch, m)),
                }
            }
            self.fill().await?;
        }
    }

    async fn fill(&mut self) -> Result<()> {
        loop {
            self.stream.readable().await?;
            match self.stream.try_read(self.rbuf.read_space()) {
                Ok(0) => return Err(err("connection closed by the server (EOF)")),
                Ok(n) => {
                    self.rbuf.commit(n);
                    return Ok(());
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Send a method and wait for the reply that `want` accepts.
    pub async fn call<T>(
        &mut self,
        channel: u16,
        m: AMQPClass,
        want: impl Fn(AMQPClass) -> Option<T>,
    ) -> Result<T> {
        let what = format!("{m:?}");
        let fut = async {
            self.send(channel, m).await?;
            loop {
                let (_, reply) = self.recv_method().await?;
                if let Some(t) = want(reply) {
                    return Ok(t);
                }
            }
        };
        tokio::time::timeout(CONTROL_TIMEOUT, fut)
            .await
            .map_err(|_| err(format!("no reply to {what}")))?
    }

    pub async fn channel_open(&mut self, ch: u16) -> Result<()> {
        self.call(
            ch,
            AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
            |m| matches!(m, AMQPClass::Channel(channel::AMQPMethod::OpenOk(_))).then_some(()),
        )
        .await
    }

    pub async fn confirm_select(&mut self, ch: u16) -> Result<()> {
        self.call(
            ch,
            AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select {
                nowait: false,
            })),
            |m| matches!(m, AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(_))).then_some(()),
        )
        .await
    }

    pub async fn qos(&mut self, ch: u16, prefetch: u16) -> Result<()> {
        self.call(
            ch,
            AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
                prefetch_count: prefetch,
                global: false,
            })),
            |m| matches!(m, AMQPClass::Basic(basic::AMQPMethod::QosOk(_))).then_some(()),
        )
        .await
    }

    /// Declare the queue; returns its current message count.
    pub async fn queue_declare(&mut self, ch: u16, name: &str, durable: bool) -> Result<u32> {
        self.queue_declare_with(ch, name, durable, false, FieldTable::default())
            .await
    }

    /// queue.declare with arguments, or passive (a 404 closes the channel);
    /// returns the queue's message count.
    pub async fn queue_declare_with(
        &mut self,
        ch: u16,
        name: &str,
        durable: bool,
        passive: bool,
        arguments: FieldTable,
    ) -> Result<u32> {
        self.call(
            ch,
            AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                queue: name.into(),
                passive,
                durable,
                exclusive: false,
                auto_delete: false,
                nowait: false,
                arguments,
            })),
            |m| match m {
                AMQPClass::Queue(queue::AMQPMethod::DeclareOk(ok)) => Some(ok.message_count),
                _ => None,
            },
        )
        .await
    }

    pub async fn queue_bind(&mut self, ch: u16, q: &str, exchange: &str, key: &str) -> Result<()> {
        self.call(
            ch,
            AMQPClass::Queue(queue::AMQPMethod::Bind(queue::Bind {
                queue: q.into(),
                exchange: exchange.into(),
                routing_key: key.into(),
                nowait: false,
                arguments: FieldTable::default(),
            })),
            |m| matches!(m, AMQPClass::Queue(queue::AMQPMethod::BindOk(_))).then_some(()),
        )
        .await
    }

    pub async fn exchange_declare(
        &mut self,
        ch: u16,
        name: &str,
        kind: &str,
        durable: bool,
        arguments: FieldTable,
    ) -> Result<()> {
        self.call(
            ch,
            AMQPClass::Exchange(exchange::AMQPMethod::Declare(exchange::Declare {
                exchange: name.into(),
                kind: kind.into(),
                passive: false,
                durable,
                auto_delete: false,
                internal: false,
                nowait: false,
                arguments,
            })),
            |m| matches!(m, AMQPClass::Exchange(exchange::AMQPMethod::DeclareOk(_))).then_some(()),
        )
        .await
    }

    pub async fn exchange_delete(&mut self, ch: u16, name: &str) -> Result<()> {
        self.call(
            ch,
            AMQPClass::Exchange(exchange::AMQPMethod::Delete(exchange::Delete {
                exchange: name.into(),
                if_unused: false,
                nowait: false,
            })),
            |m| matches!(m, AMQPClass::Exchange(exchange::AMQPMethod::DeleteOk(_))).then_some(()),
        )
        .await
    }

    /// Delete the queue; returns how many messages it still held.
    pub async fn queue_delete(&mut self, ch: u16, name: &str) -> Result<u32> {
        self.call(
            ch,
            AMQPClass::Queue(queue::AMQPMethod::Delete(queue::Delete {
                queue: name.into(),
                if_unused: false,
                if_empty: false,
                nowait: false,
            })),
            |m| match m {
                AMQPClass::Queue(queue::AMQPMethod::DeleteOk(ok)) => Some(ok.message_count),
                _ => None,
            },
        )
        .await
    }

    pub async fn consume(&mut self, ch: u16, q: &str, tag: &str, no_ack: bool) -> Result<()> {
        self.call(
            ch,
            AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
                queue: q.into(),
                consumer_tag: tag.into(),
                no_local: false,
                no_ack,
                exclusive: false,
                nowait: false,
                arguments: FieldTable::default(),
            })),
            |m| matches!(m, AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(_))).then_some(()),
        )
        .await
    }

    /// Orderly shutdown: channel.close, then connection.close, each waiting
    /// for its -ok (discarding deliveries still in flight).
    pub async fn close(mut self, ch: u16) -> Result<()> {
        let fut = async {
            self.call(ch, channel_close(), |m| {
                matches!(m, AMQPClass::Channel(channel::AMQPMethod::CloseOk(_))).then_some(())
            })
            .await?;
            self.call(0, connection_close(), |m| {
                matches!(m, AMQPClass::Connection(connection::AMQPMethod::CloseOk(_))).then_some(())
            })
            .await
        };
        tokio::time::timeout(CONTROL_TIMEOUT, fut)
            .await
            .map_err(|_| err("close handshake timed out"))?
    }
}

fn long_str(s: &str) -> AMQPValue {
    AMQPValue::LongString(s.into())
}

pub fn channel_close() -> AMQPClass {
    AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
        reply_code: 200,
        reply_text: "bye".into(),
        class_id: 0,
        method_id: 0,
    }))
}

pub fn connection_close() -> AMQPClass {
    AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
        reply_code: 200,
        reply_text: "bye".into(),
        class_id: 0,
        method_id: 0,
    }))
}
