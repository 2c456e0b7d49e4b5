//! `amqp://user:pass@host:port/vhost` parsing.
//!
//! Small enough to do by hand, and it keeps the rule for an empty vhost
//! explicit: a missing or empty path means the default vhost "/" (what users
//! of a load generator mean), while "/%2f" spells it out.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmqpUri {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub vhost: String,
    /// amqps: TLS over TCP (see `--cacert`).
    pub tls: bool,
}

#[derive(Debug)]
pub struct UriError(String);

impl fmt::Display for UriError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad AMQP URI: {}", self.0)
    }
}

impl std::error::Error for UriError {}

fn percent_decode(s: &str) -> Result<String, UriError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .ok_or_else(|| UriError(format!("truncated escape in {s:?}")))?;
            let v = u8::from_str_radix(hex, 16)
                .map_err(|_| UriError(format!("bad escape %{hex} in {s:?}")))?;
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| UriError(format!("{s:?} is not UTF-8 once decoded")))
}

impl std::str::FromStr for AmqpUri {
    type Err = UriError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (tls, rest) = match (s.strip_prefix("amqp://"), s.strip_prefix("amqps://")) {
            (Some(r), _) => (false, r),
            (_, Some(r)) => (true, r),
            _ => {
                return Err(UriError(format!(
                    "{s:?} must start with amqp:// or amqps://"
                )))
            }
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        let (userinfo, hostport) = match authority.rfind('@') {
            Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
            None => (None, authority),
        };
        let (user, password) = match userinfo {
            Some(ui) => match ui.find(':') {
                Some(i) => (percent_decode(&ui[..i])?, percent_decode(&ui[i + 1..])?),
                None => (percent_decode(ui)?, String::new()),
            },
            None => ("guest".to_string(), "guest".to_string()),
        };
        // IPv6 literals are bracketed: [::1]:5672
        let (host, port) = if let Some(h) = hostport.strip_prefix('[') {
            let end = h
                .find(']')
                .ok_or_else(|| UriError("unterminated [ in host".into()))?;
            let port = h[end + 1..].strip_prefix(':');
            (h[..end].to_string(), port)
        } else {
            match hostport.rfind(':') {
                Some(i) => (hostport[..i].to_string(), Some(&hostport[i + 1..])),
                None => (hostport.to_string(), None),
            }
        };
        let port = match port {
            Some(p) if !p.is_empty() => {
                p.parse().map_err(|_| UriError(format!("bad port {p:?}")))?
            }
            _ if tls => 5671,
            _ => 5672,
        };
        let host = if host.is_empty() {
            "127.0.0.1".to_string()
        } else {
            host
        };
        let path = path.split('?').next().unwrap_or("");
        let vhost = if path.is_empty() {
            "/".to_string()
        } else {
            percent_decode(path)?
        };
        Ok(AmqpUri {
            host,
            port,
            user,
            password,
            vhost,
            tls,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_default_uri() {
        let u: AmqpUri = "amqp://guest:guest@127.0.0.1:5672/%2f".parse().unwrap();
        assert_eq!(
            u,
            AmqpUri {
                host: "127.0.0.1".into(),
                port: 5672,
                user: "guest".into(),
                password: "guest".into(),
                vhost: "/".into(),
                tls: false,
            }
        );
    }

    #[test]
    fn parses_variants() {
        let u: AmqpUri = "amqp://localhost".parse().unwrap();
        assert_eq!(
            (u.port, u.vhost.as_str(), u.user.as_str()),
            (5672, "/", "guest")
        );
        let u: AmqpUri = "amqp://a%40b:p%3Ass@[::1]:5673/prod".parse().unwrap();
        assert_eq!(u.user, "a@b");
        assert_eq!(u.password, "p:ss");
        assert_eq!(u.host, "::1");
        assert_eq!(u.port, 5673);
        assert_eq!(u.vhost, "prod");
        let u: AmqpUri = "amqps://x".parse().unwrap();
        assert_eq!((u.tls, u.port, u.host.as_str()), (true, 5671, "x"));
        assert!("http://x".parse::<AmqpUri>().is_err());
        assert!("amqp://h:notaport/".parse::<AmqpUri>().is_err());
    }
}
