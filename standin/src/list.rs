//! LIST: ListOptions validation, label/field selectors as applied to
//! objects, `limit`/`continue` paging, and the list representations.

use serde_json::{json, Map, Value};

use crate::api::{Reply, Request};
use crate::kinds::KindInfo;
use crate::negotiate::{self, Output};
use crate::objects::{self, meta_str};
use crate::requestinfo::parse_go_bool;
use crate::resources::{not_acceptable, partial, Target};
use crate::selector::{FieldSelector, LabelSelector};
use crate::state::{lock, State};
use crate::status::{go_quote, ApiError, ApiResult, FieldError, FieldErrorKind};
use crate::store::ObjKey;
use crate::table;

/// `metainternalversion.ListOptions` validation, shared with watch.
pub(crate) fn validate_list_options(req: &Request, watch: bool) -> ApiResult<()> {
    let rv = req.query("resourceVersion").unwrap_or("");
    let rvm = req.query("resourceVersionMatch").unwrap_or("");
    let cont = req.query("continue").unwrap_or("");
    let sie = req.query("sendInitialEvents");
    if let Some(v) = sie {
        if parse_go_bool(v).is_none() {
            return Err(ApiError::bad_request(format!(
                "strconv.ParseBool: parsing {}: invalid syntax",
                go_quote(v)
            )));
        }
    }
    let forbidden = |field: &str, detail: &str| FieldError {
        kind: FieldErrorKind::Forbidden,
        field: field.to_string(),
        value: None,
        detail: detail.to_string(),
    };
    let mut errs = Vec::new();
    if watch {
        if sie.is_some() && rvm != "NotOlderThan" {
            errs.push(forbidden(
                "resourceVersionMatch",
                "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
            ));
        }
        if !rvm.is_empty() {
            if sie.is_none() {
                errs.push(forbidden(
                    "resourceVersionMatch",
                    "resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
                ));
            }
            if rvm != "NotOlderThan" {
                errs.push(
                    FieldError::invalid(
                        "resourceVersionMatch",
                        rvm,
                        "supported values: \"NotOlderThan\"",
                    )
                    .with_kind(FieldErrorKind::NotSupported),
                );
            }
            if !cont.is_empty() {
                errs.push(forbidden(
                    "resourceVersionMatch",
                    "resourceVersionMatch is forbidden when continue is provided",
                ));
            }
        }
    } else {
        if !rvm.is_empty() {
            if rv.is_empty() {
                errs.push(forbidden(
                    "resourceVersionMatch",
                    "resourceVersionMatch is forbidden unless resourceVersion is provided",
                ));
            }
            if !cont.is_empty() {
                errs.push(forbidden(
                    "resourceVersionMatch",
                    "resourceVersionMatch is forbidden when continue is provided",
                ));
            }
            if rvm != "Exact" && rvm != "NotOlderThan" {
                errs.push(
                    FieldError::invalid(
                        "resourceVersionMatch",
                        rvm,
                        "supported values: \"Exact\", \"NotOlderThan\", \"\"",
                    )
                    .with_kind(FieldErrorKind::NotSupported),
                );
            }
            if rvm == "Exact" && rv == "0" {
                errs.push(forbidden(
                    "resourceVersionMatch",
                    "resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"",
                ));
            }
        }
        if sie.is_some() {
            errs.push(forbidden(
                "sendInitialEvents",
                "sendInitialEvents is forbidden for list",
            ));
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid("meta.k8s.io", "ListOptions", "", &errs))
    }
}

/// Parsed selectors of a list or watch request.
pub(crate) struct Selectors {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl Selectors {
    pub fn from_request(req: &Request, kind: &KindInfo) -> ApiResult<Self> {
        let labels = LabelSelector::parse(req.query("labelSelector").unwrap_or(""))
            .map_err(ApiError::bad_request)?;
        let fields = FieldSelector::parse(req.query("fieldSelector").unwrap_or(""))
            .map_err(ApiError::bad_request)?;
        fields
            .check_fields(&selectable_fields(kind))
            .map_err(ApiError::bad_request)?;
        Ok(Selectors { labels, fields })
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.labels.matches(&objects::labels(obj))
            && self.fields.matches(&|f: &str| field_value(obj, f))
    }

