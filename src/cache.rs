//! The in-memory policy cache: domain → a policy with its lifetime, or a remembered "no policy".
//!
//! Pure data behind one std `Mutex` around an LRU: no I/O, no `.await`, so the lock is never held
//! across a suspension point and a hit costs one short critical section. Persistence and refresh
//! work on the same [`PolicyEntry`] values through plain data.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use lru::LruCache;

use crate::policy::Policy;

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
        /// When the next TXT check is due for this domain.
        next_check: SystemTime,
    },
    Negative {
        reason: Arc<str>,
        until: SystemTime,
    },
}

/// What the cache knows about a domain right now.
#[derive(Debug, Clone)]
pub enum Hit {
    /// A valid policy; `check_due` says its TXT record should be looked at again.
    Policy {
        entry: Arc<PolicyEntry>,
        check_due: bool,
    },
    /// A remembered "no policy" (or fetch back-off) that has not run out.
    Negative(Arc<str>),
    /// Nothing usable: never seen, or expired.
    Miss,
}

pub struct Cache {
    slots: Mutex<LruCache<String, Slot>>,
}

impl Cache {
    pub fn new(capacity: NonZeroUsize) -> Cache {
        Cache {
            slots: Mutex::new(LruCache::new(capacity)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, LruCache<String, Slot>> {
        // A panic while holding this lock cannot leave a slot half-written (every mutation is a
        // single put/pop), so a poisoned lock is still consistent: keep serving.
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The lookup path: promotes the domain in the LRU; expired slots count as a miss.
    pub fn get(&self, domain: &str, now: SystemTime) -> Hit {
        let mut slots = self.lock();
        match slots.get(domain) {
            Some(Slot::Policy { entry, next_check }) if entry.is_valid(now) => Hit::Policy {
                entry: entry.clone(),
                check_due: *next_check <= now,
            },
            Some(Slot::Negative { reason, until }) if now < *until => Hit::Negative(reason.clone()),
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

    /// Stores a policy; returns the policy it replaced, if that one was still valid.
    pub fn insert_policy(
        &self,
        domain: &str,
        entry: Arc<PolicyEntry>,
        next_check: SystemTime,
    ) -> Option<Arc<PolicyEntry>> {
        let now = entry.fetched;
        let old = self
            .lock()
            .put(domain.to_string(), Slot::Policy { entry, next_check });
        match old {
            Some(Slot::Policy { entry, .. }) if entry.is_valid(now) => Some(entry),
            _ => None,
        }
    }

    /// Remembers "no policy" until `until`. Never replaces a valid policy (RFC 8461 §3.1, §5.1:
    /// a missing TXT record does not cancel a cached policy); returns false when it did not store.
    pub fn insert_negative(
        &self,
        domain: &str,
        reason: &str,
        now: SystemTime,
        until: SystemTime,
    ) -> bool {
        let mut slots = self.lock();
        if let Some(Slot::Policy { entry, .. }) = slots.peek(domain)
            && entry.is_valid(now)
        {
            return false;
        }
        slots.put(
            domain.to_string(),
            Slot::Negative {
                reason: reason.into(),
                until,
            },
        );
        true
    }

    /// Moves the next TXT check of a cached policy.
    pub fn set_next_check(&self, domain: &str, at: SystemTime) {
        if let Some(Slot::Policy { next_check, .. }) = self.lock().peek_mut(domain) {
            *next_check = at;
        }
    }

    pub fn remove(&self, domain: &str) {
        self.lock().pop(domain);
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
        c.insert_policy(
            "example.com",
            entry("a", 100, t0),
            t0 + Duration::from_secs(50),
        );
        assert!(matches!(
            c.get("example.com", t0),
            Hit::Policy {
                check_due: false,
                ..
            }
        ));
        assert!(matches!(
            c.get("example.com", t0 + Duration::from_secs(60)),
            Hit::Policy {
                check_due: true,
                ..
            }
        ));
        assert!(matches!(
            c.get("example.com", t0 + Duration::from_secs(99)),
            Hit::Policy { .. }
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
        c.insert_policy("example.com", entry("a", 100, t0), t0);
        assert!(!c.insert_negative("example.com", "gone", t0, t0 + Duration::from_secs(10)));
        assert!(matches!(c.get("example.com", t0), Hit::Policy { .. }));
        // Once the policy has expired, "no policy" may be remembered.
        let later = t0 + Duration::from_secs(200);
        assert!(c.insert_negative(
            "example.com",
            "gone",
            later,
            later + Duration::from_secs(10)
        ));
        assert!(matches!(c.get("example.com", later), Hit::Negative(_)));
        assert!(matches!(
            c.get("example.com", later + Duration::from_secs(10)),
            Hit::Miss
        ));
    }

    #[test]
    fn insert_returns_the_replaced_valid_policy() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let c = cache();
        assert!(c.insert_policy("d.test", entry("a", 100, t0), t0).is_none());
        let old = c.insert_policy("d.test", entry("b", 100, t0), t0).unwrap();
        assert_eq!(old.id, "a");
        assert_eq!(c.valid_policy("d.test", t0).unwrap().id, "b");
    }
}
