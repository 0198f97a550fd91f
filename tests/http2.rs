//! HTTP/2 with prior knowledge (h2c) on the plain listener.

mod support;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;
use tokio::net::TcpStream;

async fn h2_sender(proxy: &Proxy) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(proxy.addr).await.unwrap();
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2c handshake");
    tokio::spawn(connection);
    sender
}

async fn h2_get(
    sender: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    proxy: &Proxy,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, hyper::HeaderMap, Bytes) {
    let mut request = hyper::Request::get(format!("http://{}{path}", proxy.addr));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Full::new(Bytes::new())).unwrap();
    let response = tokio::time::timeout(DEADLINE, sender.send_request(request))
        .await
        .expect("h2 response in time")
        .expect("h2 response");
    let status = response.status().as_u16();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (status, parts.headers, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_prior_knowledge_is_proxied() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_std(&upstream).await;
    let mut sender = h2_sender(&proxy).await;
    let alice = basic("alice", ALICE_PW);

    let (status, headers, body) = h2_get(
        &mut sender,
        &proxy,
        "/home/h2?q=1",
        &[("authorization", &alice)],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body, "upstream ok");
    let id = headers
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let seen = upstream.only("/home/h2");
    assert_eq!(seen.uri, "/home/h2?q=1");
    assert_eq!(seen.version, "HTTP/1.1");
    assert_eq!(seen.header("x-forwarded-user").as_deref(), Some("alice"));
    assert_eq!(seen.header("x-request-id"), Some(id.clone()));
    assert_eq!(seen.header("authorization"), None);
    assert_eq!(
        seen.header("x-forwarded-host"),
        Some(proxy.addr.to_string())
    );
    let event = proxy.access_for(&id).await;
    assert_eq!(event["http_version"], "HTTP/2.0");
    assert_eq!(event["user"], "alice");

    // Refusals over h2 have the same shape.
    let (status, headers, _) = h2_get(&mut sender, &proxy, "/home/h2-denied", &[]).await;
    assert_eq!(status, 401);
    let challenges: Vec<_> = headers.get_all("www-authenticate").iter().collect();
    assert_eq!(challenges.len(), 2);
    assert_eq!(headers.get("cache-control").unwrap(), "no-store");

    // Several streams at once on one connection.
    let mut streams = Vec::new();
    for n in 0..20 {
        let mut sender = sender.clone();
        let request = hyper::Request::get(format!("http://{}/home/h2-multi/{n}", proxy.addr))
            .header("authorization", alice.as_str())
            .body(Full::new(Bytes::new()))
            .unwrap();
        streams.push(tokio::spawn(async move {
            sender.send_request(request).await.unwrap().status()
        }));
    }
    for stream in streams {
        assert_eq!(stream.await.unwrap(), 200);
    }
    let received = upstream.wait_for_requests(21).await;
    assert_eq!(received.len(), 21);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_download_is_intact() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_std(&upstream).await;
    let mut sender = h2_sender(&proxy).await;
    let (status, _, body) = h2_get(&mut sender, &proxy, "/public/big", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(body.len(), BIG_LEN);
    assert_eq!(sha256_hex(&body), sha256_hex(&big_body()));
}

/// The proxy advertises a bound on concurrent streams per connection (128), and a client
/// that opens more than that on one connection still gets every answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_streams_are_bounded_and_all_answered() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_std(&upstream).await;
    let stream = TcpStream::connect(proxy.addr).await.unwrap();
    let (client, mut connection) = h2::client::handshake(stream).await.expect("h2c handshake");
    // The server's SETTINGS arrive with the first exchange.
    let request = hyper::Request::get(format!("http://{}/public/first", proxy.addr))
        .body(())
        .unwrap();
    let (response, _) = client.clone().send_request(request, true).unwrap();
    let response = tokio::select! {
        response = response => response.expect("h2 response"),
        ended = &mut connection => panic!("connection ended: {ended:?}"),
    };
    assert_eq!(response.status(), 200);
    assert_eq!(connection.max_concurrent_send_streams(), 128);
    tokio::spawn(connection);

    let sender = h2_sender(&proxy).await;
    let requests = (0..300).map(|n| {
        let mut sender = sender.clone();
        let path = format!("/public/s{n}");
        let addr = proxy.addr;
        async move {
            let request = hyper::Request::get(format!("http://{addr}{path}"))
                .body(Full::new(Bytes::new()))
                .unwrap();
            sender.ready().await.unwrap();
            sender
                .send_request(request)
                .await
                .map(|r| r.status().as_u16())
        }
    });
    let statuses = futures_util::future::join_all(requests).await;
    assert!(
        statuses.iter().all(|s| matches!(s, Ok(200))),
        "{:?}",
        statuses
            .iter()
            .filter(|s| !matches!(s, Ok(200)))
            .collect::<Vec<_>>()
    );
    assert_eq!(upstream.requests().len(), 301);
}

