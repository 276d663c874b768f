//! The private admin listener: liveness, readiness and metrics.

use crate::relay::Relay;
use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use std::sync::Arc;

pub struct AdminApp {
    relay: Arc<Relay>,
}

impl AdminApp {
    pub fn new(relay: Arc<Relay>) -> Self {
        AdminApp { relay }
    }

    /// Ready means the API server answers an authenticated request with our credentials:
    /// without that, every delivery would fail.
    async fn ready(&self) -> (u16, String) {
        match super::maintenance::check_api(self.relay.api()).await {
            Ok(()) => (200, "ready".into()),
            Err(e) => (503, format!("not ready: {e}")),
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
