//! The broker: vhosts, users and permissions, the store, and every operation
//! that changes definitions.
//!
//! Validation happens before any side effect; durable changes are appended to
//! the definitions log (fsynced) before the in-memory maps change, so a crash
//! between the two replays the change rather than losing it.

pub mod args;
pub mod dead_letter;
pub mod dedup;
pub mod delayed;
pub mod delivery;
pub mod exchange;
pub mod publish;
pub mod queue;
pub mod vhost;

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

#[derive(Clone, Debug)]
pub struct User {
    pub name: String,
    /// base64(salt(4) ++ sha256(salt ++ password)), RabbitMQ's default scheme.
    pub password_hash: String,
    pub tags: Vec<String>,
}

impl User {
    pub fn check_password(&self, password: &str) -> bool {
        let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(&self.password_hash) else {
            return false;
        };
        if raw.len() != 36 {
            return false;
        }
        let mut h = Sha256::new();
        h.update(&raw[..4]);
        h.update(password.as_bytes());
        h.finalize().as_slice() == &raw[4..]
    }
}

pub fn hash_password(password: &str) -> String {
    let salt: [u8; 4] = rand::random();
    let mut h = Sha256::new();
    h.update(salt);
    h.update(password.as_bytes());
    let mut raw = salt.to_vec();
    raw.extend_from_slice(&h.finalize());
    base64::engine::general_purpose::STANDARD.encode(raw)
}

#[derive(Clone, Debug)]
pub struct Permission {
    pub configure: String,
    pub write: String,
    pub read: String,
    re: [Regex; 3],
}

