//! End-to-end tests: a real HTTPS client (reqwest + rustls, trusting only the
//! stand-in's CA) and the real kubectl against a running stand-in.

mod auth;
mod control;
mod discovery;
mod kubectl;
mod leases;
mod objects;
mod selectors;
mod watch;

use kube_standin::{Config, Rule, StandIn};
use reqwest::{Method, RequestBuilder};
use serde_json::{json, Value};

pub const FLUXGATE: &str = "system:serviceaccount:flux-system:fluxgate";
pub const TOKEN: &str = "fluxgate-token";
pub const ADMIN: &str = "kubernetes-admin";
pub const ADMIN_TOKEN: &str = "admin-token";
pub const GITREPOS: &str =
    "/apis/source.toolkit.fluxcd.io/v1/namespaces/flux-system/gitrepositories";
pub const MERGE: &str = "application/merge-patch+json";

pub fn gitrepo(name: &str, ns: &str, labels: Value) -> Value {
    json!({
        "apiVersion": "source.toolkit.fluxcd.io/v1",
        "kind": "GitRepository",
        "metadata": {
            "name": name,
            "namespace": ns,
            "labels": labels,
            "annotations": {"keep": "me"},
        },
        "spec": {"url": format!("https://example.com/{name}.git"), "interval": "1m"},
        "status": {"conditions": [{"type": "Ready", "status": "True", "message": "stored artifact"}]},
    })
}

/// fluxgate may read and patch GitRepositories in flux-system only; the
/// admin may do anything.
pub fn config() -> Config {
    Config::new()
        .user(TOKEN, FLUXGATE)
        .user(ADMIN_TOKEN, ADMIN)
        .allow(
            FLUXGATE,
            Rule::new(
                &["get", "list", "watch", "patch"],
                &["source.toolkit.fluxcd.io"],
                &["gitrepositories"],
            )
            .in_namespaces(&["flux-system"]),
        )
        .allow(ADMIN, Rule::new(&["*"], &["*"], &["*"]))
        .object(gitrepo(
            "app",
            "flux-system",
            json!({"app": "web", "tier": "front"}),
        ))
        .object(gitrepo(
            "api",
            "flux-system",
            json!({"app": "api", "tier": "back"}),
        ))
        .object(gitrepo(
            "db",
            "flux-system",
            json!({"app": "db", "release": "2"}),
        ))
        .object(gitrepo("plain", "flux-system", json!({})))
        .object(gitrepo("site", "apps", json!({"app": "web"})))
        .object(json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "settings", "namespace": "flux-system"},
            "data": {"a": "1"}
        }))
}

pub struct Fixture {
    pub api: StandIn,
    pub http: reqwest::Client,
}

pub fn client_for(api: &StandIn) -> reqwest::Client {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let ca = reqwest::Certificate::from_pem(api.ca_pem().as_bytes()).expect("CA PEM");
    reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(ca)
        .build()
        .expect("client")
}

impl Default for Fixture {
    fn default() -> Self {
        Fixture::with(config())
    }
}

impl Fixture {
    pub fn new() -> Fixture {
        Fixture::default()
    }

    pub fn with(cfg: Config) -> Fixture {
        let api = StandIn::start(cfg).expect("stand-in starts");
        let http = client_for(&api);
        Fixture { api, http }
    }

    pub fn req(&self, method: Method, path: &str, token: Option<&str>) -> RequestBuilder {
        let b = self
            .http
            .request(method, format!("{}{}", self.api.url(), path));
        match token {
            Some(t) => b.bearer_auth(t),
            None => b,
        }
    }

    pub async fn get(&self, path: &str, token: &str) -> (u16, Value) {
        send(self.req(Method::GET, path, Some(token))).await
    }

    pub async fn patch(
        &self,
        path: &str,
        token: &str,
        content_type: &str,
        body: &str,
    ) -> (u16, Value) {
        send(
            self.req(Method::PATCH, path, Some(token))
                .header("content-type", content_type)
                .body(body.to_string()),
        )
        .await
    }
}

/// Sends and returns (status, JSON body), checking the content type.
pub async fn send(b: RequestBuilder) -> (u16, Value) {
    let resp = b.send().await.expect("request reaches the stand-in");
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let text = resp.text().await.expect("body");
    assert_eq!(
        ct, "application/json",
        "content type of a {status} answer: {text}"
    );
    let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("JSON body ({e}): {text}"));
    (status, v)
}

/// Checks the common shape of a Status failure and returns it.
pub fn assert_status(v: &Value, code: u16, reason: &str) {
    assert_eq!(v["kind"], "Status", "{v}");
    assert_eq!(v["apiVersion"], "v1", "{v}");
    assert_eq!(v["metadata"], json!({}), "{v}");
    assert_eq!(v["status"], "Failure", "{v}");
    assert_eq!(v["code"], code, "{v}");
    if reason.is_empty() {
        assert!(v.get("reason").is_none(), "{v}");
    } else {
        assert_eq!(v["reason"], reason, "{v}");
    }
}
