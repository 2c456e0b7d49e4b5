//! The definitions model: the durable state the definitions log describes
//! (vhosts, users, permissions, durable exchanges, queues and bindings,
//! policies, vhost and user limits),
//! replayed at start and rewritten whole when the log is compacted.
//!
//! Pure data: applying a [`DefOp`] changes the model and nothing else.

use super::*;

pub(super) struct Defs {
    pub(super) log: DefinitionsLog,
    pub(super) model: Model,
}

/// The durable state as replayed from the definitions log.
#[derive(Default)]
pub(super) struct Model {
    pub(super) users: BTreeMap<String, User>,
    pub(super) vhosts: Vec<String>,
    pub(super) perms: BTreeMap<(String, String), (String, String, String)>,
    pub(super) exchanges: BTreeMap<(String, String), ExModel>,
    pub(super) queues: BTreeMap<(String, String), QModel>,
    pub(super) bindings: Vec<BModel>,
    /// Policies and operator policies, as their `SetPolicy` ops, by
    /// (vhost, operator, name).
    pub(super) policies: BTreeMap<(String, bool, String), DefOp>,
    pub(super) vhost_limits: BTreeMap<String, BTreeMap<String, i64>>,
    pub(super) user_limits: BTreeMap<String, BTreeMap<String, i64>>,
}

pub(super) struct ExModel {
    pub(super) id: u32,
    pub(super) kind: String,
    pub(super) auto_delete: bool,
    pub(super) internal: bool,
    pub(super) arguments: FieldTable,
}

pub(super) struct QModel {
    pub(super) id: u32,
    pub(super) auto_delete: bool,
    pub(super) arguments: FieldTable,
}

#[derive(PartialEq)]
pub(super) struct BModel {
    pub(super) vhost: String,
    pub(super) source: String,
    pub(super) destination: String,
    pub(super) destination_type: String,
    pub(super) routing_key: String,
    pub(super) arguments: FieldTable,
}

impl Model {
    /// Bindings to queue `name`.
    pub(super) fn drop_queue_bindings(&mut self, vhost: &str, name: &str) {
        self.bindings.retain(|b| {
            !(b.vhost == vhost && b.destination_type == "queue" && b.destination == name)
        });
    }

    /// Bindings from or to exchange `name`.
    pub(super) fn drop_exchange_bindings(&mut self, vhost: &str, name: &str) {
        self.bindings.retain(|b| {
            !(b.vhost == vhost
                && (b.source == name
                    || (b.destination_type == "exchange" && b.destination == name)))
        });
    }

    pub(super) fn apply(&mut self, op: DefOp) {
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
                self.policies.retain(|(v, _, _), _| *v != name);
                self.vhost_limits.remove(&name);
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
                self.user_limits.remove(&name);
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
            DefOp::SetPolicy {
                ref vhost,
                ref name,
                operator,
                ..
            } => {
                self.policies
                    .insert((vhost.clone(), operator, name.clone()), op);
            }
            DefOp::ClearPolicy {
                vhost,
                name,
                operator,
            } => {
                self.policies.remove(&(vhost, operator, name));
            }
            DefOp::SetVhostLimits { vhost, limits } => {
                if limits.is_empty() {
                    self.vhost_limits.remove(&vhost);
                } else {
                    self.vhost_limits.insert(vhost, limits);
                }
            }
            DefOp::SetUserLimits { user, limits } => {
                if limits.is_empty() {
                    self.user_limits.remove(&user);
                } else {
                    self.user_limits.insert(user, limits);
                }
            }
        }
    }

    pub(super) fn to_ops(&self) -> Vec<DefOp> {
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
        ops.extend(self.policies.values().cloned());
        for (v, l) in &self.vhost_limits {
            ops.push(DefOp::SetVhostLimits {
                vhost: v.clone(),
                limits: l.clone(),
            });
        }
        for (u, l) in &self.user_limits {
            ops.push(DefOp::SetUserLimits {
                user: u.clone(),
                limits: l.clone(),
            });
        }
        ops
    }
}
