//! The command line: `serve`, `check`, `hook-path`, `sign`, `dev`, `import`, and `deliveries`
//! and `redeliver` (clients of the admin listener).

use crate::config::Settings;
use crate::edge::{self, RunOptions};
use crate::hook_path::flux_hook_path;
use crate::relay::kube::load_config;
use crate::secret::Secret;
use crate::verify::{signature, Algorithm, ReceiverType};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::io::Read;
use std::path::{Path, PathBuf};

#[derive(Parser, Debug)]
#[command(
    name = "fluxgate",
    version,
    about = "The public edge for Flux webhook receivers"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "FLUXGATE_LOG_FORMAT"
    )]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the gateway.
    Serve {
        #[arg(long, short = 'c')]
        config: PathBuf,
        /// Take the listening sockets over from the running fluxgate (send it SIGQUIT).
        #[arg(long, short = 'u')]
        upgrade: bool,
    },
    /// Validate the configuration, secrets and certificate, and reach the Kubernetes API.
    Check {
        #[arg(long, short = 'c')]
        config: PathBuf,
        /// Do not contact the Kubernetes API.
        #[arg(long)]
        offline: bool,
    },
    /// Print the Flux-compatible hook path of a receiver.
    HookPath {
        #[command(flatten)]
        token: SecretArgs,
        #[command(flatten)]
        trim: TrimArg,
        #[arg(long)]
        name: String,
        #[arg(long)]
        namespace: String,
    },
    /// Print the header a provider would send for the body on standard input.
    Sign {
        #[arg(long = "type")]
        kind: String,
        #[command(flatten)]
        secret: SecretArgs,
        #[command(flatten)]
        trim: TrimArg,
        /// sha1, sha256 or sha512 (HMAC types only).
        #[arg(long, default_value = "sha256")]
        algorithm: String,
    },
    /// GET an http:// URL on the admin listener and exit 0 on 200: a health check for images
    /// that have no curl.
    Probe {
        /// e.g. http://127.0.0.1:9102/readyz
        url: String,
    },
    /// Everything on localhost with no cluster: a self-signed certificate, an in-memory
    /// stand-in of the Kubernetes API holding a few Flux objects, and a ready-to-paste curl.
    Dev(crate::dev::DevOptions),
    /// Write the [[receivers]] table and the token file for a Flux Receiver read from a
    /// cluster (an admin's kubeconfig), byte for byte, so its path stays the one Flux shows.
    /// The token is never printed.
    Import(crate::import::ImportOptions),
    /// The delivery history of a running fluxgate, from its admin listener: a table of the
    /// recent deliveries, or one in full.
    Deliveries(DeliveriesArgs),
    /// Run the relay again for a verified delivery of the history (new requestedAt).
    Redeliver {
        /// The record's id, or the provider's delivery id.
        id: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
struct SecretArgs {
    /// File holding the token (trailing line breaks are ignored unless --trim-secret false).
    #[arg(long, alias = "secret-file")]
    token_file: Option<PathBuf>,
    /// Environment variable holding the token.
    #[arg(long, alias = "secret-env")]
    token_env: Option<String>,
}

/// Beside the token's source, not one of them (so not in their group).
#[derive(Args, Debug)]
struct TrimArg {
    /// As the receiver key `trim_secret`: `false` keeps the token's bytes exactly, as Flux uses
    /// a Secret's, so a token copied out of a Secret with its line break gives Flux's path.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    trim_secret: bool,
}

impl SecretArgs {
    fn load(&self, trim: &TrimArg) -> Result<Secret, String> {
        let trim = trim.trim_secret;
        match (&self.token_file, &self.token_env) {
            (Some(f), _) => Secret::read_file(f, trim).map_err(|e| format!("--token-file: {e}")),
            (None, Some(v)) => Secret::read_env(v, trim).map_err(|e| format!("--token-env: {e}")),
            (None, None) => Err("give --token-file or --token-env".into()),
        }
        .map(|r| r.secret)
    }
}

pub fn main() -> i32 {
    // One process-wide crypto provider, aws-lc-rs (the only one in the tree; PERFORMANCE.md
    // says why), before anything builds a TLS config: reqwest and kube take the default one.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = Cli::parse();
    // A load test measures the gateway, not the terminal: one line per request is left out.
    let quiet = matches!(&cli.command, Command::Dev(o) if o.bench);
    init_logging(cli.log_format, if quiet { "warn" } else { "info" });
    let result = match cli.command {
        Command::Serve { config, upgrade } => serve(&config, RunOptions { upgrade }),
        Command::Check { config, offline } => crate::check::run(&config, offline),
        Command::HookPath {
            token,
            trim,
            name,
            namespace,
        } => token
            .load(&trim)
            .map(|t| println!("{}", flux_hook_path(t.expose(), &name, &namespace))),
        Command::Sign {
            kind,
            secret,
            trim,
            algorithm,
        } => sign(&kind, &secret, &trim, &algorithm),
        Command::Probe { url } => probe(&url),
        Command::Dev(opts) => crate::dev::run(opts),
        Command::Import(opts) => crate::import::run(&opts),
        Command::Deliveries(args) => deliveries(&args),
        Command::Redeliver { id, admin } => redeliver(&id, &admin),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("fluxgate: {e}");
            1
        }
    }
}

