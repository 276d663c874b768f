//! Who is asking: the socket peer, unless the peer is a trusted proxy, in which case the
//! right-most address in `X-Forwarded-For` that is not itself a trusted proxy.

use super::cidr::{canonical, IpSet};
use std::net::{IpAddr, SocketAddr};

/// The client as the defences judge it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    /// The peer, or the right-most forwarded address that is not a trusted proxy. When that is
    /// a trusted proxy (no header, or only proxies in it), the proxy stands for many clients
    /// and is exempt from the per-address limits.
    Addr(IpAddr),
    /// A trusted proxy (`via`, the last trusted hop) forwarded an entry that is no address.
    /// Whoever wrote that entry is the client: it has no address of its own, so it is known by
    /// the proxy that passed it on, but limited and boxed like any address, never exempt.
    Unparsable { via: IpAddr },
}

impl Client {
    /// The address allow-lists, logs and answers name: for an unparsable entry, the proxy's.
    pub fn addr(self) -> IpAddr {
        match self {
            Client::Addr(ip) | Client::Unparsable { via: ip } => ip,
        }
    }
}

impl From<IpAddr> for Client {
    fn from(ip: IpAddr) -> Self {
        Client::Addr(canonical(ip))
    }
}

/// Resolves the client. The header is only read when the peer is a trusted proxy, and it is
/// read from the right, because only the entries appended by our own proxies can be
/// believed: anything to the left of the first untrusted entry was written by the client.
///
/// A malformed entry is where the walk stops: it is the right-most hop the proxies did not
/// vouch for, so it is the client, as an untrusted address there would be. It can make the
/// client look like nobody in particular, never like someone else, and never like the exempt
/// proxy.
pub fn resolve<'h>(
    peer: IpAddr,
    forwarded_for: impl Iterator<Item = &'h [u8]>,
    trusted: &IpSet,
) -> Client {
    let peer = canonical(peer);
    if !trusted.contains(peer) {
        return Client::Addr(peer);
    }
    let mut last_trusted = peer;
    // Several header lines form one list, in order.
    let lines: Vec<&[u8]> = forwarded_for.collect();
    for line in lines.iter().rev() {
        let Ok(line) = std::str::from_utf8(line) else {
            return Client::Unparsable { via: last_trusted };
        };
        for entry in line.rsplit(',') {
            let Some(ip) = parse_entry(entry) else {
                return Client::Unparsable { via: last_trusted };
            };
            if !trusted.contains(ip) {
                return Client::Addr(ip);
            }
            last_trusted = ip;
        }
    }
    Client::Addr(last_trusted)
}

/// `192.0.2.1`, `2001:db8::1`, `[2001:db8::1]`, `192.0.2.1:4711`, `[2001:db8::1]:4711`.
fn parse_entry(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some(canonical(sa.ip()));
    }
    s.strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .and_then(|r| r.parse::<IpAddr>().ok())
        .map(canonical)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::cidr::parse_net;

    fn trusted(nets: &[&str]) -> IpSet {
        let mut s = IpSet::default();
        for n in nets {
            s.insert(parse_net(n).unwrap());
        }
        s
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn run(peer: &str, headers: &[&str], t: &IpSet) -> IpAddr {
        match resolve(ip(peer), headers.iter().map(|h| h.as_bytes()), t) {
            Client::Addr(a) => a,
            other => panic!("{peer} {headers:?} resolved to {other:?}"),
        }
    }

    fn unparsable_via(peer: &str, headers: &[&[u8]], t: &IpSet) -> IpAddr {
        match resolve(ip(peer), headers.iter().copied(), t) {
            Client::Unparsable { via } => via,
            other => panic!("{peer} {headers:?} resolved to {other:?}"),
        }
    }

    #[test]
    fn untrusted_peers_are_never_believed() {
        let t = trusted(&["10.0.0.0/8"]);
        assert_eq!(run("203.0.113.9", &["1.2.3.4"], &t), ip("203.0.113.9"));
        assert_eq!(
            run("203.0.113.9", &[], &IpSet::default()),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn right_most_untrusted_entry_from_a_trusted_peer() {
        let t = trusted(&["10.0.0.0/8"]);
        // The client claims 1.1.1.1; the proxy appended the real peer 198.51.100.7.
        assert_eq!(
            run("10.0.0.2", &["1.1.1.1, 198.51.100.7"], &t),
            ip("198.51.100.7")
        );
        // Chained proxies are skipped.
        assert_eq!(
            run("10.0.0.2", &["198.51.100.7, 10.0.0.9"], &t),
            ip("198.51.100.7")
        );
        // Several header lines are one list.
        assert_eq!(
            run("10.0.0.2", &["1.1.1.1", "198.51.100.7, 10.1.1.1"], &t),
            ip("198.51.100.7")
        );
        // Forms with ports and brackets.
        assert_eq!(
            run("10.0.0.2", &["[2001:db8::5]:443"], &t),
            ip("2001:db8::5")
        );
        assert_eq!(
            run("10.0.0.2", &["198.51.100.7:1234"], &t),
            ip("198.51.100.7")
        );
        assert_eq!(
            run("::ffff:10.0.0.2", &["::ffff:198.51.100.7"], &t),
            ip("198.51.100.7")
        );
    }

    #[test]
    fn missing_headers_or_only_proxies_leave_the_last_trusted_hop() {
        let t = trusted(&["10.0.0.0/8"]);
        assert_eq!(run("10.0.0.2", &[], &t), ip("10.0.0.2"));
        assert_eq!(run("10.0.0.2", &["10.0.0.3, 10.0.0.4"], &t), ip("10.0.0.3"));
    }

    #[test]
    fn an_unparsable_entry_is_the_client_known_by_the_proxy_that_passed_it() {
        let t = trusted(&["10.0.0.0/8"]);
        assert_eq!(
            unparsable_via("10.0.0.2", &[b"unknown"], &t),
            ip("10.0.0.2")
        );
        assert_eq!(
            unparsable_via("10.0.0.2", &[b"198.51.100.7, garbage, 10.0.0.3"], &t),
            ip("10.0.0.3")
        );
        assert_eq!(unparsable_via("10.0.0.2", &[b""], &t), ip("10.0.0.2"));
        assert_eq!(
            unparsable_via("10.0.0.2", &[b"\xff\xfe"], &t),
            ip("10.0.0.2")
        );
        assert_eq!(
            unparsable_via("10.0.0.2", &[b"1.1.1.1,", b"10.0.0.7"], &t),
            ip("10.0.0.7"),
            "an empty entry is unparsable too"
        );
        // Only an untrusted peer's header is never read, garbled or not.
        assert_eq!(
            resolve(ip("203.0.113.9"), [b"garbage".as_slice()].into_iter(), &t),
            Client::Addr(ip("203.0.113.9"))
        );
        // Whatever is to the left of the first good untrusted entry does not matter.
        assert_eq!(
            run("10.0.0.2", &["garbage, 198.51.100.7"], &t),
            ip("198.51.100.7")
        );
    }
}
