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

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rand::Rng;
use sha2::{Digest, Sha256};

use crate::config::RateLimitSection;
use crate::error::{Denial, DenyReason, FailReason, Failure, Refusal};
use crate::session::RedisStore;

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

// === impl MemoryCounters ===

/// In-process counters: both tables behind one lock, so an attempt's two keys are admitted
/// together or not at all.
struct MemoryCounters {
    tables: Mutex<Tables>,
}

struct Tables {
    ips: Table<IpAddr>,
    users: Table<UserKey>,
}

struct Table<K> {
    slots: HashMap<K, Slots>,
    last_sweep: Option<Instant>,
}

/// One key's window.
#[derive(Default)]
struct Slots {
    /// When each failure still in the window happened, oldest first (at most `max_failures`).
    failures: VecDeque<Instant>,
    /// Attempts admitted whose result is not known yet.
    pending: u32,
    locked_until: Option<Instant>,
}

impl Slots {
    fn forget_old(&mut self, rules: &Rules, now: Instant) {
        while let Some(first) = self.failures.front() {
            if now.saturating_duration_since(*first) < rules.window {
                break;
            }
            self.failures.pop_front();
        }
        if self.locked_until.is_some_and(|until| until <= now) {
            self.locked_until = None;
        }
    }

    fn verdict(&mut self, rules: &Rules, now: Instant) -> Verdict {
        self.forget_old(rules, now);
        if let Some(until) = self.locked_until {
            return Err(Refused::Locked(until - now));
        }
        if self.failures.len() + self.pending as usize >= rules.max_failures as usize {
            // The oldest failure leaves the window first; with only attempts under way, one
            // is answered within moments.
            let frees = self
                .failures
                .front()
                .map_or(Duration::from_secs(1), |first| {
                    (*first + rules.window).saturating_duration_since(now)
                });
            return Err(Refused::WindowFull(frees));
        }
        Ok(())
    }

    fn fail(&mut self, rules: &Rules, now: Instant) {
        self.forget_old(rules, now);
        self.failures.push_back(now);
        while self.failures.len() > rules.max_failures as usize {
            self.failures.pop_front();
        }
        if self.failures.len() >= rules.max_failures as usize {
            self.locked_until = Some(now + rules.lockout);
        }
    }

    fn is_idle(&self) -> bool {
        self.failures.is_empty() && self.pending == 0 && self.locked_until.is_none()
    }
}

impl<K: Hash + Eq + Copy> Table<K> {
    fn new() -> Self {
        Table {
            slots: HashMap::new(),
            last_sweep: None,
        }
    }

    fn verdict(&mut self, rules: &Rules, key: &K, now: Instant) -> Verdict {
        if let Some(slots) = self.slots.get_mut(key) {
            return slots.verdict(rules, now);
        }
        if self.slots.len() >= MAX_TRACKED && !self.make_room(rules, now) {
            return Err(Refused::TableFull);
        }
        Ok(())
    }

    /// Drops keys with nothing left to count, at most once per SWEEP_INTERVAL_MS.
    fn make_room(&mut self, rules: &Rules, now: Instant) -> bool {
        let due = self.last_sweep.is_none_or(|last| {
            now.saturating_duration_since(last) >= Duration::from_millis(SWEEP_INTERVAL_MS)
        });
        if due {
            self.last_sweep = Some(now);
            self.slots.retain(|_, slots| {
                slots.forget_old(rules, now);
                !slots.is_idle()
            });
        }
        self.slots.len() < MAX_TRACKED
    }

    fn take(&mut self, key: K) {
        self.slots.entry(key).or_default().pending += 1;
    }

    fn settle(&mut self, rules: &Rules, key: &K, failed: bool, now: Instant) {
        let Some(slots) = self.slots.get_mut(key) else {
            return;
        };
        slots.pending = slots.pending.saturating_sub(1);
        if failed {
            slots.fail(rules, now);
        }
        if slots.is_idle() {
            self.slots.remove(key);
        }
    }
}

impl MemoryCounters {
    fn new() -> Self {
        MemoryCounters {
            tables: Mutex::new(Tables {
                ips: Table::new(),
                users: Table::new(),
            }),
        }
    }

    fn admit(
        &self,
        rules: &Rules,
        ip: IpAddr,
        user: Option<UserKey>,
        now: Instant,
        take_slot: bool,
    ) -> Verdict {
        let mut tables = self.tables.lock();
        let ip_verdict = tables.ips.verdict(rules, &ip, now);
        let user_verdict = match &user {
            Some(user) => tables.users.verdict(rules, user, now),
            None => Ok(()),
        };
        match (ip_verdict, user_verdict) {
            (Ok(()), Ok(())) if !take_slot => Ok(()),
            (Ok(()), Ok(())) => {
                tables.ips.take(ip);
                if let Some(user) = user {
                    tables.users.take(user);
                }
                Ok(())
            }
            (Ok(()), Err(refused)) | (Err(refused), Ok(())) => Err(refused),
            (Err(a), Err(b)) => Err(worst(a, b)),
        }
    }

