//! `github`: HMAC of the raw body in `X-Hub-Signature-256` (or the legacy `X-Hub-Signature`).

use super::{hub, BodyCheck, Keys, Verifier};
use crate::refusal::Refusal;
use crate::secret::Secret;
use http::HeaderMap;

#[derive(Debug)]
pub struct Github {
    keys: Keys,
}

impl Github {
    pub fn new(secrets: &[Secret]) -> Self {
        Github {
            keys: Keys::new(secrets),
        }
    }
}

impl Verifier for Github {
    fn begin(&self, head: &HeaderMap) -> Result<BodyCheck, Refusal> {
        hub::begin(&self.keys, head)
    }

    fn delivery_id_headers(&self) -> &'static [&'static str] {
        &["X-GitHub-Delivery"]
    }

    fn event_header(&self) -> Option<&'static str> {
        Some("X-GitHub-Event")
    }

    /// GitHub sends `ping` once when a webhook is created; answering it without a reconcile
    /// keeps the webhook's first delivery green whatever events the receiver relays.
    fn is_ping(&self, event: &str) -> bool {
        event.eq_ignore_ascii_case("ping")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::test_support::head;

    const SECRET: &str = "It's a Secret to Everybody";
    const SIG256: &str = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
    const SIG1: &str = "sha1=01dc10d0c83e72ed246219cdd91669667fe2ca59";

    fn verify(pairs: &[(&str, &str)]) -> Result<(), Refusal> {
        let v = Github::new(&[Secret::new(SECRET.into())]);
        let mut c = v.begin(&head(pairs))?;
        c.update(b"Hello, World!");
        c.finish()
    }

    #[test]
    fn official_vector_and_legacy_header() {
        let json = ("content-type", "application/json");
        verify(&[json, ("x-hub-signature-256", SIG256)]).unwrap();
        verify(&[json, ("x-hub-signature", SIG1)]).unwrap();
        // The -256 header wins when present, even if the legacy one is right.
        let wrong = format!("sha256={}", "1".repeat(64));
        assert_eq!(
            verify(&[
                json,
                ("x-hub-signature-256", &wrong),
                ("x-hub-signature", SIG1)
            ])
            .unwrap_err()
            .status,
            401
        );
        // An empty -256 header falls back to the legacy one, as go-github does.
        verify(&[json, ("x-hub-signature-256", ""), ("x-hub-signature", SIG1)]).unwrap();
        verify(&[
            ("content-type", "application/x-www-form-urlencoded"),
            ("x-hub-signature-256", SIG256),
        ])
        .unwrap();
        verify(&[
            ("content-type", "application/json; charset=utf-8"),
            ("x-hub-signature-256", SIG256),
        ])
        .unwrap();
    }

    #[test]
    fn refusals() {
        let json = ("content-type", "application/json");
        let r = verify(&[json]).unwrap_err();
        assert_eq!(
            (r.status, r.reason.as_ref()),
            (
                401,
                "missing signature (X-Hub-Signature-256 or X-Hub-Signature)"
            )
        );
        let r = verify(&[("x-hub-signature-256", SIG256)]).unwrap_err();
        assert_eq!(r.status, 415);
        let r = verify(&[
            ("content-type", "text/plain"),
            ("x-hub-signature-256", SIG256),
        ])
        .unwrap_err();
        assert_eq!(r.status, 415);
        let r = verify(&[
            json,
            ("x-hub-signature-256", SIG256),
            ("x-hub-signature-256", SIG256),
        ])
        .unwrap_err();
        assert_eq!(r.reason, "more than one X-Hub-Signature-256 header");
    }
}
