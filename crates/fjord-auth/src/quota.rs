//! Rate limiting for quotas: a token bucket that lets a burst of one
//! second's worth through, then paces to its rate. Charges may run it into
//! debt; the answer is how long the caller must hold back (flow control,
//! Kafka's throttle time, HTTP's Retry-After).

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Units per second.
    rate: f64,
    /// What may accumulate (one second's worth).
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate_per_s: u64) -> Self {
        let rate = rate_per_s.max(1) as f64;
        Self {
            rate,
            burst: rate,
            tokens: rate,
            last: Instant::now(),
        }
    }

    pub fn rate(&self) -> u64 {
        self.rate as u64
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        self.last = now;
    }

    /// Takes `n` units; how long the caller must wait before going on (zero
    /// while within the rate).
    pub fn charge(&mut self, n: u64) -> Duration {
        self.charge_at(n, Instant::now())
    }

    pub fn charge_at(&mut self, n: u64, now: Instant) -> Duration {
        self.refill(now);
        self.tokens -= n as f64;
        self.debt()
    }

    /// How long until `n` units could be taken without waiting; nothing is
    /// taken.
    pub fn wait_for(&mut self, n: u64) -> Duration {
        self.refill(Instant::now());
        let short = n as f64 - self.tokens;
        if short <= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(short / self.rate)
        }
    }

    fn debt(&self) -> Duration {
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(100);
        b.last = t0;
        // One second's worth goes through at once.
        assert_eq!(b.charge_at(100, t0), Duration::ZERO);
        // Then 50 more must wait half a second.
        let w = b.charge_at(50, t0);
        assert!((w.as_secs_f64() - 0.5).abs() < 1e-9, "{w:?}");
        // After a second the debt is paid and 50 are available.
        assert_eq!(b.charge_at(50, t0 + Duration::from_secs(1)), Duration::ZERO);
    }

    #[test]
    fn waiting_takes_nothing() {
        let mut b = TokenBucket::new(10);
        assert_eq!(b.wait_for(10), Duration::ZERO);
        assert!(b.wait_for(20) > Duration::ZERO);
        assert_eq!(b.charge(10), Duration::ZERO);
    }
}
