#![forbid(unsafe_code)]
//! `fluxgate-standin`: a stand-in Kubernetes API in a process of its own, for benchmarks that
//! run `fluxgate serve` as a user would (`loadtest/peers/run.sh`); see
//! [`fluxgate_loadtest::standin`]. Being its own process, it can be pinned off the gateway's
//! core, and its memory and CPU are not the gateway's. It runs until killed.
use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "fluxgate-standin",
    about = "A stand-in Kubernetes API holding podinfo's Flux objects, until killed"
)]
struct Options {
    /// Where to write the kubeconfig (server URL, CA, bearer token).
    #[arg(long)]
    kubeconfig: PathBuf,
    /// Every this often, print the requests received so far and how many were patches
    /// (0s: never).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    report_every: Duration,
}

fn main() -> ExitCode {
    let opts = Options::parse();
    let api = match fluxgate_loadtest::standin::start(&opts.kubeconfig) {
        Ok(api) => api,
        Err(e) => {
            eprintln!("fluxgate-standin: {e}");
            return ExitCode::from(2);
        }
    };
    println!(
        "stand-in Kubernetes API at {}; kubeconfig {}",
        api.url(),
        opts.kubeconfig.display()
    );
    let (mut requests, mut patches) = (0, 0);
    loop {
        if opts.report_every.is_zero() {
            std::thread::sleep(Duration::from_secs(3600));
            continue;
        }
        std::thread::sleep(opts.report_every);
        let reqs = api.requests();
        requests += reqs.len();
        patches += reqs.iter().filter(|r| r.method == "PATCH").count();
        println!("requests {requests} patches {patches}");
        // The record is for counting only: forget it so memory stays flat over long runs.
        api.clear_requests();
    }
}
