//! The relay: turns a verified delivery into "reconcile now" requests on its targets.

pub mod kube;
pub mod target;

use self::kube::{ApiError, KubeApi};
use self::target::{Select, Target};
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};

/// One object that was asked to reconcile.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Patched {
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

/// What happened to every target of one delivery.
#[derive(Debug, Default)]
pub struct Outcome {
    pub requested_at: String,
    pub patched: Vec<Patched>,
    /// Label selectors that matched nothing: not an error, as in Flux, but worth showing.
    pub unmatched: Vec<String>,
    pub failed: Vec<(String, ApiError)>,
}

pub struct Relay {
    api: KubeApi,
}

impl Relay {
    pub fn new(api: KubeApi) -> Self {
        Relay { api }
    }

    pub fn api(&self) -> &KubeApi {
        &self.api
    }

    /// Patches every target. A failure on one does not stop the others, as in Flux.
    pub async fn reconcile(&self, targets: &[Target]) -> Outcome {
        let mut out = Outcome {
            requested_at: requested_at(),
            ..Default::default()
        };
        for t in targets {
            let names = match &t.select {
                Select::Name(n) => vec![n.clone()],
                Select::Labels(_) => {
                    let selector = t.label_selector().unwrap_or_default();
                    match self.api.list_names(t, &selector).await {
                        Ok(names) if names.is_empty() => {
                            out.unmatched.push(t.to_string());
                            continue;
                        }
                        Ok(names) => names,
                        Err(e) => {
                            out.failed.push((t.to_string(), e));
                            continue;
                        }
                    }
                }
            };
            for name in names {
                match self
                    .api
                    .request_reconcile(t, &name, &out.requested_at)
                    .await
                {
                    Ok(()) => out.patched.push(Patched {
                        api_version: t.api_version(),
                        kind: t.kind.clone(),
                        namespace: t.namespace.clone(),
                        name,
                    }),
                    Err(e) => out
                        .failed
                        .push((format!("{} {}/{}", t.kind, t.namespace, name), e)),
                }
            }
        }
        out
    }
}

/// RFC 3339 with nanoseconds, as `flux reconcile` writes it. Flux reconciles when the value
/// changes, so two deliveries in the same nanosecond must still get different values: the clock
/// is forced forward by at least one nanosecond per call.
pub fn requested_at() -> String {
    static LAST: AtomicU64 = AtomicU64::new(0);
    // u64 nanoseconds since 1970 last until the year 2554.
    let now = u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos()).unwrap_or(0);
    let prev = LAST
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
            Some(now.max(last + 1))
        })
        .unwrap_or(now);
    let nanos = now.max(prev + 1);
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(nanos))
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requested_at_is_rfc3339_and_strictly_increasing() {
        let a = requested_at();
        let b = requested_at();
        assert_ne!(a, b);
        assert!(a.ends_with('Z') && a.contains('T'), "{a}");
        time::OffsetDateTime::parse(&b, &time::format_description::well_known::Rfc3339).unwrap();
    }
}
