//! Protocol errors over a raw socket: what the broker answers to a client that
//! breaks the AMQP 0-9-1 rules, checked byte for byte against what RabbitMQ
//! 3.10 sends, and proof that the broker stays up for everybody else.
//!
//! Each test speaks AMQP by hand (`RawConn`, in `tests/common/raw.rs`: frames
//! are encoded and decoded with amq-protocol) so it can send what no real
//! client library would. A
//! well-behaved lapin client ([`Bystander`]) publishes before the misbehaving
//! one starts and checks afterwards that its connection and messages survived
//! and that new connections are still accepted.

mod common;
use common::raw::*;
// The raw publish frame, not the lapin helper of the same name.
use common::raw::publish;
use common::*;

use amq_protocol::auth::{Credentials, SASLMechanism};
use amq_protocol::frame::AMQPFrame;
use amq_protocol::protocol::{
    basic, channel, confirm, connection, exchange, queue, tx, AMQPClass, BasicProperties,
};
use amq_protocol::types::{AMQPValue, FieldTable};
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// ---------------------------------------------------------------------------
// The well-behaved client next door
// ---------------------------------------------------------------------------

const BYSTANDER_MESSAGES: u32 = 5;

/// A lapin client that published some confirmed messages before the
/// misbehaving client started; [`Bystander::check`] proves the broker is
/// still healthy afterwards.
struct Bystander {
    conn: lapin::Connection,
    ch: lapin::Channel,
}

impl Bystander {
    async fn start(b: &TestBroker) -> Bystander {
        let (conn, ch) = within(10, b.channel()).await;
        within(
            5,
            ch.queue_declare(
                "bystander".into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            ),
        )
        .await
        .unwrap();
        within(5, ch.confirm_select(ConfirmSelectOptions::default()))
            .await
            .unwrap();
        for i in 0..BYSTANDER_MESSAGES {
            let confirm = within(
                5,
                ch.basic_publish(
                    "".into(),
                    "bystander".into(),
                    BasicPublishOptions::default(),
                    &i.to_be_bytes(),
                    lapin::BasicProperties::default(),
                ),
            )
            .await
            .unwrap();
            assert!(within(5, confirm).await.unwrap().is_ack());
        }
        Bystander { conn, ch }
    }

    async fn check(&self, b: &TestBroker) {
        assert!(
            self.conn.status().connected(),
            "the bystander's connection was closed"
        );
        let q = within(
            5,
            self.ch
                .queue_declare("bystander".into(), passive(), FieldTable::default()),
        )
        .await
        .expect("the bystander's channel still works");
        assert_eq!(
            q.message_count(),
            BYSTANDER_MESSAGES,
            "the bystander's messages are all still there"
        );
        // A brand-new connection works end to end.
        let (c2, ch2) = within(10, b.channel()).await;
        within(
            5,
            ch2.queue_declare(
                "after".into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            ),
        )
        .await
        .unwrap();
        within(5, ch2.confirm_select(ConfirmSelectOptions::default()))
            .await
            .unwrap();
        let confirm = within(
            5,
            ch2.basic_publish(
                "".into(),
                "after".into(),
                BasicPublishOptions::default(),
                b"still alive",
                lapin::BasicProperties::default(),
            ),
        )
        .await
        .unwrap();
        assert!(within(5, confirm).await.unwrap().is_ack());
        let m = within(
            5,
            ch2.basic_get("after".into(), BasicGetOptions { no_ack: true }),
        )
        .await
        .unwrap()
        .expect("the message just published");
        assert_eq!(m.delivery.data, b"still alive");
        let _ = within(5, c2.close(200, "bye".into())).await;
    }
}

// ---------------------------------------------------------------------------
// Protocol header
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_protocol_header_is_answered_with_ours_and_closed() {
    let b = TestBroker::start().await;
    let by = Bystander::start(&b).await;
    let headers: [&[u8]; 4] = [
        b"AMQP\x00\x00\x09\x02",
        b"AMQP\x00\x00\x08\x00",
        b"HTTP/1.1",
        b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
    ];
    for h in headers {
        let mut c = RawConn::connect(b.addr()).await;
        c.send(h).await;
        let mut got = Vec::new();
        let r = tokio::time::timeout(ANSWER, c.s.read_to_end(&mut got)).await;
        assert!(r.is_ok(), "socket still open {ANSWER:?} after header {h:?}");
        assert_eq!(
            &got[..],
            &PROTOCOL_HEADER[..],
            "answer to header {:?}",
            String::from_utf8_lossy(h)
        );
    }
    by.check(&b).await;
    b.stop().await;
}

