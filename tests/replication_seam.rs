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
use lapin::PublisherConfirm as Confirm;
use lapin::{BasicProperties, Channel, ExchangeKind};
use lepus::server::Handle;
use lepus::store::io::{Observed, RealIo};
use lepus::store::replica::{differences, Mirror, Op, Recorder};
use std::path::Path;
use std::sync::Arc;

const LONG_DELAY: i64 = 3_600_000;

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2)
}

fn with_id(id: &str) -> BasicProperties {
    persistent().with_message_id(id.into())
}

fn delayed(ms: i64) -> BasicProperties {
    let mut h = FieldTable::default();
    h.insert("x-delay".into(), AMQPValue::LongLongInt(ms));
    persistent().with_headers(h)
}

fn args(pairs: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in pairs {
        t.insert((*k).into(), v.clone());
    }
    t
}

fn dedup_args() -> FieldTable {
    args(&[
        ("x-message-deduplication", AMQPValue::Boolean(true)),
        ("x-cache-size", AMQPValue::LongInt(4)),
    ])
}

async fn start(dir: &Path, rec: Option<&Arc<Recorder>>) -> Handle {
    let mut config = test_config(dir);
    config.store.segment_size = 1024 * 1024;
    let h = match rec {
        Some(r) => {
            lepus::server::start_with_io(config, Arc::new(Observed::new(RealIo, r.clone()))).await
        }
        None => lepus::server::start(config).await,
    };
    h.expect("broker starts")
}

async fn channel(h: &Handle) -> (lapin::Connection, Channel) {
    let c = connect(&format!("amqp://guest:guest@{}/%2f", h.addr)).await;
    let ch = c.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    (c, ch)
}

