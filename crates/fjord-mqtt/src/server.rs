//! The MQTT listener: accepts connections and runs one session task each.
//! Owns what sessions share: the configuration and the registry of
//! connected client ids (for session takeover, MQTT-3.1.4-3).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use fjord_auth::{Peer, TlsListen};
use fjord_broker::{Broker, BrokerError};
use fjord_core::{NamespaceName, TenantName};
use futures_util::future::{Either, FutureExt};
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::space::Space;
use crate::{connection, ws};

#[derive(Debug, Clone)]
pub struct MqttConfig {
    /// The namespace MQTT topics map into, in each connection's tenant
    /// (the one its authentication names; `public` for anonymous ones).
    pub namespace: NamespaceName,
    /// Largest packet accepted, advertised as Maximum Packet Size.
    pub max_packet_bytes: u32,
    /// A connection must send CONNECT within this time.
    pub connect_timeout: Duration,
    /// QoS 1/2 publications a client may have unacknowledged (advertised as
    /// Receive Maximum).
    pub receive_maximum: u16,
    /// Topic aliases a client may use towards us.
    pub topic_alias_maximum: u16,
    /// Our unacknowledged QoS 1/2 deliveries per client at most, whatever
    /// the client allows.
    pub outbound_inflight_max: u16,
    /// Longest a session outlives its connection (5.0 Session Expiry
    /// Interval is capped to it; 3.1.1 persistent sessions expire after it).
    pub session_expiry_max: Duration,
    /// Longest keep alive a client may ask for, seconds; 0: no maximum.
    /// A 5.0 client asking for more (or for none) gets this as Server Keep
    /// Alive; a 3.1.1 client, which cannot be told, is refused.
    pub keep_alive_max: u16,
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            namespace: NamespaceName::new(fjord_core::names::DEFAULT_NAMESPACE).expect("valid"),
            max_packet_bytes: 1024 * 1024 + 64 * 1024,
            connect_timeout: Duration::from_secs(10),
            receive_maximum: 1024,
            topic_alias_maximum: 64,
            outbound_inflight_max: 1024,
            session_expiry_max: Duration::from_secs(7 * 24 * 3600),
            keep_alive_max: 0,
        }
    }
}

/// Connected client ids, each with a way to tell its connection to go and a
/// signal that it has finished (saved its session).
#[derive(Default)]
pub struct Registry {
    clients: Mutex<HashMap<Arc<str>, Claim>>,
    next: Mutex<u64>,
    shutting_down: std::sync::atomic::AtomicBool,
}

struct Claim {
    token: u64,
    signal: Arc<ConnSignal>,
}

/// How a connection learns that it must end (another connection took its
/// client id over, the server is shutting down, or the client fell silent
/// beyond its keep alive) and how its successor learns that it has saved
/// its session. One small allocation per connection: idle connections stay
/// cheap.
#[derive(Default)]
pub struct ConnSignal {
    /// 0 running, else why it must end ([`END_TAKEN_OVER`], [`END_SHUTDOWN`],
    /// [`END_KEEP_ALIVE`]).
    end: std::sync::atomic::AtomicU8,
    end_notify: tokio::sync::Notify,
    done: std::sync::atomic::AtomicBool,
    done_notify: tokio::sync::Notify,
    /// When (on [`clock_ms`]) the client will have been silent too long; 0
    /// for no keep alive. Checked by [`sweep_keep_alives`]: one timer for
    /// the node instead of one per connection (a timer entry is larger than
    /// the rest of an idle connection's wait).
    silent_after_ms: std::sync::atomic::AtomicU64,
}

pub const END_TAKEN_OVER: u8 = 1;
pub const END_SHUTDOWN: u8 = 2;
pub const END_KEEP_ALIVE: u8 = 3;

/// How often keep alives are checked: a silent client is cut between 1.5
/// and 1.5 times its keep alive plus this.
pub const KEEP_ALIVE_SWEEP: Duration = Duration::from_millis(250);

/// Milliseconds on a monotonic clock that starts with the process.
pub fn clock_ms() -> u64 {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    // Starts at 1: 0 means "no keep alive".
    EPOCH
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
        + 1
}

impl ConnSignal {
    /// The client was heard from: it may stay silent for `keep_alive` (zero:
    /// for ever).
    pub fn heard(&self, keep_alive: Duration) {
        if !keep_alive.is_zero() {
            self.silent_after_ms.store(
                clock_ms() + keep_alive.as_millis() as u64,
                std::sync::atomic::Ordering::Relaxed,
            );
        }
    }

