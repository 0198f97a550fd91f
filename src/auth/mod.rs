//! Authentication: reading the credential a request presents, checking it with the route's
//! schemes, and the identity that results.

pub mod basic;
pub mod bearer;
pub mod credentials;
pub mod jwks;
pub mod jwt;
pub mod password;

use std::sync::Arc;

use http::HeaderMap;

pub use basic::PasswordVerifier;
pub use credentials::Credential;

use crate::config::{Config, Route, Scheme, StaticToken, User};
use crate::session::{ActiveSession, Sessions};
use crate::error::{DenyReason, Denial, Refusal};

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

/// Authenticates a request for `route` (which must not be public).
///
/// A session cookie is looked at first on routes that accept sessions: a valid one admits
/// without hashing, and an ended one is refused even when Basic credentials come with it, so
/// that a browser's Basic login is bound by the session's idle and absolute timeouts too.
/// Otherwise the one `Authorization` credential is checked against the route's schemes.
pub async fn authenticate(
    config: &Config,
    verifier: &PasswordVerifier,
    sessions: &Sessions,
    route: &Route,
    headers: &HeaderMap,
) -> Result<Identity, Refusal> {
    if route.accepts(Scheme::Session) && sessions.has_cookie(headers) {
        return session_identity(config, sessions, headers).await;
    }
    let credential = credentials::parse(headers)?;
    match credential {
        Credential::None => Err(missing(route, "no credentials were sent").into()),
        Credential::Other(scheme) => Err(missing(
            route,
            format!("sent a {scheme:?} credential, which this route does not accept"),
        )
        .into()),
        Credential::Basic(basic) => {
            if !route.accepts(Scheme::Basic) {
                return Err(missing(route, "sent a Basic credential, which this route does not accept").into());
            }
            let basic = basic.map_err(|why| Denial::of(Scheme::Basic, DenyReason::MalformedCredentials, why))?;
            let user = verifier.verify(&config.users, &basic.user, &basic.password).await?;
            Ok(Identity {
                principal: Principal::User(user),
                method: Scheme::Basic,
                session: None,
            })
        }
        Credential::Bearer(token) => {
            if !route.accepts(Scheme::Bearer) {
                return Err(missing(route, "sent a Bearer credential, which this route does not accept").into());
            }
            let token = token.map_err(|why| Denial::of(Scheme::Bearer, DenyReason::MalformedCredentials, why))?;
            let principal = bearer::authenticate(config, token).await?;
            Ok(Identity {
                principal,
                method: Scheme::Bearer,
                session: None,
            })
        }
    }
}

async fn session_identity(config: &Config, sessions: &Sessions, headers: &HeaderMap) -> Result<Identity, Refusal> {
    let id = sessions.cookie(headers).ok_or_else(|| {
        Denial::of(Scheme::Session, DenyReason::SessionUnknown, "the session cookie is not one this proxy issued")
    })?;
    let active = sessions.check(id).await?;
    // The user is looked up in the current config on every request: removing a user or
    // changing their groups applies to their open sessions at once.
    let user = config.users.get(&active.record.user).ok_or_else(|| {
        Denial::of(Scheme::Session, DenyReason::SessionUnknown, "the session's user is no longer configured")
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