    fn settle(&self, rules: &Rules, ip: IpAddr, user: Option<UserKey>, failed: bool, now: Instant) {
        let mut tables = self.tables.lock();
        tables.ips.settle(rules, &ip, failed, now);
        if let Some(user) = user {
            tables.users.settle(rules, &user, failed, now);
        }
    }

    /// A failure whose slot was taken elsewhere (in Redis, which then went away).
    fn record_failure(&self, rules: &Rules, ip: IpAddr, user: Option<UserKey>, now: Instant) {
        let mut tables = self.tables.lock();
        if tables.ips.verdict(rules, &ip, now) != Err(Refused::TableFull) {
            tables.ips.slots.entry(ip).or_default().fail(rules, now);
        }
        if let Some(user) = user {
            if tables.users.verdict(rules, &user, now) != Err(Refused::TableFull) {
                tables.users.slots.entry(user).or_default().fail(rules, now);
            }
        }
    }
}

/// Of two refusals, the one that waits longest; a lock is told before a full table (its
/// `Retry-After` means something).
fn worst(a: Refused, b: Refused) -> Refused {
    let wait = |r: Refused| match r {
        Refused::Locked(d) | Refused::WindowFull(d) => Some(d),
        Refused::TableFull => None,
    };
    match (wait(a), wait(b)) {
        (Some(x), Some(y)) if y > x => b,
        (Some(_), Some(_)) | (Some(_), None) | (None, None) => a,
        (None, Some(_)) => b,
    }
}

// === Redis counters ===

/// Admission for one key, atomically: refused while locked or while failures and attempts
/// under way fill the window; otherwise a pending slot is taken under the attempt's token.
/// Returns {0} admitted, {1, ms} locked, {2, ms} window full. Redis's own clock is used, so
/// instances whose clocks differ still agree on the window.
const ADMIT_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local locked = redis.call('PTTL', KEYS[3])
if locked > 0 then return {1, locked} end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[3]))
local used = redis.call('ZCARD', KEYS[1]) + redis.call('ZCARD', KEYS[2])
if used >= tonumber(ARGV[2]) then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  local frees = 1000
  if oldest[2] then frees = tonumber(oldest[2]) + window - now end
  return {2, frees}
end
if ARGV[5] == '1' then
  redis.call('ZADD', KEYS[2], now, ARGV[4])
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
end
return {0, 0}
";

/// An attempt's result for one key: its pending slot goes; a failure stays in the window
/// and, at `max_failures`, locks the key.
const SETTLE_SCRIPT: &str = r"
redis.call('ZREM', KEYS[2], ARGV[1])
if ARGV[2] == '1' then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local window = tonumber(ARGV[3])
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
  redis.call('ZADD', KEYS[1], now, ARGV[1])
  redis.call('PEXPIRE', KEYS[1], window)
  if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then
    redis.call('SET', KEYS[3], '1', 'PX', ARGV[5])
  end
end
return 0
";

/// The Redis keys of one counted key: its failures, its attempts under way and its lock.
/// The hash tag (`{…}`) puts all three in one slot, as every script touches them together
/// (a Redis Cluster requires it); different keys may live on different nodes.
pub fn redis_keys(kind: &str, id: &str) -> [String; 3] {
    [
        format!("portcullis:{{fail:{kind}:{id}}}:failures"),
        format!("portcullis:{{fail:{kind}:{id}}}:pending"),
        format!("portcullis:{{fail:{kind}:{id}}}:lock"),
    ]
}

fn counted_keys(ip: IpAddr, user_hex: Option<&str>) -> Vec<[String; 3]> {
    let mut keys = vec![redis_keys("ip", &ip.to_string())];
    if let Some(hex) = user_hex {
        keys.push(redis_keys("user", hex));
    }
    keys
}

/// The counters in Redis. The scripts are sent whole (EVAL, a few hundred bytes) rather than
/// by digest: a pipelined EVALSHA is not retried after a Redis restart forgot the script.
struct RedisCounters {
    store: Arc<RedisStore>,
    breaker: Breaker,
}

impl RedisCounters {
    fn new(store: Arc<RedisStore>) -> Self {
        RedisCounters {
            store,
            breaker: Breaker::new(),
        }
    }

