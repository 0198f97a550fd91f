//! `portcullis explain`: the proxy's own decision functions (`policy::resolve`,
//! `policy::authorize`) applied to a request described on the command line, printed for a
//! person. There is no second implementation of the rules here, only of the wording.

use std::fmt::Write;
use std::sync::Arc;

use http::Method;

use crate::auth::jwt::JwtIdentity;
use crate::auth::Scheme;
use crate::auth::{Identity, Principal};
use crate::config::{Config, Route, User};
use crate::error::{Denial, DenyReason};
use crate::policy::{self, Target};

/// The report for `METHOD PATH` as `user` (with `groups`, if given).
pub fn explain(
    config: &Config,
    method: &Method,
    target: &str,
    user: Option<&str>,
    groups: Option<Vec<String>>,
) -> String {
    let mut out = String::new();
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    let _ = writeln!(out, "request:     {method} {target}");
    let (normalized, target) = match policy::resolve(&config.routes, path) {
        Ok(resolved) => resolved,
        Err(denial) => return finish(out, Err(denial)),
    };
    let _ = writeln!(
        out,
        "normalised:  {} (matched as {})",
        normalized.forward(),
        normalized.for_matching()
    );
    let route = match target {
        Target::Reserved => {
            let _ = writeln!(
                out,
                "route:       (the proxy's own /.portcullis/ endpoints)"
            );
            return out;
        }
        Target::NoRoute => return finish(out, Err(policy::no_route())),
        Target::Route(route) => route,
    };
    let _ = writeln!(out, "route:       {}", route.path);
    let accepted: Vec<&str> = route.schemes.iter().map(|s| s.as_str()).collect();
    let accepts = if route.is_public() {
        "public (no credentials)".to_string()
    } else {
        accepted.join(", ")
    };
    let _ = writeln!(out, "accepts:     {accepts}");
    if route.is_public() {
        return finish(out, policy::authorize(route, None, method));
    }
    let Some(user) = user else {
        let _ = writeln!(
            out,
            "user:        (none given; pass --user NAME to decide for a caller)"
        );
        return finish(
            out,
            Err(Denial::new(
                DenyReason::MissingCredentials,
                "a request without credentials is refused",
            )),
        );
    };
    let identity = match identity_for(config, route, user, groups) {
        Ok(identity) => identity,
        Err(denial) => return finish(out, Err(denial)),
    };
    let _ = writeln!(
        out,
        "user:        {} (groups: {}) via {}",
        identity.user(),
        if identity.groups().is_empty() {
            "none".to_string()
        } else {
            identity.groups().join(", ")
        },
        identity.method.as_str()
    );
    // What allow_users is matched against and the upstream receives in identity_header.
    let _ = writeln!(out, "identity:    {}", identity.qualified());
    finish(out, policy::authorize(route, Some(&identity), method))
}

fn finish(mut out: String, decision: Result<(), Denial>) -> String {
    match decision {
        Ok(()) => out.push_str("decision:    allow\n"),
        Err(denial) => {
            let _ = writeln!(out, "decision:    deny");
            let _ = writeln!(out, "reason:      {}", denial.reason.as_str());
            let _ = writeln!(out, "detail:      {}", denial.detail);
        }
    }
    out
}

/// The identity a caller named `user` would have on `route`, authenticated with the first of
/// the route's schemes that fits them (assuming their credential itself is valid). `user` may
/// be qualified (`token:deploy-bot`, `jwt:alice`); a bare name is a password user, else a
/// token, else a JWT subject, and the report's `identity` line says which it was taken for.
fn identity_for(
    config: &Config,
    route: &Route,
    user: &str,
    groups: Option<Vec<String>>,
) -> Result<Identity, Denial> {
    let first = |candidates: &[Scheme]| {
        route
            .schemes
            .iter()
            .copied()
            .find(|s| candidates.contains(s))
    };
    let (source, user) = match (
        user.strip_prefix(crate::auth::TOKEN_PREFIX),
        user.strip_prefix(crate::auth::JWT_PREFIX),
    ) {
        (Some(name), _) => (Source::Token, name),
        (_, Some(subject)) => (Source::Jwt, subject),
        (None, None) => (Source::Any, user),
    };
    let record = match source {
        Source::Any => config.users.get(user),
        Source::Token | Source::Jwt => None,
    };
    if let Some(record) = record {
        let method = first(&[Scheme::Session, Scheme::Basic]).ok_or_else(|| {
            Denial::new(
                DenyReason::MissingCredentials,
                format!("{user:?} signs in with a password, and the route accepts neither basic nor session"),
            )
        })?;
        let record = match groups {
            Some(groups) => Arc::new(User {
                name: record.name.clone(),
                hash: record.hash.clone(),
                groups,
            }),
            None => record.clone(),
        };
        return Ok(Identity {
            principal: Principal::User(record),
            method,
            session: None,
        });
    }
    let bearer = first(&[Scheme::Bearer]);
    let token = match source {
        Source::Any | Source::Token => config.tokens.iter().find(|t| t.name == user),
        Source::Jwt => None,
    };
    if let Some(token) = token {
        let method = bearer.ok_or_else(|| {
            Denial::new(
                DenyReason::MissingCredentials,
                format!("{user:?} is a bearer token and the route does not accept bearer"),
            )
        })?;
        return Ok(Identity {
            principal: Principal::Token(token.clone()),
            method,
            session: None,
        });
    }
    match (bearer, config.jwt.is_some(), source) {
        (_, _, Source::Token) => Err(Denial::new(
            DenyReason::UnknownToken,
            format!("{user:?} is not a configured token"),
        )),
        (Some(method), true, Source::Any | Source::Jwt) => Ok(Identity {
            principal: Principal::Jwt(Arc::new(JwtIdentity {
                user: user.to_string(),
                groups: groups.unwrap_or_default(),
                scopes: Vec::new(),
            })),
            method,
            session: None,
        }),
        _ => Err(Denial::new(
            DenyReason::UnknownUser,
            format!("{user:?} is not a configured user or token (and the route takes no JWTs)"),
        )),
    }
}

/// Where `--user` says the caller comes from.
#[derive(Clone, Copy)]
enum Source {
    /// A bare name: a password user, else a token, else a JWT subject.
    Any,
    /// `token:NAME`.
    Token,
    /// `jwt:SUBJECT`.
    Jwt,
}
