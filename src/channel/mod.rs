//! One AMQP channel: content assembly, the methods of classes exchange,
//! queue, basic, confirm and tx, publisher confirms and transactions.
//!
//! Owned by its connection's task; the part queues need (tags, unacked
//! messages, prefetch) lives in [`ChannelShared`]. Errors come back as
//! [`AmqpError`]s; the connection turns them into channel.close or
//! connection.close.

use crate::broker::delivery::{ChannelShared, ConnShared, Consumer, Unacked};
use crate::broker::exchange::{Dest, Exchange};
use crate::broker::publish::{self, Origin, Outcome, Publish, Scratch};
use crate::broker::queue::Queue;
use crate::broker::vhost::VHost;
use crate::broker::{Access, Broker};
use crate::error::{AmqpError, AmqpResult, ReplyCode};
use crate::protocol::{fast, props, put_method};
use crate::store::SyncSeq;
use amq_protocol::protocol::{
    basic, channel as chm, confirm, exchange as exm, queue as qm, tx, AMQPClass,
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

/// A publish waiting for its content.
struct Pending {
    exchange: String,
    routing_key: String,
    mandatory: bool,
    header: Option<Bytes>,
    body_size: u64,
    body: Body,
}

enum Body {
    Empty,
    One(Bytes),
    Many(BytesMut),
}

impl Body {
    fn len(&self) -> usize {
        match self {
            Body::Empty => 0,
            Body::One(b) => b.len(),
            Body::Many(b) => b.len(),
        }
    }
    fn push(&mut self, chunk: Bytes) {
        *self = match std::mem::replace(self, Body::Empty) {
            Body::Empty => Body::One(chunk),
            Body::One(first) => {
                let mut m = BytesMut::with_capacity(first.len() + chunk.len());
                m.extend_from_slice(&first);
                m.extend_from_slice(&chunk);
                Body::Many(m)
            }
            Body::Many(mut m) => {
                m.extend_from_slice(&chunk);
                Body::Many(m)
            }
        }
    }
}

/// A complete message as published.
pub struct Message {
    pub exchange: String,
    pub routing_key: String,
    pub mandatory: bool,
    pub header: Bytes,
    pub body: Bytes,
}

/// What [`Channel::check_publish`] found.
struct Checked {
    ex: Arc<Exchange>,
    headers: Option<FieldTable>,
    expiration: Option<u64>,
    persistent: bool,
    priority: u8,
}

enum ConfirmState {
    Ready(bool),
    Wait(SyncSeq),
}

/// What a transaction holds until commit. Acks take their messages out of
/// the unacked list at once (so a bad tag fails at once, as in RabbitMQ);
/// rollback puts them back.
enum TxOp {
    Publish(Message),
    Settle(Vec<Unacked>, Settle),
}

pub struct Channel {
    pub shared: Arc<ChannelShared>,
    /// We sent channel.close and wait for close-ok; everything else is dropped.
    pub closing: bool,
    pending: Option<Pending>,
    confirm: bool,
    publish_seq: u64,
    confirms: VecDeque<(u64, ConfirmState)>,
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

    /// Whether the channel waits for message content (a method now is an error).
    pub fn expects_content(&self) -> bool {
        self.pending.is_some()
    }

    // ----- content assembly -----

    pub fn on_publish(&mut self, ctx: &ConnCtx, p: fast::PublishRef) -> AmqpResult<()> {
        if p.immediate {
            return Err(
                AmqpError::new(ReplyCode::NotImplemented, "immediate=true").with_method(60, 40)
            );
        }
        let _ = ctx;
        self.published = true;
        self.pending = Some(Pending {
            exchange: p.exchange.to_owned(),
            routing_key: p.routing_key.to_owned(),
            mandatory: p.mandatory,
            header: None,
            body_size: 0,
            body: Body::Empty,
        });
        Ok(())
    }

    pub fn on_header(&mut self, ctx: &ConnCtx, payload: Bytes) -> AmqpResult<()> {
        let Some(p) = self.pending.as_mut() else {
            return Err(AmqpError::unexpected_frame(format!(
                "expected method frame, got non method frame instead on channel {}",
                self.shared.id
            )));
        };
        if p.header.is_some() {
            return Err(AmqpError::unexpected_frame(
                "expected content body, got non content body frame instead",
            ));
        }
        let Some(peek) = props::peek(&payload) else {
            return Err(AmqpError::frame_error("malformed content header").with_method(60, 40));
        };
        if peek.class_id != 60 {
            return Err(AmqpError::unexpected_frame(format!(
                "expected content header for class 60, got one for class {} instead",
                peek.class_id
            )));
        }
        let max = ctx.broker.config.max_message_size;
        if peek.body_size > max {
            self.pending = None;
            return Err(AmqpError::precondition(format!(
                "message size {} is larger than configured max size {max}",
                peek.body_size
            ))
            .with_method(60, 40));
        }
        let body_size = peek.body_size;
        p.body_size = body_size;
        p.header = Some(payload);
        if body_size == 0 {
            self.complete(ctx)?;
        }
        Ok(())
    }

    pub fn on_body(&mut self, ctx: &ConnCtx, payload: Bytes) -> AmqpResult<()> {
        let Some(p) = self.pending.as_mut().filter(|p| p.header.is_some()) else {
            return Err(AmqpError::unexpected_frame(if self.pending.is_some() {
                "expected content header for class 60, got non content header frame instead"
                    .to_string()
            } else {
                format!(
                    "expected method frame, got non method frame instead on channel {}",
                    self.shared.id
                )
            }));
        };
        if p.body.len() as u64 + payload.len() as u64 > p.body_size {
            return Err(AmqpError::frame_error(format!(
                "content body larger than the {} bytes announced in its header",
                p.body_size
            )));
        }
        p.body.push(payload);
        if p.body.len() as u64 == p.body_size {
            self.complete(ctx)?;
        }
        Ok(())
    }

    fn complete(&mut self, ctx: &ConnCtx) -> AmqpResult<()> {
        let p = self.pending.take().expect("pending publish");
        let body = match p.body {
            Body::Empty => Bytes::new(),
            Body::One(b) => b,
            Body::Many(m) => m.freeze(),
        };
        let msg = Message {
            exchange: p.exchange,
            routing_key: p.routing_key,
            mandatory: p.mandatory,
            header: p.header.expect("header"),
            body,
        };
        if self.tx.is_some() {
            // Validate now (404, 403, 406) so errors come at publish time, as
            // in RabbitMQ, and tx.commit cannot fail half-way.
            self.check_publish(ctx, &msg)?;
            self.tx.as_mut().unwrap().push(TxOp::Publish(msg));
            return Ok(());
        }
        let outcome = self.publish(ctx, &msg)?;
        if self.confirm {
            self.publish_seq += 1;
            self.confirms.push_back((self.publish_seq, outcome));
        }
        Ok(())
    }

    fn lookup_exchange(&mut self, ctx: &ConnCtx, name: &str) -> AmqpResult<Arc<Exchange>> {
        if let Some(ex) = &self.last_exchange {
            if ex.name == name && !ex.is_deleted() {
                return Ok(ex.clone());
            }
        }
        let ex = ctx
            .vhost
            .get_exchange(name)
            .map_err(|e| e.with_method(60, 40))?;
        if ex.internal {
            return Err(AmqpError::access_refused(format!(
                "cannot publish to internal exchange '{name}' in vhost '{}'",
                ctx.vhost.name
            ))
            .with_method(60, 40));
        }
        if !self.write_allowed.iter().any(|n| n == name) {
            ctx.broker
                .check_access(&ctx.user, &ctx.vhost.name, Access::Write, "exchange", name)
                .map_err(|e| e.with_method(60, 40))?;
            self.write_allowed.push(name.to_owned());
        }
        self.last_exchange = Some(ex.clone());
        Ok(ex)
    }

    /// Route and store one message. Returns how its confirm is decided.
    /// Every check a publish must pass, with what they parse. Also run when
    /// a publish is queued in a transaction, so that tx.commit cannot fail
    /// half-way.
    fn check_publish(&mut self, ctx: &ConnCtx, msg: &Message) -> AmqpResult<Checked> {
        let ex = self.lookup_exchange(ctx, &msg.exchange)?;
        let peek = props::peek(&msg.header)
            .ok_or_else(|| AmqpError::frame_error("malformed content header"))?;
        if let Some(uid) = peek.user_id {
            if uid != ctx.user {
                return Err(AmqpError::precondition(format!(
                    "user_id property set to '{uid}' but authenticated user was '{}'",
                    ctx.user
                ))
                .with_method(60, 40));
            }
        }
        let headers = match peek.headers {
            Some(_) => Some(props::full_headers(&msg.header).ok_or_else(|| {
                AmqpError::frame_error("cannot decode the message properties (headers table)")
                    .with_method(60, 40)
            })?),
            None => None,
        };
        let expiration = match peek.expiration {
            Some(e) => Some(parse_expiration(e).map_err(|why| {
                AmqpError::precondition(format!("invalid expiration '{e}': {why}"))
                    .with_method(60, 40)
            })?),
            None => None,
        };
        Ok(Checked {
            ex,
            headers,
            expiration,
            persistent: peek.persistent(),
            priority: peek.priority.unwrap_or(0),
        })
    }

    /// Publish one message through the broker's pipeline; returns how its
    /// confirm is decided.
    fn publish(&mut self, ctx: &ConnCtx, msg: &Message) -> AmqpResult<ConfirmState> {
        let c = self.check_publish(ctx, msg)?;
        let p = Publish {
            exchange: &c.ex,
            routing_key: &msg.routing_key,
            header: &msg.header,
            body: &msg.body,
            headers: c.headers.as_ref(),
            persistent: c.persistent,
            priority: c.priority,
            expiration: c.expiration,
            mandatory: msg.mandatory,
        };
        let outcome = publish::publish(
            &ctx.vhost,
            &ctx.broker.store,
            &p,
            Origin::Client,
            &mut self.scratch,
        );
        match &outcome {
            Outcome::Unroutable if msg.mandatory => {
                let id = self.id();
                let fm = ctx.conn.frame_max();
                ctx.conn.send(|out| {
                    fast::put_return(out, id, 312, "NO_ROUTE", &msg.exchange, &msg.routing_key);
                    fast::put_content(out, id, &msg.header, &msg.body, fm);
                });
            }
            Outcome::NotStored(e) => tracing::error!(error = %e, "publish not stored"),
            _ => {}
        }
        Ok(match outcome.confirm() {
            Ok(Some(s)) => ConfirmState::Wait(s),
            Ok(None) => ConfirmState::Ready(true),
            Err(()) => ConfirmState::Ready(false),
        })
    }

    /// Send the confirms (and a deferred tx.commit-ok) that are decided.
    /// Returns whether something still waits for a sync.
    pub fn flush_confirms(&mut self, ctx: &ConnCtx, synced: SyncSeq) -> bool {
        if let Some(s) = self.commit_wait {
            if s <= synced {
                self.commit_wait = None;
                self.reply(
                    ctx,
                    AMQPClass::Tx(tx::AMQPMethod::CommitOk(tx::CommitOk {})),
                );
            }
        }
        if self.confirms.is_empty() {
            return self.commit_wait.is_some();
        }
        let id = self.id();
        let store = &ctx.broker.store;
        let mut run_end: Option<u64> = None;
        let mut out = BytesMut::new();
        let mut count = 0;
        while let Some((seq, st)) = self.confirms.front() {
            let ack = match st {
                ConfirmState::Ready(a) => *a,
                ConfirmState::Wait(s) if *s <= synced => !store.sync_failed(*s),
                ConfirmState::Wait(_) => break,
            };
            let seq = *seq;
            self.confirms.pop_front();
            count += 1;
            if ack {
                run_end = Some(seq);
            } else {
                if let Some(end) = run_end.take() {
                    fast::put_confirm(&mut out, id, end, true, true);
                }
                fast::put_confirm(&mut out, id, seq, false, false);
            }
        }
        if let Some(end) = run_end {
            // A single confirm goes out with multiple=false, as RabbitMQ does.
            fast::put_confirm(&mut out, id, end, count > 1, true);
        }
        if !out.is_empty() {
            ctx.conn.send(|o| o.extend_from_slice(&out));
        }
        !self.confirms.is_empty() || self.commit_wait.is_some()
    }

    pub fn waits_for_sync(&self) -> bool {
        self.commit_wait.is_some()
            || self
                .confirms
                .iter()
                .any(|(_, s)| matches!(s, ConfirmState::Wait(_)))
    }

    pub fn has_confirms(&self) -> bool {
        !self.confirms.is_empty()
    }

    // ----- acks -----

    fn take_unacked(&self, tag: u64, multiple: bool) -> AmqpResult<Vec<Unacked>> {
        let mut st = self.shared.state.lock();
        let taken: Vec<Unacked> = if multiple {
            // RabbitMQ: with multiple, the named tag itself must be outstanding.
            let n = if tag == 0 {
                st.unacked.len()
            } else {
                match st.unacked.binary_search_by_key(&tag, |u| u.tag) {
                    Ok(i) => i + 1,
                    Err(_) => {
                        return Err(AmqpError::precondition(format!(
                            "unknown delivery tag {tag}"
                        )))
                    }
                }
            };
            st.unacked.drain(..n).collect()
        } else {
            match st.unacked.binary_search_by_key(&tag, |u| u.tag) {
                Ok(i) => vec![st.unacked.remove(i).unwrap()],
                Err(_) => {
                    return Err(AmqpError::precondition(format!(
                        "unknown delivery tag {tag}"
                    )))
                }
            }
        };
        Ok(taken)
    }

    fn settle(&self, entries: Vec<Unacked>, how: Settle) {
        // Group by queue, keeping order.
        let mut groups: Vec<(Arc<Queue>, Vec<Unacked>)> = vec![];
        for e in entries {
            match groups.iter_mut().find(|(q, _)| Arc::ptr_eq(q, &e.queue)) {
                Some((_, v)) => v.push(e),
                None => groups.push((e.queue.clone(), vec![e])),
            }
        }
        for (q, es) in groups {
            match how {
                Settle::Ack => q.ack(&es),
                Settle::Requeue => q.requeue(&es),
                Settle::Reject => q.reject(&es),
            }
        }
        let global = self.shared.state.lock().global_prefetch > 0;
        if global {
            let consumers = self.shared.state.lock().consumers.clone();
            for c in consumers {
                c.queue.dispatch();
            }
        }
    }

    fn do_ack(&self, tag: u64, multiple: bool) -> AmqpResult<()> {
        let entries = self.take_unacked(tag, multiple)?;
        self.settle(entries, Settle::Ack);
        Ok(())
    }

    fn do_nack(&self, tag: u64, multiple: bool, requeue: bool) -> AmqpResult<()> {
        let entries = self.take_unacked(tag, multiple)?;
        self.settle(
            entries,
            if requeue {
                Settle::Requeue
            } else {
                Settle::Reject
            },
        );
        Ok(())
    }

    /// Fast path for basic.ack decoded by hand.
    pub fn on_ack(&mut self, tag: u64, multiple: bool) -> AmqpResult<()> {
        if self.tx.is_some() {
            return self
                .tx_settle(tag, multiple, Settle::Ack)
                .map_err(|e| e.with_method(60, 80));
        }
        self.do_ack(tag, multiple)
            .map_err(|e| e.with_method(60, 80))
    }

    fn tx_settle(&mut self, tag: u64, multiple: bool, how: Settle) -> AmqpResult<()> {
        let entries = self.take_unacked(tag, multiple)?;
        if let Some(ops) = self.tx.as_mut() {
            ops.push(TxOp::Settle(entries, how));
        }
        Ok(())
    }

    /// tx.rollback: settlements never happened; their messages are unacked again.
    fn tx_rollback(&mut self, ops: Vec<TxOp>) {
        let mut back: Vec<Unacked> = ops
            .into_iter()
            .flat_map(|op| match op {
                TxOp::Settle(es, _) => es,
                TxOp::Publish(_) => vec![],
            })
            .collect();
        if back.is_empty() {
            return;
        }
        let mut st = self.shared.state.lock();
        back.extend(st.unacked.drain(..));
        back.sort_by_key(|u| u.tag);
        st.unacked = back.into();
    }

    // ----- methods -----

    pub fn handle(&mut self, ctx: &ConnCtx, m: AMQPClass) -> AmqpResult<()> {
        let ids = method_ids(&m);
        self.handle_inner(ctx, m)
            .map_err(|e| e.with_method(ids.0, ids.1))
    }

    fn handle_inner(&mut self, ctx: &ConnCtx, m: AMQPClass) -> AmqpResult<()> {
        let b = &ctx.broker;
        let vh = &ctx.vhost;
        match m {
            AMQPClass::Channel(chm::AMQPMethod::Flow(f)) => {
                self.shared.state.lock().flow = f.active;
                self.reply(
                    ctx,
                    AMQPClass::Channel(chm::AMQPMethod::FlowOk(chm::FlowOk { active: f.active })),
                );
                if f.active {
                    self.dispatch_all();
                }
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
            // ----- exchange -----
            AMQPClass::Exchange(exm::AMQPMethod::Declare(d)) => {
                let name = d.exchange.as_str();
                if !d.passive {
                    b.check_access(&ctx.user, &vh.name, Access::Configure, "exchange", name)?;
                }
                b.declare_exchange(
                    vh,
                    name,
                    d.kind.as_str(),
                    d.passive,
                    d.durable,
                    d.auto_delete,
                    d.internal,
                    d.arguments,
                )?;
                if !d.nowait {
                    self.reply(
                        ctx,
                        AMQPClass::Exchange(exm::AMQPMethod::DeclareOk(exm::DeclareOk {})),
                    );
                }
            }
            AMQPClass::Exchange(exm::AMQPMethod::Delete(d)) => {
                b.check_access(
                    &ctx.user,
                    &vh.name,
                    Access::Configure,
                    "exchange",
                    d.exchange.as_str(),
                )?;
                b.delete_exchange(vh, d.exchange.as_str(), d.if_unused)?;
                if !d.nowait {
                    self.reply(
                        ctx,
                        AMQPClass::Exchange(exm::AMQPMethod::DeleteOk(exm::DeleteOk {})),
                    );
                }
            }
            AMQPClass::Exchange(exm::AMQPMethod::Bind(d)) => {
                let dest = vh.get_exchange(d.destination.as_str())?;
                let src = vh.get_exchange(d.source.as_str())?;
                b.check_access(&ctx.user, &vh.name, Access::Write, "exchange", &dest.name)?;
                b.check_access(&ctx.user, &vh.name, Access::Read, "exchange", &src.name)?;
                b.bind(
                    vh,
                    &src,
                    Dest::Exchange(dest),
                    d.routing_key.as_str(),
                    d.arguments,
                )?;
                if !d.nowait {
                    self.reply(
                        ctx,
                        AMQPClass::Exchange(exm::AMQPMethod::BindOk(exm::BindOk {})),
                    );
                }
            }
            AMQPClass::Exchange(exm::AMQPMethod::Unbind(d)) => {
                let dest = vh.get_exchange(d.destination.as_str())?;
                let src = vh.get_exchange(d.source.as_str())?;
                b.check_access(&ctx.user, &vh.name, Access::Write, "exchange", &dest.name)?;
                b.check_access(&ctx.user, &vh.name, Access::Read, "exchange", &src.name)?;
                b.unbind(
                    vh,
                    &src,
                    Dest::Exchange(dest),
                    d.routing_key.as_str(),
                    d.arguments,
                )?;
                if !d.nowait {
                    self.reply(
                        ctx,
                        AMQPClass::Exchange(exm::AMQPMethod::UnbindOk(exm::UnbindOk {})),
                    );
                }
            }
            // ----- queue -----
            AMQPClass::Queue(qm::AMQPMethod::Declare(d)) => {
                if !d.passive && !d.queue.as_str().is_empty() {
                    b.check_access(
                        &ctx.user,
                        &vh.name,
                        Access::Configure,
                        "queue",
                        d.queue.as_str(),
                    )?;
                }
                let q = b.declare_queue(
                    vh,
                    d.queue.as_str(),
                    d.passive,
                    d.durable,
                    d.exclusive,
                    d.auto_delete,
                    d.arguments,
                    ctx.conn_id,
                )?;
                self.last_queue = Some(q.name.clone());
                if !d.nowait {
                    self.reply(
                        ctx,
                        AMQPClass::Queue(qm::AMQPMethod::DeclareOk(qm::DeclareOk {
                            queue: q.name.as_str().into(),
                            message_count: q.message_count(),
                            consumer_count: q.consumer_count(),
                        })),
                    );
                }
            }
            AMQPClass::Queue(qm::AMQPMethod::Bind(d)) => {
                let q = self.queue_for(ctx, d.queue.as_str())?;
                let ex = vh.get_exchange(d.exchange.as_str())?;
                b.check_access(&ctx.user, &vh.name, Access::Write, "queue", &q.name)?;
                b.check_access(&ctx.user, &vh.name, Access::Read, "exchange", &ex.name)?;
                // Empty queue name and routing key: the routing key is the queue's name.
                let rk = if d.queue.as_str().is_empty() && d.routing_key.as_str().is_empty() {
                    q.name.clone()
                } else {
                    d.routing_key.as_str().to_owned()
                };
                b.bind(vh, &ex, Dest::Queue(q), &rk, d.arguments)?;
                if !d.nowait {
                    self.reply(ctx, AMQPClass::Queue(qm::AMQPMethod::BindOk(qm::BindOk {})));
                }
            }
            AMQPClass::Queue(qm::AMQPMethod::Unbind(d)) => {
                let q = self.queue_for(ctx, d.queue.as_str())?;
                let ex = vh.get_exchange(d.exchange.as_str())?;
                b.check_access(&ctx.user, &vh.name, Access::Write, "queue", &q.name)?;
                b.check_access(&ctx.user, &vh.name, Access::Read, "exchange", &ex.name)?;
                b.unbind(vh, &ex, Dest::Queue(q), d.routing_key.as_str(), d.arguments)?;
                self.reply(
                    ctx,
                    AMQPClass::Queue(qm::AMQPMethod::UnbindOk(qm::UnbindOk {})),
                );
            }
            AMQPClass::Queue(qm::AMQPMethod::Purge(d)) => {
                let q = self.queue_for(ctx, d.queue.as_str())?;
                b.check_access(&ctx.user, &vh.name, Access::Read, "queue", &q.name)?;
                let n = q.purge();
                if !d.nowait {
                    self.reply(
                        ctx,
                        AMQPClass::Queue(qm::AMQPMethod::PurgeOk(qm::PurgeOk { message_count: n })),
                    );
                }
            }
            AMQPClass::Queue(qm::AMQPMethod::Delete(d)) => {
                let n = match vh.queue(self.queue_name(d.queue.as_str())?) {
                    Some(q) => {
                        crate::broker::check_exclusive(&q, ctx.conn_id)?;
                        b.check_access(&ctx.user, &vh.name, Access::Configure, "queue", &q.name)?;
                        b.delete_queue(vh, &q, d.if_unused, d.if_empty)?
                    }
                    // RabbitMQ: deleting a queue that does not exist succeeds.
                    None => 0,
                };
                if !d.nowait {
                    self.reply(
                        ctx,
                        AMQPClass::Queue(qm::AMQPMethod::DeleteOk(qm::DeleteOk {
                            message_count: n,
                        })),
                    );
                }
            }
            // ----- basic -----
            AMQPClass::Basic(basic::AMQPMethod::Qos(q)) => {
                if q.global {
                    self.shared.state.lock().global_prefetch = q.prefetch_count as u32;
                    self.dispatch_all();
                } else {
                    self.consumer_prefetch = q.prefetch_count as u32;
                }
                self.reply(
                    ctx,
                    AMQPClass::Basic(basic::AMQPMethod::QosOk(basic::QosOk {})),
                );
            }
            AMQPClass::Basic(basic::AMQPMethod::Consume(c)) => self.consume(ctx, c)?,
            AMQPClass::Basic(basic::AMQPMethod::Cancel(c)) => {
                let tag = c.consumer_tag.as_str().to_owned();
                self.cancel_consumer(ctx, &tag);
                if !c.nowait {
                    self.reply(
                        ctx,
                        AMQPClass::Basic(basic::AMQPMethod::CancelOk(basic::CancelOk {
                            consumer_tag: tag.into(),
                        })),
                    );
                }
            }
            AMQPClass::Basic(basic::AMQPMethod::Get(g)) => {
                let q = self.queue_for(ctx, g.queue.as_str())?;
                b.check_access(&ctx.user, &vh.name, Access::Read, "queue", &q.name)?;
                if !q.get(&self.shared, g.no_ack) {
                    self.reply(
                        ctx,
                        AMQPClass::Basic(basic::AMQPMethod::GetEmpty(basic::GetEmpty {})),
                    );
                }
            }
            AMQPClass::Basic(basic::AMQPMethod::Ack(a)) => {
                self.on_ack(a.delivery_tag, a.multiple)?
            }
            AMQPClass::Basic(basic::AMQPMethod::Nack(n)) => {
                if self.tx.is_some() {
                    let how = if n.requeue {
                        Settle::Requeue
                    } else {
                        Settle::Reject
                    };
                    self.tx_settle(n.delivery_tag, n.multiple, how)?;
                } else {
                    self.do_nack(n.delivery_tag, n.multiple, n.requeue)?;
                }
            }
            AMQPClass::Basic(basic::AMQPMethod::Reject(r)) => {
                if self.tx.is_some() {
                    let how = if r.requeue {
                        Settle::Requeue
                    } else {
                        Settle::Reject
                    };
                    self.tx_settle(r.delivery_tag, false, how)?;
                } else {
                    self.do_nack(r.delivery_tag, false, r.requeue)?;
                }
            }
            AMQPClass::Basic(basic::AMQPMethod::Recover(r)) => {
                if !r.requeue {
                    return Err(AmqpError::new(ReplyCode::NotImplemented, "requeue=false"));
                }
                // recover-ok precedes the redeliveries, as in RabbitMQ.
                self.reply(
                    ctx,
                    AMQPClass::Basic(basic::AMQPMethod::RecoverOk(basic::RecoverOk {})),
                );
                self.recover(r.requeue)?;
            }
            AMQPClass::Basic(basic::AMQPMethod::RecoverAsync(r)) => self.recover(r.requeue)?,
            // ----- confirm and tx -----
            AMQPClass::Confirm(confirm::AMQPMethod::Select(s)) => {
                if self.tx.is_some() {
                    return Err(AmqpError::precondition(
                        "cannot switch from tx to confirm mode",
                    ));
                }
                self.confirm = true;
                if !s.nowait {
                    self.reply(
                        ctx,
                        AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(confirm::SelectOk {})),
                    );
                }
            }
            AMQPClass::Tx(tx::AMQPMethod::Select(_)) => {
                if self.confirm {
                    return Err(AmqpError::precondition(
                        "cannot switch from confirm to tx mode",
                    ));
                }
                if self.tx.is_none() {
                    self.tx = Some(vec![]);
                }
                self.reply(
                    ctx,
                    AMQPClass::Tx(tx::AMQPMethod::SelectOk(tx::SelectOk {})),
                );
            }
            AMQPClass::Tx(tx::AMQPMethod::Commit(_)) => {
                let Some(ops) = self.tx.replace(vec![]) else {
                    return Err(AmqpError::precondition("channel is not transactional"));
                };
                let mut wait = None;
                let mut ops = ops.into_iter();
                while let Some(op) = ops.next() {
                    match op {
                        TxOp::Publish(msg) => match self.publish(ctx, &msg) {
                            Ok(ConfirmState::Wait(s)) => wait = Some(s),
                            Ok(_) => {}
                            Err(e) => {
                                // The rest of the transaction never happened:
                                // its settlements go back to the unacked list.
                                self.tx_rollback(ops.collect());
                                return Err(e);
                            }
                        },
                        TxOp::Settle(entries, how) => self.settle(entries, how),
                    }
                }
                match wait {
                    Some(s) => self.commit_wait = Some(s),
                    None => self.reply(
                        ctx,
                        AMQPClass::Tx(tx::AMQPMethod::CommitOk(tx::CommitOk {})),
                    ),
                }
            }
            AMQPClass::Tx(tx::AMQPMethod::Rollback(_)) => {
                let Some(ops) = self.tx.replace(vec![]) else {
                    return Err(AmqpError::precondition("channel is not transactional"));
                };
                self.tx_rollback(ops);
                self.reply(
                    ctx,
                    AMQPClass::Tx(tx::AMQPMethod::RollbackOk(tx::RollbackOk {})),
                );
            }
            other => {
                let (c, m) = method_ids(&other);
                return Err(AmqpError::command_invalid(format!(
                    "method {c}/{m} is not valid on an open channel"
                )));
            }
        }
        Ok(())
    }

    /// RabbitMQ: an empty queue name means the last queue declared on the channel.
    fn queue_name<'a>(&'a self, name: &'a str) -> AmqpResult<&'a str> {
        if !name.is_empty() {
            return Ok(name);
        }
        self.last_queue
            .as_deref()
            .ok_or_else(|| AmqpError::new(ReplyCode::NotFound, "no previously declared queue"))
    }

    fn queue_for(&self, ctx: &ConnCtx, name: &str) -> AmqpResult<Arc<Queue>> {
        let name = self.queue_name(name)?;
        let q = ctx.vhost.get_queue(name)?;
        crate::broker::check_exclusive(&q, ctx.conn_id)?;
        Ok(q)
    }

    fn recover(&self, requeue: bool) -> AmqpResult<()> {
        if !requeue {
            return Err(AmqpError::new(ReplyCode::NotImplemented, "requeue=false"));
        }
        let all: Vec<Unacked> = self.shared.state.lock().unacked.drain(..).collect();
        self.settle(all, Settle::Requeue);
        Ok(())
    }

    fn consume(&mut self, ctx: &ConnCtx, c: basic::Consume) -> AmqpResult<()> {
        let q = self.queue_for(ctx, c.queue.as_str())?;
        ctx.broker
            .check_access(&ctx.user, &ctx.vhost.name, Access::Read, "queue", &q.name)?;
        if q.args.quorum && self.shared.state.lock().global_prefetch > 0 {
            // RabbitMQ: a connection error.
            return Err(AmqpError::not_implemented(format!(
                "queue '{}' in vhost '{}' does not support global qos",
                q.name, q.vhost_name
            )));
        }
        if q.consumer_conflict(c.exclusive) {
            return Err(AmqpError::access_refused(format!(
                "queue '{}' in vhost '{}' in exclusive use",
                q.name, q.vhost_name
            )));
        }
        let tag = if c.consumer_tag.as_str().is_empty() {
            let r: [u8; 16] = rand::random();
            format!(
                "amq.ctag-{}",
                base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, r)
            )
        } else {
            c.consumer_tag.as_str().to_owned()
        };
        {
            let st = self.shared.state.lock();
            if st.consumers.iter().any(|x| x.tag == tag) {
                return Err(AmqpError::not_allowed(format!(
                    "attempt to reuse consumer tag '{tag}'"
                )));
            }
        }
        crate::broker::args::validate_consumer_args(&c.arguments, &q.name, &q.vhost_name)?;
        let priority = crate::broker::args::get_int(&c.arguments, "x-priority")
            .unwrap_or(0)
            .clamp(i32::MIN as i64, i32::MAX as i64) as i32;
        let consumer = Arc::new(Consumer {
            tag: tag.clone(),
            channel: self.shared.clone(),
            no_ack: c.no_ack,
            exclusive: c.exclusive,
            prefetch: self.consumer_prefetch,
            unacked: Default::default(),
            priority,
            queue: q.clone(),
            arguments: c.arguments,
        });
        self.shared.state.lock().consumers.push(consumer.clone());
        if !c.nowait {
            // consume-ok must precede the first delivery.
            self.reply(
                ctx,
                AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(basic::ConsumeOk {
                    consumer_tag: tag.into(),
                })),
            );
        }
        q.add_consumer(consumer);
        Ok(())
    }

    fn cancel_consumer(&mut self, ctx: &ConnCtx, tag: &str) {
        let c = {
            let mut st = self.shared.state.lock();
            let i = st.consumers.iter().position(|c| c.tag == tag);
            i.map(|i| st.consumers.remove(i))
        };
        if let Some(c) = c {
            let r = c.queue.remove_consumer(&c);
            if r.auto_delete_now {
                let _ = ctx.broker.delete_queue(&ctx.vhost, &c.queue, false, false);
            }
        }
    }

    fn dispatch_all(&self) {
        let consumers = self.shared.state.lock().consumers.clone();
        for c in consumers {
            c.queue.dispatch();
        }
    }

    /// Tear down: cancel consumers, requeue unacked messages.
    pub fn close(&mut self, ctx: &ConnCtx) {
        // Settlements of an uncommitted transaction never happened.
        if let Some(ops) = self.tx.take() {
            self.tx_rollback(ops);
        }
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

#[derive(Clone, Copy)]
enum Settle {
    Ack,
    Requeue,
    Reject,
}

/// The expiration property, with RabbitMQ's reasons for refusing it.
fn parse_expiration(e: &str) -> Result<u64, String> {
    let (neg, digits) = match e.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, e.strip_prefix('+').unwrap_or(e)),
    };
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    if end == 0 {
        return Err("no_integer".into());
    }
    if end < digits.len() {
        return Err(format!("{{leftover_string,\"{}\"}}", &digits[end..]));
    }
    let too_large = || format!("{{value_too_large,{digits}}}");
    let Ok(v) = digits.parse::<u64>() else {
        // Only digits, so it overflowed.
        return Err(if neg {
            format!("{{value_negative,-{digits}}}")
        } else {
            too_large()
        });
    };
    if neg && v > 0 {
        return Err(format!("{{value_negative,-{v}}}"));
    }
    if v > crate::broker::args::MAX_TTL_MS {
        return Err(too_large());
    }
    Ok(v)
}
