//! The monitoring assets in deploy/monitoring: the Grafana dashboard and the Prometheus alerting
//! rules parse, have the structure Grafana and Prometheus expect, and use only metrics (and label
//! values) that fluxgate exports. Where `promtool` is on PATH, the rules and every dashboard
//! query also pass `promtool check rules`, and `promtool test rules` checks that each alert fires
//! when it should and stays quiet when it should not, for one cluster and for a fleet, and that
//! the dashboard's cluster filter matches series with and without a `cluster` label.

use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Every metric the gateway exports (src/metrics.rs). Alerts may also use Prometheus's own `up`.
const EXPORTED: &[&str] = &[
    "fluxgate_build_info",
    "fluxgate_deliveries_total",
    "fluxgate_request_duration_seconds",
    "fluxgate_connections_refused_total",
    "fluxgate_open_connections",
    "fluxgate_tls_handshake_failures_total",
    "fluxgate_range_refreshes_total",
    "fluxgate_key_set_refreshes_total",
    "fluxgate_relay_jobs_total",
    "fluxgate_relay_patch_duration_seconds",
    "fluxgate_relay_queue_depth",
    "fluxgate_relay_queue_oldest_job_age_seconds",
    "fluxgate_kubernetes_api_up",
    "fluxgate_config_reloads_total",
    "fluxgate_config_last_reload_success_timestamp_seconds",
    "fluxgate_config_last_reload_successful",
    "fluxgate_tls_certificate_expiry_timestamp_seconds",
];

/// The histograms among them, queried through their `_bucket`, `_sum` and `_count` series.
const HISTOGRAMS: &[&str] = &[
    "fluxgate_request_duration_seconds",
    "fluxgate_relay_patch_duration_seconds",
];

/// The values each enumerated label takes. A matcher with a misspelt value selects nothing, and
/// an alert built on it never fires, so every literal value in a matcher must be one of these.
const LABEL_VALUES: &[(&str, &[&str])] = &[
    (
        "outcome",
        &[
            "relayed",
            "queued",
            "duplicate",
            "ping",
            "unknown_hook",
            "bad_signature",
            "not_allowed",
            "rate_limited",
            "blocked",
            "too_large",
            "unsupported_media_type",
            "event_not_accepted",
            "method_not_allowed",
            "malformed_request",
            "head_too_large",
            "body_timeout",
            "relay_refused",
            "queue_failed",
            "keys_unavailable",
            "forwarded",
            "forward_refused",
            "forward_failed",
            "body_memory_full",
        ],
    ),
    (
        "reason",
        &[
            "not_allowed",
            "blocked",
            "too_many_connections",
            "connection_limit",
        ],
    ),
    // fluxgate_range_refreshes_total and fluxgate_config_reloads_total: ok, failed;
    // fluxgate_relay_jobs_total: patched, refused, retried, dropped.
    (
        "result",
        &["ok", "failed", "patched", "refused", "retried", "dropped"],
    ),
];

/// The alerts the runbook promises, with the severities each must have.
const REQUIRED_ALERTS: &[(&str, &[&str])] = &[
    ("FluxgateDown", &["critical"]),
    ("FluxgateKubernetesApiDown", &["critical"]),
    ("FluxgateClusterUnreachable", &["critical"]),
    ("FluxgateDeliveriesFailing", &["warning"]),
    ("FluxgateBadSignatureBurst", &["warning"]),
    ("FluxgateRelayQueueGrowing", &["warning"]),
    ("FluxgateRelayQueueStalled", &["warning", "critical"]),
    ("FluxgateConfigReloadFailed", &["warning"]),
    ("FluxgateCertificateExpiring", &["warning", "critical"]),
];

/// The metrics with a `cluster` label: one series per Kubernetes cluster fluxgate relays to.
/// A fluxgate without clusters may export them without it, so every dashboard query of them
/// filters with `cluster=~"$cluster"`, whose All (`.*`) also matches a missing label.
const CLUSTERED: &[&str] = &[
    "fluxgate_relay_jobs_total",
    "fluxgate_relay_patch_duration_seconds",
    "fluxgate_relay_queue_depth",
    "fluxgate_relay_queue_oldest_job_age_seconds",
    "fluxgate_kubernetes_api_up",
];

/// Grafana's own variables, which need no definition in the dashboard.
const GRAFANA_VARIABLES: &[&str] = &["__rate_interval", "__interval", "__range"];

fn asset(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/monitoring")
        .join(name)
}

