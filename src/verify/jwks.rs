//! ID tokens (gcr, generic-oidc): the bearer token of a request, the signing keys of its issuer,
//! and the checks of the token against them.
//!
//! Keys come from a JWKS URL, from a file, or from an issuer's OIDC discovery document. They are
//! cached and shared: every receiver and every reloaded configuration naming the same source use
//! one [`KeySet`], so a reload does not refetch and Google's keys are fetched once for all gcr
//! receivers. Keys are fetched lazily, at the first token that needs them: loading a
//! configuration (and `fluxgate check --offline`) never depends on an issuer being reachable,
//! and an issuer that is down at start-up costs only 503s until it is back, which providers
//! retry.
//!
//! When the keys are fetched again:
//! - after their time to live, taken from `Cache-Control: max-age` (less `Age`) and bounded,
//!   so neither a `no-cache` answer nor a year-long one changes the rhythm much;
//! - when a token names a key the set lacks (issuers rotate keys), but at most once per
//!   [`Policy::min_refetch`], so tokens with made-up key ids cannot make fluxgate hammer the
//!   issuer;
//! - never concurrently: requests that miss together wait for one fetch.
//!
//! A fetch that fails keeps the keys already held, however old: an issuer's outage must not
//! lock its senders out.

use super::single_header;
use crate::metrics;
use crate::refusal::{Cause, Refusal};
use http::HeaderMap;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use jsonwebtoken::{errors::ErrorKind, Algorithm, DecodingKey, Header, Validation};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, LazyLock, Mutex, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Signing-key documents are small; Google's is about 2 KiB.
const MAX_DOCUMENT: usize = 1024 * 1024;

/// Where an issuer's keys are read from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Source {
    /// A JWKS document (`{"keys": [...]}`) at a URL.
    Url(String),
    /// A JWKS document in a file, re-read like a URL is refetched.
    File(PathBuf),
    /// An issuer's OIDC discovery document, `{issuer}/.well-known/openid-configuration`, whose
    /// `jwks_uri` names the keys, as go-oidc (Flux's generic-oidc) finds them.
    Discovery(String),
}

impl Source {
    /// A `jwks` option: an http(s) URL, or else the path of a file.
    pub fn parse(value: &str) -> Result<Source, String> {
        if value.trim().is_empty() {
            return Err("empty; give an http(s) URL or a file".into());
        }
        if value.starts_with("https://") || value.starts_with("http://") {
            check_url(value)?;
            return Ok(Source::Url(value.to_string()));
        }
        if value.contains("://") {
            return Err(format!("{value:?} is neither an http(s) URL nor a file"));
        }
        Ok(Source::File(PathBuf::from(value)))
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Url(u) | Source::Discovery(u) => f.write_str(u),
            Source::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// An http(s) URL with a host, as an issuer or key URL must be.
pub fn check_url(url: &str) -> Result<(), String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http" | "https"), Some(h)) if !h.is_empty() => Ok(()),
        _ => Err(format!(
            "{url:?} must be an http:// or https:// URL with a host"
        )),
    }
}

/// How long keys are kept and how often they may be fetched.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub min_ttl: Duration,
    pub max_ttl: Duration,
    /// Without a `max-age`.
    pub default_ttl: Duration,
    /// The shortest time between two fetches that were not due to the keys' age: for a key id
    /// the set lacks, or after a failed fetch.
    pub min_refetch: Duration,
}

pub const POLICY: Policy = Policy {
    min_ttl: Duration::from_secs(5 * 60),
    max_ttl: Duration::from_secs(24 * 3600),
    default_ttl: Duration::from_secs(3600),
    min_refetch: Duration::from_secs(10),
};

/// One verification key and the algorithms it may verify.
struct Key {
    kid: Option<String>,
    algorithms: Vec<Algorithm>,
    key: DecodingKey,
}

/// The keys in force and when they were fetched.
#[derive(Default)]
struct Snapshot {
    keys: Vec<Arc<Key>>,
    /// The algorithms the issuer says it signs ID tokens with (discovery); `None`: any the
    /// key allows.
    algorithms: Option<Vec<Algorithm>>,
    /// When the keys are due for a refetch; `None` until the first successful fetch.
    expires: Option<Instant>,
    /// The last fetch, successful or not.
    attempted: Option<Instant>,
    /// Whether the last fetch failed.
    failed: bool,
    /// Counts fetches, so a request that waited for another's fetch uses its result.
    generation: u64,
}

/// Why no key could verify a token.
#[derive(Debug, PartialEq)]
enum KeyError {
    /// The issuer does not publish the key the token names.
    Unknown,
    /// The key the token names cannot verify the token's algorithm, or the issuer does not
    /// sign with it.
    Algorithm(Algorithm),
    /// There are no keys: none could be fetched yet.
    Unavailable,
}

