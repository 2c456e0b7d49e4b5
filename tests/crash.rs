//! kill -9 the real broker binary at random moments during confirmed
//! publishing and consuming; after each restart check that no confirmed
//! message was lost, no acked message came back, and redelivered flags tell
//! the truth.

mod common;
use common::*;
use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::BasicProperties;
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

/// Start the real binary on a free port; returns the child and its address.
fn spawn_broker(dir: &std::path::Path) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_lepus"))
        .args(["--port", "0", "--bind", "127.0.0.1", "--data-dir"])
        .arg(dir)
        .env("LEPUS_LOG", "info")
        .env("LEPUS_MGMT_PORT", "0")
        .env("LEPUS_DISK_FREE_LIMIT", "0")
        .env("LEPUS_MEMORY_HIGH_WATERMARK", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn lepus");
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if !sent {
                if let Some(i) = line.find("listen=") {
                    let addr = line[i + 7..].split_whitespace().next().unwrap().to_string();
                    let _ = tx.send(addr);
                    sent = true;
                }
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("broker did not report its address");
    (child, addr)
}

#[derive(Default)]
struct State {
    next_id: u32,
    confirmed: HashSet<u32>,
    /// Acked, and a later round trip on the channel proves the ack was processed.
    acked_sure: HashSet<u32>,
    /// Acked, not yet proven processed.
    acked_maybe: HashSet<u32>,
    /// Ever delivered to us.
    delivered: HashSet<u32>,
    violations: Vec<String>,
}

async fn publisher(uri: String, st: Arc<Mutex<State>>) {
    let Ok(Ok(c)) = tokio::time::timeout(
        Duration::from_secs(5),
        lapin::Connection::connect(&uri, Default::default()),
    )
    .await
    else {
        return;
    };
    let Ok(ch) = c.create_channel().await else {
        return;
    };
    if ch
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .is_err()
    {
        return;
    }
    loop {
        let ids: Vec<u32> = {
            let mut s = st.lock();
            let start = s.next_id;
            s.next_id += 20;
            (start..start + 20).collect()
        };
        let mut confirms = vec![];
        for id in &ids {
            let props = BasicProperties::default().with_delivery_mode(2);
            match ch
                .basic_publish(
                    "".into(),
                    "crash".into(),
                    BasicPublishOptions::default(),
                    &id.to_be_bytes(),
                    props,
                )
                .await
            {
                Ok(c) => confirms.push((*id, c)),
                Err(_) => return,
            }
        }
        for (id, c) in confirms {
            match tokio::time::timeout(Duration::from_secs(5), c).await {
                Ok(Ok(conf)) if conf.is_ack() => {
                    st.lock().confirmed.insert(id);
                }
                _ => return,
            }
        }
    }
}

async fn consumer(uri: String, st: Arc<Mutex<State>>) {
    let Ok(Ok(c)) = tokio::time::timeout(
        Duration::from_secs(5),
        lapin::Connection::connect(&uri, Default::default()),
    )
    .await
    else {
        return;
    };
    let Ok(ch) = c.create_channel().await else {
        return;
    };
    if ch.basic_qos(50, BasicQosOptions::default()).await.is_err() {
        return;
    }
    let Ok(mut cons) = ch
        .basic_consume(
            "crash".into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
    else {
        return;
    };
    let mut pending = vec![];
    while let Ok(Some(Ok(d))) = tokio::time::timeout(Duration::from_secs(5), cons.next()).await {
        let id = u32::from_be_bytes(d.data[..4].try_into().unwrap());
        {
            let mut s = st.lock();
            if s.acked_sure.contains(&id) {
                s.violations.push(format!("acked message {id} came back"));
            }
            if s.delivered.contains(&id) && !d.redelivered {
                s.violations.push(format!(
                    "message {id} delivered before came back with redelivered=false"
                ));
            }
            s.delivered.insert(id);
        }
        if d.ack(BasicAckOptions::default()).await.is_err() {
            return;
        }
        st.lock().acked_maybe.insert(id);
        pending.push(id);
        if pending.len() >= 10 {
            // basic.qos is synchronous: its -ok proves the acks before it were processed.
            if ch.basic_qos(50, BasicQosOptions::default()).await.is_err() {
                return;
            }
            let mut s = st.lock();
            for id in pending.drain(..) {
                s.acked_maybe.remove(&id);
                s.acked_sure.insert(id);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_confirmed_message() {
    let dir = tempfile::tempdir().unwrap();
    let st = Arc::new(Mutex::new(State::default()));
    let cycles = 20;
    for cycle in 0..cycles {
        let (mut child, addr) = spawn_broker(dir.path());
        let uri = format!("amqp://guest:guest@{addr}/%2f");
        {
            let c = connect(&uri).await;
            let ch = c.create_channel().await.unwrap();
            ch.queue_declare("crash".into(), durable(), FieldTable::default())
                .await
                .unwrap();
            let _ = c.close(200, "bye".into()).await;
        }
        let p = tokio::spawn(publisher(uri.clone(), st.clone()));
        let c = tokio::spawn(consumer(uri.clone(), st.clone()));
        let ms = 150 + (rand::random::<u64>() % 350);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        child.kill().expect("kill -9");
        let _ = child.wait();
        let _ = tokio::time::timeout(Duration::from_secs(10), p).await;
        let _ = tokio::time::timeout(Duration::from_secs(10), c).await;
        let s = st.lock();
        assert!(s.violations.is_empty(), "cycle {cycle}: {:?}", s.violations);
    }
    // Final: everything confirmed and never acked must be there, exactly once.
    let (mut child, addr) = spawn_broker(dir.path());
    let c = connect(&format!("amqp://guest:guest@{addr}/%2f")).await;
    let ch = c.create_channel().await.unwrap();
    let mut counts: HashMap<u32, u32> = HashMap::new();
    while let Some(m) = within(
        10,
        ch.basic_get("crash".into(), BasicGetOptions { no_ack: true }),
    )
    .await
    .unwrap()
    {
        let id = u32::from_be_bytes(m.delivery.data[..4].try_into().unwrap());
        *counts.entry(id).or_default() += 1;
    }
    child.kill().unwrap();
    let _ = child.wait();
    let s = st.lock();
    let dups: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dups.is_empty(), "duplicated in the queue: {dups:?}");
    let back: Vec<_> = counts
        .keys()
        .filter(|id| s.acked_sure.contains(id))
        .collect();
    assert!(back.is_empty(), "acked messages came back: {back:?}");
    let lost: Vec<_> = s
        .confirmed
        .iter()
        .filter(|id| {
            !counts.contains_key(id) && !s.acked_sure.contains(id) && !s.acked_maybe.contains(id)
        })
        .collect();
    assert!(
        lost.is_empty(),
        "{} confirmed messages lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    assert!(
        s.confirmed.len() > 1000,
        "the test exercised too little: {} confirmed",
        s.confirmed.len()
    );
    eprintln!(
        "{cycles} kill cycles: {} confirmed, {} acked, {} left in the queue",
        s.confirmed.len(),
        s.acked_sure.len() + s.acked_maybe.len(),
        counts.len()
    );
}
