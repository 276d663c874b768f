//! Cluster mode end to end: the real binary serves Flux `Receiver` objects from the stand-in
//! API, reads their Secrets with the minimal Role from `deploy/` (get/list/watch on Receivers,
//! get on named Secrets), follows every change live, and keeps serving through watch failures.

use crate::common::*;
use kube_standin::{Config as ApiConfig, StandIn};
use serde_json::{json, Value};
use std::future::Future;
use std::time::{Duration, Instant};

const NS: &str = "flux-system";
const GIT: &str = "source.toolkit.fluxcd.io/v1";
const RECEIVER: &str = "notification.toolkit.fluxcd.io/v1";
/// The defences out of the way: polling an unknown path must not land in the penalty box.
const NO_LIMITS: &str =
    "[limits]\nper_ip = \"off\"\nper_receiver = \"off\"\nblock_after_failures = 0";
const PUSH: &[u8] = br#"{"ref":"refs/heads/main"}"#;

/// `[cluster]` for flux-system, Secrets re-read every second.
fn cluster_section(extra: &str) -> String {
    format!(
        "[cluster]\nwatch_receivers = true\nnamespaces = [\"{NS}\"]\nsecret_refresh = \"1s\"\n{extra}"
    )
}

/// A cluster after `kubectl apply -k deploy/` with the cluster-mode component: the service
/// account has the two Roles, with `secrets` (the Secret names fluxgate may read) as
/// resourceNames, as the operator edits them. Plus the usual Flux objects and `objects`.
fn cluster(secrets: &[&str], objects: Vec<Value>) -> StandIn {
    let mut cfg = ApiConfig::new().user(SA_TOKEN, SA_USER);
    for file in ["role.yaml", "cluster-mode/role.yaml"] {
        for mut rule in deploy_role_rules(file, NS) {
            if !rule.resource_names.is_empty() {
                rule.resource_names = secrets.iter().map(|s| s.to_string()).collect();
            }
            cfg = cfg.allow(SA_USER, rule);
        }
    }
    for o in flux_objects().into_iter().chain(objects) {
        cfg = cfg.object(o);
    }
    StandIn::start(cfg).unwrap()
}

fn b64(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}

fn secret(name: &str, data: &[(&str, &[u8])]) -> Value {
    let data: serde_json::Map<String, Value> = data
        .iter()
        .map(|(k, v)| (k.to_string(), json!(b64(v))))
        .collect();
    json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
           "metadata": {"name": name, "namespace": NS}, "data": data})
}

fn token_secret(name: &str, token: &str) -> Value {
    secret(name, &[("token", token.as_bytes())])
}

fn receiver_object(name: &str, spec: Value) -> Value {
    json!({"apiVersion": RECEIVER, "kind": "Receiver",
           "metadata": {"name": name, "namespace": NS}, "spec": spec})
}

/// A github Receiver for GitRepository `app`, as `flux create receiver` writes it.
fn github(name: &str, secret: &str) -> Value {
    receiver_object(
        name,
        json!({"type": "github", "events": ["ping", "push"], "secretRef": {"name": secret},
               "resources": [{"kind": "GitRepository", "name": "app"}]}),
    )
}

/// A file receiver of its own, so connections are accepted whatever the cluster holds (an
/// address that no receiver allows is closed before TLS).
fn file_receiver(s: &Setup) -> String {
    format!(
        "name = \"from-file\"\nnamespace = \"{NS}\"\ntype = \"generic\"\nsecret_file = \"{}\"\n\
         resources = [{{ kind = \"GitRepository\", name = \"other\" }}]",
        s.secret("from-file", "file-token").display()
    )
}

fn setup(cluster_extra: &str) -> Setup {
    let s = Setup::new()
        .section(&cluster_section(cluster_extra))
        .section(NO_LIMITS);
    let r = file_receiver(&s);
    s.receiver(&r)
}

