//! Cookie sessions: ids, cookies, idle and absolute deadlines. Where sessions live is the
//! store's business (`store.rs`: memory or Redis); what a session means is decided here.

mod cookie;
mod record;
mod redis_store;
mod store;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use http::header::HeaderValue;
use http::HeaderMap;
use rand::RngCore;
use sha2::{Digest, Sha256};

pub use cookie::{cookie_name, cookie_value, cookie_values, parse_cookie, strip_cookie};
pub use record::{Cap, EndReason, Fingerprint, SessionKey, SessionRecord, Stored, UserTag};
pub use redis_store::RedisStore;
pub use store::{Store, StoreError};

use crate::auth::Scheme;
use crate::config::{Config, SessionSection, User};
use crate::error::{Denial, DenyReason, FailReason, Failure, Refusal};

/// How many cookies of our name one request may have looked up (the rest are ignored): enough
/// for a browser holding cookies from a few paths or parent domains, too few to make one request
/// cost many store reads.
const MAX_COOKIES: usize = 4;

/// A session id is 32 random bytes (256 bits) in URL-safe base64: 43 characters.
const ID_BYTES: usize = 32;
const ID_CHARS: usize = 43;
/// The cookie carries `<id>.<tag>`: the user's tag names the Redis hash slot of the session
/// (see [`UserTag`]), so the lookup needs it before the session is read.
const TAG_CHARS: usize = 8;
const COOKIE_CHARS: usize = ID_CHARS + 1 + TAG_CHARS;

/// A valid session and what the caller may be told about it.
#[derive(Debug, Clone)]
pub struct ActiveSession {
    /// The record (with `last_seen_ms` updated to now).
    pub record: SessionRecord,
    /// When it will end for inactivity (Unix milliseconds).
    pub idle_expires_ms: u64,
    /// When it will end whatever happens (Unix milliseconds).
    pub absolute_expires_ms: u64,
}

