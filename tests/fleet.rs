//! One fluxgate, many clusters: `[[clusters]]` beside `[kubernetes]`, each cluster its own
//! stand-in API (its own CA, token and RBAC), and deliveries fanned out by name, `"*"` and
//! label selector, with clusters down, refusing, and fluxgate killed in between.

use crate::common::*;
use kube_standin::{Config as ApiConfig, Rule, StandIn};
use serde_json::Value;
use std::time::{Duration, Instant};

const GIT: &str = "source.toolkit.fluxcd.io/v1";
const APP: &str = "GitRepository flux-system/app";
const APP_PATH: &str =
    "/apis/source.toolkit.fluxcd.io/v1/namespaces/flux-system/gitrepositories/app";

/// A cluster's stand-in: the test objects, its own token, and RBAC that lets the service
/// account patch GitRepositories only when `may_patch`.
fn cluster_api(token: &str, may_patch: bool) -> StandIn {
    let kinds: &[&str] = if may_patch {
        &["gitrepositories", "kustomizations"]
    } else {
        &["kustomizations"]
    };
    let mut c = ApiConfig::new().user(token, SA_USER).allow(
        SA_USER,
        Rule::new(
            &["get", "list", "patch"],
            &["source.toolkit.fluxcd.io", "kustomize.toolkit.fluxcd.io"],
            kinds,
        )
        .in_namespaces(&["flux-system"]),
    );
    for o in flux_objects() {
        c = c.object(o);
    }
    StandIn::start(c).unwrap()
}

/// Extra clusters of a test: their stand-ins, by name.
struct Clusters(Vec<(String, StandIn)>);

impl Clusters {
    fn get(&self, name: &str) -> &StandIn {
        &self.0.iter().find(|(n, _)| n == name).unwrap().1
    }
}

/// Starts one stand-in per `(name, labels, may_patch)` and adds a `[[clusters]]` table for
/// each, with a kubeconfig of its own.
fn with_clusters(mut s: Setup, specs: &[(&str, &str, bool)]) -> (Setup, Clusters) {
    let mut out = Vec::new();
    for (name, labels, may_patch) in specs {
        let token = format!("token-of-{name}");
        let api = cluster_api(&token, *may_patch);
        let kc = s.path(&format!("kubeconfig-{name}"));
        api.write_kubeconfig(&kc, &token).unwrap();
        owner_only(&kc);
        s = s.section(&format!(
            "[[clusters]]\nname = \"{name}\"\nkubeconfig = \"{}\"\ntimeout = \"2s\"\nlabels = {{ {labels} }}",
            kc.display()
        ));
        out.push((name.to_string(), api));
    }
    (s, Clusters(out))
}

fn receiver(s: &Setup, name: &str, extra: &str) -> String {
    format!(
        "name = \"{name}\"\nnamespace = \"flux-system\"\ntype = \"github\"\nsecret_file = \"{}\"\n{extra}",
        s.secret(name, &format!("{name}-secret")).display()
    )
}

const APP_RESOURCE: &str = "resources = [{ kind = \"GitRepository\", name = \"app\" }]";

/// Delivers a signed push to receiver `name`; the status and the JSON answer (or the text).
async fn deliver(gw: &Gateway, name: &str) -> (u16, Value, String) {
    let body = fixture("github/push.json");
    let secret = format!("{name}-secret");
    let headers = signed(&secret, &body, &uid());
    let (status, text) = gw
        .post(&hook(&secret, name, "flux-system"), &refs(&headers), body)
        .await;
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    (status, json, text)
}

