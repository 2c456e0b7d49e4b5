//! Lepus: an AMQP 0-9-1 message broker.
//!
//! One message's path, file by file (docs/architecture.md has the long form):
//!
//! 1. [`server`] accepts the socket; [`connection`] does the handshake and
//!    runs the read loop, splitting bytes into frames with [`protocol`].
//! 2. [`channel`] assembles basic.publish + content header + body frames into
//!    a message, finds the exchange in its [`vhost`] and routes it with
//!    [`exchange`].
//! 3. The message is appended once to the [`store`] (a memory-mapped segment);
//!    every queue that takes it gets an 8-byte position ([`queue`]).
//! 4. A queue with a consumer with credit delivers at once: it writes
//!    basic.deliver and the content, read from the segment, into the consumer
//!    connection's outbox ([`delivery`]); that connection's writer task sends
//!    the whole outbox in one write.
//! 5. Persistent messages in durable queues are confirmed once the store's
//!    sync thread has fdatasync'ed them (group commit); acks are logged so a
//!    restart brings back exactly the unacked messages.
//!
//! Beside the path: [`mgmt`] serves RabbitMQ's management HTTP API and
//! Prometheus metrics on their own port; `lepusctl` (src/bin) uses them.

pub mod broker;
pub mod channel;
pub mod clock;
pub mod config;
pub mod connection;
pub mod error;
pub mod metrics;
pub mod mgmt;
pub mod protocol;
pub mod server;
pub mod store;
pub mod sys;
