//! Connection handling: slow and idle clients are cut off, connection slots are given back,
//! and requests whose framing or target could be read two ways never reach the upstream as
//! something the proxy did not check.

mod support;

use std::time::Instant;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until the server closes the connection; returns what it sent. Fails after DEADLINE.
async fn read_until_closed(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let start = Instant::now();
    loop {
        let left = DEADLINE.saturating_sub(start.elapsed());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => panic!(
                "the proxy kept the connection open; received so far: {}",
                String::from_utf8_lossy(&out)
            ),
            Ok(Ok(0)) | Ok(Err(_)) => return String::from_utf8_lossy(&out).into_owned(),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    let upstream = Upstream::start().await;
    let proxy = ProxyConfig::new(upstream.url(), std_body())
        .server("header_read_timeout = \"1s\"")
        .start()
        .await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"GET /public/slowloris HTTP/1.1\r\nHost: proxy.test\r\nX-Slow: 1\r\n")
        .await
        .unwrap();
    let answer = read_until_closed(&mut stream).await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
    assert!(upstream.requests().is_empty());
    // Others are still served.
    assert_eq!(proxy.get("/public/next", &[]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_after_idle_timeout() {
    let upstream = Upstream::start().await;
    // The header read timeout is far beyond the test's deadline: only idle_timeout can close
    // the connection in time.
    let proxy = ProxyConfig::new(upstream.url(), std_body())
        .server("idle_timeout = \"1s\"\nheader_read_timeout = \"60s\"")
        .start()
        .await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"GET /public/idle HTTP/1.1\r\nHost: proxy.test\r\n\r\n")
        .await
        .unwrap();
    let answer = read_until_closed(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.ends_with("upstream ok"),
        "one complete response, then the close: {answer}"
    );
    assert_eq!(upstream.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_slots_are_given_back() {
    let upstream = Upstream::start().await;
    let proxy = ProxyConfig::new(upstream.url(), std_body())
        .server("max_connections = 2")
        .start()
        .await;
    // Far more connections than slots, one after the other: each closed one frees its slot.
    for n in 0..12 {
        let response = proxy.raw_get(&format!("/public/slot{n}"), "").await;
        assert_eq!(response.status, 200, "connection {n}: {}", response.text);
    }
    let alice = basic("alice", ALICE_PW);
    for n in 0..4 {
        let response = proxy
            .get(&format!("/home/slot{n}"), &[("authorization", &alice)])
            .await;
        assert_eq!(response.status, 200);
    }
    assert_eq!(upstream.requests().len(), 16);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_host_headers_are_refused() {
    let upstream = Upstream::start().await;
    for preserve_host in [false, true] {
        let proxy = ProxyConfig::new(upstream.url(), std_body())
            .upstream(&format!("preserve_host = {preserve_host}"))
            .start()
            .await;
        let request = "GET /public/hosts HTTP/1.1\r\nHost: public.example\r\nHost: admin.internal\r\nConnection: close\r\n\r\n";
        let response = RawResp::parse(&proxy.raw(request.as_bytes()).await);
        assert_eq!(response.status, 400, "{}", response.text);
        let event = proxy
            .access_for(response.header("x-request-id").unwrap())
            .await;
        assert_eq!(event["reason"], "malformed_request", "{event}");
        assert!(
            event["detail"].as_str().unwrap().contains("Host"),
            "{event}"
        );
    }
    assert!(upstream.requests().is_empty(), "{:#?}", upstream.requests());
}

/// Content-Length and Transfer-Encoding together: whatever the proxy makes of the body, what
/// follows it is a request of its own, checked like any other, never smuggled to the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggled_requests_are_checked_like_any_other() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_std(&upstream).await;
    let attempts = [
        "POST /public/cl-te HTTP/1.1\r\nHost: p\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin/smuggled HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n",
        "POST /public/te-cl HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: chunked\r\nContent-Length: 50\r\n\r\n0\r\n\r\nGET /admin/smuggled HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n",
        "POST /public/cl-cl HTTP/1.1\r\nHost: p\r\nContent-Length: 5\r\nContent-Length: 44\r\nConnection: close\r\n\r\nhelloGET /admin/smuggled HTTP/1.1\r\nHost: p\r\n\r\n",
        "POST /public/te-space HTTP/1.1\r\nHost: p\r\nTransfer-Encoding : chunked\r\nContent-Length: 46\r\nConnection: close\r\n\r\n0\r\n\r\nGET /admin/smuggled HTTP/1.1\r\nHost: p\r\n\r\n",
        "POST /public/obs-fold HTTP/1.1\r\nHost: p\r\nContent-Length: 3\r\n Transfer-Encoding: chunked\r\nConnection: close\r\n\r\nabc",
    ];
    for attempt in attempts {
        let text = proxy.raw(attempt.as_bytes()).await;
        assert!(text.starts_with("HTTP/1.1 "), "{text}");
        // Any response to the inner request is the proxy's refusal, not the upstream's.
        for response in text.split("HTTP/1.1 ").skip(1) {
            let status: u16 = response[..3].parse().unwrap();
            assert!(
                status == 200 || status == 400 || status == 401,
                "unexpected {status} for {attempt:?}: {text}"
            );
        }
    }
    for request in upstream.requests() {
        assert!(
            request.path.starts_with("/public/"),
            "smuggled to the upstream: {request:?}"
        );
        assert!(request.header("x-forwarded-user").is_none());
        // The upstream sees one framing only.
        assert!(
            !(request.headers.contains_key("content-length")
                && request.headers.contains_key("transfer-encoding")),
            "{request:?}"
        );
    }
    // The inner /admin requests that did get parsed were refused and logged as such.
    for event in proxy.access_events() {
        if event["path"].as_str().unwrap_or("").starts_with("/admin") {
            assert_eq!(event["status"], 401, "{event}");
            assert_eq!(event["reason"], "missing_credentials", "{event}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_continue_uploads_work_and_refusals_skip_the_body() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_std(&upstream).await;
    // Authorised: 100 Continue, then the body reaches the upstream.
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let head = format!(
        "POST /home/echo-body HTTP/1.1\r\nHost: p\r\nAuthorization: {}\r\nContent-Length: 11\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
        basic("alice", ALICE_PW)
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(DEADLINE, stream.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 100"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    stream.write_all(b"hello world").await.unwrap();
    let rest = read_until_closed(&mut stream).await;
    assert!(rest.contains("200 OK"), "{rest}");
    assert!(
        rest.contains(&format!("11 {}", sha256_hex(b"hello world"))),
        "{rest}"
    );

    // Refused: the answer comes without waiting for the body.
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"POST /home/echo-body HTTP/1.1\r\nHost: p\r\nContent-Length: 1000000\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let answer = read_until_closed(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert_eq!(upstream.requests().len(), 1);
}
