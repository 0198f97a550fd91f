//! JSON Web Key Sets: parsing them into verification keys, and keeping a remote one
//! (`jwt.jwks_url`) fresh.
//!
//! Only public keys of the families the config allows are kept. Symmetric (`oct`) keys in a
//! JWKS are never used: an HMAC secret comes from `hmac_secret_file` only, so no public key
//! can ever be used as an HMAC secret (the algorithm-confusion attack).

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{ACCEPT, USER_AGENT};
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyOperations, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use serde::Deserialize;

/// Largest JWKS document accepted from `jwks_url`.
const MAX_JWKS_BYTES: usize = 1 << 20;
/// Limit on one fetch of `jwks_url`, connect to last byte.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// An unknown `kid` triggers a fetch at most this often.
pub const UNKNOWN_KID_INTERVAL: Duration = Duration::from_secs(60);
/// Retry delays after a failed fetch: doubling from the first to the last.
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// One verification key from a JWKS.
pub struct Key {
    /// The key's `kid`, if it has one.
    pub kid: Option<String>,
    /// The algorithms this key may verify: its family's, narrowed by its own `alg` and by
    /// `jwt.algorithms`.
    pub algorithms: Vec<Algorithm>,
    /// The key itself.
    pub key: DecodingKey,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("algorithms", &self.algorithms)
            .finish_non_exhaustive()
    }
}

/// The usable keys of one JWKS document.
#[derive(Debug, Default)]
pub struct KeySet {
    keys: Vec<Key>,
}

#[derive(Deserialize)]
struct Document {
    keys: Vec<serde_json::Value>,
}

impl KeySet {
    /// Parses a JWKS document, keeping the keys that can verify one of `allowed`. Returns the
    /// set and a note for every key it skipped (for `check` and the log).
    pub fn parse(json: &[u8], allowed: &[Algorithm]) -> Result<(KeySet, Vec<String>), String> {
        let document: Document = serde_json::from_slice(json)
            .map_err(|e| format!("not a JSON Web Key Set (expected {{\"keys\": [...]}}): {e}"))?;
        let mut keys = Vec::new();
        let mut notes = Vec::new();
        for (i, value) in document.keys.into_iter().enumerate() {
            let label = value.get("kid").and_then(|k| k.as_str()).map_or_else(
                || format!("#{i}"),
                |kid| format!("{:?}", printable(kid, 64)),
            );
            match key_from_value(value, allowed) {
                Ok(key) => keys.push(key),
                Err(why) => notes.push(format!("key {label} skipped: {why}")),
            }
        }
        Ok((KeySet { keys }, notes))
    }

    /// A set of keys built directly, for tests.
    #[cfg(test)]
    pub fn from_keys(keys: Vec<Key>) -> KeySet {
        KeySet { keys }
    }

    /// Number of usable keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether there is no usable key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether some key can verify `alg`.
    pub fn supports(&self, alg: Algorithm) -> bool {
        self.keys.iter().any(|k| k.algorithms.contains(&alg))
    }

    /// The keys that may verify a token signed with `alg` and naming `kid`. A token without a
    /// `kid` may be verified by any key of the right algorithm; one with a `kid` only by keys
    /// with that `kid`.
    pub fn candidates<'a>(
        &'a self,
        alg: Algorithm,
        kid: Option<&'a str>,
    ) -> impl Iterator<Item = &'a Key> + 'a {
        self.keys.iter().filter(move |key| {
            key.algorithms.contains(&alg) && kid.is_none_or(|kid| key.kid.as_deref() == Some(kid))
        })
    }

    /// Whether any key has this `kid`, whatever its algorithm.
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }
}

