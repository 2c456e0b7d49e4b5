//! Exchanges over a real socket with lapin: the four types, the predeclared
//! exchanges, declare/delete rules and their reply codes, exchange-to-exchange
//! bindings and alternate exchanges, all as RabbitMQ 3.10 behaves.

mod common;
use common::*;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, ExchangeKind};

async fn bind(ch: &lapin::Channel, queue: &str, exchange: &str, key: &str, args: FieldTable) {
    ch.queue_bind(
        queue.into(),
        exchange.into(),
        key.into(),
        QueueBindOptions::default(),
        args,
    )
    .await
    .unwrap_or_else(|e| panic!("bind {queue} to {exchange} with {key:?}: {e}"));
}

#[tokio::test]
async fn direct_routes_on_exact_key() {
    let b = TestBroker::start().await;
    let (_c, ch) = confirm_channel(&b).await;
    declare_exchange(&ch, "dx", ExchangeKind::Direct).await;
    for q in ["d1", "d2", "d3"] {
        declare_queue(&ch, q).await;
    }
    bind(&ch, "d1", "dx", "red", FieldTable::default()).await;
    bind(&ch, "d2", "dx", "red", FieldTable::default()).await;
    bind(&ch, "d2", "dx", "green", FieldTable::default()).await;
    bind(&ch, "d3", "dx", "", FieldTable::default()).await;
    for key in ["red", "green", "blue", "", "Red", "red.x"] {
        publish_confirmed_within(
            5,
            &ch,
            "dx",
            key,
            key.as_bytes(),
            BasicProperties::default(),
        )
        .await;
    }
    assert_eq!(drain(&ch, "d1").await, vec!["red"]);
    assert_eq!(drain(&ch, "d2").await, vec!["red", "green"]);
    assert_eq!(drain(&ch, "d3").await, vec![""]);
    b.stop().await;
}

#[tokio::test]
async fn fanout_routes_to_every_bound_queue_ignoring_the_key() {
    let b = TestBroker::start().await;
    let (_c, ch) = confirm_channel(&b).await;
    declare_exchange(&ch, "fx", ExchangeKind::Fanout).await;
    for q in ["f1", "f2", "f3"] {
        declare_queue(&ch, q).await;
    }
    bind(&ch, "f1", "fx", "", FieldTable::default()).await;
    bind(&ch, "f2", "fx", "whatever", FieldTable::default()).await;
    for key in ["a", "", "b.c"] {
        publish_confirmed_within(
            5,
            &ch,
            "fx",
            key,
            key.as_bytes(),
            BasicProperties::default(),
        )
        .await;
    }
    assert_eq!(drain(&ch, "f1").await, vec!["a", "", "b.c"]);
    assert_eq!(drain(&ch, "f2").await, vec!["a", "", "b.c"]);
    assert!(drain(&ch, "f3").await.is_empty());
    b.stop().await;
}

#[tokio::test]
async fn fanout_delivers_once_per_queue_even_with_several_bindings() {
    let b = TestBroker::start().await;
    let (_c, ch) = confirm_channel(&b).await;
    declare_exchange(&ch, "fx2", ExchangeKind::Fanout).await;
    declare_queue(&ch, "fq").await;
    bind(&ch, "fq", "fx2", "a", FieldTable::default()).await;
    bind(&ch, "fq", "fx2", "b", FieldTable::default()).await;
    publish_confirmed_within(5, &ch, "fx2", "k", b"once", BasicProperties::default()).await;
    assert_eq!(drain(&ch, "fq").await, vec!["once"]);
    b.stop().await;
}

