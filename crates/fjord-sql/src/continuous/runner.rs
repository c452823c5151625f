//! Running one continuous query: read its stream's partitions as they
//! grow, push every batch through the plan, close windows as the watermark
//! passes them, and append the results — exactly once.
//!
//! Exactly once: results are appended only after a checkpoint holding them
//! (with the source offsets and window state they follow from) is stored.
//! Each result record carries `fjord.query.epoch: <epoch>.<chunk>`; after a
//! crash the query restores the checkpoint, finds which chunks of its last
//! epoch reached the stream (reading from where the stream ended when the
//! checkpoint was taken) and appends only the rest. Reading resumes at the
//! checkpoint's offsets with its window state, so no row is counted twice
//! and none is missed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::execution::TaskContext;
use fjord_broker::{Broker, BrokerError, Position};
use fjord_core::{Header as RecordHeader, RecordInput, StreamRef};
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};

use super::aggregate::WindowedState;
use super::checkpoint::{self, Checkpoint, Counters, Header, Pending, PendingRecord};
use super::interval::{self, Buffers};
use super::options::Options;
use super::plan::Pipeline;
use super::records::Shape;
use crate::columns::{BatchBuilder, Projection};

/// A push query ends when its client goes away.
const CLIENT_GONE: &str = "the client went away";

/// The header marking a query's result records with their epoch and chunk.
pub const EPOCH_HEADER: &str = "fjord.query.epoch";

/// Records appended per produce call (one chunk).
const CHUNK: usize = 1000;
/// Records asked of a partition per read.
const READ_RECORDS: usize = 8192;
const READ_BYTES: usize = 8 << 20;
/// How long a read waits for new records.
const READ_WAIT: Duration = Duration::from_millis(250);
/// A checkpoint at least this often while input moves and nothing is
/// emitted (bounds what a restart re-reads).
const CHECKPOINT_EVERY: Duration = Duration::from_secs(5);
/// How often an aggregate without a window emits its changed groups.
const CHANGES_EVERY: Duration = Duration::from_millis(100);
/// Results are held at most this long to be appended together.
const LINGER: Duration = Duration::from_millis(20);

/// What `SHOW QUERIES` reports.
#[derive(Debug, Clone, Default)]
pub struct Status {
    pub state: &'static str,
    pub error: Option<String>,
    pub counters: Counters,
    pub watermark: Option<i64>,
    pub offsets: Vec<i64>,
    /// Each partition read and the next offset to read there.
    pub positions: Vec<(StreamRef, u32, i64)>,
    pub open_windows: usize,
    pub groups: usize,
}

/// Where the checkpoints go (the meta store, behind the registry).
pub trait CheckpointStore: Send + Sync {
    fn save(&self, bytes: &[u8]) -> Result<(), String>;
}

pub struct Runner {
    pub broker: Arc<Broker>,
    pub pipeline: Pipeline,
    pub task: Arc<TaskContext>,
    pub options: Options,
    pub output: StreamRef,
    /// Late rows' stream, when they are kept.
    pub side: Option<StreamRef>,
    /// `None` for a push query: nothing to resume.
    pub store: Option<Arc<dyn CheckpointStore>>,
    /// A push query's client: results go there, not to a stream.
    pub channel: Option<mpsc::Sender<RecordBatch>>,
    pub status: Arc<Mutex<Status>>,
    /// A materialized view's query: rows stored whole, keyed by their
    /// group and window.
    pub view: bool,
    /// Where its counters are exported: (metrics, tenant, query name).
    pub metrics: Option<(Arc<super::metrics::QueryMetrics>, String, String)>,
}

enum Msg {
    Read {
        /// The input: a partition of the stream (of the first stream, then
        /// of the second, when two are joined).
        partition: usize,
        /// The offset the read started at.
        from: i64,
        batch: RecordBatch,
        /// The records the batch was built from (for late rows kept as
        /// they were published).
        records: Vec<fjord_core::Record>,
        next: i64,
        skipped: u64,
        caught_up: bool,
    },
    Failed(String),
}

/// Which stream a pending result goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Target {
    Output,
    Side,
}

