//! The command line (SPEC §1): parsing with clap and one function per command.

use std::io::{BufRead, IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use base64::Engine;
use clap::{Parser, Subcommand};
use rand::RngCore;
use sha2::Digest;

use crate::auth::password::PasswordHash;
use crate::config::{Config, Route};
use crate::telemetry::{self, LogFormat};

/// portcullis: an authenticating reverse proxy.
#[derive(Debug, Parser)]
#[command(
    name = "portcullis",
    version,
    about,
    args_conflicts_with_subcommands = false
)]
pub struct Cli {
    /// Configuration file (TOML).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log line format (default: json when stdout is not a terminal, else pretty).
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Log level filter (RUST_LOG overrides it).
    #[arg(long, global = true, default_value = "info")]
    pub log_level: String,
    /// What to do (default: run).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy.
    Run,
    /// Start a demo site with the proxy in front of it on 127.0.0.1:8080.
    Demo {
        /// Where the proxy listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
    },
    /// Validate the configuration and print the effective routes.
    Check,
    /// Show what the proxy would decide for a request, and why: the request-shape checks, the
    /// reserved paths, the route, the scheme that would admit the caller, the allow lists and
    /// methods, with the status and reason code the proxy would log.
    Explain {
        /// The request method, e.g. GET.
        method: String,
        /// The request target exactly as a client would send it (query allowed; a fragment is
        /// refused as the proxy refuses it).
        path: String,
        /// The `Host` header (default: localhost).
        #[arg(long)]
        host: Option<String>,
        /// A request header, `Name: value` (repeatable): an `Authorization` scheme, a session
        /// cookie, `X-HTTP-Method-Override`, `Accept`, `Content-Length` …
        #[arg(long = "header", value_name = "NAME: VALUE")]
        headers: Vec<String>,
        /// Decide for this user (a [[users]]/htpasswd user, a token name, or a JWT subject).
        #[arg(long)]
        user: Option<String>,
        /// The user's groups (default: the configured user's groups).
        #[arg(long, value_delimiter = ',')]
        groups: Option<Vec<String>>,
    },
    /// Read a password and print its argon2id hash for `password_hash`.
    HashPassword,
    /// Print a new random bearer token and the `token_sha256` line for it.
    GenToken {
        /// Name to put in the printed [[tokens]] entry.
        #[arg(long, default_value = "my-token")]
        name: String,
    },
}

/// Runs the parsed command line; returns the process exit code.
pub fn main(cli: Cli) -> ExitCode {
    let format = cli.log_format.unwrap_or_else(LogFormat::detect);
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => match require_config(cli.config.as_deref()) {
            Ok(path) => run(&path, format, &cli.log_level),
            Err(code) => code,
        },
        Command::Demo { listen } => demo(listen, format, &cli.log_level),
        Command::Check => match require_config(cli.config.as_deref()) {
            Ok(path) => check(&path),
            Err(code) => code,
        },
        Command::Explain {
            method,
            path,
            host,
            headers,
            user,
            groups,
        } => match require_config(cli.config.as_deref()) {
            Ok(config) => explain(
                &config,
                &method,
                &path,
                host.as_deref(),
                &headers,
                user.as_deref(),
                groups,
            ),
            Err(code) => code,
        },
        Command::HashPassword => hash_password(),
        Command::GenToken { name } => gen_token(&name),
    }
}

fn require_config(path: Option<&Path>) -> Result<PathBuf, ExitCode> {
    path.map(Path::to_path_buf).ok_or_else(|| {
        eprintln!("error: --config FILE is required (see `portcullis --help`)");
        ExitCode::from(2)
    })
}

fn load(path: &Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|err| {
        eprintln!("error: {err}");
        ExitCode::from(1)
    })
}

fn run(path: &Path, format: LogFormat, level: &str) -> ExitCode {
    let config = match load(path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let _guard = telemetry::init(format, level);
    for warning in &config.warnings {
        tracing::warn!(config = %path.display(), "{warning}");
    }
    serve(config, Some(path.to_path_buf()))
}

fn demo(listen: SocketAddr, format: LogFormat, level: &str) -> ExitCode {
    let _guard = telemetry::init(format, level);
    let runtime = match build_runtime(0) {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    let config = runtime.block_on(async {
        let site = crate::demo::start_site().await.map_err(|e| e.to_string())?;
        let text = crate::demo::config_text(site, listen)?;
        Config::from_toml(Path::new("<demo>"), &text).map_err(|e| e.to_string())
    });
    let config = match config {
        Ok(config) => config,
        Err(err) => {
            eprintln!("error: cannot start the demo: {err}");
            return ExitCode::from(1);
        }
    };
    println!("{}", crate::demo::banner(listen));
    let _ = std::io::stdout().flush();
    serve_on(runtime, config, None)
}

fn serve(config: Config, reload_from: Option<PathBuf>) -> ExitCode {
    match build_runtime(config.server.workers) {
        Ok(runtime) => serve_on(runtime, config, reload_from),
        Err(code) => code,
    }
}

fn build_runtime(workers: usize) -> Result<tokio::runtime::Runtime, ExitCode> {
    // One worker: a current-thread runtime does the same work without the work-stealing
    // scheduler's cross-thread wake-ups (password hashing has its own threads either way).
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    if workers > 1 {
        builder.worker_threads(workers);
    }
    builder.enable_all().build().map_err(|err| {
        eprintln!("error: cannot start the async runtime: {err}");
        ExitCode::from(1)
    })
}

fn serve_on(
    runtime: tokio::runtime::Runtime,
    config: Config,
    reload_from: Option<PathBuf>,
) -> ExitCode {
    let served = runtime.block_on(async {
        let shutdown = crate::shutdown_signal()?;
        crate::run(config, reload_from, shutdown).await
    });
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "cannot start");
            eprintln!("error: {err}");
            ExitCode::from(1)
        }
    }
}

