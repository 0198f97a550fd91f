//! Signing in through the login form and reading the session cookie back: shared by every
//! test that needs a browser session.

use super::*;

/// The default session cookie name.
pub const SESSION_COOKIE: &str = "portcullis_session";

/// The session cookie's name when `cookie_secure` (the default) and no `cookie_domain`.
pub const HOST_COOKIE: &str = "__Host-portcullis_session";

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

/// The session cookie value a response sets (asserting its shape: `<id>.<tag>`, a 256-bit id in
/// 43 unpadded base64url characters and the user's 8-hex-digit hash tag).
pub fn session_id(response: &Resp) -> String {
    let cookie = set_cookie(response);
    let value = cookie
        .strip_prefix(&format!("{SESSION_COOKIE}="))
        .and_then(|rest| rest.split(';').next())
        .unwrap()
        .to_string();
    let (id, tag) = value
        .split_once('.')
        .unwrap_or_else(|| panic!("<id>.<tag>: {cookie}"));
    assert_eq!(id.len(), 43, "256-bit id in unpadded base64url: {cookie}");
    assert!(
        id.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "{cookie}"
    );
    assert!(
        tag.len() == 8 && tag.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
        "8 hex digits of tag: {cookie}"
    );
    value
}

/// A cookie value of our shape that no session has: 43 id characters and a tag.
pub fn unknown_session_value(fill: char) -> String {
    format!("{}.00000000", fill.to_string().repeat(43))
}

/// The hash tag of `user`'s Redis keys and cookies: the first 8 hex digits of its SHA-256.
pub fn user_tag(user: &str) -> String {
    sha256_hex(user.as_bytes())[..8].to_string()
}

/// `portcullis_session=<id>`.
pub fn cookie(id: &str) -> String {
    format!("{SESSION_COOKIE}={id}")
}

/// A cookie jar that keeps and expires cookies as browsers do (RFC 6265 §5.3: `Max-Age`, a
/// non-positive one deleting the cookie at once), for one host and `Path=/`. Every "tab" of
/// the same browser shares it.
#[derive(Default)]
pub struct Jar {
    cookies: std::sync::Mutex<Vec<(String, String, Option<std::time::Instant>)>>,
}

impl Jar {
    /// Takes in every `Set-Cookie` of a response.
    pub fn store(&self, response: &Resp) {
        let now = std::time::Instant::now();
        let mut cookies = self.cookies.lock().unwrap();
        for line in response.header_all("set-cookie") {
            let mut parts = line.split(';');
            let Some((name, value)) = parts.next().and_then(|p| p.trim().split_once('=')) else {
                continue;
            };
            let mut expires = None;
            for attribute in parts {
                let (key, val) = attribute.trim().split_once('=').unwrap_or((attribute, ""));
                if key.trim().eq_ignore_ascii_case("max-age") {
                    let secs: i64 = val.trim().parse().expect("Max-Age is an integer");
                    expires = Some(if secs <= 0 {
                        now
                    } else {
                        now + Duration::from_secs(secs as u64)
                    });
                }
            }
            cookies.retain(|(n, _, _)| n != name);
            if expires.is_none_or(|at| at > now) {
                cookies.push((name.to_string(), value.to_string(), expires));
            }
        }
    }

    /// The `Cookie` header a browser would send now, if any cookie is still kept.
    pub fn header(&self) -> Option<String> {
        let now = std::time::Instant::now();
        let mut cookies = self.cookies.lock().unwrap();
        cookies.retain(|(_, _, expires)| expires.is_none_or(|at| at > now));
        let pairs: Vec<String> = cookies.iter().map(|(n, v, _)| format!("{n}={v}")).collect();
        (!pairs.is_empty()).then(|| pairs.join("; "))
    }

    /// A GET through the jar, with `extra` headers (as a browser tab would send it).
    pub async fn get(&self, proxy: &Proxy, path: &str, extra: &[(&str, &str)]) -> Resp {
        let cookie = self.header();
        let mut headers: Vec<(&str, &str)> = extra.to_vec();
        if let Some(cookie) = &cookie {
            headers.push(("cookie", cookie));
        }
        let response = proxy.get(path, &headers).await;
        self.store(&response);
        response
    }

