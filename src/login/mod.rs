//! The proxy's own endpoints under `/.portcullis/`: the login form, logout and whoami.
//! They are answered here and never forwarded.

mod page;

use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, HOST, LOCATION, ORIGIN, SET_COOKIE};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;

use crate::auth::device::{self, KnownDevices};
use crate::auth::AuthContext;
use crate::auth::Scheme;
use crate::body::Body;
use crate::config::Config;
use crate::error::{Denial, DenyReason, Refusal};
use crate::session::Sessions;

pub use page::{EndedNotice, LoginPage};

/// The login form.
pub const LOGIN_PATH: &str = "/.portcullis/login";
/// Ends the session.
pub const LOGOUT_PATH: &str = "/.portcullis/logout";
/// The caller's identity as JSON.
pub const WHOAMI_PATH: &str = "/.portcullis/whoami";

/// Largest login form body accepted.
const MAX_FORM_BYTES: usize = 16 * 1024;

/// What an endpoint did, for the access log.
pub struct Outcome {
    /// The response to send.
    pub response: Response<Body>,
    /// Why the request was refused, when it was.
    pub refusal: Option<Refusal>,
    /// Who signed in (or out), when known.
    pub user: Option<String>,
}

impl Outcome {
    fn ok(response: Response<Body>, user: Option<String>) -> Self {
        Outcome {
            response,
            refusal: None,
            user,
        }
    }
}

/// One of the proxy's own endpoints under `/.portcullis/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `GET`/`HEAD /.portcullis/login`: the form.
    LoginForm,
    /// `POST /.portcullis/login`: the credentials.
    Login,
    /// `POST /.portcullis/logout`.
    Logout,
    /// `GET`/`HEAD /.portcullis/whoami`.
    Whoami,
}

impl Endpoint {
    /// Its path.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::LoginForm | Endpoint::Login => LOGIN_PATH,
            Endpoint::Logout => LOGOUT_PATH,
            Endpoint::Whoami => WHOAMI_PATH,
        }
    }
}

/// Everything the endpoints need.
pub struct Endpoints<'a> {
    /// The current config.
    pub config: &'a Config,
    /// The session manager.
    pub sessions: &'a Sessions,
    /// Password checks, with the same brute-force limits as Basic.
    pub auth: AuthContext<'a>,
    /// This request's id, shown on the pages.
    pub request_id: &'a str,
}

