//! `generic-hmac`: `X-Signature: <sha1|sha256|sha512>=<hex>` over the raw body, any content type.

use super::{BodyCheck, Keys, Verifier};
use crate::refusal::Refusal;
use crate::secret::Secret;
use http::HeaderMap;

#[derive(Debug)]
pub struct GenericHmac {
    keys: Keys,
}

impl GenericHmac {
    pub fn new(secrets: &[Secret]) -> Self {
        GenericHmac {
            keys: Keys::new(secrets),
        }
    }
}

impl Verifier for GenericHmac {
    fn begin(&self, head: &HeaderMap) -> Result<BodyCheck, Refusal> {
        Ok(BodyCheck::Hmac(
            self.keys.check_header(head, "X-Signature")?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::signature::{sign, Algorithm};
    use crate::verify::test_support::head;

    #[test]
    fn every_algorithm_and_no_content_type_rule() {
        let v = GenericHmac::new(&[Secret::new(b"k".to_vec())]);
        for alg in [Algorithm::Sha1, Algorithm::Sha256, Algorithm::Sha512] {
            let sig = format!("{}={}", alg.as_str(), sign(alg, b"k", b"body"));
            let mut c = v.begin(&head(&[("x-signature", &sig)])).unwrap();
            c.update(b"body");
            c.finish().unwrap();
        }
        let r = v.begin(&head(&[])).unwrap_err();
        assert_eq!(
            (r.status, r.reason.as_ref()),
            (401, "missing signature (X-Signature)")
        );
    }
}
