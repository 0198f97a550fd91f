//! Request smuggling: ambiguous framing, bad chunks, pipelining, HTTP/2 framing headers.

use super::*;

// ---------------------------------------------------------------------------------------------
// Request smuggling
// ---------------------------------------------------------------------------------------------

/// A request whose framing could be read two ways, followed by a second request hidden in
/// what a different parser would take for the next message. The proxy must refuse with 400
/// (501 for a `Transfer-Encoding` other than chunked, SPEC §3 step 0) and close the
/// connection: one response, the upstream receives nothing from it (neither the outer request
/// nor the hidden one).
const SMUGGLING_REFUSED: &[(&str, &str)] = &[
    (
        "te-chunked-identity",
        "POST /public/te-ci HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\nGET /public/hidden-te-ci HTTP/1.1\r\nHost: p\r\n\r\n",
    ),
    (
        "te-unknown",
        "POST /public/te-x HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\nGET /public/hidden-te-x HTTP/1.1\r\nHost: p\r\n\r\n",
    ),
    (
        "te-obs-fold",
        "POST /public/te-fold HTTP/1.1\r\nHost: p\r\nTransfer-Encoding:\r\n chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\nGET /public/hidden-te-fold HTTP/1.1\r\nHost: p\r\n\r\n",
    ),
    (
        "te-obs-fold-2",
        "POST /public/te-fold2 HTTP/1.1\r\nHost: p\r\nX-Pad: a\r\n Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /public/hidden-te-fold2 HTTP/1.1\r\nHost: p\r\n\r\n",
    ),
    (
        "cl-cl",
        "POST /public/cl-cl HTTP/1.1\r\nHost: p\r\nContent-Length: 0\r\nContent-Length: 47\r\n\r\nGET /public/hidden-cl-cl HTTP/1.1\r\nHost: p\r\n\r\n",
    ),
    (
        "cl-list",
        "POST /public/cl-list HTTP/1.1\r\nHost: p\r\nContent-Length: 0, 49\r\n\r\nGET /public/hidden-cl-list HTTP/1.1\r\nHost: p\r\n\r\n",
    ),
    (
        "cl-plus",
        "POST /public/cl-plus HTTP/1.1\r\nHost: p\r\nContent-Length: +0\r\n\r\nGET /public/hidden-cl-plus HTTP/1.1\r\nHost: p\r\n\r\n",
    ),
    (
        "cl-hex",
        "POST /public/cl-hex HTTP/1.1\r\nHost: p\r\nContent-Length: 0x0\r\n\r\nGET /public/hidden-cl-hex HTTP/1.1\r\nHost: p\r\n\r\n",
    ),
    (
        "te-space-name",
        "POST /public/te-sp HTTP/1.1\r\nHost: p\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\nGET /public/hidden-te-sp HTTP/1.1\r\nHost: p\r\n\r\n",
    ),
];

/// Both `Content-Length` and `Transfer-Encoding`, in both orders: the chunked framing the
/// upstream may ignore hides a second request in what a CL-reading parser takes for the body.
const CL_AND_TE: &[(&str, &str)] = &[
    (
        "cl-te",
        "POST /public/cl-te HTTP/1.1\r\nHost: p\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /public/hidden-cl-te HTTP/1.1\r\nHost: p\r\n\r\n",
    ),
    (
        "te-cl",
        "POST /public/te-cl HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\nGET /public/hidden-te-cl HTTP/1.1\r\nHost: p\r\n\r\n",
    ),
];