fn init_logging(format: LogFormat, default_level: &str) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // rustls warns on every handshake that carries an IP address as SNI (common among
        // clients): noise an attacker could multiply, so only its errors are shown.
        .unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new(format!("{default_level},rustls=error"))
        });
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match format {
        LogFormat::Text => registry.with(fmt).try_init(),
        LogFormat::Json => registry.with(fmt.json().flatten_event(true)).try_init(),
    };
}

fn one_shot_runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))
}

/// Loads everything `serve` needs, so `serve`, `check` and `dev` fail the same way.
/// The kubeconfigs are those of every cluster, in the fleet's order.
pub fn prepare(config: &Path) -> Result<(Settings, Vec<kube::Config>), String> {
    // Bounded like a reload's read: a secret on a FIFO or a hung mount stops start-up with an
    // error instead of hanging it.
    let settings = edge::live::read_settings(config, &Default::default())?;
    for w in &settings.warnings {
        tracing::warn!("{w}");
    }
    let rt = one_shot_runtime()?;
    let mut kubes = Vec::with_capacity(settings.clusters.len());
    for (i, c) in settings.clusters.iter().enumerate() {
        let key = match (i, c.name.as_str()) {
            (0, crate::fleet::DEFAULT) => "kubernetes.kubeconfig".to_string(),
            _ => format!("clusters[{}].kubeconfig", cluster_index(&settings, i)),
        };
        kubes.push(
            rt.block_on(load_config(&c.kubeconfig, c.context.as_deref(), c.timeout))
                .map_err(|e| format!("{key}: {}: {e}", c.kubeconfig.display()))?,
        );
    }
    Ok((settings, kubes))
}

/// The position under `[[clusters]]` of the fleet's cluster `i`.
pub fn cluster_index(settings: &Settings, i: usize) -> usize {
    let has_default = settings
        .clusters
        .first()
        .is_some_and(|c| c.name == crate::fleet::DEFAULT);
    i - usize::from(has_default)
}

pub fn serve(config: &Path, opts: RunOptions) -> Result<(), String> {
    let (settings, kube) = prepare(config)?;
    if opts.upgrade {
        edge::upgrade::check_waiting_folder(&settings.server.upgrade_sock)?;
    } else {
        edge::check_bind(&settings)?;
    }
    edge::run(config, settings, kube, opts)
}

