//! Floods: wrong passwords that must not starve valid clients, and a stalled hashing queue.

use super::*;

/// 2,000 wrong passwords from forty concurrent clients (each request from its own address and
/// for its own user name, so nothing locks and every one would need a hash) while a
/// session-authenticated client and a Basic client with cached credentials keep working: every
/// one of their responses is right, and none of the flood reaches the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_password_flood_does_not_starve_valid_clients() {
    let _serial = SERIAL.lock().await;
    const FLOOD: usize = 2_000;
    const CLIENTS: usize = 40;
    // The proxy answers a password check within 12 s whatever the load: at most 2 s waiting
    // for a hashing thread, at most 10 s for the hash.
    const FLOOD_PATIENCE: Duration = Duration::from_secs(15);
    let upstream = Upstream::start().await;
    let body = format!(
        "[session]\ncookie_secure = false\n{}\n[[route]]\npath = \"/\"\nauth = [\"session\", \"basic\"]\n\n[[route]]\npath = \"/flood\"\nauth = [\"basic\"]\n",
        principals()
    );
    let proxy = ProxyConfig::new(upstream.url(), body)
        .server("trusted_proxies = [\"127.0.0.1/32\"]")
        .start()
        .await;

    let cookie = sign_in(&proxy, "alice", ALICE_PW).await;

    // The valid clients: one with the session, one with Basic credentials already verified
    // (and so remembered) once.
    let alice = basic("alice", ALICE_PW);
    assert_eq!(
        proxy
            .get("/warm", &[("authorization", &alice)])
            .await
            .status,
        200
    );

    async fn valid_client(
        addr: SocketAddr,
        header: (&'static str, String),
        tag: &'static str,
        stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
        min: usize,
    ) -> (Vec<Duration>, Vec<String>, Duration) {
        let mut client = KeepAlive::new(addr);
        let mut latencies = Vec::new();
        let mut wrong = Vec::new();
        let start = Instant::now();
        let mut n = 0;
        while n < min || !stop.load(std::sync::atomic::Ordering::SeqCst) {
            let path = format!("/{tag}/{n}");
            let sent = Instant::now();
            let (status, body) = client
                .send("GET", &path, &[(header.0, header.1.as_str())])
                .await;
            latencies.push(sent.elapsed());
            if status != 200 || body != "upstream ok" {
                wrong.push(format!(
                    "{path}: {status} {}",
                    String::from_utf8_lossy(&body)
                ));
            }
            n += 1;
        }
        (latencies, wrong, start.elapsed())
    }

    let idle = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let (base_latencies, base_wrong, base_took) = valid_client(
        proxy.addr,
        ("cookie", cookie.clone()),
        "baseline",
        idle.clone(),
        200,
    )
    .await;
    assert!(base_wrong.is_empty(), "{base_wrong:?}");

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let session_client = tokio::spawn(valid_client(
        proxy.addr,
        ("cookie", cookie.clone()),
        "session",
        stop.clone(),
        50,
    ));
    let basic_client = tokio::spawn(valid_client(
        proxy.addr,
        ("authorization", alice.clone()),
        "basic",
        stop.clone(),
        50,
    ));

    let flood_start = Instant::now();
    let mut flooders = Vec::new();
    for c in 0..CLIENTS {
        let addr = proxy.addr;
        flooders.push(tokio::spawn(async move {
            let mut client = KeepAlive::new(addr);
            let mut counts = std::collections::BTreeMap::<u16, usize>::new();
            for i in 0..FLOOD / CLIENTS {
                let n = c * (FLOOD / CLIENTS) + i;
                let ip = format!("10.{}.{}.{}", n / 65536, (n / 256) % 256, n % 256);
                let credential = basic(&format!("user{n}"), WRONG_PW);
                // A flooder gives up after FLOOD_PATIENCE (status 0): the proxy should have
                // answered long before.
                let path = format!("/flood/{n}");
                let headers = [
                    ("authorization", credential.as_str()),
                    ("x-forwarded-for", &ip),
                ];
                let sent = client.send("GET", &path, &headers);
                let status = match tokio::time::timeout(FLOOD_PATIENCE, sent).await {
                    Ok((status, _)) => status,
                    Err(_) => {
                        client = KeepAlive::new(addr);
                        0
                    }
                };
                *counts.entry(status).or_default() += 1;
            }
            counts
        }));
    }
    let mut flood_counts = std::collections::BTreeMap::<u16, usize>::new();
    for flooder in flooders {
        for (status, count) in flooder.await.unwrap() {
            *flood_counts.entry(status).or_default() += count;
        }
    }
    let flood_took = flood_start.elapsed();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (session_latencies, session_wrong, session_took) = session_client.await.unwrap();
    let (basic_latencies, basic_wrong, basic_took) = basic_client.await.unwrap();

    let rate = |n: usize, d: Duration| n as f64 / d.as_secs_f64();
    eprintln!(
        "flood: {FLOOD} bad passwords from {CLIENTS} clients in {flood_took:?}: {flood_counts:?} \
         (0 = no answer within {FLOOD_PATIENCE:?})\n\
         session client, no flood: {} requests, {:.0} req/s, p50 {:.1} ms, p99 {:.1} ms\n\
         session client, flood:    {} requests, {:.0} req/s, p50 {:.1} ms, p99 {:.1} ms\n\
         basic (cached) client, flood: {} requests, {:.0} req/s, p50 {:.1} ms, p99 {:.1} ms",
        base_latencies.len(),
        rate(base_latencies.len(), base_took),
        percentile_ms(&base_latencies, 50),
        percentile_ms(&base_latencies, 99),
        session_latencies.len(),
        rate(session_latencies.len(), session_took),
        percentile_ms(&session_latencies, 50),
        percentile_ms(&session_latencies, 99),
        basic_latencies.len(),
        rate(basic_latencies.len(), basic_took),
        percentile_ms(&basic_latencies, 50),
        percentile_ms(&basic_latencies, 99),
    );

    assert!(
        session_wrong.is_empty(),
        "session client: {session_wrong:#?}"
    );
    assert!(basic_wrong.is_empty(), "basic client: {basic_wrong:#?}");
    assert_eq!(flood_counts.values().sum::<usize>(), FLOOD);
    // Every flood request is answered (0 would be no answer within FLOOD_PATIENCE): a
    // verification that cannot get a hashing thread within 2 s is a 503, never a hang.
    assert!(
        flood_counts.keys().all(|s| matches!(s, 401 | 429 | 503)),
        "{flood_counts:?}"
    );
    // The upstream saw every valid request, as alice, and nothing of the flood.
    let received = upstream.requests();
    assert!(received.iter().all(|r| !r.path.starts_with("/flood")));
    let valid = 1 + base_latencies.len() + session_latencies.len() + basic_latencies.len();
    assert_eq!(received.len(), valid);
    assert!(received
        .iter()
        .all(|r| r.header("x-forwarded-user").as_deref() == Some("alice")));
    assert!(received.iter().all(|r| r.header("cookie").is_none()));
}

