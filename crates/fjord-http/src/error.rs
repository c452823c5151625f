//! JSON errors with a stable code and a human message:
//! `{"error": {"code": "not_found", "message": "stream public/default/x does not exist"}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use fjord_broker::BrokerError;
use fjord_core::NameError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Sent as `Retry-After` (whole seconds, rounded up).
    pub retry_after: Option<std::time::Duration>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn retry_after(mut self, wait: std::time::Duration) -> Self {
        self.retry_after = Some(wait);
        self
    }
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({"error": {"code": self.code, "message": self.message}})
    }
}

impl From<BrokerError> for ApiError {
    fn from(e: BrokerError) -> Self {
        let status = match &e {
            BrokerError::Name(_) | BrokerError::Invalid(_) => StatusCode::BAD_REQUEST,
            BrokerError::NotFound { .. } => StatusCode::NOT_FOUND,
            BrokerError::AlreadyExists { .. } | BrokerError::NotEmpty { .. } => {
                StatusCode::CONFLICT
            }
            BrokerError::MessageTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            BrokerError::InvalidRecord(_) => StatusCode::UNPROCESSABLE_ENTITY,
            BrokerError::OffsetOutOfRange { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
            BrokerError::StorageFull(_) | BrokerError::QuotaExceeded(_) => {
                StatusCode::INSUFFICIENT_STORAGE
            }
            BrokerError::Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
            BrokerError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError::new(status, e.code(), e.to_string())
    }
}

impl From<NameError> for ApiError {
    fn from(e: NameError) -> Self {
        ApiError::bad_request("invalid_name", e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, Json(self.body())).into_response();
        if let Some(w) = self.retry_after {
            let secs = w.as_secs() + u64::from(w.subsec_nanos() > 0);
            if let Ok(v) = axum::http::HeaderValue::from_str(&secs.max(1).to_string()) {
                r.headers_mut().insert(axum::http::header::RETRY_AFTER, v);
            }
        }
        r
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
