//! Idempotent produce: producer ids (InitProducerId) and, per partition, the
//! sequence numbers of each producer's last batches, so that a retried batch
//! is acknowledged without being stored twice and a gap is refused with
//! OUT_OF_ORDER_SEQUENCE_NUMBER, as a Kafka broker does.
//!
//! The state is kept in memory and rebuilt after a restart from the stored
//! batches themselves (their headers carry producer id, epoch and base
//! sequence): the newest batches of a partition are read the first time an
//! idempotent producer writes to it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use fjord_core::batch::BatchHeader;
use fjord_core::StreamRef;
use kafka_protocol::error::ResponseError;

/// Batches remembered per producer and partition: Kafka's
/// `max.in.flight.requests.per.connection` limit for idempotence.
const REMEMBERED: usize = 5;
/// A producer silent this long on a partition is forgotten (Kafka's
/// `producer.id.expiration.ms` default).
const EXPIRE_MS: i64 = 24 * 3600 * 1000;
/// How much of a partition's tail is read to rebuild its state.
pub const REBUILD_BYTES: usize = 8 << 20;

/// Hands out producer ids. Seeded with the start time in microseconds, so
/// ids stay unique across restarts without being stored.
pub struct ProducerIds(AtomicI64);

impl Default for ProducerIds {
    fn default() -> Self {
        let micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_micros() as i64);
        ProducerIds(AtomicI64::new(micros))
    }
}

impl ProducerIds {
    pub fn next(&self) -> i64 {
        self.0.fetch_add(1, Ordering::Relaxed)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Remembered {
    first_seq: i32,
    last_seq: i32,
    base_offset: i64,
}

#[derive(Debug)]
struct Producer {
    epoch: i16,
    batches: VecDeque<Remembered>,
    last_seen_ms: i64,
}

/// What to do with an incoming batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Append it.
    Append,
    /// Already stored at this base offset: acknowledge, do not append.
    Duplicate(i64),
    /// Refuse with this error.
    Refuse(ResponseError),
}

/// The producers of one partition.
#[derive(Debug, Default)]
pub struct PartitionProducers {
    /// Whether the stored tail has been read since this process started.
    pub rebuilt: bool,
    producers: HashMap<i64, Producer>,
}

fn last_seq(h: &BatchHeader) -> i32 {
    // Sequences wrap at i32::MAX back to 0.
    let n = i64::from(h.record_count.max(1)) - 1;
    ((i64::from(h.producer.base_sequence) + n) % (i64::from(i32::MAX) + 1)) as i32
}

fn next_seq(s: i32) -> i32 {
    if s == i32::MAX {
        0
    } else {
        s + 1
    }
}

impl PartitionProducers {
    /// The decision for a batch from an idempotent producer (producer id
    /// ≥ 0), before it is appended.
    pub fn check(&self, h: &BatchHeader) -> Verdict {
        let p = h.producer;
        let Some(known) = self.producers.get(&p.producer_id) else {
            // Unknown here (new, or forgotten): any sequence starts it, as
            // Kafka accepts a producer whose state has expired.
            return Verdict::Append;
        };
        if p.producer_epoch < known.epoch {
            return Verdict::Refuse(ResponseError::InvalidProducerEpoch);
        }
        if p.producer_epoch > known.epoch {
            // A new epoch starts its sequences again at 0.
            return if p.base_sequence == 0 {
                Verdict::Append
            } else {
                Verdict::Refuse(ResponseError::OutOfOrderSequenceNumber)
            };
        }
        let last = last_seq(h);
        if let Some(b) = known
            .batches
            .iter()
            .find(|b| b.first_seq == p.base_sequence && b.last_seq == last)
        {
            return Verdict::Duplicate(b.base_offset);
        }
        match known.batches.back() {
            Some(b) if p.base_sequence != next_seq(b.last_seq) => {
                Verdict::Refuse(ResponseError::OutOfOrderSequenceNumber)
            }
            _ => Verdict::Append,
        }
    }

