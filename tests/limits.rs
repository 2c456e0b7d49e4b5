//! Queue length limits and their overflow modes, the delivery limit,
//! message priorities, single active consumer and consumer priorities, over
//! a real socket with lapin, asserting what a RabbitMQ 3.10 client sees.

mod common;
use common::*;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;

/// (reason, queue, count) of the first x-death entry.
fn first_x_death(p: &BasicProperties) -> (String, String, i64) {
    let x = x_deaths(p);
    let d = x.first().expect("an x-death entry");
    let count = match d.inner().get("count") {
        Some(AMQPValue::LongLongInt(n)) => *n,
        other => panic!("x-death count must be a long: {other:?}"),
    };
    (
        field_str(d, "reason").expect("reason"),
        field_str(d, "queue").expect("queue"),
        count,
    )
}

fn death_of(reason: &str, queue: &str) -> (String, String, i64) {
    (reason.to_string(), queue.to_string(), 1)
}

// ----- length limits -----

#[tokio::test]
async fn max_length_drop_head_drops_the_oldest() {
    let b = TestBroker::start().await;
    let (_c, ch) = confirm_channel(&b).await;
    declare_queue_with(&ch, "ml", plain(), arg_table(&[("x-max-length", int(2))])).await;
    let acks = publish_all(&ch, "ml", &["1", "2", "3", "4"]).await;
    assert_eq!(acks, vec![true; 4], "drop-head confirms every publish");
    assert_eq!(queue_counts(&ch, "ml").await.0, 2);
    assert_eq!(drain(&ch, "ml").await, strs(&["3", "4"]));
    b.stop().await;
}

#[tokio::test]
async fn max_length_drop_head_dead_letters_with_reason_maxlen() {
    let b = TestBroker::start().await;
    let (_c, ch) = confirm_channel(&b).await;
    declare_queue(&ch, "ml-dlq").await;
    declare_queue_with(
        &ch,
        "ml2",
        plain(),
        dead_letter_to(
            "ml-dlq",
            &[("x-max-length", int(2)), ("x-overflow", lstr("drop-head"))],
        ),
    )
    .await;
    publish_all(&ch, "ml2", &["1", "2", "3", "4"]).await;
    assert_eq!(drain(&ch, "ml2").await, strs(&["3", "4"]));
    for expected in ["1", "2"] {
        let m = wait_get(&ch, "ml-dlq", 10)
            .await
            .unwrap_or_else(|| panic!("{expected} dead-lettered"));
        assert_eq!(m.delivery.data, expected.as_bytes(), "oldest first");
        assert_eq!(
            first_x_death(&m.delivery.properties),
            death_of("maxlen", "ml2")
        );
    }
    assert!(get_one(&ch, "ml-dlq").await.is_none());
    b.stop().await;
}

#[tokio::test]
async fn max_length_bytes_drop_head_counts_body_bytes() {
    let b = TestBroker::start().await;
    let (_c, ch) = confirm_channel(&b).await;
    declare_queue(&ch, "mlb-dlq").await;
    declare_queue_with(
        &ch,
        "mlb",
        plain(),
        dead_letter_to("mlb-dlq", &[("x-max-length-bytes", int(10))]),
    )
    .await;
    let acks = publish_all(&ch, "mlb", &["aaaaa", "bbbbb", "ccccc"]).await;
    assert_eq!(acks, vec![true; 3]);
    assert_eq!(
        queue_counts(&ch, "mlb").await.0,
        2,
        "10 bytes hold two 5-byte bodies"
    );
    assert_eq!(drain(&ch, "mlb").await, strs(&["bbbbb", "ccccc"]));
    let m = wait_get(&ch, "mlb-dlq", 10)
        .await
        .expect("aaaaa dead-lettered");
    assert_eq!(m.delivery.data, b"aaaaa");
    assert_eq!(
        first_x_death(&m.delivery.properties),
        death_of("maxlen", "mlb")
    );
    b.stop().await;
}

