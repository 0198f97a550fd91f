//! The proxy's HTTP/1 framing watch against hyper's own parser, on the same bytes.
//!
//! The bytes are served to hyper's HTTP/1 server (the settings the proxy uses) over an
//! in-memory pipe; every request hyper hands to the service is recorded with its request line
//! and the body hyper read for it. The watch (`portcullis::server::trace_framing`) reads the
//! same bytes. Property: for every request hyper served, in order, the watch saw the same
//! request line and the same body length, and expects the next request exactly where hyper
//! looked for it, up to the first request the watch flagged (the proxy refuses that one and
//! closes the connection). A request hyper served that the watch never saw, or saw elsewhere,
//! is a way past the watch.
#![no_main]

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use libfuzzer_sys::fuzz_target;
use portcullis::server::trace_framing;
use tokio::io::AsyncWriteExt;

/// What hyper made of one request.
#[derive(Debug)]
struct Served {
    line_prefix: String,
    /// `None` when reading the body failed (hyper then reads no further request).
    body_len: Option<u64>,
}

fn serve_with_hyper(data: &[u8]) -> Vec<Served> {
    let served = Arc::new(Mutex::new(Vec::new()));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let record = served.clone();
    let bytes = data.to_vec();
    runtime.block_on(async move {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let service = service_fn(move |request: Request<hyper::body::Incoming>| {
            let record = record.clone();
            async move {
                // What the request line must start with: hyper keeps an origin-form target
                // byte for byte.
                let target = request
                    .uri()
                    .path_and_query()
                    .map(|p| p.as_str().to_string());
                let line_prefix = match target {
                    Some(t) if t.starts_with('/') && request.uri().scheme().is_none() => {
                        format!("{} {t} ", request.method())
                    }
                    _ => format!("{} ", request.method()),
                };
                let body = request.into_body().collect().await;
                let body_len = body.ok().map(|b| b.to_bytes().len() as u64);
                record.lock().unwrap().push(Served {
                    line_prefix,
                    body_len,
                });
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
            }
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .keep_alive(true)
            .max_buf_size(16384)
            .serve_connection(hyper_util::rt::TokioIo::new(server), service)
            .with_upgrades();
        let driver = tokio::spawn(connection);
        let _ = client.write_all(&bytes).await;
        let _ = client.shutdown().await;
        // Drain the responses so hyper never waits on a full pipe.
        let reader = tokio::spawn(async move {
            let mut sink = Vec::new();
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut client, &mut sink).await;
        });
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), driver).await;
        reader.abort();
    });
    let served = std::mem::take(&mut *served.lock().unwrap());
    served
}

fuzz_target!(|data: &[u8]| {
    // The HTTP/2 preface switches the real server to HTTP/2; the watch stops there.
    if data.starts_with(b"PRI * HTTP/2.0") {
        return;
    }
    let served = serve_with_hyper(data);
    let heads = trace_framing(data);
    for (n, request) in served.iter().enumerate() {
        let Some(head) = heads.get(n) else {
            panic!(
                "hyper served request {} ({:?}) that the watch never saw; watch: {heads:?}",
                n + 1,
                request.line_prefix
            );
        };
        if head.finding.is_some() {
            // Refused and the connection closed: nothing after it is served.
            return;
        }
        let line = String::from_utf8_lossy(&head.request_line);
        assert!(
            line.starts_with(&request.line_prefix) || head.request_line.len() >= 96,
            "request {}: hyper read {:?}, the watch {line:?}",
            n + 1,
            request.line_prefix
        );
        match request.body_len {
            Some(len) => {
                assert_eq!(
                    head.body_len,
                    len,
                    "request {} ({line:?}): body length, hyper vs the watch",
                    n + 1
                );
                // hyper went on reading requests: the watch must expect one there too.
                if n + 1 < served.len() {
                    assert!(
                        head.end.is_some(),
                        "request {} ({line:?}): hyper read another request after it, the watch \
                         stopped: {head:?}",
                        n + 1
                    );
                }
            }
            None => return,
        }
    }
});
