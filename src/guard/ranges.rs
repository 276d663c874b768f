//! Named range sets for `allow_from`: the providers' published webhook ranges, shipped as dated
//! snapshots, optionally refreshed from a URL or a file. A refresh that fails keeps the last
//! good set: an outage of GitHub's meta API must not lock GitHub out.

use super::cidr::{parse_net, IpSet};
use ipnet::IpNet;
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

const GITHUB: &str = include_str!("../../ranges/github.json");
const GITLAB: &str = include_str!("../../ranges/gitlab.txt");
const BITBUCKET: &str = include_str!("../../ranges/bitbucket.json");

/// The snapshots that ship with fluxgate.
pub fn builtin(name: &str) -> Option<&'static str> {
    match name {
        "github" => Some(GITHUB),
        "gitlab" => Some(GITLAB),
        "bitbucket" => Some(BITBUCKET),
        _ => None,
    }
}

pub const BUILTIN_NAMES: [&str; 3] = ["github", "gitlab", "bitbucket"];

/// Reads any of the formats providers publish, recognised by shape:
/// GitHub's meta (`{"hooks": [...]}`), Atlassian's ip-ranges (`{"items": [{"cidr", "product",
/// "direction"}]}`, Bitbucket egress only), a JSON array of strings, or text with one network per
/// line and `#` comments.
pub fn parse(text: &str) -> Result<Vec<IpNet>, String> {
    let trimmed = text.trim_start();
    let nets: Vec<String> = if trimmed.starts_with('{') || trimmed.starts_with('[') {
        let v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
        json_networks(&v)?
    } else {
        text.lines()
            .map(|l| l.split('#').next().unwrap_or("").trim())
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    };
    let parsed = nets
        .iter()
        .map(|n| parse_net(n))
        .collect::<Result<Vec<_>, _>>()?;
    if parsed.is_empty() {
        return Err("no networks in it".into());
    }
    Ok(parsed)
}

fn json_networks(v: &serde_json::Value) -> Result<Vec<String>, String> {
    let strings = |a: &Vec<serde_json::Value>| -> Result<Vec<String>, String> {
        a.iter()
            .map(|x| {
                x.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| format!("{x} is not a string"))
            })
            .collect()
    };
    if let Some(a) = v.as_array() {
        return strings(a);
    }
    if let Some(a) = v.get("hooks").and_then(|h| h.as_array()) {
        return strings(a);
    }
    if let Some(items) = v.get("items").and_then(|i| i.as_array()) {
        let has = |item: &serde_json::Value, field: &str, want: &str| {
            item.get(field)
                .and_then(|f| f.as_array())
                .is_some_and(|a| a.iter().any(|x| x.as_str() == Some(want)))
        };
        return Ok(items
            .iter()
            .filter(|i| has(i, "product", "bitbucket") && has(i, "direction", "egress"))
            .filter_map(|i| i.get("cidr").and_then(|c| c.as_str()).map(str::to_string))
            .collect());
    }
    Err("JSON of an unknown shape: expected GitHub's meta (\"hooks\"), Atlassian's ip-ranges (\"items\") or an array of networks".into())
}

/// Where a set is refreshed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Url(String),
    File(PathBuf),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Url(u) => f.write_str(u),
            Source::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// One named set: the networks in force now, and where to refresh them from.
#[derive(Debug)]
pub struct RangeSet {
    pub name: String,
    current: RwLock<Arc<IpSet>>,
    pub source: Option<Source>,
    pub interval: Duration,
}

