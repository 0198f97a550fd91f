//! Password verification for Basic and the login form: a small pool of low-priority
//! threads does the hashing, bounded in both concurrency and queue length, and a short-lived
//! cache of successful verifications keeps steady traffic from hashing on every request.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use parking_lot::{Mutex, RwLock};
use prometheus_client::metrics::counter::Counter;
use rand::RngCore;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use tokio::sync::{oneshot, OnceCell};

use super::password::PasswordHash;
use crate::auth::Scheme;
use crate::config::{User, UserDb};
use crate::error::{Denial, DenyReason, FailReason, Failure, Refusal};

/// How long a successful verification is remembered after it was last used. Each use extends
/// it: a client that keeps sending the same good credential never needs a hash again, so a flood
/// of wrong passwords filling the hashing queue cannot cut it off when an entry would have
/// expired. A changed password or removed user never matches an old entry (the tag binds the
/// configured hash), and the lockout is checked before the cache.
const CACHE_TTL: Duration = Duration::from_secs(60);
/// Most remembered verifications; beyond this, expired ones are swept and, failing that, all
/// are forgotten (a flood of distinct valid credentials only costs re-hashing).
const CACHE_MAX_ENTRIES: usize = 10_000;
/// Pending verifications allowed per hashing thread before callers get 503.
const QUEUE_PER_THREAD: usize = 32;
/// Longest a verification may wait in the queue for a hashing thread. On a saturated host the
/// queue can stall; past this the caller gets 503 with `Retry-After` instead of hanging, and
/// the stale job is skipped rather than hashed.
const MAX_QUEUE_WAIT: Duration = Duration::from_secs(2);
/// Longest a caller waits for a verification that has started: generous, since a hash at
/// the hashing threads' lower priority runs slowly while request handling keeps the CPU busy.
const MAX_HASH_TIME: Duration = Duration::from_secs(10);
/// Nice 10 on thread-priority's 0–99 scale (a test pins the mapping): below request handling,
/// which at nice 0 gets about ten times the CPU share, but not the lowest, so other busy
/// processes on the host cannot starve the hashing threads.
const HASHING_NICE_PRIORITY: u8 = 22;

/// Verifies passwords off the async reactor.
pub struct PasswordVerifier {
    jobs: crossbeam_channel::Sender<Job>,
    cache: VerifiedCache,
    /// Verifications under way, by tag: identical credentials arriving together (a client
    /// opening many connections at once) share one hash instead of each queueing their own.
    in_flight: Mutex<HashMap<[u8; 32], Arc<OnceCell<bool>>>>,
    /// Hashes actually computed (`portcullis_password_verifications_total`): coalesced and
    /// cached checks do not count.
    verifications: Counter,
}

struct Job {
    hash: PasswordHash,
    password: String,
    reply: oneshot::Sender<bool>,
    /// Past this, nobody is waiting for the answer any more.
    deadline: Instant,
}

impl PasswordVerifier {
    /// Starts `max(1, cores - 1)` hashing threads at the lowest scheduling priority, so request
    /// handling always has a core and wins any contention for it.
    pub fn start() -> Arc<Self> {
        Self::start_counting(Counter::default())
    }

