//! The in-memory store of an ephemeral partition: a ring of batches bounded
//! in bytes that drops its oldest batches when full. For sensor streams where
//! only the latest state matters and losing old values under pressure is the
//! contract, not a fault.

use std::collections::VecDeque;
use std::fs::File;
use std::sync::Arc;

use bytes::Bytes;
use fjord_core::policy::ResolvedPolicy;

use crate::store::{AppendInfo, LogStore, MaintenanceReport, ReadResult};
use crate::LogError;

struct Entry {
    base_offset: i64,
    next_offset: i64,
    publish_ts: i64,
    bytes: Bytes,
}

pub struct Ring {
    entries: VecDeque<Entry>,
    bytes: u64,
    next_offset: i64,
    start_offset: i64,
    last_publish_ts: i64,
    policy: ResolvedPolicy,
    /// Records dropped to make room, since creation.
    pub dropped_records: u64,
}

impl Ring {
    pub fn new(policy: ResolvedPolicy) -> Self {
        Self {
            entries: VecDeque::new(),
            bytes: 0,
            next_offset: 0,
            start_offset: 0,
            last_publish_ts: i64::MIN,
            policy,
            dropped_records: 0,
        }
    }

    fn drop_oldest(&mut self) -> Option<u64> {
        let e = self.entries.pop_front()?;
        self.bytes -= e.bytes.len() as u64;
        self.start_offset = self
            .entries
            .front()
            .map_or(self.next_offset, |f| f.base_offset);
        Some((e.next_offset - e.base_offset) as u64)
    }

    /// Stores the batch, taking its buffer (no copy).
    fn append_one(
        &mut self,
        batch_bytes: &mut Vec<u8>,
        now_ms: i64,
    ) -> Result<AppendInfo, LogError> {
        let publish_ts = now_ms.max(self.last_publish_ts);
        let base = self.next_offset;
        let h = crate::partition::stamp(batch_bytes, base, publish_ts)?;
        let len = batch_bytes.len() as u64;
        while !self.entries.is_empty() && self.bytes + len > self.policy.ephemeral_bytes_max {
            self.dropped_records += self.drop_oldest().unwrap_or(0);
        }
        self.next_offset = h.next_offset();
        self.entries.push_back(Entry {
            base_offset: base,
            next_offset: self.next_offset,
            publish_ts,
            bytes: Bytes::from(std::mem::take(batch_bytes)),
        });
        self.bytes += len;
        self.last_publish_ts = publish_ts;
        Ok(AppendInfo {
            base_offset: base,
            last_offset: self.next_offset - 1,
            publish_ts,
            bytes: len as usize,
        })
    }
}

impl LogStore for Ring {
    fn append_group(
        &mut self,
        batches: &mut [Vec<u8>],
        now_ms: i64,
    ) -> Vec<Result<AppendInfo, LogError>> {
        batches
            .iter_mut()
            .map(|b| self.append_one(b, now_ms))
            .collect()
    }

    fn read(
        &self,
        offset: i64,
        max_bytes: usize,
        high_watermark: i64,
    ) -> Result<ReadResult, LogError> {
        let end = high_watermark.min(self.next_offset);
        if offset < self.start_offset || offset > end {
            return Err(LogError::OffsetOutOfRange {
                requested: offset,
                start: self.start_offset,
                end,
            });
        }
        let first = self.entries.partition_point(|e| e.next_offset <= offset);
        let mut out = Vec::new();
        let mut used = 0usize;
        let mut next = offset;
        for e in self.entries.range(first..) {
            if e.base_offset >= end || (!out.is_empty() && used + e.bytes.len() > max_bytes) {
                break;
            }
            used += e.bytes.len();
            next = e.next_offset;
            out.push(e.bytes.clone());
        }
        Ok(ReadResult {
            spans: out.clone(),
            batches: out,
            next_offset: next,
            start_offset: self.start_offset,
            high_watermark: end,
        })
    }

    fn offset_for_time(&self, ts_ms: i64) -> Result<Option<i64>, LogError> {
        let i = self.entries.partition_point(|e| e.publish_ts < ts_ms);
        Ok(self.entries.get(i).map(|e| e.base_offset))
    }

    fn start_offset(&self) -> i64 {
        self.start_offset
    }

    fn next_offset(&self) -> i64 {
        self.next_offset
    }

    fn size_bytes(&self) -> u64 {
        self.bytes
    }

    fn sync_target(&self) -> Option<Arc<File>> {
        None
    }

    fn maintain(&mut self, now_ms: i64) -> Result<MaintenanceReport, LogError> {
        let mut report = MaintenanceReport::default();
        if self.policy.retention_ms >= 0 {
            while self
                .entries
                .front()
                .is_some_and(|e| now_ms.saturating_sub(e.publish_ts) > self.policy.retention_ms)
            {
                let len = self.entries.front().map_or(0, |e| e.bytes.len() as u64);
                self.drop_oldest();
                report.bytes_deleted += len;
            }
        }
        Ok(report)
    }

    fn set_policy(&mut self, policy: ResolvedPolicy) {
        self.policy = policy;
    }

    fn flush_all(&mut self) -> Result<(), LogError> {
        Ok(())
    }

    fn poison(&mut self, _why: &str) {}
}
