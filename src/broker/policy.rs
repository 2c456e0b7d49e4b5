//! Policies and operator policies, with RabbitMQ 3.10's semantics.
//!
//! Owns: validation of a policy (RabbitMQ's keys, types, ranges and texts),
//! the set of policies of every vhost, which policy and which operator
//! policy apply to a queue or an exchange (the highest priority among those
//! whose pattern matches the name, as an unanchored regex search), and
//! their merged definition. On a priority tie RabbitMQ takes the first in
//! its parameter table's internal order (a stable sort over an unordered
//! table: in effect unspecified); lepus takes the name that sorts first, so
//! the choice is at least deterministic.
//!
//! A change is validated first, made durable in the definitions log, then
//! re-evaluated for every queue and exchange of the vhost: queues take new
//! settings at run time ([`Queue::apply_policy`]), never a redeclare.
//! Delegates how a queue or exchange combines its arguments with the merged
//! definition to [`crate::broker::queue::QueueArgs::with_policy`] and
//! [`Exchange::apply_policy`].

use super::*;
use serde_json::{json, Map, Value};

/// Which objects a policy applies to (`apply-to`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApplyTo {
    Queues,
    Exchanges,
    All,
}

impl ApplyTo {
    pub fn as_str(self) -> &'static str {
        match self {
            ApplyTo::Queues => "queues",
            ApplyTo::Exchanges => "exchanges",
            ApplyTo::All => "all",
        }
    }
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queues" => ApplyTo::Queues,
            "exchanges" => ApplyTo::Exchanges,
            "all" => ApplyTo::All,
            _ => return None,
        })
    }
}

/// A validated policy (or operator policy).
#[derive(Clone, Debug)]
pub struct Policy {
    pub vhost: String,
    pub name: String,
    pub operator: bool,
    pub pattern: String,
    pub apply_to: ApplyTo,
    pub definition: Map<String, Value>,
    /// A JSON number, as given (RabbitMQ takes any number).
    pub priority: serde_json::Number,
    re: Regex,
}

impl Policy {
    /// RabbitMQ's JSON shape (`/api/policies`, definitions).
    pub fn to_json(&self) -> Value {
        json!({
            "vhost": self.vhost,
            "name": self.name,
            "pattern": self.pattern,
            "apply-to": self.apply_to.as_str(),
            "definition": self.definition,
            "priority": self.priority,
        })
    }

    fn priority(&self) -> f64 {
        self.priority.as_f64().unwrap_or(0.0)
    }

    fn matches(&self, name: &str, queue: bool) -> bool {
        let kind_ok = match self.apply_to {
            ApplyTo::All => true,
            ApplyTo::Queues => queue,
            ApplyTo::Exchanges => !queue,
        };
        kind_ok && self.re.is_match(name)
    }

    fn to_op(&self) -> DefOp {
        DefOp::SetPolicy {
            vhost: self.vhost.clone(),
            name: self.name.clone(),
            operator: self.operator,
            pattern: self.pattern.clone(),
            apply_to: self.apply_to.as_str().into(),
            definition: Value::Object(self.definition.clone()),
            priority: Value::Number(self.priority.clone()),
        }
    }
}

/// Why a policy or limit change was not made.
#[derive(Debug)]
pub enum PolicyError {
    /// Bad input: RabbitMQ's validation text ("Validation failed\n\n...").
    Invalid(String),
    /// The vhost (or user) does not exist.
    NotFound,
    /// The change could not be made durable.
    Failed(AmqpError),
}

impl From<AmqpError> for PolicyError {
    fn from(e: AmqpError) -> Self {
        PolicyError::Failed(e)
    }
}

/// RabbitMQ's wrapping of parameter validation errors.
pub(super) fn validation_failed(errors: &[String]) -> String {
    let mut s = String::from("Validation failed\n\n");
    for e in errors {
        s.push_str(e);
        s.push('\n');
    }
    s
}

/// A JSON value as Erlang's `~p` prints the term RabbitMQ decodes it to.
pub(super) fn erl(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("<<\"{s}\">>"),
        Value::Array(a) => format!("[{}]", a.iter().map(erl).collect::<Vec<_>>().join(",")),
        Value::Object(m) => format!(
            "#{{{}}}",
            m.iter()
                .map(|(k, v)| format!("<<\"{k}\">> => {}", erl(v)))
                .collect::<Vec<_>>()
                .join(",")
        ),
    }
}

