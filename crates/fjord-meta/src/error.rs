//! Metadata errors; each names the object it is about.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum MetaError {
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
    #[error("metadata store: {0}")]
    Storage(String),
}

macro_rules! storage_from {
    ($($t:ty),*) => {$(
        impl From<$t> for MetaError {
            fn from(e: $t) -> Self {
                MetaError::Storage(e.to_string())
            }
        }
    )*};
}

storage_from!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    serde_json::Error
);
