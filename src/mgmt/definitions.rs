//! Definitions export and import in RabbitMQ's JSON format (`/api/definitions`).
//!
//! Export lists users (with their salted SHA-256 hashes, RabbitMQ's default
//! scheme, so they import into RabbitMQ and back), vhosts, permissions, and
//! the durable exchanges, queues and bindings.
//!
//! Import validates the whole document first, against the broker's current
//! state and against itself, and only then applies it: a document that does
//! not validate is a 400 and changes nothing. Policies, operator policies
//! (RabbitMQ exports them as parameters of component `operator_policy`),
//! vhost limits (parameters of component `vhost-limits`, or a vhost's
//! `limits`) and user limits (a user's `limits`) are exported and imported;
//! other parameters, global parameters and topic permissions are not
//! supported: they are skipped, and the answer says so.
//!
//! Validation calls the broker's own checks: exchange types
//! ([`crate::broker::exchange_kind`]), queue and exchange arguments
//! ([`crate::broker::args::validate_queue_args`], [`crate::broker::args::validate_exchange_args`]),
//! quorum queues ([`crate::broker::args::is_quorum`], [`crate::broker::args::validate_quorum`]),
//! argument equivalence ([`crate::broker::args::check_equivalent`]) and permission
//! regexes ([`Permission::new`]) and binding arguments
//! ([`crate::broker::check_binding_args`]). What the broker checks inline in
//! `declare_exchange`, `declare_queue` and `bind` (the flags' equivalence,
//! reserved names) is
//! checked here too, against the plan as well as the live objects, with this
//! API's texts. Applying goes through the broker's `add_vhost`, `put_user`,
//! `set_permissions`, `declare_exchange`, `declare_queue` and `bind`.

use super::common::{blocking, parse_body, ApiError, ApiResult, Caller};
use super::json::{json_to_table, table_to_json};
use super::users::{check_password_hash, parse_tags};
use super::App;
use crate::broker::exchange::Dest;
use crate::broker::limits::{check_limits, Limits, USER_LIMITS, VHOST_LIMITS};
use crate::broker::{Broker, Permission};
use amq_protocol::types::FieldTable;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};

const RABBIT_VERSION: &str = "3.10.0";
const HASHING: &str = "rabbit_password_hashing_sha256";
const DELAYED_TYPE_MISSING: &str =
    "x-delayed-message needs an x-delayed-type argument naming an exchange type";

// ----- export -----

fn header() -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    m.insert("rabbit_version".into(), json!(RABBIT_VERSION));
    m.insert("rabbitmq_version".into(), json!(RABBIT_VERSION));
    m.insert("product_name".into(), json!("Lepus"));
    m.insert("product_version".into(), json!(env!("CARGO_PKG_VERSION")));
    m
}

/// Durable exchanges, queues and bindings of a vhost as definitions
/// (with a "vhost" field unless `scoped`).
fn objects(broker: &Broker, vhost: &str, scoped: bool) -> (Vec<Value>, Vec<Value>, Vec<Value>) {
    let (mut qs, mut xs, mut bs) = (vec![], vec![], vec![]);
    let Some(v) = broker.vhost(vhost) else {
        return (qs, xs, bs);
    };
    let with_vhost = |mut j: Value| {
        if !scoped {
            j["vhost"] = json!(vhost);
        }
        j
    };
    let mut queues: Vec<_> = v.queues.read().values().cloned().collect();
    queues.sort_by(|a, b| a.name.cmp(&b.name));
    for q in queues
        .iter()
        .filter(|q| q.durable && q.exclusive_owner.is_none())
    {
        qs.push(with_vhost(json!({
            "name": q.name,
            "durable": true,
            "auto_delete": q.auto_delete,
            "arguments": table_to_json(&q.arguments),
        })));
    }
    let mut exchanges: Vec<_> = v.exchanges.read().values().cloned().collect();
    exchanges.sort_by(|a, b| a.name.cmp(&b.name));
    for e in exchanges
        .iter()
        .filter(|e| e.durable && !e.name.is_empty() && !e.name.starts_with("amq."))
    {
        xs.push(with_vhost(json!({
            "name": e.name,
            "type": e.type_name,
            "durable": true,
            "auto_delete": e.auto_delete,
            "internal": e.internal,
            "arguments": table_to_json(&e.arguments),
        })));
    }
    let mut binds = vec![];
    for e in exchanges.iter().filter(|e| e.durable && !e.name.is_empty()) {
        for b in e.bindings.read().all.iter() {
            let dest_ok = match &b.dest {
                Dest::Queue(q) => q.durable && q.exclusive_owner.is_none(),
                Dest::Exchange(x) => x.durable,
            };
            if dest_ok {
                binds.push((
                    e.name.clone(),
                    b.dest.kind(),
                    b.dest.name().to_owned(),
                    b.routing_key.clone(),
                    table_to_json(&b.arguments),
                ));
            }
        }
    }
    binds.sort_by(|a, b| {
        (&a.0, a.1, &a.2, &a.3, a.4.to_string()).cmp(&(&b.0, b.1, &b.2, &b.3, b.4.to_string()))
    });
    for (source, kind, dest, rk, args) in binds {
        bs.push(with_vhost(json!({
            "source": source,
            "destination": dest,
            "destination_type": kind,
            "routing_key": rk,
            "arguments": args,
        })));
    }
    (qs, xs, bs)
}

