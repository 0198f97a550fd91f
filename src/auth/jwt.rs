//! Bearer JWTs (RFC 7519): verification. The `[jwt]` section is validated and its keys
//! loaded by `config::jwt`.
//!
//! A token is checked in this order: its header's `alg` must be in `jwt.algorithms`
//! (`none` never is: it cannot even be configured); the key is chosen by the algorithm's
//! family, so an HMAC algorithm is only ever verified with `hmac_secret_file` and an
//! asymmetric one only with a JWKS public key (never the algorithm-confusion attack); then the
//! signature, then the header's `typ` (RFC 9068 §4: only the `token_types` listed are access
//! tokens), then `iss`, `aud`, `exp` and `nbf` (with `leeway`); last the identity claims.
//! Every refusal names what was wrong in the log detail, never the token itself.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::jwks::{printable, KeySet, RemoteJwks};
use crate::auth::Scheme;
use crate::error::{Denial, DenyReason};

/// Default tolerated clock skew for `exp` and `nbf`.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);
/// Default interval between fetches of `jwks_url`.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(15 * 60);
/// Smallest HMAC secret accepted: 256 bits.
pub const MIN_HMAC_SECRET: usize = 32;
/// Default `token_types`: RFC 9068 access tokens and the generic type most issuers send.
pub const DEFAULT_TOKEN_TYPES: [&str; 2] = ["at+jwt", "JWT"];

/// The caller a valid JWT names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtIdentity {
    /// From `user_claim`.
    pub user: String,
    /// From `groups_claim`.
    pub groups: Vec<String>,
    /// From `scope_claim`.
    pub scopes: Vec<String>,
}

/// The `[jwt]` settings that are not keys.
#[derive(Debug, Clone)]
pub struct JwtSettings {
    /// Required `iss`, compared exactly.
    pub issuer: String,
    /// Required member of `aud`.
    pub audience: String,
    /// Accepted `alg` values.
    pub algorithms: Vec<Algorithm>,
    /// Tolerated clock skew, in seconds.
    pub leeway: i64,
    /// Claim holding the user name.
    pub user_claim: String,
    /// Claim holding the groups.
    pub groups_claim: String,
    /// Claim holding the scopes.
    pub scope_claim: String,
    /// Accepted `typ` values, lowercase and without an `application/` prefix.
    pub token_types: Vec<String>,
}

/// A `typ` value as compared: RFC 7515 §4.1.9 media types are case-insensitive and may omit
/// their `application/` prefix.
pub fn normalize_token_type(typ: &str) -> String {
    let lower = typ.trim().to_ascii_lowercase();
    match lower.strip_prefix("application/") {
        Some(rest) => rest.to_string(),
        None => lower,
    }
}

/// Where verification keys come from.
pub enum KeySource {
    /// `hmac_secret_file`: one shared secret, for HS* only.
    Hmac(DecodingKey),
    /// `jwks_file`: public keys read at load time.
    Jwks(KeySet),
    /// `jwks_url`: public keys fetched and refreshed at run time.
    Remote(Box<RemoteJwks>),
}

impl fmt::Debug for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::Hmac(_) => f.write_str("Hmac(<secret>)"),
            KeySource::Jwks(set) => f.debug_tuple("Jwks").field(set).finish(),
            KeySource::Remote(remote) => f.debug_tuple("Remote").field(remote).finish(),
        }
    }
}

/// Verifies bearer JWTs against the `[jwt]` configuration.
#[derive(Debug)]
pub struct JwtVerifier {
    settings: JwtSettings,
    source: KeySource,
    /// One signature-only validation per allowed algorithm (claims are checked here, against
    /// an explicit clock).
    validations: Vec<(Algorithm, Validation)>,
}

/// The parts of a JWS compact serialisation that decide how to verify it.
#[derive(Debug)]
pub struct Token<'a> {
    raw: &'a str,
    alg: String,
    kid: Option<String>,
    crit: bool,
    /// The header's `typ`: `None` when absent, `Some(None)` when not a string.
    typ: Option<Option<String>>,
}

#[derive(Deserialize)]
struct RawHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<Value>,
    #[serde(default)]
    typ: Option<Value>,
}

