//! A virtual host: its exchanges, queues and bindings, and routing.
//!
//! Owns the name -> object maps. Persistence of durable objects is the
//! broker's job ([`crate::broker`]), which calls in here after validating.

use crate::broker::exchange::{Dest, Exchange, ExchangeKind};
use crate::broker::queue::Queue;
use crate::error::{AmqpError, AmqpResult};
use amq_protocol::types::FieldTable;
use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock, Weak};

pub struct VHost {
    pub name: String,
    pub exchanges: RwLock<HashMap<String, Arc<Exchange>>>,
    pub queues: RwLock<HashMap<String, Arc<Queue>>>,
    me: Weak<VHost>,
    broker: OnceLock<Weak<crate::broker::Broker>>,
}

/// The exchanges every vhost has, as in RabbitMQ.
pub const DEFAULT_EXCHANGES: &[(&str, ExchangeKind)] = &[
    ("amq.direct", ExchangeKind::Direct),
    ("amq.fanout", ExchangeKind::Fanout),
    ("amq.topic", ExchangeKind::Topic),
    ("amq.headers", ExchangeKind::Headers),
    ("amq.match", ExchangeKind::Headers),
];

impl VHost {
    pub fn new(name: &str) -> Arc<Self> {
        let v = Arc::new_cyclic(|me| VHost {
            name: name.to_owned(),
            exchanges: RwLock::new(HashMap::new()),
            queues: RwLock::new(HashMap::new()),
            me: me.clone(),
            broker: OnceLock::new(),
        });
        {
            let mut ex = v.exchanges.write();
            ex.insert(
                String::new(),
                Arc::new(Exchange::new(
                    "",
                    ExchangeKind::Direct,
                    true,
                    false,
                    false,
                    FieldTable::default(),
                )),
            );
            for (n, k) in DEFAULT_EXCHANGES {
                ex.insert(
                    (*n).to_owned(),
                    Arc::new(Exchange::new(
                        n,
                        *k,
                        true,
                        false,
                        false,
                        FieldTable::default(),
                    )),
                );
            }
        }
        v
    }

    /// This vhost as an `Arc` (it always lives in one).
    pub fn arc(&self) -> Arc<VHost> {
        self.me.upgrade().expect("vhost is alive while borrowed")
    }

    pub fn set_broker(&self, b: Weak<crate::broker::Broker>) {
        let _ = self.broker.set(b);
    }

    pub fn broker(&self) -> Option<Arc<crate::broker::Broker>> {
        self.broker.get().and_then(|w| w.upgrade())
    }

    pub fn exchange(&self, name: &str) -> Option<Arc<Exchange>> {
        self.exchanges.read().get(name).cloned()
    }

    pub fn queue(&self, name: &str) -> Option<Arc<Queue>> {
        self.queues.read().get(name).cloned()
    }

    pub fn get_exchange(&self, name: &str) -> AmqpResult<Arc<Exchange>> {
        self.exchange(name)
            .ok_or_else(|| AmqpError::not_found("exchange", name, &self.name))
    }

    pub fn get_queue(&self, name: &str) -> AmqpResult<Arc<Queue>> {
        self.queue(name)
            .ok_or_else(|| AmqpError::not_found("queue", name, &self.name))
    }

    /// Route a message published to `exchange` into `out` (deduplicated).
    /// Follows exchange-to-exchange bindings and alternate exchanges, each
    /// exchange at most once.
    pub fn route(
        &self,
        exchange: &Arc<Exchange>,
        routing_keys: &[&str],
        headers: Option<&FieldTable>,
        raw_header: &[u8],
        out: &mut Vec<Arc<Queue>>,
    ) {
        // The default exchange routes by queue name, implicitly bound to all.
        if exchange.name.is_empty() {
            let qs = self.queues.read();
            for rk in routing_keys {
                if let Some(q) = qs.get(*rk) {
                    if !out.iter().any(|x| Arc::ptr_eq(x, q)) {
                        out.push(q.clone());
                    }
                }
            }
            return;
        }
        let mut visited: Vec<*const Exchange> = Vec::new();
        let mut pending: Vec<Arc<Exchange>> = vec![exchange.clone()];
        let mut dests: Vec<Dest> = Vec::new();
        while let Some(ex) = pending.pop() {
            if visited.contains(&Arc::as_ptr(&ex)) {
                continue;
            }
            visited.push(Arc::as_ptr(&ex));
            dests.clear();
            for rk in routing_keys {
                ex.matches(rk, headers, raw_header, &mut dests);
            }
            if dests.is_empty() {
                if let Some(alt) = ex.alternate().and_then(|a| self.exchange(&a)) {
                    pending.push(alt);
                }
                continue;
            }
            for d in dests.drain(..) {
                match d {
                    Dest::Queue(q) => {
                        if !q.is_deleted() && !out.iter().any(|x| Arc::ptr_eq(x, &q)) {
                            out.push(q);
                        }
                    }
                    Dest::Exchange(e) => pending.push(e),
                }
            }
        }
    }

    /// Remove `dest` from every exchange's bindings; returns the removed
    /// bindings as (source exchange, binding).
    pub fn unbind_everywhere(
        &self,
        dest: &Dest,
    ) -> Vec<(Arc<Exchange>, crate::broker::exchange::Binding)> {
        let mut gone = vec![];
        for ex in self.exchanges.read().values() {
            for b in ex.unbind_all_to(dest) {
                gone.push((ex.clone(), b));
            }
        }
        gone
    }

    /// Auto-delete exchanges that lost their last binding.
    pub fn auto_delete_exchanges(&self, candidates: &[Arc<Exchange>]) -> Vec<Arc<Exchange>> {
        let mut deleted = vec![];
        for ex in candidates {
            if ex.auto_delete && !ex.has_bindings() && !ex.is_deleted() {
                ex.deleted.store(true, Ordering::Release);
                self.exchanges.write().remove(&ex.name);
                deleted.push(ex.clone());
            }
        }
        deleted
    }
}
