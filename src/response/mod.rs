//! Responses the proxy makes itself: the status, challenges and a small body (HTML, JSON or
//! one line of text, chosen by `Accept`) for every refusal. Bodies name no internal detail.

pub mod challenge;

use bytes::Bytes;
use http::header::{
    HeaderValue, ACCEPT, ALLOW, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE,
};
use http::{HeaderMap, Response, StatusCode};
use http_body_util::Full;

use crate::auth::Scheme;
use crate::body::Body;
use crate::config::Route;
use crate::error::{DenyReason, FailReason, Refusal};
use crate::login::{LOGIN_PATH, LOGOUT_PATH};
use crate::pages::{self, Described, Facts, PageVars, Pages};

/// Header carrying the request id both ways.
pub const REQUEST_ID: &str = "x-request-id";

/// What the client asked to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A browser: an HTML page for a person.
    Html,
    /// An API client: `{"error", "reason", "request_id"}`.
    Json,
    /// Anything else: one line of text.
    Text,
}

impl Format {
    /// Chooses from the `Accept` header.
    pub fn from_headers(headers: &HeaderMap) -> Format {
        let mut format = Format::Text;
        for value in headers.get_all(ACCEPT) {
            let accept = value.as_bytes();
            if contains(accept, b"text/html") {
                return Format::Html;
            }
            if contains(accept, b"application/json") || contains(accept, b"+json") {
                format = Format::Json;
            }
        }
        format
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// What a refusal response needs to know about its request.
pub struct RefusalContext<'a> {
    /// The matched route, if any (for challenges and `Allow`).
    pub route: Option<&'a Route>,
    /// Body format.
    pub format: Format,
    /// The request id, already validated (shown in the body).
    pub request_id: &'a HeaderValue,
    /// The configured page templates and title.
    pub pages: &'a Pages,
    /// What the wording may mention.
    pub facts: Facts<'a>,
    /// Where to sign in, when the route accepts sessions and the login form is on.
    pub sign_in_url: Option<String>,
    /// Whether a sign-out button makes sense (the caller has a session).
    pub sign_out: bool,
}

/// Builds the whole response for a refusal.
pub fn refusal(refusal: &Refusal, ctx: &RefusalContext<'_>) -> Response<Body> {
    let status = refusal.status();
    let described = pages::describe(refusal, &ctx.facts);
    let request_id = ctx.request_id.to_str().unwrap_or("-");
    let (content_type, body) = match ctx.format {
        Format::Html => (
            "text/html; charset=utf-8",
            html_body(refusal, &described, ctx, status, request_id),
        ),
        Format::Json => (
            "application/json",
            json_body(refusal, described.heading, request_id),
        ),
        Format::Text => (
            "text/plain; charset=utf-8",
            format!(
                "{} {}: {} (request id {request_id})\n",
                status.as_u16(),
                described.heading,
                described.message
            ),
        ),
    };
    let mut response = Response::new(Body::Right(Full::new(Bytes::from(body))));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(REQUEST_ID, ctx.request_id.clone());
    add_refusal_headers(headers, refusal, ctx.route);
    response
}

fn html_body(
    refusal: &Refusal,
    described: &Described,
    ctx: &RefusalContext<'_>,
    status: StatusCode,
    request_id: &str,
) -> String {
    let allow = ctx
        .route
        .and_then(|r| r.allow_header.as_ref())
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let retry_after = match refusal {
        Refusal::Deny(d) => d.retry_after.unwrap_or(0),
        Refusal::Fail(_) => 0,
    };
    let vars = PageVars {
        title: ctx.pages.title().to_string(),
        status: status.as_u16(),
        heading: described.heading.to_string(),
        message: described.message.clone(),
        request_id: request_id.to_string(),
        user: ctx.facts.user.unwrap_or_default().to_string(),
        sign_in_url: ctx.sign_in_url.clone().unwrap_or_default(),
        sign_out: ctx.sign_out,
        login_url: LOGIN_PATH.to_string(),
        logout_url: LOGOUT_PATH.to_string(),
        retry_after_seconds: retry_after,
        allow: allow.to_string(),
        method: ctx.facts.method.to_string(),
        idle_timeout: pages::plain_duration(ctx.facts.idle),
        absolute_timeout: pages::plain_duration(ctx.facts.absolute),
        ..PageVars::default()
    };
    ctx.pages.render(described.page, &vars)
}

/// Challenges, `Allow` and `Retry-After`, as SPEC §4 asks for each situation.
fn add_refusal_headers(headers: &mut HeaderMap, refusal: &Refusal, route: Option<&Route>) {
    match refusal {
        Refusal::Deny(denial) => {
            if let Some(seconds) = denial.retry_after {
                if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
                    headers.insert(RETRY_AFTER, value);
                }
            }
            let Some(route) = route else { return };
            match denial.reason {
                DenyReason::MethodNotAllowed => {
                    if let Some(allow) = &route.allow_header {
                        headers.insert(ALLOW, allow.clone());
                    }
                }
                DenyReason::InsufficientScope => {
                    let scope = route.scopes.join(" ");
                    let params = [("error", "insufficient_scope"), ("scope", scope.as_str())];
                    let value = challenge::challenge(Scheme::Bearer, &route.realm, &params);
                    headers.append(WWW_AUTHENTICATE, challenge::to_value(value));
                }
                DenyReason::UserNotAllowed | DenyReason::NoRoute | DenyReason::AmbiguousPath => {}
                // Refused before any route was chosen: no challenge (SPEC §4).
                DenyReason::MalformedRequest | DenyReason::UnsupportedTransferCoding => {}
                DenyReason::RateLimited => {}
                // The Bearer challenge's `error` describes a bearer request (RFC 6750 §3.1):
                // a broken Basic credential leaves it bare.
                _ => {
                    let about_bearer = matches!(denial.scheme, None | Some(Scheme::Bearer));
                    let error = if about_bearer {
                        bearer_error(denial.reason)
                    } else {
                        None
                    };
                    add_challenges(headers, route, error)
                }
            }
        }
        Refusal::Fail(failure) => {
            if failure.reason == FailReason::Overloaded {
                headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
            }
        }
    }
}

