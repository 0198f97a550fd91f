//! The scanner behind the watch: follows request boundaries byte by byte the way hyper does
//! (heads, `Content-Length` and chunked bodies, trailers) and notes what it finds in each head.

use std::sync::atomic::Ordering;

use super::{FramingFinding, FramingFlags};

/// Bytes of a line kept for inspection: enough for every header name and value the scanner
/// reads. A longer `Content-Length` line is no plain length of at most 19 digits: a finding.
const LINE_KEEP: usize = 96;

/// The most digits a `Content-Length` may have (u64 has 20, and no body is that long).
const MAX_LENGTH_DIGITS: usize = 19;

/// Where in the request stream the next byte falls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
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
    /// hyper reads no more HTTP/1 requests from this connection: not watched.
    Done,
}

/// What the current request head has said so far.
#[derive(Debug, Default)]
struct Head {
    request_line_seen: bool,
    /// The request line so far has had a space (the target starts after the first).
    request_line_space: bool,
    fragment: bool,
    content_length: Option<u64>,
    has_content_length: bool,
    /// A `Content-Length` line that is not one plain number the scanner could read whole.
    unreadable_length: bool,
    has_transfer_encoding: bool,
    /// A `Transfer-Encoding` that is not exactly one `chunked`.
    other_coding: bool,
}

impl Head {
    fn finding(&self) -> Option<FramingFinding> {
        if self.has_content_length && self.has_transfer_encoding {
            Some(FramingFinding::ConflictingFraming)
        } else if self.unreadable_length {
            Some(FramingFinding::UnreadableLength)
        } else if self.other_coding {
            Some(FramingFinding::UnsupportedCoding)
        } else if self.fragment {
            Some(FramingFinding::Fragment)
        } else {
            None
        }
    }

    /// Part of the request line (any split): notes a `#` after the first space.
    fn request_line_piece(&mut self, piece: &[u8]) {
        if self.fragment {
            return;
        }
        let target = if self.request_line_space {
            piece
        } else {
            let Some(space) = memchr::memchr(b' ', piece) else {
                return;
            };
            self.request_line_space = true;
            &piece[space + 1..]
        };
        self.fragment = memchr::memchr(b'#', target).is_some();
    }
}

#[derive(Debug)]
pub(super) struct Scanner {
    pub(super) state: State,
    head: Head,
    pub(super) heads_seen: u64,
    /// The start of the current, unfinished line (at most `LINE_KEEP` bytes of it).
    line: Vec<u8>,
    /// The whole length of the current, unfinished line.
    line_len: usize,
    /// The last byte kept of the current, unfinished line was a CR.
    line_ends_cr: bool,
}

impl Default for Scanner {
    fn default() -> Self {
        Scanner {
            state: State::Head,
            head: Head::default(),
            heads_seen: 0,
            line: Vec::new(),
            line_len: 0,
            line_ends_cr: false,
        }
    }
}

impl Scanner {
    fn feed(&mut self, mut bytes: &[u8], flags: &FramingFlags) {
        while !bytes.is_empty() {
            let taken = self.feed_part(bytes, flags);
            bytes = &bytes[taken..];
        }
    }

