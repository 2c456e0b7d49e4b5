//! TLS: the `[tls]` section turned into rustls server configurations (one
//! for amqps, one for HTTPS management), and what a finished handshake tells
//! about a connection (protocol, cipher, the client certificate's subject
//! and CN).
//!
//! Owns: reading and checking the PEM files (a file that cannot be read or
//! parsed is an error at start, never at the first connection), the
//! client-certificate verifier with RabbitMQ's `verify` /
//! `fail_if_no_peer_cert` meanings, and the formatting of certificate names
//! as RabbitMQ shows them. Delegates the handshake itself to rustls
//! (through tokio-rustls); rustls checks chains, validity dates and
//! signatures. A base-layer file: it imports only [`crate::config`].

use crate::config::{TlsConfig, TlsVerify};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::TlsAcceptor;

/// What the listeners need: an acceptor per use, and the handshake deadline.
pub struct Tls {
    /// amqps: asks for client certificates as `verify` says.
    pub amqp: TlsAcceptor,
    /// HTTPS management: the same certificate, no client certificate asked
    /// for (HTTP clients authenticate with basic auth).
    pub https: TlsAcceptor,
    /// A handshake not finished by then is dropped.
    pub handshake_timeout: Duration,
}

impl Tls {
    /// Read the files the config names and build both configurations.
    /// `None` when TLS is off (no certfile/keyfile). Errors name the file
    /// and what is wrong with it.
    pub fn load(cfg: &TlsConfig) -> Result<Option<Arc<Tls>>, String> {
        let (Some(certfile), Some(keyfile)) = (&cfg.certfile, &cfg.keyfile) else {
            return Ok(None);
        };
        let certs = read_certs(certfile, "certfile")?;
        let key = read_key(keyfile)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut versions: Vec<&'static rustls::SupportedProtocolVersion> = vec![];
        for v in &cfg.versions {
            versions.push(match v.as_str() {
                "tlsv1.3" => &rustls::version::TLS13,
                "tlsv1.2" => &rustls::version::TLS12,
                other => return Err(format!("TLS: unsupported version {other:?}")),
            });
        }
        let verifier = match cfg.verify {
            TlsVerify::VerifyNone => None,
            TlsVerify::VerifyPeer => {
                let path = cfg
                    .cacertfile
                    .as_ref()
                    .ok_or("TLS: verify_peer needs cacertfile")?;
                let mut roots = RootCertStore::empty();
                for c in read_certs(path, "cacertfile")? {
                    roots.add(c).map_err(|e| {
                        format!(
                            "TLS: cacertfile {}: not a CA certificate: {e}",
                            path.display()
                        )
                    })?;
                }
                let b =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
                let b = if cfg.fail_if_no_peer_cert {
                    b
                } else {
                    b.allow_unauthenticated()
                };
                Some(
                    b.build()
                        .map_err(|e| format!("TLS: cacertfile {}: {e}", path.display()))?,
                )
            }
        };
        let builder = || {
            ServerConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(&versions)
                .map_err(|e| format!("TLS: versions: {e}"))
        };
        let key_error = |e: rustls::Error| {
            format!(
                "TLS: keyfile {} does not go with certfile {}: {e}",
                keyfile.display(),
                certfile.display()
            )
        };
        let amqp = match verifier {
            Some(v) => builder()?.with_client_cert_verifier(v),
            None => builder()?.with_no_client_auth(),
        }
        .with_single_cert(certs.clone(), key.clone_key())
        .map_err(key_error)?;
        let mut https = builder()?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(key_error)?;
        https.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Some(Arc::new(Tls {
            amqp: TlsAcceptor::from(Arc::new(amqp)),
            https: TlsAcceptor::from(Arc::new(https)),
            handshake_timeout: Duration::from_millis(cfg.handshake_timeout_ms),
        })))
    }
}

fn read_certs(path: &Path, key: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = std::fs::read(path)
        .map_err(|e| format!("TLS: cannot read {key} {}: {e}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("TLS: {key} {}: invalid PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "TLS: {key} {} holds no PEM certificate",
            path.display()
        ));
    }
    for c in &certs {
        x509_parser::parse_x509_certificate(c).map_err(|e| {
            format!(
                "TLS: {key} {}: not an X.509 certificate: {e}",
                path.display()
            )
        })?;
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let bytes = std::fs::read(path)
        .map_err(|e| format!("TLS: cannot read keyfile {}: {e}", path.display()))?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => format!(
            "TLS: keyfile {} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)",
            path.display()
        ),
        e => format!("TLS: keyfile {}: invalid PEM: {e}", path.display()),
    })
}

/// A verified client certificate, as RabbitMQ shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCert {
    /// RFC 4514 form, last RDN first: `CN=alice,O=Example,C=GB`.
    pub subject: String,
    pub issuer: String,
    /// `2026-01-01T00:00:00Z - 2027-01-01T00:00:00Z`
    pub validity: String,
    /// The subject's first common name: the user for SASL EXTERNAL.
    pub common_name: Option<String>,
}

