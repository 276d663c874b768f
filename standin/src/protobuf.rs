//! Just enough of Kubernetes' protobuf encoding to read what kubectl's typed
//! clients send that way: the `k8s\0` magic, the `runtime.Unknown` envelope,
//! the SelfSubjectAccessReview spec (`auth can-i`), and ConfigMap, Secret
//! and Namespace bodies (`create configmap|secret|namespace`). Answers are
//! always JSON, which those clients accept.

use serde_json::{json, Map, Value};

const MAGIC: &[u8] = b"k8s\x00";

enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Option<u64> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let byte = *self.b.get(self.pos)?;
            self.pos += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }

    /// The next (field number, value), `Ok(None)` at the end, `Err` on
    /// malformed input.
    fn next(&mut self) -> Result<Option<(u64, Field<'a>)>, ()> {
        if self.pos >= self.b.len() {
            return Ok(None);
        }
        let key = self.varint().ok_or(())?;
        let field = match key & 7 {
            0 => Field::Varint(self.varint().ok_or(())?),
            1 => {
                self.pos = self.pos.checked_add(8).ok_or(())?;
                Field::Fixed
            }
            2 => {
                let len = usize::try_from(self.varint().ok_or(())?).map_err(|_| ())?;
                let end = self.pos.checked_add(len).ok_or(())?;
                let s = self.b.get(self.pos..end).ok_or(())?;
                self.pos = end;
                Field::Bytes(s)
            }
            5 => {
                self.pos = self.pos.checked_add(4).ok_or(())?;
                Field::Fixed
            }
            _ => return Err(()),
        };
        if self.pos > self.b.len() {
            return Err(());
        }
        Ok(Some((key >> 3, field)))
    }
}

/// Calls `f` for every length-delimited field of a message.
fn each_bytes<'a>(msg: &'a [u8], mut f: impl FnMut(u64, &'a [u8])) -> Result<(), String> {
    let mut r = Reader { b: msg, pos: 0 };
    loop {
        match r.next() {
            Ok(None) => return Ok(()),
            Ok(Some((n, Field::Bytes(b)))) => f(n, b),
            Ok(Some(_)) => {}
            Err(()) => return Err("malformed protobuf message".into()),
        }
    }
}

fn string(b: &[u8]) -> Result<String, String> {
    String::from_utf8(b.to_vec()).map_err(|_| "invalid UTF-8 in protobuf string".to_string())
}

/// Strings of a message by field number, as JSON (omitting empty ones,
/// like Go's `omitempty`).
fn strings(msg: &[u8], names: &[(u64, &str)]) -> Result<Map<String, Value>, String> {
    let mut out = Map::new();
    let mut err = None;
    each_bytes(msg, |n, b| {
        if let Some((_, name)) = names.iter().find(|(num, _)| *num == n) {
            match string(b) {
                Ok(s) if !s.is_empty() => {
                    out.insert((*name).to_string(), Value::String(s));
                }
                Ok(_) => {}
                Err(e) => err = Some(e),
            }
        }
    })?;
    match err {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

/// Unwraps the `k8s\0` + `runtime.Unknown` envelope, checking the type, and
/// returns the encoded object.
fn envelope<'a>(body: &'a [u8], api_version: &str, kind: &str) -> Result<&'a [u8], String> {
    let envelope = body.strip_prefix(MAGIC).ok_or(
        "provided data does not appear to be a protobuf message, expected prefix [107 56 115 0]",
    )?;
    let (mut type_meta, mut raw) = (None, None);
    each_bytes(envelope, |n, b| match n {
        1 => type_meta = Some(b),
        2 => raw = Some(b),
        _ => {}
    })?;
    let tm = strings(type_meta.unwrap_or(&[]), &[(1, "apiVersion"), (2, "kind")])?;
    let got_av = tm.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let got_kind = tm.get("kind").and_then(Value::as_str).unwrap_or("");
    if got_av != api_version || got_kind != kind {
        return Err(format!(
            "the object provided is of kind {got_av}, Kind={got_kind}, not {api_version}, Kind={kind}"
        ));
    }
    Ok(raw.unwrap_or(&[]))
}

