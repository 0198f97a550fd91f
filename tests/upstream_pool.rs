//! The upstream connection pool: keep-alive connections are reused, one the upstream closed
//! while idle is replaced without the client noticing, and `https://` upstreams work through
//! it with `ca_file`.

mod support;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use support::*;

const PUBLIC_ONLY: &str = "[[route]]\npath = \"/public\"\nauth = []\n";

/// An HTTP/1.1 upstream that counts the connections it accepted and records each `Host`.
struct Counting {
    addr: std::net::SocketAddr,
    connections: Arc<AtomicUsize>,
    hosts: Arc<Mutex<Vec<String>>>,
}

async fn counting_upstream(tls: Option<tokio_rustls::TlsAcceptor>) -> Counting {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let hosts: Arc<Mutex<Vec<String>>> = Arc::default();
    let (count, seen) = (connections.clone(), hosts.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let seen = seen.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let host = req
                        .headers()
                        .get(hyper::header::HOST)
                        .and_then(|h| h.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    seen.lock().unwrap().push(host);
                    async {
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("pooled ok"))))
                    }
                });
                let builder = hyper::server::conn::http1::Builder::new();
                match tls {
                    None => {
                        let _ = builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    }
                    Some(acceptor) => {
                        if let Ok(stream) = acceptor.accept(stream).await {
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                    }
                }
            });
        }
    });
    Counting {
        addr,
        connections,
        hosts,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_requests_reuse_one_upstream_connection() {
    let upstream = counting_upstream(None).await;
    let proxy = ProxyConfig::new(format!("http://{}", upstream.addr), PUBLIC_ONLY)
        .start()
        .await;
    for i in 0..20 {
        let response = proxy.get(&format!("/public/{i}"), &[]).await;
        assert_eq!(response.status, 200);
        assert_eq!(response.text(), "pooled ok");
    }
    assert_eq!(upstream.connections.load(Ordering::SeqCst), 1);
    let hosts = upstream.hosts.lock().unwrap().clone();
    assert!(
        hosts.iter().all(|h| *h == upstream.addr.to_string()),
        "{hosts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_the_upstream_closed_is_replaced() {
    // Answers one request per connection with a keep-alive response, then closes the
    // connection shortly after, without saying so: what an upstream's keep-alive timeout does.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let count = connections.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut read = 0;
                while !buf[..read].windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf[read..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => read += n,
                    }
                }
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            });
        }
    });
    let proxy = ProxyConfig::new(format!("http://{addr}"), PUBLIC_ONLY)
        .start()
        .await;
    for _ in 0..3 {
        let response = proxy.get("/public/x", &[]).await;
        assert_eq!(response.status, 200);
        assert_eq!(response.text(), "ok");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(connections.load(Ordering::SeqCst), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstream_with_ca_file() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::try_from(signing_key.serialize_der()).unwrap();
    let server = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key)
        .unwrap();
    let upstream = counting_upstream(Some(tokio_rustls::TlsAcceptor::from(Arc::new(server)))).await;
    let port = upstream.addr.port();
    let proxy = ProxyConfig::new(format!("https://localhost:{port}"), PUBLIC_ONLY)
        .upstream("ca_file = \"ca.pem\"")
        .file("ca.pem", &cert.pem())
        .start()
        .await;
    for _ in 0..3 {
        let response = proxy.get("/public/x", &[]).await;
        assert_eq!(response.status, 200);
        assert_eq!(response.text(), "pooled ok");
    }
    assert_eq!(upstream.connections.load(Ordering::SeqCst), 1);
    let hosts = upstream.hosts.lock().unwrap().clone();
    assert!(
        hosts.iter().all(|h| *h == format!("localhost:{port}")),
        "{hosts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_response_timeout_applies_on_a_reused_connection() {
    // `slow` answers after 3 s; the timeout is 1 s.
    let upstream = Upstream::start().await;
    let proxy = ProxyConfig::new(upstream.url(), PUBLIC_ONLY)
        .upstream("response_timeout = \"1s\"")
        .start()
        .await;
    assert_eq!(proxy.get("/public/fast", &[]).await.status, 200);
    // Idle past a whole timeout: the pooled connection's timer has fired meanwhile.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(proxy.get("/public/fast", &[]).await.status, 200);
    let started = std::time::Instant::now();
    let response = proxy.get("/public/slow", &[]).await;
    let took = started.elapsed();
    assert_eq!(response.status, 504);
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
        "{took:?}"
    );
    assert_eq!(proxy.get("/public/fast", &[]).await.status, 200);
    assert_eq!(upstream.requests().len(), 4);
}
