//! A second reading of HTTP/1 request framing, for what hyper accepts quietly or hides.
//!
//! hyper reads a request carrying both `Content-Length` and `Transfer-Encoding` by its
//! chunked framing and removes `Content-Length` from the header map; it drops a `#fragment`
//! from the request target; it accepts `Content-Length: 5, 5` and a length padded with any
//! number of zeros. The request handler cannot see any of that, and each is a way for a front
//! end and a back end to read different requests out of the same bytes. This wrapper watches
//! the bytes hyper reads, follows request boundaries the way hyper does, and notes the first
//! request of the connection whose head showed one of these, so the handler can refuse it
//! (and close the connection) without forwarding anything.
//!
//! The watch follows every request hyper can read: upgrade requests and `CONNECT` too, since
//! hyper goes on reading requests after them unless the answer switched protocols. It stops
//! only where hyper stops reading HTTP/1 requests: at the HTTP/2 preface, once a response
//! switched protocols (the handler says so), after a request it flagged (the handler closes
//! the connection after refusing it), and at a body hyper will refuse (hyper closes then).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

mod scan;

pub use scan::{trace, TracedHead};
use scan::{Scanner, State};

/// What the watch found in a request head: request extension set on that request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FramingFinding {
    /// Both `Content-Length` and `Transfer-Encoding`.
    ConflictingFraming,
    /// A `Content-Length` that is not one plain number of at most 19 digits.
    UnreadableLength,
    /// A `Transfer-Encoding` other than one `chunked` (hyper refuses some of these itself,
    /// and reads others as plain chunked).
    UnsupportedCoding,
    /// A `#` in the request target (hyper drops the fragment before the handler sees it).
    Fragment,
    /// The previous request's chunked trailers had a line ending in a bare LF: hyper and the
    /// watch end them in different places, so this request may not be where hyper reads it.
    BareLineFeed,
}

impl FramingFinding {
    fn code(self) -> u8 {
        match self {
            FramingFinding::ConflictingFraming => 1,
            FramingFinding::UnreadableLength => 2,
            FramingFinding::Fragment => 3,
            FramingFinding::BareLineFeed => 4,
            FramingFinding::UnsupportedCoding => 5,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(FramingFinding::ConflictingFraming),
            2 => Some(FramingFinding::UnreadableLength),
            3 => Some(FramingFinding::Fragment),
            4 => Some(FramingFinding::BareLineFeed),
            5 => Some(FramingFinding::UnsupportedCoding),
            _ => None,
        }
    }
}

/// What the watcher found, shared with the connection's request handler.
#[derive(Debug, Default)]
pub(super) struct FramingFlags {
    /// 1-based number of the first request head with a finding; 0 for none. The handler
    /// closes the connection after refusing that request, so one is all there can be.
    flagged: AtomicU64,
    /// The finding's code (`FramingFinding::code`).
    finding: AtomicU8,
    /// Requests handed to the handler so far.
    served: AtomicU64,
    /// A response switched protocols: what follows is not HTTP/1 requests.
    switched: AtomicBool,
}

impl FramingFlags {
    /// Counts one more request handed to the handler and returns what the watch found in its
    /// head. HTTP/1 requests reach the handler one at a time and in order, so the count
    /// matches the watcher's count of heads.
    pub(super) fn next_request_finding(&self) -> Option<FramingFinding> {
        let number = self.served.fetch_add(1, Ordering::Relaxed) + 1;
        if self.flagged.load(Ordering::Acquire) != number {
            return None;
        }
        FramingFinding::from_code(self.finding.load(Ordering::Relaxed))
    }

    /// The handler answered with a protocol switch (101, or 2xx to `CONNECT`): hyper hands
    /// the connection over and reads no more requests from it.
    pub(super) fn switched_protocols(&self) {
        self.switched.store(true, Ordering::Release);
    }

    fn record(&self, head_number: u64, finding: FramingFinding) {
        // The code is written first: a handler that sees the number sees the code with it.
        if self.flagged.load(Ordering::Relaxed) == 0 {
            self.finding.store(finding.code(), Ordering::Relaxed);
            self.flagged.store(head_number, Ordering::Release);
        }
    }
}

/// A connection whose incoming bytes are watched for conflicting framing headers.
///
/// Each HTTP/1 request head (after its first byte) is held back until it is complete, so that one the handler will
/// refuse reaches hyper without its `Content-Length` and `Transfer-Encoding` lines: hyper
/// refuses some of those shapes itself (a bare 400, before any handler, so with no request id
/// and no access event), and must not read a body framed by them either. Everything else
/// passes through unchanged.
pub(super) struct FramingWatch<S> {
    inner: S,
    scanner: Scanner,
    flags: Arc<FramingFlags>,
    /// The current request head so far, not yet given to hyper.
    held: Vec<u8>,
    /// Bytes for hyper that did not fit in its last read (`ready[ready_from..]`).
    ready: Vec<u8>,
    ready_from: usize,
    /// The most head bytes held: hyper's own head limit. A longer head goes through as it
    /// comes, for hyper to refuse as too large.
    hold_limit: usize,
    /// The current head outgrew `hold_limit`.
    overflowed: bool,
    /// The current head's first byte went to hyper already.
    head_begun: bool,
}