    /// Tells the connection to end (the first reason given stays).
    pub fn end(&self, why: u8) {
        use std::sync::atomic::Ordering;
        let _ = self
            .end
            .compare_exchange(0, why, Ordering::AcqRel, Ordering::Acquire);
        // One waiter, the connection: a stored permit covers a connection
        // that is not waiting right now.
        self.end_notify.notify_one();
    }

    /// Resolves with the reason once the connection must end.
    pub async fn ended(&self) -> u8 {
        use std::sync::atomic::Ordering;
        loop {
            let why = self.end.load(Ordering::Acquire);
            if why != 0 {
                return why;
            }
            self.end_notify.notified().await;
        }
    }

    /// The connection has finished and saved its session.
    pub fn set_done(&self) {
        self.done.store(true, std::sync::atomic::Ordering::Release);
        self.done_notify.notify_waiters();
    }

    pub async fn wait_done(&self) {
        loop {
            let n = self.done_notify.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if self.done.load(std::sync::atomic::Ordering::Acquire) {
                return;
            }
            n.await;
        }
    }
}

/// What a connection gets when it claims its client id.
pub struct Claimed {
    pub token: u64,
    pub signal: Arc<ConnSignal>,
    /// The previous connection's signal, whose `done` to wait for before
    /// loading the session it saves.
    pub previous: Option<Arc<ConnSignal>>,
}

impl Registry {
    /// Registers `client_id`, taking over (closing) any connection that has
    /// it (MQTT-3.1.4-3).
    pub fn claim(&self, client_id: &Arc<str>) -> Claimed {
        let token = {
            let mut n = self.next.lock();
            *n += 1;
            *n
        };
        let signal = Arc::new(ConnSignal::default());
        if self
            .shutting_down
            .load(std::sync::atomic::Ordering::Acquire)
        {
            signal.end(END_SHUTDOWN);
        }
        let previous = self
            .clients
            .lock()
            .insert(
                client_id.clone(),
                Claim {
                    token,
                    signal: signal.clone(),
                },
            )
            .map(|old| {
                old.signal.end(END_TAKEN_OVER);
                old.signal
            });
        Claimed {
            token,
            signal,
            previous,
        }
    }

    /// Tells every connection, and every one claimed from now on, that the
    /// server is shutting down.
    pub fn shutdown_all(&self) {
        self.shutting_down
            .store(true, std::sync::atomic::Ordering::Release);
        for c in self.clients.lock().values() {
            c.signal.end(END_SHUTDOWN);
        }
    }

    /// Forgets `client_id` if this connection (token) still holds it.
    pub fn release(&self, client_id: &str, token: u64) {
        let mut c = self.clients.lock();
        if c.get(client_id).is_some_and(|cl| cl.token == token) {
            c.remove(client_id);
        }
    }

    /// Ends every connection silent beyond its keep alive at `now_ms`.
    fn sweep_keep_alives(&self, now_ms: u64) {
        use std::sync::atomic::Ordering;
        for c in self.clients.lock().values() {
            let after = c.signal.silent_after_ms.load(Ordering::Relaxed);
            if after != 0 && now_ms >= after && c.signal.end.load(Ordering::Acquire) == 0 {
                c.signal.end(END_KEEP_ALIVE);
            }
        }
    }

    pub fn is_connected(&self, client_id: &str) -> bool {
        self.clients.lock().contains_key(client_id)
    }

    pub fn connected(&self) -> usize {
        self.clients.lock().len()
    }
}

pub struct Shared {
    pub broker: Arc<Broker>,
    pub config: MqttConfig,
    /// Each tenant's MQTT state, opened on first use.
    spaces: Mutex<HashMap<TenantName, Arc<Space>>>,
    /// Serialises opening spaces (loading retained messages is async).
    opening: tokio::sync::Mutex<()>,
    shutting_down: std::sync::atomic::AtomicBool,
    pub stats: Stats,
    /// The principal of every anonymous client (of `public`).
    pub anonymous: Arc<fjord_auth::Principal>,
}

impl Shared {
    /// The tenant's space, opened (retained messages loaded, due wills
    /// published) if this is its first use.
    pub async fn space(&self, tenant: &TenantName) -> Result<Arc<Space>, BrokerError> {
        if let Some(s) = self.spaces.lock().get(tenant) {
            return Ok(s.clone());
        }
        let _one_at_a_time = self.opening.lock().await;
        if let Some(s) = self.spaces.lock().get(tenant) {
            return Ok(s.clone());
        }
        let space = Space::open(
            self.broker.clone(),
            tenant.clone(),
            self.config.namespace.clone(),
        )
        .await?;
        if self
            .shutting_down
            .load(std::sync::atomic::Ordering::Acquire)
        {
            space.registry.shutdown_all();
        }
        self.spaces.lock().insert(tenant.clone(), space.clone());
        Ok(space)
    }

