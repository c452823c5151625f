//! The state of a windowed aggregate: for each open window, its groups and
//! DataFusion's own accumulators (`GroupsAccumulator`, the vectorised kind
//! its hash aggregation uses), fed batch by batch and evaluated when the
//! watermark closes the window.
//!
//! A window fires when the watermark reaches its end. With allowed
//! lateness it is kept that much longer: a late row updates it and it fires
//! again (its updated rows); after that, rows for it are late. State is
//! snapshotted with the accumulators' own partial state (what DataFusion
//! merges between partial and final aggregation), so a restored query
//! continues exactly where the snapshot was taken.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, UInt32Array};
use datafusion::arrow::compute::take;
use datafusion::arrow::datatypes::{Field, Schema, SchemaRef, TimestampMillisecondType};
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchOptions};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_expr::{GroupsAccumulatorAdapter, PhysicalExpr};
use datafusion::physical_plan::aggregates::group_values::{new_group_values, GroupValues};
use datafusion::physical_plan::aggregates::order::GroupOrdering;

use super::session::SessionState;
use super::window::{from_millis, to_millis, WindowSpec};

/// What the aggregate computes, taken from DataFusion's physical plan.
#[derive(Debug)]
pub struct AggSpec {
    /// `None`: no window — groups live for as long as the query, and their
    /// updated rows are emitted as they change.
    pub window: Option<WindowSpec>,
    /// Where the window's start sits among the `GROUP BY` columns.
    pub window_pos: Option<usize>,
    /// The window's time (its function's first argument).
    pub time: Option<Arc<dyn PhysicalExpr>>,
    /// The other `GROUP BY` expressions, in order.
    pub keys: Vec<Arc<dyn PhysicalExpr>>,
    pub key_schema: SchemaRef,
    pub aggs: Vec<Arc<AggregateFunctionExpr>>,
    /// Each aggregate's arguments (with its `ORDER BY` expressions).
    pub args: Vec<Vec<Arc<dyn PhysicalExpr>>>,
    /// Each aggregate's `FILTER (WHERE …)`.
    pub filters: Vec<Option<Arc<dyn PhysicalExpr>>>,
    /// The aggregate's output: the `GROUP BY` columns, then the aggregates.
    pub schema: SchemaRef,
}

/// Each aggregate's argument columns and `FILTER (WHERE …)` column.
pub(crate) type Inputs = (Vec<Vec<ArrayRef>>, Vec<Option<ArrayRef>>);

impl AggSpec {
    /// The aggregates' inputs over `batch`.
    pub(crate) fn inputs(&self, batch: &RecordBatch) -> DfResult<Inputs> {
        let args = self
            .args
            .iter()
            .map(|a| evaluate(a, batch))
            .collect::<DfResult<_>>()?;
        let filters = self
            .filters
            .iter()
            .map(|f| {
                f.as_ref()
                    .map(|f| f.evaluate(batch)?.into_array(batch.num_rows()))
                    .transpose()
            })
            .collect::<DfResult<_>>()?;
        Ok((args, filters))
    }

    pub(crate) fn accumulators(&self) -> DfResult<Vec<Box<dyn GroupsAccumulator>>> {
        self.aggs
            .iter()
            .map(|a| -> DfResult<Box<dyn GroupsAccumulator>> {
                if a.groups_accumulator_supported() {
                    a.create_groups_accumulator()
                } else {
                    let a = a.clone();
                    Ok(Box::new(GroupsAccumulatorAdapter::new(move || {
                        a.create_accumulator()
                    })))
                }
            })
            .collect()
    }

    fn groups(&self) -> DfResult<Groups> {
        if self.keys.is_empty() {
            return Ok(Groups::Single(false));
        }
        Ok(Groups::Keyed(new_group_values(
            self.key_schema.clone(),
            &GroupOrdering::None,
        )?))
    }
}

/// The groups of one window.
enum Groups {
    /// No `GROUP BY` besides the window: one group, once a row came.
    Single(bool),
    Keyed(Box<dyn GroupValues>),
}