impl<'a> Token<'a> {
    /// Reads the header of `raw` if it is shaped like a JWT: three base64url parts separated
    /// by dots, the first a JSON object with a string `alg`. Anything else is not a JWT (and
    /// is looked up as a static token instead).
    pub fn parse(raw: &'a str) -> Option<Token<'a>> {
        let mut parts = raw.split('.');
        let (header, _payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || header.is_empty() {
            return None;
        }
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header)
            .ok()?;
        let header: RawHeader = serde_json::from_slice(&bytes).ok()?;
        Some(Token {
            raw,
            alg: header.alg,
            kid: header.kid,
            crit: header.crit.is_some(),
            typ: header.typ.map(|t| t.as_str().map(str::to_string)),
        })
    }

    /// The header's `alg`, as sent.
    pub fn alg(&self) -> &str {
        &self.alg
    }

    /// The header's `kid`, if any.
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }
}

/// Why verification failed: an unknown `kid` may succeed after the key set is refreshed.
enum Failure {
    UnknownKey(Denial),
    Denied(Denial),
}

impl From<Denial> for Failure {
    fn from(d: Denial) -> Self {
        Failure::Denied(d)
    }
}

fn deny(reason: DenyReason, detail: impl Into<std::borrow::Cow<'static, str>>) -> Denial {
    Denial::of(Scheme::Bearer, reason, detail)
}

impl JwtVerifier {
    /// A verifier from settings and a key source. The caller (config validation) has checked
    /// that the algorithms fit the source.
    pub fn new(settings: JwtSettings, source: KeySource) -> JwtVerifier {
        let validations = settings
            .algorithms
            .iter()
            .map(|&alg| {
                let mut validation = Validation::new(alg);
                validation.required_spec_claims.clear();
                validation.validate_exp = false;
                validation.validate_nbf = false;
                validation.validate_aud = false;
                validation.leeway = 0;
                (alg, validation)
            })
            .collect();
        JwtVerifier {
            settings,
            source,
            validations,
        }
    }

    /// The settings.
    pub fn settings(&self) -> &JwtSettings {
        &self.settings
    }

    /// Whether keys are available: always with a file or a secret; with `jwks_url`, once the
    /// first fetch has succeeded. For `/readyz`.
    pub fn is_ready(&self) -> bool {
        match &self.source {
            KeySource::Remote(remote) => remote.is_ready(),
            KeySource::Hmac(_) | KeySource::Jwks(_) => true,
        }
    }

    /// Starts fetching `jwks_url` in the background (first fetch with backoff, then every
    /// `jwks_refresh`). Does nothing for the other key sources, when already started, or
    /// outside a tokio runtime. The task ends when the verifier is dropped (on reload).
    pub fn spawn_refresh(self: &Arc<Self>) {
        if matches!(self.source, KeySource::Remote(_)) {
            RemoteJwks::start(self, |verifier| match &verifier.source {
                KeySource::Remote(remote) => remote.as_ref(),
                _ => unreachable!("checked before starting"),
            });
        }
    }

    /// Verifies a token at `now` (Unix seconds). With `jwks_url`, a `kid` missing from the
    /// key set triggers one refresh (at most one a minute) before the token is refused.
    pub async fn verify(&self, token: &Token<'_>, now: i64) -> Result<JwtIdentity, Denial> {
        match &self.source {
            KeySource::Remote(remote) => match self.verify_with(token, now, Some(&remote.keys())) {
                Err(Failure::UnknownKey(denial)) => {
                    if !remote.refresh_for_unknown_kid().await {
                        return Err(denial);
                    }
                    self.verify_with(token, now, Some(&remote.keys()))
                        .map_err(Failure::into_denial)
                }
                other => other.map_err(Failure::into_denial),
            },
            _ => self.verify_now(token, now),
        }
    }

    /// Verifies without ever fetching keys (the current key set is used as it is).
    pub fn verify_now(&self, token: &Token<'_>, now: i64) -> Result<JwtIdentity, Denial> {
        let result = match &self.source {
            KeySource::Remote(remote) => self.verify_with(token, now, Some(&remote.keys())),
            KeySource::Jwks(set) => self.verify_with(token, now, Some(set)),
            KeySource::Hmac(_) => self.verify_with(token, now, None),
        };
        result.map_err(Failure::into_denial)
    }

