//! Continuous queries: `CREATE STREAM name AS SELECT …` runs for as long as
//! it exists and appends its results to the stream `name`, which any
//! protocol can read. Their definitions and checkpoints live in the meta
//! store, so they resume where they were after a restart.

pub mod aggregate;
pub mod checkpoint;
pub mod interval;
pub mod lookup;
pub mod metrics;
pub mod options;
pub mod plan;
pub mod records;
pub mod runner;
pub mod session;
pub mod statement;
pub mod view;
pub mod window;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{
    ArrayRef, Int64Array, StringArray, TimestampMillisecondArray, UInt64Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use fjord_auth::{Action, Method, Principal, Resource};
use fjord_broker::{Broker, Position};
use fjord_core::{NamespaceName, Policy, StreamName, StreamRef, TenantName};
use fjord_meta::MetaStore;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::error::{SqlError, SqlErrorKind};
use crate::SqlEngine;
use checkpoint::{Checkpoint, Header};
use options::{Late, Options, Start};
use runner::{CheckpointStore, Runner, Status};
use statement::{Name, QueryKind};

/// A continuous query as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueryDef {
    pub namespace: String,
    pub name: String,
    pub kind: QueryKind,
    /// The `SELECT`.
    pub query: String,
    pub options: BTreeMap<String, String>,
    pub owner: Owner,
    pub created_ms: i64,
}

/// Whose rights the query runs with.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Owner {
    pub tenant: String,
    pub user: String,
    pub roles: Vec<String>,
    pub anonymous: bool,
}

impl Owner {
    fn of(p: &Principal) -> Owner {
        Owner {
            tenant: p.tenant.to_string(),
            user: p.user.clone(),
            roles: p.roles.clone(),
            anonymous: p.is_anonymous(),
        }
    }

    fn principal(&self) -> Result<Principal, SqlError> {
        let tenant = TenantName::new(&self.tenant)
            .map_err(|e| SqlError::new(SqlErrorKind::Execution, e.to_string()))?;
        if self.anonymous {
            return Ok(Principal::anonymous(tenant));
        }
        Ok(Principal {
            tenant,
            user: self.user.clone(),
            roles: self.roles.clone(),
            method: Method::Password,
        })
    }
}

/// `(tenant, namespace, name)`.
type Key = (String, String, String);