/// A signed GitHub push to the Receiver `name` whose token is `token`: (status, body).
async fn push(gw: &Gateway, token: &str, name: &str) -> (u16, String) {
    let path = hook(token, name, NS);
    // Another push each time: the same signed body again would be a replay.
    let body = format!(r#"{{"ref":"refs/heads/main","after":"{}"}}"#, commit()).into_bytes();
    gw.post(&path, &refs(&signed(token, &body, &uid())), body)
        .await
}

/// Polls `check` until it holds, for up to 20 s.
async fn eventually<F, Fut>(what: &str, gw: &Gateway, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let until = Instant::now() + Duration::from_secs(20);
    while Instant::now() < until {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "{what} did not happen within 20 s; the gateway's log:\n{}",
        gw.logs()
    );
}

async fn served(gw: &Gateway, token: &str, name: &str) {
    eventually(&format!("{name} served"), gw, || async {
        push(gw, token, name).await.0 == 200
    })
    .await;
}

async fn gone(gw: &Gateway, token: &str, name: &str) {
    eventually(&format!("{name} removed"), gw, || async {
        push(gw, token, name).await.0 == 404
    })
    .await;
}

fn ready(gw: &Gateway) -> (u16, String) {
    http_get(gw.admin, "/readyz").unwrap()
}

async fn wait_ready(gw: &Gateway) {
    eventually("/readyz 200", gw, || async { ready(gw).0 == 200 }).await;
}

#[tokio::test]
async fn a_receiver_made_at_run_time_follows_its_object_and_secret() {
    let gw = setup("").start_with(cluster(&["webhook-token"], Vec::new()));
    wait_ready(&gw).await;
    assert_eq!(
        gw.metric("fluxgate_cluster_watch_up{cluster=\"default\",namespace=\"flux-system\"}"),
        1.0
    );

    // The Secret's token is used as stored: its trailing newline is part of the path and the
    // HMAC key, as in Flux (unlike secret files, which fluxgate trims).
    gw.api
        .put_object(token_secret("webhook-token", "first-token\n"));
    gw.api
        .put_object(github("github-receiver", "webhook-token"));
    served(&gw, "first-token\n", "github-receiver").await;
    let (status, body) = push(&gw, "first-token\n", "github-receiver").await;
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["receiver"], "flux-system/github-receiver");
    assert_eq!(answer["relayed"], true);
    assert!(gw.annotation(GIT, "GitRepository", NS, "app").is_some());
    assert_eq!(push(&gw, "first-token", "github-receiver").await.0, 404);

    // A new token moves the path after the next refresh: the old one is gone.
    gw.api
        .put_object(token_secret("webhook-token", "second-token"));
    served(&gw, "second-token", "github-receiver").await;
    assert_eq!(push(&gw, "first-token\n", "github-receiver").await.0, 404);

    // Without its Secret, the Receiver is not served (Flux clears its path).
    gw.api.delete_object("v1", "Secret", NS, "webhook-token");
    gone(&gw, "second-token", "github-receiver").await;
    assert!(gw
        .logs()
        .contains("Secret flux-system/webhook-token not found"));
    // A Secret without a token key neither.
    gw.api
        .put_object(secret("webhook-token", &[("password", b"x")]));
    eventually("the missing key logged", &gw, || async {
        gw.logs()
            .contains("Secret flux-system/webhook-token has no \"token\" key")
    })
    .await;
    gw.api
        .put_object(token_secret("webhook-token", "third-token"));
    served(&gw, "third-token", "github-receiver").await;

    // Deleting the Receiver removes its path at once (the watch), not at the next refresh.
    gw.api
        .delete_object(RECEIVER, "Receiver", NS, "github-receiver");
    gone(&gw, "third-token", "github-receiver").await;

    // The minimal Role was enough: nothing was refused, and Secrets were only ever read one by
    // one by name, never listed or watched.
    let requests = gw.api.requests();
    let refused: Vec<_> = requests.iter().filter(|r| r.status == 403).collect();
    assert!(refused.is_empty(), "{refused:?}");
    let secret_reads: Vec<_> = requests
        .iter()
        .filter(|r| r.path.contains("/secrets"))
        .collect();
    assert!(!secret_reads.is_empty());
    for r in secret_reads {
        assert_eq!(r.method, "GET");
        assert_eq!(
            r.path,
            "/api/v1/namespaces/flux-system/secrets/webhook-token"
        );
        assert!(
            r.query.as_deref().is_none_or(|q| !q.contains("watch")),
            "{r:?}"
        );
    }
    assert!(requests.iter().any(|r| r.path
        == "/apis/notification.toolkit.fluxcd.io/v1/namespaces/flux-system/receivers"
        && r.query.as_deref().is_some_and(|q| q.contains("watch=true"))));
    // Tokens stay out of the log.
    let logs = gw.logs();
    for t in ["first-token", "second-token", "third-token"] {
        assert!(!logs.contains(t), "{t} in the log");
    }
}

