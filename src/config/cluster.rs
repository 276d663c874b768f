//! `[cluster]`: serving Flux `Receiver` objects from the cluster, besides the file's receivers.
//! `[cluster.defaults]` gives what a Receiver object cannot say (who may deliver, replays), with
//! the meaning the same keys have in `[[receivers]]`.

use super::receivers::{self, RawReceiver};
use super::{duration, Problems};
use crate::fleet::{ClusterId, ClusterSelector, ClusterSpec};
use crate::guard::ranges::RangeSets;
use crate::relay::target::check_dns_label;
use crate::secret::Secret;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    #[serde(default)]
    watch_receivers: bool,
    namespaces: Option<Vec<String>>,
    secret_refresh: Option<String>,
    /// Whose Receivers are followed: cluster names, or `["*"]` (the default: every cluster).
    clusters: Option<Vec<String>>,
    /// Or the clusters whose labels include all of these.
    cluster_selector: Option<BTreeMap<String, String>>,
    #[serde(default)]
    defaults: ReceiverDefaults,
}

/// `[cluster.defaults]`: receiver keys applied to every Receiver object.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiverDefaults {
    #[serde(default)]
    pub allow_from: Vec<String>,
    pub replay_window: Option<String>,
    pub delivery_id_header: Option<String>,
    pub jwks: Option<String>,
    /// The cap on bodies of body-keeping Receivers, in place of the 3 MiB default.
    pub max_body_bytes: Option<u64>,
    /// `kubernetes.no_cross_namespace_refs`, which Receiver objects must follow too.
    #[serde(skip)]
    pub rules: super::Rules,
}

impl ReceiverDefaults {
    /// Adds the defaults to a receiver's fields, under the keys `[[receivers]]` uses.
    pub fn fill(&self, fields: &mut Map<String, Value>) {
        if !self.allow_from.is_empty() {
            fields.insert("allow_from".into(), json!(self.allow_from));
        }
        if let Some(n) = self.max_body_bytes {
            fields.insert("max_body_bytes".into(), json!(n));
        }
        for (key, value) in [
            ("replay_window", &self.replay_window),
            ("delivery_id_header", &self.delivery_id_header),
            ("jwks", &self.jwks),
        ] {
            if let Some(v) = value {
                fields.insert(key.into(), json!(v));
            }
        }
    }
}

/// What `[cluster]` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    pub watch_receivers: bool,
    /// Where Receivers are watched, one watch each; `["*"]`: one watch over all namespaces.
    pub namespaces: Vec<String>,
    /// How often the Secrets that Receivers name are read again, to follow rotation and
    /// deletion (a Role limited to named Secrets cannot list or watch them).
    pub secret_refresh: Duration,
    pub defaults: ReceiverDefaults,
    /// The clusters whose Receivers are followed, by position in the fleet (default: all).
    /// The same Receiver found in several of them is one path reconciling in each.
    pub clusters: Vec<ClusterId>,
}

/// All namespaces, in `namespaces`.
pub const ALL_NAMESPACES: &str = "*";

pub(super) fn cluster(
    raw: RawCluster,
    fleet: &[ClusterSpec],
    sets: &mut RangeSets,
    p: &mut Problems,
) -> ClusterSettings {
    let selector = ClusterSelector::from_keys(
        "cluster",
        raw.clusters.as_deref(),
        raw.cluster_selector.as_ref(),
    )
    .map_err(|(k, why)| p.add(k, why))
    .ok()
    .flatten()
    .unwrap_or(ClusterSelector::All);
    let key = if raw.cluster_selector.is_some() {
        "cluster.cluster_selector"
    } else {
        "cluster.clusters"
    };
    let clusters = match selector.resolve(fleet) {
        Ok(ids) => ids,
        // Without any cluster configured, [kubernetes] reports what is missing.
        Err(_) if fleet.is_empty() => Vec::new(),
        Err(e) => {
            if raw.watch_receivers {
                p.add(key, e);
            }
            Vec::new()
        }
    };
    let namespaces = raw
        .namespaces
        .unwrap_or_else(|| vec!["flux-system".to_string()]);
    if namespaces.is_empty() {
        p.add(
            "cluster.namespaces",
            "empty; list the namespaces whose Receivers to serve, or [\"*\"] for all",
        );
    }
    for (i, ns) in namespaces.iter().enumerate() {
        let key = format!("cluster.namespaces[{i}]");
        if ns == ALL_NAMESPACES {
            if namespaces.len() > 1 {
                p.add(key, "\"*\" (every namespace) must be the only entry");
            }
        } else if namespaces[..i].contains(ns) {
            p.add(key, format!("{ns:?} is listed twice"));
        } else {
            p.take(&key, check_dns_label(ns));
        }
    }
    let secret_refresh = duration(
        "cluster.secret_refresh",
        raw.secret_refresh.as_deref(),
        Duration::from_secs(60),
        p,
    );
    check_defaults(&raw.defaults, sets, p);
    ClusterSettings {
        watch_receivers: raw.watch_receivers,
        namespaces,
        secret_refresh,
        defaults: raw.defaults,
        clusters,
    }
}

/// Checks the defaults with the code that will apply them: a receiver built with them alone.
/// Their problems are named `cluster.defaults.KEY`, and range sets they name are registered.
fn check_defaults(d: &ReceiverDefaults, sets: &mut RangeSets, p: &mut Problems) {
    let mut fields = Map::new();
    fields.insert("name".into(), json!("defaults"));
    fields.insert("namespace".into(), json!("default"));
    fields.insert("type".into(), json!("generic"));
    fields.insert(
        "resources".into(),
        json!([{"kind": "GitRepository", "name": "defaults"}]),
    );
    d.fill(&mut fields);
    let raw: RawReceiver = match serde_json::from_value(Value::Object(fields)) {
        Ok(r) => r,
        Err(e) => return p.add("cluster.defaults", e.to_string()),
    };
    let token = Some(Secret::new(b"defaults".to_vec()));
    if let Err(problems) = receivers::from_token(0, "cluster.defaults", raw, token, d.rules, sets) {
        p.0.extend(problems);
    }
}