#[tokio::test]
async fn reject_publish_nacks_and_does_not_queue_or_dead_letter() {
    let b = TestBroker::start().await;
    let (_c, ch) = confirm_channel(&b).await;
    declare_queue(&ch, "rp-dlq").await;
    declare_queue_with(
        &ch,
        "rp",
        plain(),
        dead_letter_to(
            "rp-dlq",
            &[
                ("x-max-length", int(2)),
                ("x-overflow", lstr("reject-publish")),
            ],
        ),
    )
    .await;
    let acks = publish_all(&ch, "rp", &["1", "2", "3", "4"]).await;
    assert_eq!(acks, vec![true, true, false, false], "basic.nack when full");
    assert_eq!(queue_counts(&ch, "rp").await.0, 2);
    assert_eq!(
        queue_counts(&ch, "rp-dlq").await.0,
        0,
        "reject-publish does not dead-letter"
    );
    // Room again after one is taken.
    let (tag, body, _) = get_one(&ch, "rp").await.expect("one");
    assert_eq!(body, "1");
    ch.basic_ack(tag, BasicAckOptions::default()).await.unwrap();
    assert_eq!(publish_all(&ch, "rp", &["5", "6"]).await, vec![true, false]);
    assert_eq!(drain(&ch, "rp").await, strs(&["2", "5"]));
    b.stop().await;
}

#[tokio::test]
async fn reject_publish_applies_to_max_length_bytes() {
    let b = TestBroker::start().await;
    let (_c, ch) = confirm_channel(&b).await;
    declare_queue_with(
        &ch,
        "rpb",
        plain(),
        arg_table(&[
            ("x-max-length-bytes", int(10)),
            ("x-overflow", lstr("reject-publish")),
        ]),
    )
    .await;
    let acks = publish_all(&ch, "rpb", &["aaaaa", "bbbbbb", "ccccc"]).await;
    assert_eq!(
        acks,
        vec![true, false, true],
        "5+6 > 10 is refused, 5+5 fits"
    );
    assert_eq!(drain(&ch, "rpb").await, strs(&["aaaaa", "ccccc"]));
    b.stop().await;
}

#[tokio::test]
async fn reject_publish_dlx_nacks_and_dead_letters() {
    let b = TestBroker::start().await;
    let (_c, ch) = confirm_channel(&b).await;
    declare_queue(&ch, "rpd-dlq").await;
    declare_queue_with(
        &ch,
        "rpd",
        plain(),
        dead_letter_to(
            "rpd-dlq",
            &[
                ("x-max-length", int(1)),
                ("x-overflow", lstr("reject-publish-dlx")),
            ],
        ),
    )
    .await;
    let acks = publish_all(&ch, "rpd", &["1", "2"]).await;
    assert_eq!(acks, vec![true, false]);
    assert_eq!(
        drain(&ch, "rpd").await,
        strs(&["1"]),
        "the refused one is not queued"
    );
    let m = wait_get(&ch, "rpd-dlq", 10)
        .await
        .expect("the refused one is dead-lettered");
    assert_eq!(m.delivery.data, b"2");
    assert_eq!(
        first_x_death(&m.delivery.properties),
        death_of("maxlen", "rpd")
    );
    b.stop().await;
}

// ----- delivery limit -----

fn delivery_count(p: &BasicProperties) -> Option<AMQPValue> {
    headers_of(p).inner().get("x-delivery-count").cloned()
}

