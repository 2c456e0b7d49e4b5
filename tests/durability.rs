//! The store across restarts: what comes back, what does not, and disk space.

mod common;
use common::*;
use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::BasicProperties;

#[tokio::test]
async fn persistent_messages_survive_restart_exactly_unacked_in_order() {
    let mut b = TestBroker::start().await;
    {
        let (c, ch) = b.channel().await;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        ch.queue_declare("dq".into(), durable(), FieldTable::default())
            .await
            .unwrap();
        ch.queue_declare(
            "tq".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        for i in 0..10u8 {
            assert!(publish_confirmed(&ch, "", "dq", &[i], persistent())
                .await
                .is_ack());
        }
        // transient message in a durable queue, and anything in a transient queue, are gone after restart
        assert!(
            publish_confirmed(&ch, "", "dq", b"transient", BasicProperties::default())
                .await
                .is_ack()
        );
        assert!(publish_confirmed(&ch, "", "tq", b"x", persistent())
            .await
            .is_ack());
        // deliver 0..=3, ack 0 and 1, leave 2 and 3 unacked
        ch.basic_qos(4, BasicQosOptions::default()).await.unwrap();
        let mut cons = ch
            .basic_consume(
                "dq".into(),
                "c".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let mut got = vec![];
        for _ in 0..4 {
            got.push(within(5, cons.next()).await.unwrap().unwrap());
        }
        // no more deliveries from here on: acking frees prefetch credit
        ch.basic_cancel("c".into(), BasicCancelOptions::default())
            .await
            .unwrap();
        got[0].ack(BasicAckOptions::default()).await.unwrap();
        got[1].ack(BasicAckOptions::default()).await.unwrap();
        // a synchronous round trip: the acks were processed
        ch.basic_qos(4, BasicQosOptions::default()).await.unwrap();
        // crash-like: stop the broker without closing the client first
        b.restart().await;
        drop(c);
    }
    let (_c, ch) = b.channel().await;
    let q = ch
        .queue_declare("dq".into(), passive(), FieldTable::default())
        .await
        .unwrap();
    assert_eq!(
        q.message_count(),
        8,
        "10 persistent - 2 acked; the transient one is gone"
    );
    let err = ch
        .queue_declare("tq".into(), passive(), FieldTable::default())
        .await
        .unwrap_err();
    assert_eq!(reply_code(&err), Some(404));
    let (_c, ch) = b.channel().await;
    let mut seen = vec![];
    for _ in 0..8 {
        let m = ch
            .basic_get("dq".into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
            .unwrap();
        seen.push((m.delivery.data[0], m.delivery.redelivered));
    }
    assert_eq!(
        seen,
        vec![
            (2, true),
            (3, true),
            (4, false),
            (5, false),
            (6, false),
            (7, false),
            (8, false),
            (9, false)
        ]
    );
    b.stop().await;
}

#[tokio::test]
async fn definitions_survive_restart() {
    let mut b = TestBroker::start().await;
    {
        let (_c, ch) = b.channel().await;
        let mut args = FieldTable::default();
        args.insert("x-max-length".into(), lapin::types::AMQPValue::LongInt(100));
        ch.exchange_declare(
            "dx".into(),
            lapin::ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
        ch.exchange_declare(
            "tx".into(),
            lapin::ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        ch.queue_declare("dq".into(), durable(), args)
            .await
            .unwrap();
        ch.queue_bind(
            "dq".into(),
            "dx".into(),
            "a.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        ch.queue_declare("gone".into(), durable(), FieldTable::default())
            .await
            .unwrap();
        ch.queue_delete("gone".into(), QueueDeleteOptions::default())
            .await
            .unwrap();
    }
    b.restart().await;
    let (_c, ch) = b.channel().await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    ch.exchange_declare(
        "dx".into(),
        lapin::ExchangeKind::Topic,
        ExchangeDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    assert!(
        publish_confirmed(&ch, "dx", "a.b", b"routed", BasicProperties::default())
            .await
            .is_ack()
    );
    let m = ch
        .basic_get("dq".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.delivery.data, b"routed");
    let (_c2, ch2) = b.channel().await;
    let e = ch2
        .exchange_declare(
            "tx".into(),
            lapin::ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(reply_code(&e), Some(404));
    let (_c3, ch3) = b.channel().await;
    let e = ch3
        .queue_declare("gone".into(), passive(), FieldTable::default())
        .await
        .unwrap_err();
    assert_eq!(reply_code(&e), Some(404));
    // redeclaring with other arguments is refused: the arguments survived too
    let (_c4, ch4) = b.channel().await;
    let e = ch4
        .queue_declare("dq".into(), durable(), FieldTable::default())
        .await
        .unwrap_err();
    assert_eq!(reply_code(&e), Some(406));
    b.stop().await;
}

#[tokio::test]
async fn fanout_writes_the_body_once() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    for q in ["f1", "f2", "f3", "f4"] {
        ch.queue_declare(q.into(), durable(), FieldTable::default())
            .await
            .unwrap();
        ch.queue_bind(
            q.into(),
            "amq.fanout".into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    }
    let before = b.store_bytes_used();
    let body = vec![7u8; 256 * 1024];
    assert!(
        publish_confirmed(&ch, "amq.fanout", "", &body, persistent())
            .await
            .is_ack()
    );
    let grew = b.store_bytes_used() - before;
    assert!(
        grew >= body.len() as u64 && grew < body.len() as u64 + 1024,
        "grew by {grew}"
    );
    for q in ["f1", "f2", "f3", "f4"] {
        let m = ch
            .basic_get(q.into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(m.delivery.data.len(), body.len());
    }
    b.stop().await;
}

#[tokio::test]
async fn disk_space_comes_back_after_drain_purge_and_delete() {
    let b = TestBroker::start().await; // 4 MiB segments
    let (_c, ch) = b.channel().await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    for q in ["d1", "d2", "d3"] {
        ch.queue_declare(q.into(), durable(), FieldTable::default())
            .await
            .unwrap();
    }
    let body = vec![1u8; 64 * 1024];
    for q in ["d1", "d2", "d3"] {
        for _ in 0..100 {
            ch.basic_publish(
                "".into(),
                q.into(),
                BasicPublishOptions::default(),
                &body,
                persistent(),
            )
            .await
            .unwrap();
        }
    }
    ch.wait_for_confirms().await.unwrap();
    assert!(
        b.store_segment_count() >= 4,
        "{} segments",
        b.store_segment_count()
    );
    // drain d1 with acks
    let mut cons = ch
        .basic_consume(
            "d1".into(),
            "c".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    for _ in 0..100 {
        let d = within(5, cons.next()).await.unwrap().unwrap();
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    ch.queue_purge("d2".into(), QueuePurgeOptions::default())
        .await
        .unwrap();
    ch.queue_delete("d3".into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    assert!(
        eventually(5, || b.store_segment_count() == 1).await,
        "{} segments left",
        b.store_segment_count()
    );
    let files = std::fs::read_dir(b.dir.path().join("msgs"))
        .unwrap()
        .count();
    assert!(files <= 2, "{files} files left in msgs/");
    b.stop().await;
}

#[tokio::test]
async fn failed_fsync_nacks_the_confirm() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let (b, faults) = TestBroker::start_with_faults(dir, config).await;
    let c = b.connect().await;
    let ch = c.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    ch.queue_declare("fq".into(), durable(), FieldTable::default())
        .await
        .unwrap();
    assert!(publish_confirmed(&ch, "", "fq", b"ok", persistent())
        .await
        .is_ack());
    faults.fail_all_syncs(true);
    assert!(
        !publish_confirmed(&ch, "", "fq", b"not on disk", persistent())
            .await
            .is_ack(),
        "must be nacked"
    );
    // transient messages do not need a sync and are still acked
    assert!(
        publish_confirmed(&ch, "", "fq", b"transient", BasicProperties::default())
            .await
            .is_ack()
    );
    faults.fail_all_syncs(false);
    assert!(publish_confirmed(&ch, "", "fq", b"ok again", persistent())
        .await
        .is_ack());
    b.stop().await;
}

#[tokio::test]
async fn segment_allocation_failure_nacks_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.store.segment_size = 1024 * 1024;
    let (b, faults) = TestBroker::start_with_faults(dir, config).await;
    let c = b.connect().await;
    let ch = c.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    ch.queue_declare("aq".into(), durable(), FieldTable::default())
        .await
        .unwrap();
    let body = vec![0u8; 600 * 1024];
    assert!(publish_confirmed(&ch, "", "aq", &body, persistent())
        .await
        .is_ack());
    faults.fail_allocations(1);
    // needs a new segment: allocation fails, the publish is nacked, nothing is lost
    assert!(!publish_confirmed(&ch, "", "aq", &body, persistent())
        .await
        .is_ack());
    assert!(publish_confirmed(&ch, "", "aq", &body, persistent())
        .await
        .is_ack());
    let q = ch
        .queue_declare("aq".into(), passive(), FieldTable::default())
        .await
        .unwrap();
    assert_eq!(q.message_count(), 2);
    b.stop().await;
}

#[tokio::test]
async fn sparse_segments_are_compacted_and_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.store.segment_size = 1024 * 1024;
    let mut b = TestBroker::start_with(dir, config).await;
    let (_c, ch) = b.channel().await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    ch.queue_declare("sparse".into(), durable(), FieldTable::default())
        .await
        .unwrap();
    let body = vec![3u8; 8 * 1024];
    for i in 0..600u32 {
        let mut b = body.clone();
        b[..4].copy_from_slice(&i.to_be_bytes());
        ch.basic_publish(
            "".into(),
            "sparse".into(),
            BasicPublishOptions::default(),
            &b,
            persistent(),
        )
        .await
        .unwrap();
    }
    ch.wait_for_confirms().await.unwrap();
    // Keep every 20th message (requeued, so redelivered), ack the rest.
    let mut keep = vec![];
    for _ in 0..600 {
        let m = ch
            .basic_get("sparse".into(), BasicGetOptions { no_ack: false })
            .await
            .unwrap()
            .unwrap();
        let i = u32::from_be_bytes(m.delivery.data[..4].try_into().unwrap());
        if i % 20 == 0 {
            keep.push(m.delivery.delivery_tag);
        } else {
            ch.basic_ack(m.delivery.delivery_tag, BasicAckOptions::default())
                .await
                .unwrap();
        }
    }
    for t in keep {
        ch.basic_nack(
            t,
            BasicNackOptions {
                requeue: true,
                multiple: false,
            },
        )
        .await
        .unwrap();
    }
    ch.basic_qos(1, BasicQosOptions::default()).await.unwrap();
    let before = b.store_segment_count();
    assert!(before >= 4, "{before} segments");
    let moved = b.compact();
    // Kept messages in the active segment stay where they are.
    assert!(moved > 20 && moved <= 30, "{moved} moved");
    assert!(
        eventually(10, || b.store_segment_count() <= 2).await,
        "{} segments after compaction",
        b.store_segment_count()
    );
    b.restart().await;
    let (_c, ch) = b.channel().await;
    let mut ids = vec![];
    while let Some(m) = ch
        .basic_get("sparse".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        assert!(
            m.delivery.redelivered,
            "requeued before compaction: still redelivered"
        );
        ids.push(u32::from_be_bytes(m.delivery.data[..4].try_into().unwrap()));
    }
    assert_eq!(ids, (0..600).filter(|i| i % 20 == 0).collect::<Vec<_>>());
    b.stop().await;
}

/// Ids of deleted queues and delayed exchanges are never given to new
/// queues: records naming them may survive in shared segments, and a new
/// queue with the same id would inherit them at the next restart.
#[tokio::test]
async fn ids_are_not_reused_after_deletion() {
    let mut b = TestBroker::start().await;
    b.add_vhost("v");
    b.set_permissions("guest", "v", ".*", ".*", ".*");
    {
        // A message in "/" keeps the shared segment alive.
        let (_c, ch) = b.channel().await;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        ch.queue_declare("keep".into(), durable(), FieldTable::default())
            .await
            .unwrap();
        assert!(publish_confirmed(&ch, "", "keep", b"keep", persistent())
            .await
            .is_ack());
        // The highest id: a durable delayed exchange in vhost v with a pending persistent message.
        let c = connect(&format!("amqp://guest:guest@{}/v", b.addr())).await;
        let vch = c.create_channel().await.unwrap();
        vch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        let mut args = FieldTable::default();
        args.insert(
            "x-delayed-type".into(),
            lapin::types::AMQPValue::LongString("fanout".into()),
        );
        vch.exchange_declare(
            "later".into(),
            lapin::ExchangeKind::Custom("x-delayed-message".into()),
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
        .unwrap();
        let mut h = FieldTable::default();
        h.insert(
            "x-delay".into(),
            lapin::types::AMQPValue::LongInt(3_600_000),
        );
        assert!(
            publish_confirmed(&vch, "later", "", b"ghost", persistent().with_headers(h))
                .await
                .is_ack()
        );
        let _ = c.close(200, "bye".into()).await;
    }
    b.delete_vhost("v");
    b.restart().await;
    {
        let (_c, ch) = b.channel().await;
        ch.queue_declare("fresh".into(), durable(), FieldTable::default())
            .await
            .unwrap();
    }
    b.restart().await;
    let (_c, ch) = b.channel().await;
    let q = ch
        .queue_declare("fresh".into(), passive(), FieldTable::default())
        .await
        .unwrap();
    assert_eq!(
        q.message_count(),
        0,
        "a deleted exchange's message came back in a new queue"
    );
    b.stop().await;
}

/// An exclusive queue dies with its connection whatever its durable flag:
/// its bindings must not survive into a later durable queue of that name.
#[tokio::test]
async fn exclusive_durable_queue_leaves_no_binding_behind() {
    let mut b = TestBroker::start().await;
    {
        let (c, ch) = b.channel().await;
        ch.exchange_declare(
            "dx2".into(),
            lapin::ExchangeKind::Direct,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
        ch.queue_declare(
            "ghost".into(),
            QueueDeclareOptions {
                durable: true,
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
        ch.queue_bind(
            "ghost".into(),
            "dx2".into(),
            "k".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        c.close(200, "bye".into()).await.unwrap();
    }
    assert!(eventually(5, || b.queue("/", "ghost").is_none()).await);
    {
        let (_c, ch) = b.channel().await;
        ch.queue_declare("ghost".into(), durable(), FieldTable::default())
            .await
            .unwrap();
    }
    b.restart().await;
    let (_c, ch) = b.channel().await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    assert!(publish_confirmed(&ch, "dx2", "k", b"x", persistent())
        .await
        .is_ack());
    let q = ch
        .queue_declare("ghost".into(), passive(), FieldTable::default())
        .await
        .unwrap();
    assert_eq!(
        q.message_count(),
        0,
        "a binding of the exclusive queue came back"
    );
    b.stop().await;
}

/// Messages that fell due while the broker was down (delayed releases, TTL
/// expiries with a dead-letter exchange) are handled only once every queue
/// and binding is back: routed any earlier they would find no queue and be
/// dropped. A backlog in other queues makes recovery take long enough for
/// an early start to show (this failed every time before the fix).
#[tokio::test]
async fn work_due_at_restart_waits_until_every_queue_is_back() {
    use lapin::types::AMQPValue;
    let mut b = TestBroker::start().await;
    const N: usize = 50;
    {
        let (_c, ch) = b.channel().await;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        // A backlog in other queues makes recovery take a while.
        for i in 0..20 {
            ch.queue_declare(
                format!("pad{i}").as_str().into(),
                durable(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        }
        let mut last = None;
        for i in 0..40_000 {
            last = Some(
                ch.basic_publish(
                    "".into(),
                    format!("pad{}", i % 20).as_str().into(),
                    BasicPublishOptions::default(),
                    b"x",
                    persistent(),
                )
                .await
                .unwrap(),
            );
        }
        assert!(last.unwrap().await.unwrap().is_ack());
        let mut dargs = FieldTable::default();
        dargs.insert(
            "x-delayed-type".into(),
            AMQPValue::LongString("direct".into()),
        );
        ch.exchange_declare(
            "later-x".into(),
            lapin::ExchangeKind::Custom("x-delayed-message".into()),
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            dargs,
        )
        .await
        .unwrap();
        let mut ttl = FieldTable::default();
        ttl.insert("x-message-ttl".into(), AMQPValue::LongInt(100));
        ttl.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString("".into()),
        );
        ttl.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString("expired-q".into()),
        );
        ch.queue_declare("ttl-q".into(), durable(), ttl)
            .await
            .unwrap();
        for q in ["released-q", "expired-q"] {
            ch.queue_declare(q.into(), durable(), FieldTable::default())
                .await
                .unwrap();
        }
        ch.queue_bind(
            "released-q".into(),
            "later-x".into(),
            "k".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        let mut h = FieldTable::default();
        h.insert("x-delay".into(), AMQPValue::LongInt(100));
        for i in 0..N {
            let body = format!("{i}");
            assert!(publish_confirmed(
                &ch,
                "later-x",
                "k",
                body.as_bytes(),
                persistent().with_headers(h.clone())
            )
            .await
            .is_ack());
            assert!(
                publish_confirmed(&ch, "", "ttl-q", body.as_bytes(), persistent())
                    .await
                    .is_ack()
            );
        }
    }
    b.shutdown().await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    b.restart().await;
    let counts = || {
        (
            b.queue("/", "released-q").unwrap().message_count(),
            b.queue("/", "expired-q").unwrap().message_count(),
        )
    };
    eventually(10, || counts() == (N as u32, N as u32)).await;
    assert_eq!(
        counts(),
        (N as u32, N as u32),
        "released and expired copies all arrive"
    );
    assert_eq!(b.queue("/", "ttl-q").unwrap().message_count(), 0);
    b.stop().await;
}

/// Two brokers on one data dir would destroy each other's data: the second
/// is refused with a clear error. A clean shutdown gives the dir up, and the
/// stopped broker is gone (nothing left running that could still write).
#[tokio::test]
async fn data_dir_is_locked_while_a_broker_uses_it() {
    let mut b = TestBroker::start().await;
    {
        let (_c, ch) = b.channel().await;
        ch.queue_declare("q".into(), durable(), FieldTable::default())
            .await
            .unwrap();
    }
    let err = lepus::server::start(b.config.clone())
        .await
        .err()
        .expect("a second broker on the same data dir is refused");
    assert!(err.to_string().contains("in use by another lepus"), "{err}");
    let old = b.weak_broker();
    b.restart().await;
    assert!(
        eventually(5, || old.upgrade().is_none()).await,
        "the stopped broker is still alive"
    );
    assert!(b.queue("/", "q").is_some());
    b.stop().await;
}
