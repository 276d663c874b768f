//! Token receivers end to end: `gcr` (Google-signed Pub/Sub pushes) and `generic-oidc`, through
//! the real binary over TLS, with a local issuer serving discovery and signing keys over plain
//! HTTP on loopback, and real RS256/ES256 tokens.

use crate::common::*;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const EMAIL: &str = "pubsub-push@acme.iam.gserviceaccount.com";
const AUDIENCE: &str = "https://hooks.example.com/gcr";
const GOOGLE_KID: &str = "google-test-1";
/// Failures do not block 127.0.0.1 here: every test sends many refusals from it.
const LIMITS: &str = "[limits]\nblock_after_failures = 0\n\n[relay]\nmin_interval = \"1ms\"";

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// An issuer on loopback: its discovery document, its keys (at `/keys`, and at `/certs` as
/// Google's endpoint), and how often each was asked for.
struct Issuer {
    url: String,
    hits: Arc<Mutex<HashMap<String, usize>>>,
}

impl Issuer {
    async fn start(jwks: Value) -> Issuer {
        Self::start_on(
            tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
            jwks,
        )
    }

    fn start_on(l: tokio::net::TcpListener, jwks: Value) -> Issuer {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let url = format!("http://{}", l.local_addr().unwrap());
        let hits: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let (h, iss) = (hits.clone(), url.clone());
        tokio::spawn(async move {
            while let Ok((mut c, _)) = l.accept().await {
                let (h, iss, jwks) = (h.clone(), iss.clone(), jwks.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 8192];
                    let n = c.read(&mut buf).await.unwrap_or(0);
                    let head = String::from_utf8_lossy(&buf[..n]).into_owned();
                    let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
                    *h.lock().unwrap().entry(path.clone()).or_default() += 1;
                    let (status, body) = match path.as_str() {
                        "/.well-known/openid-configuration" => (
                            200,
                            json!({"issuer": iss, "jwks_uri": format!("{iss}/keys"),
                                   "id_token_signing_alg_values_supported": ["RS256", "ES256"]})
                            .to_string(),
                        ),
                        "/keys" | "/certs" => (200, jwks.to_string()),
                        _ => (404, "{}".to_string()),
                    };
                    let resp = format!(
                        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nCache-Control: public, max-age=3600\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = c.write_all(resp.as_bytes()).await;
                });
            }
        });
        Issuer { url, hits }
    }

    fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

/// The committed test RSA key, as Google signs (RS256).
struct RsaKey;

impl RsaKey {
    fn jwk(kid: &str) -> Value {
        let mut jwk: Value = serde_json::from_slice(&fixture("oidc/rsa-public.jwk.json")).unwrap();
        jwk["kid"] = json!(kid);
        jwk
    }

    fn sign(kid: &str, claims: &Value) -> String {
        let mut h = Header::new(Algorithm::RS256);
        h.kid = Some(kid.to_string());
        let key = EncodingKey::from_rsa_pem(&fixture("oidc/rsa-private.pem")).unwrap();
        jsonwebtoken::encode(&h, claims, &key).unwrap()
    }
}

/// A P-256 key made for the test (ES256).
struct EcKey {
    kid: String,
    pem: String,
    jwk: Value,
}

impl EcKey {
    fn new(kid: &str) -> EcKey {
        let pair = rcgen::KeyPair::generate().unwrap();
        let point = pair.public_key_raw();
        EcKey {
            kid: kid.to_string(),
            pem: pair.serialize_pem(),
            jwk: json!({"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
                        "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
                        "y": URL_SAFE_NO_PAD.encode(&point[33..65])}),
        }
    }

    fn sign(&self, claims: &Value) -> String {
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some(self.kid.clone());
        let key = EncodingKey::from_ec_pem(self.pem.as_bytes()).unwrap();
        jsonwebtoken::encode(&h, claims, &key).unwrap()
    }
}

/// `token` with its payload replaced by `claims`, the signature kept.
fn tampered(token: &str, claims: &Value) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        parts[2]
    )
}

fn with(base: &Value, key: &str, v: Value) -> Value {
    let mut c = base.clone();
    c[key] = v;
    c
}

