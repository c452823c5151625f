//! The sockets axum serves on: plain TCP, and TLS whose handshakes run in
//! their own tasks (a slow handshake never holds up the accept loop).
//! Both name the peer as a [`Peer`], which handlers read as
//! `ConnectInfo<Peer>` (the client certificate's identity, the address).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use fjord_auth::listener::MaybeTls;
use fjord_auth::{Peer, TlsListen};
use fjord_broker::Broker;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// A TLS client must finish its handshake within this time (slowloris).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Finished handshakes waiting for axum to take them.
const READY_QUEUE: usize = 128;

/// Plain TCP, with no-delay set, the node's connection limits applied and
/// the peer named.
pub struct PlainListener {
    tcp: TcpListener,
    broker: Arc<Broker>,
}

impl PlainListener {
    pub fn new(tcp: TcpListener, broker: Arc<Broker>) -> Self {
        Self { tcp, broker }
    }
}

impl axum::serve::Listener for PlainListener {
    type Io = MaybeTls;
    type Addr = Peer;

    async fn accept(&mut self) -> (MaybeTls, Peer) {
        loop {
            match self.tcp.accept().await {
                Ok((s, addr)) => match self.broker.guard().admit(addr.ip()) {
                    Ok(permit) => {
                        let _ = s.set_nodelay(true);
                        return (MaybeTls::plain(s, Some(permit)), Peer::plain(addr));
                    }
                    Err(why) => {
                        drop(s);
                        self.broker.connection_refused("http", why, addr);
                    }
                },
                Err(e) => {
                    tracing::warn!(error = %e, "http accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Peer> {
        self.tcp.local_addr().map(Peer::plain)
    }
}

/// HTTPS: accepts TCP connections and hands axum the ones whose TLS
/// handshake succeeded.
pub struct TlsListener {
    ready: mpsc::Receiver<(MaybeTls, Peer)>,
    local: SocketAddr,
    acceptor: tokio::task::JoinHandle<()>,
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

impl TlsListener {
    pub fn new(tcp: TcpListener, tls: TlsListen, broker: Arc<Broker>) -> std::io::Result<Self> {
        let local = tcp.local_addr()?;
        let (tx, ready) = mpsc::channel(READY_QUEUE);
        let acceptor = tokio::spawn(async move {
            loop {
                let (socket, addr) = match tcp.accept().await {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "https accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let permit = match broker.guard().admit(addr.ip()) {
                    Ok(p) => p,
                    Err(why) => {
                        drop(socket);
                        broker.connection_refused("https", why, addr);
                        continue;
                    }
                };
                let _ = socket.set_nodelay(true);
                let (tls, tx, broker) = (tls.clone(), tx.clone(), broker.clone());
                tokio::spawn(async move {
                    let alpn: &[&[u8]] = &[b"http/1.1"];
                    match fjord_auth::listener::open(
                        socket,
                        addr,
                        Some(&tls),
                        alpn,
                        HANDSHAKE_TIMEOUT,
                        Some(permit),
                    )
                    .await
                    {
                        Ok((stream, peer)) => {
                            let _ = tx.send((stream, peer)).await;
                        }
                        Err(e) => {
                            broker
                                .metrics()
                                .protocol_errors
                                .with_label_values(&["http", "tls_handshake"])
                                .inc();
                            tracing::debug!(peer = %addr, error = %e, "https handshake failed");
                        }
                    }
                });
            }
        });
        Ok(Self {
            ready,
            local,
            acceptor,
        })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = MaybeTls;
    type Addr = Peer;

    async fn accept(&mut self) -> (Self::Io, Peer) {
        match self.ready.recv().await {
            Some(c) => c,
            // The acceptor ended (it only does when dropped): nothing more
            // will arrive.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Peer> {
        Ok(Peer {
            addr: self.local,
            tls: true,
            cert_identity: None,
        })
    }
}
