//! What a receiver asks Flux to reconcile: one entry of its `resources`, resolved to an API
//! resource with Flux's defaults.

use std::collections::BTreeMap;
use std::fmt;

/// Flux's target kinds (the Receiver CRD's enum), their REST plural, and the `apiVersion` Flux
/// uses when the resource does not give one (`None` where Flux requires it).
const KINDS: &[(&str, &str, Option<&str>)] = &[
    ("Bucket", "buckets", Some("source.toolkit.fluxcd.io/v1")),
    (
        "GitRepository",
        "gitrepositories",
        Some("source.toolkit.fluxcd.io/v1"),
    ),
    (
        "HelmChart",
        "helmcharts",
        Some("source.toolkit.fluxcd.io/v1"),
    ),
    (
        "HelmRepository",
        "helmrepositories",
        Some("source.toolkit.fluxcd.io/v1"),
    ),
    (
        "OCIRepository",
        "ocirepositories",
        Some("source.toolkit.fluxcd.io/v1"),
    ),
    (
        "ImageRepository",
        "imagerepositories",
        Some("image.toolkit.fluxcd.io/v1"),
    ),
    (
        "ArtifactGenerator",
        "artifactgenerators",
        Some("source.extensions.fluxcd.io/v1beta1"),
    ),
    ("Kustomization", "kustomizations", None),
    ("HelmRelease", "helmreleases", None),
    ("ImagePolicy", "imagepolicies", None),
    ("ImageUpdateAutomation", "imageupdateautomations", None),
    ("ExternalArtifact", "externalartifacts", None),
];

/// The current apiVersion of the kinds Flux has no default for, to suggest in the error.
fn current_api_version(kind: &str) -> &'static str {
    match kind {
        "Kustomization" => "kustomize.toolkit.fluxcd.io/v1",
        "HelmRelease" => "helm.toolkit.fluxcd.io/v2",
        "ImagePolicy" | "ImageUpdateAutomation" => "image.toolkit.fluxcd.io/v1",
        _ => "source.toolkit.fluxcd.io/v1",
    }
}

/// Which objects of the kind: one by name, or every match of a label selector (`name = "*"`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Select {
    Name(String),
    Labels(BTreeMap<String, String>),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Target {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub plural: String,
    pub namespace: String,
    pub select: Select,
}

/// One `resources` entry as written in the configuration.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceSpec {
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default, rename = "apiVersion")]
    pub api_version: Option<String>,
    #[serde(default, rename = "matchLabels")]
    pub match_labels: BTreeMap<String, String>,
    /// CEL: whether a matched object is reconciled, ANDed with the receiver's filter.
    #[serde(default)]
    pub filter: Option<String>,
    /// The clusters this resource reaches, in place of the receiver's.
    #[serde(default)]
    pub clusters: Option<Vec<String>>,
    #[serde(default)]
    pub cluster_selector: Option<BTreeMap<String, String>>,
}

