//! Every request is logged exactly once (SPEC §5), also when the client goes away first: before
//! the response head (status 499, `client_closed`) or during the response body (the status that
//! was sent, `"aborted": true`). Judged by the access lines the real binary wrote.

mod support;

use std::time::Instant;

use serde_json::Value;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The access events whose `path` is `path`.
fn events_for(proxy: &Proxy, path: &str) -> Vec<Value> {
    proxy
        .access_events()
        .into_iter()
        .filter(|e| e["path"] == path)
        .collect()
}

/// Waits for the first access event of `path`.
async fn wait_for_path(proxy: &Proxy, path: &str) -> Value {
    let start = Instant::now();
    loop {
        if let Some(event) = events_for(proxy, path).into_iter().next() {
            return event;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "no access event for {path}:\n{}",
            proxy.all_output()
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Once a later request's event is logged, every earlier event is written too (lines leave in
/// order); then counts are exact.
async fn settle(proxy: &Proxy) {
    let sentinel = proxy.get("/public/sentinel", &[]).await;
    proxy.access_of(&sentinel).await;
}

async fn h2_client(proxy: &Proxy) -> h2::client::SendRequest<bytes::Bytes> {
    let stream = TcpStream::connect(proxy.addr).await.unwrap();
    let (client, connection) = h2::client::handshake(stream).await.expect("h2c handshake");
    tokio::spawn(connection);
    client.ready().await.expect("h2 connection ready")
}

fn assert_client_closed(event: &Value) {
    assert_eq!(event["status"], 499, "{event}");
    assert_eq!(event["decision"], "error", "{event}");
    assert_eq!(event["reason"], "client_closed", "{event}");
    assert!(
        event["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{event}"
    );
    assert!(event["upstream_status"].is_null(), "{event}");
}

/// An HTTP/1.1 client that closes its connection while the upstream is still working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_disconnect_before_the_response_is_logged_once_as_client_closed() {
    let upstream = Upstream::start().await;
    let proxy = ProxyConfig::new(upstream.url(), std_body())
        .server("admin_listen = \"127.0.0.1:0\"")
        .start()
        .await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"GET /public/h1/slow HTTP/1.1\r\nHost: proxy.test\r\n\r\n")
        .await
        .unwrap();
    upstream.wait_for_requests(1).await;
    assert_eq!(upstream.last().path, "/public/h1/slow");
    drop(stream);

    let event = wait_for_path(&proxy, "/public/h1/slow").await;
    assert_client_closed(&event);
    assert_eq!(event["route"], "/public", "{event}");
    settle(&proxy).await;
    assert_eq!(events_for(&proxy, "/public/h1/slow").len(), 1);
    assert_eq!(
        proxy.access_events().len(),
        2,
        "{:#?}",
        proxy.access_events()
    );
    let metrics = send(proxy.admin(), "GET", "/metrics", &[], bytes::Bytes::new()).await;
    let metrics = metrics.text();
    assert!(
        metrics.contains("portcullis_denials_total{reason=\"client_closed\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("portcullis_requests_total{route=\"/public\",status=\"4xx\"} 1"),
        "{metrics}"
    );
}

/// An HTTP/2 client that cancels its stream (RST_STREAM) while the upstream is still working;
/// the connection stays open and serves the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_stream_reset_before_the_response_is_logged_once_as_client_closed() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_std(&upstream).await;
    let mut client = h2_client(&proxy).await;
    let request = hyper::Request::get(format!("http://{}/public/h2/slow", proxy.addr))
        .body(())
        .unwrap();
    let (response, mut stream) = client.send_request(request, true).unwrap();
    upstream.wait_for_requests(1).await;
    assert_eq!(upstream.last().path, "/public/h2/slow");
    stream.send_reset(h2::Reason::CANCEL);
    drop(response);

    let event = wait_for_path(&proxy, "/public/h2/slow").await;
    assert_client_closed(&event);
    assert_eq!(event["http_version"], "HTTP/2.0", "{event}");

    // Same connection, next stream: answered and logged normally.
    let mut client = client.ready().await.unwrap();
    let request = hyper::Request::get(format!("http://{}/public/h2/after", proxy.addr))
        .body(())
        .unwrap();
    let (response, _) = client.send_request(request, true).unwrap();
    let response = tokio::time::timeout(DEADLINE, response)
        .await
        .expect("answer in time")
        .unwrap();
    assert_eq!(response.status(), 200);
    let after = wait_for_path(&proxy, "/public/h2/after").await;
    assert_eq!(after["status"], 200, "{after}");
    assert!(after["aborted"].is_null(), "{after}");

    settle(&proxy).await;
    assert_eq!(events_for(&proxy, "/public/h2/slow").len(), 1);
    assert_eq!(events_for(&proxy, "/public/h2/after").len(), 1);
}

/// A client that goes away during the response body: the status that was sent, and `aborted`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_disconnect_during_the_body_is_logged_once_as_aborted() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_std(&upstream).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"GET /public/h1/gated HTTP/1.1\r\nHost: proxy.test\r\n\r\n")
        .await
        .unwrap();
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    let start = Instant::now();
    while !received.windows(11).any(|w| w == b"first-part\n") {
        assert!(start.elapsed() < DEADLINE, "first part not received");
        let n = tokio::time::timeout(DEADLINE, stream.read(&mut buf))
            .await
            .expect("first part in time")
            .unwrap();
        assert!(
            n > 0,
            "closed early: {}",
            String::from_utf8_lossy(&received)
        );
        received.extend_from_slice(&buf[..n]);
    }
    assert!(received.starts_with(b"HTTP/1.1 200"));
    drop(stream);

    let event = wait_for_path(&proxy, "/public/h1/gated").await;
    assert_eq!(event["status"], 200, "{event}");
    assert_eq!(event["aborted"], true, "{event}");
    assert_eq!(event["decision"], "allow", "{event}");
    assert_eq!(event["upstream_status"], 200, "{event}");
    settle(&proxy).await;
    assert_eq!(events_for(&proxy, "/public/h1/gated").len(), 1);
}

/// The same over HTTP/2: the stream is reset after the first part of the body arrived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_reset_during_the_body_is_logged_once_as_aborted() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_std(&upstream).await;
    let mut client = h2_client(&proxy).await;
    let request = hyper::Request::get(format!("http://{}/public/h2/gated", proxy.addr))
        .body(())
        .unwrap();
    let (response, mut stream) = client.send_request(request, true).unwrap();
    let response = tokio::time::timeout(DEADLINE, response)
        .await
        .expect("head in time")
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let first = tokio::time::timeout(DEADLINE, body.data())
        .await
        .expect("first part in time")
        .expect("a data frame")
        .unwrap();
    assert_eq!(&first[..], b"first-part\n");
    stream.send_reset(h2::Reason::CANCEL);

    let event = wait_for_path(&proxy, "/public/h2/gated").await;
    assert_eq!(event["status"], 200, "{event}");
    assert_eq!(event["aborted"], true, "{event}");
    settle(&proxy).await;
    assert_eq!(events_for(&proxy, "/public/h2/gated").len(), 1);
}

/// Ordinary exchanges (a forwarded GET, a HEAD, a refusal, a whole streamed download) are
/// logged once each, none of them as aborted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completed_requests_are_logged_once_and_not_aborted() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_std(&upstream).await;
    let plain = proxy.get("/public/plain", &[]).await;
    assert_eq!(plain.status, 200);
    let head = proxy.send("HEAD", "/public/head", &[], "").await;
    assert_eq!(head.status, 200);
    let refused = proxy.get("/home", &[]).await;
    assert_eq!(refused.status, 401);
    let big = proxy.get("/public/big", &[]).await;
    assert_eq!(big.body.len(), BIG_LEN);
    let head_refused = proxy.send("HEAD", "/home", &[], "").await;
    assert_eq!(head_refused.status, 401);
    for response in [&plain, &head, &refused, &big, &head_refused] {
        let event = proxy.access_of(response).await;
        assert_eq!(event["status"], response.status, "{event}");
        assert!(event["aborted"].is_null(), "{event}");
    }
    settle(&proxy).await;
    assert_eq!(
        proxy.access_events().len(),
        6,
        "{:#?}",
        proxy.access_events()
    );
}
