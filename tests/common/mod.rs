//! Test harness: the real `fluxgate` binary on a loopback TLS listener, talking to the
//! stand-in Kubernetes API, driven by real HTTPS clients.

use kube_standin::{Config as ApiConfig, Recorded, Rule, StandIn};
use serde_json::json;
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const SA_TOKEN: &str = "sa-token-for-tests";
pub const SA_USER: &str = "system:serviceaccount:flux-system:fluxgate";
pub const BIN: &str = env!("CARGO_BIN_EXE_fluxgate");

pub fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name),
    )
    .unwrap()
}

/// Secrets are written as an operator should keep them, or fluxgate warns about every one.
pub fn owner_only(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A file's permission bits.
pub fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// A port nothing listens on, and one this process has not handed out before: the kernel may
/// give the same ephemeral port twice in a row once the probe is closed, and a gateway whose
/// listener and admin ports collide refuses to start.
pub fn free_port() -> u16 {
    use std::collections::HashSet;
    use std::sync::Mutex;
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
        if given.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
}

pub fn install_crypto() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Flux objects every test cluster holds.
pub fn flux_objects() -> Vec<serde_json::Value> {
    let git = |name: &str, app: &str| {
        json!({"apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "GitRepository",
               "metadata": {"name": name, "namespace": "flux-system", "labels": {"app": app},
                            "annotations": {"keep.example.com/me": "yes"}},
               "spec": {"interval": "10m", "url": "https://example.com/repo.git"}})
    };
    vec![
        git("app", "web"),
        git("other", "web"),
        git("lonely", "db"),
        json!({"apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
               "metadata": {"name": "app", "namespace": "flux-system", "labels": {"app": "web"}},
               "spec": {"interval": "10m", "path": "./", "prune": true}}),
        json!({"apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
               "metadata": {"name": "app", "namespace": "apps"},
               "spec": {"interval": "10m", "path": "./", "prune": true}}),
    ]
}

/// The rules of a Role in `deploy/` (`role.yaml`, `cluster-mode/role.yaml`) as the stand-in's
/// RBAC, bound in `namespace` as its RoleBinding does.
pub fn deploy_role_rules(file: &str, namespace: &str) -> Vec<Rule> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("deploy/{file}: {e}"));
    let role: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
    let list = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect())
            .unwrap_or_default()
    };
    fn refs(l: &[String]) -> Vec<&str> {
        l.iter().map(|s| s.as_str()).collect()
    }
    role["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let (v, g, res, names) = (
                list(&r["verbs"]),
                list(&r["apiGroups"]),
                list(&r["resources"]),
                list(&r["resourceNames"]),
            );
            Rule::new(&refs(&v), &refs(&g), &refs(&res))
                .in_namespaces(&[namespace])
                .names(&refs(&names))
        })
        .collect()
}

/// The service account's RBAC: get/list/patch on sources and kustomizations in flux-system only.
pub fn api_config() -> ApiConfig {
    let mut c = ApiConfig::new().user(SA_TOKEN, SA_USER).allow(
        SA_USER,
        Rule::new(
            &["get", "list", "patch"],
            &["source.toolkit.fluxcd.io", "kustomize.toolkit.fluxcd.io"],
            &["gitrepositories", "kustomizations"],
        )
        .in_namespaces(&["flux-system"]),
    );
    for o in flux_objects() {
        c = c.object(o);
    }
    c
}

/// A temporary folder with a certificate, secrets and a configuration being written.
pub struct Setup {
    pub dir: tempfile::TempDir,
    pub server_extra: String,
    /// Whole sections (`[limits]`, `[ranges.x]`) appended after `[kubernetes]`.
    pub sections: String,
    receivers: Vec<String>,
    pub cert_pem: String,
}

