//! Stream–stream interval joins: two streams joined on a condition that
//! bounds how far apart their times are, e.g.
//! `b._event_ts BETWEEN a._event_ts - INTERVAL '5 seconds' AND a._event_ts`.
//!
//! The query follows both streams. Each side keeps the rows it read in a
//! buffer for as long as a row of the other side still to come could meet
//! them: the bound and the watermark say until when. A batch read from one
//! side is joined (by DataFusion's own join, with the query's whole
//! condition) with the other side's buffer, then joins its own: every pair
//! comes out once, when the later of its two rows is read.
//!
//! Buffers are not checkpointed: a checkpoint holds, per partition, the
//! offset of the oldest batch still buffered, and a restart reads from
//! there again. A buffer only ever holds rows at or after its bound, so
//! what a restart rebuilds is what was there.

use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, BooleanArray};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::{DataType, SchemaRef, TimeUnit, TimestampMillisecondType};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::{JoinSide, JoinType, ScalarValue};
use datafusion::logical_expr::Operator;
use datafusion::physical_expr::expressions::{BinaryExpr, CastExpr, Column, Literal};
use datafusion::physical_expr::utils::split_conjunction;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::joins::utils::JoinFilter;
use datafusion::physical_plan::joins::{HashJoinExec, NestedLoopJoinExec};
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::ExecutionPlan;
use fjord_core::StreamRef;

use crate::columns::Projection;
use crate::error::{SqlError, SqlErrorKind};
use crate::scan::StreamScanExec;

/// Bytes both buffers of one query hold at most.
pub const BUFFER_BYTES_MAX: usize = 512 << 20;

/// The second stream of a query joining two, and how far apart the
/// joined rows' times may be.
#[derive(Debug, Clone)]
pub struct StreamJoin {
    /// The other stream (the query's `source` is the first).
    pub other: StreamRef,
    pub other_columns: Projection,
    pub other_schema: SchemaRef,
    /// Each side's time column (0: the source, 1: the other) in its scan's
    /// schema.
    pub time: [usize; 2],
    /// `other.t - source.t` lies within `lower_ms..=upper_ms`.
    pub lower_ms: i64,
    pub upper_ms: i64,
}

impl StreamJoin {
    /// How far behind the inputs' watermark a joined row's time may be:
    /// windows over the join close that much later.
    pub fn slack(&self) -> i64 {
        self.lower_ms.abs().max(self.upper_ms.abs())
    }

    /// The oldest time a row of `side` needs to have to meet a row still
    /// to come, when the inputs' rows to come are at or after `inputs_wm`.
    fn keep_from(&self, side: usize, inputs_wm: i64) -> i64 {
        match side {
            0 => inputs_wm.saturating_sub(self.upper_ms),
            _ => inputs_wm.saturating_add(self.lower_ms),
        }
    }
}

fn unsupported(message: impl Into<String>) -> SqlError {
    SqlError::new(SqlErrorKind::NotSupported, message)
}

/// The join of `source` and `other` (two scans under `root`) as an
/// interval join, or why it cannot run continuously.
pub fn analyze(
    root: &Arc<dyn ExecutionPlan>,
    source: &Arc<dyn ExecutionPlan>,
    other: &Arc<dyn ExecutionPlan>,
) -> Result<StreamJoin, SqlError> {
    let (Some(source_scan), Some(other_scan)) = (
        source.downcast_ref::<StreamScanExec>(),
        other.downcast_ref::<StreamScanExec>(),
    ) else {
        return Err(SqlError::new(SqlErrorKind::Execution, "scans expected"));
    };
    let names = format!("{} and {}", source_scan.stream(), other_scan.stream());
    let Some(join) = join_of(root, source, other) else {
        return Err(unsupported(format!(
            "{names} are both streams but not joined with each other: a continuous query follows one stream, or two joined on a time interval"
        )));
    };
    let (join_type, filter) = if let Some(j) = join.downcast_ref::<HashJoinExec>() {
        (*j.join_type(), j.filter())
    } else if let Some(j) = join.downcast_ref::<NestedLoopJoinExec>() {
        (*j.join_type(), j.filter())
    } else {
        return Err(unsupported(format!(
            "{names} are joined by {}, which cannot run continuously",
            join.name()
        )));
    };
    if join_type != JoinType::Inner {
        return Err(unsupported(format!(
            "{names} are joined with a {join_type} join; two streams are joined continuously with [INNER] JOIN (an outer join of two streams is not supported)"
        )));
    }
    let need_bound = || {
        unsupported(format!(
            "joining two streams ({names}) continuously needs a time bound in the ON condition, both ways, e.g. b._event_ts BETWEEN a._event_ts - INTERVAL '1 minute' AND a._event_ts + INTERVAL '1 minute'"
        ))
    };
    let filter = filter.ok_or_else(need_bound)?;
    let bounds = time_bounds(filter).ok_or_else(need_bound)?;
    let children = join.children();
    let source_left = has(children[0], source);
    let (source_col, other_col, lower, upper) = if source_left {
        (bounds.left, bounds.right, bounds.lower, bounds.upper)
    } else {
        (bounds.right, bounds.left, -bounds.upper, -bounds.lower)
    };
    let (source_child, other_child) = if source_left {
        (children[0], children[1])
    } else {
        (children[1], children[0])
    };
    let traced = |child: &Arc<dyn ExecutionPlan>, col: usize, scan: &Arc<dyn ExecutionPlan>| {
        trace(child, col)
            .filter(|(s, _)| Arc::ptr_eq(s, scan))
            .map(|(_, i)| i)
            .filter(|&i| is_millis(&scan.schema().field(i).data_type().clone()))
            .ok_or_else(|| {
                unsupported(format!(
                    "the time bound joining {names} compares columns that are not the streams' own timestamp columns (like _event_ts or a typed timestamp field)"
                ))
            })
    };
    let source_time = traced(source_child, source_col, source)?;
    let other_time = traced(other_child, other_col, other)?;
    Ok(StreamJoin {
        other: other_scan.stream().clone(),
        other_columns: other_scan.projection().clone(),
        other_schema: other.schema(),
        time: [source_time, other_time],
        lower_ms: lower,
        upper_ms: upper,
    })
}

