//! The broker core: vhosts, exchanges, queues, users and permissions over
//! one store, and every operation that changes them.
//!
//! Files, in the order a message meets them: [`publish`] (the one publish
//! pipeline) → [`vhost`] (routing) → [`exchange`] (each type's matching) →
//! [`queue`] (ready lists, dispatch, timers) → [`delivery`] (the only core
//! file that writes deliver frames); beside the path: [`dead_letter`],
//! [`dedup`], [`delayed`], [`args`] (argument checks with RabbitMQ's texts),
//! [`reply_to`] (which channel a direct reply-to key names);
//! and for definitions: [`topology`], [`auth`], [`model`], [`boot`],
//! [`policy`] (policies and operator policies, re-evaluated at run time),
//! [`limits`] (vhost and user limits).
//!
//! Validation happens before any side effect; durable changes are appended to
//! the definitions log (fsynced) before the in-memory maps change, so a crash
//! between the two replays the change rather than losing it.
//!
//! Never imports the channel, connection or mgmt layers: they call in here.

pub mod args;
mod auth;
mod boot;
pub use boot::lock_data_dir;
pub mod dead_letter;
pub mod dedup;
pub mod delayed;
pub mod delivery;
pub mod exchange;
pub mod limits;
mod model;
pub mod policy;
pub mod publish;
pub mod queue;
pub mod reply_to;
mod topology;
pub mod vhost;

pub use auth::{hash_password, Access, Permission, User};
use model::{Defs, Model};
pub use topology::{check_binding_args, check_exclusive, exchange_kind, is_delayed};

use crate::broker::exchange::{Dest, Exchange, ExchangeKind};
use crate::broker::queue::Queue;
use crate::broker::vhost::VHost;
use crate::config::Config;
use crate::error::{AmqpError, AmqpResult};
use crate::store::definitions::{DefOp, DefinitionsLog};
use crate::store::io::StoreIo;
use crate::store::Store;
use amq_protocol::types::FieldTable;
use base64::Engine;
use parking_lot::{Mutex, RwLock};
use regex::Regex;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::watch;

/// Connection details the management API shows.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub id: u64,
    pub name: String,
    pub user: String,
    pub vhost: String,
    pub peer: String,
    pub channels: u32,
    pub connected_at: u64,
    /// The client's connection.start-ok properties, as sent.
    pub client_properties: FieldTable,
    /// The `connection_name` client property, if it is a string.
    pub user_provided_name: Option<String>,
    /// Whether the connection is encrypted.
    pub ssl: bool,
    /// Its TLS parameters and client certificate (amqps connections).
    pub tls: Option<crate::tls::TlsInfo>,
    /// The SASL mechanism of the login (PLAIN, AMQPLAIN, EXTERNAL).
    pub auth_mechanism: String,
}

pub struct Broker {
    pub config: Config,
    pub store: Arc<Store>,
    /// The definitions log and the state it describes (kept in step under
    /// one lock, so compaction writes exactly what the log says).
    defs: Mutex<Defs>,
    pub vhosts: RwLock<HashMap<String, Arc<VHost>>>,
    pub users: RwLock<HashMap<String, User>>,
    pub permissions: RwLock<HashMap<(String, String), Permission>>,
    /// Policies and operator policies of every vhost ([`policy`]).
    policies: RwLock<policy::Policies>,
    /// Vhost and user limits ([`limits`]).
    vhost_limits: RwLock<HashMap<String, limits::Limits>>,
    user_limits: RwLock<HashMap<String, limits::Limits>>,
    next_queue_id: AtomicU32,
    next_conn_id: AtomicU64,
    pub connections: Mutex<HashMap<u64, (ConnInfo, Arc<crate::broker::delivery::ConnShared>)>>,
    /// Direct reply-to: the channels consuming `amq.rabbitmq.reply-to`, by token.
    pub reply_to: reply_to::Registry,
    /// true while a resource alarm (memory or disk) blocks publishers.
    pub alarm: watch::Sender<bool>,
    pub alarm_reasons: Mutex<Vec<String>>,
    /// Alarms raised from outside (the cluster: too few in-sync replicas),
    /// by source; added to the resource alarms' reasons.
    external_alarms: Mutex<std::collections::BTreeMap<&'static str, String>>,
    /// The resource alarms' reasons, as last set by [`Broker::set_alarm`].
    pub resource_alarms: Mutex<Vec<String>>,
    /// The cluster's state, when this broker is a cluster's leader.
    pub cluster: std::sync::OnceLock<Arc<dyn crate::metrics::ClusterView>>,
    me: std::sync::OnceLock<std::sync::Weak<Broker>>,
    /// Originals of compaction copies whose sync failed: released after the
    /// next successful one (never before their copies are on disk).
    compaction_pending: Mutex<Vec<(Arc<Queue>, Vec<crate::store::MsgPos>)>>,
    /// The data dir's lock file, held (locked) from open to shutdown.
    dir_lock: Mutex<Option<std::fs::File>>,
    /// Publisher confirms (basic.ack and basic.nack) sent since start, for
    /// the management API's `confirm` rate.
    pub confirms: std::sync::atomic::AtomicU64,
}