/// Policies in RabbitMQ's export shape (without "vhost" when `scope` is given).
fn policies(broker: &Broker, scope: Option<&str>) -> Vec<Value> {
    broker
        .list_policies(scope, false)
        .iter()
        .map(|p| {
            let mut j = p.to_json();
            if scope.is_some() {
                j.as_object_mut().map(|o| o.remove("vhost"));
            }
            j
        })
        .collect()
}

/// Runtime parameters as RabbitMQ exports them: operator policies
/// (component "operator_policy") and vhost limits ("vhost-limits", name
/// "limits"), sorted by vhost.
fn parameters(broker: &Broker, scope: Option<&str>) -> Vec<Value> {
    let mut out = vec![];
    let mut limits = broker.all_vhost_limits();
    limits.retain(|(v, _)| scope.is_none_or(|s| s == v));
    for (v, l) in limits {
        out.push(json!({"value": l, "vhost": v, "component": "vhost-limits", "name": "limits"}));
    }
    for p in broker.list_policies(scope, true) {
        out.push(json!({
            "value": {"pattern": p.pattern, "apply-to": p.apply_to.as_str(),
                      "definition": p.definition, "priority": p.priority},
            "vhost": p.vhost,
            "component": "operator_policy",
            "name": p.name,
        }));
    }
    if scope.is_some() {
        for j in &mut out {
            j.as_object_mut().map(|o| o.remove("vhost"));
        }
    }
    out
}

pub fn export(broker: &Broker) -> Value {
    let mut m = header();
    let mut users: Vec<_> = broker.users.read().values().cloned().collect();
    users.sort_by(|a, b| a.name.cmp(&b.name));
    m.insert(
        "users".into(),
        Value::Array(
            users
                .iter()
                .map(|u| {
                    json!({
                        "name": u.name,
                        "password_hash": u.password_hash,
                        "hashing_algorithm": HASHING,
                        "tags": u.tags,
                        "limits": broker.user_limits(&u.name),
                    })
                })
                .collect(),
        ),
    );
    let mut vhosts: Vec<String> = broker.vhosts.read().keys().cloned().collect();
    vhosts.sort();
    m.insert(
        "vhosts".into(),
        Value::Array(
            vhosts
                .iter()
                .map(|v| json!({"name": v, "limits": [], "metadata": {"description": "", "tags": []}}))
                .collect(),
        ),
    );
    let mut perms: Vec<_> = broker
        .permissions
        .read()
        .iter()
        .map(|((u, v), p)| (u.clone(), v.clone(), p.clone()))
        .collect();
    perms.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    m.insert(
        "permissions".into(),
        Value::Array(
            perms
                .into_iter()
                .map(|(u, v, p)| json!({"user": u, "vhost": v, "configure": p.configure, "write": p.write, "read": p.read}))
                .collect(),
        ),
    );
    m.insert("topic_permissions".into(), json!([]));
    m.insert("parameters".into(), Value::Array(parameters(broker, None)));
    m.insert("global_parameters".into(), json!([]));
    m.insert("policies".into(), Value::Array(policies(broker, None)));
    let (mut qs, mut xs, mut bs) = (vec![], vec![], vec![]);
    for v in &vhosts {
        let (q, x, b) = objects(broker, v, false);
        qs.extend(q);
        xs.extend(x);
        bs.extend(b);
    }
    m.insert("queues".into(), Value::Array(qs));
    m.insert("exchanges".into(), Value::Array(xs));
    m.insert("bindings".into(), Value::Array(bs));
    Value::Object(m)
}

