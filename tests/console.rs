//! The web console (src/mgmt/console.rs and its assets), in a real browser:
//! headless Chromium driven through chromedriver (WebDriver, with
//! fantoccini) against a broker started here, with lapin as the AMQP client
//! that makes the traffic the pages show. Screenshots of each page go to
//! `target/tmp/console-screenshots/`.
//!
//! Also, without a browser: the assets as served (types, caching, no
//! outside references), the 401 without a browser prompt, and the API the
//! console added (`/api/queues/{vhost}/{name}/move`, delayed paging, the
//! confirm rate).
//!
//! Chromium and chromedriver come from Debian (`chromium`,
//! `chromium-driver`); `.ci/run` installs them when missing.

mod common;

use common::http::Api;
use common::*;
use fantoccini::{Client, ClientBuilder, Locator};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, ExchangeKind};
use serde_json::{json, Value};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

// ----- the browser -----

fn find_binary(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path).chain([PathBuf::from("/usr/lib/chromium")]) {
        for n in names {
            let p = dir.join(n);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// chromedriver on a free port and one headless Chromium session.
struct Browser {
    client: Option<Client>,
    driver: Child,
    base: String,
    shots: PathBuf,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start(base: &str) -> Browser {
        let chromium = find_binary(&["chromium", "chromium-browser", "google-chrome"]).expect(
            "chromium is not installed (apt-get install chromium chromium-driver; .ci/run does it)",
        );
        let chromedriver = find_binary(&["chromedriver"]).expect(
            "chromedriver is not installed (apt-get install chromium-driver; .ci/run does it)",
        );
        // The port is free when asked; chromedriver binds it right after.
        let port = free_port();
        // Its own process group: chromedriver, the browser and its helpers
        // end together by the group's id, even when a failed test never
        // closes the session (the browser outlives a killed chromedriver).
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("chromedriver starts");
        let profile = tempfile::tempdir().unwrap();
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--window-size=1400,1000",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        let url = format!("http://127.0.0.1:{port}");
        let mut client = None;
        let mut last_err = String::new();
        let started = Instant::now();
        // chromedriver needs a moment to listen; Chromium to start.
        while started.elapsed() < Duration::from_secs(60) {
            let mut b =
                ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new());
            b.capabilities(caps.clone());
            match b.connect(&url).await {
                Ok(c) => {
                    client = Some(c);
                    break;
                }
                Err(e) => {
                    last_err = e.to_string();
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
        let client = client.unwrap_or_else(|| panic!("no WebDriver session: {last_err}"));
        client.set_window_size(1400, 1000).await.unwrap();
        let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
        std::fs::create_dir_all(&shots).unwrap();
        let _ = std::fs::remove_file(shots.join("failure.png"));
        Browser {
            client: Some(client),
            driver,
            base: base.to_owned(),
            shots,
            _profile: profile,
        }
    }

    fn c(&self) -> &Client {
        self.client.as_ref().unwrap()
    }

    async fn open(&self, hash: &str) {
        self.c()
            .goto(&format!("{}/#/{hash}", self.base))
            .await
            .unwrap();
    }

    async fn js(&self, script: &str) -> Value {
        self.c().execute(script, vec![]).await.unwrap()
    }

    /// Wait (bounded) until the element exists and its text contains `want`.
    async fn wait_text(&self, css: &str, want: &str) -> String {
        let started = Instant::now();
        let mut last = String::new();
        while started.elapsed() < Duration::from_secs(20) {
            if let Ok(e) = self.c().find(Locator::Css(css)).await {
                if let Ok(t) = e.text().await {
                    if t.contains(want) {
                        return t;
                    }
                    last = t;
                }
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        self.shot("failure").await;
        panic!("{css:?} never showed {want:?}; last text: {last:?}");
    }

    /// Wait (bounded) until a script answers true.
    async fn wait_js(&self, what: &str, script: &str) {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            if self.js(script).await == Value::Bool(true) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        self.shot("failure").await;
        panic!("never true: {what}");
    }

    async fn el(&self, css: &str) -> fantoccini::elements::Element {
        let started = Instant::now();
        loop {
            match self.c().find(Locator::Css(css)).await {
                Ok(e) => return e,
                Err(e) if started.elapsed() > Duration::from_secs(20) => {
                    self.shot("failure").await;
                    panic!("no element {css:?}: {e}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(150)).await,
            }
        }
    }

    /// Find the element and act on it; again (bounded) if the page's
    /// refresh replaced the element in between (a stale reference).
    async fn act(&self, css: &str, what: Act<'_>) {
        let started = Instant::now();
        loop {
            let e = self.el(css).await;
            let r = match what {
                Act::Click => e.click().await,
                Act::Fill(text) => match e.clear().await {
                    Ok(()) => e.send_keys(text).await,
                    Err(err) => Err(err),
                },
                Act::Choose(value) => e.select_by_value(value).await,
            };
            match r {
                Ok(()) => return,
                Err(err) if started.elapsed() > Duration::from_secs(20) => {
                    self.shot("failure").await;
                    panic!("{css:?}: {err}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    async fn click(&self, css: &str) {
        self.act(css, Act::Click).await;
    }

    async fn fill(&self, css: &str, text: &str) {
        self.act(css, Act::Fill(text)).await;
    }

    async fn choose(&self, css: &str, value: &str) {
        self.act(css, Act::Choose(value)).await;
    }

    /// Confirm the page's confirmation dialog.
    async fn confirm(&self) {
        self.click("#confirm-dialog #confirm-yes").await;
    }

    async fn shot(&self, name: &str) {
        if let Ok(png) = self.c().screenshot().await {
            let _ = std::fs::write(self.shots.join(format!("{name}.png")), png);
        }
    }

    async fn login(&self, user: &str, password: &str) {
        self.open("").await;
        self.fill("#login-user", user).await;
        self.fill("#login-password", password).await;
        self.click("#login-submit").await;
    }

    async fn close(mut self) {
        if let Some(c) = self.client.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), c.close()).await;
        }
        self.end_group();
    }
}

#[derive(Clone, Copy)]
enum Act<'a> {
    Click,
    Fill(&'a str),
    Choose(&'a str),
}

impl Browser {
    /// End chromedriver's process group (chromedriver, Chromium and its
    /// helpers), by the group's id, then reap chromedriver.
    fn end_group(&mut self) {
        let pgid = self.driver.id() as i32;
        // SAFETY: a plain kill(2) of the group this test started.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // A failed test still ends chromedriver and the browser.
        self.end_group();
    }
}

// ----- traffic -----

fn delayed_props(id: &str, delay_ms: i64) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert("x-delay".into(), AMQPValue::LongLongInt(delay_ms));
    BasicProperties::default()
        .with_message_id(id.into())
        .with_headers(headers)
}

// ----- the scenarios, in one browser session -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_in_a_real_browser() {
    let b = TestBroker::start().await;
    let api = Api::new(&b.mgmt_url());
    let browser = Browser::start(&b.mgmt_url()).await;

    // A login with a wrong password is refused, with the API's words.
    browser.login("guest", "not-the-password").await;
    browser.wait_text("#login-error", "Login failed").await;
    browser.shot("login-refused").await;

    // Log in.
    browser.login("guest", "guest").await;
    browser.wait_text("#who", "guest").await;
    browser.choose("#refresh-select", "2000").await;

    // Traffic, then the overview charts have points with a publish rate.
    let (conn, ch) = b.channel().await;
    // Durable and persistent, so the store syncs and fsync latency shows.
    ch.queue_declare("console.traffic".into(), durable(), FieldTable::default())
        .await
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let gen = {
        let stop = stop.clone();
        let uri = b.uri();
        tokio::spawn(async move { TrafficTarget(uri).run("console.traffic", stop).await })
    };
    browser.open("").await;
    browser.wait_text("#total-queues", "1").await;
    browser
        .wait_js(
            "the rates chart has at least 3 points and a publish rate and a confirm rate above 0",
            "const c = lepusConsole.charts.rates; return !!c && c.data[0].length >= 3 \
             && c.data[1].some(v => v > 0) && c.data[3].some(v => v > 0) && c.data[4].some(v => v > 0);",
        )
        .await;
    browser
        .wait_js(
            "the queued-messages chart has points",
            "const c = lepusConsole.charts.queued; return !!c && c.data[0].length >= 3;",
        )
        .await;
    browser.wait_text("#node-facts", "syncs)").await;
    browser.wait_text("#members", "lepus@").await;
    browser.shot("overview").await;
    stop.store(true, Ordering::Relaxed);
    gen.await.unwrap();

    // A queue that lapin declared, with its message count.
    declare_queue(&ch, "console.orders").await;
    ch.queue_declare(
        "console.jobs".into(),
        durable(),
        arg_table(&[
            ("x-message-ttl", int(60_000)),
            ("x-dead-letter-exchange", lstr("amq.fanout")),
            ("x-max-length", int(1000)),
            ("x-single-active-consumer", AMQPValue::Boolean(true)),
        ]),
    )
    .await
    .unwrap();
    for body in ["one", "two", "three"] {
        publish(&ch, "", "console.orders", body.as_bytes()).await;
    }
    browser.open("queues").await;
    browser.fill("#main input.filter", "console.orders").await;
    browser
        .wait_js(
            "the queues table shows console.orders with 3 ready",
            "const rows = [...document.querySelectorAll('#queues-table tbody tr')]; \
             return rows.length === 1 && rows[0].textContent.includes('console.orders') \
             && [...rows[0].cells].some(td => td.textContent === '3');",
        )
        .await;
    browser.fill("#main input.filter", "console.").await;
    browser.wait_text("#queues-table", "console.jobs").await;
    let features = browser.wait_text("#queues-table", "SAC").await;
    for f in ["D", "TTL", "DLX", "Lim"] {
        assert!(features.contains(f), "{features}");
    }
    browser.shot("queues").await;
    browser.fill("#main input.filter", "console.orders").await;
    browser
        .wait_js(
            "only console.orders is listed",
            "const rows = [...document.querySelectorAll('#queues-table tbody tr')]; \
             return rows.length === 1 && rows[0].textContent.includes('console.orders');",
        )
        .await;

    // Its page; publish a message from the page and get it back.
    browser.click("#queues-table a").await;
    browser.wait_text("#queue-name", "console.orders").await;
    browser.wait_text("#queue-ready", "3").await;
    browser.click("#section-publish > summary").await;
    browser
        .fill("#publish-payload", "hello from the console")
        .await;
    browser.click("#publish-form button[type=submit]").await;
    browser.wait_text("#flash", "Message published.").await;
    browser.wait_text("#queue-ready", "4").await;
    assert_eq!(queue_counts(&ch, "console.orders").await.0, 4);
    browser.fill("#get-count", "10").await;
    browser.choose("#get-ackmode", "ack_requeue_true").await;
    browser.click("#get-form button[type=submit]").await;
    browser
        .wait_text("#got-messages", "hello from the console")
        .await;
    let got = browser.wait_text("#got-messages", "Message 4").await;
    assert!(got.contains("one") && got.contains("three"), "{got}");
    // Requeued: still 4.
    assert_eq!(queue_counts(&ch, "console.orders").await.0, 4);
    browser.shot("queue-get").await;
    browser.js("window.scrollTo(0, 0); return true;").await;
    browser.shot("queue").await;

    // Move them to another queue, with the page's progress.
    declare_queue(&ch, "console.orders.moved").await;
    browser.click("#section-move > summary").await;
    browser
        .fill("#move-destination", "console.orders.moved")
        .await;
    browser.click("#move-form button[type=submit]").await;
    browser.confirm().await;
    browser.wait_text("#move-status", "4 moved, 0 left").await;
    assert_eq!(queue_counts(&ch, "console.orders").await.0, 0);
    assert_eq!(queue_counts(&ch, "console.orders.moved").await.0, 4);
    let bodies = drain(&ch, "console.orders.moved").await;
    assert_eq!(
        bodies,
        strs(&["one", "two", "three", "hello from the console"])
    );

    // Purge, with confirmation: cancelling keeps the messages.
    for body in ["a", "b"] {
        publish(&ch, "", "console.orders", body.as_bytes()).await;
    }
    browser.wait_text("#queue-ready", "2").await;
    browser.click("#purge-queue").await;
    browser
        .wait_text("#confirm-dialog", "Purge every ready message")
        .await;
    browser.click("#confirm-no").await;
    assert_eq!(queue_counts(&ch, "console.orders").await.0, 2);
    browser.click("#purge-queue").await;
    browser.confirm().await;
    browser.wait_text("#flash", "purged").await;
    browser.wait_text("#queue-ready", "0").await;
    assert_eq!(queue_counts(&ch, "console.orders").await.0, 0);

    // Delayed messages: cancel one pending message and see the count drop.
    ch.exchange_declare(
        "console.delays".into(),
        ExchangeKind::Custom("x-delayed-message".into()),
        lapin::options::ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        table(&[("x-delayed-type", "direct")]),
    )
    .await
    .unwrap();
    bind_queue(&ch, "console.orders", "console.delays", "later").await;
    for id in ["m1", "m2", "m3"] {
        ch.basic_publish(
            "console.delays".into(),
            "later".into(),
            BasicPublishOptions::default(),
            id.as_bytes(),
            delayed_props(id, 3_600_000),
        )
        .await
        .unwrap();
    }
    browser.open("delayed").await;
    browser.wait_text("#delayed-table", "console.delays").await;
    browser.shot("delayed-list").await;
    browser.click("#delayed-table a").await;
    browser.wait_text("#delayed-pending", "3").await;
    browser.wait_text("#pending-table", "m2").await;
    browser.shot("delayed").await;
    browser
        .click("#pending-table button[data-message-id='m2']")
        .await;
    browser.confirm().await;
    browser.wait_text("#delayed-pending", "2").await;
    let x = api.get("/api/exchanges/%2F/console.delays").await;
    assert_eq!(x.body["delayed"]["pending"], 2);
    let pending = api.get("/api/exchanges/%2F/console.delays/delayed").await;
    let ids: Vec<&str> = pending
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["message_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["m1", "m3"]);

    // The other pages render what the API has.
    browser.open("exchanges").await;
    browser
        .wait_text("#exchanges-table", "console.delays")
        .await;
    browser.shot("exchanges").await;
    browser.open("exchange/%2F/console.delays").await;
    browser
        .wait_text("#bindings-source", "console.orders")
        .await;
    browser.shot("exchange").await;
    browser.open("connections").await;
    browser.wait_text("#connections-table", "guest").await;
    browser.shot("connections").await;
    browser.click("#connections-table a").await;
    browser.wait_text("#client-properties", "lapin").await;
    browser.wait_text("#connection-channels", "(1)").await;
    browser.shot("connection").await;
    // Close a connection from its page, with a reason the client receives.
    let victim = tokio::time::timeout(
        Duration::from_secs(10),
        lapin::Connection::connect(
            &b.uri(),
            lapin::ConnectionProperties::default().with_connection_name("console-victim".into()),
        ),
    )
    .await
    .unwrap()
    .unwrap();
    let mut closes = watch_closes(&victim);
    let conns = api.get("/api/connections").await;
    let name = conns
        .body
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["user_provided_name"] == "console-victim")
        .expect("the connection is listed")["name"]
        .as_str()
        .unwrap()
        .to_owned();
    let encoded = percent_encoding::utf8_percent_encode(&name, percent_encoding::NON_ALPHANUMERIC);
    browser.open(&format!("connection/{encoded}")).await;
    browser
        .wait_text("#client-properties", "console-victim")
        .await;
    browser
        .fill("#close-reason", "closed from the console test")
        .await;
    browser.click("#close-connection").await;
    browser.confirm().await;
    let (code, text) = closes.next_close().await;
    assert_eq!(code, 320, "{text}");
    assert!(text.contains("closed from the console test"), "{text}");
    browser.wait_text("#connections-table", "guest").await;
    browser.open("admin/users").await;
    browser.wait_text("#users-table", "guest").await;
    browser.shot("admin").await;
    // Definitions import, as a file upload.
    let defs_dir = tempfile::tempdir().unwrap();
    let defs = defs_dir.path().join("defs.json");
    std::fs::write(
        &defs,
        json!({"vhosts": [{"name": "imported"}], "users": [], "permissions": [],
               "queues": [], "exchanges": [], "bindings": []})
        .to_string(),
    )
    .unwrap();
    browser.open("admin/definitions").await;
    browser
        .fill("#definitions-file", defs.to_str().unwrap())
        .await;
    browser.click("#import-definitions").await;
    browser.wait_text("#flash", "Definitions imported").await;
    assert_eq!(api.get("/api/vhosts/imported").await.status, 200);
    // An invalid document: the API's 400 words, and nothing changes.
    std::fs::write(&defs, "{\"vhosts\": [{\"name\": 7}]}").unwrap();
    browser
        .fill("#definitions-file", defs.to_str().unwrap())
        .await;
    browser.click("#import-definitions").await;
    browser
        .wait_text("#flash .error", "invalid definitions")
        .await;
    assert_eq!(api.get("/api/vhosts/imported").await.status, 200);
    browser.shot("admin-definitions").await;
    browser.click("#flash .error .flash-close").await;
    browser.open("admin/policies").await;
    browser.wait_text("#admin-body", "olicies").await;

    // 10,000 queues: the table pages through the API, 100 rows at a time.
    let bulk = b.connect().await;
    let bch = bulk.create_channel().await.unwrap();
    // nowait: pipelined declares; the last one waits for its declare-ok.
    for i in 0..10_000 {
        let opts = lapin::options::QueueDeclareOptions {
            nowait: i < 9_999,
            ..plain()
        };
        bch.queue_declare(
            format!("bulk.{i:05}").as_str().into(),
            opts,
            FieldTable::default(),
        )
        .await
        .unwrap();
    }
    browser.open("queues").await;
    browser.fill("#main input.filter", "").await;
    browser.wait_text(".pager-info", "of 10,004").await;
    browser.wait_text(".pager-info", "page 1 of 101").await;
    browser
        .wait_js(
            "100 rows on a page",
            "return document.querySelectorAll('#queues-table tbody tr').length === 100;",
        )
        .await;
    browser.click(".table-tools button.next").await;
    browser.wait_text(".pager-info", "page 2 of 101").await;
    browser.fill("#main input.filter", "bulk.09999").await;
    browser
        .wait_text(".pager-info", "1 of 10,004 · page 1 of 1")
        .await;
    browser.wait_text("#queues-table", "bulk.09999").await;
    browser.shot("queues-10k").await;
    bulk.close(200, "bye".into()).await.unwrap();

    // A management-tagged user: no admin pages.
    api.put(
        "/api/users/viewer",
        json!({"password": "viewer-pw", "tags": "management"}),
    )
    .await;
    api.put(
        "/api/permissions/%2F/viewer",
        json!({"configure": ".*", "write": ".*", "read": ".*"}),
    )
    .await;
    assert_eq!(
        browser.js("return lepusConsole.errors;").await,
        json!([]),
        "script errors in the console"
    );
    browser.click("#logout").await;
    browser.wait_text("#login-form", "Log in").await;
    browser.login("viewer", "viewer-pw").await;
    browser.wait_text("#who", "viewer").await;
    assert!(!browser.el("#nav-admin").await.is_displayed().await.unwrap());
    browser.open("admin").await;
    browser
        .wait_text("#admin-refused", "Not administrator user")
        .await;
    browser.shot("admin-refused").await;
    // But the queues are theirs to see.
    browser.open("queues").await;
    browser.fill("#main input.filter", "console.orders").await;
    browser.wait_text("#queues-table", "console.orders").await;

    // Every request the page made went to the broker itself.
    let elsewhere = browser
        .js(
            "return performance.getEntriesByType('resource').map(e => e.name) \
             .filter(n => !n.startsWith(location.origin + '/'));",
        )
        .await;
    assert_eq!(elsewhere, json!([]), "requests to other hosts");
    // No script error went unhandled on any page of this session.
    let errors = browser.js("return lepusConsole.errors;").await;
    assert_eq!(errors, json!([]), "script errors in the console");
    browser.close().await;
    conn.close(200, "bye".into()).await.unwrap();
    b.stop().await;
}

/// A lapin client that makes traffic on its own connection.
struct TrafficTarget(String);

impl TrafficTarget {
    async fn run(&self, queue: &str, stop: Arc<AtomicBool>) {
        let conn = connect(&self.0).await;
        let ch = conn.create_channel().await.unwrap();
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        let cch = conn.create_channel().await.unwrap();
        let mut consumer = cch
            .basic_consume(
                queue.into(),
                "traffic".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let acker = tokio::spawn(async move {
            use futures_lite::StreamExt;
            while let Some(Ok(d)) = consumer.next().await {
                if d.ack(BasicAckOptions::default()).await.is_err() {
                    break;
                }
            }
        });
        // Bounded: at most about a minute of traffic.
        for _ in 0..3000 {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            for _ in 0..20 {
                ch.basic_publish(
                    "".into(),
                    queue.into(),
                    BasicPublishOptions::default(),
                    b"tick",
                    persistent(),
                )
                .await
                .unwrap()
                .await
                .unwrap();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        acker.abort();
        let _ = conn.close(200, "done".into()).await;
    }
}

// ----- without a browser -----

#[tokio::test]
async fn assets_are_served_with_types_and_caching_and_reference_nothing_outside() {
    let b = TestBroker::start().await;
    let api = Api::new(&b.mgmt_url()).anonymous();
    let index = api.get("/").await;
    assert_eq!(index.status, 200);
    assert_eq!(
        index.content_type.as_deref(),
        Some("text/html; charset=utf-8")
    );
    // Every script, stylesheet and image the page names is served here.
    let re = regex::Regex::new(r##"(?:src|href)="([^"#]+)""##).unwrap();
    let refs: Vec<String> = re
        .captures_iter(&index.text)
        .map(|c| c[1].to_owned())
        .collect();
    assert!(refs.iter().any(|r| r == "/console/pages.js"), "{refs:?}");
    for r in &refs {
        assert!(r.starts_with("/console/"), "outside reference {r}");
        let a = api.get(r).await;
        assert_eq!(a.status, 200, "{r}");
    }
    let js = api.get("/console/app.js").await;
    assert_eq!(
        js.content_type.as_deref(),
        Some("text/javascript; charset=utf-8")
    );
    let css = api.get("/console/style.css").await;
    assert_eq!(css.content_type.as_deref(), Some("text/css; charset=utf-8"));
    // Our own files fetch nothing from elsewhere (no CDN, no fonts).
    for f in [
        "/",
        "/console/app.js",
        "/console/pages.js",
        "/console/style.css",
    ] {
        let t = api.get(f).await.text;
        for bad in ["http://", "https://", "//cdn", "@import"] {
            assert!(!t.contains(bad), "{f} contains {bad}");
        }
    }
    // Revalidation: the ETag answers 304.
    let etag = raw_header(&b, "/console/pages.js", "etag", &[])
        .await
        .unwrap();
    let cache = raw_header(&b, "/console/pages.js", "cache-control", &[]).await;
    assert_eq!(cache.as_deref(), Some("no-cache"));
    let status = raw_status(&b, "/console/pages.js", &[("If-None-Match", &etag)]).await;
    assert_eq!(status, 304);
    assert_eq!(api.get("/console/nothing.js").await.status, 404);
    b.stop().await;
}

async fn raw_response(
    b: &TestBroker,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, Vec<(String, String)>) {
    let url = format!("{}{path}", b.mgmt_url());
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let agent = ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                .build(),
        );
        let mut r = agent.get(&url);
        for (k, v) in &headers {
            r = r.header(k, v);
        }
        let resp = r.call().unwrap();
        let hs = resp
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
            .collect();
        (resp.status().as_u16(), hs)
    })
    .await
    .unwrap()
}

async fn raw_header(
    b: &TestBroker,
    path: &str,
    name: &str,
    headers: &[(&str, &str)],
) -> Option<String> {
    raw_response(b, path, headers)
        .await
        .1
        .into_iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

async fn raw_status(b: &TestBroker, path: &str, headers: &[(&str, &str)]) -> u16 {
    raw_response(b, path, headers).await.0
}

#[tokio::test]
async fn the_consoles_failed_logins_get_no_browser_prompt() {
    let b = TestBroker::start().await;
    let api = Api::new(&b.mgmt_url()).as_user("guest", "wrong");
    let plain = api.get("/api/whoami").await;
    assert_eq!(plain.status, 401);
    assert!(plain.www_authenticate.is_some());
    let xhr = api
        .request(
            "GET",
            "/api/whoami",
            None,
            &[("X-Requested-With", "XMLHttpRequest")],
        )
        .await;
    assert_eq!(xhr.status, 401);
    assert_eq!(xhr.www_authenticate, None);
    assert_eq!(xhr.body["reason"], "Login failed");
    b.stop().await;
}

#[tokio::test]
async fn move_takes_batches_loses_nothing_and_keeps_order() {
    let b = TestBroker::start().await;
    let api = Api::new(&b.mgmt_url());
    let (_c, ch) = confirm_channel(&b).await;
    ch.queue_declare("mv.src".into(), durable(), FieldTable::default())
        .await
        .unwrap();
    ch.queue_declare("mv.dst".into(), durable(), FieldTable::default())
        .await
        .unwrap();
    let n = 2500;
    let mut confirms = vec![];
    for i in 0..n {
        let props = persistent().with_message_id(format!("id-{i}").into());
        let pc = ch
            .basic_publish(
                "".into(),
                "mv.src".into(),
                BasicPublishOptions::default(),
                format!("m{i}").as_bytes(),
                props,
            )
            .await
            .unwrap();
        confirms.push(pc);
    }
    for pc in confirms {
        assert!(within(30, pc).await.unwrap().is_ack());
    }
    let mut moved = 0;
    let mut calls = 0;
    loop {
        let r = api
            .post(
                "/api/queues/%2F/mv.src/move",
                json!({"destination": "mv.dst", "count": 1000}),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        calls += 1;
        let m = r.body["moved"].as_u64().unwrap();
        assert!(m <= 1000);
        moved += m;
        assert_eq!(r.body["remaining"].as_u64().unwrap(), n - moved);
        if r.body["remaining"] == 0 || calls > 10 {
            break;
        }
    }
    assert_eq!(moved, n);
    assert_eq!(calls, 3);
    assert_eq!(queue_counts(&ch, "mv.src").await.0, 0);
    assert_eq!(queue_counts(&ch, "mv.dst").await.0 as u64, n);
    // Same properties, same order; and they survive a restart (persistent).
    let m = get_message(&ch, "mv.dst").await.unwrap();
    assert_eq!(m.delivery.data, b"m0");
    assert_eq!(
        m.delivery
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.as_str()),
        Some("id-0")
    );
    assert_eq!(m.delivery.properties.delivery_mode(), &Some(2));
    drop(m); // unacked: back in the queue when the channel goes
    b.stop().await;
}

#[tokio::test]
async fn move_survives_a_restart_and_refuses_bad_requests() {
    let mut b = TestBroker::start().await;
    let (c, ch) = confirm_channel(&b).await;
    for q in ["mr.src", "mr.dst"] {
        ch.queue_declare(q.into(), durable(), FieldTable::default())
            .await
            .unwrap();
    }
    for i in 0..10 {
        publish_confirmed(&ch, "", "mr.src", format!("m{i}").as_bytes(), persistent()).await;
    }
    c.close(200, "bye".into()).await.unwrap();
    let api = Api::new(&b.mgmt_url());
    let r = api
        .post(
            "/api/queues/%2F/mr.src/move",
            json!({"destination": "mr.dst", "count": 4}),
        )
        .await;
    assert_eq!(r.body, json!({"moved": 4, "remaining": 6}));
    b.restart().await;
    let api = Api::new(&b.mgmt_url());
    let (_c, ch) = b.channel().await;
    assert_eq!(queue_counts(&ch, "mr.src").await.0, 6);
    assert_eq!(queue_counts(&ch, "mr.dst").await.0, 4);
    assert_eq!(drain(&ch, "mr.dst").await, strs(&["m0", "m1", "m2", "m3"]));

    let missing = api
        .post(
            "/api/queues/%2F/mr.src/move",
            json!({"destination": "nope"}),
        )
        .await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.body["reason"], "no queue 'nope' in vhost '/'");
    let same = api
        .post(
            "/api/queues/%2F/mr.src/move",
            json!({"destination": "mr.src"}),
        )
        .await;
    assert_eq!(same.status, 400);
    let none = api.post("/api/queues/%2F/mr.src/move", json!({})).await;
    assert_eq!(none.status, 400);
    assert_eq!(none.body["reason"], "destination must be set");
    let gone = api
        .post(
            "/api/queues/%2F/nope/move",
            json!({"destination": "mr.dst"}),
        )
        .await;
    assert_eq!(gone.status, 404);
    // A management user without read permission on the source is refused.
    api.put(
        "/api/users/mover",
        json!({"password": "pw", "tags": "management"}),
    )
    .await;
    api.put(
        "/api/permissions/%2F/mover",
        json!({"configure": "", "write": ".*", "read": "^mr\\.dst$"}),
    )
    .await;
    let refused = api
        .as_user("mover", "pw")
        .post(
            "/api/queues/%2F/mr.src/move",
            json!({"destination": "mr.dst"}),
        )
        .await;
    assert_eq!(refused.status, 401, "{}", refused.text);
    assert_eq!(queue_counts(&ch, "mr.src").await.0, 6);
    b.stop().await;
}

#[tokio::test]
async fn delayed_messages_page_through_offset_and_confirms_are_counted() {
    let b = TestBroker::start().await;
    let api = Api::new(&b.mgmt_url());
    let (_c, ch) = confirm_channel(&b).await;
    ch.exchange_declare(
        "pg.delays".into(),
        ExchangeKind::Custom("x-delayed-message".into()),
        lapin::options::ExchangeDeclareOptions::default(),
        table(&[("x-delayed-type", "direct")]),
    )
    .await
    .unwrap();
    for i in 0..7 {
        publish_confirmed(
            &ch,
            "pg.delays",
            "k",
            b"x",
            delayed_props(&format!("d{i}"), 3_600_000 + i * 1000),
        )
        .await;
    }
    let page = api
        .get("/api/exchanges/%2F/pg.delays/delayed?limit=3&offset=3")
        .await;
    let ids: Vec<&str> = page
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["message_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["d3", "d4", "d5"]);
    let tail = api
        .get("/api/exchanges/%2F/pg.delays/delayed?limit=3&offset=6")
        .await;
    assert_eq!(tail.body.as_array().unwrap().len(), 1);
    // A cancelled message is no longer pending (the console's count drops).
    let c = api.delete("/api/exchanges/%2F/pg.delays/delayed/d3").await;
    assert_eq!(c.body, json!({"cancelled": 1}));
    let x = api.get("/api/exchanges/%2F/pg.delays").await;
    assert_eq!(x.body["delayed"]["pending"], 6);
    let again = api
        .get("/api/exchanges/%2F/pg.delays/delayed?limit=3&offset=3")
        .await;
    let ids: Vec<&str> = again
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["message_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["d4", "d5", "d6"]);
    // The 7 confirms are counted for the overview's confirm rate.
    let o = api.get("/api/overview").await;
    assert!(o.body["message_stats"]["confirm"].as_u64().unwrap() >= 7);
    assert!(o.body["message_stats"]["confirm_details"]["rate"].is_number());
    b.stop().await;
}

#[tokio::test]
async fn a_page_of_queues_is_the_same_whether_built_whole_or_by_window() {
    // The queue list builds full JSON only for the page's items when the page
    // is chosen by name; the answer must be what sorting and paging every
    // full object gives.
    let b = TestBroker::start().await;
    let api = Api::new(&b.mgmt_url());
    api.put("/api/vhosts/other", json!({})).await;
    let (_c, ch) = b.channel().await;
    for i in 0..23 {
        let name = format!("w.{}", (i * 7) % 23);
        declare_queue(&ch, &name).await;
        publish(&ch, "", &name, b"x").await;
    }
    for name in ["W.upper", "other.a", "w.5x"] {
        api.put(&format!("/api/queues/other/{name}"), json!({}))
            .await;
    }
    // Rates settle (sampled once a second: up after the publishes, then back
    // to 0), so the calls below all see the same values.
    let (mut seen_up, mut settled) = (false, false);
    for _ in 0..100 {
        let o = api.get("/api/overview").await.body;
        let r = o["message_stats"]["publish_details"]["rate"]
            .as_f64()
            .unwrap();
        seen_up |= r > 0.0;
        if seen_up && r == 0.0 {
            settled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(settled, "the publish rate never went up and back to 0");
    let full = api.get("/api/queues").await.body;
    let full = full.as_array().unwrap().clone();
    assert_eq!(full.len(), 26);
    let cases = [
        ("", false, "", false, 1, 5),
        ("name", false, "", false, 2, 5),
        ("name", true, "", false, 3, 4),
        ("vhost", true, "", false, 1, 7),
        ("name", false, "w.1", false, 1, 3),
        ("name", true, "^w\\.[12]", true, 1, 100),
        ("", false, "W.5", false, 1, 2),
        ("messages", false, "", false, 1, 4),
        ("messages", true, "", false, 2, 4),
        ("messages_ready", true, "w", false, 1, 30),
        ("consumers", false, "", false, 3, 10),
        ("message_stats.publish_details.rate", true, "", false, 1, 3),
    ];
    for (sort, reverse, name, regex, page, size) in cases {
        let mut q = format!("page={page}&page_size={size}&use_regex={regex}");
        if !sort.is_empty() {
            q += &format!("&sort={sort}&sort_reverse={reverse}");
        }
        if !name.is_empty() {
            q += &format!(
                "&name={}",
                percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC)
            );
        }
        let got = api.get(&format!("/api/queues?{q}")).await;
        assert_eq!(got.status, 200, "{q}: {}", got.text);
        // The same by hand from the whole list.
        let mut items = full.clone();
        if !sort.is_empty() {
            // As the API compares: numbers as numbers, strings as strings.
            let at = |v: &Value| {
                sort.split('.')
                    .try_fold(v.clone(), |v, k| v.get(k).cloned())
                    .unwrap_or(Value::Null)
            };
            items.sort_by(|a, b| match (at(a), at(b)) {
                (Value::Number(x), Value::Number(y)) => {
                    x.as_f64().partial_cmp(&y.as_f64()).unwrap()
                }
                (x, y) => x.as_str().cmp(&y.as_str()),
            });
            if reverse {
                items.reverse();
            }
        }
        let re = regex::RegexBuilder::new(name)
            .case_insensitive(true)
            .build()
            .unwrap();
        items.retain(|i| {
            let n = i["name"].as_str().unwrap();
            name.is_empty()
                || if regex {
                    re.is_match(n)
                } else {
                    n.to_lowercase().contains(&name.to_lowercase())
                }
        });
        let filtered = items.len();
        let want: Vec<Value> = items
            .into_iter()
            .skip((page - 1) * size)
            .take(size)
            .collect();
        // Compared on the fields that do not move (rates may, between calls);
        // `messages` and `type` are only in full objects, not in stubs.
        let key = |v: &Value| {
            (
                v["vhost"].clone(),
                v["name"].clone(),
                v["messages"].clone(),
                v["type"].clone(),
            )
        };
        let got_keys: Vec<_> = got.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(key)
            .collect();
        let want_keys: Vec<_> = want.iter().map(key).collect();
        assert_eq!(got_keys, want_keys, "{q}");
        assert_eq!(got.body["filtered_count"], filtered, "{q}");
        assert_eq!(got.body["total_count"], 26, "{q}");
        for i in got.body["items"].as_array().unwrap() {
            assert_eq!(i["type"], "classic", "{q}: a stub on the page: {i}");
        }
    }
    b.stop().await;
}
