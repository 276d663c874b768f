//! The relay: turns a verified delivery into "reconcile now" jobs, one per target, kept in a
//! durable queue until the Kubernetes API has accepted them.

pub mod events;
pub mod filter;
pub mod forward;
pub mod job;
pub mod kube;
pub mod queue;
pub mod store;
pub mod target;

use self::filter::Filter;
use self::kube::KubeApi;
use self::queue::Outcome;
use self::target::Target;
use crate::fleet::{ClusterId, Fleet};
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

/// How a cluster's queue treats its API server; each cluster's queue has its own copy.
#[derive(Debug, Clone)]
pub struct QueueSettings {
    /// Patches in flight at once, per cluster.
    pub max_in_flight: usize,
    /// A target is patched at most once per this interval; deliveries in between coalesce.
    pub min_interval: Duration,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub max_age: Duration,
    /// 0: no limit.
    pub max_attempts: u32,
}

/// One object that was asked to reconcile (or that a filter left alone).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Patched {
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

/// One job of a delivery: a target in a cluster, and its outcome if known by the answer.
pub struct Reached {
    pub cluster: ClusterId,
    /// The target's position in the receiver's targets.
    pub target: usize,
    /// `None` where the job is still queued.
    pub outcome: Option<Outcome>,
}

/// What is known of a delivery's jobs when it is answered.
pub struct Delivered {
    pub requested_at: String,
    /// Target by target, and for each its clusters in fleet order.
    pub results: Vec<Reached>,
    /// Where an outcome is `None`: its position in `results` and where its outcome will
    /// come, for the delivery history to follow the job after the answer.
    pub pending: Vec<(usize, oneshot::Receiver<Outcome>)>,
}

pub struct Relay {
    fleet: Arc<Fleet>,
    wait: Duration,
}

impl Relay {
    pub fn new(fleet: Arc<Fleet>, wait: Duration) -> Self {
        Relay { fleet, wait }
    }

    /// The home cluster's API (forward mode goes through each cluster's own).
    pub fn api(&self) -> &KubeApi {
        &self.fleet.home().api
    }

    /// Whether deliveries should say what the Events will name (`relay.events`).
    pub fn writes_events(&self) -> bool {
        self.api().events().is_some()
    }

    pub fn fleet(&self) -> &Arc<Fleet> {
        &self.fleet
    }

    /// Queues one job per target and cluster it reaches (durably, when the queue is), each
    /// cluster in its own queue, and waits up to `relay.wait` for them. `filters` is empty
    /// when no target has any, or holds each target's filter in order; `reach` holds each
    /// target's clusters; `note` is what the targets' Events say, with `relay.events` on. An
    /// error means it could not be queued at all.
    pub async fn deliver(
        &self,
        targets: &[Arc<Target>],
        filters: &[Option<Arc<Filter>>],
        reach: &[Arc<[ClusterId]>],
        note: Option<events::Note>,
    ) -> Result<Delivered, String> {
        let generation = job::next_generation();
        if let (Some(recorder), Some(note)) = (self.api().events(), note) {
            recorder.note(targets, &job::requested_at(generation), note);
        }
        // Not waiting means not touching the timer at all: tokio rounds a deadline of "now"
        // up to its next millisecond tick, which would hold every answer for up to 1 ms.
        let wait = !self.wait.is_zero();
        // Per cluster: the positions of the targets it receives.
        let mut parts: Vec<(ClusterId, Vec<usize>)> = Vec::new();
        for (i, clusters) in reach.iter().enumerate().take(targets.len()) {
            for &c in clusters.iter() {
                match parts.iter_mut().find(|(id, _)| *id == c) {
                    Some((_, v)) => v.push(i),
                    None => parts.push((c, vec![i])),
                }
            }
        }
        let submits = parts.iter().map(|(c, idx)| async move {
            let Some(cluster) = self.fleet.cluster(*c) else {
                return Ok(Vec::new());
            };
            let ts: Vec<Arc<Target>> = idx.iter().map(|&i| targets[i].clone()).collect();
            let fs: Vec<Option<Arc<Filter>>> = if filters.is_empty() {
                Vec::new()
            } else {
                idx.iter()
                    .map(|&i| filters.get(i).cloned().flatten())
                    .collect()
            };
            // Always with waiters: the delivery history follows what is still queued.
            cluster.queue.submit(&ts, &fs, generation, true).await
        });
        let waiting = futures::future::join_all(submits).await;
        let deadline = tokio::time::Instant::now() + self.wait;
        let mut results = Vec::new();
        let mut pending = Vec::new();
        for ((c, idx), rxs) in parts.iter().zip(waiting) {
            // One deadline for all: each cluster's jobs are waited on in turn, but the
            // clusters' queues work at once.
            let mut rxs = rxs?.into_iter();
            for &i in idx {
                let mut rx = rxs.next();
                let outcome = match rx.as_mut() {
                    Some(rx) if wait => tokio::time::timeout_at(deadline, rx)
                        .await
                        .ok()
                        .and_then(Result::ok),
                    _ => None,
                };
                if let (None, Some(rx)) = (&outcome, rx) {
                    pending.push(((*c, i), rx));
                }
                results.push(Reached {
                    cluster: *c,
                    target: i,
                    outcome,
                });
            }
        }
        results.sort_by_key(|r| (r.target, r.cluster));
        // Followed by position in the sorted results.
        let pending = pending
            .into_iter()
            .filter_map(|(key, rx)| {
                let at = results.iter().position(|r| (r.cluster, r.target) == key)?;
                Some((at, rx))
            })
            .collect();
        Ok(Delivered {
            requested_at: job::requested_at(generation),
            results,
            pending,
        })
    }
}
