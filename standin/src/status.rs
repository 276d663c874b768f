//! `metav1.Status` error bodies, built the way apimachinery's `errors`
//! package builds them so clients that switch on `reason`/`code`/`details`
//! behave as they would against a real apiserver.

use serde::Serialize;

use crate::kinds::group_resource;

/// `metav1.StatusCause`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct Cause {
    #[serde(rename = "reason", skip_serializing_if = "str::is_empty")]
    pub kind: String,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub message: String,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub field: String,
}

/// `metav1.StatusDetails`, with Go's field order and `omitempty` rules.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub(crate) struct Details {
    #[serde(skip_serializing_if = "str::is_empty")]
    pub name: String,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub group: String,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub kind: String,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub uid: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub causes: Vec<Cause>,
    #[serde(rename = "retryAfterSeconds", skip_serializing_if = "is_zero")]
    pub retry_after_seconds: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Serialize)]
struct Empty {}

/// The serialized shape; a struct rather than a `Value` so the key order is
/// the apiserver's (`kind`, `apiVersion`, `metadata`, `status`, ...).
#[derive(Serialize)]
struct Wire<'a> {
    kind: &'static str,
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    metadata: Empty,
    status: &'static str,
    #[serde(skip_serializing_if = "str::is_empty")]
    message: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    reason: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<&'a Details>,
    code: u16,
}

/// A failed request, answered as a `Status` object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    pub code: u16,
    pub reason: String,
    pub message: String,
    pub details: Option<Box<Details>>,
    /// Also sent as a `Retry-After` header.
    pub retry_after: Option<u64>,
}

