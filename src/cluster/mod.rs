//! Clustering: one leader serves every client and streams each durable
//! change to its followers; etcd decides who leads and who is in sync.
//! See docs/cluster.md for the protocol, the confirm rule and failover.
//!
//! - `etcd`: the keys in etcd (members, leader, ISR, secret). The only
//!   consensus is etcd's.
//! - `leader`: the store's replication observer (the confirm rule), the
//!   replication port's sessions, and the ISR monitor.
//! - `follower`: copies the leader's data directory and applies its stream.
//! - `proxy`: a follower relays AMQP and HTTP connections to the leader.
//! - `wire`: the replication port's handshake and frames.
//!
//! A node's life: bind every port, register in etcd, then follow (relaying
//! clients to the leader) until it wins a campaign (there is no leader, and
//! it is in the ISR), then open its data directory with the normal recovery
//! and serve until it shuts down or loses its lease. A leader never goes
//! back to following: it exits, and a restart follows the new leader.
//!
//! The etcd client and the ISR monitor run on a runtime of their own, so a
//! broker thread waiting for followers in a sync can never starve them.
//!
//! Imported by the launcher only.

mod etcd;
mod follower;
mod leader;
mod proxy;
mod wire;

use crate::config::Config;
use etcd::{Etcd, IsrState, Member};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::runtime::Runtime;
use tokio::sync::watch;

/// The file that says this data directory once held a complete copy of a
/// leader's (or was a leader's). Without it a node may not lead, even if
/// etcd lists it in the ISR: its directory may have been wiped.
const MARKER: &str = "lepus.node";

/// Run this node until SIGINT/SIGTERM (or a lost leadership, an error).
pub fn run(config: Config, tls: Option<Arc<crate::tls::Tls>>) -> Result<(), String> {
    let control = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("lepus-cluster")
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start runtime: {e}"))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start runtime: {e}"))?;
    let r = rt.block_on(node(config, tls, &control));
    control.shutdown_timeout(Duration::from_secs(1));
    r
}

