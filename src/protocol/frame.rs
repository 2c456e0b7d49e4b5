//! Splitting the input stream into frames.
//!
//! "Need more bytes" is a normal answer (`Ok(None)`), not an error. A frame is
//! checked before its payload is even buffered: an oversized frame or an unknown
//! frame type is a FRAME_ERROR at once, so a hostile size field cannot make us
//! allocate gigabytes.

use super::*;
use crate::error::{AmqpError, AmqpResult};
use bytes::{Buf, Bytes};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    pub kind: u8,
    pub channel: u16,
    pub payload: Bytes,
}

/// Try to take one frame off the front of `buf`.
///
/// `frame_max` is the negotiated maximum frame size including the 8 bytes of
/// overhead (0 means the 128 KiB we advertise before tuning).
pub fn decode_frame(buf: &mut BytesMut, frame_max: u32) -> AmqpResult<Option<RawFrame>> {
    if buf.len() < 7 {
        return Ok(None);
    }
    let kind = buf[0];
    let channel = u16::from_be_bytes([buf[1], buf[2]]);
    let size = u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]);
    if !matches!(
        kind,
        FRAME_METHOD | FRAME_HEADER | FRAME_BODY | FRAME_HEARTBEAT
    ) {
        return Err(AmqpError::frame_error(format!(
            "type {kind}, first 7 octets = {:?}: unknown frame type",
            &buf[..7]
        )));
    }
    let limit = if frame_max == 0 { 131072 } else { frame_max };
    // Like RabbitMQ, allow a payload of up to frame_max bytes: clients
    // disagree on whether frame_max includes the 8 bytes of framing.
    if size as u64 > limit as u64 {
        return Err(AmqpError::frame_error(format!(
            "type {kind}, channel {channel}: frame size {size} larger than negotiated maximum {limit}"
        )));
    }
    let total = size as usize + FRAME_OVERHEAD;
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    if buf[total - 1] != FRAME_END {
        return Err(AmqpError::frame_error(format!(
            "type {kind}, channel {channel}: frame end octet 0x{:02x}, expected 0xce",
            buf[total - 1]
        )));
    }
    buf.advance(7);
    let payload = buf.split_to(size as usize).freeze();
    buf.advance(1);
    Ok(Some(RawFrame {
        kind,
        channel,
        payload,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, ch: u16, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![kind];
        v.extend_from_slice(&ch.to_be_bytes());
        v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        v.extend_from_slice(payload);
        v.push(FRAME_END);
        v
    }

    #[test]
    fn partial_then_whole() {
        let bytes = frame(FRAME_BODY, 3, b"hello");
        let mut buf = BytesMut::new();
        for (i, b) in bytes.iter().enumerate() {
            buf.put_u8(*b);
            let r = decode_frame(&mut buf, 0).unwrap();
            if i + 1 < bytes.len() {
                assert!(r.is_none());
            } else {
                let f = r.unwrap();
                assert_eq!(
                    (f.kind, f.channel, &f.payload[..]),
                    (FRAME_BODY, 3, &b"hello"[..])
                );
            }
        }
        assert!(buf.is_empty());
    }

    #[test]
    fn oversized_frame_is_rejected_before_buffering() {
        let mut buf = BytesMut::from(&[FRAME_BODY, 0, 1, 0x7f, 0xff, 0xff, 0xff][..]);
        let e = decode_frame(&mut buf, 4096).unwrap_err();
        assert_eq!(e.code, crate::error::ReplyCode::FrameError);
    }

    #[test]
    fn bad_frame_end() {
        let mut bytes = frame(FRAME_METHOD, 0, b"abc");
        *bytes.last_mut().unwrap() = 0;
        let mut buf = BytesMut::from(&bytes[..]);
        assert!(decode_frame(&mut buf, 0).is_err());
    }

    #[test]
    fn unknown_type() {
        let mut buf = BytesMut::from(&frame(9, 0, b"")[..]);
        assert!(decode_frame(&mut buf, 0).is_err());
    }
}
