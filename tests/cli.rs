//! The small commands: `gen-token`, `hash-password`, usage errors, and plain
//! `portcullis --config FILE` running the proxy.

mod support;

use portcullis::auth::password::PasswordHash;
use support::*;

fn parse_gen_token(stdout: &str) -> (String, String) {
    let token = stdout
        .lines()
        .find_map(|l| l.strip_prefix("token: "))
        .unwrap_or_else(|| panic!("no `token: ` line:\n{stdout}"))
        .trim()
        .to_string();
    let digest = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("token_sha256 = "))
        .unwrap_or_else(|| panic!("no token_sha256 line:\n{stdout}"))
        .trim()
        .trim_matches('"')
        .to_string();
    (token, digest)
}

#[test]
fn gen_token_prints_a_url_safe_token_and_its_sha256() {
    let (code, stdout, stderr) = run_cli(&["gen-token"], None);
    assert_eq!(code, 0, "{stderr}");
    let (token, digest) = parse_gen_token(&stdout);
    // 32 random bytes, base64url without padding.
    assert_eq!(token.len(), 43, "{token}");
    assert!(
        token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "not URL-safe: {token}"
    );
    assert_eq!(digest, sha256_hex(token.as_bytes()));
    assert!(stdout.contains("[[tokens]]"), "{stdout}");

    let (_, again, _) = run_cli(&["gen-token"], None);
    let (other, _) = parse_gen_token(&again);
    assert_ne!(token, other, "tokens are random");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_token_authenticates() {
    let (_, stdout, _) = run_cli(&["gen-token", "--name", "deployer"], None);
    let (token, _) = parse_gen_token(&stdout);
    // The printed block is pasted into the config as is.
    let block: String = stdout
        .lines()
        .skip_while(|l| !l.starts_with("[[tokens]]"))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(block.contains("name = \"deployer\""), "{block}");
    let upstream = Upstream::start().await;
    let body = format!("{block}\n\n[[route]]\npath = \"/\"\nauth = [\"bearer\"]\n");
    let proxy = Proxy::start(&upstream, &body).await;
    let response = proxy.get("/x", &[("authorization", &bearer(&token))]).await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(
        upstream.only("/x").header("x-forwarded-user").as_deref(),
        Some("deployer")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_password_reads_stdin_and_prints_a_verifying_argon2id_hash() {
    let password = "pipe-d password with spaces ✓";
    let (code, stdout, stderr) = run_cli(&["hash-password"], Some(&format!("{password}\n")));
    assert_eq!(code, 0, "{stderr}");
    let hash = stdout.trim();
    assert_eq!(stdout.trim_end().lines().count(), 1, "{stdout}");
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    let parsed = PasswordHash::parse(hash).expect("a valid PHC string");
    assert!(parsed.verify(password.as_bytes()));
    assert!(!parsed.verify(b"pipe-d password with spaces"));
    assert!(
        !stdout.contains(password) && !stderr.contains(password),
        "the password is echoed"
    );

    // And the proxy accepts it.
    let upstream = Upstream::start().await;
    let body = format!("[[users]]\nname = \"dora\"\npassword_hash = \"{hash}\"\n\n[[route]]\npath = \"/\"\nauth = [\"basic\"]\n");
    let proxy = Proxy::start(&upstream, &body).await;
    let response = proxy
        .get("/x", &[("authorization", &basic("dora", password))])
        .await;
    assert_eq!(response.status, 200, "{}", response.text());
}

#[test]
fn hash_password_refuses_an_empty_password() {
    let (code, stdout, _) = run_cli(&["hash-password"], Some("\n"));
    assert_eq!(code, 1);
    assert!(!stdout.contains("$argon2"), "{stdout}");
    let (code, _, _) = run_cli(&["hash-password"], Some(""));
    assert_eq!(code, 1);
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["run"][..],
        &["--no-such-flag"][..],
        &["no-such-command"][..],
    ] {
        let (code, _, stderr) = run_cli(args, None);
        assert_eq!(code, 2, "{args:?}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_config_flag_runs_the_proxy() {
    let upstream = Upstream::start().await;
    let proxy = ProxyConfig::new(upstream.url(), std_body())
        .without_run()
        .start()
        .await;
    let response = proxy.get("/public/plain", &[]).await;
    assert_eq!(response.status, 200);
    assert_eq!(upstream.only("/public/plain").method, "GET");
}

/// `portcullis check | head -1`: the reader goes away before the routes table is written. The
/// command must end quietly, as a Unix filter does, not panic on the broken pipe.
#[test]
fn check_into_a_closed_pipe_exits_quietly() {
    let config = format!("{}/config/portcullis.toml", env!("CARGO_MANIFEST_DIR"));
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["check", "--config", &config])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start portcullis check");
    // Close the read end before the command writes anything.
    drop(child.stdout.take());
    let output = child.wait_with_output().expect("wait for portcullis check");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(output.status.code(), Some(0), "{stderr}");
}
