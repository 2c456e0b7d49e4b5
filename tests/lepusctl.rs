//! lepusctl as a real process against a running broker: the management
//! commands, and `move` interrupted by kill -9 and resumed.

mod common;

use common::*;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::BasicProperties;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Run lepusctl against `b` (as guest unless `args` say otherwise), with a time limit.
async fn ctl(b: &TestBroker, args: &[&str]) -> Out {
    let mut full = vec!["--url".to_owned(), b.mgmt_url()];
    full.extend(args.iter().map(|s| s.to_string()));
    let run = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_lepusctl"))
            .args(&full)
            .stdin(Stdio::null())
            .output()
            .expect("run lepusctl")
    });
    let out = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("lepusctl timed out")
        .unwrap();
    Out {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

async fn ok(b: &TestBroker, args: &[&str]) -> String {
    let o = ctl(b, args).await;
    assert!(o.ok, "lepusctl {args:?} failed: {}{}", o.stdout, o.stderr);
    o.stdout
}

async fn fails(b: &TestBroker, args: &[&str]) -> String {
    let o = ctl(b, args).await;
    assert!(!o.ok, "lepusctl {args:?} should fail: {}", o.stdout);
    o.stderr
}

async fn json(b: &TestBroker, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.extend(["--format", "json"]);
    serde_json::from_str(&ok(b, &a).await).expect("JSON output")
}

/// The row of a table whose first cells are `first`.
fn row<'a>(table: &'a str, first: &[&str]) -> Option<Vec<&'a str>> {
    table
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cells| cells.starts_with(first))
}