impl Groups {
    fn len(&self) -> usize {
        match self {
            Groups::Single(any) => *any as usize,
            Groups::Keyed(g) => g.len(),
        }
    }

    fn intern(&mut self, keys: &[ArrayRef], rows: usize, ids: &mut Vec<usize>) -> DfResult<()> {
        match self {
            Groups::Single(any) => {
                *any = true;
                ids.clear();
                ids.resize(rows, 0);
                Ok(())
            }
            Groups::Keyed(g) => g.intern(keys, ids),
        }
    }

    /// The key columns of every group, in group order; the groups stay.
    fn keys(&mut self) -> DfResult<Vec<ArrayRef>> {
        match self {
            Groups::Single(_) => Ok(Vec::new()),
            Groups::Keyed(g) => {
                let keys = g.emit(EmitTo::All)?;
                let mut ids = Vec::new();
                // Distinct keys interned in order get their ids back.
                g.intern(&keys, &mut ids)?;
                Ok(keys)
            }
        }
    }
}

struct Window {
    groups: Groups,
    accs: Vec<Box<dyn GroupsAccumulator>>,
    fired: bool,
    /// Updated by a late row since it fired.
    dirty: bool,
    /// Without a window: the groups updated since the last emission.
    touched: Vec<bool>,
}

/// The only "window" of an aggregate without one.
const GLOBAL: i64 = 0;

/// One window's results.
#[derive(Debug)]
pub struct Emission {
    pub start: i64,
    pub end: i64,
    /// In [`AggSpec::schema`].
    pub batch: RecordBatch,
}

/// What one batch did.
#[derive(Debug, Default)]
pub struct Update {
    /// The latest time among its rows.
    pub max_ts: Option<i64>,
    /// Rows whose window had closed (indices into the batch).
    pub late: Vec<u32>,
    /// Rows without a time (NULL): in no window.
    pub untimed: usize,
}

/// One open window's state: its group keys and every aggregate's partial
/// state, one row per group.
#[derive(Debug)]
pub struct WindowSnapshot {
    pub start: i64,
    /// A session's end (fixed windows know theirs from the start).
    pub end: Option<i64>,
    pub fired: bool,
    pub batch: RecordBatch,
}

pub struct WindowedState {
    /// Session windows keep their own state.
    sessions: Option<SessionState>,
    spec: Arc<AggSpec>,
    lateness_ms: i64,
    windows: BTreeMap<i64, Window>,
    starts: Vec<i64>,
    ids: Vec<usize>,
}

impl WindowedState {
    pub fn new(spec: Arc<AggSpec>, lateness_ms: i64) -> DfResult<Self> {
        let sessions = match spec.window {
            Some(WindowSpec::Session { gap_ms }) => {
                Some(SessionState::new(spec.clone(), gap_ms, lateness_ms)?)
            }
            _ => None,
        };
        Ok(WindowedState {
            sessions,
            spec,
            lateness_ms,
            windows: BTreeMap::new(),
            starts: Vec::new(),
            ids: Vec::new(),
        })
    }

    pub fn open_windows(&self) -> usize {
        match &self.sessions {
            Some(s) => s.open_windows(),
            None => self.windows.len(),
        }
    }

    pub fn groups(&self) -> usize {
        match &self.sessions {
            Some(s) => s.open_windows(),
            None => self.windows.values().map(|w| w.groups.len()).sum(),
        }
    }

    /// Whether the window starting at `start` has closed for good.
    fn closed(&self, start: i64, watermark: i64) -> bool {
        match self.spec.window {
            Some(w) => w.end(start).saturating_add(self.lateness_ms) <= watermark,
            None => false,
        }
    }

