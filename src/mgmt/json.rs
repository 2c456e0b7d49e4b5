//! AMQP field tables and message properties as RabbitMQ's management API
//! shows them in JSON, and back.
//!
//! JSON integers become signed 64-bit fields (`l`), floats doubles, strings
//! long strings, arrays field arrays, objects tables, as RabbitMQ converts
//! arguments given over HTTP.

use amq_protocol::protocol::BasicProperties;
use amq_protocol::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use base64::Engine;
use serde_json::{json, Map, Value};

pub fn value_to_json(v: &AMQPValue) -> Value {
    match v {
        AMQPValue::Boolean(b) => json!(b),
        AMQPValue::ShortShortInt(x) => json!(x),
        AMQPValue::ShortShortUInt(x) => json!(x),
        AMQPValue::ShortInt(x) => json!(x),
        AMQPValue::ShortUInt(x) => json!(x),
        AMQPValue::LongInt(x) => json!(x),
        AMQPValue::LongUInt(x) => json!(x),
        AMQPValue::LongLongInt(x) => json!(x),
        AMQPValue::Timestamp(x) => json!(x),
        AMQPValue::Float(x) => json!(x),
        AMQPValue::Double(x) => json!(x),
        AMQPValue::DecimalValue(d) => json!(d.value as f64 / 10f64.powi(d.scale as i32)),
        AMQPValue::ShortString(s) => json!(s.as_str()),
        AMQPValue::LongString(s) => json!(String::from_utf8_lossy(s.as_bytes())),
        AMQPValue::ByteArray(b) => json!(String::from_utf8_lossy(b.as_slice())),
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(value_to_json).collect()),
        AMQPValue::FieldTable(t) => table_to_json(t),
        AMQPValue::Void => Value::Null,
    }
}

pub fn table_to_json(t: &FieldTable) -> Value {
    let mut m = Map::new();
    for (k, v) in t.inner() {
        m.insert(k.as_str().to_owned(), value_to_json(v));
    }
    Value::Object(m)
}

pub fn json_to_value(v: &Value) -> Result<AMQPValue, String> {
    Ok(match v {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                AMQPValue::LongLongInt(i)
            } else if let Some(f) = n.as_f64() {
                AMQPValue::Double(f)
            } else {
                return Err(format!("number {n} out of range"));
            }
        }
        Value::String(s) => AMQPValue::LongString(LongString::from(s.as_bytes().to_vec())),
        Value::Array(a) => AMQPValue::FieldArray(FieldArray::from(
            a.iter().map(json_to_value).collect::<Result<Vec<_>, _>>()?,
        )),
        Value::Object(_) => AMQPValue::FieldTable(json_to_table(v)?),
    })
}

/// A JSON object (or null / absent) as a field table.
pub fn json_to_table(v: &Value) -> Result<FieldTable, String> {
    match v {
        Value::Null => Ok(FieldTable::default()),
        Value::Object(m) => {
            let mut t = FieldTable::default();
            for (k, v) in m {
                let key = ShortString::try_new(k.clone())
                    .map_err(|_| format!("key {k:?} is longer than 255 bytes"))?;
                t.insert(key, json_to_value(v)?);
            }
            Ok(t)
        }
        // RabbitMQ exports empty arguments of old versions as [].
        Value::Array(a) if a.is_empty() => Ok(FieldTable::default()),
        other => Err(format!("expected an object, got {other}")),
    }
}

