//! The HTTP management API over real HTTP against a running broker, with
//! real AMQP clients (lapin) making the traffic it shows.

mod common;

use common::http::Api;
use common::*;
use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::BasicProperties;
use serde_json::{json, Value};
use std::time::Duration;

fn api(b: &TestBroker) -> Api {
    Api::new(&b.mgmt_url())
}

async fn publish_n(ch: &lapin::Channel, rk: &str, n: usize) {
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .ok();
    for i in 0..n {
        publish_confirmed(
            ch,
            "",
            rk,
            format!("m{i}").as_bytes(),
            BasicProperties::default(),
        )
        .await;
    }
}

#[tokio::test]
async fn authentication_and_user_tags() {
    let b = TestBroker::start().await;
    let a = api(&b);
    // no credentials, bad credentials
    let r = a.anonymous().get("/api/overview").await;
    assert_eq!(r.status, 401);
    assert!(r.www_authenticate.unwrap().starts_with("Basic"));
    assert_eq!(r.body["error"], "not_authorised");
    assert_eq!(
        a.as_user("guest", "wrong")
            .get("/api/overview")
            .await
            .status,
        401
    );
    assert_eq!(
        a.as_user("nobody", "x").get("/api/queues").await.status,
        401
    );
    let r = a
        .anonymous()
        .request(
            "GET",
            "/api/overview",
            None,
            &[("Authorization", "Bearer abc")],
        )
        .await;
    assert_eq!(r.status, 401);

    // a user without a management tag cannot use the API at all
    assert_eq!(
        a.put("/api/users/plain", json!({"password": "p", "tags": ""}))
            .await
            .status,
        201
    );
    let r = a.as_user("plain", "p").get("/api/overview").await;
    assert_eq!(
        (r.status, r.body["reason"].as_str()),
        (401, Some("Not management user"))
    );

    // management: own vhosts only, no users, no definitions
    assert_eq!(
        a.put(
            "/api/users/mgr",
            json!({"password": "p", "tags": "management"})
        )
        .await
        .status,
        201
    );
    assert_eq!(a.put("/api/vhosts/other", json!({})).await.status, 201);
    assert_eq!(
        a.put(
            "/api/permissions/%2F/mgr",
            json!({"configure": "^mgr-.*", "write": ".*", "read": ".*"})
        )
        .await
        .status,
        201
    );
    let m = a.as_user("mgr", "p");
    assert_eq!(
        m.get("/api/whoami").await.body,
        json!({"name": "mgr", "tags": ["management"]})
    );
    assert_eq!(names(&m.get("/api/vhosts").await.body), vec!["/"]);
    assert_eq!(m.get("/api/queues/other").await.status, 401);
    assert_eq!(m.get("/api/queues/%2F").await.status, 200);
    let r = m.get("/api/users").await;
    assert_eq!(
        (r.status, r.body["reason"].as_str()),
        (401, Some("Not administrator user"))
    );
    assert_eq!(m.get("/api/definitions").await.status, 401);
    assert_eq!(m.put("/api/vhosts/mine", json!({})).await.status, 401);
    // object operations follow the user's AMQP permissions
    assert_eq!(m.put("/api/queues/%2F/mgr-q", json!({})).await.status, 201);
    assert_eq!(
        m.put("/api/queues/%2F/other-q", json!({})).await.status,
        401
    );
    assert_eq!(a.get("/api/queues/%2F/other-q").await.status, 404);

    // monitoring: sees every vhost and every connection, changes no users
    assert_eq!(
        a.put(
            "/api/users/mon",
            json!({"password": "p", "tags": ["monitoring"]})
        )
        .await
        .status,
        201
    );
    let mon = a.as_user("mon", "p");
    assert_eq!(
        names(&mon.get("/api/vhosts").await.body),
        vec!["/", "other"]
    );
    let _c = b.connect().await;
    assert!(eventually(5, || b.connection_count() == 1).await);
    assert_eq!(
        mon.get("/api/connections")
            .await
            .body
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        m.get("/api/connections")
            .await
            .body
            .as_array()
            .unwrap()
            .len(),
        0,
        "not mgr's connection"
    );
    assert_eq!(mon.delete("/api/users/mgr").await.status, 401);

    // guest is a loopback user; the test client is on loopback, so it works
    assert_eq!(a.get("/api/overview").await.status, 200);
    // unknown paths
    assert_eq!(a.get("/api/nothing/here").await.status, 404);
    assert_eq!(a.get("/nothing").await.status, 404);
    b.stop().await;
}

#[tokio::test]
async fn overview_health_and_aliveness() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    // housekeeping must not clear the alarm this test raises by hand
    config.limits.check_interval_ms = 600_000;
    let b = TestBroker::start_with(dir, config).await;
    let a = api(&b);
    let (_c, ch) = b.channel().await;
    ch.queue_declare(
        "ov".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    publish_n(&ch, "ov", 3).await;
    let o = a.get("/api/overview").await;
    assert_eq!(o.status, 200);
    let o = o.body;
    assert_eq!(o["product_name"], "Lepus");
    assert_eq!(o["rabbitmq_version"], "3.10.0");
    assert_eq!(o["queue_totals"]["messages"], 3);
    assert_eq!(o["queue_totals"]["messages_ready"], 3);
    assert_eq!(o["object_totals"]["queues"], 1);
    assert_eq!(o["object_totals"]["connections"], 1);
    assert_eq!(o["object_totals"]["channels"], 1);
    assert_eq!(o["message_stats"]["publish"], 3);
    assert!(o["message_stats"]["publish_details"]["rate"].is_number());
    let listeners = o["listeners"].as_array().unwrap();
    assert_eq!(listeners[0]["port"], b.addr().port());
    assert_eq!(listeners[1]["port"], b.mgmt_addr().port());

    let h = a.get("/api/health/checks/alarms").await;
    assert_eq!((h.status, h.body.clone()), (200, json!({"status": "ok"})));
    b.set_alarm(&["disk free 10 below limit 20"]);
    let h = a.get("/api/health/checks/alarms").await;
    assert_eq!(h.status, 503);
    assert_eq!(h.body["status"], "failed");
    assert!(
        h.body["reason"]
            .as_str()
            .unwrap()
            .contains("disk free 10 below limit 20"),
        "{}",
        h.text
    );
    b.clear_alarm();
    assert_eq!(a.get("/api/health/checks/alarms").await.status, 200);
    assert_eq!(
        a.anonymous().get("/api/health/checks/alarms").await.status,
        401
    );

    let r = a.get("/api/aliveness-test/%2F").await;
    assert_eq!((r.status, r.body.clone()), (200, json!({"status": "ok"})));
    assert_eq!(a.get("/api/aliveness-test/nope").await.status, 404);
    b.stop().await;
}