#[tokio::test]
async fn redeliveries_carry_an_x_delivery_count_header() {
    let b = TestBroker::start().await;
    let (_c, ch) = confirm_channel(&b).await;
    declare_queue_with(
        &ch,
        "dc",
        plain(),
        arg_table(&[("x-delivery-limit", int(5))]),
    )
    .await;
    publish_confirmed_within(5, &ch, "", "dc", b"m", BasicProperties::default()).await;
    let m = get_message(&ch, "dc").await.expect("first delivery");
    assert!(!m.delivery.redelivered);
    assert_eq!(
        delivery_count(&m.delivery.properties),
        None,
        "none on the first delivery"
    );
    ch.basic_nack(
        m.delivery.delivery_tag,
        BasicNackOptions {
            multiple: false,
            requeue: true,
        },
    )
    .await
    .unwrap();
    let m = get_message(&ch, "dc").await.expect("second delivery");
    assert!(m.delivery.redelivered);
    assert_eq!(
        delivery_count(&m.delivery.properties),
        Some(AMQPValue::LongLongInt(1)),
        "1 on the first redelivery"
    );
    ch.basic_reject(
        m.delivery.delivery_tag,
        BasicRejectOptions { requeue: true },
    )
    .await
    .unwrap();
    // And to a consumer.
    let (_c2, cch) = b.channel().await;
    let mut cons = consume_with(&cch, "dc", "c", FieldTable::default()).await;
    let d = next_delivery(&mut cons).await;
    assert!(d.redelivered);
    assert_eq!(
        delivery_count(&d.properties),
        Some(AMQPValue::LongLongInt(2))
    );
    assert_eq!(text(&d), "m");
    b.stop().await;
}

/// RabbitMQ's delivery limit (quorum queues, rabbit_fifo:return_one/…):
/// each return increments delivery_count, and the message is dead-lettered
/// when `delivery_count > x-delivery-limit`. With a limit of 2 the message is
/// delivered 3 times (x-delivery-count absent, 1, 2) and the third requeue
/// dead-letters it with reason delivery_limit.
#[tokio::test]
async fn the_delivery_limit_dead_letters_with_reason_delivery_limit() {
    let b = TestBroker::start().await;
    let (_c, ch) = confirm_channel(&b).await;
    declare_queue(&ch, "dl-dlq").await;
    declare_queue_with(
        &ch,
        "dl",
        plain(),
        dead_letter_to("dl-dlq", &[("x-delivery-limit", int(2))]),
    )
    .await;
    publish_confirmed_within(5, &ch, "", "dl", b"poison", BasicProperties::default()).await;
    let mut seen = vec![];
    for round in 0..3 {
        let m = get_message(&ch, "dl").await.unwrap_or_else(|| {
            panic!(
                "delivery {} of 3 (returned {round} times so far, limit 2)",
                round + 1
            )
        });
        seen.push(delivery_count(&m.delivery.properties));
        ch.basic_nack(
            m.delivery.delivery_tag,
            BasicNackOptions {
                multiple: false,
                requeue: true,
            },
        )
        .await
        .unwrap();
    }
    assert_eq!(
        seen,
        vec![
            None,
            Some(AMQPValue::LongLongInt(1)),
            Some(AMQPValue::LongLongInt(2))
        ]
    );
    let m = wait_get(&ch, "dl-dlq", 10)
        .await
        .expect("dead-lettered after the third return");
    assert_eq!(m.delivery.data, b"poison");
    assert_eq!(
        first_x_death(&m.delivery.properties),
        death_of("delivery_limit", "dl")
    );
    assert!(get_one(&ch, "dl").await.is_none(), "gone from the queue");
    b.stop().await;
}

#[tokio::test]
async fn a_delivery_limit_of_zero_dead_letters_on_the_first_return() {
    let b = TestBroker::start().await;
    let (_c, ch) = confirm_channel(&b).await;
    declare_queue(&ch, "dl0-dlq").await;
    declare_queue_with(
        &ch,
        "dl0",
        plain(),
        dead_letter_to("dl0-dlq", &[("x-delivery-limit", int(0))]),
    )
    .await;
    publish_confirmed_within(5, &ch, "", "dl0", b"m", BasicProperties::default()).await;
    let (tag, _, _) = get_one(&ch, "dl0").await.expect("delivered once");
    ch.basic_reject(tag, BasicRejectOptions { requeue: true })
        .await
        .unwrap();
    let m = wait_get(&ch, "dl0-dlq", 10).await.expect("dead-lettered");
    assert_eq!(
        first_x_death(&m.delivery.properties),
        death_of("delivery_limit", "dl0")
    );
    assert!(get_one(&ch, "dl0").await.is_none());
    b.stop().await;
}