/// The RFC 6750 `error` (and description) the Bearer challenge carries for a denial.
fn bearer_error(reason: DenyReason) -> Option<(&'static str, &'static str)> {
    let description = match reason {
        DenyReason::MalformedCredentials => {
            return Some(("invalid_request", "the Authorization header is malformed"))
        }
        DenyReason::UnknownToken => "the token is not recognised",
        DenyReason::TokenExpired => "the token has expired",
        DenyReason::TokenNotYetValid => "the token is not valid yet",
        DenyReason::BadSignature => "the token signature is invalid",
        DenyReason::BadIssuer => "the token issuer is not accepted",
        DenyReason::BadAudience => "the token audience is not accepted",
        DenyReason::DisallowedAlgorithm => "the token algorithm is not accepted",
        DenyReason::WrongTokenType => "the token is not an access token",
        _ => return None,
    };
    Some(("invalid_token", description))
}

fn add_challenges(headers: &mut HeaderMap, route: &Route, bearer: Option<(&str, &str)>) {
    let only_session = route.schemes == [Scheme::Session];
    let mut bare = route.challenges.iter();
    for scheme in &route.schemes {
        if *scheme == Scheme::Session && !only_session {
            continue;
        }
        let Some(value) = bare.next() else { break };
        match (scheme, bearer) {
            (Scheme::Bearer, Some((error, description))) => {
                let params = [("error", error), ("error_description", description)];
                let text = challenge::challenge(Scheme::Bearer, &route.realm, &params);
                headers.append(WWW_AUTHENTICATE, challenge::to_value(text));
            }
            _ => {
                headers.append(WWW_AUTHENTICATE, value.clone());
            }
        }
    }
}

fn json_body(refusal: &Refusal, heading: &str, request_id: &str) -> String {
    let body = serde_json::json!({
        "error": heading,
        "reason": refusal.public_code(),
        "request_id": request_id,
    });
    let mut text = body.to_string();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_follows_accept() {
        let mut h = HeaderMap::new();
        assert_eq!(Format::from_headers(&h), Format::Text);
        h.insert(
            ACCEPT,
            HeaderValue::from_static("text/html,application/xhtml+xml,*/*;q=0.8"),
        );
        assert_eq!(Format::from_headers(&h), Format::Html);
        h.insert(ACCEPT, HeaderValue::from_static("application/json"));
        assert_eq!(Format::from_headers(&h), Format::Json);
    }
}
