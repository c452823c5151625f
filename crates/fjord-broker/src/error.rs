//! Broker errors. Each maps to a stable code that every front-end turns into
//! its protocol's own error.

use fjord_core::NameError;
use fjord_log::LogError;
use fjord_meta::MetaError;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum BrokerError {
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("{kind} {name} does not exist")]
    NotFound { kind: &'static str, name: String },
    #[error("{kind} {name} already exists")]
    AlreadyExists { kind: &'static str, name: String },
    #[error("{kind} {name} is not empty: {detail}")]
    NotEmpty {
        kind: &'static str,
        name: String,
        detail: String,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("message of {size} bytes exceeds the stream's max_message_bytes of {max}")]
    MessageTooLarge { size: usize, max: u64 },
    /// A value the stream's enforced schema refuses.
    #[error("{0}")]
    InvalidRecord(String),
    #[error("offset {requested} is out of range: partition holds offsets {start}..{end}")]
    OffsetOutOfRange {
        requested: i64,
        start: i64,
        end: i64,
    },
    #[error("the disk is full; the write was not stored: {0}")]
    StorageFull(String),
    #[error("quota exceeded: {0}")]
    QuotaExceeded(String),
    #[error("storage error: {0}")]
    Storage(String),
    #[error("the broker is shutting down")]
    ShuttingDown,
}

impl BrokerError {
    /// A stable, machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            BrokerError::Name(_) => "invalid_name",
            BrokerError::NotFound { .. } => "not_found",
            BrokerError::AlreadyExists { .. } => "already_exists",
            BrokerError::NotEmpty { .. } => "not_empty",
            BrokerError::Invalid(_) => "invalid_argument",
            BrokerError::MessageTooLarge { .. } => "message_too_large",
            BrokerError::InvalidRecord(_) => "invalid_record",
            BrokerError::OffsetOutOfRange { .. } => "offset_out_of_range",
            BrokerError::StorageFull(_) => "storage_full",
            BrokerError::QuotaExceeded(_) => "quota_exceeded",
            BrokerError::Storage(_) => "storage_error",
            BrokerError::ShuttingDown => "unavailable",
        }
    }
}

impl From<MetaError> for BrokerError {
    fn from(e: MetaError) -> Self {
        match e {
            MetaError::NotFound { kind, name } => BrokerError::NotFound { kind, name },
            MetaError::AlreadyExists { kind, name } => BrokerError::AlreadyExists { kind, name },
            MetaError::NotEmpty { kind, name, detail } => {
                BrokerError::NotEmpty { kind, name, detail }
            }
            MetaError::Invalid(m) => BrokerError::Invalid(m),
            MetaError::Storage(m) => BrokerError::Storage(m),
        }
    }
}

impl From<LogError> for BrokerError {
    fn from(e: LogError) -> Self {
        if e.is_disk_full() {
            return BrokerError::StorageFull(e.to_string());
        }
        match e {
            LogError::OffsetOutOfRange {
                requested,
                start,
                end,
            } => BrokerError::OffsetOutOfRange {
                requested,
                start,
                end,
            },
            LogError::InvalidBatch(c) => BrokerError::Invalid(format!("invalid batch: {c}")),
            LogError::Closed => BrokerError::ShuttingDown,
            other => BrokerError::Storage(other.to_string()),
        }
    }
}
