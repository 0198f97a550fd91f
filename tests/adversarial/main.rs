//! The adversarial suite (issue 5): a real proxy binary in front of a real recording upstream,
//! attacked the way published advisories attacked nginx, Traefik, Envoy, oauth2-proxy and
//! Spring/Tomcat. Every test asserts on what the upstream actually received (or that it
//! received nothing), not only on status codes.
//!
//! Complements tests/routing.rs (the big hostile-path table), tests/forwarding.rs (basic
//! identity-header spoofing and Connection handling) and tests/connections.rs (idle clients,
//! the first smuggling attempts): nothing here repeats a case from those files.
//!
//! Run with `cargo test --test adversarial -- --nocapture` to see the flood measurements.

#[path = "../support/mod.rs"]
mod support;

mod flood;
mod lockout;
mod paths;
mod shape;
mod slow_clients;
mod smuggling;
mod spoofing;
mod tunnels;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// The identity headers the standard config sets (default names).
const IDENTITY: [&str; 4] = [
    "x-forwarded-user",
    "x-forwarded-groups",
    "x-forwarded-auth-method",
    "x-forwarded-identity",
];

/// `Authorization: Basic …\r\n` for a raw request.
fn basic_line(user: &str, password: &str) -> String {
    format!("Authorization: {}\r\n", basic(user, password))
}

/// The status of every response in a raw exchange, in order (bodies are skipped by their
/// `Content-Length` or chunked framing, so a body never passes for a response).
fn statuses(text: &str) -> Vec<u16> {
    let mut out = Vec::new();
    let mut rest = text;
    while rest.starts_with("HTTP/1.") {
        let Some((head, after)) = rest.split_once("\r\n\r\n") else {
            out.push(rest.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0));
            break;
        };
        let status: u16 = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
        out.push(status);
        let header = |name: &str| {
            head.split("\r\n").skip(1).find_map(|line| {
                let (n, v) = line.split_once(':')?;
                n.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_ascii_lowercase())
            })
        };
        rest = if (100..200).contains(&status) || status == 204 || status == 304 {
            after
        } else if let Some(len) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
            after.get(len..).unwrap_or("")
        } else if header("transfer-encoding").is_some_and(|v| v.ends_with("chunked")) {
            let mut body = after;
            loop {
                let Some((size, data)) = body.split_once("\r\n") else {
                    break "";
                };
                let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
                    .unwrap_or(0);
                if size == 0 {
                    break data.split_once("\r\n").map_or("", |(_, r)| r);
                }
                body = data.get(size + 2..).unwrap_or("");
            }
        } else {
            ""
        };
    }
    out
}

/// The upstream must hold exactly the proxy's identity, once per header, and no other header
/// whose name, lower-cased with `_` read as `-`, is an identity header. `identity` is the
/// qualified identity (`bob`, `token:ci-bot`); the user header carries its bare name.
fn assert_identity(seen: &Recorded, identity: &str, groups: &str, method: &str) {
    let user = identity.split_once(':').map_or(identity, |(_, name)| name);
    assert_eq!(
        seen.header_all("x-forwarded-identity"),
        vec![identity],
        "{:?}",
        seen.headers
    );
    assert_eq!(
        seen.header_all("x-forwarded-user"),
        vec![user],
        "{:?}",
        seen.headers
    );
    assert_eq!(
        seen.header_all("x-forwarded-groups"),
        vec![groups],
        "{:?}",
        seen.headers
    );
    assert_eq!(
        seen.header_all("x-forwarded-auth-method"),
        vec![method],
        "{:?}",
        seen.headers
    );
    assert_no_identity_lookalikes(seen);
}

/// No header name other than the canonical one reads as an identity header.
fn assert_no_identity_lookalikes(seen: &Recorded) {
    for name in seen.header_names() {
        let folded = name.to_ascii_lowercase().replace('_', "-");
        if IDENTITY.contains(&folded.as_str()) {
            assert_eq!(
                name, folded,
                "upstream received a look-alike identity header {name}: {:?}",
                seen.headers
            );
        }
        assert!(
            !matches!(
                folded.as_str(),
                "remote-user" | "x-remote-user" | "x-auth-request-user"
            ),
            "upstream received {name}: {:?}",
            seen.headers
        );
    }
}

/// A keep-alive HTTP/1.1 client: one connection, reopened if the proxy closes it.
struct KeepAlive {
    addr: SocketAddr,
    sender: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>>,
}