/// /api/nodes: this node with the fields monitoring tools read; monitoring
/// and administrator users only. A queue's own page lists its consumers.
#[tokio::test]
async fn nodes_and_queue_consumer_details() {
    let b = TestBroker::start().await;
    let a = api(&b);
    let node = a.get("/api/overview").await.body["node"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = a.get("/api/nodes").await;
    assert_eq!(r.status, 200);
    let n = &r.body[0];
    assert_eq!(n["name"], json!(node));
    assert_eq!(n["running"], json!(true));
    for k in [
        "mem_used",
        "mem_limit",
        "disk_free",
        "fd_used",
        "fd_total",
        "uptime",
    ] {
        assert!(n[k].as_u64().is_some(), "{k} in {n}");
    }
    assert!(n["mem_used"].as_u64().unwrap() > 0);
    assert!(n["fd_used"].as_u64().unwrap() > 0);
    assert_eq!(n["mem_alarm"], json!(false));
    assert_eq!(n["disk_free_alarm"], json!(false));
    assert_eq!(
        a.get(&format!("/api/nodes/{node}")).await.body["name"],
        json!(node)
    );
    assert_eq!(a.get("/api/nodes/rabbit@elsewhere").await.status, 404);
    assert_eq!(
        a.put(
            "/api/users/mgr",
            json!({"password": "p", "tags": "management"})
        )
        .await
        .status,
        201
    );
    let r = a.as_user("mgr", "p").get("/api/nodes").await;
    assert_eq!(
        (r.status, r.body["reason"].as_str()),
        (401, Some("Not monitor user"))
    );

    let (_c, ch) = b.channel().await;
    ch.queue_declare(
        "cq".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let _cons = ch
        .basic_consume(
            "cq".into(),
            "watcher".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let q = a.get("/api/queues/%2F/cq").await.body;
    assert_eq!(q["consumer_details"][0]["consumer_tag"], json!("watcher"));
    assert_eq!(q["consumer_details"][0]["queue"]["name"], json!("cq"));
    b.stop().await;
}

#[tokio::test]
async fn vhosts() {
    let b = TestBroker::start().await;
    let a = api(&b);
    assert_eq!(
        a.put("/api/vhosts/v1", json!({"description": "test"}))
            .await
            .status,
        201
    );
    assert_eq!(a.put("/api/vhosts/v1", json!({})).await.status, 204);
    assert_eq!(
        a.put_raw("/api/vhosts/v2", "").await.status,
        201,
        "an empty body is fine"
    );
    assert_eq!(a.put_raw("/api/vhosts/v3", "{not json").await.status, 400);
    assert!(!b.vhost_exists("v3"));
    assert_eq!(
        names(&a.get("/api/vhosts").await.body),
        vec!["/", "v1", "v2"]
    );
    let v = a.get("/api/vhosts/%2F").await;
    assert_eq!(v.status, 200);
    assert_eq!(v.body["name"], "/");
    assert_eq!(v.body["messages"], 0);
    assert_eq!(a.get("/api/vhosts/nope").await.status, 404);
    // a connection to a deleted vhost is closed
    assert_eq!(
        a.put(
            "/api/permissions/v1/guest",
            json!({"configure": ".*", "write": ".*", "read": ".*"})
        )
        .await
        .status,
        201
    );
    let c = connect(&format!("amqp://guest:guest@{}/v1", b.addr())).await;
    assert_eq!(a.delete("/api/vhosts/v1").await.status, 204);
    assert!(
        eventually(5, || !c.status().connected()).await,
        "connection to the deleted vhost closed"
    );
    assert_eq!(a.delete("/api/vhosts/v1").await.status, 404);
    assert_eq!(a.get("/api/vhosts/v1").await.status, 404);
    assert!(!b.vhost_exists("v1"));
    b.stop().await;
}

#[tokio::test]
async fn users_and_permissions() {
    let b = TestBroker::start().await;
    let a = api(&b);
    assert_eq!(
        a.put(
            "/api/users/alice",
            json!({"password": "pw", "tags": "management,monitoring"})
        )
        .await
        .status,
        201
    );
    let u = a.get("/api/users/alice").await.body;
    assert_eq!(u["tags"], json!(["management", "monitoring"]));
    assert_eq!(u["hashing_algorithm"], "rabbit_password_hashing_sha256");
    assert_eq!(
        a.as_user("alice", "pw").get("/api/whoami").await.status,
        200
    );
    // same hash for another user: same password
    let hash = u["password_hash"].as_str().unwrap().to_owned();
    assert_eq!(
        a.put(
            "/api/users/alice2",
            json!({"password_hash": hash, "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": ["management"]})
        )
        .await
        .status,
        201
    );
    assert_eq!(
        a.as_user("alice2", "pw").get("/api/whoami").await.status,
        200
    );
    // update: tags only, password kept
    assert_eq!(
        a.put("/api/users/alice", json!({"tags": ["administrator"]}))
            .await
            .status,
        204
    );
    assert_eq!(a.as_user("alice", "pw").get("/api/users").await.status, 200);
    // errors
    assert_eq!(
        a.put("/api/users/carol", json!({"tags": "x"})).await.status,
        400,
        "no password"
    );
    assert_eq!(
        a.put("/api/users/carol", json!({"password_hash": "not base64!"}))
            .await
            .status,
        400
    );
    assert_eq!(
        a.put(
            "/api/users/carol",
            json!({"password_hash": hash, "hashing_algorithm": "rabbit_password_hashing_md5"})
        )
        .await
        .status,
        400
    );
    assert_eq!(
        a.put("/api/users/carol", json!({"password": "x", "tags": 5}))
            .await
            .status,
        400
    );
    assert_eq!(a.put_raw("/api/users/carol", "[1,").await.status, 400);
    assert_eq!(a.get("/api/users/carol").await.status, 404);
    assert_eq!(
        names(&a.get("/api/users").await.body),
        vec!["alice", "alice2", "guest"]
    );

    // permissions
    let p = json!({"configure": "^a-.*", "write": ".*", "read": ".*"});
    assert_eq!(
        a.put("/api/permissions/nope/alice", p.clone()).await.status,
        404
    );
    assert_eq!(
        a.put("/api/permissions/%2F/nobody", p.clone()).await.status,
        404
    );
    assert_eq!(
        a.put("/api/permissions/%2F/alice", json!({"configure": ".*"}))
            .await
            .status,
        400
    );
    assert_eq!(
        a.put(
            "/api/permissions/%2F/alice",
            json!({"configure": "(", "write": "", "read": ""})
        )
        .await
        .status,
        400
    );
    assert_eq!(a.get("/api/permissions/%2F/alice").await.status, 404);
    assert_eq!(
        a.put("/api/permissions/%2F/alice", p.clone()).await.status,
        201
    );
    assert_eq!(
        a.put("/api/permissions/%2F/alice", p.clone()).await.status,
        204
    );
    let g = a.get("/api/permissions/%2F/alice").await.body;
    assert_eq!(
        g,
        json!({"user": "alice", "vhost": "/", "configure": "^a-.*", "write": ".*", "read": ".*"})
    );
    assert_eq!(
        a.get("/api/permissions")
            .await
            .body
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        a.get("/api/users/alice/permissions")
            .await
            .body
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        a.get("/api/vhosts/%2F/permissions")
            .await
            .body
            .as_array()
            .unwrap()
            .len(),
        2
    );
    // the permission is real over AMQP too
    let c = connect(&format!("amqp://alice:pw@{}/%2f", b.addr())).await;
    let ch = c.create_channel().await.unwrap();
    let e = ch
        .queue_declare(
            "b-q".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(reply_code(&e), Some(403));
    assert_eq!(a.delete("/api/permissions/%2F/alice").await.status, 204);
    assert_eq!(a.delete("/api/permissions/%2F/alice").await.status, 404);
    assert_eq!(a.delete("/api/users/alice").await.status, 204);
    assert_eq!(a.delete("/api/users/alice").await.status, 404);
    assert_eq!(
        a.as_user("alice", "pw").get("/api/whoami").await.status,
        401
    );
    b.stop().await;
}

#[tokio::test]
async fn queues_stats_rates_and_purge() {
    let b = TestBroker::start().await;
    let a = api(&b);
    assert_eq!(
        a.put(
            "/api/queues/%2F/work",
            json!({"durable": true, "arguments": {"x-max-length": 1000}})
        )
        .await
        .status,
        201
    );
    assert_eq!(
        a.put(
            "/api/queues/%2F/work",
            json!({"durable": true, "arguments": {"x-max-length": 1000}})
        )
        .await
        .status,
        204
    );
    let r = a
        .put("/api/queues/%2F/work", json!({"durable": false}))
        .await;
    assert_eq!(r.status, 400, "inequivalent: {}", r.text);
    assert!(r.body["reason"]
        .as_str()
        .unwrap()
        .contains("inequivalent arg 'durable'"));
    assert_eq!(
        a.put(
            "/api/queues/%2F/bad",
            json!({"arguments": {"x-max-length": -1}})
        )
        .await
        .status,
        400
    );
    assert_eq!(
        a.put("/api/queues/%2F/bad", json!({"arguments": 7}))
            .await
            .status,
        400
    );
    assert_eq!(a.put_raw("/api/queues/%2F/bad", "{").await.status, 400);
    assert_eq!(
        a.put("/api/queues/%2F/amq.nope", json!({})).await.status,
        403
    );
    assert_eq!(a.put("/api/queues/nope/q", json!({})).await.status, 404);

    let (_c, ch) = b.channel().await;
    publish_n(&ch, "work", 10).await;
    // a consumer with 4 unacked, then 2 acked
    let (_c2, ch2) = b.channel().await;
    ch2.basic_qos(4, BasicQosOptions::default()).await.unwrap();
    let mut cons = ch2
        .basic_consume(
            "work".into(),
            "tag-1".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut got = vec![];
    for _ in 0..4 {
        got.push(within(5, cons.next()).await.unwrap().unwrap());
    }
    for d in &got[..2] {
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    let work = b.queue("/", "work").unwrap();
    assert!(eventually(5, || work.unacked_count() == 4 && work.message_count() == 4).await);
    let q = a.get("/api/queues/%2F/work").await.body;
    for k in [
        "name",
        "vhost",
        "durable",
        "auto_delete",
        "exclusive",
        "arguments",
        "messages",
        "messages_ready",
        "messages_unacknowledged",
        "consumers",
        "memory",
        "message_stats",
    ] {
        assert!(q.get(k).is_some(), "missing {k} in {q}");
    }
    assert_eq!(q["arguments"], json!({"x-max-length": 1000}));
    assert_eq!(
        (
            q["messages"].as_u64(),
            q["messages_ready"].as_u64(),
            q["messages_unacknowledged"].as_u64()
        ),
        (Some(8), Some(4), Some(4))
    );
    assert_eq!(q["consumers"], 1);
    assert_eq!(q["exclusive"], false);
    let ms = &q["message_stats"];
    assert_eq!(
        (
            ms["publish"].as_u64(),
            ms["deliver_get"].as_u64(),
            ms["ack"].as_u64()
        ),
        (Some(10), Some(6), Some(2))
    );
    assert!(ms["publish_details"]["rate"].is_number() && ms["ack_details"]["rate"].is_number());
    assert_eq!(names(&a.get("/api/queues").await.body), vec!["work"]);
    assert_eq!(names(&a.get("/api/queues/%2F").await.body), vec!["work"]);
    assert_eq!(a.get("/api/queues/nope").await.status, 404);
    assert_eq!(a.get("/api/queues/%2F/nope").await.status, 404);

    // rates: publish steadily until the samples (once a second) show a rate,
    // for at most 15 s (a starved sampler may need more than two periods)
    let start = std::time::Instant::now();
    let mut last_check = start;
    loop {
        for _ in 0..20 {
            publish_confirmed(&ch, "", "work", b"r", BasicProperties::default()).await;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        if last_check.elapsed() < Duration::from_millis(250) {
            continue;
        }
        last_check = std::time::Instant::now();
        let q = a.get("/api/queues/%2F/work").await.body;
        let rate = q["message_stats"]["publish_details"]["rate"]
            .as_f64()
            .unwrap();
        let overall = a.get("/api/overview").await.body["message_stats"]["publish_details"]["rate"]
            .as_f64()
            .unwrap();
        if rate > 0.0 && overall > 0.0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "publish rate {rate} (overview {overall}) in {}",
            q["message_stats"]
        );
    }

    // purge takes the ready ones, not the unacked
    assert_eq!(a.delete("/api/queues/%2F/work/contents").await.status, 204);
    assert_eq!(work.message_count(), 0);
    assert_eq!(work.unacked_count(), 4);
    assert_eq!(a.delete("/api/queues/%2F/nope/contents").await.status, 404);
    assert_eq!(a.delete("/api/queues/nope/work/contents").await.status, 404);

    // delete with conditions
    assert_eq!(
        a.delete("/api/queues/%2F/work?if-unused=true").await.status,
        400
    );
    drop(cons);
    ch2.close(200, "bye".into()).await.unwrap();
    assert!(
        eventually(5, || work.message_count() == 4).await,
        "unacked ones came back"
    );
    assert_eq!(
        a.delete("/api/queues/%2F/work?if-empty=true").await.status,
        400
    );
    assert_eq!(a.delete("/api/queues/%2F/work").await.status, 204);
    assert_eq!(a.delete("/api/queues/%2F/work").await.status, 404);
    assert!(b.queue("/", "work").is_none());
    b.stop().await;
}

#[tokio::test]
async fn get_messages_from_a_queue() {
    let b = TestBroker::start().await;
    let a = api(&b);
    let (_c, ch) = b.channel().await;
    ch.queue_declare("g".into(), durable(), FieldTable::default())
        .await
        .unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut headers = FieldTable::default();
    headers.insert("h".into(), lapin::types::AMQPValue::LongString("v".into()));
    let props = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("text/plain".into())
        .with_message_id("id-1".into())
        .with_headers(headers);
    for (body, p) in [
        (b"hello".to_vec(), props),
        (vec![0xff, 0x00, 0xfe], BasicProperties::default()),
        (b"third".to_vec(), BasicProperties::default()),
    ] {
        publish_confirmed(&ch, "", "g", &body, p).await;
    }
    let get = |body: Value| {
        let a = a.clone();
        async move { a.post("/api/queues/%2F/g/get", body).await }
    };
    let r = get(
        json!({"count": 2, "ackmode": "ack_requeue_true", "encoding": "auto", "truncate": 50000}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let m = r.body.as_array().unwrap();
    assert_eq!(m.len(), 2);
    assert_eq!(m[0]["payload"], "hello");
    assert_eq!(m[0]["payload_encoding"], "string");
    assert_eq!(m[0]["payload_bytes"], 5);
    assert_eq!(m[0]["redelivered"], false);
    assert_eq!(m[0]["exchange"], "");
    assert_eq!(m[0]["routing_key"], "g");
    assert_eq!(m[0]["message_count"], 2);
    assert_eq!(m[1]["message_count"], 1);
    assert_eq!(
        m[0]["properties"],
        json!({"content_type": "text/plain", "delivery_mode": 2, "headers": {"h": "v"}, "message_id": "id-1"})
    );
    assert_eq!(m[1]["payload_encoding"], "base64", "not UTF-8");
    assert_eq!(m[1]["payload"], "/wD+");
    // requeued in place: the same order, now redelivered
    let r = get(
        json!({"count": 5, "ackmode": "reject_requeue_true", "encoding": "base64", "truncate": 2}),
    )
    .await;
    let m = r.body.as_array().unwrap().clone();
    assert_eq!(m.len(), 3);
    assert_eq!(
        (m[0]["redelivered"].as_bool(), m[2]["redelivered"].as_bool()),
        (Some(true), Some(false))
    );
    assert_eq!(m[0]["payload"], "aGU=", "truncated to 2 bytes, base64");
    assert_eq!(m[0]["payload_bytes"], 5);
    let q = b.queue("/", "g").unwrap();
    assert_eq!(q.message_count(), 3);
    // consumed for good
    let r = get(json!({"count": 1, "ackmode": "ack_requeue_false", "encoding": "auto"})).await;
    assert_eq!(r.body[0]["payload"], "hello");
    assert_eq!(q.message_count(), 2);
    // the requeued ones reach an AMQP consumer, marked redelivered
    let d = ch
        .basic_get("g".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (d.delivery.data.clone(), d.delivery.redelivered),
        (vec![0xff, 0x00, 0xfe], true)
    );
    // errors
    assert_eq!(
        get(json!({"ackmode": "ack_requeue_true", "encoding": "auto"}))
            .await
            .status,
        400
    );
    assert_eq!(
        get(json!({"count": 1, "ackmode": "keep", "encoding": "auto"}))
            .await
            .status,
        400
    );
    assert_eq!(
        get(json!({"count": 1, "ackmode": "ack_requeue_true", "encoding": "hex"}))
            .await
            .status,
        400
    );
    assert_eq!(
        a.post_raw("/api/queues/%2F/g/get", "{\"count\":")
            .await
            .status,
        400
    );
    assert_eq!(
        a.post(
            "/api/queues/%2F/nope/get",
            json!({"count": 1, "ackmode": "ack_requeue_true"})
        )
        .await
        .status,
        404
    );
    assert_eq!(
        a.post(
            "/api/queues/nope/g/get",
            json!({"count": 1, "ackmode": "ack_requeue_true"})
        )
        .await
        .status,
        404
    );
    assert_eq!(
        get(json!({"count": 0, "ackmode": "ack_requeue_true"}))
            .await
            .body,
        json!([])
    );
    b.stop().await;
}

#[tokio::test]
async fn exchanges_and_publish() {
    let b = TestBroker::start().await;
    let a = api(&b);
    assert_eq!(
        a.put(
            "/api/exchanges/%2F/ex",
            json!({"type": "topic", "durable": true})
        )
        .await
        .status,
        201
    );
    assert_eq!(
        a.put("/api/exchanges/%2F/ex", json!({"type": "topic"}))
            .await
            .status,
        204
    );
    assert_eq!(
        a.put("/api/exchanges/%2F/ex", json!({"type": "fanout"}))
            .await
            .status,
        400,
        "inequivalent"
    );
    assert_eq!(
        a.put("/api/exchanges/%2F/ex2", json!({})).await.status,
        400,
        "type missing"
    );
    assert_eq!(
        a.put("/api/exchanges/%2F/ex2", json!({"type": "x-nope"}))
            .await
            .status,
        400
    );
    assert_eq!(
        a.put_raw("/api/exchanges/%2F/ex2", "nope").await.status,
        400
    );
    assert_eq!(
        a.put("/api/exchanges/%2F/amq.default", json!({"type": "direct"}))
            .await
            .status,
        403
    );
    assert_eq!(
        a.put("/api/exchanges/%2F/amq.new", json!({"type": "direct"}))
            .await
            .status,
        403
    );
    assert_eq!(
        a.put("/api/exchanges/nope/ex", json!({"type": "direct"}))
            .await
            .status,
        404
    );
    assert_eq!(
        a.put("/api/exchanges/%2F/alt", json!({"type": "fanout", "internal": true, "auto_delete": false, "arguments": {"k": "v"}}))
            .await
            .status,
        201
    );
    let e = a.get("/api/exchanges/%2F/alt").await.body;
    assert_eq!(
        (
            e["type"].as_str(),
            e["internal"].as_bool(),
            e["durable"].as_bool(),
            e["arguments"].clone()
        ),
        (Some("fanout"), Some(true), Some(true), json!({"k": "v"}))
    );
    let d = a.get("/api/exchanges/%2F/amq.default").await;
    assert_eq!((d.status, d.body["name"].as_str()), (200, Some("")));
    let all = names(&a.get("/api/exchanges/%2F").await.body);
    assert_eq!(
        all,
        vec![
            "",
            "alt",
            "amq.direct",
            "amq.fanout",
            "amq.headers",
            "amq.match",
            "amq.topic",
            "ex"
        ]
    );
    assert_eq!(names(&a.get("/api/exchanges").await.body).len(), 8);
    assert_eq!(a.get("/api/exchanges/%2F/nope").await.status, 404);
    assert_eq!(a.get("/api/exchanges/nope").await.status, 404);

    // publish through the API
    assert_eq!(
        a.put("/api/queues/%2F/pq", json!({"durable": true}))
            .await
            .status,
        201
    );
    let pubr = |ex: &str, body: Value| {
        let a = a.clone();
        let path = format!("/api/exchanges/%2F/{ex}/publish");
        async move { a.post(&path, body).await }
    };
    let msg = json!({"properties": {"delivery_mode": 2, "headers": {"n": 1}}, "routing_key": "pq", "payload": "via http", "payload_encoding": "string"});
    let r = pubr("amq.default", msg.clone()).await;
    assert_eq!((r.status, r.body.clone()), (200, json!({"routed": true})));
    let r = pubr("amq.default", json!({"properties": {}, "routing_key": "nowhere", "payload": "x", "payload_encoding": "string"})).await;
    assert_eq!(r.body, json!({"routed": false}));
    let r = pubr("amq.default", json!({"properties": {}, "routing_key": "pq", "payload": "AAEC", "payload_encoding": "base64"})).await;
    assert_eq!(r.body, json!({"routed": true}));
    assert_eq!(pubr("amq.default", json!({"properties": {}, "routing_key": "pq", "payload": "%%", "payload_encoding": "base64"})).await.status, 400);
    assert_eq!(pubr("amq.default", json!({"properties": {}, "routing_key": "pq", "payload": "x", "payload_encoding": "rot13"})).await.status, 400);
    assert_eq!(
        pubr(
            "amq.default",
            json!({"properties": {"bogus": 1}, "routing_key": "pq", "payload": "x"})
        )
        .await
        .status,
        400
    );
    assert_eq!(
        pubr(
            "amq.default",
            json!({"properties": {"user_id": "mallory"}, "routing_key": "pq", "payload": "x"})
        )
        .await
        .status,
        400
    );
    assert_eq!(
        pubr("amq.default", json!({"payload": "x"})).await.status,
        400,
        "routing_key missing"
    );
    assert_eq!(pubr("nope", msg.clone()).await.status, 404);
    assert_eq!(
        pubr("alt", msg.clone()).await.status,
        400,
        "internal exchange"
    );
    assert_eq!(
        a.post("/api/exchanges/nope/amq.default/publish", msg.clone())
            .await
            .status,
        404
    );
    let (_c, ch) = b.channel().await;
    let d = ch
        .basic_get("pq".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.delivery.data, b"via http");
    assert_eq!(d.delivery.properties.delivery_mode(), &Some(2));
    let d = ch
        .basic_get("pq".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.delivery.data, vec![0, 1, 2]);

    // delete
    assert_eq!(a.delete("/api/exchanges/%2F/amq.direct").await.status, 403);
    assert_eq!(a.delete("/api/exchanges/%2F/ex").await.status, 204);
    assert_eq!(a.delete("/api/exchanges/%2F/ex").await.status, 404);
    assert_eq!(a.delete("/api/exchanges/nope/ex").await.status, 404);
    b.stop().await;
}

#[tokio::test]
async fn bindings() {
    let b = TestBroker::start().await;
    let a = api(&b);
    assert_eq!(
        a.put("/api/exchanges/%2F/src", json!({"type": "topic"}))
            .await
            .status,
        201
    );
    assert_eq!(
        a.put("/api/exchanges/%2F/mid", json!({"type": "fanout"}))
            .await
            .status,
        201
    );
    assert_eq!(a.put("/api/queues/%2F/bq", json!({})).await.status, 201);
    let r = a
        .post(
            "/api/bindings/%2F/e/src/q/bq",
            json!({"routing_key": "a.*", "arguments": {}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(
        r.location.as_deref(),
        Some("/api/bindings/%2F/e/src/q/bq/a.%2A")
    );
    let r = a
        .post(
            "/api/bindings/%2F/e/src/e/mid",
            json!({"routing_key": "b.#"}),
        )
        .await;
    assert_eq!(r.status, 201);
    assert_eq!(
        a.post("/api/bindings/%2F/e/mid/q/bq", json!({}))
            .await
            .status,
        201
    );
    let r = a
        .post(
            "/api/bindings/%2F/e/src/q/bq",
            json!({"routing_key": "c", "arguments": {"x": 1}}),
        )
        .await;
    let with_args = r.location.unwrap();
    assert!(with_args.contains("/c~"), "{with_args}");

    let between = a.get("/api/bindings/%2F/e/src/q/bq").await.body;
    assert_eq!(between.as_array().unwrap().len(), 2);
    let one = a.get("/api/bindings/%2F/e/src/q/bq/a.%2A").await;
    assert_eq!(one.status, 200);
    assert_eq!(
        one.body,
        json!({"source": "src", "vhost": "/", "destination": "bq", "destination_type": "queue",
               "routing_key": "a.*", "arguments": {}, "properties_key": "a.*"})
    );
    assert_eq!(a.get(&with_args).await.body["arguments"], json!({"x": 1}));
    let all = a.get("/api/bindings/%2F").await.body;
    assert_eq!(
        all.as_array().unwrap().len(),
        5,
        "4 + the default exchange's: {all}"
    );
    assert_eq!(all[0]["source"], "");
    assert_eq!(a.get("/api/bindings").await.body, all);
    assert_eq!(
        a.get("/api/exchanges/%2F/src/bindings/source")
            .await
            .body
            .as_array()
            .unwrap()
            .len(),
        3
    );
    assert_eq!(
        a.get("/api/exchanges/%2F/mid/bindings/destination")
            .await
            .body
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        a.get("/api/queues/%2F/bq/bindings")
            .await
            .body
            .as_array()
            .unwrap()
            .len(),
        4
    );

    // routing through them: src -b.x-> mid -> bq
    let r = a
        .post(
            "/api/exchanges/%2F/src/publish",
            json!({"properties": {}, "routing_key": "b.x", "payload": "p"}),
        )
        .await;
    assert_eq!(r.body, json!({"routed": true}));
    assert_eq!(b.queue("/", "bq").unwrap().message_count(), 1);

    // errors
    assert_eq!(
        a.post("/api/bindings/%2F/e/nope/q/bq", json!({}))
            .await
            .status,
        404
    );
    assert_eq!(
        a.post("/api/bindings/%2F/e/src/q/nope", json!({}))
            .await
            .status,
        404
    );
    assert_eq!(
        a.post("/api/bindings/%2F/e/src/x/bq", json!({}))
            .await
            .status,
        404
    );
    assert_eq!(
        a.post("/api/bindings/nope/e/src/q/bq", json!({}))
            .await
            .status,
        404
    );
    assert_eq!(
        a.post_raw("/api/bindings/%2F/e/src/q/bq", "{{")
            .await
            .status,
        400
    );
    assert_eq!(
        a.post("/api/bindings/%2F/e/src/q/bq", json!({"arguments": "no"}))
            .await
            .status,
        400
    );
    assert_eq!(
        a.post("/api/bindings/%2F/e/amq.default/q/bq", json!({}))
            .await
            .status,
        403
    );
    assert_eq!(a.get("/api/bindings/%2F/e/src/q/bq/nope").await.status, 404);

    // delete
    assert_eq!(
        a.delete("/api/bindings/%2F/e/src/q/bq/a.%2A").await.status,
        204
    );
    assert_eq!(
        a.delete("/api/bindings/%2F/e/src/q/bq/a.%2A").await.status,
        404
    );
    assert_eq!(a.delete(&with_args).await.status, 204);
    assert_eq!(a.delete("/api/bindings/%2F/e/mid/q/bq/~").await.status, 204);
    assert_eq!(a.get("/api/bindings/%2F/e/src/q/bq").await.body, json!([]));
    b.stop().await;
}

#[tokio::test]
async fn connections_channels_consumers_and_close() {
    let b = TestBroker::start().await;
    let a = api(&b);
    let c = b.connect().await;
    let ch1 = c.create_channel().await.unwrap();
    let ch2 = c.create_channel().await.unwrap();
    ch1.queue_declare(
        "cq".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch2.basic_qos(7, BasicQosOptions::default()).await.unwrap();
    let _cons = ch2
        .basic_consume(
            "cq".into(),
            "the-consumer".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let conns = a.get("/api/connections").await.body;
    let conns = conns.as_array().unwrap();
    assert_eq!(conns.len(), 1);
    let conn = &conns[0];
    assert_eq!(
        (
            conn["user"].as_str(),
            conn["vhost"].as_str(),
            conn["channels"].as_u64()
        ),
        (Some("guest"), Some("/"), Some(2))
    );
    assert_eq!(conn["peer_host"], "127.0.0.1");
    let name = conn["name"].as_str().unwrap().to_owned();
    let enc = percent_encoding::utf8_percent_encode(&name, percent_encoding::NON_ALPHANUMERIC)
        .to_string();
    assert_eq!(
        a.get(&format!("/api/connections/{enc}")).await.body["name"],
        name.as_str()
    );
    assert_eq!(
        a.get("/api/vhosts/%2F/connections")
            .await
            .body
            .as_array()
            .unwrap()
            .len(),
        1
    );

    let chans = a.get("/api/channels").await.body;
    let chans = chans.as_array().unwrap();
    assert_eq!(chans.len(), 2);
    assert_eq!(chans[0]["connection_details"]["name"], name.as_str());
    assert_eq!(chans[1]["consumer_count"], 1);
    assert_eq!(chans[1]["prefetch_count"], 7);
    let chan_name = chans[1]["name"].as_str().unwrap().to_owned();
    let chan_enc =
        percent_encoding::utf8_percent_encode(&chan_name, percent_encoding::NON_ALPHANUMERIC)
            .to_string();
    assert_eq!(
        a.get(&format!("/api/channels/{chan_enc}")).await.body["number"],
        chans[1]["number"]
    );
    assert_eq!(
        a.get(&format!("/api/connections/{enc}/channels"))
            .await
            .body
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        a.get("/api/vhosts/%2F/channels")
            .await
            .body
            .as_array()
            .unwrap()
            .len(),
        2
    );

    let cons = a.get("/api/consumers").await.body;
    assert_eq!(cons.as_array().unwrap().len(), 1);
    let k = &cons[0];
    assert_eq!(k["consumer_tag"], "the-consumer");
    assert_eq!(k["queue"], json!({"name": "cq", "vhost": "/"}));
    assert_eq!(k["ack_required"], true);
    assert_eq!(k["prefetch_count"], 7);
    assert_eq!(k["channel_details"]["connection_name"], name.as_str());
    assert_eq!(a.get("/api/consumers/%2F").await.body, cons);
    assert_eq!(a.get("/api/consumers/nope").await.status, 404);

    // close it
    assert_eq!(a.delete("/api/connections/nope").await.status, 404);
    assert_eq!(a.get("/api/connections/nope").await.status, 404);
    let errors = std::sync::Arc::new(parking_lot::Mutex::new(vec![]));
    let e2 = errors.clone();
    let mut events = c.events_listener();
    tokio::spawn(async move {
        while let Some(e) = events.next().await {
            if let lapin::Event::Error(e) = e {
                e2.lock().push(format!("{e}"));
            }
        }
    });
    let r = a
        .request(
            "DELETE",
            &format!("/api/connections/{enc}"),
            None,
            &[("X-Reason", "maintenance")],
        )
        .await;
    assert_eq!(r.status, 204);
    assert!(eventually(5, || !c.status().connected()).await, "closed");
    let e = ch1
        .queue_declare(
            "x".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await;
    assert!(e.is_err(), "the channel went with its connection");
    assert!(eventually(5, || !errors.lock().is_empty()).await);
    let got = errors.lock().join("; ");
    assert!(got.contains("CONNECTION_FORCED - maintenance"), "{got}");
    assert!(eventually(5, || b.connection_count() == 0).await);
    assert_eq!(a.get("/api/connections").await.body, json!([]));
    assert_eq!(a.get("/api/consumers").await.body, json!([]));
    b.stop().await;
}

/// A raw AMQP client sees exactly RabbitMQ's close: 320 with the given reason.
#[tokio::test]
async fn closing_a_connection_sends_connection_forced() {
    let b = TestBroker::start().await;
    let a = api(&b);
    let c = b.connect().await;
    let errors = std::sync::Arc::new(parking_lot::Mutex::new(vec![]));
    let e2 = errors.clone();
    let mut events = c.events_listener();
    tokio::spawn(async move {
        while let Some(e) = events.next().await {
            if let lapin::Event::Error(e) = e {
                e2.lock().push(format!("{e}"));
            }
        }
    });
    let name = a.get("/api/connections").await.body[0]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    let enc = percent_encoding::utf8_percent_encode(&name, percent_encoding::NON_ALPHANUMERIC)
        .to_string();
    assert_eq!(
        a.delete(&format!("/api/connections/{enc}")).await.status,
        204
    );
    assert!(
        eventually(5, || !errors.lock().is_empty()).await,
        "no error reported"
    );
    let got = errors.lock().join("; ");
    assert!(
        got.contains("CONNECTION_FORCED - Closed via management plugin"),
        "{got}"
    );
    b.stop().await;
}

async fn build_definitions(a: &Api) {
    for (p, body) in [
        ("/api/vhosts/dv", json!({})),
        (
            "/api/users/alice",
            json!({"password": "alice-pw", "tags": ["monitoring"]}),
        ),
        (
            "/api/permissions/dv/alice",
            json!({"configure": "^a\\..*", "write": ".*", "read": ".*"}),
        ),
        (
            "/api/permissions/dv/guest",
            json!({"configure": ".*", "write": ".*", "read": ".*"}),
        ),
        (
            "/api/exchanges/dv/events",
            json!({"type": "topic", "durable": true, "arguments": {"alternate-exchange": "unrouted"}}),
        ),
        (
            "/api/exchanges/dv/unrouted",
            json!({"type": "fanout", "durable": true}),
        ),
        (
            "/api/exchanges/dv/internal",
            json!({"type": "headers", "durable": true, "internal": true}),
        ),
        (
            "/api/exchanges/dv/transient-ex",
            json!({"type": "direct", "durable": false}),
        ),
        (
            "/api/exchanges/dv/later",
            json!({"type": "x-delayed-message", "durable": true, "arguments": {"x-delayed-type": "topic"}}),
        ),
        (
            "/api/exchanges/dv/spread",
            json!({"type": "x-consistent-hash", "durable": true}),
        ),
        (
            "/api/queues/dv/orders",
            json!({"durable": true, "arguments": {"x-message-ttl": 60000, "x-dead-letter-exchange": "events"}}),
        ),
        ("/api/queues/dv/lost", json!({"durable": true})),
        ("/api/queues/dv/transient-q", json!({"durable": false})),
        (
            "/api/queues/%2F/root-q",
            json!({"durable": true, "auto_delete": false}),
        ),
    ] {
        let r = a.put(p, body).await;
        assert!(r.status == 201, "{p}: {} {}", r.status, r.text);
    }
    for (p, body) in [
        (
            "/api/bindings/dv/e/events/q/orders",
            json!({"routing_key": "order.*"}),
        ),
        (
            "/api/bindings/dv/e/events/e/internal",
            json!({"routing_key": "#"}),
        ),
        (
            "/api/bindings/dv/e/internal/q/orders",
            json!({"routing_key": "", "arguments": {"x-match": "any", "k": "v"}}),
        ),
        ("/api/bindings/dv/e/unrouted/q/lost", json!({})),
        (
            "/api/bindings/dv/e/events/q/transient-q",
            json!({"routing_key": "t"}),
        ),
        (
            "/api/bindings/%2F/e/amq.topic/q/root-q",
            json!({"routing_key": "root.#"}),
        ),
    ] {
        let r = a.post(p, body).await;
        assert!(r.status == 201, "{p}: {} {}", r.status, r.text);
    }
}

#[tokio::test]
async fn definitions_round_trip() {
    let b = TestBroker::start().await;
    let a = api(&b);
    build_definitions(&a).await;
    let first = a.get("/api/definitions").await;
    assert_eq!(first.status, 200);
    let first = first.body;
    assert_eq!(first["rabbit_version"], "3.10.0");
    assert_eq!(names(&first["vhosts"]), vec!["/", "dv"]);
    assert_eq!(names(&first["users"]), vec!["alice", "guest"]);
    assert_eq!(
        first["users"][0]["hashing_algorithm"],
        "rabbit_password_hashing_sha256"
    );
    assert_eq!(
        names(&first["queues"]),
        vec!["root-q", "lost", "orders"],
        "durable only, by vhost then name"
    );
    assert_eq!(
        names(&first["exchanges"]),
        vec!["events", "internal", "later", "spread", "unrouted"]
    );
    assert_eq!(first["exchanges"][2]["type"], "x-delayed-message");
    assert_eq!(first["exchanges"][3]["type"], "x-consistent-hash");
    assert_eq!(
        first["bindings"].as_array().unwrap().len(),
        5,
        "not the one to the transient queue"
    );
    assert_eq!(
        first["queues"][2]["arguments"],
        json!({"x-dead-letter-exchange": "events", "x-message-ttl": 60000})
    );
    let vhost_scoped = a.get("/api/definitions/dv").await.body;
    assert_eq!(vhost_scoped["queues"].as_array().unwrap().len(), 2);
    assert!(vhost_scoped["queues"][0].get("vhost").is_none());

    // delete everything it describes
    for p in [
        "/api/queues/%2F/root-q",
        "/api/vhosts/dv",
        "/api/users/alice",
    ] {
        assert_eq!(a.delete(p).await.status, 204, "{p}");
    }
    let empty = a.get("/api/definitions").await.body;
    assert_eq!(names(&empty["vhosts"]), vec!["/"]);
    assert_eq!(empty["queues"], json!([]));

    let r = a.post("/api/definitions", first.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["imported"]["queues"], 3);
    let second = a.get("/api/definitions").await.body;
    assert_eq!(first, second);
    assert!(
        b.exchange("dv", "later").unwrap().delayed.is_some(),
        "still a delayed exchange"
    );
    // the password came back with its hash
    assert_eq!(
        a.as_user("alice", "alice-pw")
            .get("/api/whoami")
            .await
            .status,
        200
    );
    // and the objects work over AMQP: events -order.x-> orders
    let c = connect(&format!("amqp://guest:guest@{}/dv", b.addr())).await;
    let ch = c.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    publish_confirmed(&ch, "events", "order.x", b"o", BasicProperties::default()).await;
    let d = ch
        .basic_get("orders".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.delivery.data, b"o");
    // importing the same document again changes nothing
    assert_eq!(a.post("/api/definitions", first.clone()).await.status, 200);
    assert_eq!(a.get("/api/definitions").await.body, first);

    // survives a restart (it went through the definitions log)
    let mut b = b;
    b.restart().await;
    let a = api(&b);
    assert_eq!(a.get("/api/definitions").await.body, first);
    b.stop().await;
}

#[tokio::test]
async fn rabbitmq_definitions_import() {
    let b = TestBroker::start().await;
    let a = api(&b);
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/rabbitmq-3.10-definitions.json"
    ))
    .unwrap();
    let r = a.post_raw("/api/definitions", &text).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let note = r.body["note"].as_str().unwrap();
    for what in ["2 global parameters", "1 topic permissions"] {
        assert!(note.contains(what), "{note}");
    }
    // the policy and the vhost limit came along
    assert!(
        !note.contains("policies") && !note.contains("1 parameters"),
        "{note}"
    );
    let pol = a.get("/api/policies/shop/orders-ttl").await.body;
    assert_eq!(pol["definition"]["message-ttl"], 86400000);
    assert_eq!(
        a.get("/api/policies").await.body.as_array().unwrap().len(),
        3
    );
    let op = a.get("/api/operator-policies/shop/cap-bytes").await.body;
    assert_eq!(op["definition"]["max-length-bytes"], 1073741824u64);
    let lim = a.get("/api/vhost-limits/shop").await.body;
    assert_eq!(lim[0]["value"]["max-connections"], 100);
    let ul = a.get("/api/user-limits/orders-app").await.body;
    assert_eq!(
        ul[0]["value"],
        json!({"max-connections": 50, "max-channels": 500})
    );
    let q = a.get("/api/queues/shop/orders.created").await.body;
    assert_eq!(q["policy"], "orders-ttl");
    assert_eq!(q["operator_policy"], "cap-bytes");
    assert_eq!(
        a.get("/api/exchanges/shop/billing").await.body["policy"],
        "billing-ae"
    );
    // users log in with their RabbitMQ passwords
    assert_eq!(
        a.as_user("admin", "guest").get("/api/users").await.status,
        200
    );
    assert_eq!(
        a.as_user("ops", "monpass")
            .get("/api/overview")
            .await
            .status,
        200
    );
    assert_eq!(
        a.as_user("orders-app", "s3cret")
            .get("/api/overview")
            .await
            .status,
        401,
        "no management tag"
    );
    let c = connect(&format!("amqp://orders-app:s3cret@{}/shop", b.addr())).await;
    let ch = c.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    // topology: orders.events -order.created.eu-> orders.created; order.paid.# -> billing (headers) -> billing.invoices
    let mut h = FieldTable::default();
    h.insert(
        "kind".into(),
        lapin::types::AMQPValue::LongString("invoice".into()),
    );
    for (rk, props) in [
        ("order.created.eu", BasicProperties::default()),
        ("order.paid.eu", BasicProperties::default().with_headers(h)),
    ] {
        publish_confirmed(&ch, "orders.events", rk, b"x", props).await;
    }
    assert_eq!(
        b.queue("shop", "orders.created").unwrap().message_count(),
        1
    );
    assert_eq!(
        b.queue("shop", "billing.invoices").unwrap().message_count(),
        1
    );
    assert!(b.exchange("shop", "billing").unwrap().internal);
    let q = a.get("/api/queues/shop/orders.created").await.body;
    assert_eq!(q["arguments"]["x-max-length"], 100000);
    assert!(b.queue("/", "audit").unwrap().durable);
    // the permissions came along: orders-app may not configure billing.*
    let e = ch
        .queue_declare(
            "billing.x".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(reply_code(&e), Some(403));
    // exporting gives the same objects back
    let ex = a.get("/api/definitions").await.body;
    assert_eq!(ex["queues"].as_array().unwrap().len(), 4);
    assert_eq!(ex["exchanges"].as_array().unwrap().len(), 4);
    assert_eq!(ex["bindings"].as_array().unwrap().len(), 5);
    assert_eq!(
        ex["users"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["name"] == "ops")
            .unwrap()["password_hash"],
        "qrvM3a3Ip5xgmTjtPfUdOXl9JrD54S/g4lThgkA8WlsnSBuW"
    );
    b.stop().await;
}

#[tokio::test]
async fn invalid_definitions_change_nothing() {
    let b = TestBroker::start().await;
    let a = api(&b);
    assert_eq!(
        a.put("/api/queues/%2F/existing", json!({"durable": true}))
            .await
            .status,
        201
    );
    let before = a.get("/api/definitions").await.body;
    let valid = json!({
        "vhosts": [{"name": "nv"}],
        "users": [{"name": "nu", "password_hash": "kIwfBLlRyA/YSusFxBCdGz/IUETadpHkC0Ow7mgW5YoHAT6z",
                   "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": []}],
        "permissions": [{"user": "nu", "vhost": "nv", "configure": ".*", "write": ".*", "read": ".*"}],
        "exchanges": [{"name": "ne", "vhost": "nv", "type": "direct", "durable": true, "auto_delete": false, "internal": false, "arguments": {}}],
        "queues": [{"name": "nq", "vhost": "nv", "durable": true, "auto_delete": false, "arguments": {}}],
        "bindings": [{"source": "ne", "vhost": "nv", "destination": "nq", "destination_type": "queue", "routing_key": "k", "arguments": {}}]
    });
    let broken: Vec<(&str, Value)> = vec![
        ("binding to a missing queue", {
            let mut d = valid.clone();
            d["bindings"][0]["destination"] = json!("missing");
            d
        }),
        ("binding from a missing exchange", {
            let mut d = valid.clone();
            d["bindings"][0]["source"] = json!("missing");
            d
        }),
        ("bad destination type", {
            let mut d = valid.clone();
            d["bindings"][0]["destination_type"] = json!("topic");
            d
        }),
        ("invalid queue argument", {
            let mut d = valid.clone();
            d["queues"][0]["arguments"] = json!({"x-max-length": -1});
            d
        }),
        ("stream queue (not implemented)", {
            let mut d = valid.clone();
            d["queues"][0]["arguments"] = json!({"x-queue-type": "stream"});
            d
        }),
        ("non-durable quorum queue", {
            let mut d = valid.clone();
            d["queues"][0]["durable"] = json!(false);
            d["queues"][0]["arguments"] = json!({"x-queue-type": "quorum"});
            d
        }),
        ("unknown exchange type", {
            let mut d = valid.clone();
            d["exchanges"][0]["type"] = json!("x-no-such-type");
            d
        }),
        ("delayed exchange without x-delayed-type", {
            let mut d = valid.clone();
            d["exchanges"][0]["type"] = json!("x-delayed-message");
            d
        }),
        ("headers binding with an invalid x-match", {
            let mut d = valid.clone();
            d["exchanges"][0]["type"] = json!("headers");
            d["bindings"][0]["arguments"] = json!({"x-match": "most"});
            d
        }),
        (
            "consistent-hash binding with a weight that is not a number",
            {
                let mut d = valid.clone();
                d["exchanges"][0]["type"] = json!("x-consistent-hash");
                d["bindings"][0]["routing_key"] = json!("heavy");
                d
            },
        ),
        ("md5 password hash", {
            let mut d = valid.clone();
            d["users"][0]["hashing_algorithm"] = json!("rabbit_password_hashing_md5");
            d
        }),
        ("broken hash", {
            let mut d = valid.clone();
            d["users"][0]["password_hash"] = json!("abc");
            d
        }),
        ("permission in an unknown vhost", {
            let mut d = valid.clone();
            d["permissions"][0]["vhost"] = json!("elsewhere");
            d
        }),
        ("permission of an unknown user", {
            let mut d = valid.clone();
            d["permissions"][0]["user"] = json!("ghost");
            d
        }),
        ("bad permission regex", {
            let mut d = valid.clone();
            d["permissions"][0]["read"] = json!("[");
            d
        }),
        ("queue in an unknown vhost", {
            let mut d = valid.clone();
            d["queues"][0]["vhost"] = json!("elsewhere");
            d
        }),
        ("queue inequivalent to an existing one", {
            let mut d = valid.clone();
            d["queues"]
                .as_array_mut()
                .unwrap()
                .push(json!({"name": "existing", "vhost": "/", "durable": false}));
            d
        }),
        ("queue twice, inequivalent", {
            let mut d = valid.clone();
            d["queues"].as_array_mut().unwrap().push(json!({"name": "nq", "vhost": "nv", "durable": true, "arguments": {"x-max-length": 5}}));
            d
        }),
        ("reserved exchange name", {
            let mut d = valid.clone();
            d["exchanges"][0]["name"] = json!("amq.mine");
            d["bindings"][0]["source"] = json!("amq.mine");
            d
        }),
        ("vhost missing", {
            let mut d = valid.clone();
            d["queues"][0].as_object_mut().unwrap().remove("vhost");
            d
        }),
        ("wrong field type", {
            let mut d = valid.clone();
            d["queues"][0]["durable"] = json!("yes");
            d
        }),
        ("users not a list", {
            let mut d = valid.clone();
            d["users"] = json!({"name": "x"});
            d
        }),
        ("not an object", json!([1, 2, 3])),
    ];
    for (what, doc) in broken {
        let r = a.post("/api/definitions", doc).await;
        assert_eq!(r.status, 400, "{what}: {}", r.text);
        assert_eq!(r.body["error"], "bad_request", "{what}");
        assert_eq!(
            a.get("/api/definitions").await.body,
            before,
            "{what}: something was imported"
        );
    }
    for raw in ["{", "", "null", "{\"queues\": [}"] {
        let r = a.post_raw("/api/definitions", raw).await;
        if raw.is_empty() {
            // an empty body is an empty document: nothing to do
            assert!(r.status == 400 || r.status == 200, "{raw:?}: {}", r.status);
        } else {
            assert_eq!(r.status, 400, "{raw:?}: {}", r.text);
        }
    }
    assert_eq!(a.get("/api/definitions").await.body, before);
    assert!(!b.vhost_exists("nv"));
    assert!(!b.user_exists("nu"));
    // the valid one goes in whole
    let r = a.post("/api/definitions", valid).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(b.queue("nv", "nq").is_some());
    assert_eq!(
        a.as_user("guest", "guest")
            .post("/api/definitions", json!({}))
            .await
            .status,
        200
    );
    b.stop().await;
}

fn q_ready(s: &std::collections::HashMap<String, f64>, queue: &str) -> Option<f64> {
    s.get(&format!(
        "lepus_queue_messages_ready{{vhost=\"/\",queue=\"{queue}\"}}"
    ))
    .copied()
}

/// Parse the text exposition format strictly enough to catch mistakes:
/// HELP and TYPE once per family, before its samples; samples well formed.
fn check_exposition(text: &str) -> std::collections::HashMap<String, f64> {
    let mut types = std::collections::HashMap::new();
    let mut samples = std::collections::HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap();
            assert!(!rest[name.len()..].trim().is_empty(), "empty help: {line}");
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split(' ');
            let (name, kind) = (it.next().unwrap(), it.next().unwrap());
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            assert!(
                types.insert(name.to_owned(), kind.to_owned()).is_none(),
                "TYPE twice for {name}"
            );
        } else {
            assert!(!line.starts_with('#'), "{line}");
            let (series, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("no value: {line}"));
            let v: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("bad value: {line}"));
            let name = series.split('{').next().unwrap();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    name.strip_suffix(s)
                        .filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
                })
                .unwrap_or(name);
            assert!(types.contains_key(family), "sample before its TYPE: {line}");
            if let Some(labels) = series.strip_prefix(name) {
                if !labels.is_empty() {
                    assert!(labels.starts_with('{') && labels.ends_with('}'), "{line}");
                }
            }
            samples.insert(series.to_owned(), v);
        }
    }
    samples
}

#[tokio::test]
async fn prometheus_metrics() {
    let b = TestBroker::start().await;
    let a = api(&b);
    let (_c, ch) = b.channel().await;
    ch.queue_declare("m1".into(), durable(), FieldTable::default())
        .await
        .unwrap();
    ch.queue_declare(
        "we\"ird\\q".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    for _ in 0..5 {
        publish_confirmed(
            &ch,
            "",
            "m1",
            b"x",
            BasicProperties::default().with_delivery_mode(2),
        )
        .await;
    }
    let d = ch
        .basic_get("m1".into(), BasicGetOptions::default())
        .await
        .unwrap()
        .unwrap();
    let _ = d;
    // no auth needed
    let r = a.anonymous().get("/metrics").await;
    assert_eq!(r.status, 200);
    assert!(r
        .content_type
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let s = check_exposition(&r.text);
    let q = |m: &str, queue: &str| {
        s.get(&format!("{m}{{vhost=\"/\",queue=\"{queue}\"}}"))
            .copied()
    };
    assert_eq!(q("lepus_queue_messages_ready", "m1"), Some(4.0));
    assert_eq!(q("lepus_queue_messages_unacked", "m1"), Some(1.0));
    assert_eq!(q("lepus_queue_messages_published_total", "m1"), Some(5.0));
    assert_eq!(q("lepus_queue_messages_delivered_total", "m1"), Some(1.0));
    assert_eq!(q("lepus_queue_messages_acked_total", "m1"), Some(0.0));
    assert_eq!(q("lepus_queue_consumers", "m1"), Some(0.0));
    assert_eq!(
        q("lepus_queue_messages_ready", "we\\\"ird\\\\q"),
        Some(0.0),
        "escaped label"
    );
    assert_eq!(s["lepus_connections"], 1.0);
    assert_eq!(s["lepus_channels"], 1.0);
    assert_eq!(s["lepus_queues"], 2.0);
    assert_eq!(s["lepus_messages_published_total"], 5.0);
    assert!(s["lepus_store_disk_bytes"] > 0.0);
    assert!(s["lepus_store_used_bytes"] > 0.0);
    assert!(s["lepus_store_segments"] >= 1.0);
    assert!(
        s["lepus_store_fsync_seconds_count"] >= 1.0,
        "persistent publishes were synced"
    );
    assert_eq!(
        s["lepus_store_fsync_seconds_bucket{le=\"+Inf\"}"],
        s["lepus_store_fsync_seconds_count"]
    );
    assert!(s.contains_key("lepus_store_fsync_seconds_sum"));
    assert_eq!(s["lepus_alarm{resource=\"disk\"}"], 0.0);
    assert_eq!(s["lepus_alarm_active"], 0.0);
    b.set_alarm(&["memory 100 above high watermark 10"]);
    let s = check_exposition(&a.anonymous().get("/metrics").await.text);
    assert_eq!(s["lepus_alarm{resource=\"memory\"}"], 1.0);
    assert_eq!(s["lepus_alarm_active"], 1.0);
    b.clear_alarm();
    // pending delayed messages, per delayed-message exchange
    assert_eq!(
        a.put(
            "/api/exchanges/%2F/later",
            json!({"type": "x-delayed-message", "arguments": {"x-delayed-type": "direct"}})
        )
        .await
        .status,
        201
    );
    assert_eq!(
        a.post(
            "/api/bindings/%2F/e/later/q/m1",
            json!({"routing_key": "k"})
        )
        .await
        .status,
        201
    );
    let r = a
        .post(
            "/api/exchanges/%2F/later/publish",
            json!({"properties": {"headers": {"x-delay": 600000}}, "routing_key": "k", "payload": "x"}),
        )
        .await;
    assert_eq!(r.body, json!({"routed": true}));
    let s = check_exposition(&a.anonymous().get("/metrics").await.text);
    assert_eq!(
        s["lepus_delayed_messages{vhost=\"/\",exchange=\"later\"}"],
        1.0
    );
    assert_eq!(q_ready(&s, "m1"), Some(4.0), "not delivered yet");
    // counters do not go back when a queue is deleted
    ch.queue_delete("m1".into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    let s = check_exposition(&a.anonymous().get("/metrics").await.text);
    assert!(s["lepus_messages_published_total"] >= 5.0);
    b.stop().await;
}

#[tokio::test]
async fn management_port_conflict_is_a_startup_error() {
    let b = TestBroker::start().await;
    let taken = b.mgmt_addr().port();
    let dir = tempfile::tempdir().unwrap();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_lepus"))
            .args([
                "--port",
                "0",
                "--mgmt-port",
                &taken.to_string(),
                "--data-dir",
            ])
            .arg(dir.path())
            .env("LEPUS_DISK_FREE_LIMIT", "0")
            .env("LEPUS_MEMORY_HIGH_WATERMARK", "0")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("management API") && err.contains(&taken.to_string()),
        "{err}"
    );
    // and through the library
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.mgmt_port = taken;
    assert!(lepus::server::start(config).await.is_err());
    b.stop().await;
}

/// Whether `user` may declare queue `name` over AMQP (configure access); the
/// name the broker gave it. 403 is a refusal; anything else fails the test.
async fn declare_as(b: &TestBroker, user: &str, vhost: &str, name: &str) -> Option<String> {
    let uri = format!("amqp://{user}:pw@{}/{}", b.addr(), vhost);
    let c = connect(&uri).await;
    let ch = c.create_channel().await.unwrap();
    let r = ch
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                exclusive: name.is_empty(),
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await;
    let out = match r {
        Ok(q) => Some(q.name().to_string()),
        Err(e) => {
            assert_eq!(
                reply_code(&e),
                Some(403),
                "{user} declaring {name:?}: {e:?}"
            );
            None
        }
    };
    let _ = c.close(200, "bye".into()).await;
    out
}

/// RabbitMQ's permission patterns are searched, not anchored: `^app\.`
/// grants `app.q1`, `own` grants `my.own`; `""` is `^$` (no access). Server
/// named queues are checked under their `amq.gen-…` name. The same holds
/// for permissions that arrive in imported definitions.
#[tokio::test]
async fn permission_patterns_are_searched_as_in_rabbitmq() {
    let b = TestBroker::start().await;
    let a = api(&b);
    assert_eq!(a.put("/api/vhosts/pv", json!({})).await.status, 201);
    // (pattern, names granted, names refused); "" is a server-named queue.
    let cases: Vec<(&str, Vec<&str>, Vec<&str>)> = vec![
        (
            r"^app\.",
            vec!["app.q1"],
            vec!["my.app.q", "xapp.q", "other", ""],
        ),
        ("own", vec!["own.q1", "my.own"], vec!["other", ""]),
        (r"^amq\.gen.*", vec![""], vec!["app.q1", "other"]),
        (".*", vec!["app.q1", "other", ""], vec![]),
        ("", vec![], vec!["app.q1", "other", ""]),
    ];
    for (i, (pattern, granted, refused)) in cases.iter().enumerate() {
        let user = format!("p{i}");
        let r = a
            .put(
                &format!("/api/users/{user}"),
                json!({"password": "pw", "tags": ""}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
        let r = a
            .put(
                &format!("/api/permissions/pv/{user}"),
                json!({"configure": pattern, "write": ".*", "read": ".*"}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
        for name in granted {
            let got = declare_as(&b, &user, "pv", name).await;
            let got = got.unwrap_or_else(|| panic!("{pattern:?} refused {name:?}"));
            if name.is_empty() {
                assert!(got.starts_with("amq.gen-"), "{got}");
            }
        }
        for name in refused {
            assert_eq!(
                declare_as(&b, &user, "pv", name).await,
                None,
                "{pattern:?} granted {name:?}"
            );
        }
    }
    // Through imported definitions: a prefix pattern lets the user at its
    // own resources, and only those; write and read are searched too.
    let defs = json!({
        "users": [{"name": "imp", "password": "pw", "tags": ""}],
        "vhosts": [{"name": "iv"}],
        "permissions": [{"user": "imp", "vhost": "iv",
            "configure": r"^own\.", "write": r"^own\.|^amq\.default$", "read": r"^own\."}],
    });
    let r = a.post("/api/definitions", defs).await;
    assert!(r.status < 300, "{} {}", r.status, r.text);
    assert_eq!(
        declare_as(&b, "imp", "iv", "own.q1").await.as_deref(),
        Some("own.q1")
    );
    assert_eq!(declare_as(&b, "imp", "iv", "other.q1").await, None);
    // The default exchange is checked as amq.default, as RabbitMQ does:
    // without it in the write pattern, publishing to "" is refused.
    let r = a
        .put(
            "/api/permissions/iv/p4",
            json!({"configure": "", "write": r"^own\.", "read": ""}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let c = connect(&format!("amqp://p4:pw@{}/iv", b.addr())).await;
    let ch = c.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut closes = watch_closes(&c);
    ch.basic_publish(
        "".into(),
        "own.q1".into(),
        BasicPublishOptions::default(),
        b"refused",
        BasicProperties::default(),
    )
    .await
    .ok();
    assert_eq!(closes.next_code().await, 403);
    let c = connect(&format!("amqp://imp:pw@{}/iv", b.addr())).await;
    let ch = c.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    publish_confirmed(&ch, "", "own.q1", b"mine", BasicProperties::default()).await;
    let got = ch
        .basic_get("own.q1".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("a message in own.q1");
    assert_eq!(got.delivery.data, b"mine");
    b.stop().await;
}

/// A client that looks itself up, as connection-recovery suites do: its
/// lapin connection, found by `connection_name` through `/api/connections/`
/// (trailing slash), with RabbitMQ's name (`client -> server`),
/// `user_provided_name` and `client_properties` as nested JSON; then the
/// paginated, filtered, column-cut list; then closed through the API.
#[tokio::test]
async fn a_client_finds_its_connection_by_name_and_closes_it() {
    let b = TestBroker::start().await;
    let a = api(&b);
    let _other = b.connect().await;
    let props =
        lapin::ConnectionProperties::default().with_connection_name("recovery-suite-conn".into());
    let c = within(10, lapin::Connection::connect(&b.uri(), props))
        .await
        .unwrap();
    let errors = std::sync::Arc::new(parking_lot::Mutex::new(vec![]));
    let e2 = errors.clone();
    let mut events = c.events_listener();
    tokio::spawn(async move {
        while let Some(e) = events.next().await {
            if let lapin::Event::Error(e) = e {
                e2.lock().push(format!("{e}"));
            }
        }
    });
    let r = a.get("/api/connections/").await;
    assert_eq!(r.status, 200, "{}", r.text);
    let list = r.body.as_array().unwrap().clone();
    assert_eq!(list.len(), 2);
    let mine: Vec<&Value> = list
        .iter()
        .filter(|c| c["client_properties"]["connection_name"] == "recovery-suite-conn")
        .collect();
    assert_eq!(mine.len(), 1, "{list:?}");
    let mine = mine[0].clone();
    assert_eq!(mine["user_provided_name"], "recovery-suite-conn");
    assert!(
        mine["client_properties"]["capabilities"].is_object(),
        "tables are nested objects: {}",
        mine["client_properties"]
    );
    assert_eq!(
        mine["client_properties"]["capabilities"]["publisher_confirms"],
        true
    );
    let name = mine["name"].as_str().unwrap().to_owned();
    assert_eq!(
        name,
        format!(
            "127.0.0.1:{} -> {}",
            mine["peer_port"].as_u64().unwrap(),
            b.addr()
        )
    );
    let unnamed = list.iter().find(|c| c["name"] != name.as_str()).unwrap();
    assert_eq!(unnamed["user_provided_name"], Value::Null);

    // Paginated and cut to columns, as RabbitMQ answers.
    let port = mine["peer_port"].as_u64().unwrap();
    let r = a
        .get(&format!(
            "/api/connections/?page=1&page_size=10&name=:{port}%20-%3E&columns=name,user_provided_name,client_properties.connection_name"
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        r.body,
        json!({"filtered_count": 1, "item_count": 1, "page": 1, "page_count": 1,
               "page_size": 10, "total_count": 2,
               "items": [{"name": name, "user_provided_name": "recovery-suite-conn",
                          "client_properties": {"connection_name": "recovery-suite-conn"}}]})
    );

    // Closed through the API by the name it found: 320 CONNECTION_FORCED.
    let enc = percent_encoding::utf8_percent_encode(&name, percent_encoding::NON_ALPHANUMERIC)
        .to_string();
    assert_eq!(
        a.delete(&format!("/api/connections/{enc}/")).await.status,
        204
    );
    assert!(
        eventually(5, || !errors.lock().is_empty()).await,
        "no error reported"
    );
    let got = errors.lock().join("; ");
    assert!(
        got.contains("CONNECTION_FORCED - Closed via management plugin"),
        "{got}"
    );
    assert!(eventually(5, || b.connection_count() == 1).await);
    b.stop().await;
}

/// RabbitMQ's pagination, name filter, sort and columns on the list
/// endpoints, its 400s, and trailing slashes on every path.
#[tokio::test]
async fn list_endpoints_paginate_filter_and_cut_columns_as_rabbitmq() {
    let b = TestBroker::start().await;
    let a = api(&b);
    let (_c, ch) = b.channel().await;
    for q in ["pg.b", "pg.a", "PG.d", "pg.c", "other"] {
        declare_queue(&ch, q).await;
    }
    let r = a
        .get("/api/queues?page=1&page_size=2&name=pg.&columns=name,durable")
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        r.body,
        json!({"filtered_count": 4, "item_count": 2, "page": 1, "page_count": 2,
               "page_size": 2, "total_count": 5,
               "items": [{"name": "PG.d", "durable": false}, {"name": "pg.a", "durable": false}]})
    );
    let r = a
        .get("/api/queues/%2F/?page=2&page_size=2&name=pg.&columns=name")
        .await;
    assert_eq!(r.body["items"], json!([{"name": "pg.b"}, {"name": "pg.c"}]));
    let r = a
        .get("/api/queues?page=1&name=%5Epg%5C.%5Bab%5D%24&use_regex=true&columns=name&sort=name&sort_reverse=true")
        .await;
    assert_eq!(r.body["items"], json!([{"name": "pg.b"}, {"name": "pg.a"}]));
    // Without page a list stays a list; columns still apply.
    let r = a.get("/api/queues?columns=name&name=pg").await;
    assert_eq!(r.body.as_array().unwrap().len(), 5);
    assert_eq!(r.body[0], json!({"name": "PG.d"}));
    // A single object takes columns too.
    let r = a.get("/api/queues/%2F/pg.a/?columns=name,vhost").await;
    assert_eq!(r.body, json!({"name": "pg.a", "vhost": "/"}));
    let r = a
        .get("/api/exchanges/%2F?page=1&page_size=1&columns=name")
        .await;
    assert_eq!(r.body["items"], json!([{"name": ""}]));
    assert!(r.body["total_count"].as_u64().unwrap() > 1);
    let r = a.get("/api/vhosts/?page=1&columns=name").await;
    assert_eq!(r.body["items"], json!([{"name": "/"}]));
    // RabbitMQ's 400s.
    for (q, error) in [
        ("page=99&page_size=2&name=pg.", "page_out_of_range"),
        ("page=0", "invalid_pagination_parameters"),
        ("page=1&page_size=501", "invalid_pagination_parameters"),
        ("page=x", "bad_request"),
        ("page=1&name=(&use_regex=true", "bad_request"),
    ] {
        let r = a.get(&format!("/api/queues?{q}")).await;
        assert_eq!(
            (r.status, r.body["error"].as_str()),
            (400, Some(error)),
            "{q}"
        );
    }
    // Every collection path answers with a trailing slash.
    for p in [
        "/api/overview/",
        "/api/vhosts/",
        "/api/users/",
        "/api/permissions/",
        "/api/exchanges/",
        "/api/queues/",
        "/api/bindings/",
        "/api/connections/",
        "/api/channels/",
        "/api/consumers/",
        "/api/definitions/",
    ] {
        assert_eq!(a.get(p).await.status, 200, "{p}");
    }
    b.stop().await;
}