/// Broken chunked bodies: the body is cut off there, and whatever follows is never read as a
/// request of its own.
const BAD_CHUNKS: &[(&str, &str)] = &[
    ("chunk-zz", "zz\r\nhello\r\n0\r\n\r\n"),
    ("chunk-negative", "-5\r\nhello\r\n0\r\n\r\n"),
    ("chunk-0x", "0x5\r\nhello\r\n0\r\n\r\n"),
    ("chunk-plus", "+5\r\nhello\r\n0\r\n\r\n"),
    ("chunk-overflow", "fffffffffffffffff\r\nhello\r\n0\r\n\r\n"),
    ("chunk-space", " 5\r\nhello\r\n0\r\n\r\n"),
    ("chunk-too-long", "3\r\nhello\r\n0\r\n\r\n"),
    ("chunk-no-crlf", "5\r\nhelloXX0\r\n\r\n"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_framing_is_refused_and_the_connection_closed() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_std(&upstream).await;
    let mut failures = Vec::new();
    for (name, attempt) in SMUGGLING_REFUSED {
        // `raw` returns only once the proxy has closed the connection.
        let text = proxy.raw(attempt.as_bytes()).await;
        let got = statuses(&text);
        let status = if name.starts_with("te-chunked") || *name == "te-unknown" {
            501
        } else {
            400
        };
        if got != vec![status] {
            failures.push(format!(
                "{name}: expected one {status} then close, got {got:?}: {text}"
            ));
        }
    }
    for request in upstream.requests() {
        failures.push(format!(
            "forwarded to the upstream: {} {}",
            request.method, request.uri
        ));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// RFC 9112 §6.1 would let the proxy read such a request by `Transfer-Encoding` alone and
/// close the connection afterwards; issue 5 asks for more: refuse it outright, forward
/// nothing, and close — also when it comes after a good request on the same connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_with_transfer_encoding_is_refused() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_std(&upstream).await;
    for (name, attempt) in CL_AND_TE {
        // `raw` returns only once the proxy has closed the connection.
        let text = proxy.raw(attempt.as_bytes()).await;
        assert_eq!(statuses(&text), vec![400], "{name}: {text}");
    }
    assert!(upstream.requests().is_empty(), "{:?}", upstream.requests());

    let (_, te_cl) = CL_AND_TE[1];
    let pipelined = format!("GET /public/first HTTP/1.1\r\nHost: p\r\n\r\n{te_cl}");
    let text = proxy.raw(pipelined.as_bytes()).await;
    assert_eq!(statuses(&text), vec![200, 400], "{text}");
    let paths: Vec<String> = upstream.requests().iter().map(|r| r.path.clone()).collect();
    assert_eq!(paths, ["/public/first"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_chunk_sizes_never_become_a_second_request() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_std(&upstream).await;
    for (name, body) in BAD_CHUNKS {
        let attempt = format!(
            "POST /public/{name}/echo-body HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: chunked\r\n\r\n{body}GET /public/hidden-{name} HTTP/1.1\r\nHost: p\r\n\r\n"
        );
        let text = proxy.raw(attempt.as_bytes()).await;
        let got = statuses(&text);
        // The client's body broke, not the upstream: 400 `client_body_invalid`, an error.
        assert_eq!(got, vec![400], "{name}: {text}");
        let response = RawResp::parse(&text);
        let event = proxy
            .access_for(response.header("x-request-id").expect("X-Request-Id"))
            .await;
        assert_eq!(event["reason"], "client_body_invalid", "{name}: {event}");
        assert_eq!(event["decision"], "error", "{name}: {event}");
        let forwarded: Vec<Recorded> = upstream
            .requests()
            .into_iter()
            .filter(|r| r.path.contains(name))
            .collect();
        // The outer request may have been streamed upstream before its body broke (bodies
        // are streamed, not buffered), but only once, and never followed by the hidden one.
        assert!(forwarded.len() <= 1, "{name}: {forwarded:?}");
        for request in &forwarded {
            assert!(!request.path.contains("hidden"), "{name}: {request:?}");
            assert!(
                request.header("content-length").is_none(),
                "{name}: {request:?}"
            );
        }
    }
    let hidden: Vec<String> = upstream
        .requests()
        .into_iter()
        .map(|r| r.uri)
        .filter(|u| u.contains("hidden"))
        .collect();
    assert!(hidden.is_empty(), "smuggled: {hidden:?}");
}

/// Pipelined requests are each checked: a protected request hidden behind a public one on the
/// same connection is refused, and its body (another request) is never parsed as a request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_each_checked() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_std(&upstream).await;
    let inner = "GET /public/hidden-in-body HTTP/1.1\r\nHost: p\r\n\r\n";
    let attempt = format!(
        "GET /public/first HTTP/1.1\r\nHost: p\r\n\r\nPOST /admin/second HTTP/1.1\r\nHost: p\r\nContent-Length: {}\r\n\r\n{inner}GET /public/third HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n",
        inner.len()
    );
    let text = proxy.raw(attempt.as_bytes()).await;
    assert_eq!(statuses(&text), vec![200, 401, 200], "{text}");
    let paths: Vec<String> = upstream.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, vec!["/public/first", "/public/third"]);
}

/// HTTP/2 forbids connection-specific headers and requires DATA to match content-length: a
/// stream that breaks either rule never reaches the upstream as a complete request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_cannot_smuggle_framing_headers() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_std(&upstream).await;
    let mut sender = h2(&proxy).await;
    // A wrong content-length on an h2 request: refused or reset, never forwarded whole.
    let request = hyper::Request::post(format!("http://{}/public/h2-cl/echo-body", proxy.addr))
        .header("content-length", "3")
        .body(Full::new(Bytes::from_static(b"hello world")))
        .unwrap();
    let outcome = tokio::time::timeout(DEADLINE, sender.send_request(request))
        .await
        .expect("in time");
    if let Ok(response) = outcome {
        let status = response.status().as_u16();
        let body = response.into_body().collect().await;
        if status == 200 {
            let body = body.map(|b| b.to_bytes()).unwrap_or_default();
            assert_ne!(
                String::from_utf8_lossy(&body),
                format!("11 {}", sha256_hex(b"hello world")),
                "the upstream received more than content-length"
            );
        }
    }
    for request in upstream.requests() {
        assert!(request.body_len <= 3, "{request:?}");
        assert!(
            request.header("transfer-encoding").is_none()
                || request.header("content-length").is_none()
        );
    }
    // The connection (or a new one) still serves a normal request.
    let mut sender = h2(&proxy).await;
    assert_eq!(
        h2_get(&mut sender, &proxy, "/public/h2-after", &[]).await,
        200
    );
}

/// The framing watch follows every request hyper reads (issue 12): after an upgrade attempt
/// the upstream answered with a plain 200, after a `CONNECT` refused with the connection left
/// open, and past a `Content-Length` padded beyond any line the watch keeps. In each case the
/// `Content-Length` + `Transfer-Encoding` request that follows is refused, and neither it nor
/// the request hidden in its body reaches the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_framing_watch_cannot_be_switched_off() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_std(&upstream).await;
    let (_, te_cl) = CL_AND_TE[1];
    let (_, cl_te) = CL_AND_TE[0];
    let befores: [(&str, &str, u16); 3] = [
        (
            "upgrade-h2c",
            "GET /public/up-h2c HTTP/1.1\r\nHost: p\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
            200,
        ),
        (
            "upgrade-websocket",
            "GET /public/up-ws HTTP/1.1\r\nHost: p\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
            200,
        ),
        (
            "connect",
            "CONNECT p:443 HTTP/1.1\r\nHost: p:443\r\n\r\n",
            400,
        ),
    ];
    for (name, before, status) in befores {
        for smuggled in [te_cl, cl_te] {
            let text = proxy.raw(format!("{before}{smuggled}").as_bytes()).await;
            assert_eq!(statuses(&text), vec![status, 400], "{name}: {text}");
        }
    }
    // 90 zeros: hyper reads 26, a watch that keeps 96 bytes of a line read 0.
    let padded = format!(
        "POST /public/padded HTTP/1.1\r\nHost: p\r\nContent-Length: {}26\r\n\r\nGET /public/hidden HTTP/1.\
         POST /public/cl-te-after-pad HTTP/1.1\r\nHost: p\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /public/hidden-pad HTTP/1.1\r\nHost: p\r\n\r\n",
        "0".repeat(90)
    );
    let text = proxy.raw(padded.as_bytes()).await;
    assert_eq!(statuses(&text), vec![400], "padded: {text}");

    let forwarded: Vec<String> = upstream.requests().into_iter().map(|r| r.path).collect();
    assert!(
        forwarded
            .iter()
            .all(|p| p == "/public/up-h2c" || p == "/public/up-ws"),
        "forwarded: {forwarded:?}"
    );
}

