//! `[[receivers]]`: one table per receiver, with the same meaning as a Flux Receiver object.

use super::defences::allow_list;
use super::{duration_or_off, Problems};
use crate::expr::{Expr, Scope};
use crate::fleet::{ClusterId, ClusterSelector, Placement};
use crate::guard::allow::AllowList;
use crate::guard::ranges::RangeSets;
use crate::hook_path::flux_hook_path;
use crate::relay::forward::ForwardSpec;
use crate::relay::target::{check_dns_label, check_dns_subdomain, ResourceSpec, Target};
use crate::secret::Secret;
use crate::verify::oidc::ProviderSpec;
use crate::verify::{ReceiverType, TypeOptions, Verifier};
use http::HeaderMap;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// A key that takes one value or a list (`secret_file = "a"` or `secret_file = ["a", "b"]`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<T> OneOrMany<T> {
    fn into_vec(self) -> Vec<T> {
        match self {
            OneOrMany::One(t) => vec![t],
            OneOrMany::Many(v) => v,
        }
    }
}

/// One `[[receivers]]` table as written; in cluster mode, a Receiver object's fields under the
/// same keys.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReceiver {
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: String,
    #[serde(default, rename = "type")]
    kind: String,
    #[serde(default)]
    events: Vec<String>,
    secret_file: Option<OneOrMany<PathBuf>>,
    secret_env: Option<OneOrMany<String>>,
    /// Whether trailing line breaks are dropped from secret files and variables (the default);
    /// `false` uses their bytes as they are, as Flux uses a Secret's token.
    trim_secret: Option<bool>,
    path: Option<String>,
    #[serde(default)]
    allow_from: Vec<String>,
    replay_window: Option<String>,
    delivery_id_header: Option<String>,
    #[serde(default)]
    resources: Vec<ResourceSpec>,
    /// CEL, ANDed with each resource's `filter`, as Flux's `resourceFilter`.
    resource_filter: Option<String>,
    /// gcr: the `email` and `audience` keys of Flux's Secret.
    email: Option<String>,
    audience: Option<String>,
    /// gcr: Google's signing keys, a URL or a file.
    jwks: Option<String>,
    #[serde(default)]
    oidc_providers: Vec<ProviderSpec>,
    forward: Option<ForwardSpec>,
    /// The clusters its resources reach by default: names, or `["*"]` for all.
    clusters: Option<Vec<String>>,
    /// Or the clusters whose labels include all of these.
    cluster_selector: Option<BTreeMap<String, String>>,
    /// The largest body accepted; for body-keeping receivers [`DEFAULT_KEPT_BODY_BYTES`] unless set.
    max_body_bytes: Option<u64>,
}

/// Flux's receiver reads at most 3 MiB of a body; a body kept in memory is capped the same way
/// unless the receiver says otherwise.
pub const DEFAULT_KEPT_BODY_BYTES: u64 = 3 * 1024 * 1024;

/// One receiver: where it listens, who may use it, how it verifies, and what it asks Flux to
/// reconcile.
#[derive(Debug)]
pub struct Receiver {
    /// Position in the configuration: a small key for per-receiver state.
    pub id: u32,
    pub name: String,
    pub namespace: String,
    /// `namespace/name`, the receiver's label in logs and metrics.
    pub label: String,
    pub kind: ReceiverType,
    /// Lower-cased, so matching is case-insensitive as in Flux.
    pub events: Vec<String>,
    pub path: String,
    /// Shared with the receiver that joins one Receiver's clusters (cluster mode).
    pub verifier: Arc<dyn Verifier>,
    pub targets: Vec<Arc<Target>>,
    /// Per target, in order: `resourceFilter` and the resource's own `filter`, both of which
    /// must hold for the target to be reconciled.
    pub filters: Vec<Vec<Expr>>,
    /// Whether the body is kept after verification: for the verifier's own checks, for
    /// filters that read `req`, or to forward it.
    pub keep_body: bool,
    /// The receiver's own cap on bodies (`max_body_bytes`), under `server.max_body_bytes`:
    /// always set when the body is kept, since every byte of it is held in memory.
    pub max_body_bytes: Option<u64>,
    pub forward: Option<ForwardSpec>,
    /// The receiver's own `clusters`/`cluster_selector` (default: `default`), resolved at load
    /// time into `forward_clusters`: where forward mode forwards each delivery.
    pub placement: Placement,
    pub forward_clusters: Arc<[ClusterId]>,
    /// Each target as answers name it, written once rather than for every delivery.
    pub target_names: Vec<String>,
    /// Per target, in order: the selector that picks its clusters, and the key it came from.
    pub placements: Vec<Placement>,
    /// Per target, in order: the clusters it reaches, resolved at load time against the
    /// fleet. Cluster mode's receivers reach the home cluster.
    pub reach: Vec<Arc<[ClusterId]>>,
    /// Whether a target reaches a cluster other than `default` alone: answers then list
    /// what happened per cluster.
    pub per_cluster: bool,
    /// `None`: every address may deliver.
    pub allow: Option<Arc<AllowList>>,
    /// How long an accepted delivery id is remembered; zero turns deduplication off.
    pub replay_window: Duration,
    /// Watched for changes: a changed secret reloads the configuration.
    pub secret_files: Vec<PathBuf>,
    /// Flux's `spec.suspend` (cluster mode): the path answers 503.
    pub suspended: bool,
    delivery_id_header: Option<String>,
}

