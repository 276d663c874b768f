//! Signature and token checks, one per receiver type, as a delivery goes through them:
//! `begin(head)` on the request head, `update(chunk)` for each 16 KiB body chunk as it streams
//! in, then `finish()`. The verifier itself is built once, as at configuration load.
//!
//! `cargo bench --bench verify`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use fluxgate::refusal::Refusal;
use fluxgate::secret::Secret;
use fluxgate::verify::signature::sign;
use fluxgate::verify::{Algorithm, ReceiverType, TypeOptions, Verifier};
use http::{HeaderMap, HeaderName, HeaderValue};
use std::hint::black_box;
use std::time::Duration;

/// A real GitHub push delivery (7.3 KB).
const PUSH: &[u8] = include_bytes!("../tests/fixtures/github/push.json");

/// The size of the chunks the body is fed to the check in.
const CHUNK: usize = 16 * 1024;

/// A token as `flux create secret receiver` makes one: 32 random bytes in hex.
const TOKEN: &[u8] = b"8f3c1a9e5b7d2f4608e1c3a5b7d9f0e2a4c6e8f0b2d4f6a8c0e2a4c6e8f0b2d4";

fn head(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

fn signature(algorithm: Algorithm, key: &[u8], body: &[u8]) -> String {
    format!("{}={}", algorithm.as_str(), sign(algorithm, key, body))
}

/// One delivery's whole check, the body streamed in `CHUNK`-sized pieces.
fn check(verifier: &dyn Verifier, head: &HeaderMap, body: &[u8]) -> Result<(), Refusal> {
    let mut c = verifier.begin(head)?;
    for chunk in body.chunks(CHUNK) {
        c.update(chunk);
    }
    c.finish()
}

/// The head a provider sends with `body`, for each case; `ok` says whether it must verify.
fn cases(body: &[u8]) -> Vec<(&'static str, ReceiverType, HeaderMap, bool)> {
    let json = ("content-type", "application/json");
    let gh = |extra: &[(&str, &str)]| {
        let mut pairs = vec![
            json,
            ("x-github-event", "push"),
            ("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958"),
        ];
        pairs.extend_from_slice(extra);
        head(&pairs)
    };
    let s256 = signature(Algorithm::Sha256, TOKEN, body);
    let s1 = signature(Algorithm::Sha1, TOKEN, body);
    let wrong = signature(Algorithm::Sha256, b"not the token", body);
    let token = std::str::from_utf8(TOKEN).unwrap();
    vec![
        // GitHub sends both headers; the SHA-256 one is checked.
        (
            "github/sha256",
            ReceiverType::Github,
            gh(&[("x-hub-signature-256", &s256), ("x-hub-signature", &s1)]),
            true,
        ),
        (
            "github/sha1",
            ReceiverType::Github,
            gh(&[("x-hub-signature", &s1)]),
            true,
        ),
        (
            "github/bad-signature",
            ReceiverType::Github,
            gh(&[("x-hub-signature-256", &wrong)]),
            false,
        ),
        (
            "gitlab/token",
            ReceiverType::Gitlab,
            head(&[
                json,
                ("x-gitlab-event", "Push Hook"),
                ("x-gitlab-token", token),
            ]),
            true,
        ),
        (
            "bitbucket/sha256",
            ReceiverType::Bitbucket,
            head(&[
                json,
                ("x-event-key", "repo:push"),
                ("x-hub-signature", &s256),
            ]),
            true,
        ),
        (
            "generic-hmac/sha1",
            ReceiverType::GenericHmac,
            head(&[("x-signature", &s1)]),
            true,
        ),
        (
            "generic-hmac/sha256",
            ReceiverType::GenericHmac,
            head(&[("x-signature", &s256)]),
            true,
        ),
        (
            "generic-hmac/sha512",
            ReceiverType::GenericHmac,
            head(&[("x-signature", &signature(Algorithm::Sha512, TOKEN, body))]),
            true,
        ),
        ("generic", ReceiverType::Generic, head(&[json]), true),
    ]
}

/// Every receiver type over the GitHub push fixture.
fn push_fixture(c: &mut Criterion) {
    let secrets = [Secret::new(TOKEN.to_vec())];
    let mut g = c.benchmark_group("verify/push-7KB");
    g.throughput(Throughput::Bytes(PUSH.len() as u64));
    for (name, kind, head, ok) in cases(PUSH) {
        let verifier = kind.verifier(&secrets, &TypeOptions::default()).unwrap();
        assert_eq!(
            check(verifier.as_ref(), &head, PUSH).is_ok(),
            ok,
            "{name} must {}verify",
            if ok { "" } else { "not " }
        );
        g.bench_function(name, |b| {
            b.iter(|| check(verifier.as_ref(), black_box(&head), black_box(PUSH)))
        });
    }
    // What configuration load pays once per receiver (HMAC keys for three algorithms), shown
    // next to the per-delivery cost it saves.
    g.bench_function("github/sha256+build-verifier", |b| {
        let (_, kind, head, _) = cases(PUSH).swap_remove(0);
        b.iter(|| {
            let verifier = kind
                .verifier(black_box(&secrets), &TypeOptions::default())
                .unwrap();
            check(verifier.as_ref(), black_box(&head), black_box(PUSH))
        })
    });
    g.finish();
}

/// GitHub SHA-256 over bodies from 1 KiB up to GitHub's 25 MiB cap.
fn body_size(c: &mut Criterion) {
    let secrets = [Secret::new(TOKEN.to_vec())];
    let verifier = ReceiverType::Github
        .verifier(&secrets, &TypeOptions::default())
        .unwrap();
    let mut g = c.benchmark_group("verify/github-sha256-size");
    for (label, size) in [
        ("1KiB", 1usize << 10),
        ("64KiB", 64 << 10),
        ("1MiB", 1 << 20),
        ("25MiB", 25 << 20),
    ] {
        let body: Vec<u8> = PUSH.iter().copied().cycle().take(size).collect();
        let head = head(&[
            ("content-type", "application/json"),
            (
                "x-hub-signature-256",
                &signature(Algorithm::Sha256, TOKEN, &body),
            ),
        ]);
        check(verifier.as_ref(), &head, &body).expect("a valid signature");
        if size >= 1 << 20 {
            g.sample_size(10)
                .measurement_time(Duration::from_secs(if size > 1 << 20 { 8 } else { 4 }));
        } else {
            g.sample_size(100).measurement_time(Duration::from_secs(5));
        }
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::from_parameter(label), &body, |b, body| {
            b.iter(|| check(verifier.as_ref(), black_box(&head), black_box(body)))
        });
    }
    g.finish();
}

criterion_group!(benches, push_fixture, body_size);
criterion_main!(benches);
