//! The delivery history: what happened to each request that reached a receiver, kept for the
//! people debugging "I pushed and nothing happened". The last `history.size` records are kept
//! in memory and, with `relay.queue_dir`, in a file beside the queue so a restart keeps them.
//! Bodies, tokens, signatures and hook paths are never part of a record: it holds the
//! receiver's label, the client's address, the provider's delivery id and event, the answer,
//! and per target what the relay did.
//!
//! The edge records a request once, when it is answered ([`History::add`]); the relay's later
//! progress on queued targets updates the record ([`History::update_target`]). The admin
//! listener, the CLI and the status page read it through [`History::list`], [`History::get`]
//! and [`History::subscribe`] only.

mod disk;
mod record;

pub use record::{now, parse_time, Query, Record, TargetResult};

use crate::relay::queue::Outcome;
use crate::relay::target::Target;
use crate::relay::Delivered;
use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{broadcast, oneshot};

/// The default number of records kept (`history.size`).
pub const DEFAULT_SIZE: usize = 1000;

/// Followers of queued targets at once: each waits on one job's outcome, so beyond this a
/// flood of deliveries to a down API server would hold memory for every one of them; past it
/// a record keeps saying "queued".
const MAX_FOLLOWING: usize = 10_000;

/// Records not yet sent to live streams; a stream that falls further behind skips ahead.
const STREAM_BUFFER: usize = 256;

pub struct History {
    records: Mutex<VecDeque<Arc<Record>>>,
    size: usize,
    live: broadcast::Sender<Arc<Record>>,
    disk: Option<disk::Writer>,
    /// Requests to paths no receiver serves: counted, not recorded one by one.
    unrouted: AtomicU64,
    following: AtomicUsize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl History {
    /// A history in memory only.
    pub fn memory(size: usize) -> Self {
        Self::with(size, VecDeque::new(), None)
    }

    /// A history kept in `dir` too, with the records a previous process left there.
    pub fn open(size: usize, dir: &Path) -> Result<Self, String> {
        let (kept, writer) = disk::open(dir, size)?;
        // New ids follow the kept ones even if the clock went back meanwhile, so the records
        // stay in the order of their ids (see `position`).
        if let Some(last) = kept.back().and_then(|r| r.id.parse().ok()) {
            crate::relay::job::generation_after(last);
        }
        Ok(Self::with(
            size,
            kept.into_iter().map(Arc::new).collect(),
            Some(writer),
        ))
    }

    fn with(size: usize, records: VecDeque<Arc<Record>>, disk: Option<disk::Writer>) -> Self {
        History {
            records: Mutex::new(records),
            size: size.max(1),
            live: broadcast::channel(STREAM_BUFFER).0,
            disk,
            unrouted: AtomicU64::new(0),
            following: AtomicUsize::new(0),
        }
    }

    /// Keeps a new record, dropping the oldest past the size, and tells the live streams.
    /// Returns its id.
    pub fn add(&self, mut record: Record) -> String {
        record.id = record::next_id();
        record.clip();
        let id = record.id.clone();
        self.store(Arc::new(record), true);
        id
    }

    fn store(&self, record: Arc<Record>, new: bool) {
        {
            let mut records = lock(&self.records);
            if new {
                records.push_back(record.clone());
                while records.len() > self.size {
                    records.pop_front();
                }
            } else if let Some(at) = position(&records, &record.id) {
                records[at] = record.clone();
            } else {
                // Dropped from the history meanwhile: nothing to update.
                return;
            }
        }
        if let Some(d) = &self.disk {
            d.write(&record);
        }
        let _ = self.live.send(record);
    }

    /// What the relay did later for one target of a recorded delivery.
    pub fn update_target(&self, id: &str, index: usize, result: TargetResult) {
        let found = {
            let records = lock(&self.records);
            position(&records, id).map(|at| (*records[at]).clone())
        };
        // Under a flood the record has often left the history before its targets settle.
        let Some(mut record) = found else {
            return;
        };
        let Some(t) = record.targets.get_mut(index) else {
            return;
        };
        *t = result;
        record.settle();
        record.clip();
        self.store(Arc::new(record), false);
    }

    /// What a job nobody waited for did (one resumed after a restart): every record still
    /// queued on that target, in that cluster, with a requestedAt at or before the job's,
    /// takes its outcome, as a waiting delivery's record would have.
    pub fn settle_unheard(
        &self,
        cluster: &str,
        target: &Target,
        generation: u64,
        outcome: &Outcome,
    ) {
        let me = TargetResult::of(target);
        let same = |t: &TargetResult| {
            t.state == "queued"
                && t.cluster == cluster
                && (&t.kind, &t.namespace, &t.name) == (&me.kind, &me.namespace, &me.name)
        };
        let covered = |r: &Record| {
            r.requested_at
                .as_deref()
                .and_then(parse_time)
                .is_some_and(|t| t.unix_timestamp_nanos() <= i128::from(generation))
        };
        let stale: Vec<Record> = lock(&self.records)
            .iter()
            .filter(|r| covered(r) && r.targets.iter().any(same))
            .map(|r| (**r).clone())
            .collect();
        for mut record in stale {
            let at = record.requested_at.clone().unwrap_or_default();
            for t in record.targets.iter_mut().filter(|t| same(t)) {
                *t = t.clone().with(Some(outcome), &at);
                if t.state == "patched" {
                    t.detail = Some("after waiting in the relay queue".into());
                }
            }
            record.settle();
            record.clip();
            self.store(Arc::new(record), false);
        }
    }

    /// One record, by its own id or, failing that, the newest with this provider delivery id
    /// (what GitHub's "Recent Deliveries" shows).
    pub fn get(&self, id: &str) -> Option<Arc<Record>> {
        let records = lock(&self.records);
        records
            .iter()
            .rev()
            .find(|r| r.id == id)
            .or_else(|| {
                records
                    .iter()
                    .rev()
                    .find(|r| r.delivery.as_deref() == Some(id))
            })
            .cloned()
    }

    /// The newest records first, as the query filters them.
    pub fn list(&self, q: &Query) -> Vec<Arc<Record>> {
        let records = lock(&self.records);
        records
            .iter()
            .rev()
            .filter(|r| q.matches(r))
            .take(q.limit.unwrap_or(self.size))
            .cloned()
            .collect()
    }

    /// New records and updates of recorded ones, as they happen.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Record>> {
        self.live.subscribe()
    }

