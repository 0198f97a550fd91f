//! Operations (SPEC §1 `explain`, §2 `[server.tls]` and `admin_listen`, §6): TLS termination
//! with a real rustls handshake (HTTP/1.1 and HTTP/2 over ALPN, certificate reload on SIGHUP),
//! the admin listener's `/healthz`, `/readyz` and `/metrics` with exact counter values, hot
//! reload of users, tokens and passwords (and of an invalid file), graceful shutdown on SIGTERM,
//! and `portcullis explain` agreeing with the running proxy.
//!
//! Every test runs the real binary on loopback with ports chosen by the kernel, signals it with
//! `kill`, and waits on conditions (log lines, metrics, connection refusal) with deadlines.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

// ---------------------------------------------------------------------------------------------
// Private helpers: the config shape, TLS clients, metrics parsing
// ---------------------------------------------------------------------------------------------

/// `[server]` with a kernel-chosen listen and admin address, then `server_extra` (which may
/// open `[server.tls]`), `[upstream]` and `body`.
fn config_text(upstream_url: &str, server_extra: &str, body: &str) -> String {
    format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nadmin_listen = \"127.0.0.1:0\"\n{server_extra}\n\n\
         [upstream]\nurl = \"{upstream_url}\"\n\n{body}\n"
    )
}

/// A self-signed certificate for `localhost` and 127.0.0.1: (cert PEM, key PEM, cert DER).
fn self_signed() -> (String, String, CertificateDer<'static>) {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("generate a certificate");
    (cert.pem(), signing_key.serialize_pem(), cert.der().clone())
}

/// `[server.tls]` pointing at `cert.pem` / `key.pem` in `dir` (written with `cert`/`key`).
fn tls_section(dir: &std::path::Path, cert: &str, key: &str) -> String {
    write_file(dir, "cert.pem", cert);
    write_file(dir, "key.pem", key);
    format!(
        "[server.tls]\ncert_file = '{}'\nkey_file = '{}'",
        dir.join("cert.pem").display(),
        dir.join("key.pem").display()
    )
}

/// A rustls client trusting exactly `roots`, offering `alpn`, limited to `versions`.
fn client_config(
    roots: &[&CertificateDer<'static>],
    alpn: &[&[u8]],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store
            .add((*root).clone())
            .expect("trust the test certificate");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .expect("protocol versions")
        .with_root_certificates(store)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// A TLS 1.2/1.3 client trusting `roots` and offering `alpn`.
fn client(roots: &[&CertificateDer<'static>], alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    client_config(
        roots,
        alpn,
        &[&rustls::version::TLS13, &rustls::version::TLS12],
    )
}

/// A TLS connection to `addr` for the name `localhost`.
async fn tls_connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let connector = tokio_rustls::TlsConnector::from(config);
    tokio::time::timeout(
        DEADLINE,
        connector.connect(ServerName::try_from("localhost").unwrap(), tcp),
    )
    .await
    .expect("TLS handshake in time")
}

/// The certificate the server presented on this connection.
fn presented(tls: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    tls.get_ref()
        .1
        .peer_certificates()
        .expect("server certificate")[0]
        .clone()
}

/// The ALPN protocol agreed on this connection.
fn alpn(tls: &TlsStream<TcpStream>) -> Option<Vec<u8>> {
    tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec)
}

/// HTTP/1.1 over an established TLS connection (kept alive for several requests).
async fn h1_over(
    tls: TlsStream<TcpStream>,
) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("HTTP/1.1 handshake");
    tokio::spawn(connection);
    sender
}

/// HTTP/2 over an established TLS connection.
async fn h2_over(
    tls: TlsStream<TcpStream>,
) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .expect("HTTP/2 handshake");
    tokio::spawn(connection);
    sender
}

fn request(uri: &str, headers: &[(&str, &str)]) -> hyper::Request<Full<Bytes>> {
    let mut builder = hyper::Request::get(uri);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Full::new(Bytes::new())).unwrap()
}

async fn collect(response: hyper::Response<hyper::body::Incoming>) -> Resp {
    let (parts, body) = response.into_parts();
    let body = tokio::time::timeout(DEADLINE, body.collect())
        .await
        .expect("response body in time")
        .expect("response body")
        .to_bytes();
    Resp {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    }
}

/// `GET path` on an HTTP/1.1 connection (waits for the connection to be ready again first).
async fn h1_get(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    path: &str,
    headers: &[(&str, &str)],
) -> Resp {
    let mut all = vec![("host", "localhost")];
    all.extend_from_slice(headers);
    let exchange = async {
        sender.ready().await.expect("connection ready");
        let response = sender
            .send_request(request(path, &all))
            .await
            .expect("HTTP/1.1 response");
        collect(response).await
    };
    tokio::time::timeout(DEADLINE, exchange)
        .await
        .expect("HTTP/1.1 exchange in time")
}

/// `GET https://localhost:PORT/path` on an HTTP/2 connection.
async fn h2_get(
    sender: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    addr: SocketAddr,
    path: &str,
) -> Resp {
    let uri = format!("https://localhost:{}{path}", addr.port());
    let exchange = async {
        sender.ready().await.expect("connection ready");
        let response = sender
            .send_request(request(&uri, &[]))
            .await
            .expect("HTTP/2 response");
        collect(response).await
    };
    tokio::time::timeout(DEADLINE, exchange)
        .await
        .expect("HTTP/2 exchange in time")
}

/// Writes `bytes` on a fresh TCP connection and reads whatever comes back until the server
/// closes (or resets) the connection.
async fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let _ = stream.write_all(bytes).await;
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
        out
    };
    tokio::time::timeout(DEADLINE, exchange)
        .await
        .expect("the server did not close the connection in time")
}

