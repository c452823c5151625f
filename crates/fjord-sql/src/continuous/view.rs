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
use datafusion::datasource::{MemTable, TableProvider, TableType};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;
use fjord_broker::{Broker, BrokerError, Position};
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

impl ViewTable {
    /// The newest row of every key, from the view's stream.
    async fn rows(&self) -> DfResult<RecordBatch> {
        let broker: &Broker = &self.broker.0;
        let schema = self.info.schema.clone();
        let mut decoder = datafusion::arrow::json::ReaderBuilder::new(schema.clone())
            .build_decoder()
            .map_err(DataFusionError::from)?;
        let mut batches = Vec::new();
        let parts = broker.partition_count(&self.stream).map_err(external)?;
        for p in 0..parts {
            let end = broker
                .resolve(&self.stream, p, Position::Latest)
                .await
                .map_err(external)?;
            let mut at = broker
                .resolve(&self.stream, p, Position::Earliest)
                .await
                .map_err(external)?;
            while at < end {
                let f = crate::scan::fetch_present(broker, &self.stream, p, at)
                    .await
                    .map_err(external)?;
                if f.records.is_empty() {
                    break;
                }
                for r in f.records.iter().filter(|r| r.offset < end) {
                    if let Some(v) = &r.value {
                        decoder.decode(v)?;
                        decoder.decode(b"\n")?;
                    }
                }
                if let Some(b) = decoder.flush()? {
                    batches.push(b);
                }
                at = f.next_offset;
            }
        }
        let all = concat_batches(&schema, &batches)?;
        if self.info.key.is_empty() || all.num_rows() == 0 {
            return Ok(all);
        }
        // The newest row of each key: a key's records are in one
        // partition, in order, so its last occurrence is its newest.
        let fields = self
            .info
            .key
            .iter()
            .map(|&i| SortField::new(schema.field(i).data_type().clone()))
            .collect();
        let converter = RowConverter::new(fields)?;
        let cols: Vec<_> = self
            .info
            .key
            .iter()
            .map(|&i| all.column(i).clone())
            .collect();
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
}

fn external(e: BrokerError) -> DataFusionError {
    DataFusionError::External(Box::new(e))
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
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let rows = self.rows().await?;
        let table = MemTable::try_new(self.info.schema.clone(), vec![vec![rows]])?;
        table.scan(state, projection, filters, limit).await
    }
}
