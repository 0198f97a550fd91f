//! Request shape (SPEC §3 step 0): Host, Content-Length, Transfer-Encoding and Authorization
//! shapes that two servers could read two ways are refused before any route is looked at,
//! on the bytes as received, whatever came before on the connection.

use super::*;

/// Sends raw bytes; returns every response (parsed) and the access event of the last one.
async fn refused_raw(proxy: &Proxy, request: &str) -> (Vec<u16>, RawResp) {
    let text = proxy.raw(request.as_bytes()).await;
    let got = statuses(&text);
    // The last response is the refusal: parse from its status line on.
    let last = text.rfind("HTTP/1.1 ").map_or("", |i| &text[i..]);
    (got, RawResp::parse(last))
}

async fn assert_malformed(proxy: &Proxy, name: &str, response: &RawResp, status: u16) {
    assert_eq!(response.status, status, "{name}: {}", response.text);
    assert!(
        response.header("www-authenticate").is_none(),
        "{name}: no challenge before a route is chosen: {}",
        response.text
    );
    let id = response
        .header("x-request-id")
        .unwrap_or_else(|| panic!("{name}: no X-Request-Id: {}", response.text));
    let event = proxy.access_for(id).await;
    assert_eq!(event["reason"], "malformed_request", "{name}: {event}");
    assert_eq!(event["decision"], "deny", "{name}: {event}");
    assert_eq!(event["status"], status, "{name}: {event}");
    assert!(event["route"].is_null(), "{name}: {event}");
}

/// Each shape, alone on a connection and after a good request on the same connection: one
/// 400 (or 501), the connection closed, nothing of it at the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_request_shapes_are_refused_before_routing() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_std(&upstream).await;
    let alice = basic_line("alice", ALICE_PW);
    let padded = format!("Content-Length: {}26\r\n", "0".repeat(90));
    let cases: Vec<(&str, String, u16)> = vec![
        ("no-host", String::new(), 400),
        ("host-space", "Host: a b\r\n".into(), 400),
        ("host-list", "Host: a, b\r\n".into(), 400),
        ("host-path", "Host: evil.com/admin?\r\n".into(), 400),
        ("host-userinfo", "Host: alice@evil.com\r\n".into(), 400),
        ("host-twice", "Host: p\r\nHost: q\r\n".into(), 400),
        ("cl-padded", format!("Host: p\r\n{padded}"), 400),
        (
            "cl-twice",
            "Host: p\r\nContent-Length: 5\r\nContent-Length: 5\r\n".into(),
            400,
        ),
        (
            "cl-te",
            "Host: p\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n".into(),
            400,
        ),
        (
            "two-authorization-public",
            format!("Host: p\r\n{alice}Authorization: Basic Ym9iOng=\r\n"),
            400,
        ),
        (
            "te-gzip-chunked",
            "Host: p\r\nTransfer-Encoding: gzip, chunked\r\n".into(),
            501,
        ),
        (
            "te-twice",
            "Host: p\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n".into(),
            501,
        ),
    ];
    for (name, headers, status) in &cases {
        let body = "0\r\n\r\n";
        let head = format!("POST /public/{name} HTTP/1.1\r\n{headers}\r\n{body}");
        let hidden = format!("GET /public/hidden-{name} HTTP/1.1\r\nHost: p\r\n\r\n");
        let (got, response) = refused_raw(&proxy, &format!("{head}{hidden}")).await;
        assert_eq!(got, vec![*status], "{name}: {}", response.text);
        assert_malformed(&proxy, name, &response, *status).await;

        let first = "GET /public/first HTTP/1.1\r\nHost: p\r\n\r\n";
        let (got, response) = refused_raw(&proxy, &format!("{first}{head}{hidden}")).await;
        assert_eq!(got, vec![200, *status], "{name} after a good request");
        assert_malformed(&proxy, name, &response, *status).await;
    }
    // Protected routes too: two Authorization headers are no credential of any scheme.
    let two =
        format!("GET /admin/x HTTP/1.1\r\nHost: p\r\n{alice}{alice}Connection: close\r\n\r\n");
    let (got, response) = refused_raw(&proxy, &two).await;
    assert_eq!(got, vec![400]);
    assert_malformed(&proxy, "two-authorization-admin", &response, 400).await;

    let forwarded: Vec<String> = upstream.requests().into_iter().map(|r| r.path).collect();
    assert!(
        forwarded.iter().all(|p| p == "/public/first"),
        "forwarded: {forwarded:?}"
    );
}

