//! From the file as written to a validated `Config`: cross-field checks, each error naming the
//! key it came from.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::error::ConfigError;
use super::file::FileConfig;
use super::{Config, IdentityConfig, ServerConfig, StaticToken, UpstreamConfig, User, UserDb};
use crate::auth::password::{parse_htpasswd, validate_user_name};
use crate::auth::Scheme;
use crate::pages::Pages;
use crate::policy::RouteTable;

// Here rather than beside `Config`: loading builds the pages, the route table, the JWT
// verifier and the challenges, and the files that only read a `Config` should not depend on
// all of that.
impl Config {
    /// Reads and validates a config file. Errors name the file, line, column, key and what
    /// was expected.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::io(path, &e))?;
        Config::from_toml(path, &text)
    }

    /// Validates config text as if read from `path` (relative paths inside resolve against
    /// `path`'s directory).
    pub fn from_toml(path: &Path, text: &str) -> Result<Config, ConfigError> {
        build(path, text)
    }
}

/// hyper's smallest read buffer; a smaller header limit could not be enforced exactly.
const MIN_HEADER_BYTES: usize = 8192;
const MAX_HEADER_BYTES: usize = 1 << 20;

/// Carries the file name and text so each check can point at a span.
pub(super) struct Ctx<'a> {
    pub(super) path: &'a Path,
    pub(super) text: &'a str,
}

impl Ctx<'_> {
    pub(super) fn err(
        &self,
        span: Option<std::ops::Range<usize>>,
        key: &str,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError::at(self.path, self.text, span, key, message.into())
    }

    /// Resolves a path from the config against the config file's directory.
    pub(super) fn resolve(&self, file: &str) -> PathBuf {
        let candidate = Path::new(file);
        if candidate.is_absolute() {
            return candidate.to_path_buf();
        }
        self.path
            .parent()
            .map_or_else(|| candidate.to_path_buf(), |dir| dir.join(candidate))
    }
}

fn build(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let ctx = Ctx { path, text };
    let file = parse(&ctx)?;
    let mut warnings = Vec::new();
    let server = server(&ctx, &file)?;
    let users = users(&ctx, &file)?;
    let tokens = tokens(&ctx, &file)?;
    let routes = super::routes::routes(&ctx, &file, &users, &tokens)?;
    session(&ctx, &file)?;
    rate_limit(&ctx, &file, &mut warnings)?;
    let upstream_tls = upstream_tls(&ctx, &file)?;
    if !file.routes.iter().any(|r| r.path.get_ref().as_str() == "/") {
        warnings.push(
            "no route for \"/\": requests outside the listed routes get 403 (no_route)".to_string(),
        );
    }
    let jwt = jwt(&ctx, &file, &mut warnings)?;
    let pages = pages(&ctx, &file)?;
    let uses_sessions = routes.iter().any(|r| r.accepts(Scheme::Session));
    if uses_sessions && !file.login.enabled {
        warnings.push("routes accept `session` but [login] enabled = false: sessions can then only start from a browser's Basic login".to_string());
    }
    Ok(Config {
        source: path.to_path_buf(),
        server,
        upstream: UpstreamConfig {
            url: file.upstream.url,
            connect_timeout: file.upstream.connect_timeout.0,
            response_timeout: file.upstream.response_timeout.0,
            preserve_host: file.upstream.preserve_host,
            tls: upstream_tls,
        },
        identity: IdentityConfig {
            user_header: file.identity.user_header.0,
            groups_header: file.identity.groups_header.0,
            auth_method_header: file.identity.auth_method_header.0,
            identity_header: file.identity.identity_header.0,
            forward_authorization: file.identity.forward_authorization,
        },
        session: file.session,
        login: file.login,
        pages,
        rate_limit: file.rate_limit,
        users,
        tokens,
        jwt,
        routes: RouteTable::new(routes),
        warnings,
        loaded_ms: crate::session::now_ms(),
    })
}

