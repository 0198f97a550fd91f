//! The one `access` event every request produces (SPEC §5).
//!
//! Exactly once by construction: the event is emitted by an `AccessGuard` when it is dropped,
//! and the guard lives as long as the request does, first in the pipeline and then inside the
//! response body (`Logged`). Whatever path a request takes, and wherever its future or its
//! body is dropped (a client that closes or resets while the upstream is still working), the
//! guard drops once.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{Method, StatusCode};
use hyper::body::{Body, Frame, SizeHint};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};

use super::metrics::Metrics;
use crate::error::{client_closed_status, FailReason, Failure, Refusal};

/// Everything the access event reports, filled in as the request is handled.
pub struct AccessRecord {
    /// When handling began.
    pub started: Instant,
    /// The request id (validated or generated).
    pub request_id: String,
    /// The real client address.
    pub client_ip: IpAddr,
    /// The method.
    pub method: http::Method,
    /// The path (normalised when it could be, else as received, without the query).
    pub path: String,
    /// The matched route's path.
    pub route: Option<std::sync::Arc<str>>,
    /// The authenticated user.
    pub user: Option<String>,
    /// The scheme that authenticated the user.
    pub auth_method: Option<&'static str>,
    /// The upstream's status, when the request was forwarded.
    pub upstream_status: Option<u16>,
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub http_version: http::Version,
    /// Whether the connection is TLS.
    pub tls: bool,
}

/// Longest path written to the log; longer ones are cut (the log is not a place for payloads).
const MAX_LOGGED_PATH: usize = 1024;

impl AccessRecord {
    /// Sets the path, keeping the log line bounded.
    pub fn set_path(&mut self, path: &str) {
        self.path.clear();
        let mut end = path.len().min(MAX_LOGGED_PATH);
        while !path.is_char_boundary(end) {
            end -= 1;
        }
        self.path.push_str(&path[..end]);
    }

    /// Emits the event (only `AccessGuard` calls this, once). Secrets never reach here: the
    /// record holds no header values.
    ///
    /// With the JSON log format, the line is formatted here and handed to the batching access
    /// log writer: the same line tracing-subscriber's JSON formatter would write (same keys,
    /// order and number formats), at a fraction of its cost on the request path, and written
    /// to stdout within 20 ms. Filtering still goes through tracing
    /// (`RUST_LOG=portcullis::access=off` silences it).
    fn emit(&self, status: StatusCode, refusal: Option<&Refusal>, aborted: bool) {
        let duration_ms = (self.started.elapsed().as_secs_f64() * 1_000_000.0).round() / 1000.0;
        let (decision, reason, detail) = match refusal {
            Some(r) => (r.decision(), Some(r.reason_code()), Some(r.detail())),
            None => ("allow", None, None),
        };
        if let Some(log) = super::access_log() {
            if tracing::enabled!(target: "portcullis::access", tracing::Level::INFO) {
                let line = self.json_line(status, duration_ms, decision, reason, detail, aborted);
                log.append(line.as_bytes());
            }
            return;
        }
        tracing::info!(
            target: "portcullis::access",
            request_id = %self.request_id,
            client_ip = %self.client_ip,
            method = %self.method,
            path = %self.path,
            route = self.route.as_deref(),
            status = status.as_u16(),
            user = self.user.as_deref(),
            auth_method = self.auth_method,
            duration_ms,
            upstream_status = self.upstream_status,
            http_version = ?self.http_version,
            tls = self.tls,
            decision,
            reason,
            detail,
            aborted = aborted.then_some(true),
            "access"
        );
    }

