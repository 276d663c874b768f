//! Receiver secrets: read from a file or an environment variable, never from the main
//! configuration file, kept in memory that is wiped on drop and never printed.

use secrecy::{ExposeSecret, SecretSlice};
use std::fmt;
use std::path::Path;
use std::sync::Arc;

/// A receiver token. `Debug` shows nothing of it; comparisons go through `subtle`.
#[derive(Clone)]
pub struct Secret(Arc<SecretSlice<u8>>);

impl Secret {
    pub fn new(bytes: Vec<u8>) -> Self {
        Secret(Arc::new(SecretSlice::from(bytes)))
    }

    pub fn expose(&self) -> &[u8] {
        self.0.expose_secret()
    }

    /// Reads a secret file. Trailing line breaks are dropped: editors and `echo` add them, and a
    /// provider's secret field cannot hold one, so keeping it would only break every signature.
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let bytes =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::from_bytes(bytes)
    }

    pub fn from_env(var: &str) -> Result<Self, String> {
        match std::env::var_os(var) {
            Some(v) => Self::from_bytes(v.into_encoded_bytes()),
            None => Err(format!("environment variable {var} is not set")),
        }
    }

    fn from_bytes(mut bytes: Vec<u8>) -> Result<Self, String> {
        while matches!(bytes.last(), Some(b'\n' | b'\r')) {
            bytes.pop();
        }
        if bytes.is_empty() {
            return Err("the secret is empty".into());
        }
        Ok(Self::new(bytes))
    }
}

/// A warning when a file holding a secret (a token, a private key, a kubeconfig) may be read
/// by anyone but its owner: the gateway's own account is the only one that needs it.
pub fn loose_permissions(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then(|| {
        format!(
            "{} is readable by others than its owner (mode {mode:04o}); chmod 600 it, or set defaultMode: 0400 on a Kubernetes secret volume",
            path.display()
        )
    })
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailing_newlines_are_not_part_of_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("token");
        std::fs::write(&p, "test-token\r\n\n").unwrap();
        assert_eq!(Secret::from_file(&p).unwrap().expose(), b"test-token");
    }

    #[test]
    fn empty_and_missing_secrets_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("token");
        std::fs::write(&p, "\n").unwrap();
        assert_eq!(Secret::from_file(&p).unwrap_err(), "the secret is empty");
        assert!(Secret::from_file(&dir.path().join("nope"))
            .unwrap_err()
            .starts_with("cannot read"));
        assert!(Secret::from_env("FLUXGATE_TEST_SURELY_UNSET").is_err());
    }

    #[test]
    fn files_others_may_read_draw_a_warning() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("token");
        std::fs::write(&p, "t").unwrap();
        for (mode, warned) in [(0o600, false), (0o400, false), (0o640, true), (0o644, true)] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            let w = loose_permissions(&p);
            assert_eq!(w.is_some(), warned, "{mode:o}: {w:?}");
        }
        assert!(loose_permissions(&p).unwrap().contains("mode 0644"));
    }

    #[test]
    fn debug_does_not_show_the_secret() {
        let s = Secret::new(b"hunter2".to_vec());
        assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
    }
}
