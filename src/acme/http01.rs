//! The optional plain-HTTP listener (`acme.http_listen`): it answers HTTP-01 challenges,
//! `GET /.well-known/acme-challenge/<token>`, and nothing else. Other requests are sent to
//! HTTPS (308) so that nothing is ever served in clear text.

use super::Acme;
use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

const PREFIX: &str = "/.well-known/acme-challenge/";

/// Connections served at once: a CA makes a few; anyone can open many, and each costs a task
/// and buffers. Past this, new connections wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 256;

/// Serves connections until the process ends; a connection gets 10 s for its head and one
/// request (no keep-alive).
pub async fn serve(listener: TcpListener, acme: Arc<Acme>, https_port: u16) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let acme = acme.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let svc = hyper::service::service_fn(move |req| {
                let a = answer(&acme, &req, https_port);
                async move { Ok::<_, std::convert::Infallible>(a) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .max_buf_size(16 * 1024)
                .keep_alive(false)
                .serve_connection(TokioIo::new(tcp), svc);
            // A client that reads its answer slowly is not kept past the deadline either.
            let _ = tokio::time::timeout(Duration::from_secs(10), conn).await;
        });
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(format!("{body}\n"))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// The key authorization for a known token; 404 for another token; 308 to HTTPS for the rest.
pub fn answer(acme: &Acme, req: &Request<Incoming>, https_port: u16) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if let Some(token) = path.strip_prefix(PREFIX) {
        return match acme.http_answer(token) {
            Some(ka) if req.method() == http::Method::GET || req.method() == http::Method::HEAD => {
                let mut r = Response::new(Full::new(Bytes::from(ka)));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("application/octet-stream"),
                );
                r
            }
            _ => text(StatusCode::NOT_FOUND, "no such challenge"),
        };
    }
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(|h| h.rsplit_once(':').map_or(h, |(name, _)| name))
        .map(str::to_ascii_lowercase);
    // Only to our own names: a redirect must not point wherever a Host header says.
    match host.filter(|h| acme.config.domains.iter().any(|d| d == h)) {
        Some(h) => {
            let port = if https_port == 443 {
                String::new()
            } else {
                format!(":{https_port}")
            };
            let query = req.uri().query().map_or(String::new(), |q| format!("?{q}"));
            let mut r = text(StatusCode::PERMANENT_REDIRECT, "use HTTPS");
            if let Ok(v) = header::HeaderValue::from_str(&format!("https://{h}{port}{path}{query}"))
            {
                r.headers_mut().insert(header::LOCATION, v);
            }
            r
        }
        None => text(
            StatusCode::NOT_FOUND,
            "not found; this listener serves ACME challenges only",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn acme() -> Arc<Acme> {
        let a = Acme::new(crate::acme::AcmeConfig {
            domains: vec!["gw.example.org".into()],
            email: None,
            directory: crate::acme::LETS_ENCRYPT.into(),
            ca_roots: vec![],
            eab: None,
            storage: crate::acme::StorageSettings::Directory("/nonexistent".into()),
            http_listen: None,
        });
        a.set_http("tok", "tok.thumb".into());
        a
    }

    async fn get(port: u16, path: &str) -> String {
        let mut c = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        c.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: gw.example.org:{port}\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        let _ = c.read_to_string(&mut out).await;
        out
    }

    #[tokio::test]
    async fn connections_past_the_cap_wait_for_a_free_slot() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(serve(l, acme(), 443));
        let ok = get(port, "/.well-known/acme-challenge/tok").await;
        assert!(
            ok.starts_with("HTTP/1.1 200") && ok.ends_with("tok.thumb"),
            "{ok}"
        );

        let mut idle = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            idle.push(
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .unwrap(),
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let waiting = tokio::spawn(get(port, "/elsewhere"));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiting.is_finished(), "served past the cap");
        idle.pop();
        let out = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap();
        assert!(out.starts_with("HTTP/1.1 308"), "{out}");
        assert!(
            out.contains("location: https://gw.example.org/elsewhere"),
            "{out}"
        );
    }
}
