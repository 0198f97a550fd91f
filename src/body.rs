//! The body type of every response the proxy sends. Its own module, so that the proxy (which
//! streams the upstream's body) and the responses the proxy makes itself can both name it
//! without importing each other.

use bytes::Bytes;
use http_body_util::Full;

/// The upstream's streamed body, or one of ours.
pub type Body = http_body_util::Either<crate::proxy::UpstreamBody, Full<Bytes>>;
