//! The relay queue: jobs waiting for the API server, coalesced per target (and filter inputs),
//! retried with backoff, and handed back to the deliveries waiting on them.

use super::filter::{self, Filter};
use super::job::{now_nanos, requested_at, Job, JobKey};
use super::kube::{ApiError, KubeApi};
use super::store::{Store, ADOPT_EVERY};
use super::target::{Select, Target};
use super::{Patched, QueueSettings};
use crate::metrics;
use rand::Rng;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, Notify, Semaphore};

/// What finally happened to a delivery's job.
#[derive(Debug, Clone)]
pub enum Outcome {
    Patched {
        patched: Vec<Patched>,
        /// Objects the target's filters turned down: nothing to do for them, as in Flux.
        filtered: Vec<Patched>,
        /// A label selector that matched no object.
        unmatched: bool,
        /// For each of `filtered`, the expression that turned it down (`key = source`).
        filtered_by: Vec<String>,
        /// The requestedAt of the patch: a later one than a delivery's own means the delivery
        /// was coalesced into a newer one's patch.
        at: String,
    },
    Refused(ApiError),
    /// A filter could not be evaluated (a missing key, not a bool): no object of the target
    /// was patched, and no retry can change that.
    FilterFailed(String),
    Dropped(String),
}

/// Why one try at a job failed.
#[derive(Debug)]
enum Failure {
    Api(ApiError),
    Filter(String),
}

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Self {
        Failure::Api(e)
    }
}

impl Failure {
    /// The outcome to report when no retry can help; the API error otherwise.
    fn final_outcome(self) -> Result<Outcome, ApiError> {
        match self {
            Failure::Filter(why) => Ok(Outcome::FilterFailed(why)),
            Failure::Api(e) if e.is_permanent() => Ok(Outcome::Refused(e)),
            Failure::Api(e) => Err(e),
        }
    }
}

/// What a successful try did.
#[derive(Debug)]
struct Done {
    patched: Vec<Patched>,
    filtered: Vec<Patched>,
    filtered_by: Vec<String>,
    unmatched: bool,
}

struct Entry {
    job: Job,
    in_flight: bool,
    ready_at: Instant,
    /// Deliveries waiting for a patch at least as new as their generation.
    waiters: Vec<(u64, oneshot::Sender<Outcome>)>,
}

/// One cluster's queue. Each cluster of the fleet has its own, so one that is down or slow
/// holds only its own permits and backoff; all share the durable store.
pub struct Queue {
    /// The cluster this queue patches in: its jobs carry it, its metrics are labelled with it.
    cluster: Arc<str>,
    /// Keyed by target (shared with the receivers' configuration) and filter inputs.
    entries: Mutex<HashMap<JobKey, Entry>>,
    /// When each target was last patched, for `min_interval`. Per target, whatever the
    /// filter inputs, so the map is bounded by the configuration.
    last_patch: Mutex<HashMap<Arc<Target>, Instant>>,
    wake: Notify,
    permits: Arc<Semaphore>,
    store: Store,
    api: Arc<KubeApi>,
    settings: QueueSettings,
    /// Rounds of the worker's loop, to show it sleeps when there is nothing to do.
    turns: AtomicU64,
    /// Told of a job finished with no delivery waiting for it (one resumed after a restart),
    /// so whoever recorded its deliveries can still learn what became of them.
    unheard: std::sync::OnceLock<Unheard>,
}

