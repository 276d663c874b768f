//! The fleet benchmark (`fluxgate-fleetbench`): one fluxgate `serve` reaching many clusters,
//! each a stand-in Kubernetes API on loopback in this process (its own server, CA and token).
//!
//! - **Fan-out**: one signed delivery to a receiver with `clusters = ["*"]`; per delivery, the
//!   time from sending it until the last cluster accepted its patch, measured at the stand-ins'
//!   side (when each PATCH arrived) against the moment the request was written.
//! - **Down and slow**: the same with some clusters refusing connections (a closed port) and
//!   some answering late; only the healthy clusters are timed.
//! - **Memory**: fluxgate's RSS with N clusters configured, before and after one delivery has
//!   given every cluster's client a connection, left idle.

use kube_standin::{Config as ApiConfig, Rule, StandIn};
use serde_json::json;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SA: &str = "system:serviceaccount:flux-system:fluxgate";
const SECRET: &str = "fleetbench-secret-0123456789abcdef";
const RECEIVER: &str = "fleet";
const PATCH_PATH: &str =
    "/apis/source.toolkit.fluxcd.io/v1/namespaces/flux-system/gitrepositories/podinfo";

#[derive(clap::Parser, Debug, Clone)]
#[command(
    name = "fluxgate-fleetbench",
    about = "Fan-out, failure isolation and memory of one fluxgate reaching many clusters"
)]
pub struct FleetOptions {
    /// The fluxgate binary (default: `fluxgate` beside this program).
    #[arg(long)]
    pub fluxgate: Option<PathBuf>,
    /// Fleet sizes for the fan-out scenario.
    #[arg(long, value_delimiter = ',', default_value = "1,10,100")]
    pub sizes: Vec<usize>,
    /// Timed deliveries per fleet size (after one untimed, cold, delivery).
    #[arg(long, default_value_t = 50)]
    pub deliveries: usize,
    /// Clusters down (connection refused) in the failure scenario, run at the largest size.
    #[arg(long, default_value_t = 10)]
    pub down: usize,
    /// Clusters answering late in the failure scenario.
    #[arg(long, default_value_t = 10)]
    pub slow: usize,
    /// How late the slow clusters answer.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub slow_delay: Duration,
    /// Fleet sizes for the memory scenario (empty: skip it).
    #[arg(long, value_delimiter = ',', default_value = "1,100,1000", num_args = 0..)]
    pub memory: Vec<usize>,
    /// At most this many stand-in servers in the memory scenario: larger fleets share them,
    /// each cluster with its own kubeconfig and token.
    #[arg(long, default_value_t = 100)]
    pub servers: usize,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Percentiles of one fan-out scenario, in milliseconds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FanOut {
    pub scenario: String,
    pub clusters: usize,
    pub timed_clusters: usize,
    pub deliveries: usize,
    /// The first delivery, when every client is new (not in the percentiles).
    pub cold_ms: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// CPU time fluxgate used per timed delivery (user + system).
    pub fluxgate_cpu_ms: f64,
    /// CPU time the stand-ins (this process) used per timed delivery.
    pub standins_cpu_ms: f64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Memory {
    pub clusters: usize,
    pub servers: usize,
    /// RSS once started and ready, no delivery yet.
    pub started_kib: u64,
    /// RSS after one delivery reached every cluster, left idle 2 s.
    pub idle_kib: u64,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct FleetReport {
    pub fanout: Vec<FanOut>,
    pub memory: Vec<Memory>,
}

impl FleetReport {
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        if !self.fanout.is_empty() {
            out.push_str("fan-out: time from sending a delivery until the last timed cluster accepted its patch;\n\
                          CPU ms used per delivery by fluxgate and by the stand-ins\n");
            out.push_str(&format!(
                "{:<28} {:>8} {:>6} {:>10} {:>10} {:>10} {:>10} {:>12} {:>12}\n",
                "scenario",
                "clusters",
                "timed",
                "cold ms",
                "p50 ms",
                "p99 ms",
                "max ms",
                "fluxgate cpu",
                "stand-in cpu"
            ));
            for f in &self.fanout {
                out.push_str(&format!(
                    "{:<28} {:>8} {:>6} {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>12.2} {:>12.2}\n",
                    f.scenario,
                    f.clusters,
                    f.timed_clusters,
                    f.cold_ms,
                    f.p50_ms,
                    f.p99_ms,
                    f.max_ms,
                    f.fluxgate_cpu_ms,
                    f.standins_cpu_ms
                ));
            }
        }
        if !self.memory.is_empty() {
            out.push_str("\nmemory: fluxgate's RSS\n");
            out.push_str(&format!(
                "{:>8} {:>8} {:>14} {:>14} {:>20}\n",
                "clusters", "servers", "started KiB", "idle KiB", "per cluster KiB"
            ));
            let base = self.memory.iter().find(|m| m.clusters == 1);
            for m in &self.memory {
                let per = match base {
                    Some(b) if m.clusters > 1 => format!(
                        "{:.1}",
                        (m.idle_kib as f64 - b.idle_kib as f64) / (m.clusters - 1) as f64
                    ),
                    _ => "-".to_string(),
                };
                out.push_str(&format!(
                    "{:>8} {:>8} {:>14} {:>14} {:>20}\n",
                    m.clusters, m.servers, m.started_kib, m.idle_kib, per
                ));
            }
        }
        out
    }
}

/// Runs every scenario the options ask for.
pub fn run(opts: &FleetOptions) -> Result<FleetReport, String> {
    let bin = match &opts.fluxgate {
        Some(b) => b.clone(),
        None => std::env::current_exe()
            .map_err(|e| format!("cannot find this program: {e}"))?
            .with_file_name("fluxgate"),
    };
    let mut report = FleetReport::default();
    for &n in &opts.sizes {
        report
            .fanout
            .push(fanout(&bin, n, 0, 0, opts.slow_delay, opts.deliveries)?);
    }
    let largest = opts.sizes.iter().copied().max().unwrap_or(0);
    if (opts.down > 0 || opts.slow > 0) && largest > opts.down + opts.slow {
        report.fanout.push(fanout(
            &bin,
            largest,
            opts.down,
            opts.slow,
            opts.slow_delay,
            opts.deliveries,
        )?);
    }
    for &n in &opts.memory {
        report.memory.push(memory(&bin, n, opts.servers.max(1))?);
    }
    Ok(report)
}

/// A cluster's stand-in: GitRepository flux-system/podinfo, patchable by the service account
/// of each of `tokens`.
fn standin(tokens: &[String]) -> Result<StandIn, String> {
    let mut c = ApiConfig::new();
    for t in tokens {
        c = c.user(t, SA);
    }
    c = c
        .allow(
            SA,
            Rule::new(
                &["get", "list", "patch"],
                &["source.toolkit.fluxcd.io"],
                &["gitrepositories"],
            )
            .in_namespaces(&["flux-system"]),
        )
        .object(
            json!({"apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "GitRepository",
            "metadata": {"name": "podinfo", "namespace": "flux-system"},
            "spec": {"url": "https://github.com/stefanprodan/podinfo", "interval": "10m"}}),
        );
    StandIn::start(c).map_err(|e| format!("cannot start a stand-in API: {e}"))
}

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

fn write(p: &Path, contents: impl AsRef<[u8]>) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(p, contents).map_err(|e| format!("cannot write {}: {e}", p.display()))?;
    // Keys, tokens and kubeconfigs: owner-only, so fluxgate does not warn about them.
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("cannot restrict {}: {e}", p.display()))
}

