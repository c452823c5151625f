//! A continuous query's plan: DataFusion plans the `SELECT` as it would an
//! ad-hoc one, and the physical plan is cut in up to three parts:
//!
//! * `pre`: from the stream to the aggregate (filters, projections) — run
//!   on every batch read;
//! * the windowed aggregate — its expressions and DataFusion's accumulators
//!   move into [`super::aggregate`], which keeps state between batches;
//! * `post`: above the aggregate (`HAVING`, the select list, `ORDER BY` and
//!   `LIMIT` of each window's results) — run on every window's results.
//!
//! The stream's scan is replaced by a [`FeedExec`] that yields the batch at
//! hand, so each part runs with DataFusion's own operators.

use std::sync::Arc;

use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::expressions::{Column as ColumnExpr, Literal};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr, ScalarFunctionExpr};
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    replace_children_if_necessary, ChildrenPropertiesMode, DisplayAs, DisplayFormatType,
    ExecutionPlan, Partitioning, PlanProperties, ReplaceChildrenOptions,
};
use datafusion::prelude::SessionContext;
use fjord_core::StreamRef;
use futures_util::TryStreamExt;
use parking_lot::Mutex;

use super::aggregate::AggSpec;
use super::window::{interval_ms, WindowSpec, HOP, SESSION, TUMBLE};
use crate::columns::Column;
use crate::error::{SqlError, SqlErrorKind};
use crate::scan::StreamScanExec;

/// Where a stage's input batch waits for its run.
type Slot = Arc<Mutex<Option<RecordBatch>>>;

/// A part of the plan, run once per batch fed to it.
pub struct Stage {
    plan: Arc<dyn ExecutionPlan>,
    feed: Slot,
}

impl Stage {
    /// Runs the stage on `batch`: every row it yields.
    pub async fn run(
        &self,
        batch: RecordBatch,
        ctx: &Arc<TaskContext>,
    ) -> DfResult<Vec<RecordBatch>> {
        *self.feed.lock() = Some(batch);
        let mut out = Vec::new();
        let parts = self.plan.properties().partitioning.partition_count();
        for p in 0..parts {
            let batches: Vec<RecordBatch> =
                self.plan.execute(p, ctx.clone())?.try_collect().await?;
            out.extend(batches.into_iter().filter(|b| b.num_rows() > 0));
        }
        self.feed.lock().take();
        Ok(out)
    }

    pub fn schema(&self) -> SchemaRef {
        self.plan.schema()
    }
}

/// A continuous query, cut for running.
pub struct Pipeline {
    pub source: StreamRef,
    /// The stream's columns the query reads, in the scan's order.
    pub columns: Vec<Column>,
    pub scan_schema: SchemaRef,
    pub pre: Stage,
    pub aggregate: Option<Arc<AggSpec>>,
    pub post: Option<Stage>,
    /// The rows the query produces.
    pub output_schema: SchemaRef,
    /// Output columns that are `GROUP BY` values (the window's start
    /// excluded): what identifies a result row.
    pub key_columns: Vec<usize>,
    /// The output column holding the window's start, if selected.
    pub window_column: Option<usize>,
}

impl Pipeline {
    /// What identifies a row of a materialized view: its group, window
    /// included.
    pub fn view_key(&self) -> Vec<usize> {
        let mut key = self.key_columns.clone();
        key.extend(self.window_column);
        key.sort_unstable();
        key
    }
}

fn unsupported(message: impl Into<String>) -> SqlError {
    SqlError::new(SqlErrorKind::NotSupported, message)
}

/// What an operator is in a user's words, for errors.
fn describe(name: &str) -> &'static str {
    match name {
        n if n.contains("Join") => "a join",
        "UnionExec" | "InterleaveExec" => "UNION",
        "BoundedWindowAggExec" | "WindowAggExec" => "a window function (… OVER (…))",
        "SortExec" | "SortPreservingMergeExec" => "ORDER BY before the aggregate",
        "GlobalLimitExec" | "LocalLimitExec" => "LIMIT before the aggregate",
        "AggregateExec" => "an aggregate of an aggregate",
        "GapFillExec" => "gap filling (time_bucket_gapfill; fill gaps in ad-hoc queries over the results)",
        _ => "this operator",
    }
}

/// Operators that work batch by batch.
const STATELESS: &[&str] = &[
    "ProjectionExec",
    "FilterExec",
    "CoalesceBatchesExec",
    "CoalescePartitionsExec",
    "RepartitionExec",
    "UnnestExec",
    // Yields to the runtime between batches; nothing of its own.
    "CooperativeExec",
];

