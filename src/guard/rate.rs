//! Rate limits per client and per receiver, the penalty box for addresses that keep failing
//! verification, and the cap on concurrent connections per address.

use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How an address is counted. An IPv6 host usually holds a whole /64, so keying by address
/// would let one host rotate through 2^64 keys; IPv4 is keyed by address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpKey {
    V4(u32),
    V6(u64),
}

impl From<IpAddr> for IpKey {
    fn from(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(a) => IpKey::V4(u32::from(a)),
            IpAddr::V6(a) => IpKey::V6((u128::from(a) >> 64) as u64),
        }
    }
}

/// `N/s`, `N/min` or `N/h`, with a burst: the sustained rate and how many may come at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: NonZeroU32,
    pub per: Duration,
    pub burst: NonZeroU32,
}

impl Rate {
    /// Parses `"20/s"`; `"off"` gives `None`.
    pub fn parse(s: &str, burst: u32) -> Result<Option<Rate>, String> {
        if s.trim() == "off" {
            return Ok(None);
        }
        let bad = || format!("{s:?} is not a rate like \"20/s\", \"600/min\" or \"off\"");
        let (n, unit) = s.split_once('/').ok_or_else(bad)?;
        let count: u32 = n.trim().parse().map_err(|_| bad())?;
        let per = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            _ => return Err(bad()),
        };
        let count = NonZeroU32::new(count).ok_or_else(|| {
            format!("{s:?}: the count must be more than 0; use \"off\" to disable")
        })?;
        let burst =
            NonZeroU32::new(burst).ok_or_else(|| "the burst must be at least 1".to_string())?;
        Ok(Some(Rate { count, per, burst }))
    }

    fn quota(&self) -> Quota {
        let period = self.per / self.count.get();
        Quota::with_period(period.max(Duration::from_nanos(1)))
            .unwrap_or_else(|| Quota::per_second(self.count))
            .allow_burst(self.burst)
    }
}

type Keyed<K> = RateLimiter<K, DefaultKeyedStateStore<K>, DefaultClock>;

/// A keyed token bucket (GCRA) that says how long to wait when it is empty.
pub struct Limiter<K: std::hash::Hash + Eq + Clone> {
    inner: Keyed<K>,
    clock: DefaultClock,
}

impl<K: std::hash::Hash + Eq + Clone> Limiter<K> {
    pub fn new(rate: Rate) -> Self {
        Limiter {
            inner: RateLimiter::dashmap(rate.quota()),
            clock: DefaultClock::default(),
        }
    }

    /// `Err(wait)` when the key is over its rate.
    pub fn check(&self, key: &K) -> Result<(), Duration> {
        self.inner
            .check_key(key)
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Forgets keys whose buckets are full again, so memory follows current traffic only.
    pub fn sweep(&self) {
        self.inner.retain_recent();
        self.inner.shrink_to_fit();
    }

    pub fn tracked(&self) -> usize {
        self.inner.len()
    }
}

/// The penalty box: an address that fails verification `limit` times within `window` is
/// refused for `block_for`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailurePolicy {
    pub limit: u32,
    pub window: Duration,
    pub block_for: Duration,
}

pub struct Failures {
    policy: FailurePolicy,
    counts: DashMap<IpKey, (Instant, u32)>,
    blocked: DashMap<IpKey, Instant>,
    max_tracked: usize,
}

impl Failures {
    pub fn new(policy: FailurePolicy, max_tracked: usize) -> Self {
        Failures {
            policy,
            counts: DashMap::new(),
            blocked: DashMap::new(),
            max_tracked,
        }
    }

    /// How long the address is still refused, if it is.
    pub fn blocked(&self, ip: IpAddr) -> Option<Duration> {
        let key = IpKey::from(ip);
        let until = *self.blocked.get(&key)?;
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            self.blocked.remove(&key);
            None
        } else {
            Some(left)
        }
    }

    /// Counts one failure; returns true when this one put the address in the box.
    pub fn record(&self, ip: IpAddr) -> bool {
        let key = IpKey::from(ip);
        let now = Instant::now();
        if self.counts.len() >= self.max_tracked && !self.counts.contains_key(&key) {
            self.sweep();
        }
        let mut e = self.counts.entry(key).or_insert((now, 0));
        if now.duration_since(e.0) > self.policy.window {
            *e = (now, 0);
        }
        e.1 += 1;
        if e.1 >= self.policy.limit {
            drop(e);
            self.counts.remove(&key);
            self.blocked.insert(key, now + self.policy.block_for);
            return true;
        }
        false
    }

    pub fn sweep(&self) {
        let now = Instant::now();
        self.counts
            .retain(|_, (start, _)| now.duration_since(*start) <= self.policy.window);
        self.blocked.retain(|_, until| *until > now);
    }

    pub fn blocked_count(&self) -> usize {
        self.blocked.len()
    }
}