/// Keys whose policy and operator-policy values merge as the lower of the two.
const MIN_KEYS: &[&str] = &[
    "expires",
    "message-ttl",
    "max-length",
    "max-length-bytes",
    "max-in-memory-length",
    "max-in-memory-bytes",
    "delivery-limit",
];

/// Keys an operator policy may set (RabbitMQ 3.10's list).
const OPERATOR_KEYS: &[&str] = MIN_KEYS;

/// Keys RabbitMQ accepts that mean nothing on a single lepus node (mirroring,
/// leader placement, memory modes): validated where RabbitMQ validates, then
/// ignored.
const IGNORED_KEYS: &[&str] = &[
    "queue-mode",
    "max-in-memory-length",
    "max-in-memory-bytes",
    "ha-mode",
    "ha-params",
    "ha-sync-mode",
    "ha-sync-batch-size",
    "ha-promote-on-shutdown",
    "ha-promote-on-failure",
    "queue-master-locator",
    "queue-leader-locator",
    "initial-cluster-size",
];

/// One definition key's check, with rabbit_policies' texts.
fn check_key(key: &str, v: &Value) -> Option<Result<(), String>> {
    let s = || v.is_string();
    let int_at_least = |min: i64| v.as_i64().is_some_and(|n| n >= min) && !v.is_f64();
    let (ok, what) = match key {
        "alternate-exchange" => (s(), "is not a valid alternate exchange name"),
        "dead-letter-exchange" => (s(), "is not a valid dead letter exchange name"),
        "dead-letter-routing-key" => (s(), "is not a valid dead letter routing key"),
        "message-ttl" => (int_at_least(0), "is not a valid message TTL"),
        "expires" => (int_at_least(1), "is not a valid queue expiry"),
        "max-length" => (int_at_least(0), "is not a valid maximum length"),
        "max-length-bytes" => (int_at_least(0), "is not a valid maximum length in bytes"),
        "max-in-memory-length" | "max-in-memory-bytes" => {
            (int_at_least(0), "is not a valid maximum memory in bytes")
        }
        "delivery-limit" => (int_at_least(0), "is not a valid delivery limit"),
        "queue-mode" => (
            matches!(v.as_str(), Some("default" | "lazy")),
            "is not a valid queue-mode value",
        ),
        "overflow" => (
            matches!(
                v.as_str(),
                Some("drop-head" | "reject-publish" | "reject-publish-dlx")
            ),
            "is not a valid overflow value",
        ),
        "queue-leader-locator" => (
            matches!(
                v.as_str(),
                Some("client-local" | "random" | "least-leaders")
            ),
            "is not a valid queue leader locator value",
        ),
        "initial-cluster-size" => (int_at_least(0), "is not a valid cluster size"),
        // Lepus-only: deduplication (the x-message-deduplication arguments).
        "message-deduplication" => (v.is_boolean(), "is not a valid deduplication flag"),
        "cache-size" => (int_at_least(1), "is not a valid deduplication cache size"),
        "cache-ttl" => (int_at_least(1), "is not a valid deduplication cache TTL"),
        "deduplication-header" => (s(), "is not a valid deduplication header name"),
        k if IGNORED_KEYS.contains(&k) => (true, ""),
        _ => return None,
    };
    Some(if ok {
        Ok(())
    } else {
        Err(format!("{} {what}", erl(v)))
    })
}

/// Check a definition: every key known (for an operator policy, one of the
/// keys an operator policy may set) and of the right type and range.
fn check_definition(def: &Value, operator: bool, name: &str) -> Result<(), String> {
    let m = match def {
        Value::Object(m) if m.is_empty() => return Err("no policy provided".into()),
        Value::Object(m) => m,
        other => {
            return Err(format!(
                "parse error while reading policy {name}: {}. Validator: {}.",
                erl(other),
                if operator {
                    "operator_policy_validator"
                } else {
                    "policy_validator"
                }
            ))
        }
    };
    let mut unknown = vec![];
    for (k, v) in m {
        let known = !operator || OPERATOR_KEYS.contains(&k.as_str());
        match check_key(k, v).filter(|_| known) {
            Some(Ok(())) => {}
            Some(Err(e)) => return Err(e),
            None => unknown.push(format!("{{<<\"{k}\">>,{}}}", erl(v))),
        }
    }
    if !unknown.is_empty() {
        return Err(format!(
            "[{}] are not recognised policy settings",
            unknown.join(",")
        ));
    }
    Ok(())
}

