//! Queues over a real socket with lapin: naming, declare-ok counts,
//! durability, exclusivity, auto-delete, bindings, purge and delete, and the
//! reply codes RabbitMQ 3.10 answers with.

mod common;
use common::*;
use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;

fn max_length(n: i64) -> FieldTable {
    let mut t = FieldTable::default();
    t.insert("x-max-length".into(), AMQPValue::LongLongInt(n));
    t
}

#[tokio::test]
async fn server_named_queues_start_with_amq_gen() {
    let b = TestBroker::start().await;
    let (_c, ch) = confirm_channel(&b).await;
    let q1 = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let q2 = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let (n1, n2) = (q1.name().as_str().to_owned(), q2.name().as_str().to_owned());
    assert!(n1.starts_with("amq.gen-"), "server-named queue {n1:?}");
    assert!(n2.starts_with("amq.gen-"), "server-named queue {n2:?}");
    assert!(n1.len() > "amq.gen-".len());
    assert_ne!(n1, n2, "each declare gets a new name");
    // The name is a real queue: it can be used like any other.
    publish_confirmed_within(5, &ch, "", &n1, b"to-gen", BasicProperties::default()).await;
    assert_eq!(drain(&ch, &n1).await, vec!["to-gen"]);
    assert_eq!(queue_counts(&ch, &n2).await, (0, 0));
    b.stop().await;
}

#[tokio::test]
async fn passive_declare_of_a_missing_queue_is_404() {
    let b = TestBroker::start().await;
    let (c, ch) = b.channel().await;
    let r = ch
        .queue_declare("ghost".into(), passive(), FieldTable::default())
        .await;
    assert_eq!(expect_code(r), 404);
    assert!(!ch.status().connected(), "channel closed");
    assert!(c.status().connected(), "connection open");
    assert!(
        !queue_exists(&b, "ghost").await,
        "a passive declare creates nothing"
    );
    b.stop().await;
}

