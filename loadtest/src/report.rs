//! The results: built from the merged counts, printed as a table or as JSON.

use crate::mix::Kind;
use crate::plan::Plan;
use crate::stats::{status_map, ErrorKind, Stats};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

/// Latency percentiles in microseconds (from the HDR histogram, 3 significant digits).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Latency {
    pub min: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

/// Errors by kind.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Errors {
    pub connect: u64,
    pub tls: u64,
    pub io: u64,
    pub timeout: u64,
    pub parse: u64,
    pub total: u64,
    /// The first message of each kind seen.
    pub samples: BTreeMap<String, String>,
}

/// Counts for one kind of request.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct KindReport {
    pub sent: u64,
    pub answered: u64,
    pub errors: u64,
    pub status: BTreeMap<String, u64>,
}

/// The mix's weights.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct MixReport {
    pub valid: u32,
    pub badsig: u32,
    pub unknown: u32,
}

/// Requests sent during the warm-up, not counted anywhere else.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Warmup {
    pub seconds: f64,
    pub answered: u64,
    pub errors: u64,
}

/// Everything a run measured. The JSON output is this structure.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    pub target: String,
    #[serde(rename = "type")]
    pub receiver: &'static str,
    /// `closed` (fixed concurrency) or `open` (fixed rate).
    pub mode: &'static str,
    pub connections: usize,
    pub threads: usize,
    /// The requested rate, for open loop.
    pub rate: Option<f64>,
    pub new_conn: bool,
    pub sources: usize,
    pub body_bytes: usize,
    pub mix: MixReport,
    /// The measured part, as asked.
    pub duration_s: f64,
    /// From the warm-up's end until the last answer came in.
    pub elapsed_s: f64,
    /// Requests sent (answered or not), after the warm-up.
    pub requests: u64,
    /// Requests answered with any status.
    pub answered: u64,
    /// Answers per second over `elapsed_s`.
    pub throughput_rps: f64,
    pub latency_us: Latency,
    /// Answers per status code.
    pub status: BTreeMap<String, u64>,
    /// Answers per status code for each kind of request.
    pub kinds: BTreeMap<&'static str, KindReport>,
    pub errors: Errors,
    /// TLS connections established, warm-up included.
    pub connections_opened: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub warmup: Warmup,
}

