//! Raw AMQP 0-9-1 framing for the hot path.
//!
//! amq-protocol's `parse_frame` builds an owned `AMQPFrame` (a `Vec` per body
//! frame, `String`s per deliver), which is exactly the per-message allocation
//! cost that makes generic clients too slow to load a fast broker. Here frames
//! are sliced out of one reusable receive buffer and only the few fields the
//! load generator needs (delivery tag, multiple flag, timestamp) are read.

use amq_protocol::frame::{gen_frame, AMQPContentHeader, AMQPFrame, WriteContext};
use amq_protocol::protocol::{basic, AMQPClass, BasicProperties};
use std::fmt;

pub const FRAME_METHOD: u8 = 1;
pub const FRAME_HEADER: u8 = 2;
pub const FRAME_BODY: u8 = 3;
pub const FRAME_HEARTBEAT: u8 = 8;
pub const FRAME_END: u8 = 0xCE;
/// type (1) + channel (2) + size (4)
pub const FRAME_HEADER_LEN: usize = 7;
/// header + frame-end octet
pub const FRAME_OVERHEAD: usize = FRAME_HEADER_LEN + 1;

pub const CLASS_CONNECTION: u16 = 10;
pub const CLASS_CHANNEL: u16 = 20;
pub const CLASS_BASIC: u16 = 60;

pub const CONNECTION_CLOSE: u16 = 50;
pub const CONNECTION_CLOSE_OK: u16 = 51;
pub const CONNECTION_BLOCKED: u16 = 60;
pub const CONNECTION_UNBLOCKED: u16 = 61;
pub const CHANNEL_CLOSE: u16 = 40;
pub const CHANNEL_CLOSE_OK: u16 = 41;
pub const BASIC_CANCEL: u16 = 30;
pub const BASIC_RETURN: u16 = 50;
pub const BASIC_DELIVER: u16 = 60;
pub const BASIC_ACK: u16 = 80;
pub const BASIC_NACK: u16 = 120;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    BadFrameEnd(u8),
    FrameTooLarge(u32),
    Malformed(&'static str),
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::BadFrameEnd(b) => write!(f, "frame end octet is 0x{b:02x}, expected 0xce"),
            WireError::FrameTooLarge(n) => write!(f, "frame of {n} bytes exceeds the limit"),
            WireError::Malformed(what) => write!(f, "malformed frame: {what}"),
        }
    }
}

impl std::error::Error for WireError {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub kind: u8,
    pub channel: u16,
    pub size: u32,
}

/// Decode the 7-byte frame header, or `None` if fewer than 7 bytes are there.
#[inline]
pub fn parse_frame_header(b: &[u8]) -> Option<FrameHeader> {
    if b.len() < FRAME_HEADER_LEN {
        return None;
    }
    Some(FrameHeader {
        kind: b[0],
        channel: u16::from_be_bytes([b[1], b[2]]),
        size: u32::from_be_bytes([b[3], b[4], b[5], b[6]]),
    })
}

/// One complete frame borrowed from the receive buffer.
#[derive(Debug, Clone, Copy)]
pub struct RawFrame<'a> {
    pub kind: u8,
    pub channel: u16,
    /// Payload between the header and the frame-end octet.
    pub payload: &'a [u8],
    /// The whole frame, header and frame-end included (what parse_frame wants).
    pub bytes: &'a [u8],
}

impl RawFrame<'_> {
    /// (class id, method id) of a method frame.
    #[inline]
    pub fn method_id(&self) -> Option<(u16, u16)> {
        if self.kind != FRAME_METHOD || self.payload.len() < 4 {
            return None;
        }
        let p = self.payload;
        Some((
            u16::from_be_bytes([p[0], p[1]]),
            u16::from_be_bytes([p[2], p[3]]),
        ))
    }
}

/// A growable receive buffer that yields complete frames and keeps partial
/// ones for the next read. One allocation for the life of the connection.
pub struct FrameBuf {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    max_frame: usize,
}

/// Reads smaller than this are not worth a syscall: compact the buffer first.
const MIN_READ_SPACE: usize = 16 * 1024;