/// Operators allowed on each window's results as well.
const PER_EMISSION: &[&str] = &[
    "SortExec",
    "SortPreservingMergeExec",
    "GlobalLimitExec",
    "LocalLimitExec",
];

/// Plans `query` (a `SELECT`) in `ctx` for continuous running.
pub async fn plan(ctx: &SessionContext, query: &str) -> Result<Pipeline, SqlError> {
    let df = ctx.sql_with_options(query, crate::query_options()).await?;
    let physical = df.create_physical_plan().await?;
    cut(physical)
}

fn cut(root: Arc<dyn ExecutionPlan>) -> Result<Pipeline, SqlError> {
    let mut scans = Vec::new();
    find_scans(&root, &mut scans)?;
    let scan = match scans.len() {
        1 => scans.remove(0),
        0 => {
            return Err(unsupported(
                "a continuous query reads a stream: its FROM names one",
            ))
        }
        _ => {
            return Err(unsupported(
                "a continuous query reads one stream (joins and unions of streams run as separate queries)",
            ))
        }
    };
    let Some(scan_exec) = scan.downcast_ref::<StreamScanExec>() else {
        return Err(SqlError::new(SqlErrorKind::Execution, "scan expected"));
    };
    let source = scan_exec.stream().clone();
    let columns = scan_exec.columns().to_vec();
    let scan_schema = scan.schema();
    let output_schema = root.schema();
    let Some(top) = find_aggregate(&root) else {
        check(&root, STATELESS, None)?;
        let (pre, feed) = feed_in(&root, &|p| is_scan(p))?;
        return Ok(Pipeline {
            source,
            columns,
            scan_schema,
            pre: Stage { plan: pre, feed },
            aggregate: None,
            post: None,
            output_schema,
            key_columns: Vec::new(),
            window_column: None,
        });
    };
    let top_exec = top
        .downcast_ref::<AggregateExec>()
        .ok_or_else(|| SqlError::new(SqlErrorKind::Execution, "aggregate expected"))?;
    // A two-phase aggregate: the partial one reads the rows.
    let raw = match top_exec.mode() {
        AggregateMode::Final | AggregateMode::FinalPartitioned => partial_below(top_exec.input())
            .ok_or_else(|| {
            SqlError::new(SqlErrorKind::Execution, "partial aggregate expected")
        })?,
        _ => top.clone(),
    };
    let Some(raw_exec) = raw.downcast_ref::<AggregateExec>() else {
        return Err(SqlError::new(SqlErrorKind::Execution, "aggregate expected"));
    };
    check(raw_exec.input(), STATELESS, None)?;
    check_above(&root, &top)?;
    let spec = agg_spec(raw_exec, &top)?;
    let groups = raw_exec.group_expr().expr().len();
    let (key_columns, window_column) = group_columns(&root, &top, groups, spec.window_pos);
    let (pre, pre_feed) = feed_in(raw_exec.input(), &|p| is_scan(p))?;
    let post = if Arc::ptr_eq(&root, &top) {
        None
    } else {
        let (plan, feed) = feed_in(&root, &|p| Arc::ptr_eq(p, &top))?;
        Some(Stage { plan, feed })
    };
    Ok(Pipeline {
        source,
        columns,
        scan_schema,
        pre: Stage {
            plan: pre,
            feed: pre_feed,
        },
        aggregate: Some(Arc::new(spec)),
        post,
        output_schema,
        key_columns,
        window_column,
    })
}

/// Which output columns carry the aggregate's `GROUP BY` values (and which
/// its window): followed through the select list down to the aggregate.
fn group_columns(
    root: &Arc<dyn ExecutionPlan>,
    top: &Arc<dyn ExecutionPlan>,
    groups: usize,
    window_pos: Option<usize>,
) -> (Vec<usize>, Option<usize>) {
    // An output column as a column of the aggregate, if it is one.
    fn trace(p: &Arc<dyn ExecutionPlan>, top: &Arc<dyn ExecutionPlan>, i: usize) -> Option<usize> {
        if Arc::ptr_eq(p, top) {
            return Some(i);
        }
        if let Some(proj) = p.downcast_ref::<ProjectionExec>() {
            let e = &proj.expr().get(i)?.expr;
            let col = e.downcast_ref::<ColumnExpr>()?;
            return trace(p.children().first()?, top, col.index());
        }
        let preserves = match p.downcast_ref::<FilterExec>() {
            Some(f) => f.projection().is_none(),
            None => matches!(
                p.name(),
                "CoalesceBatchesExec"
                    | "SortExec"
                    | "SortPreservingMergeExec"
                    | "GlobalLimitExec"
                    | "LocalLimitExec"
                    | "CoalescePartitionsExec"
                    | "CooperativeExec"
                    | "RepartitionExec"
            ),
        };
        if !preserves {
            return None;
        }
        trace(p.children().first()?, top, i)
    }
    let mut keys = Vec::new();
    let mut window = None;
    for i in 0..root.schema().fields().len() {
        match trace(root, top, i) {
            Some(g) if Some(g) == window_pos => window = Some(i),
            Some(g) if g < groups => keys.push(i),
            _ => {}
        }
    }
    (keys, window)
}