impl Report {
    pub fn new(plan: &Plan, s: &Stats, elapsed: Duration) -> Report {
        let h = &s.latency;
        let empty = h.is_empty();
        let q = |p: f64| if empty { 0 } else { h.value_at_quantile(p) };
        let answered = s.responses();
        let errors = s.error_total();
        let elapsed_s = elapsed.as_secs_f64();
        let kinds = Kind::ALL
            .iter()
            .filter(|k| plan.mix.weights[k.index()] > 0 || s.kinds[k.index()].sent > 0)
            .map(|k| {
                let ks = &s.kinds[k.index()];
                (
                    k.as_str(),
                    KindReport {
                        sent: ks.sent,
                        answered: ks.status.iter().sum(),
                        errors: ks.errors,
                        status: status_map(&ks.status),
                    },
                )
            })
            .collect();
        Report {
            target: plan.target.url.clone(),
            receiver: plan.receiver.as_str(),
            mode: if plan.rate.is_some() {
                "open"
            } else {
                "closed"
            },
            connections: plan.connections,
            threads: plan.threads,
            rate: plan.rate,
            new_conn: plan.new_conn,
            sources: plan.sources.len(),
            body_bytes: plan.requests.body.len(),
            mix: MixReport {
                valid: plan.mix.weights[Kind::Valid.index()],
                badsig: plan.mix.weights[Kind::BadSig.index()],
                unknown: plan.mix.weights[Kind::Unknown.index()],
            },
            duration_s: plan.duration.as_secs_f64(),
            elapsed_s,
            requests: answered + errors,
            answered,
            throughput_rps: if elapsed_s > 0.0 {
                answered as f64 / elapsed_s
            } else {
                0.0
            },
            latency_us: Latency {
                min: if empty { 0 } else { h.min() },
                mean: if empty { 0.0 } else { h.mean() },
                p50: q(0.5),
                p90: q(0.9),
                p99: q(0.99),
                p999: q(0.999),
                max: if empty { 0 } else { h.max() },
            },
            status: status_map(&s.status),
            kinds,
            errors: Errors {
                connect: s.errors[ErrorKind::Connect as usize],
                tls: s.errors[ErrorKind::Tls as usize],
                io: s.errors[ErrorKind::Io as usize],
                timeout: s.errors[ErrorKind::Timeout as usize],
                parse: s.errors[ErrorKind::Parse as usize],
                total: errors,
                samples: s
                    .error_samples
                    .iter()
                    .map(|(k, v)| (k.as_str().to_string(), v.clone()))
                    .collect(),
            },
            connections_opened: s.connections,
            bytes_sent: s.bytes_sent,
            bytes_received: s.bytes_received,
            warmup: Warmup {
                seconds: plan.warmup.as_secs_f64(),
                answered: s.warmup_responses,
                errors: s.warmup_errors,
            },
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report serializes")
    }

    /// The human table.
    pub fn to_table(&self) -> String {
        let mut o = String::new();
        let load = match self.rate {
            Some(r) => format!(
                "{} req/s over {} connections (open loop)",
                num(r),
                self.connections
            ),
            None => format!("{} connections (closed loop)", self.connections),
        };
        let conn = if self.new_conn {
            "a new connection per request"
        } else {
            "keep-alive"
        };
        let sources = if self.sources > 0 {
            format!(", {} source addresses", self.sources)
        } else {
            String::new()
        };
        let m = &self.mix;
        let mix = [
            ("valid", m.valid),
            ("badsig", m.badsig),
            ("unknown", m.unknown),
        ]
        .into_iter()
        .filter(|(_, w)| *w > 0)
        .map(|(k, w)| format!("{k}={w}"))
        .collect::<Vec<_>>()
        .join(",");
        let _ = writeln!(o, "target        {} ({})", self.target, self.receiver);
        let _ = writeln!(
            o,
            "load          {load}, {conn}{sources}, {} thread{}",
            self.threads,
            if self.threads == 1 { "" } else { "s" }
        );
        let _ = writeln!(o, "requests      mix {mix}, body {} bytes", self.body_bytes);
        let warm = if self.warmup.seconds > 0.0 {
            format!(
                " (after a {:.1} s warm-up: {} answered, {} errors)",
                self.warmup.seconds,
                num(self.warmup.answered as f64),
                num(self.warmup.errors as f64)
            )
        } else {
            String::new()
        };
        let _ = writeln!(o, "elapsed       {:.2} s{warm}", self.elapsed_s);
        let _ = writeln!(
            o,
            "sent          {} requests: {} answered, {} errors",
            num(self.requests as f64),
            num(self.answered as f64),
            num(self.errors.total as f64)
        );
        let _ = writeln!(o, "throughput    {:.1} req/s", self.throughput_rps);
        let l = &self.latency_us;
        let _ = writeln!(
            o,
            "latency       {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
            "p50", "p90", "p99", "p99.9", "max", "mean"
        );
        let _ = writeln!(
            o,
            "              {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
            us(l.p50 as f64),
            us(l.p90 as f64),
            us(l.p99 as f64),
            us(l.p999 as f64),
            us(l.max as f64),
            us(l.mean)
        );
        let status = |m: &BTreeMap<String, u64>| {
            if m.is_empty() {
                "-".to_string()
            } else {
                m.iter()
                    .map(|(k, v)| format!("{k}: {}", num(*v as f64)))
                    .collect::<Vec<_>>()
                    .join("  ")
            }
        };
        let _ = writeln!(o, "status        {}", status(&self.status));
        for (k, r) in Kind::ALL
            .iter()
            .filter_map(|k| self.kinds.get(k.as_str()).map(|r| (k.as_str(), r)))
        {
            let _ = writeln!(
                o,
                "  {k:<11} {} sent, {} errors; {}",
                num(r.sent as f64),
                num(r.errors as f64),
                status(&r.status)
            );
        }
        let e = &self.errors;
        let _ = writeln!(
            o,
            "errors        connect {}  tls {}  io {}  timeout {}  parse {}",
            e.connect, e.tls, e.io, e.timeout, e.parse
        );
        for (k, msg) in &e.samples {
            let _ = writeln!(o, "  first {k:<7} {msg}");
        }
        let _ = writeln!(
            o,
            "connections   {} opened",
            num(self.connections_opened as f64)
        );
        let _ = writeln!(
            o,
            "transfer      {} sent, {} received",
            bytes(self.bytes_sent),
            bytes(self.bytes_received)
        );
        o
    }
}

/// 12,345 or 12,345.6
fn num(v: f64) -> String {
    let whole = v.trunc() as u64;
    let s = whole.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    let frac = v - v.trunc();
    if frac > 0.0 {
        let _ = write!(out, ".{}", ((frac * 10.0).round() as u64).min(9));
    }
    out
}

/// Microseconds, shown as µs, ms or s.
fn us(v: f64) -> String {
    if v < 1000.0 {
        format!("{v:.0}µs")
    } else if v < 1_000_000.0 {
        format!("{:.2}ms", v / 1000.0)
    } else {
        format!("{:.2}s", v / 1_000_000.0)
    }
}

fn bytes(b: u64) -> String {
    let b = b as f64;
    if b < 1024.0 {
        format!("{b} B")
    } else if b < 1024.0 * 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else if b < 1024.0 * 1024.0 * 1024.0 {
        format!("{:.1} MiB", b / 1024.0 / 1024.0)
    } else {
        format!("{:.2} GiB", b / 1024.0 / 1024.0 / 1024.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(num(0.0), "0");
        assert_eq!(num(1234567.0), "1,234,567");
        assert_eq!(num(999.5), "999.5");
        assert_eq!(us(512.0), "512µs");
        assert_eq!(us(1500.0), "1.50ms");
        assert_eq!(us(2_500_000.0), "2.50s");
        assert_eq!(bytes(100), "100 B");
        assert_eq!(bytes(3 << 20), "3.0 MiB");
    }
}
