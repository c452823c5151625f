//! The broker core: streams made of partitions, produce with Kafka-compatible
//! partitioning, fetch by offset or time with long polling, named consumers
//! with committed positions, policies applied live, background retention and
//! compaction, and the node's metrics.
//!
//! Front-ends (HTTP today; MQTT, Kafka, AMQP later) call this narrow API and
//! never touch the log or the metadata store directly.

pub mod access;
pub mod audit;
pub mod auth;
mod dedup;
mod error;
mod keys;
mod memory;
mod metrics;
pub mod quotas;
mod rate;

use std::collections::{BTreeMap, HashMap};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fjord_core::batch::{self, ProducerInfo};
use fjord_core::partitioner::partition_for_key;
use fjord_core::policy::{ResolvedPolicy, PARTITIONS_MAX};
use fjord_core::time::now_ms;
use fjord_core::{NamespaceName, Policy, Record, RecordInput, StreamRef, TenantName};
use fjord_log::{Partition, PartitionOptions};
use fjord_meta::{EmbeddedStore, MetaStore, NamespaceInfo, StreamInfo, TenantInfo};
use fjord_schema::ValueSchema;
use parking_lot::RwLock;
use serde::Serialize;

pub use error::BrokerError;
pub use memory::{MemoryBudget, MemoryPermit};
pub use metrics::Metrics;
use rate::RateMeter;

/// Settings of the broker core.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub data_dir: PathBuf,
    /// Policy values for every setting no namespace or stream overrides.
    pub defaults: ResolvedPolicy,
    /// Appends queued per partition before producers wait.
    pub append_queue_depth: usize,
    /// How often retention, age rolls and compaction run.
    pub maintenance_interval: Duration,
    /// Message bytes the node holds in flight at most (request bodies,
    /// fetches); beyond it new work waits.
    pub inflight_bytes_max: u64,
    /// How identities are proved (anonymous access, tokens).
    pub auth: fjord_auth::AuthSettings,
    /// Connection limits and the failed-login ban.
    pub limits: fjord_auth::guard::GuardSettings,
    /// Per-tenant encryption keys (TOML); empty: none.
    pub key_file: PathBuf,
}

impl BrokerConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            defaults: ResolvedPolicy::default(),
            append_queue_depth: 1024,
            maintenance_interval: Duration::from_secs(30),
            inflight_bytes_max: 512 * 1024 * 1024,
            auth: fjord_auth::AuthSettings::default(),
            limits: Default::default(),
            key_file: PathBuf::new(),
        }
    }
}

