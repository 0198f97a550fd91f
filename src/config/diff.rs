//! What changed between two configurations, by name only (never a hash or a secret), for the
//! reload log.

use std::collections::BTreeSet;

use super::Config;

/// Human lines describing the change from `old` to `new`.
pub fn diff(old: &Config, new: &Config) -> Vec<String> {
    let mut changes = Vec::new();
    let route_names =
        |c: &Config| -> BTreeSet<String> { c.routes.iter().map(|r| r.path.to_string()).collect() };
    named_changes(&mut changes, "route", &route_names(old), &route_names(new));
    let user_names =
        |c: &Config| -> BTreeSet<String> { c.users.names().map(str::to_string).collect() };
    named_changes(&mut changes, "user", &user_names(old), &user_names(new));
    for name in user_names(old).intersection(&user_names(new)) {
        let (Some(before), Some(after)) = (old.users.get(name), new.users.get(name)) else {
            continue;
        };
        if before.hash != after.hash {
            changes.push(format!("user {name:?}: password changed"));
        }
        if before.groups != after.groups {
            changes.push(format!("user {name:?}: groups changed"));
        }
    }
    let token_names =
        |c: &Config| -> BTreeSet<String> { c.tokens.iter().map(|t| t.name.clone()).collect() };
    named_changes(&mut changes, "token", &token_names(old), &token_names(new));
    if old.upstream.url != new.upstream.url {
        changes.push(format!(
            "upstream: {} -> {}",
            old.upstream.url, new.upstream.url
        ));
    }
    if old.server.listen != new.server.listen
        || old.server.admin_listen != new.server.admin_listen
        || old.server.workers != new.server.workers
        || old.server.max_connections != new.server.max_connections
    {
        changes.push("[server] listen/admin_listen/workers/max_connections changed: takes effect after a restart".to_string());
    }
    changes
}

/// The users whose sessions a reload ends: their password changed, or they were removed.
/// Sorted names (never a hash).
pub fn revoked_users(old: &Config, new: &Config) -> Vec<String> {
    let mut names: Vec<String> = old
        .users
        .names()
        .filter(|name| match (old.users.get(name), new.users.get(name)) {
            (Some(before), Some(after)) => before.hash != after.hash,
            _ => true,
        })
        .map(str::to_string)
        .collect();
    names.sort();
    names
}

fn named_changes(
    out: &mut Vec<String>,
    what: &str,
    old: &BTreeSet<String>,
    new: &BTreeSet<String>,
) {
    for added in new.difference(old) {
        out.push(format!("{what} {added:?} added"));
    }
    for removed in old.difference(new) {
        out.push(format!("{what} {removed:?} removed"));
    }
}
