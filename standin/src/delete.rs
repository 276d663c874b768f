//! DELETE and DELETECOLLECTION: preconditions, finalizers, namespaces.

use serde_json::{json, Map, Value};

use crate::api::{Reply, Request};
use crate::kinds::KindInfo;
use crate::list::{validate_list_options, Selectors};
use crate::negotiate;
use crate::objects::{self, meta_str};
use crate::resources::{body_json, dry_run, not_acceptable, Target};
use crate::state::{lock, State};
use crate::status::{ApiError, ApiResult};
use crate::store::ObjKey;

/// Namespaces a real cluster refuses to delete.
const IMMORTAL_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public"];

fn delete_options(req: &Request) -> ApiResult<Value> {
    if req.body.is_empty() {
        return Ok(json!({}));
    }
    let v = body_json(req)?;
    if !v.is_object() {
        return Err(ApiError::bad_request(
            "the object provided is unrecognized (must be of type DeleteOptions)",
        ));
    }
    Ok(v)
}

fn check_preconditions(t: &Target, opts: &Value, obj: &Value) -> ApiResult<()> {
    let pre = opts.get("preconditions");
    if let Some(uid) = pre.and_then(|p| p.get("uid")).and_then(Value::as_str) {
        let have = meta_str(obj, "uid");
        if uid != have {
            return Err(ApiError::conflict(
                t.kind.group,
                t.kind.plural,
                &t.name,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {have}"
                ),
            ));
        }
    }
    if let Some(rv) = pre
        .and_then(|p| p.get("resourceVersion"))
        .and_then(Value::as_str)
    {
        let have = meta_str(obj, "resourceVersion");
        if rv != have {
            return Err(ApiError::conflict(
                t.kind.group,
                t.kind.plural,
                &t.name,
                &format!("Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {have}"),
            ));
        }
    }
    Ok(())
}

fn success_status(kind: &KindInfo, name: &str, uid: &str) -> Value {
    let mut details = Map::new();
    details.insert("name".into(), json!(name));
    if !kind.group.is_empty() {
        details.insert("group".into(), json!(kind.group));
    }
    details.insert("kind".into(), json!(kind.plural));
    details.insert("uid".into(), json!(uid));
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": details,
    })
}

/// DELETE. An object with finalizers gets a deletionTimestamp and stays
/// (202 with the object); otherwise it is removed and the answer is a
/// Success Status (custom resources, Secrets, ConfigMaps) or the Namespace.
/// Deleting a Namespace removes its contents at once: there is no namespace
/// controller to do it later.
pub(crate) fn delete(state: &State, req: &Request, t: &Target) -> ApiResult<Reply> {
    let kind = t.kind;
    negotiate::choose_output(req.header("accept"), false).ok_or_else(not_acceptable)?;
    let dry = dry_run(req, "DeleteOptions")?;
    let opts = delete_options(req)?;
    let is_namespace = kind.group.is_empty() && kind.plural == "namespaces";
    let mut store = lock(&state.store);
    let obj = store.get(&t.key()).cloned().ok_or_else(|| t.not_found())?;
    check_preconditions(t, &opts, &obj)?;
    if is_namespace && IMMORTAL_NAMESPACES.contains(&t.name.as_str()) {
        return Err(ApiError::forbidden(
            "",
            "namespaces",
            &t.name,
            "this namespace may not be deleted",
        ));
    }
    let has_finalizers = objects::meta(&obj)
        .and_then(|m| m.get("finalizers"))
        .and_then(Value::as_array)
        .is_some_and(|f| !f.is_empty());
    if has_finalizers && !is_namespace {
        if objects::meta(&obj).is_some_and(|m| m.get("deletionTimestamp").is_some()) || dry {
            return Ok(Reply::json(202, &obj));
        }
        let mut marked = obj;
        if let Some(m) = objects::meta_mut(&mut marked) {
            m.insert(
                "deletionTimestamp".into(),
                json!(crate::timefmt::now_rfc3339()),
            );
            m.insert("deletionGracePeriodSeconds".into(), json!(0));
        }
        let stored = store.write(t.key(), marked);
        return Ok(Reply::json(202, &stored));
    }
    if dry {
        return Ok(Reply::json(
            200,
            &success_status(kind, &t.name, meta_str(&obj, "uid")),
        ));
    }
    if is_namespace {
        for k in store.keys_in_namespace(&t.name) {
            store.remove(&k);
        }
        let mut gone = store.remove(&t.key()).unwrap_or(obj);
        if let Some(s) = gone.get_mut("status").and_then(Value::as_object_mut) {
            s.insert("phase".into(), json!("Terminating"));
        }
        return Ok(Reply::json(200, &gone));
    }
    let gone = store.remove(&t.key()).unwrap_or(obj);
    Ok(Reply::json(
        200,
        &success_status(kind, &t.name, meta_str(&gone, "uid")),
    ))
}

/// DELETE on a collection: deletes what the selectors match and answers
/// with the list of deleted objects, like the generic registry.
pub(crate) fn delete_collection(state: &State, req: &Request, t: &Target) -> ApiResult<Reply> {
    let kind = t.kind;
    negotiate::choose_output(req.header("accept"), true).ok_or_else(not_acceptable)?;
    let dry = dry_run(req, "DeleteOptions")?;
    delete_options(req)?;
    validate_list_options(req, false)?;
    let sel = Selectors::from_request(req, kind)?;
    let mut store = lock(&state.store);
    let ns_filter = (!t.namespace.is_empty()).then_some(t.namespace.as_str());
    let keys: Vec<ObjKey> = store
        .list(kind.group, kind.plural, ns_filter)
        .filter(|(_, v)| sel.matches(v))
        .map(|(k, _)| k.clone())
        .collect();
    let mut items = Vec::new();
    for k in keys {
        let has_finalizers = store
            .get(&k)
            .and_then(objects::meta)
            .and_then(|m| m.get("finalizers"))
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty());
        if dry {
            if let Some(v) = store.get(&k) {
                items.push(v.clone());
            }
        } else if has_finalizers {
            if let Some(mut v) = store.get(&k).cloned() {
                if let Some(m) = objects::meta_mut(&mut v) {
                    m.entry("deletionTimestamp")
                        .or_insert_with(|| json!(crate::timefmt::now_rfc3339()));
                    m.entry("deletionGracePeriodSeconds").or_insert(json!(0));
                }
                items.push(store.write(k, v));
            }
        } else if let Some(v) = store.remove(&k) {
            items.push(v);
        }
    }
    let rv = store.current_rv();
    drop(store);
    Ok(Reply::json(
        200,
        &json!({
            "apiVersion": kind.api_version(),
            "kind": format!("{}List", kind.kind),
            "metadata": {"resourceVersion": rv.to_string()},
            "items": items,
        }),
    ))
}
