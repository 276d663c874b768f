//! How much of a body a request may send, and the memory a kept body takes: reserved from the
//! shared budget before it is read, and grown with the body, never past the cap.

use super::answer::Answer;
use crate::config::Receiver;
use crate::guard::budget::{BodyBudget, Held};
use crate::refusal::{Cause, Refusal};
use std::sync::Arc;

/// What `Retry-After` suggests when the body budget is used up: held bodies are given back
/// as their requests are answered, within a body timeout at most.
const BODY_MEMORY_RETRY_SECS: u64 = 5;

/// The largest body one request may send.
#[derive(Debug, Clone, Copy)]
pub struct BodyCap {
    pub bytes: u64,
    /// Whether it is the receiver's own `max_body_bytes`, rather than the server's.
    receivers: bool,
}

impl BodyCap {
    /// The server's cap, or the receiver's when lower (always set for body-keeping ones).
    pub fn of(server_max: u64, receiver: &Receiver) -> Self {
        match receiver.max_body_bytes {
            Some(n) if n < server_max => BodyCap {
                bytes: n,
                receivers: true,
            },
            _ => BodyCap {
                bytes: server_max,
                receivers: false,
            },
        }
    }

    /// 413, naming the key that sets the cap.
    pub fn too_large(self) -> Answer {
        let key = if self.receivers {
            " (the receiver's max_body_bytes)"
        } else {
            ""
        };
        Answer::refused(&Refusal::new(
            413,
            Cause::TooLarge,
            format!("body larger than {} bytes{key}", self.bytes),
        ))
    }
}

/// A body kept in memory, and the share of the budget it holds.
#[derive(Debug)]
pub struct KeptBody {
    bytes: Vec<u8>,
    held: Held,
}

impl KeptBody {
    /// Reserves `declared` bytes (the Content-Length, already under the cap; 0 for a chunked
    /// body, which grows as it comes) before any of the body is read.
    pub fn reserve(budget: &Arc<BodyBudget>, declared: u64) -> Result<Self, Answer> {
        let held = budget
            .reserve(declared)
            .ok_or_else(|| over_budget(budget))?;
        let capacity = usize::try_from(declared).unwrap_or(0);
        Ok(KeptBody {
            bytes: Vec::with_capacity(capacity),
            held,
        })
    }

    /// Appends a chunk, first taking from the budget whatever more memory it needs. Growth
    /// doubles as a `Vec`'s would, but never past the cap, so a body at the cap holds the cap.
    pub fn push(&mut self, chunk: &[u8], cap: BodyCap, budget: &BodyBudget) -> Result<(), Answer> {
        let need = self.bytes.len() + chunk.len();
        let capacity = self.bytes.capacity();
        if need > capacity {
            let cap = usize::try_from(cap.bytes).unwrap_or(usize::MAX);
            let want = (capacity * 2).clamp(need, cap.max(need));
            if !self.held.grow((want - capacity) as u64) {
                return Err(over_budget(budget));
            }
            self.bytes.reserve_exact(want - self.bytes.len());
        }
        self.bytes.extend_from_slice(chunk);
        Ok(())
    }

    /// The body, and the reservation to keep until the request is answered.
    pub fn into_parts(self) -> (Vec<u8>, Held) {
        (self.bytes, self.held)
    }
}

/// 503: other requests hold the memory for bodies; this one may come back shortly. Streamed
/// deliveries are not affected.
fn over_budget(budget: &BodyBudget) -> Answer {
    Answer::refused(&Refusal::new(
        503,
        Cause::BodyMemoryFull,
        format!(
            "the memory for request bodies held in flight ({} bytes, limits.body_memory_bytes) is in use; retry later",
            budget.limit()
        ),
    ))
    .retry_after(BODY_MEMORY_RETRY_SECS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cap(bytes: u64) -> BodyCap {
        BodyCap {
            bytes,
            receivers: true,
        }
    }

    #[test]
    fn a_declared_body_holds_its_length_and_no_more() {
        let budget = BodyBudget::new(1000, |_| {});
        let mut body = KeptBody::reserve(&budget, 600).unwrap();
        assert_eq!(budget.held(), 600);
        for _ in 0..6 {
            body.push(&[b'x'; 100], cap(800), &budget).unwrap();
        }
        assert_eq!(budget.held(), 600);
        let a = KeptBody::reserve(&budget, 401).unwrap_err();
        assert_eq!((a.status, a.retry_after), (503, Some(5)));
        assert_eq!(a.outcome, "body_memory_full");
        let (bytes, held) = body.into_parts();
        assert_eq!(bytes.len(), 600);
        drop(held);
        assert_eq!(budget.held(), 0);
    }

    #[test]
    fn a_chunked_body_grows_its_share_chunk_by_chunk_up_to_the_cap() {
        let budget = BodyBudget::new(10_000, |_| {});
        let mut body = KeptBody::reserve(&budget, 0).unwrap();
        let mut sent = 0;
        while sent < 3000 {
            body.push(&[b'x'; 100], cap(3000), &budget).unwrap();
            sent += 100;
            assert!(
                budget.held() >= sent && budget.held() <= 3000,
                "{}",
                budget.held()
            );
        }
        assert_eq!(budget.held(), 3000, "at the cap, the cap is held");
    }

    #[test]
    fn a_chunked_body_past_the_budget_is_refused_and_takes_nothing_more() {
        let budget = BodyBudget::new(250, |_| {});
        let mut body = KeptBody::reserve(&budget, 0).unwrap();
        body.push(&[b'x'; 100], cap(1000), &budget).unwrap();
        body.push(&[b'x'; 100], cap(1000), &budget).unwrap();
        let held = budget.held();
        let a = body.push(&[b'x'; 100], cap(1000), &budget).unwrap_err();
        assert_eq!(a.status, 503);
        assert_eq!(budget.held(), held);
        drop(body);
        assert_eq!(budget.held(), 0);
    }
}
