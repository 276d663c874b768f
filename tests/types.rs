//! The receiver types checked by header token or body: harbor, dockerhub, quay and acr, end
//! to end over real TLS against the real binary and the stand-in API. A valid
//! delivery annotates the GitRepository; each kind of invalid one is refused with its status
//! and reason and reaches no API.

mod common;
use common::*;
use serde_json::Value;

const GIT: (&str, &str, &str, &str) = (
    "source.toolkit.fluxcd.io/v1",
    "GitRepository",
    "flux-system",
    "app",
);

/// A receiver of `kind` named `name` in flux-system, reconciling GitRepository `app`.
fn receiver(s: &Setup, name: &str, kind: &str, token: &str, extra: &str) -> String {
    format!(
        "name = \"{name}\"\nnamespace = \"flux-system\"\ntype = \"{kind}\"\nsecret_file = \"{}\"\nresources = [{{ kind = \"GitRepository\", name = \"app\" }}]\n{extra}",
        s.secret(name, token).display()
    )
}

fn requested_at(gw: &Gateway) -> Option<String> {
    gw.annotation(GIT.0, GIT.1, GIT.2, GIT.3)
}

/// Posts a delivery that must be relayed: 200, a JSON summary saying so, and a new
/// `requestedAt` on the GitRepository.
async fn relayed(gw: &Gateway, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Value {
    let before = requested_at(gw);
    let patches = gw.patches().len();
    let (status, text) = gw.post(path, headers, body).await;
    assert_eq!(status, 200, "{text}");
    let summary: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(summary["relayed"], true, "{text}");
    let at = summary["requestedAt"].as_str().unwrap();
    assert_eq!(requested_at(gw).as_deref(), Some(at));
    assert_ne!(requested_at(gw), before, "a new requestedAt");
    assert_eq!(gw.patches().len(), patches + 1, "one merge patch");
    summary
}

/// Posts a delivery that must be refused with `status` and `reason`, and reach no API.
async fn refused(
    gw: &Gateway,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<reqwest::Body>,
    status: u16,
    reason: &str,
) {
    let calls = gw.relayed().len();
    let (got, text) = gw.post(path, headers, body).await;
    assert_eq!((got, text.trim_end()), (status, reason));
    assert_eq!(text.lines().count(), 1, "one line: {text:?}");
    assert_eq!(
        gw.relayed().len(),
        calls,
        "a refused delivery reaches no API"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn harbor_token_is_the_whole_authorization_header() {
    let s = Setup::new();
    let r = receiver(&s, "harbor", "harbor", "harbor-token", "");
    let gw = s.receiver(&r).start();
    let path = hook("harbor-token", "harbor", "flux-system");
    let body = br#"{"type":"PUSH_ARTIFACT","occur_at":1715678151,"operator":"ci","event_data":{"resources":[{"tag":"2.7.1"}],"repository":{"name":"payments-service","namespace":"team"}}}"#;
    relayed(
        &gw,
        &path,
        &[("Authorization", "harbor-token")],
        body.to_vec(),
    )
    .await;
    for (value, reason) in [
        ("Bearer harbor-token", "token mismatch (Authorization)"),
        ("HARBOR-TOKEN", "token mismatch (Authorization)"),
        ("", "missing token (Authorization)"),
    ] {
        refused(
            &gw,
            &path,
            &[("Authorization", value)],
            body.to_vec(),
            401,
            reason,
        )
        .await;
    }
    refused(
        &gw,
        &path,
        &[],
        body.to_vec(),
        401,
        "missing token (Authorization)",
    )
    .await;
    refused(
        &gw,
        &path,
        &[
            ("Authorization", "harbor-token"),
            ("Authorization", "harbor-token"),
        ],
        body.to_vec(),
        401,
        "more than one Authorization header",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dockerhub_quay_and_acr_check_the_body_shape_only() {
    let s = Setup::new();
    let (dh, quay, acr) = (
        receiver(&s, "dockerhub", "dockerhub", "dh-token", ""),
        receiver(&s, "quay", "quay", "quay-token", ""),
        receiver(&s, "acr", "acr", "acr-token", ""),
    );
    let gw = s.receiver(&dh).receiver(&quay).receiver(&acr).start();
    let json = ("Content-Type", "application/json");
    let paths = [
        ("dockerhub", hook("dh-token", "dockerhub", "flux-system")),
        ("quay", hook("quay-token", "quay", "flux-system")),
        ("acr", hook("acr-token", "acr", "flux-system")),
    ];

    // The providers' deliveries; no content type is required, as in Flux.
    for (kind, body) in [
        ("dockerhub", fixture("dockerhub/push.json")),
        ("quay", fixture("quay/repo-push.json")),
        ("acr", fixture("acr/push.json")),
        ("acr", fixture("acr/chart-push.json")),
    ] {
        let path = &paths.iter().find(|p| p.0 == kind).unwrap().1;
        relayed(&gw, path, &[json], body.clone()).await;
        relayed(&gw, path, &[("Content-Type", "text/plain")], body).await;
    }

    for (kind, path) in &paths {
        for (body, reason) in [
            (
                String::new(),
                format!("{kind} payload is empty: expected a JSON object"),
            ),
            (
                "<html></html>".into(),
                format!("{kind} payload is not JSON: expected value at line 1 column 1"),
            ),
            (
                "[]".into(),
                format!("{kind} payload: the body must be a JSON object, not an array at line 1 column 2"),
            ),
            (
                "{} trailing".into(),
                format!("{kind} payload has data after its JSON value (line 1, column 4)"),
            ),
        ] {
            refused(&gw, path, &[json], body, 400, &reason).await;
        }
    }
    // A declared field of the wrong JSON type, as Go's decoder refuses it.
    let legacy_quay = String::from_utf8(fixture("quay/repo-push-legacy.json")).unwrap();
    for (path, body, reason) in [
        (
            &paths[0].1,
            r#"{"push_data":{"tag":["2.7.1"]}}"#,
            "dockerhub payload: push_data.tag must be a string, not an array at line 1 column 21",
        ),
        (
            &paths[1].1,
            legacy_quay.as_str(),
            "quay payload: updated_tags must be an array, not a JSON object at line 8 column 4",
        ),
        (
            &paths[2].1,
            r#"{"action":"push","target":{"repository":{"name":"payments-service"}}}"#,
            "acr payload: target.repository must be a string, not a JSON object at line 1 column 41",
        ),
    ] {
        refused(&gw, path, &[json], body.to_string(), 400, reason).await;
    }
}
