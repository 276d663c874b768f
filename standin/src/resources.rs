//! Routing of resource requests (scope rules, subresources, verbs) and the
//! helpers the per-verb handlers share; `get` lives here too.

use serde_json::{json, Value};

use crate::api::{Reply, Request};
use crate::kinds::KindInfo;
use crate::negotiate::{self, Output};
use crate::requestinfo::RequestInfo;
use crate::state::{lock, State};
use crate::status::{go_quote, ApiError, ApiResult, FieldError, FieldErrorKind};
use crate::store::ObjKey;
use crate::{delete, list, patch, reviews, table, watch, write};

pub(crate) const OPTIMISTIC_LOCK_MSG: &str =
    "the object has been modified; please apply your changes to the latest version and try again";

pub(crate) fn serve(state: &State, req: &Request, info: &RequestInfo, user: &str) -> Reply {
    match route(state, req, info, user) {
        Ok(r) => r,
        Err(e) => Reply::error(e),
    }
}

/// Where a request points once scope rules are applied.
pub(crate) struct Target<'a> {
    pub kind: &'a KindInfo,
    /// Namespace for store keys ("" for cluster-scoped kinds; for namespaced
    /// kinds "" means all namespaces and only occurs on collections).
    pub namespace: String,
    /// Name from the URL (not from a field selector).
    pub name: String,
}

impl Target<'_> {
    pub fn key(&self) -> ObjKey {
        ObjKey::new(
            self.kind.group,
            self.kind.plural,
            &self.namespace,
            &self.name,
        )
    }

    pub fn not_found(&self) -> ApiError {
        ApiError::not_found(self.kind.group, self.kind.plural, &self.name)
    }
}

fn route(state: &State, req: &Request, info: &RequestInfo, user: &str) -> ApiResult<Reply> {
    if let Some(reply) = reviews::route(state, req, info, user)? {
        return Ok(reply);
    }
    let kind = state
        .kinds
        .by_resource(&info.group, &info.version, &info.resource)
        .ok_or_else(ApiError::not_found_generic)?;
    let url_name = info.parts.get(1).cloned().unwrap_or_default();
    let verb = info.verb.as_str();

    let namespace = if kind.namespaced {
        let spans_namespaces =
            matches!(verb, "list" | "watch") || (kind.custom && verb == "deletecollection");
        if info.namespace.is_empty() && !spans_namespaces {
            // Only collections may span namespaces. Custom resources reach
            // the generic store, which wants a namespace; built-ins have no
            // such route at all.
            return Err(if kind.custom {
                ApiError::bad_request("Namespace parameter required.")
            } else if url_name.is_empty() {
                ApiError::generic(405, "405: Method Not Allowed")
            } else {
                ApiError::not_found_generic()
            });
        }
        info.namespace.clone()
    } else {
        // `/api/v1/namespaces/x` names namespace x; anything else that puts
        // a namespace in front of a cluster-scoped resource is no route.
        if !info.namespace.is_empty() && info.namespace != url_name {
            return Err(ApiError::not_found_generic());
        }
        String::new()
    };
    let target = Target {
        kind,
        namespace,
        name: url_name,
    };

    if !info.subresource.is_empty() {
        if info.parts.len() > 3 || !kind.subresources().contains(&info.subresource.as_str()) {
            return Err(if kind.custom {
                target.not_found()
            } else {
                ApiError::not_found_generic()
            });
        }
        return match verb {
            "get" => get(state, req, &target),
            "patch" => patch::patch(state, req, &target, true),
            "update" => write::update(state, req, &target, true),
            _ => Err(ApiError::method_not_supported(
                kind.group,
                kind.plural,
                verb,
            )),
        };
    }
    if info.parts.len() > 2 {
        return Err(ApiError::not_found_generic());
    }
    match verb {
        "get" => get(state, req, &target),
        "list" => list::list(state, req, &target),
        "watch" => watch::serve(state, req, kind, &target.namespace, &target.name),
        "create" if target.name.is_empty() => write::create(state, req, &target),
        "create" => Err(ApiError::generic(405, "405: Method Not Allowed")),
        "update" => write::update(state, req, &target, false),
        "patch" => patch::patch(state, req, &target, false),
        "delete" => delete::delete(state, req, &target),
        "deletecollection" => delete::delete_collection(state, req, &target),
        _ => Err(ApiError::method_not_supported(
            kind.group,
            kind.plural,
            verb,
        )),
    }
}

