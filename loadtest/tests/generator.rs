//! The generator against a real TLS receiver on loopback that checks every signature.
//! No timing assertions: counts are compared with what the server saw.

mod common;
use clap::Parser;
use common::*;
use fluxgate_loadtest::{Options, Report};
use std::collections::HashSet;
use std::process::Command;

fn opts(server: &Server, extra: &[&str]) -> Options {
    let mut args = vec![
        "fluxgate-loadtest".to_string(),
        server.url(),
        "--secret".into(),
        SECRET.into(),
        "--insecure".into(),
        "--quiet".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    Options::try_parse_from(args).unwrap()
}

fn run(server: &Server, extra: &[&str]) -> Report {
    fluxgate_loadtest::run(&opts(server, extra)).unwrap()
}

/// The report agrees with the server: every request answered, no errors, nothing malformed,
/// the same counts per status, and distinct delivery ids.
fn agrees(r: &Report, s: &Server) {
    let seen = &s.seen;
    assert_eq!(r.errors.total, 0, "{}", r.to_table());
    assert!(
        seen.malformed.lock().unwrap().is_empty(),
        "{:?}",
        seen.malformed
    );
    assert_eq!(r.status, seen.status_map(), "{}", r.to_table());
    assert_eq!(r.answered, seen.total());
    assert_eq!(r.requests, r.answered);
    let ids = seen.ids.lock().unwrap();
    assert_eq!(ids.len() as u64, seen.total());
    let distinct: HashSet<_> = ids.iter().collect();
    assert_eq!(distinct.len(), ids.len(), "delivery ids repeat");
    assert!(r.answered > 0);
}

fn kind(r: &Report, k: &str) -> (u64, u64) {
    let kr = &r.kinds[k];
    (kr.sent, kr.status.values().sum())
}

/// Each kind's count is its share of the total, within the rounding of one round-robin cycle
/// per worker thread.
fn proportions_hold(r: &Report, weights: &[(&str, u64)], threads: u64) {
    let total: u64 = weights.iter().map(|(_, w)| w).sum();
    for (k, w) in weights {
        let sent = r.kinds.get(k).map_or(0, |kr| kr.sent) as f64;
        let exact = r.requests as f64 * *w as f64 / total as f64;
        assert!(
            (sent - exact).abs() <= threads as f64 + 1.0,
            "{k}: {sent} sent, {exact} expected\n{}",
            r.to_table()
        );
    }
}

#[test]
fn github_keepalive_mix() {
    let s = Server::start(Provider::Github, false);
    let r = run(
        &s,
        &[
            "--mix",
            "valid=90,badsig=5,unknown=5",
            "-c",
            "4",
            "-d",
            "1s",
        ],
    );
    agrees(&r, &s);
    // Every kind is answered as it should be.
    assert_eq!(r.kinds["valid"].status.keys().collect::<Vec<_>>(), ["202"]);
    assert_eq!(r.kinds["badsig"].status.keys().collect::<Vec<_>>(), ["401"]);
    assert_eq!(
        r.kinds["unknown"].status.keys().collect::<Vec<_>>(),
        ["404"]
    );
    assert_eq!(kind(&r, "valid").0, s.seen.status(202));
    assert_eq!(kind(&r, "badsig").0, s.seen.status(401));
    assert_eq!(kind(&r, "unknown").0, s.seen.status(404));
    proportions_hold(&r, &[("valid", 90), ("badsig", 5), ("unknown", 5)], 1);
    // Unknown paths are other hook paths.
    assert!(s
        .seen
        .unknown_paths
        .lock()
        .unwrap()
        .iter()
        .all(|p| p != PATH));
    // Keep-alive: C connections, all from 127.0.0.1.
    assert_eq!(
        s.seen.connections.load(std::sync::atomic::Ordering::SeqCst),
        4
    );
    assert_eq!(r.connections_opened, 4);
    assert_eq!(
        s.seen.distinct_peers(),
        HashSet::from(["127.0.0.1".parse().unwrap()])
    );
    // The default body is the GitHub push fixture.
    assert_eq!(
        *s.seen.body_lens.lock().unwrap(),
        HashSet::from([fluxgate_loadtest::body::GITHUB_PUSH.len()])
    );
    assert!(r.latency_us.p50 > 0 && r.latency_us.p50 <= r.latency_us.max);
    assert!(r.throughput_rps > 0.0);
}

#[test]
fn github_sha1_two_threads() {
    let s = Server::start(Provider::Github, false);
    let r = run(
        &s,
        &[
            "--algorithm",
            "sha1",
            "--mix",
            "valid=3,badsig=1",
            "-c",
            "5",
            "-t",
            "2",
            "-d",
            "1s",
        ],
    );
    agrees(&r, &s);
    assert_eq!(kind(&r, "valid").1, s.seen.status(202));
    assert_eq!(kind(&r, "badsig").1, s.seen.status(401));
    proportions_hold(&r, &[("valid", 3), ("badsig", 1)], 2);
    assert_eq!(r.connections_opened, 5);
    assert_eq!(
        s.seen.connections.load(std::sync::atomic::Ordering::SeqCst),
        5
    );
}

#[test]
fn gitlab_new_connection_per_request_from_many_sources() {
    let s = Server::start(Provider::Gitlab, false);
    let r = run(
        &s,
        &[
            "--type",
            "gitlab",
            "--mix",
            "valid=1,badsig=1",
            "--new-conn",
            "--sources",
            "50",
            "-c",
            "2",
            "-d",
            "1s",
        ],
    );
    agrees(&r, &s);
    assert_eq!(kind(&r, "valid").1, s.seen.status(202));
    assert_eq!(kind(&r, "badsig").1, s.seen.status(401));
    // One connection per request.
    let conns = s.seen.connections.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(conns, r.requests, "{}", r.to_table());
    assert_eq!(r.connections_opened, r.requests);
    // Round robin over 50 loopback addresses, never 127.0.0.1.
    let peers = s.seen.distinct_peers();
    assert_eq!(peers.len() as u64, r.requests.min(50), "{peers:?}");
    assert!(peers
        .iter()
        .all(|p| p.is_loopback() && p.to_string() != "127.0.0.1"));
}

#[test]
fn sources_with_keepalive_give_one_address_per_connection() {
    let s = Server::start(Provider::Github, false);
    let r = run(&s, &["--sources", "1000", "-c", "3", "-d", "300ms"]);
    agrees(&r, &s);
    assert_eq!(s.seen.distinct_peers().len(), 3);
}

#[test]
fn generic_hmac_big_generated_body() {
    let s = Server::start(Provider::GenericHmac, false);
    let r = run(
        &s,
        &[
            "--type",
            "generic-hmac",
            "--algorithm",
            "sha512",
            "--body-size",
            "300KiB",
            "--mix",
            "valid=2,badsig=1,unknown=1",
            "-c",
            "3",
            "-t",
            "2",
            "-d",
            "1s",
        ],
    );
    agrees(&r, &s);
    assert_eq!(kind(&r, "valid").1, s.seen.status(202));
    assert_eq!(kind(&r, "badsig").1, s.seen.status(401));
    assert_eq!(kind(&r, "unknown").1, s.seen.status(404));
    assert_eq!(
        *s.seen.body_lens.lock().unwrap(),
        HashSet::from([300 * 1024])
    );
    assert!(r.bytes_sent >= r.requests * 300 * 1024);
}

#[test]
fn body_from_a_file_and_ca_trust() {
    let s = Server::start(Provider::Github, false);
    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("body.json");
    std::fs::write(
        &body,
        br#"{"ref":"refs/heads/main","zen":"Keep it logically awesome."}"#,
    )
    .unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &s.cert_pem).unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    let o = Options::try_parse_from([
        "fluxgate-loadtest",
        &s.url(),
        "--secret-file",
        secret.to_str().unwrap(),
        "--ca",
        ca.to_str().unwrap(),
        "--body",
        body.to_str().unwrap(),
        "-c",
        "2",
        "-d",
        "300ms",
        "-q",
    ])
    .unwrap();
    let r = fluxgate_loadtest::run(&o).unwrap();
    agrees(&r, &s);
    assert_eq!(s.seen.status(202), r.requests);
    assert_eq!(*s.seen.body_lens.lock().unwrap(), HashSet::from([60]));

    // A certificate that is not trusted: TLS errors, counted, not a failure of the tool.
    let other = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    std::fs::write(&ca, other.cert.pem()).unwrap();
    let o = Options::try_parse_from([
        "fluxgate-loadtest",
        &s.url(),
        "--secret",
        SECRET,
        "--ca",
        ca.to_str().unwrap(),
        "-c",
        "1",
        "-d",
        "200ms",
        "-q",
    ])
    .unwrap();
    let r = fluxgate_loadtest::run(&o).unwrap();
    assert!(r.errors.tls > 0, "{}", r.to_table());
    assert_eq!(r.errors.tls, r.errors.total);
    assert!(
        r.errors.samples["tls"].contains("certificate"),
        "{:?}",
        r.errors.samples
    );
    assert_eq!(r.answered, 0);
}

