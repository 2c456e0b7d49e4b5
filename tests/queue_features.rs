//! Message deduplication (LavinMQ's arguments), validation of queue
//! arguments with RabbitMQ 3.10's error texts, and queue features of durable
//! queues across a restart, over a real socket with lapin.

mod common;
use common::*;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, ExchangeKind};
use std::time::{Duration, Instant};

fn with_id(id: &str) -> BasicProperties {
    BasicProperties::default().with_message_id(id.into())
}

/// Publish each (body, properties) with confirms; whether each was acked.
async fn publish_each(
    ch: &lapin::Channel,
    exchange: &str,
    key: &str,
    msgs: Vec<(&str, BasicProperties)>,
) -> Vec<bool> {
    let mut acks = vec![];
    for (body, props) in msgs {
        acks.push(
            publish_confirmed_within(5, ch, exchange, key, body.as_bytes(), props)
                .await
                .is_ack(),
        );
    }
    acks
}

fn dedup_args(more: &[(&str, AMQPValue)]) -> FieldTable {
    let mut pairs: Vec<(&str, AMQPValue)> =
        vec![("x-message-deduplication", AMQPValue::Boolean(true))];
    pairs.extend(more.iter().cloned());
    arg_table(&pairs)
}

// ----- deduplication -----

#[tokio::test]
async fn a_dedup_queue_drops_duplicate_message_ids_but_confirms_them() {
    let b = TestBroker::start().await;
    let (_c, ch) = confirm_channel(&b).await;
    declare_queue_with(&ch, "dd", plain(), dedup_args(&[("x-cache-size", int(10))])).await;
    let acks = publish_each(
        &ch,
        "",
        "dd",
        vec![
            ("1", with_id("a")),
            ("2", with_id("a")),
            ("3", with_id("b")),
            ("4", with_id("a")),
            ("5", BasicProperties::default()),
            ("6", BasicProperties::default()),
        ],
    )
    .await;
    assert_eq!(
        acks,
        vec![true; 6],
        "duplicates are confirmed (acked), not nacked"
    );
    assert_eq!(
        drain(&ch, "dd").await,
        strs(&["1", "3", "5", "6"]),
        "messages without an id are never duplicates"
    );
    b.stop().await;
}