impl RangeSet {
    pub fn new(name: &str, nets: &[IpNet], source: Option<Source>, interval: Duration) -> Self {
        RangeSet {
            name: name.to_string(),
            current: RwLock::new(Arc::new(to_set(nets))),
            source,
            interval,
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.snapshot().contains(ip)
    }

    pub fn snapshot(&self) -> Arc<IpSet> {
        self.current
            .read()
            .map(|c| c.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Replaces the set with newly fetched text; on any error the current set stays.
    pub fn apply(&self, fetched: Result<String, String>) -> Result<usize, String> {
        let nets = fetched.and_then(|t| parse(&t))?;
        let n = nets.len();
        if let Ok(mut cur) = self.current.write() {
            *cur = Arc::new(to_set(&nets));
        }
        Ok(n)
    }

    /// Fetches from the source. URLs are read with a deadline and a size cap.
    pub async fn fetch(&self, client: &reqwest::Client) -> Result<String, String> {
        match &self.source {
            None => Err("no refresh source".into()),
            Some(Source::File(p)) => tokio::fs::read_to_string(p)
                .await
                .map_err(|e| format!("cannot read {}: {e}", p.display())),
            Some(Source::Url(u)) => {
                let (_, body) =
                    crate::fetch::get(client, u, "application/json, text/plain", 8 * 1024 * 1024)
                        .await?;
                String::from_utf8(body).map_err(|_| format!("GET {u}: not UTF-8 text"))
            }
        }
    }

    pub async fn refresh(&self, client: &reqwest::Client) -> Result<usize, String> {
        let fetched = self.fetch(client).await;
        self.apply(fetched)
    }
}

fn to_set(nets: &[IpNet]) -> IpSet {
    let mut s = IpSet::default();
    for n in nets {
        s.insert(*n);
    }
    s
}

/// Whether `ip` belongs to a shared sender: it is in one of `sets` (the configuration's named
/// sets, refreshed or the operator's own), or in a built-in provider snapshot that `sets` does
/// not name. The built-in ones count even when no receiver names them: a receiver without
/// `allow_from` still takes GitHub's deliveries from GitHub's addresses.
pub fn is_provider(ip: IpAddr, sets: &[Arc<RangeSet>]) -> bool {
    static BUILTIN: OnceLock<Vec<(&'static str, IpSet)>> = OnceLock::new();
    if sets.iter().any(|s| s.contains(ip)) {
        return true;
    }
    BUILTIN
        .get_or_init(|| {
            BUILTIN_NAMES
                .iter()
                .filter_map(|n| Some((*n, to_set(&parse(builtin(n)?).ok()?))))
                .collect()
        })
        .iter()
        .any(|(name, set)| !sets.iter().any(|s| s.name == *name) && set.contains(ip))
}

/// All named sets a configuration uses, by name.
pub type RangeSets = HashMap<String, Arc<RangeSet>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_parse_and_match() {
        for name in BUILTIN_NAMES {
            let nets = parse(builtin(name).unwrap()).unwrap();
            assert!(!nets.is_empty(), "{name}");
        }
        let gh = RangeSet::new(
            "github",
            &parse(GITHUB).unwrap(),
            None,
            Duration::from_secs(60),
        );
        assert!(gh.contains("140.82.115.10".parse().unwrap()));
        assert!(gh.contains("2606:50c0:8000::154".parse().unwrap()));
        assert!(!gh.contains("140.82.128.1".parse().unwrap()));
        assert!(!gh.contains("8.8.8.8".parse().unwrap()));
        let bb = parse(BITBUCKET).unwrap();
        assert!(bb.contains(&"104.192.136.0/21".parse().unwrap()));
    }

    #[test]
    fn provider_addresses_are_those_of_any_named_set_or_builtin_snapshot() {
        let gh = "140.82.115.10".parse().unwrap();
        let office: IpAddr = "192.0.2.7".parse().unwrap();
        assert!(is_provider(gh, &[]), "built-in snapshots count unnamed");
        assert!(is_provider("104.192.136.1".parse().unwrap(), &[]));
        assert!(!is_provider("8.8.8.8".parse().unwrap(), &[]));
        let own = Arc::new(RangeSet::new(
            "office",
            &parse("192.0.2.0/24").unwrap(),
            None,
            Duration::from_secs(60),
        ));
        assert!(is_provider(office, &[own]));
        // A configured set of a built-in name replaces its snapshot.
        let replaced = Arc::new(RangeSet::new(
            "github",
            &parse("192.0.2.0/24").unwrap(),
            None,
            Duration::from_secs(60),
        ));
        assert!(!is_provider(gh, std::slice::from_ref(&replaced)));
        assert!(is_provider(office, &[replaced]));
    }

    #[test]
    fn atlassian_items_keep_only_bitbucket_egress() {
        let text = r#"{"items":[
            {"cidr":"104.192.136.0/21","product":["bitbucket"],"direction":["egress"]},
            {"cidr":"13.0.0.0/8","product":["jira"],"direction":["egress"]},
            {"cidr":"14.0.0.0/8","product":["bitbucket"],"direction":["ingress"]}]}"#;
        assert_eq!(
            parse(text).unwrap(),
            vec!["104.192.136.0/21".parse::<IpNet>().unwrap()]
        );
    }

    /// Serves `body` once per connection with `status`, as a provider's feed would.
    async fn feed(status: u16, body: &'static str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut c, _)) = l.accept().await {
                let mut buf = [0u8; 4096];
                let _ = c.read(&mut buf).await;
                let resp = format!("HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
                let _ = c.write_all(resp.as_bytes()).await;
            }
        });
        format!("http://{addr}/meta")
    }

    #[tokio::test]
    async fn refresh_from_a_url_in_github_meta_format_and_failures_keep_the_set() {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let client = reqwest::Client::builder().use_rustls_tls().build().unwrap();
        let start = parse(GITHUB).unwrap();
        let good = feed(
            200,
            r#"{"hooks": ["192.0.2.0/24", "2001:db8::/32"], "git": ["10.0.0.0/8"]}"#,
        )
        .await;
        let s = RangeSet::new(
            "github",
            &start,
            Some(Source::Url(good)),
            Duration::from_secs(1),
        );
        assert_eq!(s.refresh(&client).await.unwrap(), 2);
        assert!(s.contains("192.0.2.7".parse().unwrap()));
        assert!(
            !s.contains("10.1.1.1".parse().unwrap()),
            "only the hooks field counts"
        );
        for (status, body) in [
            (503, "{}"),
            (200, "<html>maintenance</html>"),
            (200, r#"{"hooks": []}"#),
        ] {
            let bad = RangeSet::new(
                "github",
                &start,
                Some(Source::Url(feed(status, body).await)),
                Duration::from_secs(1),
            );
            assert!(bad.refresh(&client).await.is_err(), "{status} {body}");
            assert!(
                bad.contains("140.82.115.10".parse().unwrap()),
                "kept the snapshot after {status} {body}"
            );
        }
        let closed = RangeSet::new(
            "github",
            &start,
            Some(Source::Url("http://127.0.0.1:1/meta".into())),
            Duration::from_secs(1),
        );
        assert!(closed.refresh(&client).await.is_err());
        assert!(closed.contains("140.82.115.10".parse().unwrap()));
    }

    #[test]
    fn a_failed_refresh_keeps_the_last_good_set() {
        let s = RangeSet::new(
            "x",
            &parse("10.0.0.0/8").unwrap(),
            None,
            Duration::from_secs(1),
        );
        assert!(s.apply(Ok("not a network".into())).is_err());
        assert!(s.apply(Ok("{\"unexpected\": 1}".into())).is_err());
        assert!(s.apply(Ok("# nothing\n".into())).is_err());
        assert!(s.apply(Err("connection refused".into())).is_err());
        assert!(s.contains("10.1.2.3".parse().unwrap()));
        assert_eq!(s.apply(Ok("192.0.2.0/24\n".into())).unwrap(), 1);
        assert!(!s.contains("10.1.2.3".parse().unwrap()));
        assert!(s.contains("192.0.2.9".parse().unwrap()));
    }
}