fn is_millis(t: &DataType) -> bool {
    matches!(t, DataType::Timestamp(TimeUnit::Millisecond, _))
}

fn has(p: &Arc<dyn ExecutionPlan>, node: &Arc<dyn ExecutionPlan>) -> bool {
    Arc::ptr_eq(p, node) || p.children().into_iter().any(|c| has(c, node))
}

/// The lowest join with `a` under one input and `b` under the other.
fn join_of(
    p: &Arc<dyn ExecutionPlan>,
    a: &Arc<dyn ExecutionPlan>,
    b: &Arc<dyn ExecutionPlan>,
) -> Option<Arc<dyn ExecutionPlan>> {
    let children = p.children();
    for c in &children {
        if has(c, a) && has(c, b) {
            return join_of(c, a, b);
        }
    }
    (children.len() == 2
        && ((has(children[0], a) && has(children[1], b))
            || (has(children[0], b) && has(children[1], a))))
    .then(|| p.clone())
}

/// Bounds on `right.t - left.t` found in a join filter.
#[derive(Debug, PartialEq)]
struct Bounds {
    /// The time columns, in the join's left and right inputs.
    left: usize,
    right: usize,
    lower: i64,
    upper: i64,
}

/// Both bounds on the difference of one pair of columns, from the
/// filter's comparisons of the form `x [± interval] op y [± interval]`.
fn time_bounds(filter: &JoinFilter) -> Option<Bounds> {
    let indices = filter.column_indices();
    let mut pair: Option<(usize, usize)> = None;
    let (mut lower, mut upper) = (None::<i64>, None::<i64>);
    for c in split_conjunction(filter.expression()) {
        let Some(b) = c.downcast_ref::<BinaryExpr>() else {
            continue;
        };
        let less = match b.op() {
            Operator::Lt | Operator::LtEq => true,
            Operator::Gt | Operator::GtEq => false,
            _ => continue,
        };
        let (Some((x, a)), Some((y, bo))) = (term(b.left()), term(b.right())) else {
            continue;
        };
        let (Some(x), Some(y)) = (indices.get(x), indices.get(y)) else {
            continue;
        };
        // x + a (<|>) y + b, with one column of each side.
        let (l, r, x_left) = match (x.side, y.side) {
            (JoinSide::Left, JoinSide::Right) => (x.index, y.index, true),
            (JoinSide::Right, JoinSide::Left) => (y.index, x.index, false),
            _ => continue,
        };
        if *pair.get_or_insert((l, r)) != (l, r) {
            continue;
        }
        // y - x >= a - b (less) or y - x <= a - b (greater); flipped to
        // right - left when x is the right side's.
        let k = a - bo;
        match (less, x_left) {
            (true, true) | (false, false) => {
                let v = if x_left { k } else { -k };
                lower = Some(lower.map_or(v, |l| l.max(v)));
            }
            (false, true) | (true, false) => {
                let v = if x_left { k } else { -k };
                upper = Some(upper.map_or(v, |u| u.min(v)));
            }
        }
    }
    let (left, right) = pair?;
    Some(Bounds {
        left,
        right,
        lower: lower?,
        upper: upper?,
    })
}

