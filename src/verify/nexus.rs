//! `nexus`: STUB, being written.

use super::{BodyCheck, Verifier};
use crate::refusal::{Cause, Refusal};
use crate::secret::Secret;
use http::HeaderMap;

#[derive(Debug)]
pub struct Nexus;

impl Nexus {
    pub fn new(_secrets: &[Secret]) -> Self {
        Nexus
    }
}

impl Verifier for Nexus {
    fn begin(&self, _head: &HeaderMap) -> Result<BodyCheck, Refusal> {
        Err(Refusal::new(
            500,
            Cause::MalformedRequest,
            "not implemented",
        ))
    }
}
