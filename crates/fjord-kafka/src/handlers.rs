//! One function per API: a decoded request in, the response body out.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use fjord_broker::{BrokerError, Position};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, BrokerId, FetchRequest, FetchResponse, ListOffsetsRequest,
    ListOffsetsResponse, MetadataRequest, MetadataResponse, ProduceRequest, ProduceResponse,
    RequestKind, ResponseKind, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};

use crate::names::{stream_for_topic, topic_for_stream};
use crate::producers::{PartitionProducers, Verdict, REBUILD_BYTES};
use crate::server::Session;
use fjord_auth::Action;

/// The APIs served and their versions: what ApiVersions advertises and what
/// requests are checked against. Lower bounds: RecordBatch v2 only (Produce
/// v3+, Fetch v4+); upper bounds: before topic ids replace names.
pub const SUPPORTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 9),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 7),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::OffsetCommit, 2, 8),
    (ApiKey::OffsetFetch, 1, 7),
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::JoinGroup, 0, 7),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 4),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::ListGroups, 0, 4),
    (ApiKey::DescribeCluster, 0, 1),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 5),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::InitProducerId, 0, 5),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::OffsetDelete, 0, 0),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::SaslHandshake, 0, 1),
    (ApiKey::SaslAuthenticate, 0, 2),
];

pub fn supported(api: ApiKey) -> Option<(i16, i16)> {
    SUPPORTED
        .iter()
        .find(|(k, _, _)| *k == api)
        .map(|&(_, min, max)| (min, max))
}

fn code(e: ResponseError) -> i16 {
    e.code()
}

/// The Kafka error code for a broker refusal.
pub fn error_code(e: &BrokerError) -> i16 {
    code(match e {
        BrokerError::NotFound { .. } => ResponseError::UnknownTopicOrPartition,
        BrokerError::Name(_) => ResponseError::InvalidTopicException,
        BrokerError::MessageTooLarge { .. } => ResponseError::MessageTooLarge,
        BrokerError::Invalid(_) => ResponseError::CorruptMessage,
        BrokerError::InvalidRecord(_) => ResponseError::InvalidRecord,
        BrokerError::OffsetOutOfRange { .. } => ResponseError::OffsetOutOfRange,
        BrokerError::StorageFull(_) | BrokerError::Storage(_) => ResponseError::KafkaStorageError,
        BrokerError::QuotaExceeded(_) => ResponseError::PolicyViolation,
        BrokerError::ShuttingDown => ResponseError::NotLeaderOrFollower,
        _ => ResponseError::UnknownServerError,
    })
}

/// The answer to a request of a served API in a version this server does
/// not serve: each partition asked about refused with UNSUPPORTED_VERSION.
pub fn unsupported(req: RequestKind) -> Option<ResponseKind> {
    let err = code(ResponseError::UnsupportedVersion);
    Some(match req {
        RequestKind::Produce(r) => {
            let mut resp = ProduceResponse::default();
            for t in r.topic_data {
                let mut tr = TopicProduceResponse::default();
                tr.name = t.name;
                for p in t.partition_data {
                    let mut pr = PartitionProduceResponse::default();
                    pr.index = p.index;
                    pr.error_code = err;
                    pr.base_offset = -1;
                    pr.log_append_time_ms = -1;
                    pr.log_start_offset = -1;
                    tr.partition_responses.push(pr);
                }
                resp.responses.push(tr);
            }
            ResponseKind::Produce(resp)
        }
        RequestKind::Fetch(r) => {
            let mut resp = FetchResponse::default();
            resp.error_code = err;
            for t in r.topics {
                let mut tr = FetchableTopicResponse::default();
                tr.topic = t.topic;
                for p in t.partitions {
                    let mut pd = PartitionData::default();
                    pd.partition_index = p.partition;
                    pd.error_code = err;
                    pd.high_watermark = -1;
                    pd.last_stable_offset = -1;
                    pd.log_start_offset = -1;
                    pd.preferred_read_replica = BrokerId(-1);
                    tr.partitions.push(pd);
                }
                resp.responses.push(tr);
            }
            ResponseKind::Fetch(resp)
        }
        RequestKind::ListOffsets(r) => {
            let mut resp = ListOffsetsResponse::default();
            for t in r.topics {
                let mut tr = ListOffsetsTopicResponse::default();
                tr.name = t.name;
                for p in t.partitions {
                    let mut pr = ListOffsetsPartitionResponse::default();
                    pr.partition_index = p.partition_index;
                    pr.error_code = err;
                    pr.timestamp = -1;
                    pr.offset = -1;
                    tr.partitions.push(pr);
                }
                resp.topics.push(tr);
            }
            ResponseKind::ListOffsets(resp)
        }
        _ => return None,
    })
}

