//! The store's replication seam is complete: a real broker runs a workload
//! that writes every kind of durable file (segments, ack logs, the
//! definitions log, dedup logs of a queue and an exchange, delay-index runs),
//! with a recording observer attached through its `StoreIo`. Replaying the
//! recorded changes into an empty directory must reproduce the data dir byte
//! for byte, and a broker started on that replica must recover the same
//! queues, messages, delayed messages and dedup caches.

mod common;
use common::*;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, ExchangeKind, PublisherConfirm};
use std::path::Path;
use std::sync::Arc;

const LONG_DELAY: i64 = 3_600_000;

fn with_id(id: &str) -> BasicProperties {
    persistent().with_message_id(id.into())
}

fn delayed(ms: i64) -> BasicProperties {
    let mut h = FieldTable::default();
    h.insert("x-delay".into(), AMQPValue::LongLongInt(ms));
    persistent().with_headers(h)
}

fn dedup_args() -> FieldTable {
    arg_table(&[
        ("x-message-deduplication", AMQPValue::Boolean(true)),
        ("x-cache-size", int(4)),
    ])
}

async fn channel(b: &TestBroker) -> (lapin::Connection, Channel) {
    let (c, ch) = b.channel().await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    (c, ch)
}

async fn send(
    ch: &Channel,
    ex: &str,
    rk: &str,
    body: &[u8],
    props: BasicProperties,
) -> PublisherConfirm {
    ch.basic_publish(
        ex.into(),
        rk.into(),
        BasicPublishOptions::default(),
        body,
        props,
    )
    .await
    .unwrap()
}

/// Wait for every confirm; all must be acks.
async fn acked(confirms: &mut Vec<PublisherConfirm>) {
    for c in confirms.drain(..) {
        assert!(within(10, c).await.unwrap().is_ack());
    }
}

/// Take `n` messages from `q` and ack them; `requeue` more are handed out
/// and rejected back (their delivery is logged).
async fn take(ch: &Channel, q: &str, n: usize, requeue: usize) {
    for i in 0..n + requeue {
        let m = get_message(ch, q).await.expect("a message");
        if i < n {
            m.ack(BasicAckOptions::default()).await.unwrap();
        } else {
            m.reject(BasicRejectOptions { requeue: true })
                .await
                .unwrap();
        }
    }
}

/// Every message of `q`, in order: (redelivered, body). Takes them.
async fn take_all(ch: &Channel, q: &str) -> Vec<(bool, Vec<u8>)> {
    let mut out = vec![];
    while let Some(m) = ch
        .basic_get(q.into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        out.push((m.delivery.redelivered, m.delivery.data.clone()));
    }
    out
}

fn has_run_file(data_dir: &Path) -> bool {
    std::fs::read_dir(data_dir.join("delayed"))
        .unwrap()
        .flatten()
        .any(|d| std::fs::read_dir(d.path()).unwrap().count() > 0)
}

