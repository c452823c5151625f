//! Errors of the storage engine.

use std::io;
use std::path::PathBuf;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum LogError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("invalid batch: {0}")]
    InvalidBatch(#[from] fjord_core::CoreError),
    #[error("corrupt data in {path} at byte {position}: {reason}")]
    Corrupt {
        path: PathBuf,
        position: u64,
        reason: String,
    },
    #[error("offset {requested} is out of range: the log holds {start}..{end}")]
    OffsetOutOfRange {
        requested: i64,
        start: i64,
        end: i64,
    },
    #[error("partition refuses writes after an earlier failure: {0}")]
    Poisoned(String),
    #[error("partition is closed")]
    Closed,
    #[error("encryption at rest: {0}")]
    Encryption(String),
}

impl LogError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        LogError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// True when the failure is a full disk, a quota, or the file-size limit
    /// of the process: the client should retry later; nothing stored was
    /// damaged.
    pub fn is_disk_full(&self) -> bool {
        match self {
            LogError::Io { source, .. } => matches!(
                source.raw_os_error(),
                Some(libc::ENOSPC) | Some(libc::EDQUOT) | Some(libc::EFBIG)
            ),
            _ => false,
        }
    }
}
