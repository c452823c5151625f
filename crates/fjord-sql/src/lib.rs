//! `fjord-sql`: SQL on Fjord's streams with Apache DataFusion.
//!
//! Every stream is a table (see [`columns`] for its columns): tenant =
//! catalog, namespace = schema, stream = table, and a query sees only what
//! its principal may read ([`catalog`]). Ad-hoc queries read a snapshot of
//! the stored data, narrowed by their time, offset and partition
//! predicates ([`bounds`], [`scan`]). JSON payloads are read with the
//! `json_get*` functions of `datafusion-functions-json`.

pub mod bounds;
pub mod catalog;
pub mod columns;
pub mod continuous;
pub mod error;
pub mod gapfill;
pub mod output;
pub mod pg;
pub mod scan;
pub mod settings;
pub mod table;

use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use fjord_auth::Principal;
use fjord_broker::Broker;

/// The DataFusion (and Arrow) this crate is built on, for its users' types.
pub use datafusion;
pub use error::{SqlError, SqlErrorKind};
pub use output::Format;

use catalog::Catalogs;
use table::BrokerRef;

/// The namespace an unqualified table name resolves in.
pub const DEFAULT_SCHEMA: &str = "default";

/// Memory all queries of a node may hold at once, by default.
pub const MEMORY_DEFAULT: usize = 512 << 20;

/// Queries only: DataFusion's own DDL, DML and COPY would reach the node's
/// files (CREATE EXTERNAL TABLE, COPY … TO).
pub fn query_options() -> SQLOptions {
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
}

/// SQL for one node.
pub struct SqlEngine {
    broker: Arc<BrokerRef>,
    /// Shared by every query: its memory pool bounds them together.
    runtime: Arc<RuntimeEnv>,
    queries: continuous::Registry,
}

/// What a statement answers.
pub enum Outcome {
    /// Rows (a query, `SHOW QUERIES`).
    Rows(SendableRecordBatchStream),
    /// A command done: its tag (`CREATE STREAM`, `DROP STREAM`).
    Done(&'static str),
    /// A push query's rows (`… EMIT CHANGES`): they never end; the
    /// client's endpoint sends each as it comes and drops the stream when
    /// the client cancels.
    Push(SendableRecordBatchStream),
}

/// A query's result, collected.
#[derive(Debug)]
pub struct QueryResult {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
}

impl QueryResult {
    pub fn rows(&self) -> usize {
        self.batches.iter().map(|b| b.num_rows()).sum()
    }
}

impl SqlEngine {
    pub fn new(broker: Arc<Broker>) -> Arc<Self> {
        Self::with_memory(broker, MEMORY_DEFAULT)
    }

    /// With `memory_bytes` for all queries together: a query that needs
    /// more fails with "resources exhausted" instead of growing the node.
    pub fn with_memory(broker: Arc<Broker>, memory_bytes: usize) -> Arc<Self> {
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::new(FairSpillPool::new(memory_bytes)))
            .build_arc()
            .unwrap_or_else(|_| Arc::new(RuntimeEnv::default()));
        let queries = continuous::Registry::default();
        let _ = queries
            .metrics
            .set(Arc::new(continuous::metrics::QueryMetrics::new(
                &broker.metrics().registry,
            )));
        Arc::new(SqlEngine {
            broker: Arc::new(BrokerRef(broker)),
            runtime,
            queries,
        })
    }

    /// A session for `principal`: its tenant is the default catalog,
    /// `default` the default schema; only what it may read is there.
    pub fn context(&self, principal: Arc<Principal>) -> SessionContext {
        let config = SessionConfig::new()
            .with_default_catalog_and_schema(principal.tenant.as_str(), DEFAULT_SCHEMA)
            .with_create_default_catalog_and_schema(false)
            .with_information_schema(true);
        self.context_with(config, principal)
    }

    /// A session planning a continuous query: one partition (the query
    /// runs as one task), and DISTINCT aggregates kept as aggregates (not
    /// rewritten into a second grouping, which windows cannot follow).
    pub(crate) fn continuous_context(&self, principal: Arc<Principal>) -> SessionContext {
        let config = SessionConfig::new()
            .with_default_catalog_and_schema(principal.tenant.as_str(), DEFAULT_SCHEMA)
            .with_create_default_catalog_and_schema(false)
            .with_target_partitions(1);
        let ctx = self.context_with(config, principal);
        ctx.remove_optimizer_rule("single_distinct_aggregation_to_group_by");
        ctx
    }

