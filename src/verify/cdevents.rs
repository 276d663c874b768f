//! `cdevents`: no credential beyond the secret path. `Ce-Type` (CloudEvents binary mode) names
//! the event for `events`; the body must be a CDEvent that the CDEvents SDK parses and
//! validates.
//!
//! Flux uses the Go SDK (sdk-go v0.5, package `v04`): it reads spec 0.4 documents
//! (`context.version`) whose `context.type` is in that spec's vocabulary, ignores fields it
//! does not know, then checks the result against the 0.4.1 JSON schemas. fluxgate uses the
//! Rust SDK (`cdevents-sdk` 0.4), whose types are generated from the same schemas and which
//! reads:
//! - spec 0.3.0 and 0.4.x documents (`context.version`) and 0.5.x documents
//!   (`context.specversion`); any other spec version is refused here, since the SDK would
//!   otherwise read it as 0.5;
//! - in each, the event types and versions of that spec's vocabulary (`dev.cdevents.…`);
//!   other `dev.cdevents.` types are refused, while custom types (`dev.cdeventsx.…`) pass
//!   with their content unchecked, as in Go. The SDK would take any other prefix as custom;
//!   Go refuses it, and so does fluxgate;
//! - required fields, their JSON types, URI references and RFC 3339 timestamps are checked;
//!   unlike Go, a field the schema does not define is refused (the schemas forbid them);
//! - a missing or null `subject.content` is what Go makes of it, the zero struct: it passes
//!   where the type's schema requires no content field (and for pipelinerun.started, whose
//!   required strings may be empty), and is refused naming the first required one otherwise;
//! - up to spec 0.4, `subject.type` must name the subject of `context.type`, and `subject.id`
//!   and `subject.source` must be strings, as Go's typed structs and the schema require.
//!
//! A refusal names the field (`subject.content.environment.id`) and what is wrong with it
//! (missing, wrong JSON type, a value the schema does not allow), never the value itself or a
//! key the schema does not define.
//!
//! Flux does not compare `Ce-Type` with the body's `context.type`, and neither does fluxgate:
//! `Ce-Type` only feeds the `events` filter, case-insensitively.

use super::payload;
use super::{BodyCheck, Evidence, Verifier};
use crate::refusal::{Cause, Refusal};
use async_trait::async_trait;
use cdevents_sdk::CDEvent;
use http::HeaderMap;
use serde_json::Value;
use std::cell::Cell;

const KIND: &str = "cdevents";

/// Spec versions (major.minor) the SDK has a context for.
const SPEC_VERSIONS: [&str; 3] = ["0.3.", "0.4.", "0.5."];

#[derive(Debug)]
pub struct Cdevents;

#[async_trait]
impl Verifier for Cdevents {
    fn begin(&self, _head: &HeaderMap) -> Result<BodyCheck, Refusal> {
        Ok(BodyCheck::Nothing)
    }

    fn completes(&self) -> bool {
        true
    }

    async fn complete(&self, _head: &HeaderMap, body: &[u8]) -> Result<Evidence, Refusal> {
        validate(body)?;
        Ok(Evidence::default())
    }

    fn event_header(&self) -> Option<&'static str> {
        Some("Ce-Type")
    }

    /// CloudEvents' `id`: a sender keeps it when it redelivers the same event.
    fn delivery_id_headers(&self) -> &'static [&'static str] {
        &["Ce-Id"]
    }
}