impl Setup {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
            .unwrap();
        std::fs::write(dir.path().join("tls.crt"), cert.cert.pem()).unwrap();
        std::fs::write(dir.path().join("tls.key"), cert.key_pair.serialize_pem()).unwrap();
        owner_only(&dir.path().join("tls.key"));
        Setup {
            dir,
            server_extra: String::new(),
            sections: String::new(),
            receivers: Vec::new(),
            cert_pem: cert.cert.pem(),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes a secret file and returns its path.
    pub fn secret(&self, name: &str, value: &str) -> PathBuf {
        let p = self.path(&format!("{name}.secret"));
        std::fs::write(&p, value).unwrap();
        owner_only(&p);
        p
    }

    /// Adds a `[[receivers]]` table; `body` is its TOML lines.
    pub fn receiver(mut self, body: &str) -> Self {
        self.receivers.push(body.to_string());
        self
    }

    pub fn server(mut self, lines: &str) -> Self {
        self.server_extra.push_str(lines);
        self.server_extra.push('\n');
        self
    }

    pub fn section(mut self, text: &str) -> Self {
        self.sections.push_str(text);
        self.sections.push_str("\n\n");
        self
    }

    pub fn config_text(&self, port: u16, admin: u16) -> String {
        let d = self.dir.path().display();
        let mut s = format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin}\"\n\
             tls_cert = \"{d}/tls.crt\"\ntls_key = \"{d}/tls.key\"\n{}\n\
             [kubernetes]\nkubeconfig = \"{d}/kubeconfig\"\n\n{}",
            self.server_extra, self.sections
        );
        for r in &self.receivers {
            s.push_str("[[receivers]]\n");
            s.push_str(r);
            s.push_str("\n\n");
        }
        s
    }

    pub fn write_config(&self, port: u16, admin: u16) -> PathBuf {
        let p = self.path("fluxgate.toml");
        std::fs::write(&p, self.config_text(port, admin)).unwrap();
        p
    }

    /// A kubeconfig for commands that never reach the API (`check --offline`).
    pub fn offline_kubeconfig(&self) {
        std::fs::write(
            self.path("kubeconfig"),
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:1\n    insecure-skip-tls-verify: true\nusers:\n- name: u\n  user:\n    token: t\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\ncurrent-context: x\n",
        )
        .unwrap();
        owner_only(&self.path("kubeconfig"));
    }

    /// Starts a stand-in API with the default objects and RBAC, then the gateway.
    pub fn start(self) -> Gateway {
        let api = StandIn::start(api_config()).unwrap();
        self.start_with(api)
    }

    pub fn start_with(self, api: StandIn) -> Gateway {
        self.start_with_args(api, &[], &[])
    }
}

pub struct Gateway {
    pub child: Child,
    pub port: u16,
    pub admin: u16,
    pub api: StandIn,
    pub setup: Setup,
    pub log: PathBuf,
}

impl Gateway {
    fn wait_healthy(&mut self) {
        let until = Instant::now() + Duration::from_secs(20);
        while Instant::now() < until {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("fluxgate exited with {status}: {}", self.logs());
            }
            if http_get(self.admin, "/healthz").is_some_and(|(s, _)| s == 200)
                && std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("fluxgate did not become healthy: {}", self.logs());
    }

    pub fn logs(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }

    pub fn client(&self) -> reqwest::Client {
        self.client_from("127.0.0.1")
    }

    /// A client whose connections come from `source`, an address in 127.0.0.0/8, standing in
    /// for a distinct sender.
    pub fn client_from(&self, source: &str) -> reqwest::Client {
        install_crypto();
        reqwest::Client::builder()
            .use_rustls_tls()
            .local_address(Some(source.parse().unwrap()))
            .add_root_certificate(
                reqwest::Certificate::from_pem(self.setup.cert_pem.as_bytes()).unwrap(),
            )
            .build()
            .unwrap()
    }

    /// POSTs `body` with `headers`; returns the status and the body text.
    pub async fn post(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<reqwest::Body>,
    ) -> (u16, String) {
        let r = self.post_from("127.0.0.1", path, headers, body).await;
        (r.0, r.1)
    }

