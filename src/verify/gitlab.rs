//! `gitlab`: the secret itself in `X-Gitlab-Token`. Flux compares it with `!=`; here it is
//! compared in constant time.

use super::{check_token, BodyCheck, Verifier};
use crate::refusal::Refusal;
use crate::secret::Secret;
use http::HeaderMap;

const TOKEN_HEADER: &str = "X-Gitlab-Token";

#[derive(Debug)]
pub struct Gitlab {
    secrets: Vec<Secret>,
}

impl Gitlab {
    pub fn new(secrets: &[Secret]) -> Self {
        Gitlab {
            secrets: secrets.to_vec(),
        }
    }
}

impl Verifier for Gitlab {
    fn begin(&self, head: &HeaderMap) -> Result<BodyCheck, Refusal> {
        check_token(&self.secrets, head, TOKEN_HEADER)?;
        Ok(BodyCheck::Nothing)
    }

    fn delivery_id_headers(&self) -> &'static [&'static str] {
        &["Idempotency-Key", "X-Gitlab-Event-UUID"]
    }

    fn event_header(&self) -> Option<&'static str> {
        Some("X-Gitlab-Event")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::test_support::head;

    #[test]
    fn token_must_match_one_secret() {
        let v = Gitlab::new(&[Secret::new(b"one".to_vec()), Secret::new(b"two".to_vec())]);
        assert!(v.begin(&head(&[("x-gitlab-token", "one")])).is_ok());
        assert!(v.begin(&head(&[("x-gitlab-token", "two")])).is_ok());
        let r = v.begin(&head(&[("x-gitlab-token", "three")])).unwrap_err();
        assert_eq!(
            (r.status, r.reason.as_ref()),
            (401, "token mismatch (X-Gitlab-Token)")
        );
        let r = v.begin(&head(&[])).unwrap_err();
        assert_eq!(r.reason, "missing token (X-Gitlab-Token)");
    }
}