    fn context_with(&self, mut config: SessionConfig, principal: Arc<Principal>) -> SessionContext {
        // Names keep their place in the text, so planning errors (unknown
        // columns, tables) say where they are.
        config.options_mut().sql_parser.collect_spans = true;
        let state = datafusion::execution::SessionStateBuilder::new()
            .with_config(config)
            .with_runtime_env(self.runtime.clone())
            .with_default_features()
            .with_query_planner(Arc::new(gapfill::exec::FjordQueryPlanner))
            .build();
        let ctx = SessionContext::new_with_state(state);
        ctx.add_analyzer_rule(Arc::new(gapfill::HandleGapFill));
        for f in continuous::window::functions()
            .into_iter()
            .chain(gapfill::functions())
            .chain([settings::current_setting()])
        {
            ctx.register_udf((*f).clone());
        }
        ctx.register_catalog_list(Arc::new(Catalogs::new(
            self.broker.clone(),
            principal,
            self.queries.views.clone(),
        )));
        let mut ctx = ctx;
        if let Err(e) = datafusion_functions_json::register_all(&mut ctx) {
            // Registration only fails on a name clash between built-ins.
            tracing::error!(error = %e, "JSON functions not registered");
        }
        ctx
    }

    /// Runs one statement: a query, or a statement of continuous queries.
    pub async fn execute(&self, principal: Arc<Principal>, sql: &str) -> Result<Outcome, SqlError> {
        use continuous::statement::{self, QueryKind, Statement};
        let tag = |k: QueryKind, create: bool| match (k, create) {
            (QueryKind::Stream, true) => "CREATE STREAM",
            (QueryKind::Stream, false) => "DROP STREAM",
            (QueryKind::MaterializedView, true) => "CREATE MATERIALIZED VIEW",
            (QueryKind::MaterializedView, false) => "DROP MATERIALIZED VIEW",
        };
        match statement::parse(sql)? {
            Statement::Other => Ok(Outcome::Rows(self.stream(principal, sql).await?)),
            Statement::Create {
                kind,
                name,
                options,
                query,
                query_at,
            } => {
                self.create_query(principal, kind, name, options, query, query_at)
                    .await?;
                Ok(Outcome::Done(tag(kind, true)))
            }
            Statement::Drop {
                kind,
                name,
                if_exists,
            } => {
                self.drop_query(principal, kind, name, if_exists).await?;
                Ok(Outcome::Done(tag(kind, false)))
            }
            Statement::Push { query } => {
                Ok(Outcome::Push(self.push_query(principal, &query).await?))
            }
            Statement::ShowQueries => {
                let batch = self.show_queries(&principal).await?;
                let schema = batch.schema();
                let rows = futures_util::stream::iter(vec![Ok(batch)]);
                Ok(Outcome::Rows(Box::pin(
                    datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(schema, rows),
                )))
            }
        }
    }

    /// Runs one query and streams its rows.
    pub async fn stream(
        &self,
        principal: Arc<Principal>,
        sql: &str,
    ) -> Result<SendableRecordBatchStream, SqlError> {
        let ctx = self.context(principal);
        let df = ctx.sql_with_options(sql, query_options()).await?;
        Ok(df.execute_stream().await?)
    }

    /// Runs one statement and collects its rows (none for a command).
    pub async fn query(
        &self,
        principal: Arc<Principal>,
        sql: &str,
    ) -> Result<QueryResult, SqlError> {
        use futures_util::TryStreamExt;
        let stream = match self.execute(principal, sql).await? {
            Outcome::Rows(s) => s,
            Outcome::Push(_) => {
                return Err(SqlError::new(
                    SqlErrorKind::NotSupported,
                    "a push query (EMIT CHANGES) streams until cancelled: run it over the PostgreSQL protocol or the SQL WebSocket",
                ))
            }
            Outcome::Done(_) => {
                return Ok(QueryResult {
                    schema: Arc::new(datafusion::arrow::datatypes::Schema::empty()),
                    batches: Vec::new(),
                })
            }
        };
        let schema = stream.schema();
        let batches: Vec<RecordBatch> = stream.try_collect().await?;
        Ok(QueryResult { schema, batches })
    }
}