#[tokio::test]
async fn status_list_declare_purge_delete() {
    let b = TestBroker::start().await;
    let s = ok(&b, &["status"]).await;
    assert!(
        s.contains("Lepus") && s.contains("listeners:") && s.contains("alarms:      none"),
        "{s}"
    );
    assert!(
        s.contains(&format!("amqp 127.0.0.1:{}", b.addr().port())),
        "{s}"
    );

    assert!(ok(&b, &["declare", "queue", "q1"])
        .await
        .contains("queue 'q1' declared"));
    ok(
        &b,
        &[
            "declare",
            "queue",
            "q2",
            "--durable",
            "false",
            "--arguments",
            r#"{"x-max-length": 10}"#,
        ],
    )
    .await;
    ok(&b, &["declare", "exchange", "ex", "--type", "fanout"]).await;
    assert!(fails(&b, &["declare", "queue", "q3", "--arguments", "[1]"])
        .await
        .contains("JSON object"));
    assert!(
        fails(&b, &["declare", "queue", "q2"]).await.contains("400"),
        "inequivalent"
    );

    let table = ok(&b, &["list", "queues"]).await;
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "vhost",
            "name",
            "messages",
            "ready",
            "unacked",
            "consumers",
            "durable",
            "publish/s"
        ]
    );
    assert_eq!(row(&table, &["/", "q1"]).unwrap()[6], "true");
    assert_eq!(row(&table, &["/", "q2"]).unwrap()[6], "false");
    let j = json(&b, &["list", "queues"]).await;
    assert_eq!(names(&j), ["q1", "q2"]);
    assert_eq!(j[1]["arguments"]["x-max-length"], 10);
    assert_eq!(
        names(&json(&b, &["-p", "/", "list", "queues"]).await),
        ["q1", "q2"]
    );

    // publish and get (peek: requeued)
    assert!(
        ok(&b, &["publish", "", "q1", "hello world", "--persistent"])
            .await
            .contains("routed")
    );
    ok(&b, &["publish", "amq.default", "q1", "second"]).await;
    assert!(fails(&b, &["publish", "ex", "k", "nowhere"])
        .await
        .contains("not routed"));
    let got = ok(&b, &["get", "q1", "--count", "5"]).await;
    assert!(
        got.contains("hello world") && got.contains("second"),
        "{got}"
    );
    let got = json(&b, &["get", "q1"]).await;
    assert_eq!(got[0]["payload"], "hello world");
    assert_eq!(got[0]["redelivered"], true);
    assert_eq!(got[0]["properties"]["delivery_mode"], 2);
    let q1 = b.queue("/", "q1").unwrap();
    assert_eq!(q1.message_count(), 2, "get requeues");

    // other lists
    let ex = ok(&b, &["list", "exchanges"]).await;
    assert_eq!(row(&ex, &["/", "ex"]).unwrap()[2], "fanout");
    assert!(row(&ex, &["/", "amq.topic"]).is_some());
    let (_c, ch) = b.channel().await;
    ch.queue_bind(
        "q2".into(),
        "ex".into(),
        "rk".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let bt = ok(&b, &["list", "bindings"]).await;
    assert!(
        row(&bt, &["/", "ex", "q2", "queue", "rk"]).is_some(),
        "{bt}"
    );
    let bj = json(&b, &["list", "bindings"]).await;
    assert!(bj
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x["source"] == "ex" && x["destination"] == "q2"));
    let _consumer = ch
        .basic_consume(
            "q2".into(),
            "ctl-consumer".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let cons = ok(&b, &["list", "consumers"]).await;
    assert!(row(&cons, &["/", "q2", "ctl-consumer"]).is_some(), "{cons}");
    assert_eq!(
        json(&b, &["list", "consumers"]).await[0]["consumer_tag"],
        "ctl-consumer"
    );
    let conns = json(&b, &["list", "connections"]).await;
    assert_eq!(conns.as_array().unwrap().len(), 1);
    assert!(ok(&b, &["list", "connections"]).await.contains("guest"));
    assert_eq!(
        json(&b, &["list", "channels"]).await[0]["consumer_count"],
        1
    );
    assert!(ok(&b, &["list", "channels"]).await.lines().count() == 2);

    // purge and delete
    assert!(ok(&b, &["purge", "queue", "q1"])
        .await
        .contains("2 messages"));
    assert_eq!(q1.message_count(), 0);
    assert!(fails(&b, &["delete", "queue", "q2", "--if-unused"])
        .await
        .contains("400"));
    ok(&b, &["delete", "queue", "q2"]).await;
    ok(&b, &["delete", "exchange", "ex"]).await;
    assert_eq!(names(&json(&b, &["list", "queues"]).await), ["q1"]);
    let e = fails(&b, &["delete", "queue", "nope"]).await;
    assert!(e.contains("404"), "{e}");
    assert!(fails(&b, &["purge", "queue", "nope"]).await.contains("404"));
    assert!(fails(&b, &["-p", "novhost", "list", "queues"])
        .await
        .contains("404"));
    let e = fails(&b, &["--password", "wrong", "list", "queues"]).await;
    assert!(e.contains("401"), "{e}");
    b.stop().await;
}