#[tokio::test]
async fn a_suspended_receiver_answers_503() {
    let mut r = github("github-receiver", "webhook-token");
    r["spec"]["suspend"] = json!(true);
    let api = cluster(
        &["webhook-token"],
        vec![token_secret("webhook-token", "t"), r.clone()],
    );
    let gw = setup("").start_with(api);
    wait_ready(&gw).await;
    let (status, body) = push(&gw, "t", "github-receiver").await;
    assert_eq!(
        (status, body.trim()),
        (503, "receiver is suspended (spec.suspend)")
    );
    assert_eq!(
        gw.metric("fluxgate_cluster_receivers{cluster=\"default\",state=\"suspended\"}"),
        1.0
    );
    assert!(
        gw.api.object(GIT, "GitRepository", NS, "app").unwrap()["metadata"]["annotations"]
            .get("reconcile.fluxcd.io/requestedAt")
            .is_none()
    );

    r["spec"]["suspend"] = json!(false);
    gw.api.put_object(r);
    served(&gw, "t", "github-receiver").await;
    assert_eq!(
        gw.metric("fluxgate_cluster_receivers{cluster=\"default\",state=\"served\"}"),
        1.0
    );
}

#[tokio::test]
async fn invalid_receivers_are_skipped_and_the_others_keep_working() {
    let objects = vec![
        token_secret("webhook-token", "t"),
        secret("no-token", &[("password", b"x")]),
        token_secret("not-granted", "t"),
        github("good", "webhook-token"),
        receiver_object(
            "bad-cel",
            json!({"type": "github", "secretRef": {"name": "webhook-token"},
                   "resourceFilter": "res.metadata.name ==",
                   "resources": [{"kind": "GitRepository", "name": "app"}]}),
        ),
        receiver_object(
            "bad-type",
            json!({"type": "githubb", "secretRef": {"name": "webhook-token"},
                   "resources": [{"kind": "GitRepository", "name": "app"}]}),
        ),
        receiver_object(
            "bad-resource",
            json!({"type": "github", "secretRef": {"name": "webhook-token"},
                   "resources": [{"kind": "Kustomization", "name": "app"}]}),
        ),
        github("no-token", "no-token"),
        github("forbidden", "not-granted"),
    ];
    let gw = setup("").start_with(cluster(&["webhook-token", "no-token"], objects));
    wait_ready(&gw).await;
    served(&gw, "t", "good").await;
    for name in [
        "bad-cel",
        "bad-type",
        "bad-resource",
        "no-token",
        "forbidden",
    ] {
        assert_eq!(push(&gw, "t", name).await.0, 404, "{name}");
    }
    let logs = gw.logs();
    for expected in [
        "Receiver flux-system/bad-cel is not served: spec.resourceFilter: ",
        "Receiver flux-system/bad-type is not served: spec.type: unknown receiver type \"githubb\"",
        "Receiver flux-system/bad-resource is not served: spec.resources[0].apiVersion: Flux has no default apiVersion for Kustomization",
        "Receiver flux-system/no-token is not served: spec.secretRef: Secret flux-system/no-token has no \"token\" key",
        "Receiver flux-system/forbidden is not served: spec.secretRef: not allowed to get Secret flux-system/not-granted",
    ] {
        assert!(logs.contains(expected), "no {expected:?} in:\n{logs}");
    }
    assert_eq!(
        gw.metric("fluxgate_cluster_receivers{cluster=\"default\",state=\"skipped\"}"),
        5.0
    );
    assert_eq!(
        gw.metric("fluxgate_cluster_receivers{cluster=\"default\",state=\"served\"}"),
        1.0
    );
    assert!(
        gw.metric("fluxgate_cluster_secret_reads_total{cluster=\"default\",result=\"forbidden\"}")
            >= 1.0
    );

    // Fixing the object serves it, without touching the others.
    gw.api.put_object(receiver_object(
        "bad-cel",
        json!({"type": "github", "secretRef": {"name": "webhook-token"},
               "resourceFilter": "res.metadata.name == 'app'",
               "resources": [{"kind": "GitRepository", "name": "app"}]}),
    ));
    served(&gw, "t", "bad-cel").await;
    assert_eq!(push(&gw, "t", "good").await.0, 200);
}

