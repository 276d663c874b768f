//! The listener's certificate: loaded and checked when the configuration loads (pingora's
//! rustls backend would panic on a bad file at start), then served through a resolver.

use rustls::server::{ClientHello, ResolvesServerCert};
pub use rustls::sign::CertifiedKey;
use std::path::Path;
use std::sync::{Arc, RwLock};

/// Loads a PEM chain and its key and checks that they belong together. The error names the
/// configuration key at fault (`tls_cert` or `tls_key`) and why.
pub fn load_certified_key(
    cert: &Path,
    key: &Path,
) -> Result<Arc<CertifiedKey>, (&'static str, String)> {
    let read = |p: &Path, which: &'static str| {
        std::fs::read(p).map_err(|e| (which, format!("cannot read {}: {e}", p.display())))
    };
    let cert_pem = read(cert, "tls_cert")?;
    let key_pem = read(key, "tls_key")?;
    let chain: Vec<_> = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| {
            (
                "tls_cert",
                format!("{} is not valid PEM: {e}", cert.display()),
            )
        })?;
    if chain.is_empty() {
        return Err((
            "tls_cert",
            format!("{} holds no PEM certificate", cert.display()),
        ));
    }
    let key_der = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| {
            (
                "tls_key",
                format!("{} is not valid PEM: {e}", key.display()),
            )
        })?
        .ok_or_else(|| {
            (
                "tls_key",
                format!("{} holds no PEM private key", key.display()),
            )
        })?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key_der).map_err(|e| {
        (
            "tls_key",
            format!("{}: unsupported private key: {e}", key.display()),
        )
    })?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match().map_err(|e| {
        (
            "tls_key",
            format!(
                "{} does not match the certificate in {}: {e}",
                key.display(),
                cert.display()
            ),
        )
    })?;
    Ok(Arc::new(ck))
}

/// Serves the current certificate on every handshake; swapping it takes effect on the next
/// connection without touching open ones.
#[derive(Debug)]
pub struct CertResolver {
    current: RwLock<Arc<CertifiedKey>>,
}

impl CertResolver {
    pub fn new(ck: Arc<CertifiedKey>) -> Self {
        CertResolver {
            current: RwLock::new(ck),
        }
    }

    pub fn replace(&self, ck: Arc<CertifiedKey>) {
        if let Ok(mut cur) = self.current.write() {
            *cur = ck;
        }
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| c.clone())
    }
}

/// When the served certificate expires (notAfter, Unix seconds).
pub fn not_after(ck: &CertifiedKey) -> Option<i64> {
    let leaf = ck.cert.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    Some(cert.validity().not_after.timestamp())
}
