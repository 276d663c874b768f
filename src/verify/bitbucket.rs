//! `bitbucket`: the same HMAC rules as GitHub (Bitbucket Server/DC and Cloud send
//! `X-Hub-Signature: sha256=…`), with the event in `X-Event-Key`.

use super::{hub, BodyCheck, Keys, Verifier};
use crate::refusal::Refusal;
use crate::secret::Secret;
use http::HeaderMap;

#[derive(Debug)]
pub struct Bitbucket {
    keys: Keys,
}

impl Bitbucket {
    pub fn new(secrets: &[Secret]) -> Self {
        Bitbucket {
            keys: Keys::new(secrets),
        }
    }
}

impl Verifier for Bitbucket {
    fn begin(&self, head: &HeaderMap) -> Result<BodyCheck, Refusal> {
        hub::begin(&self.keys, head)
    }

    fn delivery_id_headers(&self) -> &'static [&'static str] {
        &["X-Request-UUID", "X-Request-Id"]
    }

    fn event_header(&self) -> Option<&'static str> {
        Some("X-Event-Key")
    }
}
