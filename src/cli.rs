//! The command line: `serve`, `check`, `hook-path`, `sign`, `dev` and `import`.

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
    // One process-wide crypto provider, ring, before anything builds a TLS config: pingora
    // installs it only when a listener starts, later than the kube and HTTP clients may need it.
    let _ = rustls::crypto::ring::default_provider().install_default();
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
