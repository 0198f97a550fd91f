//! Configuration: loading, validation, and the only config types the rest of the crate sees.

mod diff;
mod error;
pub mod file;
mod jwt;
mod route;
mod routes;
pub mod secret;
pub mod types;
mod validate;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;

pub use diff::{diff, revoked_users};
pub use error::ConfigError;
pub use file::{LoginSection, PagesSection, RateLimitSection, SessionSection};
pub use route::Route;
pub use types::{Cidr, HumanDuration, RoutePath, UpstreamUrl};

use crate::auth::password::PasswordHash;
use crate::policy::RouteTable;

/// A loaded, validated configuration. Immutable; a reload builds a new one.
#[derive(Debug)]
pub struct Config {
    /// The file it was read from.
    pub source: PathBuf,
    /// `[server]`
    pub server: ServerConfig,
    /// `[upstream]`
    pub upstream: UpstreamConfig,
    /// `[identity]`
    pub identity: IdentityConfig,
    /// `[session]`
    pub session: SessionSection,
    /// `[login]`
    pub login: LoginSection,
    /// `[pages]`: the title and the page templates, checked at load.
    pub pages: Arc<crate::pages::Pages>,
    /// `[rate_limit]`
    pub rate_limit: RateLimitSection,
    /// Users from `[[users]]` and `[users_file]`.
    pub users: UserDb,
    /// `[[tokens]]`
    pub tokens: Vec<Arc<StaticToken>>,
    /// `[jwt]`: the JWT verifier with its keys, if bearer JWTs are accepted.
    pub jwt: Option<Arc<crate::auth::jwt::JwtVerifier>>,
    /// The compiled `[[route]]` table.
    pub routes: RouteTable,
    /// Things `check` should point out that are not errors.
    pub warnings: Vec<String>,
    /// When this configuration was read (Unix milliseconds). A session started later under
    /// another password was started by an instance with a different configuration: it is
    /// refused here but not ended for everyone (`session::Sessions::check`).
    pub loaded_ms: u64,
}

/// `[server]`, validated.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Addresses to accept client connections on.
    pub listen: Vec<SocketAddr>,
    /// Optional admin listener (health, readiness, metrics).
    pub admin_listen: Option<SocketAddr>,
    /// Peers whose `X-Forwarded-For` / `Forwarded` / `X-Request-Id` are believed.
    pub trusted_proxies: Vec<Cidr>,
    /// Slowloris guard: the whole request head must arrive within this.
    pub header_read_timeout: Duration,
    /// Keep-alive idle connection limit.
    pub idle_timeout: Duration,
    /// The longest gap between two pieces of a request body.
    pub body_read_timeout: Duration,
    /// Largest request head accepted (431 beyond).
    pub max_header_bytes: usize,
    /// Open client connections at once; further connections wait in the kernel backlog.
    pub max_connections: usize,
    /// Async worker threads (0 = one per core).
    pub workers: usize,
    /// How long in-flight requests may finish after SIGTERM/SIGINT.
    pub shutdown_grace: Duration,
    /// An upgraded (WebSocket) connection that moves no byte either way for this long is closed.
    pub tunnel_idle_timeout: Duration,
    /// TLS termination on every listener, when `[server.tls]` is set.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// The key signed cookies are made with (`secret_file`, or this process's random key).
    pub secret: secret::SecretKey,
}

/// `[upstream]`, validated.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// Scheme and authority requests are sent to.
    pub url: UpstreamUrl,
    /// TCP connect limit.
    pub connect_timeout: Duration,
    /// Limit on the wait for response headers.
    pub response_timeout: Duration,
    /// Send the client's Host instead of the upstream's.
    pub preserve_host: bool,
    /// How an `https://` upstream's certificate is verified (system roots or `ca_file`).
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// `[identity]`, validated: the headers that tell the upstream who the caller is.
#[derive(Debug, Clone)]
pub struct IdentityConfig {
    /// Carries the user name.
    pub user_header: HeaderName,
    /// Carries the comma-separated groups.
    pub groups_header: HeaderName,
    /// Carries `basic`, `bearer` or `session`.
    pub auth_method_header: HeaderName,
    /// Carries the qualified identity (`alice`, `token:deploy-bot`, `jwt:alice`).
    pub identity_header: HeaderName,
    /// Pass the client's `Authorization` header upstream when it authenticated the request.
    pub forward_authorization: bool,
}

/// A user who may sign in with a password.
#[derive(Debug)]
pub struct User {
    /// The user name.
    pub name: String,
    /// The stored hash.
    pub hash: PasswordHash,
    /// Group names for `allow_groups`.
    pub groups: Vec<String>,
}

/// All password users, by name.
#[derive(Debug)]
pub struct UserDb {
    by_name: std::collections::HashMap<String, Arc<User>>,
    /// What an unknown name is verified against: the cost most users' hashes have.
    dummy: crate::auth::password::PasswordHash,
}

impl UserDb {
    /// The users by name, with a dummy hash matching their most common cost.
    pub fn new(by_name: std::collections::HashMap<String, Arc<User>>) -> Self {
        // Sorted, so that which of two equally common kinds wins does not vary by run.
        let mut users: Vec<&Arc<User>> = by_name.values().collect();
        users.sort_by(|a, b| a.name.cmp(&b.name));
        let dummy = crate::auth::password::PasswordHash::dummy_for(users.iter().map(|u| &u.hash));
        UserDb { by_name, dummy }
    }

    /// The hash unknown names are verified against, so that they cost what a known user
    /// costs (SPEC §3 `basic`).
    pub fn dummy(&self) -> &crate::auth::password::PasswordHash {
        &self.dummy
    }

    /// Looks a user up by exact name.
    pub fn get(&self, name: &str) -> Option<&Arc<User>> {
        self.by_name.get(name)
    }

    /// Whether a user of that name exists.
    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// User names, in no particular order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether there are no users.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

/// A static bearer token; only its SHA-256 is known.
#[derive(Debug)]
pub struct StaticToken {
    /// Shown as the user name.
    pub name: String,
    /// SHA-256 of the token.
    pub digest: [u8; 32],
    /// Groups for `allow_groups`.
    pub groups: Vec<String>,
    /// Scopes for routes' `scopes`.
    pub scopes: Vec<String>,
    /// Unix seconds after which the token is refused.
    pub expires: Option<i64>,
}