/// The signing keys of one source, cached.
pub struct KeySet {
    source: Source,
    policy: Policy,
    state: RwLock<Arc<Snapshot>>,
    /// Held while fetching, so concurrent misses share one fetch.
    fetching: tokio::sync::Mutex<()>,
}

impl fmt::Debug for KeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeySet({})", self.source)
    }
}

static SHARED: LazyLock<Mutex<HashMap<Source, Weak<KeySet>>>> = LazyLock::new(Default::default);

static CLIENT: LazyLock<Result<reqwest::Client, String>> = LazyLock::new(|| {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    // Short: keys are fetched while a provider waits for its answer (Pub/Sub gives up on a
    // push after 10 seconds by default).
    reqwest::Client::builder()
        .use_rustls_tls()
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(5))
        .user_agent(concat!("fluxgate/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
});

/// What one fetch gave.
struct Fetched {
    keys: Vec<Arc<Key>>,
    algorithms: Option<Vec<Algorithm>>,
    ttl: Duration,
}

/// What a token must show besides a good signature.
pub struct Expect<'a> {
    /// `iss` must be one of these.
    pub issuers: &'a [&'a str],
    /// `aud` must be, or contain, this.
    pub audience: &'a str,
    /// The algorithms the verifier accepts at all.
    pub algorithms: &'a [Algorithm],
    /// Whether `nbf` is checked, with this leeway for clock skew.
    pub nbf_leeway: Option<Duration>,
}

/// Every asymmetric algorithm jsonwebtoken verifies. Symmetric ones never: a key published in
/// a JWKS is public, so anyone could sign with it.
pub const ASYMMETRIC: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

impl KeySet {
    /// The key set of `source`, shared with every other user of the same source.
    pub fn shared(source: Source) -> Arc<KeySet> {
        let mut shared = SHARED.lock().unwrap_or_else(|p| p.into_inner());
        shared.retain(|_, k| k.strong_count() > 0);
        if let Some(k) = shared.get(&source).and_then(Weak::upgrade) {
            return k;
        }
        let k = Arc::new(KeySet::new(source.clone(), POLICY));
        shared.insert(source, Arc::downgrade(&k));
        k
    }

    /// A key set of its own, with its own policy.
    pub fn new(source: Source, policy: Policy) -> KeySet {
        KeySet {
            source,
            policy,
            state: RwLock::new(Arc::default()),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    pub fn source(&self) -> &Source {
        &self.source
    }

    /// Fetches the keys once, apart from the cache, for `fluxgate check`: how many there are,
    /// or why there are none.
    pub async fn probe(&self) -> Result<usize, String> {
        let fetched = self.fetch().await?;
        if fetched.keys.is_empty() {
            return Err("the key set holds no usable key".into());
        }
        Ok(fetched.keys.len())
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        self.state
            .read()
            .map(|s| s.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Verifies `token`'s signature with this set's keys, then its claims; the claims, or a
    /// refusal that says which check failed and never quotes the token.
    pub async fn verify(
        &self,
        token: &str,
        expect: &Expect<'_>,
    ) -> Result<Map<String, Value>, Refusal> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| Refusal::unauthorized("malformed token: not a signed JWT"))?;
        if !expect.algorithms.contains(&header.alg) {
            return Err(Refusal::unauthorized(format!(
                "token algorithm {:?} is not accepted",
                header.alg
            )));
        }
        let keys = self.keys_for(&header).await.map_err(|e| match e {
            KeyError::Unknown => Refusal::unauthorized("token signed with an unknown key"),
            KeyError::Algorithm(alg) => Refusal::unauthorized(format!(
                "token algorithm {alg:?} does not match the issuer's key"
            )),
            KeyError::Unavailable => Refusal::new(
                503,
                Cause::KeysUnavailable,
                "the token issuer's signing keys cannot be fetched; try again later",
            ),
        })?;
        let mut validation = Validation::new(header.alg);
        // Neither Google's validator (gcr) nor go-oidc (generic-oidc) allows any skew on exp.
        validation.leeway = 0;
        validation.validate_nbf = false;
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.set_issuer(expect.issuers);
        validation.set_audience(&[expect.audience]);
        let mut last = ErrorKind::InvalidSignature;
        // Several keys only when the token names none; the first that verifies wins.
        for key in keys {
            match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation) {
                Ok(data) => {
                    check_nbf(&data.claims, expect.nbf_leeway)?;
                    return Ok(data.claims);
                }
                Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature) => {}
                Err(e) => {
                    last = e.into_kind();
                    break;
                }
            }
        }
        Err(Refusal::unauthorized(reason(&last)))
    }