/// One TLS connection's parameters, named as Erlang's ssl (and so
/// RabbitMQ's management API) names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    /// `tlsv1.2` or `tlsv1.3`.
    pub protocol: &'static str,
    /// `ecdhe_rsa`, `ecdhe_ecdsa`, or `any` (TLS 1.3 negotiates it apart).
    pub key_exchange: &'static str,
    /// `aes_128_gcm`, `aes_256_gcm`, `chacha20_poly1305`.
    pub cipher: &'static str,
    /// The suite's MAC: `aead` for every suite rustls offers.
    pub hash: &'static str,
    /// Present only if the client sent a certificate and it was verified.
    pub peer: Option<PeerCert>,
}

impl TlsInfo {
    /// Read a finished handshake.
    pub fn of(conn: &ServerConnection) -> TlsInfo {
        let protocol = match conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "tlsv1.3",
            Some(rustls::ProtocolVersion::TLSv1_2) => "tlsv1.2",
            _ => "unknown",
        };
        let suite = conn
            .negotiated_cipher_suite()
            .map(|s| format!("{:?}", s.suite()))
            .unwrap_or_default();
        let key_exchange = if suite.starts_with("TLS13_") {
            "any"
        } else if suite.contains("ECDHE_RSA") {
            "ecdhe_rsa"
        } else if suite.contains("ECDHE_ECDSA") {
            "ecdhe_ecdsa"
        } else {
            "unknown"
        };
        let cipher = if suite.contains("AES_128_GCM") {
            "aes_128_gcm"
        } else if suite.contains("AES_256_GCM") {
            "aes_256_gcm"
        } else if suite.contains("CHACHA20_POLY1305") {
            "chacha20_poly1305"
        } else {
            "unknown"
        };
        let peer = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| peer_cert(c));
        TlsInfo {
            protocol,
            key_exchange,
            cipher,
            hash: "aead",
            peer,
        }
    }
}

/// Subject, issuer, validity and CN of a DER certificate (`None` if it
/// does not parse, which a certificate rustls verified always does).
pub fn peer_cert(der: &[u8]) -> Option<PeerCert> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned);
    let v = cert.validity();
    Some(PeerCert {
        subject: rfc4514(cert.subject()),
        issuer: rfc4514(cert.issuer()),
        validity: format!(
            "{} - {}",
            utc(v.not_before.to_datetime()),
            utc(v.not_after.to_datetime())
        ),
        common_name,
    })
}

fn utc(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// A name as RabbitMQ formats it (`rabbit_cert_info`): RFC 4514, the
/// RDNs in reverse order of the encoding, joined with commas, the
/// attributes of a multi-valued RDN joined with `+`.
fn rfc4514(name: &x509_parser::x509::X509Name) -> String {
    let registry = x509_parser::objects::oid_registry();
    let rdns: Vec<String> = name
        .iter_rdn()
        .map(|rdn| {
            rdn.iter()
                .map(|atv| {
                    let oid = atv.attr_type();
                    let key = x509_parser::objects::oid2abbrev(oid, registry)
                        .map(str::to_owned)
                        .unwrap_or_else(|_| oid.to_id_string());
                    let value = match atv.as_str() {
                        Ok(s) => escape(s),
                        // Not a string type: RFC 4514's #hex form.
                        Err(_) => {
                            let hex: String = atv
                                .attr_value()
                                .data
                                .iter()
                                .map(|b| format!("{b:02x}"))
                                .collect();
                            format!("#{hex}")
                        }
                    };
                    format!("{key}={value}")
                })
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect();
    rdns.into_iter().rev().collect::<Vec<_>>().join(",")
}

/// RFC 4514 section 2.4 escaping.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let last = s.chars().count().saturating_sub(1);
    for (i, c) in s.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == '#' || c == ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Why a handshake failed, for the log: a refused client certificate is
/// named as such (expired, unknown issuer, none sent...), anything else is
/// a failed handshake (not TLS at all, a protocol error, a reset).
pub fn handshake_error(e: &std::io::Error) -> (bool, String) {
    let inner = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
    match inner {
        Some(rustls::Error::InvalidCertificate(c)) => {
            (true, format!("client certificate refused: {c}"))
        }
        Some(rustls::Error::NoCertificatesPresented) => (
            true,
            "client certificate refused: none presented (fail_if_no_peer_cert)".into(),
        ),
        Some(r) => (false, r.to_string()),
        None => (false, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_follows_rfc4514() {
        assert_eq!(escape("a,b+c"), "a\\,b\\+c");
        assert_eq!(escape("#x "), "\\#x\\ ");
        assert_eq!(escape("plain"), "plain");
    }

    #[test]
    fn missing_files_are_named() {
        let cfg = TlsConfig {
            certfile: Some("/nonexistent/cert.pem".into()),
            keyfile: Some("/nonexistent/key.pem".into()),
            ..TlsConfig::default()
        };
        let e = Tls::load(&cfg).err().unwrap();
        assert!(e.contains("certfile /nonexistent/cert.pem"), "{e}");
        assert!(Tls::load(&TlsConfig::default()).unwrap().is_none());
    }
}