/// The names of the objects in a list of patched objects.
fn names(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|o| {
                    format!(
                        "{} {}/{}",
                        o["kind"].as_str().unwrap(),
                        o["namespace"].as_str().unwrap(),
                        o["name"].as_str().unwrap()
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn clusters_in(answer: &Value) -> Vec<String> {
    answer["clusters"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

/// Successful patches of GitRepository flux-system/app the API accepted.
fn app_patches(api: &StandIn) -> usize {
    api.requests()
        .iter()
        .filter(|r| r.method == "PATCH" && r.path == APP_PATH && r.status == 200)
        .count()
}

fn requested_at(api: &StandIn) -> Option<String> {
    api.object(GIT, "GitRepository", "flux-system", "app")?
        .pointer("/metadata/annotations/reconcile.fluxcd.io~1requestedAt")?
        .as_str()
        .map(str::to_string)
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let until = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < until, "not within {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_delivery_fans_out_by_name_by_star_and_by_selector() {
    let (s, fleet) = with_clusters(
        Setup::new(),
        &[
            ("prod-eu", "env = \"prod\", region = \"eu\"", true),
            ("prod-us", "env = \"prod\", region = \"us\"", true),
            ("staging", "env = \"staging\"", true),
        ],
    );
    let by_name = receiver(
        &s,
        "by-name",
        &format!("clusters = [\"prod-eu\", \"staging\"]\n{APP_RESOURCE}"),
    );
    let star = receiver(&s, "star", &format!("clusters = [\"*\"]\n{APP_RESOURCE}"));
    let prod = receiver(
        &s,
        "prod",
        &format!("cluster_selector = {{ env = \"prod\" }}\n{APP_RESOURCE}"),
    );
    // The receiver reaches prod; its Kustomization, overriding it, staging only.
    let mixed = receiver(
        &s,
        "mixed",
        "clusters = [\"prod-us\"]\nresources = [\n  { kind = \"GitRepository\", name = \"app\" },\n  { kind = \"Kustomization\", apiVersion = \"kustomize.toolkit.fluxcd.io/v1\", name = \"app\", clusters = [\"staging\"] },\n]",
    );
    let plain = receiver(&s, "plain", APP_RESOURCE);
    let gw = s
        .receiver(&by_name)
        .receiver(&star)
        .receiver(&prod)
        .receiver(&mixed)
        .receiver(&plain)
        .start();
    let all = || {
        [
            ("default", &gw.api),
            ("prod-eu", fleet.get("prod-eu")),
            ("prod-us", fleet.get("prod-us")),
            ("staging", fleet.get("staging")),
        ]
    };
    let counts = || all().map(|(_, a)| app_patches(a));

    // Without clusters named: the default cluster only, and today's answer.
    let before = counts();
    let (status, answer, text) = deliver(&gw, "plain").await;
    assert_eq!(status, 200, "{text}");
    assert!(answer.get("clusters").is_none(), "{text}");
    assert_eq!(names(&answer["patched"]), [APP], "{text}");
    assert_eq!(counts(), [before[0] + 1, before[1], before[2], before[3]]);

    for (receiver, reached) in [
        ("by-name", vec!["prod-eu", "staging"]),
        ("star", vec!["default", "prod-eu", "prod-us", "staging"]),
        ("prod", vec!["prod-eu", "prod-us"]),
    ] {
        let before = counts();
        let (status, answer, text) = deliver(&gw, receiver).await;
        assert_eq!(status, 200, "{receiver}: {text}");
        assert_eq!(clusters_in(&answer), reached, "{receiver}: {text}");
        for c in &reached {
            assert_eq!(
                names(&answer["clusters"][c]["patched"]),
                [APP],
                "{receiver}: {text}"
            );
        }
        // Today's top-level list: every patch, once per cluster.
        assert_eq!(names(&answer["patched"]).len(), reached.len(), "{text}");
        let after = counts();
        let at = answer["requestedAt"].as_str().unwrap();
        for (i, (name, api)) in all().into_iter().enumerate() {
            let expected = before[i] + usize::from(reached.contains(&name));
            assert_eq!(after[i], expected, "{receiver}: patches in {name}");
            if reached.contains(&name) {
                assert_eq!(requested_at(api).as_deref(), Some(at), "{receiver}: {name}");
            }
        }
    }

    let (status, answer, text) = deliver(&gw, "mixed").await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(clusters_in(&answer), ["prod-us", "staging"], "{text}");
    assert_eq!(names(&answer["clusters"]["prod-us"]["patched"]), [APP]);
    assert_eq!(
        names(&answer["clusters"]["staging"]["patched"]),
        ["Kustomization flux-system/app"],
        "{text}"
    );

    // Metrics carry the cluster.
    let m = gw.scrape();
    for c in ["default", "prod-eu", "prod-us", "staging"] {
        assert!(
            m.value(
                "fluxgate_relay_jobs_total",
                &[
                    ("cluster", c),
                    ("kind", "GitRepository"),
                    ("result", "patched")
                ]
            ) >= 1.0,
            "{c}: {}",
            m.text
        );
        assert_eq!(
            m.get("fluxgate_kubernetes_api_up", &[("cluster", c)]),
            Some(1.0),
            "{c}"
        );
        assert_eq!(
            m.get("fluxgate_relay_queue_depth", &[("cluster", c)]),
            Some(0.0),
            "{c}"
        );
    }
    assert!(
        m.histogram_count(
            "fluxgate_relay_patch_duration_seconds",
            &[("cluster", "staging"), ("kind", "Kustomization")]
        ) >= 1.0
    );
    let (status, body) = http_get(gw.admin, "/readyz").unwrap();
    assert_eq!((status, body.trim()), (200, "ready"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_down_at_delivery_is_patched_when_it_returns_even_after_sigkill() {
    let s = Setup::new();
    let queue = s.path("queue");
    let s = s.section(&format!(
        "[relay]\nqueue_dir = \"{}\"\nwait = \"1s\"\nbackoff_base = \"100ms\"\nbackoff_max = \"300ms\"",
        queue.display()
    ));
    let (s, fleet) = with_clusters(s, &[("prod-eu", "", true), ("prod-us", "", true)]);
    let r = receiver(
        &s,
        "both",
        &format!("clusters = [\"prod-eu\", \"prod-us\"]\n{APP_RESOURCE}"),
    );
    let mut gw = s.receiver(&r).start();
    let (eu, us) = (fleet.get("prod-eu"), fleet.get("prod-us"));

    us.set_down(true);
    let started = Instant::now();
    let (status, answer, text) = deliver(&gw, "both").await;
    assert_eq!(status, 202, "{text}");
    // prod-eu did not wait for prod-us: patched, within relay.wait.
    assert_eq!(
        names(&answer["clusters"]["prod-eu"]["patched"]),
        [APP],
        "{text}"
    );
    assert_eq!(
        answer["clusters"]["prod-us"]["queued"],
        serde_json::json!([APP]),
        "{text}"
    );
    assert_eq!(answer["queued"], serde_json::json!([APP]), "{text}");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(app_patches(eu), 1);
    let at = answer["requestedAt"].as_str().unwrap().to_string();

    // Ready, since the receiver still reaches a cluster; the answer names the one that is not.
    let (status, body) = http_get(gw.admin, "/readyz").unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("unreachable clusters") && body.contains("prod-us"),
        "{body}"
    );
    assert!(!body.contains("prod-eu"), "{body}");
    let m = gw.scrape();
    assert_eq!(
        m.get("fluxgate_kubernetes_api_up", &[("cluster", "prod-us")]),
        Some(0.0)
    );
    assert_eq!(
        m.get("fluxgate_kubernetes_api_up", &[("cluster", "prod-eu")]),
        Some(1.0)
    );
    assert!(m.value("fluxgate_relay_queue_depth", &[("cluster", "prod-us")]) >= 1.0);
    // With every cluster of the receiver down, not ready (once /readyz's 1 s cache is past).
    eu.set_down(true);
    std::thread::sleep(Duration::from_millis(1100));
    let (status, body) = http_get(gw.admin, "/readyz").unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("flux-system/both") && body.contains("prod-eu"),
        "{body}"
    );
    eu.set_down(false);

    // SIGKILL: the prod-us job is on disk; the next process patches it once prod-us is back.
    gw.child.kill().unwrap();
    gw.child.wait().unwrap();
    us.set_down(false);
    assert!(requested_at(us).is_none());
    gw.restart();
    wait_for(
        "prod-us patched after the restart",
        Duration::from_secs(10),
        || requested_at(us).as_deref() == Some(at.as_str()),
    );
    assert_eq!(
        app_patches(eu),
        1,
        "prod-eu's job was done and not repeated"
    );
    assert!(
        gw.api.requests().iter().all(|r| r.method != "PATCH"),
        "default was never reached"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn one_clusters_refusal_leaves_the_others_patched_and_check_names_it() {
    let (s, fleet) = with_clusters(
        Setup::new(),
        &[
            ("prod-eu", "env = \"prod\"", true),
            ("prod-us", "env = \"prod\"", false),
        ],
    );
    let r = receiver(
        &s,
        "prod",
        &format!("cluster_selector = {{ env = \"prod\" }}\n{APP_RESOURCE}"),
    );
    let gw = s.receiver(&r).start();

    let (status, answer, text) = deliver(&gw, "prod").await;
    assert_eq!(status, 502, "{text}");
    assert_eq!(
        names(&answer["clusters"]["prod-eu"]["patched"]),
        [APP],
        "{text}"
    );
    let refused = answer["clusters"]["prod-us"]["refused"][0]
        .as_str()
        .unwrap_or_default();
    assert!(
        refused.starts_with(APP) && refused.contains("403"),
        "{text}"
    );
    assert_eq!(app_patches(fleet.get("prod-eu")), 1);
    assert_eq!(app_patches(fleet.get("prod-us")), 0);
    let m = gw.scrape();
    let jobs = |c, result| {
        m.value(
            "fluxgate_relay_jobs_total",
            &[
                ("cluster", c),
                ("kind", "GitRepository"),
                ("result", result),
            ],
        )
    };
    assert_eq!(
        (jobs("prod-eu", "patched"), jobs("prod-us", "refused")),
        (1.0, 1.0)
    );
    assert_eq!(
        (jobs("prod-eu", "refused"), jobs("prod-us", "patched")),
        (0.0, 0.0)
    );

    let run = run_check(&gw.config_path(), &[], &[]);
    assert_eq!(run.code, Some(1), "{}", run.output());
    assert_eq!(
        run.lines_starting("problem:"),
        [format!(
            "problem: cluster prod-us: may not patch {APP}: the service account may not patch gitrepositories.source.toolkit.fluxcd.io in flux-system (receivers[0] flux-system/prod); see deploy/"
        )],
        "{}",
        run.output()
    );
    for line in [
        format!("ok: cluster prod-eu: may patch {APP} (receivers[0] flux-system/prod)"),
        "ok: cluster default: kubernetes API".to_string(),
        "ok: cluster prod-us: kubernetes API".to_string(),
    ] {
        assert!(
            run.lines_starting(&line).len() == 1,
            "{line}: {}",
            run.output()
        );
    }
}

/// Runs `check --offline` on a configuration with clusters prod-eu and prod-us (env=prod)
/// and one receiver with `extra`; its problems.
fn config_problems(extra_sections: &str, receiver_lines: &str) -> Vec<String> {
    let s = Setup::new();
    s.offline_kubeconfig();
    let kc = s.path("kubeconfig");
    let s = s.section(&format!(
        "[[clusters]]\nname = \"prod-eu\"\nkubeconfig = \"{k}\"\nlabels = {{ env = \"prod\" }}\n\n[[clusters]]\nname = \"prod-us\"\nkubeconfig = \"{k}\"\nlabels = {{ env = \"prod\" }}\n\n{extra_sections}",
        k = kc.display()
    ));
    let r = receiver(&s, "r", receiver_lines);
    let s = s.receiver(&r);
    let run = run_check(
        &s.write_config(free_port(), free_port()),
        &["--offline"],
        &[],
    );
    let problems = run.lines_starting("problem:");
    assert!(
        problems.is_empty() == (run.code == Some(0)),
        "{}",
        run.output()
    );
    problems
}

#[test]
fn cluster_mistakes_are_configuration_errors_naming_the_key() {
    assert_eq!(
        config_problems("", &format!("clusters = [\"prod-eu\"]\n{APP_RESOURCE}")),
        Vec::<String>::new()
    );
    let cases: &[(&str, &str, &str)] = &[
        ("", "clusters = [\"prod-ap\"]", "problem: receivers[0].clusters: no cluster named \"prod-ap\"; configured: default, prod-eu, prod-us"),
        ("", "cluster_selector = { env = \"dev\" }", "problem: receivers[0].clusters: env=dev matches no cluster"),
        ("", "clusters = [\"prod-eu\"]\ncluster_selector = { env = \"prod\" }", "problem: receivers[0].cluster_selector: give clusters or cluster_selector, not both"),
        ("[[clusters]]\nname = \"prod-eu\"\nkubeconfig = \"/k\"", "", "problem: clusters[2].name: duplicate cluster name \"prod-eu\": clusters[0] has it"),
        ("[[clusters]]\nname = \"default\"\nkubeconfig = \"/k\"", "", "problem: clusters[2].name: \"default\" is the cluster of [kubernetes]"),
        ("[[clusters]]\nname = \"Prod.AP\"\nkubeconfig = \"/k\"", "", "problem: clusters[2].name: \"Prod.AP\" is not a valid cluster name"),
    ];
    for (sections, lines, expected) in cases {
        let problems = config_problems(sections, &format!("{lines}\n{APP_RESOURCE}"));
        assert!(
            problems.iter().any(|p| p.starts_with(expected)),
            "expected {expected:?} in {problems:?}"
        );
    }
    // A resource's own key, overriding the receiver's.
    let problems = config_problems(
        "",
        "resources = [{ kind = \"GitRepository\", name = \"app\", clusters = [\"nowhere\"] }]",
    );
    assert!(
        problems.iter().any(|p| p.starts_with(
            "problem: receivers[0].resources[0].clusters: no cluster named \"nowhere\""
        )),
        "{problems:?}"
    );
}
