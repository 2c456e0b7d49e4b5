//! The writer task: the only code that writes to a connection's socket
//! after the handshake. It swaps the connection's outbox (filled by the
//! channel, the queues' deliveries and confirms) with its own buffer and
//! writes it in one call; ack-log entries reach the kernel first, so a
//! message delivered before a crash comes back marked redelivered.

use crate::broker::delivery::ConnShared;
use bytes::BytesMut;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::io::{AsyncWrite, AsyncWriteExt};

pub(super) async fn write_loop(
    conn: Arc<ConnShared>,
    mut wr: impl AsyncWrite + Unpin,
    store: Arc<crate::store::Store>,
) {
    let mut buf = BytesMut::new();
    loop {
        conn.notify.notified().await;
        loop {
            conn.take(&mut buf);
            if buf.is_empty() {
                break;
            }
            // Delivered-marks and acks of persistent messages reach the
            // kernel before the deliveries that depend on them leave.
            if conn.flush_store.swap(false, Ordering::Relaxed) {
                store.flush_acks();
            }
            // flush: TLS keeps records it could not send at once until
            // flushed; on TCP it is a no-op, nothing per message.
            if wr.write_all(&buf).await.is_err() || wr.flush().await.is_err() {
                conn.closed.store(true, Ordering::SeqCst);
                return;
            }
            conn.bytes_out
                .fetch_add(buf.len() as u64, Ordering::Relaxed);
            // Give back memory after a burst of large messages.
            if buf.capacity() > 8 << 20 {
                buf = BytesMut::new();
            } else {
                buf.clear();
            }
            conn.resume();
        }
        if conn.closed.load(Ordering::SeqCst) {
            let _ = wr.shutdown().await;
            return;
        }
    }
}