fn validate(body: &[u8]) -> Result<(), Refusal> {
    let mut value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| payload::not_json(KIND, body, &e))?;
    if !value.is_object() {
        return Err(invalid("the body must be a JSON object"));
    }
    for part in ["context", "subject"] {
        match &value[part] {
            serde_json::Value::Null => return Err(invalid(&format!("{part} is missing"))),
            v if !v.is_object() => {
                return Err(invalid(&format!(
                    "{part} has the wrong JSON type (expected an object)"
                )))
            }
            _ => {}
        }
    }
    // Checked first: the SDK reads a context whose version it does not know as 0.5, and its
    // complaint (a missing `specversion`) would not say what is wrong.
    let context = &value["context"];
    let ty = match &context["type"] {
        serde_json::Value::Null => return Err(invalid("context.type is missing")),
        serde_json::Value::String(t) => t.clone(),
        _ => {
            return Err(invalid(
                "context.type has the wrong JSON type (expected a string)",
            ))
        }
    };
    if !ty.starts_with("dev.cdevents.") && !ty.starts_with("dev.cdeventsx.") {
        return Err(invalid(
            "context.type is neither dev.cdevents.… nor a custom dev.cdeventsx.… type",
        ));
    }
    let up_to_04 = context.get("version").is_some();
    match context["specversion"]
        .as_str()
        .or(context["version"].as_str())
    {
        None => {
            return Err(invalid(
                "context has no spec version (`version` up to 0.4, `specversion` from 0.5)",
            ))
        }
        Some(v) if !SPEC_VERSIONS.iter().any(|known| v.starts_with(known)) => {
            return Err(invalid(
                "its CDEvents spec version is not one fluxgate reads (0.3, 0.4, 0.5)",
            ))
        }
        Some(_) => {}
    }
    if up_to_04 && ty.starts_with("dev.cdevents.") {
        subject_type(&ty, &value["subject"]["type"]).map_err(|why| invalid(&why))?;
    }
    subject_fields(&value["subject"]).map_err(|why| invalid(&why))?;
    as_go_reads_it(&ty, &mut value);
    let sdk = |v: &serde_json::Value| {
        serde_json::from_value::<CDEvent>(v.clone())
            .map(drop)
            .map_err(|e| e.to_string())
    };
    match sdk(&value) {
        Ok(()) => Ok(()),
        Err(msg) => Err(invalid(&explain(&ty, &value, &msg, body.len()))),
    }
}

/// What the Go SDK makes of a document it reads into a typed struct: a missing or null
/// `subject.content` is the zero struct, and a missing string field the empty string. The
/// schema then decides: content with no required field passes without any, and so do the
/// required fields whose schema takes an empty string (those of pipelinerun.started before spec
/// 0.5, the one such case). The Rust SDK has no zero values, so they are written in.
fn as_go_reads_it(ty: &str, value: &mut serde_json::Value) {
    let Some(subject) = value["subject"].as_object_mut() else {
        return;
    };
    let content = subject
        .entry("content")
        .or_insert_with(|| serde_json::json!({}));
    if content.is_null() {
        *content = serde_json::json!({});
    }
    let Some(content) = content.as_object_mut() else {
        return;
    };
    let empty_strings: &[&str] = if ty.starts_with("dev.cdevents.pipelinerun.started.0.1.")
        || ty.starts_with("dev.cdevents.pipelinerun.started.0.2.")
    {
        &["pipelineName", "url"]
    } else {
        &[]
    };
    for field in empty_strings {
        content
            .entry(*field)
            .or_insert_with(|| serde_json::json!(""));
    }
}

/// The subjects of spec 0.3 and 0.4 as `subject.type` names them (`context.type` has them in
/// lower case).
const SUBJECTS: [&str; 14] = [
    "artifact",
    "branch",
    "build",
    "change",
    "environment",
    "incident",
    "pipelineRun",
    "repository",
    "service",
    "taskRun",
    "testCaseRun",
    "testSuiteRun",
    "testOutput",
    "ticket",
];

/// Up to spec 0.4, `subject.type` is required and must name the subject of `context.type`, as
/// the schema the Go SDK checks says; the Rust SDK ignores it.
fn subject_type(ty: &str, given: &serde_json::Value) -> Result<(), String> {
    let of_type = ty.split('.').nth(2).unwrap_or_default();
    let Some(expected) = SUBJECTS.iter().find(|s| s.eq_ignore_ascii_case(of_type)) else {
        // Not a subject of these specs: the SDK refuses context.type, and says so.
        return Ok(());
    };
    match given {
        serde_json::Value::Null => Err("subject.type is missing".into()),
        serde_json::Value::String(s) if s == expected => Ok(()),
        serde_json::Value::String(_) => Err(format!(
            "subject.type is not {expected:?}, the subject of context.type"
        )),
        _ => Err("subject.type has the wrong JSON type (expected a string)".into()),
    }
}

