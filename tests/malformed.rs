//! Issue 9, first part: hostile and malformed requests over real TLS, each with the one outcome
//! a security gateway should give it: a precise status, or a close without any answer. Never a
//! relay for anything unsigned or malformed, never a panic, never a hang.

use crate::common::*;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET: &str = "malformed-secret";
const NAME: &str = "gh";
/// How long any one exchange may take before it counts as a hang.
const READ_LIMIT: Duration = Duration::from_secs(4);

/// What came back on one connection.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    /// These answers (status codes, in order); reading stopped once the expected number came.
    Answers(Vec<u16>),
    /// EOF or reset before any status line.
    Closed,
    /// Fewer answers than expected and then nothing within `READ_LIMIT`.
    Hang(Vec<u16>),
    /// Fewer answers than expected and then EOF.
    ClosedAfter(Vec<u16>),
}

/// What one case should get.
#[derive(Debug, Clone, Copy)]
enum Want {
    Status(u16),
    Statuses(&'static [u16]),
    /// These answers, then the connection closed (nothing more is read from it).
    ThenClosed(&'static [u16]),
    Closed,
}

impl Want {
    fn count(self) -> usize {
        match self {
            Want::Status(_) | Want::Closed => 1,
            Want::Statuses(s) => s.len(),
            Want::ThenClosed(s) => s.len() + 1,
        }
    }
    /// Answers with a 200: each is a relayed delivery, one patch of the single target.
    fn relays(self) -> usize {
        let ok = |s: &[u16]| s.iter().filter(|&&c| c == 200).count();
        match self {
            Want::Status(s) => ok(&[s]),
            Want::Statuses(s) | Want::ThenClosed(s) => ok(s),
            Want::Closed => 0,
        }
    }
    fn matches(self, seen: &Seen) -> bool {
        match (self, seen) {
            (Want::Status(s), Seen::Answers(got)) => got == &[s],
            (Want::Statuses(s), Seen::Answers(got)) => got == s,
            (Want::ThenClosed(s), Seen::ClosedAfter(got)) => got == s,
            (Want::Closed, Seen::Closed) => true,
            _ => false,
        }
    }
}

struct Case {
    name: &'static str,
    bytes: Vec<u8>,
    /// Send close_notify and shut the write side once the bytes are out.
    half_close: bool,
    want: Want,
}

fn case(name: &'static str, bytes: impl Into<Vec<u8>>, want: Want) -> Case {
    Case {
        name,
        bytes: bytes.into(),
        half_close: false,
        want,
    }
}

fn case_eof(name: &'static str, bytes: impl Into<Vec<u8>>, want: Want) -> Case {
    Case {
        half_close: true,
        ..case(name, bytes, want)
    }
}

/// Complete responses at the front of `buf`: their statuses, and whether the last one's body
/// runs to the close (no Content-Length).
fn parse_responses(buf: &[u8]) -> Vec<u16> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(end) = buf[at..].windows(4).position(|w| w == b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&buf[at..at + end]).into_owned();
        let Some(status) = head
            .lines()
            .next()
            .filter(|l| l.starts_with("HTTP/"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u16>().ok())
        else {
            break;
        };
        let len = head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        });
        let body_start = at + end + 4;
        let len = match (status, len) {
            (100..=199, _) => 0,
            (_, Some(n)) => n,
            // Body to the close: counted as complete.
            (_, None) => {
                out.push(status);
                break;
            }
        };
        if buf.len() < body_start + len {
            break;
        }
        out.push(status);
        at = body_start + len;
    }
    out
}

/// Reads until `want` answers have come, EOF, or `READ_LIMIT`.
async fn read_answers<S: AsyncReadExt + Unpin>(s: &mut S, want: usize) -> Seen {
    let until = Instant::now() + READ_LIMIT;
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 16384];
    loop {
        let got = parse_responses(&buf);
        if got.len() >= want {
            return Seen::Answers(got);
        }
        let left = until.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                return if got.is_empty() {
                    Seen::Closed
                } else {
                    Seen::ClosedAfter(got)
                }
            }
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => return Seen::Hang(got),
        }
    }
}

async fn run(port: u16, cert: &str, c: &Case) -> Seen {
    let mut tls = raw_tls(port, cert).await;
    // The server may close before everything is written; what it answered is still read.
    let _ = tls.write_all(&c.bytes).await;
    let _ = tls.flush().await;
    if c.half_close {
        let _ = tls.shutdown().await;
    }
    read_answers(&mut tls, c.want.count()).await
}

