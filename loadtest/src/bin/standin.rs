#![forbid(unsafe_code)]
//! `fluxgate-standin`: a stand-in Kubernetes API in a process of its own, for benchmarks that
//! run `fluxgate serve` as a user would (`loadtest/peers/run.sh`). It holds the objects `fluxgate
//! dev` holds (GitRepository `flux-system/podinfo`, two Kustomizations labelled
//! `app.kubernetes.io/part-of=podinfo`), lets one service account get, list and patch them, and
//! writes that account's kubeconfig. Being its own process, it can be pinned off the gateway's
//! core, and its memory and CPU are not the gateway's.
use clap::Parser;
use kube_standin::{Config, Rule, StandIn};
use serde_json::json;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

const SERVICE_ACCOUNT: &str = "system:serviceaccount:flux-system:fluxgate";

#[derive(Parser, Debug)]
#[command(
    name = "fluxgate-standin",
    about = "A stand-in Kubernetes API holding podinfo's Flux objects, until killed"
)]
struct Options {
    /// Where to write the kubeconfig (server URL, CA, bearer token).
    #[arg(long)]
    kubeconfig: PathBuf,
    /// Every this often, print the requests received so far, by method (0s: never).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    report_every: Duration,
}

fn objects() -> Vec<serde_json::Value> {
    let labels = json!({"app.kubernetes.io/part-of": "podinfo"});
    let kustomization = |name: &str, path: &str| {
        json!({"apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
               "metadata": {"name": name, "namespace": "flux-system", "labels": labels},
               "spec": {"path": path, "interval": "10m", "prune": true}})
    };
    vec![
        json!({"apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "GitRepository",
               "metadata": {"name": "podinfo", "namespace": "flux-system", "labels": labels},
               "spec": {"url": "https://github.com/stefanprodan/podinfo", "interval": "10m"}}),
        kustomization("podinfo", "./kustomize"),
        kustomization("podinfo-extras", "./extras"),
    ]
}

/// A bearer token nobody can guess, as a real service account's would be.
fn token() -> Result<String, String> {
    let mut buf = [0u8; 32];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut buf)
        .map_err(|_| "no system randomness".to_string())?;
    Ok(hex::encode(buf))
}

fn start(opts: &Options) -> Result<StandIn, String> {
    let token = token()?;
    let mut cfg = Config::new().user(&token, SERVICE_ACCOUNT).allow(
        SERVICE_ACCOUNT,
        Rule::new(
            &["get", "list", "patch"],
            &["source.toolkit.fluxcd.io", "kustomize.toolkit.fluxcd.io"],
            &["gitrepositories", "kustomizations"],
        )
        .in_namespaces(&["flux-system"]),
    );
    for o in objects() {
        cfg = cfg.object(o);
    }
    let api = StandIn::start(cfg).map_err(|e| format!("cannot start the stand-in: {e}"))?;
    api.write_kubeconfig(&opts.kubeconfig, &token)
        .map_err(|e| format!("cannot write {}: {e}", opts.kubeconfig.display()))?;
    Ok(api)
}

fn main() -> ExitCode {
    let opts = Options::parse();
    let api = match start(&opts) {
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
