//! Issue 8: what a person (or a program) is shown when refused. Every page against the real
//! binary: its status, headers and body as HTML, the same situation as JSON and as one line of
//! text, and operator templates from `[pages] dir`.

mod support;

use std::time::Instant;

use support::*;

const COOKIE: &str = "portcullis_session";
const HTML: (&str, &str) = ("accept", "text/html,application/xhtml+xml,*/*;q=0.8");
const JSON: (&str, &str) = ("accept", "application/json");

/// - `/` accepts a session or Basic,
/// - `/admin` a session or Basic, alice only, GET and POST only,
/// - `/basic` Basic only,
/// - `/public` public.
const ROUTES: &str = r#"
[[route]]
path = "/"
auth = ["session", "basic"]
realm = "Main"

[[route]]
path = "/admin"
auth = ["session", "basic"]
realm = "Admin"
allow_users = ["alice"]
methods = ["GET", "POST"]

[[route]]
path = "/basic"
auth = ["basic"]
realm = "Basic only"

[[route]]
path = "/public"
auth = []
"#;

fn body(extra: &str) -> String {
    format!(
        "{}\n[session]\ncookie_secure = false\nidle_timeout = \"1s\"\nabsolute_timeout = \"1h\"\n\n[pages]\ntitle = \"Test Corp\"\n{extra}\n{ROUTES}",
        principals()
    )
}

async fn start(upstream: &Upstream) -> Proxy {
    Proxy::start(upstream, &body("")).await
}

/// Asserts the things every HTML page shares and returns its text.
fn assert_page(response: &Resp, status: u16, heading: &str) -> String {
    assert_eq!(response.status, status, "{}", response.text());
    assert_eq!(
        response.header("content-type").as_deref(),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(
        response.header("cache-control").as_deref(),
        Some("no-store")
    );
    let page = response.text();
    assert!(page.starts_with("<!doctype html>"), "{page}");
    assert!(page.contains("<html lang=\"en\">"), "{page}");
    assert!(
        page.contains("<meta name=\"viewport\""),
        "readable on a phone: {page}"
    );
    assert!(page.contains("Test Corp"), "the configured title: {page}");
    assert!(page.contains(&format!("<h1>{heading}</h1>")), "{page}");
    let id = response.request_id();
    assert!(
        page.contains(&format!("Request id <code>{id}</code>")),
        "the request id: {page}"
    );
    assert!(
        page.contains(&format!("Error {status}")),
        "the status: {page}"
    );
    assert!(
        !page.contains("<script") && !page.contains("src=\"http"),
        "self-contained: {page}"
    );
    page
}

/// The JSON body: exactly `error`, `reason` and `request_id`.
fn assert_json(response: &Resp, status: u16, reason: &str) {
    assert_eq!(response.status, status, "{}", response.text());
    assert_eq!(
        response.header("content-type").as_deref(),
        Some("application/json")
    );
    let json = response.json();
    let object = json.as_object().expect("an object");
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["error", "reason", "request_id"], "{json}");
    assert_eq!(json["reason"], reason, "{json}");
    assert_eq!(json["request_id"], response.request_id(), "{json}");
    assert!(!json["error"].as_str().unwrap().is_empty());
}