fn path() -> String {
    hook(SECRET, NAME, "flux-system")
}

fn body() -> Vec<u8> {
    fixture("github/push.json")
}

/// The signed GitHub headers for `body` as raw lines, without Content-Length.
fn signed_lines(body: &[u8]) -> String {
    signed(SECRET, body, &uid())
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect()
}

/// A request: `line` (without CRLF), Host, `lines` (raw, each ending CRLF), then `body`.
fn req(line: &str, lines: &str, body: &[u8]) -> Vec<u8> {
    let mut v = format!("{line}\r\nHost: 127.0.0.1\r\n{lines}\r\n").into_bytes();
    v.extend_from_slice(body);
    v
}

/// A valid signed delivery on `target` with `extra` raw header lines, Content-Length framed.
fn signed_to(target: &str, extra: &str) -> Vec<u8> {
    let b = body();
    req(
        &format!("POST {target} HTTP/1.1"),
        &format!("{}{extra}Content-Length: {}\r\n", signed_lines(&b), b.len()),
        &b,
    )
}

fn valid(extra: &str) -> Vec<u8> {
    signed_to(&path(), extra)
}

/// A signed delivery whose headers are `lines` (raw), with the body sent as `framed`.
fn signed_framed(lines: &str, framed: &[u8]) -> Vec<u8> {
    let b = body();
    req(
        &format!("POST {} HTTP/1.1", path()),
        &format!("{}{lines}", signed_lines(&b)),
        framed,
    )
}

/// `r` with the CRLF of its first `lines` head lines after the request line turned into a
/// bare LF (`usize::MAX`: the request line's and all of them, the empty last one included).
fn bare_lf(r: Vec<u8>, lines: usize) -> Vec<u8> {
    let end = r.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let (head, body) = r.split_at(end);
    let head = String::from_utf8(head.to_vec()).unwrap();
    let head = if lines == usize::MAX {
        head.replace("\r\n", "\n")
    } else {
        let mut parts: Vec<&str> = head.split("\r\n").collect();
        let mut out = format!("{}\r\n", parts.remove(0));
        for (i, p) in parts[..parts.len() - 1].iter().enumerate() {
            out.push_str(p);
            out.push_str(if i < lines { "\n" } else { "\r\n" });
        }
        out
    };
    [head.as_bytes(), body].concat()
}

/// `b` as one chunk whose size line is the size, then `after` (which ends the line).
fn chunked_line(b: &[u8], after: &str) -> Vec<u8> {
    let mut v = format!("{:x}{after}", b.len()).into_bytes();
    v.extend_from_slice(b);
    v.extend_from_slice(b"\r\n0\r\n\r\n");
    v
}

fn chunked(b: &[u8]) -> Vec<u8> {
    let mut v = format!("{:x}\r\n", b.len()).into_bytes();
    v.extend_from_slice(b);
    v.extend_from_slice(b"\r\n0\r\n\r\n");
    v
}

/// The valid delivery's headers with a signature header of `value` instead of the real one.
fn with_sig(value: &str) -> Vec<u8> {
    let b = body();
    req(
        &format!("POST {} HTTP/1.1", path()),
        &format!(
            "Content-Type: application/json\r\nX-GitHub-Event: push\r\nX-GitHub-Delivery: {}\r\n{value}Content-Length: {}\r\n",
            uid(),
            b.len()
        ),
        &b,
    )
}

