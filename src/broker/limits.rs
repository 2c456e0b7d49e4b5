//! Vhost limits (`max-connections`, `max-queues`) and user limits
//! (`max-connections`, `max-channels`), with RabbitMQ 3.10's semantics and
//! texts: a negative value means no limit, 0 allows none.
//!
//! Owns the limits and the checks the connection layer (connection.open,
//! channel.open) and [`Broker::declare_queue`] make. Changes are validated,
//! then made durable in the definitions log, then take effect for the next
//! connection, channel or declare (what is open stays open, as in RabbitMQ).

use super::policy::{erl, validation_failed, PolicyError};
use super::*;
use serde_json::Value;

/// Limits by name ("max-connections" → 10).
pub type Limits = BTreeMap<String, i64>;

pub const VHOST_LIMITS: &[&str] = &["max-connections", "max-queues"];
pub const USER_LIMITS: &[&str] = &["max-connections", "max-channels"];

/// Check one limit's value (an integer), or a whole set of limits, with
/// RabbitMQ's texts; `what` names the set ("limits", "user-limits").
pub fn check_limits(
    set: &serde_json::Map<String, Value>,
    known: &[&str],
    what: &str,
) -> Result<Limits, String> {
    let mut errors = vec![];
    let mut out = Limits::new();
    let mut unknown = vec![];
    for (k, v) in set {
        if !known.contains(&k.as_str()) {
            unknown.push(format!("{{<<\"{k}\">>,{}}}", erl(v)));
            continue;
        }
        match v.as_i64().filter(|_| !v.is_f64()) {
            Some(n) => {
                out.insert(k.clone(), n);
            }
            None => errors.push(format!("{k} should be a number, actually was {}", erl(v))),
        }
    }
    if !unknown.is_empty() {
        errors.insert(
            0,
            format!("Unrecognised terms [{}] in {what}", unknown.join(",")),
        );
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(validation_failed(&errors))
    }
}

/// A limit in force: `Some(n)` for n >= 0.
fn limit(l: Option<&Limits>, name: &str) -> Option<u64> {
    l.and_then(|l| l.get(name))
        .copied()
        .filter(|n| *n >= 0)
        .map(|n| n as u64)
}

impl Broker {
    pub fn vhost_limits(&self, vhost: &str) -> Limits {
        self.vhost_limits
            .read()
            .get(vhost)
            .cloned()
            .unwrap_or_default()
    }

    pub fn user_limits(&self, user: &str) -> Limits {
        self.user_limits
            .read()
            .get(user)
            .cloned()
            .unwrap_or_default()
    }

    /// Every vhost (or user) with limits, sorted.
    pub fn all_vhost_limits(&self) -> Vec<(String, Limits)> {
        let mut v: Vec<_> = self
            .vhost_limits
            .read()
            .iter()
            .filter(|(_, l)| !l.is_empty())
            .map(|(k, l)| (k.clone(), l.clone()))
            .collect();
        v.sort();
        v
    }

    pub fn all_user_limits(&self) -> Vec<(String, Limits)> {
        let mut v: Vec<_> = self
            .user_limits
            .read()
            .iter()
            .filter(|(_, l)| !l.is_empty())
            .map(|(k, l)| (k.clone(), l.clone()))
            .collect();
        v.sort();
        v
    }

    /// Replace a vhost's limits (validated by [`check_limits`]); empty clears.
    pub fn set_vhost_limits(&self, vhost: &str, limits: Limits) -> Result<(), PolicyError> {
        if self.vhost(vhost).is_none() {
            return Err(PolicyError::NotFound);
        }
        known_terms(&limits, VHOST_LIMITS, "limits")?;
        let mut all = self.vhost_limits.write();
        self.persist(DefOp::SetVhostLimits {
            vhost: vhost.into(),
            limits: limits.clone(),
        })?;
        all.insert(vhost.to_owned(), limits);
        Ok(())
    }

