//! `[[route]]` entries into compiled [`Route`]s, with their checks: duplicate paths, schemes,
//! methods, realms and the qualified identities of `allow_users`.

use std::sync::Arc;

use super::error::ConfigError;
use super::file::{FileConfig, RouteEntry};
use super::validate::Ctx;
use super::{Route, StaticToken, UserDb};
use crate::auth::Scheme;
use crate::response::challenge;

pub(super) fn routes(
    ctx: &Ctx<'_>,
    file: &FileConfig,
    users: &UserDb,
    tokens: &[Arc<StaticToken>],
) -> Result<Vec<Route>, ConfigError> {
    let mut out: Vec<Route> = Vec::new();
    for (i, entry) in file.routes.iter().enumerate() {
        let duplicate = file.routes[..i]
            .iter()
            .position(|other| same_path(other, entry));
        if let Some(first) = duplicate {
            let (line, _) =
                super::error::line_column(ctx.text, file.routes[first].path.span().start);
            return Err(ctx.err(
                Some(entry.path.span()),
                &format!("route[{i}].path"),
                format!(
                    "duplicate route path {:?}: already used by route[{first}] on line {line}",
                    entry.path.get_ref().as_str()
                ),
            ));
        }
        out.push(route(ctx, i, entry, users, tokens, file.jwt.is_some())?);
    }
    Ok(out)
}

/// Checks one `allow_users` entry, a qualified identity (SPEC §2): a bare name is a password
/// user, `token:NAME` a configured token, `jwt:SUBJECT` a JWT subject (needs `[jwt]`). The
/// error for a bare name that is no password user says which prefix was probably meant: before
/// identities were qualified, such an entry admitted a token or a JWT of that name.
fn allowed_identity(
    entry: &str,
    users: &UserDb,
    tokens: &[Arc<StaticToken>],
    has_jwt: bool,
) -> Result<(), String> {
    use crate::auth::{JWT_PREFIX, TOKEN_PREFIX};
    let is_token = |name: &str| tokens.iter().any(|t| t.name == name);
    if let Some(name) = entry.strip_prefix(TOKEN_PREFIX) {
        if is_token(name) {
            return Ok(());
        }
        let hint = if users.contains(name) {
            format!(" ({name:?} is a password user: write \"{name}\")")
        } else {
            String::new()
        };
        return Err(format!(
            "unknown token {name:?}: expected \"token:\" and a name from [[tokens]]{hint}"
        ));
    }
    if let Some(subject) = entry.strip_prefix(JWT_PREFIX) {
        if subject.is_empty() {
            return Err("\"jwt:\" needs the subject after it, as in \"jwt:alice\"".to_string());
        }
        if !has_jwt {
            return Err(format!(
                "{entry:?} names a JWT subject, but there is no [jwt] section"
            ));
        }
        return Ok(());
    }
    if let Some((prefix, _)) = entry.split_once(':') {
        return Err(format!(
            "unknown identity source {prefix:?} in {entry:?}: expected a password user's bare \
             name, \"token:NAME\" or \"jwt:SUBJECT\""
        ));
    }
    if users.contains(entry) {
        return Ok(());
    }
    let meant = if is_token(entry) {
        format!("; it is a token name: write \"{TOKEN_PREFIX}{entry}\"")
    } else if has_jwt {
        format!("; for a JWT subject write \"{JWT_PREFIX}{entry}\"")
    } else {
        String::new()
    };
    Err(format!(
        "unknown user {entry:?}: a bare name in allow_users is a password user from [[users]] or \
         [users_file]{meant}"
    ))
}

fn same_path(a: &RouteEntry, b: &RouteEntry) -> bool {
    let (pa, pb) = (a.path.get_ref().as_str(), b.path.get_ref().as_str());
    if a.case_insensitive || b.case_insensitive {
        pa.eq_ignore_ascii_case(pb)
    } else {
        pa == pb
    }
}

fn route(
    ctx: &Ctx<'_>,
    i: usize,
    entry: &RouteEntry,
    users: &UserDb,
    tokens: &[Arc<StaticToken>],
    has_jwt: bool,
) -> Result<Route, ConfigError> {
    let schemes = entry.auth.get_ref().clone();
    for (n, scheme) in schemes.iter().enumerate() {
        if schemes[..n].contains(scheme) {
            return Err(ctx.err(
                Some(entry.auth.span()),
                &format!("route[{i}].auth"),
                format!("scheme {:?} is listed twice", scheme.as_str()),
            ));
        }
    }
    let realm = entry
        .realm
        .clone()
        .unwrap_or_else(|| "portcullis".to_string());
    if realm.chars().any(char::is_control) {
        return Err(ctx.err(
            Some(entry.path.span()),
            &format!("route[{i}].realm"),
            "the realm must not contain control characters",
        ));
    }
    for (n, user) in entry.allow_users.iter().enumerate() {
        allowed_identity(user.get_ref(), users, tokens, has_jwt).map_err(|message| {
            ctx.err(
                Some(user.span()),
                &format!("route[{i}].allow_users[{n}]"),
                message,
            )
        })?;
    }
    let scopes = match &entry.scopes {
        Some(scopes) if !scopes.get_ref().is_empty() => {
            if !schemes.contains(&Scheme::Bearer) {
                return Err(ctx.err(
                    Some(scopes.span()),
                    &format!("route[{i}].scopes"),
                    "scopes apply to bearer tokens only, and this route does not accept \"bearer\"",
                ));
            }
            scopes.get_ref().clone()
        }
        _ => Vec::new(),
    };
    if schemes.is_empty() && (!entry.allow_users.is_empty() || !entry.allow_groups.is_empty()) {
        return Err(ctx.err(
            Some(entry.auth.span()),
            &format!("route[{i}].auth"),
            "a public route (auth = []) cannot have allow_users or allow_groups",
        ));
    }
    let methods = entry
        .methods
        .as_ref()
        .map(|m| m.iter().map(|m| m.0.clone()).collect::<Vec<_>>());
    let allow_header = methods.as_ref().map(|m| challenge::allow_header(m));
    Ok(Route {
        path: entry.path.get_ref().clone(),
        challenges: challenge::for_route(&schemes, &realm),
        methods,
        schemes,
        realm,
        allow_users: entry
            .allow_users
            .iter()
            .map(|u| u.get_ref().clone())
            .collect(),
        allow_groups: entry.allow_groups.clone(),
        scopes,
        case_insensitive: entry.case_insensitive,
        allow_header,
    })
}
