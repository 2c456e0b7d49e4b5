//! Users, passwords and permissions: who may connect to which vhost and
//! configure, write or read which resource (RabbitMQ's regex permissions).
//!
//! Owns the password hashing (RabbitMQ's salted SHA-256, so hashes move
//! between the two brokers) and the access check every layer calls before a
//! side effect. Changes are durable through the definitions log
//! ([`Broker::persist`]). Never imports the channel, connection or mgmt layers.

use super::*;

#[derive(Clone, Debug)]
pub struct User {
    pub name: String,
    /// base64(salt(4) ++ sha256(salt ++ password)), RabbitMQ's default scheme.
    pub password_hash: String,
    pub tags: Vec<String>,
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Configure,
    Write,
    Read,
}

impl Broker {
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
        // RabbitMQ checks the default exchange under the name amq.default.
        let name = if kind == "exchange" && name.is_empty() {
            "amq.default"
        } else {
            name
        };
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
        self.user_limits.write().remove(name);
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

impl Permission {
    /// RabbitMQ's semantics: a pattern grants access when it matches
    /// anywhere in the resource name (an unanchored search, so `^app\.`
    /// allows `app.q1` and `own` allows `my.own`); the empty pattern means
    /// `^$`, no access.
    pub fn new(configure: &str, write: &str, read: &str) -> Result<Self, String> {
        let search = |p: &str| {
            let p = if p.is_empty() { "^$" } else { p };
            Regex::new(p).map_err(|e| format!("invalid permission regex {p:?}: {e}"))
        };
        Ok(Permission {
            configure: configure.into(),
            write: write.into(),
            read: read.into(),
            re: [search(configure)?, search(write)?, search(read)?],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Permission;

    fn allows(pattern: &str, name: &str) -> bool {
        Permission::new(pattern, "", "").unwrap().re[0].is_match(name)
    }

    #[test]
    fn patterns_are_searched_as_rabbitmq_does() {
        assert!(allows(r"^app\.", "app.q1"));
        assert!(!allows(r"^app\.", "my.app.q"));
        assert!(allows("own", "my.own"));
        assert!(allows(r"^amq\.gen.*", "amq.gen-abc"));
        assert!(!allows(r"^amq\.gen.*", "q.amq.gen"));
        assert!(allows(".*", ""));
        assert!(allows(".*", "anything"));
        // "" is "^$": nothing but the empty name.
        assert!(!allows("", "q"));
        assert!(allows("", ""));
        assert!(Permission::new("(", ".*", ".*").is_err());
    }
}
