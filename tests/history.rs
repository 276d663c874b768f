//! The delivery history end to end: each refusal and relay outcome recorded with its reason,
//! a restart keeping it, the live stream, redelivery, the CLI, and no secret anywhere in what
//! the history shows or stores.

use crate::common::*;
use serde_json::Value;
use std::time::{Duration, Instant};

const NO_LIMITS: &str =
    "[limits]\nper_ip = \"off\"\nper_receiver = \"off\"\nmax_connections_per_ip = 0";

fn admin_url(g: &Gateway, path: &str) -> String {
    format!("http://127.0.0.1:{}{path}", g.admin)
}

async fn admin_json(g: &Gateway, path: &str) -> Value {
    reqwest::get(admin_url(g, path))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The newest record with this provider delivery id, waiting up to 5 s for `ready`.
async fn record(g: &Gateway, delivery: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let r = reqwest::get(admin_url(g, &format!("/deliveries/{delivery}")))
            .await
            .unwrap();
        if r.status() == 200 {
            let v: Value = r.json().await.unwrap();
            if ready(&v) {
                return v;
            }
            assert!(Instant::now() < until, "{v}");
        } else {
            assert!(
                Instant::now() < until,
                "no record of {delivery}: {}",
                reqwest::get(admin_url(g, "/deliveries"))
                    .await
                    .unwrap()
                    .text()
                    .await
                    .unwrap()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn cli(g: &Gateway, args: &[&str]) -> (bool, String) {
    cli_with(g, args, &[])
}

fn cli_with(g: &Gateway, args: &[&str], extra: &[&str]) -> (bool, String) {
    let admin = admin_url(g, "");
    let out = std::process::Command::new(BIN)
        .args(args)
        .args(["--admin", &admin])
        .args(extra)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn github(s: &Setup, name: &str, secret: &str, extra: &str) -> String {
    format!(
        "name = \"{name}\"\nnamespace = \"flux-system\"\ntype = \"github\"\nsecret_file = \"{}\"\n{extra}",
        s.secret(name, secret).display()
    )
}

/// A gateway with one GitHub receiver `gh` (target GitRepository `app`) and a durable queue,
/// `relay` added to its `[relay]` section; and the queue's directory.
fn durable_gh(relay: &str) -> (Gateway, std::path::PathBuf) {
    let s = Setup::new().section(NO_LIMITS);
    let queue = s.path("queue");
    std::fs::create_dir_all(&queue).unwrap();
    let gh = github(
        &s,
        "gh",
        "gh-secret",
        "resources = [{ kind = \"GitRepository\", name = \"app\" }]",
    );
    let g = s
        .section(&format!(
            "[relay]\nqueue_dir = \"{}\"\n{relay}",
            queue.display()
        ))
        .receiver(&gh)
        .start();
    (g, queue)
}

#[tokio::test(flavor = "multi_thread")]
async fn refusals_and_relay_outcomes_are_recorded_with_their_reasons() {
    let s = Setup::new().section(NO_LIMITS);
    let gh = github(
        &s,
        "gh",
        "gh-secret",
        "events = [\"push\", \"ping\"]\nresources = [{ kind = \"GitRepository\", name = \"app\" }]",
    );
    let broken = github(
        &s,
        "broken",
        "broken-secret",
        "resources = [{ kind = \"GitRepository\", name = \"missing\" }]",
    );
    let fenced = github(
        &s,
        "fenced",
        "fenced-secret",
        "allow_from = [\"10.9.9.9/32\"]\nresources = [{ kind = \"GitRepository\", name = \"app\" }]",
    );
    let picky = github(
        &s,
        "picky",
        "picky-secret",
        "resource_filter = 'res.metadata.labels.app == \"db\"'\nresources = [{ kind = \"GitRepository\", name = \"app\" }]",
    );
    let failing = github(
        &s,
        "failing",
        "failing-secret",
        "resource_filter = 'res.metadata.labels.nothing == \"x\"'\nresources = [{ kind = \"GitRepository\", name = \"app\" }]",
    );
    let g = s
        .section("[relay]\nwait = \"300ms\"\nbackoff_base = \"100ms\"\nbackoff_max = \"200ms\"")
        .receiver(&gh)
        .receiver(&broken)
        .receiver(&fenced)
        .receiver(&picky)
        .receiver(&failing)
        .start();
    let gh_path = hook("gh-secret", "gh", "flux-system");
    let body = fresh_push();

    // Accepted and patched.
    let ok = uid();
    let (st, _) = g
        .post(
            &gh_path,
            &refs(&signed("gh-secret", &body, &ok)),
            body.clone(),
        )
        .await;
    assert_eq!(st, 200);
    // The same delivery again: a duplicate.
    let (st, _) = g
        .post(
            &gh_path,
            &refs(&signed("gh-secret", &body, &ok)),
            body.clone(),
        )
        .await;
    assert_eq!(st, 200);
    // A bad signature.
    let bad = uid();
    let mut h = signed("gh-secret", &body, &bad);
    h[3].1 = sig("sha256", "wrong", &body);
    let (st, _) = g.post(&gh_path, &refs(&h), body.clone()).await;
    assert_eq!(st, 401);
    // An event the receiver does not take.
    let other = uid();
    let body2 = fresh_push();
    let mut h = signed("gh-secret", &body2, &other);
    h[1].1 = "issues".into();
    let (st, _) = g.post(&gh_path, &refs(&h), body2.clone()).await;
    assert_eq!(st, 400);
    // Refused by the API for good.
    let refused = uid();
    let body3 = fresh_push();
    let (st, _) = g
        .post(
            &hook("broken-secret", "broken", "flux-system"),
            &refs(&signed("broken-secret", &body3, &refused)),
            body3,
        )
        .await;
    assert_eq!(st, 502);
    // Filtered out, and a filter that cannot be evaluated.
    let (filtered_id, failed_id) = (uid(), uid());
    // Both target an object just patched: they may wait for relay.min_interval (202).
    for (name, id) in [("picky", &filtered_id), ("failing", &failed_id)] {
        let b = fresh_push();
        let secret = format!("{name}-secret");
        let (st, text) = g
            .post(
                &hook(&secret, name, "flux-system"),
                &refs(&signed(&secret, &b, id)),
                b,
            )
            .await;
        assert!(matches!(st, 200 | 202 | 502), "{st} {text}");
    }
    // Not on the allow-list.
    let fenced_id = uid();
    let body4 = fresh_push();
    let (st, _) = g
        .post(
            &hook("fenced-secret", "fenced", "flux-system"),
            &refs(&signed("fenced-secret", &body4, &fenced_id)),
            body4,
        )
        .await;
    assert_eq!(st, 403);
    // An unknown path: counted, not recorded.
    let (st, _) = g.post("/hook/0000", &[], "x").await;
    assert_eq!(st, 404);
    // Queued while the API is down, then patched after a retry.
    g.api.set_down(true);
    let later = uid();
    let body5 = fresh_push();
    let (st, _) = g
        .post(&gh_path, &refs(&signed("gh-secret", &body5, &later)), body5)
        .await;
    assert_eq!(st, 202);
    let queued = record(&g, &later, |_| true).await;
    assert_eq!(queued["outcome"], "queued", "{queued}");
    assert_eq!(queued["targets"][0]["state"], "queued", "{queued}");
    g.api.set_down(false);

    let r = record(&g, &ok, |v| v["outcome"] == "duplicate").await;
    assert_eq!(r["status"], 200);
    let all = admin_json(&g, "/deliveries?receiver=flux-system/gh").await;
    let first = all
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["delivery"] == ok.as_str() && r["outcome"] == "relayed")
        .unwrap_or_else(|| panic!("{all}"))
        .clone();
    assert_eq!(first["verified"], true);
    assert_eq!(first["targets"][0]["state"], "patched", "{first}");
    assert_eq!(first["targets"][0]["patched"][0], "app");
    assert_eq!(first["targets"][0]["cluster"], "default");
    assert_eq!(first["event"], "push");
    assert_eq!(first["client"], "127.0.0.1");

    let r = record(&g, &bad, |_| true).await;
    assert_eq!(
        (r["status"].as_u64(), r["verified"].as_bool()),
        (Some(401), Some(false))
    );
    assert!(r["reason"].as_str().unwrap().contains("signature"), "{r}");
    let r = record(&g, &other, |_| true).await;
    assert_eq!(r["outcome"], "event_not_accepted", "{r}");
    assert!(r["reason"].as_str().unwrap().contains("issues"), "{r}");
    let r = record(&g, &refused, |_| true).await;
    assert_eq!(r["outcome"], "relay_refused", "{r}");
    assert_eq!(r["targets"][0]["state"], "refused", "{r}");
    assert!(
        r["targets"][0]["detail"].as_str().unwrap().contains("404"),
        "{r}"
    );
    // Refused before the head's delivery id is read: found by its receiver.
    let r = admin_json(&g, "/deliveries?receiver=flux-system/fenced").await[0].clone();
    assert_eq!(
        (r["status"].as_u64(), r["outcome"].as_str()),
        (Some(403), Some("not_allowed"))
    );
    assert!(r["reason"].as_str().unwrap().contains("not allowed"), "{r}");

    let settled = |v: &Value| v["targets"][0]["state"] != "queued";
    let r = record(&g, &filtered_id, settled).await;
    assert_eq!(r["outcome"], "relayed", "{r}");
    assert_eq!(r["targets"][0]["state"], "filtered", "{r}");
    assert_eq!(r["targets"][0]["filtered"][0], "app", "{r}");
    // Which expression turned it down: its key and source text.
    let by = r["targets"][0]["filteredBy"][0]
        .as_str()
        .unwrap_or_default();
    assert!(
        by.ends_with(".resource_filter = res.metadata.labels.app == \"db\""),
        "{r}"
    );
    let (okay, full) = cli(&g, &["deliveries", &filtered_id]);
    assert!(okay, "{full}");
    assert!(
        full.contains(&format!("app filtered out by {by}")),
        "{full}"
    );
    let r = record(&g, &failed_id, settled).await;
    assert_eq!(r["outcome"], "relay_refused", "{r}");
    assert_eq!(r["targets"][0]["state"], "filter_failed", "{r}");
    assert!(
        r["targets"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("nothing"),
        "{r}"
    );
    // Filters read the body, which is not kept: no redelivery.
    let (okay, out) = cli(&g, &["redeliver", &filtered_id]);
    assert!(!okay && out.contains("not kept"), "{out}");

    // The queued delivery's record follows the relay.
    let r = record(&g, &later, |v| v["outcome"] == "relayed").await;
    assert_eq!(r["targets"][0]["state"], "patched", "{r}");

    // Filters of the API.
    let refusals = admin_json(&g, "/deliveries?outcome=bad_signature").await;
    assert_eq!(refusals.as_array().unwrap().len(), 1, "{refusals}");
    let one = admin_json(&g, "/deliveries?limit=1").await;
    assert_eq!(one.as_array().unwrap().len(), 1);
    let none = admin_json(&g, "/deliveries?since=2999-01-01T00:00:00Z").await;
    assert!(none.as_array().unwrap().is_empty());
    let r = reqwest::get(admin_url(&g, "/deliveries?limit=x"))
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // The unknown path left no record with a receiver of its own.
    assert!(admin_json(&g, "/deliveries")
        .await
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["receiver"].as_str().unwrap().starts_with("flux-system/")));

    // The CLI's table and one record in full.
    let (okay, table) = cli(&g, &["deliveries", "--outcome", "relay_refused"]);
    assert!(okay, "{table}");
    assert!(
        table.contains("flux-system/broken") && table.contains(&refused),
        "{table}"
    );
    assert!(!table.contains("flux-system/gh "), "{table}");
    let (okay, full) = cli(&g, &["deliveries", &refused]);
    assert!(okay, "{full}");
    assert!(
        full.contains("target        default GitRepository flux-system/missing: refused"),
        "{full}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_history_survives_a_restart_and_streams_and_redelivers() {
    let (mut g, queue) = durable_gh("\n[history]\nsize = 50");
    let path = hook("gh-secret", "gh", "flux-system");

    // The stream delivers a new record within a second.
    let resp = reqwest::get(admin_url(&g, "/deliveries/stream"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut resp = resp;
    let first = resp.chunk().await.unwrap().unwrap();
    assert!(first.starts_with(b":"), "{first:?}");
    let id = uid();
    let body = fresh_push();
    let sent = Instant::now();
    let (st, _) = g
        .post(&path, &refs(&signed("gh-secret", &body, &id)), body)
        .await;
    assert_eq!(st, 200);
    let mut seen = String::new();
    while !seen.contains(&id) {
        let c = tokio::time::timeout(Duration::from_secs(1), resp.chunk())
            .await
            .expect("a record within a second")
            .unwrap()
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&c));
    }
    assert!(sent.elapsed() < Duration::from_secs(1));
    assert!(seen.contains("event: delivery"), "{seen}");
    drop(resp);

    // Redelivery patches again, with a new requestedAt.
    let patches = g.patches().len();
    let (okay, out) = cli(&g, &["redeliver", &id]);
    assert!(okay, "{out}");
    assert!(out.contains("redeliveryOf"), "{out}");
    assert_eq!(g.patches().len(), patches + 1);
    let ats: Vec<String> = g
        .patches()
        .iter()
        .map(|p| {
            p.json().unwrap()["metadata"]["annotations"]["reconcile.fluxcd.io/requestedAt"]
                .to_string()
        })
        .collect();
    assert_ne!(ats[ats.len() - 1], ats[ats.len() - 2]);
    let again = admin_json(&g, "/deliveries?outcome=relayed").await;
    assert!(
        again
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["client"] == "admin"),
        "{again}"
    );
    // An unverified delivery cannot be redelivered.
    let bad = uid();
    let b = fresh_push();
    let mut h = signed("gh-secret", &b, &bad);
    h[3].1 = sig("sha256", "wrong", &b);
    g.post(&path, &refs(&h), b).await;
    record(&g, &bad, |_| true).await;
    let (okay, out) = cli(&g, &["redeliver", &bad]);
    assert!(
        !okay && out.contains("409") || out.contains("not verified"),
        "{out}"
    );

    // A restart keeps the history.
    let before = admin_json(&g, "/deliveries").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    g.restart();
    let after = admin_json(&g, "/deliveries").await;
    assert_eq!(before, after);
    assert!(queue.join("history.jsonl").exists());
}

/// Every secret and full credential path of the test's receivers, searched for in the page,
/// the API, the CLI's output and the history's file.
#[tokio::test(flavor = "multi_thread")]
async fn no_secret_in_the_page_api_cli_or_files() {
    let s = Setup::new().section(NO_LIMITS);
    let queue = s.path("queue");
    std::fs::create_dir_all(&queue).unwrap();
    let gh = github(
        &s,
        "gh",
        "gh-secret-value-1",
        "resources = [{ kind = \"GitRepository\", name = \"app\" }]",
    );
    let generic = format!(
        "name = \"plain\"\nnamespace = \"flux-system\"\ntype = \"generic\"\nsecret_file = \"{}\"\nresources = [{{ kind = \"GitRepository\", name = \"app\" }}]",
        s.secret("plain", "generic-token-value-2").display()
    );
    let g = s
        .section(&format!("[relay]\nqueue_dir = \"{}\"", queue.display()))
        .receiver(&gh)
        .receiver(&generic)
        .start();
    let gh_path = hook("gh-secret-value-1", "gh", "flux-system");
    let plain_path = hook("generic-token-value-2", "plain", "flux-system");
    let body = fresh_push();
    let id = uid();
    let headers = signed("gh-secret-value-1", &body, &id);
    let signature = headers[3].1.clone();
    assert_eq!(g.post(&gh_path, &refs(&headers), body.clone()).await.0, 200);
    assert_eq!(g.post(&plain_path, &[], "{}").await.0, 200);
    let mut h = headers.clone();
    h[2].1 = uid();
    h[3].1 = sig("sha256", "wrong", &body);
    let bad_signature = h[3].1.clone();
    assert_eq!(g.post(&gh_path, &refs(&h), body).await.0, 401);

    let mut seen = String::new();
    let page = reqwest::get(admin_url(&g, "/")).await.unwrap();
    assert!(page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .starts_with("default-src 'none'"));
    seen.push_str(&page.text().await.unwrap());
    seen.push_str(
        &reqwest::get(admin_url(&g, "/deliveries"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );
    seen.push_str(
        &reqwest::get(admin_url(&g, &format!("/deliveries/{id}")))
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );
    for args in [
        &["deliveries"][..],
        &["deliveries", "--json"],
        &["deliveries", &id],
    ] {
        let (okay, out) = cli(&g, args);
        assert!(okay, "{out}");
        seen.push_str(&out);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for f in std::fs::read_dir(&queue).unwrap() {
        let p = f.unwrap().path();
        if p.file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("history")
        {
            seen.push_str(&String::from_utf8_lossy(&std::fs::read(p).unwrap()));
        }
    }
    assert!(seen.contains(&id), "the search must cover the records");
    assert!(seen.contains("/hook/"), "elided paths are shown");
    let digest = |p: &str| p.trim_start_matches("/hook/").to_string();
    for secret in [
        "gh-secret-value-1",
        "generic-token-value-2",
        gh_path.as_str(),
        plain_path.as_str(),
        &digest(&gh_path),
        &digest(&plain_path),
        &digest(&plain_path)[..16],
        signature.as_str(),
        signature.trim_start_matches("sha256="),
        bad_signature.trim_start_matches("sha256="),
    ] {
        assert!(!seen.contains(secret), "{secret} shown");
    }
}

/// With `admin.token_file`, the page and the API want the bearer token (compared in constant
/// time); the probes and the metrics do not. The CLI sends it from `--token-file`.
#[tokio::test(flavor = "multi_thread")]
async fn the_admin_token_guards_the_page_and_the_api() {
    let s = Setup::new();
    let token = s.secret("admin", "admin-token-value\n");
    let gh = github(
        &s,
        "gh",
        "gh-secret",
        "resources = [{ kind = \"GitRepository\", name = \"app\" }]",
    );
    let g = s
        .section(&format!("[admin]\ntoken_file = \"{}\"", token.display()))
        .receiver(&gh)
        .start();
    let http = reqwest::Client::new();
    for path in ["/", "/deliveries", "/deliveries/x"] {
        let r = http.get(admin_url(&g, path)).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path}");
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
        let r = http
            .get(admin_url(&g, path))
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path}");
    }
    let r = http
        .get(admin_url(&g, "/deliveries"))
        .bearer_auth("admin-token-value")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for path in ["/healthz", "/metrics"] {
        let r = http.get(admin_url(&g, path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    let (okay, out) = cli(&g, &["deliveries"]);
    assert!(!okay && out.contains("401"), "{out}");
    let (okay, out) = cli_with(
        &g,
        &["deliveries"],
        &["--token-file", token.to_str().unwrap()],
    );
    assert!(okay, "{out}");
    assert!(!out.contains("admin-token-value"), "{out}");
}

/// Coalesced, deterministically: the first delivery patches, the second waits for
/// `relay.min_interval` (202), the third joins the second's waiting job. The second's record
/// says it was coalesced into the third's patch; the third's, that it patched.
#[tokio::test(flavor = "multi_thread")]
async fn a_coalesced_delivery_names_the_patch_it_joined() {
    let s = Setup::new().section(NO_LIMITS);
    let gh = github(
        &s,
        "gh",
        "gh-secret",
        "resources = [{ kind = \"GitRepository\", name = \"app\" }]",
    );
    let g = s
        .section("[relay]\nwait = \"200ms\"\nmin_interval = \"2s\"")
        .receiver(&gh)
        .start();
    let path = hook("gh-secret", "gh", "flux-system");
    let (first, second, third) = (uid(), uid(), uid());
    for (id, want) in [(&first, 200), (&second, 202), (&third, 202)] {
        let b = fresh_push();
        let (st, text) = g.post(&path, &refs(&signed("gh-secret", &b, id)), b).await;
        assert_eq!(st, want, "{text}");
    }
    let settled = |v: &Value| v["targets"][0]["state"] != "queued";
    let r1 = record(&g, &first, settled).await;
    assert_eq!(r1["targets"][0]["state"], "patched", "{r1}");
    let until = Instant::now() + Duration::from_secs(5);
    let r3 = loop {
        let r = record(&g, &third, |_| true).await;
        if settled(&r) || Instant::now() > until {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(r3["targets"][0]["state"], "patched", "{r3}");
    assert_eq!(r3["outcome"], "relayed", "{r3}");
    let r2 = record(&g, &second, settled).await;
    assert_eq!(r2["outcome"], "relayed", "{r2}");
    assert_eq!(r2["status"], 202, "{r2}");
    assert_eq!(r2["targets"][0]["state"], "coalesced", "{r2}");
    let into = r3["requestedAt"].as_str().unwrap();
    assert!(
        r2["targets"][0]["detail"].as_str().unwrap().contains(into),
        "{r2} is not coalesced into {into}"
    );
    assert_ne!(r2["requestedAt"], r3["requestedAt"]);
    // The CLI shows both the answer given and what the relay did later, and when.
    let (okay, full) = cli(&g, &["deliveries", &second]);
    assert!(okay, "{full}");
    assert!(
        full.contains("status        202 (answered before the relay finished"),
        "{full}"
    );
    assert!(full.contains("outcome       relayed"), "{full}");
    assert!(full.contains("coalesced at "), "{full}");
}

/// Dropped, deterministically: one attempt allowed, against an API that is down.
#[tokio::test(flavor = "multi_thread")]
async fn a_dropped_job_is_recorded_with_why() {
    let s = Setup::new().section(NO_LIMITS);
    let gh = github(
        &s,
        "gh",
        "gh-secret",
        "resources = [{ kind = \"GitRepository\", name = \"app\" }]",
    );
    let g = s
        .section("[relay]\nwait = \"100ms\"\nmax_attempts = 1")
        .receiver(&gh)
        .start();
    g.api.set_down(true);
    let id = uid();
    let b = fresh_push();
    let (st, _) = g
        .post(
            &hook("gh-secret", "gh", "flux-system"),
            &refs(&signed("gh-secret", &b, &id)),
            b,
        )
        .await;
    assert!(matches!(st, 202 | 502), "{st}");
    let r = record(&g, &id, |v| v["targets"][0]["state"] != "queued").await;
    assert_eq!(r["outcome"], "relay_refused", "{r}");
    assert_eq!(r["targets"][0]["state"], "dropped", "{r}");
    assert!(
        r["targets"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("gave up after 1 attempts"),
        "{r}"
    );
}

/// A delivery queued when fluxgate stopped: the restarted process resumes its job from the
/// durable queue with nobody waiting, and the record still becomes patched.
#[tokio::test(flavor = "multi_thread")]
async fn a_queued_record_is_settled_by_the_job_resumed_after_a_restart() {
    let (mut g, _) =
        durable_gh("wait = \"100ms\"\nbackoff_base = \"100ms\"\nbackoff_max = \"200ms\"");
    g.api.set_down(true);
    let id = uid();
    let b = fresh_push();
    let (st, _) = g
        .post(
            &hook("gh-secret", "gh", "flux-system"),
            &refs(&signed("gh-secret", &b, &id)),
            b,
        )
        .await;
    assert_eq!(st, 202);
    let r = record(&g, &id, |_| true).await;
    assert_eq!(r["targets"][0]["state"], "queued", "{r}");

    g.restart();
    g.api.set_down(false);
    let r = record(&g, &id, |v| v["outcome"] != "queued").await;
    assert_eq!(r["outcome"], "relayed", "{r}");
    assert_eq!(r["status"], 202, "{r}");
    assert_eq!(r["targets"][0]["state"], "patched", "{r}");
    assert!(!g.patches().is_empty());
}

/// Every kind of refusal a receiver's request can meet leaves a record with its status,
/// outcome and reason, whichever phase ended it (the one test above covers the relay's).
#[tokio::test(flavor = "multi_thread")]
async fn every_kind_of_refusal_is_recorded_with_its_reason() {
    let s = Setup::new().section(
        "[limits]\nper_ip = \"off\"\nper_receiver = \"1/s\"\nper_receiver_burst = 1\nmax_connections_per_ip = 0",
    );
    let gh = github(
        &s,
        "gh",
        "gh-secret",
        "events = [\"push\"]\nresources = [{ kind = \"GitRepository\", name = \"app\" }]",
    );
    let g = s.server("max_body_bytes = 16384").receiver(&gh).start();
    let path = hook("gh-secret", "gh", "flux-system");
    let body = fresh_push();

    // No signature at all.
    let h = signed("gh-secret", &body, &uid());
    assert_eq!(g.post(&path, &refs(&h[..3]), body.clone()).await.0, 401);
    // Not a POST.
    let r = g.client().get(g.url(&path)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 405);
    // A content type GitHub never sends.
    let mut h = signed("gh-secret", &body, &uid());
    h[0].1 = "text/plain".into();
    assert_eq!(g.post(&path, &refs(&h), body.clone()).await.0, 415);
    // Larger than server.max_body_bytes.
    let big = vec![b' '; 20_000];
    let h = signed("gh-secret", &big, &uid());
    assert_eq!(g.post(&path, &refs(&h), big).await.0, 413);
    // Over the receiver's rate: the first verified delivery passes, the next is limited.
    let b1 = fresh_push();
    let h = signed("gh-secret", &b1, &uid());
    assert_eq!(g.post(&path, &refs(&h), b1).await.0, 200);
    let b2 = fresh_push();
    let h = signed("gh-secret", &b2, &uid());
    assert_eq!(g.post(&path, &refs(&h), b2).await.0, 429);

    let until = Instant::now() + Duration::from_secs(5);
    let records = loop {
        let all = admin_json(&g, "/deliveries?receiver=flux-system/gh").await;
        let all = all.as_array().unwrap().clone();
        if all.len() >= 6 || Instant::now() > until {
            break all;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for (status, outcome, says) in [
        (401, "bad_signature", "X-Hub-Signature"),
        (405, "method_not_allowed", "POST"),
        (415, "unsupported_media_type", "Content-Type"),
        (413, "too_large", "16384"),
        (429, "rate_limited", "too many deliveries"),
    ] {
        let r = records
            .iter()
            .find(|r| r["status"] == status)
            .unwrap_or_else(|| panic!("no record answered {status}: {records:?}"));
        assert_eq!(r["outcome"], outcome, "{r}");
        let reason = r["reason"].as_str().unwrap_or_default();
        assert!(
            reason.to_lowercase().contains(&says.to_lowercase()),
            "{status}: {r}"
        );
    }
    assert!(records.iter().any(|r| r["status"] == 200), "{records:?}");
}

/// Live streams hold a connection and a task each for as long as their client stays: past
/// the cap a new one is answered 503, and a closed one gives its place back.
#[tokio::test(flavor = "multi_thread")]
async fn live_streams_are_capped() {
    use std::io::{Read, Write};
    let s = Setup::new().section(NO_LIMITS);
    let gh = github(
        &s,
        "gh",
        "gh-secret",
        "resources = [{ kind = \"GitRepository\", name = \"app\" }]",
    );
    let g = s.receiver(&gh).start();
    let open = |n: usize| {
        (0..n)
            .map(|_| {
                let mut c = std::net::TcpStream::connect(("127.0.0.1", g.admin)).unwrap();
                c.write_all(b"GET /deliveries/stream HTTP/1.1\r\nHost: x\r\n\r\n")
                    .unwrap();
                c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut head = [0u8; 12];
                c.read_exact(&mut head).unwrap();
                (c, String::from_utf8_lossy(&head).into_owned())
            })
            .collect::<Vec<_>>()
    };
    let streams = open(64);
    assert!(
        streams.iter().all(|(_, h)| h == "HTTP/1.1 200"),
        "{:?}",
        streams[0].1
    );
    let over = open(1);
    assert_eq!(over[0].1, "HTTP/1.1 503");
    drop(streams);
    // The server notices the closed connections at its next write (a keep-alive comment
    // at the latest); until then a new stream may still be refused.
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        if open(1)[0].1 == "HTTP/1.1 200" {
            break;
        }
        assert!(Instant::now() < until, "no stream's place came back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
