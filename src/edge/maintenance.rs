//! Background work: the relay queue, refreshing named range sets, and sweeping the defences'
//! state.

use crate::guard::ranges::RangeSet;
use crate::guard::Guard;
use crate::metrics;
use crate::relay::queue::Queue;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::Arc;
use std::time::Duration;

pub struct Maintenance {
    pub guard: Arc<Guard>,
    pub ranges: Vec<Arc<RangeSet>>,
}

const SWEEP_EVERY: Duration = Duration::from_secs(30);

async fn refresh_forever(set: Arc<RangeSet>, client: reqwest::Client) {
    let mut tick = tokio::time::interval(set.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let source = set
        .source
        .as_ref()
        .map(|s| s.to_string())
        .unwrap_or_default();
    loop {
        tick.tick().await;
        let m = &metrics::get().range_refreshes;
        match set.refresh(&client).await {
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
}

#[async_trait]
impl BackgroundService for Maintenance {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .timeout(Duration::from_secs(30))
            .user_agent(concat!("fluxgate/", env!("CARGO_PKG_VERSION")))
            .build();
        let mut tasks = Vec::new();
        match client {
            Ok(client) => {
                for set in self.ranges.iter().filter(|s| s.source.is_some()) {
                    tasks.push(tokio::spawn(refresh_forever(set.clone(), client.clone())));
                }
            }
            Err(e) => tracing::error!("cannot build the HTTP client for range refreshes: {e}"),
        }
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = sweep.tick() => self.guard.sweep(),
            }
        }
        for t in tasks {
            t.abort();
        }
    }
}

/// Works the relay queue until the process ends.
pub struct RelayWorker {
    pub queue: Arc<Queue>,
}

#[async_trait]
impl BackgroundService for RelayWorker {
    async fn start(&self, _shutdown: ShutdownWatch) {
        // Not stopped at the shutdown signal: during the grace period the queue keeps draining.
        // Whatever is still queued when the process ends stays on disk for the next one.
        self.queue.clone().run().await;
    }
}
