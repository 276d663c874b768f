//! Every receiver type's checks: any headers (signature headers among them) and any body,
//! through `begin`, the streamed body check, and `complete` for the types that read the body.
//!
//! Input: one byte choosing the type, then header lines `name: value` up to an empty line,
//! then the body.
#![no_main]

use fluxgate::secret::Secret;
use fluxgate::verify::{ReceiverType, TypeOptions, Verifier};
use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use serde_json::json;
use std::sync::LazyLock;

struct Verifiers(Vec<(ReceiverType, Box<dyn Verifier>)>);

static VERIFIERS: LazyLock<Verifiers> = LazyLock::new(|| {
    let secrets = [Secret::new(b"fuzz-secret".to_vec())];
    let options = TypeOptions {
        email: Some("pusher@example.iam.gserviceaccount.com".into()),
        audience: Some("https://hooks.example.com".into()),
        jwks: None,
        oidc_providers: vec![serde_json::from_value(json!({
            "issuer_url": "https://token.example.com",
            "validations": [{"expression": "claims.sub == 'x'", "message": "wrong subject"}]
        }))
        .expect("a valid provider")],
    };
    Verifiers(
        ReceiverType::ALL
            .iter()
            .map(|&t| (t, t.verifier(&secrets, &options).expect("a verifier")))
            .collect(),
    )
});

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime")
});

fn split(data: &[u8]) -> (HeaderMap, &[u8]) {
    let mut head = HeaderMap::new();
    let mut rest = data;
    while let Some(end) = rest.iter().position(|b| *b == b'\n') {
        let line = &rest[..end];
        rest = &rest[end + 1..];
        if line.is_empty() {
            break;
        }
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            head.append(n, v);
        }
    }
    (head, rest)
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let (kind, verifier) = &VERIFIERS.0[pick as usize % VERIFIERS.0.len()];
    let (head, body) = split(rest);
    let Ok(mut check) = verifier.begin(&head) else {
        return;
    };
    for chunk in body.chunks(1 + pick as usize % 7) {
        check.update(chunk);
    }
    if check.finish().is_err() {
        return;
    }
    // gcr and generic-oidc would fetch keys from the network here.
    if verifier.completes() && !matches!(kind, ReceiverType::Gcr | ReceiverType::GenericOidc) {
        let _ = RUNTIME.block_on(verifier.complete(&head, body));
    }
});
