//! Operations (SPEC §1 `explain`, §2 `[server.tls]` and `admin_listen`, §6): TLS termination
//! with a real rustls handshake (HTTP/1.1 and HTTP/2 over ALPN, certificate reload on SIGHUP),
//! the admin listener's `/healthz`, `/readyz` and `/metrics` with exact counter values, hot
//! reload of users, tokens and passwords (and of an invalid file), graceful shutdown on SIGTERM,
//! and `portcullis explain` agreeing with the running proxy.
//!
//! Every test runs the real binary on loopback with ports chosen by the kernel, signals it with
//! `kill`, and waits on conditions (log lines, metrics, connection refusal) with deadlines.

#[path = "../support/mod.rs"]
mod support;

mod admin;
mod explain;
mod reload;
mod shutdown;
mod tls;

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
