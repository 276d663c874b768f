//! Who is asking: the socket peer, unless the peer is a trusted proxy, in which case the
//! right-most address in `X-Forwarded-For` that is not itself a trusted proxy.

use super::cidr::{canonical, IpSet};
use std::net::{IpAddr, SocketAddr};

/// Resolves the client address. The header is only read when the peer is a trusted proxy,
/// and it is read from the right, because only the entries appended by our own proxies can be
/// believed: anything to the left of the first untrusted entry was written by the client.
///
/// A malformed entry stops the walk at the last address known to be good (a trusted proxy),
/// so a garbled header can make the client look like the proxy but never like someone else.
pub fn resolve<'h>(
    peer: IpAddr,
    forwarded_for: impl Iterator<Item = &'h [u8]>,
    trusted: &IpSet,
) -> IpAddr {
    let peer = canonical(peer);
    if !trusted.contains(peer) {
        return peer;
    }
    let mut last_trusted = peer;
    // Several header lines form one list, in order.
    let lines: Vec<&[u8]> = forwarded_for.collect();
    for line in lines.iter().rev() {
        let Ok(line) = std::str::from_utf8(line) else {
            return last_trusted;
        };
        for entry in line.rsplit(',') {
            let Some(ip) = parse_entry(entry) else {
                return last_trusted;
            };
            if !trusted.contains(ip) {
                return ip;
            }
            last_trusted = ip;
        }
    }
    last_trusted
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
        resolve(ip(peer), headers.iter().map(|h| h.as_bytes()), t)
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
    fn malformed_or_missing_headers_fall_back_to_the_last_trusted_hop() {
        let t = trusted(&["10.0.0.0/8"]);
        assert_eq!(run("10.0.0.2", &[], &t), ip("10.0.0.2"));
        assert_eq!(run("10.0.0.2", &["unknown"], &t), ip("10.0.0.2"));
        assert_eq!(
            run("10.0.0.2", &["198.51.100.7, garbage, 10.0.0.3"], &t),
            ip("10.0.0.3")
        );
        assert_eq!(run("10.0.0.2", &[""], &t), ip("10.0.0.2"));
        assert_eq!(run("10.0.0.2", &["10.0.0.3, 10.0.0.4"], &t), ip("10.0.0.3"));
    }
}