struct Run {
    r: Runner,
    header: Header,
    /// In a mutex only to be `Sync` (accumulators are not): one task uses it.
    state: Option<Mutex<WindowedState>>,
    shape: Shape,
    pending: BTreeMap<(Target, u32), Vec<RecordInput>>,
    /// A push query's results not yet sent.
    batches: Vec<RecordBatch>,
    pending_since: Option<Instant>,
    last_rows: Vec<Instant>,
    caught_up: Vec<bool>,
    last_checkpoint: Instant,
    last_changes: Instant,
    /// The counters as last exported.
    exported: Counters,
    moved: bool,
    round_robin: u32,
    /// Joining two streams: each side's rows waiting for partners.
    buffers: Option<Buffers>,
}

/// One partition the query reads.
struct Input {
    /// 0: the query's source stream; 1: the stream it joins.
    side: usize,
    stream: StreamRef,
    partition: u32,
    columns: Projection,
    schema: SchemaRef,
}

impl Runner {
    /// Runs until `stop` turns true (then takes a last checkpoint) or the
    /// query fails.
    pub async fn run(self, restored: Checkpoint, mut stop: watch::Receiver<bool>) {
        let status = self.status.clone();
        let shape = if self.view {
            Shape::plain(&self.pipeline.output_schema, self.pipeline.view_key())
        } else {
            Shape::keyed(
                &self.pipeline.output_schema,
                self.pipeline.key_columns.clone(),
            )
        };
        let state = self
            .pipeline
            .aggregate
            .clone()
            .map(|spec| WindowedState::new(spec, self.options.allowed_lateness_ms).map(Mutex::new))
            .transpose();
        let state = match state {
            Ok(s) => s,
            Err(e) => {
                let mut s = status.lock();
                s.state = "failed";
                s.error = Some(e.to_string());
                return;
            }
        };
        let n = restored.header.offsets.len();
        let mut run = Run {
            r: self,
            header: restored.header,
            state,
            shape,
            pending: BTreeMap::new(),
            batches: Vec::new(),
            pending_since: None,
            last_rows: vec![Instant::now(); n],
            caught_up: vec![false; n],
            last_checkpoint: Instant::now(),
            last_changes: Instant::now(),
            exported: Counters::default(),
            moved: false,
            round_robin: 0,
            buffers: None,
        };
        if run.r.pipeline.join.is_some() {
            run.buffers = Some(Buffers::default());
        }
        if let Err(e) = run.restore(restored.windows, &mut stop).await {
            run.fail(e);
            return;
        }
        status.lock().state = "running";
        let (tx, mut rx) = mpsc::channel(4);
        let readers: Vec<_> = (0..n)
            .map(|p| tokio::spawn(run.reader(p, tx.clone())))
            .collect();
        drop(tx);
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let result: Result<(), String> = loop {
            tokio::select! {
                _ = stop.changed() => {
                    break run.commit(&mut stop, true).await;
                }
                msg = rx.recv() => {
                    let Some(msg) = msg else { break Err("the stream's readers stopped".into()) };
                    if let Err(e) = run.take(msg).await {
                        break Err(e);
                    }
                    // More read already: take it too before emitting, up to
                    // a bound, so results go out in few appends.
                    let mut failed = None;
                    while run.pending_len() < 10 * CHUNK
                        && run.pending_since.is_none_or(|t| t.elapsed() < LINGER)
                    {
                        let Ok(msg) = rx.try_recv() else { break };
                        if let Err(e) = run.take(msg).await {
                            failed = Some(e);
                            break;
                        }
                    }
                    if let Some(e) = failed {
                        break Err(e);
                    }
                    if let Err(e) = run.step(&mut stop).await {
                        break Err(e);
                    }
                }
                _ = tick.tick() => {
                    if let Err(e) = run.step(&mut stop).await {
                        break Err(e);
                    }
                }
            }
        };
        for r in readers {
            r.abort();
        }
        match result {
            Ok(()) => status.lock().state = "stopped",
            Err(e) if e == CLIENT_GONE => status.lock().state = "stopped",
            Err(e) => run.fail(e),
        }
    }
}

