//! When each cached domain is looked at next: the refresh timing rules (interval with jitter,
//! the re-fetch lead before expiry, back-off after failures) as pure functions, and the
//! earliest-first schedule the refresh task pops from.
//!
//! RFC 8461 §3.3 (wait at least five minutes after a failed fetch) and §10.2 (fetch again
//! before the cached policy expires) are enforced here. No I/O; the only lock is the schedule's
//! own, never held across `.await`.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinSet;

use super::memory::PolicyEntry;
use super::{Name, Stamp};

/// RFC 8461 §3.3: after a failed HTTPS GET, wait five minutes or longer before trying again.
pub const FETCH_BACKOFF: Duration = Duration::from_secs(300);
/// How long a failed TXT lookup is remembered unless configured (`[cache] dns_failure_ttl`).
pub const DNS_FAILURE_TTL: Duration = Duration::from_secs(60);
/// Longest back-off between refresh attempts of a failing domain: a policy host that is down
/// for a day is still retried every hour.
pub const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// Never schedule a check sooner than this after the last one, so that a policy with a tiny
/// `max_age` cannot make the refresh task spin.
pub const MIN_CHECK_GAP: Duration = Duration::from_secs(60);

/// The timing rules, from the config, plus this process's jitter seed.
#[derive(Debug, Clone)]
pub struct Timing {
    /// How often a cached domain's TXT record is checked (`[refresh] interval`).
    pub refresh_interval: Duration,
    /// How long "no policy" is remembered (`[cache] negative_ttl`).
    pub negative_ttl: Duration,
    /// How long a failed TXT lookup is remembered when nothing valid is cached
    /// (`[cache] dns_failure_ttl`; zero: not remembered).
    pub dns_failure_ttl: Duration,
    /// Differs per process, so that a fleet started together does not refresh in step.
    jitter: RandomState,
}

impl Timing {
    pub fn new(refresh_interval: Duration, negative_ttl: Duration) -> Timing {
        Timing {
            refresh_interval,
            negative_ttl,
            dns_failure_ttl: DNS_FAILURE_TTL.min(negative_ttl),
            jitter: RandomState::new(),
        }
    }

    /// The same rules, remembering a failed TXT lookup for `ttl`.
    pub fn with_dns_failure_ttl(mut self, ttl: Duration) -> Timing {
        self.dns_failure_ttl = ttl;
        self
    }

    /// The same rules with other durations and the same jitter seed (a reload must not move
    /// every domain's spread).
    pub fn with(&self, refresh_interval: Duration, negative_ttl: Duration) -> Timing {
        Timing {
            refresh_interval,
            negative_ttl,
            dns_failure_ttl: self.dns_failure_ttl,
            jitter: self.jitter.clone(),
        }
    }

    /// A uniformly spread duration in [0, d) that differs per key and per process.
    pub fn spread(&self, key: &str, d: Duration) -> Duration {
        let mut h = self.jitter.build_hasher();
        h.write(key.as_bytes());
        let frac = (h.finish() >> 11) as f64 / (1u64 << 53) as f64;
        d.mul_f64(frac)
    }

    /// When to look at a fresh policy next: about one refresh interval later (±10%), but early
    /// enough before expiry that it is fetched again while still valid (RFC 8461 §10.2).
    pub fn next_check(&self, entry: &PolicyEntry, now: SystemTime) -> SystemTime {
        let interval = self.refresh_interval;
        let jittered = interval.mul_f64(0.9) + self.spread(&entry.id, interval / 5);
        let before_expiry = entry.expires().checked_sub(self.lead(entry)).unwrap_or(now);
        (now + jittered).min(before_expiry).max(now + MIN_CHECK_GAP)
    }

    /// The first check of a policy loaded at start: spread over one refresh interval, so that a
    /// large cache loaded at once causes no thundering herd.
    pub fn first_check(&self, domain: &str, entry: &PolicyEntry, now: SystemTime) -> SystemTime {
        let spread = self.spread(domain, self.refresh_interval);
        self.next_check(entry, now).min(now + spread).max(now)
    }

    /// How long before expiry the refresh fetches again whatever the TXT id says.
    pub fn lead(&self, entry: &PolicyEntry) -> Duration {
        self.refresh_interval
            .min(Duration::from_secs(u64::from(entry.policy.max_age)) / 2)
    }

