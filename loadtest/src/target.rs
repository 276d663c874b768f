//! The target URL: `https://host[:port]/path`, resolved once before the run.

use std::net::{SocketAddr, ToSocketAddrs};

/// Where the requests go.
#[derive(Debug, Clone)]
pub struct Target {
    /// The URL as given (it never holds a secret).
    pub url: String,
    /// The host without brackets: a DNS name or an IP address (for SNI and certificate checks).
    pub host: String,
    pub port: u16,
    /// The path and query, starting with `/`.
    pub path: String,
    /// The `Host` header's value: the authority as written in the URL.
    pub host_header: String,
    /// The address connections are made to (the first one the host resolves to).
    pub addr: SocketAddr,
}

impl Target {
    /// Parses `url` (only `https://` is accepted) and resolves its host.
    pub fn parse(url: &str) -> Result<Target, String> {
        let rest = url
            .strip_prefix("https://")
            .ok_or_else(|| format!("the URL must start with https:// (got {url:?})"))?;
        let split = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(split);
        let path = path.split('#').next().unwrap_or("");
        if authority.is_empty() || authority.contains('@') {
            return Err(format!("bad host in URL {url:?}"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("unclosed [ in URL {url:?}"))?;
            let port = match after {
                "" => 443,
                p => parse_port(p.strip_prefix(':').unwrap_or("?"), url)?,
            };
            (h.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), parse_port(p, url)?),
                None => (authority.to_string(), 443),
            }
        };
        if host.is_empty() {
            return Err(format!("bad host in URL {url:?}"));
        }
        let path = if path.is_empty() {
            "/".to_string()
        } else if path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_string()
        };
        if path.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(format!(
                "the URL's path has spaces or control characters: {url:?}"
            ));
        }
        let addr = (host.as_str(), port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {host}: {e}"))?
            .next()
            .ok_or_else(|| format!("{host} resolves to no address"))?;
        Ok(Target {
            url: url.to_string(),
            host,
            port,
            path,
            host_header: authority.to_string(),
            addr,
        })
    }
}

fn parse_port(p: &str, url: &str) -> Result<u16, String> {
    p.parse()
        .ok()
        .filter(|&p| p != 0)
        .ok_or_else(|| format!("bad port in URL {url:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ip_urls() {
        let t = Target::parse("https://127.0.0.1:8443/hook/abc").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("127.0.0.1", 8443));
        assert_eq!(t.path, "/hook/abc");
        assert_eq!(t.host_header, "127.0.0.1:8443");
        assert_eq!(t.addr, "127.0.0.1:8443".parse().unwrap());

        let t = Target::parse("https://[::1]/x?y=1#frag").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 443));
        assert_eq!(t.path, "/x?y=1");
        assert_eq!(t.host_header, "[::1]");

        let t = Target::parse("https://localhost:9").unwrap();
        assert_eq!(t.path, "/");
        assert!(t.addr.ip().is_loopback());
    }

    #[test]
    fn refuses_bad_urls() {
        for u in [
            "http://127.0.0.1/",
            "127.0.0.1:8443",
            "https://",
            "https://127.0.0.1:0/",
            "https://127.0.0.1:x/",
            "https://[::1/",
            "https://u@127.0.0.1/",
            "https://127.0.0.1/a b",
        ] {
            assert!(Target::parse(u).is_err(), "{u}");
        }
    }
}
