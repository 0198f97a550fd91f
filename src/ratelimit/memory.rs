//! The counters in this process's memory: both tables behind one lock, swept as they grow.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::{Refused, Rules, UserKey, Verdict, MAX_TRACKED, SWEEP_INTERVAL_MS};

/// In-process counters: both tables behind one lock, so an attempt's two keys are admitted
/// together or not at all.
pub(super) struct MemoryCounters {
    pub(super) tables: Mutex<Tables>,
}

pub(super) struct Tables {
    pub(super) ips: Table<IpAddr>,
    pub(super) users: Table<UserKey>,
}

pub(super) struct Table<K> {
    pub(super) slots: HashMap<K, Slots>,
    pub(super) last_sweep: Option<Instant>,
}

/// One key's window.
#[derive(Default)]
pub(super) struct Slots {
    /// When each failure still in the window happened, oldest first (at most `max_failures`).
    pub(super) failures: VecDeque<Instant>,
    /// Attempts admitted whose result is not known yet.
    pub(super) pending: u32,
    pub(super) locked_until: Option<Instant>,
}

impl Slots {
    pub(super) fn forget_old(&mut self, rules: &Rules, now: Instant) {
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

    pub(super) fn verdict(&mut self, rules: &Rules, now: Instant) -> Verdict {
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

    pub(super) fn fail(&mut self, rules: &Rules, now: Instant) {
        self.forget_old(rules, now);
        self.failures.push_back(now);
        while self.failures.len() > rules.max_failures as usize {
            self.failures.pop_front();
        }
        if self.failures.len() >= rules.max_failures as usize {
            self.locked_until = Some(now + rules.lockout);
        }
    }

    pub(super) fn is_idle(&self) -> bool {
        self.failures.is_empty() && self.pending == 0 && self.locked_until.is_none()
    }
}

impl<K: Hash + Eq + Copy> Table<K> {
    pub(super) fn new() -> Self {
        Table {
            slots: HashMap::new(),
            last_sweep: None,
        }
    }

    pub(super) fn verdict(&mut self, rules: &Rules, key: &K, now: Instant) -> Verdict {
        if let Some(slots) = self.slots.get_mut(key) {
            return slots.verdict(rules, now);
        }
        if self.slots.len() >= MAX_TRACKED && !self.make_room(rules, now) {
            return Err(Refused::TableFull);
        }
        Ok(())
    }

    /// Drops keys with nothing left to count, at most once per SWEEP_INTERVAL_MS.
    pub(super) fn make_room(&mut self, rules: &Rules, now: Instant) -> bool {
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

    pub(super) fn take(&mut self, key: K) {
        self.slots.entry(key).or_default().pending += 1;
    }

    pub(super) fn settle(&mut self, rules: &Rules, key: &K, failed: bool, now: Instant) {
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
    pub(super) fn new() -> Self {
        MemoryCounters {
            tables: Mutex::new(Tables {
                ips: Table::new(),
                users: Table::new(),
            }),
        }
    }

    pub(super) fn admit(
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

    pub(super) fn settle(
        &self,
        rules: &Rules,
        ip: IpAddr,
        user: Option<UserKey>,
        failed: bool,
        now: Instant,
    ) {
        let mut tables = self.tables.lock();
        tables.ips.settle(rules, &ip, failed, now);
        if let Some(user) = user {
            tables.users.settle(rules, &user, failed, now);
        }
    }

    /// A failure whose slot was taken elsewhere (in Redis, which then went away).
    pub(super) fn record_failure(
        &self,
        rules: &Rules,
        ip: IpAddr,
        user: Option<UserKey>,
        now: Instant,
    ) {
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
pub(super) fn worst(a: Refused, b: Refused) -> Refused {
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
