//! The `[limits]` and `[ranges.NAME]` sections, and receivers' `allow_from`.

use super::{duration, duration_or_off, Problems};
use crate::guard::allow::AllowList;
use crate::guard::cidr::{parse_net, IpSet};
use crate::guard::ranges::{self, RangeSet, RangeSets, Source};
use crate::guard::rate::{FailurePolicy, Rate};
use crate::guard::tarpit::TarpitPolicy;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    per_ip: Option<String>,
    per_ip_burst: Option<u32>,
    per_receiver: Option<String>,
    per_receiver_burst: Option<u32>,
    block_after_failures: Option<u32>,
    failure_window: Option<String>,
    block_for: Option<String>,
    max_connections_per_ip: Option<u32>,
    tarpit_connections: Option<usize>,
    tarpit_for: Option<String>,
    replay_cache_entries: Option<usize>,
    body_memory_bytes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRange {
    refresh_url: Option<String>,
    refresh_file: Option<PathBuf>,
    refresh_interval: Option<String>,
}

/// Limits on what one client, one receiver and one address may do.
#[derive(Debug, Clone)]
pub struct LimitSettings {
    /// Every request from one client address (IPv6: one /64).
    pub per_ip: Option<Rate>,
    /// Verified deliveries to one receiver; forged ones never count, so they cannot use up a
    /// receiver's budget and lock its real sender out.
    pub per_receiver: Option<Rate>,
    pub failures: Option<FailurePolicy>,
    /// New connections from boxed addresses held at once, at most, and for how long each
    /// (see [`crate::guard::tarpit`]); `None`: they are closed at once.
    pub tarpit: Option<TarpitPolicy>,
    /// 0 means no limit.
    pub max_connections_per_ip: u32,
    pub replay_cache_entries: usize,
    /// Bytes of bodies held in full across all requests in flight; past it, body-keeping
    /// requests are refused with 503 while streamed ones go on.
    pub body_memory_bytes: u64,
}

/// Twenty bodies at Flux's 3 MiB cap, about.
pub const DEFAULT_BODY_MEMORY_BYTES: u64 = 64 * 1024 * 1024;

pub(super) fn limits(raw: RawLimits, p: &mut Problems) -> LimitSettings {
    let rate = |key: &str,
                v: Option<String>,
                default: &str,
                burst: Option<u32>,
                dburst: u32,
                p: &mut Problems| {
        let s = v.unwrap_or_else(|| default.to_string());
        p.take(key, Rate::parse(&s, burst.unwrap_or(dburst)))
            .flatten()
    };
    let per_ip = rate(
        "limits.per_ip",
        raw.per_ip,
        "50/s",
        raw.per_ip_burst,
        200,
        p,
    );
    let per_receiver = rate(
        "limits.per_receiver",
        raw.per_receiver,
        "50/s",
        raw.per_receiver_burst,
        500,
        p,
    );
    let failures = match raw.block_after_failures.unwrap_or(20) {
        0 => None,
        limit => Some(FailurePolicy {
            limit,
            window: duration(
                "limits.failure_window",
                raw.failure_window.as_deref(),
                Duration::from_secs(60),
                p,
            ),
            block_for: duration(
                "limits.block_for",
                raw.block_for.as_deref(),
                Duration::from_secs(600),
                p,
            ),
        }),
    };
    let tarpit = tarpit(raw.tarpit_connections, raw.tarpit_for.as_deref(), p);
    let body_memory_bytes = raw.body_memory_bytes.unwrap_or(DEFAULT_BODY_MEMORY_BYTES);
    if body_memory_bytes == 0 {
        p.add(
            "limits.body_memory_bytes",
            "must be more than zero; body-keeping receivers could take no delivery",
        );
    }
    LimitSettings {
        per_ip,
        per_receiver,
        failures,
        tarpit,
        max_connections_per_ip: raw.max_connections_per_ip.unwrap_or(64),
        replay_cache_entries: raw.replay_cache_entries.unwrap_or(100_000).max(1),
        body_memory_bytes,
    }
}

/// The tarpit for boxed addresses: 1,024 connections held for 30 s by default, none with
/// `tarpit_connections = 0` or `tarpit_for = "0s"`.
fn tarpit(
    connections: Option<usize>,
    hold: Option<&str>,
    p: &mut Problems,
) -> Option<TarpitPolicy> {
    let max = connections.unwrap_or(1024);
    if max > MAX_TARPIT_CONNECTIONS {
        p.add(
            "limits.tarpit_connections",
            format!(
                "at most {MAX_TARPIT_CONNECTIONS}: each held connection keeps a file descriptor"
            ),
        );
    }
    let hold = duration_or_off("limits.tarpit_for", hold, Duration::from_secs(30), p);
    (max > 0 && !hold.is_zero()).then_some(TarpitPolicy { max, hold })
}

