//! The configuration file: one TOML file read with the `config` crate, every key overridable
//! from the environment as `FLUXGATE__SECTION__KEY`. Loading validates everything a delivery
//! will need, so a mistake stops start-up with the key and the reason instead of failing later.

mod acme;
mod admin;
mod cluster;
mod defences;
mod fleet;
mod receivers;
mod relay;

pub use admin::{AdminSettings, HistorySettings};
pub use cluster::{ClusterSettings, ReceiverDefaults, ALL_NAMESPACES};
pub use defences::LimitSettings;
pub use receivers::{from_token, RawReceiver, Receiver, Rules};
pub use relay::RelaySettings;

use crate::edge::tls::CertifiedKey;
use crate::fleet::ClusterSpec;
use crate::guard::cidr::IpSet;
use crate::guard::ranges::RangeSets;
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
    relay: relay::RawRelay,
    #[serde(default)]
    limits: defences::RawLimits,
    #[serde(default)]
    ranges: HashMap<String, defences::RawRange>,
    #[serde(default)]
    cluster: cluster::RawCluster,
    #[serde(default)]
    clusters: Vec<fleet::RawCluster>,
    #[serde(default)]
    receivers: Vec<receivers::RawReceiver>,
    #[serde(default)]
    admin: admin::RawAdmin,
    #[serde(default)]
    history: admin::RawHistory,
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
    max_header_bytes: Option<usize>,
    #[serde(default)]
    trusted_proxies: Vec<String>,
    threads: Option<usize>,
    max_connections: Option<usize>,
    grace_period: Option<String>,
    shutdown_timeout: Option<String>,
    upgrade_sock: Option<PathBuf>,
    watch_interval: Option<String>,
    acme: Option<acme::RawAcme>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKubernetes {
    kubeconfig: Option<PathBuf>,
    context: Option<String>,
    timeout: Option<String>,
    /// Flux's `--no-cross-namespace-refs`.
    no_cross_namespace_refs: Option<bool>,
}

/// A loaded, valid configuration.
#[derive(Debug)]
pub struct Settings {
    pub server: ServerSettings,
    pub kubernetes: KubernetesSettings,
    pub relay: RelaySettings,
    pub limits: LimitSettings,
    /// Named range sets in use, refreshed in the background when they have a source.
    pub ranges: RangeSets,
    pub receivers: Vec<Arc<Receiver>>,
    /// The fleet: `default` (`[kubernetes]`) first when configured, then `[[clusters]]`.
    /// Receivers' targets reach clusters by their position here.
    pub clusters: Vec<ClusterSpec>,
    pub cluster: ClusterSettings,
    pub admin: AdminSettings,
    pub history: HistorySettings,
    /// Things that work but are probably not what was meant.
    pub warnings: Vec<String>,
}

#[derive(Debug)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// The certificate files; `None` with `acme`, whose certificate comes from the CA.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub certified_key: Option<Arc<CertifiedKey>>,
    /// `[server.acme]`: automatic HTTPS.
    pub acme: Option<crate::acme::AcmeConfig>,
    pub max_body_bytes: u64,
    pub head_timeout: Duration,
    pub body_timeout: Duration,
    pub max_header_bytes: usize,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: IpSet,
    pub threads: usize,
    /// Connections on the public listener, all addresses together: `None` sizes it from the
    /// file-descriptor limit at start, `Some(0)` is no cap.
    pub max_connections: Option<usize>,
    /// After SIGTERM or SIGQUIT: how long in-flight requests may finish.
    pub grace_period: Duration,
    /// Then: how long the runtimes get to stop.
    pub shutdown_timeout: Duration,
    /// Where a new process started with `serve -u` waits for the listening sockets.
    pub upgrade_sock: PathBuf,
    /// How often the configuration, secret and certificate files are checked for changes;
    /// zero: only SIGHUP reloads.
    pub watch_interval: Duration,
}

/// The home cluster, which cluster mode and forward mode use: `[kubernetes]`, or without it
/// the first of `[[clusters]]`.
#[derive(Debug)]
pub struct KubernetesSettings {
    pub kubeconfig: PathBuf,
    pub context: Option<String>,
    pub timeout: Duration,
    /// Whether a receiver may only target objects in its own namespace.
    pub no_cross_namespace_refs: bool,
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

