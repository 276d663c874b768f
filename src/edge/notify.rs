//! The systemd notification protocol (`Type=notify`): `READY=1` once both listeners accept
//! connections, `RELOADING=1` then `READY=1` around a reload, `STOPPING=1` when a stop begins,
//! with a `STATUS=` line each. Outside systemd (no `NOTIFY_SOCKET`) every call does nothing.

use sd_notify::NotifyState;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Set once `READY=1` was sent: a reload before that must not claim readiness early.
static STARTED: AtomicBool = AtomicBool::new(false);

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!("cannot notify systemd (NOTIFY_SOCKET): {e}");
    }
}

/// Sends `READY=1` from a thread of its own once every address listens, or logs why not
/// after `limit` (systemd's start timeout then fails the start, as it should).
pub fn ready_when_listening(mut addrs: Vec<SocketAddr>, status: String, limit: Duration) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    // Port 0 (any free port, as load tests ask) cannot be looked up: it is not waited for.
    addrs.retain(|a| a.port() != 0);
    let spawned = std::thread::Builder::new()
        .name("fluxgate notify".into())
        .spawn(move || {
            let until = Instant::now() + limit;
            while !addrs.iter().all(|a| listening(*a)) {
                if Instant::now() >= until {
                    tracing::error!("the listeners {addrs:?} did not open within {limit:?}: not telling systemd fluxgate is ready");
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            STARTED.store(true, Ordering::SeqCst);
            send(&[NotifyState::Ready, NotifyState::Status(&status)]);
        });
    if let Err(e) = spawned {
        tracing::error!("cannot start the readiness thread: {e}");
    }
}

/// A reload starts. `MONOTONIC_USEC` is what systemd 253+ asks of `RELOADING=1`.
pub fn reloading() {
    if !STARTED.load(Ordering::SeqCst) {
        return;
    }
    let mut states = vec![
        NotifyState::Reloading,
        NotifyState::Status("reloading the configuration"),
    ];
    if let Ok(now) = NotifyState::monotonic_usec_now() {
        states.push(now);
    }
    send(&states);
}

/// The reload ended, applied or refused: fluxgate serves again.
pub fn reloaded(status: &str) {
    if STARTED.load(Ordering::SeqCst) {
        send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }
}

pub fn stopping(status: &str) {
    send(&[NotifyState::Stopping, NotifyState::Status(status)]);
}

/// Whether a socket listens on `addr`, read from the kernel's table (/proc/self/net/tcp), so
/// nothing connects to the public listener (which would count as a refused client). Where
/// that table cannot be read, a connection tells.
fn listening(addr: SocketAddr) -> bool {
    let (table, ip) = match addr.ip() {
        IpAddr::V4(ip) => ("/proc/self/net/tcp", words(&ip.octets())),
        IpAddr::V6(ip) => ("/proc/self/net/tcp6", words(&ip.octets())),
    };
    let local = format!("{ip}:{:04X}", addr.port());
    match std::fs::read_to_string(table) {
        Ok(text) => text.lines().skip(1).any(|l| {
            let mut f = l.split_whitespace();
            // "sl local_address rem_address st ...", st 0A is LISTEN.
            f.nth(1) == Some(local.as_str()) && f.nth(1) == Some("0A")
        }),
        Err(_) => {
            let mut a = addr;
            if a.ip().is_unspecified() {
                a.set_ip(match a {
                    SocketAddr::V4(_) => IpAddr::from([127, 0, 0, 1]),
                    SocketAddr::V6(_) => IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
                });
            }
            std::net::TcpStream::connect_timeout(&a, Duration::from_millis(200)).is_ok()
        }
    }
}

/// An address as the kernel prints it: each 32-bit word in host (little-endian) order.
fn words(octets: &[u8]) -> String {
    octets
        .chunks(4)
        .map(|c| format!("{:08X}", u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listening_socket_is_found_in_the_kernel_table_and_a_closed_one_is_not() {
        for any in ["127.0.0.1:0", "[::1]:0"] {
            let Ok(l) = std::net::TcpListener::bind(any) else {
                continue; // no IPv6 here
            };
            let addr = l.local_addr().unwrap();
            assert!(listening(addr), "{addr}");
            drop(l);
            assert!(!listening(addr), "{addr}");
        }
    }
}
