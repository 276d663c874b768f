//! The HTTPS server: its own thread and tokio runtime, a listener that can
//! be taken down and brought back on the same port, one task per TLS
//! connection, request recording and injected latency.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::api::{self, Reply, ReplyBody, ResponseBody};
use crate::state::{lock, State};
use crate::status::ApiError;
use crate::Recorded;

/// The apiserver's default request body limit (3 MiB).
const MAX_BODY: usize = 3 * 1024 * 1024;

/// Asks a running accept loop to stop; it acknowledges once the listener
/// and every connection are gone.
struct ListenerCtl {
    stop: oneshot::Sender<std::sync::mpsc::Sender<()>>,
}

pub(crate) struct Server {
    handle: tokio::runtime::Handle,
    thread: Option<std::thread::JoinHandle<()>>,
    shutdown: Option<oneshot::Sender<()>>,
    listener: Mutex<Option<ListenerCtl>>,
    addr: SocketAddr,
    state: Arc<State>,
    tls: Arc<rustls::ServerConfig>,
}

impl Server {
    pub fn start(
        addr: SocketAddr,
        state: Arc<State>,
        tls: Arc<rustls::ServerConfig>,
    ) -> std::io::Result<Server> {
        let std_listener = std::net::TcpListener::bind(addr)?;
        let addr = std_listener.local_addr()?;

        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("kube-standin".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = handle_tx.send(Err(e));
                        return;
                    }
                };
                let _ = handle_tx.send(Ok(rt.handle().clone()));
                rt.block_on(async {
                    let _ = shutdown_rx.await;
                });
                // Dropping the runtime cancels every task, which closes the
                // listener and all connections.
                rt.shutdown_timeout(Duration::from_secs(2));
            })?;
        let handle = handle_rx
            .recv()
            .map_err(|_| std::io::Error::other("kube-standin runtime thread died"))??;

        let server = Server {
            handle,
            thread: Some(thread),
            shutdown: Some(shutdown_tx),
            listener: Mutex::new(None),
            addr,
            state,
            tls,
        };
        server.listen(std_listener)?;
        Ok(server)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn listen(&self, std_listener: std::net::TcpListener) -> std::io::Result<()> {
        std_listener.set_nonblocking(true)?;
        let (stop_tx, stop_rx) = oneshot::channel();
        let acceptor = TlsAcceptor::from(self.tls.clone());
        self.handle.spawn(accept_loop(
            std_listener,
            acceptor,
            self.state.clone(),
            stop_rx,
        ));
        *lock(&self.listener) = Some(ListenerCtl { stop: stop_tx });
        Ok(())
    }

    /// Stops listening and drops every open connection, waiting until the
    /// port refuses connections.
    fn take_down(&self) {
        let ctl = lock(&self.listener).take();
        if let Some(ctl) = ctl {
            let (ack_tx, ack_rx) = std::sync::mpsc::channel();
            if ctl.stop.send(ack_tx).is_ok() {
                let _ = ack_rx.recv_timeout(Duration::from_secs(5));
            }
        }
    }

    pub fn set_down(&self, down: bool) {
        if down {
            self.take_down();
            return;
        }
        if lock(&self.listener).is_some() {
            return;
        }
        // The port was ours a moment ago; retry briefly in case the kernel
        // has not released it yet.
        let mut last_err = None;
        for _ in 0..100 {
            match std::net::TcpListener::bind(self.addr) {
                Ok(l) => match self.listen(l) {
                    Ok(()) => return,
                    Err(e) => last_err = Some(e),
                },
                Err(e) => last_err = Some(e),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "kube-standin could not listen on {} again: {}",
            self.addr,
            last_err.map(|e| e.to_string()).unwrap_or_default()
        );
    }

    pub fn shutdown(&mut self) {
        self.take_down();
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown();
    }
}