fn read(name: &str) -> String {
    let path = asset(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn dashboard() -> Value {
    serde_json::from_str(&read("grafana-dashboard.json"))
        .unwrap_or_else(|e| panic!("grafana-dashboard.json: {e}"))
}

fn rules_file() -> Value {
    serde_saphyr::from_str::<Value>(&read("alerts.yaml"))
        .unwrap_or_else(|e| panic!("alerts.yaml: {e}"))
}

/// Every rule of every group.
fn rules(file: &Value) -> Vec<&Value> {
    let groups = file["groups"]
        .as_array()
        .expect("alerts.yaml: `groups` is a list");
    groups
        .iter()
        .flat_map(|g| {
            g["rules"]
                .as_array()
                .unwrap_or_else(|| panic!("group {}: `rules` is a list", g["name"]))
                .iter()
        })
        .collect()
}

fn text<'a>(v: &'a Value, what: &str) -> &'a str {
    match v.as_str() {
        Some(s) if !s.trim().is_empty() => s,
        _ => panic!("{what}: expected a non-empty string, found {v}"),
    }
}

/// The queries in a dashboard: every target's `expr` and every variable's query.
fn dashboard_queries(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr" | "query" | "definition", Value::String(s)) => out.push(s.clone()),
                    _ => dashboard_queries(value, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| dashboard_queries(item, out)),
        _ => {}
    }
}

fn is_name_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b':'
}

/// The `fluxgate_*` metric names a PromQL expression mentions, as written.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let bytes = expr.as_bytes();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while let Some(found) = expr[i..].find("fluxgate_") {
        let start = i + found;
        let mut end = start;
        while end < bytes.len() && is_name_char(bytes[end]) {
            end += 1;
        }
        if start == 0 || !is_name_char(bytes[start - 1]) {
            names.insert(expr[start..end].to_string());
        }
        i = end;
    }
    names
}

/// Each `fluxgate_*` selector in a PromQL expression: the series name and its label matchers
/// (the text between the braces, empty for a bare name).
fn selectors(expr: &str) -> Vec<(String, String)> {
    let bytes = expr.as_bytes();
    let mut found = Vec::new();
    let mut i = 0;
    while let Some(at) = expr[i..].find("fluxgate_") {
        let start = i + at;
        let mut end = start;
        while end < bytes.len() && is_name_char(bytes[end]) {
            end += 1;
        }
        i = end;
        if start > 0 && is_name_char(bytes[start - 1]) {
            continue;
        }
        let matchers = match expr[end..].strip_prefix('{') {
            Some(rest) => rest[..rest.find('}').unwrap_or(rest.len())].to_string(),
            None => String::new(),
        };
        found.push((expr[start..end].to_string(), matchers));
    }
    found
}

/// The exported metric a series name belongs to, if any.
fn exported(name: &str) -> Option<&'static str> {
    if let Some(m) = EXPORTED.iter().find(|m| **m == name) {
        return Some(m);
    }
    ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
        let base = name.strip_suffix(suffix)?;
        HISTOGRAMS.iter().find(|h| **h == base).copied()
    })
}

/// The literal values of `label="v"`, `label=~"a|b"`, `label!="v"` and `label!~"a|b"` matchers.
fn matcher_values(expr: &str, label: &str) -> Vec<String> {
    let bytes = expr.as_bytes();
    let mut values = Vec::new();
    let mut i = 0;
    while let Some(found) = expr[i..].find(label) {
        let start = i + found;
        i = start + label.len();
        let inside_a_word = (start > 0 && is_name_char(bytes[start - 1]))
            || (i < bytes.len() && is_name_char(bytes[i]));
        if inside_a_word {
            continue;
        }
        let rest = expr[i..].trim_start();
        let Some(rest) = ["=~", "!~", "!=", "="]
            .iter()
            .find_map(|op| rest.strip_prefix(op))
        else {
            continue;
        };
        if rest.starts_with('=') {
            continue; // `==`, a comparison
        }
        let Some(quoted) = rest.trim_start().strip_prefix('"') else {
            continue;
        };
        let Some(close) = quoted.find('"') else {
            continue;
        };
        values.extend(
            quoted[..close]
                .split('|')
                // Only literal alternatives: a real regex is the author's business.
                .filter(|alt| !alt.contains(|c: char| ".*+?[](){}^$\\".contains(c)))
                .map(str::to_string),
        );
    }
    values
}

/// A Prometheus duration: one or more of a number and a unit, largest unit first (`1h30m`).
fn is_duration(s: &str) -> bool {
    const UNITS: &[&str] = &["y", "w", "d", "h", "m", "s", "ms"];
    let mut rest = s;
    let mut last_unit = None;
    if rest.is_empty() {
        return false;
    }
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 {
            return false;
        }
        rest = &rest[digits..];
        // "ms" before "m".
        let Some(unit) = UNITS
            .iter()
            .enumerate()
            .filter(|(_, u)| rest.starts_with(**u))
            .max_by_key(|(_, u)| u.len())
            .map(|(n, u)| (n, *u))
        else {
            return false;
        };
        if last_unit.is_some_and(|last| unit.0 <= last) {
            return false;
        }
        last_unit = Some(unit.0);
        rest = &rest[unit.1.len()..];
    }
    true
}