/// A problem with one field of a resource entry: the field's name and what is wrong.
pub type FieldError = (&'static str, String);

impl Target {
    /// A GitRepository in flux-system: the tests' usual target.
    #[cfg(test)]
    pub(crate) fn git_repository(select: Select) -> Target {
        Target {
            group: "source.toolkit.fluxcd.io".into(),
            version: "v1".into(),
            kind: "GitRepository".into(),
            plural: "gitrepositories".into(),
            namespace: "flux-system".into(),
            select,
        }
    }

    /// Resolves an entry the way Flux's receiver does, but at load time, so a mistake stops
    /// start-up instead of failing every delivery.
    pub fn resolve(spec: &ResourceSpec, receiver_namespace: &str) -> Result<Target, FieldError> {
        let Some(&(kind, plural, default)) = KINDS.iter().find(|(k, _, _)| *k == spec.kind) else {
            let known: Vec<_> = KINDS.iter().map(|(k, _, _)| *k).collect();
            return Err((
                "kind",
                if spec.kind.is_empty() {
                    format!("missing; one of {}", known.join(", "))
                } else {
                    format!("unknown kind {:?}; one of {}", spec.kind, known.join(", "))
                },
            ));
        };
        let api_version = match (&spec.api_version, default) {
            (Some(v), _) => v.as_str(),
            (None, Some(d)) => d,
            (None, None) => {
                return Err((
                    "apiVersion",
                    format!(
                        "Flux has no default apiVersion for {kind}; set apiVersion = \"{}\"",
                        current_api_version(kind)
                    ),
                ))
            }
        };
        let (group, version) = match api_version.split_once('/') {
            Some((g, v)) if !g.is_empty() && !v.is_empty() && !v.contains('/') => (g, v),
            _ => {
                return Err((
                    "apiVersion",
                    format!("{api_version:?} is not of the form group/version"),
                ))
            }
        };
        let namespace = spec
            .namespace
            .clone()
            .unwrap_or_else(|| receiver_namespace.to_string());
        check_dns_label(&namespace).map_err(|e| ("namespace", e))?;
        let select = match spec.name.as_str() {
            "" => {
                return Err((
                    "name",
                    "missing; give an object name, or \"*\" with matchLabels".into(),
                ))
            }
            "*" if spec.match_labels.is_empty() => {
                return Err((
                    "matchLabels",
                    "name \"*\" needs matchLabels to select objects".into(),
                ))
            }
            "*" => {
                for (k, v) in &spec.match_labels {
                    check_label(k, v).map_err(|e| ("matchLabels", e))?;
                }
                Select::Labels(spec.match_labels.clone())
            }
            n => {
                check_dns_subdomain(n).map_err(|e| ("name", e))?;
                Select::Name(n.to_string())
            }
        };
        Ok(Target {
            group: group.into(),
            version: version.into(),
            kind: kind.into(),
            plural: plural.into(),
            namespace,
            select,
        })
    }

    /// Identifies the object (or selector) a job is for: deliveries with the same key coalesce.
    pub fn key(&self) -> String {
        let what = match &self.select {
            Select::Name(n) => n.clone(),
            Select::Labels(_) => format!("*?{}", self.label_selector().unwrap_or_default()),
        };
        format!(
            "{}/{}/{}/{}/{}",
            self.group, self.version, self.plural, self.namespace, what
        )
    }

    pub fn api_version(&self) -> String {
        format!("{}/{}", self.group, self.version)
    }

    /// `app=web,tier=front`, the form the API's `labelSelector` takes.
    pub fn label_selector(&self) -> Option<String> {
        match &self.select {
            Select::Labels(l) => Some(
                l.iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            Select::Name(_) => None,
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.select {
            Select::Name(n) => write!(f, "{} {}/{}", self.kind, self.namespace, n),
            Select::Labels(_) => write!(
                f,
                "{} {}/* ({})",
                self.kind,
                self.namespace,
                self.label_selector().unwrap_or_default()
            ),
        }
    }
}

/// An object name: a DNS-1123 subdomain, as Kubernetes requires.
pub fn check_dns_subdomain(s: &str) -> Result<(), String> {
    if s.len() > 253 {
        return Err(format!("{s:?} is longer than 253 characters"));
    }
    if s.split('.').all(|part| dns_label_ok(part, 63)) {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a valid Kubernetes name (lower-case letters, digits, '-' and '.')"
        ))
    }
}

/// A namespace: a DNS-1123 label.
pub fn check_dns_label(s: &str) -> Result<(), String> {
    if dns_label_ok(s, 63) {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a valid namespace (at most 63 lower-case letters, digits and '-')"
        ))
    }
}