impl KeepAlive {
    fn new(addr: SocketAddr) -> Self {
        KeepAlive { addr, sender: None }
    }

    async fn connect(&mut self) {
        let stream = TcpStream::connect(self.addr).await.expect("connect");
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(connection);
        self.sender = Some(sender);
    }

    /// Sends one request; returns (status, body).
    async fn send(&mut self, method: &str, path: &str, headers: &[(&str, &str)]) -> (u16, Bytes) {
        for _attempt in 0..3 {
            let ready = match self.sender.as_mut() {
                Some(sender) => sender.ready().await.is_ok(),
                None => false,
            };
            if !ready {
                self.connect().await;
            }
            let mut request = hyper::Request::builder()
                .method(method)
                .uri(path)
                .header("host", "proxy.test");
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            let request = request.body(Full::new(Bytes::new())).unwrap();
            let sender = self.sender.as_mut().unwrap();
            match tokio::time::timeout(DEADLINE, sender.send_request(request)).await {
                Ok(Ok(response)) => {
                    let status = response.status().as_u16();
                    let body = response.into_body().collect().await;
                    match body {
                        Ok(body) => return (status, body.to_bytes()),
                        Err(_) => self.sender = None,
                    }
                }
                Ok(Err(_)) => self.sender = None,
                Err(_) => panic!("{method} {path}: no response in time"),
            }
        }
        panic!("{method} {path}: the connection failed three times");
    }
}

/// An h2c (prior knowledge) connection to the proxy.
async fn h2(proxy: &Proxy) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
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
) -> u16 {
    let mut request = hyper::Request::get(format!("http://{}{path}", proxy.addr));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = tokio::time::timeout(
        DEADLINE,
        sender.send_request(request.body(Full::new(Bytes::new())).unwrap()),
    )
    .await
    .expect("h2 response in time")
    .expect("h2 response");
    let status = response.status().as_u16();
    let _ = response.into_body().collect().await;
    status
}

/// Tests that load the CPU (the flood) or measure time (lockouts, slowloris) run one at a
/// time, so that one's load cannot make another's timing assertion fail.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// p-th percentile (0..=100) of durations, in milliseconds.
fn percentile_ms(samples: &[Duration], p: usize) -> f64 {
    let mut sorted: Vec<Duration> = samples.to_vec();
    sorted.sort();
    let index = ((sorted.len() * p).div_ceil(100)).clamp(1, sorted.len()) - 1;
    sorted[index].as_secs_f64() * 1000.0
}

// ---------------------------------------------------------------------------------------------
// Brute-force protection
// ---------------------------------------------------------------------------------------------

/// bcrypt hash (cost 12, a few hundred milliseconds per verification) of [`HEAVY_PW`].
const HEAVY_PW: &str = "heavy-user-password-1";

fn heavy_hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| bcrypt::hash(HEAVY_PW, 12).unwrap())
}

/// Standard users plus `heavy`, the standard routes, a trusted loopback proxy (so tests pick
/// the client IP with `X-Forwarded-For`), and second-scale brute-force limits.
fn limited(upstream: &Upstream, trusted: bool, rate_limit: &str) -> ProxyConfig {
    let body = format!(
        "[rate_limit]\n{rate_limit}\n\n[[users]]\nname = \"heavy\"\npassword_hash = \"{}\"\ngroups = []\n{}",
        heavy_hash(),
        std_body()
    );
    let config = ProxyConfig::new(upstream.url(), body);
    if trusted {
        config.server("trusted_proxies = [\"127.0.0.1/32\"]")
    } else {
        config
    }
}

/// `GET path` with Basic credentials from `ip` (via X-Forwarded-For); returns the response and
/// how long it took.
async fn attempt(
    proxy: &Proxy,
    path: &str,
    ip: &str,
    user: &str,
    password: &str,
) -> (Resp, Duration) {
    let credential = basic(user, password);
    let start = Instant::now();
    let response = proxy
        .get(
            path,
            &[("authorization", &credential), ("x-forwarded-for", ip)],
        )
        .await;
    (response, start.elapsed())
}

async fn assert_rate_limited(proxy: &Proxy, response: &Resp, max_retry: u64) {
    assert_proxy_made(proxy, response, 429, "deny", "rate_limited").await;
    let retry: u64 = response
        .header("retry-after")
        .expect("Retry-After on a 429")
        .parse()
        .expect("Retry-After in whole seconds");
    assert!((1..=max_retry).contains(&retry), "Retry-After {retry}");
}
