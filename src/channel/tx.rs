//! Transactions: publishes and settlements held until tx.commit (validated
//! when they arrive, so a commit cannot fail half-way), dropped by
//! tx.rollback; commit-ok waits for the sync of the persistent publishes.

use super::*;

/// What a transaction holds until commit. Acks take their messages out of
/// the unacked list at once (so a bad tag fails at once, as in RabbitMQ);
/// rollback puts them back.
pub(super) enum TxOp {
    Publish(Message),
    Settle(Vec<Unacked>, Settle),
}

impl Channel {
    pub(super) fn tx_settle(&mut self, tag: u64, multiple: bool, how: Settle) -> AmqpResult<()> {
        let entries = self.take_unacked(tag, multiple)?;
        if let Some(ops) = self.tx.as_mut() {
            ops.push(TxOp::Settle(entries, how));
        }
        Ok(())
    }

    /// tx.rollback: settlements never happened; their messages are unacked again.
    pub(super) fn tx_rollback(&mut self, ops: Vec<TxOp>) {
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
}

impl Channel {
    pub(super) fn tx_method(&mut self, ctx: &ConnCtx, m: txm::AMQPMethod) -> AmqpResult<()> {
        match m {
            txm::AMQPMethod::Select(_) => {
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
                    AMQPClass::Tx(txm::AMQPMethod::SelectOk(txm::SelectOk {})),
                );
            }
            txm::AMQPMethod::Commit(_) => {
                let Some(ops) = self.tx.replace(vec![]) else {
                    return Err(AmqpError::precondition("channel is not transactional"));
                };
                let mut wait = None;
                let mut ops = ops.into_iter();
                while let Some(op) = ops.next() {
                    match op {
                        TxOp::Publish(mut msg) => match self.publish(ctx, &mut msg) {
                            Ok(Confirm::AckAfter(s)) => wait = Some(s),
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
                        AMQPClass::Tx(txm::AMQPMethod::CommitOk(txm::CommitOk {})),
                    ),
                }
            }
            txm::AMQPMethod::Rollback(_) => {
                let Some(ops) = self.tx.replace(vec![]) else {
                    return Err(AmqpError::precondition("channel is not transactional"));
                };
                self.tx_rollback(ops);
                self.reply(
                    ctx,
                    AMQPClass::Tx(txm::AMQPMethod::RollbackOk(txm::RollbackOk {})),
                );
            }
            other => return Err(invalid_method(&AMQPClass::Tx(other))),
        }
        Ok(())
    }
}
