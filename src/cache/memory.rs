//! The in-memory policy cache: domain → a policy with its lifetime, or a remembered "no policy".
//!
//! Pure data behind one std `RwLock` around a hash map (`table.rs`): no I/O, no `.await`, so the
//! lock is never held across a suspension point. A hit takes only the shared read lock; its
//! bookkeeping (last use, hit count) is relaxed atomics in the entry, read by eviction and
//! operators. Expired entries leave memory through eviction (they go first) and a bounded sweep
//! the resolver runs on a timer ([`Cache::sweep`]). Persistence and refresh work on the same
//! [`PolicyEntry`] values through plain data.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, SystemTime};

use tracing::warn;

use super::table::Table;
use super::{Name, Stamp};
use crate::metrics::Metrics;
use crate::policy::{Mode, Policy};
use crate::proto::SharedText;

/// A policy as fetched: immutable once made, shared by `Arc` with every lookup that answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyEntry {
    /// The `_mta-sts` TXT id it was fetched under (RFC 8461 §3.1). Boxed: no spare capacity.
    pub id: Box<str>,
    pub policy: Policy,
    pub fetched: SystemTime,
}

impl PolicyEntry {
    pub fn new(id: String, policy: Policy, fetched: SystemTime) -> PolicyEntry {
        PolicyEntry {
            id: id.into_boxed_str(),
            policy,
            fetched,
        }
    }

    /// `fetched + max_age` (RFC 8461 §3.2: "from last policy fetch time"). Computed, not
    /// stored: one entry is kept per cached domain. A sum past the end of time (only a corrupt
    /// clock could make one) reads as expired at once, the safe side: the epoch, which every
    /// `now` is past (the fetch time itself would lie in the far future, valid forever).
    pub fn expires(&self) -> SystemTime {
        self.fetched
            .checked_add(Duration::from_secs(u64::from(self.policy.max_age)))
            .unwrap_or(SystemTime::UNIX_EPOCH)
    }

    /// RFC 8461 §3.2: valid while `now < fetched + max_age`.
    pub fn is_valid(&self, now: SystemTime) -> bool {
        now < self.expires()
    }
}

/// A found answer for a cached policy borrows its mx list from the entry (see
/// `answer::render_fitting`), so the lookup path copies it instead of rendering it.
impl SharedText for PolicyEntry {
    fn text(&self) -> &str {
        self.policy.mx.as_match_list()
    }
}

enum Slot {
    Policy {
        entry: Arc<PolicyEntry>,
        /// When the background refresh looks at this domain next.
        next_check: Stamp,
        /// Refresh failures in a row (for back-off and rate-limited warnings).
        failures: u32,
        /// The last refresh failure and when it happened, for operators. Boxed: rare, and a
        /// pointer keeps every slot of a large cache 24 bytes smaller.
        last_error: Option<Box<(SystemTime, Arc<str>)>>,
        usage: Usage,
    },
    Negative {
        reason: Arc<str>,
        until: Stamp,
        /// A fetch failure being backed off (RFC 8461 §3.3), as opposed to "no policy".
        failure: bool,
        usage: Usage,
    },
}

/// Hit bookkeeping, updated under the shared read lock with relaxed atomics: a hit never takes
/// the exclusive lock and never moves anything in memory.
#[derive(Default)]
struct Usage {
    /// Wall time of the last hit, in milliseconds since the epoch (for eviction).
    last_used_ms: AtomicU64,
    hits: AtomicU64,
}

impl Usage {
    fn at(now: SystemTime) -> Usage {
        let u = Usage::default();
        u.last_used_ms.store(millis(now), Ordering::Relaxed);
        u
    }

    fn touch(&self, now: SystemTime) {
        self.last_used_ms.store(millis(now), Ordering::Relaxed);
        self.hits.fetch_add(1, Ordering::Relaxed);
    }
}