/// `subject.id` and `subject.source`, which the SDK reads by hand: it would take an id of
/// another JSON type for a missing one, and skip a source that is not a string, where Go's
/// typed struct refuses both.
fn subject_fields(subject: &Value) -> Result<(), String> {
    match &subject["id"] {
        Value::Null => return Err("subject.id is missing".into()),
        Value::String(id) if cdevents_sdk::Id::try_from(id.as_str()).is_err() => {
            return Err("subject.id has an invalid value (it must not be empty)".into())
        }
        Value::String(_) => {}
        _ => return Err("subject.id has the wrong JSON type (expected a string)".into()),
    }
    match &subject["source"] {
        Value::Null => Ok(()),
        Value::String(s) if s.parse::<cdevents_sdk::UriReference>().is_err() => {
            Err("subject.source has an invalid value (it must be a URI reference)".into())
        }
        Value::String(_) => Ok(()),
        _ => Err("subject.source has the wrong JSON type (expected a string)".into()),
    }
}

fn invalid(why: &str) -> Refusal {
    Refusal::bad_request(
        Cause::MalformedRequest,
        format!("{KIND} payload is not a valid CDEvent: {why}"),
    )
}

/// Bodies up to this size are searched for the field the SDK's error is about; larger ones
/// get the part it is in (`subject.content`), so a refusal costs a bounded amount of work.
const SEARCH_LIMIT: usize = 16 * 1024;
/// How many entries of one object or list are tried, and how deep.
const SEARCH_WIDTH: usize = 32;
const SEARCH_DEPTH: usize = 4;
/// How many times one refusal may read a part again while searching.
const SEARCH_READS: usize = 64;

/// How the SDK reads one part of the event: its error message, if any.
type Reader<'a> = Box<dyn Fn(&Value) -> Option<String> + 'a>;

/// Why the SDK refused the event, naming the field and what is wrong with it. The SDK says
/// what is wrong but not where (it reads through JSON values), and its messages quote the
/// offending value or key: the field is found by reading its part again without each entry in
/// turn, and only names from the schema are shown.
fn explain(ty: &str, value: &Value, msg: &str, body_len: usize) -> String {
    if msg.starts_with("invalid context.type format") {
        return "context.type is not {tld}.{domain}.{subject}.{predicate}.{major}.{minor}.{patch}"
            .into();
    }
    if msg.starts_with("unknown variant `dev.cdevents.") {
        return "context.type is not an event type of CDEvents spec 0.3, 0.4 or 0.5".into();
    }
    // The SDK reads the context, then the subject's own fields, then its content: the first
    // part that fails alone with the same message is the one it is about.
    let content: Reader = Box::new(|v| {
        cdevents_sdk::Content::from_json(ty, v.clone())
            .err()
            .map(|e| e.to_string())
    });
    let subject: Reader = Box::new(|v| {
        cdevents_sdk::Subject::from_json(ty, v.clone())
            .err()
            .map(|e| e.to_string())
    });
    let context: Reader = Box::new(|v| {
        let mut doc = value.clone();
        doc["context"] = v.clone();
        serde_json::from_value::<CDEvent>(doc)
            .err()
            .map(|e| e.to_string())
    });
    let parts = [
        ("subject.content", &value["subject"]["content"], content),
        ("subject", &value["subject"], subject),
        ("context", &value["context"], context),
    ];
    let depth = if body_len <= SEARCH_LIMIT {
        SEARCH_DEPTH
    } else {
        0
    };
    let budget = Cell::new(SEARCH_READS);
    for (path, part, read) in &parts {
        if read(part).as_deref() == Some(msg) || *path == "context" {
            // Each read counts, so a body built to make the search long only makes it stop.
            let counted = |v: &Value| {
                budget.set(budget.get().saturating_sub(1));
                read(v)
            };
            let (path, msg) = locate(
                path.to_string(),
                part,
                &counted,
                msg.to_string(),
                depth,
                &budget,
            );
            return reason(&path, &msg);
        }
    }
    reason("the event", msg)
}

