//! A TLS connection that fluxgate accepted itself, handed to pingora's HTTP/1 code as one of
//! its streams.
//!
//! Accepting TLS here rather than in pingora's listener gives the handshake a deadline (pingora
//! fixes it at 60 s), counts failures without parsing pingora's log lines, holds a client's
//! per-address connection slot from before the handshake, and lets the server choose the
//! cipher suite (see [`super::tls::server_config`]).

use super::connection::Activity;
use super::framing::Framing;
use crate::guard::cidr::canonical;
use async_trait::async_trait;
use pingora::protocols::l4::socket::SocketAddr;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType,
};
use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_rustls::server::TlsStream;

/// The stream, what its reads tell about whether the connection is idle, and the framing of
/// the requests read a second time (see [`super::framing`]).
pub struct TlsConn(pub TlsStream<Stream>, pub Arc<Activity>, pub Framing);

impl TlsConn {
    fn tcp(&self) -> &Stream {
        self.0.get_ref().0
    }
}

impl fmt::Debug for TlsConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TlsConn").field(self.tcp()).finish()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut this.0).poll_read(cx, buf);
        match &read {
            Poll::Pending => this.1.client_silent(),
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                this.1.client_sent();
                this.2.read(&buf.filled()[before..]);
            }
            Poll::Ready(_) => {}
        }
        read
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for TlsConn {
    /// Sends close_notify, then shuts the TCP connection down.
    async fn shutdown(&mut self) {
        let _ = AsyncWriteExt::shutdown(&mut self.0).await;
    }
}

impl UniqueID for TlsConn {
    fn id(&self) -> UniqueIDType {
        self.tcp().id()
    }
}

impl Ssl for TlsConn {}

impl GetTimingDigest for TlsConn {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.tcp().get_timing_digest()
    }
}

impl GetProxyDigest for TlsConn {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.tcp().get_proxy_digest()
    }
}

impl GetSocketDigest for TlsConn {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.tcp().get_socket_digest()
    }
}

#[async_trait]
impl Peek for TlsConn {}

/// Why a chunk line of the request read so far on this session's connection is refused.
pub fn framing_error(s: &pingora::protocols::http::ServerSession) -> Option<&'static str> {
    s.stream()?
        .as_any()
        .downcast_ref::<TlsConn>()
        .and_then(|c| c.2.error())
}

/// The peer's address as pingora recorded it at accept.
pub fn peer_ip(stream: &Stream) -> Option<std::net::IpAddr> {
    stream.get_socket_digest().and_then(|d| {
        d.peer_addr()
            .and_then(SocketAddr::as_inet)
            .map(|a| canonical(a.ip()))
    })
}