/// A filter column plus a constant interval (ms): `c`, `c + i`, `c - i`.
fn term(e: &Arc<dyn PhysicalExpr>) -> Option<(usize, i64)> {
    if let Some(c) = e.downcast_ref::<Column>() {
        return Some((c.index(), 0));
    }
    if let Some(c) = e.downcast_ref::<CastExpr>() {
        return term(c.expr());
    }
    let b = e.downcast_ref::<BinaryExpr>()?;
    match b.op() {
        Operator::Plus => match (term(b.left()), lit_ms(b.right())) {
            (Some((c, o)), Some(ms)) => Some((c, o + ms)),
            _ => {
                let (c, o) = term(b.right())?;
                Some((c, o + lit_ms(b.left())?))
            }
        },
        Operator::Minus => {
            let (c, o) = term(b.left())?;
            Some((c, o - lit_ms(b.right())?))
        }
        _ => None,
    }
}

fn lit_ms(e: &Arc<dyn PhysicalExpr>) -> Option<i64> {
    let v = e.downcast_ref::<Literal>()?.value();
    Some(match v {
        ScalarValue::IntervalMonthDayNano(Some(i)) if i.months == 0 => {
            i64::from(i.days) * 86_400_000 + i.nanoseconds / 1_000_000
        }
        ScalarValue::IntervalDayTime(Some(i)) => {
            i64::from(i.days) * 86_400_000 + i64::from(i.milliseconds)
        }
        ScalarValue::DurationSecond(Some(s)) => s * 1000,
        ScalarValue::DurationMillisecond(Some(ms)) => *ms,
        ScalarValue::DurationMicrosecond(Some(us)) => us / 1000,
        ScalarValue::DurationNanosecond(Some(ns)) => ns / 1_000_000,
        _ => return None,
    })
}

/// Output column `i` of `p` as a column of the scan under it, through
/// operators that pass columns on unchanged.
fn trace(p: &Arc<dyn ExecutionPlan>, i: usize) -> Option<(Arc<dyn ExecutionPlan>, usize)> {
    if p.downcast_ref::<StreamScanExec>().is_some() {
        return Some((p.clone(), i));
    }
    if let Some(proj) = p.downcast_ref::<ProjectionExec>() {
        let col = proj.expr().get(i)?.expr.downcast_ref::<Column>()?.index();
        return trace(p.children().first()?, col);
    }
    if let Some(f) = p.downcast_ref::<FilterExec>() {
        let i = match f.projection() {
            Some(proj) => *proj.get(i)?,
            None => i,
        };
        return trace(p.children().first()?, i);
    }
    let passes = matches!(
        p.name(),
        "CoalesceBatchesExec" | "CooperativeExec" | "RepartitionExec" | "CoalescePartitionsExec"
    );
    passes.then(|| trace(p.children().first()?, i)).flatten()
}

/// One read's rows, held for the other side.
struct Held {
    input: usize,
    /// The offset the read started at (a restart reads again from there).
    from: i64,
    batch: RecordBatch,
}

/// Both sides' buffers.
#[derive(Default)]
pub struct Buffers {
    sides: [Vec<Held>; 2],
    bytes: usize,
}

impl Buffers {
    /// What side `side` holds, for a join run.
    pub fn batches(&self, side: usize) -> Vec<RecordBatch> {
        self.sides[side].iter().map(|h| h.batch.clone()).collect()
    }

    /// Keeps the rows of `batch` (read from `input` at `from`) that a row
    /// still to come could meet.
    pub fn hold(
        &mut self,
        join: &StreamJoin,
        side: usize,
        input: usize,
        from: i64,
        batch: RecordBatch,
        inputs_wm: Option<i64>,
    ) -> Result<(), String> {
        let batch = match inputs_wm {
            Some(wm) => keep(&batch, join.time[side], join.keep_from(side, wm))?,
            None => batch,
        };
        if batch.num_rows() == 0 {
            return Ok(());
        }
        self.bytes += batch.get_array_memory_size();
        self.sides[side].push(Held { input, from, batch });
        if self.bytes > BUFFER_BYTES_MAX {
            return Err(format!(
                "the join with {} holds more than {} MiB of rows waiting for partners: the watermark is not moving (a partition without new rows holds it back: set idle_timeout) or the join's interval is too wide",
                join.other,
                BUFFER_BYTES_MAX >> 20
            ));
        }
        Ok(())
    }

    /// Drops what no row still to come can meet.
    pub fn evict(&mut self, join: &StreamJoin, inputs_wm: i64) -> Result<(), String> {
        let mut bytes = 0;
        for (side, held) in self.sides.iter_mut().enumerate() {
            let from = join.keep_from(side, inputs_wm);
            let mut kept = Vec::with_capacity(held.len());
            for h in held.drain(..) {
                let batch = keep(&h.batch, join.time[side], from)?;
                if batch.num_rows() > 0 {
                    bytes += batch.get_array_memory_size();
                    kept.push(Held { batch, ..h });
                }
            }
            *held = kept;
        }
        self.bytes = bytes;
        Ok(())
    }

