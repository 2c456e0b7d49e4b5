//! Message TTL, queue expiry (x-expires) and dead-lettering over a real
//! socket with lapin, asserting what a RabbitMQ 3.10 client sees: when a
//! message expires, what the dead-lettered copy looks like (x-death and the
//! x-first-death-* / x-last-death-* headers), how it is routed, and when a
//! dead-letter cycle is cut.

mod common;
use common::*;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, ExchangeKind};
use std::time::{Duration, Instant};

fn expiring(ms: &str) -> BasicProperties {
    BasicProperties::default().with_expiration(ms.into())
}

/// The next delivery within `ms`, or a failure naming what was expected.
async fn delivery_within(
    consumer: &mut lapin::Consumer,
    ms: u64,
    what: &str,
) -> lapin::message::Delivery {
    use futures_lite::StreamExt;
    match tokio::time::timeout(Duration::from_millis(ms), consumer.next()).await {
        Ok(Some(Ok(d))) => d,
        Ok(Some(Err(e))) => panic!("{what}: delivery error {e}"),
        Ok(None) => panic!("{what}: consumer ended"),
        Err(_) => panic!("{what}: nothing delivered within {ms} ms"),
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// One x-death entry, with every field checked for RabbitMQ's type.
#[derive(Debug)]
struct Death {
    count: i64,
    reason: String,
    queue: String,
    exchange: String,
    routing_keys: Vec<String>,
    time: u64,
    original_expiration: Option<String>,
    /// All field names, sorted.
    fields: Vec<String>,
}

fn longstr_field(t: &FieldTable, key: &str) -> String {
    match t.inner().get(key) {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        other => panic!("x-death field {key} must be a longstr, got {other:?}"),
    }
}

fn death(t: &FieldTable) -> Death {
    let count = match t.inner().get("count") {
        Some(AMQPValue::LongLongInt(n)) => *n,
        other => panic!("x-death count must be a long, got {other:?}"),
    };
    let time = match t.inner().get("time") {
        Some(AMQPValue::Timestamp(s)) => *s,
        other => panic!("x-death time must be a timestamp, got {other:?}"),
    };
    let routing_keys = match t.inner().get("routing-keys") {
        Some(AMQPValue::FieldArray(a)) => a
            .as_slice()
            .iter()
            .map(|v| match v {
                AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
                other => panic!("x-death routing-keys must hold longstrs, got {other:?}"),
            })
            .collect(),
        other => panic!("x-death routing-keys must be an array, got {other:?}"),
    };
    let original_expiration = match t.inner().get("original-expiration") {
        None => None,
        Some(AMQPValue::LongString(s)) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        Some(other) => panic!("x-death original-expiration must be a longstr, got {other:?}"),
    };
    Death {
        count,
        reason: longstr_field(t, "reason"),
        queue: longstr_field(t, "queue"),
        exchange: longstr_field(t, "exchange"),
        routing_keys,
        time,
        original_expiration,
        fields: t.inner().keys().map(|k| k.as_str().to_owned()).collect(),
    }
}

fn deaths(p: &BasicProperties) -> Vec<Death> {
    x_deaths(p).iter().map(death).collect()
}

const DEATH_FIELDS: &[&str] = &[
    "count",
    "exchange",
    "queue",
    "reason",
    "routing-keys",
    "time",
];
const DEATH_FIELDS_WITH_EXPIRATION: &[&str] = &[
    "count",
    "exchange",
    "original-expiration",
    "queue",
    "reason",
    "routing-keys",
    "time",
];

/// The x-first-death-* and x-last-death-* headers: (reason, queue, exchange).
fn first_death(p: &BasicProperties) -> (Option<String>, Option<String>, Option<String>) {
    let h = headers_of(p);
    (
        field_str(&h, "x-first-death-reason"),
        field_str(&h, "x-first-death-queue"),
        field_str(&h, "x-first-death-exchange"),
    )
}

fn last_death(p: &BasicProperties) -> (Option<String>, Option<String>, Option<String>) {
    let h = headers_of(p);
    (
        field_str(&h, "x-last-death-reason"),
        field_str(&h, "x-last-death-queue"),
        field_str(&h, "x-last-death-exchange"),
    )
}

fn some3(a: &str, b: &str, c: &str) -> (Option<String>, Option<String>, Option<String>) {
    (Some(a.into()), Some(b.into()), Some(c.into()))
}

// ----- message TTL -----

#[tokio::test]
async fn queue_ttl_and_message_expiration_the_shorter_wins() {
    let b = TestBroker::start().await;
    let (_c, ch) = confirm_channel(&b).await;
    declare_queue(&ch, "wins-dlq").await;
    declare_queue_with(
        &ch,
        "queue-ttl-shorter",
        plain(),
        dead_letter_to("wins-dlq", &[("x-message-ttl", int(100))]),
    )
    .await;
    declare_queue_with(
        &ch,
        "message-ttl-shorter",
        plain(),
        dead_letter_to("wins-dlq", &[("x-message-ttl", int(60_000))]),
    )
    .await;
    let (_c2, dch) = b.channel().await;
    let mut dead = consume(&dch, "wins-dlq", "dead").await;

    // Queue TTL 100 ms, message expiration 60 s: gone after 100 ms.
    let t0 = Instant::now();
    publish_confirmed_within(5, &ch, "", "queue-ttl-shorter", b"q", expiring("60000")).await;
    let d = delivery_within(&mut dead, 10_000, "queue TTL 100 beats expiration 60000").await;
    let el = t0.elapsed();
    assert_eq!(text(&d), "q");
    assert!(
        el >= Duration::from_millis(95),
        "expired after {el:?}, before the queue TTL of 100 ms"
    );
    let x = deaths(&d.properties);
    assert_eq!(x.len(), 1, "{x:?}");
    assert_eq!(x[0].reason, "expired");
    assert_eq!(x[0].queue, "queue-ttl-shorter");
    assert_eq!(
        x[0].original_expiration.as_deref(),
        Some("60000"),
        "the message had an expiration: kept as original-expiration"
    );
    assert_eq!(
        d.properties.expiration(),
        &None,
        "the dead-lettered copy has no expiration"
    );

    // Queue TTL 60 s, message expiration 100 ms: gone after 100 ms.
    let t0 = Instant::now();
    publish_confirmed_within(5, &ch, "", "message-ttl-shorter", b"m", expiring("100")).await;
    let d = delivery_within(&mut dead, 10_000, "expiration 100 beats queue TTL 60000").await;
    let el = t0.elapsed();
    assert_eq!(text(&d), "m");
    assert!(
        el >= Duration::from_millis(95),
        "expired after {el:?}, before its expiration of 100 ms"
    );
    let x = deaths(&d.properties);
    assert_eq!(x[0].reason, "expired");
    assert_eq!(x[0].queue, "message-ttl-shorter");
    assert_eq!(x[0].original_expiration.as_deref(), Some("100"));
    assert_eq!(d.properties.expiration(), &None);
    b.stop().await;
}

#[tokio::test]
async fn an_expired_message_is_never_delivered() {
    let b = TestBroker::start().await;
    let (_c, ch) = confirm_channel(&b).await;
    declare_queue_with(
        &ch,
        "qttl",
        plain(),
        arg_table(&[("x-message-ttl", int(100))]),
    )
    .await;
    declare_queue(&ch, "mttl").await;
    for i in 0..3 {
        publish_confirmed_within(
            5,
            &ch,
            "",
            "qttl",
            format!("q{i}").as_bytes(),
            BasicProperties::default(),
        )
        .await;
    }
    publish_confirmed_within(5, &ch, "", "mttl", b"short", expiring("100")).await;
    publish_confirmed_within(5, &ch, "", "mttl", b"keep", expiring("60000")).await;
    // Wait until the broker has expired them (looking in, not taking any).
    let ready = |q: &str| b.queue("/", q).unwrap().message_count();
    eventually(10, || ready("qttl") == 0 && ready("mttl") == 1).await;

    assert!(
        get_one(&ch, "qttl").await.is_none(),
        "basic.get after the queue TTL must be empty"
    );
    assert_eq!(queue_counts(&ch, "qttl").await, (0, 0));
    let got = drain(&ch, "mttl").await;
    assert_eq!(got, vec!["keep".to_string()], "only the unexpired message");

    // A consumer arriving late gets nothing either.
    publish_confirmed_within(5, &ch, "", "mttl", b"late", expiring("50")).await;
    eventually(10, || ready("mttl") == 0).await;
    let (_c2, cch) = b.channel().await;
    let mut cons = consume(&cch, "mttl", "late").await;
    assert!(
        silent_for(&mut cons, 200).await,
        "an expired message was delivered"
    );
    b.stop().await;
}

#[tokio::test]
async fn ttl_zero_delivers_only_to_a_consumer_that_can_take_it_now() {
    let b = TestBroker::start().await;
    let (_c, ch) = confirm_channel(&b).await;
    declare_queue(&ch, "zero-dlq").await;
    declare_queue_with(
        &ch,
        "zero",
        plain(),
        dead_letter_to("zero-dlq", &[("x-message-ttl", int(0))]),
    )
    .await;

    // A waiting consumer: delivered.
    let (_c2, cch) = b.channel().await;
    let mut cons = consume(&cch, "zero", "waiting").await;
    publish_confirmed_within(5, &ch, "", "zero", b"live", BasicProperties::default()).await;
    let d = delivery_within(
        &mut cons,
        10_000,
        "TTL 0 with a waiting consumer is delivered",
    )
    .await;
    assert_eq!(text(&d), "live");
    assert!(
        headers_of(&d.properties).inner().get("x-death").is_none(),
        "delivered as is"
    );
    d.ack(BasicAckOptions::default()).await.unwrap();
    assert_eq!(
        queue_counts(&ch, "zero-dlq").await.0,
        0,
        "not dead-lettered"
    );

    // No consumer: dead-lettered at once.
    cch.basic_cancel("waiting".into(), BasicCancelOptions::default())
        .await
        .unwrap();
    publish_confirmed_within(5, &ch, "", "zero", b"nobody", BasicProperties::default()).await;
    let m = wait_get(&ch, "zero-dlq", 10)
        .await
        .expect("TTL 0 without a consumer: dead-lettered at once");
    assert_eq!(m.delivery.data, b"nobody");
    let x = deaths(&m.delivery.properties);
    assert_eq!(
        (x[0].reason.as_str(), x[0].queue.as_str()),
        ("expired", "zero")
    );
    assert_eq!(
        x[0].original_expiration, None,
        "queue TTL only: no original-expiration"
    );
    assert_eq!(queue_counts(&ch, "zero").await.0, 0);

    // Per-message expiration "0" without a consumer: dropped at once.
    declare_queue(&ch, "zero-msg").await;
    publish_confirmed_within(5, &ch, "", "zero-msg", b"x", expiring("0")).await;
    assert!(get_one(&ch, "zero-msg").await.is_none());
    b.stop().await;
}

/// Lepus expires each message at its own deadline, wherever it sits in the
/// queue (RabbitMQ only expires from the head, so there the short one would
/// wait for the long one).
#[tokio::test]
async fn a_message_expires_at_its_own_time_behind_a_longer_ttl() {
    let b = TestBroker::start().await;
    let (_c, ch) = confirm_channel(&b).await;
    declare_queue(&ch, "behind-dlq").await;
    declare_queue_with(&ch, "behind", plain(), dead_letter_to("behind-dlq", &[])).await;
    let (_c2, dch) = b.channel().await;
    let mut dead = consume(&dch, "behind-dlq", "dead").await;

    publish_confirmed_within(5, &ch, "", "behind", b"long", expiring("30000")).await;
    let t0 = Instant::now();
    publish_confirmed_within(5, &ch, "", "behind", b"short", expiring("100")).await;
    let d = delivery_within(&mut dead, 10_000, "the 100 ms message behind a 30 s one").await;
    let el = t0.elapsed();
    assert_eq!(text(&d), "short");
    assert!(
        el >= Duration::from_millis(95) && el < Duration::from_millis(10_000),
        "dead-lettered after {el:?}; expected at about 100 ms, not behind the 30 s one"
    );
    assert_eq!(deaths(&d.properties)[0].reason, "expired");
    assert_eq!(queue_counts(&ch, "behind").await.0, 1, "the long one stays");
    assert_eq!(drain(&ch, "behind").await, vec!["long".to_string()]);
    b.stop().await;
}

#[tokio::test]
async fn a_requeued_message_keeps_its_original_expiry() {
    let b = TestBroker::start().await;
    let (_c, ch) = confirm_channel(&b).await;
    declare_queue(&ch, "rq-dlq").await;
    declare_queue_with(
        &ch,
        "rq",
        plain(),
        dead_letter_to("rq-dlq", &[("x-message-ttl", int(4000))]),
    )
    .await;
    let (_c2, dch) = b.channel().await;
    let mut dead = consume(&dch, "rq-dlq", "dead").await;

    let t0 = Instant::now();
    publish_confirmed_within(5, &ch, "", "rq", b"m", BasicProperties::default()).await;
    let (tag, body, redelivered) = get_one(&ch, "rq").await.expect("the message");
    assert_eq!((body.as_str(), redelivered), ("m", false));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    ch.basic_reject(tag, BasicRejectOptions { requeue: true })
        .await
        .unwrap();
    let (tag, body, redelivered) = get_one(&ch, "rq")
        .await
        .expect("requeued before its deadline");
    assert_eq!((body.as_str(), redelivered), ("m", true));
    ch.basic_reject(tag, BasicRejectOptions { requeue: true })
        .await
        .unwrap();

    let d = delivery_within(&mut dead, 10_000, "the requeued message expires").await;
    let el = t0.elapsed();
    assert_eq!(text(&d), "m");
    assert!(
        el >= Duration::from_millis(3990) && el < Duration::from_millis(5500),
        "expired {el:?} after the publish; the TTL of 4000 ms counts from the publish, not from the requeue (that would be over 6500 ms)"
    );
    assert_eq!(deaths(&d.properties)[0].reason, "expired");
    b.stop().await;
}

/// A message whose deadline passed while it was unacked is expired (here:
/// dead-lettered) when it is requeued, not delivered again.
#[tokio::test]
async fn a_message_requeued_after_its_deadline_is_expired_not_redelivered() {
    let b = TestBroker::start().await;
    let (_c, ch) = confirm_channel(&b).await;
    declare_queue(&ch, "late-dlq").await;
    declare_queue_with(
        &ch,
        "late",
        plain(),
        dead_letter_to("late-dlq", &[("x-message-ttl", int(1500))]),
    )
    .await;
    publish_confirmed_within(5, &ch, "", "late", b"m", BasicProperties::default()).await;
    let (tag, _, _) = get_one(&ch, "late").await.expect("the message");
    tokio::time::sleep(Duration::from_millis(2000)).await;
    ch.basic_reject(tag, BasicRejectOptions { requeue: true })
        .await
        .unwrap();
    let m = wait_get(&ch, "late-dlq", 10).await;
    let again = get_one(&ch, "late").await;
    assert!(
        again.is_none(),
        "a message requeued after its TTL must not be delivered again: got {again:?}"
    );
    let m = m.expect("dead-lettered as expired on requeue");
    let x = deaths(&m.delivery.properties);
    assert_eq!(
        (x[0].reason.as_str(), x[0].queue.as_str()),
        ("expired", "late")
    );
    b.stop().await;
}

#[tokio::test]
async fn a_non_integer_expiration_closes_the_channel_with_406() {
    let b = TestBroker::start().await;
    let c = b.connect().await;
    let mut closes = watch_closes(&c);
    let ch = c.create_channel().await.unwrap();
    declare_queue(&ch, "badexp").await;
    publish_with(&ch, "", "badexp", b"x", expiring("abc")).await;
    let (code, text) = closes.next_close().await;
    assert_eq!(code, 406);
    // rabbit_basic:parse_expiration/1 returns {error, no_integer};
    // rabbit_channel formats the reason with ~p.
    assert_eq!(
        text,
        "PRECONDITION_FAILED - invalid expiration 'abc': no_integer"
    );
    assert!(
        c.status().connected(),
        "a channel error, not a connection error"
    );
    let ch = c.create_channel().await.unwrap();
    assert!(get_one(&ch, "badexp").await.is_none(), "not queued");
    b.stop().await;
}

#[tokio::test]
async fn a_negative_expiration_closes_the_channel_with_406() {
    let b = TestBroker::start().await;
    let c = b.connect().await;
    let mut closes = watch_closes(&c);
    let ch = c.create_channel().await.unwrap();
    declare_queue(&ch, "negexp").await;
    publish_with(&ch, "", "negexp", b"x", expiring("-1")).await;
    let (code, text) = closes.next_close().await;
    assert_eq!(code, 406);
    assert_eq!(
        text,
        "PRECONDITION_FAILED - invalid expiration '-1': {value_negative,-1}"
    );
    assert!(c.status().connected());
    let ch = c.create_channel().await.unwrap();
    assert!(get_one(&ch, "negexp").await.is_none(), "not queued");
    b.stop().await;
}

/// Over ten years is too large, as RabbitMQ 3.10.8 answers (checked live);
/// ten years exactly is accepted.
#[tokio::test]
async fn an_expiration_over_ten_years_closes_the_channel_with_406() {
    let b = TestBroker::start().await;
    let c = b.connect().await;
    let mut closes = watch_closes(&c);
    let ch = c.create_channel().await.unwrap();
    declare_queue(&ch, "longexp").await;
    publish_with(&ch, "", "longexp", b"ok", expiring("315360000000")).await;
    for e in ["315360000001", "99999999999999999999"] {
        let ch = c.create_channel().await.unwrap();
        publish_with(&ch, "", "longexp", b"x", expiring(e)).await;
        let (code, text) = closes.next_close().await;
        assert_eq!(
            (code, text),
            (
                406,
                format!("PRECONDITION_FAILED - invalid expiration '{e}': {{value_too_large,{e}}}")
            )
        );
    }
    let ch = c.create_channel().await.unwrap();
    assert_eq!(drain(&ch, "longexp").await, vec!["ok".to_string()]);
    b.stop().await;
}

// ----- queue expiry (x-expires) -----

/// Whether the queue exists, looked up in the broker: unlike a passive
/// declare this does not count as use, so it does not renew an x-expires lease.
fn exists(b: &TestBroker, name: &str) -> bool {
    b.has_queue("/", name)
}

/// Wait (generously: the expiry timer may run late on a loaded machine) for
/// the queue to be deleted.
async fn expires(b: &TestBroker, name: &str) -> bool {
    eventually(10, || !exists(b, name)).await
}

// Leases are 3 s and checks come 1.8 s after a renewal: a late check cannot
// see a correctly renewed queue gone, and each check comes over 3 s after the
// previous use, so a renewal that did not happen shows (the queue is gone).

#[tokio::test]
async fn an_unused_queue_is_deleted_after_x_expires() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    declare_queue_with(&ch, "exp1", plain(), arg_table(&[("x-expires", int(3000))])).await;
    assert!(exists(&b, "exp1"), "still there before 3 s");
    assert!(expires(&b, "exp1").await, "deleted once unused for 3 s");
    assert_eq!(passive_declare_code(&b, "exp1").await, Some(404));
    b.stop().await;
}

#[tokio::test]
async fn a_queue_with_a_consumer_does_not_expire() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    declare_queue_with(&ch, "exp2", plain(), arg_table(&[("x-expires", int(1000))])).await;
    let (_c2, cch) = b.channel().await;
    let _cons = consume(&cch, "exp2", "keeper").await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(exists(&b, "exp2"), "a queue with a consumer is in use");
    assert_eq!(queue_counts(&ch, "exp2").await, (0, 1));
    cch.basic_cancel("keeper".into(), BasicCancelOptions::default())
        .await
        .unwrap();
    assert!(
        expires(&b, "exp2").await,
        "unused for 1 s after the cancel: deleted"
    );
    b.stop().await;
}