pub(crate) type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    fn new(code: u16, reason: &str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason: reason.to_string(),
            message: message.into(),
            details: None,
            retry_after: None,
        }
    }

    fn with_details(mut self, d: Details) -> Self {
        self.details = Some(Box::new(d));
        self
    }

    /// The JSON body, newline-terminated like Go's `json.Encoder` output.
    pub fn body(&self) -> Vec<u8> {
        let wire = Wire {
            kind: "Status",
            api_version: "v1",
            metadata: Empty {},
            status: "Failure",
            message: &self.message,
            reason: &self.reason,
            details: self.details.as_deref(),
            code: self.code,
        };
        let mut out = serde_json::to_vec(&wire).unwrap_or_default();
        out.push(b'\n');
        out
    }

    pub fn unauthorized() -> Self {
        ApiError::new(401, "Unauthorized", "Unauthorized")
    }

    /// `errors.NewForbidden`; `reason_text` is the authorizer's sentence.
    pub fn forbidden(group: &str, resource: &str, name: &str, reason_text: &str) -> Self {
        let message = if resource.is_empty() && group.is_empty() {
            format!("forbidden: {reason_text}")
        } else if name.is_empty() {
            format!(
                "{} is forbidden: {reason_text}",
                group_resource(group, resource)
            )
        } else {
            format!(
                "{} {} is forbidden: {reason_text}",
                group_resource(group, resource),
                go_quote(name)
            )
        };
        ApiError::new(403, "Forbidden", message).with_details(Details {
            name: name.to_string(),
            group: group.to_string(),
            kind: resource.to_string(),
            ..Details::default()
        })
    }

    /// `errors.NewNotFound` for a named object.
    pub fn not_found(group: &str, resource: &str, name: &str) -> Self {
        ApiError::new(
            404,
            "NotFound",
            format!(
                "{} {} not found",
                group_resource(group, resource),
                go_quote(name)
            ),
        )
        .with_details(Details {
            name: name.to_string(),
            group: group.to_string(),
            kind: resource.to_string(),
            ..Details::default()
        })
    }

    /// What the apiserver's not-found handler answers for unknown paths and
    /// unknown resource types.
    pub fn not_found_generic() -> Self {
        ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
        .with_details(Details::default())
    }

    pub fn already_exists(group: &str, resource: &str, name: &str) -> Self {
        ApiError::new(
            409,
            "AlreadyExists",
            format!(
                "{} {} already exists",
                group_resource(group, resource),
                go_quote(name)
            ),
        )
        .with_details(Details {
            name: name.to_string(),
            group: group.to_string(),
            kind: resource.to_string(),
            ..Details::default()
        })
    }

    /// `errors.NewConflict`.
    pub fn conflict(group: &str, resource: &str, name: &str, why: &str) -> Self {
        ApiError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} {}: {why}",
                group_resource(group, resource),
                go_quote(name)
            ),
        )
        .with_details(Details {
            name: name.to_string(),
            group: group.to_string(),
            kind: resource.to_string(),
            ..Details::default()
        })
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(400, "BadRequest", message)
    }

    /// `errors.NewInvalid`: `group_kind` is `Kind.group` ("" for an unknown kind).
    pub fn invalid(group: &str, kind: &str, name: &str, errs: &[FieldError]) -> Self {
        let gk = if group.is_empty() {
            kind.to_string()
        } else {
            format!("{kind}.{group}")
        };
        let message = match errs {
            [] => format!("{gk} {} is invalid", go_quote(name)),
            [one] => format!("{gk} {} is invalid: {}", go_quote(name), one),
            many => format!(
                "{gk} {} is invalid: [{}]",
                go_quote(name),
                many.iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        ApiError::new(422, "Invalid", message).with_details(Details {
            name: name.to_string(),
            group: group.to_string(),
            kind: kind.to_string(),
            causes: errs
                .iter()
                .map(|e| Cause {
                    kind: e.kind.cause_type().to_string(),
                    message: e.body(),
                    field: e.field.clone(),
                })
                .collect(),
            ..Details::default()
        })
    }

    /// `errors.NewGenericServerResponse` with an empty resource, which is how
    /// go-restful routing errors and json-patch failures are reported.
    pub fn generic(code: u16, server_message: &str) -> Self {
        let (reason, message) = generic_reason_message(code);
        let mut d = Details::default();
        if !server_message.is_empty() {
            d.causes.push(Cause {
                kind: "UnexpectedServerResponse".to_string(),
                message: server_message.to_string(),
                field: String::new(),
            });
        }
        ApiError::new(code, reason, message).with_details(d)
    }

    pub fn method_not_supported(group: &str, resource: &str, action: &str) -> Self {
        ApiError::new(
            405,
            "MethodNotAllowed",
            format!(
                "{action} is not supported on resources of kind {}",
                go_quote(&group_resource(group, resource))
            ),
        )
        .with_details(Details {
            group: group.to_string(),
            kind: resource.to_string(),
            ..Details::default()
        })
    }

    pub fn unsupported_media_type(accepted: &[&str]) -> Self {
        ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: {}",
                accepted.join(", ")
            ),
        )
    }

    pub fn not_acceptable(accepted: &[&str]) -> Self {
        ApiError::new(
            406,
            "NotAcceptable",
            format!(
                "only the following media types are accepted: {}",
                accepted.join(", ")
            ),
        )
    }

    pub fn internal(err: &str) -> Self {
        ApiError::new(
            500,
            "InternalError",
            format!("Internal error occurred: {err}"),
        )
        .with_details(Details {
            causes: vec![Cause {
                kind: String::new(),
                message: err.to_string(),
                field: String::new(),
            }],
            ..Details::default()
        })
    }

    pub fn expired(message: &str) -> Self {
        ApiError::new(410, "Expired", message)
    }

    /// `errors.NewServiceUnavailable`, as the service proxy reports a backend it cannot reach.
    pub fn service_unavailable(message: &str) -> Self {
        ApiError::new(503, "ServiceUnavailable", message)
    }

    pub fn entity_too_large(message: &str) -> Self {
        ApiError::new(
            413,
            "RequestEntityTooLarge",
            format!("Request entity too large: {message}"),
        )
    }

    /// What `fail_next` injects: the error the apiserver (or its
    /// max-in-flight / timeout filters) sends for that code.
    pub fn injected(code: u16, retry_after: Option<u64>) -> Self {
        let mut e = match code {
            429 => ApiError::new(
                429,
                "TooManyRequests",
                "Too many requests, please try again later.",
            ),
            500 => ApiError::internal("injected failure (kube-standin fail_next)"),
            503 => ApiError::new(
                503,
                "ServiceUnavailable",
                "the server is currently unable to handle the request",
            ),
            504 => ApiError::new(
                504,
                "Timeout",
                "the server was unable to return a response in the time allotted, but may still be processing the request",
            ),
            other => {
                let (reason, message) = generic_reason_message(other);
                ApiError::new(other, reason, message)
            }
        };
        if let Some(secs) = retry_after {
            e.retry_after = Some(secs);
            let mut d = e.details.take().unwrap_or_default();
            d.retry_after_seconds = secs;
            e.details = Some(d);
        }
        e
    }
}

