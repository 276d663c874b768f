//! Receiver secrets: read from a file or an environment variable, never from the main
//! configuration file, kept in memory that is wiped on drop and never printed.

use secrecy::{ExposeSecret, SecretSlice};
use std::fmt;
use std::path::{Path, PathBuf};
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

    /// Reads a secret file, trimmed (see [`Secret::read_file`]).
    pub fn from_file(path: &Path) -> Result<Self, String> {
        Self::read_file(path, true).map(|r| r.secret)
    }

    /// Reads a secret file. With `trim`, trailing line breaks are dropped: editors and `echo`
    /// add them, and a provider's secret field cannot hold one, so keeping them would only
    /// break every signature. Without, the bytes are used as they are, as Flux uses a Secret's.
    pub fn read_file(path: &Path, trim: bool) -> Result<Read, String> {
        let bytes =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::from_bytes(bytes, trim)
    }

    pub fn from_env(var: &str) -> Result<Self, String> {
        Self::read_env(var, true).map(|r| r.secret)
    }

    pub fn read_env(var: &str, trim: bool) -> Result<Read, String> {
        match std::env::var_os(var) {
            Some(v) => Self::from_bytes(v.into_encoded_bytes(), trim),
            None => Err(format!("environment variable {var} is not set")),
        }
    }

    fn from_bytes(bytes: Vec<u8>, trim: bool) -> Result<Read, String> {
        let kept = bytes
            .iter()
            .rposition(|b| !matches!(b, b'\n' | b'\r'))
            .map_or(0, |i| i + 1);
        if kept == 0 {
            return Err("the secret is empty".into());
        }
        if !trim || kept == bytes.len() {
            return Ok(Read {
                secret: Self::new(bytes),
                as_stored: None,
            });
        }
        let secret = Self::new(bytes[..kept].to_vec());
        Ok(Read {
            secret,
            as_stored: Some(Self::new(bytes)),
        })
    }
}

/// A secret as read and, when trailing line breaks were dropped from it, the bytes as they
/// were: given them in a Secret, Flux would use them all, and its hook path would differ.
pub struct Read {
    pub secret: Secret,
    pub as_stored: Option<Secret>,
}

/// Why a file holding a secret (a token, a private key, a kubeconfig) is not kept to the
/// gateway's account: others may read it, or may swap it through a directory on its way that
/// they may write to or own. `serve` warns and serves (a running gateway should not stop over
/// it); `check` counts it as a problem.
pub fn loose_permissions(path: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    let mode = meta.mode() & 0o777;
    // Read access for the file's group is fluxgate's own when that group is root's or
    // fluxgate's: systemd's credentials are root's, 0400 plus an ACL for the service's user,
    // which shows as 0440; a renewing certificate is root:fluxgate 0640 (the unit says so).
    let group_is_ours = meta.gid() == 0 || meta.gid() == rustix::process::getegid().as_raw();
    let loose = if group_is_ours { 0o027 } else { 0o077 };
    let mut why = Vec::new();
    if mode & loose != 0 {
        why.push(format!(
            "{} is readable by others than its owner (mode {mode:04o}); chmod 600 it, or set defaultMode: 0400 on a Kubernetes secret volume",
            path.display()
        ));
    }
    let me = rustix::process::geteuid().as_raw();
    why.extend(
        holding_dirs(path)
            .iter()
            .filter_map(|d| loose_directory(d, me)),
    );
    (!why.is_empty()).then(|| why.join("; "))
}

/// The directories a path goes through, its own first, up to the root.
fn holding_dirs(path: &Path) -> Vec<PathBuf> {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    absolute
        .ancestors()
        .skip(1)
        .map(Path::to_path_buf)
        .collect()
}

