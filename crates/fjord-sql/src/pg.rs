//! The PostgreSQL wire protocol (pgwire): `psql`, `psycopg`, JDBC and
//! Grafana's PostgreSQL data source run SQL on Fjord's streams.
//!
//! * The database name is the tenant (a client that names none reaches the
//!   one its user name names, as PostgreSQL does).
//! * A user of the tenant proves itself with its Fjord password by
//!   SCRAM-SHA-256 (as PostgreSQL does by default; the password never
//!   crosses the wire), or in the clear for a user without SCRAM keys
//!   (which is why TLS should be on); a name that is no user of
//!   a tenant that admits anonymous clients (`public` in the embedded
//!   default) connects anonymously, as anonymous MQTT does.
//! * Simple and extended query protocols; `$n` parameters are typed from
//!   the query (DataFusion infers them) and bound from text or binary.
//! * `SELECT … EMIT CHANGES` streams rows as they come (each batch
//!   flushed) until the client cancels (a CancelRequest, as `psql`'s
//!   Ctrl-C and every driver's `cancel()` send); any query can be
//!   cancelled that way (SQLSTATE 57014).
//! * Session statements clients send on their own (`SET`, `BEGIN`,
//!   `COMMIT`, `SHOW transaction_isolation`, `DISCARD ALL`) are answered;
//!   there are no transactions to speak of (every query reads a snapshot).

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{ParamValues, ScalarValue};
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use fjord_auth::{scram, Principal};
use fjord_broker::Broker;
use fjord_core::TenantName;
use futures_util::sink::{Sink, SinkExt};
use futures_util::{stream, StreamExt};
use pgwire::api::auth::{
    finish_authentication, protocol_negotiation, save_startup_parameters_to_metadata,
    DefaultServerParameterProvider, StartupHandler,
};
use pgwire::api::cancel::{CancelHandler, DefaultCancelHandler};
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{
    DescribePortalResponse, DescribeStatementResponse, FieldInfo, QueryResponse, Response, Tag,
};
use pgwire::api::stmt::{QueryParser, StoredStatement};
use pgwire::api::store::PortalStore;
use pgwire::api::{
    ClientInfo, ClientPortalStore, ConnectionGuard, ConnectionHandle, ConnectionManager,
    PgWireConnectionState, PgWireServerHandlers, PidSecretKeyGenerator,
    RandomPidSecretKeyGenerator, Type,
};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::data::DataRow;
use pgwire::messages::startup::Authentication;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};

use crate::continuous::statement::Statement;
use crate::{Outcome, SqlEngine, SqlError};

/// One connection's handlers.
pub struct PgHandlers {
    engine: Arc<SqlEngine>,
    broker: Arc<Broker>,
    /// Connections by (pid, secret), for cancel requests.
    connections: Arc<ConnectionManager>,
}

impl PgHandlers {
    pub fn new(engine: Arc<SqlEngine>, broker: Arc<Broker>) -> Arc<Self> {
        Arc::new(PgHandlers {
            engine,
            broker,
            connections: Arc::new(ConnectionManager::new()),
        })
    }
}

impl PgWireServerHandlers for PgHandlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        Arc::new(Queries {
            parser: Arc::new(Parser),
        })
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        Arc::new(Queries {
            parser: Arc::new(Parser),
        })
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        Arc::new(Login {
            broker: self.broker.clone(),
            engine: self.engine.clone(),
            connections: self.connections.clone(),
            pending: Default::default(),
        })
    }

    fn cancel_handler(&self) -> Arc<impl CancelHandler> {
        Arc::new(DefaultCancelHandler::new(self.connections.clone()))
    }
}

/// What a logged-in connection holds: who, and its SQL session (one per
/// connection, so `SET`s of DataFusion settings last).
struct PgSession {
    ctx: SessionContext,
    principal: Arc<Principal>,
    engine: Arc<SqlEngine>,
    /// Fired by a cancel request for this connection.
    cancel: Arc<ConnectionHandle>,
    /// Unregisters the connection when the session goes.
    _registered: ConnectionGuard,
}

