//! What a worker counts: the latency histogram, answers per status code and per request kind,
//! errors by kind. Each worker keeps its own and they are merged at the end; only the live
//! totals for the progress line are shared.

use crate::mix::Kind;
use hdrhistogram::Histogram;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

/// Status codes are counted in an array indexed by code; anything outside 0..600 goes to 0.
pub const STATUS_SLOTS: usize = 600;

/// Why a request got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ErrorKind {
    /// The TCP connection (or binding its source address) failed.
    Connect,
    /// The TLS handshake failed.
    Tls,
    /// Reading or writing failed, or the connection closed before a whole answer.
    Io,
    /// No whole answer within `--timeout` (connecting included).
    Timeout,
    /// The answer was not HTTP/1.x as expected.
    Parse,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 5] = [
        ErrorKind::Connect,
        ErrorKind::Tls,
        ErrorKind::Io,
        ErrorKind::Timeout,
        ErrorKind::Parse,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Tls => "tls",
            ErrorKind::Io => "io",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Parse => "parse",
        }
    }
}

/// Counts for one kind of request.
#[derive(Debug, Clone)]
pub struct KindStats {
    pub sent: u64,
    pub status: Vec<u64>,
    pub errors: u64,
}

impl Default for KindStats {
    fn default() -> Self {
        KindStats {
            sent: 0,
            status: vec![0; STATUS_SLOTS],
            errors: 0,
        }
    }
}

/// One worker's counts over the measured part of the run (after the warm-up).
#[derive(Debug, Clone)]
pub struct Stats {
    /// Latency in microseconds, from each request's intended start to its whole answer.
    pub latency: Histogram<u64>,
    pub status: Vec<u64>,
    pub kinds: [KindStats; 3],
    pub errors: [u64; 5],
    /// The first message seen for each error kind.
    pub error_samples: BTreeMap<ErrorKind, String>,
    /// TLS connections established (warm-up included).
    pub connections: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub warmup_responses: u64,
    pub warmup_errors: u64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            // 1 µs to 1 hour at 3 significant digits.
            latency: Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds"),
            status: vec![0; STATUS_SLOTS],
            kinds: Default::default(),
            errors: [0; 5],
            error_samples: BTreeMap::new(),
            connections: 0,
            bytes_sent: 0,
            bytes_received: 0,
            warmup_responses: 0,
            warmup_errors: 0,
        }
    }
}

fn slot(status: u16) -> usize {
    let s = usize::from(status);
    if s < STATUS_SLOTS {
        s
    } else {
        0
    }
}

impl Stats {
    pub fn answered(&mut self, kind: Kind, status: u16, micros: u64) {
        self.latency.saturating_record(micros.max(1));
        self.status[slot(status)] += 1;
        self.kinds[kind.index()].status[slot(status)] += 1;
    }

    pub fn failed(&mut self, kind: Kind, error: ErrorKind, message: impl FnOnce() -> String) {
        self.errors[error as usize] += 1;
        self.kinds[kind.index()].errors += 1;
        self.error_samples.entry(error).or_insert_with(message);
    }

    pub fn responses(&self) -> u64 {
        self.status.iter().sum()
    }

    pub fn error_total(&self) -> u64 {
        self.errors.iter().sum()
    }

    pub fn merge(&mut self, other: &Stats) {
        self.latency
            .add(&other.latency)
            .expect("histograms with the same bounds");
        for (a, b) in self.status.iter_mut().zip(&other.status) {
            *a += b;
        }
        for (a, b) in self.kinds.iter_mut().zip(&other.kinds) {
            a.sent += b.sent;
            a.errors += b.errors;
            for (x, y) in a.status.iter_mut().zip(&b.status) {
                *x += y;
            }
        }
        for (a, b) in self.errors.iter_mut().zip(&other.errors) {
            *a += b;
        }
        for (k, v) in &other.error_samples {
            self.error_samples.entry(*k).or_insert_with(|| v.clone());
        }
        self.connections += other.connections;
        self.bytes_sent += other.bytes_sent;
        self.bytes_received += other.bytes_received;
        self.warmup_responses += other.warmup_responses;
        self.warmup_errors += other.warmup_errors;
    }
}

/// Totals shared by every worker, for the progress line (warm-up included).
#[derive(Debug, Default)]
pub struct Live {
    pub responses: AtomicU64,
    pub errors: AtomicU64,
}

impl Live {
    pub fn snapshot(&self) -> (u64, u64) {
        (
            self.responses.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
        )
    }
}

/// Status counts as `{"202": n, ...}`, without zeros.
pub fn status_map(status: &[u64]) -> BTreeMap<String, u64> {
    status
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(code, n)| {
            let key = if code == 0 {
                "other".to_string()
            } else {
                code.to_string()
            };
            (key, *n)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_adds_up() {
        let mut a = Stats::default();
        a.answered(Kind::Valid, 202, 100);
        a.failed(Kind::BadSig, ErrorKind::Io, || "first".into());
        let mut b = Stats::default();
        b.answered(Kind::Unknown, 404, 300);
        b.answered(Kind::Valid, 999, 200);
        b.failed(Kind::BadSig, ErrorKind::Io, || "second".into());
        a.merge(&b);
        assert_eq!(a.responses(), 3);
        assert_eq!(a.error_total(), 2);
        assert_eq!(a.error_samples[&ErrorKind::Io], "first");
        assert_eq!(a.latency.len(), 3);
        assert_eq!(a.kinds[Kind::BadSig.index()].errors, 2);
        let m = status_map(&a.status);
        assert_eq!(m["202"], 1);
        assert_eq!(m["404"], 1);
        assert_eq!(m["other"], 1);
    }
}
