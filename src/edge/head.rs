//! The request head, before anything routes on it or reads a body: heads pingora could not
//! parse, and heads it parsed leniently that a security edge refuses.
//!
//! pingora follows RFC 9112 where it lets a recipient be lenient: it drops `Content-Length`
//! when `Transfer-Encoding` is present, strips a fragment from the target and accepts an
//! HTTP/1.1 request without `Host`. A proxy in front of fluxgate may have framed the same
//! bytes differently, so each of these is refused and the connection closed.

use super::answer::Answer;
use crate::refusal::{Cause, Refusal};
use http::{header, HeaderValue, Version};
use pingora::protocols::http::ServerSession;
use pingora::ErrorType;

/// `http::Uri` holds at most this many bytes; pingora refuses a longer target while parsing.
const MAX_TARGET: usize = u16::MAX as usize - 1;

/// pingora's limit on header lines; a head with more never parses.
const MAX_HEADERS: usize = 256;

/// The answer to a head pingora could not parse, closing the connection, since what follows
/// cannot be framed; `None` when the client left before finishing it. pingora's explanations
/// of a parse error quote the raw head or the target, which may hold a token or signature:
/// only fixed text is passed on, to the client and the log.
pub fn unreadable(e: &pingora::Error, max_header_bytes: usize) -> Option<Answer> {
    if matches!(
        e.etype(),
        ErrorType::ConnectionClosed | ErrorType::ReadError
    ) {
        return None;
    }
    let context = e.context.as_ref().map_or("", |c| c.as_str());
    let cause = e.cause.as_ref().map(|c| c.to_string()).unwrap_or_default();
    let refusal = if context.starts_with("Request header larger than")
        || cause == "too many headers"
    {
        Refusal::new(
            431,
            Cause::HeadTooLarge,
            format!("request head larger than {max_header_bytes} bytes or with too many headers"),
        )
    } else if let Some(target) = context.strip_prefix("invalid uri ") {
        if target.len() > MAX_TARGET {
            Refusal::new(
                414,
                Cause::HeadTooLarge,
                format!("request target longer than {MAX_TARGET} bytes"),
            )
        } else {
            Refusal::bad_request(Cause::MalformedRequest, "invalid request target")
        }
    } else if context.starts_with("buf:") {
        let why = if cause.is_empty() {
            "unparsable"
        } else {
            cause.as_str()
        };
        Refusal::bad_request(
            Cause::MalformedRequest,
            format!("malformed request head: {why}"),
        )
    } else {
        Refusal::bad_request(
            Cause::MalformedRequest,
            format!("malformed request: {}", explanation(e)),
        )
    };
    Some(Answer::refused(&refusal).closing())
}

/// pingora's explanation of an error, without its internal chain.
pub fn explanation(e: &pingora::Error) -> String {
    match &e.context {
        Some(c) => c.as_str().to_string(),
        None => e.etype().as_str().to_string(),
    }
}

/// Refuses a parsed head that is too large, or that could be framed or routed two ways.
pub fn check(s: &ServerSession, max_header_bytes: usize) -> Result<(), Refusal> {
    let raw = s.to_h1_raw();
    let request_line = raw.split(|&b| b == b'\n').next().unwrap_or_default();
    if request_line.len() > max_header_bytes {
        return Err(Refusal::new(
            414,
            Cause::HeadTooLarge,
            format!("request line longer than {max_header_bytes} bytes"),
        ));
    }
    if raw.len() > max_header_bytes {
        return Err(Refusal::new(
            431,
            Cause::HeadTooLarge,
            format!("request head larger than {max_header_bytes} bytes"),
        ));
    }
    if let Some(reason) = loose_lines(&raw) {
        return Err(malformed(reason));
    }
    if request_line.contains(&b'#') {
        return Err(malformed(
            "a fragment (#) is not allowed in the request target",
        ));
    }
    let req = s.req_header();
    // RFC 9112 3.2: a server MUST answer 400 to an HTTP/1.1 request without Host.
    if req.version == Version::HTTP_11 && !req.headers.contains_key(header::HOST) {
        return Err(malformed("HTTP/1.1 request without a Host header"));
    }
    let codings = req.headers.get_all(header::TRANSFER_ENCODING);
    if codings.iter().next().is_none() {
        return Ok(());
    }
    if has_content_length(&raw) {
        return Err(malformed(
            "both Content-Length and Transfer-Encoding: a request is framed one way",
        ));
    }
    transfer_codings(codings.iter())
}