fn session<C: ClientInfo>(client: &C) -> PgWireResult<Arc<PgSession>> {
    client
        .session_extensions()
        .get::<PgSession>()
        .ok_or_else(|| user_error("28000", "not logged in"))
}

fn user_error(code: &str, message: impl Into<String>) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".to_owned(),
        code.to_owned(),
        message.into(),
    )))
}

fn sql_error(e: SqlError, sql: &str) -> PgWireError {
    let mut info = ErrorInfo::new(
        "ERROR".to_owned(),
        e.sqlstate().to_owned(),
        e.message.clone(),
    );
    info.position = e.position_in(sql).map(|p| p.to_string());
    PgWireError::UserError(Box::new(info))
}

// ---- login --------------------------------------------------------------

struct Login {
    broker: Arc<Broker>,
    engine: Arc<SqlEngine>,
    connections: Arc<ConnectionManager>,
    /// One connection's login under way.
    pending: parking_lot::Mutex<Pending>,
}

/// How the connection's user proves itself.
#[derive(Default)]
enum Pending {
    #[default]
    Nothing,
    /// Its password, sent in the clear (a user without SCRAM keys).
    Cleartext,
    /// SCRAM-SHA-256: the user's verifier (a decoy for an unknown user),
    /// then the exchange once the client's first message came.
    Scram {
        who: Option<Box<Principal>>,
        verifier: Option<Box<scram::Verifier>>,
        exchange: Option<Box<scram::Exchange>>,
    },
}

impl Login {
    /// The tenant (database) and user the client named.
    fn names<C: ClientInfo>(client: &C) -> PgWireResult<(TenantName, String)> {
        let meta = client.metadata();
        let user = meta.get("user").cloned().unwrap_or_default();
        let database = meta
            .get("database")
            .filter(|d| !d.is_empty())
            .cloned()
            .unwrap_or_else(|| user.clone());
        let tenant = TenantName::new(database.as_str())
            .map_err(|_| user_error("3D000", format!("database \"{database}\" does not exist")))?;
        Ok((tenant, user))
    }

    async fn admit<C>(&self, client: &mut C, principal: Principal) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let principal = Arc::new(principal);
        let ctx = self.engine.context(principal.clone());
        // What psql's \d, JDBC's metadata and Grafana's editor read.
        if let Err(e) = datafusion_pg_catalog::setup_pg_catalog(
            &ctx,
            principal.tenant.as_str(),
            datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider,
        ) {
            tracing::warn!(error = %e, "pg_catalog unavailable for this session");
        }
        let (pid, secret) = RandomPidSecretKeyGenerator::default().generate(client);
        let (cancel, registered) = self.connections.register(pid, secret.clone());
        client.session_extensions().insert(PgSession {
            ctx,
            principal,
            engine: self.engine.clone(),
            cancel,
            _registered: registered,
        });
        client.set_pid_and_secret_key(pid, secret);
        finish_authentication(client, &DefaultServerParameterProvider::default()).await
    }
}

