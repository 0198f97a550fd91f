//! Idle upstream connections kept for reuse.
//!
//! Each connection is an HTTP/1.1 client connection driven by its own task (spawned once per
//! connection, not per request); the pool holds the request senders of the idle ones. A
//! sender comes back when the response body it produced was read to its end (see
//! `UpstreamBody`), so a connection is never handed out while a response is still on it.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use parking_lot::Mutex;
use tokio::time::Sleep;

/// An idle connection unused this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// How often idle connections are checked for `IDLE_TIMEOUT`.
const REAP_EVERY: Duration = Duration::from_secs(15);
/// Idle connections kept at most; past that, a connection whose response ended is closed.
const MAX_IDLE: usize = 256;

/// A request sender on one upstream connection.
pub(super) type Sender = SendRequest<super::body_timeout::TimedBody>;

/// One upstream connection, as the pool hands it out.
pub struct Conn {
    /// Sends requests on it.
    pub sender: Sender,
    /// The response timeout, reset for each request on this connection: moving a registered
    /// timer's deadline later is a store, where a timer per request is an insertion into and
    /// a removal from tokio's timer wheel.
    pub timer: Pin<Box<Sleep>>,
}

struct Idle {
    conn: Conn,
    since: Instant,
}

/// The idle connections to one upstream.
#[derive(Default)]
pub struct Pool {
    idle: Mutex<Vec<Idle>>,
    reaping: AtomicBool,
}

impl Pool {
    /// An idle connection ready for a request, most recently used first (the least likely to
    /// have been closed by the upstream's own keep-alive timeout). Closed ones are dropped;
    /// one whose previous exchange is still finishing stays for later.
    pub fn take(&self) -> Option<Conn> {
        let mut idle = self.idle.lock();
        let mut i = idle.len();
        while i > 0 {
            i -= 1;
            if idle[i].conn.sender.is_closed() {
                idle.remove(i);
            } else if idle[i].conn.sender.is_ready() {
                return Some(idle.remove(i).conn);
            }
        }
        None
    }

    /// Keeps a connection whose exchange ended, unless the pool is full.
    pub fn put(&self, conn: Conn) {
        if conn.sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock();
        if idle.len() < MAX_IDLE {
            idle.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }

    /// Starts the task that closes connections idle for `IDLE_TIMEOUT` (once per pool, on its
    /// first connection, so a pool that never connects costs no task). It ends once the pool
    /// is gone, e.g. after a reload replaced the upstream.
    pub fn start_reaper(self: &Arc<Self>) {
        if self.reaping.swap(true, Ordering::Relaxed) {
            return;
        }
        let pool: Weak<Pool> = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(REAP_EVERY).await;
                let Some(pool) = pool.upgrade() else { return };
                // Dropping a sender ends its idle connection.
                pool.idle
                    .lock()
                    .retain(|i| !i.conn.sender.is_closed() && i.since.elapsed() < IDLE_TIMEOUT);
            }
        });
    }
}

/// An upstream response body that gives its connection back to the pool once read to the
/// end. Dropped early (the client went away), the connection closes instead: hyper cannot
/// reuse a connection with an unread response on it.
pub struct UpstreamBody {
    body: Incoming,
    ended: bool,
    reuse: Option<(Conn, Arc<Pool>)>,
}

impl UpstreamBody {
    /// Wraps `body`; `reuse` is where its connection goes back when the body ended.
    pub fn new(body: Incoming, reuse: Option<(Conn, Arc<Pool>)>) -> Self {
        UpstreamBody {
            body,
            ended: false,
            reuse,
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.ended = true;
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

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        if let Some((conn, pool)) = self.reuse.take() {
            if self.ended || self.body.is_end_stream() {
                pool.put(conn);
            }
        }
    }
}
