//! `portcullis check --config FILE`: exit 0 and the routes table for a valid file; exit 1 with
//! `file:line:column`, the key and what was expected for each kind of bad configuration.

mod support;

use std::path::Path;

use support::*;

const BCRYPT: &str = "$2b$04$EGdrhbKUv8Oc9vGiXX0HQOxSg445d458Muh7DAHskb6QbtCvdxcie";

/// A valid config with a marker `@SERVER@` (extra `[server]` lines), `@HASH@` (alice's hash)
/// and `@ROUTES@` (lines after the `/` route).
const TEMPLATE: &str = r#"# a config for `check`
[server]
listen = ["127.0.0.1:8080"]
@SERVER@

[upstream]
url = "http://127.0.0.1:3000"

[[users]]
name = "alice"
password_hash = "@HASH@"

[[route]]
path = "/"
auth = ["basic"]
@ROUTES@
"#;

fn config(server: &str, hash: &str, routes: &str) -> String {
    TEMPLATE
        .replace("@SERVER@", server)
        .replace("@HASH@", hash)
        .replace("@ROUTES@", routes)
}

/// The 1-based line of the first line containing `needle`, and that line.
fn line_of<'a>(text: &'a str, needle: &str) -> (usize, &'a str) {
    text.lines()
        .enumerate()
        .find(|(_, line)| line.contains(needle))
        .map(|(n, line)| (n + 1, line))
        .unwrap_or_else(|| panic!("{needle:?} not in the config"))
}

/// The 1-based column where the value of `key = value` starts on `line`.
fn value_column(line: &str) -> usize {
    line.find("= ").expect("a key = value line") + 3
}

/// Where on its line an error must point.
enum Column {
    /// At the value of `key = value`.
    Value,
    /// At the key (column 1).
    Key,
    /// At this text.
    At(&'static str),
}

struct Case {
    name: &'static str,
    text: String,
    /// A substring of the offending line.
    line_needle: &'static str,
    /// Where the error points on that line.
    column: Column,
    key: &'static str,
    /// Words the message must contain.
    says: &'static [&'static str],
}

fn check_file(path: &Path) -> (i32, String, String) {
    run_cli(&["check", "--config", path.to_str().unwrap()], None)
}

#[test]
fn the_example_config_is_valid_and_prints_the_routes_table() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/portcullis.toml");
    let (code, stdout, stderr) = check_file(&example);
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("is valid"), "{stdout}");
    let table: Vec<&str> = stdout.lines().skip_while(|l| !l.contains("PATH")).collect();
    assert!(!table.is_empty(), "no routes table:\n{stdout}");
    for column in ["PATH", "AUTH", "METHODS"] {
        assert!(table[0].contains(column), "{}", table[0]);
    }
    let row = |path: &str| {
        table
            .iter()
            .find(|l| l.split_whitespace().next() == Some(path))
            .unwrap_or_else(|| panic!("no row for {path}:\n{stdout}"))
            .to_string()
    };
    assert!(row("/admin").contains("GET,POST"), "{}", row("/admin"));
    assert!(row("/admin").contains("alice"), "{}", row("/admin"));
    assert!(row("/assets").contains("public"), "{}", row("/assets"));
    assert!(row("/").contains("basic"), "{}", row("/"));
    // Longest prefix first, as matching works.
    let position = |path: &str| {
        table
            .iter()
            .position(|l| l.split_whitespace().next() == Some(path))
            .unwrap()
    };
    assert!(position("/admin") < position("/"));
    assert!(position("/assets") < position("/"));
}

#[test]
fn a_valid_minimal_config_passes() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), "ok.toml", &config("", alice_hash(), ""));
    let (code, stdout, stderr) = check_file(&path);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
}

