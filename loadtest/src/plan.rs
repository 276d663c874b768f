//! Everything the workers need, checked and computed before the run: the target, the TLS
//! configuration, the signed request templates, the source addresses.

use crate::mix::MixSpec;
use crate::options::Options;
use crate::request::RequestSet;
use crate::signing::{self, ReceiverType, SignSpec};
use crate::target::Target;
use crate::tls::{self, Trust};
use bytes::Bytes;
use rustls::pki_types::ServerName;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// A run, ready to start. Not `Debug` through its requests: they hold the signature.
pub struct Plan {
    pub target: Target,
    pub receiver: ReceiverType,
    pub connector: tokio_rustls::TlsConnector,
    pub server_name: ServerName<'static>,
    pub requests: Arc<RequestSet>,
    pub mix: MixSpec,
    pub connections: usize,
    pub threads: usize,
    pub rate: Option<f64>,
    pub duration: Duration,
    pub warmup: Duration,
    pub timeout: Duration,
    pub new_conn: bool,
    pub sources: Vec<IpAddr>,
    pub progress: bool,
}

fn parse_header(h: &str) -> Result<(String, String), String> {
    let (k, v) = h
        .split_once(':')
        .ok_or_else(|| format!("a header is `Name: value`, not {h:?}"))?;
    Ok((k.trim().to_string(), v.trim().to_string()))
}

impl Plan {
    /// Checks the options and prepares the run; the error is one line for the user.
    pub fn new(o: &Options) -> Result<Plan, String> {
        let target = Target::parse(&o.url)?;
        if o.connections == 0 {
            return Err("--connections must be at least 1".into());
        }
        if o.threads == 0 {
            return Err("--threads must be at least 1".into());
        }
        if o.duration.is_zero() {
            return Err("--duration must be more than 0".into());
        }
        if o.timeout.is_zero() {
            return Err("--timeout must be more than 0".into());
        }
        if let Some(r) = o.rate {
            if !(r.is_finite() && r > 0.0) {
                return Err("--rate must be a positive number of requests per second".into());
            }
        }
        let secret = match (&o.secret_file, &o.secret) {
            (Some(f), _) => signing::read_secret_file(f)?,
            (None, Some(s)) => {
                signing::trim_secret(s.clone().into_bytes()).ok_or("the secret is empty")?
            }
            (None, None) => return Err("give --secret-file FILE or --secret VALUE".into()),
        };
        let body = match (&o.body, o.body_size) {
            (Some(f), _) => crate::body::from_file(f)?,
            (None, Some(n)) => crate::body::generate(n)?,
            (None, None) => Bytes::from_static(crate::body::GITHUB_PUSH),
        };
        let signed = signing::sign(&SignSpec {
            receiver: o.receiver,
            algorithm: o.algorithm,
            secret: &secret,
            body: &body,
            event: o.event.as_deref(),
            id_header: o.id_header.as_deref(),
        })?;
        let extra = o
            .headers
            .iter()
            .map(|h| parse_header(h))
            .collect::<Result<Vec<_>, _>>()?;
        let requests = RequestSet::new(&target, &signed, &extra, body, o.new_conn)?;

        let trust = match (&o.ca, o.insecure) {
            (_, true) => Trust::Insecure,
            (Some(ca), false) => Trust::CaFile(ca.clone()),
            (None, false) => Trust::WebPki,
        };
        let config = tls::client_config(&trust, !o.no_tls_resume)?;
        let server_name = tls::server_name(&target.host)?;

        let sources = crate::sources::pick(o.source_net, o.sources)?;
        if let Some(ip) = sources.first() {
            if ip.is_ipv4() != target.addr.is_ipv4() {
                return Err(format!(
                    "source addresses from {} cannot reach {} (another address family)",
                    o.source_net, target.addr
                ));
            }
        }
        Ok(Plan {
            receiver: o.receiver,
            connector: tokio_rustls::TlsConnector::from(config),
            server_name,
            requests: Arc::new(requests),
            mix: o.mix,
            connections: o.connections,
            threads: o.threads.min(o.connections),
            rate: o.rate,
            duration: o.duration,
            warmup: o.warmup,
            timeout: o.timeout,
            new_conn: o.new_conn,
            sources,
            progress: !o.quiet,
            target,
        })
    }
}