/// Validate a policy as given (the management API's body, a definitions
/// entry or a logged op): `pattern` and `definition` are mandatory,
/// `priority` defaults to 0 and `apply-to` to `all`. Other fields are
/// ignored, as RabbitMQ's API and definitions import read only these.
pub fn parse(vhost: &str, name: &str, operator: bool, body: &Value) -> Result<Policy, String> {
    let Value::Object(b) = body else {
        return Err(validation_failed(&[format!(
            "{name} not a list {}",
            erl(body)
        )]));
    };
    let mut errors = vec![];
    let priority = match b.get("priority") {
        None | Some(Value::Null) => serde_json::Number::from(0),
        Some(Value::Number(n)) => n.clone(),
        Some(other) => {
            errors.push(format!(
                "priority should be a number, actually was {}",
                erl(other)
            ));
            serde_json::Number::from(0)
        }
    };
    let mut re = None;
    match b.get("pattern") {
        None => errors.push(format!("Key \"pattern\" not found in {name}")),
        Some(Value::String(p)) => match Regex::new(p) {
            Ok(r) => re = Some(r),
            Err(e) => errors.push(format!(
                "pattern should be regular expression but is invalid: {}",
                e.to_string().lines().last().unwrap_or("invalid").trim()
            )),
        },
        Some(other) => errors.push(format!("pattern should be a binary but was {}", erl(other))),
    }
    let apply_to = match b.get("apply-to") {
        None | Some(Value::Null) => ApplyTo::All,
        Some(Value::String(s)) => ApplyTo::parse(s).unwrap_or_else(|| {
            errors.push(format!(
                "apply-to '{s}' unrecognised; should be 'queues', 'exchanges' or 'all'"
            ));
            ApplyTo::All
        }),
        Some(other) => {
            errors.push(format!(
                "apply-to '{}' unrecognised; should be 'queues', 'exchanges' or 'all'",
                erl(other)
            ));
            ApplyTo::All
        }
    };
    let definition = match b.get("definition") {
        None => {
            errors.push(format!("Key \"definition\" not found in {name}"));
            Map::new()
        }
        Some(d) => match check_definition(d, operator, name) {
            Ok(()) => d.as_object().cloned().unwrap_or_default(),
            Err(e) => {
                errors.push(e);
                Map::new()
            }
        },
    };
    if !errors.is_empty() {
        return Err(validation_failed(&errors));
    }
    let pattern = b["pattern"].as_str().unwrap_or_default().to_owned();
    Ok(Policy {
        vhost: vhost.to_owned(),
        name: name.to_owned(),
        operator,
        pattern,
        apply_to,
        definition,
        priority,
        re: re.expect("pattern checked"),
    })
}

/// The policy and operator policy in force for one queue or exchange, and
/// their merged definition (RabbitMQ's `effective_policy_definition`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Applied {
    pub policy: Option<String>,
    pub operator_policy: Option<String>,
    pub definition: Map<String, Value>,
}

impl Applied {
    /// Merge: every key of either; for a key in both, the lower of the two
    /// (the operator policy caps the policy).
    fn of(p: Option<&Policy>, op: Option<&Policy>) -> Applied {
        let mut definition = p.map(|p| p.definition.clone()).unwrap_or_default();
        if let Some(op) = op {
            for (k, v) in &op.definition {
                let merged = match (definition.get(k), MIN_KEYS.contains(&k.as_str())) {
                    (Some(cur), true) => match (cur.as_i64(), v.as_i64()) {
                        (Some(a), Some(b)) => json!(a.min(b)),
                        _ => v.clone(),
                    },
                    _ => v.clone(),
                };
                definition.insert(k.clone(), merged);
            }
        }
        Applied {
            policy: p.map(|p| p.name.clone()),
            operator_policy: op.map(|p| p.name.clone()),
            definition,
        }
    }

    pub fn policy_json(&self) -> Value {
        self.policy.as_ref().map_or(Value::Null, |p| json!(p))
    }
}

/// Every vhost's policies of both kinds, by (vhost, operator, name).
#[derive(Default)]
pub struct Policies {
    map: BTreeMap<(String, bool, String), Arc<Policy>>,
}

