//! The certificate's life: at start the stored one if it is still good for the configured
//! domains (no order), else an order; then a renewal at two thirds of the lifetime (less a
//! random part, so replicas and restarts spread out), or when the CA's renewal information
//! (RFC 9773) says so; a failed order keeps the current certificate and is retried after a
//! growing pause, or when the CA's `Retry-After` says.

use super::client::{self, Http};
use super::kube_store::KubeStore;
use super::storage::{Directory, Storage, Stored};
use super::{Acme, StorageSettings};
use crate::edge::tls::CertResolver;
use crate::metrics;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use rand::Rng;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// The first pause after a failed order, doubled after each failure up to `MAX_BACKOFF`.
pub(super) const FIRST_BACKOFF: Duration = Duration::from_secs(2);
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(3600);

pub struct AcmeService {
    pub acme: Arc<Acme>,
    pub resolver: Arc<CertResolver>,
    /// The port of the public listener, for HTTP-01's redirects.
    pub https_port: u16,
    /// With `storage = "kubernetes"`: the loaded kubeconfig of the storage's cluster.
    pub kube: Option<kube::Config>,
}

pub(super) fn now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// When to renew a certificate valid from `not_before` to `not_after`: at two thirds of its
/// lifetime, less up to a twentieth of it at random.
pub fn renew_at(not_before: i64, not_after: i64, jitter: f64) -> i64 {
    let life = (not_after - not_before).max(0);
    not_before + life * 2 / 3 - (life as f64 / 20.0 * jitter.clamp(0.0, 1.0)) as i64
}

/// Whether a stored certificate may be served for `domains`: it names each of them and has
/// not reached its renewal time.
pub(super) fn usable(s: &Stored, domains: &[String]) -> bool {
    domains.iter().all(|d| s.names.iter().any(|n| n == d)) && now() < s.not_after
}

impl AcmeService {
    /// Serves `s` and says when to renew it: when the CA's renewal information suggests, else
    /// at two thirds of its lifetime.
    pub(super) async fn install(&self, s: &Stored, http: &Http, storage: &Storage) -> i64 {
        self.resolver.replace(s.certified.clone());
        self.acme.set_issued();
        metrics::get().certificate_expiry.set(s.not_after as f64);
        let suggested = match s.certified.cert.first() {
            Some(leaf) => client::suggested_renewal(http, &self.acme.config, storage, leaf).await,
            None => None,
        };
        let at =
            suggested.unwrap_or_else(|| renew_at(s.not_before, s.not_after, rand::rng().random()));
        tracing::info!(
            not_after = %humantime::format_rfc3339_seconds(to_time(s.not_after)),
            next_renewal = %humantime::format_rfc3339_seconds(to_time(at)),
            by = if suggested.is_some() { "the CA's renewal information" } else { "two thirds of the lifetime" },
            "ACME certificate in use"
        );
        at
    }

    /// One attempt: an order, stored, then served. Returns the next renewal time.
    pub(super) async fn obtain(
        &self,
        http: &Http,
        storage: &Storage,
    ) -> Result<i64, client::Failure> {
        tracing::info!(domains = ?self.acme.config.domains, directory = %self.acme.config.directory, "ordering a certificate");
        let pem = client::order(&self.acme, http, storage).await?;
        let stored = super::storage::parse(pem).map_err(|reason| client::Failure {
            reason: format!("the CA's certificate is unusable: {reason}"),
            retry_after: None,
        })?;
        storage
            .save_certificate(&stored.pem)
            .await
            .map_err(|reason| client::Failure {
                reason,
                retry_after: None,
            })?;
        Ok(self.install(&stored, http, storage).await)
    }

    async fn run(&self) {
        let config = &self.acme.config;
        if let Some(addr) = config.http_listen {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => {
                    tokio::spawn(super::http01::serve(l, self.acme.clone(), self.https_port));
                }
                Err(e) => tracing::error!("acme.http_listen: cannot listen on {addr}: {e}"),
            }
        }
        let http = match Http::new(config) {
            Ok(h) => h,
            Err(e) => {
                tracing::error!("acme: {e}");
                return;
            }
        };
        match &config.storage {
            StorageSettings::Directory(dir) => self.alone(Directory::new(dir.clone()), &http).await,
            StorageSettings::Kubernetes(k) => {
                let client = self
                    .kube
                    .clone()
                    .ok_or_else(|| "no kubeconfig for the storage's cluster".to_string())
                    .and_then(|c| kube::Client::try_from(c).map_err(|e| e.to_string()));
                match client {
                    Ok(c) => {
                        let store = Arc::new(KubeStore::new(c, k.clone()));
                        super::replicas::run(self, store, &http).await;
                    }
                    Err(e) => tracing::error!(
                        "server.acme.storage: cannot reach cluster {}: {e}",
                        k.cluster_name
                    ),
                }
            }
        }
    }

    /// One process with its own directory: orders when it must, renews when it is time.
    async fn alone(&self, dir: Directory, http: &Http) {
        if let Err(e) = dir.prepare() {
            tracing::error!("acme.storage: {e}");
        }
        let storage = Storage::Directory(dir);
        let config = &self.acme.config;
        let http = http.clone();
        let mut renew = match storage.load_certificate().await {
            Ok(Some(s)) if usable(&s, &config.domains) => self.install(&s, &http, &storage).await,
            Ok(Some(_)) => {
                tracing::info!(
                    "the stored certificate is expired or names other domains: ordering a new one"
                );
                0
            }
            Ok(None) => 0,
            Err(e) => {
                tracing::warn!("the stored certificate is unusable, ordering a new one: {e}");
                0
            }
        };
        let mut backoff = FIRST_BACKOFF;
        loop {
            let wait = renew - now();
            if wait > 0 {
                tokio::time::sleep(Duration::from_secs(wait as u64)).await;
            }
            match self.obtain(&http, &storage).await {
                Ok(at) => {
                    metrics::get().acme_orders.with_label_values(&["ok"]).inc();
                    backoff = FIRST_BACKOFF;
                    renew = at;
                }
                Err(f) => renew = failed(&f, &mut backoff),
            }
        }
    }
}

/// Counts and logs a failed order; returns when to try again: when the CA said, else after
/// `backoff`, which doubles.
pub(super) fn failed(f: &client::Failure, backoff: &mut Duration) -> i64 {
    metrics::get()
        .acme_orders
        .with_label_values(&["failed"])
        .inc();
    let pause = f
        .retry_after
        .and_then(|t| t.duration_since(SystemTime::now()).ok())
        .unwrap_or(*backoff);
    tracing::error!(
        retry_in = %humantime::format_duration(Duration::from_secs(pause.as_secs())),
        "ACME order failed, keeping the current certificate: {}",
        f.reason
    );
    *backoff = (*backoff * 2).min(MAX_BACKOFF);
    now() + pause.as_secs().max(1) as i64
}

fn to_time(t: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(t.max(0) as u64)
}

#[async_trait]
impl BackgroundService for AcmeService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        tokio::select! {
            () = self.run() => {}
            _ = shutdown.changed() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_comes_at_two_thirds_of_the_lifetime_less_some_jitter() {
        assert_eq!(renew_at(0, 90, 0.0), 60);
        assert_eq!(renew_at(0, 90 * 86400, 0.0), 60 * 86400);
        let jittered = renew_at(0, 90 * 86400, 1.0);
        assert_eq!(jittered, 60 * 86400 - 90 * 86400 / 20);
        assert!(renew_at(100, 100, 0.5) == 100, "no lifetime: renew now");
    }
}
