//! A small blocking client for the management API.

use base64::Engine;
use serde_json::Value;
use std::time::Duration;

/// Everything but unreserved characters is escaped in a path segment ("/" is "%2F").
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// A name as one path segment.
pub fn seg(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, SEGMENT).to_string()
}

/// The AMQP URL matching a management URL: same host, port 5672.
pub fn amqp_url_from(mgmt_url: &str, user: &str, password: &str, vhost: &str) -> String {
    let rest = mgmt_url
        .split_once("://")
        .map(|(_, r)| r)
        .unwrap_or(mgmt_url);
    let authority = rest.split('/').next().unwrap_or("127.0.0.1");
    let host = match authority.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
        _ => authority,
    };
    format!(
        "amqp://{}:{}@{host}:5672/{}",
        seg(user),
        seg(password),
        seg(vhost)
    )
}

pub struct Api {
    agent: ureq::Agent,
    base: String,
    auth: String,
}

impl Api {
    /// `cacert`: a PEM file of the CAs to trust for an https URL instead of
    /// the built-in web roots (a broker with its own CA).
    pub fn new(
        url: &str,
        user: &str,
        password: &str,
        cacert: Option<&std::path::Path>,
    ) -> Result<Api, String> {
        let mut config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(120)));
        if let Some(path) = cacert {
            let pem = std::fs::read(path)
                .map_err(|e| format!("cannot read --cacert {}: {e}", path.display()))?;
            let certs = ureq::tls::parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(Ok(c)),
                    Ok(_) => None,
                    Err(e) => Some(Err(e)),
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("--cacert {}: {e}", path.display()))?;
            if certs.is_empty() {
                return Err(format!(
                    "--cacert {}: no PEM certificate in it",
                    path.display()
                ));
            }
            config = config.tls_config(
                ureq::tls::TlsConfig::builder()
                    .root_certs(ureq::tls::RootCerts::new_with_certs(&certs))
                    .build(),
            );
        }
        let config = config.build();
        Ok(Api {
            agent: ureq::Agent::new_with_config(config),
            base: url.trim_end_matches('/').to_owned(),
            auth: format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
            ),
        })
    }

    /// One request; returns the status and the JSON body (null if none).
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Result<(u16, Value), String> {
        let url = format!("{}{path}", self.base);
        let unreachable =
            |e: ureq::Error| format!("cannot reach the management API at {}: {e}", self.base);
        let mut resp = match method {
            "GET" | "DELETE" => {
                let mut r = if method == "GET" {
                    self.agent.get(&url)
                } else {
                    self.agent.delete(&url)
                };
                r = r.header("Authorization", &self.auth);
                for (k, v) in headers {
                    r = r.header(*k, *v);
                }
                r.call().map_err(unreachable)?
            }
            _ => {
                let mut r = if method == "PUT" {
                    self.agent.put(&url)
                } else {
                    self.agent.post(&url)
                };
                r = r
                    .header("Authorization", &self.auth)
                    .content_type("application/json");
                for (k, v) in headers {
                    r = r.header(*k, *v);
                }
                let text = body.map(|b| b.to_string()).unwrap_or_default();
                r.send(text.as_bytes()).map_err(unreachable)?
            }
        };
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .with_config()
            .limit(1 << 30)
            .read_to_string()
            .map_err(|e| format!("reading the answer to {method} {path}: {e}"))?;
        let json = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Ok((status, json))
    }

    /// A request that must succeed (2xx); the error says what the API said.
    fn ok(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Result<Value, String> {
        let (status, json) = self.request(method, path, body, headers)?;
        if (200..300).contains(&status) {
            return Ok(json);
        }
        let reason = match (&json.get("error"), &json.get("reason")) {
            (Some(e), Some(r)) => format!(
                "{}: {}",
                e.as_str().unwrap_or_default(),
                r.as_str().unwrap_or_default()
            ),
            _ => json.to_string(),
        };
        Err(format!("{method} {path}: HTTP {status}: {reason}"))
    }

    pub fn get(&self, path: &str) -> Result<Value, String> {
        self.ok("GET", path, None, &[])
    }
    pub fn put(&self, path: &str, body: &Value) -> Result<Value, String> {
        self.ok("PUT", path, Some(body), &[])
    }
    pub fn post(&self, path: &str, body: &Value) -> Result<Value, String> {
        self.ok("POST", path, Some(body), &[])
    }
    pub fn delete(&self, path: &str, headers: &[(&str, &str)]) -> Result<Value, String> {
        self.ok("DELETE", path, None, headers)
    }
}
