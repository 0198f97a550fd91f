//! Known devices (SPEC §2 `[rate_limit] known_device_days`): a browser that signed in with a
//! password as a user carries a cookie saying so, signed with `server.secret_file`, and is not
//! subject to that user's lockout (only to its own address's). This is OWASP's defence
//! against lockout denial of service: an attacker who fails a victim's password from anywhere
//! cannot lock the victim out of the browser she always uses.
//!
//! The cookie never authenticates anything: it only decides which counters a password attempt
//! is checked against. One cookie lists every user who signed in from that browser (at most
//! [`MAX_USERS`], the oldest sign-in dropped first), each with the time of that sign-in, so
//! a browser shared by two people knows both. The value is
//! `base64url(payload) "." base64url(HMAC-SHA256(key, CONTEXT || payload))` where the payload
//! is one `ISSUED_AT_SECS:USER` line per user (user names hold no control characters, so
//! `\n` separates the lines unambiguously).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use http::header::HeaderValue;
use http::HeaderMap;
use sha2::Sha256;

use crate::config::secret::SecretKey;
use crate::config::Config;
use crate::session::{cookie_values, strip_cookie};

/// The cookie's configured name; sent as `__Host-portcullis_device` exactly when the session
/// cookie carries that prefix.
pub const COOKIE_NAME: &str = "portcullis_device";
const HOST_COOKIE_NAME: &str = "__Host-portcullis_device";

/// Users one browser's cookie remembers.
pub const MAX_USERS: usize = 4;

/// Cookies of our name looked at per request (a sibling host may add some without the
/// prefix); the rest are ignored.
const MAX_COOKIES: usize = 4;

/// Longest value looked at: four users of the longest allowed name, encoded, fit well below.
const MAX_VALUE_CHARS: usize = 3000;

/// What the MAC covers before the payload: a key used for other signed values one day
/// (OIDC state) can never make one that passes for a device cookie.
const CONTEXT: &[u8] = b"portcullis known device v1\n";

/// A sign-in dated in the future by more than this is not believed (clocks of instances
/// sharing a key may differ a little).
const CLOCK_SKEW_SECS: u64 = 300;

/// Known devices under the current config; `None` from [`KnownDevices::new`] when off.
pub struct KnownDevices<'a> {
    key: &'a SecretKey,
    lifetime_secs: u64,
    secure: bool,
    host_prefix: bool,
}

/// The sign-ins a request's device cookies vouch for: verified and not expired.
#[derive(Default)]
pub struct Vouched {
    entries: Vec<Entry>,
}

#[derive(Clone, PartialEq, Eq)]
struct Entry {
    issued: u64,
    user: String,
}

impl Vouched {
    /// Whether the browser signed in as `user` within the known-device lifetime.
    pub fn vouches_for(&self, user: &str) -> bool {
        self.entries.iter().any(|e| e.user == user)
    }
}

impl<'a> KnownDevices<'a> {
    /// Known devices as `config` has them, or `None` when `known_device_days = 0`.
    pub fn new(config: &'a Config) -> Option<Self> {
        let days = config.rate_limit.known_device_days;
        (days > 0).then(|| KnownDevices {
            key: &config.server.secret,
            lifetime_secs: u64::from(days) * 86_400,
            secure: config.session.cookie_secure,
            host_prefix: config.session.cookie_secure && config.session.cookie_domain.is_empty(),
        })
    }