/// More wrong passwords for a user with an expensive hash than the hashing threads can get
/// through: the queue past its bound is answered 503 at once, a queued check that no thread
/// took within 2 s is answered 503 rather than hashed late, every answer comes, and the proxy
/// serves the right password afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_hashing_queue_answers_503_and_recovers() {
    let _serial = SERIAL.lock().await;
    let upstream = Upstream::start().await;
    // No lockout, so every attempt asks for a hash.
    let proxy = limited(&upstream, false, "max_failures = 0").start().await;
    // The proxy runs one hashing thread per core but one, each with a queue of 32.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let capacity = cores.saturating_sub(1).max(1) * 33;
    let attempts: Vec<_> = (0..capacity + 8)
        .map(|n| {
            let credential = basic("heavy", &format!("wrong-{n}"));
            let addr = proxy.addr;
            tokio::spawn(async move {
                let headers = [("authorization", credential.as_str())];
                let sent = send(addr, "GET", "/home/x", &headers, Bytes::new());
                tokio::time::timeout(Duration::from_secs(15), sent).await
            })
        })
        .collect();
    let mut answers = Vec::new();
    for attempt in attempts {
        let response = attempt.await.unwrap().expect("an answer within 15 s");
        answers.push(response);
    }
    let mut details = std::collections::BTreeSet::new();
    for response in &answers {
        match response.status {
            401 => {}
            503 => {
                assert!(response.header("retry-after").is_some(), "{response:?}");
                let event = assert_proxy_made(&proxy, response, 503, "error", "overloaded").await;
                let detail = event["detail"].as_str().unwrap_or_default();
                details.insert(detail.split(' ').take(3).collect::<Vec<_>>().join(" "));
            }
            other => panic!("unexpected {other}: {}", response.text()),
        }
    }
    assert!(
        details.contains("password verification queue"),
        "no 503 for a full queue: {details:?}"
    );
    assert!(
        details.contains("no hashing thread"),
        "no 503 for a stale queued check: {details:?}"
    );
    let response = proxy
        .get("/home/x", &[("authorization", &basic("heavy", HEAVY_PW))])
        .await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert!(upstream.requests().iter().all(|r| r.path == "/home/x"));
    assert_eq!(upstream.requests().len(), 1);
}