/// HTTP/2 clients may split `Cookie` into one field per cookie (RFC 9113 §8.2.3); the HTTP/1.1
/// upstream gets them as one `Cookie` line joined with `; `, without the session cookie.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_cookie_fields_reach_the_upstream_as_one_line() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_std(&upstream).await;
    let stream = TcpStream::connect(proxy.addr).await.unwrap();
    let (client, connection) = h2::client::handshake(stream).await.expect("h2c handshake");
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let mut request = hyper::Request::get(format!("http://{}/public/cookies", proxy.addr))
        .body(())
        .unwrap();
    for cookie in [
        "a=1",
        "portcullis_session=not-a-live-session-id-0000000000",
        "b=2; c=3",
        "d=4",
    ] {
        request
            .headers_mut()
            .append("cookie", hyper::header::HeaderValue::from_static(cookie));
    }
    let (response, _) = client.send_request(request, true).unwrap();
    let response = tokio::time::timeout(DEADLINE, response)
        .await
        .expect("answer in time")
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen = upstream.only("/public/cookies");
    assert_eq!(seen.header_all("cookie"), vec!["a=1; b=2; c=3; d=4"]);
}

/// An HTTP/2 connection with no open stream is closed after `idle_timeout` even when the
/// client keeps sending PINGs (each of which the server must answer): otherwise any client
/// could hold a connection slot forever. Both after a request and with none at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_do_not_keep_an_http2_connection_without_streams_open() {
    let upstream = Upstream::start().await;
    let proxy = ProxyConfig::new(upstream.url(), std_body())
        .server("idle_timeout = \"1s\"")
        .start()
        .await;
    for with_request in [true, false] {
        let tcp = TcpStream::connect(proxy.addr).await.unwrap();
        let (mut sender, mut connection) = h2::client::handshake(tcp).await.expect("h2c");
        let mut ping_pong = connection.ping_pong().expect("the ping handle");
        let connection = tokio::spawn(connection);
        if with_request {
            let request = hyper::Request::get(format!("http://{}/public/h2-idle", proxy.addr))
                .body(())
                .unwrap();
            let (response, _) = sender.send_request(request, true).expect("send");
            let response = tokio::time::timeout(DEADLINE, response)
                .await
                .expect("a response in time")
                .expect("a response");
            assert_eq!(response.status(), 200);
            let mut body = response.into_body();
            while let Some(chunk) = body.data().await {
                chunk.expect("body");
            }
        }
        let start = std::time::Instant::now();
        let mut pongs = 0;
        while !connection.is_finished() {
            assert!(
                start.elapsed() < DEADLINE,
                "{pongs} pings kept an HTTP/2 connection with no stream open (request: {with_request})"
            );
            if ping_pong.ping(h2::Ping::opaque()).await.is_err() {
                break;
            }
            pongs += 1;
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        assert!(
            pongs >= 2,
            "the connection was closed before the pings: {pongs}"
        );
    }
}
