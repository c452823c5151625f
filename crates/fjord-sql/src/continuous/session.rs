//! Session windows: per group, rows closer than the gap in event time form
//! one window, `[first row, last row + gap)`. A row between two sessions of
//! its group joins them: their accumulators merge (DataFusion's partial
//! states, as between partial and final aggregation). A session closes when
//! the watermark passes its end.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{new_null_array, ArrayRef, AsArray, UInt32Array};
use datafusion::arrow::compute::take;
use datafusion::arrow::datatypes::{Field, Schema, TimestampMillisecondType};
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchOptions};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};

use super::aggregate::{evaluate_keeping, AggSpec, Emission, Update, WindowSnapshot};
use super::window::{from_millis, to_millis};

struct Session {
    id: u64,
    start: i64,
    /// Exclusive: the last row's time plus the gap.
    end: i64,
    /// The group's key values (one row each).
    keys: Vec<ArrayRef>,
    accs: Vec<Box<dyn GroupsAccumulator>>,
    fired: bool,
    dirty: bool,
}

pub struct SessionState {
    spec: Arc<AggSpec>,
    gap_ms: i64,
    lateness_ms: i64,
    converter: Option<RowConverter>,
    /// Sessions by group key (row-encoded), ordered by start.
    sessions: HashMap<Vec<u8>, Vec<Session>>,
    next_id: u64,
}

const ONE: [usize; 1] = [0];

impl SessionState {
    pub fn new(spec: Arc<AggSpec>, gap_ms: i64, lateness_ms: i64) -> DfResult<Self> {
        let converter = if spec.keys.is_empty() {
            None
        } else {
            Some(RowConverter::new(
                spec.key_schema
                    .fields()
                    .iter()
                    .map(|f| SortField::new(f.data_type().clone()))
                    .collect(),
            )?)
        };
        Ok(SessionState {
            spec,
            gap_ms,
            lateness_ms,
            converter,
            sessions: HashMap::new(),
            next_id: 0,
        })
    }

    pub fn open_windows(&self) -> usize {
        self.sessions.values().map(Vec::len).sum()
    }

    fn new_session(&mut self, start: i64, keys: Vec<ArrayRef>) -> DfResult<Session> {
        self.next_id += 1;
        Ok(Session {
            id: self.next_id,
            start,
            end: start + self.gap_ms,
            keys,
            accs: self.spec.accumulators()?,
            fired: false,
            dirty: false,
        })
    }

    pub fn update(&mut self, batch: &RecordBatch, watermark: i64) -> DfResult<Update> {
        let mut update = Update::default();
        let n = batch.num_rows();
        if n == 0 {
            return Ok(update);
        }
        let spec = self.spec.clone();
        let Some(time) = &spec.time else {
            return Err(DataFusionError::Internal("a session needs a time".into()));
        };
        let time = to_millis(&time.evaluate(batch)?.into_array(n)?)?;
        let time = time.as_primitive::<TimestampMillisecondType>();
        let keys: Vec<ArrayRef> = spec
            .keys
            .iter()
            .map(|e| e.evaluate(batch)?.into_array(n))
            .collect::<DfResult<_>>()?;
        let rows = match &self.converter {
            Some(c) => Some(c.convert_columns(&keys)?),
            None => None,
        };
        // Rows waiting for their session's accumulators, by session id.
        let mut assigned: HashMap<u64, Vec<u32>> = HashMap::new();
        for (i, t) in time.iter().enumerate() {
            let Some(t) = t else {
                update.untimed += 1;
                continue;
            };
            update.max_ts = Some(update.max_ts.map_or(t, |m| m.max(t)));
            if t + self.gap_ms + self.lateness_ms <= watermark {
                update.late.push(i as u32);
                continue;
            }
            let key = rows
                .as_ref()
                .map_or(Vec::new(), |r| r.row(i).as_ref().to_vec());
            // Sessions this row touches: [t, t + gap) meets [start, end).
            let touching: Vec<usize> = self.sessions.get(&key).map_or(Vec::new(), |list| {
                list.iter()
                    .enumerate()
                    .filter(|(_, s)| t < s.end && s.start < t + self.gap_ms)
                    .map(|(k, _)| k)
                    .collect()
            });
            let fresh = if touching.is_empty() {
                let key_values: Vec<ArrayRef> = keys.iter().map(|k| k.slice(i, 1)).collect();
                Some(self.new_session(t, key_values)?)
            } else {
                None
            };
            let list = self.sessions.entry(key).or_default();
            let target = match fresh {
                Some(s) => {
                    list.push(s);
                    list.len() - 1
                }
                None => touching[0],
            };
            // Bridged sessions merge into the first.
            for &k in touching.iter().skip(1).rev() {
                let mut other = list.remove(k);
                let into = &mut list[target];
                merge_into(into, &mut other)?;
                if let Some(rows) = assigned.remove(&other.id) {
                    assigned.entry(into.id).or_default().extend(rows);
                }
            }
            let s = &mut list[target];
            s.start = s.start.min(t);
            s.end = s.end.max(t + self.gap_ms);
            if s.fired {
                s.dirty = true;
            }
            assigned.entry(s.id).or_default().push(i as u32);
            list.sort_by_key(|s| s.start);
        }
        if assigned.is_empty() {
            return Ok(update);
        }
        let (args, filters) = spec.inputs(batch)?;
        for list in self.sessions.values_mut() {
            for s in list.iter_mut() {
                let Some(idx) = assigned.get(&s.id) else {
                    continue;
                };
                let idx = UInt32Array::from(idx.clone());
                let ids = vec![0usize; idx.len()];
                for (k, acc) in s.accs.iter_mut().enumerate() {
                    let values: Vec<ArrayRef> = args[k]
                        .iter()
                        .map(|c| take(c.as_ref(), &idx, None))
                        .collect::<Result<_, _>>()?;
                    let filter = match &filters[k] {
                        Some(f) => Some(take(f.as_ref(), &idx, None)?),
                        None => None,
                    };
                    acc.update_batch(&values, &ids, filter.as_ref().map(|f| f.as_boolean()), 1)?;
                }
            }
        }
        Ok(update)
    }

