//! The relay: turns a verified delivery into "reconcile now" jobs, one per target, kept in a
//! durable queue until the Kubernetes API has accepted them.

pub mod filter;
pub mod forward;
pub mod job;
pub mod kube;
pub mod queue;
pub mod store;
pub mod target;

use self::filter::Filter;
use self::kube::KubeApi;
use self::queue::{Outcome, Queue};
use self::target::Target;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

/// One object that was asked to reconcile (or that a filter left alone).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Patched {
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

/// What is known of a delivery's jobs when it is answered: the outcome of each target, or
/// `None` where the job is still queued.
pub struct Delivered {
    pub requested_at: String,
    /// In the order of the targets given to `deliver`.
    pub results: Vec<Option<Outcome>>,
    /// Where a result is `None`: its index and where its outcome will come, for the delivery
    /// history to follow the job after the answer.
    pub pending: Vec<(usize, oneshot::Receiver<Outcome>)>,
}

pub struct Relay {
    api: Arc<KubeApi>,
    pub queue: Arc<Queue>,
    wait: Duration,
}

impl Relay {
    pub fn new(api: Arc<KubeApi>, queue: Arc<Queue>, wait: Duration) -> Self {
        Relay { api, queue, wait }
    }

    pub fn api(&self) -> &KubeApi {
        &self.api
    }

    /// Queues the delivery (durably, when the queue is) and waits up to `relay.wait` for its
    /// jobs. `filters` is empty when no target has any, or holds each target's filter in
    /// order. An error means it could not be queued at all.
    pub async fn deliver(
        &self,
        targets: &[Arc<Target>],
        filters: &[Option<Arc<Filter>>],
    ) -> Result<Delivered, String> {
        let generation = job::next_generation();
        // Not waiting means not touching the timer at all: tokio rounds a deadline of "now"
        // up to its next millisecond tick, which would hold every answer for up to 1 ms.
        let wait = !self.wait.is_zero();
        let waiting = self
            .queue
            .submit(targets, filters, generation, true)
            .await?;
        let mut results = Vec::with_capacity(targets.len());
        let mut pending = Vec::new();
        let deadline = tokio::time::Instant::now() + self.wait;
        for (i, mut rx) in waiting.into_iter().enumerate() {
            let outcome = if wait {
                tokio::time::timeout_at(deadline, &mut rx)
                    .await
                    .ok()
                    .and_then(Result::ok)
            } else {
                None
            };
            if outcome.is_none() {
                pending.push((i, rx));
            }
            results.push(outcome);
        }
        Ok(Delivered {
            requested_at: job::requested_at(generation),
            results,
            pending,
        })
    }
}