pub async fn export_all(State(app): State<App>, caller: Caller) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    Ok(Json(export(&app.broker)))
}

pub async fn export_vhost(
    State(app): State<App>,
    caller: Caller,
    Path(vhost): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    caller.vhost(&app.broker, &vhost)?;
    let (qs, xs, bs) = objects(&app.broker, &vhost, true);
    let mut m = header();
    m.insert(
        "parameters".into(),
        Value::Array(parameters(&app.broker, Some(&vhost))),
    );
    m.insert(
        "policies".into(),
        Value::Array(policies(&app.broker, Some(&vhost))),
    );
    m.insert("queues".into(), Value::Array(qs));
    m.insert("exchanges".into(), Value::Array(xs));
    m.insert("bindings".into(), Value::Array(bs));
    Ok(Json(Value::Object(m)))
}

// ----- import -----

fn yes() -> bool {
    true
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Defs {
    users: Vec<UserDef>,
    vhosts: Vec<VhostDef>,
    permissions: Vec<PermDef>,
    topic_permissions: Vec<Value>,
    parameters: Vec<ParamDef>,
    global_parameters: Vec<Value>,
    policies: Vec<PolicyDef>,
    queues: Vec<QueueDef>,
    exchanges: Vec<ExchangeDef>,
    bindings: Vec<BindingDef>,
}

#[derive(Deserialize)]
struct UserDef {
    name: String,
    password_hash: Option<String>,
    password: Option<String>,
    hashing_algorithm: Option<String>,
    #[serde(default)]
    tags: Value,
    #[serde(default)]
    limits: Value,
}

#[derive(Deserialize)]
struct VhostDef {
    name: String,
    #[serde(default)]
    limits: Value,
}

#[derive(Deserialize)]
struct ParamDef {
    vhost: Option<String>,
    component: String,
    name: String,
    #[serde(default)]
    value: Value,
}

#[derive(Deserialize)]
struct PolicyDef {
    vhost: Option<String>,
    name: String,
    /// pattern, definition, priority, apply-to: checked by the broker's own
    /// validation ([`crate::broker::policy::parse`]).
    #[serde(flatten)]
    rest: serde_json::Map<String, Value>,
}

#[derive(Deserialize)]
struct PermDef {
    user: String,
    vhost: Option<String>,
    configure: String,
    write: String,
    read: String,
}

#[derive(Deserialize)]
struct QueueDef {
    name: String,
    vhost: Option<String>,
    #[serde(default = "yes")]
    durable: bool,
    #[serde(default)]
    auto_delete: bool,
    #[serde(default)]
    arguments: Value,
}

#[derive(Deserialize)]
struct ExchangeDef {
    name: String,
    vhost: Option<String>,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default = "yes")]
    durable: bool,
    #[serde(default)]
    auto_delete: bool,
    #[serde(default)]
    internal: bool,
    #[serde(default)]
    arguments: Value,
}

#[derive(Deserialize)]
struct BindingDef {
    source: String,
    vhost: Option<String>,
    destination: String,
    destination_type: String,
    #[serde(default)]
    routing_key: String,
    #[serde(default)]
    arguments: Value,
}

#[derive(Clone)]
struct ExPlan {
    vhost: String,
    name: String,
    kind: String,
    durable: bool,
    auto_delete: bool,
    internal: bool,
    arguments: FieldTable,
}

#[derive(Clone)]
struct QPlan {
    vhost: String,
    name: String,
    durable: bool,
    auto_delete: bool,
    arguments: FieldTable,
}

struct BPlan {
    vhost: String,
    source: String,
    destination: String,
    queue: bool,
    routing_key: String,
    arguments: FieldTable,
}