    /// POSTs from `source`; returns the status, the body text and the Retry-After header.
    pub async fn post_from(
        &self,
        source: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<reqwest::Body>,
    ) -> (u16, String, Option<String>) {
        let mut rb = self.client_from(source).post(self.url(path)).body(body);
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        let r = rb.send().await.unwrap();
        let retry = r
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_string());
        (r.status().as_u16(), r.text().await.unwrap(), retry)
    }

    /// The gateway's resident memory, in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// A metric's value from /metrics, by its exact name and labels as printed.
    pub fn metric(&self, series: &str) -> f64 {
        let (_, text) = http_get(self.admin, "/metrics").unwrap();
        text.lines()
            .find_map(|l| {
                l.strip_prefix(series)
                    .and_then(|rest| rest.strip_prefix(' '))
            })
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or(0.0)
    }

    /// Requests that relay something (everything but the readiness check's `GET /api`).
    pub fn relayed(&self) -> Vec<Recorded> {
        self.api
            .requests()
            .into_iter()
            .filter(|r| !(r.method == "GET" && r.path == "/api"))
            .collect()
    }

    pub fn patches(&self) -> Vec<Recorded> {
        self.api
            .requests()
            .into_iter()
            .filter(|r| r.method == "PATCH")
            .collect()
    }

    pub fn annotation(
        &self,
        api_version: &str,
        kind: &str,
        ns: &str,
        name: &str,
    ) -> Option<String> {
        self.api
            .object(api_version, kind, ns, name)?
            .pointer("/metadata/annotations/reconcile.fluxcd.io~1requestedAt")?
            .as_str()
            .map(str::to_string)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A panic inside the gateway (say, in a background task) may not fail any request,
        // so every test also checks the log for one.
        if !std::thread::panicking() {
            let logs = self.logs();
            assert!(
                !logs.contains("panicked at"),
                "the gateway panicked:\n{logs}"
            );
        }
    }
}

/// A plain HTTP GET on the admin listener.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// HMAC header value `alg=hex` for `body`.
pub fn sig(alg: &str, key: &str, body: &[u8]) -> String {
    let a = alg.parse().unwrap();
    format!(
        "{alg}={}",
        fluxgate::verify::signature::sign(a, key.as_bytes(), body)
    )
}

pub fn hook(token: &str, name: &str, ns: &str) -> String {
    fluxgate::hook_path::flux_hook_path(token.as_bytes(), name, ns)
}

/// A raw TLS connection to the gateway, for requests a normal client will not send.
pub async fn raw_tls(
    port: u16,
    cert_pem: &str,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    install_crypto();
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut cert_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect("127.0.0.1".try_into().unwrap(), tcp)
        .await
        .unwrap()
}

// ---- Process life cycle, for the relay queue's restart, shutdown and upgrade tests ----

/// Sends `signal` (a name such as `TERM`, `QUIT` or `KILL`) to process `pid` with kill(1).
pub fn send_signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("cannot run kill");
    assert!(status.success(), "kill -{signal} {pid} failed: {status}");
}

