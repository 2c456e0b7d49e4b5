//! Publisher confirms: confirm.select, and the list of publishes whose
//! confirm waits for a store sync (or was decided at once). Confirms go out
//! in order, batched with multiple=true, once the store's sync covers them.

use super::*;

impl Channel {
    /// Send the confirms (and a deferred tx.commit-ok) that are decided.
    /// Returns whether something still waits for a sync.
    pub fn flush_confirms(&mut self, ctx: &ConnCtx, synced: SyncSeq) -> bool {
        if let Some(s) = self.commit_wait {
            if s <= synced {
                self.commit_wait = None;
                self.reply(
                    ctx,
                    AMQPClass::Tx(txm::AMQPMethod::CommitOk(txm::CommitOk {})),
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
        let mut count: u64 = 0;
        while let Some((seq, st)) = self.confirms.front() {
            let ack = match st {
                Confirm::Ack => true,
                Confirm::Nack => false,
                Confirm::AckAfter(s) if *s <= synced => !store.sync_failed(*s),
                Confirm::AckAfter(_) => break,
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
        ctx.broker
            .confirms
            .fetch_add(count, std::sync::atomic::Ordering::Relaxed);
        !self.confirms.is_empty() || self.commit_wait.is_some()
    }

    pub fn waits_for_sync(&self) -> bool {
        self.commit_wait.is_some()
            || self
                .confirms
                .iter()
                .any(|(_, s)| matches!(s, Confirm::AckAfter(_)))
    }

    pub fn has_confirms(&self) -> bool {
        !self.confirms.is_empty()
    }
}

impl Channel {
    pub(super) fn confirm_method(
        &mut self,
        ctx: &ConnCtx,
        m: confirm::AMQPMethod,
    ) -> AmqpResult<()> {
        match m {
            confirm::AMQPMethod::Select(s) => {
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
            other => return Err(invalid_method(&AMQPClass::Confirm(other))),
        }
        Ok(())
    }
}
