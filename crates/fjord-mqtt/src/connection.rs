//! One MQTT connection: the session loop.
//!
//! Reads packets with the codec, stores PUBLISHes in streams through the
//! broker (acknowledging once they are as durable as the stream's policy
//! says), follows the partitions its subscriptions select and delivers
//! matching records, and keeps the protocol's per-connection state.
//!
//! Sessions may outlive their connection (stored in the metadata store,
//! see `session_store`); retained messages and shared subscriptions live in
//! the tenant's `Space`. Every publish and subscription is authorised by
//! the broker's ACLs, and live subscriptions are checked again when the
//! rules change (see docs/design-mqtt.md and docs/security.md).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use fjord_broker::{BrokerError, Followed, Position};
use fjord_core::time::now_ms;
use fjord_core::{Record, RecordInput, StreamName, StreamRef};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::codec::{
    self, reason, topic, Ack, ConnAck, Connect, DecodeError, Disconnect, LastWill, Packet,
    Properties, Protocol, Publish, QoS, SubAck, UnsubAck,
};
use crate::groups::{Inbound, SharedDelivery};
use crate::mapping::{Selection, TopicMap, RESERVED_STREAMS};
use crate::record::{from_record, to_record};
use crate::server::Shared;
use crate::session_store::{StoredCursor, StoredSession, StoredSubscription};
use crate::space::Space;
use crate::state::{InboundAliases, OutboundAliases, PacketIds, Qos2Received, Window};
use crate::tree::SubscriptionTree;
use fjord_auth::{Action, Peer, Principal, Resource};
use fjord_broker::quotas::QuotaHandle;

