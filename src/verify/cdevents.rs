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
//!   unlike Go, a field the schema does not define is refused (the schemas forbid them).
//!
//! Flux does not compare `Ce-Type` with the body's `context.type`, and neither does fluxgate:
//! `Ce-Type` only feeds the `events` filter, case-insensitively.

use super::payload;
use super::{BodyCheck, Evidence, Verifier};
use crate::refusal::{Cause, Refusal};
use async_trait::async_trait;
use cdevents_sdk::CDEvent;
use http::HeaderMap;

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
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| payload::not_json(KIND, body, &e))?;
    if !value.is_object() {
        return Err(invalid("the body must be a JSON object"));
    }
    // Checked first: the SDK reads a context whose version it does not know as 0.5, and its
    // complaint (a missing `specversion`) would not say what is wrong.
    let context = &value["context"];
    if let Some(ty) = context["type"].as_str() {
        if !ty.starts_with("dev.cdevents.") && !ty.starts_with("dev.cdeventsx.") {
            return Err(invalid(
                "context.type is neither dev.cdevents.… nor a custom dev.cdeventsx.… type",
            ));
        }
    }
    if context.is_object() {
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
    }
    serde_json::from_value::<CDEvent>(value).map_err(|e| invalid(&why(&e)))?;
    Ok(())
}

fn invalid(why: &str) -> Refusal {
    Refusal::bad_request(
        Cause::MalformedRequest,
        format!("{KIND} payload is not a valid CDEvent: {why}"),
    )
}

/// The SDK's errors quote the offending value or key from the body; the reason keeps only
/// what kind of problem it is, and the name of a missing field, which comes from the schema.
fn why(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    let schema_name = |f: &&str| f.len() <= 40 && f.chars().all(|c| c.is_ascii_alphanumeric());
    if let Some(field) = msg
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next())
        .filter(schema_name)
    {
        format!("missing field `{field}`")
    } else if msg.starts_with("invalid context.type format") {
        "context.type is not {tld}.{domain}.{subject}.{predicate}.{major}.{minor}.{patch}".into()
    } else if msg.starts_with("unknown variant `dev.cdevents.") {
        "context.type is not an event type of CDEvents spec 0.3, 0.4 or 0.5".into()
    } else if msg.starts_with("unknown field") {
        "a field is not defined by the CDEvents schema".into()
    } else if msg.starts_with("invalid type") {
        "a field has the wrong JSON type".into()
    } else {
        "a field has an invalid value (an identifier, URI reference or timestamp)".into()
    }
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
            (json!({}).to_string(), "missing field `context`"),
            (
                json!({"context": {"id": "1"}, "subject": {}}).to_string(),
                "context has no spec version (`version` up to 0.4, `specversion` from 0.5)",
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
                "a field is not defined by the CDEvents schema",
            ),
            (
                mutate(&|v| {
                    v.as_object_mut().unwrap().remove("subject");
                }),
                "missing field `subject`",
            ),
            (
                mutate(&|v| {
                    v["context"].as_object_mut().unwrap().remove("timestamp");
                }),
                "missing field `timestamp`",
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
                "a field is not defined by the CDEvents schema",
            ),
            (
                mutate(&|v| v["context"]["id"] = json!(271069)),
                "a field has the wrong JSON type",
            ),
            (
                mutate(&|v| v["context"]["timestamp"] = json!("yesterday")),
                "a field has an invalid value (an identifier, URI reference or timestamp)",
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
