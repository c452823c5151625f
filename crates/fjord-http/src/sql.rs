//! `POST /v1/sql`: one SQL statement, its result as JSON, CSV or Arrow IPC.
//! `GET /v1/sql/ws?sql=…`: a push query (`SELECT … EMIT CHANGES`) over a
//! WebSocket — one text message `{"rows": [...]}` per batch of rows as they
//! come, until the client closes the socket.
//!
//! The engine (fjord-sql, on DataFusion) is behind [`SqlService`], wired by
//! the binary, so this crate builds without DataFusion.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use fjord_auth::Principal;
use serde::Deserialize;

use crate::error::{ApiError, ApiResult};
use crate::memory::RawBody;
use crate::AppState;

/// A result, written in the format asked for.
pub struct SqlOutput {
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

/// Why a statement failed, and where in it.
#[derive(Debug)]
pub struct SqlFailure {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// 1-based line and column in the statement, when known.
    pub line: Option<u64>,
    pub column: Option<u64>,
}

pub type SqlFuture = Pin<Box<dyn Future<Output = Result<SqlOutput, SqlFailure>> + Send>>;

/// A push query's rows: each item a JSON array of row objects.
pub type PushRows = Pin<Box<dyn futures_util::Stream<Item = Result<String, SqlFailure>> + Send>>;
pub type PushFuture = Pin<Box<dyn Future<Output = Result<PushRows, SqlFailure>> + Send>>;

/// Runs SQL for a principal.
pub trait SqlService: Send + Sync + 'static {
    /// `format`: `json`, `csv` or `arrow` (checked before this is called).
    fn execute(&self, principal: Arc<Principal>, sql: String, format: &'static str) -> SqlFuture;
    /// Starts a push query; its rows until the stream is dropped. Any
    /// other statement fails (`not_a_push_query`).
    fn push(&self, principal: Arc<Principal>, sql: String) -> PushFuture;
}

/// The node's SQL service and the caller.
fn service_for(
    s: &AppState,
    who: Option<axum::Extension<Arc<Principal>>>,
) -> ApiResult<(Arc<dyn SqlService>, Arc<Principal>)> {
    let Some(service) = s.sql.clone() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_enabled",
            "SQL is not enabled on this node",
        ));
    };
    let Some(axum::Extension(principal)) = who else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "no principal",
        ));
    };
    Ok((service, principal))
}

fn failure_json(f: &SqlFailure) -> serde_json::Value {
    let mut error = serde_json::json!({"code": f.code, "message": f.message});
    if let (Some(l), Some(c)) = (f.line, f.column) {
        error["line"] = l.into();
        error["column"] = c.into();
    }
    serde_json::json!({ "error": error })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushQuery {
    sql: String,
}

/// `GET /v1/sql/ws?sql=…`: the statement is planned before the upgrade, so
/// a wrong one gets a plain HTTP error.
pub async fn push(
    State(s): State<AppState>,
    who: Option<axum::Extension<Arc<Principal>>>,
    query: Result<Query<PushQuery>, axum::extract::rejection::QueryRejection>,
    ws: Result<
        axum::extract::ws::WebSocketUpgrade,
        axum::extract::ws::rejection::WebSocketUpgradeRejection,
    >,
) -> ApiResult<Response> {
    use axum::extract::ws::{CloseFrame, Message};
    use futures_util::StreamExt;
    let ws = ws.map_err(|e| {
        ApiError::bad_request(
            "invalid_argument",
            format!("this route needs a WebSocket upgrade: {e}"),
        )
    })?;
    let Query(q) = query.map_err(|e| ApiError::bad_request("invalid_argument", e.body_text()))?;
    let (service, principal) = service_for(&s, who)?;
    let mut rows = match service.push(principal, q.sql).await {
        Ok(rows) => rows,
        Err(f) => return Ok((f.status, axum::Json(failure_json(&f))).into_response()),
    };
    Ok(ws.on_upgrade(move |socket| async move {
        let (mut tx, mut rx) = socket.split();
        use futures_util::SinkExt;
        loop {
            tokio::select! {
                m = rx.next() => match m {
                    // The client closed (or went away): the query stops
                    // with the stream, dropped here.
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                    Some(Ok(_)) => {}
                },
                b = rows.next() => match b {
                    Some(Ok(json)) => {
                        let msg = format!("{{\"rows\":{json}}}");
                        if tx.send(Message::Text(msg.into())).await.is_err() {
                            return;
                        }
                    }
                    Some(Err(f)) => {
                        let _ = tx.send(Message::Text(failure_json(&f).to_string().into())).await;
                        let _ = tx
                            .send(Message::Close(Some(CloseFrame {
                                code: 1011,
                                reason: "query failed".into(),
                            })))
                            .await;
                        return;
                    }
                    None => {
                        let _ = tx.send(Message::Close(None)).await;
                        return;
                    }
                },
            }
        }
    }))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SqlQuery {
    #[serde(default)]
    format: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SqlBody {
    sql: String,
    #[serde(default)]
    format: Option<String>,
}

fn format_of(s: &str) -> Result<&'static str, ApiError> {
    match s {
        "json" => Ok("json"),
        "csv" => Ok("csv"),
        "arrow" => Ok("arrow"),
        other => Err(ApiError::bad_request(
            "invalid_argument",
            format!("`format` must be json, csv or arrow, not {other:?}"),
        )),
    }
}

/// The body is `{"sql": "...", "format": "..."}` (JSON), or the statement
/// itself as text; `?format=` or `Accept` choose the format otherwise.
pub async fn run(
    State(s): State<AppState>,
    who: Option<axum::Extension<Arc<Principal>>>,
    query: Result<Query<SqlQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: RawBody,
) -> ApiResult<Response> {
    let body = crate::memory::body_bytes(body)?;
    let Query(q) = query.map_err(|e| ApiError::bad_request("invalid_argument", e.body_text()))?;
    let (service, principal) = service_for(&s, who)?;
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let (sql, body_format) = if is_json {
        let b: SqlBody = serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request("invalid_json", e.to_string()))?;
        (b.sql, b.format)
    } else {
        let text = String::from_utf8(body.to_vec())
            .map_err(|_| ApiError::bad_request("invalid_argument", "the statement is not UTF-8"))?;
        (text, None)
    };
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .and_then(|a| {
            if a.contains("text/csv") {
                Some("csv")
            } else if a.contains("application/vnd.apache.arrow.stream") {
                Some("arrow")
            } else {
                None
            }
        });
    let format = match body_format.or(q.format) {
        Some(f) => format_of(&f)?,
        None => accept.unwrap_or("json"),
    };
    if sql.trim().is_empty() {
        return Err(ApiError::bad_request(
            "invalid_argument",
            "no SQL statement",
        ));
    }
    match service.execute(principal, sql, format).await {
        Ok(out) => Ok(([(header::CONTENT_TYPE, out.content_type)], out.body).into_response()),
        Err(f) => Ok((f.status, axum::Json(failure_json(&f))).into_response()),
    }
}