    /// Files whose change means the configuration should be read again: the secrets and the
    /// certificate (the configuration file itself is the caller's).
    pub fn watched_files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = self
            .receivers
            .iter()
            .flat_map(|r| r.secret_files.iter().cloned())
            .collect();
        files.extend(self.server.tls_cert.clone());
        files.extend(self.server.tls_key.clone());
        files
    }

    /// What a reload cannot change: listeners, threads, the queue and the cluster connection.
    /// Differences are reported so the operator knows to restart (`serve -u` for no downtime).
    pub fn fixed_differences(&self, new: &Settings) -> Vec<&'static str> {
        let (a, b) = (&self.server, &new.server);
        let mut d = Vec::new();
        if a.listen != b.listen {
            d.push("server.listen");
        }
        if a.admin_listen != b.admin_listen {
            d.push("server.admin_listen");
        }
        if a.threads != b.threads {
            d.push("server.threads");
        }
        if a.max_connections != b.max_connections {
            d.push("server.max_connections");
        }
        if a.upgrade_sock != b.upgrade_sock
            || a.grace_period != b.grace_period
            || a.shutdown_timeout != b.shutdown_timeout
        {
            d.push("server.upgrade_sock/grace_period/shutdown_timeout");
        }
        // The ACME lifecycle keeps the settings it started with (and switching between ACME and
        // certificate files swaps who owns the certificate).
        let acme_same = match (&a.acme, &b.acme) {
            (Some(x), Some(y)) => x.same_as(y),
            (None, None) => true,
            _ => false,
        };
        if !acme_same {
            d.push("server.acme");
        }
        if self.kubernetes.kubeconfig != new.kubernetes.kubeconfig
            || self.kubernetes.context != new.kubernetes.context
            || self.kubernetes.timeout != new.kubernetes.timeout
        {
            d.push("kubernetes");
        }
        if self.clusters != new.clusters {
            d.push("clusters");
        }
        if self.relay.queue_dir != new.relay.queue_dir
            || self.relay.wait != new.relay.wait
            || self.relay.events != new.relay.events
        {
            d.push("relay");
        }
        if self.admin.token_file != new.admin.token_file || self.history.size != new.history.size {
            d.push("admin/history");
        }
        if self.cluster.watch_receivers != new.cluster.watch_receivers
            || self.cluster.namespaces != new.cluster.namespaces
            || self.cluster.clusters != new.cluster.clusters
        {
            d.push("cluster.watch_receivers/namespaces/clusters");
        }
        d
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
pub(crate) struct Problems(Vec<Problem>);

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

pub(crate) fn duration(
    key: &str,
    value: Option<&str>,
    default: Duration,
    p: &mut Problems,
) -> Duration {
    parse_duration(key, value, default, false, p)
}

/// A duration where zero means "off".
pub(crate) fn duration_or_off(
    key: &str,
    value: Option<&str>,
    default: Duration,
    p: &mut Problems,
) -> Duration {
    parse_duration(key, value, default, true, p)
}

