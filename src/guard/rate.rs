//! Rate limits per client and per receiver, the penalty box for addresses that keep failing
//! verification, and the cap on concurrent connections per address.

use super::client_ip::Client;
use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use std::hash::Hash;
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
    /// Clients whose forwarded entry was unparsable, per proxy that passed them on: apart from
    /// the proxy's own key, which stands for its well-formed clients too.
    Unparsable(u128),
}

impl From<Client> for IpKey {
    fn from(c: Client) -> Self {
        match c {
            Client::Addr(ip) => IpKey::from(ip),
            Client::Unparsable { via } => IpKey::Unparsable(match via.to_canonical() {
                IpAddr::V4(a) => u128::from(a.to_ipv6_mapped()),
                IpAddr::V6(a) => u128::from(a),
            }),
        }
    }
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

/// Failures counted per key, and the keys in the box. Both maps hold at most `max_tracked`
/// keys: when one is full even after expired entries are swept, a new key is not tracked, so
/// memory stays bounded whatever the number of senders (its sender is still rate limited).
pub struct Failures<K: Hash + Eq> {
    policy: FailurePolicy,
    counts: DashMap<K, (Instant, u32)>,
    blocked: DashMap<K, Instant>,
    max_tracked: usize,
}

impl<K: Hash + Eq + Copy> Failures<K> {
    pub fn new(policy: FailurePolicy, max_tracked: usize) -> Self {
        Failures {
            policy,
            counts: DashMap::new(),
            blocked: DashMap::new(),
            max_tracked,
        }
    }

    /// How long the key is still refused, if it is.
    pub fn blocked(&self, key: K) -> Option<Duration> {
        let until = *self.blocked.get(&key)?;
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            self.blocked.remove(&key);
            None
        } else {
            Some(left)
        }
    }

    /// Counts one failure; returns true when this one put the key in the box.
    pub fn record(&self, key: K) -> bool {
        let now = Instant::now();
        if !self.room_for(&self.counts, &key) {
            return false;
        }
        let mut e = self.counts.entry(key).or_insert((now, 0));
        if now.duration_since(e.0) > self.policy.window {
            *e = (now, 0);
        }
        e.1 += 1;
        if e.1 >= self.policy.limit {
            drop(e);
            self.counts.remove(&key);
            if !self.room_for(&self.blocked, &key) {
                return false;
            }
            self.blocked.insert(key, now + self.policy.block_for);
            return true;
        }
        false
    }

    /// Whether `key` is in `map` or may be added without passing `max_tracked`.
    fn room_for<V>(&self, map: &DashMap<K, V>, key: &K) -> bool {
        if map.len() < self.max_tracked || map.contains_key(key) {
            return true;
        }
        self.sweep();
        map.len() < self.max_tracked
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

    pub fn tracked(&self) -> usize {
        self.counts.len()
    }
}

/// The penalty box. Failures from most addresses block the address for every receiver.
/// Failures from a shared sender's address (one in a provider's range set, such as GitHub's
/// webhook egress, which anyone can aim at fluxgate with a hook of their own) only block it
/// for the receiver they were aimed at, and failures without a receiver (unknown paths) do
/// not count for it: otherwise a stranger's misconfigured hooks would lock a provider out of
/// every receiver.
pub struct PenaltyBox {
    addresses: Failures<IpKey>,
    per_receiver: Failures<(IpKey, u32)>,
}

/// Where a failure counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Against the address, for every receiver.
    Address,
    /// Against the address for this receiver only.
    Receiver(u32),
    /// Nowhere.
    Nowhere,
}

impl PenaltyBox {
    pub fn new(policy: FailurePolicy, max_tracked: usize) -> Self {
        PenaltyBox {
            addresses: Failures::new(policy, max_tracked),
            per_receiver: Failures::new(policy, max_tracked),
        }
    }

    /// How long the key is still refused for every receiver, if it is.
    pub fn blocked(&self, key: IpKey) -> Option<Duration> {
        self.addresses.blocked(key)
    }

