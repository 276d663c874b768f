use reqwest::Method;

use crate::*;

#[tokio::test]
async fn discovery_documents() {
    let fx = Fixture::new();
    let (s, v) = fx.get("/api", TOKEN).await;
    assert_eq!(s, 200);
    assert_eq!(v["kind"], "APIVersions");
    assert_eq!(v["versions"][0], "v1");

    let (s, v) = fx.get("/apis", TOKEN).await;
    assert_eq!(s, 200);
    assert_eq!(v["kind"], "APIGroupList");
    let groups: Vec<&str> = v["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap())
        .collect();
    for g in [
        "authorization.k8s.io",
        "source.toolkit.fluxcd.io",
        "kustomize.toolkit.fluxcd.io",
        "helm.toolkit.fluxcd.io",
        "image.toolkit.fluxcd.io",
        "notification.toolkit.fluxcd.io",
        "source.extensions.fluxcd.io",
    ] {
        assert!(groups.contains(&g), "{g} in {groups:?}");
    }

    let (s, v) = fx.get("/apis/source.toolkit.fluxcd.io/v1", TOKEN).await;
    assert_eq!(s, 200);
    assert_eq!(v["kind"], "APIResourceList");
    assert_eq!(v["groupVersion"], "source.toolkit.fluxcd.io/v1");
    let gr = v["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "gitrepositories")
        .unwrap();
    assert_eq!(gr["kind"], "GitRepository");
    assert_eq!(gr["namespaced"], true);
    assert_eq!(gr["singularName"], "gitrepository");
    assert!(gr["verbs"].as_array().unwrap().iter().any(|v| v == "patch"));

    let (s, v) = fx.get("/api/v1", TOKEN).await;
    assert_eq!(s, 200);
    let ns = v["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "namespaces")
        .unwrap();
    assert_eq!(ns["namespaced"], false);

    let (s, v) = fx.get("/apis/helm.toolkit.fluxcd.io", TOKEN).await;
    assert_eq!(s, 200);
    assert_eq!(v["kind"], "APIGroup");
    assert_eq!(
        v["preferredVersion"]["groupVersion"],
        "helm.toolkit.fluxcd.io/v2"
    );

    // Aggregated discovery is declined in favour of plain JSON when the
    // client allows it, as kubectl does.
    let (s, v) = send(fx.req(Method::GET, "/apis", Some(TOKEN)).header(
        "accept",
        "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json",
    ))
    .await;
    assert_eq!(s, 200);
    assert_eq!(v["kind"], "APIGroupList");
    let (s, _) = send(fx.req(Method::GET, "/apis", Some(TOKEN)).header(
        "accept",
        "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList",
    ))
    .await;
    assert_eq!(s, 406);

    // Discovery is read-only.
    let (s, v) = send(fx.req(Method::POST, "/apis", Some(TOKEN))).await;
    assert_eq!(s, 403);
    assert!(v["message"]
        .as_str()
        .unwrap()
        .contains("cannot post path \"/apis\""));
}
