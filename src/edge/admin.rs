//! The private admin listener: liveness, readiness and metrics; the delivery history
//! (`/deliveries`, its live stream, redelivery) and the status page at `/`.

use super::live::Live;
use super::status_page;
use super::tls::CertResolver;
use crate::cluster::status::WatchStatus;
use crate::config::Receiver;
use crate::fleet::ClusterId;
use crate::history::{self, History, Query, Record};
use crate::relay::Relay;
use crate::secret::Secret;
use async_trait::async_trait;
use bytes::Bytes;
use http::Response;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use sha2::Digest;
use sse_stream::Sse;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;
use tokio::sync::broadcast;
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
    history: Arc<History>,
    /// `admin.token_file`'s token.
    token: Option<Secret>,
    resolver: Arc<CertResolver>,
    /// Cluster mode's Receiver watches.
    cluster: Option<Arc<WatchStatus>>,
    /// The last API check and when it ended. Locked across the check, so concurrent probes
    /// wait for the one in flight instead of each making their own.
    api_health: Mutex<Option<(Instant, Checks)>>,
    /// Live streams open now (`MAX_STREAMS`).
    streams: Arc<AtomicUsize>,
}

impl AdminApp {
    pub fn new(
        relay: Arc<Relay>,
        cluster: Option<Arc<WatchStatus>>,
        live: Arc<Live>,
        history: Arc<History>,
        token: Option<Secret>,
        resolver: Arc<CertResolver>,
    ) -> Self {
        AdminApp {
            relay,
            live,
            history,
            token,
            resolver,
            cluster,
            api_health: Mutex::new(None),
            streams: Arc::new(AtomicUsize::new(0)),
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

/// The admin listener's answers: a whole body, or the live stream of deliveries.
enum Reply {
    Full(Response<Vec<u8>>),
    /// A live stream, holding its place among `MAX_STREAMS` until it ends.
    Stream(StreamSlot),
}

/// Live streams open at once. Each holds a connection, a task and a reader of the history's
/// feed for as long as its client stays; past this many, a new one is answered 503.
const MAX_STREAMS: usize = 64;

/// One open stream's place; given back when the stream ends.
struct StreamSlot(Arc<AtomicUsize>);

impl StreamSlot {
    fn take(open: &Arc<AtomicUsize>) -> Option<Self> {
        open.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
            (n < MAX_STREAMS).then_some(n + 1)
        })
        .ok()
        .map(|_| StreamSlot(open.clone()))
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The status page's cookie, set by `GET /?token=`.
const COOKIE: &str = "fluxgate_admin";

#[async_trait]
impl HttpServerApp for AdminApp {
    async fn process_new_http(
        self: &Arc<Self>,
        mut s: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        match s.read_request().await {
            Ok(true) => {}
            _ => return None,
        }
        if *shutdown.borrow() {
            s.set_keepalive(None);
        } else {
            s.set_keepalive(Some(60));
        }
        let reply = if let Some(r) = self.token_exchange(&s) {
            Reply::Full(r)
        } else if self.authorized(&s) {
            self.route(&mut s).await
        } else {
            let mut r = text(401, "a bearer token is required (admin.token_file)".into());
            r.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
            Reply::Full(r)
        };
        match reply {
            Reply::Full(r) => {
                let (parts, body) = r.into_parts();
                let head: ResponseHeader = parts.into();
                s.write_response_header(Box::new(head)).await.ok()?;
                if !body.is_empty() {
                    s.write_response_body(body.into(), true).await.ok()?;
                }
                let persist = HttpPersistentSettings::for_session(&s);
                s.finish()
                    .await
                    .ok()?
                    .map(|r| ReusedHttpStream::from_reusable_stream(r, persist))
            }
            Reply::Stream(_slot) => {
                stream_deliveries(&mut s, &self.history, shutdown).await;
                None
            }
        }
    }
}

impl AdminApp {
    /// A browser cannot send a bearer header: `GET /?token=…` with the right token is
    /// answered once with a cookie holding the token's SHA-256 (never the token itself),
    /// HttpOnly and SameSite=Strict (so another site cannot make the browser redeliver), and
    /// a redirect to `/`, which takes the token out of the address bar. A wrong token gets
    /// the usual 401. `None`: not such a request.
    fn token_exchange(&self, s: &ServerSession) -> Option<Response<Vec<u8>>> {
        let token = self.token.as_ref()?;
        let head = s.req_header();
        if head.method != http::Method::GET || head.uri.path() != "/" {
            return None;
        }
        let given = form_urlencoded::parse(head.uri.query()?.as_bytes())
            .find(|(k, _)| k == "token")?
            .1;
        let digest = |b: &[u8]| sha2::Sha256::digest(b);
        if !bool::from(digest(given.as_bytes()).ct_eq(&digest(token.expose()))) {
            return None;
        }
        let mut r = text(303, "signed in; go to /\n".into());
        let cookie = format!(
            "{COOKIE}={}; HttpOnly; SameSite=Strict; Path=/",
            hex::encode(digest(token.expose()))
        );
        let h = r.headers_mut();
        h.insert(http::header::LOCATION, http::HeaderValue::from_static("/"));
        if let Ok(v) = http::HeaderValue::from_str(&cookie) {
            h.insert(http::header::SET_COOKIE, v);
        }
        h.insert(
            http::header::REFERRER_POLICY,
            http::HeaderValue::from_static("no-referrer"),
        );
        Some(r)
    }

    /// The bearer token of `admin.token_file` (or the page's cookie, its SHA-256), compared
    /// in constant time, for everything but the probes and the metrics.
    fn authorized(&self, s: &ServerSession) -> bool {
        let path = s.req_header().uri.path();
        let Some(token) = &self.token else {
            return true;
        };
        if matches!(path, "/healthz" | "/readyz" | "/metrics") {
            return true;
        }
        let given = s
            .req_header()
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            .unwrap_or_default();
        let digest = |b: &[u8]| sha2::Sha256::digest(b);
        let want = digest(token.expose());
        let cookie = s
            .req_header()
            .headers
            .get_all(http::header::COOKIE)
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b';'))
            .find_map(|c| {
                c.trim_ascii()
                    .strip_prefix(COOKIE.as_bytes())?
                    .strip_prefix(b"=")
            })
            .and_then(|v| hex::decode(v).ok())
            .unwrap_or_default();
        // Both compared, always, so the time taken says nothing about either.
        let by_header = bool::from(digest(given).ct_eq(&want));
        let by_cookie = bool::from(digest(&cookie).ct_eq(&digest(&want)));
        by_header | by_cookie
    }

    async fn route(&self, s: &mut ServerSession) -> Reply {
        let method = s.req_header().method.clone();
        let path = s.req_header().uri.path().to_string();
        let query = s.req_header().uri.query().unwrap_or("").to_string();
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let full = Reply::Full;
        match (&method, segments.as_slice()) {
            (&http::Method::GET, ["healthz"]) => full(text(200, "ok".into())),
            (&http::Method::GET, ["metrics"]) => {
                let body = crate::metrics::render();
                full(
                    Response::builder()
                        .status(200)
                        .header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                        .header("Content-Length", body.len())
                        .header("Cache-Control", "no-store")
                        .body(body)
                        .unwrap_or_default(),
                )
            }
            (&http::Method::GET, ["readyz"]) => {
                let (status, body) = self.ready().await;
                full(text(status, body))
            }
            (&http::Method::GET, [""]) => full(self.page()),
            (&http::Method::GET, ["deliveries"]) => full(match deliveries_query(&query) {
                Ok(q) => json(200, &self.history.list(&q)),
                Err(e) => text(400, e),
            }),
            (&http::Method::GET, ["deliveries", "stream"]) => match StreamSlot::take(&self.streams)
            {
                Some(slot) => Reply::Stream(slot),
                None => full(text(
                    503,
                    format!("{MAX_STREAMS} live streams are open already; try again later"),
                )),
            },
            (&http::Method::GET, ["deliveries", id]) => full(match self.history.get(id) {
                Some(r) => json(200, &r),
                None => text(404, "no such delivery in the history".into()),
            }),
            (&http::Method::POST, ["deliveries", id, "redeliver"]) => {
                full(self.redeliver(id).await)
            }
            (_, ["healthz" | "readyz" | "metrics" | ""] | ["deliveries", ..]) => {
                full(text(405, "method not allowed".into()))
            }
            _ => full(text(
                404,
                "not found; try /, /deliveries, /healthz, /readyz or /metrics".into(),
            )),
        }
    }

    /// Runs the relay again for a verified delivery of the history: the receiver's targets
    /// as configured now, with a new requestedAt. Recorded as a delivery of its own.
    async fn redeliver(&self, id: &str) -> Response<Vec<u8>> {
        let Some(old) = self.history.get(id) else {
            return text(404, "no such delivery in the history".into());
        };
        if !old.verified {
            return text(
                409,
                format!("delivery {} was not verified ({}); only a verified delivery can be redelivered", old.id, old.outcome),
            );
        }
        let rt = self.live.get();
        let Some(receiver) = rt.receivers.iter().find(|r| r.label == old.receiver) else {
            return text(
                409,
                format!("receiver {} is no longer configured", old.receiver),
            );
        };
        if receiver.forward.is_some() {
            return text(
                409,
                "the receiver forwards to Flux's own receiver, which needs the body; it is not kept".into(),
            );
        }
        if receiver.filters.iter().any(|f| !f.is_empty()) {
            return text(
                409,
                "the receiver's resource filters read the delivery, whose body is not kept".into(),
            );
        }
        // With relay.events, the Event says which delivery this was, redelivered by an operator;
        // the pushed commit is not in the record (no body is kept).
        let note = self
            .relay
            .writes_events()
            .then(|| crate::relay::events::Note {
                receiver: receiver.label.clone(),
                event: old.event.clone(),
                delivery: old.delivery.clone(),
                push: Default::default(),
            });
        let mut delivered = match self
            .relay
            .deliver(&receiver.targets, &[], &receiver.reach, note)
            .await
        {
            Ok(d) => d,
            Err(e) => return text(503, format!("cannot queue the delivery: {e}")),
        };
        let fleet = self.relay.fleet();
        let targets = history::results(&receiver.targets, &delivered, |c| {
            fleet.cluster(c).map_or("", |c| &*c.name)
        });
        let pending = std::mem::take(&mut delivered.pending);
        let mut record = Record {
            time: history::now(),
            receiver: receiver.label.clone(),
            kind: receiver.kind.to_string(),
            client: "admin".into(),
            delivery: old.delivery.clone(),
            event: old.event.clone(),
            outcome: "queued".into(),
            verified: true,
            requested_at: Some(delivered.requested_at.clone()),
            targets,
            redelivery_of: Some(old.id.clone()),
            ..Record::default()
        };
        record.settle();
        record.status = match record.outcome.as_str() {
            "relayed" => 200,
            "queued" => 202,
            _ => 502,
        };
        let targets = record.targets.clone();
        let status = record.status;
        let id = self.history.add(record);
        self.history
            .follow(id.clone(), delivered.requested_at, &targets, pending);
        match self.history.get(&id) {
            Some(r) => json(status, &r),
            None => text(status, id),
        }
    }
}

impl AdminApp {
    /// The status page, with a Content-Security-Policy that lets only its own nonce'd style
    /// and script run, and only connect back here.
    fn page(&self) -> Response<Vec<u8>> {
        let rt = self.live.get();
        let records = self.history.list(&Query {
            limit: Some(200),
            ..Query::default()
        });
        let m = crate::metrics::get();
        let view = status_page::View {
            receivers: &rt.receivers,
            records: &records,
            unrouted: self.history.unrouted(),
            cert_not_after: self
                .resolver
                .current()
                .and_then(|ck| super::tls::not_after(&ck)),
            clusters: self
                .relay
                .fleet()
                .clusters()
                .iter()
                .map(|c| {
                    let l = [&*c.name];
                    status_page::ClusterView {
                        name: c.name.to_string(),
                        api_up: c.is_up(),
                        queue_depth: m.queue_depth.with_label_values(&l).get(),
                        queue_oldest_seconds: m.queue_oldest_seconds.with_label_values(&l).get(),
                    }
                })
                .collect(),
        };
        let (body, nonce) = status_page::render(&view);
        let csp = format!(
            "default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; connect-src 'self'; img-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        );
        let body = body.into_bytes();
        Response::builder()
            .status(200)
            .header("Content-Type", "text/html; charset=utf-8")
            .header("Content-Length", body.len())
            .header("Cache-Control", "no-store")
            .header("Content-Security-Policy", csp)
            .header("X-Content-Type-Options", "nosniff")
            .header("Referrer-Policy", "no-referrer")
            .body(body)
            .unwrap_or_default()
    }
}

/// `?receiver=&outcome=&since=&limit=`, each optional.
fn deliveries_query(query: &str) -> Result<Query, String> {
    let mut q = Query::default();
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "receiver" => q.receiver = Some(v.into_owned()),
            "outcome" => q.outcome = Some(v.into_owned()),
            "since" => {
                q.since = Some(history::parse_time(&v).ok_or_else(|| {
                    format!("since: {v:?} is not an RFC 3339 time like 2026-01-02T15:04:05Z")
                })?)
            }
            "limit" => {
                q.limit = Some(
                    v.parse()
                        .map_err(|_| format!("limit: {v:?} is not a number"))?,
                )
            }
            other => {
                return Err(format!(
                    "unknown parameter {other:?}; use receiver, outcome, since or limit"
                ))
            }
        }
    }
    Ok(q)
}

