//! Connection-level limits and load: oversized headers, many concurrent authenticated clients.

mod support;

use support::*;

fn big_headers(total: usize) -> String {
    let mut headers = String::new();
    let mut n = 0;
    while headers.len() < total {
        headers.push_str(&format!("X-Filler-{n}: {}\r\n", "a".repeat(1000)));
        n += 1;
    }
    headers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_get_431_and_the_next_connection_is_served() {
    let upstream = Upstream::start().await;
    let proxy = ProxyConfig::new(upstream.url(), std_body())
        .server("max_header_bytes = 8192")
        .start()
        .await;

    let request = format!(
        "GET /public/too-big HTTP/1.1\r\nHost: proxy.test\r\n{}Connection: close\r\n\r\n",
        big_headers(20 * 1024)
    );
    let response = RawResp::parse(&proxy.raw(request.as_bytes()).await);
    assert_eq!(response.status, 431, "{}", response.text);
    assert!(upstream.requests().is_empty(), "{:#?}", upstream.requests());

    // A new connection is served normally, also with headers comfortably under the limit.
    let request = format!(
        "GET /public/after HTTP/1.1\r\nHost: proxy.test\r\n{}Connection: close\r\n\r\n",
        big_headers(4 * 1024)
    );
    let response = RawResp::parse(&proxy.raw(request.as_bytes()).await);
    assert_eq!(response.status, 200, "{}", response.text);
    let seen = upstream.only("/public/after");
    assert!(seen.header("x-filler-0").is_some());
    let response = proxy
        .get(
            "/home/after",
            &[("authorization", &basic("alice", ALICE_PW))],
        )
        .await;
    assert_eq!(response.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_authenticated_requests_all_succeed() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_std(&upstream).await;
    let alice = basic("alice", ALICE_PW);
    let mut tasks = Vec::new();
    for n in 0..200 {
        let addr = proxy.addr;
        let credential = alice.clone();
        tasks.push(tokio::spawn(async move {
            let path = format!("/home/concurrent/{n}");
            let response = send(addr, "GET", &path, &[("authorization", &credential)], "").await;
            (n, response.status, response.text())
        }));
    }
    let mut failed = Vec::new();
    for task in tasks {
        let (n, status, body) = task.await.unwrap();
        if status != 200 || body != "upstream ok" {
            failed.push(format!("{n}: {status} {body}"));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of 200 failed:\n{}",
        failed.len(),
        failed.join("\n")
    );

    let received = upstream.wait_for_requests(200).await;
    assert_eq!(received.len(), 200);
    let mut paths: Vec<String> = received.iter().map(|r| r.path.clone()).collect();
    paths.sort();
    paths.dedup();
    assert_eq!(paths.len(), 200, "each request arrived once");
    assert!(received
        .iter()
        .all(|r| r.header("x-forwarded-user").as_deref() == Some("alice")));
    let events = proxy.wait_for_access(200).await;
    assert_eq!(events.len(), 200);
    assert!(events
        .iter()
        .all(|e| e["decision"] == "allow" && e["status"] == 200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_connection_serves_several_requests() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_std(&upstream).await;
    let alice = basic("alice", ALICE_PW);
    let mut request = String::new();
    for n in 0..3 {
        request.push_str(&format!(
            "GET /home/ka{n} HTTP/1.1\r\nHost: proxy.test\r\nAuthorization: {alice}\r\n\r\n"
        ));
    }
    // The last one closes the connection.
    request
        .push_str("GET /public/ka-last HTTP/1.1\r\nHost: proxy.test\r\nConnection: close\r\n\r\n");
    let text = proxy.raw(request.as_bytes()).await;
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 4, "{text}");
    let received: Vec<String> = upstream.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(
        received,
        vec!["/home/ka0", "/home/ka1", "/home/ka2", "/public/ka-last"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_serves_others_while_a_request_waits_on_the_upstream() {
    let upstream = Upstream::start().await;
    // `workers = 1` runs the proxy on a single thread: nothing may block it.
    let proxy = ProxyConfig::new(upstream.url(), std_body())
        .server("workers = 1")
        .start()
        .await;
    let addr = proxy.addr;
    // The upstream holds this one for 3 s.
    let slow = tokio::spawn(async move { send(addr, "GET", "/public/slow", &[], "").await });
    upstream.wait_for_requests(1).await;
    let alice = basic("alice", ALICE_PW);
    let mut tasks = Vec::new();
    for n in 0..50 {
        let credential = alice.clone();
        tasks.push(tokio::spawn(async move {
            let path = format!("/home/one-worker/{n}");
            send(addr, "GET", &path, &[("authorization", &credential)], "").await
        }));
    }
    for task in tasks {
        let response = task.await.unwrap();
        assert_eq!(response.status, 200, "{}", response.text());
    }
    // All fifty were answered while the slow one was still waiting on the upstream.
    assert!(
        !slow.is_finished(),
        "the slow request should still be in flight"
    );
    let response = slow.await.unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), "slow ok");
}
