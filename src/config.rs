//! The configuration file: one TOML file read with the `config` crate, every key overridable
//! from the environment as `FLUXGATE__SECTION__KEY`. Loading validates everything a delivery
//! will need, so a mistake stops start-up with the key and the reason instead of failing later.

use crate::edge::tls::CertifiedKey;
use crate::hook_path::flux_hook_path;
use crate::relay::target::{check_dns_label, check_dns_subdomain, ResourceSpec, Target};
use crate::secret::Secret;
use crate::verify::{ReceiverType, Verifier};
use serde::Deserialize;
use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The largest body accepted by default. GitHub caps payloads at 25 MiB.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 25 * 1024 * 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    kubernetes: RawKubernetes,
    #[serde(default)]
    receivers: Vec<RawReceiver>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    admin_listen: Option<String>,
    max_body_bytes: Option<u64>,
    head_timeout: Option<String>,
    body_timeout: Option<String>,
    threads: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKubernetes {
    kubeconfig: Option<PathBuf>,
    context: Option<String>,
    timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReceiver {
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: String,
    #[serde(default, rename = "type")]
    kind: String,
    #[serde(default)]
    events: Vec<String>,
    secret_file: Option<PathBuf>,
    secret_env: Option<String>,
    #[serde(default)]
    resources: Vec<ResourceSpec>,
}

/// A loaded, valid configuration.
#[derive(Debug)]
pub struct Settings {
    pub server: ServerSettings,
    pub kubernetes: KubernetesSettings,
    pub receivers: Vec<Arc<Receiver>>,
    /// Things that work but are probably not what was meant.
    pub warnings: Vec<String>,
}

#[derive(Debug)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    pub certified_key: Arc<CertifiedKey>,
    pub max_body_bytes: u64,
    pub head_timeout: Duration,
    pub body_timeout: Duration,
    pub threads: usize,
}

#[derive(Debug)]
pub struct KubernetesSettings {
    pub kubeconfig: PathBuf,
    pub context: Option<String>,
    pub timeout: Duration,
}

/// One receiver: where it listens, how it verifies, and what it asks Flux to reconcile.
#[derive(Debug)]
pub struct Receiver {
    pub name: String,
    pub namespace: String,
    pub kind: ReceiverType,
    /// Lower-cased, so matching is case-insensitive as in Flux.
    pub events: Vec<String>,
    pub path: String,
    pub verifier: Box<dyn Verifier>,
    pub targets: Vec<Target>,
}

impl Receiver {
    /// Flux's rule: an empty list accepts every event; otherwise the event must be listed.
    pub fn accepts_event(&self, event: Option<&str>) -> bool {
        self.events.is_empty()
            || event.is_some_and(|e| self.events.iter().any(|x| *x == e.to_lowercase()))
    }
}

/// One thing wrong with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub reason: String,
}

/// Everything wrong with a configuration, one problem per line.
#[derive(Debug)]
pub struct ConfigError(pub Vec<Problem>);

impl ConfigError {
    fn one(key: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError(vec![Problem {
            key: key.into(),
            reason: reason.into(),
        }])
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}: {}", p.key, p.reason)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

impl Settings {
    pub fn load(path: &Path) -> Result<Settings, ConfigError> {
        validate(read(path)?)
    }
}

fn read(path: &Path) -> Result<RawConfig, ConfigError> {
    if let Err(e) = std::fs::metadata(path) {
        return Err(ConfigError::one(
            "--config",
            format!("cannot read {}: {e}", path.display()),
        ));
    }
    let built = config::Config::builder()
        .add_source(config::File::from(path).format(config::FileFormat::Toml))
        .add_source(
            config::Environment::with_prefix("FLUXGATE")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true),
        )
        .build()
        .map_err(|e| ConfigError::one(path.display().to_string(), e.to_string()))?;
    built
        .try_deserialize()
        .map_err(|e| ConfigError::one(path.display().to_string(), e.to_string()))
}

