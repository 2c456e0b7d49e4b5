//! Connection and channel behaviour where client libraries notice any
//! difference from RabbitMQ 3.10 (issue 11): connection.update-secret,
//! closing (everything before the close is handled, and the client closes
//! the socket), the order of queue.delete-ok and the server's basic.cancel,
//! channel numbers and the channel_max count, channel.flow from the client,
//! methods on channel 0, and a failed login without the
//! `authentication_failure_close` capability.
//!
//! Each expectation was checked against a live RabbitMQ 3.10.8: the reply
//! codes, texts and method ids asserted here are the ones it sends.
//! Most tests speak AMQP by hand ([`RawConn`]) because client libraries
//! hide the frames; lapin checks the same where it can.

mod common;
use common::raw::*;
// The raw publish frame, not the lapin helper of the same name.
use common::raw::publish;
use common::*;

use amq_protocol::frame::AMQPFrame;
use amq_protocol::protocol::{basic, channel, connection, exchange, queue, AMQPClass};
use amq_protocol::types::{FieldTable, LongString};
use lapin::options::{ChannelFlowOptions, QueueDeclareOptions};
use std::time::{Duration, Instant};

fn connection_close_frame() -> Vec<u8> {
    method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
            reply_code: 200,
            reply_text: "bye".into(),
            class_id: 0,
            method_id: 0,
        })),
    )
}

fn channel_close_frame(ch: u16) -> Vec<u8> {
    method(
        ch,
        AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
            reply_code: 200,
            reply_text: "bye".into(),
            class_id: 0,
            method_id: 0,
        })),
    )
}

fn update_secret_frame(secret: &str) -> Vec<u8> {
    method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::UpdateSecret(
            connection::UpdateSecret {
                new_secret: LongString::from(secret.as_bytes().to_vec()),
                reason: "token refresh".into(),
            },
        )),
    )
}

/// publish + header + body of a small message to `queue`.
fn message(ch: u16, queue: &str, i: usize) -> Vec<u8> {
    let data = format!("message {i}");
    let mut v = publish(ch, "", queue);
    v.extend(header(ch, data.len() as u64));
    v.extend(body(ch, data.as_bytes()));
    v
}

/// The next frame that is not a heartbeat, as (channel, method).
async fn next_method(c: &mut RawConn, what: &str) -> (u16, AMQPClass) {
    match c.expect_frame(what).await {
        AMQPFrame::Method(ch, m) => (ch, m),
        other => panic!("expected {what}, got {other:?}"),
    }
}

async fn declare(c: &mut RawConn, ch: u16, name: &str, exclusive: bool) {
    c.send_method(
        ch,
        AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: name.into(),
            exclusive,
            ..Default::default()
        })),
    )
    .await;
    match c.expect_method(ch, "queue.declare-ok").await {
        AMQPClass::Queue(queue::AMQPMethod::DeclareOk(_)) => {}
        other => panic!("expected queue.declare-ok, got {other:?}"),
    }
}

async fn message_count(b: &TestBroker, name: &str) -> u32 {
    let (_c, ch) = b.channel().await;
    within(
        5,
        ch.queue_declare(name.into(), passive(), FieldTable::default()),
    )
    .await
    .unwrap_or_else(|e| panic!("passive declare of {name}: {e}"))
    .message_count()
}

// ---------------------------------------------------------------------------
// 2. connection.update-secret
// ---------------------------------------------------------------------------

