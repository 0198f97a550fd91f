//! The path normaliser and the route matcher, through `policy::resolve` exactly as the proxy
//! calls it.
//!
//! Input: optional extra route lines, then the request path (the last line). A route line
//! starting with `~` is case-insensitive. Properties, for every path the proxy admits:
//! - normalising the forwarded path again gives the same result (idempotent),
//! - the forwarded path, resolved again, falls under the very route that was checked (so an
//!   upstream that normalises the same way cannot land somewhere else),
//! - neither the forwarded nor the matching path has a dot segment, an empty segment in the
//!   middle, a backslash or NUL, and a segment's `;` parameters never hide a dot segment,
//! - a configured route's own path resolves to that route (a protected route that cannot
//!   match would fail open to a shorter one).
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use portcullis::config::{Route, RoutePath};
use portcullis::path::normalize;
use portcullis::policy::{resolve, RouteTable, Target};

const BASE_ROUTES: &[(&str, bool)] = &[
    ("/", false),
    ("/admin", false),
    ("/admin/public", false),
    ("/public", false),
    ("/secret", true),
    ("/Secret/inner", false),
    ("/items:batch", false),
    ("/caf\u{e9}", false),
    ("/api/v1", false),
    ("/a+b/c@d", false),
];

fn route(path: &str, case_insensitive: bool) -> Option<Route> {
    let path: RoutePath = path.parse().ok()?;
    Some(Route {
        path,
        methods: None,
        schemes: Vec::new(),
        realm: String::new(),
        allow_users: Vec::new(),
        allow_groups: Vec::new(),
        scopes: Vec::new(),
        case_insensitive,
        challenges: Vec::new(),
        allow_header: None,
    })
}

fn same_target(a: &Target<'_>, b: &Target<'_>) -> bool {
    match (a, b) {
        (Target::Reserved, Target::Reserved) | (Target::NoRoute, Target::NoRoute) => true,
        (Target::Route(x), Target::Route(y)) => Arc::ptr_eq(x, y),
        _ => false,
    }
}

fn describe(t: &Target<'_>) -> String {
    match t {
        Target::Reserved => "reserved".into(),
        Target::NoRoute => "no route".into(),
        Target::Route(r) => format!("route {}", r.path),
    }
}

fn check_shape(what: &str, path: &str, raw: &str) {
    assert!(path.starts_with('/'), "{what} {path:?} of {raw:?}");
    assert!(
        !path.contains('\\') && !path.contains('\0'),
        "{what} {path:?} of {raw:?}"
    );
    let segments: Vec<&str> = path[1..].split('/').collect();
    for (i, segment) in segments.iter().enumerate() {
        let bare = segment.split(';').next().unwrap_or("");
        assert!(
            bare != "." && bare != "..",
            "{what} {path:?} of {raw:?} has a dot segment"
        );
        // Only the last segment may be empty (a trailing slash).
        if i + 1 < segments.len() {
            assert!(!segment.is_empty(), "{what} {path:?} of {raw:?} has `//`");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines: Vec<&str> = text.split('\n').collect();
    let raw = lines.pop().unwrap_or("");
    let mut routes: Vec<Route> = BASE_ROUTES
        .iter()
        .filter_map(|(p, ci)| route(p, *ci))
        .collect();
    for line in lines.into_iter().take(4) {
        let (path, ci) = match line.strip_prefix('~') {
            Some(rest) => (rest, true),
            None => (line, false),
        };
        let Some(extra) = route(path, ci) else {
            continue;
        };
        // The config refuses two routes with one path; mirror that.
        if routes
            .iter()
            .any(|r| r.path.as_str().eq_ignore_ascii_case(extra.path.as_str()))
        {
            continue;
        }
        routes.push(extra);
    }
    let table = RouteTable::new(routes);

    // Every route's own path leads to it (or is refused as ambiguous, which fails closed).
    for configured in table.iter() {
        if let Ok((_, target)) = resolve(&table, configured.path.as_str()) {
            match target {
                Target::Route(found) => assert!(
                    found.path.as_str().len() >= configured.path.as_str().len(),
                    "route {} is shadowed by the shorter {} for its own path",
                    configured.path,
                    found.path
                ),
                Target::Reserved => {}
                Target::NoRoute => panic!("route {} does not match its own path", configured.path),
            }
        }
    }

    let Ok((normalized, target)) = resolve(&table, raw) else {
        return;
    };
    let forward = normalized.forward();
    let matching = normalized.for_matching();
    check_shape("forwarded path", forward, raw);
    check_shape("matching path", matching, raw);
    assert!(
        !matching.contains(';'),
        "matching path {matching:?} of {raw:?} kept a parameter"
    );

    let again = normalize(forward)
        .unwrap_or_else(|why| panic!("{raw:?} -> {forward:?}, which is refused again: {why}"));
    assert_eq!(
        again, normalized,
        "normalisation of {raw:?} is not idempotent"
    );

    let (_, target_again) = resolve(&table, forward).expect("checked above");
    assert!(
        same_target(&target, &target_again),
        "{raw:?} was checked against {} but is forwarded as {forward:?}, which falls under {}",
        describe(&target),
        describe(&target_again)
    );
    // The matching form, read as a path of its own, also stays under the same route.
    if let Ok((_, target_matching)) = resolve(&table, matching) {
        assert!(
            same_target(&target, &target_matching),
            "{raw:?}: matching path {matching:?} falls under {} instead of {}",
            describe(&target_matching),
            describe(&target)
        );
    }
});
