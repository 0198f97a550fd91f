//! The `Authorization` header parser (src/auth/credentials.rs).
//!
//! Properties: never panics, on any bytes a header value can hold; decoded Basic credentials
//! have a non-empty user without `:` and no control characters, and encode back to the same
//! user and password; a Bearer token is exactly a slice of the input in the RFC 6750 alphabet;
//! and any (user, password) pair encoded by a client is either decoded exactly or refused.
#![no_main]

use base64::Engine;
use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use portcullis::auth::credentials::{parse, parse_value, Credential};

fn check(text: &str, credential: &Credential<'_>) {
    match credential {
        Credential::Basic(Ok(basic)) => {
            assert!(!basic.user.is_empty(), "{text:?}");
            assert!(!basic.user.contains(':'), "{text:?}");
            assert!(!basic.user.chars().any(char::is_control), "{text:?}");
            assert!(!basic.password.chars().any(char::is_control), "{text:?}");
            let again = format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD
                    .encode(format!("{}:{}", basic.user, basic.password))
            );
            match parse_value(&again) {
                Credential::Basic(Ok(round)) => {
                    assert_eq!(round.user, basic.user);
                    assert_eq!(round.password, basic.password);
                }
                other => panic!("{text:?} decoded, but its re-encoding gives {other:?}"),
            }
        }
        Credential::Bearer(Ok(token)) => {
            assert!(!token.is_empty(), "{text:?}");
            assert!(text.contains(token), "{text:?}");
            let body = token.trim_end_matches('=');
            assert!(!body.is_empty(), "{text:?}");
            assert!(
                body.bytes().all(|b| b.is_ascii_alphanumeric()
                    || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')),
                "{text:?}"
            );
        }
        Credential::Basic(Err(why)) | Credential::Bearer(Err(why)) => assert!(!why.is_empty()),
        Credential::Other(name) => {
            let shown = format!("{name:?}");
            assert!(shown.len() <= 16 + 2, "{shown}");
        }
        Credential::None => panic!("parse_value never says None"),
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        check(text, &parse_value(text));
    }
    // As the proxy sees it: through a HeaderMap, one or two headers.
    let mut headers = HeaderMap::new();
    for piece in data.splitn(2, |&b| b == b'\n') {
        if let Ok(value) = HeaderValue::from_bytes(piece) {
            headers.append(AUTHORIZATION, value);
        }
    }
    match parse(&headers) {
        Ok(credential) => {
            if let Some(value) = headers.get(AUTHORIZATION) {
                check(
                    value.to_str().expect("parsed, so visible ASCII"),
                    &credential,
                );
            }
        }
        Err(denial) => assert!(
            headers.get_all(AUTHORIZATION).iter().count() >= 1,
            "{denial:?}"
        ),
    }
    // A client encoding any user and password: decoded exactly (split at the first `:`, as
    // RFC 7617 says: a user-id cannot contain one), or refused.
    if let Ok(text) = std::str::from_utf8(data) {
        let (user, password) = text.split_once('\u{1}').unwrap_or((text, ""));
        let joined = format!("{user}:{password}");
        let header = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(&joined)
        );
        let (user, password) = joined.split_once(':').expect("joined with a colon");
        let valid = !user.is_empty()
            && !user.chars().any(char::is_control)
            && !password.chars().any(char::is_control);
        match parse_value(&header) {
            Credential::Basic(Ok(basic)) => {
                assert!(valid, "{user:?} {password:?} accepted");
                assert_eq!(basic.user, user);
                assert_eq!(basic.password, password);
            }
            Credential::Basic(Err(_)) => assert!(!valid, "{user:?} {password:?} refused"),
            other => panic!("{other:?}"),
        }
    }
});