async fn send(ch: &Channel, ex: &str, rk: &str, body: &[u8], props: BasicProperties) -> Confirm {
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
async fn acked(confirms: &mut Vec<Confirm>) {
    for c in confirms.drain(..) {
        assert!(within(10, c).await.unwrap().is_ack());
    }
}

/// Take `n` messages from `q` and ack them; `requeue` more are handed out
/// and rejected back (their delivery is logged).
async fn take(ch: &Channel, q: &str, n: usize, requeue: usize) {
    for i in 0..n + requeue {
        let m = ch
            .basic_get(q.into(), BasicGetOptions::default())
            .await
            .unwrap()
            .expect("a message");
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
async fn drain(ch: &Channel, q: &str) -> Vec<(bool, Vec<u8>)> {
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

fn delayed_pending(h: &Handle) -> (u64, Vec<(u64, lepus::store::MsgPos)>) {
    let ex = h.broker.vhost("/").unwrap().exchange("later").unwrap();
    let d = ex.delayed.as_ref().unwrap();
    (d.pending(), d.list(20))
}

/// Schedule `n` delayed messages through the broker's own API (fast enough
/// to make the delay index spill a run file).
async fn schedule_many(h: &Handle, n: usize) {
    let broker = h.broker.clone();
    tokio::task::spawn_blocking(move || {
        let ex = broker.vhost("/").unwrap().exchange("later").unwrap();
        let d = ex.delayed.as_ref().unwrap();
        let mut prefix = vec![];
        for i in 0..n {
            let body = format!("bulk {i}");
            let header =
                lepus::protocol::props::encode_header(body.len() as u64, &delayed(LONG_DELAY));
            d.store_and_schedule(
                "later",
                "d",
                &header,
                body.as_bytes(),
                true,
                LONG_DELAY as u64,
                &mut prefix,
            )
            .unwrap();
        }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_replica_fed_only_by_the_observer_reproduces_the_data_dir() {
    let primary = tempfile::tempdir().unwrap();
    let replica = tempfile::tempdir().unwrap();
    let rec = Arc::new(Recorder::default());
    // The replica follows at two checkpoints, so that a write that bypasses
    // the seam shows even when a later rewrite (definitions, dedup) would
    // cover it up.
    let mut mirror = Mirror::new(replica.path()).unwrap();
    mirror.sync = false;
    let mut ops = vec![];
    let mut follow = |phase: &str| {
        let new = rec.take();
        mirror.apply_all(&new).unwrap();
        assert_eq!(
            differences(primary.path(), replica.path()).unwrap(),
            Vec::<String>::new(),
            "after {phase}, the replica differs from the primary"
        );
        ops.extend(new);
    };

    // ----- phase 1: from an empty directory, everything observed -----
    let h = start(primary.path(), Some(&rec)).await;
    let (_c, ch) = channel(&h).await;
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
        args(&[("x-delayed-type", AMQPValue::LongString("direct".into()))]),
    )
    .await
    .unwrap();
    for (ex, rk) in [("dx", "w"), ("later", "d")] {
        ch.queue_bind(
            "work".into(),
            ex.into(),
            rk.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    }
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
        confirms.push(
            send(
                &ch,
                "",
                "work",
                format!("transient {i}").as_bytes(),
                BasicProperties::default(),
            )
            .await,
        );
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
        confirms.push(
            send(
                &ch,
                "later",
                "d",
                format!("late {i}").as_bytes(),
                delayed(LONG_DELAY),
            )
            .await,
        );
    }
    for i in 0..3 {
        confirms.push(
            send(
                &ch,
                "later",
                "d",
                format!("soon {i}").as_bytes(),
                delayed(150),
            )
            .await,
        );
    }
    acked(&mut confirms).await;
    ch.queue_delete("doomed".into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    // Ack logs: acks, and deliveries handed back.
    take(&ch, "work", 12, 3).await;
    // Definitions through the broker's API.
    let b = h.broker.clone();
    b.add_vhost("replicated").unwrap();
    b.put_user("alice", lepus::broker::hash_password("pw"), vec![])
        .unwrap();
    b.set_permissions("alice", "replicated", ".*", ".*", ".*")
        .unwrap();
    b.delete_user("alice").unwrap();
    // The delay index spills a run file.
    schedule_many(&h, lepus::broker::delayed::SPILL + 100).await;
    let ex = b.vhost("/").unwrap().exchange("later").unwrap();
    assert!(
        eventually(10, || ex
            .delayed
            .as_ref()
            .unwrap()
            .released
            .load(std::sync::atomic::Ordering::Relaxed)
            == 3)
        .await,
        "the short delays were released"
    );
    drop((ex, b));
    assert!(
        std::fs::read_dir(primary.path().join("delayed"))
            .unwrap()
            .flatten()
            .any(|d| std::fs::read_dir(d.path()).unwrap().count() > 0),
        "a delay-index run was written"
    );
    h.shutdown().await;
    follow("phase 1");

    // ----- phase 2: a restart (recovery writes too) and more work -----
    let h = start(primary.path(), Some(&rec)).await;
    let (_c, ch) = channel(&h).await;
    let mut confirms = vec![];
    // Definitions appended after the start's rewrite.
    ch.queue_declare("phase2".into(), durable(), FieldTable::default())
        .await
        .unwrap();
    ch.queue_bind(
        "phase2".into(),
        "later".into(),
        "p".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    take(&ch, "work", 5, 1).await;
    for i in 0..5 {
        confirms.push(
            send(
                &ch,
                "",
                "work",
                format!("after {i}").as_bytes(),
                persistent(),
            )
            .await,
        );
    }
    confirms.push(send(&ch, "", "dedup", b"m12", with_id("m12")).await);
    acked(&mut confirms).await;
    ch.queue_purge("dedup".into(), QueuePurgeOptions::default())
        .await
        .unwrap();
    let expect_pending = delayed_pending(&h);
    assert_eq!(
        expect_pending.0,
        5 + lepus::broker::delayed::SPILL as u64 + 100
    );
    let expect_work = queue_counts(&ch, "work").await.0;
    h.shutdown().await;

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
    let hp = start(primary.path(), None).await;
    let hr = start(replica.path(), None).await;
    assert_eq!(delayed_pending(&hr), expect_pending);
    assert_eq!(delayed_pending(&hp), expect_pending);
    assert!(hr.broker.vhost("replicated").is_some());
    assert!(hr.broker.vhost("/").unwrap().queue("phase2").is_some());
    assert!(hr.broker.vhost("/").unwrap().exchange("dx").is_some());
    let (_cp, chp) = channel(&hp).await;
    let (_cr, chr) = channel(&hr).await;
    assert_eq!(queue_counts(&chr, "work").await.0, expect_work);
    let work = drain(&chp, "work").await;
    assert_eq!(work.len(), expect_work as usize);
    assert!(work.iter().any(|(redelivered, _)| *redelivered));
    assert_eq!(drain(&chr, "work").await, work);
    // The dedup caches came along: the last ids are still duplicates.
    for ch in [&chp, &chr] {
        confirms.push(send(ch, "", "dedup", b"again", with_id("m12")).await);
        confirms.push(send(ch, "", "dedup", b"new", with_id("fresh")).await);
        confirms.push(send(ch, "dx", "w", b"again", with_id("x2")).await);
        confirms.push(send(ch, "dx", "w", b"new", with_id("x9")).await);
        acked(&mut confirms).await;
        assert_eq!(drain(ch, "dedup").await, vec![(false, b"new".to_vec())]);
        assert_eq!(drain(ch, "work").await, vec![(false, b"new".to_vec())]);
    }
    hp.shutdown().await;
    hr.shutdown().await;
}
