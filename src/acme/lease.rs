//! The Lease replicas take turns through, with client-go leader election's semantics: the
//! holder (`holderIdentity`) renews `renewTime` while it orders, within `leaseDurationSeconds`;
//! another replica takes over only a Lease released (no holder) or expired; every write carries
//! the resourceVersion it read, so of two replicas taking it at once one gets 409 Conflict and
//! sees the other as the holder.
//!
//! Expiry is judged as client-go does, by this replica's own clock: a Lease is expired when its
//! holder and renewTime have not changed for `leaseDurationSeconds` since this replica first
//! saw them, so clocks that disagree between machines do not matter.
//!
//! The Lease's annotations carry what replicas tell each other (the Lease, unlike the Secrets,
//! is written by every replica anyway):
//! - `acme.fluxgate.dev/challenges`: the answers to the order in flight (JSON [`Challenges`]),
//!   written by the holder before it asks the CA to validate;
//! - `acme.fluxgate.dev/replicas`: each replica's last sign of life and the challenges it
//!   answers (JSON: identity → [`Seen`]), so the holder can wait for them;
//! - `acme.fluxgate.dev/retry-at`: after a failed order, when the next one may be tried, so
//!   that the replicas do not each hit the CA in turn.

use super::Challenges;
use crate::relay::kube::ApiError;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::PostParams;
use kube::{Api, Client};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const CHALLENGES: &str = "acme.fluxgate.dev/challenges";
pub const REPLICAS: &str = "acme.fluxgate.dev/replicas";
pub const RETRY_AT: &str = "acme.fluxgate.dev/retry-at";

/// How long a holder that stops renewing keeps the Lease: an order renews it every third of
/// this, so only a replica that died (or lost the API) lets it expire.
pub const DURATION: Duration = Duration::from_secs(30);
/// How often a replica says it is alive, and how long after its last word it is waited for.
pub const PRESENCE_EVERY: Duration = Duration::from_secs(30);
pub const PRESENCE_ALIVE: Duration = Duration::from_secs(90);
/// Entries of replicas silent this long are dropped, and at most this many are kept, so the
/// annotation stays small whatever happens.
const PRESENCE_FORGET: Duration = Duration::from_secs(600);
const MAX_REPLICAS: usize = 64;
/// Writes retried after a 409 from another replica's write in between.
const CONFLICT_RETRIES: usize = 8;

/// One replica's entry in `acme.fluxgate.dev/replicas`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    /// Unix seconds of its last write.
    pub seen: i64,
    /// The id of the challenges it answers, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack: Option<String>,
}

/// What a change to the Lease decided.
enum Edit {
    Write,
    Skip,
    Refuse(String),
}

/// Why a change was not made.
#[derive(Debug)]
pub enum LeaseError {
    /// Another replica holds it: its identity.
    Held(String),
    /// The API refused or could not be reached.
    Api(String),
}

impl std::fmt::Display for LeaseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LeaseError::Held(h) => write!(f, "the Lease is held by {h}"),
            LeaseError::Api(e) => f.write_str(e),
        }
    }
}

pub struct LeaseLock {
    api: Api<Lease>,
    /// `Lease flux-system/fluxgate-acme`, for messages.
    label: String,
    name: String,
    identity: String,
    /// The holder and renewTime last seen, and when this replica first saw them.
    observed: Mutex<Option<(String, Instant)>>,
}

pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn micro_now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

fn holder(l: &Lease) -> &str {
    l.spec
        .as_ref()
        .and_then(|s| s.holder_identity.as_deref())
        .unwrap_or("")
}

fn annotation<'a>(l: &'a Lease, key: &str) -> Option<&'a str> {
    l.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

fn set_annotation(l: &mut Lease, key: &str, value: Option<String>) {
    let a = l.metadata.annotations.get_or_insert_with(BTreeMap::new);
    match value {
        Some(v) => a.insert(key.to_string(), v),
        None => a.remove(key),
    };
}

/// The challenges the holder published, if any (and readable).
pub fn challenges(l: &Lease) -> Option<Challenges> {
    serde_json::from_str(annotation(l, CHALLENGES)?).ok()
}

pub fn replicas(l: &Lease) -> BTreeMap<String, Seen> {
    annotation(l, REPLICAS)
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or_default()
}

