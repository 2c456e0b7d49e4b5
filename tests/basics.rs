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