fn is_scan(p: &Arc<dyn ExecutionPlan>) -> bool {
    p.downcast_ref::<StreamScanExec>().is_some()
}

fn find_scans(
    p: &Arc<dyn ExecutionPlan>,
    out: &mut Vec<Arc<dyn ExecutionPlan>>,
) -> Result<(), SqlError> {
    if is_scan(p) {
        out.push(p.clone());
        return Ok(());
    }
    if p.children().is_empty() {
        // VALUES, a constant row: not a stream.
        if p.name() != "PlaceholderRowExec" && p.name() != "EmptyExec" {
            return Err(unsupported(format!(
                "a continuous query reads streams only, not {}",
                p.name()
            )));
        }
    }
    for c in p.children() {
        find_scans(c, out)?;
    }
    Ok(())
}

/// The top-most aggregate, if any.
fn find_aggregate(p: &Arc<dyn ExecutionPlan>) -> Option<Arc<dyn ExecutionPlan>> {
    if p.downcast_ref::<AggregateExec>().is_some() {
        return Some(p.clone());
    }
    p.children().into_iter().find_map(find_aggregate)
}

fn partial_below(p: &Arc<dyn ExecutionPlan>) -> Option<Arc<dyn ExecutionPlan>> {
    if let Some(a) = p.downcast_ref::<AggregateExec>() {
        return matches!(a.mode(), AggregateMode::Partial).then(|| p.clone());
    }
    if matches!(
        p.name(),
        "RepartitionExec" | "CoalescePartitionsExec" | "CoalesceBatchesExec"
    ) {
        return p.children().first().and_then(|c| partial_below(c));
    }
    None
}

/// Every operator from `p` down to the scan (or `stop`) is in `allowed`.
fn check(
    p: &Arc<dyn ExecutionPlan>,
    allowed: &[&str],
    stop: Option<&Arc<dyn ExecutionPlan>>,
) -> Result<(), SqlError> {
    if is_scan(p) || stop.is_some_and(|s| Arc::ptr_eq(s, p)) {
        return Ok(());
    }
    if !allowed.contains(&p.name()) {
        return Err(unsupported(format!(
            "{} cannot run continuously here ({})",
            describe(p.name()),
            p.name()
        )));
    }
    for c in p.children() {
        check(c, allowed, stop)?;
    }
    Ok(())
}

fn check_above(
    root: &Arc<dyn ExecutionPlan>,
    top: &Arc<dyn ExecutionPlan>,
) -> Result<(), SqlError> {
    let allowed: Vec<&str> = STATELESS.iter().chain(PER_EMISSION).copied().collect();
    check(root, &allowed, Some(top))
}

/// `p` with the node `at` replaced by a feed of batches.
fn feed_in(
    p: &Arc<dyn ExecutionPlan>,
    at: &dyn Fn(&Arc<dyn ExecutionPlan>) -> bool,
) -> Result<(Arc<dyn ExecutionPlan>, Slot), SqlError> {
    let slot = Arc::new(Mutex::new(None));
    let plan = replace(p, at, &slot)?;
    Ok((plan, slot))
}

fn replace(
    p: &Arc<dyn ExecutionPlan>,
    at: &dyn Fn(&Arc<dyn ExecutionPlan>) -> bool,
    slot: &Slot,
) -> Result<Arc<dyn ExecutionPlan>, SqlError> {
    if at(p) {
        return Ok(Arc::new(FeedExec::new(p.schema(), slot.clone())));
    }
    let children = p
        .children()
        .into_iter()
        .map(|c| replace(c, at, slot))
        .collect::<Result<Vec<_>, _>>()?;
    if children.is_empty() {
        return Ok(p.clone());
    }
    Ok(replace_children_if_necessary(p.clone(), children)?)
}

