//! Topology: declaring and deleting vhosts, exchanges and queues, binding
//! and unbinding, with RabbitMQ's checks and reply texts.
//!
//! Every change is validated first (named guards, no side effect), then
//! made durable in the definitions log, then applied to the vhost's maps.
//! Deleting a queue cancels its consumers through
//! [`crate::broker::delivery::server_cancel`] (a channel's own queue.delete
//! has the cancels written after its delete-ok: [`Cancels`]).

use super::*;
use crate::broker::delivery::Cancels;

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

pub(super) fn exchange_dedup_path(
    data_dir: &std::path::Path,
    vhost: &str,
    name: &str,
) -> std::path::PathBuf {
    let mut h = Sha256::new();
    h.update(vhost.as_bytes());
    h.update([0]);
    h.update(name.as_bytes());
    let d = h.finalize();
    let hex: String = d[..8].iter().map(|b| format!("{b:02x}")).collect();
    data_dir.join("dedup").join(format!("x{hex}.log"))
}

pub(super) fn server_queue_name() -> String {
    let bytes: [u8; 16] = rand::random();
    format!(
        "amq.gen-{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

impl Broker {
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
            return Err(AmqpError::default_exchange());
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
        {
            let set = self.policies_for_new();
            ex.apply_policy(set.applied(&vhost.name, name, false), self.store.files());
            vhost.exchanges.write().insert(name.to_owned(), ex.clone());
        }
        if let Some(d) = &ex.delayed {
            d.start(&ex, &vh);
        }
        Ok(ex)
    }

    /// Build an exchange object (after validation), with its delayed side.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn make_exchange(
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
        ex.dedup = crate::broker::dedup::DedupSlot::new(crate::broker::dedup::Dedup::from_args(
            &ex.arguments,
            durable.then(|| exchange_dedup_path(&self.config.data_dir, &vhost.name, name)),
            self.store.files(),
        ));
        ex.dedup_log =
            durable.then(|| exchange_dedup_path(&self.config.data_dir, &vhost.name, name));
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
        if name.is_empty() {
            return Err(AmqpError::default_exchange());
        }
        if name.starts_with("amq.") {
            return Err(AmqpError::access_refused(format!(
                "deletion of system exchange '{name}' in vhost '{}' not allowed",
                vhost.name
            )));
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
        if let Some(d) = ex.dedup.get() {
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

    pub(super) fn auto_delete_cascade(&self, vhost: &VHost, sources: &[Arc<Exchange>]) {
        for ex in vhost.auto_delete_exchanges(sources) {
            if let Some(d) = &ex.delayed {
                d.purge();
            }
            if let Some(d) = ex.dedup.get() {
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
        self.declare_queue_checked(
            vhost,
            name,
            passive,
            durable,
            exclusive,
            auto_delete,
            arguments,
            conn_id,
            &|_| Ok(()),
        )
    }

    /// [`Broker::declare_queue`], calling `configure` with the queue's
    /// actual name (a server-generated `amq.gen-…` one included) before
    /// anything changes, as RabbitMQ checks configure access on the name it
    /// chose. Not called for a passive declare.
    #[allow(clippy::too_many_arguments)]
    pub fn declare_queue_checked(
        &self,
        vhost: &VHost,
        name: &str,
        passive: bool,
        durable: bool,
        exclusive: bool,
        auto_delete: bool,
        arguments: FieldTable,
        conn_id: u64,
        configure: &dyn Fn(&str) -> AmqpResult<()>,
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
        configure(&name)?;
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
        self.check_queue_limit(vhost, &name)?;
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
        {
            // Policies apply from the start; the read guard is held until the
            // queue is in the map (see Broker::set_policy).
            let set = self.policies_for_new();
            let applied = set.applied(&vhost.name, &name, true);
            if applied != crate::broker::policy::Applied::default() {
                q.apply_policy(applied, false);
            }
            vhost.queues.write().insert(name, q.clone());
        }
        q.start_timers();
        Ok(q)
    }

    /// Delete a queue; returns its message count. Its consumers' clients
    /// get basic.cancel right away.
    pub fn delete_queue(
        &self,
        vhost: &VHost,
        q: &Arc<Queue>,
        if_unused: bool,
        if_empty: bool,
    ) -> AmqpResult<u32> {
        self.delete_queue_cancel_later(vhost, q, if_unused, if_empty)
            .map(|(n, _cancels)| n)
    }

    /// Delete a queue; returns its message count and its cancelled
    /// consumers, whose basic.cancel frames are written when the
    /// [`Cancels`] is dropped (after the caller's own reply).
    pub fn delete_queue_cancel_later(
        &self,
        vhost: &VHost,
        q: &Arc<Queue>,
        if_unused: bool,
        if_empty: bool,
    ) -> AmqpResult<(u32, Cancels)> {
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
            return Ok((0, Cancels::default()));
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
        if let Some(d) = q.dedup.get() {
            d.forget();
        }
        let sources: Vec<_> = gone.into_iter().map(|(s, _)| s).collect();
        self.auto_delete_cascade(vhost, &sources);
        Ok((n, Cancels(consumers)))
    }

    pub fn bind(
        &self,
        vhost: &VHost,
        source: &Arc<Exchange>,
        dest: Dest,
        routing_key: &str,
        arguments: FieldTable,
    ) -> AmqpResult<()> {
        refuse_default_exchange(source, &dest)?;
        check_binding_args(source.kind, routing_key, &arguments)?;
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
            return Err(AmqpError::default_exchange());
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
        self.policies.write().remove_vhost(name);
        self.vhost_limits.write().remove(name);
        let queues: Vec<_> = v.queues.read().values().cloned().collect();
        for q in queues {
            let (_, consumers) = q.delete();
            for c in consumers {
                crate::broker::delivery::server_cancel(&c);
            }
            if let Some(d) = q.dedup.get() {
                d.forget();
            }
        }
        v.queues.write().clear();
        for e in v.exchanges.read().values() {
            e.deleted.store(true, Ordering::Release);
            if let Some(d) = &e.delayed {
                d.purge();
            }
            if let Some(d) = e.dedup.get() {
                d.forget();
            }
        }
        v.exchanges.write().clear();
        self.permissions.write().retain(|(_, vh), _| vh != name);
        Ok(true)
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
}

/// The checks a binding's key and arguments must pass for its source's
/// exchange type: a headers binding's x-match, a consistent-hash weight.
/// With RabbitMQ's texts; also used by the definitions import.
pub fn check_binding_args(
    kind: ExchangeKind,
    routing_key: &str,
    arguments: &FieldTable,
) -> AmqpResult<()> {
    if kind == ExchangeKind::Headers {
        if let Some(v) = arguments.inner().get("x-match") {
            let ok = crate::broker::args::str_value(v)
                .is_some_and(|m| matches!(m.as_str(), "all" | "any" | "all-with-x" | "any-with-x"));
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
    if kind == ExchangeKind::ConsistentHash {
        let weight = routing_key.trim().parse::<u32>().ok();
        if weight.is_none_or(|w| w > crate::broker::exchange::MAX_HASH_WEIGHT) {
            return Err(AmqpError::precondition(format!(
                    "binding key '{routing_key}' of an x-consistent-hash exchange must be a weight from 0 to {}",
                    crate::broker::exchange::MAX_HASH_WEIGHT
                )));
        }
    }
    Ok(())
}

/// Bindings from or to the default exchange are refused (403).
fn refuse_default_exchange(source: &Exchange, dest: &Dest) -> AmqpResult<()> {
    match dest {
        _ if source.name.is_empty() => Err(AmqpError::default_exchange()),
        Dest::Exchange(d) if d.name.is_empty() => Err(AmqpError::default_exchange()),
        _ => Ok(()),
    }
}
