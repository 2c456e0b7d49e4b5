//! Validation of queue and exchange arguments, as RabbitMQ checks them.
//!
//! Texts follow RabbitMQ's: "invalid arg 'x-message-ttl' for queue 'q' in
//! vhost '/': {value_negative,-1}" and "inequivalent arg ... received the
//! value '10' of type 'signedint' but current is none".

use crate::error::{AmqpError, AmqpResult};
use amq_protocol::types::{AMQPValue, FieldTable};

/// RabbitMQ's name for a field type.
pub fn type_name(v: &AMQPValue) -> &'static str {
    match v {
        AMQPValue::Boolean(_) => "bool",
        AMQPValue::ShortShortInt(_) => "byte",
        AMQPValue::ShortShortUInt(_) => "unsignedbyte",
        AMQPValue::ShortInt(_) => "short",
        AMQPValue::ShortUInt(_) => "unsignedshort",
        AMQPValue::LongInt(_) => "signedint",
        AMQPValue::LongUInt(_) => "unsignedint",
        AMQPValue::LongLongInt(_) => "long",
        AMQPValue::Float(_) => "float",
        AMQPValue::Double(_) => "double",
        AMQPValue::DecimalValue(_) => "decimal",
        AMQPValue::ShortString(_) => "shortstr",
        AMQPValue::LongString(_) => "longstr",
        AMQPValue::FieldArray(_) => "array",
        AMQPValue::Timestamp(_) => "timestamp",
        AMQPValue::FieldTable(_) => "table",
        AMQPValue::ByteArray(_) => "binary",
        AMQPValue::Void => "void",
    }
}

/// A value as RabbitMQ prints it in inequivalence errors.
pub fn show(v: &AMQPValue) -> String {
    match v {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.as_str().to_owned(),
        AMQPValue::Boolean(b) => b.to_string(),
        other => int_value(other)
            .map(|i| i.to_string())
            .unwrap_or_else(|| format!("{other:?}")),
    }
}

pub fn int_value(v: &AMQPValue) -> Option<i64> {
    Some(match v {
        AMQPValue::ShortShortInt(x) => *x as i64,
        AMQPValue::ShortShortUInt(x) => *x as i64,
        AMQPValue::ShortInt(x) => *x as i64,
        AMQPValue::ShortUInt(x) => *x as i64,
        AMQPValue::LongInt(x) => *x as i64,
        AMQPValue::LongUInt(x) => *x as i64,
        AMQPValue::LongLongInt(x) => *x,
        AMQPValue::Timestamp(x) => *x as i64,
        _ => return None,
    })
}

pub fn str_value(v: &AMQPValue) -> Option<String> {
    match v {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

pub fn get<'a>(args: &'a FieldTable, key: &str) -> Option<&'a AMQPValue> {
    args.inner().get(key)
}

pub fn get_int(args: &FieldTable, key: &str) -> Option<i64> {
    get(args, key).and_then(int_value)
}

pub fn get_str(args: &FieldTable, key: &str) -> Option<String> {
    get(args, key).and_then(str_value)
}

pub fn get_bool(args: &FieldTable, key: &str) -> Option<bool> {
    match get(args, key)? {
        AMQPValue::Boolean(b) => Some(*b),
        _ => None,
    }
}

enum Rule {
    NonNegInt,
    Str,
    Bool,
    /// One of these strings; the reason RabbitMQ gives otherwise (`{}`
    /// stands for the value).
    OneOf(&'static [&'static str], &'static str),
    MaxPriority,
    /// x-queue-type: a type lepus implements.
    QueueType,
    /// x-message-ttl (non-negative) and x-expires (positive): at most ten years.
    Ttl,
    Expires,
}

/// The longest TTL, expiry or expiration RabbitMQ accepts: ten years in ms.
pub const MAX_TTL_MS: u64 = 315_360_000_000;

/// Queue types lepus implements. A quorum queue is a durable queue whose
/// every message is stored and synced (whatever its delivery mode), with
/// x-delivery-count on redeliveries; one node holds it (lepus does not
/// cluster). Streams are not implemented.
pub const QUEUE_TYPES: &[&str] = &["classic", "quorum"];

/// Whether these arguments declare a quorum queue.
pub fn is_quorum(args: &FieldTable) -> bool {
    get_str(args, "x-queue-type").as_deref() == Some("quorum")
}

/// Arguments RabbitMQ 3.10 refuses on a quorum queue.
const NOT_FOR_QUORUM: &[&str] = &["x-max-priority", "x-queue-mode"];

