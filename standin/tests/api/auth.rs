use reqwest::Method;
use serde_json::json;

use crate::*;

const UNAUTHORIZED: &str = "{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{},\"status\":\"Failure\",\"message\":\"Unauthorized\",\"reason\":\"Unauthorized\",\"code\":401}";

#[tokio::test]
async fn missing_wrong_or_malformed_tokens_get_401() {
    let fx = Fixture::new();
    let path = format!("{GITREPOS}/app");
    let cases: Vec<Option<String>> = vec![
        None,
        Some("Bearer wrong".into()),
        Some("Bearer ".into()),
        Some(format!("Basic {TOKEN}")),
        Some(format!("Bearer  {TOKEN}")),
    ];
    for auth in cases {
        let mut b = fx.req(Method::GET, &path, None);
        if let Some(a) = &auth {
            b = b.header("authorization", a);
        }
        let resp = b.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 401, "{auth:?}");
        assert_eq!(resp.headers()["content-type"], "application/json");
        assert_eq!(
            resp.text().await.unwrap().trim_end(),
            UNAUTHORIZED,
            "{auth:?}"
        );
    }
    // The scheme is case-insensitive, as in the apiserver.
    let resp = fx
        .req(Method::GET, &path, None)
        .header("authorization", format!("bearer {TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
}

#[tokio::test]
async fn discovery_needs_a_token_but_version_and_health_do_not() {
    let fx = Fixture::new();
    for p in [
        "/api",
        "/api/v1",
        "/apis",
        "/apis/source.toolkit.fluxcd.io/v1",
    ] {
        let (s, v) = send(fx.req(Method::GET, p, None)).await;
        assert_eq!(s, 401, "{p}");
        assert_status(&v, 401, "Unauthorized");
    }
    let (s, v) = send(fx.req(Method::GET, "/version", None)).await;
    assert_eq!(s, 200);
    assert_eq!(v["gitVersion"], "v1.33.0");
    for p in ["/healthz", "/livez", "/readyz"] {
        let resp = fx.req(Method::GET, p, None).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 200, "{p}");
        assert_eq!(resp.text().await.unwrap(), "ok");
    }
}

#[tokio::test]
async fn forbidden_named_object_has_the_apiserver_wording() {
    let fx = Fixture::new();
    // fluxgate may patch in flux-system, not in apps.
    let (s, v) = fx
        .patch(
            "/apis/source.toolkit.fluxcd.io/v1/namespaces/apps/gitrepositories/site",
            TOKEN,
            MERGE,
            "{}",
        )
        .await;
    assert_eq!(s, 403);
    assert_status(&v, 403, "Forbidden");
    assert_eq!(
        v["message"],
        "gitrepositories.source.toolkit.fluxcd.io \"site\" is forbidden: User \"system:serviceaccount:flux-system:fluxgate\" cannot patch resource \"gitrepositories\" in API group \"source.toolkit.fluxcd.io\" in the namespace \"apps\""
    );
    assert_eq!(
        v["details"],
        json!({"name": "site", "group": "source.toolkit.fluxcd.io", "kind": "gitrepositories"})
    );
}

#[tokio::test]
async fn forbidden_comes_before_not_found() {
    let fx = Fixture::new();
    let (s, v) = fx
        .get(
            "/apis/source.toolkit.fluxcd.io/v1/namespaces/apps/gitrepositories/missing",
            TOKEN,
        )
        .await;
    assert_eq!(s, 403, "{v}");
    assert_status(&v, 403, "Forbidden");
    // A verb the rule does not grant, on an object that exists in an
    // allowed namespace.
    let (s, v) = send(fx.req(Method::DELETE, &format!("{GITREPOS}/app"), Some(TOKEN))).await;
    assert_eq!(s, 403);
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("cannot delete resource"),
        "{v}"
    );
}