    /// Whether a valid policy is so close to expiry that it must be fetched again whatever the
    /// TXT record says (RFC 8461 §10.2).
    pub fn must_refetch(&self, entry: &PolicyEntry, now: SystemTime) -> bool {
        let left = entry.expires().duration_since(now).unwrap_or_default();
        left <= self.lead(entry) + MIN_CHECK_GAP
    }

    /// The next attempt after `failures` failed refreshes in a row (1 = the first failure):
    /// five minutes, doubling, at most an hour, and never after the policy expires.
    pub fn retry_at(&self, entry: &PolicyEntry, failures: u32, now: SystemTime) -> SystemTime {
        (now + backoff(failures)).min(entry.expires().max(now + MIN_CHECK_GAP))
    }
}

/// Back-off after `failures` failures in a row: RFC 8461 §3.3's five minutes, doubling.
pub fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(8);
    (FETCH_BACKOFF * 2u32.pow(exp)).min(MAX_BACKOFF)
}

/// Checks by time, earliest on top; the domain is the cache's own copy of the name.
type Heap = BinaryHeap<Reverse<(Stamp, Name)>>;

/// Next check times, earliest first. Entries go stale when a domain is rescheduled or removed;
/// the caller skips those when popping (see [`Schedule::pop_due`]). Kept apart from the cache's
/// lock so that the refresh task never scans the cache.
#[derive(Default)]
pub struct Schedule {
    heap: Mutex<Heap>,
    wake: Notify,
}

/// What the refresh task should do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Due {
    /// This domain is due now.
    Domain(String),
    /// Nothing is due before this time.
    At(SystemTime),
    /// Nothing is scheduled.
    Idle,
}

impl Schedule {
    fn heap(&self) -> std::sync::MutexGuard<'_, Heap> {
        // Every mutation is a single push or pop: a poisoned lock is still consistent.
        self.heap.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a check; wakes the refresh task so it can re-evaluate its sleep.
    pub fn push(&self, domain: Name, at: SystemTime) {
        self.heap().push(Reverse((at.into(), domain)));
        self.wake.notify_one();
    }

    /// The earliest check, popped if it is due at `now` and `current(domain)` confirms it is
    /// the domain's current schedule (`Some(next_check)` equal to the popped time).
    pub fn pop_due(&self, now: SystemTime, current: impl Fn(&str) -> Option<SystemTime>) -> Due {
        let mut heap = self.heap();
        while let Some(Reverse((at, _))) = heap.peek() {
            if at.time() > now {
                return Due::At(at.time());
            }
            let Some(Reverse((at, domain))) = heap.pop() else {
                break;
            };
            let at = at.time();
            if current(&domain).is_some_and(|next| next <= now && next == at) {
                return Due::Domain(domain.to_string());
            }
        }
        Due::Idle
    }

    pub fn reserve(&self, n: usize) {
        self.heap().reserve(n);
    }

    /// Scheduled checks, stale ones included.
    pub fn len(&self) -> usize {
        self.heap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Resolves when a check was added.
    pub async fn changed(&self) {
        self.wake.notified().await;
    }
}

/// Re-read the schedule at least this often, so a wall-clock jump is noticed.
const MAX_SLEEP: Duration = Duration::from_secs(60);

/// Something with a schedule of due checks that [`drive`] works through: the policies
/// (`resolve::Resolver`) and the DANE states (`resolve::dane`).
pub trait Scheduled: Send + Sync + 'static {
    /// The earliest scheduled check, popped if it is due now.
    fn pop_due(&self) -> Due;
    fn now(&self) -> SystemTime;
    /// Resolves when the schedule gained an entry.
    fn changed(&self) -> impl std::future::Future<Output = ()> + Send;
    /// The check of one due key.
    fn check(
        self: Arc<Self>,
        key: String,
    ) -> impl std::future::Future<Output = ()> + Send + 'static;
    /// After every wait (a timer or a schedule change): housekeeping.
    fn after_wait(&self) {}
}