impl Endpoints<'_> {
    /// Serves one of the endpoints (`policy::decide` chose it from the path and method).
    pub async fn serve(
        &self,
        endpoint: Endpoint,
        request: Request<Incoming>,
    ) -> Result<Outcome, Refusal> {
        match endpoint {
            Endpoint::LoginForm => Ok(self.form(&request)),
            Endpoint::Login => self.login(request).await,
            Endpoint::Logout => self.logout(request).await,
            Endpoint::Whoami => self.whoami(&request).await,
        }
    }

    fn form(&self, request: &Request<Incoming>) -> Outcome {
        let query = request.uri().query().unwrap_or("");
        let mut next = "/".to_string();
        let mut ended = None;
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            match key.as_ref() {
                "next" => next = safe_next(&value).to_string(),
                "ended" => ended = EndedNotice::from_query(&value),
                _ => {}
            }
        }
        let page = LoginPage {
            next: &next,
            error: None,
            ended,
            idle: self.sessions.idle_timeout(),
            absolute: self.sessions.absolute_timeout(),
            request_id: self.request_id,
        };
        let body = page.render(&self.config.pages, StatusCode::OK.as_u16());
        Outcome::ok(html(StatusCode::OK, body), None)
    }

    async fn login(&self, request: Request<Incoming>) -> Result<Outcome, Refusal> {
        if let Err(why) = same_origin(request.headers()) {
            return Err(Denial::of(Scheme::Session, DenyReason::MalformedCredentials, why).into());
        }
        // Read before the body takes the request.
        let vouched = self.auth.known_devices(request.headers());
        let form = read_form(request).await?;
        let next = safe_next(&form.next).to_string();
        let user = self
            .auth
            .check_password(&form.username, &form.password, &vouched)
            .await;
        let user = match user {
            Ok(user) => user,
            // A lockout is answered as such (429 with Retry-After), not as a wrong password.
            Err(Refusal::Deny(denial)) if denial.reason != DenyReason::RateLimited => {
                let page = LoginPage {
                    next: &next,
                    error: Some(crate::pages::CREDENTIALS_REFUSED),
                    ended: None,
                    idle: self.sessions.idle_timeout(),
                    absolute: self.sessions.absolute_timeout(),
                    request_id: self.request_id,
                };
                let status = StatusCode::UNAUTHORIZED;
                let response = html(status, page.render(&self.config.pages, status.as_u16()));
                return Ok(Outcome {
                    response,
                    refusal: Some(Refusal::Deny(Denial {
                        scheme: Some(Scheme::Session),
                        ..denial
                    })),
                    // Only a configured name is logged: an unknown "user name" may well be a
                    // password typed into the wrong field.
                    user: self
                        .auth
                        .config
                        .users
                        .contains(&form.username)
                        .then_some(form.username),
                });
            }
            Err(failure) => return Err(failure),
        };
        // Always a fresh id: a session id the browser already had is never adopted.
        let id = self.sessions.create(&user).await?;
        let mut response = redirect(StatusCode::SEE_OTHER, &next);
        response
            .headers_mut()
            .append(SET_COOKIE, self.sessions.set_cookie(&id));
        if let Some(devices) = KnownDevices::new(self.config) {
            let cookie = devices.set_cookie(&vouched, &user.name, device::now_secs());
            response.headers_mut().append(SET_COOKIE, cookie);
        }
        Ok(Outcome::ok(response, Some(user.name.clone())))
    }

    async fn logout(&self, request: Request<Incoming>) -> Result<Outcome, Refusal> {
        if let Err(why) = same_origin(request.headers()) {
            return Err(Denial::of(Scheme::Session, DenyReason::MalformedCredentials, why).into());
        }
        let mut user = None;
        if let Ok((_, active)) = self.sessions.find(request.headers(), self.config).await {
            user = Some(active.record.user);
        }
        // Every session cookie the browser sent ends: signing out must leave none behind.
        for id in self.sessions.cookie_ids(request.headers()) {
            self.sessions.delete(id).await?;
        }
        let mut response = redirect(
            StatusCode::SEE_OTHER,
            safe_next(&self.config.login.after_logout),
        );
        response
            .headers_mut()
            .append(SET_COOKIE, self.sessions.clear_cookie());
        Ok(Outcome::ok(response, user))
    }

    async fn whoami(&self, request: &Request<Incoming>) -> Result<Outcome, Refusal> {
        if !self.sessions.has_cookie(request.headers()) {
            return Err(Denial::of(
                Scheme::Session,
                DenyReason::MissingCredentials,
                "no session cookie",
            )
            .into());
        }
        let (_, active) = self.sessions.find(request.headers(), self.config).await?;
        let user = self.config.users.get(&active.record.user).ok_or_else(|| {
            Denial::of(
                Scheme::Session,
                DenyReason::SessionUnknown,
                "the session's user is no longer configured",
            )
        })?;
        let body = serde_json::json!({
            "user": user.name,
            "groups": user.groups,
            "auth_method": "session",
            "idle_expires": rfc3339(active.idle_expires_ms),
            "absolute_expires": rfc3339(active.absolute_expires_ms),
        });
        let mut response = Response::new(Body::Right(Full::new(Bytes::from(format!("{body}\n")))));
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        response
            .headers_mut()
            .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        Ok(Outcome::ok(response, Some(user.name.clone())))
    }
}

struct LoginForm {
    username: String,
    password: String,
    next: String,
}

async fn read_form(request: Request<Incoming>) -> Result<LoginForm, Refusal> {
    let malformed = |why: &'static str| {
        Refusal::from(Denial::of(
            Scheme::Session,
            DenyReason::MalformedCredentials,
            why,
        ))
    };
    let body = Limited::new(request.into_body(), MAX_FORM_BYTES)
        .collect()
        .await
        .map_err(|_| malformed("login form body is too large or was cut off"))?
        .to_bytes();
    let mut form = LoginForm {
        username: String::new(),
        password: String::new(),
        next: "/".to_string(),
    };
    for (key, value) in form_urlencoded::parse(&body) {
        match key.as_ref() {
            "username" => form.username = value.into_owned(),
            "password" => form.password = value.into_owned(),
            "next" => form.next = value.into_owned(),
            _ => {}
        }
    }
    if form.username.is_empty() || form.password.is_empty() {
        return Err(malformed("login form without a user name or password"));
    }
    Ok(form)
}

/// CSRF defence for the form POSTs: the browser must say the request comes from our own
/// origin, through `Sec-Fetch-Site` or, failing that, `Origin` matching `Host`. A POST that
/// says neither is refused (every browser that can run the form sends one of them).
pub fn same_origin(headers: &HeaderMap) -> Result<(), &'static str> {
    if let Some(site) = headers.get("sec-fetch-site") {
        return if site == "same-origin" {
            Ok(())
        } else {
            Err("cross-site form POST refused (Sec-Fetch-Site is not same-origin)")
        };
    }
    let origin = headers.get(ORIGIN).and_then(|v| v.to_str().ok());
    let host = headers.get(HOST).and_then(|v| v.to_str().ok());
    match (origin, host) {
        (Some(origin), Some(host)) => {
            let origin_host = origin
                .strip_prefix("https://")
                .or_else(|| origin.strip_prefix("http://"))
                .unwrap_or("");
            if origin_host.eq_ignore_ascii_case(host) {
                Ok(())
            } else {
                Err("cross-origin form POST refused (Origin does not match Host)")
            }
        }
        _ => Err("form POST without Origin or Sec-Fetch-Site refused"),
    }
}