/// Records read ahead of the socket per connection at most.
const DELIVERY_QUEUE: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Decode(#[from] DecodeError),
    #[error("no CONNECT within the connect timeout")]
    ConnectTimeout,
    #[error("{0}")]
    Tls(#[from] fjord_auth::TlsError),
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct SubOpts {
    qos: QoS,
    no_local: bool,
    retain_as_published: bool,
    id: Option<u32>,
}

/// Delivery progress on one partition.
#[derive(Debug, Default)]
struct Progress {
    /// Offset after the last record seen.
    next: i64,
    /// Offsets delivered at QoS 1/2 and not yet acknowledged.
    unacked: std::collections::BTreeSet<i64>,
}

impl Progress {
    /// Where delivery resumes: the first unacknowledged record, else the
    /// next one.
    fn cursor(&self) -> i64 {
        self.unacked.first().copied().unwrap_or(self.next)
    }
}

/// Whether and how the session outlives its connection.
struct Persistence {
    /// Session Expiry Interval in seconds; 0: the session ends with the
    /// connection.
    expiry_s: u32,
    dirty: bool,
    last_save: Instant,
}

/// An outgoing QoS 1/2 delivery the client has not finished.
struct Pending {
    waiting: AwaitingPub,
    /// The partition record it came from (moves the session's cursor).
    source: Option<Source>,
    /// For a shared subscription: the delivery, given back to the group if
    /// this member leaves before acknowledging it.
    shared: Option<SharedDelivery>,
}

/// An outgoing QoS 1/2 delivery, by the packet it waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AwaitingPub {
    Ack,
    Rec,
    Comp,
}

/// Where a delivered record came from: stream, partition, offset.
type Source = (StreamName, u32, i64);

/// A record read for this session: stream, partition, record.
type Delivery = (StreamName, u32, Record);

/// What woke the session loop.
enum Event {
    /// Bytes read; 0 means the peer closed (or the read failed).
    Read(usize),
    /// A delivery was handled in the select itself: records are large, and
    /// an event held across an await is part of the connection's future
    /// (idle connections stay small).
    Delivered,
    Created(Box<StreamRef>),
    KeepAliveExpired,
    TakenOver,
    Shutdown,
}

/// Why the loop ends.
enum End {
    /// DISCONNECT from the client; `with_will` for 5.0 reason 0x04.
    Clean { with_will: bool },
    /// Anything else: the will is published.
    Abnormal,
}

/// Serves one connection. Server shutdown reaches it through the registry
/// once it has claimed its client id (before that it is cut with the
/// runtime).
pub async fn run<S: AsyncRead + AsyncWrite + Unpin>(
    io: S,
    // Boxed: only the login needs it, and a parameter stays part of the
    // connection's future for as long as the connection lives.
    peer: Box<Peer>,
    shared: Arc<Shared>,
    // Released when the connection ends, however it ends.
    _held: Held,
) -> Result<(), ConnError> {
    let (mut rd, mut wr) = tokio::io::split(io);
    let mut inbuf = BytesMut::new();
    let cfg = &shared.config;
    // CONNECT, within the connect timeout (slowloris).
    let connect = match tokio::time::timeout(
        cfg.connect_timeout,
        read_connect(&mut rd, &mut inbuf, cfg.max_packet_bytes as usize),
    )
    .await
    {
        Err(_) => {
            count_error(&shared, "connect_timeout");
            return Err(ConnError::ConnectTimeout);
        }
        Ok(Err(ConnError::Decode(e @ DecodeError::UnsupportedProtocol(_))))
        | Ok(Err(ConnError::Decode(e @ DecodeError::BadProtocolName(_)))) => {
            // MQTT-3.1.2-2: answer with "unacceptable protocol version", in
            // the 3.1.1 form every client understands, then close.
            let mut out = BytesMut::new();
            codec::encode(
                &Packet::ConnAck(ConnAck {
                    session_present: false,
                    code: reason::v311::UNACCEPTABLE_PROTOCOL_VERSION,
                    properties: Properties::default(),
                }),
                Protocol::V311,
                &mut out,
            );
            let _ = write_out(&mut wr, &out).await;
            count_error(&shared, &format!("{:#04x}", e.reason_code()));
            return Err(e.into());
        }
        Ok(Err(ConnError::Decode(e))) => {
            count_error(&shared, &format!("{:#04x}", e.reason_code()));
            return Err(e.into());
        }
        Ok(r) => r?,
    };
    // Everything between CONNECT and the session's loop runs in one boxed
    // future: the connection's own future, alive for as long as the
    // connection, is then only as large as its idle loop.
    let mut session =
        match Box::pin(admit(shared, peer, connect, &mut rd, &mut wr, &mut inbuf)).await? {
            Some(s) => s,
            None => return Ok(()),
        };
    let end = session.run(&mut rd, &mut wr, inbuf).await;
    Box::pin(session.finish(end)).await;
    Ok(())
}

/// What a connection holds for as long as it lives: its place in the
/// node's connection limits and in its listener's connection gauge.
pub struct Held {
    _permit: fjord_auth::guard::Permit,
    gauge: prometheus::IntGauge,
}

impl Held {
    pub fn new(permit: fjord_auth::guard::Permit, gauge: prometheus::IntGauge) -> Self {
        gauge.inc();
        Held {
            _permit: permit,
            gauge,
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// Authenticates CONNECT, opens the tenant's space, checks the will and the
/// quotas, and answers CONNACK: the session, or `None` when refused.
async fn admit<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    shared: Arc<Shared>,
    peer: Box<Peer>,
    connect: Box<Connect>,
    rd: &mut R,
    wr: &mut W,
    inbuf: &mut BytesMut,
) -> Result<Option<Session>, ConnError> {
    let (principal, auth_data) =
        match Box::pin(crate::login::login(&shared, &peer, &connect, rd, wr, inbuf)).await? {
            crate::login::Login::Admitted(p, data) => (p, data),
            crate::login::Login::Refused => return Ok(None),
        };
    // Boxed: opening a space (loading retained messages) is a large
    // future, and the connection's own future would otherwise keep room
    // for it for as long as the connection lives (idle connections).
    let space = match Box::pin(shared.space(&principal.tenant)).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(tenant = %principal.tenant, error = %e, "mqtt tenant unavailable");
            let codes = (reason::SERVER_UNAVAILABLE, reason::v311::SERVER_UNAVAILABLE);
            let _ = refuse_connect(&mut *wr, connect.protocol, codes).await;
            return Ok(None);
        }
    };
    if let Some(w) = &connect.will {
        // A will the client may not publish is refused up front: it could
        // not be refused when it fires.
        let stream = space.topic_map().stream_for(&w.topic);
        let ok = shared.broker.authorize_for(
            "mqtt",
            &principal,
            &space.tenant,
            Action::Publish,
            Resource::Stream {
                namespace: space.namespace.as_str(),
                stream: stream.as_str(),
                topic: Some(&w.topic),
            },
        );
        if !ok {
            let codes = (reason::NOT_AUTHORIZED, reason::v311::NOT_AUTHORIZED);
            let _ = refuse_connect(&mut *wr, connect.protocol, codes).await;
            return Ok(None);
        }
    }
    let quota = match shared.broker.quota_connect(&principal, "mqtt") {
        Ok(q) => q,
        Err(_) => {
            tracing::info!(principal = %principal.name(), "mqtt connection over quota");
            let codes = (reason::QUOTA_EXCEEDED, reason::v311::SERVER_UNAVAILABLE);
            let _ = refuse_connect(&mut *wr, connect.protocol, codes).await;
            return Ok(None);
        }
    };
    let admitted = Admitted {
        space,
        principal,
        auth_data,
        quota,
    };
    // Out of its box only now, straight into the boxed accept: a box moved
    // out of is freed only at the end of its scope, here the block's.
    let connect: Connect = {
        let boxed = connect;
        *boxed
    };
    Box::pin(Session::accept(shared.clone(), admitted, connect, wr)).await
}

/// Answers CONNECT with a refusal (`codes`: 5.0, 3.1.1).
async fn refuse_connect<W: AsyncWrite + Unpin>(
    wr: &mut W,
    protocol: Protocol,
    codes: (u8, u8),
) -> std::io::Result<()> {
    let mut out = BytesMut::new();
    codec::encode(
        &Packet::ConnAck(ConnAck {
            session_present: false,
            code: if protocol == Protocol::V5 {
                codes.0
            } else {
                codes.1
            },
            properties: Properties::default(),
        }),
        protocol,
        &mut out,
    );
    write_out(wr, &out).await
}

pub(crate) fn count_error(shared: &Shared, reason: &str) {
    shared
        .broker
        .metrics()
        .protocol_errors
        .with_label_values(&["mqtt", reason])
        .inc();
}

/// The 5.0 PUBACK/PUBREC reason code, and the reason string, for a
/// publication the broker refused.
fn refusal(e: &BrokerError) -> (u8, String) {
    let code = match e {
        BrokerError::StorageFull(_) | BrokerError::QuotaExceeded(_) => reason::QUOTA_EXCEEDED,
        BrokerError::InvalidRecord(_) => reason::PAYLOAD_FORMAT_INVALID,
        // Valid, but not accepted: too large for the stream, a bad name.
        BrokerError::MessageTooLarge { .. } | BrokerError::Invalid(_) | BrokerError::Name(_) => {
            reason::IMPLEMENTATION_SPECIFIC_ERROR
        }
        _ => reason::UNSPECIFIED_ERROR,
    };
    (code, e.to_string())
}

/// Bounds of the adaptive read size of a session.
const READ_SIZE_MIN: usize = 64;
const READ_SIZE_MAX: usize = 64 * 1024;

/// Receives from a queue that may not exist yet (then: never).
async fn recv_opt<T>(q: &mut Option<(mpsc::Sender<T>, mpsc::Receiver<T>)>) -> Option<T> {
    match q {
        Some((_, rx)) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Writes and flushes (a WebSocket sends only on flush).
pub(crate) async fn write_out<W: AsyncWrite + Unpin>(
    wr: &mut W,
    bytes: &[u8],
) -> std::io::Result<()> {
    wr.write_all(bytes).await?;
    wr.flush().await
}

async fn read_connect<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Box<Connect>, ConnError> {
    loop {
        if let Some(p) = codec::decode(buf, None, max)? {
            return match p {
                Packet::Connect(c) => Ok(c),
                _ => Err(DecodeError::Protocol("the first packet must be CONNECT").into()),
            };
        }
        if rd.read_buf(buf).await? == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
    }
}

/// What a successful login hands the session.
struct Admitted {
    space: Arc<Space>,
    principal: Arc<Principal>,
    /// Enhanced authentication's last message, for CONNACK.
    auth_data: Option<bytes::Bytes>,
    quota: QuotaHandle,
}

/// The state of QoS 1/2 exchanges and topic aliases of a session.
struct Flight {
    in_aliases: InboundAliases,
    out_aliases: OutboundAliases,
    ids: PacketIds,
    outgoing: HashMap<u16, Pending>,
    qos2: Qos2Received,
}

/// What a session holds once it subscribes.
#[derive(Default)]
struct Subscribed {
    subs: HashMap<String, SubOpts>,
    /// Filters by topic level; the values are shared, so a match costs
    /// no allocation.
    tree: SubscriptionTree<Arc<str>>,
    /// Retained messages owed to new subscriptions, sent as the window
    /// allows.
    backlog: std::collections::VecDeque<Record>,
    followed: HashMap<StreamName, Vec<AbortHandle>>,
    /// Shared subscriptions of this session (`$share/g/f` → options), and
    /// what their groups hand it.
    shared_subs: HashMap<String, SubOpts>,
    /// Per followed partition: what has been seen and what awaits an ack
    /// (the session's cursor is derived from it).
    progress: HashMap<(StreamName, u32), Progress>,
    /// Offsets below which a record was sent before the session resumed
    /// (redeliveries carry DUP).
    resent_below: HashMap<(StreamName, u32), i64>,
    /// The ACL generation the subscriptions were last checked under.
    acl_checked: u64,
}

struct Session {
    shared: Arc<Shared>,
    /// The tenant's MQTT state (client ids, retained messages, groups).
    space: Arc<Space>,
    /// Who the client proved to be.
    principal: Arc<Principal>,
    /// Its place in its tenant's and its own quotas.
    quota: QuotaHandle,
    protocol: Protocol,
    /// Shared with the registry's entry.
    client_id: Arc<str>,
    token: u64,
    /// Ends the connection (takeover, shutdown); marks it done once its
    /// session is saved.
    signal: Arc<crate::server::ConnSignal>,
    keep_alive: Duration,
    will: Option<Box<LastWill>>,
    map: TopicMap,
    /// Subscriptions and delivery progress, allocated with the first
    /// subscription (or a resumed session): an idle connection does
    /// without.
    subscribed: Option<Box<Subscribed>>,
    follow_all: bool,
    /// Created with the first subscription: an idle connection holds no
    /// queue (each costs a block of slots up front).
    inbound: Option<(mpsc::Sender<Inbound>, mpsc::Receiver<Inbound>)>,
    persistence: Persistence,
    /// Packet ids, QoS exchanges and topic aliases, allocated with the
    /// first exchange that needs them.
    flight: Option<Box<Flight>>,
    /// Topic Alias Maximum each way (ours to the client, the client's).
    alias_max: (u16, u16),
    in_window: Window,
    out_window: Window,
    client_max_packet: usize,
    out: BytesMut,
}

impl Session {
    /// The exchange state, allocated on first use.
    fn fl(&mut self) -> &mut Flight {
        let (inbound, outbound) = self.alias_max;
        self.flight.get_or_insert_with(|| {
            Box::new(Flight {
                in_aliases: InboundAliases::new(inbound),
                out_aliases: OutboundAliases::new(outbound),
                ids: PacketIds::default(),
                outgoing: HashMap::new(),
                qos2: Qos2Received::default(),
            })
        })
    }

    /// The subscription state, allocated on first use.
    fn st(&mut self) -> &mut Subscribed {
        self.subscribed.get_or_insert_with(|| {
            // No subscription yet: none to check under older rules.
            Box::new(Subscribed {
                acl_checked: self.shared.broker.acl_generation(),
                ..Default::default()
            })
        })
    }

    /// Checks CONNECT, answers CONNACK; `None` when the connection was
    /// refused.
    async fn accept<W: AsyncWrite + Unpin>(
        shared: Arc<Shared>,
        admitted: Admitted,
        c: Connect,
        wr: &mut W,
    ) -> Result<Option<Session>, ConnError> {
        let Admitted {
            space,
            principal,
            auth_data,
            quota,
        } = admitted;
        let v5 = c.protocol == Protocol::V5;
        let cfg = shared.config.clone();
        let mut out = BytesMut::new();
        let refuse = |code_v5: u8, code_v311: u8, out: &mut BytesMut| {
            let code = if v5 { code_v5 } else { code_v311 };
            codec::encode(
                &Packet::ConnAck(ConnAck {
                    session_present: false,
                    code,
                    properties: Properties::default(),
                }),
                c.protocol,
                out,
            );
        };
        // An empty client id needs a clean session (MQTT-3.1.3-8); the
        // server then assigns one (MQTT-3.1.3-6).
        let mut assigned = None;
        let client_id = if c.client_id.is_empty() {
            if !v5 && !c.clean_start {
                refuse(
                    reason::CLIENT_IDENTIFIER_NOT_VALID,
                    reason::v311::IDENTIFIER_REJECTED,
                    &mut out,
                );
                write_out(&mut *wr, &out).await?;
                return Ok(None);
            }
            let id = format!("fjord-{:016x}", random_u64());
            assigned = Some(id.clone());
            id
        } else {
            c.client_id.clone()
        };
        // MQTT-3.2.2-21: a 5.0 client uses the Server Keep Alive we send;
        // 3.1.1 has no way to say it, so a client beyond the maximum is
        // refused (as Mosquitto's `max_keepalive` does).
        let keep_alive_max = cfg.keep_alive_max;
        let beyond_max = keep_alive_max > 0 && (c.keep_alive == 0 || c.keep_alive > keep_alive_max);
        if beyond_max && !v5 {
            refuse(
                reason::UNSPECIFIED_ERROR,
                reason::v311::IDENTIFIER_REJECTED,
                &mut out,
            );
            write_out(&mut *wr, &out).await?;
            return Ok(None);
        }
        let keep_alive_s = if beyond_max {
            keep_alive_max
        } else {
            c.keep_alive
        };
        let client_id: Arc<str> = client_id.into();
        let claimed = space.registry.claim(&client_id);
        if let Some(previous) = &claimed.previous {
            // Let the connection we take over save its session first.
            let _ = tokio::time::timeout(Duration::from_secs(5), previous.wait_done()).await;
        }
        let meta = shared.broker.meta().clone();
        // 5.0: the client's Session Expiry Interval (capped); 3.1.1: a
        // session without Clean Session lasts as long as we allow.
        let max_expiry = cfg.session_expiry_max.as_secs().min(u32::MAX as u64) as u32;
        let asked = if v5 {
            c.properties.session_expiry_interval.unwrap_or(0)
        } else if c.clean_start {
            0
        } else {
            u32::MAX
        };
        let expiry_s = asked.min(max_expiry);
        let stored = if c.clean_start {
            // MQTT-3.1.2-4: a clean start discards any existing session.
            // Looked up first: most clean connections have none, and a
            // delete is a durable write.
            if meta
                .get_session(&space.tenant, &client_id)
                .ok()
                .flatten()
                .is_some()
            {
                let _ = meta.delete_session(&space.tenant, &client_id);
            }
            None
        } else {
            meta.get_session(&space.tenant, &client_id)
                .ok()
                .flatten()
                .and_then(|b| serde_json::from_slice::<StoredSession>(&b).ok())
                .filter(|st| !st.expired(now_ms()))
        };
        let client_receive_max = c.properties.receive_maximum.unwrap_or(u16::MAX);
        let mut props = Properties::default();
        if v5 {
            props.receive_maximum = Some(cfg.receive_maximum);
            props.topic_alias_maximum = Some(cfg.topic_alias_maximum);
            props.maximum_packet_size = Some(cfg.max_packet_bytes);
            // Honest advertisement of what this build serves (retained
            // messages are, so Retain Available is left at its default).
            props.wildcard_subscription_available = Some(1);
            props.subscription_identifier_available = Some(1);
            if asked > expiry_s {
                props.session_expiry_interval = Some(expiry_s);
            }
            props.assigned_client_identifier = assigned;
            if auth_data.is_some() {
                props.authentication_method = c.properties.authentication_method.clone();
                props.authentication_data = auth_data;
            }
            if beyond_max {
                props.server_keep_alive = Some(keep_alive_max);
            }
        }
        codec::encode(
            &Packet::ConnAck(ConnAck {
                // MQTT-3.2.2-2/3.
                session_present: stored.is_some(),
                code: reason::SUCCESS,
                properties: props,
            }),
            c.protocol,
            &mut out,
        );
        write_out(&mut *wr, &out).await?;
        out.clear();
        // The namespace's topic mapping rules, as they are now (a change
        // applies to connections made after it).
        let map = space.topic_map();
        let mut session = Session {
            protocol: c.protocol,
            client_id,
            token: claimed.token,
            signal: claimed.signal,
            persistence: Persistence {
                expiry_s,
                dirty: false,
                last_save: Instant::now(),
            },
            // MQTT-3.1.2-24: one and a half times the keep alive.
            keep_alive: Duration::from_millis(keep_alive_s as u64 * 1500),
            will: c.will.map(Box::new),
            map,
            subscribed: None,
            follow_all: false,
            inbound: None,
            flight: None,
            alias_max: (
                if v5 { cfg.topic_alias_maximum } else { 0 },
                c.properties.topic_alias_maximum.unwrap_or(0),
            ),
            in_window: Window::new(cfg.receive_maximum),
            out_window: Window::new(client_receive_max.min(cfg.outbound_inflight_max)),
            client_max_packet: c
                .properties
                .maximum_packet_size
                .map_or(usize::MAX, |m| m as usize),
            out,
            shared,
            space,
            principal,
            quota,
        };
        match stored {
            Some(st) => {
                let had_will = st.pending_will.is_some();
                session.resume(st).await;
                if had_will {
                    // Back before its will was due: the will is off
                    // (MQTT-3.1.3-9), also across a restart.
                    session.save(None);
                }
            }
            // A new persistent session exists from now on (MQTT-3.1.2-5).
            None => session.save(None),
        }
        Ok(Some(session))
    }

    /// Restores a stored session: subscriptions, QoS 2 exchanges, and
    /// readers from the cursors (streams created meanwhile from their
    /// start).
    async fn resume(&mut self, st: StoredSession) {
        for c in &st.cursors {
            let Ok(stream) = StreamName::new(c.stream.clone()) else {
                continue;
            };
            self.st().progress.insert(
                (stream.clone(), c.partition),
                Progress {
                    next: c.cursor,
                    ..Default::default()
                },
            );
            self.st().resent_below.insert((stream, c.partition), c.next);
        }
        for id in st.qos2_received {
            self.fl().qos2.first_receipt(id);
        }
        for id in st.pubrel_pending {
            if self.fl().ids.reserve(id) {
                self.out_window.acquire();
                self.fl().outgoing.insert(
                    id,
                    Pending {
                        waiting: AwaitingPub::Comp,
                        source: None,
                        shared: None,
                    },
                );
                self.send(&Packet::PubRel(Ack {
                    packet_id: id,
                    reason: reason::SUCCESS,
                    properties: Properties::default(),
                }));
            }
        }
        for sub in st.subscriptions {
            let Some(qos) = QoS::from_u8(sub.qos) else {
                continue;
            };
            // The session may be resumed by another principal of the
            // tenant, or under rules changed since: its subscriptions are
            // granted again like new ones (and count against the quota).
            if !self.may_subscribe(&sub.filter) || !self.quota.subscribe("mqtt") {
                tracing::info!(client_id = %self.client_id, filter = %sub.filter,
                    "stored subscription not resumed: not allowed (ACL or quota)");
                continue;
            }
            let opts = SubOpts {
                qos,
                no_local: sub.no_local,
                retain_as_published: sub.retain_as_published,
                id: sub.id,
            };
            if topic::shared(&sub.filter).is_some() {
                self.st().shared_subs.insert(sub.filter.clone(), opts);
                let tx = self.inbound_sender();
                let persistent = self.persistent();
                self.space
                    .groups
                    .join(&sub.filter, &self.map, self.token, tx, persistent, true)
                    .await;
                continue;
            }
            self.st()
                .tree
                .insert(&sub.filter, Arc::from(sub.filter.as_str()));
            self.st().subs.insert(sub.filter.clone(), opts);
            self.follow(&sub.filter, Position::Earliest).await;
        }
    }

    fn persistent(&self) -> bool {
        self.persistence.expiry_s > 0
    }

    /// Writes the session to the MetaStore (persistent sessions only);
    /// `disconnected_ms` when the client has gone.
    fn save(&mut self, disconnected_ms: Option<i64>) {
        self.save_with(disconnected_ms, None);
    }

    fn save_with(
        &mut self,
        disconnected_ms: Option<i64>,
        pending_will: Option<crate::session_store::StoredWill>,
    ) {
        if !self.persistent() {
            return;
        }
        let empty = Subscribed::default();
        let sub = self.subscribed.as_deref().unwrap_or(&empty);
        let st = StoredSession {
            pending_will,
            expiry_s: self.persistence.expiry_s,
            disconnected_ms,
            subscriptions: sub
                .subs
                .iter()
                .chain(sub.shared_subs.iter())
                .map(|(f, o)| StoredSubscription {
                    filter: f.clone(),
                    qos: o.qos as u8,
                    no_local: o.no_local,
                    retain_as_published: o.retain_as_published,
                    id: o.id,
                })
                .collect(),
            cursors: sub
                .progress
                .iter()
                .map(|((s, p), pr)| StoredCursor {
                    stream: s.to_string(),
                    partition: *p,
                    cursor: pr.cursor(),
                    next: pr.next,
                })
                .collect(),
            qos2_received: self
                .flight
                .as_deref()
                .map(|f| f.qos2.pending().collect())
                .unwrap_or_default(),
            pubrel_pending: self
                .flight
                .as_deref()
                .map(|f| {
                    f.outgoing
                        .iter()
                        .filter(|(_, o)| o.waiting == AwaitingPub::Comp)
                        .map(|(id, _)| *id)
                        .collect()
                })
                .unwrap_or_default(),
        };
        match serde_json::to_vec(&st) {
            Ok(bytes) => {
                if let Err(e) = self.shared.broker.meta().put_session(
                    &self.space.tenant,
                    &self.client_id,
                    &bytes,
                ) {
                    tracing::warn!(client = %self.client_id, error = %e, "session not saved");
                }
            }
            Err(e) => tracing::warn!(client = %self.client_id, error = %e, "session not encoded"),
        }
        self.persistence.dirty = false;
        self.persistence.last_save = Instant::now();
    }

    /// Saves progress at most once a second while deliveries go on, so a
    /// broker crash redelivers little.
    fn save_if_due(&mut self) {
        if self.persistence.dirty && self.persistence.last_save.elapsed() >= Duration::from_secs(1)
        {
            self.save(None);
        }
    }

    /// Handles a record read from a followed partition.
    fn deliver_read(&mut self, (stream, p, rec): Delivery) {
        let key = (stream.clone(), p);
        let dup = self
            .st()
            .resent_below
            .get(&key)
            .is_some_and(|&b| rec.offset < b);
        let source = Some((stream.clone(), p, rec.offset));
        let awaiting = self.deliver(&stream, &rec, false, dup, source);
        let pr = self.st().progress.entry(key).or_default();
        pr.next = pr.next.max(rec.offset + 1);
        if awaiting {
            pr.unacked.insert(rec.offset);
        }
        self.persistence.dirty = true;
    }

    fn take_inbound(&mut self, d: Inbound) {
        match d {
            Inbound::Read(stream, p, rec) => self.deliver_read((stream, p, rec)),
            Inbound::Shared(d) => self.deliver_shared(d),
        }
    }

    fn inbound_sender(&mut self) -> mpsc::Sender<Inbound> {
        self.inbound
            .get_or_insert_with(|| mpsc::channel(DELIVERY_QUEUE))
            .0
            .clone()
    }

    fn v5(&self) -> bool {
        self.protocol == Protocol::V5
    }

    fn send(&mut self, p: &Packet) {
        codec::encode(p, self.protocol, &mut self.out);
    }

    /// A 5.0 DISCONNECT with `code` (3.1.1 has none: the connection just
    /// closes).
    fn disconnect(&mut self, code: u8, why: &str) {
        if self.v5() {
            let props = Properties {
                reason_string: Some(why.to_string()),
                ..Default::default()
            };
            self.send(&Packet::Disconnect(Disconnect {
                reason: code,
                properties: props,
            }));
        }
    }

    async fn run<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
        &mut self,
        rd: &mut R,
        wr: &mut W,
        mut inbuf: BytesMut,
    ) -> End {
        let max = self.shared.config.max_packet_bytes as usize;
        let mut created = self.shared.broker.stream_created();
        self.signal.heard(self.keep_alive);
        // Bytes asked of each read: grows while reads fill it (a publisher
        // streaming: big reads make big produce runs), shrinks when they
        // do not, so an idle connection holds a small buffer.
        let mut read_size = READ_SIZE_MIN;
        loop {
            if !self.out.is_empty() {
                if write_out(&mut *wr, &self.out).await.is_err() {
                    return End::Abnormal;
                }
                self.out.clear();
                if self.out.capacity() > 64 * 1024 {
                    // Give a burst's buffer back: idle connections stay small.
                    self.out = BytesMut::new();
                }
            }
            // Handle every complete packet already read, in runs of at most
            // 256; a bad packet ends the connection after the good ones
            // before it are handled.
            loop {
                let mut packets = Vec::new();
                let mut bad = None;
                while packets.len() < 256 {
                    match codec::decode(&mut inbuf, Some(self.protocol), max) {
                        Ok(Some(p)) => packets.push(p),
                        Ok(None) => break,
                        Err(e) => {
                            bad = Some(e);
                            break;
                        }
                    }
                }
                let more = packets.len() == 256;
                if !packets.is_empty() {
                    if let Some(end) = Box::pin(self.handle(packets)).await {
                        let _ = write_out(&mut *wr, &self.out).await;
                        return end;
                    }
                }
                if let Some(e) = bad {
                    count_error(&self.shared, &format!("{:#04x}", e.reason_code()));
                    self.disconnect(e.reason_code(), &e.to_string());
                    let _ = write_out(&mut *wr, &self.out).await;
                    return End::Abnormal;
                }
                if !more {
                    break;
                }
            }
            if !self.out.is_empty() {
                continue;
            }
            if inbuf.is_empty() && inbuf.capacity() > 4 * read_size {
                // A burst is over: give its buffer back (idle stays small).
                inbuf = BytesMut::new();
            }
            if inbuf.capacity() - inbuf.len() < read_size {
                inbuf.reserve(read_size);
            }
            let spare = inbuf.capacity() - inbuf.len();
            if self.out.capacity() != 0 {
                // Everything is written; the next write allocates afresh
                // (one allocation per wake-up), a waiting connection holds
                // no output buffer.
                self.out = BytesMut::new();
            }
            if self
                .subscribed
                .as_ref()
                .is_some_and(|st| !st.backlog.is_empty())
                && self.out_window.available() > 0
            {
                let stream = self.space.retained.stream_name().clone();
                while self.out_window.available() > 0 && self.out.len() < 64 * 1024 {
                    let Some(rec) = self.st().backlog.pop_front() else {
                        break;
                    };
                    self.deliver(&stream, &rec, true, false, None);
                }
                continue;
            }
            let room = self.out_window.available() > 0;
            let event = tokio::select! {
                n = rd.read_buf(&mut inbuf) => Event::Read(n.unwrap_or(0)),
                Some(d) = recv_opt(&mut self.inbound), if room => {
                    self.take_inbound(d);
                    Event::Delivered
                }
                Ok(s) = created.recv() => Event::Created(Box::new(s)),
                // Keep alive too: the server's sweep tells a silent
                // client's connection to end.
                why = self.signal.ended() => match why {
                    crate::server::END_TAKEN_OVER => Event::TakenOver,
                    crate::server::END_KEEP_ALIVE => Event::KeepAliveExpired,
                    _ => Event::Shutdown,
                },
            };
            match event {
                Event::Read(0) => return End::Abnormal,
                Event::Read(n) => {
                    self.signal.heard(self.keep_alive);
                    if n >= spare {
                        read_size = (read_size * 2).min(READ_SIZE_MAX);
                    } else if n < read_size / 4 {
                        read_size = (read_size / 2).max(READ_SIZE_MIN);
                    }
                }
                Event::Delivered => {
                    // Drain what is queued, as far as the window allows.
                    while self.out_window.available() > 0 && self.out.len() < 64 * 1024 {
                        match self.inbound.as_mut().map(|(_, rx)| rx.try_recv()) {
                            Some(Ok(d)) => self.take_inbound(d),
                            _ => break,
                        }
                    }
                    self.save_if_due();
                }
                Event::Created(s) => Box::pin(self.on_stream_created(*s)).await,
                Event::KeepAliveExpired => {
                    self.disconnect(reason::KEEP_ALIVE_TIMEOUT, "keep alive timeout");
                    let _ = write_out(&mut *wr, &self.out).await;
                    return End::Abnormal;
                }
                Event::TakenOver => {
                    self.disconnect(
                        reason::SESSION_TAKEN_OVER,
                        "another connection took this client id",
                    );
                    let _ = write_out(&mut *wr, &self.out).await;
                    return End::Abnormal;
                }
                Event::Shutdown => {
                    self.disconnect(reason::SERVER_SHUTTING_DOWN, "the server is shutting down");
                    let _ = write_out(&mut *wr, &self.out).await;
                    return End::Abnormal;
                }
            }
        }
    }

    /// Handles a run of packets; `Some` ends the connection.
    async fn handle(&mut self, packets: Vec<Packet>) -> Option<End> {
        let mut publishes: Vec<Publish> = Vec::new();
        for p in packets {
            if let Packet::Publish(p) = p {
                publishes.push(p);
                continue;
            }
            if !publishes.is_empty() {
                if let Some(end) = self.publish(std::mem::take(&mut publishes)).await {
                    return Some(end);
                }
            }
            match p {
                Packet::PingReq => self.send(&Packet::PingResp),
                Packet::Disconnect(d) => {
                    if let Some(x) = d.properties.session_expiry_interval {
                        // MQTT-3.14.2-2: a session that was to end with the
                        // connection cannot be made persistent here.
                        if self.persistence.expiry_s == 0 && x > 0 {
                            self.disconnect(
                                reason::PROTOCOL_ERROR,
                                "session expiry set on DISCONNECT after 0 in CONNECT",
                            );
                            return Some(End::Abnormal);
                        }
                        let max = self
                            .shared
                            .config
                            .session_expiry_max
                            .as_secs()
                            .min(u32::MAX as u64) as u32;
                        self.persistence.expiry_s = x.min(max);
                        if x == 0 {
                            let _ = self
                                .shared
                                .broker
                                .meta()
                                .delete_session(&self.space.tenant, &self.client_id);
                        }
                    }
                    return Some(End::Clean {
                        with_will: d.reason == reason::DISCONNECT_WITH_WILL,
                    });
                }
                Packet::Subscribe(s) => {
                    if let Some(end) = self.subscribe(s).await {
                        return Some(end);
                    }
                }
                Packet::Unsubscribe(u) => self.unsubscribe(u),
                Packet::PubAck(a) => self.acked(a.packet_id, AwaitingPub::Ack),
                Packet::PubRec(a) => {
                    if self.fl().outgoing.get(&a.packet_id).map(|o| o.waiting)
                        == Some(AwaitingPub::Rec)
                    {
                        if a.reason >= 0x80 {
                            // The client refused it: the exchange ends here.
                            self.acked(a.packet_id, AwaitingPub::Rec);
                        } else {
                            // Received by the client: the record is settled,
                            // only the release is left (kept across reconnects).
                            let done = Pending {
                                waiting: AwaitingPub::Comp,
                                source: None,
                                shared: None,
                            };
                            if let Some(old) = self.fl().outgoing.insert(a.packet_id, done) {
                                self.settle(old.source);
                                self.settle_shared(old.shared);
                            }
                            self.send(&Packet::PubRel(Ack {
                                packet_id: a.packet_id,
                                reason: reason::SUCCESS,
                                properties: Properties::default(),
                            }));
                        }
                    }
                }
                Packet::PubComp(a) => self.acked(a.packet_id, AwaitingPub::Comp),
                Packet::PubRel(a) => {
                    let known = self.fl().qos2.release(a.packet_id);
                    if known {
                        self.in_window.release();
                    }
                    let code = if known {
                        reason::SUCCESS
                    } else {
                        reason::PACKET_IDENTIFIER_NOT_FOUND
                    };
                    self.send(&Packet::PubComp(Ack {
                        packet_id: a.packet_id,
                        reason: code,
                        properties: Properties::default(),
                    }));
                }
                Packet::Auth(_) => {
                    self.disconnect(
                        reason::PROTOCOL_ERROR,
                        "AUTH without an authentication method in CONNECT",
                    );
                    return Some(End::Abnormal);
                }
                // Server-to-client packets from a client (and CONNECT, which
                // the codec already refuses after the first).
                Packet::Connect(_)
                | Packet::ConnAck(_)
                | Packet::SubAck(_)
                | Packet::UnsubAck(_)
                | Packet::PingResp
                | Packet::Publish(_) => {
                    self.disconnect(reason::PROTOCOL_ERROR, "a packet only a server sends");
                    return Some(End::Abnormal);
                }
            }
        }
        if !publishes.is_empty() {
            return self.publish(publishes).await;
        }
        None
    }

    fn acked(&mut self, id: u16, expected: AwaitingPub) {
        if self.fl().outgoing.get(&id).map(|o| o.waiting) == Some(expected) {
            if let Some(old) = self.fl().outgoing.remove(&id) {
                self.settle(old.source);
                self.settle_shared(old.shared);
            }
            self.fl().ids.release(id);
            self.out_window.release();
        }
    }

    /// The client has a record of a shared subscription for good: the
    /// group's cursor may pass it.
    fn settle_shared(&self, shared: Option<SharedDelivery>) {
        if let Some((filter, stream, p, rec)) = shared {
            self.space.groups.settled(&filter, &stream, p, rec.offset);
        }
    }

    /// The client has a delivered record for good: the cursor may pass it.
    fn settle(&mut self, source: Option<Source>) {
        if let Some((s, p, offset)) = source {
            if let Some(pr) = self.st().progress.get_mut(&(s, p)) {
                pr.unacked.remove(&offset);
                self.persistence.dirty = true;
            }
        }
    }

    /// Stores a run of PUBLISH packets: consecutive ones for the same stream
    /// in one produce call (one group commit), then acknowledges each in
    /// order.
    async fn publish(&mut self, publishes: Vec<Publish>) -> Option<End> {
        struct Item {
            qos: QoS,
            id: Option<u16>,
            /// Index into `runs` of the stored record, `None` for a QoS 2
            /// retransmission (acknowledged, not stored again).
            run: Option<(usize, usize)>,
            /// The retained-message update this PUBLISH makes, if any.
            retain: Option<RecordInput>,
            /// Refused by the ACL: 5.0 answers 0x87, 3.1.1 acknowledges
            /// and drops it (MQTT-3.3.5-2).
            denied: bool,
        }
        let mut items = Vec::with_capacity(publishes.len());
        let mut runs: Vec<(StreamName, Vec<RecordInput>)> = Vec::new();
        let (mut charged_msgs, mut charged_bytes) = (0u64, 0u64);
        for p in publishes {
            let topic_name = match self
                .fl()
                .in_aliases
                .resolve(&p.topic, p.properties.topic_alias)
            {
                Ok(t) => t,
                Err(code) => {
                    self.disconnect(code, "invalid topic alias");
                    return Some(End::Abnormal);
                }
            };
            self.shared
                .stats
                .received
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if topic_name.starts_with("$SYS") {
                // The broker's own topics (MQTT-4.7.2: `$` topics are the
                // server's).
                self.disconnect(reason::NOT_AUTHORIZED, "$SYS topics are the broker's");
                return Some(End::Abnormal);
            }
            if p.qos != QoS::AtMostOnce && !self.in_window.acquire() {
                self.disconnect(
                    reason::RECEIVE_MAXIMUM_EXCEEDED,
                    "more unacknowledged QoS 1/2 publications than Receive Maximum",
                );
                return Some(End::Abnormal);
            }
            if p.qos == QoS::ExactlyOnce {
                let id = p.packet_id.unwrap_or(0);
                if !self.fl().qos2.first_receipt(id) {
                    // Retransmission: PUBREC again, nothing stored twice.
                    self.in_window.release();
                    items.push(Item {
                        qos: p.qos,
                        id: p.packet_id,
                        run: None,
                        retain: None,
                        denied: false,
                    });
                    continue;
                }
            }
            let stream = self.map.stream_for(&topic_name);
            if !self.allowed(Action::Publish, stream.as_str(), &topic_name) {
                items.push(Item {
                    qos: p.qos,
                    id: p.packet_id,
                    run: None,
                    retain: None,
                    denied: true,
                });
                continue;
            }
            charged_msgs += 1;
            charged_bytes += p.payload.len() as u64;
            let rec = to_record(
                &topic_name,
                p.qos,
                p.retain,
                p.payload,
                &p.properties,
                &self.client_id,
            );
            let retain = p.retain.then(|| rec.clone());
            let n_runs = runs.len();
            let run = match runs.last_mut() {
                Some((s, recs)) if *s == stream => {
                    recs.push(rec);
                    (n_runs - 1, recs.len() - 1)
                }
                _ => {
                    runs.push((stream, vec![rec]));
                    (runs.len() - 1, 0)
                }
            };
            items.push(Item {
                qos: p.qos,
                id: p.packet_id,
                run: Some(run),
                retain,
                denied: false,
            });
        }
        // Over the publish rate: flow control. The session reads nothing
        // more until the debt is paid, so the client's window fills and
        // TCP pushes back; nothing is dropped.
        let wait = self.quota.publish("mqtt", charged_msgs, charged_bytes);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        let mut results: Vec<Vec<Result<(), (u8, String)>>> = Vec::with_capacity(runs.len());
        for (stream, recs) in runs {
            let sref = StreamRef {
                tenant: self.space.tenant.clone(),
                namespace: self.space.namespace.clone(),
                stream,
            };
            let n = recs.len();
            // A value an enforced schema refuses fails its whole call
            // before anything is stored: then the others are stored one by
            // one, so that only the misfit is refused.
            let enforced = n > 1
                && self
                    .shared
                    .broker
                    .value_schema(&sref)
                    .ok()
                    .flatten()
                    .is_some_and(|s| s.enforced());
            let singles = enforced.then(|| recs.clone());
            let r = match self.shared.broker.ensure_stream(&sref) {
                Ok(()) => self
                    .shared
                    .broker
                    .produce(&sref, recs, None)
                    .await
                    .map(|_| ()),
                Err(e) => Err(e),
            };
            match (r, singles) {
                (Err(BrokerError::InvalidRecord(_)), Some(singles)) => {
                    let mut each = Vec::with_capacity(n);
                    for rec in singles {
                        let r = self.shared.broker.produce(&sref, vec![rec], None).await;
                        each.push(r.map(|_| ()).map_err(|e| refusal(&e)));
                    }
                    results.push(each);
                }
                (r, _) => results.push(vec![r.map_err(|e: BrokerError| refusal(&e)); n]),
            }
        }
        for item in items {
            let mut outcome = item.run.map_or(Ok(()), |(r, i)| results[r][i].clone());
            if item.denied && self.v5() {
                outcome = Err((reason::NOT_AUTHORIZED, "not authorized".to_string()));
            }
            if let (Ok(()), Some(rec)) = (&outcome, item.retain) {
                // The message is stored; now it becomes (or, empty, stops
                // being) the topic's retained message (MQTT-3.3.1-5, -6).
                if let Err(e) = self.space.retained.set(rec).await {
                    outcome = Err(refusal(&e));
                }
            }
            if let Err((reason::PAYLOAD_FORMAT_INVALID, e)) = &outcome {
                if !self.v5() {
                    // 3.1.1 cannot refuse a message, and closing would have
                    // the client resend one that can never be stored, for
                    // ever: acknowledged, not stored, counted and logged.
                    count_error(&self.shared, "invalid_record");
                    tracing::warn!(client = %self.client_id, error = %e, "publish refused by the stream's schema; acknowledged (MQTT 3.1.1) and dropped");
                    outcome = Ok(());
                }
            }
            let id = item.id.unwrap_or(0);
            match (item.qos, outcome) {
                (QoS::AtMostOnce, Ok(())) => {}
                (QoS::AtMostOnce, Err((_, e))) => {
                    tracing::warn!(client = %self.client_id, error = %e, "QoS 0 publish not stored")
                }
                (qos, Ok(())) => {
                    let ack = Ack {
                        packet_id: id,
                        reason: reason::SUCCESS,
                        properties: Properties::default(),
                    };
                    if qos == QoS::AtLeastOnce {
                        self.in_window.release();
                        self.send(&Packet::PubAck(ack));
                    } else {
                        self.send(&Packet::PubRec(ack));
                    }
                }
                (qos, Err((code, e))) => {
                    if !self.v5() {
                        // 3.1.1 has no negative acknowledgement: closing
                        // makes the client retry (MQTT-4.4.0-1).
                        return Some(End::Abnormal);
                    }
                    let props = Properties {
                        reason_string: Some(e),
                        ..Default::default()
                    };
                    let ack = Ack {
                        packet_id: id,
                        reason: code,
                        properties: props,
                    };
                    if qos == QoS::AtLeastOnce {
                        self.in_window.release();
                        self.send(&Packet::PubAck(ack));
                    } else {
                        // A refused QoS 2 message ends its exchange.
                        self.fl().qos2.release(id);
                        self.in_window.release();
                        self.send(&Packet::PubRec(ack));
                    }
                }
            }
        }
        None
    }

    /// Whether the client may `action` on `topic` (a name or, to
    /// subscribe, a filter) of `stream`.
    fn allowed(&self, action: Action, stream: &str, topic: &str) -> bool {
        self.shared.broker.authorize_for(
            "mqtt",
            &self.principal,
            &self.space.tenant,
            action,
            Resource::Stream {
                namespace: self.space.namespace.as_str(),
                stream,
                topic: Some(topic),
            },
        )
    }

    fn has_subscription(&self, filter: &str) -> bool {
        self.subscribed
            .as_ref()
            .is_some_and(|s| s.subs.contains_key(filter) || s.shared_subs.contains_key(filter))
    }

    /// Whether the ACL lets the client subscribe to `filter` (and, for a
    /// shared subscription, join its group).
    fn may_subscribe(&self, filter: &str) -> bool {
        let (group, inner) = match topic::shared(filter) {
            Some(Ok((g, f))) => (Some(g), f),
            _ => (None, filter),
        };
        // A filter reaching one stream is checked against it; a wider one
        // against every stream (`*`).
        let one;
        let stream = match self.map.streams_for_filter(inner) {
            Selection::Streams(s) if s.len() == 1 => {
                one = s
                    .into_iter()
                    .next()
                    .map(|n| n.to_string())
                    .unwrap_or_default();
                one.as_str()
            }
            _ => "*",
        };
        let group_ok = group.is_none_or(|g| {
            self.shared.broker.authorize_for(
                "mqtt",
                &self.principal,
                &self.space.tenant,
                Action::Subscribe,
                Resource::Group(g),
            )
        });
        group_ok && self.allowed(Action::Subscribe, stream, inner)
    }

    async fn subscribe(&mut self, s: codec::Subscribe) -> Option<End> {
        let v5 = self.v5();
        // MQTT-3.8.3-4: No Local on a shared subscription is a protocol
        // error.
        if s.filters
            .iter()
            .any(|f| f.no_local && topic::shared(&f.filter).is_some())
        {
            self.disconnect(reason::PROTOCOL_ERROR, "No Local on a shared subscription");
            return Some(End::Abnormal);
        }
        let mut codes = Vec::with_capacity(s.filters.len());
        for req in s.filters {
            let code = if topic::validate_filter(&req.filter).is_err() {
                if v5 {
                    reason::TOPIC_FILTER_INVALID
                } else {
                    reason::v311::SUBACK_FAILURE
                }
            } else if !self.may_subscribe(&req.filter) {
                if v5 {
                    reason::NOT_AUTHORIZED
                } else {
                    reason::v311::SUBACK_FAILURE
                }
            } else if !self.has_subscription(&req.filter) && !self.quota.subscribe("mqtt") {
                if v5 {
                    reason::QUOTA_EXCEEDED
                } else {
                    reason::v311::SUBACK_FAILURE
                }
            } else if topic::shared(&req.filter).is_some() {
                let opts = SubOpts {
                    qos: req.qos,
                    no_local: false,
                    retain_as_published: req.retain_as_published,
                    id: s.properties.subscription_identifiers.first().copied(),
                };
                self.st().shared_subs.insert(req.filter.clone(), opts);
                // Retained messages are not sent for shared subscriptions
                // (MQTT 5.0 §4.8.2).
                let tx = self.inbound_sender();
                self.space
                    .groups
                    .join(
                        &req.filter,
                        &self.map,
                        self.token,
                        tx,
                        self.persistent(),
                        self.group_has_members_away(&req.filter),
                    )
                    .await;
                req.qos as u8
            } else {
                let opts = SubOpts {
                    qos: req.qos,
                    no_local: req.no_local,
                    retain_as_published: req.retain_as_published,
                    id: s.properties.subscription_identifiers.first().copied(),
                };
                let is_new = self.st().subs.insert(req.filter.clone(), opts).is_none();
                if is_new {
                    self.st()
                        .tree
                        .insert(&req.filter, Arc::from(req.filter.as_str()));
                }
                self.follow(&req.filter, Position::Latest).await;
                // Retain handling: 0 always, 1 only for a new subscription,
                // 2 never (MQTT-3.3.1-9, -10, -11).
                if req.retain_handling == 0 || (req.retain_handling == 1 && is_new) {
                    let owed = self.space.retained.matching(&req.filter);
                    self.st().backlog.extend(owed);
                }
                req.qos as u8
            };
            codes.push(code);
        }
        self.save(None);
        self.send(&Packet::SubAck(SubAck {
            packet_id: s.packet_id,
            codes,
            properties: Properties::default(),
        }));
        None
    }

    fn unsubscribe(&mut self, u: codec::Unsubscribe) {
        let codes = u
            .filters
            .iter()
            .map(|f| {
                if self.remove_subscription(f) {
                    reason::SUCCESS
                } else {
                    reason::NO_SUBSCRIPTION_EXISTED
                }
            })
            .collect();
        self.stop_following_if_unsubscribed();
        self.save(None);
        let codes = if self.v5() { codes } else { Vec::new() };
        self.send(&Packet::UnsubAck(UnsubAck {
            packet_id: u.packet_id,
            codes,
            properties: Properties::default(),
        }));
    }

    /// Removes the subscription to `filter`; false when there was none.
    fn remove_subscription(&mut self, f: &str) -> bool {
        if self.st().subs.remove(f).is_some() {
            self.st().tree.remove(f, &Arc::from(f));
        } else if self.st().shared_subs.remove(f).is_some() {
            self.space.groups.leave(f, self.token);
        } else {
            return false;
        }
        self.quota.unsubscribe();
        true
    }

    /// With no (non-shared) subscription left, nothing is read any more.
    fn stop_following_if_unsubscribed(&mut self) {
        if self.st().subs.is_empty() {
            for (_, handles) in self.st().followed.drain() {
                handles.iter().for_each(AbortHandle::abort);
            }
            self.follow_all = false;
            self.st().progress.clear();
        }
    }

    /// Drops the subscriptions the ACL no longer allows, once per change
    /// of the rules: a revoked grant stops deliveries at once, not at the
    /// client's next SUBSCRIBE. Called before every delivery (one atomic
    /// load when nothing changed). MQTT has no packet for "subscription
    /// withdrawn"; the denial is counted and audited like any other.
    fn recheck_subscriptions(&mut self) {
        let generation = self.shared.broker.acl_generation();
        let Some(st) = self.subscribed.as_deref_mut() else {
            return;
        };
        if st.acl_checked == generation {
            return;
        }
        st.acl_checked = generation;
        let filters: Vec<String> = st
            .subs
            .keys()
            .chain(st.shared_subs.keys())
            .cloned()
            .collect();
        let revoked: Vec<String> = filters
            .into_iter()
            .filter(|f| !self.may_subscribe(f))
            .collect();
        if revoked.is_empty() {
            return;
        }
        for f in &revoked {
            tracing::info!(client_id = %self.client_id, filter = %f, "subscription revoked by an ACL change");
            self.remove_subscription(f);
        }
        self.stop_following_if_unsubscribed();
        self.save(None);
    }

    /// Starts reading every stream `filter` can match: partitions with a
    /// cursor from it, others from `from`.
    async fn follow(&mut self, filter: &str, from: Position) {
        let broker = self.shared.broker.clone();
        let (tenant, ns) = (&self.space.tenant, &self.space.namespace);
        let streams: Vec<StreamName> = match self.map.streams_for_filter(filter) {
            Selection::All => {
                self.follow_all = true;
                // Wildcards read every stream but the broker's own ones
                // ($SYS is only read when named).
                broker
                    .list_streams(tenant, ns)
                    .map(|v| {
                        v.into_iter()
                            .map(|s| s.name)
                            .filter(|s| !RESERVED_STREAMS.contains(&s.as_str()))
                            .collect()
                    })
                    .unwrap_or_default()
            }
            Selection::Streams(set) => set.into_iter().collect(),
        };
        for stream in streams {
            self.follow_stream(stream, from).await;
        }
    }

    async fn follow_stream(&mut self, stream: StreamName, from: Position) {
        if self.st().followed.contains_key(&stream) {
            return;
        }
        let sref = StreamRef {
            tenant: self.space.tenant.clone(),
            namespace: self.space.namespace.clone(),
            stream: stream.clone(),
        };
        let broker = self.shared.broker.clone();
        // A stream that does not exist yet is picked up when created.
        let Ok(n) = broker.partition_count(&sref) else {
            return;
        };
        let mut handles = Vec::with_capacity(n as usize);
        for p in 0..n {
            // Resolved before SUBACK is sent: everything published after the
            // client learns of its subscription is delivered.
            let at = match self.st().progress.get(&(stream.clone(), p)) {
                Some(pr) => Position::Offset(pr.cursor()),
                None => from,
            };
            let start = match broker.resolve(&sref, p, at).await {
                Ok(o) => o,
                Err(_) => continue,
            };
            // The cursor exists from the subscription on (a persistent
            // session resumes here even if nothing arrives before).
            self.st()
                .progress
                .entry((stream.clone(), p))
                .or_insert(Progress {
                    next: start,
                    ..Default::default()
                });
            let tx = self.inbound_sender();
            let broker = broker.clone();
            let sref = sref.clone();
            let task = tokio::spawn(async move {
                broker
                    .follow(&sref, p, start, "mqtt", |item| {
                        let tx = tx.clone();
                        let stream = sref.stream.clone();
                        async move {
                            match item {
                                Followed::Record(rec) => {
                                    tx.send(Inbound::Read(stream, p, rec)).await.is_ok()
                                }
                                Followed::Skipped { .. } => true,
                            }
                        }
                    })
                    .await;
            });
            handles.push(task.abort_handle());
        }
        self.st().followed.insert(stream, handles);
    }

    async fn on_stream_created(&mut self, s: StreamRef) {
        if s.tenant != self.space.tenant
            || s.namespace != self.space.namespace
            || self.subscribed.as_ref().is_none_or(|st| st.subs.is_empty())
        {
            return;
        }
        let reserved = RESERVED_STREAMS.contains(&s.stream.as_str());
        let Some(sub) = self.subscribed.as_deref() else {
            return;
        };
        let wanted = (self.follow_all && !reserved)
            || sub
                .subs
                .keys()
                .any(|f| match self.map.streams_for_filter(f) {
                    Selection::All => !reserved,
                    Selection::Streams(set) => set.contains(&s.stream),
                });
        if wanted {
            // Everything in a new stream came after the subscription.
            self.follow_stream(s.stream, Position::Earliest).await;
        }
    }

    /// Sends a record to the client if a subscription matches it;
    /// `retained` marks a retained message sent on subscribe.
    /// Returns true when the client now owes an acknowledgement.
    fn deliver(
        &mut self,
        stream: &StreamName,
        rec: &Record,
        retained: bool,
        dup: bool,
        source: Option<Source>,
    ) -> bool {
        self.recheck_subscriptions();
        let msg = from_record(stream.as_str(), rec, now_ms());
        if !msg.live {
            return false;
        }
        let mut matched = Vec::new();
        self.st().tree.matches(&msg.topic, &mut matched);
        let own = msg.client_id.as_deref() == Some(&*self.client_id);
        let mut best: Option<SubOpts> = None;
        let mut sub_ids = Vec::new();
        let mut rap = false;
        for f in matched {
            let Some(o) = self.st().subs.get(&*f).copied() else {
                continue;
            };
            if o.no_local && own {
                continue;
            }
            if let Some(id) = o.id {
                sub_ids.push(id);
            }
            rap |= o.retain_as_published;
            best = Some(match best {
                Some(b) if b.qos >= o.qos => b,
                _ => o,
            });
        }
        let Some(best) = best else { return false };
        let qos = msg.qos.min(best.qos);
        // MQTT-3.3.1-8/9: retained on subscribe keeps the flag; live
        // messages keep it only for Retain As Published.
        let retain = retained || (rap && msg.retain);
        self.emit(msg, qos, sub_ids, retain, dup, source, None)
    }

    /// A record a shared subscription's group handed this member.
    fn deliver_shared(&mut self, (filter, stream, p, rec): SharedDelivery) {
        self.recheck_subscriptions();
        let Some(o) = self.st().shared_subs.get(&filter).copied() else {
            // Unsubscribed meanwhile: another member gets it.
            self.space.groups.give_back(&filter, stream, p, rec);
            return;
        };
        let msg = from_record(stream.as_str(), &rec, now_ms());
        let offset = rec.offset;
        if !msg.live {
            // Expired: nobody gets it.
            self.space.groups.settled(&filter, &stream, p, offset);
            return;
        }
        let qos = msg.qos.min(o.qos);
        let retain = o.retain_as_published && msg.retain;
        let (f, s) = (filter.clone(), stream.clone());
        let awaiting = self.emit(
            msg,
            qos,
            o.id.into_iter().collect(),
            retain,
            false,
            None,
            Some((filter, stream, p, rec)),
        );
        if !awaiting {
            self.space.groups.settled(&f, &s, p, offset);
        }
    }

    /// Whether a stored persistent session other than this one holds
    /// `shared_filter`: the group then exists while it has no connected
    /// member, and a new reader resumes at its saved cursors.
    fn group_has_members_away(&self, shared_filter: &str) -> bool {
        let Ok(sessions) = self.shared.broker.meta().list_sessions(&self.space.tenant) else {
            return false;
        };
        sessions.iter().any(|(id, bytes)| {
            **id != *self.client_id
                && serde_json::from_slice::<StoredSession>(bytes).is_ok_and(|s| {
                    s.subscriptions
                        .iter()
                        .any(|sub| sub.filter == shared_filter)
                })
        })
    }

    /// Sends `msg` as a PUBLISH; true when the client now owes an
    /// acknowledgement.
    #[allow(clippy::too_many_arguments)]
    fn emit(
        &mut self,
        msg: crate::record::Message,
        qos: QoS,
        sub_ids: Vec<u32>,
        retain: bool,
        dup: bool,
        source: Option<Source>,
        shared: Option<SharedDelivery>,
    ) -> bool {
        let mut props = if self.v5() {
            msg.properties
        } else {
            Properties::default()
        };
        props.subscription_identifiers = if self.v5() { sub_ids } else { Vec::new() };
        let (alias, with_topic) = if self.v5() {
            self.fl().out_aliases.assign(&msg.topic)
        } else {
            (None, true)
        };
        props.topic_alias = alias;
        let packet_id = if qos == QoS::AtMostOnce {
            None
        } else {
            match self.fl().ids.allocate() {
                Some(id) => Some(id),
                None => return false,
            }
        };
        let publish = Packet::Publish(Publish {
            // A redelivery after the session resumed (MQTT-3.3.1-1).
            dup: dup && qos != QoS::AtMostOnce,
            qos,
            retain,
            topic: if with_topic { msg.topic } else { String::new() },
            packet_id,
            payload: msg.payload,
            properties: props,
        });
        // MQTT-3.1.2-25: never send more than the client's Maximum Packet
        // Size; such a message is dropped for this client.
        if codec::encoded_len(&publish, self.protocol) > self.client_max_packet {
            if let Some(id) = packet_id {
                self.fl().ids.release(id);
            }
            return false;
        }
        if let Some(id) = packet_id {
            self.out_window.acquire();
            let waiting = if qos == QoS::AtLeastOnce {
                AwaitingPub::Ack
            } else {
                AwaitingPub::Rec
            };
            self.fl().outgoing.insert(
                id,
                Pending {
                    waiting,
                    source,
                    shared,
                },
            );
        }
        self.send(&publish);
        self.shared
            .stats
            .sent
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        packet_id.is_some()
    }

    /// Publishes the will unless the client disconnected cleanly, stops the
    /// readers and frees the client id.
    async fn finish(&mut self, end: End) {
        let mut filters: Vec<String> = Vec::new();
        if let Some(st) = self.subscribed.as_mut() {
            for (_, handles) in st.followed.drain() {
                handles.iter().for_each(AbortHandle::abort);
            }
            filters = st.shared_subs.keys().cloned().collect();
        }
        // Shared deliveries this member did not finish go to another member
        // (MQTT 5.0 §4.8.2), then it leaves its groups.
        for f in &filters {
            self.space.groups.leave(f, self.token);
        }
        let give_back: Vec<u16> = self
            .fl()
            .outgoing
            .iter()
            .filter(|(_, p)| p.waiting != AwaitingPub::Comp && p.shared.is_some())
            .map(|(id, _)| *id)
            .collect();
        let unfinished: Vec<SharedDelivery> = give_back
            .into_iter()
            .filter_map(|id| self.fl().outgoing.remove(&id))
            .filter_map(|p| p.shared)
            .collect();
        let mut queued = Vec::new();
        if let Some((_, rx)) = self.inbound.as_mut() {
            rx.close();
            while let Ok(d) = rx.try_recv() {
                queued.extend(d.into_shared());
            }
        }
        for (f, stream, p, rec) in unfinished.into_iter().chain(queued) {
            self.space.groups.give_back(&f, stream, p, rec);
        }
        let now = now_ms();
        let publish_will = match end {
            End::Clean { with_will } => with_will,
            End::Abnormal => true,
        };
        let will = self.will.take().filter(|_| publish_will);
        // The will goes out after its delay, or when the session ends if
        // sooner (MQTT-3.1.3-9), unless the client is back by then.
        let delay_s = will.as_ref().map_or(0, |w| {
            w.properties
                .will_delay_interval
                .unwrap_or(0)
                .min(self.persistence.expiry_s)
        });
        let delayed = (delay_s > 0)
            .then(|| will.as_ref().map(|w| (now + delay_s as i64 * 1000, w)))
            .flatten();
        if self.persistent() {
            // The queued messages are the log after the saved cursors; a
            // delayed will is kept with them, so a restart does not lose it.
            let stored = delayed.map(|(due, w)| crate::wills::to_stored(w, due));
            self.save_with(Some(now), stored);
        }
        self.space.registry.release(&self.client_id, self.token);
        self.signal.set_done();
        let Some(will) = will else {
            return;
        };
        if delay_s > 0 {
            crate::wills::schedule(
                self.space.clone(),
                self.client_id.to_string(),
                *will,
                now + delay_s as i64 * 1000,
            );
        } else {
            crate::wills::publish(&self.space, &self.map, &self.client_id, *will).await;
        }
    }
}

fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(now_ms() as u64);
    h.finish()
}
