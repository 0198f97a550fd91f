//! TLS termination: a real rustls handshake, HTTP/1.1 and HTTP/2 by ALPN, old versions and plain HTTP refused, the certificate reloaded on SIGHUP.

use super::*;

const TLS_ROUTES: &str = r#"
[[route]]
path = "/"
auth = ["basic"]
realm = "Main"

[[route]]
path = "/public"
auth = []
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_http1_and_http2_by_alpn() {
    let upstream = Upstream::start().await;
    let (cert, key, der) = self_signed();
    let dir = tempfile::tempdir().unwrap();
    let tls = tls_section(dir.path(), &cert, &key);
    let body = format!("{}{TLS_ROUTES}", principals());
    let proxy = Proxy::start_in(dir, &config_text(&upstream.url(), &tls, &body)).await;

    // HTTP/1.1, chosen by ALPN.
    let stream = tls_connect(proxy.addr, client(&[&der], &[b"http/1.1"]))
        .await
        .expect("TLS handshake");
    assert_eq!(alpn(&stream).as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(presented(&stream), der);
    let mut h1 = h1_over(stream).await;
    let response = h1_get(&mut h1, "/public/one", &[]).await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.text(), "upstream ok");
    let event = expect(&proxy, &response, 200, "allow", None).await;
    assert_eq!(event["tls"], true, "{event}");
    assert_eq!(event["http_version"], "HTTP/1.1", "{event}");
    let seen = upstream.only("/public/one");
    assert_eq!(
        seen.header("x-forwarded-proto").as_deref(),
        Some("https"),
        "{seen:?}"
    );
    // Authentication works the same under TLS (and on the same kept-alive connection).
    let response = h1_get(
        &mut h1,
        "/private",
        &[("authorization", &basic("alice", ALICE_PW))],
    )
    .await;
    let event = expect(&proxy, &response, 200, "allow", None).await;
    assert_eq!(event["user"], "alice", "{event}");
    assert_eq!(
        upstream
            .only("/private")
            .header("x-forwarded-proto")
            .as_deref(),
        Some("https")
    );

    // HTTP/2, chosen by ALPN.
    let stream = tls_connect(proxy.addr, client(&[&der], &[b"h2"]))
        .await
        .expect("TLS handshake");
    assert_eq!(alpn(&stream).as_deref(), Some(&b"h2"[..]));
    let mut h2 = h2_over(stream).await;
    let response = h2_get(&mut h2, proxy.addr, "/public/two").await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.text(), "upstream ok");
    let event = expect(&proxy, &response, 200, "allow", None).await;
    assert_eq!(event["tls"], true, "{event}");
    assert_eq!(event["http_version"], "HTTP/2.0", "{event}");
    let seen = upstream.only("/public/two");
    assert_eq!(
        seen.header("x-forwarded-proto").as_deref(),
        Some("https"),
        "{seen:?}"
    );
    // Several streams on the one connection.
    let mut second = h2.clone();
    let (x, y) = tokio::join!(
        h2_get(&mut h2, proxy.addr, "/public/three"),
        h2_get(&mut second, proxy.addr, "/public/four")
    );
    assert_eq!((x.status, y.status), (200, 200));

    // A client offering no ALPN at all gets HTTP/1.1.
    let stream = tls_connect(proxy.addr, client(&[&der], &[]))
        .await
        .expect("TLS handshake");
    assert_eq!(alpn(&stream), None);
    let mut plain_alpn = h1_over(stream).await;
    let response = h1_get(&mut plain_alpn, "/public/five", &[]).await;
    let event = expect(&proxy, &response, 200, "allow", None).await;
    assert_eq!(event["http_version"], "HTTP/1.1", "{event}");
    assert_eq!(event["tls"], true, "{event}");

    // A client that does not trust the certificate cannot talk to it (the server really
    // presents this certificate and nothing else).
    let (_, _, other) = self_signed();
    let refused = tls_connect(proxy.addr, client(&[&other], &[b"http/1.1"])).await;
    assert!(
        refused.is_err(),
        "a handshake trusting another certificate succeeded"
    );
}

