//! The CLI client: stream admin, produce and consume over a node's HTTP API.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use base64::Engine;
use clap::{Args, Subcommand};
use serde_json::{json, Value};

#[derive(Args, Clone)]
pub struct Conn {
    /// The node's HTTP address.
    #[arg(
        long,
        env = "FJORD_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    url: String,
    /// Log in as `tenant:user` (HTTP Basic); the password comes from
    /// FJORD_PASSWORD.
    #[arg(long, env = "FJORD_USER", global = true)]
    user: Option<String>,
    #[arg(
        long,
        env = "FJORD_PASSWORD",
        hide_env_values = true,
        global = true,
        hide = true
    )]
    password: Option<String>,
    /// A JWT to send as `Authorization: Bearer`.
    #[arg(long, env = "FJORD_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// PEM CA to trust for an https:// URL signed by a private CA.
    #[arg(long, env = "FJORD_CA_CERT", global = true)]
    ca_cert: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum StreamCmd {
    /// Create a stream. NAME is `stream`, `namespace/stream` or `tenant/namespace/stream`.
    Create {
        name: String,
        #[arg(long)]
        partitions: Option<u32>,
        /// always | os | interval(<ms>)
        #[arg(long)]
        durability: Option<String>,
        /// Memory only; drops the oldest records under pressure.
        #[arg(long)]
        ephemeral: bool,
        #[arg(long)]
        retention_ms: Option<i64>,
        #[arg(long)]
        retention_bytes: Option<i64>,
        /// none | latest-per-key
        #[arg(long)]
        compaction: Option<String>,
        #[arg(long)]
        max_message_bytes: Option<u64>,
    },
    /// List the streams of a namespace (`namespace` or `tenant/namespace`).
    List {
        #[arg(default_value = "default")]
        namespace: String,
    },
    Describe {
        name: String,
    },
    Delete {
        name: String,
    },
}

#[derive(Subcommand)]
pub enum MqttCmd {
    /// Show, or with --set/--clear replace, a namespace's topic → stream
    /// rules (tried in order; unmatched topics use their first level).
    Rules {
        /// `namespace` or `tenant/namespace`.
        #[arg(default_value = "default")]
        namespace: String,
        /// A rule `FILTER=STREAM`; repeat in the order they apply.
        #[arg(long = "set", value_parser = parse_rule)]
        set: Vec<(String, String)>,
        /// Remove every rule.
        #[arg(long, conflicts_with = "set")]
        clear: bool,
    },
}

fn parse_rule(s: &str) -> Result<(String, String), String> {
    s.rsplit_once('=')
        .map(|(f, st)| (f.to_string(), st.to_string()))
        .ok_or_else(|| format!("rule {s:?} is not FILTER=STREAM"))
}

#[derive(Args)]
pub struct ProduceArgs {
    #[command(flatten)]
    conn: Conn,
    stream: String,
    /// Read lines from this file instead of stdin.
    #[arg(long)]
    file: Option<PathBuf>,
    /// Key for every record.
    #[arg(long)]
    key: Option<String>,
    /// A header `name=value`; repeatable.
    #[arg(long = "header", value_parser = parse_header)]
    headers: Vec<(String, String)>,
    #[arg(long)]
    partition: Option<u32>,
    /// Lines sent per request.
    #[arg(long, default_value_t = 500)]
    batch: usize,
}

#[derive(Args)]
pub struct ConsumeArgs {
    #[command(flatten)]
    conn: Conn,
    stream: String,
    /// One partition; all partitions when absent.
    #[arg(long)]
    partition: Option<u32>,
    /// earliest | latest
    #[arg(long, default_value = "earliest", conflicts_with_all = ["offset", "timestamp"])]
    from: String,
    #[arg(long, requires = "partition")]
    offset: Option<i64>,
    /// Start at the first record published at or after this time (ms since the epoch).
    #[arg(long)]
    timestamp: Option<i64>,
    /// Keep waiting for new records.
    #[arg(long, short = 'f')]
    follow: bool,
    /// json (one object per line) or raw (the value bytes, one per line).
    #[arg(long, default_value = "json")]
    format: String,
    /// Stop after this many records.
    #[arg(long)]
    max: Option<u64>,
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("header {s:?} is not name=value"))
}

