//! What each receiver type sends: its headers, its signature or token, and a wrong one for
//! bad-signature requests. Signatures over the fixed body are computed once, before the run.

use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;
use sha2::{Sha256, Sha512};

/// The provider whose deliveries are imitated.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReceiverType {
    /// `X-Hub-Signature-256: sha256=<hmac>` (or `X-Hub-Signature: sha1=<hmac>`).
    Github,
    /// The secret itself in `X-Gitlab-Token`.
    Gitlab,
    /// `X-Signature: <alg>=<hmac>`.
    GenericHmac,
}

impl ReceiverType {
    pub fn as_str(self) -> &'static str {
        match self {
            ReceiverType::Github => "github",
            ReceiverType::Gitlab => "gitlab",
            ReceiverType::GenericHmac => "generic-hmac",
        }
    }

    /// The event header's default value.
    pub fn default_event(self) -> &'static str {
        match self {
            ReceiverType::Github => "push",
            ReceiverType::Gitlab => "Push Hook",
            ReceiverType::GenericHmac => "push",
        }
    }

    /// The header that carries the delivery id, by default.
    pub fn default_id_header(self) -> &'static str {
        match self {
            ReceiverType::Github => "X-GitHub-Delivery",
            ReceiverType::Gitlab => "X-Gitlab-Event-UUID",
            ReceiverType::GenericHmac => "X-Delivery-Id",
        }
    }
}

/// An HMAC digest algorithm.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Sha1,
    Sha256,
    Sha512,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha1 => "sha1",
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }
}

/// The lower-case hex HMAC of `body` under `key`.
pub fn hmac_hex(alg: Algorithm, key: &[u8], body: &[u8]) -> String {
    fn mac<M: Mac + KeyInit>(key: &[u8], body: &[u8]) -> Vec<u8> {
        let mut m = <M as KeyInit>::new_from_slice(key).expect("HMAC takes keys of any length");
        m.update(body);
        m.finalize().into_bytes().to_vec()
    }
    hex::encode(match alg {
        Algorithm::Sha1 => mac::<Hmac<Sha1>>(key, body),
        Algorithm::Sha256 => mac::<Hmac<Sha256>>(key, body),
        Algorithm::Sha512 => mac::<Hmac<Sha512>>(key, body),
    })
}

/// The headers of valid and of bad-signature requests, besides the delivery id.
/// Deliberately not `Debug`: it holds the signature or the token.
pub struct Signed {
    pub valid: Vec<(String, String)>,
    pub bad: Vec<(String, String)>,
    pub id_header: String,
}

/// What to sign and how.
pub struct SignSpec<'a> {
    pub receiver: ReceiverType,
    pub algorithm: Algorithm,
    pub secret: &'a [u8],
    pub body: &'a [u8],
    pub event: Option<&'a str>,
    pub id_header: Option<&'a str>,
}

/// Computes the headers once.
pub fn sign(spec: &SignSpec) -> Result<Signed, String> {
    let r = spec.receiver;
    let event = spec.event.unwrap_or(r.default_event()).to_string();
    let json = ("Content-Type".to_string(), "application/json".to_string());
    // A key that differs from the secret: its signature has the right form and is wrong.
    let mut wrong_key = spec.secret.to_vec();
    wrong_key.extend_from_slice(b"-not-the-secret");
    let (common, good, bad) = match r {
        ReceiverType::Github => {
            let header = match spec.algorithm {
                Algorithm::Sha256 => "X-Hub-Signature-256",
                Algorithm::Sha1 => "X-Hub-Signature",
                Algorithm::Sha512 => {
                    return Err("github signs with sha256 or sha1, not sha512".into());
                }
            };
            let alg = spec.algorithm;
            let sig = |k: &[u8]| format!("{}={}", alg.as_str(), hmac_hex(alg, k, spec.body));
            (
                vec![
                    json,
                    ("User-Agent".into(), "GitHub-Hookshot/loadtest".into()),
                    ("X-GitHub-Event".into(), event),
                ],
                (header.to_string(), sig(spec.secret)),
                (header.to_string(), sig(&wrong_key)),
            )
        }
        ReceiverType::Gitlab => {
            let token = std::str::from_utf8(spec.secret)
                .ok()
                .filter(|t| t.bytes().all(|b| (b' '..=b'~').contains(&b) || b == b'\t'))
                .filter(|t| t.trim() == *t)
                .ok_or(
                    "a GitLab token must be printable ASCII without leading or trailing spaces",
                )?;
            // The same length, the last character changed.
            let mut wrong = token.as_bytes().to_vec();
            let last = wrong.last_mut().expect("the secret is not empty");
            *last = if *last == b'x' { b'y' } else { b'x' };
            let wrong = String::from_utf8(wrong).expect("ASCII");
            (
                vec![
                    json,
                    ("User-Agent".into(), "GitLab/loadtest".into()),
                    ("X-Gitlab-Event".into(), event),
                ],
                ("X-Gitlab-Token".to_string(), token.to_string()),
                ("X-Gitlab-Token".to_string(), wrong),
            )
        }
        ReceiverType::GenericHmac => {
            let alg = spec.algorithm;
            let sig = |k: &[u8]| format!("{}={}", alg.as_str(), hmac_hex(alg, k, spec.body));
            (
                vec![json, ("User-Agent".into(), "fluxgate-loadtest".into())],
                ("X-Signature".to_string(), sig(spec.secret)),
                ("X-Signature".to_string(), sig(&wrong_key)),
            )
        }
    };
    let mut valid = common.clone();
    valid.push(good);
    let mut badv = common;
    badv.push(bad);
    Ok(Signed {
        valid,
        bad: badv,
        id_header: spec.id_header.unwrap_or(r.default_id_header()).to_string(),
    })
}

