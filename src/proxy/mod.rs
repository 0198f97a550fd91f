//! Forwarding admitted requests to the upstream: URI rewrite, the connection pool, timeouts,
//! streaming bodies and protocol upgrades (WebSocket).

mod body_timeout;
pub mod client_ip;
pub mod headers;
mod pool;

use std::error::Error as StdError;
use std::sync::Arc;

use http::header::{HeaderValue, HOST};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use tower_service::Service;

use crate::body::Body;
use crate::config::UpstreamConfig;
use crate::error::{FailReason, Failure};
use crate::server::TunnelTerms;

use body_timeout::BodyStalled;
pub use body_timeout::TimedBody;
pub use pool::UpstreamBody;
use pool::{Conn, Pool, Sender};

/// The upstream, its connector and its idle connections.
pub struct Upstream {
    connector: HttpsConnector<HttpConnector>,
    pool: Arc<Pool>,
    /// `scheme://authority/`: what the connector connects to.
    origin: Uri,
    /// The `Host` sent when the client's is not preserved: the upstream's authority, without
    /// a default port.
    host: HeaderValue,
    config: UpstreamConfig,
}

/// Why an exchange with the upstream failed.
#[derive(Debug, thiserror::Error)]
enum UpstreamError {
    /// No connection: refused, unresolvable, timed out, or the TLS handshake failed.
    #[error("cannot connect")]
    Connect(#[source] Box<dyn StdError + Send + Sync>),
    /// The connection broke before the response headers arrived.
    #[error("upstream connection failed")]
    Exchange(#[source] hyper::Error),
    /// No response headers within `response_timeout` (connecting included).
    #[error("no response headers in time")]
    Timeout,
}

impl Upstream {
    /// Builds the connector (connect timeout, TCP_NODELAY, TLS) and an empty pool.
    pub fn new(config: &UpstreamConfig) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.set_nodelay(true);
        // The TLS layer below handles https://; plain http:// passes through it untouched.
        connector.enforce_http(false);
        let tls = config
            .tls
            .as_deref()
            .cloned()
            .unwrap_or_else(|| rustls::ClientConfig::clone(&crate::tls::plain_only()));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        let url = &config.url;
        let origin = Uri::builder()
            .scheme(url.scheme.clone())
            .authority(url.authority.clone())
            .path_and_query("/")
            .build()
            .expect("a validated upstream URL is a valid URI");
        let default_port = if url.scheme == http::uri::Scheme::HTTPS {
            443
        } else {
            80
        };
        let host = match url.authority.port_u16() {
            Some(port) if port != default_port => url.authority.as_str().to_string(),
            _ => url.authority.host().to_string(),
        };
        let host = HeaderValue::try_from(host).expect("an authority is a valid Host value");
        Upstream {
            connector,
            pool: Arc::default(),
            origin,
            host,
            config: config.clone(),
        }
    }

    /// Sends an admitted request (headers already rewritten) to `path_and_query` on the
    /// upstream, and streams the response back. An upgrade handshake answered with 101 is
    /// spliced into a byte tunnel.
    pub async fn forward(
        &self,
        mut request: Request<Incoming>,
        path_and_query: PathAndQuery,
        body_read_timeout: std::time::Duration,
    ) -> Result<Response<Body>, Failure> {
        // Origin form: the connection already goes to the upstream.
        *request.uri_mut() = Uri::from(path_and_query);
        // The upstream connection is HTTP/1.1 whatever the client spoke.
        *request.version_mut() = Version::HTTP_11;
        if !request.headers().contains_key(HOST) {
            request.headers_mut().insert(HOST, self.host.clone());
        }
        // The header rewrite kept `Upgrade` only for a WebSocket handshake; the server gave
        // the request the terms a tunnel runs under only when its connection can upgrade.
        let terms = request.extensions_mut().remove::<TunnelTerms>();
        let websocket_key = match terms {
            Some(_) if request.headers().contains_key(http::header::UPGRADE) => {
                request.headers().get(SEC_WEBSOCKET_KEY).cloned()
            }
            _ => None,
        };
        if websocket_key.is_none() {
            let headers = request.headers_mut();
            headers.remove(http::header::UPGRADE);
            headers.remove(http::header::CONNECTION);
        }
        let client_upgrade = websocket_key
            .is_some()
            .then(|| hyper::upgrade::on(&mut request));

        let request = request.map(|body| TimedBody::new(body, body_read_timeout));
        let (mut response, conn) = match self.send(request).await {
            Ok(sent) => sent,
            Err(UpstreamError::Timeout) => {
                return Err(Failure::new(
                    FailReason::UpstreamTimeout,
                    format!(
                        "no response headers within {:?}",
                        self.config.response_timeout
                    ),
                ))
            }
            Err(err) => return Err(classify(&err)),
        };
        let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
        if switching {
            // Dropping the response and the connection closes that upstream connection: a
            // connection that may have switched protocols is never used again.
            let (Some(client_upgrade), Some(key), Some(terms)) =
                (client_upgrade, websocket_key, terms)
            else {
                return Err(Failure::new(
                    FailReason::UpstreamUnreachable,
                    "the upstream switched protocols on a request that asked for no WebSocket",
                ));
            };
            if let Err(why) = check_websocket_accept(response.headers(), &key) {
                return Err(Failure::new(FailReason::UpstreamUnreachable, why));
            }
            let upstream_upgrade = hyper::upgrade::on(&mut response);
            tokio::spawn(tunnel(client_upgrade, upstream_upgrade, terms));
        }
        headers::rewrite_response(response.headers_mut(), switching);
        // A switched connection is no longer HTTP: never back to the pool.
        let reuse = (!switching).then(|| (conn, self.pool.clone()));
        Ok(response.map(|body| Body::Left(UpstreamBody::new(body, reuse))))
    }

    /// Sends on an idle connection, or on a new one when none is ready, within
    /// `response_timeout`. A request that never left (the idle connection had just closed) is
    /// sent again on the next one.
    async fn send(
        &self,
        mut request: Request<TimedBody>,
    ) -> Result<(Response<Incoming>, Conn), UpstreamError> {
        let deadline = tokio::time::Instant::now() + self.config.response_timeout;
        while let Some(mut conn) = self.pool.take() {
            conn.timer.as_mut().reset(deadline);
            let sent = tokio::select! {
                biased;
                sent = conn.sender.try_send_request(request) => sent,
                () = conn.timer.as_mut() => return Err(UpstreamError::Timeout),
            };
            match sent {
                Ok(response) => return Ok((response, conn)),
                Err(mut err) => match err.take_message() {
                    Some(unsent) => request = unsent,
                    None => return Err(UpstreamError::Exchange(err.into_error())),
                },
            }
        }
        let mut timer = Box::pin(tokio::time::sleep_until(deadline));
        // Boxed: the connector's future (DNS, TCP, TLS) is large, and only a new connection
        // needs it; unboxed it would size, and be moved with, every request's future.
        let sender = tokio::select! {
            biased;
            connected = Box::pin(self.connect()) => connected?,
            () = timer.as_mut() => return Err(UpstreamError::Timeout),
        };
        let mut conn = Conn { sender, timer };
        let sent = tokio::select! {
            biased;
            sent = conn.sender.try_send_request(request) => sent,
            () = conn.timer.as_mut() => return Err(UpstreamError::Timeout),
        };
        match sent {
            Ok(response) => Ok((response, conn)),
            Err(err) => Err(UpstreamError::Exchange(err.into_error())),
        }
    }

    /// Opens a connection and spawns the task that drives it (with upgrades, for WebSocket).
    async fn connect(&self) -> Result<Sender, UpstreamError> {
        let mut connector = self.connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(UpstreamError::Connect)?;
        let io = connector
            .call(self.origin.clone())
            .await
            .map_err(UpstreamError::Connect)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|err| UpstreamError::Connect(err.into()))?;
        tokio::spawn(async move {
            if let Err(err) = connection.with_upgrades().await {
                tracing::debug!(error = %err, "upstream connection ended with an error");
            }
        });
        self.pool.start_reaper();
        Ok(sender)
    }
}