pub fn api_versions(error: Option<ResponseError>) -> ApiVersionsResponse {
    let mut r = ApiVersionsResponse::default();
    r.error_code = error.map_or(0, code);
    r.api_keys = SUPPORTED
        .iter()
        .map(|&(k, min, max)| {
            let mut v = ApiVersion::default();
            v.api_key = k as i16;
            v.min_version = min;
            v.max_version = max;
            v
        })
        .collect();
    r
}

pub(crate) fn str_bytes(s: String) -> StrBytes {
    StrBytes::from_string(s)
}

pub fn metadata(sh: &Session<'_>, req: MetadataRequest, version: i16) -> MetadataResponse {
    let mut r = MetadataResponse::default();
    let mut b = MetadataResponseBroker::default();
    b.node_id = BrokerId(sh.config.node_id);
    b.host = str_bytes(sh.advertised.host.clone());
    b.port = sh.advertised.port as i32;
    r.brokers = vec![b];
    r.cluster_id = Some(str_bytes(sh.config.cluster_id.clone()));
    r.controller_id = BrokerId(sh.config.node_id);
    // v0: an empty list asks for every topic; v1+: a null list does.
    let names: Option<Vec<String>> = match req.topics {
        None => None,
        Some(t) if t.is_empty() && version == 0 => None,
        Some(t) => Some(
            t.into_iter()
                .filter_map(|t| t.name.map(|n| n.0.to_string()))
                .collect(),
        ),
    };
    let names = match names {
        Some(n) => n,
        None => all_topics(sh),
    };
    // Auto-creation: v4+ says whether it is wanted; older versions always
    // allowed it.
    let create = version < 4 || req.allow_auto_topic_creation;
    r.topics = names
        .into_iter()
        .map(|name| topic_metadata(sh, name, create))
        .collect();
    r
}

/// Every stream of the connection's tenant.
pub(crate) fn all_streams(sh: &Session<'_>) -> Vec<fjord_core::StreamRef> {
    let Ok(namespaces) = sh.broker.list_namespaces(&sh.tenant) else {
        return Vec::new();
    };
    namespaces
        .iter()
        .filter_map(|ns| sh.broker.list_streams(&sh.tenant, &ns.name).ok())
        .flatten()
        .map(|s| s.stream_ref())
        .collect()
}

/// The topics the principal may describe.
fn all_topics(sh: &Session<'_>) -> Vec<String> {
    all_streams(sh)
        .iter()
        .filter(|s| sh.may(Action::Describe, s))
        .map(topic_for_stream)
        .collect()
}

/// Whether Kafka clients may create streams in this stream's namespace
/// (`kafka_auto_create_topics`, on unless a policy turns it off).
fn auto_create_allowed(sh: &Session<'_>, s: &fjord_core::StreamRef) -> bool {
    let defaults = sh.broker.defaults();
    sh.broker
        .get_namespace(&s.tenant, &s.namespace)
        .map(|ns| ns.policy.resolve(defaults).kafka_auto_create_topics)
        .unwrap_or(defaults.kafka_auto_create_topics)
}

/// The stream exists, or is created when the client and the namespace
/// allow it; otherwise the Kafka error code.
fn ensure_topic(sh: &Session<'_>, s: &fjord_core::StreamRef, create: bool) -> Result<u32, i16> {
    match sh.broker.partition_count(s) {
        Ok(n) => Ok(n),
        Err(BrokerError::NotFound { .. }) if create && auto_create_allowed(sh, s) => sh
            .broker
            .ensure_stream(s)
            .and_then(|()| sh.broker.partition_count(s))
            .map_err(|e| error_code(&e)),
        Err(e) => Err(error_code(&e)),
    }
}

fn topic_metadata(sh: &Session<'_>, name: String, create: bool) -> MetadataResponseTopic {
    let mut t = MetadataResponseTopic::default();
    t.name = Some(TopicName(str_bytes(name.clone())));
    let sref = match sh.topic(&name, Action::Describe) {
        Ok(s) => s,
        Err(e) => {
            t.error_code = code(e);
            return t;
        }
    };
    // Auto-creation is writing: it needs `publish` (as an MQTT publish
    // creates its stream).
    let create = create && sh.may(Action::Publish, &sref);
    match ensure_topic(sh, &sref, create) {
        Ok(n) => {
            t.partitions = (0..n as i32)
                .map(|p| {
                    let mut m = MetadataResponsePartition::default();
                    m.partition_index = p;
                    m.leader_id = BrokerId(sh.config.node_id);
                    m.replica_nodes = vec![BrokerId(sh.config.node_id)];
                    m.isr_nodes = vec![BrokerId(sh.config.node_id)];
                    m
                })
                .collect();
        }
        Err(e) => t.error_code = e,
    }
    t
}

/// Splits a produce request's records into whole batches (a client may
/// send several back to back).
fn batches(records: &Bytes) -> Result<Vec<Bytes>, ()> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < records.len() {
        let head = records.get(at..at + 12).ok_or(())?;
        let len = i32::from_be_bytes([head[8], head[9], head[10], head[11]]);
        if len < 0 {
            return Err(());
        }
        let end = at + 12 + len as usize;
        if end > records.len() {
            return Err(());
        }
        out.push(records.slice(at..end));
        at = end;
    }
    Ok(out)
}

