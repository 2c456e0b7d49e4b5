//! The replication port's wire format: a handshake that proves both ends
//! know the cluster's secret, then length-prefixed frames.
//!
//! Handshake (all integers big-endian):
//! 1. leader → follower: `LEPR`, version (u8), a random 32-byte nonce;
//! 2. follower → leader: `LEPR`, version, its node name (u16 length + bytes),
//!    HMAC-SHA256(secret, "follower" ‖ nonce ‖ name);
//! 3. leader → follower: status (u8: 0 accepted, 1 refused), a message
//!    (u16 + bytes), and on acceptance HMAC-SHA256(secret, "leader" ‖ nonce ‖
//!    name), so the follower knows it writes what a cluster member sends.
//!
//! A stranger (no secret) gets the nonce and a refusal, nothing else.
//!
//! Frames: `[u32 length of what follows][u8 kind][payload]`.
//! - leader → follower: [`OP`] (u64 sequence number, then one store change
//!   as [`encode_*`](put_op) writes it; sequence 0 for the initial copy),
//!   [`SNAPSHOT_DONE`] (u64 `t0`: the copy holds every change up to it; u64
//!   `upto`: changes up to it may find their file already in its final
//!   state), [`HEARTBEAT`] (u64: every change up to it was sent, or is in
//!   the copy);
//! - follower → leader: [`FILES`] (once, first: what the follower has),
//!   [`ACK`] (u64 sequence, u64 stream bytes: everything up to there is on
//!   the follower's disk).

use crate::store::replica::Op;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

pub const MAGIC: &[u8; 4] = b"LEPR";
pub const VERSION: u8 = 1;

pub const OP: u8 = 1;
pub const SNAPSHOT_DONE: u8 = 2;
pub const HEARTBEAT: u8 = 3;
pub const FILES: u8 = 10;
pub const ACK: u8 = 11;

/// The largest frame either side accepts (a segment chunk is 1 MiB; a
/// message body up to 512 MiB arrives as one write).
pub const MAX_FRAME: u32 = 600 << 20;

const K_CREATED: u8 = 1;
const K_WROTE: u8 = 2;
const K_SET_LEN: u8 = 3;
const K_RENAMED: u8 = 4;
const K_DELETED: u8 = 5;
const K_SYNCED: u8 = 6;

pub fn mac(secret: &[u8], role: &str, nonce: &[u8], name: &str) -> [u8; 32] {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("any key length");
    m.update(role.as_bytes());
    m.update(nonce);
    m.update(name.as_bytes());
    m.finalize().into_bytes().into()
}

