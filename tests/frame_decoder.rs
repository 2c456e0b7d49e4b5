//! The frame decoder and the hand-written decoders of the hot path against
//! random and mutated bytes (the same work as fuzz/fuzz_targets/frame_decoder.rs,
//! bounded, so that CI runs it): they never panic, never consume bytes they
//! did not decode, and whenever they accept something amq-protocol agrees.

mod common;
use common::encode;

use amq_protocol::frame::parsing::parse_content_header;
use amq_protocol::frame::{AMQPContentHeader, AMQPFrame};
use amq_protocol::protocol::{basic, parse_class, AMQPClass, BasicProperties};
use amq_protocol::types::{AMQPValue, FieldTable};
use bytes::BytesMut;
use lepus::protocol::{decode_frame, fast, props};
use proptest::prelude::*;

const FRAME_MAX: u32 = 131072;

fn limit(frame_max: u32) -> usize {
    if frame_max == 0 {
        131072
    } else {
        frame_max as usize
    }
}

/// Check one decoded payload against amq-protocol.
fn check_payload(kind: u8, payload: &[u8]) {
    let _ = fast::method_ids(payload);
    let peeked = props::peek(payload);
    if kind == 1 {
        let parsed = parse_class(payload);
        if let Some(p) = fast::decode_publish(payload) {
            match &parsed {
                Ok(([], AMQPClass::Basic(basic::AMQPMethod::Publish(m)))) => {
                    assert_eq!(m.exchange.as_str(), p.exchange);
                    assert_eq!(m.routing_key.as_str(), p.routing_key);
                    assert_eq!(m.mandatory, p.mandatory);
                    assert_eq!(m.immediate, p.immediate);
                }
                other => {
                    panic!("fast::decode_publish accepted {payload:?}, amq-protocol: {other:?}")
                }
            }
        }
        if let Some((tag, multiple)) = fast::decode_ack(payload) {
            match &parsed {
                Ok(([], AMQPClass::Basic(basic::AMQPMethod::Ack(a)))) => {
                    assert_eq!((a.delivery_tag, a.multiple), (tag, multiple));
                }
                other => panic!("fast::decode_ack accepted {payload:?}, amq-protocol: {other:?}"),
            }
        }
        // The fast path must not miss what it is there for.
        match &parsed {
            Ok(([], AMQPClass::Basic(basic::AMQPMethod::Ack(_)))) => {
                assert!(
                    fast::decode_ack(payload).is_some(),
                    "basic.ack {payload:?} missed by the fast path"
                )
            }
            Ok(([], AMQPClass::Basic(basic::AMQPMethod::Publish(_)))) => assert!(
                fast::decode_publish(payload).is_some(),
                "basic.publish {payload:?} missed by the fast path"
            ),
            _ => {}
        }
    }
    if kind == 2 {
        if let (Some(p), Ok((rest, h))) = (peeked, parse_content_header(payload)) {
            if rest.is_empty() {
                assert_eq!(p.class_id, h.class_id);
                assert_eq!(p.body_size, h.body_size);
                let props = &h.properties;
                assert_eq!(p.delivery_mode, props.delivery_mode().unwrap_or(0));
                assert_eq!(p.priority, *props.priority());
                assert_eq!(
                    p.expiration,
                    props.expiration().as_ref().map(|s| s.as_str())
                );
                assert_eq!(
                    p.message_id,
                    props.message_id().as_ref().map(|s| s.as_str())
                );
                assert_eq!(p.user_id, props.user_id().as_ref().map(|s| s.as_str()));
            }
        }
    }
}

