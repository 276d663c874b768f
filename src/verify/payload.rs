//! Whether a body decodes into the struct Flux declares for a receiver type.
//!
//! Flux decodes these bodies with Go's `encoding/json` into a small struct and keeps only the
//! error, so what it checks is the *shape*, with Go's rules, reproduced here:
//! - any JSON object passes, and so does `null` (decoding `null` into a Go value is a no-op);
//! - keys the struct does not declare are ignored, whatever their value;
//! - a declared key holding the wrong JSON type fails (a number where a string is expected),
//!   while `null` is accepted anywhere;
//! - keys match the struct's names case-insensitively (Go folds case when it matches keys),
//!   and a key given twice is checked each time;
//! - an empty body or one that is not JSON fails.
//!
//! One difference, on purpose: Go's `json.Decoder` (dockerhub, quay, acr) reads the first JSON
//! value and ignores what follows it. Here the whole body must be that one value, as with
//! `json.Unmarshal` (nexus, cdevents). A gateway answers for what it relays: a body with
//! trailing data is not what any of these providers sends, and it is not a JSON document for
//! CEL `req` or forwarding (Flux itself, given such a body as `application/json`, fails to
//! build `req` and answers 500).
//!
//! The body is checked as it is parsed, without building a tree, and a refusal names the key
//! and the JSON types involved, never a value from the body.

use super::{BodyCheck, Evidence, ReceiverType, Verifier};
use crate::refusal::{Cause, Refusal};
use async_trait::async_trait;
use http::HeaderMap;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use std::fmt;

/// A receiver type whose only check is the shape of its body (dockerhub, quay, acr): it has
/// no credential beyond the secret path, and Flux checks no header or content type.
pub trait BodyShape {
    const TYPE: ReceiverType;
    const SHAPE: &'static Shape;
}

#[async_trait]
impl<T: BodyShape + fmt::Debug + Send + Sync> Verifier for T {
    fn begin(&self, _head: &HeaderMap) -> Result<BodyCheck, Refusal> {
        Ok(BodyCheck::Nothing)
    }

    fn completes(&self) -> bool {
        true
    }

    async fn complete(&self, _head: &HeaderMap, body: &[u8]) -> Result<Evidence, Refusal> {
        check(T::TYPE.as_str(), T::SHAPE, body)?;
        Ok(Evidence::default())
    }
}

/// The JSON shape of a Go struct field.
#[derive(Debug)]
pub enum Shape {
    /// A Go `string`.
    Str,
    /// A Go slice of the inner shape.
    List(&'static Shape),
    /// A Go struct: its JSON keys and their shapes. Other keys are ignored.
    Object(&'static [(&'static str, Shape)]),
}

/// Refuses `body` unless it decodes into `shape` the way Go decodes it into Flux's struct.
/// `kind` names the receiver type in the reason.
pub fn check(kind: &str, shape: &'static Shape, body: &[u8]) -> Result<(), Refusal> {
    let mut de = serde_json::Deserializer::from_slice(body);
    At {
        shape,
        path: &Path::Root,
    }
    .deserialize(&mut de)
    .and_then(|()| de.end())
    .map_err(|e| match e.classify() {
        // Only this module's visitors raise data errors, and their text quotes nothing
        // from the body.
        serde_json::error::Category::Data => {
            Refusal::bad_request(Cause::MalformedRequest, format!("{kind} payload: {e}"))
        }
        _ => not_json(kind, body, &e),
    })
}

/// The refusal of a body that is not one JSON value. serde_json describes syntax errors with
/// fixed text and a position, so its message is passed on; the body itself never is.
pub fn not_json(kind: &str, body: &[u8], e: &serde_json::Error) -> Refusal {
    let reason = if body.iter().all(u8::is_ascii_whitespace) {
        format!("{kind} payload is empty: expected a JSON object")
    } else if e.to_string().starts_with("trailing characters") {
        format!(
            "{kind} payload has data after its JSON value (line {}, column {})",
            e.line(),
            e.column()
        )
    } else {
        format!("{kind} payload is not JSON: {e}")
    };
    Refusal::bad_request(Cause::MalformedRequest, reason)
}