/// Where a read starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    Earliest,
    Latest,
    Offset(i64),
    /// The first record published at or after this time (ms).
    Timestamp(i64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Produced {
    pub partition: u32,
    pub offset: i64,
    pub publish_ts: i64,
    /// The record was a duplicate within the stream's dedup window and was
    /// not stored again; offset and time are the original's.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
}

/// What [`Broker::follow`] hands its caller.
#[derive(Debug, Clone)]
pub enum Followed {
    Record(Record),
    /// Retention (or an ephemeral ring) removed `from..to` before it was
    /// read; reading goes on at `to`.
    Skipped {
        from: i64,
        to: i64,
    },
}

/// How long one long poll of a follower waits before asking again.
const FOLLOW_WAIT: Duration = Duration::from_secs(10);

/// Where a [`Broker::fetch_visit`] ended.
#[derive(Debug, Clone, Copy)]
pub struct Visited {
    /// The offset to read from next.
    pub next_offset: i64,
    pub start_offset: i64,
    pub high_watermark: i64,
}

#[derive(Debug, Clone)]
pub struct Fetched {
    pub records: Vec<Record>,
    /// The offset to read from next.
    pub next_offset: i64,
    pub start_offset: i64,
    pub high_watermark: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PartitionDescription {
    pub partition: u32,
    pub start_offset: i64,
    pub end_offset: i64,
    pub size_bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct StreamDescription {
    #[serde(flatten)]
    pub info: StreamInfo,
    pub effective_policy: ResolvedPolicy,
    pub partition_details: Vec<PartitionDescription>,
    pub size_bytes: u64,
    /// Averages over the last minute.
    pub records_per_sec: f64,
    pub bytes_per_sec: f64,
}

struct StreamState {
    info: StreamInfo,
    policy: ResolvedPolicy,
    partitions: Vec<Partition>,
    /// One window per partition (empty unless the policy deduplicates).
    dedup: Vec<Arc<dedup::DedupWindow>>,
    round_robin: AtomicU32,
    rate: RateMeter,
    /// The policy's value schema, compiled.
    schema: Option<Arc<ValueSchema>>,
}

pub struct Broker {
    meta: Arc<dyn MetaStore>,
    config: BrokerConfig,
    streams: RwLock<HashMap<StreamRef, Arc<StreamState>>>,
    metrics: Arc<Metrics>,
    memory: MemoryBudget,
    /// Announces every stream created, so readers that follow "all streams
    /// of a namespace" (MQTT wildcard subscriptions) pick new ones up.
    created: tokio::sync::broadcast::Sender<StreamRef>,
    /// Serializes stream creation, so a stream is in the map by the time a
    /// concurrent creator is told it exists.
    create_lock: parking_lot::Mutex<()>,
    shutting_down: AtomicBool,
    /// JWT verification keys, when tokens are configured.
    tokens: Option<fjord_auth::TokenVerifier>,
    acls: access::AclCache,
    acl_seq: AtomicU32,
    guard: Arc<fjord_auth::guard::Guard>,
    quotas: quotas::QuotaState,
    audit: audit::AuditQueue,
    keys: keys::Keys,
    logins: auth::LoginCache,
}

impl Broker {
    /// Opens the node's data: metadata, then every stream's partitions, each
    /// recovered (torn tails cut, indexes rebuilt) before it serves.
    pub async fn open(config: BrokerConfig) -> Result<Arc<Self>, BrokerError> {
        let meta: Arc<dyn MetaStore> =
            Arc::new(EmbeddedStore::open(&config.data_dir.join("meta"))?);
        fjord_meta::ensure_defaults(meta.as_ref(), now_ms())?;
        let tokens = fjord_auth::TokenVerifier::load(&config.auth.tokens)
            .map_err(|e| BrokerError::Invalid(format!("[auth.tokens]: {e}")))?;
        let metrics = Arc::new(Metrics::new());
        metrics.memory_budget.set(config.inflight_bytes_max as i64);
        let memory = MemoryBudget::new(config.inflight_bytes_max, metrics.memory_reserved.clone());
        let guard = fjord_auth::guard::Guard::new(config.limits.clone());
        let keys = keys::load(&config.key_file)?;
        let broker = Arc::new(Self {
            meta,
            config,
            streams: RwLock::new(HashMap::new()),
            metrics,
            memory,
            created: tokio::sync::broadcast::channel(1024).0,
            create_lock: parking_lot::Mutex::new(()),
            shutting_down: AtomicBool::new(false),
            tokens,
            acls: Default::default(),
            acl_seq: AtomicU32::new(0),
            guard,
            quotas: Default::default(),
            audit: Default::default(),
            keys,
            logins: Default::default(),
        });
        broker.ensure_system_tenant()?;
        // Files of streams deleted before a crash.
        let _ = std::fs::remove_dir_all(broker.trash_dir());
        for info in broker.meta.list_all_streams()? {
            let state = broker.open_stream(info)?;
            seed_dedup(&state).await?;
            broker
                .streams
                .write()
                .insert(state.info.stream_ref(), state);
        }
        Ok(broker)
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The node's budget for message bytes in flight.
    pub fn memory(&self) -> &MemoryBudget {
        &self.memory
    }

    pub fn meta(&self) -> &Arc<dyn MetaStore> {
        &self.meta
    }

    pub fn defaults(&self) -> &ResolvedPolicy {
        &self.config.defaults
    }

    fn stream_dir(&self, s: &StreamRef) -> PathBuf {
        self.config
            .data_dir
            .join("streams")
            .join(s.tenant.as_str())
            .join(s.namespace.as_str())
            .join(s.stream.as_str())
    }

    fn resolve_policy(&self, info: &StreamInfo) -> Result<ResolvedPolicy, BrokerError> {
        let ns = self.meta.get_namespace(&info.tenant, &info.namespace)?;
        Ok(info
            .policy
            .merged_over(&ns.policy)
            .resolve(&self.config.defaults))
    }

    fn partition_options(&self, tenant: &TenantName) -> PartitionOptions {
        let hist = self.metrics.fsync_seconds.clone();
        PartitionOptions {
            queue_depth: self.config.append_queue_depth,
            fsync_observer: Some(Arc::new(move |d: Duration| hist.observe(d.as_secs_f64()))),
            keys: self.keys.get(tenant).cloned(),
        }
    }

    /// Refuses a policy asking for encryption in a tenant without a key
    /// (writes would otherwise fail later, or worse, go out plain).
    fn check_encryption(&self, tenant: &TenantName, p: &ResolvedPolicy) -> Result<(), BrokerError> {
        if p.encrypted && !p.ephemeral && !self.keys.contains_key(tenant) {
            return Err(BrokerError::Invalid(format!(
                "`encrypted` needs a key for tenant {tenant} in the node's encryption.key_file"
            )));
        }
        Ok(())
    }

    /// Checks a policy's values, and its schema if it has one.
    fn validate_policy(policy: &Policy) -> Result<(), BrokerError> {
        policy.validate().map_err(BrokerError::Invalid)?;
        if let Some(schema) = &policy.schema {
            ValueSchema::compile(schema)
                .map_err(|e| BrokerError::Invalid(format!("schema: {e}")))?;
        }
        Ok(())
    }

    /// The compiled schema of a resolved policy. A stored schema that no
    /// longer compiles (checked when set) is logged and left out.
    fn compile_schema(s: &StreamRef, policy: &ResolvedPolicy) -> Option<Arc<ValueSchema>> {
        let schema = policy.schema.as_ref()?;
        match ValueSchema::compile(schema) {
            Ok(c) => Some(Arc::new(c)),
            Err(e) => {
                tracing::error!(stream = %s, "the stream's schema is not used: {e}");
                None
            }
        }
    }

    /// The stream's value schema, compiled, if its policy has one.
    pub fn value_schema(&self, s: &StreamRef) -> Result<Option<Arc<ValueSchema>>, BrokerError> {
        Ok(self.state(s)?.schema.clone())
    }

    fn open_stream(&self, info: StreamInfo) -> Result<Arc<StreamState>, BrokerError> {
        let policy = self.resolve_policy(&info)?;
        let dir = self.stream_dir(&info.stream_ref());
        let mut partitions = Vec::with_capacity(info.partitions as usize);
        for p in 0..info.partitions {
            partitions.push(self.open_partition(&info, &dir, p, &policy)?);
        }
        let dedup = partitions.iter().map(|_| Arc::default()).collect();
        let schema = Self::compile_schema(&info.stream_ref(), &policy);
        Ok(Arc::new(StreamState {
            info,
            policy,
            partitions,
            dedup,
            round_robin: AtomicU32::new(0),
            rate: RateMeter::new(),
            schema,
        }))
    }

    fn open_partition(
        &self,
        info: &StreamInfo,
        dir: &Path,
        p: u32,
        policy: &ResolvedPolicy,
    ) -> Result<Partition, BrokerError> {
        if policy.ephemeral {
            return Ok(Partition::open_memory(
                policy.clone(),
                self.partition_options(&info.tenant),
            ));
        }
        let (part, report) = Partition::open_disk(
            &dir.join(p.to_string()),
            policy.clone(),
            self.partition_options(&info.tenant),
        )?;
        if report.truncated_bytes > 0 {
            tracing::warn!(
                stream = %info.stream_ref(),
                partition = p,
                truncated_bytes = report.truncated_bytes,
                reason = report.truncate_reason.as_deref().unwrap_or(""),
                "recovery cut a torn write off the end of the log"
            );
        }
        Ok(part)
    }

    fn state(&self, s: &StreamRef) -> Result<Arc<StreamState>, BrokerError> {
        self.streams
            .read()
            .get(s)
            .cloned()
            .ok_or_else(|| BrokerError::NotFound {
                kind: "stream",
                name: s.to_string(),
            })
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    /// Streams created from now on.
    pub fn stream_created(&self) -> tokio::sync::broadcast::Receiver<StreamRef> {
        self.created.subscribe()
    }

    pub fn stream_exists(&self, s: &StreamRef) -> bool {
        self.streams.read().contains_key(s)
    }

    /// Creates `s` with its namespace's policy unless it exists (for
    /// protocols that create streams on first use, as Kafka auto-creates
    /// topics). Concurrent callers are fine: one creates, the rest find it.
    pub fn ensure_stream(&self, s: &StreamRef) -> Result<(), BrokerError> {
        self.ensure_stream_with(s, None, Policy::default())
    }

    /// [`Broker::ensure_stream`] with explicit partitions and policy
    /// overrides for the case it creates the stream.
    pub fn ensure_stream_with(
        &self,
        s: &StreamRef,
        partitions: Option<u32>,
        policy: Policy,
    ) -> Result<(), BrokerError> {
        if self.stream_exists(s) {
            return Ok(());
        }
        match self.create_stream(s, partitions, policy) {
            Ok(_) | Err(BrokerError::AlreadyExists { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// One partition of a stream; the error says how many there are.
    fn partition(&self, s: &StreamRef, partition: u32) -> Result<Partition, BrokerError> {
        let st = self.state(s)?;
        st.partitions
            .get(partition as usize)
            .cloned()
            .ok_or_else(|| BrokerError::NotFound {
                kind: "partition",
                name: format!("{s}#{partition} (the stream has {})", st.partitions.len()),
            })
    }

    fn check_running(&self) -> Result<(), BrokerError> {
        if self.shutting_down.load(Ordering::Acquire) {
            return Err(BrokerError::ShuttingDown);
        }
        Ok(())
    }

    // ---- tenants and namespaces -------------------------------------------------

    pub fn create_tenant(&self, name: &TenantName) -> Result<TenantInfo, BrokerError> {
        let t = TenantInfo {
            name: name.clone(),
            created_ms: now_ms(),
            settings: Default::default(),
        };
        self.meta.create_tenant(&t)?;
        Ok(t)
    }

    pub fn list_tenants(&self) -> Result<Vec<TenantInfo>, BrokerError> {
        Ok(self.meta.list_tenants()?)
    }

    pub fn get_tenant(&self, name: &TenantName) -> Result<TenantInfo, BrokerError> {
        Ok(self.meta.get_tenant(name)?)
    }

    pub fn delete_tenant(&self, name: &TenantName) -> Result<(), BrokerError> {
        self.meta.delete_tenant(name)?;
        // Its users, rules and limits go with it.
        self.logins.clear();
        self.acl_changed(name);
        self.quotas.forget_limits(name);
        Ok(())
    }

    pub fn create_namespace(
        &self,
        tenant: &TenantName,
        name: &NamespaceName,
        policy: Policy,
    ) -> Result<NamespaceInfo, BrokerError> {
        Self::validate_policy(&policy)?;
        self.check_encryption(tenant, &policy.resolve(&self.config.defaults))?;
        let ns = NamespaceInfo {
            tenant: tenant.clone(),
            name: name.clone(),
            policy,
            created_ms: now_ms(),
        };
        self.meta.create_namespace(&ns)?;
        Ok(ns)
    }

    pub fn get_namespace(
        &self,
        tenant: &TenantName,
        name: &NamespaceName,
    ) -> Result<NamespaceInfo, BrokerError> {
        Ok(self.meta.get_namespace(tenant, name)?)
    }

    pub fn list_namespaces(&self, tenant: &TenantName) -> Result<Vec<NamespaceInfo>, BrokerError> {
        Ok(self.meta.list_namespaces(tenant)?)
    }

    pub fn delete_namespace(
        &self,
        tenant: &TenantName,
        name: &NamespaceName,
    ) -> Result<(), BrokerError> {
        Ok(self.meta.delete_namespace(tenant, name)?)
    }

    /// Replaces a namespace's policy and applies it to its streams at once.
    pub fn set_namespace_policy(
        &self,
        tenant: &TenantName,
        name: &NamespaceName,
        policy: Policy,
    ) -> Result<NamespaceInfo, BrokerError> {
        Self::validate_policy(&policy)?;
        self.check_encryption(tenant, &policy.resolve(&self.config.defaults))?;
        let old = self.meta.get_namespace(tenant, name)?;
        let streams = self.meta.list_streams(tenant, name)?;
        for s in &streams {
            let before = s
                .policy
                .merged_over(&old.policy)
                .resolve(&self.config.defaults);
            let after = s.policy.merged_over(&policy).resolve(&self.config.defaults);
            self.check_encryption(&s.tenant, &after)?;
            if before.ephemeral != after.ephemeral {
                return Err(BrokerError::Invalid(format!(
                    "changing `ephemeral` would change how stream {} is stored; create a new stream instead",
                    s.stream_ref()
                )));
            }
        }
        let ns = self.meta.set_namespace_policy(tenant, name, &policy)?;
        for s in streams {
            self.reapply_policy(&s.stream_ref())?;
        }
        Ok(ns)
    }

    fn reapply_policy(&self, s: &StreamRef) -> Result<(), BrokerError> {
        let info = self.meta.get_stream(s)?;
        let policy = self.resolve_policy(&info)?;
        let mut streams = self.streams.write();
        if let Some(old) = streams.get(s) {
            for p in &old.partitions {
                p.set_policy(policy.clone());
            }
            let schema = Self::compile_schema(s, &policy);
            let state = Arc::new(StreamState {
                info,
                policy,
                partitions: old.partitions.clone(),
                dedup: old.dedup.clone(),
                round_robin: AtomicU32::new(old.round_robin.load(Ordering::Relaxed)),
                rate: old.rate.clone(),
                schema,
            });
            streams.insert(s.clone(), state);
        }
        Ok(())
    }

    // ---- streams -----------------------------------------------------------------

    /// Creates a stream; `partitions` defaults to the policy's
    /// `partitions_default`.
    pub fn create_stream(
        &self,
        s: &StreamRef,
        partitions: Option<u32>,
        policy: Policy,
    ) -> Result<StreamDescription, BrokerError> {
        let _creating = self.create_lock.lock();
        self.check_running()?;
        Self::validate_policy(&policy)?;
        let ns = self.meta.get_namespace(&s.tenant, &s.namespace)?;
        let resolved = policy
            .merged_over(&ns.policy)
            .resolve(&self.config.defaults);
        self.check_encryption(&s.tenant, &resolved)?;
        let partitions = partitions.unwrap_or(resolved.partitions_default);
        if partitions == 0 || partitions > PARTITIONS_MAX {
            return Err(BrokerError::Invalid(format!(
                "partitions = {partitions} is outside 1..={PARTITIONS_MAX}"
            )));
        }
        let info = StreamInfo {
            tenant: s.tenant.clone(),
            namespace: s.namespace.clone(),
            name: s.stream.clone(),
            partitions,
            policy,
            created_ms: now_ms(),
        };
        // Leftovers of an earlier stream of the same name must not reappear.
        let dir = self.stream_dir(s);
        if dir.exists() && self.meta.get_stream(s).is_err() {
            std::fs::remove_dir_all(&dir)
                .map_err(|e| BrokerError::Storage(format!("clear {}: {e}", dir.display())))?;
        }
        self.meta.create_stream(&info)?;
        let state = match self.open_stream(info) {
            Ok(st) => st,
            Err(e) => {
                let _ = self.meta.delete_stream(s);
                return Err(e);
            }
        };
        self.streams.write().insert(s.clone(), state);
        let _ = self.created.send(s.clone());
        self.describe_stream(s)
    }

    /// Changes a stream's policy overrides and/or grows its partitions.
    pub fn update_stream(
        &self,
        s: &StreamRef,
        partitions: Option<u32>,
        policy: Option<Policy>,
    ) -> Result<StreamDescription, BrokerError> {
        let mut info = self.meta.get_stream(s)?;
        let ns = self.meta.get_namespace(&s.tenant, &s.namespace)?;
        if let Some(policy) = policy {
            Self::validate_policy(&policy)?;
            let before = info
                .policy
                .merged_over(&ns.policy)
                .resolve(&self.config.defaults);
            let after = policy
                .merged_over(&ns.policy)
                .resolve(&self.config.defaults);
            self.check_encryption(&s.tenant, &after)?;
            if before.ephemeral != after.ephemeral {
                return Err(BrokerError::Invalid(
                    "`ephemeral` cannot change on an existing stream; create a new stream instead"
                        .into(),
                ));
            }
            info.policy = policy;
        }
        let mut new_partitions = Vec::new();
        if let Some(n) = partitions {
            if n < info.partitions {
                return Err(BrokerError::Invalid(format!(
                    "partitions can only grow: stream {s} has {}, asked for {n}",
                    info.partitions
                )));
            }
            if n > PARTITIONS_MAX {
                return Err(BrokerError::Invalid(format!(
                    "partitions = {n} is outside 1..={PARTITIONS_MAX}"
                )));
            }
            let resolved = info
                .policy
                .merged_over(&ns.policy)
                .resolve(&self.config.defaults);
            for p in info.partitions..n {
                new_partitions.push(self.open_partition(
                    &info,
                    &self.stream_dir(s),
                    p,
                    &resolved,
                )?);
            }
            info.partitions = n;
        }
        self.meta.update_stream(&info)?;
        {
            let mut streams = self.streams.write();
            let old = streams
                .get(s)
                .cloned()
                .ok_or_else(|| BrokerError::NotFound {
                    kind: "stream",
                    name: s.to_string(),
                })?;
            let mut parts = old.partitions.clone();
            parts.extend(new_partitions);
            let mut dedup = old.dedup.clone();
            dedup.resize_with(parts.len(), Arc::default);
            streams.insert(
                s.clone(),
                Arc::new(StreamState {
                    info: info.clone(),
                    policy: old.policy.clone(),
                    partitions: parts,
                    dedup,
                    round_robin: AtomicU32::new(0),
                    rate: old.rate.clone(),
                    schema: old.schema.clone(),
                }),
            );
        }
        self.reapply_policy(s)?;
        self.describe_stream(s)
    }

    pub fn list_streams(
        &self,
        tenant: &TenantName,
        ns: &NamespaceName,
    ) -> Result<Vec<StreamInfo>, BrokerError> {
        Ok(self.meta.list_streams(tenant, ns)?)
    }

    pub fn describe_stream(&self, s: &StreamRef) -> Result<StreamDescription, BrokerError> {
        let st = self.state(s)?;
        let partition_details: Vec<PartitionDescription> = st
            .partitions
            .iter()
            .enumerate()
            .map(|(i, p)| PartitionDescription {
                partition: i as u32,
                start_offset: p.start_offset(),
                end_offset: p.high_watermark(),
                size_bytes: p.size_bytes(),
            })
            .collect();
        let (records_per_sec, bytes_per_sec) = st.rate.rates();
        Ok(StreamDescription {
            info: st.info.clone(),
            effective_policy: st.policy.clone(),
            size_bytes: partition_details.iter().map(|p| p.size_bytes).sum(),
            partition_details,
            records_per_sec,
            bytes_per_sec,
        })
    }

    /// Deletes a stream, its data and its consumers' positions.
    pub async fn delete_stream(&self, s: &StreamRef) -> Result<(), BrokerError> {
        self.meta.delete_stream(s)?;
        let state = self.streams.write().remove(s);
        if let Some(st) = state {
            for p in &st.partitions {
                // Stops the appender so nothing writes into the directory
                // while it is removed; readers still holding a handle get
                // `Closed` or read what is already open.
                let _ = p.close().await;
            }
        }
        let dir = self.stream_dir(s);
        // Renamed away first, so a stream re-created under the same name at
        // once starts from an empty directory whatever the removal does.
        let trash = self.trash_dir().join(format!(
            "{}-{}-{}-{}",
            s.tenant,
            s.namespace,
            s.stream,
            now_ms()
        ));
        let _ = std::fs::create_dir_all(self.trash_dir());
        match std::fs::rename(&dir, &trash) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                return Err(BrokerError::Storage(format!(
                    "remove {}: {e}",
                    dir.display()
                )))
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&trash) {
            tracing::warn!(dir = %trash.display(), error = %e, "could not remove a deleted stream's files; they are removed at next start");
        }
        Ok(())
    }

    fn trash_dir(&self) -> PathBuf {
        self.config.data_dir.join("trash")
    }

    // ---- produce and fetch -------------------------------------------------------

    /// Appends `records` to `s`. Keyed records go to Kafka's murmur2
    /// partition of their key; keyless ones of one call go together to the
    /// next partition in round robin; `partition` forces one. Resolves when
    /// every record is as durable as the stream's policy says; the results
    /// are in the order of `records`.
    pub async fn produce(
        &self,
        s: &StreamRef,
        records: Vec<RecordInput>,
        partition: Option<u32>,
    ) -> Result<Vec<Produced>, BrokerError> {
        let r = match self.storage_quota(s) {
            Ok(()) => self.produce_inner(s, records, partition).await,
            Err(e) => Err(e),
        };
        if let Err(e) = &r {
            self.metrics
                .produce_errors
                .with_label_values(&[e.code()])
                .inc();
        }
        r
    }

    async fn produce_inner(
        &self,
        s: &StreamRef,
        records: Vec<RecordInput>,
        partition: Option<u32>,
    ) -> Result<Vec<Produced>, BrokerError> {
        self.check_running()?;
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let st = self.state(s)?;
        let n = st.partitions.len() as u32;
        for r in &records {
            let size = batch::record_size_estimate(r);
            if size as u64 > st.policy.max_message_bytes {
                return Err(BrokerError::MessageTooLarge {
                    size,
                    max: st.policy.max_message_bytes,
                });
            }
        }
        if let Some(schema) = st.schema.as_ref().filter(|s| s.enforced()) {
            for r in &records {
                schema
                    .check(r.value.as_deref())
                    .map_err(|e| BrokerError::InvalidRecord(e.to_string()))?;
            }
        }
        if let Some(p) = partition {
            if p >= n {
                return Err(BrokerError::NotFound {
                    kind: "partition",
                    name: format!("{s}#{p} (the stream has {n})"),
                });
            }
        }
        let sticky = st.round_robin.fetch_add(1, Ordering::Relaxed) % n;
        let mut groups: BTreeMap<u32, Vec<(usize, RecordInput)>> = BTreeMap::new();
        for (i, r) in records.into_iter().enumerate() {
            let p = match (partition, &r.key) {
                (Some(p), _) => p,
                (None, Some(k)) => partition_for_key(k, n),
                (None, None) => sticky,
            };
            groups.entry(p).or_default().push((i, r));
        }
        let total: usize = groups.values().map(|g| g.len()).sum();
        let dedup = (st.policy.dedup_window_ms > 0)
            .then_some((st.policy.dedup_window_ms, st.policy.dedup_by));
        let appends = groups.into_iter().map(|(p, group)| {
            let part = st.partitions[p as usize].clone();
            let window = st.dedup[p as usize].clone();
            async move {
                let (idx, inputs): (Vec<usize>, Vec<RecordInput>) = group.into_iter().unzip();
                let produced = match dedup {
                    None => append_plain(&part, p, inputs).await?,
                    Some((window_ms, by)) => {
                        append_dedup(part, p, inputs, window, window_ms, by).await?
                    }
                };
                Ok::<_, BrokerError>((idx, produced))
            }
        });
        let results = futures_util::future::join_all(appends).await;
        let mut out = vec![
            Produced {
                partition: 0,
                offset: -1,
                publish_ts: 0,
                duplicate: false,
            };
            total
        ];
        let labels = [s.tenant.as_str(), s.namespace.as_str(), s.stream.as_str()];
        let mut first_err = None;
        for r in results {
            match r {
                Ok((idx, produced)) => {
                    let stored = produced.records.iter().filter(|p| !p.duplicate).count() as u64;
                    self.metrics
                        .appended_records
                        .with_label_values(&labels)
                        .inc_by(stored);
                    self.metrics
                        .appended_bytes
                        .with_label_values(&labels)
                        .inc_by(produced.bytes as u64);
                    st.rate.record(stored, produced.bytes as u64);
                    for (i, p) in idx.into_iter().zip(produced.records) {
                        out[i] = p;
                    }
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        // A call spanning partitions is not atomic: if one partition failed,
        // the caller sees the error and retries the whole call.
        match first_err {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// Reads records of one partition from `from`, waiting up to `wait` for
    /// new ones when there are none. Records past the stream's message TTL
    /// are skipped.
    pub async fn fetch(
        &self,
        s: &StreamRef,
        partition: u32,
        from: Position,
        max_records: usize,
        max_bytes: usize,
        wait: Duration,
    ) -> Result<Fetched, BrokerError> {
        let mut records = Vec::new();
        let mut failed = None;
        let visited = self
            .fetch_visit(s, partition, from, max_bytes, wait, |memory, rec| {
                if records.len() >= max_records.max(1) {
                    return false;
                }
                match rec.to_record(memory) {
                    Ok(r) => {
                        records.push(r);
                        true
                    }
                    Err(e) => {
                        failed = Some(e);
                        false
                    }
                }
            })
            .await?;
        if let Some(e) = failed {
            return Err(BrokerError::Storage(format!("stored batch: {e}")));
        }
        Ok(Fetched {
            records,
            next_offset: visited.next_offset,
            start_offset: visited.start_offset,
            high_watermark: visited.high_watermark,
        })
    }

    /// As [`Broker::fetch`], without making records: `visit` sees each
    /// record borrowed from the stored batch (and that batch's memory) and
    /// says whether it takes it; the first it does not take is where the
    /// next read starts. What copies records elsewhere (SQL's Arrow
    /// columns) reads this way.
    pub async fn fetch_visit(
        &self,
        s: &StreamRef,
        partition: u32,
        from: Position,
        max_bytes: usize,
        wait: Duration,
        mut visit: impl FnMut(&Bytes, &batch::RecordView<'_>) -> bool,
    ) -> Result<Visited, BrokerError> {
        let st = self.state(s)?;
        let part = self.partition(s, partition)?;
        let offset = self.resolve_position(&part, from).await?;
        let read = part.read(offset, max_bytes.max(1), wait).await?;
        let ttl = st.policy.message_ttl_ms;
        let now = now_ms();
        let mut next = read.next_offset.max(offset);
        for b in &read.batches {
            let mut stopped = None;
            batch::for_each_record(b, |memory, rec| {
                let expired = ttl >= 0 && now.saturating_sub(rec.publish_ts) > ttl;
                if rec.offset < offset || expired || visit(memory, &rec) {
                    return ControlFlow::Continue(());
                }
                stopped = Some(rec.offset);
                ControlFlow::Break(())
            })
            .map_err(|e| BrokerError::Storage(format!("stored batch: {e}")))?;
            if let Some(at) = stopped {
                next = at;
                break;
            }
        }
        Ok(Visited {
            next_offset: next,
            start_offset: read.start_offset,
            high_watermark: read.high_watermark,
        })
    }

    /// Appends one RecordBatch v2 exactly as a client sent it (any
    /// compression): the log checks its CRC and assigns offsets and the
    /// append time; the records are not decoded. For protocols whose
    /// clients build their own batches (Kafka).
    pub async fn produce_batch(
        &self,
        s: &StreamRef,
        partition: u32,
        batch: Vec<u8>,
    ) -> Result<fjord_log::AppendInfo, BrokerError> {
        let r = match self.storage_quota(s) {
            Ok(()) => self.produce_batch_inner(s, partition, batch).await,
            Err(e) => Err(e),
        };
        if let Err(e) = &r {
            self.metrics
                .produce_errors
                .with_label_values(&[e.code()])
                .inc();
        }
        r
    }

    async fn produce_batch_inner(
        &self,
        s: &StreamRef,
        partition: u32,
        batch: Vec<u8>,
    ) -> Result<fjord_log::AppendInfo, BrokerError> {
        self.check_running()?;
        let st = self.state(s)?;
        let part = self.partition(s, partition)?;
        if batch.len() as u64 > st.policy.max_message_bytes {
            return Err(BrokerError::MessageTooLarge {
                size: batch.len(),
                max: st.policy.max_message_bytes,
            });
        }
        let header = batch::BatchHeader::parse(&batch)
            .map_err(|e| BrokerError::Invalid(format!("record batch: {e}")))?;
        // Every reader must be able to decode what is stored: a batch whose
        // records (or compressed section) are malformed is refused, not
        // stored for MQTT and HTTP readers to trip over. The append checks
        // the CRC; it is computed here only to name a damaged batch as such.
        let batch = bytes::Bytes::from(batch);
        batch::validate_records(&batch).map_err(|e| {
            let e = batch::verify_crc(&batch).err().unwrap_or(e);
            BrokerError::Invalid(format!("record batch: {e}"))
        })?;
        if let Some(schema) = st.schema.as_ref().filter(|s| s.enforced()) {
            // The records were validated just above: only values are read.
            let mut i = 0usize;
            let mut misfit = None;
            batch::for_each_record(&batch, |_, r| match schema.check(r.value) {
                Ok(()) => {
                    i += 1;
                    ControlFlow::Continue(())
                }
                Err(e) => {
                    misfit = Some(format!("record {i} of the batch: {e}"));
                    ControlFlow::Break(())
                }
            })
            .map_err(|e| BrokerError::Invalid(format!("record batch: {e}")))?;
            if let Some(m) = misfit {
                return Err(BrokerError::InvalidRecord(m));
            }
        }
        let batch = Vec::from(batch);
        let records = header.record_count.max(0) as u64;
        let _permit = self.memory.reserve(batch.len() as u64).await?;
        let info = part.append(batch).await?;
        let labels = [s.tenant.as_str(), s.namespace.as_str(), s.stream.as_str()];
        self.metrics
            .appended_records
            .with_label_values(&labels)
            .inc_by(records);
        self.metrics
            .appended_bytes
            .with_label_values(&labels)
            .inc_by(info.bytes as u64);
        st.rate.record(records, info.bytes as u64);
        Ok(info)
    }

    /// Reads stored batches of one partition from `offset` as they are on
    /// disk (no decoding), waiting up to `wait` for new ones: what Kafka's
    /// Fetch serves.
    pub async fn fetch_batches(
        &self,
        s: &StreamRef,
        partition: u32,
        offset: i64,
        max_bytes: usize,
        wait: Duration,
    ) -> Result<fjord_log::ReadResult, BrokerError> {
        let part = self.partition(s, partition)?;
        Ok(part.read(offset, max_bytes.max(1), wait).await?)
    }

    /// Follows one partition from `start` for as long as `emit` returns
    /// true: the loop behind every live reader (WebSocket and MQTT
    /// subscribers, shared-subscription groups). Records removed before they
    /// were read are reported as [`Followed::Skipped`] and counted under
    /// `protocol`. Ends when the stream goes away.
    pub async fn follow<F, Fut>(
        &self,
        s: &StreamRef,
        partition: u32,
        start: i64,
        protocol: &str,
        mut emit: F,
    ) where
        F: FnMut(Followed) -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let mut next = start;
        loop {
            match self
                .fetch(
                    s,
                    partition,
                    Position::Offset(next),
                    500,
                    1 << 20,
                    FOLLOW_WAIT,
                )
                .await
            {
                Ok(f) => {
                    for rec in f.records {
                        if !emit(Followed::Record(rec)).await {
                            return;
                        }
                    }
                    next = f.next_offset;
                }
                Err(BrokerError::OffsetOutOfRange {
                    requested, start, ..
                }) if requested < start => {
                    self.metrics
                        .skipped_records
                        .with_label_values(&[protocol])
                        .inc_by((start - requested) as u64);
                    if !emit(Followed::Skipped {
                        from: requested,
                        to: start,
                    })
                    .await
                    {
                        return;
                    }
                    next = start;
                }
                Err(_) => return,
            }
        }
    }

    async fn resolve_position(&self, part: &Partition, from: Position) -> Result<i64, BrokerError> {
        Ok(match from {
            Position::Earliest => part.start_offset(),
            Position::Latest => part.high_watermark(),
            Position::Offset(o) => o,
            Position::Timestamp(ts) => part
                .offset_for_time(ts)
                .await?
                .unwrap_or_else(|| part.high_watermark()),
        })
    }

    /// The offset a position names right now (for clients that resolve once
    /// and then follow).
    pub async fn resolve(
        &self,
        s: &StreamRef,
        partition: u32,
        from: Position,
    ) -> Result<i64, BrokerError> {
        let part = self.partition(s, partition)?;
        self.resolve_position(&part, from).await
    }

    pub fn partition_count(&self, s: &StreamRef) -> Result<u32, BrokerError> {
        Ok(self.state(s)?.partitions.len() as u32)
    }

    // ---- named consumers ----------------------------------------------------------

    pub fn commit(
        &self,
        s: &StreamRef,
        consumer: &str,
        offsets: &[(u32, i64)],
    ) -> Result<(), BrokerError> {
        let st = self.state(s)?;
        for &(p, off) in offsets {
            if let Some(part) = st.partitions.get(p as usize) {
                let hwm = part.high_watermark();
                if off > hwm {
                    return Err(BrokerError::Invalid(format!(
                        "cannot commit offset {off} on partition {p}: it ends at {hwm}"
                    )));
                }
            }
        }
        Ok(self.meta.commit_offsets(s, consumer, offsets)?)
    }

    pub fn committed(&self, s: &StreamRef, consumer: &str) -> Result<Vec<(u32, i64)>, BrokerError> {
        self.state(s)?;
        Ok(self.meta.committed_offsets(s, consumer)?)
    }

    /// Forgets a named consumer's positions (some partitions, or all).
    pub fn delete_committed(
        &self,
        s: &StreamRef,
        consumer: &str,
        partitions: Option<&[u32]>,
    ) -> Result<usize, BrokerError> {
        self.state(s)?;
        Ok(self.meta.delete_offsets(s, consumer, partitions)?)
    }

    pub fn consumers(
        &self,
        s: &StreamRef,
    ) -> Result<Vec<fjord_meta::ConsumerOffsets>, BrokerError> {
        self.state(s)?;
        Ok(self.meta.list_consumers(s)?)
    }

    // ---- operations ---------------------------------------------------------------

    /// Refreshes state gauges and returns the Prometheus exposition.
    pub fn render_metrics(&self) -> String {
        let streams: Vec<Arc<StreamState>> = self.streams.read().values().cloned().collect();
        let m = &self.metrics;
        m.tail_cache_bytes.set(fjord_log::tail_bytes_total() as i64);
        m.end_offset.reset();
        m.start_offset.reset();
        m.partition_bytes.reset();
        m.append_queue.reset();
        m.consumer_lag.reset();
        for st in streams {
            let s = st.info.stream_ref();
            let mut ends = Vec::with_capacity(st.partitions.len());
            for (i, p) in st.partitions.iter().enumerate() {
                let pi = i.to_string();
                let l = [
                    s.tenant.as_str(),
                    s.namespace.as_str(),
                    s.stream.as_str(),
                    pi.as_str(),
                ];
                let end = p.high_watermark();
                ends.push(end);
                m.end_offset.with_label_values(&l).set(end);
                m.start_offset.with_label_values(&l).set(p.start_offset());
                m.partition_bytes
                    .with_label_values(&l)
                    .set(p.size_bytes() as i64);
                m.append_queue.with_label_values(&l).set(p.queued() as i64);
            }
            if let Ok(consumers) = self.meta.list_consumers(&s) {
                for (c, offsets) in consumers {
                    for (p, off) in offsets {
                        if let Some(end) = ends.get(p as usize) {
                            let ps = p.to_string();
                            m.consumer_lag
                                .with_label_values(&[
                                    s.tenant.as_str(),
                                    s.namespace.as_str(),
                                    s.stream.as_str(),
                                    c.as_str(),
                                    ps.as_str(),
                                ])
                                .set((end - off).max(0));
                        }
                    }
                }
            }
        }
        m.encode()
    }

    /// Runs retention, age rolls and compaction on every partition, and
    /// samples rates, until the broker shuts down.
    pub fn spawn_maintenance(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let broker = Arc::downgrade(self);
        let every = self.config.maintenance_interval;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(rate::SAMPLE_INTERVAL);
            let mut since_maintenance = Duration::ZERO;
            loop {
                tick.tick().await;
                let Some(b) = broker.upgrade() else { return };
                if b.shutting_down.load(Ordering::Acquire) {
                    return;
                }
                let streams: Vec<Arc<StreamState>> = b.streams.read().values().cloned().collect();
                for st in &streams {
                    st.rate.sample();
                }
                b.measure_storage();
                since_maintenance += rate::SAMPLE_INTERVAL;
                if since_maintenance < every {
                    continue;
                }
                since_maintenance = Duration::ZERO;
                for st in streams {
                    for (i, p) in st.partitions.iter().enumerate() {
                        match p.maintain().await {
                            Ok(r) if r.segments_deleted + r.segments_compacted > 0 => {
                                tracing::info!(
                                    stream = %st.info.stream_ref(), partition = i,
                                    segments_deleted = r.segments_deleted, bytes_deleted = r.bytes_deleted,
                                    segments_compacted = r.segments_compacted, records_compacted = r.records_compacted,
                                    "maintenance"
                                )
                            }
                            Ok(_) => {}
                            Err(e) => {
                                tracing::error!(stream = %st.info.stream_ref(), partition = i, error = %e, "maintenance failed")
                            }
                        }
                    }
                }
            }
        })
    }

    /// Stops accepting produces, waits for queued appends to become durable
    /// and fsyncs every partition.
    pub async fn shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
        let streams: Vec<Arc<StreamState>> = self.streams.read().values().cloned().collect();
        for st in streams {
            for (i, p) in st.partitions.iter().enumerate() {
                if let Err(e) = p.flush().await {
                    tracing::error!(stream = %st.info.stream_ref(), partition = i, error = %e, "flush at shutdown failed");
                }
            }
        }
    }
}

/// What one partition's share of a produce call became.
struct GroupResult {
    records: Vec<Produced>,
    /// Batch bytes written (0 when every record was a duplicate).
    bytes: usize,
}

/// Rebuilds a deduplicating stream's windows from the last window of its
/// log, so a restart does not let a retried record in twice.
async fn seed_dedup(st: &StreamState) -> Result<(), BrokerError> {
    let window_ms = st.policy.dedup_window_ms;
    if window_ms <= 0 || st.policy.ephemeral {
        return Ok(());
    }
    let since = now_ms().saturating_sub(window_ms);
    for (part, window) in st.partitions.iter().zip(&st.dedup) {
        let Some(mut offset) = part.offset_for_time(since).await? else {
            continue;
        };
        let end = part.high_watermark();
        while offset < end {
            let r = part.read(offset, 4 << 20, Duration::ZERO).await?;
            let mut records = Vec::new();
            for b in &r.batches {
                // Compressed batches (Kafka clients, later) cannot be read
                // here record by record; their ids are not remembered.
                if let Ok(recs) = batch::decode_records(b) {
                    records.extend(recs.into_iter().filter(|rec| rec.offset >= offset));
                }
            }
            window.seed(&records, st.policy.dedup_by);
            if r.next_offset <= offset {
                break;
            }
            offset = r.next_offset;
        }
    }
    Ok(())
}

async fn append_plain(
    part: &Partition,
    p: u32,
    inputs: Vec<RecordInput>,
) -> Result<GroupResult, BrokerError> {
    let b = batch::encode(0, now_ms(), ProducerInfo::default(), &inputs);
    let info = part.append(b).await?;
    let records = (0..inputs.len())
        .map(|k| Produced {
            partition: p,
            offset: info.base_offset + k as i64,
            publish_ts: info.publish_ts,
            duplicate: false,
        })
        .collect();
    Ok(GroupResult {
        records,
        bytes: info.bytes,
    })
}

/// Appends the records whose dedup id is new to the window and answers the
/// others with their original's offset. The append and the report of its
/// outcome run as their own task, so a caller that goes away (a closed
/// connection) cannot leave an id claimed with no outcome.
async fn append_dedup(
    part: Partition,
    p: u32,
    inputs: Vec<RecordInput>,
    window: Arc<dedup::DedupWindow>,
    window_ms: i64,
    by: fjord_core::DedupBy,
) -> Result<GroupResult, BrokerError> {
    let ids: Vec<Option<Bytes>> = inputs.iter().map(|r| dedup::dedup_id(r, by)).collect();
    let claims = window.claim(&ids, now_ms(), window_ms);
    let fresh: Vec<usize> = claims
        .iter()
        .enumerate()
        .filter(|(_, c)| matches!(c, dedup::Claim::Untracked | dedup::Claim::New(_)))
        .map(|(k, _)| k)
        .collect();
    let mut records: Vec<Option<Produced>> = vec![None; inputs.len()];
    let mut bytes = 0;
    let mut pending = Vec::new();
    let mut senders = Vec::new();
    let mut same_as = Vec::new();
    for (k, c) in claims.into_iter().enumerate() {
        match c {
            dedup::Claim::New(tx) => senders.push((k, tx)),
            dedup::Claim::Duplicate(rx) => pending.push((k, rx)),
            dedup::Claim::SameAs(first) => same_as.push((k, first)),
            dedup::Claim::Untracked => {}
        }
    }
    if !fresh.is_empty() {
        let batch_inputs: Vec<RecordInput> = fresh.iter().map(|&k| inputs[k].clone()).collect();
        let fresh_for_task = fresh.clone();
        let task = tokio::spawn(async move {
            let b = batch::encode(0, now_ms(), ProducerInfo::default(), &batch_inputs);
            let result = part.append(b).await;
            for (k, tx) in senders {
                let outcome = match &result {
                    Ok(info) => {
                        let j = fresh_for_task.iter().position(|&f| f == k).unwrap_or(0);
                        Ok((info.base_offset + j as i64, info.publish_ts))
                    }
                    Err(e) => Err(e.to_string()),
                };
                let _ = tx.send(Some(outcome));
            }
            result
        });
        let info = task.await.map_err(|_| BrokerError::ShuttingDown)??;
        bytes = info.bytes;
        for (j, &k) in fresh.iter().enumerate() {
            records[k] = Some(Produced {
                partition: p,
                offset: info.base_offset + j as i64,
                publish_ts: info.publish_ts,
                duplicate: false,
            });
        }
    }
    for (k, rx) in pending {
        let (offset, publish_ts) = dedup::outcome(rx).await.map_err(|e| {
            BrokerError::Storage(format!(
                "the original of a duplicate record was not stored: {e}"
            ))
        })?;
        records[k] = Some(Produced {
            partition: p,
            offset,
            publish_ts,
            duplicate: true,
        });
    }
    // Same id twice in one call: the later ones answer with the first.
    for (k, first) in same_as {
        records[k] = records[first].map(|r| Produced {
            duplicate: true,
            ..r
        });
    }
    Ok(GroupResult {
        records: records
            .into_iter()
            .map(|r| r.ok_or_else(|| BrokerError::Storage("a record got no outcome".into())))
            .collect::<Result<_, _>>()?,
        bytes,
    })
}