/// Run `f` on the control runtime and wait for it.
async fn on<F>(control: &Runtime, f: F) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    control.spawn(f).await.expect("cluster task panicked")
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("signal handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

async fn node(
    config: Config,
    tls: Option<Arc<crate::tls::Tls>>,
    control: &Runtime,
) -> Result<(), String> {
    let c = config.cluster.clone();
    let listeners = crate::server::bind_all(&config.bind, config.port)
        .await
        .map_err(|e| e.to_string())?;
    let amqps = crate::server::bind_tls(&config)
        .await
        .map_err(|e| format!("amqps: {e}"))?;
    let mgmt_tls = config.mgmt_tls;
    let mgmt = crate::server::bind_mgmt(&config)
        .await
        .map_err(|e| format!("management API: {e}"))?;
    let repl = std::net::TcpListener::bind((c.bind.as_str(), c.port)).map_err(|e| {
        format!(
            "replication port: cannot listen on {} port {}: {e}",
            c.bind, c.port
        )
    })?;
    let port = |l: &tokio::net::TcpListener| l.local_addr().map(|a| a.port()).unwrap_or(0);
    let adv = &c.advertised_address;
    let me = Member {
        name: c.node_name.clone(),
        amqp: format!("{adv}:{}", port(&listeners[0])),
        http: format!("{adv}:{}", port(&mgmt[0])),
        repl: format!("{adv}:{}", repl.local_addr().map(|a| a.port()).unwrap_or(0)),
        amqps: amqps
            .first()
            .map(|l| format!("{adv}:{}", port(l)))
            .unwrap_or_default(),
    };
    let data_dir = config.data_dir.clone();
    std::fs::create_dir_all(&data_dir)
        .map_err(|e| format!("cannot create data dir {}: {e}", data_dir.display()))?;

    let cc = c.clone();
    let me2 = me.clone();
    let etcd = on(control, async move { Etcd::connect(&cc, me2).await }).await?;
    // The lease is kept alive from the start: registering may wait.
    let (lost_tx, lost_rx) = watch::channel(None::<String>);
    {
        let e = etcd.clone();
        control.spawn(async move {
            let why = e.keep_alive().await;
            let _ = lost_tx.send(Some(why));
        });
    }
    let mut etcd = {
        let mut e = etcd;
        on(control, async move { e.register().await.map(|_| e) }).await?
    };
    let secret = {
        let mut e = etcd.clone();
        let configured = c.secret.clone();
        Arc::new(on(control, async move { e.secret(&configured).await }).await?)
    };
    crate::mgmt::set_node_name(&me.name);
    tracing::info!(
        node = %me.name,
        amqp = %me.amqp,
        http = %me.http,
        replication = %me.repl,
        amqps = %if me.amqps.is_empty() { "-" } else { &me.amqps },
        etcd = %c.etcd_endpoints.join(","),
        "cluster member registered; following until elected"
    );

    // ----- follower -----
    let dir_lock = crate::broker::lock_data_dir(&data_dir)
        .map_err(|e| format!("data dir {}: {e}", data_dir.display()))?;
    let (leader_tx, leader_rx) = watch::channel(None::<Member>);
    let ctl = Arc::new(follower::Control::default());
    let follower_thread = {
        let (ctl, leader_rx, root, secret, name) = (
            ctl.clone(),
            leader_rx.clone(),
            data_dir.clone(),
            secret.clone(),
            me.name.clone(),
        );
        std::thread::Builder::new()
            .name("lepus-follower".into())
            .spawn(move || follow_loop(&ctl, leader_rx, &root, &secret, &name))
            .map_err(|e| e.to_string())?
    };
    // What the relays connect to follows the leader. amqps and HTTPS are
    // relayed as bytes too: TLS ends at the leader.
    let amqp_target = leader_address(&leader_rx, |m| &m.amqp);
    let http_target = leader_address(&leader_rx, |m| &m.http);
    let amqps_target = leader_address(&leader_rx, |m| &m.amqps);
    let elect = {
        let e = etcd.clone();
        let root = data_dir.clone();
        let lost = lost_rx.clone();
        control.spawn(campaign_loop(e, leader_tx, root, lost))
    };
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let mut lost = lost_rx.clone();
    let won: Result<(IsrState, u64), String> = tokio::select! {
        r = elect => r.map_err(|e| e.to_string()).and_then(|r| r),
        _ = crate::cluster::proxy::relay(&listeners, amqp_target, "amqp") => unreachable!(),
        _ = crate::cluster::proxy::relay(&mgmt, http_target, "http") => unreachable!(),
        _ = crate::cluster::proxy::relay(&amqps, amqps_target, "amqps") => unreachable!(),
        _ = &mut shutdown => Err(String::new()),
        _ = lost.changed() => Err(format!("lost the etcd lease: {}", lost.borrow().clone().unwrap_or_default())),
    };
    ctl.stop();
    let _ = tokio::task::spawn_blocking(move || follower_thread.join()).await;
    drop(dir_lock);
    let (state, previous_epoch) = match won {
        Ok(w) => w,
        Err(why) => {
            let mut e = etcd.clone();
            on(control, async move { e.resign().await }).await;
            return if why.is_empty() { Ok(()) } else { Err(why) };
        }
    };

    // ----- leader -----
    write_marker(&data_dir, &format!("led from epoch {}", state.epoch));
    tracing::info!(node = %me.name, epoch = state.epoch, "elected leader; recovering the data directory");
    let rep = leader::Replicator::new(&me.name, c.min_insync(), (me.amqp.clone(), me.http.clone()));
    rep.failovers
        .store(previous_epoch, std::sync::atomic::Ordering::Relaxed);
    let io: Arc<dyn crate::store::io::StoreIo> = Arc::new(crate::store::io::Observed::new(
        crate::store::io::RealIo,
        rep.clone(),
    ));
    let started = std::time::Instant::now();
    let broker = tokio::task::spawn_blocking(move || crate::broker::Broker::open(config, io))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("cannot open data dir {}: {e}", data_dir.display()))?;
    rep.start_confirming();
    let _ = broker.cluster.set(rep.clone());
    {
        let (rep, root, secret) = (rep.clone(), data_dir.clone(), secret.clone());
        std::thread::Builder::new()
            .name("lepus-repl-accept".into())
            .spawn(move || leader::accept(repl, rep, root, secret))
            .map_err(|e| e.to_string())?;
    }
    let (ended_tx, mut ended_rx) = watch::channel(None::<String>);
    {
        let weak = Arc::downgrade(&broker);
        let alarm = move |reason: Option<String>| {
            if let Some(b) = weak.upgrade() {
                b.set_external_alarm("cluster", reason);
            }
        };
        let (rep, e, tx) = (rep.clone(), etcd.clone(), ended_tx.clone());
        let timeout = Duration::from_millis(c.isr_timeout_ms);
        control.spawn(async move {
            let why = leader::monitor(rep, e, state, timeout, alarm).await;
            let _ = tx.send(Some(why));
        });
    }
    tracing::info!(
        node = %me.name,
        recovery_ms = started.elapsed().as_millis() as u64,
        "leader serving"
    );
    let fenced = rep.clone();
    let ended_watch = ended_rx.clone();
    let all = crate::server::Listeners {
        amqp: listeners,
        amqps,
        mgmt,
        mgmt_tls,
        tls,
    };
    crate::server::serve_all(all, broker, async move {
        tokio::select! {
            _ = &mut shutdown => fenced.drain(),
            _ = lost.changed() => {
                let why = lost.borrow().clone().unwrap_or_default();
                tracing::error!(reason = %why, "lost the etcd lease: another node may lead now; stopping");
                fenced.fence("lost leadership");
                let _ = ended_tx.send(Some(format!("lost the etcd lease: {why}")));
            }
            _ = ended_rx.changed() => {
                fenced.fence("lost leadership");
            }
        }
    })
    .await;
    rep.fence("shut down");
    let ended = ended_watch.borrow().clone();
    on(control, async move { etcd.resign().await }).await;
    match ended {
        Some(why) if why != "shut down" => Err(why),
        _ => Ok(()),
    }
}

