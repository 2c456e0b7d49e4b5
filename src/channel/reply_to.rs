//! Direct reply-to on a channel, with RabbitMQ 3.10's rules and texts:
//! consuming the pseudo-queue `amq.rabbitmq.reply-to` (no-ack, one per
//! channel), naming the channel in a request's reply-to property, and a
//! reply published to the default exchange with such a key, which is
//! decided here, before the broker's publish pipeline: it goes straight to
//! the requester's consumer ([`crate::broker::delivery::deliver_reply`]),
//! never stored or queued. The broker's [`crate::broker::reply_to`] maps
//! tokens to channels.

use super::*;
use crate::broker::delivery::ReplyConsumer;
use crate::broker::reply_to::{self, PREFIX, PSEUDO_QUEUE};

impl Channel {
    /// basic.consume of [`PSEUDO_QUEUE`].
    pub(super) fn consume_reply_to(&mut self, ctx: &ConnCtx, c: bm::Consume) -> AmqpResult<()> {
        let tag = if c.consumer_tag.as_str().is_empty() {
            super::basic::new_consumer_tag()
        } else {
            c.consumer_tag.as_str().to_owned()
        };
        {
            let mut st = self.shared.state.lock();
            if st.consumers.iter().any(|x| x.tag == tag)
                || st.reply.as_ref().is_some_and(|r| r.tag == tag)
            {
                return Err(AmqpError::not_allowed(format!(
                    "attempt to reuse consumer tag '{tag}'"
                )));
            }
            // RabbitMQ checks no-ack first.
            if !c.no_ack {
                return Err(AmqpError::precondition("reply consumer cannot acknowledge"));
            }
            if st.reply.is_some() {
                return Err(AmqpError::precondition("reply consumer already set"));
            }
            let token = ctx.broker.reply_to.register(&self.shared);
            st.reply = Some(ReplyConsumer {
                tag: tag.clone(),
                token,
            });
        }
        if !c.nowait {
            self.reply(
                ctx,
                AMQPClass::Basic(bm::AMQPMethod::ConsumeOk(bm::ConsumeOk {
                    consumer_tag: tag.into(),
                })),
            );
        }
        Ok(())
    }

    /// basic.cancel: whether `tag` was the reply consumer (now cancelled).
    pub(super) fn cancel_reply_to(&mut self, ctx: &ConnCtx, tag: &str) -> bool {
        let taken = self.shared.state.lock().reply.take_if(|r| r.tag == tag);
        match taken {
            Some(r) => {
                ctx.broker.reply_to.unregister(&r.token);
                true
            }
            None => false,
        }
    }

    /// Channel close: the channel's token names nothing any more.
    pub(super) fn close_reply_to(&mut self, ctx: &ConnCtx) {
        if let Some(r) = self.shared.state.lock().reply.take() {
            ctx.broker.reply_to.unregister(&r.token);
        }
    }

    /// A publish whose reply-to is the pseudo-queue names this channel's
    /// consumer instead; without one it is refused (406), as in RabbitMQ.
    pub(super) fn name_reply_to(&self, msg: &mut Message) -> AmqpResult<()> {
        let token = match &self.shared.state.lock().reply {
            Some(r) => r.token.clone(),
            None => {
                return Err(
                    AmqpError::precondition("fast reply consumer does not exist")
                        .with_method(60, 40),
                )
            }
        };
        let header =
            props::with_reply_to(&msg.header, &format!("{PREFIX}{token}")).ok_or_else(|| {
                AmqpError::frame_error("malformed content header").with_method(60, 40)
            })?;
        msg.header = header.into();
        Ok(())
    }

    /// A reply: a publish to the default exchange whose routing key names
    /// a requester's channel. Delivered straight to its consumer; when
    /// that is gone, dropped, or returned (312 NO_ROUTE) if mandatory.
    /// Confirmed either way.
    pub(super) fn publish_reply(&self, ctx: &ConnCtx, msg: &Message, token: &str) -> Confirm {
        let delivered = ctx.broker.reply_to.find(token).is_some_and(|ch| {
            crate::broker::delivery::deliver_reply(
                &ch,
                token,
                &msg.exchange,
                &msg.routing_key,
                &msg.header,
                &msg.body,
            )
        });
        if !delivered && msg.mandatory {
            self.return_unroutable(ctx, msg);
        }
        Confirm::Ack
    }

    /// queue.declare of a name in the reply-to namespace: the pseudo-queue
    /// and live reply keys exist (0 messages, 1 consumer, as RabbitMQ
    /// says), other reply keys are 404. `None`: not such a name.
    pub(super) fn declare_reply_to(
        &mut self,
        ctx: &ConnCtx,
        name: &str,
        nowait: bool,
    ) -> Option<AmqpResult<()>> {
        match ctx.broker.reply_to.declares(name)? {
            false => Some(Err(AmqpError::not_found("queue", name, &ctx.vhost.name))),
            true => {
                self.last_queue = Some(name.to_owned());
                if !nowait {
                    self.reply(
                        ctx,
                        AMQPClass::Queue(qm::AMQPMethod::DeclareOk(qm::DeclareOk {
                            queue: name.into(),
                            message_count: 0,
                            consumer_count: 1,
                        })),
                    );
                }
                Some(Ok(()))
            }
        }
    }
}

/// Whether a consume names the pseudo-queue.
pub(super) fn is_pseudo_queue(name: &str) -> bool {
    name == PSEUDO_QUEUE
}

/// The token of a reply published to `exchange` with `routing_key`, if it is one.
pub(super) fn reply_token<'a>(exchange: &str, routing_key: &'a str) -> Option<&'a str> {
    if exchange.is_empty() {
        reply_to::token_of(routing_key)
    } else {
        None
    }
}
