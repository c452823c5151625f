//! The report: a Markdown table of figures and ratios, the delivery check
//! of every run, and the machine it ran on.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use crate::brokers::Kind;
use crate::limits::Limits;
use crate::scenarios::{Outcome, Unit};
use crate::{BenchArgs, Row, Scenario};

const IDLE_TARGET_BYTES: f64 = 2048.0;

pub fn summary(o: &Outcome) -> String {
    let figs: Vec<String> = o
        .figures
        .iter()
        .map(|f| format!("{} {}", fmt_value(f.value, f.unit), f.label))
        .collect();
    format!(
        "{} · delivered {}/{}{}{} · broker CPU {:.1} s",
        figs.join(", "),
        o.delivered,
        o.expected,
        if o.lost() > 0 {
            format!(" (LOST {})", o.lost())
        } else {
            String::new()
        },
        if o.duplicates > 0 {
            format!(" ({} duplicates)", o.duplicates)
        } else {
            String::new()
        },
        o.broker_cpu_s
    )
}

fn fmt_value(v: f64, unit: Unit) -> String {
    match unit {
        Unit::PerSecond if v >= 1e6 => format!("{:.2}M", v / 1e6),
        Unit::PerSecond if v >= 1e3 => format!("{:.1}k", v / 1e3),
        Unit::PerSecond => format!("{v:.0}"),
        Unit::Millis => format!("{v:.3} ms"),
        Unit::Bytes if v >= 10_240.0 => format!("{:.1} KB", v / 1000.0),
        Unit::Bytes => format!("{v:.0} B"),
        Unit::MegabytesPerSecond => format!("{v:.0} MB/s"),
        Unit::Percent => format!("{v:.0} %"),
    }
}

fn figure(o: &Result<Outcome, String>, label: &str) -> Option<(f64, Unit)> {
    let o = o.as_ref().ok()?;
    if !o.valid() {
        return None;
    }
    o.figures
        .iter()
        .find(|f| f.label == label)
        .map(|f| (f.value, f.unit))
}

/// Which figure a scenario's target is about, and whether Fjord met it
/// against the peers measured in the same run.
fn target(row: &Row, limits: Option<&Limits>) -> (String, Option<bool>) {
    let get = |k: Kind, label: &str| {
        row.results
            .iter()
            .find(|(kk, _)| *kk == k)
            .and_then(|(_, r)| figure(r, label))
            .map(|(v, _)| v)
    };
    let fj = |label| get(Kind::Fjord, label);
    let peers = |label| [get(Kind::Mosquitto, label), get(Kind::Nats, label)];
    match row.scenario {
        Scenario::FanIn | Scenario::FanOut => {
            let best = peers("msg/s")
                .into_iter()
                .flatten()
                .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
            (
                "msg/s ≥ faster peer".into(),
                fj("msg/s").zip(best).map(|(f, b)| f >= b),
            )
        }
        Scenario::Qos1FanIn => (
            "msg/s ≥ Mosquitto (in memory)".into(),
            fj("msg/s")
                .zip(get(Kind::Mosquitto, "msg/s"))
                .map(|(f, m)| f >= m),
        ),
        Scenario::Latency0 | Scenario::Latency1 => {
            let best = peers("p99")
                .into_iter()
                .flatten()
                .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.min(v))));
            (
                "p99 ≤ better peer".into(),
                fj("p99").zip(best).map(|(f, b)| f <= b),
            )
        }
        Scenario::KafkaProduce => (
            "≥ 60 % of min(loopback, disk)".into(),
            limits.and(fj("of limit")).map(|p| p >= 60.0),
        ),
        Scenario::KafkaConsume => (
            "≥ 80 % of loopback".into(),
            limits.and(fj("of limit")).map(|p| p >= 80.0),
        ),
        Scenario::KafkaLatency => ("p99 < 10 ms".into(), fj("p99").map(|p| p < 10.0)),
        Scenario::Idle => (
            "≤ 2 KiB per connection".into(),
            fj("per conn").map(|f| f <= IDLE_TARGET_BYTES),
        ),
    }
}

/// The machine's limits as one line, in MB/s (10^6 bytes).
pub fn limits_line(l: &crate::limits::Limits) -> String {
    format!(
        "loopback TCP {:.0} MB/s (one connection), sequential disk write {:.0} MB/s (with fsync)",
        l.loopback / 1e6,
        l.disk_write / 1e6
    )
}

