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

    /// What verifying against this hash costs: its algorithm and parameters.
    pub fn cost(&self) -> HashCost {
        match self {
            PasswordHash::Argon2(s) => Phc::new(s)
                .ok()
                .and_then(|phc| {
                    let params = argon2::Params::try_from(&phc).ok()?;
                    Some(HashCost::Argon2 {
                        algorithm: phc.algorithm.as_str().to_string(),
                        version: phc.version.unwrap_or(0x13),
                        m: params.m_cost(),
                        t: params.t_cost(),
                        p: params.p_cost(),
                        output_len: phc.hash.map_or(32, |h| h.len()),
                    })
                })
                .unwrap_or_else(HashCost::default_argon2id),
            PasswordHash::Bcrypt(s) => HashCost::Bcrypt {
                cost: s.get(4..6).and_then(|c| c.parse().ok()).unwrap_or(12),
            },
        }
    }

    /// A hash of the given cost that no password matches: a random digest under a random salt,
    /// well-formed so that verifying against it does all the work a real hash does (a
    /// malformed one would fail fast, and the speed would tell).
    pub fn dummy(cost: &HashCost) -> PasswordHash {
        let mut random = [0u8; 64];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut random);
        match cost {
            HashCost::Argon2 {
                algorithm,
                version,
                m,
                t,
                p,
                output_len,
            } => {
                let salt = argon2::password_hash::SaltString::generate(&mut rand::rngs::OsRng);
                let digest =
                    argon2::password_hash::Output::new(&random[..(*output_len).clamp(10, 64)])
                        .map(|o| o.to_string())
                        .unwrap_or_default();
                let text = format!(
                    "${algorithm}$v={version}$m={m},t={t},p={p}${}${digest}",
                    salt.as_str()
                );
                PasswordHash::parse(&text).unwrap_or_else(|_| Self::default_dummy())
            }
            HashCost::Bcrypt { cost } => {
                // bcrypt's last salt and digest characters carry padding bits that must be
                // zero, so the string comes from bcrypt itself at its cheapest cost, then
                // takes the configured cost: verifying it then runs the full 2^cost rounds.
                let unguessable = base64::Engine::encode(
                    &base64::engine::general_purpose::STANDARD_NO_PAD,
                    &random[..33],
                );
                let cheap = bcrypt::hash(unguessable, 4).unwrap_or_default();
                let text = match cheap.get(..4).zip(cheap.get(6..)) {
                    Some((prefix, rest)) => format!("{prefix}{cost:02}{rest}"),
                    None => String::new(),
                };
                PasswordHash::parse(&text).unwrap_or_else(|_| Self::default_dummy())
            }
        }
    }

    /// The dummy for the configured users: of the cost most of them have (ties go to the
    /// costlier kind, so that the slowest common answer is the one an unknown name gets), or
    /// argon2id with the default parameters when there are none.
    pub fn dummy_for<'a>(hashes: impl IntoIterator<Item = &'a PasswordHash>) -> PasswordHash {
        let mut counts: Vec<(HashCost, usize)> = Vec::new();
        for hash in hashes {
            let cost = hash.cost();
            match counts.iter_mut().find(|(c, _)| *c == cost) {
                Some((_, n)) => *n += 1,
                None => counts.push((cost, 1)),
            }
        }
        let common = counts
            .into_iter()
            .max_by(|(a, n), (b, m)| n.cmp(m).then_with(|| a.weight().cmp(&b.weight())))
            .map_or_else(HashCost::default_argon2id, |(cost, _)| cost);
        Self::dummy(&common)
    }

    fn default_dummy() -> PasswordHash {
        PasswordHash::Argon2(DEFAULT_DUMMY.to_string())
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

/// An argon2id hash (default parameters) of a random password nobody knows: the dummy when a
/// dummy of the configured cost cannot be built.
const DEFAULT_DUMMY: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$3wEPxnFrM3+kbMyuzKHcCKbQlW4Q29q7JMoL6kBKmBU";

/// The algorithm and parameters of a stored hash: what one verification against it costs.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum HashCost {
    /// argon2id or argon2i.
    Argon2 {
        /// `argon2id` or `argon2i`.
        algorithm: String,
        /// The argon2 version (0x13 = 19).
        version: u32,
        /// Memory in KiB.
        m: u32,
        /// Passes.
        t: u32,
        /// Lanes.
        p: u32,
        /// Digest length in bytes.
        output_len: usize,
    },
    /// bcrypt.
    Bcrypt {
        /// log2 of the rounds.
        cost: u32,
    },
}

