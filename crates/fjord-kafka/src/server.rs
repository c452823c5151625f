//! The listener: one task per connection, requests answered in the order
//! they came (as Kafka brokers do), a malformed frame closing only its
//! connection.

use std::sync::Arc;

use bytes::BytesMut;
use fjord_auth::{Action, Peer, Principal, Resource, TlsListen};
use fjord_broker::quotas::QuotaHandle;
use fjord_broker::Broker;
use fjord_core::TenantName;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{
    ApiKey, HeartbeatResponse, JoinGroupResponse, LeaveGroupResponse, RequestKind, ResponseKind,
    SaslAuthenticateResponse, SyncGroupResponse,
};
use kafka_protocol::protocol::StrBytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::codec::{self, DecodeError};
use crate::{config_api, group_api};
use crate::{handlers, sasl};

#[derive(Debug, Clone)]
pub struct KafkaConfig {
    pub node_id: i32,
    pub cluster_id: String,
    /// Largest request accepted.
    pub max_request_bytes: usize,
    /// Whether clients must log in with SASL before anything else.
    pub sasl: crate::sasl::SaslMode,
    /// A connection that must log in has this long to do so (slowloris).
    pub auth_timeout: std::time::Duration,
}

pub struct Shared {
    pub broker: Arc<Broker>,
    pub config: KafkaConfig,
    pub groups: crate::groups::Coordinator,
    pub producer_ids: crate::producers::ProducerIds,
    pub producers: crate::producers::ProducerStates,
}

/// One socket the Kafka server accepts on, and the address its clients are
/// told to connect to (Metadata), so a client that came in over TLS stays
/// on the TLS listener.
pub struct Listener {
    pub tcp: TcpListener,
    pub tls: Option<TlsListen>,
    pub advertised: Advertised,
}

#[derive(Debug, Clone)]
pub struct Advertised {
    pub host: String,
    pub port: u16,
}

/// One connection's view: the shared state, the listener it came through
/// and the tenant it acts in (`kafka.tenant`, or the one its login proved).
pub struct Session<'a> {
    pub shared: &'a Shared,
    pub advertised: &'a Advertised,
    pub tenant: TenantName,
    /// Who the connection proved to be.
    pub principal: Arc<Principal>,
    /// Its place in its quotas.
    pub quota: Option<&'a QuotaHandle>,
    /// Set by a request over the publish rate: how long to mute the
    /// connection (ms), also sent as throttle_time_ms.
    pub throttle_ms: std::sync::atomic::AtomicU64,
}

impl std::ops::Deref for Session<'_> {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        self.shared
    }
}

/// Separates tenant and group id in the coordinator's keys (tenant names
/// cannot hold it), so equal group ids of two tenants never meet.
const GROUP_KEY_SEP: char = '\u{1f}';

impl Session<'_> {
    /// Whether the principal may `action` on stream `s` (its tenant's).
    pub fn may(&self, action: Action, s: &fjord_core::StreamRef) -> bool {
        self.broker.authorize_for(
            "kafka",
            &self.principal,
            &s.tenant,
            action,
            Resource::Stream {
                namespace: s.namespace.as_str(),
                stream: s.stream.as_str(),
                topic: None,
            },
        )
    }

    /// Whether the principal may `action` on consumer group `group`.
    pub fn may_group(&self, action: Action, group: &str) -> bool {
        self.broker.authorize_for(
            "kafka",
            &self.principal,
            &self.tenant,
            action,
            Resource::Group(group),
        )
    }

    /// The stream a topic names, if the principal may `action` on it.
    pub fn topic(
        &self,
        name: &str,
        action: Action,
    ) -> Result<fjord_core::StreamRef, ResponseError> {
        let s = crate::names::stream_for_topic(&self.tenant, name)
            .ok_or(ResponseError::InvalidTopicException)?;
        if self.may(action, &s) {
            Ok(s)
        } else {
            Err(ResponseError::TopicAuthorizationFailed)
        }
    }

    /// The coordinator's key of this tenant's group `id`.
    pub fn group_key(&self, id: &str) -> String {
        format!("{}{GROUP_KEY_SEP}{id}", self.tenant)
    }

    /// This tenant's live groups, with their own ids.
    pub fn groups_of_tenant(&self) -> Vec<crate::groups::GroupView> {
        let prefix = self.group_key("");
        self.groups
            .list()
            .into_iter()
            .filter_map(|mut g| {
                g.group_id = g.group_id.strip_prefix(&prefix)?.to_string();
                Some(g)
            })
            .collect()
    }
}