    /// The offset of the oldest read of `input` still held.
    pub fn held_from(&self, input: usize) -> Option<i64> {
        self.sides
            .iter()
            .flatten()
            .filter(|h| h.input == input)
            .map(|h| h.from)
            .min()
    }
}

/// The rows of `batch` whose time (column `time`) is at or after `from`.
fn keep(batch: &RecordBatch, time: usize, from: i64) -> Result<RecordBatch, String> {
    let Some(times) = batch
        .column(time)
        .as_primitive_opt::<TimestampMillisecondType>()
    else {
        return Err("a join's time column is not a timestamp".into());
    };
    if times.null_count() == 0 && times.values().iter().all(|&t| t >= from) {
        return Ok(batch.clone());
    }
    let mask: BooleanArray = times
        .iter()
        .map(|t| Some(t.is_some_and(|t| t >= from)))
        .collect();
    filter_record_batch(batch, &mask).map_err(|e| e.to_string())
}

/// The latest time in column `time` of `batch`.
pub fn max_time(batch: &RecordBatch, time: usize) -> Option<i64> {
    batch
        .column(time)
        .as_primitive_opt::<TimestampMillisecondType>()?
        .iter()
        .flatten()
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::{Field, Schema};
    use datafusion::physical_plan::joins::utils::ColumnIndex;

    fn ts_field(name: &str) -> Field {
        Field::new(
            name,
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            false,
        )
    }

    fn interval(ms: i64) -> Arc<dyn PhysicalExpr> {
        Arc::new(Literal::new(ScalarValue::new_interval_mdn(
            0,
            0,
            ms * 1_000_000,
        )))
    }

    fn col(i: usize) -> Arc<dyn PhysicalExpr> {
        Arc::new(Column::new(if i == 0 { "l" } else { "r" }, i))
    }

    fn bin(
        l: Arc<dyn PhysicalExpr>,
        op: Operator,
        r: Arc<dyn PhysicalExpr>,
    ) -> Arc<dyn PhysicalExpr> {
        Arc::new(BinaryExpr::new(l, op, r))
    }

    fn filter(e: Arc<dyn PhysicalExpr>) -> JoinFilter {
        JoinFilter::new(
            e,
            vec![
                ColumnIndex {
                    index: 5,
                    side: JoinSide::Left,
                },
                ColumnIndex {
                    index: 2,
                    side: JoinSide::Right,
                },
            ],
            Arc::new(Schema::new(vec![ts_field("l"), ts_field("r")])),
        )
    }

    #[test]
    fn between_gives_both_bounds() {
        // r BETWEEN l - 5 s AND l + 2 s
        let e = bin(
            bin(
                col(1),
                Operator::GtEq,
                bin(col(0), Operator::Minus, interval(5000)),
            ),
            Operator::And,
            bin(
                col(1),
                Operator::LtEq,
                bin(col(0), Operator::Plus, interval(2000)),
            ),
        );
        assert_eq!(
            time_bounds(&filter(e)),
            Some(Bounds {
                left: 5,
                right: 2,
                lower: -5000,
                upper: 2000
            })
        );
    }

    #[test]
    fn written_the_other_way_round() {
        // l + 1 s > r AND l - 3 s <= r: r - l in [-3 s, 1 s]
        let e = bin(
            bin(
                bin(col(0), Operator::Plus, interval(1000)),
                Operator::Gt,
                col(1),
            ),
            Operator::And,
            bin(
                bin(col(0), Operator::Minus, interval(3000)),
                Operator::LtEq,
                col(1),
            ),
        );
        let b = time_bounds(&filter(e)).unwrap();
        assert_eq!((b.lower, b.upper), (-3000, 1000));
    }

    #[test]
    fn one_bound_is_not_enough() {
        let e = bin(col(1), Operator::GtEq, col(0));
        assert_eq!(time_bounds(&filter(e)), None);
    }

    #[test]
    fn keep_drops_rows_before_the_bound() {
        use datafusion::arrow::array::TimestampMillisecondArray;
        let schema = Arc::new(Schema::new(vec![ts_field("t")]));
        let batch = RecordBatch::try_new(
            schema,
            vec![Arc::new(
                TimestampMillisecondArray::from(vec![5, 1, 9, 3]).with_timezone("UTC"),
            )],
        )
        .unwrap();
        let kept = keep(&batch, 0, 4).unwrap();
        let t = kept.column(0).as_primitive::<TimestampMillisecondType>();
        assert_eq!(t.values(), &[5, 9]);
        assert_eq!(max_time(&batch, 0), Some(9));
    }
}