/// Reads a secret the way fluxgate does: the file's bytes without trailing newlines.
pub fn read_secret_file(path: &std::path::Path) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    trim_secret(bytes).ok_or_else(|| format!("the secret in {} is empty", path.display()))
}

/// Drops trailing `\n`/`\r`; `None` if nothing is left.
pub fn trim_secret(mut bytes: Vec<u8>) -> Option<Vec<u8>> {
    while matches!(bytes.last(), Some(b'\n' | b'\r')) {
        bytes.pop();
    }
    (!bytes.is_empty()).then_some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn github_documented_vector() {
        // https://docs.github.com/en/webhooks/using-webhooks/validating-webhook-deliveries
        assert_eq!(
            hmac_hex(
                Algorithm::Sha256,
                b"It's a Secret to Everybody",
                b"Hello, World!"
            ),
            "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
    }

    fn spec(r: ReceiverType, alg: Algorithm) -> SignSpec<'static> {
        SignSpec {
            receiver: r,
            algorithm: alg,
            secret: b"s3cret",
            body: b"{}",
            event: None,
            id_header: None,
        }
    }

    fn get<'a>(h: &'a [(String, String)], name: &str) -> &'a str {
        &h.iter().find(|(k, _)| k == name).unwrap().1
    }

    #[test]
    fn headers_per_type() {
        let s = sign(&spec(ReceiverType::Github, Algorithm::Sha256)).unwrap();
        let good = get(&s.valid, "X-Hub-Signature-256");
        assert_eq!(
            good,
            format!("sha256={}", hmac_hex(Algorithm::Sha256, b"s3cret", b"{}"))
        );
        let bad = get(&s.bad, "X-Hub-Signature-256");
        assert_ne!(good, bad);
        assert_eq!(good.len(), bad.len());
        assert_eq!(get(&s.valid, "X-GitHub-Event"), "push");
        assert_eq!(s.id_header, "X-GitHub-Delivery");

        let s = sign(&spec(ReceiverType::Github, Algorithm::Sha1)).unwrap();
        assert!(get(&s.valid, "X-Hub-Signature").starts_with("sha1="));
        assert!(sign(&spec(ReceiverType::Github, Algorithm::Sha512)).is_err());

        let s = sign(&spec(ReceiverType::Gitlab, Algorithm::Sha256)).unwrap();
        assert_eq!(get(&s.valid, "X-Gitlab-Token"), "s3cret");
        assert_eq!(get(&s.bad, "X-Gitlab-Token"), "s3crex");
        assert_eq!(get(&s.valid, "X-Gitlab-Event"), "Push Hook");

        let s = sign(&spec(ReceiverType::GenericHmac, Algorithm::Sha512)).unwrap();
        assert!(get(&s.valid, "X-Signature").starts_with("sha512="));
        assert_eq!(s.id_header, "X-Delivery-Id");
    }

    #[test]
    fn secrets_are_trimmed_like_fluxgate() {
        assert_eq!(trim_secret(b"abc\r\n\n".to_vec()).unwrap(), b"abc");
        assert!(trim_secret(b"\n".to_vec()).is_none());
    }
}
