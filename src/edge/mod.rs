//! The pingora server: the public TLS listener for hooks and the private admin listener.

pub mod admin;
pub mod answer;
pub mod body;
pub mod connection;
pub mod drain;
pub mod framing;
pub mod head;
pub mod hook;
pub mod live;
pub mod maintenance;
pub mod notify;
pub mod routes;
pub mod status_page;
pub mod tls;
pub mod tls_stream;
pub mod upgrade;

use crate::cluster::status::WatchStatus;
use crate::cluster::{ClusterWatch, Watched};
use crate::config::Settings;
use crate::fleet::Fleet;
use crate::history::History;
use crate::relay::job::Job;
use crate::relay::store::Store;
use crate::relay::Relay;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{RunArgs, Server};
use pingora::services::background::background_service;
use pingora::services::listening::Service;
use std::path::Path;
use std::sync::Arc;

/// Options of one `serve` run that are not part of the configuration file.
#[derive(Debug, Default, Clone)]
pub struct RunOptions {
    /// Take the listening sockets over from a running fluxgate (pingora's graceful upgrade).
    pub upgrade: bool,
}

/// Checks that the listeners can bind before handing them to pingora, which would only log a
/// bind failure from inside its runtime.
pub fn check_bind(settings: &Settings) -> Result<(), String> {
    let http01 = settings.server.acme.as_ref().and_then(|a| a.http_listen);
    for (key, addr) in [
        ("server.listen", Some(settings.server.listen)),
        ("server.admin_listen", Some(settings.server.admin_listen)),
        ("server.acme.http_listen", http01),
    ]
    .into_iter()
    .filter_map(|(k, a)| Some((k, a?)))
    {
        std::net::TcpListener::bind(addr)
            .map_err(|e| format!("{key}: cannot listen on {addr}: {e}"))?;
    }
    Ok(())
}

/// Opens the relay queue: this process's file in `relay.queue_dir`, with the jobs left by
/// processes that are gone, or an in-memory queue.
pub fn open_queue(settings: &Settings) -> Result<(Store, Vec<Job>), String> {
    match &settings.relay.queue_dir {
        Some(dir) => Store::open(dir).map_err(|e| format!("relay.queue_dir: {e}")),
        None => {
            tracing::warn!(
                "relay.queue_dir is not set: queued deliveries will not survive a restart"
            );
            Ok((Store::memory(), Vec::new()))
        }
    }
}