/// Far above any flood a host sees from distinct boxed addresses at once, far below the
/// open-file limits a gateway runs with.
const MAX_TARPIT_CONNECTIONS: usize = 65_536;

/// Builds every configured range set, plus the built-in ones a receiver names without
/// configuring them.
pub(super) fn range_sets(raw: HashMap<String, RawRange>, p: &mut Problems) -> RangeSets {
    let mut out = RangeSets::new();
    for (name, r) in raw {
        let key = format!("ranges.{name}");
        let interval = duration(
            &format!("{key}.refresh_interval"),
            r.refresh_interval.as_deref(),
            Duration::from_secs(6 * 3600),
            p,
        );
        let source = match (r.refresh_url, r.refresh_file) {
            (Some(u), None) if u.starts_with("https://") || u.starts_with("http://") => {
                Some(Source::Url(u))
            }
            (Some(u), None) => {
                p.add(
                    format!("{key}.refresh_url"),
                    format!("{u:?} is not an http(s) URL"),
                );
                None
            }
            (None, Some(f)) => Some(Source::File(f)),
            (Some(_), Some(_)) => {
                p.add(&key, "give refresh_url or refresh_file, not both");
                None
            }
            (None, None) => None,
        };
        // The set starts from the file when there is one (it is the operator's list), else
        // from the shipped snapshot.
        let initial = match (&source, ranges::builtin(&name)) {
            (Some(Source::File(f)), _) => match std::fs::read_to_string(f) {
                Ok(text) => p.take(
                    &format!("{key}.refresh_file"),
                    ranges::parse(&text).map_err(|e| format!("{}: {e}", f.display())),
                ),
                Err(e) => {
                    p.add(
                        format!("{key}.refresh_file"),
                        format!("cannot read {}: {e}", f.display()),
                    );
                    None
                }
            },
            (_, Some(snapshot)) => ranges::parse(snapshot).ok(),
            (_, None) => {
                p.add(
                    &key,
                    format!(
                        "{name:?} is not a built-in set ({}); give refresh_file with its networks",
                        ranges::BUILTIN_NAMES.join(", ")
                    ),
                );
                None
            }
        };
        if let Some(nets) = initial {
            out.insert(
                name.clone(),
                Arc::new(RangeSet::new(&name, &nets, source, interval)),
            );
        }
    }
    out
}

/// Resolves `allow_from` entries: networks, or names of range sets (built-in ones are added to
/// `sets` on first use). An empty list allows everyone.
pub(super) fn allow_list(
    key: &str,
    entries: &[String],
    sets: &mut RangeSets,
    p: &mut Problems,
) -> Option<AllowList> {
    if entries.is_empty() {
        return None;
    }
    let mut allow = AllowList {
        nets: IpSet::default(),
        sets: Vec::new(),
    };
    for (i, e) in entries.iter().enumerate() {
        let k = format!("{key}.allow_from[{i}]");
        let looks_like_net = e.contains('/') || e.parse::<std::net::IpAddr>().is_ok();
        if looks_like_net {
            if let Some(n) = p.take(&k, parse_net(e)) {
                allow.nets.insert(n);
            }
            continue;
        }
        if !sets.contains_key(e) {
            if let Some(snapshot) = ranges::builtin(e) {
                if let Ok(nets) = ranges::parse(snapshot) {
                    sets.insert(
                        e.clone(),
                        Arc::new(RangeSet::new(e, &nets, None, Duration::from_secs(6 * 3600))),
                    );
                }
            }
        }
        match sets.get(e) {
            Some(s) => allow.sets.push(s.clone()),
            None => {
                let mut known: Vec<&str> = ranges::BUILTIN_NAMES.to_vec();
                known.extend(sets.keys().map(String::as_str));
                known.sort_unstable();
                known.dedup();
                p.add(
                    &k,
                    format!(
                        "{e:?} is neither a network nor a range set; known sets: {}",
                        known.join(", ")
                    ),
                );
            }
        }
    }
    Some(allow)
}

/// `server.trusted_proxies`.
pub(super) fn trusted_proxies(entries: &[String], p: &mut Problems) -> IpSet {
    let mut set = IpSet::default();
    for (i, e) in entries.iter().enumerate() {
        if let Some(n) = p.take(&format!("server.trusted_proxies[{i}]"), parse_net(e)) {
            set.insert(n);
        }
    }
    set
}
