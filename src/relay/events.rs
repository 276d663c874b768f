//! `relay.events`: a Kubernetes Event on each patched object saying which delivery asked for
//! the reconcile, so `kubectl describe` and `flux events` answer "why did this reconcile?".
//!
//! Core `v1` Events, because that is what both read: `kubectl describe` searches them by
//! `involvedObject` field selectors and `flux events` lists `corev1.EventList`. Each patch gets
//! its own Event, created once and never updated, so the account needs `create` on events
//! and nothing else (kube's `Recorder` writes `events.k8s.io/v1` and aggregates with `patch`).
//!
//! Best-effort: the Event is written on its own task after the patch succeeded, so it never
//! delays or fails a delivery; a refusal is logged once per cause and counted.

use super::kube::{one_line, ApiError};
use super::target::Target;
use crate::metrics;
use kube::api::{Api, DynamicObject, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::Client;
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde_json::json;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

/// The Event's reason, as `kubectl describe` and `flux events` show it.
pub const REASON: &str = "ReconcileRequested";
/// `source.component` and `reportingComponent`.
pub const COMPONENT: &str = "fluxgate";
/// How much of a GitHub body is kept to find `ref` and `after`: GitHub writes them first.
pub const PUSH_HEAD_BYTES: usize = 4096;
/// Deliveries remembered per target until their patch: coalesced deliveries beyond this are
/// only counted by the one that is named.
const NOTES_PER_TARGET: usize = 16;
/// Distinct failure causes logged at warning level; later ones are only counted.
const CAUSES_LOGGED: usize = 64;

/// What an Event says about the delivery behind a patch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Note {
    /// `namespace/name` of the receiver.
    pub receiver: String,
    pub event: Option<String>,
    pub delivery: Option<String>,
    /// GitHub push: the pushed commit and ref, from the verified body.
    pub push: Push,
}

/// The two fields of a GitHub push payload an Event names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Push {
    pub after: Option<String>,
    pub git_ref: Option<String>,
}

/// The first bytes of a body, for `github_push`. Bounded whatever the body's size.
pub struct BodyHead(Vec<u8>);

impl BodyHead {
    pub fn new() -> Self {
        BodyHead(Vec::new())
    }

    pub fn update(&mut self, chunk: &[u8]) {
        let room = PUSH_HEAD_BYTES.saturating_sub(self.0.len());
        self.0.extend_from_slice(&chunk[..chunk.len().min(room)]);
    }

    /// Only to be called once the body is verified.
    pub fn push(&self) -> Push {
        github_push(&self.0)
    }
}

impl Default for BodyHead {
    fn default() -> Self {
        Self::new()
    }
}

/// `ref` and `after` from the start of a push payload, which may be cut anywhere: the
/// top-level object is read key by key and reading stops at the first error or when both are
/// known. A commit that is not hex, or a ref with control characters, is left out.
pub fn github_push(head: &[u8]) -> Push {
    let mut push = Push::default();
    let mut de = serde_json::Deserializer::from_slice(head);
    // A cut body ends in an error after the fields were read: what was read is kept.
    let _ = Fields(&mut push).deserialize(&mut de);
    push.after = push
        .after
        .filter(|a| a.len() >= 7 && a.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(|a| a[..7].to_string());
    push.git_ref = push
        .git_ref
        .filter(|r| r.len() <= 256 && !r.chars().any(char::is_control));
    push
}

struct Fields<'a>(&'a mut Push);

impl<'de> DeserializeSeed<'de> for Fields<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Fields<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "ref" => self.0.git_ref = Some(map.next_value()?),
                "after" => self.0.after = Some(map.next_value()?),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            if self.0.git_ref.is_some() && self.0.after.is_some() {
                break;
            }
        }
        Ok(())
    }
}

