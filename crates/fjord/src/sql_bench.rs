//! `fjord bench` scenarios (i) and (j): SQL on an embedded node.
//!
//! * (i) a continuous `tumble(1 second)` average per device over 10,000
//!   devices: the stream is filled first, then the query reads it from the
//!   start as fast as it can (sustained events/s); then readings are fed
//!   live, stamped with the clock, and each window's delay is the time from
//!   its end to the moment its last result was appended. Every result of
//!   the pre-filled windows is checked against averages computed here.
//! * (j) an ad-hoc aggregate over 10 million stored records, and the same
//!   query by DataFusion over the same rows exported to a Parquet file, in
//!   the same run.
//!
//! The node is embedded (broker and SQL engine in this process), so the
//! figures are the SQL engine's, not a protocol's.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::{Float64Type, Int64Type, UInt64Type};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};
use fjord_auth::Principal;
use fjord_broker::{Broker, BrokerConfig, Position};
use fjord_core::{Policy, Record, RecordInput, StreamRef, TenantName};
use fjord_sql::SqlEngine;

/// What one run measures.
pub struct Sizes {
    pub devices: u32,
    /// (i) readings per device per second of event time, pre-filled.
    pub per_device_per_sec: u32,
    /// (i) seconds of event time pre-filled.
    pub seconds: u32,
    /// (i) seconds fed live for the delay.
    pub live_secs: u32,
    /// (i) live readings per device per second.
    pub live_per_device_per_sec: u32,
    /// (j) records stored.
    pub adhoc_records: u64,
}

impl Sizes {
    pub fn full() -> Self {
        Sizes {
            devices: 10_000,
            per_device_per_sec: 10,
            seconds: 60,
            live_secs: 10,
            live_per_device_per_sec: 10,
            adhoc_records: 10_000_000,
        }
    }

    pub fn quick() -> Self {
        Sizes {
            devices: 100,
            per_device_per_sec: 5,
            seconds: 5,
            live_secs: 2,
            live_per_device_per_sec: 5,
            adhoc_records: 50_000,
        }
    }
}

pub struct ContinuousFigures {
    pub events: u64,
    pub secs: f64,
    pub results_checked: u64,
    pub live_rate: u64,
    /// Per live window: end of window → last result appended, ms.
    pub delays_ms: Vec<i64>,
}

pub struct AdhocFigures {
    pub records: u64,
    pub groups: u64,
    pub fjord_secs: f64,
    pub parquet_secs: f64,
    pub parquet_bytes: u64,
}

fn anonymous() -> Arc<Principal> {
    Arc::new(Principal::anonymous(
        TenantName::new("public").expect("a valid name"),
    ))
}

/// A deterministic temperature per device and reading.
fn temp(device: u32, i: u64) -> f64 {
    ((device as u64 * 31 + i * 17) % 400) as f64 / 10.0
}

fn reading(device: u32, i: u64, ts: i64) -> RecordInput {
    RecordInput {
        key: Some(Bytes::from(format!("dev-{device}"))),
        value: Some(Bytes::from(format!(
            r#"{{"device":"dev-{device}","temp":{}}}"#,
            temp(device, i)
        ))),
        headers: Vec::new(),
        event_ts: Some(ts),
    }
}

