//! Operations: the metrics on /metrics, /readyz and the API check behind it, JSON logs,
//! `fluxgate check` against the stand-in's RBAC, and live reloads of the configuration,
//! secrets and certificate. Each test drives the real binary over TLS on loopback.

use crate::common::*;
use kube_standin::{Rule, StandIn};
use serde_json::Value;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const KS: &str = "kustomize.toolkit.fluxcd.io/v1";
const APP: &str = "resources = [{ kind = \"GitRepository\", name = \"app\" }]";
/// Edge limits and the penalty box out of the way, for tests that poll a path until it is live.
const NO_LIMITS: &str = "[limits]\nper_ip = \"off\"\nper_receiver = \"off\"\nblock_after_failures = 0\nmax_connections_per_ip = 0";

/// A github receiver in flux-system with its secret in `<name>.secret`; `extra` holds its
/// `resources` and any other lines.
fn github(s: &Setup, name: &str, secret: &str, extra: &str) -> String {
    format!(
        "name = \"{name}\"\nnamespace = \"flux-system\"\ntype = \"github\"\nsecret_file = \"{}\"\n{extra}",
        s.secret(name, secret).display()
    )
}

/// POSTs a GitHub push signed with `secret` to `path` from 127.0.0.1; (status, body).
async fn push(gw: &Gateway, path: &str, secret: &str) -> (u16, String) {
    let body = fresh_push();
    gw.post(path, &refs(&signed(secret, &body, &uid())), body)
        .await
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// The last lines of a log, for failure messages.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Polls `probe` every 100 ms until it returns `Some`, for at most `limit`.
async fn eventually<T>(
    gw: &Gateway,
    what: &str,
    limit: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> T {
    let until = Instant::now() + limit;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        if Instant::now() >= until {
            panic!(
                "{what}: not within {limit:?}\n--- gateway log (tail) ---\n{}",
                tail(&gw.logs())
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Scrapes until `done` holds, for at most 3 s, and returns the last scrape either way: a
/// request is counted once its answer is written (and an unread body drained), so a scrape
/// sent the moment the answer arrives may come first.
async fn scrape_until(gw: &Gateway, done: impl Fn(&MetricsScrape) -> bool) -> MetricsScrape {
    let until = Instant::now() + Duration::from_secs(3);
    loop {
        let m = gw.scrape();
        if done(&m) || Instant::now() >= until {
            return m;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until a push to `path` signed with `secret` is answered 200, for at most 5 s.
async fn wait_live(gw: &Gateway, path: &str, secret: &str, what: &str) {
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let (st, text) = push(gw, path, secret).await;
        if st == 200 {
            return;
        }
        if Instant::now() >= until {
            panic!(
                "{what}: {path} still answers {st} {text:?} after 5 s\n--- gateway log (tail) ---\n{}",
                tail(&gw.logs())
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn assert_alive(gw: &mut Gateway) {
    if let Ok(Some(status)) = gw.child.try_wait() {
        panic!(
            "fluxgate exited with {status}\n--- gateway log (tail) ---\n{}",
            tail(&gw.logs())
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------------------

/// Every documented family: name, type and label names (histograms without `le`).
const FAMILIES: &[(&str, &str, &[&str])] = &[
    ("fluxgate_build_info", "gauge", &["version"]),
    (
        "fluxgate_deliveries_total",
        "counter",
        &["outcome", "receiver", "type"],
    ),
    (
        "fluxgate_request_duration_seconds",
        "histogram",
        &["receiver"],
    ),
    ("fluxgate_connections_refused_total", "counter", &["reason"]),
    ("fluxgate_open_connections", "gauge", &[]),
    ("fluxgate_tarpit_connections", "gauge", &[]),
    ("fluxgate_connections", "gauge", &[]),
    ("fluxgate_connection_limit", "gauge", &[]),
    ("fluxgate_idle_connections_closed_total", "counter", &[]),
    ("fluxgate_tls_handshake_failures_total", "counter", &[]),
    (
        "fluxgate_range_refreshes_total",
        "counter",
        &["result", "set"],
    ),
    (
        "fluxgate_relay_jobs_total",
        "counter",
        &["cluster", "kind", "result"],
    ),
    (
        "fluxgate_relay_patch_duration_seconds",
        "histogram",
        &["cluster", "kind"],
    ),
    ("fluxgate_relay_queue_depth", "gauge", &["cluster"]),
    (
        "fluxgate_relay_queue_oldest_job_age_seconds",
        "gauge",
        &["cluster"],
    ),
    ("fluxgate_kubernetes_api_up", "gauge", &["cluster"]),
    ("fluxgate_config_reloads_total", "counter", &["result"]),
    (
        "fluxgate_config_last_reload_success_timestamp_seconds",
        "gauge",
        &[],
    ),
    (
        "fluxgate_tls_certificate_expiry_timestamp_seconds",
        "gauge",
        &[],
    ),
];

/// The relay series of a configuration without `[[clusters]]`.
const DEFAULT_CLUSTER: [(&str, &str); 1] = [("cluster", "default")];

#[tokio::test(flavor = "multi_thread")]
async fn every_metric_is_exported_with_its_type_and_moves_with_its_event() {
    let s = Setup::new();
    let office = s.path("office.txt");
    std::fs::write(&office, "127.0.0.2/32\n").unwrap();
    let s = s
        .section(NO_LIMITS)
        .section(&format!(
            "[ranges.office]\nrefresh_file = \"{}\"\nrefresh_interval = \"200ms\"",
            office.display()
        ))
        .section("[relay]\nwait = \"300ms\"\nmin_interval = \"100ms\"\nbackoff_base = \"100ms\"\nbackoff_max = \"300ms\"");
    // Both receivers allow 127.0.0.1 (and a the office set), so 127.0.0.4 is allowed by none.
    let a = github(
        &s,
        "a",
        "metrics-secret-a",
        &format!("allow_from = [\"127.0.0.1\", \"office\"]\n{APP}"),
    );
    // Kustomization apps/app exists, but the default RBAC forbids patching it.
    let c = github(
        &s,
        "c",
        "metrics-secret-c",
        &format!("allow_from = [\"127.0.0.1\"]\nresources = [{{ kind = \"Kustomization\", apiVersion = \"{KS}\", name = \"app\", namespace = \"apps\" }}]"),
    );
    let mut gw = s.receiver(&a).receiver(&c).start();
    let pa = hook("metrics-secret-a", "a", "flux-system");
    let pc = hook("metrics-secret-c", "c", "flux-system");
    let ra = [
        ("receiver", "flux-system/a"),
        ("type", "github"),
        ("outcome", "relayed"),
    ];
    let outcome = |receiver: &'static str, ty: &'static str, outcome: &'static str| {
        [("receiver", receiver), ("type", ty), ("outcome", outcome)]
    };
    let git = |result: &'static str| {
        [
            ("cluster", "default"),
            ("kind", "GitRepository"),
            ("result", result),
        ]
    };

    // At start: the build, the served certificate, and the API seen up.
    let m0 = gw.scrape();
    assert_eq!(
        m0.get(
            "fluxgate_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0),
        "fluxgate_build_info{{version=\"{}\"}} must be 1:\n{}",
        env!("CARGO_PKG_VERSION"),
        m0.text
    );
    assert_eq!(
        m0.get("fluxgate_tls_certificate_expiry_timestamp_seconds", &[]),
        Some(cert_not_after(&gw.setup.cert_pem) as f64),
        "the expiry gauge must be the served certificate's notAfter:\n{}",
        m0.text
    );
    eventually(
        &gw,
        "fluxgate_kubernetes_api_up = 1 with the API reachable",
        Duration::from_secs(7),
        || {
            (gw.scrape()
                .get("fluxgate_kubernetes_api_up", &DEFAULT_CLUSTER)
                == Some(1.0))
            .then_some(())
        },
    )
    .await;

    // A relayed delivery.
    let (st, text) = push(&gw, &pa, "metrics-secret-a").await;
    assert_eq!(st, 200, "{text}");
    let recv_a = [("receiver", "flux-system/a")];
    let kind_git = [("cluster", "default"), ("kind", "GitRepository")];
    let m1 = scrape_until(&gw, |m| {
        m.value("fluxgate_deliveries_total", &ra) > m0.value("fluxgate_deliveries_total", &ra)
            && m.histogram_count("fluxgate_request_duration_seconds", &recv_a)
                > m0.histogram_count("fluxgate_request_duration_seconds", &recv_a)
            && m.value("fluxgate_relay_jobs_total", &git("patched"))
                > m0.value("fluxgate_relay_jobs_total", &git("patched"))
            && m.histogram_count("fluxgate_relay_patch_duration_seconds", &kind_git)
                > m0.histogram_count("fluxgate_relay_patch_duration_seconds", &kind_git)
    })
    .await;
    assert_eq!(
        m1.value("fluxgate_deliveries_total", &ra),
        m0.value("fluxgate_deliveries_total", &ra) + 1.0,
        "{}",
        m1.text
    );
    assert!(
        m1.histogram_count("fluxgate_request_duration_seconds", &recv_a)
            > m0.histogram_count("fluxgate_request_duration_seconds", &recv_a),
        "request duration observed for flux-system/a:\n{}",
        m1.text
    );
    assert!(
        m1.value("fluxgate_relay_jobs_total", &git("patched"))
            > m0.value("fluxgate_relay_jobs_total", &git("patched")),
        "{}",
        m1.text
    );
    assert!(
        m1.histogram_count("fluxgate_relay_patch_duration_seconds", &kind_git)
            > m0.histogram_count("fluxgate_relay_patch_duration_seconds", &kind_git),
        "{}",
        m1.text
    );

    // A bad signature, and a path no receiver has.
    let body = fixture("github/push.json");
    let (st, _) = gw
        .post(&pa, &refs(&signed("not-the-secret", &body, &uid())), body)
        .await;
    assert_eq!(st, 401);
    let (st, _) = gw
        .post(
            "/hook/nothing-here",
            &[("Content-Type", "application/json")],
            "{}",
        )
        .await;
    assert_eq!(st, 404);
    let bad = outcome("flux-system/a", "github", "bad_signature");
    let unknown = outcome("-", "-", "unknown_hook");
    let m2 = scrape_until(&gw, |m| {
        m.value("fluxgate_deliveries_total", &bad) > m1.value("fluxgate_deliveries_total", &bad)
            && m.value("fluxgate_deliveries_total", &unknown)
                > m1.value("fluxgate_deliveries_total", &unknown)
    })
    .await;
    assert_eq!(
        m2.value("fluxgate_deliveries_total", &bad),
        m1.value("fluxgate_deliveries_total", &bad) + 1.0,
        "{}",
        m2.text
    );
    assert_eq!(
        m2.value("fluxgate_deliveries_total", &unknown),
        m1.value("fluxgate_deliveries_total", &unknown) + 1.0,
        "{}",
        m2.text
    );

    // A target the API refuses for good.
    let (st, text) = push(&gw, &pc, "metrics-secret-c").await;
    assert_eq!(st, 502, "{text}");
    let refused = outcome("flux-system/c", "github", "relay_refused");
    let ks_refused = [
        ("cluster", "default"),
        ("kind", "Kustomization"),
        ("result", "refused"),
    ];
    let m3 = scrape_until(&gw, |m| {
        m.value("fluxgate_deliveries_total", &refused)
            > m2.value("fluxgate_deliveries_total", &refused)
            && m.value("fluxgate_relay_jobs_total", &ks_refused)
                > m2.value("fluxgate_relay_jobs_total", &ks_refused)
    })
    .await;
    assert_eq!(
        m3.value("fluxgate_deliveries_total", &refused),
        m2.value("fluxgate_deliveries_total", &refused) + 1.0,
        "{}",
        m3.text
    );
    assert!(
        m3.value("fluxgate_relay_jobs_total", &ks_refused)
            > m2.value("fluxgate_relay_jobs_total", &ks_refused),
        "{}",
        m3.text
    );

    // A connection from an address no receiver allows is closed before TLS.
    let not_allowed = [("reason", "not_allowed")];
    let before = m3.value("fluxgate_connections_refused_total", &not_allowed);
    let r = gw
        .client_from("127.0.0.4")
        .post(gw.url(&pa))
        .body("x")
        .send()
        .await;
    assert!(
        r.is_err(),
        "127.0.0.4 must not get through the TLS handshake"
    );
    eventually(
        &gw,
        "fluxgate_connections_refused_total{reason=\"not_allowed\"} to increase",
        Duration::from_secs(3),
        || {
            (gw.scrape()
                .value("fluxgate_connections_refused_total", &not_allowed)
                > before)
                .then_some(())
        },
    )
    .await;

    // TLS handshake failures: plaintext garbage, then a client that rejects the certificate.
    let failures = |gw: &Gateway| {
        gw.scrape()
            .value("fluxgate_tls_handshake_failures_total", &[])
    };
    let before = failures(&gw);
    {
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", gw.port))
            .await
            .unwrap();
        let _ = tcp
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\nthis is not TLS\r\n")
            .await;
        let mut buf = [0u8; 256];
        let _ = tokio::time::timeout(Duration::from_secs(3), tcp.read(&mut buf)).await;
    }
    let after_garbage = eventually(
        &gw,
        "fluxgate_tls_handshake_failures_total to count a client sending garbage",
        Duration::from_secs(3),
        || {
            let v = failures(&gw);
            (v > before).then_some(v)
        },
    )
    .await;
    let (stranger, _) = self_signed_cert((2024, 1, 1), (2099, 1, 1));
    assert!(
        tls_connect(gw.port, &[&stranger]).await.is_err(),
        "a client trusting another certificate must abort the handshake"
    );
    eventually(
        &gw,
        "fluxgate_tls_handshake_failures_total to count an aborted handshake",
        Duration::from_secs(3),
        || (failures(&gw) > after_garbage).then_some(()),
    )
    .await;

    // An open connection is counted while it is open.
    eventually(
        &gw,
        "fluxgate_open_connections back to 0 once the clients are gone",
        Duration::from_secs(5),
        || (gw.scrape().get("fluxgate_open_connections", &[]) == Some(0.0)).then_some(()),
    )
    .await;
    let mut open = tls_connect(gw.port, &[&gw.setup.cert_pem]).await.unwrap();
    let body = fixture("github/push.json");
    let h = signed("metrics-secret-a", &body, &uid());
    let (st, text) = http1_post(&mut open, &pa, &refs(&h), &body).await.unwrap();
    assert_eq!(st, 200, "{text}");
    let held = gw.scrape().value("fluxgate_open_connections", &[]);
    assert!(held >= 1.0, "one connection is open: {held}");
    drop(open);
    eventually(
        &gw,
        "fluxgate_open_connections to drop once the connection closes",
        Duration::from_secs(5),
        || (gw.scrape().value("fluxgate_open_connections", &[]) < held).then_some(()),
    )
    .await;

    // The office set is re-read every 200 ms.
    let office_ok = [("set", "office"), ("result", "ok")];
    let before = m0.value("fluxgate_range_refreshes_total", &office_ok);
    eventually(
        &gw,
        "fluxgate_range_refreshes_total{set=\"office\",result=\"ok\"} to increase",
        Duration::from_secs(3),
        || {
            (gw.scrape()
                .value("fluxgate_range_refreshes_total", &office_ok)
                > before)
                .then_some(())
        },
    )
    .await;

    // With the API down, a delivery is queued and its job retried.
    let m4 = gw.scrape();
    gw.api.set_down(true);
    let (st, text) = push(&gw, &pa, "metrics-secret-a").await;
    assert_eq!(
        st, 202,
        "the API is down: the delivery must be queued: {text}"
    );
    let queued = outcome("flux-system/a", "github", "queued");
    let m5 = scrape_until(&gw, |m| {
        m.value("fluxgate_deliveries_total", &queued)
            > m4.value("fluxgate_deliveries_total", &queued)
    })
    .await;
    assert_eq!(
        m5.value("fluxgate_deliveries_total", &queued),
        m4.value("fluxgate_deliveries_total", &queued) + 1.0,
        "{}",
        m5.text
    );
    eventually(
        &gw,
        "fluxgate_relay_queue_depth >= 1, the oldest job's age > 0 and a retry counted",
        Duration::from_secs(5),
        || {
            let m = gw.scrape();
            (m.value("fluxgate_relay_queue_depth", &DEFAULT_CLUSTER) >= 1.0
                && m.value(
                    "fluxgate_relay_queue_oldest_job_age_seconds",
                    &DEFAULT_CLUSTER,
                ) > 0.0
                && m.value("fluxgate_relay_jobs_total", &git("retried"))
                    > m4.value("fluxgate_relay_jobs_total", &git("retried")))
            .then_some(())
        },
    )
    .await;
    gw.api.set_down(false);
    eventually(
        &gw,
        "the queue to drain once the API is back",
        Duration::from_secs(8),
        || {
            let m = gw.scrape();
            (m.value("fluxgate_relay_queue_depth", &DEFAULT_CLUSTER) == 0.0
                && m.value(
                    "fluxgate_relay_queue_oldest_job_age_seconds",
                    &DEFAULT_CLUSTER,
                ) == 0.0
                && m.value("fluxgate_relay_jobs_total", &git("patched"))
                    > m5.value("fluxgate_relay_jobs_total", &git("patched")))
            .then_some(())
        },
    )
    .await;

    // A configuration reload (the file touched, then SIGHUP).
    let m6 = gw.scrape();
    let reload_ok = [("result", "ok")];
    let config = gw.config_path();
    let text = std::fs::read_to_string(&config).unwrap();
    replace_file(&config, format!("{text}\n# touched by the test\n"));
    let t0 = unix_now();
    gw.signal("HUP");
    eventually(
        &gw,
        "fluxgate_config_reloads_total{result=\"ok\"} to increase after SIGHUP",
        Duration::from_secs(5),
        || {
            (gw.scrape()
                .value("fluxgate_config_reloads_total", &reload_ok)
                > m6.value("fluxgate_config_reloads_total", &reload_ok))
            .then_some(())
        },
    )
    .await;
    assert_alive(&mut gw);
    let m7 = gw.scrape();
    let last = m7.value("fluxgate_config_last_reload_success_timestamp_seconds", &[]);
    assert!(
        last >= t0.floor() - 1.0 && last <= unix_now() + 1.0,
        "the last successful reload was at {last}, the reload at {t0}"
    );

    // Every family, with its type and labels; the former name is gone.
    for (name, ty, labels) in FAMILIES {
        assert_eq!(
            m7.type_of(name),
            Some(*ty),
            "# TYPE of {name}:\n{}",
            m7.text
        );
        let series = m7.label_names(name);
        assert!(!series.is_empty(), "no series of {name}:\n{}", m7.text);
        for names in series {
            assert_eq!(names, *labels, "labels of {name}");
        }
    }
    assert!(
        m7.type_of("fluxgate_requests_total").is_none(),
        "fluxgate_deliveries_total replaces fluxgate_requests_total"
    );
}

/// A little longer than /readyz keeps the API's answer.
const READYZ_CACHE: Duration = Duration::from_millis(1100);

#[tokio::test(flavor = "multi_thread")]
async fn readyz_and_the_api_gauge_follow_the_api_server() {
    let s = Setup::new();
    let a = github(&s, "a", "ready-secret", APP);
    let gw = s.receiver(&a).start();
    let api_up = |gw: &Gateway| {
        gw.scrape()
            .get("fluxgate_kubernetes_api_up", &DEFAULT_CLUSTER)
    };

    assert_eq!(
        http_get(gw.admin, "/healthz").map(|(s, b)| (s, b.trim().to_string())),
        Some((200, "ok".to_string()))
    );
    let (st, body) = http_get(gw.admin, "/readyz").unwrap();
    assert_eq!((st, body.trim()), (200, "ready"));
    assert_eq!(api_up(&gw), Some(1.0), "checked at /readyz just now");

    // Down: the periodic check (every 5 s) notices without anyone asking /readyz.
    gw.api.set_down(true);
    eventually(
        &gw,
        "fluxgate_kubernetes_api_up = 0 from the periodic check",
        Duration::from_secs(8),
        || (api_up(&gw) == Some(0.0)).then_some(()),
    )
    .await;
    let (st, body) = http_get(gw.admin, "/readyz").unwrap();
    assert_eq!(st, 503, "{body}");
    assert!(body.starts_with("not ready:"), "{body:?}");
    assert!(
        body.trim().len() > "not ready:".len(),
        "the reason follows: {body:?}"
    );
    assert_eq!(api_up(&gw), Some(0.0));
    assert_eq!(
        http_get(gw.admin, "/healthz").map(|(s, _)| s),
        Some(200),
        "alive all the same"
    );

    // Back: once /readyz's last answer is older than its cache (1 s), it checks again and the
    // gauge follows.
    gw.api.set_down(false);
    tokio::time::sleep(READYZ_CACHE).await;
    let (st, body) = http_get(gw.admin, "/readyz").unwrap();
    assert_eq!((st, body.trim()), (200, "ready"));
    assert_eq!(api_up(&gw), Some(1.0));

    // Down again and /readyz asked first: the gauge follows that check too.
    gw.api.set_down(true);
    tokio::time::sleep(READYZ_CACHE).await;
    let (st, body) = http_get(gw.admin, "/readyz").unwrap();
    assert_eq!(st, 503, "{body}");
    assert!(body.starts_with("not ready:"), "{body:?}");
    assert_eq!(api_up(&gw), Some(0.0), "checked at /readyz just now");
    gw.api.set_down(false);
    eventually(
        &gw,
        "fluxgate_kubernetes_api_up = 1 from the periodic check",
        Duration::from_secs(8),
        || (api_up(&gw) == Some(1.0)).then_some(()),
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// JSON logs
// ---------------------------------------------------------------------------------------------

/// The `"message":"delivery"` lines of a JSON log, parsed; every line must be JSON.
fn delivery_lines(log: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("a log line that is not JSON ({e}): {line}\n{log}"));
        assert!(
            v.is_object(),
            "a log line that is not a JSON object: {line}"
        );
        if v["message"] == "delivery" {
            out.push(v);
        }
    }
    out
}

/// A field as text, whether logged as a string or a number.
fn field(v: &Value, name: &str) -> String {
    match &v[name] {
        Value::String(s) => s.clone(),
        Value::Null => panic!("no field {name:?} in {v}"),
        other => other.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn json_logs_have_one_line_per_delivery_and_never_a_secret() {
    const SECRET: &str = "json-log-secret-5f2d8c1e9a";
    let s = Setup::new();
    let a = github(&s, "a", SECRET, APP);
    let api = StandIn::start(api_config()).unwrap();
    let gw = s
        .receiver(&a)
        .start_with_args(api, &["--log-format", "json"], &[]);
    let pa = hook(SECRET, "a", "flux-system");
    let body = fixture("github/push.json");

    let good = uid();
    let (st, text) = gw
        .post(&pa, &refs(&signed(SECRET, &body, &good)), body.clone())
        .await;
    assert_eq!(st, 200, "{text}");

    let forged = uid();
    let h = signed("forger-key-0b7e", &body, &forged);
    let (st, refusal) = gw.post(&pa, &refs(&h), body.clone()).await;
    assert_eq!(
        (st, refusal.trim()),
        (401, "signature mismatch (X-Hub-Signature-256, sha256)")
    );
    let expected_hex = sig("sha256", SECRET, &body)
        .trim_start_matches("sha256=")
        .to_string();

    let lines = eventually(
        &gw,
        "two delivery lines in the JSON log",
        Duration::from_secs(5),
        || {
            let lines = delivery_lines(&gw.logs());
            let has = |id: &str| lines.iter().any(|l| l["delivery"] == id);
            (has(&good) && has(&forged)).then_some(lines)
        },
    )
    .await;
    let find = |id: &str| {
        let matching: Vec<&Value> = lines.iter().filter(|l| l["delivery"] == id).collect();
        assert_eq!(
            matching.len(),
            1,
            "one line per delivery {id}: {matching:?}"
        );
        matching[0].clone()
    };

    let ok = find(&good);
    assert_eq!(field(&ok, "receiver"), "flux-system/a", "{ok}");
    assert_eq!(field(&ok, "client"), "127.0.0.1", "{ok}");
    assert_eq!(field(&ok, "event"), "push", "{ok}");
    assert_eq!(field(&ok, "outcome"), "relayed", "{ok}");
    assert_eq!(field(&ok, "status"), "200", "{ok}");
    let ms: f64 = field(&ok, "duration_ms")
        .parse()
        .unwrap_or_else(|e| panic!("duration_ms is not a number ({e}): {ok}"));
    assert!((0.0..10_000.0).contains(&ms), "{ok}");

    let no = find(&forged);
    assert_eq!(field(&no, "receiver"), "flux-system/a", "{no}");
    assert_eq!(field(&no, "client"), "127.0.0.1", "{no}");
    assert_eq!(field(&no, "event"), "push", "{no}");
    assert_eq!(field(&no, "outcome"), "bad_signature", "{no}");
    assert_eq!(field(&no, "status"), "401", "{no}");
    assert_eq!(
        field(&no, "reason"),
        refusal.trim(),
        "the reason logged is the one sent: {no}"
    );
    field(&no, "duration_ms");

    // No secret, and not the signature the forger should have sent, anywhere.
    let log = gw.logs();
    let metrics = gw.scrape().text;
    for (what, needle) in [
        ("the receiver's secret", SECRET),
        ("the forger's key", "forger-key-0b7e"),
        ("the service account token", SA_TOKEN),
        ("the expected signature", expected_hex.as_str()),
    ] {
        assert!(!log.contains(needle), "{what} is in the log:\n{log}");
        assert!(
            !metrics.contains(needle),
            "{what} is in /metrics:\n{metrics}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn json_logs_can_be_chosen_from_the_environment() {
    let s = Setup::new();
    let a = github(&s, "a", "env-log-secret", APP);
    let api = StandIn::start(api_config()).unwrap();
    let gw = s
        .receiver(&a)
        .start_with_args(api, &[], &[("FLUXGATE_LOG_FORMAT", "json")]);
    let (st, _) = gw
        .post(
            "/hook/no-such-receiver",
            &[("Content-Type", "application/json")],
            "{}",
        )
        .await;
    assert_eq!(st, 404);
    let line = eventually(
        &gw,
        "a delivery line in the JSON log",
        Duration::from_secs(5),
        || delivery_lines(&gw.logs()).into_iter().next(),
    )
    .await;
    assert_eq!(field(&line, "receiver"), "-", "{line}");
    assert_eq!(field(&line, "outcome"), "unknown_hook", "{line}");
    assert_eq!(field(&line, "status"), "404", "{line}");
    assert_eq!(field(&line, "client"), "127.0.0.1", "{line}");
}

// ---------------------------------------------------------------------------------------------
// fluxgate check
// ---------------------------------------------------------------------------------------------

/// Writes the kubeconfig for `api` and the configuration, and runs `fluxgate check`.
fn check_against(s: &Setup, api: &StandIn) -> CheckRun {
    api.write_kubeconfig(&s.path("kubeconfig"), SA_TOKEN)
        .unwrap();
    let config = s.write_config(free_port(), free_port());
    run_check(&config, &[], &[])
}

/// Every non-empty line of stdout starts with `ok:`, `warning:` or `problem:`.
fn assert_line_format(run: &CheckRun) {
    for line in run.stdout.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            ["ok:", "warning:", "problem:"]
                .iter()
                .any(|p| line.starts_with(p)),
            "a line of `check` that is not ok:/warning:/problem: {line:?}\n{}",
            run.output()
        );
    }
}

#[test]
fn check_passes_against_the_cluster_with_the_default_rbac() {
    let s = Setup::new();
    let a = github(
        &s,
        "a",
        "check-secret-a",
        &format!("resources = [\n  {{ kind = \"GitRepository\", name = \"app\" }},\n  {{ kind = \"Kustomization\", apiVersion = \"{KS}\", name = \"*\", matchLabels = {{ app = \"web\" }} }},\n]"),
    );
    let s = s.receiver(&a);
    let api = StandIn::start(api_config()).unwrap();
    let run = check_against(&s, &api);
    assert_eq!(run.code, Some(0), "{}", run.output());
    assert!(
        run.lines_starting("problem:").is_empty(),
        "{}",
        run.output()
    );
    assert_line_format(&run);
    let ok = run.lines_starting("ok:").join("\n");
    assert!(
        ok.contains(&hook("check-secret-a", "a", "flux-system")),
        "the receiver's path on an ok: line:\n{}",
        run.output()
    );
    // rcgen's default notAfter is 4096-01-01.
    assert!(
        ok.contains("4096"),
        "the certificate's expiry on an ok: line:\n{}",
        run.output()
    );
    assert!(
        !run.lines_starting("warning:")
            .iter()
            .any(|l| l.to_lowercase().contains("secrets")),
        "the default RBAC cannot read secrets:\n{}",
        run.output()
    );
    // The access reviews were asked of the API.
    let reviews: Vec<_> = api
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/selfsubjectaccessreviews"))
        .collect();
    assert!(
        !reviews.is_empty(),
        "check must ask SelfSubjectAccessReview; the API saw: {:?}",
        api.requests()
            .iter()
            .map(|r| format!("{} {}", r.method, r.path))
            .collect::<Vec<_>>()
    );
    let asked = |verb: &str, resource: &str| {
        reviews.iter().any(|r| {
            r.json().is_some_and(|b| {
                b.pointer("/spec/resourceAttributes/verb") == Some(&Value::from(verb))
                    && b.pointer("/spec/resourceAttributes/resource")
                        == Some(&Value::from(resource))
            })
        })
    };
    assert!(
        asked("patch", "gitrepositories"),
        "patch on the GitRepository"
    );
    assert!(asked("list", "kustomizations"), "list for the `*` selector");
    assert!(
        api.requests().iter().all(|r| r.method != "PATCH"),
        "check patches nothing"
    );

    // --offline never reaches the API.
    api.clear_requests();
    let run = run_check(&s.path("fluxgate.toml"), &["--offline"], &[]);
    assert_eq!(run.code, Some(0), "{}", run.output());
    assert!(api.requests().is_empty(), "--offline reached the API");
}

#[test]
fn check_names_each_target_the_account_may_not_patch_or_list() {
    let s = Setup::new();
    let a = github(
        &s,
        "a",
        "check-secret-a",
        &format!("resources = [\n  {{ kind = \"GitRepository\", name = \"app\" }},\n  {{ kind = \"Kustomization\", apiVersion = \"{KS}\", name = \"app\", namespace = \"apps\" }},\n  {{ kind = \"Kustomization\", apiVersion = \"{KS}\", name = \"*\", namespace = \"apps\", matchLabels = {{ app = \"web\" }} }},\n]"),
    );
    let s = s.receiver(&a);
    let api = StandIn::start(api_config()).unwrap();
    let run = check_against(&s, &api);
    assert_eq!(run.code, Some(1), "{}", run.output());
    assert_line_format(&run);
    let problems = run.lines_starting("problem:");
    assert!(
        problems
            .iter()
            .any(|l| l.contains("may not patch") && l.contains("Kustomization apps/app")),
        "a problem: line naming the target it may not patch:\n{}",
        run.output()
    );
    assert!(
        problems.iter().any(|l| l.contains("may not list")
            && l.contains("Kustomization")
            && l.contains("apps")),
        "a problem: line naming the selector it may not list:\n{}",
        run.output()
    );
    assert!(
        !problems
            .iter()
            .any(|l| l.contains("GitRepository flux-system/app")),
        "the allowed target is no problem:\n{}",
        run.output()
    );
}

#[test]
fn check_refuses_an_expired_certificate() {
    let s = Setup::new();
    let (cert, key) = self_signed_cert((2020, 1, 1), (2021, 1, 1));
    std::fs::write(s.path("tls.crt"), cert).unwrap();
    std::fs::write(s.path("tls.key"), key).unwrap();
    let a = github(&s, "a", "check-secret-a", APP);
    let s = s.receiver(&a);
    let api = StandIn::start(api_config()).unwrap();
    let run = check_against(&s, &api);
    assert_ne!(run.code, Some(0), "{}", run.output());
    assert!(
        run.lines_starting("problem:")
            .iter()
            .any(|l| l.contains("server.tls_cert") && l.contains("expired")),
        "a problem: line saying server.tls_cert has expired:\n{}",
        run.output()
    );
}

#[test]
fn check_names_an_unreadable_secret_file() {
    for (what, target) in [
        ("a missing file", "/nonexistent/fluxgate/webhook-token"),
        ("a directory", "DIR"),
    ] {
        let s = Setup::new();
        let dir = s.path("a-directory");
        std::fs::create_dir(&dir).unwrap();
        let target = if target == "DIR" {
            dir.display().to_string()
        } else {
            target.to_string()
        };
        let s = s.receiver(&format!(
            "name = \"a\"\nnamespace = \"flux-system\"\ntype = \"github\"\nsecret_file = \"{target}\"\n{APP}"
        ));
        let api = StandIn::start(api_config()).unwrap();
        let run = check_against(&s, &api);
        assert!(
            run.code.is_some_and(|c| c != 0),
            "{what}: check must fail\n{}",
            run.output()
        );
        let all = format!("{}\n{}", run.stdout, run.stderr);
        assert!(
            all.lines()
                .any(|l| l.contains("receivers[0].secret_file") && l.contains("cannot read")),
            "{what}: a line with receivers[0].secret_file and `cannot read`:\n{}",
            run.output()
        );
    }
}

#[test]
fn check_warns_when_the_account_may_do_much_more() {
    let s = Setup::new();
    let a = github(&s, "a", "check-secret-a", APP);
    let s = s.receiver(&a);

    // The default rules, plus reading Secrets in flux-system.
    let api = StandIn::start(api_config().allow(
        SA_USER,
        Rule::new(&["get", "list"], &[""], &["secrets"]).in_namespaces(&["flux-system"]),
    ))
    .unwrap();
    let run = check_against(&s, &api);
    assert_eq!(
        run.code,
        Some(0),
        "warnings are no problems:\n{}",
        run.output()
    );
    assert_line_format(&run);
    assert!(
        run.lines_starting("warning:")
            .iter()
            .any(|l| l.to_lowercase().contains("secrets")),
        "a warning: line about reading secrets:\n{}",
        run.output()
    );
    drop(api);

    // Everything, everywhere.
    let api =
        StandIn::start(api_config().allow(SA_USER, Rule::new(&["*"], &["*"], &["*"]))).unwrap();
    let run = check_against(&s, &api);
    assert_eq!(
        run.code,
        Some(0),
        "warnings are no problems:\n{}",
        run.output()
    );
    assert!(
        !run.lines_starting("warning:").is_empty(),
        "a warning: line for an account that may do anything:\n{}",
        run.output()
    );
}

// ---------------------------------------------------------------------------------------------
// Live reload
// ---------------------------------------------------------------------------------------------

/// The running configuration with one more `[[receivers]]` table.
fn with_receiver(gw: &Gateway, receiver: &str) -> String {
    format!(
        "{}[[receivers]]\n{receiver}\n",
        gw.setup.config_text(gw.port, gw.admin)
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_the_configuration_and_a_broken_one_keeps_the_old_running() {
    let s = Setup::new()
        .server("watch_interval = \"0s\"")
        .section(NO_LIMITS);
    let a = github(&s, "a", "reload-secret-a", APP);
    let mut gw = s.receiver(&a).start();
    let pa = hook("reload-secret-a", "a", "flux-system");
    let pb = hook("reload-secret-b", "b", "flux-system");
    let config = gw.config_path();
    assert_eq!(push(&gw, &pa, "reload-secret-a").await.0, 200);
    assert_eq!(push(&gw, &pb, "reload-secret-b").await.0, 404);

    // A second receiver in the file: nothing changes until SIGHUP (polling is off).
    let b = github(&gw.setup, "b", "reload-secret-b", APP);
    let two = with_receiver(&gw, &b);
    replace_file(&config, &two);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        push(&gw, &pb, "reload-secret-b").await.0,
        404,
        "watch_interval = \"0s\": the file is not polled"
    );
    gw.signal("HUP");
    wait_live(&gw, &pb, "reload-secret-b", "receiver b after SIGHUP").await;
    assert_alive(&mut gw);
    assert_eq!(push(&gw, &pa, "reload-secret-a").await.0, 200);
    let m = gw.scrape();
    assert!(
        m.value("fluxgate_config_reloads_total", &[("result", "ok")]) >= 1.0,
        "{}",
        m.text
    );
    let last_success = m.value("fluxgate_config_last_reload_success_timestamp_seconds", &[]);
    let failed = |gw: &Gateway| {
        gw.scrape()
            .value("fluxgate_config_reloads_total", &[("result", "failed")])
    };
    let failed0 = failed(&gw);

    // Not TOML: the reload fails and both receivers keep working.
    replace_file(&config, format!("{two}\n[[receivers]\nname = "));
    gw.signal("HUP");
    eventually(
        &gw,
        "fluxgate_config_reloads_total{result=\"failed\"} after a file that is not TOML",
        Duration::from_secs(5),
        || (failed(&gw) >= failed0 + 1.0).then_some(()),
    )
    .await;
    assert_alive(&mut gw);
    assert!(
        gw.logs().contains("reload failed"),
        "the log must say `reload failed`:\n{}",
        tail(&gw.logs())
    );
    assert_eq!(push(&gw, &pa, "reload-secret-a").await.0, 200);
    assert_eq!(push(&gw, &pb, "reload-secret-b").await.0, 200);

    // Valid TOML, invalid configuration: the log names the key.
    let bad_type = two.replace(
        "name = \"b\"\nnamespace = \"flux-system\"\ntype = \"github\"",
        "name = \"b\"\nnamespace = \"flux-system\"\ntype = \"githib\"",
    );
    assert_ne!(bad_type, two);
    replace_file(&config, bad_type);
    gw.signal("HUP");
    eventually(
        &gw,
        "fluxgate_config_reloads_total{result=\"failed\"} after an unknown receiver type",
        Duration::from_secs(5),
        || (failed(&gw) >= failed0 + 2.0).then_some(()),
    )
    .await;
    assert_alive(&mut gw);
    assert!(
        gw.logs()
            .lines()
            .any(|l| l.contains("reload failed") && l.contains("receivers[1].type")),
        "a `reload failed` line naming receivers[1].type:\n{}",
        tail(&gw.logs())
    );
    assert_eq!(push(&gw, &pa, "reload-secret-a").await.0, 200);
    assert_eq!(push(&gw, &pb, "reload-secret-b").await.0, 200);
    assert_eq!(
        gw.scrape()
            .value("fluxgate_config_last_reload_success_timestamp_seconds", &[]),
        last_success,
        "failed reloads are no successes"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_configuration_or_secret_file_is_picked_up_without_a_signal() {
    let s = Setup::new()
        .server("watch_interval = \"200ms\"")
        .section(NO_LIMITS);
    let a = github(&s, "a", "poll-secret-a", APP);
    let mut gw = s.receiver(&a).start();
    let pa = hook("poll-secret-a", "a", "flux-system");
    let pb = hook("poll-secret-b", "b", "flux-system");
    assert_eq!(push(&gw, &pb, "poll-secret-b").await.0, 404);

    let b = github(&gw.setup, "b", "poll-secret-b", APP);
    replace_file(&gw.config_path(), with_receiver(&gw, &b));
    wait_live(&gw, &pb, "poll-secret-b", "receiver b, by polling the file").await;
    assert_eq!(push(&gw, &pa, "poll-secret-a").await.0, 200);

    // A new token in b's secret file: b's path follows it, as Flux computes it.
    replace_file(&gw.setup.path("b.secret"), "poll-secret-b-rotated\n");
    let pb2 = hook("poll-secret-b-rotated", "b", "flux-system");
    wait_live(
        &gw,
        &pb2,
        "poll-secret-b-rotated",
        "receiver b with its new secret, by polling the secret file",
    )
    .await;
    assert_eq!(
        push(&gw, &pb, "poll-secret-b").await.0,
        404,
        "the old token's path is gone"
    );
    assert_eq!(push(&gw, &pa, "poll-secret-a").await.0, 200);
    assert_alive(&mut gw);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_certificate_is_served_to_new_connections_while_open_ones_keep_working() {
    let s = Setup::new()
        .server("watch_interval = \"200ms\"\nhead_timeout = \"30s\"")
        .section(NO_LIMITS);
    let a = github(&s, "a", "cert-secret-a", APP);
    let mut gw = s.receiver(&a).start();
    let pa = hook("cert-secret-a", "a", "flux-system");
    let body = fixture("github/push.json");
    let old_pem = gw.setup.cert_pem.clone();

    // One connection kept alive across the change, with a delivery on it.
    let mut old = tls_connect(gw.port, &[&old_pem]).await.unwrap();
    assert_eq!(peer_cert_der(&old), cert_der(&old_pem));
    let h = signed("cert-secret-a", &body, &uid());
    let (st, text) = http1_post(&mut old, &pa, &refs(&h), &body).await.unwrap();
    assert_eq!(st, 200, "{text}");

    // Another key, another notAfter.
    let (new_pem, new_key) = self_signed_cert((2024, 1, 1), (2099, 1, 1));
    assert_ne!(cert_der(&new_pem), cert_der(&old_pem));
    replace_file(&gw.setup.path("tls.key"), &new_key);
    replace_file(&gw.setup.path("tls.crt"), &new_pem);

    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let fresh = tls_connect(gw.port, &[&old_pem, &new_pem]).await.unwrap();
        if peer_cert_der(&fresh) == cert_der(&new_pem) {
            break;
        }
        assert!(
            Instant::now() < until,
            "new connections still get the old certificate 5 s after the files changed\n{}",
            tail(&gw.logs())
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A new connection trusting only the new certificate gets a delivery through.
    let mut fresh = tls_connect(gw.port, &[&new_pem]).await.unwrap();
    let h = signed("cert-secret-a", &body, &uid());
    let (st, text) = http1_post(&mut fresh, &pa, &refs(&h), &body).await.unwrap();
    assert_eq!(st, 200, "on a new connection: {text}");

    // The old connection was not dropped.
    let h = signed("cert-secret-a", &body, &uid());
    let (st, text) = http1_post(&mut old, &pa, &refs(&h), &body)
        .await
        .unwrap_or_else(|e| panic!("the connection open across the reload failed: {e}"));
    assert_eq!(st, 200, "on the old connection: {text}");

    let want = cert_not_after(&new_pem) as f64;
    eventually(
        &gw,
        "fluxgate_tls_certificate_expiry_timestamp_seconds to follow the new certificate",
        Duration::from_secs(3),
        || {
            (gw.scrape()
                .get("fluxgate_tls_certificate_expiry_timestamp_seconds", &[])
                == Some(want))
            .then_some(())
        },
    )
    .await;
    assert_alive(&mut gw);
}

// ---- systemd's notification protocol, a stop without a needless wait, and the upgrade socket

/// Reads datagrams from a socket standing in for systemd's NOTIFY_SOCKET.
struct NotifySocket {
    sock: std::os::unix::net::UnixDatagram,
    path: std::path::PathBuf,
}

impl NotifySocket {
    fn bind(s: &Setup) -> Self {
        let path = s.path("notify.sock");
        let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        NotifySocket { sock, path }
    }

    /// The next message, or None after `limit`.
    fn next(&self, limit: Duration) -> Option<String> {
        self.sock.set_read_timeout(Some(limit)).unwrap();
        let mut buf = [0u8; 4096];
        let n = self.sock.recv(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }
}

#[test]
fn systemd_is_told_ready_once_both_ports_accept_and_around_a_reload() {
    let s = Setup::new();
    let r = github(&s, "app", "s3cret", APP);
    let s = s.receiver(&r);
    let api = StandIn::start(api_config()).unwrap();
    api.write_kubeconfig(&s.path("kubeconfig"), SA_TOKEN)
        .unwrap();
    let (port, admin) = (free_port(), free_port());
    let config = s.write_config(port, admin);
    let notify = NotifySocket::bind(&s);
    let log = s.path("gateway.log");
    let child = std::process::Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .env("NOTIFY_SOCKET", &notify.path)
        .env("RUST_LOG", "info")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut p = Proc { child, log };

    let ready = notify
        .next(Duration::from_secs(20))
        .unwrap_or_else(|| panic!("no message on NOTIFY_SOCKET within 20 s:\n{}", p.logs()));
    // Checked the moment READY=1 arrives: both listeners must accept by then.
    let public = std::net::TcpStream::connect(("127.0.0.1", port));
    let admin_up = std::net::TcpStream::connect(("127.0.0.1", admin));
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    assert!(ready.contains("STATUS="), "{ready:?}");
    assert!(
        public.is_ok() && admin_up.is_ok(),
        "READY=1 came before the listeners accepted: {public:?} {admin_up:?}"
    );
    drop((public, admin_up));

    send_signal(p.child.id(), "HUP");
    let reloading = notify.next(Duration::from_secs(10)).expect("RELOADING=1");
    assert!(
        reloading.lines().any(|l| l == "RELOADING=1"),
        "{reloading:?}"
    );
    let usec = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .and_then(|v| v.parse::<u64>().ok());
    assert!(usec.is_some_and(|u| u > 0), "{reloading:?}");
    let again = notify
        .next(Duration::from_secs(10))
        .expect("READY=1 after the reload");
    assert!(again.lines().any(|l| l == "READY=1"), "{again:?}");

    send_signal(p.child.id(), "TERM");
    let stopping = notify.next(Duration::from_secs(10)).expect("STOPPING=1");
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping:?}");
    assert!(
        wait_exit(&mut p.child, Duration::from_secs(10)).is_some(),
        "{}",
        p.logs()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_exits_at_once_when_idle_and_lets_a_request_in_flight_finish() {
    let s = Setup::new();
    let queue = s.path("queue");
    let r = github(&s, "app", "s3cret", APP);
    let grace = "grace_period = \"5s\"\nshutdown_timeout = \"5s\"";
    let relay = format!(
        "[relay]\nqueue_dir = \"{}\"\nwait = \"1500ms\"",
        queue.display()
    );
    let mut gw = s
        .server(grace)
        .section(NO_LIMITS)
        .section(&relay)
        .receiver(&r)
        .start();

    // A delivery that takes relay.wait (1.5 s): the API is down, so it is answered 202.
    gw.api.set_down(true);
    let path = hook("s3cret", "app", "flux-system");
    let body = fixture("github/push.json");
    let headers = signed("s3cret", &body, &uid());
    let client = gw.client();
    let url = gw.url(&path);
    let slow = tokio::spawn(async move {
        let mut req = client.post(url).body(body);
        for (k, v) in &headers {
            req = req.header(*k, v.as_str());
        }
        let started = Instant::now();
        let status = req.send().await.map(|r| r.status().as_u16());
        (status, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let term = Instant::now();
    gw.signal("TERM");
    let (status, took) = slow.await.unwrap();
    assert_eq!(status.ok(), Some(202), "{}", gw.logs());
    assert!(took >= Duration::from_millis(1400), "{took:?}");
    let exited = wait_exit_async(&mut gw.child, Duration::from_secs(12)).await;
    let after = term.elapsed();
    assert!(exited.is_some(), "{}", gw.logs());
    eprintln!("with a request in flight: answered after {took:?}, exited {after:?} after SIGTERM");
    assert!(
        after < Duration::from_secs(4),
        "the process waited the whole grace period after its last request: {after:?}"
    );

    // Idle: no connection open at all.
    gw.api.set_down(false);
    gw.restart();
    let term = Instant::now();
    gw.signal("TERM");
    let exited = wait_exit_async(&mut gw.child, Duration::from_secs(12)).await;
    let after = term.elapsed();
    assert!(
        exited.is_some_and(|s| s.success()),
        "{exited:?} {}",
        gw.logs()
    );
    eprintln!("idle: exited {after:?} after SIGTERM");
    assert!(
        after < Duration::from_millis(800),
        "idle, the stop took {after:?} (grace_period is 5 s)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigquit_hands_no_socket_to_a_listener_another_user_owns() {
    if !std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
    {
        println!("skipped: only root can make a socket another user owns");
        return;
    }
    let s = Setup::new();
    let sock = s.path("upgrade.sock");
    let r = github(&s, "app", "s3cret", APP);
    let mut gw = s
        .server(&format!("upgrade_sock = \"{}\"", sock.display()))
        .receiver(&r)
        .start();
    // Someone else listening where `serve -u` would wait.
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    std::os::unix::fs::chown(&sock, Some(65534), Some(65534)).unwrap();
    listener.set_nonblocking(true).unwrap();
    gw.signal("QUIT");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got = listener.accept();
    assert!(
        matches!(&got, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "fluxgate connected to a socket uid 65534 owns: {got:?}\n{}",
        gw.logs()
    );
    assert!(
        gw.child.try_wait().unwrap().is_none(),
        "fluxgate must keep serving:\n{}",
        gw.logs()
    );
    assert_eq!(http_get(gw.admin, "/healthz").map(|r| r.0), Some(200));
    let logs = gw.logs();
    assert!(
        logs.contains("not handed over") && logs.contains("belongs to uid 65534"),
        "{logs}"
    );
}

#[test]
fn an_upgrade_socket_in_a_folder_others_can_write_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let s = Setup::new();
    let shared = s.path("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let r = github(&s, "app", "s3cret", APP);
    let s = s
        .server(&format!(
            "upgrade_sock = \"{}/upgrade.sock\"",
            shared.display()
        ))
        .receiver(&r);
    s.offline_kubeconfig();
    let config = s.write_config(free_port(), free_port());
    let run = run_check(&config, &["--offline"], &[]);
    assert_ne!(run.code, Some(0), "{}", run.output());
    assert!(
        run.output().contains("server.upgrade_sock")
            && run.output().contains("writable by other users (mode 1777)"),
        "{}",
        run.output()
    );
}

/// A kubeconfig whose broken line holds the service account's token: `check` and `serve`
/// name the key, the file and the line, and print nothing of the file's text.
#[test]
fn a_broken_kubeconfig_never_prints_its_token() {
    const TOKEN: &str = "sa-token-7f3c9d1e2b-do-not-print";
    let s = Setup::new();
    let r = github(&s, "r", "t", APP);
    let s = s.receiver(&r);
    let kubeconfig = s.path("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nusers:\n- name: u\n  user:\n    token: {TOKEN}: x\n"
        ),
    )
    .unwrap();
    owner_only(&kubeconfig);
    let cfg = s.write_config(free_port(), free_port());
    let want = format!(
        "kubernetes.kubeconfig: {}: invalid YAML at line 6, column ",
        kubeconfig.display()
    );

    let check = run_check(&cfg, &[], &[]);
    assert_ne!(check.code, Some(0), "{}", check.output());
    assert!(check.output().contains(&want), "{}", check.output());
    assert!(!check.output().contains("sa-token"), "{}", check.output());

    let out = std::process::Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&cfg)
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains(&want), "{text}");
    assert!(!text.contains("sa-token"), "{text}");
}

/// Probes from many kubelets and load balancers at once cost the API server one request per
/// second, not one each: /readyz keeps the API's answer for a second and checks once at a time.
#[test]
fn readyz_asks_the_api_at_most_once_a_second() {
    let s = Setup::new();
    let a = github(&s, "a", "ready-secret", APP);
    let gw = s.receiver(&a).start();
    let api_checks = |gw: &Gateway| {
        gw.api
            .requests()
            .iter()
            .filter(|r| r.method == "GET" && r.path == "/api")
            .count()
    };
    // Start-up's own checks are done once /readyz answered.
    assert_eq!(http_get(gw.admin, "/readyz").map(|(s, _)| s), Some(200));
    let before = api_checks(&gw);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..8 {
            scope.spawn(|| {
                for _ in 0..10 {
                    let (st, body) = http_get(gw.admin, "/readyz").unwrap();
                    assert_eq!((st, body.trim()), (200, "ready"));
                }
            });
        }
    });
    let seconds = started.elapsed().as_secs_f64();
    let made = api_checks(&gw) - before;
    // One per started second, and one more from the 5-second maintenance check.
    assert!(
        made as f64 <= seconds.ceil() + 2.0,
        "80 probes in {seconds:.2} s made {made} API calls"
    );
}

/// A secret file that blocks its reader (here a FIFO nobody writes) makes a reload fail after
/// its read timeout (5 s) and keeps the running configuration, while deliveries relay and
/// /readyz answers meanwhile; once the file is fixed, the next SIGHUP reloads.
#[tokio::test(flavor = "multi_thread")]
async fn a_secret_read_that_blocks_fails_the_reload_without_stopping_the_relay() {
    let s = Setup::new()
        .server("watch_interval = \"0s\"")
        .section(NO_LIMITS);
    let a = github(&s, "a", "fifo-secret-a", APP);
    let mut gw = s.receiver(&a).start();
    let pa = hook("fifo-secret-a", "a", "flux-system");
    assert_eq!(push(&gw, &pa, "fifo-secret-a").await.0, 200);
    let reloads = |gw: &Gateway, result: &str| {
        gw.scrape()
            .value("fluxgate_config_reloads_total", &[("result", result)])
    };
    let (ok0, failed0) = (reloads(&gw, "ok"), reloads(&gw, "failed"));

    let secret = gw.setup.path("a.secret");
    std::fs::remove_file(&secret).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(&secret)
        .status()
        .unwrap();
    assert!(made.success());
    gw.signal("HUP");
    tokio::time::sleep(Duration::from_millis(500)).await;

    // While the read is stuck: deliveries are relayed (patched) and /readyz answers at once.
    let patches = gw.patches().len();
    let started = Instant::now();
    let (st, text) = push(&gw, &pa, "fifo-secret-a").await;
    assert_eq!(st, 200, "{text}");
    assert!(gw.patches().len() > patches, "the delivery was patched");
    let (st, body) = http_get(gw.admin, "/readyz").expect("/readyz answers");
    assert_eq!((st, body.trim()), (200, "ready"));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "answered in {:?}",
        started.elapsed()
    );

    eventually(
        &gw,
        "fluxgate_config_reloads_total{result=\"failed\"} after the read timed out",
        Duration::from_secs(10),
        || (reloads(&gw, "failed") > failed0).then_some(()),
    )
    .await;
    assert!(
        gw.logs()
            .lines()
            .any(|l| l.contains("reload failed") && l.contains("longer than 5s")),
        "{}",
        tail(&gw.logs())
    );
    assert_eq!(reloads(&gw, "ok"), ok0);
    assert_eq!(push(&gw, &pa, "fifo-secret-a").await.0, 200);

    // The file fixed (the stuck read still holds the FIFO): the next SIGHUP reloads.
    std::fs::remove_file(&secret).unwrap();
    gw.setup.secret("a", "fifo-secret-a");
    gw.signal("HUP");
    eventually(
        &gw,
        "fluxgate_config_reloads_total{result=\"ok\"} after the file was fixed",
        Duration::from_secs(5),
        || (reloads(&gw, "ok") > ok0).then_some(()),
    )
    .await;
    assert_eq!(push(&gw, &pa, "fifo-secret-a").await.0, 200);
    assert_alive(&mut gw);
}
