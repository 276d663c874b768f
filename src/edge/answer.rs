//! Answers: a status, and a one-line plain-text reason or a small JSON summary.

use crate::refusal::Refusal;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;

#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Bytes,
    pub json: bool,
    /// For 405: which method would have been accepted.
    pub allow_post: bool,
    /// What to log and count as the outcome.
    pub outcome: &'static str,
    /// Seconds for `Retry-After` (429, and 503 when the body memory budget is used up).
    pub retry_after: Option<u64>,
    /// Close the connection after answering: the head was too large, or could be framed
    /// another way, to trust what follows it.
    pub close: bool,
}

impl Answer {
    pub fn text(status: u16, outcome: &'static str, reason: &str) -> Self {
        Answer {
            status,
            body: Bytes::from(format!("{reason}\n")),
            json: false,
            allow_post: false,
            outcome,
            retry_after: None,
            close: false,
        }
    }

    pub fn json(status: u16, outcome: &'static str, value: &impl serde::Serialize) -> Self {
        let mut body = serde_json::to_vec(value).unwrap_or_default();
        body.push(b'\n');
        Answer {
            status,
            body: Bytes::from(body),
            json: true,
            allow_post: false,
            outcome,
            retry_after: None,
            close: false,
        }
    }

    pub fn refused(r: &Refusal) -> Self {
        let mut a = Answer::text(r.status, r.cause.label(), &r.reason);
        a.allow_post = r.status == 405;
        a.close = r.status == 431;
        a
    }

    /// The one-line reason of a refusal, as sent.
    pub fn reason(&self) -> Option<&str> {
        if self.json || self.status < 400 {
            return None;
        }
        std::str::from_utf8(&self.body).ok().map(str::trim_end)
    }

    pub fn closing(mut self) -> Self {
        self.close = true;
        self
    }

    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    pub async fn write(&self, session: &mut ServerSession) -> pingora::Result<()> {
        // Without the case-preserving name map, and with static values: every answer
        // builds this head, so it should not allocate more than it must.
        let mut h = ResponseHeader::build_no_case(self.status, Some(6))?;
        let ct = if self.json {
            HeaderValue::from_static("application/json")
        } else {
            HeaderValue::from_static("text/plain; charset=utf-8")
        };
        h.insert_header(header::CONTENT_TYPE, ct)?;
        h.insert_header(header::CONTENT_LENGTH, self.body.len())?;
        h.insert_header(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))?;
        h.insert_header(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        )?;
        if self.allow_post {
            h.insert_header(header::ALLOW, HeaderValue::from_static("POST"))?;
        }
        if let Some(secs) = self.retry_after {
            h.insert_header(header::RETRY_AFTER, secs)?;
        }
        session.write_response_header(Box::new(h)).await?;
        session.write_response_body(self.body.clone(), true).await
    }
}
