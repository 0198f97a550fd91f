//! WebSocket upgrades pass through after authentication, and only then.

mod support;

use support::*;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_through_an_authenticated_route_echoes() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_std(&upstream).await;
    let alice = basic("alice", ALICE_PW);
    let mut ws = websocket(proxy.addr, "/chat/ws?room=1", &[("authorization", &alice)])
        .await
        .expect("the upgrade succeeds with credentials");
    for n in 0..3 {
        let text = format!("hello {n}");
        let echoed = ws_roundtrip(&mut ws, Message::Text(text.clone())).await;
        assert_eq!(echoed, Message::Text(text));
    }
    let binary: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    let echoed = ws_roundtrip(&mut ws, Message::Binary(binary.clone())).await;
    assert_eq!(echoed, Message::Binary(binary));
    ws.close(None).await.unwrap();

    let seen = upstream.only("/chat/ws");
    assert_eq!(seen.uri, "/chat/ws?room=1");
    assert_eq!(
        seen.header("upgrade")
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("websocket")
    );
    assert!(seen
        .header("connection")
        .is_some_and(|c| c.to_ascii_lowercase().contains("upgrade")));
    assert_eq!(seen.header("x-forwarded-user").as_deref(), Some("alice"));
    assert_eq!(
        seen.header("x-forwarded-auth-method").as_deref(),
        Some("basic")
    );
    assert_eq!(seen.header("authorization"), None);
    assert!(seen.header("sec-websocket-key").is_some());

    let events = proxy.wait_for_access(1).await;
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0]["status"], 101);
    assert_eq!(events[0]["decision"], "allow");
    assert_eq!(events[0]["user"], "alice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_without_credentials_gets_401_and_never_reaches_the_upstream() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_std(&upstream).await;
    let cases = [vec![], vec![("authorization", basic("alice", WRONG_PW))]];
    for headers in cases {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        match websocket(proxy.addr, "/chat/ws", &headers).await {
            Err(WsError::Http(response)) => {
                assert_eq!(response.status(), 401);
                let challenges: Vec<_> = response
                    .headers()
                    .get_all("www-authenticate")
                    .iter()
                    .collect();
                assert_eq!(challenges.len(), 2, "{challenges:?}");
                assert!(response.headers().contains_key("x-request-id"));
            }
            Err(other) => panic!("expected an HTTP 401, got {other}"),
            Ok(_) => panic!("the upgrade succeeded without valid credentials"),
        }
    }
    // bob is authenticated but not allowed on /admin.
    let bob = basic("bob", BOB_PW);
    match websocket(proxy.addr, "/admin/ws", &[("authorization", &bob)]).await {
        Err(WsError::Http(response)) => assert_eq!(response.status(), 403),
        Err(other) => panic!("expected an HTTP 403, got {other}"),
        Ok(_) => panic!("bob upgraded on /admin"),
    }
    assert!(upstream.requests().is_empty(), "{:#?}", upstream.requests());
    let reasons: Vec<String> = proxy
        .wait_for_access(3)
        .await
        .iter()
        .map(|e| e["reason"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(
        reasons,
        vec!["missing_credentials", "bad_password", "user_not_allowed"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_on_a_public_route() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_std(&upstream).await;
    let mut ws = websocket(proxy.addr, "/public/ws", &[])
        .await
        .expect("public upgrade");
    let echoed = ws_roundtrip(&mut ws, Message::Text("ping".into())).await;
    assert_eq!(echoed, Message::Text("ping".into()));
    assert_eq!(upstream.only("/public/ws").header("x-forwarded-user"), None);
}
