//! Vhost limits (max-connections, max-queues) and user limits
//! (max-connections, max-channels) set over the management API, and what a
//! real client (lapin) sees over the limit: RabbitMQ 3.10's reply codes and
//! texts. Limits are durable and validated with RabbitMQ's texts.

mod common;
use common::http::Api;
use common::*;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use serde_json::json;
use std::time::Duration;

fn api(b: &TestBroker) -> Api {
    Api::new(&b.mgmt_url())
}

async fn try_connect(uri: &str) -> Result<Connection, lapin::Error> {
    tokio::time::timeout(
        Duration::from_secs(10),
        Connection::connect(uri, ConnectionProperties::default()),
    )
    .await
    .expect("connect timed out")
}

async fn put_limit(a: &Api, path: &str, value: i64) {
    let r = a.put(path, json!({ "value": value })).await;
    assert_eq!(r.status, 204, "{path}: {}", r.text);
}

/// Connect, retrying while a just-closed connection may still be counted.
async fn connect_eventually(uri: &str) -> Connection {
    for _ in 0..100 {
        if let Ok(c) = try_connect(uri).await {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("could not connect to {uri}");
}

#[tokio::test]
async fn vhost_connection_limit_refuses_a_new_connection() {
    let b = TestBroker::start().await;
    let a = api(&b);
    put_limit(&a, "/api/vhost-limits/%2F/max-connections", 1).await;
    let first = b.connect().await;
    let e = try_connect(&b.uri()).await.expect_err("over the limit");
    assert_eq!(reply_code(&e), Some(530), "{e:?}");
    assert_eq!(
        reply_text(&e),
        "NOT_ALLOWED - access to vhost '/' refused for user 'guest': connection limit (1) is reached"
    );
    // what is open stays usable
    let ch = first.create_channel().await.unwrap();
    declare_queue(&ch, "still-fine").await;
    // another vhost is not counted
    assert_eq!(a.put("/api/vhosts/other", json!({})).await.status, 201);
    assert_eq!(
        a.put(
            "/api/permissions/other/guest",
            json!({"configure": ".*", "write": ".*", "read": ".*"})
        )
        .await
        .status,
        201
    );
    let other = connect(&format!("amqp://guest:guest@{}/other", b.addr())).await;
    // a closed connection frees its place
    first.close(200, "bye".into()).await.unwrap();
    let again = connect_eventually(&b.uri()).await;
    // 0: none at all; a negative value: no limit
    put_limit(&a, "/api/vhost-limits/other/max-connections", 0).await;
    let e = try_connect(&format!("amqp://guest:guest@{}/other", b.addr()))
        .await
        .expect_err("limit 0");
    assert!(
        reply_text(&e).contains("connection limit (0) is reached"),
        "{e:?}"
    );
    put_limit(&a, "/api/vhost-limits/%2F/max-connections", -1).await;
    let more = b.connect().await;
    for c in [other, again, more] {
        let _ = c.close(200, "bye".into()).await;
    }
    b.stop().await;
}

#[tokio::test]
async fn user_connection_limit_refuses_a_new_connection() {
    let b = TestBroker::start().await;
    let a = api(&b);
    assert_eq!(
        a.put("/api/users/app", json!({"password": "pw", "tags": ""}))
            .await
            .status,
        201
    );
    assert_eq!(
        a.put(
            "/api/permissions/%2F/app",
            json!({"configure": ".*", "write": ".*", "read": ".*"})
        )
        .await
        .status,
        201
    );
    put_limit(&a, "/api/user-limits/app/max-connections", 2).await;
    let uri = format!("amqp://app:pw@{}/%2f", b.addr());
    let c1 = connect(&uri).await;
    let c2 = connect(&uri).await;
    let e = try_connect(&uri).await.expect_err("over the user limit");
    assert_eq!(reply_code(&e), Some(530), "{e:?}");
    assert_eq!(
        reply_text(&e),
        "NOT_ALLOWED - Connection refused for user 'app': user connection limit (2) is reached"
    );
    // other users are not limited
    let g = b.connect().await;
    assert_eq!(
        a.get("/api/user-limits/app").await.body,
        json!([{"user": "app", "value": {"max-connections": 2}}])
    );
    // cleared: no limit
    assert_eq!(
        a.delete("/api/user-limits/app/max-connections")
            .await
            .status,
        204
    );
    let c3 = connect(&uri).await;
    for c in [c1, c2, c3, g] {
        let _ = c.close(200, "bye".into()).await;
    }
    b.stop().await;
}

#[tokio::test]
async fn vhost_queue_limit_refuses_a_declare() {
    let b = TestBroker::start().await;
    let a = api(&b);
    put_limit(&a, "/api/vhost-limits/%2F/max-queues", 2).await;
    let (_c, ch) = b.channel().await;
    declare_queue(&ch, "q1").await;
    declare_queue(&ch, "q2").await;
    // redeclaring an existing queue is no new queue
    declare_queue(&ch, "q1").await;
    let e = ch
        .queue_declare(
            "q3".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect_err("over the queue limit");
    assert_eq!(reply_code(&e), Some(406));
    assert_eq!(
        reply_text(&e),
        "PRECONDITION_FAILED - cannot declare queue 'q3': queue limit in vhost '/' (2) is reached"
    );
    assert!(!b.has_queue("/", "q3"));
    // the management API answers the same refusal
    let r = a.put("/api/queues/%2F/q4", json!({})).await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(r.text.contains("queue limit in vhost '/' (2) is reached"));
    // a server-named queue counts too
    let ch = b.connect().await.create_channel().await.unwrap();
    let e = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect_err("over the queue limit");
    assert_eq!(reply_code(&e), Some(406));
    // room again after a delete
    let ch = b.connect().await.create_channel().await.unwrap();
    ch.queue_delete("q2".into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    declare_queue(&ch, "q3").await;
    b.stop().await;
}

#[tokio::test]
async fn user_channel_limit_closes_the_connection() {
    let b = TestBroker::start().await;
    let a = api(&b);
    put_limit(&a, "/api/user-limits/guest/max-channels", 2).await;
    let c1 = b.connect().await;
    let _ch1 = c1.create_channel().await.unwrap();
    let c2 = b.connect().await;
    let _ch2 = c2.create_channel().await.unwrap();
    // the third channel of the user, on either connection: 530, connection closed
    let e = c2
        .create_channel()
        .await
        .expect_err("over the channel limit");
    assert_eq!(reply_code(&e), Some(530), "{e:?}");
    assert_eq!(
        reply_text(&e),
        "NOT_ALLOWED - number of channels opened for user 'guest' has reached the maximum allowed user limit of (2)"
    );
    assert!(eventually(5, || !c2.status().connected()).await);
    // c1 is untouched; once c2 is gone there is room for one more channel
    assert!(c1.status().connected());
    assert!(eventually(5, || b.connection_count() == 1).await);
    let _ch3 = within(5, c1.create_channel()).await.unwrap();
    b.stop().await;
}

#[tokio::test]
async fn limits_are_validated_durable_and_listed() {
    let mut b = TestBroker::start().await;
    let a = api(&b);
    // RabbitMQ's validation texts; nothing changes
    let r = a
        .put(
            "/api/vhost-limits/%2F/max-connections",
            json!({"value": "ten"}),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.body["reason"],
        "Validation failed\n\nmax-connections should be a number, actually was <<\"ten\">>\n"
    );
    let r = a
        .put("/api/vhost-limits/%2F/max-channels", json!({"value": 1}))
        .await;
    assert_eq!(r.status, 400);
    assert!(
        r.text
            .contains("Unrecognised terms [{<<\\\"max-channels\\\">>,1}] in limits"),
        "{}",
        r.text
    );
    let r = a
        .put("/api/user-limits/guest/max-queues", json!({"value": 1}))
        .await;
    assert_eq!(r.status, 400);
    assert!(r.text.contains("in user-limits"), "{}", r.text);
    assert_eq!(
        a.put("/api/vhost-limits/nope/max-queues", json!({"value": 1}))
            .await
            .status,
        404
    );
    assert_eq!(
        a.put("/api/user-limits/nobody/max-channels", json!({"value": 1}))
            .await
            .status,
        404
    );
    assert_eq!(a.get("/api/vhost-limits").await.body, json!([]));
    assert_eq!(a.get("/api/user-limits").await.body, json!([]));

    put_limit(&a, "/api/vhost-limits/%2F/max-queues", 1).await;
    put_limit(&a, "/api/vhost-limits/%2F/max-connections", 5).await;
    put_limit(&a, "/api/user-limits/guest/max-channels", 3).await;
    let vl = json!([{"vhost": "/", "value": {"max-connections": 5, "max-queues": 1}}]);
    let ul = json!([{"user": "guest", "value": {"max-channels": 3}}]);
    assert_eq!(a.get("/api/vhost-limits").await.body, vl);
    assert_eq!(a.get("/api/vhost-limits/%2F").await.body, vl);
    b.restart().await;
    let a = api(&b);
    assert_eq!(a.get("/api/vhost-limits").await.body, vl);
    assert_eq!(a.get("/api/user-limits").await.body, ul);
    let (_c, ch) = b.channel().await;
    declare_queue(&ch, "one").await;
    let e = ch
        .queue_declare(
            "two".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect_err("the limit survived the restart");
    assert_eq!(reply_code(&e), Some(406));
    // non-administrators may not see or set limits
    assert_eq!(
        a.put(
            "/api/users/mon",
            json!({"password": "pw", "tags": "monitoring"})
        )
        .await
        .status,
        201
    );
    let mon = a.as_user("mon", "pw");
    assert_eq!(mon.get("/api/vhost-limits").await.status, 401);
    assert_eq!(
        mon.put("/api/vhost-limits/%2F/max-queues", json!({"value": 9}))
            .await
            .status,
        401
    );
    // deleting a user takes its limits along
    put_limit(&a, "/api/user-limits/mon/max-connections", 4).await;
    assert_eq!(
        a.get("/api/user-limits")
            .await
            .body
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(a.delete("/api/users/mon").await.status, 204);
    assert_eq!(a.get("/api/user-limits").await.body, ul);
    b.stop().await;
}
