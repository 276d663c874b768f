//! `[server.acme]`: automatic HTTPS. Builds [`crate::acme::AcmeConfig`].

use super::Problems;
use crate::acme::{AcmeConfig, Eab, LETS_ENCRYPT, LETS_ENCRYPT_STAGING};
use serde::Deserialize;
use std::path::{Path, PathBuf};

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
    storage: Option<PathBuf>,
    http_listen: Option<String>,
}

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

pub fn acme(raw: RawAcme, queue_dir: Option<&Path>, p: &mut Problems) -> Option<AcmeConfig> {
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
    let eab = match (raw.eab_kid, raw.eab_hmac_key_file) {
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
    let storage = raw.storage.unwrap_or_else(|| default_storage(queue_dir));
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
        let c = acme(raw, Some(Path::new("/srv/state/queue")), &mut p);
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
        assert_eq!(c.storage, PathBuf::from("/srv/state/acme"));
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
