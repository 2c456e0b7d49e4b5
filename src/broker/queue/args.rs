//! A queue's settings, parsed once from its arguments (validated at
//! declare time by [`crate::broker::args`]).

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