#[test]
fn rate_mode_sends_about_rate_times_duration() {
    let s = Server::start(Provider::Github, false);
    let r = run(
        &s,
        &["--rate", "200", "-c", "4", "-d", "1s", "--warmup", "200ms"],
    );
    assert_eq!(r.errors.total, 0, "{}", r.to_table());
    assert_eq!(r.mode, "open");
    // 200 requests are scheduled in the measured second; loose bounds for slow machines.
    assert!((150..=250).contains(&r.requests), "{}", r.to_table());
    // The warm-up's requests reached the server but are not in the report's counts.
    assert!(r.warmup.answered > 0);
    assert_eq!(s.seen.total(), r.answered + r.warmup.answered);
}

#[test]
fn warmup_is_not_counted() {
    let s = Server::start(Provider::Github, false);
    let r = run(&s, &["-c", "2", "-d", "300ms", "-w", "300ms"]);
    assert_eq!(r.errors.total, 0);
    assert!(r.warmup.answered > 0);
    assert_eq!(s.seen.total(), r.answered + r.warmup.answered);
    assert_eq!(r.kinds["valid"].sent, r.answered);
}

#[test]
fn timeouts_and_refused_connections_are_counted() {
    let s = Server::start(Provider::Github, true);
    let r = run(&s, &["--timeout", "200ms", "-c", "2", "-d", "300ms"]);
    assert!(r.errors.timeout >= 2, "{}", r.to_table());
    assert_eq!(r.errors.total, r.errors.timeout);
    assert_eq!(r.answered, 0);

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let o = Options::try_parse_from([
        "fluxgate-loadtest",
        &format!("https://127.0.0.1:{port}/hook/x"),
        "--secret",
        "s",
        "-k",
        "-c",
        "1",
        "-d",
        "100ms",
        "-q",
    ])
    .unwrap();
    let r = fluxgate_loadtest::run(&o).unwrap();
    assert!(r.errors.connect > 0, "{}", r.to_table());
    assert_eq!(r.errors.total, r.errors.connect);
}

