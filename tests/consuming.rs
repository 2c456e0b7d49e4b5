//! Consuming over a real socket with lapin: prefetch, consumer tags and
//! exclusivity, cancel (client and server side), mandatory returns,
//! basic.get, ack/nack/reject/recover and requeueing, and the errors RabbitMQ
//! 3.10 answers with.

mod common;
use common::*;
use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::BasicProperties;

#[tokio::test]
async fn prefetch_per_consumer_limits_unacked_deliveries() {
    let b = TestBroker::start().await;
    let (_c, pch) = confirm_channel(&b).await;
    declare_queue(&pch, "pf").await;
    publish_all(&pch, "pf", &["1", "2", "3", "4", "5", "6"]).await;

    let (_c2, ch) = b.channel().await;
    ch.basic_qos(2, BasicQosOptions { global: false })
        .await
        .unwrap();
    let mut c1 = consume(&ch, "pf", "c1").await;
    let d1 = next_delivery(&mut c1).await;
    let d2 = next_delivery(&mut c1).await;
    assert_eq!((text(&d1), text(&d2)), ("1".into(), "2".into()));
    assert!(
        silent_for(&mut c1, 300).await,
        "no third delivery while two are unacked"
    );
    // Per consumer: a second consumer on the channel has its own 2.
    let mut c2 = consume(&ch, "pf", "c2").await;
    let e1 = next_delivery(&mut c2).await;
    let e2 = next_delivery(&mut c2).await;
    assert_eq!((text(&e1), text(&e2)), ("3".into(), "4".into()));
    assert!(silent_for(&mut c2, 200).await);
    assert_eq!(queue_counts(&pch, "pf").await, (2, 2));
    // An ack frees one slot of that consumer.
    d1.ack(BasicAckOptions::default()).await.unwrap();
    let d3 = next_delivery(&mut c1).await;
    assert_eq!(text(&d3), "5");
    assert!(silent_for(&mut c1, 200).await);
    b.stop().await;
}

#[tokio::test]
async fn global_prefetch_limits_the_whole_channel() {
    let b = TestBroker::start().await;
    let (_c, pch) = confirm_channel(&b).await;
    declare_queue(&pch, "g1").await;
    declare_queue(&pch, "g2").await;
    publish_all(&pch, "g1", &["a1", "a2", "a3"]).await;
    publish_all(&pch, "g2", &["b1", "b2", "b3"]).await;

    let (_c2, ch) = b.channel().await;
    ch.basic_qos(2, BasicQosOptions { global: true })
        .await
        .unwrap();
    let c1 = consume(&ch, "g1", "c1").await;
    let c2 = consume(&ch, "g2", "c2").await;
    // Both consumers' deliveries in one stream.
    let mut both = c1.or(c2);
    let mut got = vec![];
    for _ in 0..2 {
        got.push(
            within(5, both.next())
                .await
                .expect("consumer ended")
                .expect("delivery error"),
        );
    }
    let third = tokio::time::timeout(std::time::Duration::from_millis(300), both.next()).await;
    assert!(
        third.is_err(),
        "two unacked deliveries on the whole channel, got a third: {:?}",
        third.ok().flatten().map(|d| d.map(|d| text(&d)))
    );
    // Acking one lets exactly one more through.
    got[0].ack(BasicAckOptions::default()).await.unwrap();
    within(5, both.next())
        .await
        .expect("consumer ended")
        .expect("delivery error");
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(300), both.next())
            .await
            .is_err(),
        "only one more after one ack"
    );
    b.stop().await;
}

#[tokio::test]
async fn server_generated_consumer_tags_start_with_amq_ctag() {
    let b = TestBroker::start().await;
    let (_c, ch) = confirm_channel(&b).await;
    declare_queue(&ch, "ct").await;
    let mut c1 = consume(&ch, "ct", "").await;
    let c2 = consume(&ch, "ct", "").await;
    let (t1, t2) = (c1.tag().as_str().to_owned(), c2.tag().as_str().to_owned());
    assert!(t1.starts_with("amq.ctag-"), "{t1}");
    assert!(t2.starts_with("amq.ctag-"), "{t2}");
    assert_ne!(t1, t2);
    drop(c2);
    ch.basic_cancel(t2.as_str().into(), BasicCancelOptions::default())
        .await
        .unwrap();
    publish_all(&ch, "ct", &["x"]).await;
    let d = next_delivery(&mut c1).await;
    assert_eq!(text(&d), "x");
    b.stop().await;
}