impl Run {
    fn fail(&self, e: String) {
        tracing::error!(query = %self.r.output, error = %e, "continuous query failed");
        let mut s = self.r.status.lock();
        s.state = "failed";
        s.error = Some(e);
    }

    fn pending_len(&self) -> usize {
        self.pending.values().map(|v| v.len()).sum()
    }

    /// Puts back the window state and finishes the appends the last
    /// checkpoint was about to make.
    async fn restore(
        &mut self,
        windows: Vec<super::aggregate::WindowSnapshot>,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), String> {
        if let Some(state) = &mut self.state {
            state.lock().restore(windows).map_err(|e| e.to_string())?;
        }
        self.rebuild_buffers().await?;
        let pending = std::mem::take(&mut self.header.pending);
        let epoch = self.header.epoch;
        for p in &pending {
            let stream = self.stream_of(&p.stream)?;
            let records: Vec<RecordInput> = p.records.iter().map(to_input).collect();
            self.append(
                &stream,
                p.partition,
                p.from_offset,
                epoch,
                records,
                true,
                stop,
            )
            .await?;
        }
        self.publish_status();
        Ok(())
    }

    /// Input `i`: which stream, which partition, read as which columns.
    fn input(&self, i: usize) -> Input {
        let p = &self.r.pipeline;
        let first = self.header.joined.unwrap_or(self.header.offsets.len());
        match &p.join {
            Some(j) if i >= first => Input {
                side: 1,
                stream: j.other.clone(),
                partition: (i - first) as u32,
                columns: j.other_columns.clone(),
                schema: j.other_schema.clone(),
            },
            _ => Input {
                side: 0,
                stream: p.source.clone(),
                partition: i as u32,
                columns: p.columns.clone(),
                schema: p.scan_schema.clone(),
            },
        }
    }

    /// Joining two streams: the buffers as they were at the checkpoint,
    /// read again from the log (they hold only rows at or after their
    /// bound, so reading from the oldest batch held and applying the bound
    /// gives them back).
    async fn rebuild_buffers(&mut self) -> Result<(), String> {
        let Some(join) = self.r.pipeline.join.clone() else {
            return Ok(());
        };
        let inputs_wm = self.header.watermark.map(|w| w + join.slack());
        let mut buffers = Buffers::default();
        for i in 0..self.header.offsets.len() {
            let end = self.header.offsets[i];
            let from = self.header.retain.get(i).copied().unwrap_or(end);
            if from >= end {
                continue;
            }
            let input = self.input(i);
            let mut b = BatchBuilder::new(input.schema.clone(), &input.columns, input.partition);
            crate::scan::each_record(
                &self.r.broker,
                &input.stream,
                input.partition,
                (from, end),
                |r| {
                    b.push(r);
                    Ok(())
                },
            )
            .await
            .map_err(|e| e.to_string())?;
            let batch = b.finish().map_err(|e| e.to_string())?;
            buffers.hold(&join, input.side, i, from, batch, inputs_wm)?;
        }
        self.buffers = Some(buffers);
        Ok(())
    }

    fn stream_of(&self, name: &str) -> Result<StreamRef, String> {
        for s in std::iter::once(&self.r.output).chain(self.r.side.as_ref()) {
            if format!("{}/{}", s.namespace, s.stream) == name {
                return Ok(s.clone());
            }
        }
        Err(format!("the checkpoint names an unknown stream {name}"))
    }

