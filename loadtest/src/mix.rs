//! The proportions of valid, bad-signature and unknown-path requests, drawn deterministically
//! by smooth weighted round robin: over any run of requests each kind's count stays within
//! one of its exact share, with the kinds interleaved rather than in blocks.

use std::str::FromStr;

/// What a request is meant to test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Signed correctly, sent to the target path.
    Valid,
    /// The same headers with a wrong signature or token.
    BadSig,
    /// Signed correctly, sent to another `/hook/<64 hex>` path.
    Unknown,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Valid, Kind::BadSig, Kind::Unknown];

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Valid => "valid",
            Kind::BadSig => "badsig",
            Kind::Unknown => "unknown",
        }
    }
}

/// Weights per kind, as in `valid=90,badsig=5,unknown=5`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MixSpec {
    pub weights: [u32; 3],
}

impl Default for MixSpec {
    fn default() -> Self {
        MixSpec { weights: [1, 0, 0] }
    }
}

impl FromStr for MixSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut weights = [0u32; 3];
        let mut seen = [false; 3];
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, w) = part
                .split_once('=')
                .ok_or_else(|| format!("expected kind=weight, got {part:?}"))?;
            let kind = Kind::ALL
                .into_iter()
                .find(|k| k.as_str() == name.trim())
                .ok_or_else(|| {
                    format!("unknown kind {name:?} (expected valid, badsig or unknown)")
                })?;
            let w: u32 = w
                .trim()
                .parse()
                .ok()
                .filter(|w| *w <= 1_000_000)
                .ok_or_else(|| format!("bad weight in {part:?}"))?;
            if std::mem::replace(&mut seen[kind.index()], true) {
                return Err(format!("{} given twice", kind.as_str()));
            }
            weights[kind.index()] = w;
        }
        if weights.iter().all(|w| *w == 0) {
            return Err("the mix needs at least one positive weight".into());
        }
        Ok(MixSpec { weights })
    }
}

impl MixSpec {
    pub fn total(&self) -> u32 {
        self.weights.iter().sum()
    }

    /// The fraction of requests of `kind`.
    pub fn share(&self, kind: Kind) -> f64 {
        f64::from(self.weights[kind.index()]) / f64::from(self.total())
    }
}

/// The draw: smooth weighted round robin (as nginx balances upstreams).
#[derive(Debug, Clone)]
pub struct Mix {
    weights: [i64; 3],
    current: [i64; 3],
    total: i64,
}

impl Mix {
    pub fn new(spec: MixSpec) -> Self {
        let weights = spec.weights.map(i64::from);
        Mix {
            weights,
            current: [0; 3],
            total: weights.iter().sum(),
        }
    }

    pub fn next_kind(&mut self) -> Kind {
        let mut best = 0;
        for i in 0..3 {
            self.current[i] += self.weights[i];
            if self.current[i] > self.current[best] {
                best = i;
            }
        }
        self.current[best] -= self.total;
        Kind::ALL[best]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        let m: MixSpec = "valid=90,badsig=5,unknown=5".parse().unwrap();
        assert_eq!(m.weights, [90, 5, 5]);
        let m: MixSpec = " badsig = 1 ".parse().unwrap();
        assert_eq!(m.weights, [0, 1, 0]);
        for bad in [
            "",
            "valid",
            "valid=0",
            "nope=1",
            "valid=x",
            "valid=1,valid=2",
        ] {
            assert!(bad.parse::<MixSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn exact_and_interleaved() {
        let spec: MixSpec = "valid=90,badsig=5,unknown=5".parse().unwrap();
        let mut mix = Mix::new(spec);
        let mut counts = [0i64; 3];
        for n in 1..=1000i64 {
            counts[mix.next_kind().index()] += 1;
            for (k, c) in counts.iter().enumerate() {
                let exact = n * i64::from(spec.weights[k]) / 100;
                assert!((c - exact).abs() <= 1, "after {n}: {counts:?}");
            }
        }
        assert_eq!(counts, [900, 50, 50]);
        // Interleaved: the 5% kinds never come twice in a row.
        let kinds: Vec<Kind> = (0..100).map(|_| mix.next_kind()).collect();
        assert!(kinds
            .windows(2)
            .all(|w| w[0] == Kind::Valid || w[1] == Kind::Valid));
    }
}
