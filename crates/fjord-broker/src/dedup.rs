//! Deduplication within a time window (the `dedup_window_ms` policy).
//!
//! A producer that retries after a lost acknowledgement sends the same record
//! twice. When a stream deduplicates, each record's id (header
//! `fjord.dedup_id`, or its key with `dedup_by = "key"`) is remembered per
//! partition for the window; a record whose id is already there is not
//! stored again and is answered with the original's offset.
//!
//! Concurrent producers of the same id are safe: the first claims the id
//! before appending and the others wait for its outcome. If that append
//! fails the claim is dropped, so a retry is stored. The window is rebuilt
//! from the log when the node starts (it reads back the last window of
//! records by time), so a restart does not open a gap. The memory held is
//! bounded: at most `ENTRIES_MAX` ids per partition, the oldest forgotten
//! first.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;
use fjord_core::policy::{DedupBy, DEDUP_ID_HEADER};
use fjord_core::{Header, Record, RecordInput};
use parking_lot::Mutex;
use tokio::sync::watch;

/// Ids remembered per partition at most.
pub const ENTRIES_MAX: usize = 1_000_000;

/// The outcome of the append that stored an id: `(offset, publish_ts)`.
pub type Outcome = Option<Result<(i64, i64), String>>;

/// What to do with one record of a produce call.
pub enum Claim {
    /// No id: always appended.
    Untracked,
    /// First of its id: append it, then report the outcome.
    New(watch::Sender<Outcome>),
    /// Already appended (or being appended) by an earlier call.
    Duplicate(watch::Receiver<Outcome>),
    /// The same id as an earlier record of this very call.
    SameAs(usize),
}

struct Entry {
    ts_ms: i64,
    outcome: watch::Receiver<Outcome>,
}

#[derive(Default)]
pub struct DedupWindow {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<Bytes, Entry>,
    /// Insertion order, for expiry.
    order: VecDeque<(i64, Bytes)>,
}

impl Inner {
    fn expire(&mut self, oldest_ms: i64) {
        while let Some((ts, id)) = self.order.front() {
            if *ts >= oldest_ms && self.entries.len() <= ENTRIES_MAX {
                break;
            }
            if self.entries.get(id).is_some_and(|e| e.ts_ms == *ts) {
                self.entries.remove(id);
            }
            self.order.pop_front();
        }
    }

    fn insert(&mut self, id: Bytes, ts_ms: i64, outcome: watch::Receiver<Outcome>) {
        self.order.push_back((ts_ms, id.clone()));
        self.entries.insert(id, Entry { ts_ms, outcome });
    }
}

fn id_of(key: &Option<Bytes>, headers: &[Header], by: DedupBy) -> Option<Bytes> {
    match by {
        DedupBy::Key => key.clone(),
        DedupBy::Id => headers
            .iter()
            .find(|h| h.key == DEDUP_ID_HEADER)
            .and_then(|h| h.value.clone()),
    }
}

/// The id a record is deduplicated by, if any.
pub fn dedup_id(r: &RecordInput, by: DedupBy) -> Option<Bytes> {
    id_of(&r.key, &r.headers, by)
}

impl DedupWindow {
    /// Classifies the records of one produce call to this partition.
    pub fn claim(&self, ids: &[Option<Bytes>], now_ms: i64, window_ms: i64) -> Vec<Claim> {
        let mut inner = self.inner.lock();
        inner.expire(now_ms.saturating_sub(window_ms));
        let mut in_call: HashMap<&Bytes, usize> = HashMap::new();
        let mut claims = Vec::with_capacity(ids.len());
        for (i, id) in ids.iter().enumerate() {
            let Some(id) = id else {
                claims.push(Claim::Untracked);
                continue;
            };
            if let Some(&first) = in_call.get(id) {
                claims.push(Claim::SameAs(first));
                continue;
            }
            in_call.insert(id, i);
            let live = inner.entries.get(id).filter(|e| {
                // A claim whose append failed, or whose claimer vanished
                // without an outcome, does not count.
                let failed = matches!(*e.outcome.borrow(), Some(Err(_)));
                let abandoned = e.outcome.borrow().is_none() && e.outcome.has_changed().is_err();
                !failed && !abandoned
            });
            match live {
                Some(e) => claims.push(Claim::Duplicate(e.outcome.clone())),
                None => {
                    let (tx, rx) = watch::channel(None);
                    inner.insert(id.clone(), now_ms, rx);
                    claims.push(Claim::New(tx));
                }
            }
        }
        claims
    }

    /// Remembers records read back from the log (at start).
    pub fn seed(&self, records: &[Record], partition_by: DedupBy) {
        let mut inner = self.inner.lock();
        for r in records {
            if let Some(id) = id_of(&r.key, &r.headers, partition_by) {
                let (_tx, rx) = watch::channel(Some(Ok((r.offset, r.publish_ts))));
                inner.insert(id, r.publish_ts, rx);
            }
        }
        // Only the entry cap applies here; time expiry runs at the next claim.
        inner.expire(i64::MIN);
    }
}

/// Waits for the outcome of the append that first stored an id.
pub async fn outcome(mut rx: watch::Receiver<Outcome>) -> Result<(i64, i64), String> {
    match rx.wait_for(|o| o.is_some()).await {
        Ok(o) => o.clone().unwrap_or_else(|| Err("no outcome".into())),
        Err(_) => Err("the original append was abandoned".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[Option<&'static str>]) -> Vec<Option<Bytes>> {
        v.iter()
            .map(|s| s.map(|s| Bytes::from_static(s.as_bytes())))
            .collect()
    }

    #[test]
    fn classifies_new_duplicate_same_call_and_expired() {
        let w = DedupWindow::default();
        let c = w.claim(&ids(&[Some("a"), None, Some("a"), Some("b")]), 1000, 100);
        assert!(matches!(c[0], Claim::New(_)));
        assert!(matches!(c[1], Claim::Untracked));
        assert!(matches!(c[2], Claim::SameAs(0)));
        assert!(matches!(c[3], Claim::New(_)));
        if let Claim::New(tx) = &c[0] {
            tx.send(Some(Ok((7, 1000)))).unwrap();
        }
        let c2 = w.claim(&ids(&[Some("a")]), 1050, 100);
        assert!(matches!(c2[0], Claim::Duplicate(_)));
        // Past the window, the id is new again.
        let c3 = w.claim(&ids(&[Some("a")]), 1200, 100);
        assert!(matches!(c3[0], Claim::New(_)));
    }

    #[test]
    fn a_failed_claim_does_not_block_a_retry() {
        let w = DedupWindow::default();
        let c = w.claim(&ids(&[Some("x")]), 1000, 100);
        if let Claim::New(tx) = &c[0] {
            tx.send(Some(Err("disk full".into()))).unwrap();
        }
        let c2 = w.claim(&ids(&[Some("x")]), 1001, 100);
        assert!(matches!(c2[0], Claim::New(_)));
    }
}