#[tokio::test]
async fn redeclaring_a_queue_renews_its_x_expires_lease() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let a = || arg_table(&[("x-expires", int(3000))]);
    declare_queue_with(&ch, "exp3", plain(), a()).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    declare_queue_with(&ch, "exp3", plain(), a()).await;
    tokio::time::sleep(Duration::from_millis(1800)).await;
    assert!(
        exists(&b, "exp3"),
        "over 3.3 s after the first declare but 1.8 s after the redeclare: still there"
    );
    assert!(expires(&b, "exp3").await);
    b.stop().await;
}

/// RabbitMQ: queue.declare passive (rabbit_amqqueue:stat) and basic.get both
/// restart the expiry timer of an unused queue (ensure_expiry_timer).
#[tokio::test]
async fn passive_declare_renews_the_x_expires_lease() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    declare_queue_with(&ch, "exp4", plain(), arg_table(&[("x-expires", int(3000))])).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    ch.queue_declare("exp4".into(), passive(), FieldTable::default())
        .await
        .expect("passive declare");
    tokio::time::sleep(Duration::from_millis(1800)).await;
    assert!(
        exists(&b, "exp4"),
        "over 3.3 s after the declare but 1.8 s after a passive declare: still there"
    );
    assert!(expires(&b, "exp4").await);
    b.stop().await;
}

