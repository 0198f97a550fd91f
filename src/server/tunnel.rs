//! Connection slots, and the byte tunnels of upgraded (WebSocket) connections.
//!
//! Once hyper hands an upgraded connection over, the connection's own task ends; the tunnel
//! that carries on with its socket takes the connection's slot with it, so an open tunnel
//! still counts against `max_connections` and in `portcullis_open_connections`, and is
//! subject to an idle limit and to shutdown.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio::time::Sleep;

use super::idle::{Activity, Tracked};

/// One accepted connection's place under `max_connections` and in the open-connections
/// gauge. Shared by the connection's task and a tunnel opened on it: both are released when
/// the last holder drops it, so neither can outlive the other's accounting.
pub(super) struct ConnectionSlot {
    _permit: OwnedSemaphorePermit,
    gauge: Gauge,
}

impl ConnectionSlot {
    /// Takes the place `permit` grants and counts the connection as open.
    pub(super) fn new(permit: OwnedSemaphorePermit, gauge: Gauge) -> Arc<Self> {
        gauge.inc();
        Arc::new(ConnectionSlot {
            _permit: permit,
            gauge,
        })
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// What a tunnel opened on a connection takes with it: the connection's slot, the idle limit,
/// and the shutdown signal with its grace period. The server puts it in the extensions of an
/// HTTP/1.1 request that asks for an upgrade; without it the proxy opens no tunnel, so every
/// tunnel runs under these terms.
#[derive(Clone)]
pub struct TunnelTerms {
    /// Held, never read: the slot is given back when the last clone is dropped.
    _slot: Arc<ConnectionSlot>,
    idle_timeout: Duration,
    stop: watch::Receiver<bool>,
    grace: Duration,
}

impl TunnelTerms {
    pub(super) fn new(
        slot: Arc<ConnectionSlot>,
        idle_timeout: Duration,
        stop: watch::Receiver<bool>,
        grace: Duration,
    ) -> Self {
        TunnelTerms {
            _slot: slot,
            idle_timeout,
            stop,
            grace,
        }
    }

    /// Copies bytes both ways between the client's and the upstream's upgraded connections
    /// until either side closes, no byte moved either way for `idle_timeout`, or shutdown's
    /// grace period is over. Then both are closed and the slot is given back.
    pub async fn run(mut self, client: Upgraded, upstream: Upgraded) {
        let activity = Activity::new();
        // The client side sees every byte in both directions: what it reads goes up, what is
        // written to it came down.
        let mut client = Tracked::new(TokioIo::new(client), activity.clone());
        let mut upstream = TokioIo::new(upstream);
        let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
        tokio::pin!(copy);
        let mut grace: Option<Pin<Box<Sleep>>> = None;
        loop {
            let wake = self.idle_timeout.saturating_sub(activity.idle_for());
            tokio::select! {
                copied = copy.as_mut() => {
                    if let Err(err) = copied {
                        tracing::debug!(error = %err, "tunnel ended with an error");
                    }
                    break;
                }
                // Also when the server is gone (the sender dropped): that is shutdown too.
                _ = self.stop.wait_for(|stop| *stop), if grace.is_none() => {
                    grace = Some(Box::pin(tokio::time::sleep(self.grace)));
                }
                () = async { grace.as_mut().expect("guarded").await }, if grace.is_some() => {
                    tracing::debug!("tunnel closed: shutdown grace period over");
                    break;
                }
                () = tokio::time::sleep(wake) => {
                    if activity.idle_for() >= self.idle_timeout {
                        tracing::debug!(idle = ?self.idle_timeout, "tunnel closed: idle");
                        break;
                    }
                }
            }
        }
        // Returning drops the sockets first, then `self` with the slot: the slot is free
        // only once both connections are closed.
    }
}