/// The GUID RFC 6455 §1.3 appends to the client's key.
const WEBSOCKET_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
const SEC_WEBSOCKET_KEY: http::header::HeaderName = http::header::SEC_WEBSOCKET_KEY;

/// Whether a 101 answer completes the client's WebSocket handshake: `Upgrade: websocket` and
/// the `Sec-WebSocket-Accept` derived from the client's key (RFC 6455 §4.2.2). Anything else
/// means the upstream switched to something the client did not ask for, and a tunnel to it
/// would carry requests no route ever saw. The error is the log's detail.
fn check_websocket_accept(headers: &http::HeaderMap, key: &HeaderValue) -> Result<(), String> {
    let mut upgrades = headers.get_all(http::header::UPGRADE).iter();
    let websocket = match (upgrades.next(), upgrades.next()) {
        (Some(only), None) => only
            .to_str()
            .is_ok_and(|v| v.trim().eq_ignore_ascii_case("websocket")),
        _ => false,
    };
    if !websocket {
        return Err("the upstream answered 101 without `Upgrade: websocket`".to_string());
    }
    let mut accepts = headers.get_all(http::header::SEC_WEBSOCKET_ACCEPT).iter();
    let accept = match (accepts.next(), accepts.next()) {
        (Some(only), None) => only.as_bytes(),
        _ => return Err("the upstream answered 101 without one Sec-WebSocket-Accept".to_string()),
    };
    if accept != websocket_accept(key.as_bytes()).as_bytes() {
        return Err(
            "the upstream answered 101 with a Sec-WebSocket-Accept that does not match the key"
                .to_string(),
        );
    }
    Ok(())
}

