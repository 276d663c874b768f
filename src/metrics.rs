//! Prometheus metrics, served on the admin listener. Labels stay bounded: receivers are named
//! by namespace/name (or "-" for requests that matched none), never by path or delivery id.

use prometheus::{
    register_gauge, register_histogram_vec, register_int_counter_vec, register_int_gauge, Encoder,
    Gauge, HistogramVec, IntCounterVec, IntGauge, TextEncoder,
};
use std::sync::LazyLock;

pub struct Metrics {
    /// Every request on the hook listener, by receiver and outcome (relayed, duplicate, ping,
    /// or the refusal's cause).
    pub requests: IntCounterVec,
    pub request_seconds: HistogramVec,
    /// Connections closed before the TLS handshake, by reason.
    pub connections_refused: IntCounterVec,
    pub open_connections: IntGauge,
    /// Range-set refreshes, by set and result.
    pub range_refreshes: IntCounterVec,
    /// Relay job attempts, by target kind and result (patched, refused, retried, dropped).
    pub relay_jobs: IntCounterVec,
    pub patch_seconds: HistogramVec,
    pub queue_depth: IntGauge,
    pub queue_oldest_seconds: Gauge,
}

fn build() -> Result<Metrics, prometheus::Error> {
    Ok(Metrics {
        requests: register_int_counter_vec!(
            "fluxgate_requests_total",
            "Requests on the hook listener, by receiver and outcome.",
            &["receiver", "outcome"]
        )?,
        request_seconds: register_histogram_vec!(
            "fluxgate_request_duration_seconds",
            "Time from a complete request head to the answer, by receiver.",
            &["receiver"],
            vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0
            ]
        )?,
        connections_refused: register_int_counter_vec!(
            "fluxgate_connections_refused_total",
            "Connections closed before the TLS handshake, by reason.",
            &["reason"]
        )?,
        open_connections: register_int_gauge!(
            "fluxgate_open_connections",
            "Connections open on the hook listener after the TLS handshake."
        )?,
        range_refreshes: register_int_counter_vec!(
            "fluxgate_range_refreshes_total",
            "Refreshes of named range sets, by set and result (ok, failed).",
            &["set", "result"]
        )?,
        relay_jobs: register_int_counter_vec!(
            "fluxgate_relay_jobs_total",
            "Relay job attempts, by target kind and result (patched, refused, retried, dropped).",
            &["kind", "result"]
        )?,
        patch_seconds: register_histogram_vec!(
            "fluxgate_relay_patch_duration_seconds",
            "Time for one reconcile request (a patch, or a list and its patches), by target kind.",
            &["kind"],
            vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]
        )?,
        queue_depth: register_int_gauge!(
            "fluxgate_relay_queue_depth",
            "Relay jobs waiting for the Kubernetes API."
        )?,
        queue_oldest_seconds: register_gauge!(
            "fluxgate_relay_queue_oldest_job_age_seconds",
            "Age of the oldest delivery still waiting in the relay queue."
        )?,
    })
}

static METRICS: LazyLock<Metrics> =
    LazyLock::new(|| build().expect("metric names are valid and registered once"));

pub fn get() -> &'static Metrics {
    &METRICS
}

/// The default registry in the Prometheus text format.
pub fn render() -> Vec<u8> {
    LazyLock::force(&METRICS);
    let mut out = Vec::new();
    let _ = TextEncoder::new().encode(&prometheus::gather(), &mut out);
    out
}