/// The Event's message.
pub fn message(note: Option<&Note>) -> String {
    let Some(n) = note else {
        // Queued before a restart: the job survived, the delivery's details did not.
        return "Reconcile requested by fluxgate for a delivery queued before a restart".into();
    };
    let mut m = format!("Reconcile requested by fluxgate receiver {}", n.receiver);
    if let Some(e) = &n.event {
        m.push_str(&format!(", event {e}"));
    }
    if let Some(d) = &n.delivery {
        m.push_str(&format!(", delivery {d}"));
    }
    match (&n.push.after, &n.push.git_ref) {
        (Some(c), Some(r)) => m.push_str(&format!(", commit {c} on {r}")),
        (Some(c), None) => m.push_str(&format!(", commit {c}")),
        (None, Some(r)) => m.push_str(&format!(", ref {r}")),
        (None, None) => {}
    }
    m
}

/// Per target, its newest deliveries: the requestedAt value each was queued with, and its note.
type Notes = HashMap<Arc<Target>, VecDeque<(String, Arc<Note>)>>;

/// Remembers the deliveries waiting for each target and writes the Events.
#[derive(Default)]
pub struct Recorder {
    /// Per target, the newest deliveries by requestedAt value: bounded by the configuration's
    /// targets times `NOTES_PER_TARGET`.
    notes: Mutex<Notes>,
    logged: Mutex<HashSet<String>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Recorder {
    pub fn new() -> Self {
        Self::default()
    }

    /// A delivery with this requestedAt value was queued for these targets.
    pub fn note(&self, targets: &[Arc<Target>], requested_at: &str, note: Note) {
        let note = Arc::new(note);
        let mut notes = lock(&self.notes);
        for t in targets {
            let q = notes.entry(t.clone()).or_default();
            if q.len() == NOTES_PER_TARGET {
                q.pop_front();
            }
            q.push_back((requested_at.to_string(), note.clone()));
        }
    }

    /// The delivery a patch with this requestedAt value stands for: the newest one it
    /// covers, since deliveries coalesce into the newest.
    fn find(&self, target: &Target, requested_at: &str) -> Option<Arc<Note>> {
        lock(&self.notes)
            .get(target)?
            .iter()
            .rev()
            .find(|(at, _)| at == requested_at)
            .map(|(_, n)| n.clone())
    }

    /// The patch of `object` (the API's answer) succeeded: writes its Event on a task of its
    /// own.
    pub fn patched(
        self: &Arc<Self>,
        client: Client,
        target: &Target,
        object: &DynamicObject,
        requested_at: &str,
    ) {
        let note = self.find(target, requested_at);
        let event = event(target, object, &message(note.as_deref()));
        let namespace = target.namespace.clone();
        let recorder = self.clone();
        tokio::spawn(async move {
            let gvk = GroupVersionKind::gvk("", "v1", "Event");
            let ar = ApiResource::from_gvk_with_plural(&gvk, "events");
            let api: Api<DynamicObject> = Api::namespaced_with(client, &namespace, &ar);
            match api.create(&PostParams::default(), &event).await {
                Ok(_) => {
                    metrics::get()
                        .kubernetes_events
                        .with_label_values(&["written"])
                        .inc();
                }
                Err(e) => recorder.failed(&ApiError::from(e)),
            }
        });
    }

    fn failed(&self, e: &ApiError) {
        metrics::get()
            .kubernetes_events
            .with_label_values(&["failed"])
            .inc();
        let cause = match e {
            ApiError::Refused { code, reason, .. } => format!("{code} {reason}"),
            ApiError::Unreachable(_) => "unreachable".into(),
        };
        let first = {
            let mut logged = lock(&self.logged);
            logged.len() < CAUSES_LOGGED && logged.insert(cause)
        };
        if first {
            tracing::warn!("cannot write the Kubernetes Event for a reconcile request (relay.events; the patch itself succeeded; further failures of this kind are only counted in fluxgate_kubernetes_events_total{{result=\"failed\"}}): {e}");
        } else {
            tracing::debug!("cannot write the Kubernetes Event for a reconcile request: {e}");
        }
    }
}

/// A core v1 Event on the patched object, named as client-go names them.
fn event(target: &Target, object: &DynamicObject, message: &str) -> DynamicObject {
    let now = time::OffsetDateTime::now_utc();
    let stamp = now
        .replace_nanosecond(0)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default();
    let name = object.metadata.name.clone().unwrap_or_default();
    // Object names are DNS subdomains of up to 253 characters; room is left for the suffix.
    let base: String = name.chars().take(200).collect();
    let event_name = format!("{base}.{:x}", now.unix_timestamp_nanos());
    let value = json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": event_name, "namespace": target.namespace},
        "involvedObject": {
            "apiVersion": target.api_version(),
            "kind": target.kind,
            "namespace": target.namespace,
            "name": name,
            "uid": object.metadata.uid,
            "resourceVersion": object.metadata.resource_version,
        },
        "reason": REASON,
        "message": one_line(message),
        "type": "Normal",
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "reportingInstance": hostname(),
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    });
    serde_json::from_value(value).expect("an Event is a valid object")
}