/// Message properties as RabbitMQ's "get messages" shows them.
pub fn properties_to_json(p: &BasicProperties) -> Value {
    let mut m = Map::new();
    let s = |v: &Option<ShortString>| v.as_ref().map(|x| json!(x.as_str()));
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            m.insert(k.to_owned(), v);
        }
    };
    put("content_type", s(p.content_type()));
    put("content_encoding", s(p.content_encoding()));
    put("headers", p.headers().as_ref().map(table_to_json));
    put("delivery_mode", p.delivery_mode().map(|x| json!(x)));
    put("priority", p.priority().map(|x| json!(x)));
    put("correlation_id", s(p.correlation_id()));
    put("reply_to", s(p.reply_to()));
    put("expiration", s(p.expiration()));
    put("message_id", s(p.message_id()));
    put("timestamp", p.timestamp().map(|x| json!(x)));
    put("type", s(p.kind()));
    put("user_id", s(p.user_id()));
    put("app_id", s(p.app_id()));
    put("cluster_id", s(p.cluster_id()));
    Value::Object(m)
}

/// Message properties from the JSON of a publish request.
pub fn json_to_properties(v: &Value) -> Result<BasicProperties, String> {
    let mut p = BasicProperties::default();
    let m = match v {
        Value::Null => return Ok(p),
        Value::Array(a) if a.is_empty() => return Ok(p),
        Value::Object(m) => m,
        other => return Err(format!("properties: expected an object, got {other}")),
    };
    let short = |k: &str, v: &Value| -> Result<ShortString, String> {
        let s = match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            other => return Err(format!("property {k}: expected a string, got {other}")),
        };
        ShortString::try_new(s).map_err(|_| format!("property {k} is longer than 255 bytes"))
    };
    let octet = |k: &str, v: &Value| -> Result<u8, String> {
        v.as_u64()
            .and_then(|x| u8::try_from(x).ok())
            .ok_or_else(|| format!("property {k}: expected an integer 0..255, got {v}"))
    };
    for (k, v) in m {
        p = match k.as_str() {
            "content_type" => p.with_content_type(short(k, v)?),
            "content_encoding" => p.with_content_encoding(short(k, v)?),
            "headers" => p.with_headers(json_to_table(v)?),
            "delivery_mode" => p.with_delivery_mode(octet(k, v)?),
            "priority" => p.with_priority(octet(k, v)?),
            "correlation_id" => p.with_correlation_id(short(k, v)?),
            "reply_to" => p.with_reply_to(short(k, v)?),
            "expiration" => p.with_expiration(short(k, v)?),
            "message_id" => p.with_message_id(short(k, v)?),
            "timestamp" => p.with_timestamp(
                v.as_u64()
                    .ok_or_else(|| format!("property timestamp: expected an integer, got {v}"))?,
            ),
            "type" => p.with_type(short(k, v)?),
            "user_id" => p.with_user_id(short(k, v)?),
            "app_id" => p.with_app_id(short(k, v)?),
            "cluster_id" => p.with_cluster_id(short(k, v)?),
            other => return Err(format!("unknown property {other:?}")),
        };
    }
    Ok(p)
}

/// A payload as the management API returns it: "string" when it is UTF-8
/// and `encoding` is "auto", else "base64".
pub fn encode_payload(body: &[u8], encoding: &str) -> (Value, &'static str) {
    if encoding == "auto" {
        if let Ok(s) = std::str::from_utf8(body) {
            return (json!(s), "string");
        }
    }
    (
        json!(base64::engine::general_purpose::STANDARD.encode(body)),
        "base64",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_round_trip() {
        let v = json!({"x-message-ttl": 1000, "s": "str", "b": true, "f": 1.5, "a": [1, "x"], "t": {"n": null}});
        let t = json_to_table(&v).unwrap();
        assert_eq!(table_to_json(&t), v);
        assert!(json_to_table(&json!(3)).is_err());
        assert_eq!(json_to_table(&json!([])).unwrap(), FieldTable::default());
    }

    #[test]
    fn properties_round_trip() {
        let v = json!({"delivery_mode": 2, "headers": {"k": "v"}, "message_id": "m1", "type": "t", "timestamp": 5});
        let p = json_to_properties(&v).unwrap();
        assert_eq!(properties_to_json(&p), v);
        assert!(json_to_properties(&json!({"nope": 1})).is_err());
        assert!(json_to_properties(&json!({"priority": 300})).is_err());
    }
}
