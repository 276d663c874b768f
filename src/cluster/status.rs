//! The state of each Receiver watch (one per cluster and namespace), for `/readyz`, the
//! metrics and the log.

use crate::metrics;
use std::collections::BTreeMap;
use std::sync::Mutex;

#[derive(Debug, Default)]
struct Scope {
    /// Listed at least once: its Receivers are known.
    listed: bool,
    /// The last failure since the last successful list.
    failure: Option<String>,
}

/// One entry per watched cluster and namespace (`*`: all of them).
pub struct WatchStatus {
    scopes: Mutex<BTreeMap<(String, String), Scope>>,
    /// Several clusters: messages name the cluster too.
    fleet: bool,
}

impl WatchStatus {
    pub fn new(clusters: &[&str], namespaces: &[String]) -> Self {
        let m = metrics::get();
        let mut scopes = BTreeMap::new();
        for c in clusters {
            for ns in namespaces {
                m.cluster_watch_up
                    .with_label_values(&[*c, ns.as_str()])
                    .set(0);
                m.cluster_watch_failures
                    .with_label_values(&[*c, ns.as_str()]);
                scopes.insert((c.to_string(), ns.clone()), Scope::default());
            }
        }
        WatchStatus {
            scopes: Mutex::new(scopes),
            fleet: clusters.len() > 1,
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut BTreeMap<(String, String), Scope>) -> R) -> R {
        let mut scopes = match self.scopes.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        f(&mut scopes)
    }

    fn name(&self, cluster: &str, ns: &str) -> String {
        if self.fleet {
            format!("{cluster}/{ns}")
        } else {
            ns.to_string()
        }
    }

    /// The namespace's Receivers were listed in the cluster and are served.
    pub fn listed(&self, cluster: &str, scope: &str) {
        let recovered = self.with(|s| {
            let e = s
                .entry((cluster.to_string(), scope.to_string()))
                .or_default();
            e.listed = true;
            e.failure.take().is_some()
        });
        if recovered {
            tracing::info!(cluster, namespace = scope, "watching Receivers again");
        }
        metrics::get()
            .cluster_watch_up
            .with_label_values(&[cluster, scope])
            .set(1);
    }

    /// The watch failed; the Receivers known so far stay served while it is retried.
    pub fn failed(&self, cluster: &str, scope: &str, why: &str) {
        let first = self.with(|s| {
            let e = s
                .entry((cluster.to_string(), scope.to_string()))
                .or_default();
            let first = e.failure.as_deref() != Some(why);
            e.failure = Some(why.to_string());
            first
        });
        let m = metrics::get();
        m.cluster_watch_up
            .with_label_values(&[cluster, scope])
            .set(0);
        m.cluster_watch_failures
            .with_label_values(&[cluster, scope])
            .inc();
        if first {
            tracing::warn!(
                cluster,
                namespace = scope,
                "watching Receivers failed, serving the last known ones and retrying: {why}"
            );
        } else {
            tracing::debug!(
                cluster,
                namespace = scope,
                "watching Receivers failed again: {why}"
            );
        }
    }

    /// Ready once every namespace was listed: before that, its Receivers' paths would be 404.
    /// With several clusters, a cluster whose watch fails does not hold the others up: ready
    /// once every watch has listed or failed, and every namespace was listed in at least one
    /// cluster (the failing one's part is added when its watch lists). A later failure keeps
    /// the gateway ready, serving the last known Receivers.
    pub fn ready(&self) -> Result<(), String> {
        self.with(|s| {
            let listed_somewhere = |ns: &str| s.iter().any(|((_, n), v)| n == ns && v.listed);
            let waiting: Vec<String> = s
                .iter()
                .filter(|((_, ns), v)| !v.listed && (v.failure.is_none() || !listed_somewhere(ns)))
                .map(|((c, ns), v)| match &v.failure {
                    Some(f) => format!("{} ({f})", self.name(c, ns)),
                    None => self.name(c, ns),
                })
                .collect();
            if waiting.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "Receivers not listed yet in {}",
                    waiting.join(", ")
                ))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_cluster_holds_readiness_only_until_another_lists_the_namespace() {
        let s = WatchStatus::new(&["status-a", "status-b"], &["ns".to_string()]);
        assert!(s.ready().is_err(), "nothing listed yet");
        s.failed("status-b", "ns", "connection refused");
        let e = s.ready().unwrap_err();
        assert!(
            e.contains("status-a/ns") && e.contains("status-b/ns (connection refused)"),
            "{e}"
        );
        s.listed("status-a", "ns");
        assert_eq!(s.ready(), Ok(()));

        let one = WatchStatus::new(&["status-c"], &["apps".to_string()]);
        one.failed("status-c", "apps", "forbidden");
        assert_eq!(
            one.ready(),
            Err("Receivers not listed yet in apps (forbidden)".into())
        );
    }
}
