//! When the upstream cannot be reached or is too slow: 502 / 504, `decision="error"`, and no
//! upstream detail in what the client sees.

mod support;

use support::*;

fn assert_no_upstream_detail(body: &str, upstream: &std::net::SocketAddr) {
    let lower = body.to_ascii_lowercase();
    for leak in [
        upstream.to_string(),
        upstream.port().to_string(),
        "127.0.0.1".to_string(),
        "refused".to_string(),
        "connect".to_string(),
        "os error".to_string(),
        "hyper".to_string(),
        "timed out".to_string(),
        "elapsed".to_string(),
    ] {
        assert!(!lower.contains(&leak), "the body leaks {leak:?}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_gets_502() {
    let dead = dead_address().await;
    let proxy = ProxyConfig::new(format!("http://{dead}"), std_body())
        .start()
        .await;
    let alice = basic("alice", ALICE_PW);
    for accept in ["application/json", "text/html", "*/*"] {
        let response = proxy
            .get("/home/x", &[("authorization", &alice), ("accept", accept)])
            .await;
        let event =
            assert_proxy_made(&proxy, &response, 502, "error", "upstream_unreachable").await;
        assert_no_upstream_detail(&response.text(), &dead);
        assert_eq!(event["user"], "alice");
        assert!(event["upstream_status"].is_null(), "{event}");
        if accept == "application/json" {
            let body = response.json();
            assert_eq!(body["reason"], "upstream_unreachable");
            assert_eq!(body["request_id"], response.request_id().as_str());
        }
    }
    // Public routes too.
    let response = proxy.get("/public/x", &[]).await;
    assert_proxy_made(&proxy, &response, 502, "error", "upstream_unreachable").await;
    assert_no_upstream_detail(&response.text(), &dead);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_slow_gets_504() {
    let upstream = Upstream::start().await;
    let proxy = ProxyConfig::new(upstream.url(), std_body())
        .upstream("response_timeout = \"1s\"")
        .start()
        .await;
    let alice = basic("alice", ALICE_PW);
    for accept in ["application/json", "text/html"] {
        let response = proxy
            .get(
                "/home/slow",
                &[("authorization", &alice), ("accept", accept)],
            )
            .await;
        assert_proxy_made(&proxy, &response, 504, "error", "upstream_timeout").await;
        assert_no_upstream_detail(&response.text(), &upstream.addr);
        if accept == "application/json" {
            assert_eq!(response.json()["reason"], "upstream_timeout");
        }
    }
    // The upstream did get the requests; the proxy gave up waiting.
    assert_eq!(upstream.requests().len(), 2);
    // A fast answer on the same proxy is unaffected.
    let response = proxy.get("/home/fast", &[("authorization", &alice)]).await;
    assert_eq!(response.status, 200);
}
