//! The scenarios of the benchmark, each run against one broker process.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::brokers::Broker;
use crate::clients::{self, PublisherSpec, SubscriberSpec, Tally};
use crate::wire;

/// A measured figure and which way is better.
#[derive(Debug, Clone)]
pub struct Figure {
    pub label: &'static str,
    pub value: f64,
    pub unit: Unit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Higher is better.
    PerSecond,
    /// Lower is better.
    Millis,
    /// Lower is better.
    Bytes,
    /// Higher is better.
    MegabytesPerSecond,
    /// Of a limit; higher is better.
    Percent,
}

/// What one broker did in one scenario, with its delivery check.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub figures: Vec<Figure>,
    /// Messages (or connections) the scenario expected to arrive.
    pub expected: u64,
    /// Distinct messages (or connections) that did.
    pub delivered: u64,
    /// Messages delivered more than once.
    pub duplicates: u64,
    /// Set when the contract of the scenario says nothing may be lost.
    pub lossless_required: bool,
    /// Broker CPU seconds used during the measured part.
    pub broker_cpu_s: f64,
}

impl Outcome {
    pub fn lost(&self) -> u64 {
        self.expected.saturating_sub(self.delivered)
    }

    /// A run that lost messages its QoS promised is a failed run.
    pub fn valid(&self) -> bool {
        !self.lossless_required || self.lost() == 0
    }
}

pub struct Flow {
    pub publishers: usize,
    pub subscribers: usize,
    pub per_publisher: u64,
    pub qos: u8,
    pub payload: usize,
    pub rate: Option<u64>,
    pub warmup: u64,
    pub window: u64,
    /// Give up this long after the last message arrived.
    pub idle_timeout: Duration,
}

type Progress = dyn Fn(u64, u64) + Sync;

/// Publishers → one topic → subscribers. Measures delivered messages per
/// second from the first send to the last receipt, or latencies when the
/// publishers are paced.
pub fn flow(broker: &mut Broker, f: &Flow, tag: &str, progress: &Progress) -> Result<Outcome> {
    let topic = format!("bench/{tag}");
    let epoch = Instant::now();
    let delivered = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let expected_each = f.publishers as u64 * f.per_publisher;
    let expected = expected_each * f.subscribers as u64;

    let mut subs = Vec::new();
    for i in 0..f.subscribers {
        let mut s = clients::connect(broker.addr, &format!("{tag}-sub-{i}"))?;
        clients::subscribe(&mut s, &topic, f.qos)?;
        let spec = SubscriberSpec {
            publishers: f.publishers,
            per_publisher: f.per_publisher,
            warmup: f.warmup,
            record_latency: f.rate.is_some(),
            epoch,
            progress: delivered.clone(),
            stop: stop.clone(),
        };
        subs.push(std::thread::spawn(move || clients::run_subscriber(s, spec)));
    }
    let mut pubs_conns = Vec::new();
    for i in 0..f.publishers {
        pubs_conns.push(clients::connect(broker.addr, &format!("{tag}-pub-{i}"))?);
    }
    let barrier = Arc::new(Barrier::new(f.publishers + 1));
    let mut pubs = Vec::new();
    for (i, s) in pubs_conns.into_iter().enumerate() {
        let spec = PublisherSpec {
            id: i as u32,
            topic: topic.clone(),
            qos: f.qos,
            payload: f.payload,
            count: f.per_publisher,
            window: f.window,
            rate: f.rate,
            epoch,
        };
        let b = barrier.clone();
        pubs.push(std::thread::spawn(move || {
            b.wait();
            clients::run_publisher(s, spec)
        }));
    }
    let cpu0 = broker.cpu_time().unwrap_or_default();
    barrier.wait();
    let start = Instant::now();

    // Watch: progress once a second; stop when everything arrived, or when
    // nothing has arrived for the idle timeout after the publishers ended.
    let mut last_count = 0;
    let mut last_change = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let n = delivered.load(Ordering::Relaxed);
        if n != last_count {
            last_count = n;
            last_change = Instant::now();
        }
        progress(n, expected);
        let pubs_done = pubs.iter().all(|h| h.is_finished());
        let subs_done = subs.iter().all(|h| h.is_finished());
        if subs_done && pubs_done {
            break;
        }
        if !broker.alive() {
            stop.store(true, Ordering::Relaxed);
            bail!("{} exited during the run", broker.kind);
        }
        if pubs_done && last_change.elapsed() > f.idle_timeout {
            stop.store(true, Ordering::Relaxed);
            // The subscribers stop within their 100 ms read timeout.
            std::thread::sleep(Duration::from_millis(300));
            break;
        }
    }
    let cpu1 = broker.cpu_time().unwrap_or_default();

    let mut published = 0u64;
    let mut conns = Vec::new();
    for h in pubs {
        let (p, conn) = h.join().map_err(|_| anyhow!("publisher panicked"))??;
        if f.qos > 0 && p.acked < p.sent {
            bail!(
                "{} of {} publications never acknowledged",
                p.sent - p.acked,
                p.sent
            );
        }
        published += p.sent;
        conns.push(conn);
    }
    if published != expected_each {
        bail!("published {published} of {expected_each}");
    }
    let mut tallies: Vec<Tally> = Vec::new();
    for h in subs {
        tallies.push(h.join().map_err(|_| anyhow!("subscriber panicked"))??);
    }
    drop(conns);

    let unique: u64 = tallies.iter().map(|t| t.unique).sum();
    let received: u64 = tallies.iter().map(|t| t.received).sum();
    let last = tallies
        .iter()
        .filter_map(|t| t.last_at)
        .max()
        .unwrap_or(start);
    let secs = last.duration_since(start).as_secs_f64().max(1e-9);
    let mut figures = Vec::new();
    if f.rate.is_some() {
        let mut lat: Vec<u64> = tallies
            .iter()
            .flat_map(|t| t.latencies.iter().copied())
            .collect();
        lat.sort_unstable();
        for (label, q) in [("p50", 0.50), ("p99", 0.99), ("p999", 0.999)] {
            figures.push(Figure {
                label,
                value: quantile(&lat, q) as f64 / 1e6,
                unit: Unit::Millis,
            });
        }
    } else {
        figures.push(Figure {
            label: "msg/s",
            value: unique as f64 / secs,
            unit: Unit::PerSecond,
        });
    }
    Ok(Outcome {
        figures,
        expected,
        delivered: unique,
        duplicates: received - unique,
        lossless_required: f.qos > 0,
        broker_cpu_s: cpu1.saturating_sub(cpu0).as_secs_f64(),
    })
}

