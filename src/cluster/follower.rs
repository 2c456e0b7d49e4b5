//! The follower's side of replication: copy what differs from the leader,
//! then apply its stream of store changes to the local data directory,
//! acknowledging each batch once it is on disk.
//!
//! Runs on a plain thread (file writes and fdatasync block). The data
//! directory is locked (`lepus.lock`) for the whole time, as a broker locks
//! it. Changes are applied in the order the leader numbered them; replaying
//! them over the copy converges on the leader's directory (see
//! `store::replica`). Acknowledgements cover every change applied so far
//! and are sent only after [`Mirror::sync_dirty`] returned.

use super::etcd::Member;
use super::wire;
use crate::store::replica::{data_files, Mirror, Op};
use std::io::{self, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What a running session exposes to the node (to stop it).
#[derive(Default)]
pub struct Control {
    pub stop: AtomicBool,
    pub socket: parking_lot::Mutex<Option<TcpStream>>,
    /// The data directory matches some leader's (a copy completed).
    pub copied: AtomicBool,
}

impl Control {
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(s) = self.socket.lock().take() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// Follow `leader` until the session breaks or [`Control::stop`].
pub fn follow(
    leader: &Member,
    me: &str,
    root: &Path,
    secret: &[u8],
    ctl: &Arc<Control>,
    mut on_copied: impl FnMut(),
) -> io::Result<()> {
    let addr = leader
        .repl
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::other(format!("cannot resolve {}", leader.repl)))?;
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    let _ = stream.set_nodelay(true);
    // The leader sends at least a heartbeat every 200 ms.
    stream.set_read_timeout(Some(Duration::from_secs(3)))?;
    *ctl.socket.lock() = Some(stream.try_clone()?);
    if ctl.stop.load(Ordering::SeqCst) {
        return Ok(());
    }
    let mut w = stream.try_clone()?;
    let mut r = BufReader::with_capacity(1 << 20, stream);
    // Handshake.
    let mut hello = [0u8; 37];
    r.read_exact(&mut hello)?;
    if &hello[..4] != wire::MAGIC || hello[4] != wire::VERSION {
        return Err(wire::bad(format!(
            "{} is not a lepus replication port",
            leader.repl
        )));
    }
    let nonce = &hello[5..];
    let mut out = wire::MAGIC.to_vec();
    out.push(wire::VERSION);
    wire::put_str(&mut out, me);
    out.extend_from_slice(&wire::mac(secret, "follower", nonce, me));
    wire::write_all(&mut w, &out)?;
    let mut status = [0u8; 3];
    r.read_exact(&mut status)?;
    let mut msg = vec![0u8; u16::from_be_bytes([status[1], status[2]]) as usize];
    r.read_exact(&mut msg)?;
    if status[0] != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "leader {} refused us: {}",
                leader.name,
                String::from_utf8_lossy(&msg)
            ),
        ));
    }
    let mut their_mac = [0u8; 32];
    r.read_exact(&mut their_mac)?;
    if !wire::same_mac(&their_mac, &wire::mac(secret, "leader", nonce, me)) {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{} does not know the cluster secret", leader.repl),
        ));
    }
    // What we have.
    let mut files = vec![];
    for rel in data_files(root)? {
        match std::fs::read(root.join(&rel)) {
            Ok(b) => files.push((rel, b.len() as u64, crc32fast::hash(&b))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    out.clear();
    wire::put_files(&mut out, &files);
    wire::write_all(&mut w, &out)?;
    drop(files);
    tracing::info!(leader = %leader.name, "following");

    let mut mirror = Mirror::new(root)?;
    mirror.sync = false;
    mirror.lenient = true;
    // Changes numbered up to this may meet files already final (see wire).
    let mut lenient_until: Option<u64> = None;
    let mut applied: u64 = 0;
    let mut stream_bytes: u64 = 0;
    let mut unacked = false;
    let mut body = Vec::with_capacity(64 << 10);
    // Consecutive writes to one file at consecutive offsets (a run of
    // segment records) are applied as one pwrite: (first seq, path, offset, bytes).
    let mut run: Option<(u64, String, u64, Vec<u8>)> = None;
    let flush = |run: &mut Option<(u64, String, u64, Vec<u8>)>,
                 mirror: &mut Mirror,
                 lenient_until: Option<u64>|
     -> io::Result<()> {
        if let Some((seq, path, offset, bytes)) = run.take() {
            let op = Op::Wrote {
                path: path.into(),
                offset,
                bytes,
            };
            apply(mirror, seq, &op, lenient_until)?;
        }
        Ok(())
    };
    loop {
        if ctl.stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        let Some(kind) = wire::read_frame_into(&mut r, &mut body)? else {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the leader closed the stream",
            ));
        };
        let frame_len = body.len() as u64 + 5;
        if kind == wire::OP {
            if let Some((seq, path, offset, bytes)) = wire::borrow_wrote(&body)? {
                let extends = run.as_ref().is_some_and(|(_, p, o, b)| {
                    p == path && *o + b.len() as u64 == offset && b.len() < (8 << 20)
                });
                if extends {
                    run.as_mut().unwrap().3.extend_from_slice(bytes);
                } else {
                    flush(&mut run, &mut mirror, lenient_until)?;
                    run = Some((seq, path.to_owned(), offset, bytes.to_vec()));
                }
                if seq > 0 {
                    applied = seq;
                    stream_bytes += frame_len;
                }
                if r.buffer().is_empty() {
                    flush(&mut run, &mut mirror, lenient_until)?;
                    if unacked && lenient_until.is_some() {
                        ack(&mut mirror, &mut w, applied, stream_bytes)?;
                        unacked = false;
                    }
                }
                continue;
            }
        }
        flush(&mut run, &mut mirror, lenient_until)?;
        match kind {
            wire::OP => {
                let (seq, op) = wire::decode_op(&body)?;
                apply(&mut mirror, seq, &op, lenient_until)?;
                if let Op::Synced(p) = &op {
                    // The leader's small files (definitions log, delay runs)
                    // are replaced by write, sync, rename, sync: keep that
                    // order on disk here too, so a crash of this machine
                    // cannot leave a renamed file without its bytes.
                    // Segment syncs wait for the batch's end.
                    if !p.starts_with(crate::store::segment::DIR) {
                        mirror.sync_dirty()?;
                    }
                }
                if seq > 0 {
                    applied = seq;
                    stream_bytes += frame_len;
                    unacked |= matches!(op, Op::Synced(_));
                }
            }
            wire::SNAPSHOT_DONE if body.len() == 16 => {
                // The copy holds every change up to `t0`; those up to `upto`
                // may meet files already in their final state.
                let t0 = u64::from_be_bytes(body[..8].try_into().unwrap());
                lenient_until = Some(u64::from_be_bytes(body[8..].try_into().unwrap()));
                applied = applied.max(t0);
                mirror.sync_dirty()?;
                if !ctl.copied.swap(true, Ordering::SeqCst) {
                    on_copied();
                }
                tracing::info!(leader = %leader.name, "copy complete; applying the stream");
                unacked = true;
            }
            wire::HEARTBEAT if body.len() == 8 => {
                // Every change up to this number was sent before it (or is
                // in the copy).
                applied = applied.max(u64::from_be_bytes(body[..8].try_into().unwrap()));
                unacked = true;
            }
            k => return Err(wire::bad(format!("unexpected frame kind {k}"))),
        }
        // Ack once nothing more is buffered: one fdatasync per batch.
        if unacked && r.buffer().is_empty() && lenient_until.is_some() {
            ack(&mut mirror, &mut w, applied, stream_bytes)?;
            unacked = false;
        }
    }
}

/// Apply change `seq`: leniently if it may meet its file already final
/// (the copy, and the changes buffered while it was read).
fn apply(mirror: &mut Mirror, seq: u64, op: &Op, lenient_until: Option<u64>) -> io::Result<()> {
    mirror.lenient = seq == 0 || lenient_until.is_none_or(|u| seq <= u);
    mirror.apply(op).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("applying change {seq} ({}): {e}", op.path().display()),
        )
    })
}

/// Make everything applied durable, then say so: `applied` and the stream
/// bytes up to it are on this disk.
fn ack(mirror: &mut Mirror, w: &mut TcpStream, applied: u64, stream_bytes: u64) -> io::Result<()> {
    mirror.sync_dirty()?;
    let mut out = Vec::with_capacity(21);
    wire::put_ack(&mut out, applied, stream_bytes);
    w.write_all(&out)
}
