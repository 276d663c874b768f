//! fluxgate-loadtest: an HTTPS load generator for webhook deliveries.
//!
//! It sends signed GitHub, GitLab or generic-hmac deliveries, each with a fresh delivery id,
//! mixing valid, bad-signature and unknown-path requests in set proportions, over kept-alive
//! or per-request TLS connections from many loopback source addresses, at a fixed concurrency
//! or a fixed rate; and reports throughput, latency percentiles, answers per status code and
//! errors by kind.
//!
//! ```no_run
//! use clap::Parser;
//! let opts = fluxgate_loadtest::Options::parse_from([
//!     "fluxgate-loadtest", "https://127.0.0.1:8443/hook/abc", "--secret", "s",
//!     "--insecure", "--duration", "2s", "--quiet",
//! ]);
//! let report = fluxgate_loadtest::run(&opts).unwrap();
//! println!("{}", report.to_table());
//! ```

#![forbid(unsafe_code)]

pub mod body;
pub mod fleet;
pub mod http1;
pub mod mix;
pub mod options;
pub mod plan;
pub mod report;
pub mod request;
pub mod run;
pub mod signing;
pub mod sources;
pub mod standin;
pub mod stats;
pub mod target;
pub mod tls;
pub mod worker;

pub use mix::{Kind, MixSpec};
pub use options::Options;
pub use plan::Plan;
pub use report::Report;
pub use signing::{Algorithm, ReceiverType};

/// Prepares and runs; `Err` is a usage or setup problem (bad URL, unreadable file), never an
/// answer from the server.
pub fn run(opts: &Options) -> Result<Report, String> {
    let plan = Plan::new(opts)?;
    Ok(run::execute(plan))
}