#[test]
fn durations_and_scanners_work_as_the_checks_assume() {
    assert!(is_duration("2m") && is_duration("0m") && is_duration("1h30m"));
    assert!(is_duration("500ms"));
    assert!(!is_duration("") && !is_duration("5") && !is_duration("m") && !is_duration("30m1h"));
    assert_eq!(
        metric_names(
            "histogram_quantile(0.99, sum by (le) (rate(fluxgate_request_duration_seconds_bucket[5m]))) / my_fluxgate_x + fluxgate_up"
        ),
        BTreeSet::from([
            "fluxgate_request_duration_seconds_bucket".to_string(),
            "fluxgate_up".to_string()
        ])
    );
    assert_eq!(
        exported("fluxgate_request_duration_seconds_bucket"),
        Some("fluxgate_request_duration_seconds")
    );
    assert_eq!(exported("fluxgate_deliveries_total_count"), None);
    assert_eq!(exported("fluxgate_up"), None);
    assert_eq!(
        matcher_values(
            r#"x{outcome=~"relayed|queued", outcome != "ping", result="ok"} > 0 and y{outcome=~"bad_.*"}"#,
            "outcome"
        ),
        ["relayed", "queued", "ping"]
    );
    assert_eq!(
        selectors(
            r#"sum(fluxgate_relay_queue_depth{a="1", b=~"$b"}) / fluxgate_kubernetes_api_up"#
        ),
        [
            (
                "fluxgate_relay_queue_depth".to_string(),
                r#"a="1", b=~"$b""#.to_string()
            ),
            ("fluxgate_kubernetes_api_up".to_string(), String::new())
        ]
    );
}

#[test]
fn dashboard_has_the_structure_grafana_imports() {
    let d = dashboard();
    let schema = d["schemaVersion"].as_u64().expect("schemaVersion");
    assert!((36..=41).contains(&schema), "schemaVersion {schema}");
    text(&d["title"], "title");
    text(&d["uid"], "uid");

    // Variables: a Prometheus data source picker (or an import input), and receivers.
    let vars = d["templating"]["list"].as_array().expect("templating.list");
    let var = |name: &str| vars.iter().find(|v| v["name"] == name);
    let datasource_var =
        var("datasource").is_some_and(|v| v["type"] == "datasource" && v["query"] == "prometheus");
    let datasource_input = d["__inputs"].as_array().is_some_and(|inputs| {
        inputs
            .iter()
            .any(|i| i["type"] == "datasource" && i["pluginId"] == "prometheus")
    });
    assert!(
        datasource_var || datasource_input,
        "no Prometheus data source variable or import input"
    );
    let receiver = var("receiver").expect("a `receiver` variable");
    let mut receiver_queries = Vec::new();
    dashboard_queries(receiver, &mut receiver_queries);
    assert!(
        receiver_queries
            .iter()
            .any(|q| q.contains("label_values(fluxgate_deliveries_total, receiver)")),
        "receiver variable queries: {receiver_queries:?}"
    );
    let defined: BTreeSet<&str> = vars
        .iter()
        .map(|v| text(&v["name"], "variable name"))
        .chain(GRAFANA_VARIABLES.iter().copied())
        .collect();

    let panels = d["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut boxes: Vec<(String, [u64; 4])> = Vec::new();
    let mut graphs = 0;
    for p in panels {
        let title = text(&p["title"], "panel title").to_string();
        let id = p["id"].as_u64().unwrap_or_else(|| panic!("{title}: id"));
        assert!(ids.insert(id), "{title}: id {id} is used twice");
        let grid = &p["gridPos"];
        let [x, y, w, h] = ["x", "y", "w", "h"].map(|k| {
            grid[k]
                .as_u64()
                .unwrap_or_else(|| panic!("{title}: gridPos.{k}"))
        });
        assert!(w > 0 && h > 0 && x + w <= 24, "{title}: gridPos {grid}");
        for (other, [ox, oy, ow, oh]) in &boxes {
            let overlap = x < ox + ow && *ox < x + w && y < oy + oh && *oy < y + h;
            assert!(!overlap, "panels {other:?} and {title:?} overlap");
        }
        boxes.push((title.clone(), [x, y, w, h]));
        if p["type"] == "row" {
            continue;
        }
        graphs += 1;
        text(&p["type"], "panel type");
        let uid = text(&p["datasource"]["uid"], "panel datasource uid");
        assert!(
            uid == "${datasource}" || uid == "${DS_PROMETHEUS}",
            "{title}: datasource {uid}"
        );
        let targets = p["targets"]
            .as_array()
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| panic!("{title}: no targets"));
        let mut refs = BTreeSet::new();
        for t in targets {
            let expr = text(&t["expr"], &format!("{title}: target expr"));
            let r = text(&t["refId"], &format!("{title}: target refId"));
            assert!(refs.insert(r), "{title}: refId {r} is used twice");
            for used in expr.split('$').skip(1) {
                let name: String = used
                    .trim_start_matches('{')
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                assert!(
                    defined.contains(name.as_str()),
                    "{title}: ${name} is not a dashboard variable"
                );
            }
        }
    }
    assert!(graphs >= 10, "only {graphs} panels with queries");
}

