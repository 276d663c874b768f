//! Answers: a status, and a one-line plain-text reason or a small JSON summary.

use crate::refusal::Refusal;
use bytes::Bytes;
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
    /// Seconds for `Retry-After` (429).
    pub retry_after: Option<u64>,
    /// Close the connection after answering: the head was too large to trust what follows.
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

    pub fn json(status: u16, outcome: &'static str, value: &serde_json::Value) -> Self {
        let mut body = value.to_string();
        body.push('\n');
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

    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    pub async fn write(&self, session: &mut ServerSession) -> pingora::Result<()> {
        let mut h = ResponseHeader::build(self.status, Some(5))?;
        let ct = if self.json {
            "application/json"
        } else {
            "text/plain; charset=utf-8"
        };
        h.insert_header(http::header::CONTENT_TYPE, ct)?;
        h.insert_header(http::header::CONTENT_LENGTH, self.body.len().to_string())?;
        h.insert_header(http::header::CACHE_CONTROL, "no-store")?;
        h.insert_header("X-Content-Type-Options", "nosniff")?;
        if self.allow_post {
            h.insert_header(http::header::ALLOW, "POST")?;
        }
        if let Some(secs) = self.retry_after {
            h.insert_header(http::header::RETRY_AFTER, secs.to_string())?;
        }
        session.write_response_header(Box::new(h)).await?;
        session.write_response_body(self.body.clone(), true).await
    }
}
