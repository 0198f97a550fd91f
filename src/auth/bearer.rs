//! Bearer tokens (RFC 6750): static API tokens, stored only as their SHA-256, and JWTs.
//!
//! Which kind a token is: with `[jwt]` configured, a token shaped like a JWT (three base64url
//! parts whose first is a JSON header with an `alg`) is verified as a JWT and never looked up
//! as a static token; anything else is looked up among `[[tokens]]`. Static tokens from
//! `portcullis gen-token` contain no dots, so the two never overlap.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::jwt::Token;
use super::Principal;
use crate::auth::Scheme;
use crate::config::{Config, StaticToken};
use crate::error::{Denial, DenyReason};

/// Checks a well-formed bearer token against `[jwt]` and `[[tokens]]`.
pub async fn authenticate(config: &Config, token: &str) -> Result<Principal, Denial> {
    let now = unix_now();
    let jwt = Token::parse(token);
    if let (Some(verifier), Some(jwt)) = (&config.jwt, &jwt) {
        return verifier
            .verify(jwt, now)
            .await
            .map(|id| Principal::Jwt(Arc::new(id)));
    }
    match check_static(&config.tokens, token, now) {
        Ok(found) => Ok(Principal::Token(found)),
        Err(denial) if denial.reason == DenyReason::UnknownToken && jwt.is_some() => {
            Err(Denial::of(
                Scheme::Bearer,
                DenyReason::UnknownToken,
                "the token is a JWT, but JWTs are not accepted ([jwt] is not configured)",
            ))
        }
        Err(denial) => Err(denial),
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Finds the static token whose SHA-256 matches. Every configured digest is compared, in
/// constant time, so the time taken does not depend on which (if any) matched.
pub fn check_static(
    tokens: &[Arc<StaticToken>],
    token: &str,
    now: i64,
) -> Result<Arc<StaticToken>, Denial> {
    let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    let mut found: Option<&Arc<StaticToken>> = None;
    for candidate in tokens {
        if bool::from(candidate.digest.ct_eq(&digest)) {
            found = Some(candidate);
        }
    }
    let Some(token) = found else {
        return Err(Denial::of(
            Scheme::Bearer,
            DenyReason::UnknownToken,
            "the token is not configured",
        ));
    };
    if token.expires.is_some_and(|expires| now >= expires) {
        return Err(Denial::of(
            Scheme::Bearer,
            DenyReason::TokenExpired,
            format!("token {:?} has expired", token.name),
        ));
    }
    Ok(token.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(name: &str, secret: &str, expires: Option<i64>) -> Arc<StaticToken> {
        Arc::new(StaticToken {
            name: name.to_string(),
            digest: Sha256::digest(secret.as_bytes()).into(),
            groups: Vec::new(),
            scopes: Vec::new(),
            expires,
        })
    }

    #[test]
    fn finds_expires_and_refuses() {
        let tokens = vec![token("a", "tok-a", None), token("b", "tok-b", Some(100))];
        assert_eq!(check_static(&tokens, "tok-a", 1000).unwrap().name, "a");
        assert_eq!(check_static(&tokens, "tok-b", 99).unwrap().name, "b");
        assert_eq!(
            check_static(&tokens, "tok-b", 100).unwrap_err().reason,
            DenyReason::TokenExpired
        );
        assert_eq!(
            check_static(&tokens, "tok-c", 0).unwrap_err().reason,
            DenyReason::UnknownToken
        );
    }
}