pub fn render(
    rows: &[Row],
    kinds: &[Kind],
    args: &BenchArgs,
    fjord_exe: &Path,
    took: Duration,
    limits: Option<&Limits>,
) -> String {
    let mut s = String::new();
    let peers: Vec<Kind> = kinds
        .iter()
        .copied()
        .filter(|k| *k != Kind::Fjord)
        .collect();
    let has_fjord = kinds.contains(&Kind::Fjord);
    let _ = writeln!(s, "### `fjord bench` results\n");
    let _ = write!(s, "| scenario | figure |");
    for k in kinds {
        let _ = write!(s, " {k} |");
    }
    if has_fjord {
        for p in &peers {
            let _ = write!(s, " fjord / {p} |");
        }
        let _ = write!(s, " target | met |");
    }
    let _ = write!(s, "\n|---|---|");
    for _ in kinds {
        let _ = write!(s, "---:|");
    }
    if has_fjord {
        for _ in &peers {
            let _ = write!(s, "---:|");
        }
        let _ = write!(s, "---|---|");
    }
    s.push('\n');
    for row in rows {
        let labels: Vec<&'static str> = row
            .results
            .iter()
            .find_map(|(_, r)| r.as_ref().ok())
            .map(|o| o.figures.iter().map(|f| f.label).collect())
            .unwrap_or_else(|| vec!["—"]);
        let (tgt, met) = target(row, limits);
        for (i, label) in labels.iter().enumerate() {
            let _ = write!(s, "| {} | {label} |", row.scenario.title());
            for k in kinds {
                let cell = match row.results.iter().find(|(kk, _)| kk == k).map(|(_, r)| r) {
                    Some(Ok(o)) if !o.valid() => format!("failed: lost {}", o.lost()),
                    Some(Ok(o)) => o
                        .figures
                        .iter()
                        .find(|f| f.label == *label)
                        .map(|f| fmt_value(f.value, f.unit))
                        .unwrap_or_default(),
                    Some(Err(_)) => "error".into(),
                    None => String::new(),
                };
                let _ = write!(s, " {cell} |");
            }
            if has_fjord {
                let fj = row
                    .results
                    .iter()
                    .find(|(k, _)| *k == Kind::Fjord)
                    .and_then(|(_, r)| figure(r, label));
                for p in &peers {
                    let pv = row
                        .results
                        .iter()
                        .find(|(k, _)| k == p)
                        .and_then(|(_, r)| figure(r, label));
                    let cell = match (fj, pv) {
                        (Some((f, _)), Some((v, _))) if v > 0.0 => format!("{:.2}×", f / v),
                        _ => "—".into(),
                    };
                    let _ = write!(s, " {cell} |");
                }
                if i == 0 {
                    let m = match met {
                        Some(true) => "met",
                        Some(false) => "**not met**",
                        None => "n/a",
                    };
                    let _ = write!(s, " {tgt} | {m} |");
                } else {
                    let _ = write!(s, " | |");
                }
            }
            s.push('\n');
        }
    }

    let _ = writeln!(s, "\nDelivery check (distinct messages or connections that arrived of those expected; QoS 1 runs and connections must lose nothing):\n");
    let _ = writeln!(
        s,
        "| scenario | broker | delivered / expected | lost | duplicates | broker CPU s |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|");
    for row in rows {
        for (k, r) in &row.results {
            match r {
                Ok(o) => {
                    let _ = writeln!(
                        s,
                        "| {} | {k} | {} / {} | {}{} | {} | {:.1} |",
                        row.scenario.title(),
                        o.delivered,
                        o.expected,
                        o.lost(),
                        if o.valid() { "" } else { " (failed run)" },
                        o.duplicates,
                        o.broker_cpu_s
                    );
                }
                Err(e) => {
                    let _ = writeln!(
                        s,
                        "| {} | {k} | error: {} | | | |",
                        row.scenario.title(),
                        e.replace('|', "/")
                    );
                }
            }
        }
    }

    if rows.iter().any(|r| !r.scenario.is_kafka()) {
        let _ = writeln!(s, "\nSet-up: 4 publishers / 1 subscriber for (a) {} and (b) {} messages; (c) {} messages to {} subscribers; (d) {} msg/s for {} s after 1 s of warm-up; (e) {} connections from 127.0.0.2–251. MQTT 3.1.1, clean sessions, 64-byte payloads, QoS 1 window {} per publisher. Fjord runs its defaults (durable, `interval(5)` fsync); Mosquitto runs in memory with `max_queued_messages 0` (no drops), `set_tcp_nodelay true` for (d) only; nats-server with JetStream on disk.",
        args.fan_in_messages, args.qos1_messages, args.fan_out_messages, args.fan_out_subscribers,
        args.latency_rate, args.latency_secs, args.connections, args.window);
    }
    if rows.iter().any(|r| r.scenario.is_kafka()) {
        let _ = writeln!(
            s,
            "\nKafka: librdkafka (`fjord-kafka-load`, its own process) on a {}-partition topic created by CreateTopics; (f) {} records of {} B, unpaced, acks=all, librdkafka's batching (linger.ms 5), Fjord's default `interval(5)` durability, from the first send to the last acknowledgement; (g) the same count read from the start of every partition, from the first record to the last; (h) paced at half of (f)'s peak for {} s after 1 s of warm-up, acknowledgement latency per record (linger included). Targets against the machine limits below.",
            args.kafka_partitions, args.kafka_records, args.kafka_record_bytes, args.kafka_latency_secs
        );
    }
    let _ = writeln!(
        s,
        "\nVersions: {}.",
        kinds
            .iter()
            .map(|k| {
                let v = k.version(fjord_exe);
                if v.starts_with(k.name()) {
                    v
                } else {
                    format!("{k}: {v}")
                }
            })
            .collect::<Vec<_>>()
            .join("; ")
    );
    let _ = writeln!(
        s,
        "Machine: {}. Whole run: {:.0} s.",
        machine(),
        took.as_secs_f64()
    );
    s
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    format!("{cpus} CPUs ({model}), {mem_gib:.0} GiB, Linux {kernel}")
}
