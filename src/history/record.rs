//! One record of the history, and what a query selects.

use crate::relay::queue::Outcome;
use crate::relay::target::{Select, Target};
use serde::{Deserialize, Serialize};

/// What happened to one request that reached a receiver. Never a body, a token, a signature
/// or a hook path.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Record {
    /// The history's own id (nanoseconds since 1970, unique in this history).
    pub id: String,
    /// When it was answered, RFC 3339.
    pub time: String,
    /// The receiver's label, `namespace/name`.
    pub receiver: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub client: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    pub status: u16,
    /// As in the log and the metrics: relayed, queued, bad_signature, relay_refused, …
    pub outcome: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Whether it passed verification: only such a delivery can be redelivered.
    pub verified: bool,
    /// The requestedAt value of its patches.
    #[serde(rename = "requestedAt", skip_serializing_if = "Option::is_none")]
    pub requested_at: Option<String>,
    pub targets: Vec<TargetResult>,
    /// For `fluxgate redeliver`: the record this one ran again.
    #[serde(rename = "redeliveryOf", skip_serializing_if = "Option::is_none")]
    pub redelivery_of: Option<String>,
}

/// What the relay did for one target of a delivery.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct TargetResult {
    /// Which cluster the target is in; "default" until fluxgate serves several.
    pub cluster: String,
    pub kind: String,
    pub namespace: String,
    /// The object's name, or its label selector as `app=web`.
    pub name: String,
    /// patched, coalesced, queued, refused, filter_failed, dropped or unmatched.
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub patched: Vec<String>,
    /// Objects a resource filter left alone.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub filtered: Vec<String>,
    /// For each of `filtered`, the expression that turned it down, as `key = source`.
    #[serde(rename = "filteredBy", skip_serializing_if = "Vec::is_empty")]
    pub filtered_by: Vec<String>,
    /// When this state was reached, RFC 3339.
    pub at: String,
}

/// The filters of `GET /deliveries`.
#[derive(Debug, Default, Clone)]
pub struct Query {
    pub receiver: Option<String>,
    pub outcome: Option<String>,
    /// Only records at or after this time (RFC 3339).
    pub since: Option<time::OffsetDateTime>,
    pub limit: Option<usize>,
}

impl Query {
    pub fn matches(&self, r: &Record) -> bool {
        self.receiver.as_ref().is_none_or(|x| *x == r.receiver)
            && self.outcome.as_ref().is_none_or(|x| *x == r.outcome)
            && self
                .since
                .is_none_or(|s| parse_time(&r.time).is_some_and(|t| t >= s))
    }
}

pub fn parse_time(s: &str) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
}

pub fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Nanoseconds since 1970, strictly increasing in this process (the relay's generations
/// count the same way, from the same clock).
pub(super) fn next_id() -> String {
    crate::relay::job::next_generation().to_string()
}

fn clip(s: &mut String, n: usize) {
    if let Some((i, _)) = s.char_indices().nth(n) {
        s.truncate(i);
        s.push('…');
    }
}

impl Record {
    /// Bounds what a sender controls, so a record's size is bounded whatever it sent.
    pub(super) fn clip(&mut self) {
        for s in [&mut self.reason, &mut self.delivery, &mut self.event]
            .into_iter()
            .flatten()
        {
            clip(s, 512);
        }
        for t in &mut self.targets {
            if let Some(d) = &mut t.detail {
                clip(d, 512);
            }
        }
    }

    /// The outcome once every target is settled: relayed when all were patched (or coalesced,
    /// filtered, unmatched), relay_refused when one was refused for good, queued while one
    /// waits. Answers that were not about the relay keep their outcome.
    pub fn settle(&mut self) {
        if !matches!(
            self.outcome.as_str(),
            "queued" | "relayed" | "relay_refused"
        ) {
            return;
        }
        let states = || self.targets.iter().map(|t| t.state.as_str());
        self.outcome = if states().any(|s| matches!(s, "refused" | "filter_failed" | "dropped")) {
            "relay_refused"
        } else if states().any(|s| s == "queued") {
            "queued"
        } else {
            "relayed"
        }
        .into();
    }
}

impl TargetResult {
    /// A target as named in the configuration, before anything happened to it.
    pub fn of(target: &Target) -> Self {
        TargetResult {
            cluster: "default".into(),
            kind: target.kind.clone(),
            namespace: target.namespace.clone(),
            name: match &target.select {
                Select::Name(n) => n.clone(),
                Select::Labels(_) => target.label_selector().unwrap_or_default(),
            },
            state: "queued".into(),
            at: now(),
            ..TargetResult::default()
        }
    }

    /// What an outcome of the relay means for this target. `requested_at` is the delivery's
    /// own: a patch with a later one took the delivery in (coalesced).
    pub fn with(mut self, outcome: Option<&Outcome>, requested_at: &str) -> Self {
        self.at = now();
        let (state, detail) = match outcome {
            None => ("queued", Some("waiting for the Kubernetes API".to_string())),
            Some(Outcome::Patched {
                patched,
                filtered,
                unmatched,
                filtered_by,
                at,
            }) => {
                self.filtered_by = filtered_by.clone();
                self.patched = patched.iter().map(|p| p.name.clone()).collect();
                self.filtered = filtered.iter().map(|p| p.name.clone()).collect();
                if *unmatched {
                    (
                        "unmatched",
                        Some("the label selector matched no object".into()),
                    )
                } else if at != requested_at {
                    (
                        "coalesced",
                        Some(format!("into the patch with requestedAt {at}")),
                    )
                } else if self.patched.is_empty() && !self.filtered.is_empty() {
                    ("filtered", Some("every object was filtered out".into()))
                } else {
                    ("patched", None)
                }
            }
            Some(Outcome::Refused(e)) => ("refused", Some(e.to_string())),
            Some(Outcome::FilterFailed(why)) => ("filter_failed", Some(why.clone())),
            Some(Outcome::Dropped(why)) => ("dropped", Some(why.clone())),
        };
        self.state = state.into();
        self.detail = detail;
        self
    }
}
