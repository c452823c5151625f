//! `fjord-kafka-load`: drives a Kafka broker with librdkafka, as the
//! clients of the data ecosystem do, and prints one JSON line of results
//! for `fjord bench`.
//!
//! * `produce`: N records of a fixed size, batched, `acks=all`; each
//!   record carries its sequence number in its first 8 bytes. Reports
//!   throughput from the first send to the last acknowledgement and the
//!   acknowledgement latency of every record (enqueue → delivery report).
//!   `--rate` paces the sends (for latency at a given load).
//! * `consume`: reads every partition from the start until N records have
//!   arrived; reports throughput and how many distinct sequence numbers
//!   came (the delivery check: nothing lost).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use serde_json::json;

#[derive(Parser)]
#[command(about = "librdkafka load for fjord bench")]
struct Cli {
    /// host:port of the broker.
    #[arg(long)]
    bootstrap: String,
    #[arg(long)]
    topic: String,
    /// Records to produce or to consume.
    #[arg(long)]
    records: u64,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    Produce {
        /// Record size in bytes (at least 8: the sequence number).
        #[arg(long, default_value_t = 1024)]
        size: usize,
        /// Records per second; unpaced when absent.
        #[arg(long)]
        rate: Option<u64>,
        /// Records sent before measuring starts (paced runs).
        #[arg(long, default_value_t = 0)]
        warmup: u64,
        /// Create the topic with this many partitions first (CreateTopics;
        /// an existing topic is kept).
        #[arg(long)]
        partitions: Option<i32>,
    },
    Consume {
        #[arg(long)]
        partitions: i32,
    },
}

/// Acknowledgement latencies and outcome counts, filled by librdkafka's
/// delivery-report thread.
struct Acks {
    epoch: Instant,
    warmup: u64,
    ok: AtomicU64,
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
    last_ack_ns: AtomicU64,
    latencies_us: Mutex<Vec<u32>>,
}

impl ClientContext for Acks {}

impl ProducerContext for Acks {
    /// (sequence number, enqueue time in ns since `epoch`).
    type DeliveryOpaque = Box<(u64, u64)>;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: Self::DeliveryOpaque) {
        let now = self.epoch.elapsed().as_nanos() as u64;
        let (seq, sent_ns) = *opaque;
        match result {
            Ok(_) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
                self.last_ack_ns.fetch_max(now, Ordering::Relaxed);
                if seq >= self.warmup {
                    let us = (now.saturating_sub(sent_ns) / 1000).min(u32::MAX as u64) as u32;
                    self.latencies_us
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(us);
                }
            }
            Err((e, _)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                let mut first = self.first_error.lock().unwrap_or_else(|e| e.into_inner());
                first.get_or_insert_with(|| e.to_string());
            }
        }
    }
}

fn quantile(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i] as f64 / 1000.0
}

/// CreateTopics through librdkafka's admin client; TOPIC_ALREADY_EXISTS is
/// fine.
fn create_topic(cli: &Cli, partitions: i32) -> Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &cli.bootstrap)
        .create()
        .context("creating the admin client")?;
    let topic = NewTopic::new(&cli.topic, partitions, TopicReplication::Fixed(1));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let results = rt.block_on(admin.create_topics([&topic], &AdminOptions::new()))?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, e)) => bail!("creating topic {t}: {e}"),
        }
    }
    Ok(())
}

