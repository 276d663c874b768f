//! Leases (coordination.k8s.io/v1) and Secret updates under optimistic concurrency: what
//! fluxgate replicas sharing ACME storage rely on, one taking the Lease while the others see
//! a 409 Conflict on a stale resourceVersion.

use reqwest::Method;
use serde_json::{json, Value};

use crate::*;

const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/flux-system/leases";
const SECRETS: &str = "/api/v1/namespaces/flux-system/secrets";

fn lease(holder: &str) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "fluxgate-acme", "namespace": "flux-system"},
        "spec": {
            "holderIdentity": holder,
            "leaseDurationSeconds": 30,
            "acquireTime": "2026-01-01T00:00:00.000000Z",
            "renewTime": "2026-01-01T00:00:00.000000Z",
            "leaseTransitions": 0
        }
    })
}

#[tokio::test]
async fn leases_are_served_and_discovered() {
    let fx = Fixture::new();
    let (s, v) = fx.get("/apis/coordination.k8s.io/v1", ADMIN_TOKEN).await;
    assert_eq!(s, 200, "{v}");
    let leases = v["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "leases")
        .unwrap_or_else(|| panic!("no leases in {v}"));
    assert_eq!(leases["kind"], "Lease");
    assert_eq!(leases["namespaced"], true);

    let (s, v) = send(
        fx.req(Method::POST, LEASES, Some(ADMIN_TOKEN))
            .json(&lease("a")),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["spec"]["holderIdentity"], "a");
    assert_eq!(v["spec"]["leaseDurationSeconds"], 30);
    // A second replica creating the same Lease loses the race with AlreadyExists.
    let (s, v) = send(
        fx.req(Method::POST, LEASES, Some(ADMIN_TOKEN))
            .json(&lease("b")),
    )
    .await;
    assert_eq!(s, 409);
    assert_status(&v, 409, "AlreadyExists");
    assert_eq!(
        v["message"],
        "leases.coordination.k8s.io \"fluxgate-acme\" already exists"
    );
    let (s, v) = fx
        .get(&format!("{LEASES}/fluxgate-acme"), ADMIN_TOKEN)
        .await;
    assert_eq!(s, 200);
    assert_eq!(v["spec"]["holderIdentity"], "a");
}

#[tokio::test]
async fn lease_update_with_a_stale_resource_version_is_a_conflict() {
    let fx = Fixture::new();
    let (s, created) = send(
        fx.req(Method::POST, LEASES, Some(ADMIN_TOKEN))
            .json(&lease("a")),
    )
    .await;
    assert_eq!(s, 201, "{created}");
    let path = format!("{LEASES}/fluxgate-acme");

    // Replica a renews from the version it read: accepted, the version moves on.
    let mut renew = created.clone();
    renew["spec"]["renewTime"] = json!("2026-01-01T00:00:10.000000Z");
    let (s, renewed) = send(fx.req(Method::PUT, &path, Some(ADMIN_TOKEN)).json(&renew)).await;
    assert_eq!(s, 200, "{renewed}");
    assert_ne!(
        renewed["metadata"]["resourceVersion"],
        created["metadata"]["resourceVersion"]
    );
    assert_eq!(renewed["spec"]["renewTime"], "2026-01-01T00:00:10.000000Z");

    // Replica b took over from the old read: refused, as leader election expects.
    let mut takeover = created.clone();
    takeover["spec"]["holderIdentity"] = json!("b");
    takeover["spec"]["leaseTransitions"] = json!(1);
    let (s, v) = send(
        fx.req(Method::PUT, &path, Some(ADMIN_TOKEN))
            .json(&takeover),
    )
    .await;
    assert_eq!(s, 409, "{v}");
    assert_status(&v, 409, "Conflict");
    assert_eq!(
        v["message"],
        "Operation cannot be fulfilled on leases.coordination.k8s.io \"fluxgate-acme\": the object has been modified; please apply your changes to the latest version and try again"
    );
    let (_, v) = fx.get(&path, ADMIN_TOKEN).await;
    assert_eq!(v["spec"]["holderIdentity"], "a");
}

#[tokio::test]
async fn tls_secret_update_with_a_stale_resource_version_is_a_conflict() {
    let fx = Fixture::new();
    let secret = json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "fluxgate-tls", "namespace": "flux-system"},
        "type": "kubernetes.io/tls",
        "data": {"tls.crt": "b2xk", "tls.key": "b2xk"}
    });
    let (s, created) = send(
        fx.req(Method::POST, SECRETS, Some(ADMIN_TOKEN))
            .json(&secret),
    )
    .await;
    assert_eq!(s, 201, "{created}");
    assert_eq!(created["type"], "kubernetes.io/tls");
    let path = format!("{SECRETS}/fluxgate-tls");

    let mut first = created.clone();
    first["data"]["tls.crt"] = json!("bmV3");
    let (s, v) = send(fx.req(Method::PUT, &path, Some(ADMIN_TOKEN)).json(&first)).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["data"]["tls.crt"], "bmV3");

    let mut second = created.clone();
    second["data"]["tls.crt"] = json!("bG9zdA==");
    let (s, v) = send(fx.req(Method::PUT, &path, Some(ADMIN_TOKEN)).json(&second)).await;
    assert_eq!(s, 409, "{v}");
    assert_status(&v, 409, "Conflict");
    assert_eq!(
        v["message"],
        "Operation cannot be fulfilled on secrets \"fluxgate-tls\": the object has been modified; please apply your changes to the latest version and try again"
    );
    let (_, v) = fx.get(&path, ADMIN_TOKEN).await;
    assert_eq!(v["data"]["tls.crt"], "bmV3");
}

