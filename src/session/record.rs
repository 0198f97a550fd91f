//! What the store keeps: session records, their end reasons, the keys they live under, and
//! the per-user cap's rule.

use sha2::{Digest, Sha256};

use super::TAG_CHARS;

/// What the store keeps about a session. The id itself is never stored: the store's key is
/// the SHA-256 of the id, so a leaked store dump cannot be replayed as cookies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// Who signed in.
    pub user: String,
    /// When the session began (Unix milliseconds).
    pub created_ms: u64,
    /// Last admitted request (Unix milliseconds), as last written to the store.
    pub last_seen_ms: u64,
    /// The credential the session was started with; `None` for a record written by a version
    /// that did not keep it, which is treated as revoked (CHANGELOG, Migrations).
    pub credential: Option<Fingerprint>,
}

/// A short fingerprint of a password user's configured hash: the first 8 bytes of the SHA-256
/// of the hash string. A session keeps the one it was started with, so a reload that changes
/// the password (or removes the user) ends it. Never the hash itself: the store holds nothing
/// an offline password guess could be checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint(pub [u8; 8]);

impl Fingerprint {
    /// The fingerprint of a user's current password hash.
    pub fn of(hash: &crate::auth::password::PasswordHash) -> Self {
        let digest = Sha256::digest(hash.as_str().as_bytes());
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&digest[..8]);
        Fingerprint(bytes)
    }

    /// How the store writes it: 16 hex digits.
    pub fn to_hex(self) -> String {
        hex::encode(self.0)
    }

    /// Reads what [`Fingerprint::to_hex`] wrote.
    pub fn from_hex(text: &str) -> Option<Self> {
        let mut bytes = [0u8; 8];
        hex::decode_to_slice(text, &mut bytes).ok()?;
        Some(Fingerprint(bytes))
    }
}

/// Why a session ended. An ended session stays in the store as a tombstone holding only this
/// (and, when a later login past `max_per_user` ended it, the detail saying so), until its
/// absolute deadline plus `ended_memory`, so that every later request with its cookie is told
/// the same reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// No request for longer than the idle timeout.
    Idle,
    /// Older than the absolute timeout.
    Absolute,
    /// Ended by the proxy: the user's password changed or the user was removed.
    Revoked,
    /// Ended by a newer login of its user past `max_per_user` (the oldest end first).
    Capped,
}

impl EndReason {
    /// How the store writes it.
    pub fn code(self) -> &'static str {
        match self {
            EndReason::Idle => "idle",
            EndReason::Absolute => "absolute",
            EndReason::Revoked => "revoked",
            EndReason::Capped => "capped",
        }
    }

    /// Reads what [`EndReason::code`] wrote.
    pub fn from_code(code: &str) -> Option<Self> {
        match code {
            "idle" => Some(EndReason::Idle),
            "absolute" => Some(EndReason::Absolute),
            "revoked" => Some(EndReason::Revoked),
            "capped" => Some(EndReason::Capped),
            _ => None,
        }
    }
}

/// A session as the store has it: live, or a tombstone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// Live (as far as the store knows: the deadlines are checked here).
    Live(SessionRecord),
    /// Ended, why, and (when the end was decided elsewhere, e.g. by a later login past
    /// `max_per_user`) the detail the refusal carries.
    Ended(EndReason, Option<String>),
}

/// The first four bytes of the SHA-256 of a user name, as 8 hex digits in the cookie and in
/// the Redis keys (`portcullis:{u:<tag>}:…`). Every key one session operation touches (the
/// session, its user's index) carries the same hash tag, so on a Redis Cluster they share a
/// slot. Not a secret and not unique: two users may share a tag (their indexes stay apart).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UserTag(pub [u8; 4]);

impl UserTag {
    /// The tag of `user`.
    pub fn of(user: &str) -> Self {
        let digest = Sha256::digest(user.as_bytes());
        UserTag([digest[0], digest[1], digest[2], digest[3]])
    }

    /// 8 lowercase hex digits.
    pub fn hex(self) -> String {
        hex::encode(self.0)
    }

    pub(super) fn parse(text: &str) -> Option<Self> {
        if text.len() != TAG_CHARS || !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return None;
        }
        let mut tag = [0u8; 4];
        hex::decode_to_slice(text, &mut tag).ok()?;
        Some(UserTag(tag))
    }
}

/// Where the store keeps a session: its user's tag and the SHA-256 of its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionKey {
    /// The session's user's tag (from the cookie).
    pub tag: UserTag,
    /// The SHA-256 of the id.
    pub hash: [u8; 32],
}

/// What a new login past `max_per_user` does: the deadlines that decide which of the user's
/// sessions are still live, the cap, and the words of the refusal the ended ones then get.
#[derive(Debug, Clone)]
pub struct Cap {
    /// Live sessions allowed per user.
    pub max: usize,
    /// Now (Unix milliseconds).
    pub now_ms: u64,
    /// The idle timeout in milliseconds.
    pub idle_ms: u64,
    /// The absolute timeout in milliseconds.
    pub absolute_ms: u64,
    /// The user signing in.
    pub user: String,
}

impl Cap {
    /// Whether a session with this record is live now.
    pub fn live(&self, created_ms: u64, last_seen_ms: u64) -> bool {
        self.now_ms < created_ms.saturating_add(self.absolute_ms)
            && self.now_ms < last_seen_ms.saturating_add(self.idle_ms)
    }

    /// The detail an ended session's refusal carries, when the new login is the `nth` live.
    pub fn detail(&self, nth: usize) -> String {
        format!(
            "{}{}{}",
            self.detail_before(),
            ordinal(nth),
            self.detail_after()
        )
    }

    /// The words before the ordinal (the Redis script puts them together).
    pub fn detail_before(&self) -> String {
        format!("ended because {} started a ", self.user)
    }

    /// The words after the ordinal.
    pub fn detail_after(&self) -> String {
        format!(" session; session.max_per_user = {}", self.max)
    }
}

/// `1st`, `2nd`, `3rd`, `4th`, `11th`, `21st`, … (the Redis create script has the same rule).
pub(super) fn ordinal(n: usize) -> String {
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}
