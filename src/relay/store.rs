//! The durable side of the queue.
//!
//! Each process writes its jobs to a redb file of its own in `queue_dir`, which redb locks
//! while the process lives. A file whose lock can be taken belongs to a process that is gone
//! (it exited after an upgrade, or crashed): its jobs are adopted into this process's file and
//! the file is removed. So exactly one process owns each job at a time, a restarted gateway
//! resumes what was left, and during a graceful upgrade the old and the new process never wait
//! on each other's lock.
//!
//! Writes go through one thread that commits everything waiting in one transaction (group
//! commit): a burst of deliveries costs a few fsyncs, not one each.

use super::job::{Job, Stamp};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;
use tokio::sync::oneshot;

const JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("jobs");

enum Op {
    /// Insert or coalesce these jobs.
    Put(Vec<Job>),
    /// Remove the job for this key if its generation is at most this one (a newer delivery
    /// that arrived during the patch keeps it).
    Remove(String, u64),
    /// Take over the files of processes that are gone; answers with their jobs.
    Adopt(oneshot::Sender<Vec<Job>>),
}

struct Request {
    op: Op,
    done: Option<oneshot::Sender<Result<(), String>>>,
}

/// A handle to the queue's storage: durable in `queue_dir`, or nothing when none is set.
#[derive(Clone)]
pub struct Store {
    tx: Option<mpsc::Sender<Request>>,
}

impl Store {
    /// In memory only: jobs do not survive a restart.
    pub fn memory() -> Self {
        Store { tx: None }
    }

    /// Opens this process's file in `dir` and returns the jobs found in files left by
    /// processes that are gone.
    pub fn open(dir: &Path) -> Result<(Store, Vec<Job>), String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let own = dir.join(format!(
            "queue-{}-{}.redb",
            std::process::id(),
            super::job::now_nanos()
        ));
        let db =
            Database::create(&own).map_err(|e| format!("cannot open {}: {e}", own.display()))?;
        let mut writer = Writer {
            db,
            dir: dir.to_path_buf(),
            own,
        };
        writer
            .init()
            .map_err(|e| format!("cannot initialise {}: {e}", writer.own.display()))?;
        let adopted = writer.adopt();
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("fluxgate-queue".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| format!("cannot start the queue writer: {e}"))?;
        Ok((Store { tx: Some(tx) }, adopted))
    }

    pub fn is_durable(&self) -> bool {
        self.tx.is_some()
    }

    async fn send(&self, op: Op) -> Result<(), String> {
        let Some(tx) = &self.tx else {
            return Ok(());
        };
        let (done, wait) = oneshot::channel();
        tx.send(Request {
            op,
            done: Some(done),
        })
        .map_err(|_| "the queue writer has stopped".to_string())?;
        wait.await
            .map_err(|_| "the queue writer has stopped".to_string())?
    }

    /// Returns once the jobs are on disk.
    pub async fn put(&self, jobs: Vec<Job>) -> Result<(), String> {
        self.send(Op::Put(jobs)).await
    }

    pub async fn remove(&self, key: String, generation: u64) -> Result<(), String> {
        self.send(Op::Remove(key, generation)).await
    }

    /// Jobs from files whose processes have exited since the last look.
    pub async fn adopt(&self) -> Vec<Job> {
        let Some(tx) = &self.tx else {
            return Vec::new();
        };
        let (give, take) = oneshot::channel();
        if tx
            .send(Request {
                op: Op::Adopt(give),
                done: None,
            })
            .is_err()
        {
            return Vec::new();
        }
        take.await.unwrap_or_default()
    }
}

struct Writer {
    db: Database,
    dir: PathBuf,
    own: PathBuf,
}

fn encode(job: &Job) -> Vec<u8> {
    serde_json::to_vec(job).unwrap_or_default()
}

impl Writer {
    fn init(&mut self) -> Result<(), redb::Error> {
        let tx = self.db.begin_write()?;
        tx.open_table(JOBS)?;
        tx.commit()?;
        Ok(())
    }