/// The deepest entry of `part` (at `path`) that `msg` is about: the one without which `read`
/// no longer fails with `msg`. Returns its path and the message about it.
fn locate(
    path: String,
    part: &Value,
    read: &dyn Fn(&Value) -> Option<String>,
    msg: String,
    depth: usize,
    budget: &Cell<usize>,
) -> (String, String) {
    // Where the search stops short, the field is somewhere in this part.
    let short = |path: String, msg: String| match part {
        Value::Object(_) | Value::Array(_) => (format!("{path} or a field in it"), msg),
        _ => (path, msg),
    };
    if depth == 0 || budget.get() == 0 {
        return short(path, msg);
    }
    // An unknown key is never named: the message is about the object holding it.
    let unknown = msg
        .strip_prefix("unknown field `")
        .and_then(|r| r.split('`').next())
        .map(str::to_string);
    if let Some(field) = missing_field(&msg) {
        let at = find_missing(&path, part, read, field, &msg, depth, budget).unwrap_or(path);
        return (at, msg);
    }
    match part {
        Value::Object(map) if map.len() <= SEARCH_WIDTH => {
            for (key, entry) in map {
                if budget.get() == 0 {
                    break;
                }
                if unknown.as_deref() == Some(key.as_str()) {
                    return (path, msg);
                }
                let mut without = map.clone();
                without.remove(key);
                if read(&Value::Object(without)).as_deref() == Some(msg.as_str()) {
                    continue;
                }
                if !schema_name(key) {
                    return (path, msg);
                }
                let inner = |v: &Value| {
                    let mut with = map.clone();
                    with.insert(key.clone(), v.clone());
                    read(&Value::Object(with))
                };
                return locate(
                    format!("{path}.{key}"),
                    entry,
                    &inner,
                    msg,
                    depth - 1,
                    budget,
                );
            }
            if budget.get() == 0 {
                return short(path, msg);
            }
            (path, msg)
        }
        Value::Array(items) if items.len() <= SEARCH_WIDTH => {
            for (i, entry) in items.iter().enumerate() {
                if budget.get() == 0 {
                    break;
                }
                let mut without = items.clone();
                without.remove(i);
                if read(&Value::Array(without)).as_deref() == Some(msg.as_str()) {
                    continue;
                }
                let inner = |v: &Value| {
                    let mut with = items.clone();
                    with[i] = v.clone();
                    read(&Value::Array(with))
                };
                return locate(
                    format!("{path}[{i}]"),
                    entry,
                    &inner,
                    msg,
                    depth - 1,
                    budget,
                );
            }
            if budget.get() == 0 {
                return short(path, msg);
            }
            (path, msg)
        }
        Value::Object(_) | Value::Array(_) => short(path, msg),
        _ => (path, msg),
    }
}