#[derive(Clone, Copy)]
enum Ty {
    Str,
    Int,
    Bool,
    Msg(&'static [Spec]),
    MapStr,
    MapBytes,
    RepStr,
}

struct Spec {
    num: u64,
    name: &'static str,
    ty: Ty,
}

const fn spec(num: u64, name: &'static str, ty: Ty) -> Spec {
    Spec { num, name, ty }
}

/// The ObjectMeta fields a client may meaningfully send; server-owned
/// timestamps and managedFields are skipped.
const OBJECT_META: &[Spec] = &[
    spec(1, "name", Ty::Str),
    spec(2, "generateName", Ty::Str),
    spec(3, "namespace", Ty::Str),
    spec(5, "uid", Ty::Str),
    spec(6, "resourceVersion", Ty::Str),
    spec(7, "generation", Ty::Int),
    spec(11, "labels", Ty::MapStr),
    spec(12, "annotations", Ty::MapStr),
    spec(14, "finalizers", Ty::RepStr),
];
const CONFIG_MAP: &[Spec] = &[
    spec(1, "metadata", Ty::Msg(OBJECT_META)),
    spec(2, "data", Ty::MapStr),
    spec(3, "binaryData", Ty::MapBytes),
    spec(4, "immutable", Ty::Bool),
];
const SECRET: &[Spec] = &[
    spec(1, "metadata", Ty::Msg(OBJECT_META)),
    spec(2, "data", Ty::MapBytes),
    spec(3, "type", Ty::Str),
    spec(4, "stringData", Ty::MapStr),
    spec(5, "immutable", Ty::Bool),
];
const NAMESPACE_SPEC: &[Spec] = &[spec(1, "finalizers", Ty::RepStr)];
const NAMESPACE_STATUS: &[Spec] = &[spec(1, "phase", Ty::Str)];
const NAMESPACE: &[Spec] = &[
    spec(1, "metadata", Ty::Msg(OBJECT_META)),
    spec(2, "spec", Ty::Msg(NAMESPACE_SPEC)),
    spec(3, "status", Ty::Msg(NAMESPACE_STATUS)),
];

fn decode_msg(b: &[u8], specs: &[Spec]) -> Result<Map<String, Value>, String> {
    const MALFORMED: &str = "malformed protobuf message";
    let mut out = Map::new();
    let mut r = Reader { b, pos: 0 };
    while let Some((n, f)) = r.next().map_err(|_| MALFORMED.to_string())? {
        let Some(sp) = specs.iter().find(|s| s.num == n) else {
            continue;
        };
        let name = sp.name.to_string();
        match (sp.ty, f) {
            (Ty::Str, Field::Bytes(b)) => {
                let v = string(b)?;
                if !v.is_empty() {
                    out.insert(name, Value::String(v));
                }
            }
            (Ty::Int, Field::Varint(v)) => {
                out.insert(name, Value::from(v as i64));
            }
            (Ty::Bool, Field::Varint(v)) => {
                out.insert(name, Value::Bool(v != 0));
            }
            (Ty::Msg(sub), Field::Bytes(b)) => {
                out.insert(name, Value::Object(decode_msg(b, sub)?));
            }
            (ty @ (Ty::MapStr | Ty::MapBytes), Field::Bytes(entry)) => {
                let (mut key, mut value) = (String::new(), Value::String(String::new()));
                let mut r = Reader { b: entry, pos: 0 };
                while let Some((n, f)) = r.next().map_err(|_| MALFORMED.to_string())? {
                    match (n, f) {
                        (1, Field::Bytes(k)) => key = string(k)?,
                        (2, Field::Bytes(v)) if matches!(ty, Ty::MapStr) => {
                            value = Value::String(string(v)?)
                        }
                        (2, Field::Bytes(v)) => value = Value::String(crate::base64::encode(v)),
                        _ => {}
                    }
                }
                if let Some(m) = out
                    .entry(name)
                    .or_insert_with(|| Value::Object(Map::new()))
                    .as_object_mut()
                {
                    m.insert(key, value);
                }
            }
            (Ty::RepStr, Field::Bytes(b)) => {
                let v = Value::String(string(b)?);
                if let Some(a) = out
                    .entry(name)
                    .or_insert_with(|| Value::Array(Vec::new()))
                    .as_array_mut()
                {
                    a.push(v);
                }
            }
            _ => return Err(MALFORMED.to_string()),
        }
    }
    Ok(out)
}

/// Decodes a protobuf ConfigMap, Secret or Namespace into its JSON form.
pub(crate) fn decode_object(body: &[u8], api_version: &str, kind: &str) -> Result<Value, String> {
    let specs = match (api_version, kind) {
        ("v1", "ConfigMap") => CONFIG_MAP,
        ("v1", "Secret") => SECRET,
        ("v1", "Namespace") => NAMESPACE,
        _ => {
            return Err(format!(
                "no protobuf decoding for {api_version}, Kind={kind}"
            ))
        }
    };
    let raw = envelope(body, api_version, kind)?;
    let mut obj = decode_msg(raw, specs)?;
    obj.insert("apiVersion".into(), Value::String(api_version.to_string()));
    obj.insert("kind".into(), Value::String(kind.to_string()));
    Ok(Value::Object(obj))
}

/// Decodes a protobuf-encoded review into the JSON the handlers use.
/// `kind` is the expected kind (`SelfSubjectAccessReview`, ...).
pub(crate) fn decode_review(body: &[u8], api_version: &str, kind: &str) -> Result<Value, String> {
    let raw = envelope(body, api_version, kind)?;
    let mut obj = json!({"apiVersion": api_version, "kind": kind, "metadata": {}});
    if kind != "SelfSubjectAccessReview" {
        return Ok(obj);
    }
    let mut spec_bytes = None;
    each_bytes(raw, |n, b| {
        if n == 2 {
            spec_bytes = Some(b);
        }
    })?;
    let mut spec = Map::new();
    let mut parts: Vec<(u64, &[u8])> = Vec::new();
    each_bytes(spec_bytes.unwrap_or(&[]), |n, b| parts.push((n, b)))?;
    for (n, b) in parts {
        match n {
            1 => {
                let ra = strings(
                    b,
                    &[
                        (1, "namespace"),
                        (2, "verb"),
                        (3, "group"),
                        (4, "version"),
                        (5, "resource"),
                        (6, "subresource"),
                        (7, "name"),
                    ],
                )?;
                spec.insert("resourceAttributes".into(), Value::Object(ra));
            }
            2 => {
                let nra = strings(b, &[(1, "path"), (2, "verb")])?;
                spec.insert("nonResourceAttributes".into(), Value::Object(nra));
            }
            _ => {}
        }
    }
    obj["spec"] = Value::Object(spec);
    Ok(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(n: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![(n << 3 | 2) as u8, payload.len() as u8];
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn decodes_what_kubectl_sends() {
        let tm = [
            field(1, b"authorization.k8s.io/v1"),
            field(2, b"SelfSubjectAccessReview"),
        ]
        .concat();
        let ra = [
            field(1, b"flux-system"),
            field(2, b"patch"),
            field(3, b"source.toolkit.fluxcd.io"),
            field(5, b"gitrepositories"),
        ]
        .concat();
        let spec = field(1, &ra);
        let raw = [field(1, b""), field(2, &spec)].concat();
        let body = [MAGIC.to_vec(), field(1, &tm), field(2, &raw)].concat();
        let v = decode_review(&body, "authorization.k8s.io/v1", "SelfSubjectAccessReview").unwrap();
        assert_eq!(
            v["spec"]["resourceAttributes"],
            json!({"namespace": "flux-system", "verb": "patch", "group": "source.toolkit.fluxcd.io", "resource": "gitrepositories"})
        );
        assert!(decode_review(b"k8s\x00\x0a\xff", "a", "b").is_err());

        let tm = [field(1, b"v1"), field(2, b"Secret")].concat();
        let entry = [field(1, b"token"), field(2, b"foo")].concat();
        let meta = [field(1, b"hook"), field(3, b"flux-system")].concat();
        let raw = [field(1, &meta), field(2, &entry), field(3, b"Opaque")].concat();
        let body = [MAGIC.to_vec(), field(1, &tm), field(2, &raw)].concat();
        assert_eq!(
            decode_object(&body, "v1", "Secret").unwrap(),
            json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                   "metadata": {"name": "hook", "namespace": "flux-system"},
                   "data": {"token": "Zm9v"}})
        );
        assert!(decode_review(b"{}", "a", "b").is_err());
    }
}
