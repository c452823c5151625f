//! `fjord bench`: the same MQTT scenarios against Fjord and peer brokers
//! (Debian's `mosquitto` and `nats-server`), one after the other in one run,
//! with a table of Fjord's ratio to each peer. Every run checks delivery:
//! counts, distinct messages, duplicates; a QoS 1 run that lost a message
//! is reported as failed, not as a figure.

mod brokers;
mod clients;
mod kafka;
pub mod limits;
mod report;
mod scenarios;
mod wire;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;

pub use brokers::Kind;
use brokers::{Broker, Tuning};
use scenarios::{Flow, Outcome};

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Brokers to run, comma-separated: fjord, mosquitto, nats.
    #[arg(long, default_value = "fjord,mosquitto,nats", value_delimiter = ',')]
    pub brokers: Vec<String>,
    /// Scenarios, comma-separated: MQTT a (QoS 0 fan-in), b (QoS 1
    /// fan-in), c (QoS 0 fan-out), d (latency), e (idle connections);
    /// Kafka (Fjord only, librdkafka load) f (produce), g (consume),
    /// h (produce latency at half of peak); SQL (embedded node) i
    /// (continuous aggregate), j (ad-hoc aggregate against Parquet).
    #[arg(long, default_value = "a,b,c,d,e,f,g,h,i,j", value_delimiter = ',')]
    pub scenarios: Vec<String>,
    /// (a) messages in all, over 4 publishers.
    #[arg(long, default_value_t = 2_000_000)]
    pub fan_in_messages: u64,
    /// (b) messages in all, over 4 publishers.
    #[arg(long, default_value_t = 400_000)]
    pub qos1_messages: u64,
    /// (c) messages published, each delivered to every subscriber.
    #[arg(long, default_value_t = 40_000)]
    pub fan_out_messages: u64,
    /// (c) subscribers.
    #[arg(long, default_value_t = 50)]
    pub fan_out_subscribers: usize,
    /// (d) seconds measured at 10,000 msg/s, after one second of warm-up.
    #[arg(long, default_value_t = 10)]
    pub latency_secs: u64,
    /// (d) messages per second.
    #[arg(long, default_value_t = 10_000)]
    pub latency_rate: u64,
    /// (e) idle connections.
    #[arg(long, default_value_t = 19_000)]
    pub connections: usize,
    /// (f, g) Kafka records produced (and consumed).
    #[arg(long, default_value_t = 1_000_000)]
    pub kafka_records: u64,
    /// (f, g, h) Kafka record size.
    #[arg(long, default_value_t = 1024)]
    pub kafka_record_bytes: usize,
    /// (f, g, h) partitions of the Kafka topics.
    #[arg(long, default_value_t = 4)]
    pub kafka_partitions: u32,
    /// (h) seconds measured, after one second of warm-up.
    #[arg(long, default_value_t = 5)]
    pub kafka_latency_secs: u64,
    /// The Kafka load client (default: `fjord-kafka-load` beside fjord).
    #[arg(long)]
    pub kafka_load: Option<PathBuf>,
    /// QoS 1 publications a publisher keeps unacknowledged at most.
    #[arg(long, default_value_t = 256)]
    pub window: u64,
    /// Small counts everywhere: checks the harness, measures nothing.
    #[arg(long)]
    pub quick: bool,
    /// Where brokers keep their data (a fresh directory per run).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// The Fjord binary to measure (default: this one).
    #[arg(long)]
    pub fjord_exe: Option<PathBuf>,
    /// Also write the report (Markdown) to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    FanIn,
    Qos1FanIn,
    FanOut,
    Latency0,
    Latency1,
    Idle,
    KafkaProduce,
    KafkaConsume,
    KafkaLatency,
}

