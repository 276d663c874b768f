//! Connections on the public listener: refused before the TLS handshake when no receiver
//! would take the address, held in the tarpit when the address is in the penalty box, counted
//! per address while they are open, and capped all together (`server.max_connections`), the
//! connection idle the longest making room for a new one.

use super::hook::HookApp;
use super::live::Live;
use super::tls_stream::{peer_ip, TlsConn};
use crate::config::Receiver;
use crate::guard::cidr::canonical;
use crate::guard::tarpit;
use crate::metrics;
use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::listeners::ConnectionFilter;
use pingora::protocols::http::ServerSession;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::Notify;
use tokio::time::timeout;
use tokio_rustls::TlsAcceptor;

/// Runs after `accept` and before TLS: an address no receiver allows, one in the penalty box,
/// or one already holding its share of connections costs no handshake. A boxed address's
/// connection is let through only to be held in the tarpit (see [`HookServer`]), while it has
/// room.
pub struct EdgeFilter {
    pub live: Arc<Live>,
    pub acme: Option<Arc<crate::acme::Acme>>,
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
            return rt.guard.tarpit.has_room() || Self::refuse("blocked");
        }
        if rt.guard.connections.at_limit(ip) {
            return Self::refuse("too_many_connections");
        }
        // The CA validates from addresses no allow-list names: while an order is in flight the
        // allow-lists are left to each request (a 403), as they always are behind a proxy.
        let validating = self.acme.as_ref().is_some_and(|a| a.ordering());
        if !validating && !allowed(&rt.receivers, ip) {
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
    pub capacity: Arc<Capacity>,
}

/// File descriptors kept for the rest of the process when the cap is sized from the limit:
/// the relay's and the cluster watch's API connections, the admin listener, the queue's files,
/// a reload's reads, the upgrade socket. A tenth of the limit is kept on top.
const RESERVED_FDS: usize = 100;

