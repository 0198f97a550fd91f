//! A second reading of HTTP/1 request framing, for the one ambiguity hyper accepts quietly.
//!
//! A request carrying both `Content-Length` and `Transfer-Encoding` is the classic request
//! smuggling set-up: a front end and a back end that each believe a different header see a
//! different number of requests. hyper reads such a request by its chunked framing and
//! closes the connection afterwards (RFC 9112 §6.3 allows that), but it removes
//! `Content-Length` from the header map, so the request handler cannot tell the request was
//! ambiguous. The proxy refuses it instead: this wrapper watches the bytes hyper reads,
//! follows request boundaries the way hyper does, and notes which request of the connection
//! had both headers, so the handler can answer it 400 without forwarding anything.
//!
//! Where the stream stops being plain HTTP/1 requests (the HTTP/2 preface, an upgrade or
//! CONNECT, a malformed chunk that hyper will refuse anyway), the watch stops: it can then
//! miss a conflict, but never report one that is not there.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Request extension set on a request whose head had both `Content-Length` and
/// `Transfer-Encoding`.
#[derive(Debug, Clone, Copy)]
pub struct FramingConflict;

/// What the watcher found, shared with the connection's request handler.
#[derive(Debug, Default)]
pub struct FramingFlags {
    /// 1-based number of the first request head with both headers; 0 for none. hyper closes
    /// the connection after that request, so one is all there can be.
    conflicting: AtomicU64,
    /// Requests handed to the handler so far.
    served: AtomicU64,
}

impl FramingFlags {
    /// Counts one more request handed to the handler and says whether it is the conflicting
    /// one. HTTP/1 requests reach the handler one at a time and in order, so the count
    /// matches the watcher's count of heads.
    pub fn next_request_conflicts(&self) -> bool {
        let number = self.served.fetch_add(1, Ordering::Relaxed) + 1;
        self.conflicting.load(Ordering::Acquire) == number
    }

    fn record(&self, head_number: u64) {
        let _ =
            self.conflicting
                .compare_exchange(0, head_number, Ordering::Release, Ordering::Relaxed);
    }
}

/// A connection whose incoming bytes are watched for conflicting framing headers.
pub struct FramingWatch<S> {
    inner: S,
    scanner: Scanner,
    flags: Arc<FramingFlags>,
}

