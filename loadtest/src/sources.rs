//! Source addresses: `--sources N` spreads new connections over N distinct addresses of
//! `--source-net` (127.0.0.0/8 by default), each connection bound before it connects.

use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// `n` distinct host addresses of `net`, spread evenly across it, never its network or
/// broadcast address and never 127.0.0.1 (the address an unbound connection already uses).
pub fn pick(net: IpNet, n: usize) -> Result<Vec<IpAddr>, String> {
    if n == 0 {
        return Ok(Vec::new());
    }
    let (base, size): (u128, u128) = match net.trunc() {
        IpNet::V4(v4) => (
            u128::from(u32::from(v4.network())),
            1u128 << (32 - v4.prefix_len()),
        ),
        IpNet::V6(v6) => (
            u128::from(v6.network()),
            1u128
                .checked_shl(128 - u32::from(v6.prefix_len()))
                .unwrap_or(u128::MAX),
        ),
    };
    let v4 = matches!(net, IpNet::V4(_));
    let make = |v: u128| -> IpAddr {
        if v4 {
            IpAddr::V4(Ipv4Addr::from(v as u32))
        } else {
            IpAddr::V6(Ipv6Addr::from(v))
        }
    };
    let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
    // Usable hosts: [base+1, base+size-2] for nets of 4 or more addresses, all otherwise.
    let (first, count) = if size >= 4 {
        (base + 1, size - 2)
    } else {
        (base, size)
    };
    let skip_localhost = usize::from(net.contains(&localhost));
    if (n as u128).saturating_add(skip_localhost as u128) > count {
        return Err(format!(
            "{net} has only {} usable source addresses, {n} asked",
            count - skip_localhost as u128
        ));
    }
    let step = (count / (n as u128 + skip_localhost as u128)).max(1);
    let mut out = Vec::with_capacity(n);
    let mut i = 0u128;
    while out.len() < n {
        let a = make(first + i * step);
        i += 1;
        if a != localhost {
            out.push(a);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_over_loopback() {
        let a = pick("127.0.0.0/8".parse().unwrap(), 1000).unwrap();
        assert_eq!(a.len(), 1000);
        let set: std::collections::HashSet<_> = a.iter().collect();
        assert_eq!(set.len(), 1000);
        assert!(!a.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)));
        assert!(a.iter().all(|ip| match ip {
            IpAddr::V4(v) => v.octets()[0] == 127 && *v != Ipv4Addr::new(127, 255, 255, 255),
            _ => false,
        }));
        // Spread: more than one value of the second octet.
        let seconds: std::collections::HashSet<_> = a
            .iter()
            .map(|ip| match ip {
                IpAddr::V4(v) => v.octets()[1],
                _ => 0,
            })
            .collect();
        assert!(seconds.len() > 100);
    }

    #[test]
    fn small_nets() {
        let a = pick("127.0.0.0/30".parse().unwrap(), 1).unwrap();
        assert_eq!(a, vec!["127.0.0.2".parse::<IpAddr>().unwrap()]);
        assert!(pick("127.0.0.0/30".parse().unwrap(), 2).is_err());
        let a = pick("10.0.0.0/24".parse().unwrap(), 254).unwrap();
        assert_eq!(a.len(), 254);
        assert_eq!(pick("::1/128".parse().unwrap(), 1).unwrap().len(), 1);
        assert!(pick("127.0.0.0/8".parse().unwrap(), 0).unwrap().is_empty());
    }
}