/// Under TLS the protocol ALPN chose is the only one spoken: HTTP/1.1 on a connection that
/// negotiated `h2`, or HTTP/2 on one that negotiated `http/1.1` (or nothing), ends the
/// connection and reaches no upstream (h2spec http2/3.5/2 over TLS).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_only_the_protocol_alpn_chose() {
    let upstream = Upstream::start().await;
    let (cert, key, der) = self_signed();
    let dir = tempfile::tempdir().unwrap();
    let tls = tls_section(dir.path(), &cert, &key);
    let body = format!("{}{TLS_ROUTES}", principals());
    let proxy = Proxy::start_in(dir, &config_text(&upstream.url(), &tls, &body)).await;

    // HTTP/1.1 on an h2 connection.
    let stream = tls_connect(proxy.addr, client(&[&der], &[b"h2"]))
        .await
        .expect("TLS handshake");
    assert_eq!(alpn(&stream).as_deref(), Some(&b"h2"[..]));
    let exchange = async {
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let request = request("/public/h1-on-h2", &[("host", "localhost")]);
        sender.send_request(request).await.map(|r| r.status())
    };
    let answered = tokio::time::timeout(DEADLINE, exchange)
        .await
        .expect("an answer or a close in time");
    assert!(
        answered.is_err(),
        "HTTP/1.1 was served on an h2 connection: {answered:?}"
    );

    // HTTP/2 on an http/1.1 connection, and on one without ALPN.
    for offered in [&[&b"http/1.1"[..]][..], &[]] {
        let stream = tls_connect(proxy.addr, client(&[&der], offered))
            .await
            .expect("TLS handshake");
        assert_ne!(alpn(&stream).as_deref(), Some(&b"h2"[..]));
        let uri = format!("https://localhost:{}/public/h2-on-h1", proxy.addr.port());
        let exchange = async {
            let (mut sender, connection) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                    .await?;
            tokio::spawn(connection);
            sender
                .send_request(request(&uri, &[]))
                .await
                .map(|r| r.status())
        };
        let answered = tokio::time::timeout(DEADLINE, exchange)
            .await
            .expect("an answer or a close in time");
        assert!(
            answered.is_err(),
            "HTTP/2 was served on a connection offering {offered:?}: {answered:?}"
        );
    }
    assert!(upstream.requests().is_empty(), "{:#?}", upstream.requests());

    // The negotiated protocol still works on the same listener.
    let stream = tls_connect(proxy.addr, client(&[&der], &[b"h2"]))
        .await
        .expect("TLS handshake");
    let mut h2 = h2_over(stream).await;
    assert_eq!(h2_get(&mut h2, proxy.addr, "/public/h2").await.status, 200);
    let stream = tls_connect(proxy.addr, client(&[&der], &[b"http/1.1"]))
        .await
        .expect("TLS handshake");
    let mut h1 = h1_over(stream).await;
    assert_eq!(h1_get(&mut h1, "/public/h1", &[]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listener_refuses_plain_http_and_tls_below_1_2() {
    let upstream = Upstream::start().await;
    let (cert, key, der) = self_signed();
    let dir = tempfile::tempdir().unwrap();
    let tls = tls_section(dir.path(), &cert, &key);
    let body = format!("{}{TLS_ROUTES}", principals());
    let proxy = Proxy::start_in(dir, &config_text(&upstream.url(), &tls, &body)).await;

    // Plain text on the TLS port: closed (or answered with an error), never served.
    let answer = raw_exchange(
        proxy.addr,
        b"GET /public/plain HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    let text = String::from_utf8_lossy(&answer);
    assert!(
        !text.contains("200 OK") && !text.contains("upstream ok"),
        "plain HTTP was served on the TLS port: {text:?}"
    );
    if text.starts_with("HTTP/") {
        assert!(
            text.starts_with("HTTP/1.1 400"),
            "plain HTTP on the TLS port: {text:?}"
        );
    }
    assert!(
        upstream.requests().is_empty(),
        "plain HTTP reached the upstream"
    );

    // A client that offers only TLS 1.1 gets a fatal alert (handshake_failure or
    // protocol_version), never a ServerHello...
    let answer = first_record(proxy.addr, &client_hello([3, 2])).await;
    assert!(
        answer.len() >= 7,
        "the server closed without an alert: {answer:02x?}"
    );
    assert_eq!(
        answer[0], 0x15,
        "expected a TLS alert record, got {answer:02x?}"
    );
    assert_eq!(answer[5], 2, "expected a fatal alert: {answer:02x?}");
    assert!(
        matches!(answer[6], 40 | 70),
        "expected handshake_failure or protocol_version: {answer:02x?}"
    );
    // ... while the very same ClientHello saying TLS 1.2 gets one: it is the version that is
    // refused, not something else in the hand-made hello.
    let answer = first_record(proxy.addr, &client_hello([3, 3])).await;
    assert!(
        answer.len() >= 6,
        "no answer to a TLS 1.2 ClientHello: {answer:02x?}"
    );
    assert_eq!(
        (answer[0], answer[5]),
        (0x16, 2),
        "expected a ServerHello, got {answer:02x?}"
    );

    // A TLS 1.2-only client is accepted and served.
    let stream = tls_connect(
        proxy.addr,
        client_config(&[&der], &[b"http/1.1"], &[&rustls::version::TLS12]),
    )
    .await
    .expect("TLS 1.2 handshake");
    assert_eq!(
        stream.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    let mut h1 = h1_over(stream).await;
    let response = h1_get(&mut h1, "/public/tls12", &[]).await;
    let event = expect(&proxy, &response, 200, "allow", None).await;
    assert_eq!(event["tls"], true, "{event}");

    // And TLS 1.3 is what a modern client gets.
    let stream = tls_connect(proxy.addr, client(&[&der], &[b"http/1.1"]))
        .await
        .expect("TLS 1.3 handshake");
    assert_eq!(
        stream.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_certificate_reloads_on_sighup_without_dropping_connections() {
    let upstream = Upstream::start().await;
    let (cert_a, key_a, der_a) = self_signed();
    let (cert_b, key_b, der_b) = self_signed();
    assert_ne!(der_a, der_b);
    let dir = tempfile::tempdir().unwrap();
    let tls = tls_section(dir.path(), &cert_a, &key_a);
    let body = format!("{}{TLS_ROUTES}", principals());
    let proxy = Proxy::start_in(dir, &config_text(&upstream.url(), &tls, &body)).await;
    let trust_both = client(&[&der_a, &der_b], &[b"http/1.1"]);

    // A keep-alive connection made before the reload, on certificate A.
    let stream = tls_connect(proxy.addr, trust_both.clone())
        .await
        .expect("TLS handshake");
    assert_eq!(presented(&stream), der_a);
    let mut before = h1_over(stream).await;
    assert_eq!(h1_get(&mut before, "/public/before", &[]).await.status, 200);

    // New certificate files, then SIGHUP.
    write_file(proxy.dir(), "cert.pem", &cert_b);
    write_file(proxy.dir(), "key.pem", &key_b);
    proxy.signal("HUP").await;
    proxy.wait_for_events("configuration reloaded", 1).await;

    // New connections get certificate B.
    let stream = tls_connect(proxy.addr, trust_both.clone())
        .await
        .expect("TLS handshake after reload");
    assert_eq!(
        presented(&stream),
        der_b,
        "a new connection still gets the old certificate"
    );
    let mut after = h1_over(stream).await;
    let response = h1_get(&mut after, "/public/after", &[]).await;
    let event = expect(&proxy, &response, 200, "allow", None).await;
    assert_eq!(event["tls"], true, "{event}");
    // A client that trusts only the old certificate can no longer connect.
    assert!(tls_connect(proxy.addr, client(&[&der_a], &[b"http/1.1"]))
        .await
        .is_err());

    // The connection opened before the reload still works, several times over.
    for n in 0..3 {
        let response = h1_get(&mut before, &format!("/public/still-{n}"), &[]).await;
        assert_eq!(
            response.status,
            200,
            "the pre-reload connection broke: {}",
            response.text()
        );
    }
    assert!(!before.is_closed());

    // An unusable certificate file: the reload fails and certificate B stays.
    write_file(proxy.dir(), "cert.pem", "not a certificate\n");
    proxy.signal("HUP").await;
    let failures = proxy
        .wait_for_events("reload failed: keeping the running configuration", 1)
        .await;
    assert_eq!(failures[0]["level"], "ERROR", "{}", failures[0]);
    let error = failures[0]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("cert.pem"),
        "the error names the certificate file: {error}"
    );
    let stream = tls_connect(proxy.addr, trust_both)
        .await
        .expect("TLS handshake after the failed reload");
    assert_eq!(presented(&stream), der_b);
}
