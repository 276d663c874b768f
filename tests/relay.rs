//! The durable relay queue end to end: deliveries while the API is down, a crash, permanent
//! refusals, Retry-After, SIGTERM during a stream of deliveries, a graceful upgrade and a burst.
//! Each test drives the real binary over TLS on loopback against the stand-in API.

use crate::common::*;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

const GIT: &str = "source.toolkit.fluxcd.io/v1";
const KS: &str = "kustomize.toolkit.fluxcd.io/v1";
/// Edge limits out of the way, for tests that send many deliveries from one address.
const NO_LIMITS: &str =
    "[limits]\nper_ip = \"off\"\nper_receiver = \"off\"\nmax_connections_per_ip = 0";

fn uid() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "relay-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// A GitRepository in flux-system, for clusters that need more targets than `flux_objects()`.
fn git_object(name: &str) -> Value {
    json!({"apiVersion": GIT, "kind": "GitRepository",
           "metadata": {"name": name, "namespace": "flux-system"},
           "spec": {"interval": "10m", "url": "https://example.com/repo.git"}})
}

/// `resources = [...]` naming GitRepositories in the receiver's namespace.
fn gitrepos(names: &[&str]) -> String {
    let items: Vec<String> = names
        .iter()
        .map(|n| format!("{{ kind = \"GitRepository\", name = \"{n}\" }}"))
        .collect();
    format!("resources = [{}]", items.join(", "))
}

/// A github receiver in flux-system; `extra` holds its `resources` and any other lines.
fn receiver(s: &Setup, name: &str, secret: &str, extra: &str) -> String {
    format!(
        "name = \"{name}\"\nnamespace = \"flux-system\"\ntype = \"github\"\nsecret_file = \"{}\"\n{extra}",
        s.secret(name, secret).display()
    )
}

/// `[relay]` with `lines`, plus `queue_dir` when given.
fn relay_section(queue_dir: Option<&std::path::Path>, lines: &str) -> String {
    let mut s = String::from("[relay]\n");
    if let Some(d) = queue_dir {
        std::fs::create_dir_all(d).unwrap();
        s.push_str(&format!("queue_dir = \"{}\"\n", d.display()));
    }
    s.push_str(lines);
    s
}

fn git_path(name: &str) -> String {
    format!("/apis/source.toolkit.fluxcd.io/v1/namespaces/flux-system/gitrepositories/{name}")
}

/// Every PATCH the stand-in received for `path`, in the order answered.
fn patches_to(gw: &Gateway, path: &str) -> Vec<kube_standin::Recorded> {
    gw.patches()
        .into_iter()
        .filter(|p| p.path == path)
        .collect()
}

fn rfc3339(s: &str) -> OffsetDateTime {
    OffsetDateTime::parse(s, &Rfc3339)
        .unwrap_or_else(|e| panic!("requestedAt {s:?} is not RFC 3339: {e}"))
}

/// The error and its sources on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// What one delivery was answered.
#[derive(Debug, Clone)]
struct Reply {
    id: String,
    status: u16,
    text: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| {
            panic!(
                "delivery {} was answered {} with a body that is not JSON ({e}): {}",
                self.id, self.status, self.text
            )
        })
    }

    /// Answered 200 (patched) or 202 (queued).
    fn accepted(&self) -> bool {
        self.status == 200 || self.status == 202
    }

    /// The `requestedAt` of a 200 or 202 answer.
    fn requested_at(&self) -> OffsetDateTime {
        let v = self.json();
        let s = v["requestedAt"].as_str().unwrap_or_else(|| {
            panic!(
                "delivery {} answered {} without requestedAt: {}",
                self.id, self.status, self.text
            )
        });
        rfc3339(s)
    }

    /// The `queued` list of a 202 answer.
    fn queued(&self) -> Vec<String> {
        self.json()["queued"]
            .as_array()
            .unwrap_or_else(|| {
                panic!(
                    "a 202 answer must list what is queued (delivery {}): {}",
                    self.id, self.text
                )
            })
            .iter()
            .map(|v| v.as_str().unwrap_or_default().to_string())
            .collect()
    }
}