    /// How long the key is still refused for `receiver`: blocked for all, or for it alone.
    pub fn blocked_for(&self, key: IpKey, receiver: Option<u32>) -> Option<Duration> {
        let wide = self.addresses.blocked(key);
        let own = receiver.and_then(|r| self.per_receiver.blocked((key, r)));
        wide.max(own)
    }

    /// Counts one failure; true when it put the key in the box (for `scope`).
    pub fn record(&self, key: IpKey, scope: Scope) -> bool {
        match scope {
            Scope::Address => self.addresses.record(key),
            Scope::Receiver(r) => self.per_receiver.record((key, r)),
            Scope::Nowhere => false,
        }
    }

    pub fn sweep(&self) {
        self.addresses.sweep();
        self.per_receiver.sweep();
    }

    pub fn blocked_count(&self) -> usize {
        self.addresses.blocked_count() + self.per_receiver.blocked_count()
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

    fn policy(limit: u32) -> FailurePolicy {
        FailurePolicy {
            limit,
            window: Duration::from_secs(60),
            block_for: Duration::from_secs(600),
        }
    }

    #[test]
    fn failures_fill_the_box_per_address() {
        let f = Failures::new(policy(3), 1000);
        let bad = IpKey::from(ip("127.0.0.9"));
        assert!(!f.record(bad));
        assert!(!f.record(bad));
        assert!(f.blocked(bad).is_none());
        assert!(f.record(bad));
        assert!(f.blocked(bad).unwrap() > Duration::from_secs(590));
        assert!(f.blocked(IpKey::from(ip("127.0.0.10"))).is_none());
    }

    #[test]
    fn failures_scoped_to_a_receiver_block_the_address_for_it_alone() {
        let b = PenaltyBox::new(policy(2), 1000);
        let gh = IpKey::from(ip("140.82.115.10"));
        assert!(!b.record(gh, Scope::Receiver(1)));
        assert!(b.record(gh, Scope::Receiver(1)));
        assert!(b.blocked_for(gh, Some(1)).is_some());
        assert!(b.blocked_for(gh, Some(2)).is_none(), "other receivers");
        assert!(b.blocked_for(gh, None).is_none(), "unknown paths");
        assert!(b.blocked(gh).is_none(), "the connection filter");
        for _ in 0..10 {
            assert!(!b.record(gh, Scope::Nowhere));
        }
        assert!(b.blocked_for(gh, Some(2)).is_none());
        // An address-wide block covers every receiver.
        let other = IpKey::from(ip("203.0.113.7"));
        b.record(other, Scope::Address);
        b.record(other, Scope::Address);
        assert!(b.blocked_for(other, Some(2)).is_some());
        assert!(b.blocked(other).is_some());
    }

    #[test]
    fn the_box_tracks_at_most_max_tracked_keys() {
        let f = Failures::new(policy(2), 100);
        for i in 0..10_000u32 {
            let k = IpKey::V4(i);
            f.record(k);
            f.record(k);
        }
        assert!(f.tracked() <= 100 && f.blocked_count() <= 100);
        assert!(
            f.blocked(IpKey::V4(0)).is_some(),
            "the first ones stay boxed"
        );
        assert!(
            f.blocked(IpKey::V4(9_999)).is_none(),
            "no room: not tracked"
        );
    }

    #[test]
    fn unparsable_clients_are_keyed_apart_from_their_proxy() {
        let proxy = ip("10.0.0.2");
        let via = IpKey::from(Client::Unparsable { via: proxy });
        assert_ne!(via, IpKey::from(proxy));
        assert_eq!(
            via,
            IpKey::from(Client::Unparsable {
                via: ip("::ffff:10.0.0.2")
            })
        );
        assert_ne!(
            via,
            IpKey::from(Client::Unparsable {
                via: ip("10.0.0.3")
            })
        );
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
