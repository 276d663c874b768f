//! Secrets never leak, even with every crate logging at trace level: a full scenario (valid
//! and forged deliveries of every credential-carrying type, a relayed patch, a refusal by the
//! API, a reload onto a rotated secret) and then the whole log, `/metrics` and every answer are
//! searched for each secret, each signature the gateway computed, and the service account's
//! token.

use crate::common::*;
use std::time::Duration;

const GITHUB: &str = "trace-github-secret-8c1d";
const GITLAB: &str = "trace-gitlab-token-41aa";
const HARBOR: &str = "trace-harbor-token-77e0";
const HMAC: &str = "trace-hmac-secret-c3b9";
const NEXUS: &str = "trace-nexus-secret-5d02";
const ROTATED: &str = "trace-rotated-secret-e6f4";
const FORGER: &str = "trace-forger-key-9a13";

fn receiver(s: &Setup, name: &str, ty: &str, secret: &str) -> String {
    format!(
        "name = \"{name}\"\nnamespace = \"flux-system\"\ntype = \"{ty}\"\nsecret_file = \"{}\"\nresources = [{{ kind = \"GitRepository\", name = \"app\" }}]\n",
        s.secret(name, secret).display()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn nothing_secret_reaches_the_log_or_metrics_at_trace_level() {
    let s = Setup::new();
    let rs = [
        receiver(&s, "gh", "github", GITHUB),
        receiver(&s, "gl", "gitlab", GITLAB),
        receiver(&s, "hb", "harbor", HARBOR),
        receiver(&s, "hm", "generic-hmac", HMAC),
        receiver(&s, "nx", "nexus", NEXUS),
        // A target the service account may not patch: the API's 403 is logged too.
        format!(
            "name = \"denied\"\nnamespace = \"flux-system\"\ntype = \"gitlab\"\nsecret_file = \"{}\"\nresources = [{{ kind = \"Kustomization\", apiVersion = \"kustomize.toolkit.fluxcd.io/v1\", name = \"app\", namespace = \"apps\" }}]\n",
            s.secret("denied", GITLAB).display()
        ),
    ];
    let mut s = s;
    for r in &rs {
        s = s.receiver(r);
    }
    let api = kube_standin::StandIn::start(api_config()).unwrap();
    let gw = s.start_with_args(api, &[], &[("RUST_LOG", "trace")]);
    let push = fixture("github/push.json");
    let nexus_body = br#"{"action":"CREATED","repositoryName":"maven-releases"}"#.to_vec();
    let mut answers = Vec::new();
    let mut expected = Vec::new();

    // github: valid, then forged (the gateway computes the real signature to compare).
    let gh = hook(GITHUB, "gh", "flux-system");
    let h = signed(GITHUB, &push, &uid());
    answers.push(gw.post(&gh, &refs(&h), push.clone()).await);
    let h = signed(FORGER, &push, &uid());
    answers.push(gw.post(&gh, &refs(&h), push.clone()).await);
    for alg in ["sha1", "sha256", "sha512"] {
        expected.push(sig(alg, GITHUB, &push));
    }

    // gitlab and harbor: the token itself travels; valid and wrong.
    let gl = hook(GITLAB, "gl", "flux-system");
    for token in [GITLAB, FORGER] {
        answers.push(
            gw.post(
                &gl,
                &[("X-Gitlab-Token", token), ("X-Gitlab-Event", "Push Hook")],
                "{}",
            )
            .await,
        );
    }
    let hb = hook(HARBOR, "hb", "flux-system");
    for token in [HARBOR, FORGER] {
        answers.push(gw.post(&hb, &[("Authorization", token)], "{}").await);
    }

    // generic-hmac and nexus: valid and forged.
    let hm = hook(HMAC, "hm", "flux-system");
    for key in [HMAC, FORGER] {
        let h = sig("sha512", key, &push);
        answers.push(
            gw.post(&hm, &[("X-Signature", h.as_str())], push.clone())
                .await,
        );
    }
    expected.push(sig("sha512", HMAC, &push));
    let nx = hook(NEXUS, "nx", "flux-system");
    for key in [NEXUS, FORGER] {
        let h = sig("sha1", key, &nexus_body);
        let bare = h.trim_start_matches("sha1=").to_string();
        answers.push(
            gw.post(
                &nx,
                &[("X-Nexus-Webhook-Signature", bare.as_str())],
                nexus_body.clone(),
            )
            .await,
        );
    }
    expected.push(sig("sha1", NEXUS, &nexus_body));

    // The API refuses a target (403), with the account's bearer token on the wire.
    let denied = hook(GITLAB, "denied", "flux-system");
    answers.push(gw.post(&denied, &[("X-Gitlab-Token", GITLAB)], "{}").await);

    // Rotation: the github secret file changes and the configuration reloads.
    std::fs::write(gw.setup.path("gh.secret"), ROTATED).unwrap();
    send_signal(gw.child.id(), "HUP");
    let rotated = hook(ROTATED, "gh", "flux-system");
    let mut live = false;
    for _ in 0..100 {
        let h = signed(ROTATED, &push, &uid());
        let a = gw.post(&rotated, &refs(&h), push.clone()).await;
        if a.0 == 200 {
            answers.push(a);
            live = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(live, "the rotated secret never went live: {}", gw.logs());
    expected.push(sig("sha256", ROTATED, &push));

    let statuses: Vec<u16> = answers.iter().map(|a| a.0).collect();
    assert_eq!(
        statuses,
        [200, 401, 200, 401, 200, 401, 200, 401, 200, 401, 502, 200],
        "{answers:?}"
    );

    let log = gw.logs();
    assert!(
        log.contains("TRACE") || log.contains("trace"),
        "the gateway really logged at trace level"
    );
    let metrics = gw.scrape().text;
    let bodies: String = answers.iter().map(|a| a.1.as_str()).collect();
    let mut needles: Vec<(String, String)> = [
        ("github secret", GITHUB),
        ("gitlab token", GITLAB),
        ("harbor token", HARBOR),
        ("generic-hmac secret", HMAC),
        ("nexus secret", NEXUS),
        ("rotated secret", ROTATED),
        ("forger's key", FORGER),
        ("service account token", SA_TOKEN),
    ]
    .iter()
    .map(|(w, n)| (w.to_string(), n.to_string()))
    .collect();
    for e in &expected {
        let hex = e.split_once('=').map_or(e.as_str(), |p| p.1);
        needles.push((format!("expected signature {e}"), hex.to_string()));
    }
    for (what, needle) in &needles {
        for (place, text) in [
            ("the log", &log),
            ("/metrics", &metrics),
            ("an answer", &bodies),
        ] {
            if let Some(at) = text.find(needle.as_str()) {
                let from = text[..at].rfind('\n').map_or(0, |i| i + 1);
                let to = text[at..].find('\n').map_or(text.len(), |i| at + i);
                panic!("{what} is in {place}: {}", &text[from..to]);
            }
        }
    }
}
