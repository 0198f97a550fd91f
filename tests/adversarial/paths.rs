//! Path bypasses: advisory target forms, with and without credentials.

use super::*;

// ---------------------------------------------------------------------------------------------
// Path bypasses
// ---------------------------------------------------------------------------------------------

/// What must happen to a request target.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// Refused with this status; the upstream receives nothing.
    Refused(u16),
    /// Refused with 400 or 401 (hyper's own parser or the proxy), never forwarded.
    NotForwarded,
    /// Forwarded; the upstream receives exactly this target.
    Forward(&'static str),
}

use Expect::*;

/// Advisory forms not already in tests/routing.rs, sent without credentials against the
/// standard routes (`/` protected, `/public` public, `/admin` alice only).
const BYPASS_UNAUTHENTICATED: &[(&str, &str, Expect)] = &[
    // Tomcat / Spring path parameters (CVE-2020-1957, CVE-2016-5007, Tomcat `..;/`)
    ("tomcat", "/;/admin", Refused(401)),
    ("tomcat", "/admin;/", Refused(401)),
    ("tomcat", "/admin;", Refused(401)),
    ("tomcat", "/.;/admin", Refused(400)),
    ("tomcat", "/public/.;/admin", Refused(400)),
    ("tomcat", "/admin/..;/", Refused(400)),
    ("tomcat", "/admin/..;/public", Refused(400)),
    ("tomcat", "/public/..;/..;/admin", Refused(400)),
    ("tomcat", "/..;/admin", Refused(400)),
    ("tomcat", "/public/%2e%2e;/admin", Refused(400)),
    ("tomcat", "/public/.%2e;x/admin", Refused(400)),
    ("spring", "/admin/", Refused(401)),
    ("spring", "/public/../admin;jsessionid=abc", Refused(401)),
    // Encoded slashes (Envoy CVE-2019-9901 / CVE-2021-29492, Traefik, oauth2-proxy)
    ("envoy", "/admin%2f", Refused(400)),
    ("envoy", "/admin%2F..%2Fpublic", Refused(400)),
    ("envoy", "/public/..%2f..%2fadmin", Refused(400)),
    ("traefik", "/public%2F..%2F..%2Fadmin", Refused(400)),
    // Encoded dots
    ("nginx", "/%2e/admin", Refused(400)),
    ("nginx", "/%2e%2e%2fadmin", Refused(400)),
    ("nginx", "/public/%2e%2e", Refused(400)),
    ("nginx", "/public/%2E./admin", Refused(400)),
    // Double encoding (%252e, %252f)
    ("iis", "/%252e%252e/admin", Refused(400)),
    ("iis", "/public/%252fadmin", Refused(400)),
    ("iis", "/public/%25252e%25252e/admin", Refused(400)),
    ("iis", "/public/%255cadmin", Refused(400)),
    // Overlong and invalid UTF-8 (IIS unicode traversal, CVE-2000-0884 family)
    ("utf8", "/public/%c0%2e%c0%2e/admin", Refused(400)),
    ("utf8", "/public/%f0%80%80%af", Refused(400)),
    ("utf8", "/public/%c1%9c..%c1%9cadmin", Refused(400)),
    ("utf8", "/public/%c0%80", Refused(400)),
    ("utf8", "/public/%e0%80%af", Refused(400)),
    ("utf8", "/public/%ed%a0%80", Refused(400)),
    ("utf8", "/public/%f8%80%80%80%af", Refused(400)),
    // Backslashes
    ("windows", "/%5cadmin", Refused(400)),
    ("windows", "/admin\\", Refused(400)),
    ("windows", "/public/%5c..%5cadmin", Refused(400)),
    ("windows", "\\\\admin", NotForwarded),
    // NUL, controls, whitespace
    ("nul", "/admin%00.html", Refused(400)),
    ("nul", "/public/x%00/../../admin", Refused(400)),
    ("ctl", "/admin%09", Refused(400)),
    ("ctl", "/admin%0a", Refused(400)),
    ("ctl", "/admin%7f", Refused(400)),
    ("ctl", "/public/%0d%0aX-Forwarded-User:alice", Refused(400)),
    ("ctl", "/public/%c2%85", Refused(400)),
    // Dot segments above the root and repeated slashes
    ("dots", "/../admin", Refused(401)),
    ("dots", "/public/../../../admin", Refused(401)),
    ("dots", "/public/..///admin", Refused(401)),
    ("dots", "/./public/../admin", Refused(401)),
    ("dots", "/admin/./", Refused(401)),
    ("dots", "/adm%69n/", Refused(401)),
    // Encoded `?` and `#` are data, not delimiters
    ("delims", "/public%3f/../admin", Refused(401)),
    ("delims", "/public%23/../admin", Refused(401)),
    ("delims", "/admin%3f", Refused(401)),
    // The query and the fragment never take part in matching
    ("query", "/admin?", Refused(401)),
    ("query", "/admin?x=/public", Refused(401)),
    ("query", "/public/..?/x", Refused(401)),
    ("fragment", "/admin#", Refused(400)),
    ("fragment", "/admin#/../public", Refused(400)),
    // Case on a case-sensitive route: /ADMIN falls to the protected `/`
    ("case", "/ADMIN/", Refused(401)),
    ("case", "/Public/x", Refused(401)),
    // Absolute-form and scheme-relative targets
    (
        "absolute",
        "https://proxy.test/public/../admin",
        Refused(400),
    ),
    ("absolute", "HTTP://proxy.test/admin", Refused(400)),
    ("absolute", "http://proxy.test/public", Refused(400)),
    ("absolute", "//proxy.test/admin", Refused(401)),
    // Benign forms still work
    ("benign", "/public/a%2Bb", Forward("/public/a%2Bb")),
    ("benign", "/public/x/", Forward("/public/x/")),
    ("benign", "/public;a=b/c;d", Forward("/public;a=b/c;d")),
];

