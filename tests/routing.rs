//! Path normalisation and route matching through the real binary (SPEC §3 step 2): hostile
//! request targets sent as raw bytes are refused or forwarded safely, and what the upstream
//! actually received never falls under a protected route unless the caller authenticated.

mod support;

use support::*;

/// What the proxy must do with a request target sent without credentials.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// Refused with this status, never forwarded.
    Refused(u16),
    /// Forwarded, and the upstream receives exactly this target.
    Forward(&'static str),
    /// Either refused, or forwarded to a public path (checked by the invariant).
    Safe,
}

use Expect::*;

/// Hostile targets against the standard routes (`/` protected, `/public` public, `/admin`
/// alice only), each sent without credentials.
const HOSTILE: &[(&str, Expect)] = &[
    // Encoded dot segments
    ("/%2e%2e/admin", Refused(400)),
    ("/public/%2e%2e/admin", Refused(400)),
    ("/public/.%2e/admin", Refused(400)),
    ("/public/%2E%2E", Refused(400)),
    ("/public/%2e/x", Refused(400)),
    ("/public/.%2E", Refused(400)),
    // Encoded slashes and backslashes
    ("/public/..%2fadmin", Refused(400)),
    ("/public%2f..%2fadmin", Refused(400)),
    ("/public/%2E%2E%2Fadmin", Refused(400)),
    ("/public/%2e%2e%2f..%2fadmin", Refused(400)),
    ("/public%2Fx", Refused(400)),
    ("/%2fadmin", Refused(400)),
    ("/public/..%5cadmin", Refused(400)),
    ("/public/..%5Cadmin", Refused(400)),
    // Raw backslashes
    ("/public\\..\\admin", Refused(400)),
    ("/public/..\\admin", Refused(400)),
    ("\\admin", Refused(400)),
    // `;` parameters
    ("/public/..;/admin", Refused(400)),
    ("/public/..;x=1/admin", Refused(400)),
    ("/public/.;/../admin", Refused(400)),
    ("/public/%3bx", Refused(400)),
    ("/public/..%3B/admin", Refused(400)),
    ("/admin;x", Refused(401)),
    ("/admin;jsessionid=1/x", Refused(401)),
    ("/;x/admin", Refused(401)),
    ("/public;x/../admin", Refused(401)),
    // NUL and control characters
    ("/admin%00", Refused(400)),
    ("/public/%00/../admin", Refused(400)),
    ("/public/..%00/admin", Refused(400)),
    ("/public/x%0d%0aX-Forwarded-User:%20admin", Refused(400)),
    ("/public/\x01", Refused(400)),
    // Overlong and invalid UTF-8
    ("/%C0%AE%C0%AE/admin", Refused(400)),
    ("/public/%C0%AE%C0%AE/admin", Refused(400)),
    ("/public/%c0%af../admin", Refused(400)),
    ("/public/..%c0%afadmin", Refused(400)),
    ("/public/%e0%80%ae%e0%80%ae/admin", Refused(400)),
    ("/public/%ff", Refused(400)),
    ("/public/caf\u{e9}", Refused(400)),
    // Double encoding and broken escapes
    ("/public/%252e%252e/admin", Refused(400)),
    ("/public/..%252fadmin", Refused(400)),
    ("/public/%2561dmin", Refused(400)),
    ("/public/%25%32%65%25%32%65/admin", Refused(400)),
    ("/public/%%32%65%%32%65/admin", Refused(400)),
    ("/public/%u002e%u002e/admin", Refused(400)),
    ("/public/%zz", Refused(400)),
    // Unicode look-alikes of delimiters
    ("/public/%EF%BC%8F", Refused(400)),
    ("/public/..%ef%bc%8fadmin", Refused(400)),
    ("/public/%ef%bc%8e%ef%bc%8e/admin", Refused(400)),
    // Dot-like segments
    ("/public/...", Refused(400)),
    ("/public/..%20/admin", Refused(400)),
    ("/public/%20/admin", Refused(400)),
    // Plain dot segments and repeated slashes resolve to a protected path
    ("/public/../admin", Refused(401)),
    ("/public/./../admin", Refused(401)),
    ("/public//../admin", Refused(401)),
    ("//public/../admin", Refused(401)),
    ("/Public/../admin", Refused(401)),
    ("/./admin", Refused(401)),
    ("//admin", Refused(401)),
    ("///admin/", Refused(401)),
    ("/admin/.", Refused(401)),
    ("/public/..", Refused(401)),
    ("/%61dmin", Refused(401)),
    // Case: /PUBLIC is not /public, so it falls under the protected `/`
    ("/ADMIN", Refused(401)),
    ("/PUBLIC/x", Refused(401)),
    ("/publicx", Refused(401)),
    ("/public.html", Refused(401)),
    // Request targets that are not in origin form
    ("http://evil.example/public", Refused(400)),
    ("http://proxy.test/admin", Refused(400)),
    ("proxy.test:80", Refused(400)),
    ("*", Refused(400)),
    // Fragments never reach the upstream as a different path
    ("/public#frag", Safe),
    ("/public/x#/../../admin", Safe),
    ("/admin#/public", Refused(400)),
    // Benign spellings of public paths are forwarded, normalised
    ("/public/x", Forward("/public/x")),
    ("/%70ublic/x", Forward("/public/x")),
    ("/./public/x", Forward("/public/x")),
    ("//public//x", Forward("/public/x")),
    ("/public/./x/../y", Forward("/public/y")),
    ("/admin/../public/z", Forward("/public/z")),
    ("/admin;x/../public/z", Forward("/public/z")),
    ("/public;v=1/x", Forward("/public;v=1/x")),
    ("/public/a%3a", Forward("/public/a%3A")),
    ("/public/caf%c3%a9", Forward("/public/caf%C3%A9")),
    ("/public/100%25", Forward("/public/100%25")),
    ("/public?next=/../admin", Forward("/public?next=/../admin")),
];