    fn verify_with(
        &self,
        token: &Token<'_>,
        now: i64,
        keys: Option<&KeySet>,
    ) -> Result<JwtIdentity, Failure> {
        let alg = self.allowed_algorithm(token)?;
        if token.crit {
            return Err(deny(
                DenyReason::BadSignature,
                "the token has a \"crit\" header, which is not supported",
            )
            .into());
        }
        let validation = self
            .validations
            .iter()
            .find(|(a, _)| *a == alg)
            .map(|(_, v)| v)
            .expect("a validation exists for every allowed algorithm");
        let claims = match (&self.source, alg.family()) {
            (KeySource::Hmac(secret), AlgorithmFamily::Hmac) => {
                verify_signature(token.raw, secret, validation)?
            }
            (KeySource::Hmac(_), _) | (_, AlgorithmFamily::Hmac) => {
                // Config validation makes this unreachable; refuse rather than guess.
                return Err(deny(
                    DenyReason::DisallowedAlgorithm,
                    "no key of this algorithm's kind is configured",
                )
                .into());
            }
            (_, _) => {
                let keys = keys.expect("asymmetric sources have a key set");
                self.verify_with_set(token, alg, keys, validation)?
            }
        };
        // After the signature: only a token the issuer signed is judged by its type.
        self.check_type(token)?;
        self.check_claims(&claims, now)?;
        Ok(self.identity(&claims)?)
    }

    /// RFC 9068 §4: an ID token, a logout token or a DPoP proof signed by the same issuer is
    /// no access token, and the header's `typ` is what tells them apart.
    fn check_type(&self, token: &Token<'_>) -> Result<(), Denial> {
        let listed = |typ: &str| self.settings.token_types.iter().any(|t| t == typ);
        match &token.typ {
            None if listed("jwt") => Ok(()),
            None => Err(deny(
                DenyReason::WrongTokenType,
                "the token has no typ header, and jwt.token_types does not list \"JWT\"",
            )),
            Some(None) => Err(deny(
                DenyReason::WrongTokenType,
                "the token's typ header is not a string",
            )),
            Some(Some(typ)) if listed(&normalize_token_type(typ)) => Ok(()),
            Some(Some(typ)) => Err(deny(
                DenyReason::WrongTokenType,
                format!(
                    "the token's typ {:?} is not in jwt.token_types",
                    printable(typ, 32)
                ),
            )),
        }
    }

    fn allowed_algorithm(&self, token: &Token<'_>) -> Result<Algorithm, Denial> {
        let name = token.alg();
        if name.eq_ignore_ascii_case("none") {
            return Err(deny(
                DenyReason::DisallowedAlgorithm,
                "the token is unsigned (alg \"none\"), which is never accepted",
            ));
        }
        match Algorithm::from_str(name) {
            Ok(alg) if self.settings.algorithms.contains(&alg) => Ok(alg),
            _ => Err(deny(
                DenyReason::DisallowedAlgorithm,
                format!(
                    "the token's alg {:?} is not in jwt.algorithms",
                    printable(name, 16)
                ),
            )),
        }
    }

    fn verify_with_set(
        &self,
        token: &Token<'_>,
        alg: Algorithm,
        keys: &KeySet,
        validation: &Validation,
    ) -> Result<Map<String, Value>, Failure> {
        let mut tried = 0;
        let mut last = None;
        for key in keys.candidates(alg, token.kid()) {
            tried += 1;
            match verify_signature(token.raw, &key.key, validation) {
                Ok(claims) => return Ok(claims),
                Err(denial) => last = Some(denial),
            }
        }
        if tried > 0 {
            return Err(last.expect("at least one key was tried").into());
        }
        let detail = match token.kid() {
            Some(kid) if keys.has_kid(kid) => {
                return Err(deny(
                    DenyReason::BadSignature,
                    format!(
                        "the key with kid {:?} is not for alg {alg:?}",
                        printable(kid, 64)
                    ),
                )
                .into())
            }
            Some(kid) if keys.is_empty() => {
                format!("no keys are loaded yet (kid {:?})", printable(kid, 64))
            }
            Some(kid) => format!("no key has the token's kid {:?}", printable(kid, 64)),
            None if keys.is_empty() => "no keys are loaded yet".to_string(),
            None => format!("no key can verify alg {alg:?}"),
        };
        Err(Failure::UnknownKey(deny(DenyReason::BadSignature, detail)))
    }

