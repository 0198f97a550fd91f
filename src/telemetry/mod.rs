//! Logging: tracing-subscriber writing JSON lines (or pretty text for people) to stdout.

pub mod access;
mod batch;
pub mod metrics;
pub mod request_id;

use std::io::IsTerminal;
use std::sync::OnceLock;

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;

/// Log bytes the writer thread gathers before it must write (it also writes whenever it has
/// drained its queue, so a quiet proxy's lines are never held back).
const LOG_BUFFER_BYTES: usize = 64 * 1024;

/// The access log writer, when lines are JSON: the access event (one per request) is
/// formatted by `access.rs` itself and buffered here (see `AccessRecord::emit`).
static ACCESS_LOG: OnceLock<batch::AccessLog> = OnceLock::new();

/// Counts the other log lines (warnings, errors) dropped because their queue was full.
static OTHER_LINES_DROPPED: OnceLock<tracing_appender::non_blocking::ErrorCounter> =
    OnceLock::new();

/// Log lines dropped so far because stdout could not keep up (SPEC §5: dropped rather than
/// blocking a request, and counted in `portcullis_log_lines_dropped_total`).
pub fn log_lines_dropped() -> u64 {
    let access = access_log().map_or(0, batch::AccessLog::dropped);
    let other = OTHER_LINES_DROPPED
        .get()
        .map_or(0, |counter| counter.dropped_lines() as u64);
    access + other
}

/// The access log writer, once logging is initialised with the JSON format.
fn access_log() -> Option<&'static batch::AccessLog> {
    ACCESS_LOG.get()
}

/// Keeps the log writers alive; dropping it (at exit) writes out every pending line.
pub struct LogGuard {
    _worker: WorkerGuard,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        if let Some(access) = access_log() {
            access.flush();
        }
    }
}

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line, event fields at the top level.
    Json,
    /// Human-readable, for a terminal.
    Pretty,
}

impl LogFormat {
    /// JSON unless stdout is a terminal.
    pub fn detect() -> LogFormat {
        if std::io::stdout().is_terminal() {
            LogFormat::Pretty
        } else {
            LogFormat::Json
        }
    }
}

/// Installs the global subscriber. `RUST_LOG` overrides `level`. Lines are written by a
/// background thread so that formatting and the write syscall stay off the request path;
/// keep the guard alive until exit so the last lines are flushed.
pub fn init(format: LogFormat, level: &str) -> LogGuard {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // The writer thread drains every line queued since it last woke and then flushes: behind
    // a buffer, a busy proxy writes many lines per syscall instead of one each (stdout's own
    // line buffering would make a write per line).
    let stdout = std::io::BufWriter::with_capacity(LOG_BUFFER_BYTES, std::io::stdout());
    // Lossy: a full queue drops the line (counted) rather than blocking the request that logs.
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .finish(stdout);
    let _ = OTHER_LINES_DROPPED.set(writer.error_counter());
    if format == LogFormat::Json && ACCESS_LOG.get().is_none() {
        match batch::AccessLog::start() {
            Ok(access) => {
                let _ = ACCESS_LOG.set(access);
            }
            Err(err) => eprintln!("cannot start the access log writer: {err}"),
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let installed = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
        LogFormat::Pretty => builder.with_target(false).try_init(),
    };
    if let Err(err) = installed {
        eprintln!("logging was already initialised: {err}");
    }
    LogGuard { _worker: guard }
}
