//! The ACME conversation, through instant-acme: the account (created once, then loaded from
//! storage), and one order from new-order to the downloaded chain. instant-acme's requests are
//! carried by reqwest (already in the tree) so that there is one rustls, one hyper and one
//! crypto provider (ring), and so that `ca_roots` and the CA's `Retry-After` are ours to see.

use super::{challenge, storage::Storage, Acme, AcmeConfig, Challenges};
use crate::fetch::causes;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, BodyWrapper, BytesResponse, ChallengeType,
    ExternalAccountKey, HttpClient, Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use sha2::Digest;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// The largest answer read from the CA: directories, orders and chains are a few KiB.
const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// Why an order failed, and when the CA asked to be called again (`Retry-After` on a refusal,
/// e.g. a rate limit).
#[derive(Debug)]
pub struct Failure {
    pub reason: String,
    pub retry_after: Option<SystemTime>,
}

/// Carries instant-acme's requests with reqwest and remembers the last `Retry-After` the CA
/// sent with an error.
#[derive(Clone)]
pub struct Http {
    client: reqwest::Client,
    retry_after: Arc<Mutex<Option<SystemTime>>>,
}

impl Http {
    /// The public roots plus each PEM file of `ca_roots`.
    pub fn new(config: &AcmeConfig) -> Result<Self, String> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .user_agent(concat!("fluxgate/", env!("CARGO_PKG_VERSION")));
        for path in &config.ca_roots {
            let pem =
                std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| format!("{}: not a PEM certificate: {e}", path.display()))?;
            if certs.is_empty() {
                return Err(format!("{} holds no PEM certificate", path.display()));
            }
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        Ok(Http {
            client: b
                .build()
                .map_err(|e| format!("cannot build the HTTP client: {e}"))?,
            retry_after: Arc::default(),
        })
    }

    fn take_retry_after(&self) -> Option<SystemTime> {
        self.retry_after.lock().ok().and_then(|mut r| r.take())
    }

    /// Fetches the directory: what `check` does to prove the CA is reachable and trusted.
    pub async fn directory(&self, url: &str) -> Result<serde_json::Value, String> {
        let (_, body) =
            crate::fetch::get(&self.client, url, "application/json", MAX_ANSWER_BYTES).await?;
        let v: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| format!("the directory is not JSON: {e}"))?;
        if v.get("newOrder").is_none() {
            return Err("not an ACME directory (no newOrder)".into());
        }
        Ok(v)
    }
}

impl HttpClient for Http {
    fn request(
        &self,
        req: http::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let this = self.clone();
        Box::pin(async move {
            let other = |e: String| instant_acme::Error::Other(e.into());
            let (parts, body) = req.into_parts();
            let body = match body.collect().await {
                Ok(b) => b.to_bytes(),
                Err(never) => match never {},
            };
            let mut rsp = this
                .client
                .request(parts.method, parts.uri.to_string())
                .headers(parts.headers)
                .body(body)
                .send()
                .await
                .map_err(|e| other(causes(&e)))?;
            let status = rsp.status();
            if !status.is_success() {
                if let Some(t) = retry_after(rsp.headers()) {
                    if let Ok(mut r) = this.retry_after.lock() {
                        *r = Some(t);
                    }
                }
            }
            let mut out = http::Response::builder().status(status);
            for (k, v) in rsp.headers() {
                out = out.header(k, v);
            }
            let mut read = Vec::new();
            while let Some(chunk) = rsp.chunk().await.map_err(|e| other(e.to_string()))? {
                if read.len() + chunk.len() > MAX_ANSWER_BYTES {
                    return Err(other(format!(
                        "the CA's answer is larger than {MAX_ANSWER_BYTES} bytes"
                    )));
                }
                read.extend_from_slice(&chunk);
            }
            let out = out
                .body(Full::new(Bytes::from(read)))
                .map_err(instant_acme::Error::Http)?;
            Ok(BytesResponse::from(out))
        })
    }
}

