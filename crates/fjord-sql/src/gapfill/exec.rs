//! Executing gap filling: the physical node and its planner.

use std::sync::Arc;

use datafusion::arrow::array::{
    new_null_array, Array, ArrayRef, AsArray, Float64Array, UInt32Array,
};
use datafusion::arrow::compute::{
    cast, concat_batches, lexsort_to_indices, partition, take, SortColumn, SortOptions,
};
use datafusion::arrow::datatypes::{DataType, Float64Type, SchemaRef, TimestampMillisecondType};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::Session;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::ScalarValue;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::context::QueryPlanner;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{LogicalPlan, UserDefinedLogicalNode};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::execution_plan::EmissionType;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    ColumnarValue, DisplayAs, DisplayFormatType, Distribution, ExecutionPlan, PlanProperties,
};
use datafusion::physical_planner::{DefaultPhysicalPlanner, ExtensionPlanner, PhysicalPlanner};
use futures_util::{StreamExt, TryStreamExt};

use super::fill::{self, Grid, Slot};
use super::node::{Fill, GapFill};
use crate::continuous::window::{from_millis, to_millis};
use crate::scan::bounded_properties;

/// The most rows one gap-filling step may make: a grid past it is a
/// mistake (a bucket of a second over a year) better refused than run.
pub const MAX_ROWS: u64 = 10_000_000;

/// Plans Fjord's logical extensions next to DataFusion's own nodes.
#[derive(Debug, Default)]
pub struct FjordQueryPlanner;

#[async_trait::async_trait]
impl QueryPlanner for FjordQueryPlanner {
    async fn create_physical_plan(
        &self,
        plan: &LogicalPlan,
        session: &dyn Session,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        DefaultPhysicalPlanner::with_extension_planners(vec![Arc::new(GapFillPlanner)])
            .create_physical_plan(plan, session)
            .await
    }
}

#[derive(Debug)]
struct GapFillPlanner;

#[async_trait::async_trait]
impl ExtensionPlanner for GapFillPlanner {
    async fn plan_extension(
        &self,
        planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        session: &dyn Session,
        planning_ctx: &PhysicalPlanningContext,
    ) -> DfResult<Option<Arc<dyn ExecutionPlan>>> {
        let Some(node) = node.as_any().downcast_ref::<GapFill>() else {
            return Ok(None);
        };
        let (Some(logical), Some(input)) = (logical_inputs.first(), physical_inputs.first()) else {
            return Err(DataFusionError::Internal("GapFill without input".into()));
        };
        let bound = |e, what| {
            let e = planner.create_physical_expr(e, logical.schema(), session, planning_ctx)?;
            constant_ms(&e, &input.schema(), what)
        };
        let start = bound(&node.start, "start")?;
        let finish = bound(&node.finish, "finish")?;
        let end = if node.finish_inclusive {
            finish.saturating_add(1)
        } else {
            finish
        };
        for &(i, fill) in &node.fills {
            let t = input.schema().field(i).data_type().clone();
            if fill == Fill::Interpolate && !t.is_numeric() {
                return Err(DataFusionError::Plan(format!(
                    "interpolate() draws lines between numbers, and {} is {t}",
                    input.schema().field(i).name()
                )));
            }
        }
        let exec = GapFillExec {
            input: input.clone(),
            params: Params {
                time: node.time,
                groups: node.groups,
                grid: Grid::covering(start, end, node.stride_ms),
                fills: node.fills.clone(),
            },
            properties: bounded_properties(
                Arc::new(node.schema().as_arrow().clone()),
                1,
                EmissionType::Final,
            ),
        };
        Ok(Some(Arc::new(exec)))
    }
}

/// A range bound, evaluated once at planning (`now()` included) as
/// milliseconds since the epoch.
fn constant_ms(e: &Arc<dyn PhysicalExpr>, schema: &SchemaRef, what: &str) -> DfResult<i64> {
    let value = match e.evaluate(&RecordBatch::new_empty(schema.clone()))? {
        ColumnarValue::Scalar(v) => v,
        ColumnarValue::Array(_) => {
            return Err(DataFusionError::Plan(format!(
                "time_bucket_gapfill()'s {what} is a constant time, not a column"
            )))
        }
    };
    let ms = cast(
        &value.to_array()?,
        &DataType::Timestamp(datafusion::arrow::datatypes::TimeUnit::Millisecond, None),
    )
    .map_err(|_| {
        DataFusionError::Plan(format!(
            "time_bucket_gapfill()'s {what} is a timestamp, not {}",
            value.data_type()
        ))
    })?;
    match ScalarValue::try_from_array(&ms, 0)? {
        ScalarValue::TimestampMillisecond(Some(v), _) => Ok(v),
        _ => Err(DataFusionError::Plan(format!(
            "time_bucket_gapfill()'s {what} is empty (NULL)"
        ))),
    }
}

