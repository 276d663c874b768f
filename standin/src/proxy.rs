//! The service proxy (`/api/v1/namespaces/NS/services/[SCHEME:]NAME[:PORT]/proxy/PATH`), as
//! the apiserver runs it: authorized as verb `create` (for POST) on `services/proxy` with the
//! whole `NAME:PORT` segment as the resource name, the caller's `Authorization` consumed by
//! authentication and not passed on, hop-by-hop headers dropped, and the backend's answer
//! passed back as it is. A backend that cannot be reached is a 503 `Status`.
//!
//! Services are registered with [`crate::Config::service`], each port backed by a plain HTTP
//! server on loopback standing in for the pods behind it.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

use crate::api::{Reply, ReplyBody, Request};
use crate::requestinfo::RequestInfo;
use crate::state::{lock, State};
use crate::status::ApiError;

/// One port of a registered Service.
#[derive(Debug, Clone)]
pub(crate) struct ServicePort {
    pub namespace: String,
    pub service: String,
    pub name: Option<String>,
    pub port: u16,
    pub backend: SocketAddr,
}

/// A request to send to a backend once authorization has passed.
pub(crate) struct Forward {
    backend: SocketAddr,
    method: String,
    path_and_query: String,
    headers: Vec<(String, String)>,
    body: Bytes,
}

/// Headers a proxy must not pass on (RFC 9110 §7.6.1), plus what authentication consumed.
const DROPPED: &[&str] = &[
    "authorization",
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
];

/// Routes a `services/proxy` request to its backend, or answers why it cannot.
pub(crate) fn route(state: &State, req: &Request, info: &RequestInfo) -> Reply {
    // `[scheme:]name[:port]`, as the apiserver's ResourceLocation splits it.
    let segs: Vec<&str> = info.name.split(':').collect();
    let (service, port) = match segs.as_slice() {
        [name] => (*name, ""),
        [name, port] => (*name, *port),
        [_scheme, name, port] => (*name, *port),
        _ => {
            return Reply::error(ApiError::bad_request(format!(
                "invalid service request {:?}",
                info.name
            )))
        }
    };
    let ports: Vec<ServicePort> = lock(&state.services)
        .iter()
        .filter(|p| p.namespace == info.namespace && p.service == service)
        .cloned()
        .collect();
    if ports.is_empty() {
        return Reply::error(ApiError::not_found("", "services", service));
    }
    let chosen = ports.iter().find(|p| {
        port.is_empty() && ports.len() == 1
            || p.name.as_deref() == Some(port)
            || port.parse() == Ok(p.port)
    });
    let Some(chosen) = chosen else {
        return Reply::error(ApiError::service_unavailable(&format!(
            "no endpoints available for service \"{}\"",
            info.name
        )));
    };
    // Everything after `proxy`, with the query the caller sent.
    let rest = info.parts.get(3..).map(|p| p.join("/")).unwrap_or_default();
    let mut path_and_query = format!("/{rest}");
    if req.path.ends_with('/') && !rest.is_empty() {
        path_and_query.push('/');
    }
    if !req.query.is_empty() {
        let q: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(req.query.iter())
            .finish();
        path_and_query.push('?');
        path_and_query.push_str(&q);
    }
    let headers = req
        .headers
        .iter()
        .filter(|(k, _)| !DROPPED.contains(&k.to_ascii_lowercase().as_str()))
        .cloned()
        .collect();
    Reply {
        status: 0,
        content_type: "",
        headers: Vec::new(),
        body: ReplyBody::Proxy(Box::new(Forward {
            backend: chosen.backend,
            method: req.method.clone(),
            path_and_query,
            headers,
            body: req.body.clone(),
        })),
    }
}

/// Sends the request to the backend and turns its answer into the reply.
pub(crate) async fn send(f: Forward) -> Reply {
    match exchange(&f).await {
        Ok(reply) => reply,
        Err(e) => Reply::error(ApiError::service_unavailable(&format!(
            "error trying to reach service: dial tcp {}: {e}",
            f.backend
        ))),
    }
}

async fn exchange(f: &Forward) -> Result<Reply, String> {
    let tcp = tokio::net::TcpStream::connect(f.backend)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut builder = hyper::Request::builder()
        .method(f.method.as_str())
        .uri(f.path_and_query.as_str())
        .header("host", f.backend.to_string());
    for (k, v) in &f.headers {
        builder = builder.header(k.as_str(), v.as_str());
    }
    let request = builder
        .body(Full::new(f.body.clone()))
        .map_err(|e| e.to_string())?;
    let answer = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = answer.status().as_u16();
    let headers: Vec<(String, String)> = answer
        .headers()
        .iter()
        .filter(|(k, _)| !DROPPED.contains(&k.as_str()) && k.as_str() != "content-type")
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let content_type = match answer
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
    {
        Some("application/json") => "application/json",
        Some(t) if t.starts_with("text/plain") => "text/plain; charset=utf-8",
        Some(_) => "application/octet-stream",
        None => "",
    };
    let body = answer
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(Reply {
        status,
        content_type,
        headers,
        body: ReplyBody::Full(body.to_vec()),
    })
}
