//! RBAC evaluation over a flat table of rules per user, with the same
//! matching rules as Kubernetes' `rbac` authorizer (`*` in verbs, groups and
//! resources; `resource/subresource` and `*/subresource`; resourceNames;
//! Role-style rules that only apply inside their namespaces).

use std::collections::HashMap;

use crate::status::go_quote;

/// One RBAC rule granted to a user: what a `PolicyRule` says, plus where it is
/// bound.
///
/// `namespaces: None` behaves like a ClusterRole bound with a
/// ClusterRoleBinding (all namespaces and cluster-scoped resources);
/// `Some(list)` like a Role bound by RoleBindings in each listed namespace
/// (never grants cluster-scoped or all-namespace requests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`,
    /// `deletecollection`, or `*`.
    pub verbs: Vec<String>,
    /// API groups (`""` is the core group), or `*`.
    pub api_groups: Vec<String>,
    /// Plural resource names, `resource/subresource`, `*/subresource` or `*`.
    pub resources: Vec<String>,
    /// `None`: cluster-wide. `Some(ns)`: only inside these namespaces.
    pub namespaces: Option<Vec<String>>,
    /// Object names the rule is limited to; empty means all.
    pub resource_names: Vec<String>,
}

impl Rule {
    /// A cluster-wide rule for all object names.
    pub fn new(verbs: &[&str], api_groups: &[&str], resources: &[&str]) -> Self {
        Rule {
            verbs: verbs.iter().map(|s| s.to_string()).collect(),
            api_groups: api_groups.iter().map(|s| s.to_string()).collect(),
            resources: resources.iter().map(|s| s.to_string()).collect(),
            namespaces: None,
            resource_names: Vec::new(),
        }
    }

    /// Restricts the rule to these namespaces (a Role + RoleBinding in each).
    pub fn in_namespaces(mut self, ns: &[&str]) -> Self {
        self.namespaces = Some(ns.iter().map(|s| s.to_string()).collect());
        self
    }

    /// Restricts the rule to these object names (`resourceNames`).
    pub fn names(mut self, names: &[&str]) -> Self {
        self.resource_names = names.iter().map(|s| s.to_string()).collect();
        self
    }

    fn matches(&self, a: &Attributes) -> bool {
        if let Some(nss) = &self.namespaces {
            // A RoleBinding only ever grants inside its own namespace.
            if a.namespace.is_empty() || !nss.iter().any(|n| n == a.namespace) {
                return false;
            }
        }
        let verb_ok = self.verbs.iter().any(|v| v == "*" || v == a.verb);
        let group_ok = self.api_groups.iter().any(|g| g == "*" || g == a.group);
        let combined = if a.subresource.is_empty() {
            a.resource.to_string()
        } else {
            format!("{}/{}", a.resource, a.subresource)
        };
        let resource_ok = self.resources.iter().any(|r| {
            r == "*"
                || *r == combined
                || (!a.subresource.is_empty() && r.strip_prefix("*/") == Some(a.subresource))
        });
        let name_ok = self.resource_names.is_empty()
            || (!a.name.is_empty() && self.resource_names.iter().any(|n| n == a.name));
        verb_ok && group_ok && resource_ok && name_ok
    }