/// The plain-text body: one line with the status and the request id.
fn assert_text(response: &Resp, status: u16) {
    assert_eq!(response.status, status, "{}", response.text());
    assert_eq!(
        response.header("content-type").as_deref(),
        Some("text/plain; charset=utf-8")
    );
    let text = response.text();
    assert_eq!(text.lines().count(), 1, "{text:?}");
    assert!(text.starts_with(&format!("{status} ")), "{text:?}");
    assert!(text.contains(&response.request_id()), "{text:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_required_says_so_and_links_to_the_form_where_sessions_are_accepted() {
    let upstream = Upstream::start().await;
    let proxy = start(&upstream).await;

    // Basic only: the page, the challenge, no sign-in link (there is no form for this route).
    let response = proxy.get("/basic/doc", &[HTML]).await;
    let page = assert_page(&response, 401, "Sign-in required");
    assert_eq!(
        response.header("www-authenticate").as_deref(),
        Some("Basic realm=\"Basic only\", charset=\"UTF-8\"")
    );
    assert!(!page.contains("/.portcullis/login"), "{page}");

    // A route that accepts sessions, but not a navigation (a POST): 401 with a sign-in link
    // that comes back here.
    let response = proxy.send("POST", "/doc?a=1", &[HTML], "x").await;
    let page = assert_page(&response, 401, "Sign-in required");
    assert!(
        page.contains(
            r#"<a class="button" href="/.portcullis/login?next=%2Fdoc%3Fa%3D1">Sign in</a>"#
        ),
        "{page}"
    );

    assert_json(
        &proxy.get("/basic/doc", &[JSON]).await,
        401,
        "missing_credentials",
    );
    assert_text(&proxy.get("/basic/doc", &[]).await, 401);
    assert!(upstream.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_and_an_unknown_user_look_the_same() {
    let upstream = Upstream::start().await;
    let proxy = start(&upstream).await;
    let wrong = basic("alice", WRONG_PW);
    let unknown = basic("mallory", WRONG_PW);

    let a = proxy
        .get("/basic/doc", &[HTML, ("authorization", &wrong)])
        .await;
    let b = proxy
        .get("/basic/doc", &[HTML, ("authorization", &unknown)])
        .await;
    let page_a = assert_page(&a, 401, "Sign-in failed");
    let page_b = assert_page(&b, 401, "Sign-in failed");
    assert_eq!(
        page_a.replace(&a.request_id(), "ID"),
        page_b.replace(&b.request_id(), "ID"),
        "the same page whether or not the user exists"
    );
    assert!(page_a.contains("The user name or password was not accepted."));
    assert!(!page_a.contains("alice") && !page_b.contains("mallory"));
    // The log keeps the exact reason.
    assert_eq!(proxy.access_of(&a).await["reason"], "bad_password");
    assert_eq!(proxy.access_of(&b).await["reason"], "unknown_user");

    // JSON and text say the same for both.
    for authorization in [&wrong, &unknown] {
        let response = proxy
            .get("/basic/doc", &[JSON, ("authorization", authorization)])
            .await;
        assert_json(&response, 401, "invalid_credentials");
        let response = proxy
            .get("/basic/doc", &[("authorization", authorization)])
            .await;
        assert_text(&response, 401);
        assert!(!response.text().contains("mallory"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_names_the_user_and_offers_to_sign_out() {
    let upstream = Upstream::start().await;
    let proxy = start(&upstream).await;

    let bob = sign_in(&proxy, "bob", BOB_PW).await;
    let response = proxy.get("/admin/panel", &[HTML, ("cookie", &bob)]).await;
    let page = assert_page(&response, 403, "This area is limited");
    assert!(page.contains("You are signed in as bob"), "{page}");
    assert!(page.contains("administrator"), "{page}");
    assert!(
        page.contains(r#"<form method="post" action="/.portcullis/logout">"#),
        "a sign-out button to switch user: {page}"
    );
    assert_eq!(response.header("www-authenticate"), None);
    assert_eq!(
        proxy.access_of(&response).await["reason"],
        "user_not_allowed"
    );

    // With Basic there is no session to end: no sign-out button.
    let response = proxy
        .get(
            "/admin/panel",
            &[HTML, ("authorization", &basic("bob", BOB_PW))],
        )
        .await;
    let page = assert_page(&response, 403, "This area is limited");
    assert!(page.contains("You are signed in as bob"), "{page}");
    assert!(!page.contains("/.portcullis/logout"), "{page}");

    assert_json(
        &proxy.get("/admin/panel", &[JSON, ("cookie", &bob)]).await,
        403,
        "user_not_allowed",
    );
    assert_text(&proxy.get("/admin/panel", &[("cookie", &bob)]).await, 403);
    assert!(upstream.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_method_the_route_does_not_take_gets_405_with_allow() {
    let upstream = Upstream::start().await;
    let proxy = start(&upstream).await;
    let alice = basic("alice", ALICE_PW);
    let response = proxy
        .send("DELETE", "/admin/x", &[HTML, ("authorization", &alice)], "")
        .await;
    let page = assert_page(&response, 405, "Not allowed here");
    assert_eq!(response.header("allow").as_deref(), Some("GET, POST"));
    assert!(
        page.contains("This address does not accept DELETE requests."),
        "{page}"
    );
    let response = proxy
        .send("DELETE", "/admin/x", &[JSON, ("authorization", &alice)], "")
        .await;
    assert_json(&response, 405, "method_not_allowed");
    assert!(upstream.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_attempts_says_when_to_try_again() {
    let upstream = Upstream::start().await;
    let limits = "[rate_limit]\nmax_failures = 2\nwindow = \"10m\"\nlockout = \"15m\"";
    let proxy = Proxy::start(&upstream, &body(limits)).await;
    let wrong = basic("alice", WRONG_PW);
    for _ in 0..2 {
        let response = proxy.get("/basic/x", &[("authorization", &wrong)]).await;
        assert_eq!(response.status, 401);
    }
    let response = proxy
        .get("/basic/x", &[HTML, ("authorization", &wrong)])
        .await;
    let page = assert_page(&response, 429, "Too many attempts");
    let retry: u64 = response
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!((840..=900).contains(&retry), "{retry}");
    assert!(page.contains("Try again in about 15 minutes."), "{page}");
    let response = proxy
        .get("/basic/x", &[JSON, ("authorization", &wrong)])
        .await;
    assert_json(&response, 429, "rate_limited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ambiguous_address_and_an_unserved_one_are_explained() {
    let upstream = Upstream::start().await;
    let proxy = start(&upstream).await;
    let response = proxy.get("/public/%2e%2e/admin", &[HTML]).await;
    let page = assert_page(&response, 400, "This address cannot be used");
    assert!(page.contains("more than one way"), "{page}");
    assert_json(
        &proxy.get("/public/%2e%2e/admin", &[JSON]).await,
        400,
        "ambiguous_path",
    );

    // No route for "/": an address outside the listed routes is not served.
    let routes = "[pages]\ntitle = \"Test Corp\"\n[[route]]\npath = \"/public\"\nauth = []\n";
    let narrow = Proxy::start(&upstream, &format!("{}\n{routes}", principals())).await;
    let response = narrow.get("/elsewhere", &[HTML]).await;
    let page = assert_page(&response, 403, "Not served here");
    assert!(page.contains("This address is not served here."), "{page}");
    assert!(
        page.contains(r#"href="/">Go to the home page</a>"#),
        "{page}"
    );
    assert_json(&narrow.get("/elsewhere", &[JSON]).await, 403, "no_route");
    assert_text(&narrow.get("/elsewhere", &[]).await, 403);
    assert!(upstream.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_does_not_answer_is_explained_without_detail() {
    let dead = dead_address().await;
    let proxy = ProxyConfig::new(format!("http://{dead}"), body(""))
        .start()
        .await;
    let response = proxy.get("/public/x", &[HTML]).await;
    let page = assert_page(&response, 502, "The site is not answering");
    assert!(page.contains("Try again in a few moments."), "{page}");
    assert!(
        !page.contains(&dead.to_string()) && !page.to_lowercase().contains("refused"),
        "no upstream detail: {page}"
    );
    assert_json(
        &proxy.get("/public/x", &[JSON]).await,
        502,
        "upstream_unreachable",
    );

    let upstream = Upstream::start().await;
    let proxy = ProxyConfig::new(upstream.url(), body(""))
        .upstream("response_timeout = \"500ms\"")
        .start()
        .await;
    let response = proxy.get("/public/slow", &[HTML]).await;
    let page = assert_page(&response, 504, "The site is not answering");
    assert!(
        !page.contains("timeout") && !page.contains("500ms"),
        "{page}"
    );
    assert_json(
        &proxy.get("/public/slow", &[JSON]).await,
        504,
        "upstream_timeout",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_ended_says_why_and_offers_to_sign_in_again() {
    let upstream = Upstream::start().await;
    let proxy = start(&upstream).await;

    // A cookie the store does not know (not a navigation, so no redirect): the page, the cookie
    // cleared, a sign-in link.
    let stale = format!("{COOKIE}=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA.00000000");
    let response = proxy
        .send("POST", "/doc", &[HTML, ("cookie", &stale)], "x")
        .await;
    let page = assert_page(&response, 401, "Your session has ended");
    assert!(page.contains("no longer valid"), "{page}");
    assert!(page.contains("/.portcullis/login?next="), "{page}");
    let cleared = response
        .header("set-cookie")
        .expect("the cookie is cleared");
    assert!(cleared.contains("Max-Age=0"), "{cleared}");

    // Idle for longer than the 1 s idle timeout: the page says so, in those words.
    let cookie = sign_in(&proxy, "alice", ALICE_PW).await;
    let started = Instant::now();
    let response = loop {
        let response = proxy
            .send("POST", "/doc", &[HTML, ("cookie", &cookie)], "x")
            .await;
        if response.status == 401 {
            break response;
        }
        assert_eq!(response.status, 200, "{}", response.text());
        assert!(started.elapsed() < DEADLINE, "the session never went idle");
        // Activity moves the idle deadline, so wait past it before asking again.
        tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    };
    let page = assert_page(&response, 401, "Your session has ended");
    assert!(
        page.contains("Your session ended after 1 second of inactivity."),
        "{page}"
    );
    assert_eq!(
        proxy.access_of(&response).await["reason"],
        "session_idle_timeout"
    );
    assert_json(
        &proxy.get("/doc", &[JSON, ("cookie", &cookie)]).await,
        401,
        "session_idle_timeout",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_templates_replace_pages_and_are_checked() {
    let upstream = Upstream::start().await;
    let template = "<!doctype html><title>{{ title }}</title><h1>{{ heading }}</h1>\
                    <p>{{ message }}</p><p>{{ user }} / {{ request_id }}</p>";
    let proxy = ProxyConfig::new(upstream.url(), body("dir = \"pages\""))
        .file("pages/403.html", template)
        .start()
        .await;
    let bob = basic("bob", BOB_PW);
    let response = proxy
        .get("/admin/x", &[HTML, ("authorization", &bob)])
        .await;
    assert_eq!(response.status, 403);
    assert_eq!(
        response.text(),
        format!(
            "<!doctype html><title>Test Corp</title><h1>This area is limited</h1>\
             <p>You are signed in as bob, but this area is limited to other users. Ask the \
             site&#39;s administrator for access, or sign out and sign in as someone else.</p>\
             <p>bob / {}</p>",
            response.request_id()
        )
    );
    // Pages not replaced keep the built-in look.
    let response = proxy.get("/basic/x", &[HTML]).await;
    assert_page(&response, 401, "Sign-in required");

    // `check` refuses a template with a typo, naming the file and line.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("pages")).unwrap();
    write_file(
        dir.path(),
        "pages/401.html",
        "<p>ok</p>\n<p>{{ usr }}</p>\n",
    );
    let config = write_file(
        dir.path(),
        "portcullis.toml",
        &ProxyConfig::new(upstream.url(), body("dir = \"pages\"")).text(),
    );
    let (code, out, err) = run_cli(&["check", "--config", config.to_str().unwrap()], None);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("401.html:2"), "{err}");
    assert!(err.contains("pages.dir"), "{err}");
    assert!(err.contains("undefined"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_session_store_is_a_plain_busy_page() {
    let upstream = Upstream::start().await;
    let dead = dead_address().await;
    let body = format!(
        "{}\n[session]\ncookie_secure = false\nstore = \"redis\"\nredis_url = \"redis://{dead}/0\"\n\n\
         [pages]\ntitle = \"Test Corp\"\n{ROUTES}",
        principals()
    );
    let proxy = Proxy::start(&upstream, &body).await;
    let cookie = format!("{COOKIE}=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA.00000000");
    let response = proxy.get("/doc", &[HTML, ("cookie", &cookie)]).await;
    let page = assert_page(&response, 503, "Temporarily unavailable");
    assert!(page.contains("Try again in a few moments."), "{page}");
    assert!(
        !page.to_lowercase().contains("redis") && !page.contains(&dead.to_string()),
        "no internal detail: {page}"
    );
    assert_eq!(
        response.header("location"),
        None,
        "no redirect loop to the login page"
    );
    assert_json(
        &proxy.get("/doc", &[JSON, ("cookie", &cookie)]).await,
        503,
        "store_unavailable",
    );
    // Basic keeps working without the store.
    let response = proxy
        .get("/basic/x", &[("authorization", &basic("alice", ALICE_PW))])
        .await;
    assert_eq!(response.status, 200, "{}", response.text());
}
