//! The memory that body-keeping receivers hold across requests in flight is bounded by
//! `limits.body_memory_bytes`: many stalled requests cannot add up to more, those past it get
//! 503 with `Retry-After`, and streamed (HMAC) deliveries go on.

use crate::common::*;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MIB: usize = 1024 * 1024;
const BUDGET: usize = 8 * MIB;
/// Each stalled request declares just under the 3 MiB cap and sends this much of it.
const DECLARED: usize = 3 * MIB - 1;
const SENT: usize = 2 * MIB;
const STALLED: usize = 40;

/// The status line and `Retry-After` of an answer, if one comes within `wait`.
async fn answer(
    r: &mut (impl AsyncReadExt + Unpin),
    wait: Duration,
) -> Option<(String, Option<String>)> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(wait, read).await.ok()?;
    let text = String::from_utf8_lossy(&got).into_owned();
    let status = text.lines().next()?.to_string();
    let retry = text.lines().find_map(|l| {
        l.to_ascii_lowercase()
            .strip_prefix("retry-after:")
            .map(|v| v.trim().to_string())
    });
    Some((status, retry))
}

#[tokio::test(flavor = "multi_thread")]
async fn stalled_kept_bodies_stay_within_the_budget_while_github_is_answered() {
    let s = Setup::new()
        .server("body_timeout = \"60s\"")
        .section(&format!(
            "[limits]\nbody_memory_bytes = {BUDGET}\nmax_connections_per_ip = 0\n\
         per_ip = \"1000/s\"\nper_ip_burst = 1000"
        ));
    let hub = format!(
        "name = \"hub\"\nnamespace = \"flux-system\"\ntype = \"dockerhub\"\nsecret_file = \"{}\"\nresources = [{{ kind = \"GitRepository\", name = \"app\" }}]",
        s.secret("hub", "kh").display()
    );
    let gh = format!(
        "name = \"gh\"\nnamespace = \"flux-system\"\ntype = \"github\"\nsecret_file = \"{}\"\nresources = [{{ kind = \"GitRepository\", name = \"app\" }}]",
        s.secret("gh", "kg").display()
    );
    let gw = s.receiver(&hub).receiver(&gh).start();
    let hub_path = hook("kh", "hub", "flux-system");
    let gh_path = hook("kg", "gh", "flux-system");
    let push = fixture("github/push.json");
    let github = |delivery: String| {
        let headers = signed("kg", &push, &delivery);
        let (gw, path, push) = (&gw, &gh_path, push.clone());
        async move { gw.post(path, &refs(&headers), push).await }
    };
    // Warm up allocators, TLS and the kube client, for both kinds of receiver.
    assert_eq!(github(uid()).await.0, 200);
    let (st, text) = gw
        .post(&hub_path, &[], fixture("dockerhub/push.json"))
        .await;
    assert_eq!(st, 200, "{text}");
    let before = gw.rss_kib();

    // Many requests to a body-keeping receiver, each sending part of its body, then stalling.
    let mut tasks = Vec::new();
    for _ in 0..STALLED {
        let tls = raw_tls(gw.port, &gw.setup.cert_pem).await;
        let head = format!(
            "POST {hub_path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {DECLARED}\r\n\r\n"
        );
        tasks.push(tokio::spawn(async move {
            let (mut rd, mut wr) = tokio::io::split(tls);
            let writer = tokio::spawn(async move {
                let _ = wr.write_all(head.as_bytes()).await;
                let _ = wr.write_all(&vec![b' '; SENT]).await;
                wr
            });
            let got = answer(&mut rd, Duration::from_secs(10)).await;
            (got, rd, writer)
        }));
    }
    let mut stalled = Vec::new();
    let mut refused = 0;
    for t in tasks {
        let (got, rd, writer) = t.await.unwrap();
        match got {
            None => stalled.push((rd, writer.await.unwrap())),
            Some((status, retry)) => {
                assert_eq!(status, "HTTP/1.1 503 Service Unavailable");
                assert_eq!(retry.as_deref(), Some("5"), "503 without Retry-After");
                refused += 1;
            }
        }
    }
    // Each admitted request reserved its declared length; no more fit under the budget.
    assert_eq!(stalled.len(), BUDGET / DECLARED, "admitted");
    assert_eq!(refused, STALLED - BUDGET / DECLARED);
    assert_eq!(
        gw.metric("fluxgate_body_memory_bytes"),
        (stalled.len() * DECLARED) as f64
    );

    // A streamed delivery is still answered; another large body-keeping one is not, with a
    // reason.
    let (st, text) = github(uid()).await;
    assert_eq!(st, 200, "{text}");
    let mut large = fixture("dockerhub/push.json");
    large.resize(DECLARED, b' ');
    let (st, text, retry) = gw.post_from("127.0.0.1", &hub_path, &[], large).await;
    assert_eq!(
        (st, text.trim(), retry.as_deref()),
        (
            503,
            format!("the memory for request bodies held in flight ({BUDGET} bytes, limits.body_memory_bytes) is in use; retry later").as_str(),
            Some("5")
        )
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = gw.rss_kib();
    let grew = during.saturating_sub(before);
    println!(
        "gateway RSS before {before} KiB, with {STALLED} stalled requests sending {} MiB each {during} KiB (+{grew} KiB); budget {} KiB",
        SENT / MIB,
        BUDGET / 1024
    );
    assert!(
        grew < (BUDGET / 1024 + 8 * 1024) as u64,
        "RSS grew by {grew} KiB, more than the {} KiB budget and a margin",
        BUDGET / 1024
    );
    assert!(
        gw.metric("fluxgate_deliveries_total{outcome=\"body_memory_full\",receiver=\"flux-system/hub\",type=\"dockerhub\"}")
            >= refused as f64
    );

    // Closed connections give their share back.
    drop(stalled);
    let t0 = std::time::Instant::now();
    while gw.metric("fluxgate_body_memory_bytes") > 0.0 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "reservations not given back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (st, text) = gw
        .post(&hub_path, &[], fixture("dockerhub/push.json"))
        .await;
    assert_eq!(st, 200, "{text}");
}
