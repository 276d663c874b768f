//! CEL resource filters: which of a target's objects a delivery reconciles, as Flux's
//! `resourceFilter` and a resource's own `filter` decide.
//!
//! A filtered job carries the inputs its verdict depends on: the expressions' text (so a
//! restarted process can compile them again), `req` and `claims`. Deliveries coalesce only when
//! those are the same, since a different `req` can select different objects.

use super::target::Target;
use crate::expr::{Expr, Scope};
use crate::verify::Evidence;
use http::HeaderMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// Reasons are cut here: an evaluation error may quote values, and the reason must stay one
/// readable line in an answer and a log.
const MAX_REASON: usize = 300;

/// The expressions that must all hold for one target, with what they read of one delivery.
pub struct Filter {
    exprs: Vec<Expr>,
    /// `None` where no expression reads it: then it cannot change the verdict, so it is
    /// neither stored nor allowed to keep deliveries apart.
    req: Option<Arc<Value>>,
    claims: Option<Arc<Value>>,
    /// SHA-256 of everything above, what coalescing compares: a pushed body can be megabytes.
    digest: [u8; 32],
}

impl Filter {
    /// `exprs` must not be empty: a target without expressions takes the unfiltered path.
    pub fn new(exprs: &[Expr], req: &Arc<Value>, claims: Option<&Arc<Value>>) -> Filter {
        let req = exprs.iter().any(Expr::reads_req).then(|| req.clone());
        let claims = claims
            .filter(|_| exprs.iter().any(Expr::reads_claims))
            .cloned();
        Self::with(exprs.to_vec(), req, claims)
    }

    fn with(exprs: Vec<Expr>, req: Option<Arc<Value>>, claims: Option<Arc<Value>>) -> Filter {
        let mut h = Sha256::new();
        for e in &exprs {
            h.update((e.source().len() as u64).to_be_bytes());
            h.update(e.source());
        }
        for v in [&req, &claims] {
            match v {
                // serde_json's maps are sorted, so equal values write equal bytes.
                Some(v) => {
                    h.update([1]);
                    let _ = serde_json::to_writer(HashWriter(&mut h), &**v);
                }
                None => h.update([0]),
            }
        }
        Filter {
            exprs,
            req,
            claims,
            digest: h.finalize().into(),
        }
    }

    /// Whether the object passes every expression. As CEL's `&&`: false if any is false, even
    /// where another fails to evaluate; otherwise the first evaluation error.
    pub fn accepts(&self, res: &Value) -> Result<bool, String> {
        self.verdict(res).map(|by| by.is_none())
    }

    /// As `accepts`, naming the expression that turned the object down (`None`: it passes).
    pub fn verdict(&self, res: &Value) -> Result<Option<&Expr>, String> {
        let empty = Value::Object(Map::new());
        let req = self.req.as_deref().unwrap_or(&empty);
        let claims = self.claims.as_deref();
        let all = [
            ("res", res),
            ("req", req),
            ("claims", claims.unwrap_or(&empty)),
        ];
        let vars = if claims.is_some() {
            &all[..]
        } else {
            &all[..2]
        };
        let mut error = None;
        for e in &self.exprs {
            match e.eval_bool(vars) {
                Ok(true) => {}
                Ok(false) => return Ok(Some(e)),
                Err(why) => {
                    error.get_or_insert(why);
                }
            }
        }
        match error {
            None => Ok(None),
            Some(why) => Err(one_line(&why)),
        }
    }

    /// Hex of the digest, to tell this job's stored copy from other filtered jobs of the
    /// same target.
    pub fn id(&self) -> String {
        hex::encode(self.digest)
    }
}