/// Session policy plus the store.
pub struct Sessions {
    store: Store,
    /// The name cookies are set and read under: `__Host-` + the configured name when the
    /// prefix applies (Secure, no Domain), so a sibling subdomain cannot plant one.
    cookie_name: String,
    /// The configured name without the prefix: stripped before forwarding too, since a cookie
    /// of that name may still hold a (dead) session id from before the prefix.
    bare_name: String,
    idle: Duration,
    absolute: Duration,
    ended_memory: Duration,
    max_per_user: usize,
    secure: bool,
    domain: Option<String>,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Sessions {
    /// Builds the session manager and its store from `[session]`. Must run inside the tokio
    /// runtime (the memory store sweeps in the background; Redis connects lazily).
    pub fn new(config: &SessionSection) -> Result<Self, String> {
        let store = Store::new(config)?;
        Ok(Sessions {
            store,
            cookie_name: cookie_name(config),
            bare_name: config.cookie_name.clone(),
            idle: config.idle_timeout.0,
            absolute: config.absolute_timeout.0,
            ended_memory: config.ended_memory.0,
            max_per_user: usize::try_from(config.max_per_user).unwrap_or(usize::MAX),
            secure: config.cookie_secure,
            domain: (!config.cookie_domain.is_empty()).then(|| config.cookie_domain.clone()),
        })
    }

    /// The idle timeout.
    pub fn idle_timeout(&self) -> Duration {
        self.idle
    }

    /// The absolute timeout.
    pub fn absolute_timeout(&self) -> Duration {
        self.absolute
    }

    /// The store (for readiness).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The values of the first [`MAX_COOKIES`] cookies of our name that are well-formed.
    pub fn cookie_ids<'a>(&self, headers: &'a HeaderMap) -> Vec<&'a str> {
        cookie_values(headers, &self.cookie_name)
            .take(MAX_COOKIES)
            .filter(|v| parse_cookie(v).is_some())
            .collect()
    }

    /// Whether the request carries a cookie of our name at all (well-formed or not).
    pub fn has_cookie(&self, headers: &HeaderMap) -> bool {
        cookie_values(headers, &self.cookie_name).next().is_some()
    }

    /// The session the request's cookies carry. Of several cookies of our name (a browser may
    /// hold one per path or parent domain, some planted), the first [`MAX_COOKIES`] are looked
    /// up and a live session wins; else the refusal says why the most telling one ended (an
    /// end reason over "unknown"). A store failure is answered at once.
    pub async fn find(
        &self,
        headers: &HeaderMap,
        config: &Config,
    ) -> Result<(String, ActiveSession), Refusal> {
        let mut refused: Option<Refusal> = None;
        for value in cookie_values(headers, &self.cookie_name).take(MAX_COOKIES) {
            match self.check(value, config).await {
                Ok(active) => return Ok((value.to_string(), active)),
                Err(Refusal::Fail(failure)) => return Err(failure.into()),
                Err(refusal) => {
                    let unknown = |r: &Refusal| matches!(r, Refusal::Deny(d) if d.reason == DenyReason::SessionUnknown);
                    if refused
                        .as_ref()
                        .is_none_or(|r| unknown(r) && !unknown(&refusal))
                    {
                        refused = Some(refusal);
                    }
                }
            }
        }
        Err(refused.unwrap_or_else(|| {
            Denial::of(
                Scheme::Session,
                DenyReason::SessionUnknown,
                "no session cookie",
            )
            .into()
        }))
    }

    /// Checks a session cookie value; on success moves the idle deadline (writing the store at
    /// most once per tenth of the idle timeout) and never the absolute one. A session found
    /// ended becomes a tombstone, so every later request with it gets the same reason. A
    /// session whose user's password is no longer the one it was started with, or whose user
    /// is gone, is revoked (see `credential_changed`).
    pub async fn check(&self, value: &str, config: &Config) -> Result<ActiveSession, Refusal> {
        match parse_cookie(value) {
            Some(key) => self.check_key(key, config).await,
            None => Err(Denial::of(
                Scheme::Session,
                DenyReason::SessionUnknown,
                "the session cookie is not one this proxy issued",
            )
            .into()),
        }
    }

    async fn check_key(&self, key: SessionKey, config: &Config) -> Result<ActiveSession, Refusal> {
        let now = now_ms();
        let record = match self.store.get(&key).await.map_err(store_failure)? {
            None => {
                return Err(Denial::of(
                    Scheme::Session,
                    DenyReason::SessionUnknown,
                    "the session is not known to the store",
                )
                .into())
            }
            Some(Stored::Ended(reason, detail)) => return Err(self.ended(reason, detail).into()),
            Some(Stored::Live(record)) => record,
        };
        let absolute_expires_ms = record.created_ms.saturating_add(millis(self.absolute));
        let ended = if now >= absolute_expires_ms {
            Some(EndReason::Absolute)
        } else if now >= record.last_seen_ms.saturating_add(millis(self.idle)) {
            Some(EndReason::Idle)
        } else {
            None
        };
        if let Some(reason) = ended {
            // Best effort: if the tombstone cannot be written, the next request computes the
            // same end from the same record.
            let _ = self.store.end(&key, reason).await;
            return Err(self.ended(reason, None).into());
        }
        if let Some(change) = credential_changed(&record, config) {
            let denial = Denial::of(Scheme::Session, DenyReason::SessionRevoked, change.detail);
            if change.end {
                // Written for every instance sharing the store: one that has not reloaded yet
                // still refuses the session from now on. Best effort, as above.
                let _ = self.store.end(&key, EndReason::Revoked).await;
            }
            return Err(denial.into());
        }
        let mut record = record;
        if now.saturating_sub(record.last_seen_ms) >= millis(self.idle) / 10 {
            self.store
                .touch(&key, now, absolute_expires_ms)
                .await
                .map_err(store_failure)?;
            record.last_seen_ms = now;
        }
        let idle_expires_ms = record
            .last_seen_ms
            .saturating_add(millis(self.idle))
            .min(absolute_expires_ms);
        Ok(ActiveSession {
            record,
            idle_expires_ms,
            absolute_expires_ms,
        })
    }

    /// The denial for a session that ended; `detail` (from the tombstone) says why, when the
    /// end was decided elsewhere.
    fn ended(&self, reason: EndReason, detail: Option<String>) -> Denial {
        match reason {
            EndReason::Idle => Denial::of(
                Scheme::Session,
                DenyReason::SessionIdleTimeout,
                format!(
                    "the session was idle for longer than {}",
                    crate::config::HumanDuration(self.idle)
                ),
            ),
            EndReason::Absolute => Denial::of(
                Scheme::Session,
                DenyReason::SessionAbsoluteTimeout,
                format!(
                    "the session reached its absolute lifetime of {}",
                    crate::config::HumanDuration(self.absolute)
                ),
            ),
            EndReason::Revoked => Denial::of(
                Scheme::Session,
                DenyReason::SessionRevoked,
                detail.unwrap_or_else(|| {
                    "the session was ended because its user's password changed or the user was removed".to_string()
                }),
            ),
            EndReason::Capped => Denial::of(
                Scheme::Session,
                DenyReason::SessionCapped,
                detail.unwrap_or_else(|| {
                    format!(
                        "ended because a newer login of its user went past session.max_per_user = {}",
                        self.max_per_user
                    )
                }),
            ),
        }
    }

    /// Starts a session for a password user under a fresh id (never one the client offered),
    /// recording the fingerprint of the password it was started with, and returns the cookie
    /// value. Past `max_per_user` live sessions, the user's oldest end (a tombstone saying why),
    /// in the same store operation.
    pub async fn create(&self, user: &User) -> Result<String, Failure> {
        let mut bytes = [0u8; ID_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        let id = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let tag = UserTag::of(&user.name);
        let key = SessionKey {
            tag,
            hash: Sha256::digest(id.as_bytes()).into(),
        };
        let now = now_ms();
        let record = SessionRecord {
            user: user.name.clone(),
            created_ms: now,
            last_seen_ms: now,
            credential: Some(Fingerprint::of(&user.hash)),
        };
        // The store forgets the session (or its tombstone) `ended_memory` after its absolute end.
        let expires = now
            .saturating_add(millis(self.absolute))
            .saturating_add(millis(self.ended_memory));
        let cap = Cap {
            max: self.max_per_user,
            now_ms: now,
            idle_ms: millis(self.idle),
            absolute_ms: millis(self.absolute),
            user: user.name.clone(),
        };
        self.store
            .create(&key, &record, expires, &cap)
            .await
            .map_err(store_failure)?;
        Ok(format!("{id}.{}", tag.hex()))
    }

    /// Ends the session a cookie value names in the store; its cookie is refused from now on,
    /// even if replayed. A value that is not one of ours names nothing.
    pub async fn delete(&self, value: &str) -> Result<(), Failure> {
        let Some(key) = parse_cookie(value) else {
            return Ok(());
        };
        self.store.delete(&key).await.map_err(store_failure)
    }

    /// `Set-Cookie` for a new session. The browser keeps the cookie as long as the store
    /// remembers the session's end, so a late request is told why rather than asked to sign in
    /// with no word of a session.
    pub fn set_cookie(&self, id: &str) -> HeaderValue {
        let max_age = self.absolute.saturating_add(self.ended_memory).as_secs();
        self.cookie_header(id, Some(max_age))
    }

    /// `Set-Cookie` that makes the browser forget the session cookie.
    pub fn clear_cookie(&self) -> HeaderValue {
        self.cookie_header("", Some(0))
    }

    fn cookie_header(&self, value: &str, max_age: Option<u64>) -> HeaderValue {
        let mut text = format!(
            "{}={value}; Path=/; HttpOnly; SameSite=Lax",
            self.cookie_name
        );
        if let Some(age) = max_age {
            text.push_str(&format!("; Max-Age={age}"));
        }
        if self.secure {
            text.push_str("; Secure");
        }
        if let Some(domain) = &self.domain {
            text.push_str("; Domain=");
            text.push_str(domain);
        }
        HeaderValue::from_str(&text)
            .unwrap_or_else(|_| HeaderValue::from_static("portcullis_session=; Max-Age=0"))
    }

    /// Removes our cookies from a `Cookie` header so the upstream never sees a session id.
    pub fn strip_cookie(&self, headers: &mut HeaderMap) {
        strip_cookie(headers, &self.cookie_name);
        if self.bare_name != self.cookie_name {
            strip_cookie(headers, &self.bare_name);
        }
    }
}