impl Policies {
    pub fn list(&self, vhost: Option<&str>, operator: bool) -> Vec<Arc<Policy>> {
        self.map
            .values()
            .filter(|p| p.operator == operator && vhost.is_none_or(|v| p.vhost == v))
            .cloned()
            .collect()
    }

    pub fn get(&self, vhost: &str, name: &str, operator: bool) -> Option<Arc<Policy>> {
        self.map
            .get(&(vhost.to_owned(), operator, name.to_owned()))
            .cloned()
    }

    /// The one policy of a kind that applies: the highest priority whose
    /// pattern matches; on a tie, the first by name.
    fn best(&self, vhost: &str, name: &str, queue: bool, operator: bool) -> Option<&Policy> {
        let mut best: Option<&Policy> = None;
        for p in self.map.values() {
            if p.operator != operator || p.vhost != vhost || !p.matches(name, queue) {
                continue;
            }
            if best.is_none_or(|b| p.priority() > b.priority()) {
                best = Some(p);
            }
        }
        best
    }

    /// What applies to queue (or exchange) `name` in `vhost`.
    pub fn applied(&self, vhost: &str, name: &str, queue: bool) -> Applied {
        Applied::of(
            self.best(vhost, name, queue, false),
            self.best(vhost, name, queue, true),
        )
    }

    fn insert(&mut self, p: Policy) {
        self.map
            .insert((p.vhost.clone(), p.operator, p.name.clone()), Arc::new(p));
    }

    fn remove(&mut self, vhost: &str, name: &str, operator: bool) -> bool {
        self.map
            .remove(&(vhost.to_owned(), operator, name.to_owned()))
            .is_some()
    }

    pub(super) fn remove_vhost(&mut self, vhost: &str) {
        self.map.retain(|(v, _, _), _| v != vhost);
    }

    /// Replay a logged op into the set (the op was validated before it was
    /// logged; one that no longer validates is skipped with an error).
    pub(super) fn replay(&mut self, op: &DefOp) {
        match op {
            DefOp::SetPolicy {
                vhost,
                name,
                operator,
                pattern,
                apply_to,
                definition,
                priority,
            } => {
                let body = json!({"pattern": pattern, "apply-to": apply_to,
                    "definition": definition, "priority": priority});
                match parse(vhost, name, *operator, &body) {
                    Ok(p) => self.insert(p),
                    Err(e) => tracing::error!(policy = %name, vhost = %vhost, error = %e,
                        "logged policy no longer validates; skipped"),
                }
            }
            DefOp::ClearPolicy {
                vhost,
                name,
                operator,
            } => {
                self.remove(vhost, name, *operator);
            }
            DefOp::DeleteVhost { name } => self.remove_vhost(name),
            _ => {}
        }
    }
}

impl Broker {
    /// The policies (or operator policies) of one vhost, or of all.
    pub fn list_policies(&self, vhost: Option<&str>, operator: bool) -> Vec<Arc<Policy>> {
        self.policies.read().list(vhost, operator)
    }

    pub fn get_policy(&self, vhost: &str, name: &str, operator: bool) -> Option<Arc<Policy>> {
        self.policies.read().get(vhost, name, operator)
    }

    /// Set (or replace) a policy from its JSON body; returns whether one of
    /// that name existed. Validated first (nothing changes on bad input),
    /// then logged, then re-evaluated for every queue and exchange of the vhost.
    pub fn set_policy(
        &self,
        vhost: &str,
        name: &str,
        operator: bool,
        body: &Value,
    ) -> Result<bool, PolicyError> {
        let Some(vh) = self.vhost(vhost) else {
            return Err(PolicyError::NotFound);
        };
        let p = parse(vhost, name, operator, body).map_err(PolicyError::Invalid)?;
        // Under the write lock from the log to the re-evaluation: a queue
        // declared meanwhile is evaluated either before (and re-evaluated
        // here) or after, with the new policy.
        let mut set = self.policies.write();
        self.persist(p.to_op())?;
        let existed = set.get(vhost, name, operator).is_some();
        set.insert(p);
        self.reapply_policies(&set, &vh);
        Ok(existed)
    }

    /// Remove a policy; false if there was none of that name.
    pub fn clear_policy(&self, vhost: &str, name: &str, operator: bool) -> AmqpResult<bool> {
        let mut set = self.policies.write();
        if set.get(vhost, name, operator).is_none() {
            return Ok(false);
        }
        self.persist(DefOp::ClearPolicy {
            vhost: vhost.into(),
            name: name.into(),
            operator,
        })?;
        set.remove(vhost, name, operator);
        if let Some(vh) = self.vhost(vhost) {
            self.reapply_policies(&set, &vh);
        }
        Ok(true)
    }

