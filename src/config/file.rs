//! The configuration file as written: `deny_unknown_fields` structs whose leaf values validate
//! themselves (see `types.rs`). Cross-field checks live in `validate.rs`.

// Every key is documented for operators in config/portcullis.toml; the field names are the keys.
#![allow(missing_docs)]

use serde::Deserialize;
use toml::Spanned;

use super::types::{
    Cidr, ConfigHeaderName, ConfigMethod, HumanDuration, ListenAddr, Rfc3339, RoutePath, Sha256Hex,
    UpstreamUrl,
};
use crate::auth::password::PasswordHash;
use crate::auth::Scheme;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub server: ServerSection,
    pub upstream: UpstreamSection,
    #[serde(default)]
    pub identity: IdentitySection,
    #[serde(default)]
    pub session: SessionSection,
    #[serde(default)]
    pub login: LoginSection,
    #[serde(default)]
    pub pages: PagesSection,
    #[serde(default)]
    pub rate_limit: RateLimitSection,
    #[serde(default)]
    pub users: Vec<UserEntry>,
    pub users_file: Option<UsersFileSection>,
    #[serde(default)]
    pub tokens: Vec<TokenEntry>,
    pub jwt: Option<Spanned<JwtSection>>,
    #[serde(default, rename = "route")]
    pub routes: Vec<RouteEntry>,
}

/// `[server]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    pub listen: Spanned<Vec<ListenAddr>>,
    pub admin_listen: Option<ListenAddr>,
    pub trusted_proxies: Vec<Cidr>,
    pub header_read_timeout: HumanDuration,
    pub idle_timeout: HumanDuration,
    pub max_header_bytes: Spanned<usize>,
    pub max_connections: Spanned<usize>,
    pub workers: usize,
    pub shutdown_grace: HumanDuration,
    pub tunnel_idle_timeout: HumanDuration,
    pub secret_file: Spanned<String>,
    pub body_read_timeout: HumanDuration,
    pub tls: Option<TlsSection>,
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            listen: Spanned::new(
                0..0,
                vec![ListenAddr("0.0.0.0:8080".parse().expect("literal"))],
            ),
            admin_listen: None,
            trusted_proxies: Vec::new(),
            header_read_timeout: HumanDuration(std::time::Duration::from_secs(10)),
            idle_timeout: HumanDuration(std::time::Duration::from_secs(60)),
            max_header_bytes: Spanned::new(0..0, 16 * 1024),
            max_connections: Spanned::new(0..0, 10_000),
            workers: 0,
            shutdown_grace: HumanDuration(std::time::Duration::from_secs(30)),
            tunnel_idle_timeout: HumanDuration(std::time::Duration::from_secs(60 * 60)),
            secret_file: Spanned::new(0..0, String::new()),
            body_read_timeout: HumanDuration(std::time::Duration::from_secs(60)),
            tls: None,
        }
    }
}

/// `[server.tls]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    pub cert_file: Spanned<String>,
    pub key_file: Spanned<String>,
}

/// `[upstream]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSection {
    pub url: UpstreamUrl,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: HumanDuration,
    #[serde(default = "default_response_timeout")]
    pub response_timeout: HumanDuration,
    #[serde(default)]
    pub preserve_host: bool,
    pub ca_file: Option<Spanned<String>>,
}

fn default_connect_timeout() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(5))
}

fn default_response_timeout() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(60))
}

/// `[identity]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentitySection {
    pub user_header: ConfigHeaderName,
    pub groups_header: ConfigHeaderName,
    pub auth_method_header: ConfigHeaderName,
    pub identity_header: ConfigHeaderName,
    pub forward_authorization: bool,
}

impl Default for IdentitySection {
    fn default() -> Self {
        let name = |s: &'static str| ConfigHeaderName(http::HeaderName::from_static(s));
        IdentitySection {
            user_header: name("x-forwarded-user"),
            groups_header: name("x-forwarded-groups"),
            auth_method_header: name("x-forwarded-auth-method"),
            identity_header: name("x-forwarded-identity"),
            forward_authorization: false,
        }
    }
}