/// A validated document, ready to apply.
#[derive(Default)]
struct Plan {
    vhosts: Vec<String>,
    users: Vec<(String, String, Vec<String>)>,
    perms: Vec<(String, String, String, String, String)>,
    exchanges: Vec<ExPlan>,
    queues: Vec<QPlan>,
    bindings: Vec<BPlan>,
    /// (vhost, name, operator, body)
    policies: Vec<(String, String, bool, Value)>,
    vhost_limits: Vec<(String, Limits)>,
    user_limits: Vec<(String, Limits)>,
    ignored: Vec<String>,
}

fn bad(what: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(format!("{what}: {e}"))
}

/// Check everything; change nothing. `scope` is the vhost of a vhost-scoped import.
fn validate(broker: &Broker, d: Defs, scope: Option<&str>) -> ApiResult<Plan> {
    let mut p = Plan::default();
    let vhost_of = |v: &Option<String>, what: &str| -> ApiResult<String> {
        match (scope, v) {
            (Some(s), _) => Ok(s.to_owned()),
            (None, Some(v)) => Ok(v.clone()),
            (None, None) => Err(ApiError::bad_request(format!("{what}: vhost missing"))),
        }
    };
    let count_ignored = |p: &mut Plan, n: usize, what: &str| {
        if n > 0 {
            p.ignored.push(format!("{n} {what}"));
        }
    };
    count_ignored(&mut p, d.global_parameters.len(), "global parameters");
    count_ignored(&mut p, d.topic_permissions.len(), "topic permissions");
    if scope.is_some() && !(d.users.is_empty() && d.vhosts.is_empty() && d.permissions.is_empty()) {
        return Err(ApiError::bad_request(
            "a vhost-scoped import takes queues, exchanges, bindings, policies and parameters only",
        ));
    }

    for v in &d.vhosts {
        if v.name.is_empty() {
            return Err(ApiError::bad_request("vhost: empty name"));
        }
        if let Value::Object(l) = &v.limits {
            if !l.is_empty() {
                let l = check_limits(l, VHOST_LIMITS, "limits")
                    .map_err(|e| bad(&format!("limits of vhost '{}'", v.name), e))?;
                p.vhost_limits.push((v.name.clone(), l));
            }
        }
        if !p.vhosts.contains(&v.name) {
            p.vhosts.push(v.name.clone());
        }
    }
    let known_vhost =
        |p: &Plan, v: &str| broker.vhost(v).is_some() || p.vhosts.iter().any(|x| x == v);

    let mut user_names: HashSet<String> = broker.users.read().keys().cloned().collect();
    for u in d.users {
        let what = format!("user '{}'", u.name);
        if u.name.is_empty() {
            return Err(ApiError::bad_request("user: empty name"));
        }
        let tags = parse_tags(&u.tags).map_err(|e| bad(&what, e.reason))?;
        let hash = match (u.password_hash, u.password) {
            (Some(h), _) => {
                check_password_hash(&h, u.hashing_algorithm.as_deref())
                    .map_err(|e| bad(&what, e))?;
                h
            }
            (None, Some(pw)) => crate::broker::hash_password(&pw),
            (None, None) => return Err(bad(&what, "password_hash missing")),
        };
        if let Value::Object(l) = &u.limits {
            if !l.is_empty() {
                let l = check_limits(l, USER_LIMITS, "user-limits")
                    .map_err(|e| bad(&format!("limits of {what}"), e))?;
                p.user_limits.push((u.name.clone(), l));
            }
        }
        user_names.insert(u.name.clone());
        p.users.push((u.name, hash, tags));
    }

    for perm in d.permissions {
        let vhost = vhost_of(&perm.vhost, "permission")?;
        let what = format!("permission of user '{}' in vhost '{vhost}'", perm.user);
        if !user_names.contains(&perm.user) {
            return Err(bad(&what, "no such user"));
        }
        if !known_vhost(&p, &vhost) {
            return Err(bad(&what, "no such vhost"));
        }
        Permission::new(&perm.configure, &perm.write, &perm.read).map_err(|e| bad(&what, e))?;
        p.perms
            .push((perm.user, vhost, perm.configure, perm.write, perm.read));
    }

    let mut planned_ex: HashMap<(String, String), ExPlan> = HashMap::new();
    for e in d.exchanges {
        let vhost = vhost_of(&e.vhost, "exchange")?;
        let what = format!("exchange '{}' in vhost '{vhost}'", e.name);
        if !known_vhost(&p, &vhost) {
            return Err(bad(&what, "no such vhost"));
        }
        if e.name.is_empty() {
            return Err(bad(&what, "the default exchange cannot be declared"));
        }
        let arguments = json_to_table(&e.arguments).map_err(|x| bad(&what, x))?;
        // The broker's own type check (declare_exchange's), in this API's
        // words for a delayed exchange without a usable x-delayed-type.
        crate::broker::exchange_kind(&e.kind, &arguments).map_err(|x| {
            if e.kind == "x-delayed-message" {
                bad(&what, DELAYED_TYPE_MISSING)
            } else {
                bad(&what, x.text)
            }
        })?;
        crate::broker::args::validate_exchange_args(&arguments, &e.name, &vhost)
            .map_err(|x| bad(&what, x.text))?;
        let plan = ExPlan {
            vhost: vhost.clone(),
            name: e.name.clone(),
            kind: e.kind.clone(),
            durable: e.durable,
            auto_delete: e.auto_delete,
            internal: e.internal,
            arguments,
        };
        let existing = broker
            .vhost(&vhost)
            .and_then(|v| v.exchange(&e.name))
            .map(|x| ExPlan {
                vhost: vhost.clone(),
                name: x.name.clone(),
                kind: x.type_name.clone(),
                durable: x.durable,
                auto_delete: x.auto_delete,
                internal: x.internal,
                arguments: x.arguments.clone(),
            });
        let key = (vhost.clone(), e.name.clone());
        if let Some(cur) = planned_ex.get(&key).cloned().or(existing) {
            if cur.kind != plan.kind
                || cur.durable != plan.durable
                || cur.auto_delete != plan.auto_delete
                || cur.internal != plan.internal
            {
                return Err(bad(&what, "inequivalent to the existing exchange (type, durable, auto_delete or internal differ)"));
            }
            crate::broker::args::check_equivalent(
                &cur.arguments,
                &plan.arguments,
                "exchange",
                &e.name,
                &vhost,
            )
            .map_err(|x| bad(&what, x.text))?;
            continue;
        }
        if e.name.starts_with("amq.") {
            return Err(bad(&what, "the 'amq.' prefix is reserved"));
        }
        planned_ex.insert(key, plan.clone());
        p.exchanges.push(plan);
    }

    let mut planned_q: HashMap<(String, String), QPlan> = HashMap::new();
    for q in d.queues {
        let vhost = vhost_of(&q.vhost, "queue")?;
        let what = format!("queue '{}' in vhost '{vhost}'", q.name);
        if !known_vhost(&p, &vhost) {
            return Err(bad(&what, "no such vhost"));
        }
        if q.name.is_empty() {
            return Err(bad(&what, "empty name"));
        }
        if q.name.starts_with("amq.") {
            return Err(bad(&what, "the 'amq.' prefix is reserved"));
        }
        let arguments = json_to_table(&q.arguments).map_err(|x| bad(&what, x))?;
        crate::broker::args::validate_queue_args(&arguments, &q.name, &vhost)
            .map_err(|x| bad(&what, x.text))?;
        let plan = QPlan {
            vhost: vhost.clone(),
            name: q.name.clone(),
            durable: q.durable,
            auto_delete: q.auto_delete,
            arguments,
        };
        let live = broker.vhost(&vhost).and_then(|v| v.queue(&q.name));
        if live.as_ref().is_some_and(|x| x.exclusive_owner.is_some()) {
            return Err(bad(&what, "an exclusive queue of that name exists"));
        }
        let existing = live.map(|x| QPlan {
            vhost: vhost.clone(),
            name: x.name.clone(),
            durable: x.durable,
            auto_delete: x.auto_delete,
            arguments: x.arguments.clone(),
        });
        let key = (vhost.clone(), q.name.clone());
        if let Some(cur) = planned_q.get(&key).cloned().or(existing) {
            if cur.durable != plan.durable || cur.auto_delete != plan.auto_delete {
                return Err(bad(
                    &what,
                    "inequivalent to the existing queue (durable or auto_delete differ)",
                ));
            }
            crate::broker::args::check_equivalent(
                &cur.arguments,
                &plan.arguments,
                "queue",
                &q.name,
                &vhost,
            )
            .map_err(|x| bad(&what, x.text))?;
            continue;
        }
        if crate::broker::args::is_quorum(&plan.arguments) {
            crate::broker::args::validate_quorum(
                &plan.arguments,
                &q.name,
                &vhost,
                plan.durable,
                false,
                plan.auto_delete,
            )
            .map_err(|x| bad(&what, x.text))?;
        }
        planned_q.insert(key, plan.clone());
        p.queues.push(plan);
    }

    for b in d.bindings {
        let vhost = vhost_of(&b.vhost, "binding")?;
        let what = format!(
            "binding from '{}' to {} '{}' in vhost '{vhost}'",
            b.source, b.destination_type, b.destination
        );
        if !known_vhost(&p, &vhost) {
            return Err(bad(&what, "no such vhost"));
        }
        if b.source.is_empty() {
            return Err(bad(&what, "the default exchange cannot be bound"));
        }
        let v = broker.vhost(&vhost);
        let ex_known = |name: &str| {
            planned_ex.contains_key(&(vhost.clone(), name.to_owned()))
                || v.as_ref().is_some_and(|v| v.exchange(name).is_some())
        };
        if !ex_known(&b.source) {
            return Err(bad(&what, "no such source exchange"));
        }
        let queue = match b.destination_type.as_str() {
            "queue" => {
                let known = planned_q.contains_key(&(vhost.clone(), b.destination.clone()))
                    || v.as_ref()
                        .is_some_and(|v| v.queue(&b.destination).is_some());
                if !known {
                    return Err(bad(&what, "no such destination queue"));
                }
                true
            }
            "exchange" => {
                if b.destination.is_empty() || !ex_known(&b.destination) {
                    return Err(bad(&what, "no such destination exchange"));
                }
                false
            }
            other => {
                return Err(bad(
                    &what,
                    format!("destination_type must be queue or exchange, not '{other}'"),
                ))
            }
        };
        let arguments = json_to_table(&b.arguments).map_err(|x| bad(&what, x))?;
        // What Broker::bind would refuse, refused here, before anything is
        // applied. Those checks are inline in bind (no function to call).
        let source_kind = planned_ex
            .get(&(vhost.clone(), b.source.clone()))
            .map(|e| {
                crate::broker::exchange_kind(&e.kind, &e.arguments)
                    .ok()
                    .map(|(k, _)| k)
            })
            .unwrap_or_else(|| {
                v.as_ref()
                    .and_then(|v| v.exchange(&b.source))
                    .map(|e| e.kind)
            });
        if let Some(kind) = source_kind {
            crate::broker::check_binding_args(kind, &b.routing_key, &arguments)
                .map_err(|e| bad(&what, e.text))?;
        }
        p.bindings.push(BPlan {
            vhost,
            source: b.source,
            destination: b.destination,
            queue,
            routing_key: b.routing_key,
            arguments,
        });
    }

    for pol in d.policies {
        let vhost = vhost_of(&pol.vhost, "policy")?;
        let what = format!("policy '{}' in vhost '{vhost}'", pol.name);
        if !known_vhost(&p, &vhost) {
            return Err(bad(&what, "no such vhost"));
        }
        let body = Value::Object(pol.rest);
        crate::broker::policy::parse(&vhost, &pol.name, false, &body).map_err(|e| bad(&what, e))?;
        p.policies.push((vhost, pol.name, false, body));
    }
    let mut other_params = 0;
    for par in d.parameters {
        let vhost = vhost_of(&par.vhost, "parameter")?;
        let what = format!(
            "parameter '{}' of component '{}' in vhost '{vhost}'",
            par.name, par.component
        );
        match par.component.as_str() {
            "vhost-limits" | "operator_policy" if !known_vhost(&p, &vhost) => {
                return Err(bad(&what, "no such vhost"));
            }
            "vhost-limits" => {
                let Value::Object(l) = &par.value else {
                    return Err(bad(&what, "limits must be an object"));
                };
                let l = check_limits(l, VHOST_LIMITS, &par.name).map_err(|e| bad(&what, e))?;
                p.vhost_limits.push((vhost, l));
            }
            "operator_policy" => {
                crate::broker::policy::parse(&vhost, &par.name, true, &par.value)
                    .map_err(|e| bad(&what, e))?;
                p.policies.push((vhost, par.name, true, par.value));
            }
            _ => other_params += 1,
        }
    }
    count_ignored(&mut p, other_params, "parameters");
    Ok(p)
}

