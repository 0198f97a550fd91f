//! The normaliser and the prefix match, case by case: every hostile spelling we know of.

use super::AmbiguousPath::*;
use super::*;

type Expected = Result<(&'static str, &'static str), AmbiguousPath>;

/// (raw path, expected (forward, for_matching) or error).
const CASES: &[(&str, Expected)] = &[
    // Origin form.
    ("/", Ok(("/", "/"))),
    ("", Err(NotOriginForm)),
    ("*", Err(NotOriginForm)),
    ("http://x/admin", Err(NotOriginForm)),
    ("admin", Err(NotOriginForm)),
    ("%2fadmin", Err(NotOriginForm)),
    // Repeated and trailing slashes.
    ("//admin///x", Ok(("/admin/x", "/admin/x"))),
    ("//", Ok(("/", "/"))),
    ("/admin/", Ok(("/admin/", "/admin/"))),
    ("/admin//", Ok(("/admin/", "/admin/"))),
    ("///admin", Ok(("/admin", "/admin"))),
    // Encoded dots.
    ("/%2e%2e/admin", Err(EncodedDotSegment)),
    ("/%2E%2e/", Err(EncodedDotSegment)),
    ("/.%2e/admin", Err(EncodedDotSegment)),
    ("/%2e./admin", Err(EncodedDotSegment)),
    ("/admin/%2e", Err(EncodedDotSegment)),
    ("/%2e/admin", Err(EncodedDotSegment)),
    ("/%2e%2e%2e/admin", Err(EncodedDotSegment)),
    ("/public/%2e%2e/admin", Err(EncodedDotSegment)),
    ("/a%2eb", Ok(("/a.b", "/a.b"))),
    ("/%2e%2e;x/admin", Err(DotSegmentParameter)),
    ("/admin/..%2f", Err(EncodedSlash)),
    // Encoded slashes.
    ("/admin%2fsecret", Err(EncodedSlash)),
    ("/admin%2Fx", Err(EncodedSlash)),
    ("/%2f%2fadmin", Err(EncodedSlash)),
    ("/public/..%2fadmin", Err(EncodedSlash)),
    // Double encoding.
    ("/%252e%252e/admin", Err(DoubleEncoding)),
    ("/%252E", Err(DoubleEncoding)),
    ("/admin%252fx", Err(DoubleEncoding)),
    ("/admin%255cx", Err(DoubleEncoding)),
    ("/a%2500", Err(DoubleEncoding)),
    ("/a%25252e", Err(DoubleEncoding)),
    ("/a%25%32%65", Err(DoubleEncoding)),
    ("/%25c0%25ae", Err(DoubleEncoding)),
    ("/admin%253bx", Err(DoubleEncoding)),
    ("/a%2541", Err(DoubleEncoding)),
    ("/%2561dmin", Err(DoubleEncoding)),
    ("/items%253Abatch", Err(DoubleEncoding)),
    ("/a%2520b", Err(DoubleEncoding)),
    ("/a%254%31", Err(DoubleEncoding)),
    ("/100%25", Ok(("/100%25", "/100%25"))),
    ("/a%25zz", Ok(("/a%25zz", "/a%25zz"))),
    ("/50%25off", Ok(("/50%25off", "/50%25off"))),
    ("/a%25%25", Ok(("/a%25%25", "/a%25%25"))),
    // Backslashes.
    ("/admin\\x", Err(Backslash)),
    ("/\\admin", Err(Backslash)),
    ("/..\\admin", Err(Backslash)),
    ("/admin%5cx", Err(EncodedBackslash)),
    ("/admin%5C..%5C", Err(EncodedBackslash)),
    // `;` parameters.
    ("/admin;jsessionid=1", Ok(("/admin;jsessionid=1", "/admin"))),
    // Trailing dots and spaces: Windows-style upstreams drop them, so matching does too.
    ("/admin.", Ok(("/admin.", "/admin"))),
    ("/admin%2e", Ok(("/admin.", "/admin"))),
    ("/admin%20", Ok(("/admin%20", "/admin"))),
    ("/admin.%20./x", Ok(("/admin.%20./x", "/admin/x"))),
    ("/admin..;x/y", Ok(("/admin..;x/y", "/admin/y"))),
    ("/a.b.", Ok(("/a.b.", "/a.b"))),
    ("/%20admin", Ok(("/%20admin", "/%20admin"))),
    ("/..;/admin", Err(DotSegmentParameter)),
    ("/public/..;/admin", Err(DotSegmentParameter)),
    ("/.;/admin", Err(DotSegmentParameter)),
    ("/admin/..;", Err(DotSegmentParameter)),
    ("/public/.;x/../admin", Err(DotSegmentParameter)),
    ("/a/..;x/../b", Err(DotSegmentParameter)),
    ("/;x/admin", Ok(("/;x/admin", "/admin"))),
    ("/admin;foo/x", Ok(("/admin;foo/x", "/admin/x"))),
    ("/admin/;x", Ok(("/admin/;x", "/admin/"))),
    ("/admin;", Ok(("/admin;", "/admin"))),
    ("/;", Ok(("/;", "/"))),
    ("/;../admin", Ok(("/;../admin", "/admin"))),
    ("/a;b=c;d/e", Ok(("/a;b=c;d/e", "/a/e"))),
    ("/admin;x/../public", Ok(("/public", "/public"))),
    ("/admin%3bx", Err(EncodedSemicolon)),
    ("/..%3B/admin", Err(EncodedSemicolon)),
    // NUL and control characters.
    ("/admin%00.html", Err(Nul)),
    ("/%00", Err(Nul)),
    ("/admin\0", Err(Nul)),
    ("/a%09b", Err(ControlCharacter)),
    ("/a%0d%0aSet-Cookie:x", Err(ControlCharacter)),
    ("/a%0A", Err(ControlCharacter)),
    ("/a%7f", Err(ControlCharacter)),
    ("/a%C2%85", Err(ControlCharacter)),
    ("/a\x01", Err(ControlCharacter)),
    ("/a\x7f", Err(ControlCharacter)),
    // Raw whitespace.
    ("/a\tb", Err(Whitespace)),
    ("/a b", Err(Whitespace)),
    ("/a\r\nb", Err(Whitespace)),
    ("/admin ", Err(Whitespace)),
    ("/a%20b", Ok(("/a%20b", "/a%20b"))),
    // UTF-8.
    ("/%C0%AE%C0%AE/admin", Err(NotUtf8)),
    ("/%C0%AF", Err(NotUtf8)),
    ("/%E0%80%AE", Err(NotUtf8)),
    ("/%80", Err(NotUtf8)),
    ("/%FF", Err(NotUtf8)),
    ("/%ED%A0%80", Err(NotUtf8)),
    ("/%F4%90%80%80", Err(NotUtf8)),
    ("/caf%C3", Err(NotUtf8)),
    ("/caf%C3a%A9", Err(NotUtf8)),
    ("/caf%C3/%A9", Err(NotUtf8)),
    ("/caf%C3%A9", Ok(("/caf%C3%A9", "/caf%C3%A9"))),
    ("/caf%c3%a9", Ok(("/caf%C3%A9", "/caf%C3%A9"))),
    ("/%F0%9F%A6%80", Ok(("/%F0%9F%A6%80", "/%F0%9F%A6%80"))),
    ("/caf\u{e9}", Err(RawNonAscii)),
    // Delimiter look-alikes.
    ("/admin%EF%BC%8Fx", Err(LookalikeCharacter)),
    ("/%EF%BC%8E%EF%BC%8E/admin", Err(LookalikeCharacter)),
    ("/a%E2%88%95b", Err(LookalikeCharacter)),
    ("/%CD%BE", Err(LookalikeCharacter)),
    // Case.
    ("/ADMIN", Ok(("/ADMIN", "/ADMIN"))),
    ("/Admin", Ok(("/Admin", "/Admin"))),
    ("/%7e", Ok(("/~", "/~"))),
    ("/%7Euser", Ok(("/~user", "/~user"))),
    ("/%41dmin", Ok(("/Admin", "/Admin"))),
    ("/%61%64%6d%69%6e", Ok(("/admin", "/admin"))),
    ("/a%3a", Ok(("/a%3A", "/a:"))),
    ("/items%3Abatch", Ok(("/items%3Abatch", "/items:batch"))),
    (
        "/users/a%40b.com",
        Ok(("/users/a%40b.com", "/users/a@b.com")),
    ),
    ("/C%2b%2B;x", Ok(("/C%2B%2B;x", "/C++"))),
    (
        "/a%2A%21%24%26%27%28%29%2C%3D",
        Ok(("/a%2A%21%24%26%27%28%29%2C%3D", "/a*!$&'(),=")),
    ),
    // Dot segments.
    ("/admin/../public", Ok(("/public", "/public"))),
    ("/public/../admin", Ok(("/admin", "/admin"))),
    ("/admin/.", Ok(("/admin/", "/admin/"))),
    ("/admin/..", Ok(("/", "/"))),
    ("/a/./b", Ok(("/a/b", "/a/b"))),
    ("/a/b/../c", Ok(("/a/c", "/a/c"))),
    ("/../a", Ok(("/a", "/a"))),
    ("/../../..", Ok(("/", "/"))),
    ("/a/b/..", Ok(("/a/", "/a/"))),
    ("/a/b/../", Ok(("/a/", "/a/"))),
    ("/a//../b", Ok(("/b", "/b"))),
    ("/./admin", Ok(("/admin", "/admin"))),
    ("/...", Err(DotLikeSegment)),
    ("/a/..../b", Err(DotLikeSegment)),
    ("/..%20/admin", Err(DotLikeSegment)),
    ("/.%20./admin", Err(DotLikeSegment)),
    ("/%2e%2e%20/admin", Err(DotLikeSegment)),
    ("/...;x/admin", Err(DotLikeSegment)),
    ("/%20/admin", Err(DotLikeSegment)),
    ("/admin/%20%20;x", Err(DotLikeSegment)),
    (
        "/Washington,_D.C.",
        Ok(("/Washington,_D.C.", "/Washington,_D.C")),
    ),
    ("/.hidden/..x", Ok(("/.hidden/..x", "/.hidden/..x"))),
    // Fragments and query markers.
    ("/admin#x", Err(Fragment)),
    ("/#", Err(Fragment)),
    ("/admin%23x", Ok(("/admin%23x", "/admin%23x"))),
    ("/admin?x=1", Err(QuestionMark)),
    ("/a%3fb", Ok(("/a%3Fb", "/a%3Fb"))),
    // Malformed percent-encoding.
    ("/%", Err(BadPercentEncoding)),
    ("/%4", Err(BadPercentEncoding)),
    ("/%zz", Err(BadPercentEncoding)),
    ("/%4g", Err(BadPercentEncoding)),
    ("/%%32%65", Err(BadPercentEncoding)),
    ("/%u002e%u002e/admin", Err(BadPercentEncoding)),
    ("/%\u{e9}", Err(BadPercentEncoding)),
    // Other characters.
    ("/a{b}", Err(InvalidCharacter)),
    ("/a|b", Err(InvalidCharacter)),
    ("/a\"b", Err(InvalidCharacter)),
    ("/a<b>", Err(InvalidCharacter)),
    ("/a[0]", Err(InvalidCharacter)),
    ("/a%7Bb%7D", Ok(("/a%7Bb%7D", "/a%7Bb%7D"))),
    ("/a%25%7B", Ok(("/a%25%7B", "/a%25%7B"))),
    (
        "/a:b@c!$&'()*+,=",
        Ok(("/a:b@c!$&'()*+,=", "/a:b@c!$&'()*+,=")),
    ),
    ("/-._~", Ok(("/-._~", "/-._~"))),
];

