//! The basic class, apart from publishing: qos, consume and cancel, get,
//! ack, nack, reject and recover, and how settled messages go back to
//! their queues (ack, requeue at their old place, or dead-letter).

use super::*;

/// A server-generated consumer tag.
pub(super) fn new_consumer_tag() -> String {
    let r: [u8; 16] = rand::random();
    format!(
        "amq.ctag-{}",
        base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, r)
    )
}

#[derive(Clone, Copy)]
pub(super) enum Settle {
    Ack,
    Requeue,
    Reject,
}

impl Channel {
    pub(super) fn take_unacked(&self, tag: u64, multiple: bool) -> AmqpResult<Vec<Unacked>> {
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

    pub(super) fn settle(&self, entries: Vec<Unacked>, how: Settle) {
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

    pub(super) fn do_ack(&self, tag: u64, multiple: bool) -> AmqpResult<()> {
        let entries = self.take_unacked(tag, multiple)?;
        self.settle(entries, Settle::Ack);
        Ok(())
    }

    pub(super) fn do_nack(&self, tag: u64, multiple: bool, requeue: bool) -> AmqpResult<()> {
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

    pub(super) fn recover(&self, requeue: bool) -> AmqpResult<()> {
        if !requeue {
            return Err(AmqpError::new(ReplyCode::NotImplemented, "requeue=false"));
        }
        let all: Vec<Unacked> = self.shared.state.lock().unacked.drain(..).collect();
        self.settle(all, Settle::Requeue);
        Ok(())
    }

    pub(super) fn consume(&mut self, ctx: &ConnCtx, c: bm::Consume) -> AmqpResult<()> {
        if reply_to::is_pseudo_queue(c.queue.as_str()) {
            return self.consume_reply_to(ctx, c);
        }
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
            new_consumer_tag()
        } else {
            c.consumer_tag.as_str().to_owned()
        };
        {
            let st = self.shared.state.lock();
            // The reply consumer's tag does not count (RabbitMQ 3.10 lets a
            // queue consumer take it too; basic.cancel then ends the reply
            // consumer first).
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
                AMQPClass::Basic(bm::AMQPMethod::ConsumeOk(bm::ConsumeOk {
                    consumer_tag: tag.into(),
                })),
            );
        }
        q.add_consumer(consumer);
        Ok(())
    }

    pub(super) fn cancel_consumer(&mut self, ctx: &ConnCtx, tag: &str) {
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

    pub(super) fn dispatch_all(&self) {
        let consumers = self.shared.state.lock().consumers.clone();
        for c in consumers {
            c.queue.dispatch();
        }
    }
}

impl Channel {
    pub(super) fn basic_method(&mut self, ctx: &ConnCtx, m: bm::AMQPMethod) -> AmqpResult<()> {
        let b = &ctx.broker;
        let vh = &ctx.vhost;
        match m {
            bm::AMQPMethod::Qos(q) => {
                if q.global {
                    self.shared.state.lock().global_prefetch = q.prefetch_count as u32;
                    self.dispatch_all();
                } else {
                    self.consumer_prefetch = q.prefetch_count as u32;
                }
                self.reply(ctx, AMQPClass::Basic(bm::AMQPMethod::QosOk(bm::QosOk {})));
            }
            bm::AMQPMethod::Consume(c) => self.consume(ctx, c)?,
            bm::AMQPMethod::Cancel(c) => {
                let tag = c.consumer_tag.as_str().to_owned();
                if !self.cancel_reply_to(ctx, &tag) {
                    self.cancel_consumer(ctx, &tag);
                }
                if !c.nowait {
                    self.reply(
                        ctx,
                        AMQPClass::Basic(bm::AMQPMethod::CancelOk(bm::CancelOk {
                            consumer_tag: tag.into(),
                        })),
                    );
                }
            }
            bm::AMQPMethod::Get(g) => {
                let q = self.queue_for(ctx, g.queue.as_str())?;
                b.check_access(&ctx.user, &vh.name, Access::Read, "queue", &q.name)?;
                if !q.get(&self.shared, g.no_ack) {
                    self.reply(
                        ctx,
                        AMQPClass::Basic(bm::AMQPMethod::GetEmpty(bm::GetEmpty {})),
                    );
                }
            }
            bm::AMQPMethod::Ack(a) => self.on_ack(a.delivery_tag, a.multiple)?,
            bm::AMQPMethod::Nack(n) => {
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
            bm::AMQPMethod::Reject(r) => {
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
            bm::AMQPMethod::Recover(r) => {
                if !r.requeue {
                    return Err(AmqpError::new(ReplyCode::NotImplemented, "requeue=false"));
                }
                // recover-ok precedes the redeliveries, as in RabbitMQ.
                self.reply(
                    ctx,
                    AMQPClass::Basic(bm::AMQPMethod::RecoverOk(bm::RecoverOk {})),
                );
                self.recover(r.requeue)?;
            }
            bm::AMQPMethod::RecoverAsync(r) => self.recover(r.requeue)?,
            other => return Err(invalid_method(&AMQPClass::Basic(other))),
        }
        Ok(())
    }
}
