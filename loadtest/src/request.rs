//! Requests as pre-built bytes: each kind's head is laid out once, with holes for the delivery
//! id (and, for unknown-path requests, the path); a request is the head with its holes filled
//! into a reused buffer, then the shared body.

use crate::mix::Kind;
use crate::signing::Signed;
use crate::target::Target;
use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::{Rng, RngCore};

/// Bodies up to this size are copied behind the head so a request is one write (and one TLS
/// record); larger ones are written from the shared buffer without a copy.
pub const INLINE_BODY_MAX: usize = 16 * 1024;

#[derive(Debug, Clone)]
enum Part {
    Static(Vec<u8>),
    /// A fresh uuid-like id, 36 characters.
    DeliveryId,
    /// `/hook/` and 64 random hex digits.
    RandomHookPath,
}

#[derive(Debug, Clone)]
struct Template {
    parts: Vec<Part>,
}

/// The three kinds of request and the body, shared by every worker.
#[derive(Clone)]
pub struct RequestSet {
    templates: [Template; 3],
    pub body: Bytes,
}

impl std::fmt::Debug for RequestSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The templates hold the signature or token.
        write!(f, "RequestSet {{ body: {} bytes }}", self.body.len())
    }
}

fn check_header(name: &str, value: &str) -> Result<(), String> {
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || !name.bytes().all(token) {
        return Err(format!("bad header name {name:?}"));
    }
    if value.bytes().any(|b| (b < b' ' && b != b'\t') || b == 0x7f) {
        return Err(format!("the value of header {name} has control characters"));
    }
    Ok(())
}

impl RequestSet {
    /// Lays out the heads. `extra` headers come after the provider's; `close` adds
    /// `Connection: close`.
    pub fn new(
        target: &Target,
        signed: &Signed,
        extra: &[(String, String)],
        body: Bytes,
        close: bool,
    ) -> Result<Self, String> {
        check_header(&signed.id_header, "")?;
        for (k, v) in signed.valid.iter().chain(&signed.bad).chain(extra) {
            check_header(k, v)?;
        }
        let build = |headers: &[(String, String)], unknown: bool| {
            let mut parts = Vec::new();
            let mut s = b"POST ".to_vec();
            if unknown {
                parts.push(Part::Static(std::mem::take(&mut s)));
                parts.push(Part::RandomHookPath);
            } else {
                s.extend_from_slice(target.path.as_bytes());
            }
            s.extend_from_slice(b" HTTP/1.1\r\nHost: ");
            s.extend_from_slice(target.host_header.as_bytes());
            s.extend_from_slice(b"\r\n");
            for (k, v) in headers.iter().chain(extra) {
                s.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
            }
            s.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
            if close {
                s.extend_from_slice(b"Connection: close\r\n");
            }
            s.extend_from_slice(signed.id_header.as_bytes());
            s.extend_from_slice(b": ");
            parts.push(Part::Static(s));
            parts.push(Part::DeliveryId);
            parts.push(Part::Static(b"\r\n\r\n".to_vec()));
            Template { parts }
        };
        Ok(RequestSet {
            templates: [
                build(&signed.valid, false),
                build(&signed.bad, false),
                build(&signed.valid, true),
            ],
            body,
        })
    }

    /// Whether the body goes into the same buffer as the head.
    pub fn inline_body(&self) -> bool {
        self.body.len() <= INLINE_BODY_MAX
    }

