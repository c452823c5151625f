//! The async handle of one partition: a bounded append queue drained by one
//! appender task that writes groups of batches and makes them durable per the
//! durability policy (group commit), and a high watermark that readers wait
//! on.
//!
//! Flow: `append` sends on a bounded channel, so a producer that outruns the
//! disk waits here (back pressure), never growing a buffer. The appender
//! drains whatever is queued, writes it under the store's lock on a blocking
//! thread, then
//! * `os`: acknowledges at once;
//! * `always`: fsyncs (outside the lock, so reads go on) and acknowledges
//!   the whole group: concurrent producers share one fsync;
//! * `interval(ms)`: parks the acknowledgements until the next fsync; fsyncs
//!   run at most once per `ms`, and at most `ms` after a record was written
//!   (at once when the previous fsync is already `ms` ago).
//!
//! The high watermark moves only when acknowledgements are released, so no
//! reader ever sees a record that a crash could still take away.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fjord_core::policy::ResolvedPolicy;
use fjord_core::time::now_ms;
use fjord_core::Durability;
use parking_lot::{Mutex, RwLock};
use tokio::sync::{mpsc, oneshot, watch};

use crate::partition::{PartitionLog, RecoveryReport};
use crate::ring::Ring;
use crate::store::{AppendInfo, LogStore, MaintenanceReport, ReadResult};
use crate::LogError;

/// Observes the duration of every fsync (for the latency histogram).
pub type FsyncObserver = Arc<dyn Fn(Duration) + Send + Sync>;

#[derive(Clone)]
pub struct PartitionOptions {
    /// Appends queued per partition before producers wait.
    pub queue_depth: usize,
    pub fsync_observer: Option<FsyncObserver>,
}

impl Default for PartitionOptions {
    fn default() -> Self {
        Self {
            queue_depth: 1024,
            fsync_observer: None,
        }
    }
}

/// Appends written per group at most (bounds the time the lock is held).
const GROUP_APPENDS_MAX: usize = 512;

type Store = Arc<RwLock<Box<dyn LogStore>>>;
type Reply = oneshot::Sender<Result<AppendInfo, LogError>>;

enum Cmd {
    Append {
        batch: Vec<u8>,
        reply: Reply,
    },
    Flush {
        reply: oneshot::Sender<Result<(), LogError>>,
    },
    /// Flush, answer, and stop: later appends fail with `Closed`.
    Close {
        reply: oneshot::Sender<Result<(), LogError>>,
    },
}