/// Constant-time comparison of two MACs.
pub fn same_mac(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_path(out: &mut Vec<u8>, p: &Path) {
    put_str(out, &p.to_string_lossy());
}

/// Start a frame of `kind`; [`end_frame`] fills in its length.
pub fn begin_frame(out: &mut Vec<u8>, kind: u8) -> usize {
    let at = out.len();
    out.extend_from_slice(&[0, 0, 0, 0, kind]);
    at
}

pub fn end_frame(out: &mut [u8], at: usize) {
    let len = (out.len() - at - 4) as u32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

/// One [`OP`] frame. The observer calls these with borrowed data, so a
/// segment write is copied once, into the frame.
pub fn put_created(out: &mut Vec<u8>, seq: u64, path: &Path) {
    put_path_op(out, seq, K_CREATED, path);
}

pub fn put_wrote(out: &mut Vec<u8>, seq: u64, path: &Path, offset: u64, bytes: &[u8]) {
    let at = op_head(out, seq, K_WROTE);
    put_path(out, path);
    out.extend_from_slice(&offset.to_be_bytes());
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
    end_frame(out, at);
}

pub fn put_set_len(out: &mut Vec<u8>, seq: u64, path: &Path, len: u64) {
    let at = op_head(out, seq, K_SET_LEN);
    put_path(out, path);
    out.extend_from_slice(&len.to_be_bytes());
    end_frame(out, at);
}

pub fn put_renamed(out: &mut Vec<u8>, seq: u64, from: &Path, to: &Path) {
    let at = op_head(out, seq, K_RENAMED);
    put_path(out, from);
    put_path(out, to);
    end_frame(out, at);
}

pub fn put_deleted(out: &mut Vec<u8>, seq: u64, path: &Path) {
    put_path_op(out, seq, K_DELETED, path);
}

pub fn put_synced(out: &mut Vec<u8>, seq: u64, path: &Path) {
    put_path_op(out, seq, K_SYNCED, path);
}

/// A change that names only a path (created, deleted, synced).
fn put_path_op(out: &mut Vec<u8>, seq: u64, kind: u8, path: &Path) {
    let at = op_head(out, seq, kind);
    put_path(out, path);
    end_frame(out, at);
}

fn op_head(out: &mut Vec<u8>, seq: u64, kind: u8) -> usize {
    let at = begin_frame(out, OP);
    out.extend_from_slice(&seq.to_be_bytes());
    out.push(kind);
    at
}

/// A frame with one u64 (SNAPSHOT_DONE, HEARTBEAT).
pub fn put_u64_frame(out: &mut Vec<u8>, kind: u8, v: u64) {
    let at = begin_frame(out, kind);
    out.extend_from_slice(&v.to_be_bytes());
    end_frame(out, at);
}

pub fn put_ack(out: &mut Vec<u8>, seq: u64, bytes: u64) {
    let at = begin_frame(out, ACK);
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&bytes.to_be_bytes());
    end_frame(out, at);
}

/// What a follower has: path, length, CRC-32 of the bytes.
pub fn put_files(out: &mut Vec<u8>, files: &[(PathBuf, u64, u32)]) {
    let at = begin_frame(out, FILES);
    out.extend_from_slice(&(files.len() as u32).to_be_bytes());
    for (p, len, crc) in files {
        put_path(out, p);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&crc.to_be_bytes());
    }
    end_frame(out, at);
}

/// Read one frame: its kind and payload. `Ok(None)` at a clean end of stream.
pub fn read_frame(r: &mut impl Read) -> io::Result<Option<(u8, Vec<u8>)>> {
    let mut body = Vec::new();
    Ok(read_frame_into(r, &mut body)?.map(|kind| (kind, body)))
}

/// [`read_frame`] into a buffer the caller reuses (the follower's hot
/// loop): the payload is `buf` afterwards; returns the kind.
pub fn read_frame_into(r: &mut impl Read, buf: &mut Vec<u8>) -> io::Result<Option<u8>> {
    let mut head = [0u8; 5];
    match r.read_exact(&mut head[..1]) {
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        r => r?,
    }
    r.read_exact(&mut head[1..])?;
    let len = u32::from_be_bytes(head[..4].try_into().unwrap());
    if len == 0 || len > MAX_FRAME {
        return Err(bad(format!("frame length {len} out of range")));
    }
    buf.clear();
    buf.resize(len as usize - 1, 0);
    r.read_exact(buf)?;
    Ok(Some(head[4]))
}

/// A write, borrowed from its frame: (sequence, path, offset, bytes).
pub type WroteRef<'a> = (u64, &'a str, u64, &'a [u8]);

/// An [`OP`] payload that is a write, borrowed. `None` for any other change
/// (decode it with [`decode_op`]).
pub fn borrow_wrote(payload: &[u8]) -> io::Result<Option<WroteRef<'_>>> {
    let mut c = Cursor::new(payload);
    let seq = c.u64()?;
    if c.u8()? != K_WROTE {
        return Ok(None);
    }
    let path = c.str()?;
    let offset = c.u64()?;
    let n = c.u32()? as usize;
    Ok(Some((seq, path, offset, c.bytes(n)?)))
}

pub fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// A cursor over a frame's payload; every read checks the bounds.
pub struct Cursor<'a> {
    b: &'a [u8],
}

impl<'a> Cursor<'a> {
    pub fn new(b: &'a [u8]) -> Self {
        Cursor { b }
    }
    pub fn bytes(&mut self, n: usize) -> io::Result<&'a [u8]> {
        if self.b.len() < n {
            return Err(bad("truncated frame"));
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    pub fn u8(&mut self) -> io::Result<u8> {
        Ok(self.bytes(1)?[0])
    }
    pub fn u32(&mut self) -> io::Result<u32> {
        Ok(u32::from_be_bytes(self.bytes(4)?.try_into().unwrap()))
    }
    pub fn u64(&mut self) -> io::Result<u64> {
        Ok(u64::from_be_bytes(self.bytes(8)?.try_into().unwrap()))
    }
    pub fn str(&mut self) -> io::Result<&'a str> {
        let n = u16::from_be_bytes(self.bytes(2)?.try_into().unwrap()) as usize;
        std::str::from_utf8(self.bytes(n)?).map_err(|_| bad("name is not UTF-8"))
    }
    pub fn path(&mut self) -> io::Result<PathBuf> {
        Ok(PathBuf::from(self.str()?))
    }
}

