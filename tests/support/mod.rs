//! Shared harness for the integration tests: a recording upstream (a real hyper server on
//! loopback), the real `portcullis` binary started on a config written to a tempdir, and small
//! HTTP clients (hyper over a fresh connection, and raw bytes over TCP).
//!
//! Nothing here is mocked: every test talks HTTP to the proxy binary, which talks HTTP to the
//! upstream, and assertions are made on what the upstream actually received and on the JSON
//! lines the proxy actually logged.

#![allow(dead_code)]

mod sessions;
#[allow(unused_imports)]
pub use sessions::*;

use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long any single wait in a test may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------------
// Users, passwords and tokens shared by the tests
// ---------------------------------------------------------------------------------------------

/// alice: argon2id, group "admins".
pub const ALICE_PW: &str = "correct-horse-alice-7421";
/// bob: bcrypt, group "staff".
pub const BOB_PW: &str = "bob-bcrypt-pw-9931";
/// A wrong password (also grepped for in the logs).
pub const WRONG_PW: &str = "wrong-password-5550";
/// The static bearer token of `ci-bot` (group "ci").
pub const TOKEN: &str = "ci-token-9f1c2b7e5d4a3f60b8c1d2e3f4a5b6c7";
/// A token nobody configured.
pub const UNKNOWN_TOKEN: &str = "not-a-configured-token-31337abc";

/// argon2id hash of [`ALICE_PW`], computed once per test binary.
pub fn alice_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| {
        portcullis::auth::password::PasswordHash::hash_argon2id(ALICE_PW.as_bytes()).unwrap()
    })
}

/// bcrypt (cost 4) hash of [`BOB_PW`], computed once per test binary.
pub fn bob_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| bcrypt::hash(BOB_PW, 4).unwrap())
}

/// Lower-case hex SHA-256.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// `Basic base64(user:password)`.
pub fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// `Bearer token`.
pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// The users and the token every standard config has.
pub fn principals() -> String {
    format!(
        r#"
[[users]]
name = "alice"
password_hash = "{alice}"
groups = ["admins"]

[[users]]
name = "bob"
password_hash = "{bob}"
groups = ["staff"]

[[tokens]]
name = "ci-bot"
token_sha256 = "{token}"
groups = ["ci"]
"#,
        alice = alice_hash(),
        bob = bob_hash(),
        token = sha256_hex(TOKEN.as_bytes()),
    )
}

/// The standard routes:
/// - `/` needs Basic or Bearer (realm "Main"),
/// - `/public` is public,
/// - `/admin` is Basic only, alice only, GET and POST only (realm "Admin area"),
/// - `/staff` admits the group "staff",
/// - `/api` is Bearer only (realm "API"),
/// - `/both` is Bearer then Basic (challenge order),
/// - `/secret` is case-insensitive and alice only,
/// - `/quoted` has a realm with a quote and a backslash.
pub const STD_ROUTES: &str = r#"
[[route]]
path = "/"
auth = ["basic", "bearer"]
realm = "Main"

[[route]]
path = "/public"
auth = []

[[route]]
path = "/admin"
auth = ["basic"]
realm = "Admin area"
allow_users = ["alice"]
methods = ["GET", "POST"]

[[route]]
path = "/staff"
auth = ["basic", "bearer"]
realm = "Staff"
allow_groups = ["staff"]

[[route]]
path = "/api"
auth = ["bearer"]
realm = "API"

[[route]]
path = "/both"
auth = ["bearer", "basic"]
realm = "Both"

[[route]]
path = "/secret"
case_insensitive = true
auth = ["basic"]
realm = "Secret"
allow_users = ["alice"]

[[route]]
path = "/quoted"
auth = ["basic", "bearer"]
realm = 'Say "hi" \ bye'
"#;

/// Users, token and the standard routes.
pub fn std_body() -> String {
    format!("{}{}", principals(), STD_ROUTES)
}

// ---------------------------------------------------------------------------------------------
// The recording upstream
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// The proxy binary
// ---------------------------------------------------------------------------------------------