/// A Pub/Sub push of an Artifact Registry notification.
fn push(inner: &Value) -> String {
    json!({"message": {"data": STANDARD.encode(inner.to_string()), "messageId": "136969346945",
                       "publishTime": "2026-08-07T13:12:44.123Z"},
           "subscription": "projects/acme/subscriptions/flux"})
    .to_string()
}

fn google_claims() -> Value {
    json!({"iss": "https://accounts.google.com", "aud": AUDIENCE, "azp": "1234",
           "email": EMAIL, "email_verified": true, "sub": "1234",
           "iat": now(), "exp": now() + 3600})
}

fn gcr_receiver(s: &Setup, jwks: &str) -> String {
    format!(
        "name = \"gcr-receiver\"\nnamespace = \"flux-system\"\ntype = \"gcr\"\nsecret_file = \"{}\"\n\
         email = \"{EMAIL}\"\naudience = \"{AUDIENCE}\"\njwks = \"{jwks}\"\n\
         resources = [{{ kind = \"GitRepository\", name = \"app\" }}]",
        s.secret("gcr", "gcr-token").display()
    )
}

fn oidc_receiver(issuer: &str) -> String {
    format!(
        "name = \"ci-receiver\"\nnamespace = \"flux-system\"\ntype = \"generic-oidc\"\n\
         resources = [{{ kind = \"GitRepository\", name = \"app\" }}]\n\n\
         [[receivers.oidc_providers]]\nissuer_url = \"{issuer}\"\naudience = \"fluxgate\"\n\
         variables = [{{ name = \"owner\", expression = \"claims.repository.split('/')[0]\" }}]\n\
         validations = [\n  {{ expression = \"vars.owner == 'acme'\", message = \"only acme's repositories\" }},\n  \
         {{ expression = \"claims.ref == 'refs/heads/main'\", message = \"only from main\" }},\n]"
    )
}

fn ci_claims(issuer: &str) -> Value {
    json!({"iss": issuer, "aud": "fluxgate", "sub": "repo:acme/app:ref:refs/heads/main",
           "repository": "acme/app", "ref": "refs/heads/main",
           "jti": "9f1c", "iat": now(), "nbf": now(), "exp": now() + 300})
}