fn json(status: u16, value: &impl serde::Serialize) -> Response<Vec<u8>> {
    let mut body = serde_json::to_vec(value).unwrap_or_default();
    body.push(b'\n');
    Response::builder()
        .status(status)
        .header("Content-Type", "application/json")
        .header("Content-Length", body.len())
        .header("Cache-Control", "no-store")
        .header("X-Content-Type-Options", "nosniff")
        .body(body)
        .unwrap_or_default()
}

/// How often an idle stream sends a comment, so proxies and clients see it is alive.
const STREAM_KEEPALIVE: Duration = Duration::from_secs(15);

/// `GET /deliveries/stream`: each new or updated record as a server-sent event
/// (`event: delivery`, its JSON as data), until the client goes or the process stops.
async fn stream_deliveries(s: &mut ServerSession, history: &History, shutdown: &ShutdownWatch) {
    let mut live = history.subscribe();
    let mut head = match ResponseHeader::build(200, Some(5)) {
        Ok(h) => h,
        Err(_) => return,
    };
    for (k, v) in [
        ("Content-Type", "text/event-stream"),
        ("Cache-Control", "no-store"),
        ("X-Content-Type-Options", "nosniff"),
        ("Transfer-Encoding", "chunked"),
    ] {
        if head.insert_header(k, v).is_err() {
            return;
        }
    }
    s.set_keepalive(None);
    if s.write_response_header(Box::new(head)).await.is_err() {
        return;
    }
    // A first comment, so the client knows the stream is open before any delivery.
    let hello = Bytes::from_static(b": fluxgate deliveries\n\n");
    if s.write_response_body(hello, false).await.is_err() {
        return;
    }
    let mut shutdown = shutdown.clone();
    loop {
        let event = tokio::select! {
            r = live.recv() => match r {
                Ok(record) => match serde_json::to_string(&*record) {
                    Ok(data) => Bytes::from(Sse::default().event("delivery").id(record.id.clone()).data(data)),
                    Err(_) => continue,
                },
                // Too slow a reader: it misses some, and is told so.
                Err(broadcast::error::RecvError::Lagged(n)) => Bytes::from(Sse::default().event("lagged").data(n.to_string())),
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = tokio::time::sleep(STREAM_KEEPALIVE) => Bytes::from_static(b": keep-alive\n\n"),
            _ = shutdown.changed() => return,
        };
        if s.write_response_body(event, false).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_streams_are_capped_and_give_their_place_back() {
        let open = Arc::new(AtomicUsize::new(0));
        let slots: Vec<_> = (0..MAX_STREAMS)
            .map(|_| StreamSlot::take(&open).unwrap())
            .collect();
        assert!(StreamSlot::take(&open).is_none());
        drop(slots);
        assert_eq!(open.load(Ordering::SeqCst), 0);
        assert!(StreamSlot::take(&open).is_some());
    }
}
