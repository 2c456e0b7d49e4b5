//! The leader's side of replication.
//!
//! [`Replicator`] is the store's replication [`Observer`]: every durable
//! change is numbered (a sequence shared by all files) and framed once into
//! the send buffer of each connected follower. `synced` is the confirm
//! rule: it returns only when every follower in the in-sync replica set (ISR)
//! has acknowledged, as on its disk, every change up to that sync, and the
//! ISR has at least `min_insync` followers. The store calls it after its own
//! fdatasync and before releasing the confirms the sync covers, so a confirm
//! means "on min_insync + 1 disks". The sync marker itself goes out in
//! `syncing`, just before the store's fdatasync, so the followers' disks work
//! while the leader's does. Group commit carries over: one round trip covers
//! every change that arrived meanwhile.
//!
//! Sessions ([`serve`]) run on plain threads: one sends (the initial copy of
//! the data directory, then the buffered stream, and heartbeats), one reads
//! acknowledgements. The [`monitor`] task (on the cluster's own runtime)
//! changes the ISR, always in etcd first: a follower that went silent or
//! fell behind for `isr_timeout` is removed in etcd before `synced` stops
//! waiting for it, and one that caught up is waited for before it is added
//! (so an ISR member always has every confirmed change).

use super::etcd::{Etcd, IsrState};
use super::wire;
use crate::metrics::{ClusterNode, ClusterView};
use crate::store::replica::{data_files, Observer};
use parking_lot::{Condvar, Mutex};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::io::{self, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A follower further behind than this many buffered bytes is dropped (it
/// reconnects and copies what changed).
const MAX_BUFFER: usize = 256 << 20;
/// How often an idle session sends a heartbeat (followers answer with an
/// ack, which is how the leader knows they are alive).
pub const HEARTBEAT: Duration = Duration::from_millis(200);
/// At shutdown, how long the last syncs wait for the followers.
const DRAIN_WAIT: Duration = Duration::from_secs(2);

pub struct Replicator {
    inner: Mutex<Inner>,
    /// Acks arrived, the ISR changed, or the replicator was fenced.
    acked: Condvar,
    /// Data was buffered for a session.
    data: Condvar,
    min_insync: usize,
    bytes_sent: AtomicU64,
    pub failovers: AtomicU64,
    pub me: String,
    pub my_addresses: (String, String),
    members: Mutex<Vec<super::etcd::Member>>,
}

struct Inner {
    seq: u64,
    peers: HashMap<String, Peer>,
    /// Followers in the ISR, as etcd has it.
    isr: BTreeSet<String>,
    /// Followers being added: waited for already, not yet in etcd's ISR.
    joining: BTreeSet<String>,
    /// The highest sync sequence that was released (its confirms sent).
    released: u64,
    /// Syncs not yet acknowledged by every ISR member: (sequence, when).
    syncs: VecDeque<(u64, Instant)>,
    /// Until recovery is done, syncs do not wait (nothing is confirmed yet).
    confirming: bool,
    /// Why syncs must fail from now on (shut down, leadership lost).
    fenced: Option<String>,
    /// Shutting down: a sync waits for the ISR at most [`DRAIN_WAIT`].
    draining: bool,
    /// Syncs under way (announced by `syncing` on the thread that will call
    /// `synced`): thread, path, the marker's number.
    syncing: Vec<(std::thread::ThreadId, PathBuf, u64)>,
    next_session: u64,
}

struct Peer {
    session: u64,
    out: Vec<u8>,
    /// Sending held back: the initial copy is being sent.
    hold: bool,
    /// Stream bytes buffered (since the session began) and acknowledged.
    pushed: u64,
    acked_bytes: u64,
    acked_seq: u64,
    /// The initial copy was sent: the follower may join the ISR once it
    /// acknowledges enough.
    copied: bool,
    last_heard: Instant,
    overflow: bool,
    closed: bool,
    behind_since: Option<Instant>,
}

impl Replicator {
    pub fn new(me: &str, min_insync: usize, addresses: (String, String)) -> Arc<Replicator> {
        Arc::new(Replicator {
            inner: Mutex::new(Inner {
                seq: 0,
                peers: HashMap::new(),
                isr: BTreeSet::new(),
                joining: BTreeSet::new(),
                released: 0,
                syncs: VecDeque::new(),
                confirming: false,
                fenced: None,
                draining: false,
                syncing: Vec::new(),
                next_session: 1,
            }),
            acked: Condvar::new(),
            data: Condvar::new(),
            min_insync,
            bytes_sent: AtomicU64::new(0),
            failovers: AtomicU64::new(0),
            me: me.to_owned(),
            my_addresses: addresses,
            members: Mutex::new(vec![]),
        })
    }

    /// Recovery is over: from now on a sync waits for the ISR.
    pub fn start_confirming(&self) {
        self.inner.lock().confirming = true;
    }

    /// Shutting down: the last syncs (the store's final flush) wait for the
    /// followers a short while, then fail instead of hanging the shutdown.
    pub fn drain(&self) {
        self.inner.lock().draining = true;
        self.acked.notify_all();
    }

    /// Make every sync fail from now on (and wake those waiting).
    pub fn fence(&self, why: &str) {
        let mut g = self.inner.lock();
        if g.fenced.is_none() {
            g.fenced = Some(why.to_owned());
        }
        for p in g.peers.values_mut() {
            p.closed = true;
        }
        drop(g);
        self.acked.notify_all();
        self.data.notify_all();
    }

    /// The registered members, as the monitor last read them from etcd.
    pub fn set_members(&self, members: Vec<super::etcd::Member>) {
        *self.members.lock() = members;
    }

    /// Frame one change into every open session's buffer.
    fn push(&self, f: impl Fn(&mut Vec<u8>, u64)) -> u64 {
        let mut g = self.inner.lock();
        g.seq += 1;
        let seq = g.seq;
        let mut any = false;
        for p in g.peers.values_mut() {
            if p.closed || p.overflow {
                continue;
            }
            let before = p.out.len();
            f(&mut p.out, seq);
            let n = (p.out.len() - before) as u64;
            p.pushed += n;
            if p.behind_since.is_none() {
                p.behind_since = Some(Instant::now());
            }
            if p.out.len() > MAX_BUFFER {
                p.overflow = true;
            }
            any = true;
        }
        drop(g);
        if any {
            self.data.notify_all();
        }
        seq
    }
}

impl Observer for Replicator {
    fn created(&self, path: &Path) {
        self.push(|o, s| wire::put_created(o, s, path));
    }
    fn wrote(&self, path: &Path, offset: u64, bytes: &[u8]) {
        self.push(|o, s| wire::put_wrote(o, s, path, offset, bytes));
    }
    fn set_len(&self, path: &Path, len: u64) {
        self.push(|o, s| wire::put_set_len(o, s, path, len));
    }
    fn renamed(&self, from: &Path, to: &Path) {
        self.push(|o, s| wire::put_renamed(o, s, from, to));
    }
    fn deleted(&self, path: &Path) {
        self.push(|o, s| wire::put_deleted(o, s, path));
    }
    fn syncing(&self, path: &Path) {
        // The followers' sync starts now, beside ours: the marker goes out
        // before our fdatasync, and `synced` waits for this number.
        let seq = self.push(|o, s| wire::put_synced(o, s, path));
        let me = std::thread::current().id();
        let mut g = self.inner.lock();
        // One per thread and path: a failed sync never reached `synced`.
        g.syncing.retain(|(t, p, _)| !(*t == me && p == path));
        g.syncing.push((me, path.to_owned(), seq));
    }
    fn synced(&self, path: &Path) -> io::Result<()> {
        let marked = {
            let mut g = self.inner.lock();
            let me = std::thread::current().id();
            g.syncing
                .iter()
                .position(|(t, p, _)| *t == me && p == path)
                .map(|i| g.syncing.swap_remove(i).2)
        };
        let target = match marked {
            Some(seq) => seq,
            None => self.push(|o, s| wire::put_synced(o, s, path)),
        };
        let mut g = self.inner.lock();
        if !g.confirming {
            return match &g.fenced {
                Some(why) => Err(io::Error::other(why.clone())),
                None => Ok(()),
            };
        }
        let started = Instant::now();
        g.syncs.push_back((target, started));
        loop {
            if let Some(why) = &g.fenced {
                return Err(io::Error::other(format!("not replicated: {why}")));
            }
            if g.draining && started.elapsed() > DRAIN_WAIT {
                return Err(io::Error::other(
                    "not replicated: shutting down without enough followers",
                ));
            }
            let all_acked = g
                .isr
                .iter()
                .chain(g.joining.iter())
                .all(|f| g.peers.get(f).is_some_and(|p| p.acked_seq >= target));
            if g.isr.len() >= self.min_insync && all_acked {
                g.released = g.released.max(target);
                return Ok(());
            }
            self.acked.wait_for(&mut g, Duration::from_millis(100));
        }
    }
}

impl ClusterView for Replicator {
    fn nodes(&self) -> Vec<ClusterNode> {
        // The follower list is completed by the monitor from etcd's members;
        // here: the leader and every follower with a session or ISR seat.
        let g = self.inner.lock();
        let now = Instant::now();
        let mut out = vec![ClusterNode {
            name: self.me.clone(),
            role: "leader",
            isr: true,
            connected: true,
            lag_bytes: 0,
            lag_ms: 0,
            amqp_address: self.my_addresses.0.clone(),
            http_address: self.my_addresses.1.clone(),
        }];
        let members = self.members.lock().clone();
        let mut names: BTreeSet<&String> = g.peers.keys().collect();
        names.extend(g.isr.iter());
        names.extend(members.iter().map(|m| &m.name));
        names.remove(&self.me);
        for n in names {
            let m = members.iter().find(|m| &m.name == n);
            let p = g.peers.get(n);
            let lag_ms = match p {
                Some(p) if g.isr.contains(n) => g
                    .syncs
                    .iter()
                    .find(|(s, _)| *s > p.acked_seq)
                    .map_or(0, |(_, t)| now.duration_since(*t).as_millis() as u64),
                Some(p) => p
                    .behind_since
                    .map_or(0, |t| now.duration_since(t).as_millis() as u64),
                None => 0,
            };
            out.push(ClusterNode {
                name: n.clone(),
                role: "follower",
                isr: g.isr.contains(n),
                connected: p.is_some_and(|p| !p.closed),
                lag_bytes: p.map_or(0, |p| p.pushed.saturating_sub(p.acked_bytes)),
                lag_ms,
                amqp_address: m.map_or(String::new(), |m| m.amqp.clone()),
                http_address: m.map_or(String::new(), |m| m.http.clone()),
            });
        }
        out
    }
    fn failovers(&self) -> u64 {
        self.failovers.load(Ordering::Relaxed)
    }
    fn replication_bytes(&self) -> u64 {
        self.bytes_sent.load(Ordering::Relaxed)
    }
    fn min_insync(&self) -> usize {
        self.min_insync
    }
}

/// Accept followers on the replication port until the replicator is fenced.
pub fn accept(listener: TcpListener, rep: Arc<Replicator>, root: PathBuf, secret: Arc<Vec<u8>>) {
    for conn in listener.incoming() {
        if rep.inner.lock().fenced.is_some() {
            return;
        }
        let Ok(stream) = conn else { continue };
        let (rep, root, secret) = (rep.clone(), root.clone(), secret.clone());
        let _ = std::thread::Builder::new()
            .name("lepus-repl-out".into())
            .spawn(move || {
                let peer = stream
                    .peer_addr()
                    .map(|a| a.to_string())
                    .unwrap_or_default();
                if let Err(e) = serve(stream, &rep, &root, &secret) {
                    tracing::warn!(peer = %peer, error = %e, "replication session ended");
                }
            });
    }
}

/// One follower's session: handshake, initial copy, then the stream.
fn serve(stream: TcpStream, rep: &Arc<Replicator>, root: &Path, secret: &[u8]) -> io::Result<()> {
    let _ = stream.set_nodelay(true);
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut w = stream.try_clone()?;
    let mut r = BufReader::new(stream.try_clone()?);
    let nonce: [u8; 32] = rand::random();
    let mut hello = wire::MAGIC.to_vec();
    hello.push(wire::VERSION);
    hello.extend_from_slice(&nonce);
    wire::write_all(&mut w, &hello)?;
    // The follower's answer: magic, version, name, mac.
    let mut head = [0u8; 5];
    io::Read::read_exact(&mut r, &mut head)?;
    if &head[..4] != wire::MAGIC || head[4] != wire::VERSION {
        return Err(wire::bad("not a lepus follower (bad magic or version)"));
    }
    let mut len = [0u8; 2];
    io::Read::read_exact(&mut r, &mut len)?;
    let mut name = vec![0u8; u16::from_be_bytes(len) as usize];
    io::Read::read_exact(&mut r, &mut name)?;
    let name = String::from_utf8(name).map_err(|_| wire::bad("name is not UTF-8"))?;
    let mut mac = [0u8; 32];
    io::Read::read_exact(&mut r, &mut mac)?;
    let refuse = |w: &mut TcpStream, why: &str| -> io::Result<()> {
        let mut out = vec![1u8];
        wire::put_str(&mut out, why);
        let _ = wire::write_all(w, &out);
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            why.to_owned(),
        ))
    };
    if !wire::same_mac(&mac, &wire::mac(secret, "follower", &nonce, &name)) {
        tracing::warn!(peer = ?w.peer_addr().ok(), "replication: refused a peer that does not know the cluster secret");
        return refuse(&mut w, "refused: wrong cluster secret");
    }
    if name == rep.me {
        return refuse(&mut w, "refused: that is the leader's own name");
    }
    if rep.inner.lock().fenced.is_some() {
        return refuse(&mut w, "refused: not the leader");
    }
    let mut ok = vec![0u8];
    wire::put_str(&mut ok, "ok");
    ok.extend_from_slice(&wire::mac(secret, "leader", &nonce, &name));
    wire::write_all(&mut w, &ok)?;
    // What the follower has.
    let theirs = match wire::read_frame(&mut r)? {
        Some((wire::FILES, body)) => wire::decode_files(&body)?,
        _ => return Err(wire::bad("expected the follower's file list")),
    };
    // From here on liveness is the monitor's business (`isr_timeout`), not
    // a read timeout's: a silent follower is removed from the ISR, which
    // closes its session.
    w.set_read_timeout(None)?;
    // From here on every change is buffered for it (held until the copy is
    // sent): the copy below reads files at least as new as this point, and
    // replaying the buffered changes over it converges on the leader's state.
    let (session, t0) = {
        let mut g = rep.inner.lock();
        let id = g.next_session;
        g.next_session += 1;
        if let Some(old) = g.peers.get_mut(&name) {
            old.closed = true;
        }
        g.peers.insert(
            name.clone(),
            Peer {
                session: id,
                out: Vec::new(),
                hold: true,
                pushed: 0,
                acked_bytes: 0,
                acked_seq: 0,
                copied: false,
                last_heard: Instant::now(),
                overflow: false,
                closed: false,
                behind_since: None,
            },
        );
        (id, g.seq)
    };
    rep.acked.notify_all();
    tracing::info!(follower = %name, "follower connected; copying what differs");
    let result = stream_to(rep, root, &name, (session, t0), theirs, &mut w, r);
    {
        let mut g = rep.inner.lock();
        if let Some(p) = g.peers.get_mut(&name) {
            if p.session == session {
                p.closed = true;
            }
        }
    }
    rep.acked.notify_all();
    let _ = w.shutdown(std::net::Shutdown::Both);
    result
}

