//! WebSocket at `/v1/streams/{tenant}/{namespace}/{stream}/ws`.
//!
//! * `?mode=publish`: every text frame is a record in the JSON of the produce
//!   API (an `id` field is echoed back), every binary frame a raw value. Each
//!   gets, in order, `{"ack": {"seq", "id", "partition", "offset"}}` once it
//!   is durable per the stream's policy, or `{"error": {...}, "seq", "id"}`.
//!   Frames that arrive together are appended together (one group commit).
//! * `?mode=subscribe` (default): from `from=earliest|latest`, `offset` or
//!   `timestamp`, on one `partition` or all: first a
//!   `{"subscribed": [{"partition", "offset"}]}` frame saying where reading
//!   starts, then records as text frames in the JSON of the consume API,
//!   following the tail live. A slow
//!   client falls behind in the log, never in server memory.
//!
//! Either way the grant the socket was opened under is checked again when
//! the ACL rules change: once revoked, the socket gets a `forbidden` error
//! (per pending frame when publishing) and is closed with 1008.

use std::sync::Arc;

use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::response::Response;
use fjord_auth::{Action, Principal, Resource};
use fjord_broker::{Broker, BrokerError, Followed, Position};
use fjord_core::{RecordInput, StreamRef};
use futures_util::{FutureExt, SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::admin::stream_ref;
use crate::codec::{record_out, RecordIn, ValueFormat};
use crate::error::{ApiError, ApiResult};
use crate::records::position_of;
use crate::{AppState, BODY_BYTES_MAX};

/// The right a socket was opened with, re-checked under changed rules: a
/// long-lived connection must not outlive the rule that let it in.
struct Grant {
    principal: Arc<Principal>,
    action: Action,
    /// The ACL generation it was last checked under.
    checked: u64,
}

impl Grant {
    fn new(broker: &Broker, principal: Arc<Principal>, action: Action) -> Self {
        // Checked just now, by the access layer, before the upgrade.
        Grant {
            principal,
            action,
            checked: broker.acl_generation(),
        }
    }

    /// Whether the grant still holds on `r`: one atomic load unless the
    /// rules changed.
    fn holds(&mut self, broker: &Broker, r: &StreamRef) -> bool {
        let generation = broker.acl_generation();
        if generation == self.checked {
            return true;
        }
        let ok = broker.authorize_for(
            "http",
            &self.principal,
            &r.tenant,
            self.action,
            Resource::Stream {
                namespace: r.namespace.as_str(),
                stream: r.stream.as_str(),
                topic: None,
            },
        );
        if ok {
            self.checked = generation;
        }
        ok
    }

    fn revoked(&self, r: &StreamRef) -> Value {
        json!({"error": {
            "code": "forbidden",
            "message": format!("{} may no longer {} {r}", self.principal.name(), self.action.as_str()),
        }})
    }
}

/// Closes a socket whose grant was revoked (1008: policy violation).
async fn close_revoked<S: SinkExt<Message> + Unpin>(tx: &mut S) {
    let _ = tx
        .send(Message::Close(Some(axum::extract::ws::CloseFrame {
            code: 1008,
            reason: Utf8Bytes::from_static("access revoked"),
        })))
        .await;
}

/// Frames appended as one group at most.
const PUBLISH_GROUP_MAX: usize = 500;
/// Bytes of frames gathered into one group before it is appended.
const PUBLISH_GROUP_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Records encoded and waiting for the socket at most, per connection.
const SUBSCRIBE_QUEUE: usize = 256;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct WsQuery {
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    partition: Option<u32>,
    #[serde(default)]
    offset: Option<i64>,
    #[serde(default)]
    timestamp: Option<i64>,
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    format: Option<ValueFormat>,
}

enum Mode {
    Publish,
    Subscribe {
        partitions: Vec<u32>,
        from: Position,
        format: ValueFormat,
    },
}

pub async fn upgrade(
    State(s): State<AppState>,
    who: Option<axum::Extension<Arc<fjord_auth::Principal>>>,
    Path((t, ns, st)): Path<(String, String, String)>,
    query: Result<Query<WsQuery>, axum::extract::rejection::QueryRejection>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    let ws = ws.map_err(|e| {
        ApiError::bad_request(
            "invalid_argument",
            format!("this route needs a WebSocket upgrade: {e}"),
        )
    })?;
    let Query(q) = query.map_err(|e| ApiError::bad_request("invalid_argument", e.body_text()))?;
    let r = stream_ref(&t, &ns, &st)?;
    // Refuse before upgrading, so the client gets a clear HTTP error.
    let n = s.broker.partition_count(&r)?;
    let mode = match q.mode.as_deref().unwrap_or("subscribe") {
        "publish" => Mode::Publish,
        "subscribe" => {
            let from =
                position_of(q.offset, q.timestamp, q.from.as_deref())?.unwrap_or(Position::Latest);
            let partitions = match q.partition {
                Some(p) if p >= n => {
                    return Err(BrokerError::NotFound {
                        kind: "partition",
                        name: format!("{r}#{p} (the stream has {n})"),
                    }
                    .into())
                }
                Some(p) => vec![p],
                None => (0..n).collect(),
            };
            if partitions.len() > 1 && matches!(from, Position::Offset(_)) {
                return Err(ApiError::bad_request(
                    "invalid_argument",
                    "`offset` needs `partition`",
                ));
            }
            Mode::Subscribe {
                partitions,
                from,
                format: q.format.unwrap_or_default(),
            }
        }
        other => {
            return Err(ApiError::bad_request(
                "invalid_argument",
                format!("`mode` must be `publish` or `subscribe`, not {other:?}"),
            ))
        }
    };
    let broker = s.broker.clone();
    // The access layer puts the principal on every route but the open ones.
    let Some(axum::Extension(principal)) = who else {
        return Err(ApiError::new(
            axum::http::StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "no principal",
        ));
    };
    let quota = broker.quota_request(&principal);
    let action = match mode {
        Mode::Publish => Action::Publish,
        Mode::Subscribe { .. } => Action::Subscribe,
    };
    let grant = Grant::new(&broker, principal, action);
    Ok(ws
        .max_message_size(BODY_BYTES_MAX)
        .on_upgrade(move |socket| async move {
            let gauge = broker
                .metrics()
                .connections
                .with_label_values(&["websocket"]);
            broker
                .metrics()
                .connections_total
                .with_label_values(&["websocket"])
                .inc();
            gauge.inc();
            match mode {
                Mode::Publish => publish(socket, broker, r, quota, grant).await,
                Mode::Subscribe {
                    partitions,
                    from,
                    format,
                } => subscribe(socket, broker, r, grant, partitions, from, format).await,
            }
            gauge.dec();
        }))
}

fn text(v: Value) -> Message {
    Message::Text(Utf8Bytes::from(v.to_string()))
}

fn frame_len(m: &Message) -> usize {
    match m {
        Message::Text(t) => t.len(),
        Message::Binary(b) => b.len(),
        _ => 0,
    }
}

async fn publish(
    socket: WebSocket,
    broker: Arc<Broker>,
    r: StreamRef,
    quota: fjord_broker::quotas::QuotaHandle,
    mut grant: Grant,
) {
    let (mut tx, mut rx) = socket.split();
    let mut seq: u64 = 0;
    while let Some(Ok(first)) = rx.next().await {
        let mut bytes = frame_len(&first);
        let mut frames = vec![first];
        while frames.len() < PUBLISH_GROUP_MAX && bytes < PUBLISH_GROUP_BYTES_MAX {
            match rx.next().now_or_never() {
                Some(Some(Ok(m))) => {
                    bytes += frame_len(&m);
                    frames.push(m);
                }
                _ => break,
            }
        }
        let budget = broker.memory();
        let Ok(_held) = budget
            .reserve((bytes as u64).min(budget.capacity_bytes()))
            .await
        else {
            break;
        };
        // (seq, id, parsed record or the error for it)
        let mut items: Vec<(u64, Value, Result<RecordInput, ApiError>)> = Vec::new();
        let mut closing = false;
        for m in frames {
            let parsed = match m {
                Message::Text(t) => match serde_json::from_str::<RecordIn>(t.as_str()) {
                    Ok(rec) => {
                        let id = rec.id.clone().unwrap_or(Value::Null);
                        (id, rec.into_input())
                    }
                    Err(e) => (
                        Value::Null,
                        Err(ApiError::bad_request(
                            "invalid_json",
                            format!("frame {seq}: {e}"),
                        )),
                    ),
                },
                Message::Binary(b) => (
                    Value::Null,
                    Ok(RecordInput {
                        value: Some(b),
                        ..Default::default()
                    }),
                ),
                Message::Close(_) => {
                    closing = true;
                    break;
                }
                Message::Ping(_) | Message::Pong(_) => continue,
            };
            items.push((seq, parsed.0, parsed.1));
            seq += 1;
        }
        if !grant.holds(&broker, &r) {
            let error = grant.revoked(&r);
            for (seq, id, _) in items {
                let mut e = error.clone();
                e["seq"] = json!(seq);
                e["id"] = id;
                if tx.send(text(e)).await.is_err() {
                    return;
                }
            }
            close_revoked(&mut tx).await;
            return;
        }
        // Over the publish rate: flow control, as MQTT's (the socket is not
        // read until the debt is paid).
        let wait = quota.publish("websocket", items.len() as u64, bytes as u64);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        let acks = produce_group(&broker, &r, items).await;
        for ack in acks {
            if tx.send(text(ack)).await.is_err() {
                return;
            }
        }
        if closing {
            break;
        }
    }
    let _ = tx.close().await;
}

/// Appends the valid records of a group as one produce call (one group
/// commit). If that call is refused before anything was stored (a record
/// too large, say), the records are retried one by one so each gets its own
/// answer.
async fn produce_group(
    broker: &Broker,
    r: &StreamRef,
    items: Vec<(u64, Value, Result<RecordInput, ApiError>)>,
) -> Vec<Value> {
    let mut acks: Vec<Option<Value>> = vec![None; items.len()];
    let mut valid = Vec::new();
    let mut valid_idx = Vec::new();
    for (i, (seq, id, rec)) in items.iter().enumerate() {
        match rec {
            Ok(rec) => {
                valid.push(rec.clone());
                valid_idx.push(i);
            }
            Err(e) => acks[i] = Some(json!({"seq": seq, "id": id, "error": e.body()["error"]})),
        }
    }
    if !valid.is_empty() {
        match broker.produce(r, valid.clone(), None).await {
            Ok(produced) => {
                for (k, p) in valid_idx.iter().zip(produced) {
                    let (seq, id, _) = &items[*k];
                    acks[*k] = Some(
                        json!({"ack": {"seq": seq, "id": id, "partition": p.partition, "offset": p.offset}}),
                    );
                }
            }
            Err(
                e @ (BrokerError::MessageTooLarge { .. }
                | BrokerError::Invalid(_)
                | BrokerError::InvalidRecord(_)),
            ) if valid.len() > 1 => {
                drop(e);
                for (k, rec) in valid_idx.iter().zip(valid) {
                    let (seq, id, _) = &items[*k];
                    acks[*k] = Some(match broker.produce(r, vec![rec], None).await {
                        Ok(p) => {
                            json!({"ack": {"seq": seq, "id": id, "partition": p[0].partition, "offset": p[0].offset}})
                        }
                        Err(e) => {
                            json!({"seq": seq, "id": id, "error": ApiError::from(e).body()["error"]})
                        }
                    });
                }
            }
            Err(e) => {
                let body = ApiError::from(e).body();
                for k in valid_idx {
                    let (seq, id, _) = &items[k];
                    acks[k] = Some(json!({"seq": seq, "id": id, "error": body["error"]}));
                }
            }
        }
    }
    acks.into_iter().flatten().collect()
}

async fn subscribe(
    socket: WebSocket,
    broker: Arc<Broker>,
    r: StreamRef,
    mut grant: Grant,
    partitions: Vec<u32>,
    from: Position,
    format: ValueFormat,
) {
    let (mut tx, mut rx) = socket.split();
    // Resolve every start position first and say where reading starts, so
    // a client knows from which point on it sees everything.
    let mut starts = Vec::with_capacity(partitions.len());
    for p in partitions {
        match broker.resolve(&r, p, from).await {
            Ok(o) => starts.push((p, o)),
            Err(e) => {
                let _ = tx
                    .send(text(json!({"error": ApiError::from(e).body()["error"]})))
                    .await;
                return;
            }
        }
    }
    let hello = json!({"subscribed": starts.iter().map(|(p, o)| json!({"partition": p, "offset": o})).collect::<Vec<_>>()});
    if tx.send(text(hello)).await.is_err() {
        return;
    }
    let (out_tx, mut out_rx) = mpsc::channel::<Value>(SUBSCRIBE_QUEUE);
    let mut followers = JoinSet::new();
    for (p, offset) in starts {
        followers.spawn(follow(
            broker.clone(),
            r.clone(),
            p,
            offset,
            format,
            out_tx.clone(),
        ));
    }
    drop(out_tx);
    loop {
        tokio::select! {
            out = out_rx.recv() => match out {
                Some(_) if !grant.holds(&broker, &r) => {
                    let _ = tx.send(text(grant.revoked(&r))).await;
                    close_revoked(&mut tx).await;
                    break;
                }
                Some(v) => if tx.send(text(v)).await.is_err() { break },
                None => break,
            },
            incoming = rx.next() => match incoming {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
        }
    }
    followers.abort_all();
}

/// Follows one partition from `offset`, forever, into `out`.
async fn follow(
    broker: Arc<Broker>,
    r: StreamRef,
    partition: u32,
    offset: i64,
    format: ValueFormat,
    out: mpsc::Sender<Value>,
) {
    broker
        .follow(&r, partition, offset, "websocket", |item| {
            let v = match item {
                Followed::Record(rec) => {
                    serde_json::to_value(record_out(partition, rec, format)).unwrap_or_default()
                }
                // Retention (or an ephemeral ring) dropped what was not read yet.
                Followed::Skipped { from, to } => {
                    json!({"skipped": {"partition": partition, "from": from, "to": to}})
                }
            };
            let out = out.clone();
            async move { out.send(v).await.is_ok() }
        })
        .await;
    let _ = out
        .send(json!({"error": {"code": "not_found", "message": format!("stream {r} is gone")}}))
        .await;
}
