//! The wire: frames in, frames out.
//!
//! [`frame`] splits the byte stream into raw frames (type, channel, payload) and
//! checks sizes and the frame-end octet; method payloads are then decoded with
//! amq-protocol, except the two that carry nearly all the traffic (basic.publish
//! and basic.ack), which [`fast`] decodes by hand. Outbound, control methods are
//! generated with amq-protocol while deliveries, confirms and content frames are
//! written by hand straight into the connection's output buffer. The differential
//! tests in [`fast`] check every hand-written codec against amq-protocol.
//!
//! Imports nothing from the crate but [`crate::error`].

pub mod fast;
pub mod frame;
pub mod props;

pub use frame::{decode_frame, RawFrame};

use amq_protocol::frame::{gen_frame, AMQPFrame, WriteContext};
use amq_protocol::protocol::AMQPClass;
use bytes::{BufMut, BytesMut};

pub const FRAME_METHOD: u8 = 1;
pub const FRAME_HEADER: u8 = 2;
pub const FRAME_BODY: u8 = 3;
pub const FRAME_HEARTBEAT: u8 = 8;
pub const FRAME_END: u8 = 0xCE;
/// Overhead of a frame around its payload: type, channel, size and frame-end.
pub const FRAME_OVERHEAD: usize = 8;
/// The smallest frame_max a peer may ask for (spec: 4096).
pub const FRAME_MIN_SIZE: u32 = 4096;
pub const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";

/// Append an amq-protocol method frame to `out`.
pub fn put_method(out: &mut BytesMut, channel: u16, method: AMQPClass) {
    let frame = AMQPFrame::Method(channel, method);
    let ctx = WriteContext::from(Vec::with_capacity(64));
    let r = gen_frame(&frame)(ctx);
    match r {
        Ok(ctx) => out.extend_from_slice(&ctx.write),
        // Generation fails only for values that cannot be encoded (a shortstr over
        // 255 bytes); every string we send is validated or truncated before.
        Err(e) => tracing::error!(error = ?e, "cannot encode method frame"),
    }
}

pub fn put_heartbeat(out: &mut BytesMut) {
    out.put_slice(&[FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END]);
}