/// Waits for `child` to exit, up to `limit`; its exit status, or `None` if it still runs.
pub fn wait_exit(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let until = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() >= until {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Like [`wait_exit`], without blocking a runtime thread, for async tests whose other tasks must
/// keep running meanwhile.
pub async fn wait_exit_async(
    child: &mut Child,
    limit: Duration,
) -> Option<std::process::ExitStatus> {
    let until = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() >= until {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Another `fluxgate` process started beside a [`Gateway`] (say, the new process of a graceful
/// upgrade), with its own log. Dropping it kills it and checks its log for a panic.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            let logs = self.logs();
            assert!(
                !logs.contains("panicked at"),
                "fluxgate ({}) panicked:\n{logs}",
                self.log.display()
            );
        }
    }
}

impl Gateway {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The configuration file the gateway was started with.
    pub fn config_path(&self) -> PathBuf {
        self.setup.path("fluxgate.toml")
    }

    /// Sends `signal` (`TERM`, `QUIT`, ...) to the gateway process.
    pub fn signal(&self, signal: &str) {
        send_signal(self.pid(), signal);
    }

    /// Starts another `fluxgate serve <extra_args> --config <the same file>`, logging to
    /// `log_name` in the test's folder, without waiting for it. `&["-u"]` makes the process
    /// of a graceful upgrade, which waits on `server.upgrade_sock` for the listening sockets.
    pub fn spawn_serve(&self, extra_args: &[&str], log_name: &str) -> Proc {
        let log = self.setup.path(log_name);
        let child = Command::new(BIN)
            .arg("serve")
            .args(extra_args)
            .arg("--config")
            .arg(self.config_path())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Proc { child, log }
    }

    /// Starts a new `fluxgate serve` on the same configuration, ports and stand-in API once
    /// the current process is gone (it is killed if it still runs), and waits until it is
    /// healthy. Its log is appended to the same file, so [`logs`](Self::logs) shows both.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut log = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&self.log)
            .unwrap();
        {
            use std::io::Write;
            let _ = writeln!(log, "\n----- test harness: restarting fluxgate -----");
        }
        self.child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(self.config_path())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.wait_healthy();
    }

    /// Makes `next` the gateway's process, after a graceful upgrade handed it the listening
    /// sockets. The previous process is killed if it still runs, its log is checked for a
    /// panic, and the gateway is waited on until healthy.
    pub fn adopt(&mut self, mut next: Proc) {
        std::mem::swap(&mut self.child, &mut next.child);
        std::mem::swap(&mut self.log, &mut next.log);
        drop(next);
        self.wait_healthy();
    }
}

// ---- Operations: extra start options, /metrics scrapes, `fluxgate check`, certificates,
// ---- atomic file replacement and raw HTTP/1.1 exchanges on a TLS connection.

impl Setup {
    /// Like [`start_with`](Self::start_with), with extra `serve` arguments (say
    /// `["--log-format", "json"]`) and environment variables for the gateway process.
    pub fn start_with_args(self, api: StandIn, args: &[&str], env: &[(&str, &str)]) -> Gateway {
        api.write_kubeconfig(&self.path("kubeconfig"), SA_TOKEN)
            .unwrap();
        let (port, admin) = (free_port(), free_port());
        let config = self.write_config(port, admin);
        let log = self.path("gateway.log");
        let child = Command::new(BIN)
            .arg("serve")
            .args(args)
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut gw = Gateway {
            child,
            port,
            admin,
            api,
            setup: self,
            log,
        };
        gw.wait_healthy();
        gw
    }
}

/// One `/metrics` scrape: every line checked against the text format, then parsed with
/// `prometheus_parse`.
pub struct MetricsScrape {
    pub text: String,
    /// Each family's `# TYPE` (counter, gauge, histogram, ...).
    pub types: std::collections::HashMap<String, String>,
    pub samples: Vec<prometheus_parse::Sample>,
}

/// Scrapes the admin listener's `/metrics`; panics if it is not 200 or does not parse.
pub fn scrape_metrics(admin: u16) -> MetricsScrape {
    let (status, text) = http_get(admin, "/metrics").expect("GET /metrics");
    assert_eq!(status, 200, "GET /metrics: {text}");
    MetricsScrape::parse(text)
}

/// Parses the label set of a sample line, `name="value",...` with the format's escapes.
fn parse_label_set(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        let (name, after) = rest
            .split_once("=\"")
            .ok_or_else(|| format!("no name=\"value\" in {rest:?}"))?;
        let valid = !name.is_empty()
            && name
                .chars()
                .enumerate()
                .all(|(i, c)| c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit()));
        if !valid {
            return Err(format!("bad label name {name:?}"));
        }
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c @ ('\\' | '"'))) => value.push(c),
                    other => return Err(format!("bad escape {other:?} in {s:?}")),
                },
                Some((_, c)) => value.push(c),
                None => return Err(format!("unterminated label value in {s:?}")),
            }
        };
        out.push((name.to_string(), value));
        rest = &after[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
    Ok(out)
}