impl Receiver {
    /// One receiver for the same Receiver found in several clusters (cluster mode): the
    /// first part verifies and decides everything but what to reconcile, and each part brings
    /// its own targets, filters and the cluster they reach. The body is kept when any part's
    /// filters need it.
    pub fn joined(parts: &[Arc<Receiver>]) -> Option<Receiver> {
        let first = parts.first()?;
        let all = || parts.iter().map(|p| &**p);
        let keep_body = all().any(|p| p.keep_body);
        let max_body_bytes = all().filter_map(|p| p.max_body_bytes).max();
        Some(Receiver {
            id: first.id,
            name: first.name.clone(),
            namespace: first.namespace.clone(),
            label: first.label.clone(),
            kind: first.kind,
            events: first.events.clone(),
            path: first.path.clone(),
            verifier: first.verifier.clone(),
            targets: all().flat_map(|p| p.targets.iter().cloned()).collect(),
            filters: all().flat_map(|p| p.filters.iter().cloned()).collect(),
            keep_body,
            max_body_bytes: max_body_bytes.or(keep_body.then_some(DEFAULT_KEPT_BODY_BYTES)),
            forward: first.forward.clone(),
            placement: first.placement.clone(),
            forward_clusters: first.forward_clusters.clone(),
            target_names: all().flat_map(|p| p.target_names.iter().cloned()).collect(),
            placements: all().flat_map(|p| p.placements.iter().cloned()).collect(),
            reach: all().flat_map(|p| p.reach.iter().cloned()).collect(),
            per_cluster: true,
            allow: first.allow.clone(),
            replay_window: first.replay_window,
            secret_files: first.secret_files.clone(),
            suspended: first.suspended,
            delivery_id_header: first.delivery_id_header.clone(),
        })
    }

    /// Flux's rule: an empty list accepts every event; otherwise the event must be listed.
    pub fn accepts_event(&self, event: Option<&str>) -> bool {
        if self.events.is_empty() {
            return true;
        }
        let Some(e) = event.map(str::to_lowercase) else {
            return false;
        };
        self.events.contains(&e)
    }

    pub fn allows(&self, ip: IpAddr) -> bool {
        self.allow.as_ref().is_none_or(|a| a.allows(ip))
    }

    /// The provider's id of this delivery, from the configured header or the type's own.
    pub fn delivery_id<'h>(&self, head: &'h HeaderMap) -> Option<&'h str> {
        let get = |h: &str| {
            head.get(h)
                .and_then(|v| v.to_str().ok())
                .filter(|v| !v.is_empty())
        };
        match &self.delivery_id_header {
            Some(h) => get(h),
            None => self
                .verifier
                .delivery_id_headers()
                .iter()
                .find_map(|h| get(h)),
        }
    }
}

/// Settings outside `[[receivers]]` that decide whether a receiver is valid.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rules {
    /// `kubernetes.no_cross_namespace_refs`: targets must be in the receiver's namespace.
    pub no_cross_namespace_refs: bool,
}

/// What comes with a receiver's table from outside it.
struct Given {
    /// Cluster mode: the Secret's token, in place of secret files.
    token: Option<Secret>,
    rules: Rules,
}

