//! Forward mode: a verified delivery goes on, body and signature headers as received, to Flux's
//! own receiver through the API server's service proxy, with the RBAC `deploy/forward-mode/`
//! grants. The receiver behind the proxy is a small stand-in of notification-controller that
//! checks the GitHub signature again, as Flux does.

use crate::common::*;
use kube_standin::{Config as ApiConfig, Rule, StandIn};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

const SECRET: &str = "forward-secret";
const NAME: &str = "github-receiver";

/// What Flux's receiver was sent.
#[derive(Debug, Clone)]
struct Got {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Got {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// notification-controller's receiver, reduced to what a forwarded github delivery meets:
/// the path must be the Receiver's, the signature must verify with its Secret. `answer`
/// overrides the status, to play a suspended or failing Flux.
struct Flux {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<Got>>>,
}

impl Flux {
    async fn start(answer: Option<u16>) -> Flux {
        use http_body_util::BodyExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let seen = got.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let seen = seen.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let seen = seen.clone();
                            async move {
                                let (parts, body) = req.into_parts();
                                let body = body.collect().await.unwrap().to_bytes().to_vec();
                                let got = Got {
                                    method: parts.method.to_string(),
                                    path: parts.uri.to_string(),
                                    headers: parts
                                        .headers
                                        .iter()
                                        .map(|(k, v)| {
                                            (k.to_string(), v.to_str().unwrap_or("").to_string())
                                        })
                                        .collect(),
                                    body,
                                };
                                let status = answer.unwrap_or_else(|| flux_status(&got));
                                seen.lock().unwrap().push(got);
                                let mut r = hyper::Response::new(http_body_util::Empty::<
                                    bytes::Bytes,
                                >::new(
                                ));
                                *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                                Ok::<_, std::convert::Infallible>(r)
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Flux { addr, got }
    }

    fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }
}

/// Flux's answer to a github delivery: 404 off its path, 400 when the signature is wrong.
fn flux_status(g: &Got) -> u16 {
    if g.path != hook(SECRET, NAME, "flux-system") {
        return 404;
    }
    match g.header("x-hub-signature-256") {
        Some(s) if s == sig("sha256", SECRET, &g.body) => 200,
        _ => 400,
    }
}

/// The rules of `deploy/forward-mode/role.yaml`, as the stand-in's RBAC.
fn shipped_rules() -> Vec<Rule> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/forward-mode/role.yaml");
    let role: Value = serde_saphyr::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let strs = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    role["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let (verbs, groups, resources, names) = (
                strs(&r["verbs"]),
                strs(&r["apiGroups"]),
                strs(&r["resources"]),
                strs(&r["resourceNames"]),
            );
            let v: Vec<&str> = verbs.iter().map(String::as_str).collect();
            let g: Vec<&str> = groups.iter().map(String::as_str).collect();
            let res: Vec<&str> = resources.iter().map(String::as_str).collect();
            let n: Vec<&str> = names.iter().map(String::as_str).collect();
            Rule::new(&v, &g, &res)
                .names(&n)
                .in_namespaces(&["flux-system"])
        })
        .collect()
}

fn cluster(flux: SocketAddr, with_role: bool) -> StandIn {
    let mut c: ApiConfig =
        api_config().service("flux-system", "webhook-receiver", Some("http"), 80, flux);
    if with_role {
        for r in shipped_rules() {
            c = c.allow(SA_USER, r);
        }
    }
    StandIn::start(c).unwrap()
}

fn receiver(s: &Setup, forward: &str) -> String {
    format!(
        "name = \"{NAME}\"\nnamespace = \"flux-system\"\ntype = \"github\"\nsecret_file = \"{}\"\nforward = {forward}\n",
        s.secret("github", SECRET).display()
    )
}

