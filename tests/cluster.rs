//! The cluster with real processes: an etcd server and three `lepus` nodes
//! (tests/common/cluster.rs). Leaders are killed with SIGKILL and followers
//! frozen with SIGSTOP; clients are lapin over loopback, connected through a
//! follower's address (which relays to the leader).

mod common;
use common::cluster::*;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// Connect to the first of `uris` that answers, retrying for up to `secs`.
async fn connect_any(uris: &[String], secs: u64) -> Connection {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        for u in uris {
            let c = tokio::time::timeout(
                Duration::from_secs(3),
                Connection::connect(u, ConnectionProperties::default()),
            )
            .await;
            if let Ok(Ok(c)) = c {
                return c;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no node of {uris:?} took a connection"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn confirm_channel(c: &Connection) -> Channel {
    let ch = c.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    ch
}

fn persistent(id: u32) -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_message_id(format!("m{id}").into())
}

/// Publish message `id` to queue `q`; the confirm to wait for.
async fn send(ch: &Channel, id: u32) -> lapin::PublisherConfirm {
    ch.basic_publish(
        "".into(),
        "q".into(),
        BasicPublishOptions::default(),
        b"x",
        persistent(id),
    )
    .await
    .unwrap()
}

#[derive(Default)]
struct Published {
    confirmed: BTreeSet<u32>,
    /// Sent at least twice (the first send's confirm never came).
    resent: BTreeSet<u32>,
    first_confirm_after: Option<Instant>,
}

/// Publish ids `0..n` to queue `q` with confirms, a window at a time,
/// reconnecting (to any of `uris`) and resending what was not confirmed
/// whenever the connection breaks.
async fn publish_through_failover(
    uris: Vec<String>,
    q: &str,
    n: u32,
    state: Arc<Mutex<Published>>,
    killed: Arc<Mutex<Option<Instant>>>,
) {
    let mut next = 0u32;
    let mut pending: Vec<u32> = vec![];
    while next < n || !pending.is_empty() {
        let c = connect_any(&uris, 60).await;
        let Ok(ch) = c.create_channel().await else {
            continue;
        };
        if ch
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .is_err()
        {
            continue;
        }
        loop {
            while pending.len() < 32 && next < n {
                pending.push(next);
                next += 1;
            }
            if pending.is_empty() {
                break;
            }
            let mut confirms = vec![];
            let mut broken = false;
            for &id in &pending {
                match ch
                    .basic_publish(
                        "".into(),
                        q.into(),
                        BasicPublishOptions::default(),
                        format!("body {id}").as_bytes(),
                        persistent(id),
                    )
                    .await
                {
                    Ok(pc) => confirms.push((id, pc)),
                    Err(_) => {
                        broken = true;
                        break;
                    }
                }
            }
            let mut still = vec![];
            for (id, pc) in confirms {
                match tokio::time::timeout(Duration::from_secs(30), pc).await {
                    Ok(Ok(conf)) if conf.is_ack() => {
                        let mut s = state.lock().unwrap();
                        s.confirmed.insert(id);
                        if s.first_confirm_after.is_none() {
                            if let Some(k) = *killed.lock().unwrap() {
                                s.first_confirm_after = Some(Instant::now().max(k));
                            }
                        }
                    }
                    _ => {
                        broken = true;
                        still.push(id);
                    }
                }
            }
            // Ids never sent on this connection stay pending too.
            let sent: BTreeSet<u32> = pending.iter().copied().collect();
            let confirmed_now: BTreeSet<u32> = state.lock().unwrap().confirmed.clone();
            pending = sent
                .into_iter()
                .filter(|i| !confirmed_now.contains(i))
                .collect();
            if broken {
                let mut s = state.lock().unwrap();
                for id in &pending {
                    s.resent.insert(*id);
                }
                break;
            }
        }
        let _ = c.close(200, "done".into()).await;
    }
}

/// Take every message from `q` (basic.get, auto-ack): id → (count, redelivered).
async fn drain(ch: &Channel, q: &str) -> BTreeMap<u32, (u32, bool)> {
    let mut out: BTreeMap<u32, (u32, bool)> = BTreeMap::new();
    while let Some(m) = ch
        .basic_get(q.into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        let id: u32 = m
            .delivery
            .properties
            .message_id()
            .as_ref()
            .unwrap()
            .as_str()[1..]
            .parse()
            .unwrap();
        let e = out.entry(id).or_default();
        e.0 += 1;
        e.1 |= m.delivery.redelivered;
    }
    out
}

fn delayed_args() -> FieldTable {
    let mut t = FieldTable::default();
    t.insert(
        "x-delayed-type".into(),
        AMQPValue::LongString("direct".into()),
    );
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirmed_message_survives_the_loss_of_the_leader() {
    let mut cl = blocking(|| Cluster::start(&[]));
    // Clients are given the followers' addresses only.
    let uris: Vec<String> = vec![cl.node("n2").uri(), cl.node("n3").uri()];
    let setup = connect_any(&uris, 10).await;
    let ch = confirm_channel(&setup).await;
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    for q in ["q", "unacked", "dq"] {
        ch.queue_declare(q.into(), durable, FieldTable::default())
            .await
            .unwrap();
    }
    ch.exchange_declare(
        "dx".into(),
        ExchangeKind::Custom("x-delayed-message".into()),
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        delayed_args(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        "dq".into(),
        "dx".into(),
        "d".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    // Delivered, never acked: must come back redelivered.
    for id in 0..20 {
        let c = ch
            .basic_publish(
                "".into(),
                "unacked".into(),
                BasicPublishOptions::default(),
                b"u",
                persistent(id),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(c.is_ack());
    }
    let consumer_conn = connect_any(&uris, 10).await;
    let cch = consumer_conn.create_channel().await.unwrap();
    let mut got = 0;
    while got < 20 {
        if cch
            .basic_get("unacked".into(), BasicGetOptions { no_ack: false })
            .await
            .unwrap()
            .is_some()
        {
            got += 1;
        }
    }
    // Pending on the delayed exchange across the failover.
    let delay_ms = 6000u64;
    let delayed_at = Instant::now();
    for id in 0..5 {
        let mut h = FieldTable::default();
        h.insert("x-delay".into(), AMQPValue::LongLongInt(delay_ms as i64));
        let c = ch
            .basic_publish(
                "dx".into(),
                "d".into(),
                BasicPublishOptions::default(),
                b"later",
                persistent(id).with_headers(h),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(c.is_ack());
    }
    // The delivered marks reach the ack log (flushed every 200 ms) and the followers.
    tokio::time::sleep(Duration::from_millis(800)).await;

    let state = Arc::new(Mutex::new(Published::default()));
    let killed = Arc::new(Mutex::new(None));
    let publisher = tokio::spawn(publish_through_failover(
        uris.clone(),
        "q",
        2000,
        state.clone(),
        killed.clone(),
    ));
    let mid = common::eventually_async(60, || {
        let s = state.clone();
        async move { s.lock().unwrap().confirmed.len() >= 500 }
    })
    .await;
    assert!(mid, "publishing did not get going");
    blocking(|| cl.node("n1").kill9());
    *killed.lock().unwrap() = Some(Instant::now());
    let kill_time = Instant::now();
    tokio::time::timeout(Duration::from_secs(120), publisher)
        .await
        .expect("publisher finished")
        .unwrap();
    let failover = state
        .lock()
        .unwrap()
        .first_confirm_after
        .map(|t| t - kill_time);
    eprintln!("failover: first confirm on the new leader {failover:?} after SIGKILL (lease TTL {LEASE_TTL_MS} ms)");
    let new_leader = blocking(|| leader_name(&cl.node("n2").api())).expect("a new leader");
    assert_ne!(new_leader, "n1");
    drop(setup);
    drop(consumer_conn);

    let c = connect_any(&uris, 10).await;
    let ch = c.create_channel().await.unwrap();
    let got = drain(&ch, "q").await;
    let (confirmed, resent) = {
        let s = state.lock().unwrap();
        (s.confirmed.clone(), s.resent.clone())
    };
    assert_eq!(confirmed.len(), 2000);
    eprintln!("{} messages resent after the failover", resent.len());
    for id in 0..2000u32 {
        let (n, _) = got.get(&id).copied().unwrap_or((0, false));
        assert!(n >= 1, "confirmed message m{id} lost in the failover");
        if !resent.contains(&id) {
            assert_eq!(n, 1, "m{id} (sent once) delivered {n} times");
        } else {
            assert!(n <= 2, "m{id} delivered {n} times");
        }
    }
    assert_eq!(
        got.len(),
        2000,
        "unknown ids: {:?}",
        got.keys().filter(|i| **i >= 2000).collect::<Vec<_>>()
    );
    let unacked = drain(&ch, "unacked").await;
    assert_eq!(unacked.len(), 20);
    assert!(
        unacked.values().all(|(n, r)| *n == 1 && *r),
        "unacked messages come back once, redelivered: {unacked:?}"
    );

    // The delayed messages are released by the new leader when due, not before.
    let mut released = 0;
    // (The publishing above may outlast the delay on a loaded machine.)
    let deadline = (delayed_at + Duration::from_millis(delay_ms)).max(Instant::now())
        + Duration::from_secs(10);
    while released < 5 && Instant::now() < deadline {
        if let Some(m) = ch
            .basic_get("dq".into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            assert_eq!(&m.delivery.data[..], b"later");
            let at = delayed_at.elapsed();
            assert!(
                at >= Duration::from_millis(delay_ms - 50),
                "released early, after {at:?}"
            );
            released += 1;
        } else {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert_eq!(
        released, 5,
        "delayed messages were not released after the failover"
    );
    eprintln!(
        "delayed messages released {:?} after publish (due at {delay_ms} ms)",
        delayed_at.elapsed()
    );

    // The old leader comes back as a follower and catches up.
    blocking(|| {
        let n1 = cl.node("n1");
        n1.launch();
        let api = cl.node(&new_leader).api();
        assert!(
            wait_for(30, || in_sync(&api, "n1")),
            "n1 did not rejoin the ISR: {:?}\n{}",
            nodes(&api),
            cl.node("n1").output()
        );
    });
    let _ = c.close(200, "bye".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_follower_leaves_the_isr_and_too_few_block_publishers() {
    let mut cl = blocking(|| Cluster::start(&[]));
    let leader_uri = cl.node("n1").uri();
    let api = cl.node("n1").api();
    let c = connect_any(std::slice::from_ref(&leader_uri), 10).await;
    let ch = confirm_channel(&c).await;
    ch.queue_declare(
        "q".into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let publish = |id: u32| send(&ch, id);
    assert!(publish(0).await.await.unwrap().is_ack());

    // One follower frozen: it leaves the ISR after the timeout, and the
    // leader goes on confirming with the other (min_insync 1 of 3).
    cl.node("n2").signal("STOP");
    let frozen_at = Instant::now();
    let conf = tokio::time::timeout(Duration::from_secs(15), publish(1).await).await;
    assert!(conf
        .expect("confirmed without the frozen follower")
        .unwrap()
        .is_ack());
    eprintln!(
        "confirm with one follower frozen after {:?}",
        frozen_at.elapsed()
    );
    assert!(blocking(|| wait_for(10, || nodes(&api).is_some_and(
        |ns| ns.iter().any(|n| n["name"] == "n2" && n["isr"] == false)
    ))));
    assert!(!c.status().blocked());

    // Both frozen: fewer in-sync followers than min_insync. Publishers are
    // blocked and nothing is confirmed.
    cl.node("n3").signal("STOP");
    let pc = publish(2).await;
    assert!(
        common::eventually(15, || c.status().blocked()).await,
        "publisher was not blocked with no follower in sync"
    );
    let metrics = blocking(|| {
        ureq::get(&format!("{api}/metrics"))
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap()
    });
    assert!(metrics.contains("lepus_cluster_isr_size 1"), "{metrics}");
    assert!(
        metrics.contains("lepus_alarm{resource=\"cluster\"} 1"),
        "{metrics}"
    );
    let early = tokio::time::timeout(Duration::from_millis(500), pc).await;
    assert!(
        early.is_err(),
        "confirmed with no follower in sync: {early:?}"
    );

    // Thawed: they copy what they missed, rejoin, and publishers go on.
    cl.node("n2").signal("CONT");
    cl.node("n3").signal("CONT");
    assert!(
        common::eventually(30, || !c.status().blocked()).await,
        "publisher not unblocked after the followers caught up"
    );
    assert!(blocking(
        || wait_for(30, || in_sync(&api, "n2") && in_sync(&api, "n3"))
    ));
    let conf = tokio::time::timeout(Duration::from_secs(15), publish(3).await).await;
    assert!(conf
        .expect("confirmed after the ISR recovered")
        .unwrap()
        .is_ack());
    let _ = c.close(200, "bye".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_that_lost_its_disk_copies_everything_again() {
    let mut cl = blocking(|| Cluster::start(&[]));
    let c = connect_any(&[cl.node("n1").uri()], 10).await;
    let ch = confirm_channel(&c).await;
    ch.queue_declare(
        "q".into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    for id in 0..300 {
        let _confirm = ch
            .basic_publish(
                "".into(),
                "q".into(),
                BasicPublishOptions::default(),
                &[7u8; 1024],
                persistent(id),
            )
            .await
            .unwrap();
    }
    ch.wait_for_confirms().await.unwrap();
    let _ = c.close(200, "bye".into()).await;

    // n3's disk is gone while it is down; it comes back empty.
    let n3_dir = cl.node("n3").dir.clone();
    blocking(|| {
        cl.node("n3").kill9();
        std::fs::remove_dir_all(&n3_dir).unwrap();
        let api = cl.node("n1").api();
        assert!(
            wait_for(10, || !in_sync(&api, "n3")),
            "n3 still in sync after dying"
        );
        cl.node("n3").launch();
        assert!(
            wait_for(30, || in_sync(&api, "n3")),
            "n3 did not copy and rejoin: {:?}",
            nodes(&api)
        );
        // Now only n3 is left: it leads with everything.
        cl.node("n1").kill9();
        cl.node("n2").kill9();
        let n3 = cl.node("n3").api();
        assert!(
            wait_for(20, || leader_name(&n3).as_deref() == Some("n3")),
            "n3 did not take over:\n{}",
            cl.node("n3").output()
        );
    });
    let c = connect_any(&[cl.node("n3").uri()], 10).await;
    let ch = c.create_channel().await.unwrap();
    let got = drain(&ch, "q").await;
    assert_eq!(got.len(), 300);
    assert!(got.values().all(|(n, _)| *n == 1));
}

#[test]
fn an_unreachable_etcd_stops_the_node_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut n = Node::unstarted(
        &format!("http://127.0.0.1:{port}"),
        "lonely",
        &dir.path().join("d"),
    );
    n.spawn_raw();
    let st = n
        .wait_exit(Duration::from_secs(20))
        .expect("the node exited");
    assert!(!st.success());
    let out = n.output();
    assert!(
        out.contains("cannot reach etcd at http://127.0.0.1:"),
        "{out}"
    );
}

#[test]
fn a_taken_node_name_is_refused_and_strangers_get_nothing() {
    let cl = Cluster::start(&[]);
    // lepusctl, through a follower's API (relayed to the leader).
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lepusctl"))
        .args(["--url", &cl.nodes[1].api(), "cluster_status"])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{table} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        &rows[0][..6],
        ["name", "role", "running", "isr", "lag_bytes", "lag_ms"]
    );
    assert_eq!(&rows[1][..4], ["n1", "leader", "true", "true"], "{table}");
    for (row, name) in rows[2..].iter().zip(["n2", "n3"]) {
        assert_eq!(&row[..4], [name, "follower", "true", "true"], "{table}");
    }
    // Same name as a live node.
    let dir = tempfile::tempdir().unwrap();
    let mut dup = Node::unstarted(&cl.etcd.url, "n2", &dir.path().join("dup"));
    dup.spawn_raw();
    let st = dup
        .wait_exit(Duration::from_secs(20))
        .expect("the duplicate exited");
    assert!(!st.success());
    assert!(
        dup.output().contains("node name \"n2\" is already taken"),
        "{}",
        dup.output()
    );

    // A stranger on the replication port: a wrong MAC gets a refusal and
    // nothing of the data.
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(&cl.nodes[0].repl).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut hello = [0u8; 37];
    s.read_exact(&mut hello).unwrap();
    assert_eq!(&hello[..4], b"LEPR");
    let mut answer = b"LEPR\x01".to_vec();
    answer.extend_from_slice(&[0, 2]);
    answer.extend_from_slice(b"n9");
    answer.extend_from_slice(&[0u8; 32]);
    s.write_all(&answer).unwrap();
    let mut rest = vec![];
    let _ = s.read_to_end(&mut rest);
    assert_eq!(rest[0], 1, "refused");
    assert!(String::from_utf8_lossy(&rest).contains("wrong cluster secret"));
    assert!(rest.len() < 64, "a stranger got {} bytes", rest.len());
    assert!(wait_for(5, || cl.nodes[0].logged("does not know the cluster secret")));

    // A node with another secret never copies anything.
    let dir2 = tempfile::tempdir().unwrap();
    let wrong = Node::start(
        &cl.etcd.url,
        "n4",
        &dir2.path().join("n4"),
        &[("LEPUS_CLUSTER_SECRET", "not the secret")],
    );
    assert!(
        wait_for(10, || wrong.logged("refused us")),
        "{}",
        wrong.output()
    );
    assert!(
        !wrong.dir.join("msgs").exists()
            || std::fs::read_dir(wrong.dir.join("msgs"))
                .unwrap()
                .next()
                .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_min_insync_two_one_frozen_follower_blocks_publishers_until_it_catches_up() {
    let mut cl = blocking(|| Cluster::start(&[("LEPUS_CLUSTER_MIN_INSYNC", "2")]));
    let api = cl.node("n1").api();
    let c = connect_any(&[cl.node("n2").uri()], 10).await;
    let ch = confirm_channel(&c).await;
    ch.queue_declare(
        "q".into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    assert!(send(&ch, 0).await.await.unwrap().is_ack());
    cl.node("n3").signal("STOP");
    let pc = send(&ch, 1).await;
    assert!(
        common::eventually(15, || c.status().blocked()).await,
        "publisher was not blocked with 1 of 2 required followers in sync"
    );
    let nodes_now = blocking(|| nodes(&api)).unwrap();
    assert!(
        nodes_now
            .iter()
            .any(|n| n["name"] == "n3" && n["isr"] == false),
        "{nodes_now:?}"
    );
    let early = tokio::time::timeout(Duration::from_millis(500), pc).await;
    assert!(early.is_err(), "confirmed on too few disks: {early:?}");
    cl.node("n3").signal("CONT");
    assert!(
        common::eventually(30, || !c.status().blocked()).await,
        "publisher not unblocked after n3 caught up"
    );
    assert!(
        tokio::time::timeout(Duration::from_secs(15), send(&ch, 2).await)
            .await
            .expect("confirmed once n3 is back in sync")
            .unwrap()
            .is_ack()
    );
    let _ = c.close(200, "bye".into()).await;
}
