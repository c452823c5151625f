//! Produce and consume over plain HTTP, and named consumers' positions.

use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap};
use axum::response::IntoResponse;
use axum::Json;
use bytes::Bytes;
use fjord_broker::Position;
use fjord_core::RecordInput;
use serde::Deserialize;

use crate::admin::{parse_json, stream_ref};
use crate::codec::{record_out, ProduceBody, RecordIn, ValueFormat};
use crate::error::{ApiError, ApiResult};
use crate::AppState;

/// Long polls wait at most this long.
pub const WAIT_MS_MAX: u64 = 30_000;
pub const MAX_RECORDS_MAX: usize = 10_000;
pub const FETCH_BYTES_MAX: usize = 16 * 1024 * 1024;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ProduceQuery {
    #[serde(default)]
    partition: Option<u32>,
    /// For `application/octet-stream` bodies.
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    event_ts: Option<i64>,
}

/// `POST /records`: a JSON body (one record or `{"records": [...]}`), or a
/// raw `application/octet-stream` value. Answers once every record is as
/// durable as the stream's policy says.
pub async fn produce(
    State(s): State<AppState>,
    who: Option<axum::Extension<std::sync::Arc<fjord_auth::Principal>>>,
    Path((t, ns, st)): Path<(String, String, String)>,
    query: Result<Query<ProduceQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: crate::memory::RawBody,
) -> ApiResult<impl IntoResponse> {
    let Query(q) = query.map_err(|e| ApiError::bad_request("invalid_argument", e.body_text()))?;
    let body = crate::memory::body_bytes(body)?;
    let r = stream_ref(&t, &ns, &st)?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let (records, partition) = if content_type.starts_with("application/octet-stream") {
        let rec = RecordInput {
            key: q.key.map(Bytes::from),
            value: Some(body),
            headers: Vec::new(),
            event_ts: q.event_ts,
        };
        (vec![rec], q.partition)
    } else {
        match parse_json::<ProduceBody>(&body)? {
            ProduceBody::One(rec) => (vec![(*rec).into_input()?], q.partition),
            ProduceBody::Many { records, partition } => {
                if records.is_empty() {
                    return Err(ApiError::bad_request(
                        "invalid_argument",
                        "`records` is empty",
                    ));
                }
                let recs = records
                    .into_iter()
                    .map(RecordIn::into_input)
                    .collect::<Result<Vec<_>, _>>()?;
                (recs, partition.or(q.partition))
            }
        }
    };
    if let Some(p) = who {
        // Over the publish rate: refused before anything is stored, with
        // when to come back.
        let q = s.broker.quota_request(&p);
        let bytes: u64 = records
            .iter()
            .map(|r| r.value.as_ref().map_or(0, |v| v.len()) as u64)
            .sum();
        let wait = q.publish_wait(records.len() as u64, bytes);
        if !wait.is_zero() {
            s.broker
                .metrics()
                .quota_hits
                .with_label_values(&["http", p.tenant.as_str(), "publish_rate"])
                .inc();
            return Err(ApiError::new(
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                "quota_exceeded",
                format!("over the publish rate of {}; retry later", p.name()),
            )
            .retry_after(wait));
        }
        q.publish("http", records.len() as u64, bytes);
    }
    let produced = s.broker.produce(&r, records, partition).await?;
    Ok(Json(serde_json::json!({ "offsets": produced })))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ConsumeQuery {
    #[serde(default)]
    partition: Option<u32>,
    #[serde(default)]
    offset: Option<i64>,
    /// ms since the epoch: start at the first record published at or after.
    #[serde(default)]
    timestamp: Option<i64>,
    /// `earliest` or `latest`.
    #[serde(default)]
    from: Option<String>,
    /// Start at this named consumer's committed position.
    #[serde(default)]
    consumer: Option<String>,
    #[serde(default)]
    max_records: Option<usize>,
    #[serde(default)]
    max_bytes: Option<usize>,
    #[serde(default)]
    wait_ms: Option<u64>,
    #[serde(default)]
    format: Option<ValueFormat>,
}

pub fn position_of(
    offset: Option<i64>,
    timestamp: Option<i64>,
    from: Option<&str>,
) -> ApiResult<Option<Position>> {
    let given = offset.is_some() as u8 + timestamp.is_some() as u8 + from.is_some() as u8;
    if given > 1 {
        return Err(ApiError::bad_request(
            "invalid_argument",
            "give at most one of `offset`, `timestamp` and `from`",
        ));
    }
    Ok(match (offset, timestamp, from) {
        (Some(o), _, _) => Some(Position::Offset(o)),
        (_, Some(ts), _) => Some(Position::Timestamp(ts)),
        (_, _, Some("earliest")) => Some(Position::Earliest),
        (_, _, Some("latest")) => Some(Position::Latest),
        (_, _, Some(other)) => {
            return Err(ApiError::bad_request(
                "invalid_argument",
                format!("`from` must be `earliest` or `latest`, not {other:?}"),
            ))
        }
        _ => None,
    })
}

/// `GET /records`: reads one partition from an offset, a time, or a named
/// consumer's position; with `wait_ms`, waits for new records (long poll).
pub async fn consume(
    State(s): State<AppState>,
    Path((t, ns, st)): Path<(String, String, String)>,
    query: Result<Query<ConsumeQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<impl IntoResponse> {
    let Query(q) = query.map_err(|e| ApiError::bad_request("invalid_argument", e.body_text()))?;
    let r = stream_ref(&t, &ns, &st)?;
    let partition = q.partition.unwrap_or(0);
    let pos = match position_of(q.offset, q.timestamp, q.from.as_deref())? {
        Some(p) => p,
        None => match &q.consumer {
            Some(c) => s
                .broker
                .committed(&r, c)?
                .into_iter()
                .find(|(p, _)| *p == partition)
                .map_or(Position::Earliest, |(_, o)| Position::Offset(o)),
            None => Position::Earliest,
        },
    };
    let wait = Duration::from_millis(q.wait_ms.unwrap_or(0).min(WAIT_MS_MAX));
    let max_records = q.max_records.unwrap_or(500).clamp(1, MAX_RECORDS_MAX);
    let max_bytes = q.max_bytes.unwrap_or(1024 * 1024).clamp(1, FETCH_BYTES_MAX);
    // Batches read plus their decoded form: about twice the bytes.
    let reserve = (2 * max_bytes as u64).min(s.broker.memory().capacity_bytes());
    let _held = s.broker.memory().reserve(reserve).await?;
    let f = s
        .broker
        .fetch(&r, partition, pos, max_records, max_bytes, wait)
        .await?;
    let format = q.format.unwrap_or_default();
    let records: Vec<_> = f
        .records
        .into_iter()
        .map(|rec| record_out(partition, rec, format))
        .collect();
    Ok(Json(serde_json::json!({
        "records": records,
        "next_offset": f.next_offset,
        "start_offset": f.start_offset,
        "high_watermark": f.high_watermark,
    })))
}

pub async fn list_consumers(
    State(s): State<AppState>,
    Path((t, ns, st)): Path<(String, String, String)>,
) -> ApiResult<impl IntoResponse> {
    let r = stream_ref(&t, &ns, &st)?;
    let list: Vec<_> = s
        .broker
        .consumers(&r)?
        .into_iter()
        .map(|(name, offsets)| serde_json::json!({"name": name, "offsets": offsets_json(&offsets)}))
        .collect();
    Ok(Json(serde_json::json!({ "consumers": list })))
}

fn offsets_json(offsets: &[(u32, i64)]) -> Vec<serde_json::Value> {
    offsets
        .iter()
        .map(|(p, o)| serde_json::json!({"partition": p, "offset": o}))
        .collect()
}

pub async fn get_consumer(
    State(s): State<AppState>,
    Path((t, ns, st, c)): Path<(String, String, String, String)>,
) -> ApiResult<impl IntoResponse> {
    let r = stream_ref(&t, &ns, &st)?;
    let offsets = s.broker.committed(&r, &c)?;
    Ok(Json(
        serde_json::json!({"name": c, "offsets": offsets_json(&offsets)}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CommitBody {
    offsets: Vec<CommitOffset>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CommitOffset {
    partition: u32,
    offset: i64,
}

/// `PUT /consumers/{name}`: stores the consumer's next offsets (the offset
/// of the next record to read, as Kafka commits).
pub async fn commit_consumer(
    State(s): State<AppState>,
    Path((t, ns, st, c)): Path<(String, String, String, String)>,
    body: crate::memory::RawBody,
) -> ApiResult<impl IntoResponse> {
    let r = stream_ref(&t, &ns, &st)?;
    let req: CommitBody = parse_json(&crate::memory::body_bytes(body)?)?;
    let offsets: Vec<(u32, i64)> = req
        .offsets
        .iter()
        .map(|o| (o.partition, o.offset))
        .collect();
    s.broker.commit(&r, &c, &offsets)?;
    Ok(Json(
        serde_json::json!({"name": c, "offsets": offsets_json(&s.broker.committed(&r, &c)?)}),
    ))
}
