//! Log events (SPEC §5): JSON lines, exactly one `access` event per request with every field,
//! and no secret in any line at any level.

mod support;

use std::collections::BTreeSet;

use base64::Engine;
use support::*;

const FIELDS: &[&str] = &[
    "request_id",
    "client_ip",
    "method",
    "path",
    "route",
    "status",
    "user",
    "auth_method",
    "duration_ms",
    "upstream_status",
    "decision",
];

/// (method, target, authorization, expected status, expected decision, expected reason)
type Case<'a> = (
    &'a str,
    &'a str,
    Option<&'a str>,
    u16,
    &'a str,
    Option<&'a str>,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_produces_exactly_one_access_event() {
    let upstream = Upstream::start().await;
    let dead = dead_address().await;
    let proxy = Proxy::start_std(&upstream).await;
    let alice = basic("alice", ALICE_PW);
    let bob = basic("bob", BOB_PW);
    let wrong = basic("alice", WRONG_PW);
    let token = bearer(TOKEN);

    // (method, target, authorization, expected status, expected decision, expected reason)
    let requests: Vec<Case<'_>> = vec![
        ("GET", "/home", Some(&alice), 200, "allow", None),
        ("POST", "/admin/x", Some(&alice), 200, "allow", None),
        ("GET", "/home", Some(&token), 200, "allow", None),
        ("GET", "/public/p", None, 200, "allow", None),
        (
            "GET",
            "/home",
            None,
            401,
            "deny",
            Some("missing_credentials"),
        ),
        (
            "GET",
            "/home",
            Some(&wrong),
            401,
            "deny",
            Some("bad_password"),
        ),
        (
            "GET",
            "/admin",
            Some(&bob),
            403,
            "deny",
            Some("user_not_allowed"),
        ),
        (
            "DELETE",
            "/admin",
            Some(&alice),
            405,
            "deny",
            Some("method_not_allowed"),
        ),
        (
            "GET",
            "/public/%2e%2e/admin",
            None,
            400,
            "deny",
            Some("ambiguous_path"),
        ),
        (
            "GET",
            "/home",
            Some("Basic ###"),
            401,
            "deny",
            Some("malformed_credentials"),
        ),
    ];
    let mut ids = Vec::new();
    for (method, target, authorization, status, decision, reason) in &requests {
        let mut request = format!("{method} {target} HTTP/1.1\r\nHost: proxy.test\r\n");
        if let Some(value) = authorization {
            request.push_str(&format!("Authorization: {value}\r\n"));
        }
        request.push_str("Content-Length: 0\r\nConnection: close\r\n\r\n");
        let response = RawResp::parse(&proxy.raw(request.as_bytes()).await);
        assert_eq!(
            response.status, *status,
            "{method} {target}: {}",
            response.text
        );
        let id = response
            .header("x-request-id")
            .expect("X-Request-Id")
            .to_string();
        let event = proxy.access_for(&id).await;
        assert_eq!(event["status"], *status, "{event}");
        assert_eq!(event["decision"], *decision, "{event}");
        assert_eq!(event["method"], *method, "{event}");
        match reason {
            Some(reason) => {
                assert_eq!(event["reason"], *reason, "{event}");
                assert!(
                    event["detail"].as_str().is_some_and(|d| !d.is_empty()),
                    "{event}"
                );
            }
            None => assert!(event["reason"].is_null(), "{event}"),
        }
        ids.push(id);
    }
    // A sentinel: once its event is logged, every earlier one is too (each event is written
    // when its response has been sent, before the connection closes). Then the count must be
    // exact.
    let sentinel = proxy.get("/public/sentinel", &[]).await;
    proxy.access_of(&sentinel).await;
    ids.push(sentinel.request_id());
    let events = proxy.access_events();
    assert_eq!(events.len(), requests.len() + 1, "{events:#?}");
    let logged: BTreeSet<String> = events
        .iter()
        .map(|e| e["request_id"].as_str().unwrap().to_string())
        .collect();
    let sent: BTreeSet<String> = ids.iter().cloned().collect();
    assert_eq!(logged, sent);
    assert_eq!(
        upstream.requests().len(),
        5,
        "four allowed requests and the sentinel"
    );

    // Every field is there on allowed requests; user fields on authenticated ones.
    for event in &events {
        assert_eq!(event["client_ip"], "127.0.0.1", "{event}");
        assert!(event["duration_ms"].is_number(), "{event}");
        assert!(event["status"].is_u64(), "{event}");
        assert!(event["level"].is_string(), "{event}");
    }
    let alice_event = &events[0];
    for field in FIELDS {
        assert!(
            !alice_event[*field].is_null(),
            "missing {field}: {alice_event}"
        );
    }
    assert_eq!(alice_event["user"], "alice");
    assert_eq!(alice_event["auth_method"], "basic");
    assert_eq!(alice_event["route"], "/");
    assert_eq!(alice_event["path"], "/home");
    assert_eq!(alice_event["upstream_status"], 200);

    // The error decision, from a proxy whose upstream is down.
    let broken = ProxyConfig::new(format!("http://{dead}"), std_body())
        .start()
        .await;
    let response = broken.get("/public/x", &[]).await;
    let event = broken.access_of(&response).await;
    assert_eq!(event["decision"], "error");
    assert_eq!(event["reason"], "upstream_unreachable");
    assert_eq!(broken.access_events().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdout_is_json_lines_only() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_std(&upstream).await;
    proxy
        .get("/home", &[("authorization", &basic("alice", ALICE_PW))])
        .await;
    proxy.wait_for_access(1).await;
    // `events()` panics on any line that is not a JSON object.
    for event in proxy.events() {
        assert!(event.is_object(), "{event}");
        assert!(event["message"].is_string(), "{event}");
        assert!(event["timestamp"].is_string(), "{event}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_appear_in_any_log_line_at_any_level() {
    let upstream = Upstream::start().await;
    let proxy = ProxyConfig::new(upstream.url(), std_body())
        .log_level("trace")
        .start()
        .await;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let cookie = "portcullis_session=cookie-secret-value-4242";

    let alice = basic("alice", ALICE_PW);
    let alice_wrong = basic("alice", WRONG_PW);
    let mallory = basic("mallory", WRONG_PW);
    let bob = basic("bob", BOB_PW);
    let token = bearer(TOKEN);
    let unknown = bearer(UNKNOWN_TOKEN);
    let requests: Vec<(&str, Vec<(&str, &str)>)> = vec![
        ("/home", vec![("authorization", &alice)]),
        ("/home", vec![("authorization", &alice), ("cookie", cookie)]),
        ("/home", vec![("authorization", &alice_wrong)]),
        ("/home", vec![("authorization", &mallory)]),
        ("/admin", vec![("authorization", &bob)]),
        ("/home", vec![("authorization", &token)]),
        ("/home", vec![("authorization", &unknown)]),
        ("/api/x", vec![("authorization", &alice)]),
        (
            "/public/x",
            vec![("authorization", &token), ("cookie", cookie)],
        ),
        (
            "/home",
            vec![("authorization", &alice), ("authorization", &token)],
        ),
        ("/home", vec![("authorization", "Basic !!not-base64!!")]),
    ];
    for (path, headers) in &requests {
        proxy.get(path, headers).await;
    }
    // A WebSocket and an h2-sized upload with credentials, for the other code paths.
    let mut ws = websocket(proxy.addr, "/home/ws", &[("authorization", &alice)])
        .await
        .unwrap();
    ws_roundtrip(
        &mut ws,
        tokio_tungstenite::tungstenite::Message::Text(ALICE_PW.into()),
    )
    .await;
    drop(ws);
    proxy
        .send(
            "POST",
            "/home/echo-body",
            &[("authorization", &token)],
            TOKEN.to_string(),
        )
        .await;
    proxy.wait_for_access(requests.len() + 2).await;
    let sentinel = proxy.get("/public/sentinel", &[]).await;
    proxy.access_of(&sentinel).await;

    let output = proxy.all_output();
    assert!(
        output.lines().count() > requests.len(),
        "trace logging is on:\n{output}"
    );
    let secrets = [
        ALICE_PW.to_string(),
        WRONG_PW.to_string(),
        BOB_PW.to_string(),
        TOKEN.to_string(),
        UNKNOWN_TOKEN.to_string(),
        alice.clone(),
        alice_wrong.clone(),
        mallory.clone(),
        bob.clone(),
        token.clone(),
        unknown.clone(),
        b64(&format!("alice:{ALICE_PW}")),
        b64(&format!("alice:{WRONG_PW}")),
        b64(&format!("mallory:{WRONG_PW}")),
        b64(&format!("bob:{BOB_PW}")),
        "cookie-secret-value-4242".to_string(),
        alice_hash().to_string(),
        bob_hash().to_string(),
    ];
    for secret in &secrets {
        let hits: Vec<&str> = output
            .lines()
            .filter(|l| l.contains(secret.as_str()))
            .collect();
        assert!(
            hits.is_empty(),
            "the log contains {secret:?}:\n{}",
            hits.join("\n")
        );
    }
    // The denials are still explained.
    let reasons: Vec<String> = proxy
        .access_events()
        .iter()
        .filter_map(|e| e["reason"].as_str().map(str::to_string))
        .collect();
    for reason in [
        "bad_password",
        "unknown_user",
        "user_not_allowed",
        "unknown_token",
        "missing_credentials",
        "malformed_credentials",
        "malformed_request",
    ] {
        assert!(
            reasons.iter().any(|r| r == reason),
            "no {reason} in {reasons:?}"
        );
    }
}

/// An `Authorization` whose first word is no scheme name (a bare token, as people paste them)
/// is described as "an unrecognised scheme": no piece of it, long or short, is ever logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unrecognised_credentials_are_never_quoted() {
    let upstream = Upstream::start().await;
    let proxy = ProxyConfig::new(upstream.url(), std_body())
        .log_level("trace")
        .start()
        .await;
    // Every 4-character window of these holds an upper-case letter or `_`, so none can occur
    // in a log line by chance (request ids are lower-case hex).
    let long = "ghp_Q7xZk9VwM2pL4tR8nB6yH1jD3fG5sA0";
    let short = "Zq8vW3kX";
    let two_words = "Xk7Qm2Wp9Lz4Rb Yh5Tn8Jc3Vd6";
    let mut ids = Vec::new();
    for value in [long, short, two_words] {
        for path in ["/home", "/api/x", "/admin"] {
            let response = proxy.get(path, &[("authorization", value)]).await;
            assert_eq!(response.status, 401, "{path} {value}: {}", response.text());
            let event = proxy.access_of(&response).await;
            assert_eq!(event["reason"], "missing_credentials", "{event}");
            let detail = event["detail"].as_str().unwrap_or_default();
            assert!(detail.contains("an unrecognised scheme"), "{event}");
            ids.push(response.request_id());
        }
    }
    // A registered scheme the route does not take is still named (in its registered spelling).
    let digest = proxy
        .get("/home", &[("authorization", "dIgEsT username=Pw7Rk2Mz")])
        .await;
    let event = proxy.access_of(&digest).await;
    assert_eq!(event["reason"], "missing_credentials", "{event}");
    assert!(
        event["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("Digest"),
        "{event}"
    );
    let sentinel = proxy.get("/public/sentinel", &[]).await;
    proxy.access_of(&sentinel).await;

    let output = proxy.all_output();
    for secret in [long, short, two_words, "Pw7Rk2Mz", "dIgEsT"] {
        for piece in pieces(secret, 4) {
            let hits: Vec<&str> = output.lines().filter(|l| l.contains(piece)).collect();
            assert!(
                hits.is_empty(),
                "the log contains {piece:?} (from {secret:?}):\n{}",
                hits.join("\n")
            );
        }
    }
}

/// Every substring of `text` of at least `min` bytes (ASCII text).
fn pieces(text: &str, min: usize) -> Vec<&str> {
    let mut out = Vec::new();
    for start in 0..text.len() {
        for end in start + min..=text.len() {
            out.push(&text[start..end]);
        }
    }
    out
}