/// RabbitMQ 3.10 answers update-secret-ok and keeps the connection, for the
/// user's password and, for users of its internal database, for any other
/// secret too (their authentication state never expires, so the new secret
/// is not checked). Lepus did the same neither way: it closed with 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_secret_is_answered_update_secret_ok_and_the_connection_stays() {
    let b = TestBroker::start().await;
    for secret in ["guest", "not the password"] {
        let mut c = RawConn::open(b.addr()).await;
        c.send(&update_secret_frame(secret)).await;
        match next_method(&mut c, "connection.update-secret-ok").await {
            (0, AMQPClass::Connection(connection::AMQPMethod::UpdateSecretOk(_))) => {}
            other => panic!("secret {secret:?}: expected update-secret-ok, got {other:?}"),
        }
        // The connection and its channel still work.
        declare(&mut c, 1, "after-update-secret", false).await;
    }
    // lapin's update_secret, then the connection still works.
    let (conn, ch) = b.channel().await;
    within(5, conn.update_secret("guest".into(), "refresh".into()))
        .await
        .expect("update-secret with the password");
    within(
        5,
        conn.update_secret("expired-token".into(), "refresh".into()),
    )
    .await
    .expect("update-secret with another secret, as RabbitMQ's internal users");
    within(
        5,
        ch.queue_declare(
            "after-update-secret".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("the channel still works after update-secret");
    assert!(conn.status().connected());
    b.stop().await;
}

// ---------------------------------------------------------------------------
// 3. Closing: everything sent before the close is handled; the client
//    closes the socket
// ---------------------------------------------------------------------------

const BATCH: usize = 500;

/// A batch of publishes and connection.close in one write: every message is
/// in the queue, close-ok comes back, and the socket stays open for the
/// client to close (writing to it is no EPIPE, reading it is no reset or
/// EOF), as on RabbitMQ. Before, lepus closed the socket right after
/// close-ok, so the client's next write failed with a broken pipe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_then_connection_close_in_one_write_are_all_stored_and_the_client_closes() {
    let b = TestBroker::start().await;
    let mut c = RawConn::open(b.addr()).await;
    declare(&mut c, 1, "batch", false).await;
    let mut write = vec![];
    for i in 0..BATCH {
        write.extend(message(1, "batch", i));
    }
    write.extend(connection_close_frame());
    c.send(&write).await;
    match next_method(&mut c, "connection.close-ok").await {
        (0, AMQPClass::Connection(connection::AMQPMethod::CloseOk(_))) => {}
        other => panic!("expected connection.close-ok, got {other:?}"),
    }
    // The socket is the client's to close: it stays open and writable.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        c.try_send(&raw_frame(8, 0, b""))
            .await
            .expect("writing after close-ok (the broker must not have closed the socket)");
    }
    match c.recv_within(Duration::from_millis(300)).await {
        Err(()) => {} // still open, nothing more to read
        Ok(None) => panic!("the broker closed the socket after close-ok; the client should"),
        Ok(Some(f)) => panic!("a frame after close-ok: {f:?}"),
    }
    assert_eq!(
        message_count(&b, "batch").await,
        BATCH as u32,
        "every message published before connection.close is in the queue"
    );
    drop(c);
    b.stop().await;
}

/// A client that never closes its socket after close-ok has it closed by
/// the broker after a short timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_keeps_the_socket_after_close_ok_is_closed_after_a_timeout() {
    let b = TestBroker::start().await;
    let mut c = RawConn::open(b.addr()).await;
    c.send(&connection_close_frame()).await;
    match next_method(&mut c, "connection.close-ok").await {
        (0, AMQPClass::Connection(connection::AMQPMethod::CloseOk(_))) => {}
        other => panic!("expected connection.close-ok, got {other:?}"),
    }
    let t0 = Instant::now();
    c.expect_eof(Duration::from_secs(10), "the close timeout")
        .await;
    assert!(
        t0.elapsed() >= Duration::from_millis(500),
        "closed {:?} after close-ok: that is not leaving it to the client",
        t0.elapsed()
    );
    b.stop().await;
}

