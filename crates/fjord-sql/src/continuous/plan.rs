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
use datafusion::common::JoinType;
use datafusion::error::Result as DfResult;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::expressions::{Column as ColumnExpr, Literal};
use datafusion::physical_expr::{PhysicalExpr, ScalarFunctionExpr};
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::execution_plan::reset_plan_states;
use datafusion::physical_plan::execution_plan::EmissionType;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::joins::{
    CrossJoinExec, HashJoinExec, NestedLoopJoinExec, SortMergeJoinExec, SymmetricHashJoinExec,
};
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    replace_children_if_necessary, ChildrenPropertiesMode, DisplayAs, DisplayFormatType,
    ExecutionPlan, PlanProperties, ReplaceChildrenOptions,
};
use datafusion::prelude::SessionContext;
use fjord_core::Compaction;
use fjord_core::StreamRef;
use futures_util::TryStreamExt;
use parking_lot::Mutex;

use super::aggregate::AggSpec;
use super::interval::StreamJoin;
use super::lookup::LookupExec;
use super::window::{interval_ms, WindowSpec, HOP, SESSION, TUMBLE};
use crate::columns::Projection;
use crate::error::{SqlError, SqlErrorKind};
use crate::scan::{bounded_properties, StreamScanExec};
use crate::table::BrokerRef;

type Node = Arc<dyn ExecutionPlan>;

/// Where a stage's input batches wait for its run.
type Slot = Arc<Mutex<Vec<RecordBatch>>>;

/// A part of the plan, run once per batch fed to it.
pub struct Stage {
    plan: Arc<dyn ExecutionPlan>,
    /// One per stream the part reads (two for a join of streams).
    feeds: Vec<Slot>,
    /// Whether the plan keeps what it built in one run (a join's hash
    /// table), so each run needs it fresh.
    reset: bool,
}

impl Stage {
    fn new(plan: Arc<dyn ExecutionPlan>, feeds: Vec<Slot>) -> Self {
        let reset = has(&plan, &|p| join_type(p).is_some());
        Stage { plan, feeds, reset }
    }

    /// Runs the stage on `batch`: every row it yields.
    pub async fn run(
        &self,
        batch: RecordBatch,
        ctx: &Arc<TaskContext>,
    ) -> DfResult<Vec<RecordBatch>> {
        self.run_fed(vec![vec![batch]], ctx).await
    }

    /// Runs the stage with `inputs[i]` fed to its `i`-th stream.
    pub async fn run_fed(
        &self,
        inputs: Vec<Vec<RecordBatch>>,
        ctx: &Arc<TaskContext>,
    ) -> DfResult<Vec<RecordBatch>> {
        let plan = if self.reset {
            reset_plan_states(self.plan.clone())?
        } else {
            self.plan.clone()
        };
        for (feed, batches) in self.feeds.iter().zip(inputs) {
            *feed.lock() = batches;
        }
        let mut out = Vec::new();
        let parts = plan.properties().partitioning.partition_count();
        let ran: DfResult<()> = async {
            for p in 0..parts {
                let batches: Vec<RecordBatch> = plan.execute(p, ctx.clone())?.try_collect().await?;
                out.extend(batches.into_iter().filter(|b| b.num_rows() > 0));
            }
            Ok(())
        }
        .await;
        for feed in &self.feeds {
            feed.lock().clear();
        }
        ran.map(|()| out)
    }

    pub fn schema(&self) -> SchemaRef {
        self.plan.schema()
    }
}

