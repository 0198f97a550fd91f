//! Authentication: reading the credential a request presents, checking it with the route's
//! schemes, and the identity that results.

pub mod bearer;
pub mod credentials;
pub mod device;
pub mod jwks;
pub mod jwt;
pub mod password;
mod scheme;
pub mod verifier;

use std::sync::Arc;

use http::HeaderMap;

pub use credentials::Credential;
pub use scheme::Scheme;
pub use verifier::PasswordVerifier;

use crate::config::{Config, Route, StaticToken, User};
use crate::error::{Denial, DenyReason, Refusal};
use crate::ratelimit::{AttemptKeys, FailureLimiter};
use crate::session::{ActiveSession, Sessions};
use std::net::IpAddr;

/// Prefix of a static token's qualified identity.
pub const TOKEN_PREFIX: &str = "token:";
/// Prefix of a bearer JWT's qualified identity.
pub const JWT_PREFIX: &str = "jwt:";

/// Who the caller is, once authenticated.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The configured principal behind the credential.
    pub principal: Principal,
    /// The scheme that authenticated it.
    pub method: Scheme,
    /// The session that authenticated it, when `method` is `session`.
    pub session: Option<ActiveSession>,
}

/// The configured entity a credential belongs to.
#[derive(Debug, Clone)]
pub enum Principal {
    /// A password user.
    User(Arc<User>),
    /// A static bearer token.
    Token(Arc<StaticToken>),
    /// A verified bearer JWT: the caller its claims name.
    Jwt(Arc<jwt::JwtIdentity>),
}

impl Identity {
    /// The user name (the token's name for static tokens).
    pub fn user(&self) -> &str {
        match &self.principal {
            Principal::User(u) => &u.name,
            Principal::Token(t) => &t.name,
            Principal::Jwt(j) => &j.user,
        }
    }

    /// The identity qualified by its source (SPEC §2 "Identities carry their source"): a
    /// password user's bare name, `token:NAME` or `jwt:SUBJECT`. Two callers with the same
    /// name from different sources are never the same identity.
    pub fn qualified(&self) -> std::borrow::Cow<'_, str> {
        match &self.principal {
            Principal::User(u) => std::borrow::Cow::Borrowed(&u.name),
            Principal::Token(t) => format!("{TOKEN_PREFIX}{}", t.name).into(),
            Principal::Jwt(j) => format!("{JWT_PREFIX}{}", j.user).into(),
        }
    }

    /// Group names.
    pub fn groups(&self) -> &[String] {
        match &self.principal {
            Principal::User(u) => &u.groups,
            Principal::Token(t) => &t.groups,
            Principal::Jwt(j) => &j.groups,
        }
    }

    /// Scopes (bearer credentials only; password users hold none).
    pub fn scopes(&self) -> &[String] {
        match &self.principal {
            Principal::User(_) => &[],
            Principal::Token(t) => &t.scopes,
            Principal::Jwt(j) => &j.scopes,
        }
    }
}

/// Authenticates a request for `route` (which must not be public): the credential
/// [`presented`] chooses is verified.
pub async fn authenticate(
    ctx: &AuthContext<'_>,
    route: &Route,
    headers: &HeaderMap,
) -> Result<Identity, Refusal> {
    let config = ctx.config;
    match presented(route, headers, ctx.sessions.has_cookie(headers))? {
        Presented::Session => session_identity(config, ctx.sessions, headers).await,
        Presented::Basic(basic) => {
            let vouched = ctx.known_devices(headers);
            let user = ctx
                .check_password(&basic.user, &basic.password, &vouched)
                .await?;
            Ok(Identity {
                principal: Principal::User(user),
                method: Scheme::Basic,
                session: None,
            })
        }
        Presented::Bearer(token) => {
            // Tokens are not guesses of a secret a person chose: a refused one is logged and
            // counted in metrics, never toward a lockout, and a locked-out client is still
            // served on a valid one (SPEC §2 `[rate_limit]`).
            let principal = bearer::authenticate(config, token).await?;
            Ok(Identity {
                principal,
                method: Scheme::Bearer,
                session: None,
            })
        }
    }
}

/// The credential a request presents on a route, by the scheme that will check it.
#[derive(Debug)]
pub enum Presented<'h> {
    /// The session cookie.
    Session,
    /// Decoded Basic credentials.
    Basic(credentials::BasicCredential),
    /// A bearer token.
    Bearer(&'h str),
}