/// Feed `data` to the decoder `chunk` bytes at a time, decoding everything
/// that is complete after each read, as the connection's read loop does.
fn exercise(data: &[u8], chunk: usize, frame_max: u32) {
    let mut buf = BytesMut::new();
    for part in data.chunks(chunk.max(1)) {
        buf.extend_from_slice(part);
        loop {
            let before = buf.clone();
            match decode_frame(&mut buf, frame_max) {
                Ok(None) => {
                    assert_eq!(buf, before, "'need more bytes' must not consume anything");
                    break;
                }
                // The connection closes on an error; nothing more to decode.
                Err(_) => return,
                Ok(Some(f)) => {
                    let used = before.len() - buf.len();
                    assert_eq!(used, f.payload.len() + 8, "consumed exactly one frame");
                    assert!(
                        used <= limit(frame_max),
                        "frame of {used} octets over frame_max {frame_max}"
                    );
                    assert_eq!(before[0], f.kind);
                    assert_eq!(u16::from_be_bytes([before[1], before[2]]), f.channel);
                    assert_eq!(&before[7..7 + f.payload.len()], &f.payload[..]);
                    assert_eq!(before[used - 1], 0xCE);
                    assert!(
                        matches!(f.kind, 1 | 2 | 3 | 8),
                        "frame type {} accepted",
                        f.kind
                    );
                    check_payload(f.kind, &f.payload);
                }
            }
        }
    }
}

fn short() -> impl Strategy<Value = String> {
    // Any characters, kept within a shortstr's 255 bytes.
    "\\PC{0,60}".prop_filter("shortstr", |s| s.len() <= 255)
}

fn properties() -> impl Strategy<Value = BasicProperties> {
    (
        proptest::option::of(short()),
        proptest::option::of(0u8..=2),
        proptest::option::of(any::<u8>()),
        proptest::option::of(short()),
        proptest::option::of(short()),
        proptest::option::of(short()),
        proptest::option::of(any::<u64>()),
        proptest::option::of(short()),
    )
        .prop_map(|(ct, dm, prio, exp, mid, uid, ts, hk)| {
            let mut p = BasicProperties::default();
            if let Some(v) = ct {
                p = p.with_content_type(v.into());
            }
            if let Some(v) = dm {
                p = p.with_delivery_mode(v);
            }
            if let Some(v) = prio {
                p = p.with_priority(v);
            }
            if let Some(v) = exp {
                p = p.with_expiration(v.into());
            }
            if let Some(v) = mid {
                p = p.with_message_id(v.into());
            }
            if let Some(v) = uid {
                p = p.with_user_id(v.into());
            }
            if let Some(v) = ts {
                p = p.with_timestamp(v);
            }
            if let Some(k) = hk {
                let mut t = FieldTable::default();
                t.insert(k.into(), AMQPValue::LongLongInt(7));
                p = p.with_headers(t);
            }
            p
        })
}

/// A valid frame of the kinds the broker sees most.
fn valid_frame() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        (any::<u16>(), short(), short(), any::<bool>(), any::<bool>()).prop_map(
            |(ch, ex, rk, m, i)| encode(&AMQPFrame::Method(
                ch,
                AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                    exchange: ex.into(),
                    routing_key: rk.into(),
                    mandatory: m,
                    immediate: i,
                }))
            ))
        ),
        (any::<u16>(), any::<u64>(), any::<bool>()).prop_map(|(ch, tag, multiple)| encode(
            &AMQPFrame::Method(
                ch,
                AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                    delivery_tag: tag,
                    multiple
                }))
            )
        )),
        (any::<u16>(), any::<u64>(), properties()).prop_map(|(ch, size, p)| encode(
            &AMQPFrame::Header(
                ch,
                AMQPContentHeader {
                    class_id: 60,
                    body_size: size,
                    properties: p
                }
            )
        )),
        (any::<u16>(), proptest::collection::vec(any::<u8>(), 0..300))
            .prop_map(|(ch, b)| encode(&AMQPFrame::Body(ch, b))),
        Just(vec![8, 0, 0, 0, 0, 0, 0, 0xCE]),
    ]
}

