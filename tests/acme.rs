//! Automatic HTTPS against a real ACME CA: pebble (Let's Encrypt's test CA) and its DNS
//! server pebble-challtestsrv, which resolves every test name to 127.0.0.1, so that pebble's
//! validator connects to the real fluxgate binary. Skipped, with a note, where pebble is not
//! installed; `scripts/setup --tests` installs it (as CI does).

use crate::common::*;
use kube_standin::StandIn;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NAME: &str = "gw.fluxgate.test";

fn installed() -> bool {
    let found = ["pebble", "pebble-challtestsrv"].iter().all(|c| {
        Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {c}"))
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if !found {
        eprintln!("note: pebble is not installed (apt-get install pebble); skipping the ACME test");
    }
    found
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// pebble and its DNS server, on fresh ports, validating on `tls_port` and `http_port`.
struct Pebble {
    dir: PathBuf,
    dir_port: u16,
    mgmt_port: u16,
    dns_port: u16,
    proc: Option<Killed>,
    _dns: Killed,
    log: PathBuf,
    env: Vec<(&'static str, &'static str)>,
}

impl Pebble {
    fn start(dir: &Path, tls_port: u16, http_port: u16, validity: u64, nonce_reject: bool) -> Self {
        let no_eab = r#""externalAccountBindingRequired": false, "#;
        Self::start_with(dir, tls_port, http_port, validity, nonce_reject, no_eab)
    }

    /// With `extra`, more keys of pebble's configuration (`"domainBlocklist": [...], `).
    fn start_with(
        dir: &Path,
        tls_port: u16,
        http_port: u16,
        validity: u64,
        nonce_reject: bool,
        extra: &str,
    ) -> Self {
        // pebble's own HTTPS: a throw-away CA (what `ca_roots` trusts) and a certificate for 127.0.0.1.
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "pebble test ca");
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
            .unwrap()
            .signed_by(&key, &ca_cert, &ca_key)
            .unwrap();
        std::fs::write(dir.join("pebble-ca.pem"), ca_cert.pem()).unwrap();
        std::fs::write(dir.join("pebble-cert.pem"), leaf.pem()).unwrap();
        std::fs::write(dir.join("pebble-key.pem"), key.serialize_pem()).unwrap();
        let (dir_port, mgmt_port, dns_port, dns_mgmt) =
            (free_port(), free_port(), free_port(), free_port());
        let d = dir.display();
        std::fs::write(
            dir.join("pebble.json"),
            format!(
                r#"{{"pebble": {{"listenAddress": "127.0.0.1:{dir_port}", "managementListenAddress": "127.0.0.1:{mgmt_port}",
                "certificate": "{d}/pebble-cert.pem", "privateKey": "{d}/pebble-key.pem",
                "httpPort": {http_port}, "tlsPort": {tls_port}, "ocspResponderURL": "",
                {extra}"certificateValidityPeriod": {validity}}}}}"#
            ),
        )
        .unwrap();
        let dns = Command::new("pebble-challtestsrv")
            .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{dns_mgmt}")])
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut env = vec![("PEBBLE_VA_NOSLEEP", "1"), ("PEBBLE_AUTHZREUSE", "0")];
        if !nonce_reject {
            env.push(("PEBBLE_WFE_NONCEREJECT", "0"));
        }
        let mut p = Pebble {
            dir: dir.to_path_buf(),
            dir_port,
            mgmt_port,
            dns_port,
            proc: None,
            _dns: Killed(dns),
            log: dir.join("pebble.log"),
            env,
        };
        p.resume();
        p
    }

    /// (Re)starts pebble on the same ports; its roots are new at every start.
    fn resume(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new("pebble")
            .arg("-config")
            .arg(self.dir.join("pebble.json"))
            .args(["-dnsserver", &format!("127.0.0.1:{}", self.dns_port)])
            .envs(self.env.iter().copied())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.proc = Some(Killed(child));
        let until = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.mgmt_port)).is_err() {
            assert!(
                Instant::now() < until,
                "pebble did not start: {}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&mut self) {
        self.proc = None;
    }

    fn directory(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.dir_port)
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn orders(&self) -> usize {
        self.logs()
            .lines()
            .filter(|l| l.contains("Added order"))
            .count()
    }

    /// The root that signs the certificates this run of pebble issues.
    async fn root(&self) -> String {
        install_crypto();
        let ca = std::fs::read(self.dir.join("pebble-ca.pem")).unwrap();
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
            .build()
            .unwrap();
        client
            .get(format!("https://127.0.0.1:{}/roots/0", self.mgmt_port))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

/// A gateway with `[server.acme]` (no certificate files) and one GitHub receiver.
struct AcmeGateway {
    proc: Option<Killed>,
    port: u16,
    admin: u16,
    setup: Setup,
    log: PathBuf,
    /// Its own API, unless it shares one with other replicas.
    _api: Option<StandIn>,
}

fn receiver(s: &Setup, extra: &str) -> String {
    format!(
        "name = \"a\"\nnamespace = \"flux-system\"\ntype = \"github\"\nsecret_file = \"{}\"\nresources = [{{ kind = \"GitRepository\", name = \"app\" }}]\n{extra}\n",
        s.secret("a", "ka").display()
    )
}

impl AcmeGateway {
    fn new(setup: Setup, port: u16, pebble: &Pebble, http_listen: Option<u16>) -> Self {
        Self::with_receiver(setup, port, pebble, http_listen, "")
    }

    /// With `acme`, more lines of `[server.acme]`.
    fn with_acme(setup: Setup, port: u16, pebble: &Pebble, acme: &str) -> Self {
        Self::build(setup, port, pebble, None, "", acme)
    }

    /// A replica keeping its certificate in `api`'s cluster, as `identity`, polling every
    /// second. Returns once it serves (with a placeholder until the certificate is stored).
    fn replica(port: u16, pebble: &Pebble, api: &StandIn, identity: &str) -> Self {
        let setup = Setup::new();
        api.write_kubeconfig(&setup.path("kubeconfig"), SA_TOKEN)
            .unwrap();
        let acme = format!(
            "storage = \"kubernetes\"\nidentity = \"{identity}\"\npoll_interval = \"1s\"\n"
        );
        Self::configure(setup, port, pebble, None, "", &acme, None)
    }

    /// With `extra` lines in the receiver's table.
    fn with_receiver(
        setup: Setup,
        port: u16,
        pebble: &Pebble,
        http_listen: Option<u16>,
        extra: &str,
    ) -> Self {
        Self::build(setup, port, pebble, http_listen, extra, "")
    }

    fn build(
        setup: Setup,
        port: u16,
        pebble: &Pebble,
        http_listen: Option<u16>,
        extra: &str,
        acme: &str,
    ) -> Self {
        let api = StandIn::start(api_config()).unwrap();
        api.write_kubeconfig(&setup.path("kubeconfig"), SA_TOKEN)
            .unwrap();
        Self::configure(setup, port, pebble, http_listen, extra, acme, Some(api))
    }

    /// Writes the configuration (the kubeconfig is written already) and starts.
    fn configure(
        setup: Setup,
        port: u16,
        pebble: &Pebble,
        http_listen: Option<u16>,
        extra: &str,
        acme: &str,
        api: Option<StandIn>,
    ) -> Self {
        let admin = free_port();
        let d = setup.dir.path().display();
        let http = http_listen.map_or(String::new(), |p| {
            format!("http_listen = \"127.0.0.1:{p}\"\n")
        });
        let storage = if acme.contains("storage =") {
            String::new()
        } else {
            format!("storage = \"{d}/acme\"\n")
        };
        let ca = pebble.dir.join("pebble-ca.pem");
        let config = format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin}\"\n# The renewal test keeps a connection idle across a renewal.\nhead_timeout = \"60s\"\n\n\
             [server.acme]\ndomains = [\"{NAME}\"]\nemail = \"ops@example.org\"\n\
             directory = \"{}\"\nca_roots = [\"{}\"]\n{storage}{http}{acme}\n\
             [kubernetes]\nkubeconfig = \"{d}/kubeconfig\"\n\n[[receivers]]\n{}\n",
            pebble.directory(),
            ca.display(),
            receiver(&setup, extra)
        );
        std::fs::write(setup.path("fluxgate.toml"), config).unwrap();
        let mut gw = AcmeGateway {
            proc: None,
            port,
            admin,
            log: setup.path("gateway.log"),
            setup,
            _api: api,
        };
        gw.start();
        gw
    }

    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(self.setup.path("fluxgate.toml"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.proc = Some(Killed(child));
        let until = Instant::now() + Duration::from_secs(20);
        while http_get(self.admin, "/healthz").is_none_or(|(s, _)| s != 200) {
            assert!(
                Instant::now() < until,
                "fluxgate did not start: {}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&mut self) {
        self.proc = None;
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn orders(&self, result: &str) -> f64 {
        scrape_metrics(self.admin).value("fluxgate_acme_orders_total", &[("result", result)])
    }

    /// Waits until `n` orders have succeeded in this process.
    fn wait_orders(&self, result: &str, n: f64, limit: Duration) {
        let until = Instant::now() + limit;
        while self.orders(result) < n {
            assert!(
                Instant::now() < until,
                "no {n} {result} order(s) in {limit:?}: {}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A client that trusts only pebble's root and reaches NAME at the gateway.
    fn client(&self, root: &str) -> reqwest::Client {
        install_crypto();
        reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(root.as_bytes()).unwrap())
            .resolve(NAME, format!("127.0.0.1:{}", self.port).parse().unwrap())
            .build()
            .unwrap()
    }

    async fn deliver(&self, root: &str) -> (u16, String) {
        let body = br#"{"ref":"refs/heads/main"}"#.to_vec();
        let r = self
            .client(root)
            .post(format!(
                "https://{NAME}:{}{}",
                self.port,
                hook("ka", "a", "flux-system")
            ))
            .header("X-GitHub-Event", "push")
            .header("X-Hub-Signature-256", sig("sha256", "ka", &body))
            .header("Content-Type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// A TLS connection to NAME that trusts only `root`.
    async fn connect(&self, root: &str) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        install_crypto();
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile::certs(&mut root.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let mut cfg = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .unwrap();
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
            .connect(NAME.try_into().unwrap(), tcp)
            .await
            .unwrap()
    }

    /// `openssl s_client`'s verdict on the served chain, against `root`.
    fn openssl_verifies(&self, root: &str) -> bool {
        let root_file = self.setup.path("pebble-root.pem");
        std::fs::write(&root_file, root).unwrap();
        let out = Command::new("openssl")
            .args(["s_client", "-connect", &format!("127.0.0.1:{}", self.port)])
            .args(["-servername", NAME, "-verify_hostname", NAME, "-CAfile"])
            .arg(&root_file)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).contains("Verify return code: 0 (ok)")
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_alpn_01_issues_a_certificate_that_serves_deliveries_and_survives_a_restart() {
    if !installed() {
        return;
    }
    let setup = Setup::new();
    let port = free_port();
    // The default 5% of good nonces rejected: the client must retry badNonce.
    let pebble = Pebble::start(setup.dir.path(), port, free_port(), 3600, true);
    let mut gw = AcmeGateway::new(setup, port, &pebble, None);
    gw.wait_orders("ok", 1.0, Duration::from_secs(30));
    let root = pebble.root().await;
    let (status, body) = gw.deliver(&root).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        gw.openssl_verifies(&root),
        "openssl verifies the served chain"
    );
    assert!(
        gw.logs().contains("next_renewal"),
        "the next renewal is logged"
    );
    let mode = std::fs::metadata(gw.setup.path("acme/certificate.pem"))
        .unwrap()
        .permissions();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(mode.mode() & 0o777, 0o600);
    assert_eq!(pebble.orders(), 1);

    // Restarted: the stored certificate is served at once, and no order is placed.
    gw.stop();
    gw.start();
    let (status, body) = gw.deliver(&root).await;
    assert_eq!(status, 200, "{body}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(gw.orders("ok") + gw.orders("failed"), 0.0);
    assert_eq!(pebble.orders(), 1, "no new order after the restart");
}

#[tokio::test(flavor = "multi_thread")]
async fn http_01_on_the_plain_listener_issues_and_redirects_the_rest() {
    if !installed() {
        return;
    }
    let setup = Setup::new();
    let (port, http) = (free_port(), free_port());
    // pebble's TLS-ALPN-01 port is one nobody listens on: only HTTP-01 can succeed.
    let pebble = Pebble::start(setup.dir.path(), free_port(), http, 3600, false);
    let gw = AcmeGateway::new(setup, port, &pebble, Some(http));
    gw.wait_orders("ok", 1.0, Duration::from_secs(30));
    let root = pebble.root().await;
    let (status, body) = gw.deliver(&root).await;
    assert_eq!(status, 200, "{body}");

    // Anything else on the plain listener: to HTTPS for our names, 404 for others.
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", http))
        .await
        .unwrap();
    tcp.write_all(format!("GET /x?y=1 HTTP/1.1\r\nHost: {NAME}:{http}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    tcp.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 308"), "{out}");
    assert!(
        out.contains(&format!("location: https://{NAME}:{port}/x?y=1")),
        "{out}"
    );
    let (status, _) = http_get(http, "/.well-known/acme-challenge/unknown").unwrap();
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn renewal_swaps_the_certificate_under_an_open_connection_and_outlasts_the_ca_going_down() {
    if !installed() {
        return;
    }
    let setup = Setup::new();
    let port = free_port();
    // 12 s certificates: renewed after about 8 s.
    let mut pebble = Pebble::start(setup.dir.path(), port, free_port(), 12, false);
    let gw = AcmeGateway::new(setup, port, &pebble, None);
    gw.wait_orders("ok", 1.0, Duration::from_secs(30));
    let root = pebble.root().await;

    // One keep-alive connection, opened on the first certificate.
    let mut conn = gw.connect(&root).await;
    let first_serial = serial(&conn);
    assert!(ask(&mut conn).await.starts_with("HTTP/1.1 404"));
    let first = std::fs::read(gw.setup.path("acme/certificate.pem")).unwrap();
    gw.wait_orders("ok", 2.0, Duration::from_secs(20));
    assert_ne!(
        first,
        std::fs::read(gw.setup.path("acme/certificate.pem")).unwrap()
    );
    // The same connection still answers; a new one gets the new certificate.
    assert!(ask(&mut conn).await.starts_with("HTTP/1.1 404"));
    assert_ne!(serial(&gw.connect(&root).await), first_serial);
    let client = gw.client(&root);
    let url = format!("https://{NAME}:{port}/nothing-here");

    // The CA down at the next renewal: the current certificate stays, orders are retried.
    pebble.stop();
    gw.wait_orders("failed", 2.0, Duration::from_secs(30));
    assert!(gw.logs().contains("keeping the current certificate"));
    assert_eq!(client.get(&url).send().await.unwrap().status(), 404);
    // Back (with a new root and no memory of the account): renewed on a retry.
    pebble.resume();
    gw.wait_orders("ok", 3.0, Duration::from_secs(30));
    let root = pebble.root().await;
    assert!(
        gw.openssl_verifies(&root),
        "the renewed chain is pebble's new one"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn check_reaches_the_directory_and_refuses_certificate_files_beside_acme() {
    if !installed() {
        return;
    }
    let setup = Setup::new();
    let port = free_port();
    let pebble = Pebble::start(setup.dir.path(), port, free_port(), 3600, false);
    let gw = AcmeGateway::new(setup, port, &pebble, None);
    gw.wait_orders("ok", 1.0, Duration::from_secs(30));
    let config = gw.setup.path("fluxgate.toml");
    let run = run_check(&config, &[], &[]);
    assert_eq!(run.code, Some(0), "{}", run.output());
    for line in [
        "ok: server.acme: certificates for gw.fluxgate.test",
        "ok: server.acme.directory https://127.0.0.1:",
        "ok: server.acme: stored certificate for gw.fluxgate.test",
    ] {
        assert_eq!(
            run.lines_starting(line).len(),
            1,
            "{line}: {}",
            run.output()
        );
    }

    let d = gw.setup.dir.path().display();
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "[server]\n",
        &format!("[server]\ntls_cert = \"{d}/tls.crt\"\ntls_key = \"{d}/tls.key\"\n"),
    );
    std::fs::write(&config, text).unwrap();
    let run = run_check(&config, &["--offline"], &[]);
    assert_ne!(run.code, Some(0));
    for key in ["server.tls_cert", "server.tls_key"] {
        assert_eq!(
            run.lines_starting(&format!(
                "problem: {key}: cannot be used with [server.acme]"
            ))
            .len(),
            1,
            "{}",
            run.output()
        );
    }
}

/// A TLS client for NAME that trusts anything (the placeholder is self-signed), offering `alpn`.
async fn handshake_any(
    port: u16,
    alpn: &[u8],
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    #[derive(Debug)]
    struct AnyCert;
    impl rustls::client::danger::ServerCertVerifier for AnyCert {
        fn verify_server_cert(
            &self,
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &[rustls::pki_types::CertificateDer<'_>],
            _: &rustls::pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            rustls::crypto::ring::default_provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    }
    install_crypto();
    let mut cfg = rustls::ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(AnyCert))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect(NAME.try_into().unwrap(), tcp)
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn until_a_certificate_is_issued_deliveries_get_503_over_a_placeholder() {
    if !installed() {
        return;
    }
    let setup = Setup::new();
    let port = free_port();
    // pebble refuses every order for NAME: no certificate ever comes.
    let pebble = Pebble::start_with(
        setup.dir.path(),
        port,
        free_port(),
        3600,
        false,
        &format!(r#""domainBlocklist": ["{NAME}"], "externalAccountBindingRequired": false, "#),
    );
    let gw = AcmeGateway::new(setup, port, &pebble, None);
    gw.wait_orders("failed", 2.0, Duration::from_secs(20));
    let logs = gw.logs();
    assert!(
        logs.contains("rejectedIdentifier"),
        "the CA's reason is logged: {logs}"
    );
    assert!(logs.contains("retry_in"), "{logs}");

    // A request gets a TLS session on the placeholder, then a clear 503.
    let mut tls = handshake_any(port, b"http/1.1").await.unwrap();
    let (_, conn) = tls.get_ref();
    let leaf = conn.peer_certificates().unwrap()[0].clone();
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).unwrap();
    assert!(
        cert.subject().to_string().contains("not yet issued"),
        "{}",
        cert.subject()
    );
    tls.write_all(
        format!(
            "POST {} HTTP/1.1\r\nHost: {NAME}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            hook("ka", "a", "flux-system")
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    let _ = tls.read_to_string(&mut out).await;
    assert!(out.starts_with("HTTP/1.1 503"), "{out}");
    assert!(out.contains("certificate not yet issued"), "{out}");

    // With no order in flight, an acme-tls/1 handshake gets no certificate at all.
    assert!(handshake_any(port, b"acme-tls/1").await.is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cas_validation_passes_an_allow_list_that_does_not_name_it_only_while_ordering() {
    if !installed() {
        return;
    }
    let setup = Setup::new();
    let port = free_port();
    let pebble = Pebble::start(setup.dir.path(), port, free_port(), 3600, false);
    // pebble validates from 127.0.0.1, which the only receiver does not allow.
    let gw = AcmeGateway::with_receiver(setup, port, &pebble, None, "allow_from = [\"192.0.2.1\"]");
    gw.wait_orders("ok", 1.0, Duration::from_secs(30));
    // No order in flight: 127.0.0.1 is closed before TLS again.
    let root = pebble.root().await;
    let refused = gw
        .client(&root)
        .get(format!("https://{NAME}:{port}/"))
        .send()
        .await;
    assert!(refused.is_err(), "{refused:?}");
    let m = scrape_metrics(gw.admin);
    assert!(
        m.value(
            "fluxgate_connections_refused_total",
            &[("reason", "not_allowed")]
        ) >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ca_that_requires_external_account_binding_issues_with_the_key_and_check_says_so_without()
{
    if !installed() {
        return;
    }
    let setup = Setup::new();
    let port = free_port();
    let key = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W";
    let pebble = Pebble::start_with(
        setup.dir.path(),
        port,
        free_port(),
        3600,
        false,
        &format!(
            r#""externalAccountBindingRequired": true, "externalAccountMACKeys": {{"kid-1": "{key}"}}, "#
        ),
    );
    let key_file = setup.secret("eab", key);
    let gw = AcmeGateway::with_acme(
        setup,
        port,
        &pebble,
        &format!(
            "eab_kid = \"kid-1\"\neab_hmac_key_file = \"{}\"\n",
            key_file.display()
        ),
    );
    gw.wait_orders("ok", 1.0, Duration::from_secs(30));
    assert!(!gw.logs().contains(key), "the MAC key is never logged");

    // The same CA without the binding: check names the missing keys.
    let config = gw.setup.path("fluxgate.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let text: String = text
        .lines()
        .filter(|l| !l.starts_with("eab_"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&config, text).unwrap();
    let run = run_check(&config, &[], &[]);
    assert_ne!(run.code, Some(0), "{}", run.output());
    assert_eq!(
        run.lines_starting("problem: server.acme.eab_kid: ").len(),
        1,
        "{}",
        run.output()
    );
}

/// The serial number of the certificate the server presented on `conn`.
fn serial(conn: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> Vec<u8> {
    let leaf = conn.get_ref().1.peer_certificates().unwrap()[0].clone();
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).unwrap();
    cert.tbs_certificate.raw_serial().to_vec()
}

/// One keep-alive request on `conn`; its answer's head and body.
async fn ask(conn: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> String {
    conn.write_all(format!("GET /nothing-here HTTP/1.1\r\nHost: {NAME}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
            .await
            .expect("an answer on the open connection")
            .unwrap();
        assert!(n > 0, "the connection was closed");
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if body.len() >= len {
                return text;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Replicas sharing storage in the cluster: `fluxgate serve` processes against the stand-in,
// whose service account has exactly deploy/acme's Role and whose objects are deploy/acme's.

const NS: &str = "flux-system";
const LEASE_API: &str = "coordination.k8s.io/v1";

/// deploy/acme/objects.yaml, as `kubectl apply -k` would create them in flux-system.
fn deploy_acme_objects() -> Vec<serde_json::Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/acme/objects.yaml");
    let docs: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(&std::fs::read_to_string(path).unwrap()).unwrap();
    docs.into_iter()
        .map(|mut d| {
            d["metadata"]["namespace"] = NS.into();
            d
        })
        .collect()
}

/// The API of a cluster with deploy/ and its acme component applied, less the objects named
/// in `missing` (kind/name).
fn acme_cluster(missing: &[&str]) -> StandIn {
    let mut cfg = api_config();
    for rule in deploy_role_rules("acme/role.yaml", NS) {
        cfg = cfg.allow(SA_USER, rule);
    }
    for o in deploy_acme_objects() {
        let id = format!(
            "{}/{}",
            o["kind"].as_str().unwrap(),
            o["metadata"]["name"].as_str().unwrap()
        );
        if !missing.contains(&id.as_str()) {
            cfg = cfg.object(o);
        }
    }
    StandIn::start(cfg).unwrap()
}

fn lease(api: &StandIn) -> serde_json::Value {
    api.object(LEASE_API, "Lease", NS, "fluxgate-acme").unwrap()
}

fn lease_holder(api: &StandIn) -> String {
    lease(api)["spec"]["holderIdentity"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Sets the Lease's holder behind the API's back (the test holding it, or releasing it).
fn hold_lease(api: &StandIn, holder: &str) {
    let mut l = lease(api);
    l["spec"]["holderIdentity"] = holder.into();
    l["spec"]["leaseDurationSeconds"] = 3600.into();
    l["spec"]["renewTime"] = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
        .into();
    api.put_object(l);
}

/// Connections pebble's validator made through the forwarder: the Lease's holder at accept
/// time, and the port they were sent to.
type Forwarded = std::sync::Arc<std::sync::Mutex<Vec<(String, u16)>>>;

/// Stands where pebble validates (its tlsPort): each connection goes to the replica that
/// does NOT hold the Lease at that moment, so a validation that succeeds proves the other
/// replica answered the order's challenges.
async fn forwarder(
    listener: tokio::net::TcpListener,
    api: std::sync::Arc<StandIn>,
    replicas: Vec<(&'static str, u16)>,
    seen: Forwarded,
) {
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            return;
        };
        let holder = lease_holder(&api);
        let port = replicas
            .iter()
            .find(|(id, _)| *id != holder)
            .map(|(_, p)| *p)
            .unwrap();
        seen.lock().unwrap().push((holder, port));
        tokio::spawn(async move {
            if let Ok(mut out) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
            }
        });
    }
}

/// The serial of the certificate `port` serves, verified against `root` (a real handshake).
async fn served_serial(gw: &AcmeGateway, root: &str) -> Vec<u8> {
    serial(&gw.connect(root).await)
}

/// Waits until `gw` serves a certificate that `root` verifies (it polls the Secret).
async fn wait_issued(gw: &AcmeGateway, root: &str, limit: Duration) {
    let until = Instant::now() + limit;
    loop {
        let (status, body) = gw.deliver_checked(root).await;
        if status == Some(200) {
            return;
        }
        assert!(
            Instant::now() < until,
            "no certificate served in {limit:?} ({status:?} {body}): {}",
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

impl AcmeGateway {
    /// A delivery that may fail at the handshake (the placeholder is not trusted).
    async fn deliver_checked(&self, root: &str) -> (Option<u16>, String) {
        let body = br#"{"ref":"refs/heads/main"}"#.to_vec();
        let r = self
            .client(root)
            .post(format!(
                "https://{NAME}:{}{}",
                self.port,
                hook("ka", "a", "flux-system")
            ))
            .header("X-GitHub-Event", "push")
            .header("X-Hub-Signature-256", sig("sha256", "ka", &body))
            .header("Content-Type", "application/json")
            .body(body)
            .send()
            .await;
        match r {
            Ok(r) => (
                Some(r.status().as_u16()),
                r.text().await.unwrap_or_default(),
            ),
            Err(e) => (None, e.to_string()),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_order_once_the_other_answers_the_validation_and_all_serve_the_certificate() {
    if !installed() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let api = std::sync::Arc::new(acme_cluster(&[]));
    let (a_port, b_port) = (free_port(), free_port());
    let front = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let front_port = front.local_addr().unwrap().port();
    let seen = Forwarded::default();
    tokio::spawn(forwarder(
        front,
        api.clone(),
        vec![("replica-a", a_port), ("replica-b", b_port)],
        seen.clone(),
    ));
    let pebble = Pebble::start(dir.path(), front_port, free_port(), 3600, false);

    // Held by the test until both replicas are up and have said so on the Lease, so that
    // whichever orders waits for the other: with one started late, the CA could reach it
    // before it knew of any challenge.
    hold_lease(&api, "the-test");
    let a = AcmeGateway::replica(a_port, &pebble, &api, "replica-a");
    let b = AcmeGateway::replica(b_port, &pebble, &api, "replica-b");
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let r = &lease(&api)["metadata"]["annotations"]["acme.fluxgate.dev/replicas"];
        let r: serde_json::Value = serde_json::from_str(r.as_str().unwrap_or("{}")).unwrap();
        if r.get("replica-a").is_some() && r.get("replica-b").is_some() {
            break;
        }
        assert!(
            Instant::now() < until,
            "the replicas did not sign the Lease: {}\n{}",
            a.logs(),
            b.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    hold_lease(&api, "");

    // Exactly one order between them, by the replica that held the Lease.
    let until = Instant::now() + Duration::from_secs(40);
    while a.orders("ok") + b.orders("ok") < 1.0 {
        assert!(
            Instant::now() < until,
            "no order: {}\n{}",
            a.logs(),
            b.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (orderer, ordering, other, other_port) = if a.orders("ok") == 1.0 {
        ("replica-a", &a, &b, b_port)
    } else {
        ("replica-b", &b, &a, a_port)
    };
    let root = pebble.root().await;
    wait_issued(&a, &root, Duration::from_secs(10)).await;
    wait_issued(&b, &root, Duration::from_secs(10)).await;
    assert_eq!(
        served_serial(&a, &root).await,
        served_serial(&b, &root).await
    );
    assert_eq!(pebble.orders(), 1, "{}", pebble.logs());
    assert_eq!(a.orders("ok") + b.orders("ok"), 1.0);
    assert_eq!(a.orders("failed") + b.orders("failed"), 0.0);

    // The CA's validation (TLS-ALPN-01: three connections per name) all went to the replica
    // that did not order, while the orderer held the Lease.
    let forwarded = seen.lock().unwrap().clone();
    assert!(forwarded.len() >= 3, "{forwarded:?}");
    for (holder, port) in &forwarded {
        assert_eq!(holder, orderer, "{forwarded:?}");
        assert_eq!(*port, other_port, "{forwarded:?}");
    }
    assert!(
        other
            .logs()
            .contains("answering the challenges of another replica's order"),
        "{}",
        other.logs()
    );
    // The orderer told the CA to validate only once the other had acknowledged.
    assert!(
        ordering
            .logs()
            .contains("every replica answers the challenges"),
        "{}",
        ordering.logs()
    );

    // Stored in deploy/acme's TLS Secret, and the Lease released with nothing left on it.
    let secret = api.object("v1", "Secret", NS, "fluxgate-tls").unwrap();
    assert_eq!(secret["type"], "kubernetes.io/tls");
    assert_ne!(secret["data"]["tls.crt"], "");
    assert_ne!(secret["data"]["tls.key"], "");
    let account = api
        .object("v1", "Secret", NS, "fluxgate-acme-account")
        .unwrap();
    assert_eq!(account["data"].as_object().unwrap().len(), 1, "{account}");
    let l = lease(&api);
    assert_eq!(l["spec"]["holderIdentity"], "", "{l}");
    assert!(l["metadata"]["annotations"]["acme.fluxgate.dev/challenges"].is_null());
    for gw in [&a, &b] {
        assert!(
            !gw.logs().contains("BEGIN PRIVATE KEY"),
            "no key in the logs"
        );
    }

    // A replica that starts later serves the stored certificate and orders nothing.
    let c = AcmeGateway::replica(free_port(), &pebble, &api, "replica-c");
    wait_issued(&c, &root, Duration::from_secs(10)).await;
    assert_eq!(
        served_serial(&c, &root).await,
        served_serial(&a, &root).await
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(c.orders("ok") + c.orders("failed"), 0.0);
    assert_eq!(pebble.orders(), 1);

    // check: the objects are there and the Role allows what the replicas do.
    let run = run_check(&c.setup.path("fluxgate.toml"), &[], &[]);
    assert_eq!(run.code, Some(0), "{}", run.output());
    for line in [
        "ok: server.acme.storage: in cluster default, Secrets flux-system/fluxgate-tls and flux-system/fluxgate-acme-account, Lease flux-system/fluxgate-acme; this replica is \"replica-c\"",
        "ok: server.acme.storage: may get and update the two Secrets and the Lease in flux-system",
        "ok: server.acme: stored certificate for gw.fluxgate.test",
    ] {
        assert_eq!(run.lines_starting(line).len(), 1, "{line}: {}", run.output());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_secret_or_lease_is_named_with_how_to_create_it() {
    if !installed() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let api = acme_cluster(&["Secret/fluxgate-tls"]);
    let port = free_port();
    let pebble = Pebble::start(dir.path(), port, free_port(), 3600, false);
    let gw = AcmeGateway::replica(port, &pebble, &api, "replica-a");
    let said = "Secret flux-system/fluxgate-tls does not exist: fluxgate only gets and updates it; create it (empty) with the deploy/acme component";
    let until = Instant::now() + Duration::from_secs(10);
    while !gw.logs().contains(said) {
        assert!(Instant::now() < until, "{}", gw.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(pebble.orders(), 0, "nothing is ordered without storage");

    api.delete_object(LEASE_API, "Lease", NS, "fluxgate-acme");
    let run = run_check(&gw.setup.path("fluxgate.toml"), &[], &[]);
    assert_ne!(run.code, Some(0));
    for line in [
        "problem: server.acme.storage: Secret flux-system/fluxgate-tls does not exist",
        "problem: server.acme.storage: Lease flux-system/fluxgate-acme does not exist",
    ] {
        assert_eq!(
            run.lines_starting(line).len(),
            1,
            "{line}: {}",
            run.output()
        );
    }
    // The Role itself is fine: get and update are granted on the names, missing or not.
    assert_eq!(
        run.lines_starting("ok: server.acme.storage: may get and update")
            .len(),
        1,
        "{}",
        run.output()
    );
}
