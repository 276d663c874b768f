//! Why a request was refused: one status code and one line an operator can act on.
//!
//! Reasons are built only from static text and header names, never from secrets or expected
//! signatures, so they are safe to send back, log and count.

use std::borrow::Cow;
use std::fmt;

/// What went wrong, as a stable label for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cause {
    MalformedRequest,
    UnknownHook,
    MethodNotAllowed,
    TooLarge,
    UnsupportedMediaType,
    BadSignature,
    EventNotAccepted,
    BodyTimeout,
    HeadTooLarge,
    NotAllowed,
    RateLimited,
    Blocked,
    /// A token issuer's signing keys could not be fetched: the provider should retry.
    KeysUnavailable,
    Suspended,
    /// The memory for bodies held across requests in flight is used up: retry later.
    BodyMemoryFull,
}

impl Cause {
    pub fn label(self) -> &'static str {
        match self {
            Cause::MalformedRequest => "malformed_request",
            Cause::UnknownHook => "unknown_hook",
            Cause::MethodNotAllowed => "method_not_allowed",
            Cause::TooLarge => "too_large",
            Cause::UnsupportedMediaType => "unsupported_media_type",
            Cause::BadSignature => "bad_signature",
            Cause::EventNotAccepted => "event_not_accepted",
            Cause::BodyTimeout => "body_timeout",
            Cause::HeadTooLarge => "head_too_large",
            Cause::NotAllowed => "not_allowed",
            Cause::RateLimited => "rate_limited",
            Cause::Blocked => "blocked",
            Cause::KeysUnavailable => "keys_unavailable",
            Cause::Suspended => "suspended",
            Cause::BodyMemoryFull => "body_memory_full",
        }
    }
}

/// A refused request: the status to answer and the one-line reason to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub cause: Cause,
    pub reason: Cow<'static, str>,
}

impl Refusal {
    pub fn new(status: u16, cause: Cause, reason: impl Into<Cow<'static, str>>) -> Self {
        Refusal {
            status,
            cause,
            reason: reason.into(),
        }
    }

    /// 401: the signature or token does not prove the sender knows the secret.
    pub fn unauthorized(reason: impl Into<Cow<'static, str>>) -> Self {
        Self::new(401, Cause::BadSignature, reason)
    }

    /// 400: the request is well-formed HTTP but not something this receiver takes.
    pub fn bad_request(cause: Cause, reason: impl Into<Cow<'static, str>>) -> Self {
        Self::new(400, cause, reason)
    }

    /// The same answer for every unknown path, so probing learns nothing from the body.
    pub fn unknown_hook() -> Self {
        Self::new(404, Cause::UnknownHook, "no such hook")
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status, self.reason)
    }
}
