//! The life cycle of one request on the public listener: head under a deadline and checked
//! for framing, client address, penalty box, rate, route, allow-list, suspension, method,
//! size, the credential as far as the head shows it, memory for a kept body, verification
//! while the body streams in, event filter, per-receiver rate, replay check, relay, answer.

use super::answer::Answer;
use super::body::{BodyCap, KeptBody};
use super::head;
use super::live::{Live, Runtime};
use crate::config::Receiver;
use crate::guard::client_ip::{self, Client};
use crate::guard::rate::retry_after_secs;
use crate::guard::replay::{self, Claim, Mark};
use crate::history::{self, History, Record, TargetResult};
use crate::metrics;
use crate::refusal::{Cause, Refusal};
use crate::relay::events;
use crate::relay::filter;
use crate::relay::forward::{forward, ForwardSpec};
use crate::relay::queue::Outcome;
use crate::relay::{Patched, Relay};
use crate::verify::{BodyCheck, Evidence, ReceiverType};
use http::{header, Method};
use pingora::apps::{HttpPersistentSettings, ReusedHttpStream};
use pingora::http::RequestHeader;
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
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
    history: Arc<History>,
    acme: Option<Arc<crate::acme::Acme>>,
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
    /// A receiver reaching clusters other than `default` alone: what happened in each.
    #[serde(skip_serializing_if = "Option::is_none")]
    clusters: Option<BTreeMap<&'a str, PerCluster<'a>>>,
}

/// One cluster's part of a delivery; empty lists are left out.
#[derive(Serialize, Default)]
struct PerCluster<'a> {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    patched: Vec<&'a Patched>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    filtered: Vec<&'a Patched>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    unmatched: Vec<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    queued: Vec<&'a str>,
    /// Refused for good (403, 404, a filter that cannot be evaluated, dropped); in forward
    /// mode, why the delivery did not take effect in that cluster.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    refused: Vec<String>,
    /// Forward mode: the status that cluster's Flux receiver answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    forwarded: Option<u16>,
}

/// A delivery that passed verification: what the filters and forward mode work from.
struct Verified<'a> {
    head: &'a RequestHeader,
    /// Present when the receiver keeps bodies (`Receiver::keep_body`).
    body: Option<Vec<u8>>,
    evidence: Evidence,
    /// GitHub's pushed commit and ref, read with `relay.events` on.
    push: events::Push,
}

/// Where the streamed body goes besides the signature check.
struct Sinks<'a> {
    digest: &'a mut replay::BodyDigest,
    kept: Option<&'a mut KeptBody>,
    push_head: Option<&'a mut events::BodyHead>,
}

/// What the log line and the history's record of one request say, filled in as the
/// request passes its phases and written once, in `finish`.
#[derive(Default)]
struct Delivery {
    /// The path was looked up: without a receiver, it named none.
    routed: bool,
    receiver: Option<Arc<Receiver>>,
    client: Option<IpAddr>,
    delivery_id: Option<String>,
    event: Option<String>,
    patched: usize,
    /// Passed verification (and the event and replay checks after it).
    verified: bool,
    requested_at: Option<String>,
    /// Per target, in order: what the relay did by the time of the answer.
    targets: Vec<TargetResult>,
    /// The relay's later word on targets still queued at the answer.
    pending: Vec<(usize, oneshot::Receiver<Outcome>)>,
}

impl HookApp {
    pub fn new(live: Arc<Live>, relay: Arc<Relay>, history: Arc<History>) -> Self {
        HookApp {
            live,
            relay,
            history,
            acme: None,
        }
    }

