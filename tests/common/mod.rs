//! Shared test helpers: a real broker on a free port in a temporary data dir,
//! and lapin connections to it. The suites see the broker's internals only
//! through the helpers of `internals.rs` (on [`TestBroker`]).
#![allow(dead_code)]

pub mod cluster;
pub mod http;
mod internals;
pub mod raw;
#[allow(unused_imports)]
pub use internals::{differences, take_bodies, Faults, Mirror, Op, Recorder, DELAY_INDEX_SPILL};

use lapin::{Channel, Connection, ConnectionProperties, ErrorKind};
use lepus::config::Config;
use lepus::server::Handle;
use std::time::Duration;

pub struct TestBroker {
    handle: Option<Handle>,
    pub dir: tempfile::TempDir,
    pub config: Config,
}

pub fn test_config(dir: &std::path::Path) -> Config {
    let mut c = Config {
        port: 0,
        mgmt_port: 0,
        data_dir: dir.to_path_buf(),
        ..Default::default()
    };
    c.limits.disk_free_limit = 0;
    c.limits.memory_high_watermark = 0.0;
    c.store.segment_size = 4 * 1024 * 1024;
    c
}

impl TestBroker {
    pub async fn start() -> TestBroker {
        let dir = tempfile::tempdir().unwrap();
        let config = test_config(dir.path());
        Self::start_with(dir, config).await
    }

    pub async fn start_with(dir: tempfile::TempDir, config: Config) -> TestBroker {
        let handle = lepus::server::start(config.clone())
            .await
            .expect("broker starts");
        TestBroker {
            handle: Some(handle),
            dir,
            config,
        }
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        self.handle.as_ref().unwrap().addr
    }

    /// Where amqps clients connect, if `[tls]` is on.
    pub fn tls_addr(&self) -> Option<std::net::SocketAddr> {
        self.handle.as_ref().unwrap().tls_addr
    }

    /// Where the HTTP management API listens.
    pub fn mgmt_addr(&self) -> std::net::SocketAddr {
        self.handle.as_ref().unwrap().mgmt_addr
    }

    /// "http://127.0.0.1:PORT", the management API's base URL.
    pub fn mgmt_url(&self) -> String {
        format!("http://{}", self.mgmt_addr())
    }

    pub fn uri(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.addr())
    }

    pub async fn connect(&self) -> Connection {
        connect(&self.uri()).await
    }

    pub async fn channel(&self) -> (Connection, Channel) {
        let c = self.connect().await;
        let ch = c.create_channel().await.unwrap();
        (c, ch)
    }

    /// Stop and start again on the same data dir (a clean restart), on a new port.
    pub async fn restart(&mut self) {
        if let Some(h) = self.handle.take() {
            h.shutdown().await;
        }
        let h = lepus::server::start(self.config.clone())
            .await
            .expect("broker restarts");
        self.handle = Some(h);
    }

    /// Stop, keeping the data dir for a later [`TestBroker::restart`].
    pub async fn shutdown(&mut self) {
        self.handle
            .take()
            .expect("the broker is running")
            .shutdown()
            .await;
    }

    pub async fn stop(mut self) {
        if let Some(h) = self.handle.take() {
            h.shutdown().await;
        }
    }
}

pub async fn connect(uri: &str) -> Connection {
    tokio::time::timeout(
        Duration::from_secs(10),
        Connection::connect(uri, ConnectionProperties::default()),
    )
    .await
    .expect("connect timed out")
    .expect("connect")
}

/// The AMQP reply code in a lapin error, if it is a protocol error.
pub fn reply_code(e: &lapin::Error) -> Option<u16> {
    match e.kind() {
        ErrorKind::ProtocolError(p) => Some(p.get_id()),
        _ => None,
    }
}

pub fn reply_text(e: &lapin::Error) -> String {
    match e.kind() {
        ErrorKind::ProtocolError(p) => p.get_message().to_string(),
        other => format!("{other:?}"),
    }
}

