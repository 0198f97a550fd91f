//! `portcullis explain` is the proxy's own decision (issue 14): a table of hostile targets,
//! malformed request shapes, reserved paths, method overrides and credentials, each sent as raw
//! bytes to the running binary and described to `portcullis explain` with the same method,
//! target and headers. Any difference in status or reason code fails the test.

mod support;

use support::*;

/// One request: a name, the method, the target as sent, and its header lines (Host included
/// where the request has one).
type Case = (
    &'static str,
    &'static str,
    &'static str,
    Vec<(&'static str, String)>,
);

fn host() -> (&'static str, String) {
    ("Host", "proxy.test".to_string())
}

fn auth(value: String) -> (&'static str, String) {
    ("Authorization", value)
}

fn cases() -> Vec<Case> {
    let alice = || auth(basic("alice", ALICE_PW));
    let bob = || auth(basic("bob", BOB_PW));
    let mut cases: Vec<Case> = Vec::new();
    // Hostile targets without credentials (the families of tests/adversarial/paths.rs and
    // tests/routing.rs).
    for target in [
        "/admin",
        "/public/x",
        "/admin%2f",
        "/public/..%2f..%2fadmin",
        "/.;/admin",
        "/admin/..;/public",
        "/%2e/admin",
        "/public/%2e%2e",
        "/%252e%252e/admin",
        "/public/%c0%2e%c0%2e/admin",
        "/public/%c0%80",
        "/%5cadmin",
        "/admin%00.html",
        "/admin%0a",
        "/../admin",
        "/public/..///admin",
        "/adm%69n/",
        "/public%3f/../admin",
        "/admin?x=/public",
        "/admin#",
        "/admin#x",
        "/public#/../admin",
        "/ADMIN/",
        "//proxy.test/admin",
        "http://proxy.test/public",
        "https://proxy.test/public/../admin",
        "/public;a=b/c;d",
        "/.portcullis/nothing",
        "/.portcullis/",
        "/.portcullis/whoami",
        "/.portcullis/login",
        "/.portcullis/logout",
        "/.PORTCULLIS/nothing",
        "/public/../.portcullis/nothing",
    ] {
        cases.push(("path", "GET", target, vec![host()]));
    }
    // The same hostile targets with a valid credential that may not reach /admin.
    for target in [
        "/admin",
        "/admin%2f",
        "/public/../admin",
        "/ADMIN",
        "/adm%69n",
    ] {
        cases.push(("bob", "GET", target, vec![host(), bob()]));
    }
    // Credentials, allow lists, methods and method overrides.
    cases.push(("alice", "GET", "/admin", vec![host(), alice()]));
    cases.push(("alice-delete", "DELETE", "/admin", vec![host(), alice()]));
    cases.push(("bob-staff", "GET", "/staff/x", vec![host(), bob()]));
    cases.push(("basic-on-api", "GET", "/api/x", vec![host(), alice()]));
    cases.push((
        "unknown-user",
        "GET",
        "/x",
        vec![host(), auth(basic("mallory", "pw"))],
    ));
    cases.push(("bearer-only", "GET", "/api/x", vec![host()]));
    cases.push((
        "scheme-garbage",
        "GET",
        "/x",
        vec![host(), auth("Digest x".into())],
    ));
    for name in [
        "X-HTTP-Method-Override",
        "X-Method-Override",
        "X-HTTP-Method",
    ] {
        cases.push((
            "override",
            "POST",
            "/admin",
            vec![host(), alice(), (name, "DELETE".into())],
        ));
        cases.push((
            "override-public",
            "GET",
            "/public/x",
            vec![host(), (name, "PUT".into())],
        ));
    }
    // Request shapes refused before routing (tests/adversarial/shape.rs).
    for (name, headers) in [
        ("host-space", vec![("Host", "a b".to_string())]),
        ("host-list", vec![("Host", "a, b".into())]),
        ("host-path", vec![("Host", "evil.com/admin?".into())]),
        ("host-userinfo", vec![("Host", "alice@evil.com".into())]),
        (
            "host-twice",
            vec![("Host", "p".into()), ("Host", "q".into())],
        ),
        (
            "cl-te",
            vec![
                host(),
                ("Content-Length", "5".into()),
                ("Transfer-Encoding", "chunked".into()),
            ],
        ),
        (
            "cl-twice",
            vec![
                host(),
                ("Content-Length", "5".into()),
                ("Content-Length", "6".into()),
            ],
        ),
        ("cl-plus", vec![host(), ("Content-Length", "+5".into())]),
        (
            "te-gzip",
            vec![host(), ("Transfer-Encoding", "gzip".into())],
        ),
        ("two-authorization", vec![host(), alice(), bob()]),
        ("two-authorization-public", vec![host(), alice(), bob()]),
    ] {
        let target = if name.ends_with("public") {
            "/public/x"
        } else {
            "/x"
        };
        cases.push((name, "GET", target, headers));
    }
    cases
}

/// Status and reason code the running proxy gave `case` (`allow` and no status when it
/// forwarded or served it; reason `-` when no access event names the request, i.e. the HTTP
/// parser refused it).
async fn proxy_says(proxy: &Proxy, (_, method, target, headers): &Case) -> (Option<u16>, String) {
    let mut request = format!("{method} {target} HTTP/1.1\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("Connection: close\r\n\r\n");
    let response = RawResp::parse(&proxy.raw(request.as_bytes()).await);
    let Some(id) = response.header("x-request-id") else {
        return (Some(response.status), "-".to_string());
    };
    let event = proxy.access_for(id).await;
    match event["decision"].as_str() {
        Some("allow") => (None, "allow".to_string()),
        _ => (
            Some(response.status),
            event["reason"].as_str().unwrap_or("-").to_string(),
        ),
    }
}

/// Status and reason code `portcullis explain` gives `case` (no status for an allowed request:
/// what answers it is the upstream or the endpoint, not the decision).
fn explain_says(
    config: &std::path::Path,
    (name, method, target, headers): &Case,
) -> (Option<u16>, String) {
    let described: Vec<String> = headers.iter().map(|(n, v)| format!("{n}: {v}")).collect();
    let mut args = vec![
        "explain",
        "--config",
        config.to_str().unwrap(),
        method,
        target,
    ];
    for header in &described {
        args.push("--header");
        args.push(header);
    }
    let (code, stdout, stderr) = run_cli(&args, None);
    assert_eq!(code, 0, "[{name}] explain failed: {stdout}{stderr}");
    let line = |key: &str| {
        stdout.lines().find_map(|l| {
            l.strip_prefix(key)
                .and_then(|rest| rest.strip_prefix(':'))
                .map(str::trim)
        })
    };
    let decision = line("decision").unwrap_or_else(|| panic!("[{name}] no decision: {stdout}"));
    if decision == "allow" {
        return (None, "allow".to_string());
    }
    let status = line("status")
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("[{name}] no status line: {stdout}"));
    let reason = line("reason").unwrap_or("-").to_string();
    (Some(status), reason)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_and_the_running_proxy_agree_on_status_and_reason() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_std(&upstream).await;
    let config = proxy.config_path.clone();
    let cases = cases();
    let mut differences = Vec::new();
    for case in &cases {
        let real = proxy_says(&proxy, case).await;
        let explained = explain_says(&config, case);
        if real != explained {
            differences.push(format!(
                "[{}] {} {} {:?}: proxy {real:?}, explain {explained:?}",
                case.0, case.1, case.2, case.3
            ));
        }
    }
    assert!(
        differences.is_empty(),
        "explain and the proxy disagree on {} of {} requests:\n{}",
        differences.len(),
        cases.len(),
        differences.join("\n")
    );
}
