//! Object metadata rules shared by seeding and by the write handlers: what
//! the apiserver fills in on create, what it keeps on update, and what its
//! `ValidateObjectMeta` rejects.

use std::collections::hash_map::RandomState;
use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Map, Value};

use crate::kinds::KindInfo;
use crate::status::{FieldError, FieldErrorKind};
use crate::timefmt;
use crate::validate;

/// Annotations may add up to this many bytes (keys + values) per object.
const TOTAL_ANNOTATION_SIZE_LIMIT: usize = 256 * 1024;

pub(crate) fn meta(obj: &Value) -> Option<&Map<String, Value>> {
    obj.get("metadata").and_then(Value::as_object)
}

pub(crate) fn meta_mut(obj: &mut Value) -> Option<&mut Map<String, Value>> {
    obj.get_mut("metadata").and_then(Value::as_object_mut)
}

pub(crate) fn meta_str<'a>(obj: &'a Value, field: &str) -> &'a str {
    meta(obj)
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
        .unwrap_or("")
}

pub(crate) fn str_field<'a>(obj: &'a Value, field: &str) -> &'a str {
    obj.get(field).and_then(Value::as_str).unwrap_or("")
}

/// The labels as a string map; malformed entries are skipped (they cannot be
/// stored, validation refuses them).
pub(crate) fn labels(obj: &Value) -> BTreeMap<String, String> {
    meta(obj)
        .and_then(|m| m.get("labels"))
        .and_then(Value::as_object)
        .map(|l| {
            l.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// A random version-4 UUID, as the apiserver assigns to `metadata.uid`.
pub(crate) fn new_uid() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // RandomState is seeded from the OS per process and perturbed per
    // instance, which is plenty for identifiers that only need to differ.
    let mut bytes = [0u8; 16];
    for (i, chunk) in bytes.chunks_mut(8).enumerate() {
        let mut h = RandomState::new().build_hasher();
        h.write_u64(n);
        h.write_usize(i);
        h.write_i64(timefmt::now_unix());
        chunk.copy_from_slice(&h.finish().to_le_bytes());
    }
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// `generateName` suffix: 5 characters from the apiserver's alphabet.
pub(crate) fn generate_name_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut h = RandomState::new().build_hasher();
    h.write_i64(timefmt::now_unix());
    let mut x = h.finish();
    (0..5)
        .map(|_| {
            let c = ALPHABET[(x % ALPHABET.len() as u64) as usize] as char;
            x /= ALPHABET.len() as u64;
            c
        })
        .collect()
}

/// Fills in what the apiserver sets when an object is first stored: uid,
/// creationTimestamp, generation for custom resources, and the Namespace
/// defaults. `resourceVersion` is left to the store.
pub(crate) fn fill_new(kind: &KindInfo, obj: &mut Value) {
    let Some(obj_map) = obj.as_object_mut() else {
        return;
    };
    obj_map.insert("apiVersion".into(), Value::String(kind.api_version()));
    obj_map.insert("kind".into(), Value::String(kind.kind.to_string()));
    let meta = obj_map
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    let Some(meta) = meta.as_object_mut() else {
        return;
    };
    if meta
        .get("uid")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        meta.insert("uid".into(), Value::String(new_uid()));
    }
    if meta
        .get("creationTimestamp")
        .and_then(Value::as_str)
        .is_none()
    {
        meta.insert(
            "creationTimestamp".into(),
            Value::String(timefmt::now_rfc3339()),
        );
    }
    if kind.custom && meta.get("generation").and_then(Value::as_i64).is_none() {
        meta.insert("generation".into(), Value::from(1));
    }
    if kind.plural == "namespaces" && kind.group.is_empty() {
        let name = meta
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let labels = meta
            .entry("labels")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Some(l) = labels.as_object_mut() {
            l.insert("kubernetes.io/metadata.name".into(), Value::String(name));
        }
        let spec = obj_map
            .entry("spec")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Some(s) = spec.as_object_mut() {
            s.entry("finalizers")
                .or_insert_with(|| serde_json::json!(["kubernetes"]));
        }
        let status = obj_map
            .entry("status")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Some(s) = status.as_object_mut() {
            s.entry("phase")
                .or_insert_with(|| Value::String("Active".into()));
        }
    }
}

/// What decoding a built-in kind does before storage: a Secret's write-only
/// `stringData` is folded into base64 `data`, and its `type` defaults to
/// `Opaque` (`SetDefaults_Secret`).
pub(crate) fn builtin_defaults(kind: &KindInfo, obj: &mut Value) {
    if !(kind.group.is_empty() && kind.kind == "Secret") {
        return;
    }
    let Some(map) = obj.as_object_mut() else {
        return;
    };
    if let Some(Value::Object(sd)) = map.remove("stringData") {
        let data = map
            .entry("data")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Some(d) = data.as_object_mut() {
            for (k, v) in sd {
                if let Some(s) = v.as_str() {
                    d.insert(k, Value::String(crate::base64::encode(s.as_bytes())));
                }
            }
        }
    }
    if map
        .get("type")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        map.insert("type".into(), Value::String("Opaque".into()));
    }
}