#[tokio::test]
async fn basic_get_renews_the_x_expires_lease() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    declare_queue_with(&ch, "exp5", plain(), arg_table(&[("x-expires", int(3000))])).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(get_one(&ch, "exp5").await.is_none());
    tokio::time::sleep(Duration::from_millis(1800)).await;
    assert!(
        exists(&b, "exp5"),
        "over 3.3 s after the declare but 1.8 s after a basic.get: still there"
    );
    assert!(expires(&b, "exp5").await);
    b.stop().await;
}

// ----- dead-lettering -----

#[tokio::test]
async fn a_rejected_message_is_dead_lettered_with_rabbitmqs_x_death() {
    let b = TestBroker::start().await;
    let (_c, ch) = confirm_channel(&b).await;
    declare_exchange_with(
        &ch,
        "src",
        ExchangeKind::Direct,
        Default::default(),
        FieldTable::default(),
    )
    .await;
    declare_exchange_with(
        &ch,
        "dlx",
        ExchangeKind::Direct,
        Default::default(),
        FieldTable::default(),
    )
    .await;
    declare_queue_with(
        &ch,
        "work",
        plain(),
        arg_table(&[("x-dead-letter-exchange", lstr("dlx"))]),
    )
    .await;
    bind_queue(&ch, "work", "src", "rk1").await;
    declare_queue(&ch, "dead").await;
    bind_queue(&ch, "dead", "dlx", "rk1").await;

    let props = BasicProperties::default()
        .with_message_id("m1".into())
        .with_content_type("text/plain".into())
        .with_priority(3)
        .with_headers(table(&[("app", "kept")]));
    publish_confirmed_within(5, &ch, "src", "rk1", b"body", props).await;
    let (tag, _, _) = get_one(&ch, "work").await.expect("in work");
    ch.basic_reject(tag, BasicRejectOptions { requeue: false })
        .await
        .unwrap();

    let before = now_secs();
    let m = wait_get(&ch, "dead", 10).await.expect("dead-lettered");
    assert_eq!(m.delivery.data, b"body");
    assert_eq!(
        m.delivery.exchange.as_str(),
        "dlx",
        "delivered from the DLX"
    );
    assert_eq!(
        m.delivery.routing_key.as_str(),
        "rk1",
        "no x-dead-letter-routing-key: the original routing key"
    );
    let p = &m.delivery.properties;
    assert_eq!(p.message_id().as_ref().map(|s| s.as_str()), Some("m1"));
    assert_eq!(
        p.content_type().as_ref().map(|s| s.as_str()),
        Some("text/plain")
    );
    assert_eq!(p.priority(), &Some(3));
    let h = headers_of(p);
    assert_eq!(field_str(&h, "app").as_deref(), Some("kept"));
    let x = deaths(p);
    assert_eq!(x.len(), 1, "{x:?}");
    let d = &x[0];
    assert_eq!(
        d.fields,
        strs(DEATH_FIELDS),
        "no original-expiration without an expiration"
    );
    assert_eq!(d.count, 1);
    assert_eq!(d.reason, "rejected");
    assert_eq!(d.queue, "work");
    assert_eq!(d.exchange, "src");
    assert_eq!(d.routing_keys, strs(&["rk1"]));
    assert!(
        d.time + 10 >= before && d.time <= now_secs() + 10,
        "time is the death time in seconds: {} vs now {before}",
        d.time
    );
    assert_eq!(first_death(p), some3("rejected", "work", "src"));
    assert_eq!(last_death(p), some3("rejected", "work", "src"));

    // basic.nack with requeue=false is a rejection too.
    publish_confirmed_within(5, &ch, "src", "rk1", b"nacked", BasicProperties::default()).await;
    let (tag, _, _) = get_one(&ch, "work").await.expect("in work");
    ch.basic_nack(
        tag,
        BasicNackOptions {
            multiple: false,
            requeue: false,
        },
    )
    .await
    .unwrap();
    let m = wait_get(&ch, "dead", 10).await.expect("dead-lettered");
    assert_eq!(m.delivery.data, b"nacked");
    let x = deaths(&m.delivery.properties);
    assert_eq!((x[0].reason.as_str(), x[0].count), ("rejected", 1));
    assert_eq!(queue_counts(&ch, "work").await.0, 0);
    b.stop().await;
}

