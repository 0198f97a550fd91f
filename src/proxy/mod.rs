//! Forwarding admitted requests to the upstream: URI rewrite, the pooled client, timeouts,
//! streaming bodies and protocol upgrades (WebSocket).

pub mod client_ip;
pub mod headers;

use std::error::Error as StdError;

use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::config::UpstreamConfig;
use crate::error::{FailReason, Failure};
use crate::response::Body;

/// The upstream and a pooled connection client for it.
pub struct Upstream {
    client: Client<HttpsConnector<HttpConnector>, Incoming>,
    config: UpstreamConfig,
}

impl Upstream {
    /// Builds the client: keep-alive pool, connect timeout, TCP_NODELAY.
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
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(std::time::Duration::from_secs(90))
            .pool_max_idle_per_host(256)
            .build(connector);
        Upstream {
            client,
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
    ) -> Result<Response<Body>, Failure> {
        let uri = Uri::builder()
            .scheme(self.config.url.scheme.clone())
            .authority(self.config.url.authority.clone())
            .path_and_query(path_and_query)
            .build()
            .map_err(|_| {
                Failure::new(
                    FailReason::UpstreamUnreachable,
                    "cannot build the upstream URI",
                )
            })?;
        *request.uri_mut() = uri;
        // The upstream connection is HTTP/1.1 whatever the client spoke.
        *request.version_mut() = Version::HTTP_11;
        let wants_upgrade = request.headers().contains_key(http::header::UPGRADE);
        let client_upgrade = wants_upgrade.then(|| hyper::upgrade::on(&mut request));

        let sent =
            tokio::time::timeout(self.config.response_timeout, self.client.request(request)).await;
        let mut response = match sent {
            Err(_) => {
                return Err(Failure::new(
                    FailReason::UpstreamTimeout,
                    format!(
                        "no response headers within {:?}",
                        self.config.response_timeout
                    ),
                ))
            }
            Ok(Err(err)) => return Err(classify(&err)),
            Ok(Ok(response)) => response,
        };
        let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
        if let (true, Some(client_upgrade)) = (switching, client_upgrade) {
            let upstream_upgrade = hyper::upgrade::on(&mut response);
            tokio::spawn(tunnel(client_upgrade, upstream_upgrade));
        }
        headers::rewrite_response(response.headers_mut(), switching);
        Ok(response.map(Body::Left))
    }
}

/// Copies bytes both ways between the client's and the upstream's upgraded connections.
async fn tunnel(client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(err) => {
            tracing::debug!(error = %err, "upgrade failed");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    if let Err(err) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        tracing::debug!(error = %err, "upgraded connection ended with an error");
    }
}

/// Connect timeouts count as timeouts (504); everything else as unreachable (502).
fn classify(err: &hyper_util::client::legacy::Error) -> Failure {
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
    let what = if err.is_connect() {
        "cannot connect"
    } else {
        "upstream connection failed"
    };
    Failure::new(FailReason::UpstreamUnreachable, format!("{what}: {cause}"))
}

fn source_chain<'a>(
    err: &'a (dyn StdError + 'static),
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(Some(err), |e| (*e).source())
}
