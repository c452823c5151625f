//! `POST /v1/sql` served by fjord-sql: the HTTP front-end only knows the
//! `SqlService` trait, so it builds without DataFusion.

use std::sync::Arc;

use axum::http::StatusCode;
use fjord_auth::Principal;
use fjord_http::sql::{PushFuture, PushRows, SqlFailure, SqlFuture, SqlOutput, SqlService};
use fjord_sql::{Format, Outcome, SqlEngine, SqlError, SqlErrorKind};
use futures_util::{StreamExt, TryStreamExt};

pub struct HttpSql(pub Arc<SqlEngine>);

impl SqlService for HttpSql {
    fn execute(&self, principal: Arc<Principal>, sql: String, format: &'static str) -> SqlFuture {
        let engine = self.0.clone();
        Box::pin(async move {
            let format = Format::parse(format).unwrap_or_default();
            let outcome = engine.execute(principal, &sql).await.map_err(failure)?;
            let batches = match outcome {
                // A command: its tag, whatever the format asked for rows.
                Outcome::Done(tag) => {
                    return Ok(SqlOutput {
                        content_type: "application/json",
                        body: serde_json::to_vec(&serde_json::json!({ "command": tag }))
                            .unwrap_or_default(),
                    })
                }
                Outcome::Rows(batches) => batches,
                Outcome::Push(_) => {
                    return Err(SqlFailure {
                        status: StatusCode::BAD_REQUEST,
                        code: "push_query",
                        message: "a push query (EMIT CHANGES) streams until cancelled: open it as a WebSocket, GET /v1/sql/ws?sql=…".into(),
                        line: None,
                        column: None,
                    })
                }
            };
            let schema = batches.schema();
            let batches: Vec<_> = batches
                .try_collect()
                .await
                .map_err(|e| failure(SqlError::from(e)))?;
            let body = fjord_sql::output::encode(format, &schema, &batches)
                .map_err(|e| failure(SqlError::new(SqlErrorKind::Execution, e.to_string())))?;
            Ok(SqlOutput {
                content_type: format.content_type(),
                body,
            })
        })
    }

    fn push(&self, principal: Arc<Principal>, sql: String) -> PushFuture {
        let engine = self.0.clone();
        Box::pin(async move {
            let rows = match engine.execute(principal, &sql).await.map_err(failure)? {
                Outcome::Push(rows) => rows,
                _ => {
                    return Err(SqlFailure {
                        status: StatusCode::BAD_REQUEST,
                        code: "not_a_push_query",
                        message: "this route streams push queries (SELECT … EMIT CHANGES); run other statements with POST /v1/sql".into(),
                        line: None,
                        column: None,
                    })
                }
            };
            let json = rows.map(|b| {
                let b = b.map_err(|e| failure(SqlError::from(e)))?;
                let body = fjord_sql::output::json_rows(std::slice::from_ref(&b))
                    .map_err(|e| failure(SqlError::new(SqlErrorKind::Execution, e.to_string())))?;
                Ok(body)
            });
            Ok(Box::pin(json) as PushRows)
        })
    }
}

fn failure(e: SqlError) -> SqlFailure {
    let (status, code) = match e.kind {
        SqlErrorKind::Syntax => (StatusCode::BAD_REQUEST, "syntax_error"),
        SqlErrorKind::Invalid => (StatusCode::BAD_REQUEST, "invalid_argument"),
        SqlErrorKind::NotSupported => (StatusCode::BAD_REQUEST, "not_supported"),
        SqlErrorKind::UndefinedTable => (StatusCode::NOT_FOUND, "undefined_table"),
        SqlErrorKind::UndefinedColumn => (StatusCode::NOT_FOUND, "undefined_column"),
        SqlErrorKind::Execution => (StatusCode::INTERNAL_SERVER_ERROR, "execution_error"),
        SqlErrorKind::ResourcesExhausted => {
            (StatusCode::SERVICE_UNAVAILABLE, "resources_exhausted")
        }
        SqlErrorKind::InsufficientPrivilege => (StatusCode::FORBIDDEN, "forbidden"),
        SqlErrorKind::DuplicateObject => (StatusCode::CONFLICT, "already_exists"),
        SqlErrorKind::UndefinedObject => (StatusCode::NOT_FOUND, "not_found"),
        SqlErrorKind::WrongObjectType => (StatusCode::BAD_REQUEST, "wrong_object_type"),
    };
    SqlFailure {
        status,
        code,
        message: e.message,
        line: e.line,
        column: e.column,
    }
}
