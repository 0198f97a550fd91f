//! The proxy binary: its config file, starting and stopping it, reading its log lines, and the CLI.

use super::*;

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