/// RabbitMQ's checks for a new quorum queue, in its order: arguments the
/// type does not take, then auto-delete, exclusive, non-durable.
pub fn validate_quorum(
    args: &FieldTable,
    name: &str,
    vhost: &str,
    durable: bool,
    exclusive: bool,
    auto_delete: bool,
) -> AmqpResult<()> {
    for key in NOT_FOR_QUORUM {
        if get(args, key).is_some() {
            return Err(AmqpError::precondition(format!(
                "invalid arg '{key}' for queue '{name}' in vhost '{vhost}' of queue type rabbit_quorum_queue"
            )));
        }
    }
    let property = if auto_delete {
        Some("auto-delete")
    } else if exclusive {
        Some("exclusive-owner")
    } else if !durable {
        Some("non-durable")
    } else {
        None
    };
    match property {
        Some(p) => Err(AmqpError::precondition(format!(
            "invalid property '{p}' for queue '{name}' in vhost '{vhost}'"
        ))),
        None => Ok(()),
    }
}

const QUEUE_ARGS: &[(&str, Rule)] = &[
    ("x-expires", Rule::Expires),
    ("x-message-ttl", Rule::Ttl),
    ("x-dead-letter-exchange", Rule::Str),
    ("x-dead-letter-routing-key", Rule::Str),
    ("x-max-length", Rule::NonNegInt),
    ("x-max-length-bytes", Rule::NonNegInt),
    ("x-max-priority", Rule::MaxPriority),
    (
        "x-overflow",
        Rule::OneOf(
            &["drop-head", "reject-publish", "reject-publish-dlx"],
            "invalid_overflow",
        ),
    ),
    (
        "x-queue-mode",
        Rule::OneOf(&["default", "lazy"], "\"unsupported queue mode '{}'\""),
    ),
    ("x-queue-type", Rule::QueueType),
    ("x-single-active-consumer", Rule::Bool),
    ("x-delivery-limit", Rule::NonNegInt),
    ("x-message-deduplication", Rule::Bool),
    ("x-cache-size", Rule::NonNegInt),
    ("x-cache-ttl", Rule::NonNegInt),
    ("x-deduplication-header", Rule::Str),
];

/// RabbitMQ's reason for a non-integer where an integer belongs.
fn expected_integer(v: &AMQPValue) -> String {
    format!("\"expected integer, got {}\"", type_name(v))
}

/// Consumer arguments (basic.consume): x-priority must be an integer.
pub fn validate_consumer_args(args: &FieldTable, queue: &str, vhost: &str) -> AmqpResult<()> {
    match get(args, "x-priority") {
        Some(v) if int_value(v).is_none() => Err(AmqpError::precondition(format!(
            "invalid arg 'x-priority' for queue '{queue}' in vhost '{vhost}': {}",
            expected_integer(v)
        ))),
        _ => Ok(()),
    }
}

fn check(rule: &Rule, v: &AMQPValue) -> Result<(), String> {
    match rule {
        Rule::NonNegInt | Rule::MaxPriority | Rule::Ttl | Rule::Expires => {
            let Some(i) = int_value(v) else {
                return Err(expected_integer(v));
            };
            if i < 0 {
                return Err(format!("{{value_negative,{i}}}"));
            }
            if matches!(rule, Rule::Expires) && i == 0 {
                return Err(format!("{{value_zero,{i}}}"));
            }
            if matches!(rule, Rule::Ttl | Rule::Expires) && i as u64 > MAX_TTL_MS {
                return Err(format!("{{value_too_large,{i}}}"));
            }
            if matches!(rule, Rule::MaxPriority) && i > 255 {
                return Err(format!("{{max_value_exceeded,{i}}}"));
            }
            Ok(())
        }
        // Names and routing keys are shortstrs on the wire and in the store.
        Rule::Str => match str_value(v) {
            Some(s) if s.len() > 255 => Err(format!("{{too_long,{}}}", s.len())),
            Some(_) => Ok(()),
            None => Err(format!("{{unacceptable_type,{}}}", type_name(v))),
        },
        Rule::Bool => match v {
            AMQPValue::Boolean(_) => Ok(()),
            _ => Err(format!("{{unacceptable_type,{}}}", type_name(v))),
        },
        Rule::QueueType => match str_value(v) {
            Some(s) if QUEUE_TYPES.contains(&s.as_str()) => Ok(()),
            Some(s) => Err(format!("\"unsupported queue type '{s}'\"")),
            None => Err(format!("{{unacceptable_type,{}}}", type_name(v))),
        },
        Rule::OneOf(allowed, reason) => match str_value(v) {
            Some(s) if allowed.contains(&s.as_str()) => Ok(()),
            Some(s) => Err(reason.replace("{}", &s)),
            None => Err(format!("{{unacceptable_type,{}}}", type_name(v))),
        },
    }
}