    pub fn count_unrouted(&self) {
        self.unrouted.fetch_add(1, Ordering::Relaxed);
    }

    /// Requests to paths no receiver serves, since the start.
    pub fn unrouted(&self) -> u64 {
        self.unrouted.load(Ordering::Relaxed)
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// Follows the targets a delivery left queued when it was answered, and updates its
    /// record as each is patched, refused or dropped.
    pub fn follow(
        self: &Arc<Self>,
        id: String,
        requested_at: String,
        targets: &[TargetResult],
        pending: Vec<(usize, oneshot::Receiver<Outcome>)>,
    ) {
        if pending.is_empty() {
            return;
        }
        if self.following.fetch_add(1, Ordering::Relaxed) >= MAX_FOLLOWING {
            self.following.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        let history = self.clone();
        let at = requested_at;
        let base: Vec<_> = pending
            .iter()
            .map(|(i, _)| targets.get(*i).cloned().unwrap_or_default())
            .collect();
        tokio::spawn(async move {
            for ((i, rx), base) in pending.into_iter().zip(base) {
                // The sender goes only with its job: at a stop, or a job the queue gave up.
                let Ok(outcome) = rx.await else { continue };
                let mut t = base.with(Some(&outcome), &at);
                if t.state == "patched" {
                    t.detail = Some("after waiting in the relay queue".into());
                }
                history.update_target(&id, i, t);
            }
            history.following.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// Where the record with this id is. Records are kept in the order of their ids (each new id is
/// larger than any before it, see `record::next_id`), so this is a binary search: the relay
/// settles targets in bursts, often of records already gone, and a scan of the whole history
/// for each of them was a visible share of a delivery's CPU under load.
fn position(records: &VecDeque<Arc<Record>>, id: &str) -> Option<usize> {
    let key: u64 = id.parse().ok()?;
    let at = records.partition_point(|r| r.id.parse::<u64>().is_ok_and(|n| n < key));
    (records.get(at)?.id == id).then_some(at)
}

/// Each job's result as the relay answered a delivery, in the order of
/// `delivered.results`; `cluster` names a cluster by its id.
pub fn results<'a>(
    targets: &[Arc<Target>],
    delivered: &Delivered,
    cluster: impl Fn(usize) -> &'a str,
) -> Vec<TargetResult> {
    delivered
        .results
        .iter()
        .filter_map(|r| {
            let mut t = TargetResult::of(targets.get(r.target)?);
            t.cluster = cluster(r.cluster).to_string();
            Some(t.with(r.outcome.as_ref(), &delivered.requested_at))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(receiver: &str, outcome: &str, delivery: &str) -> Record {
        Record {
            receiver: receiver.into(),
            outcome: outcome.into(),
            delivery: Some(delivery.into()),
            status: 200,
            ..Record::default()
        }
    }

    #[test]
    fn keeps_the_last_n_newest_first_and_filters() {
        let h = History::memory(3);
        for i in 0..5 {
            let outcome = if i % 2 == 0 {
                "relayed"
            } else {
                "bad_signature"
            };
            h.add(rec(&format!("ns/r{}", i % 2), outcome, &format!("d{i}")));
        }
        let all = h.list(&Query::default());
        let ids: Vec<_> = all.iter().map(|r| r.delivery.clone().unwrap()).collect();
        assert_eq!(ids, ["d4", "d3", "d2"]);
        let q = Query {
            outcome: Some("relayed".into()),
            ..Query::default()
        };
        assert_eq!(h.list(&q).len(), 2);
        let q = Query {
            receiver: Some("ns/r1".into()),
            limit: Some(5),
            ..Query::default()
        };
        assert_eq!(h.list(&q).len(), 1);
        assert_eq!(h.get("d3").unwrap().receiver, "ns/r1");
        let id = all[0].id.clone();
        assert_eq!(h.get(&id).unwrap().delivery.as_deref(), Some("d4"));
    }

    #[test]
    fn an_update_settles_the_outcome_and_reaches_the_stream() {
        let h = History::memory(10);
        let mut r = rec("ns/r", "queued", "d1");
        r.status = 202;
        r.targets.push(TargetResult {
            state: "queued".into(),
            ..TargetResult::default()
        });
        let id = h.add(r);
        let mut live = h.subscribe();
        h.update_target(
            &id,
            0,
            TargetResult {
                state: "patched".into(),
                ..TargetResult::default()
            },
        );
        let got = live.try_recv().unwrap();
        assert_eq!(
            (got.id.as_str(), got.outcome.as_str()),
            (id.as_str(), "relayed")
        );
        assert_eq!(h.get(&id).unwrap().targets[0].state, "patched");
    }

    #[test]
    fn updates_find_their_record_among_many_and_skip_those_gone() {
        let h = History::memory(100);
        let queued = |d: &str| {
            let mut r = rec("ns/r", "queued", d);
            r.targets.push(TargetResult {
                state: "queued".into(),
                ..TargetResult::default()
            });
            r
        };
        let ids: Vec<String> = (0..150).map(|i| h.add(queued(&format!("d{i}")))).collect();
        let patched = || TargetResult {
            state: "patched".into(),
            ..TargetResult::default()
        };
        // Gone from the history (the first 50), kept (the rest): only the kept ones change.
        for id in [&ids[10], &ids[50], &ids[99], &ids[149]] {
            h.update_target(id, 0, patched());
        }
        assert!(h.get(&ids[10]).is_none());
        for id in [&ids[50], &ids[99], &ids[149]] {
            assert_eq!(h.get(id).unwrap().outcome, "relayed", "{id}");
        }
        assert_eq!(h.get(&ids[100]).unwrap().outcome, "queued");
        assert_eq!(h.list(&Query::default()).len(), 100);
        // Not a record id: nothing found, nothing changed.
        h.update_target("d120", 0, patched());
        assert_eq!(h.get("d120").unwrap().outcome, "queued");
    }
}