/// A client that goes away in the middle of its request body is `client_closed` (an error of
/// the client's), never blamed on the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_aborts_mid_body_is_client_closed() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_std(&upstream).await;
    for (name, head, part) in [
        (
            "length",
            "POST /public/abort-length/echo-body HTTP/1.1\r\nHost: p\r\nContent-Length: 100\r\n\r\n",
            "0123456789",
        ),
        (
            "chunked",
            "POST /public/abort-chunked/echo-body HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: chunked\r\n\r\n",
            "64\r\n0123456789",
        ),
    ] {
        let before = upstream.body_bytes();
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(part.as_bytes()).await.unwrap();
        upstream.wait_for_body_bytes(before + 10).await;
        drop(stream);
        let path = format!("/public/abort-{name}/echo-body");
        let start = Instant::now();
        let event = loop {
            let found: Vec<_> = proxy
                .access_events()
                .into_iter()
                .filter(|e| e["path"] == path.as_str())
                .collect();
            if let Some(event) = found.first() {
                assert_eq!(found.len(), 1, "{found:?}");
                break event.clone();
            }
            assert!(start.elapsed() < DEADLINE, "no access event for {path}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(event["reason"], "client_closed", "{name}: {event}");
        assert_eq!(event["decision"], "error", "{name}: {event}");
    }
}
