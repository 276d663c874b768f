//! Replicas sharing storage in the cluster. Every replica runs the same loop, every
//! `poll_interval`:
//!
//! 1. read the Lease: when another replica holds it with challenges published, answer them
//!    here too (and let the CA through the allow-list) and acknowledge them on the Lease;
//! 2. read the certificate's Secret: a new version is installed in place (open connections
//!    keep theirs), and sets the next renewal time;
//! 3. when no usable certificate is stored or its renewal is due, and no failed order asked to
//!    wait, try to take the Lease. The one that gets it reads the Secret again (another may
//!    have just renewed), orders, publishes the challenges and waits for the others'
//!    acknowledgements before the CA validates, renews the Lease meanwhile, stores the
//!    certificate and releases the Lease. The others see the result at their next poll.
//!
//! So exactly one replica orders at a time, and the CA's validation may reach any of them.

use super::client::Http;
use super::kube_store::KubeStore;
use super::lease::{self, LeaseError, DURATION};
use super::lifecycle::{failed, now, usable, AcmeService, FIRST_BACKOFF};
use super::storage::Storage;
use crate::metrics;
use std::sync::Arc;
use std::time::Duration;

/// The longest pause after failed reads of the API.
const MAX_API_BACKOFF: Duration = Duration::from_secs(60);

/// What this replica knows between polls.
struct State {
    /// The resourceVersion of the certificate Secret last installed.
    installed: Option<String>,
    /// When to renew what is installed (0: nothing usable is).
    renew: i64,
    /// The challenges of another replica's order answered here.
    followed: Option<String>,
    /// No order before this (unix seconds): this replica's own last failure.
    not_before: i64,
    order_backoff: Duration,
}

pub async fn run(svc: &AcmeService, store: Arc<KubeStore>, http: &Http) {
    let storage = Storage::Kubernetes(store.clone());
    let k = &store.settings;
    tracing::info!(
        identity = %k.identity,
        cluster = %k.cluster_name,
        secret = %format!("{}/{}", k.namespace, k.secret),
        lease = %format!("{}/{}", k.namespace, k.lease),
        "ACME storage in the cluster, shared with other replicas"
    );
    let mut st = State {
        installed: None,
        renew: 0,
        followed: None,
        not_before: 0,
        order_backoff: FIRST_BACKOFF,
    };
    let mut api_backoff = k.poll_interval;
    loop {
        let pause = match poll(svc, &store, &storage, http, &mut st).await {
            Ok(()) => {
                api_backoff = k.poll_interval;
                k.poll_interval
            }
            Err(e) => {
                tracing::error!(retry_in = ?api_backoff, "ACME storage: {e}");
                let p = api_backoff;
                api_backoff = (api_backoff * 2).min(MAX_API_BACKOFF);
                p
            }
        };
        tokio::time::sleep(pause).await;
    }
}

/// One round: follow the Lease, install a newer certificate, order if it is due.
async fn poll(
    svc: &AcmeService,
    store: &Arc<KubeStore>,
    storage: &Storage,
    http: &Http,
    st: &mut State,
) -> Result<(), String> {
    let l = store.lease.read().await?;
    let holder = l
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.clone())
        .unwrap_or_default();
    let theirs = (!holder.is_empty() && holder != store.lease.identity())
        .then(|| lease::challenges(&l))
        .flatten();
    let id = theirs.as_ref().map(|c| c.id.clone());
    if id != st.followed {
        svc.acme.follow(theirs.as_ref())?;
        match &theirs {
            Some(c) => {
                tracing::info!(holder = %holder, challenges = %c.id, "answering the challenges of another replica's order")
            }
            None => tracing::debug!("no challenges to answer for other replicas"),
        }
        st.followed = id;
    }
    store
        .lease
        .sign(st.followed.as_deref())
        .await
        .map_err(|e| e.to_string())?;

    install_newer(svc, store, storage, http, st).await?;

    let retry_at = lease::retry_at(&l).unwrap_or(0).max(st.not_before);
    if now() < st.renew || now() < retry_at {
        return Ok(());
    }
    match store.lease.acquire().await {
        Ok(()) => lead(svc, store, storage, http, st).await,
        Err(LeaseError::Held(h)) => {
            tracing::debug!(holder = %h, "another replica is ordering");
            Ok(())
        }
        Err(LeaseError::Api(e)) => Err(e),
    }
}

/// Installs the stored certificate when its Secret changed since the last install.
async fn install_newer(
    svc: &AcmeService,
    store: &KubeStore,
    storage: &Storage,
    http: &Http,
    st: &mut State,
) -> Result<(), String> {
    let read = store.read_certificate().await?;
    if st.installed.as_ref() == Some(&read.version) {
        return Ok(());
    }
    let domains = &svc.acme.config.domains;
    st.renew = match &read.stored {
        Some(s) if usable(s, domains) => svc.install(s, http, storage).await,
        Some(_) => {
            tracing::info!("the stored certificate is expired or names other domains");
            0
        }
        None => {
            tracing::info!("no certificate stored yet");
            0
        }
    };
    st.installed = Some(read.version);
    Ok(())
}

/// Holding the Lease: orders unless another replica renewed just before, then releases it.
async fn lead(
    svc: &AcmeService,
    store: &Arc<KubeStore>,
    storage: &Storage,
    http: &Http,
    st: &mut State,
) -> Result<(), String> {
    let before = st.installed.clone();
    let result = match install_newer(svc, store, storage, http, st).await {
        Err(e) => Err(e),
        // Renewed by another replica between our read and our taking the Lease.
        Ok(()) if st.installed != before && now() < st.renew => Ok(None),
        Ok(()) => Ok(Some(order_holding(svc, store, storage, http).await)),
    };
    let retry_at = match &result {
        Ok(Some(Ok(at))) => {
            metrics::get().acme_orders.with_label_values(&["ok"]).inc();
            st.order_backoff = FIRST_BACKOFF;
            st.renew = *at;
            // Installed already: only its version is new.
            st.installed = store.read_certificate().await.ok().map(|r| r.version);
            None
        }
        Ok(Some(Err(f))) => {
            st.not_before = failed(f, &mut st.order_backoff);
            Some(st.not_before)
        }
        _ => None,
    };
    if let Err(e) = store.lease.release(retry_at).await {
        tracing::warn!("cannot release the Lease (it expires by itself): {e}");
    }
    result.map(|_| ())
}

/// The order, with the Lease renewed every third of its duration while it runs. Losing the
/// Lease (another replica took it over, which only happens when the renewals could not reach
/// the API for a whole duration) abandons the order.
async fn order_holding(
    svc: &AcmeService,
    store: &KubeStore,
    storage: &Storage,
    http: &Http,
) -> Result<i64, super::client::Failure> {
    let keep = async {
        loop {
            tokio::time::sleep(DURATION / 3).await;
            match store.lease.renew().await {
                Ok(()) => {}
                Err(LeaseError::Held(h)) => return h,
                Err(LeaseError::Api(e)) => tracing::warn!("cannot renew the Lease: {e}"),
            }
        }
    };
    tokio::select! {
        r = svc.obtain(http, storage) => r,
        h = keep => Err(super::client::Failure {
            reason: format!("the Lease was taken over by {h} during the order"),
            retry_after: None,
        }),
    }
}
