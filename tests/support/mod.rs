//! Shared harness for the integration tests: a recording upstream (a real hyper server on
//! loopback), the real `portcullis` binary started on a config written to a tempdir, and small
//! HTTP clients (hyper over a fresh connection, and raw bytes over TCP).
//!
//! Nothing here is mocked: every test talks HTTP to the proxy binary, which talks HTTP to the
//! upstream, and assertions are made on what the upstream actually received and on the JSON
//! lines the proxy actually logged.
//!
//! `fixtures` (users, passwords, tokens, the standard routes), `upstream` (the recording
//! upstream), `process` (the proxy binary and the CLI), `clients` (hyper, raw TCP,
//! WebSocket), `sessions` (signing in through the login form).

#![allow(dead_code)]

mod clients;
mod fixtures;
mod process;
mod sessions;
mod upstream;
#[allow(unused_imports)]
pub use clients::*;
#[allow(unused_imports)]
pub use fixtures::*;
#[allow(unused_imports)]
pub use process::*;
#[allow(unused_imports)]
pub use sessions::*;
#[allow(unused_imports)]
pub use upstream::*;

use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long any single wait in a test may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(15);
