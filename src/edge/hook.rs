//! The life cycle of one request on the public listener: head under a deadline and checked
//! for framing, client address, penalty box, rate, route, allow-list, suspension, method,
//! size, verification while the body streams in, event filter, per-receiver rate, replay
//! check, relay, answer.

use super::answer::Answer;
use super::head;
use super::live::{Live, Runtime};
use crate::config::Receiver;
use crate::guard::client_ip;
use crate::guard::rate::retry_after_secs;
use crate::guard::replay::Claim;
use crate::metrics;
use crate::refusal::{Cause, Refusal};
use crate::relay::filter;
use crate::relay::forward::{forward, ForwardSpec};
use crate::relay::queue::Outcome;
use crate::relay::{Patched, Relay};
use crate::verify::Evidence;
use http::{header, Method};
use pingora::apps::{HttpPersistentSettings, ReusedHttpStream};
use pingora::http::RequestHeader;
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use serde::Serialize;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::time::{timeout, timeout_at};

/// Bodies this small are read and dropped after an early refusal, so the connection can be
/// kept; anything larger costs more than a new connection and is cut instead.
const DRAIN_LIMIT: u64 = 64 * 1024;

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_body_bytes: u64,
    pub max_header_bytes: usize,
    pub head_timeout: Duration,
    pub body_timeout: Duration,
}

pub struct HookApp {
    pub live: Arc<Live>,
    relay: Arc<Relay>,
}

/// The JSON answer to a verified delivery.
#[derive(Serialize, Default)]
struct Summary<'a> {
    receiver: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    event: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    delivery: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    duplicate: Option<bool>,
    relayed: bool,
    #[serde(rename = "requestedAt", skip_serializing_if = "Option::is_none")]
    requested_at: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patched: Option<Vec<&'a Patched>>,
    /// Objects a resource filter turned down, so a filter can be debugged from the answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    filtered: Option<Vec<&'a Patched>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    unmatched: Option<Vec<&'a str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    queued: Option<Vec<&'a str>>,
    /// Forward mode: the status Flux's own receiver answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    forwarded: Option<u16>,
}

/// A delivery that passed verification: what the filters and forward mode work from.
struct Verified<'a> {
    head: &'a RequestHeader,
    /// Present when the receiver keeps bodies (`Receiver::keep_body`).
    body: Option<Vec<u8>>,
    evidence: Evidence,
}

/// What the log line of one request says.
#[derive(Default)]
struct Delivery {
    receiver: Option<Arc<Receiver>>,
    client: Option<IpAddr>,
    delivery_id: Option<String>,
    event: Option<String>,
    patched: usize,
}

impl HookApp {
    pub fn new(live: Arc<Live>, relay: Arc<Relay>) -> Self {
        HookApp { live, relay }
    }

