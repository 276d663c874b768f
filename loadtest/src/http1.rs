//! One HTTP/1.1 exchange on a connection: write the request (head, then body), read and parse
//! the response with `httparse`, and skip its body (Content-Length, chunked, or up to the
//! close). The server may answer before the whole body is written (a 413 or a 401 decided
//! on the headers): reading starts as soon as writing blocks, so the answer is still seen.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::Poll;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;
const READ_BUF: usize = 16 * 1024;

/// A response, read whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// The connection can carry another request: HTTP/1.1 without `Connection: close`, a
    /// framed body, the whole request written and nothing left over.
    pub reusable: bool,
    /// Bytes read for this response (head and body).
    pub received: u64,
}

/// Why an exchange failed.
#[derive(Debug)]
pub enum ExchangeError {
    Io(io::Error),
    Parse(String),
}

impl std::fmt::Display for ExchangeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExchangeError::Io(e) => write!(f, "i/o: {e}"),
            ExchangeError::Parse(e) => write!(f, "bad response: {e}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Head,
    Length(u64),
    Chunked(Chunk),
    UntilClose,
    Done,
}

/// The read side of a connection: a reused buffer and the parser of the current response.
#[derive(Debug)]
pub struct Reader {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    state: State,
    status: u16,
    keep_alive: bool,
    received: u64,
}

impl Default for Reader {
    fn default() -> Self {
        Self::new()
    }
}

fn find_crlf(data: &[u8]) -> Option<usize> {
    data.windows(2).position(|w| w == b"\r\n")
}

impl Reader {
    pub fn new() -> Self {
        Reader {
            buf: vec![0; READ_BUF],
            start: 0,
            end: 0,
            state: State::Head,
            status: 0,
            keep_alive: false,
            received: 0,
        }
    }

    fn reset(&mut self) {
        self.start = 0;
        self.end = 0;
        self.state = State::Head;
        self.status = 0;
        self.keep_alive = false;
        self.received = 0;
    }

    /// Room to read into: compacts, and grows the buffer only for a head that does not fit.
    fn spare(&mut self) -> Result<&mut [u8], ExchangeError> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        if self.end == self.buf.len() {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else if self.buf.len() < MAX_HEAD {
                self.buf.resize((self.buf.len() * 2).min(MAX_HEAD), 0);
            } else {
                return Err(ExchangeError::Parse(format!(
                    "response head larger than {MAX_HEAD} bytes"
                )));
            }
        }
        Ok(&mut self.buf[self.end..])
    }

    /// Parses what the buffer holds; `Ok(true)` once the response is complete.
    fn advance(&mut self) -> Result<bool, String> {
        loop {
            let data = &self.buf[self.start..self.end];
            match self.state {
                State::Done => return Ok(true),
                State::Head => {
                    let mut headers = [httparse::EMPTY_HEADER; 64];
                    let mut resp = httparse::Response::new(&mut headers);
                    let n = match resp.parse(data) {
                        Ok(httparse::Status::Complete(n)) => n,
                        Ok(httparse::Status::Partial) => return Ok(false),
                        Err(e) => return Err(format!("{e}")),
                    };
                    let status = resp.code.unwrap_or(0);
                    let mut keep_alive = resp.version == Some(1);
                    let mut length: Option<u64> = None;
                    let mut chunked = false;
                    for h in resp.headers.iter() {
                        if h.name.eq_ignore_ascii_case("content-length") {
                            let v = std::str::from_utf8(h.value)
                                .ok()
                                .and_then(|v| v.trim().parse::<u64>().ok())
                                .ok_or("bad Content-Length")?;
                            if length.is_some_and(|l| l != v) {
                                return Err("conflicting Content-Length".into());
                            }
                            length = Some(v);
                        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                            chunked = h.value.rsplit(|b| *b == b',').next().is_some_and(|last| {
                                last.trim_ascii().eq_ignore_ascii_case(b"chunked")
                            });
                        } else if h.name.eq_ignore_ascii_case("connection") {
                            for token in h.value.split(|b| *b == b',') {
                                let token = token.trim_ascii();
                                if token.eq_ignore_ascii_case(b"close") {
                                    keep_alive = false;
                                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                                    keep_alive = true;
                                }
                            }
                        }
                    }
                    self.start += n;
                    if (100..200).contains(&status) && status != 101 {
                        continue; // 100 Continue and friends: the real answer follows
                    }
                    self.status = status;
                    self.keep_alive = keep_alive;
                    self.state = if status == 204 || status == 304 || status == 101 {
                        State::Done
                    } else if chunked {
                        State::Chunked(Chunk::Size)
                    } else if let Some(l) = length {
                        if l == 0 {
                            State::Done
                        } else {
                            State::Length(l)
                        }
                    } else {
                        self.keep_alive = false;
                        State::UntilClose
                    };
                }
                State::Length(rest) => {
                    let take = rest.min(data.len() as u64);
                    self.start += take as usize;
                    self.state = if take == rest {
                        State::Done
                    } else {
                        State::Length(rest - take)
                    };
                    if take < rest {
                        return Ok(false);
                    }
                }
                State::UntilClose => {
                    self.start = self.end;
                    return Ok(false);
                }
                State::Chunked(Chunk::Size) | State::Chunked(Chunk::Trailer) => {
                    let Some(i) = find_crlf(data) else {
                        if data.len() > 4096 {
                            return Err("chunk line too long".into());
                        }
                        return Ok(false);
                    };
                    let line = &data[..i];
                    self.start += i + 2;
                    if self.state == State::Chunked(Chunk::Trailer) {
                        if line.is_empty() {
                            self.state = State::Done;
                        }
                        continue;
                    }
                    let hex = line
                        .split(|b| *b == b';')
                        .next()
                        .unwrap_or(b"")
                        .trim_ascii();
                    let size = std::str::from_utf8(hex)
                        .ok()
                        .and_then(|h| u64::from_str_radix(h, 16).ok())
                        .ok_or("bad chunk size")?;
                    self.state = State::Chunked(if size == 0 {
                        Chunk::Trailer
                    } else {
                        Chunk::Data(size)
                    });
                }
                State::Chunked(Chunk::Data(rest)) => {
                    let take = rest.min(data.len() as u64);
                    self.start += take as usize;
                    if take < rest {
                        self.state = State::Chunked(Chunk::Data(rest - take));
                        return Ok(false);
                    }
                    self.state = State::Chunked(Chunk::DataEnd);
                }
                State::Chunked(Chunk::DataEnd) => {
                    if data.len() < 2 {
                        return Ok(false);
                    }
                    if &data[..2] != b"\r\n" {
                        return Err("chunk not followed by CRLF".into());
                    }
                    self.start += 2;
                    self.state = State::Chunked(Chunk::Size);
                }
            }
        }
    }

    fn finish(&mut self, write_complete: bool) -> Response {
        Response {
            status: self.status,
            reusable: self.keep_alive && write_complete && self.start == self.end,
            received: self.received,
        }
    }
}