/// The cap on connections on the public listener, all addresses together, and the idle ones
/// that can be closed to make room. Without it, once file descriptors run out pingora sleeps on
/// `accept`, and valid deliveries wait seconds behind whoever holds the connections.
pub struct Capacity {
    /// 0: no cap.
    limit: usize,
    open: AtomicUsize,
    /// Idle connections by when they became idle, oldest first.
    idle: Mutex<BTreeMap<u64, Arc<Activity>>>,
    next_key: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Capacity {
    pub fn new(limit: usize) -> Arc<Self> {
        metrics::get()
            .connection_limit
            .set(i64::try_from(limit).unwrap_or(i64::MAX));
        Arc::new(Capacity {
            limit,
            open: AtomicUsize::new(0),
            idle: Mutex::new(BTreeMap::new()),
            next_key: AtomicU64::new(0),
        })
    }

    /// `server.max_connections`, or when unset the open-file limit now (at start) less what
    /// the rest of the process needs; none when the limit is unlimited.
    pub fn size(configured: Option<usize>) -> usize {
        use rustix::process::{getrlimit, Resource};
        configured.unwrap_or_else(|| from_fd_limit(getrlimit(Resource::Nofile).current))
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// A place for a new connection: a free one, or one that the connection idle the longest
    /// gives up (it is closed); `None` when every connection is busy.
    fn admit(self: &Arc<Self>) -> Option<Held> {
        self.take(true)
    }

    /// A free place only, never one an idle connection gives up.
    fn admit_spare(self: &Arc<Self>) -> Option<Held> {
        self.take(false)
    }

    fn take(self: &Arc<Self>, evict: bool) -> Option<Held> {
        let before = self.open.fetch_add(1, SeqCst);
        if self.limit != 0 && before >= self.limit && !(evict && self.close_oldest_idle()) {
            self.open.fetch_sub(1, SeqCst);
            return None;
        }
        metrics::get().connections.inc();
        Some(Held {
            capacity: self.clone(),
            activity: Arc::new(Activity {
                state: AtomicU8::new(BUSY),
                key: AtomicU64::new(0),
                evicted: Notify::new(),
                capacity: Arc::downgrade(self),
            }),
        })
    }

    fn close_oldest_idle(&self) -> bool {
        let mut idle = lock(&self.idle);
        while let Some((_, a)) = idle.pop_first() {
            if a.state
                .compare_exchange(IDLE, EVICTED, SeqCst, SeqCst)
                .is_ok()
            {
                a.evicted.notify_one();
                metrics::get().idle_connections_closed.inc();
                return true;
            }
        }
        false
    }
}

fn from_fd_limit(soft: Option<u64>) -> usize {
    match soft {
        None => 0,
        Some(n) => {
            let n = usize::try_from(n).unwrap_or(usize::MAX);
            n.saturating_sub(n / 10 + RESERVED_FDS).max(1)
        }
    }
}

/// A connection between its requests that has not been read from since.
const WAITING: u8 = 0;
/// The same after a read found nothing: it may be closed to make room.
const IDLE: u8 = 1;
/// Handshaking, or reading or answering a request.
const BUSY: u8 = 2;
/// Chosen to be closed.
const EVICTED: u8 = 3;

/// Whether one connection is idle, as its stream's reads tell: between requests, a read that
/// finds nothing makes it idle and one that finds bytes makes it busy. A request already read
/// with the one before it (pipelined) involves no read that finds nothing, so it is never
/// taken for idle.
pub struct Activity {
    state: AtomicU8,
    /// Its place among the idle connections while idle.
    key: AtomicU64,
    evicted: Notify,
    capacity: std::sync::Weak<Capacity>,
}

impl Activity {
    /// Called by the stream when a read found nothing yet.
    pub fn client_silent(self: &Arc<Self>) {
        if self
            .state
            .compare_exchange(WAITING, IDLE, SeqCst, SeqCst)
            .is_err()
        {
            return;
        }
        if let Some(c) = self.capacity.upgrade() {
            let mut idle = lock(&c.idle);
            let key = c.next_key.fetch_add(1, SeqCst);
            self.key.store(key, SeqCst);
            idle.insert(key, self.clone());
        }
    }

    /// Called by the stream when a read brought bytes.
    pub fn client_sent(&self) {
        if self.state.swap_if_not_evicted(BUSY) == IDLE {
            self.forget();
        }
    }

    /// Between requests again, unless chosen to be closed.
    fn between_requests(&self) {
        let _ = self.state.swap_if_not_evicted(WAITING);
    }

    fn forget(&self) {
        if let Some(c) = self.capacity.upgrade() {
            lock(&c.idle).remove(&self.key.load(SeqCst));
        }
    }
}

trait SwapUnlessEvicted {
    /// Stores `to` unless the state is `EVICTED`; returns the state before.
    fn swap_if_not_evicted(&self, to: u8) -> u8;
}

impl SwapUnlessEvicted for AtomicU8 {
    fn swap_if_not_evicted(&self, to: u8) -> u8 {
        match self.fetch_update(SeqCst, SeqCst, |s| (s != EVICTED).then_some(to)) {
            Ok(s) | Err(s) => s,
        }
    }
}

/// A connection's place under the cap, from accept to close.
struct Held {
    capacity: Arc<Capacity>,
    activity: Arc<Activity>,
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.activity.state.swap(EVICTED, SeqCst) == IDLE {
            self.activity.forget();
        }
        self.capacity.open.fetch_sub(1, SeqCst);
        metrics::get().connections.dec();
    }
}

/// Counts a connection in the tarpit for as long as it is held, however its hold ends.
struct HeldGauge;

impl HeldGauge {
    fn new() -> Self {
        metrics::get().tarpit_connections.inc();
        HeldGauge
    }
}

impl Drop for HeldGauge {
    fn drop(&mut self) {
        metrics::get().tarpit_connections.dec();
    }
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
        let peer = peer_ip(&stream);
        if let Some(ip) = peer.filter(|ip| self.boxed(*ip)) {
            // In the penalty box: the filter let it through only to be held here.
            Box::pin(self.tarpit(stream, ip, shutdown)).await;
            return None;
        }
        // A stop waits for a new connection's first request (see drain), not for an idle one.
        let mut opening = Some(super::drain::Busy::enter());
        let Some(held) = self.capacity.admit() else {
            metrics::get()
                .connections_refused
                .with_label_values(&["connection_limit"])
                .inc();
            return None;
        };
        let activity = held.activity.clone();
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
            Ok(Ok(tls)) if is_acme_validation(&tls) => return None,
            Ok(Ok(tls)) => Box::new(TlsConn(tls, activity.clone(), Default::default())) as Stream,
            Ok(Err(e)) => return handshake_failed(peer, &e.to_string()),
            Err(_) => return handshake_failed(peer, "timed out"),
        };
        drop(rt);
        let _open = OpenConnection::new();
        let mut session = ServerSession::new_http1(stream);
        session.set_keepalive(if *shutdown.borrow() { None } else { Some(60) });
        loop {
            activity.between_requests();
            // Closed when it is idle and a new connection needs its place.
            let reused = tokio::select! {
                reused = self.app.serve_one(session, peer, shutdown) => reused?,
                () = activity.evicted.notified() => return None,
            };
            opening.take();
            let (stream, settings) = reused.consume();
            session = ServerSession::new_http1(stream);
            if let Some(s) = settings {
                s.apply_to_session(&mut session);
            }
        }
    }
}