/// `stream` → public/default/stream; `ns/stream` → public/ns/stream.
fn full_name(name: &str) -> Result<(String, String, String)> {
    let parts: Vec<&str> = name.split('/').collect();
    Ok(match parts.as_slice() {
        [s] => ("public".into(), "default".into(), s.to_string()),
        [ns, s] => ("public".into(), ns.to_string(), s.to_string()),
        [t, ns, s] => (t.to_string(), ns.to_string(), s.to_string()),
        _ => bail!(
            "stream name {name:?} must be stream, namespace/stream or tenant/namespace/stream"
        ),
    })
}

pub(crate) struct Client {
    http: reqwest::Client,
    base: String,
    user: Option<(String, String)>,
    token: Option<String>,
}

impl Client {
    pub(crate) fn new(conn: &Conn) -> Result<Self> {
        let mut b = reqwest::Client::builder();
        if let Some(ca) = &conn.ca_cert {
            let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
            b = b.add_root_certificate(
                reqwest::Certificate::from_pem(&pem)
                    .with_context(|| format!("{} is not a PEM certificate", ca.display()))?,
            );
        }
        let user = match (&conn.user, &conn.password) {
            (Some(u), Some(p)) => Some((u.clone(), p.clone())),
            (Some(_), None) => bail!("--user needs the password in FJORD_PASSWORD"),
            _ => None,
        };
        Ok(Self {
            http: b.build()?,
            base: conn.url.trim_end_matches('/').to_string(),
            user,
            token: conn.token.clone(),
        })
    }

    pub(crate) async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        let url = format!("{}{}", self.base, path);
        let mut req = self.authorized(self.http.request(method, &url));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = self.send(req, &url).await?;
        let status = resp.status();
        let text = resp.text().await.context("reading the response")?;
        let v: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if !status.is_success() {
            let msg = v["error"]["message"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| v.to_string());
            let code = v["error"]["code"].as_str().unwrap_or("error");
            bail!("{msg} ({code}, HTTP {})", status.as_u16());
        }
        Ok(v)
    }
}

impl Client {
    /// `req` with the credentials given: Basic `tenant:user:password` (the
    /// login holds a colon) or a bearer token.
    fn authorized(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        if let Some((u, p)) = &self.user {
            req.basic_auth(u, Some(p))
        } else if let Some(t) = &self.token {
            req.bearer_auth(t)
        } else {
            req
        }
    }

    /// Sends `req`; a node that does not answer is said so plainly.
    async fn send(&self, req: reqwest::RequestBuilder, url: &str) -> Result<reqwest::Response> {
        req.send().await.map_err(|e| {
            if e.is_connect() {
                anyhow::anyhow!(
                    "no Fjord node answers at {} ({e}); start one with `fjord serve` or pass --url",
                    self.base
                )
            } else {
                anyhow::anyhow!("request to {url} failed: {e}")
            }
        })
    }

    /// POSTs `body` as text; the status and the raw answer (any format).
    pub(crate) async fn post_raw(
        &self,
        path: &str,
        body: String,
    ) -> Result<(reqwest::StatusCode, bytes::Bytes)> {
        let url = format!("{}{}", self.base, path);
        let req = self.authorized(
            self.http
                .post(&url)
                .header("content-type", "text/plain; charset=utf-8")
                .body(body),
        );
        let resp = self.send(req, &url).await?;
        let status = resp.status();
        Ok((status, resp.bytes().await.context("reading the response")?))
    }
}

pub(crate) fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