/// `Retry-After` as seconds or an HTTP date.
fn retry_after(h: &http::HeaderMap) -> Option<SystemTime> {
    let v = h.get(http::header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(s) = v.parse::<u64>() {
        return Some(SystemTime::now() + Duration::from_secs(s));
    }
    httpdate(v)
}

fn httpdate(v: &str) -> Option<SystemTime> {
    httpdate::parse_http_date(v).ok()
}

/// The account: loaded from storage, or registered (and stored) the first time.
pub async fn account(
    http: &Http,
    config: &AcmeConfig,
    storage: &Storage,
    fresh: bool,
) -> Result<Account, String> {
    if let Some(json) = storage
        .load_account(&config.directory)
        .await?
        .filter(|_| !fresh)
    {
        let creds: AccountCredentials = serde_json::from_slice(&json)
            .map_err(|e| format!("the stored account does not parse: {e}"))?;
        return Account::builder_with_http(Box::new(http.clone()))
            .from_credentials(creds)
            .await
            .map_err(|e| format!("cannot load the account: {e}"));
    }
    let contact = config.email.as_ref().map(|e| format!("mailto:{e}"));
    let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
    let eab = config
        .eab
        .as_ref()
        .map(|e| ExternalAccountKey::new(e.kid.clone(), &e.hmac_key));
    let (account, creds) = Account::builder_with_http(Box::new(http.clone()))
        .create(
            &NewAccount {
                contact: &contact,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            config.directory.clone(),
            eab.as_ref(),
        )
        .await
        .map_err(|e| format!("cannot register an account: {e}"))?;
    let json = serde_json::to_vec(&creds).map_err(|e| e.to_string())?;
    storage.save_account(&config.directory, &json).await?;
    tracing::info!(account = account.id(), "ACME account registered");
    Ok(account)
}

/// One order for the configured domains, answered by HTTP-01 when `http_listen` is set and
/// by TLS-ALPN-01 otherwise. Returns the chain and its key in PEM, ready to store.
pub async fn order(acme: &Arc<Acme>, http: &Http, storage: &Storage) -> Result<String, Failure> {
    let fail = |reason: String| Failure {
        reason,
        retry_after: http.take_retry_after(),
    };
    let config = &acme.config;
    let ids: Vec<Identifier> = config
        .domains
        .iter()
        .map(|d| Identifier::Dns(d.clone()))
        .collect();
    let stored = account(http, config, storage, false).await.map_err(fail)?;
    let _in_flight = acme.begin_order();
    let mut order = match stored.new_order(&NewOrder::new(&ids)).await {
        // The CA forgot the account (a test CA restarted, an account deactivated): register
        // again, once.
        Err(instant_acme::Error::Api(p))
            if p.r#type.as_deref() == Some("urn:ietf:params:acme:error:accountDoesNotExist") =>
        {
            tracing::warn!("the CA does not know the stored account: registering a new one");
            let fresh = account(http, config, storage, true).await.map_err(fail)?;
            fresh.new_order(&NewOrder::new(&ids)).await
        }
        other => other,
    }
    .map_err(|e| fail(format!("new order refused: {e}")))?;
    let kind = if config.http_listen.is_some() {
        ChallengeType::Http01
    } else {
        ChallengeType::TlsAlpn01
    };
    // First the answers, all of them, served here and shared with the other replicas; only
    // then is the CA told to validate, since its validation may reach any replica.
    let mut answers = Challenges {
        id: hex::encode(&sha2::Sha256::digest(order.url().as_bytes())[..8]),
        ..Challenges::default()
    };
    let mut authorizations = order.authorizations();
    while let Some(a) = authorizations.next().await {
        let mut a = a.map_err(|e| fail(format!("cannot read an authorization: {e}")))?;
        match a.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            s => return Err(fail(format!("an authorization is {s:?}"))),
        }
        let ch = a
            .challenge(kind.clone())
            .ok_or_else(|| fail(format!("the CA offers no {kind:?} challenge")))?;
        let domain = ch.identifier().to_string();
        let ka = ch.key_authorization();
        match kind {
            ChallengeType::Http01 => {
                answers
                    .http
                    .insert(ch.token.clone(), ka.as_str().to_string());
            }
            _ => {
                answers
                    .alpn
                    .insert(domain, hex::encode(ka.digest().as_ref()));
            }
        }
    }
    acme.answer(&answers).map_err(fail)?;
    storage.publish(&answers).await.map_err(fail)?;
    let mut authorizations = order.authorizations();
    while let Some(a) = authorizations.next().await {
        let mut a = a.map_err(|e| fail(format!("cannot read an authorization: {e}")))?;
        if a.status != AuthorizationStatus::Pending {
            continue;
        }
        let mut ch = a
            .challenge(kind.clone())
            .ok_or_else(|| fail(format!("the CA offers no {kind:?} challenge")))?;
        let domain = ch.identifier().to_string();
        ch.set_ready()
            .await
            .map_err(|e| fail(format!("cannot answer the challenge for {domain}: {e}")))?;
    }
    let polling = RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .backoff(1.5)
        .timeout(Duration::from_secs(90));
    let status = order
        .poll_ready(&polling)
        .await
        .map_err(|e| fail(format!("the order did not become ready: {e}")))?;
    if status != OrderStatus::Ready {
        return Err(fail(format!(
            "the order is {status:?}: validation failed (is {} reachable from the CA?)",
            config.domains.join(", ")
        )));
    }
    let (csr, key) = challenge::csr(&config.domains).map_err(fail)?;
    order
        .finalize_csr(&csr)
        .await
        .map_err(|e| fail(format!("finalize refused: {e}")))?;
    let chain = order
        .poll_certificate(&polling)
        .await
        .map_err(|e| fail(format!("no certificate: {e}")))?;
    let key = rustls::pki_types::PrivatePkcs8KeyDer::from(key);
    let key_pem = pem_block("PRIVATE KEY", key.secret_pkcs8_der());
    Ok(format!("{}\n{key_pem}", chain.trim_end()))
}

fn pem_block(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut s = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        s.push_str(std::str::from_utf8(line).unwrap_or_default());
        s.push('\n');
    }
    s.push_str(&format!("-----END {label}-----\n"));
    s
}