/// The pod's name in a cluster, the host's otherwise.
fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().chars().take(128).collect())
        .filter(|h: &String| !h.is_empty())
        .unwrap_or_else(|| COMPONENT.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const AFTER: &str = "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c";

    #[test]
    fn the_commit_and_ref_come_from_the_start_of_a_push_even_when_cut() {
        let body = format!(
            r#"{{"ref":"refs/heads/main","before":"{}","after":"{AFTER}","repository":{{"name":"app","big":"{}"}}}}"#,
            "0".repeat(40),
            "x".repeat(10_000)
        );
        let mut head = BodyHead::new();
        for chunk in body.as_bytes().chunks(1000) {
            head.update(chunk);
        }
        assert_eq!(head.0.len(), PUSH_HEAD_BYTES);
        let push = head.push();
        assert_eq!(push.after.as_deref(), Some("0d1a26e"));
        assert_eq!(push.git_ref.as_deref(), Some("refs/heads/main"));
    }

    #[test]
    fn odd_payloads_give_what_is_sound_or_nothing() {
        assert_eq!(github_push(b"not json"), Push::default());
        assert_eq!(github_push(b"[1,2]"), Push::default());
        let p = github_push(br#"{"zen":"x","after":"not-a-commit","ref":"a\nb"}"#);
        assert_eq!(p, Push::default());
        // A ping has neither; a tag push has both.
        let p = github_push(br#"{"after":"abcdef0123","ref":"refs/tags/v1"}"#);
        assert_eq!(p.after.as_deref(), Some("abcdef0"));
        assert_eq!(p.git_ref.as_deref(), Some("refs/tags/v1"));
    }

    #[test]
    fn the_message_names_receiver_event_delivery_and_commit() {
        let note = Note {
            receiver: "flux-system/github".into(),
            event: Some("push".into()),
            delivery: Some("d-1".into()),
            push: Push {
                after: Some("0d1a26e".into()),
                git_ref: Some("refs/heads/main".into()),
            },
        };
        assert_eq!(
            message(Some(&note)),
            "Reconcile requested by fluxgate receiver flux-system/github, event push, delivery d-1, commit 0d1a26e on refs/heads/main"
        );
        assert!(message(None).contains("before a restart"));
    }

    #[test]
    fn notes_are_found_by_requested_at_and_bounded() {
        let t = Arc::new(Target::git_repository(super::super::target::Select::Name(
            "app".into(),
        )));
        let r = Recorder::new();
        for i in 0..100 {
            let note = Note {
                delivery: Some(format!("d-{i}")),
                ..Note::default()
            };
            r.note(std::slice::from_ref(&t), &format!("at-{i}"), note);
        }
        assert_eq!(lock(&r.notes)[&t].len(), NOTES_PER_TARGET);
        assert_eq!(
            r.find(&t, "at-99").unwrap().delivery.as_deref(),
            Some("d-99")
        );
        assert!(r.find(&t, "at-1").is_none());
    }
}
