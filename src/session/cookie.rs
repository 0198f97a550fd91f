//! The session cookie on the wire: its `<id>.<tag>` shape, finding it among a request's
//! cookies, and stripping it before forwarding.

use http::header::{HeaderValue, COOKIE};
use http::HeaderMap;
use sha2::{Digest, Sha256};

use crate::config::SessionSection;

use super::{SessionKey, UserTag, COOKIE_CHARS, ID_CHARS};

/// The store key a cookie value names, if the value has our shape (`<id>.<tag>`): the user's
/// tag and the SHA-256 of the id. Anything else (a pre-tag cookie included) names no session.
pub fn parse_cookie(value: &str) -> Option<SessionKey> {
    if value.len() != COOKIE_CHARS {
        return None;
    }
    let (id, tag) = value.split_once('.')?;
    if !well_formed_id(id) {
        return None;
    }
    Some(SessionKey {
        tag: UserTag::parse(tag)?,
        hash: Sha256::digest(id.as_bytes()).into(),
    })
}

pub(super) fn well_formed_id(value: &str) -> bool {
    value.len() == ID_CHARS
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The name session cookies are set and read under: `__Host-` + the configured name when the
/// prefix applies (Secure, no Domain).
pub fn cookie_name(config: &SessionSection) -> String {
    if config.cookie_secure && config.cookie_domain.is_empty() {
        format!("__Host-{}", config.cookie_name)
    } else {
        config.cookie_name.clone()
    }
}

/// The values of the cookies named `name` in the request's `Cookie` headers, in the order sent
/// (RFC 6265 §5.4 pairs).
pub fn cookie_values<'a, 'n>(
    headers: &'a HeaderMap,
    name: &'n str,
) -> impl Iterator<Item = &'a str> + use<'a, 'n> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(move |(n, _)| *n == name)
        .map(|(_, v)| v.trim_matches('"'))
}

/// Finds the first cookie by name in the request's `Cookie` headers.
pub fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    cookie_values(headers, name).next()
}

/// Drops `name` from every `Cookie` header, removing headers left empty.
///
/// Works on the raw bytes, so a header that also carries non-ASCII (obs-text) bytes is cleaned
/// too, and compares names trimmed of whitespace, the way upstream cookie parsers (Go's
/// net/http, Node, Python) read `portcullis_session =…`: the session id never reaches the
/// upstream in any spelling they would accept.
pub fn strip_cookie(headers: &mut HeaderMap, name: &str) {
    // Most requests carry no cookie of ours: leave their headers untouched without rebuilding.
    // (On the bytes: a value with obs-text is not `to_str`-able yet may still carry ours.)
    let ours = headers.get_all(COOKIE).iter().any(|v| {
        v.as_bytes()
            .windows(name.len().max(1))
            .any(|w| w == name.as_bytes())
    });
    if !ours {
        return;
    }
    let mut kept: Vec<HeaderValue> = Vec::new();
    let mut changed = false;
    for value in headers.get_all(COOKIE) {
        let mut pairs: Vec<&[u8]> = Vec::new();
        for pair in value.as_bytes().split(|&b| b == b';') {
            let pair = pair.trim_ascii();
            if pair.is_empty() {
                continue;
            }
            let pair_name = pair
                .iter()
                .position(|&b| b == b'=')
                .map_or(pair, |at| &pair[..at]);
            if pair_name.trim_ascii() == name.as_bytes() {
                changed = true;
            } else {
                pairs.push(pair);
            }
        }
        let rebuilt = pairs.join(&b"; "[..]);
        // A subset of a valid value joined by "; " is valid; never keep the original instead.
        if let Ok(v) = HeaderValue::from_bytes(&rebuilt) {
            if !rebuilt.is_empty() {
                kept.push(v);
            }
        }
    }
    if !changed {
        return;
    }
    headers.remove(COOKIE);
    for value in kept {
        headers.append(COOKIE, value);
    }
}