fn stream_to(
    rep: &Arc<Replicator>,
    root: &Path,
    name: &str,
    (session, t0): (u64, u64),
    theirs: Vec<(PathBuf, u64, u32)>,
    w: &mut TcpStream,
    mut r: BufReader<TcpStream>,
) -> io::Result<()> {
    // The copy: every file that differs, whole (zero chunks skipped), and
    // the removal of files the leader does not have.
    let theirs: HashMap<PathBuf, (u64, u32)> =
        theirs.into_iter().map(|(p, l, c)| (p, (l, c))).collect();
    let mine = data_files(root)?;
    let mut sent_files = 0usize;
    let mut sent_bytes = 0u64;
    let mut out = Vec::with_capacity(2 << 20);
    for rel in &mine {
        let bytes = match std::fs::read(root.join(rel)) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let same = theirs
            .get(rel)
            .is_some_and(|&(l, c)| l == bytes.len() as u64 && c == crc32fast::hash(&bytes));
        if same {
            continue;
        }
        sent_files += 1;
        out.clear();
        wire::put_created(&mut out, 0, rel);
        wire::put_set_len(&mut out, 0, rel, bytes.len() as u64);
        for (i, chunk) in bytes.chunks(1 << 20).enumerate() {
            if chunk.iter().all(|b| *b == 0) {
                continue;
            }
            wire::put_wrote(&mut out, 0, rel, (i << 20) as u64, chunk);
            if out.len() > 4 << 20 {
                w.write_all(&out)?;
                sent_bytes += out.len() as u64;
                out.clear();
            }
        }
        w.write_all(&out)?;
        sent_bytes += out.len() as u64;
    }
    out.clear();
    for rel in theirs.keys() {
        if mine.binary_search(rel).is_err() {
            wire::put_deleted(&mut out, 0, rel);
        }
    }
    let upto = rep.inner.lock().seq;
    let at = wire::begin_frame(&mut out, wire::SNAPSHOT_DONE);
    out.extend_from_slice(&t0.to_be_bytes());
    out.extend_from_slice(&upto.to_be_bytes());
    wire::end_frame(&mut out, at);
    wire::write_all(w, &out)?;
    rep.bytes_sent
        .fetch_add(sent_bytes + out.len() as u64, Ordering::Relaxed);
    tracing::info!(follower = %name, files = sent_files, bytes = sent_bytes, "initial copy sent; streaming");
    {
        let mut g = rep.inner.lock();
        if let Some(p) = g.peers.get_mut(name) {
            p.hold = false;
            p.copied = true;
        }
    }
    // Acks, on their own thread.
    let rep2 = rep.clone();
    let name2 = name.to_owned();
    let reader = std::thread::Builder::new()
        .name("lepus-repl-ack".into())
        .spawn(move || read_acks(&rep2, &name2, session, &mut r))?;
    // The stream.
    let result = loop {
        let (chunk, heartbeat) = {
            let mut g = rep.inner.lock();
            let seq = g.seq;
            let Some(p) = g.peers.get_mut(name).filter(|p| p.session == session) else {
                break Ok(());
            };
            if p.closed || p.overflow {
                break Err(io::Error::other(if p.overflow {
                    "follower too far behind (send buffer full); it must copy again"
                } else {
                    "session closed"
                }));
            }
            if !p.out.is_empty() {
                (std::mem::take(&mut p.out), None)
            } else if rep.data.wait_for(&mut g, HEARTBEAT).timed_out() {
                // Everything up to `seq` was sent, or is in the copy.
                (Vec::new(), Some(seq))
            } else {
                continue;
            }
        };
        let mut buf = chunk;
        if let Some(seq) = heartbeat {
            wire::put_u64_frame(&mut buf, wire::HEARTBEAT, seq);
        }
        if let Err(e) = w.write_all(&buf) {
            break Err(e);
        }
        rep.bytes_sent
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
    };
    let _ = w.shutdown(std::net::Shutdown::Both);
    let _ = reader.join();
    result
}

