//! The edge's defences, in the order a request meets them: who the client is, whether its
//! address is allowed, whether it is over its rate or in the penalty box, and whether its
//! delivery was already relayed.

pub mod allow;
pub mod cidr;
pub mod client_ip;
pub mod ranges;
pub mod rate;
pub mod replay;

use crate::config::LimitSettings;
use cidr::IpSet;
use rate::{Connections, Failures, IpKey, Limiter};
use replay::Replays;
use std::net::IpAddr;
use std::time::Duration;

/// The shared state of the defences, consulted by the connection filter and every request.
pub struct Guard {
    per_ip: Option<Limiter<IpKey>>,
    per_receiver: Option<Limiter<u32>>,
    failures: Option<Failures>,
    pub connections: Connections,
    pub replays: Replays,
    /// Peers whose `X-Forwarded-For` is believed; they carry many clients, so they are never
    /// limited or blocked as one.
    pub trusted: IpSet,
}

/// Addresses tracked by the penalty box at most; beyond it, expired entries are swept first.
const MAX_TRACKED_FAILURES: usize = 100_000;

impl Guard {
    pub fn new(limits: &LimitSettings, trusted: IpSet) -> Self {
        Guard {
            per_ip: limits.per_ip.map(Limiter::new),
            per_receiver: limits.per_receiver.map(Limiter::new),
            failures: limits
                .failures
                .map(|f| Failures::new(f, MAX_TRACKED_FAILURES)),
            connections: Connections::new(limits.max_connections_per_ip),
            replays: Replays::new(limits.replay_cache_entries),
            trusted,
        }
    }

    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.contains(ip)
    }

    /// How long `ip` is still in the penalty box.
    pub fn blocked(&self, ip: IpAddr) -> Option<Duration> {
        self.failures.as_ref()?.blocked(ip)
    }

    /// Counts a failed verification or an unknown path; true when it put `ip` in the box.
    pub fn record_failure(&self, ip: IpAddr) -> bool {
        !self.is_trusted(ip) && self.failures.as_ref().is_some_and(|f| f.record(ip))
    }

    pub fn check_ip(&self, ip: IpAddr) -> Result<(), Duration> {
        match &self.per_ip {
            Some(l) if !self.is_trusted(ip) => l.check(&IpKey::from(ip)),
            _ => Ok(()),
        }
    }

    pub fn check_receiver(&self, receiver: u32) -> Result<(), Duration> {
        self.per_receiver
            .as_ref()
            .map_or(Ok(()), |l| l.check(&receiver))
    }

    /// Drops state that no longer limits anyone, so memory follows current traffic.
    pub fn sweep(&self) {
        if let Some(l) = &self.per_ip {
            l.sweep();
        }
        if let Some(l) = &self.per_receiver {
            l.sweep();
        }
        if let Some(f) = &self.failures {
            f.sweep();
        }
    }
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("trusted", &self.trusted)
            .field(
                "blocked",
                &self.failures.as_ref().map_or(0, |f| f.blocked_count()),
            )
            .finish_non_exhaustive()
    }
}