/// Shapes hyper's own parser refuses before any handler runs (it would answer a bare 400 with
/// no access line and no request id) get the proxy's own refusal: status, `X-Request-Id`, a
/// body in the format the client accepts, one access event, the connection closed, and
/// nothing at the upstream, alone on a connection or after a good request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shapes_hyper_refuses_get_the_proxys_own_refusal() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_std(&upstream).await;
    let cases: [(&str, &str, u16); 9] = [
        ("cl-list", "Content-Length: 5, 5", 400),
        ("cl-plus", "Content-Length: +5", 400),
        ("cl-differ", "Content-Length: 5\r\nContent-Length: 6", 400),
        ("cl-overflow", "Content-Length: 99999999999999999999", 400),
        (
            "cl-te-gzip",
            "Content-Length: 5\r\nTransfer-Encoding: gzip",
            400,
        ),
        ("te-gzip", "Transfer-Encoding: gzip", 501),
        (
            "te-chunked-identity",
            "Transfer-Encoding: chunked, identity",
            501,
        ),
        (
            "te-chunked-gzip-lines",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip",
            501,
        ),
        ("te-empty", "Transfer-Encoding: ", 501),
    ];
    for (name, framing, status) in cases {
        let head = format!(
            "POST /public/{name} HTTP/1.1\r\nHost: p\r\nAccept: application/json\r\n\
             {framing}\r\n\r\n0\r\n\r\n"
        );
        let hidden = format!("GET /public/hidden-{name} HTTP/1.1\r\nHost: p\r\n\r\n");
        let first = "GET /public/first HTTP/1.1\r\nHost: p\r\n\r\n";
        for (before, expected) in [("", vec![status]), (first, vec![200, status])] {
            let (got, response) = refused_raw(&proxy, &format!("{before}{head}{hidden}")).await;
            assert_eq!(got, expected, "{name}: {}", response.text);
            assert_malformed(&proxy, name, &response, status).await;
            assert_eq!(response.header("cache-control"), Some("no-store"), "{name}");
            let body: serde_json::Value = serde_json::from_str(&response.body)
                .unwrap_or_else(|e| panic!("{name}: body is not JSON ({e}): {}", response.text));
            assert_eq!(body["reason"], "malformed_request", "{name}: {body}");
            let event = proxy
                .access_for(response.header("x-request-id").unwrap())
                .await;
            assert_eq!(event["path"], format!("/public/{name}"), "{name}: {event}");
            assert_eq!(event["method"], "POST", "{name}: {event}");
        }
    }
    let forwarded: Vec<String> = upstream.requests().into_iter().map(|r| r.path).collect();
    assert!(
        forwarded.iter().all(|p| p == "/public/first"),
        "forwarded: {forwarded:?}"
    );
}

/// HTTP/1.0 needs no Host; a valid host with a port, and an IPv6 literal, pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn well_formed_requests_still_pass() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_std(&upstream).await;
    for (path, head) in [
        ("/public/http10", "GET /public/http10 HTTP/1.0\r\n\r\n"),
        (
            "/public/port",
            "GET /public/port HTTP/1.1\r\nHost: proxy.test:8080\r\nConnection: close\r\n\r\n",
        ),
        (
            "/public/v6",
            "GET /public/v6 HTTP/1.1\r\nHost: [::1]:80\r\nConnection: close\r\n\r\n",
        ),
        (
            "/public/length",
            "POST /public/length HTTP/1.1\r\nHost: p\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
        ),
        (
            "/public/chunked",
            "POST /public/chunked HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: CHUNKED\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        ),
    ] {
        let response = RawResp::parse(&proxy.raw(head.as_bytes()).await);
        assert_eq!(response.status, 200, "{path}: {}", response.text);
        assert_eq!(upstream.last().path, path);
    }
    assert_eq!(upstream.only("/public/length").body_len, 3);
    assert_eq!(upstream.only("/public/chunked").body_len, 3);
}

/// HTTP/2: `Host` must agree with `:authority`, and `:authority` must be a plain host[:port].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_host_must_match_the_authority() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_std(&upstream).await;
    let mut sender = h2(&proxy).await;
    assert_eq!(
        h2_get(
            &mut sender,
            &proxy,
            "/public/h2-same",
            &[("host", &proxy.addr.to_string())]
        )
        .await,
        200
    );
    type Case<'a> = (&'a str, String, &'a [(&'a str, &'a str)]);
    let cases: [Case; 3] = [
        (
            "host-differs",
            format!("http://{}/public/h2-differs", proxy.addr),
            &[("host", "admin.internal")],
        ),
        (
            "host-invalid",
            format!("http://{}/public/h2-invalid-host", proxy.addr),
            &[("host", "a b")],
        ),
        (
            "authority-userinfo",
            format!("http://alice@{}/public/h2-userinfo", proxy.addr),
            &[],
        ),
    ];
    for (name, uri, headers) in cases {
        let mut request = hyper::Request::get(uri);
        for (header, value) in headers {
            request = request.header(*header, *value);
        }
        let response = tokio::time::timeout(
            DEADLINE,
            sender.send_request(request.body(Full::new(Bytes::new())).unwrap()),
        )
        .await
        .expect("in time")
        .expect("h2 response");
        assert_eq!(response.status(), 400, "{name}");
        let id = response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_string();
        let event = proxy.access_for(&id).await;
        assert_eq!(event["reason"], "malformed_request", "{name}: {event}");
    }
    let forwarded: Vec<String> = upstream.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(forwarded, ["/public/h2-same"]);
}
