//! Upgrades and tunnels: h2c smuggling (a request sent inside a tunnel the upstream opened
//! reaches it with no authentication) and WebSocket smuggling (a proxy that trusts any 101).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use tokio::net::TcpListener;

use super::*;

/// How the switching upstream answers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Switch {
    /// A request with `Upgrade` gets 101 with the request's own `Upgrade` value (and the right
    /// `Sec-WebSocket-Accept` when it has a key); then the upstream reads HTTP/1.1 requests
    /// inside the tunnel, as an h2c server reads the client's frames: whatever reaches it
    /// there skipped the proxy's checks. Other requests get 200.
    Anything,
    /// Every request gets `101 Upgrade: h2c`, asked for or not.
    H2cAlways,
    /// Every request gets `101 Upgrade: websocket` with an accept that matches no key.
    WrongAccept,
}

/// A raw HTTP/1.1 upstream that switches protocols when the proxy lets it.
struct Switching {
    addr: SocketAddr,
    /// Every request head received, in order, inside tunnels too.
    heads: Arc<Mutex<Vec<String>>>,
    /// Bytes received after a 101 on a connection that is not read as HTTP (`H2cAlways`,
    /// `WrongAccept`).
    tunnel_bytes: Arc<Mutex<Vec<u8>>>,
    /// Connections the proxy closed after a 101 (`H2cAlways`, `WrongAccept`).
    closed_after_101: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Switching {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Switching {
    async fn start(mode: Switch) -> Switching {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heads: Arc<Mutex<Vec<String>>> = Arc::default();
        let tunnel_bytes: Arc<Mutex<Vec<u8>>> = Arc::default();
        let closed_after_101 = Arc::new(AtomicUsize::new(0));
        let (h, t, c) = (
            heads.clone(),
            tunnel_bytes.clone(),
            closed_after_101.clone(),
        );
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(switching_connection(
                    stream,
                    mode,
                    h.clone(),
                    t.clone(),
                    c.clone(),
                ));
            }
        });
        Switching {
            addr,
            heads,
            tunnel_bytes,
            closed_after_101,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }

