//! A stream as a DataFusion table: one scan partition per stream
//! partition, bounds from the query's filters, only the columns it reads.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::Session;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::Result;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use fjord_broker::Broker;
use fjord_core::StreamRef;

use crate::bounds::Bounds;
use crate::columns::Projection;
use crate::scan::{external, PartitionScan, StreamScanExec};

#[derive(Debug)]
pub struct StreamTable {
    broker: Arc<BrokerRef>,
    stream: StreamRef,
    /// Every column, typed by the stream's value schema when it has one.
    all: Projection,
    schema: SchemaRef,
}

/// The broker, for `Debug` (it has none of its own).
pub struct BrokerRef(pub Arc<Broker>);

impl std::fmt::Debug for BrokerRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Broker")
    }
}

impl StreamTable {
    pub fn new(broker: Arc<BrokerRef>, stream: StreamRef) -> Self {
        // A stream that went away meanwhile reads as it would without a
        // schema; the scan reports that it is gone.
        let values = broker.0.value_schema(&stream).ok().flatten();
        let all = Projection::of_stream(values);
        StreamTable {
            broker,
            stream,
            schema: all.schema(),
            all,
        }
    }
}

#[async_trait]
impl TableProvider for StreamTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        // Inexact: the scan narrows what it reads, DataFusion still
        // filters every row.
        Ok(filters
            .iter()
            .map(|f| {
                if Bounds::usable(f) {
                    TableProviderFilterPushDown::Inexact
                } else {
                    TableProviderFilterPushDown::Unsupported
                }
            })
            .collect())
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let indices: Vec<usize> = match projection {
            Some(p) => p.clone(),
            None => (0..self.all.columns.len()).collect(),
        };
        let columns = self.all.project(&indices);
        let schema = Arc::new(self.schema.project(&indices)?);
        let bounds = Bounds::of(filters);
        let broker = &self.broker.0;
        let count = broker.partition_count(&self.stream).map_err(external)?;
        let mut parts = Vec::new();
        for p in 0..count {
            if bounds
                .partitions
                .as_ref()
                .is_some_and(|set| !set.contains(&p))
            {
                continue;
            }
            // The snapshot the query reads: what is there now.
            let hwm = broker
                .resolve(&self.stream, p, fjord_broker::Position::Latest)
                .await
                .map_err(external)?;
            let end = match bounds.offset_max {
                Some(max) => hwm.min(max.saturating_add(1)),
                None => hwm,
            };
            parts.push(PartitionScan {
                broker: broker.clone(),
                stream: self.stream.clone(),
                partition: p,
                schema: schema.clone(),
                columns: columns.clone(),
                bounds: bounds.clone(),
                end,
                // A hint: DataFusion applies the query's limit above; a
                // partition need not read more than that many rows.
                limit,
            });
        }
        let scan = StreamScanExec::new(self.stream.clone(), schema, columns, bounds, parts);
        Ok(Arc::new(scan))
    }
}
