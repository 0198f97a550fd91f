//! Identity-header spoofing, Connection-header stripping and method overrides.

use super::*;

// ---------------------------------------------------------------------------------------------
// Identity-header spoofing
// ---------------------------------------------------------------------------------------------

/// Every spelling of the identity headers a client might send: case, underscores, mixed
/// separators, duplicates, empty values.
const SPOOF_LINES: &[&str] = &[
    "X-Forwarded-User: alice",
    "X-Forwarded-User: root",
    "x-forwarded-user: admin",
    "X-FORWARDED-USER: admin",
    "x_forwarded_user: admin",
    "X_FORWARDED_USER: admin",
    "X_Forwarded_User: admin",
    "x-forwarded_user: admin",
    "X_forwarded-User: admin",
    "X-Forwarded-User:",
    "x-Forwarded-gRoups: admins",
    "X_FORWARDED_GROUPS: admins",
    "x_forwarded-groups: admins",
    "X-Forwarded-Groups: admins, root",
    "X-Forwarded-Auth-Method: session",
    "x-forwarded_auth_method: session",
    "X_FORWARDED_AUTH_METHOD: bearer",
    "X-Forwarded-Identity: alice",
    "x_forwarded_identity: jwt:alice",
    "X_Forwarded-IDENTITY: token:ci-bot",
    "Remote-User: admin",
    "X-Remote-User: admin",
    "X-Auth-Request-User: admin",
];

fn spoofing_request(target: &str, extra: &str) -> String {
    let mut request = format!("GET {target} HTTP/1.1\r\nHost: proxy.test\r\n");
    for line in SPOOF_LINES {
        request.push_str(line);
        request.push_str("\r\n");
    }
    request.push_str(extra);
    request.push_str("Connection: close\r\n\r\n");
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_headers_in_every_spelling_are_replaced() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_std(&upstream).await;

    // Public route: no identity reaches the upstream at all.
    let text = proxy.raw(spoofing_request("/public/spoof", "")).await;
    assert_eq!(statuses(&text), vec![200], "{text}");
    let seen = upstream.only("/public/spoof");
    for name in IDENTITY {
        assert_eq!(
            seen.header_all(name),
            Vec::<String>::new(),
            "{:?}",
            seen.headers
        );
    }
    assert_no_identity_lookalikes(&seen);

    // bob: exactly bob's identity, once.
    let text = proxy
        .raw(spoofing_request("/home/spoof", &basic_line("bob", BOB_PW)))
        .await;
    assert_eq!(statuses(&text), vec![200], "{text}");
    assert_identity(&upstream.only("/home/spoof"), "bob", "staff", "basic");

    // The spoofed "alice" does not open alice's route for bob.
    let text = proxy
        .raw(spoofing_request("/admin/spoof", &basic_line("bob", BOB_PW)))
        .await;
    assert_eq!(statuses(&text), vec![403], "{text}");

    // A bearer caller too.
    let text = proxy
        .raw(spoofing_request(
            "/home/bearer-spoof",
            &format!("Authorization: {}\r\n", bearer(TOKEN)),
        ))
        .await;
    assert_eq!(statuses(&text), vec![200], "{text}");
    assert_identity(
        &upstream.only("/home/bearer-spoof"),
        "token:ci-bot",
        "ci",
        "bearer",
    );
    assert!(upstream
        .requests()
        .iter()
        .all(|r| !r.path.starts_with("/admin")));
}

