//! Message rates: the queues' counters sampled once a second; a rate is the
//! difference between two samples over the time between them.
//!
//! Counters of deleted queues are kept in `gone`, so the broker-wide totals
//! (overview, /metrics) never go backwards.

use crate::broker::queue::Queue;
use crate::broker::Broker;
use crate::metrics::Counters;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Cumulative counters and depths of one queue (or all of them) at one moment.
#[derive(Clone, Copy, Default, Debug, PartialEq)]
pub struct Sample {
    pub published: u64,
    pub delivered: u64,
    pub acked: u64,
    pub redelivered: u64,
    pub ready: u64,
    pub unacked: u64,
}

impl Sample {
    pub fn of(q: &Queue) -> Sample {
        let c = &q.counters;
        Sample {
            published: Counters::get(&c.published),
            delivered: Counters::get(&c.delivered),
            acked: Counters::get(&c.acked),
            redelivered: Counters::get(&c.redelivered),
            ready: q.message_count() as u64,
            unacked: q.unacked_count(),
        }
    }

    fn add_counters(&mut self, o: &Sample) {
        self.published += o.published;
        self.delivered += o.delivered;
        self.acked += o.acked;
        self.redelivered += o.redelivered;
    }

    pub fn add(&mut self, o: &Sample) {
        self.add_counters(o);
        self.ready += o.ready;
        self.unacked += o.unacked;
    }
}

/// Per-second rates between the last two samples.
#[derive(Clone, Copy, Default, Debug, PartialEq)]
pub struct Rates {
    pub publish: f64,
    pub deliver: f64,
    pub ack: f64,
    pub redeliver: f64,
    pub messages: f64,
    pub ready: f64,
    pub unacked: f64,
    /// Publisher confirms sent (broker-wide only; 0 for a queue).
    pub confirm: f64,
}

impl Rates {
    fn between(old: &Sample, new: &Sample, secs: f64) -> Rates {
        let d = |a: u64, b: u64| {
            if secs > 0.0 {
                (b as f64 - a as f64) / secs
            } else {
                0.0
            }
        };
        Rates {
            publish: d(old.published, new.published).max(0.0),
            deliver: d(old.delivered, new.delivered).max(0.0),
            ack: d(old.acked, new.acked).max(0.0),
            redeliver: d(old.redelivered, new.redelivered).max(0.0),
            messages: d(old.ready + old.unacked, new.ready + new.unacked),
            ready: d(old.ready, new.ready),
            unacked: d(old.unacked, new.unacked),
            confirm: 0.0,
        }
    }
}

#[derive(Default)]
struct Inner {
    /// By queue id (unique for the broker's lifetime): last sample and rates.
    queues: HashMap<u32, (Sample, Rates)>,
    /// Counters of queues deleted since start.
    gone: Sample,
    total: Sample,
    total_rates: Rates,
    /// Highest totals reported by /metrics, so its counters are monotonic.
    reported: Sample,
    /// The broker's confirm counter at the last sample.
    confirms: u64,
    last: Option<Instant>,
}

#[derive(Default)]
pub struct Stats {
    inner: Mutex<Inner>,
}

impl Stats {
    /// Take a sample of every queue now.
    pub fn sample(&self, broker: &Broker) {
        let now = Instant::now();
        let mut live: HashMap<u32, Sample> = HashMap::new();
        let vhosts: Vec<_> = broker.vhosts.read().values().cloned().collect();
        for v in vhosts {
            for q in v.queues.read().values() {
                live.insert(q.id, Sample::of(q));
            }
        }
        let mut s = self.inner.lock();
        let secs = s
            .last
            .map(|l| now.duration_since(l).as_secs_f64())
            .unwrap_or(0.0);
        let mut gone = s.gone;
        s.queues.retain(|id, (old, _)| {
            let keep = live.contains_key(id);
            if !keep {
                gone.add_counters(old);
            }
            keep
        });
        s.gone = gone;
        let mut total = s.gone;
        for (id, new) in live {
            total.add(&new);
            let rates = match s.queues.get(&id) {
                Some((old, _)) => Rates::between(old, &new, secs),
                None => Rates::default(),
            };
            s.queues.insert(id, (new, rates));
        }
        let old_total = s.total;
        s.total_rates = if s.last.is_some() {
            Rates::between(&old_total, &total, secs)
        } else {
            Rates::default()
        };
        let confirms = broker.confirms.load(std::sync::atomic::Ordering::Relaxed);
        if s.last.is_some() && secs > 0.0 {
            s.total_rates.confirm = confirms.saturating_sub(s.confirms) as f64 / secs;
        }
        s.confirms = confirms;
        s.total = total;
        s.last = Some(now);
    }

    pub fn queue_rates(&self, id: u32) -> Rates {
        self.inner
            .lock()
            .queues
            .get(&id)
            .map(|(_, r)| *r)
            .unwrap_or_default()
    }

    pub fn total_rates(&self) -> Rates {
        self.inner.lock().total_rates
    }

    /// Broker-wide counters now: the live queues' plus the deleted ones'.
    /// Never lower than a previous call's.
    pub fn totals(&self, live: &[Arc<Queue>]) -> Sample {
        let mut t = Sample::default();
        for q in live {
            t.add(&Sample::of(q));
        }
        let mut s = self.inner.lock();
        t.add_counters(&s.gone);
        let r = &mut s.reported;
        t.published = t.published.max(r.published);
        t.delivered = t.delivered.max(r.delivered);
        t.acked = t.acked.max(r.acked);
        t.redelivered = t.redelivered.max(r.redelivered);
        *r = t;
        t
    }
}

pub async fn sample_loop(broker: Arc<Broker>, stats: Arc<Stats>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => stats.sample(&broker),
            _ = stop.changed() => return,
        }
    }
}
