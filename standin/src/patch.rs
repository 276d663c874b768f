//! PATCH: content-type dispatch, JSON merge patch and JSON patch.

use serde_json::Value;

use crate::api::{Reply, Request};
use crate::negotiate;
use crate::resources::{dry_run, field_validation, not_acceptable, render_one, Target};
use crate::state::{lock, State};
use crate::status::{ApiError, ApiResult, FieldError, FieldErrorKind};
use crate::write::apply_update;

const CUSTOM_PATCH_TYPES: &[&str] = &[
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/apply-patch+yaml",
];
const BUILTIN_PATCH_TYPES: &[&str] = &[
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
    "application/apply-patch+yaml",
];

/// PATCH. Merge patch is RFC 7386 and JSON patch RFC 6902, applied to the
/// stored JSON. Strategic merge patch exists only for built-in kinds and is
/// applied as a merge patch (equivalent for Secret/ConfigMap/Namespace
/// metadata and maps). Server-side apply (`application/apply-patch+yaml`) is
/// not implemented: it is answered with 415 like an unknown patch type.
/// A JSON patch whose operation fails (`test` mismatch, missing path) is 422
/// Invalid, as the apiserver answers.
pub(crate) fn patch(
    state: &State,
    req: &Request,
    t: &Target,
    status_sub: bool,
) -> ApiResult<Reply> {
    let kind = t.kind;
    // Content type is checked before anything else, as in PatchResource.
    let raw_ct = req.header("content-type").unwrap_or("");
    let ct = raw_ct.split(';').next().unwrap_or("").trim();
    let accepted = if kind.custom {
        CUSTOM_PATCH_TYPES
    } else {
        BUILTIN_PATCH_TYPES
    };
    if !accepted.contains(&ct) || ct == "application/apply-patch+yaml" {
        return Err(ApiError::unsupported_media_type(accepted));
    }
    negotiate::choose_output(req.header("accept"), false).ok_or_else(not_acceptable)?;
    let dry = dry_run(req, "PatchOptions")?;
    let validation = field_validation(req, "PatchOptions")?;
    if req.query("force").is_some() {
        return Err(ApiError::invalid(
            "meta.k8s.io",
            "PatchOptions",
            "",
            &[FieldError {
                kind: FieldErrorKind::Forbidden,
                field: "force".into(),
                value: None,
                detail: "may not be specified for non-apply patch".into(),
            }],
        ));
    }
    let mut store = lock(&state.store);
    let old = store.get(&t.key()).cloned().ok_or_else(|| t.not_found())?;
    let mut doc = old.clone();
    if ct == "application/json-patch+json" {
        let ops: Value = serde_json::from_slice(&req.body).map_err(|e| {
            if validation == "Ignore" {
                ApiError::bad_request(e.to_string())
            } else {
                ApiError::bad_request(format!("error decoding patch: {e}"))
            }
        })?;
        let ops: json_patch::Patch =
            serde_json::from_value(ops).map_err(|e| ApiError::bad_request(e.to_string()))?;
        if ops.0.len() > 10_000 {
            return Err(ApiError::entity_too_large(&format!(
                "The allowed maximum operations in a JSON patch is 10000, got {}",
                ops.0.len()
            )));
        }
        // patch_unsafe on a scratch copy: on failure the copy is dropped.
        json_patch::patch_unsafe(&mut doc, &ops)
            .map_err(|e| ApiError::generic(422, &e.to_string()))?;
    } else {
        let p: Value = match serde_json::from_slice(&req.body) {
            Ok(p) => p,
            Err(e) if validation != "Ignore" => {
                return Err(ApiError::bad_request(format!("error decoding patch: {e}")))
            }
            Err(_) => return Err(unknown_error(500, "Invalid JSON Patch")),
        };
        match &p {
            Value::Object(_) => json_patch::merge(&mut doc, &p),
            Value::Null => return Err(unknown_error(500, "Invalid JSON Patch")),
            other if validation != "Ignore" => {
                return Err(ApiError::bad_request(format!(
                    "error decoding patch: json: cannot unmarshal {} into Go value of type map[string]interface {{}}",
                    json_type_name(other)
                )))
            }
            _ => return Err(unknown_error(500, "Invalid JSON Patch")),
        }
    }
    let stored = apply_update(&mut store, t, &old, doc, status_sub, dry)?;
    drop(store);
    render_one(req, kind, &stored, 200)
}

fn json_type_name(v: &Value) -> &'static str {
    match v {
        Value::Array(_) => "array",
        Value::String(_) => "string",
        Value::Number(_) => "number",
        Value::Bool(_) => "bool",
        _ => "object",
    }
}

/// A plain Go error that reached the apiserver's error writer: a Status with
/// no reason.
fn unknown_error(code: u16, message: &str) -> ApiError {
    ApiError {
        code,
        reason: String::new(),
        message: message.to_string(),
        details: None,
        retry_after: None,
    }
}
