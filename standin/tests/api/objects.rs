use reqwest::Method;
use serde_json::{json, Value};

use crate::*;

fn rv(v: &Value) -> u64 {
    v["metadata"]["resourceVersion"]
        .as_str()
        .expect("resourceVersion is a string")
        .parse()
        .expect("numeric resourceVersion")
}

#[tokio::test]
async fn get_returns_the_stored_object() {
    let fx = Fixture::new();
    let (s, v) = fx.get(&format!("{GITREPOS}/app"), TOKEN).await;
    assert_eq!(s, 200);
    assert_eq!(v["apiVersion"], "source.toolkit.fluxcd.io/v1");
    assert_eq!(v["kind"], "GitRepository");
    assert_eq!(v["metadata"]["name"], "app");
    assert_eq!(v["metadata"]["namespace"], "flux-system");
    assert_eq!(v["metadata"]["generation"], 1);
    assert_eq!(v["metadata"]["uid"].as_str().unwrap().len(), 36);
    assert!(v["metadata"]["creationTimestamp"]
        .as_str()
        .unwrap()
        .ends_with('Z'));
    assert_eq!(v["status"]["conditions"][0]["type"], "Ready");
    assert_eq!(
        Some(v),
        fx.api.object(
            "source.toolkit.fluxcd.io/v1",
            "GitRepository",
            "flux-system",
            "app"
        )
    );
}

#[tokio::test]
async fn missing_object_is_404_with_details() {
    let fx = Fixture::new();
    let (s, v) = fx.get(&format!("{GITREPOS}/nope"), TOKEN).await;
    assert_eq!(s, 404);
    assert_status(&v, 404, "NotFound");
    assert_eq!(
        v["message"],
        "gitrepositories.source.toolkit.fluxcd.io \"nope\" not found"
    );
    assert_eq!(
        v["details"],
        json!({"name": "nope", "group": "source.toolkit.fluxcd.io", "kind": "gitrepositories"})
    );
    let (s, v) = fx
        .patch(&format!("{GITREPOS}/nope"), TOKEN, MERGE, "{}")
        .await;
    assert_eq!(s, 404);
    assert_eq!(
        v["message"],
        "gitrepositories.source.toolkit.fluxcd.io \"nope\" not found"
    );
    let (s, v) = fx
        .get(
            "/api/v1/namespaces/flux-system/configmaps/nope",
            ADMIN_TOKEN,
        )
        .await;
    assert_eq!(s, 404);
    assert_eq!(v["message"], "configmaps \"nope\" not found");
    assert_eq!(v["details"], json!({"name": "nope", "kind": "configmaps"}));
}

#[tokio::test]
async fn unknown_resource_types_are_404_not_found_generic() {
    let fx = Fixture::new();
    for p in [
        "/apis/source.toolkit.fluxcd.io/v1/namespaces/flux-system/widgets/x",
        "/apis/source.toolkit.fluxcd.io/v1beta2/namespaces/flux-system/gitrepositories/app",
        "/apis/example.com/v1/namespaces/flux-system/things",
        "/api/v1/namespaces/flux-system/pods",
        "/apis/example.com",
        "/apis/example.com/v1",
        "/api/v2",
    ] {
        let (s, v) = fx.get(p, ADMIN_TOKEN).await;
        assert_eq!(s, 404, "{p}");
        assert_status(&v, 404, "NotFound");
        assert_eq!(
            v["message"], "the server could not find the requested resource",
            "{p}"
        );
        assert_eq!(v["details"], json!({}), "{p}");
    }
}

