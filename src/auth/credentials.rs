//! Parsing the `Authorization` header. Every byte of it is hostile: nothing here allocates
//! more than the header's own size, and nothing here logs what it read.

use std::fmt;

use base64::Engine;
use http::header::AUTHORIZATION;
use http::HeaderMap;

use crate::error::{Denial, DenyReason};

/// The credential a request presents.
#[derive(Debug)]
pub enum Credential<'a> {
    /// No `Authorization` header.
    None,
    /// `Basic …`: the decoded user and password, or why they could not be decoded.
    Basic(Result<BasicCredential, &'static str>),
    /// `Bearer …`: the token, or why it is malformed.
    Bearer(Result<&'a str, &'static str>),
    /// Another scheme: a registered one by name, or an unrecognised first word.
    Other(OtherScheme),
}

/// A scheme other than Basic and Bearer, as it may be logged. A first word that is no known
/// scheme name is often the secret itself (`Authorization: ghp_…`, a token pasted without
/// `Bearer`), so not one character of it is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtherScheme {
    /// A registered scheme, in its registered spelling (never the client's bytes).
    Known(&'static str),
    /// Anything else.
    Unrecognised,
}

/// HTTP authentication schemes in the IANA registry (RFC 9110 §16.4), plus the unregistered
/// ones in wide use, in their usual spelling. Basic and Bearer are parsed, not named here.
const KNOWN_SCHEMES: [&str; 14] = [
    "AWS4-HMAC-SHA256",
    "Concealed",
    "Digest",
    "DPoP",
    "GNAP",
    "HOBA",
    "Mutual",
    "Negotiate",
    "NTLM",
    "OAuth",
    "PrivateToken",
    "SCRAM-SHA-1",
    "SCRAM-SHA-256",
    "vapid",
];

impl fmt::Display for OtherScheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OtherScheme::Known(name) => write!(f, "a {name} credential"),
            OtherScheme::Unrecognised => f.write_str("a credential of an unrecognised scheme"),
        }
    }
}

/// Decoded Basic credentials.
pub struct BasicCredential {
    /// The user name (UTF-8).
    pub user: String,
    /// The password bytes (UTF-8 checked).
    pub password: String,
}

impl fmt::Debug for BasicCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BasicCredential")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Reads the request's credential. Two `Authorization` headers are refused outright, whatever
/// the route: which one a backend would read is anyone's guess.
pub fn parse(headers: &HeaderMap) -> Result<Credential<'_>, Denial> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(Credential::None);
    };
    if values.next().is_some() {
        return Err(Denial::new(
            DenyReason::MalformedCredentials,
            "two Authorization headers",
        ));
    }
    let Ok(text) = value.to_str() else {
        return Err(Denial::new(
            DenyReason::MalformedCredentials,
            "Authorization header is not visible ASCII",
        ));
    };
    Ok(parse_value(text))
}

/// Splits `scheme SP credentials` and dispatches on the scheme, case-insensitively.
pub fn parse_value(text: &str) -> Credential<'_> {
    let (scheme, rest) = match text.find(' ') {
        Some(i) => (&text[..i], &text[i..]),
        None => (text, ""),
    };
    // RFC 9110 allows one or more spaces after the scheme.
    let rest = rest.trim_start_matches(' ');
    if scheme.eq_ignore_ascii_case("basic") {
        Credential::Basic(parse_basic(rest))
    } else if scheme.eq_ignore_ascii_case("bearer") {
        Credential::Bearer(parse_bearer(rest))
    } else {
        Credential::Other(other_scheme(scheme))
    }
}

fn other_scheme(scheme: &str) -> OtherScheme {
    KNOWN_SCHEMES
        .iter()
        .find(|known| known.eq_ignore_ascii_case(scheme))
        .map_or(OtherScheme::Unrecognised, |known| OtherScheme::Known(known))
}

