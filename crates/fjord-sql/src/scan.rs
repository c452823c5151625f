//! Reading one partition of a stream for a query: from where its bounds
//! say (the log's time index finds the first record of a time range), up
//! to the high watermark the query was planned at, in Arrow batches of the
//! columns the query reads.

use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::DataFusionError;
use datafusion::error::Result as DfResult;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{
    BaselineMetrics, Count, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet,
};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    ChildrenPropertiesMode, DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning,
    PlanProperties, ReplaceChildrenOptions,
};
use fjord_broker::{Broker, Position};
use fjord_core::StreamRef;
use futures_util::{stream, StreamExt};

use crate::bounds::Bounds;
use crate::columns::{BatchBuilder, Projection};

/// Bytes asked of the log per read. Small enough that a read's bytes are
/// still in the CPU's caches when they are checked (CRC) and decoded into
/// columns: 1 MiB read 10 million records in 0.76 s where 4 MiB took
/// 1.08 s (`fjord bench --scenarios j`). Kafka's default per-partition
/// fetch size is the same.
const READ_BYTES: usize = 1 << 20;

/// One partition's part of a query.
#[derive(Clone)]
pub struct PartitionScan {
    pub broker: Arc<Broker>,
    pub stream: StreamRef,
    pub partition: u32,
    /// The projected schema: exactly `columns`.
    pub schema: SchemaRef,
    pub columns: Projection,
    pub bounds: Bounds,
    /// Offset after the last record read: the high watermark when the query
    /// was planned (an ad-hoc query reads a snapshot, then ends).
    pub end: i64,
    /// Rows enough from this partition (a `LIMIT` with no filter above).
    pub limit: Option<usize>,
}

impl std::fmt::Debug for PartitionScan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionScan")
            .field("stream", &self.stream.to_string())
            .field("partition", &self.partition)
            .field("bounds", &self.bounds)
            .field("end", &self.end)
            .finish()
    }
}

/// Where a scan stands between reads.
enum Cursor {
    Start,
    At(i64),
    Done,
}

impl PartitionScan {
    /// The first offset to read.
    async fn start(&self) -> Result<i64, DataFusionError> {
        let earliest = self.resolve(Position::Earliest).await?;
        let mut start = earliest.max(self.bounds.offset_min.unwrap_or(earliest));
        if let Some(t) = self.bounds.publish_min_ms {
            start = start.max(self.resolve(Position::Timestamp(t)).await?);
        }
        Ok(start)
    }

    async fn resolve(&self, p: Position) -> Result<i64, DataFusionError> {
        self.broker
            .resolve(&self.stream, self.partition, p)
            .await
            .map_err(external)
    }

    /// Reads from `next`: a batch of rows (maybe empty) and the cursor after it.
    async fn read(
        &self,
        next: i64,
        rows: usize,
        misfits: &Count,
    ) -> Result<(datafusion::arrow::record_batch::RecordBatch, Cursor), DataFusionError> {
        let mut builder = BatchBuilder::new(self.schema.clone(), &self.columns, self.partition);
        let mut at = next;
        let mut cursor = Cursor::Done;
        while builder.rows() < rows && at < self.end {
            let mut beyond = false;
            // Records go straight from the stored batches into the Arrow
            // builders: no record is made on the way. A read is taken
            // whole, even past `rows`: cutting it would have the next read
            // fetch, check and walk the same stored batch again.
            let visited = self
                .broker
                .fetch_visit(
                    &self.stream,
                    self.partition,
                    Position::Offset(at),
                    READ_BYTES,
                    Duration::ZERO,
                    |_, r| {
                        // Publish times only grow along a partition: past the
                        // upper bound, nothing further can match.
                        if r.offset >= self.end
                            || self
                                .bounds
                                .publish_max_ms
                                .is_some_and(|max| r.publish_ts > max)
                        {
                            beyond = true;
                            return false;
                        }
                        builder.push(r);
                        true
                    },
                )
                .await;
            let visited = match visited {
                Ok(v) => v,
                // Retention removed what was asked for meanwhile: go on
                // from what is left.
                Err(fjord_broker::BrokerError::OffsetOutOfRange {
                    requested, start, ..
                }) if requested < start => {
                    at = start;
                    continue;
                }
                Err(e) => return Err(external(e)),
            };
            if beyond || visited.next_offset <= at {
                cursor = Cursor::Done;
                break;
            }
            at = visited.next_offset;
            cursor = if at < self.end {
                Cursor::At(at)
            } else {
                Cursor::Done
            };
        }
        misfits.add(builder.misfits() as usize);
        Ok((builder.finish()?, cursor))
    }
}

impl PartitionScan {
    /// The partition's rows, in batches of about `rows` (whole reads).
    fn batches(&self, rows: usize, misfits: Count) -> SendableRecordBatchStream {
        let scan = self.clone();
        let mut left = self.limit.unwrap_or(usize::MAX);
        let batches = stream::try_unfold(Cursor::Start, move |cursor| {
            let scan = scan.clone();
            let misfits = misfits.clone();
            let want = rows.min(left);
            left -= want.min(left);
            async move {
                let next = match cursor {
                    Cursor::Done => return Ok(None),
                    Cursor::Start => scan.start().await?,
                    Cursor::At(o) => o,
                };
                if want == 0 || scan.bounds.empty() || next >= scan.end {
                    return Ok(None);
                }
                let (batch, cursor) = scan.read(next, want, &misfits).await?;
                if batch.num_rows() == 0 {
                    return Ok(None);
                }
                Ok(Some((batch, cursor)))
            }
        });
        Box::pin(RecordBatchStreamAdapter::new(self.schema.clone(), batches))
    }
}

