//! Stored password hashes (argon2 PHC strings and bcrypt) and the htpasswd file format.

use std::fmt;

use argon2::password_hash::PasswordHash as Phc;
use argon2::{Argon2, PasswordHasher, PasswordVerifier};

/// Upper bound on argon2 memory cost in a configured hash (KiB). A hash asking for more would let
/// one login attempt pin gigabytes of memory.
const MAX_ARGON2_MEMORY_KIB: u32 = 1 << 20;
/// Upper bound on argon2 passes and bcrypt cost, for the same reason (CPU instead of memory).
const MAX_ARGON2_PASSES: u32 = 16;
const MAX_BCRYPT_COST: u32 = 16;

/// A validated password hash from the configuration.
#[derive(Clone, PartialEq, Eq)]
pub enum PasswordHash {
    /// An argon2id or argon2i PHC string.
    Argon2(String),
    /// A bcrypt string (`$2a$`, `$2b$` or `$2y$`).
    Bcrypt(String),
}

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The hash is not the password, but offline cracking starts from it: keep it out of logs.
        match self {
            PasswordHash::Argon2(_) => f.write_str("PasswordHash::Argon2(..)"),
            PasswordHash::Bcrypt(_) => f.write_str("PasswordHash::Bcrypt(..)"),
        }
    }
}

impl PasswordHash {
    /// Validates a stored hash; the error says what was expected.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.starts_with("$argon2") {
            return parse_argon2(text).map(|()| PasswordHash::Argon2(text.to_string()));
        }
        if ["$2a$", "$2b$", "$2y$"].iter().any(|p| text.starts_with(p)) {
            return parse_bcrypt(text).map(|()| PasswordHash::Bcrypt(text.to_string()));
        }
        Err(format!("{}: {EXPECTED_HASH}", describe_unsupported(text)))
    }

    /// The stored string, for binding cached verifications to this exact hash.
    pub fn as_str(&self) -> &str {
        match self {
            PasswordHash::Argon2(s) | PasswordHash::Bcrypt(s) => s,
        }
    }

    /// Checks a password against this hash. CPU-heavy (milliseconds): never call on the reactor.
    pub fn verify(&self, password: &[u8]) -> bool {
        match self {
            PasswordHash::Argon2(s) => Phc::new(s)
                .map(|phc| Argon2::default().verify_password(password, &phc).is_ok())
                .unwrap_or(false),
            PasswordHash::Bcrypt(s) => bcrypt::verify(password, s).unwrap_or(false),
        }
    }

    /// Hashes a password with argon2id and the default parameters (m=19456 KiB, t=2, p=1).
    pub fn hash_argon2id(password: &[u8]) -> Result<String, String> {
        let salt = argon2::password_hash::SaltString::generate(&mut rand::rngs::OsRng);
        Argon2::default()
            .hash_password(password, &salt)
            .map(|h| h.to_string())
            .map_err(|e| format!("argon2 failed: {e}"))
    }
}

const EXPECTED_HASH: &str =
    "expected an argon2id/argon2i PHC string (\"$argon2id$v=19$m=19456,t=2,p=1$...\", made by \
     `portcullis hash-password`) or a bcrypt hash (\"$2b$12$...\")";

fn describe_unsupported(text: &str) -> &'static str {
    if text.starts_with("$apr1$") || text.starts_with("$1$") {
        "MD5 hashes are not accepted"
    } else if text.starts_with("{SHA}") || text.starts_with("{SSHA}") {
        "SHA-1 hashes are not accepted"
    } else if text.starts_with("$5$") || text.starts_with("$6$") {
        "SHA-crypt hashes are not accepted"
    } else if text.is_empty() {
        "the password hash is empty"
    } else {
        "unrecognised password hash (a plain password or crypt() hash?)"
    }
}

fn parse_argon2(text: &str) -> Result<(), String> {
    let phc =
        Phc::new(text).map_err(|e| format!("malformed argon2 hash ({e}): {EXPECTED_HASH}"))?;
    match phc.algorithm.as_str() {
        "argon2id" | "argon2i" => {}
        "argon2d" => return Err("argon2d hashes are not accepted: use argon2id".to_string()),
        other => return Err(format!("unknown algorithm {other:?}: {EXPECTED_HASH}")),
    }
    let params =
        argon2::Params::try_from(&phc).map_err(|e| format!("bad argon2 parameters: {e}"))?;
    if params.m_cost() > MAX_ARGON2_MEMORY_KIB || params.t_cost() > MAX_ARGON2_PASSES {
        return Err(format!(
            "argon2 parameters too expensive (m={}, t={}): at most m={MAX_ARGON2_MEMORY_KIB}, t={MAX_ARGON2_PASSES}",
            params.m_cost(),
            params.t_cost()
        ));
    }
    if phc.hash.is_none() || phc.salt.is_none() {
        return Err(format!(
            "argon2 hash has no salt or digest: {EXPECTED_HASH}"
        ));
    }
    Ok(())
}

