//! `server.body_read_timeout`: the longest gap between two pieces of a request body (like
//! nginx's `client_body_timeout`). A client that starts a body and stalls would otherwise hold
//! its connection slot (or HTTP/2 stream) and an upstream request forever.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::{Instant, Sleep};

/// The request body as sent upstream: the client's, cut off after a silent gap.
pub struct TimedBody {
    inner: Incoming,
    timeout: Duration,
    /// Armed at the first poll, moved on by every frame.
    timer: Option<Pin<Box<Sleep>>>,
}

/// The body stalled: the error hyper's client reports as the body it was sending failing.
#[derive(Debug, thiserror::Error)]
#[error("no request body bytes for {0:?} (server.body_read_timeout)")]
pub(crate) struct BodyStalled(pub(crate) Duration);

impl TimedBody {
    /// Wraps a client's request body.
    pub(crate) fn new(inner: Incoming, timeout: Duration) -> Self {
        TimedBody {
            inner,
            timeout,
            timer: None,
        }
    }
}

impl Body for TimedBody {
    type Data = bytes::Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(timer) = this.timer.as_mut() {
                    timer.as_mut().reset(Instant::now() + this.timeout);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(err))) => Poll::Ready(Some(Err(err.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let timeout = this.timeout;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyStalled(timeout))))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
