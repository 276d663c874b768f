//! `gcr`: a Pub/Sub authenticated push of Artifact Registry (formerly Container Registry)
//! notifications. The request carries a Google-signed OIDC ID token in `Authorization: Bearer`;
//! it is checked as Flux v1.9 checks it (Google's idtoken validator, then issuer, email and
//! email_verified), then the push envelope is unwrapped and its inner message is what the
//! filters see as `req`.

use super::jwks::{bearer, Expect, KeySet, Source};
use super::{BodyCheck, Evidence, OptionError, TypeOptions, Verifier};
use crate::refusal::{Cause, Refusal};
use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use http::HeaderMap;
use jsonwebtoken::Algorithm;
use serde::Deserialize;
use serde_json::Value;
use std::sync::Arc;

/// Where Google publishes the keys its service-account ID tokens are signed with.
pub const GOOGLE_CERTS: &str = "https://www.googleapis.com/oauth2/v3/certs";

/// The issuers Flux accepts: Google writes either.
const GOOGLE_ISSUERS: &[&str] = &["accounts.google.com", "https://accounts.google.com"];

/// What Google's idtoken validator verifies; Pub/Sub signs with RS256.
const GOOGLE_ALGORITHMS: &[Algorithm] = &[Algorithm::RS256, Algorithm::ES256];

#[derive(Debug)]
pub struct Gcr {
    email: String,
    audience: String,
    keys: Arc<KeySet>,
}

impl Gcr {
    pub fn new(options: &TypeOptions) -> Result<Self, Vec<OptionError>> {
        let mut problems = Vec::new();
        let mut required = |key: &str, value: &Option<String>, what: &str| match value {
            Some(v) if !v.is_empty() => v.clone(),
            _ => {
                problems.push((
                    key.to_string(),
                    format!("missing; {what} (Flux v1.9+ requires it in the receiver's Secret)"),
                ));
                String::new()
            }
        };
        let email = required(
            "email",
            &options.email,
            "the email of the service account the Pub/Sub push subscription authenticates as",
        );
        let audience = required(
            "audience",
            &options.audience,
            "the audience the Pub/Sub push subscription puts in its tokens",
        );
        let source = Source::parse(options.jwks.as_deref().unwrap_or(GOOGLE_CERTS))
            .map_err(|e| problems.push(("jwks".to_string(), e)));
        match source {
            Ok(source) if problems.is_empty() => Ok(Gcr {
                email,
                audience,
                keys: KeySet::shared(source),
            }),
            _ => Err(problems),
        }
    }
}

#[async_trait]
impl Verifier for Gcr {
    /// A request without a bearer token is refused before its body is read.
    fn begin(&self, head: &HeaderMap) -> Result<BodyCheck, Refusal> {
        bearer(head, false)?;
        Ok(BodyCheck::Nothing)
    }

    fn authenticates(&self) -> bool {
        true
    }

    /// Flux's checks of the token, before the body is read: Google's validator, then issuer,
    /// email and email_verified.
    async fn authenticate(&self, head: &HeaderMap) -> Result<Evidence, Refusal> {
        let token = bearer(head, false)?;
        let expect = Expect {
            issuers: GOOGLE_ISSUERS,
            audience: &self.audience,
            algorithms: GOOGLE_ALGORITHMS,
            nbf_leeway: None,
        };
        let claims = self.keys.verify(token, &expect).await?;
        // Google's validator reads `aud` as one string; a list of audiences fails there.
        if !claims.get("aud").is_some_and(Value::is_string) {
            return Err(Refusal::unauthorized("wrong token audience"));
        }
        // Neither the expected email nor the token's is quoted: the email is a key of the
        // receiver's Secret in Flux.
        if claims.get("email").and_then(Value::as_str) != Some(self.email.as_str()) {
            return Err(Refusal::unauthorized("token email does not match"));
        }
        if claims.get("email_verified") != Some(&Value::Bool(true)) {
            return Err(Refusal::unauthorized("token email is not verified"));
        }
        Ok(Evidence::default())
    }

    fn completes(&self) -> bool {
        true
    }

    async fn complete(&self, _head: &HeaderMap, body: &[u8]) -> Result<Evidence, Refusal> {
        let (req, message_id) = unwrap_push(body)?;
        Ok(Evidence {
            req: Some(req),
            claims: None,
            delivery_id: message_id,
        })
    }

