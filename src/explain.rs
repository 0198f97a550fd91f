//! `portcullis explain`: the proxy's own decision (`policy::decide`) for a request described on
//! the command line, printed for a person. Only the way a credential becomes an identity
//! differs from the proxy: explain takes the identity it is told to decide for (`--user`)
//! instead of verifying a secret. There is no second implementation of the rules here, only of
//! the wording.

use std::fmt::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};

use http::header::{HeaderName, HeaderValue, AUTHORIZATION, HOST};
use http::{HeaderMap, Method, Uri, Version};

use crate::auth::jwt::JwtIdentity;
use crate::auth::Scheme;
use crate::auth::{self, Identity, Presented, Principal};
use crate::config::{Config, Route, User};
use crate::error::{Denial, DenyReason, Refusal};
use crate::login::Endpoint;
use crate::policy::{self, Authenticate, Described, Destination, Peer, Verdict};

/// The request to explain, as given on the command line.
#[derive(Debug)]
pub struct Question<'a> {
    /// The method.
    pub method: &'a Method,
    /// The request target exactly as a client would send it (query and fragment included).
    pub target: &'a str,
    /// `Host` (default `localhost` when no `--header 'Host: …'` is given either).
    pub host: Option<&'a str>,
    /// `--header 'Name: value'`, in order.
    pub headers: &'a [(HeaderName, HeaderValue)],
    /// Decide for this caller (`--user`).
    pub user: Option<&'a str>,
    /// With these groups instead of the configured ones (`--groups`).
    pub groups: Option<Vec<String>>,
}

/// Reads `Name: value` as given to `--header`.
pub fn parse_header(text: &str) -> Result<(HeaderName, HeaderValue), String> {
    let (name, value) = text
        .split_once(':')
        .ok_or_else(|| format!("{text:?} is not `Name: value`"))?;
    let name = HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|_| format!("{:?} is not a header name", name.trim()))?;
    let value = HeaderValue::from_str(value.trim())
        .map_err(|_| format!("the value of {name} is not a header value"))?;
    Ok((name, value))
}

/// The report for the request `question` describes.
pub fn explain(config: &Config, question: Question<'_>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "request:     {} {}", question.method, question.target);
    let mut headers = HeaderMap::new();
    if question.host.is_some() || !question.headers.iter().any(|(n, _)| n == HOST) {
        let host = question.host.unwrap_or("localhost");
        match HeaderValue::from_str(host) {
            Ok(host) => headers.append(HOST, host),
            Err(_) => {
                return unparsable(out, "--host is not a header value");
            }
        };
    }
    for (name, value) in question.headers {
        headers.append(name.clone(), value.clone());
    }
    // The target as hyper reads it, and what the framing watch finds in the same head.
    let Ok(uri) = Uri::try_from(question.target) else {
        return unparsable(out, "the request target is not one the HTTP parser accepts");
    };
    let framing = crate::server::trace_framing(&raw_head(&question, &headers))
        .first()
        .and_then(|head| head.finding);
    let request = Described {
        method: question.method,
        uri: &uri,
        version: Version::HTTP_11,
        headers: &headers,
        framing,
        peer: Peer {
            client_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            trusted: false,
            unreadable_client: false,
            tls: false,
        },
    };
    let auth = DescribedCaller {
        config,
        user: question.user,
        groups: question.groups,
        cookie_name: crate::session::cookie_name(&config.session),
        needs_user: Mutex::new(None),
    };
    let decision = match tokio::runtime::Builder::new_current_thread().build() {
        Ok(runtime) => runtime.block_on(policy::decide(config, &request, &auth)),
        Err(err) => return unparsable(out, &format!("no runtime: {err}")),
    };

    if let Some(path) = &decision.path {
        let _ = writeln!(
            out,
            "normalised:  {} (matched as {})",
            path.forward(),
            path.for_matching()
        );
    }
    let route = match &decision.destination {
        None => None,
        Some(Destination::Reserved) => {
            let _ = writeln!(
                out,
                "route:       (the proxy's own /.portcullis/ endpoints)"
            );
            None
        }
        Some(Destination::Route(route)) => {
            let _ = writeln!(out, "route:       {}", route.path);
            let accepts = if route.is_public() {
                "public (no credentials)".to_string()
            } else {
                let accepted: Vec<&str> = route.schemes.iter().map(|s| s.as_str()).collect();
                accepted.join(", ")
            };
            let _ = writeln!(out, "accepts:     {accepts}");
            Some(route)
        }
    };
    let public = route.is_some_and(|r| r.is_public());
    match &decision.identity {
        Some(identity) => {
            let groups = if identity.groups().is_empty() {
                "none".to_string()
            } else {
                identity.groups().join(", ")
            };
            let _ = writeln!(
                out,
                "user:        {} (groups: {groups}) via {}",
                identity.user(),
                identity.method.as_str()
            );
            // What allow_users is matched against and the upstream receives in identity_header.
            let _ = writeln!(out, "identity:    {}", identity.qualified());
        }
        None if route.is_some() && !public && question.user.is_none() => {
            let _ = writeln!(
                out,
                "user:        (none given; pass --user NAME to decide for a caller)"
            );
        }
        None => {}
    }
    if let Some(scheme) = *auth.needs_user.lock().unwrap_or_else(|e| e.into_inner()) {
        let _ = writeln!(out, "decision:    depends on the credential");
        let _ = writeln!(
            out,
            "detail:      explain does not verify a {} credential; pass --user NAME to decide \
             for the caller it belongs to",
            scheme.as_str()
        );
        return out;
    }
    match &decision.verdict {
        Ok(Verdict::Serve(endpoint)) => {
            let _ = writeln!(
                out,
                "endpoint:    {} ({})",
                endpoint.path(),
                endpoint_name(*endpoint)
            );
            let _ = writeln!(out, "decision:    allow");
        }
        Ok(Verdict::Forward(target)) => {
            let _ = writeln!(out, "forward:     {target}");
            let _ = writeln!(out, "decision:    allow");
        }
        Err(refusal) => {
            let navigation = policy::navigation(question.method, &headers);
            let route = decision.route().map(|r| r.as_ref());
            let status = match policy::login_redirect(config, refusal, route, navigation) {
                Some(_) => "302 (to the login form: a browser navigating)".to_string(),
                None => refusal.status().as_u16().to_string(),
            };
            let _ = writeln!(out, "decision:    {}", refusal.decision());
            let _ = writeln!(out, "status:      {status}");
            let _ = writeln!(out, "reason:      {}", refusal.reason_code());
            let _ = writeln!(out, "detail:      {}", refusal.detail());
        }
    }
    out
}

