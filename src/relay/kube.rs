//! The Kubernetes API, through kube-rs, with the service account's kubeconfig.

use super::events::Recorder;
use super::target::Target;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig, KubeconfigError};
use kube::core::{ApiResource, GroupVersionKind};
use kube::Client;
use serde_json::json;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::OnceCell;

/// The annotation Flux controllers watch to reconcile out of schedule.
pub const REQUESTED_AT: &str = "reconcile.fluxcd.io/requestedAt";

/// Why the API server did not take a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// It answered with a Kubernetes `Status` error (403 Forbidden, 404 NotFound, …).
    Refused {
        code: u16,
        reason: String,
        message: String,
        /// The API server's `retryAfterSeconds` (429 and some 5xx).
        retry_after: Option<u64>,
    },
    /// It could not be reached or did not answer in time.
    Unreachable(String),
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiError::Refused {
                code,
                reason,
                message,
                ..
            } => write!(f, "{code} {reason}: {message}"),
            ApiError::Unreachable(e) => write!(f, "unreachable: {e}"),
        }
    }
}

impl From<kube::Error> for ApiError {
    fn from(e: kube::Error) -> Self {
        match e {
            kube::Error::Api(s) => ApiError::Refused {
                code: s.code,
                reason: s.reason.clone(),
                message: one_line(&s.message),
                retry_after: s
                    .details
                    .as_ref()
                    .map(|d| u64::from(d.retry_after_seconds))
                    .filter(|n| *n > 0),
            },
            other => ApiError::Unreachable(one_line(&error_chain(&other))),
        }
    }
}

impl ApiError {
    /// A refusal that no retry can change: bad request, forbidden, missing object, invalid.
    /// Everything else (unreachable, timeouts, 401 while a token rotates, 409, 429, 5xx) is
    /// worth another try.
    pub fn is_permanent(&self) -> bool {
        match self {
            ApiError::Refused { code, .. } => !matches!(code, 401 | 408 | 409 | 429) && *code < 500,
            ApiError::Unreachable(_) => false,
        }
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ApiError::Refused { retry_after, .. } => retry_after.map(Duration::from_secs),
            ApiError::Unreachable(_) => None,
        }
    }

    /// The API server's own refusal in a response body, when it is one: a `Status` object with
    /// `status: Failure`. Anything else came from behind the API server (the service proxy).
    pub fn from_status_body(http_status: u16, body: &[u8]) -> Option<ApiError> {
        let v: serde_json::Value = serde_json::from_slice(body).ok()?;
        if v["kind"] != "Status" || v["status"] != "Failure" {
            return None;
        }
        let text = |k: &str| v[k].as_str().unwrap_or_default().to_string();
        Some(ApiError::Refused {
            code: v["code"]
                .as_u64()
                .and_then(|c| u16::try_from(c).ok())
                .unwrap_or(http_status),
            reason: text("reason"),
            message: one_line(&text("message")),
            retry_after: v["details"]["retryAfterSeconds"]
                .as_u64()
                .filter(|n| *n > 0),
        })
    }

    pub fn code(&self) -> Option<u16> {
        match self {
            ApiError::Refused { code, .. } => Some(*code),
            ApiError::Unreachable(_) => None,
        }
    }
}

pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

pub(crate) fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Reads and checks the kubeconfig. This needs no runtime of its own beyond the call, so it can
/// run before the server starts and stop start-up on a bad file.
pub async fn load_config(
    path: &Path,
    context: Option<&str>,
    timeout: Duration,
) -> Result<kube::Config, String> {
    let kc = Kubeconfig::read_from(path).map_err(|e| kubeconfig_error(&e))?;
    let opts = KubeConfigOptions {
        context: context.map(str::to_string),
        ..Default::default()
    };
    let mut cfg = kube::Config::from_custom_kubeconfig(kc, &opts)
        .await
        .map_err(|e| error_chain(&e))?;
    cfg.connect_timeout = Some(timeout.min(Duration::from_secs(5)));
    cfg.read_timeout = Some(timeout);
    cfg.write_timeout = Some(timeout);
    // Retries are the relay's decision, so a refused patch is reported at once.
    cfg.default_retry = false;
    Ok(cfg)
}

/// Why the kubeconfig could not be read. A parse error's own text quotes the offending line,
/// and a kubeconfig's lines hold the account's token and key, so a parse error is told by its
/// line, column and kind alone.
fn kubeconfig_error(e: &KubeconfigError) -> String {
    match e {
        KubeconfigError::Parse(p) => yaml_error(p),
        other => error_chain(other),
    }
}

/// Where and what kind of YAML error, built from the error's fields that come from the parser
/// and the target type, never from the file's text (messages and `unexpected` values may
/// quote it).
fn yaml_error(e: &serde_saphyr::Error) -> String {
    use serde_saphyr::Error as E;
    let kind = match e.without_snippet() {
        E::Eof { .. } => "unexpected end of the document".to_string(),
        E::Unexpected { expected, .. } => format!("expected {expected}"),
        E::InvalidScalar { ty, .. } => format!("not a valid {ty}"),
        E::SerdeInvalidType { expected, .. } | E::SerdeInvalidValue { expected, .. } => {
            format!("wrong value, expected {expected}")
        }
        E::MultipleDocuments { .. } => "more than one YAML document".to_string(),
        E::ExternalMessage { .. } => "YAML syntax error".to_string(),
        _ => "not a valid kubeconfig".to_string(),
    };
    match e.location() {
        Some(at) => format!(
            "invalid YAML at line {}, column {}: {kind} (the line is not shown: it may hold credentials)",
            at.line(),
            at.column()
        ),
        None => format!("invalid YAML: {kind} (the file's text is not shown: it may hold credentials)"),
    }
}

