//! A relay job: "reconcile this target, as of this delivery".

use super::filter::Filter;
use super::target::Target;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// One job per target, or per target and filter inputs. `generation` is the newest delivery's
/// time in nanoseconds since 1970; it only grows, and the patch carries it as the requestedAt
/// value, so a later patch is never older than a delivery it absorbed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// The cluster to patch in. Jobs stored by versions without clusters have none, and
    /// belong to `default`, which is also left out when stored, so they share their keys.
    #[serde(default = "default_cluster", skip_serializing_if = "is_default")]
    pub cluster: Arc<str>,
    /// Shared with the receiver: a delivery queues its targets without copying them.
    pub target: Arc<Target>,
    /// For a target with filters: which of its objects this delivery reconciles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<Arc<Filter>>,
    pub generation: u64,
    /// When the oldest delivery still waiting in this job arrived, for `max_age`.
    pub since: u64,
    pub attempts: u32,
}

/// What deliveries coalesce on: the target, and a filtered target's inputs. For a target
/// without filters the second part is `None`, and the key costs what the target alone did.
pub type JobKey = (Arc<Target>, Option<Arc<Filter>>);

fn default_cluster() -> Arc<str> {
    crate::fleet::DEFAULT.into()
}

fn is_default(c: &Arc<str>) -> bool {
    &**c == crate::fleet::DEFAULT
}

impl Job {
    /// A job for the `default` cluster.
    pub fn new(target: Arc<Target>, filter: Option<Arc<Filter>>, generation: u64) -> Self {
        Job {
            cluster: default_cluster(),
            target,
            filter,
            generation,
            since: generation,
            attempts: 0,
        }
    }

    pub fn queue_key(&self) -> JobKey {
        (self.target.clone(), self.filter.clone())
    }

    /// The job's key in the store, in one-to-one correspondence with its cluster and
    /// [`JobKey`]. `default`'s keys are those of versions without clusters; another cluster's
    /// start with its name and `@`, which no target key holds.
    pub fn key(&self) -> String {
        let own = match &self.filter {
            None => self.target.key(),
            Some(f) => format!("{}#{}", self.target.key(), f.id()),
        };
        if is_default(&self.cluster) {
            own
        } else {
            format!("{}@{own}", self.cluster)
        }
    }

    /// Takes in a later (or earlier, after a restart) copy of the same job.
    pub fn absorb(&mut self, other: &Job) {
        self.absorb_times(other.generation, other.since);
    }

    /// Takes in the stored copy of the same job, keeping its count of attempts.
    pub fn absorb_stored(&mut self, stored: &Stamp) {
        self.absorb_times(stored.generation, stored.since);
        self.attempts = stored.attempts;
    }

    fn absorb_times(&mut self, generation: u64, since: u64) {
        self.generation = self.generation.max(generation);
        self.since = self.since.min(since);
    }
}

/// What the store reads of a stored job to coalesce or remove it, without decoding its target
/// or compiling its filter again.
#[derive(Debug, Deserialize)]
pub struct Stamp {
    pub generation: u64,
    pub since: u64,
    pub attempts: u32,
}

/// The requestedAt value for a generation: RFC 3339 with nanoseconds, as `flux reconcile`
/// writes it.
pub fn requested_at(generation: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(generation))
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// The last generation handed out.
static LAST_GENERATION: AtomicU64 = AtomicU64::new(0);

/// Later generations are larger than `n`, whatever the clock says (a kept history's last id).
pub fn generation_after(n: u64) {
    LAST_GENERATION.fetch_max(n, Ordering::Relaxed);
}

/// Nanoseconds since 1970, strictly increasing across calls: Flux reconciles only when the
/// annotation changes, so two deliveries in the same nanosecond must still differ.
pub fn next_generation() -> u64 {
    // u64 nanoseconds since 1970 last until the year 2554.
    let now = u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos()).unwrap_or(0);
    let prev = LAST_GENERATION
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
            Some(now.max(last + 1))
        })
        .unwrap_or(now);
    now.max(prev + 1)
}

pub fn now_nanos() -> u64 {
    u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_stored_without_a_cluster_belongs_to_default_and_keys_carry_the_cluster() {
        let target = Arc::new(Target::git_repository(super::super::target::Select::Name(
            "app".into(),
        )));
        let job = Job::new(target, None, 5);
        let stored = serde_json::to_value(&job).unwrap();
        assert!(stored.get("cluster").is_none(), "{stored}");
        let old: Job = serde_json::from_value(stored).unwrap();
        assert_eq!(&*old.cluster, "default");
        assert_eq!(old.key(), job.target.key());
        let mut eu = job.clone();
        eu.cluster = "prod-eu".into();
        let back: Job = serde_json::from_slice(&serde_json::to_vec(&eu).unwrap()).unwrap();
        assert_eq!(&*back.cluster, "prod-eu");
        assert_eq!(back.key(), format!("prod-eu@{}", job.target.key()));
    }

    #[test]
    fn generations_increase_and_format_as_rfc3339() {
        let a = next_generation();
        let b = next_generation();
        assert!(b > a);
        let s = requested_at(b);
        assert!(s.ends_with('Z') && s.contains('T'), "{s}");
        time::OffsetDateTime::parse(&s, &time::format_description::well_known::Rfc3339).unwrap();
        assert_eq!(
            requested_at(1_700_000_000_123_456_789),
            "2023-11-14T22:13:20.123456789Z"
        );
    }
}
