//! Bearer authentication end to end (SPEC §3 `bearer`, the bearer rows of §4, issue 3):
//! static tokens and JWTs of every algorithm family against the real binary and a real
//! upstream, every denial reason with its status and RFC 6750 challenge, the algorithm-
//! confusion attack, `kid` rotation through a `jwks_url` served by a real HTTP server, and
//! the token never reaching the upstream (unless asked) or the logs.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use support::*;
use tokio::net::TcpListener;

const ISSUER: &str = "https://id.test/";
const AUDIENCE: &str = "portcullis";
/// Static token with the scope "deploy" only.
const DEPLOY_TOKEN: &str = "deploy-token-0b9e8d7c6f5a4b3c2d1e0f9a8b7c6d5e";
/// Static token whose `expires` has passed.
const OLD_TOKEN: &str = "old-token-11223344556677889900aabbccddeeff";

// ---------------------------------------------------------------------------------------------
// Keys and tokens
// ---------------------------------------------------------------------------------------------

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/jwt")
        .join(name)
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

fn hmac_secret() -> Vec<u8> {
    let mut secret = read("hmac.secret");
    if secret.last() == Some(&b'\n') {
        secret.pop();
    }
    secret
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Valid claims for `sub`.
fn claims(sub: &str) -> Value {
    json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": sub,
        "iat": now(),
        "exp": now() + 600,
        "groups": ["admins", "ops"],
        "scope": "read deploy",
    })
}

fn with(mut claims: Value, key: &str, value: Value) -> Value {
    claims[key] = value;
    claims
}

/// The fixture key for an algorithm and its `kid` in jwks.json.
fn signing_key(alg: Algorithm) -> (EncodingKey, Option<&'static str>) {
    match alg {
        Algorithm::RS256 | Algorithm::PS256 => (
            EncodingKey::from_rsa_pem(&read("rsa-a.pem")).unwrap(),
            Some("rsa-a"),
        ),
        Algorithm::ES256 => (
            EncodingKey::from_ec_pem(&read("ec.pem")).unwrap(),
            Some("ec-1"),
        ),
        Algorithm::EdDSA => (
            EncodingKey::from_ed_pem(&read("ed.pem")).unwrap(),
            Some("ed-1"),
        ),
        Algorithm::HS256 => (EncodingKey::from_secret(&hmac_secret()), None),
        other => panic!("no fixture key for {other:?}"),
    }
}

fn mint(alg: Algorithm, claims: &Value) -> String {
    let (key, kid) = signing_key(alg);
    mint_with(alg, kid, &key, claims)
}