/// `base64(SHA-1(key + GUID))`: the accept value for a client's `Sec-WebSocket-Key`.
fn websocket_accept(key: &[u8]) -> String {
    use base64::Engine as _;
    use sha1::Digest as _;
    let mut sha1 = sha1::Sha1::new();
    sha1.update(key);
    sha1.update(WEBSOCKET_GUID);
    base64::engine::general_purpose::STANDARD.encode(sha1.finalize())
}

/// Once both sides have switched, runs the tunnel between them under `terms`.
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    terms: TunnelTerms,
) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(err) => {
            tracing::debug!(error = %err, "upgrade failed");
            return;
        }
    };
    terms.run(client, upstream).await;
}

/// Connect timeouts count as timeouts (504); everything else as unreachable (502).
fn classify(err: &UpstreamError) -> Failure {
    if let Some(failure) = client_body_failure(err) {
        return failure;
    }
    let timed_out = source_chain(err).any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
    });
    let cause = source_chain(err)
        .last()
        .map(ToString::to_string)
        .unwrap_or_default();
    if timed_out {
        return Failure::new(
            FailReason::UpstreamTimeout,
            format!("connect timed out: {cause}"),
        );
    }
    Failure::new(FailReason::UpstreamUnreachable, format!("{err}: {cause}"))
}

/// The exchange failed because the client's request body did (hyper reports the body it was
/// sending as a user error): that is the client's doing, never the upstream's. A body that
/// broke its own framing (hyper's decoder says invalid input or data) is `client_body_invalid`;
/// any other end of the body (EOF mid-body, a reset stream) is `client_closed`.
fn client_body_failure(err: &UpstreamError) -> Option<Failure> {
    let UpstreamError::Exchange(exchange) = err else {
        return None;
    };
    if !exchange.is_user() {
        return None;
    }
    if let Some(stalled) = source_chain(exchange).find_map(|e| e.downcast_ref::<BodyStalled>()) {
        return Some(Failure::new(
            FailReason::ClientBodyTimeout,
            stalled.to_string(),
        ));
    }
    let cause = source_chain(exchange)
        .last()
        .map(ToString::to_string)
        .unwrap_or_default();
    let invalid = source_chain(exchange).any(|e| {
        e.downcast_ref::<std::io::Error>().is_some_and(|io| {
            matches!(
                io.kind(),
                std::io::ErrorKind::InvalidInput | std::io::ErrorKind::InvalidData
            )
        })
    });
    Some(if invalid {
        Failure::new(
            FailReason::ClientBodyInvalid,
            format!("the request body is malformed: {cause}"),
        )
    } else {
        Failure::new(
            FailReason::ClientClosed,
            format!("the request body ended early: {cause}"),
        )
    })
}

fn source_chain<'a>(
    err: &'a (dyn StdError + 'static),
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(Some(err), |e| (*e).source())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_is_the_rfc_6455_example() {
        // RFC 6455 §1.3.
        assert_eq!(
            websocket_accept(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
