//! Where sessions live: in this process (`memory`) or in Redis, shared by every instance.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;

use super::redis_store::RedisStore;
use super::{now_ms, SessionKey, SessionRecord, TOMBSTONE_GRACE_MS};
use crate::config::file::SessionStoreKind;
use crate::config::SessionSection;

/// The store could not answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Redis refused, timed out or is unreachable.
    #[error("redis: {0}")]
    Redis(String),
}

/// The session store, memory or Redis. An enum rather than a trait object: two fixed kinds,
/// and the hot path stays free of dynamic dispatch and boxed futures.
pub enum Store {
    /// Sessions in this process only.
    Memory(Arc<MemoryStore>),
    /// Sessions in Redis, shared between instances.
    Redis(Arc<RedisStore>),
}

impl Store {
    /// Builds the configured store.
    pub fn new(config: &SessionSection) -> Result<Self, String> {
        match config.store {
            SessionStoreKind::Memory => {
                let store = Arc::new(MemoryStore::default());
                let sweep_every = (config.idle_timeout.0 / 4)
                    .clamp(Duration::from_millis(250), Duration::from_secs(60));
                let idle_ms = u64::try_from(config.idle_timeout.0.as_millis()).unwrap_or(u64::MAX);
                MemoryStore::spawn_sweeper(&store, sweep_every, idle_ms);
                Ok(Store::Memory(store))
            }
            SessionStoreKind::Redis => {
                let url = config
                    .redis_url
                    .as_deref()
                    .ok_or("session.store = \"redis\" needs session.redis_url")?;
                RedisStore::new(url).map(|r| Store::Redis(Arc::new(r)))
            }
        }
    }

    /// Reads a session.
    pub async fn get(&self, key: &SessionKey) -> Result<Option<SessionRecord>, StoreError> {
        match self {
            Store::Memory(m) => Ok(m.get(key)),
            Store::Redis(r) => r.get(key).await,
        }
    }

    /// Writes a new session that the store forgets at `expires_ms`.
    pub async fn put(
        &self,
        key: &SessionKey,
        record: &SessionRecord,
        expires_ms: u64,
    ) -> Result<(), StoreError> {
        match self {
            Store::Memory(m) => {
                m.put(key, record, expires_ms);
                Ok(())
            }
            Store::Redis(r) => r.put(key, record, expires_ms).await,
        }
    }

    /// Records activity on an existing session (never recreates a deleted one).
    pub async fn touch(
        &self,
        key: &SessionKey,
        now_ms: u64,
        expires_ms: u64,
    ) -> Result<(), StoreError> {
        match self {
            Store::Memory(m) => {
                m.touch(key, now_ms);
                Ok(())
            }
            Store::Redis(r) => r.touch(key, now_ms, expires_ms).await,
        }
    }

    /// Ends a session.
    pub async fn delete(&self, key: &SessionKey) -> Result<(), StoreError> {
        match self {
            Store::Memory(m) => {
                m.delete(key);
                Ok(())
            }
            Store::Redis(r) => r.delete(key).await,
        }
    }

    /// The Redis connection, when sessions live in Redis (the failure counters share it).
    pub fn redis(&self) -> Option<Arc<RedisStore>> {
        match self {
            Store::Memory(_) => None,
            Store::Redis(r) => Some(r.clone()),
        }
    }

    /// Whether the store can answer now (for `/readyz`).
    pub async fn ready(&self) -> bool {
        match self {
            Store::Memory(_) => true,
            Store::Redis(r) => r.ping().await,
        }
    }

    /// Live sessions held in memory (None for Redis, which counts its own).
    pub fn memory_len(&self) -> Option<usize> {
        match self {
            Store::Memory(m) => Some(m.len()),
            Store::Redis(_) => None,
        }
    }
}

// === impl MemoryStore ===

/// An in-process map from key to session, swept in the background.
#[derive(Default)]
pub struct MemoryStore {
    sessions: RwLock<HashMap<SessionKey, MemoryEntry>>,
}

struct MemoryEntry {
    user: Arc<str>,
    created_ms: u64,
    // Atomic so that the common case (refreshing the idle deadline) needs only a read lock.
    last_seen_ms: AtomicU64,
    expires_ms: u64,
}

impl MemoryStore {
    fn get(&self, key: &SessionKey) -> Option<SessionRecord> {
        let sessions = self.sessions.read();
        let entry = sessions.get(key)?;
        Some(SessionRecord {
            user: entry.user.to_string(),
            created_ms: entry.created_ms,
            last_seen_ms: entry.last_seen_ms.load(Ordering::Relaxed),
        })
    }

    fn put(&self, key: &SessionKey, record: &SessionRecord, expires_ms: u64) {
        let entry = MemoryEntry {
            user: Arc::from(record.user.as_str()),
            created_ms: record.created_ms,
            last_seen_ms: AtomicU64::new(record.last_seen_ms),
            expires_ms,
        };
        self.sessions.write().insert(*key, entry);
    }

    fn touch(&self, key: &SessionKey, now_ms: u64) {
        if let Some(entry) = self.sessions.read().get(key) {
            entry.last_seen_ms.fetch_max(now_ms, Ordering::Relaxed);
        }
    }

    fn delete(&self, key: &SessionKey) {
        self.sessions.write().remove(key);
    }

    fn len(&self) -> usize {
        self.sessions.read().len()
    }

    /// Drops sessions that ended (idle or absolute) more than `TOMBSTONE_GRACE` ago, so memory
    /// stays bounded by the sessions active within one idle timeout. The grace lets a request
    /// that comes shortly after the end still be told why the session ended.
    fn sweep(&self, idle_ms: Option<u64>) {
        let now = now_ms();
        self.sessions.write().retain(|_, entry| {
            let idle_end = idle_ms.map_or(u64::MAX, |idle| {
                entry
                    .last_seen_ms
                    .load(Ordering::Relaxed)
                    .saturating_add(idle)
            });
            now < entry
                .expires_ms
                .min(idle_end)
                .saturating_add(TOMBSTONE_GRACE_MS)
        });
    }

    fn spawn_sweeper(store: &Arc<Self>, every: Duration, idle_ms: u64) {
        let weak = Arc::downgrade(store);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(store) = weak.upgrade() else { return };
                store.sweep(Some(idle_ms));
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_store_round_trip_and_sweep() {
        let store = MemoryStore::default();
        let now = now_ms();
        let record = SessionRecord {
            user: "alice".into(),
            created_ms: now,
            last_seen_ms: now,
        };
        store.put(&[1; 32], &record, now + 60_000);
        store.put(
            &[2; 32],
            &record,
            now.saturating_sub(TOMBSTONE_GRACE_MS + 1),
        );
        assert_eq!(store.get(&[1; 32]), Some(record.clone()));
        store.touch(&[1; 32], now + 5);
        assert_eq!(store.get(&[1; 32]).unwrap().last_seen_ms, now + 5);
        store.sweep(None);
        assert_eq!(store.len(), 1);
        store.delete(&[1; 32]);
        assert!(store.get(&[1; 32]).is_none());
    }
}