/// A directory whose owner is neither `me` nor root, or that others may write to, lets them
/// replace what it holds. The sticky bit (as on /tmp, or a Kubernetes secret volume) stops
/// others from renaming or deleting what they do not own, so it is safe.
fn loose_directory(dir: &Path, me: u32) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(dir).ok()?;
    let mode = meta.mode() & 0o7777;
    if meta.uid() != me && meta.uid() != 0 {
        return Some(format!(
            "the directory {} is owned by uid {}, neither fluxgate's user nor root, who could replace what it holds",
            dir.display(),
            meta.uid()
        ));
    }
    (mode & 0o022 != 0 && mode & 0o1000 == 0).then(|| {
        format!(
            "the directory {} is writable by others than its owner (mode {mode:04o}), who could replace what it holds; chmod go-w it",
            dir.display()
        )
    })
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Writes `bytes` to a new owner-only file beside `path` (0600 from its creation) and renames
/// it over `path`, so a reader sees the old content or the new, never half of it, and no one
/// else may read it at any moment. For secrets fluxgate writes: tokens, keys, certificates.
pub fn write_owner_only(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o600))?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
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
    fn without_trimming_the_bytes_are_kept_as_flux_keeps_a_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("token");
        std::fs::write(&p, "test-token\n").unwrap();
        let exact = Secret::read_file(&p, false).unwrap();
        assert_eq!(exact.secret.expose(), b"test-token\n");
        assert!(exact.as_stored.is_none());
        let trimmed = Secret::read_file(&p, true).unwrap();
        assert_eq!(trimmed.secret.expose(), b"test-token");
        assert_eq!(trimmed.as_stored.unwrap().expose(), b"test-token\n");
        std::fs::write(&p, "test-token").unwrap();
        assert!(Secret::read_file(&p, true).unwrap().as_stored.is_none());
        std::fs::write(&p, "\r\n").unwrap();
        assert_eq!(
            Secret::read_file(&p, false).err().unwrap(),
            "the secret is empty"
        );
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
        // The file's group is ours: it may read, as systemd's credentials (0400 plus an ACL for
        // the service, shown as 0440) and a root:fluxgate 0640 certificate let it.
        for (mode, warned) in [
            (0o600, false),
            (0o400, false),
            (0o440, false),
            (0o640, false),
            (0o660, true),
            (0o604, true),
            (0o644, true),
        ] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            let w = loose_permissions(&p);
            assert_eq!(w.is_some(), warned, "{mode:o}: {w:?}");
        }
        assert!(loose_permissions(&p).unwrap().contains("mode 0644"));
        // Another group may not read it.
        if rustix::process::geteuid().is_root() {
            std::os::unix::fs::chown(&p, None, Some(65534)).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
            assert!(loose_permissions(&p).unwrap().contains("mode 0640"));
        }
    }

    #[test]
    fn directories_others_may_write_to_or_own_draw_a_warning() {
        use std::os::unix::fs::PermissionsExt;
        let top = tempfile::tempdir().unwrap();
        let dir = top.path().join("etc");
        std::fs::create_dir(&dir).unwrap();
        let p = dir.join("token");
        std::fs::write(&p, "t").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let set = |d: &Path, mode: u32| {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode)).unwrap()
        };
        for (mode, warned) in [
            (0o700, false),
            (0o755, false),
            (0o775, true),
            (0o757, true),
            // Sticky: others may add files, not replace this one.
            (0o1777, false),
        ] {
            set(&dir, mode);
            let w = loose_permissions(&p);
            assert_eq!(w.is_some(), warned, "{mode:o}: {w:?}");
        }
        set(&dir, 0o777);
        let w = loose_permissions(&p).unwrap();
        assert!(
            w.contains(&format!(
                "the directory {} is writable by others than its owner (mode 0777)",
                dir.display()
            )),
            "{w}"
        );
        // A directory further up counts too.
        set(&dir, 0o700);
        set(top.path(), 0o777);
        let w = loose_permissions(&p).unwrap();
        assert!(w.contains(&top.path().display().to_string()), "{w}");
        set(top.path(), 0o700);
        assert_eq!(loose_permissions(&p), None);
        // Owned by someone else (only root can give a directory away).
        if rustix::process::geteuid().is_root() {
            std::os::unix::fs::chown(&dir, Some(4242), None).unwrap();
            let w = loose_permissions(&p).unwrap();
            assert!(
                w.contains("is owned by uid 4242, neither fluxgate's user nor root"),
                "{w}"
            );
        }
    }

    #[test]
    fn debug_does_not_show_the_secret() {
        let s = Secret::new(b"hunter2".to_vec());
        assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
    }
}
