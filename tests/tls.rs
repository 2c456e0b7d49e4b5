//! TLS: amqps with lapin and a raw rustls client, against certificates made
//! here with rcgen (a test CA, the server's certificate, client
//! certificates good, expired and from another CA); SASL EXTERNAL; HTTPS
//! management through lepusctl; and the bad input of the issue (plain AMQP
//! on the TLS port, TLS on the plain port, a stalled handshake, unreadable
//! certificate files).

mod common;

use common::http::Api;
use common::*;
use lapin::options::*;
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, DefaultConnectionBuilder};
use lepus::config::TlsVerify;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A CA and what it signed, written as PEM files in a temp dir.
struct Pki {
    dir: tempfile::TempDir,
    ca: Issuer<'static, KeyPair>,
    ca_pem: String,
}

/// A certificate and its key, PEM.
struct Cert {
    pem: String,
    key: String,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_pem = p.self_signed(&key).unwrap().pem();
        Pki {
            dir: tempfile::tempdir().unwrap(),
            ca: Issuer::new(p, key),
            ca_pem,
        }
    }

    /// The server's certificate: 127.0.0.1 and localhost.
    fn server(&self) -> Cert {
        let key = KeyPair::generate().unwrap();
        let mut p =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        p.distinguished_name.push(DnType::CommonName, "lepus");
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = p.signed_by(&key, &self.ca).unwrap();
        Cert {
            pem: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    /// A client certificate with subject O=Lepus tests, CN=`cn`.
    fn client(&self, cn: &str, expired: bool) -> Cert {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        // Encoded O then CN (rcgen starts with a CN; start empty instead),
        // so RabbitMQ's reversed form is "CN=...,O=...".
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name
            .push(DnType::OrganizationName, "Lepus tests");
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if expired {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let cert = p.signed_by(&key, &self.ca).unwrap();
        Cert {
            pem: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Server certificate, key and CA files; TLS on a free port.
    fn config(&self, dir: &std::path::Path) -> lepus::config::Config {
        let server = self.server();
        let mut c = test_config(dir);
        c.tls.port = 0;
        c.tls.certfile = Some(self.write("server.pem", &server.pem));
        c.tls.keyfile = Some(self.write("server.key", &server.key));
        c.tls.cacertfile = Some(self.write("ca.pem", &self.ca_pem));
        c
    }
}

async fn start_tls(pki: &Pki, f: impl FnOnce(&mut lepus::config::Config)) -> TestBroker {
    let dir = tempfile::tempdir().unwrap();
    let mut c = pki.config(dir.path());
    f(&mut c);
    TestBroker::start_with(dir, c).await
}

fn tls_addr(b: &TestBroker) -> SocketAddr {
    b.tls_addr().expect("TLS is on")
}

/// lapin over amqps, trusting `ca`, presenting `identity` if given.
async fn amqps(
    addr: SocketAddr,
    query: &str,
    ca: &str,
    identity: Option<&Cert>,
) -> lapin::Result<Connection> {
    let uri = format!("amqps://guest:guest@127.0.0.1:{}/%2f{query}", addr.port());
    let tls = OwnedTLSConfig {
        identity: identity.map(|c| OwnedIdentity::PKCS8 {
            pem: c.pem.clone().into_bytes(),
            key: c.key.clone().into_bytes(),
        }),
        cert_chain: Some(ca.to_owned()),
    };
    let builder = DefaultConnectionBuilder::new()?
        .with_uri_str(uri)
        .with_tls_config(tls);
    tokio::time::timeout(Duration::from_secs(10), builder.connect())
        .await
        .expect("amqps connect answers in time")
}

/// A raw rustls client: the TLS handshake, then bytes.
async fn raw_tls(
    addr: SocketAddr,
    ca: &str,
    identity: Option<&Cert>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let b = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let config = match identity {
        Some(id) => b
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(id.pem.as_bytes())
                    .map(|c| c.unwrap())
                    .collect(),
                PrivateKeyDer::from_pem_slice(id.key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => b.with_no_client_auth(),
    };
    let tcp = TcpStream::connect(addr).await?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    tokio::time::timeout(
        Duration::from_secs(10),
        connector.connect(ServerName::try_from("127.0.0.1").unwrap(), tcp),
    )
    .await
    .expect("TLS handshake answers in time")
}

/// The mechanisms of connection.start, read over `io` after the header.
async fn start_mechanisms<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    io: &mut S,
) -> String {
    io.write_all(lepus::protocol::PROTOCOL_HEADER)
        .await
        .unwrap();
    io.flush().await.unwrap();
    let mut buf = bytes::BytesMut::new();
    loop {
        if let Some(f) = lepus::protocol::decode_frame(&mut buf, 1 << 20).unwrap() {
            let (_, m) = amq_protocol::protocol::parse_class(&f.payload[..]).unwrap();
            let amq_protocol::protocol::AMQPClass::Connection(
                amq_protocol::protocol::connection::AMQPMethod::Start(s),
            ) = m
            else {
                panic!("expected connection.start, got {m:?}");
            };
            return String::from_utf8_lossy(s.mechanisms.as_bytes()).into_owned();
        }
        let n = tokio::time::timeout(Duration::from_secs(10), io.read_buf(&mut buf))
            .await
            .expect("connection.start in time")
            .unwrap();
        assert!(n > 0, "closed before connection.start");
    }
}

/// Read until the peer closes (or errors); what was read. Panics if the
/// socket stays open for `secs`.
async fn read_to_close(s: &mut TcpStream, secs: u64) -> Vec<u8> {
    let mut got = vec![];
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(secs), s.read(&mut buf))
            .await
            .expect("the server closes the socket")
        {
            Ok(0) | Err(_) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// The broker's log lines, captured (the test's runtime is one thread, so
/// a thread-default subscriber sees every broker task).
#[derive(Clone, Default)]
struct Logs(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn capture() -> (Logs, tracing::subscriber::DefaultGuard) {
        let logs = Logs::default();
        let l = logs.clone();
        let sub = tracing_subscriber::fmt()
            .with_writer(move || l.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        (logs, tracing::subscriber::set_default(sub))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// Wait (bounded) for a line containing every one of `words`.
    async fn line_with(&self, words: &[&str]) -> String {
        for _ in 0..100 {
            if let Some(l) = self
                .text()
                .lines()
                .find(|l| words.iter().all(|w| l.contains(w)))
            {
                return l.to_owned();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no log line with {words:?} in:\n{}", self.text());
    }
}

async fn connections(b: &TestBroker) -> Vec<Value> {
    let api = Api::new(&b.mgmt_url());
    let r = api.get("/api/connections").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.body.as_array().unwrap().clone()
}

async fn connection_where(b: &TestBroker, f: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..100 {
        if let Some(c) = connections(b).await.into_iter().find(&f) {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no such connection in {:?}", connections(b).await);
}

#[tokio::test]
async fn amqps_publish_consume_and_the_connection_json() {
    let pki = Pki::new("Lepus test CA");
    let b = start_tls(&pki, |_| {}).await;
    let conn = amqps(tls_addr(&b), "", &pki.ca_pem, None)
        .await
        .expect("amqps connects");
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare(
        "tls.q".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    // Larger than one TLS record (16 KiB) and than one frame.
    let big = vec![7u8; 300_000];
    for body in [b"hello over TLS".to_vec(), big.clone()] {
        ch.basic_publish(
            "".into(),
            "tls.q".into(),
            BasicPublishOptions::default(),
            &body,
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    let mut consumer = ch
        .basic_consume(
            "tls.q".into(),
            "c".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    for want in [b"hello over TLS".to_vec(), big] {
        let d = within(10, futures_lite::StreamExt::next(&mut consumer))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(d.data, want);
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    // Plain AMQP still works beside it.
    let plain = b.connect().await;
    let c = connection_where(&b, |c| c["ssl"] == true).await;
    assert_eq!(c["ssl_protocol"], "tlsv1.3", "{c}");
    assert_eq!(c["ssl_key_exchange"], "any", "{c}");
    assert!(
        ["aes_128_gcm", "aes_256_gcm", "chacha20_poly1305"]
            .contains(&c["ssl_cipher"].as_str().unwrap()),
        "{c}"
    );
    assert_eq!(c["ssl_hash"], "aead", "{c}");
    assert_eq!(c["peer_cert_subject"], Value::Null, "no client certificate");
    assert_eq!(c["auth_mechanism"], "PLAIN");
    assert!(c["name"]
        .as_str()
        .unwrap()
        .ends_with(&format!("-> {}", tls_addr(&b))));
    let p = connection_where(&b, |c| c["ssl"] == false).await;
    for k in ["ssl_protocol", "ssl_cipher", "peer_cert_subject"] {
        assert_eq!(p[k], Value::Null, "{k} on a plain connection: {p}");
    }
    let o = Api::new(&b.mgmt_url()).get("/api/overview").await.body;
    assert!(
        o["listeners"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["protocol"] == "amqp/ssl" && l["port"] == tls_addr(&b).port()),
        "{}",
        o["listeners"]
    );
    conn.close(200, "bye".into()).await.unwrap();
    plain.close(200, "bye".into()).await.unwrap();
    b.stop().await;
}

#[tokio::test]
async fn versions_limits_the_protocol() {
    let pki = Pki::new("Lepus test CA");
    let b = start_tls(&pki, |c| c.tls.versions = vec!["tlsv1.2".into()]).await;
    let conn = amqps(tls_addr(&b), "", &pki.ca_pem, None)
        .await
        .expect("amqps over TLS 1.2");
    let c = connection_where(&b, |c| c["ssl"] == true).await;
    assert_eq!(c["ssl_protocol"], "tlsv1.2", "{c}");
    assert_eq!(c["ssl_key_exchange"], "ecdhe_ecdsa", "{c}");
    conn.close(200, "bye".into()).await.unwrap();
    b.stop().await;
}

#[tokio::test]
async fn external_takes_the_user_from_the_certificate_cn() {
    let pki = Pki::new("Lepus test CA");
    let b = start_tls(&pki, |c| c.tls.verify = TlsVerify::VerifyPeer).await;
    b.put_user("alice", "not-used-by-external");
    b.set_permissions("alice", "/", ".*", ".*", ".*");
    let alice = pki.client("alice", false);

    // EXTERNAL is offered only on a TLS connection with a certificate.
    let mut with_cert = raw_tls(tls_addr(&b), &pki.ca_pem, Some(&alice))
        .await
        .unwrap();
    assert_eq!(
        start_mechanisms(&mut with_cert).await,
        "PLAIN AMQPLAIN EXTERNAL"
    );
    let mut without = raw_tls(tls_addr(&b), &pki.ca_pem, None).await.unwrap();
    assert_eq!(start_mechanisms(&mut without).await, "PLAIN AMQPLAIN");
    let mut plain = TcpStream::connect(b.addr()).await.unwrap();
    assert_eq!(start_mechanisms(&mut plain).await, "PLAIN AMQPLAIN");
    drop((with_cert, without, plain));

    let conn = amqps(
        tls_addr(&b),
        "?auth_mechanism=external",
        &pki.ca_pem,
        Some(&alice),
    )
    .await
    .expect("EXTERNAL login as alice");
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare(
        "alice.q".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let c = connection_where(&b, |c| c["user"] == "alice").await;
    assert_eq!(c["auth_mechanism"], "EXTERNAL", "{c}");
    assert_eq!(c["peer_cert_subject"], "CN=alice,O=Lepus tests", "{c}");
    assert_eq!(c["peer_cert_issuer"], "CN=Lepus test CA", "{c}");
    assert!(
        c["peer_cert_validity"].as_str().unwrap().contains("Z - "),
        "{c}"
    );
    conn.close(200, "bye".into()).await.unwrap();

    // With a certificate, PLAIN still logs in as the named user.
    let conn = amqps(tls_addr(&b), "", &pki.ca_pem, Some(&alice))
        .await
        .expect("PLAIN with a client certificate");
    conn.close(200, "bye".into()).await.unwrap();

    // A verified certificate whose CN names no user: refused.
    let mallory = pki.client("mallory", false);
    let e = amqps(
        tls_addr(&b),
        "?auth_mechanism=external",
        &pki.ca_pem,
        Some(&mallory),
    )
    .await
    .expect_err("no user mallory");
    let text = format!("{e:?}");
    assert!(
        text.contains("403") || text.contains("ACCESS_REFUSED") || text.contains("refused"),
        "{text}"
    );
    // EXTERNAL without a certificate: not offered, refused.
    assert!(
        amqps(tls_addr(&b), "?auth_mechanism=external", &pki.ca_pem, None)
            .await
            .is_err()
    );
    b.stop().await;
}

#[tokio::test]
async fn untrusted_expired_and_missing_client_certificates_are_refused() {
    let (logs, _guard) = Logs::capture();
    let pki = Pki::new("Lepus test CA");
    let other = Pki::new("Someone else's CA");
    let b = start_tls(&pki, |c| {
        c.tls.verify = TlsVerify::VerifyPeer;
        c.tls.fail_if_no_peer_cert = true;
    })
    .await;
    let good = pki.client("guest", false);
    let wrong_ca = other.client("guest", false);
    let expired = pki.client("guest", true);
    assert!(
        amqps(tls_addr(&b), "", &pki.ca_pem, Some(&wrong_ca))
            .await
            .is_err(),
        "a client certificate from another CA is refused"
    );
    logs.line_with(&["TLS connection refused", "UnknownIssuer"])
        .await;
    assert!(
        amqps(tls_addr(&b), "", &pki.ca_pem, Some(&expired))
            .await
            .is_err(),
        "an expired client certificate is refused"
    );
    logs.line_with(&["TLS connection refused", "certificate expired"])
        .await;
    assert!(
        amqps(tls_addr(&b), "", &pki.ca_pem, None).await.is_err(),
        "fail_if_no_peer_cert: no certificate, no connection"
    );
    logs.line_with(&["TLS connection refused", "none presented"])
        .await;
    assert_eq!(b.connection_count(), 0);
    let conn = amqps(tls_addr(&b), "", &pki.ca_pem, Some(&good))
        .await
        .expect("a good certificate");
    assert_eq!(b.connection_count(), 1);
    conn.close(200, "bye".into()).await.unwrap();
    // A client that does not trust the server's CA gives up itself.
    assert!(amqps(tls_addr(&b), "", &other.ca_pem, Some(&good))
        .await
        .is_err());
    b.stop().await;

    // verify_peer without fail_if_no_peer_cert: a certificate is optional,
    // but one that is sent must be good.
    let b = start_tls(&pki, |c| c.tls.verify = TlsVerify::VerifyPeer).await;
    let conn = amqps(tls_addr(&b), "", &pki.ca_pem, None)
        .await
        .expect("no certificate is fine");
    conn.close(200, "bye".into()).await.unwrap();
    assert!(amqps(tls_addr(&b), "", &pki.ca_pem, Some(&wrong_ca))
        .await
        .is_err());
    b.stop().await;
}

#[tokio::test]
async fn wrong_protocol_on_either_port_and_stalled_handshakes_are_closed() {
    let (logs, _guard) = Logs::capture();
    let pki = Pki::new("Lepus test CA");
    let b = start_tls(&pki, |c| c.tls.handshake_timeout_ms = 300).await;

    // A plain AMQP header on the TLS port: no AMQP answer, closed.
    let mut s = TcpStream::connect(tls_addr(&b)).await.unwrap();
    s.write_all(lepus::protocol::PROTOCOL_HEADER).await.unwrap();
    let got = read_to_close(&mut s, 10).await;
    assert!(!got.starts_with(b"AMQP"), "{got:?}");
    logs.line_with(&["TLS handshake failed"]).await;

    // lapin speaking plain AMQP to the TLS port fails instead of hanging.
    let plain_uri = format!("amqp://guest:guest@{}/%2f", tls_addr(&b));
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        Connection::connect(&plain_uri, lapin::ConnectionProperties::default()),
    )
    .await
    .expect("lapin gives up in time");
    assert!(r.is_err());

    // A TLS ClientHello on the plain port: RabbitMQ's answer to a wrong
    // header (our protocol header), then the socket closes.
    let mut s = TcpStream::connect(b.addr()).await.unwrap();
    let hello = [
        0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00, 0xa1, 0x03, 0x03, 0, 0, 0, 0,
    ];
    s.write_all(&hello).await.unwrap();
    let got = read_to_close(&mut s, 10).await;
    assert_eq!(got, lepus::protocol::PROTOCOL_HEADER);
    // ...and a real TLS client on the plain port gets an error, not a hang.
    assert!(raw_tls(b.addr(), &pki.ca_pem, None).await.is_err());

    // A client that opens the TCP connection and says nothing: dropped
    // after the handshake timeout (300 ms here), well within 10 s.
    let mut s = TcpStream::connect(tls_addr(&b)).await.unwrap();
    read_to_close(&mut s, 10).await;
    logs.line_with(&["TLS handshake timed out", "timeout_ms=300"])
        .await;
    // Half a ClientHello, then silence: the same.
    let mut s = TcpStream::connect(tls_addr(&b)).await.unwrap();
    s.write_all(&hello).await.unwrap();
    read_to_close(&mut s, 10).await;

    // The broker still serves both ports.
    let conn = amqps(tls_addr(&b), "", &pki.ca_pem, None).await.unwrap();
    conn.close(200, "bye".into()).await.unwrap();
    let conn = b.connect().await;
    conn.close(200, "bye".into()).await.unwrap();
    b.stop().await;
}

#[tokio::test]
async fn unreadable_or_invalid_certificate_files_stop_the_start() {
    let pki = Pki::new("Lepus test CA");
    let start = |f: Box<dyn FnOnce(&mut lepus::config::Config)>| {
        let dir = tempfile::tempdir().unwrap();
        let mut c = pki.config(dir.path());
        f(&mut c);
        async move {
            let r = lepus::server::start(c).await;
            drop(dir);
            match r {
                Ok(h) => {
                    h.shutdown().await;
                    panic!("the broker started")
                }
                Err(e) => e.to_string(),
            }
        }
    };
    let missing = pki.dir.path().join("missing.pem");
    let m = missing.clone();
    let e = start(Box::new(move |c| c.tls.certfile = Some(m))).await;
    assert!(
        e.contains("cannot read certfile") && e.contains("missing.pem"),
        "{e}"
    );
    let garbage = pki.write("garbage.pem", "this is not PEM\n");
    let g = garbage.clone();
    let e = start(Box::new(move |c| c.tls.certfile = Some(g))).await;
    assert!(e.contains("holds no PEM certificate"), "{e}");
    let g = garbage.clone();
    let e = start(Box::new(move |c| c.tls.keyfile = Some(g))).await;
    assert!(e.contains("holds no PEM private key"), "{e}");
    // A key of another certificate.
    let other_key = pki.write("other.key", &pki.client("x", false).key);
    let e = start(Box::new(move |c| c.tls.keyfile = Some(other_key))).await;
    assert!(e.contains("does not go with certfile"), "{e}");
    let e = start(Box::new(|c| {
        c.tls.verify = TlsVerify::VerifyPeer;
        c.tls.cacertfile = Some("/nonexistent/ca.pem".into());
    }))
    .await;
    assert!(
        e.contains("cannot read cacertfile /nonexistent/ca.pem"),
        "{e}"
    );

    // The binary: the same message on stderr and a non-zero exit, with the
    // files named by LEPUS_TLS_* variables.
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_lepus"))
        .args(["--port", "0", "--mgmt-port", "0", "--tls-port", "0"])
        .arg("--data-dir")
        .arg(dir.path())
        .env("LEPUS_TLS_CERTFILE", &garbage)
        .env("LEPUS_TLS_KEYFILE", pki.dir.path().join("server.key"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("holds no PEM certificate") && stderr.contains("garbage.pem"),
        "{stderr}"
    );
}

/// The binary with `--tls-port` and LEPUS_TLS_* variables, as deployed:
/// it logs where amqps listens, and a client gets through.
#[tokio::test]
async fn the_binary_serves_amqps_from_flags_and_environment() {
    let pki = Pki::new("Lepus test CA");
    let data = tempfile::tempdir().unwrap();
    let c = pki.config(data.path());
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_lepus"))
        .args(["--port", "0", "--mgmt-port", "0", "--tls-port", "0"])
        .arg("--data-dir")
        .arg(data.path())
        .env("LEPUS_TLS_CERTFILE", c.tls.certfile.as_ref().unwrap())
        .env("LEPUS_TLS_KEYFILE", c.tls.keyfile.as_ref().unwrap())
        .env("LEPUS_TLS_VERSIONS", "tlsv1.2")
        .env("LEPUS_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let amqps_addr: SocketAddr = loop {
        line.clear();
        let n = within(
            20,
            tokio::io::AsyncBufReadExt::read_line(&mut lines, &mut line),
        )
        .await
        .unwrap();
        assert!(n > 0, "lepus exited before it was ready");
        if line.contains("lepus ready") {
            let a = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("amqps="))
                .unwrap_or_else(|| panic!("no amqps= in {line}"));
            break a.trim_end_matches(',').parse().unwrap();
        }
    };
    let conn = amqps(amqps_addr, "", &pki.ca_pem, None)
        .await
        .expect("amqps to the binary");
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare(
        "bin.q".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    conn.close(200, "bye".into()).await.unwrap();
    child.kill().await.unwrap();
}

fn lepusctl(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_lepusctl"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn https_management_through_lepusctl_with_a_custom_ca() {
    let pki = Pki::new("Lepus test CA");
    let b = start_tls(&pki, |c| c.mgmt_tls = true).await;
    let url = format!("https://127.0.0.1:{}", b.mgmt_addr().port());
    let ca = pki.dir.path().join("ca.pem");
    let ca = ca.to_str().unwrap();
    let conn = amqps(tls_addr(&b), "", &pki.ca_pem, None).await.unwrap();

    let run = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            lepusctl(&a)
        })
    };
    let args = |rest: &[&str]| {
        let mut v = vec![
            "--url".to_owned(),
            url.clone(),
            "--cacert".to_owned(),
            ca.to_owned(),
        ];
        v.extend(rest.iter().map(|s| s.to_string()));
        v
    };
    let (ok, out, err) = run(args(&["status"])).await.unwrap();
    assert!(ok, "{out}{err}");
    assert!(out.contains("https"), "{out}");
    assert!(out.contains("amqp/ssl"), "{out}");
    let (ok, out, err) = run(args(&["declare", "queue", "over-https"]))
        .await
        .unwrap();
    assert!(ok, "{out}{err}");
    assert!(b.has_queue("/", "over-https"));
    let (ok, out, err) = run(args(&["list", "connections", "--format", "json"]))
        .await
        .unwrap();
    assert!(ok, "{out}{err}");
    let list: Value = serde_json::from_str(&out).unwrap();
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .any(|c| c["ssl"] == true && c["ssl_protocol"] == "tlsv1.3"),
        "{list}"
    );

    // Without the CA, the server's certificate is not trusted.
    let (ok, _, err) = run(vec!["--url".into(), url.clone(), "status".into()])
        .await
        .unwrap();
    assert!(!ok);
    assert!(!err.is_empty());
    // Plain HTTP to the HTTPS port gets nowhere.
    let (ok, _, _) = run(vec![
        "--url".into(),
        format!("http://127.0.0.1:{}", b.mgmt_addr().port()),
        "status".into(),
    ])
    .await
    .unwrap();
    assert!(!ok);

    // /metrics over HTTPS too.
    let mut s = raw_tls(b.mgmt_addr(), &pki.ca_pem, None).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut page = vec![];
    let _ = within(10, s.read_to_end(&mut page)).await;
    let page = String::from_utf8_lossy(&page);
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.contains("lepus_"), "{page}");
    conn.close(200, "bye".into()).await.unwrap();
    b.stop().await;
}

/// In a cluster, a follower relays amqps byte for byte: TLS ends at the
/// leader, with the leader's certificate, and confirms come from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_follower_relays_amqps_to_the_leader() {
    let pki = Pki::new("Lepus cluster CA");
    let server = pki.server();
    let cert = pki.write("server.pem", &server.pem);
    let key = pki.write("server.key", &server.key);
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let env = [
        ("LEPUS_TLS_PORT", "0"),
        ("LEPUS_TLS_CERTFILE", cert.as_str()),
        ("LEPUS_TLS_KEYFILE", key.as_str()),
    ];
    let cl = tokio::task::block_in_place(|| common::cluster::Cluster::start(&env));
    let follower: SocketAddr = cl.nodes[1]
        .amqps
        .parse()
        .expect("the follower's amqps address");
    let c = amqps(follower, "", &pki.ca_pem, None)
        .await
        .expect("amqps through a follower");
    let ch = c.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    ch.queue_declare("tq".into(), durable(), FieldTable::default())
        .await
        .unwrap();
    let conf = ch
        .basic_publish(
            "".into(),
            "tq".into(),
            BasicPublishOptions::default(),
            b"over tls, through a follower",
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(conf.is_ack());
    // The leader holds the connection, and sees it as TLS.
    let leader = cl.nodes[0].api();
    let conns = tokio::task::block_in_place(|| {
        common::cluster::get_json(&leader, "/api/connections").unwrap()
    });
    assert!(
        conns.as_array().unwrap().iter().any(|x| x["ssl"] == true),
        "{conns}"
    );
    let _ = c.close(200, "bye".into()).await;
}
