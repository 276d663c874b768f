//! The `[admin]` and `[history]` sections: who may read the delivery history on the admin
//! listener, and how much of it is kept.

use super::Problems;
use crate::secret::Secret;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    token_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHistory {
    size: Option<usize>,
}

#[derive(Clone, Default)]
pub struct AdminSettings {
    /// The bearer token the status page and the deliveries API require, when set.
    pub token: Option<Secret>,
    pub token_file: Option<PathBuf>,
}

impl std::fmt::Debug for AdminSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminSettings")
            .field("token_file", &self.token_file)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
pub struct HistorySettings {
    /// Records kept, in memory and on disk.
    pub size: usize,
}

pub(super) fn admin(
    raw: RawAdmin,
    listen: Option<SocketAddr>,
    p: &mut Problems,
    warnings: &mut Vec<String>,
) -> AdminSettings {
    let token = raw.token_file.as_deref().and_then(|f| {
        if let Some(w) = crate::secret::loose_permissions(f) {
            warnings.push(format!("admin.token_file: {w}"));
        }
        p.take("admin.token_file", Secret::from_file(f))
    });
    if let Some(addr) = listen.filter(|a| !a.ip().is_loopback()) {
        warnings.push(format!(
            "server.admin_listen: {addr} is not a loopback address: the delivery history, the status page and redelivery are open to whoever reaches it{}",
            if token.is_some() { " with admin.token_file's token" } else { "; set admin.token_file or bind 127.0.0.1" }
        ));
    }
    AdminSettings {
        token,
        token_file: raw.token_file,
    }
}

pub(super) fn history(raw: RawHistory, p: &mut Problems) -> HistorySettings {
    let size = raw.size.unwrap_or(crate::history::DEFAULT_SIZE);
    if size == 0 {
        p.add("history.size", "must be at least 1");
    } else if size > 1_000_000 {
        p.add(
            "history.size",
            "must be at most 1000000: the history is kept in memory",
        );
    }
    HistorySettings {
        size: size.clamp(1, 1_000_000),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_public_admin_listener_is_warned_about() {
        let mut p = Problems::default();
        let mut w = Vec::new();
        admin(
            RawAdmin::default(),
            "127.0.0.1:9102".parse().ok(),
            &mut p,
            &mut w,
        );
        assert!(w.is_empty(), "{w:?}");
        admin(
            RawAdmin::default(),
            "0.0.0.0:9102".parse().ok(),
            &mut p,
            &mut w,
        );
        assert!(
            w[0].starts_with("server.admin_listen: 0.0.0.0:9102 is not a loopback address"),
            "{w:?}"
        );
        assert!(w[0].contains("set admin.token_file"), "{w:?}");
        let h = history(RawHistory { size: Some(0) }, &mut p);
        assert_eq!(h.size, 1);
        assert_eq!(p.0[0].key, "history.size");
    }
}
