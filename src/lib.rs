//! portcullis: an authenticating reverse proxy.
//!
//! A request goes through `server` (connections) to `app` (the pipeline): `path` normalises
//! it, `policy` picks the route, `auth` authenticates, `policy` authorises, `proxy` forwards;
//! refusals are shaped by `response` and every request is logged once by `telemetry`.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
#![warn(missing_docs)]

pub mod app;
pub mod auth;
pub mod cli;
pub mod config;
pub mod demo;
pub mod error;
pub mod login;
pub mod path;
pub mod policy;
pub mod proxy;
pub mod response;
pub mod server;
pub mod session;
pub mod telemetry;

use std::future::Future;

use config::Config;

/// Binds the listeners and serves until `shutdown` resolves.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
    let listeners = server::bind(&config.server.listen).await?;
    let addresses: Vec<String> = listeners
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .map(|a| a.to_string())
        .collect();
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
    server::serve(app, listeners, &settings, shutdown).await;
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = terminate => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