#[tokio::test]
async fn an_expired_message_keeps_its_expiration_only_in_x_death() {
    let b = TestBroker::start().await;
    let (_c, ch) = confirm_channel(&b).await;
    declare_queue(&ch, "exp-dlq").await;
    declare_queue_with(&ch, "per-msg", plain(), dead_letter_to("exp-dlq", &[])).await;
    declare_queue_with(
        &ch,
        "per-queue",
        plain(),
        dead_letter_to("exp-dlq", &[("x-message-ttl", int(50))]),
    )
    .await;
    publish_confirmed_within(5, &ch, "", "per-msg", b"a", expiring("50")).await;
    let m = wait_get(&ch, "exp-dlq", 10).await.expect("expired a");
    let p = &m.delivery.properties;
    assert_eq!(p.expiration(), &None, "the copy has no expiration property");
    assert_eq!(
        m.delivery.routing_key.as_str(),
        "exp-dlq",
        "routed with the x-dead-letter-routing-key"
    );
    let x = deaths(p);
    assert_eq!(x[0].fields, strs(DEATH_FIELDS_WITH_EXPIRATION));
    assert_eq!(x[0].original_expiration.as_deref(), Some("50"));
    assert_eq!(x[0].reason, "expired");
    assert_eq!(x[0].queue, "per-msg");
    assert_eq!(x[0].exchange, "");
    assert_eq!(x[0].routing_keys, strs(&["per-msg"]));
    assert_eq!(first_death(p), some3("expired", "per-msg", ""));

    publish_confirmed_within(5, &ch, "", "per-queue", b"b", BasicProperties::default()).await;
    let m = wait_get(&ch, "exp-dlq", 10).await.expect("expired b");
    let x = deaths(&m.delivery.properties);
    assert_eq!(
        x[0].fields,
        strs(DEATH_FIELDS),
        "queue TTL only: no original-expiration"
    );
    assert_eq!(
        (x[0].reason.as_str(), x[0].queue.as_str()),
        ("expired", "per-queue")
    );
    b.stop().await;
}

