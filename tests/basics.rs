//! Publishing, consuming, acks and confirms with lapin over a real socket.

mod common;
use common::*;
use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::BasicProperties;

#[tokio::test]
async fn publish_consume_ack_with_confirms() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let q = ch
        .queue_declare(
            "q1".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(q.name().as_str(), "q1");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    for i in 0..100u32 {
        let c =
            publish_confirmed(&ch, "", "q1", &i.to_be_bytes(), BasicProperties::default()).await;
        assert!(c.is_ack());
    }
    let mut consumer = ch
        .basic_consume(
            "q1".into(),
            "c1".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    for i in 0..100u32 {
        let d = within(5, consumer.next()).await.unwrap().unwrap();
        assert_eq!(d.data, i.to_be_bytes());
        assert!(!d.redelivered);
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    let q = ch
        .queue_declare("q1".into(), passive(), FieldTable::default())
        .await
        .unwrap();
    assert_eq!(q.message_count(), 0);
    b.stop().await;
}

/// `bind` as a list: one listener per address, all on the same port, so an
/// IPv6 client of localhost (`[::1]`) reaches the broker as an IPv4 one does;
/// the same for the management API's `mgmt_bind`.
#[tokio::test]
async fn listens_on_every_bind_address() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("skipped: this machine has no IPv6 loopback (::1)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.bind = vec!["127.0.0.1".into(), "::1".into()];
    config.mgmt_bind = vec!["127.0.0.1".into(), "::1".into()];
    let b = TestBroker::start_with(dir, config).await;
    let port = b.addr().port();
    // lapin's URI parser keeps only domain names (an IP becomes
    // "localhost"), so the address is set on the parsed URI.
    let at = |host: &str| {
        let mut uri: lapin::uri::AMQPUri = format!("amqp://guest:guest@localhost:{port}/%2f")
            .parse()
            .unwrap();
        uri.authority.host = host.into();
        within(
            10,
            lapin::Connection::connect_uri(uri, lapin::ConnectionProperties::default()),
        )
    };
    let v6 = at("::1").await.expect("connect over ::1");
    let v4 = at("127.0.0.1").await.expect("connect over 127.0.0.1");
    let ch6 = v6.create_channel().await.unwrap();
    ch6.confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await
        .unwrap();
    declare_queue(&ch6, "over-v6").await;
    publish_confirmed(
        &ch6,
        "",
        "over-v6",
        b"hello from ::1",
        lapin::BasicProperties::default(),
    )
    .await;
    let ch4 = v4.create_channel().await.unwrap();
    assert_eq!(drain(&ch4, "over-v6").await, vec!["hello from ::1"]);
    // The management API answers on both addresses, and sees the IPv6 peer.
    let mport = b.mgmt_addr().port();
    for base in [
        format!("http://127.0.0.1:{mport}"),
        format!("http://[::1]:{mport}"),
    ] {
        let a = common::http::Api::new(&base);
        let r = a.get("/api/connections").await;
        assert_eq!(r.status, 200, "{base}: {}", r.text);
        let peers: Vec<String> = r
            .body
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["peer_host"].as_str().unwrap_or("").to_string())
            .collect();
        assert!(peers.iter().any(|p| p == "::1"), "{base}: {peers:?}");
        let o = a.get("/api/overview").await.body;
        let amqp: Vec<&str> = o["listeners"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|l| l["protocol"] == "amqp")
            .map(|l| l["ip_address"].as_str().unwrap())
            .collect();
        assert_eq!(amqp, vec!["127.0.0.1", "::1"]);
    }
    b.stop().await;
}