/// `(cluster, target, generation, outcome)` of a job nobody was waiting for.
pub type Unheard = Box<dyn Fn(&str, &Target, u64, &Outcome) + Send + Sync>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Queue {
    /// The queue of the cluster named `default`.
    pub fn new(
        store: Store,
        api: Arc<KubeApi>,
        settings: QueueSettings,
        resumed: Vec<Job>,
    ) -> Self {
        Self::for_cluster(crate::fleet::DEFAULT.into(), store, api, settings, resumed)
    }

    pub fn for_cluster(
        cluster: Arc<str>,
        store: Store,
        api: Arc<KubeApi>,
        settings: QueueSettings,
        resumed: Vec<Job>,
    ) -> Self {
        let q = Queue {
            cluster,
            entries: Mutex::new(HashMap::new()),
            last_patch: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            permits: Arc::new(Semaphore::new(settings.max_in_flight.max(1))),
            store,
            api,
            settings,
            turns: AtomicU64::new(0),
            unheard: std::sync::OnceLock::new(),
        };
        q.insert(resumed, None);
        q
    }

    /// Set once, before the worker runs: see `Queue::unheard`.
    pub fn on_unheard(&self, f: Unheard) {
        let _ = self.unheard.set(f);
    }

    pub fn is_durable(&self) -> bool {
        self.store.is_durable()
    }

    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// Takes in jobs already on disk: resumed or adopted from a process that is gone.
    pub fn take(&self, jobs: Vec<Job>) {
        self.insert(jobs, None);
    }

    /// Queues one job per target, on disk first. `filters` is empty when no target has
    /// any, or holds each target's filter in order. With `wait`, returns one receiver per
    /// target, in order, for the outcome; without, nobody is told.
    pub async fn submit(
        &self,
        targets: &[Arc<Target>],
        filters: &[Option<Arc<Filter>>],
        generation: u64,
        wait: bool,
    ) -> Result<Vec<oneshot::Receiver<Outcome>>, String> {
        let jobs: Vec<Job> = targets
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let mut job = Job::new(t.clone(), filters.get(i).cloned().flatten(), generation);
                job.cluster = self.cluster.clone();
                job
            })
            .collect();
        self.store.put(jobs.clone()).await?;
        if !wait {
            self.insert(jobs, None);
            return Ok(Vec::new());
        }
        let (txs, rxs): (Vec<_>, Vec<_>) = jobs.iter().map(|_| oneshot::channel()).unzip();
        self.insert(jobs, Some(txs));
        Ok(rxs)
    }

    fn insert(&self, jobs: Vec<Job>, waiters: Option<Vec<oneshot::Sender<Outcome>>>) {
        let now = Instant::now();
        // Lock order is entries, then last_patch (as in `execute`): read what is needed from
        // last_patch and let it go before taking entries, or the two deadlock under load.
        let ready: Vec<(Job, Instant)> = {
            let last = lock(&self.last_patch);
            jobs.into_iter()
                .map(|job| {
                    let at = last
                        .get(&job.target)
                        .map_or(now, |t| (*t + self.settings.min_interval).max(now));
                    (job, at)
                })
                .collect()
        };
        let mut entries = lock(&self.entries);
        let mut waiters = waiters.map(|w| w.into_iter());
        // A job joining an entry changes nothing the worker has planned for, so the worker is
        // woken only for new entries: at a delivery rate of thousands a second, one wake-up
        // per delivery would cost more than the rest of the relay.
        let mut added = false;
        for (job, ready_at) in ready {
            let generation = job.generation;
            let e = entries.entry(job.queue_key()).or_insert_with(|| {
                added = true;
                Entry {
                    job: job.clone(),
                    in_flight: false,
                    ready_at,
                    waiters: Vec::new(),
                }
            });
            e.job.absorb(&job);
            if let Some(tx) = waiters.as_mut().and_then(|w| w.next()) {
                e.waiters.push((generation, tx));
            }
        }
        drop(entries);
        if added {
            self.update_gauges();
            self.wake.notify_one();
        }
    }

    fn update_gauges(&self) {
        let entries = lock(&self.entries);
        let m = metrics::get();
        let c = [&*self.cluster];
        m.queue_depth
            .with_label_values(&c)
            .set(entries.len() as i64);
        let oldest = entries.values().map(|e| e.job.since).min();
        let age = oldest.map_or(0.0, |s| now_nanos().saturating_sub(s) as f64 / 1e9);
        m.queue_oldest_seconds.with_label_values(&c).set(age);
    }

    /// Runs the queue until the process ends. Jobs in flight when it ends stay on disk and are
    /// resumed by the next process. Jobs of processes that are gone are adopted by the fleet,
    /// which hands each to its cluster's queue.
    pub async fn run(self: Arc<Self>) {
        loop {
            let now = Instant::now();
            self.turns.fetch_add(1, Ordering::Relaxed);
            // Some deadline even when idle: one left in the past would make the worker spin.
            let mut wake_at = now + ADOPT_EVERY;
            let mut ready = Vec::new();
            {
                let mut entries = lock(&self.entries);
                let mut free = self.permits.available_permits();
                for (key, e) in entries.iter_mut() {
                    if e.in_flight {
                        continue;
                    }
                    if e.ready_at > now {
                        wake_at = wake_at.min(e.ready_at);
                    } else if free > 0 {
                        free -= 1;
                        e.in_flight = true;
                        ready.push((key.clone(), e.job.clone()));
                    }
                }
            }
            for (key, job) in ready {
                let Ok(permit) = self.permits.clone().try_acquire_owned() else {
                    break;
                };
                let q = self.clone();
                tokio::spawn(async move {
                    q.execute(key, job).await;
                    drop(permit);
                });
            }
            self.update_gauges();
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep_until(wake_at.into()) => {}
            }
        }
    }

    async fn execute(self: Arc<Self>, key: JobKey, job: Job) {
        let at = requested_at(job.generation);
        let started = Instant::now();
        let result = self.attempt(&job, &at).await;
        let m = metrics::get();
        // An answer of any kind, even a refusal, shows the API is there.
        let reached = !matches!(result, Err(Failure::Api(ApiError::Unreachable(_))));
        m.kubernetes_api_up
            .with_label_values(&[&*self.cluster])
            .set(i64::from(reached));
        m.patch_seconds
            .with_label_values(&[&*self.cluster, job.target.kind.as_str()])
            .observe(started.elapsed().as_secs_f64());
        let now = Instant::now();
        let mut remove = None;
        let mut unheard = None;
        {
            let mut entries = lock(&self.entries);
            let Some(e) = entries.get_mut(&key) else {
                return;
            };
            e.in_flight = false;
            let nobody = !e.waiters.iter().any(|(g, _)| *g <= job.generation);
            let newer = e.job.generation > job.generation;
            // Counted before any waiting delivery hears the outcome, so that whoever reads its
            // answer finds the count already there.
            let count = |result: &str| {
                m.relay_jobs
                    .with_label_values(&[&*self.cluster, job.target.kind.as_str(), result])
                    .inc();
            };
            match result.map_err(Failure::final_outcome) {
                Ok(done) => {
                    count("patched");
                    lock(&self.last_patch).insert(key.0.clone(), now);
                    let outcome = Outcome::Patched {
                        patched: done.patched,
                        filtered: done.filtered,
                        unmatched: done.unmatched,
                        filtered_by: done.filtered_by,
                        at: at.clone(),
                    };
                    resolve(&mut e.waiters, job.generation, &outcome);
                    unheard = nobody.then_some((job.generation, outcome));
                    e.job.attempts = 0;
                    e.ready_at = now + self.settings.min_interval;
                    remove = Some(job.generation);
                    if !newer {
                        entries.remove(&key);
                    }
                }
                Err(Ok(outcome)) => {
                    count("refused");
                    match &outcome {
                        Outcome::FilterFailed(why) => {
                            tracing::error!(cluster = %self.cluster, target_object = %job.target, "a resource filter could not be evaluated, nothing reconciled: {why}")
                        }
                        Outcome::Refused(err) => {
                            tracing::error!(cluster = %self.cluster, target_object = %job.target, "the Kubernetes API refused the reconcile request for good: {err}")
                        }
                        Outcome::Patched { .. } | Outcome::Dropped(_) => {}
                    }
                    resolve(&mut e.waiters, job.generation, &outcome);
                    unheard = nobody.then_some((job.generation, outcome));
                    e.ready_at = now;
                    remove = Some(job.generation);
                    if !newer {
                        entries.remove(&key);
                    }
                }
                Err(Err(err)) => {
                    e.job.attempts += 1;
                    let age = Duration::from_nanos(now_nanos().saturating_sub(e.job.since));
                    let out_of_attempts = self.settings.max_attempts > 0
                        && e.job.attempts >= self.settings.max_attempts;
                    if age >= self.settings.max_age || out_of_attempts {
                        count("dropped");
                        let why = format!(
                            "gave up after {} attempts over {}: {err}",
                            e.job.attempts,
                            humantime::format_duration(Duration::from_secs(age.as_secs()))
                        );
                        tracing::error!(cluster = %self.cluster, target_object = %job.target, "dropping the relay job: {why}");
                        let outcome = Outcome::Dropped(why);
                        let nobody = e.waiters.is_empty();
                        resolve(&mut e.waiters, u64::MAX, &outcome);
                        unheard = nobody.then_some((e.job.generation, outcome));
                        remove = Some(e.job.generation);
                        entries.remove(&key);
                    } else {
                        count("retried");
                        let wait = err
                            .retry_after()
                            .unwrap_or_else(|| self.backoff(e.job.attempts));
                        tracing::warn!(cluster = %self.cluster, target_object = %job.target, attempt = e.job.attempts, retry_in_ms = wait.as_millis() as u64, "reconcile request failed, will retry: {err}");
                        e.ready_at = now + wait;
                    }
                }
            }
        }
        if let (Some((generation, outcome)), Some(tell)) = (unheard, self.unheard.get()) {
            tell(&self.cluster, &job.target, generation, &outcome);
        }
        if let Some(generation) = remove {
            if let Err(e) = self.store.remove(job.key(), generation).await {
                tracing::error!("cannot remove a finished job from the queue: {e}");
            }
        }
        self.wake.notify_one();
    }

    /// Exponential backoff with jitter: between half and all of base × 2^(attempt-1), capped.
    fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .settings
            .backoff_base
            .saturating_mul(1u32 << attempt.min(16).saturating_sub(1));
        let cap = exp.min(self.settings.backoff_max);
        cap.mul_f64(rand::rng().random_range(0.5..=1.0))
    }

    /// One try at a job. Without filters: a merge patch on a named object, or a list and a
    /// patch of each match for a label selector, with nothing read first. With filters: the
    /// metadata of the object or of each match is read and judged, and only what passes is
    /// patched.
    async fn attempt(&self, job: &Job, at: &str) -> Result<Done, Failure> {
        let t = &job.target;
        let mut filtered = Vec::new();
        let mut filtered_by = Vec::new();
        let (names, unmatched) = match &job.filter {
            None => {
                let names = match &t.select {
                    Select::Name(n) => vec![n.clone()],
                    Select::Labels(_) => {
                        self.api
                            .list_names(t, &t.label_selector().unwrap_or_default())
                            .await?
                    }
                };
                let unmatched = names.is_empty();
                (names, unmatched)
            }
            Some(f) => {
                let objects = match &t.select {
                    Select::Name(n) => vec![self.api.get_metadata(t, n).await?],
                    Select::Labels(_) => {
                        self.api
                            .list_metadata(t, &t.label_selector().unwrap_or_default())
                            .await?
                    }
                };
                let unmatched = objects.is_empty();
                // Every object is judged before any is patched, so an evaluation error leaves
                // the whole target untouched rather than half done.
                let mut pass = Vec::with_capacity(objects.len());
                for meta in &objects {
                    let name = meta.name.clone().unwrap_or_default();
                    let verdict = f
                        .verdict(&filter::resource(t, meta))
                        .map_err(|why| Failure::Filter(format!("filter on {name}: {why}")))?;
                    match verdict {
                        None => pass.push(name),
                        Some(by) => {
                            filtered_by.push(by.describe());
                            filtered.push(object(t, name));
                        }
                    }
                }
                (pass, unmatched)
            }
        };
        let mut patched = Vec::new();
        for name in names {
            match self.api.request_reconcile(t, &name, at).await {
                Ok(()) => patched.push(object(t, name)),
                // Deleted between the list and the patch: nothing left to reconcile.
                Err(e) if matches!(t.select, Select::Labels(_)) && e.code() == Some(404) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Done {
            patched,
            filtered,
            filtered_by,
            unmatched,
        })
    }
}