    fn reader(
        &self,
        p: usize,
        tx: mpsc::Sender<Msg>,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let broker = self.r.broker.clone();
        let Input {
            stream,
            partition,
            columns,
            schema,
            ..
        } = self.input(p);
        let mut next = self.header.offsets[p];
        async move {
            loop {
                let fetched = broker
                    .fetch(
                        &stream,
                        partition,
                        Position::Offset(next),
                        READ_RECORDS,
                        READ_BYTES,
                        READ_WAIT,
                    )
                    .await;
                let msg = match fetched {
                    Ok(f) => {
                        let mut b = BatchBuilder::new(schema.clone(), &columns, partition);
                        for r in &f.records {
                            b.push(r);
                        }
                        let batch = match b.finish() {
                            Ok(b) => b,
                            Err(e) => {
                                let _ = tx.send(Msg::Failed(e.to_string())).await;
                                return;
                            }
                        };
                        let at = next;
                        next = f.next_offset.max(next);
                        Msg::Read {
                            partition: p,
                            from: at,
                            batch,
                            records: f.records,
                            next,
                            skipped: 0,
                            caught_up: next >= f.high_watermark || at == next,
                        }
                    }
                    Err(BrokerError::OffsetOutOfRange {
                        requested, start, ..
                    }) if requested < start => {
                        // Retention removed records before they were read.
                        next = start;
                        Msg::Read {
                            partition: p,
                            from: start,
                            batch: RecordBatch::new_empty(schema.clone()),
                            records: Vec::new(),
                            next,
                            skipped: (start - requested) as u64,
                            caught_up: false,
                        }
                    }
                    Err(e) => Msg::Failed(format!("reading {stream}: {e}")),
                };
                let failed = matches!(msg, Msg::Failed(_));
                if tx.send(msg).await.is_err() || failed {
                    return;
                }
            }
        }
    }

    /// Takes one read: through the plan, into the state or the results.
    async fn take(&mut self, msg: Msg) -> Result<(), String> {
        let (partition, from, batch, source, next, skipped, caught_up) = match msg {
            Msg::Read {
                partition,
                from,
                batch,
                records,
                next,
                skipped,
                caught_up,
            } => (partition, from, batch, records, next, skipped, caught_up),
            Msg::Failed(e) => return Err(e),
        };
        self.caught_up[partition] = caught_up;
        self.header.counters.skipped_records += skipped;
        if self.header.offsets[partition] != next {
            self.moved = true;
        }
        self.header.offsets[partition] = next;
        let rows = batch.num_rows();
        if rows == 0 {
            return Ok(());
        }
        self.last_rows[partition] = Instant::now();
        self.header.counters.rows_in += rows as u64;
        let outs = match self.r.pipeline.join.clone() {
            Some(join) => self.join(&join, partition, from, batch.clone()).await?,
            None => self.pre(batch.clone()).await?,
        };
        let out = match outs.len() {
            0 => return Ok(()),
            1 => outs
                .into_iter()
                .next()
                .unwrap_or_else(|| RecordBatch::new_empty(batch.schema())),
            _ => datafusion::arrow::compute::concat_batches(&outs[0].schema(), &outs)
                .map_err(|e| e.to_string())?,
        };
        if self.state.is_none() {
            return self.emit(out, None);
        }
        {
            match &mut self.state {
                None => {}
                Some(state) => {
                    let wm = self.header.watermark.unwrap_or(i64::MIN);
                    let update = state.lock().update(&out, wm).map_err(|e| e.to_string())?;
                    // A join's inputs set the watermark themselves.
                    let joined = self.r.pipeline.join.is_some();
                    if let Some(t) = update.max_ts.filter(|_| !joined) {
                        let m = &mut self.header.max_ts[partition];
                        *m = Some(m.map_or(t, |m| m.max(t)));
                    }
                    self.header.counters.late_rows += update.late.len() as u64;
                    if !update.late.is_empty() && self.r.side.is_some() {
                        // Kept as published: found among the source
                        // records (the aggregate saw only what it reads).
                        let rows = self.locate(&batch, &update.late).await;
                        let records = rows
                            .into_iter()
                            .filter_map(|i| source.get(i))
                            .map(|r| RecordInput {
                                key: r.key.clone(),
                                value: r.value.clone(),
                                headers: r.headers.clone(),
                                event_ts: Some(r.event_ts),
                            })
                            .collect();
                        self.add(Target::Side, records);
                    }
                }
            }
        }
        Ok(())
    }