/// Why a live session no longer stands under the current configuration.
struct CredentialChange {
    /// For the log (names the user, never a hash).
    detail: String,
    /// Whether to end it in the store for every instance; false when the session began after
    /// this configuration was loaded, so it was started by an instance whose configuration
    /// differs from this one's (a reload not yet done everywhere): refused here, ended by
    /// nobody until the instances agree.
    end: bool,
}

/// Whether the session's user still has the password the session was started with.
fn credential_changed(record: &SessionRecord, config: &Config) -> Option<CredentialChange> {
    let current = config.users.get(&record.user);
    let detail = match (&record.credential, current) {
        (Some(started), Some(user)) if *started == Fingerprint::of(&user.hash) => return None,
        (Some(_), Some(_)) => format!(
            "the password of user {:?} changed since the session began",
            record.user
        ),
        (Some(_), None) => format!("user {:?} was removed since the session began", record.user),
        (None, _) => "the session was started by an earlier version, which did not record the \
                      credential it was started with"
            .to_string(),
    };
    let end = record.credential.is_none() || record.created_ms < config.loaded_ms;
    let detail = if end {
        detail
    } else {
        format!("{detail}: the session began on an instance whose configuration differs from this one's; reload every instance")
    };
    Some(CredentialChange { detail, end })
}

fn store_failure(err: StoreError) -> Failure {
    Failure::new(
        FailReason::StoreUnavailable,
        format!("session store: {err}"),
    )
}

#[cfg(test)]
mod tests {
    use super::cookie::well_formed_id;
    use super::record::ordinal;
    use super::*;
    use http::header::COOKIE;