/// The certificate's identifier for ACME Renewal Information (RFC 9773 §4.1): its authority
/// key identifier and serial number.
pub fn certificate_id(
    leaf: &rustls::pki_types::CertificateDer<'_>,
) -> Option<instant_acme::CertificateIdentifier<'static>> {
    use x509_parser::extensions::ParsedExtension;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    let aki = cert
        .iter_extensions()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(a) => a.key_identifier.as_ref().map(|k| k.0),
            _ => None,
        })?;
    Some(
        instant_acme::CertificateIdentifier::new(
            rustls::pki_types::Der::from_slice(aki),
            rustls::pki_types::Der::from_slice(cert.tbs_certificate.raw_serial()),
        )
        .into_owned(),
    )
}

/// When the CA suggests renewing (RFC 9773), if its directory offers renewal information:
/// a random moment in the suggested window, as §4.2 asks. `None` when it does not, or cannot
/// be asked now; the caller then renews at two thirds of the lifetime.
pub async fn suggested_renewal(
    http: &Http,
    config: &AcmeConfig,
    storage: &Storage,
    leaf: &rustls::pki_types::CertificateDer<'_>,
) -> Option<i64> {
    let id = certificate_id(leaf)?;
    let json = storage.load_account(&config.directory).await.ok()??;
    let creds: AccountCredentials = serde_json::from_slice(&json).ok()?;
    let account = Account::builder_with_http(Box::new(http.clone()))
        .from_credentials(creds)
        .await
        .ok()?;
    match account.renewal_info(&id).await {
        Ok((info, _)) => Some(in_window(
            info.suggested_window.start.unix_timestamp(),
            info.suggested_window.end.unix_timestamp(),
            rand::random(),
        )),
        Err(instant_acme::Error::Unsupported(_)) => None,
        Err(e) => {
            tracing::warn!("cannot read the CA's renewal information: {e}");
            None
        }
    }
}

/// A moment in `[start, end]`, `at` (0..1) of the way through.
pub fn in_window(start: i64, end: i64, at: f64) -> i64 {
    start + ((end - start).max(0) as f64 * at.clamp(0.0, 1.0)) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_information_names_the_issuer_key_and_serial() {
        // A leaf signed by a CA whose certificate has a subject key identifier.
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.key_identifier_method = rcgen::KeyIdMethod::PreSpecified(vec![0x69, 0x88, 0x5b]);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut leaf = rcgen::CertificateParams::new(vec!["a.example".into()]).unwrap();
        leaf.serial_number = Some(rcgen::SerialNumber::from_slice(&[
            0x00, 0x87, 0x65, 0x43, 0x21,
        ]));
        leaf.use_authority_key_identifier_extension = true;
        let leaf = leaf.signed_by(&key, &ca_cert, &ca_key).unwrap();
        let id = certificate_id(leaf.der()).unwrap();
        // RFC 9773 §4.1's example encodes keyIdentifier 69:88:5B as "aYhb" and serial
        // 00:87:65:43:21 as "AIdlQyE".
        assert_eq!(id.to_string(), "aYhb.AIdlQyE");
    }

    #[test]
    fn the_renewal_moment_falls_in_the_suggested_window() {
        assert_eq!(in_window(100, 200, 0.0), 100);
        assert_eq!(in_window(100, 200, 0.5), 150);
        assert_eq!(in_window(100, 200, 1.0), 200);
        assert_eq!(
            in_window(200, 100, 0.7),
            200,
            "an inverted window: its start"
        );
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut h = http::HeaderMap::new();
        h.insert(http::header::RETRY_AFTER, "120".parse().unwrap());
        let t = retry_after(&h).unwrap();
        let d = t.duration_since(SystemTime::now()).unwrap();
        assert!(d > Duration::from_secs(110) && d <= Duration::from_secs(120));
        h.insert(
            http::header::RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        let t = retry_after(&h).unwrap();
        assert_eq!(
            t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs(),
            1445412480
        );
        h.insert(http::header::RETRY_AFTER, "soon".parse().unwrap());
        assert!(retry_after(&h).is_none());
    }
}
