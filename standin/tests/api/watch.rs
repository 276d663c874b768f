use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::*;

/// Reads watch events (one JSON object per line) until `n` arrived.
async fn next_events(resp: &mut reqwest::Response, buf: &mut Vec<u8>, n: usize) -> Vec<Value> {
    let mut out = Vec::new();
    while out.len() < n {
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            out.push(serde_json::from_slice(&line).expect("event JSON"));
            if out.len() == n {
                return out;
            }
        }
        let chunk = tokio::time::timeout(Duration::from_secs(5), resp.chunk())
            .await
            .expect("event within 5s")
            .expect("stream ok")
            .expect("stream open");
        buf.extend_from_slice(&chunk);
    }
    out
}

#[tokio::test]
async fn watch_streams_initial_and_live_events() {
    let fx = Fixture::new();
    let mut resp = fx
        .req(
            Method::GET,
            &format!("{GITREPOS}?watch=1&labelSelector=app%3Dweb"),
            Some(TOKEN),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let mut buf = Vec::new();
    let first = next_events(&mut resp, &mut buf, 1).await;
    assert_eq!(first[0]["type"], "ADDED");
    assert_eq!(first[0]["object"]["metadata"]["name"], "app");

    fx.patch(
        &format!("{GITREPOS}/app"),
        TOKEN,
        MERGE,
        r#"{"metadata":{"annotations":{"x":"1"}}}"#,
    )
    .await;
    // `api` starts matching, then `app` stops matching.
    fx.patch(
        &format!("{GITREPOS}/api"),
        TOKEN,
        MERGE,
        r#"{"metadata":{"labels":{"app":"web"}}}"#,
    )
    .await;
    fx.patch(
        &format!("{GITREPOS}/app"),
        TOKEN,
        MERGE,
        r#"{"metadata":{"labels":{"app":"old"}}}"#,
    )
    .await;
    // Not in the selection, not in the namespace: no events.
    fx.patch(
        &format!("{GITREPOS}/db"),
        TOKEN,
        MERGE,
        r#"{"metadata":{"annotations":{"x":"1"}}}"#,
    )
    .await;
    fx.api
        .put_object(gitrepo("elsewhere", "apps", json!({"app": "web"})));
    fx.api.delete_object(
        "source.toolkit.fluxcd.io/v1",
        "GitRepository",
        "flux-system",
        "api",
    );

    let evs = next_events(&mut resp, &mut buf, 4).await;
    let got: Vec<(String, String)> = evs
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap().to_string(),
                e["object"]["metadata"]["name"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("MODIFIED", "app"),
            ("ADDED", "api"),
            ("DELETED", "app"),
            ("DELETED", "api")
        ]
        .map(|(a, b)| (a.to_string(), b.to_string()))
    );
    assert_eq!(evs[0]["object"]["metadata"]["annotations"]["x"], "1");
}

#[tokio::test]
async fn watch_resumes_from_a_resource_version() {
    let fx = Fixture::new();
    let (_, list) = fx.get(GITREPOS, TOKEN).await;
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    fx.patch(
        &format!("{GITREPOS}/db"),
        TOKEN,
        MERGE,
        r#"{"metadata":{"annotations":{"x":"1"}}}"#,
    )
    .await;
    let mut resp = fx
        .req(
            Method::GET,
            &format!("{GITREPOS}?watch=true&resourceVersion={rv}&allowWatchBookmarks=true"),
            Some(TOKEN),
        )
        .send()
        .await
        .unwrap();
    let mut buf = Vec::new();
    let evs = next_events(&mut resp, &mut buf, 1).await;
    assert_eq!(evs[0]["type"], "MODIFIED");
    assert_eq!(evs[0]["object"]["metadata"]["name"], "db");

    // sendInitialEvents ends the initial state with a bookmark.
    let mut resp = fx
        .req(
            Method::GET,
            &format!("{GITREPOS}?watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&labelSelector=tier"),
            Some(TOKEN),
        )
        .send()
        .await
        .unwrap();
    let mut buf = Vec::new();
    let evs = next_events(&mut resp, &mut buf, 3).await;
    assert_eq!(evs[0]["type"], "ADDED");
    assert_eq!(evs[1]["type"], "ADDED");
    assert_eq!(evs[2]["type"], "BOOKMARK");
    assert_eq!(
        evs[2]["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );
}

#[tokio::test]
async fn ended_watches_resume_until_history_is_compacted() {
    let fx = Fixture::new();
    let (_, list) = fx.get(GITREPOS, TOKEN).await;
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let watch = |rv: String| {
        fx.req(
            Method::GET,
            &format!("{GITREPOS}?watch=true&resourceVersion={rv}"),
            Some(TOKEN),
        )
        .send()
    };
    let mut resp = watch(rv.clone()).await.unwrap();
    fx.api.end_watches();
    // The stream ends cleanly, as at the apiserver's timeoutSeconds.
    let end = tokio::time::timeout(Duration::from_secs(5), resp.chunk())
        .await
        .expect("the watch ends within 5s");
    assert!(matches!(end, Ok(None)), "{end:?}");

    // A change while nobody watches is replayed to the next watch from the same version.
    fx.patch(
        &format!("{GITREPOS}/db"),
        TOKEN,
        MERGE,
        r#"{"metadata":{"annotations":{"x":"2"}}}"#,
    )
    .await;
    let mut resp = watch(rv.clone()).await.unwrap();
    let mut buf = Vec::new();
    let evs = next_events(&mut resp, &mut buf, 1).await;
    assert_eq!(evs[0]["type"], "MODIFIED");
    assert_eq!(evs[0]["object"]["metadata"]["name"], "db");

    // After a compaction the same watch is told to list again.
    fx.api.compact();
    let mut resp = watch(rv).await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let mut buf = Vec::new();
    let evs = next_events(&mut resp, &mut buf, 1).await;
    assert_eq!(evs[0]["type"], "ERROR");
    assert_eq!(evs[0]["object"]["code"], 410);
    assert_eq!(evs[0]["object"]["reason"], "Expired");
    // A watch from the current version is unaffected.
    let now = fx.api.resource_version().to_string();
    let resp = watch(now).await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
}