    /// Adds a batch (in the aggregate's input schema) under `watermark`.
    pub fn update(&mut self, batch: &RecordBatch, watermark: i64) -> DfResult<Update> {
        if let Some(s) = &mut self.sessions {
            return s.update(batch, watermark);
        }
        let mut update = Update::default();
        let rows = batch.num_rows();
        if rows == 0 {
            return Ok(update);
        }
        let spec = self.spec.clone();
        // Rows by window, in the order windows first appear.
        let mut by_window: Vec<(i64, Vec<u32>)> = Vec::new();
        let (Some(window), Some(time)) = (spec.window, &spec.time) else {
            by_window.push((GLOBAL, (0..rows as u32).collect()));
            return self.accumulate(batch, by_window).map(|()| update);
        };
        let time = to_millis(&time.evaluate(batch)?.into_array(rows)?)?;
        let time = time.as_primitive::<TimestampMillisecondType>();
        for (i, t) in time.iter().enumerate() {
            let Some(t) = t else {
                update.untimed += 1;
                continue;
            };
            update.max_ts = Some(update.max_ts.map_or(t, |m| m.max(t)));
            let mut starts = std::mem::take(&mut self.starts);
            window.assign(t, &mut starts);
            let mut late = false;
            for &s in &starts {
                if self.closed(s, watermark) {
                    late = true;
                    continue;
                }
                match by_window.iter_mut().find(|(w, _)| *w == s) {
                    Some((_, idx)) => idx.push(i as u32),
                    None => by_window.push((s, vec![i as u32])),
                }
            }
            self.starts = starts;
            if late {
                update.late.push(i as u32);
            }
        }
        if by_window.is_empty() {
            return Ok(update);
        }
        self.accumulate(batch, by_window)?;
        Ok(update)
    }

    /// Feeds rows (by window) to the windows' groups and accumulators.
    fn accumulate(&mut self, batch: &RecordBatch, by_window: Vec<(i64, Vec<u32>)>) -> DfResult<()> {
        let spec = self.spec.clone();
        let rows = batch.num_rows();
        let keys = evaluate(&spec.keys, batch)?;
        let (args, filters) = spec.inputs(batch)?;
        for (start, idx) in by_window {
            let all = idx.len() == rows;
            let pick = |cols: &[ArrayRef]| -> DfResult<Vec<ArrayRef>> {
                if all {
                    return Ok(cols.to_vec());
                }
                let idx = UInt32Array::from(idx.clone());
                cols.iter()
                    .map(|c| Ok(take(c.as_ref(), &idx, None)?))
                    .collect()
            };
            let n = idx.len();
            let w = match self.windows.entry(start) {
                std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::btree_map::Entry::Vacant(v) => v.insert(Window {
                    groups: spec.groups()?,
                    accs: spec.accumulators()?,
                    fired: false,
                    dirty: false,
                    touched: Vec::new(),
                }),
            };
            let mut ids = std::mem::take(&mut self.ids);
            w.groups.intern(&pick(&keys)?, n, &mut ids)?;
            let total = w.groups.len();
            for (k, acc) in w.accs.iter_mut().enumerate() {
                let values = pick(&args[k])?;
                let filter = match &filters[k] {
                    Some(f) => Some(pick(std::slice::from_ref(f))?.remove(0)),
                    None => None,
                };
                let filter = filter.as_ref().map(|f| f.as_boolean());
                acc.update_batch(&values, &ids, filter, total)?;
            }
            if spec.window.is_none() {
                w.touched.resize(total, false);
                for &g in &ids {
                    w.touched[g] = true;
                }
            }
            self.ids = ids;
            if w.fired {
                w.dirty = true;
            }
        }
        Ok(())
    }

    /// The results of the windows `watermark` closes (first firing, or a
    /// late update), oldest first; windows closed for good are dropped.
    pub fn fire(&mut self, watermark: i64) -> DfResult<Vec<Emission>> {
        if let Some(s) = &mut self.sessions {
            return s.fire(watermark);
        }
        let mut out = Vec::new();
        let Some(window) = self.spec.window else {
            return self.fire_changed();
        };
        let starts: Vec<i64> = self.windows.keys().copied().collect();
        for start in starts {
            let end = window.end(start);
            if end > watermark {
                // Windows only close in order of their ends; for hops and
                // tumbles that is the order of their starts.
                break;
            }
            let closed = self.closed(start, watermark);
            let Some(w) = self.windows.get_mut(&start) else {
                continue;
            };
            let due = !w.fired || w.dirty;
            if due {
                let batch = if closed {
                    self.evaluate_final(start)?
                } else {
                    self.evaluate_keeping(start)?
                };
                out.push(Emission { start, end, batch });
            }
            if closed {
                self.windows.remove(&start);
            } else if let Some(w) = self.windows.get_mut(&start) {
                w.fired = true;
                w.dirty = false;
            }
        }
        Ok(out)
    }