pub fn validate_queue_args(args: &FieldTable, name: &str, vhost: &str) -> AmqpResult<()> {
    // An exchange name of the wrong type: RabbitMQ words this one differently.
    if let Some(v) = get(args, "x-dead-letter-exchange") {
        if str_value(v).is_none() {
            return Err(AmqpError::precondition(format!(
                "invalid type '{}' for arg 'x-dead-letter-exchange' in queue '{name}' in vhost '{vhost}'",
                type_name(v)
            )));
        }
    }
    for (key, rule) in QUEUE_ARGS {
        if let Some(v) = get(args, key) {
            check(rule, v).map_err(|reason| {
                AmqpError::precondition(format!(
                    "invalid arg '{key}' for queue '{name}' in vhost '{vhost}': {reason}"
                ))
            })?;
        }
    }
    if get(args, "x-dead-letter-routing-key").is_some()
        && get(args, "x-dead-letter-exchange").is_none()
    {
        return Err(AmqpError::precondition(format!(
            "invalid arg 'x-dead-letter-routing-key' for queue '{name}' in vhost '{vhost}': routing_key_but_no_dlx_defined"
        )));
    }
    Ok(())
}

pub fn validate_exchange_args(args: &FieldTable, name: &str, vhost: &str) -> AmqpResult<()> {
    if let Some(v) = get(args, "alternate-exchange") {
        if str_value(v).is_none() {
            return Err(AmqpError::precondition(format!(
                "invalid type '{}' for arg 'alternate-exchange' in exchange '{name}' in vhost '{vhost}'",
                type_name(v)
            )));
        }
    }
    Ok(())
}

/// The arguments RabbitMQ compares on a redeclare.
const EQUIVALENCE_KEYS: &[&str] = &[
    "x-expires",
    "x-message-ttl",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-priority",
    "x-overflow",
    "x-queue-type",
    "x-single-active-consumer",
    "x-delivery-limit",
    "x-message-deduplication",
    "alternate-exchange",
    "x-delayed-type",
];

pub fn check_equivalent(
    current: &FieldTable,
    received: &FieldTable,
    kind: &str,
    name: &str,
    vhost: &str,
) -> AmqpResult<()> {
    for key in EQUIVALENCE_KEYS {
        let (c, r) = (get(current, key), get(received, key));
        let same = match (c, r) {
            (None, None) => true,
            (Some(a), Some(b)) => values_equal(a, b),
            // No type is the default type, as RabbitMQ compares them.
            (None, Some(v)) | (Some(v), None) if *key == "x-queue-type" => {
                str_value(v).as_deref() == Some("classic")
            }
            _ => false,
        };
        if !same {
            // RabbitMQ shows bare values when both sides are present.
            let (recv, cur) = match (r, c) {
                (Some(r), Some(c)) => (format!("'{}'", show(r)), format!("'{}'", show(c))),
                _ => (
                    r.map(|v| format!("the value '{}' of type '{}'", show(v), type_name(v)))
                        .unwrap_or_else(|| "none".into()),
                    c.map(|v| format!("the value '{}' of type '{}'", show(v), type_name(v)))
                        .unwrap_or_else(|| "none".into()),
                ),
            };
            return Err(AmqpError::precondition(format!(
                "inequivalent arg '{key}' for {kind} '{name}' in vhost '{vhost}': received {recv} but current is {cur}"
            )));
        }
    }
    Ok(())
}

/// Equality of field values, treating strings of either kind and integers of
/// any width as the same value, as clients encode them differently.
pub fn values_equal(a: &AMQPValue, b: &AMQPValue) -> bool {
    fn as_int(v: &AMQPValue) -> Option<i128> {
        Some(match v {
            AMQPValue::ShortShortInt(x) => *x as i128,
            AMQPValue::ShortShortUInt(x) => *x as i128,
            AMQPValue::ShortInt(x) => *x as i128,
            AMQPValue::ShortUInt(x) => *x as i128,
            AMQPValue::LongInt(x) => *x as i128,
            AMQPValue::LongUInt(x) => *x as i128,
            AMQPValue::LongLongInt(x) => *x as i128,
            AMQPValue::Timestamp(x) => *x as i128,
            _ => return None,
        })
    }
    fn as_bytes(v: &AMQPValue) -> Option<&[u8]> {
        match v {
            AMQPValue::LongString(s) => Some(s.as_bytes()),
            AMQPValue::ShortString(s) => Some(s.as_str().as_bytes()),
            _ => None,
        }
    }
    if let (Some(x), Some(y)) = (as_int(a), as_int(b)) {
        return x == y;
    }
    if let (Some(x), Some(y)) = (as_bytes(a), as_bytes(b)) {
        return x == y;
    }
    a == b
}