    fn cookie_name(&self) -> &'static str {
        if self.host_prefix {
            HOST_COOKIE_NAME
        } else {
            COOKIE_NAME
        }
    }

    /// The sign-ins the request's device cookies vouch for at `now` (Unix seconds). A forged,
    /// edited, expired or malformed cookie vouches for nothing; it is never an error.
    pub fn read(&self, headers: &HeaderMap, now: u64) -> Vouched {
        let mut entries: Vec<Entry> = Vec::new();
        for value in cookie_values(headers, self.cookie_name()).take(MAX_COOKIES) {
            for entry in self.verify(value, now) {
                if !entries.iter().any(|e| e.user == entry.user) {
                    entries.push(entry);
                }
            }
        }
        Vouched { entries }
    }

    /// `Set-Cookie` after `user` signed in with a password at `now`: the sign-ins the
    /// browser already had, plus this one.
    pub fn set_cookie(&self, vouched: &Vouched, user: &str, now: u64) -> HeaderValue {
        let mut entries = vec![Entry {
            issued: now,
            user: user.to_string(),
        }];
        let mut older: Vec<&Entry> = vouched.entries.iter().filter(|e| e.user != user).collect();
        older.sort_by_key(|e| std::cmp::Reverse(e.issued));
        entries.extend(older.into_iter().take(MAX_USERS - 1).cloned());
        let value = self.sign(&entries);
        let mut text = format!(
            "{}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}",
            self.cookie_name(),
            self.lifetime_secs
        );
        if self.secure {
            text.push_str("; Secure");
        }
        // Built from base64url, digits and fixed text only.
        HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    /// Removes device cookies (either spelling) before a request goes upstream.
    pub fn strip(headers: &mut HeaderMap) {
        strip_cookie(headers, HOST_COOKIE_NAME);
        strip_cookie(headers, COOKIE_NAME);
    }

    fn mac(&self) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.key.bytes())
            .expect("HMAC takes a key of any length");
        mac.update(CONTEXT);
        mac
    }

    fn sign(&self, entries: &[Entry]) -> String {
        let payload: Vec<String> = entries
            .iter()
            .map(|e| format!("{}:{}", e.issued, e.user))
            .collect();
        let payload = payload.join("\n");
        let mut mac = self.mac();
        mac.update(payload.as_bytes());
        let tag = mac.finalize().into_bytes();
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(payload),
            URL_SAFE_NO_PAD.encode(tag)
        )
    }

    /// The entries of one cookie value that are signed with our key and still live.
    fn verify(&self, value: &str, now: u64) -> Vec<Entry> {
        if value.len() > MAX_VALUE_CHARS {
            return Vec::new();
        }
        let Some((payload, tag)) = value.split_once('.') else {
            return Vec::new();
        };
        let (Ok(payload), Ok(tag)) = (URL_SAFE_NO_PAD.decode(payload), URL_SAFE_NO_PAD.decode(tag))
        else {
            return Vec::new();
        };
        let mut mac = self.mac();
        mac.update(&payload);
        // `verify_slice` compares in constant time.
        if mac.verify_slice(&tag).is_err() {
            return Vec::new();
        }
        let Ok(payload) = String::from_utf8(payload) else {
            return Vec::new();
        };
        let mut entries = Vec::new();
        for line in payload.split('\n') {
            let Some((issued, user)) = line.split_once(':') else {
                return Vec::new();
            };
            let Ok(issued) = issued.parse::<u64>() else {
                return Vec::new();
            };
            let live = issued <= now.saturating_add(CLOCK_SKEW_SECS)
                && now < issued.saturating_add(self.lifetime_secs);
            if live {
                entries.push(Entry {
                    issued,
                    user: user.to_string(),
                });
            }
        }
        entries
    }
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    crate::session::now_ms() / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;
    const DAY: u64 = 86_400;

    fn devices(key: &SecretKey) -> KnownDevices<'_> {
        KnownDevices {
            key,
            lifetime_secs: 30 * DAY,
            secure: true,
            host_prefix: true,
        }
    }

    fn key(byte: u8) -> SecretKey {
        let dir =
            std::env::temp_dir().join(format!("portcullis-device-{}-{byte}", std::process::id()));
        std::fs::write(&dir, vec![byte; 32]).unwrap();
        let key = SecretKey::from_file(&dir).unwrap();
        std::fs::remove_file(&dir).unwrap();
        key
    }

    /// The `Cookie` request header a browser sends back for a `Set-Cookie`.
    fn returned(set_cookie: &HeaderValue) -> HeaderMap {
        let pair = set_cookie.to_str().unwrap().split(';').next().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(http::header::COOKIE, HeaderValue::from_str(pair).unwrap());
        headers
    }

    fn value_of(set_cookie: &HeaderValue) -> String {
        let pair = set_cookie.to_str().unwrap().split(';').next().unwrap();
        pair.split_once('=').unwrap().1.to_string()
    }

    fn with_value(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::COOKIE,
            HeaderValue::from_str(&format!("{HOST_COOKIE_NAME}={value}")).unwrap(),
        );
        headers
    }

    #[test]
    fn a_cookie_vouches_for_its_user_only_and_round_trips() {
        let key = key(1);
        let d = devices(&key);
        let set = d.set_cookie(&Vouched::default(), "alice", NOW);
        let text = set.to_str().unwrap();
        assert!(text.starts_with("__Host-portcullis_device="), "{text}");
        for attribute in ["Path=/", "HttpOnly", "SameSite=Lax", "Secure"] {
            assert!(text.contains(attribute), "{text}");
        }
        assert!(text.contains(&format!("Max-Age={}", 30 * DAY)), "{text}");
        let vouched = d.read(&returned(&set), NOW + 10);
        assert!(vouched.vouches_for("alice"));
        assert!(!vouched.vouches_for("bob"));
        assert!(!vouched.vouches_for("alic"));
        assert!(!vouched.vouches_for(""));
        // Without the prefix (not Secure, or a cookie_domain) the plain name is used and read.
        let plain = KnownDevices {
            host_prefix: false,
            secure: false,
            ..devices(&key)
        };
        let set = plain.set_cookie(&Vouched::default(), "alice", NOW);
        assert!(set.to_str().unwrap().starts_with("portcullis_device="));
        assert!(!set.to_str().unwrap().contains("Secure"));
        assert!(plain.read(&returned(&set), NOW).vouches_for("alice"));
        // …but a prefixed config does not read an unprefixed cookie (a sibling could set it).
        assert!(!d.read(&returned(&set), NOW).vouches_for("alice"));
    }

    #[test]
    fn a_shared_browser_keeps_each_users_sign_in_up_to_four() {
        let key = key(2);
        let d = devices(&key);
        let mut headers = HeaderMap::new();
        for (n, user) in ["alice", "bob", "carol", "dave", "erin"].iter().enumerate() {
            let now = NOW + n as u64;
            let set = d.set_cookie(&d.read(&headers, now), user, now);
            headers = returned(&set);
        }
        let vouched = d.read(&headers, NOW + 10);
        // The oldest sign-in (alice) made room for the fifth user.
        assert!(!vouched.vouches_for("alice"));
        for user in ["bob", "carol", "dave", "erin"] {
            assert!(vouched.vouches_for(user), "{user}");
        }
        // Signing in again renews that user's date and keeps the others' as they were.
        let set = d.set_cookie(&vouched, "bob", NOW + 29 * DAY);
        let later = d.read(&returned(&set), NOW + 30 * DAY + 5);
        assert!(later.vouches_for("bob"));
        assert!(
            !later.vouches_for("carol"),
            "carol's sign-in is 30 days old"
        );
    }

    #[test]
    fn tampered_or_foreign_cookies_vouch_for_nothing() {
        let key_a = key(3);
        let key_b = key(4);
        let d = devices(&key_a);
        let set = d.set_cookie(&Vouched::default(), "alice", NOW);
        let value = value_of(&set);
        let (payload, tag) = value.split_once('.').unwrap();
        // Signed with another key (another secret_file, or before a key change).
        assert!(!devices(&key_b)
            .read(&returned(&set), NOW)
            .vouches_for("alice"));
        // The payload edited to name another user, the tag kept.
        let forged = URL_SAFE_NO_PAD.encode(format!("{NOW}:bob"));
        assert!(!d
            .read(&with_value(&format!("{forged}.{tag}")), NOW)
            .vouches_for("bob"));
        // The issue date pushed forward, to outlive the lifetime.
        let renewed = URL_SAFE_NO_PAD.encode(format!("{}:alice", NOW + 100 * DAY));
        assert!(!d
            .read(&with_value(&format!("{renewed}.{tag}")), NOW + 50 * DAY)
            .vouches_for("alice"));
        // One flipped character of the tag; a truncated tag; no tag; garbage.
        let mut flipped = tag.to_string().into_bytes();
        flipped[0] = if flipped[0] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(flipped).unwrap();
        for bad in [
            format!("{payload}.{flipped}"),
            format!("{payload}.{}", &tag[..20]),
            format!("{payload}."),
            payload.to_string(),
            "not base64!.x".to_string(),
            String::new(),
            "A".repeat(MAX_VALUE_CHARS + 1),
        ] {
            assert!(
                !d.read(&with_value(&bad), NOW).vouches_for("alice"),
                "{bad}"
            );
        }
        // The genuine value still works, also next to a forged one.
        let mut both = HeaderMap::new();
        both.insert(
            http::header::COOKIE,
            HeaderValue::from_str(&format!(
                "{HOST_COOKIE_NAME}={forged}.{tag}; {HOST_COOKIE_NAME}={value}"
            ))
            .unwrap(),
        );
        assert!(d.read(&both, NOW).vouches_for("alice"));
    }

    #[test]
    fn a_sign_in_counts_for_known_device_days_only() {
        let key = key(5);
        let d = devices(&key);
        let headers = returned(&d.set_cookie(&Vouched::default(), "alice", NOW));
        assert!(d.read(&headers, NOW + 30 * DAY - 1).vouches_for("alice"));
        assert!(!d.read(&headers, NOW + 30 * DAY).vouches_for("alice"));
        // A shorter lifetime after a reload applies to cookies issued before it.
        let short = KnownDevices {
            lifetime_secs: DAY,
            ..devices(&key)
        };
        assert!(!short.read(&headers, NOW + 2 * DAY).vouches_for("alice"));
        // Dated in the future beyond the clock skew: not believed.
        assert!(!d
            .read(&headers, NOW - CLOCK_SKEW_SECS - 1)
            .vouches_for("alice"));
        assert!(d.read(&headers, NOW - CLOCK_SKEW_SECS).vouches_for("alice"));
    }

    #[test]
    fn device_cookies_are_stripped_in_both_spellings() {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::COOKIE,
            HeaderValue::from_static(
                "a=1; __Host-portcullis_device=x.y; portcullis_device=z.w; b=2",
            ),
        );
        KnownDevices::strip(&mut headers);
        assert_eq!(headers.get(http::header::COOKIE).unwrap(), "a=1; b=2");
    }
}
