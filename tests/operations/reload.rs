//! Hot reload on SIGHUP: users, tokens and passwords at once; an invalid file keeps the running config.

use super::*;

const RELOAD_ROUTES: &str = r#"
[[route]]
path = "/"
auth = ["basic", "bearer"]
realm = "Main"
"#;

const ALICE_NEW_PW: &str = "alice-rotated-password-8812";
const CAROL_PW: &str = "carol-password-4471";

fn user(name: &str, hash: &str, group: &str) -> String {
    format!("[[users]]\nname = \"{name}\"\npassword_hash = \"{hash}\"\ngroups = [\"{group}\"]\n\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_users_tokens_and_passwords_at_once_and_keeps_serving_on_a_bad_file() {
    let upstream = Upstream::start().await;
    let token = format!(
        "[[tokens]]\nname = \"ci-bot\"\ntoken_sha256 = \"{}\"\ngroups = [\"ci\"]\n\n",
        sha256_hex(TOKEN.as_bytes())
    );
    let v1 = format!(
        "{}{}{token}{RELOAD_ROUTES}",
        user("alice", alice_hash(), "admins"),
        user("bob", bob_hash(), "staff")
    );
    let proxy = Proxy::start_in(
        tempfile::tempdir().unwrap(),
        &config_text(&upstream.url(), "", &v1),
    )
    .await;

    // Before: alice, bob and the token work (and the passwords are now cached as verified).
    for _ in 0..2 {
        expect(
            &proxy,
            &get(
                &proxy,
                "/a",
                &[("authorization", &basic("alice", ALICE_PW))],
            )
            .await,
            200,
            "allow",
            None,
        )
        .await;
        expect(
            &proxy,
            &get(&proxy, "/b", &[("authorization", &basic("bob", BOB_PW))]).await,
            200,
            "allow",
            None,
        )
        .await;
    }
    expect(
        &proxy,
        &get(&proxy, "/t", &[("authorization", &bearer(TOKEN))]).await,
        200,
        "allow",
        None,
    )
    .await;
    let carol = basic("carol", CAROL_PW);
    expect(
        &proxy,
        &get(&proxy, "/c", &[("authorization", &carol)]).await,
        401,
        "deny",
        Some("unknown_user"),
    )
    .await;
    // A keep-alive connection from before the reload.
    let stream = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut kept, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let kept_alice = basic("alice", ALICE_NEW_PW);
    assert_eq!(
        h1_get(
            &mut kept,
            "/kept",
            &[("authorization", &basic("alice", ALICE_PW))]
        )
        .await
        .status,
        200
    );

    // v2: bob and the token removed, carol added, alice's password changed.
    let alice_new_hash = bcrypt::hash(ALICE_NEW_PW, 4).unwrap();
    let carol_hash = bcrypt::hash(CAROL_PW, 4).unwrap();
    let v2 = format!(
        "{}{}{RELOAD_ROUTES}",
        user("alice", &alice_new_hash, "admins"),
        user("carol", &carol_hash, "staff")
    );
    let v2_text = config_text(&upstream.url(), "", &v2);
    proxy.rewrite_config(&v2_text);
    proxy.signal("HUP").await;
    proxy.wait_for_events("configuration reloaded", 1).await;

    // What changed is logged, by name only.
    let changes: Vec<String> = proxy
        .events_named("config change")
        .iter()
        .map(|e| e["change"].as_str().unwrap_or_default().to_string())
        .collect();
    for expected in [
        r#"user "carol" added"#,
        r#"user "bob" removed"#,
        r#"user "alice": password changed"#,
        r#"token "ci-bot" removed"#,
    ] {
        assert!(
            changes.iter().any(|c| c == expected),
            "no change line {expected:?} in {changes:#?}"
        );
    }
    assert!(
        !changes.iter().any(|c| c.contains("route")),
        "routes did not change: {changes:#?}"
    );

    // At once: bob (verified and cached a moment ago) is refused, and so is the removed token
    // and alice's old password; carol and alice's new password work.
    let response = get(&proxy, "/b", &[("authorization", &basic("bob", BOB_PW))]).await;
    expect(&proxy, &response, 401, "deny", Some("unknown_user")).await;
    let response = get(&proxy, "/t", &[("authorization", &bearer(TOKEN))]).await;
    expect(&proxy, &response, 401, "deny", Some("unknown_token")).await;
    let response = get(
        &proxy,
        "/a",
        &[("authorization", &basic("alice", ALICE_PW))],
    )
    .await;
    expect(&proxy, &response, 401, "deny", Some("bad_password")).await;
    let response = get(
        &proxy,
        "/a",
        &[("authorization", &basic("alice", ALICE_NEW_PW))],
    )
    .await;
    let event = expect(&proxy, &response, 200, "allow", None).await;
    assert_eq!(event["user"], "alice");
    let response = get(&proxy, "/c", &[("authorization", &carol)]).await;
    let event = expect(&proxy, &response, 200, "allow", None).await;
    assert_eq!(event["user"], "carol");
    // The connection opened before the reload carries on, under the new config.
    let response = h1_get(&mut kept, "/kept", &[("authorization", &kept_alice)]).await;
    assert_eq!(response.status, 200, "{}", response.text());
    let response = h1_get(
        &mut kept,
        "/kept",
        &[("authorization", &basic("alice", ALICE_PW))],
    )
    .await;
    assert_eq!(response.status, 401, "{}", response.text());

    // v3: invalid (an unknown key). The exact error is logged; v2 keeps serving.
    let v3_text = format!("{v2_text}\n[[route]]\npath = \"/typo\"\nrealmm = \"oops\"\nauth = []\n");
    let bad_line = v3_text
        .lines()
        .position(|l| l.starts_with("realmm"))
        .unwrap()
        + 1;
    proxy.rewrite_config(&v3_text);
    proxy.signal("HUP").await;
    let failures = proxy
        .wait_for_events("reload failed: keeping the running configuration", 1)
        .await;
    let failure = &failures[0];
    assert_eq!(failure["level"], "ERROR", "{failure}");
    let error = failure["error"].as_str().expect("the error is logged");
    let place = format!("{}:{bad_line}:1", proxy.config_path.display());
    assert!(
        error.starts_with(&place),
        "the error should start with {place}: {error}"
    );
    assert!(error.contains("realmm"), "{error}");
    assert_eq!(
        proxy.events_named("configuration reloaded").len(),
        1,
        "an invalid file was reported as loaded"
    );

    let response = get(&proxy, "/c", &[("authorization", &carol)]).await;
    expect(&proxy, &response, 200, "allow", None).await;
    let response = get(&proxy, "/b", &[("authorization", &basic("bob", BOB_PW))]).await;
    expect(&proxy, &response, 401, "deny", Some("unknown_user")).await;
    let response = get(&proxy, "/typo", &[]).await;
    assert_eq!(response.status, 401, "the invalid file's route took effect");

    let text = scrape(&proxy).await;
    assert_metric(&text, "portcullis_reloads_total{outcome=\"success\"}", 1.0);
    assert_metric(&text, "portcullis_reloads_total{outcome=\"failure\"}", 1.0);

    // The reload log names no secret: no hash, no password, no token.
    let output = proxy.all_output();
    for secret in [
        alice_hash(),
        bob_hash(),
        alice_new_hash.as_str(),
        carol_hash.as_str(),
        ALICE_PW,
        ALICE_NEW_PW,
        BOB_PW,
        CAROL_PW,
        TOKEN,
        &sha256_hex(TOKEN.as_bytes()),
    ] {
        assert!(
            !output.contains(secret),
            "the log contains a secret ({secret})"
        );
    }
}