#[tokio::test]
async fn a_replica_fed_only_by_the_observer_reproduces_the_data_dir() {
    let primary_dir = tempfile::tempdir().unwrap();
    let replica_dir = tempfile::tempdir().unwrap();
    let (primary, replica) = (primary_dir.path().to_owned(), replica_dir.path().to_owned());
    let rec = Arc::new(Recorder::default());
    // The replica follows at two checkpoints, so that a write that bypasses
    // the seam shows even when a later rewrite (definitions, dedup) would
    // cover it up.
    let mut mirror = Mirror::new(&replica).unwrap();
    mirror.sync = false;
    let mut ops = vec![];
    let mut follow = |phase: &str| {
        let new = rec.take();
        mirror.apply_all(&new).unwrap();
        assert_eq!(
            differences(&primary, &replica).unwrap(),
            Vec::<String>::new(),
            "after {phase}, the replica differs from the primary"
        );
        ops.extend(new);
    };

    // ----- phase 1: from an empty directory, everything observed -----
    let mut config = test_config(&primary);
    config.store.segment_size = 1024 * 1024;
    let mut b = TestBroker::start_observed(primary_dir, config, rec.clone()).await;
    let (_c, ch) = channel(&b).await;
    let mut confirms = vec![];
    for (q, a) in [
        ("work", FieldTable::default()),
        ("dedup", dedup_args()),
        ("doomed", dedup_args()),
    ] {
        ch.queue_declare(q.into(), durable(), a).await.unwrap();
    }
    let ex_durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.exchange_declare("dx".into(), ExchangeKind::Direct, ex_durable, dedup_args())
        .await
        .unwrap();
    ch.exchange_declare(
        "later".into(),
        ExchangeKind::Custom("x-delayed-message".into()),
        ex_durable,
        arg_table(&[("x-delayed-type", lstr("direct"))]),
    )
    .await
    .unwrap();
    bind_queue(&ch, "work", "dx", "w").await;
    bind_queue(&ch, "work", "later", "d").await;
    // A segment filled by one queue and emptied again: deleted.
    ch.queue_declare("scratch".into(), durable(), FieldTable::default())
        .await
        .unwrap();
    for _ in 0..5 {
        confirms.push(send(&ch, "", "scratch", &[7u8; 300 * 1024], persistent()).await);
    }
    acked(&mut confirms).await;
    ch.queue_purge("scratch".into(), QueuePurgeOptions::default())
        .await
        .unwrap();
    // Persistent messages over several 1 MiB segments, and transient ones.
    for i in 0..40u32 {
        let size = if i % 10 == 9 {
            300 * 1024
        } else {
            100 + i as usize
        };
        let body: Vec<u8> = (0..size).map(|j| (i as usize + j) as u8).collect();
        confirms.push(send(&ch, "", "work", &body, persistent()).await);
    }
    for i in 0..10 {
        let body = format!("transient {i}");
        confirms.push(send(&ch, "", "work", body.as_bytes(), BasicProperties::default()).await);
    }
    // Dedup logs: more ids than twice the cache size (a rewrite), duplicates.
    for i in 0..12 {
        for _ in 0..2 {
            let id = format!("m{i}");
            confirms.push(send(&ch, "", "dedup", id.as_bytes(), with_id(&id)).await);
        }
    }
    for i in 0..3 {
        let id = format!("gone{i}");
        confirms.push(send(&ch, "", "doomed", b"x", with_id(&id)).await);
    }
    for id in ["x0", "x1", "x2", "x0"] {
        confirms.push(send(&ch, "dx", "w", id.as_bytes(), with_id(id)).await);
    }
    // Delayed: some pending for an hour, some due at once.
    for i in 0..5 {
        let body = format!("late {i}");
        confirms.push(send(&ch, "later", "d", body.as_bytes(), delayed(LONG_DELAY)).await);
    }
    for i in 0..3 {
        let body = format!("soon {i}");
        confirms.push(send(&ch, "later", "d", body.as_bytes(), delayed(150)).await);
    }
    acked(&mut confirms).await;
    ch.queue_delete("doomed".into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    // Ack logs: acks, and deliveries handed back.
    take(&ch, "work", 12, 3).await;
    // Definitions through the broker's API.
    b.add_vhost("replicated");
    b.put_user("alice", "pw");
    b.set_permissions("alice", "replicated", ".*", ".*", ".*");
    b.delete_user("alice");
    // The delay index spills a run file.
    b.schedule_delayed("/", "later", "d", DELAY_INDEX_SPILL + 100, LONG_DELAY)
        .await;
    assert!(
        eventually(10, || b.delayed_released("/", "later") == 3).await,
        "the short delays were released"
    );
    assert!(has_run_file(&primary), "a delay-index run was written");
    b.shutdown().await;
    follow("phase 1");

    // ----- phase 2: a restart (recovery writes too) and more work -----
    b.restart_observed(rec.clone()).await;
    let (_c, ch) = channel(&b).await;
    // Definitions appended after the start's rewrite.
    ch.queue_declare("phase2".into(), durable(), FieldTable::default())
        .await
        .unwrap();
    bind_queue(&ch, "phase2", "later", "p").await;
    take(&ch, "work", 5, 1).await;
    for i in 0..5 {
        let body = format!("after {i}");
        confirms.push(send(&ch, "", "work", body.as_bytes(), persistent()).await);
    }
    confirms.push(send(&ch, "", "dedup", b"m12", with_id("m12")).await);
    acked(&mut confirms).await;
    ch.queue_purge("dedup".into(), QueuePurgeOptions::default())
        .await
        .unwrap();
    let expect_pending = b.delayed_pending("/", "later");
    assert_eq!(expect_pending.0, 5 + DELAY_INDEX_SPILL as u64 + 100);
    let expect_work = queue_counts(&ch, "work").await.0;
    b.shutdown().await;
    follow("phase 2");

    // The workload wrote every kind of durable file.
    let touched = |pred: &dyn Fn(&str) -> bool| {
        ops.iter()
            .any(|o| matches!(o, Op::Wrote { .. }) && pred(&o.path().to_string_lossy()))
    };
    assert!(touched(&|p| p.starts_with("msgs/") && p.ends_with(".seg")));
    assert!(touched(&|p| p.starts_with("msgs/") && p.ends_with(".acks")));
    assert!(touched(&|p| p.starts_with("definitions.log")));
    assert!(touched(&|p| p.starts_with("dedup/q")));
    assert!(touched(&|p| p.starts_with("dedup/x")));
    assert!(touched(
        &|p| p.starts_with("delayed/x") && p.contains("/run-")
    ));
    assert!(ops.iter().any(|o| matches!(o, Op::Renamed { .. })));
    assert!(ops.iter().any(|o| matches!(o, Op::SetLen { .. })));
    assert!(ops.iter().any(|o| matches!(o, Op::Synced(_))));
    for dir in ["dedup", "msgs", "delayed"] {
        assert!(
            ops.iter()
                .any(|o| matches!(o, Op::Deleted(p) if p.starts_with(dir))),
            "nothing deleted in {dir}/"
        );
    }

    // ----- a broker on the replica recovers what one on the primary does -----
    b.restart().await;
    let r = TestBroker::start_with(replica_dir, test_config(&replica)).await;
    assert_eq!(r.delayed_pending("/", "later"), expect_pending);
    assert_eq!(b.delayed_pending("/", "later"), expect_pending);
    assert!(r.vhost_exists("replicated"));
    assert!(r.has_queue("/", "phase2"));
    assert!(r.exchange("/", "dx").is_some());
    let (_cp, chp) = channel(&b).await;
    let (_cr, chr) = channel(&r).await;
    assert_eq!(queue_counts(&chr, "work").await.0, expect_work);
    let work = take_all(&chp, "work").await;
    assert_eq!(work.len(), expect_work as usize);
    assert!(work.iter().any(|(redelivered, _)| *redelivered));
    assert_eq!(take_all(&chr, "work").await, work);
    // The dedup caches came along: the last ids are still duplicates.
    for ch in [&chp, &chr] {
        confirms.push(send(ch, "", "dedup", b"again", with_id("m12")).await);
        confirms.push(send(ch, "", "dedup", b"new", with_id("fresh")).await);
        confirms.push(send(ch, "dx", "w", b"again", with_id("x2")).await);
        confirms.push(send(ch, "dx", "w", b"new", with_id("x9")).await);
        acked(&mut confirms).await;
        assert_eq!(take_all(ch, "dedup").await, vec![(false, b"new".to_vec())]);
        assert_eq!(take_all(ch, "work").await, vec![(false, b"new".to_vec())]);
    }
    b.stop().await;
    r.stop().await;
}