    fn key_sets(&self) -> Vec<&KeySet> {
        vec![&self.keys]
    }
}

/// The Pub/Sub push envelope, with the fields (and the field types) Flux decodes.
#[derive(Deserialize)]
struct Envelope {
    #[serde(default)]
    message: Option<Message>,
}

#[derive(Deserialize)]
struct Message {
    #[serde(default)]
    data: Option<String>,
    /// Kept by Pub/Sub when it redelivers, so it identifies a replay.
    #[serde(default, rename = "messageId")]
    message_id: Option<String>,
    #[serde(default, rename = "publishTime")]
    _publish_time: Option<String>,
    #[serde(default, rename = "subscription")]
    _subscription: Option<String>,
}

/// The registry's notification inside `message.data`.
#[derive(Deserialize)]
struct Push {
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    digest: Option<String>,
    #[serde(default)]
    tag: Option<String>,
}

/// The inner `{action, digest, tag}` of a push, re-encoded as Flux does: always these three
/// keys, an absent one empty, anything else dropped; and the message's id.
fn unwrap_push(body: &[u8]) -> Result<(Value, Option<String>), Refusal> {
    let bad = |why: String| Refusal::bad_request(Cause::MalformedRequest, why);
    let envelope: Option<Envelope> = serde_json::from_slice(body).map_err(|e| {
        bad(format!(
            "body is not a Pub/Sub push message: {} at line {} column {}",
            category(&e),
            e.line(),
            e.column()
        ))
    })?;
    let message = envelope.and_then(|e| e.message);
    let message_id = message
        .as_ref()
        .and_then(|m| m.message_id.clone())
        .filter(|id| !id.is_empty());
    let data = message.and_then(|m| m.data).unwrap_or_default();
    if data.is_empty() {
        return Err(bad("message.data is missing or empty".into()));
    }
    // Flux ignores a base64 error and then fails to decode what came before it as JSON, which
    // refuses the push all the same.
    let raw = STANDARD
        .decode(data.as_bytes())
        .map_err(|_| bad("message.data is not base64".into()))?;
    let push: Option<Push> = serde_json::from_slice(&raw).map_err(|e| {
        bad(format!(
            "message.data is not a JSON {{action, digest, tag}} object: {} at line {} column {}",
            category(&e),
            e.line(),
            e.column()
        ))
    })?;
    let push = push.unwrap_or(Push {
        action: None,
        digest: None,
        tag: None,
    });
    let req = serde_json::json!({
        "action": push.action.unwrap_or_default(),
        "digest": push.digest.unwrap_or_default(),
        "tag": push.tag.unwrap_or_default(),
    });
    Ok((req, message_id))
}

