//! What a connection runs over: any byte stream that splits into a read
//! half and a write half. TCP splits without a lock (`into_split`); any
//! other stream (TLS, an in-memory pipe in tests) is wrapped in [`Stream`],
//! which splits with `tokio::io::split`. The connection code is written
//! once, generic over this trait.

use std::net::SocketAddr;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

pub trait Transport: Send + 'static {
    type Read: AsyncRead + Unpin + Send + 'static;
    type Write: AsyncWrite + Unpin + Send + 'static;

    /// The local address, for the connection's name ("client -> server").
    fn local_addr(&self) -> Option<SocketAddr>;
    /// Whether the stream is encrypted (for the management API's `ssl`).
    fn is_tls(&self) -> bool {
        false
    }
    fn into_split(self) -> (Self::Read, Self::Write);
}

impl Transport for TcpStream {
    type Read = tokio::net::tcp::OwnedReadHalf;
    type Write = tokio::net::tcp::OwnedWriteHalf;

    fn local_addr(&self) -> Option<SocketAddr> {
        TcpStream::local_addr(self).ok()
    }
    fn into_split(self) -> (Self::Read, Self::Write) {
        // Small frames (confirms, acks) must not wait for Nagle.
        let _ = self.set_nodelay(true);
        TcpStream::into_split(self)
    }
}

/// Any other stream: split with `tokio::io::split`.
pub struct Stream<S> {
    pub inner: S,
    pub local_addr: Option<SocketAddr>,
    pub tls: bool,
}

impl<S: AsyncRead + AsyncWrite + Send + 'static> Transport for Stream<S> {
    type Read = tokio::io::ReadHalf<S>;
    type Write = tokio::io::WriteHalf<S>;

    fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }
    fn is_tls(&self) -> bool {
        self.tls
    }
    fn into_split(self) -> (Self::Read, Self::Write) {
        tokio::io::split(self.inner)
    }
}