/// RabbitMQ treats the AMQP 0-9 header ("AMQP" 1 1 0 9) as 0-9-1
/// (rabbit_reader:version_negotiation({1, 1, 0, 9}, ...)) and answers with
/// connection.start, so old 0-9 clients can connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_0_9_protocol_header_is_accepted_like_rabbitmq() {
    let b = TestBroker::start().await;
    let mut c = RawConn::connect(b.addr()).await;
    c.send(b"AMQP\x01\x01\x00\x09").await;
    // A refusal is a bare protocol header, not a frame: look before parsing.
    let _ = tokio::time::timeout(ANSWER, async {
        while c.rbuf.len() < 8 {
            match c.s.read_buf(&mut c.rbuf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        !c.rbuf.starts_with(b"AMQP"),
        "broker refused the 0-9 header, answering {:?}",
        String::from_utf8_lossy(&c.rbuf)
    );
    match c.recv_within(ANSWER).await {
        Ok(Some(AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Start(s))))) => {
            assert_eq!((s.version_major, s.version_minor), (0, 9));
        }
        other => panic!("expected connection.start after the 0-9 header, got {other:?}"),
    }
    b.stop().await;
}

// ---------------------------------------------------------------------------
// Frame errors (501)
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_larger_than_frame_max_is_frame_error() {
    let b = TestBroker::start().await;
    let by = Bystander::start(&b).await;
    let login = Login {
        frame_max: 4096,
        ..Default::default()
    };

    // A body frame of 6000 bytes on a connection tuned to 4096.
    let mut c = RawConn::open_with(b.addr(), &login).await;
    c.send(&queue_declare(1, "big")).await;
    c.expect_method(1, "queue.declare-ok").await;
    c.send(&publish(1, "", "big")).await;
    c.send(&header(1, 6000)).await;
    c.send(&body(1, &[7u8; 6000])).await;
    let close = c.expect_connection_close().await;
    assert_close(&close, 501, "FRAME_ERROR");
    c.expect_eof(ANSWER, "after a frame error").await;

    // Only a frame header announcing 2 GiB: refused at once, without
    // waiting for (or buffering) the payload.
    let mut c = RawConn::open_with(b.addr(), &login).await;
    c.send(&[3, 0, 1, 0x7f, 0xff, 0xff, 0xff]).await;
    let close = c.expect_connection_close().await;
    assert_close(&close, 501, "FRAME_ERROR");
    c.expect_eof(ANSWER, "after a frame error").await;

    // The queue got nothing.
    let q = within(
        5,
        by.ch
            .queue_declare("big".into(), passive(), FieldTable::default()),
    )
    .await
    .unwrap();
    assert_eq!(q.message_count(), 0);
    by.check(&b).await;
    b.stop().await;
}