/// Sends `head` then `body` on `s` and reads the answer into `reader`.
pub async fn exchange<S>(
    s: &mut S,
    reader: &mut Reader,
    head: &[u8],
    body: &[u8],
) -> Result<Response, ExchangeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    reader.reset();
    let parts = [head, body];
    let (mut part, mut off) = (0usize, 0usize);
    let mut written = false;
    let mut write_err: Option<io::Error> = None;
    let mut reading = false;
    poll_fn(|cx| {
        // Write until done, failed, or blocked.
        while !written && write_err.is_none() {
            if part == parts.len() {
                match Pin::new(&mut *s).poll_flush(cx) {
                    Poll::Ready(Ok(())) => written = true,
                    Poll::Ready(Err(e)) => write_err = Some(e),
                    Poll::Pending => reading = true,
                }
                break;
            }
            let rest = &parts[part][off..];
            if rest.is_empty() {
                part += 1;
                off = 0;
                continue;
            }
            match Pin::new(&mut *s).poll_write(cx, rest) {
                Poll::Ready(Ok(0)) => write_err = Some(io::ErrorKind::WriteZero.into()),
                Poll::Ready(Ok(n)) => off += n,
                Poll::Ready(Err(e)) => write_err = Some(e),
                Poll::Pending => {
                    // The server may be answering already instead of reading.
                    reading = true;
                    break;
                }
            }
        }
        if !(reading || written || write_err.is_some()) {
            return Poll::Pending;
        }
        // Read until the response is complete, the connection ends, or nothing is there.
        loop {
            let spare = match reader.spare() {
                Ok(b) => b,
                Err(e) => return Poll::Ready(Err(e)),
            };
            let mut rb = ReadBuf::new(spare);
            match Pin::new(&mut *s).poll_read(cx, &mut rb) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => {
                    return Poll::Ready(Err(ExchangeError::Io(write_err.take().unwrap_or(e))))
                }
                Poll::Ready(Ok(())) => {
                    let n = rb.filled().len();
                    if n == 0 {
                        if reader.state == State::UntilClose {
                            reader.state = State::Done;
                            return Poll::Ready(Ok(reader.finish(false)));
                        }
                        let e = write_err.take().unwrap_or_else(|| {
                            io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "connection closed before a whole response",
                            )
                        });
                        return Poll::Ready(Err(ExchangeError::Io(e)));
                    }
                    reader.end += n;
                    reader.received += n as u64;
                    match reader.advance() {
                        Ok(true) => return Poll::Ready(Ok(reader.finish(written))),
                        Ok(false) => {}
                        Err(e) => return Poll::Ready(Err(ExchangeError::Parse(e))),
                    }
                }
            }
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn answer(raw: &'static [&'static [u8]], close: bool) -> Result<Response, ExchangeError> {
        let (mut client, mut server) = tokio::io::duplex(64);
        let srv = tokio::spawn(async move {
            let mut req = vec![0u8; 7];
            server.read_exact(&mut req).await.unwrap();
            assert_eq!(&req, b"HEADxyz");
            for piece in raw {
                server.write_all(piece).await.unwrap();
                tokio::task::yield_now().await;
            }
            if close {
                drop(server);
            } else {
                // Keep the connection open until the client is done.
                let mut rest = Vec::new();
                let _ = server.read_to_end(&mut rest).await;
            }
        });
        let mut reader = Reader::new();
        let r = exchange(&mut client, &mut reader, b"HEAD", b"xyz").await;
        drop(client);
        srv.await.unwrap();
        r
    }

    #[tokio::test]
    async fn content_length() {
        let r = answer(
            &[
                b"HTTP/1.1 202 Accepted\r\nContent-Length: 5\r\n\r\nhel",
                b"lo",
            ],
            false,
        )
        .await
        .unwrap();
        assert_eq!((r.status, r.reusable), (202, true));
        assert_eq!(r.received, 49);
    }

    #[tokio::test]
    async fn chunked_with_trailer_and_100_continue() {
        let r = answer(
            &[
                b"HTTP/1.1 100 Continue\r\n\r\n",
                b"HTTP/1.1 401 Unauthorized\r\nTransfer-Encoding: chunked\r\n\r\n",
                b"3;x=y\r\nabc\r\n",
                b"10\r\n0123456789abcdef\r\n0\r\nX-T: 1\r\n\r\n",
            ],
            false,
        )
        .await
        .unwrap();
        assert_eq!((r.status, r.reusable), (401, true));
    }

    #[tokio::test]
    async fn close_delimited_and_connection_close() {
        let r = answer(&[b"HTTP/1.1 404 Not Found\r\n\r\nno such hook"], true)
            .await
            .unwrap();
        assert_eq!((r.status, r.reusable), (404, false));
        let r = answer(
            &[b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"],
            false,
        )
        .await
        .unwrap();
        assert_eq!((r.status, r.reusable), (200, false));
        let r = answer(&[b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"], false)
            .await
            .unwrap();
        assert!(!r.reusable);
        let r = answer(
            &[b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n"],
            false,
        )
        .await
        .unwrap();
        assert!(r.reusable);
    }

    #[tokio::test]
    async fn errors() {
        let e = answer(&[b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab"], true)
            .await
            .unwrap_err();
        assert!(matches!(e, ExchangeError::Io(_)), "{e}");
        let e = answer(&[b"garbage\r\n\r\n"], true).await.unwrap_err();
        assert!(matches!(e, ExchangeError::Parse(_)), "{e}");
        let e = answer(&[b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"], true)
            .await
            .unwrap_err();
        assert!(matches!(e, ExchangeError::Parse(_)), "{e}");
        let e = answer(&[], true).await.unwrap_err();
        assert!(matches!(e, ExchangeError::Io(_)), "{e}");
    }

    #[tokio::test]
    async fn an_early_answer_is_read_while_the_body_is_still_being_written() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        let srv = tokio::spawn(async move {
            let mut head = [0u8; 4];
            server.read_exact(&mut head).await.unwrap();
            server
                .write_all(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n")
                .await
                .unwrap();
            // Never reads the rest; keeps the connection open.
            tokio::time::sleep(std::time::Duration::from_secs(30)).await;
        });
        let body = vec![b'x'; 1 << 20];
        let mut reader = Reader::new();
        let r = exchange(&mut client, &mut reader, b"HEAD", &body)
            .await
            .unwrap();
        assert_eq!((r.status, r.reusable), (413, false));
        srv.abort();
    }
}
