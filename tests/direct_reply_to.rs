//! Direct reply-to (`amq.rabbitmq.reply-to`) over a real socket with lapin:
//! an RPC round trip in which the reply is never stored, the reply-to
//! property a request carries, replies to a channel that is gone (dropped,
//! or returned when mandatory), and RabbitMQ 3.10.8's errors and texts,
//! each checked side by side against it.

mod common;
use common::*;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection};

const RT: &str = "amq.rabbitmq.reply-to";

/// Consume the pseudo-queue with no-ack, as a requester does.
async fn consume_replies(ch: &Channel, tag: &str) -> lapin::Consumer {
    within(
        5,
        ch.basic_consume(
            RT.into(),
            tag.into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect("consume amq.rabbitmq.reply-to")
}

fn request_props(correlation_id: &str) -> BasicProperties {
    BasicProperties::default()
        .with_reply_to(RT.into())
        .with_correlation_id(correlation_id.into())
}

/// The request the responder finds in `queue`: its body, reply-to and
/// correlation id.
async fn take_request(ch: &Channel, queue: &str) -> (String, String, String) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let got = loop {
        let m = within(
            5,
            ch.basic_get(queue.into(), BasicGetOptions { no_ack: true }),
        )
        .await
        .expect("basic.get");
        if let Some(m) = m {
            break Some(m);
        }
        if std::time::Instant::now() > deadline {
            break None;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    let m = got.unwrap_or_else(|| panic!("the request reached {queue}"));
    let p = &m.delivery.properties;
    (
        String::from_utf8_lossy(&m.delivery.data).into_owned(),
        p.reply_to()
            .as_ref()
            .map(|s| s.to_string())
            .unwrap_or_default(),
        p.correlation_id()
            .as_ref()
            .map(|s| s.to_string())
            .unwrap_or_default(),
    )
}

/// Publish a reply with `mandatory` on a confirm channel; the confirm and
/// the returned message, if any.
async fn reply(
    ch: &Channel,
    key: &str,
    body: &[u8],
    correlation_id: &str,
    mandatory: bool,
) -> (bool, Option<lapin::message::BasicReturnMessage>) {
    let pc = within(
        5,
        ch.basic_publish(
            "".into(),
            key.into(),
            BasicPublishOptions {
                mandatory,
                ..Default::default()
            },
            body,
            BasicProperties::default().with_correlation_id(correlation_id.into()),
        ),
    )
    .await
    .expect("publish the reply");
    let conf = within(5, pc).await.expect("the reply's confirm");
    (conf.is_ack(), conf.take_message())
}

/// A requester (consuming the pseudo-queue) and a responder on its own
/// connection, in confirm mode, serving the queue "rpc".
async fn rpc_pair(b: &TestBroker) -> (Connection, Channel, lapin::Consumer, Connection, Channel) {
    let (c1, req) = b.channel().await;
    let replies = consume_replies(&req, "replies").await;
    let (c2, resp) = confirm_channel(b).await;
    declare_queue(&resp, "rpc").await;
    (c1, req, replies, c2, resp)
}

#[tokio::test]
async fn rpc_round_trip_goes_straight_to_the_requester_and_is_never_stored() {
    let b = TestBroker::start().await;
    let api = common::http::Api::new(&b.mgmt_url());
    let (_c1, req, mut replies, _c2, resp) = rpc_pair(&b).await;
    let mut tokens = vec![];
    for i in 0..3 {
        let cid = format!("corr-{i}");
        publish_with(
            &req,
            "",
            "rpc",
            format!("ping {i}").as_bytes(),
            request_props(&cid),
        )
        .await;
        let (body, reply_to, got_cid) = take_request(&resp, "rpc").await;
        assert_eq!(body, format!("ping {i}"));
        assert_eq!(got_cid, cid);
        let token = reply_to
            .strip_prefix("amq.rabbitmq.reply-to.")
            .unwrap_or_else(|| panic!("reply_to names the channel: {reply_to:?}"));
        assert!(token.len() >= 24, "a long random token: {token:?}");
        tokens.push(reply_to.clone());

        let stored = b.store_bytes_used();
        let (acked, returned) =
            reply(&resp, &reply_to, format!("pong {i}").as_bytes(), &cid, true).await;
        assert!(acked, "the reply is confirmed");
        assert!(
            returned.is_none(),
            "a delivered mandatory reply is not returned"
        );
        let d = next_delivery(&mut replies).await;
        assert_eq!(text(&d), format!("pong {i}"));
        assert_eq!(
            d.properties.correlation_id().as_ref().map(|s| s.as_str()),
            Some(cid.as_str())
        );
        assert_eq!(d.routing_key.as_str(), reply_to);
        assert_eq!(d.exchange.as_str(), "");
        assert!(!d.redelivered);
        assert_eq!(b.store_bytes_used(), stored, "the reply was not stored");
    }
    // One channel, one token, for as long as its consumer lives.
    assert!(tokens.iter().all(|t| t == &tokens[0]));
    // No queue ever held a reply: the request queue is the only one and is empty.
    let queues = api.get("/api/queues/%2f").await.body;
    let names: Vec<&str> = queues
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["rpc"]);
    assert_eq!(queue_counts(&resp, "rpc").await, (0, 0));
    assert!(silent_for(&mut replies, 200).await, "each reply came once");
    b.stop().await;
}

#[tokio::test]
async fn two_requesters_get_their_own_replies_only() {
    let b = TestBroker::start().await;
    let (_c1, req_a, mut replies_a, _c2, resp) = rpc_pair(&b).await;
    // A second requester on another channel of the same connection as A,
    // and a third on its own connection.
    let req_b = _c1.create_channel().await.unwrap();
    let mut replies_b = consume_replies(&req_b, "replies").await;
    let (_c3, req_c) = b.channel().await;
    let mut replies_c = consume_replies(&req_c, "replies").await;

    publish_with(&req_a, "", "rpc", b"a", request_props("a")).await;
    let (_, to_a, _) = take_request(&resp, "rpc").await;
    publish_with(&req_b, "", "rpc", b"b", request_props("b")).await;
    let (_, to_b, _) = take_request(&resp, "rpc").await;
    publish_with(&req_c, "", "rpc", b"c", request_props("c")).await;
    let (_, to_c, _) = take_request(&resp, "rpc").await;
    assert!(
        to_a != to_b && to_b != to_c && to_a != to_c,
        "{to_a} {to_b} {to_c}"
    );

    // Replies in the reverse order: each goes to its own requester.
    for (to, body) in [(&to_c, "for c"), (&to_b, "for b"), (&to_a, "for a")] {
        let (acked, returned) = reply(&resp, to, body.as_bytes(), "x", true).await;
        assert!(acked && returned.is_none());
    }
    assert_eq!(text(&next_delivery(&mut replies_a).await), "for a");
    assert_eq!(text(&next_delivery(&mut replies_b).await), "for b");
    assert_eq!(text(&next_delivery(&mut replies_c).await), "for c");
    for r in [&mut replies_a, &mut replies_b, &mut replies_c] {
        assert!(silent_for(r, 100).await);
    }
    b.stop().await;
}

#[tokio::test]
async fn a_reply_does_not_use_up_a_delivery_tag() {
    // RabbitMQ 3.10: a reply carries the channel's next delivery tag without
    // taking it, so the acknowledged deliveries' tags stay consecutive.
    let b = TestBroker::start().await;
    let (_c1, req, mut replies, _c2, resp) = rpc_pair(&b).await;
    declare_queue(&req, "work").await;
    let mut work = consume(&req, "work", "work").await;
    publish(&resp, "", "work", b"w1").await;
    assert_eq!(next_delivery(&mut work).await.delivery_tag, 1);
    publish_with(&req, "", "rpc", b"q", request_props("c")).await;
    let (_, to, _) = take_request(&resp, "rpc").await;
    reply(&resp, &to, b"r1", "c", false).await;
    reply(&resp, &to, b"r2", "c", false).await;
    assert_eq!(next_delivery(&mut replies).await.delivery_tag, 2);
    assert_eq!(next_delivery(&mut replies).await.delivery_tag, 2);
    publish(&resp, "", "work", b"w2").await;
    let d = next_delivery(&mut work).await;
    assert_eq!(d.delivery_tag, 2);
    d.ack(BasicAckOptions::default()).await.unwrap();
    // The ack of tag 2 settled the work message (tag 1 is still unacked).
    assert_eq!(queue_counts(&resp, "work").await, (0, 1));
    b.stop().await;
}

#[tokio::test]
async fn a_reply_to_a_closed_channel_is_dropped_or_returned_if_mandatory() {
    let b = TestBroker::start().await;
    let (_c1, req, _replies, _c2, resp) = rpc_pair(&b).await;
    publish_with(&req, "", "rpc", b"q", request_props("c")).await;
    let (_, to, _) = take_request(&resp, "rpc").await;
    assert_eq!(b.reply_to_tokens(), 1);
    req.close(200, "bye".into()).await.unwrap();
    assert_eq!(b.reply_to_tokens(), 0, "the closed channel's token is gone");

    let stored = b.store_bytes_used();
    let (acked, returned) = reply(&resp, &to, b"late", "c", true).await;
    assert!(acked, "a returned reply is still confirmed");
    let ret = returned.expect("a mandatory reply to a gone channel is returned");
    assert_eq!(ret.reply_code, 312);
    assert_eq!(ret.reply_text.as_str(), "NO_ROUTE");
    assert_eq!(ret.routing_key.as_str(), to);
    assert_eq!(ret.exchange.as_str(), "");
    assert_eq!(String::from_utf8_lossy(&ret.delivery.data), "late");

    // Without mandatory: dropped in silence, the channel stays open.
    let (acked, returned) = reply(&resp, &to, b"later", "c", false).await;
    assert!(acked && returned.is_none());
    assert_eq!(b.store_bytes_used(), stored, "nothing was stored");
    // A token nobody ever had, or no token at all: the same.
    for key in [
        "amq.rabbitmq.reply-to.not-a-token",
        "amq.rabbitmq.reply-to.",
        RT,
    ] {
        let (acked, returned) = reply(&resp, key, b"x", "c", true).await;
        assert!(acked);
        assert_eq!(returned.expect(key).reply_code, 312, "{key}");
    }
    assert!(resp.status().connected());

    // The whole connection going away forgets its tokens too.
    let (c3, req3) = b.channel().await;
    let _r = consume_replies(&req3, "r3").await;
    assert_eq!(b.reply_to_tokens(), 1);
    c3.close(200, "bye".into()).await.unwrap();
    assert!(eventually(5, || b.reply_to_tokens() == 0).await);
    b.stop().await;
}

#[tokio::test]
async fn consuming_without_no_ack_is_refused() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let e = within(
        5,
        ch.basic_consume(
            RT.into(),
            "acking".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect_err("an acking reply consumer is refused");
    assert_eq!(reply_code(&e), Some(406));
    assert_eq!(
        reply_text(&e),
        "PRECONDITION_FAILED - reply consumer cannot acknowledge"
    );
    assert_eq!(b.reply_to_tokens(), 0);
    b.stop().await;
}

#[tokio::test]
async fn a_second_reply_consumer_on_a_channel_is_refused() {
    let b = TestBroker::start().await;
    let (c, ch) = b.channel().await;
    let _r = consume_replies(&ch, "first").await;
    // Another channel may have its own.
    let other = c.create_channel().await.unwrap();
    let _r2 = consume_replies(&other, "first").await;
    let e = within(
        5,
        ch.basic_consume(
            RT.into(),
            "second".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect_err("a second reply consumer is refused");
    assert_eq!(reply_code(&e), Some(406));
    assert_eq!(
        reply_text(&e),
        "PRECONDITION_FAILED - reply consumer already set"
    );
    // The refused channel is closed: its token is gone, the other's stays.
    assert_eq!(b.reply_to_tokens(), 1);

    // As in RabbitMQ 3.10, a queue consumer may take the reply consumer's
    // tag, but the reply consumer cannot take a queue consumer's (530).
    let ch = c.create_channel().await.unwrap();
    let _replies = consume_replies(&ch, "tag").await;
    declare_queue(&ch, "q").await;
    let mut queue_consumer = consume(&ch, "q", "tag").await;
    publish(&ch, "", "q", b"consumed").await;
    assert_eq!(text(&next_delivery(&mut queue_consumer).await), "consumed");
    assert_eq!(b.reply_to_tokens(), 2);

    let ch = c.create_channel().await.unwrap();
    declare_queue(&ch, "q2").await;
    let _q = consume(&ch, "q2", "taken").await;
    let mut closes = watch_closes(&c);
    let e = within(
        5,
        ch.basic_consume(
            RT.into(),
            "taken".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect_err("the tag is in use");
    assert_eq!(reply_code(&e), Some(530));
    assert_eq!(
        closes.next_close().await,
        (
            530,
            "NOT_ALLOWED - attempt to reuse consumer tag 'taken'".to_string()
        )
    );
    b.stop().await;
}

#[tokio::test]
async fn a_request_naming_the_pseudo_queue_without_consuming_it_is_refused() {
    let b = TestBroker::start().await;
    let (c, ch) = b.channel().await;
    declare_queue(&ch, "rpc").await;
    let mut closes = watch_closes(&c);
    publish_with(&ch, "", "rpc", b"q", request_props("c")).await;
    assert_eq!(
        closes.next_close().await,
        (
            406,
            "PRECONDITION_FAILED - fast reply consumer does not exist".to_string()
        )
    );
    // Another channel's consumer does not count: it is per channel.
    let other = c.create_channel().await.unwrap();
    let _r = consume_replies(&other, "r").await;
    let ch = c.create_channel().await.unwrap();
    publish_with(&ch, "", "rpc", b"q", request_props("c")).await;
    assert_eq!(closes.next_close().await.0, 406);
    // In a transaction: refused at publish time, as in RabbitMQ.
    let ch = c.create_channel().await.unwrap();
    ch.tx_select().await.unwrap();
    publish_with(&ch, "", "rpc", b"q", request_props("c")).await;
    assert_eq!(closes.next_close().await.0, 406);
    assert_eq!(
        queue_counts(&other, "rpc").await,
        (0, 0),
        "nothing was enqueued"
    );
    b.stop().await;
}

#[tokio::test]
async fn cancelling_the_reply_consumer_ends_its_token() {
    let b = TestBroker::start().await;
    let (c, ch) = b.channel().await;
    let (_c2, resp) = confirm_channel(&b).await;
    declare_queue(&resp, "rpc").await;
    let _r = consume_replies(&ch, "replies").await;
    publish_with(&ch, "", "rpc", b"q", request_props("c")).await;
    let (_, old, _) = take_request(&resp, "rpc").await;
    within(
        5,
        ch.basic_cancel("replies".into(), BasicCancelOptions::default()),
    )
    .await
    .expect("cancel-ok");
    assert_eq!(b.reply_to_tokens(), 0);
    // Replies to the old token go nowhere.
    let (acked, returned) = reply(&resp, &old, b"x", "c", true).await;
    assert!(acked);
    assert_eq!(returned.expect("returned").reply_code, 312);
    // A new consumer on the same channel gets a new token.
    let mut replies = consume_replies(&ch, "again").await;
    publish_with(&ch, "", "rpc", b"q", request_props("c2")).await;
    let (_, new, _) = take_request(&resp, "rpc").await;
    assert_ne!(old, new);
    let (acked, returned) = reply(&resp, &new, b"fresh", "c2", true).await;
    assert!(acked && returned.is_none());
    let d = next_delivery(&mut replies).await;
    assert_eq!(
        (text(&d), d.routing_key.as_str()),
        ("fresh".to_string(), new.as_str())
    );
    // Without a consumer, a request naming the pseudo-queue closes the channel.
    within(
        5,
        ch.basic_cancel("again".into(), BasicCancelOptions::default()),
    )
    .await
    .unwrap();
    let mut closes = watch_closes(&c);
    publish_with(&ch, "", "rpc", b"q", request_props("c3")).await;
    assert_eq!(
        closes.next_close().await,
        (
            406,
            "PRECONDITION_FAILED - fast reply consumer does not exist".to_string()
        )
    );
    b.stop().await;
}

#[tokio::test]
async fn declaring_the_pseudo_queue_and_reply_keys() {
    let b = TestBroker::start().await;
    let (c, ch) = b.channel().await;
    // RabbitMQ 3.10 answers 0 messages and 1 consumer, passive or not, with
    // or without a consumer on the channel.
    assert_eq!(queue_counts(&ch, RT).await, (0, 1));
    let ok = within(
        5,
        ch.queue_declare(
            RT.into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .unwrap();
    assert_eq!(
        (ok.name().as_str(), ok.message_count(), ok.consumer_count()),
        (RT, 0, 1)
    );

    let (_c2, resp) = b.channel().await;
    declare_queue(&resp, "rpc").await;
    let _r = consume_replies(&ch, "r").await;
    publish_with(&ch, "", "rpc", b"q", request_props("c")).await;
    let (_, to, _) = take_request(&resp, "rpc").await;
    // A live reply key exists, from any connection.
    assert_eq!(queue_counts(&resp, &to).await, (0, 1));
    ch.close(200, "bye".into()).await.unwrap();
    // A gone one, or one that never was, is 404.
    for name in [
        to.as_str(),
        "amq.rabbitmq.reply-to.nope",
        "amq.rabbitmq.reply-tox",
    ] {
        let ch = c.create_channel().await.unwrap();
        let e = within(
            5,
            ch.queue_declare(
                name.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            ),
        )
        .await
        .expect_err(name);
        assert_eq!(reply_code(&e), Some(404), "{name}");
        assert_eq!(
            reply_text(&e),
            format!("NOT_FOUND - no queue '{name}' in vhost '/'")
        );
    }
    // The pseudo-queue is no queue for get, bind or purge (404, as in RabbitMQ).
    let ch = c.create_channel().await.unwrap();
    let e = within(5, ch.basic_get(RT.into(), BasicGetOptions { no_ack: true }))
        .await
        .expect_err("basic.get of the pseudo-queue");
    assert_eq!(reply_code(&e), Some(404));
    b.stop().await;
}

#[tokio::test]
async fn a_reply_from_a_transaction_is_delivered_at_commit() {
    let b = TestBroker::start().await;
    let (_c1, req, mut replies, _c2, resp) = rpc_pair(&b).await;
    publish_with(&req, "", "rpc", b"q", request_props("c")).await;
    let (_, to, _) = take_request(&resp, "rpc").await;
    let (_c3, tx) = b.channel().await;
    tx.tx_select().await.unwrap();
    publish(&tx, "", &to, b"in tx").await;
    assert!(silent_for(&mut replies, 200).await, "not before commit");
    tx.tx_commit().await.unwrap();
    assert_eq!(text(&next_delivery(&mut replies).await), "in tx");
    publish(&tx, "", &to, b"rolled back").await;
    tx.tx_rollback().await.unwrap();
    assert!(silent_for(&mut replies, 200).await);
    b.stop().await;
}