/// '*' is exactly one word, '#' zero or more; an empty routing key has zero
/// words (RabbitMQ's split_topic_key(<<>>) is []).
#[tokio::test]
async fn topic_star_and_hash_as_rabbitmq() {
    let b = TestBroker::start().await;
    let (_c, ch) = confirm_channel(&b).await;
    declare_exchange(&ch, "tx", ExchangeKind::Topic).await;
    let patterns = [
        ("t_star_b", "*.b"),
        ("t_a_hash", "a.#"),
        ("t_hash", "#"),
        ("t_a_star", "a.*"),
        ("t_a_hash_c", "a.#.c"),
        ("t_a_star_c", "a.*.c"),
        ("t_hash_b", "#.b"),
        ("t_exact", "a.b"),
        ("t_star", "*"),
        ("t_hash_hash", "#.#"),
        ("t_empty", ""),
    ];
    for (q, p) in patterns {
        declare_queue(&ch, q).await;
        bind(&ch, q, "tx", p, FieldTable::default()).await;
    }
    let keys = ["a", "a.b", "b", "a.b.c", "a.c", "x.b", "a.x.y.c", ""];
    for k in keys {
        let body = if k.is_empty() { "<empty>" } else { k };
        publish_confirmed_within(5, &ch, "tx", k, body.as_bytes(), BasicProperties::default())
            .await;
    }
    let expect: &[(&str, &[&str])] = &[
        ("t_star_b", &["a.b", "x.b"]),
        ("t_a_hash", &["a", "a.b", "a.b.c", "a.c", "a.x.y.c"]),
        (
            "t_hash",
            &["a", "a.b", "b", "a.b.c", "a.c", "x.b", "a.x.y.c", "<empty>"],
        ),
        ("t_a_star", &["a.b", "a.c"]),
        ("t_a_hash_c", &["a.b.c", "a.c", "a.x.y.c"]),
        ("t_a_star_c", &["a.b.c"]),
        ("t_hash_b", &["a.b", "b", "x.b"]),
        ("t_exact", &["a.b"]),
        ("t_star", &["a", "b"]),
        (
            "t_hash_hash",
            &["a", "a.b", "b", "a.b.c", "a.c", "x.b", "a.x.y.c", "<empty>"],
        ),
        ("t_empty", &["<empty>"]),
    ];
    let mut wrong = vec![];
    for (q, want) in expect {
        let got = sorted(drain(&ch, q).await);
        if got != sorted(strs(want)) {
            wrong.push(format!("{q}: got {got:?}, want {:?}", sorted(strs(want))));
        }
    }
    assert!(
        wrong.is_empty(),
        "topic routing differs from RabbitMQ:\n{}",
        wrong.join("\n")
    );
    b.stop().await;
}

#[tokio::test]
async fn headers_x_match_all_any_all_with_x_any_with_x() {
    let b = TestBroker::start().await;
    let (_c, ch) = confirm_channel(&b).await;
    declare_exchange(&ch, "hx", ExchangeKind::Headers).await;
    let bindings: &[(&str, &[(&str, &str)])] = &[
        ("h_all", &[("x-match", "all"), ("a", "1"), ("b", "2")]),
        ("h_any", &[("x-match", "any"), ("a", "1"), ("b", "2")]),
        ("h_default", &[("a", "1")]),
        (
            "h_all_ignores_x",
            &[("x-match", "all"), ("a", "1"), ("x-k", "v")],
        ),
        ("h_any_ignores_x", &[("x-match", "any"), ("x-k", "v")]),
        (
            "h_all_with_x",
            &[("x-match", "all-with-x"), ("a", "1"), ("x-k", "v")],
        ),
        ("h_any_with_x", &[("x-match", "any-with-x"), ("x-k", "v")]),
    ];
    for (q, args) in bindings {
        declare_queue(&ch, q).await;
        bind(&ch, q, "hx", "", table(args)).await;
    }
    let messages: &[(&str, &[(&str, &str)])] = &[
        ("m_ab", &[("a", "1"), ("b", "2")]),
        ("m_a", &[("a", "1")]),
        ("m_a_xk", &[("a", "1"), ("x-k", "v")]),
        ("m_xk", &[("x-k", "v")]),
        ("m_a_wrong", &[("a", "2")]),
        ("m_none", &[]),
    ];
    for (body, headers) in messages {
        let props = if headers.is_empty() {
            BasicProperties::default()
        } else {
            BasicProperties::default().with_headers(table(headers))
        };
        publish_confirmed_within(5, &ch, "hx", "ignored", body.as_bytes(), props).await;
    }
    let expect: &[(&str, &[&str])] = &[
        ("h_all", &["m_ab"]),
        ("h_any", &["m_ab", "m_a", "m_a_xk"]),
        ("h_default", &["m_ab", "m_a", "m_a_xk"]),
        ("h_all_ignores_x", &["m_ab", "m_a", "m_a_xk"]),
        ("h_any_ignores_x", &[]),
        ("h_all_with_x", &["m_a_xk"]),
        ("h_any_with_x", &["m_a_xk", "m_xk"]),
    ];
    let mut wrong = vec![];
    for (q, want) in expect {
        let got = sorted(drain(&ch, q).await);
        if got != sorted(strs(want)) {
            wrong.push(format!("{q}: got {got:?}, want {:?}", sorted(strs(want))));
        }
    }
    assert!(
        wrong.is_empty(),
        "headers routing differs from RabbitMQ:\n{}",
        wrong.join("\n")
    );
    b.stop().await;
}

