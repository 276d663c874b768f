//! Runs a stand-in with a fluxgate user and prints a kubeconfig path; for
//! poking at it by hand (`cargo run -p kube-standin --example serve`).

use std::io::Read;

use kube_standin::{Config, Rule, StandIn};
use serde_json::json;

fn main() {
    let user = "system:serviceaccount:flux-system:fluxgate";
    let api = StandIn::start(
        Config::new()
            .user("token", user)
            .allow(user, Rule::new(&["*"], &["*"], &["*"]))
            .object(json!({
                "apiVersion": "source.toolkit.fluxcd.io/v1",
                "kind": "GitRepository",
                "metadata": {"name": "app", "namespace": "flux-system", "labels": {"app": "web"}},
                "spec": {"url": "https://example.com/app.git", "interval": "1m"}
            })),
    )
    .expect("stand-in starts");
    let path = std::env::temp_dir().join("kube-standin.kubeconfig");
    api.write_kubeconfig(&path, "token")
        .expect("kubeconfig written");
    println!("{}", path.display());
    println!("press enter to print the recorded requests and stop");
    let _ = std::io::stdin().read(&mut [0u8; 1]);
    for r in api.requests() {
        println!(
            "{} {}{} -> {}  ct={:?} accept={:?} body={}",
            r.method,
            r.path,
            r.query
                .as_deref()
                .map(|q| format!("?{q}"))
                .unwrap_or_default(),
            r.status,
            r.header("content-type"),
            r.header("accept"),
            String::from_utf8_lossy(&r.body)
                .chars()
                .take(300)
                .collect::<String>()
        );
    }
}