/// Apply a validated plan. Fails only on I/O errors of the definitions log.
fn apply(broker: &Broker, p: Plan) -> ApiResult<Value> {
    let mut counts = HashMap::new();
    for v in &p.vhosts {
        broker.add_vhost(v)?;
    }
    counts.insert("vhosts", p.vhosts.len());
    counts.insert("users", p.users.len());
    for (name, hash, tags) in p.users {
        broker.put_user(&name, hash, tags)?;
    }
    counts.insert("permissions", p.perms.len());
    for (u, v, c, w, r) in p.perms {
        broker.set_permissions(&u, &v, &c, &w, &r)?;
    }
    counts.insert("exchanges", p.exchanges.len());
    for e in p.exchanges {
        let v = broker.vhost(&e.vhost).ok_or_else(ApiError::not_found)?;
        broker.declare_exchange(
            &v,
            &e.name,
            &e.kind,
            false,
            e.durable,
            e.auto_delete,
            e.internal,
            e.arguments,
        )?;
    }
    counts.insert("queues", p.queues.len());
    for q in p.queues {
        let v = broker.vhost(&q.vhost).ok_or_else(ApiError::not_found)?;
        broker.declare_queue(
            &v,
            &q.name,
            false,
            q.durable,
            false,
            q.auto_delete,
            q.arguments,
            0,
        )?;
    }
    counts.insert("bindings", p.bindings.len());
    for b in p.bindings {
        let v = broker.vhost(&b.vhost).ok_or_else(ApiError::not_found)?;
        let src = v.get_exchange(&b.source)?;
        let dest = if b.queue {
            Dest::Queue(v.get_queue(&b.destination)?)
        } else {
            Dest::Exchange(v.get_exchange(&b.destination)?)
        };
        broker.bind(&v, &src, dest, &b.routing_key, b.arguments)?;
    }
    let policy_err = super::policies::policy_error;
    counts.insert("policies", p.policies.len());
    for (v, name, operator, body) in p.policies {
        broker
            .set_policy(&v, &name, operator, &body)
            .map_err(policy_err)?;
    }
    counts.insert("limits", p.vhost_limits.len() + p.user_limits.len());
    for (v, l) in p.vhost_limits {
        broker.set_vhost_limits(&v, l).map_err(policy_err)?;
    }
    for (u, l) in p.user_limits {
        broker.set_user_limits(&u, l).map_err(policy_err)?;
    }
    let mut answer = json!({"status": "ok", "imported": counts});
    if !p.ignored.is_empty() {
        answer["ignored"] = json!(p.ignored);
        answer["note"] = json!(format!(
            "not supported by lepus and skipped: {}",
            p.ignored.join(", ")
        ));
    }
    Ok(answer)
}

async fn import(app: App, body: Bytes, scope: Option<String>) -> ApiResult<Json<Value>> {
    let v: Value = parse_body(&body)?;
    if !v.is_object() {
        return Err(ApiError::bad_request("definitions must be a JSON object"));
    }
    let d: Defs = serde_json::from_value(v)
        .map_err(|e| ApiError::bad_request(format!("invalid definitions: {e}")))?;
    let broker = app.broker.clone();
    let answer = blocking(move || {
        let plan = validate(&broker, d, scope.as_deref())?;
        apply(&broker, plan)
    })
    .await??;
    if let Some(note) = answer.get("note").and_then(|n| n.as_str()) {
        tracing::info!(note, "definitions imported");
    }
    Ok(Json(answer))
}

pub async fn import_all(
    State(app): State<App>,
    caller: Caller,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    import(app, body, None).await
}

pub async fn import_vhost(
    State(app): State<App>,
    caller: Caller,
    Path(vhost): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    caller.vhost(&app.broker, &vhost)?;
    import(app, body, Some(vhost)).await
}
