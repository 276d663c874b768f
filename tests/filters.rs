//! CEL resource filters (`resource_filter`, `resources[].filter`), the cross-namespace switch
//! and every Flux target kind, end to end: the real binary on loopback TLS, signed deliveries,
//! the stand-in Kubernetes API.

use crate::common::*;
use kube_standin::{Config as ApiConfig, Rule, StandIn};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

const GIT: &str = "source.toolkit.fluxcd.io/v1";
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

fn git(name: &str, labels: Value) -> Value {
    object(GIT, "GitRepository", name, labels)
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

/// The objects an answer lists under `field`, as `Kind namespace/name`, sorted.
fn listed(answer: &str, field: &str) -> Vec<String> {
    let v: Value = serde_json::from_str(answer)
        .unwrap_or_else(|e| panic!("the answer is not JSON ({e}): {answer}"));
    let mut out: Vec<String> = v[field]
        .as_array()
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
        .unwrap_or_default();
    out.sort();
    out
}

/// Names of the objects of `kind` that carry a requestedAt, sorted.
fn annotated(gw: &Gateway, api_version: &str, kind: &str, names: &[&str]) -> Vec<String> {
    names
        .iter()
        .filter(|n| gw.annotation(api_version, kind, "flux-system", n).is_some())
        .map(|n| n.to_string())
        .collect()
}

/// Requests the relay made (not the readiness checks), as `METHOD path`, with `(metadata)`
/// when the GET asked for PartialObjectMetadata.
fn calls(gw: &Gateway) -> Vec<String> {
    gw.relayed()
        .iter()
        .map(|r| {
            let meta = r
                .header("accept")
                .is_some_and(|a| a.contains("as=PartialObjectMetadata"));
            // kube writes `?` with no parameters, and `?&` before the first.
            let query: Vec<&str> = r
                .query
                .as_deref()
                .unwrap_or_default()
                .split('&')
                .filter(|p| !p.is_empty())
                .collect();
            let query = if query.is_empty() {
                String::new()
            } else {
                format!("?{}", query.join("&"))
            };
            let meta = if meta { " (metadata)" } else { "" };
            format!("{} {}{query}{meta}", r.method, r.path)
        })
        .collect()
}

const GIT_PATH: &str = "/apis/source.toolkit.fluxcd.io/v1/namespaces/flux-system/gitrepositories";
const KS_PATH: &str = "/apis/kustomize.toolkit.fluxcd.io/v1/namespaces/flux-system/kustomizations";

#[tokio::test(flavor = "multi_thread")]
async fn resource_filter_selects_named_objects_and_label_matches() {
    let api = cluster(vec![
        git("app", json!({"tier": "front"})),
        git("other", json!({"tier": "back"})),
        git("untouched", json!({"tier": "front"})),
        ks("front", json!({"app": "web", "tier": "front"})),
        ks("back", json!({"app": "web", "tier": "back"})),
        ks("elsewhere", json!({"app": "db", "tier": "front"})),
    ]);
    let s = Setup::new();
    let r = github(
        &s,
        "picky",
        &format!(
            "resource_filter = 'res.metadata.labels.tier == \"front\"'\nresources = [\n  {{ kind = \"GitRepository\", name = \"app\" }},\n  {{ kind = \"GitRepository\", name = \"other\" }},\n  {{ kind = \"Kustomization\", apiVersion = \"{KS}\", name = \"*\", matchLabels = {{ app = \"web\" }} }},\n]"
        ),
    );
    let gw = s.receiver(&r).start_with(api);

    let (status, answer) = push(&gw, "picky", &push_to("refs/heads/main")).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        listed(&answer, "patched"),
        [
            "GitRepository flux-system/app",
            "Kustomization flux-system/front"
        ],
        "{answer}"
    );
    assert_eq!(
        listed(&answer, "filtered"),
        [
            "GitRepository flux-system/other",
            "Kustomization flux-system/back"
        ],
        "{answer}"
    );
    let gits = ["app", "other", "untouched"];
    assert_eq!(annotated(&gw, GIT, "GitRepository", &gits), ["app"]);
    let kss = ["front", "back", "elsewhere"];
    assert_eq!(annotated(&gw, KS, "Kustomization", &kss), ["front"]);

    // A named filtered object is read as metadata, a selector is listed as metadata, and only
    // what passed is patched.
    let mut seen = calls(&gw);
    seen.sort();
    let mut want = vec![
        format!("GET {GIT_PATH}/app (metadata)"),
        format!("GET {GIT_PATH}/other (metadata)"),
        format!("GET {KS_PATH}?labelSelector=app%3Dweb (metadata)"),
        format!("PATCH {GIT_PATH}/app"),
        format!("PATCH {KS_PATH}/front"),
    ];
    want.sort();
    assert_eq!(seen, want);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_resources_own_filter_is_anded_with_resource_filter() {
    let api = cluster(vec![
        git("both", json!({"team": "x", "app": "web", "tier": "front"})),
        git(
            "not-front",
            json!({"team": "x", "app": "web", "tier": "back"}),
        ),
        git(
            "not-web",
            json!({"team": "x", "app": "db", "tier": "front"}),
        ),
        ks("web", json!({"team": "x", "app": "web", "tier": "back"})),
        ks("db", json!({"team": "x", "app": "db", "tier": "front"})),
    ]);
    let s = Setup::new();
    let r = github(
        &s,
        "anded",
        &format!(
            "resource_filter = 'res.metadata.labels.app == \"web\"'\nresources = [\n  {{ kind = \"GitRepository\", name = \"*\", matchLabels = {{ team = \"x\" }}, filter = 'res.metadata.labels.tier == \"front\"' }},\n  {{ kind = \"Kustomization\", apiVersion = \"{KS}\", name = \"*\", matchLabels = {{ team = \"x\" }} }},\n]"
        ),
    );
    let gw = s.receiver(&r).start_with(api);

    let (status, answer) = push(&gw, "anded", &push_to("refs/heads/main")).await;
    assert_eq!(status, 200, "{answer}");
    // GitRepositories: both expressions must hold. Kustomizations: resource_filter alone.
    assert_eq!(
        listed(&answer, "patched"),
        [
            "GitRepository flux-system/both",
            "Kustomization flux-system/web"
        ],
        "{answer}"
    );
    assert_eq!(
        listed(&answer, "filtered"),
        [
            "GitRepository flux-system/not-front",
            "GitRepository flux-system/not-web",
            "Kustomization flux-system/db"
        ],
        "{answer}"
    );
    assert_eq!(
        annotated(&gw, GIT, "GitRepository", &["both", "not-front", "not-web"]),
        ["both"]
    );
    assert_eq!(annotated(&gw, KS, "Kustomization", &["web", "db"]), ["web"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_filter_on_the_push_ref_relays_one_push_and_not_another() {
    let api = cluster(vec![git("app", json!({"branch": "main"}))]);
    let s = Setup::new();
    let r = github(
        &s,
        "by-ref",
        "resources = [{ kind = \"GitRepository\", name = \"app\", filter = 'req.ref == \"refs/heads/\" + res.metadata.labels.branch' }]",
    );
    let gw = s.receiver(&r).start_with(api);

    let (status, answer) = push(&gw, "by-ref", &push_to("refs/heads/feature")).await;
    assert_eq!(status, 200, "{answer}");
    assert!(listed(&answer, "patched").is_empty(), "{answer}");
    assert_eq!(
        listed(&answer, "filtered"),
        ["GitRepository flux-system/app"],
        "a push to another branch is filtered out, and the answer says so: {answer}"
    );
    assert_eq!(
        gw.annotation(GIT, "GitRepository", "flux-system", "app"),
        None
    );
    assert!(gw.patches().is_empty());

    let (status, answer) = push(&gw, "by-ref", &push_to("refs/heads/main")).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        listed(&answer, "patched"),
        ["GitRepository flux-system/app"],
        "{answer}"
    );
    let at: Value = serde_json::from_str(&answer).unwrap();
    assert!(answer.find("\"filtered\"").is_none(), "{answer}");
    assert_eq!(
        gw.annotation(GIT, "GitRepository", "flux-system", "app")
            .as_deref(),
        at["requestedAt"].as_str()
    );
}

/// A generic-hmac receiver, which takes any content type, for `req` with and without JSON.
fn generic_hmac(s: &Setup, name: &str, filter: &str) -> String {
    format!(
        "name = \"{name}\"\nnamespace = \"flux-system\"\ntype = \"generic-hmac\"\nsecret_file = \"{}\"\nresources = [{{ kind = \"GitRepository\", name = \"app\", filter = '{filter}' }}]",
        s.secret(name, SECRET).display()
    )
}

async fn post_hmac(gw: &Gateway, name: &str, content_type: &str, body: &[u8]) -> (u16, String) {
    let signature = sig("sha256", SECRET, body);
    gw.post(
        &hook(SECRET, name, "flux-system"),
        &[("Content-Type", content_type), ("X-Signature", &signature)],
        body.to_vec(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn req_is_the_json_body_only_for_a_json_content_type() {
    let api = cluster(vec![git("app", json!({}))]);
    let s = Setup::new();
    let r = generic_hmac(&s, "no-ref", "!has(req.ref)");
    let gw = s.receiver(&r).start_with(api);
    // Three deliveries, each its own body (the same signed body again would be a replay).
    let body = |n: u8| format!(r#"{{"ref":"refs/heads/main","n":{n}}}"#).into_bytes();

    // The same bytes as JSON: req.ref exists, so the object is filtered out.
    let (status, answer) =
        post_hmac(&gw, "no-ref", "application/json; charset=utf-8", &body(1)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        listed(&answer, "filtered"),
        ["GitRepository flux-system/app"]
    );
    assert!(gw.patches().is_empty());

    // As text/plain, req is {} and the filter holds.
    let (status, answer) = post_hmac(&gw, "no-ref", "text/plain", &body(2)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        listed(&answer, "patched"),
        ["GitRepository flux-system/app"]
    );
    assert_eq!(gw.patches().len(), 1);

    // Some comma-separated part of the header being application/json is enough, as in Flux.
    let (status, answer) = post_hmac(&gw, "no-ref", "text/plain, application/json", &body(3)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        listed(&answer, "filtered"),
        ["GitRepository flux-system/app"]
    );
}

/// Flux's documented example: the image name is the tag's last path segment. `last()` (cel-go's
/// optional library) and the strings extension's `split` work as in Flux.
#[tokio::test(flavor = "multi_thread")]
async fn fluxs_documented_last_segment_filter_relays_the_matching_image_only() {
    let api = cluster(vec![git("app", json!({}))]);
    let s = Setup::new();
    let r = generic_hmac(
        &s,
        "by-image",
        "req.tag.split(\"/\").last().value().split(\":\").first().value() == res.metadata.name",
    );
    let gw = s.receiver(&r).start_with(api);

    let other = br#"{"tag":"europe-docker.pkg.dev/proj/repo/other:v1"}"#;
    let (status, answer) = post_hmac(&gw, "by-image", "application/json", other).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        listed(&answer, "filtered"),
        ["GitRepository flux-system/app"]
    );
    assert!(gw.patches().is_empty());

    let app = br#"{"tag":"europe-docker.pkg.dev/proj/repo/app:v1"}"#;
    let (status, answer) = post_hmac(&gw, "by-image", "application/json", app).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        listed(&answer, "patched"),
        ["GitRepository flux-system/app"]
    );
    assert_eq!(gw.patches().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_json_body_that_is_not_an_object_is_refused_when_a_filter_reads_it() {
    let api = cluster(vec![git("app", json!({}))]);
    let s = Setup::new();
    let reads = generic_hmac(&s, "reads-req", "req.ref == \"refs/heads/main\"");
    let ignores = generic_hmac(&s, "ignores-req", "res.metadata.name == \"app\"");
    let gw = s.receiver(&reads).receiver(&ignores).start_with(api);

    for (body, why) in [
        (&b"[1, 2]"[..], "the JSON body is a list, not an object"),
        (&b"{\"ref\": "[..], "the body is not valid JSON"),
        (&b""[..], "the body is not valid JSON"),
    ] {
        let (status, answer) = post_hmac(&gw, "reads-req", "application/json", body).await;
        assert_eq!(status, 400, "{answer}");
        assert!(answer.contains(why), "{answer}");
        assert_eq!(answer.lines().count(), 1, "one line: {answer}");
    }
    assert!(gw.patches().is_empty());

    // No expression reads req: the body is none of the filters' business.
    let (status, answer) = post_hmac(&gw, "ignores-req", "application/json", b"[1, 2]").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        listed(&answer, "patched"),
        ["GitRepository flux-system/app"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_evaluation_error_is_502_and_patches_nothing_of_that_target_only() {
    let api = cluster(vec![
        git("with-branch", json!({"app": "web", "branch": "main"})),
        git("without-branch", json!({"app": "web"})),
        ks("app", json!({})),
    ]);
    let s = Setup::new();
    let r = github(
        &s,
        "erring",
        &format!(
            "resources = [\n  {{ kind = \"GitRepository\", name = \"*\", matchLabels = {{ app = \"web\" }}, filter = 'res.metadata.labels.branch == \"main\"' }},\n  {{ kind = \"Kustomization\", apiVersion = \"{KS}\", name = \"app\" }},\n]"
        ),
    );
    let gw = s.receiver(&r).start_with(api);

    let (status, answer) = push(&gw, "erring", &push_to("refs/heads/main")).await;
    assert_eq!(status, 502, "{answer}");
    assert_eq!(answer.lines().count(), 1, "one line: {answer}");
    assert!(
        answer.starts_with(
            "not reconciled: GitRepository flux-system/* (app=web): filter on without-branch: "
        ),
        "{answer}"
    );
    assert!(answer.contains("branch"), "{answer}");
    // Not even the object whose filter held: the target failed as a whole.
    assert_eq!(
        annotated(
            &gw,
            GIT,
            "GitRepository",
            &["with-branch", "without-branch"]
        ),
        Vec::<String>::new()
    );
    // The other target is still reconciled.
    assert!(gw
        .annotation(KS, "Kustomization", "flux-system", "app")
        .is_some());
    assert_eq!(gw.patches().len(), 1);
    // For good: the failed target is not retried.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(gw.patches().len(), 1, "{:?}", calls(&gw));
    assert!(
        gw.logs()
            .contains("a resource filter could not be evaluated"),
        "{}",
        gw.logs()
    );
}

#[test]
fn a_bad_expression_is_a_configuration_error_naming_its_key() {
    let s = Setup::new();
    let bad_top = github(
        &s,
        "bad-top",
        "resource_filter = 'res.metadata.name =='\nresources = [{ kind = \"GitRepository\", name = \"app\" }]",
    );
    let bad_own = github(
        &s,
        "bad-own",
        "resources = [\n  { kind = \"GitRepository\", name = \"app\" },\n  { kind = \"GitRepository\", name = \"other\", filter = 'res.metadata.labels[' },\n]",
    );
    let claims = github(
        &s,
        "claims",
        "resource_filter = 'claims.sub == \"x\"'\nresources = [{ kind = \"GitRepository\", name = \"app\" }]",
    );
    let s = s.receiver(&bad_top).receiver(&bad_own).receiver(&claims);
    s.offline_kubeconfig();
    let run = run_check(&s.write_config(8443, 9102), &["--offline"], &[]);
    assert_eq!(run.code, Some(1), "{}", run.output());
    let out = run.output();
    for want in [
        "receivers[0].resource_filter: not a valid CEL expression",
        "receivers[1].resources[1].filter: not a valid CEL expression",
        "receivers[2].resource_filter: uses claims, which is not defined here",
    ] {
        assert!(out.contains(want), "expected {want:?} in:\n{out}");
    }
    assert!(
        !out.contains("receivers[1].resources[0]"),
        "only the bad entry is named:\n{out}"
    );
}

/// What Flux's type checker refuses stops the load too, naming the key and the reason, instead
/// of loading and answering 502 to every delivery.
#[test]
fn an_expression_that_cannot_run_or_yield_a_bool_stops_the_load() {
    let s = Setup::new();
    let filters = [
        ("\"test\"", "the expression yields a string, not a bool"),
        (
            "requrest.body.value == \"x\"",
            "undeclared reference to 'requrest'",
        ),
        (
            "req.tag.lst().value() == \"app\"",
            "undeclared reference to 'lst'",
        ),
        ("req.tag", "the expression yields a field of its input"),
    ];
    let mut s = s;
    for (i, (filter, _)) in filters.iter().enumerate() {
        let r = github(
            &s,
            &format!("bad-{i}"),
            &format!(
                "resource_filter = '{filter}'\nresources = [{{ kind = \"GitRepository\", name = \"app\" }}]"
            ),
        );
        s = s.receiver(&r);
    }
    s.offline_kubeconfig();
    let run = run_check(&s.write_config(8443, 9102), &["--offline"], &[]);
    assert_eq!(run.code, Some(1), "{}", run.output());
    let out = run.output();
    for (i, (_, why)) in filters.iter().enumerate() {
        let want = format!("receivers[{i}].resource_filter: {why}");
        assert!(out.contains(&want), "expected {want:?} in:\n{out}");
    }
}

#[test]
fn check_asks_for_get_on_a_filtered_named_target() {
    let s = Setup::new();
    let r = github(
        &s,
        "checked",
        "resources = [\n  { kind = \"GitRepository\", name = \"app\", filter = 'res.metadata.name == \"app\"' },\n  { kind = \"GitRepository\", name = \"other\" },\n]",
    );
    let s = s.receiver(&r);
    // May patch GitRepositories, but not read them.
    let api = StandIn::start(ApiConfig::new().user(SA_TOKEN, SA_USER).allow(
        SA_USER,
        Rule::new(
            &["patch"],
            &["source.toolkit.fluxcd.io"],
            &["gitrepositories"],
        ),
    ))
    .unwrap();
    api.write_kubeconfig(&s.path("kubeconfig"), SA_TOKEN)
        .unwrap();
    let run = run_check(&s.write_config(free_port(), free_port()), &[], &[]);
    assert_eq!(run.code, Some(1), "{}", run.output());
    let problems = run.lines_starting("problem:");
    assert_eq!(problems.len(), 1, "{}", run.output());
    assert!(
        problems[0].contains("may not get gitrepositories.source.toolkit.fluxcd.io in flux-system (needed for GitRepository flux-system/app)"),
        "{}",
        run.output()
    );
}

/// Waits up to 10 s until each of `names` (GitRepositories in flux-system) carries a
/// requestedAt at least `at`.
async fn wait_annotated(gw: &Gateway, names: &[&str], at: OffsetDateTime) {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let lagging: Vec<_> = names
            .iter()
            .filter(|n| {
                gw.annotation(GIT, "GitRepository", "flux-system", n)
                    .and_then(|a| OffsetDateTime::parse(&a, &Rfc3339).ok())
                    .is_none_or(|a| a < at)
            })
            .collect();
        if lagging.is_empty() {
            return;
        }
        assert!(
            Instant::now() < until,
            "{lagging:?} not reconciled as of {at}; requests: {:?}\n{}",
            calls(gw),
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_filtered_job_survives_a_restart_with_its_inputs() {
    let api = cluster(vec![
        git("main", json!({"app": "web", "branch": "main"})),
        git("dev", json!({"app": "web", "branch": "dev"})),
        git("feature", json!({"app": "web", "branch": "feature"})),
    ]);
    let s = Setup::new();
    let queue = s.path("queue");
    let s = s.section(&format!(
        "[relay]\nqueue_dir = \"{}\"\nwait = \"300ms\"\nbackoff_base = \"100ms\"\nbackoff_max = \"300ms\"",
        queue.display()
    ));
    // Deduplication off: the two pushes to main below carry the same body, to share a job,
    // and the same signed body again would otherwise be a replay.
    let r = github(
        &s,
        "durable",
        "replay_window = \"0s\"\nresources = [{ kind = \"GitRepository\", name = \"*\", matchLabels = { app = \"web\" }, filter = 'req.ref == \"refs/heads/\" + res.metadata.labels.branch' }]",
    );
    let mut gw = s.receiver(&r).start_with(api);

    gw.api.set_down(true);
    let mut newest = OffsetDateTime::UNIX_EPOCH;
    // Two pushes to main (the same inputs: one job) and one to dev (another job: merging it
    // into main's would reconcile one branch only).
    for git_ref in ["refs/heads/main", "refs/heads/dev", "refs/heads/main"] {
        let (status, answer) = push(&gw, "durable", &push_to(git_ref)).await;
        assert_eq!(status, 202, "the API is down, so queued: {answer}");
        let v: Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(
            v["queued"],
            json!(["GitRepository flux-system/* (app=web)"])
        );
        let at = OffsetDateTime::parse(v["requestedAt"].as_str().unwrap(), &Rfc3339).unwrap();
        newest = newest.max(at);
    }
    gw.child.kill().unwrap();
    gw.child.wait().unwrap();
    assert!(
        std::fs::read_dir(&queue).unwrap().next().is_some(),
        "the jobs must be on disk in {}",
        queue.display()
    );
    assert!(gw.relayed().is_empty(), "the API was down the whole time");

    gw.api.set_down(false);
    gw.restart();
    // The second push to main is the newest delivery; dev's is older, so only main's
    // annotation must reach `newest`.
    wait_annotated(&gw, &["main"], newest).await;
    wait_annotated(&gw, &["dev"], OffsetDateTime::UNIX_EPOCH).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        gw.annotation(GIT, "GitRepository", "flux-system", "feature"),
        None,
        "the filter still applies after the restart"
    );
    let lists = calls(&gw)
        .into_iter()
        .filter(|c| c.starts_with("GET ") && c.contains("labelSelector"))
        .count();
    assert_eq!(lists, 2, "one job per distinct input: {:?}", calls(&gw));
    assert_eq!(gw.patches().len(), 2, "{:?}", calls(&gw));
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

/// flux-receiver.md §4.2: every kind a Receiver may target, with the apiVersion given only
/// where Flux has no default.
const KINDS: &[(&str, &str, Option<&str>)] = &[
    ("Bucket", "buckets", None),
    ("GitRepository", "gitrepositories", None),
    ("HelmChart", "helmcharts", None),
    ("HelmRepository", "helmrepositories", None),
    ("OCIRepository", "ocirepositories", None),
    ("ImageRepository", "imagerepositories", None),
    ("ArtifactGenerator", "artifactgenerators", None),
    ("Kustomization", "kustomizations", Some(KS)),
    (
        "HelmRelease",
        "helmreleases",
        Some("helm.toolkit.fluxcd.io/v2"),
    ),
    (
        "ImagePolicy",
        "imagepolicies",
        Some("image.toolkit.fluxcd.io/v1"),
    ),
    (
        "ImageUpdateAutomation",
        "imageupdateautomations",
        Some("image.toolkit.fluxcd.io/v1"),
    ),
    (
        "ExternalArtifact",
        "externalartifacts",
        Some("source.toolkit.fluxcd.io/v1"),
    ),
];

/// The apiVersion each kind resolves to: Flux's default, or the one given.
fn api_version_of(kind: &str, given: Option<&str>) -> &'static str {
    match (kind, given) {
        ("ImageRepository", None) => "image.toolkit.fluxcd.io/v1",
        ("ArtifactGenerator", None) => "source.extensions.fluxcd.io/v1beta1",
        (_, None) => GIT,
        ("Kustomization", _) => KS,
        ("HelmRelease", _) => "helm.toolkit.fluxcd.io/v2",
        ("ImagePolicy" | "ImageUpdateAutomation", _) => "image.toolkit.fluxcd.io/v1",
        _ => GIT,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_flux_kind_resolves_and_is_patched_with_and_without_a_filter() {
    let mut objects = Vec::new();
    let mut plain = Vec::new();
    for (kind, _, given) in KINDS {
        let av = api_version_of(kind, *given);
        let (group, version) = av.split_once('/').unwrap();
        // Labels that let a filter check `res` carries the target's own apiVersion and kind.
        let labels = json!({"kind": kind, "group": group, "version": version});
        objects.push(object(av, kind, "plain", labels.clone()));
        objects.push(object(av, kind, "judged", labels));
        plain.push(match given {
            Some(v) => format!("{{ kind = \"{kind}\", apiVersion = \"{v}\", name = \"plain\" }}"),
            None => format!("{{ kind = \"{kind}\", name = \"plain\" }}"),
        });
    }
    let judged: Vec<String> = plain.iter().map(|p| p.replace("plain", "judged")).collect();
    let s = Setup::new();
    let a = github(
        &s,
        "all-kinds",
        &format!("resources = [\n  {}\n]", plain.join(",\n  ")),
    );
    let b = github(
        &s,
        "all-kinds-judged",
        &format!(
            "resource_filter = 'res.kind == res.metadata.labels.kind && res.apiVersion == res.metadata.labels.group + \"/\" + res.metadata.labels.version'\nresources = [\n  {}\n]",
            judged.join(",\n  ")
        ),
    );
    let gw = s.receiver(&a).receiver(&b).start_with(cluster(objects));

    for (receiver, name) in [("all-kinds", "plain"), ("all-kinds-judged", "judged")] {
        let (status, answer) = push(&gw, receiver, &push_to("refs/heads/main")).await;
        assert_eq!(status, 200, "{receiver}: {answer}");
        let mut want: Vec<String> = KINDS
            .iter()
            .map(|(k, _, _)| format!("{k} flux-system/{name}"))
            .collect();
        want.sort();
        assert_eq!(listed(&answer, "patched"), want, "{receiver}");
        assert!(listed(&answer, "filtered").is_empty(), "{answer}");
        for (kind, plural, given) in KINDS {
            let av = api_version_of(kind, *given);
            assert!(
                gw.annotation(av, kind, "flux-system", name).is_some(),
                "{kind} {name} not annotated"
            );
            let path = format!("/apis/{av}/namespaces/flux-system/{plural}/{name}");
            assert!(
                gw.patches()
                    .iter()
                    .any(|p| p.path == path && p.status == 200),
                "no PATCH {path}: {:?}",
                calls(&gw)
            );
        }
    }
}