#[tokio::test]
async fn predeclared_amq_exchanges_exist() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    for (name, kind) in [
        ("amq.direct", ExchangeKind::Direct),
        ("amq.fanout", ExchangeKind::Fanout),
        ("amq.topic", ExchangeKind::Topic),
        ("amq.headers", ExchangeKind::Headers),
        ("amq.match", ExchangeKind::Headers),
    ] {
        ch.exchange_declare(
            name.into(),
            kind.clone(),
            passive_exchange(),
            FieldTable::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("passive declare {name}: {e}"));
        // They are durable exchanges of their type: an equivalent redeclare is fine.
        ch.exchange_declare(
            name.into(),
            kind,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("equivalent redeclare {name}: {e}"));
    }
    // And they route like their type.
    let (_c2, ch2) = confirm_channel(&b).await;
    declare_queue(&ch2, "pq").await;
    bind(&ch2, "pq", "amq.direct", "k", FieldTable::default()).await;
    bind(&ch2, "pq", "amq.topic", "t.*", FieldTable::default()).await;
    bind(&ch2, "pq", "amq.fanout", "", FieldTable::default()).await;
    bind(&ch2, "pq", "amq.match", "", table(&[("h", "1")])).await;
    publish_confirmed_within(
        5,
        &ch2,
        "amq.direct",
        "k",
        b"direct",
        BasicProperties::default(),
    )
    .await;
    publish_confirmed_within(
        5,
        &ch2,
        "amq.topic",
        "t.x",
        b"topic",
        BasicProperties::default(),
    )
    .await;
    publish_confirmed_within(
        5,
        &ch2,
        "amq.fanout",
        "zzz",
        b"fanout",
        BasicProperties::default(),
    )
    .await;
    publish_confirmed_within(
        5,
        &ch2,
        "amq.match",
        "",
        b"match",
        BasicProperties::default().with_headers(table(&[("h", "1")])),
    )
    .await;
    assert_eq!(
        drain(&ch2, "pq").await,
        vec!["direct", "topic", "fanout", "match"]
    );
    b.stop().await;
}

#[tokio::test]
async fn default_exchange_routes_by_queue_name() {
    let b = TestBroker::start().await;
    let (_c, ch) = confirm_channel(&b).await;
    declare_queue(&ch, "byname").await;
    let c =
        publish_confirmed_within(5, &ch, "", "byname", b"hello", BasicProperties::default()).await;
    assert!(c.is_ack());
    publish_confirmed_within(5, &ch, "", "nobody", b"lost", BasicProperties::default()).await;
    assert_eq!(drain(&ch, "byname").await, vec!["hello"]);
    b.stop().await;
}

/// RabbitMQ refuses every exchange.declare naming the default exchange, the
/// passive one included (check_not_default_exchange in both clauses of
/// rabbit_channel): 403 ACCESS_REFUSED.
#[tokio::test]
async fn declare_of_default_exchange_is_refused_403() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let r = ch
        .exchange_declare(
            "".into(),
            ExchangeKind::Direct,
            passive_exchange(),
            FieldTable::default(),
        )
        .await;
    assert_eq!(expect_code(r), 403);
    let (_c, ch) = b.channel().await;
    let r = ch
        .exchange_declare(
            "".into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await;
    assert_eq!(expect_code(r), 403);
    b.stop().await;
}

#[tokio::test]
async fn passive_declare_of_missing_exchange_is_404_and_closes_the_channel() {
    let b = TestBroker::start().await;
    let (c, ch) = b.channel().await;
    let r = ch
        .exchange_declare(
            "nope".into(),
            ExchangeKind::Direct,
            passive_exchange(),
            FieldTable::default(),
        )
        .await;
    assert_eq!(expect_code(r), 404);
    assert!(!ch.status().connected(), "the channel is closed");
    // Only the channel: the connection still works.
    let ch2 = c.create_channel().await.unwrap();
    declare_exchange(&ch2, "now-it-exists", ExchangeKind::Fanout).await;
    b.stop().await;
}

