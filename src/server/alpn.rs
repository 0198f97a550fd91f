//! Under TLS, the protocol ALPN chose is the only one spoken on the connection.
//!
//! hyper-util's auto builder picks HTTP/1 or HTTP/2 by looking at the first bytes (its
//! `http1_only`/`http2_only` do nothing when upgrades are enabled). This wrapper checks those
//! bytes against the negotiated protocol before the builder sees them: HTTP/1 bytes on an
//! `h2` connection, or the HTTP/2 preface on an `http/1.1` (or no-ALPN) one, end the
//! connection with an error, so the sniffer can only ever choose what ALPN agreed on.
//! Without TLS it only notes whether the connection is HTTP/2 (for the idle rule, see
//! `Streams`).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::idle::Streams;

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What ALPN agreed on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Negotiated {
    /// `h2`: the connection must open with the HTTP/2 preface.
    H2,
    /// `http/1.1`, or no ALPN: the connection must not open with it.
    Http1,
    /// No TLS: either may follow (h2c with prior knowledge).
    Either,
}

impl Negotiated {
    /// From the ALPN protocol of a finished handshake.
    pub(super) fn from_alpn(protocol: Option<&[u8]>) -> Self {
        match protocol {
            Some(b"h2") => Negotiated::H2,
            _ => Negotiated::Http1,
        }
    }
}

/// A TLS stream whose first bytes must fit the negotiated protocol.
pub(super) struct AlpnGuard<S> {
    inner: S,
    negotiated: Negotiated,
    /// Told once the connection has opened with the preface.
    streams: Option<Arc<Streams>>,
    /// Bytes of the preface compared so far; `PREFACE.len()` once the check is over.
    checked: usize,
}

impl<S> AlpnGuard<S> {
    /// Wraps `inner`, whose handshake negotiated `negotiated`; `streams` learns whether the
    /// connection speaks HTTP/2.
    pub(super) fn new(inner: S, negotiated: Negotiated, streams: Option<Arc<Streams>>) -> Self {
        AlpnGuard {
            inner,
            negotiated,
            streams,
            checked: 0,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AlpnGuard<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.checked == PREFACE.len() {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        let new = &buf.filled()[before..];
        let n = new.len().min(PREFACE.len() - self.checked);
        let fits = new[..n] == PREFACE[self.checked..self.checked + n];
        let refused = match (self.negotiated, fits) {
            (Negotiated::H2, false) => Some("no HTTP/2 preface on a connection that negotiated h2"),
            (Negotiated::H2 | Negotiated::Either, true) => {
                self.checked += n;
                if self.checked == PREFACE.len() {
                    if let Some(streams) = &self.streams {
                        streams.set_h2();
                    }
                }
                None
            }
            (Negotiated::Http1 | Negotiated::Either, false) => {
                self.checked = PREFACE.len();
                None
            }
            (Negotiated::Http1, true) => {
                self.checked += n;
                (self.checked == PREFACE.len())
                    .then_some("an HTTP/2 preface on a connection that negotiated HTTP/1")
            }
        };
        match refused {
            Some(why) => {
                // The refused bytes are not handed on.
                buf.set_filled(before);
                Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, why)))
            }
            None => Poll::Ready(Ok(())),
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AlpnGuard<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// Reads everything `input` yields through the guard, `chunk` bytes per read.
    async fn read_through(input: &[u8], negotiated: Negotiated, chunk: usize) -> io::Result<()> {
        let (mut client, server) = tokio::io::duplex(chunk);
        let input = input.to_vec();
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for part in input.chunks(chunk) {
                if client.write_all(part).await.is_err() {
                    return;
                }
            }
        });
        let mut guard = AlpnGuard::new(server, negotiated, None);
        let mut out = Vec::new();
        let result = guard.read_to_end(&mut out).await.map(drop);
        writer.abort();
        result
    }

    #[tokio::test]
    async fn the_first_bytes_must_fit_the_negotiated_protocol() {
        let h1 = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n".as_slice();
        let h2 = [PREFACE, b"\x00\x00\x00\x04\x00\x00\x00\x00\x00".as_slice()].concat();
        let pri_h1 = b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n".as_slice();
        for chunk in [1, 5, 64] {
            assert!(read_through(h1, Negotiated::Http1, chunk).await.is_ok());
            assert!(read_through(pri_h1, Negotiated::Http1, chunk).await.is_ok());
            assert!(read_through(&h2, Negotiated::H2, chunk).await.is_ok());
            assert!(read_through(&h2, Negotiated::Http1, chunk).await.is_err());
            assert!(read_through(h1, Negotiated::H2, chunk).await.is_err());
            assert!(read_through(pri_h1, Negotiated::H2, chunk).await.is_err());
            assert!(read_through(&h2, Negotiated::Either, chunk).await.is_ok());
            assert!(read_through(h1, Negotiated::Either, chunk).await.is_ok());
        }
    }
}
