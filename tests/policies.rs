//! Policies and operator policies over the management API, seen by a real
//! client (lapin) on existing queues and exchanges: every key changes the
//! behaviour at once and changes back when the policy goes; arguments and
//! operator policies combine as RabbitMQ 3.10's; bad input is a 400 with
//! RabbitMQ's text and changes nothing; policies survive a restart and
//! round-trip through definitions.

mod common;
use common::http::Api;
use common::*;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, ExchangeKind};
use serde_json::{json, Value};
use std::time::Duration;

fn api(b: &TestBroker) -> Api {
    Api::new(&b.mgmt_url())
}

async fn set_policy(a: &Api, name: &str, body: Value) {
    let r = a.put(&format!("/api/policies/%2F/{name}"), body).await;
    assert!(matches!(r.status, 201 | 204), "{}: {}", r.status, r.text);
}

async fn set_op_policy(a: &Api, name: &str, body: Value) {
    let r = a
        .put(&format!("/api/operator-policies/%2F/{name}"), body)
        .await;
    assert!(matches!(r.status, 201 | 204), "{}: {}", r.status, r.text);
}

async fn clear_policy(a: &Api, name: &str) {
    let r = a.delete(&format!("/api/policies/%2F/{name}")).await;
    assert_eq!(r.status, 204, "{}", r.text);
}

async fn count(ch: &lapin::Channel, q: &str) -> u32 {
    queue_counts(ch, q).await.0
}

async fn publish_n(ch: &lapin::Channel, q: &str, n: usize, body: &[u8]) {
    for _ in 0..n {
        publish_confirmed(ch, "", q, body, BasicProperties::default()).await;
    }
}

async fn eventually_count(ch: &lapin::Channel, q: &str, want: u32) -> bool {
    eventually_async(5, || async { count(ch, q).await == want }).await
}

#[tokio::test]
async fn length_keys_change_an_existing_queue_and_change_back() {
    let b = TestBroker::start().await;
    let a = api(&b);
    let (_c, ch) = confirm_channel(&b).await;

    // max-length: the backlog is cut from the head at once, then held.
    declare_queue(&ch, "len").await;
    publish_n(&ch, "len", 5, b"x").await;
    set_policy(
        &a,
        "len",
        json!({"pattern": "^len$", "apply-to": "queues", "definition": {"max-length": 2}}),
    )
    .await;
    assert_eq!(count(&ch, "len").await, 2);
    publish_n(&ch, "len", 3, b"x").await;
    assert_eq!(count(&ch, "len").await, 2);
    clear_policy(&a, "len").await;
    publish_n(&ch, "len", 3, b"x").await;
    assert_eq!(count(&ch, "len").await, 5);

    // max-length-bytes, counted over the messages already there.
    declare_queue(&ch, "bytes").await;
    publish_n(&ch, "bytes", 4, b"four").await;
    set_policy(
        &a,
        "bytes",
        json!({"pattern": "^bytes$", "definition": {"max-length-bytes": 8}}),
    )
    .await;
    assert_eq!(count(&ch, "bytes").await, 2);
    publish_n(&ch, "bytes", 2, b"four").await;
    assert_eq!(count(&ch, "bytes").await, 2);
    clear_policy(&a, "bytes").await;
    publish_n(&ch, "bytes", 2, b"four").await;
    assert_eq!(count(&ch, "bytes").await, 4);

    // overflow reject-publish: the publisher gets a nack while full.
    declare_queue(&ch, "rej").await;
    set_policy(
        &a,
        "rej",
        json!({"pattern": "^rej$", "definition": {"max-length": 1, "overflow": "reject-publish"}}),
    )
    .await;
    let first = publish_confirmed(&ch, "", "rej", b"1", BasicProperties::default()).await;
    let second = publish_confirmed(&ch, "", "rej", b"2", BasicProperties::default()).await;
    assert!(first.is_ack());
    assert!(second.is_nack(), "over the limit: nack");
    assert_eq!(drain(&ch, "rej").await, strs(&["1"]));
    clear_policy(&a, "rej").await;
    publish_n(&ch, "rej", 2, b"x").await;
    assert_eq!(count(&ch, "rej").await, 2);

    // queue-mode is accepted and changes nothing.
    set_policy(
        &a,
        "lazy",
        json!({"pattern": "^rej$", "definition": {"queue-mode": "lazy"}}),
    )
    .await;
    assert_eq!(count(&ch, "rej").await, 2);
    b.stop().await;
}