    /// The source rows (of `batch`) behind output rows `late` of the part
    /// before the aggregate. That part keeps the order of rows (filters and
    /// projections), so halving the input finds them: a few runs per late
    /// row.
    async fn locate(&self, batch: &RecordBatch, late: &[u32]) -> Vec<usize> {
        let mut found = Vec::new();
        // (input range, first output row of that range)
        let mut work = vec![(0usize, batch.num_rows(), 0usize)];
        while let Some((a, b, first)) = work.pop() {
            let count = |from: usize, to: usize| {
                let pre = &self.r.pipeline.pre;
                let task = self.r.task.clone();
                let slice = batch.slice(from, to - from);
                async move {
                    pre.run(slice, &task)
                        .await
                        .map(|o| o.iter().map(|b| b.num_rows()).sum::<usize>())
                }
            };
            let Ok(n) = count(a, b).await else { continue };
            let has = late
                .iter()
                .any(|&l| (l as usize) >= first && (l as usize) < first + n);
            if !has {
                continue;
            }
            if b - a == 1 {
                found.push(a);
                continue;
            }
            let mid = a + (b - a) / 2;
            let Ok(left) = count(a, mid).await else {
                continue;
            };
            work.push((mid, b, first + left));
            work.push((a, mid, first));
        }
        found.sort_unstable();
        found
    }

    /// Joining two streams: `batch` (read from input `input` at `from`)
    /// joined with what the other side holds, then held for the other
    /// side's rows to come.
    async fn join(
        &mut self,
        join: &interval::StreamJoin,
        input: usize,
        from: i64,
        batch: RecordBatch,
    ) -> Result<Vec<RecordBatch>, String> {
        let side = self.input(input).side;
        if let Some(t) = interval::max_time(&batch, join.time[side]) {
            let m = &mut self.header.max_ts[input];
            *m = Some(m.map_or(t, |m| m.max(t)));
        }
        let Some(buffers) = self.buffers.as_mut() else {
            return Err("a join without buffers".into());
        };
        let others = buffers.batches(1 - side);
        let fed = if side == 0 {
            vec![vec![batch.clone()], others]
        } else {
            vec![others, vec![batch.clone()]]
        };
        let out = self
            .r
            .pipeline
            .pre
            .run_fed(fed, &self.r.task)
            .await
            .map_err(|e| e.to_string())?;
        let inputs_wm = self.header.watermark.map(|w| w + join.slack());
        buffers.hold(join, side, input, from, batch, inputs_wm)?;
        Ok(out)
    }

    /// The part of the plan before the aggregate. A batch it fails on is
    /// run row by row: rows that fail are counted and left out, the rest go
    /// on.
    async fn pre(&mut self, batch: RecordBatch) -> Result<Vec<RecordBatch>, String> {
        match self.r.pipeline.pre.run(batch.clone(), &self.r.task).await {
            Ok(out) => Ok(out),
            Err(first) => {
                let mut out = Vec::new();
                let mut failed = 0u64;
                for i in 0..batch.num_rows() {
                    match self
                        .r
                        .pipeline
                        .pre
                        .run(batch.slice(i, 1), &self.r.task)
                        .await
                    {
                        Ok(b) => out.extend(b),
                        Err(_) => failed += 1,
                    }
                }
                tracing::warn!(query = %self.r.output, rows = failed, error = %first, "rows left out of a continuous query");
                self.header.counters.failed_rows += failed;
                Ok(out)
            }
        }
    }

    /// Result rows: to the push query's client, or as records to append.
    fn emit(&mut self, out: RecordBatch, event_ts: Option<i64>) -> Result<(), String> {
        if self.r.channel.is_some() {
            self.batches.push(out);
            self.pending_since.get_or_insert_with(Instant::now);
            return Ok(());
        }
        let records = self
            .shape
            .records(&out, event_ts)
            .map_err(|e| e.to_string())?;
        self.add(Target::Output, records);
        Ok(())
    }

    fn add(&mut self, target: Target, records: Vec<RecordInput>) {
        if records.is_empty() {
            return;
        }
        let Ok(n) = self.r.broker.partition_count(match target {
            Target::Output => &self.r.output,
            Target::Side => self.r.side.as_ref().unwrap_or(&self.r.output),
        }) else {
            return;
        };
        for r in records {
            let p = match &r.key {
                Some(k) => fjord_core::partitioner::partition_for_key(k, n),
                None => {
                    self.round_robin = self.round_robin.wrapping_add(1);
                    self.round_robin % n
                }
            };
            self.pending.entry((target, p)).or_default().push(r);
        }
        self.pending_since.get_or_insert_with(Instant::now);
    }

