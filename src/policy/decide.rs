//! The decision for one request, SPEC §3 steps 0 to 4: its shape, the reserved paths, the
//! normalised path and its route, who the credential belongs to, and whether they may pass.
//! The proxy (`App::process`) and `portcullis explain` both call [`decide`]; only the way a
//! credential is checked differs between them ([`Authenticate`]).

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;

use http::uri::PathAndQuery;
use http::{HeaderMap, Method, Request, Uri, Version};

use super::{authorize, method_overrides, no_route, resolve, Target};
use crate::auth::Identity;
use crate::auth::Scheme;
use crate::config::{Config, Route};
use crate::error::{Denial, DenyReason, Refusal};
use crate::login::{EndedNotice, Endpoint, LOGIN_PATH, LOGOUT_PATH, WHOAMI_PATH};
use crate::path::NormalizedPath;
use crate::response::Format;
use crate::server::FramingFinding;

/// A request as the decision sees it: what an HTTP request is turned into
/// ([`Described::from_request`]), or what `explain` builds from its arguments.
#[derive(Debug, Clone, Copy)]
pub struct Described<'a> {
    /// The method as received.
    pub method: &'a Method,
    /// The request target as the HTTP parser read it (hyper drops a fragment: see `framing`).
    pub uri: &'a Uri,
    /// The HTTP version.
    pub version: Version,
    /// The headers as received (repeated ones kept).
    pub headers: &'a HeaderMap,
    /// What the HTTP/1 framing watch found in the raw head (`#` in the target, conflicting
    /// or unreadable lengths), which the parsed request no longer shows.
    pub framing: Option<FramingFinding>,
    /// Facts about the connection.
    pub peer: Peer,
}

/// What the server knows about who sent the request.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    /// The real client address (from `X-Forwarded-For` when the peer is a trusted proxy).
    pub client_ip: IpAddr,
    /// The TCP peer is one of `trusted_proxies`.
    pub trusted: bool,
    /// A trusted proxy's chain ended on an entry that is not an address.
    pub unreadable_client: bool,
    /// The connection is TLS.
    pub tls: bool,
}

impl<'a> Described<'a> {
    /// Describes a received request (its framing finding is a request extension).
    pub fn from_request<B>(request: &'a Request<B>, peer: Peer) -> Self {
        Described {
            method: request.method(),
            uri: request.uri(),
            version: request.version(),
            headers: request.headers(),
            framing: request.extensions().get::<FramingFinding>().copied(),
            peer,
        }
    }
}

/// How a caller's credential becomes an identity: the proxy verifies it (password, token,
/// session store); `explain` takes the identity it was told to decide for.
pub trait Authenticate {
    /// The identity behind the request's credential on `route` (never a public route).
    fn authenticate(
        &self,
        route: &Route,
        request: &Described<'_>,
    ) -> impl Future<Output = Result<Identity, Refusal>> + Send;
}

/// Where the path led.
#[derive(Debug, Clone)]
pub enum Destination {
    /// Under `/.portcullis/`: the proxy's own, never forwarded.
    Reserved,
    /// A configured route.
    Route(Arc<Route>),
}

/// What the proxy does with an admitted request.
#[derive(Debug)]
pub enum Verdict {
    /// Answers it itself.
    Serve(Endpoint),
    /// Forwards it with this target: the normalised path and the original query.
    Forward(PathAndQuery),
}

/// The decision, with what was learnt on the way (the log and the refusal need it even when
/// the request is refused).
#[derive(Debug)]
pub struct Decision {
    /// The normalised path, once the target was read.
    pub path: Option<NormalizedPath>,
    /// Where the path led, once it was matched.
    pub destination: Option<Destination>,
    /// Who the credential belongs to, once authenticated (kept when authorisation refuses).
    pub identity: Option<Identity>,
    /// Admitted, or refused and why.
    pub verdict: Result<Verdict, Refusal>,
    /// Refused on the request's shape: an HTTP/1 connection is closed after the answer,
    /// since its bytes can no longer be trusted to frame the next request.
    pub close_connection: bool,
}

impl Decision {
    /// The matched route, if any.
    pub fn route(&self) -> Option<&Arc<Route>> {
        match &self.destination {
            Some(Destination::Route(route)) => Some(route),
            Some(Destination::Reserved) | None => None,
        }
    }
}

/// A `GET` or `HEAD` that asks for HTML: a person's browser navigating, sent to the login
/// form rather than answered 401.
pub fn navigation(method: &Method, headers: &HeaderMap) -> bool {
    matches!(*method, Method::GET | Method::HEAD) && Format::from_headers(headers) == Format::Html
}

