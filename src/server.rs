//! The accept loop, background housekeeping, and shutdown.
//!
//! `run` takes an already-bound listener and a shutdown future, so tests
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
pub async fn run(listener: TcpListener, broker: Arc<Broker>, shutdown: impl Future<Output = ()>) {
    run_with_mgmt(listener, None, broker, shutdown).await
}

/// Bind the management API's listener (`mgmt_bind`:`mgmt_port`).
pub async fn bind_mgmt(config: &Config) -> std::io::Result<TcpListener> {
    TcpListener::bind((config.mgmt_bind.as_str(), config.mgmt_port)).await
}

/// [`run`], plus the HTTP management API on `mgmt` if given.
pub async fn run_with_mgmt(
    listener: TcpListener,
    mgmt: Option<TcpListener>,
    broker: Arc<Broker>,
    shutdown: impl Future<Output = ()>,
) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let housekeeping = tokio::spawn(housekeeping(broker.clone(), stop_rx.clone()));
    let amqp_addr = listener.local_addr().ok();
    let mgmt = mgmt.map(|l| {
        tokio::spawn(crate::mgmt::serve(
            l,
            amqp_addr,
            broker.clone(),
            stop_rx.clone(),
        ))
    });
    let mut conns = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((socket, peer)) => {
                    conns.spawn(crate::connection::serve(broker.clone(), socket, peer, stop_rx.clone()));
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off, don't spin.
                    tracing::error!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            _ = &mut shutdown => break,
        }
    }
    tracing::info!("shutting down");
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
            if reasons.is_empty() != b.alarm_reasons.lock().is_empty() {
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
    pub addr: SocketAddr,
    /// Where the HTTP management API listens.
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
    let listener = TcpListener::bind((config.bind.as_str(), config.port)).await?;
    let addr = listener.local_addr()?;
    let mgmt = bind_mgmt(&config).await?;
    let mgmt_addr = mgmt.local_addr()?;
    let broker = tokio::task::spawn_blocking(move || Broker::open(config, io))
        .await
        .map_err(std::io::Error::other)??;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let b = broker.clone();
    let task = tokio::spawn(run_with_mgmt(listener, Some(mgmt), b, async move {
        let _ = rx.await;
    }));
    Ok(Handle {
        addr,
        mgmt_addr,
        broker,
        stop: Some(tx),
        task: Some(task),
    })
}