    fn run(mut self, rx: mpsc::Receiver<Request>) {
        while let Ok(first) = rx.recv() {
            let mut batch = vec![first];
            batch.extend(rx.try_iter());
            let mut adopters = Vec::new();
            let mut ops = Vec::new();
            for r in batch {
                match r.op {
                    Op::Adopt(give) => adopters.push(give),
                    op => ops.push((op, r.done)),
                }
            }
            if !ops.is_empty() {
                let result = self
                    .apply(ops.iter().map(|(op, _)| op))
                    .map_err(|e| e.to_string());
                if let Err(e) = &result {
                    tracing::error!("the relay queue could not be written: {e}");
                }
                for (_, done) in ops {
                    if let Some(d) = done {
                        let _ = d.send(result.clone());
                    }
                }
            }
            for give in adopters {
                let _ = give.send(self.adopt());
            }
        }
    }

    fn apply<'a>(&mut self, ops: impl Iterator<Item = &'a Op>) -> Result<(), redb::Error> {
        let tx = self.db.begin_write()?;
        {
            let mut table = tx.open_table(JOBS)?;
            for op in ops {
                match op {
                    Op::Put(jobs) => {
                        for job in jobs {
                            let key = job.key();
                            let mut merged = job.clone();
                            if let Some(old) = table.get(key.as_str())? {
                                if let Ok(old) = serde_json::from_slice::<Stamp>(old.value()) {
                                    merged.absorb_stored(&old);
                                }
                            }
                            table.insert(key.as_str(), encode(&merged).as_slice())?;
                        }
                    }
                    Op::Remove(key, generation) => {
                        let stale = match table.get(key.as_str())? {
                            Some(v) => serde_json::from_slice::<Stamp>(v.value())
                                .map_or(true, |j| j.generation <= *generation),
                            None => false,
                        };
                        if stale {
                            table.remove(key.as_str())?;
                        }
                    }
                    Op::Adopt(_) => {}
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Moves the jobs of every unlocked queue file into this one, then deletes those files.
    fn adopt(&mut self) -> Vec<Job> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut found: HashMap<String, Job> = HashMap::new();
        let mut files = Vec::new();
        for e in entries.flatten() {
            let path = e.path();
            let is_queue = path.extension().is_some_and(|x| x == "redb")
                && path
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("queue-"));
            if !is_queue || path == self.own {
                continue;
            }
            // A live process holds its file's lock: leave it alone.
            let Ok(db) = Database::open(&path) else {
                continue;
            };
            match read_all(&db) {
                Ok(jobs) => {
                    for j in jobs {
                        found
                            .entry(j.key())
                            .and_modify(|x| x.absorb(&j))
                            .or_insert(j);
                    }
                    files.push((path, db));
                }
                Err(e) => tracing::error!(
                    "cannot read the queue file {}: {e}; leaving it",
                    path.display()
                ),
            }
        }
        if files.is_empty() {
            return Vec::new();
        }
        let jobs: Vec<Job> = found.into_values().collect();
        let put = Op::Put(jobs.clone());
        if let Err(e) = self.apply(std::iter::once(&put)) {
            tracing::error!("cannot adopt queued jobs: {e}; leaving their files for the next try");
            return Vec::new();
        }
        for (path, db) in files {
            drop(db);
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!("adopted {} but cannot remove it: {e}", path.display());
            }
        }
        if !jobs.is_empty() {
            tracing::info!(
                jobs = jobs.len(),
                "resumed relay jobs left by a previous process"
            );
        }
        jobs
    }
}

fn read_all(db: &Database) -> Result<Vec<Job>, redb::Error> {
    let tx = db.begin_read()?;
    let table = match tx.open_table(JOBS) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::new();
    for row in table.iter()? {
        let (_, v) = row?;
        match serde_json::from_slice::<Job>(v.value()) {
            Ok(j) => out.push(j),
            Err(e) => tracing::error!("skipping an unreadable queued job: {e}"),
        }
    }
    Ok(out)
}

