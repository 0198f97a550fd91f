//! Graceful shutdown on SIGTERM: in-flight requests drain, new connections are refused, the grace period is kept.

use super::*;

/// Whether a new TCP connection to `addr` is refused.
async fn refused(addr: SocketAddr) -> bool {
    matches!(
        TcpStream::connect(addr).await,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_the_in_flight_request_refuses_new_connections_and_exits_0() {
    let upstream = Upstream::start().await;
    let grace = Duration::from_secs(10);
    let body = "[[route]]\npath = \"/public\"\nauth = []\n";
    let mut proxy = Proxy::start_in(
        tempfile::tempdir().unwrap(),
        &config_text(&upstream.url(), "shutdown_grace = \"10s\"", body),
    )
    .await;
    let addr = proxy.addr;

    // An idle keep-alive connection, which shutdown may simply close.
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut idle, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    assert_eq!(h1_get(&mut idle, "/public/warm", &[]).await.status, 200);

    // The upstream takes 3 s to answer `/slow`.
    let slow =
        tokio::spawn(async move { send(addr, "GET", "/public/slow", &[], Bytes::new()).await });
    upstream.wait_for_requests(2).await;
    let signalled = Instant::now();
    proxy.signal("TERM").await;

    // New connections are refused while the slow request is still in flight.
    let start = Instant::now();
    while !refused(addr).await {
        assert!(
            start.elapsed() < DEADLINE,
            "new connections were still accepted after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !slow.is_finished(),
        "the slow request finished before the listener closed"
    );
    proxy
        .wait_for_events("shutting down: no longer accepting connections", 1)
        .await;

    // The in-flight request completes normally.
    let response = slow.await.expect("the slow request");
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.text(), "slow ok");
    let event = proxy.access_for(&response.request_id()).await;
    assert_eq!(event["status"], 200, "{event}");

    // Then the process exits 0, well within the grace period.
    let status = proxy.wait_exit(grace + Duration::from_secs(5)).await;
    assert!(
        status.success(),
        "exit status {status}:\n{}",
        proxy.all_output()
    );
    assert!(
        signalled.elapsed() < grace,
        "exit took {:?}",
        signalled.elapsed()
    );
    assert_eq!(
        proxy.events_named("all connections closed").len(),
        1,
        "{}",
        proxy.all_output()
    );
    assert!(proxy
        .events_named("grace period over: closing the remaining connections")
        .is_empty());
    assert!(
        refused(proxy.admin()).await,
        "the admin listener outlived the process"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_gives_up_on_requests_after_the_grace_period() {
    let upstream = Upstream::start().await;
    let body = "[[route]]\npath = \"/public\"\nauth = []\n";
    let mut proxy = Proxy::start_in(
        tempfile::tempdir().unwrap(),
        &config_text(&upstream.url(), "shutdown_grace = \"500ms\"", body),
    )
    .await;
    let addr = proxy.addr;

    // A request the upstream answers only after 3 s: longer than the grace period.
    let slow = tokio::spawn(async move {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(connection);
        let request = request("/public/slow", &[("host", "localhost")]);
        match sender.send_request(request).await {
            Ok(response) => Some(response.status().as_u16()),
            Err(_) => None,
        }
    });
    upstream.wait_for_requests(1).await;
    let signalled = Instant::now();
    proxy.signal("TERM").await;

    let status = proxy.wait_exit(Duration::from_secs(10)).await;
    let took = signalled.elapsed();
    assert!(
        status.success(),
        "exit status {status}:\n{}",
        proxy.all_output()
    );
    assert!(
        took >= Duration::from_millis(450),
        "exited after {took:?}, before the grace period"
    );
    let outcome = tokio::time::timeout(DEADLINE, slow)
        .await
        .expect("the client noticed")
        .unwrap();
    assert_eq!(
        outcome, None,
        "the slow request was answered although the grace period was over"
    );
    proxy
        .wait_for_events("grace period over: closing the remaining connections", 1)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_right_after_listening_still_exits_0() {
    let upstream = Upstream::start().await;
    let body = "[[route]]\npath = \"/\"\nauth = []\n";
    let text = config_text(&upstream.url(), "", body);
    // The window is a few microseconds wide: try several times.
    for attempt in 0..20 {
        let dir = tempfile::tempdir().unwrap();
        let config = write_file(dir.path(), "portcullis.toml", &text);
        let mut child = std::process::Command::new(binary())
            .args([
                "run",
                "--config",
                config.to_str().unwrap(),
                "--log-format",
                "json",
            ])
            .env_remove("RUST_LOG")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        loop {
            line.clear();
            let n = std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
            assert!(n > 0, "the proxy ended before logging `listening`");
            if line.contains("\"message\":\"listening\"") {
                break;
            }
        }
        let kill = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(kill.success());
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        let status = child.wait().unwrap();
        assert!(
            status.success(),
            "attempt {attempt}: SIGTERM right after `listening` gave {status}"
        );
    }
}
