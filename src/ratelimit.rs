//! Brute-force protection: failed credential checks are counted per client IP and per user
//! name; past `max_failures` within `window`, that IP or user is locked out for `lockout`
//! (429 with `Retry-After`), and no password is hashed for it meanwhile.
//!
//! In memory, governor's GCRA limiter does the counting (a burst of `max_failures - 1`
//! refilled over `window`); with `session.store = "redis"` the counters live in Redis so a
//! cluster shares them.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use parking_lot::{Mutex, RwLock};
use sha2::{Digest, Sha256};

use crate::config::RateLimitSection;
use crate::error::{Denial, DenyReason};
use crate::session::RedisStore;

/// Most keys (IPs or user names) tracked per map: a flood of distinct keys costs at most
/// this much memory (about 100 bytes each); past it the oldest state is dropped.
const MAX_TRACKED: usize = 100_000;

/// A user name as the in-memory counters track it: a short name is its own key, a longer one
/// its SHA-256, so a huge name costs no more than a short one (and the usual short name, looked
/// up on every Basic request, costs no hashing).
type UserKey = [u8; 32];

/// Failure counting and lockouts.
pub struct FailureLimiter {
    max_failures: u32,
    window: Duration,
    lockout: Duration,
    backend: Backend,
}

enum Backend {
    Memory(Box<MemoryCounters>),
    Redis(Arc<RedisStore>),
}

struct MemoryCounters {
    ips: Counters<IpAddr>,
    users: Counters<UserKey>,
    locked_ips: Mutex<Locks<IpAddr>>,
    locked_users: Mutex<Locks<UserKey>>,
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

impl FailureLimiter {
    /// In-memory limiter, or a Redis-backed one when sessions live in Redis.
    pub fn new(config: &RateLimitSection, redis: Option<Arc<RedisStore>>) -> Self {
        let backend = match redis {
            Some(store) => Backend::Redis(store),
            None => Backend::Memory(Box::new(MemoryCounters::new(config))),
        };
        FailureLimiter {
            max_failures: config.max_failures,
            window: config.window.0,
            lockout: config.lockout.0,
            backend,
        }
    }

    /// Refuses a locked-out IP or user before any credential work is done.
    pub async fn check(&self, ip: IpAddr, user: Option<&str>) -> Result<(), Denial> {
        if self.max_failures == 0 {
            return Ok(());
        }
        let ip = client_key(ip);
        let remaining = match &self.backend {
            Backend::Memory(m) => m.locked_for(ip, user.map(user_key)),
            Backend::Redis(r) => redis_locked_for(r, ip, user).await,
        };
        match remaining {
            Some(left) => {
                let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
                let who = if user.is_some() {
                    "this client or user"
                } else {
                    "this client"
                };
                Err(Denial {
                    retry_after: Some(secs.max(1)),
                    ..Denial::new(
                        DenyReason::RateLimited,
                        format!("{who} is locked out after too many failed attempts; {secs}s left"),
                    )
                })
            }
            None => Ok(()),
        }
    }

