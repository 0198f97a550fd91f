//! Sessions in Redis, so several instances share them. Keys expire at the session's absolute
//! deadline plus `ended_memory`, so Redis forgets sessions and their tombstones by itself.
//!
//! Key layout: every key one operation touches carries its user's hash tag, so on a Redis
//! Cluster they live in one slot (and one Lua script may touch them all):
//! - `portcullis:{u:<tag>}:s:<hex SHA-256 of the id>`: a session, a hash: `u` user, `c`
//!   created, `s` last seen (Unix ms), `p` the fingerprint of the password it was started with
//!   (16 hex digits; absent from records of older versions); or its tombstone: `e` the end
//!   reason, and `d` the detail when the store decided the end (`max_per_user`);
//! - `portcullis:{u:<tag>}:sessions:<hex SHA-256 of the user>`: the user's sessions, a sorted
//!   set of id hashes by creation time, for `max_per_user`. Two users sharing a tag share a
//!   slot, not an index.

use std::collections::HashMap;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::OnceCell;

use sha2::{Digest, Sha256};

use super::{Cap, EndReason, Fingerprint, SessionKey, SessionRecord, StoreError, Stored, UserTag};

/// Longest wait for Redis before the request fails closed with 503.
const OP_TIMEOUT: Duration = Duration::from_secs(2);

/// Creates a session (KEYS[1]) and adds it to its user's index (KEYS[2]), ending the user's
/// oldest live sessions past the cap. Members of the index that are ended, gone, past a
/// deadline or started with another password (refused as revoked on their next request) are
/// dropped on the way, so the index never holds more than the cap plus what ended
/// since the user's last login. The session keys it reads share KEYS[2]'s hash tag (ARGV[8] is
/// their prefix), so they are in its slot.
/// ARGV: user, now, expiry, max, idle ms, absolute ms, member, session key prefix, the
/// detail's words before and after the ordinal, and the password fingerprint ("" for none).
/// Returns how many sessions it ended.
const CREATE_SCRIPT: &str = r"
local now = tonumber(ARGV[2])
local idle = tonumber(ARGV[5])
local absolute = tonumber(ARGV[6])
local live = {}
for _, member in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  local f = redis.call('HMGET', ARGV[8] .. member, 'u', 'c', 's', 'p')
  local c, s = tonumber(f[2]), tonumber(f[3])
  local same_password = ARGV[11] == '' or f[4] == ARGV[11]
  if f[1] and c and s and same_password and now < c + absolute and now < s + idle then
    live[#live + 1] = member
  else
    redis.call('ZREM', KEYS[2], member)
  end
end
local nth = #live + 1
local over = nth - tonumber(ARGV[4])
if over > 0 then
  local suffix = 'th'
  if nth % 100 < 11 or nth % 100 > 13 then
    if nth % 10 == 1 then suffix = 'st' elseif nth % 10 == 2 then suffix = 'nd'
    elseif nth % 10 == 3 then suffix = 'rd' end
  end
  local detail = ARGV[9] .. nth .. suffix .. ARGV[10]
  for i = 1, over do
    local key = ARGV[8] .. live[i]
    -- HSET first: a hash emptied by HDEL is deleted, and its expiry with it.
    redis.call('HSET', key, 'e', 'capped', 'd', detail)
    redis.call('HDEL', key, 'u', 'c', 's', 'p')
    redis.call('ZREM', KEYS[2], live[i])
  end
else
  over = 0
end
redis.call('HSET', KEYS[1], 'u', ARGV[1], 'c', ARGV[2], 's', ARGV[2])
if ARGV[11] ~= '' then
  redis.call('HSET', KEYS[1], 'p', ARGV[11])
end
redis.call('PEXPIREAT', KEYS[1], ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[7])
-- The index lives as long as its longest-lived session.
if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[3]) - now then
  redis.call('PEXPIREAT', KEYS[2], ARGV[3])
end
return over
";

/// Touches a session only if it still exists: a logout on another instance must not be undone
/// by a late idle refresh here.
const TOUCH_SCRIPT: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 's', ARGV[1])
  return 1
end
return 0
";