/// Which credential `route` will check, before anything is verified; `session_cookie` says
/// whether the request carries a cookie of the session's name.
///
/// A session cookie is looked at first on routes that accept sessions: a valid one admits
/// without hashing, and an ended one is refused even when Basic credentials come with it, so
/// that a browser's Basic login is bound by the session's idle and absolute timeouts too.
/// Otherwise the one `Authorization` credential is checked against the route's schemes.
pub fn presented<'h>(
    route: &Route,
    headers: &'h HeaderMap,
    session_cookie: bool,
) -> Result<Presented<'h>, Denial> {
    if route.accepts(Scheme::Session) && session_cookie {
        return Ok(Presented::Session);
    }
    match credentials::parse(headers)? {
        Credential::None => Err(missing(route, "no credentials were sent")),
        Credential::Other(scheme) => Err(missing(
            route,
            format!("sent {scheme}, which this route does not accept"),
        )),
        Credential::Basic(basic) => {
            if !route.accepts(Scheme::Basic) {
                return Err(missing(
                    route,
                    "sent a Basic credential, which this route does not accept",
                ));
            }
            basic
                .map(Presented::Basic)
                .map_err(|why| Denial::of(Scheme::Basic, DenyReason::MalformedCredentials, why))
        }
        Credential::Bearer(token) => {
            if !route.accepts(Scheme::Bearer) {
                return Err(missing(
                    route,
                    "sent a Bearer credential, which this route does not accept",
                ));
            }
            token
                .map(Presented::Bearer)
                .map_err(|why| Denial::of(Scheme::Bearer, DenyReason::MalformedCredentials, why))
        }
    }
}

/// What authentication needs besides the request.
pub struct AuthContext<'a> {
    /// The current config.
    pub config: &'a Config,
    /// Password checks.
    pub verifier: &'a PasswordVerifier,
    /// Sessions.
    pub sessions: &'a Sessions,
    /// Failure counting and lockouts.
    pub limiter: &'a FailureLimiter,
    /// The real client address.
    pub client_ip: IpAddr,
}

impl AuthContext<'_> {
    /// The sign-ins the request's known-device cookies vouch for (none when known devices
    /// are off).
    pub fn known_devices(&self, headers: &HeaderMap) -> device::Vouched {
        device::KnownDevices::new(self.config)
            .map(|devices| devices.read(headers, device::now_secs()))
            .unwrap_or_default()
    }

    /// A password check (Basic or the login form) behind the brute-force limits: the attempt
    /// is admitted (a slot taken for the client and the user) before any hashing and before
    /// the verified-credential cache, so a locked-out guesser never learns whether a guess
    /// was right; a wrong password or unknown user keeps the slots as failures. A credential
    /// already cached or being verified joins that check without a slot of its own. A browser
    /// `vouched` for as having signed in as `user` before skips that user's lockout, never
    /// its address's (a known device, SPEC §2).
    pub async fn check_password(
        &self,
        user: &str,
        password: &str,
        vouched: &device::Vouched,
    ) -> Result<Arc<User>, Refusal> {
        let attempt = self
            .limiter
            .admit(AttemptKeys {
                ip: self.client_ip,
                user,
                known_device: vouched.vouches_for(user),
                joins_a_check: self
                    .verifier
                    .shares_a_check(&self.config.users, user, password),
            })
            .await?;
        let result = self
            .verifier
            .verify(&self.config.users, user, password)
            .await;
        match &result {
            Ok(_) => attempt.succeeded().await,
            Err(Refusal::Deny(_)) => attempt.failed().await,
            // Not verified (overloaded): the slots are given back as the attempt drops.
            Err(Refusal::Fail(_)) => drop(attempt),
        }
        result
    }
}

async fn session_identity(
    config: &Config,
    sessions: &Sessions,
    headers: &HeaderMap,
) -> Result<Identity, Refusal> {
    let (_, active) = sessions.find(headers, config).await?;
    // The user is looked up in the current config on every request: removing a user or
    // changing their groups applies to their open sessions at once.
    let user = config.users.get(&active.record.user).ok_or_else(|| {
        Denial::of(
            Scheme::Session,
            DenyReason::SessionUnknown,
            "the session's user is no longer configured",
        )
    })?;
    Ok(Identity {
        principal: Principal::User(user.clone()),
        method: Scheme::Session,
        session: Some(active),
    })
}

fn missing(route: &Route, detail: impl Into<std::borrow::Cow<'static, str>>) -> Denial {
    let detail = detail.into();
    let accepted: Vec<&str> = route.schemes.iter().map(|s| s.as_str()).collect();
    Denial::new(
        DenyReason::MissingCredentials,
        format!("{detail}; the route accepts {}", accepted.join(", ")),
    )
}
