//! Server-side printing (`Accept: application/json;as=Table;g=meta.k8s.io;v=v1`),
//! which `kubectl get` asks for. Columns follow the Flux CRDs'
//! additionalPrinterColumns and the built-in printers closely enough for a
//! person reading `kubectl get` output.

use serde_json::{json, Map, Value};

use crate::kinds::KindInfo;
use crate::status::{go_quote, ApiError, ApiResult};
use crate::timefmt;

#[derive(Clone, Copy)]
enum Source {
    Name,
    Age,
    Path(&'static [&'static str]),
    ReadyStatus,
    ReadyMessage,
    DataCount,
}

struct Column {
    name: &'static str,
    type_: &'static str,
    format: &'static str,
    source: Source,
}

const NAME_DESC: &str = "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names";
const AGE_DESC: &str = "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata";

const fn col(name: &'static str, type_: &'static str, source: Source) -> Column {
    Column {
        name,
        type_,
        format: "",
        source,
    }
}

fn columns(kind: &KindInfo) -> Vec<Column> {
    let name = Column {
        name: "Name",
        type_: "string",
        format: "name",
        source: Source::Name,
    };
    let age = col("Age", "date", Source::Age);
    let ready = col("Ready", "string", Source::ReadyStatus);
    let status = col("Status", "string", Source::ReadyMessage);
    let mut cols = vec![name];
    match (kind.group, kind.kind) {
        ("", "Secret") => {
            cols.push(col("Type", "string", Source::Path(&["type"])));
            cols.push(col("Data", "string", Source::DataCount));
            cols.push(age);
        }
        ("", "ConfigMap") => {
            cols.push(col("Data", "string", Source::DataCount));
            cols.push(age);
        }
        // `kubectl get lease`: NAME, HOLDER, AGE, as the real printer does.
        ("coordination.k8s.io", "Lease") => {
            cols.push(col(
                "Holder",
                "string",
                Source::Path(&["spec", "holderIdentity"]),
            ));
            cols.push(age);
        }
        ("", "Namespace") => {
            cols.push(col("Status", "string", Source::Path(&["status", "phase"])));
            cols.push(age);
        }
        (_, "GitRepository" | "HelmRepository") => {
            cols.push(col("URL", "string", Source::Path(&["spec", "url"])));
            cols.extend([age, ready, status]);
        }
        (_, "OCIRepository") => {
            cols.push(col("URL", "string", Source::Path(&["spec", "url"])));
            cols.extend([ready, status, age]);
        }
        (_, "Bucket") => {
            cols.push(col(
                "Endpoint",
                "string",
                Source::Path(&["spec", "endpoint"]),
            ));
            cols.extend([age, ready, status]);
        }
        (_, "HelmChart") => {
            cols.push(col("Chart", "string", Source::Path(&["spec", "chart"])));
            cols.push(col("Version", "string", Source::Path(&["spec", "version"])));
            cols.push(col(
                "Source Kind",
                "string",
                Source::Path(&["spec", "sourceRef", "kind"]),
            ));
            cols.push(col(
                "Source Name",
                "string",
                Source::Path(&["spec", "sourceRef", "name"]),
            ));
            cols.extend([age, ready, status]);
        }
        (_, "ImageRepository") => {
            cols.push(col("Image", "string", Source::Path(&["spec", "image"])));
            cols.extend([ready, status, age]);
        }
        _ => cols.extend([age, ready, status]),
    }
    cols
}

fn ready_condition(obj: &Value) -> Option<&Value> {
    obj.get("status")?
        .get("conditions")?
        .as_array()?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"))
}

fn cell(obj: &Value, source: Source, now: i64) -> Value {
    match source {
        Source::Name => obj
            .get("metadata")
            .and_then(|m| m.get("name"))
            .cloned()
            .unwrap_or(Value::Null),
        Source::Age => obj
            .get("metadata")
            .and_then(|m| m.get("creationTimestamp"))
            .and_then(Value::as_str)
            .map(|ts| match timefmt::parse_rfc3339(ts) {
                Some(t) => json!(timefmt::human_duration(now - t)),
                None => json!("<invalid>"),
            })
            .unwrap_or_else(|| json!("<unknown>")),
        Source::Path(path) => {
            let mut cur = obj;
            for p in path {
                match cur.get(*p) {
                    Some(v) => cur = v,
                    None => return Value::Null,
                }
            }
            cur.clone()
        }
        Source::ReadyStatus => ready_condition(obj)
            .and_then(|c| c.get("status").cloned())
            .unwrap_or(Value::Null),
        Source::ReadyMessage => ready_condition(obj)
            .and_then(|c| c.get("message").cloned())
            .unwrap_or(Value::Null),
        Source::DataCount => {
            let n = ["data", "binaryData"]
                .iter()
                .filter_map(|f| obj.get(*f).and_then(Value::as_object))
                .map(Map::len)
                .sum::<usize>();
            json!(n)
        }
    }
}

/// A `meta.k8s.io/v1` Table of `items`. `list_meta` is the list's metadata
/// (None for a single object).
pub(crate) fn render(
    kind: &KindInfo,
    items: &[Value],
    include_object: Option<&str>,
    list_meta: Option<Map<String, Value>>,
) -> ApiResult<Value> {
    let include = include_object.unwrap_or("Metadata");
    if !matches!(include, "" | "None" | "Metadata" | "Object") {
        return Err(ApiError {
            code: 406,
            reason: "NotAcceptable".into(),
            message: format!("unrecognized includeObject value: {}", go_quote(include)),
            details: None,
            retry_after: None,
        });
    }
    let cols = columns(kind);
    let now = timefmt::now_unix();
    let defs: Vec<Value> = cols
        .iter()
        .map(|c| {
            let description = match c.source {
                Source::Name => NAME_DESC,
                Source::Age => AGE_DESC,
                _ => "",
            };
            json!({
                "name": c.name,
                "type": c.type_,
                "format": c.format,
                "description": description,
                "priority": 0,
            })
        })
        .collect();
    let rows: Vec<Value> = items
        .iter()
        .map(|obj| {
            let cells: Vec<Value> = cols.iter().map(|c| cell(obj, c.source, now)).collect();
            let mut row = json!({"cells": cells});
            match include {
                "None" => {}
                "Object" => row["object"] = obj.clone(),
                _ => {
                    row["object"] = json!({
                        "kind": "PartialObjectMetadata",
                        "apiVersion": "meta.k8s.io/v1",
                        "metadata": obj.get("metadata").cloned().unwrap_or_else(|| json!({})),
                    })
                }
            }
            row
        })
        .collect();
    let metadata = match list_meta {
        Some(m) => Value::Object(m),
        None => {
            let rv = items
                .first()
                .and_then(|o| o.get("metadata"))
                .and_then(|m| m.get("resourceVersion"))
                .cloned()
                .unwrap_or(json!(""));
            json!({"resourceVersion": rv})
        }
    };
    Ok(json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": defs,
        "rows": rows,
    }))
}
