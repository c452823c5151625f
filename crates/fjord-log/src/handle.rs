//! The async handle of one partition: a bounded append queue drained by one
//! appender task that writes groups of batches and makes them durable per the
//! durability policy (group commit), and a high watermark that readers wait
//! on.
//!
//! The appender (group commit, fsync pipelining) is in `appender.rs`.
//!
//! The high watermark moves only when acknowledgements are released, so no
//! reader ever sees a record that a crash could still take away.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fjord_core::policy::ResolvedPolicy;
use fjord_core::time::now_ms;
use fjord_core::Durability;
use parking_lot::{Mutex, RwLock};
use tokio::sync::{mpsc, oneshot, watch};

use crate::appender::{Appender, Cmd};
use crate::partition::{PartitionLog, RecoveryReport};
use crate::ring::Ring;
use crate::store::{AppendInfo, LogStore, MaintenanceReport, ReadResult};
use crate::tail::SharedTail;
use crate::LogError;

/// Observes the duration of every fsync (for the latency histogram).
pub type FsyncObserver = Arc<dyn Fn(Duration) + Send + Sync>;

#[derive(Clone)]
pub struct PartitionOptions {
    /// Appends queued per partition before producers wait.
    pub queue_depth: usize,
    pub fsync_observer: Option<FsyncObserver>,
    /// The tenant's encryption keys (see [`crate::crypt`]).
    pub keys: Option<Arc<crate::crypt::KeyRing>>,
}

impl Default for PartitionOptions {
    fn default() -> Self {
        Self {
            queue_depth: 1024,
            fsync_observer: None,
            keys: None,
        }
    }
}

pub(crate) type Store = Arc<RwLock<Box<dyn LogStore>>>;

struct Inner {
    store: Store,
    tx: mpsc::Sender<Cmd>,
    hwm: watch::Receiver<i64>,
    durability: Arc<Mutex<Durability>>,
    ephemeral: bool,
    /// Newest batches of a disk partition, for readers at the tail.
    tail: Option<Arc<SharedTail>>,
}

/// A cheap-to-clone handle on one partition.
#[derive(Clone)]
pub struct Partition {
    inner: Arc<Inner>,
}

impl Partition {
    /// Opens a durable partition in `dir` (recovering it) and starts its
    /// appender on the current Tokio runtime.
    pub fn open_disk(
        dir: &Path,
        policy: ResolvedPolicy,
        opts: PartitionOptions,
    ) -> Result<(Self, RecoveryReport), LogError> {
        let durability = policy.durability;
        let (mut log, report) = PartitionLog::open(dir, policy)?;
        log.set_keys(opts.keys.clone());
        let store: Store = Arc::new(RwLock::new(Box::new(log)));
        Ok((Self::start(store, durability, false, opts), report))
    }

    /// Creates an ephemeral (memory-only) partition.
    pub fn open_memory(policy: ResolvedPolicy, opts: PartitionOptions) -> Self {
        let durability = policy.durability;
        let store: Store = Arc::new(RwLock::new(Box::new(Ring::new(policy))));
        Self::start(store, durability, true, opts)
    }

    fn start(
        store: Store,
        durability: Durability,
        ephemeral: bool,
        opts: PartitionOptions,
    ) -> Self {
        let (tx, rx) = mpsc::channel(opts.queue_depth.max(1));
        let next = store.read().next_offset();
        let (hwm_tx, hwm_rx) = watch::channel(next);
        let durability = Arc::new(Mutex::new(durability));
        let tail = (!ephemeral).then(|| Arc::new(SharedTail::new(store.read().start_offset())));
        let appender = Appender::new(
            store.clone(),
            hwm_tx,
            durability.clone(),
            ephemeral,
            opts.fsync_observer,
            tail.clone(),
        );
        tokio::spawn(appender.run(rx));
        Self {
            inner: Arc::new(Inner {
                store,
                tx,
                hwm: hwm_rx,
                durability,
                ephemeral,
                tail,
            }),
        }
    }

    pub fn is_ephemeral(&self) -> bool {
        self.inner.ephemeral
    }

    /// Appends one whole RecordBatch v2; resolves once it is as durable as
    /// the policy says. Waits while the partition's queue is full.
    pub async fn append(&self, batch: Vec<u8>) -> Result<AppendInfo, LogError> {
        let (reply, rx) = oneshot::channel();
        self.inner
            .tx
            .send(Cmd::Append { batch, reply })
            .await
            .map_err(|_| LogError::Closed)?;
        rx.await.map_err(|_| LogError::Closed)?
    }

