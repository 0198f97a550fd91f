//! Per-request costs of the proxy's own work, without sockets: path normalisation and route
//! matching, the `Authorization` parser, challenge formatting, the upstream header rewrite,
//! and the two credential checks steady traffic hits (cached Basic, memory-store session).
//!
//!     cargo bench --bench proxy -- --warm-up-time 1 --measurement-time 3
//!
//! The end-to-end figures (through real sockets, against nginx) come from `bench/run.sh`.

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};
use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;
use portcullis::auth::credentials;
use portcullis::auth::password::PasswordHash;
use portcullis::auth::Scheme;
use portcullis::auth::{Identity, PasswordVerifier, Principal};
use portcullis::config::Config;
use portcullis::policy;
use portcullis::proxy::headers::{rewrite_request, ForwardContext};
use portcullis::response::challenge;
use portcullis::session::Sessions;

/// A config shaped like a real deployment: a handful of routes of different lengths. alice's
/// password is "pw" (argon2id: hashed once, then served from the verification cache).
fn config() -> Config {
    let hash = PasswordHash::hash_argon2id(b"pw").expect("argon2id hashing works");
    let text = format!(
        r#"
[server]
listen = ["127.0.0.1:8080"]

[upstream]
url = "http://127.0.0.1:3000"

[session]
cookie_secure = false
# The session check is measured among 100,000 sessions, all alice's.
max_per_user = 200000

[[users]]
name = "alice"
password_hash = "{hash}"
groups = ["admins", "ops"]

[[route]]
path = "/assets"
auth = []

[[route]]
path = "/api/v1/admin"
auth = ["bearer"]
realm = "API admin"

[[route]]
path = "/api"
auth = ["bearer", "basic"]
realm = "API"

[[route]]
path = "/admin"
auth = ["session", "basic"]
realm = "Admin area"
allow_groups = ["admins"]

[[route]]
path = "/app"
auth = ["session"]
realm = "App"

[[route]]
path = "/"
auth = ["basic", "bearer", "session"]
realm = "Example Corp"
"#
    );
    Config::from_toml(Path::new("<bench>"), &text).expect("bench config is valid")
}

fn normalise_and_match(c: &mut Criterion) {
    let config = config();
    let mut group = c.benchmark_group("normalise+match");
    for (name, path) in [
        ("plain", "/api/v1/users/42/profile"),
        ("root", "/"),
        (
            "dots+slashes+escapes",
            "/api//v1/./users/%41b/../42;v=1/profile",
        ),
        (
            "long",
            "/assets/js/vendor/some-library/dist/2.13.1/min/bundle.min.js",
        ),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                let (normalized, target) =
                    policy::resolve(&config.routes, black_box(path)).unwrap();
                black_box((
                    normalized.forward().len(),
                    matches!(target, policy::Target::Route(_)),
                ))
            })
        });
    }
    group.finish();
}

fn authorization_parser(c: &mut Criterion) {
    let mut group = c.benchmark_group("authorization parser");
    for (name, value) in [
        (
            "basic",
            "Basic YWxpY2U6Y29ycmVjdCBob3JzZSBiYXR0ZXJ5IHN0YXBsZQ==",
        ),
        (
            "bearer",
            "Bearer 3q2-7wEjRWeJq83vASNFZ4mrze8BI0VniavN7wEjRWc",
        ),
        ("other scheme", "Digest username=\"alice\""),
    ] {
        let mut headers = HeaderMap::new();
        headers.insert(http::header::AUTHORIZATION, HeaderValue::from_static(value));
        group.bench_function(name, |b| {
            b.iter(|| match credentials::parse(black_box(&headers)).unwrap() {
                credentials::Credential::Basic(Ok(basic)) => black_box(basic.user.len()),
                credentials::Credential::Bearer(Ok(token)) => black_box(token.len()),
                _ => black_box(0),
            })
        });
    }
    group.finish();
}

fn challenges(c: &mut Criterion) {
    let mut group = c.benchmark_group("challenge");
    let schemes = [Scheme::Basic, Scheme::Bearer, Scheme::Session];
    group.bench_function("route challenges (basic, bearer, session)", |b| {
        b.iter(|| challenge::for_route(black_box(&schemes), black_box("Example \"Corp\"")))
    });
    group.bench_function("bearer invalid_token", |b| {
        b.iter(|| {
            challenge::to_value(challenge::challenge(
                Scheme::Bearer,
                black_box("API"),
                &[("error", "invalid_token")],
            ))
        })
    });
    group.finish();
}

/// What a browser-ish client sends, plus one spoofed identity header.
fn request_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (name, value) in [
        ("host", "app.example.com"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
        ),
        (
            "accept",
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        ),
        ("accept-language", "en-GB,en;q=0.5"),
        ("accept-encoding", "gzip, deflate, br, zstd"),
        ("authorization", "Basic YWxpY2U6cHc="),
        (
            "cookie",
            "theme=dark; portcullis_session=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA; lang=en",
        ),
        ("connection", "keep-alive"),
        ("x-forwarded-user", "admin"),
        ("sec-fetch-site", "same-origin"),
    ] {
        h.append(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    h
}

fn header_rewrite(c: &mut Criterion) {
    let config = config();
    let user = config.users.get("alice").unwrap().clone();
    let identity = Identity {
        principal: Principal::User(user),
        method: Scheme::Basic,
        session: None,
    };
    let request_id = HeaderValue::from_static("0123456789abcdef0123456789abcdef");
    let template = request_headers();
    let mut group = c.benchmark_group("rewrite_request");
    for (name, trusted) in [("untrusted peer", false), ("trusted peer", true)] {
        let ctx = ForwardContext {
            client_ip: "192.0.2.7".parse().unwrap(),
            peer_trusted: trusted,
            proto: "http",
            host: Some(HeaderValue::from_static("app.example.com")),
            request_id: &request_id,
            identity: Some(&identity),
            config: &config.identity,
            preserve_host: false,
        };
        // The clone is part of the figure; it is measured alone below.
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut headers = template.clone();
                rewrite_request(&mut headers, black_box(&ctx));
                headers
            })
        });
    }
    group.bench_function("clone of the header map alone", |b| {
        b.iter(|| black_box(&template).clone())
    });
    group.finish();
}

fn credential_checks(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let config = config();
    let _enter = rt.enter();
    let verifier = PasswordVerifier::start();
    // The first check hashes; every later one is answered from the verification cache.
    rt.block_on(verifier.verify(&config.users, "alice", "pw"))
        .expect("bench password verifies");
    let mut group = c.benchmark_group("credential check");
    group.bench_function("basic, cached verification", |b| {
        b.iter(|| {
            rt.block_on(verifier.verify(&config.users, black_box("alice"), black_box("pw")))
                .unwrap()
        })
    });

    let sessions = Sessions::new(&config.session).unwrap();
    let alice = config.users.get("alice").expect("bench user alice");
    let ids: Vec<String> = rt.block_on(async {
        let mut ids = Vec::with_capacity(100_000);
        for _ in 0..100_000 {
            ids.push(sessions.create(alice).await.unwrap());
        }
        ids
    });
    let mut i = 0;
    group.bench_function("session cookie, memory store (100k sessions)", |b| {
        b.iter(|| {
            i = (i + 7919) % ids.len();
            rt.block_on(sessions.check(black_box(&ids[i]), &config))
                .unwrap()
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    normalise_and_match,
    authorization_parser,
    challenges,
    header_rewrite,
    credential_checks
);
criterion_main!(benches);
