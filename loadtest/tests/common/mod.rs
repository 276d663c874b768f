//! An in-test HTTPS webhook receiver: tokio-rustls and hyper on loopback with a self-signed
//! certificate. It verifies GitHub, GitLab and generic-hmac deliveries exactly, answers 202
//! (valid), 401 (bad signature or token), 404 (unknown path), 400 (anything malformed), and
//! records what it saw: peer addresses, delivery ids, connections, answers per status.
#![allow(dead_code)]

use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const SECRET: &str = "test-secret-0123456789";
pub const PATH: &str = "/hook/0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

#[derive(Debug, Default)]
pub struct Seen {
    pub connections: AtomicU64,
    pub peers: Mutex<Vec<IpAddr>>,
    pub ids: Mutex<Vec<String>>,
    pub status: Mutex<BTreeMap<u16, u64>>,
    /// Why requests were answered 400, if any were.
    pub malformed: Mutex<Vec<String>>,
    /// Paths of unknown-path requests.
    pub unknown_paths: Mutex<Vec<String>>,
    pub body_lens: Mutex<HashSet<usize>>,
}

impl Seen {
    pub fn status(&self, code: u16) -> u64 {
        self.status.lock().unwrap().get(&code).copied().unwrap_or(0)
    }

    pub fn total(&self) -> u64 {
        self.status.lock().unwrap().values().sum()
    }

    pub fn distinct_peers(&self) -> HashSet<IpAddr> {
        self.peers.lock().unwrap().iter().copied().collect()
    }

    /// The status counts with string keys, as the report has them.
    pub fn status_map(&self) -> BTreeMap<String, u64> {
        self.status
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    Github,
    Gitlab,
    GenericHmac,
}

pub struct Server {
    pub port: u16,
    pub cert_pem: String,
    pub seen: Arc<Seen>,
    rt: Option<tokio::runtime::Runtime>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Server {
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}{PATH}", self.port)
    }

    /// A receiver of `provider` deliveries; `stall` makes it never answer.
    pub fn start(provider: Provider, stall: bool) -> Server {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
            .unwrap();
        let cert_pem = cert.cert.pem();
        let key =
            rustls::pki_types::PrivateKeyDer::try_from(cert.key_pair.serialize_der()).unwrap();
        let cfg = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![cert.cert.der().clone()], key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Seen::default());
        let s = seen.clone();
        rt.spawn(async move {
            loop {
                let Ok((tcp, peer)) = listener.accept().await else {
                    continue;
                };
                s.connections.fetch_add(1, Ordering::SeqCst);
                s.peers.lock().unwrap().push(peer.ip());
                let (acceptor, s) = (acceptor.clone(), s.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |req| {
                        let s = s.clone();
                        async move { Ok::<_, hyper::Error>(handle(provider, stall, &s, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        Server {
            port,
            cert_pem,
            seen,
            rt: Some(rt),
        }
    }
}

fn hmac_hex(alg: &str, key: &[u8], body: &[u8]) -> Option<String> {
    fn mac<M: Mac + KeyInit>(key: &[u8], body: &[u8]) -> String {
        let mut m = <M as KeyInit>::new_from_slice(key).unwrap();
        m.update(body);
        hex::encode(m.finalize().into_bytes())
    }
    Some(match alg {
        "sha1" => mac::<Hmac<sha1::Sha1>>(key, body),
        "sha256" => mac::<Hmac<sha2::Sha256>>(key, body),
        "sha512" => mac::<Hmac<sha2::Sha512>>(key, body),
        _ => return None,
    })
}

/// `alg=hex` checked against the body: Ok(true) valid, Ok(false) wrong, Err malformed.
fn check_sig(value: Option<&str>, body: &[u8], algs: &[&str]) -> Result<bool, String> {
    let v = value.ok_or("no signature header")?;
    let (alg, hex) = v.split_once('=').ok_or("signature without =")?;
    if !algs.contains(&alg) {
        return Err(format!("algorithm {alg}"));
    }
    let expect = hmac_hex(alg, SECRET.as_bytes(), body).unwrap();
    if hex.len() != expect.len() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("signature of the wrong form".into());
    }
    Ok(hex == expect)
}

async fn handle(
    provider: Provider,
    stall: bool,
    seen: &Seen,
    req: Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if stall {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    let h = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    seen.body_lens.lock().unwrap().insert(body.len());
    let result: Result<(u16, Option<&str>), String> = (|| {
        if parts.method != hyper::Method::POST {
            return Err(format!("method {}", parts.method));
        }
        let (id_header, event_header) = match provider {
            Provider::Github => ("x-github-delivery", Some("x-github-event")),
            Provider::Gitlab => ("x-gitlab-event-uuid", Some("x-gitlab-event")),
            Provider::GenericHmac => ("x-delivery-id", None),
        };
        let id = h(id_header).ok_or("no delivery id")?;
        if let Some(e) = event_header {
            h(e).ok_or("no event header")?;
        }
        if h("content-type") != Some("application/json") {
            return Err("not JSON".into());
        }
        serde_json::from_slice::<serde_json::Value>(&body)
            .map_err(|e| format!("body is not JSON: {e}"))?;
        let path = parts.uri.path();
        if path != PATH {
            let hex = path.strip_prefix("/hook/").unwrap_or("");
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("unknown path not of the hook form: {path}"));
            }
            seen.unknown_paths.lock().unwrap().push(path.to_string());
            return Ok((404, Some(id)));
        }
        let valid = match provider {
            Provider::Github => {
                if let Some(v) = h("x-hub-signature-256") {
                    check_sig(Some(v), &body, &["sha256"])?
                } else {
                    check_sig(h("x-hub-signature"), &body, &["sha1"])?
                }
            }
            Provider::Gitlab => {
                let t = h("x-gitlab-token").ok_or("no token")?;
                if t.len() != SECRET.len() {
                    return Err("token of another length".into());
                }
                t == SECRET
            }
            Provider::GenericHmac => {
                check_sig(h("x-signature"), &body, &["sha1", "sha256", "sha512"])?
            }
        };
        Ok((if valid { 202 } else { 401 }, Some(id)))
    })();
    let status = match result {
        Ok((status, id)) => {
            if let Some(id) = id {
                seen.ids.lock().unwrap().push(id.to_string());
            }
            status
        }
        Err(why) => {
            seen.malformed.lock().unwrap().push(why);
            400
        }
    };
    *seen.status.lock().unwrap().entry(status).or_default() += 1;
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap())
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from_static(b"ok\n")))
        .unwrap()
}
