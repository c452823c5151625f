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

use crate::names::{stream_for_topic, topic_for_stream};
use crate::server::Shared;

/// The APIs served and their versions: what ApiVersions advertises and what
/// requests are checked against. Lower bounds: RecordBatch v2 only (Produce
/// v3+, Fetch v4+); upper bounds: before topic ids replace names.
pub const SUPPORTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 9),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 7),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::ApiVersions, 0, 3),
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
        BrokerError::OffsetOutOfRange { .. } => ResponseError::OffsetOutOfRange,
        BrokerError::StorageFull(_) | BrokerError::Storage(_) => ResponseError::KafkaStorageError,
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

fn str_bytes(s: String) -> StrBytes {
    StrBytes::from_string(s)
}

pub fn metadata(sh: &Shared, req: MetadataRequest, version: i16) -> MetadataResponse {
    let mut r = MetadataResponse::default();
    let mut b = MetadataResponseBroker::default();
    b.node_id = BrokerId(sh.config.node_id);
    b.host = str_bytes(sh.config.advertised_host.clone());
    b.port = sh.config.advertised_port as i32;
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

fn all_topics(sh: &Shared) -> Vec<String> {
    let Ok(namespaces) = sh.broker.list_namespaces(&sh.config.tenant) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for ns in namespaces {
        if let Ok(streams) = sh.broker.list_streams(&sh.config.tenant, &ns.name) {
            out.extend(
                streams
                    .into_iter()
                    .map(|s| topic_for_stream(&s.stream_ref())),
            );
        }
    }
    out
}

fn topic_metadata(sh: &Shared, name: String, create: bool) -> MetadataResponseTopic {
    let mut t = MetadataResponseTopic::default();
    t.name = Some(TopicName(str_bytes(name.clone())));
    let Some(sref) = stream_for_topic(&sh.config.tenant, &name) else {
        t.error_code = code(ResponseError::InvalidTopicException);
        return t;
    };
    let count = match sh.broker.partition_count(&sref) {
        Ok(n) => Ok(n),
        Err(BrokerError::NotFound { .. }) if create => sh
            .broker
            .ensure_stream(&sref)
            .and_then(|()| sh.broker.partition_count(&sref)),
        Err(e) => Err(e),
    };
    match count {
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
        Err(e) => t.error_code = error_code(&e),
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

pub async fn produce(sh: &Shared, req: ProduceRequest) -> ProduceResponse {
    let mut r = ProduceResponse::default();
    for topic in req.topic_data {
        let name = topic.name.0.to_string();
        let mut tr = TopicProduceResponse::default();
        tr.name = topic.name.clone();
        let sref = stream_for_topic(&sh.config.tenant, &name);
        let ready = match &sref {
            None => Err(code(ResponseError::InvalidTopicException)),
            Some(s) => sh.broker.ensure_stream(s).map_err(|e| error_code(&e)),
        };
        for pd in topic.partition_data {
            let mut pr = PartitionProduceResponse::default();
            pr.index = pd.index;
            pr.base_offset = -1;
            pr.log_append_time_ms = -1;
            pr.log_start_offset = -1;
            let (Ok(()), Some(s)) = (&ready, &sref) else {
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
                match sh
                    .broker
                    .produce_batch(s, pd.index as u32, b.to_vec())
                    .await
                {
                    Ok(info) => {
                        if i == 0 {
                            pr.base_offset = info.base_offset;
                            // Fjord stamps every batch with its append time.
                            pr.log_append_time_ms = info.publish_ts;
                        }
                    }
                    Err(e) => {
                        pr.error_code = error_code(&e);
                        pr.error_message = Some(str_bytes(e.to_string()));
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

pub async fn fetch(sh: &Shared, req: FetchRequest) -> FetchResponse {
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
            let sref = stream_for_topic(&sh.config.tenant, &name);
            for p in &topic.partitions {
                let mut pd = PartitionData::default();
                pd.partition_index = p.partition;
                pd.high_watermark = -1;
                pd.last_stable_offset = -1;
                pd.log_start_offset = -1;
                pd.preferred_read_replica = BrokerId(-1);
                let Some(s) = &sref else {
                    pd.error_code = code(ResponseError::UnknownTopicOrPartition);
                    tr.partitions.push(pd);
                    continue;
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
                            let mut bytes = BytesMut::new();
                            for b in &read.batches {
                                bytes.extend_from_slice(b);
                            }
                            total += bytes.len();
                            pd.records = Some(bytes.freeze());
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
        let mut waits = Vec::new();
        for topic in &req.topics {
            if let Some(s) = stream_for_topic(&sh.config.tenant, &topic.topic.0) {
                for p in &topic.partitions {
                    if p.partition >= 0 {
                        waits.push((s.clone(), p.partition as u32, p.fetch_offset));
                    }
                }
            }
        }
        let broker = sh.broker.clone();
        let all: Vec<WaitFuture> = waits
            .into_iter()
            .map(|(s, p, off)| {
                let broker = broker.clone();
                Box::pin(async move {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    let _ = broker.fetch_batches(&s, p, off, 1, left).await;
                }) as WaitFuture
            })
            .collect();
        if all.is_empty() {
            return r;
        }
        let _ = tokio::time::timeout_at(deadline, futures_select_any(all)).await;
    }
}

type WaitFuture = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Resolves when the first of `futs` does.
async fn futures_select_any(futs: Vec<WaitFuture>) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
    let mut handles = Vec::new();
    for f in futs {
        let tx = tx.clone();
        handles.push(tokio::spawn(async move {
            f.await;
            let _ = tx.send(()).await;
        }));
    }
    drop(tx);
    let _ = rx.recv().await;
    for h in handles {
        h.abort();
    }
}

pub async fn list_offsets(sh: &Shared, req: ListOffsetsRequest) -> ListOffsetsResponse {
    let mut r = ListOffsetsResponse::default();
    for topic in req.topics {
        let mut tr = ListOffsetsTopicResponse::default();
        tr.name = topic.name.clone();
        let sref = stream_for_topic(&sh.config.tenant, &topic.name.0);
        for p in topic.partitions {
            let mut pr = ListOffsetsPartitionResponse::default();
            pr.partition_index = p.partition_index;
            pr.timestamp = -1;
            pr.offset = -1;
            pr.leader_epoch = -1;
            let Some(s) = &sref else {
                pr.error_code = code(ResponseError::UnknownTopicOrPartition);
                tr.partitions.push(pr);
                continue;
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