fn parse_duration(
    key: &str,
    value: Option<&str>,
    default: Duration,
    zero_ok: bool,
    p: &mut Problems,
) -> Duration {
    let Some(s) = value else {
        return default;
    };
    match humantime::parse_duration(s) {
        Ok(d) if zero_ok || !d.is_zero() => d,
        Ok(_) => {
            p.add(key, "must be more than zero");
            default
        }
        Err(e) => {
            p.add(key, format!("{s:?} is not a duration like \"10s\" ({e})"));
            default
        }
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
    // With [server.acme] the certificate comes from the CA: the files must not be named too.
    let uses_acme = s.acme.is_some();
    if uses_acme {
        for (key, set) in [
            ("server.tls_cert", s.tls_cert.is_some()),
            ("server.tls_key", s.tls_key.is_some()),
        ] {
            if set {
                p.add(
                    key,
                    "cannot be used with [server.acme], which obtains the certificate: remove one or the other",
                );
            }
        }
    }
    let tls_cert = if uses_acme {
        None
    } else {
        required_path(
            "server.tls_cert",
            s.tls_cert,
            "the PEM certificate chain served to providers (or use [server.acme])",
            &mut p,
        )
    };
    let tls_key = if uses_acme {
        None
    } else {
        required_path(
            "server.tls_key",
            s.tls_key,
            "the PEM private key of server.tls_cert",
            &mut p,
        )
    };
    for (key, file) in [("server.tls_key", &tls_key)] {
        if let Some(w) = file.as_deref().and_then(crate::secret::loose_permissions) {
            warnings.push(format!("{key}: {w}"));
        }
    }
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
    let max_header_bytes = s.max_header_bytes.unwrap_or(64 * 1024);
    if max_header_bytes < 1024 {
        p.add("server.max_header_bytes", "must be at least 1024");
    }
    let trusted_proxies = defences::trusted_proxies(&s.trusted_proxies, &mut p);
    let threads = match s.threads {
        Some(0) => {
            p.add("server.threads", "must be at least 1");
            1
        }
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };

    let k = raw.kubernetes;
    // With [[clusters]], [kubernetes] (the cluster named default) is optional.
    let kubeconfig = if raw.clusters.is_empty() {
        required_path(
            "kubernetes.kubeconfig",
            k.kubeconfig,
            "the service account's kubeconfig (see deploy/)",
            &mut p,
        )
    } else {
        k.kubeconfig
    };
    if let Some(w) = kubeconfig
        .as_deref()
        .and_then(crate::secret::loose_permissions)
    {
        warnings.push(format!("kubernetes.kubeconfig: {w}"));
    }
    let kube_timeout = duration(
        "kubernetes.timeout",
        k.timeout.as_deref(),
        Duration::from_secs(10),
        &mut p,
    );
    let no_cross_namespace_refs = k.no_cross_namespace_refs.unwrap_or(false);
    let default_cluster = kubeconfig.clone().map(|kubeconfig| ClusterSpec {
        name: crate::fleet::DEFAULT.to_string(),
        labels: Default::default(),
        kubeconfig,
        context: k.context.clone(),
        timeout: kube_timeout,
    });
    let clusters = fleet::clusters(default_cluster, raw.clusters, &mut p, &mut warnings);

    // Within Kubernetes' default termination grace (30 s) and systemd's stop timeout (90 s).
    let grace_period = duration(
        "server.grace_period",
        s.grace_period.as_deref(),
        Duration::from_secs(5),
        &mut p,
    );
    let shutdown_timeout = duration(
        "server.shutdown_timeout",
        s.shutdown_timeout.as_deref(),
        Duration::from_secs(5),
        &mut p,
    );
    let upgrade_sock = s.upgrade_sock.unwrap_or_else(default_upgrade_sock);
    if let Err(e) = private_folder(&upgrade_sock) {
        p.add("server.upgrade_sock", e);
    }
    let watch_interval = duration_or_off(
        "server.watch_interval",
        s.watch_interval.as_deref(),
        Duration::from_secs(2),
        &mut p,
    );
    let relay = relay::relay(raw.relay, &mut p);
    let admin = admin::admin(raw.admin, admin_listen, &mut p, &mut warnings);
    let history = admin::history(raw.history, &mut p);
    let acme = s
        .acme
        .and_then(|a| acme::acme(a, relay.queue_dir.as_deref(), &clusters, &mut p));
    let limits = defences::limits(raw.limits, &mut p);
    let mut ranges = defences::range_sets(raw.ranges, &mut p);
    let mut cluster = cluster::cluster(raw.cluster, &clusters, &mut ranges, &mut p);
    cluster.defaults.rules = Rules {
        no_cross_namespace_refs,
    };

    if raw.receivers.is_empty() && !cluster.watch_receivers {
        p.add(
            "receivers",
            "none configured; add at least one [[receivers]] table, or serve the cluster's Receivers ([cluster] watch_receivers = true)",
        );
    }
    let mut receivers: Vec<Arc<Receiver>> = Vec::new();
    let mut seen_names: HashMap<(String, String), usize> = HashMap::new();
    let mut seen_paths: HashMap<String, usize> = HashMap::new();
    let rules = receivers::Rules {
        no_cross_namespace_refs,
    };
    for (i, r) in raw.receivers.into_iter().enumerate() {
        let key = format!("receivers[{i}]");
        let id = u32::try_from(i).unwrap_or(u32::MAX);
        let Some(mut rec) =
            receivers::receiver(id, &key, r, rules, &mut ranges, &mut p, &mut warnings)
        else {
            continue;
        };
        if !place(&mut rec, &clusters, &mut p) {
            continue;
        }
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

    // Either the certificate files or ACME: one of them is there once the problems are none.
    match (
        p.0.is_empty(),
        listen,
        admin_listen,
        certified_key.is_some() || acme.is_some(),
        clusters.first().cloned(),
    ) {
        (true, Some(listen), Some(admin_listen), true, Some(home)) => {
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
                    acme,
                    max_body_bytes,
                    head_timeout,
                    body_timeout,
                    max_header_bytes,
                    trusted_proxies,
                    threads,
                    max_connections: s.max_connections,
                    grace_period,
                    shutdown_timeout,
                    upgrade_sock,
                    watch_interval,
                },
                kubernetes: KubernetesSettings {
                    kubeconfig: home.kubeconfig.clone(),
                    context: home.context.clone(),
                    timeout: home.timeout,
                    no_cross_namespace_refs,
                },
                clusters,
                relay,
                limits,
                ranges,
                receivers,
                cluster,
                admin,
                history,
                warnings,
            })
        }
        _ => Err(ConfigError(p.0)),
    }
}