#[tokio::test]
async fn durable_exchange_survives_a_restart_and_transient_does_not() {
    let mut b = TestBroker::start().await;
    {
        let (c, ch) = b.channel().await;
        ch.exchange_declare(
            "ex.durable".into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
        declare_exchange(&ch, "ex.transient", ExchangeKind::Topic).await;
        ch.queue_declare("ex.durable.q".into(), durable(), FieldTable::default())
            .await
            .unwrap();
        bind(
            &ch,
            "ex.durable.q",
            "ex.durable",
            "a.*",
            FieldTable::default(),
        )
        .await;
        c.close(200, "bye".into()).await.unwrap();
    }
    b.restart().await;
    assert!(exchange_exists(&b, "ex.durable").await);
    assert!(!exchange_exists(&b, "ex.transient").await);
    // The binding between durable objects came back too.
    {
        let (_c, ch) = confirm_channel(&b).await;
        publish_confirmed_within(
            5,
            &ch,
            "ex.durable",
            "a.b",
            b"after-restart",
            BasicProperties::default(),
        )
        .await;
        publish_confirmed_within(
            5,
            &ch,
            "ex.durable",
            "b.b",
            b"unmatched",
            BasicProperties::default(),
        )
        .await;
        assert_eq!(drain(&ch, "ex.durable.q").await, vec!["after-restart"]);
    }
    // It came back with its properties: a redeclare as durable topic is equivalent.
    let (_c, ch) = b.channel().await;
    ch.exchange_declare(
        "ex.durable".into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    b.stop().await;
}

#[tokio::test]
async fn auto_delete_exchange_goes_with_its_last_binding() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let ad = ExchangeDeclareOptions {
        auto_delete: true,
        ..Default::default()
    };
    ch.exchange_declare(
        "adx".into(),
        ExchangeKind::Direct,
        ad,
        FieldTable::default(),
    )
    .await
    .unwrap();
    // Never bound: it stays.
    assert!(exchange_exists(&b, "adx").await);
    declare_queue(&ch, "adq1").await;
    declare_queue(&ch, "adq2").await;
    bind(&ch, "adq1", "adx", "k", FieldTable::default()).await;
    bind(&ch, "adq2", "adx", "k", FieldTable::default()).await;
    ch.queue_unbind(
        "adq1".into(),
        "adx".into(),
        "k".into(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    assert!(exchange_exists(&b, "adx").await, "one binding left");
    ch.queue_unbind(
        "adq2".into(),
        "adx".into(),
        "k".into(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    assert!(
        !exchange_exists(&b, "adx").await,
        "auto-delete exchange removed with its last binding"
    );

    // Deleting the bound queue removes the binding, and so the exchange.
    ch.exchange_declare(
        "adx2".into(),
        ExchangeKind::Fanout,
        ad,
        FieldTable::default(),
    )
    .await
    .unwrap();
    bind(&ch, "adq1", "adx2", "", FieldTable::default()).await;
    ch.queue_delete("adq1".into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    assert!(
        !exchange_exists(&b, "adx2").await,
        "removed when its bound queue was deleted"
    );
    b.stop().await;
}

#[tokio::test]
async fn publishing_to_an_internal_exchange_is_403() {
    let b = TestBroker::start().await;
    let (c, ch) = b.channel().await;
    let internal = ExchangeDeclareOptions {
        internal: true,
        ..Default::default()
    };
    ch.exchange_declare(
        "inx".into(),
        ExchangeKind::Fanout,
        internal,
        FieldTable::default(),
    )
    .await
    .unwrap();
    declare_exchange(&ch, "front", ExchangeKind::Fanout).await;
    declare_queue(&ch, "inq").await;
    bind(&ch, "inq", "inx", "", FieldTable::default()).await;
    ch.exchange_bind(
        "inx".into(),
        "front".into(),
        "".into(),
        ExchangeBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    // Reachable through an exchange-to-exchange binding...
    publish(&ch, "front", "", b"via-front").await;
    assert_eq!(drain(&ch, "inq").await, vec!["via-front"]);
    // ...but not directly.
    let mut closes = watch_closes(&c);
    publish(&ch, "inx", "", b"direct").await;
    assert_eq!(closes.next_code().await, 403);
    assert!(
        eventually(5, || !ch.status().connected()).await,
        "channel closed"
    );
    let ch2 = c.create_channel().await.unwrap();
    assert_eq!(
        queue_counts(&ch2, "inq").await.0,
        0,
        "nothing reached the queue"
    );
    b.stop().await;
}

#[tokio::test]
async fn inequivalent_exchange_redeclare_is_406() {
    let b = TestBroker::start().await;
    let c = b.connect().await;
    let ch = c.create_channel().await.unwrap();
    ch.exchange_declare(
        "eqx".into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let variants: Vec<(&str, ExchangeKind, ExchangeDeclareOptions)> = vec![
        (
            "type",
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
        ),
        (
            "durable",
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
        ),
        (
            "auto_delete",
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                durable: true,
                auto_delete: true,
                ..Default::default()
            },
        ),
        (
            "internal",
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                durable: true,
                internal: true,
                ..Default::default()
            },
        ),
    ];
    for (what, kind, opts) in variants {
        let ch = c.create_channel().await.unwrap();
        let r = ch
            .exchange_declare("eqx".into(), kind, opts, FieldTable::default())
            .await;
        assert_eq!(expect_code(r), 406, "redeclare with a different {what}");
        assert!(!ch.status().connected());
    }
    // Arguments that RabbitMQ compares, such as alternate-exchange.
    let ch = c.create_channel().await.unwrap();
    let mut args = FieldTable::default();
    args.insert(
        "alternate-exchange".into(),
        AMQPValue::LongString("ae".into()),
    );
    let r = ch
        .exchange_declare(
            "eqx".into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await;
    assert_eq!(
        expect_code(r),
        406,
        "redeclare with a different alternate-exchange"
    );
    // The equivalent declare still works.
    let ch = c.create_channel().await.unwrap();
    ch.exchange_declare(
        "eqx".into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    b.stop().await;
}

#[tokio::test]
async fn declaring_an_amq_prefixed_exchange_is_403() {
    let b = TestBroker::start().await;
    let (c, ch) = b.channel().await;
    let r = ch
        .exchange_declare(
            "amq.foo".into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await;
    assert_eq!(expect_code(r), 403);
    assert!(
        c.status().connected(),
        "a channel error, not a connection error"
    );
    assert!(!exchange_exists(&b, "amq.foo").await);
    b.stop().await;
}

#[tokio::test]
async fn unknown_exchange_type_closes_the_connection_with_503() {
    let b = TestBroker::start().await;
    let (c, ch) = b.channel().await;
    let r = ch
        .exchange_declare(
            "weird".into(),
            ExchangeKind::Custom("no-such-type".into()),
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await;
    assert_eq!(expect_code(r), 503);
    assert!(
        eventually(5, || !c.status().connected()).await,
        "the whole connection is closed"
    );
    assert!(!exchange_exists(&b, "weird").await);
    b.stop().await;
}

#[tokio::test]
async fn delete_if_unused_refuses_a_bound_exchange_with_406() {
    let b = TestBroker::start().await;
    let c = b.connect().await;
    let ch = c.create_channel().await.unwrap();
    declare_exchange(&ch, "usedx", ExchangeKind::Direct).await;
    declare_queue(&ch, "usedq").await;
    bind(&ch, "usedq", "usedx", "k", FieldTable::default()).await;
    let r = ch
        .exchange_delete(
            "usedx".into(),
            ExchangeDeleteOptions {
                if_unused: true,
                ..Default::default()
            },
        )
        .await;
    assert_eq!(expect_code(r), 406);
    assert!(exchange_exists(&b, "usedx").await, "still there");

    // "Unused" is about bindings from the exchange: one that is only a
    // destination can go.
    let ch = c.create_channel().await.unwrap();
    declare_exchange(&ch, "destonly", ExchangeKind::Fanout).await;
    ch.exchange_bind(
        "destonly".into(),
        "amq.fanout".into(),
        "".into(),
        ExchangeBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.exchange_delete(
        "destonly".into(),
        ExchangeDeleteOptions {
            if_unused: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(!exchange_exists(&b, "destonly").await);

    // Without if-unused the bound exchange is deleted with its bindings.
    ch.exchange_delete("usedx".into(), ExchangeDeleteOptions::default())
        .await
        .unwrap();
    assert!(!exchange_exists(&b, "usedx").await);
    // Deleting a missing exchange succeeds in RabbitMQ.
    ch.exchange_delete("usedx".into(), ExchangeDeleteOptions::default())
        .await
        .unwrap();
    b.stop().await;
}

#[tokio::test]
async fn exchange_to_exchange_bindings_route() {
    let b = TestBroker::start().await;
    let (_c, ch) = confirm_channel(&b).await;
    declare_exchange(&ch, "src", ExchangeKind::Topic).await;
    declare_exchange(&ch, "mid", ExchangeKind::Direct).await;
    declare_exchange(&ch, "leaf", ExchangeKind::Fanout).await;
    declare_queue(&ch, "q_mid").await;
    declare_queue(&ch, "q_leaf").await;
    declare_queue(&ch, "q_src").await;
    // src --(orders.#)--> mid --(orders.eu)--> q_mid ; mid --(orders.eu)--> leaf --> q_leaf
    ch.exchange_bind(
        "mid".into(),
        "src".into(),
        "orders.#".into(),
        ExchangeBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.exchange_bind(
        "leaf".into(),
        "mid".into(),
        "orders.eu".into(),
        ExchangeBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    bind(&ch, "q_mid", "mid", "orders.eu", FieldTable::default()).await;
    bind(&ch, "q_leaf", "leaf", "", FieldTable::default()).await;
    bind(&ch, "q_src", "src", "#", FieldTable::default()).await;
    for k in ["orders.eu", "orders.us", "other"] {
        publish_confirmed_within(5, &ch, "src", k, k.as_bytes(), BasicProperties::default()).await;
    }
    assert_eq!(drain(&ch, "q_mid").await, vec!["orders.eu"]);
    assert_eq!(drain(&ch, "q_leaf").await, vec!["orders.eu"]);
    assert_eq!(
        drain(&ch, "q_src").await,
        vec!["orders.eu", "orders.us", "other"]
    );

    // A queue reachable on two paths gets the message once.
    bind(&ch, "q_leaf", "src", "orders.eu", FieldTable::default()).await;
    publish_confirmed_within(
        5,
        &ch,
        "src",
        "orders.eu",
        b"once",
        BasicProperties::default(),
    )
    .await;
    assert_eq!(drain(&ch, "q_leaf").await, vec!["once"]);
    assert_eq!(drain(&ch, "q_mid").await, vec!["once"]);

    // Unbinding the exchanges cuts the path.
    ch.exchange_unbind(
        "mid".into(),
        "src".into(),
        "orders.#".into(),
        ExchangeUnbindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    publish_confirmed_within(
        5,
        &ch,
        "src",
        "orders.eu",
        b"after-unbind",
        BasicProperties::default(),
    )
    .await;
    assert!(drain(&ch, "q_mid").await.is_empty());
    b.stop().await;
}

#[tokio::test]
async fn exchange_binding_cycles_do_not_loop() {
    let b = TestBroker::start().await;
    let (_c, ch) = confirm_channel(&b).await;
    declare_exchange(&ch, "cy1", ExchangeKind::Fanout).await;
    declare_exchange(&ch, "cy2", ExchangeKind::Fanout).await;
    declare_queue(&ch, "cyq").await;
    ch.exchange_bind(
        "cy2".into(),
        "cy1".into(),
        "".into(),
        ExchangeBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.exchange_bind(
        "cy1".into(),
        "cy2".into(),
        "".into(),
        ExchangeBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    bind(&ch, "cyq", "cy2", "", FieldTable::default()).await;
    let c = publish_confirmed_within(5, &ch, "cy1", "", b"round", BasicProperties::default()).await;
    assert!(c.is_ack());
    assert_eq!(drain(&ch, "cyq").await, vec!["round"]);
    b.stop().await;
}

#[tokio::test]
async fn alternate_exchange_catches_unroutable_messages() {
    let b = TestBroker::start().await;
    let (_c, ch) = confirm_channel(&b).await;
    declare_exchange(&ch, "ae", ExchangeKind::Fanout).await;
    declare_queue(&ch, "ae_q").await;
    bind(&ch, "ae_q", "ae", "", FieldTable::default()).await;
    let mut args = FieldTable::default();
    args.insert(
        "alternate-exchange".into(),
        AMQPValue::LongString("ae".into()),
    );
    ch.exchange_declare(
        "main".into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions::default(),
        args,
    )
    .await
    .unwrap();
    declare_queue(&ch, "main_q").await;
    bind(&ch, "main_q", "main", "known", FieldTable::default()).await;

    publish_confirmed_within(
        5,
        &ch,
        "main",
        "known",
        b"routed",
        BasicProperties::default(),
    )
    .await;
    publish_confirmed_within(
        5,
        &ch,
        "main",
        "unknown",
        b"to-ae",
        BasicProperties::default(),
    )
    .await;
    // A mandatory message the alternate exchange routes is not returned.
    let pc = ch
        .basic_publish(
            "main".into(),
            "unknown2".into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            b"mandatory-to-ae",
            BasicProperties::default(),
        )
        .await
        .unwrap();
    let conf = within(5, pc).await.unwrap();
    assert!(conf.is_ack());
    assert!(
        conf.take_message().is_none(),
        "routed by the alternate exchange: not returned"
    );

    assert_eq!(drain(&ch, "main_q").await, vec!["routed"]);
    assert_eq!(drain(&ch, "ae_q").await, vec!["to-ae", "mandatory-to-ae"]);

    // An alternate exchange that does not exist routes nothing: a mandatory
    // message is returned.
    let mut args = FieldTable::default();
    args.insert(
        "alternate-exchange".into(),
        AMQPValue::LongString("missing-ae".into()),
    );
    ch.exchange_declare(
        "main2".into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions::default(),
        args,
    )
    .await
    .unwrap();
    let pc = ch
        .basic_publish(
            "main2".into(),
            "x".into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            b"nowhere",
            BasicProperties::default(),
        )
        .await
        .unwrap();
    let ret = within(5, pc)
        .await
        .unwrap()
        .take_message()
        .expect("returned");
    assert_eq!(ret.reply_code, 312);
    b.stop().await;
}

#[tokio::test]
async fn publish_to_a_missing_exchange_is_404() {
    let b = TestBroker::start().await;
    let (c, ch) = b.channel().await;
    let mut closes = watch_closes(&c);
    publish(&ch, "no-such-exchange", "k", b"x").await;
    assert_eq!(closes.next_code().await, 404);
    assert!(
        eventually(5, || !ch.status().connected()).await,
        "channel closed"
    );
    assert!(c.status().connected(), "connection stays open");

    // In confirm mode the pending confirm fails with the same code.
    let ch = c.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let pc = ch
        .basic_publish(
            "no-such-exchange".into(),
            "k".into(),
            BasicPublishOptions::default(),
            b"y",
            BasicProperties::default(),
        )
        .await
        .unwrap();
    assert_eq!(expect_code(within(5, pc).await), 404);
    b.stop().await;
}

/// RabbitMQ validates x-match on headers bindings
/// (rabbit_exchange_type_headers:validate_binding): anything but the four
/// known strings is binding_invalid, which the channel reports as 406.
#[tokio::test]
async fn headers_binding_with_an_invalid_x_match_is_406() {
    let b = TestBroker::start().await;
    let c = b.connect().await;
    let ch = c.create_channel().await.unwrap();
    declare_queue(&ch, "hq").await;
    let r = ch
        .queue_bind(
            "hq".into(),
            "amq.headers".into(),
            "".into(),
            QueueBindOptions::default(),
            table(&[("x-match", "bogus"), ("a", "1")]),
        )
        .await;
    let e = r.expect_err("x-match 'bogus' refused");
    assert_eq!(reply_code(&e), Some(406), "x-match 'bogus'");
    assert_eq!(
        reply_text(&e),
        "PRECONDITION_FAILED - Invalid x-match field value <<\"bogus\">>; expected all, any, all-with-x, or any-with-x"
    );
    let ch = c.create_channel().await.unwrap();
    let mut args = table(&[("a", "1")]);
    args.insert("x-match".into(), AMQPValue::LongInt(1));
    let r = ch
        .queue_bind(
            "hq".into(),
            "amq.headers".into(),
            "".into(),
            QueueBindOptions::default(),
            args,
        )
        .await;
    assert_eq!(expect_code(r), 406, "x-match that is not a string");
    assert!(c.status().connected());
    // Nothing was bound.
    let (_c2, ch) = confirm_channel(&b).await;
    publish_confirmed_within(
        5,
        &ch,
        "amq.headers",
        "",
        b"x",
        BasicProperties::default().with_headers(table(&[("a", "1")])),
    )
    .await;
    assert!(drain(&ch, "hq").await.is_empty());
    b.stop().await;
}

#[tokio::test]
async fn exchange_bind_errors() {
    let b = TestBroker::start().await;
    let c = b.connect().await;
    let ch = c.create_channel().await.unwrap();
    declare_exchange(&ch, "eb", ExchangeKind::Fanout).await;
    let cases: Vec<(&str, &str, &str, u16)> = vec![
        ("missing destination", "nope", "eb", 404),
        ("missing source", "eb", "nope", 404),
        ("default exchange as destination", "", "eb", 403),
        ("default exchange as source", "eb", "", 403),
    ];
    for (what, dest, src, code) in cases {
        let ch = c.create_channel().await.unwrap();
        let r = ch
            .exchange_bind(
                dest.into(),
                src.into(),
                "k".into(),
                ExchangeBindOptions::default(),
                FieldTable::default(),
            )
            .await;
        assert_eq!(expect_code(r), code, "{what}");
    }
    // A queue cannot be bound to the default exchange either.
    let ch = c.create_channel().await.unwrap();
    declare_queue(&ch, "ebq").await;
    let r = ch
        .queue_bind(
            "ebq".into(),
            "".into(),
            "k".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await;
    assert_eq!(expect_code(r), 403);
    b.stop().await;
}

#[tokio::test]
async fn deleting_the_default_or_an_amq_exchange_is_403() {
    let b = TestBroker::start().await;
    let c = b.connect().await;
    for name in [
        "",
        "amq.direct",
        "amq.fanout",
        "amq.topic",
        "amq.headers",
        "amq.match",
    ] {
        let ch = c.create_channel().await.unwrap();
        let e = ch
            .exchange_delete(name.into(), ExchangeDeleteOptions::default())
            .await
            .expect_err("refused");
        assert_eq!(reply_code(&e), Some(403), "delete {name:?}");
        let text = if name.is_empty() {
            "ACCESS_REFUSED - operation not permitted on the default exchange".to_string()
        } else {
            format!(
                "ACCESS_REFUSED - deletion of system exchange '{name}' in vhost '/' not allowed"
            )
        };
        assert_eq!(reply_text(&e), text);
    }
    for name in [
        "amq.direct",
        "amq.fanout",
        "amq.topic",
        "amq.headers",
        "amq.match",
    ] {
        assert!(exchange_exists(&b, name).await, "{name} still there");
    }
    b.stop().await;
}

/// Sender-selected distribution: the CC and BCC headers add routing keys;
/// BCC is removed from the delivered message, CC is kept.
#[tokio::test]
async fn cc_and_bcc_headers_add_routing_keys() {
    let b = TestBroker::start().await;
    let (_c, ch) = confirm_channel(&b).await;
    for (q, k) in [("k1q", "k1"), ("k2q", "k2"), ("k3q", "k3"), ("k4q", "k4")] {
        declare_queue(&ch, q).await;
        bind(&ch, q, "amq.direct", k, FieldTable::default()).await;
    }
    let arr = |keys: &[&str]| {
        AMQPValue::FieldArray(lapin::types::FieldArray::from(
            keys.iter()
                .map(|k| AMQPValue::LongString((*k).into()))
                .collect::<Vec<_>>(),
        ))
    };
    let mut headers = FieldTable::default();
    headers.insert("CC".into(), arr(&["k2"]));
    headers.insert("BCC".into(), arr(&["k3"]));
    headers.insert("other".into(), AMQPValue::LongString("kept".into()));
    publish_confirmed_within(
        5,
        &ch,
        "amq.direct",
        "k1",
        b"sent",
        BasicProperties::default().with_headers(headers),
    )
    .await;
    for q in ["k1q", "k2q", "k3q"] {
        let m = ch
            .basic_get(q.into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{q} got it"));
        assert_eq!(m.delivery.data, b"sent");
        assert_eq!(
            m.delivery.routing_key.as_str(),
            "k1",
            "the routing key is the published one"
        );
        let h = m.delivery.properties.headers().clone().expect("headers");
        assert!(h.inner().contains_key("CC"), "CC kept in {q}");
        assert!(!h.inner().contains_key("BCC"), "BCC removed in {q}");
        assert!(h.inner().contains_key("other"));
    }
    assert!(drain(&ch, "k4q").await.is_empty());
    b.stop().await;
}

/// RabbitMQ 3.10.8 (checked live) words an alternate-exchange of the wrong
/// type differently from other argument errors.
#[tokio::test]
async fn an_alternate_exchange_of_the_wrong_type_is_406() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let mut args = FieldTable::default();
    args.insert("alternate-exchange".into(), AMQPValue::Boolean(true));
    let e = ch
        .exchange_declare(
            "aex".into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            args,
        )
        .await
        .expect_err("refused");
    assert_eq!(reply_code(&e), Some(406));
    assert_eq!(
        reply_text(&e),
        "PRECONDITION_FAILED - invalid type 'bool' for arg 'alternate-exchange' in exchange 'aex' in vhost '/'"
    );
    b.stop().await;
}