#[tokio::test]
async fn the_file_wins_a_clash_and_cluster_receivers_survive_reloads() {
    let api = cluster(
        &["webhook-token", "other-token"],
        vec![
            token_secret("webhook-token", "shared"),
            token_secret("other-token", "other"),
            github("github-receiver", "webhook-token"),
            github("second", "other-token"),
        ],
    );
    let s = setup("[cluster.defaults]\nreplay_window = \"1h\"\n");
    // The same name, namespace and token as a Receiver object: the same path.
    let clash = format!(
        "name = \"github-receiver\"\nnamespace = \"{NS}\"\ntype = \"generic\"\nsecret_file = \"{}\"\n\
         resources = [{{ kind = \"GitRepository\", name = \"lonely\" }}]",
        s.secret("shared", "shared").display()
    );
    let gw = s.receiver(&clash).start_with(api);
    wait_ready(&gw).await;
    served(&gw, "other", "second").await;
    let path = hook("shared", "github-receiver", NS);
    // The file's generic receiver answers: no signature needed.
    let (status, body) = gw.post(&path, &[], "{}").await;
    assert_eq!(status, 200, "{body}");
    assert!(gw.annotation(GIT, "GitRepository", NS, "lonely").is_some());
    assert!(gw.logs().contains("the Receiver object flux-system/github-receiver is not served: a receiver in the configuration file has the same hook path"));

    // [cluster.defaults] applies: a delivery id seen within the hour is a duplicate.
    let headers = signed("other", PUSH, "the-same-delivery");
    let other = hook("other", "second", NS);
    assert_eq!(gw.post(&other, &refs(&headers), PUSH).await.0, 200);
    let (_, body) = gw.post(&other, &refs(&headers), PUSH).await;
    assert!(body.contains("\"duplicate\":true"), "{body}");

    // A reload keeps the cluster's receivers; once the file no longer has the clashing one,
    // the Receiver object takes its path.
    let mut text = std::fs::read_to_string(gw.config_path()).unwrap();
    let at = text.rfind("[[receivers]]").unwrap();
    text.truncate(at);
    replace_file(&gw.config_path(), text);
    gw.signal("HUP");
    eventually("the clash resolved", &gw, || async {
        gw.post(&path, &[("Content-Type", "application/json")], "{}")
            .await
            .0
            == 401
    })
    .await;
    assert_eq!(push(&gw, "shared", "github-receiver").await.0, 200);
    assert_eq!(push(&gw, "other", "second").await.0, 200);
}

#[tokio::test]
async fn the_watch_survives_restarts_dropped_watches_and_compaction() {
    let api = cluster(
        &["webhook-token"],
        vec![
            token_secret("webhook-token", "t"),
            github("before", "webhook-token"),
        ],
    );
    let gw = setup("").start_with(api);
    wait_ready(&gw).await;
    served(&gw, "t", "before").await;

    // The API server goes away: the last known receivers stay served (the delivery is queued),
    // the failure is counted and the watch reported down.
    gw.api.set_down(true);
    eventually("the watch reported down", &gw, || async {
        gw.metric("fluxgate_cluster_watch_up{cluster=\"default\",namespace=\"flux-system\"}") == 0.0
    })
    .await;
    assert!(
        gw.metric(
            "fluxgate_cluster_watch_failures_total{cluster=\"default\",namespace=\"flux-system\"}"
        ) >= 1.0
    );
    assert_eq!(push(&gw, "t", "before").await.0, 202);
    // Changes while it is down, that no watch could have seen.
    gw.api.delete_object(RECEIVER, "Receiver", NS, "before");
    gw.api.put_object(github("while-down", "webhook-token"));
    tokio::time::sleep(Duration::from_secs(1)).await;
    gw.api.set_down(false);
    served(&gw, "t", "while-down").await;
    gone(&gw, "t", "before").await;
    eventually("the watch reported up", &gw, || async {
        gw.metric("fluxgate_cluster_watch_up{cluster=\"default\",namespace=\"flux-system\"}") == 1.0
    })
    .await;
    assert!(gw.logs().contains("watching Receivers again"));

    // A watch the server ends resumes where it was, and none of what follows is a failure.
    let failures = gw.metric(
        "fluxgate_cluster_watch_failures_total{cluster=\"default\",namespace=\"flux-system\"}",
    );
    gw.api.end_watches();
    gw.api.put_object(github("after-end", "webhook-token"));
    served(&gw, "t", "after-end").await;
    // Ended again after the history was compacted: the resumed watch is told to list again.
    gw.api.end_watches();
    gw.api.compact();
    gw.api.delete_object(RECEIVER, "Receiver", NS, "after-end");
    gw.api
        .put_object(github("after-compaction", "webhook-token"));
    served(&gw, "t", "after-compaction").await;
    gone(&gw, "t", "after-end").await;
    assert_eq!(push(&gw, "t", "while-down").await.0, 200);
    assert_eq!(ready(&gw).0, 200);
    assert_eq!(
        gw.metric(
            "fluxgate_cluster_watch_failures_total{cluster=\"default\",namespace=\"flux-system\"}"
        ),
        failures
    );
    assert_eq!(
        gw.metric("fluxgate_cluster_watch_up{cluster=\"default\",namespace=\"flux-system\"}"),
        1.0
    );
}

