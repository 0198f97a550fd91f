//! Bodies are streamed both ways, intact, through an authenticated route.

mod support;

use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed;
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_megabyte_download_arrives_intact() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_std(&upstream).await;
    let alice = basic("alice", ALICE_PW);
    let response = proxy.get("/files/big", &[("authorization", &alice)]).await;
    assert_eq!(response.status, 200);
    assert_eq!(response.body.len(), BIG_LEN);
    assert_eq!(sha256_hex(&response.body), sha256_hex(&big_body()));
    assert_eq!(
        response.header("content-type").as_deref(),
        Some("application/octet-stream")
    );
    let event = proxy.access_of(&response).await;
    assert_eq!(event["user"], "alice");
    assert_eq!(event["upstream_status"], 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_megabyte_upload_arrives_intact() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_std(&upstream).await;
    let alice = basic("alice", ALICE_PW);
    let body = pseudo_random(5 * 1024 * 1024, 42);
    let digest = sha256_hex(&body);
    let response = proxy
        .send(
            "POST",
            "/files/echo-body",
            &[("authorization", &alice)],
            Bytes::from(body.clone()),
        )
        .await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.text(), format!("{} {digest}", body.len()));
    let seen = upstream.only("/files/echo-body");
    assert_eq!(seen.body_len, body.len());
    assert_eq!(seen.body_sha256, digest);
    assert_eq!(seen.header("x-forwarded-user").as_deref(), Some("alice"));
    assert_eq!(seen.header("authorization"), None);
}

/// A chunked upload reaches the upstream while the client is still sending it: the proxy does
/// not wait for the whole body. Then 5 MB follow, and arrive intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_upload_is_streamed_before_it_is_complete() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_std(&upstream).await;
    let body = pseudo_random(5 * 1024 * 1024, 7);
    let first = 64 * 1024;

    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let head = format!(
        "POST /files/echo-body HTTP/1.1\r\nHost: proxy.test\r\nAuthorization: {}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        basic("alice", ALICE_PW)
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
        .write_all(format!("{first:x}\r\n").as_bytes())
        .await
        .unwrap();
    stream.write_all(&body[..first]).await.unwrap();
    stream.write_all(b"\r\n").await.unwrap();
    stream.flush().await.unwrap();

    // The first chunk reaches the upstream although the request is far from complete.
    upstream.wait_for_body_bytes(first).await;
    assert!(
        upstream.requests().is_empty(),
        "the upstream cannot have seen the end of the body yet"
    );

    for chunk in body[first..].chunks(100_000) {
        stream
            .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .await
            .unwrap();
        stream.write_all(chunk).await.unwrap();
        stream.write_all(b"\r\n").await.unwrap();
    }
    stream.write_all(b"0\r\n\r\n").await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(DEADLINE, stream.read_to_end(&mut response))
        .await
        .expect("response in time")
        .unwrap();
    let response = RawResp::parse(&String::from_utf8_lossy(&response));
    assert_eq!(response.status, 200, "{}", response.text);
    assert!(
        response
            .body
            .contains(&format!("{} {}", body.len(), sha256_hex(&body))),
        "{}",
        response.body
    );
    let seen = upstream.only("/files/echo-body");
    assert_eq!(seen.body_len, body.len());
    assert_eq!(seen.body_sha256, sha256_hex(&body));
}

/// The first part of a response reaches the client while the upstream is still holding the
/// rest: the proxy does not buffer responses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_is_streamed_before_it_is_complete() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_std(&upstream).await;
    let stream = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let request = hyper::Request::get("/files/gated")
        .header("host", "proxy.test")
        .header("authorization", basic("alice", ALICE_PW))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = tokio::time::timeout(DEADLINE, sender.send_request(request))
        .await
        .expect("response headers in time")
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut received = Vec::new();
    let start = Instant::now();
    while !received.ends_with(b"first-part\n") {
        assert!(
            start.elapsed() < DEADLINE,
            "first part not received: {received:?}"
        );
        let frame = tokio::time::timeout(DEADLINE, body.frame())
            .await
            .expect("the first part arrives while the upstream holds the rest")
            .expect("body not finished")
            .unwrap();
        if let Some(data) = frame.data_ref() {
            received.extend_from_slice(data);
        }
    }
    upstream.open_gate();
    let rest = tokio::time::timeout(DEADLINE, body.collect())
        .await
        .unwrap()
        .unwrap()
        .to_bytes();
    received.extend_from_slice(&rest);
    assert_eq!(received, b"first-part\nsecond-part\n");
}