    fn check_claims(&self, claims: &Map<String, Value>, now: i64) -> Result<(), Denial> {
        let settings = &self.settings;
        match claims.get("iss") {
            Some(Value::String(iss)) if *iss == settings.issuer => {}
            Some(Value::String(iss)) => {
                return Err(deny(
                    DenyReason::BadIssuer,
                    format!(
                        "the token's iss {:?} is not jwt.issuer",
                        printable(iss, 128)
                    ),
                ))
            }
            Some(_) => {
                return Err(deny(
                    DenyReason::BadIssuer,
                    "the token's iss is not a string",
                ))
            }
            None => return Err(deny(DenyReason::BadIssuer, "the token has no iss claim")),
        }
        let audience_ok = match claims.get("aud") {
            Some(Value::String(aud)) => *aud == settings.audience,
            Some(Value::Array(auds)) => auds
                .iter()
                .any(|a| a.as_str() == Some(settings.audience.as_str())),
            Some(_) => false,
            None => return Err(deny(DenyReason::BadAudience, "the token has no aud claim")),
        };
        if !audience_ok {
            return Err(deny(
                DenyReason::BadAudience,
                "the token's aud does not include jwt.audience",
            ));
        }
        let exp = match claims.get("exp") {
            None => {
                return Err(deny(
                    DenyReason::TokenExpired,
                    "the token has no exp claim, so it would never expire",
                ))
            }
            Some(value) => numeric_date(value).ok_or_else(|| {
                deny(
                    DenyReason::TokenExpired,
                    "the token's exp is not a NumericDate",
                )
            })?,
        };
        if now.saturating_sub(settings.leeway) >= exp {
            return Err(deny(
                DenyReason::TokenExpired,
                format!(
                    "the token expired {}s ago (leeway {}s)",
                    now.saturating_sub(exp),
                    settings.leeway
                ),
            ));
        }
        if let Some(value) = claims.get("nbf") {
            let nbf = numeric_date(value).ok_or_else(|| {
                deny(
                    DenyReason::TokenNotYetValid,
                    "the token's nbf is not a NumericDate",
                )
            })?;
            if now.saturating_add(settings.leeway) < nbf {
                return Err(deny(
                    DenyReason::TokenNotYetValid,
                    format!(
                        "the token is valid only in {}s (leeway {}s)",
                        nbf.saturating_sub(now),
                        settings.leeway
                    ),
                ));
            }
        }
        Ok(())
    }

    fn identity(&self, claims: &Map<String, Value>) -> Result<JwtIdentity, Denial> {
        let settings = &self.settings;
        let user = match claims.get(&settings.user_claim) {
            Some(Value::String(user)) if usable_name(user) => user.clone(),
            Some(_) => {
                return Err(deny(
                    DenyReason::UnknownToken,
                    format!(
                        "the token's {:?} claim is not a usable user name (a non-empty string of at most 256 printable characters)",
                        settings.user_claim
                    ),
                ))
            }
            None => {
                return Err(deny(
                    DenyReason::UnknownToken,
                    format!("the token has no {:?} claim (jwt.user_claim)", settings.user_claim),
                ))
            }
        };
        let groups = match claims.get(&settings.groups_claim) {
            None | Some(Value::Null) => Vec::new(),
            Some(value) => string_list(value, false)
                .filter(|groups| groups.iter().all(|g| usable_name(g) && !g.contains(',')))
                .ok_or_else(|| {
                    deny(
                        DenyReason::UnknownToken,
                        format!(
                            "the token's {:?} claim is not a list of group names (strings without commas or control characters)",
                            settings.groups_claim
                        ),
                    )
                })?,
        };
        let scopes = match claims.get(&settings.scope_claim) {
            None | Some(Value::Null) => Vec::new(),
            Some(value) => string_list(value, true).ok_or_else(|| {
                deny(
                    DenyReason::UnknownToken,
                    format!(
                        "the token's {:?} claim is neither a space-separated string nor a list of strings",
                        settings.scope_claim
                    ),
                )
            })?,
        };
        Ok(JwtIdentity {
            user,
            groups,
            scopes,
        })
    }
}

impl Failure {
    fn into_denial(self) -> Denial {
        match self {
            Failure::UnknownKey(d) | Failure::Denied(d) => d,
        }
    }
}