impl FrameBuf {
    pub fn new(capacity: usize) -> FrameBuf {
        FrameBuf {
            buf: vec![0; capacity.max(MIN_READ_SPACE * 2)],
            start: 0,
            end: 0,
            // Before tune the peer may use any size up to its own frame_max;
            // 16 MiB is far above what any broker negotiates and still
            // protects us from interpreting garbage as a 4 GiB length.
            max_frame: 16 * 1024 * 1024,
        }
    }

    pub fn set_max_frame(&mut self, max: usize) {
        self.max_frame = max;
    }

    /// Bytes buffered but not yet returned as frames.
    #[cfg(test)]
    pub fn pending(&self) -> usize {
        self.end - self.start
    }

    /// Next complete frame, `Ok(None)` if more bytes are needed.
    #[inline]
    pub fn next_frame(&mut self) -> Result<Option<RawFrame<'_>>, WireError> {
        let avail = &self.buf[self.start..self.end];
        let Some(h) = parse_frame_header(avail) else {
            return Ok(None);
        };
        if h.size as usize + FRAME_OVERHEAD > self.max_frame {
            return Err(WireError::FrameTooLarge(h.size));
        }
        let total = h.size as usize + FRAME_OVERHEAD;
        if avail.len() < total {
            return Ok(None);
        }
        if avail[total - 1] != FRAME_END {
            return Err(WireError::BadFrameEnd(avail[total - 1]));
        }
        let s = self.start;
        self.start += total;
        Ok(Some(RawFrame {
            kind: h.kind,
            channel: h.channel,
            payload: &self.buf[s + FRAME_HEADER_LEN..s + total - 1],
            bytes: &self.buf[s..s + total],
        }))
    }

    /// Space to read into. Compacts (moving only the partial frame, which is
    /// small compared with the buffer) and grows only if a single frame is
    /// bigger than the whole buffer.
    pub fn read_space(&mut self) -> &mut [u8] {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        let needed = match parse_frame_header(&self.buf[self.start..self.end]) {
            Some(h) => h.size as usize + FRAME_OVERHEAD,
            None => FRAME_HEADER_LEN,
        };
        if self.buf.len() - self.start < needed.max(MIN_READ_SPACE)
            || self.buf.len() - self.end < MIN_READ_SPACE
        {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() < needed + MIN_READ_SPACE {
            self.buf.resize(needed + MIN_READ_SPACE, 0);
        }
        &mut self.buf[self.end..]
    }

    /// Record that `n` bytes were written into `read_space()`.
    pub fn commit(&mut self, n: usize) {
        self.end += n;
        debug_assert!(self.end <= self.buf.len());
    }

    /// Convenience for tests and the slow path: append bytes.
    #[cfg(test)]
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let space = self.read_space();
            let n = space.len().min(data.len());
            space[..n].copy_from_slice(&data[..n]);
            self.commit(n);
            data = &data[n..];
        }
    }
}

/// Delivery tag of a basic.deliver payload (class and method already checked).
#[inline]
pub fn deliver_tag(payload: &[u8]) -> Result<u64, WireError> {
    // class(2) method(2) consumer-tag(shortstr) delivery-tag(u64) ...
    let tag_len = *payload.get(4).ok_or(WireError::Malformed("deliver"))? as usize;
    let at = 5 + tag_len;
    let b = payload
        .get(at..at + 8)
        .ok_or(WireError::Malformed("deliver"))?;
    Ok(u64::from_be_bytes(b.try_into().unwrap()))
}

/// (delivery tag, multiple) of a basic.ack or basic.nack payload; both start
/// with the tag followed by a bit field whose bit 0 is `multiple`.
#[inline]
pub fn ack_fields(payload: &[u8]) -> Result<(u64, bool), WireError> {
    let b = payload.get(4..13).ok_or(WireError::Malformed("ack"))?;
    Ok((
        u64::from_be_bytes(b[..8].try_into().unwrap()),
        b[8] & 1 != 0,
    ))
}