/// The panels' queries, as (panel title, refId, expr).
fn panel_queries(d: &Value) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push((
                p["title"].as_str().unwrap_or_default().to_string(),
                t["refId"].as_str().unwrap_or_default().to_string(),
                t["expr"].as_str().unwrap_or_default().to_string(),
            ));
        }
    }
    out
}

#[test]
fn dashboard_follows_the_cluster_variable_and_has_a_per_cluster_panel() {
    let d = dashboard();
    let vars = d["templating"]["list"].as_array().expect("templating.list");
    let cluster = vars
        .iter()
        .find(|v| v["name"] == "cluster")
        .expect("a `cluster` variable");
    let mut queries = Vec::new();
    dashboard_queries(cluster, &mut queries);
    assert!(
        !queries.is_empty()
            && queries
                .iter()
                .all(|q| q.starts_with("label_values(fluxgate_kubernetes_api_up")
                    && q.ends_with(", cluster)")),
        "cluster variable queries: {queries:?}"
    );
    assert_eq!(cluster["type"], "query");
    assert_eq!(cluster["multi"], true);
    // Grafana's own All is a regex of the values found, and a fluxgate without clusters
    // exports none: `.*` matches every series, with or without the label.
    assert_eq!(cluster["includeAll"], true);
    assert_eq!(cluster["allValue"], ".*");

    // Every query of a per-cluster metric follows the variable (and the instance).
    let mut per_cluster = BTreeSet::new();
    for (title, r, expr) in panel_queries(&d) {
        for (name, matchers) in selectors(&expr) {
            let Some(metric) = exported(&name).filter(|m| CLUSTERED.contains(m)) else {
                continue;
            };
            for wanted in [r#"cluster=~"$cluster""#, r#"instance=~"$instance""#] {
                assert!(
                    matchers.contains(wanted),
                    "{title} {r}: {name}{{{matchers}}} lacks {wanted}"
                );
            }
            if expr.contains("by (cluster") {
                per_cluster.insert(metric);
            }
        }
    }
    // Per cluster: whether its API answers, its queue, its patches and refusals.
    for metric in [
        "fluxgate_kubernetes_api_up",
        "fluxgate_relay_queue_depth",
        "fluxgate_relay_jobs_total",
    ] {
        assert!(
            per_cluster.contains(metric),
            "no panel shows {metric} by cluster"
        );
    }
}