/// When a refusal is answered with a redirect to the login form (SPEC §4): a session missing
/// or over, on a route that accepts sessions, for a browser navigating, with login enabled.
/// `Some(ended)` names why the session ended, if it did.
pub fn login_redirect(
    config: &Config,
    refusal: &Refusal,
    route: Option<&Route>,
    navigation: bool,
) -> Option<Option<EndedNotice>> {
    let accepts_session = route.is_some_and(|r| r.accepts(Scheme::Session));
    let session = session_refusal(refusal)?;
    (accepts_session && navigation && config.login.enabled).then_some(session)
}

/// For a refusal that a session would have avoided: `Some(ended)`, with why the session ended
/// if it did.
pub fn session_refusal(refusal: &Refusal) -> Option<Option<EndedNotice>> {
    match refusal {
        Refusal::Deny(d) => match d.reason {
            DenyReason::SessionUnknown | DenyReason::MissingCredentials => Some(None),
            DenyReason::SessionIdleTimeout => Some(Some(EndedNotice::Idle)),
            DenyReason::SessionAbsoluteTimeout => Some(Some(EndedNotice::Absolute)),
            DenyReason::SessionRevoked => Some(Some(EndedNotice::Revoked)),
            DenyReason::SessionCapped => Some(Some(EndedNotice::Capped)),
            // Listed, not `_`: a new reason must be placed here on purpose.
            DenyReason::MalformedCredentials
            | DenyReason::UnknownUser
            | DenyReason::BadPassword
            | DenyReason::UnknownToken
            | DenyReason::TokenExpired
            | DenyReason::TokenNotYetValid
            | DenyReason::BadSignature
            | DenyReason::BadIssuer
            | DenyReason::BadAudience
            | DenyReason::DisallowedAlgorithm
            | DenyReason::WrongTokenType
            | DenyReason::UserNotAllowed
            | DenyReason::InsufficientScope
            | DenyReason::MethodNotAllowed
            | DenyReason::RateLimited
            | DenyReason::AmbiguousPath
            | DenyReason::NoRoute
            | DenyReason::MalformedRequest
            | DenyReason::UnsupportedTransferCoding => None,
        },
        Refusal::Fail(_) => None,
    }
}

/// Decides a request, in SPEC §3 order, stopping at the first refusal.
pub async fn decide<A: Authenticate>(
    config: &Config,
    request: &Described<'_>,
    auth: &A,
) -> Decision {
    let mut learnt = Learnt::default();
    let verdict = steps(config, request, auth, &mut learnt).await;
    Decision {
        path: learnt.path,
        destination: learnt.destination,
        identity: learnt.identity,
        verdict,
        close_connection: learnt.close_connection,
    }
}

/// A [`Decision`]'s facts, gathered until the verdict is known.
#[derive(Default)]
struct Learnt {
    path: Option<NormalizedPath>,
    destination: Option<Destination>,
    identity: Option<Identity>,
    close_connection: bool,
}

async fn steps<A: Authenticate>(
    config: &Config,
    request: &Described<'_>,
    auth: &A,
    decision: &mut Learnt,
) -> Result<Verdict, Refusal> {
    // Step 0: the request's shape, before anything is looked up. A request the framing watch
    // flagged ends its connection: the watch no longer follows the bytes after it.
    if let Some(finding) = request.framing {
        decision.close_connection = true;
        return Err(framing_refusal(finding).into());
    }
    if let Err(denial) = request_shape(request) {
        decision.close_connection = true;
        return Err(denial.into());
    }
    // Read as the proxy's own address, such an entry would make every client behind it
    // one client (one lockout for all); there is no other address to use.
    if request.peer.unreadable_client {
        return Err(Denial::new(
            DenyReason::MalformedRequest,
            "X-Forwarded-For (or Forwarded) from a trusted proxy names no readable client \
             address",
        )
        .into());
    }
    // HTTP/1 requests must be in origin form; HTTP/2 always carries scheme and authority.
    let uri = request.uri;
    if request.version < Version::HTTP_2 && (uri.scheme().is_some() || uri.authority().is_some()) {
        return Err(Denial::new(
            DenyReason::AmbiguousPath,
            "request target is not in origin form",
        )
        .into());
    }
    // Steps 1 and 2: reserved paths, then the route of the normalised path.
    let (normalized, target) = resolve(&config.routes, uri.path())?;
    let route = match target {
        Target::Reserved => {
            let endpoint = reserved(config, normalized.for_matching(), request);
            decision.path = Some(normalized);
            decision.destination = Some(Destination::Reserved);
            return Ok(Verdict::Serve(endpoint?));
        }
        Target::NoRoute => {
            decision.path = Some(normalized);
            return Err(no_route().into());
        }
        Target::Route(route) => route.clone(),
    };
    // Built now, while `normalized` is at hand, but refused only where SPEC §3 puts it: after
    // authentication and authorisation.
    let forward = upstream_target(&normalized, uri.path_and_query());
    decision.path = Some(normalized);
    decision.destination = Some(Destination::Route(route.clone()));
    // Step 3, then step 4: allow lists, scopes, methods (and the headers that override one).
    if !route.is_public() {
        decision.identity = Some(auth.authenticate(&route, request).await?);
    }
    authorize(&route, decision.identity.as_ref(), request.method)?;
    method_overrides(&route, request.headers)?;
    Ok(Verdict::Forward(forward?))
}

