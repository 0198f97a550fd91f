//! `WWW-Authenticate` challenges (RFC 7617, RFC 6750) and the `Allow` header.

use http::{HeaderValue, Method};

use crate::auth::Scheme;

/// Writes `value` as an RFC 9110 quoted-string: `"` and `\` are escaped.
pub fn push_quoted(out: &mut String, value: &str) {
    out.push('"');
    for c in value.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

/// The bare challenges of a route, one per scheme in route order. Session contributes a
/// challenge only when it is the route's only scheme (SPEC §4).
pub fn for_route(schemes: &[Scheme], realm: &str) -> Vec<HeaderValue> {
    let only_session = schemes == [Scheme::Session];
    schemes
        .iter()
        .filter(|s| **s != Scheme::Session || only_session)
        .map(|scheme| to_value(challenge(*scheme, realm, &[])))
        .collect()
}

/// One challenge with extra auth-params (`error`, `error_description`, `scope`).
pub fn challenge(scheme: Scheme, realm: &str, params: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(32 + realm.len());
    out.push_str(match scheme {
        Scheme::Basic => "Basic",
        Scheme::Bearer => "Bearer",
        Scheme::Session => "Session",
    });
    out.push_str(" realm=");
    push_quoted(&mut out, realm);
    if scheme == Scheme::Basic {
        out.push_str(", charset=\"UTF-8\"");
    }
    for (name, value) in params {
        out.push_str(", ");
        out.push_str(name);
        out.push('=');
        push_quoted(&mut out, value);
    }
    out
}

/// Converts a challenge to a header value. Realms are checked for control characters at
/// load time, and non-ASCII text is carried as raw UTF-8 bytes (obs-text).
pub fn to_value(text: String) -> HeaderValue {
    HeaderValue::from_bytes(text.as_bytes())
        .unwrap_or_else(|_| HeaderValue::from_static("Basic realm=\"portcullis\""))
}

/// `Allow: GET, POST`
pub fn allow_header(methods: &[Method]) -> HeaderValue {
    let text: Vec<&str> = methods.iter().map(Method::as_str).collect();
    to_value(text.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_challenge_has_charset() {
        assert_eq!(
            challenge(Scheme::Basic, "Admin area", &[]),
            r#"Basic realm="Admin area", charset="UTF-8""#
        );
    }

    #[test]
    fn quotes_and_backslashes_are_escaped() {
        assert_eq!(
            challenge(
                Scheme::Bearer,
                r#"a "quoted" \ realm"#,
                &[("error", "invalid_token")]
            ),
            r#"Bearer realm="a \"quoted\" \\ realm", error="invalid_token""#
        );
    }

    #[test]
    fn session_challenge_only_when_alone() {
        let both = for_route(&[Scheme::Session, Scheme::Basic], "r");
        assert_eq!(both.len(), 1);
        assert!(both[0].to_str().unwrap().starts_with("Basic"));
        let alone = for_route(&[Scheme::Session], "r");
        assert_eq!(alone[0], "Session realm=\"r\"");
    }

    #[test]
    fn route_order_is_kept() {
        let values = for_route(&[Scheme::Bearer, Scheme::Basic], "r");
        assert!(values[0].to_str().unwrap().starts_with("Bearer"));
        assert!(values[1].to_str().unwrap().starts_with("Basic"));
    }
}