#[test]
fn alert_rules_have_the_structure_prometheus_loads() {
    let file = rules_file();
    let groups = file["groups"].as_array().expect("groups");
    assert!(!groups.is_empty(), "no groups");
    let mut group_names = BTreeSet::new();
    for g in groups {
        let name = text(&g["name"], "group name");
        assert!(group_names.insert(name), "group {name} twice");
    }

    let runbook = read("README.md");
    let mut seen: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for rule in rules(&file) {
        assert!(rule.get("record").is_none(), "a recording rule: {rule}");
        let alert = text(&rule["alert"], "alert").to_string();
        assert!(
            alert.starts_with("Fluxgate") && alert.chars().all(|c| c.is_ascii_alphanumeric()),
            "alert name {alert}"
        );
        text(&rule["expr"], &format!("{alert}: expr"));
        let wait = text(&rule["for"], &format!("{alert}: for"));
        assert!(
            is_duration(wait),
            "{alert}: `for: {wait}` is not a duration"
        );
        let severity = text(&rule["labels"]["severity"], &format!("{alert}: severity"));
        assert!(
            ["warning", "critical"].contains(&severity),
            "{alert}: severity {severity}"
        );
        for key in ["summary", "description"] {
            text(
                &rule["annotations"][key],
                &format!("{alert}: annotations.{key}"),
            );
        }
        assert!(
            seen.entry(alert.clone())
                .or_default()
                .insert(severity.to_string()),
            "{alert} has two {severity} rules"
        );
        assert!(
            runbook.contains(&format!("**{alert}**")),
            "README.md has no runbook line for {alert}"
        );
    }
    for (alert, severities) in REQUIRED_ALERTS {
        let have = seen
            .get(*alert)
            .unwrap_or_else(|| panic!("no {alert} alert"));
        for s in *severities {
            assert!(have.contains(*s), "{alert} has no {s} rule");
        }
    }

    let down = rules(&file)
        .into_iter()
        .find(|r| r["alert"] == "FluxgateDown")
        .expect("FluxgateDown");
    let expr = down["expr"].as_str().unwrap_or_default();
    assert!(
        expr.contains(r#"up{job="fluxgate"}"#) && expr.contains("== 0"),
        "FluxgateDown: {expr}"
    );
}

#[test]
fn assets_use_only_exported_metrics_and_label_values() {
    let file = rules_file();
    let mut sources: Vec<(String, String)> = rules(&file)
        .into_iter()
        .map(|r| {
            (
                format!("alerts.yaml {}", r["alert"]),
                r["expr"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let mut queries = Vec::new();
    dashboard_queries(&dashboard(), &mut queries);
    let dashboard_start = sources.len();
    sources.extend(
        queries
            .into_iter()
            .map(|q| ("grafana-dashboard.json".to_string(), q)),
    );

    let mut unknown = Vec::new();
    let mut on_dashboard = BTreeSet::new();
    for (n, (source, expr)) in sources.iter().enumerate() {
        for name in metric_names(expr) {
            match exported(&name) {
                Some(metric) if n >= dashboard_start => {
                    on_dashboard.insert(metric);
                }
                Some(_) => {}
                None => unknown.push(format!("{source}: {name}")),
            }
        }
        for (label, allowed) in LABEL_VALUES {
            for value in matcher_values(expr, label) {
                if !allowed.contains(&value.as_str()) {
                    unknown.push(format!("{source}: {label}=\"{value}\""));
                }
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "not exported by fluxgate:\n{}",
        unknown.join("\n")
    );
    let missing: Vec<_> = EXPORTED
        .iter()
        .filter(|m| !on_dashboard.contains(**m))
        .collect();
    assert!(missing.is_empty(), "not on the dashboard: {missing:?}");
}

/// Alert unit tests for `promtool test rules`, against alerts.yaml without its annotations
/// (which promtool would otherwise compare word for word).
const PROMTOOL_TESTS: &str = r##"rule_files:
  - rules.json
evaluation_interval: 1m
tests:
  - name: availability
    interval: 1m
    input_series:
      - series: 'up{job="fluxgate",instance="a"}'
        values: '1x4 0x10'
      # A fluxgate without clusters: no cluster label.
      - series: 'fluxgate_kubernetes_api_up{job="fluxgate",instance="a"}'
        values: '1x4 0x20'
    alert_rule_test:
      - {eval_time: 6m, alertname: FluxgateDown}
      - {eval_time: 6m, alertname: FluxgateKubernetesApiDown}
      - eval_time: 10m
        alertname: FluxgateDown
        exp_alerts: [{exp_labels: {severity: critical, job: fluxgate, instance: a}}]
      - eval_time: 10m
        alertname: FluxgateKubernetesApiDown
        exp_alerts: [{exp_labels: {severity: critical, job: fluxgate, instance: a}}]
      # One cluster is all its clusters: FluxgateKubernetesApiDown says it, not this.
      - {eval_time: 20m, alertname: FluxgateClusterUnreachable}
  - name: fleet
    interval: 1m
    input_series:
      # A fleet: prod-eu up, prod-us down from minute 5 on, prod-ap down for 6 minutes only.
      - series: 'fluxgate_kubernetes_api_up{job="fluxgate",instance="fleet",cluster="prod-eu"}'
        values: '1x30'
      - series: 'fluxgate_kubernetes_api_up{job="fluxgate",instance="fleet",cluster="prod-us"}'
        values: '1x4 0x26'
      - series: 'fluxgate_kubernetes_api_up{job="fluxgate",instance="fleet",cluster="prod-ap"}'
        values: '1x4 0x5 1x21'
      # A fleet whose clusters all go away at minute 5: fluxgate's own network.
      - series: 'fluxgate_kubernetes_api_up{job="fluxgate",instance="cut",cluster="eu"}'
        values: '1x4 0x26'
      - series: 'fluxgate_kubernetes_api_up{job="fluxgate",instance="cut",cluster="us"}'
        values: '1x4 0x26'
      # A single cluster that carries a cluster label (the one called "default").
      - series: 'fluxgate_kubernetes_api_up{job="fluxgate",instance="solo",cluster="default"}'
        values: '1x4 0x26'
    alert_rule_test:
      # One cluster of a fleet down is no reason to page within 2 minutes; all of them is.
      - eval_time: 8m
        alertname: FluxgateKubernetesApiDown
        exp_alerts:
          - {exp_labels: {severity: critical, job: fluxgate, instance: cut, cluster: eu}}
          - {exp_labels: {severity: critical, job: fluxgate, instance: cut, cluster: us}}
          - {exp_labels: {severity: critical, job: fluxgate, instance: solo, cluster: default}}
      - {eval_time: 14m, alertname: FluxgateClusterUnreachable}
      - eval_time: 16m
        alertname: FluxgateClusterUnreachable
        exp_alerts:
          - {exp_labels: {severity: critical, job: fluxgate, instance: fleet, cluster: prod-us}}
          - {exp_labels: {severity: critical, job: fluxgate, instance: cut, cluster: eu}}
          - {exp_labels: {severity: critical, job: fluxgate, instance: cut, cluster: us}}
      - eval_time: 29m
        alertname: FluxgateKubernetesApiDown
        exp_alerts:
          - {exp_labels: {severity: critical, job: fluxgate, instance: cut, cluster: eu}}
          - {exp_labels: {severity: critical, job: fluxgate, instance: cut, cluster: us}}
          - {exp_labels: {severity: critical, job: fluxgate, instance: solo, cluster: default}}
  - name: deliveries
    interval: 1m
    input_series:
      - series: 'fluxgate_deliveries_total{instance="a",receiver="flux-system/app",type="github",outcome="relayed"}'
        values: '0+10x30'
      - series: 'fluxgate_deliveries_total{instance="a",receiver="flux-system/app",type="github",outcome="relay_refused"}'
        values: '0x10 0+5x20'
      - series: 'fluxgate_deliveries_total{instance="a",receiver="flux-system/app",type="github",outcome="queue_failed"}'
        values: '0x20 1x10'
      - series: 'fluxgate_deliveries_total{instance="a",receiver="flux-system/app",type="github",outcome="bad_signature"}'
        values: '0x10 0+10x20'
      - series: 'fluxgate_deliveries_total{instance="a",receiver="flux-system/quiet",type="gitlab",outcome="relayed"}'
        values: '0+1x30'
      - series: 'fluxgate_deliveries_total{instance="a",receiver="flux-system/quiet",type="gitlab",outcome="relay_refused"}'
        values: '0x30'
      - series: 'fluxgate_deliveries_total{instance="a",receiver="flux-system/quiet",type="gitlab",outcome="bad_signature"}'
        values: '0+1x30'
    alert_rule_test:
      - {eval_time: 8m, alertname: FluxgateDeliveriesFailing}
      - {eval_time: 8m, alertname: FluxgateBadSignatureBurst}
      - {eval_time: 8m, alertname: FluxgateQueueWriteFailing}
      - eval_time: 25m
        alertname: FluxgateDeliveriesFailing
        exp_alerts: [{exp_labels: {severity: warning, receiver: flux-system/app}}]
      - eval_time: 25m
        alertname: FluxgateBadSignatureBurst
        exp_alerts: [{exp_labels: {severity: warning, receiver: flux-system/app}}]
      - eval_time: 22m
        alertname: FluxgateQueueWriteFailing
        exp_alerts: [{exp_labels: {severity: critical, instance: a}}]
  - name: relay
    interval: 1m
    input_series:
      - series: 'fluxgate_relay_queue_depth{instance="stuck"}'
        values: '0x5 1+1x40'
      - series: 'fluxgate_relay_queue_depth{instance="burst"}'
        values: '0x5 50x3 0x37'
      - series: 'fluxgate_relay_queue_depth{instance="flat"}'
        values: '0x5 3x40'
      - series: 'fluxgate_relay_queue_oldest_job_age_seconds{instance="stuck"}'
        values: '0x5 0+60x40'
      - series: 'fluxgate_relay_queue_oldest_job_age_seconds{instance="burst"}'
        values: '0x5 0+60x3 0x37'
      - series: 'fluxgate_relay_jobs_total{instance="stuck",kind="GitRepository",result="dropped"}'
        values: '0x30 1x10'
      - series: 'fluxgate_relay_jobs_total{instance="stuck",kind="GitRepository",result="patched"}'
        values: '0+5x40'
      - series: 'fluxgate_relay_queue_oldest_job_age_seconds{instance="fleet",cluster="prod-us"}'
        values: '0x5 0+60x40'
      - series: 'fluxgate_relay_queue_oldest_job_age_seconds{instance="fleet",cluster="prod-eu"}'
        values: '0x45'
      - series: 'fluxgate_relay_jobs_total{instance="fleet",cluster="prod-us",kind="Kustomization",result="refused"}'
        values: '0x30 1x10'
      - series: 'fluxgate_relay_jobs_total{instance="fleet",cluster="prod-eu",kind="Kustomization",result="patched"}'
        values: '0+5x40'
    alert_rule_test:
      - {eval_time: 12m, alertname: FluxgateRelayQueueGrowing}
      - eval_time: 25m
        alertname: FluxgateRelayQueueGrowing
        exp_alerts: [{exp_labels: {severity: warning, instance: stuck}}]
      - {eval_time: 11m, alertname: FluxgateRelayQueueStalled}
      - eval_time: 15m
        alertname: FluxgateRelayQueueStalled
        exp_alerts:
          - {exp_labels: {severity: warning, instance: stuck}}
          - {exp_labels: {severity: warning, instance: fleet, cluster: prod-us}}
      - eval_time: 40m
        alertname: FluxgateRelayQueueStalled
        exp_alerts:
          - {exp_labels: {severity: warning, instance: stuck}}
          - {exp_labels: {severity: critical, instance: stuck}}
          - {exp_labels: {severity: warning, instance: fleet, cluster: prod-us}}
          - {exp_labels: {severity: critical, instance: fleet, cluster: prod-us}}
      - {eval_time: 25m, alertname: FluxgateRelayJobsLost}
      - eval_time: 35m
        alertname: FluxgateRelayJobsLost
        exp_alerts:
          - {exp_labels: {severity: warning, instance: stuck, kind: GitRepository, result: dropped}}
          - {exp_labels: {severity: warning, instance: fleet, cluster: prod-us, kind: Kustomization, result: refused}}
  - name: configuration
    interval: 1m
    input_series:
      - series: 'fluxgate_config_reloads_total{result="failed",instance="a",job="fluxgate"}'
        values: '0x9 1x60'
      - series: 'fluxgate_config_last_reload_success_timestamp_seconds{instance="a",job="fluxgate"}'
        values: '60x70'
      - series: 'fluxgate_config_reloads_total{result="failed",instance="b",job="fluxgate"}'
        values: '0x9 1x60'
      - series: 'fluxgate_config_last_reload_success_timestamp_seconds{instance="b",job="fluxgate"}'
        values: '60x10 660x59'
      - series: 'fluxgate_config_reloads_total{result="failed",instance="c",job="fluxgate"}'
        values: '0x19 1x50'
      - series: 'fluxgate_config_last_reload_success_timestamp_seconds{instance="c",job="fluxgate"}'
        values: '300x29 1800x40'
      - series: 'fluxgate_tls_certificate_expiry_timestamp_seconds{instance="a"}'
        values: '1728000x70'
      - series: 'fluxgate_tls_certificate_expiry_timestamp_seconds{instance="b"}'
        values: '864000x70'
      - series: 'fluxgate_tls_certificate_expiry_timestamp_seconds{instance="c"}'
        values: '172800x70'
      - series: 'fluxgate_range_refreshes_total{instance="a",set="github",result="failed"}'
        values: '0x10 1x60'
      - series: 'fluxgate_range_refreshes_total{instance="a",set="github",result="ok"}'
        values: '0x70'
      - series: 'fluxgate_range_refreshes_total{instance="a",set="office",result="failed"}'
        values: '0x10 1x60'
      - series: 'fluxgate_range_refreshes_total{instance="a",set="office",result="ok"}'
        values: '0x30 1x40'
    alert_rule_test:
      - eval_time: 15m
        alertname: FluxgateConfigReloadFailed
        exp_alerts: [{exp_labels: {severity: warning, instance: a, job: fluxgate}}]
      - eval_time: 25m
        alertname: FluxgateConfigReloadFailed
        exp_alerts:
          - {exp_labels: {severity: warning, instance: a, job: fluxgate}}
          - {exp_labels: {severity: warning, instance: c, job: fluxgate}}
      - eval_time: 40m
        alertname: FluxgateConfigReloadFailed
        exp_alerts: [{exp_labels: {severity: warning, instance: a, job: fluxgate}}]
      - eval_time: 15m
        alertname: FluxgateCertificateExpiring
        exp_alerts: [{exp_labels: {severity: critical, instance: c}}]
      - eval_time: 65m
        alertname: FluxgateCertificateExpiring
        exp_alerts:
          - {exp_labels: {severity: warning, instance: b}}
          - {exp_labels: {severity: warning, instance: c}}
          - {exp_labels: {severity: critical, instance: c}}
      - eval_time: 20m
        alertname: FluxgateRangeRefreshFailing
        exp_alerts:
          - {exp_labels: {severity: warning, instance: a, set: github}}
          - {exp_labels: {severity: warning, instance: a, set: office}}
      - eval_time: 40m
        alertname: FluxgateRangeRefreshFailing
        exp_alerts: [{exp_labels: {severity: warning, instance: a, set: github}}]
"##;

fn promtool() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("promtool"))
        .find(|p| p.is_file())
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{stdout}\n{stderr}",
        out.status
    );
    print!("{stdout}");
}

#[test]
fn promtool_accepts_the_rules_and_they_fire_as_intended() {
    let Some(promtool) = promtool() else {
        println!("promtool is not on PATH: skipping `promtool check rules` and the alert unit tests (Debian: apt-get install prometheus)");
        return;
    };
    let dir = tempfile::tempdir().expect("a temporary folder");

    // The rules file as it is.
    run(Command::new(&promtool)
        .arg("check")
        .arg("rules")
        .arg(asset("alerts.yaml")));

    // Every dashboard query, with Grafana's variables filled in, as a recording rule.
    let d = dashboard();
    let mut records = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().into_iter().flatten() {
            let mut expr = t["expr"].as_str().unwrap_or_default().to_string();
            for (var, value) in [
                ("$__rate_interval", "5m"),
                ("$__interval", "1m"),
                ("$__range", "6h"),
                ("$instance", ".*"),
                ("$cluster", ".*"),
                ("$receiver", ".*"),
            ] {
                expr = expr.replace(var, value);
            }
            records.push(json!({
                "record": format!("dashboard:panel{}_{}", p["id"], t["refId"].as_str().unwrap_or("A")),
                "expr": expr,
            }));
        }
    }
    let queries = dir.path().join("dashboard-queries.yaml");
    let doc = json!({ "groups": [{ "name": "dashboard", "rules": records }] });
    std::fs::write(&queries, doc.to_string()).expect("write dashboard-queries.yaml");
    run(Command::new(&promtool)
        .arg("check")
        .arg("rules")
        .arg(&queries));

    // The alert unit tests, which must cover every alert.
    let tests: Value = serde_saphyr::from_str(PROMTOOL_TESTS).expect("PROMTOOL_TESTS");
    let tested: BTreeSet<&str> = tests["tests"]
        .as_array()
        .expect("tests")
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_array().into_iter().flatten())
        .filter_map(|case| case["alertname"].as_str())
        .collect();
    let mut file = rules_file();
    for group in file["groups"].as_array_mut().expect("groups") {
        for rule in group["rules"].as_array_mut().expect("rules") {
            let name = rule["alert"].as_str().unwrap_or_default();
            assert!(tested.contains(name), "no promtool unit test for {name}");
            rule.as_object_mut().expect("a rule").remove("annotations");
        }
    }
    std::fs::write(dir.path().join("rules.json"), file.to_string()).expect("write rules.json");
    let unit = dir.path().join("tests.yaml");
    std::fs::write(&unit, PROMTOOL_TESTS).expect("write tests.yaml");
    run(Command::new(&promtool).arg("test").arg("rules").arg(&unit));
}

/// The expression of a dashboard panel's target, with the variables as Grafana fills them in.
fn panel_expr(d: &Value, title: &str, ref_id: &str, cluster: &str) -> String {
    let (_, _, expr) = panel_queries(d)
        .into_iter()
        .find(|(t, r, _)| t == title && r == ref_id)
        .unwrap_or_else(|| panic!("no panel {title:?} with a target {ref_id}"));
    expr.replace("$instance", ".*").replace("$cluster", cluster)
}

#[test]
fn promtool_dashboard_queries_match_with_and_without_a_cluster_label() {
    let Some(promtool) = promtool() else {
        println!("promtool is not on PATH: skipping the dashboard's query tests");
        return;
    };
    let d = dashboard();
    // A fluxgate without clusters (no label) and a fleet of two, one of them down.
    let input = json!([
        {"series": r#"fluxgate_kubernetes_api_up{instance="old"}"#, "values": "1x5"},
        {"series": r#"fluxgate_kubernetes_api_up{instance="fleet",cluster="prod-eu"}"#, "values": "1x5"},
        {"series": r#"fluxgate_kubernetes_api_up{instance="fleet",cluster="prod-us"}"#, "values": "0x5"},
        {"series": r#"fluxgate_relay_queue_depth{instance="old"}"#, "values": "2x5"},
        {"series": r#"fluxgate_relay_queue_depth{instance="fleet",cluster="prod-eu"}"#, "values": "0x5"},
        {"series": r#"fluxgate_relay_queue_depth{instance="fleet",cluster="prod-us"}"#, "values": "5x5"},
    ]);
    let sample = |labels: &str, value: f64| json!({"labels": labels, "value": value});
    let case = |expr: String, samples: Vec<Value>| json!({"expr": expr, "eval_time": "3m", "exp_samples": samples});
    let all = ".*";
    let cases = vec![
        // All: the unlabelled series counts with the fleet's.
        case(
            panel_expr(&d, "Queue depth", "A", all),
            vec![sample("{}", 7.0)],
        ),
        case(
            panel_expr(&d, "Kubernetes API", "A", all),
            vec![
                sample(r#"fluxgate_kubernetes_api_up{instance="old"}"#, 1.0),
                sample(
                    r#"fluxgate_kubernetes_api_up{instance="fleet",cluster="prod-eu"}"#,
                    1.0,
                ),
                sample(
                    r#"fluxgate_kubernetes_api_up{instance="fleet",cluster="prod-us"}"#,
                    0.0,
                ),
            ],
        ),
        // The per-cluster table calls the unlabelled cluster "default", as fluxgate does.
        case(
            panel_expr(&d, "Clusters", "A", all),
            vec![
                sample(r#"{cluster="default"}"#, 1.0),
                sample(r#"{cluster="prod-eu"}"#, 1.0),
                sample(r#"{cluster="prod-us"}"#, 0.0),
            ],
        ),
        case(
            panel_expr(&d, "Clusters", "B", all),
            vec![
                sample(r#"{cluster="default"}"#, 2.0),
                sample(r#"{cluster="prod-eu"}"#, 0.0),
                sample(r#"{cluster="prod-us"}"#, 5.0),
            ],
        ),
        // One cluster chosen: only its series.
        case(
            panel_expr(&d, "Queue depth", "A", "prod-us"),
            vec![sample("{}", 5.0)],
        ),
        case(
            panel_expr(&d, "Kubernetes API per cluster", "A", "prod-us"),
            vec![sample(r#"{cluster="prod-us"}"#, 0.0)],
        ),
    ];
    let doc = json!({
        "rule_files": [],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": input, "promql_expr_test": cases}],
    });
    let dir = tempfile::tempdir().expect("a temporary folder");
    let file = dir.path().join("dashboard-tests.yaml");
    std::fs::write(&file, doc.to_string()).expect("write dashboard-tests.yaml");
    run(Command::new(&promtool).arg("test").arg("rules").arg(&file));
}
