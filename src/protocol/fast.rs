//! Hand-written codecs for the frames on the publish/deliver hot path.
//!
//! amq-protocol builds an owned `AMQPClass` (two `String`s for a publish) for
//! every method; at hundreds of thousands of messages a second that allocation
//! and the generic nom parser show up in profiles. These functions read and
//! write the same bytes directly. The tests at the bottom compare each of them
//! with amq-protocol's output, so the two cannot drift apart.

use super::*;
use bytes::BufMut;

/// basic.publish, decoded without allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishRef<'a> {
    pub exchange: &'a str,
    pub routing_key: &'a str,
    pub mandatory: bool,
    pub immediate: bool,
}

fn short_str(p: &[u8], at: usize) -> Option<(&str, usize)> {
    let len = *p.get(at)? as usize;
    let s = p.get(at + 1..at + 1 + len)?;
    Some((std::str::from_utf8(s).ok()?, at + 1 + len))
}

/// Class and method id of a method frame payload.
pub fn method_ids(p: &[u8]) -> Option<(u16, u16)> {
    if p.len() < 4 {
        return None;
    }
    Some((
        u16::from_be_bytes([p[0], p[1]]),
        u16::from_be_bytes([p[2], p[3]]),
    ))
}

/// Decode a basic.publish method payload (class 60, method 40).
pub fn decode_publish(p: &[u8]) -> Option<PublishRef<'_>> {
    if method_ids(p)? != (60, 40) || p.len() < 6 {
        return None;
    }
    let (exchange, at) = short_str(p, 6)?;
    let (routing_key, at) = short_str(p, at)?;
    let bits = *p.get(at)?;
    if at + 1 != p.len() {
        return None;
    }
    Some(PublishRef {
        exchange,
        routing_key,
        mandatory: bits & 1 != 0,
        immediate: bits & 2 != 0,
    })
}

/// Decode basic.ack (60/80): (delivery tag, multiple).
pub fn decode_ack(p: &[u8]) -> Option<(u64, bool)> {
    if method_ids(p)? != (60, 80) || p.len() != 13 {
        return None;
    }
    let tag = u64::from_be_bytes(p[4..12].try_into().ok()?);
    Some((tag, p[12] & 1 != 0))
}

#[inline]
fn begin_method(out: &mut BytesMut, channel: u16, class: u16, method: u16) -> usize {
    out.put_u8(FRAME_METHOD);
    out.put_u16(channel);
    let at = out.len();
    out.put_u32(0);
    out.put_u16(class);
    out.put_u16(method);
    at
}

#[inline]
fn end_frame(out: &mut BytesMut, size_at: usize) {
    let size = (out.len() - size_at - 4) as u32;
    out[size_at..size_at + 4].copy_from_slice(&size.to_be_bytes());
    out.put_u8(FRAME_END);
}

#[inline]
fn put_short_str(out: &mut BytesMut, s: &str) {
    let b = &s.as_bytes()[..s.len().min(255)];
    out.put_u8(b.len() as u8);
    out.put_slice(b);
}

/// basic.deliver (60/60).
pub fn put_deliver(
    out: &mut BytesMut,
    channel: u16,
    consumer_tag: &str,
    delivery_tag: u64,
    redelivered: bool,
    exchange: &str,
    routing_key: &str,
) {
    let at = begin_method(out, channel, 60, 60);
    put_short_str(out, consumer_tag);
    out.put_u64(delivery_tag);
    out.put_u8(redelivered as u8);
    put_short_str(out, exchange);
    put_short_str(out, routing_key);
    end_frame(out, at);
}

/// basic.get-ok (60/71).
pub fn put_get_ok(
    out: &mut BytesMut,
    channel: u16,
    delivery_tag: u64,
    redelivered: bool,
    exchange: &str,
    routing_key: &str,
    message_count: u32,
) {
    let at = begin_method(out, channel, 60, 71);
    out.put_u64(delivery_tag);
    out.put_u8(redelivered as u8);
    put_short_str(out, exchange);
    put_short_str(out, routing_key);
    out.put_u32(message_count);
    end_frame(out, at);
}

/// basic.return (60/50).
pub fn put_return(
    out: &mut BytesMut,
    channel: u16,
    reply_code: u16,
    reply_text: &str,
    exchange: &str,
    routing_key: &str,
) {
    let at = begin_method(out, channel, 60, 50);
    out.put_u16(reply_code);
    put_short_str(out, reply_text);
    put_short_str(out, exchange);
    put_short_str(out, routing_key);
    end_frame(out, at);
}

/// basic.ack (60/80) or basic.nack (60/120) sent as a publisher confirm.
pub fn put_confirm(out: &mut BytesMut, channel: u16, tag: u64, multiple: bool, ack: bool) {
    let at = begin_method(out, channel, 60, if ack { 80 } else { 120 });
    out.put_u64(tag);
    // nack carries a second bit, requeue, which is meaningless for confirms.
    out.put_u8(multiple as u8);
    end_frame(out, at);
}

