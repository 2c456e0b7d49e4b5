//! Publisher confirms, transactions and large message bodies over a real
//! socket with lapin, against RabbitMQ 3.10's behaviour.

mod common;
use common::*;
use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::BasicProperties;
use std::time::Duration;

/// A body whose every byte depends on its position, so a misplaced or lost
/// frame shows.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| ((i * 7 + i / 251) % 256) as u8).collect()
}

#[tokio::test]
async fn publisher_confirms_ack_every_message() {
    let b = TestBroker::start().await;
    let (_c, ch) = confirm_channel(&b).await;
    declare_queue(&ch, "cq").await;
    let mut pending = vec![];
    for i in 0..500u32 {
        let pc = within(
            5,
            ch.basic_publish(
                "".into(),
                "cq".into(),
                BasicPublishOptions::default(),
                &i.to_be_bytes(),
                BasicProperties::default(),
            ),
        )
        .await
        .unwrap();
        pending.push(pc);
    }
    let returned = within(5, ch.wait_for_confirms()).await.unwrap();
    assert!(returned.is_empty());
    for (i, pc) in pending.into_iter().enumerate() {
        let c = within(5, pc).await.unwrap();
        assert!(c.is_ack(), "message {i} acked");
    }
    assert_eq!(queue_counts(&ch, "cq").await.0, 500);
    b.stop().await;
}