/// Checks the signature with one key; the claims come back unchecked.
fn verify_signature(
    raw: &str,
    key: &DecodingKey,
    validation: &Validation,
) -> Result<Map<String, Value>, Denial> {
    match jsonwebtoken::decode::<Map<String, Value>>(raw, key, validation) {
        Ok(data) => Ok(data.claims),
        Err(err) => Err(match err.kind() {
            ErrorKind::InvalidSignature => {
                deny(DenyReason::BadSignature, "the signature does not verify")
            }
            ErrorKind::InvalidAlgorithm
            | ErrorKind::InvalidAlgorithmName
            | ErrorKind::UnsupportedAlgorithm => deny(
                DenyReason::DisallowedAlgorithm,
                "the token's alg does not fit the key",
            ),
            ErrorKind::Base64(_) => {
                deny(DenyReason::BadSignature, "the token is not valid base64url")
            }
            ErrorKind::InvalidEcdsaKey
            | ErrorKind::InvalidEddsaKey
            | ErrorKind::InvalidRsaKey(_)
            | ErrorKind::InvalidKeyFormat => {
                deny(DenyReason::BadSignature, "the key cannot verify this token")
            }
            _ => deny(
                DenyReason::UnknownToken,
                "the token's payload is not a JSON object of claims",
            ),
        }),
    }
}

/// RFC 7519 NumericDate: seconds since the epoch, possibly fractional.
fn numeric_date(value: &Value) -> Option<i64> {
    if let Some(n) = value.as_i64() {
        return Some(n);
    }
    let f = value.as_f64()?;
    (f.is_finite() && f.abs() < 1e15).then(|| f.floor() as i64)
}

/// A name that can be forwarded in a header and matched in allow lists.
fn usable_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 256 && !name.chars().any(char::is_control)
}