/// When the last failed order asked the next to wait until (unix seconds).
pub fn retry_at(l: &Lease) -> Option<i64> {
    annotation(l, RETRY_AT)?.parse().ok()
}

/// Tells why a read or write of an object failed, and for the two answers an operator must act
/// on (missing, forbidden) what to do.
pub fn explain(e: ApiError, verb: &str, label: &str) -> String {
    match e.code() {
        Some(404) => format!(
            "{label} does not exist: fluxgate only gets and updates it; create it (empty) with the deploy/acme component, see its objects.yaml"
        ),
        Some(403) => format!(
            "the service account may not {verb} {label}: grant it with the deploy/acme component's Role (resourceNames must name it): {e}"
        ),
        _ => format!("cannot {verb} {label}: {e}"),
    }
}

impl LeaseLock {
    pub fn new(client: Client, namespace: &str, name: &str, identity: &str) -> Self {
        LeaseLock {
            api: Api::namespaced(client, namespace),
            label: format!("Lease {namespace}/{name}"),
            name: name.to_string(),
            identity: identity.to_string(),
            observed: Mutex::new(None),
        }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    pub async fn read(&self) -> Result<Lease, String> {
        let l = self
            .api
            .get(&self.name)
            .await
            .map_err(|e| explain(ApiError::from(e), "get", &self.label))?;
        self.observe(&l);
        Ok(l)
    }

    /// Notes the holder and renewTime of `l`; true when the Lease is free to take: released,
    /// ours, or unchanged for longer than its duration since this replica first saw it so.
    pub fn observe(&self, l: &Lease) -> bool {
        let h = holder(l);
        if h.is_empty() || h == self.identity {
            return true;
        }
        let spec = l.spec.as_ref();
        let renewed = spec
            .and_then(|s| s.renew_time.as_ref())
            .map(|t| t.0.to_string())
            .unwrap_or_default();
        let duration = spec
            .and_then(|s| s.lease_duration_seconds)
            .map_or(DURATION, |s| Duration::from_secs(s.max(1) as u64));
        let key = format!("{h}\n{renewed}");
        let mut o = self.observed.lock().unwrap_or_else(|p| p.into_inner());
        match o.as_ref() {
            Some((k, at)) if *k == key => at.elapsed() > duration,
            _ => {
                *o = Some((key, Instant::now()));
                false
            }
        }
    }

    /// Reads the latest Lease, lets `change` decide, and writes it back with the version read;
    /// a 409 (another replica wrote in between) starts over from a fresh read.
    async fn edit(
        &self,
        mut change: impl FnMut(&mut Lease, bool) -> Edit,
    ) -> Result<Lease, LeaseError> {
        for _ in 0..CONFLICT_RETRIES {
            let mut l = self.read().await.map_err(LeaseError::Api)?;
            let free = self.observe(&l);
            match change(&mut l, free) {
                Edit::Skip => return Ok(l),
                Edit::Refuse(h) => return Err(LeaseError::Held(h)),
                Edit::Write => {}
            }
            match self
                .api
                .replace(&self.name, &PostParams::default(), &l)
                .await
            {
                Ok(written) => {
                    self.observe(&written);
                    return Ok(written);
                }
                Err(e) => {
                    let e = ApiError::from(e);
                    if e.code() != Some(409) {
                        return Err(LeaseError::Api(explain(e, "update", &self.label)));
                    }
                }
            }
        }
        Err(LeaseError::Api(format!(
            "cannot update {}: other replicas kept writing it",
            self.label
        )))
    }

    /// Takes the Lease if it is free. `Held` names the replica that has it.
    pub async fn acquire(&self) -> Result<(), LeaseError> {
        let me = self.identity.clone();
        self.edit(|l, free| {
            let before = holder(l).to_string();
            if !free {
                return Edit::Refuse(before);
            }
            let spec = l.spec.get_or_insert_with(Default::default);
            let now = micro_now();
            if before != me {
                spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
                spec.acquire_time = Some(now.clone());
                // Left by a holder that died mid-order: nobody answers them any more.
                set_annotation(l, CHALLENGES, None);
            }
            let spec = l.spec.get_or_insert_with(Default::default);
            spec.holder_identity = Some(me.clone());
            spec.lease_duration_seconds = Some(DURATION.as_secs() as i32);
            spec.renew_time = Some(now);
            Edit::Write
        })
        .await
        .map(|_| ())
    }

    /// Renews the Lease while this replica orders; `Held` when it was lost meanwhile.
    pub async fn renew(&self) -> Result<(), LeaseError> {
        let me = self.identity.clone();
        self.edit(|l, _| {
            if holder(l) != me {
                return Edit::Refuse(holder(l).to_string());
            }
            l.spec.get_or_insert_with(Default::default).renew_time = Some(micro_now());
            Edit::Write
        })
        .await
        .map(|_| ())
    }

    /// Publishes the challenges of this replica's order (it must hold the Lease).
    pub async fn publish(&self, c: &Challenges) -> Result<(), LeaseError> {
        let me = self.identity.clone();
        let json = serde_json::to_string(c).map_err(|e| LeaseError::Api(e.to_string()))?;
        self.edit(|l, _| {
            if holder(l) != me {
                return Edit::Refuse(holder(l).to_string());
            }
            set_annotation(l, CHALLENGES, Some(json.clone()));
            l.spec.get_or_insert_with(Default::default).renew_time = Some(micro_now());
            Edit::Write
        })
        .await
        .map(|_| ())
    }

    /// Gives the Lease up as client-go does (no holder, a 1 s duration), withdrawing the
    /// challenges; after a failure, `retry_at` tells the others when the next order may go.
    pub async fn release(&self, retry_at: Option<i64>) -> Result<(), LeaseError> {
        let me = self.identity.clone();
        self.edit(|l, _| {
            if holder(l) != me {
                return Edit::Skip;
            }
            set_annotation(l, CHALLENGES, None);
            set_annotation(l, RETRY_AT, retry_at.map(|t| t.to_string()));
            let spec = l.spec.get_or_insert_with(Default::default);
            spec.holder_identity = Some(String::new());
            spec.lease_duration_seconds = Some(1);
            spec.renew_time = Some(micro_now());
            Edit::Write
        })
        .await
        .map(|_| ())
    }

    /// Says this replica is alive and which challenges it answers. Written only when that
    /// changes or the last word is getting old, so replicas do not write at every poll.
    pub async fn sign(&self, ack: Option<&str>) -> Result<(), LeaseError> {
        let me = self.identity.clone();
        self.edit(|l, _| {
            let now = now_unix();
            let mut all = replicas(l);
            let fresh = all.get(&me).is_some_and(|s| {
                s.ack.as_deref() == ack && now - s.seen < PRESENCE_EVERY.as_secs() as i64
            });
            if fresh {
                return Edit::Skip;
            }
            all.retain(|_, s| now - s.seen < PRESENCE_FORGET.as_secs() as i64);
            all.insert(
                me.clone(),
                Seen {
                    seen: now,
                    ack: ack.map(str::to_string),
                },
            );
            while all.len() > MAX_REPLICAS {
                let oldest = all
                    .iter()
                    .min_by_key(|(_, s)| s.seen)
                    .map(|(k, _)| k.clone());
                match oldest {
                    Some(k) if k != me => all.remove(&k),
                    _ => break,
                };
            }
            set_annotation(l, REPLICAS, serde_json::to_string(&all).ok());
            Edit::Write
        })
        .await
        .map(|_| ())
    }

    /// Waits until every other replica alive has acknowledged challenges `id`, at most
    /// `limit`. Returns those that had not by then (the order goes on: a replica that died
    /// without a word cannot hold up renewals for ever).
    pub async fn wait_acks(&self, id: &str, limit: Duration) -> Result<Vec<String>, String> {
        let until = Instant::now() + limit;
        loop {
            let l = self.read().await?;
            let now = now_unix();
            let missing: Vec<String> = replicas(&l)
                .into_iter()
                .filter(|(who, s)| {
                    *who != self.identity
                        && now - s.seen < PRESENCE_ALIVE.as_secs() as i64
                        && s.ack.as_deref() != Some(id)
                })
                .map(|(who, _)| who)
                .collect();
            if missing.is_empty() || Instant::now() >= until {
                return Ok(missing);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
