//! Signing keys of token issuers: STUB, being written.
