//! Why a request was refused, and the one place where that becomes a status code.

use std::borrow::Cow;
use std::fmt;

use http::StatusCode;

use crate::auth::Scheme;

/// The closed list of denial reasons (SPEC §5). Each is logged as its `as_str()` code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DenyReason {
    /// No credential for any scheme the route accepts.
    MissingCredentials,
    /// A credential that could not be parsed.
    MalformedCredentials,
    /// A user name that is not configured.
    UnknownUser,
    /// A known user with the wrong password.
    BadPassword,
    /// A bearer token that is not configured.
    UnknownToken,
    /// A token past its expiry.
    TokenExpired,
    /// A token before its `nbf`.
    TokenNotYetValid,
    /// A JWT whose signature does not verify (or whose key is unknown).
    BadSignature,
    /// A JWT from another issuer.
    BadIssuer,
    /// A JWT for another audience.
    BadAudience,
    /// A JWT signed with an algorithm the config does not allow.
    DisallowedAlgorithm,
    /// A JWT whose `typ` is not in `jwt.token_types` (an ID, logout or DPoP token, say).
    WrongTokenType,
    /// A session cookie the store does not know.
    SessionUnknown,
    /// A session unused for longer than the idle timeout.
    SessionIdleTimeout,
    /// A session older than the absolute timeout.
    SessionAbsoluteTimeout,
    /// A session ended by the proxy before its time: its user's password changed or the user
    /// was removed in a reload.
    SessionRevoked,
    /// A session ended because a newer login of its user went past `session.max_per_user`.
    /// Logged as `session_revoked` like every end the proxy decides (SPEC §2); its own variant
    /// only so that the person is told the right cause.
    SessionCapped,
    /// Authenticated, but not in the route's allow lists.
    UserNotAllowed,
    /// A bearer caller without every scope the route needs.
    InsufficientScope,
    /// A method outside the route's `methods`.
    MethodNotAllowed,
    /// Too many failures from this client or for this user.
    RateLimited,
    /// A path that upstreams could read differently from us.
    AmbiguousPath,
    /// No route matches the path.
    NoRoute,
    /// A request whose shape two servers could read two ways (Host, framing, two
    /// `Authorization` headers): refused before any route is looked at.
    MalformedRequest,
    /// A `Transfer-Encoding` other than `chunked`: logged as `malformed_request`, answered
    /// 501 (a coding the proxy does not implement, not a request it could not read).
    UnsupportedTransferCoding,
}

impl DenyReason {
    /// The code in the log's `reason` field.
    pub fn as_str(self) -> &'static str {
        match self {
            DenyReason::MissingCredentials => "missing_credentials",
            DenyReason::MalformedCredentials => "malformed_credentials",
            DenyReason::UnknownUser => "unknown_user",
            DenyReason::BadPassword => "bad_password",
            DenyReason::UnknownToken => "unknown_token",
            DenyReason::TokenExpired => "token_expired",
            DenyReason::TokenNotYetValid => "token_not_yet_valid",
            DenyReason::BadSignature => "bad_signature",
            DenyReason::BadIssuer => "bad_issuer",
            DenyReason::BadAudience => "bad_audience",
            DenyReason::DisallowedAlgorithm => "disallowed_algorithm",
            DenyReason::WrongTokenType => "wrong_token_type",
            DenyReason::SessionUnknown => "session_unknown",
            DenyReason::SessionIdleTimeout => "session_idle_timeout",
            DenyReason::SessionAbsoluteTimeout => "session_absolute_timeout",
            DenyReason::SessionRevoked | DenyReason::SessionCapped => "session_revoked",
            DenyReason::UserNotAllowed => "user_not_allowed",
            DenyReason::InsufficientScope => "insufficient_scope",
            DenyReason::MethodNotAllowed => "method_not_allowed",
            DenyReason::RateLimited => "rate_limited",
            DenyReason::AmbiguousPath => "ambiguous_path",
            DenyReason::NoRoute => "no_route",
            DenyReason::MalformedRequest | DenyReason::UnsupportedTransferCoding => {
                "malformed_request"
            }
        }
    }

    /// The code shown to the client: never reveals whether a user exists.
    pub fn public_code(self) -> &'static str {
        match self {
            DenyReason::UnknownUser | DenyReason::BadPassword => "invalid_credentials",
            other => other.as_str(),
        }
    }
}

/// The closed list of reasons a request could not be completed (SPEC §5, `decision="error"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailReason {
    /// The upstream refused the connection or broke it.
    UpstreamUnreachable,
    /// The upstream did not answer within `response_timeout` (or connect within `connect_timeout`).
    UpstreamTimeout,
    /// The session store could not be reached.
    StoreUnavailable,
    /// Too many password verifications already queued.
    Overloaded,
    /// The client closed its connection (HTTP/1) or reset its stream (HTTP/2) before the
    /// response head was sent.
    ClientClosed,
    /// The client's request body broke its own framing (a bad chunk).
    ClientBodyInvalid,
    /// The client's request body stalled for `server.body_read_timeout` (408; logged as
    /// `client_body_invalid`, the closed list's nearest code).
    ClientBodyTimeout,
}