fn read_acks(rep: &Replicator, name: &str, session: u64, r: &mut BufReader<TcpStream>) {
    loop {
        let frame = wire::read_frame(r);
        let mut g = rep.inner.lock();
        let Some(p) = g.peers.get_mut(name).filter(|p| p.session == session) else {
            return;
        };
        match frame {
            Ok(Some((wire::ACK, body))) if body.len() == 16 => {
                let seq = u64::from_be_bytes(body[..8].try_into().unwrap());
                let bytes = u64::from_be_bytes(body[8..].try_into().unwrap());
                p.acked_seq = p.acked_seq.max(seq);
                p.acked_bytes = p.acked_bytes.max(bytes);
                p.last_heard = Instant::now();
                if p.acked_bytes >= p.pushed {
                    p.behind_since = None;
                }
                drop(g);
                rep.acked.notify_all();
            }
            other => {
                if let Err(e) = other {
                    tracing::debug!(follower = name, error = %e, "replication acks ended");
                }
                p.closed = true;
                drop(g);
                rep.acked.notify_all();
                rep.data.notify_all();
                return;
            }
        }
    }
}

/// Keep the ISR true, in etcd first. Runs until the replicator is fenced;
/// returns the reason leadership must end, if etcd says this node no longer
/// leads.
pub async fn monitor(
    rep: Arc<Replicator>,
    mut etcd: Etcd,
    mut state: IsrState,
    isr_timeout: Duration,
    alarm: impl Fn(Option<String>) + Send + 'static,
) -> String {
    let mut alarmed: Option<String> = None;
    let mut members_read = Instant::now() - Duration::from_secs(10);
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if members_read.elapsed() > Duration::from_secs(1) {
            if let Ok(m) = etcd.members().await {
                rep.set_members(m);
            }
            members_read = Instant::now();
        }
        let (remove, add) = {
            let mut g = rep.inner.lock();
            if let Some(why) = &g.fenced {
                return why.clone();
            }
            let now = Instant::now();
            let members: Vec<String> = g.isr.iter().chain(g.joining.iter()).cloned().collect();
            let mut remove = vec![];
            for f in members {
                let stale = match g.peers.get(&f) {
                    None => true,
                    Some(p) => {
                        p.closed
                            || p.overflow
                            || now.duration_since(p.last_heard) > isr_timeout
                            || g.syncs.iter().any(|(s, t)| {
                                *s > p.acked_seq && now.duration_since(*t) > isr_timeout
                            })
                    }
                };
                if stale {
                    remove.push(f);
                }
            }
            // Candidates: a copied, live follower that has every released
            // sync and no sync older than 50 ms outstanding. It is waited
            // for from now on (joining), then added in etcd.
            let mut add = vec![];
            let released = g.released;
            let seq = g.seq;
            let oldest_wait = |acked: u64| {
                g.syncs
                    .iter()
                    .find(|(s, _)| *s > acked)
                    .map(|(_, t)| now.duration_since(*t))
            };
            let candidates: Vec<String> = g
                .peers
                .iter()
                .filter(|(n, p)| {
                    !g.isr.contains(*n)
                        && !g.joining.contains(*n)
                        && p.copied
                        && !p.closed
                        && !p.overflow
                        && p.acked_seq >= released
                        && (p.acked_seq >= seq
                            || oldest_wait(p.acked_seq)
                                .is_none_or(|d| d < Duration::from_millis(50)))
                })
                .map(|(n, _)| n.clone())
                .collect();
            for n in candidates {
                g.joining.insert(n.clone());
                add.push(n);
            }
            // Forget syncs every ISR member has.
            let floor = g
                .isr
                .iter()
                .chain(g.joining.iter())
                .map(|f| g.peers.get(f).map_or(0, |p| p.acked_seq))
                .min()
                .unwrap_or(u64::MAX);
            while g.syncs.front().is_some_and(|(s, _)| *s <= floor) {
                g.syncs.pop_front();
            }
            (remove, add)
        };
        for f in remove {
            let mut next = state.clone();
            next.isr.retain(|n| *n != f);
            match etcd.set_isr(&next).await {
                Ok(true) => {
                    tracing::warn!(follower = %f, "follower left the in-sync replica set (silent or behind for the ISR timeout)");
                    state = next;
                    let mut g = rep.inner.lock();
                    g.isr.remove(&f);
                    g.joining.remove(&f);
                    if let Some(p) = g.peers.get_mut(&f) {
                        // It copies again when it reconnects.
                        p.closed = true;
                    }
                    drop(g);
                    rep.acked.notify_all();
                    rep.data.notify_all();
                }
                Ok(false) => return "etcd: another node leads now".into(),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot shrink the ISR yet (etcd); confirms wait")
                }
            }
        }
        for f in add {
            let mut next = state.clone();
            if !next.isr.contains(&f) {
                next.isr.push(f.clone());
            }
            match etcd.set_isr(&next).await {
                Ok(true) => {
                    tracing::info!(follower = %f, "follower joined the in-sync replica set");
                    state = next;
                    let mut g = rep.inner.lock();
                    g.joining.remove(&f);
                    g.isr.insert(f);
                    drop(g);
                    rep.acked.notify_all();
                }
                Ok(false) => return "etcd: another node leads now".into(),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot grow the ISR yet (etcd)");
                    rep.inner.lock().joining.remove(&f);
                    rep.acked.notify_all();
                }
            }
        }
        let have = rep.inner.lock().isr.len();
        let want = rep.min_insync;
        let now = (have < want).then(|| {
            format!("cluster: {have} of {want} required in-sync followers; persistent messages cannot be confirmed")
        });
        if now != alarmed {
            match &now {
                Some(r) => tracing::warn!(reason = %r, "publishers blocked"),
                None => tracing::info!("enough followers in sync; publishers unblocked"),
            }
            alarm(now.clone());
            alarmed = now;
        }
    }
}
