//! The signals that stop fluxgate, as pingora's own watcher reads them (SIGTERM: graceful stop,
//! SIGINT: fast stop, SIGQUIT: hand the listening sockets to `serve -u`, then stop), with one
//! check before a hand-over: pingora connects to `server.upgrade_sock` and sends the public and
//! admin listening sockets to whatever listens there, so fluxgate first makes sure only its own
//! user can have bound it.
//!
//! What is checked (pingora does the connect itself, so the peer's SO_PEERCRED cannot be read
//! without consuming the one connection the new process accepts): the socket's folder belongs
//! to fluxgate's user (or root) and nobody else can write it, and the socket file is a socket
//! owned by fluxgate's effective uid, not reached through a symbolic link. A socket in such a
//! folder can only have been bound by that user, and another user cannot even connect to it.
//! A refused hand-over is logged, and fluxgate keeps serving.

use async_trait::async_trait;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use tokio::signal::unix::{signal, SignalKind};

pub struct Signals {
    pub upgrade_sock: PathBuf,
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        let (quit, term, int) = (
            signal(SignalKind::quit()),
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        );
        let (Ok(mut quit), Ok(mut term), Ok(mut int)) = (quit, term, int) else {
            tracing::error!("cannot listen for SIGQUIT, SIGTERM and SIGINT: stopping");
            return ShutdownSignal::FastShutdown;
        };
        loop {
            tokio::select! {
                _ = quit.recv() => match may_hand_over(&self.upgrade_sock) {
                    Ok(()) => return ShutdownSignal::GracefulUpgrade,
                    Err(e) => tracing::error!(
                        "SIGQUIT: the listening sockets are not handed over, fluxgate keeps serving: server.upgrade_sock: {e}"
                    ),
                },
                _ = term.recv() => return ShutdownSignal::GracefulTerminate,
                _ = int.recv() => return ShutdownSignal::FastShutdown,
            }
        }
    }
}

/// Whether the socket at `sock` can only be the new fluxgate's (see the module's comment).
pub fn may_hand_over(sock: &Path) -> Result<(), String> {
    crate::config::private_folder(sock)?;
    let meta = std::fs::symlink_metadata(sock).map_err(|e| {
        format!(
            "{}: {e} (start `fluxgate serve -u` first: it waits there)",
            sock.display()
        )
    })?;
    if !meta.file_type().is_socket() {
        return Err(format!("{} is not a socket", sock.display()));
    }
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return Err(format!(
            "{} belongs to uid {}, not to fluxgate's user (uid {me})",
            sock.display(),
            meta.uid()
        ));
    }
    Ok(())
}

/// For `serve -u`, before pingora binds the socket: its folder must exist and be private.
pub fn check_waiting_folder(sock: &Path) -> Result<(), String> {
    crate::config::private_folder(sock).map_err(|e| format!("server.upgrade_sock: {e}"))?;
    let dir = sock.parent().filter(|d| !d.as_os_str().is_empty());
    match dir {
        Some(d) if !d.is_dir() => Err(format!(
            "server.upgrade_sock: the folder {} does not exist",
            d.display()
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn only_a_socket_of_this_user_in_a_private_folder_is_handed_the_listeners() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("upgrade.sock");
        assert!(may_hand_over(&sock).unwrap_err().contains("serve -u"));
        std::fs::write(&sock, "").unwrap();
        assert!(may_hand_over(&sock).unwrap_err().contains("not a socket"));
        std::fs::remove_file(&sock).unwrap();
        let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        assert_eq!(may_hand_over(&sock), Ok(()));
        // A link to a socket elsewhere is not followed.
        let link = dir.path().join("link.sock");
        std::os::unix::fs::symlink(&sock, &link).unwrap();
        assert!(may_hand_over(&link).unwrap_err().contains("not a socket"));
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(may_hand_over(&sock)
            .unwrap_err()
            .contains("writable by other users"));
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        // Owned by another user (only root can make one here).
        if rustix::process::geteuid().is_root() {
            std::os::unix::fs::chown(&sock, Some(65534), Some(65534)).unwrap();
            assert!(may_hand_over(&sock)
                .unwrap_err()
                .contains("belongs to uid 65534"));
        }
        assert!(check_waiting_folder(&dir.path().join("no/upgrade.sock")).is_err());
        assert_eq!(check_waiting_folder(&sock), Ok(()));
    }
}
