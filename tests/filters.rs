//! The cross-namespace switch end to end: the real binary, `fluxgate check`, signed deliveries
//! and the stand-in Kubernetes API.

mod common;
use common::*;
use kube_standin::{Config as ApiConfig, Rule, StandIn};
use serde_json::{json, Value};

const KS: &str = "kustomize.toolkit.fluxcd.io/v1";
const SECRET: &str = "filter-secret";

/// Every group Flux's receiver may target.
const FLUX_GROUPS: &[&str] = &[
    "source.toolkit.fluxcd.io",
    "kustomize.toolkit.fluxcd.io",
    "helm.toolkit.fluxcd.io",
    "image.toolkit.fluxcd.io",
    "source.extensions.fluxcd.io",
];

/// A cluster holding `objects`, where the service account may get, list and patch every Flux
/// kind in flux-system and apps, and nothing else.
fn cluster(objects: Vec<Value>) -> StandIn {
    let mut c = ApiConfig::new().user(SA_TOKEN, SA_USER).allow(
        SA_USER,
        Rule::new(&["get", "list", "patch"], FLUX_GROUPS, &["*"])
            .in_namespaces(&["flux-system", "apps"]),
    );
    for o in objects {
        c = c.object(o);
    }
    StandIn::start(c).unwrap()
}

fn object(api_version: &str, kind: &str, name: &str, labels: Value) -> Value {
    json!({"apiVersion": api_version, "kind": kind,
           "metadata": {"name": name, "namespace": "flux-system", "labels": labels},
           "spec": {"interval": "10m"}})
}

fn ks(name: &str, labels: Value) -> Value {
    object(KS, "Kustomization", name, labels)
}

/// A github receiver named `name` in flux-system; `extra` holds its resources and filters.
fn github(s: &Setup, name: &str, extra: &str) -> String {
    format!(
        "name = \"{name}\"\nnamespace = \"flux-system\"\ntype = \"github\"\nsecret_file = \"{}\"\n{extra}",
        s.secret(name, SECRET).display()
    )
}

/// A signed GitHub push with `body` to receiver `name`; (status, answer).
async fn push(gw: &Gateway, name: &str, body: &Value) -> (u16, String) {
    let body = serde_json::to_vec(body).unwrap();
    let headers = signed(SECRET, &body, &uid());
    gw.post(&hook(SECRET, name, "flux-system"), &refs(&headers), body)
        .await
}

fn push_to(git_ref: &str) -> Value {
    json!({"ref": git_ref, "after": "6113728f27ae82c7b1a177c8d03f9e96e0adf246",
           "repository": {"full_name": "org/app"}})
}

#[test]
fn the_cross_namespace_switch_makes_other_namespaces_a_configuration_error() {
    let s = Setup::new();
    let r = github(
        &s,
        "crossing",
        &format!(
            "resources = [\n  {{ kind = \"GitRepository\", name = \"app\", namespace = \"flux-system\" }},\n  {{ kind = \"Kustomization\", apiVersion = \"{KS}\", name = \"app\", namespace = \"apps\" }},\n]"
        ),
    );
    let s = s.receiver(&r);
    s.offline_kubeconfig();
    let config = s.write_config(8443, 9102);

    // Off by default, as in Flux.
    let run = run_check(&config, &["--offline"], &[]);
    assert_eq!(run.code, Some(0), "{}", run.output());

    let want = "receivers[0].resources[1].namespace: \"apps\" is not the receiver's namespace \"flux-system\"";
    let text = std::fs::read_to_string(&config).unwrap();
    let on = text.replace(
        "[kubernetes]\n",
        "[kubernetes]\nno_cross_namespace_refs = true\n",
    );
    assert_ne!(on, text);
    std::fs::write(&config, &on).unwrap();
    let run = run_check(&config, &["--offline"], &[]);
    assert_eq!(run.code, Some(1), "{}", run.output());
    assert!(run.output().contains(want), "{}", run.output());
    assert!(
        !run.output().contains("resources[0]"),
        "the same namespace, even written out, is fine: {}",
        run.output()
    );

    // From the environment too.
    std::fs::write(&config, &text).unwrap();
    let env = [("FLUXGATE__KUBERNETES__NO_CROSS_NAMESPACE_REFS", "true")];
    let run = run_check(&config, &["--offline"], &env);
    assert_eq!(run.code, Some(1), "{}", run.output());
    assert!(run.output().contains(want), "{}", run.output());
}

#[tokio::test(flavor = "multi_thread")]
async fn with_the_switch_off_another_namespace_is_reconciled() {
    let mut other = ks("app", json!({}));
    other["metadata"]["namespace"] = "apps".into();
    let api = cluster(vec![other]);
    let s = Setup::new();
    let r = github(
        &s,
        "crossing",
        &format!("resources = [{{ kind = \"Kustomization\", apiVersion = \"{KS}\", name = \"app\", namespace = \"apps\" }}]"),
    );
    let gw = s.receiver(&r).start_with(api);
    let (status, answer) = push(&gw, "crossing", &push_to("refs/heads/main")).await;
    assert_eq!(status, 200, "{answer}");
    assert!(gw.annotation(KS, "Kustomization", "apps", "app").is_some());
}
