//! The webhook path, computed exactly as Flux's notification-controller does, so a user moving
//! from the in-cluster receiver keeps the URL their provider already has.

use sha2::{Digest, Sha256};

/// `/hook/` + lower-case hex of SHA-256(token ‖ name ‖ namespace), with no separators.
pub fn flux_hook_path(token: &[u8], name: &str, namespace: &str) -> String {
    let mut h = Sha256::new();
    h.update(token);
    h.update(name.as_bytes());
    h.update(namespace.as_bytes());
    format!("/hook/{}", hex::encode(h.finalize()))
}

/// A path cut after its first 12 hex digits: enough to tell receivers apart, not enough to
/// call one whose path is its credential.
pub fn elide(path: &str) -> String {
    let keep = path
        .char_indices()
        .nth("/hook/".len() + 12)
        .map_or(path.len(), |(i, _)| i);
    if keep == path.len() {
        return path.to_string();
    }
    format!("{}…", &path[..keep])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elided_paths_keep_twelve_digits() {
        let p = flux_hook_path(b"test-token", "github-receiver", "flux-system");
        assert_eq!(elide(&p), "/hook/df3ebadde655…");
        assert_eq!(elide("/hook/abc"), "/hook/abc");
        assert_eq!(elide("/hook/ééééééééééééééé"), "/hook/éééééééééééé…");
    }

    #[test]
    fn matches_flux_test_vectors() {
        assert_eq!(
            flux_hook_path(b"test-token", "receiver-secret", "my-namespace"),
            "/hook/106120121d366c2f67e93200f6c1dbe938235eb588daa5e8c0516d3a77ac1dee"
        );
        assert_eq!(
            flux_hook_path(b"test-token", "github-receiver", "flux-system"),
            "/hook/df3ebadde655d58cd8236886baaaca95ff9c420f4c89e11a5d91965baa0cdf0f"
        );
    }
}