impl<S> FramingWatch<S> {
    /// Wraps `inner`; findings go to `flags`.
    pub fn new(inner: S, flags: Arc<FramingFlags>) -> Self {
        FramingWatch {
            inner,
            scanner: Scanner::default(),
            flags,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FramingWatch<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(poll, Poll::Ready(Ok(()))) {
            let this = &mut *self;
            this.scanner.feed(&buf.filled()[before..], &this.flags);
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FramingWatch<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Bytes of a line kept for inspection: enough for every header name and value the scanner
/// reads (a longer `Content-Length` value is not a number hyper accepts).
const LINE_KEEP: usize = 96;

/// Where in the request stream the next byte falls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading a request head, line by line.
    Head,
    /// That many body bytes left of a `Content-Length` body.
    Body(u64),
    /// Reading a chunk-size line.
    ChunkSize,
    /// That many bytes of chunk data left.
    ChunkData(u64),
    /// Reading the line break after chunk data.
    ChunkEnd,
    /// Reading trailer lines, up to an empty one.
    Trailers,
    /// No longer HTTP/1 requests (or no longer readable like hyper reads them): not watched.
    Done,
}

/// What the current request head has said so far.
#[derive(Debug, Default)]
struct Head {
    request_line_seen: bool,
    content_length: Option<u64>,
    has_content_length: bool,
    has_transfer_encoding: bool,
    /// An upgrade request or CONNECT: what follows may not be HTTP/1 at all.
    leaves_http: bool,
}

#[derive(Debug)]
struct Scanner {
    state: State,
    head: Head,
    heads_seen: u64,
    /// The start of the current, unfinished line (at most `LINE_KEEP` bytes of it).
    line: Vec<u8>,
}

impl Default for Scanner {
    fn default() -> Self {
        Scanner {
            state: State::Head,
            head: Head::default(),
            heads_seen: 0,
            line: Vec::new(),
        }
    }
}

impl Scanner {
    fn feed(&mut self, mut bytes: &[u8], flags: &FramingFlags) {
        while !bytes.is_empty() {
            match self.state {
                State::Done => return,
                State::Body(left) => {
                    let left = skip(&mut bytes, left);
                    self.state = if left == 0 {
                        State::Head
                    } else {
                        State::Body(left)
                    };
                }
                State::ChunkData(left) => {
                    let left = skip(&mut bytes, left);
                    self.state = if left == 0 {
                        State::ChunkEnd
                    } else {
                        State::ChunkData(left)
                    };
                }
                State::Head | State::ChunkSize | State::ChunkEnd | State::Trailers => {
                    let Some(end) = memchr::memchr(b'\n', bytes) else {
                        self.keep(bytes);
                        return;
                    };
                    let line = &bytes[..end];
                    bytes = &bytes[end + 1..];
                    if self.line.is_empty() {
                        // The whole line is in this read: no copy.
                        self.on_line(visible(line), flags);
                    } else {
                        self.keep(line);
                        let carried = std::mem::take(&mut self.line);
                        self.on_line(visible(&carried), flags);
                        self.line = carried;
                        self.line.clear();
                    }
                }
            }
        }
    }

    fn keep(&mut self, part: &[u8]) {
        let room = LINE_KEEP.saturating_sub(self.line.len());
        self.line.extend_from_slice(&part[..part.len().min(room)]);
    }

    fn on_line(&mut self, line: &[u8], flags: &FramingFlags) {
        self.state = match self.state {
            State::Head => self.on_head_line(line, flags),
            State::ChunkSize => match chunk_size(line) {
                Some(0) => State::Trailers,
                Some(size) => State::ChunkData(size),
                None => State::Done,
            },
            State::ChunkEnd if line.is_empty() => State::ChunkSize,
            State::Trailers if line.is_empty() => State::Head,
            State::Trailers => State::Trailers,
            _ => State::Done,
        };
    }

    fn on_head_line(&mut self, line: &[u8], flags: &FramingFlags) -> State {
        let head = &mut self.head;
        if !head.request_line_seen {
            // Empty lines before a request line are skipped, as hyper's parser does.
            if line.is_empty() {
                return State::Head;
            }
            if line.starts_with(b"PRI * HTTP/2.0") {
                return State::Done;
            }
            head.request_line_seen = true;
            head.leaves_http = line.starts_with(b"CONNECT ");
            return State::Head;
        }
        if !line.is_empty() {
            head.read_header(line);
            return State::Head;
        }
        let head = std::mem::take(&mut self.head);
        self.heads_seen += 1;
        if head.has_content_length && head.has_transfer_encoding {
            flags.record(self.heads_seen);
        }
        if head.leaves_http {
            State::Done
        } else if head.has_transfer_encoding {
            State::ChunkSize
        } else {
            match (head.has_content_length, head.content_length) {
                (false, _) | (true, Some(0)) => State::Head,
                (true, Some(length)) => State::Body(length),
                // A length hyper cannot read either: it refuses the request.
                (true, None) => State::Done,
            }
        }
    }
}

impl Head {
    fn read_header(&mut self, line: &[u8]) {
        // hyper refuses whitespace before the colon, so each name of interest ends exactly
        // where the colon is; its first letter and that position rule out most lines cheaply.
        let named = |name: &[u8]| {
            line.get(name.len()) == Some(&b':') && line[..name.len()].eq_ignore_ascii_case(name)
        };
        match line.first().map(u8::to_ascii_lowercase) {
            Some(b'c') if named(b"content-length") => {
                self.has_content_length = true;
                self.content_length = parse_decimal(line[15..].trim_ascii());
            }
            Some(b't') if named(b"transfer-encoding") => self.has_transfer_encoding = true,
            Some(b'u') if named(b"upgrade") => self.leaves_http = true,
            _ => {}
        }
    }
}

/// The part of a line the scanner reads: at most `LINE_KEEP` bytes, without the CR of CRLF
/// (the same whether the line came in one read or several).
fn visible(line: &[u8]) -> &[u8] {
    let kept = &line[..line.len().min(LINE_KEEP)];
    kept.strip_suffix(b"\r").unwrap_or(kept)
}

/// Consumes up to `left` bytes of body; returns how many are still to come.
fn skip(bytes: &mut &[u8], left: u64) -> u64 {
    let taken = usize::try_from(left).map_or(bytes.len(), |l| l.min(bytes.len()));
    *bytes = &bytes[taken..];
    left - taken as u64
}

fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        if !d.is_ascii_digit() {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// The size on a chunk-size line (hex digits, then optional extensions).
fn chunk_size(line: &[u8]) -> Option<u64> {
    let digits = line
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    if digits == 0 || digits > 16 {
        return None;
    }
    let rest = &line[digits..];
    if !(rest.is_empty() || rest[0] == b';' || rest[0] == b' ' || rest[0] == b'\t') {
        return None;
    }
    let text = std::str::from_utf8(&line[..digits]).ok()?;
    u64::from_str_radix(text, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `stream` in pieces of `step` bytes; returns the conflicting head's number.
    fn scan(stream: &str, step: usize) -> (u64, u64, State) {
        let flags = FramingFlags::default();
        let mut scanner = Scanner::default();
        for piece in stream.as_bytes().chunks(step) {
            scanner.feed(piece, &flags);
        }
        (
            flags.conflicting.load(Ordering::Relaxed),
            scanner.heads_seen,
            scanner.state,
        )
    }

    fn scan_all_splits(stream: &str) -> (u64, u64, State) {
        let whole = scan(stream, stream.len().max(1));
        for step in 1..8 {
            assert_eq!(scan(stream, step), whole, "split every {step} bytes");
        }
        whole
    }

    #[test]
    fn plain_requests_and_bodies_are_followed() {
        let stream = "GET /a HTTP/1.1\r\nHost: x\r\n\r\n\
                      POST /b HTTP/1.1\r\nHost: x\r\ncontent-LENGTH: 26\r\n\r\n\
                      Transfer-Encoding: chunked\
                      POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
                      5;ext=1\r\nhello\r\n10\r\nContent-Length:1\r\n0\r\nX-Trailer: 1\r\n\r\n\
                      GET /d HTTP/1.1\nHost: x\n\n";
        assert_eq!(scan_all_splits(stream), (0, 4, State::Head));
    }

    #[test]
    fn both_headers_mark_that_request_in_either_order() {
        let cl_te = "GET / HTTP/1.1\r\n\r\n\
                     POST / HTTP/1.1\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n\
                     0\r\n\r\n";
        assert_eq!(scan_all_splits(cl_te), (2, 2, State::Head));
        let te_cl = "POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n";
        assert_eq!(scan_all_splits(te_cl).0, 1);
    }

    #[test]
    fn the_watch_stops_where_the_stream_may_stop_being_http1() {
        let h2 = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        assert_eq!(scan_all_splits(h2).2, State::Done);
        let upgrade = "GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n\
                       POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(scan_all_splits(upgrade), (0, 1, State::Done));
        let bad_chunk = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n";
        assert_eq!(scan_all_splits(bad_chunk).2, State::Done);
    }

    #[test]
    fn the_handler_count_matches_the_head_count() {
        let flags = FramingFlags::default();
        flags.record(3);
        flags.record(5);
        let hits: Vec<bool> = (0..5).map(|_| flags.next_request_conflicts()).collect();
        assert_eq!(hits, [false, false, true, false, false]);
    }

    proptest::proptest! {
        /// Whatever a client sends, however the reads split it: no panic, and the same finding.
        #[test]
        fn any_bytes_any_split(
            pieces in proptest::collection::vec(
                proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64), 0..16),
            framed in proptest::collection::vec(0usize..6, 0..8),
        ) {
            // Mix raw bytes with well-formed heads so the scanner gets past the first line.
            const PARTS: [&[u8]; 6] = [
                b"GET / HTTP/1.1\r\n\r\n",
                b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\n",
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                b"Content-Length: 5\r\n",
                b"Transfer-Encoding: chunked\r\n",
                b"3\r\nabc\r\n0\r\n\r\n",
            ];
            let mut stream = Vec::new();
            for (n, piece) in pieces.iter().enumerate() {
                if let Some(&part) = framed.get(n) {
                    stream.extend_from_slice(PARTS[part]);
                }
                stream.extend_from_slice(piece);
            }
            let whole = {
                let flags = FramingFlags::default();
                let mut scanner = Scanner::default();
                scanner.feed(&stream, &flags);
                (flags.conflicting.load(Ordering::Relaxed), scanner.heads_seen, scanner.state)
            };
            for step in [1, 2, 7] {
                let flags = FramingFlags::default();
                let mut scanner = Scanner::default();
                for piece in stream.chunks(step) {
                    scanner.feed(piece, &flags);
                }
                let split = (flags.conflicting.load(Ordering::Relaxed), scanner.heads_seen, scanner.state);
                proptest::prop_assert_eq!(split, whole);
            }
        }
    }

    #[test]
    fn chunk_sizes_parse_like_hyper() {
        assert_eq!(chunk_size(b"1a"), Some(26));
        assert_eq!(chunk_size(b"5;name=value"), Some(5));
        assert_eq!(chunk_size(b"0"), Some(0));
        for bad in [
            &b""[..],
            b"zz",
            b"-5",
            b"0x5",
            b"+5",
            b" 5",
            b"fffffffffffffffff",
        ] {
            assert_eq!(chunk_size(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
