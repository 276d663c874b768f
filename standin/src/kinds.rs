//! The resource types the stand-in serves, described the way discovery and
//! the request router need them.

/// One served resource type (a group/version/kind and its REST name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KindInfo {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    /// Custom resources (CRDs) differ from built-in types in several places:
    /// no strategic merge patch, `generation` bookkeeping, the status
    /// subresource, the wording of some errors.
    pub custom: bool,
}

impl KindInfo {
    /// `group/version`, or just `version` for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Subresources served for this kind. Flux CRDs all enable `status`.
    pub fn subresources(&self) -> &'static [&'static str] {
        if self.custom {
            &["status"]
        } else if self.plural == "namespaces" {
            &["status", "finalize"]
        } else {
            &[]
        }
    }

    /// Verbs listed in discovery for the main resource.
    pub fn verbs(&self) -> &'static [&'static str] {
        if self.namespaced {
            &[
                "create",
                "delete",
                "deletecollection",
                "get",
                "list",
                "patch",
                "update",
                "watch",
            ]
        } else {
            // Like the real namespaces resource: no deletecollection.
            &[
                "create", "delete", "get", "list", "patch", "update", "watch",
            ]
        }
    }
}

/// Formats a GroupResource the way `schema.GroupResource.String()` does.
pub(crate) fn group_resource(group: &str, resource: &str) -> String {
    if group.is_empty() {
        resource.to_string()
    } else {
        format!("{resource}.{group}")
    }
}

macro_rules! flux {
    ($group:expr, $version:expr, $kind:expr, $plural:expr, $singular:expr, $short:expr) => {
        KindInfo {
            group: $group,
            version: $version,
            kind: $kind,
            plural: $plural,
            singular: $singular,
            namespaced: true,
            short_names: $short,
            custom: true,
        }
    };
}

/// The kinds every stand-in knows: the Flux CRDs fluxgate may touch plus the
/// few core kinds a first-run setup needs.
pub(crate) fn default_kinds() -> Vec<KindInfo> {
    const SOURCE: &str = "source.toolkit.fluxcd.io";
    vec![
        flux!(
            SOURCE,
            "v1",
            "GitRepository",
            "gitrepositories",
            "gitrepository",
            &["gitrepo"]
        ),
        flux!(SOURCE, "v1", "Bucket", "buckets", "bucket", &[]),
        flux!(
            SOURCE,
            "v1",
            "HelmChart",
            "helmcharts",
            "helmchart",
            &["hc"]
        ),
        flux!(
            SOURCE,
            "v1",
            "HelmRepository",
            "helmrepositories",
            "helmrepository",
            &["helmrepo"]
        ),
        flux!(
            SOURCE,
            "v1",
            "OCIRepository",
            "ocirepositories",
            "ocirepository",
            &["ocirepo"]
        ),
        flux!(
            SOURCE,
            "v1",
            "ExternalArtifact",
            "externalartifacts",
            "externalartifact",
            &[]
        ),
        flux!(
            "kustomize.toolkit.fluxcd.io",
            "v1",
            "Kustomization",
            "kustomizations",
            "kustomization",
            &["ks"]
        ),
        flux!(
            "helm.toolkit.fluxcd.io",
            "v2",
            "HelmRelease",
            "helmreleases",
            "helmrelease",
            &["hr"]
        ),
        flux!(
            "image.toolkit.fluxcd.io",
            "v1",
            "ImageRepository",
            "imagerepositories",
            "imagerepository",
            &[]
        ),
        flux!(
            "image.toolkit.fluxcd.io",
            "v1",
            "ImagePolicy",
            "imagepolicies",
            "imagepolicy",
            &[]
        ),
        flux!(
            "image.toolkit.fluxcd.io",
            "v1",
            "ImageUpdateAutomation",
            "imageupdateautomations",
            "imageupdateautomation",
            &[]
        ),
        flux!(
            "notification.toolkit.fluxcd.io",
            "v1",
            "Receiver",
            "receivers",
            "receiver",
            &[]
        ),
        flux!(
            "source.extensions.fluxcd.io",
            "v1beta1",
            "ArtifactGenerator",
            "artifactgenerators",
            "artifactgenerator",
            &[]
        ),
        KindInfo {
            group: "",
            version: "v1",
            kind: "Secret",
            plural: "secrets",
            singular: "secret",
            namespaced: true,
            short_names: &[],
            custom: false,
        },
        KindInfo {
            group: "",
            version: "v1",
            kind: "ConfigMap",
            plural: "configmaps",
            singular: "configmap",
            namespaced: true,
            short_names: &["cm"],
            custom: false,
        },
        // Core Events, which kubectl describe and flux events read: fluxgate writes one per
        // reconcile request when relay.events is on.
        KindInfo {
            group: "",
            version: "v1",
            kind: "Event",
            plural: "events",
            singular: "event",
            namespaced: true,
            short_names: &["ev"],
            custom: false,
        },
        // Leases, which leader election uses: fluxgate replicas sharing ACME storage take
        // one so that a single replica orders while the others wait.
        KindInfo {
            group: "coordination.k8s.io",
            version: "v1",
            kind: "Lease",
            plural: "leases",
            singular: "lease",
            namespaced: true,
            short_names: &[],
            custom: false,
        },
        KindInfo {
            group: "",
            version: "v1",
            kind: "Namespace",
            plural: "namespaces",
            singular: "namespace",
            namespaced: false,
            short_names: &["ns"],
            custom: false,
        },
    ]
}

/// Lookup table over the served kinds.
#[derive(Debug, Clone)]
pub(crate) struct Kinds {
    all: Vec<KindInfo>,
}

impl Kinds {
    pub fn new(all: Vec<KindInfo>) -> Self {
        Kinds { all }
    }

    pub fn all(&self) -> &[KindInfo] {
        &self.all
    }

    pub fn by_resource(&self, group: &str, version: &str, plural: &str) -> Option<&KindInfo> {
        self.all
            .iter()
            .find(|k| k.group == group && k.version == version && k.plural == plural)
    }

    /// Resolves an object's `apiVersion` + `kind`.
    pub fn by_kind(&self, api_version: &str, kind: &str) -> Option<&KindInfo> {
        let (group, version) = split_api_version(api_version);
        self.all
            .iter()
            .find(|k| k.group == group && k.version == version && k.kind == kind)
    }

    pub fn namespace_kind(&self) -> Option<&KindInfo> {
        self.by_resource("", "v1", "namespaces")
    }
}

/// `"g/v"` -> `("g", "v")`, `"v1"` -> `("", "v1")`.
pub(crate) fn split_api_version(api_version: &str) -> (&str, &str) {
    match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    }
}