/// A running `fluxgate serve` reaching `clusters` clusters; killed on drop.
struct Gateway {
    child: Child,
    port: u16,
    tls: Arc<rustls::ClientConfig>,
    body: Vec<u8>,
    _dir: tempfile::TempDir,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes a certificate, one kubeconfig per cluster (cluster `i` on `apis[i % apis.len()]`
/// with token `tokens[i]`), a configuration with a `[[clusters]]` table each and a receiver
/// reaching `"*"`; starts fluxgate and waits until it serves.
fn start_gateway(bin: &Path, apis: &[StandIn], tokens: &[String]) -> Result<Gateway, String> {
    let dir = tempfile::Builder::new()
        .prefix("fluxgate-fleetbench-")
        .tempdir()
        .map_err(|e| format!("cannot create a folder: {e}"))?;
    let d = dir.path();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .map_err(|e| format!("cannot make a certificate: {e}"))?;
    write(&d.join("tls.crt"), cert.cert.pem())?;
    write(&d.join("tls.key"), cert.key_pair.serialize_pem())?;
    write(&d.join("token"), SECRET)?;
    let (port, admin) = (free_port()?, free_port()?);
    let mut config = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin}\"\n\
         tls_cert = \"{d}/tls.crt\"\ntls_key = \"{d}/tls.key\"\n\n\
         [limits]\nper_ip = \"off\"\nper_receiver = \"off\"\nblock_after_failures = 0\nmax_connections_per_ip = 0\n\n\
         [relay]\nwait = \"0s\"\nmin_interval = \"1ms\"\n\n",
        d = d.display()
    );
    for (i, token) in tokens.iter().enumerate() {
        let api = &apis[i % apis.len()];
        let kc = d.join(format!("kubeconfig-{i}"));
        write(&kc, api.kubeconfig(token))?;
        config.push_str(&format!(
            "[[clusters]]\nname = \"c{i}\"\nkubeconfig = \"{}\"\ntimeout = \"5s\"\n\n",
            kc.display()
        ));
    }
    config.push_str(&format!(
        "[[receivers]]\nname = \"{RECEIVER}\"\nnamespace = \"flux-system\"\ntype = \"github\"\n\
         events = [\"push\"]\nreplay_window = \"0s\"\nsecret_file = \"{d}/token\"\nclusters = [\"*\"]\n\
         resources = [{{ kind = \"GitRepository\", name = \"podinfo\" }}]\n",
        d = d.display()
    ));
    write(&d.join("fluxgate.toml"), &config)?;
    let log = std::fs::File::create(d.join("fluxgate.log"))
        .map_err(|e| format!("cannot write the log: {e}"))?;
    let child = Command::new(bin)
        .arg("serve")
        .arg("--config")
        .arg(d.join("fluxgate.toml"))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(cert.cert.der().clone())
        .map_err(|e| format!("cannot trust the certificate: {e}"))?;
    let tls = Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth(),
    );
    let mut gw = Gateway {
        child,
        port,
        tls,
        body: crate::body::GITHUB_PUSH.to_vec(),
        _dir: dir,
    };
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some(status)) = gw.child.try_wait() {
            let log =
                std::fs::read_to_string(gw._dir.path().join("fluxgate.log")).unwrap_or_default();
            return Err(format!("fluxgate exited with {status}:\n{log}"));
        }
        if healthy(admin) && TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(gw);
        }
        if Instant::now() > until {
            return Err("fluxgate did not start within 60 s".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn healthy(admin: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", admin)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    buf.starts_with(b"HTTP/1.1 200")
}

impl Gateway {
    /// Sends one signed push with a fresh delivery id over a new TLS connection; returns the
    /// moment the request was written (after the handshake) and the answer's status.
    fn deliver(&self, id: usize) -> Result<(Instant, u16), String> {
        let sig = crate::signing::hmac_hex(
            crate::signing::Algorithm::Sha256,
            SECRET.as_bytes(),
            &self.body,
        );
        let path = flux_hook_path(SECRET, RECEIVER, "flux-system");
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
             X-GitHub-Event: push\r\nX-GitHub-Delivery: fleetbench-{}-{id}\r\n\
             X-Hub-Signature-256: sha256={sig}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            std::process::id(),
            self.body.len()
        );
        let tcp = TcpStream::connect(("127.0.0.1", self.port)).map_err(|e| e.to_string())?;
        tcp.set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| e.to_string())?;
        let name =
            rustls::pki_types::ServerName::try_from("127.0.0.1").map_err(|e| e.to_string())?;
        let conn =
            rustls::ClientConnection::new(self.tls.clone(), name).map_err(|e| e.to_string())?;
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        while tls.conn.is_handshaking() {
            tls.conn
                .complete_io(&mut tls.sock)
                .map_err(|e| format!("TLS handshake: {e}"))?;
        }
        let mut req = head.into_bytes();
        req.extend_from_slice(&self.body);
        let sent = Instant::now();
        tls.write_all(&req).map_err(|e| e.to_string())?;
        let mut answer = Vec::new();
        // A peer that closes without close_notify still gave its whole answer.
        let _ = tls.read_to_end(&mut answer);
        let status = answer
            .get(9..12)
            .and_then(|s| std::str::from_utf8(s).ok())
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| {
                format!(
                    "no HTTP answer: {:?}",
                    String::from_utf8_lossy(&answer[..answer.len().min(200)])
                )
            })?;
        Ok((sent, status))
    }

    fn rss_kib(&self) -> Result<u64, String> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .map_err(|e| format!("cannot read fluxgate's memory: {e}"))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| "no VmRSS in /proc/PID/status".to_string())
    }
}