    /// Signs `user` in through the login form and keeps the cookie.
    pub async fn sign_in(&self, proxy: &Proxy, user: &str, password: &str) {
        let response = login_with(proxy, user, password, "/", &[]).await;
        assert_eq!(response.status, 303, "login: {}", response.text());
        self.store(&response);
    }
}

/// `[session]` lines for the "told why it ended" scenario: idle 1 s, absolute 2 s, ended
/// sessions remembered 30 minutes, plain-HTTP cookies.
pub const ENDS_SESSION_LINES: &str = "cookie_secure = false\nidle_timeout = \"1s\"\n\
                                      absolute_timeout = \"2s\"\nended_memory = \"30m\"";

/// The `ended` value of a redirect to the login page (asserting it is one).
fn ended_of(response: &Resp) -> Option<String> {
    assert_eq!(response.status, 302, "{response:?} {}", response.text());
    let location = response.header("location").expect("Location");
    assert!(
        location.starts_with("/.portcullis/login?"),
        "to the login page: {location}"
    );
    let query = location.split_once('?').map_or("", |(_, q)| q);
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "ended")
        .map(|(_, v)| v.into_owned())
}

/// Every request after a session's end, from every tab of a browser that keeps and expires
/// cookies as browsers do, and any retry, is told the same reason, and the login page says
/// which. `proxy` runs with [`ENDS_SESSION_LINES`].
pub async fn ended_sessions_are_told_why(proxy: &Proxy) {
    let html = ("accept", "text/html");

    // The cookie lives as long as the store remembers the end: absolute + ended_memory.
    let browser = Jar::default();
    let response = login_with(proxy, "alice", ALICE_PW, "/", &[]).await;
    assert!(
        set_cookie(&response).contains("; Max-Age=1802"),
        "Max-Age = absolute_timeout (2 s) + ended_memory (30 min): {}",
        set_cookie(&response)
    );
    browser.store(&response);
    assert_eq!(browser.get(proxy, "/app/a", &[html]).await.status, 200);

    // Idle end: two tabs and an API retry, all told "idle".
    tokio::time::sleep(Duration::from_millis(1300)).await;
    for tab in ["/app/tab1", "/app/tab2"] {
        let response = browser.get(proxy, tab, &[html]).await;
        assert_eq!(ended_of(&response).as_deref(), Some("idle"), "{tab}");
        assert_eq!(
            proxy.access_of(&response).await["reason"],
            "session_idle_timeout",
            "{tab}"
        );
        let page = proxy
            .get(&response.header("location").unwrap(), &[html])
            .await
            .text();
        assert!(
            page.contains("Your session ended after 1 second of inactivity."),
            "{tab}: {page}"
        );
    }
    let retry = browser
        .get(proxy, "/app/api", &[("accept", "application/json")])
        .await;
    assert_eq!(retry.status, 401, "{}", retry.text());
    assert_eq!(retry.json()["reason"], "session_idle_timeout");

    // Absolute end of a session kept active: the browser still sends the cookie after the
    // absolute deadline (a Max-Age of exactly absolute_timeout would have dropped it), and
    // every tab is told "absolute".
    let browser = Jar::default();
    browser.sign_in(proxy, "alice", ALICE_PW).await;
    let started = Instant::now();
    for at in [500, 1000, 1500] {
        tokio::time::sleep_until((started + Duration::from_millis(at)).into()).await;
        let response = browser.get(proxy, "/app/active", &[html]).await;
        assert_eq!(response.status, 200, "at {at} ms: {}", response.text());
    }
    tokio::time::sleep_until((started + Duration::from_millis(2200)).into()).await;
    for tab in ["/app/tab1", "/app/tab2", "/app/tab3"] {
        let response = browser.get(proxy, tab, &[html]).await;
        assert_eq!(ended_of(&response).as_deref(), Some("absolute"), "{tab}");
        assert_eq!(
            proxy.access_of(&response).await["reason"],
            "session_absolute_timeout",
            "{tab}"
        );
    }
    let page = proxy
        .get("/.portcullis/login?next=%2F&ended=absolute", &[html])
        .await
        .text();
    assert!(
        page.contains("Your session ended after the maximum of 2 seconds."),
        "{page}"
    );
}
