//! Static bearer tokens from `[[tokens]]` (SPEC §3 `bearer`, §4 bearer rows): accepted by
//! SHA-256, refused with RFC 6750 challenges when unknown, expired or malformed.

mod support;

use support::*;

const BASIC_MAIN: &str = r#"Basic realm="Main", charset="UTF-8""#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_token_passes_in_any_scheme_case() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_std(&upstream).await;
    for (n, scheme) in ["Bearer", "bearer", "BEARER"].iter().enumerate() {
        let path = format!("/api/items/{n}");
        let response = proxy
            .get(&path, &[("authorization", &format!("{scheme} {TOKEN}"))])
            .await;
        assert_eq!(response.status, 200, "{scheme}: {}", response.text());
        let seen = upstream.only(&path);
        assert_eq!(seen.header("x-forwarded-user").as_deref(), Some("ci-bot"));
        assert_eq!(seen.header("x-forwarded-groups").as_deref(), Some("ci"));
        assert_eq!(
            seen.header("x-forwarded-auth-method").as_deref(),
            Some("bearer")
        );
        assert_eq!(seen.header("authorization"), None);
        let event = proxy.access_of(&response).await;
        assert_eq!(event["user"], "ci-bot");
        assert_eq!(event["auth_method"], "bearer");
        assert_eq!(event["decision"], "allow");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_token_gets_401_with_invalid_token() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_std(&upstream).await;
    // A token of the right shape that is not configured, and one off by a character.
    let near_miss = format!("{}x", &TOKEN[..TOKEN.len() - 1]);
    for token in [UNKNOWN_TOKEN, near_miss.as_str()] {
        let response = proxy
            .get(
                "/home",
                &[
                    ("authorization", &bearer(token)),
                    ("accept", "application/json"),
                ],
            )
            .await;
        assert_proxy_made(&proxy, &response, 401, "deny", "unknown_token").await;
        let challenges = response.header_all("www-authenticate");
        assert_eq!(challenges.len(), 2, "{challenges:?}");
        assert_eq!(challenges[0], BASIC_MAIN, "the Basic challenge stays bare");
        assert!(
            challenges[1].starts_with(r#"Bearer realm="Main""#),
            "{}",
            challenges[1]
        );
        assert!(
            challenges[1].contains(r#"error="invalid_token""#),
            "{}",
            challenges[1]
        );
        assert_eq!(response.json()["reason"], "unknown_token");
    }
    assert!(upstream.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_bearer_header_gets_400_with_invalid_request() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_std(&upstream).await;
    for value in [
        "Bearer a b",
        "Bearer",
        "Bearer ",
        "Bearer a,b",
        "Bearer ab\"c",
        "Bearer ==",
    ] {
        let response = proxy.get("/api/x", &[("authorization", value)]).await;
        assert_proxy_made(&proxy, &response, 400, "deny", "malformed_credentials").await;
        let challenges = response.header_all("www-authenticate");
        assert_eq!(challenges.len(), 1, "{value:?}: {challenges:?}");
        assert!(
            challenges[0].starts_with(r#"Bearer realm="API""#),
            "{}",
            challenges[0]
        );
        assert!(
            challenges[0].contains(r#"error="invalid_request""#),
            "{value:?}: {}",
            challenges[0]
        );
    }
    assert!(upstream.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_gets_401_token_expired() {
    let upstream = Upstream::start().await;
    let expired = "expired-token-0123456789abcdef";
    let body = format!(
        "{}\n[[tokens]]\nname = \"old-bot\"\ntoken_sha256 = \"{}\"\nexpires = \"2001-01-01T00:00:00Z\"\n{STD_ROUTES}",
        principals(),
        sha256_hex(expired.as_bytes())
    );
    let proxy = Proxy::start(&upstream, &body).await;
    let response = proxy
        .get("/api/x", &[("authorization", &bearer(expired))])
        .await;
    let event = assert_proxy_made(&proxy, &response, 401, "deny", "token_expired").await;
    assert!(response.header_all("www-authenticate")[0].contains(r#"error="invalid_token""#));
    assert!(
        event["detail"].as_str().unwrap().contains("old-bot"),
        "{event}"
    );
    // The unexpired one still works.
    assert_eq!(
        proxy
            .get("/api/y", &[("authorization", &bearer(TOKEN))])
            .await
            .status,
        200
    );
    assert_eq!(upstream.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_on_a_bearer_route_gets_a_bare_challenge() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_std(&upstream).await;
    let response = proxy.get("/api/x", &[]).await;
    assert_proxy_made(&proxy, &response, 401, "deny", "missing_credentials").await;
    assert_eq!(
        response.header_all("www-authenticate"),
        vec![r#"Bearer realm="API""#]
    );
}