#[tokio::test]
async fn declare_ok_reports_ready_messages_and_consumers() {
    let b = TestBroker::start().await;
    let (_c, ch) = confirm_channel(&b).await;
    declare_queue(&ch, "counted").await;
    let q = ch
        .queue_declare(
            "counted".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!((q.message_count(), q.consumer_count()), (0, 0));
    for i in 0..3 {
        publish_confirmed_within(
            5,
            &ch,
            "",
            "counted",
            format!("m{i}").as_bytes(),
            BasicProperties::default(),
        )
        .await;
    }
    let q = ch
        .queue_declare(
            "counted".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(
        (q.message_count(), q.consumer_count()),
        (3, 0),
        "non-passive redeclare"
    );
    assert_eq!(
        queue_counts(&ch, "counted").await,
        (3, 0),
        "passive declare"
    );

    // A consumer with prefetch 1 holds one unacked message: it is no longer ready.
    let (_c2, cch) = b.channel().await;
    cch.basic_qos(1, BasicQosOptions::default()).await.unwrap();
    let mut consumer = cch
        .basic_consume(
            "counted".into(),
            "c1".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let d = next_delivery(&mut consumer).await;
    assert_eq!(d.data, b"m0");
    assert_eq!(queue_counts(&ch, "counted").await, (2, 1));
    let mut consumer2 = cch
        .basic_consume(
            "counted".into(),
            "c2".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    // c2 takes one more, within its own prefetch of 1.
    let d2 = within(5, consumer2.next()).await.unwrap().unwrap();
    assert_eq!(d2.data, b"m1");
    assert_eq!(queue_counts(&ch, "counted").await, (1, 2));
    b.stop().await;
}

#[tokio::test]
async fn durable_queue_keeps_persistent_messages_across_a_restart() {
    let mut b = TestBroker::start().await;
    {
        let (c, ch) = confirm_channel(&b).await;
        ch.queue_declare("dq".into(), durable(), FieldTable::default())
            .await
            .unwrap();
        declare_queue(&ch, "tq").await;
        for body in ["p1", "p2"] {
            assert!(
                publish_confirmed_within(5, &ch, "", "dq", body.as_bytes(), persistent())
                    .await
                    .is_ack()
            );
        }
        assert!(publish_confirmed_within(
            5,
            &ch,
            "",
            "dq",
            b"transient-msg",
            BasicProperties::default()
        )
        .await
        .is_ack());
        assert!(
            publish_confirmed_within(5, &ch, "", "tq", b"t1", persistent())
                .await
                .is_ack()
        );
        c.close(200, "bye".into()).await.unwrap();
    }
    b.restart().await;
    assert!(queue_exists(&b, "dq").await, "durable queue recovered");
    assert!(!queue_exists(&b, "tq").await, "transient queue gone");
    let (_c, ch) = b.channel().await;
    // Persistent messages come back; a transient message in a durable queue does not.
    assert_eq!(drain(&ch, "dq").await, vec!["p1", "p2"]);
    // Redeclaring it as durable is equivalent.
    ch.queue_declare("dq".into(), durable(), FieldTable::default())
        .await
        .unwrap();
    b.stop().await;
}

#[tokio::test]
async fn exclusive_queue_is_locked_to_its_connection_with_405() {
    let b = TestBroker::start().await;
    let (_owner, och) = b.channel().await;
    och.queue_declare(
        "mine".into(),
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    publish(&och, "", "mine", b"x").await;

    let other = b.connect().await;
    let ops: Vec<&str> = vec![
        "passive-declare",
        "declare",
        "consume",
        "get",
        "purge",
        "bind",
        "delete",
    ];
    for op in ops {
        let ch = other.create_channel().await.unwrap();
        let r: Result<(), lapin::Error> = match op {
            "passive-declare" => ch
                .queue_declare("mine".into(), passive(), FieldTable::default())
                .await
                .map(|_| ()),
            "declare" => ch
                .queue_declare(
                    "mine".into(),
                    QueueDeclareOptions {
                        exclusive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .map(|_| ()),
            "consume" => ch
                .basic_consume(
                    "mine".into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map(|_| ()),
            "get" => ch
                .basic_get("mine".into(), BasicGetOptions::default())
                .await
                .map(|_| ()),
            "purge" => ch
                .queue_purge("mine".into(), QueuePurgeOptions::default())
                .await
                .map(|_| ()),
            "bind" => {
                ch.queue_bind(
                    "mine".into(),
                    "amq.fanout".into(),
                    "".into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
            }
            "delete" => ch
                .queue_delete("mine".into(), QueueDeleteOptions::default())
                .await
                .map(|_| ()),
            _ => unreachable!(),
        };
        assert_eq!(expect_code(r), 405, "{op} from another connection");
        assert!(other.status().connected(), "405 is a channel error");
    }
    // The owner still has it, message and all, and can use it from any of its channels.
    assert_eq!(queue_counts(&och, "mine").await, (1, 0));
    let och2 = _owner.create_channel().await.unwrap();
    assert_eq!(drain(&och2, "mine").await, vec!["x"]);
    b.stop().await;
}

#[tokio::test]
async fn exclusive_queue_is_deleted_when_its_connection_closes() {
    let b = TestBroker::start().await;
    let (owner, och) = b.channel().await;
    let q = och
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let name = q.name().as_str().to_owned();
    och.queue_declare(
        "excl-named".into(),
        QueueDeclareOptions {
            exclusive: true,
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    och.queue_bind(
        "excl-named".into(),
        "amq.fanout".into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    assert!(queue_exists(&b, &name).await);
    // Closing a channel is not enough.
    och.close(200, "bye".into()).await.unwrap();
    assert!(queue_exists(&b, "excl-named").await);
    owner.close(200, "bye".into()).await.unwrap();
    let (_c, ch) = b.channel().await;
    let gone = eventually_async(10, || async {
        !queue_exists(&b, &name).await && !queue_exists(&b, "excl-named").await
    })
    .await;
    assert!(gone, "exclusive queues deleted with their connection");
    // Its name is free again, for anyone.
    ch.queue_declare(
        "excl-named".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    b.stop().await;
}

#[tokio::test]
async fn auto_delete_queue_goes_when_its_last_consumer_is_cancelled() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let ad = QueueDeclareOptions {
        auto_delete: true,
        ..Default::default()
    };
    ch.queue_declare("adq".into(), ad, FieldTable::default())
        .await
        .unwrap();
    // Never consumed from: it stays.
    assert!(queue_exists(&b, "adq").await);
    let _c1 = ch
        .basic_consume(
            "adq".into(),
            "c1".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let _c2 = ch
        .basic_consume(
            "adq".into(),
            "c2".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    ch.basic_cancel("c1".into(), BasicCancelOptions::default())
        .await
        .unwrap();
    assert!(queue_exists(&b, "adq").await, "one consumer left");
    ch.basic_cancel("c2".into(), BasicCancelOptions::default())
        .await
        .unwrap();
    assert!(
        !queue_exists(&b, "adq").await,
        "deleted with its last consumer"
    );

    // Also when the last consumer's channel closes.
    let ch2 = _c.create_channel().await.unwrap();
    ch2.queue_declare("adq2".into(), ad, FieldTable::default())
        .await
        .unwrap();
    let _c3 = ch2
        .basic_consume(
            "adq2".into(),
            "c3".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    ch2.close(200, "bye".into()).await.unwrap();
    assert!(
        !queue_exists(&b, "adq2").await,
        "deleted when its consumer's channel closed"
    );
    b.stop().await;
}

#[tokio::test]
async fn bind_and_unbind_control_routing() {
    let b = TestBroker::start().await;
    let (c, ch) = confirm_channel(&b).await;
    declare_queue(&ch, "bq").await;
    ch.queue_bind(
        "bq".into(),
        "amq.direct".into(),
        "k1".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    // Binding twice is one binding.
    ch.queue_bind(
        "bq".into(),
        "amq.direct".into(),
        "k1".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    publish_confirmed_within(
        5,
        &ch,
        "amq.direct",
        "k1",
        b"bound",
        BasicProperties::default(),
    )
    .await;
    publish_confirmed_within(
        5,
        &ch,
        "amq.direct",
        "k2",
        b"other-key",
        BasicProperties::default(),
    )
    .await;
    assert_eq!(drain(&ch, "bq").await, vec!["bound"]);
    ch.queue_unbind(
        "bq".into(),
        "amq.direct".into(),
        "k1".into(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    publish_confirmed_within(
        5,
        &ch,
        "amq.direct",
        "k1",
        b"after-unbind",
        BasicProperties::default(),
    )
    .await;
    assert!(drain(&ch, "bq").await.is_empty());
    // Unbinding what is not bound succeeds, as in RabbitMQ.
    ch.queue_unbind(
        "bq".into(),
        "amq.direct".into(),
        "k1".into(),
        FieldTable::default(),
    )
    .await
    .unwrap();

    // Binding to a missing exchange, or a missing queue: 404.
    let ch = c.create_channel().await.unwrap();
    let r = ch
        .queue_bind(
            "bq".into(),
            "no-such-x".into(),
            "k".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await;
    assert_eq!(expect_code(r), 404);
    let ch = c.create_channel().await.unwrap();
    let r = ch
        .queue_bind(
            "no-such-q".into(),
            "amq.direct".into(),
            "k".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await;
    assert_eq!(expect_code(r), 404);
    b.stop().await;
}

#[tokio::test]
async fn purge_returns_the_number_of_ready_messages() {
    let b = TestBroker::start().await;
    let (_c, ch) = confirm_channel(&b).await;
    declare_queue(&ch, "pq").await;
    for i in 0..5 {
        publish_confirmed_within(
            5,
            &ch,
            "",
            "pq",
            format!("m{i}").as_bytes(),
            BasicProperties::default(),
        )
        .await;
    }
    // One delivered and unacked: not purged.
    let (_c2, gch) = b.channel().await;
    let (_, body, _) = get_one(&gch, "pq").await.unwrap();
    assert_eq!(body, "m0");
    assert_eq!(
        ch.queue_purge("pq".into(), QueuePurgeOptions::default())
            .await
            .unwrap(),
        4
    );
    assert_eq!(
        ch.queue_purge("pq".into(), QueuePurgeOptions::default())
            .await
            .unwrap(),
        0
    );
    assert_eq!(queue_counts(&ch, "pq").await, (0, 0));
    // The unacked one comes back when its channel closes.
    gch.close(200, "bye".into()).await.unwrap();
    assert_eq!(drain(&ch, "pq").await, vec!["m0"]);
    // Purging a missing queue: 404.
    let r = ch
        .queue_purge("nope".into(), QueuePurgeOptions::default())
        .await;
    assert_eq!(expect_code(r), 404);
    b.stop().await;
}

#[tokio::test]
async fn delete_if_unused_and_if_empty_are_406() {
    let b = TestBroker::start().await;
    let c = b.connect().await;
    let ch = c.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    declare_queue(&ch, "busy").await;
    declare_queue(&ch, "full").await;
    publish_confirmed_within(5, &ch, "", "full", b"m", BasicProperties::default()).await;
    let cch = c.create_channel().await.unwrap();
    let _consumer = cch
        .basic_consume(
            "busy".into(),
            "busy-c".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();

    let dch = c.create_channel().await.unwrap();
    let r = dch
        .queue_delete(
            "busy".into(),
            QueueDeleteOptions {
                if_unused: true,
                ..Default::default()
            },
        )
        .await;
    assert_eq!(expect_code(r), 406, "if-unused with a consumer");
    assert!(queue_exists(&b, "busy").await);

    let dch = c.create_channel().await.unwrap();
    let r = dch
        .queue_delete(
            "full".into(),
            QueueDeleteOptions {
                if_empty: true,
                ..Default::default()
            },
        )
        .await;
    assert_eq!(expect_code(r), 406, "if-empty with a message");
    assert!(queue_exists(&b, "full").await);
    assert_eq!(queue_counts(&ch, "full").await, (1, 0));

    // if-unused on a queue with messages but no consumer, if-empty on an
    // empty queue with a consumer: both fine.
    let dch = c.create_channel().await.unwrap();
    let n = dch
        .queue_delete(
            "full".into(),
            QueueDeleteOptions {
                if_unused: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(n, 1, "delete-ok carries the message count");
    let n = dch
        .queue_delete(
            "busy".into(),
            QueueDeleteOptions {
                if_empty: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(n, 0);
    assert!(!queue_exists(&b, "full").await);
    assert!(!queue_exists(&b, "busy").await);
    // Deleting a missing queue succeeds with a count of 0.
    assert_eq!(
        dch.queue_delete("full".into(), QueueDeleteOptions::default())
            .await
            .unwrap(),
        0
    );
    b.stop().await;
}

#[tokio::test]
async fn declaring_an_amq_prefixed_queue_is_403() {
    let b = TestBroker::start().await;
    let (c, ch) = b.channel().await;
    let r = ch
        .queue_declare(
            "amq.x".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await;
    assert_eq!(expect_code(r), 403);
    assert!(c.status().connected(), "a channel error");
    assert!(!queue_exists(&b, "amq.x").await);
    b.stop().await;
}

#[tokio::test]
async fn inequivalent_queue_redeclare_is_406() {
    let b = TestBroker::start().await;
    let c = b.connect().await;
    let ch = c.create_channel().await.unwrap();
    ch.queue_declare("eq".into(), durable(), max_length(10))
        .await
        .unwrap();
    let cases: Vec<(&str, QueueDeclareOptions, FieldTable)> = vec![
        (
            "durable differs",
            QueueDeclareOptions::default(),
            max_length(10),
        ),
        ("x-max-length differs", durable(), max_length(20)),
        ("x-max-length missing", durable(), FieldTable::default()),
        (
            "auto-delete differs",
            QueueDeclareOptions {
                durable: true,
                auto_delete: true,
                ..Default::default()
            },
            max_length(10),
        ),
    ];
    for (what, opts, args) in cases {
        let ch = c.create_channel().await.unwrap();
        let r = ch.queue_declare("eq".into(), opts, args).await;
        assert_eq!(expect_code(r), 406, "{what}");
        assert!(c.status().connected());
    }
    // The same integer in another encoding is equivalent.
    let ch = c.create_channel().await.unwrap();
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongInt(10));
    ch.queue_declare("eq".into(), durable(), args)
        .await
        .unwrap();
    b.stop().await;
}

/// RabbitMQ checks exclusivity first on a redeclare (check_exclusive_access
/// with `strict` in rabbit_amqqueue:assert_equivalence): a declare whose
/// exclusive flag differs from the queue's is 405 RESOURCE_LOCKED, not 406.
#[tokio::test]
async fn redeclare_with_a_different_exclusive_flag_is_405() {
    let b = TestBroker::start().await;
    let c = b.connect().await;
    let ch = c.create_channel().await.unwrap();
    declare_queue(&ch, "shared-q").await;
    let r = ch
        .queue_declare(
            "shared-q".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await;
    assert_eq!(expect_code(r), 405, "exclusive redeclare of a shared queue");
    let ch = c.create_channel().await.unwrap();
    ch.queue_declare(
        "own-q".into(),
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let r = ch
        .queue_declare(
            "own-q".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await;
    assert_eq!(
        expect_code(r),
        405,
        "non-exclusive redeclare of own exclusive queue"
    );
    b.stop().await;
}

#[tokio::test]
async fn deleting_a_queue_removes_its_bindings() {
    let b = TestBroker::start().await;
    let (_c, ch) = confirm_channel(&b).await;
    declare_queue(&ch, "rq").await;
    ch.queue_bind(
        "rq".into(),
        "amq.topic".into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_delete("rq".into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    declare_queue(&ch, "rq").await;
    publish_confirmed_within(
        5,
        &ch,
        "amq.topic",
        "any.key",
        b"x",
        BasicProperties::default(),
    )
    .await;
    assert!(
        drain(&ch, "rq").await.is_empty(),
        "a new queue of the same name has no old bindings"
    );
    b.stop().await;
}

/// AMQP 0-9-1: an empty queue name in queue.bind, queue.purge, queue.delete,
/// basic.get and basic.consume means the last queue declared on the channel,
/// and an empty routing key in queue.bind then means that queue's name
/// (rabbit_channel's expand_queue_name_shortcut / expand_routing_key_shortcut).
/// With no queue declared on the channel yet it is 404.
#[tokio::test]
async fn empty_queue_name_means_the_last_queue_declared_on_the_channel() {
    let b = TestBroker::start().await;
    let c = b.connect().await;
    let ch = c.create_channel().await.unwrap();
    let r = ch
        .queue_purge("".into(), QueuePurgeOptions::default())
        .await;
    assert_eq!(expect_code(r), 404, "no queue declared on this channel yet");

    let ch = c.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let q = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let name = q.name().as_str().to_owned();
    // Bind with an empty queue name and an empty routing key: the queue's name is the key.
    ch.queue_bind(
        "".into(),
        "amq.direct".into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    publish_confirmed_within(
        5,
        &ch,
        "amq.direct",
        &name,
        b"via-shortcut",
        BasicProperties::default(),
    )
    .await;
    publish_confirmed_within(
        5,
        &ch,
        "amq.direct",
        &name,
        b"second",
        BasicProperties::default(),
    )
    .await;
    let m = ch
        .basic_get("".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("get from the last queue");
    assert_eq!(m.delivery.data, b"via-shortcut");
    assert_eq!(
        ch.queue_purge("".into(), QueuePurgeOptions::default())
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        ch.queue_delete("".into(), QueueDeleteOptions::default())
            .await
            .unwrap(),
        0
    );
    assert!(!queue_exists(&b, &name).await);
    b.stop().await;
}

/// RabbitMQ 3.10: unbinding a binding whose queue or exchange no longer
/// exists answers unbind-ok (cleanup code unbinds after an auto-delete queue
/// is gone); the default exchange and access are still checked, by name.
#[tokio::test]
async fn unbind_of_a_missing_queue_or_exchange_is_unbind_ok() {
    let b = TestBroker::start().await;
    let c = b.connect().await;
    let ch = c.create_channel().await.unwrap();
    declare_exchange(&ch, "ux", lapin::ExchangeKind::Direct).await;
    declare_queue(&ch, "uq").await;
    // A server-named exclusive queue, bound, then deleted: unbinding it is ok.
    let gone = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap()
        .name()
        .to_string();
    ch.queue_bind(
        gone.as_str().into(),
        "ux".into(),
        "k".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_delete(gone.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    for (q, x) in [
        (gone.as_str(), "ux"),
        ("no-such-q", "ux"),
        ("uq", "no-such-x"),
        ("no-such-q", "no-such-x"),
        ("no-such-q", "amq.direct"),
        ("uq", "ux"), // both exist, no such binding
    ] {
        ch.queue_unbind(q.into(), x.into(), "k".into(), FieldTable::default())
            .await
            .unwrap_or_else(|e| panic!("queue.unbind {q} from {x}: {e:?}"));
    }
    for (dest, src) in [
        ("no-such-x", "ux"),
        ("ux", "no-such-x"),
        ("no-such-x", "no-such-x2"),
        ("amq.fanout", "ux"), // both exist, no such binding
    ] {
        ch.exchange_unbind(
            dest.into(),
            src.into(),
            "k".into(),
            ExchangeUnbindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("exchange.unbind {dest} from {src}: {e:?}"));
    }
    assert!(c.status().connected());
    // The channel stayed open through all of them.
    declare_queue(&ch, "uq").await;

    // The default exchange is refused first, even for a missing queue: 403.
    let ch = c.create_channel().await.unwrap();
    let r = ch
        .queue_unbind(
            "no-such-q".into(),
            "".into(),
            "k".into(),
            FieldTable::default(),
        )
        .await;
    assert_eq!(expect_code(r), 403);
    for (dest, src) in [("", "ux"), ("ux", ""), ("no-such-x", "")] {
        let ch = c.create_channel().await.unwrap();
        let r = ch
            .exchange_unbind(
                dest.into(),
                src.into(),
                "k".into(),
                ExchangeUnbindOptions::default(),
                FieldTable::default(),
            )
            .await;
        assert_eq!(expect_code(r), 403, "exchange.unbind {dest:?} from {src:?}");
    }
    // Access is checked by name before existence: a user without write
    // access to the queue's name is refused even if the queue is gone.
    b.set_permissions("guest", "/", ".*", "^uq$", ".*");
    let ch = c.create_channel().await.unwrap();
    let r = ch
        .queue_unbind(
            "no-such-q".into(),
            "ux".into(),
            "k".into(),
            FieldTable::default(),
        )
        .await;
    assert_eq!(expect_code(r), 403);
    let ch = c.create_channel().await.unwrap();
    ch.queue_unbind(
        "uq".into(),
        "no-such-x".into(),
        "k".into(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    // Another connection's exclusive queue: unbind-ok while there is no
    // such binding, 405 RESOURCE_LOCKED once there is one (RabbitMQ).
    b.set_permissions("guest", "/", ".*", ".*", ".*");
    let (_c2, ch2) = b.channel().await;
    ch2.queue_declare(
        "theirs".into(),
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let ch = c.create_channel().await.unwrap();
    ch.queue_unbind(
        "theirs".into(),
        "ux".into(),
        "k".into(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch2.queue_bind(
        "theirs".into(),
        "ux".into(),
        "k".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let r = ch
        .queue_unbind(
            "theirs".into(),
            "ux".into(),
            "k".into(),
            FieldTable::default(),
        )
        .await;
    assert_eq!(expect_code(r), 405);
    b.stop().await;
}
