//! CREATE and UPDATE (PUT), and the update path PATCH shares: what the
//! apiserver's create/update handlers, `rest.BeforeCreate/BeforeUpdate` and
//! the kind strategies do to an object before it is stored.

use serde_json::{Map, Value};

use crate::api::{Reply, Request};
use crate::kinds::KindInfo;
use crate::negotiate;
use crate::objects::{self, meta_str};
use crate::resources::{
    dry_run, field_validation, invalid_for, not_acceptable, render_one, Target, OPTIMISTIC_LOCK_MSG,
};
use crate::state::{lock, State};
use crate::status::{ApiError, ApiResult, FieldError, FieldErrorKind};
use crate::store::{ObjKey, Store};

/// Decodes an object body for create/update: JSON, or protobuf for the
/// built-in kinds (kubectl's typed clients send those as protobuf, and
/// custom resources have no protobuf form).
fn body_object(req: &Request, kind: &KindInfo) -> ApiResult<Value> {
    match negotiate::content_type(req.header("content-type")).as_str() {
        "application/json" => serde_json::from_slice(&req.body)
            .map_err(|e| ApiError::bad_request(format!("json: {e}"))),
        "application/vnd.kubernetes.protobuf" if !kind.custom => {
            crate::protobuf::decode_object(&req.body, &kind.api_version(), kind.kind)
                .map_err(ApiError::bad_request)
        }
        _ if kind.custom => Err(ApiError::unsupported_media_type(&["application/json"])),
        _ => Err(ApiError::unsupported_media_type(&[
            "application/json",
            "application/vnd.kubernetes.protobuf",
        ])),
    }
}

pub(crate) fn create(state: &State, req: &Request, t: &Target) -> ApiResult<Reply> {
    let kind = t.kind;
    negotiate::choose_output(req.header("accept"), false).ok_or_else(not_acceptable)?;
    let dry = dry_run(req, "CreateOptions")?;
    field_validation(req, "CreateOptions")?;
    let mut obj = body_object(req, kind)?;
    let Some(map) = obj.as_object_mut() else {
        return Err(ApiError::bad_request(
            "the object provided is unrecognized (must be of type map)",
        ));
    };
    // The decoder defaults apiVersion/kind from the URL when they are absent.
    let av = map
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if av.is_empty() {
        map.insert("apiVersion".into(), Value::String(kind.api_version()));
    } else if av != kind.api_version() {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({av}) does not match the expected API version ({})",
            kind.api_version()
        )));
    }
    if map
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("")
        .is_empty()
    {
        map.insert("kind".into(), Value::String(kind.kind.to_string()));
    }
    let meta = map
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    let Some(meta) = meta.as_object_mut() else {
        return Err(invalid_for(
            kind,
            "",
            &[FieldError::invalid("metadata", "", "must be an object")],
        ));
    };
    if kind.namespaced {
        let body_ns = meta.get("namespace").and_then(Value::as_str).unwrap_or("");
        if body_ns.is_empty() {
            meta.insert("namespace".into(), Value::String(t.namespace.clone()));
        } else if body_ns != t.namespace {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
    } else {
        meta.remove("namespace");
    }
    if meta
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .is_empty()
    {
        if let Some(gen) = meta.get("generateName").and_then(Value::as_str) {
            if !gen.is_empty() {
                let base: String = gen.chars().take(58).collect();
                let name = format!("{base}{}", objects::generate_name_suffix());
                meta.insert("name".into(), Value::String(name));
            }
        }
    }
    if meta
        .get("resourceVersion")
        .and_then(Value::as_str)
        .is_some_and(|s| !s.is_empty())
    {
        // etcd3 store refuses this with a plain error, which the apiserver
        // reports as a 500.
        return Err(ApiError::internal(
            "resourceVersion should not be set on objects to be created",
        ));
    }
    // Fields the server owns on create.
    for f in [
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generation",
        "selfLink",
    ] {
        meta.remove(f);
    }
    let name = meta
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();

    let mut errs = Vec::new();
    if kind.custom {
        errs.extend(objects::validate_type_meta(kind, &obj));
    } else if objects::str_field(&obj, "kind") != kind.kind {
        errs.push(FieldError::invalid(
            "kind",
            objects::str_field(&obj, "kind"),
            &format!("must be {}", kind.kind),
        ));
    }
    errs.extend(objects::validate_meta(kind, &obj, true));
    if kind.group.is_empty() && kind.kind == "Event" {
        errs.extend(event_namespace(&obj, &t.namespace));
    }
    if !errs.is_empty() {
        return Err(invalid_for(kind, &name, &errs));
    }
    if kind.custom {
        // The status subresource is enabled: create cannot set status.
        if let Some(m) = obj.as_object_mut() {
            m.remove("status");
        }
    }
    objects::builtin_defaults(kind, &mut obj);
    let errs = objects::secret_errors(kind, &obj, None);
    if !errs.is_empty() {
        return Err(invalid_for(kind, &name, &errs));
    }
    objects::fill_new(kind, &mut obj);

    let key = ObjKey::new(kind.group, kind.plural, &t.namespace, &name);
    let mut store = lock(&state.store);
    if kind.namespaced {
        let ns_key = ObjKey::new("", "namespaces", "", &t.namespace);
        if store.get(&ns_key).is_none() {
            return Err(ApiError::not_found("", "namespaces", &t.namespace));
        }
    }
    if store.get(&key).is_some() {
        return Err(ApiError::already_exists(kind.group, kind.plural, &name));
    }
    let stored = if dry { obj } else { store.write(key, obj) };
    drop(store);
    render_one(req, kind, &stored, 201)
}

