//! Signing in through the login form and reading the session cookie back: shared by every
//! test that needs a browser session.

use super::*;

/// The default session cookie name.
pub const SESSION_COOKIE: &str = "portcullis_session";

/// Routes of the session tests:
/// - `/` accepts a session or Basic (realm "Main"),
/// - `/app` accepts only a session (realm "App"),
/// - `/basic` accepts only Basic (realm "Basic only"),
/// - `/public` is public.
pub const SESSION_ROUTES: &str = r#"
[[route]]
path = "/"
auth = ["session", "basic"]
realm = "Main"

[[route]]
path = "/app"
auth = ["session"]
realm = "App"

[[route]]
path = "/basic"
auth = ["basic"]
realm = "Basic only"

[[route]]
path = "/public"
auth = []
"#;

/// `http://<proxy addr>`: the Origin a same-origin form POST carries.
pub fn origin(proxy: &Proxy) -> String {
    format!("http://{}", proxy.addr)
}

/// A urlencoded form body.
pub fn form(pairs: &[(&str, &str)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

/// POSTs the login form as a browser would (same-origin `Origin`, `Accept: text/html`), plus
/// `extra` headers.
pub async fn login_with(
    proxy: &Proxy,
    user: &str,
    password: &str,
    next: &str,
    extra: &[(&str, &str)],
) -> Resp {
    let origin = origin(proxy);
    let mut headers: Vec<(&str, &str)> = vec![
        ("origin", origin.as_str()),
        ("content-type", "application/x-www-form-urlencoded"),
        ("accept", "text/html"),
    ];
    headers.extend_from_slice(extra);
    let body = form(&[("username", user), ("password", password), ("next", next)]);
    proxy
        .send("POST", "/.portcullis/login", &headers, body)
        .await
}

/// Logs alice in and returns the new session id.
pub async fn login(proxy: &Proxy) -> String {
    let response = login_with(proxy, "alice", ALICE_PW, "/", &[]).await;
    assert_eq!(response.status, 303, "login: {}", response.text());
    session_id(&response)
}

/// Signs `user` in and returns the `Cookie` value that carries the session.
pub async fn sign_in(proxy: &Proxy, user: &str, password: &str) -> String {
    let response = login_with(proxy, user, password, "/", &[]).await;
    assert_eq!(response.status, 303, "login: {}", response.text());
    cookie(&session_id(&response))
}

/// The `Set-Cookie` for the session cookie (panics if absent or repeated).
pub fn set_cookie(response: &Resp) -> String {
    let ours: Vec<String> = response
        .header_all("set-cookie")
        .into_iter()
        .filter(|c| c.starts_with(&format!("{SESSION_COOKIE}=")))
        .collect();
    assert_eq!(
        ours.len(),
        1,
        "exactly one Set-Cookie for {SESSION_COOKIE}: {response:?}"
    );
    ours.into_iter().next().unwrap()
}

/// Whether the response sets the session cookie at all.
pub fn sets_cookie(response: &Resp) -> bool {
    response
        .header_all("set-cookie")
        .iter()
        .any(|c| c.starts_with(&format!("{SESSION_COOKIE}=")))
}

/// The session id a response sets (asserting its shape: 43 URL-safe base64 characters).
pub fn session_id(response: &Resp) -> String {
    let cookie = set_cookie(response);
    let value = cookie
        .strip_prefix(&format!("{SESSION_COOKIE}="))
        .and_then(|rest| rest.split(';').next())
        .unwrap()
        .to_string();
    assert_eq!(
        value.len(),
        43,
        "256-bit id in unpadded base64url: {cookie}"
    );
    assert!(
        value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "{cookie}"
    );
    value
}

/// `portcullis_session=<id>`.
pub fn cookie(id: &str) -> String {
    format!("{SESSION_COOKIE}={id}")
}
