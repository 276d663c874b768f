//! `[server.acme]`: automatic HTTPS. Builds [`crate::acme::AcmeConfig`].

use super::{duration, Problems};
use crate::acme::{
    AcmeConfig, Eab, KubeStorage, StorageSettings, LETS_ENCRYPT, LETS_ENCRYPT_STAGING,
};
use crate::fleet::ClusterSpec;
use crate::relay::target::{check_dns_label, check_dns_subdomain};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAcme {
    #[serde(default)]
    domains: Vec<String>,
    email: Option<String>,
    directory: Option<String>,
    #[serde(default)]
    ca_roots: Vec<PathBuf>,
    eab_kid: Option<String>,
    eab_hmac_key_file: Option<PathBuf>,
    /// A directory, or "kubernetes" for Secrets and a Lease shared by replicas.
    storage: Option<String>,
    http_listen: Option<String>,
    // With storage = "kubernetes":
    cluster: Option<String>,
    namespace: Option<String>,
    secret: Option<String>,
    account_secret: Option<String>,
    lease: Option<String>,
    identity: Option<String>,
    poll_interval: Option<String>,
}

/// `storage = "kubernetes"`.
pub const KUBERNETES: &str = "kubernetes";
/// The names deploy/acme creates and its Role grants.
pub const DEFAULT_SECRET: &str = "fluxgate-tls";
pub const DEFAULT_ACCOUNT_SECRET: &str = "fluxgate-acme-account";
pub const DEFAULT_LEASE: &str = "fluxgate-acme";
pub const DEFAULT_NAMESPACE: &str = "flux-system";

/// Where the account and certificate are kept when `storage` is not set: beside the relay
/// queue when there is one (the state directory), else fluxgate's state directory.
fn default_storage(queue_dir: Option<&Path>) -> PathBuf {
    match queue_dir.and_then(Path::parent) {
        Some(state) if !state.as_os_str().is_empty() => state.join("acme"),
        _ => PathBuf::from("/var/lib/fluxgate/acme"),
    }
}

/// A DNS name a public CA can issue for: letters, digits and hyphens in dot-separated labels.
fn valid_domain(d: &str) -> bool {
    !d.is_empty()
        && d.len() <= 253
        && d.contains('.')
        && d.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// This replica's name in the Lease when `identity` is not set: the host's name (a pod's name
/// in a cluster) and the process id, as client-go's examples do.
fn default_identity() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().chars().take(100).collect::<String>())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "fluxgate".into());
    format!("{host}-{}", std::process::id())
}