/// Collects problems instead of stopping at the first, so one run shows everything to fix.
#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, key: impl Into<String>, reason: impl Into<String>) {
        self.0.push(Problem {
            key: key.into(),
            reason: reason.into(),
        });
    }

    fn take<T>(&mut self, key: &str, r: Result<T, String>) -> Option<T> {
        r.map_err(|e| self.add(key, e)).ok()
    }
}

fn duration(key: &str, value: Option<&str>, default: Duration, p: &mut Problems) -> Duration {
    match value {
        None => default,
        Some(s) => match humantime::parse_duration(s) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                p.add(key, "must be more than zero");
                default
            }
            Err(e) => {
                p.add(key, format!("{s:?} is not a duration like \"10s\" ({e})"));
                default
            }
        },
    }
}

fn address(key: &str, value: Option<&str>, default: &str, p: &mut Problems) -> Option<SocketAddr> {
    let s = value.unwrap_or(default);
    p.take(
        key,
        s.parse()
            .map_err(|_| format!("{s:?} is not an address like 0.0.0.0:8443 or [::]:8443")),
    )
}

fn required_path(
    key: &str,
    value: Option<PathBuf>,
    what: &str,
    p: &mut Problems,
) -> Option<PathBuf> {
    if value.is_none() {
        p.add(key, format!("missing; {what}"));
    }
    value
}

fn validate(raw: RawConfig) -> Result<Settings, ConfigError> {
    let mut p = Problems::default();
    let mut warnings = Vec::new();
    let s = raw.server;
    let listen = address("server.listen", s.listen.as_deref(), "0.0.0.0:8443", &mut p);
    let admin_listen = address(
        "server.admin_listen",
        s.admin_listen.as_deref(),
        "127.0.0.1:9102",
        &mut p,
    );
    let tls_cert = required_path(
        "server.tls_cert",
        s.tls_cert,
        "the PEM certificate chain served to providers",
        &mut p,
    );
    let tls_key = required_path(
        "server.tls_key",
        s.tls_key,
        "the PEM private key of server.tls_cert",
        &mut p,
    );
    let certified_key = match (&tls_cert, &tls_key) {
        (Some(c), Some(k)) => crate::edge::tls::load_certified_key(c, k)
            .map_err(|(which, e)| p.add(format!("server.{which}"), e))
            .ok(),
        _ => None,
    };
    let max_body_bytes = s.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES);
    if max_body_bytes == 0 {
        p.add("server.max_body_bytes", "must be more than zero");
    }
    let head_timeout = duration(
        "server.head_timeout",
        s.head_timeout.as_deref(),
        Duration::from_secs(10),
        &mut p,
    );
    let body_timeout = duration(
        "server.body_timeout",
        s.body_timeout.as_deref(),
        Duration::from_secs(30),
        &mut p,
    );
    let threads = match s.threads {
        Some(0) => {
            p.add("server.threads", "must be at least 1");
            1
        }
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };

    let k = raw.kubernetes;
    let kubeconfig = required_path(
        "kubernetes.kubeconfig",
        k.kubeconfig,
        "the service account's kubeconfig (see deploy/)",
        &mut p,
    );
    let kube_timeout = duration(
        "kubernetes.timeout",
        k.timeout.as_deref(),
        Duration::from_secs(10),
        &mut p,
    );

    if raw.receivers.is_empty() {
        p.add(
            "receivers",
            "none configured; add at least one [[receivers]] table",
        );
    }
    let mut receivers: Vec<Arc<Receiver>> = Vec::new();
    let mut seen_names: HashMap<(String, String), usize> = HashMap::new();
    let mut seen_paths: HashMap<String, usize> = HashMap::new();
    for (i, r) in raw.receivers.into_iter().enumerate() {
        let key = format!("receivers[{i}]");
        let Some(rec) = receiver(&key, r, &mut p, &mut warnings) else {
            continue;
        };
        if let Some(j) = seen_names.insert((rec.namespace.clone(), rec.name.clone()), i) {
            p.add(
                &key,
                format!(
                    "duplicate receiver {}/{}: receivers[{j}] has the same namespace and name",
                    rec.namespace, rec.name
                ),
            );
            continue;
        }
        if let Some(j) = seen_paths.insert(rec.path.clone(), i) {
            p.add(
                &key,
                format!("same hook path as receivers[{j}]; use a different secret"),
            );
            continue;
        }
        receivers.push(Arc::new(rec));
    }

    match (
        p.0.is_empty(),
        listen,
        admin_listen,
        tls_cert,
        tls_key,
        certified_key,
        kubeconfig,
    ) {
        (
            true,
            Some(listen),
            Some(admin_listen),
            Some(tls_cert),
            Some(tls_key),
            Some(certified_key),
            Some(kubeconfig),
        ) => {
            if listen == admin_listen {
                return Err(ConfigError::one(
                    "server.admin_listen",
                    "must differ from server.listen: the admin listener is private",
                ));
            }
            Ok(Settings {
                server: ServerSettings {
                    listen,
                    admin_listen,
                    tls_cert,
                    tls_key,
                    certified_key,
                    max_body_bytes,
                    head_timeout,
                    body_timeout,
                    threads,
                },
                kubernetes: KubernetesSettings {
                    kubeconfig,
                    context: k.context,
                    timeout: kube_timeout,
                },
                receivers,
                warnings,
            })
        }
        _ => Err(ConfigError(p.0)),
    }
}

