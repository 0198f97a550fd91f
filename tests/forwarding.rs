//! What the upstream receives (SPEC §3 step 5): identity headers only from the proxy, no
//! hop-by-hop headers, Authorization only when configured, forwarding headers set (and extended
//! only for trusted proxies), and one request id shared by response, upstream and log.

mod support;

use support::*;

/// Identity and routing headers a client might try to set, in several spellings.
const SPOOFED: &[(&str, &str)] = &[
    ("X-Forwarded-User", "admin"),
    ("x_forwarded_user", "admin"),
    ("X-FORWARDED-USER", "admin"),
    ("X_Forwarded-User", "admin"),
    ("X-Forwarded-Groups", "admins,root"),
    ("x_forwarded_groups", "admins"),
    ("X-Forwarded-Auth-Method", "basic"),
    ("X_FORWARDED_AUTH_METHOD", "bearer"),
    ("X-Forwarded-Identity", "admin"),
    ("x_forwarded_identity", "jwt:admin"),
    ("X_FORWARDED-IDENTITY", "token:admin"),
    ("X-Real-IP", "10.9.9.9"),
    ("x_real_ip", "10.9.9.9"),
    ("X-Original-URL", "/admin"),
    ("X-Rewrite-URL", "/admin"),
    ("X-Forwarded-Uri", "/admin"),
    ("X-Forwarded-Prefix", "/admin"),
    ("Remote-User", "admin"),
];