fn key_from_value(value: serde_json::Value, allowed: &[Algorithm]) -> Result<Key, String> {
    let jwk: Jwk = serde_json::from_value(value).map_err(|e| format!("not a valid JWK: {e}"))?;
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return Err("\"use\" is \"enc\": not a signature key".to_string());
    }
    if let Some(ops) = &jwk.common.key_operations {
        if !ops.iter().any(|op| matches!(op, KeyOperations::Verify)) {
            return Err("\"key_ops\" does not include \"verify\"".to_string());
        }
    }
    let family: &[Algorithm] = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => AlgorithmFamily::Rsa.algorithms(),
        AlgorithmParameters::EllipticCurve(params) => match params.curve {
            EllipticCurve::P256 => &[Algorithm::ES256],
            EllipticCurve::P384 => &[Algorithm::ES384],
            _ => return Err("unsupported elliptic curve (P-256 and P-384 are supported)".to_string()),
        },
        AlgorithmParameters::OctetKeyPair(params) => match params.curve {
            EllipticCurve::Ed25519 => &[Algorithm::EdDSA],
            _ => return Err("unsupported OKP curve (Ed25519 is supported)".to_string()),
        },
        AlgorithmParameters::OctetKey(_) => {
            return Err(
                "symmetric (\"oct\") keys in a JWKS are never used; an HMAC secret belongs in jwt.hmac_secret_file"
                    .to_string(),
            )
        }
        _ => return Err("unsupported key type".to_string()),
    };
    let mut algorithms: Vec<Algorithm> = family.to_vec();
    if let Some(declared) = jwk.common.key_algorithm {
        match Algorithm::try_from(declared) {
            Ok(alg) if family.contains(&alg) => algorithms = vec![alg],
            _ => {
                return Err(format!(
                    "its \"alg\" {declared:?} is not a signature algorithm for this key type"
                ))
            }
        }
    }
    algorithms.retain(|alg| allowed.contains(alg));
    if algorithms.is_empty() {
        return Err("it can verify none of jwt.algorithms".to_string());
    }
    let key = DecodingKey::from_jwk(&jwk).map_err(|e| format!("unusable key material: {e}"))?;
    Ok(Key {
        kid: jwk.common.key_id.clone(),
        algorithms,
        key,
    })
}

/// At most `max` characters of `text`, with anything outside printable ASCII replaced: for
/// values an attacker controls (`kid`, `alg`) that end up in log details.
pub fn printable(text: &str, max: usize) -> String {
    let mut out: String = text
        .chars()
        .take(max)
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect();
    if text.chars().count() > max {
        out.push('…');
    }
    out
}

type HttpsClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// A JWKS fetched from a URL: the last good key set, readiness, and the fetch machinery.
pub struct RemoteJwks {
    url: Uri,
    refresh: Duration,
    allowed: Vec<Algorithm>,
    client: HttpsClient,
    current: ArcSwap<KeySet>,
    ready: AtomicBool,
    started: AtomicBool,
    /// Serialises fetches: one at a time, and requests that wait for one reuse its result.
    fetch_lock: tokio::sync::Mutex<()>,
    /// Bumped when a fetch ends, whatever its outcome.
    fetches: AtomicU64,
    /// When an unknown `kid` last caused a fetch.
    last_unknown_kid_fetch: parking_lot::Mutex<Option<Instant>>,
}

impl fmt::Debug for RemoteJwks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteJwks")
            .field("url", &self.url)
            .field("refresh", &self.refresh)
            .field("keys", &self.current.load().len())
            .field("ready", &self.is_ready())
            .finish_non_exhaustive()
    }
}

