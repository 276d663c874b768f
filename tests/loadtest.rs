//! The load generator (loadtest/, `fluxgate-loadtest`) against the real gateway: a couple of
//! seconds of valid, bad-signature and unknown-path deliveries, each answered as it should be,
//! and no panic in the gateway's log (checked when the gateway is dropped).

use crate::common::*;
use clap::Parser;
use fluxgate_loadtest::{Options, Report};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SECRET: &str = "loadtest-secret-0123456789abcdef";

fn drive(url: &str, secret_file: &Path, ca: &Path, extra: &[&str]) -> Report {
    let mut args = vec![
        "fluxgate-loadtest".to_string(),
        url.to_string(),
        "--secret-file".into(),
        secret_file.display().to_string(),
        "--ca".into(),
        ca.display().to_string(),
        "--mix".into(),
        "valid=8,badsig=1,unknown=1".into(),
        "--quiet".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    fluxgate_loadtest::run(&Options::try_parse_from(args).unwrap()).unwrap()
}

/// Valid → 2xx, bad signature → 401, unknown path → 404, and nothing else.
fn answered_as_expected(r: &Report) {
    let table = r.to_table();
    assert_eq!(r.errors.total, 0, "{table}");
    assert!(r.kinds["valid"].answered > 0, "{table}");
    assert!(r.kinds["badsig"].answered > 0, "{table}");
    assert!(r.kinds["unknown"].answered > 0, "{table}");
    assert!(
        r.kinds["valid"].status.keys().all(|s| s.starts_with('2')),
        "{table}"
    );
    assert_eq!(
        r.kinds["badsig"].status.keys().collect::<Vec<_>>(),
        ["401"],
        "{table}"
    );
    assert_eq!(
        r.kinds["unknown"].status.keys().collect::<Vec<_>>(),
        ["404"],
        "{table}"
    );
}

#[test]
fn loadtest_against_fluxgate_serve() {
    let s = Setup::new()
        .section("[limits]\nper_ip = \"off\"\nper_receiver = \"off\"\nblock_after_failures = 0\nmax_connections_per_ip = 0")
        .section("[relay]\nwait = \"0s\"");
    let secret = s.secret("github", SECRET);
    let r = format!(
        "name = \"github-receiver\"\nnamespace = \"flux-system\"\ntype = \"github\"\nevents = [\"push\"]\nsecret_file = \"{}\"\nresources = [{{ kind = \"GitRepository\", name = \"app\" }}]",
        secret.display()
    );
    let gw = s.receiver(&r).start();
    let url = gw.url(&hook(SECRET, "github-receiver", "flux-system"));
    let ca = gw.setup.path("tls.crt");
    let r = drive(
        &url,
        &secret,
        &ca,
        &["-c", "8", "-d", "2s", "--sources", "20"],
    );
    answered_as_expected(&r);
    // Every verified delivery reached the relay: the target was patched at least once.
    assert!(!gw.patches().is_empty());
}

/// `fluxgate dev --bench`, as loadtest/README.md runs it; killed on drop, its log checked.
struct DevBench {
    child: Child,
    log: std::path::PathBuf,
}

impl Drop for DevBench {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            let logs = std::fs::read_to_string(&self.log).unwrap_or_default();
            assert!(
                !logs.contains("panicked at"),
                "fluxgate dev panicked:\n{logs}"
            );
        }
    }
}

/// Starts `fluxgate dev` with `args` in `dir` (its output in `dir/dev.log`) and waits until it
/// serves; the gateway's and the admin listener's ports.
fn start_dev(dir: &Path, args: &[&str]) -> (DevBench, u16, u16) {
    let token = dir.join("token");
    std::fs::write(&token, SECRET).unwrap();
    let (port, admin) = (free_port(), free_port());
    let log = dir.join("dev.log");
    let out = std::fs::File::create(&log).unwrap();
    let child = Command::new(BIN)
        .arg("dev")
        .args(args)
        .arg("--dir")
        .arg(dir)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
        .arg("--token-file")
        .arg(&token)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let mut dev = DevBench {
        child,
        log: log.clone(),
    };
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(status)) = dev.child.try_wait() {
            panic!(
                "fluxgate dev exited with {status}: {}",
                std::fs::read_to_string(&log).unwrap()
            );
        }
        if http_get(admin, "/healthz").is_some_and(|(s, _)| s == 200)
            && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        {
            break;
        }
        assert!(Instant::now() < until, "fluxgate dev did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    (dev, port, admin)
}

#[test]
fn loadtest_against_fluxgate_dev_bench() {
    let dir = tempfile::tempdir().unwrap();
    let (dev, port, _) = start_dev(dir.path(), &["--bench"]);
    let token = dir.path().join("token");
    // The key it makes is its owner's alone, so `serve` does not warn about it.
    assert_eq!(mode(&dir.path().join("tls.key")), 0o600);
    let url = format!(
        "https://127.0.0.1:{port}{}",
        hook(SECRET, "github-receiver", "flux-system")
    );
    let r = drive(
        &url,
        &token,
        &dir.path().join("tls.crt"),
        &["-c", "4", "-d", "1s"],
    );
    answered_as_expected(&r);
    // --bench answers 202 as soon as a delivery is queued.
    assert_eq!(r.kinds["valid"].status.keys().collect::<Vec<_>>(), ["202"]);
    drop(dev);
}