    #[test]
    fn a_fingerprint_is_eight_bytes_of_the_hash_never_the_hash() {
        use crate::auth::password::PasswordHash;
        let text = "$2b$12$jDfNxGt2r.Bb0PtO2QejEeT9V1QSRjrjE5Zkwpkt1z0S1/E61tiGi";
        let other = "$2b$12$jDfNxGt2r.Bb0PtO2QejEeT9V1QSRjrjE5Zkwpkt1z0S1/E61tiGj";
        let print = Fingerprint::of(&PasswordHash::parse(text).unwrap());
        assert_eq!(print, Fingerprint::of(&PasswordHash::parse(text).unwrap()));
        assert_ne!(print, Fingerprint::of(&PasswordHash::parse(other).unwrap()));
        let hex = print.to_hex();
        assert_eq!(hex.len(), 16);
        assert_eq!(hex, hex::encode(&Sha256::digest(text.as_bytes())[..8]));
        assert_eq!(Fingerprint::from_hex(&hex), Some(print));
        assert_eq!(Fingerprint::from_hex("not hex"), None);
        assert_eq!(Fingerprint::from_hex(&hex[..14]), None);
    }

    #[test]
    fn cookies_are_found_and_stripped() {
        let mut h = HeaderMap::new();
        h.append(
            COOKIE,
            HeaderValue::from_static("a=1; portcullis_session=abc; b=2"),
        );
        h.append(COOKIE, HeaderValue::from_static("portcullis_session=def"));
        assert_eq!(cookie_value(&h, "portcullis_session"), Some("abc"));
        strip_cookie(&mut h, "portcullis_session");
        let all: Vec<_> = h.get_all(COOKIE).iter().collect();
        assert_eq!(all, vec!["a=1; b=2"]);
    }

    /// Found by the `session_cookie` fuzz target: a header with obs-text bytes was kept whole,
    /// session cookie included; one whose rebuilt length happened to equal the original's was
    /// not rewritten; and a name with a space before `=` (which Go, Node and Python still read
    /// as our cookie) was not recognised. The upstream must never get the session id.
    #[test]
    fn the_session_cookie_is_stripped_in_every_spelling() {
        let id = "A".repeat(43);
        let cases: Vec<Vec<u8>> = vec![
            b"portcullis_session;;;;;\xff\xff".to_vec(),
            format!("portcullis_session={id}; x=caf\u{e9}").into_bytes(),
            // 64 bare pairs + our cookie: "a; a; …" is exactly as long as "a;a;…" + ours.
            format!("{}portcullis_session={id}", "a;".repeat(64)).into_bytes(),
            format!("x=1; portcullis_session ={id}").into_bytes(),
            format!("portcullis_session\t={id};y=2").into_bytes(),
        ];
        for raw in cases {
            let mut h = HeaderMap::new();
            h.append(COOKIE, HeaderValue::from_bytes(&raw).unwrap());
            strip_cookie(&mut h, "portcullis_session");
            for value in h.get_all(COOKIE) {
                let text = String::from_utf8_lossy(value.as_bytes());
                assert!(!text.contains("portcullis_session"), "{raw:?} -> {text:?}");
            }
        }
        // Other cookies survive, non-ASCII bytes included.
        let mut h = HeaderMap::new();
        h.append(
            COOKIE,
            HeaderValue::from_bytes(b"a=\xe9; portcullis_session=x;b=2").unwrap(),
        );
        strip_cookie(&mut h, "portcullis_session");
        assert_eq!(h.get(COOKIE).unwrap().as_bytes(), b"a=\xe9; b=2");
    }

    #[test]
    fn ids_must_look_like_ours() {
        assert!(well_formed_id(&"A".repeat(43)));
        assert!(!well_formed_id(&"A".repeat(42)));
        assert!(!well_formed_id(&format!("{}=", "A".repeat(42))));
    }

    #[test]
    fn cookies_must_carry_a_well_formed_id_and_tag() {
        let id = "x".repeat(43);
        let tag = UserTag::of("alice");
        let key = parse_cookie(&format!("{id}.{}", tag.hex())).expect("ours");
        assert_eq!(key.tag, tag);
        assert_ne!(&key.hash[..], id.as_bytes(), "the store key is not the id");
        for value in [
            id.clone(),
            format!("{id}.{}", tag.hex().to_uppercase()),
            format!("{id}.{}", &tag.hex()[..7]),
            format!("{id}:{}", tag.hex()),
            format!("{}.{}0", &id[..42], tag.hex()),
            format!("{id}.zzzzzzzz"),
        ] {
            assert!(parse_cookie(&value).is_none(), "{value}");
        }
    }

    #[test]
    fn ordinals() {
        let cases = [
            (1, "1st"),
            (2, "2nd"),
            (3, "3rd"),
            (4, "4th"),
            (11, "11th"),
            (12, "12th"),
        ];
        for (n, text) in
            cases
                .into_iter()
                .chain([(13, "13th"), (21, "21st"), (33, "33rd"), (112, "112th")])
        {
            assert_eq!(ordinal(n), text);
        }
    }
}