/// A hand-made ClientHello with `client_version` `version` and no `supported_versions`
/// extension, so the client offers that version and nothing newer. Its cipher suites and
/// extensions suit TLS 1.2 as well, so with `[3, 3]` the same bytes get a ServerHello.
fn client_hello(version: [u8; 2]) -> Vec<u8> {
    let mut hello = version.to_vec();
    hello.extend_from_slice(&[0x5a; 32]); // random
    hello.push(0); // no session id
                   // ECDHE-ECDSA/RSA with AES-GCM (TLS 1.2), then the CBC suites TLS 1.1 clients offer.
    let suites: [u16; 6] = [0xc02b, 0xc02f, 0xc013, 0xc014, 0x002f, 0x0035];
    hello.extend_from_slice(&u16::try_from(suites.len() * 2).unwrap().to_be_bytes());
    for suite in suites {
        hello.extend_from_slice(&suite.to_be_bytes());
    }
    hello.extend_from_slice(&[1, 0]); // compression: null only
    let name = b"localhost";
    let mut sni = Vec::new();
    sni.extend_from_slice(&u16::try_from(name.len() + 3).unwrap().to_be_bytes());
    sni.push(0);
    sni.extend_from_slice(&u16::try_from(name.len()).unwrap().to_be_bytes());
    sni.extend_from_slice(name);
    let extensions: [(u16, Vec<u8>); 4] = [
        (0x0000, sni),                          // server_name
        (0x000a, vec![0, 4, 0, 0x1d, 0, 0x17]), // supported_groups: x25519, secp256r1
        (0x000b, vec![1, 0]),                   // ec_point_formats: uncompressed
        (0x000d, vec![0, 6, 4, 3, 8, 4, 4, 1]), // signature_algorithms
    ];
    let mut encoded = Vec::new();
    for (kind, data) in extensions {
        encoded.extend_from_slice(&kind.to_be_bytes());
        encoded.extend_from_slice(&u16::try_from(data.len()).unwrap().to_be_bytes());
        encoded.extend_from_slice(&data);
    }
    hello.extend_from_slice(&u16::try_from(encoded.len()).unwrap().to_be_bytes());
    hello.extend_from_slice(&encoded);
    let mut handshake = vec![1]; // client_hello
    handshake.extend_from_slice(&u32::try_from(hello.len()).unwrap().to_be_bytes()[1..]);
    handshake.extend_from_slice(&hello);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&u16::try_from(handshake.len()).unwrap().to_be_bytes());
    record.extend_from_slice(&handshake);
    record
}

/// Sends `hello` and returns the first bytes the server answers with (until it closes or
/// sends at least one record header).
async fn first_record(addr: SocketAddr, hello: &[u8]) -> Vec<u8> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.write_all(hello).await.expect("send the ClientHello");
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while out.len() < 7 {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
        out
    };
    tokio::time::timeout(DEADLINE, exchange)
        .await
        .expect("an answer to the ClientHello in time")
}

/// The value of one series (`name{labels}`) in Prometheus text, if present.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?.strip_prefix(' ')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Asserts one series has exactly `expected`.
fn assert_metric(text: &str, series: &str, expected: f64) {
    assert_eq!(metric(text, series), Some(expected), "{series} in:\n{text}");
}

/// `GET /metrics` on the admin listener.
async fn scrape(proxy: &Proxy) -> String {
    let response = send(proxy.admin(), "GET", "/metrics", &[], Bytes::new()).await;
    assert_eq!(response.status, 200, "{}", response.text());
    response.text()
}

