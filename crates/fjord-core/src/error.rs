//! Errors raised by the pure codecs and validators of this crate.

use thiserror::Error;

/// A batch or record that cannot be decoded. Each variant says what was wrong
/// so a log recovery or a protocol front-end can report it precisely.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CoreError {
    #[error("batch truncated: need {needed} bytes, have {available}")]
    Truncated { needed: usize, available: usize },
    #[error("unsupported batch magic {0} (only RecordBatch v2, magic 2, is accepted)")]
    BadMagic(i8),
    #[error("batch length {0} is invalid")]
    BadLength(i32),
    #[error("batch CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch { stored: u32, computed: u32 },
    #[error("malformed record: {0}")]
    MalformedRecord(&'static str),
    #[error("unknown compression codec {0} (Kafka defines 0-4)")]
    UnsupportedCompression(u8),
    #[error("{codec} record section cannot be inflated: {reason}")]
    Decompress { codec: &'static str, reason: String },
    #[error("header key is not valid UTF-8")]
    HeaderKeyUtf8,
}
