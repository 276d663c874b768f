//! `harbor`: Harbor's "Auth Header". The whole `Authorization` value must equal the token,
//! with no scheme parsed, as in Flux; compared here in constant time.

use super::{check_token, BodyCheck, Verifier};
use crate::refusal::Refusal;
use crate::secret::Secret;
use http::HeaderMap;

const TOKEN_HEADER: &str = "Authorization";

#[derive(Debug)]
pub struct Harbor {
    secrets: Vec<Secret>,
}

impl Harbor {
    pub fn new(secrets: &[Secret]) -> Self {
        Harbor {
            secrets: secrets.to_vec(),
        }
    }
}

impl Verifier for Harbor {
    fn begin(&self, head: &HeaderMap) -> Result<BodyCheck, Refusal> {
        check_token(&self.secrets, head, TOKEN_HEADER)?;
        Ok(BodyCheck::Nothing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::test_support::head;

    #[test]
    fn the_whole_header_is_the_token() {
        let v = Harbor::new(&[
            Secret::new(b"s3cret".to_vec()),
            Secret::new(b"next".to_vec()),
        ]);
        assert!(v.begin(&head(&[("authorization", "s3cret")])).is_ok());
        assert!(v.begin(&head(&[("authorization", "next")])).is_ok());
        for wrong in ["Bearer s3cret", "s3cret ", "S3CRET", "s3cre"] {
            let r = v.begin(&head(&[("authorization", wrong)])).unwrap_err();
            assert_eq!(
                (r.status, r.reason.as_ref()),
                (401, "token mismatch (Authorization)"),
                "{wrong}"
            );
        }
        let r = v.begin(&head(&[])).unwrap_err();
        assert_eq!(r.reason, "missing token (Authorization)");
        let r = v
            .begin(&head(&[
                ("authorization", "s3cret"),
                ("authorization", "s3cret"),
            ]))
            .unwrap_err();
        assert_eq!(r.reason, "more than one Authorization header");
    }
}