/// RabbitMQ lets a frame exceed frame_max by up to 8 octets
/// (rabbit_reader's FRAME_SIZE_FUDGE: "quite a few clients get it wrong - off
/// by 1 or 8"): a payload of exactly frame_max bytes is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_within_rabbitmq_size_fudge_is_accepted() {
    let b = TestBroker::start().await;
    let by = Bystander::start(&b).await;
    let login = Login {
        frame_max: 4096,
        ..Default::default()
    };
    let mut c = RawConn::open_with(b.addr(), &login).await;
    c.send(&queue_declare(1, "fudge")).await;
    c.expect_method(1, "queue.declare-ok").await;
    let data: Vec<u8> = (0..4096u32).map(|i| i as u8).collect();
    c.send(&publish(1, "", "fudge")).await;
    c.send(&header(1, 4096)).await;
    c.send(&body(1, &data)).await; // 4096 + 8 octets on the wire
    c.send(&queue_declare(1, "fudge")).await;
    match c.expect_frame("queue.declare-ok after the message").await {
        AMQPFrame::Method(1, AMQPClass::Queue(queue::AMQPMethod::DeclareOk(ok))) => {
            assert_eq!(ok.message_count, 1)
        }
        AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Close(cl))) => panic!(
            "broker refused a frame RabbitMQ accepts: {} {}",
            cl.reply_code,
            cl.reply_text.as_str()
        ),
        other => panic!("unexpected {other:?}"),
    }
    let m = within(
        5,
        by.ch
            .basic_get("fudge".into(), BasicGetOptions { no_ack: true }),
    )
    .await
    .unwrap()
    .expect("the message");
    assert_eq!(m.delivery.data, data);
    by.check(&b).await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_end_octet_other_than_ce_is_frame_error() {
    let b = TestBroker::start().await;
    let by = Bystander::start(&b).await;
    let mut c = RawConn::open(b.addr()).await;
    let mut f = queue_declare(1, "q");
    *f.last_mut().unwrap() = 0x00;
    c.send(&f).await;
    let close = c.expect_connection_close().await;
    assert_close(&close, 501, "FRAME_ERROR");
    c.expect_eof(ANSWER, "after a frame error").await;
    by.check(&b).await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_frame_type_is_frame_error() {
    let b = TestBroker::start().await;
    let by = Bystander::start(&b).await;
    for ch in [0u16, 1] {
        let mut c = RawConn::open(b.addr()).await;
        c.send(&raw_frame(9, ch, b"hello")).await;
        let close = c.expect_connection_close().await;
        assert_close(&close, 501, "FRAME_ERROR");
        c.expect_eof(ANSWER, "after a frame error").await;
    }
    by.check(&b).await;
    b.stop().await;
}

/// RabbitMQ's command assembler cannot decode the arguments, which is
/// rabbit_misc:frame_error/2: 501 naming the method.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_method_arguments_are_frame_error() {
    let b = TestBroker::start().await;
    let by = Bystander::start(&b).await;
    let mut c = RawConn::open(b.addr()).await;
    // queue.declare: ticket, then a shortstr claiming 200 bytes but only 3 follow.
    let payload = [0, 50, 0, 10, 0, 0, 200, b'a', b'b', b'c'];
    c.send(&raw_frame(1, 1, &payload)).await;
    let close = c.expect_connection_close().await;
    assert_close(&close, 501, "FRAME_ERROR");
    assert_close_method(&close, 50, 10);
    c.expect_eof(ANSWER, "after a frame error").await;
    by.check(&b).await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_after_handshake_is_frame_error_without_panic() {
    watch_panics();
    let b = TestBroker::start().await;
    let by = Bystander::start(&b).await;
    let garbage: [&[u8]; 3] = [
        b"\xde\xad\xbe\xef\x00\x01\x02\x03 this is not AMQP at all \xff\xfe",
        &[0xff; 64],
        // Starts like a body frame, then nonsense where the end octet should be.
        &[
            3, 0, 1, 0, 0, 0, 4, b'a', b'b', b'c', b'd', b'x', b'y', b'z',
        ],
    ];
    for g in garbage {
        let mut c = RawConn::open(b.addr()).await;
        c.send(g).await;
        let close = c.expect_connection_close().await;
        assert_close(&close, 501, "FRAME_ERROR");
        c.expect_eof(ANSWER, "after a frame error").await;
    }
    by.check(&b).await;
    assert_eq!(
        panics_outside_tests(),
        Vec::<String>::new(),
        "the broker panicked"
    );
    b.stop().await;
}

/// A content header whose headers table cannot be decoded. RabbitMQ decodes
/// the properties of every published message in rabbit_channel (basic.publish:
/// rabbit_binary_parser:ensure_content_decoded), so the publisher gets an
/// error and the message never reaches a queue, where it would break every
/// consumer whose client library parses the properties.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_message_properties_are_rejected_at_publish() {
    let b = TestBroker::start().await;
    let by = Bystander::start(&b).await;
    let mut c = RawConn::open(b.addr()).await;
    c.send(&queue_declare(1, "poison")).await;
    c.expect_method(1, "queue.declare-ok").await;
    // class 60, weight 0, body size 5, flags = headers, then a 6-byte table
    // holding field "k" of the unknown type 'Z'.
    let mut h = vec![0, 60, 0, 0];
    h.extend_from_slice(&5u64.to_be_bytes());
    h.extend_from_slice(&[0x20, 0x00, 0, 0, 0, 6, 1, b'k', b'Z', 1, 2, 3]);
    assert!(
        lepus::protocol::props::peek(&h).is_some(),
        "the frame itself is well-formed"
    );
    assert!(amq_protocol::frame::parsing::parse_content_header(&h[..]).is_err());
    c.send(&publish(1, "", "poison")).await;
    c.send(&raw_frame(2, 1, &h)).await;
    c.send(&body(1, b"hello")).await;
    // Any close will do (RabbitMQ's channel crashes: 541 on the connection),
    // as long as the publisher hears about it.
    let mut refused = None;
    let end = Instant::now() + Duration::from_secs(2);
    while refused.is_none() {
        let left = end.saturating_duration_since(Instant::now());
        match c.recv_within(left).await {
            Ok(Some(AMQPFrame::Method(
                _,
                AMQPClass::Connection(connection::AMQPMethod::Close(cl)),
            ))) => refused = Some(cl.reply_code),
            Ok(Some(AMQPFrame::Method(_, AMQPClass::Channel(channel::AMQPMethod::Close(cl))))) => {
                refused = Some(cl.reply_code)
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(()) => break,
        }
    }
    let q = within(
        5,
        by.ch
            .queue_declare("poison".into(), passive(), FieldTable::default()),
    )
    .await
    .unwrap();
    assert_eq!(
        q.message_count(),
        0,
        "a message with undecodable properties was enqueued"
    );
    assert!(
        refused.is_some(),
        "the publisher got no channel.close or connection.close"
    );
    by.check(&b).await;
    b.stop().await;
}

// ---------------------------------------------------------------------------
// Channel errors (504)
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_on_unopened_channel_is_channel_error() {
    let b = TestBroker::start().await;
    let by = Bystander::start(&b).await;
    let mut c = RawConn::open(b.addr()).await;
    c.send(&queue_declare(5, "q")).await;
    let close = c.expect_connection_close().await;
    assert_close(&close, 504, "CHANNEL_ERROR");
    assert_close_method(&close, 50, 10);
    c.expect_eof(ANSWER, "after connection.close-ok").await;
    by.check(&b).await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_channel_open_is_channel_error() {
    let b = TestBroker::start().await;
    let by = Bystander::start(&b).await;
    let mut c = RawConn::open(b.addr()).await;
    c.send_method(
        1,
        AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
    )
    .await;
    let close = c.expect_connection_close().await;
    assert_close(&close, 504, "CHANNEL_ERROR");
    assert_close_method(&close, 20, 10);
    c.expect_eof(ANSWER, "after connection.close-ok").await;
    by.check(&b).await;
    b.stop().await;
}

// ---------------------------------------------------------------------------
// Unexpected frames (505)
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_frames_out_of_order_are_unexpected_frame() {
    let b = TestBroker::start().await;
    let by = Bystander::start(&b).await;
    let cases: Vec<(&str, Vec<Vec<u8>>)> = vec![
        (
            "content header without basic.publish",
            vec![header(1, 5), body(1, b"hello")],
        ),
        (
            "body right after basic.publish",
            vec![publish(1, "", "bystander"), body(1, b"hello")],
        ),
        (
            "method between header and body",
            vec![
                publish(1, "", "bystander"),
                header(1, 5),
                queue_declare(1, "x"),
                body(1, b"hello"),
            ],
        ),
    ];
    for (what, frames) in cases {
        let mut c = RawConn::open(b.addr()).await;
        for f in frames {
            // The broker may close before the last frames are written.
            let _ = c.try_send(&f).await;
        }
        let close = c.expect_connection_close().await;
        assert_eq!(
            close.reply_code,
            505,
            "{what}: {:?}",
            close.reply_text.as_str()
        );
        assert!(
            close.reply_text.as_str().starts_with("UNEXPECTED_FRAME"),
            "{what}"
        );
        c.expect_eof(ANSWER, what).await;
    }
    // None of the broken publishes reached the queue.
    by.check(&b).await;
    b.stop().await;
}

/// rabbit_reader: a heartbeat frame on a channel other than 0 is
/// unexpected_frame (505), not a frame error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_on_nonzero_channel_is_unexpected_frame() {
    let b = TestBroker::start().await;
    let by = Bystander::start(&b).await;
    let mut c = RawConn::open(b.addr()).await;
    c.send(&raw_frame(8, 1, b"")).await;
    let close = c.expect_connection_close().await;
    assert_close(&close, 505, "UNEXPECTED_FRAME");
    c.expect_eof(ANSWER, "after connection.close-ok").await;
    by.check(&b).await;
    b.stop().await;
}

// ---------------------------------------------------------------------------
// Unknown methods (540)
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_class_or_method_is_not_implemented() {
    let b = TestBroker::start().await;
    let by = Bystander::start(&b).await;
    for (class, meth) in [(99u16, 1u16), (60, 999)] {
        let mut c = RawConn::open(b.addr()).await;
        let mut payload = class.to_be_bytes().to_vec();
        payload.extend_from_slice(&meth.to_be_bytes());
        c.send(&raw_frame(1, 1, &payload)).await;
        let close = c.expect_connection_close().await;
        assert_close(&close, 540, "NOT_IMPLEMENTED");
        c.expect_eof(ANSWER, "after connection.close-ok").await;
    }
    by.check(&b).await;
    b.stop().await;
}

// ---------------------------------------------------------------------------
// A client that vanishes mid-publish
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnecting_mid_publish_loses_only_the_partial_message() {
    watch_panics();
    let b = TestBroker::start().await;
    let by = Bystander::start(&b).await;
    let mut c = RawConn::open(b.addr()).await;
    c.send(&queue_declare(1, "midpub")).await;
    c.expect_method(1, "queue.declare-ok").await;
    c.send_method(
        1,
        AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select {
            nowait: false,
        })),
    )
    .await;
    c.expect_method(1, "confirm.select-ok").await;
    // One complete, confirmed message.
    c.send(&publish(1, "", "midpub")).await;
    c.send(&header(1, 8)).await;
    c.send(&body(1, b"complete")).await;
    match c.expect_method(1, "the publisher confirm").await {
        AMQPClass::Basic(basic::AMQPMethod::Ack(a)) => assert_eq!(a.delivery_tag, 1),
        other => panic!("expected basic.ack, got {other:?}"),
    }
    // Then publish + header + half of the body, and the socket goes away.
    c.send(&publish(1, "", "midpub")).await;
    c.send(&header(1, 1000)).await;
    c.send(&body(1, &[b'p'; 500])).await;
    let f = body(1, &[b'q'; 500]);
    c.send(&f[..f.len() / 2]).await; // and even half a frame
    drop(c);

    let q = within(5, async {
        loop {
            let q = by
                .ch
                .queue_declare("midpub".into(), passive(), FieldTable::default())
                .await
                .unwrap();
            // Give the broker a moment to notice the closed socket.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let q2 = by
                .ch
                .queue_declare("midpub".into(), passive(), FieldTable::default())
                .await
                .unwrap();
            if q.message_count() == q2.message_count() {
                break q2;
            }
        }
    })
    .await;
    assert_eq!(
        q.message_count(),
        1,
        "only the complete message is in the queue"
    );
    let m = within(
        5,
        by.ch
            .basic_get("midpub".into(), BasicGetOptions { no_ack: true }),
    )
    .await
    .unwrap()
    .expect("the complete message");
    assert_eq!(m.delivery.data, b"complete");
    assert!(within(
        5,
        by.ch
            .basic_get("midpub".into(), BasicGetOptions { no_ack: true })
    )
    .await
    .unwrap()
    .is_none());
    by.check(&b).await;
    assert_eq!(
        panics_outside_tests(),
        Vec::<String>::new(),
        "the broker panicked"
    );
    b.stop().await;
}

