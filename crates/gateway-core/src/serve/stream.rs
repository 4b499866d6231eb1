//! A connection that is plain TCP or TLS, split into halves that can be driven concurrently.
//! Plain TCP splits without a lock (`into_split`), which is the hot path.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// Client side: plain or server-side TLS.
pub enum ClientStream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS terminated by the gateway.
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// Upstream side: plain or client-side TLS.
pub enum UpstreamStream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS to the database.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// Read half of either stream.
pub enum ReadSide {
    /// Plain TCP.
    Plain(OwnedReadHalf),
    /// Server-side TLS.
    ServerTls(ReadHalf<tokio_rustls::server::TlsStream<TcpStream>>),
    /// Client-side TLS.
    ClientTls(ReadHalf<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// Write half of either stream.
pub enum WriteSide {
    /// Plain TCP.
    Plain(OwnedWriteHalf),
    /// Server-side TLS.
    ServerTls(WriteHalf<tokio_rustls::server::TlsStream<TcpStream>>),
    /// Client-side TLS.
    ClientTls(WriteHalf<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl ClientStream {
    /// Splits into independently usable halves.
    pub fn split(self) -> (ReadSide, WriteSide) {
        match self {
            ClientStream::Plain(s) => {
                let (r, w) = s.into_split();
                (ReadSide::Plain(r), WriteSide::Plain(w))
            }
            ClientStream::Tls(s) => {
                let (r, w) = tokio::io::split(*s);
                (ReadSide::ServerTls(r), WriteSide::ServerTls(w))
            }
        }
    }
}

impl UpstreamStream {
    /// Splits into independently usable halves.
    pub fn split(self) -> (ReadSide, WriteSide) {
        match self {
            UpstreamStream::Plain(s) => {
                let (r, w) = s.into_split();
                (ReadSide::Plain(r), WriteSide::Plain(w))
            }
            UpstreamStream::Tls(s) => {
                let (r, w) = tokio::io::split(*s);
                (ReadSide::ClientTls(r), WriteSide::ClientTls(w))
            }
        }
    }
}

macro_rules! delegate_read {
    ($t:ty, $($v:path),+) => {
        impl AsyncRead for $t {
            fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $($v(s) => Pin::new(s).poll_read(cx, buf),)+
                }
            }
        }
    };
}

macro_rules! delegate_write {
    ($t:ty, $($v:path),+) => {
        impl AsyncWrite for $t {
            fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    $($v(s) => Pin::new(s).poll_write(cx, buf),)+
                }
            }
            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $($v(s) => Pin::new(s).poll_flush(cx),)+
                }
            }
            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $($v(s) => Pin::new(s).poll_shutdown(cx),)+
                }
            }
        }
    };
}

delegate_read!(ClientStream, ClientStream::Plain, ClientStream::Tls);
delegate_write!(ClientStream, ClientStream::Plain, ClientStream::Tls);
delegate_read!(UpstreamStream, UpstreamStream::Plain, UpstreamStream::Tls);
delegate_write!(UpstreamStream, UpstreamStream::Plain, UpstreamStream::Tls);
delegate_read!(
    ReadSide,
    ReadSide::Plain,
    ReadSide::ServerTls,
    ReadSide::ClientTls
);
delegate_write!(
    WriteSide,
    WriteSide::Plain,
    WriteSide::ServerTls,
    WriteSide::ClientTls
);
