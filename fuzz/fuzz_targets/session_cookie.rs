//! The session cookie parser (src/session/mod.rs: `cookie_value`, `strip_cookie`).
//!
//! Input: one `Cookie` header value per line (any bytes a header value may hold).
//! Properties: never panics; a value found is a slice of a header; after `strip_cookie`, the
//! proxy finds no session cookie, and neither does a lenient upstream parser (Go's
//! net/http, Python, Node: pairs split on `;`, names trimmed of whitespace), so the session id
//! never reaches the upstream; and every other cookie survives the stripping.
#![no_main]

use http::header::COOKIE;
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use portcullis::session::{cookie_value, strip_cookie};

const NAME: &str = "portcullis_session";

/// `name=value` pairs as a lenient upstream reads them: split on `;`, trimmed, names trimmed.
fn lenient_pairs(headers: &HeaderMap) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut pairs = Vec::new();
    for value in headers.get_all(COOKIE) {
        for part in value.as_bytes().split(|&b| b == b';') {
            let part = part.trim_ascii();
            if part.is_empty() {
                continue;
            }
            let (name, value) = match part.iter().position(|&b| b == b'=') {
                Some(i) => (&part[..i], &part[i + 1..]),
                None => (part, &b""[..]),
            };
            pairs.push((name.trim_ascii().to_vec(), value.trim_ascii().to_vec()));
        }
    }
    pairs
}

fuzz_target!(|data: &[u8]| {
    let mut headers = HeaderMap::new();
    for line in data.split(|&b| b == b'\n').take(4) {
        if let Ok(value) = HeaderValue::from_bytes(line) {
            headers.append(COOKIE, value);
        }
    }
    if let Some(found) = cookie_value(&headers, NAME) {
        assert!(headers
            .get_all(COOKIE)
            .iter()
            .any(|v| v.to_str().is_ok_and(|t| t.contains(found))));
    }
    let before = lenient_pairs(&headers);
    let mut stripped = headers.clone();
    strip_cookie(&mut stripped, NAME);
    assert_eq!(
        cookie_value(&stripped, NAME),
        None,
        "{headers:?} -> {stripped:?}"
    );
    let after = lenient_pairs(&stripped);
    assert!(
        after.iter().all(|(name, _)| name != NAME.as_bytes()),
        "the session cookie survives stripping, as an upstream reads it: {headers:?} -> {stripped:?}"
    );
    // Every other cookie is kept, in order.
    let others: Vec<_> = before
        .into_iter()
        .filter(|(name, _)| name != NAME.as_bytes())
        .collect();
    assert_eq!(others, after, "{headers:?} -> {stripped:?}");
});