    /// The watermark: the latest event time of the slowest partition that
    /// is still sending, less the allowed out-of-orderness. When every
    /// partition has been quiet for the idle timeout, time moves on with
    /// the clock.
    fn advance_watermark(&mut self) {
        let o = &self.r.options;
        let idle = |p: usize| {
            o.idle_timeout_ms.is_some_and(|ms| {
                self.caught_up[p] && self.last_rows[p].elapsed() >= Duration::from_millis(ms as u64)
            })
        };
        let n = self.header.offsets.len();
        // A partition not yet heard from holds time back: it may hold older
        // rows than the others (one with nothing to read does not).
        let mut slowest: Option<i64> = None;
        let mut blocked = false;
        for p in (0..n).filter(|&p| !idle(p)) {
            match self.header.max_ts[p] {
                Some(m) => slowest = Some(slowest.map_or(m, |s| s.min(m))),
                None if self.caught_up[p] => {}
                None => blocked = true,
            }
        }
        let all_idle =
            (0..n).all(|p| idle(p) || (self.caught_up[p] && self.header.max_ts[p].is_none()));
        let mut candidate = if all_idle {
            self.header
                .max_ts
                .iter()
                .flatten()
                .max()
                .map(|m| m - o.out_of_orderness_ms)
        } else if blocked {
            None
        } else {
            slowest.map(|m| m - o.out_of_orderness_ms)
        };
        if all_idle {
            if let Some(idle_ms) = o.idle_timeout_ms {
                if (0..n).all(idle) {
                    let clock = now_ms() - o.out_of_orderness_ms - idle_ms;
                    candidate = Some(candidate.map_or(clock, |c| c.max(clock)));
                }
            }
        }
        // Joined rows are up to the join's interval older than their
        // inputs: windows over them close that much later.
        let slack = self.r.pipeline.join.as_ref().map_or(0, |j| j.slack());
        if let Some(c) = candidate.map(|c| c.saturating_sub(slack)) {
            if self.header.watermark.is_none_or(|w| c > w) {
                self.header.watermark = Some(c);
            }
        }
    }

    /// After reads (or a tick): close windows, then append what is due.
    async fn step(&mut self, stop: &mut watch::Receiver<bool>) -> Result<(), String> {
        let windowed = self
            .r
            .pipeline
            .aggregate
            .as_ref()
            .is_some_and(|a| a.window.is_some());
        if let Some(join) = self.r.pipeline.join.clone() {
            let before = self.header.watermark;
            self.advance_watermark();
            if let (Some(wm), Some(buffers)) = (self.header.watermark, self.buffers.as_mut()) {
                if before != Some(wm) {
                    buffers.evict(&join, wm + join.slack())?;
                }
            }
        }
        // Without a window, changed groups go out at most this often.
        let due_changes = self.last_changes.elapsed() >= CHANGES_EVERY;
        if self.state.is_some() && (windowed || due_changes) {
            if !windowed {
                self.last_changes = Instant::now();
            }
            self.advance_watermark();
            let wm = self.header.watermark.unwrap_or(i64::MIN);
            let emissions = match &mut self.state {
                Some(state) => state.lock().fire(wm).map_err(|e| e.to_string())?,
                None => Vec::new(),
            };
            for e in emissions {
                let outs = match &self.r.pipeline.post {
                    Some(post) => post
                        .run(e.batch, &self.r.task)
                        .await
                        .map_err(|e| e.to_string())?,
                    None => vec![e.batch],
                };
                for out in outs {
                    // A window's results carry its last millisecond.
                    self.emit(out, windowed.then(|| e.end - 1))?;
                }
            }
        }
        let due = self.pending_since.is_some()
            || (self.moved && self.last_checkpoint.elapsed() >= CHECKPOINT_EVERY);
        if due {
            self.commit(stop, false).await?;
        }
        self.publish_status();
        Ok(())
    }

