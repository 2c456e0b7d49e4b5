//! The socket under a connection: plain TCP, or TLS (amqps) over it.
//!
//! The hot loops are written against tokio's readiness API (`readable` then
//! `try_read`, `try_write` then `writable`), which lets them read and write
//! without a timer or a `select!` per batch. [`Stream`], [`Rd`] and [`Wr`]
//! offer the same calls over TLS (tokio-rustls, polled once with a no-op
//! waker for the `try_*` calls), so the loops stay one implementation; on
//! TCP each call is the TcpStream call behind one `match`.
//!
//! TLS keeps records it could not send in rustls's buffer: a writer is
//! done with a batch only when [`Wr::is_flushed`] too.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

type Tls = TlsStream<TcpStream>;

/// The TLS client configuration for amqps URIs (set once from `--cacert`).
pub static TLS: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();

/// Build [`TLS`] from a PEM file of trusted CAs.
pub fn init_tls(cacert: &std::path::Path) -> Result<(), String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(cacert)
        .map_err(|e| format!("--cacert {}: {e}", cacert.display()))?;
    for c in certs {
        let c = c.map_err(|e| format!("--cacert {}: {e}", cacert.display()))?;
        roots
            .add(c)
            .map_err(|e| format!("--cacert {}: {e}", cacert.display()))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let _ = TLS.set(Arc::new(config));
    Ok(())
}

/// A TLS read side with a one-buffer lookahead: `readable` must not lose
/// what it read to find out that something is there.
pub struct TlsRead<S> {
    io: S,
    ahead: Vec<u8>,
    pos: usize,
    eof: bool,
}

impl<S: AsyncRead + Unpin> TlsRead<S> {
    fn new(io: S) -> Self {
        TlsRead {
            io,
            ahead: Vec::new(),
            pos: 0,
            eof: false,
        }
    }

    async fn readable(&mut self) -> io::Result<()> {
        if self.pos < self.ahead.len() || self.eof {
            return Ok(());
        }
        // Cancel-safe (callers select! on it): the buffer is empty while
        // the read is pending, and read_buf fills it only with what came.
        self.ahead.clear();
        self.pos = 0;
        self.ahead.reserve(64 * 1024);
        let n = self.io.read_buf(&mut self.ahead).await?;
        self.eof = n == 0;
        Ok(())
    }

    fn try_read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos < self.ahead.len() {
            let n = buf.len().min(self.ahead.len() - self.pos);
            buf[..n].copy_from_slice(&self.ahead[self.pos..self.pos + n]);
            self.pos += n;
            return Ok(n);
        }
        if self.eof {
            return Ok(0);
        }
        let mut cx = Context::from_waker(Waker::noop());
        let mut rb = ReadBuf::new(buf);
        match Pin::new(&mut self.io).poll_read(&mut cx, &mut rb) {
            Poll::Ready(Ok(())) => Ok(rb.filled().len()),
            Poll::Ready(Err(e)) => Err(e),
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

pub enum Stream {
    Tcp(TcpStream),
    Tls(Box<TlsRead<Tls>>),
}

impl Stream {
    /// Connect to `host:port`, with the TLS handshake if `tls`.
    pub async fn connect(host: &str, port: u16, tls: bool) -> io::Result<Stream> {
        let tcp = TcpStream::connect((host, port)).await?;
        // Batches are already large; for small confirm windows and acks we
        // want them on the wire now, not after Nagle's 40 ms.
        tcp.set_nodelay(true)?;
        if !tls {
            return Ok(Stream::Tcp(tcp));
        }
        let config = TLS.get().cloned().ok_or_else(|| {
            io::Error::other(
                "an amqps URI needs --cacert (the CA that signed the broker's certificate)",
            )
        })?;
        let name = rustls::pki_types::ServerName::try_from(host.to_owned())
            .map_err(|e| io::Error::other(format!("{host}: {e}")))?;
        let s = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await?;
        Ok(Stream::Tls(Box::new(TlsRead::new(s))))
    }

    pub async fn readable(&mut self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.readable().await,
            Stream::Tls(s) => s.readable().await,
        }
    }

    pub fn try_read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.try_read(buf),
            Stream::Tls(s) => s.try_read(buf),
        }
    }

    pub async fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.write_all(buf).await,
            Stream::Tls(s) => {
                s.io.write_all(buf).await?;
                s.io.flush().await
            }
        }
    }

    pub fn into_split(self) -> (Rd, Wr) {
        match self {
            Stream::Tcp(s) => {
                let (r, w) = s.into_split();
                (Rd::Tcp(r), Wr::Tcp(w))
            }
            Stream::Tls(s) => {
                let TlsRead {
                    io,
                    ahead,
                    pos,
                    eof,
                } = *s;
                let (r, w) = tokio::io::split(io);
                let r = TlsRead {
                    io: r,
                    ahead,
                    pos,
                    eof,
                };
                (Rd::Tls(Box::new(r)), Wr::Tls(w, false))
            }
        }
    }
}

pub enum Rd {
    Tcp(OwnedReadHalf),
    Tls(Box<TlsRead<tokio::io::ReadHalf<Tls>>>),
}

impl Rd {
    pub async fn readable(&mut self) -> io::Result<()> {
        match self {
            Rd::Tcp(s) => s.readable().await,
            Rd::Tls(s) => s.readable().await,
        }
    }

    pub fn try_read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Rd::Tcp(s) => s.try_read(buf),
            Rd::Tls(s) => s.try_read(buf),
        }
    }
}

/// The write side. TLS: the flag says records are still buffered in rustls.
pub enum Wr {
    Tcp(OwnedWriteHalf),
    Tls(tokio::io::WriteHalf<Tls>, bool),
}

impl Wr {
    pub async fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Wr::Tcp(s) => s.write_all(buf).await,
            Wr::Tls(s, dirty) => {
                s.write_all(buf).await?;
                s.flush().await?;
                *dirty = false;
                Ok(())
            }
        }
    }

    /// Write what the socket takes now; WouldBlock if nothing.
    pub fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Wr::Tcp(s) => s.try_write(buf),
            Wr::Tls(s, dirty) => {
                let mut cx = Context::from_waker(Waker::noop());
                // Buffered records first: do not pile up plaintext.
                if *dirty {
                    match Pin::new(&mut *s).poll_flush(&mut cx) {
                        Poll::Ready(r) => {
                            r?;
                            *dirty = false;
                        }
                        Poll::Pending => return Err(io::ErrorKind::WouldBlock.into()),
                    }
                }
                let n = match Pin::new(&mut *s).poll_write(&mut cx, buf) {
                    Poll::Ready(r) => r?,
                    Poll::Pending => return Err(io::ErrorKind::WouldBlock.into()),
                };
                match Pin::new(&mut *s).poll_flush(&mut cx) {
                    Poll::Ready(r) => r?,
                    Poll::Pending => *dirty = true,
                }
                Ok(n)
            }
        }
    }

    /// Nothing written is still held back (always true on TCP).
    pub fn is_flushed(&self) -> bool {
        match self {
            Wr::Tcp(_) => true,
            Wr::Tls(_, dirty) => !*dirty,
        }
    }

    /// Until the socket takes more (TLS: until buffered records are out).
    pub async fn writable(&mut self) -> io::Result<()> {
        match self {
            Wr::Tcp(s) => s.writable().await,
            Wr::Tls(s, dirty) => {
                s.flush().await?;
                *dirty = false;
                Ok(())
            }
        }
    }
}
