//! Forward mode: after verifying a delivery, send it on, headers and body as received, to
//! Flux's own receiver in the cluster, through the API server's service proxy. Flux then
//! verifies it again, records its own events and does the patching; fluxgate keeps the edge
//! duties (TLS, allow-lists, limits, replay) and the cluster needs no public ingress.
//!
//! The account needs `create` on `services/proxy` for that one service, under the resource
//! name the proxy path uses (`<service>:<port>`).

use super::kube::{ApiError, KubeApi};
use crate::relay::target::check_dns_label;
use http::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;
use std::net::IpAddr;

/// `forward = { namespace = "...", service = "...", port = "..." }` on a receiver; `{}` for
/// Flux's defaults: the `webhook-receiver` Service that `flux install` creates.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardSpec {
    #[serde(default = "default_namespace")]
    pub namespace: String,
    #[serde(default = "default_service")]
    pub service: String,
    /// A port number or name of the Service.
    #[serde(default = "default_port")]
    pub port: String,
}

fn default_namespace() -> String {
    "flux-system".into()
}

fn default_service() -> String {
    "webhook-receiver".into()
}

fn default_port() -> String {
    "80".into()
}

impl Default for ForwardSpec {
    fn default() -> Self {
        ForwardSpec {
            namespace: default_namespace(),
            service: default_service(),
            port: default_port(),
        }
    }
}

/// Headers that belong to one hop (RFC 9110 §7.6.1) or that the proxy path sets itself.
/// `Authorization` cannot pass: the API server takes it as the caller's credential and drops
/// it after authentication, which is why types that authenticate with it cannot be forwarded.
const NOT_FORWARDED: &[&str] = &[
    "authorization",
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "expect",
    "x-forwarded-for",
];

impl ForwardSpec {
    /// Problems with the keys, each as (key under `forward`, reason).
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if let Err(e) = check_dns_label(&self.namespace) {
            out.push(("namespace", e));
        }
        if let Err(e) = check_dns_label(&self.service) {
            out.push(("service", e.replace("namespace", "Service name")));
        }
        let numeric = self.port.parse::<u16>().is_ok_and(|p| p > 0);
        // An IANA service name, as a Service port name must be.
        let named = !self.port.is_empty()
            && self.port.len() <= 15
            && self
                .port
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && self.port.bytes().any(|b| b.is_ascii_lowercase());
        if !numeric && !named {
            out.push((
                "port",
                format!(
                    "{:?} is neither a port number nor a Service port name",
                    self.port
                ),
            ));
        }
        out
    }

    /// The resource name RBAC sees for the proxy: grant `create` on `services/proxy` with this
    /// in `resourceNames`.
    pub fn resource_name(&self) -> String {
        format!("{}:{}", self.service, self.port)
    }

    fn proxy_path(&self, hook_path: &str) -> String {
        format!(
            "/api/v1/namespaces/{}/services/{}/proxy{}",
            self.namespace,
            self.resource_name(),
            hook_path
        )
    }
}

/// Sends the delivery to Flux's receiver and returns the status Flux answered with. An error
/// is the API server's own: it refused the proxy request (RBAC, no such Service, no endpoint)
/// or could not be reached.
pub async fn forward(
    api: &KubeApi,
    spec: &ForwardSpec,
    hook_path: &str,
    head: &HeaderMap,
    body: bytes::Bytes,
    client: IpAddr,
) -> Result<u16, ApiError> {
    let mut req = http::Request::post(spec.proxy_path(hook_path));
    if let Some(h) = req.headers_mut() {
        for (name, value) in head {
            if !NOT_FORWARDED.contains(&name.as_str()) {
                h.append(name.clone(), value.clone());
            }
        }
        if let Ok(v) = HeaderValue::from_str(&client.to_string()) {
            h.insert(HeaderName::from_static("x-forwarded-for"), v);
        }
    }
    let req = req
        .body(body)
        .map_err(|e| ApiError::Unreachable(format!("cannot build the request: {e}")))?;
    let (status, answer) = api.send(req).await?;
    // Flux answers with an empty body; an API server error is a `Status` object.
    if let Some(e) = ApiError::from_status_body(status, &answer) {
        return Err(e);
    }
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_fluxs_service_and_keys_are_checked() {
        let d = ForwardSpec::default();
        assert_eq!(
            d.proxy_path("/hook/abc"),
            "/api/v1/namespaces/flux-system/services/webhook-receiver:80/proxy/hook/abc"
        );
        assert!(d.problems().is_empty());
        let named = ForwardSpec {
            port: "http".into(),
            ..ForwardSpec::default()
        };
        assert!(named.problems().is_empty());
        let bad = ForwardSpec {
            namespace: "Flux".into(),
            service: "a/b".into(),
            port: "0".into(),
        };
        let keys: Vec<_> = bad.problems().into_iter().map(|p| p.0).collect();
        assert_eq!(keys, ["namespace", "service", "port"]);
    }
}
