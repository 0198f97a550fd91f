//! The one `access` event every request produces (SPEC §5).

use std::net::IpAddr;
use std::time::Instant;

use crate::error::Refusal;

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
    pub route: Option<String>,
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

    /// Emits the event. Secrets never reach here: the record holds no header values.
    pub fn emit(&self, status: http::StatusCode, refusal: Option<&Refusal>) {
        let duration_ms = (self.started.elapsed().as_secs_f64() * 1_000_000.0).round() / 1000.0;
        let (decision, reason, detail) = match refusal {
            Some(r) => (r.decision(), Some(r.reason_code()), Some(r.detail())),
            None => ("allow", None, None),
        };
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
            "access"
        );
    }
}