fn view(slot: &Slot) -> EntryView {
    match slot {
        Slot::Policy {
            entry,
            next_check,
            failures,
            last_error,
            usage,
        } => EntryView::Policy(PolicyState {
            entry: entry.clone(),
            next_check: next_check.time(),
            failures: *failures,
            last_error: last_error.as_deref().cloned(),
            hits: usage.hits.load(Ordering::Relaxed),
        }),
        Slot::Negative {
            reason,
            until,
            failure,
            usage,
        } => EntryView::Negative {
            reason: reason.clone(),
            until: until.time(),
            failure: *failure,
            hits: usage.hits.load(Ordering::Relaxed),
        },
    }
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Slot {
    fn usage(&self) -> &Usage {
        match self {
            Slot::Policy { usage, .. } | Slot::Negative { usage, .. } => usage,
        }
    }

    fn expired(&self, now: SystemTime) -> bool {
        match self {
            Slot::Policy { entry, .. } => !entry.is_valid(now),
            Slot::Negative { until, .. } => until.time() <= now,
        }
    }
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

/// Entries by kind, as [`Cache::counts`] reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub enforce: u64,
    pub testing: u64,
    pub none: u64,
    pub negative: u64,
    pub expiring_within_day: u64,
}

/// A cached policy with its refresh state, for the refresh scheduler.
#[derive(Debug, Clone)]
pub struct PolicyState {
    pub entry: Arc<PolicyEntry>,
    pub next_check: SystemTime,
    pub failures: u32,
    pub last_error: Option<(SystemTime, Arc<str>)>,
    pub hits: u64,
}

/// One cache entry as operators see it.
#[derive(Debug, Clone)]
pub enum EntryView {
    Policy(PolicyState),
    Negative {
        reason: Arc<str>,
        until: SystemTime,
        failure: bool,
        hits: u64,
    },
}

/// One change to a domain's entry, as the resolver decided it (see `resolve::decide`).
#[derive(Debug, Clone)]
pub enum Change {
    None,
    /// Store a policy (fresh refresh state; the hit count carries over).
    Policy {
        entry: Arc<PolicyEntry>,
        next_check: SystemTime,
    },
    /// Remember "no policy" (`failure == false`) or a fetch back-off until `until`. Never
    /// replaces a valid policy (RFC 8461 §3.1, §5.1: a missing TXT record does not cancel a
    /// cached policy).
    Negative {
        reason: Arc<str>,
        failure: bool,
        until: SystemTime,
    },
    /// A refresh of the cached policy ran: its next check, and the error if it failed.
    Checked {
        next_check: SystemTime,
        error: Option<Arc<str>>,
    },
    Remove,
}

/// What [`Cache::apply`] did.
#[derive(Debug, Clone, Default)]
pub struct Applied {
    /// Whether the change took effect (a negative does not replace a valid policy; a check of a
    /// domain that is gone changes nothing).
    pub stored: bool,
    /// The cache's own copy of the domain name, to share with the schedule.
    pub key: Option<Name>,
    /// When the change carries one: the domain's next check.
    pub next_check: Option<SystemTime>,
}

/// How many entries, drawn at random from the whole table, a full insert looks at to choose a
/// victim (expired first, then negative, then the least recently used): sampled eviction keeps
/// an insert O(1) at any cache size, and 64 samples make evicting a frequently used policy very
/// unlikely (the victim is older than about 98% of the cache).
const EVICTION_SAMPLE: usize = 64;
/// Random buckets probed to find the sample: the table of a full cache has at least 7/16 of its
/// buckets occupied (a quarter for the tiniest), so 64 are found long before this many probes.
const EVICTION_PROBES: usize = 16 * EVICTION_SAMPLE;
/// Buckets one lock acquisition of [`Cache::sweep`] looks at: the read lock while it only
/// looks, the exclusive lock (a hit waits this long at most) only for a slice with something to
/// remove.
const SWEEP_SLICE: usize = 256;

/// Keyed by [`Name`] so that the refresh schedule and the store's index share the one copy
/// of each domain name (a cache of 100,000 policies would otherwise hold it three times).
type Slots = Table<Slot>;

/// What one [`Cache::sweep`] step did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    /// The bucket the next step starts at (0 once the end of the table was reached).
    pub next: usize,
    /// Buckets looked at, occupied or not.
    pub examined: usize,
    pub removed: usize,
}