/// Decode an [`OP`] payload.
pub fn decode_op(payload: &[u8]) -> io::Result<(u64, Op)> {
    let mut c = Cursor::new(payload);
    let seq = c.u64()?;
    let op = match c.u8()? {
        K_CREATED => Op::Created(c.path()?),
        K_WROTE => {
            let path = c.path()?;
            let offset = c.u64()?;
            let n = c.u32()? as usize;
            Op::Wrote {
                path,
                offset,
                bytes: c.bytes(n)?.to_vec(),
            }
        }
        K_SET_LEN => Op::SetLen {
            path: c.path()?,
            len: c.u64()?,
        },
        K_RENAMED => Op::Renamed {
            from: c.path()?,
            to: c.path()?,
        },
        K_DELETED => Op::Deleted(c.path()?),
        K_SYNCED => Op::Synced(c.path()?),
        k => return Err(bad(format!("unknown change kind {k}"))),
    };
    Ok((seq, op))
}

pub fn decode_files(payload: &[u8]) -> io::Result<Vec<(PathBuf, u64, u32)>> {
    let mut c = Cursor::new(payload);
    let n = c.u32()?;
    let mut out = Vec::with_capacity(n.min(1 << 16) as usize);
    for _ in 0..n {
        out.push((c.path()?, c.u64()?, c.u32()?));
    }
    Ok(out)
}

pub fn write_all(w: &mut impl Write, b: &[u8]) -> io::Result<()> {
    w.write_all(b)?;
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_round_trip() {
        let p = Path::new("msgs/00000001.seg");
        let mut out = vec![];
        put_created(&mut out, 1, p);
        put_wrote(&mut out, 2, p, 4096, b"body");
        put_set_len(&mut out, 3, p, 1 << 20);
        put_renamed(&mut out, 4, Path::new("a.tmp"), Path::new("a"));
        put_deleted(&mut out, 5, p);
        put_synced(&mut out, 6, p);
        let mut r = &out[..];
        let mut got = vec![];
        while let Some((kind, body)) = read_frame(&mut r).unwrap() {
            assert_eq!(kind, OP);
            got.push(decode_op(&body).unwrap());
        }
        assert_eq!(got.len(), 6);
        assert_eq!(
            got[1],
            (
                2,
                Op::Wrote {
                    path: p.into(),
                    offset: 4096,
                    bytes: b"body".to_vec()
                }
            )
        );
        assert_eq!(
            got[3].1,
            Op::Renamed {
                from: "a.tmp".into(),
                to: "a".into()
            }
        );
    }

    #[test]
    fn truncated_and_oversized_frames_are_errors() {
        let mut out = vec![];
        put_wrote(&mut out, 2, Path::new("x"), 0, b"body");
        let cut = &out[..out.len() - 1];
        assert!(read_frame(&mut &cut[..]).is_err());
        let huge = [0xff, 0xff, 0xff, 0xff, OP];
        assert!(read_frame(&mut &huge[..]).is_err());
        assert!(decode_op(&[0, 0, 0, 0, 0, 0, 0, 1, 99]).is_err());
        assert!(decode_op(&[0, 0]).is_err());
    }

    #[test]
    fn macs_depend_on_secret_role_and_name() {
        let n = [7u8; 32];
        let a = mac(b"s", "follower", &n, "n1");
        assert!(same_mac(&a, &mac(b"s", "follower", &n, "n1")));
        assert!(!same_mac(&a, &mac(b"t", "follower", &n, "n1")));
        assert!(!same_mac(&a, &mac(b"s", "leader", &n, "n1")));
        assert!(!same_mac(&a, &mac(b"s", "follower", &n, "n2")));
    }
}
