//! Real clusters for tests: an etcd server and `lepus` nodes as separate
//! processes (so `kill -9` and SIGSTOP are real), on free ports in temporary
//! directories. Nodes bind port 0 and the harness reads the ports they got
//! from their log line "cluster member registered".
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const LEASE_TTL_MS: u64 = 2000;
pub const ISR_TIMEOUT_MS: u64 = 1500;

fn etcd_binary() -> PathBuf {
    for p in ["/usr/bin/etcd", "/usr/local/bin/etcd"] {
        if Path::new(p).exists() {
            return p.into();
        }
    }
    panic!("etcd not found: install Debian's etcd-server (.ci/run does)");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Etcd {
    child: Child,
    pub url: String,
    _dir: tempfile::TempDir,
}

impl Etcd {
    /// An etcd with short election timings (its lease TTL floor follows
    /// them), on free ports. Retried if a port was taken meanwhile.
    pub fn start() -> Etcd {
        for _ in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            let (client, peer) = (free_port(), free_port());
            let url = format!("http://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let log = std::fs::File::create(dir.path().join("etcd.log")).unwrap();
            let mut child = Command::new(etcd_binary())
                .args(["--name", "t"])
                .arg("--data-dir")
                .arg(dir.path().join("data"))
                .args([
                    "--listen-client-urls",
                    &url,
                    "--advertise-client-urls",
                    &url,
                ])
                .args(["--listen-peer-urls", &peer_url])
                .args(["--initial-advertise-peer-urls", &peer_url])
                .args(["--initial-cluster", &format!("t={peer_url}")])
                .args(["--heartbeat-interval", "50", "--election-timeout", "300"])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start etcd");
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if ureq::get(&format!("{url}/health")).call().is_ok() {
                    return Etcd {
                        child,
                        url,
                        _dir: dir,
                    };
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("etcd did not start");
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Node {
    pub name: String,
    pub dir: PathBuf,
    pub child: Option<Child>,
    lines: Arc<Mutex<Vec<String>>>,
    pub amqp: String,
    pub http: String,
    pub repl: String,
    /// The amqps listener's address ("-" without TLS).
    pub amqps: String,
    pub extra_env: Vec<(String, String)>,
    pub etcd_url: String,
}

impl Node {
    /// A node not started yet (set `name` and `dir`, then `spawn_raw`).
    pub fn unstarted(etcd: &str, name: &str, dir: &Path) -> Node {
        Node {
            name: name.into(),
            dir: dir.into(),
            child: None,
            lines: Default::default(),
            amqp: String::new(),
            http: String::new(),
            repl: String::new(),
            amqps: String::new(),
            extra_env: vec![],
            etcd_url: etcd.into(),
        }
    }

    /// Start `name` with its data in `dir`; returns once it is registered.
    pub fn start(etcd: &str, name: &str, dir: &Path, env: &[(&str, &str)]) -> Node {
        let mut n = Node::unstarted(etcd, name, dir);
        n.extra_env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        n.launch();
        n
    }

    fn command(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_lepus"));
        c.args(["--cluster-etcd", &self.etcd_url, "--node-name", &self.name])
            .args(["--cluster-port", "0", "--port", "0", "--mgmt-port", "0"])
            .arg("--data-dir")
            .arg(&self.dir)
            .env("LEPUS_CLUSTER_LEASE_TTL_MS", LEASE_TTL_MS.to_string())
            .env("LEPUS_CLUSTER_ISR_TIMEOUT_MS", ISR_TIMEOUT_MS.to_string())
            .env("LEPUS_LOG", "info,lepus::cluster=debug")
            .env_remove("LEPUS_CLUSTER_SECRET");
        for (k, v) in &self.extra_env {
            c.env(k, v);
        }
        c
    }

    /// Spawn the process, keeping its output lines (also in `<dir>.log`).
    pub fn spawn_raw(&mut self) {
        let mut child = self
            .command()
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start lepus");
        let lines = Arc::new(Mutex::new(vec![]));
        let log_path = self.dir.with_extension("log");
        for out in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let lines = lines.clone();
            let log_path = log_path.clone();
            std::thread::spawn(move || {
                use std::io::Write;
                let mut log = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(log_path)
                    .ok();
                for l in BufReader::new(out).lines().map_while(Result::ok) {
                    if let Some(f) = log.as_mut() {
                        let _ = writeln!(f, "{l}");
                    }
                    lines.lock().unwrap().push(l);
                }
            });
        }
        self.lines = lines;
        self.child = Some(child);
    }

    /// Spawn and wait for registration; read the ports from the log.
    pub fn launch(&mut self) {
        self.spawn_raw();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let found = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains("cluster member registered"))
                .cloned();
            if let Some(l) = found {
                let field = |k: &str| {
                    let at = l.find(&format!(" {k}=")).unwrap() + k.len() + 2;
                    l[at..].split_whitespace().next().unwrap().to_string()
                };
                self.amqp = field("amqp");
                self.http = field("http");
                self.repl = field("replication");
                self.amqps = field("amqps");
                return;
            }
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "{} exited ({st}) before registering:\n{}",
                    self.name,
                    self.output()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} did not register:\n{}",
                self.name,
                self.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn output(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    pub fn logged(&self, needle: &str) -> bool {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains(needle))
    }

    pub fn uri(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.amqp)
    }

    pub fn api(&self) -> String {
        format!("http://{}", self.http)
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
    }

    /// Wait for the process to exit; its status and output.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        let c = self.child.as_mut()?;
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                // Let the output threads drain.
                std::thread::sleep(Duration::from_millis(100));
                return Some(st);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .args(["-CONT", &c.id().to_string()])
                .stderr(Stdio::null())
                .status();
        }
        self.kill9();
    }
}

