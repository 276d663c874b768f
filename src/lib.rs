//! fluxgate: the public edge for Flux webhook receivers.
//!
//! The modules follow one delivery: configuration is loaded once ([`config`]), the edge accepts
//! TLS and routes the request ([`edge`]), the receiver's verifier checks it ([`verify`]), and the
//! relay asks the Kubernetes API to reconcile the targets ([`relay`]), in each cluster of the
//! fleet that they reach ([`fleet`]). In cluster mode, Flux's
//! own `Receiver` objects become receivers too ([`cluster`]).

#![forbid(unsafe_code)]

pub mod acme;
pub mod check;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod dev;
pub mod edge;
pub mod expr;
pub mod fetch;
pub mod fleet;
pub mod guard;
pub mod history;
pub mod hook_path;
pub mod import;
pub mod metrics;
pub mod refusal;
pub mod relay;
pub mod secret;
pub mod verify;