/// The report for a request the HTTP parser refuses before the proxy decides anything.
fn unparsable(mut out: String, detail: &str) -> String {
    let _ = writeln!(out, "decision:    deny");
    let _ = writeln!(
        out,
        "status:      400 (by the HTTP parser, before any decision)"
    );
    let _ = writeln!(out, "detail:      {detail}");
    out
}

/// The request head as a client would send it, for the framing watch.
fn raw_head(question: &Question<'_>, headers: &HeaderMap) -> Vec<u8> {
    let mut head = format!("{} {} HTTP/1.1\r\n", question.method, question.target).into_bytes();
    for (name, value) in headers {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

fn endpoint_name(endpoint: Endpoint) -> &'static str {
    match endpoint {
        Endpoint::LoginForm => "the login form",
        Endpoint::Login => "sign in with the login form",
        Endpoint::Logout => "sign out",
        Endpoint::Whoami => "the caller's identity",
    }
}

/// The caller `--user` describes, authenticated by the scheme the described request's
/// credential (`--header`) is for, as the proxy's own [`auth::presented`] picks it; without
/// a described credential, by the first of the route's schemes that fits the caller.
struct DescribedCaller<'a> {
    config: &'a Config,
    user: Option<&'a str>,
    groups: Option<Vec<String>>,
    cookie_name: String,
    /// Set when a credential was described but no `--user` says whose it is.
    needs_user: Mutex<Option<Scheme>>,
}

impl Authenticate for DescribedCaller<'_> {
    async fn authenticate(
        &self,
        route: &Route,
        request: &Described<'_>,
    ) -> Result<Identity, Refusal> {
        let headers = request.headers;
        let cookie = crate::session::cookie_values(headers, &self.cookie_name)
            .next()
            .is_some();
        let described = cookie || headers.contains_key(AUTHORIZATION);
        let (user, scheme) = match self.user {
            Some(user) if !described => (user.to_string(), None),
            user => {
                let presented = auth::presented(route, headers, cookie)?;
                let scheme = match &presented {
                    Presented::Session => Scheme::Session,
                    Presented::Basic(_) => Scheme::Basic,
                    Presented::Bearer(_) => Scheme::Bearer,
                };
                match (user, presented) {
                    (Some(user), _) => (user.to_string(), Some(scheme)),
                    // The password is not checked: explain decides for the user it names.
                    (None, Presented::Basic(basic)) => (basic.user, Some(scheme)),
                    (None, Presented::Session | Presented::Bearer(_)) => {
                        *self.needs_user.lock().unwrap_or_else(|e| e.into_inner()) = Some(scheme);
                        return Err(Denial::new(
                            DenyReason::MissingCredentials,
                            "the credential is not verified by explain",
                        )
                        .into());
                    }
                }
            }
        };
        Ok(identity_for(
            self.config,
            route,
            &user,
            self.groups.clone(),
            scheme,
        )?)
    }
}

