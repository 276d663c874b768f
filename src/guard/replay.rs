//! Replay protection: a delivery accepted within the window is not relayed again.
//!
//! A delivery is known by its provider's id and, where the signature covers the body, by the
//! digest of that body: the id header is not signed, so a captured delivery sent again with a
//! fresh id (or none) is still the same signed body. Two different events always differ in
//! body (GitHub's `after`, `head_commit` and timestamps), and a provider's redelivery repeats
//! both body and id.
//!
//! Only verified deliveries are recorded, so nobody without the secret can fill the cache or
//! pre-empt an id. The cache holds at most `capacity` marks: the oldest are forgotten first.

use lru::LruCache;
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One thing that identifies a delivery.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Mark {
    /// The provider's delivery id, cut to `MAX_ID` characters.
    Id(String),
    /// SHA-256 of a body whose signature was verified.
    Body([u8; 32]),
}

impl Mark {
    pub fn id(id: &str) -> Mark {
        Mark::Id(id.chars().take(MAX_ID).collect())
    }
}

/// The marks of one delivery: its id, if it has one, and its signed body's digest, if taken.
pub fn marks(id: Option<&str>, body: Option<[u8; 32]>) -> Vec<Mark> {
    id.map(Mark::id)
        .into_iter()
        .chain(body.map(Mark::Body))
        .collect()
}

/// The body's digest, taken while it streams past, so nothing is held to compute it. Off
/// (`None`) when the body is not signed or the receiver does not deduplicate.
pub struct BodyDigest(Option<Sha256>);

impl BodyDigest {
    pub fn new(on: bool) -> Self {
        BodyDigest(on.then(Sha256::new))
    }

    pub fn update(&mut self, chunk: &[u8]) {
        if let Some(h) = self.0.as_mut() {
            h.update(chunk);
        }
    }

    pub fn finish(self) -> Option<[u8; 32]> {
        self.0.map(|h| h.finalize().into())
    }
}

pub struct Replays {
    seen: Mutex<LruCache<(u32, Mark), Instant>>,
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

    /// A duplicate when any of the marks was accepted within the window; otherwise records
    /// them all at once, so two copies arriving together are not both relayed. A duplicate
    /// records nothing.
    pub fn claim(&self, receiver: u32, marks: &[Mark], window: Duration) -> Claim {
        let now = Instant::now();
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let recent = |seen: &mut LruCache<(u32, Mark), Instant>, m: &Mark| {
            seen.get(&(receiver, m.clone()))
                .is_some_and(|at| now.duration_since(*at) < window)
        };
        if marks.iter().any(|m| recent(&mut seen, m)) {
            return Claim::Duplicate;
        }
        for m in marks {
            seen.put((receiver, m.clone()), now);
        }
        while seen.len() > self.capacity.load(Ordering::Relaxed) {
            seen.pop_lru();
        }
        Claim::New
    }

    /// Forgets a claim whose relay failed, so the provider's redelivery is relayed.
    pub fn release(&self, receiver: u32, marks: &[Mark]) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        for m in marks {
            seen.pop(&(receiver, m.clone()));
        }
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

    fn id(s: &str) -> Vec<Mark> {
        vec![Mark::id(s)]
    }

    fn digest(body: &[u8]) -> [u8; 32] {
        let mut d = BodyDigest::new(true);
        for c in body.chunks(3) {
            d.update(c);
        }
        d.finish().unwrap()
    }

    #[test]
    fn duplicates_within_the_window_only() {
        let r = Replays::new(10);
        let w = Duration::from_secs(60);
        assert_eq!(r.claim(0, &id("a"), w), Claim::New);
        assert_eq!(r.claim(0, &id("a"), w), Claim::Duplicate);
        assert_eq!(r.claim(1, &id("a"), w), Claim::New, "ids are per receiver");
        assert_eq!(r.claim(0, &id("b"), w), Claim::New);
        assert_eq!(
            r.claim(0, &id("a"), Duration::ZERO),
            Claim::New,
            "window 0 turns dedup off"
        );
        r.release(0, &id("b"));
        assert_eq!(r.claim(0, &id("b"), w), Claim::New);
    }

    #[test]
    fn the_same_signed_body_is_a_duplicate_whatever_its_id() {
        let r = Replays::new(10);
        let w = Duration::from_secs(60);
        let push = digest(b"{\"after\":\"1\"}");
        let whole: [u8; 32] = Sha256::digest(b"{\"after\":\"1\"}").into();
        assert_eq!(push, whole, "streamed");
        assert_eq!(r.claim(0, &marks(Some("x"), Some(push)), w), Claim::New);
        assert_eq!(
            r.claim(0, &marks(Some("y"), Some(push)), w),
            Claim::Duplicate
        );
        assert_eq!(r.claim(0, &marks(None, Some(push)), w), Claim::Duplicate);
        // A duplicate records nothing: its fresh id is still new with another body.
        let next = digest(b"{\"after\":\"2\"}");
        assert_eq!(r.claim(0, &marks(Some("y"), Some(next)), w), Claim::New);
        assert_eq!(
            r.claim(0, &marks(Some("x"), Some(digest(b"3"))), w),
            Claim::Duplicate,
            "a known id alone"
        );
        // Released together when the relay failed.
        r.release(0, &marks(Some("y"), Some(next)));
        assert_eq!(r.claim(0, &marks(None, Some(next)), w), Claim::New);
        assert_eq!(BodyDigest::new(false).finish(), None);
        assert!(marks(None, None).is_empty());
    }

    #[test]
    fn memory_is_bounded() {
        let r = Replays::new(3);
        let w = Duration::from_secs(60);
        for i in 0..100 {
            r.claim(0, &id(&format!("id-{i}")), w);
        }
        assert_eq!(r.len(), 3);
        assert_eq!(
            r.claim(0, &id("id-0"), w),
            Claim::New,
            "the oldest were forgotten"
        );
        assert_eq!(r.claim(0, &id(&"x".repeat(10_000)), w), Claim::New);
        assert_eq!(
            r.claim(0, &id(&"x".repeat(200)), w),
            Claim::Duplicate,
            "long ids are cut to 128 chars"
        );
    }
}
