//! `X-Forwarded-For` and the client address: any peer, any header values, any trusted set.
#![no_main]

use fluxgate::guard::cidr::{parse_net, IpSet};
use fluxgate::guard::client_ip;
use libfuzzer_sys::fuzz_target;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::LazyLock;

static TRUSTED: LazyLock<IpSet> = LazyLock::new(|| {
    let nets = ["10.0.0.0/8", "127.0.0.1/32", "::1/128", "2001:db8::/32"];
    let mut set = IpSet::default();
    for n in nets {
        set.insert(parse_net(n).expect("a valid network"));
    }
    set
});

fuzz_target!(|data: &[u8]| {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    let (peer, rest): (IpAddr, &[u8]) = if kind & 1 == 0 && rest.len() >= 4 {
        let b: [u8; 4] = rest[..4].try_into().unwrap_or_default();
        (Ipv4Addr::from(b).into(), &rest[4..])
    } else if rest.len() >= 16 {
        let b: [u8; 16] = rest[..16].try_into().unwrap_or_default();
        (Ipv6Addr::from(b).into(), &rest[16..])
    } else {
        (Ipv4Addr::new(10, 0, 0, 1).into(), rest)
    };
    let headers = rest.split(|b| *b == b'\n');
    let _ = client_ip::resolve(peer, headers, &TRUSTED);
});