fn cases() -> Vec<Case> {
    use Want::*;
    let b = body();
    let p = path();
    let n = b.len();
    let good_sig = sig("sha256", SECRET, &b);
    let hexpart = good_sig.trim_start_matches("sha256=").to_string();
    let mut v = vec![
        // ---- Content-Length and Transfer-Encoding ----
        case(
            "CL then TE: chunked",
            signed_framed(
                &format!("Content-Length: {n}\r\nTransfer-Encoding: chunked\r\n"),
                &chunked(&b),
            ),
            Status(400),
        ),
        case(
            "TE: chunked then CL",
            signed_framed(
                &format!("Transfer-Encoding: chunked\r\nContent-Length: {n}\r\n"),
                &chunked(&b),
            ),
            Status(400),
        ),
        case(
            "CL 5 with TE: chunked body",
            signed_framed(
                "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
                &chunked(&b),
            ),
            Status(400),
        ),
        case(
            "TE: chunked, identity",
            signed_framed("Transfer-Encoding: chunked, identity\r\n", &chunked(&b)),
            Status(400),
        ),
        case(
            "TE: xchunked",
            signed_framed("Transfer-Encoding: xchunked\r\n", &chunked(&b)),
            Status(400),
        ),
        case(
            "TE: gzip (no chunked)",
            signed_framed("Transfer-Encoding: gzip\r\n", &b),
            Status(400),
        ),
        case(
            "TE with a space before the colon",
            signed_framed("Transfer-Encoding : chunked\r\n", &chunked(&b)),
            Status(400),
        ),
        case(
            "two different Content-Length",
            signed_framed(
                &format!("Content-Length: {n}\r\nContent-Length: {}\r\n", n + 1),
                &b,
            ),
            Status(400),
        ),
        case(
            "Content-Length list 'n, n+1'",
            signed_framed(&format!("Content-Length: {n}, {}\r\n", n + 1), &b),
            Status(400),
        ),
        case(
            "Content-Length non-numeric",
            signed_framed("Content-Length: abc\r\n", &b),
            Status(400),
        ),
        case(
            "Content-Length negative",
            signed_framed("Content-Length: -1\r\n", &b),
            Status(400),
        ),
        case(
            "Content-Length with a plus sign",
            signed_framed(&format!("Content-Length: +{n}\r\n"), &b),
            Status(400),
        ),
        case(
            "Content-Length hex",
            signed_framed(&format!("Content-Length: 0x{n:x}\r\n"), &b),
            Status(400),
        ),
        case(
            "Content-Length overflowing u64",
            signed_framed("Content-Length: 99999999999999999999999\r\n", &b),
            Status(400),
        ),
        case(
            "Content-Length huge (u64::MAX)",
            signed_framed(&format!("Content-Length: {}\r\n", u64::MAX), &b),
            Status(413),
        ),
        // ---- chunked sizes ----
        case(
            "chunk size non-hex",
            signed_framed(
                "Transfer-Encoding: chunked\r\n",
                b"zz\r\nhello\r\n0\r\n\r\n",
            ),
            Status(400),
        ),
        case(
            "chunk size negative",
            signed_framed(
                "Transfer-Encoding: chunked\r\n",
                b"-5\r\nhello\r\n0\r\n\r\n",
            ),
            Status(400),
        ),
        case(
            "chunk size 2^64",
            signed_framed(
                "Transfer-Encoding: chunked\r\n",
                b"10000000000000000\r\nhello\r\n0\r\n\r\n",
            ),
            Status(400),
        ),
        case(
            "chunk size 2^72-1",
            signed_framed(
                "Transfer-Encoding: chunked\r\n",
                b"ffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
            ),
            Status(400),
        ),
        case(
            "chunk data without its CRLF",
            signed_framed("Transfer-Encoding: chunked\r\n", b"5\r\nhelloX0\r\n\r\n"),
            Status(400),
        ),
        // RFC 9112 7.1: whitespace after a chunk size only before a `;` (BWS).
        case(
            "chunk size with a trailing space, signed",
            signed_framed("Transfer-Encoding: chunked\r\n", &chunked_line(&b, " \r\n")),
            Status(400),
        ),
        case(
            "chunk size with a trailing tab, signed",
            signed_framed(
                "Transfer-Encoding: chunked\r\n",
                &chunked_line(&b, "\t\r\n"),
            ),
            Status(400),
        ),
        case(
            "last chunk size '0 ', signed",
            signed_framed(
                "Transfer-Encoding: chunked\r\n",
                &[
                    &chunked_line(&b, "\r\n")[..chunked_line(&b, "\r\n").len() - 4],
                    b" \r\n\r\n",
                ]
                .concat(),
            ),
            Status(400),
        ),
        case(
            "chunk line ending in a bare LF, signed",
            signed_framed("Transfer-Encoding: chunked\r\n", &chunked_line(&b, "\n")),
            Status(400),
        ),
        case(
            "chunk size, space, extension, signed",
            signed_framed(
                "Transfer-Encoding: chunked\r\n",
                &chunked_line(&b, " ;x=y\r\n"),
            ),
            Status(200),
        ),
        case_eof(
            "chunk size larger than the data, then EOF",
            signed_framed("Transfer-Encoding: chunked\r\n", b"100\r\nhello"),
            Status(400),
        ),
        // ---- head size and header count ----
        case(
            "one header line of 70,000 bytes",
            valid(&format!("X-Big: {}\r\n", "a".repeat(70_000))),
            Status(431),
        ),
        case(
            "one header line of 2 MiB",
            valid(&format!("X-Big: {}\r\n", "a".repeat(2 << 20))),
            Status(431),
        ),
        case(
            "300 headers",
            valid(
                &(0..300)
                    .map(|i| format!("X-H{i}: v\r\n"))
                    .collect::<String>(),
            ),
            Status(431),
        ),
        case(
            "10,000 headers",
            valid(
                &(0..10_000)
                    .map(|i| format!("X-H{i}: v\r\n"))
                    .collect::<String>(),
            ),
            Status(431),
        ),
        // ---- bytes that do not belong in a head ----
        case("NUL in a header value", valid("X-A: a\0b\r\n"), Status(400)),
        case("NUL in a header name", valid("X-\0A: a\r\n"), Status(400)),
        case(
            "bare CR in a header value",
            valid("X-A: a\rb\r\n"),
            Status(400),
        ),
        case(
            "bare CR in a header name",
            valid("X-\rA: a\r\n"),
            Status(400),
        ),
        case(
            "bare LF in a header name",
            valid("X-\nA: a\r\n"),
            Status(400),
        ),
        case("DEL in a header name", valid("X-\x7fA: a\r\n"), Status(400)),
        case("space in a header name", valid("X A: a\r\n"), Status(400)),
        case("header line without a colon", valid("X-A\r\n"), Status(400)),
        case("empty header name", valid(": a\r\n"), Status(400)),
        case(
            "obs-fold continuation line",
            valid("X-A: a\r\n  folded\r\n"),
            Status(400),
        ),
        case(
            "obs-fold continuing the signature",
            with_sig(&format!("X-Hub-Signature-256: sha256=\r\n {hexpart}\r\n")),
            Status(400),
        ),
    ];
    // Non-UTF-8 bytes need byte strings.
    let mut non_utf8_value = valid("X-A: a\r\n");
    let at = non_utf8_value
        .windows(5)
        .position(|w| w == b"X-A: ")
        .unwrap()
        + 5;
    non_utf8_value.splice(at..at, [0xff, 0xfe, 0xc3]);
    let mut non_utf8_name = valid("X-A: a\r\n");
    let at = non_utf8_name
        .windows(5)
        .position(|w| w == b"X-A: ")
        .unwrap()
        + 2;
    non_utf8_name.splice(at..at, [0xff, 0xc3]);
    v.push(case(
        "non-UTF-8 in a header value",
        non_utf8_value,
        Status(200),
    ));
    v.push(case(
        "non-UTF-8 in a header name",
        non_utf8_name,
        Status(400),
    ));
    let mut non_utf8_path = format!("POST {p}").into_bytes();
    non_utf8_path.extend_from_slice(&[0xff, 0xfe]);
    non_utf8_path.extend_from_slice(b" HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
    v.push(case("non-UTF-8 in the target", non_utf8_path, Status(400)));

    v.extend([
        // ---- signature headers ----
        case(
            "two signatures, good then bad",
            with_sig(&format!(
                "X-Hub-Signature-256: {good_sig}\r\nX-Hub-Signature-256: sha256={}\r\n",
                "0".repeat(64)
            )),
            Status(401),
        ),
        case(
            "two signatures, bad then good",
            with_sig(&format!(
                "X-Hub-Signature-256: sha256={}\r\nX-Hub-Signature-256: {good_sig}\r\n",
                "0".repeat(64)
            )),
            Status(401),
        ),
        case(
            "two identical good signatures",
            with_sig(&format!(
                "X-Hub-Signature-256: {good_sig}\r\nX-Hub-Signature-256: {good_sig}\r\n"
            )),
            Status(401),
        ),
        case(
            "signature one hex digit short",
            with_sig(&format!("X-Hub-Signature-256: {}\r\n", &good_sig[..good_sig.len() - 1])),
            Status(401),
        ),
        case(
            "signature two hex digits long",
            with_sig(&format!("X-Hub-Signature-256: {good_sig}00\r\n")),
            Status(401),
        ),
        case(
            "signature 62 hex digits",
            with_sig(&format!("X-Hub-Signature-256: {}\r\n", &good_sig[..good_sig.len() - 2])),
            Status(401),
        ),
        case(
            "signature non-hex",
            with_sig(&format!("X-Hub-Signature-256: sha256={}\r\n", "g".repeat(64))),
            Status(401),
        ),
        case(
            "signature md5= prefix",
            with_sig(&format!("X-Hub-Signature-256: md5={hexpart}\r\n")),
            Status(401),
        ),
        case(
            "signature without a prefix",
            with_sig(&format!("X-Hub-Signature-256: {hexpart}\r\n")),
            Status(401),
        ),
        case("signature empty", with_sig("X-Hub-Signature-256: \r\n"), Status(401)),
        case("signature 'sha256=' only", with_sig("X-Hub-Signature-256: sha256=\r\n"), Status(401)),
        case("no signature", with_sig(""), Status(401)),
        // ---- request targets ----
        // Refused though RFC 9112 3.2.2 asks servers to accept absolute-form: its authority
        // would override Host, which a proxy in front may have routed on.
        case(
            "absolute-form target",
            signed_to(&format!("https://127.0.0.1{p}"), ""),
            Status(400),
        ),
        case(
            "absolute-form target, another host",
            signed_to(&format!("http://evil.example{p}"), ""),
            Status(400),
        ),
        case(
            "absolute-form target, unsigned",
            req(
                &format!("POST https://127.0.0.1{p} HTTP/1.1"),
                "Content-Type: application/json\r\nX-GitHub-Event: push\r\nContent-Length: 2\r\n",
                b"{}",
            ),
            Status(400),
        ),
        case(
            "'..' segment",
            signed_to(&format!("/x/..{p}"), ""),
            Status(404),
        ),
        case(
            "'.' segment",
            signed_to(&p.replacen("/hook/", "/hook/./", 1), ""),
            Status(404),
        ),
        case(
            "%2F for the slash",
            signed_to(&p.replacen("/hook/", "/hook%2F", 1), ""),
            Status(404),
        ),
        case(
            "a hex digit percent-encoded",
            signed_to(&{
                let last = p.chars().last().unwrap();
                format!("{}%{:02X}", &p[..p.len() - 1], last as u32)
            }, ""),
            Status(404),
        ),
        case(
            "a query string appended",
            signed_to(&format!("{p}?x=1"), ""),
            Status(404),
        ),
        case("a trailing slash", signed_to(&format!("{p}/"), ""), Status(404)),
        case("a fragment", signed_to(&format!("{p}#x"), ""), Status(400)),
        // RFC 9112 3.2: only origin-form is routed; `*` is for OPTIONS.
        case("asterisk target", signed_to("*", ""), Status(400)),
        case(
            "absolute-form http target, signed",
            signed_to(&format!("http://127.0.0.1{p}"), ""),
            Status(400),
        ),
        // ---- line endings (RFC 9112 2.2: a bare LF MAY be refused) ----
        case(
            "every head line ends in a bare LF, signed",
            bare_lf(valid(""), usize::MAX),
            Status(400),
        ),
        case(
            "one header line ends in a bare LF, the rest CRLF, signed",
            bare_lf(valid(""), 1),
            Status(400),
        ),
        case(
            "the head's last empty line is a bare LF, signed",
            {
                let r = valid("");
                let end = r.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
                [&r[..end + 2], b"\n", &r[end + 4..]].concat()
            },
            Status(400),
        ),
        // ---- protocol versions and methods ----
        case(
            "HTTP/1.0 signed",
            {
                let mut r = valid("");
                let i = r.windows(8).position(|w| w == b"HTTP/1.1").unwrap();
                r[i..i + 8].copy_from_slice(b"HTTP/1.0");
                r
            },
            Status(200),
        ),
        case(
            "HTTP/1.0 unsigned",
            format!("POST {p} HTTP/1.0\r\nContent-Type: application/json\r\nX-GitHub-Event: push\r\nContent-Length: 2\r\n\r\n{{}}"),
            Status(401),
        ),
        case("HTTP/0.9 line", format!("GET {p}\r\n"), Status(400)),
        case(
            "HTTP/2 preface on HTTP/1.1",
            &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..],
            Status(400),
        ),
        case("HTTP/1.2 version", String::from_utf8(valid("")).unwrap().replacen("HTTP/1.1", "HTTP/1.2", 1), Status(400)),
        case(
            "HTTP/2.0 version",
            format!("POST {p} HTTP/2.0\r\nHost: x\r\nContent-Length: 0\r\n\r\n"),
            Status(400),
        ),
        case(
            "unknown method",
            format!("FOO {p} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"),
            Status(405),
        ),
        case(
            "lowercase post, signed",
            {
                let mut r = valid("");
                r[..4].copy_from_slice(b"post");
                r
            },
            Status(405),
        ),
        case(
            "GET on the hook",
            format!("GET {p} HTTP/1.1\r\nHost: x\r\n\r\n"),
            Status(405),
        ),
        // ---- request line, Host, truncated body ----
        case(
            "request line of 70,000 bytes",
            format!(
                "POST {p}?{} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
                "a".repeat(70_000)
            ),
            Status(414),
        ),
        case(
            "request line of 2 MiB",
            format!(
                "POST {p}?{} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
                "a".repeat(2 << 20)
            ),
            Status(431),
        ),
        case(
            "missing Host, signed",
            {
                let r = valid("");
                let s = String::from_utf8(r).unwrap();
                s.replacen("Host: 127.0.0.1\r\n", "", 1)
            },
            Status(400),
        ),
        case(
            "two Host headers, signed",
            valid("Host: evil.example\r\n"),
            Status(400),
        ),
        case_eof(
            "Content-Length: 10, no body, then EOF",
            req(&format!("POST {p} HTTP/1.1"), &format!("Content-Type: application/json\r\nX-GitHub-Event: push\r\nX-Hub-Signature-256: sha256={}\r\nContent-Length: 10\r\n", "0".repeat(64)), b""),
            Status(400),
        ),
        case_eof(
            "signed, body cut short, then EOF",
            {
                let mut r = valid("");
                r.truncate(r.len() - 10);
                r
            },
            Status(400),
        ),
        // ---- pipelining ----
        case(
            "two valid deliveries in one write",
            [valid(""), valid("")].concat(),
            Statuses(&[200, 200]),
        ),
        case(
            "a valid delivery then garbage",
            [valid(""), b"\x00\x01garbage\r\n\r\n".to_vec()].concat(),
            Statuses(&[200, 400]),
        ),
        case(
            "a valid delivery then a smuggled unsigned one",
            [
                valid(""),
                format!("POST {p} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-GitHub-Event: push\r\nContent-Length: 2\r\n\r\n{{}}").into_bytes(),
            ]
            .concat(),
            Statuses(&[200, 401]),
        ),
        case(
            "CL+TE signed, then a second valid delivery",
            [
                signed_framed(
                    &format!("Content-Length: {n}\r\nTransfer-Encoding: chunked\r\n"),
                    &chunked(&b),
                ),
                valid(""),
            ]
            .concat(),
            ThenClosed(&[400]),
        ),
        case(
            "TE: chunked with a trailing space, signed",
            signed_framed("Transfer-Encoding: chunked \r\n", &chunked(&b)),
            Status(400),
        ),
        case(
            "TE: chunked with a trailing tab, signed",
            signed_framed("Transfer-Encoding: chunked\t\r\n", &chunked(&b)),
            Status(400),
        ),
        case(
            "TE: chunked, signed (the control)",
            signed_framed("Transfer-Encoding: chunked\r\n", &chunked(&b)),
            Status(200),
        ),
        case("TE: chunked, chunked", signed_framed("Transfer-Encoding: chunked, chunked\r\n", &chunked(&b)), Status(400)),
        case("TE: gzip, chunked", signed_framed("Transfer-Encoding: gzip, chunked\r\n", &chunked(&b)), Status(501)),
        case("TE: gzip, then TE: chunked", signed_framed("Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n", &chunked(&b)), Status(501)),
        case("TE: chunked, with a lower-case content-length", signed_framed(&format!("Transfer-Encoding: chunked\r\ncontent-length: {n}\r\n"), &chunked(&b)), Status(400)),
        case("TE: Chunked (any case), signed", signed_framed("Transfer-Encoding: Chunked\r\n", &chunked(&b)), Status(200)),
        case("TE: chunked twice", signed_framed("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", &chunked(&b)), Status(400)),
        case("two identical Content-Length", signed_framed(&format!("Content-Length: {n}\r\nContent-Length: {n}\r\n"), &b), Status(200)),
        case("chunk extension", signed_framed("Transfer-Encoding: chunked\r\n", &[format!("{:x};ext=1\r\n", n).into_bytes(), b.clone(), b"\r\n0\r\n\r\n".to_vec()].concat()), Status(200)),
        case("chunked with a trailer", signed_framed("Transfer-Encoding: chunked\r\n", &[format!("{:x}\r\n", n).into_bytes(), b.clone(), b"\r\n0\r\nX-Hub-Signature-256: sha256=00\r\n\r\n".to_vec()].concat()), Status(200)),
        case_eof("nothing, then EOF", &b""[..], Closed),
        case_eof("half a request line, then EOF", &b"POST /hook"[..], Closed),
        case("tab in a header value", valid("X-A: a\tb\r\n"), Status(200)),
    ]);
    v
}

