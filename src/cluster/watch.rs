//! One task per watched cluster and namespace: list the Receivers, then follow the watch, with kube's
//! watcher (which resumes an ended watch where it was, and lists again when told the history
//! is gone). A failure is reported and, after a backoff, the namespace is listed afresh: the
//! list says for certain what exists now, whatever happened while the watch was down.

use super::object::{ReceiverObject, GROUP, KIND, PLURAL, VERSION};
use crate::config::ALL_NAMESPACES;
use crate::relay::kube::{error_chain, one_line};
use futures::StreamExt;
use kube::api::{Api, DynamicObject};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::utils::Backoff;
use kube::runtime::watcher::{self, watcher, DefaultBackoff, Event};
use kube::Client;
use std::time::Duration;
use tokio::sync::mpsc;

/// What a watch saw, for the task that keeps the set.
#[derive(Debug)]
pub enum Change {
    /// Every Receiver in the scope, after a (re)list.
    Listed {
        scope: String,
        objects: Vec<ReceiverObject>,
    },
    Applied(ReceiverObject),
    Deleted(ReceiverObject),
    Failed {
        scope: String,
        error: String,
    },
}

fn receivers(client: Client, scope: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk(GROUP, VERSION, KIND);
    let ar = ApiResource::from_gvk_with_plural(&gvk, PLURAL);
    if scope == ALL_NAMESPACES {
        Api::all_with(client, &ar)
    } else {
        Api::namespaced_with(client, scope, &ar)
    }
}

/// Where a watch sends its changes: tagged with the watching cluster's position.
pub type Sink = (usize, mpsc::Sender<(usize, Change)>);

/// Watches `scope` until the receiving end is gone. `client` must not have a read timeout
/// shorter than a watch (the watcher has its own idle timeout).
pub async fn run(client: Client, scope: String, tx: Sink) {
    let api = receivers(client, &scope);
    // client-go's reflector backoff: 0.8 s doubling to 30 s, with jitter.
    let mut backoff = DefaultBackoff::default();
    loop {
        let error = follow(&api, &scope, &tx, &mut backoff).await;
        let Some(error) = error else { return };
        let failed = Change::Failed {
            scope: scope.clone(),
            error,
        };
        if tx.1.send((tx.0, failed)).await.is_err() {
            return;
        }
        tokio::time::sleep(backoff.next().unwrap_or(Duration::from_secs(30))).await;
    }
}

/// Lists and watches until the first error, which it returns; `None` when nobody listens.
async fn follow(
    api: &Api<DynamicObject>,
    scope: &str,
    tx: &Sink,
    backoff: &mut DefaultBackoff,
) -> Option<String> {
    let mut events = watcher(api.clone(), watcher::Config::default()).boxed();
    let mut listed = Vec::new();
    loop {
        let change = match events.next().await {
            Some(Ok(Event::Init)) => {
                listed.clear();
                continue;
            }
            Some(Ok(Event::InitApply(o))) => {
                listed.extend(ReceiverObject::from_dynamic(o));
                continue;
            }
            Some(Ok(Event::InitDone)) => {
                backoff.reset();
                Change::Listed {
                    scope: scope.to_string(),
                    objects: std::mem::take(&mut listed),
                }
            }
            Some(Ok(Event::Apply(o))) => match ReceiverObject::from_dynamic(o) {
                Some(o) => Change::Applied(o),
                None => continue,
            },
            Some(Ok(Event::Delete(o))) => match ReceiverObject::from_dynamic(o) {
                Some(o) => Change::Deleted(o),
                None => continue,
            },
            // 410 Expired: the history was compacted; the watcher lists again by itself, as
            // after any restart of the API server's watch cache. Not a failure.
            Some(Err(watcher::Error::WatchError(s))) if s.code == 410 => {
                tracing::debug!(namespace = scope, "Receiver watch expired, listing again");
                continue;
            }
            Some(Err(e)) => return Some(one_line(&error_chain(&e))),
            None => return Some("the watch stream ended".into()),
        };
        if tx.1.send((tx.0, change)).await.is_err() {
            return None;
        }
    }
}