/// Wait for `f` to become true, polling, for at most `secs`.
pub async fn eventually(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + Duration::from_secs(secs);
    while std::time::Instant::now() < end {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    f()
}

/// Wait for the async check `f` to hold, polling every 20 ms, for at most
/// `secs`: whether it did.
pub async fn eventually_async<Fut>(secs: u64, mut f: impl FnMut() -> Fut) -> bool
where
    Fut: std::future::Future<Output = bool>,
{
    let end = std::time::Instant::now() + Duration::from_secs(secs);
    while std::time::Instant::now() < end {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f().await
}

pub async fn within<T>(secs: u64, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .expect("timed out")
}

static PANICS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
static PANIC_HOOK: std::sync::Once = std::sync::Once::new();

/// Start recording panics that happen anywhere in this test process outside
/// the test files themselves (the broker's tasks and threads, its
/// dependencies). A broker task that panics is swallowed by tokio, so a test
/// that wants to prove "no panic" calls this first and checks
/// [`panics_outside_tests`] at the end.
pub fn watch_panics() {
    PANIC_HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let in_tests = info
                .location()
                .map(|l| l.file().starts_with("tests/") || l.file().contains("/tests/"))
                .unwrap_or(false);
            if !in_tests {
                let thread = std::thread::current().name().unwrap_or("?").to_string();
                PANICS
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(format!("thread '{thread}': {info}"));
            }
            previous(info);
        }));
    });
}

/// Panics recorded since [`watch_panics`] was first called.
pub fn panics_outside_tests() -> Vec<String> {
    PANICS.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

// ----- helpers added for the exchange, queue, consuming and confirm/tx suites -----

use futures_lite::StreamExt;
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Confirmation};

/// The connection's events, to see the reply code of a channel or connection
/// close that no pending call reports (after a publish or an ack, which have
/// no reply). Create it before the failing operation.
pub struct Closes {
    events: std::pin::Pin<Box<dyn futures_lite::Stream<Item = lapin::Event> + Send>>,
}

pub fn watch_closes(c: &Connection) -> Closes {
    Closes {
        events: Box::pin(c.events_listener()),
    }
}