impl<S> FramingWatch<S> {
    /// Wraps `inner`; findings go to `flags`. `hold_limit` is hyper's read buffer limit.
    pub(super) fn new(inner: S, flags: Arc<FramingFlags>, hold_limit: usize) -> Self {
        FramingWatch {
            inner,
            scanner: Scanner::default(),
            flags,
            held: Vec::new(),
            ready: Vec::new(),
            ready_from: 0,
            hold_limit,
            overflowed: false,
            head_begun: false,
        }
    }

    /// Sorts bytes just read: returns how many of them (a prefix) hyper may read where they
    /// are; the rest are held (an unfinished head) or queued in `ready`.
    fn sort(&mut self, new: &[u8]) -> usize {
        let mut in_place = 0;
        let mut offset = 0;
        while offset < new.len() {
            if self.flags.switched.load(Ordering::Acquire) {
                self.scanner.state = State::Done;
            }
            let holding = self.scanner.state == State::Head && !self.overflowed;
            let heads_seen = self.scanner.heads_seen;
            let taken = self.scanner.feed_part(&new[offset..], &self.flags);
            let part = &new[offset..offset + taken];
            let contiguous = in_place == offset && self.held.is_empty() && self.ready.is_empty();
            offset += taken;
            let head_over =
                self.scanner.state != State::Head || self.scanner.heads_seen != heads_seen;
            if holding {
                let mut part = part;
                if !self.head_begun {
                    // hyper times a head (`header_read_timeout`) from its first byte, so that
                    // byte goes at once; `without_framing` never changes it.
                    self.head_begun = true;
                    if contiguous {
                        in_place = offset - taken + 1;
                    } else {
                        self.ready.push(part[0]);
                    }
                    part = &part[1..];
                }
                self.held.extend_from_slice(part);
                if head_over {
                    let head = std::mem::take(&mut self.held);
                    let flagged = self.flags.flagged.load(Ordering::Acquire);
                    if flagged != 0 && flagged == self.scanner.heads_seen {
                        // Refused by the handler, which closes the connection after it: hyper
                        // reads it without a body.
                        self.ready.extend(without_framing(&head));
                    } else {
                        self.ready.extend_from_slice(&head);
                    }
                } else if self.held.len() > self.hold_limit {
                    self.overflowed = true;
                    self.ready.append(&mut self.held);
                }
            } else if contiguous {
                in_place = offset;
            } else {
                self.ready.extend_from_slice(part);
            }
            if head_over {
                self.overflowed = false;
                self.head_begun = false;
            }
        }
        in_place
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FramingWatch<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.ready_from < this.ready.len() {
                let queued = &this.ready[this.ready_from..];
                let n = queued.len().min(buf.remaining());
                buf.put_slice(&queued[..n]);
                this.ready_from += n;
                if this.ready_from == this.ready.len() {
                    this.ready.clear();
                    this.ready_from = 0;
                }
                return Poll::Ready(Ok(()));
            }
            let before = buf.filled().len();
            std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
            let read = buf.filled().len() - before;
            if read == 0 {
                // End of input: an unfinished head goes to hyper as it is, for hyper to end
                // the connection its own way.
                if this.held.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                this.ready.append(&mut this.held);
                continue;
            }
            let in_place = this.sort(&buf.filled()[before..]);
            buf.set_filled(before + in_place);
            if in_place > 0 {
                return Poll::Ready(Ok(()));
            }
            // Everything read was held or queued: serve the queue, or read on.
        }
    }
}

/// A request head without its `Content-Length` and `Transfer-Encoding` lines (the request
/// line, and the empty lines hyper skips before it, are kept as they are).
fn without_framing(head: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(head.len());
    let mut request_line_seen = false;
    for line in head.split_inclusive(|&b| b == b'\n') {
        let content = line.strip_suffix(b"\n").unwrap_or(line);
        let content = content.strip_suffix(b"\r").unwrap_or(content);
        if !request_line_seen {
            request_line_seen = !content.is_empty();
            out.extend_from_slice(line);
            continue;
        }
        let name = content.split(|&b| b == b':').next().unwrap_or_default();
        let framing = name.eq_ignore_ascii_case(b"content-length")
            || name.eq_ignore_ascii_case(b"transfer-encoding");
        if !framing {
            out.extend_from_slice(line);
        }
    }
    out
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
