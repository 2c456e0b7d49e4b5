//! The queue class: declare, bind, unbind, purge and delete, after the
//! access and exclusivity checks; the broker's topology does the rest.

use super::*;

impl Channel {
    /// RabbitMQ: an empty queue name means the last queue declared on the channel.
    pub(super) fn queue_name<'a>(&'a self, name: &'a str) -> AmqpResult<&'a str> {
        if !name.is_empty() {
            return Ok(name);
        }
        self.last_queue
            .as_deref()
            .ok_or_else(|| AmqpError::new(ReplyCode::NotFound, "no previously declared queue"))
    }

    pub(super) fn queue_for(&self, ctx: &ConnCtx, name: &str) -> AmqpResult<Arc<Queue>> {
        let name = self.queue_name(name)?;
        let q = ctx.vhost.get_queue(name)?;
        crate::broker::check_exclusive(&q, ctx.conn_id)?;
        Ok(q)
    }
}

impl Channel {
    pub(super) fn queue_method(&mut self, ctx: &ConnCtx, m: qm::AMQPMethod) -> AmqpResult<()> {
        let b = &ctx.broker;
        let vh = &ctx.vhost;
        match m {
            qm::AMQPMethod::Declare(d) => {
                if let Some(r) = self.declare_reply_to(ctx, d.queue.as_str(), d.nowait) {
                    return r;
                }
                // Configure access on the actual name, a server-named
                // queue's `amq.gen-…` included (RabbitMQ).
                let configure = |name: &str| {
                    b.check_access(&ctx.user, &vh.name, Access::Configure, "queue", name)
                };
                let q = b.declare_queue_checked(
                    vh,
                    d.queue.as_str(),
                    d.passive,
                    d.durable,
                    d.exclusive,
                    d.auto_delete,
                    d.arguments,
                    ctx.conn_id,
                    &configure,
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
            qm::AMQPMethod::Bind(d) => {
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
            qm::AMQPMethod::Unbind(d) => {
                // RabbitMQ 3.10's order: write access to the queue, the
                // default exchange, read access to the exchange, all by name;
                // then a binding whose queue or exchange no longer exists is
                // already gone, and unbind-ok is the answer.
                let name = self.queue_name(d.queue.as_str())?;
                let exchange = d.exchange.as_str();
                b.check_access(&ctx.user, &vh.name, Access::Write, "queue", name)?;
                if exchange.is_empty() {
                    return Err(AmqpError::default_exchange());
                }
                b.check_access(&ctx.user, &vh.name, Access::Read, "exchange", exchange)?;
                if let (Some(q), Some(ex)) = (vh.queue(name), vh.exchange(exchange)) {
                    let (rk, dest) = (d.routing_key.as_str(), Dest::Queue(q.clone()));
                    // Another connection's exclusive queue: locked only
                    // when there is a binding to remove (RabbitMQ).
                    if ex.has_binding(&dest, rk, &d.arguments) {
                        crate::broker::check_exclusive(&q, ctx.conn_id)?;
                    }
                    b.unbind(vh, &ex, dest, rk, d.arguments)?;
                }
                self.reply(
                    ctx,
                    AMQPClass::Queue(qm::AMQPMethod::UnbindOk(qm::UnbindOk {})),
                );
            }
            qm::AMQPMethod::Purge(d) => {
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
            qm::AMQPMethod::Delete(d) => {
                let (n, cancels) = match vh.queue(self.queue_name(d.queue.as_str())?) {
                    Some(q) => {
                        crate::broker::check_exclusive(&q, ctx.conn_id)?;
                        b.check_access(&ctx.user, &vh.name, Access::Configure, "queue", &q.name)?;
                        b.delete_queue_cancel_later(vh, &q, d.if_unused, d.if_empty)?
                    }
                    // RabbitMQ: deleting a queue that does not exist succeeds.
                    None => (0, Default::default()),
                };
                if !d.nowait {
                    self.reply(
                        ctx,
                        AMQPClass::Queue(qm::AMQPMethod::DeleteOk(qm::DeleteOk {
                            message_count: n,
                        })),
                    );
                }
                // As RabbitMQ: delete-ok first, then the basic.cancel of the
                // queue's consumers (this channel's included).
                drop(cancels);
            }
            other => return Err(invalid_method(&AMQPClass::Queue(other))),
        }
        Ok(())
    }
}