/// Accepts Kafka connections on `listener` until `shutdown` turns true.
pub fn start(
    listeners: Vec<Listener>,
    broker: Arc<Broker>,
    config: KafkaConfig,
    shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let shared = Arc::new(Shared {
        broker,
        config,
        groups: crate::groups::Coordinator::default(),
        producer_ids: Default::default(),
        producers: Default::default(),
    });
    {
        // Members whose session timed out leave their groups.
        let shared = Arc::downgrade(&shared);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
            loop {
                tick.tick().await;
                match shared.upgrade() {
                    Some(s) => s.groups.expire(),
                    None => return,
                }
            }
        });
    }
    let tasks: Vec<_> = listeners
        .into_iter()
        .map(|l| tokio::spawn(accept_loop(l, shared.clone(), shutdown.clone())))
        .collect();
    tokio::spawn(async move {
        for t in tasks {
            let _ = t.await;
        }
    })
}

async fn accept_loop(listener: Listener, shared: Arc<Shared>, shutdown: watch::Receiver<bool>) {
    let label = if listener.tls.is_some() {
        "kafka-tls"
    } else {
        "kafka"
    };
    let Listener {
        tcp,
        tls,
        advertised,
    } = listener;
    let (tls, advertised) = (Arc::new(tls), Arc::new(advertised));
    let stop = shutdown.clone();
    let guard = shared.broker.guard().clone();
    let broker = shared.broker.clone();
    let refused = move |why, addr| broker.connection_refused(label, why, addr);
    fjord_auth::listener::accept_loop(
        tcp,
        label,
        stop,
        guard,
        refused,
        move |socket, addr, permit| {
            let (shared, shutdown) = (shared.clone(), shutdown.clone());
            let (tls, advertised) = (tls.clone(), advertised.clone());
            async move {
                // The connection's place in the node's limits, until it ends.
                let _permit = permit;
                let metrics = shared.broker.metrics();
                metrics.connections_total.with_label_values(&[label]).inc();
                let gauge = metrics.connections.with_label_values(&[label]);
                gauge.inc();
                let opened = fjord_auth::listener::open(
                    socket,
                    addr,
                    tls.as_ref().as_ref(),
                    &[],
                    HANDSHAKE_TIMEOUT,
                    None,
                )
                .await;
                let result = match opened {
                    Ok((stream, peer)) => serve(stream, peer, &advertised, &shared, shutdown).await,
                    Err(e) => {
                        count_error(&shared, "tls_handshake");
                        Err(ConnError::Tls(e))
                    }
                };
                if let Err(e) = result {
                    tracing::debug!(peer = %addr, error = %e, "kafka connection ended");
                }
                gauge.dec();
            }
        },
    )
    .await;
}

/// A TLS client must finish its handshake within this time (slowloris).
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("encoding a response: {0}")]
    Encode(String),
    #[error("{0:?} version {1} is not served")]
    Unsupported(ApiKey, i16),
    #[error(transparent)]
    Tls(#[from] fjord_auth::TlsError),
    #[error("SASL authentication failed: {0}")]
    AuthFailed(String),
    #[error("{0:?} before SASL authentication, which this listener requires")]
    AuthRequired(ApiKey),
}