/// Turns a live session into a tombstone holding only its end reason (field `e`); the key keeps
/// its expiry. The first end wins, and a session that is gone stays gone.
const END_SCRIPT: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 and redis.call('HEXISTS', KEYS[1], 'e') == 0 then
  -- HSET first: a hash emptied by HDEL is deleted, and its expiry with it.
  redis.call('HSET', KEYS[1], 'e', ARGV[1])
  redis.call('HDEL', KEYS[1], 'u', 'c', 's', 'p')
  return 1
end
return 0
";

/// A lazily connected Redis session store; the connection manager reconnects by itself after
/// Redis restarts.
pub struct RedisStore {
    client: redis::Client,
    connection: OnceCell<ConnectionManager>,
    touch: redis::Script,
    end: redis::Script,
    create: redis::Script,
}

impl RedisStore {
    /// Validates the URL; connects on first use.
    pub fn new(url: &str) -> Result<Self, String> {
        let client =
            redis::Client::open(url).map_err(|e| format!("invalid session.redis_url: {e}"))?;
        Ok(RedisStore {
            client,
            connection: OnceCell::new(),
            touch: redis::Script::new(TOUCH_SCRIPT),
            end: redis::Script::new(END_SCRIPT),
            create: redis::Script::new(CREATE_SCRIPT),
        })
    }

    async fn connection(&self) -> Result<ConnectionManager, StoreError> {
        let manager = self
            .connection
            .get_or_try_init(|| async {
                // Few, short retries: a request waits at most OP_TIMEOUT anyway, and a long
                // backoff would keep the store "down" for seconds after Redis is back.
                let config = ConnectionManagerConfig::new()
                    .set_number_of_retries(2)
                    .set_factor(50)
                    .set_max_delay(500)
                    .set_connection_timeout(OP_TIMEOUT)
                    .set_response_timeout(OP_TIMEOUT);
                let connecting = ConnectionManager::new_with_config(self.client.clone(), config);
                match tokio::time::timeout(OP_TIMEOUT, connecting).await {
                    Ok(Ok(manager)) => Ok(manager),
                    Ok(Err(err)) => Err(StoreError::Redis(err.to_string())),
                    Err(_) => Err(StoreError::Redis("connect timed out".to_string())),
                }
            })
            .await?;
        Ok(manager.clone())
    }

    /// Runs one command with the store's timeout (also used by the Redis failure counters).
    pub async fn command<T: redis::FromRedisValue>(
        &self,
        command: &redis::Cmd,
    ) -> Result<T, StoreError> {
        let mut connection = self.connection().await?;
        match tokio::time::timeout(OP_TIMEOUT, command.query_async(&mut connection)).await {
            Ok(result) => result.map_err(|e| StoreError::Redis(e.to_string())),
            Err(_) => Err(StoreError::Redis("timed out".to_string())),
        }
    }

    pub(super) async fn get(&self, key: &SessionKey) -> Result<Option<Stored>, StoreError> {
        let fields: HashMap<String, String> = self
            .command(redis::cmd("HGETALL").arg(redis_key(key)))
            .await?;
        if let Some(code) = fields.get("e") {
            // An end reason this version does not know (written by a newer one) still ended
            // the session.
            return Ok(Some(Stored::Ended(
                EndReason::from_code(code).unwrap_or(EndReason::Absolute),
                fields.get("d").cloned(),
            )));
        }
        let number = |name: &str| fields.get(name).and_then(|v| v.parse::<u64>().ok());
        let record = match (fields.get("u"), number("c"), number("s")) {
            (Some(user), Some(created_ms), Some(last_seen_ms)) => {
                Some(Stored::Live(SessionRecord {
                    user: user.clone(),
                    created_ms,
                    last_seen_ms,
                    // Absent in a record from an older version (or unreadable): no
                    // fingerprint, which `check` treats as revoked.
                    credential: fields.get("p").and_then(|v| Fingerprint::from_hex(v)),
                }))
            }
            _ => None,
        };
        Ok(record)
    }