    /// Reads `bytes` up to the end of a request head or a change between head and body, and
    /// returns how many it took (at least one; all of them once the watch has stopped).
    pub(super) fn feed_part(&mut self, all: &[u8], flags: &FramingFlags) -> usize {
        if flags.switched.load(Ordering::Acquire) {
            self.state = State::Done;
        }
        let in_head = self.state == State::Head;
        let heads_seen = self.heads_seen;
        let mut bytes = all;
        while !bytes.is_empty() {
            if (self.state == State::Head) != in_head || self.heads_seen != heads_seen {
                break;
            }
            match self.state {
                State::Done => return all.len(),
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
                    let end = memchr::memchr(b'\n', bytes);
                    let piece = &bytes[..end.unwrap_or(bytes.len())];
                    if self.state == State::Head && !self.head.request_line_seen {
                        self.head.request_line_piece(piece);
                    }
                    let Some(end) = end else {
                        self.keep(bytes);
                        return all.len();
                    };
                    bytes = &bytes[end + 1..];
                    if self.line.is_empty() && self.line_len == 0 {
                        // The whole line is in this read: no copy.
                        let bare_lf = !piece.ends_with(b"\r");
                        self.on_line(visible(piece), piece.len() > LINE_KEEP, bare_lf, flags);
                    } else {
                        self.keep(piece);
                        let truncated = self.line_len > LINE_KEEP;
                        let bare_lf = !self.line_ends_cr;
                        let carried = std::mem::take(&mut self.line);
                        self.on_line(visible(&carried), truncated, bare_lf, flags);
                        self.line = carried;
                        self.line.clear();
                        self.line_len = 0;
                        self.line_ends_cr = false;
                    }
                }
            }
        }
        all.len() - bytes.len()
    }

    fn keep(&mut self, part: &[u8]) {
        let room = LINE_KEEP.saturating_sub(self.line.len());
        self.line.extend_from_slice(&part[..part.len().min(room)]);
        self.line_len = self.line_len.saturating_add(part.len());
        if let Some(last) = part.last() {
            self.line_ends_cr = *last == b'\r';
        }
    }

    /// `truncated`: the line was longer than the `LINE_KEEP` bytes in `line`; `bare_lf`: it
    /// ended in LF alone.
    fn on_line(&mut self, line: &[u8], truncated: bool, bare_lf: bool, flags: &FramingFlags) {
        self.state = match self.state {
            // hyper ends trailers only at CRLF CRLF: past a bare LF the watch cannot tell
            // where hyper's next request starts, so that request is refused (and the
            // connection closed after it) whatever it looks like.
            State::Trailers if bare_lf => {
                flags.record(self.heads_seen + 1, FramingFinding::BareLineFeed);
                State::Done
            }
            State::Head => self.on_head_line(line, truncated, flags),
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

    fn on_head_line(&mut self, line: &[u8], truncated: bool, flags: &FramingFlags) -> State {
        let head = &mut self.head;
        if !head.request_line_seen {
            // Empty lines before a request line are skipped, as hyper's parser does.
            if line.is_empty() {
                // A line of only `\r` carried no space, so the next line starts afresh.
                head.request_line_space = false;
                return State::Head;
            }
            if self.heads_seen == 0 && line.starts_with(b"PRI * HTTP/2.0") {
                return State::Done;
            }
            head.request_line_seen = true;
            return State::Head;
        }
        if !line.is_empty() {
            head.read_header(line, truncated);
            return State::Head;
        }
        let head = std::mem::take(&mut self.head);
        self.heads_seen += 1;
        if let Some(finding) = head.finding() {
            // The handler refuses this request and closes the connection after it.
            flags.record(self.heads_seen, finding);
            return State::Done;
        }
        if head.has_transfer_encoding {
            State::ChunkSize
        } else {
            match (head.has_content_length, head.content_length) {
                (false, _) | (true, Some(0)) => State::Head,
                (true, Some(length)) => State::Body(length),
                (true, None) => State::Done,
            }
        }
    }
}

impl Head {
    fn read_header(&mut self, line: &[u8], truncated: bool) {
        // hyper refuses whitespace before the colon, so each name of interest ends exactly
        // where the colon is; its first letter and that position rule out most lines cheaply.
        let named = |name: &[u8]| {
            line.get(name.len()) == Some(&b':') && line[..name.len()].eq_ignore_ascii_case(name)
        };
        match line.first().map(u8::to_ascii_lowercase) {
            Some(b'c') if named(b"content-length") => {
                let length = if truncated {
                    None
                } else {
                    parse_length(line[15..].trim_ascii())
                };
                // hyper reads two lines with the same number as one; the upstream may not.
                if self.has_content_length || length.is_none() {
                    self.unreadable_length = true;
                }
                self.content_length = length;
                self.has_content_length = true;
            }
            Some(b't') if named(b"transfer-encoding") => {
                let chunked =
                    !truncated && line[18..].trim_ascii().eq_ignore_ascii_case(b"chunked");
                if self.has_transfer_encoding || !chunked {
                    self.other_coding = true;
                }
                self.has_transfer_encoding = true;
            }
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

/// A plain `Content-Length`: 1 to 19 ASCII digits, nothing else.
fn parse_length(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > MAX_LENGTH_DIGITS {
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

/// One request head as the watch read it, for the differential fuzz target (`fuzz/`).
#[doc(hidden)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TracedHead {
    /// The request line, at most `LINE_KEEP` bytes of it, without the line break.
    pub request_line: Vec<u8>,
    /// Offset just past the head's empty line.
    pub head_end: usize,
    /// Body bytes the watch skipped for this request (chunk data only, for chunked bodies).
    pub body_len: u64,
    /// Offset just past the request's body, once the watch expects the next head there.
    pub end: Option<usize>,
    /// What the watch found in this head (the handler refuses it and closes the connection).
    pub finding: Option<FramingFinding>,
}

/// Runs the watch over `bytes`, one byte at a time, and reports every head it saw and where
/// it believes each request ends. For the differential fuzz target only: not fast.
#[doc(hidden)]
pub fn trace(bytes: &[u8]) -> Vec<TracedHead> {
    let flags = FramingFlags::default();
    let mut scanner = Scanner::default();
    let mut heads: Vec<TracedHead> = Vec::new();
    let mut line_start = 0;
    for (offset, byte) in bytes.iter().enumerate() {
        let before = scanner.state;
        let awaiting = before == State::Head && !scanner.head.request_line_seen;
        let mut request_line = None;
        scanner.feed(std::slice::from_ref(byte), &flags);
        let after = scanner.state;
        if awaiting && *byte == b'\n' {
            if scanner.head.request_line_seen {
                let line = &bytes[line_start..offset];
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                request_line = Some(line[..line.len().min(LINE_KEEP)].to_vec());
            }
            line_start = offset + 1;
        }
        if let Some(line) = request_line {
            // Kept until the head is complete.
            heads.push(TracedHead {
                request_line: line,
                head_end: 0,
                body_len: 0,
                end: None,
                finding: None,
            });
        }
        let number = heads.len() as u64;
        let Some(current) = heads.last_mut() else {
            continue;
        };
        if current.head_end == 0 {
            if scanner.heads_seen < number {
                continue;
            }
            current.head_end = offset + 1;
            current.finding = (flags.flagged.load(Ordering::Relaxed) == number)
                .then(|| FramingFinding::from_code(flags.finding.load(Ordering::Relaxed)))
                .flatten();
        } else if current.end.is_none() && matches!(before, State::Body(_) | State::ChunkData(_)) {
            current.body_len += 1;
        }
        if current.end.is_none() && after == State::Head {
            current.end = Some(offset + 1);
            line_start = offset + 1;
        }
        // A finding for the head after this one (the watch cannot follow past here): the
        // next request, wherever hyper reads it, is refused and the connection closed.
        if current.end.is_none() && flags.flagged.load(Ordering::Relaxed) == number + 1 {
            current.end = Some(offset + 1);
            let finding = FramingFinding::from_code(flags.finding.load(Ordering::Relaxed));
            heads.push(TracedHead {
                request_line: Vec::new(),
                head_end: offset + 1,
                body_len: 0,
                end: None,
                finding,
            });
            break;
        }
    }
    // A head whose empty line never came is no head.
    heads.retain(|h| h.head_end != 0);
    heads
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::FramingWatch;
    use super::*;

    /// (flagged head number, its finding, heads seen, final state).
    type Scan = (u64, Option<FramingFinding>, u64, State);

    fn result(flags: &FramingFlags, scanner: &Scanner) -> Scan {
        (
            flags.flagged.load(Ordering::Relaxed),
            FramingFinding::from_code(flags.finding.load(Ordering::Relaxed)),
            scanner.heads_seen,
            scanner.state,
        )
    }

    /// Feeds `stream` in pieces of `step` bytes.
    fn scan(stream: &[u8], step: usize) -> Scan {
        let flags = FramingFlags::default();
        let mut scanner = Scanner::default();
        for piece in stream.chunks(step) {
            scanner.feed(piece, &flags);
        }
        result(&flags, &scanner)
    }

    fn scan_all_splits(stream: impl AsRef<[u8]>) -> Scan {
        let stream = stream.as_ref();
        let whole = scan(stream, stream.len().max(1));
        for step in 1..8 {
            assert_eq!(scan(stream, step), whole, "split every {step} bytes");
        }
        whole
    }

    /// hyper ends chunked trailers only at CRLF CRLF; a trailer line ending in a bare LF
    /// would end them here a line early (found by the framing_differential fuzz target), so
    /// from there the watch cannot follow: the next request is flagged.
    #[test]
    fn a_bare_line_feed_in_trailers_flags_the_next_request() {
        let stream = "POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
                      0\r\nX-Trailer: 1\n\r\n\
                      GET /b HTTP/1.1\r\nHost: a\r\n\r\n";
        let (flagged, finding, _, state) = scan_all_splits(stream);
        assert_eq!((flagged, finding), (2, Some(FramingFinding::BareLineFeed)));
        assert_eq!(state, State::Done);
        // With CRLF everywhere nothing is flagged.
        let clean = stream.replace("1\n", "1\r\n");
        assert_eq!(scan_all_splits(clean).1, None);
    }

    /// What hyper reads through the watch when the client's bytes arrive in pieces of `step`.
    fn through_watch(stream: &[u8], step: usize, hold_limit: usize) -> Vec<u8> {
        let mut watch = FramingWatch::new((), Arc::default(), hold_limit);
        let mut out = Vec::new();
        for piece in stream.chunks(step) {
            let in_place = watch.sort(piece);
            out.extend_from_slice(&piece[..in_place]);
            out.extend_from_slice(&watch.ready[watch.ready_from..]);
            watch.ready.clear();
        }
        out
    }

    #[test]
    fn well_framed_requests_reach_hyper_unchanged() {
        let stream = b"\r\nGET /a HTTP/1.1\r\nHost: a\r\n\r\n\
                       POST /b HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc\
                       POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nxy\r\n0\r\n\r\n\
                       GET /d HTTP/1.1\r\n\r\n";
        for step in 1..=stream.len() {
            assert_eq!(
                through_watch(stream, step, 8192),
                stream,
                "split every {step}"
            );
        }
        let h2 = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04";
        assert_eq!(through_watch(h2, 5, 8192), h2);
    }

    #[test]
    fn a_refused_head_reaches_hyper_without_its_framing() {
        for framing in [
            "Content-Length: 5, 5",
            "content-length: +5",
            "Content-Length: 5\r\nTransfer-Encoding: gzip",
            "Transfer-Encoding: chunked, identity",
        ] {
            let stream = format!(
                "GET / HTTP/1.1\r\n\r\nPOST /x HTTP/1.1\r\nHost: a\r\n{framing}\r\nX-B: 1\r\n\r\n\
                 hello"
            );
            let expected =
                "GET / HTTP/1.1\r\n\r\nPOST /x HTTP/1.1\r\nHost: a\r\nX-B: 1\r\n\r\nhello";
            for step in 1..=stream.len() {
                let got = through_watch(stream.as_bytes(), step, 8192);
                assert_eq!(
                    String::from_utf8_lossy(&got),
                    expected,
                    "{framing}, split {step}"
                );
            }
        }
    }

    #[test]
    fn an_unfinished_head_is_held_up_to_hypers_limit() {
        let head = format!("GET / HTTP/1.1\r\nX-Long: {}", "a".repeat(100));
        assert_eq!(through_watch(head.as_bytes(), 7, 8192), b"G");
        // Past the limit it goes through as it comes, for hyper to refuse as too large.
        assert_eq!(through_watch(head.as_bytes(), 7, 64), head.as_bytes());
    }

    #[test]
    fn plain_requests_and_bodies_are_followed() {
        let stream = "GET /a HTTP/1.1\r\nHost: x\r\n\r\n\
                      POST /b HTTP/1.1\r\nHost: x\r\ncontent-LENGTH: 26\r\n\r\n\
                      Transfer-Encoding: chunked\
                      POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
                      5;ext=1\r\nhello\r\n10\r\nContent-Length:1\r\n0\r\nX-Trailer: 1\r\n\r\n\
                      GET /d HTTP/1.1\nHost: x\n\n";
        assert_eq!(scan_all_splits(stream), (0, None, 4, State::Head));
    }

    #[test]
    fn both_headers_mark_that_request_in_either_order() {
        let cl_te = "GET / HTTP/1.1\r\n\r\n\
                     POST / HTTP/1.1\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n\
                     0\r\n\r\n";
        let conflict = Some(FramingFinding::ConflictingFraming);
        assert_eq!(scan_all_splits(cl_te), (2, conflict, 2, State::Done));
        let te_cl = "POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n";
        assert_eq!(scan_all_splits(te_cl).1, conflict);
    }

    #[test]
    fn lengths_other_than_one_plain_number_are_findings() {
        let unreadable = Some(FramingFinding::UnreadableLength);
        let padded = format!("Content-Length: {}26", "0".repeat(90));
        for header in [
            "Content-Length: 5, 5",
            "Content-Length: +5",
            "Content-Length: 5\r\nContent-Length: 5",
            "Content-Length: 00000000000000000026",
            padded.as_str(),
        ] {
            let stream = format!("GET / HTTP/1.1\r\n\r\nPOST / HTTP/1.1\r\n{header}\r\n\r\n");
            assert_eq!(
                scan_all_splits(&stream),
                (2, unreadable, 2, State::Done),
                "{header}"
            );
        }
        let fine = "POST / HTTP/1.1\r\nContent-Length:  0000000000000000026 \r\n\r\n";
        assert_eq!(scan_all_splits(fine), (0, None, 1, State::Body(26)));
    }

    #[test]
    fn a_fragment_in_the_target_is_a_finding_wherever_it_falls() {
        let fragment = Some(FramingFinding::Fragment);
        let long = format!("GET /{}#x HTTP/1.1\r\n\r\n", "a".repeat(300));
        assert_eq!(scan_all_splits(&long), (1, fragment, 1, State::Done));
        let short = "\r\nGET /public#x HTTP/1.1\r\nX-A: #\r\n\r\n";
        assert_eq!(scan_all_splits(short).1, fragment);
        // A `#` in a header value or in the method is no fragment.
        let header = "GE#T /public HTTP/1.1\r\nX-A: #\r\n\r\n";
        assert_eq!(scan_all_splits(header), (0, None, 1, State::Head));
    }

    #[test]
    fn upgrades_and_connect_are_followed_until_a_switch() {
        let smuggled = "POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        for first in [
            "GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
        ] {
            let stream = format!("{first}{smuggled}");
            let conflict = Some(FramingFinding::ConflictingFraming);
            assert_eq!(
                scan_all_splits(&stream),
                (2, conflict, 2, State::Done),
                "{first}"
            );
            // Once the handler said the protocol switched, nothing after is read as requests.
            let flags = FramingFlags::default();
            let mut scanner = Scanner::default();
            scanner.feed(first.as_bytes(), &flags);
            flags.switched_protocols();
            scanner.feed(smuggled.as_bytes(), &flags);
            assert_eq!(result(&flags, &scanner), (0, None, 1, State::Done));
        }
    }

    #[test]
    fn the_watch_stops_where_hyper_stops_reading_requests() {
        let h2 = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        assert_eq!(scan_all_splits(h2).3, State::Done);
        let bad_chunk = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n";
        assert_eq!(scan_all_splits(bad_chunk).3, State::Done);
    }

    #[test]
    fn the_handler_count_matches_the_head_count() {
        let flags = FramingFlags::default();
        flags.record(3, FramingFinding::Fragment);
        flags.record(5, FramingFinding::ConflictingFraming);
        let hits: Vec<_> = (0..5).map(|_| flags.next_request_finding()).collect();
        assert_eq!(
            hits,
            [None, None, Some(FramingFinding::Fragment), None, None]
        );
    }

    proptest::proptest! {
        /// Whatever a client sends, however the reads split it: no panic, and the same finding.
        #[test]
        fn any_bytes_any_split(
            pieces in proptest::collection::vec(
                proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64), 0..16),
            framed in proptest::collection::vec(0usize..7, 0..8),
        ) {
            // Mix raw bytes with well-formed heads so the scanner gets past the first line.
            const PARTS: [&[u8]; 7] = [
                b"GET / HTTP/1.1\r\n\r\n",
                b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\n",
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                b"Content-Length: 5\r\n",
                b"Transfer-Encoding: chunked\r\n",
                b"3\r\nabc\r\n0\r\n\r\n",
                b"GET /#",
            ];
            let mut stream = Vec::new();
            for (n, piece) in pieces.iter().enumerate() {
                if let Some(&part) = framed.get(n) {
                    stream.extend_from_slice(PARTS[part]);
                }
                stream.extend_from_slice(piece);
            }
            let whole = scan(&stream, stream.len().max(1));
            let passed = through_watch(&stream, stream.len().max(1), 8192);
            for step in [1, 2, 7] {
                proptest::prop_assert_eq!(scan(&stream, step), whole);
                proptest::prop_assert_eq!(&through_watch(&stream, step, 8192), &passed);
            }
            // With nothing refused, hyper reads the client's bytes unchanged (but for a head
            // still unfinished).
            if whole.1.is_none() {
                proptest::prop_assert!(stream.starts_with(&passed));
            }
        }
    }

    #[test]
    fn the_trace_locates_each_request() {
        let stream = b"\r\nGET /a HTTP/1.1\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc\
                       POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nxy\r\n0\r\n\r\nGET /d";
        let heads = trace(stream);
        let lines: Vec<&[u8]> = heads.iter().map(|h| h.request_line.as_slice()).collect();
        assert_eq!(
            lines,
            [
                &b"GET /a HTTP/1.1"[..],
                b"POST /b HTTP/1.1",
                b"POST /c HTTP/1.1"
            ]
        );
        assert_eq!(heads[0].end, Some(21));
        assert_eq!(heads[1].body_len, 3);
        assert_eq!(heads[1].end, Some(heads[1].head_end + 3));
        assert_eq!(heads[2].body_len, 2);
        assert_eq!(heads[2].end, Some(stream.len() - 6));
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
