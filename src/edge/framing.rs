//! The request bytes read a second time for what pingora's chunked body reader accepts
//! leniently: whitespace after a chunk size with no extension after it (`2 \r\n`; RFC 9112 7.1
//! allows whitespace only before a `;`) and chunk lines ending in a bare LF. A proxy in front
//! may take such a line for something else, and then disagree with fluxgate about where the
//! body ends.
//!
//! It follows the messages on one connection as the bytes arrive: each head line by line (only
//! `Transfer-Encoding` and `Content-Length` matter), then the body by its length or its chunks.
//! It keeps one bounded line at a time, so its memory does not grow with what a client sends.
//! What it cannot follow (a head pingora refuses anyway), it stops following.

/// Longest line kept: enough for any chunk size and the start of a header line.
const MAX_LINE: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// In a head; `lines` seen so far, and what they said about the body.
    Head {
        lines: usize,
        chunked: bool,
        length: u64,
    },
    /// Body bytes of a Content-Length body still to come.
    Fixed(u64),
    SizeLine,
    /// Chunk data still to come.
    Data(u64),
    /// The CRLF after a chunk's data; how much of it was seen.
    DataEnd(u8),
    Trailers,
    /// Not followed any further: the head was one pingora refuses, or a line was too long.
    Off,
}

const NEW_HEAD: State = State::Head {
    lines: 0,
    chunked: false,
    length: 0,
};

#[derive(Debug)]
pub struct Framing {
    state: State,
    line: Vec<u8>,
    /// The line did not fit in `MAX_LINE`.
    long: bool,
    /// The first chunk line refused, kept for the request being read.
    error: Option<&'static str>,
}

impl Default for Framing {
    fn default() -> Self {
        Framing {
            state: NEW_HEAD,
            line: Vec::new(),
            long: false,
            error: None,
        }
    }
}

impl Framing {
    /// Why a chunk line read so far is refused.
    pub fn error(&self) -> Option<&'static str> {
        self.error
    }

    /// Follows the bytes just read.
    pub fn read(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && self.state != State::Off && self.error.is_none() {
            bytes = match self.state {
                State::Fixed(n) | State::Data(n) => {
                    let take = usize::try_from(n).unwrap_or(usize::MAX).min(bytes.len());
                    let left = n - take as u64;
                    self.state = match (self.state, left) {
                        (State::Fixed(_), 0) => NEW_HEAD,
                        (State::Fixed(_), _) => State::Fixed(left),
                        (_, 0) => State::DataEnd(0),
                        _ => State::Data(left),
                    };
                    &bytes[take..]
                }
                State::DataEnd(seen) => {
                    let want = if seen == 0 { b'\r' } else { b'\n' };
                    if bytes[0] != want {
                        self.error = Some("chunk data not followed by CRLF");
                    } else if seen == 0 {
                        self.state = State::DataEnd(1);
                    } else {
                        self.state = State::SizeLine;
                    }
                    &bytes[1..]
                }
                State::Head { .. } | State::SizeLine | State::Trailers => {
                    let Some(end) = bytes.iter().position(|&b| b == b'\n') else {
                        self.keep(bytes);
                        return;
                    };
                    self.keep(&bytes[..end]);
                    self.line_done();
                    &bytes[end + 1..]
                }
                State::Off => return,
            }
        }
    }

    fn keep(&mut self, part: &[u8]) {
        let room = MAX_LINE - self.line.len();
        if part.len() > room {
            self.long = true;
        }
        self.line.extend_from_slice(&part[..part.len().min(room)]);
    }

    /// A whole line (without its LF) is in `line`; its buffer is kept for the next one.
    fn line_done(&mut self) {
        let long = std::mem::take(&mut self.long);
        let (text, crlf) = match self.line.strip_suffix(b"\r") {
            Some(t) => (t, true),
            None => (&self.line[..], false),
        };
        let next = match self.state {
            State::Head {
                lines,
                chunked,
                length,
            } => Ok(head_line(text, long, lines, chunked, length)),
            State::SizeLine if !crlf => Err("a chunk line ends in a bare LF"),
            State::SizeLine if long => Ok(State::Off),
            State::SizeLine => match chunk_size(text) {
                Ok(0) => Ok(State::Trailers),
                Ok(n) => Ok(State::Data(n)),
                Err(why) => Err(why),
            },
            State::Trailers if text.is_empty() => Ok(NEW_HEAD),
            other => Ok(other),
        };
        self.line.clear();
        match next {
            Ok(state) => self.state = state,
            Err(why) => self.error = Some(why),
        }
    }
}