/// Which of the proxy's own endpoints a reserved path and method name. An unknown one is
/// refused as `no_route`, as for a path no route covers.
fn reserved(config: &Config, path: &str, request: &Described<'_>) -> Result<Endpoint, Denial> {
    let login = config.login.enabled;
    let method = request.method;
    match (path, method) {
        (LOGIN_PATH, &Method::GET | &Method::HEAD) if login => Ok(Endpoint::LoginForm),
        (LOGIN_PATH, &Method::POST) if login => Ok(Endpoint::Login),
        (LOGOUT_PATH, &Method::POST) => Ok(Endpoint::Logout),
        // Whoami describes a session: without a session cookie there is none to describe,
        // and explain must say so as the proxy does (which session the cookie names is the
        // endpoint's to look up).
        (WHOAMI_PATH, &Method::GET | &Method::HEAD) => {
            let cookie = crate::session::cookie_name(&config.session);
            if crate::session::cookie_values(request.headers, &cookie)
                .next()
                .is_none()
            {
                return Err(Denial::of(
                    Scheme::Session,
                    DenyReason::MissingCredentials,
                    "no session cookie",
                ));
            }
            Ok(Endpoint::Whoami)
        }
        (LOGIN_PATH | LOGOUT_PATH | WHOAMI_PATH, _) => Err(Denial::new(
            DenyReason::MethodNotAllowed,
            format!("{method} is not served on {path}"),
        )),
        _ => Err(Denial::new(
            DenyReason::NoRoute,
            "reserved /.portcullis/ path is not served",
        )),
    }
}

/// The refusal for what the HTTP/1 framing watch found in the raw request head.
fn framing_refusal(finding: FramingFinding) -> Denial {
    match finding {
        FramingFinding::ConflictingFraming => Denial::new(
            DenyReason::MalformedRequest,
            "both Content-Length and Transfer-Encoding",
        ),
        FramingFinding::UnreadableLength => Denial::new(
            DenyReason::MalformedRequest,
            "Content-Length is not one plain number of at most 19 digits",
        ),
        FramingFinding::UnsupportedCoding => Denial::new(
            DenyReason::UnsupportedTransferCoding,
            "Transfer-Encoding other than chunked",
        ),
        FramingFinding::Fragment => Denial::new(
            DenyReason::AmbiguousPath,
            "request target has a fragment (#)",
        ),
        FramingFinding::BareLineFeed => Denial::new(
            DenyReason::MalformedRequest,
            "the previous request's chunked trailers had a line ending in a bare line feed",
        ),
    }
}

