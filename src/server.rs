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

/// Bind the amqps listeners (each of `bind`, on `tls.port`), if TLS is on.
pub async fn bind_tls(config: &Config) -> std::io::Result<Vec<TcpListener>> {
    if !config.tls.enabled() {
        return Ok(vec![]);
    }
    bind_all(&config.bind, config.tls.port).await
}

/// Every listener the broker serves.
#[derive(Default)]
pub struct Listeners {
    /// Plain AMQP.
    pub amqp: Vec<TcpListener>,
    /// amqps: TLS with `tls.amqp`'s configuration (needs `tls`).
    pub amqps: Vec<TcpListener>,
    /// The HTTP management API (none: no API); HTTPS if `mgmt_tls` and `tls`.
    pub mgmt: Vec<TcpListener>,
    pub mgmt_tls: bool,
    /// The loaded certificates ([`crate::tls::Tls::load`]).
    pub tls: Option<Arc<crate::tls::Tls>>,
}

/// [`run`], plus the HTTP management API on the `mgmt` listeners (none: no API).
pub async fn run_with_mgmt(
    listeners: Vec<TcpListener>,
    mgmt: Vec<TcpListener>,
    broker: Arc<Broker>,
    shutdown: impl Future<Output = ()>,
) {
    let l = Listeners {
        amqp: listeners,
        mgmt,
        ..Listeners::default()
    };
    serve_all(l, broker, shutdown).await
}

/// Serve plain AMQP, amqps and the management API until `shutdown`
/// completes, then close every connection and sync the store.
pub async fn serve_all(l: Listeners, broker: Arc<Broker>, shutdown: impl Future<Output = ()>) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let housekeeping = tokio::spawn(housekeeping(broker.clone(), stop_rx.clone()));
    let amqp_addr = l.amqp.first().and_then(|l| l.local_addr().ok());
    let amqps_addr = l.amqps.first().and_then(|l| l.local_addr().ok());
    let tls = l.tls.clone();
    let mgmt = (!l.mgmt.is_empty()).then(|| {
        tokio::spawn(crate::mgmt::serve(
            l.mgmt,
            amqp_addr,
            amqps_addr,
            if l.mgmt_tls { tls.clone() } else { None },
            broker.clone(),
            stop_rx.clone(),
        ))
    });
    // One accept task per address, all feeding this loop; amqps sockets
    // are marked to go through the TLS handshake first.
    let (accepted_tx, mut accepted) = tokio::sync::mpsc::channel(64);
    let mut acceptors: Vec<_> = l
        .amqp
        .into_iter()
        .map(|l| tokio::spawn(accept_loop(l, false, accepted_tx.clone())))
        .collect();
    if tls.is_some() {
        acceptors.extend(
            l.amqps
                .into_iter()
                .map(|l| tokio::spawn(accept_loop(l, true, accepted_tx.clone()))),
        );
    }
    drop(accepted_tx);
    let mut conns = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            Some((socket, peer, is_tls)) = accepted.recv() => {
                match (&tls, is_tls) {
                    (Some(tls), true) => {
                        conns.spawn(serve_tls(broker.clone(), tls.clone(), socket, peer, stop_rx.clone()));
                    }
                    _ => {
                        conns.spawn(crate::connection::serve(broker.clone(), socket, peer, stop_rx.clone()));
                    }
                }
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

/// The TLS handshake (under its own timeout, RabbitMQ's
/// `ssl_handshake_timeout`), then the same connection code as plain TCP. A
/// refused client certificate is logged with the reason (expired, unknown
/// issuer, none presented); a client that is not speaking TLS (a plain
/// AMQP header) or stalls is dropped.
async fn serve_tls(
    broker: Arc<Broker>,
    tls: Arc<crate::tls::Tls>,
    socket: tokio::net::TcpStream,
    peer: SocketAddr,
    stop: watch::Receiver<bool>,
) {
    match tokio::time::timeout(tls.handshake_timeout, tls.amqp.accept(socket)).await {
        Ok(Ok(stream)) => crate::connection::serve(broker, stream, peer, stop).await,
        Ok(Err(e)) => match crate::tls::handshake_error(&e) {
            (true, reason) => tracing::warn!(%peer, %reason, "TLS connection refused"),
            (false, reason) => tracing::info!(%peer, %reason, "TLS handshake failed"),
        },
        Err(_) => tracing::info!(
            %peer,
            timeout_ms = tls.handshake_timeout.as_millis() as u64,
            "TLS handshake timed out"
        ),
    }
}

/// Accept on one listener and hand each socket to the server loop.
async fn accept_loop(
    listener: TcpListener,
    is_tls: bool,
    to: tokio::sync::mpsc::Sender<(tokio::net::TcpStream, SocketAddr, bool)>,
) {
    loop {
        match listener.accept().await {
            Ok((socket, peer)) => {
                if to.send((socket, peer, is_tls)).await.is_err() {
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
    /// Where amqps clients connect (the first `bind` address), if TLS is on.
    pub tls_addr: Option<SocketAddr>,
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
    // Certificates are read before the data dir is opened: a bad file
    // stops the start with its name and what is wrong.
    let tls = crate::tls::Tls::load(&config.tls).map_err(std::io::Error::other)?;
    let amqps = bind_tls(&config).await?;
    let tls_addr = amqps.first().map(|l| l.local_addr()).transpose()?;
    let mgmt_tls = config.mgmt_tls;
    let broker = tokio::task::spawn_blocking(move || Broker::open(config, io))
        .await
        .map_err(std::io::Error::other)??;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let b = broker.clone();
    let l = Listeners {
        amqp: listeners,
        amqps,
        mgmt,
        mgmt_tls,
        tls,
    };
    let task = tokio::spawn(serve_all(l, b, async move {
        let _ = rx.await;
    }));
    Ok(Handle {
        addr,
        addrs,
        mgmt_addr,
        tls_addr,
        broker,
        stop: Some(tx),
        task: Some(task),
    })
}