/// As RabbitMQ, the connection's exclusive queues are gone by the time the
/// client reads close-ok (a client that reconnects at once can declare
/// them again), even while the socket is still open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusive_queues_are_deleted_before_close_ok() {
    let b = TestBroker::start().await;
    let mut c = RawConn::open(b.addr()).await;
    declare(&mut c, 1, "mine", true).await;
    c.send(&connection_close_frame()).await;
    match next_method(&mut c, "connection.close-ok").await {
        (0, AMQPClass::Connection(connection::AMQPMethod::CloseOk(_))) => {}
        other => panic!("expected connection.close-ok, got {other:?}"),
    }
    assert_eq!(
        passive_declare_code(&b, "mine").await,
        Some(404),
        "the exclusive queue is deleted before close-ok"
    );
    let (_c2, ch2) = b.channel().await;
    within(
        5,
        ch2.queue_declare(
            "mine".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect("a new connection declares the exclusive queue again");
    drop(c);
    b.stop().await;
}

/// The same for channel.close: the channel's publishes before it are all
/// handled, then close-ok, and the connection goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_then_channel_close_in_one_write_are_all_stored() {
    let b = TestBroker::start().await;
    let mut c = RawConn::open(b.addr()).await;
    declare(&mut c, 1, "chbatch", false).await;
    let mut write = vec![];
    for i in 0..BATCH {
        write.extend(message(1, "chbatch", i));
    }
    write.extend(channel_close_frame(1));
    c.send(&write).await;
    match next_method(&mut c, "channel.close-ok").await {
        (1, AMQPClass::Channel(channel::AMQPMethod::CloseOk(_))) => {}
        other => panic!("expected channel.close-ok on channel 1, got {other:?}"),
    }
    assert_eq!(message_count(&b, "chbatch").await, BATCH as u32);
    // The same channel number opens again on the same connection.
    c.open_channel(1).await;
    declare(&mut c, 1, "chbatch", false).await;
    // And publishes on two channels, one closed, then connection.close.
    c.open_channel(2).await;
    let mut write = vec![];
    for i in 0..BATCH {
        write.extend(message(1, "chbatch", i));
        write.extend(message(2, "chbatch", i));
    }
    write.extend(channel_close_frame(2));
    write.extend(connection_close_frame());
    c.send(&write).await;
    loop {
        match next_method(&mut c, "connection.close-ok").await {
            (0, AMQPClass::Connection(connection::AMQPMethod::CloseOk(_))) => break,
            (2, AMQPClass::Channel(channel::AMQPMethod::CloseOk(_))) => {}
            other => panic!("expected close-oks, got {other:?}"),
        }
    }
    assert_eq!(message_count(&b, "chbatch").await, 3 * BATCH as u32);
    b.stop().await;
}

// ---------------------------------------------------------------------------
// 5. queue.delete-ok before the server's basic.cancel
// ---------------------------------------------------------------------------

async fn consume(c: &mut RawConn, ch: u16, queue: &str, tag: &str) {
    c.send_method(
        ch,
        AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
            queue: queue.into(),
            consumer_tag: tag.into(),
            ..Default::default()
        })),
    )
    .await;
    match c.expect_method(ch, "basic.consume-ok").await {
        AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(_)) => {}
        other => panic!("expected basic.consume-ok, got {other:?}"),
    }
}

/// RabbitMQ sends queue.delete-ok first, then basic.cancel to the queue's
/// consumers on the same connection; a synchronous client waiting for
/// delete-ok must not get the cancel first. Lepus sent them the other way
/// round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_delete_ok_comes_before_the_cancel_of_the_channels_own_consumer() {
    let b = TestBroker::start().await;
    let mut c = RawConn::open(b.addr()).await;
    c.open_channel(2).await;
    // Deleted by the consumer's own channel, then from another channel.
    for (q, deleter) in [("own", 1u16), ("other", 2u16)] {
        declare(&mut c, 1, q, false).await;
        consume(&mut c, 1, q, &format!("ctag-{q}")).await;
        c.send_method(
            deleter,
            AMQPClass::Queue(queue::AMQPMethod::Delete(queue::Delete {
                queue: q.into(),
                ..Default::default()
            })),
        )
        .await;
        match next_method(&mut c, "queue.delete-ok").await {
            (ch, AMQPClass::Queue(queue::AMQPMethod::DeleteOk(_))) if ch == deleter => {}
            other => panic!("{q}: expected queue.delete-ok first, got {other:?}"),
        }
        match next_method(&mut c, "basic.cancel").await {
            (1, AMQPClass::Basic(basic::AMQPMethod::Cancel(cancel))) => {
                assert_eq!(cancel.consumer_tag.as_str(), format!("ctag-{q}"))
            }
            other => panic!("{q}: expected basic.cancel after delete-ok, got {other:?}"),
        }
    }
    // With nowait there is no delete-ok: the cancel alone.
    declare(&mut c, 1, "nowait", false).await;
    consume(&mut c, 1, "nowait", "ctag-nowait").await;
    c.send_method(
        1,
        AMQPClass::Queue(queue::AMQPMethod::Delete(queue::Delete {
            queue: "nowait".into(),
            nowait: true,
            ..Default::default()
        })),
    )
    .await;
    match next_method(&mut c, "basic.cancel").await {
        (1, AMQPClass::Basic(basic::AMQPMethod::Cancel(cancel))) => {
            assert_eq!(cancel.consumer_tag.as_str(), "ctag-nowait")
        }
        other => panic!("expected basic.cancel, got {other:?}"),
    }
    // The connection goes on.
    declare(&mut c, 1, "after", false).await;
    b.stop().await;
}