/// The object, `part` or one within it, that lacks `field`: the one where adding it changes
/// what the SDK says, other than into an unknown field (every CDEvents object refuses fields
/// it does not define). Objects are tried outermost first.
fn find_missing(
    path: &str,
    part: &Value,
    read: &dyn Fn(&Value) -> Option<String>,
    field: &str,
    msg: &str,
    depth: usize,
    budget: &Cell<usize>,
) -> Option<String> {
    if budget.get() == 0 {
        return None;
    }
    if let Value::Object(map) = part {
        if !map.contains_key(field) {
            let mut with = map.clone();
            with.insert(field.into(), Value::Null);
            match read(&Value::Object(with)) {
                Some(m) if m == msg || m.starts_with(&format!("unknown field `{field}`")) => {}
                _ => return Some(path.to_string()),
            }
        }
    }
    if depth == 0 || budget.get() == 0 {
        return None;
    }
    let children: Vec<(String, &Value)> = match part {
        Value::Object(map) if map.len() <= SEARCH_WIDTH => map
            .iter()
            .filter(|(k, _)| schema_name(k))
            .map(|(k, v)| (format!("{path}.{k}"), v))
            .collect(),
        Value::Array(items) if items.len() <= SEARCH_WIDTH => items
            .iter()
            .enumerate()
            .map(|(i, v)| (format!("{path}[{i}]"), v))
            .collect(),
        _ => Vec::new(),
    };
    for (i, (child_path, child)) in children.into_iter().enumerate() {
        if !(child.is_object() || child.is_array()) {
            continue;
        }
        let inner = |v: &Value| {
            let mut whole = part.clone();
            match &mut whole {
                Value::Object(map) => {
                    let key = child_path.rsplit('.').next().unwrap_or_default();
                    map.insert(key.to_string(), v.clone());
                }
                Value::Array(items) => items[i] = v.clone(),
                _ => {}
            }
            read(&whole)
        };
        if let Some(found) = find_missing(&child_path, child, &inner, field, msg, depth - 1, budget)
        {
            return Some(found);
        }
    }
    None
}

/// The field a serde "missing field" message names, when it is a schema name.
fn missing_field(msg: &str) -> Option<&str> {
    msg.strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next())
        .filter(|f| schema_name(f))
}

/// A name the CDEvents schemas use (`artifactId`, `ticketURI`), not something else a body
/// holds: only those are shown.
fn schema_name(f: &str) -> bool {
    !f.is_empty() && f.len() <= 40 && f.chars().all(|c| c.is_ascii_alphanumeric())
}