#[derive(Debug, Clone)]
struct Params {
    time: usize,
    groups: usize,
    grid: Grid,
    fills: Vec<(usize, Fill)>,
}

/// Reads the whole aggregate (one row per series and bucket, so far
/// smaller than what it aggregated), then writes it out filled.
#[derive(Debug)]
pub struct GapFillExec {
    input: Arc<dyn ExecutionPlan>,
    params: Params,
    properties: Arc<PlanProperties>,
}

impl DisplayAs for GapFillExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        let p = &self.params;
        write!(
            f,
            "GapFillExec: buckets={} every={}ms from={}",
            p.grid.len(),
            p.grid.stride,
            p.grid.first
        )
    }
}

impl ExecutionPlan for GapFillExec {
    fn name(&self) -> &'static str {
        "GapFillExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn required_input_distribution(&self) -> Vec<Distribution> {
        vec![Distribution::SinglePartition]
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    #[allow(deprecated)]
    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let [input] = <[Arc<dyn ExecutionPlan>; 1]>::try_from(children)
            .map_err(|_| DataFusionError::Internal("GapFillExec takes one input".into()))?;
        Ok(Arc::new(GapFillExec {
            input,
            params: self.params.clone(),
            properties: self.properties.clone(),
        }))
    }

    fn execute(
        &self,
        partition: usize,
        ctx: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        crate::scan::only_partition("GapFillExec", partition)?;
        let input = self.input.execute(0, ctx.clone())?;
        let input_schema = self.input.schema();
        let schema = self.properties.eq_properties.schema().clone();
        let params = self.params.clone();
        let batch_size = ctx.session_config().batch_size().max(1);
        let reservation = MemoryConsumer::new("GapFillExec").register(ctx.memory_pool());
        let out_schema = schema.clone();
        let filled = futures_util::stream::once(async move {
            let (out, reservation) =
                read_and_fill(input, input_schema, reservation, &params, &out_schema).await?;
            let slices: Vec<DfResult<RecordBatch>> = (0..out.num_rows())
                .step_by(batch_size)
                .map(|at| Ok(out.slice(at, batch_size.min(out.num_rows() - at))))
                .collect();
            // The output stays counted until its last slice is gone.
            Ok::<_, DataFusionError>(futures_util::stream::iter(slices).map(move |b| {
                let _counted = &reservation;
                b
            }))
        })
        .try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            schema,
            filled.boxed(),
        )))
    }
}

/// Reads all of `input`, counting it against the query's memory, and
/// fills it.
async fn read_and_fill(
    input: SendableRecordBatchStream,
    input_schema: SchemaRef,
    reservation: MemoryReservation,
    params: &Params,
    schema: &SchemaRef,
) -> DfResult<(RecordBatch, MemoryReservation)> {
    let mut batches = Vec::new();
    let mut input = input;
    while let Some(b) = input.next().await {
        let b = b?;
        reservation.try_grow(b.get_array_memory_size())?;
        batches.push(b);
    }
    let all = concat_batches(&input_schema, &batches)?;
    drop(batches);
    let out = fill_batch(&all, params, schema)?;
    reservation.try_grow(out.get_array_memory_size())?;
    drop(all);
    reservation.shrink(
        reservation
            .size()
            .saturating_sub(out.get_array_memory_size()),
    );
    Ok((out, reservation))
}

