//! What a connection runs over: any byte stream that splits into a read
//! half and a write half. TCP splits without a lock (`into_split`); TLS
//! over TCP (a finished tokio-rustls handshake) and any other stream (an
//! in-memory pipe in tests, wrapped in [`Stream`]) split with
//! `tokio::io::split`. The connection code is written once, generic over
//! this trait, so plain TCP pays nothing for TLS being possible.

use crate::tls::TlsInfo;
use std::net::SocketAddr;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

pub trait Transport: Send + 'static {
    type Read: AsyncRead + Unpin + Send + 'static;
    type Write: AsyncWrite + Unpin + Send + 'static;

    /// The local address, for the connection's name ("client -> server").
    fn local_addr(&self) -> Option<SocketAddr>;
    /// Whether the stream is encrypted (for the management API's `ssl`).
    fn is_tls(&self) -> bool {
        false
    }
    /// The negotiated TLS parameters and verified client certificate.
    fn tls_info(&self) -> Option<TlsInfo> {
        None
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

/// amqps: a TLS session over TCP whose handshake is done.
impl Transport for TlsStream<TcpStream> {
    type Read = tokio::io::ReadHalf<TlsStream<TcpStream>>;
    type Write = tokio::io::WriteHalf<TlsStream<TcpStream>>;

    fn local_addr(&self) -> Option<SocketAddr> {
        self.get_ref().0.local_addr().ok()
    }
    fn is_tls(&self) -> bool {
        true
    }
    fn tls_info(&self) -> Option<TlsInfo> {
        Some(TlsInfo::of(self.get_ref().1))
    }
    fn into_split(self) -> (Self::Read, Self::Write) {
        let _ = self.get_ref().0.set_nodelay(true);
        tokio::io::split(self)
    }
}
