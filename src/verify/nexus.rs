//! `nexus`: `X-Nexus-Webhook-Signature` is the bare lower-case hex HMAC-SHA1 of the raw body,
//! keyed with the token; the body must then decode into `{action, repositoryName}`.
//!
//! Flux compares the header with the hex it computes as strings, so upper-case hex or a
//! `sha1=` prefix never matches; here they are refused as malformed, with 401 like every bad
//! signature (Flux answers 400).

use super::payload::{self, Shape};
use super::{BodyCheck, Evidence, Keys, Verifier};
use crate::refusal::Refusal;
use crate::secret::Secret;
use crate::verify::Algorithm;
use async_trait::async_trait;
use http::HeaderMap;

const SIGNATURE_HEADER: &str = "X-Nexus-Webhook-Signature";

const PAYLOAD: Shape = Shape::Object(&[("action", Shape::Str), ("repositoryName", Shape::Str)]);

#[derive(Debug)]
pub struct Nexus {
    keys: Keys,
}

impl Nexus {
    pub fn new(secrets: &[Secret]) -> Self {
        Nexus {
            keys: Keys::new(secrets),
        }
    }
}

#[async_trait]
impl Verifier for Nexus {
    fn begin(&self, head: &HeaderMap) -> Result<BodyCheck, Refusal> {
        Ok(BodyCheck::Hmac(self.keys.check_bare_header(
            head,
            SIGNATURE_HEADER,
            Algorithm::Sha1,
        )?))
    }

    fn completes(&self) -> bool {
        true
    }

    async fn complete(&self, _head: &HeaderMap, body: &[u8]) -> Result<Evidence, Refusal> {
        payload::check("nexus", &PAYLOAD, body)?;
        Ok(Evidence::default())
    }

    /// Nexus sends a fresh UUID per event here.
    fn delivery_id_headers(&self) -> &'static [&'static str] {
        &["X-Nexus-Webhook-Delivery"]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::refusal::Cause;
    use crate::verify::signature::sign;
    use crate::verify::test_support::head;

    const SECRET: &[u8] = b"It's a Secret to Everybody";

    fn fixture(name: &str) -> Vec<u8> {
        crate::verify::payload::testing::fixture("nexus", name)
    }

    /// Runs the whole check as the hook does: head, streamed body, then the payload.
    async fn verify(v: &Nexus, signature: Option<&str>, body: &[u8]) -> Result<(), Refusal> {
        let pairs: Vec<_> = signature
            .map(|s| ("x-nexus-webhook-signature", s))
            .into_iter()
            .collect();
        let h = head(&pairs);
        let mut c = v.begin(&h)?;
        for piece in body.chunks(7) {
            c.update(piece);
        }
        c.finish()?;
        v.complete(&h, body).await.map(drop)
    }

    fn nexus() -> Nexus {
        Nexus::new(&[Secret::new(SECRET.to_vec())])
    }

    #[tokio::test]
    async fn documented_events_with_the_derived_vector() {
        // The flux-receiver.md vector: HMAC-SHA1 of "Hello, World!" under the GitHub secret.
        // It is not JSON, so it passes the signature and fails the payload.
        let r = verify(
            &nexus(),
            Some("01dc10d0c83e72ed246219cdd91669667fe2ca59"),
            b"Hello, World!",
        )
        .await
        .unwrap_err();
        assert_eq!((r.status, r.cause), (400, Cause::MalformedRequest));
        for name in ["component-created.json", "asset-updated.json"] {
            let body = fixture(name);
            let sig = sign(Algorithm::Sha1, SECRET, &body);
            verify(&nexus(), Some(&sig), &body)
                .await
                .unwrap_or_else(|r| panic!("{name}: {r}"));
        }
    }

    #[tokio::test]
    async fn any_of_the_secrets_signs() {
        let v = Nexus::new(&[Secret::new(b"old".to_vec()), Secret::new(b"new".to_vec())]);
        let body = fixture("component-created.json");
        for key in [&b"old"[..], b"new"] {
            verify(&v, Some(&sign(Algorithm::Sha1, key, &body)), &body)
                .await
                .unwrap();
        }
    }

    #[tokio::test]
    async fn bad_signatures_are_refused_with_401() {
        let body = fixture("component-created.json");
        let good = sign(Algorithm::Sha1, SECRET, &body);
        let malformed = "malformed signature in X-Nexus-Webhook-Signature: expected 40 lower-case hex digits of an HMAC-SHA1, with no prefix";
        let cases = [
            (None, "missing signature (X-Nexus-Webhook-Signature)"),
            (
                Some(String::new()),
                "missing signature (X-Nexus-Webhook-Signature)",
            ),
            (Some(good.to_uppercase()), malformed),
            (Some(format!("sha1={good}")), malformed),
            (Some(sign(Algorithm::Sha256, SECRET, &body)), malformed),
            (
                Some(sign(Algorithm::Sha1, b"wrong", &body)),
                "signature mismatch (X-Nexus-Webhook-Signature, sha1)",
            ),
        ];
        for (sig, reason) in cases {
            let r = verify(&nexus(), sig.as_deref(), &body).await.unwrap_err();
            assert_eq!((r.status, r.reason.as_ref()), (401, reason), "{sig:?}");
            assert!(!r.reason.contains(&good));
        }
        // A body changed after signing.
        let mut changed = body.clone();
        changed[0] = b' ';
        let r = verify(&nexus(), Some(&good), &changed).await.unwrap_err();
        assert_eq!(r.status, 401);

        let twice = head(&[
            ("x-nexus-webhook-signature", &good),
            ("x-nexus-webhook-signature", &good),
        ]);
        let r = nexus().begin(&twice).unwrap_err();
        assert_eq!(
            (r.status, r.reason.as_ref()),
            (401, "more than one X-Nexus-Webhook-Signature header")
        );
    }

    #[tokio::test]
    async fn a_signed_body_must_still_be_the_payload() {
        let cases: [(&[u8], &str); 4] = [
            (b"", "nexus payload is empty: expected a JSON object"),
            (
                b"action=CREATED",
                "nexus payload is not JSON: expected value at line 1 column 1",
            ),
            (
                br#"{"action": "CREATED", "repositoryName": ["maven-releases"]}"#,
                "nexus payload: repositoryName must be a string, not an array at line 1 column 41",
            ),
            (
                br#"{"action": "CREATED"} {}"#,
                "nexus payload has data after its JSON value (line 1, column 23)",
            ),
        ];
        for (body, reason) in cases {
            let sig = sign(Algorithm::Sha1, SECRET, body);
            let r = verify(&nexus(), Some(&sig), body).await.unwrap_err();
            assert_eq!(
                (r.status, r.cause, r.reason.as_ref()),
                (400, Cause::MalformedRequest, reason)
            );
        }
        // Any object passes, as in Flux: the struct's fields are all it looks at.
        let body = br#"{"audit": {"domain": "security.user"}}"#;
        verify(&nexus(), Some(&sign(Algorithm::Sha1, SECRET, body)), body)
            .await
            .unwrap();
    }
}