    /// Records a batch stored at `base_offset` (appended now, or found in
    /// the log while rebuilding).
    pub fn record(&mut self, h: &BatchHeader, base_offset: i64, now_ms: i64) {
        let p = h.producer;
        if p.producer_id < 0 {
            return;
        }
        let entry = self.producers.entry(p.producer_id).or_insert(Producer {
            epoch: p.producer_epoch,
            batches: VecDeque::new(),
            last_seen_ms: now_ms,
        });
        if p.producer_epoch != entry.epoch {
            entry.epoch = p.producer_epoch;
            entry.batches.clear();
        }
        entry.last_seen_ms = entry.last_seen_ms.max(now_ms);
        entry.batches.push_back(Remembered {
            first_seq: p.base_sequence,
            last_seq: last_seq(h),
            base_offset,
        });
        while entry.batches.len() > REMEMBERED {
            entry.batches.pop_front();
        }
        if self.producers.len() > 1024 {
            self.producers
                .retain(|_, p| now_ms.saturating_sub(p.last_seen_ms) < EXPIRE_MS);
        }
    }
}

type Key = (StreamRef, u32);

/// Every partition's producers; each behind an async lock held across the
/// check and the append, so that a retry racing its original (a client
/// reconnecting while the first attempt is still being written) cannot
/// store the batch twice.
#[derive(Default)]
pub struct ProducerStates {
    parts: parking_lot::Mutex<HashMap<Key, Arc<tokio::sync::Mutex<PartitionProducers>>>>,
}

impl ProducerStates {
    pub fn partition(
        &self,
        s: &StreamRef,
        partition: u32,
    ) -> Arc<tokio::sync::Mutex<PartitionProducers>> {
        self.parts
            .lock()
            .entry((s.clone(), partition))
            .or_default()
            .clone()
    }

    /// Forgets a deleted stream's producers.
    pub fn forget(&self, s: &StreamRef) {
        self.parts.lock().retain(|(k, _), _| k != s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fjord_core::batch::ProducerInfo;

    fn header(pid: i64, epoch: i16, seq: i32, count: i32) -> BatchHeader {
        BatchHeader {
            base_offset: 0,
            batch_length: 0,
            partition_leader_epoch: 0,
            magic: 2,
            crc: 0,
            attributes: 0,
            last_offset_delta: count - 1,
            base_timestamp: 0,
            max_timestamp: 0,
            producer: ProducerInfo {
                producer_id: pid,
                producer_epoch: epoch,
                base_sequence: seq,
            },
            record_count: count,
        }
    }

    #[test]
    fn duplicates_gaps_and_epochs() {
        let mut p = PartitionProducers::default();
        let b0 = header(7, 0, 0, 10);
        assert_eq!(p.check(&b0), Verdict::Append);
        p.record(&b0, 100, 1);
        let b1 = header(7, 0, 10, 5);
        assert_eq!(p.check(&b1), Verdict::Append);
        p.record(&b1, 110, 2);
        // Both retries are recognised, with their original offsets.
        assert_eq!(p.check(&b0), Verdict::Duplicate(100));
        assert_eq!(p.check(&b1), Verdict::Duplicate(110));
        // A gap (15 expected) is refused.
        assert_eq!(
            p.check(&header(7, 0, 16, 1)),
            Verdict::Refuse(ResponseError::OutOfOrderSequenceNumber)
        );
        assert_eq!(p.check(&header(7, 0, 15, 1)), Verdict::Append);
        // A fenced (older) epoch is refused; a newer one restarts at 0.
        assert_eq!(
            p.check(&header(7, -1, 15, 1)),
            Verdict::Refuse(ResponseError::InvalidProducerEpoch)
        );
        assert_eq!(
            p.check(&header(7, 1, 3, 1)),
            Verdict::Refuse(ResponseError::OutOfOrderSequenceNumber)
        );
        assert_eq!(p.check(&header(7, 1, 0, 1)), Verdict::Append);
        // Another producer is independent.
        assert_eq!(p.check(&header(8, 0, 42, 1)), Verdict::Append);
    }

    #[test]
    fn only_the_last_five_batches_are_remembered() {
        let mut p = PartitionProducers::default();
        for i in 0..7 {
            p.record(&header(1, 0, i, 1), i as i64, 0);
        }
        assert_eq!(
            p.check(&header(1, 0, 1, 1)),
            Verdict::Refuse(ResponseError::OutOfOrderSequenceNumber)
        );
        assert_eq!(p.check(&header(1, 0, 2, 1)), Verdict::Duplicate(2));
        assert_eq!(p.check(&header(1, 0, 7, 1)), Verdict::Append);
    }

    #[test]
    fn sequences_wrap() {
        let mut p = PartitionProducers::default();
        let h = header(1, 0, i32::MAX - 1, 2);
        p.record(&h, 0, 0);
        assert_eq!(p.check(&header(1, 0, 0, 1)), Verdict::Append);
    }
}