    /// The access event as one JSON line, in tracing-subscriber's flattened JSON layout.
    fn json_line(
        &self,
        status: http::StatusCode,
        duration_ms: f64,
        decision: &str,
        reason: Option<&str>,
        detail: Option<&str>,
        aborted: bool,
    ) -> String {
        let mut out = String::with_capacity(384 + detail.map_or(0, str::len));
        out.push_str("{\"timestamp\":\"");
        push_timestamp(&mut out);
        out.push_str("\",\"level\":\"INFO\",\"message\":\"access\"");
        string_field(&mut out, "request_id", &self.request_id);
        // Addresses and versions need no escaping.
        out.push_str(",\"client_ip\":\"");
        push_ip(&mut out, self.client_ip);
        out.push('"');
        string_field(&mut out, "method", self.method.as_str());
        string_field(&mut out, "path", &self.path);
        if let Some(route) = &self.route {
            string_field(&mut out, "route", route);
        }
        out.push_str(",\"status\":");
        push_u64(&mut out, u64::from(status.as_u16()));
        if let Some(user) = &self.user {
            string_field(&mut out, "user", user);
        }
        if let Some(method) = self.auth_method {
            string_field(&mut out, "auth_method", method);
        }
        out.push_str(",\"duration_ms\":");
        push_millis(&mut out, duration_ms);
        if let Some(upstream) = self.upstream_status {
            out.push_str(",\"upstream_status\":");
            push_u64(&mut out, u64::from(upstream));
        }
        out.push_str(",\"http_version\":\"");
        match self.http_version {
            http::Version::HTTP_09 => out.push_str("HTTP/0.9"),
            http::Version::HTTP_10 => out.push_str("HTTP/1.0"),
            http::Version::HTTP_11 => out.push_str("HTTP/1.1"),
            http::Version::HTTP_2 => out.push_str("HTTP/2.0"),
            http::Version::HTTP_3 => out.push_str("HTTP/3.0"),
            other => {
                let _ = write!(out, "{other:?}");
            }
        }
        out.push_str(if self.tls {
            "\",\"tls\":true"
        } else {
            "\",\"tls\":false"
        });
        string_field(&mut out, "decision", decision);
        if let Some(reason) = reason {
            string_field(&mut out, "reason", reason);
        }
        if let Some(detail) = detail {
            string_field(&mut out, "detail", detail);
        }
        if aborted {
            out.push_str(",\"aborted\":true");
        }
        out.push_str(",\"target\":\"portcullis::access\"}\n");
        out
    }
}

/// Emits a request's access event, and counts it in the metrics, when dropped: as 499
/// `client_closed` when no response was ready yet, else with the response's status, and
/// `aborted` when the body did not reach its end.
pub struct AccessGuard {
    record: AccessRecord,
    metrics: Arc<Metrics>,
    response: Option<Responded>,
}

/// The response whose head was handed to the server.
struct Responded {
    status: StatusCode,
    refusal: Option<Refusal>,
    /// No body follows the head (HEAD, 1xx, 204, 304), or the body was read to its end.
    complete: bool,
}

impl AccessGuard {
    /// A guard for a request that has only begun.
    pub fn new(record: AccessRecord, metrics: Arc<Metrics>) -> Self {
        AccessGuard {
            record,
            metrics,
            response: None,
        }
    }

    /// The response head is ready: from now on the request ends with `status` (and `refusal`,
    /// when it was refused), aborted unless its body reaches its end.
    pub fn responded(&mut self, status: StatusCode, refusal: Option<Refusal>) {
        let complete = self.record.method == Method::HEAD
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        self.response = Some(Responded {
            status,
            refusal,
            complete,
        });
    }

    fn body_complete(&mut self) {
        if let Some(response) = &mut self.response {
            response.complete = true;
        }
    }
}

impl Deref for AccessGuard {
    type Target = AccessRecord;

    fn deref(&self) -> &AccessRecord {
        &self.record
    }
}

impl DerefMut for AccessGuard {
    fn deref_mut(&mut self) -> &mut AccessRecord {
        &mut self.record
    }
}

impl Drop for AccessGuard {
    fn drop(&mut self) {
        let (status, refusal, aborted) = match self.response.take() {
            Some(response) => (response.status, response.refusal, !response.complete),
            None => {
                let closed = Failure::new(
                    FailReason::ClientClosed,
                    "the client closed the connection or reset the stream before the response \
                     head was sent",
                );
                (client_closed_status(), Some(Refusal::Fail(closed)), false)
            }
        };
        self.record.emit(status, refusal.as_ref(), aborted);
        self.metrics.record_request(
            self.record.route.as_deref(),
            status.as_u16(),
            refusal.as_ref().map(Refusal::reason_code),
        );
    }
}

/// A response body that carries its request's `AccessGuard`: the event is emitted when the
/// body ends, or when the server drops it first (the client went away mid-body).
pub struct Logged<B: Body> {
    body: B,
    guard: Option<AccessGuard>,
}

impl<B: Body> Logged<B> {
    /// Wraps `body`; `guard` must already know the response (`AccessGuard::responded`).
    pub fn new(body: B, guard: AccessGuard) -> Self {
        Logged {
            body,
            guard: Some(guard),
        }
    }

    /// The body ended: emit now rather than whenever the server gets round to dropping it.
    fn end(&mut self) {
        if let Some(mut guard) = self.guard.take() {
            guard.body_complete();
        }
    }
}

impl<B: Body + Unpin> Body for Logged<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.end(),
            Poll::Ready(Some(Ok(_))) if self.body.is_end_stream() => self.end(),
            // An error mid-body (the upstream broke off) leaves the body unfinished: aborted.
            Poll::Ready(Some(_)) | Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl<B: Body> Drop for Logged<B> {
    fn drop(&mut self) {
        // Servers never poll a body that says it is empty.
        if let Some(guard) = &mut self.guard {
            if self.body.is_end_stream() {
                guard.body_complete();
            }
        }
    }
}