    /// With ACME: deliveries are answered 503 until the CA's certificate is served.
    pub fn with_acme(mut self, acme: Option<Arc<crate::acme::Acme>>) -> Self {
        self.acme = acme;
        self
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
        let head = timeout(rt.limits.head_timeout, s.read_request()).await;
        // In flight from its head to its answer: a stop waits for it (see drain).
        let _in_flight = super::drain::Busy::enter();
        match head {
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
            _ if self.acme.as_ref().is_some_and(|a| !a.issued()) => {
                Answer::text(503, "certificate_not_issued", "certificate not yet issued")
            }
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
        match self.phases(rt, s, peer, log).await {
            Ok(a) | Err(a) => a,
        }
    }

    /// The phases of one request, in order. Each hands on what the next needs, or ends the
    /// request with its answer (`Err`), so a refusal can never fall through to the relay.
    async fn phases(
        &self,
        rt: &Runtime,
        s: &mut ServerSession,
        peer: IpAddr,
        log: &mut Delivery,
    ) -> Phase<Answer> {
        check_head(rt, s)?;
        let who = client_address(rt, s, peer, log);
        let client = who.addr();
        // Looked up first so refusals below are counted against the receiver they aimed at;
        // an unknown path is still limited like any request before it is answered.
        let route = route(rt, s, log);
        guards(rt, who, peer, route.as_deref())?;
        let receiver = known(rt, route, who)?;
        admitted(&receiver, client)?;
        let cap = BodyCap::of(rt.limits.max_body_bytes, &receiver);
        method_and_size(s, cap)?;
        let (mut delivery_id, event) = identify(&receiver, s, log);
        let mut check = verify_head(rt, &receiver, s, who)?;
        let credential = authenticate(rt, &receiver, s, who).await?;
        let mut kept = keep_body(rt, &receiver, s)?;
        continue_if_expected(s).await?;
        // What identifies a signed body for the replay check, computed as it streams.
        let mut digest =
            replay::BodyDigest::new(check.needs_body() && !receiver.replay_window.is_zero());
        let mut push_head = self.push_head(&receiver);
        let sinks = Sinks {
            digest: &mut digest,
            kept: kept.as_mut(),
            push_head: push_head.as_mut(),
        };
        read_body(rt, s, cap, &mut check, sinks).await?;
        verify_body(rt, check, who, &receiver)?;
        // Read only now that the body is verified.
        let push = push_head.map(|h| h.push()).unwrap_or_default();
        // Its share of the budget is held as long as the body: until the relay is done.
        let (body, _held) = kept.map(KeptBody::into_parts).unzip();
        let evidence = verify_complete(rt, &receiver, s, body.as_deref(), who, credential).await?;
        if delivery_id.is_none() {
            delivery_id = evidence.delivery_id.as_deref().map(clip_id);
            log.delivery_id.clone_from(&delivery_id);
        }
        event_accepted(&receiver, event.as_deref(), log)?;
        receiver_rate(rt, &receiver)?;
        let marks = replay(rt, &receiver, delivery_id.as_deref(), digest.finish())?;
        log.verified = true;
        let verified = Verified {
            head: s.req_header(),
            body,
            evidence,
            push,
        };
        let answer = self
            .relay_or_forward(&receiver, verified, client, log)
            .await;
        if answer.status >= 300 {
            // Not relayed: the provider's redelivery must go through.
            rt.guard.replays.release(receiver.id, &marks);
        }
        Ok(answer)
    }

    /// With `relay.events`, a GitHub body's first bytes are kept to name the pushed commit.
    fn push_head(&self, receiver: &Receiver) -> Option<events::BodyHead> {
        (self.relay.writes_events() && receiver.kind == ReceiverType::Github)
            .then(events::BodyHead::new)
    }

    async fn relay_or_forward(
        &self,
        receiver: &Receiver,
        verified: Verified<'_>,
        client: IpAddr,
        log: &mut Delivery,
    ) -> Answer {
        match &receiver.forward {
            Some(spec) => self.forward_to(receiver, spec, verified, client, log).await,
            None => self.relay_to(receiver, &verified, log).await,
        }
    }

    /// 200 when every target was patched (or filtered out) within `relay.wait`, 502 when the
    /// API refused one for good or its filter could not be evaluated, 202 when some are still
    /// queued (safely, when the queue is durable). A receiver reaching several clusters gets
    /// the same statuses over all of them, and a JSON body saying what happened in each (the
    /// other clusters' patches stand when one refuses). 400 when filters read `req` and the
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
        let note = self.relay.writes_events().then(|| events::Note {
            receiver: receiver.label.clone(),
            event: log.event.clone(),
            delivery: log.delivery_id.clone(),
            push: verified.push.clone(),
        });
        let mut delivered = match self
            .relay
            .deliver(&receiver.targets, &filters, &receiver.reach, note)
            .await
        {
            Ok(d) => d,
            Err(e) => {
                return Answer::text(
                    503,
                    "queue_failed",
                    &format!("cannot queue the delivery: {e}"),
                )
            }
        };
        let fleet = self.relay.fleet();
        let name = |c: usize| fleet.cluster(c).map_or("", |c| &*c.name);
        log.targets = history::results(&receiver.targets, &delivered, name);
        log.requested_at = Some(delivered.requested_at.clone());
        log.pending = std::mem::take(&mut delivered.pending);
        let mut patched = Vec::new();
        let mut filtered = Vec::new();
        let mut unmatched = Vec::new();
        let mut queued = Vec::new();
        let mut failed = Vec::new();
        let mut clusters: BTreeMap<&str, PerCluster> = BTreeMap::new();
        for r in &delivered.results {
            let target = receiver.target_names[r.target].as_str();
            let per = clusters.entry(name(r.cluster)).or_default();
            match &r.outcome {
                Some(Outcome::Patched {
                    patched: p,
                    filtered: f,
                    unmatched: none,
                    ..
                }) => {
                    patched.extend(p.iter());
                    filtered.extend(f.iter());
                    per.patched.extend(p.iter());
                    per.filtered.extend(f.iter());
                    if *none {
                        unmatched.push(target);
                        per.unmatched.push(target);
                    }
                }
                Some(Outcome::Refused(e)) => per.refused.push(format!("{target}: {e}")),
                Some(Outcome::FilterFailed(why)) => per.refused.push(format!("{target}: {why}")),
                Some(Outcome::Dropped(why)) => per.refused.push(format!("{target}: {why}")),
                None => {
                    queued.push(target);
                    per.queued.push(target);
                }
            }
        }
        if !receiver.per_cluster {
            failed = clusters.into_values().flat_map(|c| c.refused).collect();
            clusters = BTreeMap::new();
        }
        log.patched = patched.len();
        let refused = clusters.values().any(|c| !c.refused.is_empty());
        if !failed.is_empty() {
            return Answer::text(
                502,
                "relay_refused",
                &format!("not reconciled: {}", failed.join("; ")),
            );
        }
        let (status, outcome) = if refused {
            // The other clusters' patches stand; the body says which cluster refused what.
            (502, "relay_refused")
        } else if queued.is_empty() {
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
            clusters: Some(clusters).filter(|c| !c.is_empty()),
            ..Summary::default()
        };
        Answer::json(status, outcome, &summary)
    }