    /// Counts one failed credential check against the IP and (when known) the user name.
    pub async fn record_failure(&self, ip: IpAddr, user: Option<&str>) {
        if self.max_failures == 0 {
            return;
        }
        let ip = client_key(ip);
        match &self.backend {
            Backend::Memory(m) => m.record(ip, user.map(user_key), self.lockout),
            Backend::Redis(r) => {
                if let Err(err) =
                    redis_record(r, ip, user, self.max_failures, self.window, self.lockout).await
                {
                    // Failing open here only loses a count; the credential was refused anyway.
                    tracing::warn!(error = %err, "cannot count a failed attempt in redis");
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

// === impl MemoryCounters ===

impl MemoryCounters {
    fn new(config: &RateLimitSection) -> Self {
        // `max_failures` failures lock: the first `max_failures - 1` fit in the burst, and the
        // one that does not fit triggers the lockout, so the attempt after it gets 429.
        let quota = NonZeroU32::new(config.max_failures.saturating_sub(1)).and_then(|burst| {
            let period = config
                .window
                .0
                .checked_div(config.max_failures)?
                .max(Duration::from_millis(1));
            Some(Quota::with_period(period)?.allow_burst(burst))
        });
        MemoryCounters {
            ips: Counters::new(quota),
            users: Counters::new(quota),
            locked_ips: Mutex::new(Locks::default()),
            locked_users: Mutex::new(Locks::default()),
        }
    }

    fn locked_for(&self, ip: IpAddr, user: Option<UserKey>) -> Option<Duration> {
        let now = Instant::now();
        let ip_left = self.locked_ips.lock().remaining(&ip, now);
        let user_left = user.and_then(|u| self.locked_users.lock().remaining(&u, now));
        ip_left.max(user_left)
    }

    fn record(&self, ip: IpAddr, user: Option<UserKey>, lockout: Duration) {
        let until = Instant::now() + lockout;
        if self.ips.exceeded(&ip) {
            self.locked_ips.lock().insert(ip, until);
        }
        if let Some(user) = user {
            if self.users.exceeded(&user) {
                self.locked_users.lock().insert(user, until);
            }
        }
    }
}

/// One governor keyed limiter, replaced by a fresh one when it tracks too many keys (a flood
/// of distinct IPs or names must not grow memory without bound; lockouts already in force
/// are kept separately and survive the reset).
struct Counters<K: Hash + Eq + Clone> {
    quota: Option<Quota>,
    limiter: RwLock<Option<DefaultKeyedRateLimiter<K>>>,
}

impl<K: Hash + Eq + Clone> Counters<K> {
    fn new(quota: Option<Quota>) -> Self {
        Counters {
            quota,
            limiter: RwLock::new(quota.map(RateLimiter::keyed)),
        }
    }

    /// Takes one failure token; `true` when none was left (always, for a limit of one).
    fn exceeded(&self, key: &K) -> bool {
        let full = match &*self.limiter.read() {
            Some(limiter) => limiter.len() >= MAX_TRACKED,
            None => return true,
        };
        if full {
            let mut limiter = self.limiter.write();
            if let Some(current) = limiter.as_ref() {
                current.retain_recent();
                if current.len() >= MAX_TRACKED {
                    *limiter = self.quota.map(RateLimiter::keyed);
                }
            }
        }
        self.limiter
            .read()
            .as_ref()
            .is_none_or(|limiter| limiter.check_key(key).is_err())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.limiter.read().as_ref().map_or(0, |l| l.len())
    }
}

/// Lockouts in force, at most `MAX_TRACKED` of them. Every lock lasts the same `lockout`, so
/// the order they were taken in is the order they end in: expired locks are dropped from the
/// front as new ones come, and when the map is full of live locks the one closest to its end
/// makes room. (Skipping new locks instead would let a flood of locked keys switch the
/// lockout off for everyone else.)
struct Locks<K> {
    until: HashMap<K, Instant>,
    /// Keys in the order they were locked; a key locked again appears twice, and only the
    /// entry matching `until` counts.
    order: VecDeque<(Instant, K)>,
}

impl<K> Default for Locks<K> {
    fn default() -> Self {
        Locks {
            until: HashMap::new(),
            order: VecDeque::new(),
        }
    }
}

impl<K: Hash + Eq + Clone> Locks<K> {
    fn remaining(&self, key: &K, now: Instant) -> Option<Duration> {
        let until = *self.until.get(key)?;
        (until > now).then(|| until - now)
    }

    fn insert(&mut self, key: K, until: Instant) {
        let now = Instant::now();
        while let Some((end, _)) = self.order.front() {
            let full = self.until.len() >= MAX_TRACKED || self.order.len() >= 2 * MAX_TRACKED;
            if *end > now && !full {
                break;
            }
            if let Some((end, old)) = self.order.pop_front() {
                if self.until.get(&old) == Some(&end) {
                    self.until.remove(&old);
                }
            }
        }
        self.until.insert(key.clone(), until);
        self.order.push_back((until, key));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.until.len()
    }
}

// === Redis counters ===

/// INCR the failure counter (expiring with the window) and, at the limit, set the lock key.
const RECORD_SCRIPT: &str = r"
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
if n >= tonumber(ARGV[2]) then
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[3])
  redis.call('DEL', KEYS[1])
end
return n
";

fn redis_keys(ip: IpAddr, user: Option<&str>) -> Vec<(String, String)> {
    let mut keys = vec![(
        format!("portcullis:fail:ip:{ip}"),
        format!("portcullis:lock:ip:{ip}"),
    )];
    if let Some(user) = user {
        let hex = hex::encode(Sha256::digest(user.as_bytes()));
        keys.push((
            format!("portcullis:fail:user:{hex}"),
            format!("portcullis:lock:user:{hex}"),
        ));
    }
    keys
}

async fn redis_locked_for(store: &RedisStore, ip: IpAddr, user: Option<&str>) -> Option<Duration> {
    let mut longest: Option<Duration> = None;
    for (_, lock_key) in redis_keys(ip, user) {
        // A Redis outage must not lock everyone out (nor let anyone hash without limit: the
        // hashing queue stays bounded), so an unanswered check counts as not locked.
        let ttl: i64 = store
            .command(redis::cmd("PTTL").arg(&lock_key))
            .await
            .unwrap_or(-2);
        if ttl > 0 {
            let left = Duration::from_millis(ttl.unsigned_abs());
            longest = Some(longest.map_or(left, |l| l.max(left)));
        }
    }
    longest
}

async fn redis_record(
    store: &RedisStore,
    ip: IpAddr,
    user: Option<&str>,
    max_failures: u32,
    window: Duration,
    lockout: Duration,
) -> Result<(), crate::session::StoreError> {
    let script = redis::Script::new(RECORD_SCRIPT);
    for (count_key, lock_key) in redis_keys(ip, user) {
        let mut invocation = script.key(&count_key);
        invocation
            .key(&lock_key)
            .arg(window.as_millis().max(1) as u64)
            .arg(max_failures)
            .arg(lockout.as_millis().max(1) as u64);
        store.script::<i64>(&invocation).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HumanDuration;

    fn config(max: u32) -> RateLimitSection {
        RateLimitSection {
            max_failures: max,
            window: HumanDuration(Duration::from_secs(300)),
            lockout: HumanDuration(Duration::from_secs(900)),
        }
    }

    #[tokio::test]
    async fn the_attempt_after_max_failures_is_refused() {
        let limiter = FailureLimiter::new(&config(3), None);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..3 {
            assert!(limiter.check(ip, Some("alice")).await.is_ok());
            limiter.record_failure(ip, Some("alice")).await;
        }
        let denial = limiter.check(ip, Some("alice")).await.unwrap_err();
        assert_eq!(denial.reason, DenyReason::RateLimited);
        assert!(denial.retry_after.unwrap() > 890);
        // The user is locked from any IP, and the IP for any user.
        assert!(limiter
            .check("192.0.2.2".parse().unwrap(), Some("alice"))
            .await
            .is_err());
        assert!(limiter.check(ip, Some("bob")).await.is_err());
        assert!(limiter
            .check("192.0.2.2".parse().unwrap(), Some("bob"))
            .await
            .is_ok());
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
        let limiter = FailureLimiter::new(&config(2), None);
        let first: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let same_64: IpAddr = "2001:db8:1:2:ffff:1:2:3".parse().unwrap();
        let other_64: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        limiter.record_failure(first, None).await;
        limiter.record_failure(same_64, None).await;
        assert!(limiter.check(same_64, None).await.is_err());
        assert!(limiter.check(first, None).await.is_err());
        assert!(limiter.check(other_64, None).await.is_ok());
        assert_eq!(
            client_key("::ffff:192.0.2.7".parse().unwrap()),
            "192.0.2.7".parse::<IpAddr>().unwrap()
        );
    }

    #[tokio::test]
    async fn zero_disables_and_one_locks_at_once() {
        let off = FailureLimiter::new(&config(0), None);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..20 {
            off.record_failure(ip, None).await;
        }
        assert!(off.check(ip, None).await.is_ok());
        let strict = FailureLimiter::new(&config(1), None);
        strict.record_failure(ip, None).await;
        assert!(strict.check(ip, None).await.is_err());
    }

    #[tokio::test]
    async fn memory_stays_bounded_under_a_flood_of_keys() {
        let limiter = FailureLimiter::new(&config(2), None);
        for n in 0..(MAX_TRACKED as u32 + 5_000) {
            let ip = IpAddr::from(n.to_be_bytes());
            limiter.record_failure(ip, Some(&format!("user{n}"))).await;
        }
        let Backend::Memory(m) = &limiter.backend else {
            unreachable!()
        };
        assert!(m.ips.len() <= MAX_TRACKED + 1);
        assert!(m.users.len() <= MAX_TRACKED + 1);
        assert!(m.locked_ips.lock().len() <= MAX_TRACKED);
    }

    #[test]
    fn a_full_lock_map_makes_room_by_ending_the_oldest_lock() {
        let mut locks = Locks::default();
        let until = Instant::now() + Duration::from_secs(900);
        for n in 0..MAX_TRACKED as u32 + 10 {
            locks.insert(n, until);
        }
        assert_eq!(locks.len(), MAX_TRACKED);
        let now = Instant::now();
        assert!(locks.remaining(&9, now).is_none(), "the oldest made room");
        assert!(locks.remaining(&10, now).is_some());
        assert!(locks.remaining(&(MAX_TRACKED as u32 + 9), now).is_some());
        // Re-locking a key keeps one lock for it, with the later end.
        let later = until + Duration::from_secs(60);
        locks.insert(10, later);
        assert_eq!(locks.len(), MAX_TRACKED);
        assert!(locks.remaining(&10, now).unwrap() > Duration::from_secs(900));
    }

    #[test]
    fn expired_locks_are_dropped_as_new_ones_come() {
        let mut locks = Locks::default();
        let past = Instant::now();
        locks.insert(1u32, past);
        locks.insert(2u32, past);
        locks.insert(3u32, Instant::now() + Duration::from_secs(60));
        assert_eq!(locks.len(), 1);
    }

    #[tokio::test]
    async fn lockout_maps_stay_bounded_under_a_flood_of_locked_keys() {
        // A limit of one: every failure locks its IP and its user name.
        let limiter = FailureLimiter::new(&config(1), None);
        for n in 0..(MAX_TRACKED as u32 + 100) {
            let ip = IpAddr::from(n.to_be_bytes());
            limiter.record_failure(ip, Some(&format!("user{n}"))).await;
        }
        let Backend::Memory(m) = &limiter.backend else {
            unreachable!()
        };
        assert_eq!(m.locked_ips.lock().len(), MAX_TRACKED);
        assert_eq!(m.locked_users.lock().len(), MAX_TRACKED);
        // The newest locks are in force; the oldest made room for them.
        let newest = MAX_TRACKED as u32 + 99;
        let last = IpAddr::from(newest.to_be_bytes());
        assert!(limiter
            .check(last, Some(&format!("user{newest}")))
            .await
            .is_err());
        let first = IpAddr::from(0u32.to_be_bytes());
        assert!(limiter.check(first, None).await.is_ok());
    }
}