fn sign(kind: &str, secret: &SecretArgs, trim: &TrimArg, algorithm: &str) -> Result<(), String> {
    let kind: ReceiverType = kind.parse().map_err(|e| format!("--type: {e}"))?;
    let algorithm: Algorithm = algorithm.parse().map_err(|e| format!("--algorithm: {e}"))?;
    let secret = secret.load(trim)?;
    let mut body = Vec::new();
    std::io::stdin()
        .read_to_end(&mut body)
        .map_err(|e| format!("cannot read the body from standard input: {e}"))?;
    let mac = || {
        format!(
            "{}={}",
            algorithm.as_str(),
            signature::sign(algorithm, secret.expose(), &body)
        )
    };
    let header =
        match kind {
            ReceiverType::Github if algorithm == Algorithm::Sha256 => {
                format!("X-Hub-Signature-256: {}", mac())
            }
            ReceiverType::Github | ReceiverType::Bitbucket => format!("X-Hub-Signature: {}", mac()),
            ReceiverType::GenericHmac => format!("X-Signature: {}", mac()),
            ReceiverType::Nexus if algorithm == Algorithm::Sha1 => format!(
                "X-Nexus-Webhook-Signature: {}",
                signature::sign(algorithm, secret.expose(), &body)
            ),
            ReceiverType::Nexus => {
                return Err("--type nexus: Nexus signs with HMAC-SHA1 only; pass --algorithm sha1".into())
            }
            ReceiverType::Gitlab => format!(
                "X-Gitlab-Token: {}",
                String::from_utf8_lossy(secret.expose())
            ),
            ReceiverType::Harbor => format!(
                "Authorization: {}",
                String::from_utf8_lossy(secret.expose())
            ),
            ReceiverType::Generic
            | ReceiverType::Dockerhub
            | ReceiverType::Quay
            | ReceiverType::Acr
            | ReceiverType::Cdevents => return Err(format!(
                "--type {kind}: this type has no signature; its path is the credential"
            )),
            ReceiverType::Gcr | ReceiverType::GenericOidc => return Err(format!(
                "--type {kind}: this type authenticates with a token signed by its issuer, which fluxgate cannot make"
            )),
        };
    println!("{header}");
    Ok(())
}

/// A plain HTTP/1.1 GET with a short deadline; the admin listener speaks nothing fancier.
fn probe(url: &str) -> Result<(), String> {
    use std::io::{Read, Write};
    use std::net::ToSocketAddrs;
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!(
            "{url:?}: only http:// URLs (the admin listener) can be probed"
        ));
    }
    let host = uri.host().ok_or_else(|| format!("{url:?} has no host"))?;
    let port = uri.port_u16().unwrap_or(80);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let deadline = std::time::Duration::from_secs(3);
    let addr = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("{host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host}: no address"))?;
    let mut s = std::net::TcpStream::connect_timeout(&addr, deadline)
        .map_err(|e| format!("{addr}: {e}"))?;
    s.set_read_timeout(Some(deadline))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    s.take(64 * 1024)
        .read_to_string(&mut answer)
        .map_err(|e| format!("{addr}: {e}"))?;
    let status = answer.split_whitespace().nth(1).unwrap_or("");
    let body = answer.split_once("\r\n\r\n").map_or("", |b| b.1).trim();
    if status == "200" {
        println!("{body}");
        Ok(())
    } else {
        Err(format!("{url}: {status} {body}"))
    }
}

// `fluxgate deliveries` and `fluxgate redeliver`: clients of the admin listener's API.

#[derive(Args, Debug)]
struct AdminArgs {
    /// The admin listener.
    #[arg(
        long = "admin",
        default_value = "http://127.0.0.1:9102",
        env = "FLUXGATE_ADMIN"
    )]
    url: String,
    /// The file holding admin.token_file's token, when the admin listener requires one.
    #[arg(long)]
    token_file: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct DeliveriesArgs {
    /// Show this delivery in full: the record's id, or the provider's delivery id.
    id: Option<String>,
    /// Keep printing deliveries as they happen.
    #[arg(long, short = 'f')]
    follow: bool,
    /// Only this receiver (namespace/name).
    #[arg(long)]
    receiver: Option<String>,
    /// Only this outcome (relayed, queued, bad_signature, …).
    #[arg(long)]
    outcome: Option<String>,
    /// At most this many (newest first).
    #[arg(long, default_value = "50")]
    limit: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    admin: AdminArgs,
}

