//! `gcr`: STUB, being written.

use super::{BodyCheck, OptionError, TypeOptions, Verifier};
use crate::refusal::{Cause, Refusal};
use http::HeaderMap;

#[derive(Debug)]
pub struct Gcr;

impl Gcr {
    pub fn new(_options: &TypeOptions) -> Result<Self, Vec<OptionError>> {
        Ok(Gcr)
    }
}

impl Verifier for Gcr {
    fn begin(&self, _head: &HeaderMap) -> Result<BodyCheck, Refusal> {
        Err(Refusal::new(
            500,
            Cause::MalformedRequest,
            "not implemented",
        ))
    }
}