/// A continuous query, cut for running.
pub struct Pipeline {
    pub source: StreamRef,
    /// The stream's columns the query reads, in the scan's order.
    pub columns: Projection,
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
    /// The second stream, when the query joins two.
    pub join: Option<StreamJoin>,
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
        "GapFillExec" => {
            "gap filling (time_bucket_gapfill; fill gaps in ad-hoc queries over the results)"
        }
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
pub async fn plan(
    ctx: &SessionContext,
    broker: &Arc<BrokerRef>,
    query: &str,
) -> Result<Pipeline, SqlError> {
    let df = ctx.sql_with_options(query, crate::query_options()).await?;
    let physical = df.create_physical_plan().await?;
    cut(physical, broker)
}

fn cut(root: Arc<dyn ExecutionPlan>, broker: &Arc<BrokerRef>) -> Result<Pipeline, SqlError> {
    let mut scans = Vec::new();
    find_scans(&root, &mut scans)?;
    let (scan, other) = pick_source(scans, broker)?;
    let join = match &other {
        Some(other) => Some(super::interval::analyze(&root, &scan, other)?),
        None => None,
    };
    let streams: Vec<Arc<dyn ExecutionPlan>> = std::iter::once(scan.clone()).chain(other).collect();
    let root = tables_for_lookup(&root, &streams, broker)?;
    let Some(scan_exec) = scan.downcast_ref::<StreamScanExec>() else {
        return Err(SqlError::new(SqlErrorKind::Execution, "scan expected"));
    };
    let source = scan_exec.stream().clone();
    let columns = scan_exec.projection().clone();
    let scan_schema = scan.schema();
    let output_schema = root.schema();
    let Some(top) = find_aggregate(&root) else {
        check(&root, STATELESS, None)?;
        let (pre, feeds) = feed_streams(&root, &streams)?;
        return Ok(Pipeline {
            source,
            columns,
            scan_schema,
            pre: Stage::new(pre, feeds),
            aggregate: None,
            post: None,
            output_schema,
            key_columns: Vec::new(),
            window_column: None,
            join,
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
    let (pre, pre_feeds) = feed_streams(raw_exec.input(), &streams)?;
    let post = if Arc::ptr_eq(&root, &top) {
        None
    } else {
        let (plan, feed) = feed_in(&root, &|p| Arc::ptr_eq(p, &top))?;
        Some(Stage::new(plan, vec![feed]))
    };
    Ok(Pipeline {
        source,
        columns,
        scan_schema,
        pre: Stage::new(pre, pre_feeds),
        aggregate: Some(Arc::new(spec)),
        post,
        output_schema,
        key_columns,
        window_column,
        join,
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
        // A constant row, a view read as a table: not a stream.
        if !matches!(p.name(), "PlaceholderRowExec" | "EmptyExec" | "LookupExec") {
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

/// The top-most aggregate over the stream, if any (a table's own
/// aggregates are part of the table).
fn find_aggregate(p: &Arc<dyn ExecutionPlan>) -> Option<Arc<dyn ExecutionPlan>> {
    if p.downcast_ref::<AggregateExec>().is_some() {
        return Some(p.clone());
    }
    p.children()
        .into_iter()
        .filter(|c| has(c, &is_scan))
        .find_map(find_aggregate)
}

/// Whether `p` or a node under it is `what`.
fn has(p: &Arc<dyn ExecutionPlan>, what: &dyn Fn(&Arc<dyn ExecutionPlan>) -> bool) -> bool {
    what(p) || p.children().into_iter().any(|c| has(c, what))
}

/// The streams a continuous query follows: the one stream it reads, or —
/// joining streams with tables — the one that is not a table, or two
/// streams joined on a time interval.
fn pick_source(
    mut scans: Vec<Arc<dyn ExecutionPlan>>,
    broker: &Arc<BrokerRef>,
) -> Result<(Node, Option<Node>), SqlError> {
    if scans.len() == 1 {
        return Ok((scans.remove(0), None));
    }
    if scans.is_empty() {
        return Err(unsupported(
            "a continuous query reads a stream: its FROM names one",
        ));
    }
    let mut streams = Vec::new();
    for s in scans {
        let stream = scan_stream(&s)?;
        if !is_table(broker, &stream)? {
            streams.push((s, stream));
        }
    }
    match streams.len() {
        1 => Ok((streams.remove(0).0, None)),
        2 => {
            let (b, _) = streams.remove(1);
            let (a, _) = streams.remove(0);
            Ok((a, Some(b)))
        }
        0 => Err(unsupported(
            "a continuous query follows one stream and joins it with tables; every relation here is a table (a compacted stream): which one would it follow?",
        )),
        _ => Err(unsupported(format!(
            "a continuous query follows one stream, or two joined on a time interval, and joins them with tables (compacted streams or materialized views); {}, {} and {} are all streams",
            streams[0].1, streams[1].1, streams[2].1
        ))),
    }
}

fn scan_stream(p: &Arc<dyn ExecutionPlan>) -> Result<StreamRef, SqlError> {
    p.downcast_ref::<StreamScanExec>()
        .map(|s| s.stream().clone())
        .ok_or_else(|| SqlError::new(SqlErrorKind::Execution, "scan expected"))
}

/// Whether `stream` is a table: compacted to the newest record per key.
fn is_table(broker: &Arc<BrokerRef>, stream: &StreamRef) -> Result<bool, SqlError> {
    let d = broker
        .0
        .describe_stream(stream)
        .map_err(|e| SqlError::new(SqlErrorKind::Execution, format!("{stream}: {e}")))?;
    Ok(d.effective_policy.compaction == Compaction::LatestPerKey)
}

/// `root` with every scan but the followed streams' read as a table, anew
/// for every batch the query processes.
fn tables_for_lookup(
    root: &Arc<dyn ExecutionPlan>,
    streams: &[Arc<dyn ExecutionPlan>],
    broker: &Arc<BrokerRef>,
) -> Result<Arc<dyn ExecutionPlan>, SqlError> {
    rewrite(root, &|p| {
        let Some(scan) = p.downcast_ref::<StreamScanExec>() else {
            return Ok(None);
        };
        if streams.iter().any(|s| Arc::ptr_eq(p, s)) {
            return Ok(Some(p.clone()));
        }
        let stream = scan.stream().clone();
        if !is_table(broker, &stream)? {
            return Err(unsupported(format!(
                "{stream} is a stream, not a table: a continuous query joins its stream with tables (compacted streams or materialized views)"
            )));
        }
        Ok(Some(Arc::new(LookupExec::compacted(
            broker.clone(),
            stream,
            scan.projection().clone(),
            p.schema(),
        ))))
    })
}

/// A join's type, if `p` is a join.
fn join_type(p: &Arc<dyn ExecutionPlan>) -> Option<JoinType> {
    if let Some(j) = p.downcast_ref::<HashJoinExec>() {
        return Some(*j.join_type());
    }
    if let Some(j) = p.downcast_ref::<NestedLoopJoinExec>() {
        return Some(*j.join_type());
    }
    if let Some(j) = p.downcast_ref::<SortMergeJoinExec>() {
        return Some(j.join_type());
    }
    if let Some(j) = p.downcast_ref::<SymmetricHashJoinExec>() {
        return Some(*j.join_type());
    }
    p.downcast_ref::<CrossJoinExec>().map(|_| JoinType::Inner)
}

/// Whether a join of this type, the stream on side `stream_side` (0:
/// left), yields only rows of the batch at hand: every row has a stream
/// row, so no table row comes out once per batch.
fn follows_stream(join: JoinType, stream_side: usize) -> bool {
    use JoinType::*;
    match stream_side {
        0 => matches!(join, Inner | Left | LeftSemi | LeftAnti | LeftMark),
        _ => matches!(join, Inner | Right | RightSemi | RightAnti | RightMark),
    }
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
    if let Some(join) = join_type(p) {
        let children = p.children();
        // Two streams joined (the interval join checked its type): both
        // sides run on every batch.
        if children.iter().all(|c| has(c, &is_scan)) {
            for c in children {
                check(c, allowed, stop)?;
            }
            return Ok(());
        }
        // The stream's side is checked on; the table's side is read
        // whole, so anything bounded goes there.
        let side = children.iter().position(|c| has(c, &is_scan));
        return match side {
            Some(side) if follows_stream(join, side) => check(children[side], allowed, stop),
            _ => Err(unsupported(format!(
                "a {join} join would repeat table rows without a stream row for every batch; a stream joins a table with [INNER] JOIN or LEFT JOIN, the stream on the left"
            ))),
        };
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

/// `p` with each of `streams`' scans replaced by a feed of its own, in
/// that order.
fn feed_streams(
    p: &Arc<dyn ExecutionPlan>,
    streams: &[Arc<dyn ExecutionPlan>],
) -> Result<(Arc<dyn ExecutionPlan>, Vec<Slot>), SqlError> {
    let slots: Vec<Slot> = streams.iter().map(|_| Slot::default()).collect();
    let plan = rewrite(p, &|node| {
        Ok(streams
            .iter()
            .position(|s| Arc::ptr_eq(s, node))
            .map(|i| Arc::new(FeedExec::new(node.schema(), slots[i].clone())) as _))
    })?;
    Ok((plan, slots))
}

/// `p` with the node `at` replaced by a feed of batches.
fn feed_in(
    p: &Arc<dyn ExecutionPlan>,
    at: &dyn Fn(&Arc<dyn ExecutionPlan>) -> bool,
) -> Result<(Arc<dyn ExecutionPlan>, Slot), SqlError> {
    let slot = Slot::default();
    let plan = replace(p, at, &slot)?;
    Ok((plan, slot))
}

fn replace(
    p: &Arc<dyn ExecutionPlan>,
    at: &dyn Fn(&Arc<dyn ExecutionPlan>) -> bool,
    slot: &Slot,
) -> Result<Arc<dyn ExecutionPlan>, SqlError> {
    rewrite(p, &|p| {
        Ok(at(p).then(|| Arc::new(FeedExec::new(p.schema(), slot.clone())) as _))
    })
}

/// A node's replacement, if it has one.
type Replacement = Result<Option<Arc<dyn ExecutionPlan>>, SqlError>;

/// `p` with every node `f` has a replacement for replaced (and not
/// looked into), from the top down.
fn rewrite(
    p: &Arc<dyn ExecutionPlan>,
    f: &dyn Fn(&Arc<dyn ExecutionPlan>) -> Replacement,
) -> Result<Arc<dyn ExecutionPlan>, SqlError> {
    if let Some(new) = f(p)? {
        return Ok(new);
    }
    let children = p
        .children()
        .into_iter()
        .map(|c| rewrite(c, f))
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
        let properties = bounded_properties(schema, 1, EmissionType::Incremental);
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
        crate::scan::only_partition("FeedExec", partition)?;
        let schema = self.properties.eq_properties.schema().clone();
        let batches = std::mem::take(&mut *self.slot.lock());
        let batches = futures_util::stream::iter(batches.into_iter().map(Ok));
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, batches)))
    }
}
