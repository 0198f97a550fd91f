//! Clients: hyper over a fresh connection, raw bytes over TCP, WebSockets.

use super::*;

/// A response read by [`send`].
#[derive(Debug, Clone)]
pub struct Resp {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

impl Resp {
    /// The only value of `name`; panics if it appears more than once.
    pub fn header(&self, name: &str) -> Option<String> {
        let all = self.header_all(name);
        assert!(
            all.len() <= 1,
            "response header {name} appears {} times: {all:?}",
            all.len()
        );
        all.into_iter().next()
    }

    /// Every value of `name`, in order.
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }

    /// The `X-Request-Id` (panics if missing).
    pub fn request_id(&self) -> String {
        self.header("x-request-id")
            .expect("X-Request-Id on the response")
    }
}

/// Sends one HTTP/1.1 request over a fresh connection and reads the whole response.
/// A `Host` header is added unless `headers` has one.
pub async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Resp {
    let body: Bytes = body.into();
    let exchange = async {
        let stream = TcpStream::connect(addr)
            .await
            .expect("connect to the proxy");
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("HTTP/1.1 handshake");
        tokio::spawn(connection);
        let mut builder = Request::builder().method(method).uri(path);
        if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
            builder = builder.header("host", addr.to_string());
        }
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let request = builder.body(Full::new(body)).expect("valid request");
        let response = sender
            .send_request(request)
            .await
            .expect("response from the proxy");
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("response body").to_bytes();
        Resp {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        }
    };
    tokio::time::timeout(DEADLINE, exchange)
        .await
        .unwrap_or_else(|_| panic!("{method} {path}: no complete response in time"))
}

/// Writes `request` on a fresh connection and reads until the server closes it.
/// Write errors are ignored (the server may answer and close before reading everything).
pub async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let exchange = async {
        let stream = TcpStream::connect(addr)
            .await
            .expect("connect to the proxy");
        let (mut reader, mut writer) = stream.into_split();
        let request = request.to_vec();
        let writing = tokio::spawn(async move {
            let _ = writer.write_all(&request).await;
            let _ = writer.flush().await;
            writer
        });
        let mut out = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(err) => {
                    if out.is_empty() {
                        panic!("reading the raw response failed before any byte: {err}");
                    }
                    break;
                }
            }
        }
        drop(writing.await);
        String::from_utf8_lossy(&out).into_owned()
    };
    tokio::time::timeout(DEADLINE, exchange)
        .await
        .expect("the proxy did not answer and close the raw connection in time")
}

/// A raw HTTP/1.1 response, parsed just enough for assertions.
#[derive(Debug, Clone)]
pub struct RawResp {
    /// Status code (0 if there was no status line).
    pub status: u16,
    /// Header lines, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// Everything after the blank line.
    pub body: String,
    /// The whole response.
    pub text: String,
}

impl RawResp {
    /// Parses the first response in `text`.
    pub fn parse(text: &str) -> RawResp {
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text, ""));
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        RawResp {
            status,
            headers,
            body: body.to_string(),
            text: text.to_string(),
        }
    }

    /// The first value of `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `name`, in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// One WebSocket round trip helper: connects to `ws://addr/path` with extra headers.
pub async fn websocket(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<tokio_tungstenite::WebSocketStream<TcpStream>, tokio_tungstenite::tungstenite::Error> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = format!("ws://{addr}{path}").into_client_request().unwrap();
    for (name, value) in headers {
        request.headers_mut().insert(
            hyper::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    let stream = TcpStream::connect(addr)
        .await
        .expect("connect to the proxy");
    let (ws, _response) =
        tokio::time::timeout(DEADLINE, tokio_tungstenite::client_async(request, stream))
            .await
            .expect("websocket handshake in time")?;
    Ok(ws)
}

/// Sends a message and waits for the next data message.
pub async fn ws_roundtrip(
    ws: &mut tokio_tungstenite::WebSocketStream<TcpStream>,
    message: tokio_tungstenite::tungstenite::Message,
) -> tokio_tungstenite::tungstenite::Message {
    ws.send(message).await.expect("websocket send");
    loop {
        let next = tokio::time::timeout(DEADLINE, ws.next())
            .await
            .expect("websocket echo in time")
            .expect("websocket still open")
            .expect("websocket message");
        if next.is_text() || next.is_binary() {
            return next;
        }
    }
}

/// Asserts what every response the proxy makes itself must carry: `Cache-Control: no-store`
/// and an `X-Request-Id` matching the access event.
pub async fn assert_proxy_made(
    proxy: &Proxy,
    response: &Resp,
    status: u16,
    decision: &str,
    reason: &str,
) -> Value {
    assert_eq!(response.status, status, "status; body: {}", response.text());
    assert_eq!(
        response.header("cache-control").as_deref(),
        Some("no-store"),
        "{response:?}"
    );
    let event = proxy.access_of(response).await;
    assert_eq!(event["status"], status, "{event}");
    assert_eq!(event["decision"], decision, "{event}");
    assert_eq!(event["reason"], reason, "{event}");
    assert!(
        event["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "a refusal's access event has a human detail: {event}"
    );
    event
}