#[tokio::test]
async fn a_namespace_the_role_does_not_cover_keeps_the_gateway_up_but_not_ready() {
    let api = cluster(
        &["webhook-token"],
        vec![
            token_secret("webhook-token", "t"),
            github("github-receiver", "webhook-token"),
        ],
    );
    let s = Setup::new()
        .section(
            "[cluster]\nwatch_receivers = true\nnamespaces = [\"flux-system\", \"apps\"]\nsecret_refresh = \"1s\"",
        )
        .section(NO_LIMITS);
    let r = file_receiver(&s);
    let gw = s.receiver(&r).start_with(api);
    // flux-system is served all the same.
    served(&gw, "t", "github-receiver").await;
    let (status, body) = ready(&gw);
    assert_eq!(status, 503);
    assert!(body.contains("Receivers not listed yet in apps"), "{body}");
    assert!(body.contains("forbidden"), "{body}");
    assert_eq!(
        gw.metric("fluxgate_cluster_watch_up{cluster=\"default\",namespace=\"apps\"}"),
        0.0
    );
    assert!(
        gw.metric("fluxgate_cluster_watch_failures_total{cluster=\"default\",namespace=\"apps\"}")
            >= 1.0
    );
    assert!(gw
        .logs()
        .contains("watching Receivers failed, serving the last known ones and retrying"));
}

#[tokio::test]
async fn cluster_receivers_alone() {
    // No [[receivers]] at all: the cluster provides every one.
    let s = Setup::new()
        .section(&cluster_section(""))
        .section(NO_LIMITS);
    let gw = s.start_with(cluster(
        &["webhook-token"],
        vec![
            token_secret("webhook-token", "test-token"),
            github("receiver-secret", "webhook-token"),
        ],
    ));
    wait_ready(&gw).await;
    served(&gw, "test-token", "receiver-secret").await;
}

#[tokio::test]
async fn with_no_receiver_objects_an_unknown_path_is_404_over_tls() {
    // A fresh install: cluster mode, no [[receivers]], no Receiver objects yet, no allow-list.
    let s = Setup::new()
        .section(&cluster_section(""))
        .section(NO_LIMITS);
    let gw = s.start_with(cluster(&["webhook-token"], Vec::new()));
    wait_ready(&gw).await;
    let unknown = hook("nobody", "nothing", NS);
    let (status, body) = gw.post(&unknown, &[], "{}").await;
    assert_eq!(status, 404, "{body}");

    // The first Receiver, then none again: still answered, not closed before TLS.
    gw.api.put_object(token_secret("webhook-token", "t"));
    gw.api
        .put_object(github("github-receiver", "webhook-token"));
    served(&gw, "t", "github-receiver").await;
    gw.api
        .delete_object(RECEIVER, "Receiver", NS, "github-receiver");
    gone(&gw, "t", "github-receiver").await;
    assert_eq!(gw.post(&unknown, &[], "{}").await.0, 404);
    assert_eq!(
        gw.metric("fluxgate_connections_refused_total{reason=\"not_allowed\"}"),
        0.0
    );
}