fn produce(
    cli: &Cli,
    size: usize,
    rate: Option<u64>,
    warmup: u64,
    partitions: Option<i32>,
) -> Result<serde_json::Value> {
    if size < 8 {
        bail!("--size must be at least 8 (the sequence number)");
    }
    if let Some(p) = partitions {
        create_topic(cli, p)?;
    }
    let acks = Acks {
        epoch: Instant::now(),
        warmup,
        ok: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        first_error: Mutex::new(None),
        last_ack_ns: AtomicU64::new(0),
        latencies_us: Mutex::new(Vec::with_capacity(cli.records as usize)),
    };
    let producer: ThreadedProducer<Acks> = ClientConfig::new()
        .set("bootstrap.servers", &cli.bootstrap)
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.kbytes", "262144")
        .set("message.timeout.ms", "120000")
        .create_with_context(acks)
        .context("creating the producer")?;
    let mut payload = vec![0x61u8; size];
    let start = Instant::now();
    let epoch = producer.context().epoch;
    for seq in 0..cli.records {
        if let Some(r) = rate {
            // Paced: record `seq` leaves at seq / rate seconds.
            let due = start + Duration::from_nanos(seq.saturating_mul(1_000_000_000) / r.max(1));
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        payload[..8].copy_from_slice(&seq.to_be_bytes());
        let mut record = BaseRecord::<(), [u8], _>::with_opaque_to(
            &cli.topic,
            Box::new((seq, epoch.elapsed().as_nanos() as u64)),
        )
        .payload(&payload[..]);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    // The local queue is full: wait for acknowledgements.
                    record = r;
                    std::thread::sleep(Duration::from_micros(200));
                }
                Err((e, _)) => bail!("send failed: {e}"),
            }
        }
    }
    producer
        .flush(Duration::from_secs(120))
        .context("waiting for the last acknowledgements")?;
    let ctx = producer.context();
    let took = Duration::from_nanos(ctx.last_ack_ns.load(Ordering::Relaxed))
        .saturating_sub(start.duration_since(epoch))
        .as_secs_f64()
        .max(1e-9);
    let ok = ctx.ok.load(Ordering::Relaxed);
    let mut lat = std::mem::take(&mut *ctx.latencies_us.lock().unwrap_or_else(|e| e.into_inner()));
    lat.sort_unstable();
    Ok(json!({
        "records": ok,
        "failed": ctx.failed.load(Ordering::Relaxed),
        "first_error": *ctx.first_error.lock().unwrap_or_else(|e| e.into_inner()),
        "bytes": ok * size as u64,
        "secs": took,
        "p50_ms": quantile(&lat, 0.50),
        "p99_ms": quantile(&lat, 0.99),
        "max_ms": quantile(&lat, 1.0),
    }))
}

fn consume(cli: &Cli, partitions: i32) -> Result<serde_json::Value> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &cli.bootstrap)
        .set("group.id", "fjord-bench")
        .set("enable.auto.commit", "false")
        .set("fetch.max.bytes", "52428800")
        .set("max.partition.fetch.bytes", "10485760")
        .set("queued.min.messages", "1000000")
        .create()
        .context("creating the consumer")?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(&cli.topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    // One bit per sequence number: cheaper than a set per record.
    let mut seen = vec![0u64; (cli.records as usize).div_ceil(64)];
    let mut distinct = 0u64;
    let (mut records, mut bytes) = (0u64, 0u64);
    let mut first: Option<Instant> = None;
    let deadline = Instant::now() + Duration::from_secs(300);
    while records < cli.records {
        if Instant::now() > deadline {
            bail!("only {records} of {} records arrived", cli.records);
        }
        let Some(m) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let m = m.context("consuming")?;
        first.get_or_insert_with(Instant::now);
        let payload = m.payload().unwrap_or_default();
        if let Some(head) = payload.get(..8) {
            let mut b = [0u8; 8];
            b.copy_from_slice(head);
            let seq = u64::from_be_bytes(b) as usize;
            if let Some(w) = seen.get_mut(seq / 64) {
                if *w & (1 << (seq % 64)) == 0 {
                    *w |= 1 << (seq % 64);
                    distinct += 1;
                }
            }
        }
        records += 1;
        bytes += payload.len() as u64;
    }
    let took = first.map_or(1e-9, |f| f.elapsed().as_secs_f64().max(1e-9));
    Ok(json!({
        "records": records,
        "distinct": distinct,
        "bytes": bytes,
        "secs": took,
    }))
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let out = match &cli.cmd {
        Cmd::Produce {
            size,
            rate,
            warmup,
            partitions,
        } => produce(&cli, *size, *rate, *warmup, *partitions)?,
        Cmd::Consume { partitions } => consume(&cli, *partitions)?,
    };
    println!("{out}");
    Ok(())
}
