//! Fuzz the frame splitter and the hand-written hot-path decoders.
//!
//! The first input byte sets how many bytes arrive per read, so partial
//! frames and frames split across reads are exercised as in the connection's
//! read loop. Every complete frame is handed to amq-protocol's method parser
//! and to lepus' own decoders, which must agree with it whenever they accept.
//! tests/frame_decoder.rs runs the same checks, bounded, under proptest.
//!
//!     cargo +nightly fuzz run frame_decoder

#![no_main]

use amq_protocol::frame::parsing::parse_content_header;
use amq_protocol::protocol::{basic, parse_class, AMQPClass};
use bytes::BytesMut;
use lepus::protocol::{decode_frame, fast, props};
use libfuzzer_sys::fuzz_target;

const FRAME_MAX: u32 = 131072;

fn check(kind: u8, payload: &[u8]) {
    let _ = fast::method_ids(payload);
    let peeked = props::peek(payload);
    if kind == 1 {
        let parsed = parse_class(payload);
        if let Some(p) = fast::decode_publish(payload) {
            match &parsed {
                Ok(([], AMQPClass::Basic(basic::AMQPMethod::Publish(m)))) => {
                    assert_eq!(m.exchange.as_str(), p.exchange);
                    assert_eq!(m.routing_key.as_str(), p.routing_key);
                    assert_eq!((m.mandatory, m.immediate), (p.mandatory, p.immediate));
                }
                other => panic!("decode_publish accepted {payload:?}; amq-protocol: {other:?}"),
            }
        }
        if let Some((tag, multiple)) = fast::decode_ack(payload) {
            match &parsed {
                Ok(([], AMQPClass::Basic(basic::AMQPMethod::Ack(a)))) => {
                    assert_eq!((a.delivery_tag, a.multiple), (tag, multiple));
                }
                other => panic!("decode_ack accepted {payload:?}; amq-protocol: {other:?}"),
            }
        }
    }
    if kind == 2 {
        if let (Some(p), Ok((rest, h))) = (peeked, parse_content_header(payload)) {
            if rest.is_empty() {
                assert_eq!((p.class_id, p.body_size), (h.class_id, h.body_size));
                assert_eq!(p.delivery_mode, h.properties.delivery_mode().unwrap_or(0));
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, data)) = data.split_first() else {
        return;
    };
    let chunk = (first as usize).max(1);
    let mut buf = BytesMut::new();
    for part in data.chunks(chunk) {
        buf.extend_from_slice(part);
        loop {
            let before = buf.len();
            match decode_frame(&mut buf, FRAME_MAX) {
                Ok(Some(f)) => {
                    assert_eq!(before - buf.len(), f.payload.len() + 8);
                    assert!(f.payload.len() + 8 <= FRAME_MAX as usize);
                    check(f.kind, &f.payload);
                }
                Ok(None) => {
                    assert_eq!(buf.len(), before);
                    break;
                }
                Err(_) => return,
            }
        }
    }
});
