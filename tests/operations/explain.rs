//! `portcullis explain` agreeing with the running proxy.

use super::*;

fn explain_body() -> String {
    format!(
        r#"{}
[[route]]
path = "/admin"
auth = ["basic"]
realm = "Admin"
methods = ["GET"]
allow_groups = ["admins"]

[[route]]
path = "/app"
auth = ["basic", "bearer"]
realm = "App"

[[route]]
path = "/pub"
auth = []
"#,
        principals()
    )
}

/// Runs `portcullis explain --config FILE ARGS…` and returns its lines as (key, value) pairs.
fn explain(config: &std::path::Path, args: &[&str]) -> Vec<(String, String)> {
    let mut all = vec!["explain", "--config", config.to_str().unwrap()];
    all.extend_from_slice(args);
    let (code, stdout, stderr) = run_cli(&all, None);
    assert_eq!(code, 0, "explain {args:?} failed: {stdout}{stderr}");
    stdout
        .lines()
        .map(|line| {
            let (key, value) = line
                .split_once(':')
                .unwrap_or_else(|| panic!("explain line without a key: {line:?}"));
            (key.to_string(), value.trim().to_string())
        })
        .collect()
}

fn field<'a>(lines: &'a [(String, String)], key: &str) -> Option<&'a str> {
    lines
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// One explain case and the same request sent to the running proxy.
struct Case {
    args: &'static [&'static str],
    /// `allow`, or the deny reason.
    outcome: &'static str,
    /// The route line, if one matched.
    route: Option<&'static str>,
    /// The real request: method, path, Authorization, expected status.
    real: Option<RealRequest>,
}