/// Where a value sits in the body, for the reason: `push_data.tag`, `updated_tags[2]`.
enum Path<'a> {
    Root,
    Key(&'a Path<'a>, &'static str),
    Index(&'a Path<'a>, usize),
}

impl fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Path::Root => f.write_str("the body"),
            Path::Key(Path::Root, k) => f.write_str(k),
            Path::Key(p, k) => write!(f, "{p}.{k}"),
            Path::Index(p, i) => write!(f, "{p}[{i}]"),
        }
    }
}

/// Checks one value against its shape.
struct At<'a> {
    shape: &'static Shape,
    path: &'a Path<'a>,
}

impl At<'_> {
    fn expected(&self) -> &'static str {
        match self.shape {
            Shape::Str => "a string",
            Shape::List(_) => "an array",
            Shape::Object(_) => "a JSON object",
        }
    }

    fn mismatch<E: de::Error>(&self, found: &str) -> E {
        E::custom(format_args!(
            "{} must be {}, not {found}",
            self.path,
            self.expected()
        ))
    }
}

impl<'de> DeserializeSeed<'de> for At<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

// Every method serde_json calls is overridden: serde's defaults describe the unexpected value
// by quoting it, and the body must not reach a reason.
impl<'de> Visitor<'de> for At<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expected())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Err(self.mismatch("a boolean"))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Err(self.mismatch("a number"))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Err(self.mismatch("a number"))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Err(self.mismatch("a number"))
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        match self.shape {
            Shape::Str => Ok(()),
            _ => Err(self.mismatch("a string")),
        }
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Shape::List(item) = self.shape else {
            return Err(self.mismatch("an array"));
        };
        let mut i = 0;
        while seq
            .next_element_seed(At {
                shape: item,
                path: &Path::Index(self.path, i),
            })?
            .is_some()
        {
            i += 1;
        }
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Shape::Object(fields) = self.shape else {
            return Err(self.mismatch("a JSON object"));
        };
        while let Some(field) = map.next_key_seed(Key(fields))? {
            match field {
                Some(field) => map.next_value_seed(At {
                    shape: &field.1,
                    path: &Path::Key(self.path, field.0),
                })?,
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// Reads a key and finds the field it names, if any, without keeping the key.
struct Key(&'static [(&'static str, Shape)]);

type Field = Option<&'static (&'static str, Shape)>;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Field;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Field, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Field;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Field, E> {
        Ok(self.0.iter().find(|(name, _)| go_key_matches(key, name)))
    }
}

/// Go's `encoding/json` matches a key to a field name with Unicode case folding. The names
/// here are ASCII, and the only non-ASCII characters that fold to ASCII letters are the long
/// s (to `s`) and the Kelvin sign (to `k`).
fn go_key_matches(key: &str, name: &str) -> bool {
    let fold = |c: char| match c {
        '\u{17F}' => 'S',
        '\u{212A}' => 'K',
        c => c.to_ascii_uppercase(),
    };
    key.chars()
        .map(fold)
        .eq(name.chars().map(|c| c.to_ascii_uppercase()))
}

/// Helpers for the tests of the types built on this module.
#[cfg(test)]
pub(super) mod testing {
    use super::*;

