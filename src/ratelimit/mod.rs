//! Brute-force protection on password guessing (SPEC §2 `[rate_limit]`).
//!
//! Failures are counted per key, a client address and a user name, in a sliding window: at
//! most `max_failures` in any `window`-long span. An attempt takes a slot in both of its keys
//! when it is admitted for verification, before its result is known, so concurrent guesses
//! can never exceed the limit; a success gives its slots back (and never resets a count), a
//! failure keeps them as failures. The `max_failures`-th failure in the window locks the key
//! for `lockout`; while a key is locked, or all its slots are taken, attempts are refused with
//! 429 before any hashing and before the verified-credential cache is looked at.
//!
//! Only password failures count: bearer tokens are not guesses of a secret a person chose,
//! and a locked-out client keeps being served on tokens and on sessions it already has.
//!
//! With `session.store = "redis"` the counters live in Redis, so instances share them. Redis
//! is never waited on for more than [`REDIS_BUDGET`]: past it (or on any error) a circuit
//! breaker opens and the instance counts in its own memory until a probe finds Redis again.

mod memory;
mod redis;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use sha2::{Digest, Sha256};

use crate::config::RateLimitSection;
use crate::error::{Denial, DenyReason, FailReason, Failure, Refusal};
use crate::session::RedisStore;
use memory::MemoryCounters;
pub use redis::redis_keys;
use redis::RedisCounters;

/// Most keys (addresses or user names) counted per table. A key stays in its table while it
/// has a failure in the window, an attempt under way or a lock in force; none of those is
/// ever dropped to make room. When a table is full of them, attempts under a key it does not
/// hold are refused with 503 (`overloaded`) until some age out: fail closed, since letting
/// them through uncounted, or forgetting a lock, would switch the protection off for anyone
/// who can first fill the table.
const MAX_TRACKED: usize = 100_000;

/// Fewest milliseconds between two sweeps of a full table for keys with nothing left to
/// count (a sweep walks the whole table).
const SWEEP_INTERVAL_MS: u64 = 1_000;

/// Longest wait for Redis on a password attempt; past it the breaker opens.
pub const REDIS_BUDGET: Duration = Duration::from_millis(50);

/// How long the breaker stays open before one attempt probes Redis again.
const PROBE_INTERVAL_MS: u64 = 1_000;

/// An attempt's slot in Redis whose result never came (its instance died) is given back
/// after this long: longer than any verification may take.
const PENDING_TTL: Duration = Duration::from_secs(30);

/// A user name as the in-memory counters track it: a short name is its own key, a longer one
/// its SHA-256, so a huge name costs no more than a short one (and the usual short name, looked
/// up on every Basic request, costs no hashing).
type UserKey = [u8; 32];

/// Failure counting and lockouts.
pub struct FailureLimiter {
    rules: Rules,
    /// The instance's own counters: the only ones with the memory store, the fallback while
    /// Redis is away with the Redis one.
    local: MemoryCounters,
    redis: Option<Arc<RedisCounters>>,
}

#[derive(Clone, Copy)]
struct Rules {
    max_failures: u32,
    window: Duration,
    lockout: Duration,
}

/// Who an attempt is counted against.
#[derive(Clone, Copy)]
pub struct AttemptKeys<'a> {
    /// The client address.
    pub ip: IpAddr,
    /// The user name tried.
    pub user: &'a str,
    /// The browser carries a valid known-device cookie for `user`: the user's lockout does
    /// not apply to it (its address's does), and its failures count against its address only.
    pub known_device: bool,
    /// The same credential is already verified (cached) or being verified by another
    /// request: this attempt shares that check, so it takes no slot of its own (identical
    /// attempts under way are one guess, and 200 concurrent requests of one signed-in client
    /// must not fill the window). It is still refused while locked or while the window is
    /// full, and if it fails its failure counts.
    pub joins_a_check: bool,
}