    /// Like `start`, counting each hash computed in `verifications`.
    pub fn start_counting(verifications: Counter) -> Arc<Self> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = cores.saturating_sub(1).max(1);
        let (jobs, queue) = crossbeam_channel::bounded::<Job>(threads * QUEUE_PER_THREAD);
        for n in 0..threads {
            let queue = queue.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("portcullis-hash-{n}"))
                .spawn(move || hash_worker(queue));
            if let Err(err) = spawned {
                tracing::error!(error = %err, "cannot start a password hashing thread");
            }
        }
        Arc::new(Self::with_queue(jobs, verifications))
    }

    fn with_queue(jobs: crossbeam_channel::Sender<Job>, verifications: Counter) -> Self {
        PasswordVerifier {
            jobs,
            cache: VerifiedCache::new(),
            in_flight: Mutex::new(HashMap::new()),
            verifications,
        }
    }

    /// Checks `user`'s `password`. An unknown name costs one hash against the users' dummy (of
    /// their most common algorithm and cost), and identical attempts under way together share
    /// it as a known user's do, so neither timing nor concurrency tells whether the user
    /// exists.
    pub async fn verify(
        &self,
        users: &UserDb,
        user: &str,
        password: &str,
    ) -> Result<Arc<User>, Refusal> {
        let Some(record) = users.get(user) else {
            let tag = self.cache.tag(user, users.dummy(), password);
            self.shared_check(tag, users.dummy(), password).await?;
            // The name is not logged: people type passwords into the user field.
            return Err(Denial::of(Scheme::Basic, DenyReason::UnknownUser, "no such user").into());
        };
        // The tag binds the stored hash: after a reload that changes the password, the old
        // tag can never match again.
        let tag = self.cache.tag(&record.name, &record.hash, password);
        if self.cache.contains(&tag) {
            return Ok(record.clone());
        }
        if self.shared_check(tag, &record.hash, password).await? {
            Ok(record.clone())
        } else {
            Err(Denial::of(
                Scheme::Basic,
                DenyReason::BadPassword,
                format!("wrong password for user {:?}", record.name),
            )
            .into())
        }
    }

    /// Whether this credential is verified already (cached) or being verified by another
    /// request, so that an attempt with it adds no guess of its own.
    pub fn shares_a_check(&self, users: &UserDb, user: &str, password: &str) -> bool {
        let tag = match users.get(user) {
            Some(record) => self.cache.tag(&record.name, &record.hash, password),
            None => self.cache.tag(user, users.dummy(), password),
        };
        self.cache.contains(&tag) || self.in_flight.lock().contains_key(&tag)
    }

    /// Runs one verification per tag at a time; later callers with the same tag wait for it.
    async fn shared_check(
        &self,
        tag: [u8; 32],
        hash: &PasswordHash,
        password: &str,
    ) -> Result<bool, Failure> {
        let cell = self.in_flight.lock().entry(tag).or_default().clone();
        let outcome = cell
            .get_or_try_init(|| async {
                let ok = self.hash_check(hash.clone(), password).await?;
                if ok {
                    self.cache.insert(tag);
                }
                Ok::<bool, Failure>(ok)
            })
            .await
            .copied();
        // Whoever finishes first removes the entry; a failed attempt leaves the cell empty and
        // the next caller starts afresh.
        let mut in_flight = self.in_flight.lock();
        if in_flight.get(&tag).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            in_flight.remove(&tag);
        }
        outcome
    }

    async fn hash_check(&self, hash: PasswordHash, password: &str) -> Result<bool, Failure> {
        self.verifications.inc();
        let (reply, answer) = oneshot::channel();
        let job = Job {
            hash,
            password: password.to_string(),
            reply,
            deadline: Instant::now() + MAX_QUEUE_WAIT,
        };
        self.jobs.try_send(job).map_err(|_| {
            Failure::new(
                FailReason::Overloaded,
                "password verification queue is full",
            )
        })?;
        // A job still queued at its deadline is dropped unanswered by the worker.
        match tokio::time::timeout(MAX_QUEUE_WAIT + MAX_HASH_TIME, answer).await {
            Ok(Ok(ok)) => Ok(ok),
            Ok(Err(_)) => Err(Failure::new(
                FailReason::Overloaded,
                format!("no hashing thread was free within {MAX_QUEUE_WAIT:?}"),
            )),
            Err(_) => Err(Failure::new(
                FailReason::Overloaded,
                format!("password verification took longer than {MAX_HASH_TIME:?}"),
            )),
        }
    }
}

fn hash_worker(queue: crossbeam_channel::Receiver<Job>) {
    lower_priority();
    for job in queue {
        // A caller that went away (client disconnected, or gave up waiting) need not be
        // hashed for.
        if job.reply.is_closed() || Instant::now() >= job.deadline {
            continue;
        }
        let ok = job.hash.verify(job.password.as_bytes());
        let _ = job.reply.send(ok);
    }
}

/// A lower priority: a flood of wrong passwords must queue behind request handling. A nice
/// value of 10, not the lowest (19) and not `SCHED_IDLE`: those starve the threads whenever
/// anything else on the host is busy (another service, a build), and then every first
/// sign-in fails with 503 however idle the proxy itself is.
fn lower_priority() {
    let nice_10 = thread_priority::ThreadPriorityValue::try_from(HASHING_NICE_PRIORITY)
        .map(thread_priority::ThreadPriority::Crossplatform)
        .unwrap_or(thread_priority::ThreadPriority::Min);
    if let Err(err) = thread_priority::set_current_thread_priority(nice_10) {
        tracing::debug!(error = ?err, "cannot lower the hashing thread's priority");
    }
}

