//! Blocking bench clients: publishers and subscribers on their own threads,
//! so a message's send and receive stamps are taken right at the socket
//! and the load generator's scheduling stays out of the latency figures.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::wire::{self, Frame, PublishTemplate};

/// Connects, sends CONNECT and waits for a CONNACK that accepts it.
pub fn connect(addr: SocketAddr, client_id: &str) -> Result<TcpStream> {
    let mut s = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    s.set_nodelay(true)?;
    s.write_all(&wire::connect(client_id, 0))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let f = read_one(&mut s)?;
    if f.0 != wire::CONNACK || f.1.get(1) != Some(&0) {
        bail!("{client_id}: CONNECT refused ({:?})", f.1);
    }
    Ok(s)
}

pub fn subscribe(s: &mut TcpStream, filter: &str, qos: u8) -> Result<()> {
    s.write_all(&wire::subscribe(1, filter, qos))?;
    let (kind, body) = read_one(s)?;
    if kind != wire::SUBACK || body.get(2).is_none_or(|g| *g > 2) {
        bail!("SUBSCRIBE {filter} refused: {body:?}");
    }
    Ok(())
}

/// Reads exactly one frame (used only during set-up, before traffic).
fn read_one(s: &mut TcpStream) -> Result<(u8, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 256];
    loop {
        if let Some((f, _)) = wire::next_frame(&buf).map_err(anyhow::Error::msg)? {
            return Ok((f.kind, f.body.to_vec()));
        }
        let n = s.read(&mut chunk).context("reading a set-up reply")?;
        if n == 0 {
            bail!("connection closed during set-up");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// What a subscriber saw, checked message by message.
pub struct Tally {
    /// PUBLISH packets received, duplicates included.
    pub received: u64,
    /// Distinct (publisher, sequence) pairs received.
    pub unique: u64,
    pub last_at: Option<Instant>,
    /// Send-to-receive times in nanoseconds, when asked for.
    pub latencies: Vec<u64>,
    seen: Vec<Vec<u64>>,
}

impl Tally {
    fn new(publishers: usize, per_publisher: u64) -> Tally {
        let words = per_publisher.div_ceil(64) as usize;
        Tally {
            received: 0,
            unique: 0,
            last_at: None,
            latencies: Vec::new(),
            seen: vec![vec![0u64; words]; publishers],
        }
    }

    fn mark(&mut self, publisher: u32, seq: u64) -> Result<()> {
        let Some(bits) = self.seen.get_mut(publisher as usize) else {
            bail!("message from unknown publisher {publisher}");
        };
        let Some(word) = bits.get_mut((seq / 64) as usize) else {
            bail!("sequence {seq} beyond what was sent");
        };
        let bit = 1u64 << (seq % 64);
        if *word & bit == 0 {
            *word |= bit;
            self.unique += 1;
        }
        Ok(())
    }
}

pub struct SubscriberSpec {
    pub publishers: usize,
    pub per_publisher: u64,
    /// Messages below this sequence are warm-up: counted, not timed.
    pub warmup: u64,
    pub record_latency: bool,
    pub epoch: Instant,
    pub progress: Arc<AtomicU64>,
    pub stop: Arc<AtomicBool>,
}

/// Reads PUBLISH packets until every expected message has arrived or
/// `stop` is raised; acknowledges QoS 1 deliveries in batches.
pub fn run_subscriber(mut s: TcpStream, spec: SubscriberSpec) -> Result<Tally> {
    let expected = spec.publishers as u64 * spec.per_publisher;
    let mut tally = Tally::new(spec.publishers, spec.per_publisher);
    s.set_read_timeout(Some(Duration::from_millis(100)))?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut filled = 0usize;
    let mut acks = Vec::with_capacity(4096);
    while tally.unique < expected && !spec.stop.load(Ordering::Relaxed) {
        if filled == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        let n = match s.read(&mut buf[filled..]) {
            Ok(0) => bail!("the broker closed the subscriber's connection"),
            Ok(n) => n,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                continue
            }
            Err(e) => return Err(e.into()),
        };
        let now = Instant::now();
        let now_ns = now.duration_since(spec.epoch).as_nanos() as u64;
        filled += n;
        let mut at = 0;
        let before = tally.unique;
        while let Some((f, used)) =
            wire::next_frame(&buf[at..filled]).map_err(anyhow::Error::msg)?
        {
            handle(&f, &mut tally, &mut acks, now_ns, &spec)?;
            at += used;
        }
        buf.copy_within(at..filled, 0);
        filled -= at;
        if !acks.is_empty() {
            s.write_all(&acks)?;
            acks.clear();
        }
        if tally.unique > before {
            tally.last_at = Some(now);
            spec.progress
                .fetch_add(tally.unique - before, Ordering::Relaxed);
        }
    }
    let _ = s.write_all(&wire::disconnect());
    Ok(tally)
}

fn handle(
    f: &Frame<'_>,
    tally: &mut Tally,
    acks: &mut Vec<u8>,
    now_ns: u64,
    spec: &SubscriberSpec,
) -> Result<()> {
    if f.kind != wire::PUBLISH {
        return Ok(());
    }
    let r = wire::parse_publish(f).map_err(anyhow::Error::msg)?;
    if let Some(pid) = r.packet_id {
        wire::puback(pid, acks);
    }
    tally.received += 1;
    tally.mark(r.publisher, r.seq)?;
    if spec.record_latency && r.seq >= spec.warmup {
        tally.latencies.push(now_ns.saturating_sub(r.sent_ns));
    }
    Ok(())
}

pub struct PublisherSpec {
    pub id: u32,
    pub topic: String,
    pub qos: u8,
    pub payload: usize,
    pub count: u64,
    /// QoS 1 publications unacknowledged at most.
    pub window: u64,
    /// Messages per second, or as fast as the broker takes them.
    pub rate: Option<u64>,
    pub epoch: Instant,
}

/// Publisher result: messages written, and for QoS 1 those acknowledged.
pub struct Published {
    pub sent: u64,
    pub acked: u64,
}

/// Sends `count` messages; QoS 1 keeps at most `window` unacknowledged and
/// returns once all are acknowledged. The connection is handed back open
/// so the caller closes it after the subscribers are done.
pub fn run_publisher(s: TcpStream, spec: PublisherSpec) -> Result<(Published, TcpStream)> {
    let t = PublishTemplate::new(&spec.topic, spec.qos, spec.payload);
    let acked = Arc::new(AtomicU64::new(0));
    let reader = if spec.qos > 0 {
        let acked = acked.clone();
        let mut r = s.try_clone()?;
        let writer = std::thread::current();
        let count = spec.count;
        Some(std::thread::spawn(move || -> Result<()> {
            r.set_read_timeout(Some(Duration::from_secs(30)))?;
            let mut buf = vec![0u8; 64 * 1024];
            let mut filled = 0;
            while acked.load(Ordering::Relaxed) < count {
                let n = r.read(&mut buf[filled..]).context("reading PUBACKs")?;
                if n == 0 {
                    bail!("the broker closed the publisher's connection");
                }
                filled += n;
                let mut at = 0;
                let mut got = 0;
                while let Some((f, used)) =
                    wire::next_frame(&buf[at..filled]).map_err(anyhow::Error::msg)?
                {
                    if f.kind == wire::PUBACK {
                        got += 1;
                    }
                    at += used;
                }
                buf.copy_within(at..filled, 0);
                filled -= at;
                acked.fetch_add(got, Ordering::Release);
                writer.unpark();
            }
            Ok(())
        }))
    } else {
        None
    };
    let mut w = s;
    let batch: u64 = match (spec.rate, spec.qos) {
        (Some(_), _) => 1,
        (None, 0) => 256,
        (None, _) => 32.min(spec.window.max(1)),
    };
    if spec.rate.is_some() {
        precise_timers();
    }
    let mut out = Vec::with_capacity(t.len() * batch as usize);
    let period = spec
        .rate
        .map(|r| Duration::from_nanos(1_000_000_000 / r.max(1)));
    let start = Instant::now();
    let mut seq = 0u64;
    while seq < spec.count {
        if let Some(p) = period {
            let due = start + p * seq as u32;
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        let n = batch.min(spec.count - seq);
        if spec.qos > 0 {
            while seq + n - acked.load(Ordering::Acquire) > spec.window {
                std::thread::park_timeout(Duration::from_millis(5));
            }
        }
        let sent_ns = spec.epoch.elapsed().as_nanos() as u64;
        for k in 0..n {
            let q = seq + k;
            t.write(&mut out, spec.id, q, sent_ns, (q % 65535) as u16 + 1);
        }
        w.write_all(&out).context("publishing")?;
        out.clear();
        seq += n;
    }
    if let Some(r) = reader {
        r.join()
            .map_err(|_| anyhow::anyhow!("PUBACK reader panicked"))??;
    }
    Ok((
        Published {
            sent: seq,
            acked: acked.load(Ordering::Acquire),
        },
        w,
    ))
}

/// Asks this thread's timers for microsecond precision, so a paced
/// publisher's sleeps do not overshoot by the default 50 µs slack.
pub fn precise_timers() {
    // SAFETY: prctl with PR_SET_TIMERSLACK takes a plain integer.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1u64, 0u64, 0u64, 0u64);
    }
}