pub async fn produce(sh: &Session<'_>, req: ProduceRequest) -> ProduceResponse {
    let mut r = ProduceResponse::default();
    if let Some(q) = sh.quota {
        // Charged up front, as Kafka's quota manager does: a request over
        // the rate is stored and answered, then the connection is muted.
        let (mut msgs, mut bytes) = (0u64, 0u64);
        for t in &req.topic_data {
            for pd in &t.partition_data {
                if let Some(rec) = &pd.records {
                    bytes += rec.len() as u64;
                    msgs += batches(rec).map_or(0, |bs| {
                        bs.iter()
                            .filter_map(|b| fjord_core::batch::BatchHeader::parse(b).ok())
                            .map(|h| h.record_count.max(0) as u64)
                            .sum()
                    });
                }
            }
        }
        let wait = q.publish("kafka", msgs, bytes);
        if !wait.is_zero() {
            let ms = wait.as_millis().min(i32::MAX as u128) as u64;
            sh.throttle_ms
                .store(ms, std::sync::atomic::Ordering::Relaxed);
            r.throttle_time_ms = ms as i32;
        }
    }
    for topic in req.topic_data {
        let name = topic.name.0.to_string();
        let mut tr = TopicProduceResponse::default();
        tr.name = topic.name.clone();
        let sref = sh.topic(&name, Action::Publish);
        let ready = match &sref {
            Err(e) => Err(code(*e)),
            Ok(s) => ensure_topic(sh, s, true).map(|_| ()),
        };
        for pd in topic.partition_data {
            let mut pr = PartitionProduceResponse::default();
            pr.index = pd.index;
            pr.base_offset = -1;
            pr.log_append_time_ms = -1;
            pr.log_start_offset = -1;
            let (Ok(()), Ok(s)) = (&ready, &sref) else {
                pr.error_code = *ready
                    .as_ref()
                    .err()
                    .unwrap_or(&code(ResponseError::InvalidTopicException));
                tr.partition_responses.push(pr);
                continue;
            };
            let Ok(parts) = pd.records.as_ref().map_or(Ok(Vec::new()), batches) else {
                pr.error_code = code(ResponseError::CorruptMessage);
                tr.partition_responses.push(pr);
                continue;
            };
            if pd.index < 0 {
                pr.error_code = code(ResponseError::UnknownTopicOrPartition);
                tr.partition_responses.push(pr);
                continue;
            }
            for (i, b) in parts.into_iter().enumerate() {
                match produce_one(sh, s, pd.index as u32, b).await {
                    Ok((base_offset, publish_ts)) => {
                        if i == 0 {
                            pr.base_offset = base_offset;
                            // Fjord stamps every batch with its append time.
                            pr.log_append_time_ms = publish_ts;
                        }
                    }
                    Err((c, msg)) => {
                        pr.error_code = c;
                        pr.error_message = msg.map(str_bytes);
                        break;
                    }
                }
            }
            if pr.error_code == 0 {
                pr.log_start_offset = sh
                    .broker
                    .resolve(s, pd.index as u32, Position::Earliest)
                    .await
                    .unwrap_or(-1);
            }
            tr.partition_responses.push(pr);
        }
        r.responses.push(tr);
    }
    r
}

type Refusal = (i16, Option<String>);

/// Appends one batch; an idempotent producer's batch (producer id ≥ 0) is
/// first checked against the sequences already stored. Returns the base
/// offset and append time (-1 for a duplicate, whose time is not kept).
async fn produce_one(
    sh: &Session<'_>,
    s: &fjord_core::StreamRef,
    partition: u32,
    b: Bytes,
) -> Result<(i64, i64), Refusal> {
    let h = fjord_core::batch::BatchHeader::parse(&b)
        .map_err(|e| (code(ResponseError::CorruptMessage), Some(e.to_string())))?;
    let append = |b: Bytes| async move {
        sh.broker
            .produce_batch(s, partition, b.to_vec())
            .await
            .map_err(|e| (error_code(&e), Some(e.to_string())))
    };
    if h.producer.producer_id < 0 {
        let info = append(b).await?;
        return Ok((info.base_offset, info.publish_ts));
    }
    if h.attributes & (1 << 4) != 0 {
        return Err((
            code(ResponseError::InvalidTxnState),
            Some("transactions are not supported".into()),
        ));
    }
    let lock = sh.producers.partition(s, partition);
    let mut state = lock.lock().await;
    if !state.rebuilt {
        rebuild_producers(sh, s, partition, &mut state).await;
    }
    match state.check(&h) {
        Verdict::Duplicate(base) => {
            sh.broker
                .metrics()
                .duplicate_batches
                .with_label_values(&[s.tenant.as_str(), s.namespace.as_str(), s.stream.as_str()])
                .inc();
            Ok((base, -1))
        }
        Verdict::Refuse(e) => Err((code(e), None)),
        Verdict::Append => {
            let info = append(b).await?;
            state.record(&h, info.base_offset, info.publish_ts);
            Ok((info.base_offset, info.publish_ts))
        }
    }
}

