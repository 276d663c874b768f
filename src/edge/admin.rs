//! The private admin listener: liveness, readiness and metrics.

use super::live::Live;
use crate::cluster::status::WatchStatus;
use crate::config::Receiver;
use crate::fleet::ClusterId;
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

/// Each cluster's API check, in fleet order.
type Checks = Vec<Result<(), String>>;

pub struct AdminApp {
    relay: Arc<Relay>,
    /// The receivers in use, for which clusters each needs.
    live: Arc<Live>,
    /// Cluster mode's Receiver watches.
    cluster: Option<Arc<WatchStatus>>,
    /// The last API check and when it ended. Locked across the check, so concurrent probes
    /// wait for the one in flight instead of each making their own.
    api_health: Mutex<Option<(Instant, Checks)>>,
}

impl AdminApp {
    pub fn new(relay: Arc<Relay>, live: Arc<Live>, cluster: Option<Arc<WatchStatus>>) -> Self {
        AdminApp {
            relay,
            live,
            cluster,
            api_health: Mutex::new(None),
        }
    }

    /// Each cluster's API health, in fleet order, checked at most once per `API_HEALTH_TTL`.
    async fn api_health(&self) -> Checks {
        let mut last = self.api_health.lock().await;
        if let Some((at, r)) = last.as_ref() {
            if at.elapsed() < API_HEALTH_TTL {
                return r.clone();
            }
        }
        let r = self.relay.fleet().check_all().await;
        *last = Some((Instant::now(), r.clone()));
        r
    }

    /// Ready means the API server answers an authenticated request with our credentials:
    /// without that, every delivery would fail. With a fleet: while at least one cluster of
    /// each receiver answers, since deliveries for the others are still queued safely; the
    /// answer names the clusters that do not. In cluster mode, also that every watched
    /// namespace's Receivers were listed once: until then their paths are unknown. The APIs'
    /// answers may be up to `API_HEALTH_TTL` old.
    async fn ready(&self) -> (u16, String) {
        let watch = self.cluster.as_ref().map_or(Ok(()), |c| c.ready());
        let fleet = self.relay.fleet();
        let checks = self.api_health().await;
        let rt = self.live.get();
        let apis = readiness(&rt.receivers, fleet.home().name.as_ref(), &checks, |i| {
            fleet.cluster(i).map_or("", |c| &c.name)
        });
        match (apis, watch) {
            (Ok(note), Ok(())) => (200, format!("ready{note}")),
            (Err(e), _) | (_, Err(e)) => (503, format!("not ready: {e}")),
        }
    }
}

/// The fleet's part of readiness from each cluster's check: `Ok` with a note naming the
/// unreachable clusters (empty when all answer), `Err` when a receiver reaches no cluster
/// that answers. One cluster alone reads as before fleets: its error is the reason.
fn readiness<'a>(
    receivers: &[Arc<Receiver>],
    home: &str,
    checks: &[Result<(), String>],
    name: impl Fn(ClusterId) -> &'a str,
) -> Result<String, String> {
    let down: Vec<(ClusterId, &String)> = checks
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.as_ref().err().map(|e| (i, e)))
        .collect();
    if down.is_empty() {
        return Ok(String::new());
    }
    if checks.len() == 1 {
        return Err(down[0].1.clone());
    }
    let listed = down
        .iter()
        .map(|(i, e)| format!("{} ({e})", name(*i)))
        .collect::<Vec<_>>()
        .join(", ");
    let is_down = |i: &ClusterId| down.iter().any(|(d, _)| d == i);
    let stranded: Vec<&str> = receivers
        .iter()
        .filter(|r| {
            // Forward mode goes to the receiver's own clusters; a receiver without targets
            // needs the home cluster no more than any other.
            let home_down = || down.iter().any(|(i, _)| name(*i) == home);
            if r.forward.is_some() {
                return r.forward_clusters.iter().all(is_down);
            }
            if r.reach.is_empty() {
                return home_down();
            }
            r.reach.iter().flat_map(|cs| cs.iter()).all(is_down)
        })
        .map(|r| r.label.as_str())
        .collect();
    if stranded.is_empty() {
        Ok(format!(
            "; unreachable clusters, whose deliveries wait in the queue: {listed}"
        ))
    } else {
        Err(format!(
            "receiver(s) {} reach no cluster that answers; unreachable clusters: {listed}",
            stranded.join(", ")
        ))
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
