//! Verification, one receiver type per file, all behind [`Verifier`].
//!
//! Verification is split in two so the body never has to be held in memory: [`Verifier::begin`]
//! refuses what the request head alone shows is wrong, and returns the [`BodyCheck`] that the
//! body is streamed through as it arrives.

mod bitbucket;
mod generic;
mod generic_hmac;
mod github;
mod gitlab;
mod hub;
pub mod signature;

use crate::refusal::Refusal;
use crate::secret::Secret;
use http::HeaderMap;
use std::fmt;
use std::str::FromStr;

pub use signature::{Algorithm, HmacCheck, Keys};

/// Checks one kind of delivery, the way Flux's receiver of the same type does.
pub trait Verifier: Send + Sync + fmt::Debug {
    /// Checks the request head and says what the body still has to prove.
    fn begin(&self, head: &HeaderMap) -> Result<BodyCheck, Refusal>;

    /// The header that names the event, for types that filter on it.
    fn event_header(&self) -> Option<&'static str> {
        None
    }

    /// Headers that carry the provider's id of a delivery, in order of preference. Providers
    /// keep the id when they retry, so it identifies a replay.
    fn delivery_id_headers(&self) -> &'static [&'static str] {
        &[]
    }

    /// Whether a verified event is the provider's connectivity check, answered without a relay.
    fn is_ping(&self, _event: &str) -> bool {
        false
    }
}

/// What the body must prove once it has been read.
#[derive(Debug)]
pub enum BodyCheck {
    /// The head was enough (a token header, or the secret path alone).
    Nothing,
    /// An HMAC over the raw body.
    Hmac(HmacCheck),
}

impl BodyCheck {
    pub fn needs_body(&self) -> bool {
        matches!(self, BodyCheck::Hmac(_))
    }

    pub fn update(&mut self, chunk: &[u8]) {
        if let BodyCheck::Hmac(h) = self {
            h.update(chunk);
        }
    }

    pub fn finish(self) -> Result<(), Refusal> {
        match self {
            BodyCheck::Nothing => Ok(()),
            BodyCheck::Hmac(h) => h.finish(),
        }
    }
}

/// Flux receiver types that fluxgate verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReceiverType {
    Generic,
    GenericHmac,
    Github,
    Gitlab,
    Bitbucket,
}

impl ReceiverType {
    pub const ALL: [ReceiverType; 5] = [
        ReceiverType::Generic,
        ReceiverType::GenericHmac,
        ReceiverType::Github,
        ReceiverType::Gitlab,
        ReceiverType::Bitbucket,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ReceiverType::Generic => "generic",
            ReceiverType::GenericHmac => "generic-hmac",
            ReceiverType::Github => "github",
            ReceiverType::Gitlab => "gitlab",
            ReceiverType::Bitbucket => "bitbucket",
        }
    }

    /// Whether Flux filters this type's deliveries on `events`.
    pub fn uses_events(self) -> bool {
        matches!(
            self,
            ReceiverType::Github | ReceiverType::Gitlab | ReceiverType::Bitbucket
        )
    }

    /// Builds the verifier for this type with the receiver's secrets; any one of them verifies.
    pub fn verifier(self, secrets: &[Secret]) -> Box<dyn Verifier> {
        match self {
            ReceiverType::Generic => Box::new(generic::Generic),
            ReceiverType::GenericHmac => Box::new(generic_hmac::GenericHmac::new(secrets)),
            ReceiverType::Github => Box::new(github::Github::new(secrets)),
            ReceiverType::Gitlab => Box::new(gitlab::Gitlab::new(secrets)),
            ReceiverType::Bitbucket => Box::new(bitbucket::Bitbucket::new(secrets)),
        }
    }
}

impl FromStr for ReceiverType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        ReceiverType::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| {
                let known: Vec<_> = ReceiverType::ALL.iter().map(|t| t.as_str()).collect();
                format!(
                    "unknown receiver type {s:?}; supported types are {}",
                    known.join(", ")
                )
            })
    }
}

impl fmt::Display for ReceiverType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The one value of a header that must not be ambiguous: a second copy is refused rather than
/// guessing which one the sender meant.
fn single_header<'h>(head: &'h HeaderMap, name: &'static str) -> Result<Option<&'h [u8]>, Refusal> {
    let mut values = head.get_all(name).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(Refusal::unauthorized(format!(
            "more than one {name} header"
        )));
    }
    Ok(first.map(|v| v.as_bytes()))
}

#[cfg(test)]
pub(crate) mod test_support {
    use http::{HeaderMap, HeaderName, HeaderValue};

    pub fn head(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }
}
