//! Slow clients: header tricklers.

use super::*;

// ---------------------------------------------------------------------------------------------
// Slowloris
// ---------------------------------------------------------------------------------------------

/// Clients that trickle their headers one byte at a time, well inside any per-read timeout,
/// are still cut off once `header_read_timeout` has passed since the request began; others
/// are served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_tricklers_are_cut_off_and_others_are_served() {
    let _serial = SERIAL.lock().await;
    let upstream = Upstream::start().await;
    let proxy = ProxyConfig::new(upstream.url(), std_body())
        .server("header_read_timeout = \"2s\"\nidle_timeout = \"60s\"")
        .start()
        .await;
    let head = b"GET /public/trickle HTTP/1.1\r\nHost: proxy.test\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let mut tricklers = Vec::new();
    for _ in 0..10 {
        let addr = proxy.addr;
        tricklers.push(tokio::spawn(async move {
            let start = Instant::now();
            let stream = TcpStream::connect(addr).await.unwrap();
            let (mut reader, mut writer) = stream.into_split();
            let writing = tokio::spawn(async move {
                // One byte every 250 ms: the whole head would take 30 s.
                for byte in head.iter() {
                    if writer.write_all(&[*byte]).await.is_err() {
                        return false;
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                true
            });
            let mut out = Vec::new();
            let mut buf = [0u8; 1024];
            let closed = loop {
                match tokio::time::timeout(DEADLINE, reader.read(&mut buf)).await {
                    Err(_) => break false,
                    Ok(Ok(0)) | Ok(Err(_)) => break true,
                    Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
                }
            };
            writing.abort();
            (
                closed,
                start.elapsed(),
                String::from_utf8_lossy(&out).into_owned(),
            )
        }));
    }
    // Meanwhile, a normal client is served, repeatedly.
    for n in 0..5 {
        let response = proxy.get(&format!("/public/normal{n}"), &[]).await;
        assert_eq!(response.status, 200);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for trickler in tricklers {
        let (closed, took, answer) = trickler.await.unwrap();
        assert!(closed, "a trickling client was kept open past {DEADLINE:?}");
        assert!(
            took >= Duration::from_millis(1500),
            "cut off too early: {took:?}"
        );
        assert!(took < Duration::from_secs(8), "cut off late: {took:?}");
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
            "{answer}"
        );
    }
    assert!(upstream
        .requests()
        .iter()
        .all(|r| r.path != "/public/trickle"));
}