fn config() -> Setup {
    let s = Setup::new()
        .server("head_timeout = \"3s\"\nbody_timeout = \"3s\"")
        .section(
            "[relay]\nmin_interval = \"1ms\"\n\n[limits]\nper_ip = \"off\"\nper_receiver = \"off\"\nblock_after_failures = 0\nmax_connections_per_ip = 0",
        );
    let r = format!(
        // Every valid case sends the same signed body: with deduplication on, all but the first
        // would be answered as replays.
        "name = \"{NAME}\"\nnamespace = \"flux-system\"\ntype = \"github\"\nsecret_file = \"{}\"\nreplay_window = \"0s\"\nresources = [{{ kind = \"GitRepository\", name = \"app\" }}]",
        s.secret(NAME, SECRET).display()
    );
    s.receiver(&r)
}

/// `Expect: 100-continue`: a declared body over the cap gets 413 at once, without `100
/// Continue` and without one byte of the body sent; a small signed one gets 100, then 200.
async fn expect_continue(gw: &Gateway) -> Vec<String> {
    let mut failures = Vec::new();
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nX-GitHub-Event: push\r\nX-GitHub-Delivery: {}\r\nX-Hub-Signature-256: sha256={}\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        path(),
        uid(),
        "0".repeat(64),
        25 * 1024 * 1024 + 1
    );
    let mut tls = raw_tls(gw.port, &gw.setup.cert_pem).await;
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.flush().await.unwrap();
    let seen = read_answers(&mut tls, 1).await;
    if seen != Seen::Answers(vec![413]) {
        failures.push(format!(
            "Expect: 100-continue over max_body_bytes: want 413 before any body, seen {seen:?}"
        ));
    }

    let b = body();
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: 127.0.0.1\r\n{}Expect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        path(),
        signed_lines(&b),
        b.len()
    );
    let mut tls = raw_tls(gw.port, &gw.setup.cert_pem).await;
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.flush().await.unwrap();
    let first = read_answers(&mut tls, 1).await;
    let _ = tls.write_all(&b).await;
    let _ = tls.flush().await;
    let second = read_answers(&mut tls, 1).await;
    if (&first, &second) != (&Seen::Answers(vec![100]), &Seen::Answers(vec![200])) {
        failures.push(format!(
            "Expect: 100-continue, small signed body: want 100 then 200, seen {first:?} then {second:?}"
        ));
    }
    failures
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_and_hostile_requests_get_a_precise_refusal_or_a_close() {
    let gw = config().start();
    let cases = cases();
    assert!(cases.len() >= 50, "only {} cases", cases.len());
    let mut failures = Vec::new();
    let mut relays = 0;
    for c in &cases {
        let seen = run(gw.port, &gw.setup.cert_pem, c).await;
        if !c.want.matches(&seen) {
            failures.push(format!("{}: want {:?}, seen {seen:?}", c.name, c.want));
        }
        relays += c.want.relays();
    }
    failures.extend(expect_continue(&gw).await);
    relays += 1;
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Still up, and a normal client's valid delivery still relays.
    let b = body();
    let (st, text) = gw
        .post(&path(), &refs(&signed(SECRET, &b, &uid())), b.clone())
        .await;
    assert_eq!(st, 200, "{text}");
    relays += 1;
    assert_eq!(
        gw.patches().len(),
        relays,
        "exactly one patch per valid delivery, none for anything malformed"
    );
    let logs = gw.logs();
    assert!(!logs.contains("panicked at"), "{logs}");
    // pingora's explanation of an unparsable target quotes it whole; it is not passed on.
    assert!(
        !logs.contains(&"a".repeat(1000)),
        "a request's oversized target or header reached the log"
    );
}