/// The keys that only `storage = "kubernetes"` reads, set or not.
fn kube_keys(raw: &RawAcme) -> [(&'static str, bool); 7] {
    [
        ("cluster", raw.cluster.is_some()),
        ("namespace", raw.namespace.is_some()),
        ("secret", raw.secret.is_some()),
        ("account_secret", raw.account_secret.is_some()),
        ("lease", raw.lease.is_some()),
        ("identity", raw.identity.is_some()),
        ("poll_interval", raw.poll_interval.is_some()),
    ]
}

/// `storage = "kubernetes"` and its keys, checked.
fn kube_storage(raw: &RawAcme, fleet: &[ClusterSpec], p: &mut Problems) -> Option<KubeStorage> {
    let errors = p.0.len();
    let cluster = match &raw.cluster {
        // The fleet's first cluster: [kubernetes] (named "default") when it is configured.
        None => (!fleet.is_empty()).then_some(0),
        Some(name) => match fleet.iter().position(|c| &c.name == name) {
            Some(i) => Some(i),
            None => {
                let known: Vec<&str> = fleet.iter().map(|c| c.name.as_str()).collect();
                p.add(
                    "server.acme.cluster",
                    format!(
                        "no cluster named {name:?}; configured: {}",
                        known.join(", ")
                    ),
                );
                None
            }
        },
    };
    let namespace = raw.namespace.clone().unwrap_or(DEFAULT_NAMESPACE.into());
    p.take("server.acme.namespace", check_dns_label(&namespace));
    let mut name = |key: &str, v: &Option<String>, default: &str| {
        let n = v.clone().unwrap_or(default.into());
        p.take(&format!("server.acme.{key}"), check_dns_subdomain(&n));
        n
    };
    let secret = name("secret", &raw.secret, DEFAULT_SECRET);
    let account_secret = name(
        "account_secret",
        &raw.account_secret,
        DEFAULT_ACCOUNT_SECRET,
    );
    let lease = name("lease", &raw.lease, DEFAULT_LEASE);
    if secret == account_secret {
        p.add(
            "server.acme.account_secret",
            "must differ from server.acme.secret: the certificate's Secret is a kubernetes.io/tls one",
        );
    }
    let identity = raw.identity.clone().unwrap_or_else(default_identity);
    if identity.is_empty()
        || identity.len() > 128
        || identity
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
    {
        p.add(
            "server.acme.identity",
            format!("{identity:?}: 1 to 128 characters without spaces, unique per replica"),
        );
    }
    let poll_interval = duration(
        "server.acme.poll_interval",
        raw.poll_interval.as_deref(),
        Duration::from_secs(5),
        p,
    );
    let cluster = cluster?;
    (p.0.len() == errors).then(|| KubeStorage {
        cluster,
        cluster_name: fleet[cluster].name.clone(),
        namespace,
        secret,
        account_secret,
        lease,
        identity,
        poll_interval,
    })
}

pub fn acme(
    raw: RawAcme,
    queue_dir: Option<&Path>,
    fleet: &[ClusterSpec],
    p: &mut Problems,
) -> Option<AcmeConfig> {
    let errors = p.0.len();
    if raw.domains.is_empty() {
        p.add(
            "server.acme.domains",
            "missing; the DNS names to obtain a certificate for",
        );
    }
    let mut domains = Vec::new();
    for d in &raw.domains {
        let d = d.trim().trim_end_matches('.').to_ascii_lowercase();
        if d.starts_with("*.") {
            p.add(
                "server.acme.domains",
                format!("{d}: wildcards need DNS-01, which fluxgate does not offer"),
            );
        } else if !valid_domain(&d) {
            p.add(
                "server.acme.domains",
                format!("{d:?} is not a DNS name like hooks.example.org"),
            );
        } else if !domains.contains(&d) {
            domains.push(d);
        }
    }
    if let Some(e) = &raw.email {
        if !e.contains('@') || e.contains(char::is_whitespace) {
            p.add(
                "server.acme.email",
                format!("{e:?} is not an email address"),
            );
        }
    }
    let directory = match raw.directory.as_deref() {
        None | Some("production") | Some("letsencrypt") => LETS_ENCRYPT.to_string(),
        Some("staging") => LETS_ENCRYPT_STAGING.to_string(),
        Some(url) if url.starts_with("https://") && url.parse::<http::Uri>().is_ok() => {
            url.to_string()
        }
        Some(other) => {
            p.add(
                "server.acme.directory",
                format!("{other:?}: an https:// ACME directory URL, or \"staging\""),
            );
            String::new()
        }
    };
    for root in &raw.ca_roots {
        match std::fs::read(root) {
            Ok(pem) => {
                if rustls_pemfile::certs(&mut pem.as_slice())
                    .collect::<Result<Vec<_>, _>>()
                    .map_or(true, |c| c.is_empty())
                {
                    p.add(
                        "server.acme.ca_roots",
                        format!("{} holds no PEM certificate", root.display()),
                    );
                }
            }
            Err(e) => p.add(
                "server.acme.ca_roots",
                format!("cannot read {}: {e}", root.display()),
            ),
        }
    }
    let eab = match (raw.eab_kid.clone(), raw.eab_hmac_key_file.clone()) {
        (None, None) => None,
        (Some(_), None) => {
            p.add(
                "server.acme.eab_hmac_key_file",
                "missing; eab_kid needs the MAC key the CA gave with it",
            );
            None
        }
        (None, Some(_)) => {
            p.add(
                "server.acme.eab_kid",
                "missing; eab_hmac_key_file needs the key id the CA gave with it",
            );
            None
        }
        (Some(kid), Some(file)) => eab_key(&file)
            .map_err(|e| p.add("server.acme.eab_hmac_key_file", e))
            .ok()
            .map(|hmac_key| Eab { kid, hmac_key }),
    };
    let storage = match raw.storage.as_deref() {
        Some(KUBERNETES) => kube_storage(&raw, fleet, p).map(StorageSettings::Kubernetes),
        other => {
            for (key, set) in kube_keys(&raw) {
                if set {
                    p.add(
                        format!("server.acme.{key}"),
                        "only with storage = \"kubernetes\" (replicas sharing Secrets and a Lease)",
                    );
                }
            }
            match other {
                Some("") => {
                    p.add(
                        "server.acme.storage",
                        "empty; a directory, or \"kubernetes\"",
                    );
                    None
                }
                Some(dir) => Some(StorageSettings::Directory(PathBuf::from(dir))),
                None => Some(StorageSettings::Directory(default_storage(queue_dir))),
            }
        }
    };
    let http_listen = raw.http_listen.as_deref().and_then(|s| {
        s.parse()
            .map_err(|_| {
                p.add(
                    "server.acme.http_listen",
                    format!("{s:?} is not an address like 0.0.0.0:80"),
                )
            })
            .ok()
    });
    let storage = storage?;
    (p.0.len() == errors).then_some(AcmeConfig {
        domains,
        email: raw.email,
        directory,
        ca_roots: raw.ca_roots,
        eab,
        storage,
        http_listen,
    })
}

/// The MAC key, base64url as CAs hand it out (padding and surrounding space allowed). The
/// error never quotes the file.
fn eab_key(file: &Path) -> Result<zeroize::Zeroizing<Vec<u8>>, String> {
    use base64::Engine;
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(file)
            .map_err(|e| format!("cannot read {}: {e}", file.display()))?,
    );
    let t = text.trim().trim_end_matches('=');
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(t)
        .map(zeroize::Zeroizing::new)
        .map_err(|_| format!("{} does not hold a base64url key", file.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml: &str) -> (Option<AcmeConfig>, Vec<String>) {
        let raw: RawAcme = ::config::Config::builder()
            .add_source(::config::File::from_str(toml, ::config::FileFormat::Toml))
            .build()
            .unwrap()
            .try_deserialize()
            .unwrap();
        let mut p = Problems::default();
        let fleet = [ClusterSpec {
            name: "default".into(),
            labels: Default::default(),
            kubeconfig: "/k".into(),
            context: None,
            timeout: Duration::from_secs(5),
        }];
        let c = acme(raw, Some(Path::new("/srv/state/queue")), &fleet, &mut p);
        (
            c,
            p.0.iter()
                .map(|x| format!("{}: {}", x.key, x.reason))
                .collect(),
        )
    }

    #[test]
    fn defaults_are_lets_encrypt_and_the_state_directory() {
        let (c, e) = parse("domains = ['Hooks.Example.org.']");
        assert!(e.is_empty(), "{e:?}");
        let c = c.unwrap();
        assert_eq!(c.domains, vec!["hooks.example.org"]);
        assert_eq!(c.directory, LETS_ENCRYPT);
        assert_eq!(
            c.storage,
            StorageSettings::Directory(PathBuf::from("/srv/state/acme"))
        );
        let (c, _) = parse("domains = ['a.example']\ndirectory = 'staging'");
        assert_eq!(c.unwrap().directory, LETS_ENCRYPT_STAGING);
    }

    #[test]
    fn mistakes_name_their_key() {
        let (c, e) = parse("domains = ['*.example.org', 'bad name']\ndirectory = 'http://x/dir'\nemail = 'nobody'\neab_kid = 'k'\nhttp_listen = 'x'");
        assert!(c.is_none());
        for key in [
            "server.acme.domains: *.example.org: wildcards need DNS-01",
            "server.acme.domains: \"bad name\"",
            "server.acme.directory",
            "server.acme.email",
            "server.acme.eab_hmac_key_file: missing",
            "server.acme.http_listen",
        ] {
            assert!(e.iter().any(|l| l.starts_with(key)), "{key} in {e:?}");
        }
        let (_, e) = parse("email = 'a@b.org'");
        assert!(e[0].starts_with("server.acme.domains: missing"), "{e:?}");
    }

    #[test]
    fn kubernetes_storage_defaults_to_the_deploy_names_and_checks_its_keys() {
        let (c, e) = parse("domains = ['a.example']\nstorage = 'kubernetes'");
        assert!(e.is_empty(), "{e:?}");
        let StorageSettings::Kubernetes(k) = c.unwrap().storage else {
            panic!("not kubernetes")
        };
        assert_eq!(
            (k.cluster, k.namespace.as_str(), k.secret.as_str()),
            (0, "flux-system", "fluxgate-tls")
        );
        assert_eq!(
            (k.account_secret.as_str(), k.lease.as_str()),
            ("fluxgate-acme-account", "fluxgate-acme")
        );
        assert!(k.identity.ends_with(&format!("-{}", std::process::id())));
        assert_eq!(k.poll_interval, Duration::from_secs(5));

        let (c, e) = parse("domains = ['a.example']\nstorage = 'kubernetes'\ncluster = 'prod'\nnamespace = 'Bad_NS'\nsecret = 'x'\naccount_secret = 'x'\nidentity = 'a b'\npoll_interval = '0s'");
        assert!(c.is_none());
        for key in [
            "server.acme.cluster: no cluster named \"prod\"; configured: default",
            "server.acme.namespace: ",
            "server.acme.account_secret: must differ",
            "server.acme.identity: ",
            "server.acme.poll_interval: must be more than zero",
        ] {
            assert!(e.iter().any(|l| l.starts_with(key)), "{key} in {e:?}");
        }

        let (c, e) = parse("domains = ['a.example']\nstorage = '/var/lib/x'\nlease = 'l'");
        assert!(c.is_none());
        assert_eq!(
            e,
            vec!["server.acme.lease: only with storage = \"kubernetes\" (replicas sharing Secrets and a Lease)"]
        );
    }

    #[test]
    fn the_eab_key_is_read_and_never_quoted() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good");
        std::fs::write(&good, "c2VjcmV0LWtleQ\n").unwrap();
        assert_eq!(&eab_key(&good).unwrap()[..], b"secret-key");
        let bad = dir.path().join("bad");
        std::fs::write(&bad, "not base64 !!! hunter2").unwrap();
        let e = eab_key(&bad).unwrap_err();
        assert!(!e.contains("hunter2"), "{e}");
    }
}