/// A config file for the proxy: `[server]` (with `listen = ["127.0.0.1:0"]`), `[upstream]`
/// (with the upstream's URL) and the rest, each with optional extra lines.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    upstream_url: String,
    server: String,
    upstream: String,
    body: String,
    files: Vec<(String, String)>,
    log_level: Option<String>,
    plain: bool,
}

impl ProxyConfig {
    /// A config in front of `upstream_url` with `body` (users, tokens, routes, other tables).
    pub fn new(upstream_url: impl Into<String>, body: impl Into<String>) -> Self {
        ProxyConfig {
            upstream_url: upstream_url.into(),
            server: String::new(),
            upstream: String::new(),
            body: body.into(),
            files: Vec::new(),
            log_level: None,
            plain: false,
        }
    }

    /// Extra lines for `[server]`.
    pub fn server(mut self, lines: &str) -> Self {
        self.server.push_str(lines);
        self.server.push('\n');
        self
    }

    /// Extra lines for `[upstream]`.
    pub fn upstream(mut self, lines: &str) -> Self {
        self.upstream.push_str(lines);
        self.upstream.push('\n');
        self
    }

    /// A file to write next to the config (for `users_file` and the like).
    pub fn file(mut self, name: &str, contents: &str) -> Self {
        self.files.push((name.to_string(), contents.to_string()));
        self
    }

    /// `--log-level` for the proxy.
    pub fn log_level(mut self, level: &str) -> Self {
        self.log_level = Some(level.to_string());
        self
    }

    /// Start as `portcullis --config FILE` (no `run` subcommand).
    pub fn without_run(mut self) -> Self {
        self.plain = true;
        self
    }

    /// The full TOML text.
    pub fn text(&self) -> String {
        format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\n{}\n[upstream]\nurl = \"{}\"\n{}\n{}\n",
            self.server, self.upstream_url, self.upstream, self.body
        )
    }

    /// Writes the config and starts the proxy on it.
    pub async fn start(self) -> Proxy {
        Proxy::start_config(self).await
    }
}

/// Lines captured from a child's stdout and stderr.
#[derive(Clone, Default)]
pub struct Captured {
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Captured {
    fn attach(child: &mut Child) -> Captured {
        let captured = Captured::default();
        let out = child.stdout.take().expect("piped stdout");
        let err = child.stderr.take().expect("piped stderr");
        for (pipe, sink) in [
            (
                Box::new(out) as Box<dyn std::io::Read + Send>,
                captured.stdout.clone(),
            ),
            (
                Box::new(err) as Box<dyn std::io::Read + Send>,
                captured.stderr.clone(),
            ),
        ] {
            std::thread::spawn(move || {
                let mut reader = BufReader::new(pipe);
                let mut line = Vec::new();
                loop {
                    line.clear();
                    match reader.read_until(b'\n', &mut line) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            let text = String::from_utf8_lossy(&line)
                                .trim_end_matches(['\n', '\r'])
                                .to_string();
                            sink.lock().unwrap().push(text);
                        }
                    }
                }
            });
        }
        captured
    }
}

/// The running proxy binary; killed when dropped.
pub struct Proxy {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// The admin listener, when the config has `admin_listen`.
    admin: Option<SocketAddr>,
    /// The config file it was started with.
    pub config_path: PathBuf,
    child: Child,
    captured: Captured,
    dir: tempfile::TempDir,
}

/// Path of the binary under test.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_portcullis")
}

impl Proxy {
    /// Starts the proxy in front of `upstream` with `body` as the rest of the config.
    pub async fn start(upstream: &Upstream, body: &str) -> Proxy {
        ProxyConfig::new(upstream.url(), body).start().await
    }

    /// Starts the proxy with the standard users, token and routes in front of `upstream`.
    pub async fn start_std(upstream: &Upstream) -> Proxy {
        Proxy::start(upstream, &std_body()).await
    }

