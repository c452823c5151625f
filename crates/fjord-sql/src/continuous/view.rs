//! Materialized views: a continuous query whose results are kept as a
//! table. Its rows live in a stream of the view's name (so MQTT, Kafka and
//! HTTP clients can follow its changes), one JSON record per result row,
//! keyed by the row's `GROUP BY` values (window included) and compacted to
//! the newest record per key. `SELECT … FROM view` reads the newest row of
//! each key, in the query's own column types.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::UInt32Array;
use datafusion::arrow::compute::{concat_batches, take};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::catalog::Session;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;
use fjord_broker::Broker;
use fjord_core::StreamRef;
use parking_lot::RwLock;

/// What a view's table is.
#[derive(Debug)]
pub struct ViewInfo {
    pub schema: SchemaRef,
    /// The columns identifying a row (empty: every record is a row).
    pub key: Vec<usize>,
}

/// The node's materialized views, by their stream.
#[derive(Debug, Default)]
pub struct Views(RwLock<HashMap<StreamRef, Arc<ViewInfo>>>);

impl Views {
    pub fn get(&self, s: &StreamRef) -> Option<Arc<ViewInfo>> {
        self.0.read().get(s).cloned()
    }

    pub fn insert(&self, s: StreamRef, info: ViewInfo) {
        self.0.write().insert(s, Arc::new(info));
    }

    pub fn remove(&self, s: &StreamRef) {
        self.0.write().remove(s);
    }
}

/// A view as a table.
#[derive(Debug)]
pub struct ViewTable {
    pub broker: Arc<crate::table::BrokerRef>,
    pub stream: StreamRef,
    pub info: Arc<ViewInfo>,
}

/// The newest row of every key of the view in `stream`, as of the
/// partitions' `ends`.
pub(crate) async fn view_rows(
    broker: &Broker,
    stream: &StreamRef,
    info: &ViewInfo,
    ends: &[i64],
) -> DfResult<RecordBatch> {
    let schema = info.schema.clone();
    let mut decoder = datafusion::arrow::json::ReaderBuilder::new(schema.clone())
        .build_decoder()
        .map_err(DataFusionError::from)?;
    let mut batches = Vec::new();
    for (p, &end) in ends.iter().enumerate() {
        crate::scan::each_record(broker, stream, p as u32, (0, end), |r| {
            if let Some(v) = &r.value {
                decoder.decode(v)?;
                decoder.decode(b"\n")?;
            }
            Ok(())
        })
        .await?;
        if let Some(b) = decoder.flush()? {
            batches.push(b);
        }
    }
    let all = concat_batches(&schema, &batches)?;
    if info.key.is_empty() || all.num_rows() == 0 {
        return Ok(all);
    }
    // The newest row of each key: a key's records are in one partition,
    // in order, so its last occurrence is its newest.
    let fields = info
        .key
        .iter()
        .map(|&i| SortField::new(schema.field(i).data_type().clone()))
        .collect();
    let converter = RowConverter::new(fields)?;
    let cols: Vec<_> = info.key.iter().map(|&i| all.column(i).clone()).collect();
    let rows = converter.convert_columns(&cols)?;
    let mut last: HashMap<&[u8], u32> = HashMap::with_capacity(all.num_rows());
    for i in 0..rows.num_rows() {
        last.insert(rows.row(i).data(), i as u32);
    }
    let mut keep: Vec<u32> = last.into_values().collect();
    keep.sort_unstable();
    let idx = UInt32Array::from(keep);
    let columns = all
        .columns()
        .iter()
        .map(|c| take(c.as_ref(), &idx, None))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RecordBatch::try_new(schema, columns)?)
}

#[async_trait]
impl TableProvider for ViewTable {
    fn schema(&self) -> SchemaRef {
        self.info.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        // Read when run, not now: a continuous query joining the view
        // runs this plan again and again.
        Ok(Arc::new(super::lookup::LookupExec::view(
            self.broker.clone(),
            self.stream.clone(),
            self.info.clone(),
            projection.cloned(),
        )?))
    }
}
