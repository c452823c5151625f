//! Tables a stream is joined with: a compacted stream (the newest record
//! of every key, tombstones deleting) or a materialized view (its newest
//! row per group). Read when the plan runs — again for every batch of a
//! continuous query — and kept until the table's stream grows, so a join
//! sees the table as it is when each batch is processed.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::execution_plan::EmissionType;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use fjord_broker::{Broker, Position};
use fjord_core::{Record, StreamRef};
use parking_lot::Mutex;

use super::view::{view_rows, ViewInfo};
use crate::columns::{BatchBuilder, Projection};
use crate::scan::bounded_properties;
use crate::table::BrokerRef;

#[derive(Debug, Clone)]
enum Source {
    /// A compacted stream's columns.
    Compacted { columns: Projection },
    /// A view's columns (all, or these).
    View {
        info: Arc<ViewInfo>,
        projection: Option<Vec<usize>>,
    },
}

/// What a table was read into, and the partitions' ends it was read at.
#[derive(Default)]
struct Cached {
    ends: Vec<i64>,
    rows: Option<RecordBatch>,
    /// A compacted stream's newest records, per partition, kept so that
    /// only what was appended since is read next time.
    newest: Vec<Newest>,
}

type Cache = Arc<Mutex<Cached>>;

/// One partition's newest record per key (records without a key all
/// count), in offset order; a key whose newest record is a tombstone has
/// none.
#[derive(Default, Clone)]
struct Newest {
    by_offset: BTreeMap<i64, Record>,
    by_key: HashMap<Bytes, i64>,
}

impl Newest {
    fn apply(&mut self, r: &Record) {
        match &r.key {
            Some(k) => {
                if let Some(old) = self.by_key.remove(k) {
                    self.by_offset.remove(&old);
                }
                if r.value.is_some() {
                    self.by_key.insert(k.clone(), r.offset);
                    self.by_offset.insert(r.offset, r.clone());
                }
            }
            None => {
                self.by_offset.insert(r.offset, r.clone());
            }
        }
    }
}

impl std::fmt::Debug for Cached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cached(ends {:?})", self.ends)
    }
}

/// A table's current rows.
#[derive(Debug)]
pub struct LookupExec {
    broker: Arc<BrokerRef>,
    stream: StreamRef,
    source: Source,
    cache: Cache,
    properties: Arc<PlanProperties>,
}

impl LookupExec {
    /// The newest record of each key of `stream`, as `columns` (`schema`).
    pub fn compacted(
        broker: Arc<BrokerRef>,
        stream: StreamRef,
        columns: Projection,
        schema: SchemaRef,
    ) -> Self {
        LookupExec {
            broker,
            stream,
            source: Source::Compacted { columns },
            cache: Cache::default(),
            properties: bounded_properties(schema, 1, EmissionType::Final),
        }
    }

    /// The rows of the view in `stream`.
    pub fn view(
        broker: Arc<BrokerRef>,
        stream: StreamRef,
        info: Arc<ViewInfo>,
        projection: Option<Vec<usize>>,
    ) -> DfResult<Self> {
        let schema = match &projection {
            Some(p) => Arc::new(info.schema.project(p)?),
            None => info.schema.clone(),
        };
        Ok(LookupExec {
            broker,
            stream,
            source: Source::View { info, projection },
            cache: Cache::default(),
            properties: bounded_properties(schema, 1, EmissionType::Final),
        })
    }

    pub fn stream(&self) -> &StreamRef {
        &self.stream
    }

    async fn rows(
        broker: Arc<BrokerRef>,
        stream: StreamRef,
        source: &Source,
        cache: Cache,
        schema: SchemaRef,
    ) -> DfResult<RecordBatch> {
        let broker: &Broker = &broker.0;
        // Where each partition ends now (cheap: asked for every batch).
        let external = |e| DataFusionError::External(Box::new(e));
        let mut ends = Vec::new();
        for p in 0..broker.partition_count(&stream).map_err(external)? {
            ends.push(
                broker
                    .resolve(&stream, p, Position::Latest)
                    .await
                    .map_err(external)?,
            );
        }
        // The last read, taken out while this one runs (a failed read
        // leaves nothing behind, so the next starts afresh).
        let last = std::mem::take(&mut *cache.lock());
        if let Some(rows) = last.rows.as_ref().filter(|_| last.ends == ends) {
            let rows = rows.clone();
            *cache.lock() = last;
            return Ok(rows);
        }
        // Appended to since: read on from where the last read ended
        // (from the start for a partition that is new or lost records
        // to retention meanwhile, which the read notices).
        let read_from: Vec<i64> = (0..ends.len())
            .map(|p| last.ends.get(p).copied().unwrap_or(0))
            .collect();
        let newest = last.newest;
        let (rows, newest) = match source {
            Source::Compacted { columns } => {
                let newest = newest_per_key(broker, &stream, newest, &read_from, &ends).await?;
                (build(&newest, columns, schema)?, newest)
            }
            Source::View { info, projection } => {
                let all = view_rows(broker, &stream, info, &ends).await?;
                let rows = match projection {
                    Some(p) => all.project(p)?,
                    None => all,
                };
                (rows, Vec::new())
            }
        };
        *cache.lock() = Cached {
            ends,
            rows: Some(rows.clone()),
            newest,
        };
        Ok(rows)
    }
}

/// Brings each partition's newest records up to `ends`, reading from
/// `from`; a partition whose earliest record is past `from` (retention
/// deleted what was read) is read again from its start.
async fn newest_per_key(
    broker: &Broker,
    stream: &StreamRef,
    mut newest: Vec<Newest>,
    from: &[i64],
    ends: &[i64],
) -> DfResult<Vec<Newest>> {
    newest.resize_with(ends.len(), Newest::default);
    for (p, &end) in ends.iter().enumerate() {
        let start = broker
            .resolve(stream, p as u32, Position::Earliest)
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        let mut at = from[p];
        if start > at || at > end {
            newest[p] = Newest::default();
            at = 0;
        }
        let part = &mut newest[p];
        crate::scan::each_record(broker, stream, p as u32, (at, end), |r| {
            part.apply(r);
            Ok(())
        })
        .await?;
    }
    Ok(newest)
}

/// The newest records as `columns`.
fn build(newest: &[Newest], columns: &Projection, schema: SchemaRef) -> DfResult<RecordBatch> {
    let mut batches = Vec::with_capacity(newest.len());
    for (p, part) in newest.iter().enumerate() {
        let mut b = BatchBuilder::new(schema.clone(), columns, p as u32);
        for r in part.by_offset.values() {
            b.push(r);
        }
        batches.push(b.finish()?);
    }
    Ok(concat_batches(&schema, &batches)?)
}

impl DisplayAs for LookupExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        let kind = match self.source {
            Source::Compacted { .. } => "newest per key",
            Source::View { .. } => "view",
        };
        write!(f, "LookupExec: {} ({kind})", self.stream)
    }
}

impl ExecutionPlan for LookupExec {
    fn name(&self) -> &'static str {
        "LookupExec"
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

    #[allow(deprecated)]
    fn with_new_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn execute(
        &self,
        partition: usize,
        _ctx: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        crate::scan::only_partition("LookupExec", partition)?;
        let schema = self.properties.eq_properties.schema().clone();
        let (broker, stream, cache) =
            (self.broker.clone(), self.stream.clone(), self.cache.clone());
        let source = self.source.clone();
        let out = schema.clone();
        let rows = futures_util::stream::once(async move {
            Self::rows(broker, stream, &source, cache, out).await
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, rows)))
    }
}
