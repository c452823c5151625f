//! The appender task of one partition: group commit with pipelined fsyncs.
//!
//! `Partition::append` sends on a bounded channel, so a producer that
//! outruns the disk waits there (back pressure), never growing a buffer. The
//! appender drains whatever is queued (up to `GROUP_APPENDS_MAX`), writes it
//! with one vectored write on a blocking thread, then by durability:
//!
//! * `always`: acknowledges after an fsync that covers the append. The fsync
//!   starts right after the write; appends that arrive meanwhile queue up and
//!   are written together after it, then share the next fsync (group
//!   commit).
//! * `interval(ms)`: acknowledges once written (a process crash loses
//!   nothing: the page cache survives it) and fsyncs in the background, at
//!   most once per `ms` and at most `ms` after a write (at once when the last
//!   fsync is `ms` ago): a power failure loses at most the last `ms` plus one
//!   fsync's time. This is what an fsync interval means in Kafka
//!   (`flush.ms`), Redis (`appendfsync everysec`) and PostgreSQL
//!   (`synchronous_commit = off`).
//! * `os`: acknowledges once written; the OS flushes when it likes.
//!
//! With `always`, writes and fsyncs alternate: acknowledgements wait for
//! the fsync, and an fsync racing with appends to the same file was measured
//! (docs/benchmarks.md) to take 10–30 times longer on ext4, which is added
//! latency for every producer. With `interval`, where acknowledgements do
//! not wait, writes go on during the background fsync: measured, that is
//! 79–100 % of a bare writer's bandwidth against 57–68 % when they alternate.
//! The price is a longer fsync, which widens the loss window on power failure
//! to the interval plus that fsync's duration (reported by the
//! `fjord_fsync_seconds` histogram).
//!
//! The high watermark moves when acknowledgements are released, so readers
//! never see a record before its producer could. A failed
//! fsync poisons the partition: every waiting append fails, and all later
//! appends are refused until restart (the page cache may no longer match the
//! disk; recovery re-reads what the disk really holds).

use std::collections::VecDeque;
use std::fs::File;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fjord_core::time::now_ms;
use fjord_core::Durability;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::handle::{FsyncObserver, Store};
use crate::store::AppendInfo;
use crate::tail::SharedTail;
use crate::LogError;

/// Appends written per group at most (bounds the time the lock is held).
const GROUP_APPENDS_MAX: usize = 512;

pub(crate) type Reply = oneshot::Sender<Result<AppendInfo, LogError>>;

pub(crate) enum Cmd {
    Append {
        batch: Vec<u8>,
        reply: Reply,
    },
    /// Everything queued so far durable, indexes written.
    Flush {
        reply: oneshot::Sender<Result<(), LogError>>,
    },
    /// A flush, then stop: appends queued behind it fail with `Closed`.
    Close {
        reply: oneshot::Sender<Result<(), LogError>>,
    },
}

/// An fsync in flight and what it covers.
struct Sync {
    task: JoinHandle<std::io::Result<()>>,
    /// The log's next offset when the fsync started: everything below it is
    /// durable once the fsync succeeds.
    covers: i64,
    started: Instant,
}

pub(crate) struct Appender {
    store: Store,
    hwm: watch::Sender<i64>,
    durability: Arc<Mutex<Durability>>,
    ephemeral: bool,
    observer: Option<FsyncObserver>,
    /// Newest batches for readers (disk partitions only: a ring is memory).
    tail: Option<Arc<SharedTail>>,
    /// Written, not yet covered by a completed fsync, in offset order.
    parked: VecDeque<(Reply, AppendInfo)>,
    sync: Option<Sync>,
    /// When the last fsync started (for `interval`).
    last_sync: Option<tokio::time::Instant>,
    /// When the next `interval` fsync is due, if one is waiting.
    due: Option<tokio::time::Instant>,
    /// Acknowledged writes no fsync has covered yet (`interval`).
    unsynced: bool,
}

impl Appender {
    pub(crate) fn new(
        store: Store,
        hwm: watch::Sender<i64>,
        durability: Arc<Mutex<Durability>>,
        ephemeral: bool,
        observer: Option<FsyncObserver>,
        tail: Option<Arc<SharedTail>>,
    ) -> Self {
        Self {
            store,
            hwm,
            durability,
            ephemeral,
            observer,
            tail,
            parked: VecDeque::new(),
            sync: None,
            last_sync: None,
            due: None,
            unsynced: false,
        }
    }

    fn mode(&self) -> Durability {
        if self.ephemeral {
            Durability::Os
        } else {
            *self.durability.lock()
        }
    }