fn receiver(
    key: &str,
    r: RawReceiver,
    p: &mut Problems,
    warnings: &mut Vec<String>,
) -> Option<Receiver> {
    let before = p.0.len();
    if r.name.is_empty() {
        p.add(format!("{key}.name"), "missing");
    } else {
        p.take(&format!("{key}.name"), check_dns_subdomain(&r.name));
    }
    if r.namespace.is_empty() {
        p.add(
            format!("{key}.namespace"),
            "missing; the namespace is part of the hook path, as in Flux",
        );
    } else {
        p.take(&format!("{key}.namespace"), check_dns_label(&r.namespace));
    }
    let kind = if r.kind.is_empty() {
        p.add(format!("{key}.type"), "missing");
        None
    } else {
        p.take(&format!("{key}.type"), r.kind.parse::<ReceiverType>())
    };
    let secret = match (&r.secret_file, &r.secret_env) {
        (Some(f), None) => p.take(&format!("{key}.secret_file"), Secret::from_file(f)),
        (None, Some(v)) => p.take(&format!("{key}.secret_env"), Secret::from_env(v)),
        (Some(_), Some(_)) => {
            p.add(
                format!("{key}.secret_file"),
                "give either secret_file or secret_env, not both",
            );
            None
        }
        (None, None) => {
            p.add(format!("{key}.secret_file"), "missing; the receiver's token, from a file (secret_file) or an environment variable (secret_env)");
            None
        }
    };
    for (j, e) in r.events.iter().enumerate() {
        if e.trim().is_empty() {
            p.add(format!("{key}.events[{j}]"), "empty event name");
        }
    }
    if r.resources.is_empty() {
        p.add(
            format!("{key}.resources"),
            "none; list the Flux objects to reconcile",
        );
    }
    let mut targets = Vec::new();
    for (j, spec) in r.resources.iter().enumerate() {
        match Target::resolve(spec, &r.namespace) {
            Ok(t) => {
                if spec.name != "*" && !spec.match_labels.is_empty() {
                    warnings.push(format!("{key}.resources[{j}].matchLabels: ignored because name is not \"*\", as in Flux"));
                }
                targets.push(t);
            }
            Err((field, reason)) => p.add(format!("{key}.resources[{j}].{field}"), reason),
        }
    }
    if !r.events.is_empty() && kind.is_some_and(|k| !k.uses_events()) {
        warnings.push(format!(
            "{key}.events: ignored by type {}, as in Flux",
            r.kind
        ));
    }
    if p.0.len() > before {
        return None;
    }
    let (kind, secret) = (kind?, secret?);
    let secrets = vec![secret];
    Some(Receiver {
        path: flux_hook_path(secrets[0].expose(), &r.name, &r.namespace),
        verifier: kind.verifier(&secrets),
        events: r.events.iter().map(|e| e.to_lowercase()).collect(),
        name: r.name,
        namespace: r.namespace,
        kind,
        targets,
    })
}