/// The apiserver's legacy (core v1) Event validation: an Event lives in the namespace of the
/// object it is about.
fn event_namespace(obj: &Value, namespace: &str) -> Option<FieldError> {
    let involved = obj
        .get("involvedObject")
        .and_then(|o| o.get("namespace"))
        .and_then(Value::as_str)
        .unwrap_or("");
    (!involved.is_empty() && involved != namespace).then(|| {
        FieldError::invalid(
            "involvedObject.namespace",
            involved,
            "does not match event.namespace",
        )
    })
}

/// The shared update path (`Store.Update` + `rest.BeforeUpdate` + the
/// strategies): preconditions, immutable fields, status handling,
/// generation, validation, no-op detection, write.
/// Runs with the store locked, so a read-modify-write is never interleaved
/// with another writer (the apiserver's GuaranteedUpdate retries instead;
/// the outcome is the same).
pub(crate) fn apply_update(
    store: &mut Store,
    t: &Target,
    old: &Value,
    mut new: Value,
    status_sub: bool,
    dry: bool,
) -> ApiResult<Value> {
    let kind = t.kind;
    if !new.is_object() {
        return Err(ApiError::bad_request(
            "the object provided is unrecognized (must be of type map)",
        ));
    }
    // checkName
    let new_name = meta_str(&new, "name");
    if new_name != t.name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({new_name}) does not match the name on the URL ({})",
            t.name
        )));
    }
    if kind.namespaced {
        let new_ns = meta_str(&new, "namespace");
        if !new_ns.is_empty() && new_ns != t.namespace {
            return Err(ApiError::bad_request(format!(
                "the namespace of the object ({new_ns}) does not match the namespace on the URL ({})",
                t.namespace
            )));
        }
    }
    let Some(meta) = objects::meta_mut(&mut new) else {
        return Err(invalid_for(
            kind,
            &t.name,
            &[FieldError::required("metadata", "")],
        ));
    };
    if kind.namespaced {
        meta.insert("namespace".into(), Value::String(t.namespace.clone()));
    }

    // Optimistic concurrency.
    let old_rv = meta_str(old, "resourceVersion").to_string();
    let new_rv = match meta.get("resourceVersion") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            return Err(invalid_for(
                kind,
                &t.name,
                &[FieldError::invalid(
                    "metadata.resourceVersion",
                    &other.to_string(),
                    "must be a string",
                )],
            ))
        }
    };
    // Custom resources refuse unconditional updates; built-ins allow them.
    if new_rv.is_empty() {
        if kind.custom {
            return Err(ApiError::invalid(
                kind.group,
                kind.plural,
                &t.name,
                &[FieldError {
                    kind: FieldErrorKind::Invalid,
                    field: "metadata.resourceVersion".into(),
                    value: Some("0x0".into()),
                    detail: "must be specified for an update".into(),
                }],
            ));
        }
    } else if new_rv != old_rv {
        return Err(ApiError::conflict(
            kind.group,
            kind.plural,
            &t.name,
            OPTIMISTIC_LOCK_MSG,
        ));
    }
    meta.insert("resourceVersion".into(), Value::String(old_rv.clone()));

    // rest.BeforeUpdate: server-owned metadata survives any client edit.
    let old_meta = objects::meta(old).cloned().unwrap_or_default();
    let mut errs = Vec::new();
    match meta.get("uid").and_then(Value::as_str) {
        None | Some("") => {
            if let Some(u) = old_meta.get("uid") {
                meta.insert("uid".into(), u.clone());
            }
        }
        Some(u) if Some(u) != old_meta.get("uid").and_then(Value::as_str) => {
            errs.push(FieldError::invalid("metadata.uid", u, "field is immutable"));
        }
        Some(_) => {}
    }
    for f in [
        "creationTimestamp",
        "generation",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
    ] {
        match old_meta.get(f) {
            Some(v) => {
                meta.insert(f.into(), v.clone());
            }
            None => {
                meta.remove(f);
            }
        }
    }

    if status_sub {
        // Status updates change status and nothing else.
        let status = new.get("status").cloned();
        let mut merged = old.clone();
        if let Some(m) = merged.as_object_mut() {
            match status {
                Some(s) => {
                    m.insert("status".into(), s);
                }
                None => {
                    m.remove("status");
                }
            }
        }
        new = merged;
    } else if !kind.subresources().is_empty() {
        // The status subresource is enabled: the main resource cannot
        // change status.
        if let Some(m) = new.as_object_mut() {
            match old.get("status") {
                Some(s) => {
                    m.insert("status".into(), s.clone());
                }
                None => {
                    m.remove("status");
                }
            }
        }
    }
    if kind.custom && !status_sub && objects::spec_changed(old, &new) {
        let gen = objects::meta(old)
            .and_then(|m| m.get("generation"))
            .and_then(Value::as_i64)
            .unwrap_or(0);
        if let Some(m) = objects::meta_mut(&mut new) {
            m.insert("generation".into(), Value::from(gen + 1));
        }
    }

    if kind.custom {
        errs.extend(objects::validate_type_meta(kind, &new));
    } else {
        if objects::str_field(&new, "kind") != kind.kind {
            errs.push(FieldError::invalid(
                "kind",
                objects::str_field(&new, "kind"),
                &format!("must be {}", kind.kind),
            ));
        }
        if objects::str_field(&new, "apiVersion") != kind.api_version() {
            errs.push(FieldError::invalid(
                "apiVersion",
                objects::str_field(&new, "apiVersion"),
                &format!("must be {}", kind.api_version()),
            ));
        }
    }
    errs.extend(objects::validate_meta(kind, &new, false));
    if !errs.is_empty() {
        return Err(invalid_for(kind, &t.name, &errs));
    }
    objects::builtin_defaults(kind, &mut new);
    let errs = objects::secret_errors(kind, &new, Some(old));
    if !errs.is_empty() {
        return Err(invalid_for(kind, &t.name, &errs));
    }

    if new == *old {
        // A no-op write does not touch storage or the resourceVersion.
        return Ok(new);
    }
    if dry {
        return Ok(new);
    }
    let finished = objects::meta(&new).is_some_and(|m| {
        m.get("deletionTimestamp").is_some()
            && m.get("finalizers")
                .and_then(Value::as_array)
                .is_none_or(|f| f.is_empty())
    });
    if finished {
        // The last finalizer left an object that is being deleted: the
        // update becomes the deletion.
        if let Some(gone) = store.remove_as(&t.key(), new) {
            return Ok(gone);
        }
        return Err(t.not_found());
    }
    Ok(store.write(t.key(), new))
}

pub(crate) fn update(
    state: &State,
    req: &Request,
    t: &Target,
    status_sub: bool,
) -> ApiResult<Reply> {
    let kind = t.kind;
    negotiate::choose_output(req.header("accept"), false).ok_or_else(not_acceptable)?;
    let dry = dry_run(req, "UpdateOptions")?;
    field_validation(req, "UpdateOptions")?;
    let mut new = body_object(req, kind)?;
    if let Some(m) = new.as_object_mut() {
        let av = m
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if av.is_empty() {
            m.insert("apiVersion".into(), Value::String(kind.api_version()));
        } else if av != kind.api_version() {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({av}) does not match the expected API version ({})",
                kind.api_version()
            )));
        }
        if m.get("kind")
            .and_then(Value::as_str)
            .unwrap_or("")
            .is_empty()
        {
            m.insert("kind".into(), Value::String(kind.kind.to_string()));
        }
    }
    let mut store = lock(&state.store);
    // Neither custom resources nor these built-ins allow create-on-update.
    let old = store.get(&t.key()).cloned().ok_or_else(|| t.not_found())?;
    let stored = apply_update(&mut store, t, &old, new, status_sub, dry)?;
    drop(store);
    render_one(req, kind, &stored, 200)
}