#[async_trait]
impl StartupHandler for Login {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match message {
            PgWireFrontendMessage::Startup(ref startup) => {
                protocol_negotiation(client, startup).await?;
                save_startup_parameters_to_metadata(client, startup);
                let (tenant, user) = Self::names(client)?;
                if self.broker.get_tenant(&tenant).is_err() {
                    return Err(user_error(
                        "3D000",
                        format!("database \"{tenant}\" does not exist"),
                    ));
                }
                let is_user = self
                    .broker
                    .meta()
                    .get_user(&tenant, &user)
                    .is_ok_and(|u| u.is_some());
                if !is_user {
                    if let Ok(p) = self.broker.anonymous(&tenant) {
                        return self.admit(client, p).await;
                    }
                }
                // SCRAM-SHA-256 (PostgreSQL's default) for users with
                // SCRAM keys, and for unknown names too, so a refusal
                // says nothing of who exists; the clear password only for
                // users without the keys.
                let (who, verifier) = self
                    .broker
                    .scram_lookup(scram::Mechanism::Sha256, &format!("{tenant}:{user}"))
                    .map_err(|e| user_error("XX000", e.to_string()))?;
                let request = if who.is_none() && is_user {
                    *self.pending.lock() = Pending::Cleartext;
                    Authentication::CleartextPassword
                } else {
                    *self.pending.lock() = Pending::Scram {
                        who: who.map(Box::new),
                        verifier: Some(Box::new(verifier)),
                        exchange: None,
                    };
                    Authentication::SASL(vec![scram::Mechanism::Sha256.name().to_string()])
                };
                client.set_state(PgWireConnectionState::AuthenticationInProgress);
                client
                    .send(PgWireBackendMessage::Authentication(request))
                    .await?;
                Ok(())
            }
            PgWireFrontendMessage::PasswordMessageFamily(pwd) => {
                let (tenant, user) = Self::names(client)?;
                let pending = std::mem::take(&mut *self.pending.lock());
                let checked = match pending {
                    Pending::Cleartext => {
                        let password = pwd.into_password()?.password;
                        let login = format!("{tenant}:{user}");
                        let broker = self.broker.clone();
                        tokio::task::spawn_blocking(move || broker.authenticate(&login, &password))
                            .await
                            .map_err(|e| user_error("XX000", e.to_string()))?
                            .map_err(|e| e.to_string())
                    }
                    Pending::Scram {
                        who,
                        verifier: Some(verifier),
                        exchange: None,
                    } => {
                        let first = pwd.into_sasl_initial_response()?;
                        let started = match scram::Mechanism::from_name(&first.auth_method) {
                            Some(m @ scram::Mechanism::Sha256) => {
                                scram::parse_client_first(first.data.as_deref().unwrap_or_default())
                                    .map(|f| scram::Exchange::start(m, f, *verifier))
                                    .map_err(|e| e.to_string())
                            }
                            _ => Err(format!(
                                "SASL mechanism {} is not offered",
                                first.auth_method
                            )),
                        };
                        match started {
                            Ok((exchange, server_first)) => {
                                *self.pending.lock() = Pending::Scram {
                                    who,
                                    verifier: None,
                                    exchange: Some(Box::new(exchange)),
                                };
                                client
                                    .send(PgWireBackendMessage::Authentication(
                                        Authentication::SASLContinue(server_first.into()),
                                    ))
                                    .await?;
                                return Ok(());
                            }
                            Err(e) => Err(e),
                        }
                    }
                    Pending::Scram {
                        who,
                        exchange: Some(exchange),
                        ..
                    } => {
                        let last = pwd.into_sasl_response()?;
                        match (exchange.finish(&last.data), who) {
                            (Ok(server_final), Some(p)) => {
                                client
                                    .send(PgWireBackendMessage::Authentication(
                                        Authentication::SASLFinal(server_final.into()),
                                    ))
                                    .await?;
                                Ok(*p)
                            }
                            (Ok(_), None) | (Err(scram::ScramError::BadProof), _) => {
                                Err("unknown user or wrong password".to_string())
                            }
                            (Err(e), _) => Err(e.to_string()),
                        }
                    }
                    _ => Err("a password message out of turn".to_string()),
                };
                match checked {
                    Ok(p) => self.admit(client, p).await,
                    Err(e) => {
                        self.broker
                            .login_failed(client.socket_addr().ip(), "postgres");
                        tracing::warn!(peer = %client.socket_addr(), error = %e, "postgres login refused");
                        Err(user_error(
                            "28P01",
                            format!("password authentication failed for user \"{user}\""),
                        ))
                    }
                }
            }
            _ => Ok(()),
        }
    }
}

// ---- queries --------------------------------------------------------------

