//! The Secrets that Receivers name, read one at a time with GET. A Role limited to named
//! Secrets (`resourceNames`) allows no list or watch of them (short of one watch per Secret), so
//! a Secret is read when a Receiver naming it appears or changes, and again every
//! `cluster.secret_refresh` to notice a new token or a deleted Secret.

use super::object::SecretData;
use crate::metrics;
use crate::relay::kube::ApiError;
use crate::secret::Secret;
use k8s_openapi::api::core::v1::Secret as SecretObject;
use kube::{Api, Client};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

/// A Secret by namespace and name.
pub type SecretKey = (String, String);

/// What is known of one Secret.
#[derive(Debug, Clone)]
pub enum SecretState {
    Found(Arc<SecretData>),
    /// Why its Receivers are not served: not found, forbidden, or not read yet.
    Unreadable(String),
}

/// One GET's result.
enum Read {
    Found(SecretData),
    /// 404 or 403: the Receivers naming it are not served until a read succeeds.
    Refused(String),
    /// Unreachable, throttled, 5xx: worth another try soon; what was known stays.
    Failed(String),
}

pub struct Secrets {
    client: Client,
    /// The cluster's name, for the metrics.
    cluster: Arc<str>,
    known: HashMap<SecretKey, SecretState>,
    /// Secrets whose reads fail while their last token is kept, warned about once.
    failing: HashSet<SecretKey>,
}

impl Secrets {
    pub fn new(client: Client, cluster: Arc<str>) -> Self {
        Secrets {
            client,
            cluster,
            known: HashMap::new(),
            failing: HashSet::new(),
        }
    }

    pub fn get(&self, key: &SecretKey) -> Option<&SecretState> {
        self.known.get(key)
    }

    /// Reads these Secrets (at once). Returns true when one whose token is not known yet could
    /// not be read, and should be tried again before the next refresh; one whose token is
    /// known keeps it until a read succeeds or finds it gone.
    pub async fn read(&mut self, keys: &BTreeSet<SecretKey>) -> bool {
        let reads = keys.iter().map(|k| fetch(&self.client, &self.cluster, k));
        let results = futures::future::join_all(reads).await;
        let mut retry = false;
        for (key, read) in keys.iter().cloned().zip(results) {
            let label = format!("{}/{}", key.0, key.1);
            let state = match read {
                Read::Found(data) => SecretState::Found(Arc::new(data)),
                Read::Refused(why) => SecretState::Unreadable(why),
                Read::Failed(why) => match self.known.get(&key) {
                    Some(SecretState::Found(_)) => {
                        if self.failing.insert(key) {
                            tracing::warn!(secret = %label, "cannot read Secret {label}, keeping its last token: {why}");
                        }
                        continue;
                    }
                    _ => {
                        retry = true;
                        SecretState::Unreadable(format!("cannot read Secret {label} yet: {why}"))
                    }
                },
            };
            self.failing.remove(&key);
            self.known.insert(key, state);
        }
        retry
    }

    /// Forgets Secrets outside `wanted`.
    pub fn keep_only(&mut self, wanted: &BTreeSet<SecretKey>) {
        self.known.retain(|k, _| wanted.contains(k));
        self.failing.retain(|k| wanted.contains(k));
    }
}

/// What a Receiver's Secret holds for fluxgate, its bytes as stored.
pub fn secret_data(s: SecretObject) -> SecretData {
    let mut data = s.data.unwrap_or_default();
    let mut take = |k: &str| data.remove(k).map(|b| b.0);
    SecretData {
        token: take("token").map(Secret::new),
        email: take("email"),
        audience: take("audience"),
        version: s.metadata.resource_version.unwrap_or_default(),
    }
}

async fn fetch(client: &Client, cluster: &str, (namespace, name): &SecretKey) -> Read {
    let counter = &metrics::get().cluster_secret_reads;
    let count = |result: &str| counter.with_label_values(&[cluster, result]).inc();
    let api: Api<SecretObject> = Api::namespaced(client.clone(), namespace);
    let label = format!("{namespace}/{name}");
    match api.get(name).await.map_err(ApiError::from) {
        Ok(s) => {
            count("ok");
            Read::Found(secret_data(s))
        }
        Err(e) if e.code() == Some(404) => {
            count("not_found");
            Read::Refused(format!("Secret {label} not found"))
        }
        Err(e) if e.code() == Some(403) => {
            count("forbidden");
            Read::Refused(format!(
                "not allowed to get Secret {label} (list it in the Role's resourceNames, see deploy/cluster-mode/): {e}"
            ))
        }
        Err(e) => {
            count("failed");
            Read::Failed(e.to_string())
        }
    }
}