    fn spaces(&self) -> Vec<Arc<Space>> {
        self.spaces.lock().values().cloned().collect()
    }

    /// Connected clients of every tenant.
    pub fn connected(&self) -> usize {
        self.spaces().iter().map(|s| s.registry.connected()).sum()
    }

    fn shutdown_all(&self) {
        self.shutting_down
            .store(true, std::sync::atomic::Ordering::Release);
        for s in self.spaces() {
            s.registry.shutdown_all();
        }
    }
}

/// Ends connections whose clients fell silent (MQTT-3.1.2-24), every
/// [`KEEP_ALIVE_SWEEP`], until the server stops.
async fn sweep_keep_alives(shared: std::sync::Weak<Shared>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(KEEP_ALIVE_SWEEP);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let now = clock_ms();
        for space in shared.spaces() {
            space.registry.sweep_keep_alives(now);
        }
    }
}

/// Counters behind the `$SYS` topics.
#[derive(Default)]
pub struct Stats {
    pub received: std::sync::atomic::AtomicU64,
    pub sent: std::sync::atomic::AtomicU64,
}

/// How often the `$SYS/broker/…` topics are refreshed.
pub const SYS_INTERVAL: Duration = Duration::from_secs(10);

/// One socket the MQTT server accepts on: plain or TLS, TCP or WebSocket.
pub struct Listener {
    pub tcp: TcpListener,
    pub websocket: bool,
    pub tls: Option<TlsListen>,
}

impl Listener {
    fn label(&self) -> &'static str {
        match (self.websocket, self.tls.is_some()) {
            (false, false) => "mqtt",
            (false, true) => "mqtts",
            (true, false) => "mqtt-ws",
            (true, true) => "mqtt-wss",
        }
    }
}

/// Opens the `public` space (and those with stored sessions), then accepts
/// MQTT connections on every listener until `shutdown` turns true.
pub async fn start(
    listeners: Vec<Listener>,
    broker: Arc<Broker>,
    config: MqttConfig,
    shutdown: watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>, BrokerError> {
    let shared = Arc::new(Shared {
        broker,
        config,
        spaces: Mutex::new(HashMap::new()),
        opening: tokio::sync::Mutex::new(()),
        shutting_down: std::sync::atomic::AtomicBool::new(false),
        stats: Stats::default(),
        anonymous: Arc::new(fjord_auth::Principal::anonymous(
            TenantName::new(fjord_core::names::PUBLIC_TENANT).expect("valid"),
        )),
    });
    // `public` (home of `$SYS`), and every tenant with stored sessions,
    // whose wills and expiries must run without waiting for a client.
    let public = TenantName::new(fjord_core::names::PUBLIC_TENANT).expect("valid");
    let sys_space = shared.space(&public).await?;
    for t in shared.broker.meta().list_tenants()? {
        let has_sessions = shared
            .broker
            .meta()
            .list_sessions(&t.name)
            .is_ok_and(|s| !s.is_empty());
        if has_sessions {
            shared.space(&t.name).await?;
        }
    }
    tokio::spawn(sweep_keep_alives(Arc::downgrade(&shared), shutdown.clone()));
    tokio::spawn(publish_sys(
        Arc::downgrade(&shared),
        sys_space,
        shutdown.clone(),
    ));
    let tasks: Vec<_> = listeners
        .into_iter()
        .map(|l| tokio::spawn(serve(l, shared.clone(), shutdown.clone())))
        .collect();
    Ok(tokio::spawn(async move {
        for t in tasks {
            let _ = t.await;
        }
        shared.shutdown_all();
    }))
}

/// Publishes broker statistics to `$SYS/broker/…` every [`SYS_INTERVAL`],
/// retained so a new subscriber sees the current values at once.
async fn publish_sys(
    shared: std::sync::Weak<Shared>,
    space: Arc<Space>,
    mut shutdown: watch::Receiver<bool>,
) {
    use std::sync::atomic::Ordering;
    let started = std::time::Instant::now();
    let mut tick = tokio::time::interval(SYS_INTERVAL);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let values = [
            ("$SYS/broker/version", env!("CARGO_PKG_VERSION").to_string()),
            (
                "$SYS/broker/uptime",
                started.elapsed().as_secs().to_string(),
            ),
            (
                "$SYS/broker/clients/connected",
                shared.connected().to_string(),
            ),
            (
                "$SYS/broker/messages/received",
                shared.stats.received.load(Ordering::Relaxed).to_string(),
            ),
            (
                "$SYS/broker/messages/sent",
                shared.stats.sent.load(Ordering::Relaxed).to_string(),
            ),
        ];
        let sys = fjord_core::StreamRef {
            tenant: space.tenant.clone(),
            namespace: space.namespace.clone(),
            stream: fjord_core::StreamName::new(crate::mapping::SYS_STREAM).expect("valid"),
        };
        // Statistics are the latest state only: an ephemeral ring.
        let policy = fjord_core::Policy {
            ephemeral: Some(true),
            ephemeral_bytes_max: Some(1 << 20),
            ..Default::default()
        };
        if shared
            .broker
            .ensure_stream_with(&sys, Some(1), policy)
            .is_err()
        {
            continue;
        }
        let records: Vec<_> = values
            .iter()
            .map(|(t, v)| {
                crate::record::to_record(
                    t,
                    crate::codec::QoS::AtMostOnce,
                    true,
                    bytes::Bytes::from(v.clone()),
                    &crate::codec::Properties::default(),
                    "$SYS",
                )
            })
            .collect();
        for r in &records {
            let _ = space.retained.set(r.clone()).await;
        }
        let _ = shared.broker.produce(&sys, records, None).await;
    }
}

