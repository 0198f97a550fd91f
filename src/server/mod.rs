//! Listeners and connections: accept loops, connection limits, HTTP/1.1 + HTTP/2 via
//! hyper-util's auto builder (under TLS held to the protocol ALPN chose), and graceful
//! shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

mod alpn;
mod framing;
mod idle;
mod tunnel;

use alpn::{AlpnGuard, Negotiated};
pub use framing::FramingFinding;
#[doc(hidden)]
pub use framing::{trace as trace_framing, TracedHead};
use framing::{FramingFlags, FramingWatch};
use idle::{Activity, Counted, Streams, Tracked};
use tunnel::ConnectionSlot;
pub use tunnel::TunnelTerms;

use crate::app::{App, ConnInfo};
use crate::config::ServerConfig;

/// hyper refuses read buffers smaller than this.
const MIN_READ_BUFFER: usize = 8192;
/// Concurrent HTTP/2 streams per connection.
const H2_MAX_STREAMS: u32 = 128;

/// Binds every listen address. Done before anything else starts so a bad address fails fast.
pub async fn bind(addresses: &[SocketAddr]) -> std::io::Result<Vec<TcpListener>> {
    let mut listeners = Vec::with_capacity(addresses.len());
    for address in addresses {
        let listener = TcpListener::bind(address).await.map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot listen on {address}: {e}"))
        })?;
        listeners.push(listener);
    }
    Ok(listeners)
}

/// Serves on `listeners` until `shutdown` resolves, then stops accepting and lets in-flight
/// requests finish for up to `shutdown_grace`.
pub async fn serve(
    app: Arc<App>,
    listeners: Vec<TcpListener>,
    settings: &ServerConfig,
    shutdown: impl Future<Output = ()>,
) {
    let builder = connection_builder(settings);
    let permits = Arc::new(Semaphore::new(settings.max_connections));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut loops = Vec::new();
    for listener in listeners {
        let accept = AcceptLoop {
            listener,
            app: app.clone(),
            builder: builder.clone(),
            permits: permits.clone(),
            idle_timeout: settings.idle_timeout,
            read_buffer: read_buffer(settings),
            tunnel_idle_timeout: settings.tunnel_idle_timeout,
            shutdown_grace: settings.shutdown_grace,
        };
        loops.push(tokio::spawn(accept.run(stop_rx.clone())));
    }
    shutdown.await;
    tracing::info!("shutting down: no longer accepting connections");
    let _ = stop_tx.send(true);
    for accept_loop in loops {
        let _ = accept_loop.await;
    }
    // Every open connection holds a permit (a tunnel holds its connection's): all of them
    // back means all connections closed.
    let all = u32::try_from(settings.max_connections).unwrap_or(u32::MAX);
    let drained = tokio::time::timeout(settings.shutdown_grace, permits.acquire_many(all)).await;
    match drained {
        Ok(_) => tracing::info!("all connections closed"),
        Err(_) => tracing::warn!(
            grace = ?settings.shutdown_grace,
            "grace period over: closing the remaining connections"
        ),
    }
}

fn connection_builder(settings: &ServerConfig) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .max_buf_size(read_buffer(settings))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX))
        // No keep-alive pings: the idle timeout closes connections to peers that went away
        // (and with no open stream, the client's own pings do not keep one open either).
        .max_concurrent_streams(H2_MAX_STREAMS);
    builder
}

/// hyper's HTTP/1 read buffer limit: the longest request head it reads.
fn read_buffer(settings: &ServerConfig) -> usize {
    settings.max_header_bytes.max(MIN_READ_BUFFER)
}

struct AcceptLoop {
    listener: TcpListener,
    app: Arc<App>,
    builder: auto::Builder<TokioExecutor>,
    permits: Arc<Semaphore>,
    idle_timeout: Duration,
    read_buffer: usize,
    tunnel_idle_timeout: Duration,
    shutdown_grace: Duration,
}