/// RFC 7617: base64 of `user:password`, both UTF-8.
fn parse_basic(token: &str) -> Result<BasicCredential, &'static str> {
    if token.is_empty() {
        return Err("empty Basic credential");
    }
    let token = token.trim_end_matches(' ');
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(token)
        .map_err(|_| "Basic credential is not valid base64")?;
    let text = String::from_utf8(decoded).map_err(|_| "Basic credential is not UTF-8")?;
    let (user, password) = text
        .split_once(':')
        .ok_or("Basic credential has no ':' between user and password")?;
    if user.is_empty() {
        return Err("Basic credential has an empty user name");
    }
    if user.chars().any(char::is_control) || password.chars().any(char::is_control) {
        return Err("Basic credential contains control characters");
    }
    Ok(BasicCredential {
        user: user.to_string(),
        password: password.to_string(),
    })
}

/// RFC 6750 §2.1: `Bearer` 1*SP b64token, where b64token is
/// `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
fn parse_bearer(token: &str) -> Result<&str, &'static str> {
    let token = token.trim_end_matches(' ');
    if token.is_empty() {
        return Err("empty bearer token");
    }
    if token.contains(' ') {
        return Err("more than one bearer token");
    }
    let body = token.trim_end_matches('=');
    let valid = !body.is_empty()
        && body.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
        });
    if !valid {
        return Err("bearer token has characters outside the RFC 6750 token alphabet");
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn basic(text: &str) -> Result<BasicCredential, &'static str> {
        match parse_value(text) {
            Credential::Basic(b) => b,
            other => panic!("not basic: {other:?}"),
        }
    }

    #[test]
    fn basic_scheme_is_case_insensitive() {
        for scheme in ["Basic", "basic", "BASIC", "bAsIc"] {
            let cred = basic(&format!("{scheme} YWxpY2U6c2VjcmV0")).unwrap();
            assert_eq!(cred.user, "alice");
            assert_eq!(cred.password, "secret");
        }
    }

    #[test]
    fn basic_password_may_contain_colons_and_utf8() {
        // "bøb:pa:ss"
        let cred = basic("Basic YsO4YjpwYTpzcw==").unwrap();
        assert_eq!(cred.user, "bøb");
        assert_eq!(cred.password, "pa:ss");
    }

    #[test]
    fn malformed_basic_is_refused() {
        for bad in [
            "Basic",
            "Basic ",
            "Basic !!!",
            "Basic YWxpY2U=",
            "Basic OnB3",
            "Basic /w==",
        ] {
            assert!(basic(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bearer_tokens_follow_rfc6750() {
        let ok = |t: &str| matches!(parse_value(t), Credential::Bearer(Ok(_)));
        assert!(ok("Bearer abc.DEF-123_~+/=="));
        assert!(ok("bearer abc"));
        for bad in [
            "Bearer",
            "Bearer ",
            "Bearer a b",
            "Bearer a,b",
            "Bearer ==",
            "Bearer a\"b",
        ] {
            assert!(
                matches!(parse_value(bad), Credential::Bearer(Err(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn other_schemes_are_named_safely() {
        let other = |text: &str| match parse_value(text) {
            Credential::Other(scheme) => scheme,
            other => panic!("{other:?}"),
        };
        assert_eq!(other("dIgEsT username=x"), OtherScheme::Known("Digest"));
        assert_eq!(other("negotiate abc"), OtherScheme::Known("Negotiate"));
        // A bare token, long or short, or an unknown word before one: never quoted.
        for text in [
            "ghp_R3alS3cretT0k3nAbcdef",
            "sh0rt",
            "Token abc",
            "Digest2 x",
            "",
        ] {
            assert_eq!(other(text), OtherScheme::Unrecognised, "{text:?}");
            let shown = other(text).to_string();
            assert_eq!(shown, "a credential of an unrecognised scheme");
        }
    }

    #[test]
    fn two_authorization_headers_are_malformed() {
        let mut headers = HeaderMap::new();
        headers.append(
            AUTHORIZATION,
            HeaderValue::from_static("Basic YWxpY2U6c2VjcmV0"),
        );
        headers.append(AUTHORIZATION, HeaderValue::from_static("Bearer abc"));
        let denial = parse(&headers).unwrap_err();
        assert_eq!(denial.reason, DenyReason::MalformedCredentials);
        assert_eq!(denial.scheme, None);
    }

    #[test]
    fn debug_redacts_the_password() {
        let cred = basic("Basic YWxpY2U6c2VjcmV0").unwrap();
        assert!(!format!("{cred:?}").contains("secret"));
    }
}
