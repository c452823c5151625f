//! Fjord's storage engine (ARCHITECTURE §5).
//!
//! A partition is a directory of segment files holding Kafka RecordBatch v2
//! batches back to back, exactly as a Kafka broker lays out its `.log` files,
//! each with a sparse offset index and a sparse time index. [`PartitionLog`]
//! is the synchronous engine (append, read, recovery, retention,
//! compaction); [`Ring`] is the in-memory store of ephemeral streams; and
//! [`Partition`] is the async handle the broker uses: a bounded append queue
//! (back pressure), group commit per durability policy, and a high watermark
//! readers wait on instead of polling.
//!
//! Guarantees kept here:
//! * an append is acknowledged only when it is as durable as the partition's
//!   [`fjord_core::Durability`] says, and readers never see a record before it
//!   is acknowledgeable;
//! * at open, the tail of the active segment is validated batch by batch
//!   (length, magic, CRC-32C, offsets) and a torn write is truncated; missing
//!   or damaged indexes are rebuilt;
//! * every batch served from disk is CRC-checked on the way out (the
//!   newest batches are served from memory as they were written);
//! * a failed write (a full disk) is cut back off the segment and reported;
//!   a failed fsync poisons the partition: it refuses appends until restart.

mod appender;
pub mod crypt;
mod error;
mod handle;
mod index;
mod partition;
mod ring;
mod scan;
mod segment;
mod store;
mod tail;

pub use error::LogError;
pub use handle::{Partition, PartitionOptions};
pub use partition::{PartitionLog, RecoveryReport};
pub use ring::Ring;
pub use store::{AppendInfo, LogStore, MaintenanceReport, ReadResult};
pub use tail::tail_bytes_total;

/// Bytes of log between two entries of the sparse indexes.
pub const INDEX_INTERVAL_BYTES: u64 = 4096;