/// Sends each case and checks its status and reason, that nothing reached the API, and that
/// neither the answer nor the log quotes the token.
async fn refused(gw: &Gateway, path: &str, cases: &[(&str, String, String, u16, &str)]) {
    for (what, auth, body, status, reason) in cases {
        let mut headers = vec![("Content-Type", "application/json")];
        if !auth.is_empty() {
            headers.push(("Authorization", auth.as_str()));
        }
        let (got, text) = gw.post(path, &headers, body.clone()).await;
        assert_eq!(
            (got, text.trim()),
            (*status, *reason),
            "{what}: {}",
            gw.logs()
        );
        if let Some(sig) = auth.rsplit('.').next().filter(|s| s.len() > 20) {
            assert!(!text.contains(sig), "{what}: the answer quotes the token");
        }
    }
    assert!(
        gw.relayed().is_empty(),
        "nothing relayed: {:?}",
        gw.relayed()
    );
    let logs = gw.logs();
    for (what, auth, ..) in cases {
        if let Some(sig) = auth.rsplit('.').next().filter(|s| s.len() > 20) {
            assert!(!logs.contains(sig), "{what}: the log quotes the token");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn gcr_push_with_a_google_token_is_relayed_and_bad_ones_are_refused() {
    let google = Issuer::start(json!({"keys": [RsaKey::jwk(GOOGLE_KID)]})).await;
    let s = Setup::new().section(LIMITS);
    let r = gcr_receiver(&s, &format!("{}/certs", google.url));
    let gw = s.receiver(&r).start();
    let path = hook("gcr-token", "gcr-receiver", "flux-system");
    let good = google_claims();
    let bearer = |t: String| format!("Bearer {t}");
    let inner = json!({"action": "INSERT", "digest": "europe-docker.pkg.dev/acme/app@sha256:ab12",
                       "tag": "europe-docker.pkg.dev/acme/app:1.2.3"});
    let stranger = EcKey::new("not-googles");
    let cases: Vec<(&str, String, String, u16, &str)> = vec![
        (
            "no Authorization",
            String::new(),
            push(&inner),
            401,
            "missing bearer token (Authorization)",
        ),
        (
            "lower-case scheme",
            format!("bearer {}", RsaKey::sign(GOOGLE_KID, &good)),
            push(&inner),
            401,
            "Authorization is not a bearer token",
        ),
        (
            "basic",
            "Basic Zm9vOmJhcg==".into(),
            push(&inner),
            401,
            "Authorization is not a bearer token",
        ),
        (
            "empty token",
            "Bearer ".into(),
            push(&inner),
            401,
            "empty bearer token (Authorization)",
        ),
        (
            "not a JWT",
            "Bearer not-a-token".into(),
            push(&inner),
            401,
            "malformed token: not a signed JWT",
        ),
        (
            "wrong audience",
            bearer(RsaKey::sign(
                GOOGLE_KID,
                &with(&good, "aud", json!("https://evil.example.com/hook")),
            )),
            push(&inner),
            401,
            "wrong token audience",
        ),
        (
            "wrong email",
            bearer(RsaKey::sign(
                GOOGLE_KID,
                &with(
                    &good,
                    "email",
                    json!("someone@evil.iam.gserviceaccount.com"),
                ),
            )),
            push(&inner),
            401,
            "token email does not match",
        ),
        (
            "email not verified",
            bearer(RsaKey::sign(
                GOOGLE_KID,
                &with(&good, "email_verified", json!(false)),
            )),
            push(&inner),
            401,
            "token email is not verified",
        ),
        (
            "expired",
            bearer(RsaKey::sign(
                GOOGLE_KID,
                &with(&good, "exp", json!(now() - 5)),
            )),
            push(&inner),
            401,
            "token expired",
        ),
        (
            "wrong issuer",
            bearer(RsaKey::sign(
                GOOGLE_KID,
                &with(&good, "iss", json!("https://evil.example.com")),
            )),
            push(&inner),
            401,
            "wrong token issuer",
        ),
        (
            "unknown key",
            bearer(stranger.sign(&good)),
            push(&inner),
            401,
            "token signed with an unknown key",
        ),
        (
            "bad signature",
            bearer(tampered(
                &RsaKey::sign(GOOGLE_KID, &good),
                &with(&good, "email", json!(EMAIL.replace("push", "pull"))),
            )),
            push(&inner),
            401,
            "bad token signature",
        ),
        (
            "not Google's algorithm",
            bearer({
                let mut h = Header::new(Algorithm::PS256);
                h.kid = Some(GOOGLE_KID.into());
                jsonwebtoken::encode(
                    &h,
                    &good,
                    &EncodingKey::from_rsa_pem(&fixture("oidc/rsa-private.pem")).unwrap(),
                )
                .unwrap()
            }),
            push(&inner),
            401,
            "token algorithm PS256 is not accepted",
        ),
        (
            "not a push",
            bearer(RsaKey::sign(GOOGLE_KID, &good)),
            "{\"action\":\"INSERT\"}".into(),
            400,
            "message.data is missing or empty",
        ),
        (
            "data not base64",
            bearer(RsaKey::sign(GOOGLE_KID, &good)),
            json!({"message": {"data": "eyJ!!"}}).to_string(),
            400,
            "message.data is not base64",
        ),
        (
            "data not JSON",
            bearer(RsaKey::sign(GOOGLE_KID, &good)),
            json!({"message": {"data": STANDARD.encode("INSERT")}}).to_string(),
            400,
            "message.data is not a JSON {action, digest, tag} object: not JSON at line 1 column 1",
        ),
    ];
    refused(&gw, &path, &cases).await;

    let token = RsaKey::sign(GOOGLE_KID, &good);
    let headers = [
        ("Content-Type", "application/json"),
        ("Authorization", &bearer(token.clone())),
    ];
    let (status, text) = gw.post(&path, &headers, push(&inner)).await;
    assert_eq!(status, 200, "{text}");
    let summary: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(summary["relayed"], true, "{text}");
    assert_eq!(gw.patches().len(), 1);
    assert!(gw
        .annotation(
            "source.toolkit.fluxcd.io/v1",
            "GitRepository",
            "flux-system",
            "app"
        )
        .is_some());
    // Pub/Sub redelivers with the same messageId: answered, not relayed again.
    let (status, text) = gw.post(&path, &headers, push(&inner)).await;
    assert_eq!(status, 200, "{text}");
    assert!(
        text.contains("\"duplicate\":true") && text.contains("136969346945"),
        "{text}"
    );
    assert_eq!(gw.patches().len(), 1);
    // Google's keys were fetched once for all those tokens: the unknown kid came too soon
    // after the first fetch to refetch.
    assert_eq!(google.hits("/certs"), 1);
    assert!(!gw.logs().contains(token.rsplit('.').next().unwrap()));
    assert_eq!(
        gw.metric(&format!(
            "fluxgate_key_set_refreshes_total{{result=\"ok\",source=\"{}/certs\"}}",
            google.url
        )),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn generic_oidc_token_is_relayed_and_bad_ones_are_refused() {
    let ci = EcKey::new("ci-1");
    let issuer = Issuer::start(json!({"keys": [ci.jwk.clone(), RsaKey::jwk("ci-rsa")]})).await;
    let s = Setup::new().section(LIMITS);
    let gw = s.receiver(&oidc_receiver(&issuer.url)).start();
    // No secret: Flux hashes an empty token.
    let path = hook("", "ci-receiver", "flux-system");
    let good = ci_claims(&issuer.url);
    let bearer = |t: String| format!("Bearer {t}");
    let stranger = EcKey::new("ci-2");
    let cases: Vec<(&str, String, String, u16, &str)> = vec![
        (
            "no Authorization",
            String::new(),
            "{}".into(),
            401,
            "missing bearer token (Authorization)",
        ),
        (
            "token scheme",
            format!("Token {}", ci.sign(&good)),
            "{}".into(),
            401,
            "Authorization is not a bearer token",
        ),
        (
            "blank token",
            "Bearer    ".into(),
            "{}".into(),
            401,
            "empty bearer token (Authorization)",
        ),
        (
            "not a JWT",
            "Bearer a.b".into(),
            "{}".into(),
            401,
            "malformed token: not a signed JWT",
        ),
        (
            "wrong issuer",
            bearer(ci.sign(&with(
                &good,
                "iss",
                json!("https://token.actions.githubusercontent.com"),
            ))),
            "{}".into(),
            401,
            "no oidc_providers entry for the token's issuer",
        ),
        (
            "no issuer",
            bearer(ci.sign(&with(&good, "iss", Value::Null))),
            "{}".into(),
            401,
            "token has no iss claim",
        ),
        (
            "wrong audience",
            bearer(ci.sign(&with(&good, "aud", json!("notification-controller")))),
            "{}".into(),
            401,
            "wrong token audience",
        ),
        (
            "expired",
            bearer(ci.sign(&with(&good, "exp", json!(now() - 5)))),
            "{}".into(),
            401,
            "token expired",
        ),
        (
            "not yet valid",
            bearer(ci.sign(&with(&good, "nbf", json!(now() + 3600)))),
            "{}".into(),
            401,
            "token not valid yet (nbf)",
        ),
        (
            "unknown key",
            bearer(stranger.sign(&good)),
            "{}".into(),
            401,
            "token signed with an unknown key",
        ),
        (
            "bad signature",
            bearer(tampered(
                &ci.sign(&good),
                &with(&good, "repository", json!("acme/other")),
            )),
            "{}".into(),
            401,
            "bad token signature",
        ),
        (
            "key of another type",
            bearer({
                let mut h = Header::new(Algorithm::ES256);
                h.kid = Some("ci-rsa".into());
                jsonwebtoken::encode(
                    &h,
                    &good,
                    &EncodingKey::from_ec_pem(stranger.pem.as_bytes()).unwrap(),
                )
                .unwrap()
            }),
            "{}".into(),
            401,
            "token algorithm ES256 does not match the issuer's key",
        ),
        (
            "validations fail",
            bearer(ci.sign(&with(
                &with(&good, "repository", json!("evil/app")),
                "ref",
                json!("refs/heads/dev"),
            ))),
            "{}".into(),
            401,
            "token validation failed: only acme's repositories; only from main",
        ),
        (
            "one validation fails",
            bearer(ci.sign(&with(&good, "ref", json!("refs/tags/v1")))),
            "{}".into(),
            401,
            "token validation failed: only from main",
        ),
        (
            "claim missing",
            bearer(ci.sign(&with(&good, "repository", Value::Null))),
            "{}".into(),
            401,
            "token validation failed: variable \"owner\" cannot be evaluated for this token",
        ),
    ];
    refused(&gw, &path, &cases).await;

    for token in [ci.sign(&good), RsaKey::sign("ci-rsa", &good)] {
        let (status, text) = gw
            .post(&path, &[("Authorization", &bearer(token))], "")
            .await;
        assert_eq!(status, 200, "{text}");
    }
    assert_eq!(gw.patches().len(), 2);

    // A reload builds new verifiers; they share the keys already fetched.
    let reloads = "fluxgate_config_reloads_total{result=\"ok\"}";
    let before = gw.metric(reloads);
    gw.signal("HUP");
    let until = Instant::now() + Duration::from_secs(10);
    while gw.metric(reloads) <= before {
        assert!(Instant::now() < until, "no reload: {}", gw.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, text) = gw
        .post(&path, &[("Authorization", &bearer(ci.sign(&good)))], "")
        .await;
    assert_eq!(status, 200, "{text}");
    // Discovery and keys once, not per request nor per configuration.
    assert_eq!(issuer.hits("/.well-known/openid-configuration"), 1);
    assert_eq!(issuer.hits("/keys"), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_issuer_down_at_start_gets_503_until_it_is_back() {
    let port = free_port();
    let issuer_url = format!("http://127.0.0.1:{port}");
    let ci = EcKey::new("ci-1");
    let s = Setup::new().section(LIMITS);
    // fluxgate starts although the issuer does not answer.
    let gw = s.receiver(&oidc_receiver(&issuer_url)).start();
    let path = hook("", "ci-receiver", "flux-system");
    let auth = format!("Bearer {}", ci.sign(&ci_claims(&issuer_url)));
    let headers = [("Authorization", auth.as_str())];
    let (status, text) = gw.post(&path, &headers, "").await;
    assert_eq!(
        (status, text.trim()),
        (
            503,
            "the token issuer's signing keys cannot be fetched; try again later"
        )
    );
    assert!(gw.relayed().is_empty());
    assert_eq!(
        gw.metric(&format!(
            "fluxgate_key_set_refreshes_total{{result=\"failed\",source=\"{issuer_url}\"}}"
        )),
        1.0
    );
    assert_eq!(
        gw.metric("fluxgate_deliveries_total{outcome=\"keys_unavailable\",receiver=\"flux-system/ci-receiver\",type=\"generic-oidc\"}"),
        1.0
    );
    assert!(
        gw.logs().contains("fetching signing keys failed"),
        "{}",
        gw.logs()
    );

    // The issuer comes back; after the pause between fetches, the same token goes through.
    let l = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let issuer = Issuer::start_on(l, json!({"keys": [ci.jwk.clone()]}));
    let until = Instant::now() + Duration::from_secs(30);
    let status = loop {
        let (status, text) = gw.post(&path, &headers, "").await;
        if status != 503 || Instant::now() > until {
            break (status, text);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(status.0, 200, "{}", status.1);
    assert_eq!(issuer.hits("/keys"), 1);
    assert_eq!(gw.patches().len(), 1);
}

/// `fluxgate check --offline` on one receiver; its output, having failed.
fn check_fails(receiver: &str) -> String {
    let s = Setup::new();
    let s = s.receiver(receiver);
    s.offline_kubeconfig();
    let run = run_check(&s.write_config(8443, 9102), &["--offline"], &[]);
    assert_ne!(run.code, Some(0), "should fail: {}", run.output());
    run.output()
}

#[test]
fn configuration_mistakes_name_their_key() {
    let s = Setup::new();
    let secret = s.secret("t", "token");
    let gcr = format!(
        "name = \"gcr\"\nnamespace = \"flux-system\"\ntype = \"gcr\"\nsecret_file = \"{}\"\n\
         resources = [{{ kind = \"GitRepository\", name = \"app\" }}]",
        secret.display()
    );
    let out = check_fails(&gcr);
    assert!(out.contains("receivers[0].email: missing"), "{out}");
    assert!(out.contains("receivers[0].audience: missing"), "{out}");
    let out = check_fails(&format!(
        "{gcr}\nemail = \"a@b\"\naudience = \"x\"\njwks = \"ftp://keys\""
    ));
    assert!(
        out.contains("receivers[0].jwks: \"ftp://keys\" is neither an http(s) URL nor a file"),
        "{out}"
    );

    let oidc = "name = \"ci\"\nnamespace = \"flux-system\"\ntype = \"generic-oidc\"\n\
                resources = [{ kind = \"GitRepository\", name = \"app\" }]\n";
    let out = check_fails(oidc);
    assert!(out.contains("receivers[0].oidc_providers: none"), "{out}");
    let out = check_fails(&format!(
        "{oidc}\n[[receivers.oidc_providers]]\nissuer_url = \"token.example.com\"\n\
         [[receivers.oidc_providers]]\nissuer_url = \"https://a.example\"\naudience = \"\"\n\
         variables = [{{ name = \"\", expression = \"claims.sub +\" }}]\n\
         validations = [{{ expression = \"req.ref == 'x'\", message = \"\" }}]\n\
         [[receivers.oidc_providers]]\nissuer_url = \"https://a.example\"\n\
         validations = [{{ expression = \"true\", message = \"ok\" }}]"
    ));
    for expected in [
        "receivers[0].oidc_providers[0].issuer_url: \"token.example.com\" must start with http:// or https://",
        "receivers[0].oidc_providers[0].validations: none; at least one is required",
        "receivers[0].oidc_providers[1].audience: empty",
        "receivers[0].oidc_providers[1].variables[0].name: missing",
        "receivers[0].oidc_providers[1].variables[0].expression: not a valid CEL expression",
        "receivers[0].oidc_providers[1].validations[0].message: missing",
        "receivers[0].oidc_providers[1].validations[0].expression: uses req, which is not defined here",
        "receivers[0].oidc_providers[2].issuer_url: \"https://a.example\" is already oidc_providers[1]'s",
    ] {
        assert!(out.contains(expected), "expected {expected:?} in:\n{out}");
    }
    let out = check_fails(&format!(
        "{oidc}\n[[receivers.oidc_providers]]\nissuerURL = \"https://a.example\""
    ));
    // Flux's own spelling is read too (Receiver objects use it in cluster mode): the only
    // problem left is the missing validations.
    assert!(
        out.contains("receivers[0].oidc_providers[0].validations: none")
            && !out.contains("issuer_url"),
        "{out}"
    );
    // Flux forbids oidcProviders on other types.
    let out = check_fails(&format!(
        "{gcr}\nemail = \"a@b\"\naudience = \"x\"\n\n[[receivers.oidc_providers]]\nissuer_url = \"https://a.example\"\n\
         validations = [{{ expression = \"true\", message = \"ok\" }}]"
    ));
    assert!(
        out.contains("receivers[0].oidc_providers: only for type generic-oidc"),
        "{out}"
    );
}

/// `fluxgate check` fetches each issuer's keys once, so an unreachable issuer is found before
/// the first delivery is answered 503.
#[tokio::test(flavor = "multi_thread")]
async fn check_reaches_each_token_issuer() {
    let ci = EcKey::new("ci-1");
    let issuer = Issuer::start(json!({"keys": [ci.jwk.clone(), RsaKey::jwk("ci-rsa")]})).await;
    let dead = format!("http://127.0.0.1:{}/certs", free_port());
    let s = Setup::new().receiver(&oidc_receiver(&issuer.url));
    let s = {
        let gcr = gcr_receiver(&s, &dead);
        s.receiver(&gcr)
    };
    let api = kube_standin::StandIn::start(api_config()).unwrap();
    api.write_kubeconfig(&s.path("kubeconfig"), SA_TOKEN)
        .unwrap();
    let config = s.write_config(free_port(), free_port());
    let run = tokio::task::spawn_blocking(move || run_check(&config, &[], &[]))
        .await
        .unwrap();
    let out = run.output();
    assert_eq!(run.code, Some(1), "{out}");
    assert!(
        run.stdout.contains(&format!(
            "ok: receiver flux-system/ci-receiver: 2 signing key(s) from {}\n",
            issuer.url
        )),
        "{out}"
    );
    assert!(
        run.stdout.lines().any(|l| l.starts_with(
            "problem: receiver flux-system/gcr-receiver: cannot fetch the token issuer's signing keys: "
        ) && l.contains(&dead)),
        "{out}"
    );
    assert_eq!(run.stdout.matches("problem:").count(), 1, "{out}");
    // --offline reaches nothing.
    let offline = run_check(&s.path("fluxgate.toml"), &["--offline"], &[]);
    assert_eq!(offline.code, Some(0), "{}", offline.output());
    assert!(!offline.stdout.contains("signing key"));
}

/// Sends only the head of a POST that declares a large body, and returns the status line and
/// how long it took to come back; no body byte is ever sent.
async fn head_only(gw: &Gateway, path: &str, auth: &str) -> (String, Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tls = raw_tls(gw.port, &gw.setup.cert_pem).await;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Authorization: {auth}\r\nContent-Length: 1048576\r\n\r\n"
    );
    let started = Instant::now();
    tls.write_all(head.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(20), tls.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    let status = String::from_utf8_lossy(&got)
        .lines()
        .next()
        .unwrap_or("")
        .to_string();
    (status, started.elapsed())
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_tokens_are_refused_from_the_head_before_any_body_byte() {
    let google = Issuer::start(json!({"keys": [RsaKey::jwk(GOOGLE_KID)]})).await;
    let ci = EcKey::new("ci-1");
    let issuer = Issuer::start(json!({"keys": [ci.jwk.clone()]})).await;
    // A body that never comes would be waited for this long: a refusal before it is the
    // head phase's.
    let s = Setup::new()
        .server("body_timeout = \"60s\"")
        .section(LIMITS);
    let gcr = gcr_receiver(&s, &format!("{}/certs", google.url));
    let gw = s
        .receiver(&gcr)
        .receiver(&oidc_receiver(&issuer.url))
        .start();
    let gcr_path = hook("gcr-token", "gcr-receiver", "flux-system");
    let oidc_path = hook("", "ci-receiver", "flux-system");
    let expired = with(&google_claims(), "exp", json!(now() - 3600));
    let not_acme = with(&ci_claims(&issuer.url), "repository", json!("evil/app"));
    let wrong_audience = with(&ci_claims(&issuer.url), "aud", json!("someone-else"));
    let cases = [
        (
            "gcr, expired",
            &gcr_path,
            RsaKey::sign(GOOGLE_KID, &expired),
        ),
        (
            "gcr, wrong email",
            &gcr_path,
            RsaKey::sign(GOOGLE_KID, &with(&google_claims(), "email", json!("x@y"))),
        ),
        ("generic-oidc, validation", &oidc_path, ci.sign(&not_acme)),
        (
            "generic-oidc, audience",
            &oidc_path,
            ci.sign(&wrong_audience),
        ),
    ];
    for (what, path, token) in cases {
        let (status, took) = head_only(&gw, path, &format!("Bearer {token}")).await;
        assert_eq!(status, "HTTP/1.1 401 Unauthorized", "{what}: {}", gw.logs());
        assert!(
            took < Duration::from_secs(10),
            "{what}: answered after {took:?}"
        );
    }
    assert!(gw.relayed().is_empty());
}
