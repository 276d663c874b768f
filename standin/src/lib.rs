//! A stand-in for the Kubernetes API server, faithful in the parts fluxgate
//! depends on: HTTPS with a real CA, bearer-token authentication, RBAC with
//! the apiserver's 403 wording, Status error bodies, JSON merge / JSON
//! patches with resourceVersion and generation bookkeeping, label and field
//! selectors, discovery good enough for kubectl, SelfSubjectAccessReview and
//! watches. See README.md for what it leaves out.
//!
//! ```no_run
//! use kube_standin::{Config, Rule, StandIn};
//! use serde_json::json;
//!
//! let user = "system:serviceaccount:flux-system:fluxgate";
//! let api = StandIn::start(
//!     Config::new()
//!         .user("s3cret", user)
//!         .allow(user, Rule::new(&["get", "patch"], &["source.toolkit.fluxcd.io"], &["gitrepositories"])
//!             .in_namespaces(&["flux-system"]))
//!         .object(json!({
//!             "apiVersion": "source.toolkit.fluxcd.io/v1",
//!             "kind": "GitRepository",
//!             "metadata": {"name": "app", "namespace": "flux-system"},
//!             "spec": {"url": "https://example.com/app.git", "interval": "1m"}
//!         })),
//! ).unwrap();
//! let kubeconfig = api.kubeconfig("s3cret");
//! # let _ = kubeconfig;
//! ```

#![warn(missing_docs)]

mod api;
mod base64;
mod delete;
mod discovery;
mod kinds;
mod kubeconfig;
mod list;
mod negotiate;
mod objects;
mod patch;
mod protobuf;
mod proxy;
mod rbac;
mod requestinfo;
mod resources;
mod reviews;
mod selector;
mod server;
mod state;
mod status;
mod store;
mod table;
mod timefmt;
mod tls;
mod validate;
mod watch;
mod write;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

pub use rbac::Rule;

use kinds::{KindInfo, Kinds};
use state::{lock, FailPlan, State};
use store::{ObjKey, Store};

/// Namespaces every cluster starts with.
const INITIAL_NAMESPACES: &[&str] = &["default", "kube-node-lease", "kube-public", "kube-system"];

/// What a stand-in starts with: users (bearer tokens), RBAC rules and
/// objects. The served kinds are fixed: the Flux CRDs plus core Secret,
/// ConfigMap and Namespace.
#[derive(Debug, Clone, Default)]
pub struct Config {
    users: Vec<(String, String)>,
    rules: Vec<(String, Rule)>,
    objects: Vec<Value>,
    services: Vec<proxy::ServicePort>,
}

impl Config {
    /// No users, no rules, no objects besides the initial namespaces.
    pub fn new() -> Self {
        Config::default()
    }

    /// Accepts `Authorization: Bearer <token>` as user `username` (for
    /// example `system:serviceaccount:flux-system:fluxgate`).
    pub fn user(mut self, token: &str, username: &str) -> Self {
        self.users.push((token.to_string(), username.to_string()));
        self
    }

    /// Grants `rule` to `username`. Users have no rights until granted
    /// some, except discovery and the self-review APIs, which every
    /// authenticated user has in a real cluster.
    pub fn allow(mut self, username: &str, rule: Rule) -> Self {
        self.rules.push((username.to_string(), rule));
        self
    }

    /// Seeds an object. It needs `apiVersion`, `kind`, `metadata.name` and,
    /// for namespaced kinds, `metadata.namespace`; `uid`,
    /// `creationTimestamp`, `resourceVersion` (and `generation` for custom
    /// resources) are filled in, and its namespace is created if missing.
    /// Unlike a create through the API, `status` is kept. An object the
    /// stand-in cannot store makes [`StandIn::start`] fail with
    /// `InvalidInput`.
    pub fn object(mut self, obj: Value) -> Self {
        self.objects.push(obj);
        self
    }

