//! Content assembly: basic.publish, then its content header, then body
//! frames up to the announced size, as an explicit state machine (any other
//! frame in between is 505 UNEXPECTED_FRAME). A single body frame stays a
//! zero-copy slice of the read buffer.

use super::*;

/// A publish waiting for its content.
pub(super) struct Pending {
    exchange: String,
    routing_key: String,
    mandatory: bool,
    header: Option<Bytes>,
    body_size: u64,
    body: Body,
}

pub(super) enum Body {
    Empty,
    One(Bytes),
    Many(BytesMut),
}

impl Body {
    pub(super) fn len(&self) -> usize {
        match self {
            Body::Empty => 0,
            Body::One(b) => b.len(),
            Body::Many(b) => b.len(),
        }
    }
    pub(super) fn push(&mut self, chunk: Bytes) {
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

impl Channel {
    /// Whether the channel waits for message content (a method now is an error).
    pub fn expects_content(&self) -> bool {
        self.pending.is_some()
    }

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

    pub(super) fn complete(&mut self, ctx: &ConnCtx) -> AmqpResult<()> {
        let p = self.pending.take().expect("pending publish");
        let body = match p.body {
            Body::Empty => Bytes::new(),
            Body::One(b) => b,
            Body::Many(m) => m.freeze(),
        };
        let mut msg = Message {
            exchange: p.exchange,
            routing_key: p.routing_key,
            mandatory: p.mandatory,
            header: p.header.expect("header"),
            body,
        };
        if self.tx.is_some() {
            // Validate now (404, 403, 406) so errors come at publish time, as
            // in RabbitMQ, and tx.commit cannot fail half-way.
            self.check_publish(ctx, &mut msg)?;
            self.tx.as_mut().unwrap().push(TxOp::Publish(msg));
            return Ok(());
        }
        let outcome = self.publish(ctx, &mut msg)?;
        if self.confirm {
            self.publish_seq += 1;
            self.confirms.push_back((self.publish_seq, outcome));
        }
        Ok(())
    }
}
