//! Request-path normalisation and route-prefix matching (spec section 3, step 2).
//!
//! Everything here is deny-by-default: when a path could be read in two ways by
//! two different parsers (this proxy and an upstream), it is refused as
//! ambiguous (400, reason=ambiguous_path) instead of being "repaired".
//!
//! # What `http::Uri` (http 1.5.0) already does before we see the path
//!
//! Recorded with http 1.5.0 (in the scratch crate this module was first written
//! in). The proxy passes `normalize` the request's `uri().path()`, so:
//!
//! * `#`: NOT rejected. The fragment is silently dropped: `"/admin#x"` parses with
//!   `path() == "/admin"` (also for absolute-form targets). `normalize` therefore
//!   never sees a `#` coming from `Uri::path()`; its `Fragment` check only fires
//!   for callers that pass the raw request target.
//! * `\`: accepted and kept verbatim (`"/admin\\x"` -> path `"/admin\\x"`), so the
//!   `Backslash` check here is load-bearing.
//! * non-ASCII: raw UTF-8 is accepted and kept (`"/café"` -> path `"/café"`); only
//!   bytes that are not valid UTF-8 are rejected. So raw bytes >= 0x80 *do*
//!   arrive, and `normalize` refuses them (`RawNonAscii`).
//! * also accepted verbatim: `"`, `{`, `}`, `|`, `^`, `[`, `]` and malformed escapes
//!   such as `%zz` (no percent-decoding or validation at all); rejected: space,
//!   tab, DEL, `<`, backtick. `"*"` parses with `path() == "*"`, and for an
//!   absolute-form target `path()` is just the path part.

mod matching;

use std::fmt;

use matching::matching_form;
pub use matching::{canonical_route_path, prefix_matches};

/// A request path after normalisation: what the upstream receives and what routes are matched on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalizedPath {
    forward: String,
    matching: String,
}

impl NormalizedPath {
    /// The path forwarded upstream: normalised, `;` parameters kept, always starts with '/'.
    pub fn forward(&self) -> &str {
        &self.forward
    }

    /// The path routes are matched on: `forward()` with `;` parameters removed from each segment
    /// and empty segments merged; always starts with '/'. Encoded `:`, `@` and sub-delimiters
    /// other than `;` (`%3A`, `%40`, `%2B`...) are decoded here too, because upstreams treat
    /// them as their literal characters (see `decode_match_equivalents`).
    pub fn for_matching(&self) -> &str {
        &self.matching
    }
}

impl fmt::Display for NormalizedPath {
    /// Displays the forwarded form, which is what the upstream will see.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.forward)
    }
}

/// Why a path is refused as ambiguous (each variant's Display is a short human detail for logs;
/// never include the raw path).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AmbiguousPath {
    /// Empty, `*`, absolute-form or anything else that does not start with '/'.
    #[error("path is not in origin form")]
    NotOriginForm,
    /// `%2F`: upstreams disagree on whether it separates segments.
    #[error("encoded slash")]
    EncodedSlash,
    /// `%5C`: Windows-style upstreams treat it as a separator.
    #[error("encoded backslash")]
    EncodedBackslash,
    /// A raw `\`: Windows-style upstreams treat it as a separator.
    #[error("backslash")]
    Backslash,
    /// A segment made only of dots that were (partly) percent-encoded.
    #[error("encoded dot segment")]
    EncodedDotSegment,
    /// NUL, raw or `%00`: C-string upstreams truncate there.
    #[error("NUL byte")]
    Nul,
    /// Any other control character (C0, DEL or C1), raw or encoded.
    #[error("control character")]
    ControlCharacter,
    /// `%` not followed by two hex digits.
    #[error("malformed percent-encoding")]
    BadPercentEncoding,
    /// Percent-encoded bytes that are not valid UTF-8 (overlong, surrogate, truncated...).
    #[error("percent-encoded bytes are not valid UTF-8")]
    NotUtf8,
    /// A segment that is `.` or `..` once its `;` parameters are removed (`..;x`).
    #[error("dot segment with parameters")]
    DotSegmentParameter,
    /// A segment made only of dots and spaces other than a literal `.` or `..`
    /// (`...`, `..%20`, `%20`): Windows-style upstreams trim trailing dots and
    /// spaces, turning these into `..` or an empty segment.
    #[error("dot-like segment")]
    DotLikeSegment,
    /// A raw `#`: the request target must not carry a fragment.
    #[error("fragment in request target")]
    Fragment,
    /// Raw space, tab, CR, LF, VT or FF.
    #[error("whitespace")]
    Whitespace,
    /// A raw `?`: the caller must split off the query before normalising.
    #[error("unsplit query marker")]
    QuestionMark,
    /// A raw byte >= 0x80: must arrive percent-encoded.
    #[error("raw non-ASCII byte")]
    RawNonAscii,
    /// A raw ASCII character that RFC 3986 does not allow in a path (`"<>[]^`{|}`).
    #[error("character not allowed in a path")]
    InvalidCharacter,
    /// `%3B`: an upstream that decodes before stripping parameters would see `;`.
    #[error("encoded semicolon")]
    EncodedSemicolon,
    /// `%25` followed by an escape that would decode to something dangerous (`%252e`).
    #[error("double percent-encoding")]
    DoubleEncoding,
    /// A Unicode character that compatibility normalisation (NFKC) or Windows
    /// "best fit" mapping turns into `.`, `/`, `\`, `;`, `%`, `?` or `#`.
    #[error("look-alike of a path delimiter")]
    LookalikeCharacter,
}