    /// Admits under every key, or under none (a key admitted before another refused is given
    /// back). `Err` when Redis did not answer within the budget: the breaker is open then.
    async fn admit(
        &self,
        rules: &Rules,
        ip: IpAddr,
        user_hex: Option<&str>,
        token: &str,
        take_slot: bool,
    ) -> Result<Verdict, ()> {
        let keys = counted_keys(ip, user_hex);
        let mut pipe = redis::pipe();
        for [failures, pending, lock] in &keys {
            pipe.cmd("EVAL")
                .arg(ADMIT_SCRIPT)
                .arg(3)
                .arg(failures)
                .arg(pending)
                .arg(lock)
                .arg(millis(rules.window))
                .arg(rules.max_failures)
                .arg(millis(PENDING_TTL))
                .arg(token)
                .arg(if take_slot { "1" } else { "0" });
        }
        let answers: Vec<(i64, i64)> = self.run(&pipe).await?;
        let verdicts: Vec<Verdict> = answers
            .iter()
            .map(|&(code, ms)| {
                let left = Duration::from_millis(ms.max(0).unsigned_abs());
                match code {
                    0 => Ok(()),
                    1 => Err(Refused::Locked(left)),
                    _ => Err(Refused::WindowFull(left)),
                }
            })
            .collect();
        let refused = verdicts.iter().filter_map(|v| v.err()).reduce(worst);
        let Some(refused) = refused else {
            return Ok(Ok(()));
        };
        if verdicts.contains(&Ok(())) {
            // Give back what one key granted; a slot left over ends after PENDING_TTL anyway.
            let mut pipe = redis::pipe();
            for ([_, pending, _], verdict) in keys.iter().zip(&verdicts) {
                if *verdict == Ok(()) {
                    pipe.cmd("ZREM").arg(pending).arg(token).ignore();
                }
            }
            let _ = self.run::<()>(&pipe).await;
        }
        Ok(Err(refused))
    }

    async fn settle(
        &self,
        rules: &Rules,
        ip: IpAddr,
        user_hex: Option<&str>,
        token: &str,
        failed: bool,
    ) -> Result<(), ()> {
        let mut pipe = redis::pipe();
        for [failures, pending, lock] in counted_keys(ip, user_hex) {
            pipe.cmd("EVAL")
                .arg(SETTLE_SCRIPT)
                .arg(3)
                .arg(failures)
                .arg(pending)
                .arg(lock)
                .arg(token)
                .arg(if failed { "1" } else { "0" })
                .arg(millis(rules.window))
                .arg(rules.max_failures)
                .arg(millis(rules.lockout))
                .ignore();
        }
        self.run::<()>(&pipe).await
    }

    /// Runs a pipeline within the budget, keeping the breaker up to date.
    async fn run<T: redis::FromRedisValue>(&self, pipe: &redis::Pipeline) -> Result<T, ()> {
        match tokio::time::timeout(REDIS_BUDGET, self.store.pipeline::<T>(pipe)).await {
            Ok(Ok(value)) => {
                self.breaker.close();
                Ok(value)
            }
            Ok(Err(err)) => {
                self.breaker.trip(&err.to_string());
                Err(())
            }
            Err(_) => {
                self.breaker
                    .trip(&format!("no answer within {}ms", REDIS_BUDGET.as_millis()));
                Err(())
            }
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// A circuit breaker for the Redis counters: open after one failure or timeout, so that while
/// Redis is away no password attempt waits for it; after PROBE_INTERVAL_MS one attempt (the
/// first to claim it) tries Redis again, within the budget, while the others count locally.
struct Breaker {
    started: Instant,
    /// Milliseconds since `started` from which Redis may be tried again (0: closed).
    retry_at: AtomicU64,
    up: AtomicBool,
}

impl Breaker {
    fn new() -> Self {
        Breaker {
            started: Instant::now(),
            retry_at: AtomicU64::new(0),
            up: AtomicBool::new(true),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether this attempt may use Redis: always while closed; while open, only the one
    /// attempt that claims the next probe.
    fn try_redis(&self) -> bool {
        let retry_at = self.retry_at.load(Ordering::Acquire);
        if retry_at == 0 {
            return true;
        }
        let now = self.now_ms();
        now >= retry_at
            && self
                .retry_at
                .compare_exchange(
                    retry_at,
                    now + PROBE_INTERVAL_MS,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
    }

    fn trip(&self, why: &str) {
        if self.up.swap(false, Ordering::AcqRel) {
            tracing::warn!(
                error = %why,
                "redis is unreachable: failure counting and lockouts fall back to this instance's memory"
            );
        }
        self.retry_at
            .store(self.now_ms() + PROBE_INTERVAL_MS, Ordering::Release);
    }

    fn open(&self) {
        self.trip("the readiness probe got no answer");
    }

    fn close(&self) {
        self.retry_at.store(0, Ordering::Release);
        if !self.up.swap(true, Ordering::AcqRel) {
            tracing::info!("redis answers again: failure counting is shared again");
        }
    }

    fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }
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
