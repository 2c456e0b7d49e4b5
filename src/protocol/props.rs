//! Reading the few message properties the broker needs, straight from the
//! raw content-header payload, without building an `AMQPProperties`.

/// Property flag bits, in the order of the property list.
pub const CONTENT_TYPE: u16 = 1 << 15;
pub const CONTENT_ENCODING: u16 = 1 << 14;
pub const HEADERS: u16 = 1 << 13;
pub const DELIVERY_MODE: u16 = 1 << 12;
pub const PRIORITY: u16 = 1 << 11;
pub const CORRELATION_ID: u16 = 1 << 10;
pub const REPLY_TO: u16 = 1 << 9;
pub const EXPIRATION: u16 = 1 << 8;
pub const MESSAGE_ID: u16 = 1 << 7;
pub const TIMESTAMP: u16 = 1 << 6;
pub const TYPE: u16 = 1 << 5;
pub const USER_ID: u16 = 1 << 4;
pub const APP_ID: u16 = 1 << 3;
pub const CLUSTER_ID: u16 = 1 << 2;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Peek<'a> {
    pub class_id: u16,
    pub body_size: u64,
    pub flags: u16,
    pub delivery_mode: u8,
    pub priority: Option<u8>,
    pub expiration: Option<&'a str>,
    pub message_id: Option<&'a str>,
    pub user_id: Option<&'a str>,
    pub reply_to: Option<&'a str>,
    /// The encoded headers table (without its length prefix), if present.
    pub headers: Option<&'a [u8]>,
}

impl Peek<'_> {
    pub fn persistent(&self) -> bool {
        self.delivery_mode == 2
    }
}

/// Walk a content-header payload. `None` if it is malformed.
pub fn peek(h: &[u8]) -> Option<Peek<'_>> {
    if h.len() < 14 {
        return None;
    }
    let mut p = Peek {
        class_id: u16::from_be_bytes([h[0], h[1]]),
        body_size: u64::from_be_bytes(h[4..12].try_into().ok()?),
        flags: u16::from_be_bytes([h[12], h[13]]),
        ..Default::default()
    };
    // A set bit 0 means another flags word follows; AMQP 0-9-1 basic has
    // only 14 properties, so there is none to read.
    if p.flags & 1 != 0 {
        return None;
    }
    let mut at = 14;
    let short = |at: &mut usize| -> Option<&str> {
        let n = *h.get(*at)? as usize;
        let s = std::str::from_utf8(h.get(*at + 1..*at + 1 + n)?).ok()?;
        *at += 1 + n;
        Some(s)
    };
    for bit in (2..16).rev() {
        let flag = 1u16 << bit;
        if p.flags & flag == 0 {
            continue;
        }
        match flag {
            HEADERS => {
                let n = u32::from_be_bytes(h.get(at..at + 4)?.try_into().ok()?) as usize;
                p.headers = Some(h.get(at + 4..at + 4 + n)?);
                at += 4 + n;
            }
            DELIVERY_MODE => {
                p.delivery_mode = *h.get(at)?;
                at += 1;
            }
            PRIORITY => {
                p.priority = Some(*h.get(at)?);
                at += 1;
            }
            TIMESTAMP => {
                h.get(at..at + 8)?;
                at += 8;
            }
            EXPIRATION => p.expiration = Some(short(&mut at)?),
            MESSAGE_ID => p.message_id = Some(short(&mut at)?),
            USER_ID => p.user_id = Some(short(&mut at)?),
            REPLY_TO => p.reply_to = Some(short(&mut at)?),
            _ => {
                short(&mut at)?;
            }
        }
    }
    if at != h.len() {
        return None;
    }
    Some(p)
}

/// Parse the full properties of a raw content header.
pub fn full_properties(header: &[u8]) -> Option<amq_protocol::protocol::BasicProperties> {
    amq_protocol::frame::parsing::parse_content_header(header)
        .ok()
        .map(|(_, h)| h.properties)
}

pub fn full_headers(header: &[u8]) -> Option<amq_protocol::types::FieldTable> {
    full_properties(header).and_then(|p| p.headers().clone())
}