/// A statement as the extended protocol keeps it.
#[derive(Debug, Clone)]
pub struct PgStatement {
    sql: String,
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Kind {
    /// Answered by Fjord itself: the command tag, and for `SHOW` a value.
    Session(&'static str, Option<(String, String)>),
    Query(Box<LogicalPlan>),
    /// A statement of continuous queries (`CREATE STREAM … AS`, `DROP`,
    /// `SHOW QUERIES`), run by the engine.
    Continuous(Statement),
    /// `SELECT … EMIT CHANGES`, with the columns its rows will have.
    Push(datafusion::arrow::datatypes::SchemaRef),
    Empty,
}

/// Classifies session statements clients send unasked; `None` for SQL.
fn session_statement(sql: &str) -> Option<Kind> {
    let words: Vec<String> = sql
        .trim()
        .trim_end_matches(';')
        .split_whitespace()
        .map(|w| w.to_ascii_lowercase())
        .collect();
    let first = words.first()?.as_str();
    let tag = match first {
        "set" | "reset" => {
            // DataFusion's own settings (`SET datafusion.…`) are its.
            if words.get(1).is_some_and(|w| w.starts_with("datafusion.")) {
                return None;
            }
            if first == "set" {
                "SET"
            } else {
                "RESET"
            }
        }
        "begin" | "start" => "BEGIN",
        "commit" | "end" => "COMMIT",
        "rollback" | "abort" => "ROLLBACK",
        "discard" => "DISCARD ALL",
        "deallocate" => "DEALLOCATE",
        "show" => {
            let name = words[1..].join(" ");
            let value = crate::settings::get(&name)?;
            let column = words[1..].join("_");
            return Some(Kind::Session("SHOW", Some((column, value.to_string()))));
        }
        _ => return None,
    };
    Some(Kind::Session(tag, None))
}

struct Parser;

/// Rewrites what PostgreSQL clients send (`::regclass`, `OPERATOR(…)`,
/// `pg_catalog.` functions) into what DataFusion plans.
static PG_DIALECT: std::sync::LazyLock<datafusion_pg_catalog::sql::PostgresCompatibilityParser> =
    std::sync::LazyLock::new(datafusion_pg_catalog::sql::PostgresCompatibilityParser::new);

impl Parser {
    async fn logical_plan(ctx: &SessionContext, sql: &str) -> Result<LogicalPlan, SqlError> {
        if let Ok(mut statements) = PG_DIALECT.parse(sql) {
            if statements.len() == 1 {
                let stmt =
                    datafusion::sql::parser::Statement::Statement(Box::new(statements.remove(0)));
                if let Ok(plan) = ctx.state().statement_to_plan(stmt).await {
                    return Ok(plan);
                }
            }
        }
        // DataFusion's own parser and planner, which say where the text is
        // wrong.
        Ok(ctx.state().create_logical_plan(sql).await?)
    }

    async fn plan(ctx: &SessionContext, sql: &str) -> Result<Kind, SqlError> {
        if sql.trim().trim_matches(';').trim().is_empty() {
            return Ok(Kind::Empty);
        }
        if let Some(k) = session_statement(sql) {
            return Ok(k);
        }
        let continuous = crate::continuous::statement::parse(sql)?;
        if let Statement::Push { query } = &continuous {
            let plan = ctx.state().create_logical_plan(query).await?;
            return Ok(Kind::Push(Arc::new(plan.schema().as_arrow().clone())));
        }
        if continuous != Statement::Other {
            return Ok(Kind::Continuous(continuous));
        }
        let plan = Self::logical_plan(ctx, sql).await?;
        crate::query_options().verify_plan(&plan)?;
        Ok(Kind::Query(Box::new(plan)))
    }
}

#[async_trait]
impl QueryParser for Parser {
    type Statement = PgStatement;

    async fn parse_sql<C>(
        &self,
        client: &C,
        sql: &str,
        _types: &[Option<Type>],
    ) -> PgWireResult<Option<PgStatement>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let s = session(client)?;
        let kind = Self::plan(&s.ctx, sql)
            .await
            .map_err(|e| sql_error(e, sql))?;
        Ok(Some(PgStatement {
            sql: sql.to_string(),
            kind,
        }))
    }

    fn get_parameter_types(&self, stmt: &PgStatement) -> PgWireResult<Vec<Type>> {
        parameter_types(stmt)
    }

    fn get_result_schema(
        &self,
        stmt: &PgStatement,
        format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        Queries::fields(stmt, format.unwrap_or(&Format::UnifiedText))
    }
}

/// The types of `$1…$n`, as DataFusion inferred them.
fn parameter_types(stmt: &PgStatement) -> PgWireResult<Vec<Type>> {
    let Kind::Query(plan) = &stmt.kind else {
        return Ok(Vec::new());
    };
    let types = plan
        .get_parameter_types()
        .map_err(|e| sql_error(e.into(), &stmt.sql))?;
    let mut ordered: Vec<(usize, Option<DataType>)> = types
        .into_iter()
        .filter_map(|(name, t)| {
            let n: usize = name.trim_start_matches('$').parse().ok()?;
            Some((n, t))
        })
        .collect();
    ordered.sort_by_key(|(n, _)| *n);
    Ok(ordered
        .into_iter()
        .map(|(_, t)| {
            t.and_then(|t| arrow_pg::datatypes::into_pg_type(&t).ok())
                .unwrap_or(Type::UNKNOWN)
        })
        .collect())
}

/// A parameter of `portal` as a DataFusion value of the type `want`.
fn parameter(portal: &Portal<PgStatement>, i: usize, pg: &Type) -> PgWireResult<ScalarValue> {
    Ok(match *pg {
        Type::BOOL => ScalarValue::Boolean(portal.parameter::<bool>(i, pg)?),
        Type::INT2 => ScalarValue::Int16(portal.parameter::<i16>(i, pg)?),
        Type::INT4 => ScalarValue::Int32(portal.parameter::<i32>(i, pg)?),
        Type::INT8 => ScalarValue::Int64(portal.parameter::<i64>(i, pg)?),
        Type::FLOAT4 => ScalarValue::Float32(portal.parameter::<f32>(i, pg)?),
        Type::FLOAT8 => ScalarValue::Float64(portal.parameter::<f64>(i, pg)?),
        Type::TIMESTAMP => ScalarValue::TimestampMicrosecond(
            portal
                .parameter::<chrono::NaiveDateTime>(i, pg)?
                .map(|t| t.and_utc().timestamp_micros()),
            None,
        ),
        Type::TIMESTAMPTZ => ScalarValue::TimestampMicrosecond(
            portal
                .parameter::<chrono::DateTime<chrono::FixedOffset>>(i, pg)?
                .map(|t| t.timestamp_micros()),
            Some("UTC".into()),
        ),
        Type::BYTEA => ScalarValue::Binary(portal.parameter::<Vec<u8>>(i, pg)?),
        // Text, and types the query did not pin: the client's text.
        _ => ScalarValue::Utf8(portal.parameter::<String>(i, &Type::TEXT)?),
    })
}

struct Queries {
    parser: Arc<Parser>,
}

impl Queries {
    async fn run(
        &self,
        session: &PgSession,
        stmt: &PgStatement,
        params: Option<ParamValues>,
        format: &Format,
    ) -> PgWireResult<Response> {
        match &stmt.kind {
            Kind::Empty => Ok(Response::EmptyQuery),
            Kind::Session(tag, None) => Ok(match *tag {
                "BEGIN" => Response::TransactionStart(Tag::new(tag)),
                "COMMIT" | "ROLLBACK" => Response::TransactionEnd(Tag::new(tag)),
                _ => Response::Execution(Tag::new(tag)),
            }),
            Kind::Session(_, Some((_, value))) => {
                let fields = Arc::new(Self::fields(stmt, format)?);
                let mut enc = pgwire::api::results::DataRowEncoder::new(fields.clone());
                enc.encode_field(&Some(value.as_str()))?;
                let row = enc.take_row();
                Ok(Response::Query(QueryResponse::new(
                    fields,
                    stream::iter(vec![Ok(row)]),
                )))
            }
            Kind::Continuous(_) => {
                let outcome = session
                    .engine
                    .execute(session.principal.clone(), &stmt.sql)
                    .await
                    .map_err(|e| sql_error(e, &stmt.sql))?;
                match outcome {
                    Outcome::Done(tag) => Ok(Response::Execution(Tag::new(tag))),
                    Outcome::Rows(batches) => {
                        let cancel = session.cancel.start_query().await;
                        Ok(rows_response(batches, format, &stmt.sql, cancel)?)
                    }
                    // Streamed by `push` before `run` is reached.
                    Outcome::Push(_) => Err(user_error("0A000", "a push query runs alone")),
                }
            }
            Kind::Push(_) => Err(user_error("0A000", "a push query runs alone")),
            Kind::Query(plan) => {
                let ctx = &session.ctx;
                let plan = match params {
                    Some(p) => (**plan)
                        .clone()
                        .with_param_values(p)
                        .map_err(|e| sql_error(e.into(), &stmt.sql))?,
                    None => (**plan).clone(),
                };
                let df = ctx
                    .execute_logical_plan(plan)
                    .await
                    .map_err(|e| sql_error(e.into(), &stmt.sql))?;
                let batches = df
                    .execute_stream()
                    .await
                    .map_err(|e| sql_error(e.into(), &stmt.sql))?;
                let cancel = session.cancel.start_query().await;
                rows_response(batches, format, &stmt.sql, cancel)
            }
        }
    }

