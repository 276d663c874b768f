//! A Flux `Receiver` object and its Secret, turned into a receiver by the code that builds the
//! file's receivers. Problems are named by the object's own fields (`spec.resourceFilter`), so
//! the warning points at what to fix in the cluster.

use crate::config::{from_token, RawReceiver, Receiver, ReceiverDefaults};
use crate::guard::ranges::RangeSets;
use crate::relay::target::ResourceSpec;
use crate::secret::Secret;
use crate::verify::oidc::ProviderSpec;
use crate::verify::ReceiverType;
use kube::api::DynamicObject;
use serde::de::DeserializeOwned;
use serde_json::{json, Map, Value};
use std::fmt;

pub const GROUP: &str = "notification.toolkit.fluxcd.io";
pub const VERSION: &str = "v1";
pub const KIND: &str = "Receiver";
pub const PLURAL: &str = "receivers";

/// The parts of a Receiver object that fluxgate reads.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceiverObject {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// Changes with the spec only (custom resources bump it on spec changes, not on status
    /// writes); the resourceVersion stands in when an API server does not set it.
    pub generation: String,
    pub spec: Map<String, Value>,
}

impl ReceiverObject {
    /// `None` for an object without a name or namespace, which a namespaced kind cannot be.
    pub fn from_dynamic(o: DynamicObject) -> Option<Self> {
        let m = o.metadata;
        let generation = match m.generation {
            Some(g) => g.to_string(),
            None => format!("rv {}", m.resource_version.unwrap_or_default()),
        };
        let spec = match o.data {
            Value::Object(mut fields) => match fields.remove("spec") {
                Some(Value::Object(spec)) => spec,
                _ => Map::new(),
            },
            _ => Map::new(),
        };
        Some(ReceiverObject {
            namespace: m.namespace.filter(|n| !n.is_empty())?,
            name: m.name.filter(|n| !n.is_empty())?,
            uid: m.uid.unwrap_or_default(),
            generation,
            spec,
        })
    }

    /// `namespace/name`, as receivers are labelled in logs and metrics.
    pub fn label(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// `spec.secretRef.name`, the Secret in the Receiver's namespace.
    pub fn secret_name(&self) -> Option<&str> {
        self.spec.get("secretRef")?.get("name")?.as_str()
    }

    /// Whether its type authenticates with a Secret: all but generic-oidc, as in Flux.
    pub fn uses_secret(&self) -> bool {
        self.spec.get("type").and_then(Value::as_str) != Some(ReceiverType::GenericOidc.as_str())
    }

    pub fn suspended(&self) -> bool {
        self.spec.get("suspend").and_then(Value::as_bool) == Some(true)
    }
}

/// What a Receiver's Secret holds for fluxgate, as stored: no trimming, unlike secret files.
#[derive(Debug, Clone)]
pub struct SecretData {
    pub token: Option<Secret>,
    pub email: Option<Vec<u8>>,
    pub audience: Option<Vec<u8>>,
    /// The Secret's resourceVersion: a new one means a new token.
    pub version: String,
}

/// Why a Receiver object is not served: the field to fix and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skip {
    pub field: String,
    pub reason: String,
}

