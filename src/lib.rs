//! Lepus: an AMQP 0-9-1 message broker.
//!
//! The layers, bottom up (docs/architecture.md has the long form):
//!
//! - base: [`error`], [`config`], [`sys`], [`metrics`], [`clock`] (the one
//!   source of broker time), [`tls`] (certificates, rustls configurations);
//!   they import nothing above them.
//! - [`protocol`]: the wire codecs (frames, the hand-written publish, ack
//!   and deliver paths, content-header properties); imports only `error`.
//! - [`store`]: every durable byte (segments, ack logs, definitions log);
//!   knows no AMQP session, socket or HTTP.
//! - [`broker`]: the core (vhosts, exchanges, queues, the one publish
//!   pipeline, delivery, dead-lettering, delayed messages, definitions);
//!   never imports the layers above it.
//! - [`channel`] and [`connection`]: one AMQP session over any byte stream.
//! - [`server`] (listeners, housekeeping) and [`mgmt`] (the HTTP API).
//!
//! One publish, file by file:
//!
//! 1. `server.rs` accepts the socket; `connection/mod.rs` runs the
//!    handshake (`connection/handshake.rs`) and the read loop, splitting
//!    bytes into frames with `protocol/frame.rs` (`protocol/fast.rs` decodes
//!    basic.publish by hand).
//! 2. `channel/content.rs` assembles publish + content header + body;
//!    `channel/publish.rs` checks it (exchange, access, user-id, expiration)
//!    and calls `broker/publish.rs`, the one publish pipeline.
//! 3. `broker/publish.rs` routes through `broker/vhost.rs` and
//!    `broker/exchange.rs`, appends the message once to the store
//!    (`store/mod.rs`, a memory-mapped segment) and enqueues an 8-byte
//!    position into each queue (`broker/queue/mod.rs`).
//! 4. A queue with a consumer with credit dispatches at once
//!    (`broker/queue/dispatch.rs`): `broker/delivery.rs` writes basic.deliver
//!    and the content, read from the segment, into the consumer connection's
//!    outbox; `connection/writer.rs` sends the whole outbox in one write.
//! 5. Persistent messages in durable queues are confirmed
//!    (`channel/confirms.rs`) once the store's sync thread has fdatasync'ed
//!    them (group commit).
//!
//! One ack: `connection/mod.rs` decodes basic.ack by hand →
//! `channel/basic.rs` takes the tags out of the channel's unacked list →
//! `broker/queue/mod.rs` (`Queue::ack`) releases the positions → the store
//! logs the removal (`store/mod.rs`, ack log) and frees a segment once
//! nothing in it is referenced.
//!
//! Beside the path: [`mgmt`] serves RabbitMQ's management HTTP API and
//! Prometheus metrics on their own port; `lepusctl` (src/bin) uses them.

pub mod broker;
pub mod channel;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod connection;
pub mod error;
pub mod metrics;
pub mod mgmt;
pub mod protocol;
pub mod server;
pub mod store;
pub mod sys;
pub mod tls;
