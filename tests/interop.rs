//! Issue 13 interop: real clients, configured the way their users configure them, through the
//! real proxy to a real static-file upstream (`python3 -m http.server`):
//! - git cloning a repository with a credential helper (it answers the Basic challenge),
//! - pip fetching a package from an index with credentials in a netrc file,
//! - Prometheus scraping with `basic_auth` and with a bearer token, and a job with a wrong
//!   password that gets its address locked out without taking the bearer job down.
//!
//! git and python3 are on every CI machine; Prometheus is installed by `.ci/run`. A missing
//! client skips its test with a message, except under `CI`, where it fails.

mod support;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

/// Lockout settings low enough for a scrape job to reach them in a few seconds.
const RATE_LIMIT: &str = r#"
[rate_limit]
max_failures = 3
window = "5m"
lockout = "15m"
"#;

/// Whether `program --version` runs; under `CI` it must.
fn installed(program: &str, install: &str) -> bool {
    let found = Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "{program} is missing and CI is set: .ci/run must install it ({install})"
        );
        eprintln!("SKIPPED: {program} is not installed ({install})");
    }
    found
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind a free port")
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something listens on `port`, or panics naming `what`.
async fn wait_listening(port: u16, child: &mut Child, what: &str) {
    let started = Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("{what} exited ({status}) before listening on {port}");
        }
        assert!(
            started.elapsed() < DEADLINE,
            "{what} did not listen on {port}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs a client to completion off the async threads (the proxy's output keeps being read).
async fn run(mut command: Command) -> Output {
    command.stdin(Stdio::null());
    tokio::task::spawn_blocking(move || command.output().expect("start the client"))
        .await
        .unwrap()
}

fn assert_ran(output: &Output, what: &str) {
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A directory served by `python3 -m http.server` on loopback, killed on drop.
struct StaticSite {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl StaticSite {
    async fn start() -> StaticSite {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut child = Command::new("python3")
            .args([
                "-m",
                "http.server",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .arg("--directory")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start python3 -m http.server");
        wait_listening(port, &mut child, "python3 -m http.server").await;
        StaticSite { child, port, dir }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn path(&self, relative: &str) -> PathBuf {
        let path = self.dir.path().join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        path
    }
}

impl Drop for StaticSite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A git command isolated from the machine's own configuration.
fn git(home: &Path) -> Command {
    let mut command = Command::new("git");
    command
        .env("HOME", home)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_ASKPASS", "/bin/false")
        .args([
            "-c",
            "user.name=Interop",
            "-c",
            "user.email=interop@example.com",
        ]);
    command
}

/// A bare repository with one commit, published for git's "dumb" HTTP protocol at
/// `/repo.git` on `site`.
async fn publish_repository(site: &StaticSite, home: &Path) {
    let work = home.join("work");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("README"), "behind portcullis\n").unwrap();
    let mut init = git(home);
    init.arg("-C").arg(&work).args(["init", "-q"]);
    assert_ran(&run(init).await, "git init");
    let mut add = git(home);
    add.arg("-C").arg(&work).args(["add", "README"]);
    assert_ran(&run(add).await, "git add");
    let mut commit = git(home);
    commit
        .arg("-C")
        .arg(&work)
        .args(["commit", "-q", "-m", "one"]);
    assert_ran(&run(commit).await, "git commit");
    let bare = site.path("repo.git");
    let mut clone = git(home);
    clone.args(["clone", "-q", "--bare"]).arg(&work).arg(&bare);
    assert_ran(&run(clone).await, "git clone --bare");
    let mut info = git(home);
    info.arg("-C").arg(&bare).arg("update-server-info");
    assert_ran(&run(info).await, "git update-server-info");
}

/// `git clone` through the proxy with a credential helper that answers `user`/`password`.
async fn clone_through(proxy: &Proxy, home: &Path, user: &str, password: &str) -> Output {
    let target = home.join(format!("clone-{user}-{}", password.len()));
    let mut clone = git(home);
    clone
        .args(["-c", "credential.helper="])
        .arg("-c")
        .arg(format!(
            "credential.helper=!f() {{ echo username={user}; echo password={password}; }}; f"
        ))
        .args(["clone", "-q"])
        .arg(format!("http://{}/repo.git", proxy.addr))
        .arg(&target);
    let output = run(clone).await;
    if output.status.success() {
        let readme = std::fs::read_to_string(target.join("README")).unwrap();
        assert_eq!(readme, "behind portcullis\n");
    }
    output
}

#[tokio::test]
async fn git_clones_through_basic_with_a_credential_helper() {
    if !installed("git", "apt-get install -y git") {
        return;
    }
    let site = StaticSite::start().await;
    let home = tempfile::tempdir().unwrap();
    publish_repository(&site, home.path()).await;
    let proxy = ProxyConfig::new(site.url(), std_body()).start().await;

    let output = clone_through(&proxy, home.path(), "alice", ALICE_PW).await;
    assert_ran(&output, "git clone through the proxy");
    // git asks without credentials first (twice, as git does), then sends alice's on every
    // request after the challenge.
    let events = logged_so_far(&proxy).await;
    let first_ok = events
        .iter()
        .position(|e| e["status"] == 200)
        .expect("an admitted request");
    let summary = events
        .iter()
        .map(|e| {
            format!(
                "{} {} {} {}",
                e["path"], e["status"], e["reason"], e["user"]
            )
        })
        .collect::<Vec<_>>();
    assert!(first_ok >= 1, "{summary:?}");
    assert!(
        events[..first_ok]
            .iter()
            .all(|e| e["status"] == 401 && e["reason"] == "missing_credentials"),
        "{summary:?}"
    );
    assert!(
        events[first_ok..]
            .iter()
            .all(|e| e["status"] == 200 && e["user"] == "alice"),
        "{summary:?}"
    );

    let seen = events.len() + 1; // and the marker's
    let output = clone_through(&proxy, home.path(), "alice", WRONG_PW).await;
    assert!(!output.status.success(), "a wrong password must not clone");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("Authentication failed"),
        "git says why: {stderr}"
    );
    let events = logged_so_far(&proxy).await;
    assert!(
        events[seen..].iter().any(|e| e["reason"] == "bad_password"),
        "{events:#?}"
    );
}

/// Every access event of the requests made so far: the client has finished, but its last
/// lines may still be in the proxy's log buffer. A marker request's own line comes after them.
async fn logged_so_far(proxy: &Proxy) -> Vec<Value> {
    let marker = proxy.get("/public/interop-marker", &[]).await;
    let id = marker.request_id();
    proxy.access_of(&marker).await;
    let events = proxy.access_events();
    let at = events
        .iter()
        .position(|e| e["request_id"] == id.as_str())
        .expect("the marker's line");
    events[..at].to_vec()
}

/// A minimal pure-Python wheel, written with Python's own zipfile module.
async fn build_wheel(path: &Path) {
    let script = r#"
import sys, zipfile
name = "portcullis_interop_demo"
files = {
    name + "/__init__.py": "VALUE = 1\n",
    name + "-1.0.dist-info/METADATA":
        "Metadata-Version: 2.1\nName: portcullis-interop-demo\nVersion: 1.0\n",
    name + "-1.0.dist-info/WHEEL":
        "Wheel-Version: 1.0\nGenerator: interop\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
record = name + "-1.0.dist-info/RECORD"
with zipfile.ZipFile(sys.argv[1], "w") as wheel:
    for file, text in files.items():
        wheel.writestr(file, text)
    wheel.writestr(record, "".join(f + ",,\n" for f in list(files) + [record]))
"#;
    let mut python = Command::new("python3");
    python.args(["-c", script]).arg(path);
    assert_ran(&run(python).await, "building the wheel");
}

#[tokio::test]
async fn pip_downloads_from_a_protected_index_with_a_netrc() {
    if !installed("python3", "apt-get install -y python3-pip") {
        return;
    }
    let site = StaticSite::start().await;
    let wheel = "portcullis_interop_demo-1.0-py3-none-any.whl";
    build_wheel(&site.path(&format!("packages/{wheel}"))).await;
    std::fs::write(
        site.path("simple/portcullis-interop-demo/index.html"),
        format!(
            "<!DOCTYPE html><html><body><a href=\"/packages/{wheel}\">{wheel}</a></body></html>\n"
        ),
    )
    .unwrap();
    let proxy = ProxyConfig::new(site.url(), std_body()).start().await;

    let home = tempfile::tempdir().unwrap();
    let netrc = home.path().join("netrc");
    std::fs::write(
        &netrc,
        format!("machine 127.0.0.1\nlogin alice\npassword {ALICE_PW}\n"),
    )
    .unwrap();
    let out = home.path().join("out");
    let mut pip = Command::new("python3");
    pip.env("HOME", home.path())
        .env("NETRC", &netrc)
        .env("PIP_CONFIG_FILE", "/dev/null")
        .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
        .args(["-m", "pip", "download", "--no-deps", "--no-cache-dir"])
        .arg("--index-url")
        .arg(format!("http://{}/simple/", proxy.addr))
        .arg("-d")
        .arg(&out)
        .arg("portcullis-interop-demo");
    assert_ran(&run(pip).await, "pip download through the proxy");
    assert!(out.join(wheel).exists(), "the wheel was downloaded");
    let events = logged_so_far(&proxy).await;
    let wheel_get = events
        .iter()
        .find(|e| e["path"] == format!("/packages/{wheel}"))
        .unwrap_or_else(|| panic!("no access event for the wheel: {events:#?}"));
    assert_eq!(wheel_get["status"], 200);
    assert_eq!(wheel_get["user"], "alice");
    assert_eq!(wheel_get["auth_method"], "basic");
}

/// A Prometheus server on loopback scraping the proxy, killed on drop.
struct Prometheus {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus with these `scrape_configs` entries (YAML, already indented).
    async fn start(jobs: &str) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n{jobs}"
            ),
        )
        .unwrap();
        let port = free_port();
        let mut child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus");
        wait_listening(port, &mut child, "prometheus").await;
        Prometheus {
            child,
            port,
            _dir: dir,
        }
    }

    /// The value of `up` for `job`, once Prometheus has scraped it.
    async fn up(&self, job: &str) -> Option<String> {
        let addr = format!("127.0.0.1:{}", self.port).parse().unwrap();
        let response = send(
            addr,
            "GET",
            &format!("/api/v1/query?query=up%7Bjob%3D%22{job}%22%7D"),
            &[],
            "",
        )
        .await;
        if response.status != 200 {
            return None;
        }
        let body: Value = response.json();
        body["data"]["result"][0]["value"][1]
            .as_str()
            .map(str::to_string)
    }

    /// Waits until `up{job}` is `expected`.
    async fn wait_up(&self, job: &str, expected: &str) {
        let started = Instant::now();
        loop {
            let up = self.up(job).await;
            if up.as_deref() == Some(expected) {
                return;
            }
            assert!(
                started.elapsed() < DEADLINE,
                "up{{job=\"{job}\"}} is {up:?}, expected {expected}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until an access event matches `matches`; panics with every event after `DEADLINE`.
async fn wait_access(proxy: &Proxy, matches: impl Fn(&Value) -> bool) {
    let started = Instant::now();
    while !proxy.access_events().iter().any(&matches) {
        assert!(
            started.elapsed() < DEADLINE,
            "no such access event: {:#?}",
            proxy.access_events()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A scrape job for `path` on the proxy, with `auth` lines (YAML, indented under the job).
fn job(name: &str, proxy: &Proxy, path: &str, auth: &str) -> String {
    format!(
        "  - job_name: {name}\n    metrics_path: {path}\n{auth}    static_configs:\n      - targets: ['{}']\n",
        proxy.addr
    )
}

async fn metrics_site() -> StaticSite {
    let site = StaticSite::start().await;
    let text = "# TYPE interop_demo gauge\ninterop_demo 1\n";
    std::fs::write(site.path("metrics.txt"), text).unwrap();
    std::fs::write(site.path("api/metrics.txt"), text).unwrap();
    site
}

fn bearer_job(proxy: &Proxy) -> String {
    job(
        "bearer",
        proxy,
        "/api/metrics.txt",
        &format!("    authorization:\n      type: Bearer\n      credentials: {TOKEN}\n"),
    )
}

#[tokio::test]
async fn prometheus_scrapes_with_basic_auth_and_with_a_bearer_token() {
    if !installed("prometheus", "apt-get install -y prometheus") {
        return;
    }
    let site = metrics_site().await;
    let proxy = ProxyConfig::new(site.url(), std_body()).start().await;
    let basic = job(
        "basic",
        &proxy,
        "/metrics.txt",
        &format!("    basic_auth:\n      username: alice\n      password: {ALICE_PW}\n"),
    );
    let prometheus = Prometheus::start(&format!("{basic}{}", bearer_job(&proxy))).await;
    prometheus.wait_up("basic", "1").await;
    prometheus.wait_up("bearer", "1").await;
    wait_access(&proxy, |e| {
        e["path"] == "/metrics.txt" && e["user"] == "alice" && e["status"] == 200
    })
    .await;
    wait_access(&proxy, |e| {
        e["path"] == "/api/metrics.txt"
            && e["user"] == "ci-bot"
            && e["auth_method"] == "bearer"
            && e["status"] == 200
    })
    .await;
}

#[tokio::test]
async fn a_wrong_password_job_locks_its_address_without_taking_the_bearer_job_down() {
    if !installed("prometheus", "apt-get install -y prometheus") {
        return;
    }
    let site = metrics_site().await;
    let proxy = ProxyConfig::new(site.url(), format!("{}{RATE_LIMIT}", std_body()))
        .start()
        .await;
    let wrong = job(
        "wrong",
        &proxy,
        "/metrics.txt",
        &format!("    basic_auth:\n      username: alice\n      password: {WRONG_PW}\n"),
    );
    let prometheus = Prometheus::start(&format!("{wrong}{}", bearer_job(&proxy))).await;

    // The wrong job reaches the lockout: its scrapes turn from 401 into 429.
    let started = Instant::now();
    let locked_at = loop {
        let events = proxy.access_events();
        if let Some(at) = events.iter().position(|e| e["reason"] == "rate_limited") {
            break at;
        }
        assert!(started.elapsed() < DEADLINE, "no lockout yet: {events:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The bearer job, from the same locked-out address, keeps being served.
    let started = Instant::now();
    loop {
        let events = proxy.access_events();
        let bearer_after = events[locked_at..]
            .iter()
            .filter(|e| e["path"] == "/api/metrics.txt")
            .collect::<Vec<_>>();
        if bearer_after.len() >= 2 {
            assert!(
                bearer_after.iter().all(|e| e["status"] == 200),
                "bearer scrapes after the lockout: {bearer_after:#?}"
            );
            break;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "too few bearer scrapes after the lockout: {events:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    prometheus.wait_up("bearer", "1").await;
    prometheus.wait_up("wrong", "0").await;
}