/// `ValidateSecret` for the types that need keys, and on an update `ValidateSecretUpdate`'s
/// immutable `type`. Run after the defaults, as the apiserver validates the decoded object
/// (an update that leaves `type` out asks for `Opaque`).
pub(crate) fn secret_errors(kind: &KindInfo, new: &Value, old: Option<&Value>) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if !(kind.group.is_empty() && kind.kind == "Secret") {
        return errs;
    }
    let new_type = str_field(new, "type");
    if let Some(old) = old {
        if str_field(old, "type") != new_type {
            errs.push(FieldError::invalid("type", new_type, "field is immutable"));
        }
    }
    if new_type == "kubernetes.io/tls" {
        let data = new.get("data").and_then(Value::as_object);
        for key in ["tls.crt", "tls.key"] {
            if !data.is_some_and(|d| d.contains_key(key)) {
                errs.push(FieldError::required(&format!("data[{key}]"), ""));
            }
        }
    }
    errs
}

fn string_map_errors(meta: &Map<String, Value>, field: &str, errs: &mut Vec<FieldError>) {
    let path = format!("metadata.{field}");
    match meta.get(field) {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            let mut total = 0;
            for (k, v) in m {
                let Some(v) = v.as_str() else {
                    errs.push(FieldError::invalid(
                        &format!("{path}.{k}"),
                        &v.to_string(),
                        "must be a string",
                    ));
                    continue;
                };
                total += k.len() + v.len();
                let key_errs = if field == "annotations" {
                    validate::qualified_name(&k.to_lowercase())
                } else {
                    validate::qualified_name(k)
                };
                if !key_errs.is_empty() {
                    errs.push(FieldError::invalid(&path, k, &key_errs.join("; ")));
                }
                if field == "labels" {
                    let val_errs = validate::label_value(v);
                    if !val_errs.is_empty() {
                        errs.push(FieldError::invalid(&path, v, &val_errs.join("; ")));
                    }
                }
            }
            if field == "annotations" && total > TOTAL_ANNOTATION_SIZE_LIMIT {
                errs.push(FieldError {
                    kind: FieldErrorKind::TooLong,
                    field: path,
                    value: None,
                    detail: format!("must have at most {TOTAL_ANNOTATION_SIZE_LIMIT} bytes"),
                });
            }
        }
        Some(other) => errs.push(FieldError::invalid(
            &path,
            &other.to_string(),
            "must be a map of string to string",
        )),
    }
}

/// `ValidateObjectMeta` plus the type checks that decoding into `ObjectMeta`
/// would do. `check_name` is false on updates, where the name was compared
/// against the URL already.
pub(crate) fn validate_meta(kind: &KindInfo, obj: &Value, check_name: bool) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let Some(meta) = meta(obj) else {
        errs.push(FieldError::required("metadata", ""));
        return errs;
    };
    if check_name {
        let name = meta.get("name").and_then(Value::as_str).unwrap_or("");
        if name.is_empty() {
            errs.push(FieldError::required(
                "metadata.name",
                "name or generateName is required",
            ));
        } else {
            let name_errs = if kind.plural == "namespaces" && kind.group.is_empty() {
                validate::dns1123_label(name)
            } else {
                validate::dns1123_subdomain(name)
            };
            for e in name_errs {
                errs.push(FieldError::invalid("metadata.name", name, &e));
            }
        }
    }
    for field in [
        "name",
        "namespace",
        "generateName",
        "uid",
        "resourceVersion",
    ] {
        if let Some(v) = meta.get(field) {
            if !v.is_string() && !v.is_null() {
                errs.push(FieldError::invalid(
                    &format!("metadata.{field}"),
                    &v.to_string(),
                    "must be a string",
                ));
            }
        }
    }
    string_map_errors(meta, "labels", &mut errs);
    string_map_errors(meta, "annotations", &mut errs);
    if let Some(f) = meta.get("finalizers") {
        match f {
            Value::Null => {}
            Value::Array(items) => {
                for (i, it) in items.iter().enumerate() {
                    match it.as_str() {
                        Some(s) => {
                            let e = validate::qualified_name(s);
                            if !e.is_empty() {
                                errs.push(FieldError::invalid(
                                    &format!("metadata.finalizers[{i}]"),
                                    s,
                                    &e.join("; "),
                                ));
                            }
                        }
                        None => errs.push(FieldError::invalid(
                            &format!("metadata.finalizers[{i}]"),
                            &it.to_string(),
                            "must be a string",
                        )),
                    }
                }
            }
            other => errs.push(FieldError::invalid(
                "metadata.finalizers",
                &other.to_string(),
                "must be a list of strings",
            )),
        }
    }
    errs
}

/// The custom-resource `ValidateTypeMeta` check: apiVersion and kind must be
/// the served ones.
pub(crate) fn validate_type_meta(kind: &KindInfo, obj: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let got_kind = str_field(obj, "kind");
    if got_kind != kind.kind {
        errs.push(FieldError::invalid(
            "kind",
            got_kind,
            &format!("must be {}", kind.kind),
        ));
    }
    let got_av = str_field(obj, "apiVersion");
    if got_av != kind.api_version() {
        errs.push(FieldError::invalid(
            "apiVersion",
            got_av,
            &format!("must be {}", kind.api_version()),
        ));
    }
    errs
}

/// Everything except metadata and status: a change here bumps `generation`.
pub(crate) fn spec_changed(old: &Value, new: &Value) -> bool {
    let strip = |v: &Value| -> Value {
        let mut v = v.clone();
        if let Some(m) = v.as_object_mut() {
            m.remove("metadata");
            m.remove("status");
        }
        v
    };
    strip(old) != strip(new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_look_like_uuids_and_differ() {
        let a = new_uid();
        let b = new_uid();
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
    }
}