    /// Checkpoints, then appends the results the checkpoint holds.
    async fn commit(&mut self, stop: &mut watch::Receiver<bool>, last: bool) -> Result<(), String> {
        if let Some(client) = &self.r.channel {
            self.pending_since = None;
            self.moved = false;
            self.last_checkpoint = Instant::now();
            for b in std::mem::take(&mut self.batches) {
                self.header.counters.rows_out += b.num_rows() as u64;
                if client.send(b).await.is_err() {
                    return Err(CLIENT_GONE.into());
                }
            }
            return Ok(());
        }
        let Some(store) = self.r.store.clone() else {
            return Err("no checkpoint store".into());
        };
        let pending = std::mem::take(&mut self.pending);
        self.pending_since = None;
        self.header.epoch += 1;
        let epoch = self.header.epoch;
        let mut batches = Vec::new();
        for ((target, p), records) in pending {
            let stream = match target {
                Target::Output => self.r.output.clone(),
                Target::Side => match &self.r.side {
                    Some(s) => s.clone(),
                    None => continue,
                },
            };
            let from = self
                .r
                .broker
                .resolve(&stream, p, Position::Latest)
                .await
                .map_err(|e| format!("{stream}: {e}"))?;
            batches.push((stream, p, from, records));
        }
        self.header.pending = batches
            .iter()
            .map(|(s, p, from, records)| Pending {
                stream: format!("{}/{}", s.namespace, s.stream),
                partition: *p,
                from_offset: *from,
                records: records.iter().map(to_pending).collect(),
            })
            .collect();
        // Counted with the checkpoint that holds them: they are appended
        // once, now or by the recovery.
        let output = self.r.output.clone();
        self.header.counters.rows_out += batches
            .iter()
            .filter(|(s, ..)| *s == output)
            .map(|(.., records)| records.len() as u64)
            .sum::<u64>();
        let windows = match &mut self.state {
            Some(state) => state.lock().snapshot().map_err(|e| e.to_string())?,
            None => Vec::new(),
        };
        if let Some(buffers) = &self.buffers {
            self.header.retain = (0..self.header.offsets.len())
                .map(|i| buffers.held_from(i).unwrap_or(self.header.offsets[i]))
                .collect();
        }
        let c = Checkpoint {
            header: self.header.clone(),
            windows,
        };
        let bytes = checkpoint::encode(&c).map_err(|e| e.to_string())?;
        store.save(&bytes)?;
        self.header.pending.clear();
        self.last_checkpoint = Instant::now();
        self.moved = false;
        for (stream, p, from, records) in batches {
            self.append(&stream, p, from, epoch, records, false, stop)
                .await?;
        }
        if last {
            tracing::info!(query = %self.r.output, epoch, "continuous query stopped");
        }
        Ok(())
    }

    /// Appends one epoch's records of one partition in chunks, each marked;
    /// `check` (and every retry) first looks for chunks already there.
    #[allow(clippy::too_many_arguments)]
    async fn append(
        &mut self,
        stream: &StreamRef,
        partition: u32,
        from: i64,
        epoch: u64,
        records: Vec<RecordInput>,
        mut check: bool,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), String> {
        let chunks: Vec<Vec<RecordInput>> = records.chunks(CHUNK).map(|c| c.to_vec()).collect();
        let mut backoff = Duration::from_millis(50);
        loop {
            let done = if check {
                match self.chunks_present(stream, partition, from, epoch).await {
                    Ok(d) => d,
                    Err(e) => {
                        self.stall(&e, &mut backoff, stop).await?;
                        continue;
                    }
                }
            } else {
                0
            };
            let mut failed = None;
            for (i, chunk) in chunks.iter().enumerate().skip(done) {
                let marked: Vec<RecordInput> = chunk
                    .iter()
                    .cloned()
                    .map(|mut r| {
                        r.headers.push(RecordHeader {
                            key: EPOCH_HEADER.into(),
                            value: Some(Bytes::from(format!("{epoch}.{i}"))),
                        });
                        r
                    })
                    .collect();
                if let Err(e) = self.r.broker.produce(stream, marked, Some(partition)).await {
                    failed = Some(format!("appending to {stream}: {e}"));
                    break;
                }
            }
            match failed {
                None => {
                    let mut s = self.r.status.lock();
                    if s.state == "stalled" {
                        s.state = "running";
                        s.error = None;
                    }
                    return Ok(());
                }
                Some(e) => {
                    check = true;
                    self.stall(&e, &mut backoff, stop).await?;
                }
            }
        }
    }