// ---------------------------------------------------------------------------
// Handshake failures
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_are_access_refused() {
    let b = TestBroker::start().await;
    let by = Bystander::start(&b).await;
    for (mechanism, response) in [
        ("PLAIN", b"\0guest\0wrong".to_vec()),
        ("PLAIN", b"\0nobody\0guest".to_vec()),
        (
            "AMQPLAIN",
            Credentials::new("guest".into(), "wrong".into())
                .sasl_auth_string(SASLMechanism::AMQPlain)
                .as_bytes()
                .to_vec(),
        ),
    ] {
        let (mut c, _) = RawConn::start(b.addr()).await;
        c.start_ok(&Login {
            mechanism,
            response,
            ..Default::default()
        })
        .await;
        let close = c.expect_connection_close().await;
        assert_close(&close, 403, "ACCESS_REFUSED");
        c.expect_eof(ANSWER, "after a refused login").await;
    }
    // And the same through lapin.
    let uri = format!("amqp://guest:wrong@{}/%2f", b.addr());
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        lapin::Connection::connect(&uri, lapin::ConnectionProperties::default()),
    )
    .await
    .expect("lapin connect timed out");
    let e = r.expect_err("login with a wrong password must fail");
    assert_eq!(reply_code(&e), Some(403), "{e:?}");
    by.check(&b).await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_open_to_missing_vhost_is_not_allowed() {
    let b = TestBroker::start().await;
    let by = Bystander::start(&b).await;
    let login = Login {
        vhost: "/no-such-vhost",
        ..Default::default()
    };
    let (mut c, _) = RawConn::start(b.addr()).await;
    c.start_ok(&login).await;
    let tune = c.expect_tune().await;
    c.tune_ok_and_open(&tune, &login).await;
    let close = c.expect_connection_close().await;
    assert_close(&close, 530, "NOT_ALLOWED");
    assert_close_method(&close, 10, 40);
    c.expect_eof(ANSWER, "after connection.close-ok").await;
    by.check(&b).await;
    b.stop().await;
}