/// Valid frames, then damaged: bytes overwritten, cut short or dropped.
fn mutated_stream() -> impl Strategy<Value = Vec<u8>> {
    (
        proptest::collection::vec(valid_frame(), 1..6),
        proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        any::<prop::sample::Index>(),
        any::<bool>(),
    )
        .prop_map(|(frames, flips, cut, do_cut)| {
            let mut v: Vec<u8> = frames.concat();
            for (at, byte) in flips {
                let i = at.index(v.len());
                v[i] = byte;
            }
            if do_cut {
                v.truncate(cut.index(v.len() + 1));
            }
            v
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(
        data in proptest::collection::vec(any::<u8>(), 0..2048),
        chunk in 1usize..300,
        fm in prop_oneof![Just(0u32), Just(4096u32), Just(FRAME_MAX)],
    ) {
        exercise(&data, chunk, fm);
    }

    /// Random bytes behind a plausible frame header, so the payload decoders
    /// see random input too, not only the frame splitter.
    #[test]
    fn random_payloads_never_panic(
        kind in prop_oneof![Just(1u8), Just(2u8), Just(3u8), Just(8u8), any::<u8>()],
        ch in any::<u16>(),
        class_method in prop_oneof![Just([0u8, 60, 0, 40]), Just([0u8, 60, 0, 80]), Just([0u8, 60, 0, 0]), any::<[u8; 4]>()],
        payload in proptest::collection::vec(any::<u8>(), 0..400),
        chunk in 1usize..64,
    ) {
        let mut p = class_method.to_vec();
        p.extend_from_slice(&payload);
        let mut f = vec![kind];
        f.extend_from_slice(&ch.to_be_bytes());
        f.extend_from_slice(&(p.len() as u32).to_be_bytes());
        f.extend_from_slice(&p);
        f.push(0xCE);
        exercise(&f, chunk, FRAME_MAX);
    }

    #[test]
    fn mutated_valid_frames_never_panic(data in mutated_stream(), chunk in 1usize..200) {
        exercise(&data, chunk, FRAME_MAX);
    }

    #[test]
    fn valid_frames_decode_exactly(frames in proptest::collection::vec(valid_frame(), 1..8), chunk in 1usize..500) {
        let data = frames.concat();
        let mut buf = BytesMut::new();
        let mut seen = 0;
        for part in data.chunks(chunk) {
            buf.extend_from_slice(part);
            while let Some(f) = decode_frame(&mut buf, FRAME_MAX).expect("a valid frame is accepted") {
                let want = &frames[seen];
                prop_assert_eq!(f.kind, want[0]);
                prop_assert_eq!(&f.payload[..], &want[7..want.len() - 1]);
                check_payload(f.kind, &f.payload);
                seen += 1;
            }
        }
        prop_assert_eq!(seen, frames.len());
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn publish_with_any_strings_decodes_like_amq_protocol(ex in short(), rk in short(), m: bool, i: bool) {
        let f = encode(&AMQPFrame::Method(1, AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: ex.clone().into(), routing_key: rk.clone().into(), mandatory: m, immediate: i,
        }))));
        let p = fast::decode_publish(&f[7..f.len() - 1]).expect("decoded");
        prop_assert_eq!(p, fast::PublishRef { exchange: &ex, routing_key: &rk, mandatory: m, immediate: i });
    }

    #[test]
    fn peek_reads_what_amq_protocol_wrote(p in properties(), size: u64) {
        let f = encode(&AMQPFrame::Header(1, AMQPContentHeader { class_id: 60, body_size: size, properties: p.clone() }));
        let payload = &f[7..f.len() - 1];
        let k = props::peek(payload).expect("a valid content header peeks");
        prop_assert_eq!(k.body_size, size);
        prop_assert_eq!(k.delivery_mode, p.delivery_mode().unwrap_or(0));
        prop_assert_eq!(k.priority, *p.priority());
        prop_assert_eq!(k.expiration, p.expiration().as_ref().map(|s| s.as_str()));
        prop_assert_eq!(k.message_id, p.message_id().as_ref().map(|s| s.as_str()));
        prop_assert_eq!(k.user_id, p.user_id().as_ref().map(|s| s.as_str()));
        prop_assert_eq!(k.headers.is_some(), p.headers().is_some());
    }
}

#[test]
fn oversized_size_field_is_refused_before_the_payload_arrives() {
    for fm in [0u32, 4096, FRAME_MAX] {
        let mut buf = BytesMut::from(&[3u8, 0, 1, 0xff, 0xff, 0xff, 0xff][..]);
        assert!(decode_frame(&mut buf, fm).is_err(), "frame_max {fm}");
    }
}