#[tokio::test]
async fn ttl_expiry_and_dead_lettering_keys() {
    let b = TestBroker::start().await;
    let a = api(&b);
    let (_c, ch) = confirm_channel(&b).await;

    // message-ttl: messages arriving after the policy expire.
    declare_queue(&ch, "ttl").await;
    set_policy(
        &a,
        "ttl",
        json!({"pattern": "^ttl$", "definition": {"message-ttl": 20}}),
    )
    .await;
    publish_n(&ch, "ttl", 3, b"x").await;
    assert!(
        eventually_count(&ch, "ttl", 0).await,
        "expired by the policy TTL"
    );
    clear_policy(&a, "ttl").await;
    publish_n(&ch, "ttl", 1, b"x").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(count(&ch, "ttl").await, 1, "no TTL once the policy is gone");

    // expires: an unused queue goes; without the policy one stays.
    declare_queue(&ch, "exp.a").await;
    set_policy(
        &a,
        "exp",
        json!({"pattern": "^exp\\.", "definition": {"expires": 50}}),
    )
    .await;
    assert!(
        eventually(5, || !b.has_queue("/", "exp.a")).await,
        "expired by the policy"
    );
    clear_policy(&a, "exp").await;
    declare_queue(&ch, "exp.b").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(b.has_queue("/", "exp.b"));

    // dead-letter-exchange and -routing-key: a rejected message goes to dlq.
    declare_queue(&ch, "dlq").await;
    declare_queue(&ch, "work").await;
    set_policy(
        &a,
        "dlx",
        json!({"pattern": "^work$", "definition": {
            "dead-letter-exchange": "", "dead-letter-routing-key": "dlq"}}),
    )
    .await;
    publish_n(&ch, "work", 1, b"bad").await;
    let m = get_message(&ch, "work").await.unwrap();
    m.delivery
        .nack(BasicNackOptions {
            requeue: false,
            ..Default::default()
        })
        .await
        .unwrap();
    let dead = wait_get(&ch, "dlq", 5).await.expect("dead-lettered to dlq");
    assert_eq!(x_deaths(&dead.delivery.properties).len(), 1);
    dead.delivery.ack(BasicAckOptions::default()).await.unwrap();
    clear_policy(&a, "dlx").await;
    publish_n(&ch, "work", 1, b"bad").await;
    let m = get_message(&ch, "work").await.unwrap();
    m.delivery
        .nack(BasicNackOptions {
            requeue: false,
            ..Default::default()
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(count(&ch, "dlq").await, 0, "dropped without a DLX");

    // delivery-limit: a message requeued past the limit is dropped.
    declare_queue(&ch, "lim").await;
    set_policy(
        &a,
        "lim",
        json!({"pattern": "^lim$", "definition": {"delivery-limit": 0}}),
    )
    .await;
    publish_n(&ch, "lim", 1, b"m").await;
    let m = get_message(&ch, "lim").await.unwrap();
    m.delivery
        .nack(BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        eventually_count(&ch, "lim", 0).await,
        "over the delivery limit"
    );
    clear_policy(&a, "lim").await;
    publish_n(&ch, "lim", 1, b"m").await;
    for _ in 0..3 {
        let m = get_message(&ch, "lim").await.expect("still there");
        m.delivery
            .nack(BasicNackOptions {
                requeue: true,
                ..Default::default()
            })
            .await
            .unwrap();
    }
    assert_eq!(count(&ch, "lim").await, 1);
    b.stop().await;
}

#[tokio::test]
async fn alternate_exchange_key_on_an_existing_exchange() {
    let b = TestBroker::start().await;
    let a = api(&b);
    let (_c, ch) = confirm_channel(&b).await;
    declare_exchange_with(
        &ch,
        "orders",
        ExchangeKind::Direct,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await;
    declare_exchange_with(
        &ch,
        "unrouted",
        ExchangeKind::Fanout,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await;
    declare_queue(&ch, "lost").await;
    bind_queue(&ch, "lost", "unrouted", "").await;
    // apply-to queues does not touch exchanges
    set_policy(
        &a,
        "ae",
        json!({"pattern": "^orders$", "apply-to": "queues", "definition": {"alternate-exchange": "unrouted"}}),
    )
    .await;
    publish_confirmed(&ch, "orders", "nowhere", b"0", BasicProperties::default()).await;
    assert_eq!(count(&ch, "lost").await, 0);
    set_policy(
        &a,
        "ae",
        json!({"pattern": "^orders$", "apply-to": "exchanges", "definition": {"alternate-exchange": "unrouted"}}),
    )
    .await;
    publish_confirmed(&ch, "orders", "nowhere", b"1", BasicProperties::default()).await;
    assert_eq!(drain(&ch, "lost").await, strs(&["1"]));
    let x = a.get("/api/exchanges/%2F/orders").await.body;
    assert_eq!(x["policy"], "ae");
    clear_policy(&a, "ae").await;
    publish_confirmed(&ch, "orders", "nowhere", b"2", BasicProperties::default()).await;
    assert_eq!(count(&ch, "lost").await, 0);
    assert_eq!(
        a.get("/api/exchanges/%2F/orders").await.body["policy"],
        Value::Null
    );
    b.stop().await;
}

#[tokio::test]
async fn arguments_priorities_and_operator_policies_combine_as_rabbitmq() {
    let b = TestBroker::start().await;
    let a = api(&b);
    let (_c, ch) = confirm_channel(&b).await;
    declare_queue(&ch, "to.arg").await;
    declare_queue(&ch, "to.policy").await;
    declare_queue_with(
        &ch,
        "q",
        QueueDeclareOptions::default(),
        arg_table(&[
            ("x-max-length", int(5)),
            ("x-dead-letter-exchange", lstr("")),
            ("x-dead-letter-routing-key", lstr("to.arg")),
        ]),
    )
    .await;

    // The argument wins for the dead-letter target (res_arg) ...
    set_policy(
        &a,
        "low",
        json!({"pattern": "^q$", "priority": 1, "definition": {
            "dead-letter-exchange": "", "dead-letter-routing-key": "to.policy",
            "max-length": 10}}),
    )
    .await;
    publish_n(&ch, "q", 12, b"x").await;
    // ... and the lower of argument and policy for a limit (res_min): 5.
    assert_eq!(count(&ch, "q").await, 5);
    assert!(
        eventually_count(&ch, "to.arg", 7).await,
        "dropped heads dead-lettered"
    );
    assert_eq!(count(&ch, "to.policy").await, 0);

    // A higher-priority policy replaces it: max-length 3 < 5.
    set_policy(
        &a,
        "high",
        json!({"pattern": "^q", "priority": 5, "definition": {"max-length": 3}}),
    )
    .await;
    assert_eq!(count(&ch, "q").await, 3);
    let j = a.get("/api/queues/%2F/q").await.body;
    assert_eq!(j["policy"], "high");
    assert_eq!(j["operator_policy"], Value::Null);
    assert_eq!(j["effective_policy_definition"], json!({"max-length": 3}));
    // A tie goes to the name that sorts first ("a-tie" < "high").
    set_policy(
        &a,
        "a-tie",
        json!({"pattern": "q", "priority": 5, "definition": {"max-length": 4}}),
    )
    .await;
    assert_eq!(a.get("/api/queues/%2F/q").await.body["policy"], "a-tie");
    clear_policy(&a, "a-tie").await;

    // The operator policy caps the policy: the lower of the two.
    set_op_policy(
        &a,
        "cap",
        json!({"pattern": ".*", "apply-to": "queues", "definition": {"max-length": 2, "message-ttl": 60000}}),
    )
    .await;
    assert_eq!(count(&ch, "q").await, 2);
    let j = a.get("/api/queues/%2F/q").await.body;
    assert_eq!(j["policy"], "high");
    assert_eq!(j["operator_policy"], "cap");
    assert_eq!(
        j["effective_policy_definition"],
        json!({"max-length": 2, "message-ttl": 60000})
    );
    // An operator policy above the policy leaves the policy's value.
    set_op_policy(
        &a,
        "cap",
        json!({"pattern": ".*", "definition": {"max-length": 100}}),
    )
    .await;
    publish_n(&ch, "q", 5, b"x").await;
    assert_eq!(count(&ch, "q").await, 3);
    // Both gone: the argument alone (5).
    clear_policy(&a, "high").await;
    clear_policy(&a, "low").await;
    assert_eq!(a.delete("/api/operator-policies/%2F/cap").await.status, 204);
    publish_n(&ch, "q", 5, b"x").await;
    assert_eq!(count(&ch, "q").await, 5);
    let j = a.get("/api/queues/%2F/q").await.body;
    assert_eq!(j["policy"], Value::Null);
    assert_eq!(j["effective_policy_definition"], json!({}));

    // A queue declared after the policy gets it from the start.
    set_policy(
        &a,
        "new",
        json!({"pattern": "^fresh$", "definition": {"max-length": 1}}),
    )
    .await;
    declare_queue(&ch, "fresh").await;
    publish_n(&ch, "fresh", 3, b"x").await;
    assert_eq!(count(&ch, "fresh").await, 1);
    b.stop().await;
}

#[tokio::test]
async fn bad_policies_are_400_with_rabbitmq_texts_and_change_nothing() {
    let b = TestBroker::start().await;
    let a = api(&b);
    set_policy(
        &a,
        "keep",
        json!({"pattern": "^k", "definition": {"max-length": 7}}),
    )
    .await;
    let before = a.get("/api/policies").await.body;
    let cases = [
        (
            json!({"pattern": "(", "definition": {"max-length": 1}}),
            "pattern should be regular expression but is invalid",
        ),
        (
            json!({"pattern": ".*", "definition": {"max-priority": 10}}),
            "[{<<\"max-priority\">>,10}] are not recognised policy settings",
        ),
        (
            json!({"pattern": ".*", "definition": {"no-such-key": true}}),
            "are not recognised policy settings",
        ),
        (
            json!({"pattern": ".*", "definition": {"message-ttl": "soon"}}),
            "<<\"soon\">> is not a valid message TTL",
        ),
        (
            json!({"pattern": ".*", "definition": {"max-length": -1}}),
            "-1 is not a valid maximum length",
        ),
        (
            json!({"pattern": ".*", "definition": {"expires": 0}}),
            "0 is not a valid queue expiry",
        ),
        (
            json!({"pattern": ".*", "definition": {"overflow": "drop-tail"}}),
            "<<\"drop-tail\">> is not a valid overflow value",
        ),
        (
            json!({"pattern": ".*", "definition": {"dead-letter-exchange": 5}}),
            "5 is not a valid dead letter exchange name",
        ),
        (
            json!({"pattern": ".*", "apply-to": "bindings", "definition": {"max-length": 1}}),
            "apply-to 'bindings' unrecognised",
        ),
        (
            json!({"pattern": ".*", "priority": "top", "definition": {"max-length": 1}}),
            "priority should be a number",
        ),
        (
            json!({"pattern": ".*", "definition": {}}),
            "no policy provided",
        ),
    ];
    for (body, text) in cases {
        // Replacing an existing policy with a bad one changes nothing either.
        let r = a.put("/api/policies/%2F/keep", body.clone()).await;
        assert_eq!(r.status, 400, "{body}: {}", r.text);
        assert_eq!(r.body["error"], "bad_request");
        let reason = r.body["reason"].as_str().unwrap();
        assert!(reason.starts_with("Validation failed"), "{reason}");
        assert!(reason.contains(text), "{body}: {reason}");
    }
    // missing keys, as RabbitMQ's API names them
    let r = a
        .put("/api/policies/%2F/keep", json!({"pattern": ".*"}))
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.body["reason"], "[{key_missing,definition}]");
    // an operator policy takes limits and TTLs only
    let r = a
        .put(
            "/api/operator-policies/%2F/op",
            json!({"pattern": ".*", "definition": {"alternate-exchange": "x"}}),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(r.text.contains("are not recognised policy settings"));
    // malformed JSON, an unknown vhost
    assert_eq!(a.put_raw("/api/policies/%2F/keep", "{").await.status, 400);
    assert_eq!(
        a.put(
            "/api/policies/nope/p",
            json!({"pattern": ".*", "definition": {"max-length": 1}})
        )
        .await
        .status,
        404
    );
    assert_eq!(a.get("/api/policies").await.body, before);
    assert_eq!(a.get("/api/operator-policies").await.body, json!([]));
    assert_eq!(a.get("/api/policies/%2F/missing").await.status, 404);
    assert_eq!(a.delete("/api/policies/%2F/missing").await.status, 404);
    // the shape RabbitMQ answers with
    assert_eq!(
        a.get("/api/policies/%2F/keep").await.body,
        json!({"vhost": "/", "name": "keep", "pattern": "^k", "apply-to": "all",
               "definition": {"max-length": 7}, "priority": 0})
    );
    b.stop().await;
}

#[tokio::test]
async fn policymakers_set_policies_others_may_not() {
    let b = TestBroker::start().await;
    let a = api(&b);
    for (user, tags) in [("pm", "policymaker"), ("mon", "monitoring")] {
        assert_eq!(
            a.put(
                &format!("/api/users/{user}"),
                json!({"password": "pw", "tags": tags})
            )
            .await
            .status,
            201
        );
        assert!(matches!(
            a.put(
                &format!("/api/permissions/%2F/{user}"),
                json!({"configure": ".*", "write": ".*", "read": ".*"})
            )
            .await
            .status,
            201 | 204
        ));
    }
    let body = json!({"pattern": ".*", "definition": {"max-length": 1}});
    let pm = a.as_user("pm", "pw");
    assert_eq!(
        pm.put("/api/policies/%2F/p", body.clone()).await.status,
        201
    );
    assert_eq!(
        pm.put("/api/operator-policies/%2F/p", body.clone())
            .await
            .status,
        401,
        "operator policies are for administrators"
    );
    let mon = a.as_user("mon", "pw");
    assert_eq!(mon.put("/api/policies/%2F/q", body).await.status, 401);
    assert_eq!(
        mon.get("/api/policies")
            .await
            .body
            .as_array()
            .unwrap()
            .len(),
        1
    );
    b.stop().await;
}

#[tokio::test]
async fn policies_survive_a_restart() {
    let mut b = TestBroker::start().await;
    let a = api(&b);
    {
        let (_c, ch) = confirm_channel(&b).await;
        declare_queue_with(&ch, "keep", durable(), FieldTable::default()).await;
        for i in 0..5 {
            publish_confirmed(&ch, "", "keep", format!("{i}").as_bytes(), persistent()).await;
        }
    }
    set_policy(
        &a,
        "len",
        json!({"pattern": "^keep$", "priority": 3, "apply-to": "queues", "definition": {"max-length": 4}}),
    )
    .await;
    set_op_policy(
        &a,
        "cap",
        json!({"pattern": "^keep$", "definition": {"max-length": 3}}),
    )
    .await;
    // a predeclared exchange takes its policy after a restart too
    {
        let (_c, ch) = confirm_channel(&b).await;
        declare_queue_with(&ch, "caught", durable(), FieldTable::default()).await;
        bind_queue(&ch, "caught", "amq.fanout", "").await;
    }
    set_policy(
        &a,
        "ae",
        json!({"pattern": "^amq\\.direct$", "apply-to": "exchanges",
               "definition": {"alternate-exchange": "amq.fanout"}}),
    )
    .await;
    let policies = a.get("/api/policies").await.body;
    let ops = a.get("/api/operator-policies").await.body;
    b.restart().await;
    let a = api(&b);
    assert_eq!(a.get("/api/policies").await.body, policies);
    assert_eq!(a.get("/api/operator-policies").await.body, ops);
    let j = a.get("/api/queues/%2F/keep").await.body;
    assert_eq!(j["policy"], "len");
    assert_eq!(j["operator_policy"], "cap");
    let (_c, ch) = confirm_channel(&b).await;
    assert_eq!(count(&ch, "keep").await, 3);
    for i in 5..8 {
        publish_confirmed(&ch, "", "keep", format!("{i}").as_bytes(), persistent()).await;
    }
    assert_eq!(drain(&ch, "keep").await, strs(&["5", "6", "7"]));
    publish_confirmed(&ch, "amq.direct", "nowhere", b"ae", persistent()).await;
    assert_eq!(drain(&ch, "caught").await, strs(&["ae"]));
    // cleared policies stay cleared
    clear_policy(&a, "len").await;
    clear_policy(&a, "ae").await;
    b.restart().await;
    let a = api(&b);
    assert_eq!(a.get("/api/policies").await.body, json!([]));
    b.stop().await;
}

#[tokio::test]
async fn definitions_round_trip_policies_and_limits() {
    let b = TestBroker::start().await;
    let a = api(&b);
    assert_eq!(a.put("/api/vhosts/shop", json!({})).await.status, 201);
    assert_eq!(
        a.put("/api/users/app", json!({"password": "pw", "tags": ""}))
            .await
            .status,
        201
    );
    let r = a
        .put(
            "/api/policies/shop/ttl",
            json!({"pattern": "^orders\\.", "apply-to": "queues", "priority": 2,
                   "definition": {"message-ttl": 1000, "dead-letter-exchange": "dlx"}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = a
        .put(
            "/api/operator-policies/shop/cap",
            json!({"pattern": ".*", "apply-to": "queues", "definition": {"max-length": 1000}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    for (path, v) in [
        ("/api/vhost-limits/shop/max-connections", 10),
        ("/api/vhost-limits/shop/max-queues", 20),
        ("/api/user-limits/app/max-channels", 5),
    ] {
        let r = a.put(path, json!({"value": v})).await;
        assert_eq!(r.status, 204, "{path}: {}", r.text);
    }
    let exported = a.get("/api/definitions").await.body;
    assert_eq!(
        exported["policies"],
        json!([{"vhost": "shop", "name": "ttl", "pattern": "^orders\\.", "apply-to": "queues",
                "definition": {"message-ttl": 1000, "dead-letter-exchange": "dlx"}, "priority": 2}])
    );
    let params = exported["parameters"].as_array().unwrap();
    assert!(
        params.contains(&json!({"value": {"max-connections": 10, "max-queues": 20},
        "vhost": "shop", "component": "vhost-limits", "name": "limits"}))
    );
    assert!(params
        .iter()
        .any(|p| p["component"] == "operator_policy" && p["name"] == "cap"));
    let app = exported["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "app")
        .unwrap();
    assert_eq!(app["limits"], json!({"max-channels": 5}));
    let scoped = a.get("/api/definitions/shop").await.body;
    assert_eq!(scoped["policies"][0]["name"], "ttl");
    assert!(scoped["policies"][0].get("vhost").is_none());

    // Into a fresh broker: the same document comes back.
    let b2 = TestBroker::start().await;
    let a2 = api(&b2);
    let r = a2.post("/api/definitions", exported.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.body.get("note").is_none(), "{}", r.text);
    assert_eq!(a2.get("/api/definitions").await.body, exported);
    // A bad policy in a document: 400, nothing imported.
    let mut bad = exported.clone();
    bad["policies"][0]["definition"] = json!({"max-priority": 5});
    let b3 = TestBroker::start().await;
    let a3 = api(&b3);
    let before = a3.get("/api/definitions").await.body;
    let r = a3.post("/api/definitions", bad).await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(
        r.text.contains("not recognised policy settings"),
        "{}",
        r.text
    );
    assert_eq!(a3.get("/api/definitions").await.body, before);
    // a vhost-scoped document carries the vhost's policies and parameters
    assert_eq!(a3.put("/api/vhosts/shop", json!({})).await.status, 201);
    let r = a3.post("/api/definitions/shop", scoped.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(a3.get("/api/definitions/shop").await.body, scoped);
    assert_eq!(
        a3.get("/api/vhost-limits/shop").await.body[0]["value"],
        json!({"max-connections": 10, "max-queues": 20})
    );
    b3.stop().await;
    b2.stop().await;
    b.stop().await;
}

fn keyed(key: &str) -> BasicProperties {
    BasicProperties::default()
        .with_headers(table(&[("x-deduplication-header", key)]))
        .with_delivery_mode(2)
}

#[tokio::test]
async fn lepus_deduplication_keys_on_queues_and_exchanges() {
    let mut b = TestBroker::start().await;
    let a = api(&b);
    {
        let (_c, ch) = confirm_channel(&b).await;
        declare_queue_with(&ch, "dd", durable(), FieldTable::default()).await;
        set_policy(
            &a,
            "dd",
            json!({"pattern": "^dd$", "apply-to": "queues",
                   "definition": {"message-deduplication": true, "cache-size": 100}}),
        )
        .await;
        for k in ["a", "a", "b"] {
            publish_confirmed(&ch, "", "dd", k.as_bytes(), keyed(k)).await;
        }
        assert_eq!(count(&ch, "dd").await, 2);
    }
    // the cache of a durable queue survives a restart, as with the argument
    b.restart().await;
    let a = api(&b);
    let (_c, ch) = confirm_channel(&b).await;
    publish_confirmed(&ch, "", "dd", b"a", keyed("a")).await;
    assert_eq!(count(&ch, "dd").await, 2);
    clear_policy(&a, "dd").await;
    for _ in 0..2 {
        publish_confirmed(&ch, "", "dd", b"a", keyed("a")).await;
    }
    assert_eq!(
        count(&ch, "dd").await,
        4,
        "no deduplication without the policy"
    );

    // on an exchange: duplicates are not routed
    declare_exchange_with(
        &ch,
        "fan",
        ExchangeKind::Fanout,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await;
    declare_queue(&ch, "fan.q").await;
    bind_queue(&ch, "fan.q", "fan", "").await;
    set_policy(
        &a,
        "fan",
        json!({"pattern": "^fan$", "apply-to": "exchanges",
               "definition": {"message-deduplication": true}}),
    )
    .await;
    for k in ["x", "x", "y"] {
        publish_confirmed(&ch, "fan", "", k.as_bytes(), keyed(k)).await;
    }
    assert_eq!(count(&ch, "fan.q").await, 2);
    // a wrong type is refused
    let r = a
        .put(
            "/api/policies/%2F/bad",
            json!({"pattern": ".*", "definition": {"message-deduplication": "yes"}}),
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(
        r.text.contains("is not a valid deduplication flag"),
        "{}",
        r.text
    );
    b.stop().await;
}