/// GET a management path as guest; the JSON, or None on any failure.
pub fn get_json(base: &str, path: &str) -> Option<serde_json::Value> {
    use base64::Engine;
    let auth = base64::engine::general_purpose::STANDARD.encode("guest:guest");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(3)))
        .build()
        .into();
    let mut r = agent
        .get(&format!("{base}{path}"))
        .header("Authorization", &format!("Basic {auth}"))
        .call()
        .ok()?;
    let text = r.body_mut().read_to_string().ok()?;
    serde_json::from_str(&text).ok()
}

/// The cluster's nodes as any node's API reports them (proxied to the leader).
pub fn nodes(base: &str) -> Option<Vec<serde_json::Value>> {
    get_json(base, "/api/nodes")?.as_array().cloned()
}

/// The leader's name, as `base` reports it.
pub fn leader_name(base: &str) -> Option<String> {
    nodes(base)?
        .iter()
        .find(|n| n["role"] == "leader")
        .and_then(|n| n["name"].as_str().map(String::from))
}

/// Whether `name` is in the ISR, as `base` reports it.
pub fn in_sync(base: &str, name: &str) -> bool {
    nodes(base).is_some_and(|ns| {
        ns.iter()
            .any(|n| n["name"] == name && n["isr"] == true && n["running"] == true)
    })
}

/// Poll `f` every 50 ms for up to `secs`.
pub fn wait_for(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Three nodes n1..n3 on one etcd, n1 started first (so it leads), with every
/// follower in sync.
pub struct Cluster {
    pub etcd: Etcd,
    pub nodes: Vec<Node>,
    pub dir: tempfile::TempDir,
}

impl Cluster {
    pub fn start(env: &[(&str, &str)]) -> Cluster {
        let etcd = Etcd::start();
        let dir = tempfile::tempdir().unwrap();
        let mut started = vec![];
        for i in 1..=3 {
            let name = format!("n{i}");
            let d = dir.path().join(&name);
            started.push(Node::start(&etcd.url, &name, &d, env));
            if i == 1 {
                assert!(
                    wait_for(20, || leader_name(&started[0].api()).as_deref()
                        == Some("n1")),
                    "n1 did not lead:\n{}",
                    started[0].output()
                );
            }
        }
        let c = Cluster {
            etcd,
            nodes: started,
            dir,
        };
        assert!(
            wait_for(20, || in_sync(&c.nodes[0].api(), "n2")
                && in_sync(&c.nodes[0].api(), "n3")),
            "followers did not join the ISR: {:?}\n{}",
            nodes(&c.nodes[0].api()),
            c.nodes[0].output()
        );
        c
    }

    pub fn node(&mut self, name: &str) -> &mut Node {
        self.nodes.iter_mut().find(|n| n.name == name).unwrap()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for n in &self.nodes {
                let out = n.output();
                let lines: Vec<&str> = out.lines().collect();
                let tail = &lines[lines.len().saturating_sub(40)..];
                eprintln!(
                    "----- {} (last {} lines) -----\n{}",
                    n.name,
                    tail.len(),
                    tail.join("\n")
                );
            }
        }
    }
}