    /// Replace a user's limits; empty clears.
    pub fn set_user_limits(&self, user: &str, limits: Limits) -> Result<(), PolicyError> {
        if !self.users.read().contains_key(user) {
            return Err(PolicyError::NotFound);
        }
        known_terms(&limits, USER_LIMITS, "user-limits")?;
        let mut all = self.user_limits.write();
        self.persist(DefOp::SetUserLimits {
            user: user.into(),
            limits: limits.clone(),
        })?;
        all.insert(user.to_owned(), limits);
        Ok(())
    }

    /// connection.open: the vhost's, then the user's connection limit, with
    /// RabbitMQ's 530 texts (rabbit_reader).
    pub fn check_connection_limits(&self, user: &str, vhost: &str) -> AmqpResult<()> {
        let vmax = limit(self.vhost_limits.read().get(vhost), "max-connections");
        let umax = limit(self.user_limits.read().get(user), "max-connections");
        if vmax.is_none() && umax.is_none() {
            return Ok(());
        }
        let (in_vhost, of_user) = {
            let conns = self.connections.lock();
            (
                conns.values().filter(|(i, _)| i.vhost == vhost).count() as u64,
                conns.values().filter(|(i, _)| i.user == user).count() as u64,
            )
        };
        if let Some(max) = vmax.filter(|m| in_vhost >= *m) {
            return Err(AmqpError::not_allowed(format!(
                "access to vhost '{vhost}' refused for user '{user}': connection limit ({max}) is reached"
            )));
        }
        if let Some(max) = umax.filter(|m| of_user >= *m) {
            return Err(AmqpError::not_allowed(format!(
                "Connection refused for user '{user}': user connection limit ({max}) is reached"
            )));
        }
        Ok(())
    }

    /// channel.open: the user's channel limit over all its connections
    /// (a connection error, 530, as in RabbitMQ).
    pub fn check_channel_limit(&self, user: &str) -> AmqpResult<()> {
        let Some(max) = limit(self.user_limits.read().get(user), "max-channels") else {
            return Ok(());
        };
        let open: u64 = self
            .connections
            .lock()
            .values()
            .filter(|(i, _)| i.user == user)
            .map(|(i, _)| i.channels as u64)
            .sum();
        if open >= max {
            return Err(AmqpError::not_allowed(format!(
                "number of channels opened for user '{user}' has reached the maximum allowed user limit of ({max})"
            ))
            .hard());
        }
        Ok(())
    }

    /// queue.declare of a new queue: the vhost's queue limit (406, as
    /// rabbit_amqqueue's check_vhost_queue_limit).
    pub(super) fn check_queue_limit(&self, vhost: &VHost, name: &str) -> AmqpResult<()> {
        let Some(max) = limit(self.vhost_limits.read().get(&vhost.name), "max-queues") else {
            return Ok(());
        };
        if vhost.queues.read().len() as u64 + 1 > max {
            return Err(AmqpError::precondition(format!(
                "cannot declare queue '{name}': queue limit in vhost '{}' ({max}) is reached",
                vhost.name
            )));
        }
        Ok(())
    }
}

/// RabbitMQ's refusal of a limit it does not know ("Unrecognised terms
/// [{<<"max-x">>,1}] in limits").
fn known_terms(limits: &Limits, known: &[&str], what: &str) -> Result<(), PolicyError> {
    match limits.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(PolicyError::Invalid(validation_failed(&[format!(
            "Unrecognised terms [{{<<\"{k}\">>,{}}}] in {what}",
            limits[k]
        )]))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn limit_validation_texts() {
        let m = |v: Value| v.as_object().unwrap().clone();
        assert_eq!(
            check_limits(&m(json!({"max-connections": 5})), VHOST_LIMITS, "limits").unwrap()
                ["max-connections"],
            5
        );
        let e =
            check_limits(&m(json!({"max-connections": "x"})), VHOST_LIMITS, "limits").unwrap_err();
        assert_eq!(
            e,
            "Validation failed\n\nmax-connections should be a number, actually was <<\"x\">>\n"
        );
        let e = check_limits(&m(json!({"max-channels": 1})), VHOST_LIMITS, "limits").unwrap_err();
        assert!(
            e.contains("Unrecognised terms [{<<\"max-channels\">>,1}] in limits"),
            "{e}"
        );
    }
}