    /// Serves one request on a connection; returns the connection if it can be reused.
    pub async fn serve_one(
        &self,
        mut s: ServerSession,
        peer: Option<IpAddr>,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        // One configuration for the whole request, even if a reload swaps it meanwhile.
        let rt = self.live.get();
        // One deadline for the whole head: pingora's own timeout is per read, which a client
        // sending a byte at a time never trips.
        match timeout(rt.limits.head_timeout, s.read_request()).await {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) | Err(_) => return None,
            Ok(Err(e)) => {
                let a = head::unreadable(&e, rt.limits.max_header_bytes)?;
                let log = Delivery::default();
                return Box::pin(self.finish(s, a, log, Instant::now(), shutdown, false)).await;
            }
        }
        let started = Instant::now();
        let mut log = Delivery::default();
        // Boxed: a connection spends most of its life waiting for its next request, and
        // its task should not carry the space of a whole delivery while it waits.
        let answer = match peer {
            Some(peer) => Box::pin(self.handle(&rt, &mut s, peer, &mut log)).await,
            None => Answer::text(400, "malformed_request", "no client address"),
        };
        Box::pin(self.finish(s, answer, log, started, shutdown, true)).await
    }

    async fn handle(
        &self,
        rt: &Runtime,
        s: &mut ServerSession,
        peer: IpAddr,
        log: &mut Delivery,
    ) -> Answer {
        if let Err(r) = head::check(s, rt.limits.max_header_bytes) {
            return Answer::refused(&r).closing();
        }
        let req = s.req_header();
        let client = client_ip::resolve(
            peer,
            req.headers
                .get_all("x-forwarded-for")
                .iter()
                .map(|v| v.as_bytes()),
            &rt.guard.trusted,
        );
        log.client = Some(client);
        // Looked up first so refusals below are counted against the receiver they aimed at;
        // an unknown path is still limited like any request before it is answered.
        let route = rt.routes.find(&req.uri).cloned();
        log.receiver = route.clone();
        if let Some(wait) = rt.guard.blocked(client) {
            return Answer::refused(&Refusal::new(
                429,
                Cause::Blocked,
                "address blocked after repeated failures",
            ))
            .retry_after(retry_after_secs(wait));
        }
        if let Err(wait) = rt.guard.check_ip(client) {
            return Answer::refused(&Refusal::new(
                429,
                Cause::RateLimited,
                format!("too many requests from {client}"),
            ))
            .retry_after(retry_after_secs(wait));
        }
        let Some(receiver) = route else {
            failed(rt, client);
            return Answer::refused(&Refusal::unknown_hook());
        };
        if !receiver.allows(client) {
            return Answer::refused(&Refusal::new(
                403,
                Cause::NotAllowed,
                format!("source address {client} is not allowed for this receiver"),
            ));
        }
        if receiver.suspended {
            return Answer::refused(&Refusal::new(
                503,
                Cause::Suspended,
                "receiver is suspended (spec.suspend)",
            ));
        }
        if req.method != Method::POST {
            return Answer::refused(&Refusal::new(
                405,
                Cause::MethodNotAllowed,
                "only POST is accepted",
            ));
        }
        if declared_length(s).is_some_and(|n| n > rt.limits.max_body_bytes) {
            return too_large(rt);
        }
        let head = &s.req_header().headers;
        let mut delivery_id = receiver.delivery_id(head).map(clip_id);
        log.delivery_id = delivery_id.clone();
        let event = receiver.verifier.event_header().map(|h| {
            head.get(h)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        });
        log.event = event.as_ref().map(|e| e.chars().take(64).collect());
        let mut check = match receiver.verifier.begin(head) {
            Ok(c) => c,
            Err(r) => {
                if r.status == 401 {
                    failed(rt, client);
                }
                return Answer::refused(&r);
            }
        };
        if expects_continue(s) {
            if let Err(e) = s.write_continue_response().await {
                return Answer::text(
                    400,
                    "malformed_request",
                    &format!("cannot continue: {}", head::explanation(&e)),
                );
            }
        }
        let deadline = tokio::time::Instant::now() + rt.limits.body_timeout;
        let mut total: u64 = 0;
        // Kept only when something after verification reads it; otherwise memory per request
        // does not grow with the body.
        let mut body = receiver.keep_body.then(Vec::new);
        loop {
            match timeout_at(deadline, s.read_request_body()).await {
                Err(_) => {
                    return Answer::refused(&Refusal::new(
                        408,
                        Cause::BodyTimeout,
                        format!(
                            "body not received within {}",
                            humantime::format_duration(rt.limits.body_timeout)
                        ),
                    ))
                }
                // Where a body that does not parse ends is unknown: what follows it is not
                // read as another request.
                Ok(Err(e)) => {
                    return Answer::refused(&Refusal::bad_request(
                        Cause::MalformedRequest,
                        format!("malformed body: {}", head::explanation(&e)),
                    ))
                    .closing()
                }
                Ok(Ok(None)) => break,
                Ok(Ok(Some(chunk))) => {
                    total += chunk.len() as u64;
                    if total > rt.limits.max_body_bytes {
                        return too_large(rt);
                    }
                    check.update(&chunk);
                    if let Some(b) = body.as_mut() {
                        b.extend_from_slice(&chunk);
                    }
                }
            }
        }
        // pingora reads chunk lines leniently; the bytes are read again for what it lets by.
        if let Some(why) = super::tls_stream::framing_error(s) {
            return Answer::refused(&Refusal::bad_request(
                Cause::MalformedRequest,
                format!("malformed body: {why}"),
            ))
            .closing();
        }
        if let Err(r) = check.finish() {
            failed(rt, client);
            return Answer::refused(&r);
        }
        let req = s.req_header();
        let evidence = if receiver.verifier.completes() {
            let body = body.as_deref().unwrap_or_default();
            match receiver.verifier.complete(&req.headers, body).await {
                Ok(e) => e,
                Err(r) => {
                    if r.status == 401 {
                        failed(rt, client);
                    }
                    return Answer::refused(&r);
                }
            }
        } else {
            Evidence::default()
        };
        if delivery_id.is_none() {
            delivery_id = evidence.delivery_id.as_deref().map(clip_id);
            log.delivery_id.clone_from(&delivery_id);
        }
        let verified = Verified {
            head: req,
            body,
            evidence,
        };
        if let Some(ev) = event.as_deref() {
            if receiver.verifier.is_ping(ev) {
                return Answer::json(
                    200,
                    "ping",
                    &Summary {
                        receiver: &receiver.label,
                        event: Some(ev),
                        relayed: false,
                        ..Summary::default()
                    },
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
        if let Err(wait) = rt.guard.check_receiver(receiver.id) {
            return Answer::refused(&Refusal::new(
                429,
                Cause::RateLimited,
                "too many deliveries for this receiver",
            ))
            .retry_after(retry_after_secs(wait));
        }
        let claimed = match &delivery_id {
            Some(id) if !receiver.replay_window.is_zero() => {
                match rt
                    .guard
                    .replays
                    .claim(receiver.id, id, receiver.replay_window)
                {
                    Claim::Duplicate => {
                        return Answer::json(
                            200,
                            "duplicate",
                            &Summary {
                                receiver: &receiver.label,
                                delivery: Some(id),
                                duplicate: Some(true),
                                relayed: false,
                                ..Summary::default()
                            },
                        )
                    }
                    Claim::New => Some(id.as_str()),
                }
            }
            _ => None,
        };
        let answer = match &receiver.forward {
            Some(spec) => {
                self.forward_to(&receiver, spec, verified, client, log)
                    .await
            }
            None => self.relay_to(&receiver, &verified, log).await,
        };
        if answer.status >= 300 {
            // Not relayed: the provider's redelivery must go through.
            if let Some(id) = claimed {
                rt.guard.replays.release(receiver.id, id);
            }
        }
        answer
    }

    /// 200 when every target was patched (or filtered out) within `relay.wait`, 502 when the
    /// API refused one for good or its filter could not be evaluated, 202 when some are still
    /// queued (safely, when the queue is durable). 400 when filters read `req` and the
    /// JSON-typed body is not a JSON object.
    async fn relay_to(
        &self,
        receiver: &Receiver,
        verified: &Verified<'_>,
        log: &mut Delivery,
    ) -> Answer {
        let filters = match filter::for_delivery(
            &receiver.filters,
            &verified.head.headers,
            verified.body.as_deref(),
            &verified.evidence,
        ) {
            Ok(f) => f,
            Err(why) => {
                return Answer::refused(&Refusal::bad_request(Cause::MalformedRequest, why))
            }
        };
        let delivered = match self.relay.deliver(&receiver.targets, &filters).await {
            Ok(d) => d,
            Err(e) => {
                return Answer::text(
                    503,
                    "queue_failed",
                    &format!("cannot queue the delivery: {e}"),
                )
            }
        };
        let mut patched = Vec::new();
        let mut filtered = Vec::new();
        let mut unmatched = Vec::new();
        let mut queued = Vec::new();
        let mut failed = Vec::new();
        for (outcome, target) in delivered.results.iter().zip(&receiver.target_names) {
            match outcome {
                Some(Outcome::Patched {
                    patched: p,
                    filtered: f,
                    unmatched: none,
                }) => {
                    patched.extend(p.iter());
                    filtered.extend(f.iter());
                    if *none {
                        unmatched.push(target.as_str());
                    }
                }
                Some(Outcome::Refused(e)) => failed.push(format!("{target}: {e}")),
                Some(Outcome::FilterFailed(why)) => failed.push(format!("{target}: {why}")),
                Some(Outcome::Dropped(why)) => failed.push(format!("{target}: {why}")),
                None => queued.push(target.as_str()),
            }
        }
        log.patched = patched.len();
        if !failed.is_empty() {
            return Answer::text(
                502,
                "relay_refused",
                &format!("not reconciled: {}", failed.join("; ")),
            );
        }
        let (status, outcome) = if queued.is_empty() {
            (200, "relayed")
        } else {
            (202, "queued")
        };
        let summary = Summary {
            receiver: &receiver.label,
            event: log.event.as_deref(),
            relayed: true,
            requested_at: Some(&delivered.requested_at),
            patched: Some(patched),
            filtered: Some(filtered).filter(|f| !f.is_empty()),
            unmatched: Some(unmatched),
            queued: Some(queued).filter(|q| !q.is_empty()),
            ..Summary::default()
        };
        Answer::json(status, outcome, &summary)
    }

    /// Forward mode: Flux's own receiver answers, through the API server's service proxy. Its
    /// 200 is passed on; anything else means the delivery did not take effect, so the answer
    /// is an error the provider retries or shows.
    async fn forward_to(
        &self,
        receiver: &Receiver,
        spec: &ForwardSpec,
        verified: Verified<'_>,
        client: IpAddr,
        log: &Delivery,
    ) -> Answer {
        let body = verified.body.unwrap_or_default();
        let head = &verified.head.headers;
        let refused = |status: u16, why: String| {
            Answer::text(
                status,
                "forward_refused",
                &format!("Flux's receiver did not take the delivery: {why}"),
            )
        };
        match forward(self.relay.api(), spec, &receiver.path, head, body, client).await {
            Ok(200) => Answer::json(
                200,
                "forwarded",
                &Summary {
                    receiver: &receiver.label,
                    event: log.event.as_deref(),
                    relayed: true,
                    forwarded: Some(200),
                    ..Summary::default()
                },
            ),
            Ok(404) => refused(
                502,
                "no Receiver at this path (404); its token, name and namespace must match this receiver's".into(),
            ),
            Ok(503) => refused(
                503,
                "the Receiver is suspended or not ready (503)".into(),
            ),
            Ok(400) => refused(
                502,
                "it refused the delivery (400); its Secret or type differs from this receiver's".into(),
            ),
            Ok(500) => refused(
                502,
                "it could not request a reconcile of every resource (500)".into(),
            ),
            Ok(other) => refused(502, format!("it answered {other}")),
            Err(e) if e.is_permanent() => Answer::text(
                502,
                "forward_refused",
                &format!("the Kubernetes API refused to forward the delivery: {e}"),
            ),
            Err(e) => Answer::text(
                503,
                "forward_failed",
                &format!("cannot reach Flux's receiver through the Kubernetes API: {e}"),
            ),
        }
    }

    /// Writes the answer, logs and counts the request, and decides whether the connection
    /// can carry another one.
    async fn finish(
        &self,
        mut s: ServerSession,
        answer: Answer,
        log: Delivery,
        started: Instant,
        shutdown: &ShutdownWatch,
        head_read: bool,
    ) -> Option<ReusedHttpStream> {
        if *shutdown.borrow() || answer.close {
            s.set_keepalive(None);
        }
        // Without a parsed head (a malformed one) there is no body to speak of, and pingora
        // panics when asked about it.
        let body_done = !head_read || s.is_body_done();
        if !body_done && declared_length(&s).is_none_or(|n| n > DRAIN_LIMIT) {
            s.set_keepalive(None);
        }
        let written = answer.write(&mut s).await;
        if !body_done && written.is_ok() {
            // Read (and drop) what the client is still sending for a moment, so that closing
            // does not reset the connection before the client has read the answer.
            let _ = timeout(Duration::from_secs(1), s.drain_request_body()).await;
        }
        let receiver = log.receiver.as_deref().map_or("-", |r| r.label.as_str());
        let m = metrics::get();
        m.deliveries
            .with_label_values(&[
                receiver,
                log.receiver.as_deref().map_or("-", |r| r.kind.as_str()),
                answer.outcome,
            ])
            .inc();
        m.request_seconds
            .with_label_values(&[receiver])
            .observe(started.elapsed().as_secs_f64());
        tracing::info!(
            target: "fluxgate::delivery",
            receiver,
            client = %log.client.map_or_else(|| "-".to_string(), |c| c.to_string()),
            delivery = log.delivery_id.as_deref().unwrap_or("-"),
            event = log.event.as_deref().unwrap_or("-"),
            outcome = answer.outcome,
            status = answer.status,
            reason = answer.reason().unwrap_or(""),
            patched = log.patched,
            duration_ms = started.elapsed().as_secs_f64() * 1000.0,
            "delivery"
        );
        written.ok()?;
        if !head_read {
            return None;
        }
        let persist = HttpPersistentSettings::for_session(&s);
        match s.finish().await {
            Ok(reusable) => reusable.map(|r| ReusedHttpStream::from_reusable_stream(r, persist)),
            Err(_) => None,
        }
    }
}

/// A provider's delivery id as it is remembered and logged: at most 128 characters, so a
/// sender cannot make one replay-cache entry or log line as large as it likes.
fn clip_id(id: &str) -> String {
    id.chars().take(128).collect()
}

fn failed(rt: &Runtime, client: IpAddr) {
    if rt.guard.record_failure(client) {
        tracing::warn!(client = %client, "address blocked after repeated failed verifications or unknown paths");
    }
}

fn too_large(rt: &Runtime) -> Answer {
    Answer::refused(&Refusal::new(
        413,
        Cause::TooLarge,
        format!("body larger than {} bytes", rt.limits.max_body_bytes),
    ))
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