/// Reads the newest stored batches of a partition (the last 10,000
/// offsets, at most [`REBUILD_BYTES`]) to learn its producers' sequences
/// after a restart.
async fn rebuild_producers(
    sh: &Session<'_>,
    s: &fjord_core::StreamRef,
    partition: u32,
    state: &mut PartitionProducers,
) {
    let Ok(end) = sh.broker.resolve(s, partition, Position::Latest).await else {
        return;
    };
    let start = sh
        .broker
        .resolve(s, partition, Position::Earliest)
        .await
        .unwrap_or(0);
    let mut from = start.max(end - 10_000);
    'window: loop {
        let mut found = Vec::new();
        let (mut at, mut bytes) = (from, 0usize);
        while at < end {
            let Ok(read) = sh
                .broker
                .fetch_batches(s, partition, at, 1 << 20, Duration::ZERO)
                .await
            else {
                return;
            };
            for b in &read.batches {
                bytes += b.len();
                if let Ok(h) = fjord_core::batch::BatchHeader::parse(b) {
                    found.push(h);
                }
            }
            if bytes > REBUILD_BYTES && end - from > 1 {
                // Too much to read: keep only the newer half.
                from += (end - from) / 2;
                continue 'window;
            }
            if read.next_offset <= at {
                break;
            }
            at = read.next_offset;
        }
        for h in found {
            state.record(&h, h.base_offset, h.max_timestamp);
        }
        state.rebuilt = true;
        return;
    }
}

pub fn init_producer_id(sh: &Session<'_>, req: InitProducerIdRequest) -> InitProducerIdResponse {
    let mut r = InitProducerIdResponse::default();
    r.producer_id = ProducerId(-1);
    r.producer_epoch = -1;
    r.ongoing_txn_producer_id = ProducerId(-1);
    r.ongoing_txn_producer_epoch = -1;
    if req.transactional_id.is_some() {
        // Idempotence without transactions: a transactional producer is
        // refused here, before it writes anything.
        r.error_code = code(ResponseError::TransactionalIdAuthorizationFailed);
        return r;
    }
    // A fresh id every time (also when a client asks to bump its epoch,
    // KIP-360): sequences start again at 0 under it.
    r.producer_id = ProducerId(sh.producer_ids.next());
    r.producer_epoch = 0;
    r
}

pub async fn fetch(sh: &Session<'_>, req: FetchRequest) -> FetchResponse {
    let mut r = FetchResponse::default();
    let wait = Duration::from_millis(req.max_wait_ms.clamp(0, 60_000) as u64);
    let deadline = tokio::time::Instant::now() + wait;
    let max_total = if req.max_bytes > 0 {
        req.max_bytes as usize
    } else {
        50 << 20
    };
    let min_bytes = req.min_bytes.max(0) as usize;
    // First pass without waiting; if less than min_bytes came back, wait on
    // the first partition asked for (long poll), then read again.
    let mut waited = false;
    loop {
        let mut total = 0usize;
        r.responses.clear();
        for topic in &req.topics {
            let name = topic.topic.0.to_string();
            let mut tr = FetchableTopicResponse::default();
            tr.topic = topic.topic.clone();
            let sref = sh.topic(&name, Action::Subscribe);
            for p in &topic.partitions {
                let mut pd = PartitionData::default();
                pd.partition_index = p.partition;
                pd.high_watermark = -1;
                pd.last_stable_offset = -1;
                pd.log_start_offset = -1;
                pd.preferred_read_replica = BrokerId(-1);
                let s = match &sref {
                    Ok(s) => s,
                    Err(e) => {
                        pd.error_code = code(not_found_unless_denied(*e));
                        tr.partitions.push(pd);
                        continue;
                    }
                };
                let room = max_total.saturating_sub(total);
                let per = (p.partition_max_bytes.max(0) as usize).min(room);
                if p.partition < 0 {
                    pd.error_code = code(ResponseError::UnknownTopicOrPartition);
                } else if per == 0 && total > 0 {
                    // Out of room: nothing more this time.
                } else {
                    match sh
                        .broker
                        .fetch_batches(
                            s,
                            p.partition as u32,
                            p.fetch_offset,
                            per.max(1),
                            Duration::ZERO,
                        )
                        .await
                    {
                        Ok(read) => {
                            pd.high_watermark = read.high_watermark;
                            pd.last_stable_offset = read.high_watermark;
                            pd.log_start_offset = read.start_offset;
                            // The stored bytes as they are: one span (a
                            // file read) is shared, several are joined.
                            let records = match read.spans.as_slice() {
                                [one] => one.clone(),
                                many => {
                                    let mut b =
                                        BytesMut::with_capacity(many.iter().map(|b| b.len()).sum());
                                    many.iter().for_each(|x| b.extend_from_slice(x));
                                    b.freeze()
                                }
                            };
                            total += records.len();
                            pd.records = Some(records);
                        }
                        Err(e) => pd.error_code = error_code(&e),
                    }
                }
                tr.partitions.push(pd);
            }
            r.responses.push(tr);
        }
        if total >= min_bytes.max(1) || waited || wait.is_zero() {
            return r;
        }
        // Long poll: wait for any requested partition to grow.
        waited = true;
        let mut waits: Vec<WaitFuture> = Vec::new();
        for topic in &req.topics {
            let Some(s) = stream_for_topic(&sh.tenant, &topic.topic.0) else {
                continue;
            };
            for p in topic.partitions.iter().filter(|p| p.partition >= 0) {
                let (broker, s) = (sh.broker.clone(), s.clone());
                let (partition, offset) = (p.partition as u32, p.fetch_offset);
                waits.push(Box::pin(async move {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    let _ = broker.fetch_batches(&s, partition, offset, 1, left).await;
                }));
            }
        }
        if waits.is_empty() {
            return r;
        }
        let _ = tokio::time::timeout_at(deadline, futures_util::future::select_all(waits)).await;
    }
}

