//! The Kafka scenarios: librdkafka (the `fjord-kafka-load` binary, a
//! process of its own) produces to and consumes from Fjord's Kafka
//! listener; figures are read against the machine's limits measured in the
//! same run. Only Fjord is measured here: the MQTT peers have no Kafka
//! listener.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::brokers::Broker;
use crate::scenarios::{Figure, Outcome, Unit};

/// What the Kafka scenarios share in one run.
pub struct KafkaRun {
    /// The load client.
    pub load: PathBuf,
    pub records: u64,
    pub record_bytes: usize,
    pub partitions: u32,
    pub latency_secs: u64,
    /// Peak produce rate (records/s) once measured, for the latency run
    /// at half of it.
    pub peak: Option<f64>,
}

/// The load client: `--kafka-load`, else `fjord-kafka-load` beside the
/// fjord binary (both come from the same `cargo build`).
pub fn find_load(explicit: Option<&Path>, fjord_exe: &Path) -> Result<PathBuf> {
    let p = match explicit {
        Some(p) => p.to_path_buf(),
        None => fjord_exe.with_file_name("fjord-kafka-load"),
    };
    if !p.exists() {
        bail!(
            "the Kafka load client {} is missing: build it with \
             `cargo build --release -p fjord-kafka-load` (it links librdkafka), \
             or point --kafka-load at it",
            p.display()
        );
    }
    Ok(p)
}

/// The run's Kafka state, or why the Kafka scenarios cannot run.
pub fn ready(k: &mut Result<KafkaRun>) -> Result<&mut KafkaRun> {
    k.as_mut().map_err(|e| anyhow::anyhow!("{e:#}"))
}

fn run_load(k: &KafkaRun, broker: &Broker, topic: &str, args: &[String]) -> Result<Value> {
    let kafka = broker.kafka.context("this broker has no Kafka listener")?;
    let out = Command::new(&k.load)
        .arg("--bootstrap")
        .arg(kafka.to_string())
        .arg("--topic")
        .arg(topic)
        .args(args)
        .output()
        .with_context(|| format!("running {}", k.load.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            k.load.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let line = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(line.trim()).with_context(|| format!("load client said {line:?}"))
}

fn num(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or(0.0)
}

/// Produces `records` unpaced (or at `rate`) to a new topic; the load
/// client's JSON answer.
fn produce_run(
    k: &KafkaRun,
    broker: &Broker,
    topic: &str,
    records: u64,
    rate: Option<(u64, u64)>,
) -> Result<Value> {
    let mut a = vec![
        "--records".to_string(),
        records.to_string(),
        "produce".into(),
        "--size".into(),
        k.record_bytes.to_string(),
        "--partitions".into(),
        k.partitions.to_string(),
    ];
    if let Some((r, warmup)) = rate {
        a.extend([
            "--rate".into(),
            r.to_string(),
            "--warmup".into(),
            warmup.to_string(),
        ]);
    }
    let v = run_load(k, broker, topic, &a)?;
    if num(&v, "failed") > 0.0 {
        bail!(
            "{} records were not acknowledged: {}",
            v["failed"],
            v["first_error"]
        );
    }
    Ok(v)
}

fn outcome(figures: Vec<Figure>, expected: u64, delivered: u64, cpu_s: f64) -> Outcome {
    Outcome {
        figures,
        expected,
        delivered,
        duplicates: 0,
        // acks=all: every record was acknowledged as stored.
        lossless_required: true,
        broker_cpu_s: cpu_s,
    }
}

fn throughput(bytes: f64, records: f64, secs: f64, limit: Option<f64>) -> Vec<Figure> {
    let bps = bytes / secs.max(1e-9);
    let mut f = vec![
        Figure {
            label: "MB/s",
            value: bps / 1e6,
            unit: Unit::MegabytesPerSecond,
        },
        Figure {
            label: "msg/s",
            value: records / secs.max(1e-9),
            unit: Unit::PerSecond,
        },
    ];
    if let Some(l) = limit.filter(|l| *l > 0.0) {
        f.push(Figure {
            label: "of limit",
            value: 100.0 * bps / l,
            unit: Unit::Percent,
        });
    }
    f
}

/// (f) Produce throughput: `records` of `record_bytes`, batched by
/// librdkafka, acks=all, Fjord's default `interval` durability.
/// `limit`: the lower of loopback and disk write bandwidth.
pub fn produce(k: &mut KafkaRun, broker: &Broker, limit: Option<f64>) -> Result<Outcome> {
    let cpu0 = broker.cpu_time()?;
    let v = produce_run(k, broker, "bench-produce", k.records, None)?;
    let cpu = broker.cpu_time()?.saturating_sub(cpu0).as_secs_f64();
    let (records, secs) = (num(&v, "records"), num(&v, "secs"));
    k.peak = Some(records / secs.max(1e-9));
    let mut figures = throughput(num(&v, "bytes"), records, secs, limit);
    figures.push(Figure {
        label: "p99 at peak",
        value: num(&v, "p99_ms"),
        unit: Unit::Millis,
    });
    Ok(outcome(figures, k.records, records as u64, cpu))
}

/// (g) Consume throughput: `records` produced first (not measured), then
/// read from the start of every partition. `limit`: loopback bandwidth.
pub fn consume(k: &KafkaRun, broker: &Broker, limit: Option<f64>) -> Result<Outcome> {
    let topic = "bench-consume";
    produce_run(k, broker, topic, k.records, None)?;
    let cpu0 = broker.cpu_time()?;
    let v = run_load(
        k,
        broker,
        topic,
        &[
            "--records".into(),
            k.records.to_string(),
            "consume".into(),
            "--partitions".into(),
            k.partitions.to_string(),
        ],
    )?;
    let cpu = broker.cpu_time()?.saturating_sub(cpu0).as_secs_f64();
    let figures = throughput(num(&v, "bytes"), num(&v, "records"), num(&v, "secs"), limit);
    Ok(outcome(figures, k.records, num(&v, "distinct") as u64, cpu))
}

/// (h) Produce latency at half of the peak rate (measured by (f) in this
/// run, else here first): one second of warm-up, then `latency_secs`
/// measured; acknowledgement latency per record, librdkafka's default
/// `linger.ms=5` included.
pub fn latency(k: &mut KafkaRun, broker: &Broker) -> Result<Outcome> {
    let peak = match k.peak {
        Some(p) => p,
        None => {
            let v = produce_run(k, broker, "bench-peak", k.records, None)?;
            let p = num(&v, "records") / num(&v, "secs").max(1e-9);
            k.peak = Some(p);
            p
        }
    };
    let rate = (peak / 2.0).max(1.0) as u64;
    let records = rate * (k.latency_secs + 1);
    let cpu0 = broker.cpu_time()?;
    let v = produce_run(k, broker, "bench-latency", records, Some((rate, rate)))?;
    let cpu = broker.cpu_time()?.saturating_sub(cpu0).as_secs_f64();
    let ms = |label, key| Figure {
        label,
        value: num(&v, key),
        unit: Unit::Millis,
    };
    let figures = vec![
        ms("p50", "p50_ms"),
        ms("p99", "p99_ms"),
        ms("max", "max_ms"),
        Figure {
            label: "at msg/s",
            value: rate as f64,
            unit: Unit::PerSecond,
        },
    ];
    Ok(outcome(figures, records, num(&v, "records") as u64, cpu))
}