#[tokio::test]
async fn x_dead_letter_routing_key_replaces_the_routing_keys_and_drops_cc() {
    let b = TestBroker::start().await;
    let (_c, ch) = confirm_channel(&b).await;
    declare_exchange_with(
        &ch,
        "dlx",
        ExchangeKind::Direct,
        Default::default(),
        FieldTable::default(),
    )
    .await;
    declare_queue_with(
        &ch,
        "src-q",
        plain(),
        arg_table(&[
            ("x-dead-letter-exchange", lstr("dlx")),
            ("x-dead-letter-routing-key", lstr("moved")),
        ]),
    )
    .await;
    for (q, k) in [
        ("by-moved", "moved"),
        ("by-orig", "src-q"),
        ("by-cc", "cc1"),
    ] {
        declare_queue(&ch, q).await;
        bind_queue(&ch, q, "dlx", k).await;
    }
    let mut h = FieldTable::default();
    h.insert("CC".into(), str_array(&["cc1"]));
    publish_confirmed_within(
        5,
        &ch,
        "",
        "src-q",
        b"m",
        BasicProperties::default().with_headers(h),
    )
    .await;
    let (tag, _, _) = get_one(&ch, "src-q").await.expect("in src-q");
    ch.basic_reject(tag, BasicRejectOptions { requeue: false })
        .await
        .unwrap();
    let m = wait_get(&ch, "by-moved", 10)
        .await
        .expect("routed by 'moved'");
    assert_eq!(m.delivery.routing_key.as_str(), "moved");
    let p = &m.delivery.properties;
    assert!(
        !headers_of(p).contains_key("CC"),
        "with x-dead-letter-routing-key the CC header is removed"
    );
    let x = deaths(p);
    assert_eq!(
        x[0].routing_keys,
        strs(&["src-q", "cc1"]),
        "x-death keeps the original keys"
    );
    assert!(
        drain(&ch, "by-orig").await.is_empty(),
        "not routed by the original key"
    );
    assert!(
        drain(&ch, "by-cc").await.is_empty(),
        "not routed by the CC key"
    );
    b.stop().await;
}

