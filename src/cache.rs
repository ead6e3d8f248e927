//! The in-memory policy cache: domain → a policy with its lifetime, or a remembered "no policy".
//!
//! Pure data behind one std `Mutex` around an LRU: no I/O, no `.await`, so the lock is never held
//! across a suspension point and a hit costs one short critical section. Persistence and refresh
//! work on the same [`PolicyEntry`] values through plain data.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use lru::LruCache;

use tracing::warn;

use crate::policy::{Mode, Policy};

/// A policy as fetched: immutable once made, shared by `Arc` with every lookup that answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyEntry {
    /// The `_mta-sts` TXT id it was fetched under (RFC 8461 §3.1).
    pub id: String,
    pub policy: Policy,
    pub fetched: SystemTime,
    /// `fetched + max_age` (RFC 8461 §3.2: "from last policy fetch time").
    pub expires: SystemTime,
}

impl PolicyEntry {
    pub fn new(id: String, policy: Policy, fetched: SystemTime) -> PolicyEntry {
        let expires = fetched + Duration::from_secs(u64::from(policy.max_age));
        PolicyEntry {
            id,
            policy,
            fetched,
            expires,
        }
    }

    /// RFC 8461 §3.2 / spec A5.2: valid while `now < fetched + max_age`.
    pub fn is_valid(&self, now: SystemTime) -> bool {
        now < self.expires
    }
}

enum Slot {
    Policy {
        entry: Arc<PolicyEntry>,
        /// When the background refresh looks at this domain next.
        next_check: SystemTime,
        /// Refresh failures in a row (for back-off and rate-limited warnings).
        failures: u32,
    },
    Negative {
        reason: Arc<str>,
        until: SystemTime,
        /// A fetch failure being backed off (RFC 8461 §3.3), as opposed to "no policy".
        failure: bool,
    },
}

/// What the cache knows about a domain right now.
#[derive(Debug, Clone)]
pub enum Hit {
    /// A valid policy.
    Policy(Arc<PolicyEntry>),
    /// A remembered "no policy" (`failure == false`) or fetch back-off (`failure == true`).
    Negative { reason: Arc<str>, failure: bool },
    /// Nothing usable: never seen, or expired.
    Miss,
}

/// A cached policy with its refresh state, for the refresh scheduler.
#[derive(Debug, Clone)]
pub struct PolicyState {
    pub entry: Arc<PolicyEntry>,
    pub next_check: SystemTime,
    pub failures: u32,
}

/// How many of the least recently used entries are searched for an expired or negative victim
/// before the least recently used policy itself is evicted; bounds the cost of a full insert.
const EVICTION_SCAN: usize = 64;

pub struct Cache {
    slots: Mutex<LruCache<String, Slot>>,
    /// `cache.max_entries`. Enforced here rather than by `LruCache::new(cap)`, which would
    /// allocate a table for all of them up front (about 100 MiB for the default million).
    capacity: usize,
    evicted_policies: AtomicU64,
}

