//! Content negotiation: which representation an `Accept` header asks for
//! (plain JSON, a meta.k8s.io Table, PartialObjectMetadata), and what a
//! request body's `Content-Type` is.

/// A representation the stand-in can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Output {
    Json,
    Table,
    PartialObjectMetadata,
    PartialObjectMetadataList,
}

/// One parsed media range.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct MediaRange {
    pub type_: String,
    pub subtype: String,
    pub params: Vec<(String, String)>,
    pub q: f32,
}

impl MediaRange {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn is_json_compatible(&self) -> bool {
        matches!(
            (self.type_.as_str(), self.subtype.as_str()),
            ("application", "json") | ("application", "*") | ("*", "*")
        )
    }
}

/// Parses a media type (`type/subtype; k=v`), lowercasing type and keys.
pub(crate) fn parse_media_type(s: &str) -> Option<MediaRange> {
    let mut parts = s.split(';');
    let full = parts.next()?.trim().to_ascii_lowercase();
    let (t, st) = full.split_once('/')?;
    if t.is_empty() || st.is_empty() {
        return None;
    }
    let mut params = Vec::new();
    let mut q = 1.0;
    for p in parts {
        let Some((k, v)) = p.split_once('=') else {
            continue;
        };
        let k = k.trim().to_ascii_lowercase();
        let v = v.trim().trim_matches('"').to_string();
        if k == "q" {
            q = v.parse().unwrap_or(1.0);
        } else {
            params.push((k, v));
        }
    }
    Some(MediaRange {
        type_: t.trim().to_string(),
        subtype: st.trim().to_string(),
        params,
        q,
    })
}

/// Media ranges of an `Accept` header, best first (by q, stable otherwise).
pub(crate) fn parse_accept(header: Option<&str>) -> Vec<MediaRange> {
    let mut v: Vec<MediaRange> = header
        .unwrap_or("")
        .split(',')
        .filter_map(parse_media_type)
        .filter(|m| m.q > 0.0)
        .collect();
    v.sort_by(|a, b| b.q.partial_cmp(&a.q).unwrap_or(std::cmp::Ordering::Equal));
    v
}

/// What a GET of one object (`list == false`) or of a collection asks for.
/// `None` means nothing acceptable: answer 406.
pub(crate) fn choose_output(accept: Option<&str>, list: bool) -> Option<Output> {
    if accept.is_none_or(|a| a.trim().is_empty()) {
        return Some(Output::Json);
    }
    for m in parse_accept(accept) {
        if !m.is_json_compatible() {
            continue;
        }
        let Some(as_) = m.param("as") else {
            return Some(Output::Json);
        };
        let g = m.param("g").unwrap_or("");
        let v = m.param("v").unwrap_or("");
        if g != "meta.k8s.io" || !(v == "v1" || v == "v1beta1") {
            continue;
        }
        match (as_, list) {
            ("Table", _) => return Some(Output::Table),
            ("PartialObjectMetadata", false) => return Some(Output::PartialObjectMetadata),
            ("PartialObjectMetadataList", true) => return Some(Output::PartialObjectMetadataList),
            _ => continue,
        }
    }
    None
}

/// Whether a plain JSON answer is acceptable (discovery, reviews, Status).
pub(crate) fn accepts_plain_json(accept: Option<&str>) -> bool {
    if accept.is_none_or(|a| a.trim().is_empty()) {
        return true;
    }
    parse_accept(accept)
        .iter()
        .any(|m| m.is_json_compatible() && m.param("as").is_none())
}

/// The request body's media type without parameters; a missing header means
/// JSON, as the apiserver assumes.
pub(crate) fn content_type(header: Option<&str>) -> String {
    match header.and_then(parse_media_type) {
        Some(m) => format!("{}/{}", m.type_, m.subtype),
        None if header.is_none_or(|h| h.trim().is_empty()) => "application/json".to_string(),
        None => header.unwrap_or("").trim().to_ascii_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubectl_accept_headers() {
        let table = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
        assert_eq!(choose_output(Some(table), true), Some(Output::Table));
        let disco = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
        assert!(accepts_plain_json(Some(disco)));
        assert_eq!(choose_output(Some(disco), false), Some(Output::Json));
        assert_eq!(choose_output(Some("application/yaml"), false), None);
        assert_eq!(choose_output(Some("*/*"), false), Some(Output::Json));
        assert_eq!(
            choose_output(
                Some("application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"),
                true
            ),
            Some(Output::PartialObjectMetadataList)
        );
        assert_eq!(
            choose_output(
                Some("application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"),
                false
            ),
            None
        );
    }

    #[test]
    fn content_types() {
        assert_eq!(content_type(None), "application/json");
        assert_eq!(
            content_type(Some("application/merge-patch+json; charset=utf-8")),
            "application/merge-patch+json"
        );
    }
}
