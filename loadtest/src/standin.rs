//! The stand-in Kubernetes API of `fluxgate-standin` (`loadtest/peers/run.sh` runs it in a
//! process of its own): the objects `fluxgate dev` holds, GitRepository `flux-system/podinfo`
//! and two Kustomizations labelled `app.kubernetes.io/part-of=podinfo`, which one service
//! account may get, list and patch.
use kube_standin::{Config, Rule, StandIn};
use serde_json::json;
use std::path::Path;

pub const SERVICE_ACCOUNT: &str = "system:serviceaccount:flux-system:fluxgate";

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
    rustls::crypto::aws_lc_rs::default_provider()
        .secure_random
        .fill(&mut buf)
        .map_err(|_| "no system randomness".to_string())?;
    Ok(hex::encode(buf))
}

/// Starts the stand-in and writes the service account's kubeconfig (server URL, CA, token) to
/// `kubeconfig`.
pub fn start(kubeconfig: &Path) -> Result<StandIn, String> {
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
    api.write_kubeconfig(kubeconfig, &token)
        .map_err(|e| format!("cannot write {}: {e}", kubeconfig.display()))?;
    Ok(api)
}
