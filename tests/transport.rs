//! The connection code is generic over its byte stream: the same AMQP
//! session runs over an in-memory pipe (as it will over TLS), not only TCP.

mod common;

use amq_protocol::protocol::{basic, channel as chm, connection as cm, queue as qm, AMQPClass};
use amq_protocol::types::{FieldTable, LongString};
use bytes::BytesMut;
use common::TestBroker;
use lepus::connection::Stream;
use lepus::protocol::{decode_frame, fast, put_method, FRAME_METHOD, PROTOCOL_HEADER};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

struct Client {
    io: DuplexStream,
    buf: BytesMut,
}

impl Client {
    async fn send(&mut self, channel: u16, m: AMQPClass) {
        let mut out = BytesMut::new();
        put_method(&mut out, channel, m);
        self.io.write_all(&out).await.unwrap();
    }

    /// The next method frame (skipping heartbeats), with its channel.
    async fn method(&mut self) -> (u16, AMQPClass) {
        loop {
            if let Some(f) = decode_frame(&mut self.buf, 1 << 20).unwrap() {
                if f.kind != FRAME_METHOD {
                    continue;
                }
                let (_, m) = amq_protocol::protocol::parse_class(&f.payload[..]).unwrap();
                return (f.channel, m);
            }
            let n = tokio::time::timeout(Duration::from_secs(10), self.io.read_buf(&mut self.buf))
                .await
                .expect("server answers")
                .unwrap();
            assert!(n > 0, "server closed the pipe");
        }
    }

    /// The next frame's payload, whatever its type.
    async fn frame(&mut self) -> (u8, bytes::Bytes) {
        loop {
            if let Some(f) = decode_frame(&mut self.buf, 1 << 20).unwrap() {
                return (f.kind, f.payload);
            }
            let n = tokio::time::timeout(Duration::from_secs(10), self.io.read_buf(&mut self.buf))
                .await
                .expect("server answers")
                .unwrap();
            assert!(n > 0, "server closed the pipe");
        }
    }
}

#[tokio::test]
async fn a_whole_session_runs_over_an_in_memory_stream() {
    let b = TestBroker::start().await;
    let (client_end, server_end) = tokio::io::duplex(64 * 1024);
    let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let transport = Stream {
        inner: server_end,
        local_addr: None,
        tls: false,
    };
    let peer = "127.0.0.1:40000".parse().unwrap();
    b.serve_stream(transport, peer, stop_rx);

    let mut c = Client {
        io: client_end,
        buf: BytesMut::new(),
    };
    c.io.write_all(PROTOCOL_HEADER).await.unwrap();
    let (_, m) = c.method().await;
    assert!(matches!(m, AMQPClass::Connection(cm::AMQPMethod::Start(_))));
    c.send(
        0,
        AMQPClass::Connection(cm::AMQPMethod::StartOk(cm::StartOk {
            client_properties: FieldTable::default(),
            mechanism: "PLAIN".into(),
            response: LongString::from(b"\0guest\0guest".to_vec()),
            locale: "en_US".into(),
        })),
    )
    .await;
    let (_, m) = c.method().await;
    let AMQPClass::Connection(cm::AMQPMethod::Tune(t)) = m else {
        panic!("expected tune, got {m:?}")
    };
    c.send(
        0,
        AMQPClass::Connection(cm::AMQPMethod::TuneOk(cm::TuneOk {
            channel_max: t.channel_max,
            frame_max: t.frame_max,
            heartbeat: 0,
        })),
    )
    .await;
    c.send(
        0,
        AMQPClass::Connection(cm::AMQPMethod::Open(cm::Open {
            virtual_host: "/".into(),
        })),
    )
    .await;
    assert!(matches!(
        c.method().await.1,
        AMQPClass::Connection(cm::AMQPMethod::OpenOk(_))
    ));
    c.send(1, AMQPClass::Channel(chm::AMQPMethod::Open(chm::Open {})))
        .await;
    assert!(matches!(
        c.method().await.1,
        AMQPClass::Channel(chm::AMQPMethod::OpenOk(_))
    ));
    c.send(
        1,
        AMQPClass::Queue(qm::AMQPMethod::Declare(qm::Declare {
            queue: "piped".into(),
            passive: false,
            durable: false,
            exclusive: false,
            auto_delete: false,
            nowait: false,
            arguments: FieldTable::default(),
        })),
    )
    .await;
    assert!(matches!(
        c.method().await.1,
        AMQPClass::Queue(qm::AMQPMethod::DeclareOk(_))
    ));

    // Publish "hello" to the default exchange, then get it back.
    c.send(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: "".into(),
            routing_key: "piped".into(),
            mandatory: false,
            immediate: false,
        })),
    )
    .await;
    let header = {
        use amq_protocol::frame::{gen_frame, AMQPContentHeader, AMQPFrame, WriteContext};
        let f = AMQPFrame::Header(
            1,
            AMQPContentHeader {
                class_id: 60,
                body_size: 5,
                properties: amq_protocol::protocol::BasicProperties::default(),
            },
        );
        let raw = gen_frame(&f)(WriteContext::from(Vec::new())).unwrap().write;
        raw[7..raw.len() - 1].to_vec()
    };
    let mut out = BytesMut::new();
    fast::put_content(&mut out, 1, &header, b"hello", 131072);
    c.io.write_all(&out).await.unwrap();
    c.send(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get {
            queue: "piped".into(),
            no_ack: true,
        })),
    )
    .await;
    let (ch, m) = c.method().await;
    assert_eq!(ch, 1);
    assert!(
        matches!(m, AMQPClass::Basic(basic::AMQPMethod::GetOk(_))),
        "expected get-ok, got {m:?}"
    );
    let (kind, _) = c.frame().await;
    assert_eq!(kind, lepus::protocol::FRAME_HEADER);
    let (kind, body) = c.frame().await;
    assert_eq!(kind, lepus::protocol::FRAME_BODY);
    assert_eq!(&body[..], b"hello");

    // The management side sees the connection like any other.
    assert!(common::eventually(5, || b.connection_count() == 1).await);
    b.stop().await;
}