#[test]
fn bad_configs_are_refused_with_file_line_column_and_key() {
    let cases = vec![
        Case {
            name: "bad duration",
            text: config("header_read_timeout = \"10 seconds\"", BCRYPT, ""),
            line_needle: "header_read_timeout",
            column: Column::Value,
            key: "server.header_read_timeout",
            says: &["10 seconds", "duration"],
        },
        Case {
            name: "fractional duration",
            text: config("idle_timeout = \"1.5s\"", BCRYPT, ""),
            line_needle: "idle_timeout",
            column: Column::Value,
            key: "server.idle_timeout",
            says: &["1.5s"],
        },
        Case {
            name: "bad listen address",
            text: config("", BCRYPT, "").replace("127.0.0.1:8080", "localhost:8080"),
            line_needle: "localhost:8080",
            column: Column::Value,
            key: "server.listen[0]",
            says: &["localhost:8080", "IP:PORT"],
        },
        Case {
            name: "bad CIDR",
            text: config("trusted_proxies = [\"10.0.0.0/33\"]", BCRYPT, ""),
            line_needle: "trusted_proxies",
            column: Column::Value,
            key: "server.trusted_proxies[0]",
            says: &["10.0.0.0/33", "CIDR"],
        },
        Case {
            name: "SHA-1 password hash",
            text: config("", "{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=", ""),
            line_needle: "password_hash",
            column: Column::Value,
            key: "users[0].password_hash",
            says: &["SHA", "argon2"],
        },
        Case {
            name: "MD5 (apr1) password hash",
            text: config("", "$apr1$r31.....$HqJZimcKQFAMYayBlzkrA/", ""),
            line_needle: "password_hash",
            column: Column::Value,
            key: "users[0].password_hash",
            says: &["MD5", "bcrypt"],
        },
        Case {
            name: "plain-text password",
            text: config("", "hunter2", ""),
            line_needle: "password_hash",
            column: Column::Value,
            key: "users[0].password_hash",
            says: &["argon2"],
        },
        Case {
            name: "route path without a leading slash",
            text: config("", BCRYPT, "\n[[route]]\npath = \"admin\"\nauth = [\"basic\"]\n"),
            line_needle: "path = \"admin\"",
            column: Column::Value,
            key: "route[1].path",
            says: &["admin", "must start with '/'"],
        },
        Case {
            name: "duplicate route paths",
            text: config("", BCRYPT, "\n[[route]]\npath = \"/public\"\nauth = []\n\n[[route]]\npath = \"/public/\"\nauth = []\n"),
            line_needle: "path = \"/public/\"",
            column: Column::Value,
            key: "route[2].path",
            says: &["duplicate", "/public"],
        },
        Case {
            name: "allow_users naming an unknown user",
            text: config("", BCRYPT, "allow_users = [\"alice\", \"mallory\"]"),
            line_needle: "allow_users",
            column: Column::At("\"mallory\""),
            key: "route[0].allow_users[1]",
            says: &["mallory"],
        },
        Case {
            name: "jwks_url over plain http to another host",
            text: config("", BCRYPT, "\n[jwt]\nissuer = \"https://id.test/\"\naudience = \"p\"\nalgorithms = [\"RS256\"]\njwks_url = \"http://id.example.com/jwks.json\"\n"),
            line_needle: "jwks_url",
            column: Column::Value,
            key: "jwt.jwks_url",
            says: &["plain http", "https://"],
        },
        Case {
            name: "an empty token_types",
            text: config("", BCRYPT, "\n[jwt]\nissuer = \"https://id.test/\"\naudience = \"p\"\nalgorithms = [\"RS256\"]\njwks_url = \"https://id.example.com/jwks.json\"\ntoken_types = []\n"),
            line_needle: "token_types",
            column: Column::Value,
            key: "jwt.token_types",
            says: &["at+jwt"],
        },
        Case {
            name: "allow_users naming a token without its prefix",
            text: config("", BCRYPT, "allow_users = [\"alice\", \"deploy-bot\"]\n\n[[tokens]]\nname = \"deploy-bot\"\ntoken_sha256 = \"875ca15102495ea430c9af8e6eeb9a455e58e74d842b8bf852eed00b0482e739\"\n"),
            line_needle: "allow_users",
            column: Column::At("\"deploy-bot\""),
            key: "route[0].allow_users[1]",
            says: &["deploy-bot", "\"token:deploy-bot\""],
        },
        Case {
            name: "allow_users naming a JWT subject without its prefix",
            text: config("", BCRYPT, "allow_users = [\"carol\"]\n\n[jwt]\nissuer = \"https://id.test/\"\naudience = \"p\"\nalgorithms = [\"RS256\"]\njwks_url = \"https://id.example.com/jwks.json\"\n"),
            line_needle: "allow_users",
            column: Column::At("\"carol\""),
            key: "route[0].allow_users[0]",
            says: &["carol", "\"jwt:carol\""],
        },
        Case {
            name: "allow_users naming an unknown token",
            text: config("", BCRYPT, "allow_users = [\"token:nobody\"]"),
            line_needle: "allow_users",
            column: Column::At("\"token:nobody\""),
            key: "route[0].allow_users[0]",
            says: &["nobody", "[[tokens]]"],
        },
        Case {
            name: "allow_users naming a JWT subject without [jwt]",
            text: config("", BCRYPT, "allow_users = [\"jwt:alice\"]"),
            line_needle: "allow_users",
            column: Column::At("\"jwt:alice\""),
            key: "route[0].allow_users[0]",
            says: &["jwt:alice", "[jwt]"],
        },
        Case {
            name: "a typo in a route key",
            text: config("", BCRYPT, "alow_users = [\"alice\"]"),
            line_needle: "alow_users",
            column: Column::Key,
            key: "route[0].alow_users",
            says: &["unknown field", "alow_users", "allow_users"],
        },
        Case {
            name: "a typo in a server key",
            text: config("listn = [\"127.0.0.1:1\"]", BCRYPT, ""),
            line_needle: "listn",
            column: Column::Key,
            key: "server.listn",
            says: &["unknown field", "listn"],
        },
    ];
    let dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for (n, case) in cases.iter().enumerate() {
        let path = write_file(dir.path(), &format!("case{n}.toml"), &case.text);
        let (code, stdout, stderr) = check_file(&path);
        let (line, text) = line_of(&case.text, case.line_needle);
        let column = match case.column {
            Column::Value => value_column(text),
            Column::Key => 1,
            Column::At(needle) => text.find(needle).expect("column needle on the line") + 1,
        };
        let position = format!("{}:{line}:{column}:", path.display());
        let mut problems = Vec::new();
        if code != 1 {
            problems.push(format!("exit code {code}"));
        }
        if !stderr.contains(&position) {
            problems.push(format!("no {position:?}"));
        }
        if !stderr.contains(&format!("`{}`", case.key)) {
            problems.push(format!("no key `{}`", case.key));
        }
        for word in case.says {
            if !stderr.contains(word) {
                problems.push(format!("does not say {word:?}"));
            }
        }
        if !problems.is_empty() {
            failures.push(format!(
                "{}: {}\n  stdout: {stdout}\n  stderr: {stderr}",
                case.name,
                problems.join(", ")
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn an_htpasswd_md5_line_is_refused_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    write_file(
        dir.path(),
        "htpasswd",
        &format!("# users\ncarol:{BCRYPT}\ndave:$apr1$r31.....$HqJZimcKQFAMYayBlzkrA/\n"),
    );
    let text = config("", BCRYPT, "\n[users_file]\npath = \"htpasswd\"\n");
    let path = write_file(dir.path(), "ht.toml", &text);
    let (code, _, stderr) = check_file(&path);
    assert_eq!(code, 1, "{stderr}");
    let (line, line_text) = line_of(&text, "path = \"htpasswd\"");
    let position = format!("{}:{line}:{}:", path.display(), value_column(line_text));
    assert!(stderr.contains(&position), "{position} not in: {stderr}");
    assert!(stderr.contains("`users_file.path`"), "{stderr}");
    assert!(
        stderr.contains("line 3"),
        "names the htpasswd line: {stderr}"
    );
    assert!(stderr.contains("MD5"), "{stderr}");
    assert!(stderr.contains("dave"), "{stderr}");

    // The same file with only good lines is accepted, and its users can sign in.
    write_file(
        dir.path(),
        "htpasswd",
        &format!("# users\ncarol:{BCRYPT}\n"),
    );
    let (code, stdout, stderr) = check_file(&path);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.contains("users:    2"), "alice and carol: {stdout}");
}

#[test]
fn a_missing_file_and_a_missing_flag_are_errors() {
    let (code, _, stderr) = run_cli(&["check", "--config", "/nonexistent/portcullis.toml"], None);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("/nonexistent/portcullis.toml"), "{stderr}");
    let (code, _, stderr) = run_cli(&["check"], None);
    assert_eq!(code, 2, "usage error: {stderr}");
    let (code, _, stderr) = run_cli(&["check", "--config"], None);
    assert_eq!(code, 2, "usage error: {stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_refuses_an_invalid_config_with_the_same_message() {
    let dir = tempfile::tempdir().unwrap();
    let text = config("", "$apr1$r31.....$HqJZimcKQFAMYayBlzkrA/", "");
    let path = write_file(dir.path(), "bad.toml", &text);
    let (code, _, stderr) = run_cli(&["run", "--config", path.to_str().unwrap()], None);
    assert_eq!(code, 1);
    let (line, _) = line_of(&text, "password_hash");
    assert!(
        stderr.contains(&format!("{}:{line}:", path.display())),
        "{stderr}"
    );
    assert!(stderr.contains("`users[0].password_hash`"), "{stderr}");
}

#[test]
fn jwks_url_over_plain_http_is_allowed_to_loopback_only() {
    let dir = tempfile::tempdir().unwrap();
    let jwt = |url: &str| {
        format!(
            "\n[jwt]\nissuer = \"https://id.test/\"\naudience = \"p\"\nalgorithms = [\"RS256\"]\njwks_url = \"{url}\"\n"
        )
    };
    for (n, url) in [
        "http://127.0.0.1:9/jwks.json",
        "http://localhost:9/jwks.json",
        "http://[::1]:9/jwks.json",
        "https://id.example.com/jwks.json",
    ]
    .iter()
    .enumerate()
    {
        let path = write_file(
            dir.path(),
            &format!("ok{n}.toml"),
            &config("", BCRYPT, &jwt(url)),
        );
        let (code, stdout, stderr) = check_file(&path);
        assert_eq!(code, 0, "{url}: {stdout}\n{stderr}");
    }
    for (n, url) in [
        "http://id.example.com/jwks.json",
        "http://10.0.0.5/jwks.json",
        "HTTP://id.example.com/jwks.json",
    ]
    .iter()
    .enumerate()
    {
        let path = write_file(
            dir.path(),
            &format!("bad{n}.toml"),
            &config("", BCRYPT, &jwt(url)),
        );
        let (code, stdout, stderr) = check_file(&path);
        assert_eq!(code, 1, "{url}: {stdout}\n{stderr}");
        assert!(stderr.contains("`jwt.jwks_url`"), "{url}: {stderr}");
    }
}

/// `server.secret_file`: at least 32 bytes (a trailing newline does not count), readable; its
/// contents never printed. No file with a Redis store (several instances) is warned about,
/// since each instance then signs with its own random key.
#[test]
fn a_secret_file_holds_at_least_32_bytes_and_a_random_key_with_redis_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let short = "short-secret-value-31-bytes-xyz";
    assert_eq!(short.len(), 31);
    write_file(dir.path(), "short.key", &format!("{short}\n"));
    write_file(dir.path(), "good.key", &format!("{}\n", "g".repeat(32)));
    for (name, file, says) in [
        ("short", "short.key", "holds 31 bytes"),
        ("missing", "absent.key", "cannot read"),
    ] {
        let text = config(&format!("secret_file = \"{file}\""), BCRYPT, "");
        let path = write_file(dir.path(), &format!("{name}.toml"), &text);
        let (code, stdout, stderr) = check_file(&path);
        assert_eq!(code, 1, "{name}: {stdout}\n{stderr}");
        assert!(stderr.contains("`server.secret_file`"), "{name}: {stderr}");
        assert!(stderr.contains(says), "{name}: {stderr}");
        assert!(
            !stderr.contains(short),
            "{name}: the key was printed: {stderr}"
        );
    }
    let redis = "\n[session]\nstore = \"redis\"\nredis_url = \"redis://127.0.0.1:6379/0\"\n";
    for (name, server, routes, warned) in [
        ("good", "secret_file = \"good.key\"", "", false),
        ("memory", "", "", false),
        ("redis-with-key", "secret_file = \"good.key\"", redis, false),
        ("redis-random", "", redis, true),
        (
            "redis-off",
            "",
            &format!("{redis}\n[rate_limit]\nknown_device_days = 0\n"),
            false,
        ),
    ] {
        let path = write_file(
            dir.path(),
            &format!("{name}.toml"),
            &config(server, BCRYPT, routes),
        );
        let (code, stdout, stderr) = check_file(&path);
        assert_eq!(code, 0, "{name}: {stdout}\n{stderr}");
        assert_eq!(
            stderr.contains("warning: server.secret_file is not set"),
            warned,
            "{name}: {stderr}"
        );
    }
    let path = write_file(
        dir.path(),
        "too-long.toml",
        &config("", BCRYPT, "\n[rate_limit]\nknown_device_days = 401\n"),
    );
    let (code, _, stderr) = check_file(&path);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("`rate_limit.known_device_days`"),
        "{stderr}"
    );
}