/// Re-encode a content header with new properties.
pub fn encode_header(body_size: u64, props: &amq_protocol::protocol::BasicProperties) -> Vec<u8> {
    use amq_protocol::frame::{gen_frame, AMQPContentHeader, AMQPFrame, WriteContext};
    let f = AMQPFrame::Header(
        0,
        AMQPContentHeader {
            class_id: 60,
            body_size,
            properties: props.clone(),
        },
    );
    let b = gen_frame(&f)(WriteContext::from(Vec::new()))
        .map(|c| c.write)
        .unwrap_or_default();
    b.get(7..b.len().saturating_sub(1))
        .map(|s| s.to_vec())
        .unwrap_or_default()
}

/// The content header without its BCC header (RabbitMQ strips it before delivery).
pub fn strip_bcc(header: &[u8]) -> Option<Vec<u8>> {
    let peek = peek(header)?;
    let mut p = full_properties(header)?;
    let mut h = p.headers().clone()?;
    let mut inner = h.inner().clone();
    inner.remove("BCC");
    h = amq_protocol::types::FieldTable::from(inner);
    p = p.with_headers(h);
    Some(encode_header(peek.body_size, &p))
}

/// The content header with its reply-to property set to `reply_to`
/// (direct reply-to names the requester's channel there). `None` if the
/// header is malformed.
pub fn with_reply_to(header: &[u8], reply_to: &str) -> Option<Vec<u8>> {
    let peek = peek(header)?;
    let p = full_properties(header)?.with_reply_to(reply_to.into());
    Some(encode_header(peek.body_size, &p))
}

/// The content header with an x-delivery-count header (quorum-queue style).
pub fn with_delivery_count(header: &[u8], body_size: u64, deliveries: u32) -> Vec<u8> {
    let mut p = full_properties(header).unwrap_or_default();
    let mut h = p.headers().clone().unwrap_or_default();
    h.insert(
        "x-delivery-count".into(),
        amq_protocol::types::AMQPValue::LongLongInt(deliveries as i64),
    );
    p = p.with_headers(h);
    encode_header(body_size, &p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::frame::{gen_frame, AMQPContentHeader, AMQPFrame, WriteContext};
    use amq_protocol::protocol::BasicProperties;
    use amq_protocol::types::{AMQPValue, FieldTable};

    fn raw(props: BasicProperties) -> Vec<u8> {
        let f = AMQPFrame::Header(
            1,
            AMQPContentHeader {
                class_id: 60,
                body_size: 42,
                properties: props,
            },
        );
        let b = gen_frame(&f)(WriteContext::from(Vec::new())).unwrap().write;
        b[7..b.len() - 1].to_vec()
    }

    #[test]
    fn peeks_like_amq_protocol_parses() {
        let mut headers = FieldTable::default();
        headers.insert("k".into(), AMQPValue::LongString("v".into()));
        let props = BasicProperties::default()
            .with_content_type("text/plain".into())
            .with_headers(headers)
            .with_delivery_mode(2)
            .with_priority(7)
            .with_expiration("1500".into())
            .with_message_id("m-1".into())
            .with_timestamp(99)
            .with_user_id("guest".into())
            .with_reply_to("amq.rabbitmq.reply-to".into())
            .with_app_id("app".into());
        let h = raw(props);
        let p = peek(&h).unwrap();
        assert_eq!(p.body_size, 42);
        assert!(p.persistent());
        assert_eq!(p.priority, Some(7));
        assert_eq!(p.expiration, Some("1500"));
        assert_eq!(p.message_id, Some("m-1"));
        assert_eq!(p.user_id, Some("guest"));
        assert_eq!(p.reply_to, Some("amq.rabbitmq.reply-to"));
        assert!(p.headers.is_some());
        let empty = raw(BasicProperties::default());
        let p = peek(&empty).unwrap();
        assert_eq!(p.delivery_mode, 0);
        assert!(peek(&empty[..13]).is_none());
    }

    #[test]
    fn reply_to_is_replaced_and_nothing_else_changes() {
        let props = BasicProperties::default()
            .with_correlation_id("c-1".into())
            .with_reply_to("amq.rabbitmq.reply-to".into())
            .with_message_id("m-1".into());
        let h = with_reply_to(&raw(props.clone()), "amq.rabbitmq.reply-to.abc").unwrap();
        assert_eq!(
            full_properties(&h).unwrap(),
            props.with_reply_to("amq.rabbitmq.reply-to.abc".into())
        );
        assert_eq!(peek(&h).unwrap().body_size, 42);
        assert!(with_reply_to(&[0; 5], "x").is_none());
    }
}
