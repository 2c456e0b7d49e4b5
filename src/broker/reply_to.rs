//! Direct reply-to (RabbitMQ's `amq.rabbitmq.reply-to`): which channel a
//! reply routing key names.
//!
//! A channel that consumes the pseudo-queue [`PSEUDO_QUEUE`] (no-ack) is
//! registered here under a fresh random token; its publishes with
//! `reply_to = amq.rabbitmq.reply-to` carry `amq.rabbitmq.reply-to.<token>`
//! instead. A reply published to the default exchange with that routing key
//! is handed by the responder's channel straight to the requester's
//! consumer ([`crate::broker::delivery::deliver_reply`]): never stored,
//! never queued. The token is 144 random bits: a client cannot name another
//! client's channel unless it was given the token. The registry holds weak
//! references only; a channel removes its token when its reply consumer is
//! cancelled or the channel closes.

use crate::broker::delivery::ChannelShared;
use base64::Engine;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::{Arc, Weak};

/// The pseudo-queue a requester consumes from and names as reply_to.
pub const PSEUDO_QUEUE: &str = "amq.rabbitmq.reply-to";

/// The prefix of the routing keys that name a requester's channel.
pub const PREFIX: &str = "amq.rabbitmq.reply-to.";

/// The token in a reply routing key, if it is one (default exchange only).
pub fn token_of(routing_key: &str) -> Option<&str> {
    routing_key.strip_prefix(PREFIX)
}

/// token → the channel whose reply consumer it names.
#[derive(Default)]
pub struct Registry {
    channels: Mutex<HashMap<String, Weak<ChannelShared>>>,
}

impl Registry {
    /// A new token for `ch`'s reply consumer.
    pub fn register(&self, ch: &Arc<ChannelShared>) -> String {
        let mut map = self.channels.lock();
        loop {
            let r: [u8; 18] = rand::random();
            let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r);
            if let std::collections::hash_map::Entry::Vacant(e) = map.entry(token.clone()) {
                e.insert(Arc::downgrade(ch));
                return token;
            }
        }
    }

    pub fn unregister(&self, token: &str) {
        self.channels.lock().remove(token);
    }

    /// The channel `token` names, while it is open.
    pub fn find(&self, token: &str) -> Option<Arc<ChannelShared>> {
        let mut map = self.channels.lock();
        let w = map.get(token)?;
        match w.upgrade() {
            Some(ch) => Some(ch),
            None => {
                map.remove(token);
                None
            }
        }
    }

    /// queue.declare of `name` in RabbitMQ's reply-to namespace (any name
    /// that starts with the pseudo-queue's): `Some(true)` for the
    /// pseudo-queue or a reply key whose consumer is there, `Some(false)`
    /// for any other such name, `None` outside the namespace.
    pub fn declares(&self, name: &str) -> Option<bool> {
        if name == PSEUDO_QUEUE {
            return Some(true);
        }
        if !name.starts_with(PSEUDO_QUEUE) {
            return None;
        }
        let Some(token) = token_of(name) else {
            return Some(false);
        };
        Some(self.find(token).is_some_and(|ch| {
            let st = ch.state.lock();
            !st.closed && st.reply.as_ref().is_some_and(|r| r.token == token)
        }))
    }

    pub fn len(&self) -> usize {
        self.channels.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
