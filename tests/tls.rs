//! The listener's TLS, which fluxgate accepts itself: the handshake's deadline, the
//! per-address cap from before the handshake, the server's choice of cipher suite, and ALPN.

use crate::common::*;
use rustls::crypto::aws_lc_rs::cipher_suite as cs;
use rustls::SupportedCipherSuite;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

fn receiver(s: &Setup) -> String {
    format!(
        "name = \"a\"\nnamespace = \"flux-system\"\ntype = \"github\"\nsecret_file = \"{}\"\nresources = [{{ kind = \"GitRepository\", name = \"app\" }}]\n",
        s.secret("a", "ka").display()
    )
}

async fn tcp_from(source: &str, port: u16) -> TcpStream {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(format!("{source}:0").parse().unwrap()).unwrap();
    sock.connect(format!("127.0.0.1:{port}").parse().unwrap())
        .await
        .unwrap()
}

/// A client that trusts the gateway's certificate and offers these suites, in this order,
/// and these ALPN protocols.
async fn handshake(
    gw: &Gateway,
    source: &str,
    suites: &[SupportedCipherSuite],
    alpn: &[&[u8]],
) -> std::io::Result<TlsStream<TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut gw.setup.cert_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = rustls::crypto::CryptoProvider {
        cipher_suites: suites.to_vec(),
        ..rustls::crypto::aws_lc_rs::default_provider()
    };
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = tcp_from(source, gw.port).await;
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect("127.0.0.1".try_into().unwrap(), tcp)
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_server_picks_aes_128_gcm_first_whatever_the_client_prefers() {
    let s = Setup::new();
    let a = receiver(&s);
    let gw = s.receiver(&a).start();
    let all = [
        cs::TLS13_AES_256_GCM_SHA384,
        cs::TLS13_CHACHA20_POLY1305_SHA256,
        cs::TLS13_AES_128_GCM_SHA256,
    ];
    let tls = handshake(&gw, "127.0.0.2", &all, &[b"http/1.1"])
        .await
        .unwrap();
    let (_, conn) = tls.get_ref();
    assert_eq!(
        conn.negotiated_cipher_suite().map(|s| s.suite()),
        Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256)
    );
    assert_eq!(conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    // A client with only one of the other suites still gets it.
    for only in [
        cs::TLS13_AES_256_GCM_SHA384,
        cs::TLS13_CHACHA20_POLY1305_SHA256,
    ] {
        let tls = handshake(&gw, "127.0.0.2", &[only], &[]).await.unwrap();
        assert_eq!(
            tls.get_ref().1.negotiated_cipher_suite().map(|s| s.suite()),
            Some(only.suite())
        );
    }
    // ALPN: HTTP/1.1 is the only protocol served; a client that wants only h2 is refused.
    let tls = handshake(&gw, "127.0.0.2", &all, &[b"h2", b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert!(handshake(&gw, "127.0.0.2", &all, &[b"h2"]).await.is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_handshake_is_closed_at_the_head_deadline_and_holds_a_connection_slot() {
    let s = Setup::new()
        .server("head_timeout = \"1s\"")
        .section("[limits]\nmax_connections_per_ip = 2");
    let a = receiver(&s);
    let gw = s.receiver(&a).start();
    let all = [cs::TLS13_AES_128_GCM_SHA256];
    let before = gw.metric("fluxgate_tls_handshake_failures_total");

    // Two connections from one address that never send a ClientHello hold its two slots.
    let started = Instant::now();
    let mut stalled = vec![
        tcp_from("127.0.0.2", gw.port).await,
        tcp_from("127.0.0.2", gw.port).await,
    ];
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        handshake(&gw, "127.0.0.2", &all, &[]).await.is_err(),
        "the slots are taken before any handshake completes"
    );
    assert!(
        handshake(&gw, "127.0.0.3", &all, &[]).await.is_ok(),
        "other addresses are not affected"
    );

    // The deadline closes them; their slots free.
    for tcp in &mut stalled {
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
            .await
            .expect("closed by the gateway, not by this test's timeout")
            .unwrap_or(0);
        assert_eq!(n, 0);
    }
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(4),
        "closed after {waited:?}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(handshake(&gw, "127.0.0.2", &all, &[]).await.is_ok());
    assert!(gw.metric("fluxgate_tls_handshake_failures_total") >= before + 2.0);
    assert!(
        !gw.logs().contains("TLS handshake failed"),
        "failed handshakes are not logged at the default level"
    );
}