/// How the most lenient upstream imaginable could read a path: percent-decoded repeatedly,
/// backslashes as slashes, `;` parameters dropped, dot segments resolved, slashes merged.
fn worst_case_reading(path: &str) -> String {
    let mut bytes = path.as_bytes().to_vec();
    for _ in 0..3 {
        bytes = percent_decode(&bytes);
    }
    let text = String::from_utf8_lossy(&bytes).replace('\\', "/");
    let mut stack: Vec<&str> = Vec::new();
    for segment in text.split('/') {
        let segment = segment.split(';').next().unwrap_or("");
        match segment.trim_end_matches([' ', '\0']) {
            "" | "." => {}
            ".." => {
                stack.pop();
            }
            other => stack.push(other),
        }
    }
    format!("/{}", stack.join("/"))
}

fn percent_decode(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        if input[i] == b'%' && i + 2 < input.len() {
            if let Ok(v) = u8::from_str_radix(
                std::str::from_utf8(&input[i + 1..i + 3]).unwrap_or("zz"),
                16,
            ) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(input[i]);
        i += 1;
    }
    out
}

fn under(path: &str, prefix: &str) -> bool {
    path == prefix || path.starts_with(&format!("{prefix}/"))
}

#[test]
fn the_worst_case_reading_is_lenient() {
    assert_eq!(worst_case_reading("/public/%2e%2e/admin"), "/admin");
    assert_eq!(worst_case_reading("/public/%252e%252e/admin"), "/admin");
    assert_eq!(worst_case_reading("/public\\..\\admin"), "/admin");
    assert_eq!(worst_case_reading("/public/..;x/admin"), "/admin");
    assert_eq!(worst_case_reading("/public/x"), "/public/x");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_paths_are_refused_or_forwarded_safely() {
    assert!(HOSTILE.len() >= 40);
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_std(&upstream).await;
    let mut failures = Vec::new();
    for (target, expect) in HOSTILE {
        let before = upstream.requests().len();
        let response = proxy.raw_get(target, "").await;
        let forwarded: Vec<Recorded> = upstream.requests().into_iter().skip(before).collect();
        let ok = match expect {
            Refused(status) => response.status == *status && forwarded.is_empty(),
            Forward(uri) => {
                response.status == 200 && forwarded.len() == 1 && forwarded[0].uri == *uri
            }
            Safe => {
                (matches!(response.status, 400 | 401 | 403) && forwarded.is_empty())
                    || (response.status == 200 && forwarded.len() == 1)
            }
        };
        if !ok {
            failures.push(format!(
                "{target:?}: expected {expect:?}, got {} with upstream {:?}",
                response.status,
                forwarded.iter().map(|r| &r.uri).collect::<Vec<_>>()
            ));
            continue;
        }
        // Refusals the proxy itself decided carry a request id and a logged reason.
        if let Some(id) = response.header("x-request-id") {
            let event = proxy.access_for(id).await;
            assert_eq!(event["status"], response.status, "{target:?}: {event}");
            let expected_reason = match response.status {
                400 => Some("ambiguous_path"),
                401 => Some("missing_credentials"),
                _ => None,
            };
            if let Some(reason) = expected_reason {
                if event["reason"] != reason {
                    failures.push(format!(
                        "{target:?}: logged reason {} instead of {reason}",
                        event["reason"]
                    ));
                }
            }
            if response.status == 401 && response.header_all("www-authenticate").is_empty() {
                failures.push(format!("{target:?}: 401 without a challenge"));
            }
        } else {
            // Only hyper's own parser refusals (before the proxy sees a request) lack an id.
            assert_eq!(
                response.status, 400,
                "{target:?}: response without X-Request-Id: {}",
                response.text
            );
        }
    }
    assert!(
        failures.is_empty(),
        "hostile path failures:\n{}",
        failures.join("\n")
    );

    // The invariant, on what the upstream actually received: every unauthenticated request
    // reads, even to the most lenient upstream, as a path under the public route.
    let received = upstream.requests();
    assert!(!received.is_empty());
    for request in &received {
        assert_eq!(request.header("x-forwarded-user"), None, "{request:?}");
        let reading = worst_case_reading(&request.path);
        assert!(
            under(&reading, "/public"),
            "unauthenticated request reached the upstream as {:?} (read as {reading:?})",
            request.uri
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authenticated_user_cannot_reach_a_route_that_excludes_them() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_std(&upstream).await;
    let bob = format!("Authorization: {}\r\n", basic("bob", BOB_PW));
    // /admin is alice only; /secret is alice only and case-insensitive.
    let denied = [
        "/admin",
        "//admin",
        "/admin/",
        "/admin;x",
        "/admin;x/y",
        "/;p/admin",
        "/./admin",
        "/x/../admin/y",
        "/public/../admin",
        "/%61dmin",
        "/%61%64%6d%69%6e/x",
        "/admin/.",
        "/secret",
        "/SECRET",
        "/Secret/x",
        "/sEcReT;p",
        "/%53ecret",
        "//SeCrEt//x",
    ];
    for target in denied {
        let response = proxy.raw_get(target, &bob).await;
        assert_eq!(response.status, 403, "{target}: {}", response.text);
        let event = proxy
            .access_for(response.header("x-request-id").unwrap())
            .await;
        assert_eq!(event["reason"], "user_not_allowed", "{target}: {event}");
        assert_eq!(event["user"], "bob");
    }
    assert!(upstream.requests().is_empty(), "{:#?}", upstream.requests());

    // Matching is case-sensitive unless the route says otherwise: /ADMIN is not /admin, so it
    // falls under `/` (any authenticated user) and is forwarded exactly as normalised.
    let response = proxy.raw_get("/ADMIN/x", &bob).await;
    assert_eq!(response.status, 200, "{}", response.text);
    let response = proxy.raw_get("/administrator", &bob).await;
    assert_eq!(response.status, 200, "{}", response.text);
    let received: Vec<String> = upstream.requests().into_iter().map(|r| r.uri).collect();
    assert_eq!(received, vec!["/ADMIN/x", "/administrator"]);
    for request in upstream.requests() {
        let reading = worst_case_reading(&request.path);
        assert!(!under(&reading, "/admin"), "{reading}");
        assert!(
            !under(&reading.to_ascii_lowercase(), "/secret"),
            "{reading}"
        );
    }

    // alice passes on every spelling.
    let alice = format!("Authorization: {}\r\n", basic("alice", ALICE_PW));
    for (target, forwarded) in [
        ("//admin//x", "/admin/x"),
        ("/SECRET", "/SECRET"),
        ("/admin;v=2", "/admin;v=2"),
    ] {
        let response = proxy.raw_get(target, &alice).await;
        assert_eq!(response.status, 200, "{target}: {}", response.text);
        assert_eq!(upstream.last().uri, forwarded);
        assert_eq!(
            upstream.last().header("x-forwarded-user").as_deref(),
            Some("alice")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_receives_the_normalised_path_and_the_original_query() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_std(&upstream).await;
    let cases = [
        (
            "/public/./a/../b//c?x=1&y=%2e%2e&z=/../admin#",
            "/public/b/c",
            Some("x=1&y=%2e%2e&z=/../admin"),
        ),
        ("/%70ublic/%7Euser?q=%2F", "/public/~user", Some("q=%2F")),
        ("/public;v=1/x?a=b;c", "/public;v=1/x", Some("a=b;c")),
        ("/public/caf%c3%a9?", "/public/caf%C3%A9", Some("")),
        ("/public/", "/public/", None),
        ("/public/x/..", "/public/", None),
    ];
    for (target, path, query) in cases {
        let target = target.trim_end_matches('#');
        let response = proxy.raw_get(target, "").await;
        assert_eq!(response.status, 200, "{target}: {}", response.text);
        let seen = upstream.last();
        assert_eq!(seen.path, path, "{target}");
        assert_eq!(seen.query.as_deref(), query, "{target}");
        // The access log shows the normalised path, without the query.
        let event = proxy
            .access_for(response.header("x-request-id").unwrap())
            .await;
        assert_eq!(event["path"], path, "{event}");
        assert_eq!(event["route"], "/public");
    }
    // The query never takes part in matching.
    let response = proxy.raw_get("/home?/public", "").await;
    assert_eq!(response.status, 401);
    let response = proxy.raw_get("/public?/admin", "").await;
    assert_eq!(response.status, 200);
    assert_eq!(upstream.last().uri, "/public?/admin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn longest_prefix_wins_on_segment_boundaries() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_std(&upstream).await;
    let cases = [
        ("/public", "/public"),
        ("/public/deep/er", "/public"),
        ("/publicity", "/"),
        ("/admin/x", "/admin"),
        ("/administrator", "/"),
        ("/api", "/api"),
        ("/apix", "/"),
    ];
    for (path, route) in cases {
        let response = proxy.get(path, &[]).await;
        let event = proxy.access_of(&response).await;
        assert_eq!(event["route"], route, "{path}: {event}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserved_prefix_is_never_forwarded() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_std(&upstream).await;
    for target in [
        "/.portcullis/anything",
        "/public/../.portcullis/x",
        "//.portcullis//y",
    ] {
        let response = proxy
            .raw_get(
                target,
                &format!("Authorization: {}\r\n", basic("alice", ALICE_PW)),
            )
            .await;
        assert_ne!(response.status, 200, "{target}");
    }
    assert!(upstream.requests().is_empty(), "{:#?}", upstream.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fragment_in_the_request_target_is_refused() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_std(&upstream).await;
    for target in ["/public#frag", "/public/x#/../../admin"] {
        let response = proxy.raw_get(target, "").await;
        assert_eq!(response.status, 400, "{target}: {}", response.text);
        let event = proxy
            .access_for(response.header("x-request-id").unwrap())
            .await;
        assert_eq!(event["reason"], "ambiguous_path");
    }
    assert!(upstream.requests().is_empty());
}