/// An admitted password attempt holding a slot in each of its keys. Report its result with
/// [`Attempt::succeeded`] or [`Attempt::failed`]; dropped without either (the verification
/// could not be done, or the client went away), its slots are given back.
#[must_use = "an attempt's result must be reported"]
pub struct Attempt<'a> {
    limiter: &'a FailureLimiter,
    ip: IpAddr,
    user: Option<UserKey>,
    /// Redis user key (hex of the name's SHA-256), when the user is counted.
    redis_user: Option<String>,
    held: Held,
}

enum Held {
    /// Nothing to report (counting is off).
    Nothing,
    Local,
    Redis {
        token: String,
    },
    /// Admitted without a slot (it joins a check): only a failure is recorded.
    LocalJoined,
    RedisJoined {
        token: String,
    },
}

impl FailureLimiter {
    /// In-memory limiter, or a Redis-backed one when sessions live in Redis.
    pub fn new(config: &RateLimitSection, redis: Option<Arc<RedisStore>>) -> Self {
        FailureLimiter {
            rules: Rules {
                max_failures: config.max_failures,
                window: config.window.0,
                lockout: config.lockout.0,
            },
            local: MemoryCounters::new(),
            redis: redis.map(|store| Arc::new(RedisCounters::new(store))),
        }
    }

    /// Admits one password attempt, or refuses it: 429 while a key is locked or has no slot
    /// left in its window, 503 when the counters cannot take a new key.
    pub async fn admit(&self, keys: AttemptKeys<'_>) -> Result<Attempt<'_>, Refusal> {
        let ip = client_key(keys.ip);
        let counted_user = (!keys.known_device).then_some(keys.user);
        let take_slot = !keys.joins_a_check;
        let mut attempt = Attempt {
            limiter: self,
            ip,
            user: counted_user.map(user_key),
            redis_user: None,
            held: Held::Nothing,
        };
        if self.rules.max_failures == 0 {
            return Ok(attempt);
        }
        if let Some(redis) = self.redis.as_ref().filter(|r| r.breaker.try_redis()) {
            let user_hex = counted_user.map(|u| hex::encode(Sha256::digest(u.as_bytes())));
            let token = format!("{:032x}", rand::thread_rng().gen::<u128>());
            match redis
                .admit(&self.rules, ip, user_hex.as_deref(), &token, take_slot)
                .await
            {
                Ok(Ok(())) => {
                    attempt.redis_user = user_hex;
                    attempt.held = if take_slot {
                        Held::Redis { token }
                    } else {
                        Held::RedisJoined { token }
                    };
                    return Ok(attempt);
                }
                Ok(Err(refused)) => return Err(refusal(refused, counted_user.is_some())),
                // Counted locally instead (the breaker is open now).
                Err(()) => {}
            }
        }
        self.local
            .admit(&self.rules, ip, attempt.user, Instant::now(), take_slot)
            .map_err(|refused| refusal(refused, counted_user.is_some()))?;
        attempt.held = if take_slot {
            Held::Local
        } else {
            Held::LocalJoined
        };
        Ok(attempt)
    }

    /// Whether the shared store answered the last time it was asked (always true with the
    /// memory store).
    pub fn store_up(&self) -> bool {
        self.redis.as_ref().is_none_or(|r| r.breaker.is_up())
    }

    /// Whether failures are being counted in this instance's memory because Redis is away.
    pub fn counting_locally(&self) -> bool {
        !self.store_up()
    }

    /// Reports what a check of the store found (the readiness probe asks it too).
    pub fn observe_store(&self, answered: bool) {
        if let Some(redis) = &self.redis {
            if answered {
                redis.breaker.close();
            } else {
                redis.breaker.open();
            }
        }
    }
}

fn refusal(refused: Refused, with_user: bool) -> Refusal {
    let who = if with_user {
        "this client or user"
    } else {
        "this client"
    };
    match refused {
        Refused::Locked(left) => rate_limited(
            left,
            format!(
                "{who} is locked out after too many failed attempts; {}s left",
                whole_secs(left)
            ),
        ),
        Refused::WindowFull(left) => rate_limited(
            left,
            format!("{who} has no attempt left in the failure window (failures or attempts under way)"),
        ),
        Refused::TableFull => Failure::new(
            FailReason::Overloaded,
            "the failure counters are full of clients with recent failures; new clients' password attempts are refused until some age out",
        )
        .into(),
    }
}

fn rate_limited(left: Duration, detail: String) -> Refusal {
    Denial {
        retry_after: Some(whole_secs(left).max(1)),
        ..Denial::new(DenyReason::RateLimited, detail)
    }
    .into()
}

fn whole_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

impl Attempt<'_> {
    /// The password was right: the slots are given back; nothing is reset.
    pub async fn succeeded(mut self) {
        self.settle(false).await;
    }