impl Skip {
    fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Skip {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// The key receivers are built under; their problems come back as `spec.<file key>`.
const KEY: &str = "spec";

/// Builds the receiver a Receiver object asks for. `secret` is `None` when the object names no
/// Secret, else what reading it gave: its data or why it could not be read.
pub fn convert(
    obj: &ReceiverObject,
    secret: Option<Result<&SecretData, &str>>,
    defaults: &ReceiverDefaults,
    id: u32,
    sets: &mut RangeSets,
) -> Result<(Receiver, Vec<String>), Vec<Skip>> {
    let secret_label = obj
        .secret_name()
        .map(|s| format!("Secret {}/{s}", obj.namespace));
    let kind = field::<String>(&obj.spec, "type")?.unwrap_or_default();
    // First, so a wrong type is not reported as a Secret problem.
    let parsed: ReceiverType = match kind.as_str() {
        "" => return Err(vec![Skip::new("spec.type", "missing")]),
        k => k.parse().map_err(|e| vec![Skip::new("spec.type", e)])?,
    };
    let token = match (parsed.uses_secret(), &secret_label, secret) {
        (false, None, _) => None,
        (false, Some(_), _) => {
            return Err(vec![Skip::new(
                "spec.secretRef",
                "forbidden for type generic-oidc, which authenticates with oidcProviders (as Flux's CRD says)",
            )])
        }
        (true, None, _) => {
            return Err(vec![Skip::new(
                "spec.secretRef",
                format!("missing; type {kind} needs a Secret with a \"token\" key"),
            )])
        }
        (true, Some(label), None) => {
            return Err(vec![Skip::new("spec.secretRef", format!("{label} not read yet"))])
        }
        (true, Some(_), Some(Err(why))) => return Err(vec![Skip::new("spec.secretRef", why)]),
        (true, Some(label), Some(Ok(data))) => Some(token(label, data)?),
    };
    let mut fields = receiver_fields(obj, secret.and_then(Result::ok))?;
    defaults.fill(&mut fields);
    let raw: RawReceiver = serde_json::from_value(Value::Object(fields))
        .map_err(|e| vec![Skip::new("spec", e.to_string())])?;
    let secret_label = secret_label.unwrap_or_default();
    match from_token(id, KEY, raw, token, defaults.rules, sets) {
        Ok((mut rec, warnings)) => {
            rec.suspended = obj.suspended();
            let warnings = warnings
                .into_iter()
                .map(|w| match w.split_once(": ") {
                    Some((k, rest)) => format!("{}: {rest}", object_field(k, &secret_label)),
                    None => w,
                })
                .collect();
            Ok((rec, warnings))
        }
        Err(problems) => Err(problems
            .into_iter()
            .map(|p| Skip::new(object_field(&p.key, &secret_label), p.reason))
            .collect()),
    }
}

/// The `[[receivers]]` keys a Receiver object and its Secret stand for, before any defaults
/// and without the token: what cluster mode serves and `fluxgate import` writes.
pub fn receiver_fields(
    obj: &ReceiverObject,
    secret: Option<&SecretData>,
) -> Result<Map<String, Value>, Vec<Skip>> {
    let kind = field::<String>(&obj.spec, "type")?.unwrap_or_default();
    let mut fields = Map::new();
    fields.insert("name".into(), json!(obj.name));
    fields.insert("namespace".into(), json!(obj.namespace));
    fields.insert("type".into(), json!(kind));
    copy::<Vec<String>>(&obj.spec, "events", &mut fields, "events")?;
    copy::<String>(&obj.spec, "resourceFilter", &mut fields, "resource_filter")?;
    fields.insert(
        "resources".into(),
        json!(entries::<ResourceSpec>(obj, "resources")?),
    );
    fields.insert(
        "oidc_providers".into(),
        json!(entries::<ProviderSpec>(obj, "oidcProviders")?),
    );
    if let (Some(label), Some(data), Ok(ReceiverType::Gcr)) =
        (obj.secret_name(), secret, kind.parse::<ReceiverType>())
    {
        let label = format!("Secret {}/{label}", obj.namespace);
        for (key, value) in [("email", &data.email), ("audience", &data.audience)] {
            if let Some(v) = value {
                let v = std::str::from_utf8(v)
                    .map_err(|_| vec![Skip::new(format!("{label} key {key:?}"), "not UTF-8")])?;
                fields.insert(key.into(), json!(v));
            }
        }
    }
    Ok(fields)
}

/// The Secret's `token`, which must be there and not empty.
fn token(label: &str, data: &SecretData) -> Result<Secret, Vec<Skip>> {
    match &data.token {
        None => Err(vec![Skip::new(
            "spec.secretRef",
            format!("{label} has no \"token\" key"),
        )]),
        // Flux would take it, and then accept unsigned github and bitbucket deliveries.
        Some(t) if t.expose().is_empty() => Err(vec![Skip::new(
            "spec.secretRef",
            format!("{label} has an empty \"token\""),
        )]),
        Some(t) => Ok(t.clone()),
    }
}

/// One optional spec field, of the type Flux's schema gives it.
fn field<T: DeserializeOwned>(
    spec: &Map<String, Value>,
    name: &str,
) -> Result<Option<T>, Vec<Skip>> {
    match spec.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => serde_json::from_value(v.clone())
            .map(Some)
            .map_err(|e| vec![Skip::new(format!("spec.{name}"), e.to_string())]),
    }
}

/// Copies a spec field, checked, to the receiver key `to`.
fn copy<T: DeserializeOwned + serde::Serialize>(
    spec: &Map<String, Value>,
    name: &str,
    fields: &mut Map<String, Value>,
    to: &str,
) -> Result<(), Vec<Skip>> {
    if let Some(v) = field::<T>(spec, name)? {
        fields.insert(to.into(), json!(v));
    }
    Ok(())
}

/// A list field whose entries are checked one by one, so a problem names its entry.
fn entries<T: DeserializeOwned>(obj: &ReceiverObject, name: &str) -> Result<Vec<Value>, Vec<Skip>> {
    let items = field::<Vec<Value>>(&obj.spec, name)?.unwrap_or_default();
    let mut skips = Vec::new();
    for (j, item) in items.iter().enumerate() {
        if let Err(e) = serde_json::from_value::<T>(item.clone()) {
            skips.push(Skip::new(format!("spec.{name}[{j}]"), e.to_string()));
        }
    }
    if skips.is_empty() {
        Ok(items)
    } else {
        Err(skips)
    }
}

/// A receiver key (`spec.resource_filter`) as the field of the object or its Secret it came from
/// (`spec.resourceFilter`), or of `[cluster.defaults]`.
fn object_field(key: &str, secret: &str) -> String {
    let Some(rest) = key.strip_prefix("spec.") else {
        return key.to_string();
    };
    let head = rest.split(['.', '[']).next().unwrap_or(rest);
    let tail = &rest[head.len()..];
    match head {
        "name" | "namespace" => format!("metadata.{head}{tail}"),
        "resource_filter" => format!("spec.resourceFilter{tail}"),
        "oidc_providers" => format!("spec.oidcProviders{tail}"),
        "secret_file" | "secret_env" => "spec.secretRef".into(),
        "email" | "audience" => format!("{secret} key {head:?}"),
        "allow_from" | "replay_window" | "delivery_id_header" | "jwks" => {
            format!("cluster.defaults.{rest}")
        }
        _ => key.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hook_path::flux_hook_path;

    fn object(namespace: &str, name: &str, spec: Value) -> ReceiverObject {
        let o: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "notification.toolkit.fluxcd.io/v1", "kind": "Receiver",
            "metadata": {"name": name, "namespace": namespace, "uid": "u-1", "generation": 3,
                         "resourceVersion": "17"},
            "spec": spec,
            "status": {"webhookPath": "/hook/ignored"},
        }))
        .unwrap();
        ReceiverObject::from_dynamic(o).unwrap()
    }

    fn github(spec: Value) -> ReceiverObject {
        let mut base = json!({
            "type": "github",
            "events": ["Push"],
            "secretRef": {"name": "webhook-token"},
            "resources": [{"kind": "GitRepository", "name": "app"}],
        });
        for (k, v) in spec.as_object().unwrap() {
            base[k] = v.clone();
        }
        object("flux-system", "github-receiver", base)
    }

    fn data(token: Option<&[u8]>) -> SecretData {
        SecretData {
            token: token.map(|t| Secret::new(t.to_vec())),
            email: None,
            audience: None,
            version: "5".into(),
        }
    }

    fn build(
        o: &ReceiverObject,
        secret: Option<Result<&SecretData, &str>>,
    ) -> Result<Receiver, Vec<Skip>> {
        build_with(o, secret, &ReceiverDefaults::default()).map(|(r, _)| r)
    }

    fn build_with(
        o: &ReceiverObject,
        secret: Option<Result<&SecretData, &str>>,
        defaults: &ReceiverDefaults,
    ) -> Result<(Receiver, Vec<String>), Vec<Skip>> {
        convert(o, secret, defaults, 1 << 31, &mut RangeSets::new())
    }

    /// The fields of the skips, for comparing.
    fn fields(r: Result<Receiver, Vec<Skip>>) -> Vec<String> {
        r.expect_err("the Receiver must be skipped")
            .into_iter()
            .map(|s| s.field)
            .collect()
    }

    #[test]
    fn reads_the_object_metadata() {
        let o = github(json!({"suspend": true}));
        assert_eq!(o.label(), "flux-system/github-receiver");
        assert_eq!((o.uid.as_str(), o.generation.as_str()), ("u-1", "3"));
        assert_eq!(o.secret_name(), Some("webhook-token"));
        assert!(o.suspended() && o.uses_secret());
        let no_generation: DynamicObject = serde_json::from_value(json!({
            "metadata": {"name": "a", "namespace": "b", "resourceVersion": "9"}}))
        .unwrap();
        let o = ReceiverObject::from_dynamic(no_generation).unwrap();
        assert_eq!(o.generation, "rv 9");
        assert!(o.spec.is_empty());
        let unnamed: DynamicObject =
            serde_json::from_value(json!({"metadata": {"namespace": "b"}})).unwrap();
        assert!(ReceiverObject::from_dynamic(unnamed).is_none());
    }

    #[test]
    fn generic_oidc_objects_are_read_with_fluxs_field_names() {
        let o = object(
            "flux-system",
            "github-receiver",
            json!({"type": "generic-oidc",
                   "resources": [{"kind": "GitRepository", "name": "app"}],
                   "resourceFilter": "claims.sub == 'repo:org/app:ref:refs/heads/main'",
                   "oidcProviders": [{
                       "issuerURL": "https://token.actions.githubusercontent.com",
                       "audience": "flux",
                       "variables": [{"name": "repo", "expression": "claims.repository"}],
                       "validations": [{"expression": "vars.repo == 'org/app'", "message": "wrong repository"}]}]}),
        );
        let r = build(&o, None).unwrap();
        // Flux's test vector for generic-oidc: an empty token.
        assert_eq!(
            r.path,
            "/hook/d9c6bac01b84166b25cc5beaa8bc0d10807c6ec7c12e73ee81880689f8ed8538"
        );
        assert_eq!(r.kind, ReceiverType::GenericOidc);
        let no_validations = object(
            "flux-system",
            "github-receiver",
            json!({"type": "generic-oidc",
                   "resources": [{"kind": "GitRepository", "name": "app"}],
                   "oidcProviders": [{"issuerURL": "https://token.actions.githubusercontent.com"}]}),
        );
        assert_eq!(
            fields(build(&no_validations, None)),
            ["spec.oidcProviders[0].validations"]
        );
    }

    #[test]
    fn the_path_is_fluxs_with_the_token_as_stored() {
        let o = object(
            "my-namespace",
            "receiver-secret",
            json!({"type": "generic", "secretRef": {"name": "s"},
                   "resources": [{"kind": "GitRepository", "name": "app"}]}),
        );
        let r = build(&o, Some(Ok(&data(Some(b"test-token"))))).unwrap();
        assert_eq!(
            r.path,
            "/hook/106120121d366c2f67e93200f6c1dbe938235eb588daa5e8c0516d3a77ac1dee"
        );
        // Nothing is trimmed: a trailing newline is part of the token, as in Flux.
        let r = build(&o, Some(Ok(&data(Some(b"test-token\n"))))).unwrap();
        assert_eq!(
            r.path,
            flux_hook_path(b"test-token\n", "receiver-secret", "my-namespace")
        );
        assert_ne!(
            r.path,
            "/hook/106120121d366c2f67e93200f6c1dbe938235eb588daa5e8c0516d3a77ac1dee"
        );
    }

    #[test]
    fn every_field_flux_defines_is_read() {
        let o = github(json!({
            "events": ["Push", "ping"],
            "resourceFilter": "res.metadata.name != 'skip'",
            "resources": [
                {"kind": "GitRepository", "name": "app"},
                {"kind": "Kustomization", "apiVersion": "kustomize.toolkit.fluxcd.io/v1",
                 "name": "*", "namespace": "apps", "matchLabels": {"app": "web"},
                 "filter": "req.ref == 'refs/heads/main'"},
            ],
            "interval": "10m",
            "suspend": true,
        }));
        let r = build(&o, Some(Ok(&data(Some(b"t"))))).unwrap();
        assert_eq!(r.label, "flux-system/github-receiver");
        assert_eq!(r.kind, ReceiverType::Github);
        assert_eq!(r.id, 1 << 31);
        assert_eq!(r.events, ["push", "ping"]);
        assert_eq!(
            r.target_names,
            [
                "GitRepository flux-system/app",
                "Kustomization apps/* (app=web)"
            ]
        );
        assert_eq!(r.filters.iter().map(Vec::len).collect::<Vec<_>>(), [1, 2]);
        assert!(r.keep_body, "a filter reads req");
        assert_eq!(
            r.max_body_bytes,
            Some(3 * 1024 * 1024),
            "Flux's cap on kept bodies"
        );
        assert!(r.suspended);
        assert!(r.allow.is_none() && r.secret_files.is_empty());
        assert_eq!(r.replay_window, std::time::Duration::from_secs(600));
    }

    #[test]
    fn defaults_fill_what_the_object_cannot_say() {
        let defaults = ReceiverDefaults {
            allow_from: vec!["192.0.2.0/24".into()],
            replay_window: Some("1m".into()),
            delivery_id_header: Some("X-Delivery".into()),
            jwks: None,
            max_body_bytes: Some(65536),
            rules: Default::default(),
        };
        let (r, _) =
            build_with(&github(json!({})), Some(Ok(&data(Some(b"t")))), &defaults).unwrap();
        assert_eq!(r.max_body_bytes, Some(65536));
        assert!(r.allows("192.0.2.7".parse().unwrap()));
        assert!(!r.allows("198.51.100.1".parse().unwrap()));
        assert_eq!(r.replay_window, std::time::Duration::from_secs(60));
        let bad = ReceiverDefaults {
            replay_window: Some("soon".into()),
            ..ReceiverDefaults::default()
        };
        let e = build_with(&github(json!({})), Some(Ok(&data(Some(b"t")))), &bad).unwrap_err();
        assert_eq!(e[0].field, "cluster.defaults.replay_window");
    }

    #[test]
    fn problems_name_the_objects_fields() {
        let secret = data(Some(b"t"));
        let ok = || Some(Ok(&secret));
        let skip = |spec: Value| fields(build(&github(spec), ok()));
        assert_eq!(skip(json!({"type": "githubb"})), ["spec.type"]);
        assert_eq!(skip(json!({"type": null})), ["spec.type"]);
        assert_eq!(skip(json!({"events": "push"})), ["spec.events"]);
        assert_eq!(
            skip(json!({"resourceFilter": "res.metadata.name =="})),
            ["spec.resourceFilter"]
        );
        assert_eq!(skip(json!({"resourceFilter": 1})), ["spec.resourceFilter"]);
        // Refused at load as Flux's type checker refuses them: the Receiver is not served.
        for bad in [
            "'test'",
            "requrest.body.value == 'x'",
            "req.tag.lst() == 'x'",
        ] {
            assert_eq!(
                skip(json!({"resourceFilter": bad})),
                ["spec.resourceFilter"],
                "{bad}"
            );
        }
        assert_eq!(
            skip(json!({"resources": [
                {"kind": "GitRepository", "name": "a"},
                {"kind": "GitRepository", "name": "b", "filter": "nope("},
                {"kind": "Gitrepository", "name": "c"},
                {"kind": "Kustomization", "name": "d"},
            ]})),
            [
                "spec.resources[1].filter",
                "spec.resources[2].kind",
                "spec.resources[3].apiVersion"
            ]
        );
        assert_eq!(
            skip(json!({"resources": [{"kind": "GitRepository", "name": "a", "nmae": "x"}]})),
            ["spec.resources[0]"]
        );
        let bad_cel = build(
            &github(json!({"resourceFilter": "res.metadata.name =="})),
            ok(),
        )
        .unwrap_err();
        assert!(
            bad_cel[0].to_string().starts_with("spec.resourceFilter: "),
            "{bad_cel:?}"
        );
        let undeclared = build(
            &github(json!({"resourceFilter": "requrest.body.value == 'x'"})),
            ok(),
        )
        .unwrap_err();
        assert_eq!(
            undeclared[0].to_string(),
            "spec.resourceFilter: undeclared reference to 'requrest'"
        );
    }

    #[test]
    fn a_receiver_needs_a_readable_secret_with_a_token() {
        let o = github(json!({}));
        let why = |r: Result<Receiver, Vec<Skip>>| r.unwrap_err()[0].to_string();
        assert_eq!(
            why(build(
                &o,
                Some(Err("Secret flux-system/webhook-token not found"))
            )),
            "spec.secretRef: Secret flux-system/webhook-token not found"
        );
        assert_eq!(
            why(build(&o, Some(Ok(&data(None))))),
            "spec.secretRef: Secret flux-system/webhook-token has no \"token\" key"
        );
        assert_eq!(
            why(build(&o, Some(Ok(&data(Some(b"")))))),
            "spec.secretRef: Secret flux-system/webhook-token has an empty \"token\""
        );
        let mut no_ref = github(json!({}));
        no_ref.spec.remove("secretRef");
        assert_eq!(
            why(build(&no_ref, None)),
            "spec.secretRef: missing; type github needs a Secret with a \"token\" key"
        );
        let oidc = object(
            "flux-system",
            "oidc",
            json!({"type": "generic-oidc", "secretRef": {"name": "s"},
                   "resources": [{"kind": "GitRepository", "name": "app"}]}),
        );
        assert_eq!(
            fields(build(&oidc, Some(Ok(&data(Some(b"t")))))),
            ["spec.secretRef"]
        );
    }

    #[test]
    fn gcr_reads_email_and_audience_from_the_secret() {
        let o = github(json!({"type": "gcr", "events": []}));
        let mut d = data(Some(b"t"));
        d.email = Some(vec![0xff, 0xfe]);
        assert_eq!(
            fields(build(&o, Some(Ok(&d)))),
            ["Secret flux-system/webhook-token key \"email\""]
        );
    }

    #[test]
    fn a_receiver_with_no_resources_is_served_as_in_flux() {
        let (r, warnings) = build_with(
            &github(json!({"resources": []})),
            Some(Ok(&data(Some(b"t")))),
            &ReceiverDefaults::default(),
        )
        .unwrap();
        assert!(r.targets.is_empty() && r.filters.is_empty());
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].starts_with("spec.resources: none; deliveries are verified and answered 200 with nothing reconciled"),
            "{warnings:?}"
        );
        let (r, _) = build_with(
            &github(json!({"resources": null})),
            Some(Ok(&data(Some(b"t")))),
            &ReceiverDefaults::default(),
        )
        .unwrap();
        assert!(r.targets.is_empty());
    }

    #[test]
    fn warnings_name_the_objects_fields() {
        let o = github(json!({"type": "generic", "events": ["push"]}));
        let (_, warnings) = build_with(
            &o,
            Some(Ok(&data(Some(b"t")))),
            &ReceiverDefaults::default(),
        )
        .unwrap();
        assert_eq!(
            warnings,
            ["spec.events: ignored by type generic, as in Flux"]
        );
    }

    #[test]
    fn object_fields_for_receiver_keys() {
        let s = "Secret ns/s";
        assert_eq!(
            object_field("spec.resource_filter", s),
            "spec.resourceFilter"
        );
        assert_eq!(
            object_field("spec.oidc_providers[1].audience", s),
            "spec.oidcProviders[1].audience"
        );
        assert_eq!(
            object_field("spec.resources[0].matchLabels", s),
            "spec.resources[0].matchLabels"
        );
        assert_eq!(object_field("spec.name", s), "metadata.name");
        assert_eq!(object_field("spec.secret_file", s), "spec.secretRef");
        assert_eq!(
            object_field("spec.audience", s),
            "Secret ns/s key \"audience\""
        );
        assert_eq!(
            object_field("spec.allow_from[2]", s),
            "cluster.defaults.allow_from[2]"
        );
        assert_eq!(object_field("elsewhere", s), "elsewhere");
    }
}
