//! The body cap is enforced while reading: an oversized body is refused before it has arrived.

use crate::common::*;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MIB: u64 = 1024 * 1024;

fn generic_hmac(s: &Setup) -> String {
    format!(
        "name = \"big\"\nnamespace = \"flux-system\"\ntype = \"generic-hmac\"\nsecret_file = \"{}\"\nresources = [{{ kind = \"GitRepository\", name = \"app\" }}]",
        s.secret("big", "k").display()
    )
}

async fn read_status(r: &mut (impl AsyncReadExt + Unpin)) -> String {
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&got)
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn declared_length_over_the_default_cap_is_refused_before_any_body() {
    let s = Setup::new();
    let r = generic_hmac(&s);
    let gw = s.receiver(&r).start();
    let mut tls = raw_tls(gw.port, &gw.setup.cert_pem).await;
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: x\r\nX-Signature: sha256={}\r\nContent-Length: {}\r\n\r\n",
        hook("k", "big", "flux-system"),
        "0".repeat(64),
        25 * MIB + 1
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    // Not one byte of the body was sent.
    let status = tokio::time::timeout(std::time::Duration::from_secs(5), read_status(&mut tls))
        .await
        .unwrap();
    assert_eq!(status, "HTTP/1.1 413 Payload Too Large");
    assert!(gw.relayed().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn chunked_body_over_the_cap_is_cut_while_it_streams() {
    let s = Setup::new();
    let r = generic_hmac(&s);
    let gw = s.receiver(&r).start();
    let tls = raw_tls(gw.port, &gw.setup.cert_pem).await;
    let (mut rd, mut wr) = tokio::io::split(tls);
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: x\r\nX-Signature: sha256={}\r\nTransfer-Encoding: chunked\r\n\r\n",
        hook("k", "big", "flux-system"),
        "0".repeat(64)
    );
    wr.write_all(head.as_bytes()).await.unwrap();
    let sent = Arc::new(AtomicU64::new(0));
    let total = 64 * MIB;
    let writer = {
        let sent = sent.clone();
        tokio::spawn(async move {
            let chunk = vec![b'a'; MIB as usize];
            while sent.load(Ordering::SeqCst) < total {
                let frame = format!("{:x}\r\n", chunk.len());
                if wr.write_all(frame.as_bytes()).await.is_err()
                    || wr.write_all(&chunk).await.is_err()
                    || wr.write_all(b"\r\n").await.is_err()
                {
                    return;
                }
                sent.fetch_add(MIB, Ordering::SeqCst);
            }
        })
    };
    let status = tokio::time::timeout(std::time::Duration::from_secs(30), read_status(&mut rd))
        .await
        .unwrap();
    let at_answer = sent.load(Ordering::SeqCst);
    assert_eq!(status, "HTTP/1.1 413 Payload Too Large");
    assert!(
        at_answer < total,
        "the answer came only after the whole body ({at_answer} bytes)"
    );
    assert!(
        at_answer >= 25 * MIB,
        "refused before the cap was reached ({at_answer} bytes)"
    );
    writer.abort();
    assert!(gw.relayed().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_exactly_at_a_configured_cap_passes_and_one_byte_more_does_not() {
    let s = Setup::new().server("max_body_bytes = 1048576");
    let r = generic_hmac(&s);
    let gw = s.receiver(&r).start();
    let path = hook("k", "big", "flux-system");
    let at_cap = vec![b'x'; MIB as usize];
    let (status, text) = gw
        .post(
            &path,
            &[("X-Signature", &sig("sha256", "k", &at_cap))],
            at_cap,
        )
        .await;
    assert_eq!(status, 200, "{text}");
    let over = vec![b'x'; MIB as usize + 1];
    let (status, text) = gw
        .post(&path, &[("X-Signature", &sig("sha256", "k", &over))], over)
        .await;
    assert_eq!(
        (status, text.trim()),
        (413, "body larger than 1048576 bytes")
    );
    assert_eq!(gw.patches().len(), 1);
}

fn dockerhub(s: &Setup, name: &str, extra: &str) -> String {
    format!(
        "name = \"{name}\"\nnamespace = \"flux-system\"\ntype = \"dockerhub\"\nsecret_file = \"{}\"\nresources = [{{ kind = \"GitRepository\", name = \"app\" }}]\n{extra}",
        s.secret(name, "kh").display()
    )
}

/// The dockerhub fixture, padded with trailing spaces (still one JSON value) to `len` bytes.
fn padded_push(len: usize) -> Vec<u8> {
    let mut body = fixture("dockerhub/push.json");
    body.resize(len, b' ');
    body
}

#[tokio::test(flavor = "multi_thread")]
async fn kept_bodies_are_capped_at_flux_s_3_mib_unless_the_receiver_says_otherwise() {
    let s = Setup::new();
    let hub = dockerhub(&s, "hub", "");
    let small = dockerhub(&s, "small", "max_body_bytes = 1024");
    let streamed = generic_hmac(&s);
    let gw = s
        .receiver(&hub)
        .receiver(&small)
        .receiver(&streamed)
        .start();
    let hub_path = hook("kh", "hub", "flux-system");
    let (status, text) = gw.post(&hub_path, &[], padded_push(3 * MIB as usize)).await;
    assert_eq!(status, 200, "a body at the cap: {text}");
    let (status, text) = gw
        .post(&hub_path, &[], padded_push(3 * MIB as usize + 1))
        .await;
    assert_eq!(
        (status, text.trim()),
        (
            413,
            "body larger than 3145728 bytes (the receiver's max_body_bytes)"
        )
    );
    let small_path = hook("kh", "small", "flux-system");
    let (status, text) = gw.post(&small_path, &[], padded_push(1025)).await;
    assert_eq!(
        (status, text.trim()),
        (
            413,
            "body larger than 1024 bytes (the receiver's max_body_bytes)"
        )
    );
    // A streamed type is held to the server's cap only.
    let body = vec![b'x'; 4 * MIB as usize];
    let (status, text) = gw
        .post(
            &hook("k", "big", "flux-system"),
            &[("X-Signature", &sig("sha256", "k", &body))],
            body,
        )
        .await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(gw.patches().len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chunked_kept_body_is_cut_at_the_receiver_s_cap() {
    let s = Setup::new();
    let hub = dockerhub(&s, "hub", "max_body_bytes = 65536");
    let gw = s.receiver(&hub).start();
    let tls = raw_tls(gw.port, &gw.setup.cert_pem).await;
    let (mut rd, mut wr) = tokio::io::split(tls);
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
        hook("kh", "hub", "flux-system"),
    );
    wr.write_all(head.as_bytes()).await.unwrap();
    let writer = tokio::spawn(async move {
        let chunk = vec![b' '; 16 * 1024];
        for _ in 0..64 {
            let frame = format!("{:x}\r\n", chunk.len());
            if wr.write_all(frame.as_bytes()).await.is_err()
                || wr.write_all(&chunk).await.is_err()
                || wr.write_all(b"\r\n").await.is_err()
            {
                return;
            }
        }
    });
    let status = tokio::time::timeout(std::time::Duration::from_secs(10), read_status(&mut rd))
        .await
        .unwrap();
    assert_eq!(status, "HTTP/1.1 413 Payload Too Large");
    writer.abort();
    assert!(gw.relayed().is_empty());
}

#[test]
fn zero_body_caps_are_refused_naming_their_key() {
    let s = Setup::new().section("[limits]\nbody_memory_bytes = 0");
    let hub = dockerhub(&s, "hub", "max_body_bytes = 0");
    let s = s.receiver(&hub);
    s.offline_kubeconfig();
    let run = run_check(&s.write_config(8443, 9102), &["--offline"], &[]);
    let out = format!("{}{}", run.stdout, run.stderr);
    assert_ne!(run.code, Some(0), "{out}");
    assert!(
        out.contains("limits.body_memory_bytes: must be more than zero"),
        "{out}"
    );
    assert!(
        out.contains("receivers[0].max_body_bytes: must be more than zero"),
        "{out}"
    );
}
