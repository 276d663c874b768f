//! The self-review APIs: SelfSubjectAccessReview (`kubectl auth can-i`) and
//! SelfSubjectReview (`kubectl auth whoami`), answered from the same RBAC
//! table that guards every other request.

use serde_json::{json, Value};

use crate::api::{Reply, Request};
use crate::rbac::Attributes;
use crate::requestinfo::RequestInfo;
use crate::state::State;
use crate::status::{ApiError, ApiResult, FieldError};
use crate::{negotiate, protobuf};

fn str_at<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

/// Handles the review resources; `Ok(None)` for anything else.
pub(crate) fn route(
    state: &State,
    req: &Request,
    info: &RequestInfo,
    user: &str,
) -> ApiResult<Option<Reply>> {
    let which = match (
        info.group.as_str(),
        info.version.as_str(),
        info.resource.as_str(),
    ) {
        ("authorization.k8s.io", "v1", "selfsubjectaccessreviews") => "ssar",
        ("authentication.k8s.io", "v1", "selfsubjectreviews") => "ssr",
        _ => return Ok(None),
    };
    if !info.namespace.is_empty() || info.parts.len() > 1 {
        return Err(ApiError::not_found_generic());
    }
    if info.verb != "create" {
        return Err(ApiError::generic(405, "405: Method Not Allowed"));
    }
    if !negotiate::accepts_plain_json(req.header("accept")) {
        return Err(ApiError::not_acceptable(&["application/json"]));
    }
    let (api_version, kind) = if which == "ssar" {
        ("authorization.k8s.io/v1", "SelfSubjectAccessReview")
    } else {
        ("authentication.k8s.io/v1", "SelfSubjectReview")
    };
    // kubectl's typed clients send built-in kinds as protobuf.
    let body: Value = match negotiate::content_type(req.header("content-type")).as_str() {
        "application/json" => serde_json::from_slice(&req.body)
            .map_err(|e| ApiError::bad_request(format!("json: {e}")))?,
        "application/vnd.kubernetes.protobuf" => {
            protobuf::decode_review(&req.body, api_version, kind).map_err(ApiError::bad_request)?
        }
        _ => {
            return Err(ApiError::unsupported_media_type(&[
                "application/json",
                "application/vnd.kubernetes.protobuf",
            ]))
        }
    };
    if !body.is_object() {
        return Err(ApiError::bad_request(
            "the object provided is unrecognized (must be of type map)",
        ));
    }
    Ok(Some(if which == "ssar" {
        self_subject_access_review(state, body, user)?
    } else {
        self_subject_review(user)
    }))
}

fn self_subject_access_review(state: &State, mut body: Value, user: &str) -> ApiResult<Reply> {
    let spec = body.get("spec").cloned().unwrap_or(Value::Null);
    let ra = spec.get("resourceAttributes").filter(|v| !v.is_null());
    let nra = spec.get("nonResourceAttributes").filter(|v| !v.is_null());
    let (attrs_owned, path);
    match (ra, nra) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "authorization.k8s.io",
                "SelfSubjectAccessReview",
                "",
                &[FieldError::invalid(
                    "spec.nonResourceAttributes",
                    "",
                    "cannot be specified in combination with resourceAttributes",
                )],
            ))
        }
        (None, None) => {
            return Err(ApiError::invalid(
                "authorization.k8s.io",
                "SelfSubjectAccessReview",
                "",
                &[FieldError::invalid(
                    "spec.resourceAttributes",
                    "null",
                    "exactly one of nonResourceAttributes or resourceAttributes must be specified",
                )],
            ))
        }
        (Some(r), None) => {
            attrs_owned = (
                str_at(r, "verb").to_string(),
                str_at(r, "group").to_string(),
                str_at(r, "resource").to_string(),
                str_at(r, "subresource").to_string(),
                str_at(r, "namespace").to_string(),
                str_at(r, "name").to_string(),
                true,
            );
            path = String::new();
        }
        (None, Some(n)) => {
            attrs_owned = (
                str_at(n, "verb").to_string(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                false,
            );
            path = str_at(n, "path").to_string();
        }
    }
    let (verb, group, resource, subresource, namespace, name, is_resource) = &attrs_owned;
    let decision = state.authz.authorize(&Attributes {
        user,
        verb,
        is_resource_request: *is_resource,
        group,
        resource,
        subresource,
        namespace,
        name,
        path: &path,
    });
    let mut status = json!({"allowed": decision.allowed});
    if !decision.reason.is_empty() {
        status["reason"] = json!(decision.reason);
    }
    if let Some(m) = body.as_object_mut() {
        m.insert("kind".into(), json!("SelfSubjectAccessReview"));
        m.insert("apiVersion".into(), json!("authorization.k8s.io/v1"));
        m.insert("metadata".into(), json!({"creationTimestamp": null}));
        m.insert("status".into(), status);
    }
    Ok(Reply::json(201, &body))
}

/// The groups the apiserver adds for a user name.
fn groups_for(user: &str) -> Vec<String> {
    let mut groups = Vec::new();
    if let Some(rest) = user.strip_prefix("system:serviceaccount:") {
        if let Some((ns, _)) = rest.split_once(':') {
            groups.push("system:serviceaccounts".to_string());
            groups.push(format!("system:serviceaccounts:{ns}"));
        }
    }
    groups.push("system:authenticated".to_string());
    groups
}

fn self_subject_review(user: &str) -> Reply {
    Reply::json(
        201,
        &json!({
            "kind": "SelfSubjectReview",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"creationTimestamp": null},
            "status": {"userInfo": {"username": user, "groups": groups_for(user)}},
        }),
    )
}