type WaitFuture = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

pub async fn list_offsets(sh: &Session<'_>, req: ListOffsetsRequest) -> ListOffsetsResponse {
    let mut r = ListOffsetsResponse::default();
    for topic in req.topics {
        let mut tr = ListOffsetsTopicResponse::default();
        tr.name = topic.name.clone();
        let sref = sh.topic(&topic.name.0, Action::Describe);
        for p in topic.partitions {
            let mut pr = ListOffsetsPartitionResponse::default();
            pr.partition_index = p.partition_index;
            pr.timestamp = -1;
            pr.offset = -1;
            pr.leader_epoch = -1;
            let s = match &sref {
                Ok(s) => s,
                Err(e) => {
                    pr.error_code = code(not_found_unless_denied(*e));
                    tr.partitions.push(pr);
                    continue;
                }
            };
            // -2 earliest, -1 latest, else the first offset at or after
            // the time (ms); none: the end of the log.
            let position = match p.timestamp {
                -2 => Position::Earliest,
                -1 => Position::Latest,
                ts if ts >= 0 => Position::Timestamp(ts),
                _ => {
                    pr.error_code = code(ResponseError::InvalidRequest);
                    tr.partitions.push(pr);
                    continue;
                }
            };
            if p.partition_index < 0 {
                pr.error_code = code(ResponseError::UnknownTopicOrPartition);
            } else {
                let part = p.partition_index as u32;
                match sh.broker.resolve(s, part, position).await {
                    Ok(off) if matches!(position, Position::Timestamp(_)) => {
                        // The first record at or after the time, with its
                        // timestamp; none: -1 (Kafka's "no such offset").
                        let found = sh
                            .broker
                            .fetch(s, part, Position::Offset(off), 1, 1 << 16, Duration::ZERO)
                            .await
                            .ok()
                            .and_then(|f| f.records.into_iter().next());
                        if let Some(rec) = found {
                            pr.offset = rec.offset;
                            pr.timestamp = rec.publish_ts;
                        }
                    }
                    Ok(off) => pr.offset = off,
                    Err(e) => pr.error_code = error_code(&e),
                }
            }
            tr.partitions.push(pr);
        }
        r.topics.push(tr);
    }
    r
}

// ---- consumer groups -------------------------------------------------------

use kafka_protocol::messages::find_coordinator_response::Coordinator as CoordinatorEntry;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponsePartition, OffsetFetchResponseTopic,
};
use kafka_protocol::messages::{
    FindCoordinatorRequest, FindCoordinatorResponse, HeartbeatRequest, HeartbeatResponse,
    JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest, LeaveGroupResponse,
    OffsetCommitRequest, OffsetCommitResponse, OffsetFetchRequest, OffsetFetchResponse,
    SyncGroupRequest, SyncGroupResponse,
};

use crate::groups::JoinArgs;

/// A read of a topic the principal may not touch says so; a malformed
/// name is an unknown partition to readers.
fn not_found_unless_denied(e: ResponseError) -> ResponseError {
    match e {
        ResponseError::TopicAuthorizationFailed => e,
        _ => ResponseError::UnknownTopicOrPartition,
    }
}

fn err_code(r: Result<(), ResponseError>) -> i16 {
    r.err().map_or(0, code)
}

