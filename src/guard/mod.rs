//! The edge's defences, in the order a request meets them: who the client is, whether its
//! address is allowed, whether it is over its rate or in the penalty box, and whether its
//! delivery was already relayed.

pub mod allow;
pub mod budget;
pub mod cidr;
pub mod client_ip;
pub mod ranges;
pub mod rate;
pub mod replay;
pub mod tarpit;

use crate::config::LimitSettings;
use budget::BodyBudget;
use cidr::IpSet;
use client_ip::Client;
use ranges::RangeSet;
use rate::{Connections, FailurePolicy, IpKey, Limiter, PenaltyBox, Rate, Scope};
use replay::Replays;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tarpit::Tarpit;

/// The shared state of the defences, consulted by the connection filter and every request.
/// A reload builds a new `Guard` that keeps the old one's state wherever its settings did not
/// change, so a reload neither forgets replays nor lets a blocked address back in.
pub struct Guard {
    per_ip: Option<Arc<(Rate, Limiter<IpKey>)>>,
    per_receiver: Option<Arc<(Rate, Limiter<u32>)>>,
    failures: Option<Arc<(FailurePolicy, PenaltyBox)>>,
    pub connections: Arc<Connections>,
    /// Where boxed addresses' new connections are held; kept across reloads.
    pub tarpit: Arc<Tarpit>,
    pub replays: Arc<Replays>,
    /// Bytes of bodies held in full across requests in flight; kept across reloads.
    pub bodies: Arc<BodyBudget>,
    /// Peers whose `X-Forwarded-For` is believed; they carry many clients, so they are never
    /// limited or blocked as one.
    pub trusted: IpSet,
}

/// Keys tracked by each of the penalty box's maps at most; beyond it, expired entries are
/// swept first, and new keys are not tracked while it is still full.
const MAX_TRACKED_FAILURES: usize = 100_000;

fn report_body_memory(held: u64) {
    crate::metrics::get()
        .body_memory
        .set(i64::try_from(held).unwrap_or(i64::MAX));
}

fn keep<S: PartialEq + Copy, T>(
    old: Option<&Arc<(S, T)>>,
    new: Option<S>,
    make: impl FnOnce(S) -> T,
) -> Option<Arc<(S, T)>> {
    let new = new?;
    match old {
        Some(o) if o.0 == new => Some(o.clone()),
        _ => Some(Arc::new((new, make(new)))),
    }
}

impl Guard {
    pub fn new(limits: &LimitSettings, trusted: IpSet) -> Self {
        Guard {
            per_ip: keep(None, limits.per_ip, Limiter::new),
            per_receiver: keep(None, limits.per_receiver, Limiter::new),
            failures: keep(None, limits.failures, |f| {
                PenaltyBox::new(f, MAX_TRACKED_FAILURES)
            }),
            connections: Arc::new(Connections::new(limits.max_connections_per_ip)),
            tarpit: Tarpit::new(limits.tarpit),
            replays: Arc::new(Replays::new(limits.replay_cache_entries)),
            bodies: BodyBudget::new(limits.body_memory_bytes, report_body_memory),
            trusted,
        }
    }

    /// The guard for new settings, carrying this one's state over where it still applies.
    pub fn reconfigure(&self, limits: &LimitSettings, trusted: IpSet) -> Self {
        self.connections.set_max(limits.max_connections_per_ip);
        self.tarpit.set_policy(limits.tarpit);
        self.replays.set_capacity(limits.replay_cache_entries);
        self.bodies.set_limit(limits.body_memory_bytes);
        Guard {
            per_ip: keep(self.per_ip.as_ref(), limits.per_ip, Limiter::new),
            per_receiver: keep(
                self.per_receiver.as_ref(),
                limits.per_receiver,
                Limiter::new,
            ),
            failures: keep(self.failures.as_ref(), limits.failures, |f| {
                PenaltyBox::new(f, MAX_TRACKED_FAILURES)
            }),
            connections: self.connections.clone(),
            tarpit: self.tarpit.clone(),
            replays: self.replays.clone(),
            bodies: self.bodies.clone(),
            trusted,
        }
    }

    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.contains(ip)
    }

    /// The key a client is limited by, or `None` for a trusted proxy standing for its many
    /// clients (no header, or only proxies in it).
    fn key(&self, client: Client) -> Option<IpKey> {
        match client {
            Client::Addr(ip) if self.is_trusted(ip) => None,
            c => Some(IpKey::from(c)),
        }
    }

    /// How long `client` is still in the penalty box for every receiver: what the connection
    /// filter refuses before the handshake.
    pub fn blocked(&self, client: impl Into<Client>) -> Option<Duration> {
        self.failures.as_ref()?.1.blocked(self.key(client.into())?)
    }

    /// How long `client` is still in the penalty box for `receiver` (`None`: an unknown path),
    /// whether blocked for every receiver or, as a provider's address, for this one.
    pub fn blocked_for(
        &self,
        client: impl Into<Client>,
        receiver: Option<u32>,
    ) -> Option<Duration> {
        self.failures
            .as_ref()?
            .1
            .blocked_for(self.key(client.into())?, receiver)
    }

    /// Counts a failed verification (`receiver` given) or an unknown path (`None`); true when
    /// it put the client in the box. `sets` are the configuration's named range sets: a
    /// failure from a provider's address counts against that receiver only (see
    /// [`PenaltyBox`]).
    pub fn record_failure(
        &self,
        client: impl Into<Client>,
        receiver: Option<u32>,
        sets: &[Arc<RangeSet>],
    ) -> bool {
        let client = client.into();
        let (Some(f), Some(key)) = (&self.failures, self.key(client)) else {
            return false;
        };
        let shared = matches!(client, Client::Addr(ip) if ranges::is_provider(ip, sets));
        let scope = match (shared, receiver) {
            (false, _) => Scope::Address,
            (true, Some(r)) => Scope::Receiver(r),
            (true, None) => Scope::Nowhere,
        };
        f.1.record(key, scope)
    }

    pub fn check_ip(&self, client: impl Into<Client>) -> Result<(), Duration> {
        match (&self.per_ip, self.key(client.into())) {
            (Some(l), Some(key)) => l.1.check(&key),
            _ => Ok(()),
        }
    }

    pub fn check_receiver(&self, receiver: u32) -> Result<(), Duration> {
        self.per_receiver
            .as_ref()
            .map_or(Ok(()), |l| l.1.check(&receiver))
    }

    /// Drops state that no longer limits anyone, so memory follows current traffic.
    pub fn sweep(&self) {
        if let Some(l) = &self.per_ip {
            l.1.sweep();
        }
        if let Some(l) = &self.per_receiver {
            l.1.sweep();
        }
        if let Some(f) = &self.failures {
            f.1.sweep();
        }
    }
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("trusted", &self.trusted)
            .field(
                "blocked",
                &self.failures.as_ref().map_or(0, |f| f.1.blocked_count()),
            )
            .finish_non_exhaustive()
    }
}