async fn open(dir: &Path, partitions: u32) -> Result<(Arc<Broker>, Arc<SqlEngine>, StreamRef)> {
    let broker = Broker::open(BrokerConfig::new(dir)).await?;
    let s = StreamRef::new("public", "default", "readings")?;
    broker.create_stream(&s, Some(partitions), Policy::default())?;
    let sql = SqlEngine::new(broker.clone());
    Ok((broker, sql, s))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A counter of `SHOW QUERIES` for the one query.
async fn counter(sql: &SqlEngine, column: &str) -> Result<u64> {
    let r = sql.query(anonymous(), "SHOW QUERIES").await?;
    let b = r.batches.first().context("SHOW QUERIES returned nothing")?;
    Ok(b.column_by_name(column)
        .context("no such counter")?
        .as_primitive::<UInt64Type>()
        .value(0))
}

/// Every record of `s`.
async fn read_all(b: &Broker, s: &StreamRef) -> Result<Vec<Record>> {
    let mut out = Vec::new();
    for p in 0..b.partition_count(s)? {
        let mut at = b.resolve(s, p, Position::Earliest).await?;
        loop {
            let f = b
                .fetch(s, p, Position::Offset(at), 50_000, 64 << 20, Duration::ZERO)
                .await?;
            if f.records.is_empty() {
                break;
            }
            at = f.next_offset;
            out.extend(f.records);
        }
    }
    Ok(out)
}

pub async fn continuous(dir: &Path, z: &Sizes) -> Result<ContinuousFigures> {
    let (broker, sql, s) = open(dir, 4).await?;
    // Event time starts an hour ago, on a second.
    let t0 = (now_ms() - 3_600_000) / 1000 * 1000;
    let per_sec = z.per_device_per_sec as u64;
    let events = z.devices as u64 * per_sec * z.seconds as u64;
    let mut sums: HashMap<(u32, i64), (f64, u64)> = HashMap::new();
    let mut batch = Vec::with_capacity(10_000);
    for sec in 0..z.seconds as i64 {
        for k in 0..per_sec {
            for d in 0..z.devices {
                let i = sec as u64 * per_sec + k;
                let ts = t0 + sec * 1000 + (k * 1000 / per_sec) as i64;
                batch.push(reading(d, i, ts));
                if d < 3 {
                    let e = sums.entry((d, t0 + sec * 1000)).or_default();
                    e.0 += temp(d, i);
                    e.1 += 1;
                }
                if batch.len() == 10_000 {
                    broker.produce(&s, std::mem::take(&mut batch), None).await?;
                }
            }
        }
    }
    if !batch.is_empty() {
        broker.produce(&s, batch, None).await?;
    }
    eprintln!("  (i) {events} readings stored; the query starts");

    let started = Instant::now();
    sql.query(
        anonymous(),
        "CREATE STREAM per_second WITH (start = 'earliest', idle_timeout = 'none') AS \
         SELECT tumble(_event_ts, INTERVAL '1 second') AS second, _key AS device, \
                avg(json_get_float(value, 'temp')) AS avg_temp \
         FROM readings GROUP BY 1, 2",
    )
    .await?;
    let deadline = Instant::now() + Duration::from_secs(600);
    while counter(&sql, "rows_in").await? < events {
        if Instant::now() > deadline {
            bail!("the query did not read {events} readings in 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let secs = started.elapsed().as_secs_f64();

    // Live: readings stamped with the clock, spread over each second.
    let live_rate = z.devices as u64 * z.live_per_device_per_sec as u64;
    let tick = Duration::from_millis(10);
    let per_tick = (live_rate / 100).max(1);
    let live_start = Instant::now();
    let mut next = live_start;
    let mut i = 0u64;
    let mut live_windows = Vec::new();
    // The devices read in each live window: its results to come.
    let mut fed: HashMap<i64, HashSet<u32>> = HashMap::new();
    while live_start.elapsed() < Duration::from_secs(z.live_secs as u64) {
        let ts = now_ms();
        let w = ts / 1000 * 1000;
        if live_windows.last() != Some(&w) {
            live_windows.push(w);
        }
        let devices = fed.entry(w).or_default();
        let batch: Vec<RecordInput> = (0..per_tick)
            .map(|_| {
                i += 1;
                let d = (i % z.devices as u64) as u32;
                devices.insert(d);
                reading(d, i, ts)
            })
            .collect();
        broker.produce(&s, batch, None).await?;
        next += tick;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
    }
    // The live windows that closed while feeding (not the first, partial;
    // not the last, still open).
    let closed: Vec<i64> = live_windows
        .iter()
        .copied()
        .skip(1)
        .take(live_windows.len().saturating_sub(2))
        .collect();

    // Read the results until every closed live window has all of its.
    let out = StreamRef::new("public", "default", "per_second")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let (prefilled, results_checked, last_append) = loop {
        let records = read_all(&broker, &out).await?;
        let mut last_append: HashMap<i64, (i64, usize)> = HashMap::new();
        let mut results_checked = 0u64;
        let mut prefilled = 0u64;
        for r in &records {
            let v: serde_json::Value =
                serde_json::from_slice(r.value.as_deref().unwrap_or(b"null"))?;
            // A window's results carry its last millisecond as event time.
            let window = r.event_ts + 1 - 1000;
            if window < t0 + z.seconds as i64 * 1000 {
                prefilled += 1;
                let device = v["device"].as_str().unwrap_or_default();
                if let Some(d) = device
                    .strip_prefix("dev-")
                    .and_then(|d| d.parse::<u32>().ok())
                {
                    if let Some((sum, n)) = sums.get(&(d, window)) {
                        let want = sum / *n as f64;
                        let got = v["avg_temp"].as_f64().unwrap_or(f64::NAN);
                        if (got - want).abs() > 1e-9 {
                            bail!("dev-{d} at {window}: average {got}, computed {want}");
                        }
                        results_checked += 1;
                    }
                }
            } else {
                let e = last_append.entry(window).or_insert((r.publish_ts, 0));
                e.0 = e.0.max(r.publish_ts);
                e.1 += 1;
            }
        }
        let complete = closed.iter().all(|w| {
            let want = fed.get(w).map_or(0, HashSet::len);
            last_append.get(w).map_or(0, |e| e.1) >= want
        });
        if complete {
            break (prefilled, results_checked, last_append);
        }
        if Instant::now() > deadline {
            bail!("the live windows' results did not all arrive within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let want = z.devices as u64 * z.seconds as u64;
    if prefilled != want {
        bail!("{prefilled} results for the pre-filled windows, {want} expected");
    }
    if results_checked != 3 * z.seconds as u64 {
        bail!(
            "checked {results_checked} averages, expected {}",
            3 * z.seconds
        );
    }
    let mut delays_ms = Vec::new();
    for w in closed {
        match last_append.get(&w) {
            Some((at, _)) => delays_ms.push(at - (w + 1000)),
            None => bail!("no results for the live window at {w}"),
        }
    }
    sql.query(anonymous(), "DROP STREAM per_second").await?;
    Ok(ContinuousFigures {
        events,
        secs,
        results_checked,
        live_rate,
        delays_ms,
    })
}

const ADHOC: &str = "SELECT _key, avg(json_get_float(value, 'temp')) AS avg_temp, count(*) AS n \
                     FROM readings GROUP BY _key";

pub async fn adhoc(dir: &Path, z: &Sizes) -> Result<AdhocFigures> {
    let (broker, sql, s) = open(&dir.join("node"), 2).await?;
    let t0 = now_ms() - 86_400_000;
    let mut batch = Vec::with_capacity(10_000);
    for i in 0..z.adhoc_records {
        let d = (i % z.devices as u64) as u32;
        batch.push(reading(d, i, t0 + (i / 100) as i64));
        if batch.len() == 10_000 {
            broker.produce(&s, std::mem::take(&mut batch), None).await?;
        }
    }
    if !batch.is_empty() {
        broker.produce(&s, batch, None).await?;
    }
    eprintln!("  (j) {} records stored", z.adhoc_records);

    // The same rows, as Parquet (the columns the query reads).
    let parquet = dir.join("readings.parquet");
    {
        let r = sql
            .execute(anonymous(), "SELECT _key, value FROM readings")
            .await?;
        let fjord_sql::Outcome::Rows(mut rows) = r else {
            bail!("a query answered without rows");
        };
        let file = std::fs::File::create(&parquet)?;
        let mut writer = ArrowWriter::try_new(file, rows.schema(), None)?;
        use futures_util::StreamExt;
        while let Some(b) = rows.next().await {
            writer.write(&b?)?;
        }
        writer.close()?;
    }
    let parquet_bytes = std::fs::metadata(&parquet)?.len();
    let config = SessionConfig::new().with_target_partitions(2);
    let mut reference = SessionContext::new_with_config(config);
    datafusion_functions_json::register_all(&mut reference)?;
    reference
        .register_parquet(
            "readings",
            parquet.to_str().context("a UTF-8 path")?,
            ParquetReadOptions::default(),
        )
        .await?;

    // Best of three each, alternating, both checked against the count.
    let (mut fjord_best, mut parquet_best) = (f64::MAX, f64::MAX);
    let mut groups = 0;
    for _ in 0..3 {
        let t = Instant::now();
        let r = sql.query(anonymous(), ADHOC).await?;
        fjord_best = fjord_best.min(t.elapsed().as_secs_f64());
        groups = check_counts(&r.batches, z.adhoc_records)?;
        let t = Instant::now();
        let batches = reference.sql(ADHOC).await?.collect().await?;
        parquet_best = parquet_best.min(t.elapsed().as_secs_f64());
        check_counts(&batches, z.adhoc_records)?;
    }
    Ok(AdhocFigures {
        records: z.adhoc_records,
        groups,
        fjord_secs: fjord_best,
        parquet_secs: parquet_best,
        parquet_bytes,
    })
}

/// The groups' counts add up to every record: returns the groups.
fn check_counts(
    batches: &[datafusion::arrow::record_batch::RecordBatch],
    records: u64,
) -> Result<u64> {
    let mut total = 0i64;
    let mut groups = 0u64;
    for b in batches {
        let n = b.column(2).as_primitive::<Int64Type>();
        let avg = b.column(1).as_primitive::<Float64Type>();
        for i in 0..b.num_rows() {
            if avg.is_null(i) {
                bail!("an empty average");
            }
            total += n.value(i);
            groups += 1;
        }
    }
    if total != records as i64 {
        bail!("the query counted {total} records of {records}");
    }
    Ok(groups)
}

/// The report's Markdown.
pub fn report(c: Option<&Result<ContinuousFigures>>, a: Option<&Result<AdhocFigures>>) -> String {
    let mut out = String::from(
        "\n### SQL (embedded node)\n\n| scenario | figure | fjord | reference | target | met |\n|---|---|---:|---:|---|---|\n",
    );
    match c {
        Some(Ok(f)) => {
            let rate = f.events as f64 / f.secs;
            let mut d = f.delays_ms.clone();
            d.sort_unstable();
            let q = |p: f64| {
                d.get(((d.len() as f64 - 1.0) * p).round() as usize)
                    .copied()
                    .unwrap_or(0)
            };
            out += &format!(
                "| (i) continuous tumble(1 s) avg, {} readings | events/s | {:.0} ({:.2} s) | | ≥ 1,000,000 | {} |\n",
                f.events,
                rate,
                f.secs,
                if rate >= 1e6 { "met" } else { "**not met**" }
            );
            out += &format!(
                "| (i) live at {} ev/s, {} windows | window end → results, p50 / max | {} / {} ms | | < 100 ms | {} |\n",
                f.live_rate,
                d.len(),
                q(0.5),
                d.last().copied().unwrap_or(0),
                if d.last().copied().unwrap_or(0) < 100 { "met" } else { "**not met**" }
            );
            out += &format!(
                "\nChecked: every pre-filled window's result count, and {} averages against ones computed by the harness.\n\n",
                f.results_checked
            );
        }
        Some(Err(e)) => out += &format!("| (i) continuous | failed: {e:#} | | | | |\n"),
        None => {}
    }
    match a {
        Some(Ok(f)) => {
            let ratio = f.fjord_secs / f.parquet_secs;
            out += &format!(
                "| (j) ad-hoc avg/count per device, {} records, {} groups | seconds (rows/s) | {:.2} s ({:.0}) | {:.2} s (DataFusion over Parquet, {:.0} MB) | within 2× | {} ({ratio:.2}×) |\n",
                f.records,
                f.groups,
                f.fjord_secs,
                f.records as f64 / f.fjord_secs,
                f.parquet_secs,
                f.parquet_bytes as f64 / 1e6,
                if ratio <= 2.0 { "met" } else { "**not met**" }
            );
        }
        Some(Err(e)) => out += &format!("| (j) ad-hoc | failed: {e:#} | | | | |\n"),
        None => {}
    }
    out
}
