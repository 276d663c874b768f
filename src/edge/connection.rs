//! Connections on the public listener: refused before the TLS handshake when no receiver
//! would take the address, and counted per address while they are open.

use super::hook::HookApp;
use super::live::Live;
use super::tls_stream::{peer_ip, TlsConn};
use crate::config::Receiver;
use crate::guard::cidr::canonical;
use crate::metrics;
use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::listeners::ConnectionFilter;
use pingora::protocols::http::ServerSession;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use tokio::time::timeout;
use tokio_rustls::TlsAcceptor;

/// Runs after `accept` and before TLS: an address no receiver allows, one in the penalty box,
/// or one already holding its share of connections costs no handshake.
pub struct EdgeFilter {
    pub live: Arc<Live>,
}

impl std::fmt::Debug for EdgeFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EdgeFilter")
    }
}

impl EdgeFilter {
    fn refuse(reason: &str) -> bool {
        metrics::get()
            .connections_refused
            .with_label_values(&[reason])
            .inc();
        false
    }
}

#[async_trait]
impl ConnectionFilter for EdgeFilter {
    async fn should_accept(&self, addr: Option<&SocketAddr>) -> bool {
        let Some(addr) = addr else {
            return true;
        };
        let ip = canonical(addr.ip());
        let rt = self.live.get();
        // A proxy's address stands for many clients: they are judged per request.
        if rt.guard.is_trusted(ip) {
            return true;
        }
        if rt.guard.blocked(ip).is_some() {
            return Self::refuse("blocked");
        }
        if rt.guard.connections.at_limit(ip) {
            return Self::refuse("too_many_connections");
        }
        if !allowed(&rt.receivers, ip) {
            return Self::refuse("not_allowed");
        }
        true
    }
}

/// Whether some receiver may take deliveries from `ip`. Only an allow-list refuses: with no
/// receivers at all (cluster mode before its first Receiver, or after the last is deleted) the
/// address is let through, to be answered 404 like any unknown path, not closed unexplained.
fn allowed(receivers: &[Arc<Receiver>], ip: IpAddr) -> bool {
    receivers.is_empty() || receivers.iter().any(|r| r.allows(ip))
}

/// Owns each connection from its TLS handshake on, so its per-address slot is held for the
/// whole connection, handshake included, and not for one request.
pub struct HookServer {
    pub app: Arc<HookApp>,
    pub tls: TlsAcceptor,
}

struct OpenConnection;

impl OpenConnection {
    fn new() -> Self {
        metrics::get().open_connections.inc();
        OpenConnection
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        metrics::get().open_connections.dec();
    }
}

#[async_trait]
impl ServerApp for HookServer {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // A stop waits for a new connection's first request (see drain), not for an idle one.
        let mut opening = Some(super::drain::Busy::enter());
        let peer = peer_ip(&stream);
        let rt = self.app.live.get();
        let guard = &rt.guard;
        let _slot = match peer {
            Some(ip) if !guard.is_trusted(ip) => match guard.connections.open(ip) {
                Some(slot) => Some(slot),
                None => {
                    metrics::get()
                        .connections_refused
                        .with_label_values(&["too_many_connections"])
                        .inc();
                    return None;
                }
            },
            _ => None,
        };
        // The head's deadline bounds the handshake too: a client that opens a connection and
        // stalls holds a slot and memory, and pingora's own limit is 60 s.
        let stream = match timeout(rt.limits.head_timeout, self.tls.accept(stream)).await {
            Ok(Ok(tls)) => Box::new(TlsConn(tls)) as Stream,
            Ok(Err(e)) => return handshake_failed(peer, &e.to_string()),
            Err(_) => return handshake_failed(peer, "timed out"),
        };
        drop(rt);
        let _open = OpenConnection::new();
        let mut session = ServerSession::new_http1(stream);
        session.set_keepalive(if *shutdown.borrow() { None } else { Some(60) });
        loop {
            let reused = self.app.serve_one(session, peer, shutdown).await?;
            opening.take();
            let (stream, settings) = reused.consume();
            session = ServerSession::new_http1(stream);
            if let Some(s) = settings {
                s.apply_to_session(&mut session);
            }
        }
    }
}

/// Counted, and logged at debug level only: anyone can make handshakes fail, and the log
/// must not grow with them.
fn handshake_failed(peer: Option<IpAddr>, why: &str) -> Option<Stream> {
    metrics::get().tls_handshake_failures.inc();
    tracing::debug!(client = ?peer, "TLS handshake failed: {why}");
    None
}
