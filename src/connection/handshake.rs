//! The AMQP handshake: protocol header, connection.start / start-ok (PLAIN
//! and AMQPLAIN; EXTERNAL on a TLS connection whose client sent a verified
//! certificate, the user being its CN as with RabbitMQ's
//! `rabbitmq_auth_mechanism_ssl` and `ssl_cert_login_from = common_name`),
//! tune / tune-ok, open / open-ok, with RabbitMQ's refusals
//! (a failed login gets a 403 connection.close only from a client with the
//! `authentication_failure_close` capability; others see the socket close).
//! A straight-line async function over any byte stream (TCP, TLS), run
//! under a timeout by [`super::serve`].

use crate::broker::Broker;
use crate::error::{AmqpError, AmqpResult};
use crate::protocol::{self, put_method, RawFrame, FRAME_HEARTBEAT, FRAME_METHOD, PROTOCOL_HEADER};
use amq_protocol::frame::parsing::parse_frame;
use amq_protocol::protocol::{connection as cm, parse_class, AMQPClass};
use amq_protocol::types::{AMQPValue, FieldTable, LongString};
use bytes::BytesMut;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub(super) struct Handshake {
    pub(super) user: String,
    pub(super) vhost: Arc<crate::broker::vhost::VHost>,
    pub(super) channel_max: u16,
    pub(super) frame_max: u32,
    pub(super) heartbeat: u16,
    pub(super) cancel_notify: bool,
    pub(super) blocked_capability: bool,
    pub(super) client_properties: amq_protocol::types::FieldTable,
    /// The SASL mechanism the client logged in with.
    pub(super) mechanism: String,
}

pub(super) async fn read_frame(
    rd: &mut (impl AsyncRead + Unpin),
    buf: &mut BytesMut,
    frame_max: u32,
) -> AmqpResult<Option<RawFrame>> {
    loop {
        if let Some(f) = protocol::decode_frame(buf, frame_max)? {
            return Ok(Some(f));
        }
        match rd.read_buf(buf).await {
            Ok(0) | Err(_) => return Ok(None),
            Ok(_) => {}
        }
    }
}

async fn read_method(
    rd: &mut (impl AsyncRead + Unpin),
    buf: &mut BytesMut,
    frame_max: u32,
) -> AmqpResult<Option<AMQPClass>> {
    loop {
        let Some(f) = read_frame(rd, buf, frame_max).await? else {
            return Ok(None);
        };
        match f.kind {
            FRAME_HEARTBEAT => continue,
            FRAME_METHOD if f.channel == 0 => {
                return parse_class(&f.payload[..])
                    .map(|(_, m)| Some(m))
                    .map_err(|_| AmqpError::frame_error("malformed method frame"));
            }
            _ => {
                return Err(AmqpError::unexpected_frame(
                    "expected a connection method on channel 0",
                ))
            }
        }
    }
}

fn server_properties() -> FieldTable {
    let mut caps = FieldTable::default();
    for c in [
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "connection.blocked",
        "authentication_failure_close",
        "per_consumer_qos",
        "consumer_priorities",
        "direct_reply_to",
    ] {
        caps.insert(c.into(), AMQPValue::Boolean(true));
    }
    let mut p = FieldTable::default();
    let s = |v: &str| AMQPValue::LongString(LongString::from(v.as_bytes().to_vec()));
    p.insert("capabilities".into(), AMQPValue::FieldTable(caps));
    p.insert("product".into(), s("Lepus"));
    p.insert("version".into(), s(env!("CARGO_PKG_VERSION")));
    p.insert("platform".into(), s("Rust"));
    p.insert("cluster_name".into(), s("lepus"));
    p.insert("copyright".into(), s("The Lepus authors"));
    p.insert(
        "information".into(),
        s("An AMQP 0-9-1 broker; see README.md"),
    );
    p
}

async fn send_now(
    wr: &mut (impl AsyncWrite + Unpin),
    channel: u16,
    m: AMQPClass,
) -> std::io::Result<()> {
    let mut out = BytesMut::new();
    put_method(&mut out, channel, m);
    wr.write_all(&out).await?;
    // TLS holds written records until flushed; on TCP this is a no-op.
    wr.flush().await
}

