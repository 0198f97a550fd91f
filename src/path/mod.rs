//! Request-path normalisation and route-prefix matching (spec section 3, step 2).
//!
//! Everything here is deny-by-default: when a path could be read in two ways by
//! two different parsers (this proxy and an upstream), it is refused as
//! ambiguous (400, reason=ambiguous_path) instead of being "repaired".
//!
//! # What `http::Uri` (http 1.5.0) already does before we see the path
//!
//! Recorded with http 1.5.0 by `tests/uri_behaviour.rs` in the scratch crate
//! this module was written in; keep it in mind when wiring `normalize` to
//! `req.uri().path()`:
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

use std::fmt;

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

/// Removes `;` parameters from every segment of an already normalised path and
/// merges the empty segments this leaves (`/;x/admin` -> `/admin`), because
/// many upstreams ignore parameters when they route. Trailing dots and spaces are
/// removed from each segment too (`/admin.`, `/admin%20`, `/admin..;x` -> `/admin`),
/// because Windows-style upstreams (IIS, and anything serving files from NTFS) drop
/// them when they open the file. Encoded `:`, `@` and sub-delimiters are also decoded
/// (see [`decode_match_equivalents`]).
fn matching_form(forward: &str) -> String {
    let pieces = forward.strip_prefix('/').unwrap_or(forward).split('/');
    let mut kept: Vec<String> = Vec::new();
    let mut trailing_slash = false;
    for piece in pieces {
        let without_params = trim_trailing_dots_and_spaces(piece.split(';').next().unwrap_or(""));
        trailing_slash = without_params.is_empty();
        if !trailing_slash {
            kept.push(decode_match_equivalents(without_params));
        }
    }
    let kept: Vec<&str> = kept.iter().map(String::as_str).collect();
    join_segments(&kept, trailing_slash)
}

/// `admin.%20.` -> `admin`. Segments made only of dots and spaces never get here: they
/// are resolved (`.`, `..`) or refused as ambiguous (`...`, `%20`) first.
fn trim_trailing_dots_and_spaces(segment: &str) -> &str {
    let mut rest = segment;
    loop {
        if let Some(shorter) = rest.strip_suffix('.') {
            rest = shorter;
        } else if let Some(shorter) = rest.strip_suffix("%20") {
            rest = shorter;
        } else {
            return rest;
        }
    }
}

/// Decodes `%XX` escapes of `:`, `@` and the sub-delimiters other than `;`.
///
/// RFC 3986 says `%3A` and `:` may differ, so the forwarded path keeps them
/// encoded, but nearly every upstream decodes them before routing: without
/// this, `/items%3Abatch` would dodge a route `/items:batch` and still reach it
/// upstream. None of these characters can create a separator, parameter or dot
/// segment, so decoding them for matching adds no ambiguity.
fn decode_match_equivalents(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = String::with_capacity(segment.len());
    let mut i = 0;
    // `forward` is ASCII (raw non-ASCII is refused), so each byte is a char.
    while let Some(&byte) = bytes.get(i) {
        let escape = match byte {
            b'%' => parse_escape(bytes.get(i + 1..i + 3)).ok(),
            _ => None,
        };
        match escape {
            Some(value) if is_match_equivalent(value) => {
                out.push(char::from(value));
                i += 3;
            }
            _ => {
                out.push(char::from(byte));
                i += 1;
            }
        }
    }
    out
}

/// `:`, `@` and the sub-delimiters except `;` (RFC 3986 `pchar` minus unreserved).
fn is_match_equivalent(byte: u8) -> bool {
    byte != b';' && is_allowed_raw(byte) && !is_unreserved(byte)
}

/// Route prefix match on segment boundaries. `route` is a canonical route path ('/' or '/a/b' with no trailing slash);
/// `path` is NormalizedPath::for_matching(). With `case_insensitive`, compare ASCII-case-insensitively.
///
/// A route with trailing slashes is treated like its canonical form rather than
/// failing to match (a protected route that silently never matches would fail open).
/// Anything not starting with '/' never matches.
pub fn prefix_matches(route: &str, path: &str, case_insensitive: bool) -> bool {
    if !route.starts_with('/') || !path.starts_with('/') {
        return false;
    }
    // "/" becomes "", which every path starts with and is followed by '/'.
    let route = route.trim_end_matches('/').as_bytes();
    let path = path.as_bytes();
    let Some(head) = path.get(..route.len()) else {
        return false;
    };
    let same = if case_insensitive {
        head.eq_ignore_ascii_case(route)
    } else {
        head == route
    };
    same && matches!(path.get(route.len()), None | Some(b'/'))
}

