//! Runs a plan: starts the worker threads and the progress line, waits, merges the counts.

use crate::plan::Plan;
use crate::report::Report;
use crate::stats::Stats;
use crate::worker::{self, Clock, Shared};
use std::io::Write;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Runs `plan` to the end and reports. Requests still in flight when the duration ends are
/// waited for (at most `--timeout`) and counted.
pub fn execute(plan: Plan) -> Report {
    let plan = Arc::new(plan);
    let shared = Arc::new(Shared::default());
    // A moment for every thread to build its runtime, so they start together.
    let start = Instant::now() + Duration::from_millis(20);
    let clock = Clock {
        start,
        warm_end: start + plan.warmup,
        end: start + plan.warmup + plan.duration,
    };
    let workers: Vec<_> = (0..plan.threads)
        .map(|i| {
            let (plan, shared) = (plan.clone(), shared.clone());
            let slots = worker::share(plan.connections, plan.threads, i);
            std::thread::Builder::new()
                .name(format!("loadtest-{i}"))
                .spawn(move || worker::run(plan, shared, slots, clock))
                .expect("a worker thread")
        })
        .collect();
    let (stop, stopped) = mpsc::channel::<()>();
    let progress = plan.progress.then(|| {
        let shared = shared.clone();
        std::thread::spawn(move || progress_lines(&shared, clock, stopped))
    });
    let mut total = Stats::default();
    for w in workers {
        total.merge(&w.join().expect("a worker thread panicked"));
    }
    let finished = Instant::now();
    drop(stop);
    if let Some(p) = progress {
        let _ = p.join();
    }
    Report::new(
        &plan,
        &total,
        finished.saturating_duration_since(clock.warm_end),
    )
}

/// One line a second on stderr: time since the start, answers in the last second, errors.
fn progress_lines(shared: &Shared, clock: Clock, stopped: mpsc::Receiver<()>) {
    let mut last = (0u64, 0u64);
    let mut last_at = clock.start;
    for second in 1u64.. {
        let at = clock.start + Duration::from_secs(second);
        let wait = at.saturating_duration_since(Instant::now());
        if let Err(mpsc::RecvTimeoutError::Disconnected) = stopped.recv_timeout(wait) {
            return;
        }
        let now = Instant::now();
        let (responses, errors) = shared.live.snapshot();
        let secs = now
            .saturating_duration_since(last_at)
            .as_secs_f64()
            .max(1e-3);
        let rate = (responses - last.0) as f64 / secs;
        let phase = if at <= clock.warm_end {
            "  (warm-up)"
        } else if at > clock.end {
            "  (finishing)"
        } else {
            ""
        };
        let _ = writeln!(
            std::io::stderr().lock(),
            "{:>5}s {:>10.0} req/s  {:>8} errors  ({} answered){phase}",
            second,
            rate,
            errors - last.1,
            responses
        );
        last = (responses, errors);
        last_at = now;
    }
}