/// An array of strings, or a single string (split on whitespace when `split` is set).
fn string_list(value: &Value, split: bool) -> Option<Vec<String>> {
    match value {
        Value::String(s) if split => Some(s.split_whitespace().map(str::to_string).collect()),
        Value::String(s) => Some(vec![s.clone()]),
        Value::Array(items) => items
            .iter()
            .map(|i| i.as_str().map(str::to_string))
            .collect(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-test";
    const NOW: i64 = 1_800_000_000;

    fn settings(algorithms: Vec<Algorithm>) -> JwtSettings {
        JwtSettings {
            issuer: "https://id.example.com/".to_string(),
            audience: "portcullis".to_string(),
            algorithms,
            leeway: 30,
            user_claim: "sub".to_string(),
            groups_claim: "groups".to_string(),
            scope_claim: "scope".to_string(),
            token_types: DEFAULT_TOKEN_TYPES
                .iter()
                .map(|t| normalize_token_type(t))
                .collect(),
        }
    }

    fn hmac_verifier() -> JwtVerifier {
        JwtVerifier::new(
            settings(vec![Algorithm::HS256, Algorithm::HS512]),
            KeySource::Hmac(DecodingKey::from_secret(SECRET)),
        )
    }

    fn claims() -> Value {
        json!({
            "iss": "https://id.example.com/",
            "aud": "portcullis",
            "sub": "alice",
            "exp": NOW + 300,
            "groups": ["admins", "ops"],
            "scope": "read write",
        })
    }

    fn sign(alg: Algorithm, claims: &Value) -> String {
        encode(&Header::new(alg), claims, &EncodingKey::from_secret(SECRET)).unwrap()
    }

    fn check(verifier: &JwtVerifier, token: &str) -> Result<JwtIdentity, Denial> {
        let token = Token::parse(token).expect("JWT-shaped");
        verifier.verify_now(&token, NOW)
    }

    fn reason(verifier: &JwtVerifier, token: &str) -> DenyReason {
        check(verifier, token).unwrap_err().reason
    }

    fn with(mut claims: Value, key: &str, value: Value) -> Value {
        claims[key] = value;
        claims
    }

    fn without(mut claims: Value, key: &str) -> Value {
        claims.as_object_mut().unwrap().remove(key);
        claims
    }

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    #[test]
    fn a_valid_token_yields_its_identity() {
        let v = hmac_verifier();
        let id = check(&v, &sign(Algorithm::HS256, &claims())).unwrap();
        assert_eq!(id.user, "alice");
        assert_eq!(id.groups, ["admins", "ops"]);
        assert_eq!(id.scopes, ["read", "write"]);
        let id = check(
            &v,
            &sign(
                Algorithm::HS512,
                &with(claims(), "scope", json!(["a", "b"])),
            ),
        )
        .unwrap();
        assert_eq!(id.scopes, ["a", "b"]);
        let id = check(
            &v,
            &sign(
                Algorithm::HS256,
                &without(without(claims(), "groups"), "scope"),
            ),
        )
        .unwrap();
        assert!(id.groups.is_empty() && id.scopes.is_empty());
    }

    #[test]
    fn other_claim_names_can_be_configured() {
        let mut s = settings(vec![Algorithm::HS256]);
        s.user_claim = "email".into();
        s.groups_claim = "roles".into();
        s.scope_claim = "scp".into();
        let v = JwtVerifier::new(s, KeySource::Hmac(DecodingKey::from_secret(SECRET)));
        let c = with(
            with(with(claims(), "email", json!("a@x")), "roles", json!(["r"])),
            "scp",
            json!(["s"]),
        );
        let id = check(&v, &sign(Algorithm::HS256, &c)).unwrap();
        assert_eq!(
            (id.user.as_str(), id.groups, id.scopes),
            ("a@x", vec!["r".to_string()], vec!["s".to_string()])
        );
    }

    #[test]
    fn unlisted_algorithms_and_none_are_refused() {
        let v = hmac_verifier();
        assert_eq!(
            reason(&v, &sign(Algorithm::HS384, &claims())),
            DenyReason::DisallowedAlgorithm
        );
        let payload = b64(claims().to_string().as_bytes());
        for alg in ["none", "None", "NONE", "RS256", "XX999", ""] {
            let header = b64(json!({"alg": alg, "typ": "JWT"}).to_string().as_bytes());
            let token = format!("{header}.{payload}.");
            assert_eq!(reason(&v, &token), DenyReason::DisallowedAlgorithm, "{alg}");
        }
    }

    #[test]
    fn time_claims_use_the_leeway() {
        let v = hmac_verifier();
        let at = |key: &str, t: i64| sign(Algorithm::HS256, &with(claims(), key, json!(t)));
        assert!(check(&v, &at("exp", NOW - 29)).is_ok());
        assert_eq!(reason(&v, &at("exp", NOW - 30)), DenyReason::TokenExpired);
        assert_eq!(reason(&v, &at("exp", NOW - 3600)), DenyReason::TokenExpired);
        assert!(check(&v, &at("nbf", NOW + 30)).is_ok());
        assert_eq!(
            reason(&v, &at("nbf", NOW + 31)),
            DenyReason::TokenNotYetValid
        );
        assert_eq!(
            reason(&v, &sign(Algorithm::HS256, &without(claims(), "exp"))),
            DenyReason::TokenExpired
        );
        assert_eq!(
            reason(
                &v,
                &sign(Algorithm::HS256, &with(claims(), "exp", json!("soon")))
            ),
            DenyReason::TokenExpired
        );
        assert!(check(
            &v,
            &sign(
                Algorithm::HS256,
                &with(claims(), "exp", json!((NOW + 10) as f64 + 0.5))
            )
        )
        .is_ok());
    }

    #[test]
    fn issuer_and_audience_must_match() {
        let v = hmac_verifier();
        let token = |c: Value| sign(Algorithm::HS256, &c);
        assert_eq!(
            reason(&v, &token(with(claims(), "iss", json!("https://evil/")))),
            DenyReason::BadIssuer
        );
        assert_eq!(
            reason(&v, &token(without(claims(), "iss"))),
            DenyReason::BadIssuer
        );
        assert_eq!(
            reason(&v, &token(with(claims(), "aud", json!("other")))),
            DenyReason::BadAudience
        );
        assert_eq!(
            reason(&v, &token(without(claims(), "aud"))),
            DenyReason::BadAudience
        );
        assert!(check(
            &v,
            &token(with(claims(), "aud", json!(["other", "portcullis"])))
        )
        .is_ok());
        assert_eq!(
            reason(&v, &token(with(claims(), "aud", json!(["other"])))),
            DenyReason::BadAudience
        );
    }

    #[test]
    fn tampering_breaks_the_signature() {
        let v = hmac_verifier();
        let token = sign(Algorithm::HS256, &claims());
        let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
        parts[1] = b64(with(claims(), "sub", json!("root")).to_string().as_bytes());
        assert_eq!(reason(&v, &parts.join(".")), DenyReason::BadSignature);
        let other = encode(
            &Header::new(Algorithm::HS256),
            &claims(),
            &EncodingKey::from_secret(b"another secret of 32 bytes or more!!"),
        )
        .unwrap();
        assert_eq!(reason(&v, &other), DenyReason::BadSignature);
        let unsigned = format!(
            "{}.{}.",
            token.split('.').next().unwrap(),
            token.split('.').nth(1).unwrap()
        );
        assert_eq!(reason(&v, &unsigned), DenyReason::BadSignature);
    }

    #[test]
    fn identity_claims_are_validated() {
        let v = hmac_verifier();
        let token = |c: Value| sign(Algorithm::HS256, &c);
        assert_eq!(
            reason(&v, &token(without(claims(), "sub"))),
            DenyReason::UnknownToken
        );
        assert_eq!(
            reason(&v, &token(with(claims(), "sub", json!("")))),
            DenyReason::UnknownToken
        );
        assert_eq!(
            reason(&v, &token(with(claims(), "sub", json!("a\r\nX-Admin: 1")))),
            DenyReason::UnknownToken
        );
        assert_eq!(
            reason(&v, &token(with(claims(), "groups", json!(["a,admins"])))),
            DenyReason::UnknownToken
        );
        assert_eq!(
            reason(&v, &token(with(claims(), "groups", json!([1])))),
            DenyReason::UnknownToken
        );
        assert_eq!(
            reason(&v, &token(with(claims(), "scope", json!(7)))),
            DenyReason::UnknownToken
        );
        let id = check(&v, &token(with(claims(), "groups", json!("solo")))).unwrap();
        assert_eq!(id.groups, ["solo"]);
    }

    #[test]
    fn crit_headers_are_refused() {
        let v = hmac_verifier();
        let mut header = Header::new(Algorithm::HS256);
        header.extras.insert("crit", json!(["b64"]));
        let token = encode(&header, &claims(), &EncodingKey::from_secret(SECRET)).unwrap();
        assert_eq!(reason(&v, &token), DenyReason::BadSignature);
    }

    #[test]
    fn only_jwt_shaped_tokens_parse() {
        assert!(Token::parse(&sign(Algorithm::HS256, &claims())).is_some());
        for not_jwt in [
            "abc",
            "a.b",
            "a.b.c",
            "a.b.c.d",
            "..",
            "eyJhbGciOiJIUzI1NiJ9",
            "e30.e30.x",
        ] {
            assert!(Token::parse(not_jwt).is_none(), "{not_jwt}");
        }
        // {"alg":"HS256"} with two more parts is a JWT, whatever those parts hold.
        let token = Token::parse("eyJhbGciOiJIUzI1NiJ9.x.y").unwrap();
        assert_eq!(token.alg(), "HS256");
        assert_eq!(token.kid(), None);
    }

    #[test]
    fn hmac_algorithms_never_meet_a_public_key() {
        // A JWKS-backed verifier allowing RS256 refuses HS256 outright, even if a confused
        // config tried to allow it: the algorithm's family has no key here.
        let set = KeySet::from_keys(Vec::new());
        let v = JwtVerifier::new(
            settings(vec![Algorithm::RS256, Algorithm::HS256]),
            KeySource::Jwks(set),
        );
        assert_eq!(
            reason(&v, &sign(Algorithm::HS256, &claims())),
            DenyReason::DisallowedAlgorithm
        );
    }

    #[test]
    fn details_never_echo_the_token() {
        let v = hmac_verifier();
        let tokens = [
            sign(Algorithm::HS256, &with(claims(), "exp", json!(NOW - 999))),
            sign(Algorithm::HS384, &claims()),
            sign(Algorithm::HS256, &with(claims(), "iss", json!("x"))),
        ];
        for token in tokens {
            let denial = check(&v, &token).unwrap_err();
            for part in token.split('.') {
                assert!(!denial.detail.contains(part), "{}", denial.detail);
            }
        }
    }
}