#[tokio::test]
async fn cluster_receivers_that_all_have_allow_lists_close_other_addresses_before_tls() {
    let s = Setup::new()
        .section(&cluster_section(
            "[cluster.defaults]\nallow_from = [\"127.0.0.2/32\"]\n",
        ))
        .section(NO_LIMITS);
    let gw = s.start_with(cluster(
        &["webhook-token"],
        vec![
            token_secret("webhook-token", "t"),
            github("github-receiver", "webhook-token"),
        ],
    ));
    wait_ready(&gw).await;
    let path = hook("t", "github-receiver", NS);
    let signed_push = || {
        let headers = signed("t", PUSH, &uid());
        let mut rb = gw.client_from("127.0.0.2").post(gw.url(&path)).body(PUSH);
        for (k, v) in headers {
            rb = rb.header(k, v);
        }
        rb
    };
    eventually("served to the allowed address", &gw, || async {
        signed_push()
            .send()
            .await
            .is_ok_and(|r| r.status().as_u16() == 200)
    })
    .await;
    // Every receiver served has an allow-list, and none allows 127.0.0.1.
    assert!(gw
        .client()
        .post(gw.url(&path))
        .body("x")
        .send()
        .await
        .is_err());
    assert!(gw.metric("fluxgate_connections_refused_total{reason=\"not_allowed\"}") >= 1.0);
}

#[tokio::test]
async fn a_receiver_with_no_resources_is_answered_200_and_reconciles_nothing() {
    let mut r = github("no-resources", "webhook-token");
    r["spec"]["resources"] = json!([]);
    let api = cluster(
        &["webhook-token"],
        vec![token_secret("webhook-token", "t"), r],
    );
    let gw = setup("").start_with(api);
    wait_ready(&gw).await;
    served(&gw, "t", "no-resources").await;
    let (status, body) = push(&gw, "t", "no-resources").await;
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["patched"], json!([]), "{body}");
    assert!(gw.patches().is_empty(), "{:?}", gw.patches());
    assert!(
        gw.logs().contains("Receiver flux-system/no-resources: spec.resources: none; deliveries are verified and answered 200 with nothing reconciled"),
        "{}",
        gw.logs()
    );
    assert_eq!(
        gw.metric("fluxgate_cluster_receivers{cluster=\"default\",state=\"skipped\"}"),
        0.0
    );
}

/// `fluxgate check --offline`: (success, output).
fn check(s: &Setup) -> (bool, String) {
    s.offline_kubeconfig();
    let config = s.write_config(8443, 9102);
    let run = run_check(&config, &["--offline"], &[]);
    (run.code == Some(0), run.output())
}

#[test]
fn configuration_problems_name_the_key() {
    let (ok, out) = check(&Setup::new().section(&cluster_section("")));
    assert!(ok, "cluster mode needs no [[receivers]]: {out}");
    let (ok, out) = check(&Setup::new().section("[cluster]\nwatch_receivers = false"));
    assert!(!ok && out.contains("receivers: none configured"), "{out}");

    let s = Setup::new().section(
        "[cluster]\nwatch_receivers = true\nnamespaces = [\"Bad_NS\", \"*\", \"ok\", \"ok\"]\n\
         secret_refresh = \"0s\"\n\n[cluster.defaults]\nallow_from = [\"nowhere\"]\n\
         replay_window = \"later\"\ndelivery_id_header = \"bad header\"",
    );
    let (ok, out) = check(&s);
    assert!(!ok);
    for expected in [
        "cluster.namespaces[0]: \"Bad_NS\" is not a valid namespace",
        "cluster.namespaces[1]: \"*\" (every namespace) must be the only entry",
        "cluster.namespaces[3]: \"ok\" is listed twice",
        "cluster.secret_refresh: must be more than zero",
        "cluster.defaults.allow_from[0]: \"nowhere\" is neither a network nor a range set",
        "cluster.defaults.replay_window: \"later\" is not a duration",
        "cluster.defaults.delivery_id_header: \"bad header\" is not a header name",
    ] {
        assert!(out.contains(expected), "no {expected:?} in:\n{out}");
    }
    let (ok, out) =
        check(&Setup::new().section("[cluster]\nwatch_receivers = true\nnamespaces = []"));
    assert!(!ok && out.contains("cluster.namespaces: empty"), "{out}");
    let (ok, out) = check(&Setup::new().section("[cluster.defaults]\nsecret_file = \"/x\""));
    assert!(!ok && out.contains("unknown field `secret_file`"), "{out}");
    // Whose Receivers are followed: clusters of the fleet, by name or label.
    let (ok, out) = check(&Setup::new().section(&cluster_section("clusters = [\"nope\"]")));
    assert!(
        !ok && out.contains("cluster.clusters: no cluster named \"nope\"; configured: default"),
        "{out}"
    );
    let (ok, out) =
        check(&Setup::new().section(&cluster_section("cluster_selector = { env = \"prod\" }")));
    assert!(!ok && out.contains("cluster.cluster_selector: "), "{out}");
    let (ok, out) = check(&Setup::new().section(&cluster_section(
        "clusters = [\"default\"]\ncluster_selector = { env = \"prod\" }",
    )));
    assert!(
        !ok && out
            .contains("cluster.cluster_selector: give clusters or cluster_selector, not both"),
        "{out}"
    );
}