/// SPEC §3 step 0: the request shapes refused before any route is looked at, read from the
/// headers as received (hyper keeps repeated headers and raw values).
fn request_shape(request: &Described<'_>) -> Result<(), Denial> {
    use http::header::{AUTHORIZATION, CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
    let malformed = |detail: &'static str| Denial::new(DenyReason::MalformedRequest, detail);
    let headers = request.headers;
    let mut hosts = headers.get_all(HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(malformed("more than one Host header"));
    }
    if host.is_some_and(|h| !valid_authority(h.as_bytes())) {
        return Err(malformed("Host is not a valid host[:port]"));
    }
    if request.version >= Version::HTTP_2 {
        let authority = request.uri.authority().map(|a| a.as_str());
        if authority.is_some_and(|a| !valid_authority(a.as_bytes())) {
            return Err(malformed(":authority is not a valid host[:port]"));
        }
        match (host, authority) {
            (Some(host), Some(authority))
                if !host.as_bytes().eq_ignore_ascii_case(authority.as_bytes()) =>
            {
                return Err(malformed("Host and :authority differ"));
            }
            (None, None) => return Err(malformed("neither Host nor :authority")),
            _ => {}
        }
    } else if request.version == Version::HTTP_11 && host.is_none() {
        return Err(malformed("HTTP/1.1 request without Host"));
    }
    let mut lengths = headers.get_all(CONTENT_LENGTH).iter();
    if let Some(length) = lengths.next() {
        let digits = length.as_bytes();
        if lengths.next().is_some()
            || !(1..=19).contains(&digits.len())
            || !digits.iter().all(u8::is_ascii_digit)
        {
            return Err(malformed(
                "Content-Length is not one plain number of at most 19 digits",
            ));
        }
    }
    let mut codings = headers.get_all(TRANSFER_ENCODING).iter();
    if let Some(coding) = codings.next() {
        if codings.next().is_some() || !coding.as_bytes().eq_ignore_ascii_case(b"chunked") {
            return Err(Denial::new(
                DenyReason::UnsupportedTransferCoding,
                "Transfer-Encoding other than chunked",
            ));
        }
    }
    if headers.get_all(AUTHORIZATION).iter().nth(1).is_some() {
        return Err(malformed("more than one Authorization header"));
    }
    Ok(())
}

/// `host[:port]` (RFC 3986 §3.2.2, strictly): a name of letters, digits, `-`, `.`, `_`, `~`,
/// or a bracketed IPv6 address, then optionally `:` and 1 to 5 digits. No user info, no
/// spaces, no list, no path.
fn valid_authority(authority: &[u8]) -> bool {
    let port = if authority.first() == Some(&b'[') {
        let Some(close) = memchr::memchr(b']', authority) else {
            return false;
        };
        let inside = &authority[1..close];
        let ipv6 = !inside.is_empty()
            && inside
                .iter()
                .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'));
        if !ipv6 {
            return false;
        }
        &authority[close + 1..]
    } else {
        let end = memchr::memchr(b':', authority).unwrap_or(authority.len());
        let host = &authority[..end];
        let name = !host.is_empty()
            && host
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
        if !name {
            return false;
        }
        &authority[end..]
    };
    match port.split_first() {
        None => true,
        Some((b':', digits)) => {
            (1..=5).contains(&digits.len()) && digits.iter().all(u8::is_ascii_digit)
        }
        Some(_) => false,
    }
}

/// `normalised path` + `?` + the original query, as the upstream's request target. When
/// normalisation changed nothing, that is the original target itself (a reference count, not
/// a copy).
fn upstream_target(
    normalized: &NormalizedPath,
    original: Option<&PathAndQuery>,
) -> Result<PathAndQuery, Denial> {
    let path = normalized.forward();
    if let Some(original) = original.filter(|o| o.path() == path) {
        return Ok(original.clone());
    }
    let text = match original.and_then(PathAndQuery::query) {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    PathAndQuery::try_from(text).map_err(|_| {
        Denial::new(
            DenyReason::AmbiguousPath,
            "normalised path is not a valid request target",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities_are_host_and_optional_port() {
        for good in [
            "example.com",
            "example.com:8080",
            "a_b-c.d~e",
            "127.0.0.1:1",
            "[::1]",
            "[2001:db8::1]:443",
            "LOCALHOST",
        ] {
            assert!(valid_authority(good.as_bytes()), "{good}");
        }
        for bad in [
            "",
            "a b",
            "a, b",
            "a,b",
            "evil.com/admin?",
            "user@host",
            "host:",
            "host:123456",
            "host:8o",
            ":80",
            "[]",
            "[::1",
            "[::1]x",
            "[fe80::1%25eth0]",
            "host:80:80",
        ] {
            assert!(!valid_authority(bad.as_bytes()), "{bad}");
        }
    }

    fn target(path: &str, original: &str) -> String {
        let normalized = crate::path::normalize(path).unwrap();
        let original = PathAndQuery::try_from(original).unwrap();
        upstream_target(&normalized, Some(&original))
            .unwrap()
            .as_str()
            .to_string()
    }

    #[test]
    fn upstream_target_keeps_the_query() {
        assert_eq!(target("/a/b", "/a/b?x=1&y"), "/a/b?x=1&y");
        assert_eq!(target("/a/./b", "/a/./b?x=1&y"), "/a/b?x=1&y");
        assert_eq!(target("/a", "/a"), "/a");
        assert_eq!(target("/x/../a", "/x/../a"), "/a");
        // The fragment never reaches the upstream, normalised or not.
        assert_eq!(target("/a", "/a?q#frag"), "/a?q");
        assert_eq!(target("/a", "/a#frag"), "/a");
    }
}
