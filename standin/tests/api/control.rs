use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;

use crate::*;

#[tokio::test]
async fn set_down_refuses_connections_and_recovers_on_the_same_port() {
    let fx = Fixture::new();
    let addr = fx.api.addr();
    let path = format!("{GITREPOS}/app");
    let (s, _) = fx
        .patch(
            &path,
            TOKEN,
            MERGE,
            r#"{"metadata":{"annotations":{"before":"down"}}}"#,
        )
        .await;
    assert_eq!(s, 200);

    fx.api.set_down(true);
    // Even the kept-alive connection of `fx.http` is gone.
    let err = fx
        .req(Method::GET, &path, Some(TOKEN))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_connect() || err.is_request(), "{err:?}");
    let refused = std::net::TcpStream::connect(addr).unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    // Setting down twice is harmless.
    fx.api.set_down(true);

    fx.api.set_down(false);
    assert_eq!(fx.api.addr(), addr);
    let (s, v) = fx.get(&path, TOKEN).await;
    assert_eq!(s, 200);
    assert_eq!(
        v["metadata"]["annotations"]["before"], "down",
        "objects survive"
    );
    fx.api.set_down(false);
}

#[tokio::test]
async fn set_down_drops_open_connections() {
    let fx = Fixture::new();
    // A watch holds its connection open until the server goes away.
    let resp = fx
        .req(Method::GET, &format!("{GITREPOS}?watch=true"), Some(TOKEN))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let reader = tokio::spawn(async move {
        let mut resp = resp;
        while let Ok(Some(_)) = resp.chunk().await {}
    });
    let api = &fx.api;
    api.set_down(true);
    tokio::time::timeout(Duration::from_secs(5), reader)
        .await
        .expect("the stream ends when the server goes down")
        .unwrap();
    api.set_down(false);
}

#[tokio::test]
async fn fail_next_injects_statuses_after_authentication() {
    let fx = Fixture::new();
    let path = format!("{GITREPOS}/app");
    fx.api.fail_next(2, 429, Some(3));

    // Unauthenticated requests are refused before the injected failures.
    let (s, _) = send(fx.req(Method::GET, &path, None)).await;
    assert_eq!(s, 401);

    for _ in 0..2 {
        let resp = fx
            .req(Method::GET, &path, Some(TOKEN))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 429);
        assert_eq!(resp.headers()["retry-after"], "3");
        let v: serde_json::Value = resp.json().await.unwrap();
        assert_status(&v, 429, "TooManyRequests");
        assert_eq!(v["details"], json!({"retryAfterSeconds": 3}));
    }
    let (s, _) = fx.get(&path, TOKEN).await;
    assert_eq!(s, 200);

    // Injected failures come before authorization.
    fx.api.fail_next(1, 503, None);
    let (s, v) = fx
        .get(
            "/apis/source.toolkit.fluxcd.io/v1/namespaces/apps/gitrepositories/site",
            TOKEN,
        )
        .await;
    assert_eq!(s, 503);
    assert_status(&v, 503, "ServiceUnavailable");

    fx.api.fail_next(1, 500, None);
    let resp = fx
        .req(Method::GET, &path, Some(TOKEN))
        .send()
        .await
        .unwrap();
    assert!(resp.headers().get("retry-after").is_none());
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_status(&v, 500, "InternalError");

    // Public endpoints do not consume failures.
    fx.api.fail_next(1, 500, None);
    let (s, _) = send(fx.req(Method::GET, "/version", None)).await;
    assert_eq!(s, 200);
    let (s, _) = fx.get(&path, TOKEN).await;
    assert_eq!(s, 500);
    let (s, _) = fx.get(&path, TOKEN).await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn latency_delays_every_answer() {
    let fx = Fixture::new();
    fx.api.set_latency(Duration::from_millis(300));
    let start = Instant::now();
    let (s, _) = fx.get(&format!("{GITREPOS}/app"), TOKEN).await;
    assert_eq!(s, 200);
    assert!(start.elapsed() >= Duration::from_millis(300));
    fx.api.set_latency(Duration::ZERO);
    let start = Instant::now();
    fx.get(&format!("{GITREPOS}/app"), TOKEN).await;
    assert!(start.elapsed() < Duration::from_millis(300));
}