/// Resolves each target's clusters against the fleet; false, with the problems added under
/// the keys that chose them, when one picks an unknown cluster or none.
fn place(rec: &mut Receiver, clusters: &[ClusterSpec], p: &mut Problems) -> bool {
    let mut ok = true;
    let mut reach = Vec::with_capacity(rec.placements.len());
    for pl in &rec.placements {
        match pl.selector.resolve(clusters) {
            Ok(ids) => reach.push(ids.into()),
            Err(e) => {
                p.add(&pl.key, e);
                ok = false;
            }
        }
    }
    if rec.forward.is_some() {
        // Resources are ignored in forward mode: the receiver's own clusters are where it goes.
        match rec.placement.selector.resolve(clusters) {
            Ok(ids) => rec.forward_clusters = ids.into(),
            Err(e) => {
                p.add(&rec.placement.key, e);
                ok = false;
            }
        }
    }
    let default = clusters
        .iter()
        .position(|c| c.name == crate::fleet::DEFAULT);
    let not_default_alone = |r: &Arc<[usize]>| default.is_none_or(|d| **r != [d]);
    rec.per_cluster = reach.iter().any(not_default_alone)
        || (rec.forward.is_some() && not_default_alone(&rec.forward_clusters));
    rec.reach = reach;
    ok
}

/// Where `serve -u` waits for the listening sockets unless `server.upgrade_sock` says: in
/// systemd's RuntimeDirectory (`$RUNTIME_DIRECTORY`), else the user's `$XDG_RUNTIME_DIR`,
/// both writable by fluxgate's user only; else /run/fluxgate. Never a shared folder such as
/// /tmp, where another user could listen first and receive the sockets.
fn default_upgrade_sock() -> PathBuf {
    let from_env = |var: &str| {
        let v = std::env::var_os(var)?;
        // RUNTIME_DIRECTORY lists one folder per RuntimeDirectory= name, separated by ':'.
        let first = v.to_str()?.split(':').next()?.to_string();
        Path::new(&first)
            .is_absolute()
            .then(|| PathBuf::from(first))
    };
    if let Some(d) = from_env("RUNTIME_DIRECTORY") {
        return d.join("upgrade.sock");
    }
    if let Some(d) = from_env("XDG_RUNTIME_DIR") {
        return d.join("fluxgate-upgrade.sock");
    }
    PathBuf::from("/run/fluxgate/upgrade.sock")
}

/// Refuses a socket path whose folder another local user can write (or owns): there they
/// could bind the socket before `serve -u` does and receive the public and admin listening
/// sockets on SIGQUIT. A folder that does not exist yet passes here (systemd creates
/// RuntimeDirectory= at start); the hand-over checks it again, existing, at the time.
pub fn private_folder(sock: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let dir = match sock.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let Ok(meta) = std::fs::metadata(dir) else {
        return Ok(());
    };
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me && meta.uid() != 0 {
        return Err(format!(
            "{} belongs to uid {}, not to fluxgate's user (uid {me}): that user could take the \
             upgrade socket and receive the listening sockets; use a folder only fluxgate's user \
             can write, such as /run/fluxgate",
            dir.display(),
            meta.uid()
        ));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(format!(
            "{} is writable by other users (mode {mode:o}): another local user could take the \
             upgrade socket and receive the listening sockets; use a folder only fluxgate's user \
             can write, such as /run/fluxgate",
            dir.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_upgrade_socket_is_refused_in_a_folder_others_can_write() {
        // /tmp (1777, sticky): another user could bind the socket there first.
        let e = private_folder(Path::new("/tmp/fluxgate-upgrade.sock")).unwrap_err();
        assert!(
            e.contains("/tmp is writable by other users (mode 1777)"),
            "{e}"
        );
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("upgrade.sock");
        for mode in [0o777, 0o770, 0o1777] {
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(mode)).unwrap();
            assert!(
                private_folder(&sock).is_err(),
                "mode {mode:o} must be refused"
            );
        }
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(private_folder(&sock), Ok(()));
        // Not there yet: systemd creates RuntimeDirectory= at start; checked again at hand-over.
        assert_eq!(
            private_folder(&dir.path().join("later/upgrade.sock")),
            Ok(())
        );
    }

    #[test]
    fn the_default_upgrade_socket_is_not_in_a_shared_folder() {
        let d = default_upgrade_sock();
        assert!(!d.starts_with("/tmp") && d.is_absolute(), "{}", d.display());
    }
}