#[tokio::test]
async fn persistent_messages_to_durable_queues_are_confirmed() {
    let b = TestBroker::start().await;
    let (_c, ch) = confirm_channel(&b).await;
    ch.queue_declare("dq1".into(), durable(), FieldTable::default())
        .await
        .unwrap();
    ch.queue_declare("dq2".into(), durable(), FieldTable::default())
        .await
        .unwrap();
    declare_queue(&ch, "tq").await;
    ch.exchange_declare(
        "fan".into(),
        lapin::ExchangeKind::Fanout,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    for q in ["dq1", "dq2", "tq"] {
        ch.queue_bind(
            q.into(),
            "fan".into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    }
    let mut pending = vec![];
    for i in 0..200u32 {
        let pc = within(
            5,
            ch.basic_publish(
                "fan".into(),
                "".into(),
                BasicPublishOptions::default(),
                &i.to_be_bytes(),
                persistent(),
            ),
        )
        .await
        .unwrap();
        pending.push(pc);
    }
    within(5, ch.wait_for_confirms()).await.unwrap();
    for pc in pending {
        assert!(within(5, pc).await.unwrap().is_ack());
    }
    for q in ["dq1", "dq2", "tq"] {
        assert_eq!(queue_counts(&ch, q).await.0, 200, "{q}");
    }
    b.stop().await;
}

#[tokio::test]
async fn tx_rollback_discards_publishes_and_commit_applies_them() {
    let b = TestBroker::start().await;
    let (c, ch) = b.channel().await;
    declare_queue(&ch, "txq").await;
    let observer = c.create_channel().await.unwrap();
    ch.tx_select().await.unwrap();
    for body in ["r1", "r2", "r3"] {
        publish(&ch, "", "txq", body.as_bytes()).await;
    }
    assert_eq!(
        queue_counts(&observer, "txq").await.0,
        0,
        "uncommitted publishes are invisible"
    );
    ch.tx_rollback().await.unwrap();
    assert_eq!(queue_counts(&observer, "txq").await.0, 0, "rolled back");
    for body in ["c1", "c2", "c3"] {
        publish(&ch, "", "txq", body.as_bytes()).await;
    }
    assert_eq!(queue_counts(&observer, "txq").await.0, 0);
    ch.tx_commit().await.unwrap();
    assert_eq!(queue_counts(&observer, "txq").await.0, 3);
    assert_eq!(drain(&observer, "txq").await, vec!["c1", "c2", "c3"]);
    // Still transactional after a commit: the next publish waits for the next commit.
    publish(&ch, "", "txq", b"later").await;
    assert_eq!(queue_counts(&observer, "txq").await.0, 0);
    ch.tx_commit().await.unwrap();
    assert_eq!(drain(&observer, "txq").await, vec!["later"]);
    b.stop().await;
}

#[tokio::test]
async fn acks_inside_a_transaction_take_effect_at_commit() {
    let b = TestBroker::start().await;
    let (c, pch) = confirm_channel(&b).await;
    declare_queue(&pch, "txa").await;
    for body in ["1", "2"] {
        publish_confirmed_within(
            5,
            &pch,
            "",
            "txa",
            body.as_bytes(),
            BasicProperties::default(),
        )
        .await;
    }
    // Acks then rollback: the acks are forgotten, the messages stay unacked
    // and come back when the channel closes.
    let ch = c.create_channel().await.unwrap();
    ch.tx_select().await.unwrap();
    let (t1, _, _) = get_one(&ch, "txa").await.unwrap();
    let (t2, _, _) = get_one(&ch, "txa").await.unwrap();
    ch.basic_ack(t1, BasicAckOptions::default()).await.unwrap();
    ch.basic_ack(t2, BasicAckOptions::default()).await.unwrap();
    ch.tx_rollback().await.unwrap();
    // Ack only the first, and commit.
    ch.basic_ack(t1, BasicAckOptions::default()).await.unwrap();
    ch.tx_commit().await.unwrap();
    ch.close(200, "bye".into()).await.unwrap();
    let mut left = vec![];
    while let Some((tag, b, red)) = get_one(&pch, "txa").await {
        left.push((b, red));
        pch.basic_ack(tag, BasicAckOptions::default())
            .await
            .unwrap();
    }
    assert_eq!(
        left,
        vec![("2".into(), true)],
        "only the committed ack counted"
    );

    // Acks not yet committed when the channel closes do not count either.
    for body in ["3", "4"] {
        publish_confirmed_within(
            5,
            &pch,
            "",
            "txa",
            body.as_bytes(),
            BasicProperties::default(),
        )
        .await;
    }
    let ch = c.create_channel().await.unwrap();
    ch.tx_select().await.unwrap();
    let mut tags = vec![];
    while let Some((t, _, _)) = get_one(&ch, "txa").await {
        tags.push(t);
    }
    assert_eq!(tags.len(), 2);
    ch.basic_ack(*tags.last().unwrap(), BasicAckOptions { multiple: true })
        .await
        .unwrap();
    ch.close(200, "bye".into()).await.unwrap();
    assert_eq!(
        queue_counts(&pch, "txa").await.0,
        2,
        "uncommitted acks discarded with the channel"
    );

    // Committed: gone for good.
    let ch = c.create_channel().await.unwrap();
    ch.tx_select().await.unwrap();
    let mut tags = vec![];
    while let Some((t, _, _)) = get_one(&ch, "txa").await {
        tags.push(t);
    }
    ch.basic_ack(*tags.last().unwrap(), BasicAckOptions { multiple: true })
        .await
        .unwrap();
    ch.tx_commit().await.unwrap();
    ch.close(200, "bye".into()).await.unwrap();
    assert_eq!(queue_counts(&pch, "txa").await.0, 0);
    b.stop().await;
}

#[tokio::test]
async fn tx_commit_or_rollback_without_tx_select_is_406() {
    let b = TestBroker::start().await;
    let (c, ch) = b.channel().await;
    let r = ch.tx_commit().await;
    assert_eq!(expect_code(r), 406);
    assert!(!ch.status().connected());
    let ch = c.create_channel().await.unwrap();
    let r = ch.tx_rollback().await;
    assert_eq!(expect_code(r), 406);
    assert!(c.status().connected(), "a channel error");
    b.stop().await;
}

#[tokio::test]
async fn confirm_and_tx_modes_exclude_each_other_with_406() {
    let b = TestBroker::start().await;
    let (c, ch) = b.channel().await;
    ch.tx_select().await.unwrap();
    let r = ch.confirm_select(ConfirmSelectOptions::default()).await;
    assert_eq!(
        expect_code(r),
        406,
        "confirm.select on a transactional channel"
    );
    let ch = c.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let r = ch.tx_select().await;
    assert_eq!(
        expect_code(r),
        406,
        "tx.select on a channel in confirm mode"
    );
    assert!(c.status().connected());
    b.stop().await;
}

async fn round_trip(b: &TestBroker, queue: &str, len: usize, secs: u64) {
    let (_c, ch) = confirm_channel(b).await;
    declare_queue(&ch, queue).await;
    let body = pattern(len);
    let props = BasicProperties::default().with_message_id(format!("len-{len}").as_str().into());
    assert!(
        publish_confirmed_within(secs, &ch, "", queue, &body, props)
            .await
            .is_ack(),
        "{len} bytes confirmed"
    );
    // Once with basic.get...
    let m = within(
        secs,
        ch.basic_get(queue.into(), BasicGetOptions { no_ack: false }),
    )
    .await
    .unwrap()
    .expect("get-ok");
    assert_eq!(m.delivery.data.len(), len, "length through basic.get");
    assert!(
        m.delivery.data == body,
        "{len} bytes intact through basic.get"
    );
    assert_eq!(
        m.delivery
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.as_str().to_owned()),
        Some(format!("len-{len}"))
    );
    m.delivery
        .nack(BasicNackOptions {
            multiple: false,
            requeue: true,
        })
        .await
        .unwrap();
    // ...and once with basic.deliver.
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let d = within(secs, consumer.next()).await.unwrap().unwrap();
    assert_eq!(d.data.len(), len, "length through basic.deliver");
    assert!(d.data == body, "{len} bytes intact through basic.deliver");
    assert!(d.redelivered);
    d.ack(BasicAckOptions::default()).await.unwrap();
}

#[tokio::test]
async fn large_bodies_round_trip_intact() {
    let b = TestBroker::start().await;
    // Around frame boundaries (frame_max 131072, 8 bytes of frame overhead).
    let payload = 131072 - 8;
    for len in [0, 1, payload - 1, payload, payload + 1, 3 * payload] {
        round_trip(&b, &format!("edge-{len}"), len, 5).await;
    }
    round_trip(&b, "big-1m", 1 << 20, 5).await;
    round_trip(&b, "big-4m", 4 << 20, 10).await;
    b.stop().await;
}

#[tokio::test]
async fn twenty_mib_body_round_trips_intact() {
    let b = TestBroker::start().await;
    round_trip(&b, "big-20m", 20 << 20, 30).await;
    b.stop().await;
}

#[tokio::test]
async fn body_larger_than_max_message_size_is_406() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.max_message_size = 1 << 20;
    let b = TestBroker::start_with(dir, config).await;
    let (c, ch) = confirm_channel(&b).await;
    declare_queue(&ch, "limited").await;
    // Exactly the limit is accepted.
    let ok = publish_confirmed_within(
        5,
        &ch,
        "",
        "limited",
        &pattern(1 << 20),
        BasicProperties::default(),
    )
    .await;
    assert!(ok.is_ack());
    // One byte more closes the channel with 406.
    let mut closes = watch_closes(&c);
    let pc = within(
        5,
        ch.basic_publish(
            "".into(),
            "limited".into(),
            BasicPublishOptions::default(),
            &pattern((1 << 20) + 1),
            BasicProperties::default(),
        ),
    )
    .await
    .unwrap();
    assert_eq!(expect_code(within(5, pc).await), 406);
    assert_eq!(closes.next_code().await, 406);
    assert!(eventually(5, || !ch.status().connected()).await);
    assert!(c.status().connected(), "a channel error");
    // The connection still works, and the big one was not enqueued.
    let ch2 = c.create_channel().await.unwrap();
    assert_eq!(queue_counts(&ch2, "limited").await.0, 1);
    let m = ch2
        .basic_get("limited".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.delivery.data.len(), 1 << 20);
    tokio::time::sleep(Duration::from_millis(10)).await;
    b.stop().await;
}

