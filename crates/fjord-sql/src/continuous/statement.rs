//! The statements of continuous queries, which DataFusion's grammar does
//! not have: `CREATE STREAM … AS SELECT`, `CREATE MATERIALIZED VIEW … AS
//! SELECT`, `DROP STREAM | MATERIALIZED VIEW`, `SHOW QUERIES`. Pure: text
//! in, [`Statement`] out; the `SELECT` is left as text for DataFusion.

use std::collections::BTreeMap;

use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer};

use crate::error::{SqlError, SqlErrorKind};

/// What a continuous query writes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueryKind {
    /// Results appended to a stream.
    Stream,
    /// Results kept as a table (backed by a compacted stream).
    MaterializedView,
}

impl QueryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            QueryKind::Stream => "STREAM",
            QueryKind::MaterializedView => "MATERIALIZED VIEW",
        }
    }
}

/// `[namespace.]name`, as written (the namespace defaults later).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name {
    pub namespace: Option<String>,
    pub name: String,
}

impl std::fmt::Display for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{ns}.{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Statement {
    /// Not ours: DataFusion's.
    Other,
    Create {
        kind: QueryKind,
        name: Name,
        /// `WITH (key = 'value', …)`, keys lowercased.
        options: BTreeMap<String, String>,
        /// The `SELECT …`, verbatim.
        query: String,
        /// Where the query starts in the statement (1-based line and
        /// column), to place DataFusion's errors in the user's text.
        query_at: (u64, u64),
    },
    Drop {
        kind: QueryKind,
        name: Name,
        if_exists: bool,
    },
    ShowQueries,
    /// `SELECT … EMIT CHANGES`: rows streamed to the client as they come,
    /// until it cancels.
    Push {
        /// The `SELECT`, without `EMIT CHANGES`.
        query: String,
    },
}

/// Recognises the statements of continuous queries; everything else is
/// [`Statement::Other`].
pub fn parse(sql: &str) -> Result<Statement, SqlError> {
    let Ok(tokens) = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize_with_location() else {
        // Not even tokens: DataFusion says what is wrong.
        return Ok(Statement::Other);
    };
    let tokens: Vec<TokenWithSpan> = tokens
        .into_iter()
        .filter(|t| !matches!(t.token, Token::Whitespace(_) | Token::EOF))
        .collect();
    if let Some(query) = push_query(sql, &tokens) {
        return Ok(Statement::Push { query });
    }
    let mut p = Cursor {
        sql,
        tokens: &tokens,
        at: 0,
    };
    if p.keyword("show") {
        if p.keyword("queries") {
            p.end()?;
            return Ok(Statement::ShowQueries);
        }
        return Ok(Statement::Other);
    }
    if p.keyword("drop") {
        let Some(kind) = p.kind() else {
            return Ok(Statement::Other);
        };
        let if_exists = if p.keyword("if") {
            p.expect_keyword("exists")?;
            true
        } else {
            false
        };
        let name = p.name()?;
        p.end()?;
        return Ok(Statement::Drop {
            kind,
            name,
            if_exists,
        });
    }
    if !p.keyword("create") {
        return Ok(Statement::Other);
    }
    let Some(kind) = p.kind() else {
        return Ok(Statement::Other);
    };
    let name = p.name()?;
    let mut options = BTreeMap::new();
    if p.keyword("with") {
        p.expect(&Token::LParen, "(")?;
        loop {
            let key = p.word()?.to_ascii_lowercase();
            p.expect(&Token::Eq, "=")?;
            let value = p.value()?;
            if options.insert(key.clone(), value).is_some() {
                return Err(p.error_here(format!("option {key} is given twice")));
            }
            if p.eat(&Token::RParen) {
                break;
            }
            p.expect(&Token::Comma, ", or )")?;
        }
    }
    p.expect_keyword("as")?;
    let Some(first) = tokens.get(p.at) else {
        return Err(p.error_here("a SELECT is missing after AS".into()));
    };
    let start = byte_offset(sql, first.span.start.line, first.span.start.column);
    let query = sql[start..].trim().trim_end_matches(';').trim().to_string();
    Ok(Statement::Create {
        kind,
        name,
        options,
        query,
        query_at: (first.span.start.line, first.span.start.column),
    })
}

/// The statements of a text holding several, separated by `;` (not those
/// inside strings, quoted names or comments), each as written.
pub fn split(sql: &str) -> Vec<String> {
    let Ok(tokens) = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize_with_location() else {
        // Unterminated strings and the like: one statement, for the
        // parser to report.
        return vec![sql.trim().to_string()];
    };
    let mut out = Vec::new();
    let mut start = 0;
    for t in &tokens {
        if t.token == Token::SemiColon {
            let end = byte_offset(sql, t.span.start.line, t.span.start.column);
            let stmt = sql[start..end].trim();
            if !stmt.is_empty() {
                out.push(stmt.to_string());
            }
            start = end + 1;
        }
    }
    let rest = sql[start.min(sql.len())..].trim();
    if !rest.is_empty() {
        out.push(rest.to_string());
    }
    out
}

/// A query ending in `EMIT CHANGES`: the query before it.
fn push_query(sql: &str, tokens: &[TokenWithSpan]) -> Option<String> {
    let mut t: Vec<&TokenWithSpan> = tokens.iter().collect();
    while t.last().is_some_and(|t| t.token == Token::SemiColon) {
        t.pop();
    }
    let word = |t: &TokenWithSpan, w: &str| matches!(&t.token, Token::Word(x) if x.quote_style.is_none() && x.value.eq_ignore_ascii_case(w));
    let n = t.len();
    if n < 3 || !word(t[n - 1], "changes") || !word(t[n - 2], "emit") {
        return None;
    }
    if !(word(t[0], "select") || word(t[0], "with")) {
        return None;
    }
    let emit = t[n - 2].span.start;
    let end = byte_offset(sql, emit.line, emit.column);
    Some(sql[..end].trim().to_string())
}

struct Cursor<'a> {
    sql: &'a str,
    tokens: &'a [TokenWithSpan],
    at: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at).map(|t| &t.token)
    }

    fn keyword(&mut self, kw: &str) -> bool {
        match self.peek() {
            Some(Token::Word(w)) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(kw) => {
                self.at += 1;
                true
            }
            _ => false,
        }
    }

    fn expect_keyword(&mut self, kw: &str) -> Result<(), SqlError> {
        if self.keyword(kw) {
            Ok(())
        } else {
            Err(self.error_here(format!("expected {}", kw.to_ascii_uppercase())))
        }
    }

    fn eat(&mut self, t: &Token) -> bool {
        if self.peek() == Some(t) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, t: &Token, what: &str) -> Result<(), SqlError> {
        if self.eat(t) {
            Ok(())
        } else {
            Err(self.error_here(format!("expected {what}")))
        }
    }

    fn kind(&mut self) -> Option<QueryKind> {
        if self.keyword("stream") {
            return Some(QueryKind::Stream);
        }
        let save = self.at;
        if self.keyword("materialized") && self.keyword("view") {
            return Some(QueryKind::MaterializedView);
        }
        self.at = save;
        None
    }

    fn word(&mut self) -> Result<String, SqlError> {
        match self.peek() {
            Some(Token::Word(w)) => {
                let v = w.value.clone();
                self.at += 1;
                Ok(v)
            }
            _ => Err(self.error_here("expected a name".into())),
        }
    }

    fn name(&mut self) -> Result<Name, SqlError> {
        let first = self.word()?;
        if self.eat(&Token::Period) {
            return Ok(Name {
                namespace: Some(first),
                name: self.word()?,
            });
        }
        Ok(Name {
            namespace: None,
            name: first,
        })
    }

    fn value(&mut self) -> Result<String, SqlError> {
        let v = match self.peek() {
            Some(Token::SingleQuotedString(s)) => s.clone(),
            Some(Token::Number(n, _)) => n.clone(),
            Some(Token::Word(w)) => w.value.clone(),
            _ => return Err(self.error_here("expected a value".into())),
        };
        self.at += 1;
        Ok(v)
    }

    fn end(&mut self) -> Result<(), SqlError> {
        self.eat(&Token::SemiColon);
        if self.at < self.tokens.len() {
            return Err(self.error_here("unexpected text at the end of the statement".into()));
        }
        Ok(())
    }

    fn error_here(&self, message: String) -> SqlError {
        let (line, column) = match self.tokens.get(self.at) {
            Some(t) => (t.span.start.line, t.span.start.column),
            None => {
                let lines = self.sql.lines().count().max(1) as u64;
                let last = self.sql.lines().last().map_or(0, |l| l.chars().count()) as u64;
                (lines, last + 1)
            }
        };
        SqlError {
            kind: SqlErrorKind::Syntax,
            message,
            line: Some(line),
            column: Some(column),
        }
    }
}

