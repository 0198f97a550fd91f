//! Logging: tracing-subscriber writing JSON lines (or pretty text for people) to stdout.

pub mod access;
pub mod metrics;

use std::io::IsTerminal;

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;

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
pub fn init(format: LogFormat, level: &str) -> WorkerGuard {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .finish(std::io::stdout());
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
    guard
}