// ---------------------------------------------------------------------------
// 6. Channel numbers and the channel_max count
// ---------------------------------------------------------------------------

/// RabbitMQ 3.10 limits how many channels are open, not their numbers:
/// with channel_max 2047, channels 2048 and 65535 open. Lepus closed the
/// connection with 530.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_numbers_above_channel_max_open() {
    let b = TestBroker::start().await;
    let (mut c, _) = RawConn::start(b.addr()).await;
    let login = Login::default();
    c.start_ok(&login).await;
    let tune = c.expect_tune().await;
    assert_eq!(tune.channel_max, 2047, "the default channel_max");
    c.tune_ok_and_open(&tune, &login).await;
    c.expect_method(0, "connection.open-ok").await;
    for ch in [2047u16, 2048, 65535] {
        c.open_channel(ch).await;
        declare(&mut c, ch, &format!("q{ch}"), false).await;
    }
    b.stop().await;
}

/// With channel_max 3, a fourth open channel is refused, whatever its
/// number, with RabbitMQ's 530 and text (and no method ids); closed
/// channels do not count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_max_limits_the_number_of_open_channels() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.channel_max = 3;
    let b = TestBroker::start_with(dir, config).await;
    let mut c = RawConn::login(b.addr(), &Login::default()).await;
    for ch in [1u16, 2, 3] {
        c.open_channel(ch).await;
    }
    // A closed channel frees its place.
    c.send(&channel_close_frame(2)).await;
    c.expect_method(2, "channel.close-ok").await;
    c.open_channel(500).await;
    c.send_method(
        100,
        AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
    )
    .await;
    let close = c.expect_connection_close().await;
    assert_eq!(close.reply_code, 530);
    assert_eq!(
        close.reply_text.as_str(),
        "NOT_ALLOWED - number of channels opened (3) has reached the negotiated channel_max (3)"
    );
    assert_eq!((close.class_id, close.method_id), (0, 0));
    c.expect_eof(ANSWER, "after connection.close-ok").await;
    b.stop().await;
}

// ---------------------------------------------------------------------------
// 7a. channel.flow from the client
// ---------------------------------------------------------------------------

/// RabbitMQ 3.10 refuses channel.flow active=false from a client: 540
/// NOT_IMPLEMENTED closes the connection. active=true is answered flow-ok.
/// Lepus answered flow-ok to both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_flow_active_false_is_540_not_implemented() {
    let b = TestBroker::start().await;
    let mut c = RawConn::open(b.addr()).await;
    c.send_method(
        1,
        AMQPClass::Channel(channel::AMQPMethod::Flow(channel::Flow { active: true })),
    )
    .await;
    match c.expect_method(1, "channel.flow-ok").await {
        AMQPClass::Channel(channel::AMQPMethod::FlowOk(ok)) => assert!(ok.active),
        other => panic!("expected channel.flow-ok, got {other:?}"),
    }
    c.send_method(
        1,
        AMQPClass::Channel(channel::AMQPMethod::Flow(channel::Flow { active: false })),
    )
    .await;
    let close = c.expect_connection_close().await;
    assert_eq!(close.reply_code, 540);
    assert_eq!(close.reply_text.as_str(), "NOT_IMPLEMENTED - active=false");
    assert_eq!((close.class_id, close.method_id), (20, 20));
    // lapin sees the error reply.
    let (_conn, ch) = b.channel().await;
    let r = within(5, ch.channel_flow(ChannelFlowOptions { active: false })).await;
    assert_eq!(expect_code(r), 540);
    b.stop().await;
}