    /// The keys that may have signed a token with `header`, fetching when they are stale or
    /// the token names a key the set lacks.
    async fn keys_for(&self, header: &Header) -> Result<Vec<Arc<Key>>, KeyError> {
        let kid = header.kid.as_deref();
        let snap = self.snapshot();
        let fresh = snap.expires.is_some_and(|e| Instant::now() < e);
        if fresh {
            match snap.find(kid, header.alg) {
                Err(KeyError::Unknown) => {}
                found => return found,
            }
        }
        let snap = self.refetch(snap.generation).await;
        if snap.keys.is_empty() {
            return Err(KeyError::Unavailable);
        }
        snap.find(kid, header.alg)
    }

    /// Fetches the keys unless another request did while this one waited, or the last fetch
    /// was too recent; the keys in force afterwards.
    async fn refetch(&self, seen: u64) -> Arc<Snapshot> {
        let _turn = self.fetching.lock().await;
        let snap = self.snapshot();
        if snap.generation != seen {
            return snap;
        }
        let now = Instant::now();
        let due = snap.expires.is_none_or(|e| now >= e);
        let recent = snap
            .attempted
            .is_some_and(|t| now.duration_since(t) < self.policy.min_refetch);
        // Stale keys are refetched on time unless the last attempt just failed; a missing kid
        // only after the pause.
        if recent && (!due || snap.failed) {
            return snap;
        }
        let fetched = self.fetch().await;
        let m = &metrics::get().key_refreshes;
        let source = self.source.to_string();
        let next = match fetched {
            Ok(f) => {
                m.with_label_values(&[source.as_str(), "ok"]).inc();
                tracing::debug!(source = %source, keys = f.keys.len(), ttl_s = f.ttl.as_secs(), "signing keys fetched");
                Snapshot {
                    keys: f.keys,
                    algorithms: f.algorithms,
                    expires: Some(now + f.ttl),
                    attempted: Some(now),
                    failed: false,
                    generation: snap.generation + 1,
                }
            }
            Err(e) => {
                m.with_label_values(&[source.as_str(), "failed"]).inc();
                tracing::warn!(
                    source = %source,
                    keys = snap.keys.len(),
                    "fetching signing keys failed: {e}; keeping the keys held"
                );
                Snapshot {
                    keys: snap.keys.clone(),
                    algorithms: snap.algorithms.clone(),
                    expires: snap.expires,
                    attempted: Some(now),
                    failed: true,
                    generation: snap.generation + 1,
                }
            }
        };
        let next = Arc::new(next);
        match self.state.write() {
            Ok(mut s) => *s = next.clone(),
            Err(p) => *p.into_inner() = next.clone(),
        }
        next
    }

    async fn fetch(&self) -> Result<Fetched, String> {
        match &self.source {
            Source::File(p) => {
                let text = tokio::fs::read(p)
                    .await
                    .map_err(|e| format!("cannot read {}: {e}", p.display()))?;
                Ok(Fetched {
                    keys: parse_jwks(&text).map_err(|e| format!("{}: {e}", p.display()))?,
                    algorithms: None,
                    // Cheap to read again, and edits should show soon.
                    ttl: self.policy.min_ttl,
                })
            }
            Source::Url(u) => {
                let (headers, body) = get(u).await?;
                Ok(Fetched {
                    keys: parse_jwks(&body).map_err(|e| format!("{u}: {e}"))?,
                    algorithms: None,
                    ttl: ttl(&headers, &self.policy),
                })
            }
            Source::Discovery(issuer) => {
                let url = format!(
                    "{}/.well-known/openid-configuration",
                    issuer.trim_end_matches('/')
                );
                let (_, body) = get(&url).await?;
                let d = Discovery::parse(&body, issuer).map_err(|e| format!("{url}: {e}"))?;
                let (headers, body) = get(&d.jwks_uri).await?;
                Ok(Fetched {
                    keys: parse_jwks(&body).map_err(|e| format!("{}: {e}", d.jwks_uri))?,
                    algorithms: Some(d.algorithms),
                    ttl: ttl(&headers, &self.policy),
                })
            }
        }
    }
}

impl Snapshot {
    /// The keys a token naming `kid` (or none) and signed with `alg` may have been signed with.
    fn find(&self, kid: Option<&str>, alg: Algorithm) -> Result<Vec<Arc<Key>>, KeyError> {
        let named: Vec<&Arc<Key>> = self
            .keys
            .iter()
            .filter(|k| kid.is_none() || k.kid.as_deref() == kid)
            .collect();
        if named.is_empty() {
            return Err(if self.keys.is_empty() {
                KeyError::Unavailable
            } else {
                KeyError::Unknown
            });
        }
        if self.algorithms.as_ref().is_some_and(|a| !a.contains(&alg)) {
            return Err(KeyError::Algorithm(alg));
        }
        let usable: Vec<Arc<Key>> = named
            .into_iter()
            .filter(|k| k.algorithms.contains(&alg))
            .cloned()
            .collect();
        if usable.is_empty() {
            return Err(KeyError::Algorithm(alg));
        }
        Ok(usable)
    }
}

