//! The recording upstream: a real hyper server on loopback that records what it received.

use super::*;

/// One request as the upstream received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The method.
    pub method: String,
    /// The request target exactly as received (path and query).
    pub uri: String,
    /// The path part of the target.
    pub path: String,
    /// The query part, if any.
    pub query: Option<String>,
    /// The headers as received.
    pub headers: HeaderMap,
    /// How many body bytes arrived (0 when the handler did not read the body).
    pub body_len: usize,
    /// SHA-256 (hex) of the body bytes that arrived.
    pub body_sha256: String,
    /// HTTP version of the upstream request.
    pub version: String,
}

impl Recorded {
    /// The only value of `name`, or `None`; panics if the header arrived more than once.
    pub fn header(&self, name: &str) -> Option<String> {
        let mut all = self.headers.get_all(name).iter();
        let first = all.next()?;
        assert!(
            all.next().is_none(),
            "upstream received header {name} more than once: {:?}",
            self.headers.get_all(name).iter().collect::<Vec<_>>()
        );
        Some(String::from_utf8_lossy(first.as_bytes()).into_owned())
    }

    /// Every value of `name` (as raw text).
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    }

    /// The header names that arrived (lower case, as hyper stores them).
    pub fn header_names(&self) -> Vec<String> {
        self.headers
            .keys()
            .map(|k| k.as_str().to_string())
            .collect()
    }
}

/// Size of the `/big` download.
pub const BIG_LEN: usize = 5 * 1024 * 1024;
const BIG_CHUNK: usize = 64 * 1024;

/// Byte `i` of the deterministic `/big` body.
fn big_byte(i: usize) -> u8 {
    ((i * 7 + i / 4093 + 13) % 256) as u8
}

/// The whole `/big` body, for comparison in tests.
pub fn big_body() -> Vec<u8> {
    (0..BIG_LEN).map(big_byte).collect()
}

type UpBody = BoxBody<Bytes, Infallible>;