fn count_error(shared: &Shared, reason: &str) {
    shared
        .broker
        .metrics()
        .protocol_errors
        .with_label_values(&["kafka", reason])
        .inc();
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut socket: S,
    peer: Peer,
    advertised: &Advertised,
    shared: &Shared,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), ConnError> {
    // Who the connection is before any SASL: its client certificate, else
    // anonymous where `public` admits that; `None` must log in.
    let mut principal: Option<Arc<Principal>> = match &peer.cert_identity {
        Some(id) => match shared.broker.authenticate_certificate(id) {
            Ok(p) => Some(Arc::new(p)),
            Err(e) => {
                tracing::warn!(peer = %peer.addr, error = %e, "kafka client certificate refused");
                count_error(shared, "auth_failed");
                shared.broker.audit(fjord_broker::audit::login_event(
                    false,
                    "kafka",
                    peer.addr,
                    "certificate",
                    None,
                    &e.to_string(),
                ));
                return Err(ConnError::AuthFailed(e.to_string()));
            }
        },
        None => shared.broker.anonymous_public().ok().map(Arc::new),
    };
    let mut quota = match &principal {
        Some(p) => Some(connect_quota(shared, p)?),
        None => None,
    };
    // Over the publish rate: the answer carries throttle_time_ms and the
    // connection reads nothing more until it has passed (Kafka's muting).
    let mut mute = std::time::Duration::ZERO;
    let mut sasl_state = sasl::State::Start;
    let auth_deadline = tokio::time::Instant::now() + shared.config.auth_timeout;
    let mut inbuf = BytesMut::with_capacity(4096);
    let mut out = BytesMut::new();
    loop {
        while let Some(frame) = match codec::next_frame(&mut inbuf, shared.config.max_request_bytes)
        {
            Ok(f) => f,
            Err(e) => {
                count_error(shared, "frame");
                return Err(e.into());
            }
        } {
            if sasl_state.raw() {
                // SaslHandshake v0: frames are raw tokens, answered with raw
                // (length-prefixed) server messages.
                let Some(conv) = sasl_state.conversation() else {
                    unreachable!("raw state holds a conversation")
                };
                match conv.step(&shared.broker, &frame).await {
                    sasl::Step::Continue(challenge) => {
                        put_raw(&mut out, &challenge);
                    }
                    sasl::Step::Done(p, last) => {
                        logged_in(shared, &peer, &p);
                        // The anonymous place goes before the login's is taken.
                        drop(quota.take());
                        quota = Some(connect_quota(shared, &p)?);
                        principal = Some(Arc::new(p));
                        sasl_state = sasl::State::Done;
                        put_raw(&mut out, &last);
                    }
                    sasl::Step::Failed(e) => {
                        login_refused(shared, &peer, &e);
                        return Err(ConnError::AuthFailed(e));
                    }
                }
                continue;
            }
            match codec::decode_request(frame, handlers::supported) {
                Ok(req) if !req.supported => {
                    let version = req.header.request_api_version;
                    let correlation = req.header.correlation_id;
                    count_error(shared, "unsupported_version");
                    // ApiVersions: KIP-511's version-0 answer; the others
                    // this server serves: every partition refused with
                    // UNSUPPORTED_VERSION in the version asked for.
                    let (api, version, body) = match req.body {
                        RequestKind::ApiVersions(_) => (
                            ApiKey::ApiVersions,
                            0,
                            ResponseKind::ApiVersions(handlers::api_versions(Some(
                                ResponseError::UnsupportedVersion,
                            ))),
                        ),
                        other => match handlers::unsupported(other) {
                            Some(body) => (req.api, version, body),
                            None => {
                                socket.write_all(&out).await?;
                                return Err(ConnError::Unsupported(req.api, version));
                            }
                        },
                    };
                    codec::encode_response(api, version, correlation, &body, &mut out)
                        .map_err(|e| ConnError::Encode(format!("{e:#}")))?;
                }
                Ok(req) => {
                    let version = req.header.request_api_version;
                    let correlation = req.header.correlation_id;
                    let answer = |body: ResponseKind, out: &mut BytesMut| {
                        codec::encode_response(req.api, version, correlation, &body, out)
                            .map_err(|e| ConnError::Encode(format!("{e:#}")))
                    };
                    match &req.body {
                        RequestKind::SaslHandshake(r) => {
                            let resp = sasl::handshake(&mut sasl_state, r, version);
                            answer(ResponseKind::SaslHandshake(resp), &mut out)?;
                            continue;
                        }
                        RequestKind::SaslAuthenticate(r) => {
                            let mut resp = SaslAuthenticateResponse::default();
                            let step = match &mut sasl_state {
                                sasl::State::Authenticate(conv) => {
                                    conv.step(&shared.broker, &r.auth_bytes).await
                                }
                                _ => sasl::Step::Failed(
                                    "SaslAuthenticate without a SaslHandshake (v1) first".into(),
                                ),
                            };
                            match step {
                                sasl::Step::Continue(challenge) => {
                                    resp.auth_bytes = challenge.into();
                                    answer(ResponseKind::SaslAuthenticate(resp), &mut out)?;
                                    continue;
                                }
                                sasl::Step::Done(p, last) => {
                                    logged_in(shared, &peer, &p);
                                    // The anonymous place goes before the login's is taken.
                                    drop(quota.take());
                                    quota = Some(connect_quota(shared, &p)?);
                                    principal = Some(Arc::new(p));
                                    sasl_state = sasl::State::Done;
                                    resp.auth_bytes = last.into();
                                    answer(ResponseKind::SaslAuthenticate(resp), &mut out)?;
                                    continue;
                                }
                                sasl::Step::Failed(e) => {
                                    // Answered, then closed, as Kafka does.
                                    login_refused(shared, &peer, &e);
                                    resp.error_code = if sasl_state.conversation().is_some() {
                                        ResponseError::SaslAuthenticationFailed.code()
                                    } else {
                                        ResponseError::IllegalSaslState.code()
                                    };
                                    resp.error_message = Some(StrBytes::from_string(e.clone()));
                                    answer(ResponseKind::SaslAuthenticate(resp), &mut out)?;
                                    socket.write_all(&out).await?;
                                    return Err(ConnError::AuthFailed(e));
                                }
                            }
                        }
                        RequestKind::ApiVersions(_) => {}
                        _ if principal.is_none()
                            || (shared.config.sasl == sasl::SaslMode::Required
                                && !matches!(sasl_state, sasl::State::Done)) =>
                        {
                            count_error(shared, "sasl_required");
                            socket.write_all(&out).await?;
                            return Err(ConnError::AuthRequired(req.api));
                        }
                        _ => {}
                    }
                    let client_id = req
                        .header
                        .client_id
                        .as_ref()
                        .map(|c| c.to_string())
                        .unwrap_or_default();
                    let Some(who) = principal.clone() else {
                        // Before a login only ApiVersions gets this far.
                        let body = ResponseKind::ApiVersions(handlers::api_versions(None));
                        answer(body, &mut out)?;
                        continue;
                    };
                    let session = Session {
                        shared,
                        advertised,
                        tenant: who.tenant.clone(),
                        principal: who,
                        quota: quota.as_ref(),
                        throttle_ms: Default::default(),
                    };
                    let admin_api = matches!(
                        req.api,
                        ApiKey::CreateTopics
                            | ApiKey::DeleteTopics
                            | ApiKey::CreatePartitions
                            | ApiKey::AlterConfigs
                            | ApiKey::IncrementalAlterConfigs
                            | ApiKey::DeleteGroups
                            | ApiKey::OffsetDelete
                    );
                    if admin_api {
                        shared.broker.audit(
                            fjord_auth::audit::AuditEvent::new(
                                fjord_auth::audit::AuditKind::AdminChange,
                                "kafka",
                            )
                            .principal(&session.principal)
                            .peer(peer.addr)
                            .action(format!("{:?}", req.api)),
                        );
                    }
                    if let Some(body) = handle(&session, req.body, version, client_id).await {
                        codec::encode_response(req.api, version, correlation, &body, &mut out)
                            .map_err(|e| ConnError::Encode(format!("{e:#}")))?;
                    }
                    let throttle = session
                        .throttle_ms
                        .load(std::sync::atomic::Ordering::Relaxed);
                    mute = mute.max(std::time::Duration::from_millis(throttle));
                }
                Err(DecodeError::UnsupportedVersion {
                    api: ApiKey::ApiVersions,
                    correlation_id,
                    ..
                }) => {
                    // KIP-511: answer in version 0 with UNSUPPORTED_VERSION
                    // and the versions this server has, so the client can
                    // pick one.
                    let body = ResponseKind::ApiVersions(handlers::api_versions(Some(
                        ResponseError::UnsupportedVersion,
                    )));
                    codec::encode_response(ApiKey::ApiVersions, 0, correlation_id, &body, &mut out)
                        .map_err(|e| ConnError::Encode(format!("{e:#}")))?;
                }
                Err(e) => {
                    count_error(
                        shared,
                        match &e {
                            DecodeError::UnsupportedVersion { .. } => "unsupported_version",
                            DecodeError::UnknownApi(_) => "unknown_api",
                            _ => "malformed",
                        },
                    );
                    socket.write_all(&out).await?;
                    return Err(e.into());
                }
            }
        }
        if !out.is_empty() {
            socket.write_all(&out).await?;
            out.clear();
        }
        if !mute.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(mute) => {}
                _ = shutdown.wait_for(|s| *s) => return Ok(()),
            }
            mute = std::time::Duration::ZERO;
        }
        if inbuf.capacity() - inbuf.len() < 4096 {
            inbuf.reserve(64 * 1024);
        }
        let must_log_in = principal.is_none()
            || (shared.config.sasl == sasl::SaslMode::Required
                && !matches!(sasl_state, sasl::State::Done));
        let n = tokio::select! {
            n = socket.read_buf(&mut inbuf) => n?,
            _ = shutdown.wait_for(|s| *s) => return Ok(()),
            _ = tokio::time::sleep_until(auth_deadline), if must_log_in => {
                count_error(shared, "auth_timeout");
                return Err(ConnError::AuthFailed("no login within the authentication timeout".into()));
            }
        };
        if n == 0 {
            return Ok(());
        }
    }
}

