//! Where sessions live: in this process (`memory`) or in Redis, shared by every instance.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;

use super::redis_store::RedisStore;
use super::{now_ms, Cap, EndReason, Fingerprint, SessionKey, SessionRecord, Stored};
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

    /// Writes a new session that the store forgets at `expires_ms`, adds it to its user's
    /// index and, past `cap.max` live sessions, ends the user's oldest as tombstones saying
    /// why; one atomic step, so concurrent logins cannot overshoot the cap. The index is
    /// trimmed of ended and expired members on the way, so it never outgrows the cap.
    pub async fn create(
        &self,
        key: &SessionKey,
        record: &SessionRecord,
        expires_ms: u64,
        cap: &Cap,
    ) -> Result<(), StoreError> {
        match self {
            Store::Memory(m) => {
                m.create(key, record, expires_ms, cap);
                Ok(())
            }
            Store::Redis(r) => r.create(key, record, expires_ms, cap).await,
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
    inner: RwLock<MemoryInner>,
}

#[derive(Default)]
struct MemoryInner {
    sessions: HashMap<SessionKey, MemoryEntry>,
    /// Each user's sessions, oldest first, for `max_per_user`: trimmed of ended and expired
    /// ones when a login finds the list full, and of ended and forgotten ones by the sweeper.
    by_user: HashMap<Arc<str>, Vec<SessionKey>>,
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
    /// What the refusal says, for an end decided by the store (`max_per_user`). Written only
    /// under the write lock.
    detail: Option<Arc<str>>,
}

const LIVE: u8 = 0;

fn end_code(reason: EndReason) -> u8 {
    match reason {
        EndReason::Idle => 1,
        EndReason::Absolute => 2,
        EndReason::Revoked => 3,
        EndReason::Capped => 4,
    }
}

fn end_reason(code: u8) -> Option<EndReason> {
    match code {
        1 => Some(EndReason::Idle),
        2 => Some(EndReason::Absolute),
        3 => Some(EndReason::Revoked),
        4 => Some(EndReason::Capped),
        _ => None,
    }
}

impl MemoryStore {
    fn get(&self, key: &SessionKey) -> Option<Stored> {
        let inner = self.inner.read();
        let entry = inner.sessions.get(key)?;
        if let Some(reason) = end_reason(entry.ended.load(Ordering::Relaxed)) {
            return Some(Stored::Ended(
                reason,
                entry.detail.as_deref().map(str::to_string),
            ));
        }
        Some(Stored::Live(SessionRecord {
            user: entry.user.to_string(),
            created_ms: entry.created_ms,
            last_seen_ms: entry.last_seen_ms.load(Ordering::Relaxed),
            credential: entry.credential,
        }))
    }

    fn create(&self, key: &SessionKey, record: &SessionRecord, expires_ms: u64, cap: &Cap) {
        let mut guard = self.inner.write();
        let MemoryInner { sessions, by_user } = &mut *guard;
        let user: Arc<str> = by_user
            .get_key_value(record.user.as_str())
            .map_or_else(|| Arc::from(record.user.as_str()), |(k, _)| k.clone());
        // In creation order (pushed under this lock), so the oldest come first. Trimmed only
        // when full: the list never outgrows the cap, and a login under it costs no scan. A
        // session started with another password than this login's is no longer live (its next
        // request is refused as revoked): it neither counts nor is ended as capped.
        let mine = by_user.entry(user.clone()).or_default();
        if mine.len() >= cap.max {
            mine.retain(|k| {
                sessions.get(k).is_some_and(|e| {
                    e.ended.load(Ordering::Relaxed) == LIVE
                        && e.credential == record.credential
                        && cap.live(e.created_ms, e.last_seen_ms.load(Ordering::Relaxed))
                })
            });
        }
        let nth = mine.len() + 1;
        let over = nth.saturating_sub(cap.max);
        if over > 0 {
            let detail: Arc<str> = Arc::from(cap.detail(nth));
            for old in mine.drain(..over) {
                if let Some(entry) = sessions.get_mut(&old) {
                    entry
                        .ended
                        .store(end_code(EndReason::Capped), Ordering::Relaxed);
                    entry.detail = Some(detail.clone());
                }
            }
        }
        mine.push(*key);
        let entry = MemoryEntry {
            user,
            created_ms: record.created_ms,
            last_seen_ms: AtomicU64::new(record.last_seen_ms),
            expires_ms,
            credential: record.credential,
            ended: AtomicU8::new(LIVE),
            detail: None,
        };
        sessions.insert(*key, entry);
    }

    fn touch(&self, key: &SessionKey, now_ms: u64) {
        if let Some(entry) = self.inner.read().sessions.get(key) {
            entry.last_seen_ms.fetch_max(now_ms, Ordering::Relaxed);
        }
    }

    fn end(&self, key: &SessionKey, reason: EndReason) {
        if let Some(entry) = self.inner.read().sessions.get(key) {
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
        // The user's index forgets it when the user next signs in, or at the next sweep.
        self.inner.write().sessions.remove(key);
    }

    /// Live sessions (tombstones not counted).
    fn len(&self) -> usize {
        self.inner
            .read()
            .sessions
            .values()
            .filter(|e| e.ended.load(Ordering::Relaxed) == LIVE)
            .count()
    }

    /// Drops sessions and tombstones past their expiry (absolute deadline + `ended_memory`).
    fn sweep(&self) {
        let now = now_ms();
        let mut guard = self.inner.write();
        let MemoryInner { sessions, by_user } = &mut *guard;
        sessions.retain(|_, entry| now < entry.expires_ms);
        by_user.retain(|_, keys| {
            keys.retain(|k| {
                sessions
                    .get(k)
                    .is_some_and(|e| e.ended.load(Ordering::Relaxed) == LIVE)
            });
            !keys.is_empty()
        });
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
    use crate::session::UserTag;

    fn key(n: u8) -> SessionKey {
        SessionKey {
            tag: UserTag::of("alice"),
            hash: [n; 32],
        }
    }

    fn cap(max: usize, now_ms: u64) -> Cap {
        Cap {
            max,
            now_ms,
            idle_ms: 60_000,
            absolute_ms: 600_000,
            user: "alice".into(),
        }
    }

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
        store.create(&key(1), &record, now + 60_000, &cap(32, now));
        store.create(&key(2), &record, now.saturating_sub(1), &cap(32, now));
        assert_eq!(store.get(&key(1)), Some(Stored::Live(record.clone())));
        store.touch(&key(1), now + 5);
        let Some(Stored::Live(touched)) = store.get(&key(1)) else {
            panic!("live")
        };
        assert_eq!(touched.last_seen_ms, now + 5);
        store.sweep();
        assert_eq!(store.len(), 1);
        assert_eq!(store.inner.read().by_user["alice"], vec![key(1)]);
        store.end(&key(1), EndReason::Idle);
        store.end(&key(1), EndReason::Absolute);
        assert_eq!(
            store.get(&key(1)),
            Some(Stored::Ended(EndReason::Idle, None))
        );
        assert_eq!(store.len(), 0);
        store.delete(&key(1));
        assert!(store.get(&key(1)).is_none());
        store.sweep();
        assert!(store.inner.read().by_user.is_empty(), "the index is swept");
    }

    #[test]
    fn a_login_past_the_cap_ends_the_oldest_live_sessions_and_the_index_stays_bounded() {
        let store = MemoryStore::default();
        let now = now_ms();
        let record = |created_ms: u64, last_seen_ms: u64| SessionRecord {
            user: "alice".into(),
            created_ms,
            last_seen_ms,
            credential: None,
        };
        // An idle-expired session (not yet a tombstone) does not count and leaves the index.
        store.create(
            &key(9),
            &record(now - 70_000, now - 70_000),
            now + 1,
            &cap(3, now),
        );
        // Nor does one started with another password (refused as revoked when next used).
        let other_password = SessionRecord {
            credential: Some(Fingerprint([1; 8])),
            ..record(now, now)
        };
        store.create(&key(8), &other_password, now + 600_000, &cap(3, now));
        for n in 1..=3 {
            store.create(
                &key(n),
                &record(now + u64::from(n), now),
                now + 600_000,
                &cap(3, now),
            );
        }
        assert_eq!(
            store.len(),
            5,
            "the idle one and the other password's are still stored"
        );
        assert_eq!(store.inner.read().by_user["alice"].len(), 3);
        assert_eq!(store.get(&key(8)), Some(Stored::Live(other_password)));
        store.create(&key(4), &record(now + 4, now), now + 600_000, &cap(3, now));
        let ended = Stored::Ended(
            EndReason::Capped,
            Some("ended because alice started a 4th session; session.max_per_user = 3".into()),
        );
        assert_eq!(store.get(&key(1)), Some(ended));
        for n in 2..=4 {
            assert!(matches!(store.get(&key(n)), Some(Stored::Live(_))), "{n}");
        }
        // A lower cap (after a restart) ends as many as needed at once.
        store.create(&key(5), &record(now + 5, now), now + 600_000, &cap(1, now));
        for n in 2..=4 {
            assert!(
                matches!(
                    store.get(&key(n)),
                    Some(Stored::Ended(EndReason::Capped, Some(_)))
                ),
                "{n}"
            );
        }
        assert_eq!(store.inner.read().by_user["alice"], vec![key(5)]);
        // Another user is not touched.
        let bob = SessionKey {
            tag: UserTag::of("bob"),
            hash: [7; 32],
        };
        let mut bob_cap = cap(1, now);
        bob_cap.user = "bob".into();
        let bob_record = SessionRecord {
            user: "bob".into(),
            created_ms: now,
            last_seen_ms: now,
            credential: None,
        };
        store.create(&bob, &bob_record, now + 600_000, &bob_cap);
        assert!(matches!(store.get(&key(5)), Some(Stored::Live(_))));
    }
}
