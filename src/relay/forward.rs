//! Forward mode: STUB, being written.

/// `forward = { ... }` on a receiver.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardSpec {}