fn quantile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// Opens `n` idle MQTT connections (CONNECT answered, nothing else) from
/// source addresses spread over 127.0.0.2–127.0.0.251 and reports the
/// broker's resident memory growth per connection.
pub fn idle_connections(broker: &mut Broker, n: usize, progress: &Progress) -> Result<Outcome> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    std::thread::sleep(Duration::from_millis(500));
    let before = broker.rss_bytes()?;
    let addr = broker.addr;
    let done = Arc::new(AtomicU64::new(0));
    let cpu0 = broker.cpu_time().unwrap_or_default();
    let task = {
        let done = done.clone();
        rt.spawn(async move { open_idle(addr, n, done).await })
    };
    loop {
        std::thread::sleep(Duration::from_millis(200));
        progress(done.load(Ordering::Relaxed), n as u64);
        if task.is_finished() {
            break;
        }
    }
    let conns = rt.block_on(task).context("idle connection task")??;
    // Let the broker settle (lazy frees, allocator trims) before reading.
    std::thread::sleep(Duration::from_secs(2));
    let after = broker.rss_bytes()?;
    let cpu1 = broker.cpu_time().unwrap_or_default();
    let open = conns.len() as u64;
    drop(conns);
    rt.shutdown_timeout(Duration::from_secs(1));
    Ok(Outcome {
        figures: vec![Figure {
            label: "per conn",
            value: after.saturating_sub(before) as f64 / open.max(1) as f64,
            unit: Unit::Bytes,
        }],
        expected: n as u64,
        delivered: open,
        duplicates: 0,
        lossless_required: true,
        broker_cpu_s: cpu1.saturating_sub(cpu0).as_secs_f64(),
    })
}

async fn open_idle(
    addr: SocketAddr,
    n: usize,
    done: Arc<AtomicU64>,
) -> Result<Vec<tokio::net::TcpStream>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sem = Arc::new(tokio::sync::Semaphore::new(256));
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let permit = sem.clone().acquire_owned().await?;
        let done = done.clone();
        set.spawn(async move {
            let _permit = permit;
            let src = Ipv4Addr::new(127, 0, 0, 2 + (i % 250) as u8);
            let mut last_err = None;
            for _attempt in 0..5 {
                let r = async {
                    let sock = tokio::net::TcpSocket::new_v4()?;
                    sock.bind((src, 0).into())?;
                    let mut s = sock.connect(addr).await?;
                    s.write_all(&wire::connect(&format!("idle-{i}"), 0)).await?;
                    let mut ack = [0u8; 4];
                    s.read_exact(&mut ack).await?;
                    if ack[0] >> 4 != wire::CONNACK || ack[3] != 0 {
                        return Err(std::io::Error::other(format!("CONNACK {ack:?}")));
                    }
                    Ok::<_, std::io::Error>(s)
                }
                .await;
                match r {
                    Ok(s) => {
                        done.fetch_add(1, Ordering::Relaxed);
                        return Ok(s);
                    }
                    Err(e) => {
                        last_err = Some(e);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
            Err(anyhow!(
                "connection {i} from {src}: {}",
                last_err.map(|e| e.to_string()).unwrap_or_default()
            ))
        });
    }
    let mut conns = Vec::with_capacity(n);
    let mut first_err = None;
    while let Some(r) = set.join_next().await {
        match r? {
            Ok(s) => conns.push(s),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    if conns.len() < n {
        if let Some(e) = first_err {
            eprintln!(
                "    {} of {n} connections failed; first: {e:#}",
                n - conns.len()
            );
        }
    }
    Ok(conns)
}
