//! Verification, one receiver type per file, all behind [`Verifier`].
//!
//! Verification is split so that no body is read, let alone held, before the sender has shown
//! what the head can show: [`Verifier::begin`] refuses what the request head alone shows is
//! wrong, [`Verifier::authenticate`] checks a token against its issuer's keys (which may take
//! the network), both before any body byte is read; then the body streams through the
//! [`BodyCheck`] as it arrives. Types that must see the whole body (a JSON shape) finish in
//! [`Verifier::complete`].

mod acr;
mod bitbucket;
mod cdevents;
mod dockerhub;
pub mod gcr;
mod generic;
mod generic_hmac;
mod github;
mod gitlab;
mod harbor;
mod hub;
pub mod jwks;
mod nexus;
pub mod oidc;
mod payload;
mod quay;
pub mod signature;

use crate::refusal::Refusal;
use crate::secret::Secret;
use async_trait::async_trait;
use http::HeaderMap;
use std::fmt;
use std::str::FromStr;

pub use signature::{Algorithm, HmacCheck, Keys};

/// What verification learnt that the filters may use.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Evidence {
    /// What CEL sees as `req` in place of the body (gcr: the unwrapped Pub/Sub message).
    pub req: Option<serde_json::Value>,
    /// The verified token's claims (generic-oidc), CEL's `claims`.
    pub claims: Option<serde_json::Value>,
    /// The provider's id of the delivery when it is in the body rather than a header (gcr:
    /// the Pub/Sub `messageId`), for replay protection.
    pub delivery_id: Option<String>,
}

impl Evidence {
    /// What the head phase learnt, with what the body added on top.
    pub fn and(self, later: Evidence) -> Evidence {
        Evidence {
            req: later.req.or(self.req),
            claims: later.claims.or(self.claims),
            delivery_id: later.delivery_id.or(self.delivery_id),
        }
    }
}

/// Checks one kind of delivery, the way Flux's receiver of the same type does.
#[async_trait]
pub trait Verifier: Send + Sync + fmt::Debug {
    /// Checks the request head and says what the body still has to prove.
    fn begin(&self, head: &HeaderMap) -> Result<BodyCheck, Refusal>;

    /// Whether [`Verifier::authenticate`] has work to do.
    fn authenticates(&self) -> bool {
        false
    }

    /// The checks of the head that reach the network (a bearer token's signature, expiry,
    /// issuer, audience and claims), after `begin` and before any body byte is read: a sender
    /// without a valid credential never gets a body read, let alone held.
    async fn authenticate(&self, _head: &HeaderMap) -> Result<Evidence, Refusal> {
        Ok(Evidence::default())
    }

    /// Whether [`Verifier::complete`] has work to do.
    fn completes(&self) -> bool {
        false
    }

    /// Whether `complete` reads the body, which must then be kept for it.
    fn reads_body(&self) -> bool {
        self.completes()
    }

    /// The checks that need the whole body, after `authenticate` and the HMAC passed.
    async fn complete(&self, _head: &HeaderMap, _body: &[u8]) -> Result<Evidence, Refusal> {
        Ok(Evidence::default())
    }

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

    /// The token issuers' key sets this type verifies with, for `fluxgate check` to reach.
    fn key_sets(&self) -> Vec<&jwks::KeySet> {
        Vec::new()
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
    GenericOidc,
    Github,
    Gitlab,
    Bitbucket,
    Harbor,
    Dockerhub,
    Quay,
    Gcr,
    Nexus,
    Acr,
    Cdevents,
}

/// What some types need besides the secrets, from the receiver's configuration.
#[derive(Debug, Default)]
pub struct TypeOptions {
    /// gcr: the keys of the Flux Secret besides `token`.
    pub email: Option<String>,
    pub audience: Option<String>,
    /// gcr: where Google's signing keys are read from (a URL or a file).
    pub jwks: Option<String>,
    /// generic-oidc: the issuers it trusts.
    pub oidc_providers: Vec<oidc::ProviderSpec>,
}

/// A problem with one key of a type's options: the key under the receiver, and the reason.
pub type OptionError = (String, String);

impl ReceiverType {
    /// In the order of Flux's enum.
    pub const ALL: [ReceiverType; 13] = [
        ReceiverType::Generic,
        ReceiverType::GenericHmac,
        ReceiverType::GenericOidc,
        ReceiverType::Github,
        ReceiverType::Gitlab,
        ReceiverType::Bitbucket,
        ReceiverType::Harbor,
        ReceiverType::Dockerhub,
        ReceiverType::Quay,
        ReceiverType::Gcr,
        ReceiverType::Nexus,
        ReceiverType::Acr,
        ReceiverType::Cdevents,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ReceiverType::Generic => "generic",
            ReceiverType::GenericHmac => "generic-hmac",
            ReceiverType::GenericOidc => "generic-oidc",
            ReceiverType::Github => "github",
            ReceiverType::Gitlab => "gitlab",
            ReceiverType::Bitbucket => "bitbucket",
            ReceiverType::Harbor => "harbor",
            ReceiverType::Dockerhub => "dockerhub",
            ReceiverType::Quay => "quay",
            ReceiverType::Gcr => "gcr",
            ReceiverType::Nexus => "nexus",
            ReceiverType::Acr => "acr",
            ReceiverType::Cdevents => "cdevents",
        }
    }