#[tokio::test]
async fn merge_patch_keeps_other_annotations_and_null_deletes() {
    let fx = Fixture::new();
    let path = format!("{GITREPOS}/app");
    let (_, before) = fx.get(&path, TOKEN).await;
    let (s, v) = fx
        .patch(
            &path,
            TOKEN,
            MERGE,
            r#"{"metadata":{"annotations":{"reconcile.fluxcd.io/requestedAt":"2024-05-01T10:00:00Z"}}}"#,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let ann = &v["metadata"]["annotations"];
    assert_eq!(ann["keep"], "me");
    assert_eq!(
        ann["reconcile.fluxcd.io/requestedAt"],
        "2024-05-01T10:00:00Z"
    );
    assert!(rv(&v) > rv(&before));
    // Metadata-only change: generation stays; identity never changes.
    assert_eq!(v["metadata"]["generation"], 1);
    assert_eq!(v["metadata"]["uid"], before["metadata"]["uid"]);
    assert_eq!(
        v["metadata"]["creationTimestamp"],
        before["metadata"]["creationTimestamp"]
    );
    assert_eq!(v["spec"], before["spec"]);
    assert_eq!(v["metadata"]["labels"], before["metadata"]["labels"]);

    let (s, v2) = fx
        .patch(
            &path,
            TOKEN,
            MERGE,
            r#"{"metadata":{"annotations":{"keep":null}}}"#,
        )
        .await;
    assert_eq!(s, 200);
    assert!(v2["metadata"]["annotations"].get("keep").is_none(), "{v2}");
    assert_eq!(
        v2["metadata"]["annotations"]["reconcile.fluxcd.io/requestedAt"],
        "2024-05-01T10:00:00Z"
    );
    assert!(rv(&v2) > rv(&v));
    assert_eq!(
        Some(v2),
        fx.api.object(
            "source.toolkit.fluxcd.io/v1",
            "GitRepository",
            "flux-system",
            "app"
        )
    );
}

#[tokio::test]
async fn resource_versions_are_global_and_increasing() {
    let fx = Fixture::new();
    let mut last = 0;
    for (i, name) in ["app", "api", "app", "db"].iter().enumerate() {
        let body = format!(r#"{{"metadata":{{"annotations":{{"n":"{i}"}}}}}}"#);
        let (s, v) = fx
            .patch(&format!("{GITREPOS}/{name}"), TOKEN, MERGE, &body)
            .await;
        assert_eq!(s, 200);
        assert!(rv(&v) > last, "{last} then {v}");
        last = rv(&v);
    }
    assert_eq!(fx.api.resource_version(), last);
}

#[tokio::test]
async fn a_no_op_patch_keeps_the_resource_version() {
    let fx = Fixture::new();
    let path = format!("{GITREPOS}/app");
    let (_, before) = fx.get(&path, TOKEN).await;
    let (s, v) = fx
        .patch(
            &path,
            TOKEN,
            MERGE,
            r#"{"metadata":{"annotations":{"keep":"me"}}}"#,
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(v, before);
}

#[tokio::test]
async fn spec_changes_bump_generation_and_status_is_not_writable_here() {
    let fx = Fixture::new();
    let path = format!("{GITREPOS}/app");
    let (s, v) = fx
        .patch(
            &path,
            ADMIN_TOKEN,
            MERGE,
            r#"{"spec":{"interval":"5m"},"status":{"conditions":[]}}"#,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["metadata"]["generation"], 2);
    assert_eq!(v["spec"]["interval"], "5m");
    // The status subresource is enabled, so the main resource ignores status.
    assert_eq!(v["status"]["conditions"][0]["type"], "Ready");

    let (s, v) = fx
        .patch(
            &format!("{path}/status"),
            ADMIN_TOKEN,
            MERGE,
            r#"{"status":{"observedGeneration":2},"spec":{"interval":"9m"}}"#,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["status"]["observedGeneration"], 2);
    assert_eq!(
        v["spec"]["interval"], "5m",
        "status updates change nothing else"
    );
    assert_eq!(v["metadata"]["generation"], 2);

    // fluxgate's rule does not cover the status subresource.
    let (s, v) = fx
        .patch(&format!("{path}/status"), TOKEN, MERGE, "{}")
        .await;
    assert_eq!(s, 403);
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("resource \"gitrepositories/status\""),
        "{v}"
    );
}

#[tokio::test]
async fn json_patch_applies_and_failed_tests_are_422() {
    let fx = Fixture::new();
    let path = format!("{GITREPOS}/app");
    let jp = "application/json-patch+json";
    let (s, v) = fx
        .patch(
            &path,
            TOKEN,
            jp,
            r#"[{"op":"test","path":"/metadata/annotations/keep","value":"me"},{"op":"add","path":"/metadata/annotations/x","value":"y"}]"#,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["metadata"]["annotations"]["x"], "y");

    let (s, v) = fx
        .patch(
            &path,
            TOKEN,
            jp,
            r#"[{"op":"test","path":"/metadata/annotations/keep","value":"other"}]"#,
        )
        .await;
    assert_eq!(s, 422);
    assert_status(&v, 422, "Invalid");
    assert_eq!(
        v["message"],
        "the server rejected our request due to an error in our request"
    );
    assert_eq!(
        v["details"]["causes"][0]["reason"],
        "UnexpectedServerResponse"
    );

    let (s, v) = fx
        .patch(
            &path,
            TOKEN,
            jp,
            r#"[{"op":"remove","path":"/metadata/annotations/missing"}]"#,
        )
        .await;
    assert_eq!(s, 422, "{v}");
    let (s, v) = fx.patch(&path, TOKEN, jp, r#"{"op":"add"}"#).await;
    assert_eq!(s, 400, "{v}");
    assert_status(&v, 400, "BadRequest");
    // Nothing of the failed patches was stored.
    let (_, now) = fx.get(&path, TOKEN).await;
    assert_eq!(
        now["metadata"]["annotations"],
        json!({"keep": "me", "x": "y"})
    );
}

#[tokio::test]
async fn patch_content_types() {
    let fx = Fixture::new();
    let path = format!("{GITREPOS}/app");
    let smp = "application/strategic-merge-patch+json";
    let (s, v) = fx
        .patch(
            &path,
            TOKEN,
            smp,
            r#"{"metadata":{"annotations":{"a":"b"}}}"#,
        )
        .await;
    assert_eq!(s, 415);
    assert_status(&v, 415, "UnsupportedMediaType");
    assert_eq!(
        v["message"],
        "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml"
    );
    for ct in [
        "application/apply-patch+yaml",
        "application/json",
        "text/plain",
        "",
    ] {
        let (s, v) = fx.patch(&path, TOKEN, ct, "{}").await;
        assert_eq!(s, 415, "{ct}: {v}");
    }
    // A charset parameter is fine.
    let (s, _) = fx
        .patch(
            &path,
            TOKEN,
            "application/merge-patch+json; charset=utf-8",
            "{}",
        )
        .await;
    assert_eq!(s, 200);
    // Built-in kinds take strategic merge patches.
    let (s, v) = fx
        .patch(
            "/api/v1/namespaces/flux-system/configmaps/settings",
            ADMIN_TOKEN,
            smp,
            r#"{"data":{"b":"2"}}"#,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["data"], json!({"a": "1", "b": "2"}));
}

#[tokio::test]
async fn malformed_patch_bodies_are_400() {
    let fx = Fixture::new();
    let path = format!("{GITREPOS}/app");
    for body in ["{", "not json", "[1,2]", "\"x\""] {
        let (s, v) = fx.patch(&path, TOKEN, MERGE, body).await;
        assert_eq!(s, 400, "{body}: {v}");
        assert_status(&v, 400, "BadRequest");
        assert!(
            v["message"]
                .as_str()
                .unwrap()
                .starts_with("error decoding patch: "),
            "{v}"
        );
    }
}

#[tokio::test]
async fn identity_fields_cannot_change() {
    let fx = Fixture::new();
    let path = format!("{GITREPOS}/app");
    let (s, v) = fx
        .patch(&path, TOKEN, MERGE, r#"{"metadata":{"name":"other"}}"#)
        .await;
    assert_eq!(s, 400);
    assert_status(&v, 400, "BadRequest");
    assert_eq!(
        v["message"],
        "the name of the object (other) does not match the name on the URL (app)"
    );

    let (s, v) = fx
        .patch(&path, TOKEN, MERGE, r#"{"metadata":{"namespace":"apps"}}"#)
        .await;
    assert_eq!(s, 400);
    assert_eq!(
        v["message"],
        "the namespace of the object (apps) does not match the namespace on the URL (flux-system)"
    );

    let (s, v) = fx
        .patch(&path, TOKEN, MERGE, r#"{"kind":"Kustomization"}"#)
        .await;
    assert_eq!(s, 422);
    assert_status(&v, 422, "Invalid");
    assert_eq!(
        v["message"],
        "GitRepository.source.toolkit.fluxcd.io \"app\" is invalid: kind: Invalid value: \"Kustomization\": must be GitRepository"
    );
    assert_eq!(v["details"]["causes"][0]["field"], "kind");

    let (s, v) = fx
        .patch(
            &path,
            TOKEN,
            MERGE,
            r#"{"apiVersion":"source.toolkit.fluxcd.io/v1beta2"}"#,
        )
        .await;
    assert_eq!(s, 422, "{v}");

    let (s, v) = fx
        .patch(&path, TOKEN, MERGE, r#"{"metadata":{"uid":"1234"}}"#)
        .await;
    assert_eq!(s, 422);
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .ends_with("metadata.uid: Invalid value: \"1234\": field is immutable"),
        "{v}"
    );

    // creationTimestamp and generation edits are silently reverted.
    let (_, before) = fx.get(&path, TOKEN).await;
    let (s, v) = fx
        .patch(
            &path,
            TOKEN,
            MERGE,
            r#"{"metadata":{"creationTimestamp":"2001-01-01T00:00:00Z","generation":42}}"#,
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(v, before);

    let (s, v) = fx
        .patch(
            &path,
            TOKEN,
            MERGE,
            r#"{"metadata":{"labels":{"bad key":"x"}}}"#,
        )
        .await;
    assert_eq!(s, 422, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("metadata.labels: Invalid value: \"bad key\""),
        "{v}"
    );
}

#[tokio::test]
async fn stale_resource_version_is_a_409_conflict() {
    let fx = Fixture::new();
    let path = format!("{GITREPOS}/app");
    let (_, v) = fx.get(&path, TOKEN).await;
    let current = v["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let body =
        format!(r#"{{"metadata":{{"resourceVersion":"{current}","annotations":{{"a":"1"}}}}}}"#);
    let (s, _) = fx.patch(&path, TOKEN, MERGE, &body).await;
    assert_eq!(s, 200);
    let (s, v) = fx.patch(&path, TOKEN, MERGE, &body).await;
    assert_eq!(s, 409);
    assert_status(&v, 409, "Conflict");
    assert_eq!(
        v["message"],
        "Operation cannot be fulfilled on gitrepositories.source.toolkit.fluxcd.io \"app\": the object has been modified; please apply your changes to the latest version and try again"
    );
}

#[tokio::test]
async fn create_update_delete() {
    let fx = Fixture::new();
    let new = gitrepo("fresh", "flux-system", json!({"app": "fresh"}));
    let (s, v) = send(fx.req(Method::POST, GITREPOS, Some(ADMIN_TOKEN)).json(&new)).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["metadata"]["generation"], 1);
    assert!(v.get("status").is_none(), "create drops status: {v}");
    let uid = v["metadata"]["uid"].as_str().unwrap().to_string();

    let (s, v) = send(fx.req(Method::POST, GITREPOS, Some(ADMIN_TOKEN)).json(&new)).await;
    assert_eq!(s, 409);
    assert_status(&v, 409, "AlreadyExists");
    assert_eq!(
        v["message"],
        "gitrepositories.source.toolkit.fluxcd.io \"fresh\" already exists"
    );

    // Creating into a namespace that does not exist.
    let (s, v) = send(
        fx.req(
            Method::POST,
            "/apis/source.toolkit.fluxcd.io/v1/namespaces/ghost/gitrepositories",
            Some(ADMIN_TOKEN),
        )
        .json(&gitrepo("x", "ghost", json!({}))),
    )
    .await;
    assert_eq!(s, 404);
    assert_eq!(v["message"], "namespaces \"ghost\" not found");

    // A bad name is a 422.
    let (s, v) = send(
        fx.req(Method::POST, GITREPOS, Some(ADMIN_TOKEN))
            .json(&gitrepo("Bad_Name", "flux-system", json!({}))),
    )
    .await;
    assert_eq!(s, 422, "{v}");

    // PUT needs the current resourceVersion on custom resources.
    let (_, mut cur) = fx.get(&format!("{GITREPOS}/fresh"), ADMIN_TOKEN).await;
    cur["spec"]["interval"] = json!("2m");
    let (s, v) = send(
        fx.req(Method::PUT, &format!("{GITREPOS}/fresh"), Some(ADMIN_TOKEN))
            .json(&cur),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["metadata"]["generation"], 2);
    let (s, v) = send(
        fx.req(Method::PUT, &format!("{GITREPOS}/fresh"), Some(ADMIN_TOKEN))
            .json(&cur),
    )
    .await;
    assert_eq!(s, 409, "stale PUT: {v}");
    cur["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("resourceVersion");
    let (s, v) = send(
        fx.req(Method::PUT, &format!("{GITREPOS}/fresh"), Some(ADMIN_TOKEN))
            .json(&cur),
    )
    .await;
    assert_eq!(s, 422, "{v}");
    assert!(
        v["message"].as_str().unwrap().ends_with(
            "metadata.resourceVersion: Invalid value: 0x0: must be specified for an update"
        ),
        "{v}"
    );

    let (s, v) = send(fx.req(
        Method::DELETE,
        &format!("{GITREPOS}/fresh"),
        Some(ADMIN_TOKEN),
    ))
    .await;
    assert_eq!(s, 200);
    assert_eq!(v["status"], "Success");
    assert_eq!(v["details"]["uid"], uid.as_str());
    let (s, _) = send(fx.req(
        Method::DELETE,
        &format!("{GITREPOS}/fresh"),
        Some(ADMIN_TOKEN),
    ))
    .await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn finalizers_hold_a_deletion_until_removed() {
    let fx = Fixture::new();
    let mut obj = gitrepo("held", "flux-system", json!({}));
    obj["metadata"]["finalizers"] = json!(["finalizers.fluxcd.io"]);
    fx.api.put_object(obj);
    let path = format!("{GITREPOS}/held");
    let (s, v) = send(fx.req(Method::DELETE, &path, Some(ADMIN_TOKEN))).await;
    assert_eq!(s, 202, "{v}");
    assert!(v["metadata"]["deletionTimestamp"].is_string());
    let (s, _) = fx.get(&path, ADMIN_TOKEN).await;
    assert_eq!(s, 200);
    let (s, _) = fx
        .patch(
            &path,
            ADMIN_TOKEN,
            MERGE,
            r#"{"metadata":{"finalizers":null}}"#,
        )
        .await;
    assert_eq!(s, 200);
    let (s, _) = fx.get(&path, ADMIN_TOKEN).await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn secrets_fold_string_data_and_namespaces_are_cluster_scoped() {
    let fx = Fixture::new();
    let (s, v) = send(
        fx.req(
            Method::POST,
            "/api/v1/namespaces/flux-system/secrets",
            Some(ADMIN_TOKEN),
        )
        .json(&json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "token"},
            "stringData": {"token": "foo"}
        })),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["data"]["token"], "Zm9v");
    assert_eq!(v["type"], "Opaque");
    assert!(v.get("stringData").is_none());

    let (s, v) = fx.get("/api/v1/namespaces/flux-system", ADMIN_TOKEN).await;
    assert_eq!(s, 200);
    assert_eq!(v["status"]["phase"], "Active");
    assert_eq!(
        v["metadata"]["labels"]["kubernetes.io/metadata.name"],
        "flux-system"
    );
    let (s, v) = send(fx.req(
        Method::DELETE,
        "/api/v1/namespaces/default",
        Some(ADMIN_TOKEN),
    ))
    .await;
    assert_eq!(s, 403);
    assert_eq!(
        v["message"],
        "namespaces \"default\" is forbidden: this namespace may not be deleted"
    );
}

#[tokio::test]
async fn accept_and_alternative_representations() {
    let fx = Fixture::new();
    let path = format!("{GITREPOS}/app");
    let (s, v) = send(
        fx.req(Method::GET, &path, Some(TOKEN))
            .header("accept", "application/yaml"),
    )
    .await;
    assert_eq!(s, 406);
    assert_status(&v, 406, "NotAcceptable");
    let (s, v) = send(fx.req(Method::GET, &path, Some(TOKEN)).header(
        "accept",
        "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1",
    ))
    .await;
    assert_eq!(s, 200);
    assert_eq!(v["kind"], "PartialObjectMetadata");
    assert_eq!(v["metadata"]["name"], "app");
    assert!(v.get("spec").is_none());
    let (s, v) = send(fx.req(Method::GET, GITREPOS, Some(TOKEN)).header(
        "accept",
        "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
    ))
    .await;
    assert_eq!(s, 200);
    assert_eq!(v["kind"], "Table");
    let cols: Vec<&str> = v["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(cols, ["Name", "URL", "Age", "Ready", "Status"]);
    assert_eq!(v["rows"][0]["cells"][0], "api");
    assert_eq!(v["rows"][0]["cells"][3], "True");
}

/// Core Events, as fluxgate's `relay.events` writes them: created with a client-chosen name,
/// refused without RBAC, validated against their namespace like the apiserver's legacy
/// validation, and selectable by the fields `kubectl describe` searches on.
#[tokio::test]
async fn events_are_created_validated_and_selected_by_involved_object() {
    const EVENTS: &str = "/api/v1/namespaces/flux-system/events";
    let fx = Fixture::new();
    let event = |name: &str, ns: &str| {
        json!({"apiVersion": "v1", "kind": "Event",
               "metadata": {"name": name, "namespace": "flux-system"},
               "involvedObject": {"apiVersion": "source.toolkit.fluxcd.io/v1",
                                  "kind": "GitRepository", "namespace": ns, "name": "app",
                                  "uid": "u-1"},
               "reason": "ReconcileRequested", "message": "m", "type": "Normal",
               "source": {"component": "fluxgate"}, "reportingComponent": "fluxgate"})
    };
    // fluxgate's account has no rule for events here.
    let (s, v) = send(
        fx.req(Method::POST, EVENTS, Some(TOKEN))
            .json(&event("app.1", "flux-system")),
    )
    .await;
    assert_eq!(s, 403, "{v}");
    assert_eq!(
        v["message"],
        "events is forbidden: User \"system:serviceaccount:flux-system:fluxgate\" cannot create resource \"events\" in API group \"\" in the namespace \"flux-system\""
    );
    let (s, v) = send(
        fx.req(Method::POST, EVENTS, Some(ADMIN_TOKEN))
            .json(&event("app.2", "apps")),
    )
    .await;
    assert_eq!(s, 422, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains(
            "involvedObject.namespace: Invalid value: \"apps\": does not match event.namespace"
        ),
        "{v}"
    );
    let (s, v) = send(
        fx.req(Method::POST, EVENTS, Some(ADMIN_TOKEN))
            .json(&event("app.3", "flux-system")),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["metadata"]["name"], "app.3");
    let (s, v) = fx
        .get(
            &format!("{EVENTS}?fieldSelector=involvedObject.uid%3Du-1,reason%3DReconcileRequested,source%3Dfluxgate"),
            ADMIN_TOKEN,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["items"].as_array().unwrap().len(), 1, "{v}");
    let (s, v) = fx
        .get(
            &format!("{EVENTS}?fieldSelector=involvedObject.uid%3Dother"),
            ADMIN_TOKEN,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert!(v["items"].as_array().unwrap().is_empty(), "{v}");
}