/// One path segment (text between two raw slashes) after percent-decoding.
struct Segment {
    /// Canonical text: unreserved characters decoded, every other escape kept
    /// with uppercase hex digits. This is what is forwarded.
    text: String,
    /// The segment fully percent-decoded, validated as UTF-8. Only used for checks.
    decoded: String,
    /// Whether any `.` in `text` came from `%2E`.
    had_encoded_dot: bool,
}

/// `raw` is the path component exactly as received (no query string; the caller has already split at '?').
pub fn normalize(raw: &str) -> Result<NormalizedPath, AmbiguousPath> {
    // `strip_prefix` also rejects "", "*" and absolute-form targets.
    let Some(after_root) = raw.strip_prefix('/') else {
        return Err(AmbiguousPath::NotOriginForm);
    };
    let mut segments = Vec::new();
    for piece in after_root.split('/') {
        let segment = decode_segment(piece)?;
        check_segment(&segment)?;
        segments.push(segment);
    }
    let forward = resolve_segments(&segments);
    let matching = matching_form(&forward);
    Ok(NormalizedPath { forward, matching })
}

/// Percent-decodes one segment into its canonical form, rejecting bytes that
/// must never appear raw or encoded. Works left to right so that the first
/// offending byte decides the error.
fn decode_segment(piece: &str) -> Result<Segment, AmbiguousPath> {
    let bytes = piece.as_bytes();
    let mut text = String::with_capacity(piece.len());
    let mut decoded = Vec::with_capacity(piece.len());
    let mut had_encoded_dot = false;
    let mut i = 0;
    while let Some(&byte) = bytes.get(i) {
        if byte == b'%' {
            let value = parse_escape(bytes.get(i + 1..i + 3))?;
            check_escaped_byte(value)?;
            if is_unreserved(value) {
                text.push(char::from(value));
                had_encoded_dot |= value == b'.';
            } else {
                push_escape(&mut text, value);
            }
            decoded.push(value);
            i += 3;
        } else {
            check_raw_byte(byte)?;
            text.push(char::from(byte));
            decoded.push(byte);
            i += 1;
        }
    }
    let decoded = String::from_utf8(decoded).map_err(|_| AmbiguousPath::NotUtf8)?;
    Ok(Segment {
        text,
        decoded,
        had_encoded_dot,
    })
}

/// Reads the two hex digits after a `%`; anything else is malformed. Lenient
/// decoders (e.g. ones accepting `%u002e` or `%%32%65`) are exactly what an
/// attacker probes for, so we never guess.
fn parse_escape(digits: Option<&[u8]>) -> Result<u8, AmbiguousPath> {
    match digits {
        Some(&[high, low]) => match (hex_value(high), hex_value(low)) {
            (Some(high), Some(low)) => Ok(high << 4 | low),
            _ => Err(AmbiguousPath::BadPercentEncoding),
        },
        _ => Err(AmbiguousPath::BadPercentEncoding),
    }
}

/// Value of one ASCII hex digit, either case.
fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

/// Appends `%XX` with uppercase hex, the canonical form of RFC 3986 §6.2.2.1,
/// so that equivalent spellings match the same routes.
fn push_escape(text: &mut String, value: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    text.push('%');
    text.push(char::from(HEX[usize::from(value >> 4)]));
    text.push(char::from(HEX[usize::from(value & 0x0F)]));
}

/// RFC 3986 unreserved characters: the only ones whose encoding never changes meaning,
/// and therefore the only ones we decode.
fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