    /// `tests/fixtures/<dir>/<name>`.
    pub fn fixture(dir: &str, name: &str) -> Vec<u8> {
        let path = format!("{}/tests/fixtures/{dir}/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// The body check of a type with no header to check, as the hook runs it.
    pub async fn complete(v: &dyn Verifier, body: &[u8]) -> Result<(), Refusal> {
        let head = HeaderMap::new();
        let check = v.begin(&head)?;
        assert!(
            !check.needs_body(),
            "nothing to stream: only the whole body is checked"
        );
        assert!(v.completes(), "the body is kept for the check");
        v.complete(&head, body).await.map(drop)
    }

    /// The reason `v` refuses `body` with, after checking it is a 400 malformed request.
    pub async fn refused(v: &dyn Verifier, body: &[u8]) -> String {
        let r = complete(v, body).await.unwrap_err();
        assert_eq!((r.status, r.cause), (400, Cause::MalformedRequest));
        r.reason.into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TAGGED: Shape = Shape::Object(&[
        ("push_data", Shape::Object(&[("tag", Shape::Str)])),
        ("updated_tags", Shape::List(&Shape::Str)),
    ]);

    fn reason(body: &str) -> String {
        let r = check("test", &TAGGED, body.as_bytes()).unwrap_err();
        assert_eq!(
            (r.status, r.cause),
            (400, Cause::MalformedRequest),
            "{body}"
        );
        r.reason.into_owned()
    }

    #[test]
    fn what_go_accepts() {
        for ok in [
            "{}",
            "null",
            " {} \n",
            r#"{"push_data": {"tag": "v1"}, "updated_tags": ["a", "b"]}"#,
            // Keys the struct does not declare are ignored, whatever they hold.
            r#"{"other": [1, {"x": true}], "push_data": {"pusher": 5}}"#,
            // null fits every field.
            r#"{"push_data": null, "updated_tags": null}"#,
            r#"{"push_data": {"tag": null}, "updated_tags": [null, "a"]}"#,
            r#"{"updated_tags": []}"#,
        ] {
            check("test", &TAGGED, ok.as_bytes()).unwrap_or_else(|r| panic!("{ok}: {r}"));
        }
    }

    #[test]
    fn wrong_types_name_the_key_and_the_types_but_no_value() {
        assert_eq!(
            reason(r#"{"push_data": {"tag": 12345}}"#),
            "test payload: push_data.tag must be a string, not a number at line 1 column 27"
        );
        assert_eq!(
            reason(r#"{"push_data": "secret-looking-value"}"#),
            "test payload: push_data must be a JSON object, not a string at line 1 column 36"
        );
        assert_eq!(
            reason(r#"{"updated_tags": ["a", true]}"#),
            "test payload: updated_tags[1] must be a string, not a boolean at line 1 column 27"
        );
        // Quay's older documentation shows updated_tags as an object: Flux refuses it too.
        assert!(reason(r#"{"updated_tags": {"latest": "sha256:0"}}"#)
            .starts_with("test payload: updated_tags must be an array, not a JSON object"));
        for (body, found) in [("[]", "an array"), ("\"x\"", "a string"), ("1", "a number")] {
            assert!(
                reason(body).starts_with(&format!(
                    "test payload: the body must be a JSON object, not {found}"
                )),
                "{body}"
            );
        }
        assert!(!reason(r#"{"push_data": "secret-looking-value"}"#).contains("secret"));
    }

    #[test]
    fn keys_match_case_insensitively_and_every_copy_is_checked() {
        assert!(reason(r#"{"PUSH_DATA": {"Tag": 1}}"#).starts_with("test payload: push_data.tag"));
        // The long s and the Kelvin sign fold to s and k in Go.
        assert!(reason("{\"updated_tag\u{17F}\": 1}").starts_with("test payload: updated_tags"));
        // A duplicate key is checked each time, not only the last copy.
        assert!(
            reason(r#"{"push_data": 1, "push_data": {}}"#).starts_with("test payload: push_data")
        );
        assert!(go_key_matches("Push_Data", "push_data"));
        assert!(go_key_matches("doc\u{212A}er_url", "docker_url"));
        assert!(!go_key_matches("push_dat", "push_data"));
        assert!(!go_key_matches("push_datä", "push_data"));
    }

    #[test]
    fn empty_not_json_and_trailing_data() {
        assert_eq!(reason(""), "test payload is empty: expected a JSON object");
        assert_eq!(
            reason(" \r\n"),
            "test payload is empty: expected a JSON object"
        );
        assert_eq!(
            reason("push=1"),
            "test payload is not JSON: expected value at line 1 column 1"
        );
        assert_eq!(
            reason(r#"{"push_data": {"#),
            "test payload is not JSON: EOF while parsing an object at line 1 column 15"
        );
        // Go's Decoder would stop after `{}`; fluxgate refuses what follows.
        assert_eq!(
            reason("{} {}"),
            "test payload has data after its JSON value (line 1, column 4)"
        );
        assert_eq!(
            reason("{}garbage"),
            "test payload has data after its JSON value (line 1, column 3)"
        );
    }
}