impl Scenario {
    pub fn title(self) -> &'static str {
        match self {
            Scenario::FanIn => "(a) QoS 0 fan-in 4→1, 64 B",
            Scenario::Qos1FanIn => "(b) QoS 1 fan-in 4→1, 64 B",
            Scenario::FanOut => "(c) QoS 0 fan-out 1→N, 64 B",
            Scenario::Latency0 => "(d) latency QoS 0",
            Scenario::Latency1 => "(d) latency QoS 1",
            Scenario::Idle => "(e) idle connections",
            Scenario::KafkaProduce => "(f) Kafka produce 1 KiB, acks=all",
            Scenario::KafkaConsume => "(g) Kafka consume 1 KiB",
            Scenario::KafkaLatency => "(h) Kafka produce latency at ½ peak",
        }
    }

    /// Kafka scenarios run against Fjord only.
    pub fn is_kafka(self) -> bool {
        matches!(
            self,
            Scenario::KafkaProduce | Scenario::KafkaConsume | Scenario::KafkaLatency
        )
    }
}

/// One scenario's results, broker by broker.
pub struct Row {
    pub scenario: Scenario,
    pub results: Vec<(Kind, Result<Outcome, String>)>,
}

pub fn run(args: BenchArgs) -> Result<()> {
    raise_nofile_limit();
    let mut args = args;
    if args.quick {
        args.fan_in_messages = args.fan_in_messages.min(20_000);
        args.qos1_messages = args.qos1_messages.min(4_000);
        args.fan_out_messages = args.fan_out_messages.min(1_000);
        args.fan_out_subscribers = args.fan_out_subscribers.min(5);
        args.latency_secs = args.latency_secs.min(1);
        args.connections = args.connections.min(200);
        args.kafka_records = args.kafka_records.min(20_000);
        args.kafka_latency_secs = args.kafka_latency_secs.min(1);
    }
    let kinds = args
        .brokers
        .iter()
        .map(|s| Kind::parse(s.trim()))
        .collect::<Result<Vec<_>>>()?;
    let mut scenarios = Vec::new();
    for s in &args.scenarios {
        match s.trim() {
            "a" => scenarios.push(Scenario::FanIn),
            "b" => scenarios.push(Scenario::Qos1FanIn),
            "c" => scenarios.push(Scenario::FanOut),
            "d" => scenarios.extend([Scenario::Latency0, Scenario::Latency1]),
            "e" => scenarios.push(Scenario::Idle),
            "f" => scenarios.push(Scenario::KafkaProduce),
            "g" => scenarios.push(Scenario::KafkaConsume),
            "h" => scenarios.push(Scenario::KafkaLatency),
            other => bail!("unknown scenario {other:?}: expected a to h"),
        }
    }
    let fjord_exe = match &args.fjord_exe {
        Some(p) => p.clone(),
        None => std::env::current_exe().context("locating the fjord binary")?,
    };
    for k in &kinds {
        let prog = match k {
            Kind::Fjord => continue,
            Kind::Mosquitto => "mosquitto",
            Kind::Nats => "nats-server",
        };
        if std::process::Command::new(prog)
            .arg("--help")
            .output()
            .is_err()
        {
            bail!(
                "{prog} is not installed: `apt-get install mosquitto nats-server`, \
                 or leave it out with --brokers"
            );
        }
    }
    let work = match &args.work_dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("fjord-bench-{}", std::process::id())),
    };
    std::fs::create_dir_all(&work)?;

    // The machine's own limits, beside which broker figures are read.
    let limits = limits::measure(
        &work,
        Duration::from_secs(if args.quick { 1 } else { 3 }),
        if args.quick { 64 << 20 } else { 1 << 30 },
    );
    match &limits {
        Ok(l) => eprintln!("▸ machine limits: {}", report::limits_line(l)),
        Err(e) => eprintln!("▸ machine limits not measured: {e:#}"),
    }
    let mut kafka =
        kafka::find_load(args.kafka_load.as_deref(), &fjord_exe).map(|load| kafka::KafkaRun {
            load,
            records: args.kafka_records,
            record_bytes: args.kafka_record_bytes,
            partitions: args.kafka_partitions,
            latency_secs: args.kafka_latency_secs,
            peak: None,
        });
    let started = Instant::now();
    let mut rows = Vec::new();
    for &scenario in &scenarios {
        let mut results = Vec::new();
        for &kind in &kinds {
            if scenario.is_kafka() && kind != Kind::Fjord {
                continue;
            }
            eprintln!("▸ {} · {}", scenario.title(), kind);
            let r = run_one(
                scenario,
                kind,
                &args,
                &fjord_exe,
                &work,
                &mut kafka,
                limits.as_ref().ok(),
            );
            match &r {
                Ok(o) => eprintln!("  {}", report::summary(o)),
                Err(e) => eprintln!("  failed: {e:#}"),
            }
            results.push((kind, r.map_err(|e| format!("{e:#}"))));
        }
        rows.push(Row { scenario, results });
    }
    let _ = std::fs::remove_dir_all(&work);
    let mut text = report::render(
        &rows,
        &kinds,
        &args,
        &fjord_exe,
        started.elapsed(),
        limits.as_ref().ok(),
    );
    if let Ok(l) = &limits {
        text.push_str(&format!(
            "\nMachine limits in this run: {}.\n",
            report::limits_line(l)
        ));
    }
    println!("{text}");
    if let Some(out) = &args.out {
        std::fs::write(out, &text).with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}