/// Each target's filter for one delivery, in order; empty when no target has expressions, so
/// such a delivery allocates nothing for them. `req` is read from the body only when an
/// expression uses it (the verifier's `Evidence::req` replaces it, as gcr's unwrapped
/// message); the error is why the body cannot be `req`.
pub fn for_delivery(
    filters: &[Vec<Expr>],
    head: &HeaderMap,
    body: Option<&[u8]>,
    evidence: &Evidence,
) -> Result<Vec<Option<Arc<Filter>>>, String> {
    if filters.iter().all(Vec::is_empty) {
        return Ok(Vec::new());
    }
    let req = match &evidence.req {
        Some(r) => r.clone(),
        None if filters.iter().flatten().any(Expr::reads_req) => {
            let content_type = head.get(http::header::CONTENT_TYPE).map(|v| v.as_bytes());
            request(content_type, body.unwrap_or_default())?
        }
        None => Value::Object(Map::new()),
    };
    let req = Arc::new(req);
    let claims = evidence.claims.clone().map(Arc::new);
    Ok(filters
        .iter()
        .map(|exprs| {
            (!exprs.is_empty()).then(|| Arc::new(Filter::new(exprs, &req, claims.as_ref())))
        })
        .collect())
}

/// What filters see as `res`: the object's metadata as PartialObjectMetadata, with the
/// target's apiVersion and kind, as controller-runtime's metadata client sets them.
pub fn resource(target: &Target, meta: &ObjectMeta) -> Value {
    json!({
        "apiVersion": target.api_version(),
        "kind": target.kind,
        "metadata": serde_json::to_value(meta).unwrap_or_else(|_| json!({})),
    })
}

/// Flux's `req`: the body decoded as a JSON object when some comma-separated part of
/// `Content-Type` is `application/json` (Flux stops looking at the first part that does not
/// parse), otherwise `{}`. A JSON-typed body that is not an object is the sender's mistake.
pub fn request(content_type: Option<&[u8]>, body: &[u8]) -> Result<Value, String> {
    if !is_json(content_type) {
        return Ok(Value::Object(Map::new()));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(v) => Err(format!(
            "the JSON body is {}, not an object; resource filters read it as req",
            match v {
                Value::Array(_) => "a list",
                Value::String(_) => "a string",
                Value::Number(_) => "a number",
                Value::Bool(_) => "a bool",
                _ => "null",
            }
        )),
        Err(e) => Err(format!("the body is not valid JSON: {e}")),
    }
}

fn is_json(content_type: Option<&[u8]>) -> bool {
    let Some(ct) = content_type.and_then(|c| std::str::from_utf8(c).ok()) else {
        return false;
    };
    for part in ct.split(',') {
        let Ok(m) = part.trim().parse::<mime::Mime>() else {
            return false;
        };
        if m.essence_str() == "application/json" {
            return true;
        }
    }
    false
}

fn one_line(s: &str) -> String {
    let s = s.split_whitespace().collect::<Vec<_>>().join(" ");
    match s.char_indices().nth(MAX_REASON) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s,
    }
}

struct HashWriter<'a>(&'a mut Sha256);

impl std::io::Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl PartialEq for Filter {
    fn eq(&self, other: &Self) -> bool {
        self.digest == other.digest
    }
}

impl Eq for Filter {}

impl Hash for Filter {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // A SHA-256 digest is as good a hash as any of its parts.
        state.write(&self.digest[..8]);
    }
}

impl fmt::Debug for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Filter")
            .field("exprs", &self.exprs)
            .field("id", &self.id())
            .finish()
    }
}

/// How a filter is written with its job.
#[derive(Serialize)]
struct Stored<'a> {
    exprs: Vec<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    req: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    claims: Option<&'a Value>,
}

#[derive(Deserialize)]
struct Restored {
    exprs: Vec<String>,
    #[serde(default)]
    req: Option<Value>,
    #[serde(default)]
    claims: Option<Value>,
}