/// Hand-encoded basic.ack: 21 bytes written straight into the output buffer,
/// because acks are sent from the consumer's hot loop.
pub fn encode_ack(out: &mut Vec<u8>, channel: u16, tag: u64, multiple: bool) {
    out.push(FRAME_METHOD);
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(&13u32.to_be_bytes());
    out.extend_from_slice(&CLASS_BASIC.to_be_bytes());
    out.extend_from_slice(&BASIC_ACK.to_be_bytes());
    out.extend_from_slice(&tag.to_be_bytes());
    out.push(multiple as u8);
    out.push(FRAME_END);
}

/// Serialize any frame with amq-protocol (slow path: handshake, control).
pub fn encode_frame(out: &mut Vec<u8>, frame: &AMQPFrame) {
    let buf = std::mem::take(out);
    let (buf, _) = gen_frame(frame)(WriteContext::from(buf))
        .expect("serializing into a Vec cannot fail")
        .into_inner();
    *out = buf;
}

pub fn encode_method(out: &mut Vec<u8>, channel: u16, method: AMQPClass) {
    encode_frame(out, &AMQPFrame::Method(channel, method));
}

/// A publish (method + content header + body frames) encoded once.
pub struct EncodedPublish {
    pub bytes: Vec<u8>,
    /// Offset of the first body byte, where the timestamp goes; `None` when
    /// the body is shorter than 8 bytes.
    pub ts_offset: Option<usize>,
}

/// Encode one basic.publish with a zero body of `size` bytes, split into body
/// frames of at most `frame_max - 8` bytes of payload.
pub fn encode_publish(
    channel: u16,
    exchange: &str,
    routing_key: &str,
    size: usize,
    persistent: bool,
    frame_max: u32,
) -> EncodedPublish {
    let mut out = Vec::with_capacity(size + 128);
    encode_method(
        &mut out,
        channel,
        AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            mandatory: false,
            immediate: false,
        })),
    );
    let props = BasicProperties::default().with_delivery_mode(if persistent { 2 } else { 1 });
    encode_frame(
        &mut out,
        &AMQPFrame::Header(
            channel,
            AMQPContentHeader {
                class_id: CLASS_BASIC,
                body_size: size as u64,
                properties: props,
            },
        ),
    );
    let body_start = out.len() + FRAME_HEADER_LEN;
    let chunk = (frame_max as usize).saturating_sub(FRAME_OVERHEAD).max(1);
    let mut left = size;
    while left > 0 {
        let n = left.min(chunk);
        out.push(FRAME_BODY);
        out.extend_from_slice(&channel.to_be_bytes());
        out.extend_from_slice(&(n as u32).to_be_bytes());
        out.resize(out.len() + n, 0);
        out.push(FRAME_END);
        left -= n;
    }
    EncodedPublish {
        bytes: out,
        ts_offset: (size >= 8).then_some(body_start),
    }
}

/// Body of a timing-scenario message: run id, sequence number, publish
/// wall-clock time (ns since the Unix epoch) and the delay or TTL in ms, each
/// a big-endian u64.
pub const TIMED_BODY_LEN: usize = 32;
pub const TIMED_RUN_ID: usize = 0;
pub const TIMED_SEQ: usize = 8;
pub const TIMED_PUB_NS: usize = 16;
pub const TIMED_DELAY_MS: usize = 24;

/// Where a timing-scenario message carries its delay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DelayProp {
    /// The `expiration` property (per-message TTL), as a decimal string.
    Expiration,
    /// An `x-delay` header (signed 32-bit integer), for x-delayed-message.
    XDelay,
}

/// Encoder for publishes whose properties differ per message. The method
/// frame is the same for every message and is encoded once; the content
/// header and the body are written by hand straight into the batch buffer,
/// so a message costs a few dozen byte copies and no allocation.
pub struct TimedPublish {
    method: Vec<u8>,
    channel: u16,
    prop: DelayProp,
    delivery_mode: u8,
}

const FLAG_HEADERS: u16 = 1 << 13;
const FLAG_DELIVERY_MODE: u16 = 1 << 12;
const FLAG_EXPIRATION: u16 = 1 << 8;