impl HashCost {
    /// argon2id with the argon2 crate's default parameters (what `hash-password` makes).
    pub fn default_argon2id() -> HashCost {
        let params = argon2::Params::default();
        HashCost::Argon2 {
            algorithm: "argon2id".to_string(),
            version: 0x13,
            m: params.m_cost(),
            t: params.t_cost(),
            p: params.p_cost(),
            output_len: argon2::Params::DEFAULT_OUTPUT_LEN,
        }
    }

    /// A rough order of cost, only to break ties between equally common kinds.
    fn weight(&self) -> u64 {
        match self {
            HashCost::Argon2 { m, t, .. } => u64::from(*m) * u64::from(*t),
            HashCost::Bcrypt { cost } => 1u64 << (*cost).min(40),
        }
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

    /// Whether verifying against `hash` runs the full algorithm (a parse error would return
    /// at once, and its speed would tell a dummy apart).
    fn verifies_in_full(hash: &PasswordHash) -> bool {
        match hash {
            PasswordHash::Argon2(s) => {
                let phc = Phc::new(s).unwrap();
                matches!(
                    Argon2::default().verify_password(b"guess", &phc),
                    Err(argon2::password_hash::Error::Password)
                )
            }
            PasswordHash::Bcrypt(s) => matches!(bcrypt::verify("guess", s), Ok(false)),
        }
    }

    #[test]
    fn the_dummy_has_the_algorithm_and_cost_of_most_users() {
        let bcrypt12 = || PasswordHash::parse(&bcrypt::hash("pw", 12).unwrap()).unwrap();
        let argon_default =
            PasswordHash::parse(&PasswordHash::hash_argon2id(b"pw").unwrap()).unwrap();
        let argon_light = PasswordHash::parse(
            "$argon2id$v=19$m=8192,t=3,p=2$c29tZXNhbHRzb21lc2FsdA$3wEPxnFrM3+kbMyuzKHcCKbQlW4Q29q7JMoL6kBKmBU",
        )
        .unwrap();

        // Only bcrypt-12 users: the dummy is bcrypt, cost 12.
        let users = [bcrypt12(), bcrypt12()];
        let dummy = PasswordHash::dummy_for(&users);
        assert!(matches!(dummy, PasswordHash::Bcrypt(_)), "{dummy:?}");
        assert_eq!(dummy.cost(), HashCost::Bcrypt { cost: 12 });
        assert!(verifies_in_full(&dummy));
        assert!(!dummy.verify(b"pw"));

        // Most users argon2id m=8192,t=3,p=2: the dummy has those parameters.
        let users = [argon_light.clone(), bcrypt12(), argon_light.clone()];
        let dummy = PasswordHash::dummy_for(&users);
        assert_eq!(dummy.cost(), argon_light.cost());
        assert!(verifies_in_full(&dummy));
        assert_ne!(dummy, argon_light, "a fresh salt and digest");

        // A bcrypt cost 5 user among cost 12 users: the cost 12 dummy.
        let cheap = PasswordHash::parse(&bcrypt::hash("pw", 5).unwrap()).unwrap();
        let users = [cheap, bcrypt12(), bcrypt12()];
        assert_eq!(
            PasswordHash::dummy_for(&users).cost(),
            HashCost::Bcrypt { cost: 12 }
        );

        // No users at all: argon2id with the default parameters.
        let dummy = PasswordHash::dummy_for(&[]);
        assert_eq!(dummy.cost(), argon_default.cost());
        assert_eq!(dummy.cost(), HashCost::default_argon2id());
        assert!(verifies_in_full(&dummy));
    }

    #[test]
    fn debug_never_shows_the_hash() {
        let hash = PasswordHash::parse(BCRYPT).unwrap();
        assert!(!format!("{hash:?}").contains("EGdr"));
    }
}
