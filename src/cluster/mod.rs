//! Cluster mode: Flux `Receiver` objects, and the Secrets they name, served besides the file's
//! receivers and followed live. [`watch`] follows the Receivers of each namespace, [`secrets`]
//! reads their Secrets, [`object`] turns both into receivers with the code that builds the
//! file's, and [`set`] keeps the current set, which goes into the live configuration.
//!
//! A failing watch never stops the gateway: the last known receivers stay served while the
//! watch is retried with a backoff, and the failure is logged and counted.

pub mod object;
pub mod secrets;
pub mod set;
pub mod status;
pub mod watch;

use crate::edge::live::Live;
use crate::relay::kube::{error_chain, one_line};
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use secrets::{SecretKey, Secrets};
use set::ClusterSet;
use status::WatchStatus;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use watch::Change;

/// How soon a Secret that could not be read (API unreachable, throttled) is tried again.
const RETRY_SECRETS: Duration = Duration::from_secs(5);

/// The background service that follows the cluster's Receivers.
pub struct ClusterWatch {
    pub live: Arc<Live>,
    pub kube: kube::Config,
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

#[async_trait]
impl BackgroundService for ClusterWatch {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let (settings, sets) = self.live.cluster_inputs();
        // Built here, on the service's runtime: kube's client spawns its worker where it is
        // made, and a runtime that ends would take it along.
        let (client, streaming) = match clients(&self.kube) {
            Ok(c) => c,
            Err(e) => {
                let why = one_line(&error_chain(&e));
                for ns in &settings.namespaces {
                    self.status.failed(ns, &why);
                }
                return;
            }
        };
        tracing::info!(
            namespaces = %settings.namespaces.join(","),
            "serving the cluster's Receivers"
        );
        let (tx, mut rx) = mpsc::channel(64);
        // Dropped when this returns, which stops the watches.
        let mut watches = tokio::task::JoinSet::new();
        for ns in &settings.namespaces {
            watches.spawn(watch::run(streaming.clone(), ns.clone(), tx.clone()));
        }
        drop(tx);
        let mut secrets = Secrets::new(client);
        let mut set = ClusterSet::new(settings.defaults, sets);
        let mut reloads = self.live.subscribe_reloads();
        let mut refresh = settings.secret_refresh;
        let mut next_refresh = Instant::now() + refresh;
        let mut published: Vec<Arc<crate::config::Receiver>> = Vec::new();
        loop {
            let mut listed = None;
            let to_read: BTreeSet<SecretKey> = tokio::select! {
                _ = shutdown.changed() => break,
                change = rx.recv() => match change {
                    None => break,
                    Some(Change::Listed { scope, objects }) => {
                        let read = set.listed(&scope, objects);
                        listed = Some(scope);
                        read
                    }
                    Some(Change::Applied(o)) => set.applied(o).into_iter().collect(),
                    Some(Change::Deleted(o)) => {
                        set.deleted(&o);
                        BTreeSet::new()
                    }
                    Some(Change::Failed { scope, error }) => {
                        self.status.failed(&scope, &error);
                        continue;
                    }
                },
                _ = tokio::time::sleep_until(next_refresh) => {
                    next_refresh = Instant::now() + refresh;
                    set.wanted()
                }
                Ok(()) = reloads.changed() => {
                    let (s, sets) = self.live.cluster_inputs();
                    set.set_inputs(s.defaults, sets);
                    refresh = s.secret_refresh;
                    next_refresh = next_refresh.min(Instant::now() + refresh);
                    BTreeSet::new()
                }
            };
            if !to_read.is_empty() && secrets.read(&to_read).await {
                next_refresh = next_refresh.min(Instant::now() + RETRY_SECRETS.min(refresh));
            }
            secrets.keep_only(&set.wanted());
            let receivers = set.receivers(|k| secrets.get(k));
            let same = receivers.len() == published.len()
                && receivers
                    .iter()
                    .zip(&published)
                    .all(|(a, b)| Arc::ptr_eq(a, b));
            if !same {
                self.live.set_cluster(receivers.clone());
                published = receivers;
            }
            if let Some(scope) = listed {
                self.status.listed(&scope);
            }
        }
    }
}