impl Serialize for Filter {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        Stored {
            exprs: self.exprs.iter().map(Expr::source).collect(),
            req: self.req.as_deref(),
            claims: self.claims.as_deref(),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Filter {
    /// Compiles the expressions again. They compiled when the job was queued, so a failure
    /// here means a different fluxgate wrote it; the job is then skipped, and logged.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let r = Restored::deserialize(d)?;
        if r.exprs.is_empty() {
            return Err(serde::de::Error::custom("a filter without expressions"));
        }
        // `claims` was checked against the receiver's type when the job was queued.
        let scope = Scope::Filter { claims: true };
        let exprs = r
            .exprs
            .iter()
            .map(|src| Expr::compile(src, scope))
            .collect::<Result<Vec<_>, _>>()
            .map_err(serde::de::Error::custom)?;
        Ok(Filter::with(
            exprs,
            r.req.map(Arc::new),
            r.claims.map(Arc::new),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::target::Select;

    fn exprs(srcs: &[&str]) -> Vec<Expr> {
        srcs.iter()
            .map(|s| Expr::compile(s, Scope::Filter { claims: true }).unwrap())
            .collect()
    }

    fn target() -> Target {
        Target::git_repository(Select::Name("app".into()))
    }

    fn res(labels: Value) -> Value {
        json!({"apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "GitRepository",
               "metadata": {"name": "app", "namespace": "flux-system", "labels": labels}})
    }

    #[test]
    fn every_expression_must_hold_and_false_beats_an_error() {
        let req = Arc::new(json!({"ref": "refs/heads/main"}));
        let f = Filter::new(
            &exprs(&[
                "res.metadata.labels.tier == 'web'",
                "req.ref == 'refs/heads/main'",
            ]),
            &req,
            None,
        );
        assert_eq!(f.accepts(&res(json!({"tier": "web"}))), Ok(true));
        assert_eq!(f.accepts(&res(json!({"tier": "db"}))), Ok(false));
        // The first expression fails to evaluate (no such label), the second holds: an error.
        let err = f.accepts(&res(json!({}))).unwrap_err();
        assert!(err.contains("tier"), "{err}");
        // The same missing label, but the second expression is false: false, as CEL's &&.
        let other = Arc::new(json!({"ref": "refs/heads/dev"}));
        let f = Filter::new(
            &exprs(&[
                "res.metadata.labels.tier == 'web'",
                "req.ref == 'refs/heads/main'",
            ]),
            &other,
            None,
        );
        assert_eq!(f.accepts(&res(json!({}))), Ok(false));
    }

    #[test]
    fn claims_are_passed_only_when_present() {
        let claims = Arc::new(json!({"sub": "repo:org/app"}));
        let req = Arc::new(json!({}));
        let e = exprs(&["claims.sub.startsWith('repo:org/')"]);
        assert_eq!(
            Filter::new(&e, &req, Some(&claims)).accepts(&res(json!({}))),
            Ok(true)
        );
        assert!(Filter::new(&e, &req, None)
            .accepts(&res(json!({})))
            .is_err());
    }

    #[test]
    fn inputs_no_expression_reads_do_not_keep_jobs_apart() {
        let e = exprs(&["res.metadata.name == 'app'"]);
        let a = Filter::new(&e, &Arc::new(json!({"after": "1"})), None);
        let b = Filter::new(&e, &Arc::new(json!({"after": "2"})), None);
        assert_eq!(a, b);
        assert!(a.req.is_none());
        let e = exprs(&["req.after != ''"]);
        let a = Filter::new(&e, &Arc::new(json!({"after": "1"})), None);
        let b = Filter::new(&e, &Arc::new(json!({"after": "2"})), None);
        let a2 = Filter::new(&e, &Arc::new(json!({"after": "1"})), None);
        assert_ne!(a, b);
        assert_eq!(a, a2);
        // The same inputs with other expressions are another job.
        let c = Filter::new(
            &exprs(&["req.after != 'x'"]),
            &Arc::new(json!({"after": "1"})),
            None,
        );
        assert_ne!(a, c);
    }

    #[test]
    fn a_stored_filter_is_restored_with_the_same_identity_and_verdicts() {
        let claims = Arc::new(json!({"sub": "x"}));
        let f = Filter::new(
            &exprs(&["req.ref == 'refs/heads/main' && claims.sub == 'x'"]),
            &Arc::new(json!({"ref": "refs/heads/main"})),
            Some(&claims),
        );
        let text = serde_json::to_string(&f).unwrap();
        let back: Filter = serde_json::from_str(&text).unwrap();
        assert_eq!(back, f);
        assert_eq!(back.id(), f.id());
        assert_eq!(back.accepts(&res(json!({}))), Ok(true));
        let bad = r#"{"exprs":["res.metadata.name =="]}"#;
        assert!(serde_json::from_str::<Filter>(bad).is_err());
        assert!(serde_json::from_str::<Filter>(r#"{"exprs":[]}"#).is_err());
    }

    #[test]
    fn req_is_the_json_object_only_for_a_json_content_type() {
        let body = br#"{"ref":"refs/heads/main"}"#;
        let obj = json!({"ref": "refs/heads/main"});
        for ct in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "text/plain, application/json",
        ] {
            assert_eq!(request(Some(ct.as_bytes()), body), Ok(obj.clone()), "{ct}");
        }
        for ct in [
            None,
            Some("application/x-www-form-urlencoded"),
            Some("text/plain"),
            Some("application/jsonx"),
            // Flux stops at the first part that does not parse.
            Some("not a type, application/json"),
        ] {
            assert_eq!(
                request(ct.map(str::as_bytes), body),
                Ok(json!({})),
                "{ct:?}"
            );
        }
        let json = Some(&b"application/json"[..]);
        assert!(request(json, b"[1]").unwrap_err().contains("a list"));
        assert!(request(json, b"{\"a\":")
            .unwrap_err()
            .starts_with("the body is not valid JSON"));
        assert!(request(json, b"").is_err());
        // A form body is not looked at.
        assert_eq!(
            request(Some(b"application/x-www-form-urlencoded"), b"payload=%7B"),
            Ok(json!({}))
        );
    }

    #[test]
    fn res_has_the_targets_type_and_the_metadata_only() {
        let meta = ObjectMeta {
            name: Some("app".into()),
            namespace: Some("flux-system".into()),
            labels: Some([("tier".to_string(), "web".to_string())].into()),
            ..Default::default()
        };
        let r = resource(&target(), &meta);
        assert_eq!(
            r,
            json!({"apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "GitRepository",
                   "metadata": {"name": "app", "namespace": "flux-system", "labels": {"tier": "web"}}})
        );
    }

    #[test]
    fn a_delivery_gets_a_filter_per_filtered_target() {
        let none = Evidence::default();
        let mut json = HeaderMap::new();
        json.insert("content-type", "application/json".parse().unwrap());
        let json = &json;
        let body = Some(&br#"{"ref":"refs/heads/main"}"#[..]);
        assert!(for_delivery(&[vec![], vec![]], json, body, &none)
            .unwrap()
            .is_empty());
        let by_req = exprs(&["req.ref == 'refs/heads/main'"]);
        let got = for_delivery(&[vec![], by_req.clone()], json, body, &none).unwrap();
        assert!(got[0].is_none());
        assert_eq!(got[1].as_ref().unwrap().accepts(&res(json!({}))), Ok(true));
        // The body is refused only when an expression reads it.
        let bad = Some(&b"[1]"[..]);
        assert!(for_delivery(std::slice::from_ref(&by_req), json, bad, &none).is_err());
        let by_res = exprs(&["res.metadata.name == 'app'"]);
        assert!(for_delivery(&[by_res], json, bad, &none).is_ok());
        // The verifier's req wins over the body (gcr).
        let gcr = Evidence {
            req: Some(json!({"ref": "refs/heads/main"})),
            ..Evidence::default()
        };
        let got = for_delivery(&[by_req], json, bad, &gcr).unwrap();
        assert_eq!(got[0].as_ref().unwrap().accepts(&res(json!({}))), Ok(true));
    }

    #[test]
    fn long_reasons_are_cut_to_one_line() {
        let s = one_line(&format!("a\nb {}", "x".repeat(1000)));
        assert!(s.starts_with("a b x") && s.ends_with('…'), "{s}");
        assert_eq!(s.chars().count(), MAX_REASON + 1);
    }
}