fn parse_bcrypt(text: &str) -> Result<(), String> {
    // $2b$CC$ + 22 salt chars + 31 digest chars.
    let malformed = || format!("malformed bcrypt hash: {EXPECTED_HASH}");
    if text.len() != 60 {
        return Err(malformed());
    }
    let cost: u32 = text
        .get(4..6)
        .and_then(|c| c.parse().ok())
        .ok_or_else(malformed)?;
    if text.as_bytes()[6] != b'$' || !(4..=31).contains(&cost) {
        return Err(malformed());
    }
    if cost > MAX_BCRYPT_COST {
        return Err(format!(
            "bcrypt cost {cost} too expensive: at most {MAX_BCRYPT_COST}"
        ));
    }
    let alphabet_ok = text[7..]
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'/');
    if !alphabet_ok {
        return Err(malformed());
    }
    Ok(())
}

/// One user read from an htpasswd file.
#[derive(Debug, Clone)]
pub struct HtpasswdEntry {
    /// 1-based line number, for error messages and duplicate detection.
    pub line: usize,
    /// The user name.
    pub name: String,
    /// The validated hash.
    pub hash: PasswordHash,
}

/// A problem on one line of an htpasswd file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct HtpasswdError {
    /// 1-based line number.
    pub line: usize,
    /// What was wrong and what was expected.
    pub message: String,
}

/// Parses `name:hash` lines; blank lines and `#` comments are skipped. Only argon2 and bcrypt
/// hashes are accepted: MD5 (`$apr1$`), `{SHA}` and crypt lines are errors naming the line.
pub fn parse_htpasswd(text: &str) -> Result<Vec<HtpasswdEntry>, HtpasswdError> {
    let mut entries: Vec<HtpasswdEntry> = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let error = |message: String| HtpasswdError { line, message };
        let (name, hash) = trimmed
            .split_once(':')
            .ok_or_else(|| error("expected NAME:HASH".to_string()))?;
        validate_user_name(name).map_err(error)?;
        let hash = PasswordHash::parse(hash).map_err(|e| error(format!("user {name:?}: {e}")))?;
        if let Some(first) = entries.iter().find(|e| e.name == name) {
            return Err(error(format!(
                "user {name:?} is already defined on line {}",
                first.line
            )));
        }
        entries.push(HtpasswdEntry {
            line,
            name: name.to_string(),
            hash,
        });
    }
    Ok(entries)
}

/// User names travel in Basic credentials (no `:`) and in headers to the upstream (no control
/// characters), so both are refused at load time.
pub fn validate_user_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty user name".to_string());
    }
    if name.len() > 256 {
        return Err("user name longer than 256 bytes".to_string());
    }
    if name.contains(':') || name.chars().any(char::is_control) {
        return Err(format!(
            "invalid user name {name:?}: no ':' or control characters allowed"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BCRYPT: &str = "$2b$04$EGdrhbKUv8Oc9vGiXX0HQOxSg445d458Muh7DAHskb6QbtCvdxcie";

    #[test]
    fn accepts_argon2_and_bcrypt() {
        let argon = PasswordHash::hash_argon2id(b"pw").unwrap();
        let parsed = PasswordHash::parse(&argon).unwrap();
        assert!(parsed.verify(b"pw"));
        assert!(!parsed.verify(b"pW"));
        assert!(matches!(
            PasswordHash::parse(BCRYPT),
            Ok(PasswordHash::Bcrypt(_))
        ));
    }

    #[test]
    fn rejects_weak_and_malformed_hashes() {
        for bad in [
            "",
            "plaintext",
            "$apr1$abc$def",
            "{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=",
            "$1$salt$hash",
            "$6$salt$hash",
            "$argon2id$garbage",
            "$2b$04$short",
            "$2b$99$EGdrhbKUv8Oc9vGiXX0HQOxSg445d458Muh7DAHskb6QbtCvdxcie",
        ] {
            assert!(
                PasswordHash::parse(bad).is_err(),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn htpasswd_names_the_bad_line() {
        let text = format!("# users\ncarol:{BCRYPT}\n\ndave:$apr1$x$y\n");
        let err = parse_htpasswd(&text).unwrap_err();
        assert_eq!(err.line, 4);
        assert!(err.message.contains("MD5"), "{}", err.message);
        let dup = format!("carol:{BCRYPT}\ncarol:{BCRYPT}\n");
        assert_eq!(parse_htpasswd(&dup).unwrap_err().line, 2);
        assert!(parse_htpasswd("nocolon\n").is_err());
        assert_eq!(parse_htpasswd(&format!("carol:{BCRYPT}")).unwrap().len(), 1);
    }

    #[test]
    fn debug_never_shows_the_hash() {
        let hash = PasswordHash::parse(BCRYPT).unwrap();
        assert!(!format!("{hash:?}").contains("EGdr"));
    }
}