#[tokio::test]
async fn users_vhosts_permissions_connections() {
    let b = TestBroker::start().await;
    ok(&b, &["add_user", "bob", "pw1", "--tags", "management"]).await;
    let users = json(&b, &["list", "users"]).await;
    assert_eq!(names(&users), ["bob", "guest"]);
    assert_eq!(users[0]["tags"], serde_json::json!(["management"]));
    assert!(row(&ok(&b, &["list", "users"]).await, &["bob", "management"]).is_some());
    ok(&b, &["set_permissions", "bob", "^bob-.*", ".*", ".*"]).await;
    assert!(row(
        &ok(&b, &["list", "permissions"]).await,
        &["bob", "/", "^bob-.*"]
    )
    .is_some());
    // bob can work with his own queues
    ok(
        &b,
        &[
            "--user",
            "bob",
            "--password",
            "pw1",
            "declare",
            "queue",
            "bob-q",
        ],
    )
    .await;
    assert!(fails(
        &b,
        &[
            "--user",
            "bob",
            "--password",
            "pw1",
            "declare",
            "queue",
            "alice-q"
        ]
    )
    .await
    .contains("401"));
    assert!(
        fails(&b, &["--user", "bob", "--password", "pw1", "list", "users"])
            .await
            .contains("Not administrator")
    );
    ok(&b, &["change_password", "bob", "pw2"]).await;
    assert!(fails(&b, &["--user", "bob", "--password", "pw1", "status"])
        .await
        .contains("401"));
    ok(&b, &["--user", "bob", "--password", "pw2", "status"]).await;
    ok(&b, &["set_user_tags", "bob", "monitoring"]).await;
    assert_eq!(
        json(&b, &["list", "users"]).await[0]["tags"],
        serde_json::json!(["monitoring"])
    );
    ok(&b, &["--user", "bob", "--password", "pw2", "status"]).await;
    ok(&b, &["clear_permissions", "bob"]).await;
    assert_eq!(
        json(&b, &["list", "permissions"])
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );
    ok(&b, &["delete_user", "bob"]).await;
    assert!(fails(&b, &["delete_user", "bob"]).await.contains("404"));

    ok(&b, &["add_vhost", "v9"]).await;
    assert_eq!(names(&json(&b, &["list", "vhosts"]).await), ["/", "v9"]);
    ok(
        &b,
        &["-p", "v9", "set_permissions", "guest", ".*", ".*", ".*"],
    )
    .await;
    ok(&b, &["-p", "v9", "declare", "queue", "in-v9"]).await;
    assert_eq!(
        names(&json(&b, &["-p", "v9", "list", "queues"]).await),
        ["in-v9"]
    );
    ok(&b, &["delete_vhost", "v9"]).await;
    assert!(fails(&b, &["delete_vhost", "v9"]).await.contains("404"));

    // close a connection by name
    let c = b.connect().await;
    let conns = json(&b, &["list", "connections"]).await;
    let name = conns[0]["name"].as_str().unwrap().to_owned();
    ok(&b, &["close_connection", &name, "--reason", "go away"]).await;
    assert!(eventually(5, || !c.status().connected()).await);
    assert!(fails(&b, &["close_connection", &name])
        .await
        .contains("404"));
    b.stop().await;
}