    /// Sessions the watermark has passed: their results (once; again
    /// after a late update within the allowed lateness).
    pub fn fire(&mut self, watermark: i64) -> DfResult<Vec<Emission>> {
        let spec = self.spec.clone();
        let mut out = Vec::new();
        for list in self.sessions.values_mut() {
            let mut k = 0;
            while k < list.len() {
                let s = &mut list[k];
                if s.end > watermark {
                    k += 1;
                    continue;
                }
                let closed = s.end + self.lateness_ms <= watermark;
                if !s.fired || s.dirty {
                    let values = if closed {
                        s.accs
                            .iter_mut()
                            .map(|a| a.evaluate(EmitTo::All))
                            .collect::<DfResult<Vec<_>>>()?
                    } else {
                        evaluate_keeping(&spec, &mut s.accs, 1)?
                    };
                    out.push(Emission {
                        start: s.start,
                        end: s.end,
                        batch: output(&spec, s.start, &s.keys, values)?,
                    });
                }
                if closed {
                    list.remove(k);
                } else {
                    s.fired = true;
                    s.dirty = false;
                    k += 1;
                }
            }
        }
        self.sessions.retain(|_, l| !l.is_empty());
        out.sort_by_key(|e| (e.end, e.start));
        Ok(out)
    }

    pub fn snapshot(&mut self) -> DfResult<Vec<WindowSnapshot>> {
        let mut out = Vec::new();
        for list in self.sessions.values_mut() {
            for s in list.iter_mut() {
                let mut columns = s.keys.clone();
                for acc in s.accs.iter_mut() {
                    let state = acc.state(EmitTo::All)?;
                    acc.merge_batch(&state, &ONE, 1)?;
                    columns.extend(state);
                }
                let fields: Vec<Field> = columns
                    .iter()
                    .enumerate()
                    .map(|(i, c)| Field::new(format!("c{i}"), c.data_type().clone(), true))
                    .collect();
                out.push(WindowSnapshot {
                    start: s.start,
                    end: Some(s.end),
                    fired: s.fired,
                    batch: RecordBatch::try_new_with_options(
                        Arc::new(Schema::new(fields)),
                        columns,
                        &RecordBatchOptions::new().with_row_count(Some(1)),
                    )?,
                });
            }
        }
        Ok(out)
    }

    pub fn restore(&mut self, snapshots: Vec<WindowSnapshot>) -> DfResult<()> {
        let spec = self.spec.clone();
        let nkeys = spec.keys.len();
        for w in snapshots {
            let columns = w.batch.columns().to_vec();
            if columns.len() < nkeys {
                return Err(DataFusionError::Internal(
                    "a checkpointed session lacks its group keys".into(),
                ));
            }
            let keys = columns[..nkeys].to_vec();
            let key = match &self.converter {
                Some(c) => c.convert_columns(&keys)?.row(0).as_ref().to_vec(),
                None => Vec::new(),
            };
            let mut s = self.new_session(w.start, keys)?;
            s.end = w.end.unwrap_or(w.start + self.gap_ms);
            s.fired = w.fired;
            let mut at = nkeys;
            for (acc, agg) in s.accs.iter_mut().zip(&spec.aggs) {
                let width = agg.state_fields()?.len();
                let Some(state) = columns.get(at..at + width) else {
                    return Err(DataFusionError::Internal(
                        "a checkpointed session lacks an aggregate's state".into(),
                    ));
                };
                acc.merge_batch(state, &ONE, 1)?;
                at += width;
            }
            let list = self.sessions.entry(key).or_default();
            list.push(s);
            list.sort_by_key(|s| s.start);
        }
        Ok(())
    }
}

/// `other`'s state into `into` (both one group).
fn merge_into(into: &mut Session, other: &mut Session) -> DfResult<()> {
    for (a, b) in into.accs.iter_mut().zip(other.accs.iter_mut()) {
        let state = b.state(EmitTo::All)?;
        a.merge_batch(&state, &ONE, 1)?;
    }
    into.start = into.start.min(other.start);
    into.end = into.end.max(other.end);
    into.fired |= other.fired;
    into.dirty |= other.fired;
    Ok(())
}

/// One session's result row, in the aggregate's output schema.
fn output(
    spec: &AggSpec,
    start: i64,
    keys: &[ArrayRef],
    values: Vec<ArrayRef>,
) -> DfResult<RecordBatch> {
    let mut columns = Vec::with_capacity(spec.schema.fields().len());
    let mut keys = keys.iter();
    let groups = spec.keys.len() + 1;
    for (i, field) in spec.schema.fields().iter().enumerate().take(groups) {
        if Some(i) == spec.window_pos {
            columns.push(from_millis(vec![Some(start)], field.data_type())?);
        } else {
            columns.push(match keys.next() {
                Some(k) => k.clone(),
                None => new_null_array(field.data_type(), 1),
            });
        }
    }
    columns.extend(values);
    Ok(RecordBatch::try_new(spec.schema.clone(), columns)?)
}
