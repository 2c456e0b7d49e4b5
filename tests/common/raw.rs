//! A raw AMQP 0-9-1 client for tests that must see (or send) the frames a
//! client library hides: frames are encoded and decoded with amq-protocol,
//! so a test can send what no real client library would and check byte for
//! byte what the broker answers.

use super::encode;
use amq_protocol::frame::{parse_frame, AMQPContentHeader, AMQPFrame};
use amq_protocol::protocol::{basic, channel, connection, queue, AMQPClass, BasicProperties};
use amq_protocol::types::{AMQPValue, FieldTable, LongString};
use bytes::BytesMut;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";
/// How long we wait for any single answer from the broker.
pub const ANSWER: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------
// Encoding helpers
// ---------------------------------------------------------------------------

pub fn method(ch: u16, m: AMQPClass) -> Vec<u8> {
    encode(&AMQPFrame::Method(ch, m))
}

pub fn header(ch: u16, body_size: u64) -> Vec<u8> {
    header_with(ch, body_size, BasicProperties::default())
}

pub fn header_with(ch: u16, body_size: u64, properties: BasicProperties) -> Vec<u8> {
    encode(&AMQPFrame::Header(
        ch,
        AMQPContentHeader {
            class_id: 60,
            body_size,
            properties,
        },
    ))
}

pub fn body(ch: u16, data: &[u8]) -> Vec<u8> {
    encode(&AMQPFrame::Body(ch, data.to_vec()))
}

/// A frame with any type octet and payload, framed correctly.
pub fn raw_frame(kind: u8, ch: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![kind];
    v.extend_from_slice(&ch.to_be_bytes());
    v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    v.extend_from_slice(payload);
    v.push(0xCE);
    v
}

pub fn publish(ch: u16, exchange: &str, routing_key: &str) -> Vec<u8> {
    method(
        ch,
        AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            mandatory: false,
            immediate: false,
        })),
    )
}

pub fn queue_declare(ch: u16, name: &str) -> Vec<u8> {
    method(
        ch,
        AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: name.into(),
            ..Default::default()
        })),
    )
}

pub fn client_properties(capabilities: bool) -> FieldTable {
    let mut caps = FieldTable::default();
    if capabilities {
        for c in [
            "authentication_failure_close",
            "publisher_confirms",
            "basic.nack",
            "consumer_cancel_notify",
            "connection.blocked",
        ] {
            caps.insert(c.into(), AMQPValue::Boolean(true));
        }
    }
    let mut p = FieldTable::default();
    p.insert(
        "product".into(),
        AMQPValue::LongString("lepus raw test client".into()),
    );
    p.insert("capabilities".into(), AMQPValue::FieldTable(caps));
    p
}

// ---------------------------------------------------------------------------
// A raw AMQP client
// ---------------------------------------------------------------------------

pub struct Login {
    pub mechanism: &'static str,
    pub response: Vec<u8>,
    pub capabilities: bool,
    pub vhost: &'static str,
    pub heartbeat: u16,
    /// 0: take the broker's.
    pub frame_max: u32,
}

impl Default for Login {
    fn default() -> Self {
        Login {
            mechanism: "PLAIN",
            response: b"\0guest\0guest".to_vec(),
            capabilities: true,
            vhost: "/",
            heartbeat: 0,
            frame_max: 0,
        }
    }
}

pub struct RawConn {
    pub s: TcpStream,
    pub rbuf: BytesMut,
}

impl RawConn {
    pub async fn connect(addr: SocketAddr) -> RawConn {
        let s = tokio::time::timeout(ANSWER, TcpStream::connect(addr))
            .await
            .expect("connect timed out: is the broker still accepting?")
            .expect("connect");
        s.set_nodelay(true).unwrap();
        RawConn {
            s,
            rbuf: BytesMut::with_capacity(8192),
        }
    }