struct Inner {
    store: Store,
    tx: mpsc::Sender<Cmd>,
    hwm: watch::Receiver<i64>,
    durability: Arc<Mutex<Durability>>,
    ephemeral: bool,
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
        let (log, report) = PartitionLog::open(dir, policy)?;
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
        let appender = Appender {
            store: store.clone(),
            hwm: hwm_tx,
            durability: durability.clone(),
            ephemeral,
            observer: opts.fsync_observer,
            parked: Vec::new(),
            last_sync: None,
        };
        tokio::spawn(appender.run(rx));
        Self {
            inner: Arc::new(Inner {
                store,
                tx,
                hwm: hwm_rx,
                durability,
                ephemeral,
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
        tokio::task::spawn_blocking(move || store.write().maintain(now_ms()))
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

struct Appender {
    store: Store,
    hwm: watch::Sender<i64>,
    durability: Arc<Mutex<Durability>>,
    ephemeral: bool,
    observer: Option<FsyncObserver>,
    /// Written but not yet fsynced appends, waiting for their ack.
    parked: Vec<(Reply, AppendInfo)>,
    /// When the last fsync started.
    last_sync: Option<tokio::time::Instant>,
}

impl Appender {
    async fn run(mut self, mut rx: mpsc::Receiver<Cmd>) {
        let mut deadline: Option<tokio::time::Instant> = None;
        loop {
            let cmd = match deadline {
                Some(d) => tokio::select! {
                    c = rx.recv() => c,
                    _ = tokio::time::sleep_until(d) => {
                        deadline = None;
                        self.sync_and_release().await;
                        continue;
                    }
                },
                None => rx.recv().await,
            };
            let Some(first) = cmd else { break };
            let mut appends = Vec::new();
            let mut flushes = Vec::new();
            let mut closing = false;
            let mut next = Some(first);
            while let Some(c) = next.take() {
                match c {
                    Cmd::Append { batch, reply } => appends.push((batch, reply)),
                    Cmd::Flush { reply } => flushes.push(reply),
                    Cmd::Close { reply } => {
                        flushes.push(reply);
                        closing = true;
                    }
                }
                if appends.len() < GROUP_APPENDS_MAX && !closing {
                    next = rx.try_recv().ok();
                }
            }
            if !appends.is_empty() {
                let written = self.write(appends).await;
                let mode = if self.ephemeral {
                    Durability::Os
                } else {
                    *self.durability.lock()
                };
                for (reply, res) in written {
                    match res {
                        Ok(info) => self.parked.push((reply, info)),
                        Err(e) => {
                            let _ = reply.send(Err(e));
                        }
                    }
                }
                match mode {
                    Durability::Os => self.release(),
                    Durability::Always => self.sync_and_release().await,
                    Durability::Interval { ms } => {
                        if deadline.is_none() && !self.parked.is_empty() {
                            // At most one fsync per interval, but no waiting
                            // when the last one is already an interval ago: a
                            // lone append is acknowledged after one fsync.
                            let now = tokio::time::Instant::now();
                            let due = self
                                .last_sync
                                .map_or(now, |t| t + Duration::from_millis(ms));
                            if due <= now {
                                self.sync_and_release().await;
                            } else {
                                deadline = Some(due);
                            }
                        }
                    }
                }
            }
            if !flushes.is_empty() {
                deadline = None;
                self.sync_and_release().await;
                let store = self.store.clone();
                let res = tokio::task::spawn_blocking(move || store.write().flush_all()).await;
                for reply in flushes {
                    let r = match &res {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(e)) => Err(LogError::Poisoned(format!("flush failed: {e}"))),
                        Err(_) => Err(LogError::Closed),
                    };
                    let _ = reply.send(r);
                }
            }
            if closing {
                // Appends still queued behind the close fail with `Closed`.
                return;
            }
        }
        // Every handle is gone: make what was written durable before leaving.
        self.sync_and_release().await;
        let store = self.store.clone();
        let _ = tokio::task::spawn_blocking(move || store.write().flush_all()).await;
    }

    async fn write(
        &self,
        appends: Vec<(Vec<u8>, Reply)>,
    ) -> Vec<(Reply, Result<AppendInfo, LogError>)> {
        let store = self.store.clone();
        let res = tokio::task::spawn_blocking(move || {
            let (mut batches, replies): (Vec<Vec<u8>>, Vec<Reply>) = appends.into_iter().unzip();
            let results = store.write().append_group(&mut batches, now_ms());
            replies.into_iter().zip(results).collect::<Vec<_>>()
        })
        .await;
        // If the blocking task panicked, nothing can be said of the writes;
        // the repliers went with it, so callers see `Closed`.
        res.unwrap_or_default()
    }

    /// Publishes the new high watermark and acknowledges parked appends.
    fn release(&mut self) {
        let next = self.store.read().next_offset();
        self.hwm.send_if_modified(|h| {
            let moved = *h != next;
            *h = next;
            moved
        });
        for (reply, info) in self.parked.drain(..) {
            let _ = reply.send(Ok(info));
        }
    }

    async fn sync_and_release(&mut self) {
        if self.parked.is_empty() {
            return;
        }
        let target = self.store.read().sync_target();
        let Some(file) = target else {
            self.release();
            return;
        };
        let started = Instant::now();
        self.last_sync = Some(tokio::time::Instant::now());
        let res = tokio::task::spawn_blocking(move || file.sync_data()).await;
        if let Some(obs) = &self.observer {
            obs(started.elapsed());
        }
        match res {
            Ok(Ok(())) => self.release(),
            failure => {
                // After a failed fsync the page cache may no longer match the
                // disk; refuse all further writes rather than ack on top of it.
                let why = match failure {
                    Ok(Err(e)) => format!("fsync failed: {e}"),
                    _ => "fsync task failed".to_string(),
                };
                tracing::error!(error = %why, "partition poisoned");
                self.store.write().poison(&why);
                for (reply, _) in self.parked.drain(..) {
                    let _ = reply.send(Err(LogError::Poisoned(why.clone())));
                }
            }
        }
    }
}