// ---------------------------------------------------------------------------
// Heartbeats
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_client_is_dropped_after_missed_heartbeats() {
    let b = TestBroker::start().await;
    let by = Bystander::start(&b).await;
    let mut c = RawConn::login(
        b.addr(),
        &Login {
            heartbeat: 1,
            ..Default::default()
        },
    )
    .await;
    let t0 = Instant::now();
    let mut heartbeats = 0;
    loop {
        match c.recv_within(Duration::from_secs(6)).await {
            Ok(Some(AMQPFrame::Heartbeat)) => heartbeats += 1,
            Ok(Some(other)) => panic!("unexpected frame {other:?}"),
            Ok(None) => break,
            Err(()) => {
                panic!("still connected 6 s after negotiating a 1 s heartbeat and sending nothing")
            }
        }
    }
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "closed after {took:?}: too early for a 1 s heartbeat"
    );
    assert!(
        took <= Duration::from_millis(5000),
        "closed only after {took:?}; expected within ~2 s"
    );
    assert!(
        heartbeats >= 1,
        "the broker sent no heartbeat in {took:?} with heartbeat=1"
    );
    by.check(&b).await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_sending_heartbeats_stays_connected() {
    let b = TestBroker::start().await;
    let mut c = RawConn::login(
        b.addr(),
        &Login {
            heartbeat: 1,
            ..Default::default()
        },
    )
    .await;
    c.open_channel(1).await;
    let end = Instant::now() + Duration::from_millis(3500);
    while Instant::now() < end {
        c.send(&raw_frame(8, 0, b"")).await;
        match c.recv_within(Duration::from_millis(500)).await {
            Ok(Some(AMQPFrame::Heartbeat)) | Err(()) => {}
            Ok(Some(other)) => panic!("unexpected frame {other:?}"),
            Ok(None) => panic!("the broker closed a connection that sent heartbeats"),
        }
    }
    c.send(&queue_declare(1, "hb")).await;
    c.expect_method(1, "queue.declare-ok").await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lapin_with_one_second_heartbeat_survives_idle_period() {
    let b = TestBroker::start().await;
    let conn = connect(&format!("{}?heartbeat=1", b.uri())).await;
    let ch = within(5, conn.create_channel()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert!(
        conn.status().connected(),
        "connection closed while idle with heartbeat=1"
    );
    within(
        5,
        ch.queue_declare(
            "idle".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("channel still works after the idle period");
    within(5, ch.confirm_select(ConfirmSelectOptions::default()))
        .await
        .unwrap();
    let confirm = within(
        5,
        ch.basic_publish(
            "".into(),
            "idle".into(),
            BasicPublishOptions::default(),
            b"awake",
            lapin::BasicProperties::default(),
        ),
    )
    .await
    .unwrap();
    assert!(within(5, confirm).await.unwrap().is_ack());
    let m = within(
        5,
        ch.basic_get("idle".into(), BasicGetOptions { no_ack: true }),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(m.delivery.data, b"awake");
    b.stop().await;
}

// ---------------------------------------------------------------------------
// connection.start and SASL
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_start_advertises_rabbitmq_capabilities_and_mechanisms() {
    let b = TestBroker::start().await;
    let (c, start) = RawConn::start(b.addr()).await;
    drop(c);
    assert_eq!((start.version_major, start.version_minor), (0, 9));
    let caps = match start.server_properties.inner().get("capabilities") {
        Some(AMQPValue::FieldTable(t)) => t.clone(),
        other => panic!("server_properties.capabilities should be a table, got {other:?}"),
    };
    for cap in [
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "connection.blocked",
        "authentication_failure_close",
        "per_consumer_qos",
    ] {
        assert_eq!(
            caps.inner().get(cap),
            Some(&AMQPValue::Boolean(true)),
            "capability {cap} in {caps:?}"
        );
    }
    for key in ["product", "version", "platform"] {
        assert!(
            matches!(
                start.server_properties.inner().get(key),
                Some(AMQPValue::LongString(_))
            ),
            "server property {key} should be a longstr"
        );
    }
    let mechanisms = String::from_utf8_lossy(start.mechanisms.as_bytes()).to_string();
    let list: Vec<&str> = mechanisms.split_whitespace().collect();
    assert!(list.contains(&"PLAIN"), "mechanisms {mechanisms:?}");
    assert!(list.contains(&"AMQPLAIN"), "mechanisms {mechanisms:?}");
    let locales = String::from_utf8_lossy(start.locales.as_bytes()).to_string();
    assert!(
        locales.split_whitespace().any(|l| l == "en_US"),
        "locales {locales:?}"
    );
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqplain_login_works() {
    let b = TestBroker::start().await;
    let response = Credentials::default()
        .sasl_auth_string(SASLMechanism::AMQPlain)
        .as_bytes()
        .to_vec();
    let mut c = RawConn::open_with(
        b.addr(),
        &Login {
            mechanism: "AMQPLAIN",
            response,
            ..Default::default()
        },
    )
    .await;
    c.send(&queue_declare(1, "amqplain")).await;
    c.expect_method(1, "queue.declare-ok").await;
    // lapin's AMQPLAIN too.
    let conn = connect(&format!("{}?auth_mechanism=amqplain", b.uri())).await;
    let ch = within(5, conn.create_channel()).await.unwrap();
    let q = within(
        5,
        ch.queue_declare("amqplain".into(), passive(), FieldTable::default()),
    )
    .await
    .unwrap();
    assert_eq!(q.message_count(), 0);
    b.stop().await;
}

// ---------------------------------------------------------------------------
// Random and mutated frames after the handshake
// ---------------------------------------------------------------------------

/// Valid frames to mutate: a little of everything a client sends.
fn corpus() -> Vec<Vec<u8>> {
    let mut headers = FieldTable::default();
    headers.insert("x-k".into(), AMQPValue::LongString("v".into()));
    headers.insert("x-n".into(), AMQPValue::LongLongInt(-5));
    let props = BasicProperties::default()
        .with_content_type("text/plain".into())
        .with_headers(headers)
        .with_delivery_mode(2)
        .with_priority(3)
        .with_expiration("60000".into())
        .with_message_id("m".into())
        .with_timestamp(1)
        .with_user_id("guest".into());
    vec![
        queue_declare(1, "fz"),
        method(
            1,
            AMQPClass::Exchange(exchange::AMQPMethod::Declare(exchange::Declare {
                exchange: "fx".into(),
                kind: "topic".into(),
                ..Default::default()
            })),
        ),
        method(
            1,
            AMQPClass::Queue(queue::AMQPMethod::Bind(queue::Bind {
                queue: "fz".into(),
                exchange: "fx".into(),
                routing_key: "a.#".into(),
                ..Default::default()
            })),
        ),
        publish(1, "", "fz"),
        publish(1, "fx", "a.b"),
        header(1, 5),
        header_with(1, 5, props),
        body(1, b"hello"),
        method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
                queue: "fz".into(),
                consumer_tag: "c".into(),
                ..Default::default()
            })),
        ),
        method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
                prefetch_count: 1,
                global: false,
            })),
        ),
        method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get {
                queue: "fz".into(),
                no_ack: false,
            })),
        ),
        method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                delivery_tag: 1,
                multiple: false,
            })),
        ),
        method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Nack(basic::Nack {
                delivery_tag: 1,
                multiple: true,
                requeue: true,
            })),
        ),
        method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Reject(basic::Reject {
                delivery_tag: 2,
                requeue: false,
            })),
        ),
        method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
                consumer_tag: "c".into(),
                nowait: false,
            })),
        ),
        method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Recover(basic::Recover { requeue: true })),
        ),
        method(
            1,
            AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select {
                nowait: false,
            })),
        ),
        method(1, AMQPClass::Tx(tx::AMQPMethod::Select(tx::Select {}))),
        method(1, AMQPClass::Tx(tx::AMQPMethod::Commit(tx::Commit {}))),
        method(
            1,
            AMQPClass::Channel(channel::AMQPMethod::Flow(channel::Flow { active: false })),
        ),
        method(
            2,
            AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
        ),
        method(
            1,
            AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
                reply_code: 200,
                reply_text: "bye".into(),
                class_id: 0,
                method_id: 0,
            })),
        ),
        method(
            1,
            AMQPClass::Queue(queue::AMQPMethod::Purge(queue::Purge {
                queue: "fz".into(),
                nowait: false,
            })),
        ),
        method(
            1,
            AMQPClass::Queue(queue::AMQPMethod::Delete(queue::Delete {
                queue: "fz".into(),
                ..Default::default()
            })),
        ),
        raw_frame(8, 0, b""),
    ]
}