impl Broker {
    pub fn vhost(&self, name: &str) -> Option<Arc<VHost>> {
        self.vhosts.read().get(name).cloned()
    }

    pub fn next_connection_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed)
    }

    fn persist(&self, op: DefOp) -> AmqpResult<()> {
        let mut d = self.defs.lock();
        if self.store.is_closed() {
            return Err(AmqpError::internal("the broker is shut down"));
        }
        d.log.append(&op).map_err(|e| {
            tracing::error!(error = %e, "cannot write definitions");
            AmqpError::internal(format!("cannot write definitions: {e}"))
        })?;
        d.model.apply(op);
        if d.log.ops_since_compaction() > 10_000 {
            let ops = d.model.to_ops();
            match DefinitionsLog::rewrite(self.store.files(), &ops) {
                Ok(n) => d.log = n,
                Err(e) => tracing::warn!(error = %e, "definitions compaction failed"),
            }
        }
        Ok(())
    }

    // ----- authentication and access -----

    // ----- exchanges -----

    // ----- queues -----

    // ----- bindings -----

    // ----- users, vhosts, permissions (management) -----

    /// Compact sparse segments: every queue moves its ready messages out of
    /// them, the copies are synced, then the originals are released (which
    /// deletes the segment once nothing else holds it). Returns the number of
    /// messages moved.
    pub fn compact(&self) -> usize {
        let sparse = self.store.sparse_segments();
        let mut pending = std::mem::take(&mut *self.compaction_pending.lock());
        if sparse.is_empty() && pending.is_empty() {
            return 0;
        }
        let queues: Vec<Arc<Queue>> = self
            .vhosts
            .read()
            .values()
            .flat_map(|v| v.queues.read().values().cloned().collect::<Vec<_>>())
            .collect();
        for seg in &sparse {
            for q in &queues {
                let old = q.relocate(*seg);
                if !old.is_empty() {
                    pending.push((q.clone(), old));
                }
            }
        }
        if let Err(e) = self.store.sync_now() {
            // Keep the originals until a sync succeeds: a duplicate after a
            // crash beats a loss.
            tracing::error!(error = %e, "compaction: sync failed; originals kept for now");
            *self.compaction_pending.lock() = pending;
            return 0;
        }
        let mut n = 0;
        for (q, old) in pending {
            n += old.len();
            q.release_relocated(old);
        }
        self.store.flush_acks();
        if n > 0 {
            tracing::info!(
                segments = sparse.len(),
                messages = n,
                "compacted sparse segments"
            );
        }
        n
    }

    /// Set the resource alarms (disk, memory) in effect; the external ones
    /// stay.
    pub fn set_alarm(&self, reasons: Vec<String>) {
        *self.resource_alarms.lock() = reasons;
        self.update_alarm();
    }

    fn update_alarm(&self) {
        let mut reasons = self.resource_alarms.lock().clone();
        reasons.extend(self.external_alarms.lock().values().cloned());
        let on = !reasons.is_empty();
        *self.alarm_reasons.lock() = reasons;
        self.alarm.send_if_modified(|v| {
            let changed = *v != on;
            *v = on;
            changed
        });
    }
}

impl Broker {
    /// Raise (`Some`) or clear (`None`) the alarm of `source`: while any
    /// alarm is on, publishing connections are blocked with the reasons.
    pub fn set_external_alarm(&self, source: &'static str, reason: Option<String>) {
        {
            let mut ext = self.external_alarms.lock();
            match reason {
                Some(r) => ext.insert(source, r),
                None => ext.remove(source),
            };
        }
        self.update_alarm();
    }
}

#[cfg(test)]
mod timer_tests;