/// The byte offset of 1-based `line` and character `column` in `sql`.
fn byte_offset(sql: &str, line: u64, column: u64) -> usize {
    let mut offset = 0;
    for (i, l) in sql.split_inclusive('\n').enumerate() {
        if i as u64 + 1 == line {
            return offset
                + l.char_indices()
                    .nth(column.saturating_sub(1) as usize)
                    .map_or(l.len(), |(b, _)| b);
        }
        offset += l.len();
    }
    sql.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_stream_with_options() {
        let s = parse(
            "CREATE STREAM alerts.hot WITH (out_of_orderness = '5 seconds', partitions = 3)\n  AS SELECT * FROM plant1 WHERE x > 'a;b';",
        )
        .unwrap();
        let Statement::Create {
            kind,
            name,
            options,
            query,
            query_at,
        } = s
        else {
            panic!("{s:?}")
        };
        assert_eq!(kind, QueryKind::Stream);
        assert_eq!(name.to_string(), "alerts.hot");
        assert_eq!(options["out_of_orderness"], "5 seconds");
        assert_eq!(options["partitions"], "3");
        assert_eq!(query, "SELECT * FROM plant1 WHERE x > 'a;b'");
        assert_eq!(query_at, (2, 6));
    }

    #[test]
    fn views_drops_and_show() {
        assert!(matches!(
            parse("create materialized view \"Latest\" as select 1").unwrap(),
            Statement::Create { kind: QueryKind::MaterializedView, name, .. } if name.name == "Latest"
        ));
        assert_eq!(
            parse("DROP STREAM IF EXISTS hot;").unwrap(),
            Statement::Drop {
                kind: QueryKind::Stream,
                name: Name {
                    namespace: None,
                    name: "hot".into()
                },
                if_exists: true
            }
        );
        assert_eq!(parse("show queries").unwrap(), Statement::ShowQueries);
        assert_eq!(
            parse("SELECT * FROM t WHERE x > 1 EMIT CHANGES;").unwrap(),
            Statement::Push {
                query: "SELECT * FROM t WHERE x > 1".into()
            }
        );
        assert_eq!(parse("SELECT 'EMIT CHANGES'").unwrap(), Statement::Other);
        assert_eq!(parse("SHOW TABLES").unwrap(), Statement::Other);
        assert_eq!(parse("SELECT 1").unwrap(), Statement::Other);
        assert_eq!(
            parse("CREATE VIEW v AS SELECT 1").unwrap(),
            Statement::Other
        );
    }

    #[test]
    fn splits_statements_outside_strings() {
        assert_eq!(
            split("SELECT 'a;b'; CREATE STREAM s AS SELECT 1 -- x;y\n;\n SHOW QUERIES"),
            vec![
                "SELECT 'a;b'".to_string(),
                "CREATE STREAM s AS SELECT 1 -- x;y".to_string(),
                "SHOW QUERIES".to_string()
            ]
        );
    }

    #[test]
    fn errors_point_at_their_place() {
        let e = parse("CREATE STREAM s WITH (a 'b') AS SELECT 1").unwrap_err();
        assert_eq!((e.line, e.column), (Some(1), Some(25)));
        let e = parse("CREATE STREAM s SELECT 1").unwrap_err();
        assert!(e.message.contains("AS"), "{e}");
        let e = parse("DROP STREAM a b").unwrap_err();
        assert_eq!(e.column, Some(15));
    }
}