/// What RFC 9112 lets a server refuse in the head's lines, and a proxy in front may read
/// another way:
/// - a bare LF ending a line (2.2: a recipient MAY take it as a line end; one that does not
///   sees a different set of header lines);
/// - a target other than origin-form (3.2). RFC 9112 3.2.2 asks servers to accept absolute-form,
///   but its authority then overrides Host (7.2), so a proxy routing on Host and fluxgate would
///   disagree about the request; webhook senders never send it, and `*` is for OPTIONS only;
/// - whitespace after the value of a Transfer-Encoding line: optional whitespace by the
///   grammar, but parsers that keep it see `chunked ` as an unknown coding and frame the body
///   otherwise, and no sender writes it.
fn loose_lines(raw: &[u8]) -> Option<&'static str> {
    if raw
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && (i == 0 || raw[i - 1] != b'\r'))
    {
        return Some("a line of the request head ends in a bare LF instead of CRLF");
    }
    let mut lines = raw
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let request_line = lines.next().unwrap_or_default();
    let target = request_line
        .split(|&b| b == b' ')
        .nth(1)
        .unwrap_or_default();
    if !target.starts_with(b"/") {
        return Some("the request target is not a path (origin-form, RFC 9112 3.2.1)");
    }
    let transfer_encoding =
        |l: &&[u8]| l.len() > 18 && l[..18].eq_ignore_ascii_case(b"transfer-encoding:");
    if lines
        .filter(transfer_encoding)
        .any(|l| matches!(l.last(), Some(b' ' | b'\t')))
    {
        return Some("whitespace after the value of Transfer-Encoding");
    }
    None
}

fn malformed(reason: &'static str) -> Refusal {
    Refusal::bad_request(Cause::MalformedRequest, reason)
}

/// pingora has already removed `Content-Length` from the parsed head when `Transfer-Encoding`
/// is present, so the raw head is read again for it.
fn has_content_length(raw: &[u8]) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    // pingora parsed these bytes already; should they not parse again, the head is refused.
    if req.parse(raw).is_err() {
        return true;
    }
    req.headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("content-length"))
}

/// Accepts exactly one `chunked` and nothing else, like Go's net/http behind Flux's
/// receiver: chunked applied twice is invalid (RFC 9112 6.1), and no other coding can be
/// decoded here. pingora has already refused a final coding other than chunked.
fn transfer_codings<'a>(values: impl Iterator<Item = &'a HeaderValue>) -> Result<(), Refusal> {
    let mut chunked = 0;
    let mut other = false;
    for coding in values
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|c| !c.is_empty())
    {
        if coding.eq_ignore_ascii_case(b"chunked") {
            chunked += 1;
        } else {
            other = true;
        }
    }
    if chunked > 1 {
        return Err(malformed(
            "Transfer-Encoding applies chunked more than once",
        ));
    }
    if other {
        return Err(Refusal::new(
            501,
            Cause::MalformedRequest,
            "only the chunked transfer coding is supported",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codings(values: &[&'static str]) -> Result<(), u16> {
        let values: Vec<HeaderValue> = values.iter().map(|v| HeaderValue::from_static(v)).collect();
        transfer_codings(values.iter()).map_err(|r| r.status)
    }

    #[test]
    fn only_a_single_chunked_coding_is_accepted() {
        assert_eq!(codings(&["chunked"]), Ok(()));
        assert_eq!(codings(&["Chunked"]), Ok(()));
        assert_eq!(codings(&[" chunked ,"]), Ok(()));
        assert_eq!(codings(&["chunked", "chunked"]), Err(400));
        assert_eq!(codings(&["chunked, chunked"]), Err(400));
        assert_eq!(codings(&["gzip, chunked"]), Err(501));
        assert_eq!(codings(&["gzip", "chunked"]), Err(501));
    }

    #[test]
    fn loose_head_lines_are_found() {
        let ok = b"POST /hook/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(loose_lines(ok), None);
        for (raw, why) in [
            (&b"POST /hook/x HTTP/1.1\nHost: x\n\n"[..], "bare LF"),
            (
                b"POST /hook/x HTTP/1.1\r\nHost: x\nX-A: b\r\n\r\n",
                "bare LF",
            ),
            (b"POST /hook/x HTTP/1.1\r\nHost: x\r\n\n", "bare LF"),
            (
                b"POST http://x/hook/x HTTP/1.1\r\nHost: x\r\n\r\n",
                "origin-form",
            ),
            (b"POST * HTTP/1.1\r\nHost: x\r\n\r\n", "origin-form"),
            (
                b"POST /h HTTP/1.1\r\nTransfer-Encoding: chunked \r\n\r\n",
                "Transfer-Encoding",
            ),
            (
                b"POST /h HTTP/1.1\r\ntransfer-encoding: chunked\t\r\n\r\n",
                "Transfer-Encoding",
            ),
        ] {
            let got = loose_lines(raw).unwrap_or_default();
            assert!(
                got.contains(why),
                "{:?}: {got:?}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn content_length_is_found_in_the_raw_head_whatever_its_case() {
        assert!(has_content_length(
            b"POST / HTTP/1.1\r\nHost: x\r\ncontent-LENGTH: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        ));
        assert!(!has_content_length(
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        ));
        assert!(!has_content_length(
            b"POST / HTTP/1.1\r\nHost: x\r\nX-Content-Length: 5\r\n\r\n"
        ));
    }
}