/// Characters allowed raw in a normalised segment: RFC 3986 `pchar` without
/// `%` (escapes are handled separately).
fn is_allowed_raw(byte: u8) -> bool {
    is_unreserved(byte)
        || matches!(
            byte,
            b'!' | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
        )
}

/// Rejects a byte that arrived percent-encoded if some upstream would give it
/// structural meaning once decoded (separator, terminator, parameter marker).
fn check_escaped_byte(value: u8) -> Result<(), AmbiguousPath> {
    match value {
        0 => Err(AmbiguousPath::Nul),
        b'/' => Err(AmbiguousPath::EncodedSlash),
        b'\\' => Err(AmbiguousPath::EncodedBackslash),
        b';' => Err(AmbiguousPath::EncodedSemicolon),
        0x01..=0x1F | 0x7F => Err(AmbiguousPath::ControlCharacter),
        _ => Ok(()),
    }
}

/// Rejects a raw byte that is not a plain RFC 3986 path character.
fn check_raw_byte(byte: u8) -> Result<(), AmbiguousPath> {
    match byte {
        _ if is_allowed_raw(byte) => Ok(()),
        0 => Err(AmbiguousPath::Nul),
        b' ' | b'\t' | b'\n' | b'\r' | 0x0B | 0x0C => Err(AmbiguousPath::Whitespace),
        0x01..=0x1F | 0x7F => Err(AmbiguousPath::ControlCharacter),
        b'\\' => Err(AmbiguousPath::Backslash),
        b'#' => Err(AmbiguousPath::Fragment),
        b'?' => Err(AmbiguousPath::QuestionMark),
        0x80..=0xFF => Err(AmbiguousPath::RawNonAscii),
        _ => Err(AmbiguousPath::InvalidCharacter),
    }
}

/// Checks that need the whole decoded segment. They run on the canonical text
/// (not the raw input) so that `normalize(forward)` reaches the same verdict,
/// which is what makes normalisation idempotent.
fn check_segment(segment: &Segment) -> Result<(), AmbiguousPath> {
    check_decoded_chars(&segment.decoded)?;
    check_double_encoding(&segment.text)?;
    if segment.had_encoded_dot && segment.decoded.bytes().all(|b| b == b'.') {
        return Err(AmbiguousPath::EncodedDotSegment);
    }
    if let Some((before_params, _)) = segment.text.split_once(';') {
        if is_dot_segment(before_params) {
            return Err(AmbiguousPath::DotSegmentParameter);
        }
    }
    let before_params = segment.decoded.split(';').next().unwrap_or("");
    if is_dot_like(before_params) {
        return Err(AmbiguousPath::DotLikeSegment);
    }
    Ok(())
}

/// Only dots and spaces, but not a plain `.` or `..` (those are resolved instead).
fn is_dot_like(decoded: &str) -> bool {
    !decoded.is_empty()
        && !is_dot_segment(decoded)
        && decoded.bytes().all(|b| b == b'.' || b == b' ')
}

/// Rejects C1 controls (encoded as two UTF-8 bytes, so the byte checks miss them)
/// and look-alikes of delimiters.
fn check_decoded_chars(decoded: &str) -> Result<(), AmbiguousPath> {
    for c in decoded.chars() {
        if c.is_control() {
            return Err(AmbiguousPath::ControlCharacter);
        }
        if is_delimiter_lookalike(c) {
            return Err(AmbiguousPath::LookalikeCharacter);
        }
    }
    Ok(())
}

