//! `quay`: STUB, being written.

use super::{BodyCheck, Verifier};
use crate::refusal::{Cause, Refusal};
use http::HeaderMap;

#[derive(Debug)]
pub struct Quay;

impl Verifier for Quay {
    fn begin(&self, _head: &HeaderMap) -> Result<BodyCheck, Refusal> {
        Err(Refusal::new(
            500,
            Cause::MalformedRequest,
            "not implemented",
        ))
    }
}
