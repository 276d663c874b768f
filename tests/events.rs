//! `relay.events`: the Event written on each patched object through the stand-in API (with the
//! Role from deploy/events), read back with the real kubectl where installed; refused cleanly
//! without that Role; never written for objects a filter turned down.

use crate::common::*;
use kube_standin::{Rule, StandIn};
use serde_json::Value;
use std::time::{Duration, Instant};

const NS: &str = "flux-system";
const SECRET: &str = "events-webhook-secret";
const AFTER: &str = "9f2c4e1b7a3d5c6e8f0a1b2c3d4e5f6a7b8c9d0e";
const ADMIN_TOKEN: &str = "admin-token-for-events";
const ADMIN_USER: &str = "events-admin";

/// The default cluster, plus an admin for kubectl, plus (when `with_role`) deploy/events' Role.
fn cluster(with_role: bool) -> StandIn {
    let mut cfg = api_config()
        .user(ADMIN_TOKEN, ADMIN_USER)
        .allow(ADMIN_USER, Rule::new(&["*"], &["*"], &["*"]));
    if with_role {
        for rule in deploy_role_rules("events/role.yaml", NS) {
            cfg = cfg.allow(SA_USER, rule);
        }
    }
    StandIn::start(cfg).unwrap()
}

fn start(api: StandIn, resources: &str) -> Gateway {
    let s = Setup::new();
    let secret = s.secret("github", SECRET);
    s.section("[relay]\nevents = true")
        .receiver(&format!(
            "name = \"github\"\nnamespace = \"{NS}\"\ntype = \"github\"\nsecret_file = \"{}\"\n{resources}",
            secret.display()
        ))
        .start_with(api)
}

/// A signed push of `AFTER` on main, padded well past what is kept of it.
async fn push(gw: &Gateway, delivery: &str) -> (u16, String) {
    let body = format!(
        r#"{{"ref":"refs/heads/main","before":"{}","after":"{AFTER}","repository":{{"full_name":"org/app","delivery":"{delivery}","description":"{}"}}}}"#,
        "0".repeat(40),
        "x".repeat(64 * 1024)
    );
    gw.post(
        &hook(SECRET, "github", NS),
        &[
            ("Content-Type", "application/json"),
            ("X-GitHub-Event", "push"),
            ("X-GitHub-Delivery", delivery),
            (
                "X-Hub-Signature-256",
                &sig("sha256", SECRET, body.as_bytes()),
            ),
        ],
        body,
    )
    .await
}

fn events(api: &StandIn) -> Vec<Value> {
    api.objects("v1", "Event", NS)
}

