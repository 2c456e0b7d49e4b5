//! `lepus`: load the configuration, bind, run until SIGINT/SIGTERM.

use clap::Parser;
use lepus::config::Config;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(name = "lepus", version, about = "Lepus, an AMQP 0-9-1 message broker")]
struct Args {
    /// Configuration file (TOML); see config/lepus.toml.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Addresses to listen on, comma-separated (overrides the config file).
    #[arg(long)]
    bind: Option<String>,
    /// AMQP port (overrides the config file; 0 picks a free one).
    #[arg(long)]
    port: Option<u16>,
    /// HTTP management API port (overrides the config file; 0 picks a free one).
    #[arg(long)]
    mgmt_port: Option<u16>,
    /// amqps port (overrides [tls] port; TLS needs certfile and keyfile).
    #[arg(long)]
    tls_port: Option<u16>,
    /// Data directory (overrides the config file).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Join a cluster: etcd client URLs, comma-separated (enables [cluster]).
    #[arg(long, value_name = "URL[,URL]")]
    cluster_etcd: Option<String>,
    /// This node's name in the cluster.
    #[arg(long, value_name = "NAME")]
    node_name: Option<String>,
    /// The cluster replication port (0 picks a free one).
    #[arg(long, value_name = "PORT")]
    cluster_port: Option<u16>,
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LEPUS_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    let args = Args::parse();
    if let Err(e) = run(args) {
        eprintln!("lepus: {e}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<(), String> {
    let mut config = match &args.config {
        Some(p) => Config::from_file(p)?,
        None => Config::default(),
    };
    config.apply_env()?;
    if let Some(b) = args.bind {
        config.bind = lepus::config::split_list(&b);
    }
    if let Some(p) = args.port {
        config.port = p;
    }
    if let Some(p) = args.mgmt_port {
        config.mgmt_port = p;
    }
    if let Some(p) = args.tls_port {
        config.tls.port = p;
    }
    if let Some(d) = args.data_dir {
        config.data_dir = d;
    }
    if let Some(e) = args.cluster_etcd {
        config.cluster.enabled = true;
        config.cluster.etcd_endpoints = lepus::config::split_list(&e);
    }
    if let Some(n) = args.node_name {
        config.cluster.node_name = n;
    }
    if let Some(p) = args.cluster_port {
        config.cluster.port = p;
    }
    config.validate()?;
    // A certificate or key that cannot be read or parsed stops the start.
    let tls = lepus::tls::Tls::load(&config.tls)?;
    if config.cluster.enabled {
        return lepus::cluster::run(config, tls);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start runtime: {e}"))?;
    rt.block_on(async move {
        let listeners = lepus::server::bind_all(&config.bind, config.port)
            .await
            .map_err(|e| e.to_string())?;
        let mgmt = lepus::server::bind_mgmt(&config)
            .await
            .map_err(|e| format!("management API: {e}"))?;
        let amqps = lepus::server::bind_tls(&config)
            .await
            .map_err(|e| format!("amqps: {e}"))?;
        let mgmt_tls = config.mgmt_tls;
        let show = |ls: &[tokio::net::TcpListener]| {
            ls.iter()
                .filter_map(|l| l.local_addr().ok())
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let data_dir = config.data_dir.clone();
        let started = std::time::Instant::now();
        let broker = tokio::task::spawn_blocking(move || {
            lepus::broker::Broker::open(config, std::sync::Arc::new(lepus::store::io::RealIo))
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("cannot open data dir {}: {e}", data_dir.display()))?;
        tracing::info!(
            listen = %show(&listeners),
            amqps = %show(&amqps),
            mgmt = %show(&mgmt),
            mgmt_tls,
            data_dir = %data_dir.display(),
            startup_ms = started.elapsed().as_millis() as u64,
            "lepus ready"
        );
        let l = lepus::server::Listeners {
            amqp: listeners,
            amqps,
            mgmt,
            mgmt_tls,
            tls,
        };
        lepus::server::serve_all(l, broker, async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("signal handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        })
        .await;
        Ok::<(), String>(())
    })
}