    /// The password was wrong or the user unknown: the slots become failures.
    pub async fn failed(mut self) {
        self.settle(true).await;
    }

    async fn settle(&mut self, failed: bool) {
        let limiter = self.limiter;
        match std::mem::replace(&mut self.held, Held::Nothing) {
            Held::Nothing => {}
            Held::LocalJoined => {
                if failed {
                    limiter.local.record_failure(
                        &limiter.rules,
                        self.ip,
                        self.user,
                        Instant::now(),
                    );
                }
            }
            Held::Local => {
                limiter
                    .local
                    .settle(&limiter.rules, self.ip, self.user, failed, Instant::now());
            }
            Held::RedisJoined { .. } if !failed => {}
            // Settling a token that holds no pending slot only records the failure.
            Held::Redis { token } | Held::RedisJoined { token } => {
                let Some(redis) = limiter.redis.clone() else {
                    return;
                };
                let rules = limiter.rules;
                let ip = self.ip;
                let user = self.redis_user.take();
                if failed {
                    // Awaited (within the budget), so the next attempt sees the failure; on
                    // an outage the pending slot turns into nothing after PENDING_TTL, and the
                    // failure is counted locally meanwhile.
                    if redis
                        .settle(&rules, ip, user.as_deref(), &token, true)
                        .await
                        .is_err()
                    {
                        limiter
                            .local
                            .record_failure(&rules, ip, self.user, Instant::now());
                    }
                } else {
                    // Giving a slot back need not hold up the response.
                    tokio::spawn(async move {
                        let _ = redis
                            .settle(&rules, ip, user.as_deref(), &token, false)
                            .await;
                    });
                }
            }
        }
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        match std::mem::replace(&mut self.held, Held::Nothing) {
            Held::Nothing | Held::LocalJoined | Held::RedisJoined { .. } => {}
            Held::Local => self.limiter.local.settle(
                &self.limiter.rules,
                self.ip,
                self.user,
                false,
                Instant::now(),
            ),
            Held::Redis { token } => {
                if let (Some(redis), Ok(handle)) = (
                    self.limiter.redis.clone(),
                    tokio::runtime::Handle::try_current(),
                ) {
                    let rules = self.limiter.rules;
                    let ip = self.ip;
                    let user = self.redis_user.take();
                    handle.spawn(async move {
                        let _ = redis
                            .settle(&rules, ip, user.as_deref(), &token, false)
                            .await;
                    });
                }
            }
        }
    }
}

/// The address failures are counted under: an IPv6 client is its /64, the block one host or
/// one customer is normally given, so it cannot dodge the lockout by rotating addresses
/// inside it. IPv4 addresses count alone.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(prefix.into())
            }
        },
    }
}

fn user_key(user: &str) -> UserKey {
    let name = user.as_bytes();
    let mut key = [0u8; 32];
    if name.len() < key.len() {
        // The length first: no two short names share a key, and no short name's key starts
        // with the 0xff a hashed one does.
        key[0] = name.len() as u8;
        key[1..=name.len()].copy_from_slice(name);
    } else {
        key = Sha256::digest(name).into();
        key[0] = 0xff;
    }
    key
}

