//! The life cycle of one delivery on the public listener: head under a deadline, route, method,
//! size, verification while the body streams in, event filter, relay, answer.

use super::answer::Answer;
use crate::config::Receiver;
use crate::refusal::{Cause, Refusal};
use crate::relay::Relay;
use async_trait::async_trait;
use http::{header, Method, Uri};
use pingora::apps::{HttpPersistentSettings, HttpServerApp, HttpServerOptions, ReusedHttpStream};
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::time::{timeout, timeout_at};

/// Bodies this small are read and dropped after an early refusal, so the connection can be
/// kept; anything larger costs more than a new connection and is cut instead.
const DRAIN_LIMIT: u64 = 64 * 1024;

/// Headers providers use for a delivery's id, in order of preference, for the log line.
const DELIVERY_ID_HEADERS: [&str; 4] = [
    "X-GitHub-Delivery",
    "X-Gitlab-Event-UUID",
    "X-Request-UUID",
    "X-Request-Id",
];

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_body_bytes: u64,
    pub head_timeout: Duration,
    pub body_timeout: Duration,
}

pub struct HookApp {
    routes: HashMap<String, Arc<Receiver>>,
    relay: Arc<Relay>,
    limits: Limits,
    options: HttpServerOptions,
}

impl HookApp {
    pub fn new(receivers: &[Arc<Receiver>], relay: Arc<Relay>, limits: Limits) -> Self {
        HookApp {
            routes: receivers
                .iter()
                .map(|r| (r.path.clone(), r.clone()))
                .collect(),
            relay,
            limits,
            options: HttpServerOptions::default(),
        }
    }

    /// Exact match on the request target, as Flux matches `RequestURI`: a query string, a
    /// trailing slash, percent-encoding or an absolute URI is not the hook's path.
    fn route(&self, uri: &Uri) -> Option<&Arc<Receiver>> {
        if uri.scheme().is_some() || uri.authority().is_some() {
            return None;
        }
        self.routes.get(uri.path_and_query()?.as_str())
    }

    async fn handle(&self, s: &mut ServerSession, log: &mut Delivery) -> Answer {
        let req = s.req_header();
        let Some(receiver) = self.route(&req.uri).cloned() else {
            return Answer::refused(&Refusal::unknown_hook());
        };
        log.receiver = Some(receiver.clone());
        if req.method != Method::POST {
            return Answer::refused(&Refusal::new(
                405,
                Cause::MethodNotAllowed,
                "only POST is accepted",
            ));
        }
        let declared = declared_length(s);
        if declared.is_some_and(|n| n > self.limits.max_body_bytes) {
            return self.too_large();
        }
        let head = &s.req_header().headers;
        log.delivery_id = DELIVERY_ID_HEADERS
            .iter()
            .find_map(|h| head.get(*h).and_then(|v| v.to_str().ok()))
            .map(|v| v.chars().take(128).collect());
        let event = receiver.verifier.event_header().map(|h| {
            head.get(h)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        });
        log.event = event.as_ref().map(|e| e.chars().take(64).collect());
        let mut check = match receiver.verifier.begin(head) {
            Ok(c) => c,
            Err(r) => return Answer::refused(&r),
        };
        if expects_continue(s) {
            if let Err(e) = s.write_continue_response().await {
                return Answer::text(400, "malformed_request", &format!("cannot continue: {e}"));
            }
        }
        let deadline = tokio::time::Instant::now() + self.limits.body_timeout;
        let mut total: u64 = 0;
        loop {
            match timeout_at(deadline, s.read_request_body()).await {
                Err(_) => {
                    return Answer::refused(&Refusal::new(
                        408,
                        Cause::BodyTimeout,
                        format!(
                            "body not received within {}",
                            humantime::format_duration(self.limits.body_timeout)
                        ),
                    ))
                }
                Ok(Err(e)) => {
                    return Answer::refused(&Refusal::bad_request(
                        Cause::MalformedRequest,
                        format!("malformed body: {}", why(&e)),
                    ))
                }
                Ok(Ok(None)) => break,
                Ok(Ok(Some(chunk))) => {
                    total += chunk.len() as u64;
                    if total > self.limits.max_body_bytes {
                        return self.too_large();
                    }
                    check.update(&chunk);
                }
            }
        }
        if let Err(r) = check.finish() {
            return Answer::refused(&r);
        }
        if let Some(ev) = event.as_deref() {
            if receiver.verifier.is_ping(ev) {
                return Answer::json(
                    200,
                    "ping",
                    &json!({"receiver": receiver_id(&receiver), "event": ev, "relayed": false}),
                );
            }
            if !receiver.accepts_event(Some(ev).filter(|e| !e.is_empty())) {
                let why = if ev.is_empty() {
                    "missing event header".to_string()
                } else {
                    format!(
                        "event {:?} is not accepted by this receiver",
                        log.event.as_deref().unwrap_or("")
                    )
                };
                return Answer::refused(&Refusal::bad_request(Cause::EventNotAccepted, why));
            }
        }
        self.relay_to(&receiver, log).await
    }

