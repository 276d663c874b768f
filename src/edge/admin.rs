//! The private admin listener: liveness, readiness and metrics.

use crate::cluster::status::WatchStatus;
use crate::relay::Relay;
use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// How long one answer of the API server stands for readiness. Probes come from kubelets and
/// load balancers, each every few seconds; without this each costs the API server a request.
const API_HEALTH_TTL: Duration = Duration::from_secs(1);

pub struct AdminApp {
    relay: Arc<Relay>,
    /// Cluster mode's Receiver watches.
    cluster: Option<Arc<WatchStatus>>,
    /// The last API check and when it ended. Locked across the check, so concurrent probes
    /// wait for the one in flight instead of each making their own.
    api_health: Mutex<Option<(Instant, Result<(), String>)>>,
}

impl AdminApp {
    pub fn new(relay: Arc<Relay>, cluster: Option<Arc<WatchStatus>>) -> Self {
        AdminApp {
            relay,
            cluster,
            api_health: Mutex::new(None),
        }
    }

    /// The API's health, checked at most once per `API_HEALTH_TTL`.
    async fn api_health(&self) -> Result<(), String> {
        let mut last = self.api_health.lock().await;
        if let Some((at, r)) = last.as_ref() {
            if at.elapsed() < API_HEALTH_TTL {
                return r.clone();
            }
        }
        let r = super::maintenance::check_api(self.relay.api()).await;
        *last = Some((Instant::now(), r.clone()));
        r
    }

    /// Ready means the API server answers an authenticated request with our credentials:
    /// without that, every delivery would fail. In cluster mode, also that every watched
    /// namespace's Receivers were listed once: until then their paths are unknown. The API's
    /// answer may be up to `API_HEALTH_TTL` old.
    async fn ready(&self) -> (u16, String) {
        let cluster = self.cluster.as_ref().map_or(Ok(()), |c| c.ready());
        match (self.api_health().await, cluster) {
            (Ok(()), Ok(())) => (200, "ready".into()),
            (Err(e), _) | (_, Err(e)) => (503, format!("not ready: {e}")),
        }
    }
}

fn text(status: u16, body: String) -> Response<Vec<u8>> {
    let body = format!("{body}\n").into_bytes();
    Response::builder()
        .status(status)
        .header("Content-Type", "text/plain; charset=utf-8")
        .header("Content-Length", body.len())
        .header("Cache-Control", "no-store")
        .body(body)
        .unwrap_or_default()
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, s: &mut ServerSession) -> Response<Vec<u8>> {
        if s.req_header().method != http::Method::GET {
            return text(405, "only GET is accepted".into());
        }
        match s.req_header().uri.path() {
            "/healthz" => text(200, "ok".into()),
            "/metrics" => {
                let body = crate::metrics::render();
                Response::builder()
                    .status(200)
                    .header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                    .header("Content-Length", body.len())
                    .header("Cache-Control", "no-store")
                    .body(body)
                    .unwrap_or_default()
            }
            "/readyz" => {
                let (status, body) = self.ready().await;
                text(status, body)
            }
            _ => text(404, "not found; try /healthz, /readyz or /metrics".into()),
        }
    }
}