/// Method, path, Basic user and password, expected status.
type RealRequest = (
    &'static str,
    &'static str,
    Option<(&'static str, &'static str)>,
    u16,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_gives_the_decision_and_reason_the_proxy_logs() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_in(
        tempfile::tempdir().unwrap(),
        &config_text(&upstream.url(), "", &explain_body()),
    )
    .await;
    let config = proxy.config_path.clone();

    const ALICE: Option<(&str, &str)> = Some(("alice", ALICE_PW));
    const BOB: Option<(&str, &str)> = Some(("bob", BOB_PW));
    let cases = [
        Case {
            args: &["GET", "/admin/panel", "--user", "alice"],
            outcome: "allow",
            route: Some("/admin"),
            real: Some(("GET", "/admin/panel", ALICE, 200)),
        },
        Case {
            args: &["GET", "/admin", "--user", "bob"],
            outcome: "user_not_allowed",
            route: Some("/admin"),
            real: Some(("GET", "/admin", BOB, 403)),
        },
        Case {
            args: &["POST", "/admin", "--user", "alice"],
            outcome: "method_not_allowed",
            route: Some("/admin"),
            real: Some(("POST", "/admin", ALICE, 405)),
        },
        Case {
            args: &["GET", "/admin"],
            outcome: "missing_credentials",
            route: Some("/admin"),
            real: Some(("GET", "/admin", None, 401)),
        },
        Case {
            args: &["GET", "/a/%2e%2e/b", "--user", "alice"],
            outcome: "ambiguous_path",
            route: None,
            real: Some(("GET", "/a/%2e%2e/b", ALICE, 400)),
        },
        Case {
            args: &["GET", "/nowhere", "--user", "alice"],
            outcome: "no_route",
            route: None,
            real: Some(("GET", "/nowhere", ALICE, 403)),
        },
        Case {
            args: &["GET", "/admin", "--user", "mallory"],
            outcome: "unknown_user",
            route: Some("/admin"),
            real: Some(("GET", "/admin", Some(("mallory", WRONG_PW)), 401)),
        },
        Case {
            args: &["GET", "/app/x?q=1", "--user", "bob"],
            outcome: "allow",
            route: Some("/app"),
            real: Some(("GET", "/app/x?q=1", BOB, 200)),
        },
        Case {
            args: &["GET", "/pub/page"],
            outcome: "allow",
            route: Some("/pub"),
            real: Some(("GET", "/pub/page", None, 200)),
        },
        // --groups replaces the configured groups.
        Case {
            args: &["GET", "/admin", "--user", "bob", "--groups", "staff,admins"],
            outcome: "allow",
            route: Some("/admin"),
            real: None,
        },
        Case {
            args: &["GET", "/admin", "--user", "alice", "--groups", "staff"],
            outcome: "user_not_allowed",
            route: Some("/admin"),
            real: None,
        },
    ];

    for case in &cases {
        let lines = explain(&config, case.args);
        let context = format!("explain {:?}:\n{lines:#?}", case.args);
        let expected_request = format!("{} {}", case.args[0], case.args[1]);
        assert_eq!(
            field(&lines, "request"),
            Some(expected_request.as_str()),
            "{context}"
        );
        assert_eq!(field(&lines, "route"), case.route, "{context}");
        let explained_detail = field(&lines, "detail").map(str::to_string);
        if case.outcome == "allow" {
            assert_eq!(field(&lines, "decision"), Some("allow"), "{context}");
            assert_eq!(field(&lines, "reason"), None, "{context}");
        } else {
            assert_eq!(field(&lines, "decision"), Some("deny"), "{context}");
            assert_eq!(field(&lines, "reason"), Some(case.outcome), "{context}");
            assert!(
                explained_detail.as_deref().is_some_and(|d| !d.is_empty()),
                "{context}"
            );
        }

        let Some((method, path, credentials, status)) = case.real else {
            continue;
        };
        let authorization = credentials.map(|(u, p)| basic(u, p));
        let headers: Vec<(&str, &str)> = authorization
            .iter()
            .map(|a| ("authorization", a.as_str()))
            .collect();
        let response = send(proxy.addr, method, path, &headers, Bytes::new()).await;
        let event = if case.outcome == "allow" {
            expect(&proxy, &response, status, "allow", None).await
        } else {
            expect(&proxy, &response, status, "deny", Some(case.outcome)).await
        };
        assert_eq!(event["route"].as_str(), case.route, "{context}\n{event}");
        // Decisions made by the shared policy functions carry the very same detail.
        if matches!(
            case.outcome,
            "user_not_allowed" | "method_not_allowed" | "ambiguous_path" | "no_route"
        ) {
            assert_eq!(
                event["detail"].as_str(),
                explained_detail.as_deref(),
                "{context}\n{event}"
            );
        }
    }

    // The report's other lines, for an admitted request.
    let lines = explain(&config, &["get", "/admin//panel/./x", "--user", "alice"]);
    assert_eq!(
        field(&lines, "normalised"),
        Some("/admin/panel/x (matched as /admin/panel/x)"),
        "{lines:#?}"
    );
    assert_eq!(field(&lines, "accepts"), Some("basic"), "{lines:#?}");
    assert_eq!(
        field(&lines, "user"),
        Some("alice (groups: admins) via basic"),
        "{lines:#?}"
    );
    assert_eq!(field(&lines, "identity"), Some("alice"), "{lines:#?}");
    assert_eq!(field(&lines, "decision"), Some("allow"), "{lines:#?}");
    // The qualified identity: what allow_users matches and identity_header carries.
    for user in ["ci-bot", "token:ci-bot"] {
        let lines = explain(&config, &["GET", "/app", "--user", user]);
        assert_eq!(
            field(&lines, "identity"),
            Some("token:ci-bot"),
            "{lines:#?}"
        );
    }
    let lines = explain(&config, &["GET", "/app", "--user", "token:alice"]);
    assert_eq!(field(&lines, "reason"), Some("unknown_token"), "{lines:#?}");
    let lines = explain(&config, &["GET", "/app", "--user", "ci-bot"]);
    assert_eq!(
        field(&lines, "accepts"),
        Some("basic, bearer"),
        "{lines:#?}"
    );
    assert_eq!(
        field(&lines, "user"),
        Some("ci-bot (groups: ci) via bearer"),
        "{lines:#?}"
    );
    assert_eq!(field(&lines, "decision"), Some("allow"), "{lines:#?}");
    let lines = explain(
        &config,
        &["GET", "/admin", "--user", "bob", "--groups", "staff,admins"],
    );
    assert_eq!(
        field(&lines, "user"),
        Some("bob (groups: staff, admins) via basic"),
        "{lines:#?}"
    );
    let lines = explain(&config, &["GET", "/pub"]);
    assert_eq!(
        field(&lines, "accepts"),
        Some("public (no credentials)"),
        "{lines:#?}"
    );

    // A token on a Basic-only route: no usable credential, for explain and for the proxy.
    let lines = explain(&config, &["GET", "/admin", "--user", "ci-bot"]);
    assert_eq!(
        field(&lines, "reason"),
        Some("missing_credentials"),
        "{lines:#?}"
    );
    let response = get(&proxy, "/admin", &[("authorization", &bearer(TOKEN))]).await;
    expect(&proxy, &response, 401, "deny", Some("missing_credentials")).await;
    let lines = explain(&config, &["GET", "/app", "--user", "ci-bot"]);
    assert_eq!(field(&lines, "decision"), Some("allow"), "{lines:#?}");
    let response = get(&proxy, "/app", &[("authorization", &bearer(TOKEN))]).await;
    expect(&proxy, &response, 200, "allow", None).await;

    // The two disagreements measured in issue 14, a request shape and a method override, each
    // compared with the raw request sent to the running proxy: same status and reason.
    let alice = format!("Authorization: {}\r\n", basic("alice", ALICE_PW));
    let two_authorizations = "Authorization: Basic eA==\r\nAuthorization: Basic eQ==\r\n";
    let override_delete = format!("{alice}X-HTTP-Method-Override: DELETE\r\n");
    let parity: [(&[&str], &str, &str); 5] = [
        (&["GET", "/admin#x"], "/admin#x", ""),
        (&["GET", "/.portcullis/nothing"], "/.portcullis/nothing", ""),
        (&["GET", "/pub", "--host", "a,b"], "/pub", "Host: a,b\r\n"),
        (
            &[
                "GET",
                "/admin",
                "--user",
                "alice",
                "--header",
                "X-HTTP-Method-Override: DELETE",
            ],
            "/admin",
            &override_delete,
        ),
        (
            &[
                "GET",
                "/pub",
                "--header",
                "Authorization: Basic eA==",
                "--header",
                "Authorization: Basic eQ==",
            ],
            "/pub",
            two_authorizations,
        ),
    ];
    for (args, target, extra) in parity {
        let lines = explain(&config, args);
        let response = proxy.raw_get(target, extra).await;
        let id = response
            .header("x-request-id")
            .unwrap_or_else(|| panic!("{args:?}: no request id: {}", response.text));
        let event = proxy.access_for(id).await;
        assert_eq!(
            field(&lines, "status"),
            Some(response.status.to_string().as_str()),
            "{args:?}: {lines:#?}\n{event}"
        );
        assert_eq!(
            field(&lines, "reason"),
            event["reason"].as_str(),
            "{args:?}: {lines:#?}\n{event}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_fails_cleanly_on_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let good = write_file(
        dir.path(),
        "good.toml",
        &config_text("http://127.0.0.1:9", "", &explain_body()),
    );
    let bad_text = format!(
        "{}\n[[route]]\npath = \"/x\"\nrealmm = \"y\"\nauth = []\n",
        config_text("http://127.0.0.1:9", "", &explain_body())
    );
    let bad_line = bad_text
        .lines()
        .position(|l| l.starts_with("realmm"))
        .unwrap()
        + 1;
    let bad = write_file(dir.path(), "bad.toml", &bad_text);

    let (code, _, stderr) = run_cli(
        &["explain", "--config", bad.to_str().unwrap(), "GET", "/"],
        None,
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&format!("{}:{bad_line}:1", bad.display())),
        "{stderr}"
    );

    let (code, _, stderr) = run_cli(
        &["explain", "--config", good.to_str().unwrap(), "GE T", "/"],
        None,
    );
    assert_eq!(code, 2, "{stderr}");

    let (code, _, stderr) = run_cli(&["explain", "GET", "/"], None);
    assert_eq!(code, 2, "{stderr}");
}