impl MetricsScrape {
    /// Checks every line of `text` (comments, `# TYPE` before its samples, sample syntax,
    /// values) and parses it; panics on the first problem.
    pub fn parse(text: String) -> Self {
        let mut types = std::collections::HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let bad = |why: &str| panic!("/metrics line {}: {why}: {line:?}\n{text}", i + 1);
            if line.trim().is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut it = rest.split_whitespace();
                let (Some(name), Some(ty), None) = (it.next(), it.next(), it.next()) else {
                    bad("malformed # TYPE line")
                };
                if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&ty) {
                    bad("unknown type");
                }
                if types.insert(name.to_string(), ty.to_string()).is_some() {
                    bad("a second # TYPE for the same family");
                }
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let (name, labels, value) = match prometheus_parse::LineInfo::parse(line) {
                prometheus_parse::LineInfo::Sample {
                    metric_name,
                    labels,
                    value,
                    ..
                } => (metric_name, labels, value),
                _ => bad("not a sample line"),
            };
            if let Some(l) = labels {
                if let Err(e) = parse_label_set(l) {
                    bad(&e);
                }
            }
            if !matches!(value, "+Inf" | "-Inf" | "NaN") && value.parse::<f64>().is_err() {
                bad("value is not a number");
            }
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| {
                    let base = name.strip_suffix(suffix)?;
                    matches!(
                        types.get(base).map(String::as_str),
                        Some("histogram" | "summary")
                    )
                    .then_some(base)
                })
                .unwrap_or(name);
            if !types.contains_key(family) {
                bad("sample without a # TYPE line before it");
            }
        }
        let parsed = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
            .unwrap_or_else(|e| panic!("prometheus_parse: {e}\n{text}"));
        MetricsScrape {
            text,
            types,
            samples: parsed.samples,
        }
    }

    /// The `# TYPE` of family `name`.
    pub fn type_of(&self, name: &str) -> Option<&str> {
        self.types.get(name).map(String::as_str)
    }

    fn matches(s: &prometheus_parse::Sample, name: &str, labels: &[(&str, &str)]) -> bool {
        s.metric == name
            && s.labels.len() == labels.len()
            && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
    }

    /// The value of the counter, gauge or untyped sample `name` with exactly `labels`.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| Self::matches(s, name, labels))
            .and_then(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => Some(v),
                _ => None,
            })
    }

    /// Like [`get`](Self::get), 0 when the series is absent (a counter not yet incremented).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }

    /// The observation count (`<name>_count`) of histogram `name` with exactly `labels`
    /// (besides `le`), 0 when absent.
    pub fn histogram_count(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(&format!("{name}_count"), labels)
    }

    /// The label names of every series of family `name` (for a histogram, of its buckets,
    /// without `le`), sorted, one entry per series.
    pub fn label_names(&self, name: &str) -> Vec<Vec<String>> {
        self.samples
            .iter()
            .filter(|s| s.metric == name)
            .map(|s| {
                let mut names: Vec<String> = s.labels.keys().cloned().collect();
                names.sort();
                names
            })
            .collect()
    }
}

impl Gateway {
    /// A checked and parsed `/metrics` scrape.
    pub fn scrape(&self) -> MetricsScrape {
        scrape_metrics(self.admin)
    }
}

/// What `fluxgate check` printed and how it exited.
#[derive(Debug)]
pub struct CheckRun {
    /// `None` if it had to be killed (it ran longer than 20 s) or died of a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CheckRun {
    /// Both streams, stdout first.
    pub fn output(&self) -> String {
        format!(
            "--- stdout ---\n{}--- stderr ---\n{}",
            self.stdout, self.stderr
        )
    }

    /// Lines of either stream that start (after indentation) with `prefix`.
    pub fn lines_starting(&self, prefix: &str) -> Vec<String> {
        self.stdout
            .lines()
            .chain(self.stderr.lines())
            .map(str::trim_start)
            .filter(|l| l.starts_with(prefix))
            .map(str::to_string)
            .collect()
    }
}

/// Runs `fluxgate check --config <config> <extra>` to completion (at most 20 s).
pub fn run_check(config: &Path, extra: &[&str], env: &[(&str, &str)]) -> CheckRun {
    let out = tempfile::NamedTempFile::new().unwrap();
    let err = tempfile::NamedTempFile::new().unwrap();
    let mut child = Command::new(BIN)
        .arg("check")
        .arg("--config")
        .arg(config)
        .args(extra)
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(out.reopen().unwrap())
        .stderr(err.reopen().unwrap())
        .spawn()
        .unwrap();
    let status = wait_exit(&mut child, Duration::from_secs(20));
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    CheckRun {
        code: status.and_then(|s| s.code()),
        stdout: std::fs::read_to_string(out.path()).unwrap_or_default(),
        stderr: std::fs::read_to_string(err.path()).unwrap_or_default(),
    }
}

