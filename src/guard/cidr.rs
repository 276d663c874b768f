//! Sets of IPv4 and IPv6 networks, with membership tested by prefix trie.

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use prefix_trie::PrefixSet;
use std::net::IpAddr;

/// IPv4-mapped IPv6 addresses (`::ffff:192.0.2.1`, as a dual-stack socket reports IPv4 peers)
/// are the IPv4 address they carry, so one rule covers both forms.
pub fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

#[derive(Clone, Default)]
pub struct IpSet {
    v4: PrefixSet<Ipv4Net>,
    v6: PrefixSet<Ipv6Net>,
}

impl std::fmt::Debug for IpSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IpSet({} IPv4, {} IPv6)", self.v4.len(), self.v6.len())
    }
}

impl IpSet {
    pub fn insert(&mut self, net: IpNet) {
        match net.trunc() {
            IpNet::V4(n) => {
                self.v4.insert(n);
            }
            IpNet::V6(n) => {
                self.v6.insert(n);
            }
        }
    }

    pub fn extend(&mut self, other: &IpSet) {
        for n in other.v4.iter() {
            self.v4.insert(n);
        }
        for n in other.v6.iter() {
            self.v6.insert(n);
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match canonical(ip) {
            IpAddr::V4(a) => self.v4.is_covered(&Ipv4Net::from(a)),
            IpAddr::V6(a) => self.v6.is_covered(&Ipv6Net::from(a)),
        }
    }

    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn networks(&self) -> Vec<IpNet> {
        self.v4
            .iter()
            .map(IpNet::V4)
            .chain(self.v6.iter().map(IpNet::V6))
            .collect()
    }
}

/// Parses `192.0.2.0/24`, `2001:db8::/32`, or a bare address (a /32 or /128).
pub fn parse_net(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    if let Ok(n) = s.parse::<IpNet>() {
        if n != n.trunc() {
            return Err(format!(
                "{s:?} has host bits set; did you mean {}?",
                n.trunc()
            ));
        }
        return Ok(n);
    }
    s.parse::<IpAddr>()
        .map(|a| IpNet::from(canonical(a)))
        .map_err(|_| format!("{s:?} is not an IP address or CIDR network"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(nets: &[&str]) -> IpSet {
        let mut s = IpSet::default();
        for n in nets {
            s.insert(parse_net(n).unwrap());
        }
        s
    }

    #[test]
    fn membership_v4_v6_and_mapped() {
        let s = set(&["192.30.252.0/22", "2a0a:a440::/29", "127.0.0.7"]);
        assert!(s.contains("192.30.253.9".parse().unwrap()));
        assert!(!s.contains(
            "192.30.256.0"
                .parse()
                .unwrap_or("192.31.0.1".parse().unwrap())
        ));
        assert!(s.contains("::ffff:192.30.252.1".parse().unwrap()));
        assert!(s.contains("2a0a:a447:ffff::1".parse().unwrap()));
        assert!(!s.contains("2a0a:a448::1".parse().unwrap()));
        assert!(s.contains("127.0.0.7".parse().unwrap()));
        assert!(!s.contains("127.0.0.8".parse().unwrap()));
        assert!(!IpSet::default().contains("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn parse_errors_say_what_is_wrong() {
        assert!(parse_net("10.0.0.1/8")
            .unwrap_err()
            .contains("did you mean 10.0.0.0/8"));
        assert!(parse_net("github")
            .unwrap_err()
            .contains("not an IP address"));
        assert!(parse_net("10.0.0.0/33").is_err());
    }
}
