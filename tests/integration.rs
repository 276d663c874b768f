//! Every integration test, linked into one binary. Each of these drives the real `fluxgate`
//! binary, and a test binary per file linked pingora, kube and the stand-in again: twenty copies
//! of ~120 MB, which filled a CI machine's disk. One binary links them once.
//!
//! Run one file's tests with its module name as the filter, e.g.
//! `cargo test --test integration malformed::`.

mod common;

mod acme;
mod body_budget;
mod body_limit;
mod cluster;
mod config_errors;
mod config_examples;
mod connection_cap;
mod defences;
mod deploy;
mod events;
mod filters;
mod fleet;
mod forward;
mod gateway;
mod history;
mod import;
mod loadtest;
mod malformed;
mod monitoring;
mod operations;
mod packaging;
mod relay;
mod secrets_trace;
mod status_page;
mod tls;
mod tls_openssl;
mod tokens;
mod types;