/// `next` is honoured only as a same-origin relative path: `/x`, never `//host`, `/\host`,
/// a scheme, or anything with control characters. Otherwise `/`. The path part is also
/// checked once percent-decoded (`/%0d%0a…`, `/%2F/host`, `/%5Chost`), so that an upstream
/// that decodes before redirecting cannot be turned into an open redirect or a header
/// injection either.
pub fn safe_next(next: &str) -> &str {
    let bytes = next.as_bytes();
    let path = next.split(['?', '#']).next().unwrap_or("");
    let decoded = percent_decode(path.as_bytes());
    let relative = bytes.first() == Some(&b'/')
        && !matches!(bytes.get(1), Some(b'/') | Some(b'\\'))
        && !next.contains('\\')
        && !next.bytes().any(|b| b.is_ascii_control() || b == b' ')
        && !matches!(decoded.get(1), Some(b'/') | Some(b'\\'))
        && !decoded.iter().any(|b| b.is_ascii_control() || *b == b'\\')
        && next.len() <= 2048;
    if relative {
        next
    } else {
        "/"
    }
}

/// `%XX` decoded once; other bytes (and malformed escapes) as they are.
fn percent_decode(input: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        let escaped = match (input[i], input.get(i + 1), input.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) => hex(h).zip(hex(l)).map(|(h, l)| h << 4 | l),
            _ => None,
        };
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(input[i]);
                i += 1;
            }
        }
    }
    out
}

/// A `303`/`302` to a same-origin path.
pub fn redirect(status: StatusCode, location: &str) -> Response<Body> {
    let mut response = Response::new(Body::Right(Full::new(Bytes::new())));
    *response.status_mut() = status;
    let location =
        HeaderValue::from_str(location).unwrap_or_else(|_| HeaderValue::from_static("/"));
    response.headers_mut().insert(LOCATION, location);
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The login page URL for a refused navigation to `next`.
pub fn login_url(next: &str, ended: Option<EndedNotice>) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    query.append_pair("next", next);
    if let Some(ended) = ended {
        query.append_pair("ended", ended.as_query());
    }
    format!("{LOGIN_PATH}?{}", query.finish())
}

fn html(status: StatusCode, body: String) -> Response<Body> {
    let mut response = Response::new(Body::Right(Full::new(Bytes::from(body))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Unix milliseconds as an RFC 3339 UTC timestamp.
fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_is_only_a_relative_path() {
        for ok in [
            "/",
            "/x",
            "/a/b?c=d",
            "/caf%C3%A9",
            "/a%2Fb",
            "/s?q=%0A%5C",
            "/%zz",
        ] {
            assert_eq!(safe_next(ok), ok);
        }
        for bad in [
            "",
            "//evil.com",
            "/\\evil.com",
            "https://evil.com",
            "http:/x",
            "javascript:alert(1)",
            "/a\\b",
            "x",
            "/\t/evil",
            " /x",
            "/%0d%0aSet-Cookie:x",
            "/%2F/evil.com",
            "/%2fevil.com",
            "/%5Cevil.com",
            "/a%5cb",
            "/x%00",
        ] {
            assert_eq!(safe_next(bad), "/", "{bad:?}");
        }
    }

    #[test]
    fn origin_checks() {
        let mut h = HeaderMap::new();
        assert!(same_origin(&h).is_err());
        h.insert(HOST, HeaderValue::from_static("example.com:8080"));
        h.insert(ORIGIN, HeaderValue::from_static("http://example.com:8080"));
        assert!(same_origin(&h).is_ok());
        h.insert(ORIGIN, HeaderValue::from_static("http://evil.com"));
        assert!(same_origin(&h).is_err());
        h.insert("sec-fetch-site", HeaderValue::from_static("same-origin"));
        assert!(same_origin(&h).is_ok());
        h.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(same_origin(&h).is_err());
    }

    #[test]
    fn timestamps_format() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_798_761_600_000), "2027-01-01T00:00:00Z");
    }

    #[test]
    fn login_url_encodes_next() {
        assert_eq!(
            login_url("/a b?x=1&y", None),
            "/.portcullis/login?next=%2Fa+b%3Fx%3D1%26y"
        );
        assert_eq!(
            login_url("/", Some(EndedNotice::Idle)),
            "/.portcullis/login?next=%2F&ended=idle"
        );
    }
}