/// Canonicalise a route path from the config: must start with '/', must itself be normal (no '.'/'..' segments,
/// no '%', no '\\', no ';', no control chars or NUL, no '#' or '?'); repeated slashes merged and one trailing slash
/// removed ("/admin/" -> "/admin"; "/" stays "/"). Err(String) explains what was expected.
///
/// Whitespace and `*` are refused too (a stray trailing space or a glob in the config would create a
/// route that never matches, so the paths it was meant to protect would fall to a shorter route).
/// Characters that requests can only carry percent-encoded (non-ASCII, `"<>[]^`{|}`) are
/// percent-encoded here with uppercase hex, exactly as [`normalize`] leaves them, so that such a
/// route can match at all.
pub fn canonical_route_path(p: &str) -> Result<String, String> {
    if !p.starts_with('/') {
        return Err(format!("route path {p:?} must start with '/'"));
    }
    if let Some(c) = p.chars().find(|&c| forbidden_in_route(c)) {
        return Err(format!(
            "route path {p:?} contains {c:?}; expected a plain decoded path without \
             '%', '\\\\', ';', '#', '?', '*' (routes are prefixes, not globs), whitespace, \
             control characters or delimiter look-alikes"
        ));
    }
    let mut segments = Vec::new();
    for segment in p.split('/').filter(|s| !s.is_empty()) {
        if is_dot_segment(segment) {
            return Err(format!(
                "route path {p:?} contains a '{segment}' segment; expected a normal path"
            ));
        }
        if segment.ends_with('.') {
            return Err(format!(
                "route path {p:?} has a segment ending in '.' ({segment:?}); requests are \
                 matched without trailing dots (Windows-style upstreams ignore them), so \
                 expected the route without them"
            ));
        }
        segments.push(encode_route_segment(segment));
    }
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    Ok(join_segments(&segments, false))
}

/// Characters a route may not contain (see [`canonical_route_path`]). `*` is
/// refused because routes are plain prefixes: `/admin/*` would be a literal
/// segment that never matches, leaving `/admin` unprotected.
fn forbidden_in_route(c: char) -> bool {
    matches!(c, '%' | '\\' | ';' | '#' | '?' | '*')
        || c.is_control()
        || c.is_whitespace()
        || is_delimiter_lookalike(c)
}

