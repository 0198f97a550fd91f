//! What routes are matched on: the matching form of a normalised path, the segment-boundary
//! prefix match, and the canonical form of a route path from the config.

use super::{
    is_allowed_raw, is_delimiter_lookalike, is_dot_segment, is_unreserved, join_segments,
    parse_escape, push_escape,
};

/// Removes `;` parameters from every segment of an already normalised path and
/// merges the empty segments this leaves (`/;x/admin` -> `/admin`), because
/// many upstreams ignore parameters when they route. Trailing dots and spaces are
/// removed from each segment too (`/admin.`, `/admin%20`, `/admin..;x` -> `/admin`),
/// because Windows-style upstreams (IIS, and anything serving files from NTFS) drop
/// them when they open the file. Encoded `:`, `@` and sub-delimiters are also decoded
/// (see [`decode_match_equivalents`]).
pub(super) fn matching_form(forward: &str) -> String {
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
