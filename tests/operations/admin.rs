//! The admin listener: `/healthz`, `/readyz` and `/metrics` with exact counter values.

use super::*;

fn metrics_body() -> String {
    format!(
        r#"{}
[[route]]
path = "/public"
auth = []

[[route]]
path = "/admin"
auth = ["basic"]
realm = "Admin"
allow_users = ["alice"]

[[route]]
path = "/api"
auth = ["bearer"]
realm = "API"
"#,
        principals()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_a_known_mix_of_requests_exactly() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_in(
        tempfile::tempdir().unwrap(),
        &config_text(&upstream.url(), "", &metrics_body()),
    )
    .await;

    // Health and readiness (memory store).
    let health = send(proxy.admin(), "GET", "/healthz", &[], Bytes::new()).await;
    assert_eq!(health.status, 200, "{}", health.text());
    let ready = send(proxy.admin(), "GET", "/readyz", &[], Bytes::new()).await;
    assert_eq!(ready.status, 200, "{}", ready.text());
    assert_eq!(
        send(proxy.admin(), "GET", "/nothing", &[], Bytes::new())
            .await
            .status,
        404
    );

    // Before any request: families exist, counts are zero.
    let text = scrape(&proxy).await;
    assert!(
        text.contains("# TYPE portcullis_requests counter"),
        "{text}"
    );
    assert!(
        text.contains("# TYPE portcullis_auth_duration_seconds histogram"),
        "{text}"
    );
    assert_metric(&text, "portcullis_upstream_duration_seconds_count", 0.0);
    assert_metric(&text, "portcullis_live_sessions", 0.0);
    assert!(
        metric(
            &text,
            "portcullis_requests_total{route=\"/public\",status=\"2xx\"}"
        )
        .is_none(),
        "{text}"
    );

    // The mix.
    for n in 0..3 {
        let response = get(&proxy, &format!("/public/p{n}"), &[]).await;
        expect(&proxy, &response, 200, "allow", None).await;
    }
    for _ in 0..2 {
        let response = get(&proxy, "/admin", &[]).await;
        expect(&proxy, &response, 401, "deny", Some("missing_credentials")).await;
    }
    let response = get(
        &proxy,
        "/admin",
        &[("authorization", &basic("alice", WRONG_PW))],
    )
    .await;
    expect(&proxy, &response, 401, "deny", Some("bad_password")).await;
    let response = get(
        &proxy,
        "/admin",
        &[("authorization", &basic("alice", ALICE_PW))],
    )
    .await;
    expect(&proxy, &response, 200, "allow", None).await;
    let response = get(
        &proxy,
        "/admin",
        &[("authorization", &basic("bob", BOB_PW))],
    )
    .await;
    expect(&proxy, &response, 403, "deny", Some("user_not_allowed")).await;
    let response = get(&proxy, "/api/x", &[("authorization", &bearer(TOKEN))]).await;
    expect(&proxy, &response, 200, "allow", None).await;
    let response = get(
        &proxy,
        "/api/x",
        &[("authorization", &bearer(UNKNOWN_TOKEN))],
    )
    .await;
    expect(&proxy, &response, 401, "deny", Some("unknown_token")).await;
    let response = get(&proxy, "/nowhere", &[]).await;
    expect(&proxy, &response, 403, "deny", Some("no_route")).await;

    let text = wait_metric(
        &proxy,
        "portcullis_requests_total{route=\"none\",status=\"4xx\"}",
        1.0,
    )
    .await;
    assert_metric(
        &text,
        "portcullis_requests_total{route=\"/public\",status=\"2xx\"}",
        3.0,
    );
    // Every access line was written: none dropped (SPEC §5 counts drops here).
    assert_metric(&text, "portcullis_log_lines_dropped_total", 0.0);
    assert_metric(
        &text,
        "portcullis_requests_total{route=\"/admin\",status=\"2xx\"}",
        1.0,
    );
    assert_metric(
        &text,
        "portcullis_requests_total{route=\"/admin\",status=\"4xx\"}",
        4.0,
    );
    assert_metric(
        &text,
        "portcullis_requests_total{route=\"/api\",status=\"2xx\"}",
        1.0,
    );
    assert_metric(
        &text,
        "portcullis_requests_total{route=\"/api\",status=\"4xx\"}",
        1.0,
    );
    assert_metric(
        &text,
        "portcullis_denials_total{reason=\"missing_credentials\"}",
        2.0,
    );
    assert_metric(
        &text,
        "portcullis_denials_total{reason=\"bad_password\"}",
        1.0,
    );
    assert_metric(
        &text,
        "portcullis_denials_total{reason=\"user_not_allowed\"}",
        1.0,
    );
    assert_metric(
        &text,
        "portcullis_denials_total{reason=\"unknown_token\"}",
        1.0,
    );
    assert_metric(&text, "portcullis_denials_total{reason=\"no_route\"}", 1.0);
    assert!(
        metric(&text, "portcullis_denials_total{reason=\"unknown_user\"}").is_none(),
        "{text}"
    );
    // Verifications by scheme: basic for alice (wrong, right) and bob; bearer for both tokens.
    // A request without credentials verifies nothing.
    assert_metric(
        &text,
        "portcullis_auth_duration_seconds_count{scheme=\"basic\"}",
        3.0,
    );
    assert_metric(
        &text,
        "portcullis_auth_duration_seconds_count{scheme=\"bearer\"}",
        2.0,
    );
    assert!(
        metric(
            &text,
            "portcullis_auth_duration_seconds_count{scheme=\"session\"}"
        )
        .is_none(),
        "{text}"
    );
    let basic_sum = metric(
        &text,
        "portcullis_auth_duration_seconds_sum{scheme=\"basic\"}",
    )
    .expect("basic sum");
    assert!(basic_sum > 0.0, "{text}");
    // Forwarded: 3 public, alice on /admin, the token on /api.
    assert_metric(&text, "portcullis_upstream_duration_seconds_count", 5.0);
    assert!(
        metric(
            &text,
            "portcullis_upstream_errors_total{kind=\"unreachable\"}"
        )
        .is_none(),
        "{text}"
    );
    assert_metric(&text, "portcullis_live_sessions", 0.0);
    assert!(text.contains("# TYPE portcullis_reloads counter"), "{text}");
    assert!(
        metric(&text, "portcullis_reloads_total{outcome=\"success\"}").is_none(),
        "{text}"
    );
    // The exposition never names a user, a password or a token.
    for secret in ["alice", "bob", ALICE_PW, WRONG_PW, TOKEN, UNKNOWN_TOKEN] {
        assert!(!text.contains(secret), "/metrics mentions {secret:?}");
    }

    // Open connections: one held open counts, and closing it brings the gauge back to zero.
    wait_metric(&proxy, "portcullis_open_connections", 0.0).await;
    let held = TcpStream::connect(proxy.addr).await.unwrap();
    wait_metric(&proxy, "portcullis_open_connections", 1.0).await;
    drop(held);
    wait_metric(&proxy, "portcullis_open_connections", 0.0).await;

    // The admin paths are not served on the proxy's own listener: there they are ordinary
    // requests, routed (here: to no route) and counted like any other.
    for path in ["/metrics", "/healthz", "/readyz"] {
        let response = get(&proxy, path, &[]).await;
        assert!(
            !response.text().contains("portcullis_"),
            "{path} served metrics on the proxy port"
        );
        expect(&proxy, &response, 403, "deny", Some("no_route")).await;
    }
    let text = wait_metric(&proxy, "portcullis_denials_total{reason=\"no_route\"}", 4.0).await;
    assert_metric(
        &text,
        "portcullis_requests_total{route=\"none\",status=\"4xx\"}",
        4.0,
    );
    assert_metric(
        &text,
        "portcullis_requests_total{route=\"/public\",status=\"2xx\"}",
        3.0,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_upstream_failures_and_admin_paths_can_be_routed_upstream() {
    // Upstream down: 502, counted as an upstream error and an `upstream_unreachable` failure.
    let dead = dead_address().await;
    let body = "[[route]]\npath = \"/\"\nauth = []\n";
    let proxy = Proxy::start_in(
        tempfile::tempdir().unwrap(),
        &config_text(&format!("http://{dead}"), "", body),
    )
    .await;
    let response = get(&proxy, "/anything", &[]).await;
    expect(
        &proxy,
        &response,
        502,
        "error",
        Some("upstream_unreachable"),
    )
    .await;
    let text = wait_metric(
        &proxy,
        "portcullis_upstream_errors_total{kind=\"unreachable\"}",
        1.0,
    )
    .await;
    assert_metric(
        &text,
        "portcullis_denials_total{reason=\"upstream_unreachable\"}",
        1.0,
    );
    assert_metric(
        &text,
        "portcullis_requests_total{route=\"/\",status=\"5xx\"}",
        1.0,
    );
    assert_metric(&text, "portcullis_upstream_duration_seconds_count", 1.0);
    drop(proxy);

    // With a public catch-all route, /metrics on the proxy port goes to the upstream.
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_in(
        tempfile::tempdir().unwrap(),
        &config_text(&upstream.url(), "", body),
    )
    .await;
    let response = get(&proxy, "/metrics", &[]).await;
    assert_eq!(response.status, 200);
    assert_eq!(
        response.text(),
        "upstream ok",
        "the proxy answered /metrics itself"
    );
    assert_eq!(upstream.only("/metrics").method, "GET");
    let response = get(&proxy, "/healthz", &[]).await;
    assert_eq!(
        response.text(),
        "upstream ok",
        "the proxy answered /healthz itself"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_while_the_redis_session_store_is_unreachable() {
    let upstream = Upstream::start().await;
    let dead = dead_address().await;
    let body = format!(
        "{}\n[session]\nstore = \"redis\"\nredis_url = \"redis://{dead}/0\"\ncookie_secure = false\n\n\
         [[route]]\npath = \"/\"\nauth = [\"session\", \"basic\"]\n\n[[route]]\npath = \"/public\"\nauth = []\n",
        principals()
    );
    let proxy = Proxy::start_in(
        tempfile::tempdir().unwrap(),
        &config_text(&upstream.url(), "", &body),
    )
    .await;
    let health = send(proxy.admin(), "GET", "/healthz", &[], Bytes::new()).await;
    assert_eq!(health.status, 200, "the process is up: {}", health.text());
    let ready = send(proxy.admin(), "GET", "/readyz", &[], Bytes::new()).await;
    assert_eq!(ready.status, 503, "{}", ready.text());
    assert!(ready.text().contains("session store"), "{}", ready.text());
    // Not ready is not down: a public route still works.
    assert_eq!(get(&proxy, "/public/x", &[]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_until_the_jwks_url_was_fetched() {
    let upstream = Upstream::start().await;
    let dead = dead_address().await;
    let body = format!(
        "[jwt]\nissuer = \"https://id.test/\"\naudience = \"portcullis\"\nalgorithms = [\"RS256\"]\n\
         jwks_url = \"http://{dead}/jwks.json\"\n\n[[route]]\npath = \"/\"\nauth = [\"bearer\"]\n"
    );
    let proxy = Proxy::start_in(
        tempfile::tempdir().unwrap(),
        &config_text(&upstream.url(), "", &body),
    )
    .await;
    let health = send(proxy.admin(), "GET", "/healthz", &[], Bytes::new()).await;
    assert_eq!(health.status, 200, "{}", health.text());
    let ready = send(proxy.admin(), "GET", "/readyz", &[], Bytes::new()).await;
    assert_eq!(
        ready.status,
        503,
        "ready although no JWKS could be fetched: {}",
        ready.text()
    );
}