    /// Re-evaluate which policies apply to every queue and exchange of a vhost.
    pub(super) fn reapply_policies(&self, set: &Policies, vh: &VHost) {
        let queues: Vec<Arc<Queue>> = vh.queues.read().values().cloned().collect();
        for q in queues {
            let a = set.applied(&vh.name, &q.name, true);
            if a != *q.applied() {
                q.apply_policy(a, true);
            }
        }
        let exchanges: Vec<Arc<Exchange>> = vh.exchanges.read().values().cloned().collect();
        for x in exchanges.iter().filter(|x| !x.name.is_empty()) {
            let a = set.applied(&vh.name, &x.name, false);
            if a != *x.applied() {
                x.apply_policy(a, self.store.files());
            }
        }
    }

    /// What applies to a new queue or exchange (before it is inserted; the
    /// caller holds the returned guard until it is, see [`Broker::set_policy`]).
    pub(super) fn policies_for_new(&self) -> parking_lot::RwLockReadGuard<'_, Policies> {
        self.policies.read()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(body: Value) -> Result<Policy, String> {
        parse("/", "p", false, &body)
    }

    #[test]
    fn rabbitmq_validation_texts() {
        let e = p(json!({"pattern": ".*", "definition": {"message-ttl": -1}})).unwrap_err();
        assert_eq!(e, "Validation failed\n\n-1 is not a valid message TTL\n");
        let e = p(json!({"pattern": ".*", "definition": {"max-length": "x"}})).unwrap_err();
        assert!(e.contains("<<\"x\">> is not a valid maximum length"), "{e}");
        let e = p(json!({"pattern": ".*", "definition": {"max-priority": 10}})).unwrap_err();
        assert!(
            e.contains("[{<<\"max-priority\">>,10}] are not recognised policy settings"),
            "{e}"
        );
        let e = p(json!({"pattern": "(", "definition": {"expires": 5}})).unwrap_err();
        assert!(e.contains("pattern should be regular expression but is invalid"));
        let e = p(json!({"pattern": "a", "definition": {"expires": 0}})).unwrap_err();
        assert!(e.contains("0 is not a valid queue expiry"), "{e}");
        let e = p(json!({"pattern": "a", "apply-to": "nope", "definition": {"expires": 5}}))
            .unwrap_err();
        assert!(e.contains("apply-to 'nope' unrecognised"), "{e}");
        let e = p(json!({"pattern": "a", "priority": "high", "definition": {"expires": 5}}))
            .unwrap_err();
        assert!(
            e.contains("priority should be a number, actually was <<\"high\">>"),
            "{e}"
        );
        // operator policies take limits and TTLs only
        let e = parse(
            "/",
            "op",
            true,
            &json!({"pattern": "a", "definition": {"dead-letter-exchange": "dlx"}}),
        )
        .unwrap_err();
        assert!(e.contains("are not recognised policy settings"), "{e}");
        assert!(p(json!({"pattern": "a", "definition": {"queue-mode": "lazy"}})).is_ok());
    }

    #[test]
    fn highest_priority_wins_ties_by_name_and_operator_caps() {
        let mut s = Policies::default();
        for (name, prio, ttl) in [("b", 1, 100), ("a", 1, 200), ("c", 0, 300)] {
            s.insert(
                parse(
                    "/",
                    name,
                    false,
                    &json!({"pattern": "^q", "priority": prio, "definition": {"message-ttl": ttl, "max-length": 50}}),
                )
                .unwrap(),
            );
        }
        s.insert(
            parse(
                "/",
                "cap",
                true,
                &json!({"pattern": "q", "definition": {"max-length": 10, "expires": 1000}}),
            )
            .unwrap(),
        );
        let a = s.applied("/", "q1", true);
        assert_eq!(a.policy.as_deref(), Some("a"));
        assert_eq!(a.operator_policy.as_deref(), Some("cap"));
        assert_eq!(
            Value::Object(a.definition),
            json!({"message-ttl": 200, "max-length": 10, "expires": 1000})
        );
        assert_eq!(s.applied("/", "x", true), Applied::default());
        assert_eq!(s.applied("/", "q1", false).policy.as_deref(), Some("a"));
    }
}