/// What admission decided.
type Verdict = Result<(), Refused>;

/// Why an attempt was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refused {
    /// Locked for this long still.
    Locked(Duration),
    /// Every slot of the window is a failure or an attempt under way; one frees in about this.
    WindowFull(Duration),
    /// The table cannot take a new key.
    TableFull,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HumanDuration;

    fn config(max: u32, window_s: u64) -> RateLimitSection {
        RateLimitSection {
            max_failures: max,
            window: HumanDuration(Duration::from_secs(window_s)),
            lockout: HumanDuration(Duration::from_secs(900)),
            ..RateLimitSection::default()
        }
    }

    fn rules(max: u32, window_s: u64, lockout_s: u64) -> Rules {
        Rules {
            max_failures: max,
            window: Duration::from_secs(window_s),
            lockout: Duration::from_secs(lockout_s),
        }
    }

    fn ip(n: u32) -> IpAddr {
        IpAddr::from(n.to_be_bytes())
    }

    fn keys(ip: IpAddr, user: &str) -> AttemptKeys<'_> {
        AttemptKeys {
            ip,
            user,
            known_device: false,
            joins_a_check: false,
        }
    }

    fn reason(refusal: Refusal) -> &'static str {
        refusal.reason_code()
    }

    #[tokio::test]
    async fn the_max_failures_th_failure_locks_and_a_success_never_resets() {
        let limiter = FailureLimiter::new(&config(3, 300), None);
        let a = ip(1);
        // A success between failures gives its slot back and resets nothing.
        limiter
            .admit(keys(a, "alice"))
            .await
            .unwrap()
            .failed()
            .await;
        limiter
            .admit(keys(a, "alice"))
            .await
            .unwrap()
            .succeeded()
            .await;
        limiter
            .admit(keys(a, "alice"))
            .await
            .unwrap()
            .failed()
            .await;
        limiter
            .admit(keys(a, "alice"))
            .await
            .unwrap()
            .failed()
            .await;
        let Err(Refusal::Deny(denial)) = limiter.admit(keys(a, "alice")).await else {
            panic!("the third failure locks")
        };
        assert_eq!(denial.reason, DenyReason::RateLimited);
        assert!(denial.retry_after.unwrap() > 890);
        // The user is locked from any address, and the address for any user.
        assert!(limiter.admit(keys(ip(2), "alice")).await.is_err());
        assert!(limiter.admit(keys(a, "bob")).await.is_err());
        assert!(limiter.admit(keys(ip(2), "bob")).await.is_ok());
    }

    #[tokio::test]
    async fn attempts_under_way_take_slots() {
        let limiter = FailureLimiter::new(&config(3, 300), None);
        let held: Vec<_> =
            futures_util::future::join_all((0..3).map(|_| limiter.admit(keys(ip(1), "alice"))))
                .await
                .into_iter()
                .map(Result::unwrap)
                .collect();
        let refused = limiter.admit(keys(ip(1), "alice")).await.err().unwrap();
        assert_eq!(reason(refused), "rate_limited");
        // A success gives its slot back; a dropped attempt too.
        let mut held = held.into_iter();
        held.next().unwrap().succeeded().await;
        drop(held.next());
        limiter
            .admit(keys(ip(1), "alice"))
            .await
            .unwrap()
            .failed()
            .await;
        held.next().unwrap().failed().await;
        assert!(limiter.admit(keys(ip(1), "alice")).await.is_ok());
    }

    /// Attempts that join a check already cached or under way take no slot (200 concurrent
    /// requests of one signed-in client are one guess), are refused while the window is
    /// full, and their failures still count.
    #[tokio::test]
    async fn attempts_joining_a_check_take_no_slot_but_their_failures_count() {
        let limiter = FailureLimiter::new(&config(3, 300), None);
        let joined = |ip| AttemptKeys {
            joins_a_check: true,
            ..keys(ip, "alice")
        };
        let leader = limiter.admit(keys(ip(1), "alice")).await.unwrap();
        let followers: Vec<_> =
            futures_util::future::join_all((0..50).map(|_| limiter.admit(joined(ip(1)))))
                .await
                .into_iter()
                .map(Result::unwrap)
                .collect();
        for follower in followers {
            follower.succeeded().await;
        }
        leader.succeeded().await;
        // Two joined failures and one of its own fill the window of three.
        limiter.admit(joined(ip(1))).await.unwrap().failed().await;
        limiter.admit(joined(ip(1))).await.unwrap().failed().await;
        limiter
            .admit(keys(ip(1), "alice"))
            .await
            .unwrap()
            .failed()
            .await;
        let refused = limiter.admit(joined(ip(1))).await.err().unwrap();
        assert_eq!(reason(refused), "rate_limited");
    }

    #[test]
    fn the_window_slides() {
        let rules = rules(3, 10, 1);
        let counters = MemoryCounters::new();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        for s in [0, 4, 8] {
            assert_eq!(counters.admit(&rules, ip(1), None, at(s), true), Ok(()));
            counters.settle(&rules, ip(1), None, true, at(s));
        }
        // Locked for a second, then the window is still full until the first failure is 10s old.
        assert!(matches!(
            counters.admit(&rules, ip(1), None, at(8), true),
            Err(Refused::Locked(_))
        ));
        assert_eq!(
            counters.admit(&rules, ip(1), None, at(9), true),
            Err(Refused::WindowFull(Duration::from_secs(1)))
        );
        assert_eq!(counters.admit(&rules, ip(1), None, at(10), true), Ok(()));
        counters.settle(&rules, ip(1), None, true, at(10));
        assert!(matches!(
            counters.admit(&rules, ip(1), None, at(10), true),
            Err(Refused::Locked(_))
        ));
        // Never more than three failures in any ten-second span.
        assert!(matches!(
            counters.admit(&rules, ip(1), None, at(13), true),
            Err(Refused::WindowFull(_))
        ));
        assert_eq!(counters.admit(&rules, ip(1), None, at(14), true), Ok(()));
    }

    #[test]
    fn user_keys_are_distinct_for_short_and_long_names() {
        let long = "x".repeat(40);
        let keys = [
            user_key(""),
            user_key("a"),
            user_key("a\0"),
            user_key("ab"),
            user_key(&"y".repeat(31)),
            user_key(&"y".repeat(32)),
            user_key(&long),
            user_key(&format!("{long}!")),
        ];
        for (i, a) in keys.iter().enumerate() {
            for b in &keys[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(user_key(&long), user_key(&long));
    }

    #[tokio::test]
    async fn an_ipv6_client_is_counted_by_its_64() {
        let limiter = FailureLimiter::new(&config(2, 300), None);
        let first: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let same_64: IpAddr = "2001:db8:1:2:ffff:1:2:3".parse().unwrap();
        let other_64: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        limiter
            .admit(keys(first, "a"))
            .await
            .unwrap()
            .failed()
            .await;
        limiter
            .admit(keys(same_64, "b"))
            .await
            .unwrap()
            .failed()
            .await;
        assert!(limiter.admit(keys(same_64, "c")).await.is_err());
        assert!(limiter.admit(keys(first, "d")).await.is_err());
        assert!(limiter.admit(keys(other_64, "e")).await.is_ok());
        assert_eq!(
            client_key("::ffff:192.0.2.7".parse().unwrap()),
            "192.0.2.7".parse::<IpAddr>().unwrap()
        );
    }

    #[tokio::test]
    async fn zero_disables_and_one_locks_at_once() {
        let off = FailureLimiter::new(&config(0, 300), None);
        for _ in 0..20 {
            off.admit(keys(ip(1), "a")).await.unwrap().failed().await;
        }
        assert!(off.admit(keys(ip(1), "a")).await.is_ok());
        let strict = FailureLimiter::new(&config(1, 300), None);
        strict.admit(keys(ip(1), "a")).await.unwrap().failed().await;
        assert!(strict.admit(keys(ip(1), "b")).await.is_err());
    }

    #[tokio::test]
    async fn a_known_device_skips_the_user_lock_but_not_the_address_lock() {
        let limiter = FailureLimiter::new(&config(2, 300), None);
        for n in 0..2 {
            limiter
                .admit(keys(ip(n), "alice"))
                .await
                .unwrap()
                .failed()
                .await;
        }
        assert!(limiter.admit(keys(ip(9), "alice")).await.is_err());
        let device = AttemptKeys {
            known_device: true,
            ..keys(ip(9), "alice")
        };
        limiter.admit(device).await.unwrap().succeeded().await;
        // Its failures count against its address only.
        limiter.admit(device).await.unwrap().failed().await;
        limiter.admit(device).await.unwrap().failed().await;
        assert!(limiter.admit(device).await.is_err());
    }

    #[tokio::test]
    async fn a_full_table_refuses_new_keys_and_never_drops_a_lock() {
        let limiter = FailureLimiter::new(&config(1, 300), None);
        // Every failure locks its address and its user name.
        for n in 0..MAX_TRACKED as u32 {
            limiter
                .admit(keys(ip(n), &format!("user{n}")))
                .await
                .unwrap()
                .failed()
                .await;
        }
        let refused = limiter
            .admit(keys(ip(MAX_TRACKED as u32), "newcomer"))
            .await
            .err()
            .unwrap();
        assert_eq!(reason(refused), "overloaded");
        // The first lock is still in force.
        let refused = limiter.admit(keys(ip(0), "other")).await.err().unwrap();
        assert_eq!(reason(refused), "rate_limited");
        let tables = limiter.local.tables.lock();
        assert_eq!(tables.ips.slots.len(), MAX_TRACKED);
        assert_eq!(tables.users.slots.len(), MAX_TRACKED);
    }

    #[test]
    fn a_full_table_makes_room_from_keys_with_nothing_left_to_count() {
        let rules = rules(3, 10, 1);
        let counters = MemoryCounters::new();
        let t0 = Instant::now();
        for n in 0..MAX_TRACKED as u32 {
            assert_eq!(counters.admit(&rules, ip(n), None, t0, true), Ok(()));
            counters.settle(&rules, ip(n), None, true, t0);
        }
        assert_eq!(
            counters.admit(&rules, ip(u32::MAX), None, t0, true),
            Err(Refused::TableFull)
        );
        // Once those failures have left the window, their keys make room.
        let later = t0 + Duration::from_secs(11);
        assert_eq!(
            counters.admit(&rules, ip(u32::MAX), None, later, true),
            Ok(())
        );
        assert_eq!(counters.tables.lock().ips.slots.len(), 1);
    }

    #[test]
    fn successes_leave_nothing_behind() {
        let rules = rules(3, 10, 1);
        let counters = MemoryCounters::new();
        let now = Instant::now();
        for n in 0..1000 {
            assert_eq!(
                counters.admit(&rules, ip(n), Some(user_key("alice")), now, true),
                Ok(())
            );
            counters.settle(&rules, ip(n), Some(user_key("alice")), false, now);
        }
        let tables = counters.tables.lock();
        assert!(tables.ips.slots.is_empty() && tables.users.slots.is_empty());
    }

    #[test]
    fn redis_keys_of_one_counted_key_share_a_hash_tag() {
        let [a, b, c] = redis_keys("ip", "192.0.2.1");
        assert_eq!(a, "portcullis:{fail:ip:192.0.2.1}:failures");
        for key in [&b, &c] {
            assert!(key.starts_with("portcullis:{fail:ip:192.0.2.1}:"));
        }
    }
}
