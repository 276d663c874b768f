//! The request body: the GitHub push fixture, a file, or generated JSON of a given size.
//! It is loaded once and shared (`bytes::Bytes`) by every request.

use bytes::Bytes;

/// A real GitHub push delivery (octokit/webhooks, MIT; see tests/fixtures/NOTICE.md).
pub const GITHUB_PUSH: &[u8] = include_bytes!("../../tests/fixtures/github/push.json");

/// Reads `path` whole.
pub fn from_file(path: &std::path::Path) -> Result<Bytes, String> {
    std::fs::read(path)
        .map(Bytes::from)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// A valid JSON object of exactly `size` bytes: a push-like object padded with a string field,
/// or for very small sizes `{}` followed by spaces.
pub fn generate(size: usize) -> Result<Bytes, String> {
    const HEAD: &str = concat!(
        "{\"ref\":\"refs/heads/main\",",
        "\"before\":\"0000000000000000000000000000000000000000\",",
        "\"after\":\"4d3c2b1a00000000000000000000000000000000\",",
        "\"repository\":{\"full_name\":\"loadtest/repository\"},",
        "\"padding\":\""
    );
    const TAIL: &str = "\"}";
    const PATTERN: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    if size < 2 {
        return Err(format!("a JSON body needs at least 2 bytes, not {size}"));
    }
    let mut out = Vec::with_capacity(size);
    if size < HEAD.len() + TAIL.len() {
        out.extend_from_slice(b"{}");
        out.resize(size, b' ');
    } else {
        out.extend_from_slice(HEAD.as_bytes());
        let pad = size - HEAD.len() - TAIL.len();
        out.extend(PATTERN.iter().copied().cycle().take(pad));
        out.extend_from_slice(TAIL.as_bytes());
    }
    debug_assert_eq!(out.len(), size);
    Ok(Bytes::from(out))
}

/// Parses a size: `1024`, `1k`/`1KB` (1000), `1KiB` (1024), `25M`/`25MB`, `25MiB`, `1G`...
pub fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "ki" | "kib" => 1024.0,
        "m" | "mb" => 1e6,
        "mi" | "mib" => 1024.0 * 1024.0,
        "g" | "gb" => 1e9,
        "gi" | "gib" => 1024.0 * 1024.0 * 1024.0,
        u => return Err(format!("unknown size unit {u:?} in {s:?}")),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("bad size {s:?} (say 1024, 1KiB, 25MiB)"))?;
    let bytes = (n * mult).round();
    if !(0.0..=(u32::MAX as f64)).contains(&bytes) {
        return Err(format!("size {s:?} is out of range"));
    }
    Ok(bytes as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_bodies_are_json_of_the_size() {
        for size in [2, 3, 10, 100, 180, 181, 1000, 1024, 65536, 1 << 20] {
            let b = generate(size).unwrap();
            assert_eq!(b.len(), size);
            let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
            assert!(v.is_object());
        }
        assert!(generate(1).is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1024").unwrap(), 1024);
        assert_eq!(parse_size("1KiB").unwrap(), 1024);
        assert_eq!(parse_size("1k").unwrap(), 1000);
        assert_eq!(parse_size("25MiB").unwrap(), 25 << 20);
        assert_eq!(parse_size("1.5MB").unwrap(), 1_500_000);
        assert!(parse_size("abc").is_err());
        assert!(parse_size("1XB").is_err());
    }

    #[test]
    fn the_fixture_is_a_push() {
        let v: serde_json::Value = serde_json::from_slice(GITHUB_PUSH).unwrap();
        assert!(v["ref"].is_string());
    }
}