/// Why a delivery got no answer.
#[derive(Debug, Clone)]
struct Failed {
    id: String,
    error: String,
    /// The connection could not be made (refused, reset during the handshake).
    connect: bool,
}

type Sent = Result<Reply, Failed>;

/// Signs and sends GitHub push deliveries to one receiver, each with a fresh delivery id.
#[derive(Clone)]
struct Sender {
    client: reqwest::Client,
    url: String,
    secret: Arc<str>,
}

impl Sender {
    /// `fresh`: a new connection for every delivery (no keep-alive pool).
    fn new(gw: &Gateway, receiver: &str, secret: &str, fresh: bool) -> Self {
        install_crypto();
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .add_root_certificate(
                reqwest::Certificate::from_pem(gw.setup.cert_pem.as_bytes()).unwrap(),
            )
            .timeout(Duration::from_secs(10));
        if fresh {
            b = b.pool_max_idle_per_host(0);
        }
        Sender {
            client: b.build().unwrap(),
            url: gw.url(&hook(secret, receiver, "flux-system")),
            secret: secret.into(),
        }
    }

    async fn send(&self) -> Sent {
        let id = uid();
        // Another push each time: the same signed body again would be a replay.
        let body = fresh_push();
        let fail = |e: reqwest::Error| Failed {
            id: id.clone(),
            connect: e.is_connect(),
            error: chain(&e),
        };
        let r = self
            .client
            .post(&self.url)
            .header("Content-Type", "application/json")
            .header("X-GitHub-Event", "push")
            .header("X-GitHub-Delivery", &id)
            .header("X-Hub-Signature-256", sig("sha256", &self.secret, &body))
            .body(body)
            .send()
            .await
            .map_err(fail)?;
        let status = r.status().as_u16();
        let text = r.text().await.map_err(fail)?;
        Ok(Reply {
            id: id.clone(),
            status,
            text,
        })
    }

    /// Sends and expects an answer.
    async fn deliver(&self) -> Reply {
        match self.send().await {
            Ok(r) => r,
            Err(f) => panic!("delivery {} got no answer: {}", f.id, f.error),
        }
    }
}

/// A stream of deliveries started every `every`, each on its own task and connection, until
/// stopped (or, with `stop_when_refused`, until a connection is refused).
struct Stream {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<Sent>>,
}

impl Stream {
    fn start(sender: Sender, every: Duration, stop_when_refused: bool) -> Stream {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let refused = Arc::new(AtomicBool::new(false));
            let mut set = tokio::task::JoinSet::new();
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // A hard bound, so that a test that never stops its stream still ends.
            let until = Instant::now() + Duration::from_secs(20);
            while !flag.load(Ordering::SeqCst)
                && Instant::now() < until
                && !(stop_when_refused && refused.load(Ordering::SeqCst))
            {
                tick.tick().await;
                let s = sender.clone();
                let refused = refused.clone();
                set.spawn(async move {
                    let r = s.send().await;
                    if matches!(&r, Err(f) if f.connect) {
                        refused.store(true, Ordering::SeqCst);
                    }
                    r
                });
            }
            let mut out = Vec::new();
            while let Some(r) = set.join_next().await {
                out.push(r.expect("a delivery task panicked"));
            }
            out
        });
        Stream { stop, task }
    }

    /// Lets the stream end by itself within `limit`, then stops it; every delivery sent.
    async fn finish_within(mut self, limit: Duration) -> Vec<Sent> {
        if let Ok(r) = tokio::time::timeout(limit, &mut self.task).await {
            return r.unwrap();
        }
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap()
    }

    async fn finish(self) -> Vec<Sent> {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap()
    }
}

/// The newest `requestedAt` among the deliveries answered 200 or 202.
fn newest(replies: &[&Reply]) -> OffsetDateTime {
    replies
        .iter()
        .filter(|r| r.accepted())
        .map(|r| r.requested_at())
        .max()
        .expect("no delivery was answered 200 or 202")
}

