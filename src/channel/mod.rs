//! One AMQP channel: content assembly, the methods of classes exchange,
//! queue, basic, confirm and tx, publisher confirms and transactions.
//!
//! Owned by its connection's task; the part queues need (tags, unacked
//! messages, prefetch) lives in [`ChannelShared`]. Errors come back as
//! [`AmqpError`]s; the connection turns them into channel.close or
//! connection.close.
//!
//! Files: `content` (assembly), `publish` (the guards before the
//! broker's pipeline), one file per class (`exchange`, `queue`,
//! `basic`), `confirms`, `tx` and `reply_to` (direct reply-to: its
//! consumer, requests and replies). Imports the broker and the protocol,
//! never the connection or mgmt layers.

mod basic;
mod confirms;
mod content;
mod exchange;
mod publish;
mod queue;
mod reply_to;
mod tx;

use basic::Settle;
pub use content::Message;
use content::Pending;
use tx::TxOp;

use crate::broker::delivery::{ChannelShared, ConnShared, Consumer, Unacked};
use crate::broker::exchange::{Dest, Exchange};
use crate::broker::publish::{self as pipeline, Confirm, Origin, Outcome, Publish, Scratch};
use crate::broker::queue::Queue;
use crate::broker::vhost::VHost;
use crate::broker::{Access, Broker};
use crate::error::{AmqpError, AmqpResult, ReplyCode};
use crate::protocol::{fast, props, put_method};
use crate::store::SyncSeq;
use amq_protocol::protocol::{
    basic as bm, channel as chm, confirm, exchange as exm, queue as qm, tx as txm, AMQPClass,
};
use amq_protocol::types::FieldTable;
use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;
use std::sync::Arc;

/// What a channel needs from its connection.
pub struct ConnCtx {
    pub broker: Arc<Broker>,
    pub vhost: Arc<VHost>,
    pub user: String,
    pub conn: Arc<ConnShared>,
    pub conn_id: u64,
}

pub struct Channel {
    pub shared: Arc<ChannelShared>,
    /// We sent channel.close and wait for close-ok; everything else is dropped.
    pub closing: bool,
    pending: Option<Pending>,
    confirm: bool,
    publish_seq: u64,
    confirms: VecDeque<(u64, Confirm)>,
    tx: Option<Vec<TxOp>>,
    /// commit-ok waits for this sync.
    commit_wait: Option<SyncSeq>,
    consumer_prefetch: u32,
    /// Hot-path caches: the last exchange published to, and whether we may.
    last_exchange: Option<Arc<Exchange>>,
    write_allowed: Vec<String>,
    /// The publish pipeline's buffers and caches (its `pressure` lists the
    /// queues this channel pushed past their flow-control mark).
    pub scratch: Scratch,
    /// The last queue declared on this channel: an empty queue name means it.
    last_queue: Option<String>,
    /// The connection saw a publish: resource alarms block it.
    pub published: bool,
}

fn method_ids(m: &AMQPClass) -> (u16, u16) {
    (m.get_amqp_class_id(), m.get_amqp_method_id())
}

impl Channel {
    pub fn new(id: u16, conn: Arc<ConnShared>) -> Self {
        Channel {
            shared: Arc::new(ChannelShared::new(id, conn)),
            closing: false,
            pending: None,
            confirm: false,
            publish_seq: 0,
            confirms: VecDeque::new(),
            tx: None,
            commit_wait: None,
            consumer_prefetch: 0,
            last_exchange: None,
            write_allowed: vec![],
            scratch: Scratch::default(),
            published: false,
            last_queue: None,
        }
    }

    pub fn id(&self) -> u16 {
        self.shared.id
    }

    fn reply(&self, ctx: &ConnCtx, m: AMQPClass) {
        let id = self.id();
        ctx.conn.send(|out| put_method(out, id, m));
    }

    // ----- content assembly -----

    // ----- acks -----

    // ----- methods -----

    pub fn handle(&mut self, ctx: &ConnCtx, m: AMQPClass) -> AmqpResult<()> {
        let ids = method_ids(&m);
        self.handle_inner(ctx, m)
            .map_err(|e| e.with_method(ids.0, ids.1))
    }

    /// Dispatch by class: each class has its file.
    fn handle_inner(&mut self, ctx: &ConnCtx, m: AMQPClass) -> AmqpResult<()> {
        match m {
            AMQPClass::Channel(chm::AMQPMethod::Flow(f)) => {
                // RabbitMQ 3.10 does not let a client pause its deliveries:
                // active=false closes the connection with 540.
                if !f.active {
                    return Err(AmqpError::not_implemented("active=false"));
                }
                self.reply(
                    ctx,
                    AMQPClass::Channel(chm::AMQPMethod::FlowOk(chm::FlowOk { active: true })),
                );
            }
            AMQPClass::Channel(chm::AMQPMethod::FlowOk(_)) => {}
            AMQPClass::Access(amq_protocol::protocol::access::AMQPMethod::Request(_)) => {
                self.reply(
                    ctx,
                    AMQPClass::Access(amq_protocol::protocol::access::AMQPMethod::RequestOk(
                        amq_protocol::protocol::access::RequestOk {},
                    )),
                );
            }
            AMQPClass::Exchange(m) => self.exchange_method(ctx, m)?,
            AMQPClass::Queue(m) => self.queue_method(ctx, m)?,
            AMQPClass::Basic(m) => self.basic_method(ctx, m)?,
            AMQPClass::Confirm(m) => self.confirm_method(ctx, m)?,
            AMQPClass::Tx(m) => self.tx_method(ctx, m)?,
            other => return Err(invalid_method(&other)),
        }
        Ok(())
    }

    /// Tear down: cancel consumers, requeue unacked messages.
    pub fn close(&mut self, ctx: &ConnCtx) {
        // Settlements of an uncommitted transaction never happened.
        if let Some(ops) = self.tx.take() {
            self.tx_rollback(ops);
        }
        self.close_reply_to(ctx);
        let (consumers, unacked) = {
            let mut st = self.shared.state.lock();
            st.closed = true;
            (
                std::mem::take(&mut st.consumers),
                st.unacked.drain(..).collect::<Vec<_>>(),
            )
        };
        let mut auto_delete = vec![];
        for c in consumers {
            if c.queue.remove_consumer(&c).auto_delete_now {
                auto_delete.push(c.queue.clone());
            }
        }
        self.settle(unacked, Settle::Requeue);
        for q in auto_delete {
            let _ = ctx.broker.delete_queue(&ctx.vhost, &q, false, false);
        }
        self.pending = None;
        self.tx = None;
        self.confirms.clear();
    }
}

/// A method that is not valid on an open channel (540).
fn invalid_method(m: &AMQPClass) -> AmqpError {
    let (c, mm) = method_ids(m);
    AmqpError::command_invalid(format!("method {c}/{mm} is not valid on an open channel"))
}