#[test]
fn check_asks_for_what_cluster_mode_needs() {
    let api = cluster(&["webhook-token"], Vec::new());
    let s = Setup::new()
        .section("[cluster]\nwatch_receivers = true\nnamespaces = [\"flux-system\", \"apps\"]");
    api.write_kubeconfig(&s.path("kubeconfig"), SA_TOKEN)
        .unwrap();
    let run = run_check(&s.write_config(8443, 9102), &[], &[]);
    let out = run.output();
    assert_eq!(run.code, Some(1), "{out}");
    for expected in [
        "ok: cluster mode: serving the Receivers in flux-system, apps (their Secrets read again every 1m)",
        "ok: cluster mode: may list Receivers in flux-system",
        "ok: cluster mode: may watch Receivers in flux-system",
        "problem: cluster mode: the service account may not list receivers.notification.toolkit.fluxcd.io in apps; see deploy/cluster-mode/",
        "problem: cluster mode: the service account may not watch receivers.notification.toolkit.fluxcd.io in apps",
    ] {
        assert!(out.contains(expected), "no {expected:?} in:\n{out}");
    }
    assert!(!out.contains("may list Secrets"), "{out}");
}

#[tokio::test]
async fn a_request_in_flight_finishes_on_the_receivers_it_started_with() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let api = cluster(
        &["webhook-token"],
        vec![
            token_secret("webhook-token", "t"),
            github("github-receiver", "webhook-token"),
        ],
    );
    let gw = setup("").start_with(api);
    wait_ready(&gw).await;
    served(&gw, "t", "github-receiver").await;

    // A delivery's head, signature included, that asks to continue: the 100 answer says it was
    // routed and its signature check begun.
    let path = hook("t", "github-receiver", NS);
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nExpect: 100-continue\r\n"
    );
    for (k, v) in signed("t", PUSH, &uid()) {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", PUSH.len()));
    let mut tls = raw_tls(gw.port, &gw.setup.cert_pem).await;
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.flush().await.unwrap();
    let mut interim = [0u8; 25];
    tls.read_exact(&mut interim).await.unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");

    // The Receiver goes away meanwhile: new requests no longer find it...
    gw.api
        .delete_object(RECEIVER, "Receiver", NS, "github-receiver");
    gone(&gw, "t", "github-receiver").await;
    // ...but the delivery that started before is verified and relayed to the end.
    tls.write_all(PUSH).await.unwrap();
    tls.flush().await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"relayed\":true"), "{answer}");
}

/// A cluster of a fleet as [`cluster`] makes it, with its own token (and, as every stand-in,
/// its own CA), and the `[[clusters]]` table that points at it.
fn fleet_member(s: Setup, name: &str, objects: Vec<Value>) -> (Setup, StandIn) {
    let token = format!("token-of-{name}");
    let mut cfg = ApiConfig::new().user(&token, SA_USER);
    for file in ["role.yaml", "cluster-mode/role.yaml"] {
        for mut rule in deploy_role_rules(file, NS) {
            if !rule.resource_names.is_empty() {
                rule.resource_names = vec!["webhook-token".into()];
            }
            cfg = cfg.allow(SA_USER, rule);
        }
    }
    for o in flux_objects().into_iter().chain(objects) {
        cfg = cfg.object(o);
    }
    let api = StandIn::start(cfg).unwrap();
    let kc = s.path(&format!("kubeconfig-{name}"));
    api.write_kubeconfig(&kc, &token).unwrap();
    owner_only(&kc);
    let s = s.section(&format!(
        "[[clusters]]\nname = \"{name}\"\nkubeconfig = \"{}\"\ntimeout = \"2s\"",
        kc.display()
    ));
    (s, api)
}