fn raw_request(target: &str, headers: &[(&str, &str)]) -> String {
    let mut request = format!("GET {target} HTTP/1.1\r\nHost: proxy.test\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("Connection: close\r\n\r\n");
    request
}

/// Header names the upstream must never see from a client, in any spelling.
fn assert_no_spoofed_names(seen: &Recorded) {
    for name in seen.header_names() {
        let folded = name.replace('_', "-");
        for forbidden in [
            "x-real-ip",
            "x-original-url",
            "x-rewrite-url",
            "x-forwarded-uri",
            "x-forwarded-prefix",
            "remote-user",
        ] {
            assert_ne!(
                folded, forbidden,
                "upstream received {name}: {:?}",
                seen.headers
            );
        }
        if name.contains('_') {
            assert!(
                !folded.starts_with("x-forwarded-"),
                "upstream received the underscore spelling {name}: {:?}",
                seen.headers
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_identity_headers_never_reach_the_upstream() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_std(&upstream).await;

    // Public route: no identity at all.
    let response = RawResp::parse(&proxy.raw(raw_request("/public/spoof", SPOOFED)).await);
    assert_eq!(response.status, 200, "{}", response.text);
    let seen = upstream.only("/public/spoof");
    assert_eq!(seen.header("x-forwarded-user"), None, "{:?}", seen.headers);
    assert_eq!(seen.header("x-forwarded-groups"), None);
    assert_eq!(seen.header("x-forwarded-auth-method"), None);
    assert_eq!(seen.header("x-forwarded-identity"), None);
    assert_no_spoofed_names(&seen);

    // Basic: only the proxy's values, once each.
    let alice = basic("alice", ALICE_PW);
    let mut headers = SPOOFED.to_vec();
    headers.push(("Authorization", &alice));
    let response = RawResp::parse(&proxy.raw(raw_request("/home/spoof", &headers)).await);
    assert_eq!(response.status, 200, "{}", response.text);
    let seen = upstream.only("/home/spoof");
    assert_eq!(seen.header_all("x-forwarded-user"), vec!["alice"]);
    assert_eq!(seen.header_all("x-forwarded-groups"), vec!["admins"]);
    assert_eq!(seen.header_all("x-forwarded-auth-method"), vec!["basic"]);
    assert_eq!(seen.header_all("x-forwarded-identity"), vec!["alice"]);
    assert_no_spoofed_names(&seen);

    // Bearer: the token's name.
    let token = bearer(TOKEN);
    let mut headers = SPOOFED.to_vec();
    headers.push(("Authorization", &token));
    let response = RawResp::parse(&proxy.raw(raw_request("/home/bearer-spoof", &headers)).await);
    assert_eq!(response.status, 200, "{}", response.text);
    let seen = upstream.only("/home/bearer-spoof");
    assert_eq!(seen.header_all("x-forwarded-user"), vec!["ci-bot"]);
    assert_eq!(seen.header_all("x-forwarded-groups"), vec!["ci"]);
    assert_eq!(seen.header_all("x-forwarded-auth-method"), vec!["bearer"]);
    // The bare name next to the identity qualified by its source.
    assert_eq!(
        seen.header_all("x-forwarded-identity"),
        vec!["token:ci-bot"]
    );
    assert_no_spoofed_names(&seen);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_identity_header_names_are_stripped_and_set() {
    let upstream = Upstream::start().await;
    let body = format!(
        "[identity]\nuser_header = \"X-Remote-User\"\ngroups_header = \"X-Remote-Groups\"\nauth_method_header = \"X-Remote-Auth\"\nidentity_header = \"X-Remote-Identity\"\n{}",
        std_body()
    );
    let proxy = Proxy::start(&upstream, &body).await;
    let spoof = [
        ("X-Remote-User", "root"),
        ("x_remote_user", "root"),
        ("X-REMOTE-GROUPS", "root"),
        ("x_remote_auth", "basic"),
        ("X_Remote_Identity", "jwt:root"),
        ("X-Forwarded-User", "root"),
    ];
    let response = RawResp::parse(&proxy.raw(raw_request("/public/a", &spoof)).await);
    assert_eq!(response.status, 200);
    let seen = upstream.only("/public/a");
    for name in [
        "x-remote-user",
        "x_remote_user",
        "x-remote-groups",
        "x_remote_auth",
        "x-remote-identity",
        "x_remote_identity",
        "x-forwarded-user",
    ] {
        assert_eq!(seen.header(name), None, "{name}: {:?}", seen.headers);
    }
    let alice = basic("alice", ALICE_PW);
    let mut headers = spoof.to_vec();
    headers.push(("Authorization", &alice));
    let response = RawResp::parse(&proxy.raw(raw_request("/home/a", &headers)).await);
    assert_eq!(response.status, 200);
    let seen = upstream.only("/home/a");
    assert_eq!(seen.header_all("x-remote-user"), vec!["alice"]);
    assert_eq!(seen.header_all("x-remote-groups"), vec!["admins"]);
    assert_eq!(seen.header_all("x-remote-auth"), vec!["basic"]);
    assert_eq!(seen.header_all("x-remote-identity"), vec!["alice"]);
    assert_eq!(seen.header("x_remote_user"), None);
    assert_eq!(seen.header("x_remote_identity"), None);
    assert_eq!(seen.header("x-forwarded-identity"), None);
    assert_eq!(
        seen.header("x-forwarded-user"),
        None,
        "the default name is not set any more, nor passed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_header_cannot_remove_the_proxy_headers() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_std(&upstream).await;
    let alice = basic("alice", ALICE_PW);

    let attack = [
        (
            "Connection",
            "X-Forwarded-User, X-Forwarded-Groups, X-Forwarded-Auth-Method",
        ),
        ("Authorization", alice.as_str()),
    ];
    let response = RawResp::parse(&proxy.raw(raw_request("/home/conn1", &attack)).await);
    assert_eq!(response.status, 200, "{}", response.text);
    let seen = upstream.only("/home/conn1");
    assert_eq!(seen.header("x-forwarded-user").as_deref(), Some("alice"));
    assert_eq!(seen.header("x-forwarded-groups").as_deref(), Some("admins"));
    assert_eq!(
        seen.header("x-forwarded-auth-method").as_deref(),
        Some("basic")
    );

    let attack = [
        (
            "Connection",
            "X-Forwarded-For, X-Request-Id, Forwarded, X-Forwarded-Proto, X-Forwarded-Host",
        ),
        ("Authorization", alice.as_str()),
    ];
    let response = RawResp::parse(&proxy.raw(raw_request("/home/conn2", &attack)).await);
    assert_eq!(response.status, 200, "{}", response.text);
    let seen = upstream.only("/home/conn2");
    assert_eq!(seen.header("x-forwarded-for").as_deref(), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(
        seen.header("x-forwarded-host").as_deref(),
        Some("proxy.test")
    );
    assert!(
        seen.header("forwarded")
            .is_some_and(|f| f.contains("for=127.0.0.1")),
        "{:?}",
        seen.headers
    );
    let id = response.header("x-request-id").expect("response id");
    assert_eq!(seen.header("x-request-id").as_deref(), Some(id));
    assert_eq!(seen.header("x-forwarded-user").as_deref(), Some("alice"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_not_forwarded() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_std(&upstream).await;
    let headers = [
        ("Connection", "keep-alive, X-Hop-Secret"),
        ("Keep-Alive", "timeout=5, max=100"),
        ("TE", "trailers"),
        ("Trailer", "X-Checksum"),
        ("Upgrade", "websocket"),
        ("Proxy-Authorization", "Basic cHJveHk6c2VjcmV0"),
        ("Proxy-Connection", "keep-alive"),
        ("X-Hop-Secret", "do-not-forward"),
        ("X-End-To-End", "forward-me"),
    ];
    let response = RawResp::parse(&proxy.raw(raw_request("/public/hop", &headers)).await);
    assert_eq!(response.status, 200, "{}", response.text);
    let seen = upstream.only("/public/hop");
    for name in [
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "proxy-authorization",
        "proxy-connection",
        "x-hop-secret",
    ] {
        assert_eq!(
            seen.header(name),
            None,
            "{name} was forwarded: {:?}",
            seen.headers
        );
    }
    if let Some(connection) = seen.header("connection") {
        let connection = connection.to_ascii_lowercase();
        assert!(
            !connection.contains("x-hop-secret") && !connection.contains("upgrade"),
            "{connection}"
        );
    }
    assert_eq!(seen.header("x-end-to-end").as_deref(), Some("forward-me"));

    // Same on an authenticated route.
    let alice = basic("alice", ALICE_PW);
    let mut with_auth = headers.to_vec();
    with_auth.push(("Authorization", &alice));
    let response = RawResp::parse(&proxy.raw(raw_request("/home/hop", &with_auth)).await);
    assert_eq!(response.status, 200, "{}", response.text);
    let seen = upstream.only("/home/hop");
    for name in [
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "proxy-authorization",
        "x-hop-secret",
    ] {
        assert_eq!(
            seen.header(name),
            None,
            "{name} was forwarded: {:?}",
            seen.headers
        );
    }
    assert_eq!(seen.header("x-forwarded-user").as_deref(), Some("alice"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_is_stripped_by_default() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_std(&upstream).await;
    let alice = basic("alice", ALICE_PW);
    assert_eq!(
        proxy
            .get("/home/a", &[("authorization", &alice)])
            .await
            .status,
        200
    );
    assert_eq!(
        proxy
            .get("/home/b", &[("authorization", &bearer(TOKEN))])
            .await
            .status,
        200
    );
    // Also on a public route, where the header is not even checked.
    assert_eq!(
        proxy
            .get("/public/c", &[("authorization", &alice)])
            .await
            .status,
        200
    );
    for path in ["/home/a", "/home/b", "/public/c"] {
        assert_eq!(upstream.only(path).header("authorization"), None, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_is_forwarded_when_configured() {
    let upstream = Upstream::start().await;
    let body = format!("[identity]\nforward_authorization = true\n{}", std_body());
    let proxy = Proxy::start(&upstream, &body).await;
    let alice = basic("alice", ALICE_PW);
    assert_eq!(
        proxy
            .get("/home/a", &[("authorization", &alice)])
            .await
            .status,
        200
    );
    assert_eq!(
        proxy
            .get("/home/b", &[("authorization", &bearer(TOKEN))])
            .await
            .status,
        200
    );
    assert_eq!(
        upstream.only("/home/a").header("authorization"),
        Some(alice)
    );
    assert_eq!(
        upstream.only("/home/b").header("authorization"),
        Some(bearer(TOKEN))
    );
    assert_eq!(
        upstream
            .only("/home/a")
            .header("x-forwarded-user")
            .as_deref(),
        Some("alice")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_from_an_untrusted_peer_are_replaced() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_std(&upstream).await;
    let headers = [
        ("X-Forwarded-For", "6.6.6.6"),
        ("Forwarded", "for=6.6.6.6;proto=https;host=evil.example"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "evil.example"),
        ("X-Forwarded-Port", "443"),
        ("X-Request-Id", "client-chosen-id"),
    ];
    let response = RawResp::parse(&proxy.raw(raw_request("/public/fwd", &headers)).await);
    assert_eq!(response.status, 200, "{}", response.text);
    let seen = upstream.only("/public/fwd");
    assert_eq!(seen.header_all("x-forwarded-for"), vec!["127.0.0.1"]);
    assert_eq!(seen.header_all("x-forwarded-proto"), vec!["http"]);
    assert_eq!(seen.header_all("x-forwarded-host"), vec!["proxy.test"]);
    assert_eq!(
        seen.header_all("forwarded"),
        vec![r#"for=127.0.0.1;proto=http;host="proxy.test""#]
    );
    assert_eq!(seen.header("x-forwarded-port"), None);
    // Host is the upstream's unless preserve_host.
    assert_eq!(seen.header("host"), Some(upstream.addr.to_string()));

    let id = response
        .header("x-request-id")
        .expect("X-Request-Id")
        .to_string();
    assert_ne!(id, "client-chosen-id");
    assert_eq!(seen.header_all("x-request-id"), vec![id.clone()]);
    let event = proxy.access_for(&id).await;
    assert_eq!(event["client_ip"], "127.0.0.1");
    assert!(proxy
        .access_events()
        .iter()
        .all(|e| e["request_id"] != "client-chosen-id"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_proxy_extends_the_chain_and_names_the_client() {
    let upstream = Upstream::start().await;
    let proxy = ProxyConfig::new(upstream.url(), std_body())
        .server("trusted_proxies = [\"127.0.0.1/32\"]")
        .start()
        .await;

    let headers = [
        ("X-Forwarded-For", "203.0.113.7"),
        ("Forwarded", "for=203.0.113.7;proto=https"),
        ("X-Request-Id", "trace-abc-123"),
    ];
    let response = RawResp::parse(&proxy.raw(raw_request("/public/trusted", &headers)).await);
    assert_eq!(response.status, 200, "{}", response.text);
    let seen = upstream.only("/public/trusted");
    assert_eq!(
        seen.header_all("x-forwarded-for"),
        vec!["203.0.113.7, 127.0.0.1"]
    );
    assert_eq!(
        seen.header_all("forwarded"),
        vec![r#"for=203.0.113.7;proto=https, for=127.0.0.1;proto=http;host="proxy.test""#]
    );
    // A trusted peer's well-formed request id is kept, everywhere.
    assert_eq!(response.header("x-request-id"), Some("trace-abc-123"));
    assert_eq!(
        seen.header("x-request-id").as_deref(),
        Some("trace-abc-123")
    );
    let event = proxy.access_for("trace-abc-123").await;
    assert_eq!(event["client_ip"], "203.0.113.7");

    // Several hops: the rightmost untrusted address is the client.
    let headers = [("X-Forwarded-For", "6.6.6.6, 198.51.100.4")];
    let response = RawResp::parse(&proxy.raw(raw_request("/public/chain", &headers)).await);
    assert_eq!(response.status, 200);
    let seen = upstream.only("/public/chain");
    assert_eq!(
        seen.header("x-forwarded-for").as_deref(),
        Some("6.6.6.6, 198.51.100.4, 127.0.0.1")
    );
    let event = proxy
        .access_for(response.header("x-request-id").unwrap())
        .await;
    assert_eq!(event["client_ip"], "198.51.100.4");

    // A malformed id from a trusted peer is replaced.
    let headers = [("X-Request-Id", "has spaces and \"quotes\"")];
    let response = RawResp::parse(&proxy.raw(raw_request("/public/badid", &headers)).await);
    assert_eq!(response.status, 200);
    let id = response.header("x-request-id").unwrap();
    assert!(!id.contains(' '), "{id}");
    assert_eq!(
        upstream
            .only("/public/badid")
            .header("x-request-id")
            .as_deref(),
        Some(id)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preserve_host_sends_the_clients_host() {
    let upstream = Upstream::start().await;
    let proxy = ProxyConfig::new(upstream.url(), std_body())
        .upstream("preserve_host = true")
        .start()
        .await;
    let response = RawResp::parse(&proxy.raw(raw_request("/public/host", &[])).await);
    assert_eq!(response.status, 200);
    let seen = upstream.only("/public/host");
    assert_eq!(seen.header("host").as_deref(), Some("proxy.test"));
    assert_eq!(
        seen.header("x-forwarded-host").as_deref(),
        Some("proxy.test")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_id_on_response_upstream_and_log() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_std(&upstream).await;
    let alice = basic("alice", ALICE_PW);
    let mut ids = Vec::new();
    for n in 0..5 {
        let path = format!("/home/id{n}");
        let response = proxy
            .get(
                &path,
                &[("authorization", &alice), ("x-request-id", "forged")],
            )
            .await;
        assert_eq!(response.status, 200);
        let id = response.request_id();
        assert_ne!(id, "forged");
        assert_eq!(
            upstream.only(&path).header("x-request-id"),
            Some(id.clone())
        );
        let event = proxy.access_for(&id).await;
        assert_eq!(event["path"], path.as_str());
        ids.push(id);
    }
    // Refusals carry one too.
    let response = proxy
        .get("/home/denied", &[("x-request-id", "forged")])
        .await;
    assert_eq!(response.status, 401);
    ids.push(response.request_id());
    proxy.access_of(&response).await;
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "request ids repeat: {ids:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn methods_bodies_and_response_headers_pass_through() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_std(&upstream).await;
    let alice = basic("alice", ALICE_PW);
    for method in ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] {
        let path = format!("/home/m-{}", method.to_ascii_lowercase());
        let body = if method == "GET" { "" } else { "payload-123" };
        let response = proxy
            .send(
                method,
                &path,
                &[("authorization", &alice)],
                body.to_string(),
            )
            .await;
        assert_eq!(response.status, 200, "{method}");
        let seen = upstream.only(&path);
        assert_eq!(seen.method, method);
        assert_eq!(seen.body_len, body.len(), "{method}");
        assert_eq!(seen.body_sha256, sha256_hex(body.as_bytes()));
        // The upstream speaks HTTP/1.1 whatever the client did.
        assert_eq!(seen.version, "HTTP/1.1");
    }
    // The upstream's response is passed on, with the proxy's request id added.
    let response = proxy.get("/home/x", &[("authorization", &alice)]).await;
    assert_eq!(response.text(), "upstream ok");
    assert!(response.header("x-request-id").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_response_headers_are_not_passed_back() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_std(&upstream).await;
    let response = proxy.get("/public/hop-response", &[]).await;
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), "hop");
    for name in [
        "keep-alive",
        "x-upstream-hop",
        "proxy-authenticate",
        "trailer",
        "upgrade",
    ] {
        assert_eq!(
            response.header(name),
            None,
            "{name} came back: {:?}",
            response.headers
        );
    }
    if let Some(connection) = response.header("connection") {
        assert!(
            !connection.to_ascii_lowercase().contains("x-upstream-hop"),
            "{connection}"
        );
    }
    // End-to-end headers pass; the request id is the proxy's, the one the upstream was given.
    assert_eq!(response.header("x-end-to-end").as_deref(), Some("kept"));
    assert_eq!(
        response.header("set-cookie").as_deref(),
        Some("up=1; Path=/")
    );
    let id = response.request_id();
    assert_ne!(id, "upstream-chosen-id");
    assert_eq!(
        upstream.only("/public/hop-response").header("x-request-id"),
        Some(id.clone())
    );
    assert_eq!(proxy.access_for(&id).await["upstream_status"], 200);
}

/// `forward_authorization = true` passes on the credential that admitted the request, and only
/// that: not an Authorization that came along while a session admitted the request, nor one
/// sent to a public route, where nobody checked it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_authorization_that_admitted_the_request_is_forwarded() {
    let upstream = Upstream::start().await;
    let body = format!(
        "[identity]\nforward_authorization = true\n\n[session]\ncookie_secure = false\n{}\n{SESSION_ROUTES}\n[[route]]\npath = \"/api\"\nauth = [\"bearer\"]\n",
        principals()
    );
    let proxy = Proxy::start(&upstream, &body).await;
    let alice = basic("alice", ALICE_PW);

    // Basic admitted the request: forwarded.
    let response = proxy.get("/basic/a", &[("authorization", &alice)]).await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(
        upstream.only("/basic/a").header("authorization"),
        Some(alice.clone())
    );

    // Bearer admitted the request: forwarded.
    let token = bearer(TOKEN);
    let response = proxy.get("/api/b", &[("authorization", &token)]).await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(
        upstream.only("/api/b").header("authorization"),
        Some(token.clone())
    );

    // bob's session admitted the request; alice's Basic header came along: not forwarded.
    let bob = sign_in(&proxy, "bob", BOB_PW).await;
    let response = proxy
        .get("/c", &[("cookie", &bob), ("authorization", &alice)])
        .await;
    assert_eq!(response.status, 200, "{}", response.text());
    let seen = upstream.only("/c");
    assert_eq!(
        seen.header("x-forwarded-auth-method").as_deref(),
        Some("session")
    );
    assert_eq!(seen.header("authorization"), None, "{:?}", seen.headers);

    // A public route: nothing was checked, nothing is forwarded (not even a bad password).
    for (path, credential) in [
        ("/public/d", alice.clone()),
        ("/public/e", basic("alice", WRONG_PW)),
        ("/public/f", token),
    ] {
        let response = proxy.get(path, &[("authorization", &credential)]).await;
        assert_eq!(response.status, 200, "{}", response.text());
        assert_eq!(upstream.only(path).header("authorization"), None, "{path}");
    }
}
