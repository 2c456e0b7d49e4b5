//! The accept loop, background housekeeping, and shutdown.
//!
//! `run` takes already-bound listeners (one per `bind` address) and a shutdown future, so tests
//! start the real server on port 0 in a temporary data dir.
//!
//! Imported by the launcher only; it is the one place that wires the
//! connection layer, the management API and the broker together.

use crate::broker::Broker;
use crate::config::Config;
use crate::store::io::{RealIo, StoreIo};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Accept connections until `shutdown` completes, then close them all and
/// sync the store.
pub async fn run(
    listeners: Vec<TcpListener>,
    broker: Arc<Broker>,
    shutdown: impl Future<Output = ()>,
) {
    run_with_mgmt(listeners, vec![], broker, shutdown).await
}

/// Bind `port` on every address. With port 0 the first address picks a
/// free port and the others take the same one, so one port number reaches
/// the broker on each address. An error names the address.
pub async fn bind_all(addrs: &[String], port: u16) -> std::io::Result<Vec<TcpListener>> {
    let mut listeners: Vec<TcpListener> = Vec::with_capacity(addrs.len());
    for a in addrs {
        let port = match listeners.first() {
            Some(l) if port == 0 => l.local_addr()?.port(),
            _ => port,
        };
        let l = TcpListener::bind((a.as_str(), port)).await.map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot listen on {a} port {port}: {e}"))
        })?;
        listeners.push(l);
    }
    Ok(listeners)
}

/// Bind the management API's listeners (each of `mgmt_bind`, on `mgmt_port`).
pub async fn bind_mgmt(config: &Config) -> std::io::Result<Vec<TcpListener>> {
    bind_all(&config.mgmt_bind, config.mgmt_port).await
}

/// [`run`], plus the HTTP management API on the `mgmt` listeners (none: no API).
pub async fn run_with_mgmt(
    listeners: Vec<TcpListener>,
    mgmt: Vec<TcpListener>,
    broker: Arc<Broker>,
    shutdown: impl Future<Output = ()>,
) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let housekeeping = tokio::spawn(housekeeping(broker.clone(), stop_rx.clone()));
    let amqp_addr = listeners.first().and_then(|l| l.local_addr().ok());
    let mgmt = (!mgmt.is_empty()).then(|| {
        tokio::spawn(crate::mgmt::serve(
            mgmt,
            amqp_addr,
            broker.clone(),
            stop_rx.clone(),
        ))
    });
    // One accept task per address, all feeding this loop.
    let (accepted_tx, mut accepted) = tokio::sync::mpsc::channel(64);
    let acceptors: Vec<_> = listeners
        .into_iter()
        .map(|l| tokio::spawn(accept_loop(l, accepted_tx.clone())))
        .collect();
    drop(accepted_tx);
    let mut conns = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            Some((socket, peer)) = accepted.recv() => {
                conns.spawn(crate::connection::serve(broker.clone(), socket, peer, stop_rx.clone()));
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            _ = &mut shutdown => break,
        }
    }
    tracing::info!("shutting down");
    for a in &acceptors {
        a.abort();
    }
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    conns.abort_all();
    housekeeping.abort();
    if let Some(m) = mgmt {
        m.abort();
    }
    broker.shutdown();
}

/// Accept on one listener and hand each socket to the server loop.
async fn accept_loop(
    listener: TcpListener,
    to: tokio::sync::mpsc::Sender<(tokio::net::TcpStream, SocketAddr)>,
) {
    loop {
        match listener.accept().await {
            Ok(conn) => {
                if to.send(conn).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                // Out of file descriptors and the like: back off, don't spin.
                tracing::error!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Once a second: resource alarms, and trimming mapped segment pages from
/// RSS; every tenth time, compaction of sparse segments.
async fn housekeeping(broker: Arc<Broker>, mut stop: watch::Receiver<bool>) {
    let every = Duration::from_millis(broker.config.limits.check_interval_ms.max(50));
    let mut tick = tokio::time::interval(every);
    let mut ticks: u64 = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        ticks += 1;
        let compact = ticks.is_multiple_of(10);
        let b = broker.clone();
        let _ = tokio::task::spawn_blocking(move || {
            if compact {
                b.compact();
            }
            b.store.trim_rss();
            b.store.flush_acks();
            let mut reasons = vec![];
            let limits = &b.config.limits;
            if let Some(free) = crate::sys::disk_free(&b.config.data_dir) {
                if free < limits.disk_free_limit {
                    reasons.push(format!(
                        "disk free {free} below limit {}",
                        limits.disk_free_limit
                    ));
                }
            }
            if let (Some(rss), Some(total)) = (crate::sys::rss_bytes(), crate::sys::total_memory())
            {
                let limit = (total as f64 * limits.memory_high_watermark) as u64;
                if limits.memory_high_watermark > 0.0 && rss > limit {
                    reasons.push(format!("memory {rss} above high watermark {limit}"));
                }
            }
            if reasons.is_empty() != b.resource_alarms.lock().is_empty() {
                if reasons.is_empty() {
                    tracing::info!("resource alarm cleared; publishers unblocked");
                } else {
                    tracing::warn!(?reasons, "resource alarm: publishers blocked");
                }
            }
            b.set_alarm(reasons);
        })
        .await;
    }
}

/// A running broker, for tests and embedding.
pub struct Handle {
    /// Where AMQP clients connect (the first `bind` address).
    pub addr: SocketAddr,
    /// Every AMQP listener's address, one per `bind` address.
    pub addrs: Vec<SocketAddr>,
    /// Where the HTTP management API listens (the first `mgmt_bind` address).
    pub mgmt_addr: SocketAddr,
    pub broker: Arc<Broker>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Handle {
    /// Stop accepting, close connections, sync the store.
    pub async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

/// Open the data dir, bind, and run in the background on the current runtime.
pub async fn start(config: Config) -> std::io::Result<Handle> {
    start_with_io(config, Arc::new(RealIo)).await
}

pub async fn start_with_io(config: Config, io: Arc<dyn StoreIo>) -> std::io::Result<Handle> {
    if config.bind.is_empty() || config.mgmt_bind.is_empty() {
        return Err(std::io::Error::other("bind and mgmt_bind need an address"));
    }
    let listeners = bind_all(&config.bind, config.port).await?;
    let addrs = listeners
        .iter()
        .map(|l| l.local_addr())
        .collect::<std::io::Result<Vec<_>>>()?;
    let addr = addrs[0];
    let mgmt = bind_mgmt(&config).await?;
    let mgmt_addr = mgmt[0].local_addr()?;
    let broker = tokio::task::spawn_blocking(move || Broker::open(config, io))
        .await
        .map_err(std::io::Error::other)??;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let b = broker.clone();
    let task = tokio::spawn(run_with_mgmt(listeners, mgmt, b, async move {
        let _ = rx.await;
    }));
    Ok(Handle {
        addr,
        addrs,
        mgmt_addr,
        broker,
        stop: Some(tx),
        task: Some(task),
    })
}
