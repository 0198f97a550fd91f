//! Responses the proxy makes itself: the status, challenges and a small body (HTML, JSON or
//! one line of text, chosen by `Accept`) for every refusal. Bodies name no internal detail.

pub mod challenge;

use bytes::Bytes;
use http::header::{
    HeaderValue, ACCEPT, ALLOW, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE,
};
use http::{HeaderMap, Response, StatusCode};
use http_body_util::Full;

use crate::config::{Route, Scheme};
use crate::error::{DenyReason, FailReason, Refusal};

/// The body type of every response the proxy sends: the upstream's streamed body, or one of
/// ours.
pub type Body = http_body_util::Either<hyper::body::Incoming, Full<Bytes>>;

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
        let accept = headers
            .get_all(ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join(",");
        if accept.contains("text/html") {
            Format::Html
        } else if accept.contains("application/json") || accept.contains("+json") {
            Format::Json
        } else {
            Format::Text
        }
    }
}

/// What a refusal response needs to know about its request.
pub struct RefusalContext<'a> {
    /// The matched route, if any (for challenges and `Allow`).
    pub route: Option<&'a Route>,
    /// Body format.
    pub format: Format,
    /// The request id, already validated (shown in the body).
    pub request_id: &'a HeaderValue,
    /// `[pages] title`.
    pub title: &'a str,
}

/// Builds the whole response for a refusal.
pub fn refusal(refusal: &Refusal, ctx: &RefusalContext<'_>) -> Response<Body> {
    let status = refusal.status();
    let (heading, message) = wording(refusal);
    let request_id = ctx.request_id.to_str().unwrap_or("-");
    let (content_type, body) = match ctx.format {
        Format::Html => (
            "text/html; charset=utf-8",
            html_page(ctx.title, status, heading, message, request_id),
        ),
        Format::Json => ("application/json", json_body(refusal, heading, request_id)),
        Format::Text => (
            "text/plain; charset=utf-8",
            format!(
                "{} {heading}: {message} (request id {request_id})\n",
                status.as_u16()
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

/// A heading and a sentence for a person; generic wherever detail would help an attacker.
fn wording(refusal: &Refusal) -> (&'static str, &'static str) {
    match refusal {
        Refusal::Deny(d) => match d.reason {
            DenyReason::MissingCredentials => ("Sign-in required", "This page needs you to sign in."),
            DenyReason::MalformedCredentials => (
                "Credentials not understood",
                "The credentials sent with this request could not be read. Sign in again.",
            ),
            DenyReason::UnknownUser | DenyReason::BadPassword => (
                "Sign-in failed",
                "The user name or password was not accepted. Check both and try again.",
            ),
            DenyReason::UnknownToken
            | DenyReason::TokenExpired
            | DenyReason::TokenNotYetValid
            | DenyReason::BadSignature
            | DenyReason::BadIssuer
            | DenyReason::BadAudience
            | DenyReason::DisallowedAlgorithm => (
                "Token not accepted",
                "The access token sent with this request was not accepted.",
            ),
            DenyReason::SessionUnknown
            | DenyReason::SessionIdleTimeout
            | DenyReason::SessionAbsoluteTimeout => ("Session ended", "Your session has ended. Sign in again."),
            DenyReason::UserNotAllowed | DenyReason::InsufficientScope => (
                "Access denied",
                "You are signed in, but this area is limited. Ask the site's administrator for access.",
            ),
            DenyReason::MethodNotAllowed => ("Method not allowed", "This kind of request is not allowed here."),
            DenyReason::RateLimited => ("Too many attempts", "Too many failed attempts. Wait a while, then try again."),
            DenyReason::AmbiguousPath => (
                "Bad address",
                "The address of this request could be read in more than one way, so it was refused.",
            ),
            DenyReason::NoRoute => ("Not served here", "This address is not served here."),
        },
        Refusal::Fail(f) => match f.reason {
            FailReason::UpstreamUnreachable | FailReason::UpstreamTimeout => (
                "Site not answering",
                "The site behind this proxy is not answering. Try again shortly.",
            ),
            FailReason::StoreUnavailable | FailReason::Overloaded => {
                ("Temporarily unavailable", "The service is busy. Try again shortly.")
            }
        },
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

/// Escapes text for HTML element content and attribute values.
pub fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

fn html_page(
    title: &str,
    status: StatusCode,
    heading: &str,
    message: &str,
    request_id: &str,
) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>{heading} · {title}</title>\
<style>body{{font:16px/1.5 system-ui,sans-serif;margin:0;background:#f4f5f7;color:#1d2330}}\
main{{max-width:32rem;margin:12vh auto;padding:2rem;background:#fff;border-radius:12px;box-shadow:0 1px 4px #0002}}\
h1{{font-size:1.4rem;margin:0 0 .5rem}}.id{{color:#5a6270;font-size:.85rem;margin-top:1.5rem}}</style>\
</head><body><main><p>{title}</p><h1>{heading}</h1><p>{message}</p>\
<p class=\"id\">Error {code} · request id <code>{request_id}</code></p></main></body></html>\n",
        title = html_escape(title),
        heading = html_escape(heading),
        message = html_escape(message),
        code = status.as_u16(),
        request_id = html_escape(request_id),
    )
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

    #[test]
    fn html_is_escaped() {
        assert_eq!(
            html_escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