    async fn start_config(config: ProxyConfig) -> Proxy {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, contents) in &config.files {
            let path = dir.path().join(name);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).unwrap();
            }
            std::fs::write(path, contents).unwrap();
        }
        Proxy::launch(
            dir,
            &config.text(),
            !config.plain,
            config.log_level.as_deref(),
        )
        .await
    }

    /// Writes `text` to `dir/portcullis.toml` (files it names may already be in `dir`) and
    /// starts the proxy on it.
    pub async fn start_in(dir: tempfile::TempDir, text: &str) -> Proxy {
        Proxy::launch(dir, text, true, None).await
    }

    /// Starts the binary and waits until it logged `listening` (and `admin listening` when
    /// the config has an admin listener).
    async fn launch(
        dir: tempfile::TempDir,
        text: &str,
        run_subcommand: bool,
        log_level: Option<&str>,
    ) -> Proxy {
        let config_path = dir.path().join("portcullis.toml");
        std::fs::write(&config_path, text).unwrap();
        let mut command = Command::new(binary());
        if run_subcommand {
            command.arg("run");
        }
        command
            .arg("--config")
            .arg(&config_path)
            .arg("--log-format")
            .arg("json")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(level) = log_level {
            command.arg("--log-level").arg(level);
        }
        let mut child = command.spawn().expect("spawn the proxy binary");
        let captured = Captured::attach(&mut child);
        let wants_admin = text.contains("admin_listen");
        let start = Instant::now();
        let (addr, admin) = loop {
            let field = |message: &str, key: &str| {
                captured.stdout.lock().unwrap().iter().find_map(|line| {
                    let v: Value = serde_json::from_str(line).ok()?;
                    (v["message"] == message).then(|| v[key].as_str().map(str::to_string))?
                })
            };
            let listening = field("listening", "listen");
            let admin = field("admin listening", "admin_listen");
            if let Some(listen) = listening.filter(|_| admin.is_some() || !wants_admin) {
                let first = listen.split(',').next().unwrap().to_string();
                let addr = first.parse::<SocketAddr>().expect("listen address");
                let admin = admin.map(|a| a.parse::<SocketAddr>().expect("admin address"));
                break (addr, admin);
            }
            if let Ok(Some(status)) = child.try_wait() {
                tokio::time::sleep(Duration::from_millis(100)).await;
                panic!(
                    "the proxy exited ({status}) before listening.\nconfig:\n{text}\nstdout:\n{}\nstderr:\n{}",
                    captured.stdout.lock().unwrap().join("\n"),
                    captured.stderr.lock().unwrap().join("\n")
                );
            }
            assert!(
                start.elapsed() < DEADLINE,
                "the proxy did not log `listening` in time"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        Proxy {
            addr,
            admin,
            config_path,
            child,
            captured,
            dir,
        }
    }

    /// The admin listener's address (panics when the config has none).
    pub fn admin(&self) -> SocketAddr {
        self.admin.expect("the config has an admin_listen")
    }

    /// The directory holding the config and the files next to it.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `SIG<name>` with `kill`, after waiting until the process has a handler for it
    /// (so a signal sent right after start-up is never taken by the default action).
    pub async fn signal(&self, name: &str) {
        let number = match name {
            "HUP" => 1,
            "INT" => 2,
            "TERM" => 15,
            other => panic!("unexpected signal {other}"),
        };
        let start = Instant::now();
        while !self.catches(number) {
            assert!(
                start.elapsed() < DEADLINE,
                "the proxy never installed a SIG{name} handler"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let status = Command::new("kill")
            .args([format!("-{name}"), self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Whether the process catches signal `number` (from /proc/PID/status `SigCgt`).
    fn catches(&self, number: u32) -> bool {
        let Ok(status) = std::fs::read_to_string(format!("/proc/{}/status", self.pid())) else {
            // No procfs: cannot tell, assume yes.
            return true;
        };
        status
            .lines()
            .find_map(|l| l.strip_prefix("SigCgt:"))
            .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
            .is_some_and(|mask| mask & (1 << (number - 1)) != 0)
    }

    /// Waits for the process to exit, at most `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                start.elapsed() < limit,
                "the proxy did not exit within {limit:?}:\n{}",
                self.all_output()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Replaces the config file (read again on SIGHUP).
    pub fn rewrite_config(&self, text: &str) {
        std::fs::write(&self.config_path, text).unwrap();
    }

    /// Events whose `message` is `message`.
    pub fn events_named(&self, message: &str) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|v| v["message"] == message)
            .collect()
    }

    /// Waits until at least `n` events named `message` were logged; returns them all.
    pub async fn wait_for_events(&self, message: &str, n: usize) -> Vec<Value> {
        let start = Instant::now();
        loop {
            let found = self.events_named(message);
            if found.len() >= n {
                return found;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "expected {n} `{message}` events, got {}:\n{}",
                found.len(),
                self.all_output()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Every stdout line so far.
    pub fn logs(&self) -> Vec<String> {
        self.captured.stdout.lock().unwrap().clone()
    }

    /// Every stderr line so far.
    pub fn stderr(&self) -> Vec<String> {
        self.captured.stderr.lock().unwrap().clone()
    }

    /// Every stdout and stderr line so far.
    pub fn all_output(&self) -> String {
        let mut all = self.logs();
        all.extend(self.stderr());
        all.join("\n")
    }

    /// Every stdout line parsed as JSON (panics on a line that is not JSON).
    pub fn events(&self) -> Vec<Value> {
        self.logs()
            .iter()
            .map(|line| {
                serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"))
            })
            .collect()
    }

    /// The `access` events so far.
    pub fn access_events(&self) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|v| v["message"] == "access")
            .collect()
    }

    /// Waits until at least `n` access events were logged.
    pub async fn wait_for_access(&self, n: usize) -> Vec<Value> {
        let start = Instant::now();
        loop {
            let events = self.access_events();
            if events.len() >= n {
                return events;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "only {} access events, expected {n}:\n{}",
                events.len(),
                self.logs().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits for the access event of `request_id`, and checks it is the only one with that id.
    pub async fn access_for(&self, request_id: &str) -> Value {
        let start = Instant::now();
        loop {
            let found: Vec<Value> = self
                .access_events()
                .into_iter()
                .filter(|v| v["request_id"] == request_id)
                .collect();
            if let Some(first) = found.first() {
                assert_eq!(
                    found.len(),
                    1,
                    "several access events for request {request_id}: {found:#?}"
                );
                return first.clone();
            }
            assert!(
                start.elapsed() < DEADLINE,
                "no access event for request id {request_id}:\n{}",
                self.logs().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The access event of a response (by its `X-Request-Id`).
    pub async fn access_of(&self, response: &Resp) -> Value {
        let id = response
            .header("x-request-id")
            .unwrap_or_else(|| panic!("response has no X-Request-Id: {response:?}"));
        self.access_for(&id).await
    }

    /// `send` to this proxy.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Resp {
        send(self.addr, method, path, headers, body).await
    }

    /// `GET path` with these headers.
    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Resp {
        send(self.addr, "GET", path, headers, Bytes::new()).await
    }

    /// Raw bytes to this proxy.
    pub async fn raw(&self, request: impl AsRef<[u8]>) -> String {
        raw(self.addr, request.as_ref()).await
    }

    /// `GET target` as raw bytes (so the target is sent exactly as written).
    pub async fn raw_get(&self, target: &str, extra_headers: &str) -> RawResp {
        let request = format!(
            "GET {target} HTTP/1.1\r\nHost: proxy.test\r\n{extra_headers}Connection: close\r\n\r\n"
        );
        RawResp::parse(&self.raw(request.as_bytes()).await)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the binary with `args` to completion; returns (exit code, stdout, stderr).
pub fn run_cli(args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    use std::io::Write;
    let mut child = Command::new(binary())
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the binary");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(input.as_bytes()).unwrap();
        drop(pipe);
    }
    let output = child.wait_with_output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Writes `text` to `dir/name` and returns the path.
pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

// ---------------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------------

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