    fn fields(stmt: &PgStatement, format: &Format) -> PgWireResult<Vec<FieldInfo>> {
        match &stmt.kind {
            Kind::Query(plan) => {
                let schema = plan.schema().as_arrow().clone();
                Ok(arrow_pg::datatypes::arrow_schema_to_pg_fields(
                    &schema, format, None,
                )?)
            }
            Kind::Push(schema) => Ok(arrow_pg::datatypes::arrow_schema_to_pg_fields(
                schema, format, None,
            )?),
            Kind::Continuous(Statement::ShowQueries) => {
                Ok(arrow_pg::datatypes::arrow_schema_to_pg_fields(
                    &crate::continuous::show_queries_schema(),
                    format,
                    None,
                )?)
            }
            Kind::Session(_, Some((column, _))) => Ok(vec![FieldInfo::new(
                column.clone(),
                None,
                None,
                Type::TEXT,
                format.format_for(0),
            )]),
            _ => Ok(Vec::new()),
        }
    }
}

#[async_trait]
impl SimpleQueryHandler for Queries {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let s = session(client)?;
        let mut out = Vec::new();
        let statements = split_statements(query).map_err(|e| sql_error(e, query))?;
        let alone = statements.len() == 1;
        for sql in statements {
            let kind = Parser::plan(&s.ctx, &sql)
                .await
                .map_err(|e| sql_error(e, &sql))?;
            if matches!(kind, Kind::Push(_)) {
                if !alone {
                    return Err(user_error(
                        "0A000",
                        "a push query (EMIT CHANGES) runs alone, not with other statements",
                    ));
                }
                return Ok(vec![
                    push(client, &s, &sql, &Format::UnifiedText, true).await?,
                ]);
            }
            let stmt = PgStatement { sql, kind };
            out.push(self.run(&s, &stmt, None, &Format::UnifiedText).await?);
        }
        Ok(out)
    }
}

