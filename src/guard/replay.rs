//! Replay protection: a delivery id accepted within the window is not relayed again.
//!
//! Only verified deliveries are recorded, so nobody without the secret can fill the cache or
//! pre-empt an id. The cache holds at most `capacity` ids: the oldest are forgotten first.

use lru::LruCache;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct Replays {
    seen: Mutex<LruCache<(u32, String), Instant>>,
    capacity: AtomicUsize,
}

/// What `claim` found.
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    /// First time within the window: relay it.
    New,
    /// Already accepted within the window.
    Duplicate,
}

/// Ids longer than this are cut: an id is a UUID or similar, and the cache must stay bounded.
const MAX_ID: usize = 128;

impl Replays {
    pub fn new(capacity: usize) -> Self {
        // Grown as ids arrive rather than allocated up front: most gateways see few deliveries.
        Replays {
            seen: Mutex::new(LruCache::unbounded()),
            capacity: AtomicUsize::new(capacity.max(1)),
        }
    }

    pub fn set_capacity(&self, capacity: usize) {
        self.capacity.store(capacity.max(1), Ordering::Relaxed);
    }

    fn key(receiver: u32, id: &str) -> (u32, String) {
        (receiver, id.chars().take(MAX_ID).collect())
    }

    /// Records the id at once, so two copies arriving together are not both relayed.
    pub fn claim(&self, receiver: u32, id: &str, window: Duration) -> Claim {
        let now = Instant::now();
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let key = Self::key(receiver, id);
        if let Some(at) = seen.get(&key) {
            if now.duration_since(*at) < window {
                return Claim::Duplicate;
            }
        }
        seen.put(key, now);
        while seen.len() > self.capacity.load(Ordering::Relaxed) {
            seen.pop_lru();
        }
        Claim::New
    }

    /// Forgets a claim whose relay failed, so the provider's redelivery is relayed.
    pub fn release(&self, receiver: u32, id: &str) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.pop(&Self::key(receiver, id));
    }

    pub fn len(&self) -> usize {
        self.seen.lock().map(|s| s.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_within_the_window_only() {
        let r = Replays::new(10);
        let w = Duration::from_secs(60);
        assert_eq!(r.claim(0, "a", w), Claim::New);
        assert_eq!(r.claim(0, "a", w), Claim::Duplicate);
        assert_eq!(r.claim(1, "a", w), Claim::New, "ids are per receiver");
        assert_eq!(r.claim(0, "b", w), Claim::New);
        assert_eq!(
            r.claim(0, "a", Duration::ZERO),
            Claim::New,
            "window 0 turns dedup off"
        );
        r.release(0, "b");
        assert_eq!(r.claim(0, "b", w), Claim::New);
    }

    #[test]
    fn memory_is_bounded() {
        let r = Replays::new(3);
        let w = Duration::from_secs(60);
        for i in 0..100 {
            r.claim(0, &format!("id-{i}"), w);
        }
        assert_eq!(r.len(), 3);
        assert_eq!(
            r.claim(0, "id-0", w),
            Claim::New,
            "the oldest were forgotten"
        );
        assert_eq!(r.claim(0, &"x".repeat(10_000), w), Claim::New);
        assert_eq!(
            r.claim(0, &"x".repeat(200), w),
            Claim::Duplicate,
            "long ids are cut to 128 chars"
        );
    }
}
