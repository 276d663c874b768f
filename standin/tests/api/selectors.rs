use serde_json::Value;

use crate::*;

fn names(v: &Value) -> Vec<String> {
    v["items"]
        .as_array()
        .unwrap_or_else(|| panic!("a list: {v}"))
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
        .collect()
}

async fn select(fx: &Fixture, selector: &str) -> (u16, Value) {
    let q: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("labelSelector", selector)
        .finish();
    fx.get(&format!("{GITREPOS}?{q}"), TOKEN).await
}

#[tokio::test]
async fn list_shape_and_order() {
    let fx = Fixture::new();
    let (s, v) = fx.get(GITREPOS, TOKEN).await;
    assert_eq!(s, 200);
    assert_eq!(v["apiVersion"], "source.toolkit.fluxcd.io/v1");
    assert_eq!(v["kind"], "GitRepositoryList");
    let rv: u64 = v["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(rv, fx.api.resource_version());
    assert_eq!(names(&v), ["api", "app", "db", "plain"]);
    for item in v["items"].as_array().unwrap() {
        assert_eq!(item["apiVersion"], "source.toolkit.fluxcd.io/v1");
        assert_eq!(item["kind"], "GitRepository");
    }
    // All namespaces, sorted by namespace then name.
    let (s, v) = fx
        .get(
            "/apis/source.toolkit.fluxcd.io/v1/gitrepositories",
            ADMIN_TOKEN,
        )
        .await;
    assert_eq!(s, 200);
    let ns: Vec<String> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            format!(
                "{}/{}",
                i["metadata"]["namespace"].as_str().unwrap(),
                i["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        ns,
        [
            "apps/site",
            "flux-system/api",
            "flux-system/app",
            "flux-system/db",
            "flux-system/plain"
        ]
    );
}

#[tokio::test]
async fn label_selectors_of_every_form() {
    let fx = Fixture::new();
    let cases: &[(&str, &[&str])] = &[
        ("app=web", &["app"]),
        ("app==web", &["app"]),
        ("app!=web", &["api", "db", "plain"]),
        ("app in (web,api)", &["api", "app"]),
        ("app in ( web , api )", &["api", "app"]),
        ("app notin (web,api)", &["db", "plain"]),
        ("tier", &["api", "app"]),
        ("!tier", &["db", "plain"]),
        ("app,!tier", &["db"]),
        ("app=web,tier=front", &["app"]),
        ("app=web,tier=back", &[]),
        (" app = api , tier ", &["api"]),
        ("release>1", &["db"]),
        ("release<2", &[]),
        ("", &["api", "app", "db", "plain"]),
    ];
    for (sel, want) in cases {
        let (s, v) = select(&fx, sel).await;
        assert_eq!(s, 200, "{sel}: {v}");
        assert_eq!(names(&v), *want, "selector {sel:?}");
    }
}

#[tokio::test]
async fn invalid_label_selectors_are_400() {
    let fx = Fixture::new();
    for sel in [
        "app in (web",
        "app=",
        "=web",
        "app==",
        "a b",
        "app=web,",
        "bad key=x",
        "app=bad value",
        "x in ()x",
        "!a=b",
        "n>x",
    ] {
        let (s, v) = select(&fx, sel).await;
        if sel == "app=" || sel == "app==" {
            // An empty value is valid syntax: it matches an empty label.
            assert_eq!(s, 200, "{sel}: {v}");
            continue;
        }
        assert_eq!(s, 400, "{sel}: {v}");
        assert_status(&v, 400, "BadRequest");
        assert!(!v["message"].as_str().unwrap().is_empty());
    }
    let (_, v) = select(&fx, "app in (web").await;
    assert_eq!(
        v["message"],
        "unable to parse requirement: found '', expected: ',' or ')'"
    );
}

#[tokio::test]
async fn field_selectors() {
    let fx = Fixture::new();
    let (s, v) = fx
        .get(
            &format!("{GITREPOS}?fieldSelector=metadata.name%3Dapp"),
            TOKEN,
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(names(&v), ["app"]);
    let (s, v) = fx
        .get("/apis/source.toolkit.fluxcd.io/v1/gitrepositories?fieldSelector=metadata.namespace!%3Dflux-system", ADMIN_TOKEN)
        .await;
    assert_eq!(s, 200);
    assert_eq!(names(&v), ["site"]);
    let (s, v) = fx
        .get(&format!("{GITREPOS}?fieldSelector=spec.url%3Dx"), TOKEN)
        .await;
    assert_eq!(s, 400);
    assert_status(&v, 400, "BadRequest");
    assert_eq!(
        v["message"],
        "\"spec.url\" is not a known field selector: only \"metadata.name\", \"metadata.namespace\""
    );
}

#[tokio::test]
async fn limit_and_continue_page_through_a_list() {
    let fx = Fixture::new();
    let (s, v) = fx.get(&format!("{GITREPOS}?limit=3"), TOKEN).await;
    assert_eq!(s, 200);
    assert_eq!(names(&v), ["api", "app", "db"]);
    assert_eq!(v["metadata"]["remainingItemCount"], 1);
    let token = v["metadata"]["continue"].as_str().unwrap().to_string();
    let (s, v) = fx
        .get(&format!("{GITREPOS}?limit=3&continue={token}"), TOKEN)
        .await;
    assert_eq!(s, 200);
    assert_eq!(names(&v), ["plain"]);
    assert!(v["metadata"].get("continue").is_none());
    let (s, v) = fx.get(&format!("{GITREPOS}?continue=%21%21"), TOKEN).await;
    assert_eq!(s, 400, "{v}");
}

#[tokio::test]
async fn list_option_validation() {
    let fx = Fixture::new();
    let (s, v) = fx
        .get(
            &format!("{GITREPOS}?resourceVersionMatch=NotOlderThan"),
            TOKEN,
        )
        .await;
    assert_eq!(s, 422);
    assert_eq!(
        v["message"],
        "ListOptions.meta.k8s.io \"\" is invalid: resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided"
    );
}
