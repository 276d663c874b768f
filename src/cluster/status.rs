//! The state of each Receiver watch, for `/readyz`, the metrics and the log.

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

/// One entry per watched namespace (`*`: all of them).
pub struct WatchStatus {
    scopes: Mutex<BTreeMap<String, Scope>>,
}

impl WatchStatus {
    pub fn new(namespaces: &[String]) -> Self {
        let m = metrics::get();
        for ns in namespaces {
            m.cluster_watch_up.with_label_values(&[ns.as_str()]).set(0);
            m.cluster_watch_failures.with_label_values(&[ns.as_str()]);
        }
        WatchStatus {
            scopes: Mutex::new(
                namespaces
                    .iter()
                    .map(|n| (n.clone(), Scope::default()))
                    .collect(),
            ),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut BTreeMap<String, Scope>) -> R) -> R {
        let mut scopes = match self.scopes.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        f(&mut scopes)
    }

    /// The namespace's Receivers were listed and are served.
    pub fn listed(&self, scope: &str) {
        let recovered = self.with(|s| {
            let e = s.entry(scope.to_string()).or_default();
            e.listed = true;
            e.failure.take().is_some()
        });
        if recovered {
            tracing::info!(namespace = scope, "watching Receivers again");
        }
        metrics::get()
            .cluster_watch_up
            .with_label_values(&[scope])
            .set(1);
    }

    /// The watch failed; the Receivers known so far stay served while it is retried.
    pub fn failed(&self, scope: &str, why: &str) {
        let first = self.with(|s| {
            let e = s.entry(scope.to_string()).or_default();
            let first = e.failure.as_deref() != Some(why);
            e.failure = Some(why.to_string());
            first
        });
        let m = metrics::get();
        m.cluster_watch_up.with_label_values(&[scope]).set(0);
        m.cluster_watch_failures.with_label_values(&[scope]).inc();
        if first {
            tracing::warn!(
                namespace = scope,
                "watching Receivers failed, serving the last known ones and retrying: {why}"
            );
        } else {
            tracing::debug!(namespace = scope, "watching Receivers failed again: {why}");
        }
    }

    /// Ready once every namespace was listed: before that, its Receivers' paths would be 404.
    /// A later failure keeps the gateway ready, serving the last known Receivers.
    pub fn ready(&self) -> Result<(), String> {
        self.with(|s| {
            let waiting: Vec<String> = s
                .iter()
                .filter(|(_, v)| !v.listed)
                .map(|(ns, v)| match &v.failure {
                    Some(f) => format!("{ns} ({f})"),
                    None => ns.clone(),
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
