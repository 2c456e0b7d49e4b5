//! HTTPS for the management API: a listener that hands axum only
//! connections whose TLS handshake is done. Each handshake runs in its own
//! task under the `[tls]` handshake timeout, so a client that stalls
//! mid-handshake delays nobody else.

use crate::tls::Tls;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;

pub struct HttpsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    acceptor: tokio::task::JoinHandle<()>,
}

impl HttpsListener {
    pub fn new(listener: TcpListener, tls: &Arc<Tls>) -> std::io::Result<HttpsListener> {
        let local = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(64);
        let acceptor = tls.https.clone();
        let timeout = tls.handshake_timeout;
        let acceptor = tokio::spawn(async move {
            loop {
                let (socket, peer) = tokio::select! {
                    r = listener.accept() => match r {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::error!(error = %e, "management API accept failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                    _ = tx.closed() => return,
                };
                let (tls, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(timeout, tls.accept(socket)).await {
                        Ok(Ok(s)) => {
                            let _ = tx.send((s, peer)).await;
                        }
                        Ok(Err(e)) => {
                            let (_, reason) = crate::tls::handshake_error(&e);
                            tracing::info!(%peer, %reason, "management API: TLS handshake failed");
                        }
                        Err(_) => {
                            tracing::info!(%peer, "management API: TLS handshake timed out")
                        }
                    }
                });
            }
        });
        Ok(HttpsListener {
            ready,
            local,
            acceptor,
        })
    }
}

impl Drop for HttpsListener {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

impl axum::serve::Listener for HttpsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(c) => c,
            // The acceptor is gone only when the listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}
