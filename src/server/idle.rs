//! When a connection last moved a byte, so idle keep-alive connections can be closed.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The time of a connection's last read or write, shared between the socket wrapper and
/// the task that drives the connection.
#[derive(Clone)]
pub(super) struct Activity {
    opened: Instant,
    /// Milliseconds after `opened`.
    last_ms: Arc<AtomicU64>,
}

impl Activity {
    /// Activity starting now.
    pub(super) fn new() -> Self {
        Activity {
            opened: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Records activity now.
    pub(super) fn touch(&self) {
        let ms = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// How long since the last activity.
    pub(super) fn idle_for(&self) -> Duration {
        let last = self.opened + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        Instant::now().saturating_duration_since(last)
    }
}

/// A socket that records its activity.
pub(super) struct Tracked<S> {
    inner: S,
    activity: Activity,
}

impl<S> Tracked<S> {
    /// Wraps `inner`.
    pub(super) fn new(inner: S, activity: Activity) -> Self {
        Tracked { inner, activity }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(poll, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        poll
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The HTTP/2 streams open on a connection, and when the last one ended. An HTTP/2
/// connection with no open stream is idle however many bytes move: PINGs and SETTINGS would
/// otherwise keep it, and its connection slot, forever.
pub(super) struct Streams {
    opened: Instant,
    /// Whether the connection began with the HTTP/2 preface.
    h2: AtomicBool,
    open: AtomicUsize,
    /// Milliseconds after `opened` when the last stream ended (or the idle period was
    /// restarted).
    last_end_ms: AtomicU64,
}

impl Streams {
    /// No stream yet, opened now.
    pub(super) fn new() -> Arc<Self> {
        Arc::new(Streams {
            opened: Instant::now(),
            h2: AtomicBool::new(false),
            open: AtomicUsize::new(0),
            last_end_ms: AtomicU64::new(0),
        })
    }

    /// Records that the connection speaks HTTP/2.
    pub(super) fn set_h2(&self) {
        self.h2.store(true, Ordering::Relaxed);
    }

    /// Counts a stream as open until the guard is dropped.
    pub(super) fn open(self: &Arc<Self>) -> StreamGuard {
        self.open.fetch_add(1, Ordering::Relaxed);
        StreamGuard(self.clone())
    }

    /// Restarts the idle period now.
    pub(super) fn touch(&self) {
        let ms = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_end_ms.store(ms, Ordering::Relaxed);
    }

    /// How long the connection has been idle: for HTTP/2 with no open stream, since the last
    /// stream ended whatever moved since; otherwise since `activity` last moved a byte.
    pub(super) fn idle_for(&self, activity: &Activity) -> Duration {
        if self.h2.load(Ordering::Relaxed) && self.open.load(Ordering::Relaxed) == 0 {
            let last =
                self.opened + Duration::from_millis(self.last_end_ms.load(Ordering::Relaxed));
            Instant::now().saturating_duration_since(last)
        } else {
            activity.idle_for()
        }
    }
}

/// One open stream (an HTTP/2 request whose response has not ended).
pub(super) struct StreamGuard(Arc<Streams>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.touch();
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that keeps its stream counted as open until it is done or dropped.
pub(super) struct Counted<B> {
    body: B,
    _stream: Option<StreamGuard>,
}

impl<B> Counted<B> {
    /// Wraps `body`; `stream` is released with it.
    pub(super) fn new(body: B, stream: Option<StreamGuard>) -> Self {
        Counted {
            body,
            _stream: stream,
        }
    }
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for Counted<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}