impl Cache {
    pub fn new(capacity: NonZeroUsize) -> Cache {
        Cache {
            slots: Mutex::new(LruCache::unbounded()),
            capacity: capacity.get(),
            evicted_policies: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, LruCache<String, Slot>> {
        // A panic while holding this lock cannot leave a slot half-written (every mutation is a
        // single put/pop or field store), so a poisoned lock is still consistent: keep serving.
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The lookup path: promotes the domain in the LRU; expired slots count as a miss.
    pub fn get(&self, domain: &str, now: SystemTime) -> Hit {
        let mut slots = self.lock();
        match slots.get(domain) {
            Some(Slot::Policy { entry, .. }) if entry.is_valid(now) => Hit::Policy(entry.clone()),
            Some(Slot::Negative {
                reason,
                until,
                failure,
            }) if now < *until => Hit::Negative {
                reason: reason.clone(),
                failure: *failure,
            },
            _ => Hit::Miss,
        }
    }

    /// The valid policy for `domain`, if any, without touching the LRU order.
    pub fn valid_policy(&self, domain: &str, now: SystemTime) -> Option<Arc<PolicyEntry>> {
        match self.lock().peek(domain) {
            Some(Slot::Policy { entry, .. }) if entry.is_valid(now) => Some(entry.clone()),
            _ => None,
        }
    }

    /// The cached policy (valid or not) and its refresh state, without touching the LRU order.
    pub fn policy_state(&self, domain: &str) -> Option<PolicyState> {
        match self.lock().peek(domain) {
            Some(Slot::Policy {
                entry,
                next_check,
                failures,
            }) => Some(PolicyState {
                entry: entry.clone(),
                next_check: *next_check,
                failures: *failures,
            }),
            _ => None,
        }
    }

    /// Stores a policy; returns the policy it replaced, if that one was still valid.
    pub fn insert_policy(
        &self,
        domain: &str,
        entry: Arc<PolicyEntry>,
        next_check: SystemTime,
        now: SystemTime,
    ) -> Option<Arc<PolicyEntry>> {
        let mut slots = self.lock();
        self.make_room(&mut slots, domain, now);
        let old = slots.put(
            domain.to_string(),
            Slot::Policy {
                entry,
                next_check,
                failures: 0,
            },
        );
        match old {
            Some(Slot::Policy { entry, .. }) if entry.is_valid(now) => Some(entry),
            _ => None,
        }
    }

    /// Remembers "no policy" (or a fetch back-off) until `until`. Never replaces a valid policy
    /// (RFC 8461 §3.1, §5.1: a missing TXT record does not cancel a cached policy); returns false
    /// when it did not store.
    pub fn insert_negative(
        &self,
        domain: &str,
        reason: &str,
        failure: bool,
        now: SystemTime,
        until: SystemTime,
    ) -> bool {
        let mut slots = self.lock();
        if let Some(Slot::Policy { entry, .. }) = slots.peek(domain)
            && entry.is_valid(now)
        {
            return false;
        }
        self.make_room(&mut slots, domain, now);
        slots.put(
            domain.to_string(),
            Slot::Negative {
                reason: reason.into(),
                until,
                failure,
            },
        );
        true
    }

    /// Records a refresh of a cached policy: the next check time, and whether it failed. Returns
    /// the failures in a row after this one (0 on success).
    pub fn record_check(&self, domain: &str, next: SystemTime, failed: bool) -> u32 {
        match self.lock().peek_mut(domain) {
            Some(Slot::Policy {
                next_check,
                failures,
                ..
            }) => {
                *next_check = next;
                *failures = if failed {
                    failures.saturating_add(1)
                } else {
                    0
                };
                *failures
            }
            _ => 0,
        }
    }

    /// Removes a domain; true if it was there.
    pub fn remove(&self, domain: &str) -> bool {
        self.lock().pop(domain).is_some()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Unexpired policies evicted because the cache was full.
    pub fn evicted_policies(&self) -> u64 {
        self.evicted_policies.load(Ordering::Relaxed)
    }

    /// Frees one slot when the cache is full and `domain` is new: an expired entry first, then a
    /// negative one, among the least recently used; only then the least recently used policy.
    fn make_room(&self, slots: &mut LruCache<String, Slot>, domain: &str, now: SystemTime) {
        if slots.len() < self.capacity || slots.contains(domain) {
            return;
        }
        let lru = || slots.iter().rev().take(EVICTION_SCAN);
        let expired = |s: &Slot| match s {
            Slot::Policy { entry, .. } => !entry.is_valid(now),
            Slot::Negative { until, .. } => *until <= now,
        };
        let victim = lru()
            .find(|(_, s)| expired(s))
            .or_else(|| lru().find(|(_, s)| matches!(s, Slot::Negative { .. })))
            .map(|(k, _)| k.clone());
        let evicted = match victim {
            Some(k) => slots.pop_entry(&k),
            None => slots.pop_lru(),
        };
        if let Some((d, Slot::Policy { entry, .. })) = evicted
            && entry.is_valid(now)
        {
            self.evicted_policies.fetch_add(1, Ordering::Relaxed);
            if entry.policy.mode == Mode::Enforce {
                // Trust on first use (RFC 8461 §10.2) is lost for this domain until it is seen again.
                warn!(
                    domain = d,
                    id = entry.id,
                    "cache full (cache.max_entries): evicted an unexpired enforce policy"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::parse_policy;

    fn entry(id: &str, max_age: u32, at: SystemTime) -> Arc<PolicyEntry> {
        let body =
            format!("version: STSv1\nmode: enforce\nmx: mx.example.com\nmax_age: {max_age}\n");
        Arc::new(PolicyEntry::new(
            id.to_string(),
            parse_policy(body.as_bytes()).unwrap(),
            at,
        ))
    }

    fn cache() -> Cache {
        Cache::new(NonZeroUsize::new(8).unwrap())
    }

    #[test]
    fn rfc8461_3_2_policy_valid_for_max_age_from_fetch() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let c = cache();
        c.insert_policy("example.com", entry("a", 100, t0), t0, t0);
        assert!(matches!(c.get("example.com", t0), Hit::Policy(_)));
        assert!(matches!(
            c.get("example.com", t0 + Duration::from_secs(99)),
            Hit::Policy(_)
        ));
        assert!(matches!(
            c.get("example.com", t0 + Duration::from_secs(100)),
            Hit::Miss
        ));
    }

    #[test]
    fn rfc8461_3_1_negative_never_replaces_a_valid_policy() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let c = cache();
        c.insert_policy("example.com", entry("a", 100, t0), t0, t0);
        assert!(!c.insert_negative(
            "example.com",
            "gone",
            false,
            t0,
            t0 + Duration::from_secs(10)
        ));
        assert!(matches!(c.get("example.com", t0), Hit::Policy(_)));
        // Once the policy has expired, "no policy" may be remembered.
        let later = t0 + Duration::from_secs(200);
        assert!(c.insert_negative(
            "example.com",
            "gone",
            false,
            later,
            later + Duration::from_secs(10)
        ));
        assert!(matches!(
            c.get("example.com", later),
            Hit::Negative { failure: false, .. }
        ));
        assert!(matches!(
            c.get("example.com", later + Duration::from_secs(10)),
            Hit::Miss
        ));
    }

    #[test]
    fn insert_returns_the_replaced_valid_policy() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let c = cache();
        assert!(
            c.insert_policy("d.test", entry("a", 100, t0), t0, t0)
                .is_none()
        );
        let old = c
            .insert_policy("d.test", entry("b", 100, t0), t0, t0)
            .unwrap();
        assert_eq!(old.id, "a");
        assert_eq!(c.valid_policy("d.test", t0).unwrap().id, "b");
    }

    #[test]
    fn capacity_evicts_expired_then_negatives_then_least_recently_used() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let c = Cache::new(NonZeroUsize::new(4).unwrap());
        let later = t0 + Duration::from_secs(500);
        c.insert_policy("old.test", entry("a", 100, t0), t0, t0); // expired at `later`
        c.insert_policy("p1.test", entry("a", 1000, t0), t0, t0);
        c.insert_negative(
            "neg.test",
            "none",
            false,
            t0,
            t0 + Duration::from_secs(3600),
        );
        c.insert_policy("p2.test", entry("a", 1000, t0), t0, t0);
        // Full: the expired policy goes first, although it is not the least recently used slot
        // that is valid.
        c.insert_policy("new1.test", entry("a", 1000, later), later, later);
        assert!(c.policy_state("old.test").is_none());
        assert!(matches!(c.get("neg.test", later), Hit::Negative { .. }));
        // Then the negative.
        c.insert_policy("new2.test", entry("a", 1000, later), later, later);
        assert!(matches!(c.get("neg.test", later), Hit::Miss));
        assert_eq!(c.evicted_policies(), 0);
        // Then the least recently used valid policy, counted. p1 was used least recently.
        c.get("p2.test", later);
        c.insert_policy("new3.test", entry("a", 1000, later), later, later);
        assert!(c.valid_policy("p1.test", later).is_none());
        assert!(c.valid_policy("p2.test", later).is_some());
        assert_eq!(c.evicted_policies(), 1);
        assert_eq!(c.len(), 4);
    }

    #[test]
    fn record_check_counts_failures_in_a_row() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let c = cache();
        c.insert_policy("d.test", entry("a", 100, t0), t0, t0);
        assert_eq!(c.record_check("d.test", t0, true), 1);
        assert_eq!(c.record_check("d.test", t0, true), 2);
        assert_eq!(
            c.record_check("d.test", t0 + Duration::from_secs(5), false),
            0
        );
        assert_eq!(
            c.policy_state("d.test").unwrap().next_check,
            t0 + Duration::from_secs(5)
        );
    }
}