pub(super) fn receiver(
    id: u32,
    key: &str,
    r: RawReceiver,
    rules: Rules,
    sets: &mut RangeSets,
    p: &mut Problems,
    warnings: &mut Vec<String>,
) -> Option<Receiver> {
    let given = Given { token: None, rules };
    build(id, key, r, given, sets, p, warnings)
}

/// Cluster mode: a receiver from a Flux `Receiver` object whose fields `r` holds under this
/// file's keys, with its Secret's `token` (as read, nothing trimmed, as Flux uses it) in place
/// of secret files. `Ok` carries the warnings, `Err` every problem, keyed under `key`.
pub fn from_token(
    id: u32,
    key: &str,
    r: RawReceiver,
    token: Option<Secret>,
    rules: Rules,
    sets: &mut RangeSets,
) -> Result<(Receiver, Vec<String>), Vec<super::Problem>> {
    let mut p = Problems::default();
    let mut warnings = Vec::new();
    let given = Given { token, rules };
    match build(id, key, r, given, sets, &mut p, &mut warnings) {
        Some(rec) if p.0.is_empty() => Ok((rec, warnings)),
        _ => Err(p.0),
    }
}

fn build(
    id: u32,
    key: &str,
    r: RawReceiver,
    given: Given,
    sets: &mut RangeSets,
    p: &mut Problems,
    warnings: &mut Vec<String>,
) -> Option<Receiver> {
    let before = p.0.len();
    if r.name.is_empty() {
        p.add(format!("{key}.name"), "missing");
    } else {
        p.take(&format!("{key}.name"), check_dns_subdomain(&r.name));
    }
    if r.namespace.is_empty() {
        p.add(
            format!("{key}.namespace"),
            "missing; the namespace is part of the hook path, as in Flux",
        );
    } else {
        p.take(&format!("{key}.namespace"), check_dns_label(&r.namespace));
    }
    let kind = if r.kind.is_empty() {
        p.add(format!("{key}.type"), "missing");
        None
    } else {
        p.take(&format!("{key}.type"), r.kind.parse::<ReceiverType>())
    };
    let secret_files: Vec<PathBuf> = match &r.secret_file {
        Some(OneOrMany::One(f)) => vec![f.clone()],
        Some(OneOrMany::Many(v)) => v.clone(),
        None => Vec::new(),
    };
    let uses_secret = kind.is_none_or(|k| k.uses_secret());
    let trim = r.trim_secret.unwrap_or(true);
    let mut trimmed = None;
    let secrets = if uses_secret {
        match given.token {
            Some(t) => vec![t],
            None => {
                let (secrets, first) = secrets(key, r.secret_file, r.secret_env, trim, p, warnings);
                trimmed = first;
                secrets
            }
        }
    } else {
        if r.secret_file.is_some() || r.secret_env.is_some() {
            p.add(
                format!("{key}.secret_file"),
                "not used by type generic-oidc, which authenticates with oidc_providers (Flux forbids its secretRef)",
            );
        }
        Vec::new()
    };
    for (j, e) in r.events.iter().enumerate() {
        if e.trim().is_empty() {
            p.add(format!("{key}.events[{j}]"), "empty event name");
        }
    }
    if !r.events.is_empty() && kind.is_some_and(|k| !k.uses_events()) {
        warnings.push(format!(
            "{key}.events: ignored by type {}, as in Flux",
            r.kind
        ));
    }
    if let Some(path) = &r.path {
        let ok = path.starts_with("/hook/")
            && path.len() > 6
            && path
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'?' && b != b'#' && b != b'%');
        if !ok {
            p.add(format!("{key}.path"), format!("{path:?} must be /hook/ followed by printable characters, with no query, fragment or percent-encoding"));
        }
    }
    let allow = allow_list(key, &r.allow_from, sets, p).map(Arc::new);
    let replay_window = duration_or_off(
        &format!("{key}.replay_window"),
        r.replay_window.as_deref(),
        Duration::from_secs(600),
        p,
    );
    if let Some(h) = &r.delivery_id_header {
        if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
            p.add(
                format!("{key}.delivery_id_header"),
                format!("{h:?} is not a header name"),
            );
        }
    }
    if r.max_body_bytes == Some(0) {
        p.add(format!("{key}.max_body_bytes"), "must be more than zero");
    }
    if let Some(f) = &r.forward {
        for (field, reason) in f.problems() {
            p.add(format!("{key}.forward.{field}"), reason);
        }
        if let Some(k) = kind.filter(|k| k.authenticates_with_authorization()) {
            p.add(
                format!("{key}.forward"),
                format!("type {k} cannot be forwarded: it authenticates with the Authorization header, which the API server's service proxy does not pass on"),
            );
        }
        if !r.resources.is_empty() || r.resource_filter.is_some() {
            warnings.push(format!(
                "{key}.resources: ignored in forward mode; the Flux Receiver in the cluster decides what to reconcile"
            ));
        }
    } else if r.resources.is_empty() {
        // Flux accepts a Receiver with `resources: []` and answers its deliveries 200; refusing
        // it would leave such a Receiver silently unserved in cluster mode.
        warnings.push(format!(
            "{key}.resources: none; deliveries are verified and answered 200 with nothing reconciled, as in Flux (list the Flux objects to reconcile, or forward = {{}} to Flux)"
        ));
    }
    let scope = Scope::Filter {
        claims: kind == Some(ReceiverType::GenericOidc),
    };
    let resource_filter = r
        .resource_filter
        .as_deref()
        .and_then(|f| p.take(&format!("{key}.resource_filter"), Expr::compile(f, scope)))
        .map(|e| e.named(format!("{key}.resource_filter")));
    let mut targets = Vec::new();
    let mut filters = Vec::new();
    let mut placements = Vec::new();
    let own = ClusterSelector::from_keys(key, r.clusters.as_deref(), r.cluster_selector.as_ref())
        .map_err(|(k, why)| p.add(k, why))
        .ok()
        .flatten();
    let default_placement = match own {
        Some(selector) => Placement {
            key: format!("{key}.clusters"),
            selector,
        },
        None => Placement {
            key: format!("{key}.clusters"),
            selector: ClusterSelector::default(),
        },
    };
    for (j, spec) in r.resources.iter().enumerate() {
        let rkey = format!("{key}.resources[{j}]");
        match ClusterSelector::from_keys(
            &rkey,
            spec.clusters.as_deref(),
            spec.cluster_selector.as_ref(),
        ) {
            Ok(Some(selector)) => placements.push(Placement {
                key: format!("{rkey}.clusters"),
                selector,
            }),
            Ok(None) => placements.push(default_placement.clone()),
            Err((k, why)) => p.add(k, why),
        }
        match Target::resolve(spec, &r.namespace) {
            // As Flux's --no-cross-namespace-refs, but found at load time rather than failing
            // every delivery with a 500.
            Ok(t) if given.rules.no_cross_namespace_refs && t.namespace != r.namespace => p.add(
                format!("{key}.resources[{j}].namespace"),
                format!(
                    "{:?} is not the receiver's namespace {:?}, and kubernetes.no_cross_namespace_refs forbids cross-namespace references",
                    t.namespace, r.namespace
                ),
            ),
            Ok(t) => {
                if spec.name != "*" && !spec.match_labels.is_empty() {
                    warnings.push(format!("{key}.resources[{j}].matchLabels: ignored because name is not \"*\", as in Flux"));
                }
                targets.push(Arc::new(t));
            }
            Err((field, reason)) => p.add(format!("{key}.resources[{j}].{field}"), reason),
        }
        let own = spec.filter.as_deref().and_then(|f| {
            p.take(
                &format!("{key}.resources[{j}].filter"),
                Expr::compile(f, scope),
            )
            .map(|e| e.named(format!("{key}.resources[{j}].filter")))
        });
        filters.push(
            resource_filter
                .iter()
                .cloned()
                .chain(own)
                .collect::<Vec<_>>(),
        );
    }
    if !r.oidc_providers.is_empty() && kind.is_some_and(|k| k != ReceiverType::GenericOidc) {
        p.add(
            format!("{key}.oidc_providers"),
            "only for type generic-oidc (Flux forbids oidcProviders on other types)",
        );
    }
    if kind.is_some_and(|k| k != ReceiverType::Gcr) {
        for (field, set) in [
            ("email", r.email.is_some()),
            ("audience", r.audience.is_some()),
            ("jwks", r.jwks.is_some()),
        ] {
            if set {
                warnings.push(format!(
                    "{key}.{field}: ignored by type {}; it is for type gcr{}",
                    r.kind,
                    if kind == Some(ReceiverType::GenericOidc) {
                        " (generic-oidc takes audience and jwks per oidc_providers entry)"
                    } else {
                        ""
                    }
                ));
            }
        }
    }
    let options = TypeOptions {
        email: r.email,
        audience: r.audience,
        jwks: r.jwks,
        oidc_providers: r.oidc_providers,
    };
    let verifier = kind.and_then(|k| match k.verifier(&secrets, &options) {
        Ok(v) => Some(v),
        Err(problems) => {
            for (field, reason) in problems {
                p.add(format!("{key}.{field}"), reason);
            }
            None
        }
    });
    if p.0.len() > before {
        return None;
    }
    let kind = kind?;
    let verifier = verifier?;
    // generic-oidc has no secret: Flux hashes an empty token, so its path is public.
    let token = secrets.first().map_or(&[][..], |s| s.expose());
    let path = match r.path {
        Some(p) => p,
        None => {
            let path = flux_hook_path(token, &r.name, &r.namespace);
            if let Some((field, stored)) = trimmed {
                let flux = flux_hook_path(stored.expose(), &r.name, &r.namespace);
                warnings.push(format!(
                    "{field}: the token ends with a line break, which fluxgate drops, so its path is {} where Flux, given these bytes in a Secret, shows {}; if the token comes from a Flux Secret, set trim_secret = false to keep Flux's path and signing key",
                    crate::hook_path::elide(&path),
                    crate::hook_path::elide(&flux)
                ));
            }
            path
        }
    };
    let filters_read_req = filters.iter().flatten().any(Expr::reads_req);
    let keep_body = verifier.reads_body() || filters_read_req || r.forward.is_some();
    Some(Receiver {
        id,
        path,
        keep_body,
        max_body_bytes: r
            .max_body_bytes
            .or(keep_body.then_some(DEFAULT_KEPT_BODY_BYTES)),
        verifier: Arc::from(verifier),
        filters,
        forward: r.forward,
        events: r.events.iter().map(|e| e.to_lowercase()).collect(),
        label: format!("{}/{}", r.namespace, r.name),
        name: r.name,
        namespace: r.namespace,
        kind,
        target_names: targets.iter().map(|t| t.to_string()).collect(),
        // Until the configuration resolves the placements: the home cluster.
        reach: targets.iter().map(|_| Arc::from(vec![0])).collect(),
        per_cluster: false,
        placements,
        placement: default_placement,
        forward_clusters: Arc::from(vec![0]),
        targets,
        allow,
        replay_window,
        secret_files,
        suspended: false,
        delivery_id_header: r.delivery_id_header,
    })
}

