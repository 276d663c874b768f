//! State shared between the server thread and the `StandIn` handle.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use crate::kinds::Kinds;
use crate::rbac::Authorizer;
use crate::status::ApiError;
use crate::store::Store;
use crate::Recorded;

/// Locks a mutex even if a previous holder panicked: the data here stays
/// consistent per operation, and a test double must not cascade panics.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct FailPlan {
    pub remaining: usize,
    pub status: u16,
    pub retry_after: Option<u64>,
}

pub(crate) struct State {
    pub kinds: Kinds,
    /// bearer token -> user name
    pub tokens: HashMap<String, String>,
    pub authz: Authorizer,
    pub store: Mutex<Store>,
    pub requests: Mutex<Vec<Recorded>>,
    pub failures: Mutex<Option<FailPlan>>,
    pub latency: Mutex<Duration>,
    /// `host:port` advertised in `/api`.
    pub server_address: Mutex<String>,
    /// Ports of Services the service proxy can reach.
    pub services: Mutex<Vec<crate::proxy::ServicePort>>,
    /// Bumped to end every open watch (see `StandIn::end_watches`).
    pub watch_epoch: tokio::sync::watch::Sender<u64>,
}

impl State {
    /// Consumes one injected failure, if any are pending.
    pub fn take_failure(&self) -> Option<ApiError> {
        let mut f = lock(&self.failures);
        let plan = f.as_mut()?;
        if plan.remaining == 0 {
            *f = None;
            return None;
        }
        plan.remaining -= 1;
        let err = ApiError::injected(plan.status, plan.retry_after);
        if plan.remaining == 0 {
            *f = None;
        }
        Some(err)
    }
}