async fn refuse(wr: &mut (impl AsyncWrite + Unpin), e: AmqpError) {
    tracing::info!(error = %e, "connection refused");
    let _ = send_now(
        wr,
        0,
        AMQPClass::Connection(cm::AMQPMethod::Close(cm::Close {
            reply_code: e.code as u16,
            reply_text: e.reply_text().into(),
            class_id: e.class_id,
            method_id: e.method_id,
        })),
    )
    .await;
    let _ = wr.shutdown().await;
}

/// Parse a SASL response into (user, password).
fn sasl_credentials(mechanism: &str, response: &[u8]) -> Option<(String, String)> {
    match mechanism {
        "PLAIN" => {
            let mut parts = response.split(|b| *b == 0);
            let _authzid = parts.next()?;
            let user = String::from_utf8(parts.next()?.to_vec()).ok()?;
            let pass = String::from_utf8(parts.next()?.to_vec()).ok()?;
            Some((user, pass))
        }
        "AMQPLAIN" => {
            // A field table without its length prefix.
            let mut framed = (response.len() as u32).to_be_bytes().to_vec();
            framed.extend_from_slice(response);
            let (_, t) = amq_protocol::types::parsing::parse_field_table(&framed[..]).ok()?;
            let user = crate::broker::args::get_str(&t, "LOGIN")?;
            let pass = crate::broker::args::get_str(&t, "PASSWORD")?;
            Some((user, pass))
        }
        _ => None,
    }
}

