//! The queue's timer task: message expiry at each message's own deadline
//! and queue expiry (x-expires). Deadlines come from [`crate::clock`], and
//! the task sleeps on tokio's clock, so both follow paused time in tests.

use super::*;

pub(super) async fn timer_loop(weak: Weak<Queue>) {
    loop {
        let Some(q) = weak.upgrade() else { return };
        if q.is_deleted() {
            return;
        }
        let timer = q.timer.clone();
        let notified = timer.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let deadline = q.arm_deadline();
        match deadline {
            Some(d) => {
                let now = now_ms();
                if d > now {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(d - now)) => {}
                        _ = &mut notified => continue,
                    }
                }
            }
            None => {
                // Hold no strong reference while idle: a dropped queue ends the task.
                drop(q);
                notified.await;
                continue;
            }
        }
        q.on_timer();
    }
}

impl Queue {
    /// Make sure the timer task runs and looks at the deadlines again.
    pub(super) fn kick_timer(self: &Arc<Self>) {
        if !self.timer_started.swap(true, Ordering::AcqRel) {
            match tokio::runtime::Handle::try_current() {
                Ok(h) => {
                    h.spawn(timer_loop(Arc::downgrade(self)));
                }
                Err(_) => {
                    self.timer_started.store(false, Ordering::Release);
                    return;
                }
            }
        }
        self.timer.notify_one();
    }

    /// Start the timer if this queue has any timed behaviour (x-expires,
    /// or restored messages that expire).
    pub fn start_timers(self: &Arc<Self>) {
        if self.cfg().expires.is_some() || self.expiring.load(Ordering::Relaxed) {
            self.kick_timer();
        }
    }

    /// The timer's next deadline, recorded in `timer_deadline` under the
    /// queue lock: whoever adds an earlier deadline holds that lock too, so
    /// it either is seen here or sees the recorded value and wakes the timer.
    pub(super) fn arm_deadline(&self) -> Option<u64> {
        let q = self.inner.lock();
        let msg = q.expiry.peek().map(|Reverse((d, _))| *d);
        let queue = match self.cfg().expires {
            Some(e) if q.consumers.is_empty() => Some(q.last_used_ms.saturating_add(e)),
            _ => None,
        };
        let next = match (msg, queue) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.timer_deadline
            .store(next.unwrap_or(u64::MAX), Ordering::Release);
        next
    }

    pub(super) fn on_timer(self: &Arc<Self>) {
        let now = now_ms();
        let (dead, expire_queue) = {
            let mut q = self.inner.lock();
            self.expire_due(&mut q, now);
            let expire_queue = self
                .cfg()
                .expires
                .is_some_and(|e| q.consumers.is_empty() && q.last_used_ms.saturating_add(e) <= now);
            (std::mem::take(&mut q.dead), expire_queue)
        };
        dead_letter::process(self, dead);
        if expire_queue && !self.is_deleted() {
            if let Some(vh) = self.vhost() {
                if let Some(b) = vh.broker() {
                    tracing::debug!(queue = %self.name, "queue expired (x-expires)");
                    let _ = b.delete_queue(&vh, self, false, false);
                }
            }
        }
    }
}