async fn serve(listener: Listener, shared: Arc<Shared>, shutdown: watch::Receiver<bool>) {
    let label = listener.label();
    let Listener {
        tcp,
        websocket,
        tls,
    } = listener;
    let tls = Arc::new(tls);
    let guard = shared.broker.guard().clone();
    let broker = shared.broker.clone();
    let refused = move |why, addr| broker.connection_refused(label, why, addr);
    fjord_auth::listener::accept_loop(
        tcp,
        label,
        shutdown,
        guard,
        refused,
        move |socket, addr, permit| {
            let gauge = {
                let metrics = shared.broker.metrics();
                metrics.connections_total.with_label_values(&[label]).inc();
                metrics.connections.with_label_values(&[label])
            };
            let held = connection::Held::new(permit, gauge);
            let shared = shared.clone();
            // A plain TCP connection's task is its connection's future
            // itself: a wrapping `async` block would keep room for the
            // socket and the rest of its arguments twice (idle connections
            // stay small). The rest is boxed.
            if tls.is_none() && !websocket {
                let run = connection::run(socket, Box::new(Peer::plain(addr)), shared, held);
                Either::Left(run.map(log_end))
            } else {
                let tls = tls.clone();
                Either::Right(Box::pin(async move {
                    log_end(secured(socket, addr, &tls, websocket, shared, held).await)
                }))
            }
        },
    )
    .await;
}

fn log_end(result: Result<(), connection::ConnError>) {
    if let Err(e) = result {
        tracing::debug!(error = %e, "mqtt connection ended");
    }
}

/// The TLS handshake (within the connect timeout) when the listener has
/// TLS, the WebSocket upgrade when it is a WebSocket one, then MQTT.
async fn secured(
    socket: tokio::net::TcpStream,
    addr: std::net::SocketAddr,
    tls: &Option<TlsListen>,
    websocket: bool,
    shared: Arc<Shared>,
    held: connection::Held,
) -> Result<(), connection::ConnError> {
    let timeout = shared.config.connect_timeout;
    let (stream, peer) =
        match fjord_auth::listener::open(socket, addr, tls.as_ref(), &[], timeout, None).await {
            Ok(s) => s,
            Err(e) => {
                connection::count_error(&shared, "tls_handshake");
                return Err(connection::ConnError::Tls(e));
            }
        };
    if websocket {
        over_websocket(stream, peer, shared, held).await
    } else {
        connection::run(stream, Box::new(peer), shared, held).await
    }
}

/// The WebSocket upgrade (within the connect timeout), then MQTT over it.
async fn over_websocket<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    io: S,
    peer: Peer,
    shared: Arc<Shared>,
    held: connection::Held,
) -> Result<(), connection::ConnError> {
    let timeout = shared.config.connect_timeout;
    match tokio::time::timeout(
        timeout,
        tokio_tungstenite::accept_hdr_async(io, ws::check_handshake),
    )
    .await
    {
        Ok(Ok(stream)) => {
            connection::run(ws::WsIo::new(stream), Box::new(peer), shared, held).await
        }
        Ok(Err(e)) => Err(std::io::Error::other(e).into()),
        Err(_) => Err(connection::ConnError::ConnectTimeout),
    }
}