    pub(super) async fn create(
        &self,
        key: &SessionKey,
        record: &SessionRecord,
        expires_ms: u64,
        cap: &Cap,
    ) -> Result<(), StoreError> {
        let mut invocation = self.create.key(redis_key(key));
        invocation
            .key(index_key(key.tag, &record.user))
            .arg(&record.user)
            .arg(record.created_ms)
            .arg(expires_ms)
            .arg(cap.max)
            .arg(cap.idle_ms)
            .arg(cap.absolute_ms)
            .arg(hex::encode(key.hash))
            .arg(session_prefix(key.tag))
            .arg(cap.detail_before())
            .arg(cap.detail_after())
            .arg(
                record
                    .credential
                    .map(Fingerprint::to_hex)
                    .unwrap_or_default(),
            );
        self.script::<i64>(&invocation).await.map(|_| ())
    }

    /// Runs a pipeline (the Redis failure counters' scripts) with the store's timeout.
    pub async fn pipeline<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, StoreError> {
        let mut connection = self.connection().await?;
        match tokio::time::timeout(OP_TIMEOUT, pipe.query_async::<T>(&mut connection)).await {
            Ok(result) => result.map_err(|e| StoreError::Redis(e.to_string())),
            Err(_) => Err(StoreError::Redis("timed out".to_string())),
        }
    }

    /// Runs a Lua script invocation with the store's timeout.
    pub async fn script<T: redis::FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        let mut connection = self.connection().await?;
        match tokio::time::timeout(OP_TIMEOUT, invocation.invoke_async::<T>(&mut connection)).await
        {
            Ok(result) => result.map_err(|e| StoreError::Redis(e.to_string())),
            Err(_) => Err(StoreError::Redis("timed out".to_string())),
        }
    }

    pub(super) async fn touch(
        &self,
        key: &SessionKey,
        now_ms: u64,
        _expires_ms: u64,
    ) -> Result<(), StoreError> {
        let mut connection = self.connection().await?;
        let mut invocation = self.touch.key(redis_key(key));
        invocation.arg(now_ms);
        match tokio::time::timeout(OP_TIMEOUT, invocation.invoke_async::<i64>(&mut connection))
            .await
        {
            Ok(result) => result
                .map(|_| ())
                .map_err(|e| StoreError::Redis(e.to_string())),
            Err(_) => Err(StoreError::Redis("timed out".to_string())),
        }
    }

    pub(super) async fn end(&self, key: &SessionKey, reason: EndReason) -> Result<(), StoreError> {
        let mut invocation = self.end.key(redis_key(key));
        invocation.arg(reason.code());
        self.script::<i64>(&invocation).await.map(|_| ())
    }

    pub(super) async fn delete(&self, key: &SessionKey) -> Result<(), StoreError> {
        self.command::<i64>(redis::cmd("DEL").arg(redis_key(key)))
            .await
            .map(|_| ())
    }

    pub(super) async fn ping(&self) -> bool {
        self.command::<String>(&redis::cmd("PING")).await.is_ok()
    }
}

/// `portcullis:{u:<tag>}:s:`
fn session_prefix(tag: UserTag) -> String {
    format!("portcullis:{{u:{}}}:s:", tag.hex())
}

/// The key of a session: its user's hash tag and the SHA-256 of its id.
fn redis_key(key: &SessionKey) -> String {
    format!("{}{}", session_prefix(key.tag), hex::encode(key.hash))
}

/// The key of a user's index of sessions (same hash tag as the user's sessions).
fn index_key(tag: UserTag, user: &str) -> String {
    format!(
        "portcullis:{{u:{}}}:sessions:{}",
        tag.hex(),
        hex::encode(Sha256::digest(user.as_bytes()))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_users_keys_share_one_hash_tag() {
        let tag = UserTag::of("alice");
        let session = redis_key(&SessionKey {
            tag,
            hash: [0xab; 32],
        });
        let index = index_key(tag, "alice");
        let hash_tag = format!("portcullis:{{u:{}}}:", tag.hex());
        assert_eq!(session, format!("{hash_tag}s:{}", "ab".repeat(32)));
        assert!(
            index.starts_with(&format!("{hash_tag}sessions:")),
            "{index}"
        );
        assert_ne!(
            index,
            index_key(tag, "alice2"),
            "one index per user, not per tag"
        );
    }
}
