//! Fjord's shared vocabulary.
//!
//! Every other crate speaks in these types: validated names
//! ([`names`]), records and the Kafka RecordBatch v2 codec they are stored in
//! ([`record`], [`batch`]), namespace and stream policies ([`policy`]) and
//! Kafka-compatible key partitioning ([`partitioner`]). Nothing here does I/O,
//! so all of it can be property-tested and fuzzed in isolation.

pub mod batch;
pub mod compression;
pub mod error;
pub mod names;
pub mod partitioner;
pub mod policy;
pub mod record;
pub mod time;
pub mod topic;
mod varint;

pub use error::CoreError;
pub use names::{NameError, NamespaceName, StreamName, StreamRef, TenantName};
pub use policy::{Compaction, DedupBy, Durability, Policy, StreamSchema};
pub use record::{Header, Record, RecordInput};