/// The content header frame (given its raw payload as received from the
/// publisher) followed by the body split into frames of at most `frame_max`.
pub fn put_content(out: &mut BytesMut, channel: u16, header: &[u8], body: &[u8], frame_max: u32) {
    out.reserve(header.len() + body.len() + 16);
    out.put_u8(FRAME_HEADER);
    out.put_u16(channel);
    out.put_u32(header.len() as u32);
    out.put_slice(header);
    out.put_u8(FRAME_END);
    let chunk = (frame_max as usize).saturating_sub(FRAME_OVERHEAD).max(1);
    for part in body.chunks(chunk) {
        out.put_u8(FRAME_BODY);
        out.put_u16(channel);
        out.put_u32(part.len() as u32);
        out.put_slice(part);
        out.put_u8(FRAME_END);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::frame::{gen_frame, AMQPContentHeader, AMQPFrame, WriteContext};
    use amq_protocol::protocol::{basic, AMQPClass, BasicProperties};
    use proptest::prelude::*;

    fn generate(frame: &AMQPFrame) -> Vec<u8> {
        gen_frame(frame)(WriteContext::from(Vec::new()))
            .unwrap()
            .write
    }

    fn method_payload(class: AMQPClass) -> Vec<u8> {
        let bytes = generate(&AMQPFrame::Method(1, class));
        bytes[7..bytes.len() - 1].to_vec()
    }

    fn short() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9._#*-]{0,40}"
    }

    proptest! {
        #[test]
        fn publish_decodes_like_amq_protocol(ex in short(), rk in short(), m: bool, i: bool) {
            let p = method_payload(AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                exchange: ex.clone().into(),
                routing_key: rk.clone().into(),
                mandatory: m,
                immediate: i,
            })));
            let d = decode_publish(&p).unwrap();
            prop_assert_eq!(d, PublishRef { exchange: &ex, routing_key: &rk, mandatory: m, immediate: i });
        }

        #[test]
        fn ack_decodes_like_amq_protocol(tag: u64, multiple: bool) {
            let p = method_payload(AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                delivery_tag: tag,
                multiple,
            })));
            prop_assert_eq!(decode_ack(&p), Some((tag, multiple)));
        }

        #[test]
        fn deliver_encodes_like_amq_protocol(ct in short(), tag: u64, r: bool, ex in short(), rk in short()) {
            let mut out = BytesMut::new();
            put_deliver(&mut out, 7, &ct, tag, r, &ex, &rk);
            let want = generate(&AMQPFrame::Method(7, AMQPClass::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
                consumer_tag: ct.into(), delivery_tag: tag, redelivered: r, exchange: ex.into(), routing_key: rk.into(),
            }))));
            prop_assert_eq!(&out[..], &want[..]);
        }

        #[test]
        fn get_ok_encodes_like_amq_protocol(tag: u64, r: bool, ex in short(), rk in short(), n: u32) {
            let mut out = BytesMut::new();
            put_get_ok(&mut out, 2, tag, r, &ex, &rk, n);
            let want = generate(&AMQPFrame::Method(2, AMQPClass::Basic(basic::AMQPMethod::GetOk(basic::GetOk {
                delivery_tag: tag, redelivered: r, exchange: ex.into(), routing_key: rk.into(), message_count: n,
            }))));
            prop_assert_eq!(&out[..], &want[..]);
        }

        #[test]
        fn return_encodes_like_amq_protocol(code: u16, text in short(), ex in short(), rk in short()) {
            let mut out = BytesMut::new();
            put_return(&mut out, 2, code, &text, &ex, &rk);
            let want = generate(&AMQPFrame::Method(2, AMQPClass::Basic(basic::AMQPMethod::Return(basic::Return {
                reply_code: code, reply_text: text.into(), exchange: ex.into(), routing_key: rk.into(),
            }))));
            prop_assert_eq!(&out[..], &want[..]);
        }

        #[test]
        fn confirms_encode_like_amq_protocol(tag: u64, multiple: bool) {
            let mut out = BytesMut::new();
            put_confirm(&mut out, 3, tag, multiple, true);
            let want = generate(&AMQPFrame::Method(3, AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack { delivery_tag: tag, multiple }))));
            prop_assert_eq!(&out[..], &want[..]);
            let mut out = BytesMut::new();
            put_confirm(&mut out, 3, tag, multiple, false);
            let want = generate(&AMQPFrame::Method(3, AMQPClass::Basic(basic::AMQPMethod::Nack(basic::Nack { delivery_tag: tag, multiple, requeue: false }))));
            prop_assert_eq!(&out[..], &want[..]);
        }

        #[test]
        fn content_encodes_like_amq_protocol(body in proptest::collection::vec(any::<u8>(), 0..3000), ct in short()) {
            let props = BasicProperties::default().with_content_type(ct.into()).with_delivery_mode(2);
            let header = AMQPContentHeader { class_id: 60, body_size: body.len() as u64, properties: props };
            let hbytes = generate(&AMQPFrame::Header(5, header));
            let raw_header = &hbytes[7..hbytes.len() - 1];
            let mut out = BytesMut::new();
            put_content(&mut out, 5, raw_header, &body, 1000);
            let mut want = hbytes.clone();
            for part in body.chunks(992) {
                want.extend(generate(&AMQPFrame::Body(5, part.to_vec())));
            }
            prop_assert_eq!(&out[..], &want[..]);
        }
    }
}