/// The identity a caller named `user` would have on `route`, authenticated by `scheme` when a
/// credential was described, else by the first of the route's schemes that fits them
/// (assuming their credential itself is valid). `user` may be qualified (`token:deploy-bot`,
/// `jwt:alice`); a bare name is a password user, else a token, else a JWT subject, and the
/// report's `identity` line says which it was taken for.
fn identity_for(
    config: &Config,
    route: &Route,
    user: &str,
    groups: Option<Vec<String>>,
    scheme: Option<Scheme>,
) -> Result<Identity, Denial> {
    let first = |candidates: &[Scheme]| {
        route
            .schemes
            .iter()
            .copied()
            .find(|s| candidates.contains(s) && scheme.is_none_or(|given| given == *s))
    };
    // A credential of one scheme that cannot be this caller's: what the proxy would say of
    // a credential of that scheme that belongs to no one.
    let not_theirs = |detail: String| match scheme {
        Some(Scheme::Basic) => Denial::of(Scheme::Basic, DenyReason::UnknownUser, detail),
        Some(Scheme::Bearer) => Denial::of(Scheme::Bearer, DenyReason::UnknownToken, detail),
        Some(Scheme::Session) => Denial::of(Scheme::Session, DenyReason::SessionUnknown, detail),
        None => Denial::new(DenyReason::MissingCredentials, detail),
    };
    let (source, user) = match (
        user.strip_prefix(crate::auth::TOKEN_PREFIX),
        user.strip_prefix(crate::auth::JWT_PREFIX),
    ) {
        (Some(name), _) => (Source::Token, name),
        (_, Some(subject)) => (Source::Jwt, subject),
        (None, None) => (Source::Any, user),
    };
    let record = match source {
        Source::Any => config.users.get(user),
        Source::Token | Source::Jwt => None,
    };
    if let Some(record) = record {
        let method = first(&[Scheme::Session, Scheme::Basic]).ok_or_else(|| match scheme {
            Some(_) => not_theirs(format!(
                "{user:?} signs in with a password, not with this credential"
            )),
            None => not_theirs(format!(
                "{user:?} signs in with a password, and the route accepts neither basic nor session"
            )),
        })?;
        let record = match groups {
            Some(groups) => Arc::new(User {
                name: record.name.clone(),
                hash: record.hash.clone(),
                groups,
            }),
            None => record.clone(),
        };
        return Ok(Identity {
            principal: Principal::User(record),
            method,
            session: None,
        });
    }
    if scheme == Some(Scheme::Session) {
        return Err(not_theirs(format!(
            "{user:?} is not a password user, so no session of theirs exists"
        )));
    }
    let bearer = first(&[Scheme::Bearer]);
    let token = match source {
        Source::Any | Source::Token => config.tokens.iter().find(|t| t.name == user),
        Source::Jwt => None,
    };
    if let Some(token) = token {
        let method = bearer.ok_or_else(|| {
            not_theirs(format!(
                "{user:?} is a bearer token and the route does not accept bearer"
            ))
        })?;
        return Ok(Identity {
            principal: Principal::Token(token.clone()),
            method,
            session: None,
        });
    }
    match (bearer, config.jwt.is_some(), source) {
        (_, _, Source::Token) => Err(Denial::new(
            DenyReason::UnknownToken,
            format!("{user:?} is not a configured token"),
        )),
        (Some(method), true, Source::Any | Source::Jwt) => Ok(Identity {
            principal: Principal::Jwt(Arc::new(JwtIdentity {
                user: user.to_string(),
                groups: groups.unwrap_or_default(),
                scopes: Vec::new(),
            })),
            method,
            session: None,
        }),
        _ => Err(Denial::new(
            DenyReason::UnknownUser,
            format!("{user:?} is not a configured user or token (and the route takes no JWTs)"),
        )),
    }
}

/// Where `--user` says the caller comes from.
#[derive(Clone, Copy)]
enum Source {
    /// A bare name: a password user, else a token, else a JWT subject.
    Any,
    /// `token:NAME`.
    Token,
    /// `jwt:SUBJECT`.
    Jwt,
}
