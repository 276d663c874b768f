//! A stop that waits only for what is in flight: pingora sleeps the whole grace period after
//! SIGTERM (or after the hand-over of SIGQUIT), even with nothing open. Requests are counted
//! from their head (and a new connection from its accept to its first answer); once none is
//! left, and no delivery waits in an in-memory queue, the process exits at once. With work in
//! flight the grace period is honoured as before.

use crate::metrics;
use pingora::server::ExecutionPhase;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::broadcast;

static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// Held while a request (or a connection's first one) is in flight.
pub struct Busy(());

impl Busy {
    pub fn enter() -> Self {
        IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
        Busy(())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Watches pingora's phases from a thread of its own (the main thread sleeps through the grace
/// period): tells systemd a stop began, and exits once idle within the grace period.
pub fn exit_when_idle(
    mut phases: broadcast::Receiver<ExecutionPhase>,
    grace: Duration,
    durable_queue: bool,
) {
    let idle = move || {
        IN_FLIGHT.load(Ordering::SeqCst) == 0 && (durable_queue || metrics::queued_jobs() <= 0)
    };
    let spawned = std::thread::Builder::new()
        .name("fluxgate drain".into())
        .spawn(move || {
            loop {
                match phases.blocking_recv() {
                    Ok(ExecutionPhase::GracefulTerminate) => {
                        super::notify::stopping("stopping: finishing the requests in flight");
                    }
                    Ok(ExecutionPhase::GracefulUpgradeTransferringFds) => {
                        super::notify::stopping("handing the listening sockets over");
                    }
                    Ok(ExecutionPhase::ShutdownGracePeriod) => break,
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
            let until = Instant::now() + grace;
            while Instant::now() < until {
                if idle() {
                    tracing::info!("nothing in flight: exiting before the end of the grace period");
                    std::process::exit(0);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("cannot watch the shutdown, the whole grace period will be waited: {e}");
    }
}
