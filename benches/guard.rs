//! The edge defences a request meets before its body is read: the client address, the
//! allow-list, the rate limits, the penalty box and the replay cache.
//!
//! `cargo bench --bench guard`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use fluxgate::config::LimitSettings;
use fluxgate::guard::cidr::{parse_net, IpSet};
use fluxgate::guard::rate::{FailurePolicy, Rate};
use fluxgate::guard::replay::{Claim, Mark};
use fluxgate::guard::tarpit::TarpitPolicy;
use fluxgate::guard::{client_ip, ranges, Guard};
use http::{HeaderMap, HeaderValue};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use std::collections::HashSet;
use std::fmt::Write as _;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::num::NonZeroU32;
use std::time::Duration;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A small deterministic generator, so every run builds the same sets.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0
    }
}

/// 10,000 IPv4 networks (/16 to /28) and 10,000 IPv6 networks (/32 to /64, inside 2000::/4).
fn large_set() -> (IpSet, Vec<IpNet>) {
    let mut rng = Lcg(0x5eed);
    let mut v4 = HashSet::new();
    while v4.len() < 10_000 {
        let r = rng.next();
        let len = 16 + (r % 13) as u8;
        v4.insert(IpNet::V4(
            Ipv4Net::new(Ipv4Addr::from((r >> 32) as u32), len)
                .unwrap()
                .trunc(),
        ));
    }
    let mut v6 = HashSet::new();
    while v6.len() < 10_000 {
        let (a, b) = (rng.next(), rng.next());
        let len = 32 + (b % 33) as u8;
        v6.insert(IpNet::V6(
            Ipv6Net::new(random_v6(a, b), len).unwrap().trunc(),
        ));
    }
    let nets: Vec<IpNet> = v4.into_iter().chain(v6).collect();
    let mut set = IpSet::default();
    for n in &nets {
        set.insert(*n);
    }
    (set, nets)
}

/// An address in 2000::/4, where the large set's IPv6 networks are.
fn random_v6(a: u64, b: u64) -> Ipv6Addr {
    Ipv6Addr::from(((0x2000 | (a as u128 & 0x0fff)) << 112) | ((a as u128 >> 16) << 64) | b as u128)
}

/// An address inside one of `nets` of the family (`hit`), or one that no network covers.
fn probe(set: &IpSet, nets: &[IpNet], v6: bool, hit: bool) -> IpAddr {
    let mut rng = Lcg(42);
    let family: Vec<&IpNet> = nets.iter().filter(|n| n.addr().is_ipv6() == v6).collect();
    loop {
        let (r, s) = (rng.next(), rng.next());
        let a = match (hit, v6) {
            // The network's address with random host bits.
            (true, _) => {
                let n = family[(r % family.len() as u64) as usize];
                match (n.network(), n.hostmask()) {
                    (IpAddr::V4(net), IpAddr::V4(host)) => IpAddr::V4(Ipv4Addr::from(
                        u32::from(net) | (s as u32 & u32::from(host)),
                    )),
                    (IpAddr::V6(net), IpAddr::V6(host)) => IpAddr::V6(Ipv6Addr::from(
                        u128::from(net) | ((s as u128 * 0x9e37_79b9_7f4a_7c15) & u128::from(host)),
                    )),
                    _ => unreachable!(),
                }
            }
            (false, false) => IpAddr::V4(Ipv4Addr::from((r >> 32) as u32)),
            (false, true) => IpAddr::V6(random_v6(r, s)),
        };
        if set.contains(a) == hit {
            return a;
        }
    }
}

fn allow_list(c: &mut Criterion) {
    let mut github = IpSet::default();
    for n in ranges::parse(ranges::builtin("github").unwrap()).unwrap() {
        github.insert(n);
    }
    let (large, nets) = large_set();
    eprintln!("guard: github set {github:?}, large set {large:?}");
    let cases = [
        ("github", &github, ip("140.82.115.10"), true),
        ("github", &github, ip("8.8.8.8"), false),
        ("github", &github, ip("2606:50c0:8000::154"), true),
        ("github", &github, ip("2001:db8::1"), false),
        ("10k", &large, probe(&large, &nets, false, true), true),
        ("10k", &large, probe(&large, &nets, false, false), false),
        ("10k", &large, probe(&large, &nets, true, true), true),
        ("10k", &large, probe(&large, &nets, true, false), false),
    ];
    let mut g = c.benchmark_group("guard/allow-list");
    for (set_name, set, addr, hit) in cases {
        assert_eq!(set.contains(addr), hit, "{set_name} {addr}");
        let id = format!(
            "{set_name}/{}-{}",
            if addr.is_ipv4() { "v4" } else { "v6" },
            if hit { "hit" } else { "miss" }
        );
        g.bench_function(id, |b| b.iter(|| set.contains(black_box(addr))));
    }
    g.finish();
}