    /// Registers port `port` (named `port_name`, if given) of Service `namespace/name`, served
    /// by the plain HTTP server at `backend`, for the service proxy
    /// (`/api/v1/namespaces/NS/services/NAME:PORT/proxy/...`).
    pub fn service(
        mut self,
        namespace: &str,
        name: &str,
        port_name: Option<&str>,
        port: u16,
        backend: SocketAddr,
    ) -> Self {
        self.services.push(proxy::ServicePort {
            namespace: namespace.into(),
            service: name.into(),
            name: port_name.map(str::to_string),
            port,
            backend,
        });
        self
    }
}

/// Why an object could not be seeded or put.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StandInError {
    /// The apiVersion/kind is not one the stand-in serves.
    #[error("kind {kind:?} in {api_version:?} is not served by kube-standin")]
    UnknownKind {
        /// The object's `apiVersion`.
        api_version: String,
        /// The object's `kind`.
        kind: String,
    },
    /// `metadata.name` is missing or empty.
    #[error("object has no metadata.name")]
    MissingName,
    /// A namespaced kind without `metadata.namespace`.
    #[error("{kind} {name:?} needs metadata.namespace")]
    MissingNamespace {
        /// The object's kind.
        kind: String,
        /// The object's name.
        name: String,
    },
    /// The object fails the apiserver's metadata validation.
    #[error("invalid object: {0}")]
    Invalid(String),
}

/// One request the stand-in received, as it arrived, with the status it was
/// answered with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// `GET`, `PATCH`, ...
    pub method: String,
    /// The request path as sent (not percent-decoded).
    pub path: String,
    /// The raw query string, without `?`.
    pub query: Option<String>,
    /// Every header, names in lower case, in the order received.
    pub headers: Vec<(String, String)>,
    /// The request body.
    pub body: Vec<u8>,
    /// The HTTP status answered.
    pub status: u16,
    /// When the request's head arrived (before its body was read and any latency added), to
    /// time a client against the stand-in's side of the connection.
    pub received_at: std::time::Instant,
}