#[tokio::test]
async fn forbidden_collection_core_and_cluster_scope() {
    let fx = Fixture::new();
    let (s, v) = fx
        .get(
            "/apis/source.toolkit.fluxcd.io/v1/namespaces/apps/gitrepositories",
            TOKEN,
        )
        .await;
    assert_eq!(s, 403);
    assert_eq!(
        v["message"],
        "gitrepositories.source.toolkit.fluxcd.io is forbidden: User \"system:serviceaccount:flux-system:fluxgate\" cannot list resource \"gitrepositories\" in API group \"source.toolkit.fluxcd.io\" in the namespace \"apps\""
    );
    assert_eq!(
        v["details"],
        json!({"group": "source.toolkit.fluxcd.io", "kind": "gitrepositories"})
    );

    let (s, v) = fx
        .get("/api/v1/namespaces/flux-system/secrets", TOKEN)
        .await;
    assert_eq!(s, 403);
    assert_eq!(
        v["message"],
        "secrets is forbidden: User \"system:serviceaccount:flux-system:fluxgate\" cannot list resource \"secrets\" in API group \"\" in the namespace \"flux-system\""
    );
    assert_eq!(v["details"], json!({"kind": "secrets"}));

    // A Role-style rule never grants the all-namespaces list.
    let (s, v) = fx
        .get("/apis/source.toolkit.fluxcd.io/v1/gitrepositories", TOKEN)
        .await;
    assert_eq!(s, 403);
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .ends_with("at the cluster scope"),
        "{v}"
    );

    // Watches are their own verb.
    let (s, v) = fx
        .get(
            "/apis/source.toolkit.fluxcd.io/v1/namespaces/apps/gitrepositories?watch=true",
            TOKEN,
        )
        .await;
    assert_eq!(s, 403);
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("cannot watch resource"),
        "{v}"
    );
}

#[tokio::test]
async fn unknown_paths_are_forbidden_for_normal_users() {
    let fx = Fixture::new();
    let (s, v) = fx.get("/metrics", TOKEN).await;
    assert_eq!(s, 403);
    assert_eq!(
        v["message"],
        "forbidden: User \"system:serviceaccount:flux-system:fluxgate\" cannot get path \"/metrics\""
    );
    assert_eq!(v["details"], json!({}));
}

#[tokio::test]
async fn self_subject_access_review_answers_from_rbac() {
    let fx = Fixture::new();
    let path = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews";
    let review = |ns: &str, verb: &str| {
        json!({
            "kind": "SelfSubjectAccessReview",
            "apiVersion": "authorization.k8s.io/v1",
            "metadata": {"creationTimestamp": null},
            "spec": {"resourceAttributes": {
                "namespace": ns, "verb": verb,
                "group": "source.toolkit.fluxcd.io", "resource": "gitrepositories", "name": "app"
            }},
        })
    };
    let (s, v) = send(
        fx.req(Method::POST, path, Some(TOKEN))
            .json(&review("flux-system", "patch")),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["status"]["allowed"], true);
    assert!(v["status"]["reason"]
        .as_str()
        .unwrap()
        .starts_with("RBAC: allowed by"));
    assert_eq!(v["spec"]["resourceAttributes"]["verb"], "patch");

    for (ns, verb) in [("apps", "patch"), ("flux-system", "delete"), ("", "patch")] {
        let (s, v) = send(
            fx.req(Method::POST, path, Some(TOKEN))
                .json(&review(ns, verb)),
        )
        .await;
        assert_eq!(s, 201);
        assert_eq!(v["status"], json!({"allowed": false}), "{ns} {verb}");
    }

    // Neither attribute set: 422 like the apiserver's validation.
    let (s, v) = send(
        fx.req(Method::POST, path, Some(TOKEN))
            .json(&json!({"spec": {}})),
    )
    .await;
    assert_eq!(s, 422);
    assert_status(&v, 422, "Invalid");

    // Non-resource attributes use the discovery rules.
    let (s, v) = send(
        fx.req(Method::POST, path, Some(TOKEN))
            .json(&json!({"spec": {"nonResourceAttributes": {"path": "/apis", "verb": "get"}}})),
    )
    .await;
    assert_eq!(s, 201);
    assert_eq!(v["status"]["allowed"], true);

    // Unauthenticated reviews are refused like everything else.
    let (s, _) = send(
        fx.req(Method::POST, path, None)
            .json(&review("flux-system", "get")),
    )
    .await;
    assert_eq!(s, 401);
}

#[tokio::test]
async fn self_subject_review_reports_the_user() {
    let fx = Fixture::new();
    let (s, v) = send(
        fx.req(
            Method::POST,
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            Some(TOKEN),
        )
        .json(&json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})),
    )
    .await;
    assert_eq!(s, 201);
    assert_eq!(v["status"]["userInfo"]["username"], FLUXGATE);
    assert_eq!(
        v["status"]["userInfo"]["groups"],
        json!([
            "system:serviceaccounts",
            "system:serviceaccounts:flux-system",
            "system:authenticated"
        ])
    );
}
