//! The newest batches of a partition, kept in memory as they were written,
//! so that readers at the tail — live subscribers, the common case — get
//! them without a blocking-pool hop and a `pread`. Bounded per partition;
//! older reads go to the segments as before.
//!
//! Entries are pushed by the appender after the write and before the high
//! watermark moves, so a reader never finds here what it may not read yet:
//! it still stops at the watermark it was given.

use std::collections::VecDeque;

use bytes::Bytes;

/// Bytes of batches kept per partition at most: a subscriber this far
/// behind a fast publisher still reads from memory.
pub(crate) const TAIL_BYTES_MAX: usize = 8 * 1024 * 1024;
/// Bytes kept by all partitions of the process together, beyond which each
/// tail shrinks to [`TAIL_BYTES_FLOOR`] as it is next written: many busy
/// partitions share the memory instead of each taking the maximum.
const TAIL_TOTAL_MAX: usize = 256 * 1024 * 1024;
const TAIL_BYTES_FLOOR: usize = 512 * 1024;

static TAIL_TOTAL: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Bytes held by the tails of all partitions (for metrics).
pub fn tail_bytes_total() -> usize {
    TAIL_TOTAL.load(std::sync::atomic::Ordering::Relaxed)
}

struct Entry {
    base: i64,
    /// Offset after the batch's last record.
    end: i64,
    bytes: Bytes,
}

/// The tail of one partition as its handle and its appender share it,
/// with the partition's start offset (kept here so a tail read needs no
/// lock on the log, which the appender holds while it writes).
#[derive(Default)]
pub(crate) struct SharedTail {
    tail: parking_lot::Mutex<Tail>,
    start: std::sync::atomic::AtomicI64,
}

impl SharedTail {
    pub(crate) fn new(start: i64) -> SharedTail {
        let t = SharedTail::default();
        t.set_start(start);
        t
    }

    pub(crate) fn lock(&self) -> parking_lot::MutexGuard<'_, Tail> {
        self.tail.lock()
    }

    pub(crate) fn set_start(&self, start: i64) {
        self.start
            .store(start, std::sync::atomic::Ordering::Release);
    }

    pub(crate) fn start(&self) -> i64 {
        self.start.load(std::sync::atomic::Ordering::Acquire)
    }
}

#[derive(Default)]
pub(crate) struct Tail {
    entries: VecDeque<Entry>,
    bytes: usize,
}

impl Tail {
    /// Adds a batch just written at `base..end`. A batch that does not
    /// follow the last one (the log was cut back after a failed write)
    /// starts the cache afresh.
    pub(crate) fn push(&mut self, base: i64, end: i64, bytes: Bytes) {
        if self.entries.back().is_some_and(|e| e.end != base) {
            self.clear();
        }
        use std::sync::atomic::Ordering;
        self.bytes += bytes.len();
        TAIL_TOTAL.fetch_add(bytes.len(), Ordering::Relaxed);
        self.entries.push_back(Entry { base, end, bytes });
        while self.entries.len() > 1
            && (self.bytes > TAIL_BYTES_MAX
                || (self.bytes > TAIL_BYTES_FLOOR
                    && TAIL_TOTAL.load(Ordering::Relaxed) > TAIL_TOTAL_MAX))
        {
            if let Some(e) = self.entries.pop_front() {
                self.bytes -= e.bytes.len();
                TAIL_TOTAL.fetch_sub(e.bytes.len(), Ordering::Relaxed);
            }
        }
    }

    pub(crate) fn clear(&mut self) {
        self.entries.clear();
        TAIL_TOTAL.fetch_sub(self.bytes, std::sync::atomic::Ordering::Relaxed);
        self.bytes = 0;
    }

    /// The batches from the one holding `offset` up to `hwm` and about
    /// `max_bytes` (at least one batch), with the offset to read next; `None`
    /// when `offset` is older than the cache.
    pub(crate) fn read(
        &self,
        offset: i64,
        max_bytes: usize,
        hwm: i64,
    ) -> Option<(Vec<Bytes>, i64)> {
        let first = self.entries.front()?;
        let last = self.entries.back()?;
        if offset < first.base || (offset >= last.end && last.end < hwm) {
            // Older than the cache, or the cache lags the log: ask the log.
            return None;
        }
        let at = self.entries.partition_point(|e| e.end <= offset);
        let mut out = Vec::new();
        let mut used = 0usize;
        let mut next = offset;
        for e in self.entries.range(at..) {
            if e.end > hwm || (!out.is_empty() && used + e.bytes.len() > max_bytes) {
                break;
            }
            used += e.bytes.len();
            next = e.end;
            out.push(e.bytes.clone());
        }
        Some((out, next))
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        self.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(n: usize) -> Bytes {
        Bytes::from(vec![0u8; n])
    }

    #[test]
    fn reads_stop_at_the_watermark_and_the_byte_budget() {
        let mut t = Tail::default();
        t.push(0, 10, b(100));
        t.push(10, 20, b(100));
        t.push(20, 30, b(100));
        let (got, next) = t.read(5, 1 << 20, 20).unwrap();
        assert_eq!((got.len(), next), (2, 20));
        let (got, next) = t.read(12, 150, 30).unwrap();
        assert_eq!((got.len(), next), (1, 20));
        let (got, next) = t.read(30, 1 << 20, 30).unwrap();
        assert_eq!((got.len(), next), (0, 30));
        // A single batch larger than the budget still comes back.
        let (got, _) = t.read(0, 1, 30).unwrap();
        assert_eq!(got.len(), 1);
    }

    #[test]
    fn older_offsets_and_gaps_fall_back_to_the_log() {
        let mut t = Tail::default();
        assert!(t.read(0, 10, 10).is_none());
        t.push(100, 110, b(10));
        assert!(t.read(99, 10, 110).is_none());
        // Not contiguous: the cache restarts at the new batch.
        t.push(200, 210, b(10));
        assert!(t.read(105, 10, 210).is_none());
        assert_eq!(t.read(200, 10, 210).unwrap().1, 210);
    }

    #[test]
    fn stays_within_its_byte_bound() {
        let mut t = Tail::default();
        let chunk = TAIL_BYTES_MAX / 4;
        for i in 0..10 {
            t.push(i * 10, i * 10 + 10, b(chunk));
        }
        assert!(t.bytes <= TAIL_BYTES_MAX);
        assert!(t.read(0, 10, 100).is_none());
        assert!(t.read(95, 10, 100).is_some());
    }
}