pub struct Cache {
    slots: RwLock<Slots>,
    /// `cache.max_entries`.
    capacity: usize,
    evicted_policies: AtomicU64,
    metrics: Option<Arc<Metrics>>,
}

impl Cache {
    pub fn new(capacity: NonZeroUsize) -> Cache {
        Cache {
            slots: RwLock::new(Table::default()),
            capacity: capacity.get(),
            evicted_policies: AtomicU64::new(0),
            metrics: None,
        }
    }

    /// Counts evictions of unexpired policies in `metrics` too.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Cache {
        self.metrics = Some(metrics);
        self
    }

    // A panic while holding the lock cannot leave a slot half-written (every mutation is a
    // single insert/remove or field store), so a poisoned lock is still consistent: keep serving.
    fn read(&self) -> RwLockReadGuard<'_, Slots> {
        self.slots.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Slots> {
        self.slots.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The lookup path: a shared read lock, a hash lookup, an `Arc` clone and two relaxed atomic
    /// updates. Expired slots count as a miss.
    pub fn get(&self, domain: &str, now: SystemTime) -> Hit {
        let slots = self.read();
        let Some(slot) = slots.get(domain) else {
            return Hit::Miss;
        };
        if slot.expired(now) {
            return Hit::Miss;
        }
        slot.usage().touch(now);
        match slot {
            Slot::Policy { entry, .. } => Hit::Policy(entry.clone()),
            Slot::Negative {
                reason, failure, ..
            } => Hit::Negative {
                reason: reason.clone(),
                failure: *failure,
            },
        }
    }

    /// The valid policy for `domain`, if any, without counting a hit.
    pub fn valid_policy(&self, domain: &str, now: SystemTime) -> Option<Arc<PolicyEntry>> {
        match self.read().get(domain) {
            Some(Slot::Policy { entry, .. }) if entry.is_valid(now) => Some(entry.clone()),
            _ => None,
        }
    }

    /// The cached policy (valid or not) and its refresh state, without counting a hit.
    pub fn policy_state(&self, domain: &str) -> Option<PolicyState> {
        match self.read().get(domain) {
            Some(slot @ Slot::Policy { .. }) => match view(slot) {
                EntryView::Policy(p) => Some(p),
                EntryView::Negative { .. } => None,
            },
            _ => None,
        }
    }

    /// One entry, expired or not, without counting a hit.
    pub fn view(&self, domain: &str) -> Option<EntryView> {
        self.read().get(domain).map(view)
    }

    /// Every entry (a snapshot: `Arc` clones under the read lock).
    pub fn views(&self) -> Vec<(String, EntryView)> {
        self.read()
            .iter()
            .map(|(d, s)| (d.to_string(), view(s)))
            .collect()
    }

    /// Stores a policy; returns the policy it replaced, if that one was still valid. The hit
    /// count carries over when a domain's policy is replaced.
    pub fn insert_policy(
        &self,
        domain: &str,
        entry: Arc<PolicyEntry>,
        next_check: SystemTime,
        now: SystemTime,
    ) -> Option<Arc<PolicyEntry>> {
        self.insert_policy_shared(domain.into(), entry, next_check, now)
    }

    /// [`Cache::insert_policy`] with the caller's copy of the domain name as the key. A domain
    /// already cached keeps its key (the copy the schedule and the store may share).
    pub fn insert_policy_shared(
        &self,
        domain: Name,
        entry: Arc<PolicyEntry>,
        next_check: SystemTime,
        now: SystemTime,
    ) -> Option<Arc<PolicyEntry>> {
        let mut slots = self.write();
        self.put_policy(&mut slots, domain, entry, next_check, now)
    }

    fn put_policy(
        &self,
        slots: &mut Slots,
        domain: Name,
        entry: Arc<PolicyEntry>,
        next_check: SystemTime,
        now: SystemTime,
    ) -> Option<Arc<PolicyEntry>> {
        self.make_room(slots, &domain, now);
        let usage = Usage::at(now);
        if let Some(old) = slots.get(&domain) {
            let hits = old.usage().hits.load(Ordering::Relaxed);
            usage.hits.store(hits, Ordering::Relaxed);
        }
        let old = slots.insert(
            domain,
            Slot::Policy {
                entry,
                next_check: next_check.into(),
                failures: 0,
                last_error: None,
                usage,
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
        let change = Change::Negative {
            reason: reason.into(),
            failure,
            until,
        };
        self.apply(domain, change, now).stored
    }

    /// Records a refresh of a cached policy: the next check time, and the error if it failed.
    /// Returns the failures in a row after this one (0 on success).
    pub fn record_check(
        &self,
        domain: &str,
        next: SystemTime,
        now: SystemTime,
        error: Option<&str>,
    ) -> u32 {
        let change = Change::Checked {
            next_check: next,
            error: error.map(Arc::from),
        };
        self.apply(domain, change, now);
        self.policy_state(domain).map_or(0, |s| s.failures)
    }

    /// Applies one change under one exclusive lock.
    pub fn apply(&self, domain: &str, change: Change, now: SystemTime) -> Applied {
        self.apply_locked(&mut self.write(), domain, change, now)
    }

    /// Applies changes in order under one exclusive lock (an import's batch): lookups wait for
    /// the lock once per batch instead of once per policy.
    pub fn apply_many<D: AsRef<str>>(
        &self,
        changes: impl IntoIterator<Item = (D, Change)>,
        now: SystemTime,
    ) -> Vec<Applied> {
        let mut slots = self.write();
        changes
            .into_iter()
            .map(|(domain, change)| self.apply_locked(&mut slots, domain.as_ref(), change, now))
            .collect()
    }

    fn apply_locked(
        &self,
        slots: &mut Slots,
        domain: &str,
        change: Change,
        now: SystemTime,
    ) -> Applied {
        match change {
            Change::None => Applied::default(),
            Change::Policy { entry, next_check } => {
                let key = slots
                    .get_key_value(domain)
                    .map(|(k, _)| k.clone())
                    .unwrap_or_else(|| domain.into());
                self.put_policy(slots, key.clone(), entry, next_check, now);
                Applied {
                    stored: true,
                    key: Some(key),
                    next_check: Some(next_check),
                }
            }
            Change::Negative {
                reason,
                failure,
                until,
            } => {
                if let Some(Slot::Policy { entry, .. }) = slots.get(domain)
                    && entry.is_valid(now)
                {
                    return Applied::default();
                }
                self.make_room(slots, domain, now);
                // A domain already cached keeps its key: the schedule may share it.
                let key = slots
                    .get_key_value(domain)
                    .map(|(k, _)| k.clone())
                    .unwrap_or_else(|| domain.into());
                slots.insert(
                    key.clone(),
                    Slot::Negative {
                        reason,
                        until: until.into(),
                        failure,
                        usage: Usage::at(now),
                    },
                );
                Applied {
                    stored: true,
                    key: Some(key),
                    next_check: None,
                }
            }
            Change::Checked { next_check, error } => {
                match slots.get_key_value(domain).map(|(k, _)| k.clone()) {
                    Some(key) => {
                        if let Some(Slot::Policy {
                            next_check: at,
                            failures,
                            last_error,
                            ..
                        }) = slots.get_mut(domain)
                        {
                            *at = next_check.into();
                            match error {
                                Some(e) => {
                                    *failures = failures.saturating_add(1);
                                    *last_error = Some(Box::new((now, e)));
                                }
                                None => *failures = 0,
                            }
                            Applied {
                                stored: true,
                                key: Some(key),
                                next_check: Some(next_check),
                            }
                        } else {
                            Applied::default()
                        }
                    }
                    None => Applied::default(),
                }
            }
            Change::Remove => Applied {
                stored: slots.remove(domain).is_some(),
                key: None,
                next_check: None,
            },
        }
    }

    /// Makes room for `additional` more entries at once (start-up: see `store::scan` on why
    /// growing by doubling costs resident memory).
    pub fn reserve(&self, additional: usize) {
        let mut slots = self.write();
        let room = self.capacity.saturating_sub(slots.len()).min(additional);
        slots.reserve(room);
    }

    /// Removes a domain; true if it was there.
    pub fn remove(&self, domain: &str) -> bool {
        self.write().remove(domain).is_some()
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `cache.max_entries`, the most entries held before new domains evict old ones.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Entries by kind at `now`, for metrics and status: expired entries are not counted.
    pub fn counts(&self, now: SystemTime) -> Counts {
        let day = now + Duration::from_secs(86_400);
        let mut c = Counts::default();
        for slot in self.read().values() {
            if slot.expired(now) {
                continue;
            }
            match slot {
                Slot::Policy { entry, .. } => {
                    match entry.policy.mode {
                        Mode::Enforce => c.enforce += 1,
                        Mode::Testing => c.testing += 1,
                        Mode::None => c.none += 1,
                    }
                    if entry.expires() <= day {
                        c.expiring_within_day += 1;
                    }
                }
                Slot::Negative { .. } => c.negative += 1,
            }
        }
        c
    }

    /// Unexpired policies evicted because the cache was full.
    pub fn evicted_policies(&self) -> u64 {
        self.evicted_policies.load(Ordering::Relaxed)
    }

    /// Frees one slot when the cache is full and `domain` is new: among a random sample of
    /// entries, an expired one first, then a negative one, then the least recently used policy.
    fn make_room(&self, slots: &mut Slots, domain: &str, now: SystemTime) {
        if slots.len() < self.capacity || slots.contains_key(domain) {
            return;
        }
        let rank = |s: &Slot| {
            let class = if s.expired(now) {
                0
            } else if matches!(s, Slot::Negative { .. }) {
                1
            } else {
                2
            };
            (class, s.usage().last_used_ms.load(Ordering::Relaxed))
        };
        let mut victim: Option<(usize, (u8, u64))> = None;
        let mut sampled = 0;
        for _ in 0..EVICTION_PROBES {
            let at = slots.random_bucket();
            let Some((_, slot)) = slots.bucket(at) else {
                continue;
            };
            let r = rank(slot);
            if victim.is_none_or(|(_, best)| r < best) {
                victim = Some((at, r));
            }
            sampled += 1;
            if sampled == EVICTION_SAMPLE {
                break;
            }
        }
        // Only a table emptier than any full cache is could miss every probe: take any entry.
        let victim = victim
            .map(|(at, _)| at)
            .or_else(|| (0..slots.buckets()).find(|&at| slots.bucket(at).is_some()));
        let Some((victim, slot)) = victim.and_then(|at| slots.remove_bucket(at)) else {
            return;
        };
        if let Slot::Policy { entry, .. } = slot
            && entry.is_valid(now)
        {
            self.evicted_policies.fetch_add(1, Ordering::Relaxed);
            if let Some(m) = &self.metrics {
                m.eviction();
            }
            if entry.policy.mode == Mode::Enforce {
                // Trust on first use (RFC 8461 §10.2) is lost for this domain until it is seen again.
                warn!(
                    domain = &*victim,
                    id = entry.id,
                    "cache full (cache.max_entries): evicted an unexpired enforce policy"
                );
            }
        }
    }

    /// One bounded step of the expiry sweep: looks at up to `budget` buckets from bucket `from`
    /// and removes the negatives past their `until` and the policies expired for `grace` or
    /// longer (the grace leaves the refresh due at expiry its turn: it may still renew the
    /// policy, or drop it and say so in the journal). Valid entries are never touched. Memory
    /// only: the journal drops expired records itself when it compacts or loads, so nothing is
    /// written (and a journal kept through a wrong clock keeps what only looks expired).
    pub fn sweep(&self, from: usize, budget: usize, now: SystemTime, grace: Duration) -> Swept {
        let gone = |s: &Slot| match s {
            Slot::Negative { until, .. } => until.time() <= now,
            Slot::Policy { entry, .. } => {
                entry.expires().checked_add(grace).is_some_and(|t| t <= now)
            }
        };
        let mut swept = Swept {
            next: from,
            ..Swept::default()
        };
        while swept.examined < budget {
            let at = swept.next;
            let (end, any) = {
                let slots = self.read();
                let end = slots
                    .buckets()
                    .min(at.saturating_add(SWEEP_SLICE.min(budget - swept.examined)));
                if at >= end {
                    swept.next = 0;
                    break;
                }
                let any = (at..end).any(|b| slots.bucket(b).is_some_and(|(_, s)| gone(s)));
                (end, any)
            };
            let end = if any {
                // Looked at again under the exclusive lock: an insert may have renewed an entry
                // in between (and a table that grew has moved every entry).
                let mut slots = self.write();
                let end = end.min(slots.buckets());
                for b in at..end {
                    if slots.bucket(b).is_some_and(|(_, s)| gone(s)) {
                        slots.remove_bucket(b);
                        swept.removed += 1;
                    }
                }
                end
            } else {
                end
            };
            swept.examined += end.saturating_sub(at);
            swept.next = end;
        }
        if swept.next >= self.read().buckets() {
            swept.next = 0;
        }
        swept
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
        assert_eq!(&*old.id, "a");
        assert_eq!(c.valid_policy("d.test", t0).unwrap().id.as_ref(), "b");
    }

    #[test]
    fn capacity_evicts_expired_then_negatives_then_least_recently_used() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let s = |n: u64| t0 + Duration::from_secs(n);
        let c = Cache::new(NonZeroUsize::new(4).unwrap());
        c.insert_policy("old.test", entry("a", 100, t0), t0, t0); // expired from s(100)
        c.insert_policy("p1.test", entry("a", 1000, t0), t0, s(1));
        c.insert_negative("neg.test", "none", false, s(2), s(3600));
        c.insert_policy("p2.test", entry("a", 1000, t0), t0, s(3));
        // Full: the expired policy goes first, although it is not the least recently used.
        c.get("p1.test", s(400));
        c.insert_policy("new1.test", entry("a", 1000, s(500)), s(500), s(500));
        assert!(c.policy_state("old.test").is_none());
        assert!(matches!(c.get("neg.test", s(501)), Hit::Negative { .. }));
        // Then the negative, although it was just used.
        c.insert_policy("new2.test", entry("a", 1000, s(502)), s(502), s(502));
        assert!(matches!(c.get("neg.test", s(503)), Hit::Miss));
        assert_eq!(c.evicted_policies(), 0);
        // Then the least recently used valid policy, counted: p2 (last used at insert, s(3)).
        c.get("p1.test", s(504));
        c.insert_policy("new3.test", entry("a", 1000, s(505)), s(505), s(505));
        assert!(c.valid_policy("p2.test", s(505)).is_none());
        assert!(c.valid_policy("p1.test", s(505)).is_some());
        assert_eq!(c.evicted_policies(), 1);
        assert_eq!(c.len(), 4);
        assert_eq!(c.policy_state("p1.test").unwrap().hits, 2);
    }

    const DAY: u32 = 86_400;

    /// The domains of `c` in the table's iteration order (the order the eviction used to sample
    /// from: its first 64).
    fn in_iteration_order(c: &Cache) -> Vec<String> {
        c.views().into_iter().map(|(d, _)| d).collect()
    }

    #[test]
    fn full_cache_evicts_expired_from_anywhere_then_negatives_before_any_valid_policy() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let s = |n: u64| t0 + Duration::from_secs(n);
        let c = Cache::new(NonZeroUsize::new(1024).unwrap());
        for i in 0..1024 {
            c.insert_policy(&format!("d{i}.test"), entry("a", 100, t0), t0, t0);
        }
        // Replaced in place (a domain keeps its bucket): the first 128 in iteration order, the
        // whole window the old eviction looked at, become valid for a day and least recently
        // used; the next 384 negatives, used last of all; the last 512 stay and expire at s(100).
        let order = in_iteration_order(&c);
        let (valid, rest) = order.split_at(128);
        let (negatives, expired) = rest.split_at(384);
        for d in valid {
            c.insert_policy(d, entry("b", DAY, s(50)), s(50), s(50));
        }
        for d in negatives {
            assert!(c.insert_negative(d, "none", false, s(200), s(200 + 3600)));
        }
        for d in negatives {
            assert!(matches!(c.get(d, s(300)), Hit::Negative { .. }));
        }
        assert_eq!(in_iteration_order(&c), order);
        // 64 inserts into the full cache: each takes an expired entry's place.
        for i in 0..64 {
            c.insert_policy(
                &format!("new{i}.test"),
                entry("c", DAY, s(400)),
                s(400),
                s(400),
            );
        }
        assert_eq!(c.len(), 1024);
        assert_eq!(c.evicted_policies(), 0);
        assert!(valid.iter().all(|d| c.valid_policy(d, s(400)).is_some()));
        assert!(negatives.iter().all(|d| c.view(d).is_some()));
        let left = expired.iter().filter(|d| c.view(d).is_some()).count();
        assert_eq!(left, 512 - 64);
        // With the expired ones swept, a full cache gives up negatives before any policy,
        // although the valid policies were used longest ago.
        let swept = c.sweep(0, usize::MAX, s(400), Duration::ZERO);
        assert_eq!((swept.removed, c.len()), (448, 576));
        for i in 0..448 {
            c.insert_policy(
                &format!("more{i}.test"),
                entry("c", DAY, s(500)),
                s(500),
                s(500),
            );
        }
        for i in 0..64 {
            c.insert_policy(
                &format!("last{i}.test"),
                entry("c", DAY, s(600)),
                s(600),
                s(600),
            );
        }
        assert_eq!(c.len(), 1024);
        assert_eq!(c.evicted_policies(), 0);
        assert!(valid.iter().all(|d| c.valid_policy(d, s(600)).is_some()));
        let negatives_left = negatives.iter().filter(|d| c.view(d).is_some()).count();
        assert_eq!(negatives_left, 384 - 64);
    }

    #[test]
    fn full_cache_evicts_mostly_the_least_recently_used_policies() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let s = |n: u64| t0 + Duration::from_secs(n);
        let c = Cache::new(NonZeroUsize::new(1000).unwrap());
        // d{i} last used at s(i): the lower i, the colder. Every tenth is hot (used at s(2000)).
        for i in 0..1000u64 {
            c.insert_policy(&format!("d{i}.test"), entry("a", DAY, t0), t0, s(i));
        }
        for i in (0..1000).step_by(10) {
            assert!(matches!(
                c.get(&format!("d{i}.test"), s(2000)),
                Hit::Policy(_)
            ));
        }
        for j in 0..300 {
            c.insert_policy(
                &format!("new{j}.test"),
                entry("a", DAY, t0),
                t0,
                s(3000 + j),
            );
        }
        assert_eq!(c.evicted_policies(), 300);
        let gone: Vec<u64> = (0..1000)
            .filter(|i| c.view(&format!("d{i}.test")).is_none())
            .collect();
        assert_eq!(gone.len(), 300);
        assert!(gone.iter().all(|i| i % 10 != 0), "a hot policy was evicted");
        assert!((0..300).all(|j| c.view(&format!("new{j}.test")).is_some()));
        // The 300 coldest are d0..d332 less the hot ones; sampling takes nearly only those.
        let old = gone.iter().filter(|&&i| i < 450).count();
        assert!(
            old >= 285,
            "{old} of 300 evicted among the coldest: {gone:?}"
        );
    }

    #[test]
    fn sweep_removes_expired_entries_in_bounded_steps_and_never_a_valid_one() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let s = |n: u64| t0 + Duration::from_secs(n);
        let c = Cache::new(NonZeroUsize::new(10_000).unwrap());
        for i in 0..1000 {
            let max_age = if i % 2 == 0 { 100 } else { DAY };
            c.insert_policy(&format!("p{i}.test"), entry("a", max_age, t0), t0, t0);
            c.insert_negative(
                &format!("n{i}.test"),
                "none",
                false,
                t0,
                s(50 + i % 2 * DAY as u64),
            );
        }
        let grace = Duration::from_secs(600);
        // At s(300) the short policies have expired, but not for the grace yet: negatives only.
        let all = c.sweep(0, usize::MAX, s(300), grace);
        assert_eq!((all.removed, all.next, c.len()), (500, 0, 1500));
        // Past the grace, 64 buckets at a time, resuming where the last step stopped.
        let buckets = c.read().buckets();
        let (mut from, mut steps, mut removed) = (0, 0, 0);
        loop {
            let step = c.sweep(from, 64, s(700), grace);
            assert!(step.examined <= 64);
            removed += step.removed;
            steps += 1;
            from = step.next;
            if from == 0 {
                break;
            }
        }
        assert_eq!(steps, buckets.div_ceil(64));
        assert_eq!((removed, c.len()), (500, 1000));
        for i in (1..1000).step_by(2) {
            assert!(c.valid_policy(&format!("p{i}.test"), s(700)).is_some());
            assert!(matches!(
                c.get(&format!("n{i}.test"), s(700)),
                Hit::Negative { .. }
            ));
        }
        assert_eq!(c.sweep(0, usize::MAX, s(700), grace).removed, 0);
    }

    #[test]
    fn record_check_counts_failures_in_a_row() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let c = cache();
        c.insert_policy("d.test", entry("a", 100, t0), t0, t0);
        assert_eq!(c.record_check("d.test", t0, t0, Some("x")), 1);
        assert_eq!(c.record_check("d.test", t0, t0, Some("y")), 2);
        assert_eq!(
            c.policy_state("d.test")
                .unwrap()
                .last_error
                .unwrap()
                .1
                .as_ref(),
            "y"
        );
        assert_eq!(
            c.record_check("d.test", t0 + Duration::from_secs(5), t0, None),
            0
        );
        assert_eq!(
            c.policy_state("d.test").unwrap().next_check,
            t0 + Duration::from_secs(5)
        );
    }

    #[test]
    fn a_bucket_of_the_map_stays_within_72_bytes() {
        // Every bucket of the table is paid for, occupied or not (up to 2.3 per entry), and the
        // hit path reads one: a field added to `Slot` must not grow it unnoticed.
        assert!(std::mem::size_of::<(Name, Slot)>() <= 72);
    }

    #[test]
    fn rfc8461_3_2_an_expiry_past_the_end_of_time_reads_as_expired() {
        // The latest fetch time SystemTime can hold, found by halving: any max_age overflows it.
        let mut far = SystemTime::UNIX_EPOCH;
        let mut step = Duration::from_secs(u64::MAX / 2);
        while step >= Duration::from_secs(1) {
            if let Some(t) = far.checked_add(step) {
                far = t;
            } else {
                step /= 2;
            }
        }
        let e = entry("a", 86_400, far);
        assert!(e.fetched.checked_add(Duration::from_secs(86_400)).is_none());
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert!(e.expires() <= now);
        assert!(!e.is_valid(now));
    }
}