impl RemoteJwks {
    /// Prepares the client; nothing is fetched until `start` or the first unknown `kid`.
    pub fn new(url: Uri, refresh: Duration, allowed: Vec<Algorithm>) -> Result<RemoteJwks, String> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(FETCH_TIMEOUT));
        // The provider is named explicitly so that another rustls provider elsewhere in the
        // build can never make the process default ambiguous.
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(provider)
            .map_err(|e| format!("cannot set up TLS: {e}"))?
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(RemoteJwks {
            url,
            refresh,
            allowed,
            client,
            current: ArcSwap::from_pointee(KeySet::default()),
            ready: AtomicBool::new(false),
            started: AtomicBool::new(false),
            fetch_lock: tokio::sync::Mutex::new(()),
            fetches: AtomicU64::new(0),
            last_unknown_kid_fetch: parking_lot::Mutex::new(None),
        })
    }

    /// Whether a key set has been loaded at least once.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// The last good key set (empty before the first successful fetch).
    pub fn keys(&self) -> arc_swap::Guard<Arc<KeySet>> {
        self.current.load()
    }

    /// Starts the background task: the first fetch, retried with backoff until it succeeds,
    /// then a refresh every `refresh`. The task holds only a weak reference and ends once the
    /// owner (the configuration it came with) is dropped. Calling it again does nothing; it
    /// does nothing outside a tokio runtime either.
    pub fn start<T: Send + Sync + 'static>(owner: &Arc<T>, remote: fn(&T) -> &RemoteJwks) {
        if remote(owner).started.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            remote(owner).started.store(false, Ordering::Release);
            return;
        };
        let weak = Arc::downgrade(owner);
        runtime.spawn(async move {
            let mut backoff = BACKOFF_FIRST;
            loop {
                let wait = {
                    let Some(owner) = weak.upgrade() else { return };
                    let remote = remote(&owner);
                    if remote.fetch().await {
                        backoff = BACKOFF_FIRST;
                        remote.refresh
                    } else {
                        let wait = backoff.min(remote.refresh);
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                        wait
                    }
                };
                tokio::time::sleep(wait).await;
            }
        });
    }

    /// Called when a token names a `kid` the current set lacks: fetches again unless an
    /// unknown `kid` already did so within the last minute. Waits for a fetch already in
    /// progress instead of starting another. Returns whether the key set may have changed.
    pub async fn refresh_for_unknown_kid(&self) -> bool {
        let before = self.fetches.load(Ordering::Acquire);
        let _guard = self.fetch_lock.lock().await;
        if self.fetches.load(Ordering::Acquire) != before {
            return true;
        }
        {
            let mut last = self.last_unknown_kid_fetch.lock();
            if last.is_some_and(|at| at.elapsed() < UNKNOWN_KID_INTERVAL) {
                return false;
            }
            *last = Some(Instant::now());
        }
        self.fetch_locked().await
    }

    /// One fetch; the new set replaces the old only if it is good. Returns success.
    async fn fetch(&self) -> bool {
        let _guard = self.fetch_lock.lock().await;
        self.fetch_locked().await
    }

    async fn fetch_locked(&self) -> bool {
        let outcome = tokio::time::timeout(FETCH_TIMEOUT, self.download()).await;
        let outcome =
            outcome.unwrap_or_else(|_| Err(format!("no complete answer within {FETCH_TIMEOUT:?}")));
        let parsed = outcome.and_then(|body| {
            let (set, notes) = KeySet::parse(&body, &self.allowed)?;
            if set.is_empty() {
                return Err(format!("no usable key in the set ({})", notes.join("; ")));
            }
            Ok((set, notes))
        });
        self.fetches.fetch_add(1, Ordering::AcqRel);
        let url = redacted(&self.url);
        match parsed {
            Ok((set, notes)) => {
                tracing::info!(jwks_url = %url, keys = set.len(), skipped = %notes.join("; "), "jwks loaded");
                self.current.store(Arc::new(set));
                self.ready.store(true, Ordering::Release);
                true
            }
            Err(why) => {
                let kept = self.current.load().len();
                tracing::warn!(jwks_url = %url, error = %why, kept_keys = kept, "jwks fetch failed");
                false
            }
        }
    }

    async fn download(&self) -> Result<Bytes, String> {
        let request = Request::get(self.url.clone())
            .header(ACCEPT, "application/jwk-set+json, application/json")
            .header(
                USER_AGENT,
                concat!("portcullis/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::new())
            .map_err(|e| format!("cannot build the request: {e}"))?;
        let response = self.client.request(request).await.map_err(|e| {
            let cause =
                std::iter::successors(Some(&e as &(dyn std::error::Error + 'static)), |e| {
                    e.source()
                })
                .last()
                .map(ToString::to_string)
                .unwrap_or_default();
            format!("request failed: {e}: {cause}")
        })?;
        if response.status() != StatusCode::OK {
            return Err(format!("answered {} (expected 200)", response.status()));
        }
        let body = Limited::new(response.into_body(), MAX_JWKS_BYTES)
            .collect()
            .await
            .map_err(|e| format!("cannot read the body (at most {MAX_JWKS_BYTES} bytes): {e}"))?;
        Ok(body.to_bytes())
    }
}

/// The URL without its query (which could carry a credential), for the log.
fn redacted(url: &Uri) -> String {
    match (url.scheme_str(), url.authority()) {
        (Some(scheme), Some(authority)) => format!("{scheme}://{authority}{}", url.path()),
        _ => url.path().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RSA_JWK: &str = r#"{"kty":"RSA","kid":"r1","use":"sig","n":"sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw","e":"AQAB"}"#;

    #[test]
    fn keeps_usable_keys_and_explains_the_rest() {
        let json = format!(
            r#"{{"keys":[{RSA_JWK},
                {{"kty":"oct","kid":"h","k":"c2VjcmV0"}},
                {{"kty":"RSA","kid":"enc","use":"enc","n":"AQAB","e":"AQAB"}},
                {{"kty":"EC","kid":"p521","crv":"P-521","x":"AQAB","y":"AQAB"}},
                {{"kty":"weird","kid":"w"}}]}}"#
        );
        let (set, notes) =
            KeySet::parse(json.as_bytes(), &[Algorithm::RS256, Algorithm::PS256]).unwrap();
        assert_eq!(set.len(), 1);
        assert!(set.supports(Algorithm::RS256));
        assert!(set.supports(Algorithm::PS256));
        assert!(!set.supports(Algorithm::RS512));
        assert_eq!(set.candidates(Algorithm::RS256, Some("r1")).count(), 1);
        assert_eq!(set.candidates(Algorithm::RS256, Some("other")).count(), 0);
        assert_eq!(set.candidates(Algorithm::RS256, None).count(), 1);
        assert_eq!(notes.len(), 4, "{notes:?}");
        assert!(
            notes[0].contains("\"h\"") && notes[0].contains("hmac_secret_file"),
            "{notes:?}"
        );
    }

    #[test]
    fn declared_alg_narrows_the_key() {
        let json = RSA_JWK.replace("\"use\":\"sig\"", "\"alg\":\"PS256\"");
        let json = format!(r#"{{"keys":[{json}]}}"#);
        let (set, _) =
            KeySet::parse(json.as_bytes(), &[Algorithm::RS256, Algorithm::PS256]).unwrap();
        assert!(set.supports(Algorithm::PS256));
        assert!(!set.supports(Algorithm::RS256));
        // An RSA key that claims an EC algorithm is refused outright.
        let json = RSA_JWK.replace("\"use\":\"sig\"", "\"alg\":\"ES256\"");
        let (set, notes) = KeySet::parse(
            format!(r#"{{"keys":[{json}]}}"#).as_bytes(),
            &[Algorithm::ES256],
        )
        .unwrap();
        assert!(set.is_empty(), "{notes:?}");
    }

    #[test]
    fn garbage_is_not_a_key_set() {
        assert!(KeySet::parse(b"[]", &[Algorithm::RS256]).is_err());
        assert!(KeySet::parse(b"{\"keys\":{}}", &[Algorithm::RS256]).is_err());
        assert!(KeySet::parse(b"not json", &[Algorithm::RS256]).is_err());
    }

    #[test]
    fn printable_neutralises_control_characters() {
        assert_eq!(printable("a\nb\"c", 10), "a?b\"c");
        assert_eq!(printable("abcdef", 3), "abc…");
    }

    #[test]
    fn urls_lose_their_query_in_logs() {
        let url: Uri = "https://id.example.com/jwks?token=secret".parse().unwrap();
        assert_eq!(redacted(&url), "https://id.example.com/jwks");
    }
}
