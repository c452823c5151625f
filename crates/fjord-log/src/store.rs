//! The interface both stores (disk segments and the in-memory ring) offer to
//! the async [`crate::Partition`] handle.

use bytes::Bytes;
use fjord_core::policy::ResolvedPolicy;
use std::fs::File;
use std::sync::Arc;

use crate::LogError;

/// Where an appended batch landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    pub base_offset: i64,
    pub last_offset: i64,
    pub publish_ts: i64,
    pub bytes: usize,
}

/// Batches read from a partition.
#[derive(Debug, Clone, Default)]
pub struct ReadResult {
    /// Whole batches, CRC-checked, in offset order. The first may start
    /// before the requested offset (batches are not split).
    pub batches: Vec<Bytes>,
    /// The same bytes as `batches`, in as few contiguous buffers as the
    /// read produced (a file read yields one per read call): what a
    /// protocol that serves stored batches as they are (Kafka Fetch) sends
    /// without joining them first.
    pub spans: Vec<Bytes>,
    /// The offset to ask for next.
    pub next_offset: i64,
    pub start_offset: i64,
    /// Offset after the last readable record.
    pub high_watermark: i64,
}

/// What a background maintenance pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MaintenanceReport {
    pub segments_deleted: usize,
    pub bytes_deleted: u64,
    pub segments_compacted: usize,
    pub records_compacted: u64,
    pub rolled: bool,
}

pub trait LogStore: Send + Sync {
    /// Assigns offsets and the publish time to each batch (whole, CRC-valid
    /// RecordBatch v2), then stores them in order, one result each. Not yet
    /// durable.
    fn append_group(
        &mut self,
        batches: &mut [Vec<u8>],
        now_ms: i64,
    ) -> Vec<Result<AppendInfo, LogError>>;
    /// [`LogStore::append_group`] of one batch.
    fn append(&mut self, batch: &mut Vec<u8>, now_ms: i64) -> Result<AppendInfo, LogError> {
        let mut one = [std::mem::take(batch)];
        let r = self.append_group(&mut one, now_ms).pop();
        *batch = std::mem::take(&mut one[0]);
        r.unwrap_or(Err(LogError::Closed))
    }
    /// Reads whole batches from the one holding `offset`, up to `max_bytes`
    /// (at least one batch), never past `high_watermark`.
    fn read(
        &self,
        offset: i64,
        max_bytes: usize,
        high_watermark: i64,
    ) -> Result<ReadResult, LogError>;
    /// The first offset whose publish time is `>= ts_ms`, if any.
    fn offset_for_time(&self, ts_ms: i64) -> Result<Option<i64>, LogError>;
    fn start_offset(&self) -> i64;
    fn next_offset(&self) -> i64;
    fn size_bytes(&self) -> u64;
    /// The file to fsync to make every append so far durable (outside locks).
    fn sync_target(&self) -> Option<Arc<File>>;
    /// Retention, age rolls and compaction.
    fn maintain(&mut self, now_ms: i64) -> Result<MaintenanceReport, LogError>;
    fn set_policy(&mut self, policy: ResolvedPolicy);
    /// Seal indexes and fsync everything (clean shutdown).
    fn flush_all(&mut self) -> Result<(), LogError>;
    /// Refuse every further append (after a failed fsync).
    fn poison(&mut self, why: &str);
}