/// `[pages]`: the built-in pages, or those in `dir` (relative to the config file) replacing
/// them, each template checked now so a broken one fails `check` and a reload.
fn pages(ctx: &Ctx<'_>, file: &FileConfig) -> Result<Arc<Pages>, ConfigError> {
    let title = &file.pages.title;
    let dir = file.pages.dir.trim();
    if dir.is_empty() {
        return Ok(Arc::new(Pages::built_in(title)));
    }
    let resolved = ctx.resolve(dir);
    Pages::load(title, &resolved)
        .map(Arc::new)
        .map_err(|e| ConfigError {
            position: e.line.map(|line| (line, 1)),
            key: Some("pages.dir".to_string()),
            message: format!(
                "{} (a page template from `pages.dir` in {})",
                e.message,
                ctx.path.display()
            ),
            file: e.file,
        })
}

/// `[jwt]`: validated and its keys loaded by `config::jwt`, with errors pointing into this file.
fn jwt(
    ctx: &Ctx<'_>,
    file: &FileConfig,
    warnings: &mut Vec<String>,
) -> Result<Option<Arc<crate::auth::jwt::JwtVerifier>>, ConfigError> {
    let Some(section) = &file.jwt else {
        return Ok(None);
    };
    let load = super::jwt::LoadContext {
        resolve: &|file| ctx.resolve(file),
        error: &|span, key, message| ctx.err(span, key, message),
    };
    let (verifier, notes) = super::jwt::from_section(section.get_ref(), section.span(), &load)?;
    warnings.extend(notes);
    Ok(Some(Arc::new(verifier)))
}

/// Deserialises the file; serde errors keep the TOML span and gain the key path.
fn parse(ctx: &Ctx<'_>) -> Result<FileConfig, ConfigError> {
    let deserializer = toml::Deserializer::new(ctx.text);
    serde_path_to_error::deserialize::<_, FileConfig>(deserializer).map_err(|err| {
        // `Spanned` values add a private segment to the path; it means nothing to a reader.
        let key = err
            .path()
            .to_string()
            .replace(".$__serde_spanned_private_value", "");
        let key = if key == "." { String::new() } else { key };
        let inner = err.into_inner();
        ctx.err(inner.span(), &key, inner.message().trim().to_string())
    })
}

fn server(ctx: &Ctx<'_>, file: &FileConfig) -> Result<ServerConfig, ConfigError> {
    let s = &file.server;
    if s.listen.get_ref().is_empty() {
        return Err(ctx.err(
            Some(s.listen.span()),
            "server.listen",
            "expected at least one address",
        ));
    }
    let header_bytes = *s.max_header_bytes.get_ref();
    if !(MIN_HEADER_BYTES..=MAX_HEADER_BYTES).contains(&header_bytes) {
        return Err(ctx.err(
            Some(s.max_header_bytes.span()),
            "server.max_header_bytes",
            format!("expected a number of bytes from {MIN_HEADER_BYTES} to {MAX_HEADER_BYTES}"),
        ));
    }
    if *s.max_connections.get_ref() == 0 {
        return Err(ctx.err(
            Some(s.max_connections.span()),
            "server.max_connections",
            "expected at least 1",
        ));
    }
    if s.body_read_timeout.0.is_zero() {
        return Err(ctx.err(None, "server.body_read_timeout", "expected a duration > 0"));
    }
    if s.tunnel_idle_timeout.0.is_zero() {
        return Err(ctx.err(
            None,
            "server.tunnel_idle_timeout",
            "expected a duration > 0",
        ));
    }
    let tls = match &s.tls {
        Some(tls) => {
            let cert = ctx.resolve(tls.cert_file.get_ref());
            let key = ctx.resolve(tls.key_file.get_ref());
            let built = crate::tls::server_config(&cert, &key)
                .map_err(|m| ctx.err(Some(tls.cert_file.span()), "server.tls.cert_file", m))?;
            Some(built)
        }
        None => None,
    };
    let secret = match s.secret_file.get_ref().trim() {
        "" => super::secret::SecretKey::per_process(),
        file => super::secret::SecretKey::from_file(&ctx.resolve(file))
            .map_err(|m| ctx.err(Some(s.secret_file.span()), "server.secret_file", m))?,
    };
    Ok(ServerConfig {
        tls,
        secret,
        listen: s.listen.get_ref().iter().map(|a| a.0).collect(),
        admin_listen: s.admin_listen.map(|a| a.0),
        trusted_proxies: s.trusted_proxies.clone(),
        header_read_timeout: s.header_read_timeout.0,
        idle_timeout: s.idle_timeout.0,
        max_header_bytes: header_bytes,
        max_connections: *s.max_connections.get_ref(),
        workers: s.workers,
        shutdown_grace: s.shutdown_grace.0,
        tunnel_idle_timeout: s.tunnel_idle_timeout.0,
        body_read_timeout: s.body_read_timeout.0,
    })
}

