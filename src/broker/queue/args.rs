//! A queue's settings, parsed from its arguments (validated at declare time
//! by [`crate::broker::args`]) and combined with the policies' merged
//! definition as RabbitMQ's classic queues combine them.

use super::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overflow {
    DropHead,
    RejectPublish,
    RejectPublishDlx,
}

/// Queue arguments, parsed once (they were validated at declare time).
#[derive(Clone, Debug)]
pub struct QueueArgs {
    pub message_ttl: Option<u64>,
    pub expires: Option<u64>,
    pub dlx: Option<String>,
    pub dlrk: Option<String>,
    pub max_length: Option<u64>,
    pub max_length_bytes: Option<u64>,
    pub overflow: Overflow,
    pub max_priority: u8,
    pub single_active_consumer: bool,
    pub delivery_limit: Option<u32>,
    /// x-queue-type quorum: every message stored and synced, x-delivery-count.
    pub quorum: bool,
}

impl QueueArgs {
    pub fn parse(a: &FieldTable) -> Self {
        use crate::broker::args::{get_bool, get_int, get_str};
        QueueArgs {
            message_ttl: get_int(a, "x-message-ttl").map(|v| v.max(0) as u64),
            expires: get_int(a, "x-expires").map(|v| v.max(1) as u64),
            dlx: get_str(a, "x-dead-letter-exchange"),
            dlrk: get_str(a, "x-dead-letter-routing-key"),
            max_length: get_int(a, "x-max-length").map(|v| v.max(0) as u64),
            max_length_bytes: get_int(a, "x-max-length-bytes").map(|v| v.max(0) as u64),
            overflow: match get_str(a, "x-overflow").as_deref() {
                Some("reject-publish") => Overflow::RejectPublish,
                Some("reject-publish-dlx") => Overflow::RejectPublishDlx,
                _ => Overflow::DropHead,
            },
            max_priority: get_int(a, "x-max-priority")
                .map(|v| v.clamp(0, 255) as u8)
                .unwrap_or(0),
            single_active_consumer: get_bool(a, "x-single-active-consumer").unwrap_or(false),
            delivery_limit: get_int(a, "x-delivery-limit").map(|v| v.max(0) as u32),
            quorum: crate::broker::args::is_quorum(a),
        }
    }
}

impl QueueArgs {
    /// The settings from the arguments and a merged policy definition
    /// ([`crate::broker::policy::Applied`]), as RabbitMQ resolves each key:
    /// for TTLs, x-expires, the length limits and the delivery limit the
    /// lower of the argument and the policy (res_min); for the dead-letter
    /// exchange and routing key and overflow the argument if there is one
    /// (res_arg). The rest (priorities, type, single active consumer) comes
    /// from the arguments only.
    pub fn with_policy(a: &FieldTable, def: &serde_json::Map<String, serde_json::Value>) -> Self {
        use crate::broker::args::get_str;
        let mut s = QueueArgs::parse(a);
        if def.is_empty() {
            return s;
        }
        let int = |k: &str| def.get(k).and_then(|v| v.as_u64());
        let string = |k: &str| def.get(k).and_then(|v| v.as_str()).map(str::to_owned);
        let min = |arg: Option<u64>, pol: Option<u64>| match (arg, pol) {
            (Some(x), Some(y)) => Some(x.min(y)),
            (x, y) => x.or(y),
        };
        s.message_ttl = min(s.message_ttl, int("message-ttl"));
        s.expires = min(s.expires, int("expires").map(|v| v.max(1)));
        s.max_length = min(s.max_length, int("max-length"));
        s.max_length_bytes = min(s.max_length_bytes, int("max-length-bytes"));
        s.delivery_limit = min(s.delivery_limit.map(u64::from), int("delivery-limit"))
            .map(|v| v.min(u32::MAX as u64) as u32);
        s.dlx = s.dlx.or_else(|| string("dead-letter-exchange"));
        s.dlrk = s.dlrk.or_else(|| string("dead-letter-routing-key"));
        if get_str(a, "x-overflow").is_none() {
            s.overflow = match string("overflow").as_deref() {
                Some("reject-publish") => Overflow::RejectPublish,
                Some("reject-publish-dlx") => Overflow::RejectPublishDlx,
                _ => Overflow::DropHead,
            };
        }
        s
    }
}
