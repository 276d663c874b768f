//! The request pipeline in the apiserver's filter order: public endpoints,
//! authentication, injected failures (where max-in-flight would answer),
//! authorization, then discovery or the resource handlers.

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use serde_json::Value;

use crate::negotiate;
use crate::rbac::{forbidden_message, Attributes};
use crate::requestinfo::{self, RequestInfo};
use crate::state::{lock, State};
use crate::status::ApiError;
use crate::{discovery, resources};

/// A request as the handlers see it, with the body already read.
pub(crate) struct Request {
    pub method: String,
    /// Percent-decoded path.
    pub path: String,
    pub query: Vec<(String, String)>,
    /// Lower-case names.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn query(&self, key: &str) -> Option<&str> {
        requestinfo::query_get(&self.query, key)
    }

    /// Every value of a repeated parameter (`dryRun=All&dryRun=All`).
    pub fn query_all(&self, key: &str) -> Vec<&str> {
        self.query
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

pub(crate) type ResponseBody = BoxBody<Bytes, std::convert::Infallible>;

pub(crate) enum ReplyBody {
    Full(Vec<u8>),
    /// A streaming body (watch).
    Stream(ResponseBody),
    /// To be answered by a service's backend (the service proxy).
    Proxy(Box<crate::proxy::Forward>),
}

pub(crate) struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub headers: Vec<(String, String)>,
    pub body: ReplyBody,
}

impl Reply {
    /// JSON, newline-terminated like the apiserver's encoder.
    pub fn json(status: u16, v: &Value) -> Reply {
        let mut body = serde_json::to_vec(v).unwrap_or_default();
        body.push(b'\n');
        Reply {
            status,
            content_type: "application/json",
            headers: Vec::new(),
            body: ReplyBody::Full(body),
        }
    }

    pub fn error(e: ApiError) -> Reply {
        let mut headers = Vec::new();
        if let Some(secs) = e.retry_after {
            headers.push(("retry-after".to_string(), secs.to_string()));
        }
        Reply {
            status: e.code,
            content_type: "application/json",
            headers,
            body: ReplyBody::Full(e.body()),
        }
    }

    fn text(status: u16, s: &str) -> Reply {
        Reply {
            status,
            content_type: "text/plain; charset=utf-8",
            headers: vec![("x-content-type-options".into(), "nosniff".into())],
            body: ReplyBody::Full(s.as_bytes().to_vec()),
        }
    }
}

/// `BearerToken` authenticator semantics: scheme is case-insensitive, the
/// token is the second space-separated field, an empty token never matches.
fn authenticate<'a>(state: &'a State, req: &Request) -> Option<&'a str> {
    let auth = req.header("authorization")?.trim();
    let mut parts = auth.splitn(3, ' ');
    let scheme = parts.next()?;
    let token = parts.next()?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return None;
    }
    state.tokens.get(token).map(String::as_str)
}

pub(crate) fn dispatch(state: &State, req: &Request) -> Reply {
    let read_only = matches!(req.method.as_str(), "GET" | "HEAD");
    if read_only {
        // system:public-info-viewer: reachable without credentials.
        match req.path.as_str() {
            "/version" | "/version/" => return Reply::json(200, &discovery::version()),
            "/healthz" | "/livez" | "/readyz" => return Reply::text(200, "ok"),
            _ => {}
        }
    }
    let Some(user) = authenticate(state, req) else {
        return Reply::error(ApiError::unauthorized());
    };
    if let Some(err) = state.take_failure() {
        return Reply::error(err);
    }
    let info = requestinfo::parse(&req.method, &req.path, &req.query);
    let attrs = attributes(&info, user);
    if !state.authz.authorize(&attrs).allowed {
        let reason = forbidden_message(&attrs);
        let (group, resource) = if info.is_resource_request {
            (info.group.as_str(), info.resource.as_str())
        } else {
            ("", "")
        };
        return Reply::error(ApiError::forbidden(group, resource, &info.name, &reason));
    }
    if info.api_prefix == "api" && info.resource == "services" && info.subresource == "proxy" {
        return crate::proxy::route(state, req, &info);
    }
    if !info.is_resource_request {
        let address = lock(&state.server_address).clone();
        return match discovery::serve(&state.kinds, &req.path, &address) {
            Some(doc) => {
                if negotiate::accepts_plain_json(req.header("accept")) {
                    Reply::json(200, &doc)
                } else {
                    Reply::error(ApiError::not_acceptable(&["application/json"]))
                }
            }
            None => Reply::error(ApiError::not_found_generic()),
        };
    }
    resources::serve(state, req, &info, user)
}

pub(crate) fn attributes<'a>(info: &'a RequestInfo, user: &'a str) -> Attributes<'a> {
    Attributes {
        user,
        verb: &info.verb,
        is_resource_request: info.is_resource_request,
        group: &info.group,
        resource: &info.resource,
        subresource: &info.subresource,
        namespace: &info.namespace,
        name: &info.name,
        path: &info.path,
    }
}