/// The certificate verification for an `https://` upstream: `ca_file` when set, else the
/// system's roots.
fn upstream_tls(
    ctx: &Ctx<'_>,
    file: &FileConfig,
) -> Result<Option<Arc<rustls::ClientConfig>>, ConfigError> {
    let upstream = &file.upstream;
    if upstream.url.scheme != http::uri::Scheme::HTTPS {
        if let Some(ca) = &upstream.ca_file {
            return Err(ctx.err(
                Some(ca.span()),
                "upstream.ca_file",
                "ca_file only applies to an https:// upstream",
            ));
        }
        return Ok(None);
    }
    let ca_file = upstream
        .ca_file
        .as_ref()
        .map(|ca| (ctx.resolve(ca.get_ref()), ca.span()));
    crate::tls::client_config(ca_file.as_ref().map(|(path, _)| path.as_path()))
        .map(Some)
        .map_err(|m| ctx.err(ca_file.map(|(_, span)| span), "upstream.ca_file", m))
}

/// Longest `known_device_days`: browsers keep no cookie longer than 400 days (RFC 6265bis
/// §5.5), so a longer one would only be a promise the browser breaks.
const MAX_KNOWN_DEVICE_DAYS: u32 = 400;

/// `[rate_limit]` as far as it is not checked while read: known devices.
fn rate_limit(
    ctx: &Ctx<'_>,
    file: &FileConfig,
    warnings: &mut Vec<String>,
) -> Result<(), ConfigError> {
    let days = file.rate_limit.known_device_days;
    if days > MAX_KNOWN_DEVICE_DAYS {
        return Err(ctx.err(
            None,
            "rate_limit.known_device_days",
            format!(
                "expected at most {MAX_KNOWN_DEVICE_DAYS} days (browsers keep no cookie longer), \
                 or 0 to turn known devices off"
            ),
        ));
    }
    let random_key = file.server.secret_file.get_ref().trim().is_empty();
    if days > 0 && random_key && file.session.store == super::file::SessionStoreKind::Redis {
        warnings.push(
            "server.secret_file is not set: known-device cookies are signed with a random key of \
             this process, so other instances sharing this Redis do not recognise them and all \
             are forgotten on restart; give every instance the same secret_file"
                .to_string(),
        );
    }
    Ok(())
}

/// `[session]` and `[login]`: cookie attributes, timeouts, store and redirects.
fn session(ctx: &Ctx<'_>, file: &FileConfig) -> Result<(), ConfigError> {
    let s = &file.session;
    let token_char = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if s.cookie_name.is_empty() || !s.cookie_name.chars().all(token_char) {
        return Err(ctx.err(
            None,
            "session.cookie_name",
            "expected a cookie name made of letters, digits and -_.",
        ));
    }
    if s.idle_timeout.0.is_zero() || s.absolute_timeout.0 < s.idle_timeout.0 {
        return Err(ctx.err(
            None,
            "session.absolute_timeout",
            format!(
                "expected a non-zero idle_timeout ({}) no longer than absolute_timeout ({})",
                s.idle_timeout, s.absolute_timeout
            ),
        ));
    }
    if s.max_per_user == 0 {
        return Err(ctx.err(
            None,
            "session.max_per_user",
            "expected at least 1 live session per user",
        ));
    }
    let domain_ok = s
        .cookie_domain
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
    if !domain_ok {
        return Err(ctx.err(
            None,
            "session.cookie_domain",
            "expected a domain name such as \"example.com\"",
        ));
    }
    if let Some(url) = &s.redis_url {
        if let Err(err) = redis::Client::open(url.as_str()) {
            return Err(ctx.err(
                None,
                "session.redis_url",
                format!("expected a redis:// URL: {err}"),
            ));
        }
    } else if s.store == super::file::SessionStoreKind::Redis {
        return Err(ctx.err(
            None,
            "session.redis_url",
            "session.store = \"redis\" needs a redis_url",
        ));
    }
    if crate::login::safe_next(&file.login.after_logout) != file.login.after_logout {
        return Err(ctx.err(
            None,
            "login.after_logout",
            "expected a same-site path starting with '/', such as \"/\"",
        ));
    }
    Ok(())
}