/// The reason/message table of `errors.NewGenericServerResponse`.
fn generic_reason_message(code: u16) -> (&'static str, String) {
    let (reason, msg): (&str, &str) = match code {
        400 => ("BadRequest", "the server rejected our request for an unknown reason"),
        401 => ("Unauthorized", "the server has asked for the client to provide credentials"),
        403 => ("Forbidden", "the server does not allow access to the requested resource"),
        404 => ("NotFound", "the server could not find the requested resource"),
        405 => (
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        ),
        406 => ("NotAcceptable", "the server was unable to respond with a content type that the client supports"),
        409 => ("Conflict", "the server reported a conflict"),
        410 => ("Expired", "the server could not find the requested resource"),
        413 => ("RequestEntityTooLarge", "the server has received a request that is too large"),
        415 => ("UnsupportedMediaType", "the server was unable to handle the media type of the request"),
        422 => ("Invalid", "the server rejected our request due to an error in our request"),
        429 => ("TooManyRequests", "the server has received too many requests and has asked us to try again later"),
        500 => ("InternalError", "an error on the server has prevented the request from succeeding"),
        503 => ("ServiceUnavailable", "the server is currently unable to handle the request"),
        504 => ("Timeout", "the server was unable to return a response in the time allotted, but may still be processing the request"),
        _ => {
            return (
                "",
                format!("the server responded with the status code {code} but did not return more information"),
            )
        }
    };
    (reason, msg.to_string())
}

/// `field.ErrorType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FieldErrorKind {
    Invalid,
    Required,
    Forbidden,
    NotSupported,
    TooLong,
}

impl FieldErrorKind {
    fn cause_type(self) -> &'static str {
        match self {
            FieldErrorKind::Invalid => "FieldValueInvalid",
            FieldErrorKind::Required => "FieldValueRequired",
            FieldErrorKind::Forbidden => "FieldValueForbidden",
            FieldErrorKind::NotSupported => "FieldValueNotSupported",
            FieldErrorKind::TooLong => "FieldValueTooLong",
        }
    }

    fn text(self) -> &'static str {
        match self {
            FieldErrorKind::Invalid => "Invalid value",
            FieldErrorKind::Required => "Required value",
            FieldErrorKind::Forbidden => "Forbidden",
            FieldErrorKind::NotSupported => "Unsupported value",
            FieldErrorKind::TooLong => "Too long",
        }
    }
}

/// `field.Error`: one validation failure at a field path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FieldError {
    pub kind: FieldErrorKind,
    pub field: String,
    /// The offending value, already rendered (quoted for strings); `None`
    /// for kinds that print no value.
    pub value: Option<String>,
    pub detail: String,
}

impl FieldError {
    pub fn invalid(field: &str, value: &str, detail: &str) -> Self {
        FieldError {
            kind: FieldErrorKind::Invalid,
            field: field.to_string(),
            value: Some(go_quote(value)),
            detail: detail.to_string(),
        }
    }

    pub fn required(field: &str, detail: &str) -> Self {
        FieldError {
            kind: FieldErrorKind::Required,
            field: field.to_string(),
            value: None,
            detail: detail.to_string(),
        }
    }

    pub fn with_kind(mut self, kind: FieldErrorKind) -> Self {
        self.kind = kind;
        self
    }

    /// `field.Error.ErrorBody()`.
    pub fn body(&self) -> String {
        let mut s = self.kind.text().to_string();
        if let Some(v) = &self.value {
            s.push_str(": ");
            s.push_str(v);
        }
        if !self.detail.is_empty() {
            s.push_str(": ");
            s.push_str(&self.detail);
        }
        s
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.body())
    }
}

/// Go's `%q` for the strings that appear in apiserver messages: a
/// double-quoted string with Go escapes.
pub(crate) fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unauthorized_body_is_byte_exact() {
        let body = String::from_utf8(ApiError::unauthorized().body()).unwrap();
        assert_eq!(
            body,
            "{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{},\"status\":\"Failure\",\"message\":\"Unauthorized\",\"reason\":\"Unauthorized\",\"code\":401}\n"
        );
    }

    #[test]
    fn forbidden_core_group_has_no_group_in_details() {
        let e = ApiError::forbidden("", "secrets", "", "x");
        assert_eq!(e.message, "secrets is forbidden: x");
        let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!(v["details"], serde_json::json!({"kind": "secrets"}));
    }

    #[test]
    fn invalid_message_joins_like_an_aggregate() {
        let errs = [
            FieldError::invalid("kind", "Foo", "must be GitRepository"),
            FieldError::required("metadata.name", "name or generateName is required"),
        ];
        let e = ApiError::invalid("source.toolkit.fluxcd.io", "GitRepository", "app", &errs);
        assert_eq!(
            e.message,
            "GitRepository.source.toolkit.fluxcd.io \"app\" is invalid: [kind: Invalid value: \"Foo\": must be GitRepository, metadata.name: Required value: name or generateName is required]"
        );
    }
}
