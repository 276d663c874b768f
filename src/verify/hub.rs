//! The check shared by `github` and `bitbucket`: go-github's `ValidatePayload`.

use super::{BodyCheck, Keys};
use crate::refusal::{Cause, Refusal};
use http::HeaderMap;

const SHA256_HEADER: &str = "X-Hub-Signature-256";
const LEGACY_HEADER: &str = "X-Hub-Signature";

/// Content type first (JSON or form), then `X-Hub-Signature-256`, falling back to
/// `X-Hub-Signature` only when the former is absent or empty. Either header may carry any of
/// sha1, sha256 or sha512, exactly as go-github accepts them.
pub(super) fn begin(keys: &Keys, head: &HeaderMap) -> Result<BodyCheck, Refusal> {
    check_content_type(head)?;
    let has_256 = head
        .get(SHA256_HEADER)
        .is_some_and(|v| !v.as_bytes().is_empty());
    if has_256 {
        return Ok(BodyCheck::Hmac(keys.check_header(head, SHA256_HEADER)?));
    }
    match keys.check_header(head, LEGACY_HEADER) {
        Ok(c) => Ok(BodyCheck::Hmac(c)),
        Err(r) if r.reason.starts_with("missing") => Err(Refusal::unauthorized(
            "missing signature (X-Hub-Signature-256 or X-Hub-Signature)",
        )),
        Err(r) => Err(r),
    }
}

fn check_content_type(head: &HeaderMap) -> Result<(), Refusal> {
    let wrong = |what: &str| {
        Refusal::new(
            415,
            Cause::UnsupportedMediaType,
            format!("{what}: send application/json or application/x-www-form-urlencoded"),
        )
    };
    let Some(ct) = head.get(http::header::CONTENT_TYPE) else {
        return Err(wrong("missing Content-Type"));
    };
    let mime: mime::Mime = ct
        .to_str()
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| wrong("unparsable Content-Type"))?;
    match mime.essence_str() {
        "application/json" | "application/x-www-form-urlencoded" => Ok(()),
        _ => Err(wrong("unsupported Content-Type")),
    }
}