pub(crate) fn not_acceptable() -> ApiError {
    ApiError::not_acceptable(&["application/json"])
}

/// `metadata` only, as PartialObjectMetadata.
pub(crate) fn partial(obj: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": obj.get("metadata").cloned().unwrap_or_else(|| json!({})),
    })
}

pub(crate) fn render_one(
    req: &Request,
    kind: &KindInfo,
    obj: &Value,
    status: u16,
) -> ApiResult<Reply> {
    let output =
        negotiate::choose_output(req.header("accept"), false).ok_or_else(not_acceptable)?;
    Ok(match output {
        Output::Json | Output::PartialObjectMetadataList => Reply::json(status, obj),
        Output::PartialObjectMetadata => Reply::json(status, &partial(obj)),
        Output::Table => Reply::json(
            status,
            &table::render(
                kind,
                std::slice::from_ref(obj),
                req.query("includeObject"),
                None,
            )?,
        ),
    })
}

fn get(state: &State, req: &Request, t: &Target) -> ApiResult<Reply> {
    // Negotiation comes first in the apiserver, before storage is read.
    negotiate::choose_output(req.header("accept"), false).ok_or_else(not_acceptable)?;
    let obj = lock(&state.store).get(&t.key()).cloned();
    let obj = obj.ok_or_else(|| t.not_found())?;
    render_one(req, t.kind, &obj, 200)
}

/// Parses `dryRun`; only `All` exists.
pub(crate) fn dry_run(req: &Request, options_kind: &str) -> ApiResult<bool> {
    let vals = req.query_all("dryRun");
    if vals.is_empty() {
        return Ok(false);
    }
    if vals.iter().all(|v| *v == "All") {
        return Ok(true);
    }
    let rendered = format!(
        "[]string{{{}}}",
        vals.iter()
            .map(|v| go_quote(v))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Err(ApiError::invalid(
        "meta.k8s.io",
        options_kind,
        "",
        &[FieldError {
            kind: FieldErrorKind::NotSupported,
            field: "dryRun".into(),
            value: Some(rendered),
            detail: "supported values: \"All\"".into(),
        }],
    ))
}

/// `fieldValidation`: "" behaves as Warn since Kubernetes 1.27.
pub(crate) fn field_validation(req: &Request, options_kind: &str) -> ApiResult<String> {
    let v = req.query("fieldValidation").unwrap_or("");
    match v {
        "" => Ok("Warn".into()),
        "Ignore" | "Warn" | "Strict" => Ok(v.to_string()),
        other => Err(ApiError::invalid(
            "meta.k8s.io",
            options_kind,
            "",
            &[FieldError::invalid(
                "fieldValidation",
                other,
                "fieldValidation must be one of \"Ignore\", \"Warn\", or \"Strict\"",
            )
            .with_kind(FieldErrorKind::NotSupported)],
        )),
    }
}

/// Decodes a JSON request body (delete options).
pub(crate) fn body_json(req: &Request) -> ApiResult<Value> {
    let ct = negotiate::content_type(req.header("content-type"));
    if ct != "application/json" {
        return Err(ApiError::unsupported_media_type(&["application/json"]));
    }
    serde_json::from_slice(&req.body).map_err(|e| ApiError::bad_request(format!("json: {e}")))
}

pub(crate) fn invalid_for(kind: &KindInfo, name: &str, errs: &[FieldError]) -> ApiError {
    ApiError::invalid(kind.group, kind.kind, name, errs)
}
