//! The configuration in force, swapped atomically on reload (SIGHUP or a changed file) and
//! whenever the cluster's Receivers change (cluster mode). Listeners, threads, the queue and the
//! cluster connection are fixed at start; receivers, secrets, allow-lists, limits and the
//! certificate follow the files. The receivers served are the file's, then the cluster's that
//! clash with none of them; the cluster's are kept across reloads.

use super::hook::Limits;
use super::routes::Routes;
use super::tls::CertResolver;
use crate::config::{ClusterSettings, Receiver, Settings};
use crate::guard::ranges::{RangeSet, RangeSets};
use crate::guard::Guard;
use crate::metrics;
use arc_swap::ArcSwap;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

/// How long reading the configuration and the files it names may take, at start and on reload.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Reads in flight, one left stuck by a timeout included: while one is stuck (a FIFO nobody
/// writes, a hung mount), one more may run, so a fixed file reloads; beyond that reloads fail
/// at once instead of leaving a thread behind each.
const MAX_READS: usize = 2;

/// What one configuration means for requests.
pub struct Runtime {
    pub receivers: Vec<Arc<Receiver>>,
    pub routes: Routes,
    pub guard: Arc<Guard>,
    pub limits: Limits,
    pub ranges: Vec<Arc<RangeSet>>,
}

impl Runtime {
    fn new(s: &Settings, guard: Arc<Guard>, cluster: &mut ClusterReceivers) -> Self {
        let receivers = cluster.merge(&s.receivers);
        Runtime {
            routes: Routes::new(&receivers),
            receivers,
            guard,
            limits: Limits {
                max_body_bytes: s.server.max_body_bytes,
                max_header_bytes: s.server.max_header_bytes,
                head_timeout: s.server.head_timeout,
                body_timeout: s.server.body_timeout,
            },
            ranges: s.ranges.values().cloned().collect(),
        }
    }
}

/// The receivers built from the cluster's Receiver objects.
#[derive(Default)]
struct ClusterReceivers {
    receivers: Vec<Arc<Receiver>>,
    /// Those a file receiver shadows, already warned about.
    shadowed: HashSet<String>,
}

impl ClusterReceivers {
    /// The file's receivers, then the cluster's with a path and a namespace/name of their own:
    /// the file is the operator's explicit choice, so it wins a clash.
    fn merge(&mut self, file: &[Arc<Receiver>]) -> Vec<Arc<Receiver>> {
        let paths: HashSet<&str> = file.iter().map(|r| r.path.as_str()).collect();
        let labels: HashSet<&str> = file.iter().map(|r| r.label.as_str()).collect();
        let mut out = file.to_vec();
        let mut shadowed = HashSet::new();
        for r in &self.receivers {
            let clash = if paths.contains(r.path.as_str()) {
                "hook path"
            } else if labels.contains(r.label.as_str()) {
                "namespace and name"
            } else {
                out.push(r.clone());
                continue;
            };
            if !self.shadowed.contains(&r.label) {
                tracing::warn!(receiver = %r.label, "the Receiver object {} is not served: a receiver in the configuration file has the same {clash}, and the file wins", r.label);
            }
            shadowed.insert(r.label.clone());
        }
        self.shadowed = shadowed;
        out
    }
}

pub struct Live {
    current: ArcSwap<Runtime>,
    config_path: PathBuf,
    resolver: Arc<CertResolver>,
    /// The settings last loaded, to tell what a reload changed, and the files they name.
    loaded: Mutex<(Settings, Vec<PathBuf>)>,
    /// Modification times of the watched files at the last load.
    stamps: Mutex<Vec<Option<SystemTime>>>,
    /// Locked after `loaded` when both are needed.
    cluster: Mutex<ClusterReceivers>,
    /// Counts successful reloads, for the cluster watch to apply new defaults.
    reloads: tokio::sync::watch::Sender<u64>,
    /// Reads of the configuration in flight (`MAX_READS`).
    reads: Arc<AtomicUsize>,
}

/// A lock whose holder panicked still guards consistent data: every update here is one store.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn stamps(files: &[PathBuf]) -> Vec<Option<SystemTime>> {
    files
        .iter()
        .map(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok())
        .collect()
}