impl Recorded {
    /// The first value of a header, matched case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON, if it is JSON.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// A running stand-in API server on its own thread and tokio runtime.
/// Dropping it stops the server and frees the port.
pub struct StandIn {
    server: server::Server,
    state: Arc<State>,
    ca_pem: String,
}

/// Stores a seeded or put object: metadata defaults, its namespace, a new
/// resourceVersion. Keeps the uid and creationTimestamp of an object it
/// replaces unless the new one sets them.
fn seed(kinds: &Kinds, store: &mut Store, mut obj: Value) -> Result<Value, StandInError> {
    let av = objects::str_field(&obj, "apiVersion").to_string();
    let kind_name = objects::str_field(&obj, "kind").to_string();
    let kind: KindInfo =
        kinds
            .by_kind(&av, &kind_name)
            .cloned()
            .ok_or(StandInError::UnknownKind {
                api_version: av,
                kind: kind_name,
            })?;
    let name = objects::meta_str(&obj, "name").to_string();
    if name.is_empty() {
        return Err(StandInError::MissingName);
    }
    let mut namespace = objects::meta_str(&obj, "namespace").to_string();
    if kind.namespaced && namespace.is_empty() {
        return Err(StandInError::MissingNamespace {
            kind: kind.kind.to_string(),
            name,
        });
    }
    if !kind.namespaced {
        namespace.clear();
        if let Some(m) = objects::meta_mut(&mut obj) {
            m.remove("namespace");
        }
    }
    let errs = objects::validate_meta(&kind, &obj, true);
    if !errs.is_empty() {
        return Err(StandInError::Invalid(
            errs.iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join(", "),
        ));
    }
    let key = ObjKey::new(kind.group, kind.plural, &namespace, &name);
    if let Some(existing) = store.get(&key).cloned() {
        // A replacement is an update: a custom resource's generation moves with its spec.
        let bump = i64::from(kind.custom && objects::spec_changed(&existing, &obj));
        let old_meta = objects::meta(&existing).cloned().unwrap_or_default();
        if let Some(m) = objects::meta_mut(&mut obj) {
            for f in ["uid", "creationTimestamp", "generation"] {
                if !m.contains_key(f) {
                    if let Some(v) = old_meta.get(f) {
                        let v = match (f, v.as_i64()) {
                            ("generation", Some(g)) => Value::from(g + bump),
                            _ => v.clone(),
                        };
                        m.insert(f.to_string(), v);
                    }
                }
            }
        }
    }
    objects::fill_new(&kind, &mut obj);
    objects::builtin_defaults(&kind, &mut obj);
    if kind.namespaced {
        let ns_key = ObjKey::new("", "namespaces", "", &namespace);
        if store.get(&ns_key).is_none() {
            if let Some(ns_kind) = kinds.namespace_kind() {
                let mut ns = serde_json::json!({"metadata": {"name": namespace}});
                objects::fill_new(ns_kind, &mut ns);
                store.write(ns_key, ns);
            }
        }
    }
    Ok(store.write(key, obj))
}

impl StandIn {
    /// Starts a stand-in on `127.0.0.1` with a free port.
    pub fn start(cfg: Config) -> std::io::Result<StandIn> {
        StandIn::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), cfg)
    }

    /// Starts a stand-in on `addr` (port 0 picks a free port). The server
    /// certificate is valid for 127.0.0.1 and localhost.
    pub fn start_on(addr: SocketAddr, cfg: Config) -> std::io::Result<StandIn> {
        let pki = tls::generate()?;
        let kinds = Kinds::new(kinds::default_kinds());
        let mut authz = rbac::Authorizer::default();
        for (user, rule) in cfg.rules {
            authz.add(&user, rule);
        }
        let mut store = Store::new();
        if let Some(ns_kind) = kinds.namespace_kind() {
            for ns in INITIAL_NAMESPACES {
                let mut obj = serde_json::json!({"metadata": {"name": ns}});
                objects::fill_new(ns_kind, &mut obj);
                store.write(ObjKey::new("", "namespaces", "", ns), obj);
            }
        }
        for obj in cfg.objects {
            seed(&kinds, &mut store, obj).map_err(|e| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string())
            })?;
        }
        let tokens: HashMap<String, String> = cfg.users.into_iter().collect();
        // The advertised address is filled in once the port is known; it
        // only appears in /api, so a placeholder until then is harmless.
        let std_listener_addr = addr;
        let state = Arc::new(State {
            kinds,
            tokens,
            authz,
            store: Mutex::new(store),
            requests: Mutex::new(Vec::new()),
            failures: Mutex::new(None),
            latency: Mutex::new(Duration::ZERO),
            server_address: Mutex::new(std_listener_addr.to_string()),
            services: Mutex::new(cfg.services),
            watch_epoch: tokio::sync::watch::Sender::new(0),
        });
        let server = server::Server::start(addr, state.clone(), pki.server_config)?;
        *lock(&state.server_address) = server.addr().to_string();
        Ok(StandIn {
            server,
            state,
            ca_pem: pki.ca_pem,
        })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// `https://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("https://{}", self.addr())
    }

    /// PEM of the CA that signed the server certificate.
    pub fn ca_pem(&self) -> String {
        self.ca_pem.clone()
    }

    /// A complete kubeconfig (cluster with server and
    /// certificate-authority-data, a user with `token`, one context set as
    /// current).
    pub fn kubeconfig(&self, token: &str) -> String {
        kubeconfig::render(&self.url(), &self.ca_pem, token)
    }

    /// Writes [`kubeconfig`](Self::kubeconfig) to `path`.
    pub fn write_kubeconfig(&self, path: &std::path::Path, token: &str) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(path, self.kubeconfig(token))?;
        // It holds a bearer token: owner-only, as kubectl writes its own.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
    }

    /// Every request received so far, in the order answered, including
    /// refused ones.
    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.state.requests).clone()
    }

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        lock(&self.state.requests).clear();
    }

    fn key(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> Option<ObjKey> {
        let k = self.state.kinds.by_kind(api_version, kind)?;
        let ns = if k.namespaced { namespace } else { "" };
        Some(ObjKey::new(k.group, k.plural, ns, name))
    }

    /// The stored object, as a GET would return it. `namespace` is ignored
    /// for cluster-scoped kinds.
    pub fn object(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Option<Value> {
        let key = self.key(api_version, kind, namespace, name)?;
        lock(&self.state.store).get(&key).cloned()
    }

    /// Every stored object of a kind in a namespace, ordered by name (for
    /// objects whose names the client chose, such as Events).
    pub fn objects(&self, api_version: &str, kind: &str, namespace: &str) -> Vec<Value> {
        let Some(k) = self.state.kinds.by_kind(api_version, kind) else {
            return Vec::new();
        };
        let ns = if k.namespaced { Some(namespace) } else { None };
        lock(&self.state.store)
            .list(k.group, k.plural, ns)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Creates or replaces an object behind the API's back (watches see it),
    /// with the same rules as [`Config::object`]. A replaced custom resource
    /// keeps its uid, and its generation goes up if its spec changed, as in
    /// an update through the API.
    ///
    /// # Panics
    /// If the object cannot be stored; see [`try_put_object`](Self::try_put_object).
    pub fn put_object(&self, obj: Value) {
        if let Err(e) = self.try_put_object(obj) {
            panic!("kube-standin put_object: {e}");
        }
    }

    /// Like [`put_object`](Self::put_object), returning the stored object or
    /// why it could not be stored.
    pub fn try_put_object(&self, obj: Value) -> Result<Value, StandInError> {
        let mut store = lock(&self.state.store);
        seed(&self.state.kinds, &mut store, obj)
    }

    /// Removes an object behind the API's back (watches see a DELETED).
    pub fn delete_object(&self, api_version: &str, kind: &str, namespace: &str, name: &str) {
        if let Some(key) = self.key(api_version, kind, namespace, name) {
            lock(&self.state.store).remove(&key);
        }
    }

    /// `true`: stop listening and drop every open connection, so clients get
    /// "connection refused". `false`: listen again on the same port. Stored
    /// objects are kept. Returns once the change has taken effect.
    pub fn set_down(&self, down: bool) {
        self.server.set_down(down);
    }

    /// Makes the next `n` authenticated API requests fail with `status`
    /// (before authorization, where the apiserver's max-in-flight filter
    /// answers), with the matching Status reason and, if `retry_after` is
    /// given, a `Retry-After` header and `details.retryAfterSeconds`.
    /// Public endpoints (`/version`, `/healthz`, ...) and requests refused
    /// with 401 do not count.
    pub fn fail_next(&self, n: usize, status: u16, retry_after: Option<u64>) {
        *lock(&self.state.failures) = (n > 0).then_some(FailPlan {
            remaining: n,
            status,
            retry_after,
        });
    }

    /// Delay added before every answer (after the request body is read), as from an API
    /// server slowed by its load or etcd: the connection is accepted and the request read at
    /// once, and the answer (and the change, for a write) comes after `d`.
    pub fn set_latency(&self, d: Duration) {
        *lock(&self.state.latency) = d;
    }

    /// Ends every open watch the way the apiserver ends one at its
    /// `timeoutSeconds` or when its watch cache restarts: the stream closes
    /// cleanly and the client is expected to watch again from the last
    /// resourceVersion it saw. Connections and the listener stay up.
    pub fn end_watches(&self) {
        self.state.watch_epoch.send_modify(|e| *e += 1);
    }

    /// Forgets the event history, as an etcd compaction does: a watch that
    /// resumes from a resourceVersion older than the current one is answered
    /// with a 410 Expired ERROR event, and the client has to list again.
    pub fn compact(&self) {
        lock(&self.state.store).compact();
    }

    /// The current global resourceVersion (etcd's revision).
    pub fn resource_version(&self) -> u64 {
        lock(&self.state.store).current_rv()
    }
}

impl std::fmt::Debug for StandIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StandIn")
            .field("addr", &self.addr())
            .finish()
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.server.shutdown();
    }
}
