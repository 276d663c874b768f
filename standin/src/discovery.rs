//! Legacy (unaggregated) discovery documents: `/version`, `/api`, `/api/v1`,
//! `/apis`, `/apis/<group>`, `/apis/<group>/<version>`.
//!
//! Aggregated discovery (`as=APIGroupDiscoveryList`) is deliberately not
//! offered: clients fall back to these documents when the answer is plain
//! `application/json`, as they do against older clusters.

use serde_json::{json, Value};

use crate::kinds::{KindInfo, Kinds};

/// Built-in groups the stand-in serves besides its kinds: the self-review
/// APIs every authenticated user may call.
struct Builtin {
    group: &'static str,
    version: &'static str,
    resource: &'static str,
    kind: &'static str,
}

const BUILTINS: &[Builtin] = &[
    Builtin {
        group: "authentication.k8s.io",
        version: "v1",
        resource: "selfsubjectreviews",
        kind: "SelfSubjectReview",
    },
    Builtin {
        group: "authorization.k8s.io",
        version: "v1",
        resource: "selfsubjectaccessreviews",
        kind: "SelfSubjectAccessReview",
    },
];

pub(crate) fn version() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "emulationMajor": "1",
        "emulationMinor": "33",
        "minCompatibilityMajor": "1",
        "minCompatibilityMinor": "32",
        "gitVersion": "v1.33.0",
        "gitCommit": "60a317eadfcb839692a68eab88b2096f4d708f4f",
        "gitTreeState": "clean",
        "buildDate": "2025-04-23T13:00:51Z",
        "goVersion": "go1.24.2",
        "compiler": "gc",
        "platform": "linux/amd64"
    })
}

pub(crate) fn api_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [
            {"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}
        ]
    })
}

/// (group, versions in preference order) for every non-core group.
fn groups(kinds: &Kinds) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    let mut add = |g: &str, v: &str| match out.iter_mut().find(|(name, _)| name == g) {
        Some((_, vs)) => {
            if !vs.iter().any(|x| x == v) {
                vs.push(v.to_string());
            }
        }
        None => out.push((g.to_string(), vec![v.to_string()])),
    };
    for b in BUILTINS {
        add(b.group, b.version);
    }
    for k in kinds.all().iter().filter(|k| !k.group.is_empty()) {
        add(k.group, k.version);
    }
    out
}

fn group_json(name: &str, versions: &[String]) -> Value {
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v}))
        .collect();
    json!({
        "name": name,
        "versions": vs,
        "preferredVersion": vs.first().cloned().unwrap_or(Value::Null),
    })
}

pub(crate) fn api_group_list(kinds: &Kinds) -> Value {
    let groups: Vec<Value> = groups(kinds)
        .iter()
        .map(|(g, vs)| group_json(g, vs))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

pub(crate) fn api_group(kinds: &Kinds, group: &str) -> Option<Value> {
    let (name, versions) = groups(kinds).into_iter().find(|(g, _)| g == group)?;
    let mut v = group_json(&name, &versions);
    if let Some(m) = v.as_object_mut() {
        m.insert("kind".into(), json!("APIGroup"));
        m.insert("apiVersion".into(), json!("v1"));
    }
    Some(v)
}

fn resource_json(k: &KindInfo) -> Vec<Value> {
    let mut main = json!({
        "name": k.plural,
        "singularName": k.singular,
        "namespaced": k.namespaced,
        "kind": k.kind,
        "verbs": k.verbs(),
    });
    if !k.short_names.is_empty() {
        main["shortNames"] = json!(k.short_names);
    }
    let mut out = vec![main];
    for sub in k.subresources() {
        let verbs: &[&str] = if *sub == "finalize" {
            &["update"]
        } else {
            &["get", "patch", "update"]
        };
        out.push(json!({
            "name": format!("{}/{}", k.plural, sub),
            "singularName": "",
            "namespaced": k.namespaced,
            "kind": k.kind,
            "verbs": verbs,
        }));
    }
    out
}

/// `APIResourceList` for one group/version ("" group = `/api/v1`).
pub(crate) fn resource_list(kinds: &Kinds, group: &str, version: &str) -> Option<Value> {
    let mut resources: Vec<Value> = Vec::new();
    for b in BUILTINS
        .iter()
        .filter(|b| b.group == group && b.version == version)
    {
        resources.push(json!({
            "name": b.resource,
            "singularName": b.resource.trim_end_matches('s'),
            "namespaced": false,
            "kind": b.kind,
            "verbs": ["create"],
        }));
    }
    for k in kinds
        .all()
        .iter()
        .filter(|k| k.group == group && k.version == version)
    {
        resources.extend(resource_json(k));
    }
    if resources.is_empty() {
        return None;
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": gv,
        "resources": resources,
    }))
}

/// Serves a discovery path, or `None` when it names nothing served.
pub(crate) fn serve(kinds: &Kinds, path: &str, server_address: &str) -> Option<Value> {
    let trimmed = path.trim_end_matches('/');
    let parts: Vec<&str> = trimmed.split('/').filter(|s| !s.is_empty()).collect();
    match parts.as_slice() {
        ["api"] => Some(api_versions(server_address)),
        ["api", v] => resource_list(kinds, "", v),
        ["apis"] => Some(api_group_list(kinds)),
        ["apis", g] => api_group(kinds, g),
        ["apis", g, v] => resource_list(kinds, g, v),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::default_kinds;

    #[test]
    fn documents() {
        let kinds = Kinds::new(default_kinds());
        let core = resource_list(&kinds, "", "v1").unwrap();
        let names: Vec<&str> = core["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        assert!(names.contains(&"secrets") && names.contains(&"namespaces/status"));
        let groups = api_group_list(&kinds);
        assert!(groups["groups"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["name"] == "helm.toolkit.fluxcd.io"
                && g["preferredVersion"]["version"] == "v2"));
        assert!(serve(&kinds, "/apis/source.toolkit.fluxcd.io/v1beta2", "x").is_none());
        assert!(serve(&kinds, "/apis/authorization.k8s.io/v1", "x").is_some());
    }
}
