//! Request bodies count against the node's memory budget (ARCHITECTURE §6):
//! the bytes a body declares are reserved before it is read and held until
//! the response is ready, so a burst of uploads makes clients wait instead
//! of growing the process. A body without a declared length reserves
//! `UNDECLARED_BODY_BYTES` and may not grow past it.

use axum::body::Body;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::BodyExt;

use crate::error::{ApiError, ApiResult};
use crate::{AppState, BODY_BYTES_MAX};

/// How long a refused body is read away before the answer goes out.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Reserved for (and the limit of) a body sent without Content-Length.
pub const UNDECLARED_BODY_BYTES: u64 = 8 * 1024 * 1024;

pub async fn reserve_body(State(s): State<AppState>, req: Request, next: Next) -> Response {
    if !matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH) {
        return next.run(req).await;
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let bytes = declared.unwrap_or(UNDECLARED_BODY_BYTES);
    if bytes > BODY_BYTES_MAX as u64 {
        return too_large(format!(
            "request body of {bytes} bytes exceeds the limit of {BODY_BYTES_MAX}"
        ))
        .into_response();
    }
    let permit = match s.broker.memory().reserve(bytes).await {
        Ok(p) => p,
        Err(e) => {
            // Larger than the whole budget. Read the body away (a frame at a
            // time, bounded in time) before answering: a client still
            // sending when the connection closes would see a reset instead
            // of the 413 that says why.
            let mut body = req.into_body();
            let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
                while let Some(Ok(_)) = body.frame().await {}
            })
            .await;
            return ApiError::from(e).into_response();
        }
    };
    let req = if declared.is_none() {
        req.map(|b| Body::new(http_body_util::Limited::new(b, bytes as usize)))
    } else {
        req
    };
    let resp = next.run(req).await;
    drop(permit);
    resp
}

fn too_large(message: String) -> ApiError {
    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "message_too_large", message)
}

/// A request body as handlers take it, so read errors become JSON errors.
pub type RawBody = Result<Bytes, BytesRejection>;

/// The body, or a JSON error saying why it could not be read.
pub fn body_bytes(body: Result<Bytes, BytesRejection>) -> ApiResult<Bytes> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            too_large(format!("request body: {}", e.body_text()))
        } else {
            ApiError::bad_request(
                "invalid_argument",
                format!("request body: {}", e.body_text()),
            )
        }
    })
}
