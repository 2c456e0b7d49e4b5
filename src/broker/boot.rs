//! Start and stop: lock the data dir, replay the definitions log, recover
//! the store, restore vhosts, policies and limits, exchanges (refilling
//! delayed indexes), queues (with their policies applied before their
//! messages come back) and bindings, and only then start queue timers and delayed-release tasks,
//! so nothing due is routed into a half-restored topology.
//!
//! After a crash this is the whole recovery: what the definitions log and
//! the store hold is what comes back. Shutdown syncs and closes the store
//! (afterwards it writes and deletes nothing) and unlocks the data dir.

use super::*;

/// Lock the data dir for this broker: two brokers writing the same segments
/// and definitions log would destroy each other's data.
pub fn lock_data_dir(dir: &std::path::Path) -> std::io::Result<std::fs::File> {
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
            policies: RwLock::new(policy::Policies::default()),
            vhost_limits: RwLock::new(
                model
                    .vhost_limits
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            ),
            user_limits: RwLock::new(
                model
                    .user_limits
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            ),
            next_queue_id: AtomicU32::new(max_id.max(store.max_recorded_id) + 1),
            next_conn_id: AtomicU64::new(1),
            connections: Mutex::new(HashMap::new()),
            reply_to: Default::default(),
            alarm,
            alarm_reasons: Mutex::new(vec![]),
            external_alarms: Default::default(),
            resource_alarms: Default::default(),
            cluster: Default::default(),
            me: std::sync::OnceLock::new(),
            compaction_pending: Mutex::new(vec![]),
            dir_lock: Mutex::new(Some(dir_lock)),
            confirms: Default::default(),
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
        {
            let mut set = broker.policies.write();
            for op in model.policies.values() {
                set.replay(op);
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
                        ex.apply_policy(
                            broker.policies.read().applied(v, name, false),
                            store.files(),
                        );
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
                // Settings from policies before the messages come back: a
                // policy TTL or length limit applies to them too.
                let applied = broker.policies.read().applied(v, name, true);
                if applied != crate::broker::policy::Applied::default() {
                    queue.apply_policy(applied, false);
                }
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
        // The predeclared amq.* exchanges were made with their vhost: let the
        // policies reach them too (queues and declared exchanges have theirs).
        {
            let set = broker.policies.read();
            for vh in broker.vhosts.read().values() {
                broker.reapply_policies(&set, vh);
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
}