/// The scan of a stream: one DataFusion partition per stream partition
/// read. `EXPLAIN` shows what it reads, `EXPLAIN ANALYZE` how many rows it
/// produced.
#[derive(Debug)]
pub struct StreamScanExec {
    stream: StreamRef,
    parts: Vec<PartitionScan>,
    bounds: Bounds,
    columns: Projection,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl StreamScanExec {
    pub fn new(
        stream: StreamRef,
        schema: SchemaRef,
        columns: Projection,
        bounds: Bounds,
        parts: Vec<PartitionScan>,
    ) -> Self {
        let properties = bounded_properties(schema, parts.len().max(1), EmissionType::Incremental);
        StreamScanExec {
            stream,
            parts,
            bounds,
            columns,
            properties,
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }
}

impl StreamScanExec {
    pub fn stream(&self) -> &StreamRef {
        &self.stream
    }

    /// The stream's columns it produces, in order.
    pub fn projection(&self) -> &Projection {
        &self.columns
    }
}

impl DisplayAs for StreamScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        let parts: Vec<String> = self
            .parts
            .iter()
            .map(|p| format!("{}:{}", p.partition, p.end))
            .collect();
        let columns: Vec<&str> = self
            .columns
            .columns
            .iter()
            .map(|&c| self.columns.name(c))
            .collect();
        write!(
            f,
            "StreamScanExec: stream={}, partitions(until offset)=[{}], columns=[{}]",
            self.stream,
            parts.join(", "),
            columns.join(", ")
        )?;
        let b = &self.bounds;
        if b.offset_min.is_some() || b.offset_max.is_some() {
            write!(f, ", offsets={:?}..={:?}", b.offset_min, b.offset_max)?;
        }
        if b.publish_min_ms.is_some() || b.publish_max_ms.is_some() {
            write!(
                f,
                ", publish_ts_ms={:?}..={:?}",
                b.publish_min_ms, b.publish_max_ms
            )?;
        }
        Ok(())
    }
}

impl ExecutionPlan for StreamScanExec {
    fn name(&self) -> &'static str {
        "StreamScanExec"
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
        ctx: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let schema = self.properties.eq_properties.schema().clone();
        let Some(part) = self.parts.get(partition) else {
            // No partition to read (the bounds excluded them all).
            return Ok(Box::pin(RecordBatchStreamAdapter::new(
                schema,
                stream::empty(),
            )));
        };
        let baseline = BaselineMetrics::new(&self.metrics, partition);
        let rows = ctx.session_config().batch_size().max(1);
        // Values that did not fit the stream's schema (read as NULL).
        let misfits = MetricBuilder::new(&self.metrics).counter("values_not_matching", partition);
        let counted = part.batches(rows, misfits).map(move |b| {
            if let Ok(b) = &b {
                baseline.record_output(b.num_rows());
            }
            b
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, counted)))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}

/// Reads a partition from `at` without waiting; records retention removed
/// meanwhile are passed over (the read starts at what is left).
pub(crate) async fn fetch_present(
    broker: &Broker,
    stream: &StreamRef,
    partition: u32,
    mut at: i64,
) -> Result<fjord_broker::Fetched, fjord_broker::BrokerError> {
    loop {
        match broker
            .fetch(
                stream,
                partition,
                Position::Offset(at),
                4096,
                8 << 20,
                Duration::ZERO,
            )
            .await
        {
            Err(fjord_broker::BrokerError::OffsetOutOfRange {
                requested, start, ..
            }) if requested < start => at = start,
            other => return other,
        }
    }
}

pub(crate) fn external(e: fjord_broker::BrokerError) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

/// Calls `f` on every record of `partition` from `from` (or the earliest
/// still stored, if later) up to `end`.
pub(crate) async fn each_record(
    broker: &Broker,
    stream: &StreamRef,
    partition: u32,
    (from, end): (i64, i64),
    mut f: impl FnMut(&fjord_core::Record) -> Result<(), DataFusionError>,
) -> Result<(), DataFusionError> {
    let external = |e: fjord_broker::BrokerError| DataFusionError::External(Box::new(e));
    let mut at = broker
        .resolve(stream, partition, Position::Earliest)
        .await
        .map_err(external)?
        .max(from);
    while at < end {
        let fetched = fetch_present(broker, stream, partition, at)
            .await
            .map_err(external)?;
        if fetched.records.is_empty() {
            break;
        }
        for r in fetched.records.iter().filter(|r| r.offset < end) {
            f(r)?;
        }
        at = fetched.next_offset;
    }
    Ok(())
}

/// The properties of a bounded plan node of `partitions` partitions.
pub(crate) fn bounded_properties(
    schema: SchemaRef,
    partitions: usize,
    emission: EmissionType,
) -> Arc<PlanProperties> {
    Arc::new(PlanProperties::new(
        EquivalenceProperties::new(schema),
        Partitioning::UnknownPartitioning(partitions),
        emission,
        Boundedness::Bounded,
    ))
}

/// For a node of one partition asked to execute `partition`.
pub(crate) fn only_partition(node: &str, partition: usize) -> Result<(), DataFusionError> {
    if partition != 0 {
        return Err(DataFusionError::Internal(format!(
            "{node} has one partition, not {partition}"
        )));
    }
    Ok(())
}