/// Poll etcd: publish the leader, and campaign when there is none and this
/// node may lead (it is in the ISR and its directory is a complete copy, or
/// the cluster is new). Returns the ISR this node now leads, and the number
/// of leaders before it.
async fn campaign_loop(
    mut etcd: Etcd,
    leader_tx: watch::Sender<Option<Member>>,
    root: PathBuf,
    lost: watch::Receiver<Option<String>>,
) -> Result<(IsrState, u64), String> {
    let mut warned = false;
    loop {
        if let Some(why) = lost.borrow().clone() {
            return Err(format!("lost the etcd lease: {why}"));
        }
        let r: Result<Option<(IsrState, u64)>, String> = async {
            match etcd.leader().await? {
                Some(l) => {
                    if l.name != etcd.me.name {
                        leader_tx.send_if_modified(|v| {
                            let changed = v.as_ref() != Some(&l);
                            *v = Some(l.clone());
                            changed
                        });
                    }
                    // Our own name under an old lease: a previous run of this
                    // node; wait for it to expire.
                    Ok(None)
                }
                None => {
                    leader_tx.send_if_modified(|v| v.take().is_some());
                    let isr = etcd.isr().await?;
                    let eligible = match &isr {
                        None => true,
                        Some((s, _)) => s.isr.contains(&etcd.me.name) && root.join(MARKER).exists(),
                    };
                    if !eligible {
                        return Ok(None);
                    }
                    let before = isr.as_ref().map_or(0, |(s, _)| s.epoch);
                    Ok(etcd.campaign(isr.as_ref()).await?.map(|s| (s, before)))
                }
            }
        }
        .await;
        match r {
            Ok(Some(won)) => {
                // A leader's lease must not be silently replaced.
                etcd.renewable
                    .store(false, std::sync::atomic::Ordering::SeqCst);
                return Ok(won);
            }
            Ok(None) => warned = false,
            Err(e) => {
                if !warned {
                    tracing::warn!(error = %e, "etcd unavailable; retrying");
                    warned = true;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One of the leader's addresses, kept current as the leader changes
/// (`None`: no leader, or it has no such listener).
fn leader_address(
    leader: &watch::Receiver<Option<Member>>,
    field: fn(&Member) -> &String,
) -> watch::Receiver<Option<String>> {
    let (tx, rx) = watch::channel(None::<String>);
    let mut lr = leader.clone();
    tokio::spawn(async move {
        loop {
            let v = lr
                .borrow_and_update()
                .as_ref()
                .map(field)
                .filter(|a| !a.is_empty())
                .cloned();
            let _ = tx.send(v);
            if lr.changed().await.is_err() {
                return;
            }
        }
    });
    rx
}

/// Follow whichever node leads, reconnecting after every break, until stopped.
fn follow_loop(
    ctl: &Arc<follower::Control>,
    leader: watch::Receiver<Option<Member>>,
    root: &Path,
    secret: &[u8],
    me: &str,
) {
    use std::sync::atomic::Ordering;
    let mut last_error = String::new();
    while !ctl.stop.load(Ordering::SeqCst) {
        let Some(l) = leader.borrow().clone() else {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        ctl.copied.store(false, Ordering::SeqCst);
        let r = follower::follow(&l, me, root, secret, ctl, || {
            write_marker(root, &format!("copied from {}", l.name))
        });
        if ctl.stop.load(Ordering::SeqCst) {
            return;
        }
        match r {
            Ok(()) => {}
            Err(e) => {
                let msg = e.to_string();
                if msg != last_error {
                    tracing::warn!(leader = %l.name, error = %msg, "replication from the leader stopped; reconnecting");
                    last_error = msg;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn write_marker(root: &Path, what: &str) {
    let path = root.join(MARKER);
    let r = std::fs::write(&path, format!("{what}\n"))
        .and_then(|_| std::fs::File::open(&path)?.sync_all())
        .and_then(|_| std::fs::File::open(root)?.sync_all());
    if let Err(e) = r {
        tracing::error!(error = %e, path = %path.display(), "cannot write the node marker");
    }
}
