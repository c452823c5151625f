//! `POST /v1/sql` served by fjord-sql: the HTTP front-end only knows the
//! `SqlService` trait, so it builds without DataFusion.

use std::sync::Arc;

use axum::http::StatusCode;
use fjord_auth::Principal;
use fjord_http::sql::{SqlFailure, SqlFuture, SqlOutput, SqlService};
use fjord_sql::{Format, SqlEngine, SqlError, SqlErrorKind};

pub struct HttpSql(pub Arc<SqlEngine>);

impl SqlService for HttpSql {
    fn execute(&self, principal: Arc<Principal>, sql: String, format: &'static str) -> SqlFuture {
        let engine = self.0.clone();
        Box::pin(async move {
            let format = Format::parse(format).unwrap_or_default();
            let result = engine.query(principal, &sql).await.map_err(failure)?;
            let body = fjord_sql::output::encode(format, &result.schema, &result.batches)
                .map_err(|e| failure(SqlError::new(SqlErrorKind::Execution, e.to_string())))?;
            Ok(SqlOutput {
                content_type: format.content_type(),
                body,
            })
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
    };
    SqlFailure {
        status,
        code,
        message: e.message,
        line: e.line,
        column: e.column,
    }
}