/// The end of a stored hash string: part of its digest.
fn hash_tail(hash: &PasswordHash) -> &[u8] {
    let stored = hash.as_str().as_bytes();
    &stored[stored.len().saturating_sub(HASH_TAIL_BYTES)..]
}

/// Bytes of a stored hash's end bound into a cached verification: 96 bits of its digest.
const HASH_TAIL_BYTES: usize = 16;

/// Remembers successful verifications under an HMAC of (user, stored hash, password) keyed by a
/// per-process random key: the password itself is never kept.
struct VerifiedCache {
    /// The HMAC already keyed (its inner and outer pads hashed once): each tag clones it.
    keyed: Hmac<Sha256>,
    /// Tag → expiry, in milliseconds since `epoch`: atomic, so a hit extends its entry under
    /// the shared read lock.
    entries: RwLock<HashMap<[u8; 32], AtomicU64>>,
    epoch: Instant,
}

impl VerifiedCache {
    fn new() -> Self {
        let mut key = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut key);
        let keyed = <Hmac<Sha256> as Mac>::new_from_slice(&key).expect("HMAC takes any key length");
        key.fill(0);
        VerifiedCache {
            keyed,
            entries: RwLock::new(HashMap::new()),
            epoch: Instant::now(),
        }
    }

    /// Now, in the cache's milliseconds.
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn tag(&self, user: &str, hash: &PasswordHash, password: &str) -> [u8; 32] {
        let mut mac = self.keyed.clone();
        // Length prefixes keep ("ab","c") and ("a","bc") apart. The stored hash is bound by its
        // last bytes (its digest), which tell two hashes apart as well as the whole string
        // does, and keep the input inside one SHA-256 block for usual names and passwords
        // (this runs on every cached Basic request).
        for part in [user.as_bytes(), hash_tail(hash), password.as_bytes()] {
            mac.update(&u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes());
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }

    fn contains(&self, tag: &[u8; 32]) -> bool {
        let entries = self.entries.read();
        // The map lookup is on an unpredictable HMAC, so its timing reveals nothing; the
        // constant-time comparison keeps the final equality check free of early exits too.
        let now = self.now_ms();
        let hit = entries.get_key_value(tag).filter(|(stored, expires)| {
            bool::from(stored.ct_eq(tag)) && expires.load(Ordering::Relaxed) > now
        });
        let Some((_, expires)) = hit else {
            return false;
        };
        // Extend, writing the shared line at most once a second per entry.
        let extended = now + ttl_ms();
        if extended.saturating_sub(expires.load(Ordering::Relaxed)) >= 1000 {
            expires.fetch_max(extended, Ordering::Relaxed);
        }
        true
    }

    fn insert(&self, tag: [u8; 32]) {
        let now = self.now_ms();
        let mut entries = self.entries.write();
        if entries.len() >= CACHE_MAX_ENTRIES {
            entries.retain(|_, expires| expires.load(Ordering::Relaxed) > now);
            if entries.len() >= CACHE_MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(tag, AtomicU64::new(now + ttl_ms()));
    }
}

fn ttl_ms() -> u64 {
    u64::try_from(CACHE_TTL.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_used_entry_stays_and_an_unused_one_expires() {
        let cache = VerifiedCache::new();
        let used = [1u8; 32];
        let unused = [2u8; 32];
        cache.insert(used);
        cache.insert(unused);
        // Pretend most of the TTL has passed since both were inserted.
        let nearly = ttl_ms() - 500;
        for expires in cache.entries.read().values() {
            expires.store(cache.now_ms() + 500, Ordering::Relaxed);
        }
        assert!(cache.contains(&used), "still fresh");
        let extended = cache.entries.read()[&used].load(Ordering::Relaxed);
        assert!(
            extended >= cache.now_ms() + nearly,
            "a hit extends the entry"
        );
        let unused_expiry = cache.entries.read()[&unused].load(Ordering::Relaxed);
        assert!(unused_expiry <= cache.now_ms() + 500);
        // Once past its expiry an entry is gone, used or not.
        cache.entries.read()[&unused].store(0, Ordering::Relaxed);
        assert!(!cache.contains(&unused));
        assert!(!cache.contains(&[3u8; 32]));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn hashing_threads_run_at_nice_10() {
        let nice = std::thread::spawn(|| {
            lower_priority();
            let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
            // Field 19 is the nice value; fields after the parenthesised name start at 3.
            let after_name = &stat[stat.rfind(')').unwrap() + 2..];
            after_name
                .split(' ')
                .nth(16)
                .unwrap()
                .parse::<i32>()
                .unwrap()
        })
        .join()
        .unwrap();
        assert_eq!(nice, 10);
    }

    fn user(name: &str, hash: &str) -> User {
        User {
            name: name.to_string(),
            hash: PasswordHash::parse(hash).unwrap(),
            groups: Vec::new(),
        }
    }

    const BCRYPT_A: &str = "$2b$04$EGdrhbKUv8Oc9vGiXX0HQOxSg445d458Muh7DAHskb6QbtCvdxcie";

    fn tag_of(cache: &VerifiedCache, user: &User, password: &str) -> [u8; 32] {
        cache.tag(&user.name, &user.hash, password)
    }

    #[test]
    fn cache_tag_binds_user_hash_and_password() {
        let cache = VerifiedCache::new();
        let a = user("alice", BCRYPT_A);
        // A new hash of the same password: a new salt, so a new digest.
        let rehashed = bcrypt::hash("pw", 4).unwrap();
        let tag = tag_of(&cache, &a, "pw");
        assert_eq!(tag, tag_of(&cache, &a, "pw"));
        assert_ne!(tag, tag_of(&cache, &a, "pw2"));
        assert_ne!(tag, tag_of(&cache, &user("alice", &rehashed), "pw"));
        assert_ne!(tag, tag_of(&cache, &user("alicf", BCRYPT_A), "pw"));
        cache.insert(tag);
        assert!(cache.contains(&tag));
        assert!(!cache.contains(&tag_of(&cache, &user("alice", &rehashed), "pw")));
    }

    fn users(hashes: &[(&str, &str)]) -> UserDb {
        UserDb::new(
            hashes
                .iter()
                .map(|(name, hash)| (name.to_string(), Arc::new(user(name, hash))))
                .collect(),
        )
    }

    /// Nine identical attempts at once cost one hash, for a known user and an unknown name
    /// alike. The test is the hashing thread: it hashes only once all nine are waiting, so
    /// they certainly overlap, and it counts the hashes asked of it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn identical_concurrent_attempts_share_one_hash_known_or_not() {
        let db = users(&[("alice", BCRYPT_A), ("bob", BCRYPT_A)]);
        for name in ["alice", "nobody"] {
            let (jobs, queue) = crossbeam_channel::unbounded::<Job>();
            let verifier = PasswordVerifier::with_queue(jobs, Counter::default());
            let attempts: Vec<_> = (0..9)
                .map(|_| verifier.verify(&db, name, "wrong"))
                .collect();
            let all = futures_util::future::join_all(attempts);
            let worker = async {
                let deadline = Instant::now() + Duration::from_secs(10);
                // Each waiting attempt holds the shared cell once; the map holds it once more.
                let waiting = || {
                    verifier
                        .in_flight
                        .lock()
                        .values()
                        .map(|cell| Arc::strong_count(cell) - 1)
                        .sum::<usize>()
                };
                while waiting() < 9 {
                    assert!(Instant::now() < deadline, "the attempts never all waited");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                let job = loop {
                    if let Ok(job) = queue.try_recv() {
                        break job;
                    }
                    assert!(Instant::now() < deadline, "no hash was asked for");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                };
                let ok = job.hash.verify(job.password.as_bytes());
                let _ = job.reply.send(ok);
            };
            let (results, ()) = tokio::join!(all, worker);
            assert_eq!(
                queue.try_iter().count(),
                0,
                "{name}: one hash for nine attempts"
            );
            for result in results {
                let Err(Refusal::Deny(denial)) = result else {
                    panic!("{name}: not a denial: {result:?}");
                };
                let expected = if name == "alice" {
                    DenyReason::BadPassword
                } else {
                    DenyReason::UnknownUser
                };
                assert_eq!(denial.reason, expected);
            }
            assert_eq!(verifier.verifications.get(), 1, "{name}: counted once");
        }
    }
}