// ---------------------------------------------------------------------------
// 7b. Methods and content frames on channel 0
// ---------------------------------------------------------------------------

/// Any method on channel 0 other than connection.close, close-ok (when we
/// closed) and update-secret: RabbitMQ 3.10 closes with 504 CHANNEL_ERROR
/// and the method's ids. Lepus answered 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn methods_on_channel_0_are_504_channel_error() {
    let b = TestBroker::start().await;
    let cases: Vec<(AMQPClass, (u16, u16))> = vec![
        (
            AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                queue: "zero".into(),
                ..Default::default()
            })),
            (50, 10),
        ),
        (
            AMQPClass::Exchange(exchange::AMQPMethod::Declare(exchange::Declare {
                exchange: "zero".into(),
                kind: "direct".into(),
                ..Default::default()
            })),
            (40, 10),
        ),
        (
            AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
                prefetch_count: 1,
                global: false,
            })),
            (60, 10),
        ),
        (
            AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                exchange: "".into(),
                routing_key: "zero".into(),
                mandatory: false,
                immediate: false,
            })),
            (60, 40),
        ),
        (
            AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
            (20, 10),
        ),
        (
            AMQPClass::Connection(connection::AMQPMethod::Blocked(connection::Blocked {
                reason: "client".into(),
            })),
            (10, 60),
        ),
        (
            AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
            (10, 51),
        ),
        (
            AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                channel_max: 0,
                frame_max: 131072,
                heartbeat: 0,
            })),
            (10, 31),
        ),
    ];
    for (m, ids) in cases {
        let mut c = RawConn::open(b.addr()).await;
        c.send_method(0, m).await;
        let close = c.expect_connection_close().await;
        assert_eq!(close.reply_code, 504, "{ids:?}: {:?}", close.reply_text);
        assert_eq!(
            close.reply_text.as_str(),
            "CHANNEL_ERROR - unexpected method in connection state running"
        );
        assert_eq!((close.class_id, close.method_id), ids);
        c.expect_eof(ANSWER, "after connection.close-ok").await;
    }
    // Content frames on channel 0: 505 UNEXPECTED_FRAME with RabbitMQ's text.
    for (frame, text) in [
        (
            header(0, 5),
            "UNEXPECTED_FRAME - type 2, all octets = <<0,60,0,0,0,0,0,0,0,0,0,5,0,0>>",
        ),
        (
            body(0, b"hello"),
            "UNEXPECTED_FRAME - type 3, all octets = <<\"hello\">>",
        ),
    ] {
        let mut c = RawConn::open(b.addr()).await;
        c.send(&frame).await;
        let close = c.expect_connection_close().await;
        assert_eq!(close.reply_code, 505);
        assert_eq!(close.reply_text.as_str(), text);
        assert_eq!((close.class_id, close.method_id), (0, 0));
    }
    b.stop().await;
}

// ---------------------------------------------------------------------------
// 8. A failed login without authentication_failure_close
// ---------------------------------------------------------------------------

/// Without the capability RabbitMQ sends no connection.close for a failed
/// login: the client sees the socket close. With it, the 403 close (see
/// protocol_errors::bad_credentials_are_access_refused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_login_without_the_capability_closes_the_socket_without_a_close_method() {
    let b = TestBroker::start().await;
    let (mut c, _) = RawConn::start(b.addr()).await;
    c.start_ok(&Login {
        response: b"\0guest\0wrong".to_vec(),
        capabilities: false,
        ..Default::default()
    })
    .await;
    match c.recv_within(ANSWER).await {
        Ok(None) => {}
        Ok(Some(f)) => panic!("expected the socket to close, got {f:?}"),
        Err(()) => panic!("the socket is still open {ANSWER:?} after a failed login"),
    }
    // With the capability: 403 and RabbitMQ's text.
    let (mut c, _) = RawConn::start(b.addr()).await;
    c.start_ok(&Login {
        response: b"\0guest\0wrong".to_vec(),
        ..Default::default()
    })
    .await;
    let close = c.expect_connection_close().await;
    assert_eq!(close.reply_code, 403);
    assert_eq!(
        close.reply_text.as_str(),
        "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. For details see the broker logfile."
    );
    b.stop().await;
}