/// Open connections per address, released when the guard drops.
pub struct Connections {
    max: AtomicU32,
    open: Arc<DashMap<IpKey, u32>>,
}

pub struct ConnectionGuard {
    key: IpKey,
    open: Arc<DashMap<IpKey, u32>>,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.open.remove_if_mut(&self.key, |_, n| {
            *n -= 1;
            *n == 0
        });
    }
}

impl Connections {
    /// `max = 0` means no limit.
    pub fn new(max: u32) -> Self {
        Connections {
            max: AtomicU32::new(max),
            open: Arc::new(DashMap::new()),
        }
    }

    pub fn set_max(&self, max: u32) {
        self.max.store(max, Ordering::Relaxed);
    }

    pub fn at_limit(&self, ip: IpAddr) -> bool {
        let max = self.max.load(Ordering::Relaxed);
        max > 0 && self.open.get(&IpKey::from(ip)).is_some_and(|n| *n >= max)
    }

    /// Takes a slot for a connection from `ip`, or `None` when it already has `max` open.
    pub fn open(&self, ip: IpAddr) -> Option<ConnectionGuard> {
        let key = IpKey::from(ip);
        let max = self.max.load(Ordering::Relaxed);
        let mut n = self.open.entry(key).or_insert(0);
        if max > 0 && *n >= max {
            return None;
        }
        *n += 1;
        Some(ConnectionGuard {
            key,
            open: self.open.clone(),
        })
    }

    pub fn count(&self, ip: IpAddr) -> u32 {
        self.open.get(&IpKey::from(ip)).map_or(0, |n| *n)
    }
}

/// Whole seconds for `Retry-After`, rounded up and never 0.
pub fn retry_after_secs(wait: Duration) -> u64 {
    let s = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    s.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn rates_parse() {
        let r = Rate::parse("600/min", 5).unwrap().unwrap();
        assert_eq!(
            (r.count.get(), r.per, r.burst.get()),
            (600, Duration::from_secs(60), 5)
        );
        assert_eq!(Rate::parse("off", 1).unwrap(), None);
        assert!(Rate::parse("0/s", 1).is_err());
        assert!(Rate::parse("ten/s", 1).is_err());
        assert!(Rate::parse("10/day", 1).is_err());
        assert!(Rate::parse("10/s", 0).is_err());
    }

    #[test]
    fn the_burst_passes_and_the_next_one_waits() {
        let l = Limiter::new(Rate::parse("1/min", 3).unwrap().unwrap());
        let k = IpKey::from(ip("127.0.0.2"));
        for _ in 0..3 {
            l.check(&k).unwrap();
        }
        let wait = l.check(&k).unwrap_err();
        assert!(
            wait > Duration::from_secs(10) && wait <= Duration::from_secs(60),
            "{wait:?}"
        );
        l.check(&IpKey::from(ip("127.0.0.3"))).unwrap();
        assert_eq!(retry_after_secs(Duration::from_millis(1500)), 2);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }

    #[test]
    fn ipv6_is_keyed_by_slash_64_and_mapped_v4_by_address() {
        assert_eq!(
            IpKey::from(ip("2001:db8::1")),
            IpKey::from(ip("2001:db8::ffff:1"))
        );
        assert_ne!(
            IpKey::from(ip("2001:db8::1")),
            IpKey::from(ip("2001:db8:0:1::1"))
        );
        assert_eq!(
            IpKey::from(ip("::ffff:10.0.0.1")),
            IpKey::from(ip("10.0.0.1"))
        );
    }

    #[test]
    fn failures_fill_the_box_per_address() {
        let f = Failures::new(
            FailurePolicy {
                limit: 3,
                window: Duration::from_secs(60),
                block_for: Duration::from_secs(600),
            },
            1000,
        );
        let bad = ip("127.0.0.9");
        assert!(!f.record(bad));
        assert!(!f.record(bad));
        assert!(f.blocked(bad).is_none());
        assert!(f.record(bad));
        assert!(f.blocked(bad).unwrap() > Duration::from_secs(590));
        assert!(f.blocked(ip("127.0.0.10")).is_none());
    }

    #[test]
    fn connections_are_counted_and_released() {
        let c = Connections::new(2);
        let a = ip("127.0.0.5");
        let g1 = c.open(a).unwrap();
        let _g2 = c.open(a).unwrap();
        assert!(c.open(a).is_none());
        assert!(c.at_limit(a));
        assert!(c.open(ip("127.0.0.6")).is_some());
        drop(g1);
        assert_eq!(c.count(a), 1);
        assert!(c.open(a).is_some());
    }
}
