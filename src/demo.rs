//! `portcullis demo`: a small site on loopback and the proxy in front of it, with demo users,
//! built from a generated config that goes through the same validation as any other.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use crate::auth::password::PasswordHash;

/// Demo credentials: (user, password, groups).
pub const DEMO_USERS: [(&str, &str, &str); 2] = [
    ("alice", "wonderland", "admins"),
    ("bob", "builder", "staff"),
];
/// The demo's static bearer token.
pub const DEMO_TOKEN: &str = "demo-token-0123456789abcdef";

/// Starts the demo site on an ephemeral loopback port and returns its address.
pub async fn start_site() -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let service = service_fn(site_page);
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(address)
}

async fn site_page(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("(none)")
            .to_string()
    };
    let body = format!(
        "Hello from the demo site behind portcullis.\n\
         You asked for:   {} {}\n\
         Signed in as:    {}\n\
         Groups:          {}\n\
         Auth method:     {}\n",
        request.method(),
        request.uri(),
        header("x-forwarded-user"),
        header("x-forwarded-groups"),
        header("x-forwarded-auth-method"),
    );
    let mut response = Response::new(Full::new(Bytes::from(body)));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    Ok(response)
}

/// The demo configuration, as TOML, for a site at `site` and a proxy on `listen`.
pub fn config_text(site: SocketAddr, listen: SocketAddr) -> Result<String, String> {
    use sha2::Digest;
    let mut users = String::new();
    for (name, password, group) in DEMO_USERS {
        let hash = PasswordHash::hash_argon2id(password.as_bytes())?;
        users.push_str(&format!(
            "[[users]]\nname = \"{name}\"\npassword_hash = \"{hash}\"\ngroups = [\"{group}\"]\n\n"
        ));
    }
    let token_sha256 = hex::encode(sha2::Sha256::digest(DEMO_TOKEN.as_bytes()));
    Ok(format!(
        r#"[server]
listen = ["{listen}"]

[upstream]
url = "http://{site}"

{users}[[tokens]]
name = "demo-bot"
token_sha256 = "{token_sha256}"
scopes = ["read"]

[session]
# The demo is plain HTTP on loopback; never turn this off in production.
cookie_secure = false
idle_timeout = "5m"

[pages]
title = "portcullis demo"

[[route]]
path = "/public"
auth = []

[[route]]
path = "/app"
auth = ["session", "basic"]
realm = "Demo app"

[[route]]
path = "/app/admin"
auth = ["session", "basic"]
realm = "Demo app"
allow_groups = ["admins"]

[[route]]
path = "/admin"
auth = ["basic"]
realm = "Demo admin area"
allow_groups = ["admins"]

[[route]]
path = "/"
auth = ["basic", "bearer"]
realm = "Demo site"
"#
    ))
}

/// What `demo` prints before it starts serving.
pub fn banner(listen: SocketAddr) -> String {
    let base = format!("http://{listen}");
    let (alice, alice_pw, _) = DEMO_USERS[0];
    let (bob, bob_pw, _) = DEMO_USERS[1];
    format!(
        "portcullis demo: a demo site is running behind the proxy at {base}\n\n\
         users:  {alice} / {alice_pw}  (group admins: may open /admin)\n\
         \x20       {bob} / {bob_pw}     (group staff: refused on /admin)\n\
         token:  {DEMO_TOKEN}\n\n\
         try:\n\
         \x20 curl -i {base}/public/hello                      # public: no credentials needed\n\
         \x20 curl -i {base}/                                  # 401 with a Basic and a Bearer challenge\n\
         \x20 curl -i -u {alice}:{alice_pw} {base}/              # 200: the site sees X-Forwarded-User: {alice}\n\
         \x20 curl -i -u {alice}:wrong {base}/                 # 401 (logged as bad_password)\n\
         \x20 curl -i -u {bob}:{bob_pw} {base}/admin             # 403 (logged as user_not_allowed)\n\
         \x20 curl -i -H 'Authorization: Bearer {DEMO_TOKEN}' {base}/\n\
         \x20 curl -i '{base}/public/..%2fadmin'               # 400 ambiguous_path\n\n\
         in a browser: open {base}/app and sign in ({bob} is refused on {base}/app/admin)\n\n\
         Each request writes one access log line below; denials carry a reason. Ctrl-C stops.\n"
    )
}