#[tokio::test]
async fn cc_keys_are_in_x_death_routing_keys_and_route_the_dead_letter() {
    let b = TestBroker::start().await;
    let (_c, ch) = confirm_channel(&b).await;
    declare_exchange_with(
        &ch,
        "src",
        ExchangeKind::Direct,
        Default::default(),
        FieldTable::default(),
    )
    .await;
    declare_exchange_with(
        &ch,
        "dlx",
        ExchangeKind::Direct,
        Default::default(),
        FieldTable::default(),
    )
    .await;
    declare_queue_with(
        &ch,
        "work",
        plain(),
        arg_table(&[("x-dead-letter-exchange", lstr("dlx"))]),
    )
    .await;
    bind_queue(&ch, "work", "src", "a").await;
    for (q, k) in [("dead-a", "a"), ("dead-b", "b")] {
        declare_queue(&ch, q).await;
        bind_queue(&ch, q, "dlx", k).await;
    }
    let mut h = FieldTable::default();
    h.insert("CC".into(), str_array(&["b"]));
    publish_confirmed_within(
        5,
        &ch,
        "src",
        "a",
        b"m",
        BasicProperties::default().with_headers(h),
    )
    .await;
    let (tag, _, _) = get_one(&ch, "work").await.expect("in work");
    ch.basic_reject(tag, BasicRejectOptions { requeue: false })
        .await
        .unwrap();
    for q in ["dead-a", "dead-b"] {
        let m = wait_get(&ch, q, 10).await.unwrap_or_else(|| {
            panic!("the dead letter is routed by the original key and the CC key: {q}")
        });
        assert_eq!(m.delivery.routing_key.as_str(), "a", "{q}");
        let p = &m.delivery.properties;
        assert!(
            headers_of(p).contains_key("CC"),
            "CC kept without a dead-letter routing key"
        );
        let x = deaths(p);
        assert_eq!(x[0].routing_keys, strs(&["a", "b"]), "{q}");
        assert_eq!(x[0].exchange, "src");
    }
    assert!(drain(&ch, "dead-a").await.is_empty(), "once per queue");
    b.stop().await;
}

