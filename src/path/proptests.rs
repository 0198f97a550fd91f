//! Property tests (proptest): the normaliser's invariants over generated hostile paths, and
//! the route decision the proxy makes against a nested route table with case-insensitive
//! routes, checked against the real `policy::resolve` as well as a local model.

use std::sync::{Arc, OnceLock};

use proptest::prelude::*;

use super::*;
use crate::config::{Config, Route};
use crate::policy::{self, Target};

/// Building blocks of generated paths: separators, dot segments in every spelling,
/// parameters, escapes (valid, broken, double, overlong, look-alike), case variants of
/// route names, and a few raw bytes the normaliser must refuse.
const TOKENS: &[&str] = &[
    "/",
    "/",
    "/",
    "/",
    "//",
    ".",
    "..",
    "...",
    "%2e",
    "%2E",
    "%2f",
    "%2F",
    "%5c",
    "%25",
    "%252e",
    "%",
    "%4",
    "%zz",
    ";",
    ";x",
    ";jsessionid=1",
    "..;",
    ".;",
    "%3b",
    "%3B",
    "admin",
    "ADMIN",
    "Admin",
    "public",
    "public-ish",
    "Public-Ish",
    "deep",
    "secret",
    "SECRET",
    "sEcReT",
    "inner",
    "INNER",
    "api",
    "items:batch",
    "items%3Abatch",
    "caf",
    "%C3%A9",
    "%c3%a9",
    "%C3",
    "%A9",
    "%C0%AE",
    "%E0%80%AE",
    "%EF%BC%8F",
    "%EF%BC%8E",
    "%e2%80%a4",
    "%41",
    "%61",
    "%64",
    "%6D",
    "%7e",
    "~",
    "%20",
    " ",
    "\t",
    "%09",
    "%00",
    "\0",
    "\\",
    "#",
    "?",
    "%23",
    "%3F",
    "%3a",
    "%40",
    "@",
    ":",
    "%2B",
    "+",
    "-",
    "_",
    "x",
    "a",
    "1",
    "{",
    "\u{e9}",
    "\u{ff0f}",
];

/// A path from 0..12 tokens after a leading slash (sometimes without one), mixed with
/// short arbitrary printable-ASCII and arbitrary-Unicode fragments.
fn hostile_path() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        6 => proptest::sample::select(TOKENS).prop_map(str::to_owned),
        1 => "[ -~]{0,4}",
        1 => any::<String>().prop_map(|s| s.chars().take(3).collect::<String>()),
    ];
    (
        prop_oneof![9 => Just("/"), 1 => Just("")],
        proptest::collection::vec(token, 0..12),
    )
        .prop_map(|(root, tokens)| format!("{root}{}", tokens.concat()))
}

/// Nested routes, some case-insensitive. (path, case_insensitive).
const ROUTES: &[(&str, bool)] = &[
    ("/", false),
    ("/public", false),
    ("/admin", false),
    ("/admin/public-ish", false),
    ("/admin/public-ish/deep", false),
    ("/secret", true),
    ("/secret/inner", false),
    ("/api", true),
    ("/api/public", false),
    ("/items:batch", false),
    ("/caf\u{e9}", false),
];

/// The route table above, compiled by the real config loader.
fn config() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let mut text = String::from(
            "[server]\nlisten = [\"127.0.0.1:0\"]\n[upstream]\nurl = \"http://127.0.0.1:9\"\n",
        );
        for (path, ci) in ROUTES {
            text.push_str(&format!(
                "[[route]]\npath = \"{path}\"\nauth = []\ncase_insensitive = {ci}\n"
            ));
        }
        Config::from_toml(std::path::Path::new("/proptest/portcullis.toml"), &text)
            .expect("route table config")
    })
}

/// What `policy::resolve` decides for a raw path: `None` when refused as ambiguous, else
/// the forwarded path and the route (by its canonical path; `"<reserved>"`, `"<none>"`).
fn decide(raw: &str) -> Option<(NormalizedPath, String)> {
    let (normalized, target) = policy::resolve(&config().routes, raw).ok()?;
    let route = match target {
        Target::Reserved => "<reserved>".to_owned(),
        Target::NoRoute => "<none>".to_owned(),
        Target::Route(route) => route_name(route),
    };
    Some((normalized, route))
}

fn route_name(route: &Arc<Route>) -> String {
    route.path.as_str().to_owned()
}

/// Longest-prefix choice over [`ROUTES`] on a matching-form path, with the local
/// `prefix_matches` (a model independent of `RouteTable`'s ordering).
fn model_route(matching: &str) -> Option<String> {
    ROUTES
        .iter()
        .map(|&(path, ci)| (canonical_route_path(path).expect("route"), ci))
        .filter(|(path, ci)| prefix_matches(path, matching, *ci))
        .max_by_key(|(path, ci)| (path.len(), !ci))
        .map(|(path, _)| path)
}

/// Percent-decodes every valid escape once (a lenient upstream).
fn decode_all(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&byte) = bytes.get(i) {
        match (byte, parse_escape(bytes.get(i + 1..i + 3))) {
            (b'%', Ok(value)) => {
                out.push(value);
                i += 3;
            }
            _ => {
                out.push(byte);
                i += 1;
            }
        }
    }
    out
}