fn fuzz_chunk(rng: &mut StdRng, corpus: &[Vec<u8>]) -> Vec<u8> {
    let pick = |rng: &mut StdRng| corpus[rng.gen_range(0..corpus.len())].clone();
    match rng.gen_range(0..7) {
        // Pure noise.
        0 => (0..rng.gen_range(1..48)).map(|_| rng.gen()).collect(),
        // A well-framed frame of any type, channel and payload.
        1 => {
            let kinds = [1u8, 2, 3, 8, rng.gen()];
            let chans = [0u16, 1, 1, 2, rng.gen()];
            let payload: Vec<u8> = (0..rng.gen_range(0..40)).map(|_| rng.gen()).collect();
            raw_frame(
                kinds[rng.gen_range(0..kinds.len())],
                chans[rng.gen_range(0..chans.len())],
                &payload,
            )
        }
        // A valid frame with a few bytes flipped, mostly in the payload.
        2 => {
            let mut f = pick(rng);
            for _ in 0..rng.gen_range(1..4) {
                let at = if rng.gen_bool(0.8) && f.len() > 8 {
                    rng.gen_range(7..f.len() - 1)
                } else {
                    rng.gen_range(0..f.len())
                };
                f[at] = rng.gen();
            }
            f
        }
        // A valid frame, truncated.
        3 => {
            let f = pick(rng);
            let n = rng.gen_range(0..f.len());
            f[..n].to_vec()
        }
        // A valid frame whose size field lies.
        4 => {
            let mut f = pick(rng);
            let size = u32::from_be_bytes(f[3..7].try_into().unwrap());
            let new = match rng.gen_range(0..3) {
                0 => size.wrapping_add(rng.gen_range(1..4)),
                1 => size.saturating_sub(rng.gen_range(1..4)),
                _ => rng.gen(),
            };
            f[3..7].copy_from_slice(&new.to_be_bytes());
            f
        }
        // A valid frame on another channel.
        5 => {
            let mut f = pick(rng);
            let ch: u16 = [0, 2, 3, rng.gen()][rng.gen_range(0..4)];
            f[1..3].copy_from_slice(&ch.to_be_bytes());
            f
        }
        // A valid frame as is, so that sequences reach deeper states.
        _ => pick(rng),
    }
}