/// Code points that NFKC maps to a string containing `/ \ ; % ? #` or made only of dots
/// (complete for Unicode 14), plus the Windows "best fit" slash and backslash
/// look-alikes. Upstreams that apply either mapping would otherwise see new
/// separators or dot segments that we never matched on. Defence in depth: it
/// cannot cover look-alikes of letters (e.g. fullwidth `ａｄｍｉｎ`).
const DELIMITER_LOOKALIKES: &[char] = &[
    '\u{037E}', // GREEK QUESTION MARK -> ';' (even NFC)
    '\u{2024}', // ONE DOT LEADER -> '.'
    '\u{2025}', // TWO DOT LEADER -> '..'
    '\u{2026}', // HORIZONTAL ELLIPSIS -> '...'
    '\u{2044}', // FRACTION SLASH (best fit '/')
    '\u{2047}', // DOUBLE QUESTION MARK -> '??'
    '\u{2048}', // QUESTION EXCLAMATION MARK -> '?!'
    '\u{2049}', // EXCLAMATION QUESTION MARK -> '!?'
    '\u{2100}', // ACCOUNT OF -> 'a/c'
    '\u{2101}', // ADDRESSED TO THE SUBJECT -> 'a/s'
    '\u{2105}', // CARE OF -> 'c/o'
    '\u{2106}', // CADA UNA -> 'c/u'
    '\u{2215}', // DIVISION SLASH (best fit '/')
    '\u{2216}', // SET MINUS (best fit '\')
    '\u{29F5}', // REVERSE SOLIDUS OPERATOR (best fit '\')
    '\u{FE14}', // PRESENTATION FORM FOR VERTICAL SEMICOLON -> ';'
    '\u{FE16}', // PRESENTATION FORM FOR VERTICAL QUESTION MARK -> '?'
    '\u{FE19}', // PRESENTATION FORM FOR VERTICAL HORIZONTAL ELLIPSIS -> '...'
    '\u{FE30}', // PRESENTATION FORM FOR VERTICAL TWO DOT LEADER -> '..'
    '\u{FE52}', // SMALL FULL STOP -> '.'
    '\u{FE54}', // SMALL SEMICOLON -> ';'
    '\u{FE56}', // SMALL QUESTION MARK -> '?'
    '\u{FE5F}', // SMALL NUMBER SIGN -> '#'
    '\u{FE68}', // SMALL REVERSE SOLIDUS -> '\'
    '\u{FE6A}', // SMALL PERCENT SIGN -> '%'
    '\u{FF03}', // FULLWIDTH NUMBER SIGN -> '#'
    '\u{FF05}', // FULLWIDTH PERCENT SIGN -> '%'
    '\u{FF0E}', // FULLWIDTH FULL STOP -> '.'
    '\u{FF0F}', // FULLWIDTH SOLIDUS -> '/'
    '\u{FF1B}', // FULLWIDTH SEMICOLON -> ';'
    '\u{FF1F}', // FULLWIDTH QUESTION MARK -> '?'
    '\u{FF3C}', // FULLWIDTH REVERSE SOLIDUS -> '\'
];

/// See [`DELIMITER_LOOKALIKES`].
fn is_delimiter_lookalike(c: char) -> bool {
    DELIMITER_LOOKALIKES.contains(&c)
}

/// `%25` (a literal `%`) is kept as is, unless what follows it spells an escape
/// (`%252e`, `%252f`, `%2561dmin`, `%2525`...). An upstream that decodes twice
/// would then see a different path from the one we matched: a dot segment, a
/// separator, overlong UTF-8, or simply `/admin` where we matched `/%2561dmin`
/// against a shorter route. Runs on the canonical text, so `%25%32%65` (which
/// decodes once to `%2e`) is caught too.
fn check_double_encoding(text: &str) -> Result<(), AmbiguousPath> {
    let mut rest = text;
    while let Some(at) = rest.find("%25") {
        rest = &rest[at + 3..];
        if parse_escape(rest.as_bytes().get(..2)).is_ok() {
            return Err(AmbiguousPath::DoubleEncoding);
        }
    }
    Ok(())
}

/// Literal dot segments of RFC 3986 §3.3.
fn is_dot_segment(segment: &str) -> bool {
    segment == "." || segment == ".."
}

/// Merges empty segments, then removes dot segments as RFC 3986 §5.2.4 does
/// (never above the root). A trailing empty or dot segment leaves the
/// directory slash in place (`/a/b/..` -> `/a/`).
///
/// Slashes are merged *before* dots are resolved (`/a//../b` -> `/b`, like nginx)
/// so that the result contains neither, and the upstream cannot resolve it differently.
fn resolve_segments(segments: &[Segment]) -> String {
    let mut stack: Vec<&str> = Vec::with_capacity(segments.len());
    let mut trailing_slash = false;
    for segment in segments {
        let text = segment.text.as_str();
        trailing_slash = text.is_empty() || is_dot_segment(text);
        if text == ".." {
            stack.pop();
        } else if !trailing_slash {
            stack.push(text);
        }
    }
    join_segments(&stack, trailing_slash)
}

/// Builds `/a/b` (or `/a/b/` with `trailing_slash`); an empty list gives `/`.
fn join_segments(segments: &[&str], trailing_slash: bool) -> String {
    let mut path = String::with_capacity(segments.iter().map(|s| s.len() + 1).sum::<usize>() + 1);
    for segment in segments {
        path.push('/');
        path.push_str(segment);
    }
    if path.is_empty() || trailing_slash {
        path.push('/');
    }
    path
}

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