/// Scrapes until `series` has `expected` (counters updated after the response is written, and
/// connection gauges updated when the server notices a close, settle shortly after).
async fn wait_metric(proxy: &Proxy, series: &str, expected: f64) -> String {
    let start = Instant::now();
    loop {
        let text = scrape(proxy).await;
        if metric(&text, series) == Some(expected) {
            return text;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "{series} never became {expected}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends a request to the proxy's listener.
async fn get(proxy: &Proxy, path: &str, headers: &[(&str, &str)]) -> Resp {
    send(proxy.addr, "GET", path, headers, Bytes::new()).await
}

/// Asserts the status and the access event's decision and reason; returns the event.
async fn expect(
    proxy: &Proxy,
    response: &Resp,
    status: u16,
    decision: &str,
    reason: Option<&str>,
) -> Value {
    assert_eq!(response.status, status, "body: {}", response.text());
    let event = proxy.access_for(&response.request_id()).await;
    assert_eq!(event["status"], status, "{event}");
    assert_eq!(event["decision"], decision, "{event}");
    match reason {
        Some(reason) => assert_eq!(event["reason"], reason, "{event}"),
        None => assert!(event.get("reason").is_none_or(Value::is_null), "{event}"),
    }
    event
}

// ---------------------------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// Admin listener and metrics
// ---------------------------------------------------------------------------------------------

fn metrics_body() -> String {
    format!(
        r#"{}
[[route]]
path = "/public"
auth = []

[[route]]
path = "/admin"
auth = ["basic"]
realm = "Admin"
allow_users = ["alice"]

[[route]]
path = "/api"
auth = ["bearer"]
realm = "API"
"#,
        principals()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_a_known_mix_of_requests_exactly() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_in(
        tempfile::tempdir().unwrap(),
        &config_text(&upstream.url(), "", &metrics_body()),
    )
    .await;

    // Health and readiness (memory store).
    let health = send(proxy.admin(), "GET", "/healthz", &[], Bytes::new()).await;
    assert_eq!(health.status, 200, "{}", health.text());
    let ready = send(proxy.admin(), "GET", "/readyz", &[], Bytes::new()).await;
    assert_eq!(ready.status, 200, "{}", ready.text());
    assert_eq!(
        send(proxy.admin(), "GET", "/nothing", &[], Bytes::new())
            .await
            .status,
        404
    );

    // Before any request: families exist, counts are zero.
    let text = scrape(&proxy).await;
    assert!(
        text.contains("# TYPE portcullis_requests counter"),
        "{text}"
    );
    assert!(
        text.contains("# TYPE portcullis_auth_duration_seconds histogram"),
        "{text}"
    );
    assert_metric(&text, "portcullis_upstream_duration_seconds_count", 0.0);
    assert_metric(&text, "portcullis_live_sessions", 0.0);
    assert!(
        metric(
            &text,
            "portcullis_requests_total{route=\"/public\",status=\"2xx\"}"
        )
        .is_none(),
        "{text}"
    );

    // The mix.
    for n in 0..3 {
        let response = get(&proxy, &format!("/public/p{n}"), &[]).await;
        expect(&proxy, &response, 200, "allow", None).await;
    }
    for _ in 0..2 {
        let response = get(&proxy, "/admin", &[]).await;
        expect(&proxy, &response, 401, "deny", Some("missing_credentials")).await;
    }
    let response = get(
        &proxy,
        "/admin",
        &[("authorization", &basic("alice", WRONG_PW))],
    )
    .await;
    expect(&proxy, &response, 401, "deny", Some("bad_password")).await;
    let response = get(
        &proxy,
        "/admin",
        &[("authorization", &basic("alice", ALICE_PW))],
    )
    .await;
    expect(&proxy, &response, 200, "allow", None).await;
    let response = get(
        &proxy,
        "/admin",
        &[("authorization", &basic("bob", BOB_PW))],
    )
    .await;
    expect(&proxy, &response, 403, "deny", Some("user_not_allowed")).await;
    let response = get(&proxy, "/api/x", &[("authorization", &bearer(TOKEN))]).await;
    expect(&proxy, &response, 200, "allow", None).await;
    let response = get(
        &proxy,
        "/api/x",
        &[("authorization", &bearer(UNKNOWN_TOKEN))],
    )
    .await;
    expect(&proxy, &response, 401, "deny", Some("unknown_token")).await;
    let response = get(&proxy, "/nowhere", &[]).await;
    expect(&proxy, &response, 403, "deny", Some("no_route")).await;

    let text = wait_metric(
        &proxy,
        "portcullis_requests_total{route=\"none\",status=\"4xx\"}",
        1.0,
    )
    .await;
    assert_metric(
        &text,
        "portcullis_requests_total{route=\"/public\",status=\"2xx\"}",
        3.0,
    );
    // Every access line was written: none dropped (SPEC §5 counts drops here).
    assert_metric(&text, "portcullis_log_lines_dropped_total", 0.0);
    assert_metric(
        &text,
        "portcullis_requests_total{route=\"/admin\",status=\"2xx\"}",
        1.0,
    );
    assert_metric(
        &text,
        "portcullis_requests_total{route=\"/admin\",status=\"4xx\"}",
        4.0,
    );
    assert_metric(
        &text,
        "portcullis_requests_total{route=\"/api\",status=\"2xx\"}",
        1.0,
    );
    assert_metric(
        &text,
        "portcullis_requests_total{route=\"/api\",status=\"4xx\"}",
        1.0,
    );
    assert_metric(
        &text,
        "portcullis_denials_total{reason=\"missing_credentials\"}",
        2.0,
    );
    assert_metric(
        &text,
        "portcullis_denials_total{reason=\"bad_password\"}",
        1.0,
    );
    assert_metric(
        &text,
        "portcullis_denials_total{reason=\"user_not_allowed\"}",
        1.0,
    );
    assert_metric(
        &text,
        "portcullis_denials_total{reason=\"unknown_token\"}",
        1.0,
    );
    assert_metric(&text, "portcullis_denials_total{reason=\"no_route\"}", 1.0);
    assert!(
        metric(&text, "portcullis_denials_total{reason=\"unknown_user\"}").is_none(),
        "{text}"
    );
    // Verifications by scheme: basic for alice (wrong, right) and bob; bearer for both tokens.
    // A request without credentials verifies nothing.
    assert_metric(
        &text,
        "portcullis_auth_duration_seconds_count{scheme=\"basic\"}",
        3.0,
    );
    assert_metric(
        &text,
        "portcullis_auth_duration_seconds_count{scheme=\"bearer\"}",
        2.0,
    );
    assert!(
        metric(
            &text,
            "portcullis_auth_duration_seconds_count{scheme=\"session\"}"
        )
        .is_none(),
        "{text}"
    );
    let basic_sum = metric(
        &text,
        "portcullis_auth_duration_seconds_sum{scheme=\"basic\"}",
    )
    .expect("basic sum");
    assert!(basic_sum > 0.0, "{text}");
    // Forwarded: 3 public, alice on /admin, the token on /api.
    assert_metric(&text, "portcullis_upstream_duration_seconds_count", 5.0);
    assert!(
        metric(
            &text,
            "portcullis_upstream_errors_total{kind=\"unreachable\"}"
        )
        .is_none(),
        "{text}"
    );
    assert_metric(&text, "portcullis_live_sessions", 0.0);
    assert!(text.contains("# TYPE portcullis_reloads counter"), "{text}");
    assert!(
        metric(&text, "portcullis_reloads_total{outcome=\"success\"}").is_none(),
        "{text}"
    );
    // The exposition never names a user, a password or a token.
    for secret in ["alice", "bob", ALICE_PW, WRONG_PW, TOKEN, UNKNOWN_TOKEN] {
        assert!(!text.contains(secret), "/metrics mentions {secret:?}");
    }

    // Open connections: one held open counts, and closing it brings the gauge back to zero.
    wait_metric(&proxy, "portcullis_open_connections", 0.0).await;
    let held = TcpStream::connect(proxy.addr).await.unwrap();
    wait_metric(&proxy, "portcullis_open_connections", 1.0).await;
    drop(held);
    wait_metric(&proxy, "portcullis_open_connections", 0.0).await;

    // The admin paths are not served on the proxy's own listener: there they are ordinary
    // requests, routed (here: to no route) and counted like any other.
    for path in ["/metrics", "/healthz", "/readyz"] {
        let response = get(&proxy, path, &[]).await;
        assert!(
            !response.text().contains("portcullis_"),
            "{path} served metrics on the proxy port"
        );
        expect(&proxy, &response, 403, "deny", Some("no_route")).await;
    }
    let text = wait_metric(&proxy, "portcullis_denials_total{reason=\"no_route\"}", 4.0).await;
    assert_metric(
        &text,
        "portcullis_requests_total{route=\"none\",status=\"4xx\"}",
        4.0,
    );
    assert_metric(
        &text,
        "portcullis_requests_total{route=\"/public\",status=\"2xx\"}",
        3.0,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_upstream_failures_and_admin_paths_can_be_routed_upstream() {
    // Upstream down: 502, counted as an upstream error and an `upstream_unreachable` failure.
    let dead = dead_address().await;
    let body = "[[route]]\npath = \"/\"\nauth = []\n";
    let proxy = Proxy::start_in(
        tempfile::tempdir().unwrap(),
        &config_text(&format!("http://{dead}"), "", body),
    )
    .await;
    let response = get(&proxy, "/anything", &[]).await;
    expect(
        &proxy,
        &response,
        502,
        "error",
        Some("upstream_unreachable"),
    )
    .await;
    let text = wait_metric(
        &proxy,
        "portcullis_upstream_errors_total{kind=\"unreachable\"}",
        1.0,
    )
    .await;
    assert_metric(
        &text,
        "portcullis_denials_total{reason=\"upstream_unreachable\"}",
        1.0,
    );
    assert_metric(
        &text,
        "portcullis_requests_total{route=\"/\",status=\"5xx\"}",
        1.0,
    );
    assert_metric(&text, "portcullis_upstream_duration_seconds_count", 1.0);
    drop(proxy);

    // With a public catch-all route, /metrics on the proxy port goes to the upstream.
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_in(
        tempfile::tempdir().unwrap(),
        &config_text(&upstream.url(), "", body),
    )
    .await;
    let response = get(&proxy, "/metrics", &[]).await;
    assert_eq!(response.status, 200);
    assert_eq!(
        response.text(),
        "upstream ok",
        "the proxy answered /metrics itself"
    );
    assert_eq!(upstream.only("/metrics").method, "GET");
    let response = get(&proxy, "/healthz", &[]).await;
    assert_eq!(
        response.text(),
        "upstream ok",
        "the proxy answered /healthz itself"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_while_the_redis_session_store_is_unreachable() {
    let upstream = Upstream::start().await;
    let dead = dead_address().await;
    let body = format!(
        "{}\n[session]\nstore = \"redis\"\nredis_url = \"redis://{dead}/0\"\ncookie_secure = false\n\n\
         [[route]]\npath = \"/\"\nauth = [\"session\", \"basic\"]\n\n[[route]]\npath = \"/public\"\nauth = []\n",
        principals()
    );
    let proxy = Proxy::start_in(
        tempfile::tempdir().unwrap(),
        &config_text(&upstream.url(), "", &body),
    )
    .await;
    let health = send(proxy.admin(), "GET", "/healthz", &[], Bytes::new()).await;
    assert_eq!(health.status, 200, "the process is up: {}", health.text());
    let ready = send(proxy.admin(), "GET", "/readyz", &[], Bytes::new()).await;
    assert_eq!(ready.status, 503, "{}", ready.text());
    assert!(ready.text().contains("session store"), "{}", ready.text());
    // Not ready is not down: a public route still works.
    assert_eq!(get(&proxy, "/public/x", &[]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_until_the_jwks_url_was_fetched() {
    let upstream = Upstream::start().await;
    let dead = dead_address().await;
    let body = format!(
        "[jwt]\nissuer = \"https://id.test/\"\naudience = \"portcullis\"\nalgorithms = [\"RS256\"]\n\
         jwks_url = \"http://{dead}/jwks.json\"\n\n[[route]]\npath = \"/\"\nauth = [\"bearer\"]\n"
    );
    let proxy = Proxy::start_in(
        tempfile::tempdir().unwrap(),
        &config_text(&upstream.url(), "", &body),
    )
    .await;
    let health = send(proxy.admin(), "GET", "/healthz", &[], Bytes::new()).await;
    assert_eq!(health.status, 200, "{}", health.text());
    let ready = send(proxy.admin(), "GET", "/readyz", &[], Bytes::new()).await;
    assert_eq!(
        ready.status,
        503,
        "ready although no JWKS could be fetched: {}",
        ready.text()
    );
}

// ---------------------------------------------------------------------------------------------
// Hot reload
// ---------------------------------------------------------------------------------------------

const RELOAD_ROUTES: &str = r#"
[[route]]
path = "/"
auth = ["basic", "bearer"]
realm = "Main"
"#;

const ALICE_NEW_PW: &str = "alice-rotated-password-8812";
const CAROL_PW: &str = "carol-password-4471";

fn user(name: &str, hash: &str, group: &str) -> String {
    format!("[[users]]\nname = \"{name}\"\npassword_hash = \"{hash}\"\ngroups = [\"{group}\"]\n\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_users_tokens_and_passwords_at_once_and_keeps_serving_on_a_bad_file() {
    let upstream = Upstream::start().await;
    let token = format!(
        "[[tokens]]\nname = \"ci-bot\"\ntoken_sha256 = \"{}\"\ngroups = [\"ci\"]\n\n",
        sha256_hex(TOKEN.as_bytes())
    );
    let v1 = format!(
        "{}{}{token}{RELOAD_ROUTES}",
        user("alice", alice_hash(), "admins"),
        user("bob", bob_hash(), "staff")
    );
    let proxy = Proxy::start_in(
        tempfile::tempdir().unwrap(),
        &config_text(&upstream.url(), "", &v1),
    )
    .await;

    // Before: alice, bob and the token work (and the passwords are now cached as verified).
    for _ in 0..2 {
        expect(
            &proxy,
            &get(
                &proxy,
                "/a",
                &[("authorization", &basic("alice", ALICE_PW))],
            )
            .await,
            200,
            "allow",
            None,
        )
        .await;
        expect(
            &proxy,
            &get(&proxy, "/b", &[("authorization", &basic("bob", BOB_PW))]).await,
            200,
            "allow",
            None,
        )
        .await;
    }
    expect(
        &proxy,
        &get(&proxy, "/t", &[("authorization", &bearer(TOKEN))]).await,
        200,
        "allow",
        None,
    )
    .await;
    let carol = basic("carol", CAROL_PW);
    expect(
        &proxy,
        &get(&proxy, "/c", &[("authorization", &carol)]).await,
        401,
        "deny",
        Some("unknown_user"),
    )
    .await;
    // A keep-alive connection from before the reload.
    let stream = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut kept, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let kept_alice = basic("alice", ALICE_NEW_PW);
    assert_eq!(
        h1_get(
            &mut kept,
            "/kept",
            &[("authorization", &basic("alice", ALICE_PW))]
        )
        .await
        .status,
        200
    );

    // v2: bob and the token removed, carol added, alice's password changed.
    let alice_new_hash = bcrypt::hash(ALICE_NEW_PW, 4).unwrap();
    let carol_hash = bcrypt::hash(CAROL_PW, 4).unwrap();
    let v2 = format!(
        "{}{}{RELOAD_ROUTES}",
        user("alice", &alice_new_hash, "admins"),
        user("carol", &carol_hash, "staff")
    );
    let v2_text = config_text(&upstream.url(), "", &v2);
    proxy.rewrite_config(&v2_text);
    proxy.signal("HUP").await;
    proxy.wait_for_events("configuration reloaded", 1).await;

    // What changed is logged, by name only.
    let changes: Vec<String> = proxy
        .events_named("config change")
        .iter()
        .map(|e| e["change"].as_str().unwrap_or_default().to_string())
        .collect();
    for expected in [
        r#"user "carol" added"#,
        r#"user "bob" removed"#,
        r#"user "alice": password changed"#,
        r#"token "ci-bot" removed"#,
    ] {
        assert!(
            changes.iter().any(|c| c == expected),
            "no change line {expected:?} in {changes:#?}"
        );
    }
    assert!(
        !changes.iter().any(|c| c.contains("route")),
        "routes did not change: {changes:#?}"
    );

    // At once: bob (verified and cached a moment ago) is refused, and so is the removed token
    // and alice's old password; carol and alice's new password work.
    let response = get(&proxy, "/b", &[("authorization", &basic("bob", BOB_PW))]).await;
    expect(&proxy, &response, 401, "deny", Some("unknown_user")).await;
    let response = get(&proxy, "/t", &[("authorization", &bearer(TOKEN))]).await;
    expect(&proxy, &response, 401, "deny", Some("unknown_token")).await;
    let response = get(
        &proxy,
        "/a",
        &[("authorization", &basic("alice", ALICE_PW))],
    )
    .await;
    expect(&proxy, &response, 401, "deny", Some("bad_password")).await;
    let response = get(
        &proxy,
        "/a",
        &[("authorization", &basic("alice", ALICE_NEW_PW))],
    )
    .await;
    let event = expect(&proxy, &response, 200, "allow", None).await;
    assert_eq!(event["user"], "alice");
    let response = get(&proxy, "/c", &[("authorization", &carol)]).await;
    let event = expect(&proxy, &response, 200, "allow", None).await;
    assert_eq!(event["user"], "carol");
    // The connection opened before the reload carries on, under the new config.
    let response = h1_get(&mut kept, "/kept", &[("authorization", &kept_alice)]).await;
    assert_eq!(response.status, 200, "{}", response.text());
    let response = h1_get(
        &mut kept,
        "/kept",
        &[("authorization", &basic("alice", ALICE_PW))],
    )
    .await;
    assert_eq!(response.status, 401, "{}", response.text());

    // v3: invalid (an unknown key). The exact error is logged; v2 keeps serving.
    let v3_text = format!("{v2_text}\n[[route]]\npath = \"/typo\"\nrealmm = \"oops\"\nauth = []\n");
    let bad_line = v3_text
        .lines()
        .position(|l| l.starts_with("realmm"))
        .unwrap()
        + 1;
    proxy.rewrite_config(&v3_text);
    proxy.signal("HUP").await;
    let failures = proxy
        .wait_for_events("reload failed: keeping the running configuration", 1)
        .await;
    let failure = &failures[0];
    assert_eq!(failure["level"], "ERROR", "{failure}");
    let error = failure["error"].as_str().expect("the error is logged");
    let place = format!("{}:{bad_line}:1", proxy.config_path.display());
    assert!(
        error.starts_with(&place),
        "the error should start with {place}: {error}"
    );
    assert!(error.contains("realmm"), "{error}");
    assert_eq!(
        proxy.events_named("configuration reloaded").len(),
        1,
        "an invalid file was reported as loaded"
    );

    let response = get(&proxy, "/c", &[("authorization", &carol)]).await;
    expect(&proxy, &response, 200, "allow", None).await;
    let response = get(&proxy, "/b", &[("authorization", &basic("bob", BOB_PW))]).await;
    expect(&proxy, &response, 401, "deny", Some("unknown_user")).await;
    let response = get(&proxy, "/typo", &[]).await;
    assert_eq!(response.status, 401, "the invalid file's route took effect");

    let text = scrape(&proxy).await;
    assert_metric(&text, "portcullis_reloads_total{outcome=\"success\"}", 1.0);
    assert_metric(&text, "portcullis_reloads_total{outcome=\"failure\"}", 1.0);

    // The reload log names no secret: no hash, no password, no token.
    let output = proxy.all_output();
    for secret in [
        alice_hash(),
        bob_hash(),
        alice_new_hash.as_str(),
        carol_hash.as_str(),
        ALICE_PW,
        ALICE_NEW_PW,
        BOB_PW,
        CAROL_PW,
        TOKEN,
        &sha256_hex(TOKEN.as_bytes()),
    ] {
        assert!(
            !output.contains(secret),
            "the log contains a secret ({secret})"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Graceful shutdown
// ---------------------------------------------------------------------------------------------

/// Whether a new TCP connection to `addr` is refused.
async fn refused(addr: SocketAddr) -> bool {
    matches!(
        TcpStream::connect(addr).await,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_the_in_flight_request_refuses_new_connections_and_exits_0() {
    let upstream = Upstream::start().await;
    let grace = Duration::from_secs(10);
    let body = "[[route]]\npath = \"/public\"\nauth = []\n";
    let mut proxy = Proxy::start_in(
        tempfile::tempdir().unwrap(),
        &config_text(&upstream.url(), "shutdown_grace = \"10s\"", body),
    )
    .await;
    let addr = proxy.addr;

    // An idle keep-alive connection, which shutdown may simply close.
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut idle, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    assert_eq!(h1_get(&mut idle, "/public/warm", &[]).await.status, 200);

    // The upstream takes 3 s to answer `/slow`.
    let slow =
        tokio::spawn(async move { send(addr, "GET", "/public/slow", &[], Bytes::new()).await });
    upstream.wait_for_requests(2).await;
    let signalled = Instant::now();
    proxy.signal("TERM").await;

    // New connections are refused while the slow request is still in flight.
    let start = Instant::now();
    while !refused(addr).await {
        assert!(
            start.elapsed() < DEADLINE,
            "new connections were still accepted after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !slow.is_finished(),
        "the slow request finished before the listener closed"
    );
    proxy
        .wait_for_events("shutting down: no longer accepting connections", 1)
        .await;

    // The in-flight request completes normally.
    let response = slow.await.expect("the slow request");
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.text(), "slow ok");
    let event = proxy.access_for(&response.request_id()).await;
    assert_eq!(event["status"], 200, "{event}");

    // Then the process exits 0, well within the grace period.
    let status = proxy.wait_exit(grace + Duration::from_secs(5)).await;
    assert!(
        status.success(),
        "exit status {status}:\n{}",
        proxy.all_output()
    );
    assert!(
        signalled.elapsed() < grace,
        "exit took {:?}",
        signalled.elapsed()
    );
    assert_eq!(
        proxy.events_named("all connections closed").len(),
        1,
        "{}",
        proxy.all_output()
    );
    assert!(proxy
        .events_named("grace period over: closing the remaining connections")
        .is_empty());
    assert!(
        refused(proxy.admin()).await,
        "the admin listener outlived the process"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_gives_up_on_requests_after_the_grace_period() {
    let upstream = Upstream::start().await;
    let body = "[[route]]\npath = \"/public\"\nauth = []\n";
    let mut proxy = Proxy::start_in(
        tempfile::tempdir().unwrap(),
        &config_text(&upstream.url(), "shutdown_grace = \"500ms\"", body),
    )
    .await;
    let addr = proxy.addr;

    // A request the upstream answers only after 3 s: longer than the grace period.
    let slow = tokio::spawn(async move {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(connection);
        let request = request("/public/slow", &[("host", "localhost")]);
        match sender.send_request(request).await {
            Ok(response) => Some(response.status().as_u16()),
            Err(_) => None,
        }
    });
    upstream.wait_for_requests(1).await;
    let signalled = Instant::now();
    proxy.signal("TERM").await;

    let status = proxy.wait_exit(Duration::from_secs(10)).await;
    let took = signalled.elapsed();
    assert!(
        status.success(),
        "exit status {status}:\n{}",
        proxy.all_output()
    );
    assert!(
        took >= Duration::from_millis(450),
        "exited after {took:?}, before the grace period"
    );
    let outcome = tokio::time::timeout(DEADLINE, slow)
        .await
        .expect("the client noticed")
        .unwrap();
    assert_eq!(
        outcome, None,
        "the slow request was answered although the grace period was over"
    );
    proxy
        .wait_for_events("grace period over: closing the remaining connections", 1)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_right_after_listening_still_exits_0() {
    let upstream = Upstream::start().await;
    let body = "[[route]]\npath = \"/\"\nauth = []\n";
    let text = config_text(&upstream.url(), "", body);
    // The window is a few microseconds wide: try several times.
    for attempt in 0..20 {
        let dir = tempfile::tempdir().unwrap();
        let config = write_file(dir.path(), "portcullis.toml", &text);
        let mut child = std::process::Command::new(binary())
            .args([
                "run",
                "--config",
                config.to_str().unwrap(),
                "--log-format",
                "json",
            ])
            .env_remove("RUST_LOG")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        loop {
            line.clear();
            let n = std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
            assert!(n > 0, "the proxy ended before logging `listening`");
            if line.contains("\"message\":\"listening\"") {
                break;
            }
        }
        let kill = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(kill.success());
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        let status = child.wait().unwrap();
        assert!(
            status.success(),
            "attempt {attempt}: SIGTERM right after `listening` gave {status}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// explain
// ---------------------------------------------------------------------------------------------

fn explain_body() -> String {
    format!(
        r#"{}
[[route]]
path = "/admin"
auth = ["basic"]
realm = "Admin"
methods = ["GET"]
allow_groups = ["admins"]

[[route]]
path = "/app"
auth = ["basic", "bearer"]
realm = "App"

[[route]]
path = "/pub"
auth = []
"#,
        principals()
    )
}

/// Runs `portcullis explain --config FILE ARGS…` and returns its lines as (key, value) pairs.
fn explain(config: &std::path::Path, args: &[&str]) -> Vec<(String, String)> {
    let mut all = vec!["explain", "--config", config.to_str().unwrap()];
    all.extend_from_slice(args);
    let (code, stdout, stderr) = run_cli(&all, None);
    assert_eq!(code, 0, "explain {args:?} failed: {stdout}{stderr}");
    stdout
        .lines()
        .map(|line| {
            let (key, value) = line
                .split_once(':')
                .unwrap_or_else(|| panic!("explain line without a key: {line:?}"));
            (key.to_string(), value.trim().to_string())
        })
        .collect()
}

fn field<'a>(lines: &'a [(String, String)], key: &str) -> Option<&'a str> {
    lines
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// One explain case and the same request sent to the running proxy.
struct Case {
    args: &'static [&'static str],
    /// `allow`, or the deny reason.
    outcome: &'static str,
    /// The route line, if one matched.
    route: Option<&'static str>,
    /// The real request: method, path, Authorization, expected status.
    real: Option<RealRequest>,
}

/// Method, path, Basic user and password, expected status.
type RealRequest = (
    &'static str,
    &'static str,
    Option<(&'static str, &'static str)>,
    u16,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_gives_the_decision_and_reason_the_proxy_logs() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_in(
        tempfile::tempdir().unwrap(),
        &config_text(&upstream.url(), "", &explain_body()),
    )
    .await;
    let config = proxy.config_path.clone();

    const ALICE: Option<(&str, &str)> = Some(("alice", ALICE_PW));
    const BOB: Option<(&str, &str)> = Some(("bob", BOB_PW));
    let cases = [
        Case {
            args: &["GET", "/admin/panel", "--user", "alice"],
            outcome: "allow",
            route: Some("/admin"),
            real: Some(("GET", "/admin/panel", ALICE, 200)),
        },
        Case {
            args: &["GET", "/admin", "--user", "bob"],
            outcome: "user_not_allowed",
            route: Some("/admin"),
            real: Some(("GET", "/admin", BOB, 403)),
        },
        Case {
            args: &["POST", "/admin", "--user", "alice"],
            outcome: "method_not_allowed",
            route: Some("/admin"),
            real: Some(("POST", "/admin", ALICE, 405)),
        },
        Case {
            args: &["GET", "/admin"],
            outcome: "missing_credentials",
            route: Some("/admin"),
            real: Some(("GET", "/admin", None, 401)),
        },
        Case {
            args: &["GET", "/a/%2e%2e/b", "--user", "alice"],
            outcome: "ambiguous_path",
            route: None,
            real: Some(("GET", "/a/%2e%2e/b", ALICE, 400)),
        },
        Case {
            args: &["GET", "/nowhere", "--user", "alice"],
            outcome: "no_route",
            route: None,
            real: Some(("GET", "/nowhere", ALICE, 403)),
        },
        Case {
            args: &["GET", "/admin", "--user", "mallory"],
            outcome: "unknown_user",
            route: Some("/admin"),
            real: Some(("GET", "/admin", Some(("mallory", WRONG_PW)), 401)),
        },
        Case {
            args: &["GET", "/app/x?q=1", "--user", "bob"],
            outcome: "allow",
            route: Some("/app"),
            real: Some(("GET", "/app/x?q=1", BOB, 200)),
        },
        Case {
            args: &["GET", "/pub/page"],
            outcome: "allow",
            route: Some("/pub"),
            real: Some(("GET", "/pub/page", None, 200)),
        },
        // --groups replaces the configured groups.
        Case {
            args: &["GET", "/admin", "--user", "bob", "--groups", "staff,admins"],
            outcome: "allow",
            route: Some("/admin"),
            real: None,
        },
        Case {
            args: &["GET", "/admin", "--user", "alice", "--groups", "staff"],
            outcome: "user_not_allowed",
            route: Some("/admin"),
            real: None,
        },
    ];

    for case in &cases {
        let lines = explain(&config, case.args);
        let context = format!("explain {:?}:\n{lines:#?}", case.args);
        let expected_request = format!("{} {}", case.args[0], case.args[1]);
        assert_eq!(
            field(&lines, "request"),
            Some(expected_request.as_str()),
            "{context}"
        );
        assert_eq!(field(&lines, "route"), case.route, "{context}");
        let explained_detail = field(&lines, "detail").map(str::to_string);
        if case.outcome == "allow" {
            assert_eq!(field(&lines, "decision"), Some("allow"), "{context}");
            assert_eq!(field(&lines, "reason"), None, "{context}");
        } else {
            assert_eq!(field(&lines, "decision"), Some("deny"), "{context}");
            assert_eq!(field(&lines, "reason"), Some(case.outcome), "{context}");
            assert!(
                explained_detail.as_deref().is_some_and(|d| !d.is_empty()),
                "{context}"
            );
        }

        let Some((method, path, credentials, status)) = case.real else {
            continue;
        };
        let authorization = credentials.map(|(u, p)| basic(u, p));
        let headers: Vec<(&str, &str)> = authorization
            .iter()
            .map(|a| ("authorization", a.as_str()))
            .collect();
        let response = send(proxy.addr, method, path, &headers, Bytes::new()).await;
        let event = if case.outcome == "allow" {
            expect(&proxy, &response, status, "allow", None).await
        } else {
            expect(&proxy, &response, status, "deny", Some(case.outcome)).await
        };
        assert_eq!(event["route"].as_str(), case.route, "{context}\n{event}");
        // Decisions made by the shared policy functions carry the very same detail.
        if matches!(
            case.outcome,
            "user_not_allowed" | "method_not_allowed" | "ambiguous_path" | "no_route"
        ) {
            assert_eq!(
                event["detail"].as_str(),
                explained_detail.as_deref(),
                "{context}\n{event}"
            );
        }
    }

    // The report's other lines, for an admitted request.
    let lines = explain(&config, &["get", "/admin//panel/./x", "--user", "alice"]);
    assert_eq!(
        field(&lines, "normalised"),
        Some("/admin/panel/x (matched as /admin/panel/x)"),
        "{lines:#?}"
    );
    assert_eq!(field(&lines, "accepts"), Some("basic"), "{lines:#?}");
    assert_eq!(
        field(&lines, "user"),
        Some("alice (groups: admins) via basic"),
        "{lines:#?}"
    );
    assert_eq!(field(&lines, "identity"), Some("alice"), "{lines:#?}");
    assert_eq!(field(&lines, "decision"), Some("allow"), "{lines:#?}");
    // The qualified identity: what allow_users matches and identity_header carries.
    for user in ["ci-bot", "token:ci-bot"] {
        let lines = explain(&config, &["GET", "/app", "--user", user]);
        assert_eq!(
            field(&lines, "identity"),
            Some("token:ci-bot"),
            "{lines:#?}"
        );
    }
    let lines = explain(&config, &["GET", "/app", "--user", "token:alice"]);
    assert_eq!(field(&lines, "reason"), Some("unknown_token"), "{lines:#?}");
    let lines = explain(&config, &["GET", "/app", "--user", "ci-bot"]);
    assert_eq!(
        field(&lines, "accepts"),
        Some("basic, bearer"),
        "{lines:#?}"
    );
    assert_eq!(
        field(&lines, "user"),
        Some("ci-bot (groups: ci) via bearer"),
        "{lines:#?}"
    );
    assert_eq!(field(&lines, "decision"), Some("allow"), "{lines:#?}");
    let lines = explain(
        &config,
        &["GET", "/admin", "--user", "bob", "--groups", "staff,admins"],
    );
    assert_eq!(
        field(&lines, "user"),
        Some("bob (groups: staff, admins) via basic"),
        "{lines:#?}"
    );
    let lines = explain(&config, &["GET", "/pub"]);
    assert_eq!(
        field(&lines, "accepts"),
        Some("public (no credentials)"),
        "{lines:#?}"
    );

    // A token on a Basic-only route: no usable credential, for explain and for the proxy.
    let lines = explain(&config, &["GET", "/admin", "--user", "ci-bot"]);
    assert_eq!(
        field(&lines, "reason"),
        Some("missing_credentials"),
        "{lines:#?}"
    );
    let response = get(&proxy, "/admin", &[("authorization", &bearer(TOKEN))]).await;
    expect(&proxy, &response, 401, "deny", Some("missing_credentials")).await;
    let lines = explain(&config, &["GET", "/app", "--user", "ci-bot"]);
    assert_eq!(field(&lines, "decision"), Some("allow"), "{lines:#?}");
    let response = get(&proxy, "/app", &[("authorization", &bearer(TOKEN))]).await;
    expect(&proxy, &response, 200, "allow", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_fails_cleanly_on_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let good = write_file(
        dir.path(),
        "good.toml",
        &config_text("http://127.0.0.1:9", "", &explain_body()),
    );
    let bad_text = format!(
        "{}\n[[route]]\npath = \"/x\"\nrealmm = \"y\"\nauth = []\n",
        config_text("http://127.0.0.1:9", "", &explain_body())
    );
    let bad_line = bad_text
        .lines()
        .position(|l| l.starts_with("realmm"))
        .unwrap()
        + 1;
    let bad = write_file(dir.path(), "bad.toml", &bad_text);

    let (code, _, stderr) = run_cli(
        &["explain", "--config", bad.to_str().unwrap(), "GET", "/"],
        None,
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&format!("{}:{bad_line}:1", bad.display())),
        "{stderr}"
    );

    let (code, _, stderr) = run_cli(
        &["explain", "--config", good.to_str().unwrap(), "GE T", "/"],
        None,
    );
    assert_eq!(code, 2, "{stderr}");

    let (code, _, stderr) = run_cli(&["explain", "GET", "/"], None);
    assert_eq!(code, 2, "{stderr}");
}
