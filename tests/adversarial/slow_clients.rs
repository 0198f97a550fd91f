//! Slow clients: header tricklers.

use super::*;

// ---------------------------------------------------------------------------------------------
// Slowloris
// ---------------------------------------------------------------------------------------------

/// Clients that trickle their headers one byte at a time, well inside any per-read timeout,
/// are still cut off once `header_read_timeout` has passed since the request began; others
/// are served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_tricklers_are_cut_off_and_others_are_served() {
    let _serial = SERIAL.lock().await;
    let upstream = Upstream::start().await;
    let proxy = ProxyConfig::new(upstream.url(), std_body())
        .server("header_read_timeout = \"2s\"\nidle_timeout = \"60s\"")
        .start()
        .await;
    let head = b"GET /public/trickle HTTP/1.1\r\nHost: proxy.test\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let mut tricklers = Vec::new();
    for _ in 0..10 {
        let addr = proxy.addr;
        tricklers.push(tokio::spawn(async move {
            let start = Instant::now();
            let stream = TcpStream::connect(addr).await.unwrap();
            let (mut reader, mut writer) = stream.into_split();
            let writing = tokio::spawn(async move {
                // One byte every 250 ms: the whole head would take 30 s.
                for byte in head.iter() {
                    if writer.write_all(&[*byte]).await.is_err() {
                        return false;
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                true
            });
            let mut out = Vec::new();
            let mut buf = [0u8; 1024];
            let closed = loop {
                match tokio::time::timeout(DEADLINE, reader.read(&mut buf)).await {
                    Err(_) => break false,
                    Ok(Ok(0)) | Ok(Err(_)) => break true,
                    Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
                }
            };
            writing.abort();
            (
                closed,
                start.elapsed(),
                String::from_utf8_lossy(&out).into_owned(),
            )
        }));
    }
    // Meanwhile, a normal client is served, repeatedly.
    for n in 0..5 {
        let response = proxy.get(&format!("/public/normal{n}"), &[]).await;
        assert_eq!(response.status, 200);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for trickler in tricklers {
        let (closed, took, answer) = trickler.await.unwrap();
        assert!(closed, "a trickling client was kept open past {DEADLINE:?}");
        assert!(
            took >= Duration::from_millis(1500),
            "cut off too early: {took:?}"
        );
        assert!(took < Duration::from_secs(8), "cut off late: {took:?}");
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
            "{answer}"
        );
    }
    assert!(upstream
        .requests()
        .iter()
        .all(|r| r.path != "/public/trickle"));
}

// ---------------------------------------------------------------------------------------------
// Slow bodies (server.body_read_timeout)
// ---------------------------------------------------------------------------------------------

/// A client that starts a body and stalls gets 408 after `body_read_timeout`, logged once as
/// `client_body_invalid` with the detail naming the key; the upstream never gets a completed
/// request, and the proxy keeps serving. A slow but steady body passes whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_gets_408_and_a_steady_slow_one_passes() {
    let upstream = Upstream::start().await;
    let proxy = ProxyConfig::new(upstream.url(), std_body())
        .server("body_read_timeout = \"1s\"")
        .start()
        .await;
    // 3 of 10 bytes, then silence; `raw` returns once the proxy has closed the connection.
    let stalled = b"POST /public/stall HTTP/1.1\r\nHost: p\r\nContent-Length: 10\r\n\r\nabc";
    let response = RawResp::parse(&proxy.raw(stalled).await);
    assert_eq!(response.status, 408, "{}", response.text);
    assert_eq!(response.header("cache-control"), Some("no-store"));
    let id = response.header("x-request-id").expect("X-Request-Id");
    let event = proxy.access_for(id).await;
    assert_eq!(event["decision"], "error", "{event}");
    assert_eq!(event["reason"], "client_body_invalid", "{event}");
    assert_eq!(event["status"], 408, "{event}");
    assert_eq!(
        event["detail"], "no request body bytes for 1s (server.body_read_timeout)",
        "{event}"
    );
    assert_eq!(proxy.get("/public/after", &[]).await.status, 200);
    assert!(
        upstream
            .requests()
            .iter()
            .all(|r| r.path != "/public/stall" || r.body_len < 10),
        "the upstream got the whole stalled body"
    );

    // One byte every 200 ms under a 1 s timeout.
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let head = "POST /public/steady HTTP/1.1\r\nHost: p\r\nContent-Length: 10\r\nConnection: close\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    for byte in b"0123456789" {
        tokio::time::sleep(Duration::from_millis(200)).await;
        stream.write_all(&[*byte]).await.unwrap();
    }
    let mut answer = Vec::new();
    tokio::time::timeout(DEADLINE, stream.read_to_end(&mut answer))
        .await
        .expect("an answer in time")
        .unwrap();
    let response = RawResp::parse(&String::from_utf8_lossy(&answer));
    assert_eq!(response.status, 200, "{}", response.text);
    assert_eq!(upstream.only("/public/steady").body_len, 10);
}

/// HTTP/2: a stream whose body stalls gets 408 on that stream; the connection goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_http2_body_gets_408_on_its_stream_only() {
    let upstream = Upstream::start().await;
    let proxy = ProxyConfig::new(upstream.url(), std_body())
        .server("body_read_timeout = \"1s\"")
        .start()
        .await;
    let stream = TcpStream::connect(proxy.addr).await.unwrap();
    let (client, connection) = h2::client::handshake(stream).await.expect("h2c handshake");
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = hyper::Request::post(format!("http://{}/public/h2-stall", proxy.addr))
        .header("content-length", "10")
        .body(())
        .unwrap();
    let (response, mut body) = client.send_request(request, false).unwrap();
    body.send_data(Bytes::from_static(b"abc"), false).unwrap();
    let response = tokio::time::timeout(DEADLINE, response)
        .await
        .expect("an answer in time")
        .unwrap();
    assert_eq!(response.status(), 408);
    let id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let event = proxy.access_for(&id).await;
    assert_eq!(event["reason"], "client_body_invalid", "{event}");
    assert_eq!(event["decision"], "error", "{event}");

    let mut client = client.ready().await.unwrap();
    let request = hyper::Request::get(format!("http://{}/public/h2-after", proxy.addr))
        .body(())
        .unwrap();
    let (response, _) = client.send_request(request, true).unwrap();
    let response = tokio::time::timeout(DEADLINE, response)
        .await
        .expect("an answer in time")
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(upstream
        .requests()
        .iter()
        .all(|r| r.path != "/public/h2-stall" || r.body_len < 10));
}