impl AdminArgs {
    fn request(
        &self,
        method: reqwest::Method,
        path: &str,
    ) -> Result<reqwest::RequestBuilder, String> {
        let base = self.url.trim_end_matches('/');
        if !base.starts_with("http://") && !base.starts_with("https://") {
            return Err(format!("--admin: {base:?} is not an http:// URL"));
        }
        let mut r = reqwest::Client::new().request(method, format!("{base}{path}"));
        if let Some(f) = &self.token_file {
            let t = Secret::from_file(f).map_err(|e| format!("--token-file: {e}"))?;
            let t = std::str::from_utf8(t.expose())
                .map_err(|_| "--token-file: the token is not UTF-8".to_string())?
                .to_string();
            r = r.bearer_auth(t);
        }
        Ok(r)
    }
}

async fn admin_json(r: reqwest::RequestBuilder) -> Result<(u16, serde_json::Value), String> {
    let resp = r
        .timeout(std::time::Duration::from_secs(30))
        .send()
        .await
        .map_err(|e| format!("cannot reach the admin listener: {e}"))?;
    let status = resp.status().as_u16();
    let text = resp.text().await.map_err(|e| e.to_string())?;
    match serde_json::from_str(&text) {
        Ok(v) => Ok((status, v)),
        Err(_) => Err(format!("{status}: {}", text.trim())),
    }
}

fn deliveries(a: &DeliveriesArgs) -> Result<(), String> {
    one_shot_runtime()?.block_on(async {
        if let Some(id) = &a.id {
            let path = format!("/deliveries/{}", encode(id));
            let (_, v) = admin_json(a.admin.request(reqwest::Method::GET, &path)?).await?;
            if a.json {
                println!("{v}");
            } else {
                print_full(&v);
            }
            return Ok(());
        }
        let mut query = form_urlencoded::Serializer::new(String::new());
        if let Some(r) = &a.receiver {
            query.append_pair("receiver", r);
        }
        if let Some(o) = &a.outcome {
            query.append_pair("outcome", o);
        }
        query.append_pair("limit", &a.limit.to_string());
        let path = format!("/deliveries?{}", query.finish());
        let (_, v) = admin_json(a.admin.request(reqwest::Method::GET, &path)?).await?;
        let mut list = v.as_array().cloned().unwrap_or_default();
        list.reverse();
        if !a.json {
            println!("{}", table_header());
        }
        for r in &list {
            print_line(r, a.json);
        }
        if a.follow {
            follow(a).await?;
        }
        Ok(())
    })
}

