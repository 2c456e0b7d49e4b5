//! `lepusctl move SRC DST`: re-import a backlog (say, a dead-letter queue)
//! into another queue over AMQP, like a one-shot shovel.
//!
//! Consume SRC with manual acks and a prefetch window; publish each message
//! to DST through the default exchange (routing key DST, same properties and
//! body, mandatory) on a channel in confirm mode; ack the source message only
//! once its confirm has arrived. Killed at any point, nothing is lost: what
//! was not acked goes back to SRC. What was published but not yet acked
//! (at most the prefetch window) may then exist in both queues.

use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Confirmation, PublisherConfirm};
use lapin::{Connection, ConnectionProperties};
use std::io::IsTerminal;
use std::time::Duration;

pub struct MoveOpts {
    pub amqp_url: String,
    pub src: String,
    pub dst: String,
    pub max: Option<u64>,
    pub prefetch: u16,
    pub idle_timeout: Duration,
}

/// Move messages; returns how many were moved (confirmed in DST and acked in SRC).
pub fn move_messages(o: MoveOpts) -> Result<u64, String> {
    if o.src == o.dst {
        return Err("source and destination are the same queue".into());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(run(o))
}

fn err(what: &str) -> impl Fn(lapin::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

async fn run(o: MoveOpts) -> Result<u64, String> {
    let conn = tokio::time::timeout(
        Duration::from_secs(15),
        Connection::connect(
            &o.amqp_url,
            ConnectionProperties::default().with_connection_name("lepusctl move".into()),
        ),
    )
    .await
    .map_err(|_| "timed out connecting over AMQP".to_string())?
    .map_err(err("cannot connect over AMQP"))?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let check = conn.create_channel().await.map_err(err("channel"))?;
    let src = check
        .queue_declare(o.src.as_str().into(), passive, FieldTable::default())
        .await
        .map_err(|e| format!("source queue '{}': {e}", o.src))?;
    let check = conn.create_channel().await.map_err(err("channel"))?;
    check
        .queue_declare(o.dst.as_str().into(), passive, FieldTable::default())
        .await
        .map_err(|e| format!("destination queue '{}': {e}", o.dst))?;
    let _ = check.close(200, "ok".into()).await;
    let available = src.message_count() as u64;
    let target = o.max.map_or(available, |m| m.min(available));
    if target == 0 {
        let _ = conn.close(200, "done".into()).await;
        return Ok(0);
    }

    let out = conn.create_channel().await.map_err(err("channel"))?;
    out.confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(err("confirm.select"))?;
    let inp = conn.create_channel().await.map_err(err("channel"))?;
    let window = (o.prefetch as u64).min(target) as u16;
    inp.basic_qos(window, BasicQosOptions::default())
        .await
        .map_err(err("basic.qos"))?;
    let mut consumer = inp
        .basic_consume(
            o.src.as_str().into(),
            "lepusctl-move".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(err("basic.consume"))?;

    let bar = if std::io::stderr().is_terminal() {
        let b = indicatif::ProgressBar::new(target);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} messages  {per_sec}  eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    } else {
        indicatif::ProgressBar::hidden()
    };

    // Publisher side -> acker: (source delivery tag, confirm of its copy), in order.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(u64, PublisherConfirm)>(window as usize);
    let acker_ch = inp.clone();
    let acker_bar = bar.clone();
    let acker = tokio::spawn(async move {
        let mut moved = 0u64;
        // Highest confirmed source tag not yet acked, and how many it covers.
        let mut pending: Option<(u64, u64)> = None;
        let ack = |pending: &mut Option<(u64, u64)>, moved: &mut u64| {
            let p = pending.take();
            let ch = acker_ch.clone();
            let bar = acker_bar.clone();
            let before = *moved;
            if let Some((_, n)) = p {
                *moved += n;
            }
            async move {
                if let Some((tag, n)) = p {
                    // multiple: every earlier tag was confirmed and acked in order before.
                    ch.basic_ack(tag, BasicAckOptions { multiple: true })
                        .await
                        .map_err(|e| (before, format!("acking the source: {e}")))?;
                    bar.inc(n);
                }
                Ok::<(), (u64, String)>(())
            }
        };
        loop {
            // Nothing ready to read: ack what is confirmed before waiting.
            let next = match rx.try_recv() {
                Ok(x) => Some(x),
                Err(tokio::sync::mpsc::error::TryRecvError::Empty) => {
                    if let Err((m, e)) = ack(&mut pending, &mut moved).await {
                        return (m, Some(e));
                    }
                    rx.recv().await
                }
                Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => None,
            };
            let Some((tag, mut confirm)) = next else {
                break;
            };
            // Ack what is confirmed before blocking on a confirm that is not in yet.
            let confirmation = match futures_lite::future::poll_once(&mut confirm).await {
                Some(c) => c,
                None => {
                    if let Err((m, e)) = ack(&mut pending, &mut moved).await {
                        return (m, Some(e));
                    }
                    confirm.await
                }
            };
            match confirmation {
                Ok(Confirmation::Ack(None)) | Ok(Confirmation::NotRequested) => {
                    pending = Some((tag, pending.map_or(0, |(_, n)| n) + 1));
                }
                Ok(Confirmation::Ack(Some(_))) => {
                    let _ = ack(&mut pending, &mut moved).await;
                    return (
                        moved,
                        Some("a message was returned unroutable by the destination".to_string()),
                    );
                }
                Ok(Confirmation::Nack(_)) => {
                    let _ = ack(&mut pending, &mut moved).await;
                    return (
                        moved,
                        Some(
                            "the broker refused (nacked) a message for the destination".to_string(),
                        ),
                    );
                }
                Err(e) => {
                    let _ = ack(&mut pending, &mut moved).await;
                    return (moved, Some(format!("waiting for a confirm: {e}")));
                }
            }
        }
        if let Err((m, e)) = ack(&mut pending, &mut moved).await {
            return (m, Some(e));
        }
        (moved, None)
    });

    let mut taken = 0u64;
    let mut failure = None;
    while taken < target {
        let d = match tokio::time::timeout(o.idle_timeout, consumer.next()).await {
            Err(_) => break, // nothing more to take: someone else consumed the rest
            Ok(None) => {
                failure = Some("the source consumer was cancelled".to_string());
                break;
            }
            Ok(Some(Err(e))) => {
                failure = Some(format!("consuming: {e}"));
                break;
            }
            Ok(Some(Ok(d))) => d,
        };
        let confirm = out
            .basic_publish(
                "".into(),
                o.dst.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &d.data,
                d.properties,
            )
            .await;
        let confirm = match confirm {
            Ok(c) => c,
            Err(e) => {
                failure = Some(format!("publishing: {e}"));
                break;
            }
        };
        taken += 1;
        if tx.send((d.delivery_tag, confirm)).await.is_err() {
            break; // the acker stopped on an error
        }
    }
    drop(tx);
    let _ = inp
        .basic_cancel("lepusctl-move".into(), BasicCancelOptions::default())
        .await;
    let (moved, acker_failure) = acker.await.map_err(|e| e.to_string())?;
    bar.finish_and_clear();
    // Closing returns whatever we took beyond `target` (or failed on) to SRC.
    let _ = conn.close(200, "done".into()).await;
    match failure.or(acker_failure) {
        Some(e) => Err(format!(
            "{e} ({moved} messages moved before that; the rest stay in '{}')",
            o.src
        )),
        None => Ok(moved),
    }
}