/// In RabbitMQ a basic.ack inside a transaction is checked when it arrives
/// (collect_acks runs before the ack is stashed in the transaction): an
/// unknown or already-acked tag closes the channel with 406 at once, not at
/// commit.
#[tokio::test]
async fn unknown_delivery_tag_inside_a_transaction_is_406_at_once() {
    let b = TestBroker::start().await;
    let (c, pch) = confirm_channel(&b).await;
    declare_queue(&pch, "txu").await;
    publish_confirmed_within(5, &pch, "", "txu", b"m", BasicProperties::default()).await;

    let mut closes = watch_closes(&c);
    let ch = c.create_channel().await.unwrap();
    ch.tx_select().await.unwrap();
    ch.basic_ack(42, BasicAckOptions::default()).await.unwrap();
    assert_eq!(
        closes.next_code().await,
        406,
        "unknown tag in a transaction, before any commit"
    );
    b.stop().await;
}

#[tokio::test]
async fn double_ack_inside_a_transaction_is_406_at_once() {
    let b = TestBroker::start().await;
    let (c, pch) = confirm_channel(&b).await;
    declare_queue(&pch, "txu").await;
    publish_confirmed_within(5, &pch, "", "txu", b"m", BasicProperties::default()).await;
    let mut closes = watch_closes(&c);
    let ch = c.create_channel().await.unwrap();
    ch.tx_select().await.unwrap();
    let (tag, _, _) = get_one(&ch, "txu").await.unwrap();
    ch.basic_ack(tag, BasicAckOptions::default()).await.unwrap();
    ch.basic_ack(tag, BasicAckOptions::default()).await.unwrap();
    assert_eq!(
        closes.next_code().await,
        406,
        "the same tag acked twice in a transaction, before any commit"
    );
    b.stop().await;
}

