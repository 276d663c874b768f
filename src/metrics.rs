//! Prometheus metrics, served on the admin listener. Labels stay bounded: receivers are named
//! by namespace/name (or "-" for requests that matched none), never by path or delivery id.

use prometheus::{
    register_gauge, register_gauge_vec, register_histogram_vec, register_int_counter,
    register_int_counter_vec, register_int_gauge, register_int_gauge_vec, Encoder, Gauge, GaugeVec,
    HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, TextEncoder,
};
use std::sync::LazyLock;

pub struct Metrics {
    pub build_info: IntGaugeVec,
    /// Every request on the hook listener, by receiver, receiver type and outcome (relayed,
    /// queued, duplicate, ping, or the refusal's cause).
    pub deliveries: IntCounterVec,
    pub request_seconds: HistogramVec,
    /// Connections closed before the TLS handshake, by reason.
    pub connections_refused: IntCounterVec,
    pub open_connections: IntGauge,
    /// Connections from boxed addresses held in the tarpit now.
    pub tarpit_connections: IntGauge,
    /// Bytes of bodies held in full across requests in flight, against `limits.body_memory_bytes`.
    pub body_memory: IntGauge,
    /// Every connection on the hook listener, from accept on (what `server.max_connections`
    /// caps), the cap itself, and idle connections closed to make room under it.
    pub connections: IntGauge,
    pub connection_limit: IntGauge,
    pub idle_connections_closed: IntCounter,
    pub tls_handshake_failures: IntCounter,
    /// Range-set refreshes, by set and result.
    pub range_refreshes: IntCounterVec,
    /// Fetches of token issuers' signing keys, by source and result.
    pub key_refreshes: IntCounterVec,
    /// Relay job attempts, by cluster, target kind and result (patched, refused, retried,
    /// dropped).
    pub relay_jobs: IntCounterVec,
    pub patch_seconds: HistogramVec,
    /// Per cluster, as each cluster has its own queue.
    pub queue_depth: IntGaugeVec,
    pub queue_oldest_seconds: GaugeVec,
    pub kubernetes_api_up: IntGaugeVec,
    pub config_reloads: IntCounterVec,
    pub last_reload_success: Gauge,
    pub last_reload_successful: IntGauge,
    pub certificate_expiry: Gauge,
    /// Cluster mode: whether each namespace's Receiver watch is listed and streaming.
    pub cluster_watch_up: IntGaugeVec,
    pub cluster_watch_failures: IntCounterVec,
    /// Cluster mode: Receiver objects by state (served, suspended, skipped).
    pub cluster_receivers: IntGaugeVec,
    /// Cluster mode: GETs of the Secrets Receivers name, by result.
    pub cluster_secret_reads: IntCounterVec,
    /// ACME orders, by result (ok, failed).
    pub acme_orders: IntCounterVec,
    /// `relay.events`: Kubernetes Events written beside patches, by result (written, failed).
    pub kubernetes_events: IntCounterVec,
}