impl Live {
    pub fn new(config_path: &Path, settings: Settings, resolver: Arc<CertResolver>) -> Self {
        let guard = Arc::new(Guard::new(
            &settings.limits,
            settings.server.trusted_proxies.clone(),
        ));
        let mut cluster = ClusterReceivers::default();
        let runtime = Runtime::new(&settings, guard, &mut cluster);
        let mut files = vec![config_path.to_path_buf()];
        files.extend(settings.watched_files());
        set_certificate_expiry(&settings);
        init_series(&settings);
        metrics::get().last_reload_success.set(unix_now());
        metrics::get().last_reload_successful.set(1);
        Live {
            current: ArcSwap::from_pointee(runtime),
            config_path: config_path.to_path_buf(),
            resolver,
            stamps: Mutex::new(stamps(&files)),
            loaded: Mutex::new((settings, files)),
            cluster: Mutex::new(cluster),
            reloads: tokio::sync::watch::Sender::new(0),
            reads: Arc::default(),
        }
    }

    /// Serves these receivers from the cluster from now on, besides the file's. Requests in
    /// flight keep the configuration they started with.
    pub fn set_cluster(&self, receivers: Vec<Arc<Receiver>>) {
        let loaded = lock(&self.loaded);
        let mut cluster = lock(&self.cluster);
        metrics::init_series(&series(&receivers, &loaded.0.clusters), &[]);
        cluster.receivers = receivers;
        let guard = self.get().guard.clone();
        self.current
            .store(Arc::new(Runtime::new(&loaded.0, guard, &mut cluster)));
    }

    /// What the cluster watch builds receivers with: `[cluster]` and the range sets in use.
    pub fn cluster_inputs(&self) -> (ClusterSettings, RangeSets) {
        let loaded = lock(&self.loaded);
        (loaded.0.cluster.clone(), loaded.0.ranges.clone())
    }

    /// Changes after every successful reload.
    pub fn subscribe_reloads(&self) -> tokio::sync::watch::Receiver<u64> {
        self.reloads.subscribe()
    }

    pub fn get(&self) -> Arc<Runtime> {
        self.current.load_full()
    }

    /// True when a watched file changed since the last load.
    pub fn files_changed(&self) -> bool {
        let files = self.loaded.lock().map(|l| l.1.clone()).unwrap_or_default();
        let now = stamps(&files);
        self.stamps.lock().map(|s| *s != now).unwrap_or(false)
    }

    /// Reads the configuration again and swaps it in; on any error the running configuration
    /// stays and the error is logged and counted.
    pub async fn reload(&self, why: &str) {
        let m = metrics::get();
        super::notify::reloading();
        let path = self.config_path.clone();
        let reads = self.reads.clone();
        // The wait for the reading thread is itself blocking, so it is not done on this runtime.
        let read = tokio::task::spawn_blocking(move || read_settings(&path, &reads))
            .await
            .unwrap_or_else(|e| Err(format!("the read failed: {e}")));
        match read {
            Ok(new) => {
                let mut loaded = lock(&self.loaded);
                for key in loaded.0.fixed_differences(&new) {
                    tracing::warn!("{key} changed: restart fluxgate to apply it (`fluxgate serve -u` for no downtime)");
                }
                let guard = Arc::new(
                    self.get()
                        .guard
                        .reconfigure(&new.limits, new.server.trusted_proxies.clone()),
                );
                // With ACME the lifecycle owns the certificate; a reload leaves it alone.
                if let Some(ck) = &new.server.certified_key {
                    self.resolver.replace(ck.clone());
                }
                set_certificate_expiry(&new);
                init_series(&new);
                let runtime = Runtime::new(&new, guard, &mut lock(&self.cluster));
                self.current.store(Arc::new(runtime));
                let mut files = vec![self.config_path.clone()];
                files.extend(new.watched_files());
                if let Ok(mut s) = self.stamps.lock() {
                    *s = stamps(&files);
                }
                for w in &new.warnings {
                    tracing::warn!("{w}");
                }
                tracing::info!(
                    trigger = why,
                    receivers = new.receivers.len(),
                    "configuration reloaded"
                );
                *loaded = (new, files);
                drop(loaded);
                self.reloads.send_modify(|n| *n += 1);
                m.config_reloads.with_label_values(&["ok"]).inc();
                m.last_reload_success.set(unix_now());
                m.last_reload_successful.set(1);
                super::notify::reloaded("configuration reloaded");
            }
            Err(e) => {
                // Remember the failed version so it is not retried every tick; the next change
                // (or SIGHUP) tries again.
                let files = self.loaded.lock().map(|l| l.1.clone()).unwrap_or_default();
                if let Ok(mut s) = self.stamps.lock() {
                    *s = stamps(&files);
                }
                let problems = e.replace('\n', "; ");
                tracing::error!(
                    trigger = why,
                    "configuration reload failed, keeping the running configuration: {problems}"
                );
                m.config_reloads.with_label_values(&["failed"]).inc();
                m.last_reload_successful.set(0);
                super::notify::reloaded("reload refused, the previous configuration runs");
            }
        }
    }
}