    /// Forward mode: Flux's own receiver answers, through the API server's service proxy, in
    /// each cluster the receiver names (at once). Its 200 is passed on; anything else means
    /// the delivery did not take effect, so the answer is an error the provider retries or
    /// shows. Several clusters: 200 only when every one answered 200, else 502 when one refused
    /// for good, else 503; the body says what each answered.
    async fn forward_to(
        &self,
        receiver: &Receiver,
        spec: &ForwardSpec,
        verified: Verified<'_>,
        client: IpAddr,
        log: &Delivery,
    ) -> Answer {
        // One body shared by every cluster's request (a clone is a reference count), so
        // forwarding to N clusters holds what the budget reserved for it, not N copies.
        let body = bytes::Bytes::from(verified.body.unwrap_or_default());
        let head = &verified.head.headers;
        let fleet = self.relay.fleet();
        let sends = receiver
            .forward_clusters
            .iter()
            .filter_map(|&c| fleet.cluster(c))
            .map(|c| {
                let body = body.clone();
                async move {
                    let sent = forward(&c.api, spec, &receiver.path, head, body, client).await;
                    (
                        &*c.name,
                        sent.map_err(|e| (e.is_permanent(), e.to_string())),
                    )
                }
            });
        let results = futures::future::join_all(sends).await;
        let summary = |forwarded, clusters| Summary {
            receiver: &receiver.label,
            event: log.event.as_deref(),
            relayed: true,
            forwarded,
            clusters,
            ..Summary::default()
        };
        if !receiver.per_cluster {
            let Some((_, sent)) = results.into_iter().next() else {
                return Answer::text(503, "forward_failed", "no cluster to forward to");
            };
            return match forwarded(sent) {
                Ok(()) => Answer::json(200, "forwarded", &summary(Some(200), None)),
                Err((status, outcome, why)) => Answer::text(status, outcome, &why),
            };
        }
        let mut worst: Option<(u16, &'static str)> = None;
        let mut clusters = BTreeMap::new();
        for (name, sent) in results {
            let per = PerCluster {
                forwarded: sent.as_ref().ok().copied(),
                ..PerCluster::default()
            };
            let per = match forwarded(sent) {
                Ok(()) => per,
                Err((status, outcome, why)) => {
                    // A refusal for good outranks a passing failure: retrying will not help.
                    if worst.is_none_or(|(s, _)| s != 502) {
                        worst = Some((status, outcome));
                    }
                    PerCluster {
                        refused: vec![why],
                        ..per
                    }
                }
            };
            clusters.insert(name, per);
        }
        let (status, outcome) = worst.unwrap_or((200, "forwarded"));
        Answer::json(status, outcome, &summary(None, Some(clusters)))
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
        // Counted and logged before the answer goes out: whoever reads the answer (a provider,
        // a test, a monitoring probe) then finds the metrics and the log line already there.
        count_and_log(&log, &answer, started);
        self.record(log, &answer);
        let written = answer.write(&mut s).await;
        if !body_done && written.is_ok() {
            // Read (and drop) what the client is still sending for a moment, so that closing
            // does not reset the connection before the client has read the answer.
            let _ = timeout(Duration::from_secs(1), s.drain_request_body()).await;
        }
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

/// What one cluster's Flux receiver made of a forwarded delivery: `Ok` for its 200, else the
/// status, outcome and reason fluxgate answers with. `sent` is what Flux answered, or the API
/// server's own error (refused for good, or not).
fn forwarded(sent: Result<u16, (bool, String)>) -> Result<(), (u16, &'static str, String)> {
    let refused = |status: u16, why: &str| {
        Err((
            status,
            "forward_refused",
            format!("Flux's receiver did not take the delivery: {why}"),
        ))
    };
    match sent {
        Ok(200) => Ok(()),
        Ok(404) => refused(
            502,
            "no Receiver at this path (404); its token, name and namespace must match this receiver's",
        ),
        Ok(503) => refused(503, "the Receiver is suspended or not ready (503)"),
        Ok(400) => refused(
            502,
            "it refused the delivery (400); its Secret or type differs from this receiver's",
        ),
        Ok(500) => refused(
            502,
            "it could not request a reconcile of every resource (500)",
        ),
        Ok(other) => refused(502, &format!("it answered {other}")),
        Err((true, e)) => Err((
            502,
            "forward_refused",
            format!("the Kubernetes API refused to forward the delivery: {e}"),
        )),
        Err((false, e)) => Err((
            503,
            "forward_failed",
            format!("cannot reach Flux's receiver through the Kubernetes API: {e}"),
        )),
    }
}

/// Counts the request and writes its log line: what every request leaves, whatever its phase
/// ended it.
fn count_and_log(log: &Delivery, answer: &Answer, started: Instant) {
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
}

impl HookApp {
    /// The one place a request becomes a record of the history: requests that reached a
    /// receiver are recorded, those to unknown paths only counted.
    fn record(&self, log: Delivery, answer: &Answer) {
        let Some(receiver) = &log.receiver else {
            if log.routed {
                self.history.count_unrouted();
            }
            return;
        };
        let record = Record {
            time: history::now(),
            receiver: receiver.label.clone(),
            kind: receiver.kind.to_string(),
            client: log.client.map(|c| c.to_string()).unwrap_or_default(),
            delivery: log.delivery_id,
            event: log.event,
            status: answer.status,
            outcome: answer.outcome.to_string(),
            reason: answer.reason().map(str::to_string),
            verified: log.verified,
            requested_at: log.requested_at.clone(),
            targets: log.targets,
            ..Record::default()
        };
        let targets = record.targets.clone();
        let id = self.history.add(record);
        if let Some(at) = log.requested_at {
            self.history.follow(id, at, &targets, log.pending);
        }
    }
}

/// What one phase of a request gives the next, or the answer that ends the request.
type Phase<T> = Result<T, Answer>;

/// The head's framing and size, before anything in it is trusted.
fn check_head(rt: &Runtime, s: &ServerSession) -> Phase<()> {
    head::check(s, rt.limits.max_header_bytes).map_err(|r| Answer::refused(&r).closing())
}

/// The client's address: the peer's, or the one a trusted proxy forwarded.
fn client_address(rt: &Runtime, s: &ServerSession, peer: IpAddr, log: &mut Delivery) -> Client {
    let who = client_ip::resolve(
        peer,
        s.req_header()
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .map(|v| v.as_bytes()),
        &rt.guard.trusted,
    );
    log.client = Some(who.addr());
    who
}

/// The receiver the path names, if any.
fn route(rt: &Runtime, s: &ServerSession, log: &mut Delivery) -> Option<Arc<Receiver>> {
    let route = rt.routes.find(&s.req_header().uri).cloned();
    log.routed = true;
    log.receiver = route.clone();
    route
}

/// The penalty box (address-wide, or for this receiver only when the address is a
/// provider's) and the per-address rate, for every request, known path or not.
fn guards(rt: &Runtime, who: Client, peer: IpAddr, route: Option<&Receiver>) -> Phase<()> {
    if let Some(wait) = rt.guard.blocked_for(who, route.map(|r| r.id)) {
        let answer = Answer::refused(&Refusal::new(
            429,
            Cause::Blocked,
            "address blocked after repeated failures",
        ))
        .retry_after(retry_after_secs(wait));
        // Boxed for everything, and the connection is its own (not a proxy's): kept open, it
        // would go on sending at full speed, each request read and refused. Closed, it meets
        // the accept-time refusal (the tarpit) like its new connections.
        let own = matches!(who, Client::Addr(ip) if ip == peer);
        return Err(if own && rt.guard.blocked(peer).is_some() {
            answer.closing()
        } else {
            answer
        });
    }
    if let Err(wait) = rt.guard.check_ip(who) {
        return Err(Answer::refused(&Refusal::new(
            429,
            Cause::RateLimited,
            format!("too many requests from {}", who.addr()),
        ))
        .retry_after(retry_after_secs(wait)));
    }
    Ok(())
}

/// An unknown path counts as a failure of the address, like a bad signature.
fn known(rt: &Runtime, route: Option<Arc<Receiver>>, who: Client) -> Phase<Arc<Receiver>> {
    route.ok_or_else(|| {
        failed(rt, who, None);
        Answer::refused(&Refusal::unknown_hook())
    })
}

/// The receiver's allow-list, and Flux's `spec.suspend`.
fn admitted(receiver: &Receiver, client: IpAddr) -> Phase<()> {
    if !receiver.allows(client) {
        return Err(Answer::refused(&Refusal::new(
            403,
            Cause::NotAllowed,
            format!("source address {client} is not allowed for this receiver"),
        )));
    }
    if receiver.suspended {
        return Err(Answer::refused(&Refusal::new(
            503,
            Cause::Suspended,
            "receiver is suspended (spec.suspend)",
        )));
    }
    Ok(())
}

/// Only POST, and no body declared larger than the cap.
fn method_and_size(s: &ServerSession, cap: BodyCap) -> Phase<()> {
    if s.req_header().method != Method::POST {
        return Err(Answer::refused(&Refusal::new(
            405,
            Cause::MethodNotAllowed,
            "only POST is accepted",
        )));
    }
    if declared_length(s).is_some_and(|n| n > cap.bytes) {
        return Err(cap.too_large());
    }
    Ok(())
}

/// The provider's delivery id and event, from the head: what the log line names.
fn identify(
    receiver: &Receiver,
    s: &ServerSession,
    log: &mut Delivery,
) -> (Option<String>, Option<String>) {
    let head = &s.req_header().headers;
    let delivery_id = receiver.delivery_id(head).map(clip_id);
    log.delivery_id.clone_from(&delivery_id);
    let event = receiver.verifier.event_header().map(|h| {
        head.get(h)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    });
    log.event = event.as_ref().map(|e| e.chars().take(64).collect());
    (delivery_id, event)
}

/// What the head alone shows about the credential; returns what the body must still prove.
fn verify_head(
    rt: &Runtime,
    receiver: &Receiver,
    s: &ServerSession,
    who: Client,
) -> Phase<BodyCheck> {
    receiver
        .verifier
        .begin(&s.req_header().headers)
        .map_err(|r| refused_credential(rt, &r, who, receiver))
}

/// A bearer token checked against its issuer's keys, from the head alone: a sender without a
/// valid credential never has a body byte read.
async fn authenticate(
    rt: &Runtime,
    receiver: &Receiver,
    s: &ServerSession,
    who: Client,
) -> Phase<Evidence> {
    if !receiver.verifier.authenticates() {
        return Ok(Evidence::default());
    }
    receiver
        .verifier
        .authenticate(&s.req_header().headers)
        .await
        .map_err(|r| refused_credential(rt, &r, who, receiver))
}

/// For receivers that keep the body: its memory, reserved from the shared budget before any
/// of it is read (the declared length, or chunk by chunk), or a 503 past the budget.
fn keep_body(rt: &Runtime, receiver: &Receiver, s: &ServerSession) -> Phase<Option<KeptBody>> {
    if !receiver.keep_body {
        return Ok(None);
    }
    KeptBody::reserve(&rt.guard.bodies, declared_length(s).unwrap_or(0)).map(Some)
}

/// Answers `Expect: 100-continue` once the head has been accepted, so the client sends the body.
async fn continue_if_expected(s: &mut ServerSession) -> Phase<()> {
    if expects_continue(s) {
        if let Err(e) = s.write_continue_response().await {
            return Err(Answer::text(
                400,
                "malformed_request",
                &format!("cannot continue: {}", head::explanation(&e)),
            ));
        }
    }
    Ok(())
}

/// Streams the body through the check under one deadline, keeping it only when something
/// after verification reads it; otherwise memory per request does not grow with the body.
async fn read_body(
    rt: &Runtime,
    s: &mut ServerSession,
    cap: BodyCap,
    check: &mut BodyCheck,
    mut sinks: Sinks<'_>,
) -> Phase<()> {
    let deadline = tokio::time::Instant::now() + rt.limits.body_timeout;
    let mut total: u64 = 0;
    loop {
        match timeout_at(deadline, s.read_request_body()).await {
            Err(_) => {
                return Err(Answer::refused(&Refusal::new(
                    408,
                    Cause::BodyTimeout,
                    format!(
                        "body not received within {}",
                        humantime::format_duration(rt.limits.body_timeout)
                    ),
                )))
            }
            // Where a body that does not parse ends is unknown: what follows it is not read
            // as another request.
            Ok(Err(e)) => {
                return Err(Answer::refused(&Refusal::bad_request(
                    Cause::MalformedRequest,
                    format!("malformed body: {}", head::explanation(&e)),
                ))
                .closing())
            }
            Ok(Ok(None)) => return chunk_lines(s),
            Ok(Ok(Some(chunk))) => {
                total += chunk.len() as u64;
                if total > cap.bytes {
                    return Err(cap.too_large());
                }
                check.update(&chunk);
                sinks.digest.update(&chunk);
                if let Some(b) = sinks.kept.as_deref_mut() {
                    b.push(&chunk, cap, &rt.guard.bodies)?;
                }
                if let Some(h) = sinks.push_head.as_deref_mut() {
                    h.update(&chunk);
                }
            }
        }
    }
}

/// pingora reads chunk lines leniently; the bytes are read again for what it lets by.
fn chunk_lines(s: &ServerSession) -> Phase<()> {
    match super::tls_stream::framing_error(s) {
        None => Ok(()),
        Some(why) => Err(Answer::refused(&Refusal::bad_request(
            Cause::MalformedRequest,
            format!("malformed body: {why}"),
        ))
        .closing()),
    }
}

/// The HMAC over the body, once all of it has streamed through.
fn verify_body(rt: &Runtime, check: BodyCheck, who: Client, receiver: &Receiver) -> Phase<()> {
    check.finish().map_err(|r| {
        failed(rt, who, Some(receiver.id));
        Answer::refused(&r)
    })
}

/// The checks that need the whole body, for types that have them; what they learn is added
/// to what the credential showed.
async fn verify_complete(
    rt: &Runtime,
    receiver: &Receiver,
    s: &ServerSession,
    body: Option<&[u8]>,
    who: Client,
    credential: Evidence,
) -> Phase<Evidence> {
    if !receiver.verifier.completes() {
        return Ok(credential);
    }
    receiver
        .verifier
        .complete(&s.req_header().headers, body.unwrap_or_default())
        .await
        .map(|e| credential.and(e))
        .map_err(|r| refused_credential(rt, &r, who, receiver))
}

/// A refusal from a verifier; a 401 counts against the address, a 503 (keys unavailable)
/// does not.
fn refused_credential(rt: &Runtime, r: &Refusal, who: Client, receiver: &Receiver) -> Answer {
    if r.status == 401 {
        failed(rt, who, Some(receiver.id));
    }
    Answer::refused(r)
}

/// A ping is answered here without a relay; an event the receiver does not take is refused.
fn event_accepted(receiver: &Receiver, event: Option<&str>, log: &Delivery) -> Phase<()> {
    let Some(ev) = event else {
        return Ok(());
    };
    if receiver.verifier.is_ping(ev) {
        return Err(Answer::json(
            200,
            "ping",
            &Summary {
                receiver: &receiver.label,
                event: Some(ev),
                relayed: false,
                ..Summary::default()
            },
        ));
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
        return Err(Answer::refused(&Refusal::bad_request(
            Cause::EventNotAccepted,
            why,
        )));
    }
    Ok(())
}

/// The per-receiver rate, counted only for verified deliveries.
fn receiver_rate(rt: &Runtime, receiver: &Receiver) -> Phase<()> {
    rt.guard.check_receiver(receiver.id).map_err(|wait| {
        Answer::refused(&Refusal::new(
            429,
            Cause::RateLimited,
            "too many deliveries for this receiver",
        ))
        .retry_after(retry_after_secs(wait))
    })
}

/// Claims the delivery id and, for types whose signature covers the body, the body's digest
/// in the replay cache: either seen within the window makes a duplicate, answered 200
/// without a relay. Returns what was claimed, to release if the relay fails.
fn replay(
    rt: &Runtime,
    receiver: &Receiver,
    delivery_id: Option<&str>,
    body: Option<[u8; 32]>,
) -> Phase<Vec<Mark>> {
    if receiver.replay_window.is_zero() {
        return Ok(Vec::new());
    }
    let marks = replay::marks(delivery_id, body);
    if marks.is_empty()
        || rt
            .guard
            .replays
            .claim(receiver.id, &marks, receiver.replay_window)
            == Claim::New
    {
        return Ok(marks);
    }
    Err(Answer::json(
        200,
        "duplicate",
        &Summary {
            receiver: &receiver.label,
            delivery: delivery_id,
            duplicate: Some(true),
            relayed: false,
            ..Summary::default()
        },
    ))
}

/// A provider's delivery id as it is remembered and logged: at most 128 characters, so a
/// sender cannot make one replay-cache entry or log line as large as it likes.
fn clip_id(id: &str) -> String {
    id.chars().take(128).collect()
}

fn failed(rt: &Runtime, who: Client, receiver: Option<u32>) {
    if rt.guard.record_failure(who, receiver, &rt.ranges) {
        tracing::warn!(client = %who.addr(), "address blocked after repeated failed verifications or unknown paths");
    }
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