pub(super) async fn handshake(
    broker: &Arc<Broker>,
    rd: &mut (impl AsyncRead + Unpin),
    wr: &mut (impl AsyncWrite + Unpin),
    buf: &mut BytesMut,
    peer: SocketAddr,
    peer_cert: Option<&crate::tls::PeerCert>,
) -> std::io::Result<Option<Handshake>> {
    while buf.len() < 8 {
        if rd.read_buf(buf).await? == 0 {
            return Ok(None);
        }
    }
    // RabbitMQ also takes the AMQP 0-9 header ("AMQP" 1 1 0 9) as 0-9-1.
    if &buf[..8] != PROTOCOL_HEADER && &buf[..8] != b"AMQP\x01\x01\x00\x09" {
        // Wrong protocol or version: answer with ours and close (spec 4.2.2).
        let _ = parse_frame(&buf[..8]);
        wr.write_all(PROTOCOL_HEADER).await?;
        let _ = wr.flush().await;
        let _ = wr.shutdown().await;
        tracing::info!(%peer, header = ?&buf[..8], "bad protocol header");
        return Ok(None);
    }
    let _ = buf.split_to(8);
    let cfg = &broker.config;
    send_now(
        wr,
        0,
        AMQPClass::Connection(cm::AMQPMethod::Start(cm::Start {
            version_major: 0,
            version_minor: 9,
            server_properties: server_properties(),
            mechanisms: if peer_cert.is_some() {
                "PLAIN AMQPLAIN EXTERNAL".into()
            } else {
                "PLAIN AMQPLAIN".into()
            },
            locales: "en_US".into(),
        })),
    )
    .await?;
    let fm = cfg.frame_max;
    let so = match read_method(rd, buf, fm).await {
        Ok(Some(AMQPClass::Connection(cm::AMQPMethod::StartOk(so)))) => so,
        Ok(None) => return Ok(None),
        Ok(Some(_)) => {
            refuse(
                wr,
                AmqpError::command_invalid("expected connection.start-ok").hard(),
            )
            .await;
            return Ok(None);
        }
        Err(e) => {
            refuse(wr, e).await;
            return Ok(None);
        }
    };
    let caps = match so.client_properties.inner().get("capabilities") {
        Some(AMQPValue::FieldTable(t)) => t.clone(),
        _ => FieldTable::default(),
    };
    let cap = |k: &str| matches!(caps.inner().get(k), Some(AMQPValue::Boolean(true)));
    let mechanism = so.mechanism.as_str().to_owned();
    let user = match (mechanism.as_str(), peer_cert) {
        // The certificate was verified in the TLS handshake; the user it
        // names must exist, and no password is checked (RabbitMQ's
        // internal backend does the same for EXTERNAL).
        ("EXTERNAL", Some(cert)) => match &cert.common_name {
            Some(cn) => {
                if !broker.users.read().contains_key(cn) {
                    tracing::warn!(%peer, user = %cn, subject = %cert.subject, "EXTERNAL login refused: no such user");
                    None
                } else if cfg.loopback_users.contains(cn) && !peer.ip().is_loopback() {
                    tracing::warn!(%peer, user = %cn, "user may only connect via localhost");
                    None
                } else {
                    Some(cn.clone())
                }
            }
            None => {
                tracing::warn!(%peer, subject = %cert.subject, "EXTERNAL login refused: the client certificate has no CN");
                None
            }
        },
        _ => match sasl_credentials(&mechanism, so.response.as_bytes()) {
            Some((u, p)) => {
                let loopback_only = cfg.loopback_users.contains(&u);
                if loopback_only && !peer.ip().is_loopback() {
                    tracing::warn!(%peer, user = %u, "user may only connect via localhost");
                    None
                } else {
                    broker.authenticate(&u, &p).map(|x| x.name)
                }
            }
            None => None,
        },
    };
    let Some(user) = user else {
        let e = AmqpError::access_refused(format!(
            "Login was refused using authentication mechanism {mechanism}. For details see the broker logfile."
        ))
        .hard();
        if cap("authentication_failure_close") {
            refuse(wr, e).await;
        } else {
            // As RabbitMQ: a client that did not ask for a close method on
            // a failed login only sees the socket close.
            tracing::info!(%peer, error = %e, "connection refused (socket closed: the client lacks authentication_failure_close)");
            let _ = wr.shutdown().await;
        }
        return Ok(None);
    };
    send_now(
        wr,
        0,
        AMQPClass::Connection(cm::AMQPMethod::Tune(cm::Tune {
            channel_max: cfg.channel_max,
            frame_max: cfg.frame_max,
            heartbeat: cfg.heartbeat,
        })),
    )
    .await?;
    let tune = match read_method(rd, buf, fm).await {
        Ok(Some(AMQPClass::Connection(cm::AMQPMethod::TuneOk(t)))) => t,
        Ok(None) => return Ok(None),
        Ok(Some(_)) | Err(_) => {
            refuse(
                wr,
                AmqpError::command_invalid("expected connection.tune-ok").hard(),
            )
            .await;
            return Ok(None);
        }
    };
    let channel_max = match tune.channel_max {
        0 => cfg.channel_max,
        n => n.min(cfg.channel_max),
    };
    let frame_max = match tune.frame_max {
        0 => cfg.frame_max,
        n => n.min(cfg.frame_max),
    };
    if frame_max < protocol::FRAME_MIN_SIZE {
        refuse(
            wr,
            AmqpError::not_allowed(format!(
                "frame_max={frame_max} < {} min size",
                protocol::FRAME_MIN_SIZE
            ))
            .hard(),
        )
        .await;
        return Ok(None);
    }
    let open = match read_method(rd, buf, frame_max).await {
        Ok(Some(AMQPClass::Connection(cm::AMQPMethod::Open(o)))) => o,
        Ok(None) => return Ok(None),
        Ok(Some(_)) | Err(_) => {
            refuse(
                wr,
                AmqpError::command_invalid("expected connection.open").hard(),
            )
            .await;
            return Ok(None);
        }
    };
    let vname = open.virtual_host.as_str().to_owned();
    let Some(vhost) = broker.vhost(&vname) else {
        refuse(
            wr,
            AmqpError::not_allowed(format!("vhost {vname} not found")).with_method(10, 40),
        )
        .await;
        return Ok(None);
    };
    if !broker.can_access_vhost(&user, &vname) {
        refuse(
            wr,
            AmqpError::not_allowed(format!(
                "access to vhost '{vname}' refused for user '{user}'"
            ))
            .with_method(10, 40),
        )
        .await;
        return Ok(None);
    }
    // Vhost and user connection limits (RabbitMQ refuses at connection.open).
    if let Err(e) = broker.check_connection_limits(&user, &vname) {
        tracing::warn!(user = %user, vhost = %vname, reason = %e.text, "connection refused");
        refuse(wr, e.with_method(10, 40)).await;
        return Ok(None);
    }
    send_now(
        wr,
        0,
        AMQPClass::Connection(cm::AMQPMethod::OpenOk(cm::OpenOk {})),
    )
    .await?;
    Ok(Some(Handshake {
        user,
        vhost,
        channel_max,
        frame_max,
        heartbeat: tune.heartbeat,
        cancel_notify: cap("consumer_cancel_notify"),
        blocked_capability: cap("connection.blocked"),
        client_properties: so.client_properties,
        mechanism,
    }))
}
