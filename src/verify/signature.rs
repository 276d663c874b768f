//! HMAC signatures of the body, `<algorithm>=<hex>` or bare hex, and the HMACs that check them.

use super::single_header;
use crate::refusal::Refusal;
use crate::secret::Secret;
use hmac::{Hmac, KeyInit, Mac};
use http::HeaderMap;
use sha1::Sha1;
use sha2::{Sha256, Sha512};
use std::str::FromStr;
use subtle::{Choice, ConstantTimeEq};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Sha1,
    Sha256,
    Sha512,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha1 => "sha1",
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    fn digest_len(self) -> usize {
        match self {
            Algorithm::Sha1 => 20,
            Algorithm::Sha256 => 32,
            Algorithm::Sha512 => 64,
        }
    }
}

impl FromStr for Algorithm {
    type Err = String;

    /// Only the exact lower-case names, as go-github accepts them.
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "sha1" => Ok(Algorithm::Sha1),
            "sha256" => Ok(Algorithm::Sha256),
            "sha512" => Ok(Algorithm::Sha512),
            _ => Err(format!(
                "unknown algorithm {s:?}; use sha1, sha256 or sha512"
            )),
        }
    }
}

/// A parsed `<algorithm>=<hex>` header value.
#[derive(Debug)]
pub struct Signature {
    pub algorithm: Algorithm,
    pub mac: Vec<u8>,
}

impl Signature {
    /// Parses like go-github's `messageMAC`: split once on `=`, an exact algorithm name, hex in
    /// either case. A digest of the wrong length is refused here, before any HMAC work.
    pub fn parse(header: &'static str, value: &[u8]) -> Result<Self, Refusal> {
        let malformed = || {
            Refusal::unauthorized(format!(
                "malformed signature in {header}: expected sha1=, sha256= or sha512= and a hex digest"
            ))
        };
        let eq = value
            .iter()
            .position(|&b| b == b'=')
            .ok_or_else(malformed)?;
        let (name, hexpart) = (&value[..eq], &value[eq + 1..]);
        let algorithm = match name {
            b"sha1" => Algorithm::Sha1,
            b"sha256" => Algorithm::Sha256,
            b"sha512" => Algorithm::Sha512,
            _ => {
                return Err(Refusal::unauthorized(format!(
                    "unsupported signature algorithm in {header}: use sha1, sha256 or sha512"
                )))
            }
        };
        let mac = hex::decode(hexpart).map_err(|_| malformed())?;
        if mac.len() != algorithm.digest_len() {
            return Err(Refusal::unauthorized(format!(
                "malformed signature in {header}: a {} digest has {} hex digits",
                algorithm.as_str(),
                algorithm.digest_len() * 2
            )));
        }
        Ok(Signature { algorithm, mac })
    }

    /// Parses a bare hex digest with no `<algorithm>=` prefix, as Nexus sends it. Flux
    /// compares it as a string with the lower-case hex it computes, so only lower-case
    /// digits of the digest's exact length can ever match: anything else is refused here,
    /// before any HMAC work. For those, comparing the decoded bytes is the same test.
    pub fn parse_bare(
        header: &'static str,
        algorithm: Algorithm,
        value: &[u8],
    ) -> Result<Self, Refusal> {
        let digits = algorithm.digest_len() * 2;
        let malformed = || {
            Refusal::unauthorized(format!(
                "malformed signature in {header}: expected {digits} lower-case hex digits of an HMAC-{}, with no prefix",
                algorithm.as_str().to_uppercase()
            ))
        };
        let lower_hex = |b: &u8| matches!(b, b'0'..=b'9' | b'a'..=b'f');
        if value.len() != digits || !value.iter().all(lower_hex) {
            return Err(malformed());
        }
        let mac = hex::decode(value).map_err(|_| malformed())?;
        Ok(Signature { algorithm, mac })
    }
}

/// HMAC states already keyed with each secret, so a request only clones them. They stand for
/// the secret: the hash cores inside wipe themselves when dropped (the `zeroize` feature), so
/// neither a request's clone nor the states a reload retires leave key material behind.
#[derive(Clone)]
struct KeyedMacs {
    sha1: Hmac<Sha1>,
    sha256: Hmac<Sha256>,
    sha512: Hmac<Sha512>,
}

/// The HMAC keys of one receiver: one entry per active secret.
#[derive(Clone)]
pub struct Keys(Vec<KeyedMacs>);

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keys({} secret(s))", self.0.len())
    }
}

