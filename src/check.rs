//! `fluxgate check`: everything `serve` would need, checked before it is needed, one line per
//! finding: `ok:`, `warning:` or `problem:`. Any problem makes the exit status non-zero.

use crate::cluster::object::{GROUP, PLURAL};
use crate::config::{Settings, ALL_NAMESPACES};
use crate::edge::tls::not_after;
use crate::fleet::DEFAULT;
use crate::relay::kube::{load_config, KubeApi};
use crate::relay::target::Select;
use crate::secret::loose_permissions;
use std::collections::BTreeSet;
use std::path::Path;
use tokio::runtime::Runtime;

#[derive(Default)]
struct Report {
    problems: usize,
}

impl Report {
    fn ok(&self, s: impl AsRef<str>) {
        println!("ok: {}", s.as_ref());
    }
    fn warn(&self, s: impl AsRef<str>) {
        println!("warning: {}", s.as_ref());
    }
    fn problem(&mut self, s: impl AsRef<str>) {
        println!("problem: {}", s.as_ref());
        self.problems += 1;
    }
}

const DAY: i64 = 86_400;

fn date(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

pub fn run(config: &Path, offline: bool) -> Result<(), String> {
    let mut r = Report::default();
    let settings = match Settings::load(config) {
        Ok(s) => s,
        Err(e) => {
            for p in &e.0 {
                r.problem(format!("{}: {}", p.key, p.reason));
            }
            return Err(format!("{} problem(s) in {}", r.problems, config.display()));
        }
    };
    r.ok(format!("configuration {}", config.display()));
    let loose = loose_files(&settings);
    for w in &settings.warnings {
        // Loading words them as warnings, since `serve` keeps serving through them; a check
        // fails on them, so they are fixed before anyone relies on the files being private.
        if loose.iter().any(|l| w.ends_with(l.as_str())) {
            r.problem(w);
        } else {
            r.warn(w);
        }
    }
    certificate(&settings, &mut r);
    if let Some(a) = &settings.server.acme {
        acme(a, &mut r);
    }
    for rec in &settings.receivers {
        // A path-only type's path is its credential: never printed whole, as in the logs.
        let path = if rec.kind.path_is_credential() {
            format!(
                "{} (the path is this type's credential: `fluxgate hook-path` prints it whole)",
                crate::hook_path::elide(&rec.path)
            )
        } else {
            rec.path.clone()
        };
        r.ok(format!(
            "receiver {} ({}): {} -> {} target(s)",
            rec.label,
            rec.kind,
            path,
            rec.targets.len()
        ));
    }
    let c = &settings.cluster;
    if c.watch_receivers {
        r.ok(format!(
            "cluster mode: serving the Receivers in {} (their Secrets read again every {})",
            c.namespaces.join(", "),
            humantime::format_duration(c.secret_refresh)
        ));
    }
    if let Some(dir) = &settings.relay.queue_dir {
        match writable(dir) {
            Ok(()) => r.ok(format!("relay.queue_dir {} is writable", dir.display())),
            Err(e) => r.problem(format!("relay.queue_dir: {e}")),
        }
    } else {
        r.warn("relay.queue_dir is not set: queued deliveries will not survive a restart");
    }
    if !offline {
        match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => {
                cluster(&rt, &settings, &mut r);
                if let Some(a) = &settings.server.acme {
                    if let crate::acme::StorageSettings::Kubernetes(k) = &a.storage {
                        acme_cluster(&rt, &settings, k, &mut r);
                    }
                    acme_directory(&rt, a, &mut r);
                }
                issuers(&rt, &settings, &mut r);
            }
            Err(e) => r.problem(format!("cannot start a runtime: {e}")),
        }
    }
    if r.problems > 0 {
        return Err(format!("{} problem(s)", r.problems));
    }
    Ok(())
}