/// How often a process looks for queue files whose owners have exited.
pub const ADOPT_EVERY: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::target::{Select, Target};

    fn job(name: &str, generation: u64) -> Job {
        Job::new(
            std::sync::Arc::new(Target::git_repository(Select::Name(name.into()))),
            None,
            generation,
        )
    }

    /// The previous owner's writer thread releases its lock shortly after its last handle drops.
    async fn adopt_soon(s: &Store) -> Vec<Job> {
        for _ in 0..100 {
            let got = s.adopt().await;
            if !got.is_empty() {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Vec::new()
    }

    #[tokio::test]
    async fn jobs_survive_and_are_adopted_once_their_owner_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let (a, adopted) = Store::open(dir.path()).unwrap();
        assert!(adopted.is_empty());
        a.put(vec![job("app", 10), job("other", 11)]).await.unwrap();
        a.put(vec![job("app", 20)]).await.unwrap();
        a.remove(job("other", 0).key(), 11).await.unwrap();
        // A second process sees a's file locked while a lives.
        let (b, adopted) = Store::open(dir.path()).unwrap();
        assert!(adopted.is_empty());
        // a exits (its writer thread ends when the last handle drops and the lock is released).
        drop(a);
        let got = adopt_soon(&b).await;
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(
            (got[0].target.key(), got[0].generation, got[0].since),
            (job("app", 0).key(), 20, 10)
        );
        let files = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(files, 1, "the adopted file is removed");
        assert!(b.adopt().await.is_empty(), "adopted once");
    }

    fn filtered(name: &str, git_ref: &str, generation: u64) -> Job {
        use crate::expr::{Expr, Scope};
        use crate::relay::filter::Filter;
        use serde_json::json;
        let exprs = [Expr::compile(
            "res.metadata.labels.branch == req.ref",
            Scope::Filter { claims: false },
        )
        .unwrap()];
        let req = std::sync::Arc::new(json!({ "ref": git_ref }));
        let mut j = job(name, generation);
        j.filter = Some(std::sync::Arc::new(Filter::new(&exprs, &req, None)));
        j
    }

    #[tokio::test]
    async fn filtered_jobs_are_kept_apart_by_their_inputs_and_restored_with_them() {
        let dir = tempfile::tempdir().unwrap();
        let (a, _) = Store::open(dir.path()).unwrap();
        a.put(vec![
            job("app", 10),
            filtered("app", "main", 11),
            filtered("app", "dev", 12),
        ])
        .await
        .unwrap();
        // Same inputs: coalesced with the first "main" job.
        a.put(vec![filtered("app", "main", 20)]).await.unwrap();
        drop(a);
        let (b, mut got) = Store::open(dir.path()).unwrap();
        if got.is_empty() {
            got = adopt_soon(&b).await;
        }
        got.sort_by_key(|j| j.since);
        let seen: Vec<_> = got
            .iter()
            .map(|j| (j.filter.is_some(), j.generation, j.since))
            .collect();
        assert_eq!(seen, [(false, 10, 10), (true, 20, 11), (true, 12, 12)]);
        assert_eq!(got[1], filtered("app", "main", 0).tap_times(20, 11));
        // The restored filters still judge as they did.
        let res = |branch: &str| serde_json::json!({"metadata": {"name": "app", "labels": {"branch": branch}}});
        let main = got[1].filter.as_ref().unwrap();
        let dev = got[2].filter.as_ref().unwrap();
        assert_eq!(main.accepts(&res("main")), Ok(true));
        assert_eq!(dev.accepts(&res("main")), Ok(false));
        // A removal of one filtered job leaves the other jobs of the target.
        b.remove(got[2].key(), 12).await.unwrap();
        drop(b);
        let (c, mut left) = Store::open(dir.path()).unwrap();
        if left.is_empty() {
            left = adopt_soon(&c).await;
        }
        assert_eq!(left.len(), 2, "{left:?}");
        assert!(left.iter().all(|j| j.key() != got[2].key()));
    }

    impl Job {
        fn tap_times(mut self, generation: u64, since: u64) -> Job {
            self.generation = generation;
            self.since = since;
            self
        }
    }

    #[tokio::test]
    async fn a_removal_keeps_a_newer_generation() {
        let dir = tempfile::tempdir().unwrap();
        let (a, _) = Store::open(dir.path()).unwrap();
        a.put(vec![job("app", 10)]).await.unwrap();
        a.put(vec![job("app", 30)]).await.unwrap();
        a.remove(job("app", 0).key(), 10).await.unwrap();
        drop(a);
        let (b, mut adopted) = Store::open(dir.path()).unwrap();
        if adopted.is_empty() {
            adopted = adopt_soon(&b).await;
        }
        assert_eq!(
            adopted.iter().map(|j| j.generation).collect::<Vec<_>>(),
            vec![30]
        );
    }
}
