//! `cdevents`: STUB, being written.

use super::{BodyCheck, Verifier};
use crate::refusal::{Cause, Refusal};
use http::HeaderMap;

#[derive(Debug)]
pub struct Cdevents;

impl Verifier for Cdevents {
    fn begin(&self, _head: &HeaderMap) -> Result<BodyCheck, Refusal> {
        Err(Refusal::new(
            500,
            Cause::MalformedRequest,
            "not implemented",
        ))
    }
}