pub fn find_coordinator(
    sh: &Session<'_>,
    req: FindCoordinatorRequest,
    version: i16,
) -> FindCoordinatorResponse {
    let mut r = FindCoordinatorResponse::default();
    let host = str_bytes(sh.advertised.host.clone());
    let port = sh.advertised.port as i32;
    // Groups (key type 0) are coordinated here; transactions are not.
    let refuse = req.key_type != 0;
    if version >= 4 {
        r.coordinators = req
            .coordinator_keys
            .into_iter()
            .map(|key| {
                let mut c = CoordinatorEntry::default();
                let denied = !refuse && !sh.may_group(Action::Describe, &key);
                c.key = key;
                if denied {
                    c.error_code = code(ResponseError::GroupAuthorizationFailed);
                    c.node_id = BrokerId(-1);
                    c.port = -1;
                } else if refuse {
                    c.error_code = code(ResponseError::CoordinatorNotAvailable);
                    c.node_id = BrokerId(-1);
                    c.port = -1;
                } else {
                    c.node_id = BrokerId(sh.config.node_id);
                    c.host = host.clone();
                    c.port = port;
                }
                c
            })
            .collect();
    } else if refuse {
        r.error_code = code(ResponseError::CoordinatorNotAvailable);
        r.node_id = BrokerId(-1);
        r.port = -1;
    } else if !sh.may_group(Action::Describe, &req.key) {
        r.error_code = code(ResponseError::GroupAuthorizationFailed);
        r.node_id = BrokerId(-1);
        r.port = -1;
    } else {
        r.node_id = BrokerId(sh.config.node_id);
        r.host = host;
        r.port = port;
    }
    r
}

pub async fn join_group(
    sh: &Session<'_>,
    req: JoinGroupRequest,
    version: i16,
    client_id: String,
) -> JoinGroupResponse {
    let session = Duration::from_millis(req.session_timeout_ms.clamp(1, 3_600_000) as u64);
    let rebalance = if version >= 1 {
        Duration::from_millis(req.rebalance_timeout_ms.clamp(1, 3_600_000) as u64)
    } else {
        session
    };
    let j = sh
        .groups
        .join(JoinArgs {
            group: sh.group_key(&req.group_id.0),
            member_id: req.member_id.to_string(),
            client_id,
            group_instance_id: req.group_instance_id.map(|s| s.to_string()),
            protocol_type: req.protocol_type.to_string(),
            protocols: req
                .protocols
                .into_iter()
                .map(|p| (p.name.to_string(), p.metadata))
                .collect(),
            session_timeout: session,
            rebalance_timeout: rebalance,
            require_known_id: version >= 4,
        })
        .await;
    let mut r = JoinGroupResponse::default();
    r.error_code = j.error.map_or(0, code);
    r.generation_id = j.generation;
    r.protocol_type = Some(str_bytes(j.protocol_type));
    r.protocol_name = Some(str_bytes(j.protocol));
    r.leader = str_bytes(j.leader);
    r.member_id = str_bytes(j.member_id);
    r.members = j
        .members
        .into_iter()
        .map(|(id, instance, meta)| {
            let mut m = JoinGroupResponseMember::default();
            m.member_id = str_bytes(id);
            m.group_instance_id = instance.map(str_bytes);
            m.metadata = meta;
            m
        })
        .collect();
    r
}

pub async fn sync_group(sh: &Session<'_>, req: SyncGroupRequest) -> SyncGroupResponse {
    let assignments = req
        .assignments
        .into_iter()
        .map(|a| (a.member_id.to_string(), a.assignment))
        .collect();
    let mut r = SyncGroupResponse::default();
    match sh
        .groups
        .sync(
            &sh.group_key(&req.group_id.0),
            &req.member_id,
            req.generation_id,
            assignments,
        )
        .await
    {
        Ok((assignment, ptype, pname)) => {
            r.assignment = assignment;
            r.protocol_type = Some(str_bytes(ptype));
            r.protocol_name = Some(str_bytes(pname));
        }
        Err(e) => r.error_code = code(e),
    }
    r
}

pub fn heartbeat(sh: &Session<'_>, req: HeartbeatRequest) -> HeartbeatResponse {
    let mut r = HeartbeatResponse::default();
    r.error_code = err_code(sh.groups.heartbeat(
        &sh.group_key(&req.group_id.0),
        &req.member_id,
        req.generation_id,
    ));
    r
}

pub fn leave_group(sh: &Session<'_>, req: LeaveGroupRequest, version: i16) -> LeaveGroupResponse {
    let mut r = LeaveGroupResponse::default();
    if version < 3 {
        let out = sh.groups.leave(
            &sh.group_key(&req.group_id.0),
            &[(req.member_id.to_string(), None)],
        );
        r.error_code = out.into_iter().next().map_or(0, err_code);
    } else {
        let ids: Vec<(String, Option<String>)> = req
            .members
            .iter()
            .map(|m| {
                (
                    m.member_id.to_string(),
                    m.group_instance_id.as_ref().map(|i| i.to_string()),
                )
            })
            .collect();
        let out = sh.groups.leave(&sh.group_key(&req.group_id.0), &ids);
        r.members = req
            .members
            .into_iter()
            .zip(out)
            .map(|(m, res)| {
                let mut mr = MemberResponse::default();
                mr.member_id = m.member_id;
                mr.group_instance_id = m.group_instance_id;
                mr.error_code = err_code(res);
                mr
            })
            .collect();
    }
    r
}