fn check(path: &Path) -> ExitCode {
    let config = match load(path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    emit(&format!(
        "{} is valid\n{}",
        path.display(),
        describe(&config)
    ));
    for warning in &config.warnings {
        eprintln!("warning: {warning}");
    }
    ExitCode::SUCCESS
}

/// The effective configuration as `check` prints it: listeners, upstream, principals and the
/// routes table in match order.
pub fn describe(config: &Config) -> String {
    let listen: Vec<String> = config
        .server
        .listen
        .iter()
        .map(ToString::to_string)
        .collect();
    let mut out = format!(
        "listen:   {}\nupstream: {}\nusers:    {}\ntokens:   {}\n\nroutes (longest prefix wins):\n",
        listen.join(", "),
        config.upstream.url,
        config.users.len(),
        config.tokens.len(),
    );
    let mut rows = vec![[
        "PATH".to_string(),
        "AUTH".to_string(),
        "METHODS".to_string(),
        "ALLOW".to_string(),
        "REALM".to_string(),
    ]];
    let mut routes: Vec<_> = config.routes.iter().collect();
    routes.sort_by_key(|r| std::cmp::Reverse(r.path.as_str().len()));
    rows.extend(routes.into_iter().map(|r| route_row(r)));
    let widths: Vec<usize> = (0..5)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    for row in rows {
        let mut line = String::new();
        for (cell, width) in row.iter().zip(&widths) {
            line.push_str(&format!("{cell:<width$}  "));
        }
        out.push_str("  ");
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn route_row(route: &Route) -> [String; 5] {
    let path = if route.case_insensitive {
        format!("{} (any case)", route.path)
    } else {
        route.path.to_string()
    };
    let auth = if route.is_public() {
        "public".to_string()
    } else {
        route
            .schemes
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(",")
    };
    let methods = route.methods.as_ref().map_or("any".to_string(), |m| {
        m.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(",")
    });
    let mut allow = Vec::new();
    if !route.allow_users.is_empty() {
        allow.push(format!("users={}", route.allow_users.join(",")));
    }
    if !route.allow_groups.is_empty() {
        allow.push(format!("groups={}", route.allow_groups.join(",")));
    }
    if !route.scopes.is_empty() {
        allow.push(format!("scopes={}", route.scopes.join(",")));
    }
    let allow = match (route.is_public(), allow.is_empty()) {
        (true, _) => "everyone".to_string(),
        (false, true) => "any authenticated".to_string(),
        (false, false) => allow.join(" "),
    };
    let realm = if route.is_public() {
        "-".to_string()
    } else {
        route.realm.clone()
    };
    [path, auth, methods, allow, realm]
}

fn explain(
    path: &Path,
    method: &str,
    target: &str,
    host: Option<&str>,
    headers: &[String],
    user: Option<&str>,
    groups: Option<Vec<String>>,
) -> ExitCode {
    let config = match load(path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let Ok(method) = http::Method::from_bytes(method.to_ascii_uppercase().as_bytes()) else {
        eprintln!("error: {method:?} is not an HTTP method");
        return ExitCode::from(2);
    };
    let headers: Result<Vec<_>, String> = headers
        .iter()
        .map(|h| crate::explain::parse_header(h))
        .collect();
    let headers = match headers {
        Ok(headers) => headers,
        Err(err) => {
            eprintln!("error: --header {err}");
            return ExitCode::from(2);
        }
    };
    emit(&crate::explain::explain(
        &config,
        crate::explain::Question {
            method: &method,
            target,
            host,
            headers: &headers,
            user,
            groups,
        },
    ));
    ExitCode::SUCCESS
}

fn hash_password() -> ExitCode {
    let password = match read_password() {
        Ok(password) => password,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(1);
        }
    };
    match PasswordHash::hash_argon2id(password.as_bytes()) {
        Ok(hash) => {
            emit(&format!("{hash}\n"));
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(1)
        }
    }
}

/// From the terminal without echo (asked twice), or one line from piped stdin.
fn read_password() -> Result<String, String> {
    let password = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("Password: ").map_err(|e| e.to_string())?;
        let again = rpassword::prompt_password("Again: ").map_err(|e| e.to_string())?;
        if first != again {
            return Err("the passwords differ".to_string());
        }
        first
    } else {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| format!("cannot read stdin: {e}"))?;
        line.trim_end_matches(['\n', '\r']).to_string()
    };
    if password.is_empty() {
        return Err("empty password".to_string());
    }
    Ok(password)
}

fn gen_token(name: &str) -> ExitCode {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let digest = hex::encode(sha2::Sha256::digest(token.as_bytes()));
    emit(&format!(
        "token: {token}\n\n\
         # Give the token to its client; put only its SHA-256 in the config:\n\
         [[tokens]]\nname = {name:?}\ntoken_sha256 = \"{digest}\"\n"
    ));
    ExitCode::SUCCESS
}

/// Writes a command's output to stdout. A reader that went away (`portcullis check | head -1`)
/// ends the command quietly, as it ends any Unix filter, where `print!` would panic: Rust
/// ignores SIGPIPE, so the write fails with `BrokenPipe` instead of the process being killed.
fn emit(text: &str) {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(err) => {
            eprintln!("error: cannot write to stdout: {err}");
            std::process::exit(1);
        }
    }
}
