//! The access decision: which route a path falls under, and whether an identity may use it.
//! The proxy and `explain` both call [`decide`]; there is no second implementation.

mod decide;
mod route;

pub use decide::{
    decide, login_redirect, navigation, session_refusal, Authenticate, Decision, Described,
    Destination, Peer, Verdict,
};
pub use route::RouteTable;

use std::sync::Arc;

use http::Method;

use crate::auth::Identity;
use crate::auth::Scheme;
use crate::config::Route;
use crate::error::{Denial, DenyReason};
use crate::path::{self, NormalizedPath};

/// Paths under this prefix are the proxy's own (`/.portcullis/login` …), never forwarded.
pub const RESERVED_PREFIX: &str = "/.portcullis";

/// Where a request path leads.
#[derive(Debug)]
pub enum Target<'a> {
    /// One of the proxy's own endpoints.
    Reserved,
    /// A configured route.
    Route(&'a Arc<Route>),
    /// Nothing: refused with 403 `no_route`.
    NoRoute,
}

/// Step 2 of request handling: normalise the path (ambiguous paths are refused), then pick
/// the route by the longest segment-boundary prefix of the normalised path.
pub fn resolve<'a>(
    routes: &'a RouteTable,
    raw_path: &str,
) -> Result<(NormalizedPath, Target<'a>), Denial> {
    let normalized = path::normalize(raw_path)
        .map_err(|why| Denial::new(DenyReason::AmbiguousPath, why.to_string()))?;
    let target = if path::prefix_matches(RESERVED_PREFIX, normalized.for_matching(), true) {
        Target::Reserved
    } else {
        routes
            .find(normalized.for_matching())
            .map_or(Target::NoRoute, Target::Route)
    };
    Ok((normalized, target))
}

/// The denial for a path no route covers.
pub fn no_route() -> Denial {
    Denial::new(DenyReason::NoRoute, "no route matches the path")
}

/// Step 4 of request handling: allow lists, then scopes, then methods.
/// `identity` is `None` only on public routes.
pub fn authorize(
    route: &Route,
    identity: Option<&Identity>,
    method: &Method,
) -> Result<(), Denial> {
    if let Some(identity) = identity {
        allowed(route, identity)?;
        scopes(route, identity)?;
    }
    methods(route, method)
}

fn allowed(route: &Route, identity: &Identity) -> Result<(), Denial> {
    if route.allow_users.is_empty() && route.allow_groups.is_empty() {
        return Ok(());
    }
    // Qualified on both sides: a JWT subject or token name never matches a password user.
    let qualified = identity.qualified();
    let by_user = route.allow_users.iter().any(|u| *u == qualified);
    let by_group = identity
        .groups()
        .iter()
        .any(|g| route.allow_groups.iter().any(|a| a == g));
    if by_user || by_group {
        return Ok(());
    }
    Err(Denial::new(
        DenyReason::UserNotAllowed,
        format!(
            "user {:?} is not in allow_users and none of their groups is in allow_groups of route {}",
            qualified,
            route.path
        ),
    ))
}

fn scopes(route: &Route, identity: &Identity) -> Result<(), Denial> {
    if identity.method != Scheme::Bearer || route.scopes.is_empty() {
        return Ok(());
    }
    let missing: Vec<&str> = route
        .scopes
        .iter()
        .filter(|needed| !identity.scopes().contains(needed))
        .map(String::as_str)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(Denial::of(
        Scheme::Bearer,
        DenyReason::InsufficientScope,
        format!("token lacks scopes: {}", missing.join(" ")),
    ))
}

fn methods(route: &Route, method: &Method) -> Result<(), Denial> {
    match &route.methods {
        Some(allowed) if !allowed.contains(method) => Err(Denial::new(
            DenyReason::MethodNotAllowed,
            format!("method {method} is not in the route's methods"),
        )),
        _ => Ok(()),
    }
}

/// Headers some frameworks read in place of the request's method (and, behind CGI-style
/// servers, their `_` spellings).
const METHOD_OVERRIDE_HEADERS: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// On a route limited by `methods`, a method-override header must name an allowed method too:
/// otherwise `POST` with `X-HTTP-Method-Override: DELETE` would carry a DELETE past the check
/// to an upstream that honours the header.
pub fn method_overrides(route: &Route, headers: &http::HeaderMap) -> Result<(), Denial> {
    let Some(allowed) = &route.methods else {
        return Ok(());
    };
    for (name, value) in headers {
        let name = name.as_str();
        let is_override = METHOD_OVERRIDE_HEADERS.iter().any(|h| {
            h.len() == name.len()
                && h.bytes()
                    .zip(name.bytes())
                    .all(|(a, b)| a == b || (a == b'-' && b == b'_'))
        });
        if !is_override {
            continue;
        }
        let named = Method::from_bytes(value.as_bytes().trim_ascii());
        if !named.is_ok_and(|m| allowed.contains(&m)) {
            return Err(Denial::new(
                DenyReason::MethodNotAllowed,
                format!(
                    "{name} names {:?}, which is not in the route's methods",
                    String::from_utf8_lossy(value.as_bytes())
                ),
            ));
        }
    }
    Ok(())
}