/// Read until the broker closes the socket, at most [`ANSWER`].
async fn wait_eof(c: &mut RawConn) -> Result<(), String> {
    let end = Instant::now() + ANSWER;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match c.recv_within(left).await {
            Ok(None) => return Ok(()),
            Ok(Some(_)) => continue,
            Err(()) => {
                return Err(format!(
                    "socket still open {ANSWER:?} after connection.close-ok"
                ))
            }
        }
    }
}

/// What the broker did with one fuzzed connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    /// connection.close with this reply code.
    Closed(u16),
    /// Closed the socket without a connection.close (or after we stopped).
    Eof,
}

async fn fuzz_one(addr: SocketAddr, chunks: Vec<Vec<u8>>) -> Result<Outcome, String> {
    let mut c = RawConn::open(addr).await;
    for chunk in &chunks {
        if c.try_send(chunk).await.is_err() {
            break;
        }
    }
    let answered = |c: &connection::Close| -> Result<Outcome, String> {
        if [501, 502, 503, 504, 505, 506, 530, 540].contains(&c.reply_code) {
            Ok(Outcome::Closed(c.reply_code))
        } else {
            Err(format!(
                "connection.close with {} {:?}",
                c.reply_code,
                c.reply_text.as_str()
            ))
        }
    };
    // Phase 1: the broker may answer on its own.
    let end = Instant::now() + Duration::from_millis(400);
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match c.recv_within(left).await {
            Ok(Some(AMQPFrame::Method(
                0,
                AMQPClass::Connection(connection::AMQPMethod::Close(cl)),
            ))) => {
                let _ = c
                    .try_send(&method(
                        0,
                        AMQPClass::Connection(connection::AMQPMethod::CloseOk(
                            connection::CloseOk {},
                        )),
                    ))
                    .await;
                let r = answered(&cl);
                return wait_eof(&mut c).await.and(r);
            }
            Ok(Some(_)) => continue,
            Ok(None) => return Ok(Outcome::Eof),
            Err(()) => break,
        }
    }
    // Phase 2: we stop writing; whatever state the broker is in, it must
    // close the socket promptly.
    let _ = c.s.shutdown().await;
    let end = Instant::now() + ANSWER;
    let mut code = None;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match c.recv_within(left).await {
            Ok(Some(AMQPFrame::Method(
                0,
                AMQPClass::Connection(connection::AMQPMethod::Close(cl)),
            ))) => {
                answered(&cl)?;
                code = Some(cl.reply_code);
            }
            Ok(Some(_)) => continue,
            Ok(None) => return Ok(code.map(Outcome::Closed).unwrap_or(Outcome::Eof)),
            Err(()) => {
                return Err(format!(
                    "no answer and socket still open {ANSWER:?} after we stopped writing"
                ))
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_and_mutated_frames_never_hang_or_crash_the_broker() {
    watch_panics();
    let b = TestBroker::start().await;
    let by = Bystander::start(&b).await;
    let seed: u64 = std::env::var("LEPUS_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_240_611);
    let connections: usize = std::env::var("LEPUS_FUZZ_CONNECTIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(128);
    println!("fuzzing with LEPUS_FUZZ_SEED={seed} LEPUS_FUZZ_CONNECTIONS={connections}");
    let mut rng = StdRng::seed_from_u64(seed);
    let corpus = corpus();
    let mut failures = Vec::new();
    let mut outcomes = std::collections::BTreeMap::<Outcome, usize>::new();
    let batch = 8;
    for start in (0..connections).step_by(batch) {
        let mut tasks = Vec::new();
        for i in start..(start + batch).min(connections) {
            let chunks: Vec<Vec<u8>> = (0..rng.gen_range(1..10))
                .map(|_| fuzz_chunk(&mut rng, &corpus))
                .collect();
            let addr = b.addr();
            let input = chunks.clone();
            let t = tokio::spawn(async move {
                tokio::time::timeout(Duration::from_secs(20), fuzz_one(addr, chunks))
                    .await
                    .unwrap_or_else(|_| Err("connection not finished within 20 s".into()))
            });
            tasks.push((i, input, t));
        }
        for (i, input, t) in tasks {
            match t.await {
                Ok(Ok(o)) => *outcomes.entry(o).or_default() += 1,
                Ok(Err(e)) => failures.push(format!("connection {i}: {e}; input {input:?}")),
                Err(e) => failures.push(format!(
                    "connection {i}: test task panicked: {e}; input {input:?}"
                )),
            }
        }
        // The broker still accepts and serves new connections.
        let (c, ch) = within(10, b.channel()).await;
        within(
            5,
            ch.queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            ),
        )
        .await
        .expect("a fresh connection works between fuzz batches");
        let _ = within(5, c.close(200, "ok".into())).await;
    }
    println!("outcomes: {outcomes:?}");
    assert!(
        failures.is_empty(),
        "{} of {connections} fuzzed connections failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    by.check(&b).await;
    assert_eq!(
        panics_outside_tests(),
        Vec::<String>::new(),
        "the broker panicked"
    );
    b.stop().await;
}

/// basic.qos with a prefetch_size: RabbitMQ 3.10.8 closes the connection
/// with 540 "prefetch_size!=0 (N)" (checked live). amq-protocol drops the
/// field, so the frame is written by hand: class 60, method 10, size 7,
/// count 0, global 0.
#[tokio::test]
async fn qos_with_a_prefetch_size_is_540() {
    let b = TestBroker::start().await;
    let mut c = RawConn::open(b.addr()).await;
    let mut payload = vec![0, 60, 0, 10];
    payload.extend_from_slice(&7u32.to_be_bytes());
    payload.extend_from_slice(&0u16.to_be_bytes());
    payload.push(0);
    c.send(&raw_frame(1, 1, &payload)).await;
    let close = c.expect_connection_close().await;
    assert_close(&close, 540, "NOT_IMPLEMENTED");
    assert_eq!(
        close.reply_text.as_str(),
        "NOT_IMPLEMENTED - prefetch_size!=0 (7)"
    );
    assert_eq!((close.class_id, close.method_id), (60, 10));
    b.stop().await;
}