/// A real HTTP/1.1 server on 127.0.0.1:0 that records every request it receives.
///
/// Routes (chosen by the last path segment, so `/public/big` and `/big` behave alike):
/// - `big`: streams [`BIG_LEN`] deterministic bytes ([`big_body`]) in 64 KiB chunks,
/// - `echo-body`: reads the whole request body and answers `LEN SHA256HEX`,
/// - `slow`: waits 3 s, then answers `slow ok`,
/// - `hop-response`: answers with hop-by-hop headers, its own `X-Request-Id` and a cookie,
/// - `ws`: accepts a WebSocket upgrade and echoes text and binary messages,
/// - `gated`: sends `first-part\n`, then waits for [`Upstream::open_gate`] before
///   `second-part\n` (to show responses are streamed, not buffered),
/// - anything else: reads the body and answers 200 `upstream ok`.
pub struct Upstream {
    /// Where it listens.
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<Recorded>>>,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

/// State the upstream's handlers share with the test.
#[derive(Default)]
struct Shared {
    /// Request body bytes received so far, over all requests.
    body_bytes: std::sync::atomic::AtomicUsize,
    /// Releases the second half of a `gated` response.
    gate: tokio::sync::Notify,
}

impl Upstream {
    /// Binds and starts serving.
    pub async fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().unwrap();
        let requests: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let shared: Arc<Shared> = Arc::default();
        let recorder = requests.clone();
        let state = shared.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let recorder = recorder.clone();
                let state = state.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        upstream_handle(req, recorder.clone(), state.clone())
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Upstream {
            addr,
            requests,
            shared,
            task,
        }
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    /// Waits until at least `n` requests have been received.
    pub async fn wait_for_requests(&self, n: usize) -> Vec<Recorded> {
        let start = Instant::now();
        loop {
            let got = self.requests();
            if got.len() >= n {
                return got;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "upstream received {} requests, expected {n}: {got:#?}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The single request received whose path is `path` (panics if none or several).
    pub fn only(&self, path: &str) -> Recorded {
        let matching: Vec<Recorded> = self
            .requests()
            .into_iter()
            .filter(|r| r.path == path)
            .collect();
        assert_eq!(
            matching.len(),
            1,
            "expected exactly one upstream request for {path}: {matching:#?}"
        );
        matching.into_iter().next().unwrap()
    }

    /// The last request received (panics if none).
    pub fn last(&self) -> Recorded {
        self.requests()
            .pop()
            .expect("the upstream received no request")
    }

    /// Request body bytes received so far (counted as they arrive, before a request ends).
    pub fn body_bytes(&self) -> usize {
        self.shared
            .body_bytes
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits until at least `n` request body bytes have arrived.
    pub async fn wait_for_body_bytes(&self, n: usize) {
        let start = Instant::now();
        while self.body_bytes() < n {
            assert!(
                start.elapsed() < DEADLINE,
                "the upstream received {} body bytes, expected at least {n}",
                self.body_bytes()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Lets a `gated` response send its second half.
    pub fn open_gate(&self) {
        self.shared.gate.notify_one();
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn upstream_handle(
    mut req: Request<Incoming>,
    recorder: Arc<Mutex<Vec<Recorded>>>,
    shared: Arc<Shared>,
) -> Result<Response<UpBody>, Infallible> {
    let mut record = Recorded {
        method: req.method().to_string(),
        uri: req.uri().to_string(),
        path: req.uri().path().to_string(),
        query: req.uri().query().map(str::to_string),
        headers: req.headers().clone(),
        body_len: 0,
        body_sha256: sha256_hex(b""),
        version: format!("{:?}", req.version()),
    };
    let last = req
        .uri()
        .path()
        .rsplit('/')
        .next()
        .unwrap_or("")
        .to_string();
    let text = |status: StatusCode, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)).boxed());
        *response.status_mut() = status;
        response
    };
    match last.as_str() {
        "big" => {
            recorder.lock().unwrap().push(record);
            let chunks = (0..BIG_LEN.div_ceil(BIG_CHUNK)).map(|n| {
                let start = n * BIG_CHUNK;
                let end = (start + BIG_CHUNK).min(BIG_LEN);
                let chunk: Vec<u8> = (start..end).map(big_byte).collect();
                Ok::<_, Infallible>(Frame::data(Bytes::from(chunk)))
            });
            let body = StreamBody::new(futures_util::stream::iter(chunks));
            let mut response = Response::new(BodyExt::boxed(body));
            response.headers_mut().insert(
                "content-type",
                HeaderValue::from_static("application/octet-stream"),
            );
            Ok(response)
        }
        "gated" => {
            recorder.lock().unwrap().push(record);
            let parts = futures_util::stream::unfold(0u8, move |step| {
                let shared = shared.clone();
                async move {
                    match step {
                        0 => Some((
                            Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"first-part\n"))),
                            1,
                        )),
                        1 => {
                            shared.gate.notified().await;
                            Some((Ok(Frame::data(Bytes::from_static(b"second-part\n"))), 2))
                        }
                        _ => None,
                    }
                }
            });
            Ok(Response::new(BodyExt::boxed(StreamBody::new(parts))))
        }
        "hop-response" => {
            recorder.lock().unwrap().push(record);
            let mut response = text(StatusCode::OK, "hop".to_string());
            let headers = response.headers_mut();
            for (name, value) in [
                ("connection", "X-Upstream-Hop"),
                ("keep-alive", "timeout=5"),
                ("x-upstream-hop", "secret"),
                ("proxy-authenticate", "Basic realm=\"upstream\""),
                ("trailer", "X-Checksum"),
                ("upgrade", "h2c"),
                ("x-request-id", "upstream-chosen-id"),
                ("set-cookie", "up=1; Path=/"),
                ("x-end-to-end", "kept"),
            ] {
                headers.append(name, HeaderValue::from_static(value));
            }
            Ok(response)
        }
        "slow" => {
            recorder.lock().unwrap().push(record);
            tokio::time::sleep(Duration::from_secs(3)).await;
            Ok(text(StatusCode::OK, "slow ok".to_string()))
        }
        "ws" => {
            let key = req.headers().get("sec-websocket-key").cloned();
            let upgrade = req
                .headers()
                .get("upgrade")
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
            recorder.lock().unwrap().push(record);
            let (Some(key), true) = (key, upgrade) else {
                return Ok(text(
                    StatusCode::BAD_REQUEST,
                    "not a websocket handshake".to_string(),
                ));
            };
            let accept =
                tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
            let on_upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let Ok(upgraded) = on_upgrade.await else {
                    return;
                };
                let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    tokio_tungstenite::tungstenite::protocol::Role::Server,
                    None,
                )
                .await;
                while let Some(Ok(message)) = ws.next().await {
                    if message.is_text() || message.is_binary() {
                        if ws.send(message).await.is_err() {
                            break;
                        }
                    } else if message.is_close() {
                        break;
                    }
                }
            });
            let mut response = text(StatusCode::SWITCHING_PROTOCOLS, String::new());
            let headers = response.headers_mut();
            headers.insert("upgrade", HeaderValue::from_static("websocket"));
            headers.insert("connection", HeaderValue::from_static("Upgrade"));
            headers.insert(
                "sec-websocket-accept",
                HeaderValue::from_str(&accept).unwrap(),
            );
            Ok(response)
        }
        _ => {
            let echo = last == "echo-body";
            let mut hasher = Sha256::new();
            let mut len = 0usize;
            let mut body = req.into_body();
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else { break };
                if let Some(data) = frame.data_ref() {
                    hasher.update(data);
                    len += data.len();
                    shared
                        .body_bytes
                        .fetch_add(data.len(), std::sync::atomic::Ordering::SeqCst);
                }
            }
            let digest = hex::encode(hasher.finalize());
            record.body_len = len;
            record.body_sha256 = digest.clone();
            recorder.lock().unwrap().push(record);
            if echo {
                Ok(text(StatusCode::OK, format!("{len} {digest}")))
            } else {
                Ok(text(StatusCode::OK, "upstream ok".to_string()))
            }
        }
    }
}

/// An address where nothing listens (bound, then released).
pub async fn dead_address() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr
}