/// A query's rows as a PostgreSQL result.
fn rows_response(
    batches: datafusion::execution::SendableRecordBatchStream,
    format: &Format,
    sql: &str,
    cancel: impl Cancel,
) -> PgWireResult<Response> {
    let schema = batches.schema();
    let fields = Arc::new(arrow_pg::datatypes::arrow_schema_to_pg_fields(
        &schema, format, None,
    )?);
    let sql = sql.to_string();
    let rows_fields = fields.clone();
    let rows = batches.flat_map(move |b| match b {
        Ok(b) => stream::iter(
            arrow_pg::datatypes::encode_recordbatch(rows_fields.clone(), b).collect::<Vec<_>>(),
        ),
        Err(e) => stream::iter(vec![Err(sql_error(e.into(), &sql))]),
    });
    Ok(Response::Query(QueryResponse::new(
        fields,
        cancellable(rows, cancel),
    )))
}

fn cancelled() -> PgWireError {
    user_error("57014", "canceling statement due to user request")
}

/// `rows` until a cancel request fires `cancel`: then one error ends them.
/// What a cancel request fires (`Err` when the connection goes instead).
trait Cancel: std::future::Future<Output = Result<(), Self::Gone>> + Send + Unpin + 'static {
    type Gone: Send;
}

impl<F, E: Send> Cancel for F
where
    F: std::future::Future<Output = Result<(), E>> + Send + Unpin + 'static,
{
    type Gone = E;
}