// ----- priorities -----

#[tokio::test]
async fn higher_priority_first_fifo_within_a_priority_and_above_max_is_max() {
    let b = TestBroker::start().await;
    let (_c, ch) = confirm_channel(&b).await;
    declare_queue_with(
        &ch,
        "prio",
        plain(),
        arg_table(&[("x-max-priority", int(5))]),
    )
    .await;
    let msgs: &[(&str, Option<u8>)] = &[
        ("a1", Some(1)),
        ("b5", Some(5)),
        ("c0", None),
        ("d3", Some(3)),
        ("e5", Some(5)),
        ("f9", Some(9)),
        ("g1", Some(1)),
        ("h0", Some(0)),
    ];
    for (body, p) in msgs {
        let props = match p {
            Some(p) => BasicProperties::default().with_priority(*p),
            None => BasicProperties::default(),
        };
        publish_confirmed_within(5, &ch, "", "prio", body.as_bytes(), props).await;
    }
    assert_eq!(
        drain(&ch, "prio").await,
        strs(&["b5", "e5", "f9", "d3", "a1", "g1", "c0", "h0"]),
        "9 counts as 5 (after the earlier 5s); no priority is 0"
    );

    // The same order to a consumer that arrives after the publishes.
    for (body, p) in [("low", 1u8), ("high", 4), ("mid", 2)] {
        publish_confirmed_within(
            5,
            &ch,
            "",
            "prio",
            body.as_bytes(),
            BasicProperties::default().with_priority(p),
        )
        .await;
    }
    let (_c2, cch) = b.channel().await;
    cch.basic_qos(1, BasicQosOptions::default()).await.unwrap();
    let mut cons = consume_with(&cch, "prio", "c", FieldTable::default()).await;
    let mut got = vec![];
    for _ in 0..3 {
        let d = next_delivery(&mut cons).await;
        got.push(text(&d));
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    assert_eq!(got, strs(&["high", "mid", "low"]));
    b.stop().await;
}

#[tokio::test]
async fn a_requeued_message_goes_back_before_lower_priorities() {
    let b = TestBroker::start().await;
    let (_c, ch) = confirm_channel(&b).await;
    declare_queue_with(
        &ch,
        "prq",
        plain(),
        arg_table(&[("x-max-priority", int(3))]),
    )
    .await;
    for (body, p) in [("h1", 3u8), ("h2", 3), ("l1", 1)] {
        publish_confirmed_within(
            5,
            &ch,
            "",
            "prq",
            body.as_bytes(),
            BasicProperties::default().with_priority(p),
        )
        .await;
    }
    let (tag, body, _) = get_one(&ch, "prq").await.unwrap();
    assert_eq!(body, "h1");
    ch.basic_reject(tag, BasicRejectOptions { requeue: true })
        .await
        .unwrap();
    assert_eq!(drain(&ch, "prq").await, strs(&["h1", "h2", "l1"]));
    b.stop().await;
}

// ----- single active consumer -----

#[tokio::test]
async fn single_active_consumer_only_the_first_gets_messages_until_it_cancels() {
    let b = TestBroker::start().await;
    let (_c, ch) = confirm_channel(&b).await;
    declare_queue_with(
        &ch,
        "sac",
        plain(),
        arg_table(&[("x-single-active-consumer", AMQPValue::Boolean(true))]),
    )
    .await;
    let (_c1, ch1) = b.channel().await;
    let (_c2, ch2) = b.channel().await;
    let mut first = consume_with(&ch1, "sac", "first", FieldTable::default()).await;
    let mut second = consume_with(&ch2, "sac", "second", FieldTable::default()).await;
    assert_eq!(queue_counts(&ch, "sac").await.1, 2, "both are registered");
    publish_all(&ch, "sac", &["1", "2", "3"]).await;
    for expected in ["1", "2", "3"] {
        let d = next_delivery(&mut first).await;
        assert_eq!(text(&d), expected);
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    assert!(
        silent_for(&mut second, 200).await,
        "the second consumer waits"
    );

    ch1.basic_cancel("first".into(), BasicCancelOptions::default())
        .await
        .unwrap();
    publish_all(&ch, "sac", &["4", "5"]).await;
    for expected in ["4", "5"] {
        let d = next_delivery(&mut second).await;
        assert_eq!(text(&d), expected, "the next consumer took over");
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    b.stop().await;
}

#[tokio::test]
async fn single_active_consumer_hands_over_unacked_messages_when_its_channel_closes() {
    let b = TestBroker::start().await;
    let (_c, ch) = confirm_channel(&b).await;
    declare_queue_with(
        &ch,
        "sac2",
        plain(),
        arg_table(&[("x-single-active-consumer", AMQPValue::Boolean(true))]),
    )
    .await;
    let (_c1, ch1) = b.channel().await;
    let (_c2, ch2) = b.channel().await;
    let mut first = consume_with(&ch1, "sac2", "first", FieldTable::default()).await;
    let mut second = consume_with(&ch2, "sac2", "second", FieldTable::default()).await;
    publish_all(&ch, "sac2", &["1", "2"]).await;
    let _ = next_delivery(&mut first).await;
    let _ = next_delivery(&mut first).await;
    assert!(silent_for(&mut second, 200).await);
    ch1.close(200, "bye".into()).await.unwrap();
    let mut got = vec![];
    for _ in 0..2 {
        let d = next_delivery(&mut second).await;
        assert!(d.redelivered);
        got.push(text(&d));
    }
    assert_eq!(got, strs(&["1", "2"]));
    b.stop().await;
}

// ----- consumer priorities -----

#[tokio::test]
async fn a_higher_priority_consumer_gets_messages_while_it_has_credit() {
    let b = TestBroker::start().await;
    let (_c, ch) = confirm_channel(&b).await;
    declare_queue(&ch, "cp").await;
    // The low one registers first: order of registration must not matter.
    let (_cl, chl) = b.channel().await;
    chl.basic_qos(10, BasicQosOptions::default()).await.unwrap();
    let mut low = consume_with(&chl, "cp", "low", arg_table(&[("x-priority", int(0))])).await;
    let (_ch_, chh) = b.channel().await;
    chh.basic_qos(2, BasicQosOptions::default()).await.unwrap();
    let mut high = consume_with(&chh, "cp", "high", arg_table(&[("x-priority", int(10))])).await;

    publish_all(&ch, "cp", &["1", "2", "3", "4", "5"]).await;
    let h1 = next_delivery(&mut high).await;
    let h2 = next_delivery(&mut high).await;
    assert_eq!((text(&h1), text(&h2)), ("1".into(), "2".into()));
    let mut lows = vec![];
    for _ in 0..3 {
        lows.push(text(&next_delivery(&mut low).await));
    }
    assert_eq!(
        lows,
        strs(&["3", "4", "5"]),
        "the rest once the high one is full"
    );

    // Credit again: the high one is preferred again.
    h1.ack(BasicAckOptions::default()).await.unwrap();
    // A synchronous round trip so the ack is processed before the publish.
    chh.basic_qos(2, BasicQosOptions::default()).await.unwrap();
    publish_all(&ch, "cp", &["6"]).await;
    assert_eq!(text(&next_delivery(&mut high).await), "6");
    assert!(silent_for(&mut low, 200).await);
    b.stop().await;
}
