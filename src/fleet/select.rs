//! Which clusters a receiver or resource reaches: `clusters = [...]`, `clusters = ["*"]` or
//! `cluster_selector = { ... }`.

use super::{ClusterId, ClusterSpec, DEFAULT};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterSelector {
    /// By name, in the order given.
    Names(Vec<String>),
    /// `["*"]`: every cluster.
    All,
    /// Every cluster whose labels include all of these.
    Labels(BTreeMap<String, String>),
}

impl Default for ClusterSelector {
    fn default() -> Self {
        ClusterSelector::Names(vec![DEFAULT.to_string()])
    }
}

/// A target's selector with the configuration key it came from, for errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub key: String,
    pub selector: ClusterSelector,
}

impl ClusterSelector {
    /// From the two keys as written; `None` when neither is set. `Err` names the key.
    pub fn from_keys(
        key: &str,
        clusters: Option<&[String]>,
        labels: Option<&BTreeMap<String, String>>,
    ) -> Result<Option<ClusterSelector>, (String, String)> {
        match (clusters, labels) {
            (Some(_), Some(_)) => Err((
                format!("{key}.cluster_selector"),
                "give clusters or cluster_selector, not both".into(),
            )),
            (Some([]), None) => Err((
                format!("{key}.clusters"),
                "empty; name at least one cluster, or \"*\" for all".into(),
            )),
            (Some(names), None) if names.iter().any(|n| n == "*") => {
                if names.len() > 1 {
                    Err((
                        format!("{key}.clusters"),
                        "\"*\" means every cluster and stands alone".into(),
                    ))
                } else {
                    Ok(Some(ClusterSelector::All))
                }
            }
            (Some(names), None) => Ok(Some(ClusterSelector::Names(names.to_vec()))),
            (None, Some(l)) if l.is_empty() => Err((
                format!("{key}.cluster_selector"),
                "empty; give at least one label, or clusters = [\"*\"] for all".into(),
            )),
            (None, Some(l)) => Ok(Some(ClusterSelector::Labels(l.clone()))),
            (None, None) => Ok(None),
        }
    }

    /// The clusters picked among `specs`; an unknown name, or nothing picked, is an error.
    pub fn resolve(&self, specs: &[ClusterSpec]) -> Result<Vec<ClusterId>, String> {
        if let ClusterSelector::Names(names) = self {
            for n in names {
                if !specs.iter().any(|s| &s.name == n) {
                    let known: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
                    return Err(format!(
                        "no cluster named {n:?}; configured: {}",
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        }
                    ));
                }
            }
        }
        let picked = pick(specs.iter().map(|s| (s.name.as_str(), &s.labels)), self);
        if picked.is_empty() {
            return Err(match self {
                ClusterSelector::Labels(l) => format!(
                    "{} matches no cluster",
                    l.iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(",")
                ),
                _ => "no cluster configured".to_string(),
            });
        }
        Ok(picked)
    }
}

/// The positions of the clusters `selector` picks, without repeats, in fleet order.
pub fn pick<'a>(
    clusters: impl Iterator<Item = (&'a str, &'a BTreeMap<String, String>)>,
    selector: &ClusterSelector,
) -> Vec<ClusterId> {
    clusters
        .enumerate()
        .filter(|(_, (name, labels))| match selector {
            ClusterSelector::All => true,
            ClusterSelector::Names(names) => names.iter().any(|n| n == name),
            ClusterSelector::Labels(want) => want.iter().all(|(k, v)| labels.get(k) == Some(v)),
        })
        .map(|(i, _)| i)
        .collect()
}

/// A cluster name: a DNS label, as it appears in metrics, answers and queue keys.
pub fn check_name(name: &str) -> Result<(), String> {
    let b = name.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-';
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid cluster name (at most 63 lower-case letters, digits and '-')"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn spec(name: &str, labels: &[(&str, &str)]) -> ClusterSpec {
        ClusterSpec {
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            kubeconfig: "/k".into(),
            context: None,
            timeout: Duration::from_secs(1),
        }
    }

    fn fleet() -> Vec<ClusterSpec> {
        vec![
            spec("default", &[]),
            spec("prod-eu", &[("env", "prod"), ("region", "eu")]),
            spec("prod-us", &[("env", "prod"), ("region", "us")]),
            spec("staging", &[("env", "staging")]),
        ]
    }

    fn labels(l: &[(&str, &str)]) -> BTreeMap<String, String> {
        l.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn selection_by_name_all_and_labels() {
        let f = fleet();
        let names = |n: &[&str]| ClusterSelector::Names(n.iter().map(|s| s.to_string()).collect());
        assert_eq!(ClusterSelector::default().resolve(&f), Ok(vec![0]));
        assert_eq!(names(&["prod-us", "prod-eu"]).resolve(&f), Ok(vec![1, 2]));
        assert_eq!(ClusterSelector::All.resolve(&f), Ok(vec![0, 1, 2, 3]));
        let prod = ClusterSelector::Labels(labels(&[("env", "prod")]));
        assert_eq!(prod.resolve(&f), Ok(vec![1, 2]));
        let eu = ClusterSelector::Labels(labels(&[("env", "prod"), ("region", "eu")]));
        assert_eq!(eu.resolve(&f), Ok(vec![1]));
    }

    #[test]
    fn unknown_names_and_empty_selections_are_errors() {
        let f = fleet();
        let e = ClusterSelector::Names(vec!["prod-ap".into()])
            .resolve(&f)
            .unwrap_err();
        assert!(e.contains("\"prod-ap\"") && e.contains("prod-eu"), "{e}");
        let e = ClusterSelector::Labels(labels(&[("env", "dev")]))
            .resolve(&f)
            .unwrap_err();
        assert_eq!(e, "env=dev matches no cluster");
        // Without [kubernetes], the default reaches nothing.
        let e = ClusterSelector::default().resolve(&f[1..]).unwrap_err();
        assert!(e.contains("no cluster named \"default\""), "{e}");
    }

    #[test]
    fn the_two_keys_are_exclusive_and_must_not_be_empty() {
        let l = labels(&[("env", "prod")]);
        let star = ["*".to_string()];
        let two = ["*".to_string(), "a".to_string()];
        let k = |r: Result<Option<ClusterSelector>, (String, String)>| r.unwrap_err().0;
        assert_eq!(
            k(ClusterSelector::from_keys("r", Some(&star), Some(&l))),
            "r.cluster_selector"
        );
        assert_eq!(
            k(ClusterSelector::from_keys("r", Some(&[]), None)),
            "r.clusters"
        );
        assert_eq!(
            k(ClusterSelector::from_keys("r", Some(&two), None)),
            "r.clusters"
        );
        assert_eq!(
            k(ClusterSelector::from_keys(
                "r",
                None,
                Some(&BTreeMap::new())
            )),
            "r.cluster_selector"
        );
        assert_eq!(
            ClusterSelector::from_keys("r", Some(&star), None),
            Ok(Some(ClusterSelector::All))
        );
        assert_eq!(ClusterSelector::from_keys("r", None, None), Ok(None));
    }

    #[test]
    fn names_are_dns_labels() {
        assert!(check_name("prod-eu-1").is_ok());
        for bad in ["", "Prod", "-a", "a-", "a.b", &"x".repeat(64)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
