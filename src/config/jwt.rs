//! `[jwt]` in the config file: validated, its key source opened, and turned into the
//! `auth::jwt::JwtVerifier` that checks tokens. Errors point at the key in the file.

use std::ops::Range;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};

use super::file::JwtSection;
use super::ConfigError;
use crate::auth::jwks::{KeySet, RemoteJwks};
use crate::auth::jwt::{
    normalize_token_type, JwtSettings, JwtVerifier, KeySource, DEFAULT_LEEWAY, DEFAULT_REFRESH,
    DEFAULT_TOKEN_TYPES, MIN_HMAC_SECRET,
};

/// Every algorithm name `jwt.algorithms` accepts, in the order the docs list them.
const ALGORITHM_NAMES: [&str; 12] = [
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256",
    "ES384", "EdDSA",
];

/// Builds a config error at a span of the file, for a dotted key.
pub(super) type ErrorAt<'a> = &'a dyn Fn(Option<Range<usize>>, &str, String) -> ConfigError;

/// What `[jwt]` validation needs from the config loader: paths resolved against the config
/// file's directory, and errors that point at a span of the file.
pub(super) struct LoadContext<'a> {
    /// Resolves a path written in the config.
    pub resolve: &'a dyn Fn(&str) -> PathBuf,
    /// Builds an error at a span, for a dotted key.
    pub error: ErrorAt<'a>,
}