/// Waits for the events to number `n`: they are written after the answer, on their own.
fn wait_events(api: &StandIn, n: usize) -> Vec<Value> {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let e = events(api);
        if e.len() >= n || Instant::now() > until {
            return e;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn each_patch_writes_an_event_naming_the_delivery_and_commit() {
    let gw = start(
        cluster(true),
        "resources = [{ kind = \"GitRepository\", name = \"app\" }, { kind = \"Kustomization\", apiVersion = \"kustomize.toolkit.fluxcd.io/v1\", name = \"app\" }]",
    );
    let (status, body) = push(&gw, "delivery-events-1").await;
    assert_eq!(status, 200, "{body}");

    let evs = wait_events(&gw.api, 2);
    assert_eq!(evs.len(), 2, "{evs:#?}\n{}", gw.logs());
    let git = gw
        .api
        .object("source.toolkit.fluxcd.io/v1", "GitRepository", NS, "app")
        .unwrap();
    let ev = evs
        .iter()
        .find(|e| e["involvedObject"]["kind"] == "GitRepository")
        .expect("an Event on the GitRepository");
    assert_eq!(ev["reason"], "ReconcileRequested");
    assert_eq!(ev["type"], "Normal");
    assert_eq!(
        ev["message"],
        "Reconcile requested by fluxgate receiver flux-system/github, event push, delivery delivery-events-1, commit 9f2c4e1 on refs/heads/main"
    );
    let io = &ev["involvedObject"];
    assert_eq!(io["apiVersion"], "source.toolkit.fluxcd.io/v1");
    assert_eq!(io["namespace"], NS);
    assert_eq!(io["name"], "app");
    assert_eq!(io["uid"], git["metadata"]["uid"], "the uid from the patch");
    assert_eq!(ev["source"]["component"], "fluxgate");
    assert_eq!(ev["reportingComponent"], "fluxgate");
    assert_eq!(ev["count"], 1);
    assert!(ev["firstTimestamp"].as_str().unwrap().ends_with('Z'));
    assert_eq!(ev["firstTimestamp"], ev["lastTimestamp"]);
    assert!(evs
        .iter()
        .any(|e| e["involvedObject"]["kind"] == "Kustomization"));
    assert_eq!(
        gw.scrape()
            .value("fluxgate_kubernetes_events_total", &[("result", "written")]),
        2.0
    );

    // What a person debugging sees: kubectl describe lists the Event under the object.
    if std::path::Path::new("/usr/bin/kubectl").is_file() {
        let home = tempfile::tempdir().unwrap();
        let kubeconfig = home.path().join("kubeconfig");
        gw.api.write_kubeconfig(&kubeconfig, ADMIN_TOKEN).unwrap();
        let out = std::process::Command::new("/usr/bin/kubectl")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["get", "events", "-n", NS, "-o", "json", "--field-selector"])
            .arg("involvedObject.kind=GitRepository,involvedObject.name=app,reason=ReconcileRequested")
            .env_clear()
            .env("HOME", home.path())
            .env("KUBECACHEDIR", home.path().join("cache"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let list: Value = serde_json::from_slice(&out.stdout).unwrap();
        let items = list["items"].as_array().unwrap();
        assert_eq!(items.len(), 1, "{list:#}");
        assert_eq!(items[0]["involvedObject"]["uid"], git["metadata"]["uid"]);
        let out = std::process::Command::new("/usr/bin/kubectl")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["describe", "gitrepository", "app", "-n", NS])
            .env_clear()
            .env("HOME", home.path())
            .env("KUBECACHEDIR", home.path().join("cache"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = text
            .lines()
            .find(|l| l.contains("ReconcileRequested"))
            .unwrap_or_else(|| panic!("no Event in kubectl describe:\n{text}"));
        assert!(
            line.contains("Normal") && line.contains("fluxgate"),
            "{line}"
        );
        assert!(line.contains("commit 9f2c4e1 on refs/heads/main"), "{line}");
    } else {
        eprintln!("note: kubectl not installed; the Event was read through the stand-in only");
    }
}

#[tokio::test]
async fn without_the_role_the_delivery_succeeds_and_the_refusal_is_logged_once_and_counted() {
    let gw = start(
        cluster(false),
        "resources = [{ kind = \"GitRepository\", name = \"app\" }]",
    );
    for i in 0..3 {
        let (status, body) = push(&gw, &format!("delivery-norole-{i}")).await;
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("\"patched\""), "{body}");
    }
    let until = Instant::now() + Duration::from_secs(10);
    while gw
        .scrape()
        .value("fluxgate_kubernetes_events_total", &[("result", "failed")])
        < 3.0
    {
        assert!(Instant::now() < until, "{}", gw.logs());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(events(&gw.api).is_empty());
    let logs = gw.logs();
    let warnings = logs
        .lines()
        .filter(|l| l.contains("cannot write the Kubernetes Event"))
        .count();
    assert_eq!(warnings, 1, "{logs}");
    assert!(logs.contains("403"), "{logs}");
    assert!(!logs.contains(SECRET));
}

#[tokio::test]
async fn no_event_for_objects_a_filter_turned_down() {
    // `app` and `other` share the label; the filter lets only `other` through.
    let gw = start(
        cluster(true),
        "resources = [{ kind = \"GitRepository\", name = \"*\", matchLabels = { app = \"web\" }, filter = \"res.metadata.name == 'other'\" }]",
    );
    let (status, body) = push(&gw, "delivery-filtered").await;
    assert_eq!(status, 200, "{body}");
    let evs = wait_events(&gw.api, 1);
    std::thread::sleep(Duration::from_millis(200));
    let evs = if evs.len() == 1 { events(&gw.api) } else { evs };
    let names: Vec<&str> = evs
        .iter()
        .map(|e| e["involvedObject"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["other"], "{}", gw.logs());
}

/// `fluxgate check` asks whether the account may create events where the targets are: ok with
/// deploy/events' Role, a warning (not a problem: patches still work) without it.
#[test]
fn check_reviews_the_right_to_create_events() {
    for with_role in [true, false] {
        let api = cluster(with_role);
        let s = Setup::new();
        let secret = s.secret("github", SECRET);
        let s = s.section("[relay]\nevents = true").receiver(&format!(
            "name = \"github\"\nnamespace = \"{NS}\"\ntype = \"github\"\nsecret_file = \"{}\"\nresources = [{{ kind = \"GitRepository\", name = \"app\" }}]",
            secret.display()
        ));
        api.write_kubeconfig(&s.path("kubeconfig"), SA_TOKEN)
            .unwrap();
        let run = run_check(&s.write_config(free_port(), free_port()), &[], &[]);
        let ok = run.lines_starting("ok: relay.events: may create events in flux-system");
        let warned = run.lines_starting(
            "warning: relay.events: the service account may not create events in flux-system",
        );
        if with_role {
            assert_eq!((ok.len(), warned.len()), (1, 0), "{}", run.output());
        } else {
            assert_eq!((ok.len(), warned.len()), (0, 1), "{}", run.output());
        }
    }
}