/// Flux's receiver path: `/hook/` + hex(sha256(token + name + namespace)).
fn flux_hook_path(token: &str, name: &str, namespace: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(token.as_bytes());
    h.update(name.as_bytes());
    h.update(namespace.as_bytes());
    format!("/hook/{}", hex::encode(h.finalize()))
}

/// The time from `sent` until each of `apis` first accepted the patch (arrival of a PATCH
/// answered 200 at or after `sent`); waits at most `limit`.
fn patched_within(apis: &[&StandIn], sent: Instant, limit: Duration) -> Result<Duration, String> {
    let until = Instant::now() + limit;
    let mut worst = vec![None; apis.len()];
    loop {
        for (api, slot) in apis.iter().zip(worst.iter_mut()) {
            if slot.is_none() {
                *slot = api
                    .requests()
                    .iter()
                    .filter(|r| {
                        r.method == "PATCH"
                            && r.path == PATCH_PATH
                            && r.status == 200
                            && r.received_at >= sent
                    })
                    .map(|r| r.received_at - sent)
                    .min();
            }
        }
        if worst.iter().all(Option::is_some) {
            return Ok(worst.into_iter().flatten().max().unwrap_or_default());
        }
        if Instant::now() > until {
            let missing = worst.iter().filter(|w| w.is_none()).count();
            let seen: Vec<String> = apis
                .iter()
                .zip(&worst)
                .find(|(_, w)| w.is_none())
                .map(|(a, _)| {
                    a.requests()
                        .iter()
                        .map(|r| format!("{} {} {}", r.method, r.path, r.status))
                        .collect()
                })
                .unwrap_or_default();
            return Err(format!(
                "{missing} of {} clusters not patched within {limit:?}; one of them saw {seen:?}",
                apis.len()
            ));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// User + system CPU time of process `pid` ("self" for this one), from /proc (clock ticks
/// of 10 ms, Linux's USER_HZ).
fn cpu_ms(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name, which may hold spaces, in parentheses.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15 of stat; `rest` starts at field 3.
    (ticks(11) + ticks(12)) as f64 * 10.0
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

/// `n` clusters, the first `down` refusing connections and the next `slow` answering after
/// `delay`; `deliveries` timed deliveries after a cold one.
pub fn fanout(
    bin: &Path,
    n: usize,
    down: usize,
    slow: usize,
    delay: Duration,
    deliveries: usize,
) -> Result<FanOut, String> {
    let tokens: Vec<String> = (0..n).map(|i| format!("token-of-cluster-{i}")).collect();
    let apis: Vec<StandIn> = tokens
        .iter()
        .map(|t| standin(std::slice::from_ref(t)))
        .collect::<Result<_, _>>()?;
    let gw = start_gateway(bin, &apis, &tokens)?;
    for api in &apis[..down] {
        api.set_down(true);
    }
    for api in &apis[down..down + slow] {
        api.set_latency(delay);
    }
    let timed: Vec<&StandIn> = apis[down + slow..].iter().collect();
    let limit = Duration::from_secs(30);
    let mut times = Vec::with_capacity(deliveries);
    let mut cold = Duration::ZERO;
    let pid = gw.child.id().to_string();
    let mut cpu_start = (0.0, 0.0);
    for k in 0..=deliveries {
        if k == 1 {
            cpu_start = (cpu_ms(&pid), cpu_ms("self"));
        }
        for api in &timed {
            api.clear_requests();
        }
        let (sent, status) = gw.deliver(k)?;
        if !(200..300).contains(&status) {
            return Err(format!("delivery {k} answered {status}"));
        }
        let t = patched_within(&timed, sent, limit)?;
        if k == 0 {
            cold = t;
        } else {
            times.push(t);
        }
    }
    let per = |start: f64, now: f64| (now - start) / deliveries.max(1) as f64;
    let fluxgate_cpu_ms = per(cpu_start.0, cpu_ms(&pid));
    let standins_cpu_ms = per(cpu_start.1, cpu_ms("self"));
    times.sort();
    let scenario = if down + slow > 0 {
        format!("{n}, {down} down + {slow} slow")
    } else {
        format!("{n} healthy")
    };
    Ok(FanOut {
        scenario,
        clusters: n,
        timed_clusters: timed.len(),
        deliveries: times.len(),
        cold_ms: cold.as_secs_f64() * 1000.0,
        p50_ms: percentile(&times, 0.50),
        p99_ms: percentile(&times, 0.99),
        max_ms: percentile(&times, 1.0),
        fluxgate_cpu_ms,
        standins_cpu_ms,
    })
}

/// fluxgate's RSS with `n` clusters on at most `servers` stand-ins.
pub fn memory(bin: &Path, n: usize, servers: usize) -> Result<Memory, String> {
    let tokens: Vec<String> = (0..n).map(|i| format!("token-of-cluster-{i}")).collect();
    let count = servers.min(n).max(1);
    let apis: Vec<StandIn> = (0..count)
        .map(|s| {
            let mine: Vec<String> = tokens.iter().skip(s).step_by(count).cloned().collect();
            standin(&mine)
        })
        .collect::<Result<_, _>>()?;
    let gw = start_gateway(bin, &apis, &tokens)?;
    std::thread::sleep(Duration::from_secs(2));
    let started = gw.rss_kib()?;
    let (sent, _) = gw.deliver(0)?;
    // Every cluster patched once: `n` accepted patches across the shared servers.
    let until = Instant::now() + Duration::from_secs(120);
    loop {
        let done: usize = apis
            .iter()
            .map(|a| {
                a.requests()
                    .iter()
                    .filter(|r| r.method == "PATCH" && r.status == 200 && r.received_at >= sent)
                    .count()
            })
            .sum();
        if done >= n {
            break;
        }
        if Instant::now() > until {
            return Err(format!("{done} of {n} clusters patched within 120 s"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(2));
    Ok(Memory {
        clusters: n,
        servers: count,
        started_kib: started,
        idle_kib: gw.rss_kib()?,
    })
}
