//! Base64 in the forms the API uses, through the `base64` crate: standard with padding for
//! Secret data and kubeconfig `*-data`, URL-safe without padding (Go's `RawURLEncoding`) for
//! continue tokens, and a lenient decoder that takes either.

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::{DecodePaddingMode, Engine};

const PAD_OPTIONAL: GeneralPurposeConfig =
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
const STD_ANY: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, PAD_OPTIONAL);
const URL_ANY: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, PAD_OPTIONAL);

pub(crate) fn encode(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

pub(crate) fn encode_url(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

/// Decodes either alphabet, padded or not; `None` on any invalid input.
pub(crate) fn decode(s: &str) -> Option<Vec<u8>> {
    STD_ANY.decode(s).or_else(|_| URL_ANY.decode(s)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors() {
        for (raw, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(encode(raw.as_bytes()), enc);
            assert_eq!(decode(enc).unwrap(), raw.as_bytes());
        }
        assert_eq!(encode_url(&[0xfb, 0xff]), "-_8");
        assert_eq!(decode("-_8").unwrap(), vec![0xfb, 0xff]);
        assert_eq!(decode("Zg").unwrap(), b"f");
        assert!(decode("a").is_none());
        assert!(decode("!!").is_none());
    }
}