impl Closes {
    /// The reply code of the next channel.close or connection.close the client
    /// got (waits at most 5 s).
    pub async fn next_code(&mut self) -> u16 {
        let wait = async {
            loop {
                match self.events.next().await {
                    Some(lapin::Event::Error(e)) => {
                        if let Some(code) = reply_code(&e) {
                            return code;
                        }
                    }
                    Some(_) => {}
                    None => panic!("connection events ended without a close"),
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(5), wait)
            .await
            .expect("expected the broker to close the channel or connection within 5 s; it did not")
    }
}

/// A table of string values.
pub fn table(pairs: &[(&str, &str)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in pairs {
        t.insert((*k).into(), AMQPValue::LongString((*v).into()));
    }
    t
}

/// Declare a plain (transient, non-exclusive) queue.
pub async fn declare_queue(ch: &Channel, name: &str) {
    ch.queue_declare(
        name.into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap_or_else(|e| panic!("declare queue {name}: {e}"));
}

/// (ready message count, consumer count) from a passive declare.
pub async fn queue_counts(ch: &Channel, name: &str) -> (u32, u32) {
    let q = within(
        5,
        ch.queue_declare(
            name.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("passive declare {name}: {e}"));
    (q.message_count(), q.consumer_count())
}

/// Publish without waiting for anything but the write.
pub async fn publish(ch: &Channel, exchange: &str, key: &str, body: &[u8]) {
    publish_with(ch, exchange, key, body, BasicProperties::default()).await;
}

pub async fn publish_with(
    ch: &Channel,
    exchange: &str,
    key: &str,
    body: &[u8],
    props: BasicProperties,
) {
    within(
        5,
        ch.basic_publish(
            exchange.into(),
            key.into(),
            BasicPublishOptions::default(),
            body,
            props,
        ),
    )
    .await
    .expect("basic.publish");
}

/// Publish on a channel in confirm mode and wait for the broker's confirm,
/// however long it takes.
pub async fn publish_confirmed(
    ch: &Channel,
    exchange: &str,
    key: &str,
    body: &[u8],
    props: BasicProperties,
) -> Confirmation {
    ch.basic_publish(
        exchange.into(),
        key.into(),
        BasicPublishOptions::default(),
        body,
        props,
    )
    .await
    .expect("basic.publish")
    .await
    .expect("publisher confirm")
}

/// [`publish_confirmed`], failing the test if the publish or the confirm
/// takes longer than `secs` seconds.
pub async fn publish_confirmed_within(
    secs: u64,
    ch: &Channel,
    exchange: &str,
    key: &str,
    body: &[u8],
    props: BasicProperties,
) -> Confirmation {
    let pc = within(
        secs,
        ch.basic_publish(
            exchange.into(),
            key.into(),
            BasicPublishOptions::default(),
            body,
            props,
        ),
    )
    .await
    .expect("basic.publish");
    within(secs, pc).await.expect("publisher confirm")
}

/// A channel in confirm mode on a new connection.
pub async fn confirm_channel(b: &TestBroker) -> (Connection, Channel) {
    let (c, ch) = b.channel().await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    (c, ch)
}

/// basic.get with no-ack until the queue is empty; the bodies as strings.
pub async fn drain(ch: &Channel, queue: &str) -> Vec<String> {
    let mut out = vec![];
    loop {
        let m = within(
            5,
            ch.basic_get(queue.into(), BasicGetOptions { no_ack: true }),
        )
        .await
        .unwrap_or_else(|e| panic!("basic.get {queue}: {e}"));
        match m {
            Some(m) => out.push(String::from_utf8_lossy(&m.delivery.data).into_owned()),
            None => return out,
        }
    }
}

/// basic.get with acks required: (delivery tag, body, redelivered).
pub async fn get_one(ch: &Channel, queue: &str) -> Option<(u64, String, bool)> {
    within(
        5,
        ch.basic_get(queue.into(), BasicGetOptions { no_ack: false }),
    )
    .await
    .unwrap_or_else(|e| panic!("basic.get {queue}: {e}"))
    .map(|m| {
        (
            m.delivery.delivery_tag,
            String::from_utf8_lossy(&m.delivery.data).into_owned(),
            m.delivery.redelivered,
        )
    })
}

/// Whether the consumer stays silent for `ms` milliseconds.
pub async fn silent_for(consumer: &mut lapin::Consumer, ms: u64) -> bool {
    tokio::time::timeout(Duration::from_millis(ms), consumer.next())
        .await
        .is_err()
}

/// The next delivery of a consumer, failing the test after 5 s or if the
/// consumer ended.
pub async fn next_delivery(consumer: &mut lapin::Consumer) -> lapin::message::Delivery {
    within(10, consumer.next())
        .await
        .expect("consumer ended")
        .expect("delivery error")
}

/// The reply code of a failed call, failing the test if it succeeded or if
/// the failure carries no reply code.
#[track_caller]
pub fn expect_code<T>(r: Result<T, lapin::Error>) -> u16 {
    match r {
        Ok(_) => panic!("expected the broker to refuse, but it succeeded"),
        Err(e) => reply_code(&e).unwrap_or_else(|| panic!("error without a reply code: {e:?}")),
    }
}

// ----- helpers added for the queue-feature suites (TTL, dead-lettering,
// limits, priorities, deduplication) -----

impl Closes {
    /// The (reply code, reply text) of the next channel.close or
    /// connection.close the client got (waits at most 5 s).
    pub async fn next_close(&mut self) -> (u16, String) {
        let wait = async {
            loop {
                match self.events.next().await {
                    Some(lapin::Event::Error(e)) => {
                        if let Some(code) = reply_code(&e) {
                            return (code, reply_text(&e));
                        }
                    }
                    Some(_) => {}
                    None => panic!("connection events ended without a close"),
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(5), wait)
            .await
            .expect("expected the broker to close the channel or connection within 5 s; it did not")
    }
}

/// A table from (key, value) pairs.
pub fn arg_table(pairs: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in pairs {
        t.insert((*k).into(), v.clone());
    }
    t
}

/// A longstr value.
pub fn lstr(s: &str) -> AMQPValue {
    AMQPValue::LongString(s.into())
}

/// A signedint (32-bit) value, as most clients send integer arguments.
pub fn int(i: i32) -> AMQPValue {
    AMQPValue::LongInt(i)
}

/// An array of longstr values.
pub fn str_array(items: &[&str]) -> AMQPValue {
    AMQPValue::FieldArray(lapin::types::FieldArray::from(
        items.iter().map(|s| lstr(s)).collect::<Vec<_>>(),
    ))
}

/// Declare a queue with options and arguments, failing the test on an error.
pub async fn declare_queue_with(
    ch: &Channel,
    name: &str,
    options: QueueDeclareOptions,
    arguments: FieldTable,
) {
    within(5, ch.queue_declare(name.into(), options, arguments))
        .await
        .unwrap_or_else(|e| panic!("declare queue {name}: {e}"));
}

/// Declare an exchange with arguments, failing the test on an error.
pub async fn declare_exchange_with(
    ch: &Channel,
    name: &str,
    kind: lapin::ExchangeKind,
    options: lapin::options::ExchangeDeclareOptions,
    arguments: FieldTable,
) {
    within(
        5,
        ch.exchange_declare(name.into(), kind, options, arguments),
    )
    .await
    .unwrap_or_else(|e| panic!("declare exchange {name}: {e}"));
}

/// Bind a queue to an exchange with a routing key.
pub async fn bind_queue(ch: &Channel, queue: &str, exchange: &str, key: &str) {
    within(
        5,
        ch.queue_bind(
            queue.into(),
            exchange.into(),
            key.into(),
            lapin::options::QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("bind {queue} to {exchange} with {key:?}: {e}"));
}

/// basic.get (acks required) returning the whole message.
pub async fn get_message(ch: &Channel, queue: &str) -> Option<lapin::message::BasicGetMessage> {
    within(
        5,
        ch.basic_get(queue.into(), BasicGetOptions { no_ack: false }),
    )
    .await
    .unwrap_or_else(|e| panic!("basic.get {queue}: {e}"))
}

/// A string header or table field (longstr or shortstr).
pub fn field_str(t: &FieldTable, key: &str) -> Option<String> {
    match t.inner().get(key)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// The headers of a message (empty when it has none).
pub fn headers_of(p: &BasicProperties) -> FieldTable {
    p.headers().clone().unwrap_or_default()
}

/// The entries of the x-death header, in order; each must be a table.
pub fn x_deaths(p: &BasicProperties) -> Vec<FieldTable> {
    let h = headers_of(p);
    match h.inner().get("x-death") {
        None => vec![],
        Some(AMQPValue::FieldArray(a)) => a
            .as_slice()
            .iter()
            .map(|v| match v {
                AMQPValue::FieldTable(t) => t.clone(),
                other => panic!("x-death entry is not a table: {other:?}"),
            })
            .collect(),
        Some(other) => panic!("x-death is not an array: {other:?}"),
    }
}

// ----- options, properties and small helpers shared by several suites -----

/// Default queue.declare options: transient, not exclusive, not auto-delete.
pub fn plain() -> QueueDeclareOptions {
    QueueDeclareOptions::default()
}

/// queue.declare options for a durable queue.
pub fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

/// queue.declare options for a passive declare (does the queue exist?).
pub fn passive() -> QueueDeclareOptions {
    QueueDeclareOptions {
        passive: true,
        ..Default::default()
    }
}

/// exchange.declare options for a passive declare.
pub fn passive_exchange() -> lapin::options::ExchangeDeclareOptions {
    lapin::options::ExchangeDeclareOptions {
        passive: true,
        ..Default::default()
    }
}

/// Properties of a persistent message (delivery mode 2).
pub fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2)
}

/// A delivery's body as a string.
pub fn text(d: &lapin::message::Delivery) -> String {
    String::from_utf8_lossy(&d.data).into_owned()
}

/// Owned strings, in the given order.
pub fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// The strings, sorted.
pub fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// The "name" field of every object in a JSON array (management API and
/// lepusctl JSON output).
pub fn names(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|x| x["name"].as_str().unwrap().to_owned())
        .collect()
}

/// Encode one AMQP frame to its wire bytes.
pub fn encode(frame: &amq_protocol::frame::AMQPFrame) -> Vec<u8> {
    amq_protocol::frame::gen_frame(frame)(amq_protocol::frame::WriteContext::from(Vec::new()))
        .expect("encodable frame")
        .write
}

/// Arguments dead-lettering through the default exchange into `dlq`, plus `more`.
pub fn dead_letter_to(dlq: &str, more: &[(&str, AMQPValue)]) -> FieldTable {
    let mut pairs: Vec<(&str, AMQPValue)> = vec![
        ("x-dead-letter-exchange", lstr("")),
        ("x-dead-letter-routing-key", lstr(dlq)),
    ];
    pairs.extend(more.iter().cloned());
    arg_table(&pairs)
}

/// Poll basic.get (acks required) until a message comes (at most `secs`).
pub async fn wait_get(
    ch: &Channel,
    queue: &str,
    secs: u64,
) -> Option<lapin::message::BasicGetMessage> {
    let end = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(m) = get_message(ch, queue).await {
            return Some(m);
        }
        if std::time::Instant::now() >= end {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Start a consumer (acks required) with the given tag.
pub async fn consume(ch: &Channel, queue: &str, tag: &str) -> lapin::Consumer {
    consume_with(ch, queue, tag, FieldTable::default()).await
}

/// Start a consumer (acks required) with the given tag and arguments.
pub async fn consume_with(
    ch: &Channel,
    queue: &str,
    tag: &str,
    arguments: FieldTable,
) -> lapin::Consumer {
    within(
        5,
        ch.basic_consume(
            queue.into(),
            tag.into(),
            lapin::options::BasicConsumeOptions::default(),
            arguments,
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("consume {queue}: {e}"))
}

/// Publish each body to `queue` through the default exchange, waiting at most
/// 5 s for each confirm: whether each was acked.
pub async fn publish_all(ch: &Channel, queue: &str, bodies: &[&str]) -> Vec<bool> {
    let mut acks = vec![];
    for body in bodies {
        let c = publish_confirmed_within(
            5,
            ch,
            "",
            queue,
            body.as_bytes(),
            BasicProperties::default(),
        )
        .await;
        acks.push(c.is_ack());
    }
    acks
}

/// Declare an exchange with default options and no arguments.
pub async fn declare_exchange(ch: &Channel, name: &str, kind: lapin::ExchangeKind) {
    ch.exchange_declare(
        name.into(),
        kind,
        lapin::options::ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap_or_else(|e| panic!("declare exchange {name}: {e}"));
}

/// The reply code of a passive queue.declare on a fresh connection, `None`
/// if the queue exists and is not exclusive to another connection.
pub async fn passive_declare_code(b: &TestBroker, name: &str) -> Option<u16> {
    let (_c, ch) = b.channel().await;
    match within(
        5,
        ch.queue_declare(name.into(), passive(), FieldTable::default()),
    )
    .await
    {
        Ok(_) => None,
        Err(e) => Some(reply_code(&e).unwrap_or_else(|| panic!("passive declare {name}: {e}"))),
    }
}

/// Whether a queue exists, asked on a fresh connection (so exclusivity
/// elsewhere does not matter: 405 counts as existing).
pub async fn queue_exists(b: &TestBroker, name: &str) -> bool {
    let (_c, ch) = b.channel().await;
    match within(
        5,
        ch.queue_declare(name.into(), passive(), FieldTable::default()),
    )
    .await
    {
        Ok(_) => true,
        Err(e) => match reply_code(&e) {
            Some(404) => false,
            Some(405) => true,
            _ => panic!("passive declare of {name}: {e}"),
        },
    }
}

/// Whether a passive declare on a fresh connection answers 404.
pub async fn queue_missing(b: &TestBroker, name: &str) -> bool {
    let (_c, ch) = b.channel().await;
    let r = within(
        5,
        ch.queue_declare(name.into(), passive(), FieldTable::default()),
    )
    .await;
    matches!(r, Err(ref e) if reply_code(e) == Some(404))
}

/// Whether an exchange exists, asked with a passive declare on a fresh
/// connection (any refusal but 404 fails the test).
pub async fn exchange_exists(b: &TestBroker, name: &str) -> bool {
    let (_c, ch) = b.channel().await;
    match within(
        5,
        ch.exchange_declare(
            name.into(),
            lapin::ExchangeKind::Direct,
            passive_exchange(),
            FieldTable::default(),
        ),
    )
    .await
    {
        Ok(()) => true,
        Err(e) => {
            assert_eq!(reply_code(&e), Some(404), "passive declare of {name}: {e}");
            false
        }
    }
}