/// Every active secret, files first, in the order given: the first makes the path, and comes
/// back with its key and its bytes as stored when trimming dropped line breaks from it. A file
/// others than its owner may read draws a warning under its key.
fn secrets(
    key: &str,
    files: Option<OneOrMany<PathBuf>>,
    envs: Option<OneOrMany<String>>,
    trim: bool,
    p: &mut Problems,
    warnings: &mut Vec<String>,
) -> (Vec<Secret>, Option<(String, Secret)>) {
    let files = files.map(OneOrMany::into_vec).unwrap_or_default();
    let envs = envs.map(OneOrMany::into_vec).unwrap_or_default();
    if files.is_empty() && envs.is_empty() {
        p.add(format!("{key}.secret_file"), "missing; the receiver's token, from a file (secret_file) or an environment variable (secret_env)");
        return (Vec::new(), None);
    }
    let many = files.len() + envs.len() > 1;
    let k = |field: &str, i: usize| {
        if many {
            format!("{key}.{field}[{i}]")
        } else {
            format!("{key}.{field}")
        }
    };
    let mut out = Vec::new();
    let mut first = None;
    let mut keep = |field: String, read: Option<crate::secret::Read>| {
        if let Some(read) = read {
            if out.is_empty() {
                first = read.as_stored.map(|s| (field, s));
            }
            out.push(read.secret);
        }
    };
    for (i, f) in files.iter().enumerate() {
        let field = k("secret_file", i);
        let read = p.take(&field, Secret::read_file(f, trim));
        if let Some(w) = crate::secret::loose_permissions(f) {
            warnings.push(format!("{field}: {w}"));
        }
        keep(field, read);
    }
    for (i, v) in envs.iter().enumerate() {
        let field = k("secret_env", i);
        let read = p.take(&field, Secret::read_env(v, trim));
        keep(field, read);
    }
    (out, first)
}