/// A client made on first use: kube's client spawns its worker on the runtime that builds it,
/// which must be the server's, not a throwaway one from start-up.
pub struct KubeApi {
    config: kube::Config,
    client: OnceCell<Client>,
    /// `relay.events`: writes an Event beside each successful patch. Set once, after the
    /// fleet's clusters are built.
    events: OnceLock<Arc<Recorder>>,
}

impl KubeApi {
    pub fn new(config: kube::Config) -> Self {
        KubeApi {
            config,
            client: OnceCell::new(),
            events: OnceLock::new(),
        }
    }

    /// Turns `relay.events` on for this cluster (a second call changes nothing).
    pub fn set_events(&self, recorder: Arc<Recorder>) {
        let _ = self.events.set(recorder);
    }

    pub fn events(&self) -> Option<&Arc<Recorder>> {
        self.events.get()
    }

    async fn client(&self) -> Result<Client, ApiError> {
        self.client
            .get_or_try_init(|| async { Client::try_from(self.config.clone()) })
            .await
            .cloned()
            .map_err(ApiError::from)
    }

    fn api(client: Client, target: &Target) -> Api<DynamicObject> {
        let gvk = GroupVersionKind::gvk(&target.group, &target.version, &target.kind);
        let ar = ApiResource::from_gvk_with_plural(&gvk, &target.plural);
        Api::namespaced_with(client, &target.namespace, &ar)
    }

    /// An authenticated call that any account may make: it proves the credentials work.
    pub async fn check_reachable(&self) -> Result<(), ApiError> {
        self.client().await?.list_core_api_versions().await?;
        Ok(())
    }

    /// Asks the API server (SelfSubjectAccessReview) whether the configured account may do
    /// `verb` on `resource` in `group` and `namespace`.
    pub async fn can_i(
        &self,
        verb: &str,
        group: &str,
        resource: &str,
        namespace: &str,
        name: Option<&str>,
    ) -> Result<bool, ApiError> {
        use k8s_openapi::api::authorization::v1::{
            ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
        };
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    verb: Some(verb.into()),
                    group: Some(group.into()),
                    resource: Some(resource.into()),
                    namespace: Some(namespace.into()),
                    name: name.map(str::to_string),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let api: Api<SelfSubjectAccessReview> = Api::all(self.client().await?);
        let answer = api
            .create(&kube::api::PostParams::default(), &review)
            .await?;
        Ok(answer.status.is_some_and(|s| s.allowed))
    }

    /// A JSON merge patch of the annotation alone, on the main resource, as Flux sends it.
    pub async fn request_reconcile(
        &self,
        target: &Target,
        name: &str,
        requested_at: &str,
    ) -> Result<(), ApiError> {
        let patch = json!({"metadata": {"annotations": {REQUESTED_AT: requested_at}}});
        let client = self.client().await?;
        let object = Self::api(client.clone(), target)
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        if let Some(events) = self.events.get() {
            events.patched(client, target, &object, requested_at);
        }
        Ok(())
    }

    /// A raw request with the service account's credentials, answered with the status and
    /// body whatever they are: for the service proxy, where the answer is the backend's.
    pub async fn send(
        &self,
        req: http::Request<bytes::Bytes>,
    ) -> Result<(u16, bytes::Bytes), ApiError> {
        let res = self
            .client()
            .await?
            .send(req.map(kube::client::Body::from))
            .await?;
        let status = res.status().as_u16();
        let body = res.into_body().collect_bytes().await?;
        Ok((status, body))
    }

    /// One object's metadata (PartialObjectMetadata), for the filters.
    pub async fn get_metadata(&self, target: &Target, name: &str) -> Result<ObjectMeta, ApiError> {
        let object = Self::api(self.client().await?, target)
            .get_metadata(name)
            .await?;
        Ok(object.metadata)
    }

    /// The metadata of every object the selector matches (PartialObjectMetadataList).
    pub async fn list_metadata(
        &self,
        target: &Target,
        selector: &str,
    ) -> Result<Vec<ObjectMeta>, ApiError> {
        let list = Self::api(self.client().await?, target)
            .list_metadata(&ListParams::default().labels(selector))
            .await?;
        Ok(list.items.into_iter().map(|o| o.metadata).collect())
    }

    pub async fn list_names(
        &self,
        target: &Target,
        selector: &str,
    ) -> Result<Vec<String>, ApiError> {
        let list = Self::api(self.client().await?, target)
            .list(&ListParams::default().labels(selector))
            .await?;
        Ok(list
            .items
            .into_iter()
            .filter_map(|o| o.metadata.name)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.sa-token-do-not-print";

    async fn error_for(text: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("kubeconfig");
        std::fs::write(&p, text).unwrap();
        load_config(&p, None, Duration::from_secs(1))
            .await
            .unwrap_err()
    }

    #[tokio::test]
    async fn a_broken_kubeconfig_is_reported_by_place_and_kind_without_its_text() {
        // A syntax error on the token's own line, a type error on it, and a truncated file.
        let head = "apiVersion: v1\nkind: Config\nusers:\n- name: u\n  user:\n";
        for (text, line) in [
            (format!("{head}    token: {TOKEN}: x\n"), 6),
            (format!("{head}    token: [{TOKEN}]\n"), 6),
            (format!("{head}    token: \"{TOKEN}\n"), 6),
            (format!("clusters: {TOKEN}\n"), 1),
        ] {
            let e = error_for(&text).await;
            assert!(!e.contains("sa-token"), "{e}");
            assert!(e.contains(&format!("line {line}, column ")), "{e}");
        }
    }
}