fn mint_with(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    encode(&header, claims, key).unwrap()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

// ---------------------------------------------------------------------------------------------
// Proxies
// ---------------------------------------------------------------------------------------------

/// Static tokens on top of the standard ones, and routes for scopes and allow lists.
fn body(jwt: &str) -> String {
    format!(
        r#"{principals}
# Many refusals from one client in a row here: keep brute-force protection out of the way.
[rate_limit]
max_failures = 1000

[[tokens]]
name = "deployer"
token_sha256 = "{deploy}"
scopes = ["deploy"]

[[tokens]]
name = "old-bot"
token_sha256 = "{old}"
expires = "2020-01-01T00:00:00Z"

{jwt}

[[route]]
path = "/"
auth = ["basic", "bearer"]
realm = "Main"

[[route]]
path = "/both"
auth = ["bearer", "basic"]
realm = "Both"

[[route]]
path = "/api"
auth = ["bearer"]
realm = "API"

[[route]]
path = "/deploy"
auth = ["bearer"]
realm = "Deploy"
scopes = ["deploy", "write"]

[[route]]
path = "/admins"
auth = ["bearer"]
realm = "Admins"
allow_groups = ["admins"]

[[route]]
path = "/carol"
auth = ["bearer"]
realm = "Carol"
allow_users = ["jwt:carol"]

[[route]]
path = "/alice"
auth = ["basic", "bearer"]
realm = "Alice"
allow_users = ["alice"]

[[route]]
path = "/jwt-alice"
auth = ["basic", "bearer"]
realm = "JWT alice"
allow_users = ["jwt:alice", "token:deployer"]
"#,
        principals = principals(),
        deploy = sha256_hex(DEPLOY_TOKEN.as_bytes()),
        old = sha256_hex(OLD_TOKEN.as_bytes()),
    )
}

fn jwks_file_section() -> String {
    format!(
        "[jwt]\nissuer = \"{ISSUER}\"\naudience = \"{AUDIENCE}\"\nalgorithms = [\"RS256\", \"PS256\", \"ES256\", \"EdDSA\"]\njwks_file = \"{}\"\n",
        fixture("jwks.json").display()
    )
}

fn hmac_section() -> String {
    format!(
        "[jwt]\nissuer = \"{ISSUER}\"\naudience = \"{AUDIENCE}\"\nalgorithms = [\"HS256\"]\nhmac_secret_file = \"{}\"\n",
        fixture("hmac.secret").display()
    )
}

/// The proxy with public keys from jwks.json (RS256, PS256, ES256, EdDSA).
async fn jwks_proxy(upstream: &Upstream) -> Proxy {
    Proxy::start(upstream, &body(&jwks_file_section())).await
}

/// The proxy with the HMAC secret (HS256).
async fn hmac_proxy(upstream: &Upstream) -> Proxy {
    Proxy::start(upstream, &body(&hmac_section())).await
}

async fn get_with(proxy: &Proxy, path: &str, token: &str) -> Resp {
    proxy.get(path, &[("authorization", &bearer(token))]).await
}

/// Asserts a 401 with the route's Bearer challenge carrying `error="invalid_token"`, and the
/// logged reason; returns the challenge.
async fn assert_invalid_token(proxy: &Proxy, response: &Resp, realm: &str, reason: &str) -> String {
    assert_proxy_made(proxy, response, 401, "deny", reason).await;
    let challenges = response.header_all("www-authenticate");
    assert_eq!(challenges.len(), 1, "{challenges:?}");
    let challenge = challenges[0].clone();
    let prefix = format!(r#"Bearer realm="{realm}", error="invalid_token", error_description=""#);
    assert!(challenge.starts_with(&prefix), "{challenge}");
    assert!(challenge.ends_with('"'), "{challenge}");
    challenge
}

// ---------------------------------------------------------------------------------------------
// Accepted tokens
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_token_passes_and_the_upstream_learns_its_name_not_the_token() {
    let upstream = Upstream::start().await;
    let proxy = jwks_proxy(&upstream).await;

    let response = get_with(&proxy, "/api/static?q=1", TOKEN).await;
    assert_eq!(response.status, 200, "{}", response.text());
    let seen = upstream.only("/api/static");
    assert_eq!(seen.header("x-forwarded-user").as_deref(), Some("ci-bot"));
    assert_eq!(seen.header("x-forwarded-groups").as_deref(), Some("ci"));
    assert_eq!(
        seen.header("x-forwarded-auth-method").as_deref(),
        Some("bearer")
    );
    assert_eq!(seen.header("authorization"), None);
    let event = proxy.access_of(&response).await;
    assert_eq!(event["decision"], "allow");
    assert_eq!(event["user"], "ci-bot");
    assert_eq!(event["auth_method"], "bearer");

    // The scheme name is case-insensitive.
    let response = proxy
        .get(
            "/api/lower",
            &[("authorization", &format!("bEaReR {TOKEN}"))],
        )
        .await;
    assert_eq!(response.status, 200, "{}", response.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_jwt_of_every_algorithm_family_passes() {
    let upstream = Upstream::start().await;
    let proxy = jwks_proxy(&upstream).await;
    for (alg, sub) in [
        (Algorithm::RS256, "rsa-user"),
        (Algorithm::PS256, "pss-user"),
        (Algorithm::ES256, "ec-user"),
        (Algorithm::EdDSA, "ed-user"),
    ] {
        let token = mint(alg, &claims(sub));
        let path = format!("/api/{sub}");
        let response = get_with(&proxy, &path, &token).await;
        assert_eq!(response.status, 200, "{alg:?}: {}", response.text());
        let seen = upstream.only(&path);
        assert_eq!(
            seen.header("x-forwarded-user").as_deref(),
            Some(sub),
            "{alg:?}"
        );
        assert_eq!(
            seen.header("x-forwarded-groups").as_deref(),
            Some("admins,ops")
        );
        assert_eq!(
            seen.header("x-forwarded-auth-method").as_deref(),
            Some("bearer")
        );
        assert_eq!(
            seen.header("authorization"),
            None,
            "the token never reaches the upstream"
        );
        let event = proxy.access_of(&response).await;
        assert_eq!(event["user"], sub);
        assert_eq!(event["auth_method"], "bearer");
    }
    // A token without a kid is checked against every key of its algorithm.
    let (key, _) = signing_key(Algorithm::ES256);
    let token = mint_with(Algorithm::ES256, None, &key, &claims("no-kid"));
    assert_eq!(get_with(&proxy, "/api/no-kid", &token).await.status, 200);

    let upstream = Upstream::start().await;
    let proxy = hmac_proxy(&upstream).await;
    let token = mint(Algorithm::HS256, &claims("hmac-user"));
    let response = get_with(&proxy, "/api/hmac", &token).await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(
        upstream
            .only("/api/hmac")
            .header("x-forwarded-user")
            .as_deref(),
        Some("hmac-user")
    );
    // Static tokens keep working next to JWTs.
    assert_eq!(get_with(&proxy, "/api/static", TOKEN).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_claims_feed_allow_lists_and_scopes() {
    let upstream = Upstream::start().await;
    let proxy = jwks_proxy(&upstream).await;

    // allow_groups: "admins" is in the token's groups; a token with other groups is refused.
    let admin = mint(Algorithm::ES256, &claims("dana"));
    assert_eq!(get_with(&proxy, "/admins/x", &admin).await.status, 200);
    let staff = mint(
        Algorithm::ES256,
        &with(claims("erin"), "groups", json!(["staff"])),
    );
    let response = get_with(&proxy, "/admins/x", &staff).await;
    assert_proxy_made(&proxy, &response, 403, "deny", "user_not_allowed").await;

    // allow_users matches the subject.
    let carol = mint(Algorithm::RS256, &claims("carol"));
    assert_eq!(get_with(&proxy, "/carol/x", &carol).await.status, 200);
    let response = get_with(&proxy, "/carol/x", &admin).await;
    assert_proxy_made(&proxy, &response, 403, "deny", "user_not_allowed").await;

    // scopes: the route needs "deploy" and "write"; the token has "read deploy".
    let response = get_with(&proxy, "/deploy/x", &admin).await;
    assert_proxy_made(&proxy, &response, 403, "deny", "insufficient_scope").await;
    assert_eq!(
        response.header_all("www-authenticate"),
        vec![r#"Bearer realm="Deploy", error="insufficient_scope", scope="deploy write""#]
    );
    // ... as a string or as an array.
    let writer = mint(
        Algorithm::EdDSA,
        &with(claims("fay"), "scope", json!("deploy write")),
    );
    assert_eq!(get_with(&proxy, "/deploy/x", &writer).await.status, 200);
    let writer = mint(
        Algorithm::EdDSA,
        &with(claims("gus"), "scope", json!(["write", "deploy"])),
    );
    assert_eq!(get_with(&proxy, "/deploy/x", &writer).await.status, 200);

    // Static tokens' scopes too.
    let response = get_with(&proxy, "/deploy/x", DEPLOY_TOKEN).await;
    assert_proxy_made(&proxy, &response, 403, "deny", "insufficient_scope").await;
    assert_eq!(
        response.header_all("www-authenticate"),
        vec![r#"Bearer realm="Deploy", error="insufficient_scope", scope="deploy write""#]
    );
}

// ---------------------------------------------------------------------------------------------
// Refused tokens
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_gets_the_bare_challenge() {
    let upstream = Upstream::start().await;
    let proxy = jwks_proxy(&upstream).await;
    let response = proxy.get("/api/x", &[]).await;
    assert_proxy_made(&proxy, &response, 401, "deny", "missing_credentials").await;
    assert_eq!(
        response.header_all("www-authenticate"),
        vec![r#"Bearer realm="API""#]
    );
    assert!(upstream.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_token_gets_invalid_token_with_its_reason_and_never_leaks() {
    let upstream = Upstream::start().await;
    let proxy = jwks_proxy(&upstream).await;
    let good = claims("mallory");
    let (rsa_key, _) = signing_key(Algorithm::RS256);
    let valid = mint(Algorithm::RS256, &good);
    let parts: Vec<&str> = valid.split('.').collect();

    // alg "none": the header says unsigned, the signature is empty.
    let none_header = b64(json!({"alg": "none", "typ": "JWT"}).to_string().as_bytes());
    let alg_none = format!("{none_header}.{}.", parts[1]);
    // The algorithm-confusion attack: HS256 "signed" with the RSA public key as the secret.
    let confused = mint_with(
        Algorithm::HS256,
        Some("rsa-a"),
        &EncodingKey::from_secret(&read("rsa-a.pub.pem")),
        &good,
    );
    // The payload changed after signing.
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64(with(good.clone(), "sub", json!("root"))
            .to_string()
            .as_bytes()),
        parts[2]
    );
    // Signed by a key the proxy does not know, under a kid it does know.
    let wrong_key = EncodingKey::from_rsa_pem(&read("rsa-b.pem")).unwrap();
    let forged = mint_with(Algorithm::RS256, Some("rsa-a"), &wrong_key, &good);
    let unknown_kid = mint_with(Algorithm::RS256, Some("rsa-zz"), &rsa_key, &good);
    let t = now();

    let cases: Vec<(&str, String, &str)> = vec![
        (
            "unknown static token",
            UNKNOWN_TOKEN.to_string(),
            "unknown_token",
        ),
        (
            "expired static token",
            OLD_TOKEN.to_string(),
            "token_expired",
        ),
        ("not a JWT", "abc.def".to_string(), "unknown_token"),
        (
            "expired",
            mint(
                Algorithm::RS256,
                &with(good.clone(), "exp", json!(t - 3600)),
            ),
            "token_expired",
        ),
        (
            "no exp",
            mint(Algorithm::ES256, &{
                let mut c = good.clone();
                c.as_object_mut().unwrap().remove("exp");
                c
            }),
            "token_expired",
        ),
        (
            "not yet valid",
            mint(
                Algorithm::ES256,
                &with(good.clone(), "nbf", json!(t + 3600)),
            ),
            "token_not_yet_valid",
        ),
        (
            "wrong issuer",
            mint(
                Algorithm::EdDSA,
                &with(good.clone(), "iss", json!("https://evil.test/")),
            ),
            "bad_issuer",
        ),
        (
            "wrong audience",
            mint(
                Algorithm::RS256,
                &with(good.clone(), "aud", json!(["someone-else"])),
            ),
            "bad_audience",
        ),
        ("tampered payload", tampered, "bad_signature"),
        ("forged signature", forged, "bad_signature"),
        ("unknown kid", unknown_kid, "bad_signature"),
        ("alg none", alg_none, "disallowed_algorithm"),
        (
            "HS256 with the RSA public key",
            confused,
            "disallowed_algorithm",
        ),
        (
            "alg not listed",
            mint(Algorithm::HS256, &good),
            "disallowed_algorithm",
        ),
    ];
    let mut descriptions = Vec::new();
    for (what, token, reason) in &cases {
        let response = get_with(&proxy, "/api/bad", token).await;
        let challenge = assert_invalid_token(&proxy, &response, "API", reason).await;
        for part in token.split('.').filter(|p| p.len() > 3) {
            assert!(
                !challenge.contains(part),
                "{what}: the challenge echoes the token: {challenge}"
            );
            assert!(
                !response.text().contains(part),
                "{what}: the body echoes the token"
            );
        }
        descriptions.push((reason, challenge));
    }
    // Each reason has its own description.
    let expired = &descriptions
        .iter()
        .find(|(r, _)| **r == "token_expired")
        .unwrap()
        .1;
    let issuer = &descriptions
        .iter()
        .find(|(r, _)| **r == "bad_issuer")
        .unwrap()
        .1;
    assert_ne!(expired, issuer);
    assert!(
        upstream.requests().is_empty(),
        "nothing refused reaches the upstream"
    );

    // JSON bodies name the reason.
    let response = proxy
        .get(
            "/api/bad",
            &[
                ("authorization", &bearer(&cases[3].1)),
                ("accept", "application/json"),
            ],
        )
        .await;
    assert_eq!(response.status, 401);
    assert_eq!(response.json()["reason"], "token_expired");

    // No token, valid or not, in any log line.
    proxy.wait_for_access(cases.len() + 1).await;
    let output = proxy.all_output();
    for (what, token, _) in &cases {
        assert!(
            !output.contains(token.as_str()),
            "{what}: the token is in the logs"
        );
        if let Some(signature) = token.split('.').nth(2).filter(|s| s.len() > 8) {
            assert!(
                !output.contains(signature),
                "{what}: the signature is in the logs"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwt_with_no_jwt_config_is_an_unknown_token() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_std(&upstream).await;
    let token = mint(Algorithm::RS256, &claims("someone"));
    let response = get_with(&proxy, "/api/x", &token).await;
    let event = assert_proxy_made(&proxy, &response, 401, "deny", "unknown_token").await;
    assert!(
        event["detail"].as_str().unwrap().contains("[jwt]"),
        "{event}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hmac_tokens_are_checked_against_the_secret_only() {
    let upstream = Upstream::start().await;
    let proxy = hmac_proxy(&upstream).await;
    let good = claims("harry");
    // Signed with another secret.
    let other = mint_with(
        Algorithm::HS256,
        None,
        &EncodingKey::from_secret(b"another-secret-of-at-least-32-bytes!"),
        &good,
    );
    let response = get_with(&proxy, "/api/x", &other).await;
    assert_invalid_token(&proxy, &response, "API", "bad_signature").await;
    // A public-key token is not accepted by an HMAC-only config.
    let rsa = mint(Algorithm::RS256, &good);
    let response = get_with(&proxy, "/api/x", &rsa).await;
    assert_invalid_token(&proxy, &response, "API", "disallowed_algorithm").await;
    // Expired, with the leeway (30 s by default) honoured.
    let recent = mint(
        Algorithm::HS256,
        &with(good.clone(), "exp", json!(now() - 5)),
    );
    assert_eq!(get_with(&proxy, "/api/recent", &recent).await.status, 200);
    let expired = mint(Algorithm::HS256, &with(good, "exp", json!(now() - 120)));
    let response = get_with(&proxy, "/api/x", &expired).await;
    assert_invalid_token(&proxy, &response, "API", "token_expired").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bearer_credentials_are_invalid_request() {
    let upstream = Upstream::start().await;
    let proxy = jwks_proxy(&upstream).await;
    for value in [
        "Bearer",
        "Bearer ",
        "Bearer a b",
        "Bearer a,b",
        "Bearer a\"b",
        "Bearer ==",
        "Bearer ab(c)",
    ] {
        let response = proxy.get("/api/x", &[("authorization", value)]).await;
        assert_proxy_made(&proxy, &response, 400, "deny", "malformed_credentials").await;
        assert_eq!(
            response.header_all("www-authenticate"),
            vec![
                r#"Bearer realm="API", error="invalid_request", error_description="the Authorization header is malformed""#
            ],
            "{value:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_with_basic_and_bearer_send_both_challenges_in_route_order() {
    let upstream = Upstream::start().await;
    let proxy = jwks_proxy(&upstream).await;
    const BASIC_MAIN: &str = r#"Basic realm="Main", charset="UTF-8""#;

    let response = proxy.get("/home", &[]).await;
    assert_proxy_made(&proxy, &response, 401, "deny", "missing_credentials").await;
    assert_eq!(
        response.header_all("www-authenticate"),
        vec![BASIC_MAIN, r#"Bearer realm="Main""#]
    );

    let expired = mint(
        Algorithm::RS256,
        &with(claims("ivy"), "exp", json!(now() - 3600)),
    );
    let response = get_with(&proxy, "/home", &expired).await;
    assert_proxy_made(&proxy, &response, 401, "deny", "token_expired").await;
    assert_eq!(
        response.header_all("www-authenticate"),
        vec![
            BASIC_MAIN.to_string(),
            r#"Bearer realm="Main", error="invalid_token", error_description="the token has expired""#.to_string()
        ]
    );

    let response = get_with(&proxy, "/both/x", UNKNOWN_TOKEN).await;
    assert_proxy_made(&proxy, &response, 401, "deny", "unknown_token").await;
    assert_eq!(
        response.header_all("www-authenticate"),
        vec![
            r#"Bearer realm="Both", error="invalid_token", error_description="the token is not recognised""#,
            r#"Basic realm="Both", charset="UTF-8""#
        ]
    );

    // Both schemes really work on that route.
    let valid = mint(Algorithm::ES256, &claims("jules"));
    assert_eq!(get_with(&proxy, "/home/jwt", &valid).await.status, 200);
    assert_eq!(
        proxy
            .get(
                "/home/basic",
                &[("authorization", &basic("alice", ALICE_PW))]
            )
            .await
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_authorization_passes_the_token_on_when_asked() {
    let upstream = Upstream::start().await;
    let config = format!(
        "[identity]\nforward_authorization = true\n\n{}",
        body(&jwks_file_section())
    );
    let proxy = Proxy::start(&upstream, &config).await;
    let token = mint(Algorithm::EdDSA, &claims("kim"));
    let response = get_with(&proxy, "/api/fwd", &token).await;
    assert_eq!(response.status, 200, "{}", response.text());
    let seen = upstream.only("/api/fwd");
    assert_eq!(seen.header("authorization"), Some(bearer(&token)));
    assert_eq!(seen.header("x-forwarded-user").as_deref(), Some("kim"));
    assert!(
        !proxy.all_output().contains(&token),
        "forwarded, but still never logged"
    );
}

#[test]
fn check_refuses_a_config_open_to_algorithm_confusion() {
    let dir = tempfile::tempdir().unwrap();
    let section = format!(
        "[jwt]\nissuer = \"{ISSUER}\"\naudience = \"{AUDIENCE}\"\nalgorithms = [\"RS256\", \"HS256\"]\njwks_file = \"{}\"\n",
        fixture("jwks.json").display()
    );
    let text = format!("[upstream]\nurl = \"http://127.0.0.1:9\"\n{section}\n[[route]]\npath = \"/\"\nauth = [\"bearer\"]\n");
    let path = write_file(dir.path(), "portcullis.toml", &text);
    let (code, stdout, stderr) = run_cli(&["check", "--config", path.to_str().unwrap()], None);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(stderr.contains(":6:"), "names the line: {stderr}");
    assert!(
        stderr.contains("jwt.algorithms[1]"),
        "names the key: {stderr}"
    );
    assert!(stderr.contains("algorithm-confusion"), "{stderr}");

    // none cannot even be configured.
    let text = text.replace("\"RS256\", \"HS256\"", "\"none\"");
    let path = write_file(dir.path(), "portcullis.toml", &text);
    let (code, _, stderr) = run_cli(&["check", "--config", path.to_str().unwrap()], None);
    assert_eq!(code, 1);
    assert!(stderr.contains("never accepted"), "{stderr}");
}

// ---------------------------------------------------------------------------------------------
// jwks_url: a real HTTP server holding the key set
// ---------------------------------------------------------------------------------------------

/// A JWKS endpoint on loopback whose answer the test changes, counting its requests.
struct JwksServer {
    addr: SocketAddr,
    body: Arc<Mutex<(u16, String)>>,
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    async fn start(status: u16, body: &str) -> JwksServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new((status, body.to_string())));
        let hits = Arc::new(AtomicUsize::new(0));
        let (shared, counter) = (state.clone(), hits.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (shared, counter) = (shared.clone(), counter.clone());
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |_req: Request<hyper::body::Incoming>| {
                            counter.fetch_add(1, Ordering::SeqCst);
                            let (status, body) = shared.lock().unwrap().clone();
                            async move {
                                let mut response = Response::new(Full::new(Bytes::from(body)));
                                *response.status_mut() = StatusCode::from_u16(status).unwrap();
                                Ok::<_, Infallible>(response)
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        JwksServer {
            addr,
            body: state,
            hits,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/.well-known/jwks.json", self.addr)
    }

    fn serve(&self, status: u16, body: &str) {
        *self.body.lock().unwrap() = (status, body.to_string());
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    async fn wait_for_hits(&self, n: usize) {
        let start = Instant::now();
        while self.hits() < n {
            assert!(
                start.elapsed() < DEADLINE,
                "the JWKS endpoint got {} requests, expected {n}",
                self.hits()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn url_section(url: &str, extra: &str) -> String {
    format!("[jwt]\nissuer = \"{ISSUER}\"\naudience = \"{AUDIENCE}\"\nalgorithms = [\"RS256\"]\njwks_url = \"{url}\"\n{extra}\n")
}

fn rsa_b() -> EncodingKey {
    EncodingKey::from_rsa_pem(&read("rsa-b.pem")).unwrap()
}

async fn wait_for_log(proxy: &Proxy, message: &str, n: usize) {
    let start = Instant::now();
    loop {
        let count = proxy
            .events()
            .iter()
            .filter(|e| e["message"] == message)
            .count();
        if count >= n {
            return;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "no {n} {message:?} log events:\n{}",
            proxy.all_output()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kid_rotation_through_jwks_url() {
    let jwks = JwksServer::start(200, &String::from_utf8(read("jwks-a.json")).unwrap()).await;
    let upstream = Upstream::start().await;
    let proxy = Proxy::start(&upstream, &body(&url_section(&jwks.url(), ""))).await;
    wait_for_log(&proxy, "jwks loaded", 1).await;
    assert_eq!(jwks.hits(), 1, "fetched once at start");

    let (key_a, _) = signing_key(Algorithm::RS256);
    let token_a = mint_with(Algorithm::RS256, Some("rsa-a"), &key_a, &claims("with-a"));
    assert_eq!(get_with(&proxy, "/api/a", &token_a).await.status, 200);

    // The identity provider rotates to key B; a token signed with B names a kid the proxy has
    // not seen, which makes it fetch the set again, and the token passes.
    jwks.serve(200, &String::from_utf8(read("jwks-b.json")).unwrap());
    let token_b = mint_with(Algorithm::RS256, Some("rsa-b"), &rsa_b(), &claims("with-b"));
    let response = get_with(&proxy, "/api/b", &token_b).await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(
        upstream
            .only("/api/b")
            .header("x-forwarded-user")
            .as_deref(),
        Some("with-b")
    );
    assert_eq!(jwks.hits(), 2);

    // Key A is gone from the set. Another unknown kid within the minute does not fetch again.
    let response = get_with(&proxy, "/api/a-again", &token_a).await;
    let event = assert_invalid_token(&proxy, &response, "API", "bad_signature").await;
    assert!(!event.contains(&token_a));
    let unknown = mint_with(Algorithm::RS256, Some("rsa-c"), &rsa_b(), &claims("with-c"));
    let response = get_with(&proxy, "/api/c", &unknown).await;
    assert_invalid_token(&proxy, &response, "API", "bad_signature").await;
    assert_eq!(jwks.hits(), 2, "unknown kids refresh at most once a minute");
    assert_eq!(get_with(&proxy, "/api/b-again", &token_b).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_url_is_retried_until_it_answers_and_the_last_good_set_is_kept() {
    // The endpoint fails at first: no key, so no JWT passes, and the proxy keeps retrying.
    let jwks = JwksServer::start(503, "unavailable").await;
    let upstream = Upstream::start().await;
    let proxy = Proxy::start(
        &upstream,
        &body(&url_section(&jwks.url(), "jwks_refresh = \"1s\"")),
    )
    .await;
    jwks.wait_for_hits(1).await;
    let (key_a, _) = signing_key(Algorithm::RS256);
    let token = mint_with(Algorithm::RS256, Some("rsa-a"), &key_a, &claims("patient"));
    let response = get_with(&proxy, "/api/early", &token).await;
    let event = proxy.access_of(&response).await;
    assert_eq!(response.status, 401, "{event}");
    assert_eq!(event["reason"], "bad_signature");
    // Static tokens do not depend on the key set.
    assert_eq!(get_with(&proxy, "/api/static", TOKEN).await.status, 200);

    // Once the endpoint answers, the retry (with backoff) loads the keys.
    jwks.serve(200, &String::from_utf8(read("jwks-a.json")).unwrap());
    wait_for_log(&proxy, "jwks loaded", 1).await;
    assert_eq!(get_with(&proxy, "/api/loaded", &token).await.status, 200);

    // Later refreshes fail (an error page, then a broken document): the last good set stays.
    jwks.serve(500, "oops");
    let failures = proxy
        .events()
        .iter()
        .filter(|e| e["message"] == "jwks fetch failed")
        .count();
    wait_for_log(&proxy, "jwks fetch failed", failures + 1).await;
    jwks.serve(200, "{\"keys\": 12}");
    wait_for_log(&proxy, "jwks fetch failed", failures + 2).await;
    let response = get_with(&proxy, "/api/kept", &token).await;
    assert_eq!(response.status, 200, "{}", response.text());
    let failed = proxy
        .events()
        .into_iter()
        .find(|e| e["message"] == "jwks fetch failed")
        .unwrap();
    assert_eq!(failed["level"], "WARN", "{failed}");
}

// ---------------------------------------------------------------------------------------------
// RFC 9068 §4: the header's typ (jwt.token_types)
// ---------------------------------------------------------------------------------------------

/// An RS256 token for `sub` whose header carries `typ` (none when `None`).
fn mint_typed(typ: Option<&str>, sub: &str) -> String {
    let (key, kid) = signing_key(Algorithm::RS256);
    let mut header = Header::new(Algorithm::RS256);
    header.kid = kid.map(str::to_string);
    header.typ = typ.map(str::to_string);
    encode(&header, &claims(sub), &key).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_listed_token_types_are_access_tokens() {
    let upstream = Upstream::start().await;
    // The default, ["at+jwt", "JWT"].
    let proxy = ProxyConfig::new(upstream.url(), body(&jwks_file_section()))
        .server("admin_listen = \"127.0.0.1:0\"")
        .start()
        .await;
    for (typ, admitted) in [
        (Some("at+jwt"), true),
        (Some("application/at+jwt"), true),
        (Some("AT+JWT"), true),
        (Some("JWT"), true),
        (None, true),
        (Some("logout+jwt"), false),
        (Some("dpop+jwt"), false),
        (Some("application/logout+jwt"), false),
        (Some("id+jwt"), false),
    ] {
        let response = get_with(&proxy, "/api/typed", &mint_typed(typ, "tia")).await;
        if admitted {
            assert_eq!(response.status, 200, "typ {typ:?}: {}", response.text());
        } else {
            let challenge =
                assert_invalid_token(&proxy, &response, "API", "wrong_token_type").await;
            assert!(
                challenge.contains("not an access token"),
                "typ {typ:?}: {challenge}"
            );
            let event = proxy.access_of(&response).await;
            assert!(event["detail"].as_str().unwrap().contains("typ"), "{event}");
        }
    }
    let metrics = send(proxy.admin(), "GET", "/metrics", &[], bytes::Bytes::new()).await;
    assert!(
        metrics
            .text()
            .contains("portcullis_denials_total{reason=\"wrong_token_type\"} 4"),
        "{}",
        metrics.text()
    );

    // ["at+jwt"] enforces RFC 9068: "JWT" and a token without typ are refused too.
    let upstream = Upstream::start().await;
    let strict = format!(
        "{}token_types = [\"application/at+jwt\"]\n",
        jwks_file_section()
    );
    let proxy = Proxy::start(&upstream, &body(&strict)).await;
    for (typ, admitted) in [
        (Some("at+jwt"), true),
        (Some("application/AT+JWT"), true),
        (Some("JWT"), false),
        (None, false),
        (Some("dpop+jwt"), false),
    ] {
        let response = get_with(&proxy, "/api/strict", &mint_typed(typ, "tia")).await;
        if admitted {
            assert_eq!(response.status, 200, "typ {typ:?}: {}", response.text());
        } else {
            assert_invalid_token(&proxy, &response, "API", "wrong_token_type").await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Identities carry their source (SPEC §2)
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwt_subject_or_token_name_is_never_a_password_user() {
    let upstream = Upstream::start().await;
    let proxy = jwks_proxy(&upstream).await;
    let jwt_alice = mint(Algorithm::ES256, &claims("alice"));

    // allow_users = ["alice"] is the password user alice: a JWT whose sub is "alice" is not her.
    let response = get_with(&proxy, "/alice/x", &jwt_alice).await;
    let event = assert_proxy_made(&proxy, &response, 403, "deny", "user_not_allowed").await;
    assert!(
        event["detail"].as_str().unwrap().contains("jwt:alice"),
        "{event}"
    );
    let response = proxy
        .get("/alice/x", &[("authorization", &basic("alice", ALICE_PW))])
        .await;
    assert_eq!(response.status, 200, "{}", response.text());
    let seen = upstream.only("/alice/x");
    assert_eq!(seen.header("x-forwarded-user").as_deref(), Some("alice"));
    assert_eq!(
        seen.header("x-forwarded-identity").as_deref(),
        Some("alice")
    );

    // allow_users = ["jwt:alice", "token:deployer"]: the JWT and the token, not the password user.
    let response = get_with(&proxy, "/jwt-alice/x", &jwt_alice).await;
    assert_eq!(response.status, 200, "{}", response.text());
    let seen = upstream.only("/jwt-alice/x");
    assert_eq!(seen.header("x-forwarded-user").as_deref(), Some("alice"));
    assert_eq!(
        seen.header("x-forwarded-identity").as_deref(),
        Some("jwt:alice")
    );
    assert_eq!(
        seen.header("x-forwarded-auth-method").as_deref(),
        Some("bearer")
    );
    // The access event keeps the bare name.
    let event = proxy.access_of(&response).await;
    assert_eq!(event["user"], "alice", "{event}");
    assert_eq!(event["auth_method"], "bearer", "{event}");

    let response = get_with(&proxy, "/jwt-alice/y", DEPLOY_TOKEN).await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(
        upstream
            .only("/jwt-alice/y")
            .header("x-forwarded-identity")
            .as_deref(),
        Some("token:deployer")
    );
    let response = proxy
        .get(
            "/jwt-alice/z",
            &[("authorization", &basic("alice", ALICE_PW))],
        )
        .await;
    assert_proxy_made(&proxy, &response, 403, "deny", "user_not_allowed").await;

    // A JWT whose subject is spelled like a qualified token name is still a JWT subject.
    let tricky = mint(Algorithm::ES256, &claims("token:deployer"));
    let response = get_with(&proxy, "/jwt-alice/w", &tricky).await;
    assert_proxy_made(&proxy, &response, 403, "deny", "user_not_allowed").await;
}