    fn describe(&self, index: usize) -> String {
        match &self.namespaces {
            None => format!("kube-standin cluster-wide rule #{index}"),
            Some(ns) => format!(
                "kube-standin rule #{index} bound in namespaces {}",
                ns.iter()
                    .map(|n| go_quote(n))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

/// What is being asked (a subset of `authorizer.Attributes`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Attributes<'a> {
    pub user: &'a str,
    pub verb: &'a str,
    pub is_resource_request: bool,
    pub group: &'a str,
    pub resource: &'a str,
    pub subresource: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
    pub path: &'a str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Decision {
    pub allowed: bool,
    pub reason: String,
}

/// Non-resource URLs every authenticated user may GET: the
/// `system:discovery`, `system:public-info-viewer` and `system:basic-user`
/// defaults of a real cluster.
const DISCOVERY_URLS: &[&str] = &[
    "/api",
    "/api/*",
    "/apis",
    "/apis/*",
    "/healthz",
    "/livez",
    "/readyz",
    "/version",
    "/version/",
    "/openapi",
    "/openapi/*",
];

#[derive(Debug, Clone, Default)]
pub(crate) struct Authorizer {
    rules: HashMap<String, Vec<Rule>>,
}

impl Authorizer {
    pub fn add(&mut self, user: &str, rule: Rule) {
        self.rules.entry(user.to_string()).or_default().push(rule);
    }

    pub fn authorize(&self, a: &Attributes) -> Decision {
        if !a.is_resource_request {
            let allowed = a.verb == "get" && DISCOVERY_URLS.iter().any(|u| url_matches(u, a.path));
            return Decision {
                allowed,
                reason: if allowed {
                    "RBAC: allowed by ClusterRoleBinding \"system:discovery\" of ClusterRole \"system:discovery\" to Group \"system:authenticated\"".to_string()
                } else {
                    String::new()
                },
            };
        }
        // system:basic-user: everyone may ask about themselves.
        let self_review = a.verb == "create"
            && a.subresource.is_empty()
            && ((a.group == "authorization.k8s.io"
                && matches!(
                    a.resource,
                    "selfsubjectaccessreviews" | "selfsubjectrulesreviews"
                ))
                || (a.group == "authentication.k8s.io" && a.resource == "selfsubjectreviews"));
        if self_review {
            return Decision {
                allowed: true,
                reason: "RBAC: allowed by ClusterRoleBinding \"system:basic-user\" of ClusterRole \"system:basic-user\" to Group \"system:authenticated\"".to_string(),
            };
        }
        if let Some(rules) = self.rules.get(a.user) {
            for (i, r) in rules.iter().enumerate() {
                if r.matches(a) {
                    return Decision {
                        allowed: true,
                        reason: format!(
                            "RBAC: allowed by {} to User {}",
                            r.describe(i),
                            go_quote(a.user)
                        ),
                    };
                }
            }
        }
        Decision {
            allowed: false,
            reason: String::new(),
        }
    }
}

/// `rbac.NonResourceURLMatches`: exact, or a trailing `*` prefix match.
fn url_matches(rule: &str, path: &str) -> bool {
    match rule.strip_suffix('*') {
        Some(prefix) => path.starts_with(prefix),
        None => rule == path,
    }
}

/// The authorizer's half of a 403 message (`forbiddenMessage` in apiserver),
/// with the same HTML-escaping the apiserver applies.
pub(crate) fn forbidden_message(a: &Attributes) -> String {
    let msg = if !a.is_resource_request {
        format!(
            "User {} cannot {} path {}",
            go_quote(a.user),
            a.verb,
            go_quote(a.path)
        )
    } else {
        let resource = if a.subresource.is_empty() {
            a.resource.to_string()
        } else {
            format!("{}/{}", a.resource, a.subresource)
        };
        if a.namespace.is_empty() {
            format!(
                "User {} cannot {} resource {} in API group {} at the cluster scope",
                go_quote(a.user),
                a.verb,
                go_quote(&resource),
                go_quote(a.group)
            )
        } else {
            format!(
                "User {} cannot {} resource {} in API group {} in the namespace {}",
                go_quote(a.user),
                a.verb,
                go_quote(&resource),
                go_quote(a.group),
                go_quote(a.namespace)
            )
        }
    };
    msg.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs<'a>(
        verb: &'a str,
        group: &'a str,
        resource: &'a str,
        ns: &'a str,
        name: &'a str,
    ) -> Attributes<'a> {
        Attributes {
            user: "u",
            verb,
            is_resource_request: true,
            group,
            resource,
            subresource: "",
            namespace: ns,
            name,
            path: "",
        }
    }

    #[test]
    fn role_rules_stay_in_their_namespace() {
        let mut az = Authorizer::default();
        az.add(
            "u",
            Rule::new(&["patch"], &["g"], &["things"]).in_namespaces(&["a"]),
        );
        assert!(
            az.authorize(&attrs("patch", "g", "things", "a", "x"))
                .allowed
        );
        assert!(
            !az.authorize(&attrs("patch", "g", "things", "b", "x"))
                .allowed
        );
        assert!(
            !az.authorize(&attrs("patch", "g", "things", "", "x"))
                .allowed
        );
    }

    #[test]
    fn wildcards_and_names() {
        let mut az = Authorizer::default();
        az.add("u", Rule::new(&["*"], &["*"], &["*"]).names(&["only"]));
        assert!(az.authorize(&attrs("get", "x", "y", "n", "only")).allowed);
        assert!(!az.authorize(&attrs("get", "x", "y", "n", "other")).allowed);
        // resourceNames never grant a list (no name on the request).
        assert!(!az.authorize(&attrs("list", "x", "y", "n", "")).allowed);
    }

    #[test]
    fn subresource_forms() {
        let mut az = Authorizer::default();
        az.add("u", Rule::new(&["get"], &["g"], &["*/status"]));
        let mut a = attrs("get", "g", "things", "n", "x");
        assert!(!az.authorize(&a).allowed);
        a.subresource = "status";
        assert!(az.authorize(&a).allowed);
    }

    #[test]
    fn message_wording() {
        let a = attrs(
            "patch",
            "source.toolkit.fluxcd.io",
            "gitrepositories",
            "flux-system",
            "app",
        );
        assert_eq!(
            forbidden_message(&a),
            "User \"u\" cannot patch resource \"gitrepositories\" in API group \"source.toolkit.fluxcd.io\" in the namespace \"flux-system\""
        );
        let a = attrs("list", "", "namespaces", "", "");
        assert_eq!(
            forbidden_message(&a),
            "User \"u\" cannot list resource \"namespaces\" in API group \"\" at the cluster scope"
        );
    }
}