impl Keys {
    pub fn new(secrets: &[Secret]) -> Self {
        Keys(
            secrets
                .iter()
                .map(|s| {
                    let k = s.expose();
                    KeyedMacs {
                        sha1: Hmac::new_from_slice(k).expect("HMAC takes keys of any length"),
                        sha256: Hmac::new_from_slice(k).expect("HMAC takes keys of any length"),
                        sha512: Hmac::new_from_slice(k).expect("HMAC takes keys of any length"),
                    }
                })
                .collect(),
        )
    }

    /// Reads and parses the signature header, and starts the body check against every secret.
    pub fn check_header(
        &self,
        head: &HeaderMap,
        header: &'static str,
    ) -> Result<HmacCheck, Refusal> {
        let value = signature_header(head, header)?;
        Ok(self.check(header, Signature::parse(header, value)?))
    }

    /// Like [`Keys::check_header`], for a header holding the bare hex digest of `algorithm`.
    pub fn check_bare_header(
        &self,
        head: &HeaderMap,
        header: &'static str,
        algorithm: Algorithm,
    ) -> Result<HmacCheck, Refusal> {
        let value = signature_header(head, header)?;
        Ok(self.check(header, Signature::parse_bare(header, algorithm, value)?))
    }

    pub fn check(&self, header: &'static str, sig: Signature) -> HmacCheck {
        let macs = self
            .0
            .iter()
            .map(|k| match sig.algorithm {
                Algorithm::Sha1 => Running::Sha1(k.sha1.clone()),
                Algorithm::Sha256 => Running::Sha256(k.sha256.clone()),
                Algorithm::Sha512 => Running::Sha512(k.sha512.clone()),
            })
            .collect();
        HmacCheck { header, sig, macs }
    }
}

/// The one, non-empty value of a signature header.
fn signature_header<'h>(head: &'h HeaderMap, header: &'static str) -> Result<&'h [u8], Refusal> {
    match single_header(head, header)? {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(Refusal::unauthorized(format!(
            "missing signature ({header})"
        ))),
    }
}

enum Running {
    Sha1(Hmac<Sha1>),
    Sha256(Hmac<Sha256>),
    Sha512(Hmac<Sha512>),
}

impl Running {
    fn update(&mut self, data: &[u8]) {
        match self {
            Running::Sha1(m) => m.update(data),
            Running::Sha256(m) => m.update(data),
            Running::Sha512(m) => m.update(data),
        }
    }

    fn matches(self, expected: &[u8]) -> Choice {
        match self {
            Running::Sha1(m) => m.finalize().into_bytes().as_slice().ct_eq(expected),
            Running::Sha256(m) => m.finalize().into_bytes().as_slice().ct_eq(expected),
            Running::Sha512(m) => m.finalize().into_bytes().as_slice().ct_eq(expected),
        }
    }
}

/// An HMAC over the body, computed as the body streams in.
pub struct HmacCheck {
    header: &'static str,
    sig: Signature,
    macs: Vec<Running>,
}

impl std::fmt::Debug for HmacCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "HmacCheck({}, {})",
            self.header,
            self.sig.algorithm.as_str()
        )
    }
}

impl HmacCheck {
    pub fn update(&mut self, chunk: &[u8]) {
        for m in &mut self.macs {
            m.update(chunk);
        }
    }

    /// Every secret is tried, with no early exit, so timing does not tell which one matched.
    pub fn finish(self) -> Result<(), Refusal> {
        let ok = self
            .macs
            .into_iter()
            .fold(Choice::from(0), |acc, m| acc | m.matches(&self.sig.mac));
        if bool::from(ok) {
            Ok(())
        } else {
            Err(Refusal::unauthorized(format!(
                "signature mismatch ({}, {})",
                self.header,
                self.sig.algorithm.as_str()
            )))
        }
    }
}