/// The window and aggregates of `raw` (the aggregate reading rows); `top`
/// gives the output schema.
fn agg_spec(raw: &AggregateExec, top: &Arc<dyn ExecutionPlan>) -> Result<AggSpec, SqlError> {
    let group = raw.group_expr();
    if group.has_grouping_set() {
        return Err(unsupported(
            "GROUPING SETS, CUBE and ROLLUP cannot run continuously",
        ));
    }
    let exprs = group.expr();
    let mut window = None;
    let mut keys = Vec::new();
    let mut key_fields = Vec::new();
    let schema = top.schema();
    for (i, (e, _)) in exprs.iter().enumerate() {
        if let Some(f) = e
            .downcast_ref::<ScalarFunctionExpr>()
            .filter(|f| [TUMBLE, HOP, SESSION].contains(&f.name()))
        {
            if window.is_some() {
                return Err(SqlError::new(
                    SqlErrorKind::Invalid,
                    "a continuous aggregate groups by one window",
                ));
            }
            window = Some((i, window_spec(f)?, f.args()[0].clone()));
        } else {
            keys.push(e.clone());
            key_fields.push(schema.field(i).clone());
        }
    }
    let (window_pos, spec, time) = match window {
        Some((pos, spec, time)) => (Some(pos), Some(spec), Some(time)),
        None => (None, None, None),
    };
    let aggs = raw.aggr_expr().to_vec();
    let args = aggs
        .iter()
        .map(|a| {
            let mut e = a.expressions();
            e.extend(a.order_bys().iter().map(|s| s.expr.clone()));
            e
        })
        .collect();
    Ok(AggSpec {
        window: spec,
        window_pos,
        time,
        keys,
        key_schema: Arc::new(Schema::new(key_fields)),
        aggs,
        args,
        filters: raw.filter_expr().to_vec(),
        schema,
    })
}

fn window_spec(f: &ScalarFunctionExpr) -> Result<WindowSpec, SqlError> {
    let lengths: Vec<i64> = f.args()[1..]
        .iter()
        .map(|a| {
            let lit = a.downcast_ref::<Literal>().ok_or_else(|| {
                SqlError::new(
                    SqlErrorKind::Invalid,
                    format!("{}()'s lengths are constant INTERVALs", f.name()),
                )
            })?;
            interval_ms(lit.value()).map_err(|m| SqlError::new(SqlErrorKind::Invalid, m))
        })
        .collect::<Result<_, _>>()?;
    Ok(match (f.name(), lengths.as_slice()) {
        (TUMBLE, [size]) => WindowSpec::Tumble { size_ms: *size },
        (HOP, [slide, size]) => {
            if slide > size {
                return Err(SqlError::new(
                    SqlErrorKind::Invalid,
                    "hop()'s slide is longer than its size: rows between windows would be lost",
                ));
            }
            WindowSpec::Hop {
                size_ms: *size,
                slide_ms: *slide,
            }
        }
        (SESSION, [gap]) => WindowSpec::Session { gap_ms: *gap },
        _ => {
            return Err(SqlError::new(
                SqlErrorKind::Invalid,
                format!("{}() has the wrong number of arguments", f.name()),
            ))
        }
    })
}

/// Yields the batch put in its slot, once per execution.
#[derive(Debug)]
pub struct FeedExec {
    slot: Slot,
    properties: Arc<PlanProperties>,
}

impl FeedExec {
    fn new(schema: SchemaRef, slot: Slot) -> Self {
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        FeedExec { slot, properties }
    }
}

impl DisplayAs for FeedExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("FeedExec")
    }
}

impl ExecutionPlan for FeedExec {
    fn name(&self) -> &'static str {
        "FeedExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        _: Vec<Arc<dyn ExecutionPlan>>,
        _: ReplaceChildrenOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    #[allow(deprecated)]
    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        self.replace_children(
            children,
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
        )
    }

    fn execute(
        &self,
        partition: usize,
        _ctx: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        if partition != 0 {
            return Err(DataFusionError::Internal(format!(
                "FeedExec has one partition, not {partition}"
            )));
        }
        let schema = self.properties.eq_properties.schema().clone();
        let batch = self.slot.lock().take();
        let batches = futures_util::stream::iter(batch.map(Ok));
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, batches)))
    }
}