async fn get(url: &str) -> Result<(HeaderMap, Vec<u8>), String> {
    let client = CLIENT.as_ref().map_err(Clone::clone)?;
    crate::fetch::get(client, url, "application/json", MAX_DOCUMENT).await
}

/// The parts of an OIDC discovery document go-oidc uses.
struct Discovery {
    jwks_uri: String,
    algorithms: Vec<Algorithm>,
}

impl Discovery {
    fn parse(body: &[u8], issuer: &str) -> Result<Discovery, String> {
        #[derive(serde::Deserialize)]
        struct Doc {
            #[serde(default)]
            issuer: String,
            #[serde(default)]
            jwks_uri: String,
            #[serde(default)]
            id_token_signing_alg_values_supported: Vec<String>,
        }
        let doc: Doc = serde_json::from_slice(body)
            .map_err(|e| format!("not an OIDC discovery document: {e}"))?;
        // As go-oidc: a document naming another issuer is not this issuer's.
        if doc.issuer != issuer {
            return Err(format!(
                "the discovery document names issuer {:?}, not {issuer:?}",
                doc.issuer
            ));
        }
        if doc.jwks_uri.is_empty() {
            return Err("the discovery document has no jwks_uri".into());
        }
        check_url(&doc.jwks_uri).map_err(|e| format!("jwks_uri: {e}"))?;
        let mut algorithms: Vec<Algorithm> = doc
            .id_token_signing_alg_values_supported
            .iter()
            .filter_map(|a| Algorithm::from_str(a).ok())
            .filter(|a| ASYMMETRIC.contains(a))
            .collect();
        // go-oidc's default when the issuer names none it supports.
        if algorithms.is_empty() {
            algorithms.push(Algorithm::RS256);
        }
        Ok(Discovery {
            jwks_uri: doc.jwks_uri,
            algorithms,
        })
    }
}

/// The signing keys of a JWKS document. Keys fluxgate cannot use (encryption keys, symmetric
/// keys, curves jsonwebtoken lacks) are skipped rather than failing the whole set.
fn parse_jwks(body: &[u8]) -> Result<Vec<Arc<Key>>, String> {
    #[derive(serde::Deserialize)]
    struct Doc {
        keys: Vec<Value>,
    }
    let doc: Doc = serde_json::from_slice(body)
        .map_err(|e| format!("not a JWKS document ({{\"keys\": [...]}}): {e}"))?;
    let keys: Vec<Arc<Key>> = doc
        .keys
        .into_iter()
        .filter(|k| k.get("use").is_none_or(|u| u == "sig"))
        .filter_map(|k| serde_json::from_value::<Jwk>(k).ok())
        .filter_map(|jwk| {
            let algorithms = algorithms(&jwk);
            let key = DecodingKey::from_jwk(&jwk).ok()?;
            (!algorithms.is_empty()).then(|| {
                Arc::new(Key {
                    kid: jwk.common.key_id,
                    algorithms,
                    key,
                })
            })
        })
        .collect();
    if keys.is_empty() {
        return Err("no signing key fluxgate can use in it".into());
    }
    Ok(keys)
}

/// What a key may verify: what its type and curve allow, narrowed to its `alg` if it names one.
fn algorithms(jwk: &Jwk) -> Vec<Algorithm> {
    use Algorithm::*;
    let by_type = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => vec![RS256, RS384, RS512, PS256, PS384, PS512],
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => vec![ES256],
            EllipticCurve::P384 => vec![ES384],
            _ => vec![],
        },
        AlgorithmParameters::OctetKeyPair(p) => match p.curve {
            EllipticCurve::Ed25519 => vec![EdDSA],
            _ => vec![],
        },
        AlgorithmParameters::OctetKey(_) => vec![],
    };
    match jwk.common.key_algorithm {
        None => by_type,
        Some(named) => match Algorithm::from_str(&named.to_string()) {
            Ok(a) if by_type.contains(&a) => vec![a],
            _ => vec![],
        },
    }
}