impl AcceptLoop {
    async fn run(self, mut stop: watch::Receiver<bool>) {
        loop {
            // Take a connection slot before accepting: past max_connections, new connections
            // wait in the kernel's backlog instead of being accepted and starved.
            let permit = tokio::select! {
                permit = self.permits.clone().acquire_owned() => permit,
                _ = stop.changed() => return,
            };
            let Ok(permit) = permit else { return };
            let accepted = tokio::select! {
                accepted = self.listener.accept() => accepted,
                _ = stop.changed() => return,
            };
            match accepted {
                Ok((stream, peer)) => self.serve_connection(stream, peer, permit, stop.clone()),
                Err(err) => {
                    // Usually EMFILE: back off instead of spinning.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn serve_connection(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        permit: tokio::sync::OwnedSemaphorePermit,
        stop: watch::Receiver<bool>,
    ) {
        let _ = stream.set_nodelay(true);
        let app = self.app.clone();
        // The certificate comes from the config current at accept time, so a SIGHUP reload
        // changes it for new connections only.
        let runtime = app.runtime();
        let tls = runtime.config.server.tls.clone();
        let handshake_timeout = runtime.config.server.header_read_timeout;
        let slot = ConnectionSlot::new(permit, app.metrics().open_connections.clone());
        let tunnel_terms = TunnelTerms::new(
            slot,
            self.tunnel_idle_timeout,
            stop.clone(),
            self.shutdown_grace,
        );
        let driver = Driver {
            builder: self.builder.clone(),
            stop,
            idle_timeout: self.idle_timeout,
            read_buffer: self.read_buffer,
            tunnel_terms,
        };
        tokio::spawn(async move {
            let activity = Activity::new();
            let streams = Streams::new();
            let stream = Tracked::new(stream, activity.clone());
            match tls {
                None => {
                    let info = ConnInfo { peer, tls: false };
                    let io = AlpnGuard::new(stream, Negotiated::Either, Some(streams.clone()));
                    driver
                        .serve(app.clone(), io, info, &activity, streams)
                        .await;
                }
                Some(config) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(config);
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(tls_stream)) => {
                            let info = ConnInfo { peer, tls: true };
                            let negotiated =
                                Negotiated::from_alpn(tls_stream.get_ref().1.alpn_protocol());
                            let io = AlpnGuard::new(tls_stream, negotiated, Some(streams.clone()));
                            driver
                                .serve(app.clone(), io, info, &activity, streams)
                                .await;
                        }
                        Ok(Err(err)) => {
                            tracing::debug!(error = %err, client = %peer, "TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(client = %peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
}

/// Drives one connection to its end: closes it gracefully on shutdown or once it has been
/// idle (no byte read or written) for `idle_timeout`.
struct Driver {
    builder: auto::Builder<TokioExecutor>,
    stop: watch::Receiver<bool>,
    idle_timeout: Duration,
    /// hyper's HTTP/1 read buffer limit (see `read_buffer`).
    read_buffer: usize,
    /// Holds the connection's slot until the connection ends; a tunnel opened on it takes a
    /// share of the slot with it.
    tunnel_terms: TunnelTerms,
}

impl Driver {
    /// Serves HTTP/1.1 or HTTP/2 on an accepted (and, with TLS, decrypted) connection.
    async fn serve<S>(
        mut self,
        app: Arc<App>,
        io: S,
        info: ConnInfo,
        activity: &Activity,
        streams: Arc<Streams>,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let peer = info.peer;
        let framing = Arc::new(FramingFlags::default());
        let io = FramingWatch::new(io, framing.clone(), self.read_buffer);
        let tunnel_terms = self.tunnel_terms.clone();
        let idle_streams = streams.clone();
        let service = service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            // HTTP/2 requests never pass through the HTTP/1 watch's count.
            if request.version() < hyper::Version::HTTP_2 {
                if let Some(finding) = framing.next_request_finding() {
                    request.extensions_mut().insert(finding);
                }
            }
            // Only an HTTP/1.1 request can upgrade its connection; looking for the header
            // first keeps the extension (an allocation) off every other request.
            if request.version() == hyper::Version::HTTP_11
                && request.headers().contains_key(hyper::header::UPGRADE)
            {
                request.extensions_mut().insert(tunnel_terms.clone());
            }
            let connect = request.method() == hyper::Method::CONNECT;
            // An HTTP/2 stream stays open until its response body is done.
            let stream = (request.version() == hyper::Version::HTTP_2).then(|| streams.open());
            let (app, framing) = (app.clone(), framing.clone());
            async move {
                let response = app.handle(request, info).await?;
                let status = response.status();
                if status == hyper::StatusCode::SWITCHING_PROTOCOLS
                    || (connect && status.is_success())
                {
                    framing.switched_protocols();
                }
                Ok::<_, std::convert::Infallible>(response.map(|body| Counted::new(body, stream)))
            }
        });
        let connection = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(io), service);
        tokio::pin!(connection);
        // After a graceful close has begun, a peer that stays silent for another idle period
        // (say, one that stopped reading our response) is dropped outright.
        let mut closing = false;
        let result = loop {
            let idle_for = idle_streams.idle_for(activity);
            let wake = self.idle_timeout.saturating_sub(idle_for);
            tokio::select! {
                result = connection.as_mut() => break result,
                _ = self.stop.wait_for(|stop| *stop), if !closing => {
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                }
                _ = tokio::time::sleep(wake) => {
                    if idle_streams.idle_for(activity) < self.idle_timeout {
                        continue;
                    }
                    if closing {
                        tracing::debug!(client = %peer, "connection dropped: idle while closing");
                        return;
                    }
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                    activity.touch();
                    idle_streams.touch();
                }
            }
        };
        if let Err(err) = result {
            tracing::debug!(error = %err, client = %peer, "connection ended with an error");
        }
    }
}