/// What is wrong with the field at `path`, from the SDK's message about it, without the value
/// or key the message quotes.
fn reason(path: &str, msg: &str) -> String {
    if let Some(field) = missing_field(msg) {
        return format!("{path}.{field} is missing");
    }
    if msg.starts_with("missing field") {
        return format!("{path} lacks a field the CDEvents schema requires");
    }
    if msg.starts_with("unknown field") {
        return format!("{path} has a field the CDEvents schema does not define");
    }
    if let Some(rest) = msg.strip_prefix("invalid type: ") {
        let expected = rest.rsplit_once(", expected ").map_or("", |(_, e)| e);
        let expected = if expected.starts_with("struct") || expected.contains("map") {
            "an object"
        } else if expected.contains("sequence") {
            "a list"
        } else {
            expected
        };
        return match expected {
            "a string" | "an object" | "a list" | "a boolean" => {
                format!("{path} has the wrong JSON type (expected {expected})")
            }
            _ => format!("{path} has the wrong JSON type"),
        };
    }
    if msg.starts_with("unknown variant") {
        // The values the schema allows come from the schema; the one given is not repeated.
        let allowed = msg.split_once("expected ").map_or("", |(_, e)| e);
        if allowed.len() <= 200
            && allowed
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || " `,_-".contains(c))
        {
            return format!("{path} is not a value the CDEvents schema allows ({allowed})");
        }
        return format!("{path} is not a value the CDEvents schema allows");
    }
    format!("{path} has an invalid value (an identifier, URI reference or timestamp)")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::payload::testing;
    use crate::verify::test_support::head;
    use serde_json::json;

    fn fixture(name: &str) -> Vec<u8> {
        testing::fixture("cdevents", name)
    }

    async fn complete(body: &[u8]) -> Result<(), Refusal> {
        testing::complete(&Cdevents, body).await
    }

    async fn reason(body: &[u8]) -> String {
        testing::refused(&Cdevents, body).await
    }

    fn v04() -> serde_json::Value {
        serde_json::from_slice(&fixture("artifact-published-0.4.1.json")).unwrap()
    }

    #[tokio::test]
    async fn spec_03_04_and_05_events_pass() {
        for name in [
            "artifact-published-0.4.1.json",
            "change-merged-0.4.1.json",
            "pipelinerun-finished-0.3.0.json",
            "service-deployed-0.5.0.json",
        ] {
            complete(&fixture(name))
                .await
                .unwrap_or_else(|r| panic!("{name}: {r}"));
        }
        // A custom event type is read with its content unchecked, as the Go SDK does.
        let mut custom = v04();
        custom["context"]["type"] = json!("dev.cdeventsx.mytool-thing.happened.0.1.0");
        custom["subject"]["content"] = json!({"anything": [1, 2]});
        complete(custom.to_string().as_bytes()).await.unwrap();
        assert_eq!(Cdevents.event_header(), Some("Ce-Type"));
        assert_eq!(Cdevents.delivery_id_headers(), ["Ce-Id"]);
        // Ce-Type is not compared with context.type, as in Flux.
        let h = head(&[("ce-type", "dev.cdevents.service.deployed.0.3.0")]);
        Cdevents
            .complete(&h, &fixture("change-merged-0.4.1.json"))
            .await
            .unwrap();
    }

    /// A spec 0.4 event of `ty` whose subject has no content.
    fn without_content(ty: &str, subject: &str) -> serde_json::Value {
        json!({"context": {"version": "0.4.1", "id": "1", "source": "/ci", "type": ty,
                           "timestamp": "2024-05-14T09:20:46.318Z"},
               "subject": {"id": "a", "type": subject}})
    }

    #[tokio::test]
    async fn a_subject_without_content_is_read_as_the_go_sdk_reads_it() {
        // The zero content: it passes where the schema requires no content field...
        let mut v = v04();
        v["subject"].as_object_mut().unwrap().remove("content");
        complete(v.to_string().as_bytes()).await.unwrap();
        v["subject"]["content"] = serde_json::Value::Null;
        complete(v.to_string().as_bytes()).await.unwrap();
        for (ty, subject) in [
            ("dev.cdevents.change.merged.0.2.0", "change"),
            ("dev.cdevents.pipelinerun.finished.0.2.0", "pipelineRun"),
            ("dev.cdevents.environment.created.0.2.0", "environment"),
            // Required, but the schema takes Go's empty strings.
            ("dev.cdevents.pipelinerun.started.0.2.0", "pipelineRun"),
        ] {
            complete(without_content(ty, subject).to_string().as_bytes())
                .await
                .unwrap_or_else(|r| panic!("{ty}: {r}"));
        }
        // ...and is refused, naming the field, where it requires one Go's zero value fails.
        let prefix = "cdevents payload is not a valid CDEvent: ";
        for (ty, subject, why) in [
            (
                "dev.cdevents.service.deployed.0.2.0",
                "service",
                "subject.content.artifactId is missing",
            ),
            (
                "dev.cdevents.artifact.signed.0.2.0",
                "artifact",
                "subject.content.signature is missing",
            ),
            (
                "dev.cdevents.ticket.updated.0.1.0",
                "ticket",
                "subject.content.uri is missing",
            ),
        ] {
            assert_eq!(
                reason(without_content(ty, subject).to_string().as_bytes()).await,
                format!("{prefix}{why}"),
                "{ty}"
            );
        }
        let mut deployed = without_content("dev.cdevents.service.deployed.0.2.0", "service");
        deployed["subject"]["content"] =
            json!({"artifactId": "pkg:oci/x@sha256%3Aab", "environment": {"id": 5}});
        assert_eq!(
            reason(deployed.to_string().as_bytes()).await,
            format!("{prefix}subject.content.environment.id has the wrong JSON type (expected a string)")
        );
        deployed["subject"]["content"]["environment"] = json!({"source": "/x"});
        assert_eq!(
            reason(deployed.to_string().as_bytes()).await,
            format!("{prefix}subject.content.environment.id is missing")
        );
        let mut finished =
            without_content("dev.cdevents.testcaserun.finished.0.2.0", "testCaseRun");
        finished["subject"]["content"] =
            json!({"environment": {"id": "e"}, "outcome": "secret-looking"});
        assert_eq!(
            reason(finished.to_string().as_bytes()).await,
            format!("{prefix}subject.content.outcome is not a value the CDEvents schema allows (one of `pass`, `fail`, `cancel`, `error`)")
        );
    }

    #[tokio::test]
    async fn the_search_for_the_field_is_bounded() {
        let prefix = "cdevents payload is not a valid CDEvent: ";
        // Past SEARCH_LIMIT, the part is named, not searched.
        let mut big = v04();
        big["subject"]["content"]["user"] = json!(5);
        big["subject"]["content"]["sbom"] = json!({"uri": "x".repeat(SEARCH_LIMIT)});
        assert_eq!(
            reason(big.to_string().as_bytes()).await,
            format!("{prefix}subject.content or a field in it has the wrong JSON type (expected a string)")
        );
        // Wide and deep within the limit: the reads stop at SEARCH_READS.
        let leaf = json!({"a": 1});
        let level = |inner: &serde_json::Value| {
            serde_json::Value::Array((0..SEARCH_WIDTH).map(|_| inner.clone()).collect())
        };
        let wide = level(&level(&leaf));
        assert!(wide.to_string().len() <= SEARCH_LIMIT);
        let reads = Cell::new(0);
        let unchanged = |_: &serde_json::Value| {
            reads.set(reads.get() + 1);
            Some("missing field `b`".to_string())
        };
        let budget = Cell::new(SEARCH_READS);
        let counted = |v: &serde_json::Value| {
            budget.set(budget.get().saturating_sub(1));
            unchanged(v)
        };
        let found = find_missing(
            "part",
            &wide,
            &counted,
            "b",
            "missing field `b`",
            SEARCH_DEPTH,
            &budget,
        );
        assert_eq!(found, None);
        assert!(reads.get() <= SEARCH_READS, "{}", reads.get());
        let (path, _) = locate(
            "part".into(),
            &wide,
            &counted,
            "invalid type: integer `1`, expected a string".into(),
            SEARCH_DEPTH,
            &budget,
        );
        assert_eq!(path, "part or a field in it");
        assert!(reads.get() <= SEARCH_READS, "{}", reads.get());
    }

    #[tokio::test]
    async fn bodies_that_are_not_cdevents_are_refused_without_quoting_them() {
        assert_eq!(
            reason(b"").await,
            "cdevents payload is empty: expected a JSON object"
        );
        assert_eq!(
            reason(b"type=dev.cdevents").await,
            "cdevents payload is not JSON: expected ident at line 1 column 2"
        );
        for body in [&b"null"[..], b"[]", b"\"dev.cdevents.change.merged.0.2.0\""] {
            assert_eq!(
                reason(body).await,
                "cdevents payload is not a valid CDEvent: the body must be a JSON object"
            );
        }
        let trailing = format!("{} {{}}", v04());
        assert!(reason(trailing.as_bytes())
            .await
            .starts_with("cdevents payload has data after its JSON value"));

        let prefix = "cdevents payload is not a valid CDEvent: ";
        let mutate = |f: &dyn Fn(&mut serde_json::Value)| {
            let mut v = v04();
            f(&mut v);
            v.to_string()
        };
        let v05 = |version: &str| {
            let mut v: serde_json::Value =
                serde_json::from_slice(&fixture("service-deployed-0.5.0.json")).unwrap();
            v["context"]["specversion"] = json!(version);
            v.to_string()
        };
        let cases: Vec<(String, &str)> = vec![
            (json!({}).to_string(), "context is missing"),
            (
                json!({"context": {"id": "1"}, "subject": {}}).to_string(),
                "context.type is missing",
            ),
            (
                json!({"context": {"id": "1"}, "subject": 7}).to_string(),
                "subject has the wrong JSON type (expected an object)",
            ),
            (
                mutate(&|v| v["context"]["version"] = json!(4)),
                "context has no spec version (`version` up to 0.4, `specversion` from 0.5)",
            ),
            (
                v05("0.6.0"),
                "its CDEvents spec version is not one fluxgate reads (0.3, 0.4, 0.5)",
            ),
            // A 0.4 context under 0.5's key name.
            (
                mutate(&|v| {
                    let c = v["context"].as_object_mut().unwrap();
                    let version = c.remove("version").unwrap();
                    c.insert("specversion".into(), version);
                }),
                "context has a field the CDEvents schema does not define",
            ),
            (
                mutate(&|v| {
                    v.as_object_mut().unwrap().remove("subject");
                }),
                "subject is missing",
            ),
            (
                mutate(&|v| {
                    v["context"].as_object_mut().unwrap().remove("timestamp");
                }),
                "context.timestamp is missing",
            ),
            (
                mutate(&|v| v["context"]["type"] = json!("dev.cdevents.secret-looking.x")),
                "context.type is not {tld}.{domain}.{subject}.{predicate}.{major}.{minor}.{patch}",
            ),
            (
                mutate(&|v| v["context"]["type"] = json!("com.example.artifact.published.0.2.0")),
                "context.type is neither dev.cdevents.… nor a custom dev.cdeventsx.… type",
            ),
            (
                mutate(&|v| v["context"]["type"] = json!("dev.cdevents.artifact.published.9.9.9")),
                "context.type is not an event type of CDEvents spec 0.3, 0.4 or 0.5",
            ),
            (
                mutate(&|v| v["context"]["secret-looking-key"] = json!("x")),
                "context has a field the CDEvents schema does not define",
            ),
            (
                mutate(&|v| v["subject"]["content"]["secret-looking-key"] = json!("x")),
                "subject.content has a field the CDEvents schema does not define",
            ),
            (
                mutate(&|v| v["context"]["id"] = json!(271069)),
                "context.id has the wrong JSON type (expected a string)",
            ),
            (
                mutate(&|v| v["context"]["timestamp"] = json!("yesterday")),
                "context.timestamp has an invalid value (an identifier, URI reference or timestamp)",
            ),
            (
                mutate(&|v| v["subject"]["content"] = json!("secret-looking")),
                "subject.content has the wrong JSON type (expected an object)",
            ),
            (
                mutate(&|v| v["subject"]["content"]["user"] = json!(5)),
                "subject.content.user has the wrong JSON type (expected a string)",
            ),
            (
                mutate(&|v| v["subject"]["content"]["sbom"] = json!({})),
                "subject.content.sbom.uri is missing",
            ),
            (
                mutate(&|v| v["subject"]["content"]["sbom"] = json!({"uri": ["secret-looking"]})),
                "subject.content.sbom.uri has the wrong JSON type (expected a string)",
            ),
            (
                mutate(&|v| {
                    v["subject"].as_object_mut().unwrap().remove("id");
                }),
                "subject.id is missing",
            ),
            (
                mutate(&|v| v["subject"]["id"] = json!(42)),
                "subject.id has the wrong JSON type (expected a string)",
            ),
            (
                mutate(&|v| v["subject"]["source"] = json!(42)),
                "subject.source has the wrong JSON type (expected a string)",
            ),
            (
                mutate(&|v| {
                    v["subject"].as_object_mut().unwrap().remove("type");
                }),
                "subject.type is missing",
            ),
            (
                mutate(&|v| v["subject"]["type"] = json!("secret-looking")),
                "subject.type is not \"artifact\", the subject of context.type",
            ),
            (
                mutate(&|v| v["context"]["version"] = json!("9.0.0")),
                "its CDEvents spec version is not one fluxgate reads (0.3, 0.4, 0.5)",
            ),
        ];
        for (body, why) in cases {
            let got = reason(body.as_bytes()).await;
            assert_eq!(got, format!("{prefix}{why}"), "{body}");
            assert!(!got.contains("secret-looking"), "{got}");
        }
    }
}
