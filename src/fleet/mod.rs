//! The fleet: every Kubernetes cluster one fluxgate reconciles in. Each cluster has its name,
//! labels, API client, health, and a queue of its own (in-flight limit, backoff, coalescing),
//! all sharing one durable store, so a cluster that is down, slow or refusing never holds up
//! another. `[kubernetes]` is the cluster named `default`; `[[clusters]]` add more.
//!
//! `config` builds [`ClusterSpec`]s and [`ClusterSelector`]s and resolves each target's
//! clusters at load time; the relay and the edge reach the clusters through [`Fleet`].

pub mod select;

use crate::metrics;
use crate::relay::job::Job;
use crate::relay::kube::KubeApi;
use crate::relay::queue::Queue;
use crate::relay::store::{Store, ADOPT_EVERY};
use crate::relay::QueueSettings;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use select::{ClusterSelector, Placement};

/// The name `[kubernetes]` goes by, and the cluster a target reaches when it names none.
pub const DEFAULT: &str = "default";

/// A cluster's position in the fleet: `[kubernetes]` first when set, then `[[clusters]]` in
/// order. A reload cannot change the set, so positions hold for the life of the process.
pub type ClusterId = usize;

/// One cluster as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSpec {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub kubeconfig: PathBuf,
    pub context: Option<String>,
    pub timeout: Duration,
}

/// One cluster at run time.
pub struct Cluster {
    pub name: Arc<str>,
    pub labels: BTreeMap<String, String>,
    pub api: Arc<KubeApi>,
    pub queue: Arc<Queue>,
    /// The last health check's verdict; true until the first check says otherwise.
    up: AtomicBool,
}

impl Cluster {
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Checks the API with the cluster's credentials, within 3 s, and publishes the result.
    pub async fn check(&self) -> Result<(), String> {
        let r = match tokio::time::timeout(Duration::from_secs(3), self.api.check_reachable()).await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("Kubernetes API {e}")),
            Err(_) => Err("Kubernetes API did not answer within 3s".to_string()),
        };
        self.up.store(r.is_ok(), Ordering::Relaxed);
        metrics::get()
            .kubernetes_api_up
            .with_label_values(&[&self.name])
            .set(i64::from(r.is_ok()));
        r
    }
}

pub struct Fleet {
    clusters: Vec<Cluster>,
    store: Store,
}

impl Fleet {
    /// One queue per cluster on the shared `store`; `resumed` jobs go to their cluster's
    /// queue. `configs` are the clusters' loaded kubeconfigs, in the order of `specs`.
    pub fn new(
        specs: &[ClusterSpec],
        configs: Vec<kube::Config>,
        store: Store,
        settings: &QueueSettings,
        resumed: Vec<Job>,
    ) -> Fleet {
        let clusters = specs
            .iter()
            .zip(configs)
            .map(|(spec, config)| {
                let name: Arc<str> = spec.name.as_str().into();
                let api = Arc::new(KubeApi::new(config));
                let queue = Arc::new(Queue::for_cluster(
                    name.clone(),
                    store.clone(),
                    api.clone(),
                    settings.clone(),
                    Vec::new(),
                ));
                Cluster {
                    name,
                    labels: spec.labels.clone(),
                    api,
                    queue,
                    up: AtomicBool::new(true),
                }
            })
            .collect();
        let fleet = Fleet { clusters, store };
        fleet.route(resumed);
        fleet
    }

    pub fn clusters(&self) -> &[Cluster] {
        &self.clusters
    }

    pub fn cluster(&self, id: ClusterId) -> Option<&Cluster> {
        self.clusters.get(id)
    }

    /// The cluster that cluster mode and forward mode use: `default`, or the first one.
    pub fn home(&self) -> &Cluster {
        &self.clusters[0]
    }

    pub fn is_durable(&self) -> bool {
        self.store.is_durable()
    }

    /// The clusters a selector picks; unknown names pick nothing.
    pub fn select(&self, selector: &ClusterSelector) -> Vec<ClusterId> {
        select::pick(
            self.clusters.iter().map(|c| (&*c.name, &c.labels)),
            selector,
        )
    }

    /// Each cluster's name and whether its API answered the last check.
    pub fn health(&self) -> Vec<(&str, bool)> {
        self.clusters
            .iter()
            .map(|c| (&*c.name, c.is_up()))
            .collect()
    }

    /// Checks every cluster at once; the result per cluster, in order.
    pub async fn check_all(&self) -> Vec<Result<(), String>> {
        futures::future::join_all(self.clusters.iter().map(Cluster::check)).await
    }

    /// Hands jobs to their clusters' queues. A job stored by a version without clusters
    /// belongs to `default`; one for a cluster no longer configured stays in the store (this
    /// process's file, adopted by the next) and is reported.
    pub fn route(&self, jobs: Vec<Job>) {
        let mut by_cluster: Vec<Vec<Job>> = self.clusters.iter().map(|_| Vec::new()).collect();
        for job in jobs {
            match self.clusters.iter().position(|c| c.name == job.cluster) {
                Some(i) => by_cluster[i].push(job),
                None => tracing::warn!(
                    cluster = %job.cluster,
                    target_object = %job.target,
                    "a queued job is for a cluster that is not configured; it stays on disk"
                ),
            }
        }
        for (c, jobs) in self.clusters.iter().zip(by_cluster) {
            if !jobs.is_empty() {
                c.queue.take(jobs);
            }
        }
    }

    /// Works every cluster's queue, and adopts the jobs of processes that are gone, until
    /// the process ends.
    pub async fn run(self: Arc<Self>) {
        for c in &self.clusters {
            tokio::spawn(c.queue.clone().run());
        }
        if !self.store.is_durable() {
            return std::future::pending().await;
        }
        let mut tick = tokio::time::interval(ADOPT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let adopted = self.store.adopt().await;
            if !adopted.is_empty() {
                self.route(adopted);
            }
        }
    }
}
