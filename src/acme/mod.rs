//! Automatic HTTPS: certificates from an ACME CA (RFC 8555), obtained at start when none is
//! stored, renewed in place, answered for by TLS-ALPN-01 on the public listener or HTTP-01 on a
//! plain listener. DNS-01 is not offered.
//!
//! [`Acme`] is what the edge shares with the lifecycle: the challenge answers of the order in
//! flight and whether a certificate has been issued yet.

pub mod challenge;
pub mod client;
pub mod http01;
pub mod kube_store;
pub mod lease;
pub mod lifecycle;
pub mod replicas;
pub mod storage;

use rustls::sign::CertifiedKey;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use zeroize::Zeroizing;

/// Let's Encrypt's production directory, the default.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// Let's Encrypt's staging directory (`directory = "staging"`).
pub const LETS_ENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";

/// `[server.acme]`, validated.
#[derive(Debug, Clone)]
pub struct AcmeConfig {
    pub domains: Vec<String>,
    pub email: Option<String>,
    pub directory: String,
    /// PEM files trusted for the directory's HTTPS on top of the public roots.
    pub ca_roots: Vec<PathBuf>,
    pub eab: Option<Eab>,
    pub storage: StorageSettings,
    pub http_listen: Option<SocketAddr>,
}

impl AcmeConfig {
    /// Whether `other` asks for the same thing: the lifecycle runs with the settings it started
    /// with, so a reload that changes them must say a restart is needed.
    pub fn same_as(&self, other: &AcmeConfig) -> bool {
        let eab = |e: &Option<Eab>| e.as_ref().map(|e| (e.kid.clone(), e.hmac_key.to_vec()));
        self.domains == other.domains
            && self.email == other.email
            && self.directory == other.directory
            && self.ca_roots == other.ca_roots
            && eab(&self.eab) == eab(&other.eab)
            && self.storage == other.storage
            && self.http_listen == other.http_listen
    }
}

/// Where the account and the certificate are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageSettings {
    /// One process: a local directory.
    Directory(PathBuf),
    /// Replicas: Secrets and a Lease in one cluster of the fleet.
    Kubernetes(KubeStorage),
}

/// `storage = "kubernetes"`: the objects replicas share. They are created by the deployment
/// (deploy/acme), never by fluxgate, whose Role may only get and update them by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeStorage {
    /// The cluster's position in the fleet, and its name for messages.
    pub cluster: usize,
    pub cluster_name: String,
    pub namespace: String,
    /// The `kubernetes.io/tls` Secret holding the certificate (tls.crt, tls.key).
    pub secret: String,
    /// The Secret holding the ACME account's credentials.
    pub account_secret: String,
    /// The Lease whose holder orders or renews while the others wait.
    pub lease: String,
    /// This replica's name in the Lease.
    pub identity: String,
    /// How often replicas that do not hold the Lease read it and the certificate's Secret.
    pub poll_interval: Duration,
}

/// The answers to the challenges of one order, as shared between replicas: every replica
/// serves them, so the CA's validation may reach any of them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Challenges {
    /// Names this order's challenges, for the replicas' acknowledgements.
    pub id: String,
    /// HTTP-01: token → key authorization.
    #[serde(default)]
    pub http: BTreeMap<String, String>,
    /// TLS-ALPN-01: domain → SHA-256 digest of the key authorization, in hex.
    #[serde(default)]
    pub alpn: BTreeMap<String, String>,
}

