//! Every publisher goes through one pipeline (src/broker/publish.rs): the
//! management API's publish and released delayed messages now do what a
//! basic.publish does. These cases had drifted apart before.

mod common;

use common::http::Api;
use common::{declare_queue, drain, TestBroker};
use lapin::options::{
    BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString};
use lapin::BasicProperties;
use serde_json::json;

#[tokio::test]
async fn management_publish_routes_cc_and_bcc_and_strips_bcc() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    for q in ["main", "cc", "bcc"] {
        declare_queue(&ch, q).await;
    }
    let a = Api::new(&b.mgmt_url());
    let r = a
        .post(
            "/api/exchanges/%2F/amq.default/publish",
            json!({"properties": {"headers": {"CC": ["cc"], "BCC": ["bcc"]}},
                   "routing_key": "main", "payload": "hi", "payload_encoding": "string"}),
        )
        .await;
    assert_eq!((r.status, r.body), (200, json!({"routed": true})));
    for q in ["main", "cc", "bcc"] {
        let got = ch
            .basic_get(q.into(), Default::default())
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{q} got the message"));
        let h = got
            .delivery
            .properties
            .headers()
            .clone()
            .unwrap_or_default();
        assert!(h.inner().contains_key("CC"), "{q}: CC stays");
        assert!(!h.inner().contains_key("BCC"), "{q}: BCC is stripped");
    }
    b.stop().await;
}

#[tokio::test]
async fn management_publish_to_a_full_reject_publish_queue_is_refused() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongInt(1));
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString(LongString::from("reject-publish")),
    );
    ch.queue_declare("full".into(), QueueDeclareOptions::default(), args)
        .await
        .unwrap();
    let a = Api::new(&b.mgmt_url());
    let body = json!({"properties": {}, "routing_key": "full", "payload": "x", "payload_encoding": "string"});
    let r = a
        .post("/api/exchanges/%2F/amq.default/publish", body.clone())
        .await;
    assert_eq!((r.status, r.body), (200, json!({"routed": true})));
    // The queue is at its limit: RabbitMQ nacks, and its API says so.
    let r = a.post("/api/exchanges/%2F/amq.default/publish", body).await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    assert_eq!(
        r.body["reason"],
        "Unable to publish message. Check queue limits."
    );
    assert_eq!(drain(&ch, "full").await, vec!["x".to_string()]);
    b.stop().await;
}

#[tokio::test]
async fn a_released_delayed_message_is_routed_by_its_cc_keys_too() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let mut args = FieldTable::default();
    args.insert(
        "x-delayed-type".into(),
        AMQPValue::LongString(LongString::from("direct")),
    );
    ch.exchange_declare(
        "later".into(),
        lapin::ExchangeKind::Custom("x-delayed-message".into()),
        ExchangeDeclareOptions::default(),
        args,
    )
    .await
    .unwrap();
    for (q, k) in [("to", "to"), ("copy", "copy")] {
        declare_queue(&ch, q).await;
        ch.queue_bind(
            q.into(),
            "later".into(),
            k.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    }
    let mut h = FieldTable::default();
    h.insert("x-delay".into(), AMQPValue::LongLongInt(200));
    h.insert(
        "CC".into(),
        AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::LongString(
            LongString::from("copy"),
        )])),
    );
    ch.basic_publish(
        "later".into(),
        "to".into(),
        BasicPublishOptions::default(),
        b"later",
        BasicProperties::default().with_headers(h),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let both = common::eventually(10, || {
        b.queue("/", "to").unwrap().message_count() == 1
            && b.queue("/", "copy").unwrap().message_count() == 1
    })
    .await;
    assert!(both, "released to its routing key and its CC key");
    b.stop().await;
}