fn users(ctx: &Ctx<'_>, file: &FileConfig) -> Result<UserDb, ConfigError> {
    let mut by_name: HashMap<String, Arc<User>> = HashMap::new();
    for (i, entry) in file.users.iter().enumerate() {
        let key = format!("users[{i}].name");
        let name = entry.name.get_ref();
        validate_user_name(name).map_err(|m| ctx.err(Some(entry.name.span()), &key, m))?;
        if by_name.contains_key(name) {
            return Err(ctx.err(
                Some(entry.name.span()),
                &key,
                format!("user {name:?} is defined twice"),
            ));
        }
        let user = User {
            name: name.clone(),
            hash: entry.password_hash.clone(),
            groups: entry.groups.clone(),
        };
        by_name.insert(name.clone(), Arc::new(user));
    }
    if let Some(section) = &file.users_file {
        let htpasswd = ctx.resolve(section.path.get_ref());
        let span = Some(section.path.span());
        let text = std::fs::read_to_string(&htpasswd).map_err(|e| {
            ctx.err(
                span.clone(),
                "users_file.path",
                format!("cannot read {}: {e}", htpasswd.display()),
            )
        })?;
        let entries = parse_htpasswd(&text).map_err(|e| {
            ctx.err(
                span.clone(),
                "users_file.path",
                format!("{}: {e}", htpasswd.display()),
            )
        })?;
        for entry in entries {
            if by_name.contains_key(&entry.name) {
                return Err(ctx.err(
                    span.clone(),
                    "users_file.path",
                    format!(
                        "{}: line {}: user {:?} is also defined in [[users]]",
                        htpasswd.display(),
                        entry.line,
                        entry.name
                    ),
                ));
            }
            let user = User {
                name: entry.name.clone(),
                hash: entry.hash,
                groups: Vec::new(),
            };
            by_name.insert(entry.name, Arc::new(user));
        }
    }
    Ok(UserDb::new(by_name))
}

fn tokens(ctx: &Ctx<'_>, file: &FileConfig) -> Result<Vec<Arc<StaticToken>>, ConfigError> {
    let mut out: Vec<Arc<StaticToken>> = Vec::new();
    for (i, entry) in file.tokens.iter().enumerate() {
        let name = entry.name.get_ref();
        let key = format!("tokens[{i}].name");
        validate_user_name(name).map_err(|m| ctx.err(Some(entry.name.span()), &key, m))?;
        if out.iter().any(|t| &t.name == name) {
            return Err(ctx.err(
                Some(entry.name.span()),
                &key,
                format!("token {name:?} is defined twice"),
            ));
        }
        let digest = entry.token_sha256.get_ref().0;
        if out.iter().any(|t| t.digest == digest) {
            return Err(ctx.err(
                Some(entry.token_sha256.span()),
                &format!("tokens[{i}].token_sha256"),
                "the same token_sha256 is used by another token",
            ));
        }
        out.push(Arc::new(StaticToken {
            name: name.clone(),
            digest,
            groups: entry.groups.clone(),
            scopes: entry.scopes.clone(),
            expires: entry.expires.map(|e| e.0),
        }));
    }
    Ok(out)
}
