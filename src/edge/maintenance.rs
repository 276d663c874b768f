//! Background work: the relay queue, live reload (SIGHUP and changed files), refreshing named
//! range sets, sweeping the defences' state, and watching the Kubernetes API.

use super::live::Live;
use crate::fleet::Fleet;
use crate::metrics;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::signal::unix::{signal, SignalKind};

pub struct Maintenance {
    pub live: Arc<Live>,
    pub fleet: Arc<Fleet>,
    pub watch_interval: Duration,
}

const TICK: Duration = Duration::from_millis(100);
const SWEEP_EVERY: Duration = Duration::from_secs(30);
/// A cheap authenticated GET; the relay's own calls update the same gauge in between.
const API_CHECK_EVERY: Duration = Duration::from_secs(5);

#[async_trait]
impl BackgroundService for Maintenance {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!("cannot listen for SIGHUP, reload by signal is off: {e}");
                None
            }
        };
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .timeout(Duration::from_secs(30))
            .user_agent(concat!("fluxgate/", env!("CARGO_PKG_VERSION")))
            .build()
            .ok();
        let refreshing: Arc<Mutex<HashSet<String>>> = Arc::default();
        let mut due: HashMap<String, Instant> = HashMap::new();
        let mut next_sweep = Instant::now() + SWEEP_EVERY;
        let mut next_api = Instant::now();
        let mut next_watch = Instant::now() + self.watch_interval;
        let mut tick = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    self.live.reload("SIGHUP").await;
                    continue;
                }
                _ = tick.tick() => {}
            }
            let now = Instant::now();
            if !self.watch_interval.is_zero() && now >= next_watch {
                next_watch = now + self.watch_interval;
                if self.live.files_changed() {
                    self.live.reload("changed file").await;
                }
            }
            let rt = self.live.get();
            if now >= next_sweep {
                next_sweep = now + SWEEP_EVERY;
                rt.guard.sweep();
            }
            if now >= next_api {
                next_api = now + API_CHECK_EVERY;
                let fleet = self.fleet.clone();
                tokio::spawn(async move {
                    fleet.check_all().await;
                });
            }
            let Some(client) = &client else {
                continue;
            };
            for set in rt.ranges.iter().filter(|s| s.source.is_some()) {
                let when = *due.entry(set.name.clone()).or_insert(now + set.interval);
                if now < when
                    || !refreshing
                        .lock()
                        .map(|mut r| r.insert(set.name.clone()))
                        .unwrap_or(false)
                {
                    continue;
                }
                due.insert(set.name.clone(), now + set.interval);
                let (set, client, refreshing) = (set.clone(), client.clone(), refreshing.clone());
                tokio::spawn(async move {
                    refresh(&set, &client).await;
                    if let Ok(mut r) = refreshing.lock() {
                        r.remove(&set.name);
                    }
                });
            }
        }
    }
}

async fn refresh(set: &crate::guard::ranges::RangeSet, client: &reqwest::Client) {
    let m = &metrics::get().range_refreshes;
    let source = set
        .source
        .as_ref()
        .map(|s| s.to_string())
        .unwrap_or_default();
    match set.refresh(client).await {
        Ok(n) => {
            m.with_label_values(&[set.name.as_str(), "ok"]).inc();
            tracing::debug!(set = %set.name, source = %source, networks = n, "range set refreshed");
        }
        Err(e) => {
            m.with_label_values(&[set.name.as_str(), "failed"]).inc();
            tracing::warn!(
                set = %set.name,
                source = %source,
                networks = set.snapshot().len(),
                "refreshing range set {} failed: {e}; keeping the last good set",
                set.name
            );
        }
    }
}

/// Works every cluster's relay queue until the process ends.
pub struct RelayWorker {
    pub fleet: Arc<Fleet>,
}

#[async_trait]
impl BackgroundService for RelayWorker {
    async fn start(&self, _shutdown: ShutdownWatch) {
        // Not stopped at the shutdown signal: during the grace period the queue keeps draining.
        // Whatever is still queued when the process ends stays on disk for the next one.
        self.fleet.clone().run().await;
    }
}