#[tokio::test]
async fn every_request_is_recorded_with_its_answer() {
    let fx = Fixture::new();
    fx.api.clear_requests();
    send(fx.req(Method::GET, &format!("{GITREPOS}/app"), None)).await;
    fx.patch(
        &format!("{GITREPOS}/app?fieldManager=fluxgate"),
        TOKEN,
        MERGE,
        r#"{"metadata":{"annotations":{"a":"b"}}}"#,
    )
    .await;
    let reqs = fx.api.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].method, "GET");
    assert_eq!(reqs[0].status, 401);
    assert_eq!(reqs[0].header("Authorization"), None);
    let p = &reqs[1];
    assert_eq!(p.method, "PATCH");
    assert_eq!(p.path, format!("{GITREPOS}/app"));
    assert_eq!(p.query.as_deref(), Some("fieldManager=fluxgate"));
    assert_eq!(p.header("content-type"), Some(MERGE));
    assert_eq!(
        p.header("AUTHORIZATION"),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    assert_eq!(
        p.json(),
        Some(json!({"metadata": {"annotations": {"a": "b"}}}))
    );
    assert_eq!(p.status, 200);
    fx.api.clear_requests();
    assert!(fx.api.requests().is_empty());
}

#[tokio::test]
async fn dropping_the_stand_in_frees_the_port() {
    let api = kube_standin::StandIn::start(config()).unwrap();
    let addr = api.addr();
    assert!(api.url().starts_with("https://127.0.0.1:"));
    drop(api);
    let err = std::net::TcpStream::connect(addr).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    // And the port can be bound again at once.
    let again = kube_standin::StandIn::start_on(addr, config()).unwrap();
    assert_eq!(again.addr(), addr);
}

#[test]
fn works_from_a_plain_test_and_objects_can_be_put_and_deleted() {
    let api = kube_standin::StandIn::start(config()).unwrap();
    let v = api
        .try_put_object(gitrepo("extra", "new-ns", json!({"app": "x"})))
        .unwrap();
    assert_eq!(v["metadata"]["generation"], 1);
    assert!(
        api.object("v1", "Namespace", "", "new-ns").is_some(),
        "namespace created"
    );
    // Replacing it is an update: same uid, and the generation follows the spec only.
    let mut changed = gitrepo("extra", "new-ns", json!({"app": "y"}));
    let relabelled = api.try_put_object(changed.clone()).unwrap();
    assert_eq!(relabelled["metadata"]["generation"], 1);
    assert_eq!(relabelled["metadata"]["uid"], v["metadata"]["uid"]);
    changed["spec"]["interval"] = json!("5m");
    let respecced = api.try_put_object(changed).unwrap();
    assert_eq!(respecced["metadata"]["generation"], 2);
    assert_eq!(respecced["metadata"]["uid"], v["metadata"]["uid"]);
    api.delete_object(
        "source.toolkit.fluxcd.io/v1",
        "GitRepository",
        "new-ns",
        "extra",
    );
    assert!(api
        .object(
            "source.toolkit.fluxcd.io/v1",
            "GitRepository",
            "new-ns",
            "extra"
        )
        .is_none());
    assert!(api
        .try_put_object(
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "x"}})
        )
        .is_err());
    let err = kube_standin::StandIn::start(
        kube_standin::Config::new()
            .object(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}})),
    )
    .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
}

#[test]
fn kubeconfig_is_complete() {
    let api = kube_standin::StandIn::start(config()).unwrap();
    let k = api.kubeconfig("tok");
    assert!(k.contains(&format!("server: \"{}\"", api.url())));
    assert!(k.contains("certificate-authority-data: "));
    assert!(k.contains("token: \"tok\""));
    assert!(k.contains("current-context: kube-standin"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config");
    api.write_kubeconfig(&path, "tok").unwrap();
    assert_eq!(std::fs::read_to_string(path).unwrap(), k);
    assert!(api.ca_pem().starts_with("-----BEGIN CERTIFICATE-----"));
}

#[test]
fn the_handle_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<kube_standin::StandIn>();
    assert_send_sync::<kube_standin::Recorded>();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_patches_are_never_lost() {
    let fx = std::sync::Arc::new(Fixture::new());
    let mut tasks = Vec::new();
    for i in 0..20 {
        let fx = fx.clone();
        tasks.push(tokio::spawn(async move {
            let body = format!(r#"{{"metadata":{{"annotations":{{"n{i}":"x"}}}}}}"#);
            fx.patch(&format!("{GITREPOS}/app"), TOKEN, MERGE, &body)
                .await
                .0
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    let obj = fx
        .api
        .object(
            "source.toolkit.fluxcd.io/v1",
            "GitRepository",
            "flux-system",
            "app",
        )
        .unwrap();
    let ann = obj["metadata"]["annotations"].as_object().unwrap();
    assert_eq!(ann.len(), 21, "{ann:?}");
}