fn cancellable<S>(
    rows: S,
    cancel: impl Cancel,
) -> impl futures_util::Stream<Item = PgWireResult<DataRow>> + Send
where
    S: futures_util::Stream<Item = PgWireResult<DataRow>> + Send + Unpin + 'static,
{
    stream::unfold(Some((rows, Some(cancel))), |state| async move {
        let (mut rows, mut cancel) = state?;
        let row = match cancel.as_mut() {
            Some(c) => tokio::select! {
                biased;
                fired = c => match fired {
                    Ok(()) => return Some((Err(cancelled()), None)),
                    // The connection is going: no cancel can come.
                    Err(_) => {
                        cancel = None;
                        rows.next().await
                    }
                },
                row = rows.next() => row,
            },
            None => rows.next().await,
        };
        row.map(|r| (r, Some((rows, cancel))))
    })
}

/// A push query: its rows sent (and flushed) batch by batch as they come,
/// until the client cancels or goes away.
async fn push<C>(
    client: &mut C,
    session: &PgSession,
    sql: &str,
    format: &Format,
    describe: bool,
) -> PgWireResult<Response>
where
    C: Sink<PgWireBackendMessage> + Unpin + Send,
    C::Error: Debug,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    let outcome = session
        .engine
        .execute(session.principal.clone(), sql)
        .await
        .map_err(|e| sql_error(e, sql))?;
    let Outcome::Push(mut batches) = outcome else {
        return Err(user_error("XX000", "not a push query"));
    };
    let fields = Arc::new(arrow_pg::datatypes::arrow_schema_to_pg_fields(
        &batches.schema(),
        format,
        None,
    )?);
    if describe {
        let description =
            pgwire::messages::data::RowDescription::new(fields.iter().map(Into::into).collect());
        client
            .send(PgWireBackendMessage::RowDescription(description))
            .await?;
    }
    let mut cancel = session.cancel.start_query().await;
    let mut rows = 0usize;
    loop {
        let batch = tokio::select! {
            biased;
            _ = &mut cancel => return Err(cancelled()),
            b = batches.next() => b,
        };
        let Some(batch) = batch else { break };
        let batch = batch.map_err(|e| sql_error(e.into(), sql))?;
        for row in arrow_pg::datatypes::encode_recordbatch(fields.clone(), batch) {
            client.feed(PgWireBackendMessage::DataRow(row?)).await?;
            rows += 1;
        }
        client.flush().await?;
    }
    Ok(Response::Execution(Tag::new("SELECT").with_rows(rows)))
}

/// The statements of a simple query, in order.
fn split_statements(query: &str) -> Result<Vec<String>, SqlError> {
    if query.trim().trim_matches(';').trim().is_empty() {
        return Ok(vec![String::new()]);
    }
    Ok(crate::continuous::statement::split(query))
}

#[async_trait]
impl ExtendedQueryHandler for Queries {
    type Statement = PgStatement;
    type QueryParser = Parser;

    fn query_parser(&self) -> Arc<Parser> {
        self.parser.clone()
    }