async fn push(gw: &Gateway, delivery: &str) -> (u16, String) {
    let body = fixture("github/push.json");
    let h = signed(SECRET, &body, delivery);
    gw.post(&hook(SECRET, NAME, "flux-system"), &refs(&h), body)
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn forward_delivers_the_original_body_and_signature_through_the_service_proxy() {
    let flux = Flux::start(None).await;
    let s = Setup::new();
    let r = receiver(&s, "{}");
    let gw = s.receiver(&r).start_with(cluster(flux.addr, true));
    let (status, text) = push(&gw, "fwd-1").await;
    assert_eq!(status, 200, "{text}");
    let summary: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(summary["forwarded"], 200, "{text}");

    let got = flux.got();
    assert_eq!(got.len(), 1, "{got:?}");
    let g = &got[0];
    let body = fixture("github/push.json");
    assert_eq!(g.method, "POST");
    assert_eq!(g.path, hook(SECRET, NAME, "flux-system"));
    assert_eq!(g.body, body, "the body arrives byte for byte");
    assert_eq!(
        g.header("x-hub-signature-256"),
        Some(sig("sha256", SECRET, &body).as_str())
    );
    assert_eq!(g.header("x-github-event"), Some("push"));
    assert_eq!(g.header("x-github-delivery"), Some("fwd-1"));
    assert_eq!(g.header("content-type"), Some("application/json"));
    assert_eq!(g.header("x-forwarded-for"), Some("127.0.0.1"));
    assert!(
        g.header("authorization").is_none(),
        "the service account's token must not reach Flux: {:?}",
        g.headers
    );
    // The proxy call went where the Role allows, and fluxgate patched nothing itself.
    let calls = gw.relayed();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(
        calls[0].path,
        format!(
            "/api/v1/namespaces/flux-system/services/webhook-receiver:80/proxy{}",
            hook(SECRET, NAME, "flux-system")
        )
    );
    assert!(gw.patches().is_empty());

    // A replay is still answered at the edge, without a second forward.
    let (status, text) = push(&gw, "fwd-1").await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("\"duplicate\":true"), "{text}");
    assert_eq!(flux.got().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_signature_is_refused_at_the_edge_and_never_forwarded() {
    let flux = Flux::start(None).await;
    let s = Setup::new();
    let r = receiver(&s, "{}");
    let gw = s.receiver(&r).start_with(cluster(flux.addr, true));
    let body = fixture("github/push.json");
    let h = signed("not-the-secret", &body, "fwd-bad");
    let (status, text) = gw
        .post(&hook(SECRET, NAME, "flux-system"), &refs(&h), body)
        .await;
    assert_eq!(status, 401, "{text}");
    assert!(flux.got().is_empty());
    assert!(gw.relayed().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn fluxs_refusals_are_passed_on_with_what_they_mean() {
    for (flux_says, expected, reason) in [
        (404, 502, "no Receiver at this path (404)"),
        (400, 502, "it refused the delivery (400)"),
        (500, 502, "every resource (500)"),
        (503, 503, "suspended or not ready (503)"),
    ] {
        let flux = Flux::start(Some(flux_says)).await;
        let s = Setup::new();
        let r = receiver(&s, "{}");
        let gw = s.receiver(&r).start_with(cluster(flux.addr, true));
        let (status, text) = push(&gw, &uid()).await;
        assert_eq!(status, expected, "Flux {flux_says}: {text}");
        assert!(text.contains(reason), "Flux {flux_says}: {text}");
        assert_eq!(flux.got().len(), 1);
        // Not taken: the provider's redelivery must be forwarded again, not deduplicated.
        let (again, _) = push(&gw, "same-id").await;
        let (twice, text) = push(&gw, "same-id").await;
        assert_eq!((again, twice), (expected, expected), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn without_the_role_or_a_reachable_flux_the_answer_says_why() {
    let flux = Flux::start(None).await;
    let s = Setup::new();
    let r = receiver(&s, "{}");
    let gw = s.receiver(&r).start_with(cluster(flux.addr, false));
    let (status, text) = push(&gw, &uid()).await;
    assert_eq!(status, 502, "{text}");
    assert!(
        text.contains("refused to forward the delivery: 403 Forbidden"),
        "{text}"
    );
    assert!(text.contains("services/proxy"), "{text}");
    assert!(flux.got().is_empty());

    // A Service whose pods are gone: the API server's 503, retried by the provider.
    let gone = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let s = Setup::new();
    let r = receiver(&s, "{}");
    let gw = s.receiver(&r).start_with(cluster(gone, true));
    let (status, text) = push(&gw, &uid()).await;
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("error trying to reach service"), "{text}");

    // A port the Role does not name.
    let s = Setup::new();
    let r = receiver(&s, "{ port = \"http\" }");
    let gw = s.receiver(&r).start_with(cluster(flux.addr, true));
    let (status, text) = push(&gw, &uid()).await;
    assert_eq!(status, 502, "{text}");
    assert!(text.contains("webhook-receiver:http"), "{text}");
}

#[test]
fn forward_keys_are_checked_when_the_configuration_loads() {
    let check = |receiver: &str, s: Setup| {
        let s = s.receiver(receiver);
        s.offline_kubeconfig();
        let cfg = s.write_config(8443, 9102);
        let out = std::process::Command::new(BIN)
            .args(["check", "--offline", "--config"])
            .arg(&cfg)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned()
                + &String::from_utf8_lossy(&out.stdout),
        )
    };
    let s = Setup::new();
    let r = receiver(
        &s,
        "{ namespace = \"Flux\", port = \"99999\", sevice = \"x\" }",
    );
    let (ok, out) = check(&r, s);
    assert!(!ok);
    assert!(out.contains("receivers[0]"), "{out}");
    assert!(out.contains("sevice"), "an unknown key is named: {out}");

    let s = Setup::new();
    let r = receiver(&s, "{ namespace = \"Flux\", port = \"99999\" }");
    let (ok, out) = check(&r, s);
    assert!(!ok);
    assert!(out.contains("receivers[0].forward.namespace"), "{out}");
    assert!(out.contains("receivers[0].forward.port"), "{out}");

    let s = Setup::new();
    let r = format!(
        "name = \"h\"\nnamespace = \"flux-system\"\ntype = \"harbor\"\nsecret_file = \"{}\"\nforward = {{}}\n",
        s.secret("h", "x").display()
    );
    let (ok, out) = check(&r, s);
    assert!(!ok);
    assert!(
        out.contains("receivers[0].forward: type harbor cannot be forwarded"),
        "{out}"
    );

    // Forward mode needs no resources of its own; listing some draws a warning.
    let s = Setup::new();
    let r = receiver(&s, "{}") + "resources = [{ kind = \"GitRepository\", name = \"app\" }]\n";
    let (ok, out) = check(&r, s);
    assert!(ok, "{out}");
    assert!(out.contains("ignored in forward mode"), "{out}");
}

/// A second cluster for forward mode: its own stand-in API (CA, token, RBAC) proxying to
/// `flux`, and a `[[clusters]]` table with its own kubeconfig.
fn second_cluster(s: Setup, name: &str, flux: SocketAddr) -> (Setup, StandIn) {
    let token = format!("token-of-{name}");
    let mut c = ApiConfig::new().user(&token, SA_USER).service(
        "flux-system",
        "webhook-receiver",
        Some("http"),
        80,
        flux,
    );
    for r in shipped_rules() {
        c = c.allow(SA_USER, r);
    }
    let api = StandIn::start(c).unwrap();
    let kc = s.path(&format!("kubeconfig-{name}"));
    api.write_kubeconfig(&kc, &token).unwrap();
    owner_only(&kc);
    let s = s.section(&format!(
        "[[clusters]]\nname = \"{name}\"\nkubeconfig = \"{}\"\ntimeout = \"2s\"",
        kc.display()
    ));
    (s, api)
}

#[tokio::test(flavor = "multi_thread")]
async fn forward_mode_goes_to_each_clusters_own_flux_and_answers_per_cluster() {
    let home_flux = Flux::start(None).await;
    let eu_flux = Flux::start(Some(404)).await;
    let (s, eu) = second_cluster(Setup::new(), "eu", eu_flux.addr);
    let r = receiver(&s, "{}") + "clusters = [\"default\", \"eu\"]\n";
    let gw = s.receiver(&r).start_with(cluster(home_flux.addr, true));

    let (status, text) = push(&gw, "fleet-fwd-1").await;
    // eu's Flux has no such Receiver: refused for good, while default took it.
    assert_eq!(status, 502, "{text}");
    let answer: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(answer["clusters"]["default"]["forwarded"], 200, "{text}");
    assert!(
        answer["clusters"]["default"].get("refused").is_none(),
        "{text}"
    );
    assert_eq!(answer["clusters"]["eu"]["forwarded"], 404, "{text}");
    assert!(
        answer["clusters"]["eu"]["refused"][0]
            .as_str()
            .unwrap()
            .contains("no Receiver at this path (404)"),
        "{text}"
    );
    // Each Flux got the delivery as sent, through its own cluster's service proxy.
    let body = fixture("github/push.json");
    for flux in [&home_flux, &eu_flux] {
        let got = flux.got();
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].path, hook(SECRET, NAME, "flux-system"));
        assert_eq!(got[0].body, body);
        assert_eq!(got[0].header("x-github-delivery"), Some("fleet-fwd-1"));
    }
    let proxied = |api: &StandIn| {
        api.requests()
            .iter()
            .filter(|r| r.path.contains("/services/webhook-receiver:80/proxy/"))
            .count()
    };
    assert_eq!(proxied(&eu), 1);
    assert_eq!(gw.relayed().len(), 1, "one proxy call to the home API");
    // Not taken everywhere: the provider's redelivery goes through again.
    let (again, text) = push(&gw, "fleet-fwd-1").await;
    assert_eq!(again, 502, "{text}");
    assert_eq!((home_flux.got().len(), eu_flux.got().len()), (2, 2));
}

#[tokio::test(flavor = "multi_thread")]
async fn forward_mode_answers_200_when_every_cluster_took_the_delivery() {
    let home_flux = Flux::start(None).await;
    let eu_flux = Flux::start(None).await;
    let (s, _eu) = second_cluster(Setup::new(), "eu", eu_flux.addr);
    let r = receiver(&s, "{}") + "clusters = [\"*\"]\n";
    let gw = s.receiver(&r).start_with(cluster(home_flux.addr, true));
    let (status, text) = push(&gw, "fleet-fwd-2").await;
    assert_eq!(status, 200, "{text}");
    let answer: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(answer["clusters"]["default"]["forwarded"], 200, "{text}");
    assert_eq!(answer["clusters"]["eu"]["forwarded"], 200, "{text}");
    assert_eq!((home_flux.got().len(), eu_flux.got().len()), (1, 1));
    // Taken everywhere: a replay is answered at the edge.
    let (status, text) = push(&gw, "fleet-fwd-2").await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("\"duplicate\":true"), "{text}");
    assert_eq!((home_flux.got().len(), eu_flux.got().len()), (1, 1));
}
