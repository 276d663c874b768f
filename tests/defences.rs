//! Issue 3's edge defences, with addresses in 127.0.0.0/8 standing in for distinct senders.

use crate::common::*;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const JSON: (&str, &str) = ("Content-Type", "application/json");

/// A github receiver; `extra` adds lines such as `allow_from`.
fn github(s: &Setup, name: &str, secret: &str, extra: &str) -> String {
    format!(
        "name = \"{name}\"\nnamespace = \"flux-system\"\ntype = \"github\"\nsecret_file = \"{}\"\nresources = [{{ kind = \"GitRepository\", name = \"app\" }}]\n{extra}",
        s.secret(name, secret).display()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn allow_lists_refuse_with_403_and_unknown_addresses_are_closed_before_tls() {
    let s = Setup::new();
    let a = github(&s, "a", "ka", "allow_from = [\"127.0.0.2/32\", \"::1\"]");
    let b = github(&s, "b", "kb", "allow_from = [\"127.0.0.3\"]");
    let gw = s.receiver(&a).receiver(&b).start();
    let body = fixture("github/push.json");
    let pa = hook("ka", "a", "flux-system");

    let (st, text, _) = gw
        .post_from(
            "127.0.0.2",
            &pa,
            &refs(&signed("ka", &body, &uid())),
            body.clone(),
        )
        .await;
    assert_eq!(st, 200, "{text}");
    // 127.0.0.3 may connect (receiver b allows it) but not use receiver a.
    let (st, text, _) = gw
        .post_from(
            "127.0.0.3",
            &pa,
            &refs(&signed("ka", &body, &uid())),
            body.clone(),
        )
        .await;
    assert_eq!(
        (st, text.trim()),
        (
            403,
            "source address 127.0.0.3 is not allowed for this receiver"
        )
    );
    assert_eq!(gw.patches().len(), 1, "a refused address relays nothing");

    // 127.0.0.4 is allowed by no receiver: the connection is closed before the TLS handshake.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.4:0".parse().unwrap()).unwrap();
    let mut tcp = sock
        .connect(format!("127.0.0.1:{}", gw.port).parse().unwrap())
        .await
        .unwrap();
    // A ClientHello's first bytes; a listener that got this far would answer with a ServerHello.
    let _ = tcp
        .write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 0x01, 0x00, 0x00, 0x01, 0x00])
        .await;
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "no TLS byte was sent to a disallowed address");
    let r = gw
        .client_from("127.0.0.4")
        .post(gw.url(&pa))
        .body("x")
        .send()
        .await;
    assert!(r.is_err(), "the TLS handshake must fail");
    assert!(gw.metric("fluxgate_connections_refused_total{reason=\"not_allowed\"}") >= 2.0);
    assert!(
        gw.metric("fluxgate_deliveries_total{outcome=\"not_allowed\",receiver=\"flux-system/a\",type=\"github\"}")
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn forwarded_for_is_believed_only_from_trusted_proxies() {
    let s = Setup::new().server("trusted_proxies = [\"127.0.0.5\"]");
    let a = github(&s, "a", "ka", "allow_from = [\"127.0.0.2\"]");
    // Receiver b lets 127.0.0.6 connect at all, so its spoofing attempt reaches receiver a.
    let b = github(&s, "b", "kb", "allow_from = [\"127.0.0.6\"]");
    let gw = s.receiver(&a).receiver(&b).start();
    let body = fixture("github/push.json");
    let pa = hook("ka", "a", "flux-system");
    let mut h = signed("ka", &body, &uid());
    h.push(("X-Forwarded-For", "127.0.0.2".into()));
    let (st, text, _) = gw
        .post_from("127.0.0.6", &pa, &refs(&h), body.clone())
        .await;
    assert_eq!(
        (st, text.trim()),
        (
            403,
            "source address 127.0.0.6 is not allowed for this receiver"
        ),
        "spoofed header ignored"
    );

    // The trusted proxy's header is used: right-most untrusted entry.
    let mut h = signed("ka", &body, &uid());
    h.push(("X-Forwarded-For", "127.0.0.9, 127.0.0.2".into()));
    let (st, text, _) = gw
        .post_from("127.0.0.5", &pa, &refs(&h), body.clone())
        .await;
    assert_eq!(st, 200, "{text}");
    // From the proxy, a client the list does not allow.
    let mut h = signed("ka", &body, &uid());
    h.push(("X-Forwarded-For", "127.0.0.2, 127.0.0.9".into()));
    let (st, text, _) = gw
        .post_from("127.0.0.5", &pa, &refs(&h), body.clone())
        .await;
    assert_eq!(
        (st, text.trim()),
        (
            403,
            "source address 127.0.0.9 is not allowed for this receiver"
        )
    );
    // A garbled header makes the client the proxy itself, which is not on the list.
    let mut h = signed("ka", &body, &uid());
    h.push(("X-Forwarded-For", "127.0.0.2, not-an-ip".into()));
    let (st, _, _) = gw
        .post_from("127.0.0.5", &pa, &refs(&h), body.clone())
        .await;
    assert_eq!(st, 403);
    assert_eq!(gw.patches().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn named_range_sets_match_and_a_failed_refresh_keeps_the_last_good_set() {
    let s = Setup::new();
    let ranges = s.path("office.txt");
    std::fs::write(&ranges, "# office\n127.0.0.2/32\n").unwrap();
    let s = s.section(&format!(
        "[ranges.office]\nrefresh_file = \"{}\"\nrefresh_interval = \"200ms\"",
        ranges.display()
    ));
    let a = github(&s, "a", "ka", "allow_from = [\"office\", \"127.0.0.7\"]");
    let gw = s.receiver(&a).start();
    let body = fixture("github/push.json");
    let pa = hook("ka", "a", "flux-system");
    let post = |src: &'static str| {
        let h = signed("ka", &body, &uid());
        let gw = &gw;
        let pa = pa.clone();
        let body = body.clone();
        async move { gw.post_from(src, &pa, &refs(&h), body).await.0 }
    };
    assert_eq!(post("127.0.0.2").await, 200);
    // A broken file is refused and the last good set stays in force.
    std::fs::write(&ranges, "127.0.0.2/33 is not a network\n").unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(post("127.0.0.2").await, 200);
    assert!(gw.metric("fluxgate_range_refreshes_total{result=\"failed\",set=\"office\"}") >= 1.0);
    assert!(
        gw.logs().contains("keeping the last good set"),
        "{}",
        gw.logs()
    );
    // A good file replaces it.
    std::fs::write(&ranges, "127.0.0.3/32\n").unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(post("127.0.0.3").await, 200);
    // 127.0.0.2 is no longer allowed by any receiver: refused before TLS.
    assert!(gw
        .client_from("127.0.0.2")
        .post(gw.url(&pa))
        .body("x")
        .send()
        .await
        .is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_request_past_the_per_ip_limit_gets_429_with_retry_after() {
    let s = Setup::new().section("[limits]\nper_ip = \"1/min\"\nper_ip_burst = 3");
    let a = github(&s, "a", "ka", "");
    let gw = s.receiver(&a).start();
    let body = fixture("github/push.json");
    let pa = hook("ka", "a", "flux-system");
    for _ in 0..3 {
        let (st, _, _) = gw
            .post_from(
                "127.0.0.2",
                &pa,
                &refs(&signed("ka", &body, &uid())),
                body.clone(),
            )
            .await;
        assert_eq!(st, 200);
    }
    let (st, text, retry) = gw
        .post_from(
            "127.0.0.2",
            &pa,
            &refs(&signed("ka", &body, &uid())),
            body.clone(),
        )
        .await;
    assert_eq!((st, text.trim()), (429, "too many requests from 127.0.0.2"));
    let secs: u64 = retry.expect("Retry-After").parse().unwrap();
    assert!((1..=60).contains(&secs), "{secs}");
    // Another sender is not affected.
    let (st, _, _) = gw
        .post_from(
            "127.0.0.3",
            &pa,
            &refs(&signed("ka", &body, &uid())),
            body.clone(),
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(
        gw.metric("fluxgate_deliveries_total{outcome=\"rate_limited\",receiver=\"flux-system/a\",type=\"github\"}"),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_per_receiver_limit_counts_verified_deliveries_only() {
    let s = Setup::new().section("[limits]\nper_receiver = \"1/min\"\nper_receiver_burst = 2");
    let a = github(&s, "a", "ka", "");
    let gw = s.receiver(&a).start();
    let body = fixture("github/push.json");
    let pa = hook("ka", "a", "flux-system");
    // Forged deliveries from someone without the secret do not use up the receiver's budget.
    for _ in 0..5 {
        let (st, _, _) = gw
            .post_from(
                "127.0.0.9",
                &pa,
                &refs(&signed("wrong", &body, &uid())),
                body.clone(),
            )
            .await;
        assert_eq!(st, 401);
    }
    for _ in 0..2 {
        let (st, _, _) = gw
            .post_from(
                "127.0.0.2",
                &pa,
                &refs(&signed("ka", &body, &uid())),
                body.clone(),
            )
            .await;
        assert_eq!(st, 200);
    }
    let (st, text, retry) = gw
        .post_from(
            "127.0.0.3",
            &pa,
            &refs(&signed("ka", &body, &uid())),
            body.clone(),
        )
        .await;
    assert_eq!(
        (st, text.trim()),
        (429, "too many deliveries for this receiver")
    );
    assert!(retry.is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn repeated_bad_signatures_block_the_address_while_others_keep_working() {
    // Closed at once, without the tarpit (see the next test).
    let s = Setup::new().section(
        "[limits]\nblock_after_failures = 3\nfailure_window = \"1m\"\nblock_for = \"10m\"\ntarpit_connections = 0",
    );
    let a = github(&s, "a", "ka", "");
    let gw = s.receiver(&a).start();
    let body = fixture("github/push.json");
    let pa = hook("ka", "a", "flux-system");
    for _ in 0..3 {
        let (st, _, _) = gw
            .post_from(
                "127.0.0.8",
                &pa,
                &refs(&signed("wrong", &body, &uid())),
                body.clone(),
            )
            .await;
        assert_eq!(st, 401);
    }
    // Now even a valid delivery from that address is refused, on a new connection.
    let refused = match tokio::time::timeout(Duration::from_secs(5), async {
        gw.client_from("127.0.0.8")
            .post(gw.url(&pa))
            .body(body.clone())
            .send()
            .await
    })
    .await
    .unwrap()
    {
        Err(_) => true,
        Ok(resp) => resp.status().as_u16() == 429,
    };
    assert!(refused, "blocked address must be refused");
    // Probing unknown paths counts as failing too.
    for _ in 0..3 {
        let (st, _, _) = gw
            .post_from("127.0.0.10", "/hook/nope", &[JSON], "{}")
            .await;
        assert_eq!(st, 404);
    }
    assert!(gw
        .client_from("127.0.0.10")
        .post(gw.url(&pa))
        .body("x")
        .send()
        .await
        .is_err());
    // A valid sender elsewhere keeps working.
    let (st, text, _) = gw
        .post_from(
            "127.0.0.2",
            &pa,
            &refs(&signed("ka", &body, &uid())),
            body.clone(),
        )
        .await;
    assert_eq!(st, 200, "{text}");
    assert!(gw.metric("fluxgate_connections_refused_total{reason=\"blocked\"}") >= 1.0);
}

/// A TLS handshake from `source`: `Err` when the gateway closes the connection before it
/// completes.
async fn handshake_from(
    port: u16,
    cert_pem: &str,
    source: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    install_crypto();
    let sock = tokio::net::TcpSocket::new_v4()?;
    sock.bind(format!("{source}:0").parse().unwrap())?;
    let tcp = sock
        .connect(format!("127.0.0.1:{port}").parse().unwrap())
        .await?;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut cert_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect("127.0.0.1".try_into().unwrap(), tcp)
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_boxed_address_is_closed_on_its_open_connection_and_held_in_the_tarpit() {
    let s = Setup::new().section(
        "[limits]\nblock_after_failures = 3\nfailure_window = \"1m\"\nblock_for = \"10m\"\ntarpit_connections = 1\ntarpit_for = \"3s\"",
    );
    let a = github(&s, "a", "ka", "");
    let gw = s.receiver(&a).start();
    let cert = gw.setup.cert_pem.clone();
    let body = fixture("github/push.json");
    let pa = hook("ka", "a", "flux-system");
    // A connection opened before the address is boxed.
    let mut open = handshake_from(gw.port, &cert, "127.0.0.9").await.unwrap();
    for _ in 0..3 {
        let h = signed("wrong", &body, &uid());
        let (st, _, _) = gw
            .post_from("127.0.0.9", &pa, &refs(&h), body.clone())
            .await;
        assert_eq!(st, 401);
    }
    // On it, the next request is refused and the connection closed, even a valid one: kept
    // open, a flood would go on at full speed on it.
    let mut req = format!(
        "POST {pa} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in signed("ka", &body, &uid()) {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    open.write_all(req.as_bytes()).await.unwrap();
    open.write_all(&body).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), open.read_to_end(&mut answer))
        .await
        .expect("the connection is closed after the answer")
        .ok();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert!(
        answer.contains("address blocked after repeated failures"),
        "{answer}"
    );

    // A new connection is accepted and held: no handshake, nothing closed, while the tarpit
    // has room (one place here).
    let held = tokio::spawn({
        let cert = cert.clone();
        let port = gw.port;
        async move { handshake_from(port, &cert, "127.0.0.9").await.map(drop) }
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!held.is_finished(), "the boxed connection is held");
    assert_eq!(gw.metric("fluxgate_tarpit_connections"), 1.0);
    // The tarpit is full: the next one is closed at once.
    let closed = tokio::time::timeout(
        Duration::from_secs(2),
        handshake_from(gw.port, &cert, "127.0.0.9"),
    )
    .await
    .expect("closed at once, not held");
    assert!(closed.is_err());
    assert!(gw.metric("fluxgate_connections_refused_total{reason=\"blocked\"}") >= 1.0);
    assert_eq!(
        gw.metric("fluxgate_connections_refused_total{reason=\"tarpitted\"}"),
        1.0
    );
    // Another sender is served meanwhile.
    let (st, text, _) = gw
        .post_from(
            "127.0.0.2",
            &pa,
            &refs(&signed("ka", &body, &uid())),
            body.clone(),
        )
        .await;
    assert_eq!(st, 200, "{text}");
    // The hold is bounded: the held connection is closed, never handshaken, and its place
    // given back.
    let ended = tokio::time::timeout(Duration::from_secs(15), held)
        .await
        .expect("the hold ends")
        .unwrap();
    assert!(ended.is_err(), "no handshake for a boxed address");
    assert_eq!(gw.metric("fluxgate_tarpit_connections"), 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trickled_request_head_is_cut_at_the_deadline_while_deliveries_go_on() {
    let s = Setup::new().server("head_timeout = \"2s\"");
    let a = github(&s, "a", "ka", "");
    let gw = s.receiver(&a).start();
    let pa = hook("ka", "a", "flux-system");
    let port = gw.port;
    let cert = gw.setup.cert_pem.clone();
    let slow = tokio::spawn(async move {
        let mut tls = raw_tls(port, &cert).await;
        let started = std::time::Instant::now();
        let head = b"POST /hook/x HTTP/1.1\r\nHost: x\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
        for b in head.iter() {
            if tls.write_all(&[*b]).await.is_err() || tls.flush().await.is_err() {
                return started.elapsed();
            }
            // Closed by the server: the read side sees EOF.
            let mut probe = [0u8; 1];
            if let Ok(r) =
                tokio::time::timeout(Duration::from_millis(1000), tls.read(&mut probe)).await
            {
                if matches!(r, Ok(0) | Err(_)) {
                    return started.elapsed();
                }
            }
        }
        Duration::MAX
    });
    let body = fixture("github/push.json");
    let mut ok = 0;
    for _ in 0..4 {
        let (st, _, _) = gw
            .post_from(
                "127.0.0.2",
                &pa,
                &refs(&signed("ka", &body, &uid())),
                body.clone(),
            )
            .await;
        ok += usize::from(st == 200);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(ok, 4, "valid deliveries go on during the trickle");
    let cut = slow.await.unwrap();
    assert!(
        cut >= Duration::from_millis(1500) && cut < Duration::from_secs(4),
        "cut after {cut:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_oversized_request_head_is_refused_with_431() {
    let s = Setup::new().server("max_header_bytes = 4096");
    let a = github(&s, "a", "ka", "");
    let gw = s.receiver(&a).start();
    let big = "x".repeat(5000);
    let (st, text) = gw
        .post(
            &hook("ka", "a", "flux-system"),
            &[JSON, ("X-Big", &big)],
            "{}",
        )
        .await;
    assert_eq!(
        (st, text.trim()),
        (431, "request head larger than 4096 bytes")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_25_mib_delivery_is_verified_with_flat_memory() {
    let s = Setup::new();
    let a = format!(
        "name = \"big\"\nnamespace = \"flux-system\"\ntype = \"generic-hmac\"\nsecret_file = \"{}\"\nresources = [{{ kind = \"GitRepository\", name = \"app\" }}]",
        s.secret("big", "k").display()
    );
    let gw = s.receiver(&a).start();
    let path = hook("k", "big", "flux-system");
    // Warm up allocators and the TLS and kube clients with a small delivery first.
    let small = b"{}".to_vec();
    let (st, _) = gw
        .post(
            &path,
            &[("X-Signature", &sig("sha256", "k", &small))],
            small,
        )
        .await;
    assert_eq!(st, 200);
    let before = gw.rss_kib();
    let body = vec![b'a'; 25 * 1024 * 1024];
    let signature = sig("sha256", "k", &body);
    let (st, text) = gw.post(&path, &[("X-Signature", &signature)], body).await;
    assert_eq!(st, 200, "{text}");
    let after = gw.rss_kib();
    let grew = after.saturating_sub(before);
    println!("gateway RSS before {before} KiB, after a 25 MiB delivery {after} KiB (+{grew} KiB)");
    assert!(grew < 8 * 1024, "RSS grew by {grew} KiB for a 25 MiB body");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replayed_delivery_id_relays_nothing_and_a_new_one_relays_again() {
    let s = Setup::new();
    let a = github(&s, "a", "ka", "");
    let nodedup = github(&s, "nodedup", "kn", "replay_window = \"0s\"");
    let gw = s.receiver(&a).receiver(&nodedup).start();
    let body = fixture("github/push.json");
    let pa = hook("ka", "a", "flux-system");
    let h = signed("ka", &body, "72d3162e-cc78-11e3-81ab-4c9367dc0958");
    let (st, _) = gw.post(&pa, &refs(&h), body.clone()).await;
    assert_eq!(st, 200);
    let (st, text) = gw.post(&pa, &refs(&h), body.clone()).await;
    assert_eq!(st, 200);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        (v["duplicate"].as_bool(), v["relayed"].as_bool()),
        (Some(true), Some(false)),
        "{text}"
    );
    assert_eq!(gw.patches().len(), 1);
    // Another delivery (a new id, and another push: the same body is a replay whatever its id).
    let other = another_push(1);
    let (st, _) = gw
        .post(&pa, &refs(&signed("ka", &other, "another-id")), other)
        .await;
    assert_eq!(st, 200);
    assert_eq!(gw.patches().len(), 2);
    // A forged copy of a known id is refused as forged, not answered as a duplicate.
    let (st, _) = gw
        .post(
            &pa,
            &refs(&signed("wrong", &body, "another-id")),
            body.clone(),
        )
        .await;
    assert_eq!(st, 401);
    // With the window at 0, a redelivery with the same id (as GitHub sends it) is relayed.
    let pn = hook("kn", "nodedup", "flux-system");
    let h = signed("kn", &body, "same-id");
    for _ in 0..2 {
        let (st, _) = gw.post(&pn, &refs(&h), body.clone()).await;
        assert_eq!(st, 200);
    }
    assert_eq!(gw.patches().len(), 4);
    assert_eq!(
        gw.metric("fluxgate_deliveries_total{outcome=\"duplicate\",receiver=\"flux-system/a\",type=\"github\"}"),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn both_of_two_secrets_verify_and_a_third_does_not() {
    let s = Setup::new();
    let old = s.secret("old", "old-secret");
    let new = s.secret("new", "new-secret");
    let r = format!(
        "name = \"rot\"\nnamespace = \"flux-system\"\ntype = \"github\"\nsecret_file = [\"{}\", \"{}\"]\nresources = [{{ kind = \"GitRepository\", name = \"app\" }}]",
        old.display(),
        new.display()
    );
    let pinned = format!(
        "name = \"pinned\"\nnamespace = \"flux-system\"\ntype = \"gitlab\"\nsecret_file = [\"{}\"]\npath = \"/hook/kept-from-before-rotation\"\nresources = [{{ kind = \"GitRepository\", name = \"app\" }}]",
        new.display()
    );
    let gw = s.receiver(&r).receiver(&pinned).start();
    let body = fixture("github/push.json");
    // The path stays tied to the first secret, as Flux computes it.
    let p = hook("old-secret", "rot", "flux-system");
    for (key, want) in [
        ("old-secret", 200),
        ("new-secret", 200),
        ("third-secret", 401),
    ] {
        let (st, _) = gw
            .post(&p, &refs(&signed(key, &body, &uid())), body.clone())
            .await;
        assert_eq!(st, want, "{key}");
    }
    let (st, _) = gw
        .post(
            "/hook/kept-from-before-rotation",
            &[("X-Gitlab-Token", "new-secret")],
            "{}",
        )
        .await;
    assert_eq!(st, 200);
    let (st, _) = gw
        .post(
            &hook("new-secret", "pinned", "flux-system"),
            &[("X-Gitlab-Token", "new-secret")],
            "{}",
        )
        .await;
    assert_eq!(st, 404, "an explicit path replaces the computed one");
}

#[tokio::test(flavor = "multi_thread")]
async fn each_refusal_is_counted() {
    let s = Setup::new().server("max_body_bytes = 1024");
    let a = github(&s, "a", "ka", "events = [\"push\"]");
    let gw = s.receiver(&a).start();
    let pa = hook("ka", "a", "flux-system");
    let body = b"{}".to_vec();
    gw.post(&pa, &refs(&signed("wrong", &body, &uid())), body.clone())
        .await;
    gw.post("/hook/unknown", &[JSON], "{}").await;
    gw.client().get(gw.url(&pa)).send().await.unwrap();
    gw.post(&pa, &[JSON], vec![b'x'; 2048]).await;
    gw.post(
        &pa,
        &[
            ("Content-Type", "text/plain"),
            ("X-Hub-Signature-256", "sha256=00"),
        ],
        "{}",
    )
    .await;
    let mut h = signed("ka", &body, &uid());
    h[1].1 = "issues".into();
    gw.post(&pa, &refs(&h), body.clone()).await;
    for (outcome, receiver) in [
        ("bad_signature", "flux-system/a"),
        ("unknown_hook", "-"),
        ("method_not_allowed", "flux-system/a"),
        ("too_large", "flux-system/a"),
        ("unsupported_media_type", "flux-system/a"),
        ("event_not_accepted", "flux-system/a"),
    ] {
        let series =
            format!("fluxgate_deliveries_total{{outcome=\"{outcome}\",receiver=\"{receiver}\",type=\"{}\"}}", if receiver == "-" { "-" } else { "github" });
        assert_eq!(gw.metric(&series), 1.0, "{series}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_connections_per_address_are_capped() {
    let s = Setup::new().section("[limits]\nmax_connections_per_ip = 2");
    let a = github(&s, "a", "ka", "");
    let gw = s.receiver(&a).start();
    let from = |src: &str| {
        let src = src.to_string();
        let port = gw.port;
        let cert = gw.setup.cert_pem.clone();
        async move {
            let sock = tokio::net::TcpSocket::new_v4().unwrap();
            sock.bind(format!("{src}:0").parse().unwrap()).unwrap();
            let tcp = sock
                .connect(format!("127.0.0.1:{port}").parse().unwrap())
                .await
                .unwrap();
            let mut roots = rustls::RootCertStore::empty();
            for c in rustls_pemfile::certs(&mut cert.as_bytes()) {
                roots.add(c.unwrap()).unwrap();
            }
            let cfg = rustls::ClientConfig::builder()
                .with_root_certificates(roots)
                .with_no_client_auth();
            tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
                .connect("127.0.0.1".try_into().unwrap(), tcp)
                .await
        }
    };
    install_crypto();
    let c1 = from("127.0.0.2").await.unwrap();
    let c2 = from("127.0.0.2").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        from("127.0.0.2").await.is_err(),
        "a third connection from the same address is refused"
    );
    assert!(
        from("127.0.0.3").await.is_ok(),
        "other addresses are not affected"
    );
    drop(c1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        from("127.0.0.2").await.is_ok(),
        "a slot frees when a connection closes"
    );
    drop(c2);
    assert!(
        gw.metric("fluxgate_connections_refused_total{reason=\"too_many_connections\"}") >= 1.0
    );
}

/// The GitHub push fixture with another `after` commit: a different event, as two pushes are.
fn another_push(n: u32) -> Vec<u8> {
    let mut v: serde_json::Value = serde_json::from_slice(&fixture("github/push.json")).unwrap();
    v["after"] = format!("{n:040x}").into();
    serde_json::to_vec(&v).unwrap()
}

/// `signed`, with `X-Forwarded-For` as a trusted proxy passes it on.
fn forwarded(secret: &str, body: &[u8], xff: &str) -> Vec<(&'static str, String)> {
    let mut h = signed(secret, body, &uid());
    h.push(("X-Forwarded-For", xff.into()));
    h
}

#[tokio::test(flavor = "multi_thread")]
async fn failures_from_a_provider_address_block_it_for_that_receiver_only() {
    let s = Setup::new();
    let office = s.path("office.txt");
    std::fs::write(&office, "127.0.0.20/32\n").unwrap();
    let s = s.server("trusted_proxies = [\"127.0.0.5\"]").section(&format!(
        "[limits]\nblock_after_failures = 3\nfailure_window = \"1m\"\nblock_for = \"10m\"\n\n[ranges.office]\nrefresh_file = \"{}\"",
        office.display()
    ));
    let a = github(&s, "a", "ka", "");
    let b = github(&s, "b", "kb", "");
    let gw = s.receiver(&a).receiver(&b).start();
    let (pa, pb) = (
        hook("ka", "a", "flux-system"),
        hook("kb", "b", "flux-system"),
    );
    // A GitHub webhook egress address (in the shipped `github` set, which no receiver names),
    // presented by the trusted proxy: a stranger's hooks aimed at receiver a with a wrong
    // secret, and at paths that do not exist.
    let github = "140.82.115.10";
    for n in 0..3 {
        let body = another_push(n);
        let h = forwarded("wrong", &body, github);
        let (st, _, _) = gw.post_from("127.0.0.5", &pa, &refs(&h), body).await;
        assert_eq!(st, 401);
    }
    for _ in 0..5 {
        let h = [JSON, ("X-Forwarded-For", github)];
        let (st, _, _) = gw.post_from("127.0.0.5", "/hook/nope", &h, "{}").await;
        assert_eq!(st, 404);
    }
    // Receiver b's real deliveries from the same address still go through.
    let body = another_push(10);
    let (st, text, _) = gw
        .post_from(
            "127.0.0.5",
            &pb,
            &refs(&forwarded("kb", &body, github)),
            body,
        )
        .await;
    assert_eq!(st, 200, "{text}");
    // For receiver a, the address is in the box.
    let body = another_push(11);
    let (st, text, retry) = gw
        .post_from(
            "127.0.0.5",
            &pa,
            &refs(&forwarded("ka", &body, github)),
            body,
        )
        .await;
    assert_eq!(
        (st, text.trim()),
        (429, "address blocked after repeated failures")
    );
    assert!(retry.is_some());

    // The same without a proxy, for an address in a range set of the operator's: its
    // connections are not refused before the handshake, and receiver b still takes it.
    for n in 20..23 {
        let body = another_push(n);
        let (st, _, _) = gw
            .post_from(
                "127.0.0.20",
                &pa,
                &refs(&signed("wrong", &body, &uid())),
                body,
            )
            .await;
        assert_eq!(st, 401);
    }
    let body = another_push(23);
    let (st, text, _) = gw
        .post_from("127.0.0.20", &pb, &refs(&signed("kb", &body, &uid())), body)
        .await;
    assert_eq!(st, 200, "{text}");
    let body = another_push(24);
    let (st, _, _) = gw
        .post_from("127.0.0.20", &pa, &refs(&signed("ka", &body, &uid())), body)
        .await;
    assert_eq!(st, 429);

    // Any other address that keeps failing is still blocked for every receiver.
    for n in 30..33 {
        let body = another_push(n);
        let h = forwarded("wrong", &body, "203.0.113.7");
        let (st, _, _) = gw.post_from("127.0.0.5", &pa, &refs(&h), body).await;
        assert_eq!(st, 401);
    }
    let body = another_push(33);
    let (st, _, _) = gw
        .post_from(
            "127.0.0.5",
            &pb,
            &refs(&forwarded("kb", &body, "203.0.113.7")),
            body,
        )
        .await;
    assert_eq!(st, 429);
    assert_eq!(gw.patches().len(), 2);
    assert_eq!(
        gw.metric("fluxgate_connections_refused_total{reason=\"blocked\"}"),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replayed_signed_body_is_a_duplicate_whatever_its_delivery_id() {
    let s = Setup::new();
    let a = github(&s, "a", "ka", "");
    let gw = s.receiver(&a).start();
    let body = fixture("github/push.json");
    let pa = hook("ka", "a", "flux-system");
    let (st, text) = gw
        .post(&pa, &refs(&signed("ka", &body, &uid())), body.clone())
        .await;
    assert_eq!(st, 200, "{text}");
    assert_eq!(gw.patches().len(), 1);
    let duplicate = |text: &str| {
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        (v["duplicate"].as_bool(), v["relayed"].as_bool()) == (Some(true), Some(false))
    };
    // The captured delivery, sent again with a fresh id.
    let (st, text) = gw
        .post(&pa, &refs(&signed("ka", &body, &uid())), body.clone())
        .await;
    assert!(st == 200 && duplicate(&text), "{st} {text}");
    // And with no id at all.
    let mut h = signed("ka", &body, "");
    h.retain(|(k, _)| *k != "X-GitHub-Delivery");
    let (st, text) = gw.post(&pa, &refs(&h), body.clone()).await;
    assert!(st == 200 && duplicate(&text), "{st} {text}");
    assert!(!text.contains("\"delivery\""), "{text}");
    assert_eq!(gw.patches().len(), 1, "the replays relayed nothing");
    // Another push (another `after`) is relayed, with or without an id.
    let other = another_push(1);
    let (st, text) = gw
        .post(&pa, &refs(&signed("ka", &other, &uid())), other)
        .await;
    assert!(st == 200 && !duplicate(&text), "{text}");
    let third = another_push(2);
    let mut h = signed("ka", &third, "");
    h.retain(|(k, _)| *k != "X-GitHub-Delivery");
    let (st, text) = gw.post(&pa, &refs(&h), third).await;
    assert!(st == 200 && !duplicate(&text), "{text}");
    assert_eq!(gw.patches().len(), 3);
    assert_eq!(
        gw.metric("fluxgate_deliveries_total{outcome=\"duplicate\",receiver=\"flux-system/a\",type=\"github\"}"),
        2.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_forwarded_for_from_a_trusted_proxy_is_limited_and_boxed() {
    let s = Setup::new()
        .server("trusted_proxies = [\"127.0.0.5\", \"127.0.0.6\"]")
        .section("[limits]\nper_ip = \"1/h\"\nper_ip_burst = 4\nblock_after_failures = 3\nfailure_window = \"1m\"\nblock_for = \"10m\"");
    let a = github(&s, "a", "ka", "");
    let gw = s.receiver(&a).start();
    let pa = hook("ka", "a", "flux-system");
    let post = |from: &'static str, secret: &'static str, n: u32, xff: Option<&'static str>| {
        let gw = &gw;
        let pa = pa.clone();
        async move {
            let body = another_push(n);
            let mut h = signed(secret, &body, &uid());
            if let Some(x) = xff {
                h.push(("X-Forwarded-For", x.into()));
            }
            let (st, text, _) = gw.post_from(from, &pa, &refs(&h), body).await;
            (st, text.trim().to_string())
        }
    };
    // Failures behind a garbled entry put it in the box.
    for n in 0..3 {
        assert_eq!(
            post("127.0.0.5", "wrong", n, Some("127.0.0.2, not-an-ip"))
                .await
                .0,
            401
        );
    }
    assert_eq!(
        post("127.0.0.5", "ka", 3, Some("unknown")).await,
        (429, "address blocked after repeated failures".into())
    );
    // The proxy's well-formed clients, and the proxy itself, are not affected.
    assert_eq!(post("127.0.0.5", "ka", 4, Some("127.0.0.2")).await.0, 200);
    for n in 5..12 {
        assert_eq!(
            post("127.0.0.5", "ka", n, None).await.0,
            200,
            "the proxy stays exempt"
        );
    }
    // Garbled entries through the other proxy share one budget, like one address.
    for n in 20..24 {
        assert_eq!(post("127.0.0.6", "ka", n, Some("x")).await.0, 200);
    }
    let (st, text) = post("127.0.0.6", "ka", 24, Some("[::1")).await;
    assert_eq!(
        (st, text.as_str()),
        (429, "too many requests from 127.0.0.6")
    );
    assert_eq!(post("127.0.0.6", "ka", 25, Some("127.0.0.3")).await.0, 200);
}