#[tokio::test]
async fn a_secrets_type_is_immutable_and_a_tls_secret_needs_both_keys() {
    let fx = Fixture::new();
    // Created empty, as a deployment creates the placeholder fluxgate fills in.
    let placeholder = json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "fluxgate-tls", "namespace": "flux-system"},
        "type": "kubernetes.io/tls",
        "data": {"tls.crt": "", "tls.key": ""}
    });
    let (s, created) = send(
        fx.req(Method::POST, SECRETS, Some(ADMIN_TOKEN))
            .json(&placeholder),
    )
    .await;
    assert_eq!(s, 201, "{created}");
    let path = format!("{SECRETS}/fluxgate-tls");

    // An update that leaves `type` out asks for Opaque, which a TLS Secret cannot become.
    let mut untyped = created.clone();
    untyped.as_object_mut().unwrap().remove("type");
    let (s, v) = send(fx.req(Method::PUT, &path, Some(ADMIN_TOKEN)).json(&untyped)).await;
    assert_eq!(s, 422, "{v}");
    assert_status(&v, 422, "Invalid");
    assert_eq!(
        v["message"],
        "Secret \"fluxgate-tls\" is invalid: type: Invalid value: \"Opaque\": field is immutable"
    );

    // Without tls.key, by update or by create.
    let mut keyless = created.clone();
    keyless["data"].as_object_mut().unwrap().remove("tls.key");
    let (s, v) = send(fx.req(Method::PUT, &path, Some(ADMIN_TOKEN)).json(&keyless)).await;
    assert_eq!(s, 422, "{v}");
    assert_eq!(
        v["message"],
        "Secret \"fluxgate-tls\" is invalid: data[tls.key]: Required value"
    );
    let mut other = placeholder.clone();
    other["metadata"]["name"] = json!("other-tls");
    other["data"] = json!({});
    let (s, v) = send(
        fx.req(Method::POST, SECRETS, Some(ADMIN_TOKEN))
            .json(&other),
    )
    .await;
    assert_eq!(s, 422, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("data[tls.crt]: Required value"),
        "{v}"
    );

    // Filled in with its type kept: accepted.
    let mut filled = created.clone();
    filled["data"] = json!({"tls.crt": "Y3J0", "tls.key": "a2V5"});
    let (s, v) = send(fx.req(Method::PUT, &path, Some(ADMIN_TOKEN)).json(&filled)).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["type"], "kubernetes.io/tls");
}