/// Accepted patches of GitRepository flux-system/app in one cluster.
fn app_patches(api: &StandIn) -> usize {
    api.requests()
        .iter()
        .filter(|r| {
            r.method == "PATCH"
                && r.status == 200
                && r.path == "/apis/source.toolkit.fluxcd.io/v1/namespaces/flux-system/gitrepositories/app"
        })
        .count()
}

/// The clusters an answer lists.
fn answered_clusters(body: &str) -> Vec<String> {
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    v["clusters"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_receiver_in_two_of_three_clusters_has_one_path_and_follows_each_cluster() {
    const TOKEN: &str = "fleet-token";
    let deployed = || {
        vec![
            token_secret("webhook-token", TOKEN),
            github("fleet", "webhook-token"),
        ]
    };
    let (s, eu) = fleet_member(setup(""), "eu", deployed());
    // us has the Secret, not (yet) the Receiver.
    let (s, us) = fleet_member(s, "us", vec![token_secret("webhook-token", TOKEN)]);
    let home = cluster(&["webhook-token"], deployed());
    let gw = s.start_with(home);
    wait_ready(&gw).await;
    served(&gw, TOKEN, "fleet").await;
    for c in ["default", "eu", "us"] {
        assert_eq!(
            gw.metric(&format!(
                "fluxgate_cluster_watch_up{{cluster=\"{c}\",namespace=\"flux-system\"}}"
            )),
            1.0,
            "{c}"
        );
    }

    // One delivery reconciles where the Receiver exists: default and eu, not us.
    let before = (app_patches(&gw.api), app_patches(&eu));
    let (status, body) = push(&gw, TOKEN, "fleet").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(answered_clusters(&body), ["default", "eu"], "{body}");
    assert_eq!(
        (app_patches(&gw.api), app_patches(&eu), app_patches(&us)),
        (before.0 + 1, before.1 + 1, 0)
    );

    // Deleted in eu: the next deliveries reconcile in default alone, on the same path.
    eu.delete_object(RECEIVER, "Receiver", NS, "fleet");
    eventually("eu dropped", &gw, || async {
        answered_clusters(&push(&gw, TOKEN, "fleet").await.1) == ["default"]
    })
    .await;
    let eu_patches = app_patches(&eu);
    let (status, body) = push(&gw, TOKEN, "fleet").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(app_patches(&eu), eu_patches, "no more patches in eu");

    // Created in us: added, with no change at the edge.
    us.put_object(github("fleet", "webhook-token"));
    eventually("us added", &gw, || async {
        answered_clusters(&push(&gw, TOKEN, "fleet").await.1) == ["default", "us"]
    })
    .await;
    assert!(app_patches(&us) >= 1);
    assert_eq!(app_patches(&eu), eu_patches);
    assert_eq!(
        gw.metric("fluxgate_cluster_receivers{cluster=\"us\",state=\"served\"}"),
        1.0
    );
    assert_eq!(
        gw.metric("fluxgate_cluster_receivers{cluster=\"eu\",state=\"served\"}"),
        0.0
    );

    // Deleted everywhere it is left: the path is gone.
    gw.api.delete_object(RECEIVER, "Receiver", NS, "fleet");
    us.delete_object(RECEIVER, "Receiver", NS, "fleet");
    gone(&gw, TOKEN, "fleet").await;
    assert!(!gw.logs().contains(TOKEN), "the token stays out of the log");
}

#[tokio::test]
async fn cluster_mode_follows_only_the_clusters_it_names() {
    const TOKEN: &str = "fleet-token";
    let deployed = || {
        vec![
            token_secret("webhook-token", TOKEN),
            github("fleet", "webhook-token"),
        ]
    };
    let (s, eu) = fleet_member(setup("clusters = [\"eu\"]"), "eu", deployed());
    let gw = s.start_with(cluster(&["webhook-token"], deployed()));
    wait_ready(&gw).await;
    served(&gw, TOKEN, "fleet").await;
    let (status, body) = push(&gw, TOKEN, "fleet").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(answered_clusters(&body), ["eu"], "{body}");
    assert!(app_patches(&eu) >= 1);
    assert_eq!(
        app_patches(&gw.api),
        0,
        "default's Receivers are not followed"
    );
    let receivers_listed = gw
        .api
        .requests()
        .iter()
        .any(|r| r.path.ends_with("/receivers"));
    assert!(
        !receivers_listed,
        "default's Receivers were not even listed"
    );
}