    pub(crate) async fn run(mut self, mut rx: mpsc::Receiver<Cmd>) {
        loop {
            let cmd = tokio::select! {
                // With `always`, appends wait in the queue while an fsync
                // runs (see the module comment for why).
                c = rx.recv(), if self.sync.is_none() || self.mode() != Durability::Always => c,
                done = async { (&mut self.sync.as_mut().expect("guarded").task).await }, if self.sync.is_some() => {
                    self.sync_done(done);
                    self.schedule();
                    continue;
                }
                _ = tokio::time::sleep_until(self.due.unwrap_or_else(tokio::time::Instant::now)), if self.due.is_some() && self.sync.is_none() => {
                    self.due = None;
                    self.start_sync();
                    continue;
                }
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
                for (reply, res) in self.write(appends).await {
                    match res {
                        Ok(info) => self.parked.push_back((reply, info)),
                        Err(e) => {
                            let _ = reply.send(Err(e));
                        }
                    }
                }
                match self.mode() {
                    Durability::Always => {}
                    Durability::Os => {
                        let next = self.store.read().next_offset();
                        self.release_below(next);
                    }
                    Durability::Interval { .. } => {
                        let next = self.store.read().next_offset();
                        self.release_below(next);
                        self.unsynced = true;
                    }
                }
                self.schedule();
            }
            if !flushes.is_empty() {
                let res = self.flush_all().await;
                for reply in flushes {
                    let _ = reply.send(match &res {
                        Ok(()) => Ok(()),
                        Err(e) => Err(LogError::Poisoned(format!("flush failed: {e}"))),
                    });
                }
            }
            if closing {
                return;
            }
        }
        // Every handle is gone: make what was written durable before leaving.
        let _ = self.flush_all().await;
    }

    /// Starts an fsync now or sets when one is due, per the durability.
    fn schedule(&mut self) {
        if (self.parked.is_empty() && !self.unsynced) || self.sync.is_some() {
            return;
        }
        match self.mode() {
            Durability::Os => {}
            Durability::Always => self.start_sync(),
            Durability::Interval { ms } => {
                if self.due.is_none() {
                    let now = tokio::time::Instant::now();
                    let due = self
                        .last_sync
                        .map_or(now, |t| t + Duration::from_millis(ms));
                    if due <= now {
                        self.start_sync();
                    } else {
                        self.due = Some(due);
                    }
                }
            }
        }
    }

    fn sync_target(&self) -> (Option<Arc<File>>, i64) {
        let s = self.store.read();
        (s.sync_target(), s.next_offset())
    }

    fn start_sync(&mut self) {
        debug_assert!(self.sync.is_none());
        self.unsynced = false;
        let (target, covers) = self.sync_target();
        let Some(file) = target else {
            self.release_below(covers);
            return;
        };
        self.last_sync = Some(tokio::time::Instant::now());
        self.sync = Some(Sync {
            task: tokio::task::spawn_blocking(move || file.sync_data()),
            covers,
            started: Instant::now(),
        });
    }

    fn sync_done(&mut self, done: Result<std::io::Result<()>, tokio::task::JoinError>) {
        let Some(sync) = self.sync.take() else { return };
        if let Some(obs) = &self.observer {
            obs(sync.started.elapsed());
        }
        match done {
            Ok(Ok(())) => self.release_below(sync.covers),
            failure => {
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

    /// Acknowledges parked appends below `next` and moves the watermark.
    fn release_below(&mut self, next: i64) {
        while self
            .parked
            .front()
            .is_some_and(|(_, info)| info.last_offset < next)
        {
            if let Some((reply, info)) = self.parked.pop_front() {
                let _ = reply.send(Ok(info));
            }
        }
        self.hwm.send_if_modified(|h| {
            let moved = *h < next;
            if moved {
                *h = next;
            }
            moved
        });
    }

    /// Waits for the fsync in flight, makes everything written durable and
    /// writes the indexes.
    async fn flush_all(&mut self) -> Result<(), LogError> {
        self.due = None;
        if let Some(sync) = self.sync.as_mut() {
            let done = (&mut sync.task).await;
            self.sync_done(done);
        }
        if !self.parked.is_empty() || self.unsynced {
            self.start_sync();
            if let Some(sync) = self.sync.as_mut() {
                let done = (&mut sync.task).await;
                self.sync_done(done);
            }
        }
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || store.write().flush_all()).await {
            Ok(r) => r,
            Err(_) => Err(LogError::Closed),
        }
    }

    async fn write(
        &self,
        appends: Vec<(Vec<u8>, Reply)>,
    ) -> Vec<(Reply, Result<AppendInfo, LogError>)> {
        // On the blocking pool even when small: measured, writing small
        // groups on this task saved ~30 µs of p50 latency, but a write into
        // the page cache can sleep for long under dirty-page throttling, and
        // would stall every connection on this worker thread.
        let now = now_ms();
        let store = self.store.clone();
        let tail = self.tail.clone();
        let res = tokio::task::spawn_blocking(move || {
            write_group(&mut **store.write(), tail.as_deref(), appends, now)
        })
        .await;
        // If the blocking task panicked, nothing can be said of the writes;
        // the repliers went with it, so callers see `Closed`.
        res.unwrap_or_default()
    }
}

/// Writes a group and puts what was written on the tail, before the
/// caller moves the watermark.
fn write_group(
    store: &mut dyn crate::store::LogStore,
    tail: Option<&SharedTail>,
    appends: Vec<(Vec<u8>, Reply)>,
    now: i64,
) -> Vec<(Reply, Result<AppendInfo, LogError>)> {
    let (mut batches, replies): (Vec<Vec<u8>>, Vec<Reply>) = appends.into_iter().unzip();
    let results = store.append_group(&mut batches, now);
    if let Some(tail) = tail {
        tail.set_start(store.start_offset());
        let mut t = tail.lock();
        for (batch, r) in batches.into_iter().zip(&results) {
            match r {
                Ok(info) => t.push(info.base_offset, info.last_offset + 1, batch.into()),
                Err(_) => t.clear(),
            }
        }
    }
    replies.into_iter().zip(results).collect()
}