/// Routes used to check that the forwarded path matches like `for_matching()`.
const SAMPLE_ROUTES: &[&str] = &[
    "/",
    "/admin",
    "/public",
    "/a",
    "/a/b",
    "/Admin",
    "/caf%C3%A9",
];

fn actual(raw: &str) -> Result<(String, String), AmbiguousPath> {
    normalize(raw).map(|n| (n.forward().to_owned(), n.for_matching().to_owned()))
}

#[test]
fn hostile_inputs_table() {
    assert!(CASES.len() >= 50);
    let mut failures = Vec::new();
    for (raw, expected) in CASES {
        let expected = expected.map(|(f, m)| (f.to_owned(), m.to_owned()));
        let got = actual(raw);
        if got != expected {
            failures.push(format!("{raw:?}: expected {expected:?}, got {got:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn normalisation_is_idempotent_on_table() {
    for (raw, _) in CASES {
        if let Ok(n) = normalize(raw) {
            assert_eq!(normalize(n.forward()), Ok(n.clone()), "raw {raw:?}");
        }
    }
}

#[test]
fn forward_matches_same_routes_as_for_matching_on_table() {
    for (raw, _) in CASES {
        let Ok(n) = normalize(raw) else { continue };
        let again = normalize(n.forward()).expect("forward must renormalise");
        for route in SAMPLE_ROUTES {
            for ci in [false, true] {
                assert_eq!(
                    prefix_matches(route, again.for_matching(), ci),
                    prefix_matches(route, n.for_matching(), ci),
                    "raw {raw:?} route {route:?} ci {ci}"
                );
            }
        }
    }
}

#[test]
fn error_display_never_contains_the_path() {
    for (raw, _) in CASES {
        if let Err(e) = normalize(raw) {
            let msg = e.to_string();
            assert!(!msg.is_empty());
            assert!(raw.len() < 3 || !msg.contains(raw), "{msg}");
        }
    }
}

#[test]
fn prefix_matching_respects_segment_boundaries() {
    let cases: &[(&str, &str, bool, bool)] = &[
        ("/admin", "/admin", false, true),
        ("/admin", "/admin/", false, true),
        ("/admin", "/admin/x", false, true),
        ("/admin", "/administrator", false, false),
        ("/admin", "/admi", false, false),
        ("/admin", "/", false, false),
        ("/admin", "/public/admin", false, false),
        ("/admin", "/ADMIN", false, false),
        ("/admin", "/ADMIN", true, true),
        ("/admin", "/Admin/x", true, true),
        ("/admin", "/ADMINISTRATOR", true, false),
        ("/a/b", "/a/b/c", false, true),
        ("/a/b", "/a/bc", false, false),
        ("/a/b", "/a", false, false),
        ("/", "/", false, true),
        ("/", "/anything/at/all", false, true),
        ("/", "/x", true, true),
        // Defensive: non-canonical input.
        ("/admin/", "/admin/x", false, true),
        ("/admin/", "/administrator", false, false),
        ("admin", "/admin", false, false),
        ("/admin", "admin", false, false),
        ("", "/", false, false),
        ("/", "", false, false),
        // Non-ASCII (encoded) and case-insensitivity only affects ASCII.
        ("/caf%C3%A9", "/caf%C3%A9/x", false, true),
        ("/CAF%C3%A9", "/caf%C3%A9", true, true),
    ];
    for &(route, path, ci, expected) in cases {
        assert_eq!(
            prefix_matches(route, path, ci),
            expected,
            "route {route:?} path {path:?} ci {ci}"
        );
    }
}

#[test]
fn prefix_matching_after_normalisation() {
    let matches = |raw: &str, route: &str, ci: bool| {
        let n = normalize(raw).expect("valid path");
        prefix_matches(route, n.for_matching(), ci)
    };
    assert!(matches("/admin;x", "/admin", false));
    assert!(matches("/admin;jsessionid=1/users", "/admin", false));
    assert!(matches("/;x/admin", "/admin", false));
    assert!(matches("//admin", "/admin", false));
    assert!(matches("/public/../admin", "/admin", false));
    assert!(matches("/%61dmin", "/admin", false));
    assert!(!matches("/admin/../public", "/admin", false));
    assert!(!matches("/administrator;x", "/admin", false));
    assert!(!matches("/ADMIN", "/admin", false));
    assert!(matches("/ADMIN;x/", "/admin", true));
    assert!(matches("/%41DMIN", "/admin", true));
    assert!(matches("/api/items%3Abatch", "/api/items:batch", false));
    assert_eq!(normalize("/api/items%3Bbatch/x"), Err(EncodedSemicolon));
}

/// The longest matching route wins; checks that boundaries make this unambiguous.
#[test]
fn longest_matching_route_wins() {
    let routes = ["/", "/admin", "/admin/public", "/api"];
    let pick = |raw: &str| {
        let n = normalize(raw).expect("valid path");
        routes
            .iter()
            .filter(|r| prefix_matches(r, n.for_matching(), false))
            .max_by_key(|r| r.len())
            .copied()
    };
    assert_eq!(pick("/admin/public/x"), Some("/admin/public"));
    assert_eq!(pick("/admin/publicity"), Some("/admin"));
    assert_eq!(pick("/admin;x/public;y/"), Some("/admin/public"));
    assert_eq!(pick("/apiv2"), Some("/"));
    assert_eq!(pick("/api/../admin"), Some("/admin"));
}

#[test]
fn canonical_route_paths() {
    let ok: &[(&str, &str)] = &[
        ("/", "/"),
        ("//", "/"),
        ("/admin", "/admin"),
        ("/admin/", "/admin"),
        ("//admin//x//", "/admin/x"),
        ("/Admin", "/Admin"),
        ("/a:b@c", "/a:b@c"),
        ("/a.b/.x", "/a.b/.x"),
        ("/items:batch", "/items:batch"),
        ("/caf\u{e9}", "/caf%C3%A9"),
        ("/a{b}", "/a%7Bb%7D"),
    ];
    for &(input, expected) in ok {
        assert_eq!(
            canonical_route_path(input).as_deref(),
            Ok(expected),
            "{input:?}"
        );
    }
    let bad = [
        "",
        "admin",
        "*",
        "http://x/admin",
        "/admin/.",
        "/admin/..",
        "/./admin",
        "/a%2fb",
        "/caf%C3%A9",
        "/a\\b",
        "/admin;x",
        "/admin\0",
        "/admin\n",
        "/admin\u{85}",
        "/admin#x",
        "/admin?x",
        "/admin ",
        "/a\tb",
        "/a\u{FF0F}b",
        "/admin/*",
        "*",
        // Requests are matched without trailing dots: such a route could never match.
        "/admin.",
        "/v1./x",
        "/a.../b",
    ];
    for input in bad {
        let err = canonical_route_path(input).expect_err(input);
        assert!(err.contains("expected") || err.contains("must"), "{err}");
    }
}

/// A canonical route is itself a normalised path, so it matches exactly the
/// requests that spell it (in any equivalent way).
#[test]
fn canonical_routes_are_normal_paths() {
    for input in [
        "/",
        "/admin/",
        "//a//b",
        "/caf\u{e9}",
        "/a{b}",
        "/~x",
        "/a:b",
        "/C++",
    ] {
        let route = canonical_route_path(input).expect(input);
        let n = normalize(&route).expect(input);
        assert_eq!(n.forward(), route);
        assert_eq!(n.for_matching(), route);
        assert!(prefix_matches(&route, n.for_matching(), false));
    }
}

/// Minimal deterministic xorshift generator (keeps tests std-only).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        let index = usize::try_from(self.next() % items.len() as u64).unwrap_or(0);
        items.get(index).copied().unwrap_or("")
    }
}

const FUZZ_TOKENS: &[&str] = &[
    "/",
    "/",
    "/",
    ".",
    "..",
    "...",
    "%2e",
    "%2E",
    "%2f",
    "%25",
    "%252e",
    "%",
    ";",
    ";x",
    "a",
    "A",
    "admin",
    "%41",
    "%61",
    "%3b",
    "%C3%A9",
    "%C3",
    "%A9",
    "%C0%AE",
    "\\",
    "%5c",
    "#",
    "?",
    "~",
    "%7e",
    "%00",
    " ",
    "2e",
    "2f",
    "%3A",
    "%20",
    "{",
    "\u{e9}",
    "%EF%BC%8F",
    "%e2%80%a4",
    "%3a",
    "%40",
    "%2B",
    "%20",
    "@",
    ":",
];

/// Lenient single-pass percent-decoder that models a sloppy upstream.
fn decode_once(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while let Some(&b) = input.get(i) {
        let escape = input
            .get(i + 1..i + 3)
            .and_then(|d| parse_escape(Some(d)).ok());
        match (b, escape) {
            (b'%', Some(value)) => {
                out.push(value);
                i += 3;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

/// What an upstream that decodes `rounds` times, then splits on '/' and '\' and
/// strips parameters, would consider dot segments.
fn has_dot_segment_after_decoding(forward: &str, rounds: usize) -> bool {
    let mut bytes = forward.as_bytes().to_vec();
    for _ in 0..rounds {
        bytes = decode_once(&bytes);
    }
    bytes
        .split(|&b| b == b'/' || b == b'\\')
        .map(|seg| seg.split(|&b| b == b';').next().unwrap_or(&[]))
        .any(|seg| seg == b"." || seg == b"..")
}

fn check_invariants(raw: &str, n: &NormalizedPath) {
    let forward = n.forward();
    let matching = n.for_matching();
    assert_eq!(normalize(forward), Ok(n.clone()), "idempotence for {raw:?}");
    assert!(
        forward.starts_with('/') && matching.starts_with('/'),
        "{raw:?}"
    );
    assert!(
        !forward.contains("//") && !matching.contains("//"),
        "{raw:?}"
    );
    assert!(!matching.contains(';'), "{raw:?}");
    assert!(forward.is_ascii(), "{raw:?}");
    for rounds in 0..3 {
        assert!(
            !has_dot_segment_after_decoding(forward, rounds),
            "{raw:?} x{rounds}"
        );
    }
    let once = decode_once(forward.as_bytes());
    // A second round of decoding (a double-decoding upstream) changes nothing.
    assert_eq!(decode_once(&once), once, "{raw:?}");
    let count = |bytes: &[u8], wanted: u8| bytes.iter().filter(|&&b| b == wanted).count();
    assert_eq!(
        count(&once, b'/'),
        count(forward.as_bytes(), b'/'),
        "{raw:?}"
    );
    assert_eq!(
        count(&once, b';'),
        count(forward.as_bytes(), b';'),
        "{raw:?}"
    );
    assert!(!once.contains(&b'\\') && !once.contains(&0), "{raw:?}");
    for route in SAMPLE_ROUTES {
        let renormalised = normalize(forward).map(|r| r.for_matching().to_owned());
        assert_eq!(
            renormalised.map(|m| prefix_matches(route, &m, false)),
            Ok(prefix_matches(route, matching, false)),
            "{raw:?} {route:?}"
        );
    }
}

/// Random concatenations of hostile tokens: every accepted path must satisfy
/// the invariants the proxy relies on.
#[test]
fn generated_paths_keep_invariants() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut accepted = 0;
    for _ in 0..20_000 {
        let len = 1 + rng.next() % 10;
        let mut raw = String::from("/");
        for _ in 0..len {
            raw.push_str(rng.pick(FUZZ_TOKENS));
        }
        if let Ok(n) = normalize(&raw) {
            accepted += 1;
            check_invariants(&raw, &n);
        }
    }
    assert!(accepted > 1_000, "generator too hostile: {accepted}");
}