/// The state after one line of a head.
fn head_line(text: &[u8], long: bool, lines: usize, chunked: bool, length: u64) -> State {
    // Empty lines before the request line are skipped, as pingora does.
    if text.is_empty() && lines == 0 {
        return NEW_HEAD;
    }
    if text.is_empty() {
        return match (chunked, length) {
            (true, _) => State::SizeLine,
            (false, 0) => NEW_HEAD,
            (false, n) => State::Fixed(n),
        };
    }
    let next = |chunked, length| State::Head {
        lines: lines + 1,
        chunked,
        length,
    };
    if lines == 0 {
        return next(chunked, length);
    }
    // A header line without a colon never parses in pingora.
    let Some(colon) = text.iter().position(|&b| b == b':') else {
        return State::Off;
    };
    let (name, value) = (&text[..colon], text[colon + 1..].trim_ascii());
    if name.eq_ignore_ascii_case(b"transfer-encoding") {
        if long {
            return State::Off;
        }
        // Like pingora: chunked when it is the last coding of the last field line.
        let last = value.rsplit(|&b| b == b',').next().unwrap_or_default();
        return next(last.trim_ascii().eq_ignore_ascii_case(b"chunked"), length);
    }
    if name.eq_ignore_ascii_case(b"content-length") {
        return match std::str::from_utf8(value).ok().and_then(|v| v.parse().ok()) {
            Some(n) if !long => next(chunked, n),
            _ => State::Off,
        };
    }
    next(chunked, length)
}

/// A chunk-size line: hex digits, then nothing, or `;` and extensions with optional
/// whitespace before it (RFC 9112 7.1).
fn chunk_size(text: &[u8]) -> Result<u64, &'static str> {
    let digits = text.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err("invalid chunk size");
    }
    let rest = &text[digits..];
    let after_space = rest.trim_ascii_start();
    if after_space.len() < rest.len() && !after_space.starts_with(b";") {
        return Err("whitespace after a chunk size (RFC 9112 7.1)");
    }
    if !(after_space.is_empty() || after_space.starts_with(b";")) {
        return Err("invalid chunk size");
    }
    let hex = std::str::from_utf8(&text[..digits]).map_err(|_| "invalid chunk size")?;
    u64::from_str_radix(hex, 16).map_err(|_| "chunk size too large")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(parts: &[&[u8]]) -> Option<&'static str> {
        let mut f = Framing::default();
        for p in parts {
            f.read(p);
        }
        f.error()
    }

    const HEAD: &[u8] = b"POST /h HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";

    #[test]
    fn strict_chunk_lines_pass_in_any_split() {
        let msg = [
            HEAD,
            b"2\r\nab\r\n3;x=y\r\nabc\r\n2 ;ext\r\nab\r\n0\r\nTrailer: t\r\n\r\n",
            b"POST /h HTTP/1.1\r\nContent-Length: 7\r\n\r\n2 \r\nab\r\n",
            HEAD,
            b"0\r\n\r\n",
        ]
        .concat();
        assert_eq!(error(&[&msg]), None);
        for at in 0..msg.len() {
            assert_eq!(error(&[&msg[..at], &msg[at..]]), None, "split at {at}");
        }
        let bytewise: Vec<&[u8]> = msg.chunks(1).collect();
        assert_eq!(error(&bytewise), None);
    }

    #[test]
    fn lenient_chunk_lines_are_found() {
        for (body, why) in [
            (&b"2 \r\nab\r\n0\r\n\r\n"[..], "whitespace"),
            (b"2\t\r\nab\r\n0\r\n\r\n", "whitespace"),
            (b"2\r\nab\r\n0 \r\n\r\n", "whitespace"),
            (b"2\nab\r\n0\r\n\r\n", "bare LF"),
            (b" 2\r\nab\r\n0\r\n\r\n", "invalid"),
            (b"2\r\nabX0\r\n\r\n", "CRLF"),
        ] {
            let got = error(&[HEAD, body]).unwrap_or_default();
            assert!(
                got.contains(why),
                "{:?}: {got:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn content_length_bodies_and_unfollowable_heads() {
        // A chunk-like body under Content-Length is data.
        assert_eq!(
            error(&[b"POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\n2 \r\n"]),
            None
        );
        // A head pingora refuses is not followed further.
        assert_eq!(
            error(&[
                b"POST / HTTP/1.1\r\nContent-Length: x\r\nTransfer-Encoding: chunked\r\n\r\n2 \r\n"
            ]),
            None
        );
        // Memory stays bounded by one line.
        let mut f = Framing::default();
        f.read(b"POST / HTTP/1.1\r\nX-Big: ");
        f.read(&vec![b'a'; 1 << 20]);
        assert!(f.line.len() <= MAX_LINE);
    }
}