    /// Reads from `offset`. When nothing is there yet, waits up to `wait` for
    /// an append (long poll) instead of returning empty at once.
    pub async fn read(
        &self,
        offset: i64,
        max_bytes: usize,
        wait: Duration,
    ) -> Result<ReadResult, LogError> {
        let mut rx = self.inner.hwm.clone();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let hwm = *rx.borrow_and_update();
            if offset < hwm || wait.is_zero() {
                return self.read_now(offset, max_bytes, hwm).await;
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                // Timed out, or the appender is gone: answer with what is there.
                _ => return self.read_now(offset, max_bytes, hwm).await,
            }
        }
    }

    async fn read_now(
        &self,
        offset: i64,
        max_bytes: usize,
        hwm: i64,
    ) -> Result<ReadResult, LogError> {
        if self.inner.ephemeral {
            // A ring is memory: no blocking I/O to move off this thread.
            return self.inner.store.read().read(offset, max_bytes, hwm);
        }
        if let Some(tail) = &self.inner.tail {
            let start = tail.start();
            if offset >= start && offset <= hwm {
                if let Some((batches, next)) = tail.lock().read(offset, max_bytes, hwm) {
                    return Ok(ReadResult {
                        spans: batches.clone(),
                        batches,
                        next_offset: next,
                        start_offset: start,
                        high_watermark: hwm,
                    });
                }
            }
        }
        let store = self.inner.store.clone();
        tokio::task::spawn_blocking(move || store.read().read(offset, max_bytes, hwm))
            .await
            .map_err(|_| LogError::Closed)?
    }

    pub async fn offset_for_time(&self, ts_ms: i64) -> Result<Option<i64>, LogError> {
        let store = self.inner.store.clone();
        let hwm = self.high_watermark();
        let found = tokio::task::spawn_blocking(move || store.read().offset_for_time(ts_ms))
            .await
            .map_err(|_| LogError::Closed)??;
        Ok(found.filter(|&o| o < hwm))
    }

    /// Offset after the last record readers may see.
    pub fn high_watermark(&self) -> i64 {
        *self.inner.hwm.borrow()
    }

    /// A receiver that changes whenever the high watermark moves.
    pub fn watch(&self) -> watch::Receiver<i64> {
        self.inner.hwm.clone()
    }

    pub fn start_offset(&self) -> i64 {
        self.inner.store.read().start_offset()
    }

    pub fn size_bytes(&self) -> u64 {
        self.inner.store.read().size_bytes()
    }

    /// Appends waiting in the queue right now (for metrics).
    pub fn queued(&self) -> usize {
        self.inner.tx.max_capacity() - self.inner.tx.capacity()
    }

    pub async fn maintain(&self) -> Result<MaintenanceReport, LogError> {
        let store = self.inner.store.clone();
        let tail = self.inner.tail.clone();
        tokio::task::spawn_blocking(move || {
            let mut st = store.write();
            let report = st.maintain(now_ms());
            if let Some(tail) = tail {
                tail.set_start(st.start_offset());
                if report.as_ref().is_ok_and(|r| r.records_compacted > 0) {
                    // Readers must not get back records compaction removed.
                    tail.lock().clear();
                }
            }
            report
        })
        .await
        .map_err(|_| LogError::Closed)?
    }

    pub fn set_policy(&self, policy: ResolvedPolicy) {
        *self.inner.durability.lock() = policy.durability;
        self.inner.store.write().set_policy(policy);
    }

    /// Waits until every append queued so far is durable, then seals the
    /// indexes and fsyncs everything (used at shutdown).
    pub async fn flush(&self) -> Result<(), LogError> {
        let (reply, rx) = oneshot::channel();
        self.inner
            .tx
            .send(Cmd::Flush { reply })
            .await
            .map_err(|_| LogError::Closed)?;
        rx.await.map_err(|_| LogError::Closed)?
    }
}

impl Partition {
    /// Flushes like [`Partition::flush`], then stops the appender: the
    /// partition's files are not touched again (so they can be deleted).
    pub async fn close(&self) -> Result<(), LogError> {
        let (reply, rx) = oneshot::channel();
        self.inner
            .tx
            .send(Cmd::Close { reply })
            .await
            .map_err(|_| LogError::Closed)?;
        rx.await.map_err(|_| LogError::Closed)?
    }
}
