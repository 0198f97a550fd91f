//! Brute-force protection: lockouts per address and per user, and the login form.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_out_ip_gets_429_without_hashing_until_the_lockout_ends() {
    let _serial = SERIAL.lock().await;
    let upstream = Upstream::start().await;
    let proxy = limited(
        &upstream,
        true,
        "max_failures = 3\nwindow = \"60s\"\nlockout = \"3s\"",
    )
    .start()
    .await;
    let attacker = "203.0.113.7";

    // What one verification of heavy's hash costs, measured from an unrelated address.
    let (response, hash_time) =
        attempt(&proxy, "/home/x", "198.51.100.200", "heavy", WRONG_PW).await;
    assert_eq!(response.status, 401);
    assert!(
        hash_time >= Duration::from_millis(100),
        "heavy's hash is too cheap: {hash_time:?}"
    );

    // Three failures (unknown users, bad token) from one address: the next attempt is refused.
    for n in 0..2 {
        let (response, _) =
            attempt(&proxy, "/home/x", attacker, &format!("nobody{n}"), WRONG_PW).await;
        assert_proxy_made(&proxy, &response, 401, "deny", "unknown_user").await;
    }
    let token = bearer(UNKNOWN_TOKEN);
    let response = proxy
        .get(
            "/home/x",
            &[("authorization", &token), ("x-forwarded-for", attacker)],
        )
        .await;
    assert_proxy_made(&proxy, &response, 401, "deny", "unknown_token").await;
    let locked_at = Instant::now();

    // Locked: correct credentials of any kind are refused too, and nothing is hashed — a
    // wrong password for heavy is answered far faster than one verification of heavy's hash.
    let (response, _) = attempt(&proxy, "/home/x", attacker, "bob", BOB_PW).await;
    assert_rate_limited(&proxy, &response, 3).await;
    // (The fastest of a few attempts: if any hashing happened, every one would take at least
    // as long as a hash.)
    let mut fastest = Duration::MAX;
    for password in [WRONG_PW, HEAVY_PW, WRONG_PW] {
        let (response, took) = attempt(&proxy, "/home/x", attacker, "heavy", password).await;
        assert_rate_limited(&proxy, &response, 3).await;
        fastest = fastest.min(took);
    }
    assert!(
        fastest < hash_time / 2,
        "a locked attempt took at least {fastest:?}; a hash takes {hash_time:?}"
    );
    let response = proxy
        .get(
            "/home/x",
            &[
                ("authorization", &bearer(TOKEN)),
                ("x-forwarded-for", attacker),
            ],
        )
        .await;
    assert_rate_limited(&proxy, &response, 3).await;
    // Public routes need no credentials and are not locked.
    let response = proxy
        .get("/public/while-locked", &[("x-forwarded-for", attacker)])
        .await;
    assert_eq!(response.status, 200);
    // Another address is not affected.
    let (response, _) = attempt(&proxy, "/home/other-ip", "203.0.113.8", "bob", BOB_PW).await;
    assert_eq!(response.status, 200);

    // The lockout ends after `lockout`, not before; polling with the right password (a 429
    // is not a failure, so polling does not extend the lock).
    let unlocked = loop {
        let (response, _) = attempt(&proxy, "/home/after-lockout", attacker, "bob", BOB_PW).await;
        if response.status == 200 {
            break locked_at.elapsed();
        }
        assert_eq!(response.status, 429, "{}", response.text());
        assert!(locked_at.elapsed() < DEADLINE, "the lockout never ended");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        unlocked >= Duration::from_millis(2500),
        "unlocked after {unlocked:?}"
    );

    // The upstream only ever saw the requests that were admitted.
    let paths: Vec<String> = upstream.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(
        paths,
        vec![
            "/public/while-locked",
            "/home/other-ip",
            "/home/after-lockout"
        ]
    );
    assert_eq!(
        upstream.last().header("x-forwarded-user").as_deref(),
        Some("bob")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_is_locked_across_ips_and_other_users_are_not() {
    let upstream = Upstream::start().await;
    let proxy = limited(
        &upstream,
        true,
        "max_failures = 3\nwindow = \"60s\"\nlockout = \"60s\"",
    )
    .start()
    .await;
    // alice's password guessed from three addresses, once each.
    for n in 1..=3 {
        let (response, _) = attempt(
            &proxy,
            "/home/x",
            &format!("198.51.100.{n}"),
            "alice",
            WRONG_PW,
        )
        .await;
        assert_proxy_made(&proxy, &response, 401, "deny", "bad_password").await;
    }
    // alice is now locked from everywhere, even with her password; Retry-After ~ lockout.
    for ip in ["198.51.100.4", "2001:db8::1", "192.0.2.99"] {
        let (response, _) = attempt(&proxy, "/home/x", ip, "alice", ALICE_PW).await;
        assert_rate_limited(&proxy, &response, 60).await;
        assert!(
            response
                .header("retry-after")
                .unwrap()
                .parse::<u64>()
                .unwrap()
                > 50
        );
    }
    // Those addresses are not locked for other users: bob passes from each of them.
    for n in 1..=4 {
        let ip = format!("198.51.100.{n}");
        let (response, _) = attempt(&proxy, &format!("/home/bob{n}"), &ip, "bob", BOB_PW).await;
        assert_eq!(response.status, 200, "{ip}: {}", response.text());
    }
    let received = upstream.requests();
    assert_eq!(received.len(), 4);
    for request in &received {
        assert_eq!(request.header("x-forwarded-user").as_deref(), Some("bob"));
        // The client address the proxy believed is the one the trusted peer named.
        assert!(request
            .header("x-forwarded-for")
            .unwrap()
            .starts_with("198.51.100."));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_forwarded_for_from_an_untrusted_peer_does_not_evade_the_lockout() {
    let upstream = Upstream::start().await;
    let proxy = limited(
        &upstream,
        false,
        "max_failures = 3\nwindow = \"60s\"\nlockout = \"60s\"",
    )
    .start()
    .await;
    for n in 0..3 {
        let (response, _) = attempt(
            &proxy,
            "/home/x",
            &format!("203.0.113.{n}"),
            &format!("nobody{n}"),
            WRONG_PW,
        )
        .await;
        assert_eq!(response.status, 401);
    }
    // A fresh X-Forwarded-For does not make a fresh client: the peer is locked.
    let (response, _) = attempt(&proxy, "/home/x", "203.0.113.50", "bob", BOB_PW).await;
    assert_rate_limited(&proxy, &response, 60).await;
    let event = proxy.access_of(&response).await;
    assert_eq!(event["client_ip"], "127.0.0.1", "{event}");
    assert!(upstream.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_login_form_shares_the_lockout() {
    let upstream = Upstream::start().await;
    let body = format!(
        "[rate_limit]\nmax_failures = 3\nwindow = \"60s\"\nlockout = \"60s\"\n\n[session]\ncookie_secure = false\n{}\n[[route]]\npath = \"/\"\nauth = [\"session\", \"basic\"]\n",
        principals()
    );
    let proxy = ProxyConfig::new(upstream.url(), body)
        .server("trusted_proxies = [\"127.0.0.1/32\"]")
        .start()
        .await;
    let origin = format!("http://{}", proxy.addr);
    let login = |user: &'static str, password: &'static str, ip: &'static str| {
        let origin = origin.clone();
        let proxy = &proxy;
        async move {
            let body = form_urlencoded::Serializer::new(String::new())
                .append_pair("username", user)
                .append_pair("password", password)
                .append_pair("next", "/")
                .finish();
            proxy
                .send(
                    "POST",
                    "/.portcullis/login",
                    &[
                        ("origin", origin.as_str()),
                        ("content-type", "application/x-www-form-urlencoded"),
                        ("accept", "text/html"),
                        ("x-forwarded-for", ip),
                    ],
                    body,
                )
                .await
        }
    };
    // Three wrong passwords for alice through the form, from three addresses.
    for ip in ["198.51.100.1", "198.51.100.2", "198.51.100.3"] {
        let response = login("alice", WRONG_PW, ip).await;
        assert_eq!(response.status, 401, "{}", response.text());
    }
    // The form now refuses alice with 429, even with the right password, from a new address…
    let response = login("alice", ALICE_PW, "198.51.100.4").await;
    assert_eq!(response.status, 429, "{}", response.text());
    assert!(response.header("retry-after").is_some());
    assert!(response
        .header_all("set-cookie")
        .iter()
        .all(|c| !c.starts_with("portcullis_session=")));
    // …and so does Basic.
    let (response, _) = attempt(&proxy, "/x", "198.51.100.5", "alice", ALICE_PW).await;
    assert_rate_limited(&proxy, &response, 60).await;
    assert!(upstream.requests().is_empty());
}