fn run_one(
    scenario: Scenario,
    kind: Kind,
    args: &BenchArgs,
    fjord_exe: &std::path::Path,
    work: &std::path::Path,
    kafka: &mut Result<kafka::KafkaRun>,
    limits: Option<&limits::Limits>,
) -> Result<Outcome> {
    // Without the load client there is nothing to start a node for.
    if scenario.is_kafka() {
        kafka::ready(kafka)?;
    }
    let low_latency = matches!(scenario, Scenario::Latency0 | Scenario::Latency1);
    let mut broker = Broker::start(kind, fjord_exe, work, Tuning { low_latency })?;
    let progress = |n: u64, of: u64| {
        // One line a second: readable in a terminal and in a CI log.
        thread_local!(static LAST: std::cell::Cell<Option<Instant>> = const { std::cell::Cell::new(None) });
        LAST.with(|l| {
            let now = Instant::now();
            if l.get()
                .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
            {
                l.set(Some(now));
                eprintln!("    {n} / {of}");
            }
        });
    };
    let idle = Duration::from_secs(5);
    let flow = |publishers, subscribers, per_publisher, qos, rate: Option<u64>| Flow {
        publishers,
        subscribers,
        per_publisher,
        qos,
        payload: 64,
        rate,
        warmup: rate.unwrap_or(0),
        window: if rate.is_some() { 10_000 } else { args.window },
        idle_timeout: idle,
    };
    match scenario {
        Scenario::FanIn => scenarios::flow(
            &mut broker,
            &flow(4, 1, args.fan_in_messages / 4, 0, None),
            "a",
            &progress,
        ),
        Scenario::Qos1FanIn => scenarios::flow(
            &mut broker,
            &flow(4, 1, args.qos1_messages / 4, 1, None),
            "b",
            &progress,
        ),
        Scenario::FanOut => scenarios::flow(
            &mut broker,
            &flow(1, args.fan_out_subscribers, args.fan_out_messages, 0, None),
            "c",
            &progress,
        ),
        Scenario::Latency0 | Scenario::Latency1 => {
            let qos = if scenario == Scenario::Latency0 { 0 } else { 1 };
            let rate = args.latency_rate;
            let count = rate * (args.latency_secs + 1);
            scenarios::flow(
                &mut broker,
                &flow(1, 1, count, qos, Some(rate)),
                "d",
                &progress,
            )
        }
        Scenario::Idle => scenarios::idle_connections(&mut broker, args.connections, &progress),
        Scenario::KafkaProduce => kafka::produce(
            kafka::ready(kafka)?,
            &broker,
            limits.map(|l| l.loopback.min(l.disk_write)),
        ),
        Scenario::KafkaConsume => {
            kafka::consume(kafka::ready(kafka)?, &broker, limits.map(|l| l.loopback))
        }
        Scenario::KafkaLatency => kafka::latency(kafka::ready(kafka)?, &broker),
    }
}

/// The idle-connection scenario needs ~19,000 descriptors; children
/// (the brokers) inherit the raised limit.
fn raise_nofile_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid struct pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}
