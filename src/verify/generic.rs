//! `generic`: the secret path is the only credential, as in Flux.

use super::{BodyCheck, Verifier};
use crate::refusal::Refusal;
use http::HeaderMap;

#[derive(Debug)]
pub struct Generic;

impl Verifier for Generic {
    fn begin(&self, _head: &HeaderMap) -> Result<BodyCheck, Refusal> {
        Ok(BodyCheck::Nothing)
    }
}