    async fn relay_to(&self, receiver: &Receiver, log: &mut Delivery) -> Answer {
        let out = self.relay.reconcile(&receiver.targets).await;
        log.patched = out.patched.len();
        if out.failed.is_empty() {
            return Answer::json(
                200,
                "relayed",
                &json!({
                    "receiver": receiver_id(receiver),
                    "event": log.event,
                    "requestedAt": out.requested_at,
                    "patched": out.patched,
                    "unmatched": out.unmatched,
                }),
            );
        }
        let reasons: Vec<String> = out
            .failed
            .iter()
            .map(|(what, e)| format!("{what}: {e}"))
            .collect();
        Answer::text(
            502,
            "relay_failed",
            &format!(
                "the Kubernetes API did not accept the reconcile request: {}",
                reasons.join("; ")
            ),
        )
    }

    fn too_large(&self) -> Answer {
        Answer::refused(&Refusal::new(
            413,
            Cause::TooLarge,
            format!("body larger than {} bytes", self.limits.max_body_bytes),
        ))
    }
}

/// pingora's explanation of a parse error, without its internal chain.
fn why(e: &pingora::Error) -> String {
    match &e.context {
        Some(c) => c.as_str().to_string(),
        None => e.etype().as_str().to_string(),
    }
}

fn receiver_id(r: &Receiver) -> String {
    format!("{}/{}", r.namespace, r.name)
}

fn declared_length(s: &ServerSession) -> Option<u64> {
    s.req_header()
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

fn expects_continue(s: &ServerSession) -> bool {
    s.req_header()
        .headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// What the log line of one delivery says.
#[derive(Default)]
struct Delivery {
    receiver: Option<Arc<Receiver>>,
    delivery_id: Option<String>,
    event: Option<String>,
    patched: usize,
}

#[async_trait]
impl HttpServerApp for HookApp {
    async fn process_new_http(
        self: &Arc<Self>,
        mut s: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        // One deadline for the whole head: pingora's own timeout is per read, which a client
        // sending a byte at a time never trips.
        match timeout(self.limits.head_timeout, s.read_request()).await {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) | Err(_) => return None,
            Ok(Err(e)) => {
                let a = Answer::text(
                    400,
                    "malformed_request",
                    &format!("malformed request: {}", why(&e)),
                );
                s.set_keepalive(None);
                let _ = a.write(&mut s).await;
                let _ = s.finish().await;
                return None;
            }
        }
        let started = Instant::now();
        let client = s
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip().to_string())
            .unwrap_or_else(|| "-".into());
        let mut log = Delivery::default();
        let answer = self.handle(&mut s, &mut log).await;

        if *shutdown.borrow() {
            s.set_keepalive(None);
        }
        let body_done = s.is_body_done();
        if !body_done {
            let small = declared_length(&s).is_some_and(|n| n <= DRAIN_LIMIT);
            if !small {
                s.set_keepalive(None);
            }
        }
        let written = answer.write(&mut s).await;
        if !body_done && written.is_ok() {
            // Read (and drop) what the client is still sending for a moment, so that closing
            // does not reset the connection before the client has read the answer.
            let _ = timeout(Duration::from_secs(1), s.drain_request_body()).await;
        }
        tracing::info!(
            target: "fluxgate::delivery",
            receiver = log.receiver.as_deref().map(receiver_id).as_deref().unwrap_or("-"),
            client = %client,
            delivery = log.delivery_id.as_deref().unwrap_or("-"),
            event = log.event.as_deref().unwrap_or("-"),
            outcome = answer.outcome,
            status = answer.status,
            patched = log.patched,
            duration_ms = started.elapsed().as_secs_f64() * 1000.0,
            "delivery"
        );
        if written.is_err() {
            return None;
        }
        let persist = HttpPersistentSettings::for_session(&s);
        match s.finish().await {
            Ok(reusable) => reusable.map(|r| ReusedHttpStream::from_reusable_stream(r, persist)),
            Err(_) => None,
        }
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        Some(&self.options)
    }
}
