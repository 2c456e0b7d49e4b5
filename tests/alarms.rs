//! Resource alarms block publishing connections (connection.blocked) and
//! never drop a message; connection.unblocked follows when they clear.

mod common;
use common::*;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::BasicProperties;
use std::time::Duration;

#[tokio::test]
async fn alarm_blocks_publishers_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    // The housekeeping check stays out of the way; the test raises the alarm itself.
    config.limits.check_interval_ms = 3_600_000;
    let b = TestBroker::start_with(dir, config).await;
    let (pc, pub_ch) = b.channel().await;
    let (_cc, cons_ch) = b.channel().await;
    pub_ch
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    pub_ch
        .queue_declare(
            "alarm".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let c = publish_confirmed(&pub_ch, "", "alarm", b"before", BasicProperties::default()).await;
    assert!(c.is_ack());

    b.set_alarm(&["disk free below limit (test)"]);
    assert!(
        eventually(5, || pc.status().blocked()).await,
        "publisher saw connection.blocked"
    );
    // Publishes sent while blocked are not read, hence neither queued nor confirmed...
    let ch2 = pub_ch.clone();
    let publisher = tokio::spawn(async move {
        let mut acks = 0;
        for i in 0..10u8 {
            let c = publish_confirmed(&ch2, "", "alarm", &[i], BasicProperties::default()).await;
            if c.is_ack() {
                acks += 1;
            }
        }
        acks
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // ...while a connection that never published still works.
    let q = cons_ch
        .queue_declare("alarm".into(), passive(), FieldTable::default())
        .await
        .unwrap();
    assert_eq!(q.message_count(), 1);

    b.clear_alarm();
    assert!(
        eventually(5, || !pc.status().blocked()).await,
        "publisher saw connection.unblocked"
    );
    assert_eq!(within(10, publisher).await.unwrap(), 10);
    let q = cons_ch
        .queue_declare("alarm".into(), passive(), FieldTable::default())
        .await
        .unwrap();
    assert_eq!(q.message_count(), 11, "nothing was dropped");
    b.stop().await;
}

#[tokio::test]
async fn disk_limit_raises_the_alarm() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.limits.disk_free_limit = u64::MAX;
    config.limits.check_interval_ms = 50;
    let b = TestBroker::start_with(dir, config).await;
    assert!(eventually(5, || b.alarm_on()).await);
    assert!(b.alarm_reasons()[0].contains("disk"));
    b.stop().await;
}

/// While blocked the broker does not read the socket, so the client's
/// heartbeats wait there: the connection must not be closed for missed
/// heartbeats (RabbitMQ pauses heartbeat monitoring too).
#[tokio::test]
async fn a_blocked_connection_survives_its_heartbeat_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.limits.check_interval_ms = 3_600_000;
    let b = TestBroker::start_with(dir, config).await;
    let c = connect(&format!("{}?heartbeat=1", b.uri())).await;
    let ch = c.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    ch.queue_declare(
        "hb".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let publish = |body: &'static [u8]| {
        let ch = ch.clone();
        async move {
            publish_confirmed(&ch, "", "hb", body, BasicProperties::default())
                .await
                .is_ack()
        }
    };
    assert!(publish(b"before").await);
    b.set_alarm(&["test"]);
    assert!(eventually(5, || c.status().blocked()).await);
    tokio::time::sleep(Duration::from_millis(3500)).await;
    b.clear_alarm();
    assert!(eventually(5, || !c.status().blocked()).await);
    assert!(c.status().connected(), "closed while blocked");
    assert!(within(5, publish(b"after")).await);
    b.stop().await;
}