fn certificate(s: &Settings, r: &mut Report) {
    let (Some(ck), Some(cert)) = (&s.server.certified_key, &s.server.tls_cert) else {
        return;
    };
    let Some(end) = not_after(ck) else {
        r.warn("server.tls_cert: cannot read the certificate's expiry");
        return;
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let cert = cert.display();
    if end <= now {
        r.problem(format!(
            "server.tls_cert: the certificate {cert} expired on {}",
            date(end)
        ));
    } else if end - now < 14 * DAY {
        r.warn(format!(
            "server.tls_cert: the certificate {cert} expires in {} day(s), on {}",
            (end - now) / DAY,
            date(end)
        ));
    } else {
        r.ok(format!(
            "server.tls_cert: {cert} valid until {} ({} days)",
            date(end),
            (end - now) / DAY
        ));
    }
}

/// The ACME settings and what is stored: the certificate's expiry, the storage writable.
fn acme(a: &crate::acme::AcmeConfig, r: &mut Report) {
    r.ok(format!(
        "server.acme: certificates for {} from {}, answered by {}",
        a.domains.join(", "),
        a.directory,
        match a.http_listen {
            Some(addr) => format!("HTTP-01 on {addr}"),
            None => "TLS-ALPN-01 on server.listen".into(),
        }
    ));
    let storage = match &a.storage {
        crate::acme::StorageSettings::Directory(d) => d,
        crate::acme::StorageSettings::Kubernetes(k) => {
            // The objects are read and the Role reviewed online, by acme_cluster.
            r.ok(format!(
                "server.acme.storage: in cluster {}, Secrets {ns}/{} and {ns}/{}, Lease {ns}/{}; this replica is {:?}, polling every {}",
                k.cluster_name,
                k.secret,
                k.account_secret,
                k.lease,
                k.identity,
                humantime::format_duration(k.poll_interval),
                ns = k.namespace,
            ));
            return;
        }
    };
    if storage.exists() {
        match writable(storage) {
            Ok(()) => r.ok(format!(
                "server.acme.storage {} is writable",
                storage.display()
            )),
            Err(e) => r.problem(format!("server.acme.storage: {e}")),
        }
    } else {
        r.ok(format!(
            "server.acme.storage {} will be created (owner-only) at start",
            storage.display()
        ));
    }
    stored_certificate(
        crate::acme::storage::Directory::new(storage.clone()).load_certificate(),
        r,
    );
}

fn stored_certificate(c: Result<Option<crate::acme::storage::Stored>, String>, r: &mut Report) {
    match c {
        Ok(Some(c)) => {
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            if c.not_after <= now {
                r.warn(format!(
                    "server.acme: the stored certificate expired on {}; a new one is ordered at start",
                    date(c.not_after)
                ));
            } else {
                r.ok(format!(
                    "server.acme: stored certificate for {} valid until {}",
                    c.names.join(", "),
                    date(c.not_after)
                ));
            }
        }
        Ok(None) => r.ok("server.acme: no certificate stored yet; one is ordered at start"),
        Err(e) => r.warn(format!(
            "server.acme.storage: {e}; a new one is ordered at start"
        )),
    }
}

/// `storage = "kubernetes"`: the three objects exist, and the account may get and update each
/// of them (SelfSubjectAccessReview), as the replicas will.
fn acme_cluster(rt: &Runtime, s: &Settings, k: &crate::acme::KubeStorage, r: &mut Report) {
    let Some(spec) = s.clusters.get(k.cluster) else {
        return;
    };
    let config = match rt.block_on(load_config(
        &spec.kubeconfig,
        spec.context.as_deref(),
        spec.timeout,
    )) {
        Ok(c) => c,
        // The cluster's own lines say why.
        Err(_) => return,
    };
    let api = KubeApi::new(config.clone());
    let objects = [
        ("", "secrets", &k.secret),
        ("", "secrets", &k.account_secret),
        ("coordination.k8s.io", "leases", &k.lease),
    ];
    let mut allowed = true;
    for (group, resource, name) in objects {
        for verb in ["get", "update"] {
            match rt.block_on(api.can_i(verb, group, resource, &k.namespace, Some(name))) {
                Ok(true) => {}
                Ok(false) => {
                    allowed = false;
                    r.problem(format!(
                        "server.acme.storage: the service account may not {verb} {resource} {name:?} in {}; see deploy/acme/",
                        k.namespace
                    ));
                }
                Err(e) => {
                    allowed = false;
                    r.problem(format!(
                        "server.acme.storage: cannot review {verb} on {resource} {name:?}: {e}"
                    ));
                }
            }
        }
    }
    if allowed {
        r.ok(format!(
            "server.acme.storage: may get and update the two Secrets and the Lease in {}",
            k.namespace
        ));
    }
    let store = rt.block_on(async {
        kube::Client::try_from(config)
            .map(|c| crate::acme::kube_store::KubeStore::new(c, k.clone()))
            .map_err(|e| e.to_string())
    });
    let store = match store {
        Ok(s) => s,
        Err(e) => return r.problem(format!("server.acme.storage: {e}")),
    };
    let found = rt.block_on(async {
        let lease = store.lease.read().await.map(|_| ());
        let account = store.load_account("").await.map(|_| ());
        let cert = store.read_certificate().await;
        (lease, account, cert)
    });
    for e in [found.0.err(), found.1.err()].into_iter().flatten() {
        r.problem(format!("server.acme.storage: {e}"));
    }
    match found.2 {
        Ok(read) => stored_certificate(Ok(read.stored), r),
        Err(e) => r.problem(format!("server.acme.storage: {e}")),
    }
}

/// Reaches the ACME directory over HTTPS, trusting `ca_roots`.
fn acme_directory(rt: &Runtime, a: &crate::acme::AcmeConfig, r: &mut Report) {
    let got = crate::acme::client::Http::new(a)
        .map(|h| rt.block_on(async move { h.directory(&a.directory).await }));
    match got {
        Ok(Ok(dir)) => {
            let eab_required = dir
                .pointer("/meta/externalAccountRequired")
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(false);
            if eab_required && a.eab.is_none() {
                r.problem(format!(
                    "server.acme.eab_kid: {} requires External Account Binding; set eab_kid and eab_hmac_key_file",
                    a.directory
                ));
            } else {
                r.ok(format!("server.acme.directory {} reached", a.directory));
            }
        }
        Ok(Err(e)) | Err(e) => r.problem(format!("server.acme.directory: {e}")),
    }
}

/// What is loose about each file holding a secret (the TLS key, the kubeconfig, receivers'
/// secret files) and the directories holding it, as loading found it under the file's key.
fn loose_files(s: &Settings) -> Vec<String> {
    let mut files: Vec<&std::path::PathBuf> = s.server.tls_key.iter().collect();
    files.push(&s.kubernetes.kubeconfig);
    files.extend(s.receivers.iter().flat_map(|r| &r.secret_files));
    files
        .into_iter()
        .filter_map(|f| loose_permissions(f))
        .collect()
}

fn writable(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let probe = dir.join(format!(".fluxgate-check-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(|e| format!("cannot write in {}: {e}", dir.display()))?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

/// Fetches each token issuer's signing keys once, as the first gcr or generic-oidc delivery
/// would: without them, every delivery is answered 503.
fn issuers(rt: &Runtime, s: &Settings, r: &mut Report) {
    for rec in &s.receivers {
        for keys in rec.verifier.key_sets() {
            let label = &rec.label;
            match rt.block_on(keys.probe()) {
                Ok(n) => r.ok(format!(
                    "receiver {label}: {n} signing key(s) from {}",
                    keys.source()
                )),
                Err(e) => r.problem(format!(
                    "receiver {label}: cannot fetch the token issuer's signing keys: {e}"
                )),
            }
        }
    }
}

/// Every cluster of the fleet: reachable with its credentials, and allowed what the relay
/// does there. A fleet's lines start with `cluster NAME:`; a lone `default` reads as before.
fn cluster(rt: &Runtime, s: &Settings, r: &mut Report) {
    let fleet = s.clusters.len() > 1 || s.clusters.iter().any(|c| c.name != DEFAULT);
    for (i, c) in s.clusters.iter().enumerate() {
        let (key, prefix) = if i == 0 && c.name == DEFAULT {
            ("kubernetes.kubeconfig".to_string(), "kubernetes")
        } else {
            (
                format!("clusters[{}].kubeconfig", crate::cli::cluster_index(s, i)),
                "",
            )
        };
        let who = if fleet {
            format!("cluster {}: ", c.name)
        } else {
            String::new()
        };
        let config = match rt.block_on(load_config(&c.kubeconfig, c.context.as_deref(), c.timeout))
        {
            Ok(c) => c,
            Err(e) => {
                r.problem(format!("{who}{key}: {}: {e}", c.kubeconfig.display()));
                continue;
            }
        };
        let url = config.cluster_url.to_string();
        let api = KubeApi::new(config);
        if let Err(e) = rt.block_on(api.check_reachable()) {
            let place = if fleet { "kubernetes API" } else { prefix };
            r.problem(format!("{who}{place}: {url}: {e}"));
            continue;
        }
        r.ok(format!(
            "{who}kubernetes API {url}: reachable with the configured credentials"
        ));
        rt.block_on(permissions(s, i, &who, &api, r));
    }
}

/// Asks, for every target reaching cluster `id`, whether the account may do what the relay
/// does, and whether it may do much more than that.
async fn permissions(s: &Settings, id: usize, who: &str, api: &KubeApi, r: &mut Report) {
    let mut namespaces = BTreeSet::new();
    for (i, rec) in s.receivers.iter().enumerate() {
        let mut reached = false;
        for (j, t) in rec.targets.iter().enumerate() {
            if !rec.reach.get(j).is_some_and(|cs| cs.contains(&id)) {
                continue;
            }
            reached = true;
            namespaces.insert(t.namespace.clone());
            let qualified = format!("{}.{}", t.plural, t.group);
            // A filtered object is read before it is patched.
            let filtered = rec.filters.get(j).is_some_and(|f| !f.is_empty());
            let (name, verbs): (Option<&str>, &[&str]) = match &t.select {
                Select::Name(n) if filtered => (Some(n.as_str()), &["get", "patch"]),
                Select::Name(n) => (Some(n.as_str()), &["patch"]),
                Select::Labels(_) => (None, &["list", "patch"]),
            };
            for verb in verbs {
                let allowed = api
                    .can_i(verb, &t.group, &t.plural, &t.namespace, name)
                    .await;
                if who.is_empty() {
                    match allowed {
                        Ok(true) => r.ok(format!("receivers[{i}] {}: may {verb} {t}", rec.label)),
                        Ok(false) => r.problem(format!(
                            "receivers[{i}] {}: the service account may not {verb} {qualified} in {} (needed for {t}); see deploy/",
                            rec.label, t.namespace
                        )),
                        Err(e) => r.problem(format!("receivers[{i}] {}: cannot review {verb} on {t}: {e}", rec.label)),
                    }
                } else {
                    match allowed {
                        Ok(true) => r.ok(format!("{who}may {verb} {t} (receivers[{i}] {})", rec.label)),
                        Ok(false) => r.problem(format!(
                            "{who}may not {verb} {t}: the service account may not {verb} {qualified} in {} (receivers[{i}] {}); see deploy/",
                            t.namespace, rec.label
                        )),
                        Err(e) => r.problem(format!("{who}cannot review {verb} on {t} (receivers[{i}] {}): {e}", rec.label)),
                    }
                }
            }
        }
        // Forward mode goes to the receiver's own clusters.
        let forwarded = rec.forward.is_some() && rec.forward_clusters.contains(&id);
        if reached || forwarded || (rec.targets.is_empty() && rec.forward.is_none() && id == 0) {
            namespaces.insert(rec.namespace.clone());
        }
    }
    // Cluster mode watches the clusters `[cluster]` picks.
    if s.cluster.watch_receivers && s.cluster.clusters.contains(&id) {
        cluster_permissions(s, who, api, r).await;
    }
    if s.relay.events {
        event_permissions(s, id, who, api, r).await;
    }
    for ns in namespaces {
        if let Ok(true) = api.can_i("*", "*", "*", &ns, None).await {
            r.warn(format!("{who}the service account may do anything in {ns}; it needs only get, list and patch on the Flux kinds it targets"));
        } else if let Ok(true) = api.can_i("get", "", "secrets", &ns, None).await {
            r.warn(format!("{who}the service account may read Secrets in {ns}; it needs only get, list and patch on the Flux kinds it targets"));
        }
    }
}

/// relay.events writes an Event in each target's namespace. Without the right it is only a
/// warning: the patches work, and the Events are best-effort.
async fn event_permissions(s: &Settings, id: usize, who: &str, api: &KubeApi, r: &mut Report) {
    let namespaces: BTreeSet<&str> = s
        .receivers
        .iter()
        .flat_map(|rec| {
            rec.targets
                .iter()
                .enumerate()
                .filter(|(j, _)| rec.reach.get(*j).is_some_and(|cs| cs.contains(&id)))
                .map(|(_, t)| t.namespace.as_str())
        })
        .collect();
    for ns in namespaces {
        match api.can_i("create", "", "events", ns, None).await {
            Ok(true) => r.ok(format!("{who}relay.events: may create events in {ns}")),
            Ok(false) => r.warn(format!(
                "{who}relay.events: the service account may not create events in {ns}, so reconciles there get no Event; see deploy/events/"
            )),
            Err(e) => r.warn(format!("{who}relay.events: cannot review create on events in {ns}: {e}")),
        }
    }
}

/// Cluster mode lists and watches Receivers; Secrets it reads one by one, by name, which only
/// the Receivers tell, so they are checked as they are read (a 403 is logged).
async fn cluster_permissions(s: &Settings, who: &str, api: &KubeApi, r: &mut Report) {
    for ns in &s.cluster.namespaces {
        let (scope, shown) = if ns == ALL_NAMESPACES {
            ("", "all namespaces")
        } else {
            (ns.as_str(), ns.as_str())
        };
        for verb in ["list", "watch"] {
            match api.can_i(verb, GROUP, PLURAL, scope, None).await {
                Ok(true) => r.ok(format!("{who}cluster mode: may {verb} Receivers in {shown}")),
                Ok(false) => r.problem(format!(
                    "{who}cluster mode: the service account may not {verb} {PLURAL}.{GROUP} in {shown}; see deploy/cluster-mode/"
                )),
                Err(e) => r.problem(format!(
                    "{who}cluster mode: cannot review {verb} on Receivers in {shown}: {e}"
                )),
            }
        }
        if let Ok(true) = api.can_i("list", "", "secrets", scope, None).await {
            r.warn(format!("{who}the service account may list Secrets in {shown}; cluster mode needs only get on the Secrets the Receivers name"));
        }
    }
}