/// A publish that would fail at commit (an invalid expiration) fails when
/// it is queued in the transaction, and an ack queued before it is not
/// lost: the channel closes and the message comes back, redelivered.
#[tokio::test]
async fn an_invalid_publish_in_a_tx_fails_at_once_and_loses_no_ack() {
    let b = TestBroker::start().await;
    let (c, ch) = b.channel().await;
    ch.queue_declare(
        "txv".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.basic_publish(
        "".into(),
        "txv".into(),
        BasicPublishOptions::default(),
        b"m",
        BasicProperties::default(),
    )
    .await
    .unwrap();
    ch.tx_select().await.unwrap();
    let m = within(
        5,
        ch.basic_get("txv".into(), BasicGetOptions { no_ack: false }),
    )
    .await
    .unwrap()
    .unwrap();
    ch.basic_ack(m.delivery.delivery_tag, BasicAckOptions::default())
        .await
        .unwrap();
    let _ = ch
        .basic_publish(
            "".into(),
            "txv".into(),
            BasicPublishOptions::default(),
            b"bad",
            BasicProperties::default().with_expiration("abc".into()),
        )
        .await;
    // The channel is closed by the publish (406); the commit then fails either
    // with that close or because the channel is already closed.
    let e = within(5, ch.tx_commit()).await.unwrap_err();
    assert!(
        reply_code(&e).is_none_or(|code| code == 406),
        "unexpected error {e}"
    );
    let ch2 = c.create_channel().await.unwrap();
    let m = within(
        5,
        ch2.basic_get("txv".into(), BasicGetOptions { no_ack: true }),
    )
    .await
    .unwrap()
    .expect("the uncommitted ack did not take the message away");
    assert_eq!(m.delivery.data, b"m");
    assert!(m.delivery.redelivered);
    b.stop().await;
}
