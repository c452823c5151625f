//! Connection hardening shared by every listener: a global and a per-IP
//! connection limit, and a temporary ban of an address after repeated
//! failed logins (password guessing), lifted after a while.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// The `[limits]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GuardSettings {
    /// Open connections of the whole node at most (every protocol); 0: no
    /// limit.
    pub max_connections: usize,
    /// Open connections from one IP address at most; 0: no limit
    /// (gateways behind one address may hold many).
    pub max_connections_per_ip: usize,
    /// Failed logins from one address, within `ban_window_s`, that ban it.
    /// 0: never ban.
    pub ban_after_failures: u32,
    pub ban_window_s: u64,
    /// How long a banned address is refused.
    pub ban_s: u64,
    /// Addresses never banned (exact IPs; the loopback ones by default, so
    /// local tooling cannot lock itself out).
    pub ban_exempt: Vec<IpAddr>,
}

impl Default for GuardSettings {
    fn default() -> Self {
        Self {
            max_connections: 0,
            max_connections_per_ip: 0,
            ban_after_failures: 10,
            ban_window_s: 60,
            ban_s: 300,
            ban_exempt: vec![
                IpAddr::from([127, 0, 0, 1]),
                IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]),
            ],
        }
    }
}

/// Why a connection was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Banned,
    PerIp,
    Global,
}

impl Refused {
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::Banned => "banned",
            Refused::PerIp => "per_ip_limit",
            Refused::Global => "connection_limit",
        }
    }
}

#[derive(Default)]
struct Failures {
    /// Times of recent failures (within the window).
    recent: Vec<Instant>,
    banned_until: Option<Instant>,
}

pub struct Guard {
    settings: GuardSettings,
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    failures: Mutex<HashMap<IpAddr, Failures>>,
}

/// Holds a connection's place; dropping it frees the place.
pub struct Permit {
    guard: Arc<Guard>,
    ip: IpAddr,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.guard.total.fetch_sub(1, Ordering::AcqRel);
        if self.guard.settings.max_connections_per_ip > 0 {
            let mut m = self.guard.per_ip.lock();
            if let Some(n) = m.get_mut(&self.ip) {
                *n -= 1;
                if *n == 0 {
                    m.remove(&self.ip);
                }
            }
        }
    }
}

impl Guard {
    pub fn new(settings: GuardSettings) -> Arc<Self> {
        Arc::new(Self {
            settings,
            total: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
        })
    }

    /// Admits a new connection from `ip`, or says why not.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Permit, Refused> {
        if self.is_banned(ip) {
            return Err(Refused::Banned);
        }
        let max = self.settings.max_connections;
        let before = self.total.fetch_add(1, Ordering::AcqRel);
        if max > 0 && before >= max {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(Refused::Global);
        }
        let per_ip = self.settings.max_connections_per_ip;
        if per_ip > 0 {
            let mut m = self.per_ip.lock();
            let n = m.entry(ip).or_insert(0);
            if *n >= per_ip {
                drop(m);
                self.total.fetch_sub(1, Ordering::AcqRel);
                return Err(Refused::PerIp);
            }
            *n += 1;
        }
        Ok(Permit {
            guard: self.clone(),
            ip,
        })
    }

    pub fn is_banned(&self, ip: IpAddr) -> bool {
        let mut f = self.failures.lock();
        match f.get(&ip).and_then(|x| x.banned_until) {
            Some(until) if until > Instant::now() => true,
            Some(_) => {
                // The ban is over: the address starts afresh.
                f.remove(&ip);
                false
            }
            None => false,
        }
    }

    /// Counts a failed login from `ip`; true when it just got banned.
    pub fn login_failed(&self, ip: IpAddr) -> bool {
        let s = &self.settings;
        if s.ban_after_failures == 0 || s.ban_exempt.contains(&ip) {
            return false;
        }
        let now = Instant::now();
        let window = Duration::from_secs(s.ban_window_s);
        let mut f = self.failures.lock();
        // Bounded memory under a spray of addresses: forget quiet ones.
        if f.len() > 100_000 {
            f.retain(|_, x| {
                x.banned_until.is_some_and(|u| u > now)
                    || x.recent
                        .last()
                        .is_some_and(|t| now.duration_since(*t) < window)
            });
        }
        let e = f.entry(ip).or_default();
        e.recent.retain(|t| now.duration_since(*t) < window);
        e.recent.push(now);
        if e.recent.len() as u32 >= s.ban_after_failures && e.banned_until.is_none() {
            e.banned_until = Some(now + Duration::from_secs(s.ban_s));
            e.recent.clear();
            return true;
        }
        false
    }

    /// A successful login forgets the address's failures.
    pub fn login_succeeded(&self, ip: IpAddr) {
        let mut f = self.failures.lock();
        if f.get(&ip).is_some_and(|x| x.banned_until.is_none()) {
            f.remove(&ip);
        }
    }

    pub fn open_connections(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    #[test]
    fn limits_hold_and_free_with_their_permits() {
        let g = Guard::new(GuardSettings {
            max_connections: 3,
            max_connections_per_ip: 2,
            ..Default::default()
        });
        let a1 = g.admit(ip(1)).unwrap();
        let _a2 = g.admit(ip(1)).unwrap();
        assert_eq!(g.admit(ip(1)).err(), Some(Refused::PerIp));
        let _b1 = g.admit(ip(2)).unwrap();
        assert_eq!(g.admit(ip(3)).err(), Some(Refused::Global));
        drop(a1);
        assert!(g.admit(ip(1)).is_ok());
    }

    #[test]
    fn repeated_failures_ban_and_the_ban_lifts() {
        let g = Guard::new(GuardSettings {
            ban_after_failures: 3,
            ban_window_s: 60,
            ban_s: 0,
            ..Default::default()
        });
        assert!(!g.login_failed(ip(1)));
        assert!(!g.login_failed(ip(1)));
        assert!(g.login_failed(ip(1)));
        // ban_s = 0: lifted at once.
        assert!(!g.is_banned(ip(1)));
        let g = Guard::new(GuardSettings {
            ban_after_failures: 2,
            ..Default::default()
        });
        g.login_failed(ip(1));
        g.login_succeeded(ip(1));
        assert!(!g.login_failed(ip(1)), "a success resets the count");
        assert!(g.login_failed(ip(1)));
        assert!(g.is_banned(ip(1)));
        assert_eq!(g.admit(ip(1)).err(), Some(Refused::Banned));
        assert!(!g.is_banned(ip(2)));
        // Loopback is exempt by default.
        for _ in 0..10 {
            assert!(!g.login_failed(IpAddr::from([127, 0, 0, 1])));
        }
    }
}
