//! Shared test helpers: a real broker on a free port in a temporary data dir,
//! and lapin connections to it.
#![allow(dead_code)]

use lapin::{Channel, Connection, ConnectionProperties, ErrorKind};
use lepus::config::Config;
use lepus::server::Handle;
use std::time::Duration;

pub struct TestBroker {
    pub handle: Option<Handle>,
    pub dir: tempfile::TempDir,
    pub config: Config,
}

pub fn test_config(dir: &std::path::Path) -> Config {
    let mut c = Config::default();
    c.port = 0;
    c.mgmt_port = 0;
    c.data_dir = dir.to_path_buf();
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
        let handle = lepus::server::start(config.clone()).await.expect("broker starts");
        TestBroker {
            handle: Some(handle),
            dir,
            config,
        }
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        self.handle.as_ref().unwrap().addr
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

    pub fn broker(&self) -> &std::sync::Arc<lepus::broker::Broker> {
        &self.handle.as_ref().unwrap().broker
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
        let h = lepus::server::start(self.config.clone()).await.expect("broker restarts");
        self.handle = Some(h);
    }

    pub async fn stop(mut self) {
        if let Some(h) = self.handle.take() {
            h.shutdown().await;
        }
    }
}

pub async fn connect(uri: &str) -> Connection {
    tokio::time::timeout(Duration::from_secs(10), Connection::connect(uri, ConnectionProperties::default()))
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

pub async fn within<T>(secs: u64, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), f).await.expect("timed out")
}