    async fn do_describe_statement<C>(
        &self,
        _client: &mut C,
        target: &StoredStatement<PgStatement>,
    ) -> PgWireResult<DescribeStatementResponse>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = PgStatement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let params = parameter_types(&target.statement)?;
        let fields = Self::fields(&target.statement, &Format::UnifiedText)?;
        Ok(DescribeStatementResponse::new(params, fields))
    }

    async fn do_describe_portal<C>(
        &self,
        _client: &mut C,
        target: &Portal<PgStatement>,
    ) -> PgWireResult<DescribePortalResponse>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = PgStatement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let fields = Self::fields(&target.statement.statement, &target.result_column_format)?;
        Ok(DescribePortalResponse::new(fields))
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<PgStatement>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = PgStatement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let s = session(client)?;
        let stmt = &portal.statement.statement;
        let inferred = parameter_types(stmt)?;
        let params = if portal.parameter_len() == 0 {
            None
        } else {
            let mut values = Vec::with_capacity(portal.parameter_len());
            for i in 0..portal.parameter_len() {
                // The client's declared type, else the inferred one.
                let t = portal
                    .statement
                    .parameter_types
                    .get(i)
                    .cloned()
                    .flatten()
                    .filter(|t| *t != Type::UNKNOWN)
                    .or_else(|| inferred.get(i).cloned())
                    .unwrap_or(Type::UNKNOWN);
                values.push(parameter(portal, i, &t)?);
            }
            Some(ParamValues::List(
                values.into_iter().map(Into::into).collect(),
            ))
        };
        if matches!(stmt.kind, Kind::Push(_)) {
            return push(client, &s, &stmt.sql, &portal.result_column_format, false).await;
        }
        self.run(&s, stmt, params, &portal.result_column_format)
            .await
    }
}

/// Serves the PostgreSQL protocol on `tcp` until `shutdown`: TLS when the
/// client asks for it (`sslmode=require`) and the node has certificates.
pub async fn serve(
    tcp: tokio::net::TcpListener,
    engine: Arc<SqlEngine>,
    broker: Arc<Broker>,
    tls: Option<fjord_auth::TlsListen>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let handlers = PgHandlers::new(engine, broker.clone());
    let guard = broker.guard().clone();
    let refused_broker = broker.clone();
    let refused = move |why, addr| refused_broker.connection_refused("postgres", why, addr);
    fjord_auth::listener::accept_loop(
        tcp,
        "postgres",
        shutdown,
        guard,
        refused,
        move |socket, addr, permit| {
            let handlers = handlers.clone();
            let broker = broker.clone();
            // The certificate files may have been reloaded: the acceptor is
            // made per connection from the current ones.
            let acceptor =
                tls.as_ref()
                    .and_then(|t| match t.ctx.server_config(t.client_auth, &[]) {
                        Ok(c) => Some(tokio_rustls::TlsAcceptor::from(c)),
                        Err(e) => {
                            tracing::warn!(error = %e, "postgres TLS unavailable");
                            None
                        }
                    });
            async move {
                let _permit = permit;
                let metrics = broker.metrics();
                metrics
                    .connections_total
                    .with_label_values(&["postgres"])
                    .inc();
                let gauge = metrics.connections.with_label_values(&["postgres"]);
                gauge.inc();
                if let Err(e) = pgwire::tokio::process_socket(socket, acceptor, handlers).await {
                    tracing::debug!(peer = %addr, error = %e, "postgres connection ended");
                }
                gauge.dec();
            }
        },
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_statements_clients_send() {
        assert!(matches!(
            session_statement("SET extra_float_digits = 3"),
            Some(Kind::Session("SET", None))
        ));
        assert!(matches!(
            session_statement("BEGIN"),
            Some(Kind::Session("BEGIN", None))
        ));
        assert!(session_statement("SET datafusion.execution.batch_size = 10").is_none());
        match session_statement("SHOW TRANSACTION ISOLATION LEVEL") {
            Some(Kind::Session("SHOW", Some((c, v)))) => {
                assert_eq!(c, "transaction_isolation_level");
                assert_eq!(v, "read committed");
            }
            other => panic!("{other:?}"),
        }
        assert!(session_statement("SELECT 1").is_none());
    }

    #[test]
    fn simple_queries_split_into_statements() {
        assert_eq!(split_statements("SELECT 1; SELECT 2;").unwrap().len(), 2);
        assert_eq!(
            split_statements("SET application_name = 'x'")
                .unwrap()
                .len(),
            1
        );
    }
}