/// Reads the live stream, printing the records that pass the filters.
async fn follow(a: &DeliveriesArgs) -> Result<(), String> {
    use futures::StreamExt;
    let resp = a
        .admin
        .request(reqwest::Method::GET, "/deliveries/stream")?
        .send()
        .await
        .map_err(|e| format!("cannot reach the admin listener: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("the stream answered {}", resp.status()));
    }
    let chunks = futures::stream::unfold(resp, |mut resp| async move {
        match resp.chunk().await {
            Ok(Some(c)) => Some((Ok::<_, reqwest::Error>(c), resp)),
            Ok(None) | Err(_) => None,
        }
    });
    let mut events = std::pin::pin!(sse_stream::SseStream::from_bytes_stream(chunks));
    while let Some(ev) = events.next().await {
        let Ok(ev) = ev else { break };
        if ev.event.as_deref() != Some("delivery") {
            continue;
        }
        let Some(r) = ev
            .data
            .and_then(|d| serde_json::from_str::<serde_json::Value>(&d).ok())
        else {
            continue;
        };
        let is =
            |k: &str, want: &Option<String>| want.as_ref().is_none_or(|w| r[k].as_str() == Some(w));
        if is("receiver", &a.receiver) && is("outcome", &a.outcome) {
            print_line(&r, a.json);
        }
    }
    Err("the admin listener closed the stream".into())
}

fn redeliver(id: &str, admin: &AdminArgs) -> Result<(), String> {
    one_shot_runtime()?.block_on(async {
        let path = format!("/deliveries/{}/redeliver", encode(id));
        let (status, v) = admin_json(admin.request(reqwest::Method::POST, &path)?).await?;
        print_full(&v);
        if status >= 300 {
            return Err(format!("redelivery answered {status}"));
        }
        Ok(())
    })
}

fn encode(id: &str) -> String {
    form_urlencoded::byte_serialize(id.as_bytes()).collect()
}

fn table_header() -> String {
    format!(
        "{:<30} {:<28} {:<6} {:<16} {:<38} {}",
        "TIME", "RECEIVER", "STATUS", "OUTCOME", "DELIVERY", "TARGETS"
    )
}

fn str_of<'a>(v: &'a serde_json::Value, k: &str) -> &'a str {
    v[k].as_str().unwrap_or("-")
}

fn targets_of(v: &serde_json::Value) -> String {
    v["targets"]
        .as_array()
        .map(|ts| {
            ts.iter()
                .map(|t| {
                    format!(
                        "{}/{}:{}",
                        str_of(t, "kind"),
                        str_of(t, "name"),
                        str_of(t, "state")
                    )
                })
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

fn print_line(v: &serde_json::Value, json: bool) {
    if json {
        println!("{v}");
        return;
    }
    println!(
        "{:<30} {:<28} {:<6} {:<16} {:<38} {}",
        str_of(v, "time"),
        str_of(v, "receiver"),
        v["status"].as_u64().unwrap_or(0),
        str_of(v, "outcome"),
        str_of(v, "delivery"),
        targets_of(v)
    );
}

/// One record, every field on a line of its own.
fn print_full(v: &serde_json::Value) {
    let Some(obj) = v.as_object() else {
        println!("{v}");
        return;
    };
    for (k, val) in obj {
        if k == "targets" {
            continue;
        }
        match val {
            serde_json::Value::String(s) => println!("{k:<13} {s}"),
            // 202 is the answer given; the relay's result came later (outcome, targets).
            other if k == "status" && other == 202 && v["outcome"] != "queued" => {
                println!("{k:<13} {other} (answered before the relay finished; its result is the outcome)")
            }
            other => println!("{k:<13} {other}"),
        }
    }
    for t in v["targets"].as_array().into_iter().flatten() {
        println!(
            "target        {} {} {}/{}: {}{}",
            str_of(t, "cluster"),
            str_of(t, "kind"),
            str_of(t, "namespace"),
            str_of(t, "name"),
            str_of(t, "state"),
            t["detail"]
                .as_str()
                .map(|d| format!(" ({d})"))
                .unwrap_or_default()
        );
        for (what, key) in [("patched", "patched"), ("filtered out", "filtered")] {
            if let Some(names) = t[key].as_array() {
                let names: Vec<_> = names.iter().filter_map(|n| n.as_str()).collect();
                println!("                {what}: {}", names.join(", "));
            }
        }
        let names = t["filtered"].as_array().into_iter().flatten();
        let by = t["filteredBy"].as_array().into_iter().flatten();
        for (name, by) in names.zip(by) {
            println!(
                "                {} filtered out by {}",
                name.as_str().unwrap_or_default(),
                by.as_str().unwrap_or_default()
            );
        }
        println!(
            "                {} at {}",
            str_of(t, "state"),
            str_of(t, "at")
        );
    }
}