/// `fluxgate dev --clusters 3`: the curl it prints, run as printed, reconciles the same object
/// in three stand-in APIs (three servers, CAs and tokens), each of which prints the patch.
#[test]
fn dev_with_three_clusters_reconciles_in_each_with_the_printed_curl() {
    let dir = tempfile::tempdir().unwrap();
    let (dev, _, _) = start_dev(dir.path(), &["--clusters", "3"]);
    let log = std::fs::read_to_string(&dev.log).unwrap();
    let curl: String = log
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("curl "))
        .take_while(|l| !l.trim().is_empty())
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(curl.contains("--data-binary"), "no curl printed:\n{log}");
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("{} -sS -w '\\n%{{http_code}}'", curl.trim_end()))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let (body, status) = text.rsplit_once('\n').unwrap_or_default();
    assert_eq!(
        status,
        "200",
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: serde_json::Value = serde_json::from_str(body).unwrap();
    let clusters: Vec<&String> = answer["clusters"].as_object().unwrap().keys().collect();
    assert_eq!(clusters, ["dev-1", "dev-2", "dev-3"], "{body}");
    for c in ["dev-1", "dev-2", "dev-3"] {
        assert_eq!(
            answer["clusters"][c]["patched"].as_array().unwrap().len(),
            3,
            "{body}"
        );
    }
    // Each stand-in prints what it accepted, under its cluster's name.
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let log = std::fs::read_to_string(&dev.log).unwrap();
        let seen = |c: &str| {
            log.lines().any(|l| {
                l.starts_with(&format!("stand-in API {c}: PATCH /apis/source.toolkit.fluxcd.io/v1/namespaces/flux-system/gitrepositories/podinfo -> 200"))
            })
        };
        if ["dev-1", "dev-2", "dev-3"].iter().all(|c| seen(c)) {
            break;
        }
        assert!(
            Instant::now() < until,
            "not every stand-in printed its patch:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(dev);
}

/// The fleet benchmark (`fluxgate-fleetbench`), tiny: 3 clusters (one down, one slow) and the
/// memory scenario on 2 shared stand-ins. Only that every scenario completes; no timings.
#[test]
fn the_fleet_benchmark_runs_its_scenarios() {
    let opts = fluxgate_loadtest::fleet::FleetOptions::try_parse_from([
        "fluxgate-fleetbench",
        "--fluxgate",
        BIN,
        "--sizes",
        "3",
        "--deliveries",
        "2",
        "--down",
        "1",
        "--slow",
        "1",
        "--slow-delay",
        "300ms",
        "--memory",
        "3",
        "--servers",
        "2",
    ])
    .unwrap();
    let r = fluxgate_loadtest::fleet::run(&opts).unwrap();
    let table = r.to_table();
    let shape: Vec<(usize, usize, usize)> = r
        .fanout
        .iter()
        .map(|f| (f.clusters, f.timed_clusters, f.deliveries))
        .collect();
    assert_eq!(shape, [(3, 3, 2), (3, 1, 2)], "{table}");
    assert_eq!(r.memory.len(), 1, "{table}");
    assert!(
        r.memory[0].idle_kib > 0 && r.memory[0].servers == 2,
        "{table}"
    );
}

/// `loadtest/peers/run.sh`'s fluxgate: its configuration template, filled as run.sh fills it
/// (penalty box on and off, tarpit on and off, in-memory and durable queue), passes `fluxgate
/// check` against the stand-in API of `fluxgate-standin`, which lets it patch every target.
#[test]
fn the_peer_benchmark_configuration_passes_check_against_its_standin() {
    let s = Setup::new();
    let dir = s.dir.path();
    let _api = fluxgate_loadtest::standin::start(&dir.join("kubeconfig")).unwrap();
    std::fs::write(dir.join("token"), SECRET).unwrap();
    owner_only(&dir.join("token"));
    let template = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("loadtest/peers/fluxgate.toml.in"),
    )
    .unwrap();
    let queue = format!("queue_dir = \"{}/queue\"", dir.display());
    for (block, tarpit, queue) in [
        ("0", "", ""),
        ("20", "", queue.as_str()),
        ("20", "tarpit_connections = 0", ""),
    ] {
        let config = template
            .replace("@PORT@", "19443")
            .replace("@ADMIN_PORT@", "20443")
            .replace("@CERT@", &dir.join("tls.crt").display().to_string())
            .replace("@KEY@", &dir.join("tls.key").display().to_string())
            .replace("@DIR@", &dir.display().to_string())
            .replace("@HEAD_TIMEOUT@", "5s")
            .replace("@QUEUE@", queue)
            .replace("@BLOCK_AFTER@", block)
            .replace("@TARPIT@", tarpit);
        assert!(!config.contains('@'), "a placeholder left: {config}");
        let path = dir.join("fluxgate.toml");
        std::fs::write(&path, &config).unwrap();
        let out = Command::new(BIN)
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{config}\n{text}");
        assert!(
            text.contains("may patch GitRepository flux-system/podinfo")
                && text.contains("may patch Kustomization flux-system/*"),
            "{text}"
        );
    }
}
