//! The configuration in force, swapped atomically on reload (SIGHUP or a changed file).
//! Listeners, threads, the queue and the cluster connection are fixed at start; receivers,
//! secrets, allow-lists, limits and the certificate follow the files.

use super::hook::Limits;
use super::routes::Routes;
use super::tls::CertResolver;
use crate::config::{Receiver, Settings};
use crate::guard::ranges::RangeSet;
use crate::guard::Guard;
use crate::metrics;
use arc_swap::ArcSwap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// What one configuration means for requests.
pub struct Runtime {
    pub receivers: Vec<Arc<Receiver>>,
    pub routes: Routes,
    pub guard: Arc<Guard>,
    pub limits: Limits,
    pub ranges: Vec<Arc<RangeSet>>,
}

impl Runtime {
    fn new(s: &Settings, guard: Arc<Guard>) -> Self {
        Runtime {
            routes: Routes::new(&s.receivers),
            receivers: s.receivers.clone(),
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

pub struct Live {
    current: ArcSwap<Runtime>,
    config_path: PathBuf,
    resolver: Arc<CertResolver>,
    /// The settings last loaded, to tell what a reload changed, and the files they name.
    loaded: Mutex<(Settings, Vec<PathBuf>)>,
    /// Modification times of the watched files at the last load.
    stamps: Mutex<Vec<Option<SystemTime>>>,
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
        let runtime = Runtime::new(&settings, guard);
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
        }
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
    pub fn reload(&self, why: &str) {
        let m = metrics::get();
        match Settings::load(&self.config_path) {
            Ok(new) => {
                let mut loaded = match self.loaded.lock() {
                    Ok(l) => l,
                    Err(p) => p.into_inner(),
                };
                for key in loaded.0.fixed_differences(&new) {
                    tracing::warn!("{key} changed: restart fluxgate to apply it (`fluxgate serve -u` for no downtime)");
                }
                let guard = Arc::new(
                    self.get()
                        .guard
                        .reconfigure(&new.limits, new.server.trusted_proxies.clone()),
                );
                self.resolver.replace(new.server.certified_key.clone());
                set_certificate_expiry(&new);
                init_series(&new);
                self.current.store(Arc::new(Runtime::new(&new, guard)));
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
                m.config_reloads.with_label_values(&["ok"]).inc();
                m.last_reload_success.set(unix_now());
                m.last_reload_successful.set(1);
            }
            Err(e) => {
                // Remember the failed version so it is not retried every tick; the next change
                // (or SIGHUP) tries again.
                let files = self.loaded.lock().map(|l| l.1.clone()).unwrap_or_default();
                if let Ok(mut s) = self.stamps.lock() {
                    *s = stamps(&files);
                }
                let problems = e.to_string().replace('\n', "; ");
                tracing::error!(
                    trigger = why,
                    "configuration reload failed, keeping the running configuration: {problems}"
                );
                m.config_reloads.with_label_values(&["failed"]).inc();
                m.last_reload_successful.set(0);
            }
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
    metrics::init_series(&s.receivers, &sets);
}

fn set_certificate_expiry(s: &Settings) {
    if let Some(t) = super::tls::not_after(&s.server.certified_key) {
        metrics::get().certificate_expiry.set(t as f64);
    }
}