#[tokio::test]
async fn bcc_is_stripped_from_delivered_and_dead_lettered_messages() {
    let b = TestBroker::start().await;
    let (_c, ch) = confirm_channel(&b).await;
    declare_exchange_with(
        &ch,
        "src",
        ExchangeKind::Direct,
        Default::default(),
        FieldTable::default(),
    )
    .await;
    declare_exchange_with(
        &ch,
        "dlx",
        ExchangeKind::Direct,
        Default::default(),
        FieldTable::default(),
    )
    .await;
    declare_queue_with(
        &ch,
        "work",
        plain(),
        arg_table(&[("x-dead-letter-exchange", lstr("dlx"))]),
    )
    .await;
    bind_queue(&ch, "work", "src", "a").await;
    declare_queue(&ch, "dead-a").await;
    bind_queue(&ch, "dead-a", "dlx", "a").await;
    let mut h = FieldTable::default();
    h.insert("BCC".into(), str_array(&["hidden"]));
    h.insert("other".into(), lstr("kept"));
    publish_confirmed_within(
        5,
        &ch,
        "src",
        "a",
        b"m",
        BasicProperties::default().with_headers(h),
    )
    .await;
    let m = get_message(&ch, "work").await.expect("in work");
    let wh = headers_of(&m.delivery.properties);
    assert!(!wh.contains_key("BCC"), "BCC removed before delivery");
    assert_eq!(field_str(&wh, "other").as_deref(), Some("kept"));
    ch.basic_reject(
        m.delivery.delivery_tag,
        BasicRejectOptions { requeue: false },
    )
    .await
    .unwrap();
    let m = wait_get(&ch, "dead-a", 10).await.expect("dead-lettered");
    let p = &m.delivery.properties;
    assert!(!headers_of(p).contains_key("BCC"));
    assert_eq!(
        deaths(p)[0].routing_keys,
        strs(&["a"]),
        "BCC keys are not listed in x-death"
    );
    b.stop().await;
}

#[tokio::test]
async fn x_death_counts_repeat_deaths_and_a_cycle_with_a_reject_goes_on() {
    let b = TestBroker::start().await;
    let (_c, ch) = confirm_channel(&b).await;
    declare_exchange_with(
        &ch,
        "dlx2",
        ExchangeKind::Direct,
        Default::default(),
        FieldTable::default(),
    )
    .await;
    declare_queue_with(
        &ch,
        "cyc-a",
        plain(),
        arg_table(&[
            ("x-dead-letter-exchange", lstr("dlx2")),
            ("x-dead-letter-routing-key", lstr("to-b")),
        ]),
    )
    .await;
    declare_queue_with(
        &ch,
        "cyc-b",
        plain(),
        arg_table(&[
            ("x-message-ttl", int(50)),
            ("x-dead-letter-exchange", lstr("dlx2")),
            ("x-dead-letter-routing-key", lstr("to-a")),
        ]),
    )
    .await;
    bind_queue(&ch, "cyc-a", "dlx2", "to-a").await;
    bind_queue(&ch, "cyc-b", "dlx2", "to-b").await;
    publish_confirmed_within(5, &ch, "", "cyc-a", b"m", BasicProperties::default()).await;

    // Round 1: rejected in A, expired in B, back in A.
    let (tag, _, _) = get_one(&ch, "cyc-a").await.expect("in A");
    ch.basic_reject(tag, BasicRejectOptions { requeue: false })
        .await
        .unwrap();
    let m = wait_get(&ch, "cyc-a", 10)
        .await
        .expect("back in A after B's TTL");
    let p = &m.delivery.properties;
    let x = deaths(p);
    assert_eq!(x.len(), 2, "{x:?}");
    assert_eq!(
        (x[0].queue.as_str(), x[0].reason.as_str(), x[0].count),
        ("cyc-b", "expired", 1)
    );
    assert_eq!(x[0].exchange, "dlx2");
    assert_eq!(x[0].routing_keys, strs(&["to-b"]));
    assert_eq!(
        (x[1].queue.as_str(), x[1].reason.as_str(), x[1].count),
        ("cyc-a", "rejected", 1)
    );
    assert_eq!(x[1].exchange, "");
    assert_eq!(x[1].routing_keys, strs(&["cyc-a"]));
    assert_eq!(first_death(p), some3("rejected", "cyc-a", ""));
    assert_eq!(last_death(p), some3("expired", "cyc-b", "dlx2"));
    assert_eq!(m.delivery.routing_key.as_str(), "to-a");

    // Round 2: (cyc-a, rejected) again: count 2, moved to the front, its
    // other fields as first recorded.
    let first_a_time = x[1].time;
    ch.basic_reject(
        m.delivery.delivery_tag,
        BasicRejectOptions { requeue: false },
    )
    .await
    .unwrap();
    let m = wait_get(&ch, "cyc-a", 10).await.expect("back in A again");
    let p = &m.delivery.properties;
    let x = deaths(p);
    assert_eq!(x.len(), 2, "one entry per (queue, reason): {x:?}");
    assert_eq!(
        (x[0].queue.as_str(), x[0].reason.as_str(), x[0].count),
        ("cyc-b", "expired", 2),
        "the latest death first"
    );
    assert_eq!(
        (x[1].queue.as_str(), x[1].reason.as_str(), x[1].count),
        ("cyc-a", "rejected", 2)
    );
    assert_eq!(x[1].exchange, "", "the entry keeps its first exchange");
    assert_eq!(x[1].routing_keys, strs(&["cyc-a"]));
    assert_eq!(x[1].time, first_a_time);
    assert_eq!(first_death(p), some3("rejected", "cyc-a", ""));
    assert_eq!(last_death(p), some3("expired", "cyc-b", "dlx2"));

    // Round 3: both counts go on.
    ch.basic_reject(
        m.delivery.delivery_tag,
        BasicRejectOptions { requeue: false },
    )
    .await
    .unwrap();
    let m = wait_get(&ch, "cyc-a", 10).await.expect("third round");
    let x = deaths(&m.delivery.properties);
    assert_eq!((x[0].count, x[1].count), (3, 3), "counts keep going: {x:?}");
    ch.basic_ack(m.delivery.delivery_tag, BasicAckOptions::default())
        .await
        .unwrap();
    b.stop().await;
}

