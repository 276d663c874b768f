//! `server.max_connections`: the public listener's connections, all clients together, are
//! capped; at the cap the connection idle the longest is closed to make room, and with none
//! idle a new connection is closed before TLS.

use crate::common::*;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET: &str = "cap-secret";
const CAP: usize = 4;

/// `head_timeout` also bounds how long a kept-alive connection waits for its next request.
fn gateway(head_timeout: &str) -> Gateway {
    let s = Setup::new()
        .server(&format!(
            "max_connections = {CAP}\nhead_timeout = \"{head_timeout}\""
        ))
        .section("[limits]\nper_ip = \"off\"\nper_receiver = \"off\"\nblock_after_failures = 0\nmax_connections_per_ip = 0");
    let r = format!(
        "name = \"cap\"\nnamespace = \"flux-system\"\ntype = \"github\"\nsecret_file = \"{}\"\nresources = [{{ kind = \"GitRepository\", name = \"app\" }}]",
        s.secret("cap", SECRET).display()
    );
    s.receiver(&r).start()
}

async fn deliver<S>(s: &mut S) -> std::io::Result<(u16, String)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let body = fixture("github/push.json");
    let h = signed(SECRET, &body, &uid());
    http1_post(s, &hook(SECRET, "cap", "flux-system"), &refs(&h), &body).await
}

/// Whether the gateway closed `s` (EOF or reset) within a second.
async fn closed<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> bool {
    let mut b = [0u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_secs(1), s.read(&mut b)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn at_the_cap_the_oldest_idle_connection_makes_room() {
    let gw = gateway("30s");
    let cert = gw.setup.cert_pem.clone();
    assert_eq!(gw.metric("fluxgate_connection_limit"), CAP as f64);

    // The cap filled with kept-alive connections, each idle after one delivery.
    let mut idle = Vec::new();
    for _ in 0..CAP {
        let mut c = raw_tls(gw.port, &cert).await;
        assert_eq!(deliver(&mut c).await.unwrap().0, 200);
        idle.push(c);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A new connection's delivery is answered at once, and the oldest idle one is closed.
    let started = Instant::now();
    let mut fresh = raw_tls(gw.port, &cert).await;
    let (st, text) = deliver(&mut fresh)
        .await
        .unwrap_or_else(|e| panic!("{e}: {}", gw.metric("fluxgate_connections")));
    assert_eq!(st, 200, "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "answered in {:?}",
        started.elapsed()
    );
    assert!(
        closed(&mut idle[0]).await,
        "the oldest idle connection stays open"
    );
    for (i, c) in idle.iter_mut().enumerate().skip(1) {
        let r = deliver(c).await;
        assert_eq!(
            r.as_ref().map(|r| r.0).ok(),
            Some(200),
            "idle connection {i}: {r:?}; idle connections closed: {}",
            gw.metric("fluxgate_idle_connections_closed_total")
        );
    }
    assert_eq!(gw.metric("fluxgate_idle_connections_closed_total"), 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn at_the_cap_with_every_connection_busy_a_new_one_is_refused_before_tls() {
    let gw = gateway("3s");
    let cert = gw.setup.cert_pem.clone();
    // Each connection in the middle of a request head: busy, not idle.
    let mut busy = Vec::new();
    for _ in 0..CAP {
        let mut c = raw_tls(gw.port, &cert).await;
        c.write_all(b"POST /hook/x HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            .await
            .unwrap();
        c.flush().await.unwrap();
        busy.push(c);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let refused = || {
        gw.scrape().value(
            "fluxgate_connections_refused_total",
            &[("reason", "connection_limit")],
        )
    };
    let before = refused();
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", gw.port))
        .await
        .unwrap();
    assert!(
        closed(&mut tcp).await,
        "a connection over the cap is closed"
    );
    assert_eq!(refused(), before + 1.0);
    assert_eq!(gw.metric("fluxgate_connections"), CAP as f64);
    assert_eq!(gw.metric("fluxgate_idle_connections_closed_total"), 0.0);

    // Once the heads' deadline (3 s) closed them, connections are accepted again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut c = raw_tls(gw.port, &cert).await;
    assert_eq!(deliver(&mut c).await.unwrap().0, 200);
}
