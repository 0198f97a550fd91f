//! Users, passwords, tokens and the standard routes shared by the tests.

use super::*;

/// alice: argon2id, group "admins".
pub const ALICE_PW: &str = "correct-horse-alice-7421";
/// bob: bcrypt, group "staff".
pub const BOB_PW: &str = "bob-bcrypt-pw-9931";
/// A wrong password (also grepped for in the logs).
pub const WRONG_PW: &str = "wrong-password-5550";
/// The static bearer token of `ci-bot` (group "ci").
pub const TOKEN: &str = "ci-token-9f1c2b7e5d4a3f60b8c1d2e3f4a5b6c7";
/// A token nobody configured.
pub const UNKNOWN_TOKEN: &str = "not-a-configured-token-31337abc";

/// argon2id hash of [`ALICE_PW`], computed once per test binary.
pub fn alice_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| {
        portcullis::auth::password::PasswordHash::hash_argon2id(ALICE_PW.as_bytes()).unwrap()
    })
}

/// bcrypt (cost 4) hash of [`BOB_PW`], computed once per test binary.
pub fn bob_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| bcrypt::hash(BOB_PW, 4).unwrap())
}

/// Lower-case hex SHA-256.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// `Basic base64(user:password)`.
pub fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// `Bearer token`.
pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// The users and the token every standard config has.
pub fn principals() -> String {
    format!(
        r#"
[[users]]
name = "alice"
password_hash = "{alice}"
groups = ["admins"]

[[users]]
name = "bob"
password_hash = "{bob}"
groups = ["staff"]

[[tokens]]
name = "ci-bot"
token_sha256 = "{token}"
groups = ["ci"]
"#,
        alice = alice_hash(),
        bob = bob_hash(),
        token = sha256_hex(TOKEN.as_bytes()),
    )
}

/// The standard routes:
/// - `/` needs Basic or Bearer (realm "Main"),
/// - `/public` is public,
/// - `/admin` is Basic only, alice only, GET and POST only (realm "Admin area"),
/// - `/staff` admits the group "staff",
/// - `/api` is Bearer only (realm "API"),
/// - `/both` is Bearer then Basic (challenge order),
/// - `/secret` is case-insensitive and alice only,
/// - `/quoted` has a realm with a quote and a backslash.
pub const STD_ROUTES: &str = r#"
[[route]]
path = "/"
auth = ["basic", "bearer"]
realm = "Main"

[[route]]
path = "/public"
auth = []

[[route]]
path = "/admin"
auth = ["basic"]
realm = "Admin area"
allow_users = ["alice"]
methods = ["GET", "POST"]

[[route]]
path = "/staff"
auth = ["basic", "bearer"]
realm = "Staff"
allow_groups = ["staff"]

[[route]]
path = "/api"
auth = ["bearer"]
realm = "API"

[[route]]
path = "/both"
auth = ["bearer", "basic"]
realm = "Both"

[[route]]
path = "/secret"
case_insensitive = true
auth = ["basic"]
realm = "Secret"
allow_users = ["alice"]

[[route]]
path = "/quoted"
auth = ["basic", "bearer"]
realm = 'Say "hi" \ bye'
"#;

/// Users, token and the standard routes.
pub fn std_body() -> String {
    format!("{}{}", principals(), STD_ROUTES)
}