impl Permission {
    pub fn new(configure: &str, write: &str, read: &str) -> Result<Self, String> {
        let anchored = |p: &str| {
            Regex::new(&format!("^(?:{p})$"))
                .map_err(|e| format!("invalid permission regex {p:?}: {e}"))
        };
        Ok(Permission {
            configure: configure.into(),
            write: write.into(),
            read: read.into(),
            re: [anchored(configure)?, anchored(write)?, anchored(read)?],
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Configure,
    Write,
    Read,
}

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
    pub client_properties: String,
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
    next_queue_id: AtomicU32,
    next_conn_id: AtomicU64,
    pub connections: Mutex<HashMap<u64, (ConnInfo, Arc<crate::broker::delivery::ConnShared>)>>,
    /// true while a resource alarm (memory or disk) blocks publishers.
    pub alarm: watch::Sender<bool>,
    pub alarm_reasons: Mutex<Vec<String>>,
    me: std::sync::OnceLock<std::sync::Weak<Broker>>,
    /// Originals of compaction copies whose sync failed: released after the
    /// next successful one (never before their copies are on disk).
    compaction_pending: Mutex<Vec<(Arc<Queue>, Vec<crate::store::MsgPos>)>>,
    /// The data dir's lock file, held (locked) from open to shutdown.
    dir_lock: Mutex<Option<std::fs::File>>,
}

/// Lock the data dir for this broker: two brokers writing the same segments
/// and definitions log would destroy each other's data.
fn lock_data_dir(dir: &std::path::Path) -> std::io::Result<std::fs::File> {
    let path = dir.join("lepus.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            format!(
                "data dir {} is in use by another lepus (lock held on {})",
                dir.display(),
                path.display()
            ),
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

impl Broker {
    /// Open the data dir: replay definitions, recover messages, compact.
    pub fn open(config: Config, io: Arc<dyn StoreIo>) -> std::io::Result<Arc<Broker>> {
        std::fs::create_dir_all(&config.data_dir)?;
        let dir_lock = lock_data_dir(&config.data_dir)?;
        let ops = DefinitionsLog::read_all(&config.data_dir)?;
        let fresh = ops.is_empty();
        let mut model = Model::default();
        if fresh {
            for u in &config.users {
                model.apply(DefOp::PutUser {
                    name: u.name.clone(),
                    password_hash: hash_password(&u.password),
                    tags: u.tags.clone(),
                });
            }
            for v in &config.vhosts {
                model.apply(DefOp::AddVhost { name: v.clone() });
                for u in &config.users {
                    model.apply(DefOp::SetPermissions {
                        user: u.name.clone(),
                        vhost: v.clone(),
                        configure: ".*".into(),
                        write: ".*".into(),
                        read: ".*".into(),
                    });
                }
            }
        } else {
            for op in ops {
                model.apply(op);
            }
        }
        let mut max_id = model
            .queues
            .values()
            .map(|q| q.id)
            .chain(model.exchanges.values().map(|e| e.id))
            .max()
            .unwrap_or(0);
        for e in model.exchanges.values_mut() {
            if e.id == 0 && is_delayed(&e.kind, &e.arguments) {
                max_id += 1;
                e.id = max_id;
            }
        }
        let live: HashSet<u32> = model
            .queues
            .values()
            .map(|q| q.id)
            .chain(model.exchanges.values().map(|e| e.id).filter(|i| *i != 0))
            .collect();
        let (store, mut recovered) = Store::open(
            &config.data_dir,
            io,
            config.store.segment_size,
            config.store.sync_delay_us,
            &live,
        )?;
        let compacted = model.to_ops();
        let defs = DefinitionsLog::rewrite(store.files(), &compacted)?;
        let (alarm, _) = watch::channel(false);
        let broker = Arc::new(Broker {
            config,
            store: store.clone(),
            defs: Mutex::new(Defs {
                log: defs,
                model: Model::default(),
            }),
            vhosts: RwLock::new(HashMap::new()),
            users: RwLock::new(HashMap::new()),
            permissions: RwLock::new(HashMap::new()),
            next_queue_id: AtomicU32::new(max_id.max(store.max_recorded_id) + 1),
            next_conn_id: AtomicU64::new(1),
            connections: Mutex::new(HashMap::new()),
            alarm,
            alarm_reasons: Mutex::new(vec![]),
            me: std::sync::OnceLock::new(),
            compaction_pending: Mutex::new(vec![]),
            dir_lock: Mutex::new(Some(dir_lock)),
        });
        let _ = broker.me.set(Arc::downgrade(&broker));
        // Build the live objects from the model.
        for u in model.users.values() {
            broker.users.write().insert(u.name.clone(), u.clone());
        }
        for ((u, v), (c, w, r)) in &model.perms {
            if let Ok(p) = Permission::new(c, w, r) {
                broker.permissions.write().insert((u.clone(), v.clone()), p);
            }
        }
        for v in &model.vhosts {
            let vh = VHost::new(v);
            vh.set_broker(Arc::downgrade(&broker));
            broker.vhosts.write().insert(v.clone(), vh);
        }
        let mut total = 0usize;
        for ((v, name), e) in &model.exchanges {
            if let Some(vh) = broker.vhost(v) {
                match broker.make_exchange(
                    &vh,
                    name,
                    &e.kind,
                    true,
                    e.auto_delete,
                    e.internal,
                    e.arguments.clone(),
                    e.id,
                ) {
                    Ok(ex) => {
                        if let (Some(d), Some(msgs)) = (&ex.delayed, recovered.remove(&e.id)) {
                            tracing::info!(exchange = %name, pending = msgs.len(), "delayed messages recovered");
                            d.restore(msgs);
                        }
                        vh.exchanges.write().insert(name.clone(), ex);
                    }
                    Err(err) => {
                        tracing::error!(exchange = %name, error = %err, "cannot restore exchange")
                    }
                }
            }
        }
        for ((v, name), q) in &model.queues {
            if let Some(vh) = broker.vhost(v) {
                let queue = Arc::new(Queue::new(
                    name,
                    &vh,
                    q.id,
                    true,
                    None,
                    q.auto_delete,
                    q.arguments.clone(),
                    store.clone(),
                ));
                if let Some(msgs) = recovered.remove(&q.id) {
                    total += msgs.len();
                    queue.restore(msgs);
                }
                vh.queues.write().insert(name.clone(), queue);
            }
        }
        for b in &model.bindings {
            let Some(vh) = broker.vhost(&b.vhost) else {
                continue;
            };
            let Some(src) = vh.exchange(&b.source) else {
                continue;
            };
            let dest = if b.destination_type == "queue" {
                vh.queue(&b.destination).map(Dest::Queue)
            } else {
                vh.exchange(&b.destination).map(Dest::Exchange)
            };
            if let Some(d) = dest {
                src.bind(d, &b.routing_key, b.arguments.clone());
            }
        }
        crate::broker::dedup::remove_stale_logs(store.files(), &live);
        broker.defs.lock().model = model;
        // Only now, with every queue and binding in place, may anything
        // expire or be released: a due message routed any earlier would
        // find no queue and be dropped.
        for vh in broker.vhosts.read().values() {
            for q in vh.queues.read().values() {
                q.start_timers();
            }
            for ex in vh.exchanges.read().values() {
                if let Some(d) = &ex.delayed {
                    d.start(ex, vh);
                }
            }
        }
        tracing::info!(messages = total, queues = live.len(), "recovered");
        Ok(broker)
    }

    /// Sync and close the store and give up the data dir. Whatever still
    /// holds this broker afterwards can no longer change what is on disk.
    pub fn shutdown(&self) {
        // Under the definitions lock: no definitions write is half done.
        let _defs = self.defs.lock();
        self.store.shutdown();
        self.dir_lock.lock().take();
    }

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

    pub fn authenticate(&self, user: &str, password: &str) -> Option<User> {
        let u = self.users.read().get(user).cloned()?;
        u.check_password(password).then_some(u)
    }

    pub fn can_access_vhost(&self, user: &str, vhost: &str) -> bool {
        self.permissions
            .read()
            .contains_key(&(user.to_owned(), vhost.to_owned()))
    }

    pub fn check_access(
        &self,
        user: &str,
        vhost: &str,
        access: Access,
        kind: &str,
        name: &str,
    ) -> AmqpResult<()> {
        let perms = self.permissions.read();
        let ok = perms
            .get(&(user.to_owned(), vhost.to_owned()))
            .map(|p| {
                let i = match access {
                    Access::Configure => 0,
                    Access::Write => 1,
                    Access::Read => 2,
                };
                p.re[i].is_match(name)
            })
            .unwrap_or(false);
        if ok {
            Ok(())
        } else {
            let what = match access {
                Access::Configure => "configure",
                Access::Write => "write",
                Access::Read => "read",
            };
            Err(AmqpError::access_refused(format!(
                "access to {kind} '{name}' in vhost '{vhost}' refused for user '{user}'"
            ))
            .with_method(0, 0))
            .inspect_err(|_| tracing::debug!(what, "access refused"))
        }
    }

    // ----- exchanges -----

    #[allow(clippy::too_many_arguments)]
    pub fn declare_exchange(
        &self,
        vhost: &VHost,
        name: &str,
        kind: &str,
        passive: bool,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        arguments: FieldTable,
    ) -> AmqpResult<Arc<Exchange>> {
        if name.is_empty() {
            return Err(AmqpError::access_refused(
                "operation not permitted on the default exchange",
            ));
        }
        if passive {
            return vhost.get_exchange(name);
        }
        if name.starts_with("amq.") && vhost.exchange(name).is_none() {
            return Err(AmqpError::access_refused(format!(
                "exchange name '{name}' contains reserved prefix 'amq.*'"
            )));
        }
        if name.len() > 255 {
            return Err(AmqpError::precondition(
                "exchange name is longer than 255 bytes",
            ));
        }
        let (k, _) = exchange_kind(kind, &arguments)?;
        crate::broker::args::validate_exchange_args(&arguments, name, &vhost.name)?;
        if let Some(existing) = vhost.exchange(name) {
            let ineq = |arg: &str, got: String, cur: String| {
                AmqpError::precondition(format!(
                    "inequivalent arg '{arg}' for exchange '{name}' in vhost '{}': received '{got}' but current is '{cur}'",
                    vhost.name
                ))
            };
            if existing.type_name != kind || existing.kind != k {
                return Err(ineq("type", kind.into(), existing.type_name.clone()));
            }
            if existing.durable != durable {
                return Err(ineq(
                    "durable",
                    durable.to_string(),
                    existing.durable.to_string(),
                ));
            }
            if existing.auto_delete != auto_delete {
                return Err(ineq(
                    "auto_delete",
                    auto_delete.to_string(),
                    existing.auto_delete.to_string(),
                ));
            }
            if existing.internal != internal {
                return Err(ineq(
                    "internal",
                    internal.to_string(),
                    existing.internal.to_string(),
                ));
            }
            crate::broker::args::check_equivalent(
                &existing.arguments,
                &arguments,
                "exchange",
                name,
                &vhost.name,
            )?;
            return Ok(existing);
        }
        let id = if is_delayed(kind, &arguments) && durable {
            self.next_queue_id.fetch_add(1, Ordering::Relaxed)
        } else {
            0
        };
        if durable {
            self.persist(DefOp::DeclareExchange {
                vhost: vhost.name.clone(),
                name: name.into(),
                kind: kind.into(),
                auto_delete,
                internal,
                arguments: arguments.clone(),
                id,
            })?;
        }
        let vh = vhost.arc();
        let ex = self.make_exchange(
            &vh,
            name,
            kind,
            durable,
            auto_delete,
            internal,
            arguments,
            id,
        )?;
        vhost.exchanges.write().insert(name.to_owned(), ex.clone());
        if let Some(d) = &ex.delayed {
            d.start(&ex, &vh);
        }
        Ok(ex)
    }

    /// Build an exchange object (after validation), with its delayed side.
    #[allow(clippy::too_many_arguments)]
    fn make_exchange(
        &self,
        vhost: &Arc<VHost>,
        name: &str,
        kind: &str,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        arguments: FieldTable,
        id: u32,
    ) -> AmqpResult<Arc<Exchange>> {
        let (k, delayed) = exchange_kind(kind, &arguments)?;
        let mut ex = Exchange::new(name, k, durable, auto_delete, internal, arguments);
        ex.type_name = kind.to_owned();
        ex.dedup = crate::broker::dedup::Dedup::from_args(
            &ex.arguments,
            durable.then(|| exchange_dedup_path(&self.config.data_dir, &vhost.name, name)),
            self.store.files(),
        );
        if delayed {
            let sub = if id != 0 {
                format!("x{id}")
            } else {
                format!("t{}", rand::random::<u64>())
            };
            let dir = self.config.data_dir.join("delayed").join(sub);
            ex.delayed = Some(crate::broker::delayed::Delayed::new(
                id,
                durable,
                self.store.clone(),
                dir,
            ));
        }
        Ok(Arc::new(ex))
    }

    pub fn delete_exchange(&self, vhost: &VHost, name: &str, if_unused: bool) -> AmqpResult<()> {
        if name.is_empty() || name.starts_with("amq.") {
            return Err(AmqpError::access_refused(if name.is_empty() {
                "operation not permitted on the default exchange".to_string()
            } else {
                format!(
                    "deletion of system exchange '{name}' in vhost '{}' not allowed",
                    vhost.name
                )
            }));
        }
        let Some(ex) = vhost.exchange(name) else {
            // RabbitMQ: deleting a missing exchange is not an error.
            return Ok(());
        };
        if if_unused && ex.has_bindings() {
            return Err(AmqpError::precondition(format!(
                "exchange '{name}' in vhost '{}' in use",
                vhost.name
            )));
        }
        if ex.durable {
            self.persist(DefOp::DeleteExchange {
                vhost: vhost.name.clone(),
                name: name.into(),
            })?;
        }
        ex.deleted.store(true, Ordering::Release);
        vhost.exchanges.write().remove(name);
        if let Some(d) = &ex.delayed {
            d.purge();
        }
        if let Some(d) = &ex.dedup {
            d.forget();
        }
        // Reset the whole index, not just the list: a route still holding
        // this exchange must not find indexes into an emptied list.
        *ex.bindings.write() = crate::broker::exchange::Bindings::default();
        let gone = vhost.unbind_everywhere(&Dest::Exchange(ex.clone()));
        let sources: Vec<_> = gone.into_iter().map(|(s, _)| s).collect();
        self.auto_delete_cascade(vhost, &sources);
        Ok(())
    }

    fn auto_delete_cascade(&self, vhost: &VHost, sources: &[Arc<Exchange>]) {
        for ex in vhost.auto_delete_exchanges(sources) {
            if let Some(d) = &ex.delayed {
                d.purge();
            }
            if let Some(d) = &ex.dedup {
                d.forget();
            }
            if ex.durable {
                let _ = self.persist(DefOp::DeleteExchange {
                    vhost: vhost.name.clone(),
                    name: ex.name.clone(),
                });
            }
            let gone = vhost.unbind_everywhere(&Dest::Exchange(ex.clone()));
            let s: Vec<_> = gone.into_iter().map(|(s, _)| s).collect();
            self.auto_delete_cascade(vhost, &s);
        }
    }

    // ----- queues -----

    #[allow(clippy::too_many_arguments)]
    pub fn declare_queue(
        &self,
        vhost: &VHost,
        name: &str,
        passive: bool,
        durable: bool,
        exclusive: bool,
        auto_delete: bool,
        arguments: FieldTable,
        conn_id: u64,
    ) -> AmqpResult<Arc<Queue>> {
        if passive {
            let q = vhost.get_queue(name)?;
            check_exclusive(&q, conn_id)?;
            // RabbitMQ: a passive declare counts as use (x-expires starts over).
            q.touch();
            return Ok(q);
        }
        if name.len() > 255 {
            return Err(AmqpError::precondition(
                "queue name is longer than 255 bytes",
            ));
        }
        let quorum = crate::broker::args::is_quorum(&arguments);
        let name = if name.is_empty() {
            if quorum {
                return Err(AmqpError::precondition(
                    "Cannot declare a server-named queue for type rabbit_quorum_queue",
                ));
            }
            server_queue_name()
        } else {
            if name.starts_with("amq.") {
                return Err(AmqpError::access_refused(format!(
                    "queue name '{name}' contains reserved prefix 'amq.*'"
                )));
            }
            name.to_owned()
        };
        crate::broker::args::validate_queue_args(&arguments, &name, &vhost.name)?;
        if let Some(existing) = vhost.queue(&name) {
            if existing.exclusive_owner.is_some() != exclusive {
                return Err(AmqpError::resource_locked(format!(
                    "cannot obtain exclusive access to locked queue '{name}' in vhost '{}'. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration.",
                    vhost.name
                )));
            }
            check_exclusive(&existing, conn_id)?;
            let ineq = |arg: &str, got: bool, cur: bool| {
                AmqpError::precondition(format!(
                    "inequivalent arg '{arg}' for queue '{name}' in vhost '{}': received '{got}' but current is '{cur}'",
                    vhost.name
                ))
            };
            if existing.durable != durable {
                return Err(ineq("durable", durable, existing.durable));
            }
            if existing.exclusive_owner.is_some() != exclusive {
                return Err(ineq(
                    "exclusive",
                    exclusive,
                    existing.exclusive_owner.is_some(),
                ));
            }
            if existing.auto_delete != auto_delete {
                return Err(ineq("auto_delete", auto_delete, existing.auto_delete));
            }
            crate::broker::args::check_equivalent(
                &existing.arguments,
                &arguments,
                "queue",
                &name,
                &vhost.name,
            )?;
            existing.touch();
            return Ok(existing);
        }
        if quorum {
            crate::broker::args::validate_quorum(
                &arguments,
                &name,
                &vhost.name,
                durable,
                exclusive,
                auto_delete,
            )?;
        }
        let id = self.next_queue_id.fetch_add(1, Ordering::Relaxed);
        // Exclusive queues are never durable in effect: they die with their connection.
        let durable_effective = durable && !exclusive;
        if durable_effective {
            self.persist(DefOp::DeclareQueue {
                vhost: vhost.name.clone(),
                name: name.clone(),
                id,
                auto_delete,
                arguments: arguments.clone(),
            })?;
        }
        let q = Arc::new(Queue::new(
            &name,
            &vhost.arc(),
            id,
            durable,
            exclusive.then_some(conn_id),
            auto_delete,
            arguments,
            self.store.clone(),
        ));
        vhost.queues.write().insert(name, q.clone());
        q.start_timers();
        Ok(q)
    }

    /// Delete a queue; returns its message count.
    pub fn delete_queue(
        &self,
        vhost: &VHost,
        q: &Arc<Queue>,
        if_unused: bool,
        if_empty: bool,
    ) -> AmqpResult<u32> {
        if if_unused && !q.is_unused() {
            return Err(AmqpError::precondition(format!(
                "queue '{}' in vhost '{}' in use",
                q.name, vhost.name
            )));
        }
        if if_empty && q.message_count() > 0 {
            return Err(AmqpError::precondition(format!(
                "queue '{}' in vhost '{}' not empty",
                q.name, vhost.name
            )));
        }
        if q.is_deleted() {
            return Ok(0);
        }
        if q.durable && q.exclusive_owner.is_none() {
            self.persist(DefOp::DeleteQueue {
                vhost: vhost.name.clone(),
                name: q.name.clone(),
            })?;
        }
        {
            let mut qs = vhost.queues.write();
            if qs.get(&q.name).is_some_and(|x| Arc::ptr_eq(x, q)) {
                qs.remove(&q.name);
            }
        }
        let gone = vhost.unbind_everywhere(&Dest::Queue(q.clone()));
        let (n, consumers) = q.delete();
        if let Some(d) = &q.dedup {
            d.forget();
        }
        for c in consumers {
            crate::broker::delivery::server_cancel(&c);
        }
        let sources: Vec<_> = gone.into_iter().map(|(s, _)| s).collect();
        self.auto_delete_cascade(vhost, &sources);
        Ok(n)
    }

    // ----- bindings -----

    pub fn bind(
        &self,
        vhost: &VHost,
        source: &Arc<Exchange>,
        dest: Dest,
        routing_key: &str,
        arguments: FieldTable,
    ) -> AmqpResult<()> {
        if source.name.is_empty() {
            return Err(AmqpError::access_refused(
                "operation not permitted on the default exchange",
            ));
        }
        if let Dest::Exchange(d) = &dest {
            if d.name.is_empty() {
                return Err(AmqpError::access_refused(
                    "operation not permitted on the default exchange",
                ));
            }
        }
        if source.kind == ExchangeKind::Headers {
            if let Some(v) = arguments.inner().get("x-match") {
                let ok = crate::broker::args::str_value(v).is_some_and(|m| {
                    matches!(m.as_str(), "all" | "any" | "all-with-x" | "any-with-x")
                });
                if !ok {
                    // RabbitMQ prints a string as an Erlang binary.
                    let shown = match crate::broker::args::str_value(v) {
                        Some(s) => format!("<<\"{s}\">>"),
                        None => crate::broker::args::show(v),
                    };
                    return Err(AmqpError::precondition(format!(
                        "Invalid x-match field value {shown}; expected all, any, all-with-x, or any-with-x"
                    )));
                }
            }
        }
        if source.kind == ExchangeKind::ConsistentHash {
            let weight = routing_key.trim().parse::<u32>().ok();
            if weight.is_none_or(|w| w > crate::broker::exchange::MAX_HASH_WEIGHT) {
                return Err(AmqpError::precondition(format!(
                    "binding key '{routing_key}' of an x-consistent-hash exchange must be a weight from 0 to {}",
                    crate::broker::exchange::MAX_HASH_WEIGHT
                )));
            }
        }
        let durable = source.durable && dest.is_durable();
        // Log first, then change the maps (a failed write changes nothing).
        if durable && !source.has_binding(&dest, routing_key, &arguments) {
            self.persist(DefOp::Bind {
                vhost: vhost.name.clone(),
                source: source.name.clone(),
                destination: dest.name().to_owned(),
                destination_type: dest.kind().into(),
                routing_key: routing_key.into(),
                arguments: arguments.clone(),
            })?;
        }
        source.bind(dest, routing_key, arguments);
        Ok(())
    }

    pub fn unbind(
        &self,
        vhost: &VHost,
        source: &Arc<Exchange>,
        dest: Dest,
        routing_key: &str,
        arguments: FieldTable,
    ) -> AmqpResult<()> {
        if source.name.is_empty() {
            return Err(AmqpError::access_refused(
                "operation not permitted on the default exchange",
            ));
        }
        let durable = source.durable && dest.is_durable();
        let op = DefOp::Unbind {
            vhost: vhost.name.clone(),
            source: source.name.clone(),
            destination: dest.name().to_owned(),
            destination_type: dest.kind().into(),
            routing_key: routing_key.into(),
            arguments: arguments.clone(),
        };
        // Log first, then change the maps (a failed write changes nothing).
        if !source.has_binding(&dest, routing_key, &arguments) {
            return Ok(());
        }
        if durable {
            self.persist(op)?;
        }
        if source.unbind(&dest, routing_key, &arguments) {
            self.auto_delete_cascade(vhost, std::slice::from_ref(source));
        }
        Ok(())
    }

    /// The exclusive queues of a closed connection go with it.
    pub fn connection_closed(&self, conn_id: u64, vhost: &VHost) {
        let owned: Vec<_> = vhost
            .queues
            .read()
            .values()
            .filter(|q| q.exclusive_owner == Some(conn_id))
            .cloned()
            .collect();
        for q in owned {
            let _ = self.delete_queue(vhost, &q, false, false);
        }
        self.connections.lock().remove(&conn_id);
    }

    // ----- users, vhosts, permissions (management) -----

    pub fn put_user(&self, name: &str, password_hash: String, tags: Vec<String>) -> AmqpResult<()> {
        self.persist(DefOp::PutUser {
            name: name.into(),
            password_hash: password_hash.clone(),
            tags: tags.clone(),
        })?;
        self.users.write().insert(
            name.to_owned(),
            User {
                name: name.to_owned(),
                password_hash,
                tags,
            },
        );
        Ok(())
    }

    pub fn delete_user(&self, name: &str) -> AmqpResult<bool> {
        if !self.users.read().contains_key(name) {
            return Ok(false);
        }
        self.persist(DefOp::DeleteUser { name: name.into() })?;
        self.users.write().remove(name);
        self.permissions.write().retain(|(u, _), _| u != name);
        Ok(true)
    }

    pub fn set_permissions(
        &self,
        user: &str,
        vhost: &str,
        configure: &str,
        write: &str,
        read: &str,
    ) -> AmqpResult<()> {
        let p = Permission::new(configure, write, read).map_err(AmqpError::precondition)?;
        self.persist(DefOp::SetPermissions {
            user: user.into(),
            vhost: vhost.into(),
            configure: configure.into(),
            write: write.into(),
            read: read.into(),
        })?;
        self.permissions
            .write()
            .insert((user.to_owned(), vhost.to_owned()), p);
        Ok(())
    }

    pub fn clear_permissions(&self, user: &str, vhost: &str) -> AmqpResult<()> {
        self.persist(DefOp::ClearPermissions {
            user: user.into(),
            vhost: vhost.into(),
        })?;
        self.permissions
            .write()
            .remove(&(user.to_owned(), vhost.to_owned()));
        Ok(())
    }

    pub fn add_vhost(&self, name: &str) -> AmqpResult<Arc<VHost>> {
        if let Some(v) = self.vhost(name) {
            return Ok(v);
        }
        self.persist(DefOp::AddVhost { name: name.into() })?;
        let v = VHost::new(name);
        if let Some(me) = self.me.get() {
            v.set_broker(me.clone());
        }
        self.vhosts.write().insert(name.to_owned(), v.clone());
        Ok(v)
    }

    /// Delete a vhost with everything in it. Connections to it are closed by
    /// their owners when they next touch it (its objects are gone).
    pub fn delete_vhost(&self, name: &str) -> AmqpResult<bool> {
        let Some(v) = self.vhost(name) else {
            return Ok(false);
        };
        self.persist(DefOp::DeleteVhost { name: name.into() })?;
        self.vhosts.write().remove(name);
        let queues: Vec<_> = v.queues.read().values().cloned().collect();
        for q in queues {
            let (_, consumers) = q.delete();
            for c in consumers {
                crate::broker::delivery::server_cancel(&c);
            }
            if let Some(d) = &q.dedup {
                d.forget();
            }
        }
        v.queues.write().clear();
        for e in v.exchanges.read().values() {
            e.deleted.store(true, Ordering::Release);
            if let Some(d) = &e.delayed {
                d.purge();
            }
            if let Some(d) = &e.dedup {
                d.forget();
            }
        }
        v.exchanges.write().clear();
        self.permissions.write().retain(|(_, vh), _| vh != name);
        Ok(true)
    }

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

    pub fn set_alarm(&self, reasons: Vec<String>) {
        let on = !reasons.is_empty();
        *self.alarm_reasons.lock() = reasons;
        self.alarm.send_if_modified(|v| {
            let changed = *v != on;
            *v = on;
            changed
        });
    }
}

pub fn check_exclusive(q: &Queue, conn_id: u64) -> AmqpResult<()> {
    match q.exclusive_owner {
        Some(owner) if owner != conn_id => Err(AmqpError::resource_locked(format!(
            "cannot obtain exclusive access to locked queue '{}' in vhost '{}'. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration.",
            q.name, q.vhost_name
        ))),
        _ => Ok(()),
    }
}

/// Whether an exchange of this type and arguments delays messages.
pub fn is_delayed(kind: &str, args: &FieldTable) -> bool {
    kind == "x-delayed-message"
        || crate::broker::args::get_bool(args, "x-delayed-exchange") == Some(true)
}

/// The routing kind of a declared type, and whether it is delayed.
pub fn exchange_kind(kind: &str, args: &FieldTable) -> AmqpResult<(ExchangeKind, bool)> {
    if kind == "x-delayed-message" {
        let dt = crate::broker::args::get_str(args, "x-delayed-type");
        return match dt.as_deref().and_then(ExchangeKind::parse) {
            Some(k) => Ok((k, true)),
            None => Err(AmqpError::precondition(
                "Invalid argument, 'x-delayed-type' must be an existing exchange type",
            )),
        };
    }
    match ExchangeKind::parse(kind) {
        Some(k) => Ok((k, is_delayed(kind, args))),
        None => Err(AmqpError::command_invalid(format!(
            "unknown exchange type '{kind}'"
        ))),
    }
}

fn exchange_dedup_path(data_dir: &std::path::Path, vhost: &str, name: &str) -> std::path::PathBuf {
    let mut h = Sha256::new();
    h.update(vhost.as_bytes());
    h.update([0]);
    h.update(name.as_bytes());
    let d = h.finalize();
    let hex: String = d[..8].iter().map(|b| format!("{b:02x}")).collect();
    data_dir.join("dedup").join(format!("x{hex}.log"))
}

fn server_queue_name() -> String {
    let bytes: [u8; 16] = rand::random();
    format!(
        "amq.gen-{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

struct Defs {
    log: DefinitionsLog,
    model: Model,
}

/// The durable state as replayed from the definitions log.
#[derive(Default)]
struct Model {
    users: BTreeMap<String, User>,
    vhosts: Vec<String>,
    perms: BTreeMap<(String, String), (String, String, String)>,
    exchanges: BTreeMap<(String, String), ExModel>,
    queues: BTreeMap<(String, String), QModel>,
    bindings: Vec<BModel>,
}

struct ExModel {
    id: u32,
    kind: String,
    auto_delete: bool,
    internal: bool,
    arguments: FieldTable,
}
struct QModel {
    id: u32,
    auto_delete: bool,
    arguments: FieldTable,
}
#[derive(PartialEq)]
struct BModel {
    vhost: String,
    source: String,
    destination: String,
    destination_type: String,
    routing_key: String,
    arguments: FieldTable,
}

impl Model {
    /// Bindings to queue `name`.
    fn drop_queue_bindings(&mut self, vhost: &str, name: &str) {
        self.bindings.retain(|b| {
            !(b.vhost == vhost && b.destination_type == "queue" && b.destination == name)
        });
    }

    /// Bindings from or to exchange `name`.
    fn drop_exchange_bindings(&mut self, vhost: &str, name: &str) {
        self.bindings.retain(|b| {
            !(b.vhost == vhost
                && (b.source == name
                    || (b.destination_type == "exchange" && b.destination == name)))
        });
    }

    fn apply(&mut self, op: DefOp) {
        match op {
            DefOp::AddVhost { name } => {
                if !self.vhosts.contains(&name) {
                    self.vhosts.push(name)
                }
            }
            DefOp::DeleteVhost { name } => {
                self.vhosts.retain(|v| *v != name);
                self.perms.retain(|(_, v), _| *v != name);
                self.exchanges.retain(|(v, _), _| *v != name);
                self.queues.retain(|(v, _), _| *v != name);
                self.bindings.retain(|b| b.vhost != name);
            }
            DefOp::PutUser {
                name,
                password_hash,
                tags,
            } => {
                self.users.insert(
                    name.clone(),
                    User {
                        name,
                        password_hash,
                        tags,
                    },
                );
            }
            DefOp::DeleteUser { name } => {
                self.users.remove(&name);
                self.perms.retain(|(u, _), _| *u != name);
            }
            DefOp::SetPermissions {
                user,
                vhost,
                configure,
                write,
                read,
            } => {
                self.perms.insert((user, vhost), (configure, write, read));
            }
            DefOp::ClearPermissions { user, vhost } => {
                self.perms.remove(&(user, vhost));
            }
            DefOp::DeclareExchange {
                vhost,
                name,
                kind,
                auto_delete,
                internal,
                arguments,
                id,
            } => {
                self.drop_exchange_bindings(&vhost, &name);
                self.exchanges.insert(
                    (vhost, name),
                    ExModel {
                        id,
                        kind,
                        auto_delete,
                        internal,
                        arguments,
                    },
                );
            }
            DefOp::DeleteExchange { vhost, name } => {
                self.exchanges.remove(&(vhost.clone(), name.clone()));
                self.drop_exchange_bindings(&vhost, &name);
            }
            DefOp::DeclareQueue {
                vhost,
                name,
                id,
                auto_delete,
                arguments,
            } => {
                // A new queue of an old name starts with no bindings (a
                // binding logged for an earlier queue of that name is stale).
                self.drop_queue_bindings(&vhost, &name);
                self.queues.insert(
                    (vhost, name),
                    QModel {
                        id,
                        auto_delete,
                        arguments,
                    },
                );
            }
            DefOp::DeleteQueue { vhost, name } => {
                self.queues.remove(&(vhost.clone(), name.clone()));
                self.drop_queue_bindings(&vhost, &name);
            }
            DefOp::Bind {
                vhost,
                source,
                destination,
                destination_type,
                routing_key,
                arguments,
            } => {
                let b = BModel {
                    vhost,
                    source,
                    destination,
                    destination_type,
                    routing_key,
                    arguments,
                };
                if !self.bindings.contains(&b) {
                    self.bindings.push(b);
                }
            }
            DefOp::Unbind {
                vhost,
                source,
                destination,
                destination_type,
                routing_key,
                arguments,
            } => {
                let b = BModel {
                    vhost,
                    source,
                    destination,
                    destination_type,
                    routing_key,
                    arguments,
                };
                self.bindings.retain(|x| *x != b);
            }
        }
    }

    fn to_ops(&self) -> Vec<DefOp> {
        let mut ops = vec![];
        for u in self.users.values() {
            ops.push(DefOp::PutUser {
                name: u.name.clone(),
                password_hash: u.password_hash.clone(),
                tags: u.tags.clone(),
            });
        }
        for v in &self.vhosts {
            ops.push(DefOp::AddVhost { name: v.clone() });
        }
        for ((u, v), (c, w, r)) in &self.perms {
            ops.push(DefOp::SetPermissions {
                user: u.clone(),
                vhost: v.clone(),
                configure: c.clone(),
                write: w.clone(),
                read: r.clone(),
            });
        }
        for ((v, n), e) in &self.exchanges {
            ops.push(DefOp::DeclareExchange {
                vhost: v.clone(),
                name: n.clone(),
                kind: e.kind.clone(),
                auto_delete: e.auto_delete,
                internal: e.internal,
                arguments: e.arguments.clone(),
                id: e.id,
            });
        }
        for ((v, n), q) in &self.queues {
            ops.push(DefOp::DeclareQueue {
                vhost: v.clone(),
                name: n.clone(),
                id: q.id,
                auto_delete: q.auto_delete,
                arguments: q.arguments.clone(),
            });
        }
        for b in &self.bindings {
            ops.push(DefOp::Bind {
                vhost: b.vhost.clone(),
                source: b.source.clone(),
                destination: b.destination.clone(),
                destination_type: b.destination_type.clone(),
                routing_key: b.routing_key.clone(),
                arguments: b.arguments.clone(),
            });
        }
        ops
    }
}
