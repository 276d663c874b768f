//! The listener's certificate: loaded and checked when the configuration loads (pingora's
//! rustls backend would panic on a bad file at start), then served through a resolver.

use crate::acme::{Acme, ACME_TLS_ALPN};
use rustls::server::{ClientHello, ResolvesServerCert, ServerConfig};
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
    let signing = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key_der).map_err(|e| {
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
    /// With ACME: the TLS-ALPN-01 challenge certificates of the order in flight.
    acme: Option<Arc<Acme>>,
}

impl CertResolver {
    pub fn new(ck: Arc<CertifiedKey>) -> Self {
        CertResolver {
            current: RwLock::new(ck),
            acme: None,
        }
    }

    /// A resolver that also answers TLS-ALPN-01 for `acme`'s domains.
    pub fn with_acme(ck: Arc<CertifiedKey>, acme: Arc<Acme>) -> Self {
        CertResolver {
            current: RwLock::new(ck),
            acme: Some(acme),
        }
    }

    /// The certificate served now, for the status page.
    pub fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| c.clone())
    }

    pub fn replace(&self, ck: Arc<CertifiedKey>) {
        if let Ok(mut cur) = self.current.write() {
            *cur = ck;
        }
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // A validation handshake offers acme-tls/1 alone (RFC 8737): it gets the challenge
        // certificate for its name, or no certificate at all (the handshake fails).
        if let Some(acme) = &self.acme {
            if is_acme_hello(&hello) {
                return acme.alpn_certificate(hello.server_name());
            }
        }
        self.current.read().ok().map(|c| c.clone())
    }
}

fn is_acme_hello(hello: &ClientHello<'_>) -> bool {
    hello
        .alpn()
        .is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN))
}

/// When the served certificate expires (notAfter, Unix seconds).
pub fn not_after(ck: &CertifiedKey) -> Option<i64> {
    let leaf = ck.cert.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// The listener's TLS: 1.3 and 1.2 with aws-lc-rs's AEAD suites, HTTP/1.1 by ALPN, and the
/// server's order of suites rather than the client's. Common clients (OpenSSL, Go) list
/// AES-256-GCM-SHA384 first, whose SHA-384 key schedule has no hardware support on x86 and
/// was 12% of a new connection's time in the `newconn` profile; ChaCha20 costs more per byte
/// than AES-GCM where AES instructions exist. AES-128-GCM goes first, as Go's servers do.
/// With ACME, `acme-tls/1` is offered after HTTP/1.1 (rustls picks in the server's order, so
/// an ordinary client still gets HTTP/1.1); a connection that negotiates it is closed after
/// the handshake (see `connection`).
pub fn server_config(resolver: Arc<CertResolver>) -> Result<Arc<ServerConfig>, rustls::Error> {
    let acme = resolver.acme.is_some();
    use rustls::crypto::aws_lc_rs::{cipher_suite as cs, default_provider};
    let provider = rustls::crypto::CryptoProvider {
        cipher_suites: vec![
            cs::TLS13_AES_128_GCM_SHA256,
            cs::TLS13_AES_256_GCM_SHA384,
            cs::TLS13_CHACHA20_POLY1305_SHA256,
            cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        ],
        ..default_provider()
    };
    let mut config = ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.ignore_client_order = true;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    if acme {
        config.alpn_protocols.push(ACME_TLS_ALPN.to_vec());
    }
    Ok(Arc::new(config))
}