/// The aggregate's rows `batch`, gaps filled (see [`fill`]).
fn fill_batch(batch: &RecordBatch, p: &Params, schema: &SchemaRef) -> DfResult<RecordBatch> {
    let series_cols: Vec<usize> = (0..p.groups).filter(|&c| c != p.time).collect();
    if batch.num_rows() == 0 {
        // No series at all; unless the buckets are the only group, when
        // the one series is the empty grid.
        if !series_cols.is_empty() {
            return Ok(RecordBatch::new_empty(schema.clone()));
        }
        return empty_grid(p, schema);
    }
    let sort: Vec<SortColumn> = series_cols
        .iter()
        .chain(std::iter::once(&p.time))
        .map(|&c| SortColumn {
            values: batch.column(c).clone(),
            options: Some(SortOptions {
                descending: false,
                nulls_first: true,
            }),
        })
        .collect();
    let order = lexsort_to_indices(&sort, None)?;
    let sorted: Vec<ArrayRef> = batch
        .columns()
        .iter()
        .map(|c| take(c.as_ref(), &order, None))
        .collect::<Result<_, _>>()?;
    let ranges = if series_cols.is_empty() {
        std::iter::once(0..batch.num_rows()).collect()
    } else {
        let keys: Vec<ArrayRef> = series_cols.iter().map(|&c| sorted[c].clone()).collect();
        partition(&keys)?.ranges()
    };
    let rows = batch.num_rows() as u64 + ranges.len() as u64 * p.grid.len();
    if rows > MAX_ROWS {
        return Err(DataFusionError::ResourcesExhausted(format!(
            "gap filling would make {rows} rows ({} series × {} buckets, most {MAX_ROWS}); narrow the time range or widen the bucket",
            ranges.len(),
            p.grid.len()
        )));
    }
    let time_ms = to_millis(&sorted[p.time])?;
    let time_ms = time_ms.as_primitive::<TimestampMillisecondType>();
    // Every output row: the series it is in (its first row), the input
    // row it is (none for a gap), and its bucket.
    let mut slots: Vec<(usize, Slot)> = Vec::with_capacity(rows as usize);
    let mut spans = Vec::with_capacity(ranges.len());
    let mut times: Vec<Option<i64>> = Vec::new();
    for r in &ranges {
        let from = slots.len();
        times.clear();
        times.extend((r.start..r.end).map(|i| time_ms.is_valid(i).then(|| time_ms.value(i))));
        slots.extend(fill::merge(&times, p.grid).into_iter().map(|s| match s {
            Slot::Row(i) => (r.start, Slot::Row(r.start + i)),
            gap => (r.start, gap),
        }));
        spans.push(from..slots.len());
    }
    let series_rows = UInt32Array::from_iter_values(slots.iter().map(|(first, _)| *first as u32));
    let own_rows: UInt32Array = slots
        .iter()
        .map(|(_, s)| match s {
            Slot::Row(i) => Some(*i as u32),
            Slot::Gap(_) => None,
        })
        .collect();
    let out_times: Vec<Option<i64>> = slots
        .iter()
        .map(|(_, s)| match s {
            Slot::Row(i) => time_ms.is_valid(*i).then(|| time_ms.value(*i)),
            Slot::Gap(t) => Some(*t),
        })
        .collect();
    let mut columns = Vec::with_capacity(schema.fields().len());
    for (c, col) in sorted.iter().enumerate() {
        columns.push(if c == p.time {
            from_millis(out_times.clone(), col.data_type())?
        } else if c < p.groups {
            take(col.as_ref(), &series_rows, None)?
        } else {
            take(col.as_ref(), &own_rows, None)?
        });
    }
    // Values carry forward, and lines run, within a series only.
    let only_slots: Vec<Slot> = slots.iter().map(|(_, s)| *s).collect();
    for &(c, how) in &p.fills {
        let col = &sorted[c];
        columns.push(match how {
            Fill::Locf => {
                let rows: UInt32Array = spans
                    .iter()
                    .flat_map(|span| fill::locf(&only_slots[span.clone()], |i| col.is_valid(i)))
                    .map(|r| r.map(|i| i as u32))
                    .collect();
                take(col.as_ref(), &rows, None)?
            }
            Fill::Interpolate => {
                let values = cast(col, &DataType::Float64)?;
                let values = values.as_primitive::<Float64Type>();
                let rounded = col.data_type().is_integer();
                let line: Float64Array = spans
                    .iter()
                    .flat_map(|span| {
                        fill::interpolate(
                            &only_slots[span.clone()],
                            |i| time_ms.is_valid(i).then(|| time_ms.value(i)),
                            |i| values.is_valid(i).then(|| values.value(i)),
                        )
                    })
                    .map(|v| v.map(|v| if rounded { v.round() } else { v }))
                    .collect();
                cast(&line, col.data_type())?
            }
        });
    }
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

/// The grid alone: buckets, every other column empty.
fn empty_grid(p: &Params, schema: &SchemaRef) -> DfResult<RecordBatch> {
    if p.grid.len() > MAX_ROWS {
        return Err(DataFusionError::ResourcesExhausted(format!(
            "gap filling would make {} buckets (most {MAX_ROWS}); narrow the time range or widen the bucket",
            p.grid.len()
        )));
    }
    let buckets: Vec<Option<i64>> = fill::merge(&[], p.grid)
        .into_iter()
        .map(|s| match s {
            Slot::Gap(t) => Some(t),
            Slot::Row(_) => None,
        })
        .collect();
    let n = buckets.len();
    let columns = schema
        .fields()
        .iter()
        .enumerate()
        .map(|(c, f)| {
            if c == p.time {
                from_millis(buckets.clone(), f.data_type())
            } else {
                Ok(new_null_array(f.data_type(), n))
            }
        })
        .collect::<DfResult<Vec<_>>>()?;
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}
