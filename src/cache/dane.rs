//! The DANE states the daemon knows (RFC 7672), one per Postfix destination (`example.com`,
//! `[relay.example.com]:587`), beside the MTA-STS policies of `memory.rs` and held to the same
//! rules: a hit is a read lock and a hash lookup, an unexpired state is served while DNS fails,
//! and the count is bounded by `[cache] max_entries`.
//!
//! Stores what the resolver tells it; decides nothing about DANE itself.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use super::Name;
use crate::dane::{DaneState, Verdict};

/// A DANE state and when it was learnt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaneEntry {
    pub state: DaneState,
    pub checked: SystemTime,
}

impl DaneEntry {
    pub fn new(state: DaneState, checked: SystemTime) -> DaneEntry {
        DaneEntry { state, checked }
    }

    /// The state holds for the smallest TTL it was built from.
    pub fn expires(&self) -> SystemTime {
        self.checked
            .checked_add(self.state.ttl)
            .unwrap_or(self.checked)
    }

    pub fn is_valid(&self, now: SystemTime) -> bool {
        self.expires() > now
    }

    /// When to look again: at three quarters of the TTL, so that a refresh that fails once
    /// still has a quarter of it to succeed before the state runs out.
    pub fn refresh_at(&self) -> SystemTime {
        self.checked
            .checked_add(self.state.ttl * 3 / 4)
            .unwrap_or(self.checked)
    }
}

struct Slot {
    entry: Arc<DaneEntry>,
    /// When the refresh task checks it next (the schedule's entries are confirmed against it).
    next_check: SystemTime,
    /// Failed refreshes in a row since the state was learnt.
    failures: u32,
}

/// What a refresh failure did to the cached state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kept {
    pub entry: Arc<DaneEntry>,
    pub next_check: SystemTime,
    pub failures: u32,
}

/// Counts by verdict, for `/metrics` and `ctl stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DaneCounts {
    pub by_verdict: Vec<(Verdict, u64)>,
}

pub struct DaneCache {
    map: RwLock<HashMap<Name, Slot>>,
    max_entries: usize,
}

