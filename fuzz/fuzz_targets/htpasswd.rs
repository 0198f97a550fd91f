//! The htpasswd parser and password-hash validation (src/auth/password.rs).
//!
//! Properties: never panics; accepted entries have valid, unique user names, line numbers
//! inside the file, and hashes that validate again; an error names a line of the file; and a
//! hash that validates can be verified without panicking (for cheap parameters only, to keep
//! the fuzzer fast).
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::auth::password::{parse_htpasswd, validate_user_name, PasswordHash};

fn cheap(hash: &PasswordHash) -> bool {
    let text = hash.as_str();
    match hash {
        PasswordHash::Bcrypt(_) => text.get(4..6) == Some("04"),
        PasswordHash::Argon2(_) => {
            let Ok(phc) = argon2::password_hash::PasswordHash::new(text) else {
                return false;
            };
            argon2::Params::try_from(&phc)
                .is_ok_and(|p| p.m_cost() <= 512 && p.t_cost() <= 2 && p.p_cost() <= 2)
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let lines = text.lines().count();
    match parse_htpasswd(text) {
        Ok(entries) => {
            let mut names: Vec<&str> = Vec::new();
            for entry in &entries {
                assert!(entry.line >= 1 && entry.line <= lines, "{entry:?}");
                assert!(validate_user_name(&entry.name).is_ok(), "{entry:?}");
                assert!(!names.contains(&entry.name.as_str()), "duplicate {entry:?}");
                names.push(&entry.name);
                let again = PasswordHash::parse(entry.hash.as_str()).expect("validates again");
                assert_eq!(again, entry.hash);
                assert!(
                    !format!("{:?}", entry.hash).contains('$'),
                    "Debug shows the hash"
                );
            }
        }
        Err(err) => {
            assert!(
                err.line >= 1 && err.line <= lines,
                "{err:?} in {lines} lines"
            );
            let _ = err.to_string();
        }
    }
    // Each line as a bare hash, as `[[users]] password_hash` reads it.
    for line in text.lines().take(4) {
        if let Ok(hash) = PasswordHash::parse(line) {
            if cheap(&hash) {
                let _ = hash.verify(b"fuzz");
            }
        }
    }
});