/// Works through `s`'s schedule until `shutdown` turns true, at most `concurrency` checks at
/// once; checks still running then are abandoned (their results would only be re-fetched after
/// a restart).
pub async fn drive<S: Scheduled>(
    s: Arc<S>,
    concurrency: usize,
    mut shutdown: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = JoinSet::new();
    loop {
        while tasks.try_join_next().is_some() {}
        let wait = match s.pop_due() {
            Due::Domain(key) => {
                let permit = tokio::select! {
                    p = permits.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                    _ = shutdown.wait_for(|s| *s) => break,
                };
                let check = s.clone().check(key);
                tasks.spawn(async move {
                    let _permit = permit;
                    check.await;
                });
                continue;
            }
            Due::At(t) => t.duration_since(s.now()).unwrap_or_default().min(MAX_SLEEP),
            Due::Idle => MAX_SLEEP,
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = s.changed() => {}
            _ = shutdown.wait_for(|s| *s) => break,
        }
        s.after_wait();
    }
    tasks.abort_all();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::parse_policy;

    const DAY: Duration = Duration::from_secs(86_400);

    fn entry(max_age: u32, fetched: SystemTime) -> PolicyEntry {
        let body =
            format!("version: STSv1\nmode: enforce\nmx: mx.example.test\nmax_age: {max_age}\n");
        PolicyEntry::new("id".into(), parse_policy(body.as_bytes()).unwrap(), fetched)
    }

    #[test]
    fn rfc8461_3_3_backoff_starts_at_five_minutes_doubles_and_caps_at_an_hour() {
        assert_eq!(backoff(1), FETCH_BACKOFF);
        assert_eq!(backoff(2), FETCH_BACKOFF * 2);
        assert_eq!(backoff(3), FETCH_BACKOFF * 4);
        assert_eq!(backoff(5), MAX_BACKOFF);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }

    #[test]
    fn rfc8461_10_2_next_check_is_before_expiry_and_never_sooner_than_the_gap() {
        let now = SystemTime::UNIX_EPOCH + DAY * 1000;
        let t = Timing::new(DAY, Duration::from_secs(3600));
        // A week-long policy: checked about a day later (±10%).
        let long = entry(7 * 86_400, now);
        let next = t.next_check(&long, now).duration_since(now).unwrap();
        assert!(
            next >= DAY.mul_f64(0.9) && next < DAY.mul_f64(1.1),
            "{next:?}"
        );
        // A two-hour policy: checked an hour before it expires.
        let short = entry(7200, now);
        assert_eq!(t.next_check(&short, now), now + Duration::from_secs(3600));
        assert!(!t.must_refetch(&short, now));
        assert!(t.must_refetch(&short, now + Duration::from_secs(3600)));
        // A one-minute policy: never sooner than the minimum gap.
        let tiny = entry(60, now);
        assert_eq!(t.next_check(&tiny, now), now + MIN_CHECK_GAP);
    }

    #[test]
    fn retries_never_go_past_expiry() {
        let now = SystemTime::UNIX_EPOCH + DAY * 1000;
        let t = Timing::new(DAY, Duration::from_secs(3600));
        let e = entry(600, now);
        assert_eq!(t.retry_at(&e, 1, now), now + FETCH_BACKOFF);
        assert_eq!(t.retry_at(&e, 3, now), e.expires());
    }

    #[test]
    fn first_checks_of_a_loaded_cache_are_spread_over_the_interval() {
        let now = SystemTime::UNIX_EPOCH + DAY * 1000;
        let t = Timing::new(DAY, Duration::from_secs(3600));
        let e = entry(30 * 86_400, now);
        let firsts: Vec<_> = (0..1000)
            .map(|i| t.first_check(&format!("d{i}.test"), &e, now))
            .collect();
        let early = firsts.iter().filter(|&&f| f < now + DAY / 2).count();
        assert!(
            (350..650).contains(&early),
            "{early} of 1000 in the first half"
        );
        assert!(firsts.iter().all(|&f| f >= now && f <= now + DAY));
    }

    #[test]
    fn stale_schedule_entries_are_skipped() {
        let now = SystemTime::UNIX_EPOCH + DAY;
        let s = Schedule::default();
        s.push("a.test".into(), now - Duration::from_secs(10));
        s.push("b.test".into(), now - Duration::from_secs(5));
        s.push("c.test".into(), now + Duration::from_secs(5));
        // a.test was rescheduled since; b.test is current.
        let current = |d: &str| match d {
            "a.test" => Some(now + DAY),
            "b.test" => Some(now - Duration::from_secs(5)),
            _ => None,
        };
        assert_eq!(s.pop_due(now, current), Due::Domain("b.test".into()));
        assert_eq!(
            s.pop_due(now, current),
            Due::At(now + Duration::from_secs(5))
        );
        assert_eq!(s.len(), 1);
    }
}