/// Waits up to `limit` until each GitRepository in `names` (in flux-system) carries a
/// requestedAt at least `at`; panics naming every target that lags and what it holds.
async fn expect_requested_at(
    gw: &Gateway,
    names: &[&str],
    at: OffsetDateTime,
    limit: Duration,
    what: &str,
) {
    let until = Instant::now() + limit;
    loop {
        let lagging: Vec<String> = names
            .iter()
            .filter_map(|n| {
                let a = gw.annotation(GIT, "GitRepository", "flux-system", n);
                match a.as_deref().map(rfc3339) {
                    Some(v) if v >= at => None,
                    _ => Some(format!("GitRepository flux-system/{n} has {a:?}")),
                }
            })
            .collect();
        if lagging.is_empty() {
            return;
        }
        if Instant::now() >= until {
            panic!(
                "{what}: within {limit:?}, every target should carry requestedAt >= {} (the \
                 newest answered delivery), but {}\nPATCHes seen: {:?}\ngateway log:\n{}",
                at.format(&Rfc3339).unwrap(),
                lagging.join("; "),
                gw.patches()
                    .iter()
                    .map(|p| format!("{} {}", p.status, p.path))
                    .collect::<Vec<_>>(),
                gw.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (up to 3 s) until the stand-in has received no request for 300 ms.
async fn settle(gw: &Gateway) {
    let until = Instant::now() + Duration::from_secs(3);
    let mut n = gw.api.requests().len();
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = gw.api.requests().len();
        if now == n {
            return;
        }
        n = now;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn deliveries_while_the_api_is_down_are_queued_coalesced_and_relayed_when_it_returns() {
    let names = ["app", "other", "lonely", "fourth", "fifth"];
    let mut s = Setup::new().section(NO_LIMITS).section(&relay_section(
        None,
        "wait = \"300ms\"\nmin_interval = \"1s\"\nbackoff_base = \"100ms\"\nbackoff_max = \"500ms\"",
    ));
    for (i, n) in names.iter().enumerate() {
        let r = receiver(
            &s,
            &format!("r{i}"),
            &format!("secret-{i}"),
            &gitrepos(&[n]),
        );
        s = s.receiver(&r);
    }
    let api = kube_standin::StandIn::start(
        api_config()
            .object(git_object("fourth"))
            .object(git_object("fifth")),
    )
    .unwrap();
    let gw = s.start_with(api);
    let senders: Vec<Sender> = (0..names.len())
        .map(|i| Sender::new(&gw, &format!("r{i}"), &format!("secret-{i}"), false))
        .collect();

    gw.api.set_down(true);
    let mut set = tokio::task::JoinSet::new();
    for i in 0..50 {
        let s = senders[i % names.len()].clone();
        set.spawn(async move { (i % names.len(), s.deliver().await) });
    }
    let mut per_target: Vec<Vec<Reply>> = vec![Vec::new(); names.len()];
    while let Some(r) = set.join_next().await {
        let (t, reply) = r.unwrap();
        per_target[t].push(reply);
    }
    for (t, replies) in per_target.iter().enumerate() {
        assert_eq!(replies.len(), 10);
        for r in replies {
            assert_eq!(
                r.status, 202,
                "with the API down, delivery {} must be queued and answered 202: {}",
                r.id, r.text
            );
            let want = format!("GitRepository flux-system/{}", names[t]);
            assert_eq!(r.queued(), [want], "delivery {}: {}", r.id, r.text);
        }
    }
    assert!(
        gw.patches().is_empty(),
        "the API was down: no PATCH can have arrived"
    );

    gw.api.set_down(false);
    let back = Instant::now();
    for (t, replies) in per_target.iter().enumerate() {
        let last = newest(&replies.iter().collect::<Vec<_>>());
        expect_requested_at(
            &gw,
            &[names[t]],
            last,
            Duration::from_secs(10),
            "after the API came back",
        )
        .await;
    }
    eprintln!(
        "every target caught up {:?} after the API came back",
        back.elapsed()
    );
    // Anything still coming would come within min_interval.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let patches = gw.patches();
    assert!(
        patches.len() <= 15,
        "50 deliveries to 5 targets must be coalesced, yet the API saw {} PATCHes: {:?}",
        patches.len(),
        patches
            .iter()
            .map(|p| format!("{} {}", p.status, p.path))
            .collect::<Vec<_>>()
    );
    for n in names {
        assert!(
            patches_to(&gw, &git_path(n))
                .iter()
                .any(|p| p.status == 200),
            "GitRepository flux-system/{n} was never patched successfully"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn queued_jobs_survive_sigkill_and_are_relayed_by_the_next_process() {
    let names = ["app", "other", "lonely"];
    let s = Setup::new();
    let queue = s.path("queue");
    let s = s.section(&relay_section(
        Some(&queue),
        "wait = \"300ms\"\nbackoff_base = \"100ms\"\nbackoff_max = \"500ms\"",
    ));
    let r = receiver(&s, "crash", "crash-secret", &gitrepos(&names));
    let mut gw = s.receiver(&r).start();
    let sender = Sender::new(&gw, "crash", "crash-secret", false);

    gw.api.set_down(true);
    let mut replies = Vec::new();
    for _ in 0..4 {
        let r = sender.deliver().await;
        assert_eq!(
            r.status, 202,
            "with the API down, delivery {} must be queued and answered 202: {}",
            r.id, r.text
        );
        let mut queued = r.queued();
        queued.sort();
        assert_eq!(
            queued,
            [
                "GitRepository flux-system/app",
                "GitRepository flux-system/lonely",
                "GitRepository flux-system/other"
            ],
            "{}",
            r.text
        );
        replies.push(r);
    }
    let last = newest(&replies.iter().collect::<Vec<_>>());

    // SIGKILL: nothing gets a chance to flush.
    gw.child.kill().unwrap();
    gw.child.wait().unwrap();
    let files: Vec<_> = std::fs::read_dir(&queue)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        !files.is_empty(),
        "jobs answered 202 must be on disk in queue_dir {}, which is empty",
        queue.display()
    );
    assert!(gw.patches().is_empty(), "the API was down the whole time");

    gw.api.set_down(false);
    gw.restart();
    expect_requested_at(
        &gw,
        &names,
        last,
        Duration::from_secs(10),
        "after SIGKILL and a restart on the same queue_dir",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn permanent_refusals_are_answered_502_logged_counted_and_never_retried() {
    let s = Setup::new().section(&relay_section(
        None,
        "wait = \"2s\"\nbackoff_base = \"100ms\"\nbackoff_max = \"500ms\"",
    ));
    let r = receiver(
        &s,
        "refused",
        "refused-secret",
        &format!(
            "resources = [\n  {{ kind = \"GitRepository\", name = \"missing\" }},\n  {{ kind = \"Kustomization\", apiVersion = \"{KS}\", name = \"app\", namespace = \"apps\" }},\n  {{ kind = \"GitRepository\", name = \"app\" }},\n]"
        ),
    );
    let gw = s.receiver(&r).start();
    let git_refused =
        "fluxgate_relay_jobs_total{cluster=\"default\",kind=\"GitRepository\",result=\"refused\"}";
    let ks_refused =
        "fluxgate_relay_jobs_total{cluster=\"default\",kind=\"Kustomization\",result=\"refused\"}";
    let (git_before, ks_before) = (gw.metric(git_refused), gw.metric(ks_refused));

    let reply = Sender::new(&gw, "refused", "refused-secret", false)
        .deliver()
        .await;
    assert_eq!(reply.status, 502, "{}", reply.text);
    assert_eq!(
        reply.text.trim().lines().count(),
        1,
        "one line: {}",
        reply.text
    );
    assert!(
        reply
            .text
            .contains("GitRepository flux-system/missing: 404 NotFound"),
        "the 502 must name the missing object and its reason: {}",
        reply.text
    );
    assert!(
        reply.text.contains("Kustomization apps/app: 403 Forbidden"),
        "the 502 must name the forbidden object and its reason: {}",
        reply.text
    );
    // The target that could be patched still was.
    assert!(
        gw.annotation(GIT, "GitRepository", "flux-system", "app")
            .is_some(),
        "GitRepository flux-system/app must still be patched"
    );

    // Refused for good: never retried, however long we wait.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let missing = patches_to(&gw, &git_path("missing"));
    let forbidden = patches_to(
        &gw,
        "/apis/kustomize.toolkit.fluxcd.io/v1/namespaces/apps/kustomizations/app",
    );
    assert_eq!(
        missing.iter().map(|p| p.status).collect::<Vec<_>>(),
        [404],
        "exactly one PATCH attempt on the missing GitRepository"
    );
    assert_eq!(
        forbidden.iter().map(|p| p.status).collect::<Vec<_>>(),
        [403],
        "exactly one PATCH attempt on the forbidden Kustomization"
    );

    let logs = gw.logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("flux-system/missing")
                && (l.contains("404") || l.contains("NotFound"))),
        "the log must name the missing target and its reason:\n{logs}"
    );
    assert!(
        logs.lines()
            .any(|l| l.contains("apps/app") && (l.contains("403") || l.contains("Forbidden"))),
        "the log must name the forbidden target and its reason:\n{logs}"
    );
    assert_eq!(
        gw.metric(git_refused),
        git_before + 1.0,
        "{git_refused} counts the refused GitRepository"
    );
    assert_eq!(
        gw.metric(ks_refused),
        ks_before + 1.0,
        "{ks_refused} counts the refused Kustomization"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_after_on_a_429_is_honoured() {
    let s = Setup::new().section(&relay_section(
        None,
        "wait = \"500ms\"\nbackoff_base = \"100ms\"\nbackoff_max = \"500ms\"",
    ));
    let r = receiver(&s, "slow", "slow-secret", &gitrepos(&["app"]));
    let gw = s.receiver(&r).start();
    let sender = Sender::new(&gw, "slow", "slow-secret", false);
    let path = git_path("app");

    // The stand-in fails the next request, whatever it is: let the gateway's own start-up
    // calls (a readiness check of the API, say) finish first, so the 429 meets the PATCH.
    settle(&gw).await;
    gw.api.fail_next(1, 429, Some(2));
    let delivery = tokio::spawn(async move { sender.deliver().await });
    // Stamp each request the stand-in records with the moment it was first seen.
    let mut seen: Vec<(Instant, kube_standin::Recorded)> = Vec::new();
    let until = Instant::now() + Duration::from_secs(8);
    loop {
        let all = gw.api.requests();
        let now = Instant::now();
        for r in all.into_iter().skip(seen.len()) {
            seen.push((now, r));
        }
        if seen
            .iter()
            .any(|(_, r)| r.method == "PATCH" && r.path == path && r.status < 300)
        {
            break;
        }
        assert!(
            Instant::now() < until,
            "no successful PATCH within 8 s of a 429 with Retry-After: 2; requests: {:?}\n{}",
            seen.iter()
                .map(|(_, r)| format!("{} {} {}", r.method, r.status, r.path))
                .collect::<Vec<_>>(),
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let reply = delivery.await.unwrap();

    let (i, (refused_at, first)) = seen
        .iter()
        .enumerate()
        .find(|(_, (_, r))| r.status == 429)
        .expect("the stand-in answered no request 429");
    assert_eq!(
        (first.method.as_str(), first.path.as_str()),
        ("PATCH", path.as_str()),
        "the 429 went to the target's PATCH"
    );
    let (next_at, next) = seen[i + 1..]
        .iter()
        .find(|(_, r)| r.path == path)
        .expect("a second attempt");
    let gap = next_at.duration_since(*refused_at);
    assert!(
        gap >= Duration::from_millis(1800),
        "Retry-After: 2 must be honoured, but the next attempt ({} {}) came {gap:?} after the 429",
        next.method,
        next.status
    );
    assert!(next.status < 300, "the retry succeeded: {}", next.status);
    assert_eq!(
        reply.status, 202,
        "the patch waits 2 s (Retry-After) and relay.wait is 500ms: {}",
        reply.text
    );
    assert_eq!(reply.queued(), ["GitRepository flux-system/app"]);
    let at = gw
        .annotation(GIT, "GitRepository", "flux-system", "app")
        .expect("the target was patched");
    assert_eq!(
        rfc3339(&at),
        reply.requested_at(),
        "the patch carries the delivery's requestedAt"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_during_a_stream_of_deliveries_loses_no_answered_delivery() {
    let names = ["app", "other"];
    let s = Setup::new();
    let queue = s.path("queue");
    let s = s
        .server("grace_period = \"2s\"\nshutdown_timeout = \"2s\"")
        .section(NO_LIMITS)
        .section(&relay_section(
            Some(&queue),
            "wait = \"100ms\"\nmin_interval = \"1s\"\nbackoff_base = \"100ms\"\nbackoff_max = \"500ms\"",
        ));
    let r = receiver(&s, "stream", "stream-secret", &gitrepos(&names));
    let mut gw = s.receiver(&r).start();
    let stream = Stream::start(
        Sender::new(&gw, "stream", "stream-secret", true),
        Duration::from_millis(20),
        true,
    );

    tokio::time::sleep(Duration::from_millis(300)).await;
    // The API goes away just before SIGTERM, so the jobs of the last deliveries cannot be
    // finished by this process: only the queue on disk can carry them over to the next.
    gw.api.set_down(true);
    tokio::time::sleep(Duration::from_millis(150)).await;
    let term = Instant::now();
    gw.signal("TERM");
    let status = wait_exit_async(&mut gw.child, Duration::from_secs(12)).await;
    assert!(
        status.is_some(),
        "fluxgate must exit within grace_period + shutdown_timeout after SIGTERM (waited 12 s)\n{}",
        gw.logs()
    );
    eprintln!("exited {:?} after SIGTERM with {status:?}", term.elapsed());
    let sent = stream.finish_within(Duration::from_secs(5)).await;

    let replies: Vec<&Reply> = sent.iter().filter_map(|r| r.as_ref().ok()).collect();
    let answered: Vec<&Reply> = replies.iter().copied().filter(|r| r.accepted()).collect();
    let others: Vec<String> = replies
        .iter()
        .filter(|r| !r.accepted())
        .map(|r| format!("{} {}", r.status, r.text.trim()))
        .collect();
    let failed: Vec<&Failed> = sent.iter().filter_map(|r| r.as_ref().err()).collect();
    eprintln!(
        "{} deliveries: {} answered 200/202, {} answered otherwise {others:?}, {} without an \
         answer {failed:?}",
        sent.len(),
        answered.len(),
        others.len(),
        failed.len()
    );
    let dropped: Vec<&&Failed> = failed.iter().filter(|f| !f.connect).collect();
    assert!(
        dropped.is_empty(),
        "a request fluxgate had accepted must be finished after SIGTERM, not dropped: {dropped:?}"
    );
    assert!(
        answered.len() >= 5,
        "the stream ran 300 ms before SIGTERM: expected several answered deliveries, got {}",
        answered.len()
    );
    assert!(
        failed.iter().any(|f| f.connect),
        "once fluxgate exited, connections must be refused: {failed:?}"
    );
    assert!(
        answered.iter().any(|r| r.status == 202),
        "deliveries answered while the API was down are answered 202"
    );
    let last = newest(&answered);

    gw.api.set_down(false);
    gw.restart();
    expect_requested_at(
        &gw,
        &names,
        last,
        Duration::from_secs(10),
        "after SIGTERM and a restart on the same queue_dir",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn graceful_upgrade_hands_over_without_a_refused_connection_or_a_lost_delivery() {
    let names = ["app", "other"];
    let s = Setup::new();
    let queue = s.path("queue");
    let sock = s.path("upgrade.sock");
    let s = s
        .server(&format!(
            "grace_period = \"1s\"\nshutdown_timeout = \"1s\"\nupgrade_sock = \"{}\"",
            sock.display()
        ))
        .section(NO_LIMITS)
        .section(&relay_section(
            Some(&queue),
            "wait = \"100ms\"\nmin_interval = \"1s\"\nbackoff_base = \"100ms\"\nbackoff_max = \"500ms\"",
        ));
    let r = receiver(&s, "upgrade", "upgrade-secret", &gitrepos(&names));
    // A second receiver, for a job only the old process ever holds.
    let side = receiver(&s, "side", "side-secret", &gitrepos(&["lonely"]));
    let mut gw = s.receiver(&r).receiver(&side).start();
    let stream = Stream::start(
        Sender::new(&gw, "upgrade", "upgrade-secret", true),
        Duration::from_millis(20),
        false,
    );
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut next = gw.spawn_serve(&["-u"], "gateway.upgraded.log");
    let until = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        if let Some(st) = next.child.try_wait().unwrap() {
            panic!(
                "the new process exited ({st}) before opening {}:\n{}",
                sock.display(),
                next.logs()
            );
        }
        assert!(
            Instant::now() < until,
            "the new process did not open {} within 10 s:\n{}",
            sock.display(),
            next.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // With the API down from here until the old process is gone, that process cannot finish
    // its jobs: the new one must adopt its queue file once it exits. The delivery to `side`
    // is answered by the old process alone (the new one has no socket yet).
    gw.api.set_down(true);
    let side = Sender::new(&gw, "side", "side-secret", false)
        .deliver()
        .await;
    assert_eq!(side.status, 202, "the API is down: {}", side.text);
    assert_eq!(side.queued(), ["GitRepository flux-system/lonely"]);
    let quit = Instant::now();
    gw.signal("QUIT");
    // pingora keeps the old process accepting for 5 s after handing the sockets over, then
    // grace_period and shutdown_timeout.
    let old = wait_exit_async(&mut gw.child, Duration::from_secs(15)).await;
    assert!(
        old.is_some(),
        "the old process must exit after SIGQUIT (waited 15 s)\n{}",
        gw.logs()
    );
    eprintln!("the old process exited {:?} after SIGQUIT", quit.elapsed());
    gw.api.set_down(false);
    assert!(
        next.child.try_wait().unwrap().is_none(),
        "the new process must still run:\n{}",
        next.logs()
    );
    // Keep sending for a moment against the new process alone.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent = stream.finish().await;

    let failed: Vec<String> = sent
        .iter()
        .filter_map(|r| r.as_ref().err())
        .map(|f| format!("{}: {}", f.id, f.error))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} deliveries got no answer during the upgrade: {failed:?}",
        failed.len(),
        sent.len()
    );
    let replies: Vec<&Reply> = sent.iter().filter_map(|r| r.as_ref().ok()).collect();
    let other: Vec<String> = replies
        .iter()
        .filter(|r| !r.accepted())
        .map(|r| format!("{} {} {}", r.id, r.status, r.text.trim()))
        .collect();
    assert!(
        other.is_empty(),
        "every delivery must be answered 200 or 202 during the upgrade: {other:?}"
    );
    eprintln!("{} deliveries, all answered", replies.len());
    let last = newest(&replies);
    for (which, logs) in [("old", gw.logs()), ("new", next.logs())] {
        assert!(
            !logs.contains("panicked at"),
            "the {which} process panicked:\n{logs}"
        );
    }

    gw.adopt(next);
    expect_requested_at(
        &gw,
        &names,
        last,
        Duration::from_secs(10),
        "after a graceful upgrade",
    )
    .await;
    expect_requested_at(
        &gw,
        &["lonely"],
        side.requested_at(),
        Duration::from_secs(10),
        "the new process adopts the old one's queue file once it exits",
    )
    .await;
    gw.signal("TERM");
    assert!(
        wait_exit_async(&mut gw.child, Duration::from_secs(10))
            .await
            .is_some(),
        "the new process must exit after SIGTERM\n{}",
        gw.logs()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_a_thousand_deliveries_makes_a_handful_of_patches() {
    let s = Setup::new().section(NO_LIMITS).section(&relay_section(
        None,
        "wait = \"50ms\"\nmin_interval = \"2s\"\nbackoff_base = \"100ms\"\nbackoff_max = \"500ms\"",
    ));
    let r = receiver(
        &s,
        "burst",
        "burst-secret",
        &format!("replay_window = \"0s\"\n{}", gitrepos(&["app"])),
    );
    let gw = s.receiver(&r).start();
    let senders: Vec<Sender> = (0..5)
        .map(|_| Sender::new(&gw, "burst", "burst-secret", false))
        .collect();

    let started = Instant::now();
    // Bounded even when the gateway stalls: what has no answer by then counts as a failure.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(12);
    let mut set = tokio::task::JoinSet::new();
    for w in 0..50 {
        let s = senders[w % senders.len()].clone();
        set.spawn(async move {
            let mut out = Vec::new();
            for _ in 0..20 {
                out.push(
                    tokio::time::timeout_at(deadline, s.send())
                        .await
                        .unwrap_or_else(|_| {
                            Err(Failed {
                                id: "-".into(),
                                error: "no answer within 12 s of the burst's start".into(),
                                connect: false,
                            })
                        }),
                );
            }
            out
        });
    }
    let mut sent = Vec::new();
    while let Some(r) = set.join_next().await {
        sent.extend(r.unwrap());
    }
    eprintln!("1000 deliveries answered in {:?}", started.elapsed());
    assert_eq!(sent.len(), 1000);
    let bad: Vec<String> = sent
        .iter()
        .filter_map(|r| match r {
            Ok(r) if r.accepted() => None,
            Ok(r) => Some(format!("{} {} {}", r.id, r.status, r.text.trim())),
            Err(f) => Some(format!("{}: {}", f.id, f.error)),
        })
        .collect();
    assert!(
        bad.is_empty(),
        "every delivery of the burst must be answered 200 or 202; {} were not: {:?}",
        bad.len(),
        &bad[..bad.len().min(20)]
    );
    let replies: Vec<&Reply> = sent.iter().filter_map(|r| r.as_ref().ok()).collect();
    let mut stamps: Vec<OffsetDateTime> = replies.iter().map(|r| r.requested_at()).collect();
    stamps.sort();
    stamps.dedup();
    assert_eq!(
        stamps.len(),
        1000,
        "every delivery gets its own, strictly increasing requestedAt"
    );
    let last = newest(&replies);
    expect_requested_at(&gw, &["app"], last, Duration::from_secs(6), "after a burst").await;
    // Whatever is still due would come within min_interval.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let patches = patches_to(&gw, &git_path("app"));
    assert!(
        patches.len() <= 5,
        "1000 deliveries to one target must be coalesced, yet the API saw {} PATCHes",
        patches.len()
    );
}

/// Many deliveries at once to one target with answers not waiting for the patch: the queue is
/// worked concurrently with the submissions. A lock-order inversion between them once froze
/// the whole listener after a few seconds of this.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_deliveries_and_the_relay_worker_never_deadlock() {
    let s = Setup::new()
        .section("[relay]\nwait = \"0s\"\nmin_interval = \"1ms\"\n\n[limits]\nper_ip = \"off\"\nper_receiver = \"off\"");
    let r = format!(
        "name = \"g\"\nnamespace = \"flux-system\"\ntype = \"generic\"\nsecret_file = \"{}\"\nreplay_window = \"0s\"\nresources = [{{ kind = \"GitRepository\", name = \"app\" }}, {{ kind = \"GitRepository\", name = \"other\" }}]",
        s.secret("g", "t").display()
    );
    let gw = std::sync::Arc::new(s.receiver(&r).start());
    let path = hook("t", "g", "flux-system");
    let until = std::time::Instant::now() + Duration::from_secs(4);
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let (gw, path) = (gw.clone(), path.clone());
        let client = gw.client();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u32;
            while std::time::Instant::now() < until {
                let r = tokio::time::timeout(
                    Duration::from_secs(5),
                    client.post(gw.url(&path)).body("").send(),
                )
                .await
                .expect("a delivery hung: the gateway stopped answering")
                .expect("the delivery failed");
                assert!(matches!(r.status().as_u16(), 200 | 202), "{}", r.status());
                n += 1;
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    assert!(total > 100, "only {total} deliveries in 4 s");
    let (status, _) = tokio::time::timeout(Duration::from_secs(5), gw.post(&path, &[], ""))
        .await
        .expect("the gateway stopped answering after the load");
    assert!(matches!(status, 200 | 202));
}