/// Runs a table of raw targets and collects every mismatch.
async fn run_targets(
    proxy: &Proxy,
    upstream: &Upstream,
    table: &[(&str, &str, Expect)],
    extra_headers: &str,
) -> Vec<String> {
    let mut failures = Vec::new();
    for (family, target, expect) in table {
        let before = upstream.requests().len();
        let response = proxy.raw_get(target, extra_headers).await;
        let forwarded: Vec<Recorded> = upstream.requests().into_iter().skip(before).collect();
        let ok = match expect {
            Refused(status) => response.status == *status && forwarded.is_empty(),
            NotForwarded => matches!(response.status, 400 | 401) && forwarded.is_empty(),
            Forward(uri) => {
                response.status == 200 && forwarded.len() == 1 && forwarded[0].uri == *uri
            }
        };
        if !ok {
            failures.push(format!(
                "[{family}] {target:?}: expected {expect:?}, got {} with upstream {:?}",
                response.status,
                forwarded.iter().map(|r| &r.uri).collect::<Vec<_>>()
            ));
        }
    }
    failures
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn advisory_path_bypasses_are_refused_without_credentials() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_std(&upstream).await;
    let failures = run_targets(&proxy, &upstream, BYPASS_UNAUTHENTICATED, "").await;
    assert!(
        failures.is_empty(),
        "{} path-bypass failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // Whatever was forwarded is a public path, and carries no identity.
    for request in upstream.requests() {
        assert!(request.path.starts_with("/public"), "{request:?}");
        assert_no_identity_lookalikes(&request);
        assert_eq!(request.header("x-forwarded-user"), None);
    }
}

/// Forms that an upstream may read as `/admin` (Windows and IIS trim trailing dots and spaces
/// from a segment; Tomcat and Spring drop `;` parameters), sent by bob, who may use `/` but
/// not `/admin`: none may reach the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authenticated_user_cannot_reach_admin_through_lenient_spellings() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_std(&upstream).await;
    let bob = basic_line("bob", BOB_PW);
    let table: &[(&str, &str, Expect)] = &[
        ("tomcat", "/;/admin", Refused(403)),
        ("tomcat", "/admin;/", Refused(403)),
        ("tomcat", "/admin;x=1/secret.txt", Refused(403)),
        ("tomcat", "/public/..;/admin", Refused(400)),
        ("tomcat", "/admin..;/", Refused(403)),
        ("spring", "/admin/", Refused(403)),
        ("spring", "/admin//x", Refused(403)),
        ("windows", "/admin.", Refused(403)),
        ("windows", "/admin%2e", Refused(403)),
        ("windows", "/admin./x", Refused(403)),
        ("windows", "/admin%20", Refused(403)),
        ("windows", "/admin%20/x", Refused(403)),
        ("windows", "/admin.%20", Refused(403)),
        ("windows", "/admin%20.", Refused(403)),
        ("windows", "/admin...", Refused(403)),
        ("nul", "/admin%00", Refused(400)),
        ("ctl", "/admin%09", Refused(400)),
        ("dots", "/x/../admin", Refused(403)),
        ("dots", "/public/%2e%2e/admin", Refused(400)),
        // Not /admin at all, for any reader: forwarded as is.
        ("benign", "/administrator", Forward("/administrator")),
        ("benign", "/public/admin", Forward("/public/admin")),
        ("benign", "/x.admin", Forward("/x.admin")),
    ];
    let failures = run_targets(&proxy, &upstream, table, &bob).await;
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    for request in upstream.requests() {
        let lenient: String = request
            .path
            .split('/')
            .map(|segment| {
                segment
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .replace("%20", " ")
                    .trim_end_matches(['.', ' '])
                    .to_string()
            })
            .collect::<Vec<_>>()
            .join("/");
        assert!(
            lenient != "/admin" && !lenient.starts_with("/admin/"),
            "bob reached the upstream as {:?} (read as {lenient:?})",
            request.uri
        );
        if request.path.starts_with("/public") {
            assert!(request.header("x-forwarded-user").is_none(), "{request:?}");
        } else {
            assert_identity(&request, "bob", "staff", "basic");
        }
    }
}
