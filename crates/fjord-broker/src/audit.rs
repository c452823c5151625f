//! The audit trail: every event is logged (target `fjord::audit`) and
//! queued for the audit stream `system/default/audit` (one JSON record per
//! event, keyed by tenant), which node administrators read over HTTP or
//! Kafka like any stream. The queue is bounded: under a flood, events
//! beyond it are dropped from the stream (still logged) and counted.

use std::sync::Arc;
use std::time::Duration;

use fjord_auth::audit::{AuditEvent, AuditKind};
use fjord_core::{RecordInput, StreamRef};
use tokio::sync::mpsc;

use crate::access::SYSTEM_TENANT;
use crate::Broker;

/// Events waiting to be appended at most.
pub(crate) const QUEUE: usize = 10_000;

/// The audit stream.
pub fn audit_stream() -> StreamRef {
    StreamRef::new(SYSTEM_TENANT, fjord_core::names::DEFAULT_NAMESPACE, "audit")
        .expect("valid names")
}

pub(crate) struct AuditQueue {
    tx: mpsc::Sender<AuditEvent>,
    rx: parking_lot::Mutex<Option<mpsc::Receiver<AuditEvent>>>,
    /// Last time a repeated event (quota hits, denials) was recorded, per
    /// key, so a client hammering a limit does not flood the trail.
    recent: parking_lot::Mutex<std::collections::HashMap<String, std::time::Instant>>,
}

impl Default for AuditQueue {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        Self {
            tx,
            rx: parking_lot::Mutex::new(Some(rx)),
            recent: Default::default(),
        }
    }
}

impl Broker {
    /// Records an audit event.
    pub fn audit(&self, e: AuditEvent) {
        tracing::info!(
            target: "fjord::audit",
            kind = e.kind.as_str(),
            protocol = %e.protocol,
            principal = e.principal.as_deref().unwrap_or(""),
            tenant = e.tenant.as_deref().unwrap_or(""),
            peer = e.peer.as_deref().unwrap_or(""),
            action = %e.action,
            resource = %e.resource,
            detail = %e.detail,
            "audit"
        );
        self.metrics
            .audit_events
            .with_label_values(&[e.kind.as_str()])
            .inc();
        if self.audit.tx.try_send(e).is_err() {
            self.metrics.audit_dropped.inc();
        }
    }

    /// Records an event that may repeat fast (a quota hit, a denial) at most
    /// once a second per `key`.
    pub fn audit_sampled(&self, key: String, e: impl FnOnce() -> AuditEvent) {
        let now = std::time::Instant::now();
        {
            let mut recent = self.audit.recent.lock();
            if recent
                .get(&key)
                .is_some_and(|t| now.duration_since(*t) < Duration::from_secs(1))
            {
                return;
            }
            if recent.len() > 10_000 {
                recent.retain(|_, t| now.duration_since(*t) < Duration::from_secs(1));
            }
            recent.insert(key, now);
        }
        self.audit(e());
    }

    /// Events queued and not yet taken by the writer.
    pub fn audit_pending(&self) -> usize {
        self.audit.tx.max_capacity() - self.audit.tx.capacity()
    }

    /// Appends queued events to the audit stream until the broker goes.
    pub fn spawn_audit_writer(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let Some(mut rx) = self.audit.rx.lock().take() else {
            return tokio::spawn(async {});
        };
        let broker = Arc::downgrade(self);
        tokio::spawn(async move {
            let stream = audit_stream();
            let mut batch = Vec::new();
            while rx.recv_many(&mut batch, 512).await > 0 {
                let Some(b) = broker.upgrade() else { return };
                let records: Vec<RecordInput> = batch
                    .drain(..)
                    .filter_map(|e: AuditEvent| {
                        Some(RecordInput {
                            key: e.tenant.clone().map(bytes::Bytes::from),
                            value: Some(serde_json::to_vec(&e).ok()?.into()),
                            headers: vec![fjord_core::Header {
                                key: "fjord.audit.kind".into(),
                                value: Some(bytes::Bytes::from_static(e.kind.as_str().as_bytes())),
                            }],
                            event_ts: Some(e.ts_ms),
                        })
                    })
                    .collect();
                let r = match b.ensure_stream(&stream) {
                    Ok(()) => b.produce(&stream, records, None).await.map(|_| ()),
                    Err(e) => Err(e),
                };
                if let Err(e) = r {
                    tracing::warn!(error = %e, "audit events not stored");
                }
            }
        })
    }
}

/// Shorthand for the common login outcome.
pub fn login_event(
    ok: bool,
    protocol: &str,
    peer: std::net::SocketAddr,
    method: &str,
    who: Option<&fjord_auth::Principal>,
    detail: &str,
) -> AuditEvent {
    let kind = if ok {
        AuditKind::AuthSuccess
    } else {
        AuditKind::AuthFailure
    };
    let mut e = AuditEvent::new(kind, protocol)
        .peer(peer)
        .action(method)
        .detail(detail);
    if let Some(p) = who {
        e = e.principal(p);
    }
    e
}
