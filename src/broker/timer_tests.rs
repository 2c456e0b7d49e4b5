//! Timer behaviour on tokio's paused time: a TTL of a minute and a delay of
//! an hour run in milliseconds, because broker time ([`crate::clock`]) and
//! the timer tasks follow tokio's clock. The real broker, store and publish
//! pipeline; no sockets.

use super::exchange::Dest;
use super::publish::{publish, Origin, Outcome, Parsed, Publish, Scratch};
use super::queue::Queue;
use super::Broker;
use crate::config::Config;
use crate::store::io::RealIo;
use amq_protocol::protocol::BasicProperties;
use amq_protocol::types::{AMQPValue, FieldTable, LongString};
use std::sync::Arc;
use std::time::Duration;

fn open(dir: &std::path::Path) -> Arc<Broker> {
    let config = Config {
        data_dir: dir.to_path_buf(),
        ..Default::default()
    };
    Broker::open(config, Arc::new(RealIo)).expect("broker opens")
}

fn table(pairs: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in pairs {
        t.insert((*k).into(), v.clone());
    }
    t
}

fn ls(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

fn queue(b: &Broker, name: &str, args: FieldTable) -> Arc<Queue> {
    let vh = b.vhost("/").unwrap();
    b.declare_queue(&vh, name, false, false, false, false, args, 0)
        .unwrap()
}

/// Publish `body` with `props` to `exchange` through the one pipeline.
fn send(b: &Broker, exchange: &str, rk: &str, props: BasicProperties, body: &[u8]) -> Outcome {
    let vh = b.vhost("/").unwrap();
    let ex = vh.exchange(exchange).unwrap();
    let header = super::publish::content_header(body.len(), &props);
    let p = Parsed::of(&header);
    let msg = Publish {
        exchange: &ex,
        routing_key: rk,
        header: &header,
        body,
        headers: p.headers.as_ref(),
        persistent: p.persistent,
        priority: p.priority,
        expiration: p.expiration,
        mandatory: false,
    };
    publish(&vh, &b.store, &msg, Origin::Client, &mut Scratch::default())
}

/// Let the timer tasks that are due run (paused time: no real waiting).
async fn settle() {
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_minute_of_ttl_dead_letters_on_the_minute() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path());
    let dlq = queue(&b, "dlq", FieldTable::default());
    let src = queue(
        &b,
        "src",
        table(&[
            ("x-message-ttl", AMQPValue::LongInt(60_000)),
            ("x-dead-letter-exchange", ls("")),
            ("x-dead-letter-routing-key", ls("dlq")),
        ]),
    );
    src.start_timers();
    assert!(matches!(
        send(&b, "", "src", BasicProperties::default(), b"m"),
        Outcome::Routed { .. }
    ));
    tokio::time::advance(Duration::from_secs(59)).await;
    settle().await;
    assert_eq!((src.message_count(), dlq.message_count()), (1, 0));
    tokio::time::advance(Duration::from_secs(2)).await;
    settle().await;
    assert_eq!((src.message_count(), dlq.message_count()), (0, 1));
    b.shutdown();
}

#[tokio::test(start_paused = true)]
async fn an_hour_of_x_delay_releases_on_the_hour() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path());
    let vh = b.vhost("/").unwrap();
    let ex = b
        .declare_exchange(
            &vh,
            "later",
            "x-delayed-message",
            false,
            false,
            false,
            false,
            table(&[("x-delayed-type", ls("direct"))]),
        )
        .unwrap();
    let q = queue(&b, "q", FieldTable::default());
    b.bind(&vh, &ex, Dest::Queue(q.clone()), "k", FieldTable::default())
        .unwrap();
    let props = BasicProperties::default()
        .with_headers(table(&[("x-delay", AMQPValue::LongLongInt(3_600_000))]));
    assert!(matches!(
        send(&b, "later", "k", props, b"m"),
        Outcome::Scheduled {
            routed_now: true,
            ..
        }
    ));
    tokio::time::advance(Duration::from_secs(3599)).await;
    settle().await;
    assert_eq!(q.message_count(), 0);
    tokio::time::advance(Duration::from_secs(2)).await;
    settle().await;
    assert_eq!(q.message_count(), 1);
    b.shutdown();
}

#[tokio::test(start_paused = true)]
async fn an_unused_queue_expires_after_its_x_expires() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path());
    let q = queue(
        &b,
        "lease",
        table(&[("x-expires", AMQPValue::LongInt(600_000))]),
    );
    q.start_timers();
    tokio::time::advance(Duration::from_secs(599)).await;
    settle().await;
    assert!(b.vhost("/").unwrap().queue("lease").is_some());
    tokio::time::advance(Duration::from_secs(2)).await;
    settle().await;
    assert!(b.vhost("/").unwrap().queue("lease").is_none());
    b.shutdown();
}