#[tokio::test]
async fn exclusive_consumers_conflict_with_403() {
    let b = TestBroker::start().await;
    let c = b.connect().await;
    let ch = c.create_channel().await.unwrap();
    declare_queue(&ch, "xq1").await;
    declare_queue(&ch, "xq2").await;
    let _plain = consume(&ch, "xq1", "plain").await;
    // An exclusive consume on a queue that has a consumer.
    let ch2 = c.create_channel().await.unwrap();
    let r = ch2
        .basic_consume(
            "xq1".into(),
            "excl".into(),
            BasicConsumeOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await;
    assert_eq!(expect_code(r), 403);
    assert!(c.status().connected());

    // Any consume on a queue with an exclusive consumer.
    let ch3 = c.create_channel().await.unwrap();
    let _excl = ch3
        .basic_consume(
            "xq2".into(),
            "excl2".into(),
            BasicConsumeOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let ch4 = c.create_channel().await.unwrap();
    let r = ch4
        .basic_consume(
            "xq2".into(),
            "second".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await;
    assert_eq!(expect_code(r), 403);
    // Also from the same channel as the exclusive consumer.
    let r = ch3
        .basic_consume(
            "xq2".into(),
            "third".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await;
    assert_eq!(expect_code(r), 403);
    b.stop().await;
}

#[tokio::test]
async fn basic_cancel_stops_deliveries() {
    let b = TestBroker::start().await;
    let (_c, pch) = confirm_channel(&b).await;
    declare_queue(&pch, "cq").await;
    let (_c2, ch) = b.channel().await;
    let mut consumer = within(
        5,
        ch.basic_consume(
            "cq".into(),
            "ctag".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .unwrap();
    publish_all(&pch, "cq", &["before"]).await;
    assert_eq!(text(&next_delivery(&mut consumer).await), "before");
    ch.basic_cancel("ctag".into(), BasicCancelOptions::default())
        .await
        .unwrap();
    assert!(
        within(5, consumer.next()).await.is_none(),
        "the consumer stream ends"
    );
    publish_all(&pch, "cq", &["after"]).await;
    assert_eq!(
        queue_counts(&pch, "cq").await,
        (1, 0),
        "nothing delivered after the cancel"
    );
    // Cancelling a tag the channel does not know is not an error.
    ch.basic_cancel("never-existed".into(), BasicCancelOptions::default())
        .await
        .unwrap();
    assert!(ch.status().connected());

    // Messages delivered before a cancel stay unacked and can still be acked.
    let mut acked = consume(&ch, "cq", "ctag2").await;
    let d = next_delivery(&mut acked).await;
    assert_eq!(text(&d), "after");
    ch.basic_cancel("ctag2".into(), BasicCancelOptions::default())
        .await
        .unwrap();
    assert_eq!(
        queue_counts(&pch, "cq").await,
        (0, 0),
        "a cancel does not requeue"
    );
    d.ack(BasicAckOptions::default()).await.unwrap();
    ch.basic_qos(0, BasicQosOptions::default()).await.unwrap();
    assert!(
        ch.status().connected(),
        "the ack after the cancel was accepted"
    );
    b.stop().await;
}

#[tokio::test]
async fn deleting_the_queue_cancels_its_consumers() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    declare_queue(&ch, "dq").await;
    let mut consumer = consume(&ch, "dq", "doomed").await;
    let (_c2, other) = b.channel().await;
    other
        .queue_delete("dq".into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    // lapin ends the stream on the server's basic.cancel.
    assert!(
        within(5, consumer.next()).await.is_none(),
        "consumer cancelled by the server"
    );
    // Only the consumer: its channel is open and usable.
    assert!(ch.status().connected());
    declare_queue(&ch, "dq2").await;

    // A message delivered and unacked when its queue goes can still be acked.
    let (_c3, pch) = confirm_channel(&b).await;
    declare_queue(&pch, "dq3").await;
    publish_all(&pch, "dq3", &["m"]).await;
    let mut c3 = consume(&ch, "dq3", "c3").await;
    let d = next_delivery(&mut c3).await;
    other
        .queue_delete("dq3".into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    assert!(within(5, c3.next()).await.is_none());
    d.ack(BasicAckOptions::default()).await.unwrap();
    ch.basic_qos(0, BasicQosOptions::default()).await.unwrap();
    assert!(ch.status().connected(), "the ack was accepted");
    b.stop().await;
}

#[tokio::test]
async fn mandatory_unroutable_message_is_returned_with_312() {
    let b = TestBroker::start().await;
    let (_c, ch) = confirm_channel(&b).await;
    let mandatory = BasicPublishOptions {
        mandatory: true,
        ..Default::default()
    };
    let props = BasicProperties::default()
        .with_content_type("text/plain".into())
        .with_message_id("m-1".into());
    let pc = ch
        .basic_publish(
            "amq.direct".into(),
            "nowhere".into(),
            mandatory,
            b"come back",
            props,
        )
        .await
        .unwrap();
    let conf = within(5, pc).await.unwrap();
    assert!(conf.is_ack(), "an unroutable message is still confirmed");
    let ret = conf.take_message().expect("basic.return");
    assert_eq!(ret.reply_code, 312);
    assert_eq!(ret.reply_text.as_str(), "NO_ROUTE");
    assert_eq!(ret.delivery.exchange.as_str(), "amq.direct");
    assert_eq!(ret.delivery.routing_key.as_str(), "nowhere");
    assert_eq!(ret.delivery.data, b"come back");
    assert_eq!(
        ret.delivery
            .properties
            .content_type()
            .as_ref()
            .map(|s| s.as_str()),
        Some("text/plain")
    );
    assert_eq!(
        ret.delivery
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.as_str()),
        Some("m-1")
    );

    // Through the default exchange to a queue that does not exist.
    let pc = ch
        .basic_publish(
            "".into(),
            "no-such-queue".into(),
            mandatory,
            b"q",
            BasicProperties::default(),
        )
        .await
        .unwrap();
    let ret = within(5, pc)
        .await
        .unwrap()
        .take_message()
        .expect("basic.return");
    assert_eq!(ret.reply_code, 312);

    // Not mandatory: dropped silently. Routed and mandatory: not returned.
    let conf = publish_confirmed_within(
        5,
        &ch,
        "amq.direct",
        "nowhere",
        b"drop",
        BasicProperties::default(),
    )
    .await;
    assert!(conf.is_ack());
    assert!(conf.take_message().is_none());
    declare_queue(&ch, "there").await;
    let pc = ch
        .basic_publish(
            "".into(),
            "there".into(),
            mandatory,
            b"ok",
            BasicProperties::default(),
        )
        .await
        .unwrap();
    assert!(within(5, pc).await.unwrap().take_message().is_none());
    assert!(ch.wait_for_confirms().await.unwrap().is_empty());
    b.stop().await;
}

#[tokio::test]
async fn basic_get_and_get_empty_with_message_counts() {
    let b = TestBroker::start().await;
    let (_c, ch) = confirm_channel(&b).await;
    declare_queue(&ch, "gq").await;
    assert!(
        ch.basic_get("gq".into(), BasicGetOptions::default())
            .await
            .unwrap()
            .is_none(),
        "get-empty"
    );
    publish_all(&ch, "gq", &["1", "2", "3"]).await;
    for (want, left) in [("1", 2), ("2", 1), ("3", 0)] {
        let m = ch
            .basic_get("gq".into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
            .expect("get-ok");
        assert_eq!(String::from_utf8_lossy(&m.delivery.data), want);
        assert_eq!(
            m.message_count, left,
            "message_count in get-ok after {want}"
        );
        assert!(!m.delivery.redelivered);
        assert_eq!(m.delivery.exchange.as_str(), "");
        assert_eq!(m.delivery.routing_key.as_str(), "gq");
    }
    assert!(ch
        .basic_get("gq".into(), BasicGetOptions::default())
        .await
        .unwrap()
        .is_none());
    // basic.get on a missing queue: 404.
    let r = ch
        .basic_get("nope".into(), BasicGetOptions::default())
        .await;
    assert_eq!(expect_code(r), 404);
    b.stop().await;
}

#[tokio::test]
async fn ack_multiple_settles_everything_up_to_the_tag() {
    let b = TestBroker::start().await;
    let (_c, pch) = confirm_channel(&b).await;
    declare_queue(&pch, "am").await;
    publish_all(&pch, "am", &["1", "2", "3", "4", "5"]).await;
    let (_c2, ch) = b.channel().await;
    let mut tags = vec![];
    for _ in 0..5 {
        tags.push(get_one(&ch, "am").await.unwrap().0);
    }
    assert_eq!(tags, vec![1, 2, 3, 4, 5]);
    ch.basic_ack(3, BasicAckOptions { multiple: true })
        .await
        .unwrap();
    ch.close(200, "bye".into()).await.unwrap();
    // 1..3 are gone; 4 and 5 come back redelivered.
    let got = {
        let mut v = vec![];
        while let Some((_, b, red)) = get_one(&pch, "am").await {
            v.push((b, red));
        }
        v
    };
    assert_eq!(got, vec![("4".into(), true), ("5".into(), true)]);
    b.stop().await;
}

#[tokio::test]
async fn nack_and_reject_with_and_without_requeue() {
    let b = TestBroker::start().await;
    let (_c, pch) = confirm_channel(&b).await;
    declare_queue(&pch, "nq").await;
    publish_all(&pch, "nq", &["1", "2", "3", "4", "5"]).await;
    let (_c2, ch) = b.channel().await;
    for _ in 0..5 {
        get_one(&ch, "nq").await.unwrap();
    }
    // nack multiple up to 3 with requeue: 1..3 are ready again.
    ch.basic_nack(
        3,
        BasicNackOptions {
            multiple: true,
            requeue: true,
        },
    )
    .await
    .unwrap();
    assert_eq!(queue_counts(&pch, "nq").await.0, 3);
    // nack multiple up to 5 without requeue: 4 and 5 are dropped.
    ch.basic_nack(
        5,
        BasicNackOptions {
            multiple: true,
            requeue: false,
        },
    )
    .await
    .unwrap();
    assert_eq!(queue_counts(&pch, "nq").await.0, 3);
    // Take the three again: they are redelivered, in order.
    let mut tags = vec![];
    for want in ["1", "2", "3"] {
        let (tag, body, red) = get_one(&ch, "nq").await.unwrap();
        assert_eq!((body.as_str(), red), (want, true));
        tags.push(tag);
    }
    // reject without requeue drops; reject with requeue puts back.
    ch.basic_reject(tags[0], BasicRejectOptions { requeue: false })
        .await
        .unwrap();
    ch.basic_reject(tags[1], BasicRejectOptions { requeue: true })
        .await
        .unwrap();
    ch.basic_ack(tags[2], BasicAckOptions::default())
        .await
        .unwrap();
    assert_eq!(queue_counts(&pch, "nq").await.0, 1);
    ch.close(200, "bye".into()).await.unwrap();
    let (_, body, red) = get_one(&pch, "nq").await.unwrap();
    assert_eq!((body.as_str(), red), ("2", true));
    assert!(get_one(&pch, "nq").await.is_none());
    b.stop().await;
}

#[tokio::test]
async fn requeued_message_keeps_its_place() {
    let b = TestBroker::start().await;
    let (_c, pch) = confirm_channel(&b).await;
    declare_queue(&pch, "order").await;
    publish_all(&pch, "order", &["1", "2", "3"]).await;
    let (_c2, ch) = b.channel().await;
    let mut tags = vec![];
    for _ in 0..3 {
        tags.push(get_one(&ch, "order").await.unwrap().0);
    }
    ch.basic_nack(
        tags[1],
        BasicNackOptions {
            multiple: false,
            requeue: true,
        },
    )
    .await
    .unwrap();
    publish_all(&pch, "order", &["4"]).await;
    let (_, body, red) = get_one(&ch, "order").await.unwrap();
    assert_eq!(
        (body.as_str(), red),
        ("2", true),
        "the requeued message comes before the new one"
    );
    let (_, body, red) = get_one(&ch, "order").await.unwrap();
    assert_eq!((body.as_str(), red), ("4", false));

    // Several requeued out of order go back in their original order.
    ch.basic_reject(tags[2], BasicRejectOptions { requeue: true })
        .await
        .unwrap();
    ch.basic_reject(tags[0], BasicRejectOptions { requeue: true })
        .await
        .unwrap();
    publish_all(&pch, "order", &["5"]).await;
    let got: Vec<(String, bool)> = {
        let mut v = vec![];
        while let Some((_, b, red)) = get_one(&ch, "order").await {
            v.push((b, red));
        }
        v
    };
    assert_eq!(
        got,
        vec![("1".into(), true), ("3".into(), true), ("5".into(), false)]
    );

    // The same with a consumer.
    let (_c3, cch) = b.channel().await;
    declare_queue(&cch, "order2").await;
    publish_all(&pch, "order2", &["1", "2", "3"]).await;
    let mut consumer = consume(&cch, "order2", "oc").await;
    let d1 = next_delivery(&mut consumer).await;
    let d2 = next_delivery(&mut consumer).await;
    let d3 = next_delivery(&mut consumer).await;
    assert_eq!(
        (text(&d1), text(&d2), text(&d3)),
        ("1".into(), "2".into(), "3".into())
    );
    d2.nack(BasicNackOptions {
        multiple: false,
        requeue: true,
    })
    .await
    .unwrap();
    let again = next_delivery(&mut consumer).await;
    assert_eq!((text(&again), again.redelivered), ("2".into(), true));
    publish_all(&pch, "order2", &["4"]).await;
    let next = next_delivery(&mut consumer).await;
    assert_eq!((text(&next), next.redelivered), ("4".into(), false));
    b.stop().await;
}

/// basic.recover with requeue=true puts every unacked message of the channel
/// back; a consumer gets them again marked redelivered.
#[tokio::test]
async fn basic_recover_redelivers_to_a_consumer() {
    let b = TestBroker::start().await;
    let (_c, pch) = confirm_channel(&b).await;
    declare_queue(&pch, "rq").await;
    let (_c2, ch) = b.channel().await;
    let mut consumer = consume(&ch, "rq", "rc").await;
    publish_all(&pch, "rq", &["1", "2", "3"]).await;
    for want in ["1", "2", "3"] {
        let d = next_delivery(&mut consumer).await;
        assert_eq!((text(&d).as_str(), d.redelivered), (want, false));
    }
    within(5, ch.basic_recover(BasicRecoverOptions { requeue: true }))
        .await
        .unwrap();
    for want in ["1", "2", "3"] {
        let d = tokio::time::timeout(std::time::Duration::from_secs(5), consumer.next())
            .await
            .unwrap_or_else(|_| {
                panic!("message {want} not redelivered to the consumer after basic.recover-ok")
            })
            .expect("consumer ended")
            .expect("delivery error");
        assert_eq!(
            (text(&d).as_str(), d.redelivered),
            (want, true),
            "redelivered after basic.recover"
        );
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    assert_eq!(queue_counts(&pch, "rq").await, (0, 1));
    b.stop().await;
}

#[tokio::test]
async fn basic_recover_requeues_messages_taken_with_get() {
    let b = TestBroker::start().await;
    let (_c, pch) = confirm_channel(&b).await;
    declare_queue(&pch, "rg").await;
    publish_all(&pch, "rg", &["1", "2"]).await;
    let (_c2, ch) = b.channel().await;
    get_one(&ch, "rg").await.unwrap();
    get_one(&ch, "rg").await.unwrap();
    assert_eq!(queue_counts(&pch, "rg").await.0, 0);
    within(5, ch.basic_recover(BasicRecoverOptions { requeue: true }))
        .await
        .unwrap();
    assert_eq!(queue_counts(&pch, "rg").await.0, 2);
    assert_eq!(
        get_one(&pch, "rg").await.map(|(_, b, r)| (b, r)),
        Some(("1".into(), true))
    );
    b.stop().await;
}

#[tokio::test]
async fn unacked_messages_are_requeued_when_their_channel_closes() {
    let b = TestBroker::start().await;
    let (c, pch) = confirm_channel(&b).await;
    declare_queue(&pch, "uc").await;
    publish_all(&pch, "uc", &["1", "2", "3"]).await;
    let ch = c.create_channel().await.unwrap();
    let mut consumer = consume(&ch, "uc", "u").await;
    let d1 = next_delivery(&mut consumer).await;
    next_delivery(&mut consumer).await;
    next_delivery(&mut consumer).await;
    d1.ack(BasicAckOptions::default()).await.unwrap();
    ch.close(200, "bye".into()).await.unwrap();
    let mut got = vec![];
    while let Some((_, b, red)) = get_one(&pch, "uc").await {
        got.push((b, red));
    }
    assert_eq!(got, vec![("2".into(), true), ("3".into(), true)]);
    b.stop().await;
}

#[tokio::test]
async fn unacked_messages_are_requeued_when_their_connection_closes() {
    let b = TestBroker::start().await;
    let (_c, pch) = confirm_channel(&b).await;
    declare_queue(&pch, "ucc").await;
    publish_all(&pch, "ucc", &["1", "2"]).await;
    let (conn, ch) = b.channel().await;
    ch.basic_qos(1, BasicQosOptions::default()).await.unwrap();
    let mut consumer = consume(&ch, "ucc", "u").await;
    next_delivery(&mut consumer).await;
    let ch2 = conn.create_channel().await.unwrap();
    get_one(&ch2, "ucc").await.unwrap();
    assert_eq!(queue_counts(&pch, "ucc").await.0, 0);
    conn.close(200, "bye".into()).await.unwrap();
    let ready = eventually_async(10, || async { queue_counts(&pch, "ucc").await.0 == 2 }).await;
    assert!(ready, "both unacked messages back in the queue");
    let mut got = vec![];
    while let Some((_, b, red)) = get_one(&pch, "ucc").await {
        got.push((b, red));
    }
    assert_eq!(got, vec![("1".into(), true), ("2".into(), true)]);
    b.stop().await;
}

#[tokio::test]
async fn acking_an_unknown_delivery_tag_is_406() {
    let b = TestBroker::start().await;
    let (c, ch) = b.channel().await;
    declare_queue(&ch, "unk").await;
    let mut closes = watch_closes(&c);
    ch.basic_ack(99, BasicAckOptions::default()).await.unwrap();
    assert_eq!(closes.next_code().await, 406);
    assert!(
        eventually(5, || !ch.status().connected()).await,
        "channel closed"
    );
    assert!(c.status().connected(), "connection open");
    // nack and reject of an unknown tag too.
    for op in ["nack", "reject"] {
        let ch = c.create_channel().await.unwrap();
        match op {
            "nack" => ch.basic_nack(7, BasicNackOptions::default()).await.unwrap(),
            _ => ch
                .basic_reject(7, BasicRejectOptions::default())
                .await
                .unwrap(),
        }
        assert_eq!(closes.next_code().await, 406, "{op} of an unknown tag");
    }
    b.stop().await;
}

#[tokio::test]
async fn acking_twice_is_406() {
    let b = TestBroker::start().await;
    let (c, pch) = confirm_channel(&b).await;
    declare_queue(&pch, "twice").await;
    publish_all(&pch, "twice", &["1", "2"]).await;
    let ch = c.create_channel().await.unwrap();
    let (tag, _, _) = get_one(&ch, "twice").await.unwrap();
    let mut closes = watch_closes(&c);
    ch.basic_ack(tag, BasicAckOptions::default()).await.unwrap();
    ch.basic_ack(tag, BasicAckOptions::default()).await.unwrap();
    assert_eq!(closes.next_code().await, 406);
    assert!(eventually(5, || !ch.status().connected()).await);
    // The first ack counted: only "2" is left.
    assert_eq!(drain(&pch, "twice").await, vec!["2"]);
    b.stop().await;
}

#[tokio::test]
async fn reusing_a_consumer_tag_on_a_channel_closes_the_connection_with_530() {
    let b = TestBroker::start().await;
    let (c, ch) = b.channel().await;
    declare_queue(&ch, "t1").await;
    declare_queue(&ch, "t2").await;
    let _first = consume(&ch, "t1", "same-tag").await;
    // The same tag on another channel is fine.
    let other = c.create_channel().await.unwrap();
    let _other = consume(&other, "t1", "same-tag").await;
    let r = ch
        .basic_consume(
            "t2".into(),
            "same-tag".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await;
    assert_eq!(expect_code(r), 530);
    assert!(
        eventually(5, || !c.status().connected()).await,
        "a connection error"
    );
    b.stop().await;
}

/// RabbitMQ's collect_acks walks the unacked list looking for the exact tag,
/// even with multiple=true; a tag that is not outstanding (never delivered,
/// or already acked) is 406 "unknown delivery tag", and nothing is acked.
#[tokio::test]
async fn multiple_ack_of_a_tag_above_all_outstanding_is_406() {
    let b = TestBroker::start().await;
    let (c, pch) = confirm_channel(&b).await;
    declare_queue(&pch, "mq").await;
    publish_all(&pch, "mq", &["1", "2", "3"]).await;

    let ch = c.create_channel().await.unwrap();
    for _ in 0..3 {
        get_one(&ch, "mq").await.unwrap();
    }
    let mut closes = watch_closes(&c);
    ch.basic_ack(99, BasicAckOptions { multiple: true })
        .await
        .unwrap();
    assert_eq!(
        closes.next_code().await,
        406,
        "ack multiple of tag 99 with tags 1..3 outstanding"
    );
    assert!(eventually(5, || !ch.status().connected()).await);
    // Nothing was acked: all three come back.
    eventually_async(10, || async { queue_counts(&pch, "mq").await.0 == 3 }).await;
    let n = queue_counts(&pch, "mq").await.0;
    assert_eq!(n, 3, "the failed ack settled nothing");
    b.stop().await;
}

#[tokio::test]
async fn multiple_nack_of_an_already_acked_tag_is_406() {
    let b = TestBroker::start().await;
    let (c, pch) = confirm_channel(&b).await;
    declare_queue(&pch, "mq").await;
    publish_all(&pch, "mq", &["1", "2", "3"]).await;
    let mut closes = watch_closes(&c);
    // A tag already acked, with others before and after it outstanding.
    let ch = c.create_channel().await.unwrap();
    let mut tags = vec![];
    for _ in 0..3 {
        tags.push(get_one(&ch, "mq").await.unwrap().0);
    }
    ch.basic_ack(tags[1], BasicAckOptions::default())
        .await
        .unwrap();
    ch.basic_nack(
        tags[1],
        BasicNackOptions {
            multiple: true,
            requeue: true,
        },
    )
    .await
    .unwrap();
    assert_eq!(
        closes.next_code().await,
        406,
        "nack multiple of an already acked tag"
    );
    b.stop().await;
}

#[tokio::test]
async fn ack_multiple_with_tag_zero_acks_everything_outstanding() {
    let b = TestBroker::start().await;
    let (c, pch) = confirm_channel(&b).await;
    declare_queue(&pch, "zq").await;
    publish_all(&pch, "zq", &["1", "2", "3"]).await;
    let ch = c.create_channel().await.unwrap();
    for _ in 0..3 {
        get_one(&ch, "zq").await.unwrap();
    }
    ch.basic_ack(0, BasicAckOptions { multiple: true })
        .await
        .unwrap();
    ch.close(200, "bye".into()).await.unwrap();
    assert_eq!(queue_counts(&pch, "zq").await.0, 0, "all three acked");
    b.stop().await;
}

#[tokio::test]
async fn basic_recover_without_requeue_is_540() {
    let b = TestBroker::start().await;
    let (c, ch) = b.channel().await;
    let r = ch
        .basic_recover(BasicRecoverOptions { requeue: false })
        .await;
    assert_eq!(expect_code(r), 540);
    assert!(
        eventually(5, || !c.status().connected()).await,
        "a connection error"
    );
    b.stop().await;
}

#[tokio::test]
async fn immediate_publish_is_540() {
    let b = TestBroker::start().await;
    let (c, ch) = b.channel().await;
    declare_queue(&ch, "imm").await;
    let mut closes = watch_closes(&c);
    ch.basic_publish(
        "".into(),
        "imm".into(),
        BasicPublishOptions {
            immediate: true,
            ..Default::default()
        },
        b"now",
        BasicProperties::default(),
    )
    .await
    .unwrap();
    assert_eq!(closes.next_code().await, 540);
    assert!(
        eventually(5, || !c.status().connected()).await,
        "a connection error"
    );
    b.stop().await;
}
