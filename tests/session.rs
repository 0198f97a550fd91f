//! Issue 4, memory store: the login form, the session cookie, idle and absolute timeouts,
//! logout, fixation, hostile `next` values, CSRF, and what the upstream sees — against the
//! real binary, a real recording upstream, and real HTTP.
//!
//! Timing tests use second-scale timeouts and sleep only past deadlines they configured.
//! There is nothing to benchmark here (the session-check benchmark lives with the benches).

mod support;

use std::time::{Duration, Instant};

use support::*;

/// Helpers for session tests (kept here so tests/support stays its owner's).
mod common {
    use std::time::{SystemTime, UNIX_EPOCH};

    use super::support::*;

    /// Users, `[session]` with `session_lines`, a page title and [`SESSION_ROUTES`].
    pub fn body(session_lines: &str) -> String {
        format!(
            "{}\n[session]\n{session_lines}\n\n[pages]\ntitle = \"Test Corp\"\n{SESSION_ROUTES}",
            principals()
        )
    }

    /// A proxy with plain-HTTP cookies and these timeouts.
    pub async fn start(upstream: &Upstream, idle: &str, absolute: &str) -> Proxy {
        let lines = format!(
            "cookie_secure = false\nidle_timeout = \"{idle}\"\nabsolute_timeout = \"{absolute}\""
        );
        Proxy::start(upstream, &body(&lines)).await
    }

    /// Asserts the response clears our cookie (empty value, `Max-Age=0`).
    pub fn assert_clears_cookie(response: &Resp) {
        let cookie = set_cookie(response);
        assert!(
            cookie.starts_with(&format!("{SESSION_COOKIE}=;")),
            "{cookie}"
        );
        assert!(cookie.contains("; Max-Age=0"), "{cookie}");
        assert!(cookie.contains("; Path=/"), "{cookie}");
    }

    /// Asserts the response leaves our cookie alone: the store remembers why the session
    /// ended for as long as the browser keeps the cookie, so every tab is told the same.
    pub fn assert_keeps_cookie(response: &Resp) {
        assert!(
            !sets_cookie(response),
            "an ended session's cookie is kept: {response:?}"
        );
    }

    /// The query pairs of a `Location` such as `/.portcullis/login?next=…&ended=…`.
    pub fn location_query(location: &str) -> (String, Vec<(String, String)>) {
        let (path, query) = location.split_once('?').unwrap_or((location, ""));
        let pairs = form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        (path.to_string(), pairs)
    }

    /// Asserts a 302 to the login page with this `next` and `ended`.
    pub fn assert_login_redirect(response: &Resp, next: &str, ended: Option<&str>) {
        assert_eq!(response.status, 302, "{response:?} {}", response.text());
        let location = response.header("location").expect("Location");
        let (path, pairs) = location_query(&location);
        assert_eq!(path, "/.portcullis/login", "{location}");
        let mut expected = vec![("next".to_string(), next.to_string())];
        if let Some(ended) = ended {
            expected.push(("ended".to_string(), ended.to_string()));
        }
        assert_eq!(pairs, expected, "{location}");
        assert_eq!(
            response.header("cache-control").as_deref(),
            Some("no-store")
        );
    }