    async fn wait_closed_after_101(&self, n: usize) {
        let start = Instant::now();
        while self.closed_after_101.load(Ordering::SeqCst) < n {
            assert!(
                start.elapsed() < DEADLINE,
                "the proxy kept {} upstream connection(s) open after a refused 101",
                n - self.closed_after_101.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The value of header `name` in a raw head (case-insensitive name).
fn head_header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n").skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Reads one head (up to the blank line) from `buf`/`stream`; None at EOF.
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end + 4);
            return Some(head);
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

async fn switching_connection(
    mut stream: TcpStream,
    mode: Switch,
    heads: Arc<Mutex<Vec<String>>>,
    tunnel_bytes: Arc<Mutex<Vec<u8>>>,
    closed_after_101: Arc<AtomicUsize>,
) {
    let mut buf = Vec::new();
    while let Some(head) = read_head(&mut stream, &mut buf).await {
        heads.lock().unwrap().push(head.clone());
        let upgrade = head_header(&head, "upgrade").map(str::to_string);
        let answer = match (mode, upgrade) {
            (Switch::Anything, Some(upgrade)) => {
                let accept = head_header(&head, "sec-websocket-key")
                    .map(|key| {
                        tokio_tungstenite::tungstenite::handshake::derive_accept_key(
                            key.as_bytes(),
                        )
                    })
                    .map(|accept| format!("Sec-WebSocket-Accept: {accept}\r\n"))
                    .unwrap_or_default();
                format!(
                    "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: {upgrade}\r\n{accept}\r\n"
                )
            }
            (Switch::Anything, None) => {
                "HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nupstream ok".to_string()
            }
            (Switch::H2cAlways, _) => {
                "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
                    .to_string()
            }
            (Switch::WrongAccept, _) => "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n".to_string(),
        };
        if stream.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
        if mode != Switch::Anything {
            // Switched: whatever comes now is tunnel traffic, until the proxy closes.
            tunnel_bytes.lock().unwrap().extend_from_slice(&buf);
            let mut chunk = [0u8; 4096];
            loop {
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => tunnel_bytes.lock().unwrap().extend_from_slice(&chunk[..n]),
                }
            }
            closed_after_101.fetch_add(1, Ordering::SeqCst);
            return;
        }
    }
}

/// Reads one response from the proxy: its status (0 if the connection closed first).
async fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> u16 {
    let Ok(Some(head)) = tokio::time::timeout(DEADLINE, read_head(stream, buf)).await else {
        return 0;
    };
    let status: u16 = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let len: usize = head_header(&head, "content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < len {
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout(DEADLINE, stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => break,
        }
    }
    buf.drain(..len.min(buf.len()));
    status
}

/// A request for `/admin/secret` that claims to be alice and carries no credential: it must
/// never reach the upstream.
const SMUGGLED: &str =
    "GET /admin/secret HTTP/1.1\r\nHost: p\r\nX-Forwarded-User: alice\r\nX-Forwarded-Groups: admin\r\n\r\n";

/// The h2c smuggling attack (published against Traefik, Envoy and nginx set-ups): an upgrade
/// to h2c on a route the attacker may use, an upstream that switches, then a request for a
/// route they may not use, sent inside the tunnel. The upgrade must be forwarded as a plain
/// request, and the request after it is judged by the proxy like any other: 401, never
/// reaching the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_and_other_upgrades_are_forwarded_as_plain_requests_and_nothing_is_smuggled() {
    let upstream = Switching::start(Switch::Anything).await;
    let proxy = ProxyConfig::new(upstream.url(), std_body()).start().await;
    let bob = basic_line("bob", BOB_PW);
    let cases = [
        // Public route, h2c as curl --http2 sends it.
        (
            "/public/x",
            "",
            "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n",
        ),
        // A signed-in user who may not use /admin, upgrading on a route they may use.
        (
            "/x",
            bob.as_str(),
            "Connection: upgrade\r\nUpgrade: H2C\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n",
        ),
        ("/public/tls", "", "Connection: Upgrade\r\nUpgrade: TLS/1.2\r\n"),
        (
            "/public/list",
            "",
            "Connection: Upgrade\r\nUpgrade: h2c, websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
        ),
        (
            "/public/two",
            "",
            "Connection: Upgrade\r\nUpgrade: websocket\r\nUpgrade: h2c\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
        ),
    ];
    for (path, auth, upgrade) in cases {
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        let mut buf = Vec::new();
        let request = format!("GET {path} HTTP/1.1\r\nHost: p\r\n{auth}{upgrade}\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let first = read_response(&mut stream, &mut buf).await;
        assert_eq!(
            first, 200,
            "{path}: the upgrade is answered as a plain request"
        );
        stream.write_all(SMUGGLED.as_bytes()).await.unwrap();
        let second = read_response(&mut stream, &mut buf).await;
        assert_eq!(
            second, 401,
            "{path}: the request after it is judged by the proxy"
        );
    }
    let heads = upstream.heads();
    assert_eq!(heads.len(), cases.len(), "{heads:#?}");
    for head in &heads {
        assert!(
            !head.contains("/admin/secret"),
            "a smuggled request reached the upstream: {heads:#?}"
        );
        assert_eq!(head_header(head, "upgrade"), None, "{head}");
        assert_eq!(head_header(head, "http2-settings"), None, "{head}");
        assert!(
            !head_header(head, "connection")
                .is_some_and(|c| c.to_ascii_lowercase().contains("upgrade")),
            "{head}"
        );
    }
    assert!(
        heads
            .iter()
            .any(|h| h.starts_with("GET /x ") && head_header(h, "x-forwarded-user") == Some("bob")),
        "{heads:#?}"
    );
}

/// An upstream that answers 101 with anything but the WebSocket handshake the client asked
/// for (another protocol, a wrong accept, or a switch nobody asked for) gets no tunnel: the
/// client gets 502, the upstream connection is closed, and what the client sends next is
/// judged as a request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_101_without_the_websocket_handshake_is_a_502_and_no_tunnel() {
    const WEBSOCKET: &str = "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let cases = [
        (Switch::H2cAlways, ""),
        (Switch::H2cAlways, WEBSOCKET),
        (Switch::WrongAccept, WEBSOCKET),
        (Switch::WrongAccept, ""),
    ];
    for (n, (mode, upgrade)) in cases.into_iter().enumerate() {
        let upstream = Switching::start(mode).await;
        let proxy = ProxyConfig::new(upstream.url(), std_body()).start().await;
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        let mut buf = Vec::new();
        let request = format!("GET /public/ws HTTP/1.1\r\nHost: p\r\n{upgrade}\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let first = read_response(&mut stream, &mut buf).await;
        assert_eq!(first, 502, "case {n}: a 101 that is no WebSocket handshake");
        let event = &proxy.wait_for_access(1).await[0];
        assert_eq!(event["status"], 502, "{event}");
        assert_eq!(event["decision"], "error", "{event}");
        assert_eq!(event["reason"], "upstream_unreachable", "{event}");
        upstream.wait_closed_after_101(1).await;
        // The client's connection is still HTTP: a smuggling attempt is judged, and refused.
        if stream.write_all(SMUGGLED.as_bytes()).await.is_ok() {
            let second = read_response(&mut stream, &mut buf).await;
            assert!(matches!(second, 0 | 401), "case {n}: {second}");
        }
        assert!(
            upstream.tunnel_bytes.lock().unwrap().is_empty(),
            "case {n}: bytes reached the upstream through a tunnel: {:?}",
            String::from_utf8_lossy(&upstream.tunnel_bytes.lock().unwrap())
        );
        assert_eq!(
            upstream.heads().len(),
            1,
            "case {n}: {:#?}",
            upstream.heads()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Open tunnels keep to the connection limits
// ---------------------------------------------------------------------------------------------

/// `portcullis_open_connections` on the admin listener.
async fn open_connections(proxy: &Proxy) -> Option<f64> {
    let response = send(proxy.admin(), "GET", "/metrics", &[], Bytes::new()).await;
    response.text().lines().find_map(|line| {
        line.strip_prefix("portcullis_open_connections ")?
            .trim()
            .parse()
            .ok()
    })
}

/// Scrapes until the gauge reads `expected`.
async fn wait_open_connections(proxy: &Proxy, expected: f64) {
    let start = Instant::now();
    loop {
        let now = open_connections(proxy).await;
        if now == Some(expected) {
            return;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "portcullis_open_connections is {now:?}, expected {expected}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the WebSocket is closed by the other side (no data message comes first).
async fn wait_ws_closed(ws: &mut tokio_tungstenite::WebSocketStream<TcpStream>, what: &str) {
    loop {
        match tokio::time::timeout(DEADLINE, ws.next()).await {
            Err(_) => panic!("{what}: the tunnel is still open"),
            Ok(None | Some(Err(_))) => return,
            Ok(Some(Ok(message))) if message.is_close() => return,
            Ok(Some(Ok(message))) if message.is_ping() || message.is_pong() => continue,
            Ok(Some(Ok(message))) => panic!("{what}: unexpected message {message:?}"),
        }
    }
}

fn ws_text(n: usize) -> tokio_tungstenite::tungstenite::Message {
    tokio_tungstenite::tungstenite::Message::Text(format!("hello {n}"))
}

/// With `max_connections = 2`, two open WebSockets take both slots: a third connection waits
/// (as any connection past the limit does) until one of them closes, and the gauge counts the
/// tunnels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_tunnels_hold_their_connection_slots_and_count_as_open() {
    let upstream = Upstream::start().await;
    let proxy = ProxyConfig::new(upstream.url(), std_body())
        .server("max_connections = 2\nadmin_listen = \"127.0.0.1:0\"")
        .start()
        .await;
    let mut first = websocket(proxy.addr, "/public/1/ws", &[]).await.unwrap();
    let mut second = websocket(proxy.addr, "/public/2/ws", &[]).await.unwrap();
    assert_eq!(ws_roundtrip(&mut first, ws_text(1)).await, ws_text(1));
    assert_eq!(ws_roundtrip(&mut second, ws_text(2)).await, ws_text(2));
    wait_open_connections(&proxy, 2.0).await;

    let addr = proxy.addr;
    let mut third = tokio::spawn(async move { websocket(addr, "/public/3/ws", &[]).await });
    // A negative can only be shown over a span: the third handshake gets a fair chance, and
    // must not reach the upstream while both slots are held.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        upstream.requests().len(),
        2,
        "a third connection was served past max_connections = 2: {:#?}",
        upstream.requests()
    );
    assert!(!third.is_finished());
    wait_open_connections(&proxy, 2.0).await;

    // Closing one tunnel frees its slot: the waiting connection is served.
    first.close(None).await.unwrap();
    drop(first);
    let mut third = tokio::time::timeout(DEADLINE, &mut third)
        .await
        .expect("the third connection is served once a tunnel closed")
        .unwrap()
        .expect("third upgrade");
    assert_eq!(ws_roundtrip(&mut third, ws_text(3)).await, ws_text(3));
    assert_eq!(ws_roundtrip(&mut second, ws_text(4)).await, ws_text(4));
    assert_eq!(upstream.requests().len(), 3);
    wait_open_connections(&proxy, 2.0).await;
    drop((second, third));
    wait_open_connections(&proxy, 0.0).await;
}

/// A tunnel that moves no byte for `tunnel_idle_timeout` is closed; one in use stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tunnel_is_closed_and_an_active_one_stays() {
    let upstream = Upstream::start().await;
    let proxy = ProxyConfig::new(upstream.url(), std_body())
        .server("tunnel_idle_timeout = \"1s\"\nadmin_listen = \"127.0.0.1:0\"")
        .start()
        .await;
    let mut idle = websocket(proxy.addr, "/public/idle/ws", &[]).await.unwrap();
    let mut active = websocket(proxy.addr, "/public/active/ws", &[])
        .await
        .unwrap();
    assert_eq!(ws_roundtrip(&mut idle, ws_text(0)).await, ws_text(0));
    wait_open_connections(&proxy, 2.0).await;
    // The active one talks every 200 ms, for well over the idle limit, while the idle one
    // is closed.
    let closer = tokio::spawn(async move {
        wait_ws_closed(&mut idle, "the idle tunnel").await;
    });
    let start = Instant::now();
    let mut n = 1;
    while !closer.is_finished() || start.elapsed() < Duration::from_millis(2500) {
        assert!(start.elapsed() < DEADLINE, "the idle tunnel stayed open");
        assert_eq!(ws_roundtrip(&mut active, ws_text(n)).await, ws_text(n));
        n += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    closer.await.unwrap();
    assert_eq!(ws_roundtrip(&mut active, ws_text(n)).await, ws_text(n));
    wait_open_connections(&proxy, 1.0).await;
}

/// At shutdown an open tunnel keeps working for `shutdown_grace`, then is closed and the
/// process exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_a_tunnel_after_the_grace_period() {
    let upstream = Upstream::start().await;
    let mut proxy = ProxyConfig::new(upstream.url(), std_body())
        .server("shutdown_grace = \"3s\"")
        .start()
        .await;
    let mut ws = websocket(proxy.addr, "/public/ws", &[]).await.unwrap();
    assert_eq!(ws_roundtrip(&mut ws, ws_text(0)).await, ws_text(0));
    proxy.signal("TERM").await;
    proxy
        .wait_for_events("shutting down: no longer accepting connections", 1)
        .await;
    // Without an open request the process would be gone by now; the tunnel keeps it up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(ws_roundtrip(&mut ws, ws_text(1)).await, ws_text(1));
    wait_ws_closed(&mut ws, "the tunnel after the grace period").await;
    let status = proxy.wait_exit(DEADLINE).await;
    assert!(status.success(), "{status}: {}", proxy.all_output());
}