#[tokio::test]
async fn export_and_import() {
    let b = TestBroker::start().await;
    ok(
        &b,
        &[
            "declare",
            "queue",
            "keep",
            "--arguments",
            r#"{"x-message-ttl": 1000}"#,
        ],
    )
    .await;
    ok(&b, &["declare", "exchange", "kx", "--type", "topic"]).await;
    let (_c, ch) = b.channel().await;
    ch.queue_bind(
        "keep".into(),
        "kx".into(),
        "a.#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ok(&b, &["add_user", "carol", "pw", "--tags", "monitoring"]).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("defs.json");
    let file = file.to_str().unwrap();
    ok(&b, &["export", file]).await;
    let exported: Value = serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    assert_eq!(names(&exported["queues"]), ["keep"]);
    assert_eq!(exported["bindings"][0]["routing_key"], "a.#");
    let stdout = ok(&b, &["export", "-"]).await;
    assert_eq!(serde_json::from_str::<Value>(&stdout).unwrap(), exported);

    ok(&b, &["delete", "queue", "keep"]).await;
    ok(&b, &["delete", "exchange", "kx"]).await;
    ok(&b, &["delete_user", "carol"]).await;
    let out = ok(&b, &["import", file]).await;
    assert!(out.contains("imported"), "{out}");
    let again: Value = serde_json::from_str(&ok(&b, &["export", "-"]).await).unwrap();
    assert_eq!(again, exported);
    ok(&b, &["--user", "carol", "--password", "pw", "status"]).await;

    // a RabbitMQ export imports, with a note on what was skipped
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/rabbitmq-3.10-definitions.json"
    );
    let out = ok(&b, &["import", fixture]).await;
    assert!(
        out.contains("note:") && out.contains("global parameters"),
        "{out}"
    );
    assert!(b.queue("shop", "orders.created").is_some());

    // a broken file changes nothing
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"queues": [{"name": "x", "vhost": "nope"}]}"#).unwrap();
    let before = ok(&b, &["export", "-"]).await;
    assert!(fails(&b, &["import", bad.to_str().unwrap()])
        .await
        .contains("400"));
    std::fs::write(&bad, "not json").unwrap();
    assert!(fails(&b, &["import", bad.to_str().unwrap()])
        .await
        .contains("not JSON"));
    assert!(fails(&b, &["import", "/nonexistent/file.json"])
        .await
        .contains("cannot read"));
    assert_eq!(ok(&b, &["export", "-"]).await, before);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_killed_halfway_and_resumed_loses_nothing() {
    const N: usize = 100_000;
    const PREFETCH: usize = 200;
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    ch.queue_declare("dlq".into(), durable(), FieldTable::default())
        .await
        .unwrap();
    ch.queue_declare("work".into(), durable(), FieldTable::default())
        .await
        .unwrap();
    let (src, dst) = (b.queue("/", "dlq").unwrap(), b.queue("/", "work").unwrap());
    // the backlog: unique ids as bodies, one property to carry over
    let t = Instant::now();
    let props = BasicProperties::default().with_content_type("text/plain".into());
    for i in 0..N {
        let _confirm = ch
            .basic_publish(
                "".into(),
                "dlq".into(),
                BasicPublishOptions::default(),
                format!("{i}").as_bytes(),
                props.clone(),
            )
            .await
            .unwrap();
    }
    assert!(
        eventually(30, || src.message_count() as usize == N).await,
        "backlog: {}",
        src.message_count()
    );
    eprintln!("published {N} in {:?}", t.elapsed());

    // move, killed (SIGKILL) after about half
    let t = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_lepusctl"))
        .args([
            "--url",
            &b.mgmt_url(),
            "move",
            "dlq",
            "work",
            "--amqp-url",
            &b.uri(),
            "--prefetch",
            &PREFETCH.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while (dst.message_count() as usize) < N / 2 {
        assert!(
            Instant::now() < deadline,
            "move too slow: {} moved",
            dst.message_count()
        );
        assert!(child.try_wait().unwrap().is_none(), "lepusctl exited early");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    eprintln!(
        "killed after {:?} with {} in work",
        t.elapsed(),
        dst.message_count()
    );
    // its connection is gone: what it had not acked is back in the source
    assert!(
        eventually(10, || b.connection_count() == 1 && src.unacked_count() == 0).await,
        "the killed mover's connection is still there"
    );
    let (in_src, in_dst) = (src.message_count() as usize, dst.message_count() as usize);
    eprintln!("after the kill: {in_src} in dlq, {in_dst} in work");
    assert!(
        (N / 2..N).contains(&in_dst),
        "interrupted halfway: {in_dst}"
    );
    assert!(
        in_src + in_dst >= N,
        "messages lost: {in_src} + {in_dst} < {N}"
    );
    assert!(
        in_src + in_dst <= N + PREFETCH,
        "more duplicates than messages in flight"
    );

    // resume to the end
    let out = ok(
        &b,
        &[
            "move",
            "dlq",
            "work",
            "--amqp-url",
            &b.uri(),
            "--prefetch",
            &PREFETCH.to_string(),
        ],
    )
    .await;
    assert!(out.contains(&format!("moved {in_src} messages")), "{out}");
    assert_eq!(src.message_count(), 0);
    assert!(eventually(5, || src.unacked_count() == 0).await);

    // every id exactly once, or twice for the few in flight at the kill
    let bodies = take_bodies(&dst);
    let mut seen: HashMap<usize, u32> = HashMap::new();
    for body in &bodies {
        let id: usize = std::str::from_utf8(body).unwrap().parse().unwrap();
        assert!(id < N);
        *seen.entry(id).or_default() += 1;
    }
    let missing: Vec<usize> = (0..N).filter(|i| !seen.contains_key(i)).take(10).collect();
    assert!(missing.is_empty(), "lost messages, e.g. {missing:?}");
    let duplicates = bodies.len() - N;
    assert!(seen.values().all(|&n| n <= 2));
    eprintln!("move: {N} messages, none lost, {duplicates} duplicated (in flight when killed)");
    assert!(
        duplicates <= PREFETCH,
        "{duplicates} duplicates, more than the prefetch window"
    );
    b.stop().await;
}

#[tokio::test]
async fn move_refuses_what_it_cannot_do_safely() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    ch.queue_declare(
        "a".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.basic_publish(
        "".into(),
        "a".into(),
        BasicPublishOptions::default(),
        b"x",
        BasicProperties::default(),
    )
    .await
    .unwrap();
    let a = b.queue("/", "a").unwrap();
    assert!(eventually(5, || a.message_count() == 1).await);
    let uri = b.uri();
    assert!(fails(&b, &["move", "a", "missing", "--amqp-url", &uri])
        .await
        .contains("destination queue 'missing'"));
    assert!(fails(&b, &["move", "missing", "a", "--amqp-url", &uri])
        .await
        .contains("source queue 'missing'"));
    assert!(fails(&b, &["move", "a", "a", "--amqp-url", &uri])
        .await
        .contains("same queue"));
    assert_eq!(a.message_count(), 1);
    // --max, and an empty source
    ch.queue_declare(
        "b".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    for i in 0..9 {
        ch.basic_publish(
            "".into(),
            "a".into(),
            BasicPublishOptions::default(),
            &[i],
            BasicProperties::default(),
        )
        .await
        .unwrap();
    }
    assert!(eventually(5, || a.message_count() == 10).await);
    assert!(
        ok(&b, &["move", "a", "b", "--amqp-url", &uri, "--max", "4"])
            .await
            .contains("moved 4 messages")
    );
    let bq = b.queue("/", "b").unwrap();
    assert!(eventually(5, || a.message_count() == 6 && bq.message_count() == 4).await);
    assert!(ok(&b, &["move", "a", "b", "--amqp-url", &uri])
        .await
        .contains("moved 6 messages"));
    assert!(ok(&b, &["move", "a", "b", "--amqp-url", &uri])
        .await
        .contains("moved 0 messages"));
    assert_eq!(bq.message_count(), 10);
    b.stop().await;
}

/// Delayed exchanges: the API shows pending count and next due time, and
/// lepusctl lists, cancels by message-id and purges; /metrics counts them.
#[tokio::test]
async fn delayed_messages_list_cancel_purge() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let mut args = FieldTable::default();
    args.insert(
        "x-delayed-type".into(),
        lapin::types::AMQPValue::LongString("direct".into()),
    );
    ch.exchange_declare(
        "dl".into(),
        lapin::ExchangeKind::Custom("x-delayed-message".into()),
        ExchangeDeclareOptions::default(),
        args,
    )
    .await
    .unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    for i in 0..3 {
        let mut h = FieldTable::default();
        h.insert("x-delay".into(), lapin::types::AMQPValue::LongInt(60_000));
        let p = BasicProperties::default()
            .with_headers(h)
            .with_message_id(format!("id-{i}").as_str().into());
        ch.basic_publish(
            "dl".into(),
            "k".into(),
            BasicPublishOptions::default(),
            b"x",
            p,
        )
        .await
        .unwrap();
    }
    ch.wait_for_confirms().await.unwrap();
    let api = common::http::Api::new(&b.mgmt_url());
    let ex = api.get("/api/exchanges/%2F/dl").await;
    assert_eq!(ex.status, 200);
    assert_eq!(ex.body["delayed"]["pending"], 3);
    assert!(ex.body["delayed"]["next_due"].as_u64().unwrap() > 0);
    let metrics = api.get("/metrics").await.text;
    assert!(
        metrics.contains("lepus_delayed_messages{vhost=\"/\",exchange=\"dl\"} 3"),
        "{metrics}"
    );
    let table = ok(&b, &["delayed", "list", "dl"]).await;
    assert!(table.contains("3 pending"), "{table}");
    assert!(table.contains("id-1"), "{table}");
    let rows = json(&b, &["delayed", "list", "dl"]).await;
    assert_eq!(rows.as_array().unwrap().len(), 3);
    let out = ok(&b, &["delayed", "cancel", "dl", "id-1"]).await;
    assert!(out.contains("1 delayed message"), "{out}");
    let err = fails(&b, &["delayed", "cancel", "dl", "id-1"]).await;
    assert!(err.contains("404"), "{err}");
    let out = ok(&b, &["delayed", "purge", "dl"]).await;
    assert!(out.contains("2 delayed message"), "{out}");
    let ex = api.get("/api/exchanges/%2F/dl").await;
    assert_eq!(ex.body["delayed"]["pending"], 0);
    let not_delayed = api.get("/api/exchanges/%2F/amq.direct/delayed").await;
    assert_eq!(not_delayed.status, 400);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_and_limits_from_the_command_line() {
    let b = TestBroker::start().await;
    let out = ok(
        &b,
        &[
            "set_policy",
            "len",
            "^orders\\.",
            r#"{"max-length": 2}"#,
            "--priority",
            "3",
            "--apply-to",
            "queues",
        ],
    )
    .await;
    assert!(out.contains("policy 'len' set"), "{out}");
    ok(
        &b,
        &[
            "set_operator_policy",
            "cap",
            ".*",
            r#"{"message-ttl": 60000}"#,
        ],
    )
    .await;
    let rows = json(&b, &["list_policies"]).await;
    assert_eq!(rows[0]["name"], "len");
    assert_eq!(rows[0]["priority"], 3);
    assert_eq!(rows[0]["apply-to"], "queues");
    let table = ok(&b, &["list", "operator_policies"]).await;
    assert!(row(&table, &["/", "cap"]).is_some(), "{table}");
    // bad input: the broker's 400 and its text
    let err = fails(&b, &["set_policy", "bad", ".*", r#"{"max-priority": 5}"#]).await;
    assert!(
        err.contains("400") && err.contains("not recognised policy settings"),
        "{err}"
    );
    let err = fails(&b, &["set_policy", "bad", ".*", "not json"]).await;
    assert!(err.contains("not JSON"), "{err}");
    // the policy acts on a queue
    ok(&b, &["declare", "queue", "orders.a"]).await;
    for i in 0..4 {
        ok(&b, &["publish", "", "orders.a", &format!("m{i}")]).await;
    }
    assert_eq!(b.queue("/", "orders.a").unwrap().message_count(), 2);
    ok(&b, &["clear_policy", "len"]).await;
    ok(&b, &["clear_operator_policy", "cap"]).await;
    assert_eq!(json(&b, &["list_policies"]).await, json!([]));

    // limits: set replaces them all, clear removes them
    ok(
        &b,
        &[
            "set_vhost_limits",
            r#"{"max-connections": 10, "max-queues": 5}"#,
        ],
    )
    .await;
    ok(&b, &["set_vhost_limits", r#"{"max-queues": 3}"#]).await;
    assert_eq!(
        json(&b, &["list_vhost_limits"]).await,
        json!([{"vhost": "/", "value": {"max-queues": 3}}])
    );
    ok(&b, &["set_user_limits", "guest", r#"{"max-channels": 7}"#]).await;
    assert_eq!(
        json(&b, &["list_user_limits"]).await,
        json!([{"user": "guest", "value": {"max-channels": 7}}])
    );
    let err = fails(&b, &["set_vhost_limits", r#"{"max-channels": 1}"#]).await;
    assert!(err.contains("Unrecognised terms"), "{err}");
    ok(&b, &["clear_vhost_limits"]).await;
    ok(&b, &["clear_user_limits", "guest"]).await;
    assert_eq!(json(&b, &["list_vhost_limits"]).await, json!([]));
    assert_eq!(json(&b, &["list_user_limits"]).await, json!([]));
    b.stop().await;
}