/// `[session]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionSection {
    pub cookie_name: String,
    pub idle_timeout: HumanDuration,
    pub absolute_timeout: HumanDuration,
    pub store: SessionStoreKind,
    pub redis_url: Option<String>,
    pub cookie_secure: bool,
    pub cookie_domain: String,
    pub ended_memory: HumanDuration,
    pub max_per_user: u32,
}

impl Default for SessionSection {
    fn default() -> Self {
        SessionSection {
            cookie_name: "portcullis_session".to_string(),
            idle_timeout: HumanDuration(std::time::Duration::from_secs(30 * 60)),
            absolute_timeout: HumanDuration(std::time::Duration::from_secs(12 * 3600)),
            store: SessionStoreKind::Memory,
            redis_url: None,
            cookie_secure: true,
            cookie_domain: String::new(),
            ended_memory: HumanDuration(std::time::Duration::from_secs(3600)),
            max_per_user: 32,
        }
    }
}

/// Where sessions live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionStoreKind {
    /// In this process only.
    Memory,
    /// Shared between instances through Redis.
    Redis,
}

/// `[login]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoginSection {
    pub enabled: bool,
    pub after_logout: String,
}

impl Default for LoginSection {
    fn default() -> Self {
        LoginSection {
            enabled: true,
            after_logout: "/".to_string(),
        }
    }
}

/// `[pages]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PagesSection {
    pub title: String,
    pub dir: String,
}

impl Default for PagesSection {
    fn default() -> Self {
        PagesSection {
            title: "portcullis".to_string(),
            dir: String::new(),
        }
    }
}

/// `[rate_limit]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitSection {
    pub max_failures: u32,
    pub window: HumanDuration,
    pub lockout: HumanDuration,
    pub known_device_days: u32,
}

impl Default for RateLimitSection {
    fn default() -> Self {
        RateLimitSection {
            max_failures: 10,
            window: HumanDuration(std::time::Duration::from_secs(5 * 60)),
            lockout: HumanDuration(std::time::Duration::from_secs(15 * 60)),
            known_device_days: 30,
        }
    }
}

/// `[[users]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserEntry {
    pub name: Spanned<String>,
    pub password_hash: PasswordHash,
    #[serde(default)]
    pub groups: Vec<String>,
}

/// `[users_file]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsersFileSection {
    pub path: Spanned<String>,
}

/// `[[tokens]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    pub name: Spanned<String>,
    pub token_sha256: Spanned<Sha256Hex>,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
    pub expires: Option<Rfc3339>,
}

/// `[jwt]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtSection {
    pub issuer: Option<Spanned<String>>,
    pub audience: Option<Spanned<String>>,
    pub algorithms: Option<Spanned<Vec<Spanned<String>>>>,
    pub jwks_file: Option<Spanned<String>>,
    pub jwks_url: Option<Spanned<String>>,
    pub hmac_secret_file: Option<Spanned<String>>,
    pub jwks_refresh: Option<Spanned<HumanDuration>>,
    pub leeway: Option<Spanned<HumanDuration>>,
    pub user_claim: Option<Spanned<String>>,
    pub groups_claim: Option<Spanned<String>>,
    pub scope_claim: Option<Spanned<String>>,
    pub token_types: Option<Spanned<Vec<Spanned<String>>>>,
}

/// `[[route]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteEntry {
    pub path: Spanned<RoutePath>,
    pub methods: Option<Vec<ConfigMethod>>,
    pub auth: Spanned<Vec<Scheme>>,
    pub realm: Option<String>,
    #[serde(default)]
    pub allow_users: Vec<Spanned<String>>,
    #[serde(default)]
    pub allow_groups: Vec<String>,
    pub scopes: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    pub case_insensitive: bool,
}