async fn accept_loop(
    std_listener: std::net::TcpListener,
    acceptor: TlsAcceptor,
    state: Arc<State>,
    mut stop: oneshot::Receiver<std::sync::mpsc::Sender<()>>,
) {
    let Ok(listener) = TcpListener::from_std(std_listener) else {
        return;
    };
    let mut conns = JoinSet::new();
    let ack = loop {
        tokio::select! {
            ack = &mut stop => break ack.ok(),
            accepted = listener.accept() => {
                if let Ok((tcp, _)) = accepted {
                    conns.spawn(serve_connection(tcp, acceptor.clone(), state.clone()));
                }
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    };
    drop(listener);
    conns.shutdown().await;
    if let Some(ack) = ack {
        let _ = ack.send(());
    }
}

async fn serve_connection(tcp: TcpStream, acceptor: TlsAcceptor, state: Arc<State>) {
    let _ = tcp.set_nodelay(true);
    let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
        Ok(Ok(s)) => s,
        _ => return,
    };
    let svc = service_fn(move |req| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(handle(state, req).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(tls), svc)
        .await;
}

/// Percent-decodes a URL path; `None` for malformed escapes or non-UTF-8.
fn decode_path(raw: &str) -> Option<String> {
    let b = raw.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = raw.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

async fn handle(state: Arc<State>, req: hyper::Request<Incoming>) -> hyper::Response<ResponseBody> {
    let received_at = std::time::Instant::now();
    let (parts, body) = req.into_parts();
    let method = parts.method.as_str().to_string();
    let raw_path = parts.uri.path().to_string();
    let raw_query = parts.uri.query().map(str::to_string);
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();

    let body = Limited::new(body, MAX_BODY).collect().await;
    let latency = *lock(&state.latency);
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let (body, reply) = match body {
        Ok(collected) => {
            let body = collected.to_bytes();
            let reply = match decode_path(&raw_path) {
                Some(path) => {
                    let query = raw_query
                        .as_deref()
                        .map(|q| {
                            form_urlencoded::parse(q.as_bytes())
                                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                                .collect()
                        })
                        .unwrap_or_default();
                    let request = api::Request {
                        method: method.clone(),
                        path,
                        query,
                        headers: headers.clone(),
                        body: body.clone(),
                    };
                    api::dispatch(&state, &request)
                }
                None => Reply::error(ApiError::bad_request(format!(
                    "invalid URL escape in path {raw_path:?}"
                ))),
            };
            (body, reply)
        }
        Err(e) => {
            let err = if e.is::<http_body_util::LengthLimitError>() {
                ApiError::entity_too_large(&format!("limit is {MAX_BODY}"))
            } else {
                ApiError::bad_request(format!("error reading request body: {e}"))
            };
            (Bytes::new(), Reply::error(err))
        }
    };

    let reply = match reply.body {
        ReplyBody::Proxy(forward) => crate::proxy::send(*forward).await,
        _ => reply,
    };
    lock(&state.requests).push(Recorded {
        method: method.clone(),
        path: raw_path,
        query: raw_query,
        headers,
        body: body.to_vec(),
        status: reply.status,
        received_at,
    });
    into_response(reply, method == "HEAD")
}

fn into_response(reply: Reply, head: bool) -> hyper::Response<ResponseBody> {
    let body = match reply.body {
        ReplyBody::Full(_) if head => Full::new(Bytes::new()).boxed(),
        ReplyBody::Full(b) => Full::new(Bytes::from(b)).boxed(),
        ReplyBody::Stream(s) => s,
        // Sent to the backend before this point.
        ReplyBody::Proxy(_) => Full::new(Bytes::new()).boxed(),
    };
    let mut builder = hyper::Response::builder().status(reply.status);
    if !reply.content_type.is_empty() {
        builder = builder.header("content-type", reply.content_type);
    }
    builder = builder
        .header("cache-control", "no-cache, private")
        .header("audit-id", crate::objects::new_uid());
    for (k, v) in &reply.headers {
        builder = builder.header(k.as_str(), v.as_str());
    }
    builder.body(body).unwrap_or_else(|_| {
        let mut r = hyper::Response::new(Full::new(Bytes::from_static(b"")).boxed());
        *r.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
        r
    })
}

#[cfg(test)]
mod tests {
    use super::decode_path;

    #[test]
    fn path_decoding() {
        assert_eq!(decode_path("/a%2Fb").as_deref(), Some("/a/b"));
        assert_eq!(decode_path("/a%zz"), None);
        assert_eq!(decode_path("/a%"), None);
        assert_eq!(decode_path("/%ff"), None);
    }
}