/// Validates `[jwt]` (spanned at `table`) and loads its keys. Returns the verifier and
/// warnings for `check`.
pub(super) fn from_section(
    section: &JwtSection,
    table: Range<usize>,
    ctx: &LoadContext<'_>,
) -> Result<(JwtVerifier, Vec<String>), ConfigError> {
    let err =
        |span: Option<Range<usize>>, key: &str, message: String| (ctx.error)(span, key, message);
    let mut warnings = Vec::new();
    let required = |value: &Option<toml::Spanned<String>>,
                    key: &str,
                    what: &str|
     -> Result<String, ConfigError> {
        match value {
            None => Err(err(
                Some(table.clone()),
                &format!("jwt.{key}"),
                format!("`{key}` is required: {what}"),
            )),
            Some(v) if v.get_ref().trim().is_empty() => Err(err(
                Some(v.span()),
                &format!("jwt.{key}"),
                format!("expected a non-empty string: {what}"),
            )),
            Some(v) => Ok(v.get_ref().clone()),
        }
    };
    let issuer = required(
        &section.issuer,
        "issuer",
        "the exact `iss` your identity provider puts in its tokens",
    )?;
    let audience = required(
        &section.audience,
        "audience",
        "the `aud` value tokens for this proxy carry",
    )?;

    // Exactly one key source.
    let sources: Vec<(&str, &toml::Spanned<String>)> = [
        ("jwks_file", section.jwks_file.as_ref()),
        ("jwks_url", section.jwks_url.as_ref()),
        ("hmac_secret_file", section.hmac_secret_file.as_ref()),
    ]
    .into_iter()
    .filter_map(|(name, value)| value.map(|v| (name, v)))
    .collect();
    let (source_key, source_value) = match sources.as_slice() {
        [] => {
            return Err(err(
                Some(table.clone()),
                "jwt",
                "no key source: set one of jwks_file, jwks_url or hmac_secret_file".to_string(),
            ))
        }
        [one] => *one,
        [first, second, ..] => {
            return Err(err(
                Some(second.1.span()),
                &format!("jwt.{}", second.0),
                format!("give exactly one key source: {} is already set", first.0),
            ))
        }
    };
    let hmac = source_key == "hmac_secret_file";

    // Algorithms: known, never none, not repeated, and of the kind the key source serves.
    let Some(listed) = &section.algorithms else {
        return Err(err(
            Some(table.clone()),
            "jwt.algorithms",
            format!(
                "`algorithms` is required: the signature algorithms to accept, from {}",
                ALGORITHM_NAMES.join(", ")
            ),
        ));
    };
    if listed.get_ref().is_empty() {
        return Err(err(
            Some(listed.span()),
            "jwt.algorithms",
            "expected at least one algorithm".to_string(),
        ));
    }
    let mut algorithms = Vec::new();
    for (i, name) in listed.get_ref().iter().enumerate() {
        let key = format!("jwt.algorithms[{i}]");
        let span = Some(name.span());
        let text = name.get_ref().as_str();
        if text.eq_ignore_ascii_case("none") {
            return Err(err(
                span,
                &key,
                "\"none\" is never accepted: an unsigned token proves nothing".to_string(),
            ));
        }
        let alg = match Algorithm::from_str(text) {
            Ok(alg) if ALGORITHM_NAMES.contains(&text) => alg,
            _ => {
                return Err(err(
                    span,
                    &key,
                    format!(
                        "unknown algorithm {text:?}: expected one of {}",
                        ALGORITHM_NAMES.join(", ")
                    ),
                ))
            }
        };
        if algorithms.contains(&alg) {
            return Err(err(span, &key, format!("{text} is listed twice")));
        }
        let is_hmac = alg.family() == AlgorithmFamily::Hmac;
        if is_hmac && !hmac {
            return Err(err(
                span,
                &key,
                format!(
                    "{text} is an HMAC algorithm and needs jwt.hmac_secret_file; it is never verified with a \
                     {source_key} public key (that is the algorithm-confusion attack)"
                ),
            ));
        }
        if !is_hmac && hmac {
            return Err(err(
                span,
                &key,
                format!("{text} needs a public key from jwt.jwks_file or jwt.jwks_url; hmac_secret_file serves HS256, HS384 and HS512 only"),
            ));
        }
        algorithms.push(alg);
    }

    if let Some(refresh) = &section.jwks_refresh {
        if source_key != "jwks_url" {
            return Err(err(
                Some(refresh.span()),
                "jwt.jwks_refresh",
                "jwks_refresh applies to jwks_url only".to_string(),
            ));
        }
        if refresh.get_ref().0 < Duration::from_secs(1) {
            return Err(err(
                Some(refresh.span()),
                "jwt.jwks_refresh",
                "expected at least \"1s\"".to_string(),
            ));
        }
    }
    let refresh = section
        .jwks_refresh
        .as_ref()
        .map_or(DEFAULT_REFRESH, |r| r.get_ref().0);
    let leeway = section
        .leeway
        .as_ref()
        .map_or(DEFAULT_LEEWAY, |l| l.get_ref().0);
    if leeway > Duration::from_secs(300) {
        warnings.push(format!(
            "jwt.leeway is {}s: tokens stay valid that long after they expire",
            leeway.as_secs()
        ));
    }

    let claim = |value: &Option<toml::Spanned<String>>,
                 key: &str,
                 default: &str|
     -> Result<String, ConfigError> {
        match value {
            None => Ok(default.to_string()),
            Some(v) if v.get_ref().is_empty() => Err(err(
                Some(v.span()),
                &format!("jwt.{key}"),
                "expected a claim name".to_string(),
            )),
            Some(v) => Ok(v.get_ref().clone()),
        }
    };
    let token_types = match &section.token_types {
        None => DEFAULT_TOKEN_TYPES
            .iter()
            .map(|t| normalize_token_type(t))
            .collect(),
        Some(listed) => {
            if listed.get_ref().is_empty() {
                return Err(err(
                    Some(listed.span()),
                    "jwt.token_types",
                    "expected at least one token type, such as \"at+jwt\" or \"JWT\"".to_string(),
                ));
            }
            let mut types: Vec<String> = Vec::new();
            for (i, typ) in listed.get_ref().iter().enumerate() {
                let normalized = normalize_token_type(typ.get_ref());
                let valid = !normalized.is_empty()
                    && normalized
                        .bytes()
                        .all(|b| b.is_ascii_graphic() && b != b'/');
                if !valid {
                    return Err(err(
                        Some(typ.span()),
                        &format!("jwt.token_types[{i}]"),
                        format!(
                            "{:?} is not a media type: expected a name such as \"at+jwt\" or \"JWT\"",
                            typ.get_ref()
                        ),
                    ));
                }
                if !types.contains(&normalized) {
                    types.push(normalized);
                }
            }
            types
        }
    };
    let settings = JwtSettings {
        token_types,
        issuer,
        audience,
        algorithms: algorithms.clone(),
        leeway: i64::try_from(leeway.as_secs()).unwrap_or(i64::MAX),
        user_claim: claim(&section.user_claim, "user_claim", "sub")?,
        groups_claim: claim(&section.groups_claim, "groups_claim", "groups")?,
        scope_claim: claim(&section.scope_claim, "scope_claim", "scope")?,
    };

    let span = Some(source_value.span());
    let key = format!("jwt.{source_key}");
    let source = match source_key {
        "hmac_secret_file" => {
            let path = (ctx.resolve)(source_value.get_ref());
            let mut secret = std::fs::read(&path).map_err(|e| {
                err(
                    span.clone(),
                    &key,
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            if secret.ends_with(b"\n") {
                secret.pop();
                if secret.ends_with(b"\r") {
                    secret.pop();
                }
            }
            if secret.len() < MIN_HMAC_SECRET {
                return Err(err(
                    span,
                    &key,
                    format!(
                        "{} holds {} bytes: an HMAC secret must be at least {MIN_HMAC_SECRET} bytes \
                         (for example: head -c 48 /dev/urandom | base64 > {})",
                        path.display(),
                        secret.len(),
                        path.display()
                    ),
                ));
            }
            let decoding = DecodingKey::from_secret(&secret);
            secret.fill(0);
            KeySource::Hmac(decoding)
        }
        "jwks_file" => {
            let path = (ctx.resolve)(source_value.get_ref());
            let text = std::fs::read(&path).map_err(|e| {
                err(
                    span.clone(),
                    &key,
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            let (set, notes) = KeySet::parse(&text, &algorithms)
                .map_err(|e| err(span.clone(), &key, format!("{}: {e}", path.display())))?;
            if set.is_empty() {
                let why = if notes.is_empty() {
                    "it has no keys".to_string()
                } else {
                    notes.join("; ")
                };
                return Err(err(
                    span,
                    &key,
                    format!(
                        "{} has no key usable with jwt.algorithms: {why}",
                        path.display()
                    ),
                ));
            }
            for note in notes {
                warnings.push(format!("jwt.jwks_file {}: {note}", path.display()));
            }
            for alg in &algorithms {
                if !set.supports(*alg) {
                    warnings.push(format!(
                        "jwt.algorithms lists {alg:?} but {} has no key for it: such tokens are refused",
                        path.display()
                    ));
                }
            }
            KeySource::Jwks(set)
        }
        _ => {
            let text = source_value.get_ref();
            let url: http::Uri = text
                .parse()
                .map_err(|_| err(span.clone(), &key, format!("invalid URL {text:?}")))?;
            let scheme_ok = matches!(url.scheme_str(), Some("http" | "https"));
            if !scheme_ok || url.authority().is_none() {
                return Err(err(
                    span,
                    &key,
                    format!("invalid URL {text:?}: expected https://host/path (or http:// on a trusted network)"),
                ));
            }
            if url.scheme_str() == Some("http") && !is_loopback(&url) {
                return Err(err(
                    span,
                    &key,
                    format!(
                        "{text:?} is plain http to a host that is not this machine: anyone on the \
                         path could substitute their own keys and sign any token; use https:// \
                         (plain http is allowed to localhost and loopback addresses only)"
                    ),
                ));
            }
            let remote = RemoteJwks::new(url, refresh, algorithms.clone())
                .map_err(|e| err(span, &key, e))?;
            KeySource::Remote(Box::new(remote))
        }
    };
    Ok((JwtVerifier::new(settings, source), warnings))
}

fn is_loopback(url: &http::Uri) -> bool {
    let host = url
        .host()
        .unwrap_or_default()
        .trim_start_matches('[')
        .trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::jwt::Token;
    use crate::error::DenyReason;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::{json, Value};

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-test";
    const NOW: i64 = 1_800_000_000;

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

    fn fixtures() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/jwt")
    }

    fn load(jwt: &str) -> Result<crate::config::Config, ConfigError> {
        let text = format!(
            "[upstream]\nurl = \"http://127.0.0.1:3000\"\n\n[jwt]\n{jwt}\n\n[[route]]\npath = \"/\"\nauth = [\"bearer\"]\n"
        );
        crate::config::Config::from_toml(&fixtures().join("portcullis.toml"), &text)
    }

    const ISS_AUD: &str = "issuer = \"https://id.example.com/\"\naudience = \"portcullis\"\n";

    fn load_err(jwt: &str) -> ConfigError {
        load(jwt).expect_err("the config should be refused")
    }

    #[test]
    fn jwks_file_loads_relative_to_the_config() {
        let config = load(&format!(
            "{ISS_AUD}algorithms = [\"RS256\", \"ES256\", \"EdDSA\"]\njwks_file = \"jwks.json\""
        ))
        .unwrap();
        let verifier = config.jwt.as_ref().unwrap();
        assert!(verifier.is_ready());
        assert_eq!(verifier.settings().leeway, 30);
        assert_eq!(verifier.settings().user_claim, "sub");
        let pem = std::fs::read(fixtures().join("rsa-a.pem")).unwrap();
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some("rsa-a".into());
        let token = encode(
            &header,
            &claims(),
            &EncodingKey::from_rsa_pem(&pem).unwrap(),
        )
        .unwrap();
        let id = verifier
            .verify_now(&Token::parse(&token).unwrap(), NOW)
            .unwrap();
        assert_eq!(id.user, "alice");
    }

    #[test]
    fn hmac_secret_file_loads_without_its_newline() {
        let config = load(&format!("{ISS_AUD}algorithms = [\"HS256\"]\nhmac_secret_file = \"hmac.secret\"\nleeway = \"5s\"")).unwrap();
        let verifier = config.jwt.as_ref().unwrap();
        assert_eq!(verifier.settings().leeway, 5);
        let secret = std::fs::read(fixtures().join("hmac.secret")).unwrap();
        let secret = secret.strip_suffix(b"\n").unwrap();
        let token = encode(
            &Header::new(Algorithm::HS256),
            &claims(),
            &EncodingKey::from_secret(secret),
        )
        .unwrap();
        assert!(verifier
            .verify_now(&Token::parse(&token).unwrap(), NOW)
            .is_ok());
    }

    #[test]
    fn hmac_algorithms_with_a_jwks_are_refused_at_load() {
        let err = load_err(&format!(
            "{ISS_AUD}algorithms = [\"RS256\", \"HS256\"]\njwks_file = \"jwks.json\""
        ));
        assert_eq!(err.key.as_deref(), Some("jwt.algorithms[1]"));
        assert_eq!(err.position, Some((7, 24)), "{err}");
        assert!(err.message.contains("algorithm-confusion"), "{err}");
        let err = load_err(&format!(
            "{ISS_AUD}algorithms = [\"HS256\"]\njwks_url = \"https://id.example.com/jwks\""
        ));
        assert_eq!(err.key.as_deref(), Some("jwt.algorithms[0]"), "{err}");
    }

    #[test]
    fn public_key_algorithms_with_a_secret_are_refused_at_load() {
        let err = load_err(&format!(
            "{ISS_AUD}algorithms = [\"HS256\", \"RS256\"]\nhmac_secret_file = \"hmac.secret\""
        ));
        assert_eq!(err.key.as_deref(), Some("jwt.algorithms[1]"));
        assert!(err.message.contains("public key"), "{err}");
    }

    #[test]
    fn none_and_unknown_algorithms_are_refused_at_load() {
        let err = load_err(&format!(
            "{ISS_AUD}algorithms = [\"none\"]\njwks_file = \"jwks.json\""
        ));
        assert!(err.message.contains("never accepted"), "{err}");
        let err = load_err(&format!(
            "{ISS_AUD}algorithms = [\"RS1\"]\njwks_file = \"jwks.json\""
        ));
        assert!(err.message.contains("unknown algorithm"), "{err}");
        let err = load_err(&format!(
            "{ISS_AUD}algorithms = [\"RS256\", \"RS256\"]\njwks_file = \"jwks.json\""
        ));
        assert!(err.message.contains("twice"), "{err}");
        let err = load_err(&format!(
            "{ISS_AUD}algorithms = []\njwks_file = \"jwks.json\""
        ));
        assert_eq!(err.key.as_deref(), Some("jwt.algorithms"), "{err}");
    }

    #[test]
    fn exactly_one_key_source() {
        let err = load_err(&format!("{ISS_AUD}algorithms = [\"RS256\"]"));
        assert!(err.message.contains("no key source"), "{err}");
        assert_eq!(err.position.map(|p| p.0), Some(4), "points at [jwt]: {err}");
        let err = load_err(&format!(
            "{ISS_AUD}algorithms = [\"RS256\"]\njwks_file = \"jwks.json\"\njwks_url = \"https://id.example.com/jwks\""
        ));
        assert_eq!(err.key.as_deref(), Some("jwt.jwks_url"), "{err}");
    }

    #[test]
    fn bad_key_files_are_config_errors() {
        let err = load_err(&format!(
            "{ISS_AUD}algorithms = [\"RS256\"]\njwks_file = \"missing.json\""
        ));
        assert!(err.message.contains("cannot read"), "{err}");
        let err = load_err(&format!(
            "{ISS_AUD}algorithms = [\"RS256\"]\njwks_file = \"rsa-a.pem\""
        ));
        assert!(err.message.contains("not a JSON Web Key Set"), "{err}");
        let err = load_err(&format!(
            "{ISS_AUD}algorithms = [\"ES384\"]\njwks_file = \"jwks.json\""
        ));
        assert!(err.message.contains("no key usable"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("short"), "too short\n").unwrap();
        let text = format!(
            "[upstream]\nurl = \"http://127.0.0.1:3000\"\n[jwt]\n{ISS_AUD}algorithms = [\"HS256\"]\nhmac_secret_file = \"short\"\n"
        );
        let err = crate::config::Config::from_toml(&dir.path().join("p.toml"), &text).unwrap_err();
        assert!(err.message.contains("at least 32 bytes"), "{err}");
        assert!(
            !err.message.contains("too short"),
            "never echo the secret: {err}"
        );
    }

    #[test]
    fn issuer_audience_and_refresh_are_checked() {
        let err = load_err("audience = \"a\"\nalgorithms = [\"RS256\"]\njwks_file = \"jwks.json\"");
        assert_eq!(err.key.as_deref(), Some("jwt.issuer"), "{err}");
        let err = load_err("issuer = \"i\"\nalgorithms = [\"RS256\"]\njwks_file = \"jwks.json\"");
        assert_eq!(err.key.as_deref(), Some("jwt.audience"), "{err}");
        let err = load_err(&format!(
            "{ISS_AUD}algorithms = [\"RS256\"]\njwks_file = \"jwks.json\"\njwks_refresh = \"5m\""
        ));
        assert_eq!(err.key.as_deref(), Some("jwt.jwks_refresh"), "{err}");
        let err = load_err(&format!(
            "{ISS_AUD}algorithms = [\"RS256\"]\njwks_url = \"ftp://x/jwks\""
        ));
        assert_eq!(err.key.as_deref(), Some("jwt.jwks_url"), "{err}");
        let err = load_err(&format!(
            "{ISS_AUD}algorithms = [\"RS256\"]\njwks_file = \"jwks.json\"\nbogus = 1"
        ));
        assert!(err.message.contains("bogus"), "{err}");
    }

    #[test]
    fn a_jwks_url_is_not_ready_until_fetched() {
        let config = load(&format!(
            "{ISS_AUD}algorithms = [\"RS256\"]\njwks_url = \"http://127.0.0.1:9/jwks\""
        ))
        .unwrap();
        let verifier = config.jwt.as_ref().unwrap();
        assert!(!verifier.is_ready());
        // Nothing is fetched outside a runtime, and no key means no token passes.
        verifier.spawn_refresh();
        let token = sign(Algorithm::HS256, &claims());
        assert_eq!(
            verifier
                .verify_now(&Token::parse(&token).unwrap(), NOW)
                .unwrap_err()
                .reason,
            DenyReason::DisallowedAlgorithm
        );
    }
}