    /// Unix seconds now.
    pub fn unix_now() -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    /// Parses `YYYY-MM-DDTHH:MM:SSZ` into Unix seconds.
    pub fn parse_rfc3339(text: &str) -> i64 {
        let bad = || panic!("not an RFC 3339 UTC timestamp: {text:?}");
        let b = text.as_bytes();
        if b.len() != 20
            || b[4] != b'-'
            || b[7] != b'-'
            || b[10] != b'T'
            || b[13] != b':'
            || b[16] != b':'
            || b[19] != b'Z'
        {
            bad();
        }
        let num = |r: std::ops::Range<usize>| text[r].parse::<i64>().unwrap_or_else(|_| bad());
        let (y, m, d) = (num(0..4), num(5..7), num(8..10));
        let (hh, mm, ss) = (num(11..13), num(14..16), num(17..19));
        // Howard Hinnant's days_from_civil.
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let mp = (m + 9) % 12;
        let doy = (153 * mp + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        days * 86_400 + hh * 3600 + mm * 60 + ss
    }

    /// Asserts no log line (stdout or stderr) contains `secret`.
    pub fn assert_not_logged(proxy: &Proxy, secret: &str) {
        let all = proxy.all_output();
        assert!(!all.contains(secret), "a secret was logged:\n{all}");
    }
}

use common::*;

// ---------------------------------------------------------------------------------------------
// Login and the cookie
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_redirects_to_next_with_a_fresh_cookie_and_the_right_flags() {
    let upstream = Upstream::start().await;
    let proxy = start(&upstream, "10m", "2h").await;

    let response = login_with(&proxy, "alice", ALICE_PW, "/app/docs?page=2", &[]).await;
    assert_eq!(response.status, 303, "{}", response.text());
    assert_eq!(
        response.header("location").as_deref(),
        Some("/app/docs?page=2")
    );
    assert_eq!(
        response.header("cache-control").as_deref(),
        Some("no-store")
    );
    let id = session_id(&response);
    let cookie = set_cookie(&response);
    assert_eq!(
        cookie,
        format!("{SESSION_COOKIE}={id}; Path=/; HttpOnly; SameSite=Lax; Max-Age=10800"),
        "Max-Age is the absolute lifetime (2 h) plus ended_memory (1 h by default); no Secure \
         with cookie_secure = false"
    );
    let event = proxy.access_of(&response).await;
    assert_eq!(event["status"], 303, "{event}");
    assert_eq!(event["decision"], "allow", "{event}");
    assert_eq!(event["user"], "alice", "{event}");
    assert!(
        upstream.requests().is_empty(),
        "the login POST is never forwarded"
    );

    // Two logins give two different ids.
    let other = login(&proxy).await;
    assert_ne!(other, id);
    assert_not_logged(&proxy, &id);
    assert_not_logged(&proxy, &other);
    assert_not_logged(&proxy, ALICE_PW);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookies_are_secure_by_default_and_can_carry_a_domain() {
    let upstream = Upstream::start().await;
    // No cookie_secure line: the default must be Secure, and with no cookie_domain the cookie
    // is a `__Host-` one (Secure, Path=/, no Domain), which no sibling subdomain can set.
    let proxy = Proxy::start(
        &upstream,
        &body("idle_timeout = \"10m\"\nabsolute_timeout = \"1h\""),
    )
    .await;
    let response = login_with(&proxy, "alice", ALICE_PW, "/", &[]).await;
    assert_eq!(response.status, 303, "{}", response.text());
    let cookies = response.header_all("set-cookie");
    assert_eq!(
        cookies.len(),
        2,
        "the session and the known device: {cookies:?}"
    );
    // The known-device cookie has the session cookie's prefix and lives known_device_days.
    assert!(
        cookies[1].starts_with("__Host-portcullis_device=")
            && cookies[1].ends_with("; Path=/; HttpOnly; SameSite=Lax; Max-Age=2592000; Secure"),
        "{cookies:?}"
    );
    let id = cookies[0]
        .strip_prefix(&format!("{HOST_COOKIE}="))
        .and_then(|rest| rest.split(';').next())
        .unwrap_or_else(|| panic!("a {HOST_COOKIE} cookie: {cookies:?}"))
        .to_string();
    assert_eq!(
        cookies[0],
        format!("{HOST_COOKIE}={id}; Path=/; HttpOnly; SameSite=Lax; Max-Age=7200; Secure")
    );
    // The clearing cookie of a logout carries the same name and attributes, so the browser
    // drops it.
    let origin = origin(&proxy);
    let c = format!("{HOST_COOKIE}={id}");
    let out = proxy
        .send(
            "POST",
            "/.portcullis/logout",
            &[("origin", &origin), ("cookie", &c)],
            "",
        )
        .await;
    assert_eq!(out.status, 303, "{}", out.text());
    assert_eq!(
        out.header_all("set-cookie"),
        vec![format!(
            "{HOST_COOKIE}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0; Secure"
        )]
    );

    // cookie_domain and cookie_name are honoured.
    let proxy = Proxy::start(
        &upstream,
        &body("cookie_domain = \"example.test\"\ncookie_name = \"sid\"\nabsolute_timeout = \"1h\""),
    )
    .await;
    let response = login_with(&proxy, "alice", ALICE_PW, "/", &[]).await;
    assert_eq!(response.status, 303, "{}", response.text());
    let cookies = response.header_all("set-cookie");
    assert_eq!(cookies.len(), 2, "{cookies:?}");
    assert!(cookies[0].starts_with("sid="), "{cookies:?}");
    // Not `__Host-` like the session cookie, and host-only: no Domain.
    assert!(
        cookies[1].starts_with("portcullis_device=") && !cookies[1].contains("Domain"),
        "{cookies:?}"
    );
    assert!(
        cookies[0].ends_with(
            "; Path=/; HttpOnly; SameSite=Lax; Max-Age=7200; Secure; Domain=example.test"
        ),
        "{cookies:?}"
    );
    let id = cookies[0]["sid=".len()..]
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let response = proxy
        .get("/app/x", &[("cookie", &format!("sid={id}"))])
        .await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(
        upstream.last().header("cookie"),
        None,
        "the renamed cookie is stripped too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tossed_cookies_cannot_shadow_a_session_and_only_the_host_name_counts() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start(
        &upstream,
        &body("idle_timeout = \"1s\"\nabsolute_timeout = \"1h\""),
    )
    .await;
    let host = |id: &str| format!("{HOST_COOKIE}={id}");
    let login_id = |response: &Resp| {
        response
            .header_all("set-cookie")
            .iter()
            .find_map(|c| {
                c.strip_prefix(&format!("{HOST_COOKIE}="))
                    .map(|r| r.split(';').next().unwrap().to_string())
            })
            .unwrap_or_else(|| panic!("a {HOST_COOKIE} cookie: {response:?}"))
    };
    let ended = login_id(&login_with(&proxy, "alice", ALICE_PW, "/", &[]).await);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let live = login_id(&login_with(&proxy, "alice", ALICE_PW, "/", &[]).await);
    let planted = unknown_session_value('A');

    // A cookie planted first (an attacker's from a sibling subdomain, a stale one, an ended
    // one) does not shadow the live session behind it: among the first four, a live one wins.
    for before in [
        vec![host(&planted)],
        vec![host("garbage")],
        vec![host(&ended)],
        vec![host(&planted), host(&ended), host("x")],
    ] {
        let mut pairs = before.clone();
        pairs.push(host(&live));
        let header = pairs.join("; ");
        let response = proxy.get("/app/x", &[("cookie", &header)]).await;
        assert_eq!(response.status, 200, "{header}: {}", response.text());
        assert_eq!(upstream.last().header("cookie"), None, "{header}");
    }
    // The same, split across two Cookie headers.
    let response = proxy
        .get(
            "/app/x",
            &[("cookie", &host(&planted)), ("cookie", &host(&live))],
        )
        .await;
    assert_eq!(response.status, 200, "{}", response.text());

    // Only the first four are looked up.
    let header = [
        host(&planted),
        host(&planted),
        host(&planted),
        host(&planted),
        host(&live),
    ]
    .join("; ");
    let response = proxy.get("/app/x", &[("cookie", &header)]).await;
    assert_eq!(response.status, 401, "{}", response.text());

    // No live session: an end reason is told over "unknown", whatever the order.
    let header = [host(&planted), host(&ended)].join("; ");
    let response = proxy.get("/app/x", &[("cookie", &header)]).await;
    assert_proxy_made(&proxy, &response, 401, "deny", "session_idle_timeout").await;

    // Only the effective name counts: the bare name (which any subdomain can set) is not a
    // session, is never forwarded, and a refusal clears the effective name.
    let response = proxy
        .get("/app/x", &[("cookie", &format!("{SESSION_COOKIE}={live}"))])
        .await;
    assert_proxy_made(&proxy, &response, 401, "deny", "missing_credentials").await;
    let response = proxy
        .get(
            "/public/x",
            &[("cookie", &format!("{SESSION_COOKIE}={live}; a=1"))],
        )
        .await;
    assert_eq!(response.status, 200);
    assert_eq!(upstream.last().header("cookie").as_deref(), Some("a=1"));
    let response = proxy.get("/app/x", &[("cookie", &host(&planted))]).await;
    assert_proxy_made(&proxy, &response, 401, "deny", "session_unknown").await;
    assert_eq!(
        response.header_all("set-cookie"),
        vec![format!(
            "{HOST_COOKIE}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0; Secure"
        )]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_admits_and_the_upstream_never_sees_the_session_cookie() {
    let upstream = Upstream::start().await;
    let proxy = start(&upstream, "10m", "1h").await;
    let id = login(&proxy).await;

    // Session-only route, our cookie between two others.
    let jar = format!(
        "theme=dark; {}; lang=en; {SESSION_COOKIE}_x=keep",
        cookie(&id)
    );
    let response = proxy.get("/app/page?x=1", &[("cookie", &jar)]).await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert!(
        !sets_cookie(&response),
        "a valid session is not re-set: {response:?}"
    );
    let seen = upstream.only("/app/page");
    assert_eq!(seen.uri, "/app/page?x=1");
    assert_eq!(seen.header("x-forwarded-user").as_deref(), Some("alice"));
    assert_eq!(seen.header("x-forwarded-groups").as_deref(), Some("admins"));
    assert_eq!(
        seen.header("x-forwarded-auth-method").as_deref(),
        Some("session")
    );
    assert_eq!(
        seen.header("cookie").as_deref(),
        Some(format!("theme=dark; lang=en; {SESSION_COOKIE}_x=keep").as_str()),
        "only the session cookie is removed"
    );
    let event = proxy.access_of(&response).await;
    assert_eq!(event["decision"], "allow", "{event}");
    assert_eq!(event["user"], "alice", "{event}");
    assert_eq!(event["auth_method"], "session", "{event}");
    assert_eq!(event["route"], "/app", "{event}");

    // Only our cookie: the upstream gets no Cookie header at all.
    let response = proxy.get("/mixed", &[("cookie", &cookie(&id))]).await;
    assert_eq!(response.status, 200, "{}", response.text());
    let seen = upstream.only("/mixed");
    assert_eq!(seen.header("cookie"), None, "{:?}", seen.headers);
    assert_eq!(
        seen.header("x-forwarded-auth-method").as_deref(),
        Some("session")
    );

    // Two Cookie header lines (as HTTP/1.1 clients may send): ours is removed from both.
    let raw = proxy
        .raw(format!(
            "GET /app/two HTTP/1.1\r\nHost: {}\r\nCookie: a=1\r\nCookie: {}; b=2\r\nConnection: close\r\n\r\n",
            proxy.addr,
            cookie(&id)
        ))
        .await;
    assert_eq!(RawResp::parse(&raw).status, 200, "{raw}");
    let seen = upstream.only("/app/two");
    let sent: Vec<String> = seen.header_all("cookie");
    assert!(!sent.iter().any(|c| c.contains(SESSION_COOKIE)), "{sent:?}");
    assert_eq!(sent.join("; "), "a=1; b=2");

    // Routes that do not use sessions never forward it either.
    let response = proxy.get("/public/p", &[("cookie", &jar)]).await;
    assert_eq!(response.status, 200);
    assert!(!upstream
        .only("/public/p")
        .header("cookie")
        .unwrap()
        .contains(&id));
    let response = proxy
        .get(
            "/basic/b",
            &[("cookie", &jar), ("authorization", &basic("bob", BOB_PW))],
        )
        .await;
    assert_eq!(response.status, 200, "{}", response.text());
    let seen = upstream.only("/basic/b");
    assert!(!seen.header("cookie").unwrap().contains(&id));
    assert_eq!(seen.header("x-forwarded-user").as_deref(), Some("bob"));
    assert_eq!(
        seen.header("x-forwarded-auth-method").as_deref(),
        Some("basic")
    );

    // A client-sent identity header is replaced by the session's identity.
    let response = proxy
        .get(
            "/app/spoof",
            &[("cookie", &cookie(&id)), ("x-forwarded-user", "root")],
        )
        .await;
    assert_eq!(response.status, 200);
    assert_eq!(
        upstream
            .only("/app/spoof")
            .header("x-forwarded-user")
            .as_deref(),
        Some("alice")
    );

    assert_not_logged(&proxy, &id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_session_html_navigations_go_to_the_login_page_and_others_get_401() {
    let upstream = Upstream::start().await;
    let proxy = start(&upstream, "10m", "1h").await;
    let html = ("accept", "text/html,application/xhtml+xml,*/*;q=0.8");

    // Session-only route, browser navigation: 302 with the path and query as `next`.
    let response = proxy.get("/app/page?x=1&y=two", &[html]).await;
    assert_login_redirect(&response, "/app/page?x=1&y=two", None);
    assert!(!sets_cookie(&response), "no cookie to clear: {response:?}");
    let event = proxy.access_of(&response).await;
    assert_eq!(event["status"], 302, "{event}");
    assert_eq!(event["decision"], "deny", "{event}");
    assert_eq!(event["reason"], "missing_credentials", "{event}");

    // The same on the session-or-Basic route.
    let response = proxy.get("/", &[html]).await;
    assert_login_redirect(&response, "/", None);

    // The redirect's `next` is the normalised path: never `//host`.
    let response = proxy
        .raw_get("//evil.example/x", "Accept: text/html\r\n")
        .await;
    assert_eq!(response.status, 302, "{}", response.text);
    let (_, pairs) = location_query(response.header("location").unwrap());
    let next = &pairs[0].1;
    assert!(next.starts_with('/') && !next.starts_with("//"), "{next}");

    // Not a navigation (API client, JSON, or a POST): 401 with the route's challenges.
    let response = proxy.get("/app/page", &[]).await;
    let event = assert_proxy_made(&proxy, &response, 401, "deny", "missing_credentials").await;
    assert_eq!(event["route"], "/app");
    assert_eq!(
        response.header_all("www-authenticate"),
        vec![r#"Session realm="App""#]
    );
    let response = proxy
        .get("/app/page", &[("accept", "application/json")])
        .await;
    assert_eq!(response.status, 401);
    assert_eq!(response.json()["reason"], "missing_credentials");
    let response = proxy.send("POST", "/app/form", &[html], "a=1").await;
    assert_eq!(response.status, 401, "a POST is not a navigation");
    assert_eq!(
        response.header_all("www-authenticate"),
        vec![r#"Session realm="App""#]
    );

    // With Basic as well, the challenge is Basic's only (Session is not an HTTP scheme).
    let response = proxy.get("/page", &[]).await;
    assert_eq!(response.status, 401);
    assert_eq!(
        response.header_all("www-authenticate"),
        vec![r#"Basic realm="Main", charset="UTF-8""#]
    );

    // A route that does not accept sessions never redirects to the login page.
    let response = proxy.get("/basic/x", &[html]).await;
    assert_eq!(response.status, 401);
    assert_eq!(response.header("location"), None);
    assert!(upstream.requests().is_empty(), "{:#?}", upstream.requests());

    // With [login] disabled, a navigation gets the 401 page instead of a redirect.
    let lines = "cookie_secure = false\n\n[login]\nenabled = false";
    let proxy = Proxy::start(&upstream, &body(lines)).await;
    let response = proxy.get("/app/page", &[html]).await;
    assert_eq!(response.status, 401, "{response:?}");
    assert_eq!(response.header("location"), None);
    assert_eq!(
        response.header_all("www-authenticate"),
        vec![r#"Session realm="App""#]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_login_page_is_a_plain_accessible_form_that_explains_why_a_session_ended() {
    let upstream = Upstream::start().await;
    let proxy = start(&upstream, "15m", "12h").await;

    let response = proxy
        .get(
            "/.portcullis/login?next=%2Fapp%2Fdoc%3Fa%3D1",
            &[("accept", "text/html")],
        )
        .await;
    assert_eq!(response.status, 200);
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
    assert!(page.contains("Test Corp"), "the configured title: {page}");
    assert!(
        page.contains(r#"<form method="post" action="/.portcullis/login">"#),
        "{page}"
    );
    assert!(
        page.contains(r#"<label for="username">"#) && page.contains(r#"id="username""#),
        "{page}"
    );
    assert!(
        page.contains(r#"<label for="password">"#) && page.contains(r#"id="password""#),
        "{page}"
    );
    assert!(page.contains(r#"type="password""#), "{page}");
    assert!(
        page.contains(r#"autocomplete="current-password""#),
        "{page}"
    );
    assert!(
        page.contains(r#"<input type="hidden" name="next" value="/app/doc?a=1">"#),
        "{page}"
    );
    assert!(
        page.contains("<button type=\"submit\">Sign in</button>"),
        "{page}"
    );
    for external in [
        "<script", " src=", "<link", "http://", "https://", "@import", "url(",
    ] {
        assert!(
            !page.contains(external),
            "no scripts or external assets ({external}): {page}"
        );
    }
    assert!(!page.contains("ended after"), "no notice without ended=");

    let response = proxy
        .get("/.portcullis/login?next=%2Fx&ended=idle", &[])
        .await;
    assert_eq!(response.status, 200);
    let page = response.text();
    assert!(
        page.contains("Your session ended after 15 minutes of inactivity."),
        "{page}"
    );
    assert!(page.contains("role=\"alert\""), "{page}");
    let response = proxy.get("/.portcullis/login?ended=absolute", &[]).await;
    let page = response.text();
    assert!(
        page.contains("Your session ended after the maximum of 12 hours."),
        "{page}"
    );
    assert!(page.contains("Sign in</button>"), "{page}");
    let response = proxy
        .get("/.portcullis/login?ended=%3Cscript%3E", &[])
        .await;
    assert_eq!(response.status, 200);
    assert!(!response.text().contains("<script>"));
    assert!(!response.text().contains("ended after"));

    // HEAD works; other methods are refused; nothing is forwarded.
    let response = proxy.send("HEAD", "/.portcullis/login", &[], "").await;
    assert_eq!(response.status, 200);
    let response = proxy.send("PUT", "/.portcullis/login", &[], "").await;
    assert_eq!(response.status, 405);
    assert!(upstream.requests().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Wrong credentials, CSRF, fixation, `next`
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_re_render_the_form_with_a_generic_401() {
    let upstream = Upstream::start().await;
    let proxy = start(&upstream, "10m", "1h").await;

    let wrong = login_with(&proxy, "alice", WRONG_PW, "/app/doc", &[]).await;
    assert_eq!(wrong.status, 401, "{}", wrong.text());
    assert!(!sets_cookie(&wrong), "{wrong:?}");
    assert_eq!(
        wrong.header("content-type").as_deref(),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(wrong.header("cache-control").as_deref(), Some("no-store"));
    assert_eq!(wrong.header("location"), None);
    let page = wrong.text();
    assert!(
        page.contains("The user name or password was not accepted."),
        "{page}"
    );
    assert!(
        page.contains(r#"<form method="post" action="/.portcullis/login">"#),
        "{page}"
    );
    assert!(
        page.contains(r#"name="next" value="/app/doc""#),
        "next is kept: {page}"
    );
    let event = proxy.access_of(&wrong).await;
    assert_eq!(event["decision"], "deny", "{event}");
    assert_eq!(
        event["reason"], "bad_password",
        "the log keeps the exact reason: {event}"
    );

    let unknown = login_with(&proxy, "mallory", WRONG_PW, "/app/doc", &[]).await;
    assert_eq!(unknown.status, 401);
    assert!(!sets_cookie(&unknown));
    // The same page whether or not the user exists (only the request id differs).
    let without_id = |r: &Resp| r.text().replace(&r.request_id(), "ID");
    assert_eq!(
        without_id(&unknown),
        without_id(&wrong),
        "the same page whether or not the user exists"
    );
    assert!(!unknown.text().contains("mallory"));
    let event = proxy.access_of(&unknown).await;
    assert_eq!(event["reason"], "unknown_user", "{event}");

    // Nothing about either attempt let anyone in, and the password never reached the log.
    let response = proxy.get("/app/x", &[]).await;
    assert_eq!(response.status, 401);
    assert_not_logged(&proxy, WRONG_PW);
    assert!(upstream.requests().is_empty());

    // A form without a password is malformed.
    let origin = origin(&proxy);
    let response = proxy
        .send(
            "POST",
            "/.portcullis/login",
            &[
                ("origin", &origin),
                ("content-type", "application/x-www-form-urlencoded"),
            ],
            form(&[("username", "alice")]),
        )
        .await;
    assert_eq!(response.status, 400, "{}", response.text());
    assert!(!sets_cookie(&response));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_site_login_and_logout_posts_are_refused() {
    let upstream = Upstream::start().await;
    let proxy = start(&upstream, "10m", "1h").await;
    let host = proxy.addr.to_string();
    let body = form(&[("username", "alice"), ("password", ALICE_PW), ("next", "/")]);
    let ct = ("content-type", "application/x-www-form-urlencoded");
    let lookalike = format!("http://{host}.evil.example");
    let same = origin(&proxy);
    let refused: Vec<(&str, Vec<(&str, &str)>)> = vec![
        ("neither Origin nor Sec-Fetch-Site", vec![ct]),
        (
            "foreign Origin",
            vec![ct, ("origin", "http://evil.example")],
        ),
        (
            "Origin that only starts like ours",
            vec![ct, ("origin", &lookalike)],
        ),
        ("Origin: null", vec![ct, ("origin", "null")]),
        (
            "Sec-Fetch-Site: cross-site",
            vec![ct, ("sec-fetch-site", "cross-site")],
        ),
        (
            "Sec-Fetch-Site: same-site",
            vec![ct, ("sec-fetch-site", "same-site")],
        ),
        ("Sec-Fetch-Site: none", vec![ct, ("sec-fetch-site", "none")]),
    ];
    for (what, headers) in refused {
        let response = proxy
            .send("POST", "/.portcullis/login", &headers, body.clone())
            .await;
        assert_eq!(response.status, 400, "{what}: {}", response.text());
        assert!(
            response.header_all("set-cookie").is_empty(),
            "{what}: {response:?}"
        );
        let event = proxy.access_of(&response).await;
        assert_eq!(event["decision"], "deny", "{what}: {event}");
        assert_eq!(event["reason"], "malformed_credentials", "{what}: {event}");
    }
    // Sec-Fetch-Site outranks a matching Origin.
    let response = proxy
        .send(
            "POST",
            "/.portcullis/login",
            &[ct, ("origin", &same), ("sec-fetch-site", "cross-site")],
            body.clone(),
        )
        .await;
    assert_eq!(response.status, 400);
    assert!(!sets_cookie(&response));

    // The same POST with same-origin headers works, either way.
    let response = proxy
        .send(
            "POST",
            "/.portcullis/login",
            &[ct, ("origin", &same)],
            body.clone(),
        )
        .await;
    assert_eq!(response.status, 303, "{}", response.text());
    let id = session_id(&response);
    let response = proxy
        .send(
            "POST",
            "/.portcullis/login",
            &[ct, ("sec-fetch-site", "same-origin")],
            body.clone(),
        )
        .await;
    assert_eq!(response.status, 303, "{}", response.text());
    session_id(&response);

    // Logout is a form POST too: a cross-site one leaves the session alone.
    let c = cookie(&id);
    for headers in [
        vec![("cookie", c.as_str())],
        vec![("cookie", c.as_str()), ("origin", "http://evil.example")],
        vec![("cookie", c.as_str()), ("sec-fetch-site", "cross-site")],
    ] {
        let response = proxy
            .send("POST", "/.portcullis/logout", &headers, "")
            .await;
        assert_eq!(response.status, 400, "{headers:?}: {}", response.text());
        assert!(!sets_cookie(&response), "{response:?}");
    }
    let response = proxy.get("/app/still", &[("cookie", &c)]).await;
    assert_eq!(
        response.status, 200,
        "the session survived the cross-site logouts"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_id_offered_by_the_client_is_never_adopted() {
    let upstream = Upstream::start().await;
    let proxy = start(&upstream, "10m", "1h").await;
    let planted = format!(
        "AttackerChosenValue_0123456789abcdefghijklm.{}",
        user_tag("alice")
    );
    assert_eq!(planted.len(), 52);

    let c = cookie(&planted);
    let response = login_with(&proxy, "alice", ALICE_PW, "/", &[("cookie", &c)]).await;
    assert_eq!(response.status, 303, "{}", response.text());
    let issued = session_id(&response);
    assert_ne!(issued, planted, "login must issue a fresh id");
    // The planted value did not become a session.
    let response = proxy.get("/app/x", &[("cookie", &c)]).await;
    assert_eq!(response.status, 401);
    assert_eq!(
        proxy.access_of(&response).await["reason"],
        "session_unknown"
    );
    // The issued one did.
    let response = proxy.get("/app/x", &[("cookie", &cookie(&issued))]).await;
    assert_eq!(response.status, 200);

    // A real session of someone else (bob) planted in the browser: alice's login replaces it.
    let bob = {
        let response = login_with(&proxy, "bob", BOB_PW, "/", &[]).await;
        assert_eq!(response.status, 303);
        session_id(&response)
    };
    let response = login_with(&proxy, "alice", ALICE_PW, "/", &[("cookie", &cookie(&bob))]).await;
    assert_eq!(response.status, 303);
    let alice = session_id(&response);
    assert_ne!(alice, bob);
    let response = proxy.get("/app/who", &[("cookie", &cookie(&alice))]).await;
    assert_eq!(response.status, 200);
    assert_eq!(
        upstream.last().header("x-forwarded-user").as_deref(),
        Some("alice")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_next_values_redirect_home() {
    let upstream = Upstream::start().await;
    let proxy = start(&upstream, "10m", "1h").await;
    let hostile = [
        "//evil.com",
        "//evil.com/path",
        "/\\evil.com",
        "\\\\evil.com",
        "/\\/evil.com",
        "https://evil.com",
        "http://evil.com/",
        "http:/x",
        "https:evil.com",
        "javascript:alert(1)",
        "JaVaScRiPt:alert(1)",
        "data:text/html,<script>alert(1)</script>",
        "evil.com",
        "",
        " /x",
        "/\t/evil.com",
        "/\r\nSet-Cookie: x=1",
        "/%0d%0aSet-Cookie:x",
        "/%2F/evil.com",
        "/%2f%2fevil.com",
        "/%5Cevil.com",
        "/\nLocation: //evil.com",
        "/x\u{0}y",
    ];
    for next in hostile {
        // The value as the form would post it (urlencoded by the browser) …
        let response = login_with(&proxy, "alice", ALICE_PW, next, &[]).await;
        assert_eq!(response.status, 303, "{next:?}: {}", response.text());
        assert_eq!(
            response.header("location").as_deref(),
            Some("/"),
            "{next:?}"
        );
        assert_eq!(
            response.header_all("set-cookie").len(),
            2,
            "{next:?}: the session and the known device, no injected header"
        );
        session_id(&response);
    }
    // … and `/%0d%0aSet-Cookie:x` sent with its percent signs unencoded, so it decodes to CR LF.
    let origin = origin(&proxy);
    let raw_body = format!(
        "username=alice&password={}&next=/%0d%0aSet-Cookie:x",
        form_urlencoded::byte_serialize(ALICE_PW.as_bytes()).collect::<String>()
    );
    let response = proxy
        .send(
            "POST",
            "/.portcullis/login",
            &[
                ("origin", &origin),
                ("content-type", "application/x-www-form-urlencoded"),
            ],
            raw_body,
        )
        .await;
    assert_eq!(response.status, 303);
    assert_eq!(response.header("location").as_deref(), Some("/"));
    assert_eq!(response.header_all("set-cookie").len(), 2);

    // Good relative paths are kept exactly.
    for next in ["/", "/app", "/app/doc?x=1&y=%2F", "/caf%C3%A9#frag"] {
        let response = login_with(&proxy, "alice", ALICE_PW, next, &[]).await;
        assert_eq!(response.status, 303);
        assert_eq!(
            response.header("location").as_deref(),
            Some(next),
            "{next:?}"
        );
    }

    // The login page never puts a hostile `next` into its form either.
    for next in [
        "//evil.com",
        "https://evil.com",
        "/\\evil.com",
        "javascript:alert(1)",
    ] {
        let q: String = form_urlencoded::byte_serialize(next.as_bytes()).collect();
        let response = proxy
            .get(&format!("/.portcullis/login?next={q}"), &[])
            .await;
        assert_eq!(response.status, 200);
        let page = response.text();
        assert!(
            page.contains(r#"name="next" value="/">"#),
            "{next:?}: {page}"
        );
        assert!(
            !page.contains("evil.com") && !page.contains("javascript:"),
            "{next:?}: {page}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Timeouts
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_session_ends_with_its_own_reason_and_keeps_its_cookie() {
    let upstream = Upstream::start().await;
    let proxy = start(&upstream, "1s", "4s").await;
    let browser = login(&proxy).await;
    let api = login(&proxy).await;
    for id in [&browser, &api] {
        let response = proxy.get("/app/alive", &[("cookie", &cookie(id))]).await;
        assert_eq!(response.status, 200, "{}", response.text());
    }
    let forwarded = upstream.requests().len();

    // Past the idle timeout (1 s) but well before the absolute one (4 s).
    tokio::time::sleep(Duration::from_millis(1400)).await;

    // A browser navigation: back to the login page, told why, stale cookie cleared.
    let response = proxy
        .get(
            "/app/doc?q=1",
            &[("cookie", &cookie(&browser)), ("accept", "text/html")],
        )
        .await;
    assert_login_redirect(&response, "/app/doc?q=1", Some("idle"));
    assert_keeps_cookie(&response);
    let event = proxy.access_of(&response).await;
    assert_eq!(event["decision"], "deny", "{event}");
    assert_eq!(event["reason"], "session_idle_timeout", "{event}");
    assert_eq!(event["status"], 302, "{event}");

    // Following the redirect shows the notice.
    let location = response.header("location").unwrap();
    let page = proxy
        .get(&location, &[("accept", "text/html")])
        .await
        .text();
    assert!(
        page.contains("Your session ended after 1 second of inactivity."),
        "{page}"
    );

    // An API call on the session-only route: 401 with the Session challenge.
    let response = proxy.get("/app/api", &[("cookie", &cookie(&api))]).await;
    let event = assert_proxy_made(&proxy, &response, 401, "deny", "session_idle_timeout").await;
    assert_eq!(event["route"], "/app");
    assert_eq!(
        response.header_all("www-authenticate"),
        vec![r#"Session realm="App""#]
    );
    assert_keeps_cookie(&response);
    assert_eq!(
        upstream.requests().len(),
        forwarded,
        "nothing forwarded after the end"
    );

    // The ended session stays ended.
    let response = proxy.get("/app/api", &[("cookie", &cookie(&api))]).await;
    assert_eq!(response.status, 401);
    let reason = proxy.access_of(&response).await["reason"].clone();
    assert_eq!(
        reason, "session_idle_timeout",
        "an ended session is never revived, and is told why again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activity_keeps_a_session_past_the_idle_timeout_but_never_past_the_absolute_one() {
    let upstream = Upstream::start().await;
    let proxy = start(&upstream, "1s", "3s").await;
    let started = Instant::now();
    let id = login(&proxy).await;
    let c = cookie(&id);

    // A request every ~300 ms, as a browser that stays active.
    let mut last_ok = Duration::ZERO;
    let refused = loop {
        let response = proxy
            .get("/app/tick", &[("cookie", &c), ("accept", "text/html")])
            .await;
        let at = started.elapsed();
        if response.status != 200 {
            break (response, at);
        }
        last_ok = at;
        assert!(
            at < Duration::from_secs(6),
            "the absolute timeout never bit"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let (response, at) = refused;
    assert!(
        last_ok > Duration::from_millis(2000),
        "activity kept the session alive well past the 1 s idle timeout (last success at {last_ok:?})"
    );
    assert!(
        at >= Duration::from_secs(3),
        "not before the absolute end: {at:?}"
    );
    assert!(
        at < Duration::from_millis(4500),
        "soon after the absolute end: {at:?}"
    );
    assert_login_redirect(&response, "/app/tick", Some("absolute"));
    assert_keeps_cookie(&response);
    let event = proxy.access_of(&response).await;
    assert_eq!(event["reason"], "session_absolute_timeout", "{event}");
    assert_eq!(event["decision"], "deny", "{event}");

    let ticks = upstream.requests().len();
    assert!(
        ticks >= 7,
        "about one forwarded request per 300 ms: {ticks}"
    );
    let page = proxy
        .get("/.portcullis/login?next=%2F&ended=absolute", &[])
        .await
        .text();
    assert!(
        page.contains("Your session ended after the maximum of 3 seconds."),
        "{page}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absolute_timeout_on_an_api_request_is_a_401_with_its_reason() {
    let upstream = Upstream::start().await;
    let proxy = start(&upstream, "2s", "3s").await;
    let id = login(&proxy).await;
    let c = cookie(&id);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(proxy.get("/app/a", &[("cookie", &c)]).await.status, 200);
    tokio::time::sleep(Duration::from_millis(1700)).await;
    // 3.2 s after login, 1.7 s after the last request: the absolute end, not the idle one.
    let response = proxy
        .get("/app/a", &[("cookie", &c), ("accept", "application/json")])
        .await;
    assert_proxy_made(&proxy, &response, 401, "deny", "session_absolute_timeout").await;
    assert_eq!(response.json()["reason"], "session_absolute_timeout");
    assert_eq!(
        response.header_all("www-authenticate"),
        vec![r#"Session realm="App""#]
    );
    assert_keeps_cookie(&response);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_or_malformed_cookie_is_refused_and_cleared() {
    let upstream = Upstream::start().await;
    let proxy = start(&upstream, "10m", "1h").await;
    let unknown = cookie("Zm9yZ2VkLXNlc3Npb24taWQtdGhhdC1uZXZlci1leGk.00000000");
    assert_eq!(unknown.len(), SESSION_COOKIE.len() + 1 + 52);

    let response = proxy.get("/app/x", &[("cookie", &unknown)]).await;
    assert_proxy_made(&proxy, &response, 401, "deny", "session_unknown").await;
    assert_eq!(
        response.header_all("www-authenticate"),
        vec![r#"Session realm="App""#]
    );
    assert_clears_cookie(&response);

    let response = proxy
        .get("/x?y=1", &[("cookie", &unknown), ("accept", "text/html")])
        .await;
    assert_login_redirect(&response, "/x?y=1", None);
    assert_clears_cookie(&response);
    assert_eq!(
        proxy.access_of(&response).await["reason"],
        "session_unknown"
    );

    let malformed = [
        "short".to_string(),
        String::new(),
        "AAAA%3D".into(),
        "A".repeat(44),
        "A".repeat(42),
    ];
    for bad in &malformed {
        let response = proxy.get("/app/x", &[("cookie", &cookie(bad))]).await;
        assert_eq!(response.status, 401, "{bad:?}");
        assert_eq!(
            proxy.access_of(&response).await["reason"],
            "session_unknown",
            "{bad:?}"
        );
        assert_clears_cookie(&response);
    }

    // A cookie is checked first on a route that accepts sessions: a stale one is refused (and
    // cleared) even when Basic credentials come with it, and the retry without it passes.
    let alice = basic("alice", ALICE_PW);
    let response = proxy
        .get("/page", &[("cookie", &unknown), ("authorization", &alice)])
        .await;
    assert_eq!(response.status, 401);
    assert_eq!(
        proxy.access_of(&response).await["reason"],
        "session_unknown"
    );
    assert_clears_cookie(&response);
    let response = proxy.get("/page", &[("authorization", &alice)]).await;
    assert_eq!(response.status, 200);
    // On a route without sessions the cookie is just another cookie.
    let response = proxy
        .get(
            "/basic/x",
            &[("cookie", &unknown), ("authorization", &alice)],
        )
        .await;
    assert_eq!(response.status, 200);
    assert!(!sets_cookie(&response));
    assert_eq!(upstream.only("/basic/x").header("cookie"), None);
}

// ---------------------------------------------------------------------------------------------
// Logout, whoami, Basic from a browser
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_ends_the_session_and_a_replayed_cookie_is_refused() {
    let upstream = Upstream::start().await;
    let proxy = start(&upstream, "10m", "1h").await;
    let id = login(&proxy).await;
    let other = login(&proxy).await;
    let c = cookie(&id);
    assert_eq!(
        proxy.get("/app/before", &[("cookie", &c)]).await.status,
        200
    );

    let origin = origin(&proxy);
    let response = proxy
        .send(
            "POST",
            "/.portcullis/logout",
            &[("origin", &origin), ("cookie", &c), ("accept", "text/html")],
            "",
        )
        .await;
    assert_eq!(response.status, 303, "{}", response.text());
    assert_eq!(response.header("location").as_deref(), Some("/"));
    assert_eq!(
        response.header("cache-control").as_deref(),
        Some("no-store")
    );
    assert_clears_cookie(&response);
    let event = proxy.access_of(&response).await;
    assert_eq!(event["decision"], "allow", "{event}");
    assert_eq!(event["user"], "alice", "{event}");

    // The old value, replayed: refused on every session route, and by whoami.
    let response = proxy.get("/app/after", &[("cookie", &c)]).await;
    assert_proxy_made(&proxy, &response, 401, "deny", "session_unknown").await;
    let response = proxy
        .get("/app/after", &[("cookie", &c), ("accept", "text/html")])
        .await;
    assert_login_redirect(&response, "/app/after", None);
    let response = proxy.get("/.portcullis/whoami", &[("cookie", &c)]).await;
    assert_eq!(response.status, 401);
    assert!(upstream.requests().iter().all(|r| r.path != "/app/after"));

    // Another session of the same user is untouched.
    assert_eq!(
        proxy
            .get("/app/other", &[("cookie", &cookie(&other))])
            .await
            .status,
        200
    );

    // Logging out again (or without a session) is harmless and still clears the cookie.
    let response = proxy
        .send(
            "POST",
            "/.portcullis/logout",
            &[("origin", &origin), ("cookie", &c)],
            "",
        )
        .await;
    assert_eq!(response.status, 303);
    assert_clears_cookie(&response);
    let response = proxy
        .send("POST", "/.portcullis/logout", &[("origin", &origin)], "")
        .await;
    assert_eq!(response.status, 303);
    assert_clears_cookie(&response);
    // Logout is POST only: a GET (an image tag, a prefetch) cannot end a session.
    let response = proxy
        .get("/.portcullis/logout", &[("cookie", &cookie(&other))])
        .await;
    assert_eq!(response.status, 405);
    assert_eq!(
        proxy
            .get("/app/other", &[("cookie", &cookie(&other))])
            .await
            .status,
        200
    );

    // after_logout is honoured.
    let lines = "cookie_secure = false\n\n[login]\nafter_logout = \"/public/bye\"";
    let proxy = Proxy::start(&upstream, &body(lines)).await;
    let id = login(&proxy).await;
    let origin = support::origin(&proxy);
    let response = proxy
        .send(
            "POST",
            "/.portcullis/logout",
            &[("origin", &origin), ("cookie", &cookie(&id))],
            "",
        )
        .await;
    assert_eq!(response.status, 303);
    assert_eq!(response.header("location").as_deref(), Some("/public/bye"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whoami_reports_the_session_and_its_deadlines() {
    let upstream = Upstream::start().await;
    let proxy = start(&upstream, "10m", "1h").await;
    let before = unix_now();
    let id = login(&proxy).await;

    let response = proxy
        .get("/.portcullis/whoami", &[("cookie", &cookie(&id))])
        .await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(
        response.header("content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(
        response.header("cache-control").as_deref(),
        Some("no-store")
    );
    let who = response.json();
    assert_eq!(who["user"], "alice", "{who}");
    assert_eq!(who["groups"], serde_json::json!(["admins"]), "{who}");
    assert_eq!(who["auth_method"], "session", "{who}");
    let after = unix_now();
    let idle = parse_rfc3339(who["idle_expires"].as_str().expect("idle_expires"));
    let absolute = parse_rfc3339(who["absolute_expires"].as_str().expect("absolute_expires"));
    assert!(
        (before + 600 - 1..=after + 600).contains(&idle),
        "idle_expires is about now + 10 min: {who}"
    );
    assert!(
        (before + 3600 - 1..=after + 3600).contains(&absolute),
        "absolute_expires is login + 1 h: {who}"
    );
    assert!(upstream.requests().is_empty(), "whoami is never forwarded");

    // Bob's groups.
    let response = login_with(&proxy, "bob", BOB_PW, "/", &[]).await;
    let bob = session_id(&response);
    let who = proxy
        .get("/.portcullis/whoami", &[("cookie", &cookie(&bob))])
        .await
        .json();
    assert_eq!(who["user"], "bob");
    assert_eq!(who["groups"], serde_json::json!(["staff"]));

    // Without a session: 401.
    let response = proxy.get("/.portcullis/whoami", &[]).await;
    assert_eq!(response.status, 401);
    assert_eq!(
        response.header("cache-control").as_deref(),
        Some("no-store")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whoami_moves_the_idle_deadline_but_never_the_absolute_one() {
    let upstream = Upstream::start().await;
    let proxy = start(&upstream, "3s", "1h").await;
    let id = login(&proxy).await;
    let c = cookie(&id);
    let first = proxy
        .get("/.portcullis/whoami", &[("cookie", &c)])
        .await
        .json();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let second = proxy
        .get("/.portcullis/whoami", &[("cookie", &c)])
        .await
        .json();
    let idle = |v: &serde_json::Value| parse_rfc3339(v["idle_expires"].as_str().unwrap());
    let absolute = |v: &serde_json::Value| parse_rfc3339(v["absolute_expires"].as_str().unwrap());
    assert!(idle(&second) > idle(&first), "{first} then {second}");
    assert_eq!(absolute(&second), absolute(&first), "{first} then {second}");
    // 4.2 s after login, idle timeout 3 s: alive only because of the request in between.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(proxy.get("/app/x", &[("cookie", &c)]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_basic_login_from_a_browser_also_starts_a_session() {
    let upstream = Upstream::start().await;
    let proxy = start(&upstream, "10m", "1h").await;
    let alice = basic("alice", ALICE_PW);
    let html = ("accept", "text/html");

    let response = proxy.get("/home", &[("authorization", &alice), html]).await;
    assert_eq!(response.status, 200, "{}", response.text());
    let id = session_id(&response);
    assert_eq!(
        set_cookie(&response),
        format!("{SESSION_COOKIE}={id}; Path=/; HttpOnly; SameSite=Lax; Max-Age=7200")
    );
    let seen = upstream.only("/home");
    assert_eq!(
        seen.header("x-forwarded-auth-method").as_deref(),
        Some("basic")
    );
    assert_eq!(proxy.access_of(&response).await["auth_method"], "basic");

    // The cookie alone now admits, even on the session-only route.
    let response = proxy
        .get("/app/next", &[("cookie", &cookie(&id)), html])
        .await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert!(
        !sets_cookie(&response),
        "an existing session is not replaced"
    );
    let seen = upstream.only("/app/next");
    assert_eq!(seen.header("x-forwarded-user").as_deref(), Some("alice"));
    assert_eq!(
        seen.header("x-forwarded-auth-method").as_deref(),
        Some("session")
    );
    // The browser keeps sending Basic too: the session is used, no new one is started.
    let response = proxy
        .get(
            "/both-sent",
            &[("cookie", &cookie(&id)), ("authorization", &alice), html],
        )
        .await;
    assert_eq!(response.status, 200);
    assert!(!sets_cookie(&response));
    assert_eq!(
        upstream
            .only("/both-sent")
            .header("x-forwarded-auth-method")
            .as_deref(),
        Some("session")
    );

    // Not a browser navigation, or a route without sessions: no cookie.
    let response = proxy.get("/api-call", &[("authorization", &alice)]).await;
    assert_eq!(response.status, 200);
    assert!(!sets_cookie(&response), "{response:?}");
    let response = proxy
        .send("POST", "/form", &[("authorization", &alice), html], "x")
        .await;
    assert_eq!(response.status, 200);
    assert!(!sets_cookie(&response), "{response:?}");
    let response = proxy
        .get("/basic/page", &[("authorization", &alice), html])
        .await;
    assert_eq!(response.status, 200);
    assert!(!sets_cookie(&response), "{response:?}");
    // A failed Basic login starts nothing.
    let response = proxy
        .get(
            "/home",
            &[("authorization", &basic("alice", WRONG_PW)), html],
        )
        .await;
    assert_eq!(response.status, 401);
    assert!(!sets_cookie(&response), "{response:?}");
    assert_not_logged(&proxy, &id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_basic_browser_session_is_bound_by_the_idle_timeout() {
    let upstream = Upstream::start().await;
    let proxy = start(&upstream, "1s", "4s").await;
    let alice = basic("alice", ALICE_PW);
    let response = proxy
        .get(
            "/home",
            &[("authorization", &alice), ("accept", "text/html")],
        )
        .await;
    assert_eq!(response.status, 200);
    let id = session_id(&response);
    tokio::time::sleep(Duration::from_millis(1400)).await;
    let response = proxy
        .get(
            "/home",
            &[("cookie", &cookie(&id)), ("accept", "text/html")],
        )
        .await;
    assert_login_redirect(&response, "/home", Some("idle"));
    assert_eq!(
        proxy.access_of(&response).await["reason"],
        "session_idle_timeout"
    );
    assert_keeps_cookie(&response);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_after_an_end_is_told_why_in_a_browser_that_expires_cookies() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start(&upstream, &body(ENDS_SESSION_LINES)).await;
    ended_sessions_are_told_why(&proxy).await;
}

// ---------------------------------------------------------------------------------------------
// Revocation on reload
// ---------------------------------------------------------------------------------------------

const ALICE_ROTATED_PW: &str = "alice-rotated-password-3390";

/// Rewrites the proxy's config with `body`, sends SIGHUP and waits until the reload is applied
/// (the `n`th "configuration reloaded" line).
async fn reload(proxy: &Proxy, upstream: &Upstream, body: &str, n: usize) {
    proxy.rewrite_config(&ProxyConfig::new(upstream.url(), body).text());
    proxy.signal("HUP").await;
    proxy.wait_for_events("configuration reloaded", n).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_changes_a_password_or_removes_a_user_revokes_their_sessions() {
    let upstream = Upstream::start().await;
    let lines = "cookie_secure = false\nidle_timeout = \"30m\"\nabsolute_timeout = \"1h\"";
    let v1 = body(lines);
    let proxy = Proxy::start(&upstream, &v1).await;
    let html = ("accept", "text/html");
    let json = ("accept", "application/json");
    let alice = sign_in(&proxy, "alice", ALICE_PW).await;
    let bob = sign_in(&proxy, "bob", BOB_PW).await;
    for c in [&alice, &bob] {
        let response = proxy.get("/app/before", &[("cookie", c)]).await;
        assert_eq!(response.status, 200, "{}", response.text());
    }

    // v2: alice's password changed. The reload says whose sessions end, by name only.
    let rotated = bcrypt::hash(ALICE_ROTATED_PW, 4).unwrap();
    let v2 = v1.replace(alice_hash(), &rotated);
    reload(&proxy, &upstream, &v2, 1).await;
    let line = proxy
        .wait_for_events("reload: sessions of 1 users will be revoked", 1)
        .await;
    assert_eq!(line[0]["users"], "alice", "{}", line[0]);

    // Alice's cookie: a navigation goes to the login page, which says why; the cookie is kept
    // (the store remembers the end), the upstream never sees the request.
    let response = proxy.get("/app/after", &[html, ("cookie", &alice)]).await;
    assert_login_redirect(&response, "/app/after", Some("revoked"));
    assert_keeps_cookie(&response);
    let event = proxy.access_of(&response).await;
    assert_eq!(event["reason"], "session_revoked", "{event}");
    assert!(
        event["detail"]
            .as_str()
            .is_some_and(|d| d.contains("password of user \"alice\" changed")),
        "{event}"
    );
    let page = proxy
        .get(&response.header("location").unwrap(), &[html])
        .await
        .text();
    assert!(
        page.contains("Your session was ended because your account changed"),
        "{page}"
    );
    // Anything else gets 401 with the reason, again and again (a tombstone, not a deletion).
    for _ in 0..2 {
        let response = proxy.get("/app/api", &[json, ("cookie", &alice)]).await;
        assert_proxy_made(&proxy, &response, 401, "deny", "session_revoked").await;
        assert_eq!(response.json()["reason"], "session_revoked");
    }
    assert!(upstream
        .requests()
        .iter()
        .all(|r| r.path != "/app/after" && r.path != "/app/api"));

    // Bob's session is untouched; alice signs in with her new password.
    let response = proxy.get("/app/bob", &[("cookie", &bob)]).await;
    assert_eq!(response.status, 200, "{}", response.text());
    let alice_again = sign_in(&proxy, "alice", ALICE_ROTATED_PW).await;
    let response = proxy.get("/app/alice", &[("cookie", &alice_again)]).await;
    assert_eq!(response.status, 200, "{}", response.text());

    // v3: bob removed, alice's old password back. Bob's session is revoked; alice's first
    // session stays revoked (its end is remembered, whatever the config says now), and the
    // one started under the v2 password ends in turn.
    let v3 = v1.replace(
        &format!(
            "[[users]]\nname = \"bob\"\npassword_hash = \"{}\"\ngroups = [\"staff\"]\n",
            bob_hash()
        ),
        "",
    );
    assert_ne!(v3, v1, "bob is removed from the config");
    reload(&proxy, &upstream, &v3, 2).await;
    let line = proxy
        .wait_for_events("reload: sessions of 2 users will be revoked", 1)
        .await;
    assert_eq!(line[0]["users"], "alice, bob", "{}", line[0]);
    let response = proxy.get("/app/bob", &[json, ("cookie", &bob)]).await;
    let event = assert_proxy_made(&proxy, &response, 401, "deny", "session_revoked").await;
    assert!(
        event["detail"]
            .as_str()
            .is_some_and(|d| d.contains("user \"bob\" was removed")),
        "{event}"
    );
    for c in [&alice, &alice_again] {
        let response = proxy.get("/app/alice", &[json, ("cookie", c)]).await;
        assert_proxy_made(&proxy, &response, 401, "deny", "session_revoked").await;
    }
    let fresh = sign_in(&proxy, "alice", ALICE_PW).await;
    let response = proxy.get("/app/fresh", &[("cookie", &fresh)]).await;
    assert_eq!(response.status, 200, "{}", response.text());

    // The reload log names no hash.
    let all = proxy.all_output();
    for secret in [alice_hash(), bob_hash(), rotated.as_str()] {
        assert!(!all.contains(secret), "a hash was logged:\n{all}");
    }
}

/// Issue 13, unbounded sessions: a browser that sends Basic on every navigation (and keeps
/// cookies) gets one session from its first navigation and is admitted on it from then on;
/// 50 navigations, one session `Set-Cookie`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_navigations_from_a_browser_with_cookies_keep_one_session() {
    let upstream = Upstream::start().await;
    let proxy = start(&upstream, "10m", "1h").await;
    let jar = Jar::default();
    let auth = basic("alice", ALICE_PW);
    let mut set_cookies = 0;
    for n in 0..50 {
        let path = format!("/nav/{n}");
        let response = jar
            .get(
                &proxy,
                &path,
                &[("authorization", &auth), ("accept", "text/html")],
            )
            .await;
        assert_eq!(response.status, 200, "{n}: {}", response.text());
        // Session cookies only (the first navigation also gets a known-device cookie).
        set_cookies += response
            .header_all("set-cookie")
            .iter()
            .filter(|c| c.contains("portcullis_session="))
            .count();
        let method = if n == 0 { "basic" } else { "session" };
        assert_eq!(
            upstream
                .only(&path)
                .header("x-forwarded-auth-method")
                .as_deref(),
            Some(method),
            "navigation {n}"
        );
    }
    assert_eq!(set_cookies, 1, "one session for 50 navigations");
}

/// Issue 13, the per-user cap: without a cookie jar every Basic navigation starts a session,
/// but at most `max_per_user` stay live: the 4th login ends the 1st, whose cookie is then
/// refused as `session_revoked` with a detail saying why (every time: it is a tombstone),
/// while the newer ones and other users' sessions are untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_past_max_per_user_ends_the_users_oldest_session() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start(&upstream, &body("cookie_secure = false\nmax_per_user = 3")).await;
    let bob = sign_in(&proxy, "bob", BOB_PW).await;
    let auth = basic("alice", ALICE_PW);
    let mut alice = Vec::new();
    for n in 0..4 {
        let response = proxy
            .get(
                &format!("/nav/{n}"),
                &[("authorization", &auth), ("accept", "text/html")],
            )
            .await;
        assert_eq!(response.status, 200, "{}", response.text());
        alice.push(cookie(&session_id(&response)));
    }
    for _ in 0..2 {
        let response = proxy.get("/app/first", &[("cookie", &alice[0])]).await;
        assert_proxy_made(&proxy, &response, 401, "deny", "session_revoked").await;
        let event = proxy.access_of(&response).await;
        assert_eq!(
            event["detail"], "ended because alice started a 4th session; session.max_per_user = 3",
            "{event}"
        );
    }
    // A person is told the cause on the login page, not that the account changed.
    let response = proxy
        .get(
            "/app/first",
            &[("accept", "text/html"), ("cookie", &alice[0])],
        )
        .await;
    assert_login_redirect(&response, "/app/first", Some("capped"));
    assert_keeps_cookie(&response);
    let page = proxy
        .get(
            &response.header("location").unwrap(),
            &[("accept", "text/html")],
        )
        .await
        .text();
    assert!(
        page.contains("signed in from more browsers or devices than this site allows"),
        "{page}"
    );
    assert!(!page.contains("account changed"), "{page}");
    for c in alice.iter().skip(1).chain([&bob]) {
        let response = proxy.get("/app/x", &[("cookie", c)]).await;
        assert_eq!(response.status, 200, "{c}: {}", response.text());
    }
    // The login form counts too: the next login ends the 2nd.
    let fifth = sign_in(&proxy, "alice", ALICE_PW).await;
    let response = proxy.get("/app/second", &[("cookie", &alice[1])]).await;
    assert_proxy_made(&proxy, &response, 401, "deny", "session_revoked").await;
    assert_eq!(
        proxy.access_of(&response).await["detail"],
        "ended because alice started a 4th session; session.max_per_user = 3"
    );
    for c in [&alice[2], &alice[3], &fifth, &bob] {
        assert_eq!(proxy.get("/app/x", &[("cookie", c)]).await.status, 200);
    }
}

/// Issue 13, key layout: the cookie carries `<id>.<tag>` (the tag names where the store keeps
/// the session). A cookie without the tag (as issued before the upgrade) or with another
/// user's tag names no session: `session_unknown`, and the cookie is cleared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_cookie_without_its_users_tag_is_unknown() {
    let upstream = Upstream::start().await;
    let proxy = start(&upstream, "10m", "1h").await;
    let value = login(&proxy).await;
    let (id, tag) = value.split_once('.').unwrap();
    assert_eq!(tag, user_tag("alice"));
    assert_eq!(
        proxy
            .get("/app/x", &[("cookie", &cookie(&value))])
            .await
            .status,
        200
    );
    for other in [id.to_string(), format!("{id}.{}", user_tag("bob"))] {
        let response = proxy.get("/app/x", &[("cookie", &cookie(&other))]).await;
        assert_proxy_made(&proxy, &response, 401, "deny", "session_unknown").await;
        assert_clears_cookie(&response);
    }
}
