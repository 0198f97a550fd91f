//! `server.secret_file`: the key signed cookies (known devices) are made with.

use std::fmt;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use rand::RngCore;

/// Fewest bytes a key file must hold: HMAC-SHA256 gains nothing from more, and a shorter
/// secret could be guessed offline from one signed cookie.
pub const MIN_SECRET_BYTES: usize = 32;

/// A signing key. Its bytes never appear in `Debug` output or in any log line.
#[derive(Clone)]
pub struct SecretKey {
    bytes: Arc<[u8]>,
    /// Drawn at random for this process (no `secret_file`), not read from a file.
    random: bool,
}

impl SecretKey {
    /// The key in `path`: at least [`MIN_SECRET_BYTES`] bytes once a trailing newline is
    /// dropped. The error says why, never what the file holds.
    pub fn from_file(path: &Path) -> Result<SecretKey, String> {
        let mut bytes =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if bytes.ends_with(b"\n") {
            bytes.pop();
            if bytes.ends_with(b"\r") {
                bytes.pop();
            }
        }
        if bytes.len() < MIN_SECRET_BYTES {
            return Err(format!(
                "{} holds {} bytes: the key must be at least {MIN_SECRET_BYTES} bytes \
                 (for example: head -c 48 /dev/urandom | base64 > {})",
                path.display(),
                bytes.len(),
                path.display()
            ));
        }
        Ok(SecretKey {
            bytes: bytes.into(),
            random: false,
        })
    }

    /// This process's random key: the same for every config it loads, so a reload without a
    /// `secret_file` keeps the devices it knows; forgotten on restart.
    pub fn per_process() -> SecretKey {
        static KEY: OnceLock<SecretKey> = OnceLock::new();
        KEY.get_or_init(|| {
            let mut bytes = [0u8; MIN_SECRET_BYTES];
            rand::rngs::OsRng.fill_bytes(&mut bytes);
            SecretKey {
                bytes: Arc::new(bytes),
                random: true,
            }
        })
        .clone()
    }

    /// The key's bytes, for a MAC.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Whether the key was drawn at random for this process.
    pub fn is_random(&self) -> bool {
        self.random
    }
}

impl PartialEq for SecretKey {
    /// Whether two configs sign alike (for the reload log); no secret comparison with input
    /// from outside ever goes through here.
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.random {
            f.write_str("SecretKey(<random per process>)")
        } else {
            f.write_str("SecretKey(<from secret_file>)")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_file_needs_32_bytes_and_its_trailing_newline_is_dropped() {
        let dir = std::env::temp_dir().join(format!("portcullis-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let short = dir.join("short");
        std::fs::write(&short, format!("{}\n", "k".repeat(31))).unwrap();
        let err = SecretKey::from_file(&short).unwrap_err();
        assert!(err.contains("holds 31 bytes"), "{err}");
        let good = dir.join("good");
        std::fs::write(&good, format!("{}\r\n", "k".repeat(32))).unwrap();
        let key = SecretKey::from_file(&good).unwrap();
        assert_eq!(key.bytes(), "k".repeat(32).as_bytes());
        assert!(!format!("{key:?}").contains("kk"));
        assert!(SecretKey::from_file(&dir.join("absent"))
            .unwrap_err()
            .contains("cannot read"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_random_key_is_one_per_process() {
        let a = SecretKey::per_process();
        assert_eq!(a, SecretKey::per_process());
        assert!(a.is_random());
        assert_eq!(a.bytes().len(), MIN_SECRET_BYTES);
    }
}