    /// Whether Flux filters this type's deliveries on `events`.
    pub fn uses_events(self) -> bool {
        matches!(
            self,
            ReceiverType::Github
                | ReceiverType::Gitlab
                | ReceiverType::Bitbucket
                | ReceiverType::Cdevents
        )
    }

    /// Whether the hook path is the type's whole credential (Flux's "path only" types): such a
    /// path is a secret, shown elided wherever fluxgate prints it (see `hook_path::elide`).
    pub fn path_is_credential(self) -> bool {
        matches!(
            self,
            ReceiverType::Generic
                | ReceiverType::Dockerhub
                | ReceiverType::Quay
                | ReceiverType::Acr
                | ReceiverType::Cdevents
        )
    }

    /// Whether the type authenticates with a secret token (all but generic-oidc, where Flux
    /// forbids a secretRef).
    pub fn uses_secret(self) -> bool {
        self != ReceiverType::GenericOidc
    }

    /// Whether the credential travels in `Authorization` (which no proxy in front of Flux can
    /// pass through the API server).
    pub fn authenticates_with_authorization(self) -> bool {
        matches!(
            self,
            ReceiverType::Harbor | ReceiverType::Gcr | ReceiverType::GenericOidc
        )
    }

    /// Builds the verifier for this type with the receiver's secrets; any one of them verifies.
    pub fn verifier(
        self,
        secrets: &[Secret],
        options: &TypeOptions,
    ) -> Result<Box<dyn Verifier>, Vec<OptionError>> {
        Ok(match self {
            ReceiverType::Generic => Box::new(generic::Generic),
            ReceiverType::GenericHmac => Box::new(generic_hmac::GenericHmac::new(secrets)),
            ReceiverType::GenericOidc => Box::new(oidc::GenericOidc::new(options)?),
            ReceiverType::Github => Box::new(github::Github::new(secrets)),
            ReceiverType::Gitlab => Box::new(gitlab::Gitlab::new(secrets)),
            ReceiverType::Bitbucket => Box::new(bitbucket::Bitbucket::new(secrets)),
            ReceiverType::Harbor => Box::new(harbor::Harbor::new(secrets)),
            ReceiverType::Dockerhub => Box::new(dockerhub::Dockerhub),
            ReceiverType::Quay => Box::new(quay::Quay),
            ReceiverType::Gcr => Box::new(gcr::Gcr::new(options)?),
            ReceiverType::Nexus => Box::new(nexus::Nexus::new(secrets)),
            ReceiverType::Acr => Box::new(acr::Acr),
            ReceiverType::Cdevents => Box::new(cdevents::Cdevents),
        })
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

/// A shared secret sent as it is in one header (gitlab, harbor): it must equal one of the
/// secrets, compared in constant time where Flux uses `!=`.
fn check_token(secrets: &[Secret], head: &HeaderMap, name: &'static str) -> Result<(), Refusal> {
    let token = match single_header(head, name)? {
        Some(t) if !t.is_empty() => t,
        _ => return Err(Refusal::unauthorized(format!("missing token ({name})"))),
    };
    let ok = secrets.iter().fold(subtle::Choice::from(0), |acc, s| {
        acc | subtle::ConstantTimeEq::ct_eq(s.expose(), token)
    });
    if bool::from(ok) {
        Ok(())
    } else {
        Err(Refusal::unauthorized(format!("token mismatch ({name})")))
    }
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
