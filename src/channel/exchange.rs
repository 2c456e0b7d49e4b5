//! The exchange class: declare, delete, bind and unbind, after the access
//! checks; the broker's topology does the rest.

use super::*;

impl Channel {
    pub(super) fn exchange_method(&mut self, ctx: &ConnCtx, m: exm::AMQPMethod) -> AmqpResult<()> {
        let b = &ctx.broker;
        let vh = &ctx.vhost;
        match m {
            exm::AMQPMethod::Declare(d) => {
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
            exm::AMQPMethod::Delete(d) => {
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
            exm::AMQPMethod::Bind(d) => {
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
            exm::AMQPMethod::Unbind(d) => {
                // As queue.unbind: access and the default exchange by name,
                // then a missing source or destination answers unbind-ok.
                let (dest, src) = (d.destination.as_str(), d.source.as_str());
                b.check_access(&ctx.user, &vh.name, Access::Write, "exchange", dest)?;
                if dest.is_empty() || src.is_empty() {
                    return Err(AmqpError::default_exchange());
                }
                b.check_access(&ctx.user, &vh.name, Access::Read, "exchange", src)?;
                if let (Some(dest), Some(src)) = (vh.exchange(dest), vh.exchange(src)) {
                    b.unbind(
                        vh,
                        &src,
                        Dest::Exchange(dest),
                        d.routing_key.as_str(),
                        d.arguments,
                    )?;
                }
                if !d.nowait {
                    self.reply(
                        ctx,
                        AMQPClass::Exchange(exm::AMQPMethod::UnbindOk(exm::UnbindOk {})),
                    );
                }
            }
            other => return Err(invalid_method(&AMQPClass::Exchange(other))),
        }
        Ok(())
    }
}