#[tokio::test]
async fn the_dedup_cache_forgets_after_x_cache_ttl() {
    let b = TestBroker::start().await;
    let (_c, ch) = confirm_channel(&b).await;
    declare_queue_with(
        &ch,
        "ddt",
        plain(),
        dedup_args(&[("x-cache-ttl", int(2000))]),
    )
    .await;
    publish_each(
        &ch,
        "",
        "ddt",
        vec![("1", with_id("a")), ("2", with_id("a"))],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    publish_each(
        &ch,
        "",
        "ddt",
        vec![("3", with_id("a")), ("4", with_id("a"))],
    )
    .await;
    assert_eq!(drain(&ch, "ddt").await, strs(&["1", "3"]));
    b.stop().await;
}

#[tokio::test]
async fn the_dedup_cache_holds_x_cache_size_ids() {
    let b = TestBroker::start().await;
    let (_c, ch) = confirm_channel(&b).await;
    declare_queue_with(&ch, "dds", plain(), dedup_args(&[("x-cache-size", int(2))])).await;
    publish_each(
        &ch,
        "",
        "dds",
        vec![
            ("1", with_id("a")),
            ("2", with_id("b")),
            ("3", with_id("b")),
            ("4", with_id("c")),
            ("5", with_id("a")),
            ("6", with_id("c")),
        ],
    )
    .await;
    assert_eq!(
        drain(&ch, "dds").await,
        strs(&["1", "2", "4", "5"]),
        "'a' fell out of a cache of 2 when 'c' came"
    );
    b.stop().await;
}

#[tokio::test]
async fn x_deduplication_header_names_the_key() {
    let b = TestBroker::start().await;
    let (_c, ch) = confirm_channel(&b).await;
    declare_queue_with(
        &ch,
        "ddh",
        plain(),
        dedup_args(&[("x-deduplication-header", lstr("x-key"))]),
    )
    .await;
    let keyed = |id: &str, key: &str| with_id(id).with_headers(table(&[("x-key", key)]));
    publish_each(
        &ch,
        "",
        "ddh",
        vec![
            ("1", keyed("same-id", "k1")),
            ("2", keyed("same-id", "k2")),
            ("3", keyed("other-id", "k1")),
            ("4", with_id("same-id")),
        ],
    )
    .await;
    assert_eq!(
        drain(&ch, "ddh").await,
        strs(&["1", "2", "4"]),
        "the header decides, not the message-id; no header: the message-id (a lepus extension)"
    );
    b.stop().await;
}

#[tokio::test]
async fn a_dedup_exchange_does_not_route_duplicates() {
    let b = TestBroker::start().await;
    let (_c, ch) = confirm_channel(&b).await;
    declare_exchange_with(
        &ch,
        "dx",
        ExchangeKind::Fanout,
        Default::default(),
        dedup_args(&[("x-cache-size", int(100))]),
    )
    .await;
    for q in ["dx1", "dx2"] {
        declare_queue(&ch, q).await;
        bind_queue(&ch, q, "dx", "").await;
    }
    let acks = publish_each(
        &ch,
        "dx",
        "",
        vec![
            ("1", with_id("a")),
            ("2", with_id("a")),
            ("3", with_id("b")),
        ],
    )
    .await;
    assert_eq!(acks, vec![true; 3]);
    for q in ["dx1", "dx2"] {
        assert_eq!(drain(&ch, q).await, strs(&["1", "3"]), "{q}");
    }
    b.stop().await;
}

#[tokio::test]
async fn dedup_state_of_durable_queues_and_exchanges_survives_a_restart() {
    let mut b = TestBroker::start().await;
    let persistent = |id: &str| with_id(id).with_delivery_mode(2);
    {
        let (_c, ch) = confirm_channel(&b).await;
        declare_queue_with(&ch, "ddq", durable(), dedup_args(&[])).await;
        declare_exchange_with(
            &ch,
            "ddx",
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            dedup_args(&[]),
        )
        .await;
        declare_queue_with(&ch, "ddxq", durable(), FieldTable::default()).await;
        bind_queue(&ch, "ddxq", "ddx", "").await;
        publish_each(&ch, "", "ddq", vec![("1", persistent("a"))]).await;
        let keyed = persistent("h-id").with_headers(arg_table(&[
            ("x-deduplication-header", lstr("hk")),
            ("x-cache-ttl", int(600_000)),
        ]));
        publish_each(&ch, "", "ddq", vec![("h1", keyed)]).await;
        publish_each(&ch, "ddx", "", vec![("x1", persistent("a"))]).await;
    }
    b.restart().await;
    let (_c, ch) = confirm_channel(&b).await;
    let acks = publish_each(
        &ch,
        "",
        "ddq",
        vec![("2", persistent("a")), ("3", persistent("b"))],
    )
    .await;
    assert_eq!(acks, vec![true, true]);
    let keyed = persistent("h-id-2").with_headers(table(&[("x-deduplication-header", "hk")]));
    publish_each(&ch, "", "ddq", vec![("h2", keyed)]).await;
    assert_eq!(
        drain(&ch, "ddq").await,
        strs(&["1", "h1", "3"]),
        "'a' and the header key 'hk' are still known after the restart"
    );
    publish_each(&ch, "ddx", "", vec![("x2", persistent("a"))]).await;
    assert_eq!(drain(&ch, "ddxq").await, strs(&["x1"]));
    b.stop().await;
}

/// LavinMQ's and the RabbitMQ plugin's default: the key is the message's
/// `x-deduplication-header` header, on queues and on exchanges; the
/// message-id is only a fallback (a lepus extension) when it is absent.
#[tokio::test]
async fn the_x_deduplication_header_header_is_the_default_key() {
    let b = TestBroker::start().await;
    let (_c, ch) = confirm_channel(&b).await;
    let keyed =
        |id: &str, key: &str| with_id(id).with_headers(table(&[("x-deduplication-header", key)]));
    declare_queue_with(&ch, "ddk", plain(), dedup_args(&[])).await;
    declare_exchange_with(
        &ch,
        "ddkx",
        ExchangeKind::Fanout,
        Default::default(),
        dedup_args(&[]),
    )
    .await;
    declare_queue(&ch, "ddkxq").await;
    bind_queue(&ch, "ddkxq", "ddkx", "").await;
    for (exchange, key, queue) in [("", "ddk", "ddk"), ("ddkx", "", "ddkxq")] {
        let acks = publish_each(
            &ch,
            exchange,
            key,
            vec![
                ("1", keyed("id-1", "k1")),
                ("2", keyed("id-2", "k1")), // same header, other id: duplicate
                ("3", keyed("id-1", "k2")), // same id, other header: new
                (
                    "4",
                    BasicProperties::default()
                        .with_headers(table(&[("x-deduplication-header", "k2")])),
                ),
                ("5", with_id("id-5")), // no header: keyed by message-id
                ("6", with_id("id-5")),
                ("7", BasicProperties::default()), // neither: never a duplicate
                ("8", BasicProperties::default()),
            ],
        )
        .await;
        assert_eq!(acks, vec![true; 8], "duplicates are confirmed");
        assert_eq!(
            drain(&ch, queue).await,
            strs(&["1", "3", "5", "7", "8"]),
            "{queue}"
        );
    }
    b.stop().await;
}

/// A message's own `x-cache-ttl` header (ms) bounds how long its key is
/// remembered, whatever the cache's TTL (none here: forever).
#[tokio::test]
async fn a_message_x_cache_ttl_header_overrides_the_cache_ttl() {
    let b = TestBroker::start().await;
    let (_c, ch) = confirm_channel(&b).await;
    declare_queue_with(&ch, "ddm", plain(), dedup_args(&[])).await;
    let short = BasicProperties::default().with_headers(arg_table(&[
        ("x-deduplication-header", lstr("short")),
        ("x-cache-ttl", int(300)),
    ]));
    let forever =
        BasicProperties::default().with_headers(table(&[("x-deduplication-header", "forever")]));
    let start = Instant::now();
    publish_each(
        &ch,
        "",
        "ddm",
        vec![("s1", short.clone()), ("f1", forever.clone())],
    )
    .await;
    // Publish the short-lived key again until it is accepted: after its
    // 300 ms, not before.
    let mut accepted_after = None;
    while start.elapsed() < Duration::from_secs(10) {
        publish_each(&ch, "", "ddm", vec![("s2", short.clone())]).await;
        if drain(&ch, "ddm").await.contains(&"s2".to_string()) {
            accepted_after = Some(start.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = accepted_after.expect("the short-lived key was never forgotten");
    assert!(
        after >= Duration::from_millis(300),
        "forgotten after {after:?}"
    );
    publish_each(&ch, "", "ddm", vec![("f2", forever)]).await;
    assert!(
        drain(&ch, "ddm").await.is_empty(),
        "the key without a TTL is still remembered"
    );
    b.stop().await;
}

// ----- validation of queue arguments -----

/// Declare `name` with `args` on a fresh channel and return the channel
/// error (code, text); the connection must stay open.
async fn declare_error(b: &TestBroker, name: &str, args: FieldTable) -> (u16, String) {
    let c = b.connect().await;
    let ch = c.create_channel().await.unwrap();
    let e = match within(5, ch.queue_declare(name.into(), plain(), args)).await {
        Ok(_) => panic!("declare of {name} was accepted"),
        Err(e) => e,
    };
    assert!(
        c.status().connected(),
        "a channel error, not a connection error"
    );
    (
        reply_code(&e).unwrap_or_else(|| panic!("no reply code: {e}")),
        reply_text(&e),
    )
}

#[tokio::test]
async fn a_negative_x_message_ttl_is_406_value_negative() {
    let b = TestBroker::start().await;
    let got = declare_error(&b, "q", arg_table(&[("x-message-ttl", int(-1))])).await;
    assert_eq!(
        got,
        (
            406,
            "PRECONDITION_FAILED - invalid arg 'x-message-ttl' for queue 'q' in vhost '/': {value_negative,-1}"
                .to_string()
        )
    );
    assert!(queue_missing(&b, "q").await, "nothing was declared");
    b.stop().await;
}

#[tokio::test]
async fn x_expires_zero_is_406_value_zero() {
    let b = TestBroker::start().await;
    let got = declare_error(&b, "q", arg_table(&[("x-expires", int(0))])).await;
    assert_eq!(
        got,
        (
            406,
            "PRECONDITION_FAILED - invalid arg 'x-expires' for queue 'q' in vhost '/': {value_zero,0}"
                .to_string()
        )
    );
    b.stop().await;
}

/// Argument errors in RabbitMQ 3.10.8's words (each one compared with a
/// live RabbitMQ through pika).
#[tokio::test]
async fn argument_errors_have_rabbitmqs_texts() {
    let b = TestBroker::start().await;
    let cases: Vec<(&str, FieldTable, &str)> = vec![
        ("q1", arg_table(&[("x-max-length", lstr("abc"))]), "invalid arg 'x-max-length' for queue 'q1' in vhost '/': \"expected integer, got longstr\""),
        ("q2", arg_table(&[("x-expires", AMQPValue::Boolean(true))]), "invalid arg 'x-expires' for queue 'q2' in vhost '/': \"expected integer, got bool\""),
        ("q3", arg_table(&[("x-message-ttl", AMQPValue::LongLongInt(315_360_000_001))]), "invalid arg 'x-message-ttl' for queue 'q3' in vhost '/': {value_too_large,315360000001}"),
        ("q4", arg_table(&[("x-expires", AMQPValue::LongLongInt(315_360_000_001))]), "invalid arg 'x-expires' for queue 'q4' in vhost '/': {value_too_large,315360000001}"),
        ("q5", arg_table(&[("x-queue-mode", lstr("bogus"))]), "invalid arg 'x-queue-mode' for queue 'q5' in vhost '/': \"unsupported queue mode 'bogus'\""),
        ("q6", arg_table(&[("x-dead-letter-exchange", int(5))]), "invalid type 'signedint' for arg 'x-dead-letter-exchange' in queue 'q6' in vhost '/'"),
        ("q7", arg_table(&[("x-dead-letter-exchange", lstr("x")), ("x-dead-letter-routing-key", int(5))]), "invalid arg 'x-dead-letter-routing-key' for queue 'q7' in vhost '/': {unacceptable_type,signedint}"),
        ("q8", arg_table(&[("x-single-active-consumer", lstr("true"))]), "invalid arg 'x-single-active-consumer' for queue 'q8' in vhost '/': {unacceptable_type,longstr}"),
    ];
    for (name, args, text) in cases {
        assert_eq!(
            declare_error(&b, name, args).await,
            (406, format!("PRECONDITION_FAILED - {text}")),
            "{name}"
        );
    }
    // The longest accepted: ten years.
    let (_c, ch) = b.channel().await;
    declare_queue_with(
        &ch,
        "ten-years",
        plain(),
        arg_table(&[
            ("x-message-ttl", AMQPValue::LongLongInt(315_360_000_000)),
            ("x-expires", AMQPValue::LongLongInt(315_360_000_000)),
        ]),
    )
    .await;
    // A consumer's x-priority must be an integer.
    let (_c2, ch2) = b.channel().await;
    let e = ch2
        .basic_consume(
            "ten-years".into(),
            "c".into(),
            BasicConsumeOptions::default(),
            arg_table(&[("x-priority", AMQPValue::Boolean(true))]),
        )
        .await
        .unwrap_err();
    assert_eq!(
        (reply_code(&e), reply_text(&e)),
        (
            Some(406),
            "PRECONDITION_FAILED - invalid arg 'x-priority' for queue 'ten-years' in vhost '/': \"expected integer, got bool\""
                .to_string()
        )
    );
    b.stop().await;
}

/// rabbit_amqqueue:check_overflow/2 answers {error, invalid_overflow}.
#[tokio::test]
async fn an_unknown_x_overflow_is_406_invalid_overflow() {
    let b = TestBroker::start().await;
    let got = declare_error(&b, "q", arg_table(&[("x-overflow", lstr("foo"))])).await;
    assert_eq!(
        got,
        (
            406,
            "PRECONDITION_FAILED - invalid arg 'x-overflow' for queue 'q' in vhost '/': invalid_overflow"
                .to_string()
        )
    );
    b.stop().await;
}

/// rabbit_amqqueue:check_max_priority_arg/2 answers
/// {error, {max_value_exceeded, Val}} above 255.
#[tokio::test]
async fn x_max_priority_above_255_is_406_max_value_exceeded() {
    let b = TestBroker::start().await;
    let got = declare_error(&b, "q", arg_table(&[("x-max-priority", int(300))])).await;
    assert_eq!(
        got,
        (
            406,
            "PRECONDITION_FAILED - invalid arg 'x-max-priority' for queue 'q' in vhost '/': {max_value_exceeded,300}"
                .to_string()
        )
    );
    b.stop().await;
}

/// rabbit_amqqueue:check_dlxrk_arg/2 answers
/// {error, routing_key_but_no_dlx_defined}.
#[tokio::test]
async fn a_dead_letter_routing_key_without_exchange_is_406() {
    let b = TestBroker::start().await;
    let got = declare_error(
        &b,
        "q",
        arg_table(&[("x-dead-letter-routing-key", lstr("k"))]),
    )
    .await;
    assert_eq!(
        got,
        (
            406,
            "PRECONDITION_FAILED - invalid arg 'x-dead-letter-routing-key' for queue 'q' in vhost '/': routing_key_but_no_dlx_defined"
                .to_string()
        )
    );
    b.stop().await;
}

/// rabbit_misc:assert_args_equivalence1/4: two typed values of the same type
/// class that differ are shown bare ("received '200' but current is '100'");
/// a missing side is "none" against "the value '100' of type 'signedint'".
#[tokio::test]
async fn an_inequivalent_x_message_ttl_redeclare_is_406() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    declare_queue_with(&ch, "q", plain(), arg_table(&[("x-message-ttl", int(100))])).await;
    let got = declare_error(&b, "q", arg_table(&[("x-message-ttl", int(200))])).await;
    assert_eq!(
        got,
        (
            406,
            "PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue 'q' in vhost '/': received '200' but current is '100'"
                .to_string()
        )
    );
    let got = declare_error(&b, "q", FieldTable::default()).await;
    assert_eq!(
        got,
        (
            406,
            "PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue 'q' in vhost '/': received none but current is the value '100' of type 'signedint'"
                .to_string()
        )
    );
    // The same number as another integer type is equivalent.
    declare_queue_with(
        &ch,
        "q",
        plain(),
        arg_table(&[("x-message-ttl", AMQPValue::LongLongInt(100))]),
    )
    .await;
    b.stop().await;
}

// ----- durability -----

#[tokio::test]
async fn a_durable_queue_with_ttl_dlx_and_max_length_keeps_working_across_a_restart() {
    let mut b = TestBroker::start().await;
    let persistent = || BasicProperties::default().with_delivery_mode(2);
    let args = || {
        arg_table(&[
            ("x-message-ttl", int(60_000)),
            ("x-dead-letter-exchange", lstr("dlx-d")),
            ("x-dead-letter-routing-key", lstr("dead")),
            ("x-max-length", int(3)),
        ])
    };
    let t0;
    {
        let (_c, ch) = confirm_channel(&b).await;
        declare_exchange_with(
            &ch,
            "dlx-d",
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await;
        declare_queue_with(&ch, "dq", durable(), args()).await;
        declare_queue_with(&ch, "dq-dead", durable(), FieldTable::default()).await;
        bind_queue(&ch, "dq-dead", "dlx-d", "dead").await;
        t0 = Instant::now();
        publish_confirmed_within(
            5,
            &ch,
            "",
            "dq",
            b"ttl",
            persistent().with_expiration("4000".into()),
        )
        .await;
        publish_confirmed_within(5, &ch, "", "dq", b"a", persistent()).await;
        tokio::time::sleep(Duration::from_millis(3000)).await;
    }
    b.restart().await;

    let (_c, ch) = confirm_channel(&b).await;
    // The arguments came back.
    declare_queue_with(&ch, "dq", durable(), args()).await;
    let (_c2, dch) = b.channel().await;
    let mut dead = within(
        5,
        dch.basic_consume(
            "dq-dead".into(),
            "dead".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .unwrap();
    let d = next_delivery(&mut dead).await;
    let el = t0.elapsed();
    assert_eq!(text(&d), "ttl");
    assert!(
        el >= Duration::from_millis(3990) && el < Duration::from_millis(6000),
        "expired {el:?} after its publish; the 4000 ms count from the publish, not from the restart (that would be over 7000 ms)"
    );
    let x = x_deaths(&d.properties);
    assert_eq!(field_str(&x[0], "reason").as_deref(), Some("expired"));
    assert_eq!(field_str(&x[0], "queue").as_deref(), Some("dq"));
    assert_eq!(
        field_str(&x[0], "original-expiration").as_deref(),
        Some("4000")
    );
    assert_eq!(queue_counts(&ch, "dq").await.0, 1, "'a' is still there");

    // x-max-length 3 still holds, dead-lettering with reason maxlen.
    for body in ["b", "c", "d"] {
        publish_confirmed_within(5, &ch, "", "dq", body.as_bytes(), persistent()).await;
    }
    let d = next_delivery(&mut dead).await;
    assert_eq!(text(&d), "a", "the oldest is dropped");
    let x = x_deaths(&d.properties);
    assert_eq!(field_str(&x[0], "reason").as_deref(), Some("maxlen"));
    assert_eq!(drain(&ch, "dq").await, strs(&["b", "c", "d"]));

    // And the arguments are compared on a redeclare.
    let c3 = b.connect().await;
    let ch3 = c3.create_channel().await.unwrap();
    let r = ch3
        .queue_declare(
            "dq".into(),
            durable(),
            arg_table(&[("x-message-ttl", int(1))]),
        )
        .await;
    assert_eq!(expect_code(r), 406);
    b.stop().await;
}

// ----- quorum queues -----

/// Declare with options on a fresh channel: the channel error (code, text).
async fn declare_error_with(
    b: &TestBroker,
    name: &str,
    opts: QueueDeclareOptions,
    args: FieldTable,
) -> (u16, String) {
    let c = b.connect().await;
    let ch = c.create_channel().await.unwrap();
    let e = match within(5, ch.queue_declare(name.into(), opts, args)).await {
        Ok(_) => panic!("declare of {name:?} was accepted"),
        Err(e) => e,
    };
    (
        reply_code(&e).unwrap_or_else(|| panic!("no reply code: {e}")),
        reply_text(&e),
    )
}

/// Texts as RabbitMQ 3.10.8 sends them (checked side by side with pika).
#[tokio::test]
async fn quorum_queue_declarations_are_checked_as_rabbitmq_does() {
    let b = TestBroker::start().await;
    let quorum = |more: &[(&str, AMQPValue)]| {
        let mut pairs = vec![("x-queue-type", lstr("quorum"))];
        pairs.extend(more.iter().cloned());
        arg_table(&pairs)
    };
    let opts = |durable: bool, exclusive: bool, auto_delete: bool| QueueDeclareOptions {
        durable,
        exclusive,
        auto_delete,
        ..Default::default()
    };
    let pf = |t: &str| (406, format!("PRECONDITION_FAILED - {t}"));
    let cases = [
        ("q1", opts(false, false, false), quorum(&[]), "invalid property 'non-durable' for queue 'q1' in vhost '/'"),
        ("q2", opts(true, true, false), quorum(&[]), "invalid property 'exclusive-owner' for queue 'q2' in vhost '/'"),
        ("q3", opts(true, false, true), quorum(&[]), "invalid property 'auto-delete' for queue 'q3' in vhost '/'"),
        ("q4", opts(true, true, true), quorum(&[]), "invalid property 'auto-delete' for queue 'q4' in vhost '/'"),
        ("q5", opts(false, false, false), quorum(&[("x-max-priority", int(3))]), "invalid arg 'x-max-priority' for queue 'q5' in vhost '/' of queue type rabbit_quorum_queue"),
        ("q6", opts(true, false, false), quorum(&[("x-queue-mode", lstr("lazy"))]), "invalid arg 'x-queue-mode' for queue 'q6' in vhost '/' of queue type rabbit_quorum_queue"),
        ("", opts(true, false, false), quorum(&[]), "Cannot declare a server-named queue for type rabbit_quorum_queue"),
        ("q7", opts(true, false, false), arg_table(&[("x-queue-type", lstr("bogus"))]), "invalid arg 'x-queue-type' for queue 'q7' in vhost '/': \"unsupported queue type 'bogus'\""),
        ("q8", opts(true, false, false), arg_table(&[("x-queue-type", int(5))]), "invalid arg 'x-queue-type' for queue 'q8' in vhost '/': {unacceptable_type,signedint}"),
    ];
    for (name, o, args, text) in cases {
        assert_eq!(
            declare_error_with(&b, name, o, args).await,
            pf(text),
            "{name:?}"
        );
    }
    for name in ["q1", "q2", "q3", "q4", "q5", "q6", "q7", "q8"] {
        assert!(queue_missing(&b, name).await, "{name} was not declared");
    }

    // Everything else a quorum queue takes in 3.10 is accepted.
    let (_c, ch) = b.channel().await;
    declare_queue_with(
        &ch,
        "full",
        durable(),
        quorum(&[
            ("x-message-ttl", int(60_000)),
            ("x-expires", int(600_000)),
            ("x-single-active-consumer", AMQPValue::Boolean(true)),
            ("x-delivery-limit", int(3)),
            ("x-max-length", int(10)),
            ("x-dead-letter-exchange", lstr("dlx")),
            ("x-overflow", lstr("reject-publish")),
        ]),
    )
    .await;

    // No type is the classic type on a redeclare; quorum is not.
    declare_queue_with(&ch, "cl", durable(), FieldTable::default()).await;
    declare_queue_with(
        &ch,
        "cl",
        durable(),
        arg_table(&[("x-queue-type", lstr("classic"))]),
    )
    .await;
    assert_eq!(
        declare_error_with(&b, "cl", durable(), quorum(&[])).await,
        pf("inequivalent arg 'x-queue-type' for queue 'cl' in vhost '/': received the value 'quorum' of type 'longstr' but current is none")
    );
    declare_queue_with(&ch, "qq", durable(), quorum(&[])).await;
    declare_queue_with(&ch, "qq", durable(), quorum(&[])).await;
    assert_eq!(
        declare_error_with(&b, "qq", durable(), FieldTable::default()).await,
        pf("inequivalent arg 'x-queue-type' for queue 'qq' in vhost '/': received none but current is the value 'quorum' of type 'longstr'")
    );
    assert_eq!(
        declare_error_with(&b, "qq", durable(), arg_table(&[("x-queue-type", lstr("classic"))])).await,
        pf("inequivalent arg 'x-queue-type' for queue 'qq' in vhost '/': received 'classic' but current is 'quorum'")
    );
    b.stop().await;
}

/// A quorum queue keeps every message, transient or not, across a restart;
/// redeliveries carry x-delivery-count; a global prefetch cannot consume
/// from it (540, a connection error, as RabbitMQ).
#[tokio::test]
async fn quorum_queues_keep_transient_messages_and_count_deliveries() {
    let mut b = TestBroker::start().await;
    let qargs = || arg_table(&[("x-queue-type", lstr("quorum"))]);
    {
        let (_c, ch) = confirm_channel(&b).await;
        declare_queue_with(&ch, "qq", durable(), qargs()).await;
        declare_queue_with(&ch, "cq", durable(), FieldTable::default()).await;
        for q in ["qq", "cq"] {
            publish_confirmed_within(5, &ch, "", q, b"transient", BasicProperties::default()).await;
        }
    }
    b.restart().await;
    let (_c, ch) = confirm_channel(&b).await;
    assert_eq!(
        queue_counts(&ch, "qq").await.0,
        1,
        "kept by the quorum queue"
    );
    assert_eq!(
        queue_counts(&ch, "cq").await.0,
        0,
        "a classic queue drops it"
    );

    // First delivery: no count; each redelivery counts up.
    let count = |p: &BasicProperties| {
        p.headers()
            .as_ref()
            .and_then(|h| h.inner().get("x-delivery-count").cloned())
    };
    let (_c2, cch) = b.channel().await;
    let mut cons = cch
        .basic_consume(
            "qq".into(),
            "c".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let d = next_delivery(&mut cons).await;
    assert_eq!((d.redelivered, count(&d.properties)), (false, None));
    d.nack(BasicNackOptions {
        requeue: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let d = next_delivery(&mut cons).await;
    assert_eq!(
        (d.redelivered, count(&d.properties)),
        (true, Some(AMQPValue::LongLongInt(1)))
    );
    d.nack(BasicNackOptions {
        requeue: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let d = next_delivery(&mut cons).await;
    assert_eq!(count(&d.properties), Some(AMQPValue::LongLongInt(2)));
    d.ack(BasicAckOptions::default()).await.unwrap();

    // Global prefetch: consuming from a quorum queue is refused.
    let c3 = b.connect().await;
    let ch3 = c3.create_channel().await.unwrap();
    ch3.basic_qos(10, BasicQosOptions { global: true })
        .await
        .unwrap();
    let e = within(
        5,
        ch3.basic_consume(
            "qq".into(),
            "g".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .unwrap_err();
    assert_eq!(reply_code(&e), Some(540));
    assert_eq!(
        reply_text(&e),
        "NOT_IMPLEMENTED - queue 'qq' in vhost '/' does not support global qos"
    );
    assert!(
        eventually(5, || !c3.status().connected()).await,
        "a connection error"
    );
    b.stop().await;
}
