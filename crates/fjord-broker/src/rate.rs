//! Per-stream append rates over the last minute, from samples of running
//! totals taken every few seconds (no work on the produce path but two
//! atomic adds).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(5);
const SAMPLES_MAX: usize = 13; // one minute of 5 s samples, both ends included

#[derive(Clone)]
pub struct RateMeter {
    inner: Arc<Inner>,
}

struct Inner {
    records: AtomicU64,
    bytes: AtomicU64,
    samples: Mutex<VecDeque<(Instant, u64, u64)>>,
}

impl RateMeter {
    pub fn new() -> Self {
        let m = Self {
            inner: Arc::new(Inner {
                records: AtomicU64::new(0),
                bytes: AtomicU64::new(0),
                samples: Mutex::new(VecDeque::new()),
            }),
        };
        m.sample();
        m
    }

    pub fn record(&self, records: u64, bytes: u64) {
        self.inner.records.fetch_add(records, Ordering::Relaxed);
        self.inner.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn sample(&self) {
        let mut s = self.inner.samples.lock();
        s.push_back((
            Instant::now(),
            self.inner.records.load(Ordering::Relaxed),
            self.inner.bytes.load(Ordering::Relaxed),
        ));
        while s.len() > SAMPLES_MAX {
            s.pop_front();
        }
    }

    /// (records/s, bytes/s) from the oldest sample to now.
    pub fn rates(&self) -> (f64, f64) {
        let s = self.inner.samples.lock();
        let Some(&(t0, r0, b0)) = s.front() else {
            return (0.0, 0.0);
        };
        let secs = t0.elapsed().as_secs_f64();
        if secs < 0.001 {
            return (0.0, 0.0);
        }
        let r = self.inner.records.load(Ordering::Relaxed) - r0;
        let b = self.inner.bytes.load(Ordering::Relaxed) - b0;
        (r as f64 / secs, b as f64 / secs)
    }
}