impl FailReason {
    /// The code in the log's `reason` field.
    pub fn as_str(self) -> &'static str {
        match self {
            FailReason::UpstreamUnreachable => "upstream_unreachable",
            FailReason::UpstreamTimeout => "upstream_timeout",
            FailReason::StoreUnavailable => "store_unavailable",
            FailReason::Overloaded => "overloaded",
            FailReason::ClientClosed => "client_closed",
            FailReason::ClientBodyInvalid | FailReason::ClientBodyTimeout => "client_body_invalid",
        }
    }
}

/// A refused request: the reason code, the human detail for the log, and the scheme it
/// concerns (which decides the shape of a malformed-credential answer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// The logged reason.
    pub reason: DenyReason,
    /// Human explanation for the log; never contains a secret.
    pub detail: Cow<'static, str>,
    /// The scheme whose credential was refused, if any.
    pub scheme: Option<Scheme>,
    /// For `rate_limited`: whole seconds until the lockout ends (`Retry-After`).
    pub retry_after: Option<u64>,
}

impl Denial {
    /// A denial not tied to one scheme.
    pub fn new(reason: DenyReason, detail: impl Into<Cow<'static, str>>) -> Self {
        Denial {
            reason,
            detail: detail.into(),
            scheme: None,
            retry_after: None,
        }
    }

    /// A denial of a credential of `scheme`.
    pub fn of(scheme: Scheme, reason: DenyReason, detail: impl Into<Cow<'static, str>>) -> Self {
        Denial {
            reason,
            detail: detail.into(),
            scheme: Some(scheme),
            retry_after: None,
        }
    }
}

/// A request the proxy could not complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The logged reason.
    pub reason: FailReason,
    /// Human explanation for the log (may name internal causes; never sent to the client).
    pub detail: Cow<'static, str>,
}

impl Failure {
    /// A failure with a detail for the log.
    pub fn new(reason: FailReason, detail: impl Into<Cow<'static, str>>) -> Self {
        Failure {
            reason,
            detail: detail.into(),
        }
    }
}

/// Either kind of refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The caller may not pass (`decision="deny"`).
    Deny(Denial),
    /// The proxy could not complete the request (`decision="error"`).
    Fail(Failure),
}

impl From<Denial> for Refusal {
    fn from(d: Denial) -> Self {
        Refusal::Deny(d)
    }
}

impl From<Failure> for Refusal {
    fn from(f: Failure) -> Self {
        Refusal::Fail(f)
    }
}

impl Refusal {
    /// The one mapping from refusal to status code.
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::Deny(d) => deny_status(d),
            Refusal::Fail(f) => match f.reason {
                FailReason::UpstreamUnreachable => StatusCode::BAD_GATEWAY,
                FailReason::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
                FailReason::StoreUnavailable | FailReason::Overloaded => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                FailReason::ClientClosed => client_closed_status(),
                FailReason::ClientBodyInvalid => StatusCode::BAD_REQUEST,
                FailReason::ClientBodyTimeout => StatusCode::REQUEST_TIMEOUT,
            },
        }
    }

    /// `deny` or `error`, for the log.
    pub fn decision(&self) -> &'static str {
        match self {
            Refusal::Deny(_) => "deny",
            Refusal::Fail(_) => "error",
        }
    }

    /// The logged reason code.
    pub fn reason_code(&self) -> &'static str {
        match self {
            Refusal::Deny(d) => d.reason.as_str(),
            Refusal::Fail(f) => f.reason.as_str(),
        }
    }

    /// The reason code shown to the client.
    pub fn public_code(&self) -> &'static str {
        match self {
            Refusal::Deny(d) => d.reason.public_code(),
            Refusal::Fail(f) => f.reason.as_str(),
        }
    }

    /// The logged detail.
    pub fn detail(&self) -> &str {
        match self {
            Refusal::Deny(d) => &d.detail,
            Refusal::Fail(f) => &f.detail,
        }
    }
}

/// nginx's 499 "client closed request": logged only, never sent (nobody is there to read it).
pub fn client_closed_status() -> StatusCode {
    StatusCode::from_u16(499).expect("499 is a valid status code")
}

fn deny_status(denial: &Denial) -> StatusCode {
    match denial.reason {
        DenyReason::MissingCredentials
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
        | DenyReason::SessionUnknown
        | DenyReason::SessionIdleTimeout
        | DenyReason::SessionAbsoluteTimeout
        | DenyReason::SessionRevoked
        | DenyReason::SessionCapped => StatusCode::UNAUTHORIZED,
        // RFC 7617 has no error parameter, so a broken Basic credential is just not accepted;
        // RFC 6750 calls a broken bearer request `invalid_request` (400), and two
        // Authorization headers (no scheme) are a malformed request whatever the route.
        // A broken login form (or one posted cross-site) is a bad request too.
        DenyReason::MalformedCredentials => match denial.scheme {
            Some(Scheme::Basic) => StatusCode::UNAUTHORIZED,
            Some(Scheme::Bearer) | Some(Scheme::Session) | None => StatusCode::BAD_REQUEST,
        },
        DenyReason::UserNotAllowed | DenyReason::InsufficientScope | DenyReason::NoRoute => {
            StatusCode::FORBIDDEN
        }
        DenyReason::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        DenyReason::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        DenyReason::AmbiguousPath | DenyReason::MalformedRequest => StatusCode::BAD_REQUEST,
        DenyReason::UnsupportedTransferCoding => StatusCode::NOT_IMPLEMENTED,
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason_code(), self.detail())
    }
}
