//! `[[clusters]]`: the clusters besides `[kubernetes]` (the one named `default`) that
//! receivers reach, and the resolution of each target's clusters.

use super::{duration, Problems};
use crate::fleet::select::check_name;
use crate::fleet::{ClusterSpec, DEFAULT};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    #[serde(default)]
    name: String,
    kubeconfig: Option<PathBuf>,
    context: Option<String>,
    timeout: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

/// The fleet: `default` from `[kubernetes]` when it has a kubeconfig, then `[[clusters]]` in
/// order. Each problem names its key.
pub(super) fn clusters(
    default: Option<ClusterSpec>,
    raw: Vec<RawCluster>,
    p: &mut Problems,
    warnings: &mut Vec<String>,
) -> Vec<ClusterSpec> {
    let mut out: Vec<ClusterSpec> = default.into_iter().collect();
    let mut seen: HashMap<String, String> = out
        .iter()
        .map(|c| (c.name.clone(), "[kubernetes]".to_string()))
        .collect();
    for (i, c) in raw.into_iter().enumerate() {
        let key = format!("clusters[{i}]");
        let before = p.0.len();
        if c.name.is_empty() {
            p.add(format!("{key}.name"), "missing");
        } else if let Err(e) = check_name(&c.name) {
            p.add(format!("{key}.name"), e);
        } else if let Some(first) = seen.insert(c.name.clone(), key.clone()) {
            let why = if c.name == DEFAULT && first == "[kubernetes]" {
                "\"default\" is the cluster of [kubernetes]; give this cluster another name, or move [kubernetes] here".to_string()
            } else {
                format!("duplicate cluster name {:?}: {first} has it", c.name)
            };
            p.add(format!("{key}.name"), why);
        }
        if c.kubeconfig.is_none() {
            p.add(
                format!("{key}.kubeconfig"),
                "missing; the kubeconfig of the cluster's service account",
            );
        }
        if let Some(w) = c
            .kubeconfig
            .as_deref()
            .and_then(crate::secret::loose_permissions)
        {
            warnings.push(format!("{key}.kubeconfig: {w}"));
        }
        for (k, v) in &c.labels {
            if let Err(e) = crate::relay::target::check_label(k, v) {
                p.add(format!("{key}.labels"), e);
            }
        }
        let timeout = duration(
            &format!("{key}.timeout"),
            c.timeout.as_deref(),
            Duration::from_secs(10),
            p,
        );
        if p.0.len() > before {
            continue;
        }
        if let Some(kubeconfig) = c.kubeconfig {
            out.push(ClusterSpec {
                name: c.name,
                labels: c.labels,
                kubeconfig,
                context: c.context,
                timeout,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(name: &str) -> RawCluster {
        RawCluster {
            name: name.into(),
            kubeconfig: Some(PathBuf::from("/nonexistent/kubeconfig")),
            ..RawCluster::default()
        }
    }

    fn default() -> Option<ClusterSpec> {
        Some(ClusterSpec {
            name: DEFAULT.into(),
            labels: BTreeMap::new(),
            kubeconfig: "/k".into(),
            context: None,
            timeout: Duration::from_secs(10),
        })
    }

    fn problems(d: Option<ClusterSpec>, raw: Vec<RawCluster>) -> (Vec<String>, Vec<ClusterSpec>) {
        let mut p = Problems::default();
        let out = clusters(d, raw, &mut p, &mut Vec::new());
        (
            p.0.iter()
                .map(|p| format!("{}: {}", p.key, p.reason))
                .collect(),
            out,
        )
    }

    #[test]
    fn default_comes_first_and_names_are_unique_dns_labels() {
        let mut eu = raw("prod-eu");
        eu.labels.insert("env".into(), "prod".into());
        let (p, out) = problems(default(), vec![eu, raw("prod-us")]);
        assert!(p.is_empty(), "{p:?}");
        let names: Vec<_> = out.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["default", "prod-eu", "prod-us"]);
        assert_eq!(out[1].labels["env"], "prod");

        let (p, _) = problems(default(), vec![raw("default")]);
        assert_eq!(p.len(), 1);
        assert!(p[0].starts_with("clusters[0].name: \"default\" is the cluster of [kubernetes]"));
        let (p, _) = problems(None, vec![raw("a"), raw("a")]);
        assert_eq!(
            p,
            ["clusters[1].name: duplicate cluster name \"a\": clusters[0] has it"]
        );
        let (p, _) = problems(None, vec![raw("Prod_EU"), raw("")]);
        assert!(p[0].starts_with("clusters[0].name: \"Prod_EU\" is not a valid cluster name"));
        assert_eq!(p[1], "clusters[1].name: missing");
        let mut bad = raw("b");
        bad.kubeconfig = None;
        bad.timeout = Some("soon".into());
        bad.labels.insert("bad key!".into(), "x".into());
        let (p, out) = problems(None, vec![bad]);
        assert!(out.is_empty());
        let keys: Vec<_> = p.iter().map(|p| p.split(':').next().unwrap()).collect();
        assert_eq!(
            keys,
            [
                "clusters[0].kubeconfig",
                "clusters[0].labels",
                "clusters[0].timeout"
            ]
        );
    }
}