    /// Waits before a retry; a stop request ends the wait (the checkpoint
    /// already holds what was not appended).
    async fn stall(
        &self,
        e: &str,
        backoff: &mut Duration,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), String> {
        tracing::warn!(query = %self.r.output, error = %e, "continuous query cannot append; retrying");
        {
            let mut s = self.r.status.lock();
            s.state = "stalled";
            s.error = Some(e.to_string());
        }
        if *stop.borrow() {
            return Err(format!("stopped while stalled: {e}"));
        }
        tokio::select! {
            _ = tokio::time::sleep(*backoff) => {}
            _ = stop.changed() => return Err(format!("stopped while stalled: {e}")),
        }
        *backoff = (*backoff * 2).min(Duration::from_secs(5));
        Ok(())
    }

    /// How many chunks of `epoch` are already in the partition (they are
    /// appended in order, so the highest one found tells).
    async fn chunks_present(
        &self,
        stream: &StreamRef,
        partition: u32,
        from: i64,
        epoch: u64,
    ) -> Result<usize, String> {
        let mut at = from;
        let mut done = 0;
        loop {
            let f = crate::scan::fetch_present(&self.r.broker, stream, partition, at)
                .await
                .map_err(|e| format!("reading {stream}: {e}"))?;
            for r in &f.records {
                let mark = r
                    .headers
                    .iter()
                    .find(|h| h.key == EPOCH_HEADER)
                    .and_then(|h| h.value.as_ref())
                    .and_then(|v| std::str::from_utf8(v).ok())
                    .and_then(|v| v.split_once('.'))
                    .and_then(|(e, c)| Some((e.parse::<u64>().ok()?, c.parse::<usize>().ok()?)));
                if let Some((e, c)) = mark {
                    if e == epoch {
                        done = done.max(c + 1);
                    }
                }
            }
            if f.records.is_empty() || f.next_offset >= f.high_watermark {
                return Ok(done);
            }
            at = f.next_offset;
        }
    }

    fn publish_status(&mut self) {
        if let Some((m, tenant, query)) = &self.r.metrics {
            m.record(
                tenant,
                query,
                &self.exported,
                &self.header.counters,
                self.header.watermark,
            );
            self.exported = self.header.counters.clone();
        }
        let mut s = self.r.status.lock();
        s.counters = self.header.counters.clone();
        s.watermark = self.header.watermark;
        s.offsets = self.header.offsets.clone();
        s.positions = (0..self.header.offsets.len())
            .map(|i| {
                let input = self.input(i);
                (input.stream, input.partition, self.header.offsets[i])
            })
            .collect();
        if let Some(state) = &self.state {
            let state = state.lock();
            s.open_windows = state.open_windows();
            s.groups = state.groups();
        }
    }
}

fn to_pending(r: &RecordInput) -> PendingRecord {
    let (text, bytes) = match &r.value {
        Some(v) => match std::str::from_utf8(v) {
            Ok(t) => (Some(t.to_string()), None),
            Err(_) => (None, Some(v.to_vec())),
        },
        None => (None, None),
    };
    PendingRecord {
        key: r
            .key
            .as_ref()
            .map(|k| String::from_utf8_lossy(k).into_owned()),
        text,
        bytes,
        event_ts: r.event_ts,
    }
}

fn to_input(p: &PendingRecord) -> RecordInput {
    RecordInput {
        key: p.key.clone().map(Bytes::from),
        value: p
            .text
            .clone()
            .map(Bytes::from)
            .or_else(|| p.bytes.clone().map(Bytes::from)),
        headers: Vec::new(),
        event_ts: p.event_ts,
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
