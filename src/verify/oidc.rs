//! `oidc`: STUB, being written.

use super::{BodyCheck, OptionError, TypeOptions, Verifier};
use crate::refusal::{Cause, Refusal};
use http::HeaderMap;

#[derive(Debug)]
pub struct GenericOidc;

impl GenericOidc {
    pub fn new(_options: &TypeOptions) -> Result<Self, Vec<OptionError>> {
        Ok(GenericOidc)
    }
}

impl Verifier for GenericOidc {
    fn begin(&self, _head: &HeaderMap) -> Result<BodyCheck, Refusal> {
        Err(Refusal::new(
            500,
            Cause::MalformedRequest,
            "not implemented",
        ))
    }
}

/// One entry of `oidc_providers`, as Flux's `OIDCProvider`.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSpec {}