/// The hex HMAC of `body` under `key`, as a provider would send it.
pub fn sign(algorithm: Algorithm, key: &[u8], body: &[u8]) -> String {
    fn mac<M: Mac + KeyInit>(key: &[u8], body: &[u8]) -> Vec<u8> {
        let mut m = <M as KeyInit>::new_from_slice(key).expect("HMAC takes keys of any length");
        m.update(body);
        m.finalize().into_bytes().to_vec()
    }
    hex::encode(match algorithm {
        Algorithm::Sha1 => mac::<Hmac<Sha1>>(key, body),
        Algorithm::Sha256 => mac::<Hmac<Sha256>>(key, body),
        Algorithm::Sha512 => mac::<Hmac<Sha512>>(key, body),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"It's a Secret to Everybody";
    const BODY: &[u8] = b"Hello, World!";

    /// What `Hmac<D>` holds of its key is two `D::Core`s, keyed with the inner and outer pads.
    /// This fails to build if the hash crates lose their `zeroize` feature.
    #[test]
    fn keyed_hmac_states_are_wiped_when_dropped() {
        fn wiped_on_drop<T: zeroize::ZeroizeOnDrop>() {}
        wiped_on_drop::<<Sha1 as hmac::EagerHash>::Core>();
        wiped_on_drop::<<Sha256 as hmac::EagerHash>::Core>();
        wiped_on_drop::<<Sha512 as hmac::EagerHash>::Core>();
    }

    #[test]
    fn github_official_and_derived_vectors() {
        assert_eq!(
            sign(Algorithm::Sha256, SECRET, BODY),
            "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
        assert_eq!(
            sign(Algorithm::Sha1, SECRET, BODY),
            "01dc10d0c83e72ed246219cdd91669667fe2ca59"
        );
        assert_eq!(
            sign(Algorithm::Sha512, SECRET, BODY),
            "11ed355a617e98134e842012a7944ccf59c10256cb182357bd7e3a42013ff07c376f8c14cf5cc1923da20b51d64256b2fb8ebbf100aa67a61326f61fea8111bc"
        );
    }

    #[test]
    fn streaming_in_pieces_equals_one_shot() {
        let keys = Keys::new(&[Secret::new(SECRET.to_vec())]);
        let sig = Signature::parse(
            "X-Signature",
            format!("sha256={}", sign(Algorithm::Sha256, SECRET, BODY)).as_bytes(),
        )
        .unwrap();
        let mut c = keys.check("X-Signature", sig);
        for piece in BODY.chunks(3) {
            c.update(piece);
        }
        c.finish().unwrap();
    }

    #[test]
    fn any_of_several_secrets_verifies_and_a_third_does_not() {
        let keys = Keys::new(&[Secret::new(b"old".to_vec()), Secret::new(b"new".to_vec())]);
        for (key, ok) in [(&b"old"[..], true), (b"new", true), (b"other", false)] {
            let hexsig = sign(Algorithm::Sha512, key, BODY);
            let mut c = keys.check(
                "X-Signature",
                Signature::parse("X-Signature", format!("sha512={hexsig}").as_bytes()).unwrap(),
            );
            c.update(BODY);
            assert_eq!(c.finish().is_ok(), ok, "key {key:?}");
        }
    }

    #[test]
    fn refusals_name_the_problem_without_the_expected_value() {
        let bad = |v: &str| Signature::parse("X-Signature", v.as_bytes()).unwrap_err();
        assert!(bad("sha256").reason.contains("malformed"));
        assert!(bad("md5=abcd")
            .reason
            .contains("unsupported signature algorithm"));
        assert!(bad("SHA256=abcd")
            .reason
            .contains("unsupported signature algorithm"));
        assert!(bad("sha256=zz").reason.contains("malformed"));
        assert!(bad("sha256=abc").reason.contains("malformed"));
        assert!(bad("sha256=abcd").reason.contains("64 hex digits"));
        // Upper-case hex is accepted, as go-github's hex decoding does.
        let upper = sign(Algorithm::Sha1, SECRET, BODY).to_uppercase();
        Signature::parse("X-Signature", format!("sha1={upper}").as_bytes()).unwrap();

        let keys = Keys::new(&[Secret::new(SECRET.to_vec())]);
        let wrong = format!("sha256={}", "0".repeat(64));
        let mut c = keys.check(
            "X-Signature",
            Signature::parse("X-Signature", wrong.as_bytes()).unwrap(),
        );
        c.update(BODY);
        let r = c.finish().unwrap_err();
        assert_eq!(r.status, 401);
        assert_eq!(r.reason, "signature mismatch (X-Signature, sha256)");
    }

    #[test]
    fn bare_hex_is_exactly_the_lower_case_digest() {
        let good = sign(Algorithm::Sha1, SECRET, BODY);
        let sig = Signature::parse_bare("X-Sig", Algorithm::Sha1, good.as_bytes()).unwrap();
        let keys = Keys::new(&[Secret::new(SECRET.to_vec())]);
        let mut c = keys.check("X-Sig", sig);
        c.update(BODY);
        c.finish().unwrap();

        let expected = "malformed signature in X-Sig: expected 40 lower-case hex digits of an HMAC-SHA1, with no prefix";
        for bad in [
            good.to_uppercase(),
            format!("sha1={good}"),
            good[..38].to_string(),
            format!("{good}00"),
            format!(" {}", &good[1..]),
            "g".repeat(40),
        ] {
            let r = Signature::parse_bare("X-Sig", Algorithm::Sha1, bad.as_bytes()).unwrap_err();
            assert_eq!((r.status, r.reason.as_ref()), (401, expected), "{bad}");
        }
    }
}
