//! Issue 4, Redis store: two proxy instances sharing sessions through one real `redis-server`,
//! hashed keys with a TTL of the remaining absolute lifetime plus the grace, and Redis killed
//! mid-test (session routes fail closed with 503 while Basic keeps working) and restarted
//! (session routes recover).
//!
//! Each test starts its own `redis-server` on a free loopback port. When `redis-server` is not
//! installed the tests fail if `CI` is set (so a CI run can never pass them silently) and are
//! skipped with a message otherwise (`apt-get install redis-server`).

mod support;

use std::time::{Duration, Instant};

use support::*;

/// A real `redis-server` child, a tiny RESP client, and proxy configs using Redis.
mod common {
    use std::io::{BufRead, BufReader, Write};
    use std::net::{TcpListener, TcpStream};
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use super::support::*;

    /// Whether `redis-server` can be run. Panics when it cannot and `CI` is set.
    pub fn redis_installed() -> bool {
        let found = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            assert!(
                std::env::var_os("CI").is_none(),
                "redis-server is not installed, and CI is set: the Redis session tests must run in CI \
                 (.ci/run installs it with need_apt redis-server:redis-server)"
            );
            eprintln!("SKIPPED: redis-server is not installed (apt-get install -y redis-server)");
        }
        found
    }

    /// A free loopback port: bound, read, released.
    pub fn free_port() -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
        listener.local_addr().unwrap().port()
    }

    /// A `redis-server` child on a loopback port, killed when dropped.
    pub struct Redis {
        /// Its port.
        pub port: u16,
        child: Option<Child>,
    }

    impl Redis {
        /// Starts Redis on a free port.
        pub fn start() -> Redis {
            Redis::start_on(free_port())
        }

        /// Starts Redis on `port`.
        pub fn start_on(port: u16) -> Redis {
            let mut redis = Redis { port, child: None };
            redis.restart();
            redis
        }

        /// `redis://127.0.0.1:PORT/0`
        pub fn url(&self) -> String {
            format!("redis://127.0.0.1:{}/0", self.port)
        }

        /// Starts (again) on the same port, without persistence, and waits until PING answers.
        pub fn restart(&mut self) {
            assert!(self.child.is_none(), "already running");
            let child = Command::new("redis-server")
                .args(["--port", &self.port.to_string()])
                .args(["--bind", "127.0.0.1"])
                .args(["--save", ""])
                .args(["--appendonly", "no"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn redis-server");
            self.child = Some(child);
            let start = Instant::now();
            loop {
                if let Ok(reply) = try_command(self.port, &["PING"]) {
                    assert_eq!(reply, Reply::Simple("PONG".into()));
                    return;
                }
                if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                    panic!(
                        "redis-server exited ({status}) before answering PING on port {}",
                        self.port
                    );
                }
                assert!(
                    start.elapsed() < DEADLINE,
                    "redis-server did not answer PING in time"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }

        /// Kills Redis (SIGKILL) and waits until its port refuses connections.
        pub fn kill(&mut self) {
            let mut child = self.child.take().expect("running");
            child.kill().expect("kill redis-server");
            child.wait().unwrap();
            let start = Instant::now();
            while TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                assert!(
                    start.elapsed() < DEADLINE,
                    "Redis port still open after kill"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }

        /// Runs one command and returns the reply (panics on a connection error).
        pub fn command(&self, args: &[&str]) -> Reply {
            try_command(self.port, args).unwrap_or_else(|e| panic!("redis {args:?}: {e}"))
        }

        /// Every key matching `pattern`.
        pub fn keys(&self, pattern: &str) -> Vec<String> {
            match self.command(&["KEYS", pattern]) {
                Reply::Array(items) => items.into_iter().map(|r| r.text()).collect(),
                other => panic!("KEYS: {other:?}"),
            }
        }

        /// `HGETALL key` as (field, value) pairs.
        pub fn hgetall(&self, key: &str) -> Vec<(String, String)> {
            match self.command(&["HGETALL", key]) {
                Reply::Array(items) => items
                    .chunks(2)
                    .map(|pair| (pair[0].clone().text(), pair[1].clone().text()))
                    .collect(),
                other => panic!("HGETALL: {other:?}"),
            }
        }

        /// An integer reply (`TTL`, `PTTL`, `EXISTS`…).
        pub fn int(&self, args: &[&str]) -> i64 {
            match self.command(args) {
                Reply::Int(n) => n,
                other => panic!("{args:?}: {other:?}"),
            }
        }
    }

    impl Drop for Redis {
        fn drop(&mut self) {
            if let Some(mut child) = self.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    /// A RESP reply.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Reply {
        /// `+OK`
        Simple(String),
        /// `-ERR …`
        Error(String),
        /// `:1`
        Int(i64),
        /// `$n …` (None for `$-1`)
        Bulk(Option<String>),
        /// `*n …`
        Array(Vec<Reply>),
    }

    impl Reply {
        /// The text of a simple or bulk reply.
        pub fn text(self) -> String {
            match self {
                Reply::Simple(s) | Reply::Bulk(Some(s)) => s,
                other => panic!("not text: {other:?}"),
            }
        }
    }

    /// One command over a fresh connection, in RESP.
    pub fn try_command(port: u16, args: &[&str]) -> std::io::Result<Reply> {
        let mut stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.set_write_timeout(Some(Duration::from_secs(5)))?;
        let mut out = format!("*{}\r\n", args.len());
        for arg in args {
            out.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        stream.write_all(out.as_bytes())?;
        read_reply(&mut BufReader::new(stream))
    }

    fn read_reply(reader: &mut impl BufRead) -> std::io::Result<Reply> {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed",
            ));
        }
        let line = line.trim_end_matches("\r\n");
        let (kind, rest) = line.split_at(1);
        let number = || rest.parse::<i64>().expect("RESP length");
        Ok(match kind {
            "+" => Reply::Simple(rest.to_string()),
            "-" => Reply::Error(rest.to_string()),
            ":" => Reply::Int(number()),
            "$" if number() < 0 => Reply::Bulk(None),
            "$" => {
                let mut data = vec![0u8; number() as usize + 2];
                reader.read_exact(&mut data)?;
                data.truncate(data.len() - 2);
                Reply::Bulk(Some(String::from_utf8(data).expect("UTF-8 bulk")))
            }
            "*" if number() < 0 => Reply::Array(Vec::new()),
            "*" => {
                let mut items = Vec::new();
                for _ in 0..number() {
                    items.push(read_reply(reader)?);
                }
                Reply::Array(items)
            }
            other => panic!("unexpected RESP type {other:?} in {line:?}"),
        })
    }

    /// A proxy on Redis at `url` with these timeouts.
    pub async fn start(upstream: &Upstream, url: &str, idle: &str, absolute: &str) -> Proxy {
        let body = format!(
            "{}\n[session]\nstore = \"redis\"\nredis_url = \"{url}\"\ncookie_secure = false\n\
             idle_timeout = \"{idle}\"\nabsolute_timeout = \"{absolute}\"\n{SESSION_ROUTES}",
            principals()
        );
        Proxy::start(upstream, &body).await
    }

    /// A proxy on Redis at `url` with extra `[session]` lines.
    pub async fn start_with(upstream: &Upstream, url: &str, session_lines: &str) -> Proxy {
        let body = format!(
            "{}\n[session]\nstore = \"redis\"\nredis_url = \"{url}\"\ncookie_secure = false\n\
             {session_lines}\n{SESSION_ROUTES}",
            principals()
        );
        Proxy::start(upstream, &body).await
    }

    /// Every key, by `SCAN` (as an operator would list them on a live server).
    pub fn scan(redis: &Redis) -> Vec<String> {
        let mut cursor = "0".to_string();
        let mut keys = Vec::new();
        loop {
            match redis.command(&["SCAN", &cursor, "COUNT", "100"]) {
                Reply::Array(mut parts) if parts.len() == 2 => {
                    let Reply::Array(batch) = parts.pop().unwrap() else {
                        panic!("SCAN batch")
                    };
                    keys.extend(batch.into_iter().map(Reply::text));
                    cursor = parts.pop().unwrap().text();
                }
                other => panic!("SCAN: {other:?}"),
            }
            if cursor == "0" {
                keys.sort();
                keys.dedup();
                return keys;
            }
        }
    }

    /// The hash tag of a key as Redis Cluster reads it: between the first `{` and the next
    /// `}`, when not empty (else the whole key is hashed).
    pub fn hash_tag(key: &str) -> &str {
        key.find('{')
            .and_then(|open| {
                let rest = &key[open + 1..];
                rest.find('}')
                    .filter(|&close| close > 0)
                    .map(|close| &rest[..close])
            })
            .unwrap_or(key)
    }

    /// The Redis key of a session cookie value `<id>.<tag>`: the user's hash tag and the hex
    /// SHA-256 of the id.
    pub fn redis_key(value: &str) -> String {
        let (id, tag) = value.split_once('.').expect("<id>.<tag>");
        format!("portcullis:{{u:{tag}}}:s:{}", sha256_hex(id.as_bytes()))
    }

    /// The Redis key of `user`'s index of sessions: the user's hash tag and the hex SHA-256 of
    /// the name.
    pub fn index_key(user: &str) -> String {
        format!(
            "portcullis:{{u:{}}}:sessions:{}",
            user_tag(user),
            sha256_hex(user.as_bytes())
        )
    }

    /// One field of a hash.
    pub fn field_of(redis: &Redis, key: &str, field: &str) -> String {
        redis
            .hgetall(key)
            .into_iter()
            .find(|(f, _)| f == field)
            .map(|(_, v)| v)
            .unwrap_or_else(|| panic!("field {field} of {key}"))
    }

    /// Unix milliseconds now.
    pub fn now_ms() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    }
}

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_redis_share_sessions() {
    if !redis_installed() {
        return;
    }
    let redis = Redis::start();
    let upstream = Upstream::start().await;
    let a = start(&upstream, &redis.url(), "2s", "1h").await;
    let b = start(&upstream, &redis.url(), "2s", "1h").await;

    // A login on A is valid on B.
    let id = login(&a).await;
    let c = cookie(&id);
    let response = b.get("/app/on-b", &[("cookie", &c)]).await;
    assert_eq!(response.status, 200, "{}", response.text());
    let seen = upstream.only("/app/on-b");
    assert_eq!(seen.header("x-forwarded-user").as_deref(), Some("alice"));
    assert_eq!(
        seen.header("x-forwarded-auth-method").as_deref(),
        Some("session")
    );
    assert_eq!(
        seen.header("cookie"),
        None,
        "the session cookie is stripped on B too"
    );
    let who = b.get("/.portcullis/whoami", &[("cookie", &c)]).await;
    assert_eq!(who.status, 200, "{}", who.text());
    assert_eq!(who.json()["user"], "alice");

    // Activity on either instance keeps the session alive for both: requests alternate
    // between A and B every 400 ms for 3.2 s, well past the 2 s idle timeout of each.
    let started = Instant::now();
    let mut n = 0;
    while started.elapsed() < Duration::from_millis(3200) {
        let proxy = if n % 2 == 0 { &a } else { &b };
        let response = proxy.get("/app/tick", &[("cookie", &c)]).await;
        assert_eq!(
            response.status,
            200,
            "request {n} at {:?}: {}",
            started.elapsed(),
            response.text()
        );
        n += 1;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }

    // A logout on B is refused on A.
    let origin = format!("http://{}", b.addr);
    let response = b
        .send(
            "POST",
            "/.portcullis/logout",
            &[("origin", &origin), ("cookie", &c)],
            "",
        )
        .await;
    assert_eq!(response.status, 303, "{}", response.text());
    let response = a.get("/app/after-logout", &[("cookie", &c)]).await;
    assert_eq!(response.status, 401, "{}", response.text());
    let event = a.access_of(&response).await;
    assert_eq!(event["reason"], "session_unknown", "{event}");
    assert_eq!(event["decision"], "deny", "{event}");
    assert_eq!(
        redis.int(&["EXISTS", &redis_key(&id)]),
        0,
        "the key is gone"
    );

    // An idle end seen by one instance is seen by the other.
    let id = login(&b).await;
    let c = cookie(&id);
    assert_eq!(a.get("/app/x", &[("cookie", &c)]).await.status, 200);
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let response = a
        .get("/app/x", &[("cookie", &c), ("accept", "text/html")])
        .await;
    assert_eq!(response.status, 302);
    assert_eq!(
        a.access_of(&response).await["reason"],
        "session_idle_timeout"
    );
    let response = b.get("/app/x", &[("cookie", &c)]).await;
    assert_eq!(
        response.status, 401,
        "an ended session is not revived on the other instance"
    );

    for proxy in [&a, &b] {
        assert!(!proxy.all_output().contains(&id), "session id in the log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_the_hash_of_the_id_and_expire_with_the_absolute_lifetime() {
    if !redis_installed() {
        return;
    }
    let redis = Redis::start();
    let upstream = Upstream::start().await;
    let proxy = start(&upstream, &redis.url(), "2s", "1h").await;

    let before = now_ms();
    let id = login(&proxy).await;
    let after = now_ms();
    let key = redis_key(&id);
    let mut keys = redis.keys("*");
    keys.sort();
    assert_eq!(
        keys,
        vec![key.clone(), index_key("alice")],
        "the session, named by alice's hash tag and the SHA-256 of the id, and alice's index"
    );
    let (bare_id, _) = id.split_once('.').unwrap();
    assert!(!key.contains(bare_id));
    // The index: the session's key hash, scored by its creation time.
    let members = redis.command(&["ZRANGE", &index_key("alice"), "0", "-1", "WITHSCORES"]);
    assert_eq!(
        members,
        Reply::Array(vec![
            Reply::Bulk(Some(sha256_hex(bare_id.as_bytes()))),
            Reply::Bulk(Some(field_of(&redis, &key, "c"))),
        ]),
        "the index holds the session"
    );
    assert_eq!(
        redis.int(&["TTL", &index_key("alice")]),
        redis.int(&["TTL", &key]),
        "the index lives as long as its last session"
    );

    // TTL: the remaining absolute lifetime (1 h) plus ended_memory (1 h by default).
    let ttl = redis.int(&["TTL", &key]);
    assert!((7195..=7200).contains(&ttl), "TTL {ttl}");
    let expire_at = redis.int(&["PEXPIRETIME", &key]);
    if expire_at > 0 {
        // Redis 7+: the exact absolute expiry.
        let lo = before as i64 + 7_200_000;
        let hi = after as i64 + 7_200_000;
        assert!(
            (lo..=hi).contains(&expire_at),
            "PEXPIRETIME {expire_at} not in {lo}..={hi}"
        );
    }

    // The record: user, created, last seen. The id itself is stored nowhere.
    let fields = redis.hgetall(&key);
    let field = |name: &str| {
        fields
            .iter()
            .find(|(f, _)| f == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("field {name} in {fields:?}"))
    };
    assert_eq!(field("u"), "alice");
    let created: u64 = field("c").parse().unwrap();
    assert!((before..=after).contains(&created), "{fields:?}");
    let seen: u64 = field("s").parse().unwrap();
    assert_eq!(seen, created);
    for (f, v) in &fields {
        assert!(
            !f.contains(&id) && !v.contains(&id),
            "the id is stored: {fields:?}"
        );
    }

    // Activity moves `s` (the idle deadline) but never the expiry (the absolute deadline).
    let pttl_before = redis.int(&["PTTL", &key]);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let response = proxy.get("/app/x", &[("cookie", &cookie(&id))]).await;
    assert_eq!(response.status, 200);
    let touched: u64 = redis
        .hgetall(&key)
        .into_iter()
        .find(|(f, _)| f == "s")
        .unwrap()
        .1
        .parse()
        .unwrap();
    assert!(
        touched >= created + 400,
        "last seen moved: {created} -> {touched}"
    );
    let pttl_after = redis.int(&["PTTL", &key]);
    assert!(
        pttl_after <= pttl_before - 300,
        "the key's expiry did not move: {pttl_before} then {pttl_after}"
    );

    // A short absolute lifetime: the TTL follows it.
    let proxy = start(&upstream, &redis.url(), "2s", "3s").await;
    let id = login(&proxy).await;
    let ttl = redis.int(&["TTL", &redis_key(&id)]);
    assert!(
        (3601..=3603).contains(&ttl),
        "3 s + 1 h of ended_memory: TTL {ttl}"
    );
    // After the absolute end (but within ended_memory) the reason is still specific.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let response = proxy.get("/app/late", &[("cookie", &cookie(&id))]).await;
    assert_eq!(response.status, 401);
    let event = proxy.access_of(&response).await;
    assert_eq!(
        event["reason"], "session_absolute_timeout",
        "an ended session is told why: {event}"
    );
    // What is left is a tombstone: the end reason only, with the key's expiry unchanged.
    assert_eq!(
        redis.hgetall(&redis_key(&id)),
        vec![("e".to_string(), "absolute".to_string())]
    );
    let ttl = redis.int(&["TTL", &redis_key(&id)]);
    assert!((3590..=3600).contains(&ttl), "TTL {ttl}");

    // Logout deletes the key.
    let id = login(&proxy).await;
    let key = redis_key(&id);
    assert_eq!(redis.int(&["EXISTS", &key]), 1);
    let origin = format!("http://{}", proxy.addr);
    let response = proxy
        .send(
            "POST",
            "/.portcullis/logout",
            &[("origin", &origin), ("cookie", &cookie(&id))],
            "",
        )
        .await;
    assert_eq!(response.status, 303);
    assert_eq!(redis.int(&["EXISTS", &key]), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_fails_session_routes_closed_and_they_recover_when_it_returns() {
    if !redis_installed() {
        return;
    }
    let mut redis = Redis::start();
    let upstream = Upstream::start().await;
    let proxy = start(&upstream, &redis.url(), "10m", "1h").await;
    let id = login(&proxy).await;
    let c = cookie(&id);
    assert_eq!(proxy.get("/app/up", &[("cookie", &c)]).await.status, 200);
    let alice = basic("alice", ALICE_PW);

    redis.kill();

    // Session routes fail closed with 503 store_unavailable, without a long hang.
    let started = Instant::now();
    let response = proxy.get("/app/down", &[("cookie", &c)]).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let event = assert_proxy_made(&proxy, &response, 503, "error", "store_unavailable").await;
    assert_eq!(event["route"], "/app");
    // A browser is told the service is unavailable: no redirect, and its cookie is kept.
    let response = proxy
        .get("/app/down", &[("cookie", &c), ("accept", "text/html")])
        .await;
    assert_eq!(response.status, 503, "{response:?}");
    assert_eq!(response.header("location"), None);
    assert!(
        response.header_all("set-cookie").is_empty(),
        "the cookie is not cleared: {response:?}"
    );
    assert_eq!(
        proxy.access_of(&response).await["reason"],
        "store_unavailable"
    );
    // A cookie on the session-or-Basic route also fails closed, even with Basic alongside.
    let response = proxy
        .get("/mixed", &[("cookie", &c), ("authorization", &alice)])
        .await;
    assert_eq!(response.status, 503);
    // A new login cannot be stored.
    let response = login_with(&proxy, "alice", ALICE_PW, "/", &[]).await;
    assert_eq!(response.status, 503, "{}", response.text());
    assert!(response.header_all("set-cookie").is_empty());
    assert_eq!(
        proxy.access_of(&response).await["reason"],
        "store_unavailable"
    );
    assert!(
        upstream
            .requests()
            .iter()
            .all(|r| r.path != "/app/down" && r.path != "/mixed"),
        "nothing was forwarded while the store was down"
    );

    // Basic keeps working: a Basic-only route, and Basic (not from a browser) on the mixed one.
    let response = proxy.get("/basic/ok", &[("authorization", &alice)]).await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(
        upstream
            .only("/basic/ok")
            .header("x-forwarded-user")
            .as_deref(),
        Some("alice")
    );
    let response = proxy.get("/api-call", &[("authorization", &alice)]).await;
    assert_eq!(response.status, 200, "{}", response.text());
    let response = proxy.get("/public/ok", &[]).await;
    assert_eq!(response.status, 200);

    // Redis comes back on the same port (empty: it kept nothing): a new login works within
    // the deadline, and its session admits.
    redis.restart();
    let started = Instant::now();
    let id = loop {
        let response = login_with(&proxy, "alice", ALICE_PW, "/", &[]).await;
        if response.status == 303 {
            break session_id(&response);
        }
        assert_eq!(response.status, 503, "{}", response.text());
        assert!(
            started.elapsed() < DEADLINE,
            "no successful login {DEADLINE:?} after Redis came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let response = proxy.get("/app/back", &[("cookie", &cookie(&id))]).await;
    assert_eq!(response.status, 200, "{}", response.text());
    let mut keys = redis.keys("*");
    keys.sort();
    assert_eq!(keys, vec![redis_key(&id), index_key("alice")]);
    // The session from before the restart is gone with the data: unknown, not an error.
    let response = proxy.get("/app/old", &[("cookie", &c)]).await;
    assert_eq!(response.status, 401);
    assert_eq!(
        proxy.access_of(&response).await["reason"],
        "session_unknown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_started_before_redis_connects_once_it_is_up() {
    if !redis_installed() {
        return;
    }
    let upstream = Upstream::start().await;
    let port = free_port();
    let proxy = start(
        &upstream,
        &format!("redis://127.0.0.1:{port}/0"),
        "10m",
        "1h",
    )
    .await;
    // Redis is not there yet: session routes fail closed, Basic works.
    let response = login_with(&proxy, "alice", ALICE_PW, "/", &[]).await;
    assert_eq!(response.status, 503, "{}", response.text());
    let response = proxy
        .get(
            "/app/x",
            &[("cookie", &cookie(&unknown_session_value('A')))],
        )
        .await;
    assert_eq!(response.status, 503);
    let response = proxy
        .get("/basic/x", &[("authorization", &basic("alice", ALICE_PW))])
        .await;
    assert_eq!(response.status, 200);

    // Now Redis starts on that port.
    let _redis = Redis::start_on(port);
    let started = Instant::now();
    loop {
        let response = login_with(&proxy, "alice", ALICE_PW, "/", &[]).await;
        if response.status == 303 {
            let id = session_id(&response);
            assert_eq!(
                proxy
                    .get("/app/y", &[("cookie", &cookie(&id))])
                    .await
                    .status,
                200
            );
            break;
        }
        assert!(started.elapsed() < DEADLINE, "no login after Redis started");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// SPEC §4: "session store unreachable (route needs a session) → 503; Basic and Bearer routes
/// keep working". On a route that accepts `["session", "basic"]`, valid Basic credentials from
/// a browser navigation are answered 503 while Redis is down, because the proxy insists on
/// starting a browser session for them (app.rs `start_browser_session`), although the route
/// does not need one and the same credentials from a non-browser client pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_basic_login_on_a_mixed_route_still_works_while_redis_is_down() {
    if !redis_installed() {
        return;
    }
    let mut redis = Redis::start();
    let upstream = Upstream::start().await;
    let proxy = start(&upstream, &redis.url(), "10m", "1h").await;
    redis.kill();
    let response = proxy
        .get(
            "/page",
            &[
                ("authorization", &basic("alice", ALICE_PW)),
                ("accept", "text/html"),
            ],
        )
        .await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(
        upstream
            .only("/page")
            .header("x-forwarded-auth-method")
            .as_deref(),
        Some("basic")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_redis_share_failure_counts_and_lockouts() {
    if !redis_installed() {
        return;
    }
    let redis = Redis::start();
    let upstream = Upstream::start().await;
    let body = format!(
        "{}\n[session]\nstore = \"redis\"\nredis_url = \"{}\"\ncookie_secure = false\n\n\
         [rate_limit]\nmax_failures = 4\nwindow = \"60s\"\nlockout = \"60s\"\n{SESSION_ROUTES}",
        principals(),
        redis.url()
    );
    let config =
        ProxyConfig::new(upstream.url(), body).server("trusted_proxies = [\"127.0.0.1/32\"]");
    let a = config.clone().start().await;
    let b = config.start().await;
    async fn attempt(proxy: &Proxy, ip: &str, user: &str, password: &str) -> Resp {
        let credential = basic(user, password);
        let headers = [
            ("authorization", credential.as_str()),
            ("x-forwarded-for", ip),
        ];
        proxy.get("/basic/x", &headers).await
    }

    // Four wrong passwords for alice, alternating instances, each from a new address: no
    // address fails twice, but the user reaches the limit across the cluster.
    for (n, proxy) in [&a, &b, &a, &b].into_iter().enumerate() {
        let ip = format!("198.51.100.{n}");
        let response = attempt(proxy, &ip, "alice", WRONG_PW).await;
        assert_proxy_made(proxy, &response, 401, "deny", "bad_password").await;
    }
    // Now alice is locked on both instances, from a fresh address, right password or not.
    for proxy in [&a, &b] {
        let response = attempt(proxy, "203.0.113.9", "alice", ALICE_PW).await;
        assert_proxy_made(proxy, &response, 429, "deny", "rate_limited").await;
        let retry: u64 = response.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=60).contains(&retry), "Retry-After {retry}");
    }
    // Bob, from the same fresh address, is not.
    let response = attempt(&b, "203.0.113.9", "bob", BOB_PW).await;
    assert_eq!(response.status, 200, "{}", response.text());
    let forwarded: Vec<String> = upstream.requests().iter().map(|r| r.path.clone()).collect();
    assert_eq!(forwarded, ["/basic/x"], "only bob's request was forwarded");
    assert_eq!(
        upstream
            .only("/basic/x")
            .header("x-forwarded-user")
            .as_deref(),
        Some("bob")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_after_an_end_is_told_why_in_a_browser_that_expires_cookies() {
    if !redis_installed() {
        return;
    }
    let redis = Redis::start();
    let upstream = Upstream::start().await;
    let body = format!(
        "{}\n[session]\nstore = \"redis\"\nredis_url = \"{}\"\n{ENDS_SESSION_LINES}\n{SESSION_ROUTES}",
        principals(),
        redis.url()
    );
    let proxy = Proxy::start(&upstream, &body).await;
    ended_sessions_are_told_why(&proxy).await;
}

/// `GET path` on the admin listener: (status, body).
async fn admin_get(proxy: &Proxy, path: &str) -> (u16, String) {
    let response = send(proxy.admin(), "GET", path, &[], Vec::new()).await;
    (response.status, response.text())
}

/// A gauge's value in `/metrics`.
async fn gauge(proxy: &Proxy, name: &str) -> i64 {
    let (_, text) = admin_get(proxy, "/metrics").await;
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics:\n{text}"))
}

/// SPEC §6: with Redis killed, Basic never waits on it for long (a circuit breaker), failed
/// passwords are counted and locked out in the instance's memory, session routes fail closed
/// at once, and `/readyz` (still 200: the store answered before) and `/metrics` say so; after
/// Redis restarts, counting is shared again. (Before: cached Basic took 2 s per request and
/// twelve wrong passwords got no 429.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_keeps_basic_answering_and_lockouts_local_until_it_returns() {
    if !redis_installed() {
        return;
    }
    let mut redis = Redis::start();
    let upstream = Upstream::start().await;
    let body = format!(
        "{}\n[session]\nstore = \"redis\"\nredis_url = \"{}\"\ncookie_secure = false\n\n\
         [rate_limit]\nmax_failures = 10\nwindow = \"60s\"\nlockout = \"60s\"\n{SESSION_ROUTES}",
        principals(),
        redis.url()
    );
    let proxy = ProxyConfig::new(upstream.url(), body)
        .server("trusted_proxies = [\"127.0.0.1/32\"]\nadmin_listen = \"127.0.0.1:0\"")
        .start()
        .await;
    let alice = basic("alice", ALICE_PW);
    let basic_from = |ip: &'static str, credential: String| {
        let proxy = &proxy;
        async move {
            proxy
                .get(
                    "/basic/x",
                    &[("authorization", &credential), ("x-forwarded-for", ip)],
                )
                .await
        }
    };
    let c = cookie(&login(&proxy).await);
    assert_eq!(basic_from("192.0.2.1", alice.clone()).await.status, 200);
    assert_eq!(
        admin_get(&proxy, "/readyz").await,
        (200, "ready\n".to_string())
    );
    assert_eq!(gauge(&proxy, "portcullis_store_up").await, 1);
    assert_eq!(gauge(&proxy, "portcullis_failure_counting_local").await, 0);
    // Shared counting uses hash-tagged keys: one slot per counted key.
    let response = basic_from("192.0.2.99", basic("bob", WRONG_PW)).await;
    assert_eq!(response.status, 401);
    let keys = redis.keys("portcullis:{fail:*");
    assert!(
        keys.contains(&"portcullis:{fail:ip:192.0.2.99}:failures".to_string()),
        "{keys:?}"
    );

    redis.kill();

    // Cached Basic keeps answering, promptly: twenty requests within a deadline that the old
    // 2 s wait per request would have blown ten times over.
    let started = Instant::now();
    for _ in 0..20 {
        let response = basic_from("192.0.2.1", alice.clone()).await;
        assert_eq!(response.status, 200, "{}", response.text());
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(4),
        "20 cached Basic requests took {took:?}"
    );
    // Twelve wrong passwords from one address: ten are verified, then 429 from local counts.
    let mut statuses = Vec::new();
    for n in 0..12 {
        let response = basic_from("203.0.113.7", basic(&format!("nobody{n}"), WRONG_PW)).await;
        statuses.push(response.status);
    }
    assert_eq!(
        statuses,
        [401, 401, 401, 401, 401, 401, 401, 401, 401, 401, 429, 429]
    );
    // The lock holds for the right password too; other addresses are not affected.
    let response = basic_from("203.0.113.7", alice.clone()).await;
    assert_proxy_made(&proxy, &response, 429, "deny", "rate_limited").await;
    // Session routes fail closed.
    let response = proxy.get("/app/down", &[("cookie", &c)]).await;
    assert_proxy_made(&proxy, &response, 503, "error", "store_unavailable").await;
    // Still ready (the store answered before), and degraded, as the metrics say too.
    let (status, text) = admin_get(&proxy, "/readyz").await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("session store unreachable"), "{text}");
    assert_eq!(gauge(&proxy, "portcullis_store_up").await, 0);
    assert_eq!(gauge(&proxy, "portcullis_failure_counting_local").await, 1);

    // Redis returns (empty): sessions work again and failures are counted in Redis again.
    redis.restart();
    let started = Instant::now();
    let id = loop {
        let response = login_with(&proxy, "alice", ALICE_PW, "/", &[]).await;
        if response.status == 303 {
            break session_id(&response);
        }
        assert!(
            started.elapsed() < DEADLINE,
            "no login after Redis came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        proxy
            .get("/app/back", &[("cookie", &cookie(&id))])
            .await
            .status,
        200
    );
    for n in 0.. {
        let response = basic_from("198.51.100.77", basic(&format!("later{n}"), WRONG_PW)).await;
        assert_eq!(response.status, 401, "{}", response.text());
        if redis
            .keys("portcullis:{fail:ip:198.51.100.77}:*")
            .contains(&"portcullis:{fail:ip:198.51.100.77}:failures".to_string())
        {
            break;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "failures never counted in Redis again"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(basic_from("192.0.2.1", alice.clone()).await.status, 200);
    assert_eq!(
        admin_get(&proxy, "/readyz").await,
        (200, "ready\n".to_string())
    );
    assert_eq!(gauge(&proxy, "portcullis_store_up").await, 1);
    assert_eq!(gauge(&proxy, "portcullis_failure_counting_local").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_change_revokes_sessions_on_every_instance_sharing_redis() {
    if !redis_installed() {
        return;
    }
    const ROTATED_PW: &str = "alice-rotated-password-5521";
    let redis = Redis::start();
    let upstream = Upstream::start().await;
    let a = start(&upstream, &redis.url(), "30m", "1h").await;
    let b = start(&upstream, &redis.url(), "30m", "1h").await;
    let json = ("accept", "application/json");

    let alice_id = login(&a).await;
    let alice = cookie(&alice_id);
    let bob = sign_in(&b, "bob", BOB_PW).await;
    // The record keeps a 16-hex-digit fingerprint of the password, never the hash.
    let fields = redis.hgetall(&redis_key(&alice_id));
    let print = fields
        .iter()
        .find(|(k, _)| k == "p")
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| panic!("a fingerprint field: {fields:?}"));
    assert!(
        print.len() == 16 && print.bytes().all(|b| b.is_ascii_hexdigit()),
        "{print}"
    );
    assert!(fields
        .iter()
        .all(|(_, v)| v != alice_hash() && !v.starts_with("$")));
    for proxy in [&a, &b] {
        for c in [&alice, &bob] {
            let response = proxy.get("/app/before", &[("cookie", c)]).await;
            assert_eq!(response.status, 200, "{}", response.text());
        }
    }

    // Only A is reloaded with alice's new hash: alice's next request there ends her session
    // in Redis, so B, still on the old config, refuses it too.
    let rotated = bcrypt::hash(ROTATED_PW, 4).unwrap();
    let text = |proxy: &Proxy| std::fs::read_to_string(&proxy.config_path);
    let old_text = text(&a).expect("the config file of A");
    let new_text = old_text.replace(alice_hash(), &rotated);
    assert_ne!(new_text, old_text);
    a.rewrite_config(&new_text);
    a.signal("HUP").await;
    a.wait_for_events("configuration reloaded", 1).await;
    a.wait_for_events("reload: sessions of 1 users will be revoked", 1)
        .await;
    let response = a.get("/app/after", &[json, ("cookie", &alice)]).await;
    assert_proxy_made(&a, &response, 401, "deny", "session_revoked").await;
    let response = b.get("/app/after", &[json, ("cookie", &alice)]).await;
    assert_proxy_made(&b, &response, 401, "deny", "session_revoked").await;
    assert_eq!(
        redis.hgetall(&redis_key(&alice_id)),
        vec![("e".to_string(), "revoked".to_string())],
        "a tombstone holding only the end reason"
    );

    // Alice signs in on A with her new password. B, not reloaded yet, cannot vouch for that
    // session: it refuses it, but does not end it for everyone.
    let alice_again = sign_in(&a, "alice", ROTATED_PW).await;
    let response = b.get("/app/early", &[json, ("cookie", &alice_again)]).await;
    let event = assert_proxy_made(&b, &response, 401, "deny", "session_revoked").await;
    assert!(
        event["detail"]
            .as_str()
            .is_some_and(|d| d.contains("reload every instance")),
        "{event}"
    );

    // B reloaded too: alice's new session works on both, bob's was never touched.
    b.rewrite_config(&new_text);
    b.signal("HUP").await;
    b.wait_for_events("configuration reloaded", 1).await;
    for proxy in [&a, &b] {
        for c in [&alice_again, &bob] {
            let response = proxy.get("/app/later", &[("cookie", c)]).await;
            assert_eq!(response.status, 200, "{}", response.text());
        }
        let response = proxy.get("/app/later", &[json, ("cookie", &alice)]).await;
        assert_proxy_made(proxy, &response, 401, "deny", "session_revoked").await;
    }

    // A record written by an earlier version has no fingerprint: it is revoked on first use
    // (CHANGELOG, Migrations), with a detail that says so.
    let bob_id = bob.split_once('=').unwrap().1;
    assert_eq!(redis.int(&["HDEL", &redis_key(bob_id), "p"]), 1);
    let response = a.get("/app/legacy", &[json, ("cookie", &bob)]).await;
    let event = assert_proxy_made(&a, &response, 401, "deny", "session_revoked").await;
    assert!(
        event["detail"]
            .as_str()
            .is_some_and(|d| d.contains("earlier version")),
        "{event}"
    );
    let response = b.get("/app/legacy", &[json, ("cookie", &bob)]).await;
    assert_proxy_made(&b, &response, 401, "deny", "session_revoked").await;
}

/// Issue 13, unbounded sessions and the key layout, on Redis with two instances: a browser
/// resending Basic with its cookies keeps one session (50 navigations, one `Set-Cookie`, one
/// session key); clients without cookies start one each, but `max_per_user = 3` holds across
/// instances: the 4th live session ends the oldest, which both instances then refuse as
/// `session_revoked` with the detail, and the user's index never holds more than 3. Every key
/// one user's sessions use shares one hash tag (one Redis Cluster slot).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_user_cap_and_session_reuse_hold_on_redis_and_keys_share_a_slot() {
    if !redis_installed() {
        return;
    }
    let redis = Redis::start();
    let upstream = Upstream::start().await;
    let a = start_with(&upstream, &redis.url(), "max_per_user = 3").await;
    let b = start_with(&upstream, &redis.url(), "max_per_user = 3").await;
    let alice_tag = format!("u:{}", user_tag("alice"));
    let auth = basic("alice", ALICE_PW);
    let navigation = [("authorization", auth.as_str()), ("accept", "text/html")];

    let jar = Jar::default();
    let mut set_cookies = 0;
    for n in 0..50 {
        let proxy = if n % 2 == 0 { &a } else { &b };
        let response = jar.get(proxy, &format!("/nav/{n}"), &navigation).await;
        assert_eq!(response.status, 200, "{n}: {}", response.text());
        // Session cookies only (the first navigation also gets a known-device cookie).
        set_cookies += response
            .header_all("set-cookie")
            .iter()
            .filter(|c| c.contains("portcullis_session="))
            .count();
    }
    assert_eq!(set_cookies, 1, "one session for 50 navigations");
    let first = jar.header().expect("the jar keeps the session cookie");
    let sessions_of_alice = |redis: &Redis| {
        scan(redis)
            .into_iter()
            .filter(|k| k.starts_with(&format!("portcullis:{{{alice_tag}}}:s:")))
            .count()
    };
    assert_eq!(sessions_of_alice(&redis), 1, "{:?}", scan(&redis));

    // Without cookies: each navigation is a new login.
    let bob = b
        .get(
            "/nav/bob",
            &[
                ("authorization", &basic("bob", BOB_PW)),
                ("accept", "text/html"),
            ],
        )
        .await;
    let bob = cookie(&session_id(&bob));
    let mut later = Vec::new();
    for (n, proxy) in [&b, &a, &b].into_iter().enumerate() {
        let response = proxy.get(&format!("/fresh/{n}"), &navigation).await;
        assert_eq!(response.status, 200, "{}", response.text());
        later.push(cookie(&session_id(&response)));
    }
    for proxy in [&a, &b] {
        for _ in 0..2 {
            let response = proxy.get("/app/first", &[("cookie", &first)]).await;
            assert_eq!(response.status, 401, "{}", response.text());
            let event = proxy.access_of(&response).await;
            assert_eq!(event["reason"], "session_revoked", "{event}");
            assert_eq!(
                event["detail"],
                "ended because alice started a 4th session; session.max_per_user = 3",
                "{event}"
            );
        }
    }
    for c in later.iter().chain([&bob]) {
        assert_eq!(a.get("/app/x", &[("cookie", c)]).await.status, 200, "{c}");
    }
    assert_eq!(redis.int(&["ZCARD", &index_key("alice")]), 3);
    assert_eq!(
        sessions_of_alice(&redis),
        4,
        "three sessions and a tombstone"
    );

    // Ten more logins: still three live, and the index holds only them.
    for n in 0..10 {
        let response = a.get(&format!("/more/{n}"), &navigation).await;
        later.push(cookie(&session_id(&response)));
    }
    assert_eq!(redis.int(&["ZCARD", &index_key("alice")]), 3);
    let mut admitted = 0;
    for c in &later {
        if b.get("/app/x", &[("cookie", c)]).await.status == 200 {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 3, "exactly max_per_user live sessions");

    // The layout: every key carries a hash tag; alice's session keys and her index share one,
    // bob's are apart.
    let keys = scan(&redis);
    for key in &keys {
        assert!(key.starts_with("portcullis:{"), "{key}");
        assert_ne!(hash_tag(key), key.as_str(), "no hash tag: {key}");
    }
    let alices: Vec<&String> = keys.iter().filter(|k| hash_tag(k) == alice_tag).collect();
    assert_eq!(
        alices.len(),
        14 + 1,
        "14 sessions or tombstones and the index: {keys:?}"
    );
    assert!(alices.contains(&&index_key("alice")));
    let bob_value = bob.split_once('=').unwrap().1;
    assert_eq!(
        hash_tag(&redis_key(bob_value)),
        format!("u:{}", user_tag("bob"))
    );
    assert!(keys.contains(&redis_key(bob_value)));
    assert!(keys.contains(&index_key("bob")));
}

/// Issue 13: sessions past their idle deadline are not live; a login drops them from the
/// user's index without revoking anything (each later tells its own end, `idle`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_sessions_leave_the_index_and_do_not_count_toward_the_cap() {
    if !redis_installed() {
        return;
    }
    let redis = Redis::start();
    let upstream = Upstream::start().await;
    let proxy = start_with(
        &upstream,
        &redis.url(),
        "max_per_user = 2\nidle_timeout = \"1s\"\nabsolute_timeout = \"1h\"",
    )
    .await;
    let old = [login(&proxy).await, login(&proxy).await];
    assert_eq!(redis.int(&["ZCARD", &index_key("alice")]), 2);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let new = login(&proxy).await;
    assert_eq!(
        redis.int(&["ZCARD", &index_key("alice")]),
        1,
        "only the new one"
    );
    for value in old {
        let response = proxy.get("/app/x", &[("cookie", &cookie(&value))]).await;
        assert_eq!(response.status, 401);
        assert_eq!(
            proxy.access_of(&response).await["reason"],
            "session_idle_timeout"
        );
    }
    let response = proxy.get("/app/x", &[("cookie", &cookie(&new))]).await;
    assert_eq!(response.status, 200, "{}", response.text());
}

/// Issue 13: the cap is one atomic step in Redis, so concurrent logins on two instances never
/// leave more than `max_per_user` live sessions (20 at once, cap 3: exactly 3 admit after).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_logins_on_two_instances_never_overshoot_the_cap() {
    if !redis_installed() {
        return;
    }
    let redis = Redis::start();
    let upstream = Upstream::start().await;
    let a = start_with(&upstream, &redis.url(), "max_per_user = 3").await;
    let b = start_with(&upstream, &redis.url(), "max_per_user = 3").await;
    let auth = basic("alice", ALICE_PW);
    let navigation = [("authorization", auth.as_str()), ("accept", "text/html")];
    // Verified once, so the 20 below are answered from the verification cache at once.
    assert_eq!(a.get("/warm", &navigation).await.status, 200);
    assert_eq!(b.get("/warm", &navigation).await.status, 200);
    let logins = (0..20).map(|n| {
        let proxy = if n % 2 == 0 { &a } else { &b };
        let navigation = &navigation;
        async move {
            let response = proxy.get(&format!("/burst/{n}"), navigation).await;
            assert_eq!(response.status, 200, "{}", response.text());
            cookie(&session_id(&response))
        }
    });
    let cookies = futures_util::future::join_all(logins).await;
    let mut admitted = 0;
    for c in &cookies {
        let response = a.get("/app/x", &[("cookie", c)]).await;
        match response.status {
            200 => admitted += 1,
            401 => assert_eq!(a.access_of(&response).await["reason"], "session_revoked"),
            other => panic!("{other}: {}", response.text()),
        }
    }
    assert_eq!(admitted, 3, "exactly max_per_user live sessions");
    assert_eq!(redis.int(&["ZCARD", &index_key("alice")]), 3);
}

/// Issue 13 with revocation: a session started with another password than the current one is
/// no longer live, so it neither counts toward the cap nor is ended as capped (its next request
/// is refused as revoked, saying the password changed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_of_an_old_password_does_not_count_toward_the_cap() {
    if !redis_installed() {
        return;
    }
    let redis = Redis::start();
    let upstream = Upstream::start().await;
    let proxy = start_with(&upstream, &redis.url(), "max_per_user = 2").await;
    let stale = login(&proxy).await;
    let kept = login(&proxy).await;
    // As if `stale` began before a password change.
    assert_eq!(
        redis.int(&["HSET", &redis_key(&stale), "p", "0000000000000000"]),
        0
    );
    let new = login(&proxy).await;
    assert_eq!(redis.int(&["ZCARD", &index_key("alice")]), 2);
    for value in [&kept, &new] {
        let response = proxy.get("/app/x", &[("cookie", &cookie(value))]).await;
        assert_eq!(response.status, 200, "{}", response.text());
    }
    let response = proxy.get("/app/x", &[("cookie", &cookie(&stale))]).await;
    assert_eq!(response.status, 401);
    let event = proxy.access_of(&response).await;
    assert_eq!(event["reason"], "session_revoked", "{event}");
    assert!(
        event["detail"]
            .as_str()
            .is_some_and(|d| d.contains("password of user \"alice\" changed")),
        "{event}"
    );
}
