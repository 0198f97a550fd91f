//! Sessions in Redis, so several instances share them. Keys expire at the session's absolute
//! deadline plus `ended_memory`, so Redis forgets sessions and their tombstones by itself.
//! A session is a hash: `u` user, `c` created, `s` last seen (Unix ms), `p` the fingerprint of
//! the password it was started with (16 hex digits; absent from records of older versions);
//! a tombstone holds only `e`, the end reason.

use std::collections::HashMap;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::OnceCell;

use super::{EndReason, Fingerprint, SessionKey, SessionRecord, StoreError, Stored};

/// Longest wait for Redis before the request fails closed with 503.
const OP_TIMEOUT: Duration = Duration::from_secs(2);
const KEY_PREFIX: &str = "portcullis:session:";

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

    pub(super) async fn put(
        &self,
        key: &SessionKey,
        record: &SessionRecord,
        expires_ms: u64,
    ) -> Result<(), StoreError> {
        let mut connection = self.connection().await?;
        let name = redis_key(key);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("HSET")
            .arg(&name)
            .arg("u")
            .arg(&record.user)
            .arg("c")
            .arg(record.created_ms)
            .arg("s")
            .arg(record.last_seen_ms);
        if let Some(credential) = record.credential {
            pipe.arg("p").arg(credential.to_hex());
        }
        pipe.ignore()
            .cmd("PEXPIREAT")
            .arg(&name)
            .arg(expires_ms)
            .ignore();
        match tokio::time::timeout(OP_TIMEOUT, pipe.query_async::<()>(&mut connection)).await {
            Ok(result) => result.map_err(|e| StoreError::Redis(e.to_string())),
            Err(_) => Err(StoreError::Redis("timed out".to_string())),
        }
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

fn redis_key(key: &SessionKey) -> String {
    format!("{KEY_PREFIX}{}", hex::encode(key))
}