/// A self-signed certificate for 127.0.0.1 and localhost with a fresh key, valid from
/// `not_before` to `not_after` (year, month, day); (certificate PEM, key PEM).
pub fn self_signed_cert(not_before: (i32, u8, u8), not_after: (i32, u8, u8)) -> (String, String) {
    let mut params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap();
    params.not_before = rcgen::date_time_ymd(not_before.0, not_before.1, not_before.2);
    params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// The DER of the first certificate in `pem`.
pub fn cert_der(pem: &str) -> Vec<u8> {
    rustls_pemfile::certs(&mut pem.as_bytes())
        .next()
        .expect("a PEM certificate")
        .unwrap()
        .to_vec()
}

/// The notAfter of the first certificate in `pem`, in Unix seconds.
pub fn cert_not_after(pem: &str) -> i64 {
    let der = cert_der(pem);
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    cert.validity().not_after.timestamp()
}

/// Replaces `path` with `contents` at once (a sibling file renamed over it), so that a
/// watcher never reads a half-written file.
pub fn replace_file(path: &Path, contents: impl AsRef<[u8]>) {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".replacing");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A TLS connection to the gateway from 127.0.0.1 trusting only `roots_pem`; the handshake's
/// error if it fails (say, the server's certificate is not among them).
pub async fn tls_connect(
    port: u16,
    roots_pem: &[&str],
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    install_crypto();
    let mut roots = rustls::RootCertStore::empty();
    for pem in roots_pem {
        for c in rustls_pemfile::certs(&mut pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
    }
    let cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect("127.0.0.1".try_into().unwrap(), tcp)
        .await
}

/// The DER of the certificate the server presented on `tls`.
pub fn peer_cert_der(tls: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> Vec<u8> {
    tls.get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .expect("the server presented a certificate")
        .to_vec()
}

/// Sends one `POST path` with `headers` and `body` on a kept-alive HTTP/1.1 connection and
/// reads its answer (Content-Length, chunked, or up to the close); (status, body).
pub async fn http1_post<S>(
    s: &mut S,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, String)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut req = format!("POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    s.write_all(&bytes).await?;
    s.flush().await?;

    let eof = || std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(eof());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line: {head:?}")))?;
    let header = |name: &str| {
        head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    let mut rest = buf[head_end..].to_vec();
    let body = if let Some(len) = header("content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| std::io::Error::other("bad Content-Length"))?;
        while rest.len() < len {
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                return Err(eof());
            }
            rest.extend_from_slice(&chunk[..n]);
        }
        rest.truncate(len);
        rest
    } else if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        let mut out = Vec::new();
        loop {
            let line_end = loop {
                if let Some(i) = rest.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                let n = s.read(&mut chunk).await?;
                if n == 0 {
                    return Err(eof());
                }
                rest.extend_from_slice(&chunk[..n]);
            };
            let size_text = String::from_utf8_lossy(&rest[..line_end]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| std::io::Error::other(format!("bad chunk size {size_text:?}")))?;
            rest.drain(..line_end + 2);
            while rest.len() < size + 2 {
                let n = s.read(&mut chunk).await?;
                if n == 0 {
                    return Err(eof());
                }
                rest.extend_from_slice(&chunk[..n]);
            }
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[..size]);
            rest.drain(..size + 2);
        }
        out
    } else {
        s.read_to_end(&mut rest).await?;
        rest
    };
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// A fresh delivery id per call, unique across the test binary's processes.
pub fn uid() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "delivery-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// The headers GitHub sends with a push signed with `secret`.
pub fn signed(secret: &str, body: &[u8], delivery: &str) -> Vec<(&'static str, String)> {
    vec![
        ("Content-Type", "application/json".to_string()),
        ("X-GitHub-Event", "push".to_string()),
        ("X-GitHub-Delivery", delivery.to_string()),
        ("X-Hub-Signature-256", sig("sha256", secret, body)),
    ]
}

/// Borrows owned header pairs in the form `Gateway::post` takes.
pub fn refs<'a>(h: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    h.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// A fresh 40-hex commit id, unique across the test binary's processes.
pub fn commit() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{:08x}{:032x}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// The GitHub push fixture as another push: a fresh `after` commit. The same signed body twice
/// within a receiver's `replay_window` is a replay whatever its delivery id, so tests that mean
/// distinct deliveries send distinct bodies, as distinct pushes are.
pub fn fresh_push() -> Vec<u8> {
    let mut v: serde_json::Value = serde_json::from_slice(&fixture("github/push.json")).unwrap();
    v["after"] = commit().into();
    serde_json::to_vec(&v).unwrap()
}