/// What kind of JSON error, without serde's message, which may quote the input.
fn category(e: &serde_json::Error) -> &'static str {
    match e.classify() {
        serde_json::error::Category::Syntax => "not JSON",
        serde_json::error::Category::Eof => "truncated JSON",
        serde_json::error::Category::Data => "unexpected JSON shape",
        serde_json::error::Category::Io => "unreadable",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::jwks::test_support::{jwks, now, TestKey};
    use crate::verify::test_support::head;
    use serde_json::json;

    fn push(inner: &str) -> Vec<u8> {
        json!({"message": {"data": STANDARD.encode(inner), "messageId": "1",
                           "publishTime": "2026-01-02T03:04:05.678Z"},
               "subscription": "projects/p/subscriptions/s"})
        .to_string()
        .into_bytes()
    }

    #[test]
    fn the_envelope_is_unwrapped_as_flux_does() {
        let (got, id) = unwrap_push(&push(
            r#"{"action":"INSERT","digest":"gcr.io/p/app@sha256:ab","tag":"gcr.io/p/app:1.0","extra":1}"#,
        ))
        .unwrap();
        assert_eq!(
            got,
            json!({"action": "INSERT", "digest": "gcr.io/p/app@sha256:ab", "tag": "gcr.io/p/app:1.0"})
        );
        assert_eq!(
            id.as_deref(),
            Some("1"),
            "the messageId identifies redeliveries"
        );
        assert_eq!(
            unwrap_push(&push(r#"{"action":"DELETE"}"#)).unwrap().0,
            json!({"action": "DELETE", "digest": "", "tag": ""})
        );
        assert_eq!(
            unwrap_push(&push("null")).unwrap().0,
            json!({"action": "", "digest": "", "tag": ""})
        );
        for (body, why) in [
            (
                b"not json".to_vec(),
                "body is not a Pub/Sub push message: not JSON",
            ),
            (
                b"[1]".to_vec(),
                "body is not a Pub/Sub push message: unexpected JSON shape",
            ),
            (
                br#"{"message": {"data": 5}}"#.to_vec(),
                "body is not a Pub/Sub push message: unexpected JSON shape",
            ),
            (b"{}".to_vec(), "message.data is missing or empty"),
            (
                br#"{"message": {"data": ""}}"#.to_vec(),
                "message.data is missing or empty",
            ),
            (
                br#"{"message": {"data": "%%%"}}"#.to_vec(),
                "message.data is not base64",
            ),
            (
                push("not json"),
                "message.data is not a JSON {action, digest, tag} object: not JSON",
            ),
            (
                push(r#"{"tag": 5}"#),
                "message.data is not a JSON {action, digest, tag} object: unexpected JSON shape",
            ),
        ] {
            let r = unwrap_push(&body).unwrap_err();
            assert_eq!(r.status, 400);
            assert!(
                r.reason.starts_with(why),
                "{} -> {}",
                String::from_utf8_lossy(&body),
                r.reason
            );
        }
    }

    #[test]
    fn email_and_audience_are_required() {
        let err = Gcr::new(&TypeOptions::default()).unwrap_err();
        let keys: Vec<_> = err.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["email", "audience"]);
        let err = Gcr::new(&TypeOptions {
            email: Some("pubsub@p.iam.gserviceaccount.com".into()),
            audience: Some(String::new()),
            jwks: Some("gopher://x".into()),
            ..TypeOptions::default()
        })
        .unwrap_err();
        let keys: Vec<_> = err.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["audience", "jwks"]);
    }

    #[tokio::test]
    async fn audience_and_email_checks() {
        let k = TestKey::new("g1");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("certs.json");
        std::fs::write(&file, jwks(&[&k])).unwrap();
        let v = Gcr::new(&TypeOptions {
            email: Some("sa@p.iam.gserviceaccount.com".into()),
            audience: Some("https://hooks.example.com/hook/x".into()),
            jwks: Some(file.display().to_string()),
            ..TypeOptions::default()
        })
        .unwrap();
        let claims = |email: Value, verified: Value| {
            json!({"iss": "https://accounts.google.com", "aud": "https://hooks.example.com/hook/x",
                   "exp": now() + 300, "email": email, "email_verified": verified})
        };
        let run = |c: Value| {
            let auth = format!("Bearer {}", k.sign(&c));
            let v = &v;
            async move {
                v.authenticate(&head(&[("authorization", &auth)]))
                    .await
                    .map_err(|r| r.reason.to_string())
            }
        };
        assert!(
            run(claims(json!("sa@p.iam.gserviceaccount.com"), json!(true)))
                .await
                .is_ok()
        );
        let mut c = claims(json!("sa@p.iam.gserviceaccount.com"), json!(true));
        c["iss"] = json!("accounts.google.com");
        assert!(
            run(c).await.is_ok(),
            "the issuer without a scheme, as Google writes it"
        );
        let mut c = claims(json!("sa@p.iam.gserviceaccount.com"), json!(true));
        c["aud"] = json!(["https://hooks.example.com/hook/x", "other"]);
        assert_eq!(run(c).await.unwrap_err(), "wrong token audience");
        assert_eq!(
            run(claims(
                json!("other@p.iam.gserviceaccount.com"),
                json!(true)
            ))
            .await
            .unwrap_err(),
            "token email does not match"
        );
        assert_eq!(
            run(claims(Value::Null, json!(true))).await.unwrap_err(),
            "token email does not match"
        );
        assert_eq!(
            run(claims(json!("sa@p.iam.gserviceaccount.com"), json!("true")))
                .await
                .unwrap_err(),
            "token email is not verified"
        );
        assert_eq!(
            run(claims(json!("sa@p.iam.gserviceaccount.com"), json!(false)))
                .await
                .unwrap_err(),
            "token email is not verified"
        );
    }
}