    /// Writes a request of `kind` into `out` (cleared first): the head, and the body too when
    /// it is small. Returns the delivery id's range in `out`.
    pub fn write(
        &self,
        kind: Kind,
        ids: &mut IdGen,
        rng: &mut SmallRng,
        out: &mut Vec<u8>,
    ) -> std::ops::Range<usize> {
        out.clear();
        let mut id_at = 0..0;
        for part in &self.templates[kind.index()].parts {
            match part {
                Part::Static(b) => out.extend_from_slice(b),
                Part::DeliveryId => {
                    let start = out.len();
                    ids.write_next(out);
                    id_at = start..out.len();
                }
                Part::RandomHookPath => {
                    out.extend_from_slice(b"/hook/");
                    for _ in 0..4 {
                        push_hex(out, rng.next_u64(), 16);
                    }
                }
            }
        }
        if self.inline_body() {
            out.extend_from_slice(&self.body);
        }
        id_at
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Appends the low `digits` hex digits of `v`.
fn push_hex(out: &mut Vec<u8>, v: u64, digits: u32) {
    for i in (0..digits).rev() {
        out.push(HEX[((v >> (i * 4)) & 0xf) as usize]);
    }
}

/// Fresh delivery ids shaped like a version-4 UUID: 60 random bits chosen per generator (and
/// so per worker), then a 60-bit counter. Distinct within a generator; across generators,
/// distinct unless two random prefixes collide (about 2^-60 per pair).
#[derive(Debug, Clone)]
pub struct IdGen {
    prefix: u64,
    counter: u64,
}

impl IdGen {
    pub fn new(rng: &mut impl Rng) -> Self {
        IdGen {
            prefix: rng.random::<u64>() & ((1 << 60) - 1),
            counter: 0,
        }
    }

    /// `pppppppp-pppp-4ppp-8ccc-cccccccccccc`, 36 characters.
    pub fn write_next(&mut self, out: &mut Vec<u8>) {
        let (p, c) = (self.prefix, self.counter);
        self.counter = (self.counter + 1) & ((1 << 60) - 1);
        push_hex(out, p >> 28, 8);
        out.push(b'-');
        push_hex(out, p >> 12, 4);
        out.extend_from_slice(b"-4");
        push_hex(out, p, 3);
        out.extend_from_slice(b"-8");
        push_hex(out, c >> 48, 3);
        out.push(b'-');
        push_hex(out, c, 12);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signing::{sign, Algorithm, ReceiverType, SignSpec};
    use rand::SeedableRng;

    fn set(close: bool, body: &[u8]) -> RequestSet {
        let t = Target::parse("https://127.0.0.1:8443/hook/abc").unwrap();
        let signed = sign(&SignSpec {
            receiver: ReceiverType::Github,
            algorithm: Algorithm::Sha256,
            secret: b"k",
            body,
            event: None,
            id_header: None,
        })
        .unwrap();
        RequestSet::new(
            &t,
            &signed,
            &[("X-Extra".into(), "1".into())],
            Bytes::copy_from_slice(body),
            close,
        )
        .unwrap()
    }

    fn parse(buf: &[u8]) -> (String, Vec<(String, String)>, usize) {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        let n = match req.parse(buf).unwrap() {
            httparse::Status::Complete(n) => n,
            _ => panic!("partial"),
        };
        let hs = req
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_string(),
                    String::from_utf8(h.value.to_vec()).unwrap(),
                )
            })
            .collect();
        (req.path.unwrap().to_string(), hs, n)
    }

    #[test]
    fn requests_parse_with_fresh_ids() {
        let s = set(true, b"{\"a\":1}");
        let mut ids = IdGen::new(&mut SmallRng::seed_from_u64(1));
        let mut rng = SmallRng::seed_from_u64(2);
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for kind in [Kind::Valid, Kind::BadSig, Kind::Unknown, Kind::Valid] {
            let range = s.write(kind, &mut ids, &mut rng, &mut out);
            let id = String::from_utf8(out[range].to_vec()).unwrap();
            assert_eq!(id.len(), 36);
            assert_eq!(&id[14..15], "4");
            assert!(seen.insert(id.clone()));
            let (path, headers, n) = parse(&out);
            assert_eq!(&out[n..], b"{\"a\":1}");
            let h = |k: &str| headers.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
            assert_eq!(h("X-GitHub-Delivery").unwrap(), id);
            assert_eq!(h("Content-Length").unwrap(), "7");
            assert_eq!(h("Connection").unwrap(), "close");
            assert_eq!(h("Host").unwrap(), "127.0.0.1:8443");
            assert_eq!(h("X-Extra").unwrap(), "1");
            match kind {
                Kind::Unknown => {
                    assert_eq!(path.len(), "/hook/".len() + 64);
                    assert!(path.starts_with("/hook/") && path != "/hook/abc");
                }
                _ => assert_eq!(path, "/hook/abc"),
            }
        }
    }

    #[test]
    fn big_bodies_are_not_copied() {
        let body = vec![b' '; INLINE_BODY_MAX + 1];
        let s = set(false, &body);
        assert!(!s.inline_body());
        let mut out = Vec::new();
        s.write(
            Kind::Valid,
            &mut IdGen::new(&mut SmallRng::seed_from_u64(1)),
            &mut SmallRng::seed_from_u64(1),
            &mut out,
        );
        let (_, headers, n) = parse(&out);
        assert_eq!(n, out.len());
        assert!(!headers.iter().any(|(k, _)| k == "Connection"));
    }

    #[test]
    fn bad_headers_are_refused() {
        assert!(check_header("X Bad", "v").is_err());
        assert!(check_header("X-Ok", "a\r\nb").is_err());
        assert!(check_header("X-Ok", "a b\t").is_ok());
    }
}
