//! `fjord sql`: SQL against a node over `POST /v1/sql`, as one command
//! (`-c`), from stdin, or as an interactive shell with history.

use std::io::{IsTerminal, Read};

use anyhow::{bail, Context, Result};
use clap::Args;
use fjord_sql::datafusion::arrow::ipc::reader::StreamReader;
use fjord_sql::datafusion::arrow::record_batch::RecordBatch;
use fjord_sql::datafusion::arrow::util::pretty::pretty_format_batches;

use crate::client::{Client, Conn};

#[derive(Args)]
pub struct SqlArgs {
    #[command(flatten)]
    conn: Conn,
    /// Run these statements (`;`-separated) and exit; without it, statements
    /// come from stdin, or an interactive shell when stdin is a terminal.
    #[arg(long, short = 'c')]
    command: Option<String>,
    /// table (aligned, with types kept), json or csv.
    #[arg(long, default_value = "table")]
    format: String,
}

pub async fn sql(a: SqlArgs) -> Result<()> {
    if !["table", "json", "csv"].contains(&a.format.as_str()) {
        bail!("--format must be table, json or csv, not {:?}", a.format);
    }
    let client = Client::new(&a.conn)?;
    let text = match a.command {
        Some(c) => c,
        None if std::io::stdin().is_terminal() => return shell(&client, &a.format).await,
        None => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("reading statements from stdin")?;
            s
        }
    };
    let mut failed = false;
    for stmt in statements(&text) {
        if let Err(e) = run(&client, &stmt, &a.format).await {
            eprintln!("{e:#}");
            failed = true;
        }
    }
    if failed {
        bail!("a statement failed");
    }
    Ok(())
}

/// The statements of `text`, split at `;` outside quotes and comments.
fn statements(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = text.chars().peekable();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => {
                quote = None;
                cur.push(c);
            }
            (Some(_), c) => cur.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                cur.push(c);
            }
            (None, '-') if chars.peek() == Some(&'-') => {
                // A comment, to the end of the line.
                for c in chars.by_ref() {
                    if c == '\n' {
                        cur.push('\n');
                        break;
                    }
                }
            }
            (None, ';') => {
                if !cur.trim().is_empty() {
                    out.push(cur.trim().to_string());
                }
                cur.clear();
            }
            (None, c) => cur.push(c),
        }
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    out
}

async fn run(client: &Client, stmt: &str, format: &str) -> Result<()> {
    let wire = if format == "table" { "arrow" } else { format };
    let (status, body) = client
        .post_raw(&format!("/v1/sql?format={wire}"), stmt.to_string())
        .await?;
    if !status.is_success() {
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let message = v["error"]["message"].as_str().unwrap_or("query failed");
        let mut out = format!("ERROR: {message}");
        if let (Some(line), Some(col)) =
            (v["error"]["line"].as_u64(), v["error"]["column"].as_u64())
        {
            // Point at the place, under the statement's line.
            if let Some(text) = stmt.lines().nth(line.saturating_sub(1) as usize) {
                out.push_str(&format!(
                    "\nLINE {line}: {text}\n{}^",
                    " ".repeat(format!("LINE {line}: ").len() + col.saturating_sub(1) as usize)
                ));
            }
        }
        bail!(out);
    }
    // A command (CREATE STREAM, DROP …) answers with its tag.
    if let Some(tag) = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["command"].as_str().map(str::to_string))
    {
        println!("{tag}");
        return Ok(());
    }
    match format {
        "table" => {
            let reader =
                StreamReader::try_new(&body[..], None).context("reading the Arrow result")?;
            let batches: Vec<RecordBatch> = reader.collect::<Result<_, _>>()?;
            let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
            if !batches.is_empty() {
                println!("{}", pretty_format_batches(&batches)?);
            }
            println!("({rows} row{})", if rows == 1 { "" } else { "s" });
        }
        _ => {
            print!("{}", String::from_utf8_lossy(&body));
            if format == "json" {
                println!();
            }
        }
    }
    Ok(())
}

/// The interactive shell: statements end with `;`, history is kept in
/// `~/.fjord_sql_history`.
async fn shell(client: &Client, format: &str) -> Result<()> {
    let mut editor = rustyline::DefaultEditor::new().context("starting the line editor")?;
    let history =
        std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".fjord_sql_history"));
    if let Some(h) = &history {
        let _ = editor.load_history(h);
    }
    println!("fjord sql: statements end with ';', Ctrl-D quits");
    let mut pending = String::new();
    loop {
        let prompt = if pending.is_empty() {
            "fjord=> "
        } else {
            "fjord-> "
        };
        match editor.readline(prompt) {
            Ok(line) => {
                pending.push_str(&line);
                pending.push('\n');
                if !line.trim_end().ends_with(';') {
                    continue;
                }
                let _ = editor.add_history_entry(pending.trim());
                for stmt in statements(&pending) {
                    if let Err(e) = run(client, &stmt, format).await {
                        eprintln!("{e:#}");
                    }
                }
                pending.clear();
            }
            Err(rustyline::error::ReadlineError::Interrupted) => pending.clear(),
            Err(rustyline::error::ReadlineError::Eof) => break,
            Err(e) => return Err(e.into()),
        }
    }
    if let Some(h) = &history {
        let _ = editor.save_history(h);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::statements;

    #[test]
    fn statements_split_outside_quotes_and_comments() {
        assert_eq!(
            statements("SELECT 'a;b'; -- not ; here\nSELECT \"x;y\" FROM t;  ;"),
            ["SELECT 'a;b'", "SELECT \"x;y\" FROM t"]
        );
        assert_eq!(statements("SELECT 1"), ["SELECT 1"]);
        assert!(statements(" ; \n").is_empty());
    }
}
