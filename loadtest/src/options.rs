//! The command line.

use crate::mix::MixSpec;
use crate::signing::{Algorithm, ReceiverType};
use clap::{ArgGroup, Parser};
use std::path::PathBuf;
use std::time::Duration;

/// Parses `10s`, `500ms`, `1m30s` (humantime), or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return Ok(Duration::from_secs_f64(secs));
        }
    }
    humantime::parse_duration(s).map_err(|e| format!("bad duration {s:?}: {e}"))
}

fn parse_size(s: &str) -> Result<usize, String> {
    crate::body::parse_size(s)
}

/// Sends signed webhook deliveries over HTTPS and reports throughput, latency percentiles,
/// answers per status code and errors.
// Not `Debug`: `--secret` must never be printed.
#[derive(Parser, Clone)]
#[command(name = "fluxgate-loadtest", version)]
#[command(group(ArgGroup::new("key").required(true).args(["secret", "secret_file"])))]
#[command(group(ArgGroup::new("payload").args(["body", "body_size"])))]
#[command(group(ArgGroup::new("trust").args(["insecure", "ca"])))]
pub struct Options {
    /// The hook's URL, e.g. https://127.0.0.1:8443/hook/<64 hex>.
    pub url: String,

    /// The provider whose deliveries are imitated.
    #[arg(long = "type", value_enum, default_value_t = ReceiverType::Github)]
    pub receiver: ReceiverType,

    /// The receiver's secret (token), read from a file; trailing newlines are dropped.
    #[arg(long, value_name = "FILE")]
    pub secret_file: Option<PathBuf>,

    /// The receiver's secret on the command line (visible to other local users in `ps`:
    /// prefer --secret-file).
    #[arg(long, value_name = "VALUE")]
    pub secret: Option<String>,

    /// The HMAC algorithm: sha256 or sha1 for github (sha1 sends X-Hub-Signature), any for
    /// generic-hmac; gitlab sends its token and ignores it.
    #[arg(long, value_enum, default_value_t = Algorithm::Sha256)]
    pub algorithm: Algorithm,

    /// The event header's value (default: `push` for github, `Push Hook` for gitlab).
    #[arg(long)]
    pub event: Option<String>,

    /// The header that carries the fresh delivery id (default: X-GitHub-Delivery,
    /// X-Gitlab-Event-UUID, X-Delivery-Id for generic-hmac).
    #[arg(long, value_name = "NAME")]
    pub id_header: Option<String>,

    /// Another header for every request, `Name: value`; may be repeated.
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE")]
    pub headers: Vec<String>,

    /// Proportions of valid, bad-signature and unknown-path requests, drawn deterministically
    /// (smooth weighted round robin), e.g. valid=90,badsig=5,unknown=5.
    #[arg(long, default_value = "valid=100")]
    pub mix: MixSpec,

    /// Concurrent connections (closed loop: each sends its next request when the previous is
    /// answered). With --rate, the connections the rate is spread over.
    #[arg(short = 'c', long, default_value_t = 32)]
    pub connections: usize,

    /// Open loop: send this many requests per second in total, each at its intended time,
    /// and measure latency from that time (so a slow server is not hidden by a waiting client).
    #[arg(short = 'r', long, value_name = "REQ/S")]
    pub rate: Option<f64>,

    /// How long to measure, after the warm-up (10s, 500ms, 1m, or seconds).
    #[arg(short = 'd', long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,

    /// Load sent before measuring starts; its answers are not counted.
    #[arg(short = 'w', long, default_value = "0s", value_parser = parse_duration)]
    pub warmup: Duration,

    /// Longest wait for a whole answer, connecting included.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,

    /// Worker threads, each a single-threaded tokio runtime with its share of the connections.
    #[arg(short = 't', long, default_value_t = 1)]
    pub threads: usize,

    /// A new TLS connection per request, with `Connection: close`.
    #[arg(long)]
    pub new_conn: bool,

    /// Bind each new connection to one of N distinct source addresses of --source-net
    /// (round robin; 127.0.0.1 is never one of them). 0: let the system choose.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub sources: usize,

    /// The network source addresses are taken from.
    #[arg(long, default_value = "127.0.0.0/8", value_name = "CIDR")]
    pub source_net: ipnet::IpNet,

    /// The request body, from a file (default: the GitHub push fixture, 7 KB).
    #[arg(long, value_name = "FILE")]
    pub body: Option<PathBuf>,

    /// A generated JSON body of exactly this size: 1024, 64KiB, 25MiB, 1MB...
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    pub body_size: Option<usize>,

    /// Accept any server certificate (the handshake signature is still checked).
    #[arg(short = 'k', long)]
    pub insecure: bool,

    /// Trust the certificates in this PEM file (default: the Mozilla root program).
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,

    /// Do not offer TLS session resumption: every new connection is a full handshake.
    #[arg(long)]
    pub no_tls_resume: bool,

    /// Write the results as JSON to FILE, or with `-` print JSON instead of the table.
    #[arg(long, value_name = "FILE")]
    pub json: Option<String>,

    /// No progress line on stderr.
    #[arg(short = 'q', long)]
    pub quiet: bool,
}