    /// Send bytes; errors are returned because a broker that already closed
    /// the socket makes a later write fail, which some tests expect.
    pub async fn try_send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match tokio::time::timeout(ANSWER, self.s.write_all(bytes)).await {
            Ok(r) => r,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "write timed out",
            )),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.try_send(bytes).await.expect("write to the broker");
    }

    pub async fn send_method(&mut self, ch: u16, m: AMQPClass) {
        self.send(&method(ch, m)).await
    }

    /// Take one complete frame off the read buffer, if there is one.
    pub fn take_frame(&mut self) -> Option<AMQPFrame> {
        if self.rbuf.len() < 7 {
            return None;
        }
        let size = u32::from_be_bytes(self.rbuf[3..7].try_into().unwrap()) as usize;
        assert!(
            size < 64 << 20,
            "broker sent a frame header announcing {size} bytes"
        );
        if self.rbuf.len() < size + 8 {
            return None;
        }
        let bytes = self.rbuf.split_to(size + 8);
        match parse_frame(&bytes[..]) {
            Ok(([], f)) => Some(f),
            other => panic!(
                "broker sent a frame amq-protocol cannot parse: {:?} -> {other:?}",
                &bytes[..]
            ),
        }
    }

    /// The next frame, or `None` once the broker closed (or reset) the
    /// socket. Cancel-safe: a timeout never loses bytes.
    pub async fn next_frame(&mut self) -> Option<AMQPFrame> {
        loop {
            if let Some(f) = self.take_frame() {
                return Some(f);
            }
            match self.s.read_buf(&mut self.rbuf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// `Err(())` on timeout.
    pub async fn recv_within(&mut self, d: Duration) -> Result<Option<AMQPFrame>, ()> {
        tokio::time::timeout(d, self.next_frame())
            .await
            .map_err(|_| ())
    }

    /// The next frame that is not a heartbeat; panics on EOF or timeout.
    pub async fn expect_frame(&mut self, what: &str) -> AMQPFrame {
        let end = Instant::now() + ANSWER;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.recv_within(left).await {
                Ok(Some(AMQPFrame::Heartbeat)) => continue,
                Ok(Some(f)) => return f,
                Ok(None) => panic!("broker closed the socket while we waited for {what}"),
                Err(()) => panic!("no {what} from the broker within {ANSWER:?}"),
            }
        }
    }

    pub async fn expect_method(&mut self, ch: u16, what: &str) -> AMQPClass {
        match self.expect_frame(what).await {
            AMQPFrame::Method(c, m) if c == ch => m,
            other => panic!("expected {what} on channel {ch}, got {other:?}"),
        }
    }

    /// Wait for connection.close (skipping heartbeats and any other frame the
    /// broker may still send first), answer close-ok, and return it.
    pub async fn expect_connection_close(&mut self) -> connection::Close {
        let end = Instant::now() + ANSWER;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.recv_within(left).await {
                Ok(Some(AMQPFrame::Method(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::Close(c)),
                ))) => {
                    let _ = self
                        .try_send(&method(
                            0,
                            AMQPClass::Connection(connection::AMQPMethod::CloseOk(
                                connection::CloseOk {},
                            )),
                        ))
                        .await;
                    return c;
                }
                Ok(Some(AMQPFrame::Method(
                    ch,
                    AMQPClass::Channel(channel::AMQPMethod::Close(c)),
                ))) => panic!(
                    "expected connection.close, got channel.close on channel {ch}: {} {}",
                    c.reply_code,
                    c.reply_text.as_str()
                ),
                Ok(Some(_)) => continue,
                Ok(None) => panic!("broker closed the socket without sending connection.close"),
                Err(()) => panic!("no connection.close from the broker within {ANSWER:?}"),
            }
        }
    }

    /// Read (and drop) frames until the broker closes the socket.
    pub async fn expect_eof(&mut self, within: Duration, why: &str) {
        let end = Instant::now() + within;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.recv_within(left).await {
                Ok(Some(_)) => continue,
                Ok(None) => return,
                Err(()) => panic!("the broker did not close the socket within {within:?} ({why})"),
            }
        }
    }

    /// Protocol header and connection.start.
    pub async fn start(addr: SocketAddr) -> (RawConn, connection::Start) {
        let mut c = RawConn::connect(addr).await;
        c.send(PROTOCOL_HEADER).await;
        match c.expect_method(0, "connection.start").await {
            AMQPClass::Connection(connection::AMQPMethod::Start(s)) => (c, s),
            other => panic!("expected connection.start, got {other:?}"),
        }
    }

    pub async fn start_ok(&mut self, login: &Login) {
        let m = connection::StartOk {
            client_properties: client_properties(login.capabilities),
            mechanism: login.mechanism.into(),
            response: LongString::from(login.response.clone()),
            locale: "en_US".into(),
        };
        self.send_method(0, AMQPClass::Connection(connection::AMQPMethod::StartOk(m)))
            .await;
    }

    pub async fn expect_tune(&mut self) -> connection::Tune {
        match self.expect_method(0, "connection.tune").await {
            AMQPClass::Connection(connection::AMQPMethod::Tune(t)) => t,
            other => panic!("expected connection.tune, got {other:?}"),
        }
    }

    pub async fn tune_ok_and_open(&mut self, tune: &connection::Tune, login: &Login) {
        let frame_max = if login.frame_max == 0 {
            tune.frame_max
        } else {
            login.frame_max
        };
        self.send_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                channel_max: tune.channel_max,
                frame_max,
                heartbeat: login.heartbeat,
            })),
        )
        .await;
        self.send_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
                virtual_host: login.vhost.into(),
            })),
        )
        .await;
    }

    /// A full handshake with `login`, up to connection.open-ok.
    pub async fn login(addr: SocketAddr, login: &Login) -> RawConn {
        let (mut c, _) = RawConn::start(addr).await;
        c.start_ok(login).await;
        let tune = c.expect_tune().await;
        c.tune_ok_and_open(&tune, login).await;
        match c.expect_method(0, "connection.open-ok").await {
            AMQPClass::Connection(connection::AMQPMethod::OpenOk(_)) => {}
            other => panic!("expected connection.open-ok, got {other:?}"),
        }
        c
    }

    pub async fn open_channel(&mut self, ch: u16) {
        self.send_method(
            ch,
            AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
        )
        .await;
        match self.expect_method(ch, "channel.open-ok").await {
            AMQPClass::Channel(channel::AMQPMethod::OpenOk(_)) => {}
            other => panic!("expected channel.open-ok, got {other:?}"),
        }
    }

    /// Handshake as guest on "/" and open channel 1.
    pub async fn open(addr: SocketAddr) -> RawConn {
        RawConn::open_with(addr, &Login::default()).await
    }

    pub async fn open_with(addr: SocketAddr, login: &Login) -> RawConn {
        let mut c = RawConn::login(addr, login).await;
        c.open_channel(1).await;
        c
    }
}

pub fn assert_close(c: &connection::Close, code: u16, name: &str) {
    assert_eq!(
        c.reply_code,
        code,
        "connection.close reply code (reply text: {:?})",
        c.reply_text.as_str()
    );
    assert!(
        c.reply_text.as_str().starts_with(name),
        "reply text {:?} should start with {name}",
        c.reply_text.as_str()
    );
}

pub fn assert_close_method(c: &connection::Close, class_id: u16, method_id: u16) {
    assert_eq!(
        (c.class_id, c.method_id),
        (class_id, method_id),
        "class and method ids in connection.close {:?}",
        c.reply_text.as_str()
    );
}