    /// Without a window: the rows of the groups updated since last time.
    fn fire_changed(&mut self) -> DfResult<Vec<Emission>> {
        let Some(w) = self.windows.get_mut(&GLOBAL) else {
            return Ok(Vec::new());
        };
        let touched: Vec<u32> = w
            .touched
            .iter()
            .enumerate()
            .filter(|(_, t)| **t)
            .map(|(g, _)| g as u32)
            .collect();
        if touched.is_empty() {
            return Ok(Vec::new());
        }
        w.touched.iter_mut().for_each(|t| *t = false);
        let all = self.evaluate_keeping(GLOBAL)?;
        let batch = if touched.len() == all.num_rows() {
            all
        } else {
            take_rows(&all, &touched)?
        };
        Ok(vec![Emission {
            start: GLOBAL,
            end: GLOBAL,
            batch,
        }])
    }

    /// Evaluates a window whose state is no longer needed.
    fn evaluate_final(&mut self, start: i64) -> DfResult<RecordBatch> {
        let Some(mut w) = self.windows.remove(&start) else {
            return Err(DataFusionError::Internal("no such window".into()));
        };
        let keys = match &mut w.groups {
            Groups::Single(_) => Vec::new(),
            Groups::Keyed(g) => g.emit(EmitTo::All)?,
        };
        let n = w.groups_len_hint(&keys);
        let values: Vec<ArrayRef> = w
            .accs
            .iter_mut()
            .map(|a| a.evaluate(EmitTo::All))
            .collect::<DfResult<_>>()?;
        self.output(start, keys, values, n)
    }

    /// Evaluates a window that stays open for late rows.
    fn evaluate_keeping(&mut self, start: i64) -> DfResult<RecordBatch> {
        let spec = self.spec.clone();
        let Some(w) = self.windows.get_mut(&start) else {
            return Err(DataFusionError::Internal("no such window".into()));
        };
        let keys = w.groups.keys()?;
        let n = w.groups.len();
        let values = evaluate_keeping(&spec, &mut w.accs, n)?;
        self.output(start, keys, values, n)
    }