/// Percent-encodes what a normalised request path could only contain encoded.
fn encode_route_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for &byte in segment.as_bytes() {
        if is_allowed_raw(byte) {
            out.push(char::from(byte));
        } else {
            push_escape(&mut out, byte);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::AmbiguousPath::*;
    use super::*;

    type Expected = Result<(&'static str, &'static str), AmbiguousPath>;

    /// (raw path, expected (forward, for_matching) or error).
    const CASES: &[(&str, Expected)] = &[
        // Origin form.
        ("/", Ok(("/", "/"))),
        ("", Err(NotOriginForm)),
        ("*", Err(NotOriginForm)),
        ("http://x/admin", Err(NotOriginForm)),
        ("admin", Err(NotOriginForm)),
        ("%2fadmin", Err(NotOriginForm)),
        // Repeated and trailing slashes.
        ("//admin///x", Ok(("/admin/x", "/admin/x"))),
        ("//", Ok(("/", "/"))),
        ("/admin/", Ok(("/admin/", "/admin/"))),
        ("/admin//", Ok(("/admin/", "/admin/"))),
        ("///admin", Ok(("/admin", "/admin"))),
        // Encoded dots.
        ("/%2e%2e/admin", Err(EncodedDotSegment)),
        ("/%2E%2e/", Err(EncodedDotSegment)),
        ("/.%2e/admin", Err(EncodedDotSegment)),
        ("/%2e./admin", Err(EncodedDotSegment)),
        ("/admin/%2e", Err(EncodedDotSegment)),
        ("/%2e/admin", Err(EncodedDotSegment)),
        ("/%2e%2e%2e/admin", Err(EncodedDotSegment)),
        ("/public/%2e%2e/admin", Err(EncodedDotSegment)),
        ("/a%2eb", Ok(("/a.b", "/a.b"))),
        ("/%2e%2e;x/admin", Err(DotSegmentParameter)),
        ("/admin/..%2f", Err(EncodedSlash)),
        // Encoded slashes.
        ("/admin%2fsecret", Err(EncodedSlash)),
        ("/admin%2Fx", Err(EncodedSlash)),
        ("/%2f%2fadmin", Err(EncodedSlash)),
        ("/public/..%2fadmin", Err(EncodedSlash)),
        // Double encoding.
        ("/%252e%252e/admin", Err(DoubleEncoding)),
        ("/%252E", Err(DoubleEncoding)),
        ("/admin%252fx", Err(DoubleEncoding)),
        ("/admin%255cx", Err(DoubleEncoding)),
        ("/a%2500", Err(DoubleEncoding)),
        ("/a%25252e", Err(DoubleEncoding)),
        ("/a%25%32%65", Err(DoubleEncoding)),
        ("/%25c0%25ae", Err(DoubleEncoding)),
        ("/admin%253bx", Err(DoubleEncoding)),
        ("/a%2541", Err(DoubleEncoding)),
        ("/%2561dmin", Err(DoubleEncoding)),
        ("/items%253Abatch", Err(DoubleEncoding)),
        ("/a%2520b", Err(DoubleEncoding)),
        ("/a%254%31", Err(DoubleEncoding)),
        ("/100%25", Ok(("/100%25", "/100%25"))),
        ("/a%25zz", Ok(("/a%25zz", "/a%25zz"))),
        ("/50%25off", Ok(("/50%25off", "/50%25off"))),
        ("/a%25%25", Ok(("/a%25%25", "/a%25%25"))),
        // Backslashes.
        ("/admin\\x", Err(Backslash)),
        ("/\\admin", Err(Backslash)),
        ("/..\\admin", Err(Backslash)),
        ("/admin%5cx", Err(EncodedBackslash)),
        ("/admin%5C..%5C", Err(EncodedBackslash)),
        // `;` parameters.
        ("/admin;jsessionid=1", Ok(("/admin;jsessionid=1", "/admin"))),
        // Trailing dots and spaces: Windows-style upstreams drop them, so matching does too.
        ("/admin.", Ok(("/admin.", "/admin"))),
        ("/admin%2e", Ok(("/admin.", "/admin"))),
        ("/admin%20", Ok(("/admin%20", "/admin"))),
        ("/admin.%20./x", Ok(("/admin.%20./x", "/admin/x"))),
        ("/admin..;x/y", Ok(("/admin..;x/y", "/admin/y"))),
        ("/a.b.", Ok(("/a.b.", "/a.b"))),
        ("/%20admin", Ok(("/%20admin", "/%20admin"))),
        ("/..;/admin", Err(DotSegmentParameter)),
        ("/public/..;/admin", Err(DotSegmentParameter)),
        ("/.;/admin", Err(DotSegmentParameter)),
        ("/admin/..;", Err(DotSegmentParameter)),
        ("/public/.;x/../admin", Err(DotSegmentParameter)),
        ("/a/..;x/../b", Err(DotSegmentParameter)),
        ("/;x/admin", Ok(("/;x/admin", "/admin"))),
        ("/admin;foo/x", Ok(("/admin;foo/x", "/admin/x"))),
        ("/admin/;x", Ok(("/admin/;x", "/admin/"))),
        ("/admin;", Ok(("/admin;", "/admin"))),
        ("/;", Ok(("/;", "/"))),
        ("/;../admin", Ok(("/;../admin", "/admin"))),
        ("/a;b=c;d/e", Ok(("/a;b=c;d/e", "/a/e"))),
        ("/admin;x/../public", Ok(("/public", "/public"))),
        ("/admin%3bx", Err(EncodedSemicolon)),
        ("/..%3B/admin", Err(EncodedSemicolon)),
        // NUL and control characters.
        ("/admin%00.html", Err(Nul)),
        ("/%00", Err(Nul)),
        ("/admin\0", Err(Nul)),
        ("/a%09b", Err(ControlCharacter)),
        ("/a%0d%0aSet-Cookie:x", Err(ControlCharacter)),
        ("/a%0A", Err(ControlCharacter)),
        ("/a%7f", Err(ControlCharacter)),
        ("/a%C2%85", Err(ControlCharacter)),
        ("/a\x01", Err(ControlCharacter)),
        ("/a\x7f", Err(ControlCharacter)),
        // Raw whitespace.
        ("/a\tb", Err(Whitespace)),
        ("/a b", Err(Whitespace)),
        ("/a\r\nb", Err(Whitespace)),
        ("/admin ", Err(Whitespace)),
        ("/a%20b", Ok(("/a%20b", "/a%20b"))),
        // UTF-8.
        ("/%C0%AE%C0%AE/admin", Err(NotUtf8)),
        ("/%C0%AF", Err(NotUtf8)),
        ("/%E0%80%AE", Err(NotUtf8)),
        ("/%80", Err(NotUtf8)),
        ("/%FF", Err(NotUtf8)),
        ("/%ED%A0%80", Err(NotUtf8)),
        ("/%F4%90%80%80", Err(NotUtf8)),
        ("/caf%C3", Err(NotUtf8)),
        ("/caf%C3a%A9", Err(NotUtf8)),
        ("/caf%C3/%A9", Err(NotUtf8)),
        ("/caf%C3%A9", Ok(("/caf%C3%A9", "/caf%C3%A9"))),
        ("/caf%c3%a9", Ok(("/caf%C3%A9", "/caf%C3%A9"))),
        ("/%F0%9F%A6%80", Ok(("/%F0%9F%A6%80", "/%F0%9F%A6%80"))),
        ("/caf\u{e9}", Err(RawNonAscii)),
        // Delimiter look-alikes.
        ("/admin%EF%BC%8Fx", Err(LookalikeCharacter)),
        ("/%EF%BC%8E%EF%BC%8E/admin", Err(LookalikeCharacter)),
        ("/a%E2%88%95b", Err(LookalikeCharacter)),
        ("/%CD%BE", Err(LookalikeCharacter)),
        // Case.
        ("/ADMIN", Ok(("/ADMIN", "/ADMIN"))),
        ("/Admin", Ok(("/Admin", "/Admin"))),
        ("/%7e", Ok(("/~", "/~"))),
        ("/%7Euser", Ok(("/~user", "/~user"))),
        ("/%41dmin", Ok(("/Admin", "/Admin"))),
        ("/%61%64%6d%69%6e", Ok(("/admin", "/admin"))),
        ("/a%3a", Ok(("/a%3A", "/a:"))),
        ("/items%3Abatch", Ok(("/items%3Abatch", "/items:batch"))),
        (
            "/users/a%40b.com",
            Ok(("/users/a%40b.com", "/users/a@b.com")),
        ),
        ("/C%2b%2B;x", Ok(("/C%2B%2B;x", "/C++"))),
        (
            "/a%2A%21%24%26%27%28%29%2C%3D",
            Ok(("/a%2A%21%24%26%27%28%29%2C%3D", "/a*!$&'(),=")),
        ),
        // Dot segments.
        ("/admin/../public", Ok(("/public", "/public"))),
        ("/public/../admin", Ok(("/admin", "/admin"))),
        ("/admin/.", Ok(("/admin/", "/admin/"))),
        ("/admin/..", Ok(("/", "/"))),
        ("/a/./b", Ok(("/a/b", "/a/b"))),
        ("/a/b/../c", Ok(("/a/c", "/a/c"))),
        ("/../a", Ok(("/a", "/a"))),
        ("/../../..", Ok(("/", "/"))),
        ("/a/b/..", Ok(("/a/", "/a/"))),
        ("/a/b/../", Ok(("/a/", "/a/"))),
        ("/a//../b", Ok(("/b", "/b"))),
        ("/./admin", Ok(("/admin", "/admin"))),
        ("/...", Err(DotLikeSegment)),
        ("/a/..../b", Err(DotLikeSegment)),
        ("/..%20/admin", Err(DotLikeSegment)),
        ("/.%20./admin", Err(DotLikeSegment)),
        ("/%2e%2e%20/admin", Err(DotLikeSegment)),
        ("/...;x/admin", Err(DotLikeSegment)),
        ("/%20/admin", Err(DotLikeSegment)),
        ("/admin/%20%20;x", Err(DotLikeSegment)),
        (
            "/Washington,_D.C.",
            Ok(("/Washington,_D.C.", "/Washington,_D.C")),
        ),
        ("/.hidden/..x", Ok(("/.hidden/..x", "/.hidden/..x"))),
        // Fragments and query markers.
        ("/admin#x", Err(Fragment)),
        ("/#", Err(Fragment)),
        ("/admin%23x", Ok(("/admin%23x", "/admin%23x"))),
        ("/admin?x=1", Err(QuestionMark)),
        ("/a%3fb", Ok(("/a%3Fb", "/a%3Fb"))),
        // Malformed percent-encoding.
        ("/%", Err(BadPercentEncoding)),
        ("/%4", Err(BadPercentEncoding)),
        ("/%zz", Err(BadPercentEncoding)),
        ("/%4g", Err(BadPercentEncoding)),
        ("/%%32%65", Err(BadPercentEncoding)),
        ("/%u002e%u002e/admin", Err(BadPercentEncoding)),
        ("/%\u{e9}", Err(BadPercentEncoding)),
        // Other characters.
        ("/a{b}", Err(InvalidCharacter)),
        ("/a|b", Err(InvalidCharacter)),
        ("/a\"b", Err(InvalidCharacter)),
        ("/a<b>", Err(InvalidCharacter)),
        ("/a[0]", Err(InvalidCharacter)),
        ("/a%7Bb%7D", Ok(("/a%7Bb%7D", "/a%7Bb%7D"))),
        ("/a%25%7B", Ok(("/a%25%7B", "/a%25%7B"))),
        (
            "/a:b@c!$&'()*+,=",
            Ok(("/a:b@c!$&'()*+,=", "/a:b@c!$&'()*+,=")),
        ),
        ("/-._~", Ok(("/-._~", "/-._~"))),
    ];

    /// Routes used to check that the forwarded path matches like `for_matching()`.
    const SAMPLE_ROUTES: &[&str] = &[
        "/",
        "/admin",
        "/public",
        "/a",
        "/a/b",
        "/Admin",
        "/caf%C3%A9",
    ];

    fn actual(raw: &str) -> Result<(String, String), AmbiguousPath> {
        normalize(raw).map(|n| (n.forward().to_owned(), n.for_matching().to_owned()))
    }

    #[test]
    fn hostile_inputs_table() {
        assert!(CASES.len() >= 50);
        let mut failures = Vec::new();
        for (raw, expected) in CASES {
            let expected = expected.map(|(f, m)| (f.to_owned(), m.to_owned()));
            let got = actual(raw);
            if got != expected {
                failures.push(format!("{raw:?}: expected {expected:?}, got {got:?}"));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn normalisation_is_idempotent_on_table() {
        for (raw, _) in CASES {
            if let Ok(n) = normalize(raw) {
                assert_eq!(normalize(n.forward()), Ok(n.clone()), "raw {raw:?}");
            }
        }
    }

    #[test]
    fn forward_matches_same_routes_as_for_matching_on_table() {
        for (raw, _) in CASES {
            let Ok(n) = normalize(raw) else { continue };
            let again = normalize(n.forward()).expect("forward must renormalise");
            for route in SAMPLE_ROUTES {
                for ci in [false, true] {
                    assert_eq!(
                        prefix_matches(route, again.for_matching(), ci),
                        prefix_matches(route, n.for_matching(), ci),
                        "raw {raw:?} route {route:?} ci {ci}"
                    );
                }
            }
        }
    }

    #[test]
    fn error_display_never_contains_the_path() {
        for (raw, _) in CASES {
            if let Err(e) = normalize(raw) {
                let msg = e.to_string();
                assert!(!msg.is_empty());
                assert!(raw.len() < 3 || !msg.contains(raw), "{msg}");
            }
        }
    }

    #[test]
    fn prefix_matching_respects_segment_boundaries() {
        let cases: &[(&str, &str, bool, bool)] = &[
            ("/admin", "/admin", false, true),
            ("/admin", "/admin/", false, true),
            ("/admin", "/admin/x", false, true),
            ("/admin", "/administrator", false, false),
            ("/admin", "/admi", false, false),
            ("/admin", "/", false, false),
            ("/admin", "/public/admin", false, false),
            ("/admin", "/ADMIN", false, false),
            ("/admin", "/ADMIN", true, true),
            ("/admin", "/Admin/x", true, true),
            ("/admin", "/ADMINISTRATOR", true, false),
            ("/a/b", "/a/b/c", false, true),
            ("/a/b", "/a/bc", false, false),
            ("/a/b", "/a", false, false),
            ("/", "/", false, true),
            ("/", "/anything/at/all", false, true),
            ("/", "/x", true, true),
            // Defensive: non-canonical input.
            ("/admin/", "/admin/x", false, true),
            ("/admin/", "/administrator", false, false),
            ("admin", "/admin", false, false),
            ("/admin", "admin", false, false),
            ("", "/", false, false),
            ("/", "", false, false),
            // Non-ASCII (encoded) and case-insensitivity only affects ASCII.
            ("/caf%C3%A9", "/caf%C3%A9/x", false, true),
            ("/CAF%C3%A9", "/caf%C3%A9", true, true),
        ];
        for &(route, path, ci, expected) in cases {
            assert_eq!(
                prefix_matches(route, path, ci),
                expected,
                "route {route:?} path {path:?} ci {ci}"
            );
        }
    }

    #[test]
    fn prefix_matching_after_normalisation() {
        let matches = |raw: &str, route: &str, ci: bool| {
            let n = normalize(raw).expect("valid path");
            prefix_matches(route, n.for_matching(), ci)
        };
        assert!(matches("/admin;x", "/admin", false));
        assert!(matches("/admin;jsessionid=1/users", "/admin", false));
        assert!(matches("/;x/admin", "/admin", false));
        assert!(matches("//admin", "/admin", false));
        assert!(matches("/public/../admin", "/admin", false));
        assert!(matches("/%61dmin", "/admin", false));
        assert!(!matches("/admin/../public", "/admin", false));
        assert!(!matches("/administrator;x", "/admin", false));
        assert!(!matches("/ADMIN", "/admin", false));
        assert!(matches("/ADMIN;x/", "/admin", true));
        assert!(matches("/%41DMIN", "/admin", true));
        assert!(matches("/api/items%3Abatch", "/api/items:batch", false));
        assert_eq!(normalize("/api/items%3Bbatch/x"), Err(EncodedSemicolon));
    }

    /// The longest matching route wins; checks that boundaries make this unambiguous.
    #[test]
    fn longest_matching_route_wins() {
        let routes = ["/", "/admin", "/admin/public", "/api"];
        let pick = |raw: &str| {
            let n = normalize(raw).expect("valid path");
            routes
                .iter()
                .filter(|r| prefix_matches(r, n.for_matching(), false))
                .max_by_key(|r| r.len())
                .copied()
        };
        assert_eq!(pick("/admin/public/x"), Some("/admin/public"));
        assert_eq!(pick("/admin/publicity"), Some("/admin"));
        assert_eq!(pick("/admin;x/public;y/"), Some("/admin/public"));
        assert_eq!(pick("/apiv2"), Some("/"));
        assert_eq!(pick("/api/../admin"), Some("/admin"));
    }

    #[test]
    fn canonical_route_paths() {
        let ok: &[(&str, &str)] = &[
            ("/", "/"),
            ("//", "/"),
            ("/admin", "/admin"),
            ("/admin/", "/admin"),
            ("//admin//x//", "/admin/x"),
            ("/Admin", "/Admin"),
            ("/a:b@c", "/a:b@c"),
            ("/a.b/.x", "/a.b/.x"),
            ("/items:batch", "/items:batch"),
            ("/caf\u{e9}", "/caf%C3%A9"),
            ("/a{b}", "/a%7Bb%7D"),
        ];
        for &(input, expected) in ok {
            assert_eq!(
                canonical_route_path(input).as_deref(),
                Ok(expected),
                "{input:?}"
            );
        }
        let bad = [
            "",
            "admin",
            "*",
            "http://x/admin",
            "/admin/.",
            "/admin/..",
            "/./admin",
            "/a%2fb",
            "/caf%C3%A9",
            "/a\\b",
            "/admin;x",
            "/admin\0",
            "/admin\n",
            "/admin\u{85}",
            "/admin#x",
            "/admin?x",
            "/admin ",
            "/a\tb",
            "/a\u{FF0F}b",
            "/admin/*",
            "*",
            // Requests are matched without trailing dots: such a route could never match.
            "/admin.",
            "/v1./x",
            "/a.../b",
        ];
        for input in bad {
            let err = canonical_route_path(input).expect_err(input);
            assert!(err.contains("expected") || err.contains("must"), "{err}");
        }
    }

    /// A canonical route is itself a normalised path, so it matches exactly the
    /// requests that spell it (in any equivalent way).
    #[test]
    fn canonical_routes_are_normal_paths() {
        for input in [
            "/",
            "/admin/",
            "//a//b",
            "/caf\u{e9}",
            "/a{b}",
            "/~x",
            "/a:b",
            "/C++",
        ] {
            let route = canonical_route_path(input).expect(input);
            let n = normalize(&route).expect(input);
            assert_eq!(n.forward(), route);
            assert_eq!(n.for_matching(), route);
            assert!(prefix_matches(&route, n.for_matching(), false));
        }
    }

    /// Minimal deterministic xorshift generator (keeps tests std-only).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            let index = usize::try_from(self.next() % items.len() as u64).unwrap_or(0);
            items.get(index).copied().unwrap_or("")
        }
    }

    const FUZZ_TOKENS: &[&str] = &[
        "/",
        "/",
        "/",
        ".",
        "..",
        "...",
        "%2e",
        "%2E",
        "%2f",
        "%25",
        "%252e",
        "%",
        ";",
        ";x",
        "a",
        "A",
        "admin",
        "%41",
        "%61",
        "%3b",
        "%C3%A9",
        "%C3",
        "%A9",
        "%C0%AE",
        "\\",
        "%5c",
        "#",
        "?",
        "~",
        "%7e",
        "%00",
        " ",
        "2e",
        "2f",
        "%3A",
        "%20",
        "{",
        "\u{e9}",
        "%EF%BC%8F",
        "%e2%80%a4",
        "%3a",
        "%40",
        "%2B",
        "%20",
        "@",
        ":",
    ];

    /// Lenient single-pass percent-decoder that models a sloppy upstream.
    fn decode_once(input: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(input.len());
        let mut i = 0;
        while let Some(&b) = input.get(i) {
            let escape = input
                .get(i + 1..i + 3)
                .and_then(|d| parse_escape(Some(d)).ok());
            match (b, escape) {
                (b'%', Some(value)) => {
                    out.push(value);
                    i += 3;
                }
                _ => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        out
    }

    /// What an upstream that decodes `rounds` times, then splits on '/' and '\' and
    /// strips parameters, would consider dot segments.
    fn has_dot_segment_after_decoding(forward: &str, rounds: usize) -> bool {
        let mut bytes = forward.as_bytes().to_vec();
        for _ in 0..rounds {
            bytes = decode_once(&bytes);
        }
        bytes
            .split(|&b| b == b'/' || b == b'\\')
            .map(|seg| seg.split(|&b| b == b';').next().unwrap_or(&[]))
            .any(|seg| seg == b"." || seg == b"..")
    }

    fn check_invariants(raw: &str, n: &NormalizedPath) {
        let forward = n.forward();
        let matching = n.for_matching();
        assert_eq!(normalize(forward), Ok(n.clone()), "idempotence for {raw:?}");
        assert!(
            forward.starts_with('/') && matching.starts_with('/'),
            "{raw:?}"
        );
        assert!(
            !forward.contains("//") && !matching.contains("//"),
            "{raw:?}"
        );
        assert!(!matching.contains(';'), "{raw:?}");
        assert!(forward.is_ascii(), "{raw:?}");
        for rounds in 0..3 {
            assert!(
                !has_dot_segment_after_decoding(forward, rounds),
                "{raw:?} x{rounds}"
            );
        }
        let once = decode_once(forward.as_bytes());
        // A second round of decoding (a double-decoding upstream) changes nothing.
        assert_eq!(decode_once(&once), once, "{raw:?}");
        let count = |bytes: &[u8], wanted: u8| bytes.iter().filter(|&&b| b == wanted).count();
        assert_eq!(
            count(&once, b'/'),
            count(forward.as_bytes(), b'/'),
            "{raw:?}"
        );
        assert_eq!(
            count(&once, b';'),
            count(forward.as_bytes(), b';'),
            "{raw:?}"
        );
        assert!(!once.contains(&b'\\') && !once.contains(&0), "{raw:?}");
        for route in SAMPLE_ROUTES {
            let renormalised = normalize(forward).map(|r| r.for_matching().to_owned());
            assert_eq!(
                renormalised.map(|m| prefix_matches(route, &m, false)),
                Ok(prefix_matches(route, matching, false)),
                "{raw:?} {route:?}"
            );
        }
    }

    /// Random concatenations of hostile tokens: every accepted path must satisfy
    /// the invariants the proxy relies on.
    #[test]
    fn generated_paths_keep_invariants() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut accepted = 0;
        for _ in 0..20_000 {
            let len = 1 + rng.next() % 10;
            let mut raw = String::from("/");
            for _ in 0..len {
                raw.push_str(rng.pick(FUZZ_TOKENS));
            }
            if let Ok(n) = normalize(&raw) {
                accepted += 1;
                check_invariants(&raw, &n);
            }
        }
        assert!(accepted > 1_000, "generator too hostile: {accepted}");
    }
}

/// Property tests (proptest): the normaliser's invariants over generated hostile paths, and
/// the route decision the proxy makes against a nested route table with case-insensitive
/// routes, checked against the real `policy::resolve` as well as a local model.
#[cfg(test)]
mod proptests {
    use std::sync::{Arc, OnceLock};

    use proptest::prelude::*;

    use super::*;
    use crate::config::{Config, Route};
    use crate::policy::{self, Target};

    /// Building blocks of generated paths: separators, dot segments in every spelling,
    /// parameters, escapes (valid, broken, double, overlong, look-alike), case variants of
    /// route names, and a few raw bytes the normaliser must refuse.
    const TOKENS: &[&str] = &[
        "/",
        "/",
        "/",
        "/",
        "//",
        ".",
        "..",
        "...",
        "%2e",
        "%2E",
        "%2f",
        "%2F",
        "%5c",
        "%25",
        "%252e",
        "%",
        "%4",
        "%zz",
        ";",
        ";x",
        ";jsessionid=1",
        "..;",
        ".;",
        "%3b",
        "%3B",
        "admin",
        "ADMIN",
        "Admin",
        "public",
        "public-ish",
        "Public-Ish",
        "deep",
        "secret",
        "SECRET",
        "sEcReT",
        "inner",
        "INNER",
        "api",
        "items:batch",
        "items%3Abatch",
        "caf",
        "%C3%A9",
        "%c3%a9",
        "%C3",
        "%A9",
        "%C0%AE",
        "%E0%80%AE",
        "%EF%BC%8F",
        "%EF%BC%8E",
        "%e2%80%a4",
        "%41",
        "%61",
        "%64",
        "%6D",
        "%7e",
        "~",
        "%20",
        " ",
        "\t",
        "%09",
        "%00",
        "\0",
        "\\",
        "#",
        "?",
        "%23",
        "%3F",
        "%3a",
        "%40",
        "@",
        ":",
        "%2B",
        "+",
        "-",
        "_",
        "x",
        "a",
        "1",
        "{",
        "\u{e9}",
        "\u{ff0f}",
    ];

    /// A path from 0..12 tokens after a leading slash (sometimes without one), mixed with
    /// short arbitrary printable-ASCII and arbitrary-Unicode fragments.
    fn hostile_path() -> impl Strategy<Value = String> {
        let token = prop_oneof![
            6 => proptest::sample::select(TOKENS).prop_map(str::to_owned),
            1 => "[ -~]{0,4}",
            1 => any::<String>().prop_map(|s| s.chars().take(3).collect::<String>()),
        ];
        (
            prop_oneof![9 => Just("/"), 1 => Just("")],
            proptest::collection::vec(token, 0..12),
        )
            .prop_map(|(root, tokens)| format!("{root}{}", tokens.concat()))
    }

    /// Nested routes, some case-insensitive. (path, case_insensitive).
    const ROUTES: &[(&str, bool)] = &[
        ("/", false),
        ("/public", false),
        ("/admin", false),
        ("/admin/public-ish", false),
        ("/admin/public-ish/deep", false),
        ("/secret", true),
        ("/secret/inner", false),
        ("/api", true),
        ("/api/public", false),
        ("/items:batch", false),
        ("/caf\u{e9}", false),
    ];

    /// The route table above, compiled by the real config loader.
    fn config() -> &'static Config {
        static CONFIG: OnceLock<Config> = OnceLock::new();
        CONFIG.get_or_init(|| {
            let mut text = String::from(
                "[server]\nlisten = [\"127.0.0.1:0\"]\n[upstream]\nurl = \"http://127.0.0.1:9\"\n",
            );
            for (path, ci) in ROUTES {
                text.push_str(&format!(
                    "[[route]]\npath = \"{path}\"\nauth = []\ncase_insensitive = {ci}\n"
                ));
            }
            Config::from_toml(std::path::Path::new("/proptest/portcullis.toml"), &text)
                .expect("route table config")
        })
    }

    /// What `policy::resolve` decides for a raw path: `None` when refused as ambiguous, else
    /// the forwarded path and the route (by its canonical path; `"<reserved>"`, `"<none>"`).
    fn decide(raw: &str) -> Option<(NormalizedPath, String)> {
        let (normalized, target) = policy::resolve(&config().routes, raw).ok()?;
        let route = match target {
            Target::Reserved => "<reserved>".to_owned(),
            Target::NoRoute => "<none>".to_owned(),
            Target::Route(route) => route_name(route),
        };
        Some((normalized, route))
    }

    fn route_name(route: &Arc<Route>) -> String {
        route.path.as_str().to_owned()
    }

    /// Longest-prefix choice over [`ROUTES`] on a matching-form path, with the local
    /// `prefix_matches` (a model independent of `RouteTable`'s ordering).
    fn model_route(matching: &str) -> Option<String> {
        ROUTES
            .iter()
            .map(|&(path, ci)| (canonical_route_path(path).expect("route"), ci))
            .filter(|(path, ci)| prefix_matches(path, matching, *ci))
            .max_by_key(|(path, ci)| (path.len(), !ci))
            .map(|(path, _)| path)
    }

    /// Percent-decodes every valid escape once (a lenient upstream).
    fn decode_all(text: &str) -> Vec<u8> {
        let bytes = text.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while let Some(&byte) = bytes.get(i) {
            match (byte, parse_escape(bytes.get(i + 1..i + 3))) {
                (b'%', Ok(value)) => {
                    out.push(value);
                    i += 3;
                }
                _ => {
                    out.push(byte);
                    i += 1;
                }
            }
        }
        out
    }

    /// How an upstream that decodes once, drops `;` parameters, trims trailing dots and
    /// spaces (Windows) and merges slashes reads a forwarded path, as decoded segments.
    fn upstream_reading(forward: &str) -> Vec<Vec<u8>> {
        decode_all(forward)
            .split(|&b| b == b'/')
            .map(|segment| {
                let mut segment = segment.split(|&b| b == b';').next().unwrap_or(&[]);
                while let [rest @ .., b'.' | b' '] = segment {
                    segment = rest;
                }
                segment.to_vec()
            })
            .filter(|segment| !segment.is_empty())
            .collect()
    }

    /// The route that upstream reading falls under (routes decoded the same way).
    fn upstream_route(forward: &str) -> Option<String> {
        let reading = upstream_reading(forward);
        ROUTES
            .iter()
            .map(|&(path, ci)| (canonical_route_path(path).expect("route"), ci))
            .filter(|(path, ci)| {
                let route = upstream_reading(path);
                route.len() <= reading.len()
                    && route.iter().zip(&reading).all(|(r, s)| {
                        if *ci {
                            r.eq_ignore_ascii_case(s)
                        } else {
                            r == s
                        }
                    })
            })
            .max_by_key(|(path, ci)| (path.len(), !ci))
            .map(|(path, _)| path)
    }

    fn is_dot(segment: &str) -> bool {
        segment == "." || segment == ".."
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

        /// normalize(n.forward()) == n.
        #[test]
        fn idempotent(raw in hostile_path()) {
            if let Ok(n) = normalize(&raw) {
                prop_assert_eq!(normalize(n.forward()), Ok(n.clone()), "raw {:?}", raw);
            }
        }

        /// Neither form ever has a `.` or `..` segment, even with its parameters removed,
        /// and both are ASCII and start with `/`.
        #[test]
        fn never_dot_segments(raw in hostile_path()) {
            if let Ok(n) = normalize(&raw) {
                for form in [n.forward(), n.for_matching()] {
                    prop_assert!(form.starts_with('/') && form.is_ascii(), "{:?} -> {:?}", raw, form);
                    for segment in form.split('/') {
                        let bare = segment.split(';').next().unwrap_or("");
                        prop_assert!(!is_dot(segment) && !is_dot(bare), "{:?} -> {:?}", raw, form);
                    }
                }
            }
        }

        /// The matching form has no parameters and no empty segments; the forwarded form no
        /// empty segments either (so an upstream cannot merge slashes differently).
        #[test]
        fn matching_form_is_clean(raw in hostile_path()) {
            if let Ok(n) = normalize(&raw) {
                prop_assert!(!n.for_matching().contains(';'), "{:?} -> {:?}", raw, n.for_matching());
                prop_assert!(!n.for_matching().contains("//"), "{:?} -> {:?}", raw, n.for_matching());
                prop_assert!(!n.forward().contains("//"), "{:?} -> {:?}", raw, n.forward());
            }
        }

        /// The route checked is the route the forwarded path falls under: re-normalising
        /// what the upstream receives picks the same route in the real route table, the
        /// local model agrees with the table, and an upstream that decodes once and drops
        /// parameters reads it under that same route.
        #[test]
        fn forwarded_path_keeps_its_route(raw in hostile_path()) {
            if let Some((n, route)) = decide(&raw) {
                let again = decide(n.forward());
                prop_assert_eq!(
                    again.as_ref().map(|(m, r)| (m.forward(), r.as_str())),
                    Some((n.forward(), route.as_str())),
                    "raw {:?}", raw
                );
                if route != "<reserved>" {
                    prop_assert_eq!(model_route(n.for_matching()), Some(route.clone()), "raw {:?}", raw);
                    prop_assert_eq!(upstream_route(n.forward()), Some(route), "raw {:?} -> {:?}", raw, n.forward());
                }
            }
        }

        /// Any spelling of a protected route's path with junk appended never leaves that
        /// route for a shorter one unless it walks out with a `..`.
        #[test]
        fn protected_prefix_is_sticky(
            route in proptest::sample::select(&ROUTES[1..]),
            tail in proptest::collection::vec(
                proptest::sample::select(&["/x", "/", ";p", ";p=1", "/.", "/./y", "//z", "/%41", "/%3A"][..]), 0..5),
        ) {
            let (path, ci) = route;
            let canonical = canonical_route_path(path).expect("route");
            let raw = format!("{canonical}{}", tail.concat());
            // A dot segment carrying a parameter (`/.;p`) is refused as ambiguous on purpose;
            // nothing else in these tails may be.
            let Some((n, chosen)) = decide(&raw) else {
                prop_assert!(raw.contains(".;"), "{:?} refused as ambiguous", raw);
                return Ok(());
            };
            prop_assert!(prefix_matches(&canonical, n.for_matching(), ci), "{:?}", raw);
            prop_assert!(chosen.len() >= canonical.len(), "{:?} chose {:?}", raw, chosen);
        }
    }
}
