//! What every protocol's listener does the same way: accept TCP
//! connections until shutdown, each in its own task, and turn a socket
//! into a (possibly TLS) stream with the [`Peer`] it came from.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::server::TlsStream;

use std::sync::Arc;

use crate::guard::{Guard, Permit, Refused};
use crate::{Peer, TlsError, TlsListen};

/// A connection's byte stream: plain TCP or TLS over it (boxed: TLS state
/// is large, and most connections of a plain listener never need it),
/// holding the connection's place in the node's limits while it lives.
pub struct MaybeTls {
    inner: Inner,
    _permit: Option<Permit>,
}

enum Inner {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl MaybeTls {
    pub fn plain(s: TcpStream, permit: Option<Permit>) -> Self {
        Self {
            inner: Inner::Plain(s),
            _permit: permit,
        }
    }
}

/// Runs the TLS handshake when the listener has TLS (within `timeout`),
/// and names the peer.
pub async fn open(
    socket: TcpStream,
    addr: SocketAddr,
    tls: Option<&TlsListen>,
    alpn: &[&[u8]],
    timeout: Duration,
    permit: Option<Permit>,
) -> Result<(MaybeTls, Peer), TlsError> {
    match tls {
        None => Ok((MaybeTls::plain(socket, permit), Peer::plain(addr))),
        Some(t) => {
            let (stream, cert_identity) =
                t.ctx.accept(socket, t.client_auth, alpn, timeout).await?;
            Ok((
                MaybeTls {
                    inner: Inner::Tls(Box::new(stream)),
                    _permit: permit,
                },
                Peer {
                    addr,
                    tls: true,
                    cert_identity,
                },
            ))
        }
    }
}

/// Accepts on `tcp` until `shutdown` turns true, running `handle` for
/// each connection the guard admits in a task of its own; `handle` keeps
/// the connection's permit for as long as it serves it. Refused
/// connections are closed at once and reported to `refused`. Accept errors
/// (out of file descriptors, say) back off briefly and go on.
///
/// The permit goes into `handle` rather than into a wrapping task: an
/// `async move { fut.await }` wrapper keeps room for `fut` twice (the
/// captured value and the awaited one), doubling every idle connection.
pub async fn accept_loop<F, Fut>(
    tcp: TcpListener,
    what: &'static str,
    mut shutdown: watch::Receiver<bool>,
    guard: Arc<Guard>,
    refused: impl Fn(Refused, SocketAddr),
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr, Permit) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let accepted = tokio::select! {
            a = tcp.accept() => a,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        match accepted {
            Ok((socket, addr)) => match guard.admit(addr.ip()) {
                Ok(permit) => {
                    let _ = socket.set_nodelay(true);
                    tokio::spawn(handle(socket, addr, permit));
                }
                Err(why) => {
                    drop(socket);
                    refused(why, addr);
                }
            },
            Err(e) => {
                tracing::warn!(listener = what, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

impl AsyncRead for MaybeTls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            Inner::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Inner::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for MaybeTls {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().inner {
            Inner::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Inner::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            Inner::Plain(s) => Pin::new(s).poll_flush(cx),
            Inner::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            Inner::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Inner::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().inner {
            Inner::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Inner::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.inner {
            Inner::Plain(s) => s.is_write_vectored(),
            Inner::Tls(s) => s.is_write_vectored(),
        }
    }
}