impl TimedPublish {
    pub fn new(
        channel: u16,
        exchange: &str,
        routing_key: &str,
        prop: DelayProp,
        persistent: bool,
    ) -> TimedPublish {
        let mut method = Vec::with_capacity(64);
        encode_method(
            &mut method,
            channel,
            AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                exchange: exchange.into(),
                routing_key: routing_key.into(),
                mandatory: false,
                immediate: false,
            })),
        );
        TimedPublish {
            method,
            channel,
            prop,
            delivery_mode: if persistent { 2 } else { 1 },
        }
    }

    /// Append one publish (method, content header, one body frame) carrying
    /// `delay_ms` in its properties. Returns the offset of the body in `out`.
    pub fn push(&self, out: &mut Vec<u8>, delay_ms: u32, body: &[u8; TIMED_BODY_LEN]) -> usize {
        out.extend_from_slice(&self.method);
        // Content header: class, weight, body size, flags, properties.
        out.push(FRAME_HEADER);
        out.extend_from_slice(&self.channel.to_be_bytes());
        let size_at = out.len();
        out.extend_from_slice(&[0; 4]);
        let payload_at = out.len();
        out.extend_from_slice(&CLASS_BASIC.to_be_bytes());
        out.extend_from_slice(&0u16.to_be_bytes());
        out.extend_from_slice(&(TIMED_BODY_LEN as u64).to_be_bytes());
        match self.prop {
            DelayProp::Expiration => {
                out.extend_from_slice(&(FLAG_DELIVERY_MODE | FLAG_EXPIRATION).to_be_bytes());
                out.push(self.delivery_mode);
                let mut digits = [0u8; 10];
                let mut i = digits.len();
                let mut v = delay_ms;
                loop {
                    i -= 1;
                    digits[i] = b'0' + (v % 10) as u8;
                    v /= 10;
                    if v == 0 {
                        break;
                    }
                }
                out.push((digits.len() - i) as u8);
                out.extend_from_slice(&digits[i..]);
            }
            DelayProp::XDelay => {
                out.extend_from_slice(&(FLAG_HEADERS | FLAG_DELIVERY_MODE).to_be_bytes());
                // Field table: key "x-delay", type 'I' (signed 32-bit).
                out.extend_from_slice(&13u32.to_be_bytes());
                out.push(7);
                out.extend_from_slice(b"x-delay");
                out.push(b'I');
                out.extend_from_slice(&(delay_ms.min(i32::MAX as u32) as i32).to_be_bytes());
                out.push(self.delivery_mode);
            }
        }
        let payload_len = (out.len() - payload_at) as u32;
        out[size_at..size_at + 4].copy_from_slice(&payload_len.to_be_bytes());
        out.push(FRAME_END);
        // Body frame.
        out.push(FRAME_BODY);
        out.extend_from_slice(&self.channel.to_be_bytes());
        out.extend_from_slice(&(TIMED_BODY_LEN as u32).to_be_bytes());
        let body_at = out.len();
        out.extend_from_slice(body);
        out.push(FRAME_END);
        body_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::frame::parse_frame;

    fn all_frames(mut b: &[u8]) -> Vec<AMQPFrame> {
        let mut v = Vec::new();
        while !b.is_empty() {
            let (rest, f) = parse_frame(b).expect("parse_frame");
            v.push(f);
            b = rest;
        }
        v
    }

    #[test]
    fn header_parser_needs_seven_bytes() {
        assert_eq!(parse_frame_header(&[1, 0, 1, 0, 0, 0]), None);
        assert_eq!(
            parse_frame_header(&[3, 0, 2, 0, 0, 1, 0]),
            Some(FrameHeader {
                kind: 3,
                channel: 2,
                size: 256
            })
        );
    }

    #[test]
    fn framebuf_handles_partial_frames_byte_by_byte() {
        let p = encode_publish(1, "", "q", 40, false, 131072);
        let mut stream = Vec::new();
        for _ in 0..3 {
            stream.extend_from_slice(&p.bytes);
        }
        let mut fb = FrameBuf::new(64 * 1024);
        let mut kinds = Vec::new();
        for b in &stream {
            fb.feed(std::slice::from_ref(b));
            while let Some(f) = fb.next_frame().unwrap() {
                kinds.push(f.kind);
            }
        }
        assert_eq!(
            kinds,
            [FRAME_METHOD, FRAME_HEADER, FRAME_BODY].repeat(3),
            "three publishes = 9 frames in order"
        );
        assert_eq!(fb.pending(), 0);
    }

    #[test]
    fn framebuf_rejects_bad_frame_end() {
        let mut fb = FrameBuf::new(1024);
        fb.feed(&[8, 0, 0, 0, 0, 0, 0, 0xCD]);
        assert_eq!(fb.next_frame().unwrap_err(), WireError::BadFrameEnd(0xCD));
    }

    #[test]
    fn framebuf_grows_for_a_frame_larger_than_the_buffer() {
        let p = encode_publish(1, "", "q", 200_000, false, 1_000_000);
        let mut fb = FrameBuf::new(1024);
        let mut sizes = Vec::new();
        for chunk in p.bytes.chunks(5000) {
            fb.feed(chunk);
            while let Some(f) = fb.next_frame().unwrap() {
                sizes.push(f.payload.len());
            }
        }
        assert_eq!(sizes.len(), 3);
        assert_eq!(sizes[2], 200_000);
    }

    #[test]
    fn pre_encoded_publish_round_trips_through_amq_protocol() {
        let mut p = encode_publish(7, "amq.direct", "perf-q", 300, true, 136);
        let off = p.ts_offset.unwrap();
        p.bytes[off..off + 8].copy_from_slice(&42u64.to_be_bytes());
        let frames = all_frames(&p.bytes);
        // 300 bytes with frame_max 136 -> 128-byte chunks: 128 + 128 + 44
        assert_eq!(frames.len(), 5);
        match &frames[0] {
            AMQPFrame::Method(7, AMQPClass::Basic(basic::AMQPMethod::Publish(m))) => {
                assert_eq!(m.exchange.as_str(), "amq.direct");
                assert_eq!(m.routing_key.as_str(), "perf-q");
            }
            other => panic!("unexpected {other:?}"),
        }
        match &frames[1] {
            AMQPFrame::Header(7, h) => {
                assert_eq!(h.body_size, 300);
                assert_eq!(h.properties.delivery_mode(), &Some(2));
            }
            other => panic!("unexpected {other:?}"),
        }
        let mut body = Vec::new();
        for f in &frames[2..] {
            match f {
                AMQPFrame::Body(7, b) => body.extend_from_slice(b),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(body.len(), 300);
        assert_eq!(u64::from_be_bytes(body[..8].try_into().unwrap()), 42);
        // Our frame slicer sees the same frames, channel and all.
        let mut fb = FrameBuf::new(1024);
        fb.feed(&p.bytes);
        let mut n = 0;
        while let Some(f) = fb.next_frame().unwrap() {
            assert_eq!(f.channel, 7);
            n += 1;
        }
        assert_eq!(n, 5);
    }

    #[test]
    fn timed_publish_round_trips_through_amq_protocol() {
        let mut body = [0u8; TIMED_BODY_LEN];
        body[TIMED_SEQ..TIMED_SEQ + 8].copy_from_slice(&7u64.to_be_bytes());
        for (prop, delay) in [
            (DelayProp::Expiration, 0u32),
            (DelayProp::Expiration, 4_999),
            (DelayProp::Expiration, u32::MAX),
            (DelayProp::XDelay, 60_000),
        ] {
            let enc = TimedPublish::new(1, "ex", "rk", prop, prop == DelayProp::XDelay);
            let mut out = vec![0xAA; 3];
            let at = enc.push(&mut out, delay, &body);
            assert_eq!(&out[at..at + TIMED_BODY_LEN], &body[..]);
            let frames = all_frames(&out[3..]);
            assert_eq!(frames.len(), 3);
            match &frames[0] {
                AMQPFrame::Method(1, AMQPClass::Basic(basic::AMQPMethod::Publish(m))) => {
                    assert_eq!(m.exchange.as_str(), "ex");
                    assert_eq!(m.routing_key.as_str(), "rk");
                }
                other => panic!("unexpected {other:?}"),
            }
            match &frames[1] {
                AMQPFrame::Header(1, h) => {
                    assert_eq!(h.body_size, TIMED_BODY_LEN as u64);
                    let p = &h.properties;
                    match prop {
                        DelayProp::Expiration => {
                            assert_eq!(p.delivery_mode(), &Some(1));
                            let e = p.expiration().as_ref().unwrap();
                            assert_eq!(e.as_str(), delay.to_string());
                            assert!(p.headers().is_none());
                        }
                        DelayProp::XDelay => {
                            assert_eq!(p.delivery_mode(), &Some(2));
                            assert!(p.expiration().is_none());
                            let h = p.headers().as_ref().unwrap();
                            assert_eq!(
                                h.inner().get("x-delay"),
                                Some(&amq_protocol::types::AMQPValue::LongInt(delay as i32))
                            );
                        }
                    }
                }
                other => panic!("unexpected {other:?}"),
            }
            match &frames[2] {
                AMQPFrame::Body(1, b) => assert_eq!(&b[..], &body[..]),
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn small_body_has_no_timestamp_slot() {
        let p = encode_publish(1, "", "q", 4, false, 131072);
        assert_eq!(p.ts_offset, None);
        assert_eq!(all_frames(&p.bytes).len(), 3);
        let p = encode_publish(1, "", "q", 0, false, 131072);
        assert_eq!(all_frames(&p.bytes).len(), 2, "empty body: no body frame");
    }

    #[test]
    fn hand_encoded_ack_round_trips_and_fast_decoders_agree() {
        let mut out = Vec::new();
        encode_ack(&mut out, 3, 0x0102_0304_0506_0708, true);
        let frames = all_frames(&out);
        assert_eq!(
            frames,
            vec![AMQPFrame::Method(
                3,
                AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                    delivery_tag: 0x0102_0304_0506_0708,
                    multiple: true
                }))
            )]
        );
        let mut fb = FrameBuf::new(1024);
        fb.feed(&out);
        let f = fb.next_frame().unwrap().unwrap();
        assert_eq!(f.method_id(), Some((CLASS_BASIC, BASIC_ACK)));
        assert_eq!(
            ack_fields(f.payload).unwrap(),
            (0x0102_0304_0506_0708, true)
        );

        // nack shares the layout; requeue is bit 1 and must not read as multiple
        let mut out = Vec::new();
        encode_method(
            &mut out,
            1,
            AMQPClass::Basic(basic::AMQPMethod::Nack(basic::Nack {
                delivery_tag: 9,
                multiple: false,
                requeue: true,
            })),
        );
        let mut fb = FrameBuf::new(1024);
        fb.feed(&out);
        let f = fb.next_frame().unwrap().unwrap();
        assert_eq!(f.method_id(), Some((CLASS_BASIC, BASIC_NACK)));
        assert_eq!(ack_fields(f.payload).unwrap(), (9, false));
    }

    #[test]
    fn deliver_tag_is_read_after_the_consumer_tag() {
        let mut out = Vec::new();
        encode_method(
            &mut out,
            1,
            AMQPClass::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
                consumer_tag: "ctag-123".into(),
                delivery_tag: 77_000_000_001,
                redelivered: false,
                exchange: "".into(),
                routing_key: "q".into(),
            })),
        );
        let mut fb = FrameBuf::new(1024);
        fb.feed(&out);
        let f = fb.next_frame().unwrap().unwrap();
        assert_eq!(f.method_id(), Some((CLASS_BASIC, BASIC_DELIVER)));
        assert_eq!(deliver_tag(f.payload).unwrap(), 77_000_000_001);
        assert!(deliver_tag(&f.payload[..10]).is_err());
    }
}