fn dns_label_ok(s: &str, max: usize) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= max
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Label keys and values as Kubernetes validates them, so a typo is caught here and not as a
/// 400 from the API server on every delivery.
pub fn check_label(key: &str, value: &str) -> Result<(), String> {
    let name_ok = |s: &str| {
        let b = s.as_bytes();
        !b.is_empty()
            && b.len() <= 63
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(c))
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
    };
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if !name_ok(name) || prefix.is_some_and(|p| check_dns_subdomain(p).is_err()) {
        return Err(format!("{key:?} is not a valid label key"));
    }
    if !value.is_empty() && !name_ok(value) {
        return Err(format!("{value:?} is not a valid label value for {key:?}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: &str, name: &str) -> ResourceSpec {
        ResourceSpec {
            kind: kind.into(),
            name: name.into(),
            ..Default::default()
        }
    }

    #[test]
    fn flux_defaults_and_receiver_namespace() {
        let t = Target::resolve(&spec("GitRepository", "app"), "flux-system").unwrap();
        assert_eq!(t.api_version(), "source.toolkit.fluxcd.io/v1");
        assert_eq!(
            (t.plural.as_str(), t.namespace.as_str()),
            ("gitrepositories", "flux-system")
        );
        let t = Target::resolve(&spec("ArtifactGenerator", "a"), "ns").unwrap();
        assert_eq!(t.api_version(), "source.extensions.fluxcd.io/v1beta1");
        let e = Target::resolve(&spec("Kustomization", "app"), "ns").unwrap_err();
        assert_eq!(e.0, "apiVersion");
        assert!(e.1.contains("kustomize.toolkit.fluxcd.io/v1"), "{}", e.1);
        let mut s = spec("Kustomization", "app");
        s.api_version = Some("kustomize.toolkit.fluxcd.io/v1".into());
        s.namespace = Some("apps".into());
        let t = Target::resolve(&s, "flux-system").unwrap();
        assert_eq!(
            (t.group.as_str(), t.version.as_str(), t.namespace.as_str()),
            ("kustomize.toolkit.fluxcd.io", "v1", "apps")
        );
    }

    /// flux-receiver.md §4.2: every kind of the Receiver CRD, its plural, and Flux's default
    /// apiVersion (or none, where Flux requires one).
    #[test]
    fn every_flux_kind_has_its_plural_and_default_api_version() {
        let table: [(&str, &str, Option<&str>); 12] = [
            ("Bucket", "buckets", Some("source.toolkit.fluxcd.io/v1")),
            (
                "HelmChart",
                "helmcharts",
                Some("source.toolkit.fluxcd.io/v1"),
            ),
            (
                "HelmRepository",
                "helmrepositories",
                Some("source.toolkit.fluxcd.io/v1"),
            ),
            (
                "GitRepository",
                "gitrepositories",
                Some("source.toolkit.fluxcd.io/v1"),
            ),
            (
                "OCIRepository",
                "ocirepositories",
                Some("source.toolkit.fluxcd.io/v1"),
            ),
            (
                "ImageRepository",
                "imagerepositories",
                Some("image.toolkit.fluxcd.io/v1"),
            ),
            (
                "ArtifactGenerator",
                "artifactgenerators",
                Some("source.extensions.fluxcd.io/v1beta1"),
            ),
            ("Kustomization", "kustomizations", None),
            ("HelmRelease", "helmreleases", None),
            ("ImagePolicy", "imagepolicies", None),
            ("ImageUpdateAutomation", "imageupdateautomations", None),
            ("ExternalArtifact", "externalartifacts", None),
        ];
        assert_eq!(KINDS.len(), table.len());
        for (kind, plural, default) in table {
            match (Target::resolve(&spec(kind, "x"), "ns"), default) {
                (Ok(t), Some(d)) => {
                    assert_eq!(
                        (t.plural.as_str(), t.api_version()),
                        (plural, d.to_string())
                    );
                }
                (Err((field, why)), None) => {
                    assert_eq!(field, "apiVersion", "{kind}");
                    let current = current_api_version(kind);
                    assert!(why.contains(current), "{kind}: {why}");
                    let mut s = spec(kind, "x");
                    s.api_version = Some(current.into());
                    let t = Target::resolve(&s, "ns").unwrap();
                    assert_eq!(
                        (t.plural.as_str(), t.api_version()),
                        (plural, current.to_string())
                    );
                }
                (got, _) => panic!("{kind}: {got:?}"),
            }
        }
        assert_eq!(
            current_api_version("Kustomization"),
            "kustomize.toolkit.fluxcd.io/v1"
        );
        assert_eq!(
            current_api_version("HelmRelease"),
            "helm.toolkit.fluxcd.io/v2"
        );
        assert_eq!(
            current_api_version("ImagePolicy"),
            "image.toolkit.fluxcd.io/v1"
        );
        assert_eq!(
            current_api_version("ImageUpdateAutomation"),
            "image.toolkit.fluxcd.io/v1"
        );
        assert_eq!(
            current_api_version("ExternalArtifact"),
            "source.toolkit.fluxcd.io/v1"
        );
    }

    #[test]
    fn wildcard_needs_labels_and_names_must_be_valid() {
        assert_eq!(
            Target::resolve(&spec("GitRepository", "*"), "ns")
                .unwrap_err()
                .0,
            "matchLabels"
        );
        assert_eq!(
            Target::resolve(&spec("GitRepository", ""), "ns")
                .unwrap_err()
                .0,
            "name"
        );
        assert_eq!(
            Target::resolve(&spec("GitRepository", "Bad_Name"), "ns")
                .unwrap_err()
                .0,
            "name"
        );
        assert_eq!(
            Target::resolve(&spec("Gitrepository", "a"), "ns")
                .unwrap_err()
                .0,
            "kind"
        );
        let mut s = spec("GitRepository", "*");
        s.match_labels
            .insert("app.kubernetes.io/name".into(), "web".into());
        s.match_labels.insert("tier".into(), "front".into());
        let t = Target::resolve(&s, "ns").unwrap();
        assert_eq!(
            t.label_selector().unwrap(),
            "app.kubernetes.io/name=web,tier=front"
        );
        s.match_labels.insert("bad key!".into(), "x".into());
        assert_eq!(Target::resolve(&s, "ns").unwrap_err().0, "matchLabels");
    }
}
