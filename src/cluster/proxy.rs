//! A follower's listeners: every AMQP or HTTP connection is passed, byte
//! for byte, to the leader's matching port, so clients may be given any
//! node's address. A connection that arrives while there is no leader is
//! closed at once (the client retries, as after any broker restart).

use std::future::poll_fn;
use std::task::Poll;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Accept on `listeners` forever, relaying each connection to the address
/// `target` holds at that moment. `what` names the port in logs.
pub async fn relay(
    listeners: &[TcpListener],
    target: watch::Receiver<Option<String>>,
    what: &'static str,
) {
    if listeners.is_empty() {
        return std::future::pending().await;
    }
    loop {
        let accepted = poll_fn(|cx| {
            for l in listeners {
                if let Poll::Ready(r) = l.poll_accept(cx) {
                    return Poll::Ready(r);
                }
            }
            Poll::Pending
        })
        .await;
        let (client, peer) = match accepted {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(to) = target.borrow().clone() else {
            tracing::debug!(%peer, what, "no leader yet; connection closed");
            continue;
        };
        tokio::spawn(async move {
            let _ = client.set_nodelay(true);
            let upstream = match tokio::time::timeout(
                Duration::from_secs(3),
                TcpStream::connect(&to),
            )
            .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::warn!(%peer, leader = %to, what, error = %e, "cannot reach the leader; connection closed");
                    return;
                }
                Err(_) => {
                    tracing::warn!(%peer, leader = %to, what, "leader did not answer; connection closed");
                    return;
                }
            };
            let _ = upstream.set_nodelay(true);
            let (mut a, mut b) = (client, upstream);
            let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
        });
    }
}