/// The connection's place in `p`'s connection quotas.
fn connect_quota(shared: &Shared, p: &Principal) -> Result<QuotaHandle, ConnError> {
    shared.broker.quota_connect(p, "kafka").map_err(|q| {
        tracing::info!(principal = %p.name(), "kafka connection over quota");
        count_error(shared, "quota");
        ConnError::AuthFailed(format!("{} quota exceeded", q.as_str()))
    })
}

/// A raw SASL server message (handshake v0): length-prefixed bytes.
fn put_raw(out: &mut BytesMut, msg: &[u8]) {
    out.extend_from_slice(&(msg.len() as i32).to_be_bytes());
    out.extend_from_slice(msg);
}

fn logged_in(shared: &Shared, peer: &Peer, p: &Principal) {
    shared.broker.guard().login_succeeded(peer.addr.ip());
    shared.broker.audit(fjord_broker::audit::login_event(
        true,
        "kafka",
        peer.addr,
        p.method.as_str(),
        Some(p),
        "",
    ));
    tracing::info!(peer = %peer.addr, principal = %p.name(), method = p.method.as_str(), "kafka SASL login");
}

fn login_refused(shared: &Shared, peer: &Peer, why: &str) {
    count_error(shared, "sasl_failed");
    shared.broker.audit(fjord_broker::audit::login_event(
        false, "kafka", peer.addr, "sasl", None, why,
    ));
    shared.broker.login_failed(peer.addr.ip(), "kafka");
    tracing::warn!(peer = %peer.addr, error = %why, "kafka SASL login refused");
}

