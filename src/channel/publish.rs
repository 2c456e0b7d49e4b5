//! A client's publish: the named guards (exchange exists, not internal,
//! write access, user-id, expiration), then the broker's one publish
//! pipeline ([`crate::broker::publish`]), or, for a direct reply, the
//! requester's consumer (`reply_to.rs`); mandatory returns are written here.

use super::*;

/// What [`Channel::check_publish`] found.
pub(super) struct Checked {
    ex: Arc<Exchange>,
    headers: Option<FieldTable>,
    expiration: Option<u64>,
    persistent: bool,
    priority: u8,
}

/// The expiration property, with RabbitMQ's reasons for refusing it.
pub(super) fn parse_expiration(e: &str) -> Result<u64, String> {
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

impl Channel {
    pub(super) fn lookup_exchange(
        &mut self,
        ctx: &ConnCtx,
        name: &str,
    ) -> AmqpResult<Arc<Exchange>> {
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
    ///
    /// A request's reply-to of `amq.rabbitmq.reply-to` is rewritten here to
    /// name this channel (RabbitMQ does it at the same point: after the
    /// exchange checks, before the user-id check).
    pub(super) fn check_publish(
        &mut self,
        ctx: &ConnCtx,
        msg: &mut Message,
    ) -> AmqpResult<Checked> {
        let ex = self.lookup_exchange(ctx, &msg.exchange)?;
        let peek = props::peek(&msg.header)
            .ok_or_else(|| AmqpError::frame_error("malformed content header"))?;
        if peek.reply_to.is_some_and(reply_to::is_pseudo_queue) {
            self.name_reply_to(msg)?;
            // The new reply-to is not the pseudo-queue: this recurses once.
            return self.check_publish(ctx, msg);
        }
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
    ///
    /// A direct reply (default exchange, a reply-to key) is decided here
    /// and never enters the pipeline.
    pub(super) fn publish(&mut self, ctx: &ConnCtx, msg: &mut Message) -> AmqpResult<Confirm> {
        let c = self.check_publish(ctx, msg)?;
        if let Some(token) = reply_to::reply_token(&c.ex.name, &msg.routing_key) {
            return Ok(self.publish_reply(ctx, msg, token));
        }
        let msg = &*msg;
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
        let outcome = pipeline::publish(
            &ctx.vhost,
            &ctx.broker.store,
            &p,
            Origin::Client,
            &mut self.scratch,
        );
        match &outcome {
            Outcome::Unroutable if msg.mandatory => self.return_unroutable(ctx, msg),
            Outcome::NotStored(e) => tracing::error!(error = %e, "publish not stored"),
            _ => {}
        }
        Ok(outcome.confirm())
    }

    /// basic.return 312 NO_ROUTE with the message, for a mandatory publish
    /// nothing took.
    pub(super) fn return_unroutable(&self, ctx: &ConnCtx, msg: &Message) {
        let id = self.id();
        let fm = ctx.conn.frame_max();
        ctx.conn.send(|out| {
            fast::put_return(out, id, 312, "NO_ROUTE", &msg.exchange, &msg.routing_key);
            fast::put_content(out, id, &msg.header, &msg.body, fm);
        });
    }
}