impl DaneCache {
    pub fn new(max_entries: usize) -> DaneCache {
        DaneCache {
            map: RwLock::new(HashMap::new()),
            max_entries: max_entries.max(1),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Name, Slot>> {
        // Every change is one insert or remove: a poisoned lock still holds a consistent map.
        self.map.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<Name, Slot>> {
        self.map.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The unexpired state of `key`.
    pub fn get(&self, key: &str, now: SystemTime) -> Option<Arc<DaneEntry>> {
        self.read()
            .get(key)
            .filter(|s| s.entry.is_valid(now))
            .map(|s| s.entry.clone())
    }

    /// The state of `key`, expired or not (for `ctl show`).
    pub fn peek(&self, key: &str) -> Option<Arc<DaneEntry>> {
        self.read().get(key).map(|s| s.entry.clone())
    }

    /// Stores a newly learnt state; returns the key as stored (for the schedule) and the state
    /// it replaced. At `max_entries`, expired states go first, then the one expiring soonest.
    pub fn insert(
        &self,
        key: &str,
        entry: Arc<DaneEntry>,
        next_check: SystemTime,
        now: SystemTime,
    ) -> (Name, Option<Arc<DaneEntry>>) {
        let mut map = self.write();
        let slot = Slot {
            entry,
            next_check,
            failures: 0,
        };
        if let Some((k, old)) = map.get_key_value(key) {
            let (k, old) = (k.clone(), old.entry.clone());
            map.insert(k.clone(), slot);
            return (k, Some(old));
        }
        if map.len() >= self.max_entries {
            map.retain(|_, s| s.entry.is_valid(now));
            if map.len() >= self.max_entries
                && let Some(k) = map
                    .iter()
                    .min_by_key(|(_, s)| s.entry.expires())
                    .map(|(k, _)| k.clone())
            {
                map.remove(&k);
            }
        }
        let k = Name::from(key);
        map.insert(k.clone(), slot);
        (k, None)
    }

    /// A refresh failed: the state stays until it expires (trust what was learnt, as for
    /// MTA-STS policies); None when there is nothing valid to keep.
    /// The next check is [`retry_after`] the failure.
    pub fn failed(&self, key: &str, now: SystemTime) -> Option<Kept> {
        let mut map = self.write();
        let slot = map.get_mut(key)?;
        if !slot.entry.is_valid(now) {
            map.remove(key);
            return None;
        }
        slot.failures = slot.failures.saturating_add(1);
        slot.next_check = retry_after(slot.failures, &slot.entry, now);
        Some(Kept {
            next_check: slot.next_check,
            entry: slot.entry.clone(),
            failures: slot.failures,
        })
    }

    pub fn remove(&self, key: &str) -> bool {
        self.write().remove(key).is_some()
    }

    /// Drops expired states; returns how many went.
    pub fn sweep(&self, now: SystemTime) -> usize {
        let mut map = self.write();
        let before = map.len();
        map.retain(|_, s| s.entry.is_valid(now));
        before - map.len()
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    /// Every state, sorted by key.
    pub fn views(&self) -> Vec<(Name, Arc<DaneEntry>)> {
        let mut v: Vec<_> = self
            .read()
            .iter()
            .map(|(k, s)| (k.clone(), s.entry.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Unexpired states by verdict.
    pub fn counts(&self, now: SystemTime) -> DaneCounts {
        let map = self.read();
        let by_verdict = Verdict::ALL
            .iter()
            .map(|v| {
                let n = map
                    .values()
                    .filter(|s| s.entry.state.verdict == *v && s.entry.is_valid(now))
                    .count();
                (*v, n as u64)
            })
            .collect();
        DaneCounts { by_verdict }
    }

    /// When `key` is due for its next check, if it is cached.
    pub fn refresh_at(&self, key: &str) -> Option<SystemTime> {
        self.read().get(key).map(|s| s.next_check)
    }
}

/// How long after a failed refresh to try again: a minute, doubling per failure, never past
/// the state's expiry (the last try is made then).
pub fn retry_after(failures: u32, entry: &DaneEntry, now: SystemTime) -> SystemTime {
    let backoff = Duration::from_secs(60) * 2u32.saturating_pow(failures.saturating_sub(1).min(6));
    let at = now.checked_add(backoff).unwrap_or(now);
    at.min(entry.expires()).max(now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dane::{HostState, Tlsa};
    use std::time::UNIX_EPOCH;

    fn state(verdict: Verdict, ttl: u64) -> DaneState {
        DaneState {
            verdict,
            mx_authenticated: true,
            hosts: vec![HostState {
                name: "mx.example.com".into(),
                secure: true,
                addressable: true,
                tlsa_authenticated: true,
                tlsa: vec![Tlsa::new(3, 1, 1, &[1; 32])],
            }],
            ttl: Duration::from_secs(ttl),
        }
    }

    fn t(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000 + s)
    }

    #[test]
    fn a_state_holds_for_its_ttl_and_is_checked_at_three_quarters() {
        let e = DaneEntry::new(state(Verdict::DaneOnly, 400), t(0));
        assert_eq!(e.expires(), t(400));
        assert_eq!(e.refresh_at(), t(300));
        let c = DaneCache::new(10);
        c.insert("example.com", Arc::new(e), t(300), t(0));
        assert!(c.get("example.com", t(399)).is_some());
        assert!(c.get("example.com", t(400)).is_none());
        assert!(c.peek("example.com").is_some());
    }

    #[test]
    fn a_failed_refresh_keeps_the_state_until_it_expires() {
        let c = DaneCache::new(10);
        c.insert(
            "example.com",
            Arc::new(DaneEntry::new(state(Verdict::DaneOnly, 400), t(0))),
            t(300),
            t(0),
        );
        let k = c.failed("example.com", t(300)).unwrap();
        assert_eq!((k.failures, k.next_check), (1, t(360)));
        assert_eq!(c.refresh_at("example.com"), Some(t(360)));
        assert_eq!(c.failed("example.com", t(350)).unwrap().failures, 2);
        assert_eq!(c.failed("example.com", t(401)), None);
        assert!(c.is_empty());
        assert_eq!(retry_after(1, &k.entry, t(300)), t(360));
        assert_eq!(retry_after(3, &k.entry, t(300)), t(400));
    }

    #[test]
    fn at_max_entries_expired_states_go_first_then_the_soonest_to_expire() {
        let c = DaneCache::new(2);
        c.insert(
            "a",
            Arc::new(DaneEntry::new(state(Verdict::Dane, 100), t(0))),
            t(0),
            t(0),
        );
        c.insert(
            "b",
            Arc::new(DaneEntry::new(state(Verdict::Dane, 900), t(0))),
            t(0),
            t(0),
        );
        c.insert(
            "c",
            Arc::new(DaneEntry::new(state(Verdict::Dane, 500), t(0))),
            t(10),
            t(10),
        );
        assert_eq!(c.len(), 2);
        assert!(c.peek("a").is_none(), "the soonest to expire went");
        c.insert(
            "d",
            Arc::new(DaneEntry::new(state(Verdict::Dane, 500), t(600))),
            t(600),
            t(600),
        );
        assert!(c.peek("c").is_none(), "expired at 500");
        assert!(c.peek("b").is_some());
        let counts = c.counts(t(600));
        assert_eq!(counts.by_verdict[1], (Verdict::Dane, 2));
    }
}