/// Answers one request; `None` when the protocol wants no response
/// (Produce with acks=0).
/// GROUP_AUTHORIZATION_FAILED.
const GROUP_DENIED: i16 = 30;

async fn handle(
    shared: &Session<'_>,
    body: RequestKind,
    version: i16,
    client_id: String,
) -> Option<ResponseKind> {
    Some(match body {
        RequestKind::ApiVersions(_) => ResponseKind::ApiVersions(handlers::api_versions(None)),
        RequestKind::Metadata(r) => ResponseKind::Metadata(handlers::metadata(shared, r, version)),
        RequestKind::Produce(r) => {
            let acks = r.acks;
            let resp = handlers::produce(shared, r).await;
            if acks == 0 {
                return None;
            }
            ResponseKind::Produce(resp)
        }
        RequestKind::Fetch(r) => ResponseKind::Fetch(handlers::fetch(shared, r).await),
        RequestKind::ListOffsets(r) => {
            ResponseKind::ListOffsets(handlers::list_offsets(shared, r).await)
        }
        RequestKind::FindCoordinator(r) => {
            ResponseKind::FindCoordinator(handlers::find_coordinator(shared, r, version))
        }
        // Group membership needs `subscribe` on the group.
        RequestKind::JoinGroup(r) if !shared.may_group(Action::Subscribe, &r.group_id) => {
            let mut resp = JoinGroupResponse::default();
            resp.error_code = GROUP_DENIED;
            resp.generation_id = -1;
            ResponseKind::JoinGroup(resp)
        }
        RequestKind::SyncGroup(r) if !shared.may_group(Action::Subscribe, &r.group_id) => {
            let mut resp = SyncGroupResponse::default();
            resp.error_code = GROUP_DENIED;
            ResponseKind::SyncGroup(resp)
        }
        RequestKind::Heartbeat(r) if !shared.may_group(Action::Subscribe, &r.group_id) => {
            let mut resp = HeartbeatResponse::default();
            resp.error_code = GROUP_DENIED;
            ResponseKind::Heartbeat(resp)
        }
        RequestKind::LeaveGroup(r) if !shared.may_group(Action::Subscribe, &r.group_id) => {
            let mut resp = LeaveGroupResponse::default();
            resp.error_code = GROUP_DENIED;
            ResponseKind::LeaveGroup(resp)
        }
        RequestKind::JoinGroup(r) => {
            ResponseKind::JoinGroup(handlers::join_group(shared, r, version, client_id).await)
        }
        RequestKind::SyncGroup(r) => ResponseKind::SyncGroup(handlers::sync_group(shared, r).await),
        RequestKind::Heartbeat(r) => ResponseKind::Heartbeat(handlers::heartbeat(shared, r)),
        RequestKind::LeaveGroup(r) => {
            ResponseKind::LeaveGroup(handlers::leave_group(shared, r, version))
        }
        RequestKind::OffsetCommit(r) => {
            ResponseKind::OffsetCommit(handlers::offset_commit(shared, r))
        }
        RequestKind::OffsetFetch(r) => ResponseKind::OffsetFetch(handlers::offset_fetch(shared, r)),
        RequestKind::ListGroups(r) => ResponseKind::ListGroups(group_api::list_groups(shared, r)),
        RequestKind::DescribeGroups(r) => {
            ResponseKind::DescribeGroups(group_api::describe_groups(shared, r))
        }
        RequestKind::DeleteGroups(r) => {
            ResponseKind::DeleteGroups(group_api::delete_groups(shared, r))
        }
        RequestKind::OffsetDelete(r) => {
            ResponseKind::OffsetDelete(group_api::offset_delete(shared, r))
        }
        RequestKind::DescribeConfigs(r) => {
            ResponseKind::DescribeConfigs(config_api::describe_configs(shared, r))
        }
        RequestKind::AlterConfigs(r) => {
            ResponseKind::AlterConfigs(config_api::alter_configs(shared, r))
        }
        RequestKind::IncrementalAlterConfigs(r) => {
            ResponseKind::IncrementalAlterConfigs(config_api::incremental_alter_configs(shared, r))
        }
        RequestKind::CreateTopics(r) => {
            ResponseKind::CreateTopics(handlers::create_topics(shared, r))
        }
        RequestKind::DeleteTopics(r) => {
            ResponseKind::DeleteTopics(handlers::delete_topics(shared, r, version).await)
        }
        RequestKind::CreatePartitions(r) => {
            ResponseKind::CreatePartitions(handlers::create_partitions(shared, r))
        }
        RequestKind::InitProducerId(r) => {
            ResponseKind::InitProducerId(handlers::init_producer_id(shared, r))
        }
        RequestKind::DescribeCluster(_) => {
            ResponseKind::DescribeCluster(handlers::describe_cluster(shared))
        }
        // Requests of APIs not advertised never get here (decoding refuses
        // them); an empty answer would be worse than the close they get.
        _ => return None,
    })
}
