//! Where the account and the certificate live between runs, and how the challenges of an
//! order reach the other replicas: a local [`Directory`] for one process, or Secrets and a
//! Lease in the cluster ([`KubeStore`]) for replicas.
//!
//! The directory is owner-only, each file written whole to a temporary file and renamed over
//! the old one, so a crash never leaves a half-written key or a certificate without its key:
//!
//! - `account-<hash of the directory URL>.json`: the account's credentials (its key).
//! - `certificate.pem`: the chain, then its private key, in one file.

use super::kube_store::KubeStore;
use super::Challenges;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The two backends behind one face: the ACME client and the lifecycle do not know which.
#[derive(Clone)]
pub enum Storage {
    Directory(Directory),
    Kubernetes(Arc<KubeStore>),
}

impl Storage {
    pub async fn load_account(&self, directory: &str) -> Result<Option<Vec<u8>>, String> {
        match self {
            Storage::Directory(d) => Ok(d.load_account(directory)),
            Storage::Kubernetes(k) => k.load_account(directory).await,
        }
    }

    pub async fn save_account(&self, directory: &str, json: &[u8]) -> Result<(), String> {
        match self {
            Storage::Directory(d) => d.save_account(directory, json),
            Storage::Kubernetes(k) => k.save_account(directory, json).await,
        }
    }

    pub async fn load_certificate(&self) -> Result<Option<Stored>, String> {
        match self {
            Storage::Directory(d) => d.load_certificate(),
            Storage::Kubernetes(k) => k.load_certificate().await.map(|c| c.map(|(s, _)| s)),
        }
    }

    pub async fn save_certificate(&self, pem: &str) -> Result<(), String> {
        match self {
            Storage::Directory(d) => d.save_certificate(pem),
            Storage::Kubernetes(k) => k.save_certificate(pem).await,
        }
    }

    /// Makes the challenges of the order in flight known to every replica, and returns once
    /// they may answer them. One process has nothing to share.
    pub async fn publish(&self, c: &Challenges) -> Result<(), String> {
        match self {
            Storage::Directory(_) => Ok(()),
            Storage::Kubernetes(k) => k.publish(c).await,
        }
    }
}

/// A local directory, for one process.
#[derive(Debug, Clone)]
pub struct Directory {
    dir: PathBuf,
}

/// A certificate as stored: its chain and key in PEM, and what it is served as.
pub struct Stored {
    pub pem: String,
    pub certified: Arc<CertifiedKey>,
    pub not_before: i64,
    pub not_after: i64,
    pub names: Vec<String>,
}

impl Directory {
    pub fn new(dir: PathBuf) -> Self {
        Directory { dir }
    }

    /// Creates the directory (owner-only) if it is missing.
    pub fn prepare(&self) -> Result<(), String> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|e| format!("cannot create {}: {e}", self.dir.display()))
    }

    fn account_path(&self, directory: &str) -> PathBuf {
        self.dir.join(account_name(directory))
    }

    fn certificate_path(&self) -> PathBuf {
        self.dir.join("certificate.pem")
    }

    pub fn load_account(&self, directory: &str) -> Option<Vec<u8>> {
        std::fs::read(self.account_path(directory)).ok()
    }

    pub fn save_account(&self, directory: &str, json: &[u8]) -> Result<(), String> {
        write_atomic(&self.account_path(directory), json)
    }

    /// The stored certificate, if there is one that parses.
    pub fn load_certificate(&self) -> Result<Option<Stored>, String> {
        let path = self.certificate_path();
        match std::fs::read_to_string(&path) {
            Ok(pem) => parse(pem)
                .map(Some)
                .map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    pub fn save_certificate(&self, pem: &str) -> Result<(), String> {
        write_atomic(&self.certificate_path(), pem.as_bytes())
    }
}

/// The name the account of the CA at `directory` is kept under (a file, or a Secret's key):
/// a new directory URL gets a new account.
pub fn account_name(directory: &str) -> String {
    let h = hex::encode(&Sha256::digest(directory.as_bytes())[..8]);
    format!("account-{h}.json")
}

/// A chain followed by its key, checked to belong together.
pub fn parse(pem: String) -> Result<Stored, String> {
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("not valid PEM: {e}"))?;
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut pem.as_bytes())
        .map_err(|e| format!("not valid PEM: {e}"))?
        .ok_or("holds no private key")?;
    let leaf = chain.first().ok_or("holds no certificate")?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| format!("the certificate does not parse: {e}"))?;
    let names = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => {
                        Some(d.to_ascii_lowercase())
                    }
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let (not_before, not_after) = (
        cert.validity().not_before.timestamp(),
        cert.validity().not_after.timestamp(),
    );
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| format!("unsupported private key: {e}"))?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|e| format!("the key does not match the certificate: {e}"))?;
    Ok(Stored {
        pem,
        certified: Arc::new(certified),
        not_before,
        not_after,
        names,
    })
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), String> {
    crate::secret::write_owner_only(path, bytes)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn files_are_owner_only_and_a_certificate_comes_back_with_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let s = Directory::new(dir.path().join("acme"));
        s.prepare().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.path().join("acme")), 0o700);
        assert!(s.load_certificate().unwrap().is_none());

        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["Gw.Example.org".into()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let pem = format!("{}{}", cert.pem(), key.serialize_pem());
        s.save_certificate(&pem).unwrap();
        assert_eq!(mode(&dir.path().join("acme/certificate.pem")), 0o600);
        let back = s.load_certificate().unwrap().unwrap();
        assert_eq!(back.names, vec!["gw.example.org".to_string()]);
        assert!(back.not_after > back.not_before);

        s.save_account("https://ca/dir", b"{}").unwrap();
        assert_eq!(s.load_account("https://ca/dir").unwrap(), b"{}");
        assert!(s.load_account("https://other/dir").is_none());
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let a = rcgen::generate_simple_self_signed(vec!["a.example".into()]).unwrap();
        let b = rcgen::generate_simple_self_signed(vec!["b.example".into()]).unwrap();
        let pem = format!("{}{}", a.cert.pem(), b.key_pair.serialize_pem());
        let e = parse(pem).err().unwrap();
        assert!(e.contains("does not match"), "{e}");
    }
}
