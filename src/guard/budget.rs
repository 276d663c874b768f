//! The memory that bodies held in full (for a verifier, a filter that reads `req`, or
//! forwarding) may take across every request in flight. A request reserves what it will hold
//! before reading it, and gives it back when it is answered; past the budget it is refused, so
//! many slow or stalled senders cannot add up to more than the budget. Streamed bodies (HMAC
//! types) hold a chunk at a time and never take from it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Debug)]
pub struct BodyBudget {
    held: AtomicU64,
    limit: AtomicU64,
    /// Called with the bytes held after every change, for the gauge.
    report: fn(u64),
}

/// Bytes taken from the budget, given back when dropped.
#[derive(Debug)]
pub struct Held {
    budget: Arc<BodyBudget>,
    bytes: u64,
}

impl BodyBudget {
    pub fn new(limit: u64, report: fn(u64)) -> Arc<Self> {
        Arc::new(BodyBudget {
            held: AtomicU64::new(0),
            limit: AtomicU64::new(limit),
            report,
        })
    }

    /// A reload changes the limit; what is held stays held, so a lowered limit only refuses
    /// new reservations until enough requests have finished.
    pub fn set_limit(&self, limit: u64) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    pub fn limit(&self) -> u64 {
        self.limit.load(Ordering::Relaxed)
    }

    pub fn held(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }

    /// Takes `bytes` if they fit under the limit with what every other request holds.
    pub fn reserve(self: &Arc<Self>, bytes: u64) -> Option<Held> {
        let mut held = Held {
            budget: self.clone(),
            bytes: 0,
        };
        held.grow(bytes).then_some(held)
    }

    fn take(&self, bytes: u64) -> bool {
        let limit = self.limit();
        let taken = self
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |h| {
                h.checked_add(bytes).filter(|&n| n <= limit)
            });
        if let Ok(before) = taken {
            (self.report)(before + bytes);
        }
        taken.is_ok()
    }

    fn give_back(&self, bytes: u64) {
        let before = self.held.fetch_sub(bytes, Ordering::AcqRel);
        (self.report)(before - bytes);
    }
}

impl Held {
    /// Takes `more` bytes on top of those held; false (and nothing taken) past the budget.
    pub fn grow(&mut self, more: u64) -> bool {
        if more == 0 {
            return true;
        }
        let ok = self.budget.take(more);
        if ok {
            self.bytes += more;
        }
        ok
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.budget.give_back(self.bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_stay_within_the_limit_and_are_given_back_when_dropped() {
        let b = BodyBudget::new(100, |_| {});
        let first = b.reserve(60).unwrap();
        assert!(b.reserve(41).is_none(), "over the limit");
        assert_eq!(b.held(), 60, "a refused reservation takes nothing");
        let mut second = b.reserve(40).unwrap();
        assert_eq!(b.held(), 100);
        assert!(!second.grow(1));
        assert_eq!(second.bytes(), 40);
        drop(first);
        assert_eq!(b.held(), 40);
        assert!(second.grow(60));
        drop(second);
        assert_eq!(b.held(), 0);
    }

    #[test]
    fn a_lowered_limit_refuses_new_reservations_until_enough_are_given_back() {
        let b = BodyBudget::new(100, |_| {});
        let held = b.reserve(80).unwrap();
        b.set_limit(50);
        assert!(b.reserve(1).is_none());
        drop(held);
        assert!(b.reserve(50).is_some());
    }

    #[test]
    fn many_threads_never_hold_more_than_the_limit() {
        let b = BodyBudget::new(1000, |_| {});
        let peak = Arc::new(AtomicU64::new(0));
        std::thread::scope(|s| {
            for _ in 0..8 {
                let (b, peak) = (b.clone(), peak.clone());
                s.spawn(move || {
                    for _ in 0..10_000 {
                        if let Some(h) = b.reserve(300) {
                            peak.fetch_max(b.held(), Ordering::Relaxed);
                            drop(h);
                        }
                    }
                });
            }
        });
        assert!(peak.load(Ordering::Relaxed) <= 1000);
        assert_eq!(b.held(), 0);
    }
}
