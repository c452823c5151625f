//! Prometheus metrics of the node. Counters move on the hot path; gauges
//! that describe state (end offsets, sizes, lag) are refreshed when scraped.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

pub struct Metrics {
    pub registry: Registry,
    pub appended_records: IntCounterVec,
    pub appended_bytes: IntCounterVec,
    pub produce_errors: IntCounterVec,
    pub end_offset: IntGaugeVec,
    pub start_offset: IntGaugeVec,
    pub partition_bytes: IntGaugeVec,
    pub consumer_lag: IntGaugeVec,
    pub connections: IntGaugeVec,
    pub connections_total: IntCounterVec,
    pub append_queue: IntGaugeVec,
    pub fsync_seconds: Histogram,
    pub memory_reserved: IntGauge,
    pub memory_budget: IntGauge,
    pub tail_cache_bytes: IntGauge,
    pub skipped_records: IntCounterVec,
    pub protocol_errors: IntCounterVec,
    pub duplicate_batches: IntCounterVec,
    pub denials: IntCounterVec,
    pub refused_connections: IntCounterVec,
    pub quota_hits: IntCounterVec,
    pub audit_events: IntCounterVec,
    pub audit_dropped: prometheus::IntCounter,
    pub tenant_connections: IntGaugeVec,
    pub tenant_storage: IntGaugeVec,
    pub bans: prometheus::IntCounter,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let stream = &["tenant", "namespace", "stream"];
        let part = &["tenant", "namespace", "stream", "partition"];
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let appended_records = counter(
            "fjord_appended_records_total",
            "Records appended per stream.",
            stream,
        );
        let appended_bytes = counter(
            "fjord_appended_bytes_total",
            "Batch bytes appended per stream.",
            stream,
        );
        let produce_errors = counter(
            "fjord_produce_errors_total",
            "Produce requests refused, by error code.",
            &["code"],
        );
        let end_offset = gauge(
            "fjord_partition_end_offset",
            "Offset after the last readable record.",
            part,
        );
        let start_offset = gauge(
            "fjord_partition_start_offset",
            "First offset still stored.",
            part,
        );
        let partition_bytes = gauge(
            "fjord_partition_size_bytes",
            "Bytes stored per partition.",
            part,
        );
        let consumer_lag = gauge(
            "fjord_consumer_lag",
            "Records between a named consumer's committed position and the end.",
            &["tenant", "namespace", "stream", "consumer", "partition"],
        );
        let connections = gauge(
            "fjord_connections",
            "Open client connections.",
            &["protocol"],
        );
        let connections_total = counter(
            "fjord_connections_total",
            "Client connections accepted.",
            &["protocol"],
        );
        let append_queue = gauge(
            "fjord_partition_append_queue",
            "Appends waiting in a partition's bounded queue.",
            part,
        );
        let fsync_seconds = Histogram::with_opts(
            HistogramOpts::new("fjord_fsync_seconds", "Latency of log fsyncs.").buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ]),
        )
        .expect("valid metric");
        registry
            .register(Box::new(fsync_seconds.clone()))
            .expect("unique metric");
        let single = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let memory_reserved = single(
            "fjord_memory_reserved_bytes",
            "Message bytes in flight, reserved from the memory budget.",
        );
        let skipped_records = counter(
            "fjord_subscriber_skipped_records_total",
            "Records a live subscriber never got because retention or an ephemeral ring dropped them first.",
            &["protocol"],
        );
        let protocol_errors = counter(
            "fjord_protocol_errors_total",
            "Connections closed for bad input, by protocol and reason (MQTT: the 5.0 reason code).",
            &["protocol", "reason"],
        );
        let duplicate_batches = counter(
            "fjord_duplicate_batches_total",
            "Retried batches of idempotent producers acknowledged without being stored again.",
            stream,
        );
        let denials = counter(
            "fjord_authorization_denials_total",
            "Requests refused by ACL rules or tenant isolation, by protocol and action.",
            &["protocol", "action"],
        );
        let refused_connections = counter(
            "fjord_connections_refused_total",
            "Connections closed on accept: banned address, per-IP or node limit.",
            &["listener", "reason"],
        );
        let quota_hits = counter(
            "fjord_quota_exceeded_total",
            "Requests held back or refused by a tenant's or user's quota, by protocol, tenant and quota.",
            &["protocol", "tenant", "quota"],
        );
        let audit_events = counter(
            "fjord_audit_events_total",
            "Audit events recorded, by kind.",
            &["kind"],
        );
        let audit_dropped = prometheus::IntCounter::new(
            "fjord_audit_dropped_total",
            "Audit events logged but not appended to the audit stream (its queue was full).",
        )
        .expect("valid metric");
        registry
            .register(Box::new(audit_dropped.clone()))
            .expect("unique metric");
        let tenant_connections = gauge(
            "fjord_tenant_connections",
            "Open MQTT and Kafka connections per tenant.",
            &["tenant"],
        );
        let tenant_storage = gauge(
            "fjord_tenant_storage_bytes",
            "Bytes stored by each tenant's streams (measured every few seconds).",
            &["tenant"],
        );
        let bans = prometheus::IntCounter::new(
            "fjord_auth_bans_total",
            "Addresses banned for repeated failed logins.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(bans.clone()))
            .expect("unique metric");
        let memory_budget = single(
            "fjord_memory_budget_bytes",
            "The node's budget for message bytes in flight.",
        );
        let tail_cache_bytes = single(
            "fjord_tail_cache_bytes",
            "Newest batches kept in memory for live readers, all partitions.",
        );
        Self {
            registry,
            tail_cache_bytes,
            appended_records,
            appended_bytes,
            produce_errors,
            end_offset,
            start_offset,
            partition_bytes,
            consumer_lag,
            connections,
            connections_total,
            append_queue,
            fsync_seconds,
            memory_reserved,
            memory_budget,
            skipped_records,
            protocol_errors,
            duplicate_batches,
            denials,
            refused_connections,
            quota_hits,
            audit_events,
            audit_dropped,
            tenant_connections,
            tenant_storage,
            bans,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metrics.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
