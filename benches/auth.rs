//! Bearer authentication cost per request: the static-token lookup, and JWT verification for
//! each algorithm family (header parse, signature, claims, identity), with the test keys from
//! tests/fixtures/jwt.
//!
//!     cargo bench --bench auth -- --warm-up-time 1 --measurement-time 3

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use jsonwebtoken::{encode, Algorithm, DecodingKey, EncodingKey, Header};
use portcullis::auth::bearer::{check_static, unix_now};
use portcullis::auth::jwks::KeySet;
use portcullis::auth::jwt::{JwtSettings, JwtVerifier, KeySource, Token};
use portcullis::config::StaticToken;
use serde_json::json;
use sha2::{Digest, Sha256};

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/jwt")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn settings(algorithms: Vec<Algorithm>) -> JwtSettings {
    JwtSettings {
        issuer: "https://id.test/".to_string(),
        audience: "portcullis".to_string(),
        algorithms,
        leeway: 30,
        user_claim: "sub".to_string(),
        groups_claim: "groups".to_string(),
        scope_claim: "scope".to_string(),
        token_types: vec!["at+jwt".to_string(), "jwt".to_string()],
    }
}

fn token(alg: Algorithm, kid: Option<&str>, key: &EncodingKey) -> String {
    let claims = json!({
        "iss": "https://id.test/",
        "aud": "portcullis",
        "sub": "bench-user",
        "exp": unix_now() + 3600,
        "groups": ["admins", "ops"],
        "scope": "read write",
    });
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    encode(&header, &claims, key).unwrap()
}

fn static_tokens(c: &mut Criterion) {
    // Ten configured tokens; every one is compared on every lookup.
    let tokens: Vec<Arc<StaticToken>> = (0..10)
        .map(|i| {
            Arc::new(StaticToken {
                name: format!("token-{i}"),
                digest: Sha256::digest(
                    format!("secret-token-number-{i}-0123456789abcdef").as_bytes(),
                )
                .into(),
                groups: vec!["ci".to_string()],
                scopes: vec!["deploy".to_string()],
                expires: None,
            })
        })
        .collect();
    let now = unix_now();
    c.bench_function("static token (10 configured)", |b| {
        b.iter(|| {
            check_static(
                &tokens,
                black_box("secret-token-number-7-0123456789abcdef"),
                now,
            )
            .unwrap()
        })
    });
}

fn jwts(c: &mut Criterion) {
    let asymmetric = vec![Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];
    let (set, _) = KeySet::parse(&fixture("jwks.json"), &asymmetric).unwrap();
    let jwks = JwtVerifier::new(settings(asymmetric), KeySource::Jwks(set));
    let mut secret = fixture("hmac.secret");
    secret.pop();
    let hmac = JwtVerifier::new(
        settings(vec![Algorithm::HS256]),
        KeySource::Hmac(DecodingKey::from_secret(&secret)),
    );
    let cases = [
        (
            "HS256",
            &hmac,
            token(Algorithm::HS256, None, &EncodingKey::from_secret(&secret)),
        ),
        (
            "RS256 (2048-bit)",
            &jwks,
            token(
                Algorithm::RS256,
                Some("rsa-a"),
                &EncodingKey::from_rsa_pem(&fixture("rsa-a.pem")).unwrap(),
            ),
        ),
        (
            "ES256",
            &jwks,
            token(
                Algorithm::ES256,
                Some("ec-1"),
                &EncodingKey::from_ec_pem(&fixture("ec.pem")).unwrap(),
            ),
        ),
        (
            "EdDSA (Ed25519)",
            &jwks,
            token(
                Algorithm::EdDSA,
                Some("ed-1"),
                &EncodingKey::from_ed_pem(&fixture("ed.pem")).unwrap(),
            ),
        ),
    ];
    let now = unix_now();
    let mut group = c.benchmark_group("jwt verify");
    for (name, verifier, token) in &cases {
        group.bench_function(*name, |b| {
            b.iter(|| {
                let parsed = Token::parse(black_box(token)).unwrap();
                verifier.verify_now(&parsed, now).unwrap()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, static_tokens, jwts);
criterion_main!(benches);