/// External Account Binding: the key id and the MAC key the CA gave.
#[derive(Clone)]
pub struct Eab {
    pub kid: String,
    pub hmac_key: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for Eab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Eab")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// The ALPN protocol of TLS-ALPN-01 (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// State shared by the lifecycle (which writes it) and the edge (which reads it).
#[derive(Debug)]
pub struct Acme {
    pub config: AcmeConfig,
    /// TLS-ALPN-01: the challenge certificate per domain of the order in flight.
    alpn: Mutex<HashMap<String, Arc<CertifiedKey>>>,
    /// HTTP-01: the key authorization per token of the order in flight.
    http: Mutex<HashMap<String, String>>,
    issued: AtomicBool,
    ordering: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Acme {
    pub fn new(config: AcmeConfig) -> Arc<Self> {
        Arc::new(Acme {
            config,
            alpn: Mutex::default(),
            http: Mutex::default(),
            issued: AtomicBool::new(false),
            ordering: AtomicBool::new(false),
        })
    }

    /// The TLS-ALPN-01 certificate for `sni`, only for one of our domains with a challenge open.
    pub fn alpn_certificate(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let sni = sni?.to_ascii_lowercase();
        lock(&self.alpn).get(&sni).cloned()
    }

    /// The HTTP-01 key authorization for `token`.
    pub fn http_answer(&self, token: &str) -> Option<String> {
        lock(&self.http).get(token).cloned()
    }

    pub fn set_http(&self, token: &str, key_authorization: String) {
        lock(&self.http).insert(token.to_string(), key_authorization);
    }

    pub fn clear_challenges(&self) {
        lock(&self.alpn).clear();
        lock(&self.http).clear();
    }

    /// Answers `c` from now on (the ALPN certificates made here), in place of any other.
    pub fn answer(&self, c: &Challenges) -> Result<(), String> {
        let mut alpn = HashMap::new();
        // Only our own names: what another replica published is not taken on trust beyond them.
        let ours = c
            .alpn
            .iter()
            .filter(|(d, _)| self.config.domains.contains(&d.to_ascii_lowercase()));
        for (domain, digest) in ours {
            let digest = hex::decode(digest)
                .map_err(|_| format!("the challenge digest for {domain} is not hex"))?;
            alpn.insert(
                domain.to_ascii_lowercase(),
                challenge::alpn_certificate(domain, &digest)?,
            );
        }
        *lock(&self.alpn) = alpn;
        *lock(&self.http) = c.http.clone().into_iter().collect();
        Ok(())
    }

    /// A replica that does not order follows the ordering one's challenges: while `c` is
    /// some, it answers them and lets the CA's validation through as the orderer would.
    pub fn follow(&self, c: Option<&Challenges>) -> Result<(), String> {
        match c {
            Some(c) => {
                self.answer(c)?;
                self.ordering.store(true, SeqCst);
            }
            None => {
                self.ordering.store(false, SeqCst);
                self.clear_challenges();
            }
        }
        Ok(())
    }

    /// Whether a certificate from the CA is served (until then deliveries get 503).
    pub fn issued(&self) -> bool {
        self.issued.load(SeqCst)
    }

    pub fn set_issued(&self) {
        self.issued.store(true, SeqCst);
    }

    /// Whether an order is in flight: the CA's validation connections come from addresses no
    /// allow-list names, so the pre-TLS allow-list check stands aside meanwhile.
    pub fn ordering(&self) -> bool {
        self.ordering.load(SeqCst)
    }

    /// Marks an order in flight until the returned guard drops.
    pub fn begin_order(self: &Arc<Self>) -> OrderInFlight {
        self.ordering.store(true, SeqCst);
        OrderInFlight(self.clone())
    }
}

pub struct OrderInFlight(Arc<Acme>);

impl Drop for OrderInFlight {
    fn drop(&mut self) {
        self.0.clear_challenges();
        self.0.ordering.store(false, SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_setting_is_not_the_same_configuration() {
        let a = AcmeConfig {
            domains: vec!["a.example".into()],
            email: None,
            directory: LETS_ENCRYPT.into(),
            ca_roots: vec![],
            eab: None,
            storage: StorageSettings::Directory("/var/lib/fluxgate/acme".into()),
            http_listen: None,
        };
        assert!(a.same_as(&a.clone()));
        let mut b = a.clone();
        b.storage = StorageSettings::Directory("/elsewhere".into());
        assert!(!a.same_as(&b));
        let mut c = a.clone();
        c.eab = Some(Eab {
            kid: "k".into(),
            hmac_key: Zeroizing::new(vec![1]),
        });
        assert!(!a.same_as(&c));
    }

    #[test]
    fn published_challenges_are_answered_for_our_names_only() {
        let acme = Acme::new(AcmeConfig {
            domains: vec!["a.example".into()],
            email: None,
            directory: LETS_ENCRYPT.into(),
            ca_roots: vec![],
            eab: None,
            storage: StorageSettings::Directory("/nonexistent".into()),
            http_listen: None,
        });
        let digest = hex::encode([7u8; 32]);
        let c = Challenges {
            id: "1".into(),
            http: [("tok".to_string(), "tok.ka".to_string())].into(),
            alpn: [
                ("A.example".to_string(), digest.clone()),
                ("other.example".to_string(), digest),
            ]
            .into(),
        };
        acme.follow(Some(&c)).unwrap();
        assert!(acme.ordering());
        assert!(acme.alpn_certificate(Some("a.example")).is_some());
        assert!(acme.alpn_certificate(Some("other.example")).is_none());
        assert_eq!(acme.http_answer("tok").as_deref(), Some("tok.ka"));
        acme.follow(None).unwrap();
        assert!(!acme.ordering());
        assert!(acme.alpn_certificate(Some("a.example")).is_none());
    }
}
