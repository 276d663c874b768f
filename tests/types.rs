//! The receiver types checked by header token or body: harbor, nexus, dockerhub, quay, acr and
//! cdevents, end to end over real TLS against the real binary and the stand-in API. A valid
//! delivery annotates the GitRepository; each kind of invalid one is refused with its status
//! and reason and reaches no API.

use crate::common::*;
use serde_json::{json, Value};

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
async fn nexus_bare_hex_hmac_sha1_then_the_payload() {
    const TOKEN: &str = "nexus-token";
    let s = Setup::new();
    let token_file = s.secret("nexus", TOKEN);
    let r = receiver(&s, "nexus", "nexus", TOKEN, "");
    let gw = s.receiver(&r).start();
    let path = hook(TOKEN, "nexus", "flux-system");
    let body = fixture("nexus/component-created.json");
    let good = fluxgate::verify::signature::sign(
        fluxgate::verify::Algorithm::Sha1,
        TOKEN.as_bytes(),
        &body,
    );
    const SIG: &str = "X-Nexus-Webhook-Signature";

    relayed(&gw, &path, &[(SIG, &good)], body.clone()).await;

    // `fluxgate sign` prints the header Nexus would send.
    let mut child = std::process::Command::new(BIN)
        .args([
            "sign",
            "--type",
            "nexus",
            "--algorithm",
            "sha1",
            "--token-file",
        ])
        .arg(&token_file)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let other = fixture("nexus/asset-updated.json");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), &other).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let line = String::from_utf8(out.stdout).unwrap();
    let (name, value) = line.trim().split_once(": ").unwrap();
    assert_eq!(name, SIG);
    relayed(&gw, &path, &[(name, value)], other).await;

    // The same delivery id again is a redelivery: answered, not relayed twice. (Another body
    // than the first delivery's: the same signed body again is a replay whatever its id.)
    let id = (
        "X-Nexus-Webhook-Delivery",
        "7f4a6dde-5c68-4999-bcc0-a62f3fb8ae48",
    );
    let third = [body.as_slice(), b"\n"].concat();
    let signed_third = fluxgate::verify::signature::sign(
        fluxgate::verify::Algorithm::Sha1,
        TOKEN.as_bytes(),
        &third,
    );
    relayed(&gw, &path, &[(SIG, &signed_third), id], third.clone()).await;
    let (status, text) = gw.post(&path, &[(SIG, &signed_third), id], third).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap()["duplicate"],
        true
    );

    let malformed = "malformed signature in X-Nexus-Webhook-Signature: expected 40 lower-case hex digits of an HMAC-SHA1, with no prefix";
    let wrong = fluxgate::verify::signature::sign(
        fluxgate::verify::Algorithm::Sha1,
        b"another-token",
        &body,
    );
    let cases: Vec<(Vec<(&str, String)>, &str)> = vec![
        (vec![], "missing signature (X-Nexus-Webhook-Signature)"),
        (vec![(SIG, good.to_uppercase())], malformed),
        (vec![(SIG, format!("sha1={good}"))], malformed),
        (
            vec![(SIG, wrong)],
            "signature mismatch (X-Nexus-Webhook-Signature, sha1)",
        ),
        (
            vec![(SIG, good.clone()), (SIG, good.clone())],
            "more than one X-Nexus-Webhook-Signature header",
        ),
    ];
    for (headers, reason) in cases {
        refused(&gw, &path, &refs(&headers), body.clone(), 401, reason).await;
    }
    // Signed right, but not the payload Flux decodes.
    for (bad, reason) in [
        (&b""[..], "nexus payload is empty: expected a JSON object"),
        (
            b"repositoryName=maven-releases",
            "nexus payload is not JSON: expected value at line 1 column 1",
        ),
        (
            br#"{"action":"CREATED","repositoryName":42}"#,
            "nexus payload: repositoryName must be a string, not a number at line 1 column 39",
        ),
        (
            br#"{"action":"CREATED"}{"action":"DELETED"}"#,
            "nexus payload has data after its JSON value (line 1, column 21)",
        ),
    ] {
        let sig = fluxgate::verify::signature::sign(
            fluxgate::verify::Algorithm::Sha1,
            TOKEN.as_bytes(),
            bad,
        );
        refused(&gw, &path, &[(SIG, &sig)], bad.to_vec(), 400, reason).await;
    }
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

