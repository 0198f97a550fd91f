//! `portcullis demo`, the newcomer's first command: it starts, and what its banner promises
//! is what the proxy does.

mod support;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

use support::*;

struct Demo(Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_does_what_its_banner_says() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(binary())
        .args(["demo", "--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the demo");
    let stdout = child.stdout.take().unwrap();
    let demo = Demo(child);
    // Everything the demo prints, line by line; it is ready once "listening" is logged.
    let (lines_tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut banner = String::new();
    loop {
        let line = lines
            .recv_timeout(DEADLINE)
            .expect("the demo logs `listening`");
        if line.contains("\"message\":\"listening\"") {
            break;
        }
        banner.push_str(&line);
        banner.push('\n');
    }
    assert!(banner.contains("alice / wonderland"), "{banner}");
    assert!(
        banner.contains(&format!("http://127.0.0.1:{port}/app")),
        "{banner}"
    );
    let addr = format!("127.0.0.1:{port}").parse().unwrap();

    let get = |path: &'static str, headers: Vec<(&'static str, String)>| async move {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        send(addr, "GET", path, &headers, bytes::Bytes::new()).await
    };
    assert_eq!(get("/public/hello", vec![]).await.status, 200);
    let response = get("/", vec![]).await;
    assert_eq!(response.status, 401);
    assert_eq!(response.header_all("www-authenticate").len(), 2);
    let response = get("/", vec![("authorization", basic("alice", "wonderland"))]).await;
    assert_eq!(response.status, 200);
    assert!(
        response.text().contains("Signed in as:    alice"),
        "{}",
        response.text()
    );
    let response = get("/admin", vec![("authorization", basic("bob", "builder"))]).await;
    assert_eq!(response.status, 403);
    let token = "Bearer demo-token-0123456789abcdef".to_string();
    assert_eq!(get("/", vec![("authorization", token)]).await.status, 200);
    assert_eq!(get("/public/..%2fadmin", vec![]).await.status, 400);
    // A browser is sent to the login form.
    let response = get("/app", vec![("accept", "text/html".to_string())]).await;
    assert_eq!(response.status, 302);
    assert_eq!(
        response.header("location").as_deref(),
        Some("/.portcullis/login?next=%2Fapp")
    );
    drop(demo);
}