    pub fn is_empty(&self) -> bool {
        self.labels.requirements.is_empty() && self.fields.terms.is_empty()
    }
}

fn selectable_fields(kind: &KindInfo) -> Vec<&'static str> {
    match (kind.group, kind.kind) {
        ("", "Secret") => vec!["metadata.name", "metadata.namespace", "type"],
        ("", "Namespace") => vec!["metadata.name", "status.phase"],
        // The apiserver's EventToSelectableFields.
        ("", "Event") => vec![
            "metadata.name",
            "metadata.namespace",
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
        _ => vec!["metadata.name", "metadata.namespace"],
    }
}

fn field_value(obj: &Value, field: &str) -> Option<String> {
    Some(match field {
        "metadata.name" => meta_str(obj, "name").to_string(),
        "metadata.namespace" => meta_str(obj, "namespace").to_string(),
        "type" => obj.get("type")?.as_str()?.to_string(),
        "status.phase" => obj.get("status")?.get("phase")?.as_str()?.to_string(),
        "source" => obj.get("source")?.get("component")?.as_str()?.to_string(),
        "reason" | "reportingComponent" => obj.get(field)?.as_str()?.to_string(),
        f if f.starts_with("involvedObject.") => obj
            .get("involvedObject")?
            .get(&f["involvedObject.".len()..])?
            .as_str()?
            .to_string(),
        _ => return None,
    })
}

/// The `continue` token: like the apiserver's, base64 JSON naming the key
/// to resume after.
fn encode_continue(rv: u64, after: &ObjKey) -> String {
    let inner = json!({
        "v": "meta.k8s.io/v1",
        "rv": rv,
        "start": format!("{}/{}\u{0}", after.namespace, after.name),
    });
    crate::base64::encode_url(inner.to_string().as_bytes())
}

fn decode_continue(token: &str) -> Result<(String, String), String> {
    let raw = crate::base64::decode(token).ok_or("illegal base64 data")?;
    let v: Value = serde_json::from_slice(&raw).map_err(|e| e.to_string())?;
    if v.get("v").and_then(Value::as_str) != Some("meta.k8s.io/v1") {
        return Err("continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)".into());
    }
    let start = v
        .get("start")
        .and_then(Value::as_str)
        .ok_or("continue key is not valid: encoded start key is empty")?;
    let start = start.trim_end_matches('\u{0}');
    let (ns, name) = start.split_once('/').unwrap_or(("", start));
    Ok((ns.to_string(), name.to_string()))
}

pub(crate) fn list(state: &State, req: &Request, t: &Target) -> ApiResult<Reply> {
    let output = negotiate::choose_output(req.header("accept"), true).ok_or_else(not_acceptable)?;
    validate_list_options(req, false)?;
    let sel = Selectors::from_request(req, t.kind)?;
    let limit = match req.query("limit") {
        None | Some("") => 0,
        Some(v) => v.parse::<i64>().map_err(|_| {
            ApiError::bad_request(format!(
                "strconv.ParseInt: parsing {}: invalid syntax",
                go_quote(v)
            ))
        })?,
    };
    let cont = req.query("continue").unwrap_or("");
    let after = if cont.is_empty() {
        None
    } else {
        if !req.query("resourceVersion").unwrap_or("").is_empty() {
            return Err(ApiError::bad_request(
                "specifying resource version is not allowed when using continue",
            ));
        }
        Some(decode_continue(cont).map_err(|e| {
            ApiError::bad_request(if e.starts_with("continue key") {
                e
            } else {
                format!("continue key is not valid: {e}")
            })
        })?)
    };

    let store = lock(&state.store);
    let rv = store.current_rv();
    let ns_filter = (!t.namespace.is_empty()).then_some(t.namespace.as_str());
    let mut matched: Vec<(ObjKey, Value)> = store
        .list(t.kind.group, t.kind.plural, ns_filter)
        .filter(|(k, _)| {
            after.as_ref().is_none_or(|(ns, name)| {
                (k.namespace.as_str(), k.name.as_str()) > (ns.as_str(), name.as_str())
            })
        })
        .filter(|(_, v)| sel.matches(v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    drop(store);

    let mut list_meta = Map::new();
    list_meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
    if limit > 0 && matched.len() as i64 > limit {
        let rest = matched.len() as i64 - limit;
        matched.truncate(limit as usize);
        if let Some((last, _)) = matched.last() {
            list_meta.insert("continue".into(), Value::String(encode_continue(rv, last)));
        }
        if sel.is_empty() {
            list_meta.insert("remainingItemCount".into(), Value::from(rest));
        }
    }
    let items: Vec<Value> = matched.into_iter().map(|(_, v)| v).collect();

    let body = match output {
        Output::Table => {
            table::render(t.kind, &items, req.query("includeObject"), Some(list_meta))?
        }
        Output::PartialObjectMetadataList => json!({
            "kind": "PartialObjectMetadataList",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": list_meta,
            "items": items.iter().map(partial).collect::<Vec<_>>(),
        }),
        Output::Json | Output::PartialObjectMetadata => {
            let items: Vec<Value> = if t.kind.custom {
                items
            } else {
                // Typed lists of built-in kinds carry no per-item TypeMeta.
                items
                    .into_iter()
                    .map(|mut v| {
                        if let Some(m) = v.as_object_mut() {
                            m.remove("apiVersion");
                            m.remove("kind");
                        }
                        v
                    })
                    .collect()
            };
            json!({
                "apiVersion": t.kind.api_version(),
                "kind": format!("{}List", t.kind.kind),
                "metadata": list_meta,
                "items": items,
            })
        }
    };
    Ok(Reply::json(200, &body))
}