#[tokio::test(flavor = "multi_thread")]
async fn cdevents_validate_the_event_and_filter_on_ce_type() {
    let s = Setup::new();
    let any = receiver(&s, "cde", "cdevents", "cde-token", "");
    let filtered = receiver(
        &s,
        "cde-merged",
        "cdevents",
        "cde-token",
        "events = [\"dev.cdevents.change.merged.0.2.0\", \"dev.cdevents.artifact.published.0.2.0\"]",
    );
    let gw = s.receiver(&any).receiver(&filtered).start();
    let any_path = hook("cde-token", "cde", "flux-system");
    let path = hook("cde-token", "cde-merged", "flux-system");
    let merged = fixture("cdevents/change-merged-0.4.1.json");
    let ce = |ty: &'static str| ("Ce-Type", ty);

    // Any valid event, with or without a Ce-Type, when the receiver lists no events.
    for name in [
        "change-merged-0.4.1.json",
        "artifact-published-0.4.1.json",
        "pipelinerun-finished-0.3.0.json",
        "service-deployed-0.5.0.json",
    ] {
        let summary = relayed(
            &gw,
            &any_path,
            &[ce("dev.cdevents.service.deployed.0.3.0")],
            fixture(&format!("cdevents/{name}")),
        )
        .await;
        assert_eq!(summary["event"], "dev.cdevents.service.deployed.0.3.0");
    }
    relayed(&gw, &any_path, &[], merged.clone()).await;

    // Without subject.content, as Flux's Go SDK reads it: the zero content, which passes when
    // the event type's schema requires no content field, and is refused naming the one it
    // requires otherwise.
    let mut no_content: Value = serde_json::from_slice(&merged).unwrap();
    no_content["subject"]
        .as_object_mut()
        .unwrap()
        .remove("content");
    relayed(&gw, &any_path, &[], no_content.to_string().into()).await;
    let mut deployed = no_content.clone();
    deployed["context"]["type"] = json!("dev.cdevents.service.deployed.0.2.0");
    deployed["subject"]["type"] = json!("service");
    refused(
        &gw,
        &any_path,
        &[],
        deployed.to_string(),
        400,
        "cdevents payload is not a valid CDEvent: subject.content.artifactId is missing",
    )
    .await;

    // Listed events match Ce-Type case-insensitively; Ce-Type is not compared with the body.
    relayed(
        &gw,
        &path,
        &[ce("dev.cdevents.change.merged.0.2.0")],
        merged.clone(),
    )
    .await;
    relayed(
        &gw,
        &path,
        &[ce("DEV.CDEVENTS.Change.Merged.0.2.0")],
        merged.clone(),
    )
    .await;
    relayed(
        &gw,
        &path,
        &[ce("dev.cdevents.artifact.published.0.2.0")],
        merged.clone(),
    )
    .await;
    refused(
        &gw,
        &path,
        &[ce("dev.cdevents.service.deployed.0.3.0")],
        merged.clone(),
        400,
        "event \"dev.cdevents.service.deployed.0.3.0\" is not accepted by this receiver",
    )
    .await;
    refused(&gw, &path, &[], merged.clone(), 400, "missing event header").await;

    // A redelivery (same Ce-Id) is answered without a second relay.
    let id = ("Ce-Id", "b9a8c7d6-5e4f-4a3b-8c2d-1e0f9a8b7c6d");
    relayed(&gw, &any_path, &[id], merged.clone()).await;
    let (status, text) = gw.post(&any_path, &[id], merged.clone()).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap()["duplicate"],
        true
    );

    // The body is validated before the event filter, as in Flux.
    let mut extra_field: Value = serde_json::from_slice(&merged).unwrap();
    extra_field["context"]["gitRevision"] = json!("5555");
    let mut unknown_type: Value = serde_json::from_slice(&merged).unwrap();
    unknown_type["context"]["type"] = json!("dev.cdevents.change.merged.7.0.0");
    let mut future_spec: Value =
        serde_json::from_slice(&fixture("cdevents/service-deployed-0.5.0.json")).unwrap();
    future_spec["context"]["specversion"] = json!("0.6.0");
    let prefix = "cdevents payload is not a valid CDEvent: ";
    for (body, reason) in [
        (
            String::new(),
            "cdevents payload is empty: expected a JSON object".to_string(),
        ),
        (
            "not json".into(),
            "cdevents payload is not JSON: expected ident at line 1 column 2".into(),
        ),
        (
            "null".into(),
            format!("{prefix}the body must be a JSON object"),
        ),
        (
            json!({"context": {}}).to_string(),
            format!("{prefix}subject is missing"),
        ),
        (
            json!({"context": serde_json::from_slice::<Value>(&merged).unwrap()["context"]})
                .to_string(),
            format!("{prefix}subject is missing"),
        ),
        (
            extra_field.to_string(),
            format!("{prefix}context has a field the CDEvents schema does not define"),
        ),
        (
            unknown_type.to_string(),
            format!("{prefix}context.type is not an event type of CDEvents spec 0.3, 0.4 or 0.5"),
        ),
        (
            future_spec.to_string(),
            format!("{prefix}its CDEvents spec version is not one fluxgate reads (0.3, 0.4, 0.5)"),
        ),
    ] {
        for p in [&any_path, &path] {
            refused(
                &gw,
                p,
                &[ce("dev.cdevents.service.deployed.0.3.0")],
                body.clone(),
                400,
                &reason,
            )
            .await;
        }
    }
}
