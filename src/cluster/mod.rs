//! Cluster mode: Flux `Receiver` objects, and the Secrets they name, served besides the file's
//! receivers and followed live, in every watched cluster of the fleet. [`watch`] follows the
//! Receivers of each cluster and namespace, [`secrets`] reads their Secrets, [`object`] turns
//! both into receivers with the code that builds the file's, [`set`] keeps each cluster's
//! current set, and [`join`] makes one path of the same Receiver in several clusters; the
//! result goes into the live configuration.
//!
//! A failing watch never stops the gateway: the last known receivers stay served while the
//! watch is retried with a backoff, and the failure is logged and counted.

pub mod join;
pub mod object;
pub mod secrets;
pub mod set;
pub mod status;
pub mod watch;

use crate::edge::live::Live;
use crate::fleet::{ClusterId, DEFAULT};
use crate::relay::kube::{error_chain, one_line};
use async_trait::async_trait;
use join::Joiner;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use secrets::{SecretKey, Secrets};
use set::ClusterSet;
use status::WatchStatus;
use std::collections::BTreeSet;
use std::sync::atomic::AtomicU32;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use watch::Change;

/// How soon a Secret that could not be read (API unreachable, throttled) is tried again.
const RETRY_SECRETS: Duration = Duration::from_secs(5);

/// One watched cluster of the fleet: what the watch service is given.
pub struct Watched {
    pub id: ClusterId,
    pub name: Arc<str>,
    pub kube: kube::Config,
}

/// The background service that follows the Receivers of every watched cluster.
pub struct ClusterWatch {
    pub live: Arc<Live>,
    pub clusters: Vec<Watched>,
    pub status: Arc<WatchStatus>,
}

/// A client for reads, and one for watches without a read timeout: a quiet watch sends
/// nothing for minutes, and the watcher has its own idle timeout.
fn clients(config: &kube::Config) -> Result<(kube::Client, kube::Client), kube::Error> {
    let mut streaming = config.clone();
    streaming.read_timeout = None;
    Ok((
        kube::Client::try_from(config.clone())?,
        kube::Client::try_from(streaming)?,
    ))
}

/// One cluster's Receivers and the Secrets they name.
struct Member {
    name: Arc<str>,
    secrets: Secrets,
    set: ClusterSet,
}

#[async_trait]
impl BackgroundService for ClusterWatch {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let (settings, sets) = self.live.cluster_inputs();
        let ids = Arc::new(AtomicU32::new(set::FIRST_ID));
        // Answers list clusters when there are several, or the one is not `default`.
        let per_cluster =
            self.clusters.len() > 1 || self.clusters.iter().any(|c| &*c.name != DEFAULT);
        let (tx, mut rx) = mpsc::channel(64);
        // Dropped when this returns, which stops the watches.
        let mut watches = tokio::task::JoinSet::new();
        let mut members = Vec::new();
        for c in &self.clusters {
            // Built here, on the service's runtime: kube's client spawns its worker where it
            // is made, and a runtime that ends would take it along.
            let (client, streaming) = match clients(&c.kube) {
                Ok(clients) => clients,
                Err(e) => {
                    let why = one_line(&error_chain(&e));
                    for ns in &settings.namespaces {
                        self.status.failed(&c.name, ns, &why);
                    }
                    continue;
                }
            };
            let m = members.len();
            for ns in &settings.namespaces {
                watches.spawn(watch::run(streaming.clone(), ns.clone(), (m, tx.clone())));
            }
            let home = set::Home {
                id: c.id,
                name: c.name.clone(),
                per_cluster,
                ids: ids.clone(),
            };
            members.push(Member {
                name: c.name.clone(),
                secrets: Secrets::new(client, c.name.clone()),
                set: ClusterSet::of(home, settings.defaults.clone(), sets.clone()),
            });
        }
        drop(tx);
        if members.is_empty() {
            return;
        }
        let names: Vec<&str> = members.iter().map(|m| &*m.name).collect();
        tracing::info!(
            namespaces = %settings.namespaces.join(","),
            clusters = %names.join(","),
            "serving the clusters' Receivers"
        );
        let mut joiner = Joiner::default();
        let mut reloads = self.live.subscribe_reloads();
        let mut refresh = settings.secret_refresh;
        let mut next_refresh = Instant::now() + refresh;
        let mut published: Vec<Arc<crate::config::Receiver>> = Vec::new();
        loop {
            let mut listed = None;
            // Which member's Secrets to read, or all of them (`None`).
            let to_read: Option<(usize, BTreeSet<SecretKey>)> = tokio::select! {
                _ = shutdown.changed() => break,
                change = rx.recv() => match change {
                    None => break,
                    Some((m, change)) => {
                        let set = &mut members[m].set;
                        match change {
                            Change::Listed { scope, objects } => {
                                let read = set.listed(&scope, objects);
                                listed = Some((m, scope));
                                Some((m, read))
                            }
                            Change::Applied(o) => Some((m, set.applied(o).into_iter().collect())),
                            Change::Deleted(o) => {
                                set.deleted(&o);
                                Some((m, BTreeSet::new()))
                            }
                            Change::Failed { scope, error } => {
                                self.status.failed(&members[m].name, &scope, &error);
                                continue;
                            }
                        }
                    }
                },
                _ = tokio::time::sleep_until(next_refresh) => {
                    next_refresh = Instant::now() + refresh;
                    None
                }
                Ok(()) = reloads.changed() => {
                    let (s, sets) = self.live.cluster_inputs();
                    for m in &mut members {
                        m.set.set_inputs(s.defaults.clone(), sets.clone());
                    }
                    refresh = s.secret_refresh;
                    next_refresh = next_refresh.min(Instant::now() + refresh);
                    Some((0, BTreeSet::new()))
                }
            };
            let retry = match to_read {
                Some((_, keys)) if keys.is_empty() => false,
                Some((m, keys)) => members[m].secrets.read(&keys).await,
                // Every cluster at once: one that is slow does not hold up the others' reads.
                None => futures::future::join_all(members.iter_mut().map(|m| {
                    let wanted = m.set.wanted();
                    async move { m.secrets.read(&wanted).await }
                }))
                .await
                .into_iter()
                .any(|r| r),
            };
            if retry {
                next_refresh = next_refresh.min(Instant::now() + RETRY_SECRETS.min(refresh));
            }
            let mut per_cluster = Vec::with_capacity(members.len());
            for m in &mut members {
                m.secrets.keep_only(&m.set.wanted());
                let secrets = &m.secrets;
                per_cluster.push((&*m.name, m.set.receivers(|k| secrets.get(k))));
            }
            let receivers = joiner.join(&per_cluster);
            let same = receivers.len() == published.len()
                && receivers
                    .iter()
                    .zip(&published)
                    .all(|(a, b)| Arc::ptr_eq(a, b));
            if !same {
                self.live.set_cluster(receivers.clone());
                published = receivers;
            }
            if let Some((m, scope)) = listed {
                self.status.listed(&members[m].name, &scope);
            }
        }
    }
}
