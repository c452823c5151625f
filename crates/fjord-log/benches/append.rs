//! Storage-engine benchmark: batched appends of 1 KiB records with `os` and
//! `interval(5)` durability, printed beside the raw sequential write
//! bandwidth of the same disk measured in the same run, and the p50/p99
//! latency of a single append with `always`.
//!
//! Run: `cargo bench -p fjord-log --bench append` (set FJORD_BENCH_DIR to
//! measure another disk; FJORD_BENCH_MIB to change the volume, default 512).

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fjord_core::batch::{self, ProducerInfo};
use fjord_core::policy::ResolvedPolicy;
use fjord_core::{Durability, RecordInput};
use fjord_log::{Partition, PartitionOptions};

const RECORD_BYTES: usize = 1024;
const RECORDS_PER_BATCH: usize = 100;
/// Appends in flight at once, as from many producers of a busy node.
const WRITERS: usize = 32;

fn mib_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1024.0 * 1024.0) / d.as_secs_f64()
}

/// Sequential 1 MiB writes then one fsync (or one every `fsync_every`):
/// what the disk gives a single streaming writer with that fsync cadence.
fn raw_bandwidth(dir: &Path, total: u64, fsync_every: Option<Duration>) -> f64 {
    let path = dir.join("raw.bin");
    let chunk = vec![0xA5u8; 1 << 20];
    let started = Instant::now();
    let mut f = File::create(&path).unwrap();
    let mut written = 0;
    let mut last_sync = Instant::now();
    while written < total {
        f.write_all(&chunk).unwrap();
        written += chunk.len() as u64;
        if fsync_every.is_some_and(|e| last_sync.elapsed() >= e) {
            f.sync_data().unwrap();
            last_sync = Instant::now();
        }
    }
    f.sync_all().unwrap();
    let bw = mib_per_s(written, started.elapsed());
    std::fs::remove_file(path).unwrap();
    bw
}

fn records(seed: u8) -> Vec<RecordInput> {
    (0..RECORDS_PER_BATCH)
        .map(|i| RecordInput {
            key: Some(Bytes::from(format!("device-{i}"))),
            value: Some(Bytes::from(vec![seed.wrapping_add(i as u8); RECORD_BYTES])),
            headers: vec![],
            event_ts: None,
        })
        .collect()
}

async fn batched(dir: &Path, durability: Durability, writers: usize, total: u64) -> (f64, u64) {
    let policy = ResolvedPolicy {
        durability,
        ..Default::default()
    };
    let fsyncs = std::sync::Arc::new(std::sync::Mutex::new((0u64, Duration::ZERO)));
    let f2 = fsyncs.clone();
    let opts = PartitionOptions {
        fsync_observer: Some(std::sync::Arc::new(move |d: Duration| {
            let mut g = f2.lock().unwrap();
            g.0 += 1;
            g.1 += d;
        })),
        ..PartitionOptions::default()
    };
    let (p, _) = Partition::open_disk(dir, policy, opts).unwrap();
    let batch_bytes = batch::encode(0, 0, ProducerInfo::default(), &records(0)).len() as u64;
    let batches = total / batch_bytes;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let p = p.clone();
        tasks.push(tokio::spawn(async move {
            let recs = records(w as u8);
            for _ in 0..batches / writers as u64 {
                // Encoding is part of every produce, so it is measured too.
                let b = batch::encode(0, 0, ProducerInfo::default(), &recs);
                p.append(b).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    p.flush().await.unwrap();
    let elapsed = started.elapsed();
    let (n, t) = *fsyncs.lock().unwrap();
    if n > 0 {
        eprintln!(
            "  {n} fsyncs, {:.2} ms each on average, {:.0} % of the run",
            t.as_secs_f64() * 1e3 / n as f64,
            100.0 * t.as_secs_f64() / elapsed.as_secs_f64()
        );
    }
    let bytes = (batches / writers as u64) * writers as u64 * batch_bytes;
    (mib_per_s(bytes, elapsed), p.high_watermark() as u64)
}

async fn always_latency(dir: &Path, n: usize) -> (Duration, Duration) {
    let policy = ResolvedPolicy {
        durability: Durability::Always,
        ..Default::default()
    };
    let (p, _) = Partition::open_disk(dir, policy, PartitionOptions::default()).unwrap();
    let one = vec![RecordInput {
        value: Some(Bytes::from(vec![7u8; RECORD_BYTES])),
        ..Default::default()
    }];
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let b = batch::encode(0, 0, ProducerInfo::default(), &one);
        let t = Instant::now();
        p.append(b).await.unwrap();
        lat.push(t.elapsed());
    }
    lat.sort();
    (lat[n / 2], lat[n * 99 / 100])
}

fn main() {
    // `cargo test --all-targets` runs benches in test mode: do nothing then.
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return;
    }
    let base = std::env::var("FJORD_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir());
    let mib: u64 = std::env::var("FJORD_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512);
    let total = mib << 20;
    let tmp = tempfile::tempdir_in(&base).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();

    println!("fjord-log append benchmark: {mib} MiB per run, {RECORD_BYTES} B records, {RECORDS_PER_BATCH} per batch (batched appends)");
    println!("dir: {}", tmp.path().display());
    // Best of three, like the batched runs below.
    let best = |every: Option<Duration>| {
        (0..3)
            .map(|_| raw_bandwidth(tmp.path(), total, every))
            .fold(0.0, f64::max)
    };
    let raw = best(None);
    println!("{:<34} {:>10.1} MiB/s", "raw sequential write + fsync", raw);
    let every = Duration::from_millis(5);
    let raw_5ms = raw_bandwidth(tmp.path(), total, Some(every)).max(raw_bandwidth(
        tmp.path(),
        total,
        Some(every),
    ));
    println!(
        "{:<34} {:>10.1} MiB/s",
        "raw write, fsync every 5 ms", raw_5ms
    );
    for (name, d, writers, raw_base) in [
        ("os, 32 in flight", Durability::Os, WRITERS, raw),
        (
            "interval(5), 32 in flight",
            Durability::Interval { ms: 5 },
            WRITERS,
            raw_5ms,
        ),
        (
            "interval(5), 256 in flight",
            Durability::Interval { ms: 5 },
            256,
            raw_5ms,
        ),
    ] {
        // FJORD_BENCH_ONLY=<text> runs only the batched runs whose name has it.
        if std::env::var("FJORD_BENCH_ONLY").is_ok_and(|f| !name.contains(f.as_str())) {
            continue;
        }
        // Best of three, as for the raw figures: this disk's speed swings
        // between runs, and the best run is the one least disturbed.
        let mut runs = Vec::new();
        for i in 0..3 {
            let dir = tmp.path().join(format!(
                "{}-{i}",
                name.replace([' ', ',', '=', '(', ')'], "_")
            ));
            runs.push(rt.block_on(batched(&dir, d, writers, total)).0);
            let _ = std::fs::remove_dir_all(&dir);
        }
        runs.sort_by(f64::total_cmp);
        let (bw, median) = (runs[2], runs[1]);
        println!(
            "{name:<34} {bw:>10.1} MiB/s  {:>5.1} % of its raw  (median {median:.1} MiB/s, {:.0} records/s)",
            100.0 * bw / raw_base,
            bw * 1024.0 * 1024.0 / (RECORD_BYTES as f64 + 20.0)
        );
    }
    let (p50, p99) = rt.block_on(always_latency(&tmp.path().join("always"), 2000));
    println!(
        "{:<34} p50 {:>8.3} ms   p99 {:>8.3} ms",
        "single 1 KiB append, always",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3
    );
}