fn build() -> Result<Metrics, prometheus::Error> {
    let build_info = register_int_gauge_vec!(
        "fluxgate_build_info",
        "Always 1; the labels say which fluxgate this is.",
        &["version"]
    )?;
    build_info
        .with_label_values(&[env!("CARGO_PKG_VERSION")])
        .set(1);
    Ok(Metrics {
        build_info,
        deliveries: register_int_counter_vec!(
            "fluxgate_deliveries_total",
            "Requests on the hook listener, by receiver, receiver type and outcome.",
            &["receiver", "type", "outcome"]
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
        tarpit_connections: register_int_gauge!(
            "fluxgate_tarpit_connections",
            "Connections from addresses in the penalty box held without a handshake now."
        )?,
        body_memory: register_int_gauge!(
            "fluxgate_body_memory_bytes",
            "Bytes reserved for request bodies held in full (body-keeping receivers) across requests in flight; refusals past limits.body_memory_bytes are counted as outcome body_memory_full."
        )?,
        connections: register_int_gauge!(
            "fluxgate_connections",
            "Connections open on the hook listener, from accept on (TLS handshakes included)."
        )?,
        connection_limit: register_int_gauge!(
            "fluxgate_connection_limit",
            "server.max_connections: the cap on connections on the hook listener (0: none)."
        )?,
        idle_connections_closed: register_int_counter!(
            "fluxgate_idle_connections_closed_total",
            "Idle kept-alive connections closed to make room for a new one under server.max_connections."
        )?,
        tls_handshake_failures: register_int_counter!(
            "fluxgate_tls_handshake_failures_total",
            "TLS handshakes on the hook listener that failed or timed out."
        )?,
        range_refreshes: register_int_counter_vec!(
            "fluxgate_range_refreshes_total",
            "Refreshes of named range sets, by set and result (ok, failed).",
            &["set", "result"]
        )?,
        key_refreshes: register_int_counter_vec!(
            "fluxgate_key_set_refreshes_total",
            "Fetches of token issuers' signing keys (gcr, generic-oidc), by source (JWKS URL, file or issuer) and result (ok, failed).",
            &["source", "result"]
        )?,
        relay_jobs: register_int_counter_vec!(
            "fluxgate_relay_jobs_total",
            "Relay job attempts, by cluster, target kind and result (patched, refused, retried, dropped).",
            &["cluster", "kind", "result"]
        )?,
        patch_seconds: register_histogram_vec!(
            "fluxgate_relay_patch_duration_seconds",
            "Time for one reconcile request (a patch, or a list and its patches), by cluster and target kind.",
            &["cluster", "kind"],
            vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]
        )?,
        queue_depth: register_int_gauge_vec!(
            "fluxgate_relay_queue_depth",
            "Relay jobs waiting for the cluster's Kubernetes API.",
            &["cluster"]
        )?,
        queue_oldest_seconds: register_gauge_vec!(
            "fluxgate_relay_queue_oldest_job_age_seconds",
            "Age of the oldest delivery still waiting in the cluster's relay queue.",
            &["cluster"]
        )?,
        kubernetes_events: register_int_counter_vec!(
            "fluxgate_kubernetes_events_total",
            "relay.events: Events written on patched objects, by result (written, failed).",
            &["result"]
        )?,

        kubernetes_api_up: register_int_gauge_vec!(
            "fluxgate_kubernetes_api_up",
            "1 when the last check of the cluster's Kubernetes API with its credentials succeeded.",
            &["cluster"]
        )?,
        config_reloads: register_int_counter_vec!(
            "fluxgate_config_reloads_total",
            "Configuration reloads (SIGHUP or a changed file), by result (ok, failed).",
            &["result"]
        )?,
        last_reload_success: register_gauge!(
            "fluxgate_config_last_reload_success_timestamp_seconds",
            "When the configuration was last loaded successfully (Unix time)."
        )?,
        last_reload_successful: register_int_gauge!(
            "fluxgate_config_last_reload_successful",
            "1 when the last configuration (re)load succeeded, 0 when it failed."
        )?,
        certificate_expiry: register_gauge!(
            "fluxgate_tls_certificate_expiry_timestamp_seconds",
            "When the served certificate expires (notAfter, Unix time)."
        )?,
        cluster_watch_up: register_int_gauge_vec!(
            "fluxgate_cluster_watch_up",
            "1 while the namespace's Receivers are listed and watched in the cluster, 0 after a failure until they are listed again.",
            &["cluster", "namespace"]
        )?,
        cluster_watch_failures: register_int_counter_vec!(
            "fluxgate_cluster_watch_failures_total",
            "Failures of the Receiver watch (list, watch or stream), by cluster and namespace.",
            &["cluster", "namespace"]
        )?,
        cluster_receivers: register_int_gauge_vec!(
            "fluxgate_cluster_receivers",
            "Receiver objects by cluster and state: served, suspended (answered 503), skipped (invalid, or no usable Secret).",
            &["cluster", "state"]
        )?,
        cluster_secret_reads: register_int_counter_vec!(
            "fluxgate_cluster_secret_reads_total",
            "GETs of the Secrets that Receivers name, by cluster and result (ok, not_found, forbidden, failed).",
            &["cluster", "result"]
        )?,
        acme_orders: register_int_counter_vec!(
            "fluxgate_acme_orders_total",
            "ACME certificate orders, by result (ok, failed).",
            &["result"]
        )?,
    })
}

static METRICS: LazyLock<Metrics> =
    LazyLock::new(|| build().expect("metric names are valid and registered once"));

pub fn get() -> &'static Metrics {
    &METRICS
}

/// What [`init_series`] needs of a receiver: its label, its type, and the (cluster, target
/// kind) pairs it relays to. Plain data, so metrics depend on nothing above them.
pub struct ReceiverSeries<'a> {
    pub label: &'a str,
    pub kind: &'a str,
    pub relays: Vec<(&'a str, &'a str)>,
}

/// Creates, at 0, the series alerts watch for a first increase (refusals, failed reloads,
/// dropped jobs): a series that appears only at its first event shows no increase to alert on.
pub fn init_series(receivers: &[ReceiverSeries<'_>], range_sets: &[&str]) {
    let m = get();
    for r in receivers {
        for outcome in [
            "relayed",
            "queued",
            "relay_refused",
            "queue_failed",
            "bad_signature",
            "not_allowed",
            "rate_limited",
            "body_memory_full",
        ] {
            m.deliveries.with_label_values(&[r.label, r.kind, outcome]);
        }
        for (cluster, kind) in &r.relays {
            for result in ["patched", "refused", "retried", "dropped"] {
                m.relay_jobs.with_label_values(&[cluster, kind, result]);
            }
        }
    }
    for result in ["written", "failed"] {
        m.kubernetes_events.with_label_values(&[result]);
    }
    for result in ["ok", "failed"] {
        m.config_reloads.with_label_values(&[result]);
        for set in range_sets {
            m.range_refreshes.with_label_values(&[set, result]);
        }
    }
    for reason in [
        "not_allowed",
        "blocked",
        "tarpitted",
        "too_many_connections",
        "connection_limit",
    ] {
        m.connections_refused.with_label_values(&[reason]);
    }
}

/// Relay jobs waiting, over every cluster's queue.
pub fn queued_jobs() -> i64 {
    use prometheus::core::Collector;
    get()
        .queue_depth
        .collect()
        .iter()
        .flat_map(|f| f.get_metric())
        .map(|m| m.get_gauge().get_value() as i64)
        .sum()
}

/// The default registry in the Prometheus text format.
pub fn render() -> Vec<u8> {
    LazyLock::force(&METRICS);
    let mut out = Vec::new();
    let _ = TextEncoder::new().encode(&prometheus::gather(), &mut out);
    out
}