/// Reads the configuration and every file it names (secrets, certificate, key, range files)
/// on a thread of its own and waits for it at most `READ_TIMEOUT`: a file that blocks its
/// reader (a FIFO, a hung mount) then holds that thread, never the runtime that serves requests
/// and drives the Kubernetes client. A read that timed out is left to end on its thread, and
/// counts against `MAX_READS` until it does.
pub fn read_settings(path: &Path, reads: &Arc<AtomicUsize>) -> Result<Settings, String> {
    struct InFlight(Arc<AtomicUsize>);
    impl Drop for InFlight {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }
    if reads.fetch_add(1, Ordering::SeqCst) >= MAX_READS {
        reads.fetch_sub(1, Ordering::SeqCst);
        return Err(format!(
            "earlier reads of the configuration are still blocked (for more than {}s) on a file it names: fix that file",
            READ_TIMEOUT.as_secs()
        ));
    }
    let in_flight = InFlight(reads.clone());
    let (tx, rx) = mpsc::channel();
    let p = path.to_path_buf();
    std::thread::Builder::new()
        .name("fluxgate-read".into())
        .spawn(move || {
            let _in_flight = in_flight;
            let _ = tx.send(Settings::load(&p).map_err(|e| e.to_string()));
        })
        .map_err(|e| format!("cannot start a thread to read the configuration: {e}"))?;
    match rx.recv_timeout(READ_TIMEOUT) {
        Ok(r) => r,
        Err(mpsc::RecvTimeoutError::Timeout) => Err(format!(
            "reading {} and the files it names took longer than {}s: one of them blocks its reader (a FIFO, or a hung mount?)",
            path.display(),
            READ_TIMEOUT.as_secs()
        )),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            Err("the thread reading the configuration ended without an answer".into())
        }
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn init_series(s: &Settings) {
    let sets: Vec<&str> = s
        .ranges
        .values()
        .filter(|r| r.source.is_some())
        .map(|r| r.name.as_str())
        .collect();
    metrics::init_series(&series(&s.receivers, &s.clusters), &sets);
}

/// What the metrics need of receivers: labels, types, and the (cluster, kind) pairs of their
/// targets.
fn series<'a>(
    receivers: &'a [Arc<Receiver>],
    clusters: &'a [crate::fleet::ClusterSpec],
) -> Vec<metrics::ReceiverSeries<'a>> {
    receivers
        .iter()
        .map(|r| metrics::ReceiverSeries {
            label: &r.label,
            kind: r.kind.as_str(),
            relays: r
                .targets
                .iter()
                .zip(&r.reach)
                .flat_map(|(t, cs)| {
                    cs.iter().filter_map(|&c| {
                        clusters.get(c).map(|c| (c.name.as_str(), t.kind.as_str()))
                    })
                })
                .collect(),
        })
        .collect()
}

fn set_certificate_expiry(s: &Settings) {
    if let Some(t) = s
        .server
        .certified_key
        .as_deref()
        .and_then(super::tls::not_after)
    {
        metrics::get().certificate_expiry.set(t as f64);
    }
}
