//! The tarpit: where new connections from addresses in the penalty box are held instead of
//! being closed at once. A flood sender whose connection is closed reconnects at once, and each
//! attempt costs an accept and a close, so a box that only closes keeps paying for the flood.
//! Held, a connection waits for a handshake that never comes until the sender's own timeout,
//! and the flood slows to one attempt per connection per timeout. Held connections are bounded
//! in number (past the bound a new one is closed at once, as without a tarpit) and in time, and
//! nothing they send is kept.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

/// `limits.tarpit_connections` and `limits.tarpit_for`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TarpitPolicy {
    /// Connections held at once, at most.
    pub max: usize,
    /// How long one connection is held at most.
    pub hold: Duration,
}

/// Bytes read (and dropped) from one held connection, at most: a TLS client sends its
/// ClientHello and waits for the server's; one that keeps sending is closed.
pub const MAX_READ: usize = 16 * 1024;

/// The held connections against their bound. Kept across reloads, which only change the
/// bound and the hold: connections already held keep their places until they end.
#[derive(Debug)]
pub struct Tarpit {
    max: AtomicUsize,
    hold_ms: AtomicU64,
    held: AtomicUsize,
}

/// One held connection's place, given back when dropped.
#[derive(Debug)]
pub struct Held {
    tarpit: Arc<Tarpit>,
    /// How long this connection may be held.
    pub hold: Duration,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.tarpit.held.fetch_sub(1, SeqCst);
    }
}

impl Tarpit {
    /// `None`: no tarpit, every boxed connection is closed at once.
    pub fn new(policy: Option<TarpitPolicy>) -> Arc<Self> {
        let t = Arc::new(Tarpit {
            max: AtomicUsize::new(0),
            hold_ms: AtomicU64::new(0),
            held: AtomicUsize::new(0),
        });
        t.set_policy(policy);
        t
    }

    pub fn set_policy(&self, policy: Option<TarpitPolicy>) {
        let (max, hold) = policy.map_or((0, Duration::ZERO), |p| (p.max, p.hold));
        self.max.store(max, SeqCst);
        self.hold_ms
            .store(u64::try_from(hold.as_millis()).unwrap_or(u64::MAX), SeqCst);
    }

    /// Whether a new connection could be held now.
    pub fn has_room(&self) -> bool {
        self.held.load(SeqCst) < self.max.load(SeqCst)
    }

    /// A place for one more held connection, or `None` when the tarpit is full (or off).
    pub fn hold(self: &Arc<Self>) -> Option<Held> {
        let max = self.max.load(SeqCst);
        self.held
            .fetch_update(SeqCst, SeqCst, |n| (n < max).then_some(n + 1))
            .ok()?;
        Some(Held {
            tarpit: self.clone(),
            hold: Duration::from_millis(self.hold_ms.load(SeqCst)),
        })
    }

    pub fn held(&self) -> usize {
        self.held.load(SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max: usize) -> Option<TarpitPolicy> {
        Some(TarpitPolicy {
            max,
            hold: Duration::from_secs(30),
        })
    }

    #[test]
    fn holds_up_to_its_bound_and_gives_places_back() {
        let t = Tarpit::new(policy(2));
        let a = t.hold().unwrap();
        assert_eq!(a.hold, Duration::from_secs(30));
        let _b = t.hold().unwrap();
        assert!(!t.has_room());
        assert!(t.hold().is_none());
        drop(a);
        assert!(t.has_room());
        assert!(t.hold().is_some());
        assert_eq!(t.held(), 1);
    }

    #[test]
    fn without_a_policy_nothing_is_held() {
        let t = Tarpit::new(None);
        assert!(!t.has_room());
        assert!(t.hold().is_none());
    }

    #[test]
    fn a_lower_bound_on_reload_keeps_the_held_and_admits_no_more() {
        let t = Tarpit::new(policy(3));
        let held: Vec<_> = (0..3).map(|_| t.hold().unwrap()).collect();
        t.set_policy(policy(1));
        assert_eq!(t.held(), 3);
        assert!(t.hold().is_none());
        drop(held);
        assert!(t.hold().is_some());
        t.set_policy(None);
        assert!(t.hold().is_none());
    }
}