/// Committed offsets are Fjord cursors: the consumer is the group id.
pub fn offset_commit(sh: &Session<'_>, req: OffsetCommitRequest) -> OffsetCommitResponse {
    let group = req.group_id.0.to_string();
    // Members of a group commit within their generation; a standalone
    // consumer (generation -1, no member id) commits freely.
    let membership = if !sh.may_group(Action::Subscribe, &group) {
        Err(ResponseError::GroupAuthorizationFailed)
    } else if req.generation_id_or_member_epoch >= 0 || !req.member_id.is_empty() {
        sh.groups.check_member(
            &sh.group_key(&group),
            &req.member_id,
            req.generation_id_or_member_epoch,
        )
    } else {
        Ok(())
    };
    let mut r = OffsetCommitResponse::default();
    for t in req.topics {
        let mut tr = OffsetCommitResponseTopic::default();
        tr.name = t.name.clone();
        let sref = sh.topic(&t.name.0, Action::Subscribe);
        for p in t.partitions {
            let mut pr = OffsetCommitResponsePartition::default();
            pr.partition_index = p.partition_index;
            pr.error_code = match (&membership, &sref) {
                (Err(e), _) => code(*e),
                (Ok(()), Err(e)) => code(not_found_unless_denied(*e)),
                (Ok(()), Ok(s)) if p.partition_index >= 0 => {
                    match sh.broker.commit(
                        s,
                        &group,
                        &[(p.partition_index as u32, p.committed_offset)],
                    ) {
                        Ok(()) => 0,
                        Err(BrokerError::Name(_)) => code(ResponseError::InvalidGroupId),
                        Err(BrokerError::Invalid(_)) => code(ResponseError::OffsetOutOfRange),
                        Err(e) => error_code(&e),
                    }
                }
                _ => code(ResponseError::UnknownTopicOrPartition),
            };
            tr.partitions.push(pr);
        }
        r.topics.push(tr);
    }
    r
}

pub fn offset_fetch(sh: &Session<'_>, req: OffsetFetchRequest) -> OffsetFetchResponse {
    let group = req.group_id.0.to_string();
    let mut r = OffsetFetchResponse::default();
    if !sh.may_group(Action::Describe, &group) {
        r.error_code = code(ResponseError::GroupAuthorizationFailed);
        return r;
    }
    let topics: Vec<(String, Option<Vec<i32>>)> = match req.topics {
        Some(ts) => ts
            .into_iter()
            .map(|t| (t.name.0.to_string(), Some(t.partition_indexes)))
            .collect(),
        // Every topic the group has committed offsets for.
        None => all_topics(sh).into_iter().map(|t| (t, None)).collect(),
    };
    for (name, parts) in topics {
        let mut tr = OffsetFetchResponseTopic::default();
        tr.name = TopicName(str_bytes(name.clone()));
        let committed: HashMap<u32, i64> = sh
            .topic(&name, Action::Describe)
            .ok()
            .and_then(|s| sh.broker.committed(&s, &group).ok())
            .map(|v| v.into_iter().collect())
            .unwrap_or_default();
        let wanted: Vec<i32> = match parts {
            Some(p) => p,
            None => {
                let mut p: Vec<i32> = committed.keys().map(|&p| p as i32).collect();
                p.sort_unstable();
                p
            }
        };
        if wanted.is_empty() {
            continue;
        }
        for p in wanted {
            let mut pr = OffsetFetchResponsePartition::default();
            pr.partition_index = p;
            pr.committed_offset = committed.get(&(p as u32)).copied().unwrap_or(-1);
            pr.committed_leader_epoch = -1;
            pr.metadata = Some(StrBytes::from_static_str(""));
            tr.partitions.push(pr);
        }
        r.topics.push(tr);
    }
    r
}

use std::collections::HashMap;

// ---- introspection ---------------------------------------------------------

use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::DescribeClusterResponse;

pub fn describe_cluster(sh: &Session<'_>) -> DescribeClusterResponse {
    let mut r = DescribeClusterResponse::default();
    r.endpoint_type = 1;
    r.cluster_id = str_bytes(sh.config.cluster_id.clone());
    r.controller_id = BrokerId(sh.config.node_id);
    let mut b = DescribeClusterBroker::default();
    b.broker_id = BrokerId(sh.config.node_id);
    b.host = str_bytes(sh.advertised.host.clone());
    b.port = sh.advertised.port as i32;
    r.brokers = vec![b];
    r
}

// ---- topic administration ------------------------------------------------

use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{
    CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicsRequest, CreateTopicsResponse,
    DeleteTopicsRequest, DeleteTopicsResponse,
};