pub async fn stream(conn: Conn, cmd: StreamCmd) -> Result<()> {
    let c = Client::new(&conn)?;
    match cmd {
        StreamCmd::Create {
            name,
            partitions,
            durability,
            ephemeral,
            retention_ms,
            retention_bytes,
            compaction,
            max_message_bytes,
        } => {
            let (t, ns, s) = full_name(&name)?;
            let mut policy = serde_json::Map::new();
            if let Some(d) = durability {
                policy.insert("durability".into(), json!(d));
            }
            if ephemeral {
                policy.insert("ephemeral".into(), json!(true));
            }
            if let Some(v) = retention_ms {
                policy.insert("retention_ms".into(), json!(v));
            }
            if let Some(v) = retention_bytes {
                policy.insert("retention_bytes".into(), json!(v));
            }
            if let Some(v) = compaction {
                policy.insert("compaction".into(), json!(v));
            }
            if let Some(v) = max_message_bytes {
                policy.insert("max_message_bytes".into(), json!(v));
            }
            let mut body = json!({"name": s, "policy": policy});
            if let Some(p) = partitions {
                body["partitions"] = json!(p);
            }
            let v = c
                .call(
                    reqwest::Method::POST,
                    &format!("/v1/streams/{t}/{ns}"),
                    Some(body),
                )
                .await?;
            println!(
                "created stream {t}/{ns}/{s} with {} partition(s)",
                v["partitions"]
            );
        }
        StreamCmd::List { namespace } => {
            let (t, ns) = match namespace.split_once('/') {
                Some((t, ns)) => (t.to_string(), ns.to_string()),
                None => ("public".to_string(), namespace),
            };
            let v = c
                .call(reqwest::Method::GET, &format!("/v1/streams/{t}/{ns}"), None)
                .await?;
            for s in v["streams"].as_array().into_iter().flatten() {
                println!(
                    "{}\t{} partition(s)",
                    s["name"].as_str().unwrap_or(""),
                    s["partitions"]
                );
            }
        }
        StreamCmd::Describe { name } => {
            let (t, ns, s) = full_name(&name)?;
            print_json(
                &c.call(
                    reqwest::Method::GET,
                    &format!("/v1/streams/{t}/{ns}/{s}"),
                    None,
                )
                .await?,
            );
        }
        StreamCmd::Delete { name } => {
            let (t, ns, s) = full_name(&name)?;
            c.call(
                reqwest::Method::DELETE,
                &format!("/v1/streams/{t}/{ns}/{s}"),
                None,
            )
            .await?;
            println!("deleted stream {t}/{ns}/{s}");
        }
    }
    Ok(())
}