/// The timestamp as tracing-subscriber's `SystemTime` timer writes it
/// (`2026-11-30T00:20:34.740159Z`). The part up to the second is formatted once per second.
fn push_timestamp(out: &mut String) {
    thread_local! {
        static SECOND: std::cell::RefCell<(u64, String)> =
            const { std::cell::RefCell::new((u64::MAX, String::new())) };
    }
    let now = std::time::SystemTime::now();
    let Ok(since_epoch) = now.duration_since(std::time::UNIX_EPOCH) else {
        let _ = SystemTime.format_time(&mut Writer::new(out));
        return;
    };
    SECOND.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != since_epoch.as_secs() {
            let mut text = String::with_capacity(32);
            let _ = SystemTime.format_time(&mut Writer::new(&mut text));
            // "YYYY-MM-DDTHH:MM:SS" + ".ffffffZ"
            match text.find('.') {
                Some(dot) => text.truncate(dot),
                None => {
                    out.push_str(&text);
                    return;
                }
            }
            *cached = (since_epoch.as_secs(), text);
        }
        out.push_str(&cached.1);
        out.push('.');
        push_padded(out, u64::from(since_epoch.subsec_micros()), 6);
        out.push('Z');
    });
}

/// Decimal digits of `n`.
fn push_u64(out: &mut String, n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut n = n;
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &d in &digits[at..] {
        out.push(char::from(d));
    }
}

/// `n` with leading zeros to `width` digits.
fn push_padded(out: &mut String, n: u64, width: usize) {
    let mut digits = [b'0'; 20];
    let mut n = n;
    for slot in digits[20 - width..].iter_mut().rev() {
        *slot = b'0' + (n % 10) as u8;
        n /= 10;
    }
    for &d in &digits[20 - width..] {
        out.push(char::from(d));
    }
}

/// A duration in milliseconds rounded to the microsecond, written as serde_json writes that
/// `f64` (`0.363`, `2.09`, `5.0`).
fn push_millis(out: &mut String, ms: f64) {
    let micros = (ms * 1000.0).round();
    if !(0.0..1e15).contains(&micros) {
        let _ = write!(out, "{ms:?}");
        return;
    }
    let micros = micros as u64;
    push_u64(out, micros / 1000);
    out.push('.');
    let frac = micros % 1000;
    if frac == 0 {
        out.push('0');
        return;
    }
    let mut digits = [
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ];
    let mut len = 3;
    while digits[len - 1] == b'0' {
        len -= 1;
    }
    for d in &mut digits[..len] {
        out.push(char::from(*d));
    }
}

/// The address as `Display` writes it (IPv4 by hand, the rest through `fmt`).
fn push_ip(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                push_u64(out, u64::from(octet));
            }
        }
        IpAddr::V6(_) => {
            let _ = write!(out, "{ip}");
        }
    }
}

/// `,"name":"value"` with the value escaped as serde_json escapes it.
fn string_field(out: &mut String, name: &str, value: &str) {
    out.push_str(",\"");
    out.push_str(name);
    out.push_str("\":\"");
    let mut start = 0;
    for (i, b) in value.bytes().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0x00..=0x1f => "",
            _ => continue,
        };
        out.push_str(&value[start..i]);
        if escape.is_empty() {
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.push_str(escape);
        }
        start = i + 1;
    }
    out.push_str(&value[start..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_written_as_serde_json_writes_them() {
        for ms in [
            0.0, 0.001, 0.01, 0.363, 2.09, 5.0, 12.5, 1234.567, 99999.999,
        ] {
            let mut out = String::new();
            push_millis(&mut out, ms);
            assert_eq!(out, serde_json::to_string(&ms).unwrap(), "{ms}");
        }
        for n in [0u64, 7, 10, 200, 65535, u64::MAX] {
            let mut out = String::new();
            push_u64(&mut out, n);
            assert_eq!(out, n.to_string());
        }
        for ip in ["0.0.0.0", "127.0.0.1", "192.0.2.255", "2001:db8::1"] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut out = String::new();
            push_ip(&mut out, ip);
            assert_eq!(out, ip.to_string());
        }
    }

    #[test]
    fn timestamps_look_like_tracing_ones() {
        let mut ours = String::new();
        push_timestamp(&mut ours);
        push_timestamp(&mut ours);
        let mut theirs = String::new();
        SystemTime
            .format_time(&mut Writer::new(&mut theirs))
            .unwrap();
        assert_eq!(ours.len(), 2 * theirs.len(), "{ours} vs {theirs}");
        assert_eq!(ours[..17], theirs[..17]);
        assert!(ours.ends_with('Z') && ours.as_bytes()[19] == b'.', "{ours}");
    }
}