fn object(t: &Target, name: String) -> Patched {
    Patched {
        api_version: t.api_version(),
        kind: t.kind.clone(),
        namespace: t.namespace.clone(),
        name,
    }
}

/// Hands the outcome to every delivery whose generation this attempt covered.
fn resolve(waiters: &mut Vec<(u64, oneshot::Sender<Outcome>)>, upto: u64, outcome: &Outcome) {
    let mut i = 0;
    while i < waiters.len() {
        if waiters[i].0 <= upto {
            let (_, tx) = waiters.swap_remove(i);
            let _ = tx.send(outcome.clone());
        } else {
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> QueueSettings {
        QueueSettings {
            max_in_flight: 4,
            min_interval: Duration::from_secs(1),
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(10),
            max_age: Duration::from_secs(60),
            max_attempts: 0,
        }
    }

    /// A queue on the stand-in API, with GitRepositories a (branch main), b (branch dev) and
    /// c (no branch label), all labelled app=web.
    async fn standin_queue() -> (kube_standin::StandIn, Arc<Queue>, tempfile::TempDir) {
        use kube_standin::{Config, Rule};
        let git = |name: &str, branch: Option<&str>| {
            let mut labels = serde_json::json!({"app": "web"});
            if let Some(b) = branch {
                labels["branch"] = b.into();
            }
            serde_json::json!({"apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "GitRepository",
                "metadata": {"name": name, "namespace": "flux-system", "labels": labels},
                "spec": {"interval": "10m", "url": "https://example.com/repo.git"}})
        };
        let user = "system:serviceaccount:flux-system:fluxgate";
        let api = kube_standin::StandIn::start(
            Config::new()
                .user("t", user)
                .allow(
                    user,
                    Rule::new(
                        &["get", "list", "patch"],
                        &["source.toolkit.fluxcd.io"],
                        &["gitrepositories"],
                    ),
                )
                .object(git("a", Some("main")))
                .object(git("b", Some("dev")))
                .object(git("c", None)),
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubeconfig");
        api.write_kubeconfig(&path, "t").unwrap();
        let cfg = super::super::kube::load_config(&path, None, Duration::from_secs(5))
            .await
            .unwrap();
        let q = Queue::new(
            Store::memory(),
            Arc::new(KubeApi::new(cfg)),
            settings(),
            Vec::new(),
        );
        (api, Arc::new(q), dir)
    }

    fn filtered_job(select: Select, filter: &str, git_ref: &str) -> Job {
        let exprs =
            [
                crate::expr::Expr::compile(filter, crate::expr::Scope::Filter { claims: false })
                    .unwrap(),
            ];
        let req = Arc::new(serde_json::json!({ "ref": git_ref }));
        let target = Target::git_repository(select);
        Job::new(
            Arc::new(target),
            Some(Arc::new(Filter::new(&exprs, &req, None))),
            1,
        )
    }

    fn names(objects: &[Patched]) -> Vec<&str> {
        objects.iter().map(|o| o.name.as_str()).collect()
    }

    fn patched_names(api: &kube_standin::StandIn) -> Vec<String> {
        api.requests()
            .into_iter()
            .filter(|r| r.method == "PATCH")
            .map(|r| r.path.rsplit('/').next().unwrap_or_default().to_string())
            .collect()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn filters_pick_the_objects_to_patch_from_their_metadata() {
        let (api, q, _dir) = standin_queue().await;
        let web = Select::Labels([("app".to_string(), "web".to_string())].into());
        let by_branch = "has(res.metadata.labels.branch) && res.metadata.labels.branch == req.ref";

        let done = q
            .attempt(&filtered_job(web.clone(), by_branch, "main"), "t1")
            .await
            .unwrap();
        assert_eq!(
            (names(&done.patched), names(&done.filtered), done.unmatched),
            (vec!["a"], vec!["b", "c"], false)
        );
        assert_eq!(patched_names(&api), ["a"]);
        let list = api
            .requests()
            .into_iter()
            .find(|r| r.method == "GET")
            .unwrap();
        assert!(
            list.header("accept")
                .unwrap_or_default()
                .contains("as=PartialObjectMetadataList"),
            "{list:?}"
        );

        // A named object: read (as metadata), then judged.
        api.clear_requests();
        let named = |n: &str| Select::Name(n.into());
        let done = q
            .attempt(&filtered_job(named("b"), by_branch, "main"), "t2")
            .await
            .unwrap();
        assert_eq!(
            (names(&done.patched), names(&done.filtered)),
            (vec![], vec!["b"])
        );
        let done = q
            .attempt(&filtered_job(named("b"), by_branch, "dev"), "t3")
            .await
            .unwrap();
        assert_eq!(names(&done.patched), ["b"]);
        let gets: Vec<_> = api
            .requests()
            .into_iter()
            .filter(|r| r.method == "GET")
            .collect();
        assert_eq!(gets.len(), 2);
        assert!(gets.iter().all(|r| r
            .header("accept")
            .unwrap_or_default()
            .contains("as=PartialObjectMetadata;")));
        assert_eq!(patched_names(&api), ["b"]);

        // A missing object is the API's 404, for good.
        match q
            .attempt(&filtered_job(named("gone"), by_branch, "main"), "t4")
            .await
        {
            Err(Failure::Api(e)) => assert_eq!((e.code(), e.is_permanent()), (Some(404), true)),
            _ => panic!("a missing object must be refused"),
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_evaluation_error_patches_nothing_of_the_target() {
        let (api, q, _dir) = standin_queue().await;
        let web = Select::Labels([("app".to_string(), "web".to_string())].into());
        // c has no branch label: a missing key, an error in CEL.
        let job = filtered_job(web, "res.metadata.labels.branch == req.ref", "main");
        match q.attempt(&job, "t1").await {
            Err(Failure::Filter(why)) => {
                assert!(why.starts_with("filter on c: "), "{why}");
                assert!(why.contains("branch"), "{why}");
            }
            _ => panic!("an evaluation error must fail the target"),
        }
        assert!(
            patched_names(&api).is_empty(),
            "a was judged before c, yet must not be patched"
        );
        // Reported as final, with the reason.
        let outcome = Failure::Filter("x".into()).final_outcome();
        assert!(matches!(outcome, Ok(Outcome::FilterFailed(ref w)) if w == "x"));
    }

    /// A regression: the in-memory queue's adoption deadline stayed in the past after the
    /// first second, and the worker spun on its loop, eating a core.
    #[tokio::test(flavor = "current_thread")]
    async fn an_idle_in_memory_queue_sleeps() {
        let url = "https://127.0.0.1:1".parse().unwrap();
        let api = Arc::new(KubeApi::new(kube::Config::new(url)));
        let q = Arc::new(Queue::new(Store::memory(), api, settings(), Vec::new()));
        let worker = tokio::spawn(q.clone().run());
        tokio::time::sleep(Duration::from_secs(3)).await;
        let turns = q.turns.load(Ordering::Relaxed);
        worker.abort();
        assert!(turns <= 5, "{turns} rounds in 3 idle seconds");
    }
}