fn admin_error(e: &BrokerError) -> i16 {
    code(match e {
        BrokerError::AlreadyExists { .. } => ResponseError::TopicAlreadyExists,
        BrokerError::Invalid(_) => ResponseError::InvalidConfig,
        BrokerError::Name(_) => ResponseError::InvalidTopicException,
        BrokerError::NotFound { .. } => ResponseError::UnknownTopicOrPartition,
        _ => return error_code(e),
    })
}

pub fn create_topics(sh: &Session<'_>, req: CreateTopicsRequest) -> CreateTopicsResponse {
    let mut r = CreateTopicsResponse::default();
    for t in req.topics {
        let mut tr = CreatableTopicResult::default();
        tr.name = t.name.clone();
        tr.num_partitions = -1;
        tr.replication_factor = -1;
        let outcome = (|| {
            let s = stream_for_topic(&sh.tenant, &t.name.0).ok_or((
                code(ResponseError::InvalidTopicException),
                "not a valid stream name".to_string(),
            ))?;
            if !sh.may(Action::Admin, &s) {
                return Err((
                    code(ResponseError::TopicAuthorizationFailed),
                    "not authorized to create it".to_string(),
                ));
            }
            // One node keeps one copy: -1 (the default) or 1.
            if t.replication_factor > 1 {
                return Err((
                    code(ResponseError::InvalidReplicationFactor),
                    "this node keeps one copy of each partition".to_string(),
                ));
            }
            let partitions = match t.num_partitions {
                -1 => None,
                n if n >= 1 => Some(n as u32),
                _ => {
                    return Err((
                        code(ResponseError::InvalidPartitions),
                        "at least one partition".to_string(),
                    ))
                }
            };
            let mut policy = fjord_core::Policy::default();
            for c in &t.configs {
                configs::apply(&mut policy, &c.name, c.value.as_deref())
                    .map_err(|e| (code(ResponseError::InvalidConfig), e))?;
            }
            if req.validate_only {
                policy
                    .validate()
                    .map_err(|e| (code(ResponseError::InvalidConfig), e))?;
                return Ok(partitions.unwrap_or(1));
            }
            let d = sh
                .broker
                .create_stream(&s, partitions, policy)
                .map_err(|e| (admin_error(&e), e.to_string()))?;
            Ok(d.info.partitions)
        })();
        match outcome {
            Ok(n) => {
                tr.num_partitions = n as i32;
                tr.replication_factor = 1;
            }
            Err((c, msg)) => {
                tr.error_code = c;
                tr.error_message = Some(str_bytes(msg));
            }
        }
        r.topics.push(tr);
    }
    r
}

pub async fn delete_topics(
    sh: &Session<'_>,
    req: DeleteTopicsRequest,
    version: i16,
) -> DeleteTopicsResponse {
    let names: Vec<TopicName> = if version >= 6 {
        req.topics.into_iter().filter_map(|t| t.name).collect()
    } else {
        req.topic_names
    };
    let mut r = DeleteTopicsResponse::default();
    for name in names {
        let mut d = DeletableTopicResult::default();
        d.name = Some(name.clone());
        d.error_code = match stream_for_topic(&sh.tenant, &name.0) {
            None => code(ResponseError::UnknownTopicOrPartition),
            Some(s) if !sh.may(Action::Admin, &s) => code(ResponseError::TopicAuthorizationFailed),
            Some(s) => match sh.broker.delete_stream(&s).await {
                Ok(()) => {
                    sh.producers.forget(&s);
                    0
                }
                Err(e) => admin_error(&e),
            },
        };
        r.responses.push(d);
    }
    r
}

pub fn create_partitions(
    sh: &Session<'_>,
    req: CreatePartitionsRequest,
) -> CreatePartitionsResponse {
    let mut r = CreatePartitionsResponse::default();
    for t in req.topics {
        let mut tr = CreatePartitionsTopicResult::default();
        tr.name = t.name.clone();
        let res = match stream_for_topic(&sh.tenant, &t.name.0) {
            None => Err((code(ResponseError::UnknownTopicOrPartition), String::new())),
            Some(s) if !sh.may(Action::Admin, &s) => Err((
                code(ResponseError::TopicAuthorizationFailed),
                "not authorized to alter it".to_string(),
            )),
            Some(s) => match sh.broker.partition_count(&s) {
                Err(e) => Err((admin_error(&e), e.to_string())),
                Ok(n) if t.count <= n as i32 => Err((
                    code(ResponseError::InvalidPartitions),
                    format!("the topic has {n} partitions; the count can only grow"),
                )),
                Ok(_) if req.validate_only => Ok(()),
                Ok(_) => sh
                    .broker
                    .update_stream(&s, Some(t.count as u32), None)
                    .map(|_| ())
                    .map_err(|e| (admin_error(&e), e.to_string())),
            },
        };
        if let Err((c, msg)) = res {
            tr.error_code = c;
            tr.error_message = Some(str_bytes(msg));
        }
        r.results.push(tr);
    }
    r
}

use crate::configs;