const BIN: &str = env!("CARGO_BIN_EXE_fluxgate-loadtest");

#[test]
fn cli_json_table_and_exit_status() {
    let s = Server::start(Provider::Github, false);
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let json_file = dir.path().join("out.json");
    // Only bad signatures: every answer is 401, and the tool still exits 0.
    let out = Command::new(BIN)
        .args([
            &s.url(),
            "--secret-file",
            secret.to_str().unwrap(),
            "-k",
            "-c",
            "2",
        ])
        .args(["-d", "300ms", "--mix", "badsig=1", "--json"])
        .arg(&json_file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let table = String::from_utf8(out.stdout).unwrap();
    for field in [
        "throughput",
        "latency",
        "p99.9",
        "status",
        "401:",
        "errors",
        "connections",
    ] {
        assert!(table.contains(field), "{field} missing from\n{table}");
    }
    assert!(!table.contains(SECRET));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(!stderr.contains(SECRET));
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json_file).unwrap()).unwrap();
    assert_eq!(v["status"]["401"].as_u64().unwrap(), s.seen.status(401));
    assert_eq!(
        v["status"]["401"].as_u64().unwrap(),
        v["requests"].as_u64().unwrap()
    );
    for p in ["p50", "p90", "p99", "p999", "max", "min", "mean"] {
        assert!(v["latency_us"][p].is_number(), "{p}: {v}");
    }
    for e in ["connect", "tls", "io", "timeout", "parse", "total"] {
        assert_eq!(v["errors"][e].as_u64(), Some(0), "{e}: {v}");
    }
    for f in [
        "throughput_rps",
        "elapsed_s",
        "duration_s",
        "answered",
        "connections_opened",
    ] {
        assert!(v[f].is_number(), "{f}: {v}");
    }
    assert_eq!(v["type"], "github");
    assert_eq!(v["mode"], "closed");
    assert_eq!(v["kinds"]["badsig"]["sent"], v["requests"]);
    assert!(!v.to_string().contains(SECRET));

    // --json - prints JSON instead of the table.
    let out = Command::new(BIN)
        .args([
            &s.url(),
            "--secret",
            SECRET,
            "-k",
            "-c",
            "1",
            "-d",
            "200ms",
            "-q",
        ])
        .args(["--json", "-"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["answered"].as_u64().unwrap() > 0);
    assert!(
        out.stderr.is_empty(),
        "--quiet: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains(SECRET));

    // Setup errors exit non-zero with one line.
    let missing = dir.path().join("missing");
    for args in [
        vec!["http://127.0.0.1:1/hook/x", "--secret", "s"],
        vec![
            "https://127.0.0.1:1/hook/x",
            "--secret-file",
            missing.to_str().unwrap(),
        ],
        vec![
            "https://127.0.0.1:1/hook/x",
            "--secret",
            "s",
            "--body",
            missing.to_str().unwrap(),
        ],
        vec![
            "https://127.0.0.1:1/hook/x",
            "--secret",
            "s",
            "--ca",
            missing.to_str().unwrap(),
        ],
        vec![
            "https://127.0.0.1:1/hook/x",
            "--secret",
            "s",
            "--mix",
            "valid=0",
        ],
        vec!["https://127.0.0.1:1/hook/x"],
    ] {
        let out = Command::new(BIN).args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        assert!(!out.stderr.is_empty());
    }
}

#[test]
fn progress_lines_on_stderr() {
    let s = Server::start(Provider::Github, false);
    let out = Command::new(BIN)
        .args([
            &s.url(),
            "--secret",
            SECRET,
            "-k",
            "-c",
            "1",
            "-d",
            "1500ms",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    let line = stderr.lines().next().unwrap_or_default();
    assert!(
        line.contains("req/s") && line.contains("errors"),
        "{stderr}"
    );
}