struct Running {
    def: QueryDef,
    /// The stream it reads (unknown when it could not be planned).
    source: Option<StreamRef>,
    status: Arc<Mutex<Status>>,
    stop: Option<watch::Sender<bool>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// The node's continuous queries.
#[derive(Default)]
pub struct Registry {
    queries: Mutex<BTreeMap<Key, Running>>,
    /// The tables of materialized views, for the catalog.
    pub(crate) views: Arc<view::Views>,
    /// Set when the engine is made: the node's registry.
    pub(crate) metrics: std::sync::OnceLock<Arc<metrics::QueryMetrics>>,
}

struct MetaCheckpoints {
    meta: Arc<dyn MetaStore>,
    tenant: TenantName,
    id: String,
}

impl CheckpointStore for MetaCheckpoints {
    fn save(&self, bytes: &[u8]) -> Result<(), String> {
        self.meta
            .put_checkpoint(&self.tenant, &self.id, bytes)
            .map_err(|e| format!("storing a checkpoint: {e}"))
    }
}

fn err(kind: SqlErrorKind, message: impl Into<String>) -> SqlError {
    SqlError::new(kind, message)
}

fn meta_err(e: fjord_meta::MetaError) -> SqlError {
    err(SqlErrorKind::Execution, e.to_string())
}

/// Where a query is kept in the meta store: `namespace/name`.
fn meta_id(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

impl SqlEngine {
    fn broker(&self) -> &Arc<Broker> {
        &self.broker.0
    }

    fn output_ref(&self, p: &Principal, name: &Name) -> Result<StreamRef, SqlError> {
        let ns = name.namespace.as_deref().unwrap_or(crate::DEFAULT_SCHEMA);
        Ok(StreamRef {
            tenant: p.tenant.clone(),
            namespace: NamespaceName::new(ns)
                .map_err(|e| err(SqlErrorKind::Invalid, format!("namespace {ns}: {e}")))?,
            stream: StreamName::new(&name.name)
                .map_err(|e| err(SqlErrorKind::Invalid, format!("stream {}: {e}", name.name)))?,
        })
    }

    /// The stream late rows go to, if the options keep them (in the
    /// query's namespace).
    fn late_stream(
        &self,
        p: &Principal,
        namespace: &str,
        options: &Options,
    ) -> Result<Option<StreamRef>, SqlError> {
        match &options.late {
            Late::Stream(s) => Ok(Some(self.output_ref(
                p,
                &Name {
                    namespace: Some(namespace.to_string()),
                    name: s.clone(),
                },
            )?)),
            Late::Drop => Ok(None),
        }
    }

    /// `CREATE STREAM | MATERIALIZED VIEW name [WITH (…)] AS SELECT …`.
    pub(crate) async fn create_query(
        &self,
        principal: Arc<Principal>,
        kind: QueryKind,
        name: Name,
        raw_options: BTreeMap<String, String>,
        query: String,
        query_at: (u64, u64),
    ) -> Result<(), SqlError> {
        let options = Options::parse(&raw_options)?;
        let out = self.output_ref(&principal, &name)?;
        let broker = self.broker().clone();
        if !broker.authorize(
            &principal,
            &out.tenant,
            Action::Admin,
            Resource::Namespace(out.namespace.as_str()),
        ) {
            return Err(err(
                SqlErrorKind::InsufficientPrivilege,
                format!(
                    "creating a continuous query needs the admin right on namespace {}",
                    out.namespace
                ),
            ));
        }
        let key: Key = (
            out.tenant.to_string(),
            out.namespace.to_string(),
            out.stream.to_string(),
        );
        if self.queries.queries.lock().contains_key(&key) || broker.stream_exists(&out) {
            return Err(err(
                SqlErrorKind::DuplicateObject,
                format!("stream {}.{} already exists", out.namespace, out.stream),
            ));
        }
        let ctx = self.continuous_context(principal.clone());
        let pipeline = plan::plan(&ctx, &self.broker, &query)
            .await
            .map_err(|e| e.shifted(query_at))?;
        if pipeline.source == out || pipeline.join.as_ref().is_some_and(|j| j.other == out) {
            return Err(err(
                SqlErrorKind::Invalid,
                "a continuous query cannot write to the stream it reads",
            ));
        }
        if pipeline.join.is_some() && !matches!(options.late, Late::Drop) {
            return Err(err(
                SqlErrorKind::NotSupported,
                "late_rows: a join of two streams has no source record to keep for a late joined row; late rows are dropped and counted",
            ));
        }
        let side = self.late_stream(&principal, out.namespace.as_str(), &options)?;
        // A view keeps the newest row per key; its stream need not keep
        // more.
        let policy = if kind == QueryKind::MaterializedView && !pipeline.view_key().is_empty() {
            Policy {
                compaction: Some(fjord_core::Compaction::LatestPerKey),
                ..Policy::default()
            }
        } else {
            Policy::default()
        };
        broker
            .create_stream(&out, options.partitions, policy)
            .map_err(|e| err(SqlErrorKind::Invalid, e.to_string()))?;
        let created = async {
            if let Some(side) = &side {
                if !broker.stream_exists(side) {
                    broker
                        .create_stream(side, None, Policy::default())
                        .map_err(|e| err(SqlErrorKind::Invalid, e.to_string()))?;
                }
            }
            let at = match options.start {
                Start::Latest => Position::Latest,
                Start::Earliest => Position::Earliest,
            };
            let first = self.first_checkpoint(&pipeline, at).await?;
            let def = QueryDef {
                namespace: out.namespace.to_string(),
                name: out.stream.to_string(),
                kind,
                query: query.clone(),
                options: raw_options.clone(),
                owner: Owner::of(&principal),
                created_ms: runner::now_ms(),
            };
            let id = meta_id(&def.namespace, &def.name);
            let bytes = serde_json::to_vec(&def)
                .map_err(|e| err(SqlErrorKind::Execution, e.to_string()))?;
            broker
                .meta()
                .put_query(&out.tenant, &id, &bytes)
                .map_err(meta_err)?;
            let cp = checkpoint::encode(&first)
                .map_err(|e| err(SqlErrorKind::Execution, e.to_string()))?;
            broker
                .meta()
                .put_checkpoint(&out.tenant, &id, &cp)
                .map_err(meta_err)?;
            Ok::<_, SqlError>(def)
        }
        .await;
        let def = match created {
            Ok(def) => def,
            Err(e) => {
                let _ = broker.delete_stream(&out).await;
                let _ = broker.meta().delete_query(
                    &out.tenant,
                    &meta_id(out.namespace.as_str(), out.stream.as_str()),
                );
                return Err(e);
            }
        };
        self.launch(def, Some(pipeline)).await;
        Ok(())
    }

    /// Starts a stored query (planning it again unless `pipeline` is
    /// given); a query that cannot start is listed as failed.
    async fn launch(&self, def: QueryDef, pipeline: Option<plan::Pipeline>) {
        let key: Key = (
            def.owner.tenant.clone(),
            def.namespace.clone(),
            def.name.clone(),
        );
        let status = Arc::new(Mutex::new(Status {
            state: "starting",
            ..Status::default()
        }));
        let started = self.prepare(&def, pipeline).await;
        let mut running = Running {
            def,
            source: None,
            status: status.clone(),
            stop: None,
            task: None,
        };
        match started {
            Ok((runner_parts, restored)) => {
                let (stop_tx, stop_rx) = watch::channel(false);
                running.source = Some(runner_parts.pipeline.source.clone());
                if running.def.kind == QueryKind::MaterializedView {
                    self.queries.views.insert(
                        runner_parts.output.clone(),
                        view::ViewInfo {
                            schema: runner_parts.pipeline.output_schema.clone(),
                            key: runner_parts.pipeline.view_key(),
                        },
                    );
                }
                let runner = Runner {
                    status: status.clone(),
                    ..runner_parts
                };
                running.task = Some(tokio::spawn(runner.run(restored, stop_rx)));
                running.stop = Some(stop_tx);
            }
            Err(e) => {
                tracing::error!(query = %key.2, error = %e, "continuous query cannot start");
                let mut s = status.lock();
                s.state = "failed";
                s.error = Some(e.message);
            }
        }
        self.queries.queries.lock().insert(key, running);
    }

    async fn prepare(
        &self,
        def: &QueryDef,
        pipeline: Option<plan::Pipeline>,
    ) -> Result<(Runner, Checkpoint), SqlError> {
        let principal = Arc::new(def.owner.principal()?);
        let pipeline = match pipeline {
            Some(p) => p,
            None => {
                let ctx = self.continuous_context(principal.clone());
                plan::plan(&ctx, &self.broker, &def.query).await?
            }
        };
        let options = Options::parse(&def.options)?;
        let broker = self.broker().clone();
        let name = Name {
            namespace: Some(def.namespace.clone()),
            name: def.name.clone(),
        };
        let output = self.output_ref(&principal, &name)?;
        let side = self.late_stream(&principal, &def.namespace, &options)?;
        let id = meta_id(&def.namespace, &def.name);
        let bytes = broker
            .meta()
            .get_checkpoint(&principal.tenant, &id)
            .map_err(meta_err)?
            .ok_or_else(|| err(SqlErrorKind::Execution, "the query has no checkpoint"))?;
        let mut restored =
            checkpoint::decode(&bytes).map_err(|e| err(SqlErrorKind::Execution, e.to_string()))?;
        // Partitions added to the streams since: read from their start.
        let h = &mut restored.header;
        let first = h.joined.unwrap_or(h.offsets.len()).min(h.offsets.len());
        let mut rest = h.offsets.split_off(first);
        let mut rest_ts = h.max_ts.split_off(first.min(h.max_ts.len()));
        let mut rest_retain = h.retain.split_off(first.min(h.retain.len()));
        let added = self
            .positions(&pipeline.source, first, Position::Earliest)
            .await?;
        h.max_ts.resize(h.offsets.len(), None);
        h.max_ts.extend(added.iter().map(|_| None));
        h.retain.resize(h.offsets.len(), i64::MAX);
        h.retain.extend(added.iter().copied());
        h.offsets.extend(added);
        if let Some(j) = &pipeline.join {
            h.joined = Some(h.offsets.len());
            let added = self
                .positions(&j.other, rest.len(), Position::Earliest)
                .await?;
            rest_ts.resize(rest.len(), None);
            rest_ts.extend(added.iter().map(|_| None));
            rest_retain.resize(rest.len(), i64::MAX);
            rest_retain.extend(added.iter().copied());
            rest.extend(added);
            h.offsets.extend(rest);
            h.max_ts.extend(rest_ts);
            h.retain.extend(rest_retain);
        } else {
            h.retain.clear();
        }
        let task = self.continuous_context(principal).task_ctx();
        Ok((
            Runner {
                broker: broker.clone(),
                pipeline,
                task,
                options,
                output,
                side,
                store: Some(Arc::new(MetaCheckpoints {
                    meta: broker.meta().clone(),
                    tenant: TenantName::new(&def.owner.tenant)
                        .map_err(|e| err(SqlErrorKind::Execution, e.to_string()))?,
                    id,
                })),
                channel: None,
                status: Arc::new(Mutex::new(Status::default())),
                view: def.kind == QueryKind::MaterializedView,
                metrics: self.queries.metrics.get().map(|m| {
                    (
                        m.clone(),
                        def.owner.tenant.clone(),
                        format!("{}.{}", def.namespace, def.name),
                    )
                }),
            },
            restored,
        ))
    }

    /// Where a new query starts: every partition of its streams at `at`.
    async fn first_checkpoint(
        &self,
        pipeline: &plan::Pipeline,
        at: Position,
    ) -> Result<Checkpoint, SqlError> {
        let mut offsets = self.positions(&pipeline.source, 0, at).await?;
        let mut joined = None;
        if let Some(j) = &pipeline.join {
            joined = Some(offsets.len());
            offsets.extend(self.positions(&j.other, 0, at).await?);
        }
        Ok(Checkpoint {
            header: Header {
                max_ts: vec![None; offsets.len()],
                offsets,
                joined,
                ..Header::default()
            },
            windows: Vec::new(),
        })
    }

    /// Partitions `from..` of `stream` at `at`.
    async fn positions(
        &self,
        stream: &StreamRef,
        from: usize,
        at: Position,
    ) -> Result<Vec<i64>, SqlError> {
        let broker = self.broker();
        let parts = broker
            .partition_count(stream)
            .map_err(|e| err(SqlErrorKind::Execution, e.to_string()))?;
        let mut offsets = Vec::with_capacity(parts as usize);
        for p in from as u32..parts {
            offsets.push(
                broker
                    .resolve(stream, p, at)
                    .await
                    .map_err(|e| err(SqlErrorKind::Execution, e.to_string()))?,
            );
        }
        Ok(offsets)
    }

    /// `SELECT … EMIT CHANGES`: the query runs from now on, its rows
    /// streamed as they come, until the stream is dropped (the client
    /// cancelled or went away). Nothing is stored.
    pub(crate) async fn push_query(
        &self,
        principal: Arc<Principal>,
        query: &str,
    ) -> Result<datafusion::execution::SendableRecordBatchStream, SqlError> {
        let ctx = self.continuous_context(principal.clone());
        let pipeline = plan::plan(&ctx, &self.broker, query).await?;
        let broker = self.broker().clone();
        let first = self.first_checkpoint(&pipeline, Position::Latest).await?;
        let schema = pipeline.output_schema.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let runner = Runner {
            broker: broker.clone(),
            output: pipeline.source.clone(),
            pipeline,
            task: ctx.task_ctx(),
            options: Options::default(),
            side: None,
            store: None,
            channel: Some(tx),
            status: Arc::new(Mutex::new(Status::default())),
            view: false,
            metrics: None,
        };
        // The runner stops when this sender goes, with the stream.
        let (stop_tx, stop_rx) = watch::channel(false);
        tokio::spawn(runner.run(first, stop_rx));
        let rows = futures_util::stream::unfold((rx, stop_tx), |(mut rx, stop)| async move {
            let b = rx.recv().await?;
            Some((Ok(b), (rx, stop)))
        });
        Ok(Box::pin(
            datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(schema, rows),
        ))
    }

    /// Starts every stored query (at node start).
    pub async fn start_queries(&self) {
        let broker = self.broker().clone();
        let Ok(tenants) = broker.list_tenants() else {
            return;
        };
        for t in tenants {
            let Ok(stored) = broker.meta().list_queries(&t.name) else {
                continue;
            };
            for (id, bytes) in stored {
                match serde_json::from_slice::<QueryDef>(&bytes) {
                    Ok(def) => self.launch(def, None).await,
                    Err(e) => {
                        tracing::error!(tenant = %t.name, query = %id, error = %e, "stored continuous query unreadable")
                    }
                }
            }
        }
    }

    /// Stops every query, each after a last checkpoint (at node stop).
    pub async fn stop_queries(&self) {
        let running: Vec<Running> = {
            let mut q = self.queries.queries.lock();
            std::mem::take(&mut *q).into_values().collect()
        };
        for r in running {
            stop(r).await;
        }
    }

    /// `DROP STREAM | MATERIALIZED VIEW [IF EXISTS] name`: stops the query
    /// and deletes its stream.
    pub(crate) async fn drop_query(
        &self,
        principal: Arc<Principal>,
        kind: QueryKind,
        name: Name,
        if_exists: bool,
    ) -> Result<(), SqlError> {
        let out = self.output_ref(&principal, &name)?;
        let key: Key = (
            out.tenant.to_string(),
            out.namespace.to_string(),
            out.stream.to_string(),
        );
        let broker = self.broker().clone();
        let found_kind = self.queries.queries.lock().get(&key).map(|r| r.def.kind);
        match found_kind {
            None if if_exists => return Ok(()),
            None if broker.stream_exists(&out) => {
                return Err(err(
                    SqlErrorKind::WrongObjectType,
                    format!(
                        "{}.{} is a stream clients write to, not a continuous query's; streams are deleted through the admin API",
                        out.namespace, out.stream
                    ),
                ))
            }
            None => {
                return Err(err(
                    SqlErrorKind::UndefinedObject,
                    format!("no continuous query {}.{}", out.namespace, out.stream),
                ))
            }
            Some(k) if k != kind => {
                return Err(err(
                    SqlErrorKind::WrongObjectType,
                    format!("{}.{} is a {}", out.namespace, out.stream, k.as_str()),
                ))
            }
            Some(_) => {}
        }
        if !broker.authorize(
            &principal,
            &out.tenant,
            Action::Admin,
            Resource::Stream {
                namespace: out.namespace.as_str(),
                stream: out.stream.as_str(),
                topic: None,
            },
        ) {
            return Err(err(
                SqlErrorKind::InsufficientPrivilege,
                format!(
                    "dropping {}.{} needs the admin right on it",
                    out.namespace, out.stream
                ),
            ));
        }
        let Some(running) = self.queries.queries.lock().remove(&key) else {
            return Ok(());
        };
        stop(running).await;
        self.queries.views.remove(&out);
        if let Some(m) = self.queries.metrics.get() {
            m.remove(
                out.tenant.as_str(),
                &format!("{}.{}", out.namespace, out.stream),
            );
        }
        broker
            .meta()
            .delete_query(
                &out.tenant,
                &meta_id(out.namespace.as_str(), out.stream.as_str()),
            )
            .map_err(meta_err)?;
        if broker.stream_exists(&out) {
            broker
                .delete_stream(&out)
                .await
                .map_err(|e| err(SqlErrorKind::Execution, e.to_string()))?;
        }
        Ok(())
    }

    /// `SHOW QUERIES`: the continuous queries of the principal's tenant
    /// (every tenant's for node administrators).
    pub(crate) async fn show_queries(
        &self,
        principal: &Principal,
    ) -> Result<RecordBatch, SqlError> {
        let admin = self.broker().is_node_admin(principal);
        let rows: Vec<(QueryDef, Option<StreamRef>, Status)> = self
            .queries
            .queries
            .lock()
            .values()
            .filter(|r| admin || r.def.owner.tenant == principal.tenant.as_str())
            .map(|r| (r.def.clone(), r.source.clone(), r.status.lock().clone()))
            .collect();
        let mut lags = Vec::with_capacity(rows.len());
        for (_, source, status) in &rows {
            lags.push(match source {
                Some(_) => self.lag(status).await,
                None => None,
            });
        }
        let rows: Vec<(QueryDef, Status)> = rows.into_iter().map(|(d, _, s)| (d, s)).collect();
        let schema = show_queries_schema();
        let col_str = |f: &dyn Fn(&QueryDef, &Status) -> String| -> ArrayRef {
            Arc::new(StringArray::from(
                rows.iter().map(|(d, s)| f(d, s)).collect::<Vec<_>>(),
            ))
        };
        let col_u64 = |f: &dyn Fn(&Status) -> u64| -> ArrayRef {
            Arc::new(UInt64Array::from(
                rows.iter().map(|(_, s)| f(s)).collect::<Vec<_>>(),
            ))
        };
        let columns: Vec<ArrayRef> = vec![
            col_str(&|d, _| d.owner.tenant.clone()),
            col_str(&|d, _| format!("{}.{}", d.namespace, d.name)),
            col_str(&|d, _| d.kind.as_str().to_string()),
            col_str(&|_, s| s.state.to_string()),
            Arc::new(StringArray::from(
                rows.iter()
                    .map(|(_, s)| s.error.clone())
                    .collect::<Vec<_>>(),
            )),
            col_str(&|d, _| d.query.clone()),
            col_u64(&|s| s.counters.rows_in),
            col_u64(&|s| s.counters.rows_out),
            col_u64(&|s| s.counters.late_rows),
            col_u64(&|s| s.counters.failed_rows),
            Arc::new(Int64Array::from(lags)),
            Arc::new(
                TimestampMillisecondArray::from(
                    rows.iter().map(|(_, s)| s.watermark).collect::<Vec<_>>(),
                )
                .with_timezone("UTC"),
            ),
            col_u64(&|s| s.open_windows as u64),
            Arc::new(
                TimestampMillisecondArray::from(
                    rows.iter().map(|(d, _)| d.created_ms).collect::<Vec<_>>(),
                )
                .with_timezone("UTC"),
            ),
        ];
        RecordBatch::try_new(schema, columns)
            .map_err(|e| err(SqlErrorKind::Execution, e.to_string()))
    }

    /// Records of the sources not yet read by the query.
    async fn lag(&self, status: &Status) -> Option<i64> {
        let mut lag = 0;
        for (stream, p, at) in &status.positions {
            let end = self
                .broker()
                .resolve(stream, *p, Position::Latest)
                .await
                .ok()?;
            lag += (end - at).max(0);
        }
        Some(lag)
    }
}

/// The columns of `SHOW QUERIES`.
pub fn show_queries_schema() -> SchemaRef {
    let ts = DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("tenant", DataType::Utf8, false),
        Field::new("name", DataType::Utf8, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("state", DataType::Utf8, false),
        Field::new("error", DataType::Utf8, true),
        Field::new("query", DataType::Utf8, false),
        Field::new("rows_in", DataType::UInt64, false),
        Field::new("rows_out", DataType::UInt64, false),
        Field::new("late_rows", DataType::UInt64, false),
        Field::new("failed_rows", DataType::UInt64, false),
        Field::new("lag", DataType::Int64, true),
        Field::new("watermark", ts.clone(), true),
        Field::new("open_windows", DataType::UInt64, false),
        Field::new("created", ts, false),
    ]))
}

async fn stop(r: Running) {
    if let Some(stop) = r.stop {
        let _ = stop.send(true);
    }
    if let Some(mut task) = r.task {
        if tokio::time::timeout(Duration::from_secs(10), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }
}