/// Runs the gateway until a signal stops it. Never returns. `kubes` are the kubeconfigs of
/// the fleet's clusters, in order; the first is the home cluster cluster mode watches.
pub fn run(
    config_path: &Path,
    settings: Settings,
    kubes: Vec<kube::Config>,
    opts: RunOptions,
) -> ! {
    let (store, resumed) = match open_queue(&settings) {
        Ok(q) => q,
        Err(e) => {
            eprintln!("fluxgate: {e}");
            std::process::exit(1);
        }
    };
    let conf = ServerConf {
        threads: settings.server.threads,
        grace_period_seconds: Some(settings.server.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(settings.server.shutdown_timeout.as_secs()),
        upgrade_sock: settings.server.upgrade_sock.display().to_string(),
        ..Default::default()
    };
    let opt = Opt {
        upgrade: opts.upgrade,
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    for r in &settings.receivers {
        tracing::info!(receiver = %r.label, r#type = %r.kind, targets = r.targets.len(), "receiver ready");
    }
    tracing::info!(
        listen = %settings.server.listen,
        admin = %settings.server.admin_listen,
        receivers = settings.receivers.len(),
        "fluxgate serving"
    );
    let (listen, admin_listen) = (settings.server.listen, settings.server.admin_listen);
    let watch_interval = settings.server.watch_interval;
    let (grace, upgrade_sock) = (
        settings.server.grace_period,
        settings.server.upgrade_sock.clone(),
    );
    let ready_status = format!(
        "serving {} receivers on {listen}, admin on {admin_listen}",
        settings.receivers.len()
    );
    let (relay_queue, relay_wait) = (settings.relay.queue.clone(), settings.relay.wait);
    let relay_events = settings.relay.events;

    // Cluster mode follows the Receivers of every cluster `[cluster]` picks (default: all).
    let cluster = settings.cluster.watch_receivers.then(|| {
        let watched: Vec<Watched> = settings
            .cluster
            .clusters
            .iter()
            .filter_map(|&id| {
                let (spec, kube) = (settings.clusters.get(id)?, kubes.get(id)?);
                Some(Watched {
                    id,
                    name: spec.name.as_str().into(),
                    kube: kube.clone(),
                })
            })
            .collect();
        let names: Vec<&str> = watched.iter().map(|w| &*w.name).collect();
        let status = Arc::new(WatchStatus::new(&names, &settings.cluster.namespaces));
        (watched, status)
    });
    for c in &settings.clusters {
        tracing::info!(cluster = %c.name, kubeconfig = %c.kubeconfig.display(), "cluster configured");
    }
    // ACME storage in the cluster talks to one cluster of the fleet with its credentials.
    let acme_kube = match settings.server.acme.as_ref().map(|a| &a.storage) {
        Some(crate::acme::StorageSettings::Kubernetes(k)) => kubes.get(k.cluster).cloned(),
        _ => None,
    };
    let fleet = Arc::new(Fleet::new(
        &settings.clusters,
        kubes,
        store,
        &relay_queue,
        resumed,
    ));
    if relay_events {
        // One recorder for every cluster: it knows the deliveries, each cluster's API writes
        // the Events on its own objects.
        let recorder = Arc::new(crate::relay::events::Recorder::new());
        for c in fleet.clusters() {
            c.api.set_events(recorder.clone());
        }
    }
    let durable = fleet.is_durable();
    let history = match &settings.relay.queue_dir {
        Some(dir) => match History::open(settings.history.size, dir) {
            Ok(h) => h,
            Err(e) => {
                eprintln!("fluxgate: delivery history: {e}");
                std::process::exit(1);
            }
        },
        None => History::memory(settings.history.size),
    };
    let history = Arc::new(history);
    // Jobs resumed after a restart have no waiting delivery: the history hears of them here.
    for c in fleet.clusters() {
        let h = history.clone();
        c.queue
            .on_unheard(Box::new(move |cluster, target, generation, outcome| {
                h.settle_unheard(cluster, target, generation, outcome)
            }));
    }
    let admin_token = settings.admin.token.clone();
    let relay = Arc::new(Relay::new(fleet.clone(), relay_wait));
    let acme = settings.server.acme.clone().map(crate::acme::Acme::new);
    let resolver = match (&settings.server.certified_key, &acme) {
        (Some(ck), _) => Arc::new(tls::CertResolver::new(ck.clone())),
        (None, Some(acme)) => match crate::acme::challenge::placeholder(&acme.config.domains) {
            // Served until the CA's certificate is: clients get a TLS session and a clear 503.
            Ok(ck) => Arc::new(tls::CertResolver::with_acme(ck, acme.clone())),
            Err(e) => {
                tracing::error!("cannot make the placeholder certificate: {e}");
                std::process::exit(1);
            }
        },
        (None, None) => unreachable!("configuration loading requires a certificate or acme"),
    };
    let capacity =
        connection::Capacity::new(connection::Capacity::size(settings.server.max_connections));
    tracing::info!(
        max_connections = capacity.limit(),
        "connections on the hook listener are capped (0: no cap)"
    );
    let live = Arc::new(live::Live::new(config_path, settings, resolver.clone()));
    let admin_resolver = resolver.clone();

    let tls = match tls::server_config(resolver.clone()) {
        Ok(c) => tokio_rustls::TlsAcceptor::from(c),
        Err(e) => {
            tracing::error!("cannot set up TLS: {e}");
            std::process::exit(1);
        }
    };
    let app = Arc::new(
        hook::HookApp::new(live.clone(), relay.clone(), history.clone()).with_acme(acme.clone()),
    );
    let mut hooks = Service::new(
        "fluxgate hooks".to_string(),
        connection::HookServer { app, tls, capacity },
    );
    hooks.set_connection_filter(Arc::new(connection::EdgeFilter {
        live: live.clone(),
        acme: acme.clone(),
    }));
    // TLS is accepted by HookServer (see tls_stream), so pingora listens on plain TCP. No
    // read buffer under rustls, which keeps its own: pingora's default of 64 KiB nearly
    // doubled the memory of an idle connection (measured with 10,000 held open) to save one
    // read call per request.
    let buffers = L4BufferSettings {
        read: Some(0),
        write: None,
    };
    hooks.add_listener(ListenerConfig::tcp(listen.to_string()).l4_buffer(buffers));

    let mut admin = Service::new(
        "fluxgate admin".to_string(),
        admin::AdminApp::new(
            relay,
            cluster.as_ref().map(|c| c.1.clone()),
            live.clone(),
            history,
            admin_token,
            admin_resolver,
        ),
    );
    admin.threads = Some(1);
    admin.add_tcp(&admin_listen.to_string());

    if let Some((clusters, status)) = cluster {
        server.add_service(background_service(
            "fluxgate cluster",
            ClusterWatch {
                live: live.clone(),
                clusters,
                status,
            },
        ));
    }
    let maintenance = background_service(
        "fluxgate maintenance",
        maintenance::Maintenance {
            live,
            fleet: fleet.clone(),
            watch_interval,
        },
    );
    let worker = background_service("fluxgate relay", maintenance::RelayWorker { fleet });
    if let Some(acme) = acme {
        server.add_service(background_service(
            "fluxgate acme",
            crate::acme::lifecycle::AcmeService {
                acme,
                resolver,
                https_port: listen.port(),
                kube: acme_kube,
            },
        ));
    }
    server.add_service(hooks);
    server.add_service(admin);
    server.add_service(maintenance);
    server.add_service(worker);

    drain::exit_when_idle(server.watch_execution_phase(), grace, durable);
    // Within systemd's default start timeout (90 s): pingora binds when its runtimes start.
    notify::ready_when_listening(
        vec![listen, admin_listen],
        ready_status,
        std::time::Duration::from_secs(60),
    );
    server.run(RunArgs {
        shutdown_signal: Box::new(upgrade::Signals { upgrade_sock }),
    });
    std::process::exit(0)
}