fn client_address(c: &mut Criterion) {
    let none = IpSet::default();
    let mut proxies = IpSet::default();
    proxies.insert(parse_net("10.0.0.0/8").unwrap());
    proxies.insert(parse_net("fd00::/8").unwrap());
    let xff = |v: &str| {
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        h
    };
    let cases = [
        (
            "direct/no-header",
            ip("203.0.113.9"),
            HeaderMap::new(),
            &none,
        ),
        (
            "direct/header-ignored",
            ip("203.0.113.9"),
            xff("1.1.1.1, 198.51.100.7"),
            &none,
        ),
        (
            "proxy/no-header",
            ip("10.0.0.2"),
            HeaderMap::new(),
            &proxies,
        ),
        (
            "proxy/one-hop",
            ip("10.0.0.2"),
            xff("198.51.100.7"),
            &proxies,
        ),
        (
            "proxy/chain-4",
            ip("10.0.0.2"),
            xff("1.1.1.1, 198.51.100.7, 10.0.0.9, 10.0.0.8"),
            &proxies,
        ),
        (
            "proxy/chain-v6",
            ip("fd00::2"),
            xff("2001:db8::1, [2001:db8::5]:443, fd00::9"),
            &proxies,
        ),
    ];
    let mut g = c.benchmark_group("guard/client-ip");
    for (name, peer, head, trusted) in &cases {
        g.bench_function(*name, |b| {
            b.iter(|| {
                client_ip::resolve(
                    black_box(*peer),
                    head.get_all("x-forwarded-for").iter().map(|v| v.as_bytes()),
                    trusted,
                )
            })
        });
    }
    g.finish();
}

/// The defaults of config/fluxgate.toml.
fn default_limits() -> LimitSettings {
    LimitSettings {
        per_ip: Rate::parse("50/s", 200).unwrap(),
        per_receiver: Rate::parse("50/s", 500).unwrap(),
        failures: Some(FailurePolicy {
            limit: 20,
            window: Duration::from_secs(60),
            block_for: Duration::from_secs(600),
        }),
        tarpit: Some(TarpitPolicy {
            max: 1024,
            hold: Duration::from_secs(30),
        }),
        max_connections_per_ip: 64,
        replay_cache_entries: 100_000,
        body_memory_bytes: 64 * 1024 * 1024,
    }
}

/// Limits no benchmark loop can reach, so every check takes the "allowed" path.
fn generous_limits() -> LimitSettings {
    let huge = Some(Rate {
        count: NonZeroU32::MAX,
        per: Duration::from_secs(1),
        burst: NonZeroU32::MAX,
    });
    LimitSettings {
        per_ip: huge,
        per_receiver: huge,
        ..default_limits()
    }
}

fn rate_limits(c: &mut Criterion) {
    let mut g = c.benchmark_group("guard/rate");
    let hot = ip("203.0.113.9");

    let generous = Guard::new(&generous_limits(), IpSet::default());
    assert!(generous.check_ip(hot).is_ok());
    g.bench_function("check_ip/hot-allowed", |b| {
        b.iter(|| generous.check_ip(black_box(hot)))
    });

    let limited = Guard::new(&default_limits(), IpSet::default());
    while limited.check_ip(hot).is_ok() {}
    g.bench_function("check_ip/hot-over-limit", |b| {
        b.iter(|| limited.check_ip(black_box(hot)))
    });

    let many: Vec<IpAddr> = (0..10_000u32)
        .map(|i| IpAddr::V4(Ipv4Addr::from(0xC633_0000 | i)))
        .collect();
    for a in &many {
        assert!(generous.check_ip(*a).is_ok());
    }
    g.bench_with_input(
        BenchmarkId::new("check_ip/round-robin", many.len()),
        &many,
        |b, many| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % many.len();
                generous.check_ip(black_box(many[i]))
            })
        },
    );

    let mut proxies = IpSet::default();
    proxies.insert(parse_net("10.0.0.0/8").unwrap());
    let behind = Guard::new(&default_limits(), proxies);
    let proxy = ip("10.0.0.2");
    g.bench_function("check_ip/trusted-proxy", |b| {
        b.iter(|| behind.check_ip(black_box(proxy)))
    });

    g.bench_function("check_receiver/allowed", |b| {
        b.iter(|| generous.check_receiver(black_box(7)))
    });
    g.finish();
}

fn penalty_box(c: &mut Criterion) {
    let guard = Guard::new(&default_limits(), IpSet::default());
    let bad = ip("198.51.100.66");
    while !guard.record_failure(bad, None, &[]) {}
    assert!(guard.blocked(bad).is_some());
    let good = ip("203.0.113.9");
    assert!(guard.blocked(good).is_none());
    let mut g = c.benchmark_group("guard/penalty-box");
    g.bench_function("blocked/not-in-box", |b| {
        b.iter(|| guard.blocked(black_box(good)))
    });
    g.bench_function("blocked/in-box", |b| {
        b.iter(|| guard.blocked(black_box(bad)))
    });
    g.finish();
}

fn replays(c: &mut Criterion) {
    let window = Duration::from_secs(600);
    let mut g = c.benchmark_group("guard/replay");
    // Fresh GitHub-style delivery ids; past 100,000 (the default capacity) every claim also
    // evicts the oldest.
    let guard = Guard::new(&default_limits(), IpSet::default());
    g.bench_function("claim/fresh-id", |b| {
        let mut n: u64 = 0;
        let mut id = String::with_capacity(36);
        b.iter(|| {
            n += 1;
            id.clear();
            write!(id, "{:08x}-cc78-11e3-81ab-{:012x}", n as u32, n).unwrap();
            guard.replays.claim(0, black_box(&[Mark::id(&id)]), window)
        })
    });
    let dup = [Mark::id("72d3162e-cc78-11e3-81ab-4c9367dc0958")];
    assert_eq!(guard.replays.claim(0, &dup, window), Claim::New);
    g.bench_function("claim/duplicate", |b| {
        b.iter(|| guard.replays.claim(0, black_box(&dup), window))
    });
    g.finish();
}

criterion_group!(
    benches,
    allow_list,
    client_address,
    rate_limits,
    penalty_box,
    replays
);
criterion_main!(benches);