/// Moving to the front on a repeat, seen directly: two queues that
/// dead-letter into each other, the message rejected in ping, pong, ping.
#[tokio::test]
async fn a_repeated_death_moves_its_entry_to_the_front() {
    let b = TestBroker::start().await;
    let (_c, ch) = confirm_channel(&b).await;
    declare_queue_with(&ch, "ping", plain(), dead_letter_to("pong", &[])).await;
    declare_queue_with(&ch, "pong", plain(), dead_letter_to("ping", &[])).await;
    publish_confirmed_within(5, &ch, "", "ping", b"m", BasicProperties::default()).await;
    // ping rejects -> pong; pong rejects -> ping; ping rejects -> pong.
    for q in ["ping", "pong", "ping"] {
        let m = wait_get(&ch, q, 10)
            .await
            .unwrap_or_else(|| panic!("in {q}"));
        ch.basic_reject(
            m.delivery.delivery_tag,
            BasicRejectOptions { requeue: false },
        )
        .await
        .unwrap();
    }
    let m = wait_get(&ch, "pong", 10).await.expect("in pong");
    let p = &m.delivery.properties;
    let x = deaths(p);
    assert_eq!(x.len(), 2, "{x:?}");
    assert_eq!(
        (x[0].queue.as_str(), x[0].reason.as_str(), x[0].count),
        ("ping", "rejected", 2),
        "the repeated (queue, reason) moved to the front with count 2"
    );
    assert_eq!(
        (x[1].queue.as_str(), x[1].reason.as_str(), x[1].count),
        ("pong", "rejected", 1)
    );
    assert_eq!(first_death(p), some3("rejected", "ping", ""));
    assert_eq!(last_death(p), some3("rejected", "ping", ""));
    b.stop().await;
}

/// A -> B -> A with TTLs and no rejection: RabbitMQ drops the message when
/// it would re-enter A. A watching queue bound to the DLX sees each hop.
#[tokio::test]
async fn an_automatic_dead_letter_cycle_is_dropped_after_one_round_trip() {
    let b = TestBroker::start().await;
    let (_c, ch) = confirm_channel(&b).await;
    declare_exchange_with(
        &ch,
        "cyc",
        ExchangeKind::Direct,
        Default::default(),
        FieldTable::default(),
    )
    .await;
    declare_queue_with(
        &ch,
        "ta",
        plain(),
        arg_table(&[
            ("x-message-ttl", int(50)),
            ("x-dead-letter-exchange", lstr("cyc")),
            ("x-dead-letter-routing-key", lstr("to-b")),
        ]),
    )
    .await;
    declare_queue_with(
        &ch,
        "tb",
        plain(),
        arg_table(&[
            ("x-message-ttl", int(50)),
            ("x-dead-letter-exchange", lstr("cyc")),
            ("x-dead-letter-routing-key", lstr("to-a")),
        ]),
    )
    .await;
    bind_queue(&ch, "ta", "cyc", "to-a").await;
    bind_queue(&ch, "tb", "cyc", "to-b").await;
    declare_queue(&ch, "watch").await;
    bind_queue(&ch, "watch", "cyc", "to-a").await;
    bind_queue(&ch, "watch", "cyc", "to-b").await;

    publish_confirmed_within(5, &ch, "", "ta", b"m", BasicProperties::default()).await;
    let count = |q: &str| b.queue("/", q).unwrap().message_count();
    assert!(
        eventually(10, || count("watch") == 2
            && count("ta") == 0
            && count("tb") == 0)
        .await,
        "two hops seen, nothing left in A or B"
    );
    assert_eq!(queue_counts(&ch, "ta").await.0, 0, "not back in A");
    assert_eq!(queue_counts(&ch, "tb").await.0, 0);
    let mut hops = vec![];
    while let Some(m) = get_message(&ch, "watch").await {
        hops.push(m);
    }
    let keys: Vec<&str> = hops
        .iter()
        .map(|m| m.delivery.routing_key.as_str())
        .collect();
    assert_eq!(
        keys,
        vec!["to-b", "to-a"],
        "A->B once, then B->A (dropped for A, still routed to the watcher), then nothing"
    );
    let x = deaths(&hops[1].delivery.properties);
    assert_eq!(
        x.iter()
            .map(|d| (d.queue.as_str(), d.reason.as_str()))
            .collect::<Vec<_>>(),
        vec![("tb", "expired"), ("ta", "expired")]
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(queue_counts(&ch, "watch").await.0, 0, "no more hops");
    b.stop().await;
}

#[tokio::test]
async fn a_missing_dead_letter_exchange_just_drops() {
    let b = TestBroker::start().await;
    let (c, ch) = confirm_channel(&b).await;
    declare_queue_with(
        &ch,
        "orphan",
        plain(),
        arg_table(&[("x-dead-letter-exchange", lstr("no-such-exchange"))]),
    )
    .await;
    publish_confirmed_within(5, &ch, "", "orphan", b"m", BasicProperties::default()).await;
    let (tag, _, _) = get_one(&ch, "orphan").await.expect("in orphan");
    ch.basic_reject(tag, BasicRejectOptions { requeue: false })
        .await
        .unwrap();
    // And an expiring one.
    publish_confirmed_within(5, &ch, "", "orphan", b"e", expiring("20")).await;
    let q = b.queue("/", "orphan").unwrap();
    assert!(eventually(10, || q.message_count() == 0).await, "expired");
    assert_eq!(queue_counts(&ch, "orphan").await, (0, 0));
    assert!(c.status().connected());
    assert!(ch.status().connected(), "no error for the client");
    b.stop().await;
}