/// How long a fetched document may be kept: `max-age` less `Age`, bounded by the policy.
fn ttl(headers: &HeaderMap, policy: &Policy) -> Duration {
    let directives: Vec<String> = headers
        .get_all(http::header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|d| d.trim().to_ascii_lowercase())
        .collect();
    if directives
        .iter()
        .any(|d| d == "no-cache" || d == "no-store")
    {
        return policy.min_ttl;
    }
    let Some(max_age) = directives.iter().find_map(|d| {
        d.strip_prefix("max-age=")?
            .trim_matches('"')
            .parse::<u64>()
            .ok()
    }) else {
        return policy.default_ttl;
    };
    let age = headers
        .get(http::header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    Duration::from_secs(max_age.saturating_sub(age)).clamp(policy.min_ttl, policy.max_ttl)
}

/// go-oidc's check of `nbf`: a token is refused only when `nbf` is later than now plus the
/// leeway. Google's validator does not look at `nbf`.
fn check_nbf(claims: &Map<String, Value>, leeway: Option<Duration>) -> Result<(), Refusal> {
    let (Some(leeway), Some(nbf)) = (leeway, claims.get("nbf").and_then(Value::as_f64)) else {
        return Ok(());
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    if nbf > now + leeway.as_secs_f64() {
        return Err(Refusal::unauthorized("token not valid yet (nbf)"));
    }
    Ok(())
}

/// The refusal's reason for a token jsonwebtoken rejected.
fn reason(kind: &ErrorKind) -> String {
    match kind {
        ErrorKind::InvalidSignature
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidRsaKey(_) => "bad token signature".into(),
        ErrorKind::ExpiredSignature => "token expired".into(),
        ErrorKind::InvalidAudience => "wrong token audience".into(),
        ErrorKind::InvalidIssuer => "wrong token issuer".into(),
        ErrorKind::MissingRequiredClaim(c) => format!("token has no {c} claim"),
        ErrorKind::InvalidAlgorithm => "token algorithm does not match the issuer's key".into(),
        ErrorKind::InvalidToken
        | ErrorKind::Base64(_)
        | ErrorKind::Json(_)
        | ErrorKind::Utf8(_) => "malformed token".into(),
        _ => "token rejected".into(),
    }
}

/// The bearer token of `Authorization`, after the exact, case-sensitive `Bearer ` that Flux
/// requires. generic-oidc trims what follows, as Flux does; gcr takes it as it is.
pub(super) fn bearer(head: &HeaderMap, trim: bool) -> Result<&str, Refusal> {
    let value = single_header(head, "Authorization")?
        .ok_or_else(|| Refusal::unauthorized("missing bearer token (Authorization)"))?;
    let value = std::str::from_utf8(value)
        .map_err(|_| Refusal::unauthorized("Authorization is not a bearer token"))?;
    // HTTP drops the space after a bare `Bearer`: the token is missing, not the scheme.
    if value == "Bearer" {
        return Err(Refusal::unauthorized("empty bearer token (Authorization)"));
    }
    let token = value
        .strip_prefix("Bearer ")
        .ok_or_else(|| Refusal::unauthorized("Authorization is not a bearer token"))?;
    let token = if trim { token.trim() } else { token };
    if token.is_empty() {
        return Err(Refusal::unauthorized("empty bearer token (Authorization)"));
    }
    Ok(token)
}

#[cfg(test)]
pub(crate) mod test_support {
    //! An issuer for tests: a P-256 key pair (small and quick to generate), its JWKS document,
    //! and tokens signed with it.

    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use jsonwebtoken::{EncodingKey, Header};

    pub struct TestKey {
        pub kid: String,
        pem: String,
        pub jwk: Value,
    }

    impl TestKey {
        pub fn new(kid: &str) -> TestKey {
            let pair = rcgen::KeyPair::generate().unwrap();
            // An uncompressed point: 0x04, then x and y.
            let point = pair.public_key_raw();
            let jwk = serde_json::json!({
                "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
                "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
                "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
            });
            TestKey {
                kid: kid.to_string(),
                pem: pair.serialize_pem(),
                jwk,
            }
        }

        pub fn sign(&self, claims: &Value) -> String {
            let mut h = Header::new(Algorithm::ES256);
            h.kid = Some(self.kid.clone());
            jsonwebtoken::encode(
                &h,
                claims,
                &EncodingKey::from_ec_pem(self.pem.as_bytes()).unwrap(),
            )
            .unwrap()
        }
    }

    pub fn jwks(keys: &[&TestKey]) -> String {
        serde_json::json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()})
            .to_string()
    }

    pub fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::*;
    use serde_json::json;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex as StdMutex;

    /// A JWKS endpoint on loopback whose answer the test changes, counting the requests.
    struct Endpoint {
        url: String,
        hits: Arc<AtomicUsize>,
        answer: Arc<StdMutex<(u16, String, String)>>,
    }

    impl Endpoint {
        async fn start(body: String, cache_control: &str) -> Endpoint {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}/certs", l.local_addr().unwrap());
            let hits = Arc::new(AtomicUsize::new(0));
            let answer = Arc::new(StdMutex::new((200, body, cache_control.to_string())));
            let (h, a) = (hits.clone(), answer.clone());
            tokio::spawn(async move {
                while let Ok((mut c, _)) = l.accept().await {
                    let (h, a) = (h.clone(), a.clone());
                    tokio::spawn(async move {
                        let mut buf = [0u8; 4096];
                        let _ = c.read(&mut buf).await;
                        h.fetch_add(1, Ordering::SeqCst);
                        let (status, body, cc) = a.lock().unwrap().clone();
                        // Slow enough that concurrent misses overlap.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        let resp = format!("HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nCache-Control: {cc}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
                        let _ = c.write_all(resp.as_bytes()).await;
                    });
                }
            });
            Endpoint { url, hits, answer }
        }

        fn hits(&self) -> usize {
            self.hits.load(Ordering::SeqCst)
        }

        fn answer(&self, status: u16, body: String) {
            let mut a = self.answer.lock().unwrap();
            a.0 = status;
            a.1 = body;
        }
    }

    const POLICY_FAST: Policy = Policy {
        min_ttl: Duration::ZERO,
        max_ttl: Duration::from_secs(3600),
        default_ttl: Duration::from_secs(3600),
        min_refetch: Duration::from_millis(300),
    };

    fn claims(aud: &str) -> Value {
        json!({"iss": "https://issuer.test", "aud": aud, "sub": "ci", "exp": now() + 600})
    }

    fn expect(aud: &str) -> Expect<'_> {
        Expect {
            issuers: &["https://issuer.test"],
            audience: aud,
            algorithms: ASYMMETRIC,
            nbf_leeway: Some(Duration::from_secs(300)),
        }
    }

    #[tokio::test]
    async fn keys_are_fetched_once_and_kept_for_their_max_age() {
        let k = TestKey::new("k1");
        let ep = Endpoint::start(jwks(&[&k]), "public, max-age=1").await;
        let set = KeySet::new(Source::Url(ep.url.clone()), POLICY_FAST);
        let token = k.sign(&claims("fluxgate"));
        for _ in 0..5 {
            set.verify(&token, &expect("fluxgate")).await.unwrap();
        }
        assert_eq!(ep.hits(), 1, "cached, not fetched per token");
        tokio::time::sleep(Duration::from_millis(1100)).await;
        set.verify(&token, &expect("fluxgate")).await.unwrap();
        assert_eq!(ep.hits(), 2, "fetched again after max-age");
    }

    #[tokio::test]
    async fn concurrent_misses_share_one_fetch() {
        let k = TestKey::new("k1");
        let ep = Endpoint::start(jwks(&[&k]), "max-age=600").await;
        let set = Arc::new(KeySet::new(Source::Url(ep.url.clone()), POLICY_FAST));
        let token = k.sign(&claims("fluxgate"));
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let (set, token) = (set.clone(), token.clone());
                tokio::spawn(async move { set.verify(&token, &expect("fluxgate")).await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(ep.hits(), 1);
    }

    #[tokio::test]
    async fn an_unknown_kid_refetches_at_most_once_per_interval() {
        let k1 = TestKey::new("k1");
        let k2 = TestKey::new("k2");
        let ep = Endpoint::start(jwks(&[&k1]), "max-age=600").await;
        let set = KeySet::new(Source::Url(ep.url.clone()), POLICY_FAST);
        set.verify(&k1.sign(&claims("a")), &expect("a"))
            .await
            .unwrap();
        assert_eq!(ep.hits(), 1);
        // Right after a fetch, an unknown kid does not fetch again.
        let forged = TestKey::new("random");
        let r = set
            .verify(&forged.sign(&claims("a")), &expect("a"))
            .await
            .unwrap_err();
        assert_eq!(r.reason, "token signed with an unknown key");
        assert_eq!(ep.hits(), 1);
        // Later, made-up key ids, many of them: one refetch, then refusals from the cache.
        tokio::time::sleep(Duration::from_millis(350)).await;
        for i in 0..10 {
            let forged = TestKey::new(&format!("random-{i}"));
            let r = set
                .verify(&forged.sign(&claims("a")), &expect("a"))
                .await
                .unwrap_err();
            assert_eq!(
                (r.status, r.reason.as_ref()),
                (401, "token signed with an unknown key")
            );
        }
        assert_eq!(ep.hits(), 2, "one refetch for all the unknown kids");
        // The issuer rotates: after the pause, a token with the new key makes one refetch.
        ep.answer(200, jwks(&[&k1, &k2]));
        tokio::time::sleep(Duration::from_millis(350)).await;
        set.verify(&k2.sign(&claims("a")), &expect("a"))
            .await
            .unwrap();
        assert_eq!(ep.hits(), 3);
        set.verify(&k2.sign(&claims("a")), &expect("a"))
            .await
            .unwrap();
        assert_eq!(ep.hits(), 3);
    }

    #[tokio::test]
    async fn a_failed_refresh_keeps_the_keys_and_no_keys_is_503() {
        let k = TestKey::new("k1");
        let ep = Endpoint::start(jwks(&[&k]), "max-age=0").await;
        let set = KeySet::new(Source::Url(ep.url.clone()), POLICY_FAST);
        let token = k.sign(&claims("a"));
        set.verify(&token, &expect("a")).await.unwrap();
        for (status, body) in [
            (503, "{}".to_string()),
            (200, "<html>down</html>".to_string()),
            (200, r#"{"keys": []}"#.to_string()),
            (
                200,
                r#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}"#.to_string(),
            ),
        ] {
            ep.answer(status, body.clone());
            tokio::time::sleep(Duration::from_millis(350)).await;
            let before = ep.hits();
            set.verify(&token, &expect("a"))
                .await
                .unwrap_or_else(|r| panic!("{status} {body}: {r}"));
            assert_eq!(ep.hits(), before + 1, "tried to refresh ({status} {body})");
            // Retried only after the pause, while the old keys serve.
            set.verify(&token, &expect("a")).await.unwrap();
            assert_eq!(ep.hits(), before + 1);
        }

        let down = KeySet::new(Source::Url("http://127.0.0.1:1/certs".into()), POLICY_FAST);
        let r = down.verify(&token, &expect("a")).await.unwrap_err();
        assert_eq!((r.status, r.cause), (503, Cause::KeysUnavailable));
        assert!(!r.reason.contains(&token[..20]));
    }

    #[tokio::test]
    async fn discovery_finds_the_keys_and_limits_the_algorithms() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let k = TestKey::new("k1");
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = format!("http://{}", l.local_addr().unwrap());
        let (keys, iss) = (jwks(&[&k]), issuer.clone());
        tokio::spawn(async move {
            while let Ok((mut c, _)) = l.accept().await {
                let mut buf = [0u8; 4096];
                let n = c.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).to_string();
                let body = if head.starts_with("GET /.well-known/openid-configuration ") {
                    json!({"issuer": iss, "jwks_uri": format!("{iss}/keys"),
                           "id_token_signing_alg_values_supported": ["ES256"]})
                    .to_string()
                } else {
                    keys.clone()
                };
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = c.write_all(resp.as_bytes()).await;
            }
        });
        let set = KeySet::new(Source::Discovery(issuer.clone()), POLICY_FAST);
        let mut c = claims("a");
        c["iss"] = json!(issuer);
        let e = Expect {
            issuers: &[issuer.as_str()],
            audience: "a",
            algorithms: ASYMMETRIC,
            nbf_leeway: None,
        };
        set.verify(&k.sign(&c), &e).await.unwrap();

        let wrong = KeySet::new(Source::Discovery(format!("{issuer}/other")), POLICY_FAST);
        let r = wrong.verify(&k.sign(&c), &e).await.unwrap_err();
        assert_eq!(r.status, 503, "a document naming another issuer is refused");
    }

    #[tokio::test]
    async fn claims_are_checked() {
        let k = TestKey::new("k1");
        let ep = Endpoint::start(jwks(&[&k]), "max-age=600").await;
        let set = KeySet::new(Source::Url(ep.url.clone()), POLICY_FAST);
        let check = |c: Value| {
            let token = k.sign(&c);
            let set = &set;
            async move {
                set.verify(&token, &expect("a"))
                    .await
                    .map_err(|r| r.reason.to_string())
            }
        };
        let base = claims("a");
        assert!(check(base.clone()).await.is_ok());
        let with = |k: &str, v: Value| {
            let mut c = base.clone();
            c[k] = v;
            c
        };
        let without = |k: &str| {
            let mut c = base.clone();
            c.as_object_mut().unwrap().remove(k);
            c
        };
        assert_eq!(
            check(with("aud", json!("b"))).await.unwrap_err(),
            "wrong token audience"
        );
        assert!(check(with("aud", json!(["b", "a"]))).await.is_ok());
        assert_eq!(
            check(with("iss", json!("https://evil.test")))
                .await
                .unwrap_err(),
            "wrong token issuer"
        );
        assert_eq!(
            check(with("exp", json!(now() - 1))).await.unwrap_err(),
            "token expired"
        );
        assert_eq!(
            check(without("exp")).await.unwrap_err(),
            "token has no exp claim"
        );
        assert_eq!(
            check(without("aud")).await.unwrap_err(),
            "token has no aud claim"
        );
        assert_eq!(
            check(with("nbf", json!(now() + 3600))).await.unwrap_err(),
            "token not valid yet (nbf)"
        );
        assert!(
            check(with("nbf", json!(now() + 60))).await.is_ok(),
            "within the leeway"
        );

        // A token whose payload was changed after signing.
        let token = k.sign(&base);
        let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
        parts[1] = base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            with("sub", json!("admin")).to_string(),
        );
        let r = set
            .verify(&parts.join("."), &expect("a"))
            .await
            .unwrap_err();
        assert_eq!(r.reason, "bad token signature");
        for junk in ["", "a.b", "not a token", "e30.e30.e30"] {
            let r = set.verify(junk, &expect("a")).await.unwrap_err();
            assert_eq!(
                (r.status, r.reason.as_ref()),
                (401, "malformed token: not a signed JWT"),
                "{junk}"
            );
        }
        // Symmetric algorithms are never accepted, whatever the key set holds.
        let hs = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            &base,
            &jsonwebtoken::EncodingKey::from_secret(b"k"),
        )
        .unwrap();
        let r = set.verify(&hs, &expect("a")).await.unwrap_err();
        assert_eq!(r.reason, "token algorithm HS256 is not accepted");
    }

    #[test]
    fn ttl_follows_max_age_within_bounds() {
        let h = |pairs: &[(&str, &str)]| crate::verify::test_support::head(pairs);
        let p = POLICY;
        assert_eq!(ttl(&h(&[]), &p), Duration::from_secs(3600));
        assert_eq!(
            ttl(
                &h(&[("cache-control", "public, max-age=19800, must-revalidate")]),
                &p
            ),
            Duration::from_secs(19800)
        );
        assert_eq!(
            ttl(
                &h(&[("cache-control", "max-age=19800"), ("age", "800")]),
                &p
            ),
            Duration::from_secs(19000)
        );
        assert_eq!(ttl(&h(&[("cache-control", "max-age=5")]), &p), p.min_ttl);
        assert_eq!(
            ttl(&h(&[("cache-control", "max-age=99999999")]), &p),
            p.max_ttl
        );
        assert_eq!(ttl(&h(&[("cache-control", "no-store")]), &p), p.min_ttl);
        assert_eq!(
            ttl(&h(&[("cache-control", "max-age=x")]), &p),
            p.default_ttl
        );
    }

    #[test]
    fn sources_and_bearer_tokens() {
        assert_eq!(
            Source::parse("https://www.googleapis.com/oauth2/v3/certs").unwrap(),
            Source::Url("https://www.googleapis.com/oauth2/v3/certs".into())
        );
        assert_eq!(
            Source::parse("/etc/keys.json").unwrap(),
            Source::File("/etc/keys.json".into())
        );
        assert!(Source::parse("ftp://x/keys").is_err());
        assert!(Source::parse("https://").is_err());
        assert!(Source::parse(" ").is_err());

        let h = crate::verify::test_support::head;
        assert_eq!(
            bearer(&h(&[("authorization", "Bearer abc")]), false).unwrap(),
            "abc"
        );
        assert_eq!(
            bearer(&h(&[("authorization", "Bearer  abc ")]), true).unwrap(),
            "abc"
        );
        assert_eq!(
            bearer(&h(&[("authorization", "Bearer  abc")]), false).unwrap(),
            " abc"
        );
        for (v, why) in [
            ("bearer abc", "Authorization is not a bearer token"),
            ("Basic abc", "Authorization is not a bearer token"),
            ("Bearer ", "empty bearer token (Authorization)"),
            ("Bearer", "empty bearer token (Authorization)"),
            ("Bearerabc", "Authorization is not a bearer token"),
        ] {
            let r = bearer(&h(&[("authorization", v)]), true).unwrap_err();
            assert_eq!((r.status, r.reason.as_ref()), (401, why), "{v}");
        }
        assert_eq!(
            bearer(&h(&[]), true).unwrap_err().reason,
            "missing bearer token (Authorization)"
        );
    }

    #[test]
    fn unusable_keys_are_skipped() {
        let k = TestKey::new("k1");
        let mut enc = k.jwk.clone();
        enc["use"] = json!("enc");
        enc["kid"] = json!("enc");
        let doc = json!({"keys": [
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
            {"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA", "kid": "p521"},
            {"kty": "unknown"},
            enc,
            k.jwk,
        ]});
        let keys = parse_jwks(doc.to_string().as_bytes()).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kid.as_deref(), Some("k1"));
        assert_eq!(keys[0].algorithms, vec![Algorithm::ES256]);
        let rsa: Jwk = serde_json::from_slice(include_bytes!(
            "../../tests/fixtures/oidc/rsa-public.jwk.json"
        ))
        .unwrap();
        assert_eq!(
            algorithms(&rsa),
            vec![Algorithm::RS256],
            "narrowed to its alg"
        );
    }
}
