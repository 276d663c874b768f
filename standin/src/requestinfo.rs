//! Turns a request line into Kubernetes `RequestInfo` (verb, group, resource,
//! namespace, name, subresource), following apiserver's
//! `RequestInfoFactory.NewRequestInfo`. RBAC and routing both use it, so a
//! path means the same thing to both, including the odd cases (a namespace
//! name doubles as the request namespace, `fieldSelector=metadata.name=`
//! turns a list into a request on a name).

use crate::selector::FieldSelector;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RequestInfo {
    pub is_resource_request: bool,
    pub path: String,
    pub verb: String,
    pub api_prefix: String,
    pub group: String,
    pub version: String,
    pub namespace: String,
    pub resource: String,
    pub subresource: String,
    pub name: String,
    /// Path segments from the resource on (`resource/name/subresource/...`).
    pub parts: Vec<String>,
}

/// Go's `strconv.ParseBool`.
pub(crate) fn parse_go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// First value of a query parameter, as Go's `url.Values.Get` returns it.
pub(crate) fn query_get<'a>(query: &'a [(String, String)], key: &str) -> Option<&'a str> {
    query
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

pub(crate) fn parse(method: &str, path: &str, query: &[(String, String)]) -> RequestInfo {
    let mut info = RequestInfo {
        path: path.to_string(),
        verb: method.to_ascii_lowercase(),
        ..RequestInfo::default()
    };
    let trimmed = path.trim_matches('/');
    let mut parts: Vec<&str> = if trimmed.is_empty() {
        Vec::new()
    } else {
        trimmed.split('/').collect()
    };
    if parts.len() < 3 || !(parts[0] == "api" || parts[0] == "apis") {
        return info;
    }
    info.api_prefix = parts[0].to_string();
    parts.remove(0);
    if info.api_prefix == "apis" {
        if parts.len() < 3 {
            return info;
        }
        info.group = parts[0].to_string();
        parts.remove(0);
    }
    info.is_resource_request = true;
    info.version = parts[0].to_string();
    parts.remove(0);

    if parts[0] == "watch" || parts[0] == "proxy" {
        // The deprecated /watch/ and /proxy/ path prefixes carry the verb.
        info.verb = parts[0].to_string();
        parts.remove(0);
        if parts.is_empty() {
            // The apiserver refuses to build a RequestInfo here; treat it as
            // a resource request on nothing, which routes to a 404.
            return info;
        }
    } else {
        info.verb = match method {
            "POST" => "create",
            "GET" | "HEAD" => "get",
            "PUT" => "update",
            "PATCH" => "patch",
            "DELETE" => "delete",
            _ => "",
        }
        .to_string();
    }

    if parts[0] == "namespaces" && parts.len() > 1 {
        info.namespace = parts[1].to_string();
        // A known namespace subresource keeps "namespaces" as the resource.
        if parts.len() > 2 && !matches!(parts[2], "status" | "finalize") {
            parts.drain(0..2);
        }
    }

    info.parts = parts.iter().map(|s| s.to_string()).collect();
    if parts.len() >= 3 && info.verb != "proxy" {
        info.subresource = parts[2].to_string();
    }
    if parts.len() >= 2 {
        info.name = parts[1].to_string();
    }
    info.resource = parts[0].to_string();

    if info.name.is_empty() && info.verb == "get" {
        let watch = match query_get(query, "watch") {
            None => false,
            Some(v) => match parse_go_bool(v) {
                Some(b) => b,
                // A malformed value still counts as a watch unless it says
                // false, exactly like the apiserver's fallback.
                None => !matches!(v.to_ascii_lowercase().as_str(), "false" | "0"),
            },
        };
        info.verb = if watch { "watch" } else { "list" }.to_string();
        if let Some(fs) = query_get(query, "fieldSelector") {
            if let Ok(sel) = FieldSelector::parse(fs) {
                if let Some(name) = sel.exact_match("metadata.name") {
                    if is_valid_path_segment_name(name) {
                        info.name = name.to_string();
                    }
                }
            }
        }
    }
    if info.name.is_empty() && info.verb == "delete" {
        info.verb = "deletecollection".to_string();
    }
    info
}

/// `path.IsValidPathSegmentName`.
pub(crate) fn is_valid_path_segment_name(name: &str) -> bool {
    name != "." && name != ".." && !name.contains('/') && !name.contains('%')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Vec<(String, String)> {
        form_urlencoded::parse(s.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    }

    #[test]
    fn named_custom_resource() {
        let i = parse(
            "PATCH",
            "/apis/source.toolkit.fluxcd.io/v1/namespaces/flux-system/gitrepositories/app",
            &[],
        );
        assert!(i.is_resource_request);
        assert_eq!(i.verb, "patch");
        assert_eq!(i.group, "source.toolkit.fluxcd.io");
        assert_eq!(i.namespace, "flux-system");
        assert_eq!(i.resource, "gitrepositories");
        assert_eq!(i.name, "app");
    }

    #[test]
    fn list_watch_and_field_selector_name() {
        let i = parse("GET", "/api/v1/namespaces/ns/secrets", &q("watch=1"));
        assert_eq!(i.verb, "watch");
        let i = parse(
            "GET",
            "/api/v1/namespaces/ns/secrets",
            &q("fieldSelector=metadata.name%3Dx"),
        );
        assert_eq!((i.verb.as_str(), i.name.as_str()), ("list", "x"));
    }

    #[test]
    fn namespace_object_is_its_own_namespace() {
        let i = parse("GET", "/api/v1/namespaces/flux-system", &[]);
        assert_eq!(i.resource, "namespaces");
        assert_eq!(i.name, "flux-system");
        assert_eq!(i.namespace, "flux-system");
        let i = parse("PUT", "/api/v1/namespaces/x/finalize", &[]);
        assert_eq!(
            (i.resource.as_str(), i.subresource.as_str()),
            ("namespaces", "finalize")
        );
    }

    #[test]
    fn discovery_is_not_a_resource_request() {
        for p in [
            "/api",
            "/api/v1",
            "/apis",
            "/apis/g",
            "/apis/g/v1",
            "/version",
        ] {
            assert!(!parse("GET", p, &[]).is_resource_request, "{p}");
        }
        let i = parse("DELETE", "/api/v1/namespaces/a/configmaps", &[]);
        assert_eq!(i.verb, "deletecollection");
    }
}
