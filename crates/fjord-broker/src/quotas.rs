//! Quotas per tenant and per user: open connections, publish rate (records
//! and bytes per second), live subscriptions, and the tenant's stored
//! bytes. Each tenant and user has its own counters and buckets, so one
//! noisy tenant is slowed without touching another. Protocols turn the
//! answers into their own signals: MQTT flow control (the session waits
//! before reading on) and 0x97, Kafka throttle_time_ms and a muted
//! connection, HTTP 429 with Retry-After.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fjord_auth::quota::TokenBucket;
use fjord_auth::Principal;
use fjord_core::TenantName;
use fjord_meta::Quotas;
use parking_lot::{Mutex, RwLock};

use crate::Broker;

/// A quota that said no.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaKind {
    Connections,
    PublishRate,
    Subscriptions,
    Storage,
}

impl QuotaKind {
    pub fn as_str(self) -> &'static str {
        match self {
            QuotaKind::Connections => "connections",
            QuotaKind::PublishRate => "publish_rate",
            QuotaKind::Subscriptions => "subscriptions",
            QuotaKind::Storage => "storage",
        }
    }
}

/// One tenant's or user's live usage.
struct Usage {
    owner: Owner,
    /// Its limits as of a generation: publishing looks them up only when
    /// they changed (a hot path).
    cached: Mutex<(u64, Quotas)>,
    connections: AtomicU64,
    subscriptions: AtomicU64,
    /// Buckets with the rates they were made for (remade when a limit
    /// changes).
    msgs: Mutex<Option<TokenBucket>>,
    bytes: Mutex<Option<TokenBucket>>,
}

/// The bucket for `rate`, made (or remade, when the limit changed) on use.
fn bucket_for(b: &mut Option<TokenBucket>, rate: u64) -> &mut TokenBucket {
    if b.as_ref().is_none_or(|x| x.rate() != rate.max(1)) {
        *b = Some(TokenBucket::new(rate));
    }
    b.get_or_insert_with(|| TokenBucket::new(rate))
}

fn charge(bucket: &Mutex<Option<TokenBucket>>, limit: Option<u64>, n: u64) -> Duration {
    let mut b = bucket.lock();
    match limit {
        None => {
            *b = None;
            Duration::ZERO
        }
        Some(rate) => bucket_for(&mut b, rate).charge(n),
    }
}

fn waiting(bucket: &Mutex<Option<TokenBucket>>, limit: Option<u64>, n: u64) -> Duration {
    limit.map_or(Duration::ZERO, |rate| {
        bucket_for(&mut bucket.lock(), rate).wait_for(n)
    })
}

/// A tenant (`None`) or one of its users.
type Owner = (TenantName, Option<String>);

/// The node's quota state.
#[derive(Default)]
pub(crate) struct QuotaState {
    usage: Mutex<HashMap<Owner, Arc<Usage>>>,
    /// Limits as configured, cached; dropped when they change.
    limits: RwLock<HashMap<Owner, Quotas>>,
    /// Stored bytes per tenant, recomputed every few seconds.
    pub(crate) stored: RwLock<HashMap<TenantName, u64>>,
    /// Bumped whenever limits change, so handles can keep theirs.
    generation: AtomicU64,
}

impl QuotaState {
    fn usage(&self, tenant: &TenantName, user: Option<&str>) -> Arc<Usage> {
        let owner: Owner = (tenant.clone(), user.map(str::to_string));
        self.usage
            .lock()
            .entry(owner.clone())
            .or_insert_with(|| {
                Arc::new(Usage {
                    owner,
                    // Generation u64::MAX is never current: the first use loads.
                    cached: Mutex::new((u64::MAX, Quotas::default())),
                    connections: AtomicU64::new(0),
                    subscriptions: AtomicU64::new(0),
                    msgs: Mutex::new(None),
                    bytes: Mutex::new(None),
                })
            })
            .clone()
    }