/// How an upstream that decodes once, drops `;` parameters, trims trailing dots and
/// spaces (Windows) and merges slashes reads a forwarded path, as decoded segments.
fn upstream_reading(forward: &str) -> Vec<Vec<u8>> {
    decode_all(forward)
        .split(|&b| b == b'/')
        .map(|segment| {
            let mut segment = segment.split(|&b| b == b';').next().unwrap_or(&[]);
            while let [rest @ .., b'.' | b' '] = segment {
                segment = rest;
            }
            segment.to_vec()
        })
        .filter(|segment| !segment.is_empty())
        .collect()
}

/// The route that upstream reading falls under (routes decoded the same way).
fn upstream_route(forward: &str) -> Option<String> {
    let reading = upstream_reading(forward);
    ROUTES
        .iter()
        .map(|&(path, ci)| (canonical_route_path(path).expect("route"), ci))
        .filter(|(path, ci)| {
            let route = upstream_reading(path);
            route.len() <= reading.len()
                && route.iter().zip(&reading).all(|(r, s)| {
                    if *ci {
                        r.eq_ignore_ascii_case(s)
                    } else {
                        r == s
                    }
                })
        })
        .max_by_key(|(path, ci)| (path.len(), !ci))
        .map(|(path, _)| path)
}

fn is_dot(segment: &str) -> bool {
    segment == "." || segment == ".."
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

    /// normalize(n.forward()) == n.
    #[test]
    fn idempotent(raw in hostile_path()) {
        if let Ok(n) = normalize(&raw) {
            prop_assert_eq!(normalize(n.forward()), Ok(n.clone()), "raw {:?}", raw);
        }
    }

    /// Neither form ever has a `.` or `..` segment, even with its parameters removed,
    /// and both are ASCII and start with `/`.
    #[test]
    fn never_dot_segments(raw in hostile_path()) {
        if let Ok(n) = normalize(&raw) {
            for form in [n.forward(), n.for_matching()] {
                prop_assert!(form.starts_with('/') && form.is_ascii(), "{:?} -> {:?}", raw, form);
                for segment in form.split('/') {
                    let bare = segment.split(';').next().unwrap_or("");
                    prop_assert!(!is_dot(segment) && !is_dot(bare), "{:?} -> {:?}", raw, form);
                }
            }
        }
    }

    /// The matching form has no parameters and no empty segments; the forwarded form no
    /// empty segments either (so an upstream cannot merge slashes differently).
    #[test]
    fn matching_form_is_clean(raw in hostile_path()) {
        if let Ok(n) = normalize(&raw) {
            prop_assert!(!n.for_matching().contains(';'), "{:?} -> {:?}", raw, n.for_matching());
            prop_assert!(!n.for_matching().contains("//"), "{:?} -> {:?}", raw, n.for_matching());
            prop_assert!(!n.forward().contains("//"), "{:?} -> {:?}", raw, n.forward());
        }
    }

    /// The route checked is the route the forwarded path falls under: re-normalising
    /// what the upstream receives picks the same route in the real route table, the
    /// local model agrees with the table, and an upstream that decodes once and drops
    /// parameters reads it under that same route.
    #[test]
    fn forwarded_path_keeps_its_route(raw in hostile_path()) {
        if let Some((n, route)) = decide(&raw) {
            let again = decide(n.forward());
            prop_assert_eq!(
                again.as_ref().map(|(m, r)| (m.forward(), r.as_str())),
                Some((n.forward(), route.as_str())),
                "raw {:?}", raw
            );
            if route != "<reserved>" {
                prop_assert_eq!(model_route(n.for_matching()), Some(route.clone()), "raw {:?}", raw);
                prop_assert_eq!(upstream_route(n.forward()), Some(route), "raw {:?} -> {:?}", raw, n.forward());
            }
        }
    }

    /// Any spelling of a protected route's path with junk appended never leaves that
    /// route for a shorter one unless it walks out with a `..`.
    #[test]
    fn protected_prefix_is_sticky(
        route in proptest::sample::select(&ROUTES[1..]),
        tail in proptest::collection::vec(
            proptest::sample::select(&["/x", "/", ";p", ";p=1", "/.", "/./y", "//z", "/%41", "/%3A"][..]), 0..5),
    ) {
        let (path, ci) = route;
        let canonical = canonical_route_path(path).expect("route");
        let raw = format!("{canonical}{}", tail.concat());
        // A dot segment carrying a parameter (`/.;p`) is refused as ambiguous on purpose;
        // nothing else in these tails may be.
        let Some((n, chosen)) = decide(&raw) else {
            prop_assert!(raw.contains(".;"), "{:?} refused as ambiguous", raw);
            return Ok(());
        };
        prop_assert!(prefix_matches(&canonical, n.for_matching(), ci), "{:?}", raw);
        prop_assert!(chosen.len() >= canonical.len(), "{:?} chose {:?}", raw, chosen);
    }
}
