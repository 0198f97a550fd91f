//! portcullis: an authenticating reverse proxy.
//!
//! A request goes through `server` (connections) to `app` (the pipeline): `path` normalises
//! it, `policy` picks the route, `auth` authenticates, `policy` authorises, `proxy` forwards;
//! refusals are shaped by `response` and every request is logged once by `telemetry`.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
#![warn(missing_docs)]
#![warn(unreachable_pub)]

pub mod admin;
pub mod app;
pub mod auth;
pub mod body;
pub mod cli;
pub mod config;
pub mod demo;
pub mod error;
pub mod explain;
pub mod login;
pub mod pages;
pub mod path;
pub mod policy;
pub mod proxy;
pub mod ratelimit;
pub mod response;
pub mod server;
pub mod session;
pub mod telemetry;
pub mod tls;

use std::future::Future;
use std::path::PathBuf;

use config::Config;
use tokio::signal::unix::{signal, Signal, SignalKind};

/// Binds the listeners and serves until `shutdown` resolves. With `reload_from`, SIGHUP
/// re-reads that file and swaps the configuration in when it is valid.
pub async fn run(
    config: Config,
    reload_from: Option<PathBuf>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let listeners = server::bind(&config.server.listen).await?;
    let admin = match config.server.admin_listen {
        Some(address) => Some(server::bind(&[address]).await?.remove(0)),
        None => None,
    };
    let addresses: Vec<String> = listeners
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .map(|a| a.to_string())
        .collect();
    // Registered before "listening" is logged: from then on, SIGHUP means reload.
    let hangups = match reload_from {
        Some(path) => Some((signal(SignalKind::hangup())?, path)),
        None => None,
    };
    let settings = config.server.clone();
    let routes: Vec<String> = config.routes.iter().map(|r| r.path.to_string()).collect();
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        listen = %addresses.join(","),
        upstream = %config.upstream.url,
        routes = %routes.join(","),
        "listening"
    );
    let app = app::App::new(config).map_err(std::io::Error::other)?;
    if let Some(listener) = admin {
        if let Ok(address) = listener.local_addr() {
            tracing::info!(admin_listen = %address, "admin listening");
        }
        tokio::spawn(admin::serve(app.clone(), listener));
    }
    if let Some((hangups, path)) = hangups {
        tokio::spawn(reload_on_sighup(app.clone(), hangups, path));
    }
    server::serve(app, listeners, &settings, shutdown).await;
    Ok(())
}

/// SIGHUP: parse and validate the file again; a valid one replaces the running config, an
/// invalid one is logged with its exact error and the old one keeps serving.
async fn reload_on_sighup(app: std::sync::Arc<app::App>, mut hangups: Signal, path: PathBuf) {
    while hangups.recv().await.is_some() {
        let loaded = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || Config::load(&path)).await
        };
        match loaded {
            Ok(Ok(config)) => app.reload(config),
            Ok(Err(err)) => {
                app.metrics()
                    .reloads
                    .get_or_create(&telemetry::metrics::OutcomeLabels { outcome: "failure" })
                    .inc();
                tracing::error!(error = %err, "reload failed: keeping the running configuration");
            }
            Err(err) => tracing::error!(error = %err, "reload task failed"),
        }
    }
}

/// Registers for SIGTERM and SIGINT at once (so a signal that arrives while the proxy is still
/// starting is not lost to the default action) and returns a future that resolves on either.
/// Must be called inside the tokio runtime.
pub fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    })
}