    pub(crate) fn forget_limits(&self, tenant: &TenantName) {
        self.limits.write().retain(|(t, _), _| t != tenant);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

/// A principal's place in its quotas while it is connected (or, for
/// HTTP, for one request): dropping it gives back its connection and
/// subscriptions.
pub struct QuotaHandle {
    broker: Arc<Broker>,
    tenant_usage: Arc<Usage>,
    user_usage: Option<Arc<Usage>>,
    connected: bool,
    subscriptions: AtomicU64,
}

impl Drop for QuotaHandle {
    fn drop(&mut self) {
        let subs = self.subscriptions.load(Ordering::Acquire);
        for u in self.usages() {
            if self.connected {
                u.connections.fetch_sub(1, Ordering::AcqRel);
            }
            u.subscriptions.fetch_sub(subs, Ordering::AcqRel);
        }
        if self.connected {
            self.broker
                .metrics
                .tenant_connections
                .with_label_values(&[self.tenant_usage.owner.0.as_str()])
                .dec();
        }
    }
}

impl QuotaHandle {
    fn usages(&self) -> impl Iterator<Item = &Arc<Usage>> {
        std::iter::once(&self.tenant_usage).chain(self.user_usage.as_ref())
    }

    fn limits_of(&self, u: &Usage) -> Quotas {
        let generation = self.broker.quotas.generation.load(Ordering::Acquire);
        let mut c = u.cached.lock();
        if c.0 != generation {
            *c = (
                generation,
                self.broker.quota_limits(&u.owner.0, u.owner.1.as_deref()),
            );
        }
        c.1
    }

    fn limits(&self) -> (Quotas, Quotas) {
        (
            self.limits_of(&self.tenant_usage),
            self.user_usage
                .as_ref()
                .map(|u| self.limits_of(u))
                .unwrap_or_default(),
        )
    }

    fn tenant(&self) -> &TenantName {
        &self.tenant_usage.owner.0
    }

    fn throttled(&self, protocol: &str, kind: QuotaKind) {
        self.broker
            .metrics
            .quota_hits
            .with_label_values(&[protocol, self.tenant().as_str(), kind.as_str()])
            .inc();
        let tenant = self.tenant();
        let who = match self.user_usage.as_ref().and_then(|u| u.owner.1.as_deref()) {
            Some(u) => format!("{tenant}:{u}"),
            None => tenant.to_string(),
        };
        self.broker
            .audit_sampled(format!("quota/{who}/{}", kind.as_str()), || {
                let mut e = fjord_auth::audit::AuditEvent::new(
                    fjord_auth::audit::AuditKind::QuotaExceeded,
                    protocol,
                )
                .tenant(tenant.to_string())
                .resource(kind.as_str());
                e.principal = Some(who.clone());
                e
            });
    }

    /// Charges a publication of `msgs` records of `bytes` bytes; how long
    /// the publisher must be held back (zero within its rates).
    pub fn publish(&self, protocol: &str, msgs: u64, bytes: u64) -> Duration {
        let (t, u) = self.limits();
        let mut wait = charge(&self.tenant_usage.msgs, t.publish_msgs_per_s, msgs).max(charge(
            &self.tenant_usage.bytes,
            t.publish_bytes_per_s,
            bytes,
        ));
        if let Some(uu) = &self.user_usage {
            wait = wait
                .max(charge(&uu.msgs, u.publish_msgs_per_s, msgs))
                .max(charge(&uu.bytes, u.publish_bytes_per_s, bytes));
        }
        if !wait.is_zero() {
            self.throttled(protocol, QuotaKind::PublishRate);
        }
        wait
    }

    /// How long until a publication would be within the rates, without
    /// charging it (HTTP refuses rather than waits).
    pub fn publish_wait(&self, msgs: u64, bytes: u64) -> Duration {
        let (t, u) = self.limits();
        let mut wait = waiting(&self.tenant_usage.msgs, t.publish_msgs_per_s, msgs).max(waiting(
            &self.tenant_usage.bytes,
            t.publish_bytes_per_s,
            bytes,
        ));
        if let Some(uu) = &self.user_usage {
            wait = wait
                .max(waiting(&uu.msgs, u.publish_msgs_per_s, msgs))
                .max(waiting(&uu.bytes, u.publish_bytes_per_s, bytes));
        }
        wait
    }

    /// Takes a subscription place, if the quotas leave one.
    pub fn subscribe(&self, protocol: &str) -> bool {
        let (t, u) = self.limits();
        let taken: Vec<&Arc<Usage>> = self.usages().collect();
        let limits = [t.subscriptions, u.subscriptions];
        for (i, usage) in taken.iter().enumerate() {
            let n = usage.subscriptions.fetch_add(1, Ordering::AcqRel);
            if limits[i].is_some_and(|max| n >= max) {
                for back in &taken[..=i] {
                    back.subscriptions.fetch_sub(1, Ordering::AcqRel);
                }
                self.throttled(protocol, QuotaKind::Subscriptions);
                return false;
            }
        }
        self.subscriptions.fetch_add(1, Ordering::AcqRel);
        true
    }

    /// Gives a subscription place back.
    pub fn unsubscribe(&self) {
        let had = self
            .subscriptions
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok();
        if had {
            for u in self.usages() {
                u.subscriptions.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }
}

impl Broker {
    /// A tenant's (`user` None) or user's limits.
    pub fn quota_limits(&self, tenant: &TenantName, user: Option<&str>) -> Quotas {
        let key = (tenant.clone(), user.map(str::to_string));
        if let Some(q) = self.quotas.limits.read().get(&key) {
            return *q;
        }
        let q = match user {
            None => self
                .meta
                .get_tenant(tenant)
                .map(|t| t.settings.quotas)
                .unwrap_or_default(),
            Some(u) => self
                .meta
                .get_user(tenant, u)
                .ok()
                .flatten()
                .map(|x| x.quotas)
                .unwrap_or_default(),
        };
        self.quotas.limits.write().insert(key, q);
        q
    }

    fn quota_handle(self: &Arc<Self>, p: &Principal, connected: bool) -> QuotaHandle {
        // Anonymous principals share their tenant's quotas only.
        QuotaHandle {
            broker: self.clone(),
            tenant_usage: self.quotas.usage(&p.tenant, None),
            user_usage: (!p.is_anonymous()).then(|| self.quotas.usage(&p.tenant, Some(&p.user))),
            connected,
            subscriptions: AtomicU64::new(0),
        }
    }

    /// Opens a connection of `p` within its connection quotas.
    pub fn quota_connect(
        self: &Arc<Self>,
        p: &Principal,
        protocol: &str,
    ) -> Result<QuotaHandle, QuotaKind> {
        let mut h = self.quota_handle(p, false);
        let (t, u) = h.limits();
        let usages: Vec<&Arc<Usage>> = h.usages().collect();
        let limits = [t.connections, u.connections];
        for (i, usage) in usages.iter().enumerate() {
            let n = usage.connections.fetch_add(1, Ordering::AcqRel);
            if limits[i].is_some_and(|max| n >= max) {
                for back in &usages[..=i] {
                    back.connections.fetch_sub(1, Ordering::AcqRel);
                }
                h.throttled(protocol, QuotaKind::Connections);
                return Err(QuotaKind::Connections);
            }
        }
        self.metrics
            .tenant_connections
            .with_label_values(&[p.tenant.as_str()])
            .inc();
        h.connected = true;
        Ok(h)
    }

    /// `p`'s quotas for one request (no connection counted).
    pub fn quota_request(self: &Arc<Self>, p: &Principal) -> QuotaHandle {
        self.quota_handle(p, false)
    }

    /// Whether the tenant is at or over its storage quota.
    pub(crate) fn storage_full(&self, tenant: &TenantName) -> bool {
        let Some(max) = self.quota_limits(tenant, None).storage_bytes else {
            return false;
        };
        self.quotas
            .stored
            .read()
            .get(tenant)
            .is_some_and(|&used| used >= max)
    }

    /// Refuses a write to a tenant at its storage quota.
    pub(crate) fn storage_quota(
        &self,
        s: &fjord_core::StreamRef,
    ) -> Result<(), crate::BrokerError> {
        if !self.storage_full(&s.tenant) {
            return Ok(());
        }
        self.metrics
            .quota_hits
            .with_label_values(&["any", s.tenant.as_str(), QuotaKind::Storage.as_str()])
            .inc();
        self.audit_sampled(format!("quota/{}/storage", s.tenant), || {
            fjord_auth::audit::AuditEvent::new(fjord_auth::audit::AuditKind::QuotaExceeded, "any")
                .tenant(s.tenant.to_string())
                .resource(QuotaKind::Storage.as_str())
        });
        Err(crate::BrokerError::QuotaExceeded(format!(
            "tenant {} is at its storage quota",
            s.tenant
        )))
    }

    /// Recomputes each tenant's stored bytes (every sample interval).
    pub(crate) fn measure_storage(&self) {
        let mut per: HashMap<TenantName, u64> = HashMap::new();
        for st in self.streams.read().values() {
            let bytes: u64 = st.partitions.iter().map(|p| p.size_bytes()).sum();
            *per.entry(st.info.tenant.clone()).or_default() += bytes;
        }
        for (t, b) in &per {
            self.metrics
                .tenant_storage
                .with_label_values(&[t.as_str()])
                .set(*b as i64);
        }
        *self.quotas.stored.write() = per;
    }
}
