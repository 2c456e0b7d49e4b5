//! A small HTTP client for the management API tests: real requests with
//! ureq, run on the blocking pool so the broker on the test's runtime keeps
//! running.
#![allow(dead_code)]

use base64::Engine;
use serde_json::Value;
use std::time::Duration;

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub body: Value,
    pub text: String,
    pub location: Option<String>,
    pub www_authenticate: Option<String>,
    pub content_type: Option<String>,
}

#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub auth: Option<(String, String)>,
}

impl Api {
    /// As guest.
    pub fn new(base: &str) -> Api {
        Api {
            base: base.to_owned(),
            auth: Some(("guest".into(), "guest".into())),
        }
    }

    pub fn as_user(&self, user: &str, password: &str) -> Api {
        Api {
            base: self.base.clone(),
            auth: Some((user.into(), password.into())),
        }
    }

    pub fn anonymous(&self) -> Api {
        Api {
            base: self.base.clone(),
            auth: None,
        }
    }

    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<String>,
        headers: &[(&str, &str)],
    ) -> Resp {
        let url = format!("{}{path}", self.base);
        let method = method.to_owned();
        let auth = self.auth.clone();
        let headers: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let call = tokio::task::spawn_blocking(move || {
            let config = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(30)))
                .build();
            let agent = ureq::Agent::new_with_config(config);
            let auth_header = auth.map(|(u, p)| {
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
                )
            });
            let mut resp = match method.as_str() {
                "GET" | "DELETE" => {
                    let mut r = if method == "GET" {
                        agent.get(&url)
                    } else {
                        agent.delete(&url)
                    };
                    if let Some(a) = &auth_header {
                        r = r.header("Authorization", a);
                    }
                    for (k, v) in &headers {
                        r = r.header(k, v);
                    }
                    r.call().expect("HTTP request")
                }
                _ => {
                    let mut r = if method == "PUT" {
                        agent.put(&url)
                    } else {
                        agent.post(&url)
                    };
                    if let Some(a) = &auth_header {
                        r = r.header("Authorization", a);
                    }
                    for (k, v) in &headers {
                        r = r.header(k, v);
                    }
                    r = r.content_type("application/json");
                    r.send(body.unwrap_or_default().as_bytes())
                        .expect("HTTP request")
                }
            };
            let h = |name: &str| {
                resp.headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(|s| s.to_owned())
            };
            let (location, www_authenticate, content_type) =
                (h("location"), h("www-authenticate"), h("content-type"));
            let status = resp.status().as_u16();
            let text = resp
                .body_mut()
                .with_config()
                .limit(1 << 30)
                .read_to_string()
                .expect("body");
            let body = serde_json::from_str(&text).unwrap_or(Value::Null);
            Resp {
                status,
                body,
                text,
                location,
                www_authenticate,
                content_type,
            }
        });
        tokio::time::timeout(Duration::from_secs(60), call)
            .await
            .expect("HTTP request timed out")
            .expect("HTTP task")
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.request("GET", path, None, &[]).await
    }
    pub async fn delete(&self, path: &str) -> Resp {
        self.request("DELETE", path, None, &[]).await
    }
    pub async fn put(&self, path: &str, body: Value) -> Resp {
        self.request("PUT", path, Some(body.to_string()), &[]).await
    }
    pub async fn post(&self, path: &str, body: Value) -> Resp {
        self.request("POST", path, Some(body.to_string()), &[])
            .await
    }
    pub async fn put_raw(&self, path: &str, body: &str) -> Resp {
        self.request("PUT", path, Some(body.to_owned()), &[]).await
    }
    pub async fn post_raw(&self, path: &str, body: &str) -> Resp {
        self.request("POST", path, Some(body.to_owned()), &[]).await
    }
}
