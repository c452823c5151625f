//! A query's failure as its user should see it: what kind, what went wrong,
//! and where in the query.

use datafusion::error::DataFusionError;

/// What kind of failure (each endpoint maps it to its own signal: a
/// PostgreSQL SQLSTATE, an HTTP status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqlErrorKind {
    /// The text is not SQL Fjord understands.
    Syntax,
    /// A table (stream), schema (namespace) or catalog (tenant) that does
    /// not exist or that the principal may not read.
    UndefinedTable,
    UndefinedColumn,
    /// Well-formed but wrong: types, arguments, plans.
    Invalid,
    NotSupported,
    /// Reading the data failed.
    Execution,
    /// The node's memory budget for queries is spent.
    ResourcesExhausted,
    /// The principal may not do this.
    InsufficientPrivilege,
    /// A stream or query of that name exists already.
    DuplicateObject,
    /// No such query.
    UndefinedObject,
    /// The name is something else (a plain stream, a view).
    WrongObjectType,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct SqlError {
    pub kind: SqlErrorKind,
    pub message: String,
    /// 1-based line and column in the query, when known.
    pub line: Option<u64>,
    pub column: Option<u64>,
}

impl SqlError {
    pub fn new(kind: SqlErrorKind, message: impl Into<String>) -> Self {
        SqlError {
            kind,
            message: message.into(),
            line: None,
            column: None,
        }
    }

    /// The PostgreSQL SQLSTATE for it.
    pub fn sqlstate(&self) -> &'static str {
        match self.kind {
            SqlErrorKind::Syntax => "42601",
            SqlErrorKind::UndefinedTable => "42P01",
            SqlErrorKind::UndefinedColumn => "42703",
            SqlErrorKind::Invalid => "42804",
            SqlErrorKind::NotSupported => "0A000",
            SqlErrorKind::Execution => "XX000",
            SqlErrorKind::ResourcesExhausted => "53200",
            SqlErrorKind::InsufficientPrivilege => "42501",
            SqlErrorKind::DuplicateObject => "42P07",
            SqlErrorKind::UndefinedObject => "42704",
            SqlErrorKind::WrongObjectType => "42809",
        }
    }

    /// Places an error of a part of a statement that starts at `at` (line,
    /// column) in the whole statement.
    pub fn shifted(mut self, at: (u64, u64)) -> Self {
        if let (Some(line), Some(column)) = (self.line, self.column) {
            if line == 1 {
                self.column = Some(column + at.1 - 1);
            }
            self.line = Some(line + at.0 - 1);
        }
        self
    }

    /// The 1-based character position in `sql` (PostgreSQL's error
    /// "position" field), from the line and column.
    pub fn position_in(&self, sql: &str) -> Option<usize> {
        let (line, column) = (self.line?, self.column?);
        let before: usize = sql
            .split_inclusive('\n')
            .take(line.checked_sub(1)? as usize)
            .map(|l| l.chars().count())
            .sum();
        Some(before + column as usize)
    }
}

impl From<DataFusionError> for SqlError {
    fn from(e: DataFusionError) -> Self {
        let span = e
            .diagnostic()
            .and_then(|d| d.span)
            .filter(|s| s.start.line > 0);
        let root = e.find_root();
        let kind = match root {
            DataFusionError::SQL(..) => SqlErrorKind::Syntax,
            DataFusionError::SchemaError(se, _) => {
                let text = se.to_string();
                if text.contains("No field named") || text.contains("not found") {
                    SqlErrorKind::UndefinedColumn
                } else {
                    SqlErrorKind::Invalid
                }
            }
            DataFusionError::Plan(m) if m.contains("table") && m.contains("not found") => {
                SqlErrorKind::UndefinedTable
            }
            DataFusionError::Plan(_) | DataFusionError::Configuration(_) => SqlErrorKind::Invalid,
            DataFusionError::NotImplemented(_) => SqlErrorKind::NotSupported,
            DataFusionError::ResourcesExhausted(_) => SqlErrorKind::ResourcesExhausted,
            _ => SqlErrorKind::Execution,
        };
        let mut message = root.strip_backtrace();
        // Parser messages carry their place in the text ("at Line: 1,
        // Column: 8"); planner ones get it from their diagnostic.
        let (mut line, mut column) = (span.map(|s| s.start.line), span.map(|s| s.start.column));
        if line.is_none() {
            if let Some((l, c)) = parse_place(&message) {
                (line, column) = (Some(l), Some(c));
            }
        }
        for prefix in ["SQL error: ", "Error during planning: ", "Schema error: "] {
            if let Some(rest) = message.strip_prefix(prefix) {
                message = rest.to_string();
            }
        }
        SqlError {
            kind,
            message,
            line,
            column,
        }
    }
}

/// "… at Line: 3, Column: 14" → (3, 14).
fn parse_place(message: &str) -> Option<(u64, u64)> {
    let at = message.rfind("Line: ")?;
    let rest = &message[at + "Line: ".len()..];
    let (line, rest) = rest.split_once(", Column: ")?;
    let column: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    Some((line.trim().parse().ok()?, column.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_in_parser_messages_and_positions() {
        assert_eq!(
            parse_place("Expected: end of statement, found: x at Line: 2, Column: 7"),
            Some((2, 7))
        );
        let e = SqlError {
            kind: SqlErrorKind::Syntax,
            message: String::new(),
            line: Some(2),
            column: Some(3),
        };
        assert_eq!(e.position_in("SELECT 1\nFRM t"), Some(12));
    }
}
