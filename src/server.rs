//! Listeners and connections: accept loops, connection limits, HTTP/1.1 + HTTP/2 via
//! hyper-util's auto builder, and graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

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
    let graceful = Arc::new(GracefulShutdown::new());
    let permits = Arc::new(Semaphore::new(settings.max_connections));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut loops = Vec::new();
    for listener in listeners {
        let accept = AcceptLoop {
            listener,
            app: app.clone(),
            builder: builder.clone(),
            graceful: graceful.clone(),
            permits: permits.clone(),
        };
        loops.push(tokio::spawn(accept.run(stop_rx.clone())));
    }
    shutdown.await;
    tracing::info!("shutting down: no longer accepting connections");
    let _ = stop_tx.send(true);
    for accept_loop in loops {
        let _ = accept_loop.await;
    }
    // The accept loops have ended and dropped their handles, so this one is the last; the
    // connections hold watchers, not handles.
    let graceful = Arc::try_unwrap(graceful).unwrap_or_else(|_| GracefulShutdown::new());
    match tokio::time::timeout(settings.shutdown_grace, graceful.shutdown()).await {
        Ok(()) => tracing::info!("all connections closed"),
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
        .max_buf_size(settings.max_header_bytes.max(MIN_READ_BUFFER))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(H2_MAX_STREAMS)
        .keep_alive_interval(Some(settings.idle_timeout))
        .keep_alive_timeout(Duration::from_secs(20));
    builder
}

struct AcceptLoop {
    listener: TcpListener,
    app: Arc<App>,
    builder: auto::Builder<TokioExecutor>,
    graceful: Arc<GracefulShutdown>,
    permits: Arc<Semaphore>,
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
                Ok((stream, peer)) => self.serve_connection(stream, peer, permit),
                Err(err) => {
                    // Usually EMFILE: back off instead of spinning.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn serve_connection(&self, stream: TcpStream, peer: SocketAddr, permit: tokio::sync::OwnedSemaphorePermit) {
        let _ = stream.set_nodelay(true);
        let app = self.app.clone();
        // The certificate comes from the config current at accept time, so a SIGHUP reload
        // changes it for new connections only.
        let runtime = app.runtime();
        let tls = runtime.config.server.tls.clone();
        let handshake_timeout = runtime.config.server.header_read_timeout;
        let builder = self.builder.clone();
        let graceful = self.graceful.watcher();
        app.metrics().open_connections.inc();
        tokio::spawn(async move {
            match tls {
                None => serve_http(&builder, graceful, app.clone(), TokioIo::new(stream), ConnInfo { peer, tls: false }).await,
                Some(config) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(config);
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(tls_stream)) => {
                            let info = ConnInfo { peer, tls: true };
                            serve_http(&builder, graceful, app.clone(), TokioIo::new(tls_stream), info).await;
                        }
                        Ok(Err(err)) => tracing::debug!(error = %err, client = %peer, "TLS handshake failed"),
                        Err(_) => tracing::debug!(client = %peer, "TLS handshake timed out"),
                    }
                }
            }
            app.metrics().open_connections.dec();
            drop(permit);
        });
    }
}

/// Serves HTTP/1.1 or HTTP/2 on an accepted (and, with TLS, decrypted) connection.
async fn serve_http<I>(builder: &auto::Builder<TokioExecutor>, graceful: Watcher, app: Arc<App>, io: I, info: ConnInfo)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let peer = info.peer;
    let service = service_fn(move |request| app.clone().handle(request, info));
    let connection = builder.serve_connection_with_upgrades(io, service);
    if let Err(err) = graceful.watch(connection.into_owned()).await {
        tracing::debug!(error = %err, client = %peer, "connection ended with an error");
    }
}
