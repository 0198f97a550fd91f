//! SPEC §4 rows for Basic auth and authorisation, against the real binary and a real upstream:
//! status, challenges, body shape, and the denial reason in the access log.

mod support;

use support::*;

const BASIC_MAIN: &str = r#"Basic realm="Main", charset="UTF-8""#;
const BEARER_MAIN: &str = r#"Bearer realm="Main""#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn correct_credentials_pass_and_the_upstream_learns_the_identity() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_std(&upstream).await;

    // argon2id user
    let response = proxy
        .get("/home?x=1", &[("authorization", &basic("alice", ALICE_PW))])
        .await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.text(), "upstream ok");
    let seen = upstream.only("/home");
    assert_eq!(seen.method, "GET");
    assert_eq!(seen.uri, "/home?x=1");
    assert_eq!(seen.header("x-forwarded-user").as_deref(), Some("alice"));
    assert_eq!(seen.header("x-forwarded-groups").as_deref(), Some("admins"));
    assert_eq!(
        seen.header("x-forwarded-auth-method").as_deref(),
        Some("basic")
    );
    assert_eq!(
        seen.header("authorization"),
        None,
        "Authorization is stripped by default"
    );
    let event = proxy.access_of(&response).await;
    assert_eq!(event["decision"], "allow");
    assert_eq!(event["user"], "alice");
    assert_eq!(event["auth_method"], "basic");
    assert_eq!(event["route"], "/");
    assert_eq!(event["status"], 200);
    assert_eq!(event["upstream_status"], 200);

    // bcrypt user, scheme name in another case
    let value = basic("bob", BOB_PW).replacen("Basic", "bAsIc", 1);
    let response = proxy.get("/bob-page", &[("authorization", &value)]).await;
    assert_eq!(response.status, 200, "{}", response.text());
    let seen = upstream.only("/bob-page");
    assert_eq!(seen.header("x-forwarded-user").as_deref(), Some("bob"));
    assert_eq!(seen.header("x-forwarded-groups").as_deref(), Some("staff"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_credentials_get_one_challenge_per_scheme_in_route_order() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_std(&upstream).await;

    let response = proxy.get("/home", &[]).await;
    let event = assert_proxy_made(&proxy, &response, 401, "deny", "missing_credentials").await;
    assert_eq!(
        response.header_all("www-authenticate"),
        vec![BASIC_MAIN, BEARER_MAIN]
    );
    assert_eq!(event["route"], "/");
    assert_eq!(event["path"], "/home");

    // Route order decides the challenge order.
    let response = proxy.get("/both/x", &[]).await;
    assert_proxy_made(&proxy, &response, 401, "deny", "missing_credentials").await;
    assert_eq!(
        response.header_all("www-authenticate"),
        vec![
            r#"Bearer realm="Both""#,
            r#"Basic realm="Both", charset="UTF-8""#
        ]
    );

    // A Basic-only route sends only the Basic challenge.
    let response = proxy.get("/admin", &[]).await;
    assert_proxy_made(&proxy, &response, 401, "deny", "missing_credentials").await;
    assert_eq!(
        response.header_all("www-authenticate"),
        vec![r#"Basic realm="Admin area", charset="UTF-8""#]
    );
    assert!(
        upstream.requests().is_empty(),
        "nothing was forwarded: {:#?}",
        upstream.requests()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realm_quoted_string_escapes_quote_and_backslash() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_std(&upstream).await;
    let response = proxy.get("/quoted", &[]).await;
    assert_proxy_made(&proxy, &response, 401, "deny", "missing_credentials").await;
    assert_eq!(
        response.header_all("www-authenticate"),
        vec![
            r#"Basic realm="Say \"hi\" \\ bye", charset="UTF-8""#,
            r#"Bearer realm="Say \"hi\" \\ bye""#
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_and_unknown_user_look_the_same_to_the_client() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_std(&upstream).await;
    let json = ("accept", "application/json");

    let cases = [
        (basic("alice", WRONG_PW), "bad_password"),
        (basic("bob", WRONG_PW), "bad_password"),
        (basic("mallory", WRONG_PW), "unknown_user"),
        (basic("mallory", ALICE_PW), "unknown_user"),
    ];
    let mut bodies = Vec::new();
    for (credential, reason) in &cases {
        let response = proxy
            .get("/home", &[("authorization", credential), json])
            .await;
        let event = assert_proxy_made(&proxy, &response, 401, "deny", reason).await;
        assert_eq!(
            response.header_all("www-authenticate"),
            vec![BASIC_MAIN, BEARER_MAIN]
        );
        assert_eq!(
            response.header("content-type").as_deref(),
            Some("application/json")
        );
        let body = response.json();
        assert_eq!(body["reason"], "invalid_credentials", "{body}");
        assert_eq!(body["request_id"], response.request_id().as_str());
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{body}"
        );
        let text = response.text();
        for leak in [
            "unknown_user",
            "bad_password",
            "mallory",
            "no such user",
            "wrong password",
        ] {
            assert!(!text.contains(leak), "body reveals {leak:?}: {text}");
        }
        // The log keeps the exact reason and who tried.
        assert_eq!(event["reason"], *reason);
        bodies.push((
            body["error"].clone(),
            body["reason"].clone(),
            response.header_all("www-authenticate"),
        ));
    }
    assert!(
        bodies.windows(2).all(|w| w[0] == w[1]),
        "bodies differ: {bodies:#?}"
    );

    // Plain text and HTML say the same thing without naming the reason.
    for accept in ["text/html", "*/*"] {
        let response = proxy
            .get(
                "/home",
                &[
                    ("authorization", &basic("mallory", WRONG_PW)),
                    ("accept", accept),
                ],
            )
            .await;
        assert_eq!(response.status, 401);
        assert!(
            !response.text().contains("unknown_user"),
            "{}",
            response.text()
        );
        assert!(!response.text().contains("mallory"), "{}", response.text());
    }
    assert!(upstream.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_basic_credentials_get_401() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_std(&upstream).await;
    let no_colon = format!(
        "Basic {}",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "alice")
    );
    let not_utf8 = format!(
        "Basic {}",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, b"al\xffce:pw")
    );
    for value in [
        "Basic !!!not-base64!!!",
        "Basic",
        no_colon.as_str(),
        not_utf8.as_str(),
        "Basic YWxp Y2U6cHc=",
    ] {
        let response = proxy.get("/home", &[("authorization", value)]).await;
        assert_proxy_made(&proxy, &response, 401, "deny", "malformed_credentials").await;
        assert_eq!(
            response.header_all("www-authenticate"),
            vec![BASIC_MAIN, BEARER_MAIN],
            "{value}"
        );
    }
    assert!(upstream.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_authorization_headers_get_400_on_any_route() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_std(&upstream).await;
    let alice = basic("alice", ALICE_PW);
    for path in ["/home", "/admin", "/api/x", "/public/x"] {
        let response = proxy
            .get(
                path,
                &[("authorization", &alice), ("authorization", &bearer(TOKEN))],
            )
            .await;
        assert_proxy_made(&proxy, &response, 400, "deny", "malformed_request").await;
    }
    // Even two identical valid credentials; refused before a route is chosen, so no challenge.
    let response = proxy
        .get(
            "/home",
            &[("authorization", &alice), ("authorization", &alice)],
        )
        .await;
    assert_proxy_made(&proxy, &response, 400, "deny", "malformed_request").await;
    assert!(
        response.header("www-authenticate").is_none(),
        "no challenge: {response:?}"
    );
    assert!(upstream.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheme_the_route_does_not_accept_counts_as_missing() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_std(&upstream).await;

    // Basic (valid!) on a bearer-only route.
    let response = proxy
        .get(
            "/api/items",
            &[("authorization", &basic("alice", ALICE_PW))],
        )
        .await;
    let event = assert_proxy_made(&proxy, &response, 401, "deny", "missing_credentials").await;
    assert_eq!(
        response.header_all("www-authenticate"),
        vec![r#"Bearer realm="API""#]
    );
    let detail = event["detail"].as_str().unwrap();
    assert!(
        detail.contains("Basic"),
        "detail names the scheme sent: {detail}"
    );

    // A scheme nobody supports.
    let response = proxy
        .get("/home", &[("authorization", "Digest username=\"alice\"")])
        .await;
    let event = assert_proxy_made(&proxy, &response, 401, "deny", "missing_credentials").await;
    assert_eq!(
        response.header_all("www-authenticate"),
        vec![BASIC_MAIN, BEARER_MAIN]
    );
    assert!(
        event["detail"].as_str().unwrap().contains("Digest"),
        "{event}"
    );

    // Bearer (valid) on a basic-only route.
    let response = proxy
        .get("/admin", &[("authorization", &bearer(TOKEN))])
        .await;
    let event = assert_proxy_made(&proxy, &response, 401, "deny", "missing_credentials").await;
    assert!(
        event["detail"].as_str().unwrap().contains("Bearer"),
        "{event}"
    );
    assert!(upstream.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authenticated_but_not_allowed_gets_403() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_std(&upstream).await;
    let bob = basic("bob", BOB_PW);
    let alice = basic("alice", ALICE_PW);

    // allow_users
    let response = proxy.get("/admin/panel", &[("authorization", &bob)]).await;
    let event = assert_proxy_made(&proxy, &response, 403, "deny", "user_not_allowed").await;
    assert_eq!(event["user"], "bob");
    assert!(
        response.header_all("www-authenticate").is_empty(),
        "{response:?}"
    );
    // allow_groups
    let response = proxy.get("/staff/x", &[("authorization", &alice)]).await;
    assert_proxy_made(&proxy, &response, 403, "deny", "user_not_allowed").await;
    let response = proxy
        .get("/staff/x", &[("authorization", &bearer(TOKEN))])
        .await;
    assert_proxy_made(&proxy, &response, 403, "deny", "user_not_allowed").await;
    assert!(upstream.requests().is_empty());

    // The admitted ones pass.
    assert_eq!(
        proxy
            .get("/admin/panel", &[("authorization", &alice)])
            .await
            .status,
        200
    );
    assert_eq!(
        proxy
            .get("/staff/x", &[("authorization", &bob)])
            .await
            .status,
        200
    );
    assert_eq!(upstream.requests().len(), 2);
    assert_eq!(
        upstream
            .only("/staff/x")
            .header("x-forwarded-user")
            .as_deref(),
        Some("bob")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_not_in_methods_gets_405_with_allow_after_auth() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_std(&upstream).await;
    let alice = basic("alice", ALICE_PW);

    let response = proxy
        .send("DELETE", "/admin/thing", &[("authorization", &alice)], "")
        .await;
    let event = assert_proxy_made(&proxy, &response, 405, "deny", "method_not_allowed").await;
    assert_eq!(response.header("allow").as_deref(), Some("GET, POST"));
    assert_eq!(event["user"], "alice");

    // Authentication comes first: without credentials it is a 401.
    let response = proxy.send("DELETE", "/admin/thing", &[], "").await;
    assert_proxy_made(&proxy, &response, 401, "deny", "missing_credentials").await;
    assert!(upstream.requests().is_empty());

    let response = proxy
        .send("POST", "/admin/thing", &[("authorization", &alice)], "data")
        .await;
    assert_eq!(response.status, 200);
    let seen = upstream.only("/admin/thing");
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.body_len, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_route_gets_403() {
    let upstream = Upstream::start().await;
    let body = format!(
        "{}\n[[route]]\npath = \"/public\"\nauth = []\n\n[[route]]\npath = \"/admin\"\nauth = [\"basic\"]\n",
        principals()
    );
    let proxy = Proxy::start(&upstream, &body).await;
    for path in ["/", "/other", "/publicity", "/administrator"] {
        let response = proxy
            .get(path, &[("authorization", &basic("alice", ALICE_PW))])
            .await;
        let event = assert_proxy_made(&proxy, &response, 403, "deny", "no_route").await;
        assert!(event["route"].is_null(), "{event}");
        assert!(response.header_all("www-authenticate").is_empty());
    }
    assert!(upstream.requests().is_empty());
    assert_eq!(proxy.get("/public/x", &[]).await.status, 200);
    assert_eq!(upstream.only("/public/x").header("x-forwarded-user"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusal_bodies_follow_accept() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_std(&upstream).await;

    // HTML for browsers: a page with the request id.
    let response = proxy
        .get(
            "/home",
            &[("accept", "text/html,application/xhtml+xml,*/*;q=0.8")],
        )
        .await;
    assert_eq!(response.status, 401);
    assert!(response
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    let html = response.text();
    assert!(
        html.to_ascii_lowercase().starts_with("<!doctype html"),
        "{html}"
    );
    assert!(html.contains(&response.request_id()), "{html}");
    assert_eq!(
        response.header("cache-control").as_deref(),
        Some("no-store")
    );

    // JSON for API clients.
    let response = proxy
        .get(
            "/admin",
            &[
                ("accept", "application/json"),
                ("authorization", &basic("bob", BOB_PW)),
            ],
        )
        .await;
    assert_eq!(response.status, 403);
    let body = response.json();
    assert_eq!(body["reason"], "user_not_allowed");
    assert_eq!(body["request_id"], response.request_id().as_str());
    assert!(body["error"].is_string());
    assert_eq!(
        response.header("cache-control").as_deref(),
        Some("no-store")
    );

    // One line of text otherwise.
    for accept in [None, Some("*/*"), Some("text/plain")] {
        let headers: Vec<(&str, &str)> = accept.map(|a| ("accept", a)).into_iter().collect();
        let response = proxy.get("/nowhere/../admin", &headers).await;
        assert_eq!(response.status, 401);
        assert!(response
            .header("content-type")
            .unwrap()
            .starts_with("text/plain"));
        let text = response.text();
        assert_eq!(text.trim_end_matches('\n').lines().count(), 1, "{text:?}");
        assert!(text.contains(&response.request_id()), "{text}");
        assert_eq!(
            response.header("cache-control").as_deref(),
            Some("no-store")
        );
    }
}

/// `portcullis_password_verifications_total` from the admin listener.
async fn verifications(proxy: &Proxy) -> u64 {
    let response = send(proxy.admin(), "GET", "/metrics", &[], bytes::Bytes::new()).await;
    let text = response.text();
    text.lines()
        .find_map(|l| l.strip_prefix("portcullis_password_verifications_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no verification counter in:\n{text}"))
}

/// SPEC §3 `basic`: identical attempts under way together share one hash for an unknown name
/// as they do for a known user, so concurrency does not reveal which users exist. Counted by
/// the proxy's own verification counter, not by time. The users are bcrypt cost 12, so each
/// hash takes long enough for nine requests sent at once to arrive while it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nine_identical_attempts_cost_one_hash_for_known_and_unknown_names() {
    let upstream = Upstream::start().await;
    let carol = bcrypt::hash("carol-right-pw", 12).unwrap();
    let body = format!(
        "[rate_limit]\nmax_failures = 1000\n\n[[users]]\nname = \"carol\"\npassword_hash = \"{carol}\"\n\n[[route]]\npath = \"/\"\nauth = [\"basic\"]\n"
    );
    let proxy = ProxyConfig::new(upstream.url(), body)
        .server("admin_listen = \"127.0.0.1:0\"")
        .start()
        .await;
    let mut before = verifications(&proxy).await;
    for (name, reason) in [("carol", "bad_password"), ("nobody", "unknown_user")] {
        let credential = basic(name, "the-same-wrong-guess");
        let headers = [("authorization", credential.as_str())];
        let attempts = (0..9).map(|_| proxy.get("/x", &headers));
        let responses = futures_util::future::join_all(attempts).await;
        for response in &responses {
            assert_proxy_made(&proxy, response, 401, "deny", reason).await;
        }
        let after = verifications(&proxy).await;
        assert_eq!(
            after - before,
            1,
            "{name}: nine identical attempts, one hash"
        );
        before = after;
    }
}
