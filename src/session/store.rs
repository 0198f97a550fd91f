//! Where sessions live: in this process (`memory`) or in Redis, shared by every instance.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;

use super::redis_store::RedisStore;
use super::{now_ms, EndReason, Fingerprint, SessionKey, SessionRecord, Stored};
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
                MemoryStore::spawn_sweeper(&store, sweep_every);
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

    /// Reads a session or its tombstone.
    pub async fn get(&self, key: &SessionKey) -> Result<Option<Stored>, StoreError> {
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

    /// Turns a live session into a tombstone that remembers only why it ended (kept until the
    /// expiry given to `put`). Does nothing to a session that is gone.
    pub async fn end(&self, key: &SessionKey, reason: EndReason) -> Result<(), StoreError> {
        match self {
            Store::Memory(m) => {
                m.end(key, reason);
                Ok(())
            }
            Store::Redis(r) => r.end(key, reason).await,
        }
    }

    /// Forgets a session (logout): a replayed cookie is then unknown.
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
    /// When the entry (live or tombstone) is forgotten.
    expires_ms: u64,
    credential: Option<Fingerprint>,
    /// `LIVE`, or the end reason of a tombstone (see `end_code`).
    ended: AtomicU8,
}

const LIVE: u8 = 0;

fn end_code(reason: EndReason) -> u8 {
    match reason {
        EndReason::Idle => 1,
        EndReason::Absolute => 2,
        EndReason::Revoked => 3,
    }
}

fn end_reason(code: u8) -> Option<EndReason> {
    match code {
        1 => Some(EndReason::Idle),
        2 => Some(EndReason::Absolute),
        3 => Some(EndReason::Revoked),
        _ => None,
    }
}

impl MemoryStore {
    fn get(&self, key: &SessionKey) -> Option<Stored> {
        let sessions = self.sessions.read();
        let entry = sessions.get(key)?;
        if let Some(reason) = end_reason(entry.ended.load(Ordering::Relaxed)) {
            return Some(Stored::Ended(reason));
        }
        Some(Stored::Live(SessionRecord {
            user: entry.user.to_string(),
            created_ms: entry.created_ms,
            last_seen_ms: entry.last_seen_ms.load(Ordering::Relaxed),
            credential: entry.credential,
        }))
    }

    fn put(&self, key: &SessionKey, record: &SessionRecord, expires_ms: u64) {
        let entry = MemoryEntry {
            user: Arc::from(record.user.as_str()),
            created_ms: record.created_ms,
            last_seen_ms: AtomicU64::new(record.last_seen_ms),
            expires_ms,
            credential: record.credential,
            ended: AtomicU8::new(LIVE),
        };
        self.sessions.write().insert(*key, entry);
    }

    fn touch(&self, key: &SessionKey, now_ms: u64) {
        if let Some(entry) = self.sessions.read().get(key) {
            entry.last_seen_ms.fetch_max(now_ms, Ordering::Relaxed);
        }
    }

    fn end(&self, key: &SessionKey, reason: EndReason) {
        if let Some(entry) = self.sessions.read().get(key) {
            // The first end wins: two racing requests must not tell different stories.
            let _ = entry.ended.compare_exchange(
                LIVE,
                end_code(reason),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    fn delete(&self, key: &SessionKey) {
        self.sessions.write().remove(key);
    }

    /// Live sessions (tombstones not counted).
    fn len(&self) -> usize {
        self.sessions
            .read()
            .values()
            .filter(|e| e.ended.load(Ordering::Relaxed) == LIVE)
            .count()
    }

    /// Drops sessions and tombstones past their expiry (absolute deadline + `ended_memory`).
    fn sweep(&self) {
        let now = now_ms();
        self.sessions
            .write()
            .retain(|_, entry| now < entry.expires_ms);
    }

    fn spawn_sweeper(store: &Arc<Self>, every: Duration) {
        let weak = Arc::downgrade(store);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(store) = weak.upgrade() else { return };
                store.sweep();
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_store_round_trip_tombstones_and_sweep() {
        let store = MemoryStore::default();
        let now = now_ms();
        let record = SessionRecord {
            user: "alice".into(),
            created_ms: now,
            last_seen_ms: now,
            credential: Some(Fingerprint([7; 8])),
        };
        store.put(&[1; 32], &record, now + 60_000);
        store.put(&[2; 32], &record, now.saturating_sub(1));
        assert_eq!(store.get(&[1; 32]), Some(Stored::Live(record.clone())));
        store.touch(&[1; 32], now + 5);
        let Some(Stored::Live(touched)) = store.get(&[1; 32]) else {
            panic!("live")
        };
        assert_eq!(touched.last_seen_ms, now + 5);
        store.sweep();
        assert_eq!(store.len(), 1);
        store.end(&[1; 32], EndReason::Idle);
        store.end(&[1; 32], EndReason::Absolute);
        assert_eq!(store.get(&[1; 32]), Some(Stored::Ended(EndReason::Idle)));
        assert_eq!(store.len(), 0);
        store.delete(&[1; 32]);
        assert!(store.get(&[1; 32]).is_none());
    }
}
