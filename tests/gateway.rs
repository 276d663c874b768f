//! Issue 2's end-to-end checks: real TLS on loopback, real signatures, the stand-in API.

use crate::common::*;
use serde_json::Value;

const GH_SECRET: &str = "It's a Secret to Everybody";
const JSON: (&str, &str) = ("Content-Type", "application/json");

fn github_receiver(setup: &Setup, secret: &str, extra: &str) -> String {
    format!(
        "name = \"github-receiver\"\nnamespace = \"flux-system\"\ntype = \"github\"\nsecret_file = \"{}\"\n{extra}",
        setup.secret("github", secret).display()
    )
}

fn gitrepo_app() -> &'static str {
    "resources = [{ kind = \"GitRepository\", name = \"app\" }]"
}

#[tokio::test(flavor = "multi_thread")]
async fn github_official_vector_is_accepted() {
    let s = Setup::new();
    let r = github_receiver(&s, GH_SECRET, gitrepo_app());
    let gw = s.receiver(&r).start();
    let path = hook(GH_SECRET, "github-receiver", "flux-system");
    let (status, body) = gw
        .post(
            &path,
            &[
                JSON,
                ("X-GitHub-Event", "push"),
                (
                    "X-Hub-Signature-256",
                    "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
                ),
            ],
            "Hello, World!",
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(gw.patches().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn signed_push_makes_one_merge_patch_per_target() {
    let s = Setup::new();
    let r = github_receiver(
        &s,
        "push-secret",
        "events = [\"ping\", \"push\"]\nresources = [\n  { kind = \"GitRepository\", name = \"app\" },\n  { kind = \"Kustomization\", apiVersion = \"kustomize.toolkit.fluxcd.io/v1\", name = \"app\" },\n]",
    );
    let gw = s.receiver(&r).start();
    let body = fixture("github/push.json");
    let (status, text) = gw
        .post(
            &hook("push-secret", "github-receiver", "flux-system"),
            &[
                JSON,
                ("X-GitHub-Event", "push"),
                ("X-GitHub-Delivery", "d-1"),
                ("X-Hub-Signature-256", &sig("sha256", "push-secret", &body)),
            ],
            body,
        )
        .await;
    assert_eq!(status, 200, "{text}");
    let summary: Value = serde_json::from_str(&text).unwrap();
    let at = summary["requestedAt"].as_str().unwrap().to_string();
    assert_eq!(summary["patched"].as_array().unwrap().len(), 2, "{text}");

    let patches = gw.patches();
    assert_eq!(patches.len(), 2, "exactly one patch per target");
    let paths: Vec<_> = patches.iter().map(|p| p.path.as_str()).collect();
    assert!(
        paths.contains(
            &"/apis/source.toolkit.fluxcd.io/v1/namespaces/flux-system/gitrepositories/app"
        ),
        "{paths:?}"
    );
    assert!(
        paths.contains(
            &"/apis/kustomize.toolkit.fluxcd.io/v1/namespaces/flux-system/kustomizations/app"
        ),
        "{paths:?}"
    );
    for p in &patches {
        assert_eq!(
            p.header("content-type"),
            Some("application/merge-patch+json")
        );
        assert_eq!(
            p.header("authorization"),
            Some(format!("Bearer {SA_TOKEN}").as_str())
        );
        let b: Value = serde_json::from_slice(&p.body).unwrap();
        assert_eq!(
            b,
            serde_json::json!({"metadata": {"annotations": {"reconcile.fluxcd.io/requestedAt": at}}})
        );
    }
    assert_eq!(
        gw.annotation(
            "source.toolkit.fluxcd.io/v1",
            "GitRepository",
            "flux-system",
            "app"
        )
        .as_deref(),
        Some(at.as_str())
    );
    assert_eq!(
        gw.annotation(
            "kustomize.toolkit.fluxcd.io/v1",
            "Kustomization",
            "flux-system",
            "app"
        )
        .as_deref(),
        Some(at.as_str())
    );
    // The merge patch kept the other annotation.
    let obj = gw
        .api
        .object(
            "source.toolkit.fluxcd.io/v1",
            "GitRepository",
            "flux-system",
            "app",
        )
        .unwrap();
    assert_eq!(obj["metadata"]["annotations"]["keep.example.com/me"], "yes");
    time::OffsetDateTime::parse(&at, &time::format_description::well_known::Rfc3339).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_signatures_and_tokens_get_401_and_reach_no_api() {
    let s = Setup::new();
    let gh = github_receiver(&s, "right", gitrepo_app());
    let gl = format!(
        "name = \"gl\"\nnamespace = \"flux-system\"\ntype = \"gitlab\"\nsecret_file = \"{}\"\n{}",
        s.secret("gl", "gl-token").display(),
        gitrepo_app()
    );
    let gw = s.receiver(&gh).receiver(&gl).start();
    let body = fixture("github/push.json");
    let gh_path = hook("right", "github-receiver", "flux-system");
    // (what, extra headers, expected reason)
    type Case<'a> = (&'a str, Vec<(&'a str, String)>, &'a str);
    let cases: Vec<Case> = vec![
        (
            "wrong signature",
            vec![("X-Hub-Signature-256", sig("sha256", "wrong", &body))],
            "signature mismatch (X-Hub-Signature-256, sha256)",
        ),
        (
            "missing signature",
            vec![],
            "missing signature (X-Hub-Signature-256 or X-Hub-Signature)",
        ),
        (
            "legacy header, wrong",
            vec![("X-Hub-Signature", sig("sha1", "wrong", &body))],
            "signature mismatch (X-Hub-Signature, sha1)",
        ),
        (
            "unknown algorithm",
            vec![("X-Hub-Signature-256", "md5=00".into())],
            "unsupported signature algorithm in X-Hub-Signature-256: use sha1, sha256 or sha512",
        ),
    ];
    let expected_mac = sig("sha256", "right", &body);
    for (what, extra, reason) in cases {
        let mut h: Vec<(&str, &str)> = vec![JSON, ("X-GitHub-Event", "push")];
        h.extend(extra.iter().map(|(k, v)| (*k, v.as_str())));
        let (status, text) = gw.post(&gh_path, &h, body.clone()).await;
        assert_eq!((status, text.trim()), (401, reason), "{what}");
        assert!(
            !text.contains(&expected_mac[7..]),
            "the expected signature must never be sent back"
        );
    }
    let gl_path = hook("gl-token", "gl", "flux-system");
    let (status, text) = gw
        .post(
            &gl_path,
            &[("X-Gitlab-Token", "nope"), ("X-Gitlab-Event", "Push Hook")],
            "{}",
        )
        .await;
    assert_eq!(
        (status, text.trim()),
        (401, "token mismatch (X-Gitlab-Token)")
    );
    assert!(!text.contains("gl-token"));
    assert!(
        gw.relayed().is_empty(),
        "refused deliveries must not reach the API: {:?}",
        gw.api
            .requests()
            .iter()
            .map(|r| &r.path)
            .collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn event_filter_path_and_method() {
    let s = Setup::new();
    let r = github_receiver(&s, "k", &format!("events = [\"push\"]\n{}", gitrepo_app()));
    let gw = s.receiver(&r).start();
    let path = hook("k", "github-receiver", "flux-system");
    let body = b"{}".to_vec();
    let signed = sig("sha256", "k", &body);

    let (status, text) = gw
        .post(
            &path,
            &[
                JSON,
                ("X-GitHub-Event", "issues"),
                ("X-Hub-Signature-256", &signed),
            ],
            body.clone(),
        )
        .await;
    assert_eq!(
        (status, text.trim()),
        (400, "event \"issues\" is not accepted by this receiver")
    );
    let (status, text) = gw
        .post(
            &path,
            &[JSON, ("X-Hub-Signature-256", &signed)],
            body.clone(),
        )
        .await;
    assert_eq!((status, text.trim()), (400, "missing event header"));
    assert!(gw.patches().is_empty());
    // Events match case-insensitively, as in Flux.
    let (status, _) = gw
        .post(
            &path,
            &[
                JSON,
                ("X-GitHub-Event", "PUSH"),
                ("X-Hub-Signature-256", &signed),
            ],
            body.clone(),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(gw.patches().len(), 1);

    // Unknown paths, including near misses of the real one, all get the same 404.
    for p in [
        "/hook/0000",
        &format!("{path}?x=1"),
        &format!("{path}/"),
        &path.to_uppercase(),
        "/",
    ] {
        let (status, text) = gw
            .post(
                p,
                &[
                    JSON,
                    ("X-GitHub-Event", "push"),
                    ("X-Hub-Signature-256", &signed),
                ],
                body.clone(),
            )
            .await;
        assert_eq!((status, text.as_str()), (404, "no such hook\n"), "{p}");
    }
    let r = gw.client().get(gw.url(&path)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 405);
    assert_eq!(r.headers()["allow"], "POST");
    assert_eq!(r.text().await.unwrap().trim(), "only POST is accepted");
    let r = gw
        .client()
        .put(gw.url(&path))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 405);
    assert_eq!(gw.patches().len(), 1);

    // Wrong content type for a GitHub receiver.
    let (status, text) = gw
        .post(
            &path,
            &[
                ("Content-Type", "text/plain"),
                ("X-GitHub-Event", "push"),
                ("X-Hub-Signature-256", &signed),
            ],
            body.clone(),
        )
        .await;
    assert_eq!(status, 415, "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn verified_ping_is_answered_without_a_relay() {
    let s = Setup::new();
    // `ping` is not in the list: it is still answered, so the webhook's first delivery is green.
    let r = github_receiver(&s, "k", &format!("events = [\"push\"]\n{}", gitrepo_app()));
    let gw = s.receiver(&r).start();
    let body = fixture("github/ping.json");
    let path = hook("k", "github-receiver", "flux-system");
    let (status, text) = gw
        .post(
            &path,
            &[
                JSON,
                ("X-GitHub-Event", "ping"),
                ("X-Hub-Signature-256", &sig("sha256", "k", &body)),
            ],
            body.clone(),
        )
        .await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap()["relayed"],
        false
    );
    // An unverified ping is still refused.
    let (status, _) = gw
        .post(
            &path,
            &[
                JSON,
                ("X-GitHub-Event", "ping"),
                ("X-Hub-Signature-256", &sig("sha256", "x", &body)),
            ],
            body,
        )
        .await;
    assert_eq!(status, 401);
    assert!(gw.relayed().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn every_receiver_type_passes_right_and_fails_wrong() {
    let s = Setup::new();
    let res = gitrepo_app();
    let mk = |name: &str, ty: &str, secret: &str| {
        format!("name = \"{name}\"\nnamespace = \"flux-system\"\ntype = \"{ty}\"\nsecret_file = \"{}\"\n{res}", s.secret(name, secret).display())
    };
    let (gl, bb, gh, gen) = (
        mk("gl", "gitlab", "gl-s"),
        mk("bb", "bitbucket", "bb-s"),
        mk("gh", "generic-hmac", "gh-s"),
        mk("gen", "generic", "gen-s"),
    );
    let gw = s
        .receiver(&gl)
        .receiver(&bb)
        .receiver(&gh)
        .receiver(&gen)
        .start();
    let body = fixture("github/push.json");
    let mut expected_patches = 0;
    let mut check = |status: u16, ok: bool, what: &str| {
        assert_eq!(status, if ok { 200 } else { 401 }, "{what}");
        if ok {
            expected_patches += 1;
        }
    };

    let p = hook("gl-s", "gl", "flux-system");
    for (tok, ok) in [("gl-s", true), ("gl-S", false), ("", false)] {
        let (st, _) = gw
            .post(
                &p,
                &[("X-Gitlab-Token", tok), ("X-Gitlab-Event", "Push Hook")],
                body.clone(),
            )
            .await;
        check(st, ok, &format!("gitlab {tok:?}"));
    }
    let p = hook("bb-s", "bb", "flux-system");
    for (key, ok) in [("bb-s", true), ("bb-x", false)] {
        let (st, _) = gw
            .post(
                &p,
                &[
                    JSON,
                    ("X-Event-Key", "repo:push"),
                    ("X-Hub-Signature", &sig("sha256", key, &body)),
                ],
                body.clone(),
            )
            .await;
        check(st, ok, &format!("bitbucket {key}"));
    }
    let p = hook("gh-s", "gh", "flux-system");
    for alg in ["sha1", "sha256", "sha512"] {
        // Another body per algorithm: the same signed body again would be a replay.
        let body = [body.as_slice(), alg.as_bytes()].concat();
        for (key, ok) in [("gh-s", true), ("nope", false)] {
            // generic-hmac has no content-type rule.
            let (st, _) = gw
                .post(
                    &p,
                    &[
                        ("Content-Type", "application/octet-stream"),
                        ("X-Signature", &sig(alg, key, &body)),
                    ],
                    body.clone(),
                )
                .await;
            check(st, ok, &format!("generic-hmac {alg} {key}"));
        }
    }
    let (st, _) = gw.post(&p, &[], body.clone()).await;
    check(st, false, "generic-hmac unsigned");
    // generic: the path is the credential; a path made with another token is unknown.
    let (st, _) = gw.post(&hook("gen-s", "gen", "flux-system"), &[], "").await;
    check(st, true, "generic");
    let (st, _) = gw.post(&hook("gen-x", "gen", "flux-system"), &[], "").await;
    assert_eq!(st, 404, "generic with a wrong token");
    assert_eq!(gw.patches().len(), expected_patches);
}

#[tokio::test(flavor = "multi_thread")]
async fn wildcard_with_match_labels_patches_exactly_the_matches() {
    let s = Setup::new();
    let r = format!(
        "name = \"gen\"\nnamespace = \"flux-system\"\ntype = \"generic\"\nsecret_file = \"{}\"\nresources = [{{ kind = \"GitRepository\", name = \"*\", matchLabels = {{ app = \"web\" }} }}]",
        s.secret("gen", "t").display()
    );
    let gw = s.receiver(&r).start();
    let (status, text) = gw.post(&hook("t", "gen", "flux-system"), &[], "").await;
    assert_eq!(status, 200, "{text}");
    let lists: Vec<_> = gw
        .relayed()
        .into_iter()
        .filter(|r| r.method == "GET")
        .collect();
    assert_eq!(lists.len(), 1);
    assert!(
        lists[0]
            .query
            .as_deref()
            .unwrap_or("")
            .contains("labelSelector=app%3Dweb"),
        "{:?}",
        lists[0].query
    );
    let mut patched: Vec<_> = gw
        .patches()
        .iter()
        .map(|p| p.path.rsplit('/').next().unwrap().to_string())
        .collect();
    patched.sort();
    assert_eq!(patched, ["app", "other"]);
    assert!(gw
        .annotation(
            "source.toolkit.fluxcd.io/v1",
            "GitRepository",
            "flux-system",
            "lonely"
        )
        .is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn api_refusals_give_502_with_the_reason() {
    let s = Setup::new();
    let r = format!(
        "name = \"gen\"\nnamespace = \"flux-system\"\ntype = \"generic\"\nsecret_file = \"{}\"\nresources = [\n  {{ kind = \"GitRepository\", name = \"missing\" }},\n  {{ kind = \"Kustomization\", apiVersion = \"kustomize.toolkit.fluxcd.io/v1\", name = \"app\", namespace = \"apps\" }},\n  {{ kind = \"GitRepository\", name = \"app\" }},\n]",
        s.secret("gen", "t").display()
    );
    let gw = s.receiver(&r).start();
    let (status, text) = gw.post(&hook("t", "gen", "flux-system"), &[], "").await;
    assert_eq!(status, 502, "{text}");
    assert_eq!(text.lines().count(), 1, "one line: {text}");
    assert!(
        text.contains("GitRepository flux-system/missing: 404 NotFound"),
        "{text}"
    );
    assert!(
        text.contains("Kustomization apps/app: 403 Forbidden"),
        "{text}"
    );
    assert!(
        text.contains("cannot patch resource \"kustomizations\""),
        "{text}"
    );
    // The target that could be patched still was, as Flux does.
    assert!(gw
        .annotation(
            "source.toolkit.fluxcd.io/v1",
            "GitRepository",
            "flux-system",
            "app"
        )
        .is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn sign_command_output_is_accepted() {
    let s = Setup::new();
    let secret_path = s.secret("github", "signing-secret");
    let r = github_receiver(&s, "signing-secret", gitrepo_app());
    let gw = s.receiver(&r).start();
    let body = fixture("github/push.json");
    let mut child = std::process::Command::new(BIN)
        .args(["sign", "--type", "github", "--secret-file"])
        .arg(&secret_path)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(&body).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let line = String::from_utf8(out.stdout).unwrap();
    let (name, value) = line.trim().split_once(": ").unwrap();
    assert_eq!(name, "X-Hub-Signature-256");
    let (status, text) = gw
        .post(
            &hook("signing-secret", "github-receiver", "flux-system"),
            &[JSON, ("X-GitHub-Event", "push"), (name, value)],
            body,
        )
        .await;
    assert_eq!(status, 200, "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn readyz_follows_the_api_and_healthz_is_always_ok() {
    let gw = Setup::new()
        .receiver(&format!("name = \"g\"\nnamespace = \"flux-system\"\ntype = \"generic\"\nsecret_env = \"HOME\"\n{}", gitrepo_app()))
        .start();
    assert_eq!(http_get(gw.admin, "/readyz").unwrap().0, 200);
    gw.api.set_down(true);
    // /readyz keeps the API's answer for a second.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let (status, body) = http_get(gw.admin, "/readyz").unwrap();
    assert_eq!(status, 503);
    assert!(body.starts_with("not ready: Kubernetes API"), "{body}");
    assert_eq!(http_get(gw.admin, "/healthz").unwrap().0, 200);
    gw.api.set_down(false);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(http_get(gw.admin, "/readyz").unwrap().0, 200);
}