    fn output(
        &self,
        start: i64,
        keys: Vec<ArrayRef>,
        values: Vec<ArrayRef>,
        rows: usize,
    ) -> DfResult<RecordBatch> {
        let spec = &self.spec;
        let mut columns = Vec::with_capacity(spec.schema.fields().len());
        let mut keys = keys.into_iter();
        for (i, field) in spec.schema.fields().iter().enumerate() {
            if Some(i) == spec.window_pos {
                columns.push(from_millis(vec![Some(start); rows], field.data_type())?);
            } else if i < spec.keys.len() + spec.window_pos.map_or(0, |_| 1) {
                columns.push(
                    keys.next()
                        .ok_or_else(|| DataFusionError::Internal("group key missing".into()))?,
                );
            }
        }
        columns.extend(values);
        Ok(RecordBatch::try_new_with_options(
            spec.schema.clone(),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(rows)),
        )?)
    }

    /// Every open window's state; the state stays.
    pub fn snapshot(&mut self) -> DfResult<Vec<WindowSnapshot>> {
        if let Some(s) = &mut self.sessions {
            return s.snapshot();
        }
        let mut out = Vec::with_capacity(self.windows.len());
        for (&start, w) in self.windows.iter_mut() {
            let mut columns = w.groups.keys()?;
            let n = w.groups.len();
            let ids: Vec<usize> = (0..n).collect();
            for acc in w.accs.iter_mut() {
                let state = acc.state(EmitTo::All)?;
                acc.merge_batch(&state, &ids, n)?;
                columns.extend(state);
            }
            let fields: Vec<Field> = columns
                .iter()
                .enumerate()
                .map(|(i, c)| Field::new(format!("c{i}"), c.data_type().clone(), true))
                .collect();
            let batch = RecordBatch::try_new_with_options(
                Arc::new(Schema::new(fields)),
                columns,
                &RecordBatchOptions::new().with_row_count(Some(n)),
            )?;
            out.push(WindowSnapshot {
                start,
                end: None,
                fired: w.fired,
                batch,
            });
        }
        Ok(out)
    }

    /// Puts back windows from [`Self::snapshot`].
    pub fn restore(&mut self, snapshots: Vec<WindowSnapshot>) -> DfResult<()> {
        if let Some(s) = &mut self.sessions {
            return s.restore(snapshots);
        }
        let spec = self.spec.clone();
        for s in snapshots {
            let n = s.batch.num_rows();
            let mut groups = spec.groups()?;
            let mut accs = spec.accumulators()?;
            let columns = s.batch.columns();
            let nkeys = spec.keys.len();
            if columns.len() < nkeys {
                return Err(DataFusionError::Internal(
                    "a checkpointed window lacks its group keys".into(),
                ));
            }
            let mut ids = Vec::new();
            groups.intern(&columns[..nkeys], n, &mut ids)?;
            let mut at = nkeys;
            for (acc, agg) in accs.iter_mut().zip(&spec.aggs) {
                let width = agg.state_fields()?.len();
                let Some(state) = columns.get(at..at + width) else {
                    return Err(DataFusionError::Internal(
                        "a checkpointed window lacks an aggregate's state".into(),
                    ));
                };
                acc.merge_batch(state, &ids, groups.len())?;
                at += width;
            }
            self.windows.insert(
                s.start,
                Window {
                    touched: Vec::new(),
                    groups,
                    accs,
                    fired: s.fired,
                    dirty: false,
                },
            );
        }
        Ok(())
    }
}

impl Window {
    fn groups_len_hint(&self, keys: &[ArrayRef]) -> usize {
        match &self.groups {
            Groups::Single(any) => *any as usize,
            Groups::Keyed(_) => keys.first().map_or(0, |k| k.len()),
        }
    }
}

/// The values of `n` groups, the accumulators left as they were.
pub(crate) fn evaluate_keeping(
    spec: &AggSpec,
    accs: &mut [Box<dyn GroupsAccumulator>],
    n: usize,
) -> DfResult<Vec<ArrayRef>> {
    let ids: Vec<usize> = (0..n).collect();
    let mut fresh = spec.accumulators()?;
    let mut values = Vec::with_capacity(accs.len());
    for (acc, copy) in accs.iter_mut().zip(fresh.iter_mut()) {
        // Evaluating consumes an accumulator: evaluate a copy made from
        // the partial state, and put the state back.
        let state = acc.state(EmitTo::All)?;
        acc.merge_batch(&state, &ids, n)?;
        copy.merge_batch(&state, &ids, n)?;
        values.push(copy.evaluate(EmitTo::All)?);
    }
    Ok(values)
}

fn evaluate(exprs: &[Arc<dyn PhysicalExpr>], batch: &RecordBatch) -> DfResult<Vec<ArrayRef>> {
    exprs
        .iter()
        .map(|e| e.evaluate(batch)?.into_array(batch.num_rows()))
        .collect()
}

/// Rows of `batch` at `idx`.
pub fn take_rows(batch: &RecordBatch, idx: &[u32]) -> DfResult<RecordBatch> {
    let idx = UInt32Array::from(idx.to_vec());
    let columns: Vec<ArrayRef> = batch
        .columns()
        .iter()
        .map(|c| take(c.as_ref(), &idx, None))
        .collect::<Result<_, _>>()?;
    Ok(RecordBatch::try_new_with_options(
        batch.schema(),
        columns,
        &RecordBatchOptions::new().with_row_count(Some(idx.len())),
    )?)
}