/// obs-fold (a header line continued on the next line, RFC 9112 §5.2) must never smuggle an
/// identity header in: the request is refused, or the folded text stays a value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn obs_fold_cannot_smuggle_identity_headers() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_std(&upstream).await;
    let bob = basic_line("bob", BOB_PW);
    let folds = [
        "X-Forwarded-User: bob\r\n admin\r\n",
        "X-Forwarded-User:\r\n\tadmin\r\n",
        "X-Other: x\r\n X-Forwarded-User: admin\r\n",
        "X-Other: x\r\n\tX-Forwarded-Groups: admins\r\n",
        "X-Forwarded-Groups: staff,\r\n admins\r\n",
    ];
    for (n, fold) in folds.iter().enumerate() {
        for (auth, route) in [("", "public"), (bob.as_str(), "home")] {
            let target = format!("/{route}/fold{n}");
            let request =
                format!("GET {target} HTTP/1.1\r\nHost: proxy.test\r\n{auth}{fold}Connection: close\r\n\r\n");
            let text = proxy.raw(request).await;
            let got = statuses(&text);
            assert_eq!(got.len(), 1, "{fold:?}: {text}");
            let forwarded: Vec<Recorded> = upstream
                .requests()
                .into_iter()
                .filter(|r| r.path == target)
                .collect();
            match got[0] {
                400 => assert!(forwarded.is_empty(), "{fold:?} refused yet forwarded"),
                200 => {
                    assert_eq!(forwarded.len(), 1, "{fold:?}");
                    if auth.is_empty() {
                        for name in IDENTITY {
                            assert!(
                                forwarded[0].header_all(name).is_empty(),
                                "{fold:?}: {:?}",
                                forwarded[0].headers
                            );
                        }
                        assert_no_identity_lookalikes(&forwarded[0]);
                    } else {
                        assert_identity(&forwarded[0], "bob", "staff", "basic");
                    }
                    // The folded text never became a header line of its own.
                    for (name, value) in forwarded[0].headers.iter() {
                        let value = String::from_utf8_lossy(value.as_bytes());
                        assert!(
                            !value.contains('\n') && !value.contains('\r'),
                            "{name}: {value:?}"
                        );
                    }
                }
                other => panic!("{fold:?}: unexpected status {other}: {text}"),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_headers_are_replaced_over_http2() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_std(&upstream).await;
    let mut sender = h2(&proxy).await;
    // HTTP/2 header names are lower case on the wire; underscores and duplicates still arrive.
    let spoof: &[(&str, &str)] = &[
        ("x-forwarded-user", "admin"),
        ("x-forwarded-user", "alice"),
        ("x_forwarded_user", "admin"),
        ("x-forwarded_user", "admin"),
        ("x-forwarded-groups", "admins"),
        ("x_forwarded_groups", "admins"),
        ("x-forwarded-auth-method", "session"),
        ("x_forwarded_auth_method", "session"),
        ("x-forwarded-identity", "alice"),
        ("x_forwarded_identity", "alice"),
        ("remote-user", "admin"),
    ];
    let status = h2_get(&mut sender, &proxy, "/public/h2-spoof", spoof).await;
    assert_eq!(status, 200);
    let seen = upstream.only("/public/h2-spoof");
    for name in IDENTITY {
        assert!(seen.header_all(name).is_empty(), "{:?}", seen.headers);
    }
    assert_no_identity_lookalikes(&seen);

    let bob = basic("bob", BOB_PW);
    let mut headers = spoof.to_vec();
    headers.push(("authorization", &bob));
    let status = h2_get(&mut sender, &proxy, "/home/h2-spoof", &headers).await;
    assert_eq!(status, 200);
    assert_identity(&upstream.only("/home/h2-spoof"), "bob", "staff", "basic");
    // And the spoofed alice opens nothing.
    let status = h2_get(&mut sender, &proxy, "/admin/h2-spoof", &headers).await;
    assert_eq!(status, 403);
    assert!(upstream
        .requests()
        .iter()
        .all(|r| !r.path.starts_with("/admin")));
}

// ---------------------------------------------------------------------------------------------
// Connection-header stripping
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_tokens_cannot_remove_what_the_proxy_sets_or_needs() {
    let upstream = Upstream::start().await;
    let proxy = ProxyConfig::new(upstream.url(), std_body()).start().await;
    let bob = basic_line("bob", BOB_PW);

    // Odd spellings and several Connection headers.
    for (n, connection) in [
        "Connection: x_forwarded_user, X-FORWARDED-GROUPS, x-Forwarded-Auth-Method\r\n",
        "Connection: keep-alive\r\nConnection: X-Forwarded-User\r\nConnection: X-Forwarded-Groups,X-Forwarded-Auth-Method\r\n",
        "Connection: ,,X-Forwarded-User ,\t,X-Request-Id\r\n",
        "Connection: Host, X-Forwarded-Host, X-Forwarded-Proto, Forwarded, X-Forwarded-For\r\n",
    ]
    .iter()
    .enumerate()
    {
        let target = format!("/home/conn{n}");
        let request = format!(
            "GET {target} HTTP/1.1\r\nHost: proxy.test\r\n{bob}X-Forwarded-User: admin\r\n{connection}\r\n"
        );
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        // A close-delimited read would hang on keep-alive: wait for the upstream instead.
        let seen = {
            let start = Instant::now();
            loop {
                if let Some(r) = upstream.requests().into_iter().find(|r| r.path == target) {
                    break r;
                }
                assert!(start.elapsed() < DEADLINE, "{connection:?}: not forwarded");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        drop(stream);
        assert_identity(&seen, "bob", "staff", "basic");
        assert!(seen.header("host").is_some(), "{connection:?}: {:?}", seen.headers);
        assert_eq!(seen.header("x-forwarded-for").as_deref(), Some("127.0.0.1"));
        assert_eq!(seen.header("x-forwarded-proto").as_deref(), Some("http"));
        assert_eq!(seen.header("x-forwarded-host").as_deref(), Some("proxy.test"));
        assert!(seen.header("forwarded").is_some(), "{:?}", seen.headers);
        assert!(seen.header("x-request-id").is_some(), "{:?}", seen.headers);
        assert!(seen.header("connection").is_none(), "{:?}", seen.headers);
    }

    // Naming the framing headers in Connection cannot truncate or unframe the body.
    for (n, framing) in [
        "Connection: Content-Length\r\nContent-Length: 11\r\n\r\nhello world".to_string(),
        "Connection: Transfer-Encoding\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n".to_string(),
    ]
    .iter()
    .enumerate()
    {
        let target = format!("/home/framing{n}/echo-body");
        let request =
            format!("POST {target} HTTP/1.1\r\nHost: proxy.test\r\n{bob}{framing}");
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let start = Instant::now();
        let seen = loop {
            if let Some(r) = upstream.requests().into_iter().find(|r| r.path == target) {
                break r;
            }
            assert!(start.elapsed() < DEADLINE, "{framing:?}: not forwarded");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        drop(stream);
        assert_eq!(seen.body_len, 11, "{framing:?}");
        assert_eq!(seen.body_sha256, sha256_hex(b"hello world"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_method_override_header_cannot_carry_a_refused_method() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_std(&upstream).await;
    let alice = basic("alice", ALICE_PW);
    // /admin takes GET and POST only.
    for (name, value) in [
        ("X-HTTP-Method-Override", "DELETE"),
        ("x-http-method", "PUT"),
        ("X-Method-Override", "PATCH"),
        ("X_HTTP_Method_Override", "DELETE"),
        ("X-HTTP-Method-Override", "delete"),
        ("X-HTTP-Method-Override", "GET, DELETE"),
    ] {
        let response = proxy
            .send(
                "POST",
                "/admin/override",
                &[("authorization", &alice), (name, value)],
                "x",
            )
            .await;
        assert_eq!(response.status, 405, "{name}: {value}");
        assert_eq!(response.header("allow").as_deref(), Some("GET, POST"));
        let event = proxy.access_of(&response).await;
        assert_eq!(event["reason"], "method_not_allowed", "{event}");
    }
    assert!(upstream.requests().is_empty(), "{:#?}", upstream.requests());
    // Naming an allowed method is fine, and routes without `methods` are not affected.
    let response = proxy
        .send(
            "POST",
            "/admin/override",
            &[("authorization", &alice), ("X-HTTP-Method-Override", "GET")],
            "x",
        )
        .await;
    assert_eq!(response.status, 200, "{}", response.text());
    let response = proxy
        .send(
            "POST",
            "/home/override",
            &[
                ("authorization", &alice),
                ("X-HTTP-Method-Override", "DELETE"),
            ],
            "x",
        )
        .await;
    assert_eq!(response.status, 200, "{}", response.text());
}

// ---------------------------------------------------------------------------------------------
// X-Forwarded-For from a trusted proxy
// ---------------------------------------------------------------------------------------------

/// A load balancer that writes `ip:port` (or `[v6]:port`) into `X-Forwarded-For`: each client
/// behind it keeps its own address, so ten failures from one never lock the others out. An
/// entry that cannot be read is refused (400 `malformed_request`), never read as the load
/// balancer's own address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_addresses_with_ports_keep_clients_apart() {
    let upstream = Upstream::start().await;
    let proxy = limited(
        &upstream,
        true,
        "max_failures = 10\nwindow = \"60s\"\nlockout = \"60s\"",
    )
    .start()
    .await;
    let attacker = "203.0.113.9:5555";
    for _ in 0..10 {
        let (response, _) = attempt(&proxy, "/home/x", attacker, "mallory", WRONG_PW).await;
        assert_eq!(response.status, 401, "{}", response.text());
        let event = proxy.access_of(&response).await;
        assert_eq!(event["client_ip"], "203.0.113.9", "{event}");
    }
    let (response, _) = attempt(&proxy, "/home/x", attacker, "bob", BOB_PW).await;
    assert_rate_limited(&proxy, &response, 60).await;

    // Another client behind the same load balancer, with a port and over IPv6 too.
    for (neighbour, logged) in [
        ("198.51.100.7:4444", "198.51.100.7"),
        ("[2001:db8::7]:443", "2001:db8::7"),
        ("2001:db8::8", "2001:db8::8"),
        ("192.0.2.1, 198.51.100.8:80", "198.51.100.8"),
    ] {
        let (response, _) = attempt(&proxy, "/home/x", neighbour, "bob", BOB_PW).await;
        assert_eq!(response.status, 200, "{neighbour}: {}", response.text());
        let event = proxy.access_of(&response).await;
        assert_eq!(event["client_ip"], logged, "{event}");
    }

    // Unreadable entries where the trusted chain ends: refused, nothing forwarded.
    let forwarded_before = upstream.requests().len();
    for unreadable in [
        "unknown",
        "_hidden",
        "203.0.113.9:port",
        "[2001:db8::7",
        "1.2.3",
    ] {
        let (response, _) = attempt(&proxy, "/home/x", unreadable, "bob", BOB_PW).await;
        assert_proxy_made(&proxy, &response, 400, "deny", "malformed_request").await;
    }
    assert_eq!(upstream.requests().len(), forwarded_before);
    // Junk a client put left of its own (readable) address is not our business.
    let (response, _) = attempt(&proxy, "/home/x", "junk, 198.51.100.9:1", "bob", BOB_PW).await;
    assert_eq!(response.status, 200, "{}", response.text());
}