pub async fn mqtt(conn: Conn, cmd: MqttCmd) -> Result<()> {
    let c = Client::new(&conn)?;
    let MqttCmd::Rules {
        namespace,
        set,
        clear,
    } = cmd;
    let (t, ns) = match namespace.split_once('/') {
        Some((t, ns)) => (t.to_string(), ns.to_string()),
        None => ("public".to_string(), namespace),
    };
    let path = format!("/v1/tenants/{t}/namespaces/{ns}");
    let mut info = c.call(reqwest::Method::GET, &path, None).await?;
    if clear || !set.is_empty() {
        let mut policy = info["policy"].clone();
        if !policy.is_object() {
            policy = json!({});
        }
        let rules: Vec<Value> = set
            .iter()
            .map(|(f, s)| json!({"filter": f, "stream": s}))
            .collect();
        if clear {
            policy.as_object_mut().map(|o| o.remove("mqtt_topic_rules"));
        } else {
            policy["mqtt_topic_rules"] = Value::Array(rules);
        }
        info = c
            .call(reqwest::Method::PUT, &path, Some(json!({"policy": policy})))
            .await?;
    }
    let rules = info["policy"]["mqtt_topic_rules"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if rules.is_empty() {
        println!("no rules in {t}/{ns}: a topic's first level names its stream");
    }
    for r in rules {
        println!(
            "{}\t→ {}",
            r["filter"].as_str().unwrap_or(""),
            r["stream"].as_str().unwrap_or("")
        );
    }
    Ok(())
}

pub async fn produce(a: ProduceArgs) -> Result<()> {
    let c = Client::new(&a.conn)?;
    let (t, ns, s) = full_name(&a.stream)?;
    let path = format!("/v1/streams/{t}/{ns}/{s}/records");
    let reader: Box<dyn BufRead> = match &a.file {
        Some(f) => Box::new(std::io::BufReader::new(
            std::fs::File::open(f).with_context(|| format!("open {}", f.display()))?,
        )),
        None => Box::new(std::io::BufReader::new(std::io::stdin())),
    };
    // The list form keeps header order (a JSON object would not).
    let headers: Vec<Value> = a
        .headers
        .iter()
        .map(|(k, v)| json!({"key": k, "value": v}))
        .collect();
    let mut pending = Vec::new();
    let mut sent = 0u64;
    let flush = |records: Vec<Value>| {
        let c = &c;
        let path = &path;
        let partition = a.partition;
        async move {
            let mut body = json!({"records": records});
            if let Some(p) = partition {
                body["partition"] = json!(p);
            }
            c.call(reqwest::Method::POST, path, Some(body)).await
        }
    };
    for line in reader.lines() {
        let line = line.context("reading input")?;
        let mut rec = json!({"value": line});
        if let Some(k) = &a.key {
            rec["key"] = json!(k);
        }
        if !headers.is_empty() {
            rec["headers"] = Value::Array(headers.clone());
        }
        pending.push(rec);
        if pending.len() >= a.batch.max(1) {
            sent += pending.len() as u64;
            flush(std::mem::take(&mut pending)).await?;
        }
    }
    if !pending.is_empty() {
        sent += pending.len() as u64;
        flush(pending).await?;
    }
    eprintln!("produced {sent} record(s) to {t}/{ns}/{s}");
    Ok(())
}

pub async fn consume(a: ConsumeArgs) -> Result<()> {
    if a.format != "json" && a.format != "raw" {
        bail!("--format must be json or raw");
    }
    let c = Arc::new(Client::new(&a.conn)?);
    let (t, ns, s) = full_name(&a.stream)?;
    let partitions: Vec<u32> = match a.partition {
        Some(p) => vec![p],
        None => {
            let d = c
                .call(
                    reqwest::Method::GET,
                    &format!("/v1/streams/{t}/{ns}/{s}"),
                    None,
                )
                .await?;
            (0..d["partitions"].as_u64().unwrap_or(1) as u32).collect()
        }
    };
    let remaining = Arc::new(std::sync::atomic::AtomicI64::new(
        a.max.map_or(i64::MAX, |m| m as i64),
    ));
    let out = Arc::new(LineWriter::default());
    let mut tasks = tokio::task::JoinSet::new();
    for p in partitions {
        let c = c.clone();
        let path = format!("/v1/streams/{t}/{ns}/{s}/records");
        let start = match (a.offset, a.timestamp) {
            (Some(o), _) => format!("offset={o}"),
            (_, Some(ts)) => format!("timestamp={ts}"),
            _ => format!("from={}", a.from),
        };
        let (follow, raw, remaining, out) =
            (a.follow, a.format == "raw", remaining.clone(), out.clone());
        tasks.spawn(async move {
            let mut query = start;
            loop {
                let wait = if follow { 10_000 } else { 0 };
                let fmt = if raw { "base64" } else { "json" };
                let v = c
                    .call(
                        reqwest::Method::GET,
                        &format!("{path}?partition={p}&{query}&wait_ms={wait}&format={fmt}"),
                        None,
                    )
                    .await?;
                let records = v["records"].as_array().cloned().unwrap_or_default();
                for r in &records {
                    if remaining.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) <= 0 {
                        return Ok(());
                    }
                    if raw {
                        let bytes = base64::engine::general_purpose::STANDARD
                            .decode(r["value_base64"].as_str().unwrap_or(""))
                            .unwrap_or_default();
                        out.write_line(&bytes)?;
                    } else {
                        out.write_line(r.to_string().as_bytes())?;
                    }
                }
                let next = v["next_offset"].as_i64().unwrap_or(0);
                query = format!("offset={next}");
                if !follow && next >= v["high_watermark"].as_i64().unwrap_or(0) {
                    return Ok::<(), anyhow::Error>(());
                }
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.context("consumer task")??;
    }
    Ok(())
}

/// One writer for stdout shared by the partition tasks, so lines never
/// interleave.
#[derive(Default)]
struct LineWriter(std::sync::Mutex<()>);

impl LineWriter {
    fn write_line(&self, line: &[u8]) -> std::io::Result<()> {
        let _g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = std::io::stdout().lock();
        out.write_all(line)?;
        out.write_all(b"\n")?;
        out.flush()
    }
}
