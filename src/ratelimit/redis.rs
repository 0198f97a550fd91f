//! The counters in Redis, shared by every instance, behind a circuit breaker that falls back
//! to the memory counters when Redis does not answer within `REDIS_BUDGET`.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::memory::worst;
use super::{Refused, Rules, Verdict, PENDING_TTL, PROBE_INTERVAL_MS, REDIS_BUDGET};
use crate::session::RedisStore;

/// Admission for one key, atomically: refused while locked or while failures and attempts
/// under way fill the window; otherwise a pending slot is taken under the attempt's token.
/// Returns {0} admitted, {1, ms} locked, {2, ms} window full. Redis's own clock is used, so
/// instances whose clocks differ still agree on the window.
pub(super) const ADMIT_SCRIPT: &str = r"
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
pub(super) const SETTLE_SCRIPT: &str = r"
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

pub(super) fn counted_keys(ip: IpAddr, user_hex: Option<&str>) -> Vec<[String; 3]> {
    let mut keys = vec![redis_keys("ip", &ip.to_string())];
    if let Some(hex) = user_hex {
        keys.push(redis_keys("user", hex));
    }
    keys
}

/// The counters in Redis. The scripts are sent whole (EVAL, a few hundred bytes) rather than
/// by digest: a pipelined EVALSHA is not retried after a Redis restart forgot the script.
pub(super) struct RedisCounters {
    pub(super) store: Arc<RedisStore>,
    pub(super) breaker: Breaker,
}

impl RedisCounters {
    pub(super) fn new(store: Arc<RedisStore>) -> Self {
        RedisCounters {
            store,
            breaker: Breaker::new(),
        }
    }

    /// Admits under every key, or under none (a key admitted before another refused is given
    /// back). `Err` when Redis did not answer within the budget: the breaker is open then.
    pub(super) async fn admit(
        &self,
        rules: &Rules,
        ip: IpAddr,
        user_hex: Option<&str>,
        token: &str,
        take_slot: bool,
    ) -> Result<Verdict, ()> {
        let keys = counted_keys(ip, user_hex);
        let mut pipe = ::redis::pipe();
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
            let mut pipe = ::redis::pipe();
            for ([_, pending, _], verdict) in keys.iter().zip(&verdicts) {
                if *verdict == Ok(()) {
                    pipe.cmd("ZREM").arg(pending).arg(token).ignore();
                }
            }
            let _ = self.run::<()>(&pipe).await;
        }
        Ok(Err(refused))
    }

    pub(super) async fn settle(
        &self,
        rules: &Rules,
        ip: IpAddr,
        user_hex: Option<&str>,
        token: &str,
        failed: bool,
    ) -> Result<(), ()> {
        let mut pipe = ::redis::pipe();
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
    pub(super) async fn run<T: ::redis::FromRedisValue>(
        &self,
        pipe: &::redis::Pipeline,
    ) -> Result<T, ()> {
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

pub(super) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// A circuit breaker for the Redis counters: open after one failure or timeout, so that while
/// Redis is away no password attempt waits for it; after PROBE_INTERVAL_MS one attempt (the
/// first to claim it) tries Redis again, within the budget, while the others count locally.
pub(super) struct Breaker {
    pub(super) started: Instant,
    /// Milliseconds since `started` from which Redis may be tried again (0: closed).
    pub(super) retry_at: AtomicU64,
    pub(super) up: AtomicBool,
}

impl Breaker {
    pub(super) fn new() -> Self {
        Breaker {
            started: Instant::now(),
            retry_at: AtomicU64::new(0),
            up: AtomicBool::new(true),
        }
    }

    pub(super) fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether this attempt may use Redis: always while closed; while open, only the one
    /// attempt that claims the next probe.
    pub(super) fn try_redis(&self) -> bool {
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

    pub(super) fn trip(&self, why: &str) {
        if self.up.swap(false, Ordering::AcqRel) {
            tracing::warn!(
                error = %why,
                "redis is unreachable: failure counting and lockouts fall back to this instance's memory"
            );
        }
        self.retry_at
            .store(self.now_ms() + PROBE_INTERVAL_MS, Ordering::Release);
    }

    pub(super) fn open(&self) {
        self.trip("the readiness probe got no answer");
    }

    pub(super) fn close(&self) {
        self.retry_at.store(0, Ordering::Release);
        if !self.up.swap(true, Ordering::AcqRel) {
            tracing::info!("redis answers again: failure counting is shared again");
        }
    }

    pub(super) fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }
}