impl HookServer {
    /// Whether `ip` is in the penalty box for every receiver (a trusted proxy never is).
    fn boxed(&self, ip: IpAddr) -> bool {
        let rt = self.app.live.get();
        !rt.guard.is_trusted(ip) && rt.guard.blocked(ip).is_some()
    }

    /// Holds a boxed address's connection without a handshake, so its sender waits for its own
    /// timeout instead of reconnecting at once: until the sender closes it, sends more than a
    /// ClientHello's worth, the hold ends, a stop begins or a new connection needs its place
    /// under the cap. Closed at once when the tarpit or the cap has no room. Boxed, not awaited
    /// inline: its read buffer is no part of every connection's task.
    async fn tarpit(&self, mut stream: Stream, ip: IpAddr, shutdown: &ShutdownWatch) {
        use tokio::io::AsyncReadExt;
        let rt = self.app.live.get();
        let place = rt.guard.tarpit.hold();
        drop(rt);
        // Only a free place under the cap: a held connection never closes a client's idle one.
        let (Some(place), Some(held)) = (place, self.capacity.admit_spare()) else {
            EdgeFilter::refuse("blocked");
            return;
        };
        EdgeFilter::refuse("tarpitted");
        let _gauge = HeldGauge::new();
        // Idle from the start: the first to give way when the cap is reached.
        held.activity.between_requests();
        held.activity.client_silent();
        let mut shutdown = shutdown.clone();
        let mut buf = [0u8; 1024];
        let mut read = 0;
        let end = tokio::time::sleep(place.hold);
        tokio::pin!(end);
        loop {
            tokio::select! {
                r = stream.read(&mut buf) => match r {
                    Ok(n) if n > 0 && read + n <= tarpit::MAX_READ => read += n,
                    _ => break,
                },
                () = &mut end => break,
                () = held.activity.evicted.notified() => break,
                _ = shutdown.changed() => break,
            }
        }
        tracing::debug!(client = %ip, "tarpit: boxed connection held, now closed");
    }
}

/// A TLS-ALPN-01 validation: its handshake was the whole answer, nothing is served on it.
fn is_acme_validation(tls: &tokio_rustls::server::TlsStream<Stream>) -> bool {
    tls.get_ref().1.alpn_protocol() == Some(crate::acme::ACME_TLS_ALPN)
}

/// Counted, and logged at debug level only: anyone can make handshakes fail, and the log
/// must not grow with them.
fn handshake_failed(peer: Option<IpAddr>, why: &str) -> Option<Stream> {
    metrics::get().tls_handshake_failures.inc();
    tracing::debug!(client = ?peer, "TLS handshake failed: {why}");
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_cap_leaves_room_for_the_rest_of_the_process() {
        assert_eq!(from_fd_limit(Some(1024)), 1024 - 102 - 100);
        assert_eq!(from_fd_limit(Some(65536)), 65536 - 6553 - 100);
        assert_eq!(from_fd_limit(Some(50)), 1);
        assert_eq!(from_fd_limit(None), 0, "no limit, no cap");
    }

    fn idle(h: &Held) {
        h.activity.between_requests();
        h.activity.client_silent();
    }

    #[test]
    fn at_the_cap_the_oldest_idle_connection_gives_up_its_place() {
        let cap = Capacity::new(2);
        let a = cap.admit().unwrap();
        let b = cap.admit().unwrap();
        assert!(cap.admit().is_none(), "both busy: refused");
        idle(&b);
        idle(&a);
        // b has been idle the longest.
        let c = cap.admit().unwrap();
        assert_eq!(b.activity.state.load(SeqCst), EVICTED);
        assert_eq!(a.activity.state.load(SeqCst), IDLE);
        // a sent bytes: busy again, and no longer a candidate.
        a.activity.client_sent();
        drop(b);
        assert!(cap.admit().is_none());
        drop(c);
        assert!(cap.admit().is_some());
        assert!(lock(&cap.idle).is_empty());
    }

    #[test]
    fn a_connection_between_requests_is_idle_only_once_a_read_finds_nothing() {
        let cap = Capacity::new(1);
        let a = cap.admit().unwrap();
        // A pipelined request is served without a read that finds nothing.
        a.activity.between_requests();
        assert!(cap.admit().is_none());
        a.activity.client_silent();
        assert!(cap.admit().is_some());
    }

    #[test]
    fn no_cap_admits_everyone() {
        let cap = Capacity::new(0);
        let held: Vec<_> = (0..100).map(|_| cap.admit().unwrap()).collect();
        assert_eq!(cap.open.load(SeqCst), 100);
        drop(held);
        assert_eq!(cap.open.load(SeqCst), 0);
    }
}
