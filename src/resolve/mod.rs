//! The request path and the rules for what the cache holds after a discovery: Postfix key →
//! policy domain → cached policy, or one shared discovery under a deadline → [`Resolution`].
//!
//! Owns RFC 8461 §3.1, §3.3, §5.1 and §10.2 as they apply to the cache: a valid cached policy
//! survives DNS and HTTPS failures and a vanished TXT record; "no policy" and fetch failures are
//! remembered for a bounded time; concurrent lookups of one domain share one discovery; every
//! cached domain has a next check time, which the refresh task (`refresh.rs`) acts on. Lookups
//! never wait on the network for a cached domain. Never answers Postfix and never touches sockets.

pub mod refresh;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use tokio::sync::{Notify, watch};
use tracing::{debug, error, info, warn};

use crate::cache::journal::{Record, Store};
use crate::cache::{Cache, Hit, PolicyEntry};
use crate::clock::Clock;
use crate::discovery::PolicySource;
use crate::discovery::{self, Known, Outcome};
use crate::key::{self, Skip};
use crate::metrics::{self, Metrics};
use crate::policy::Policy;

/// RFC 8461 §3.3: after a failed HTTPS GET, wait five minutes or longer before trying again.
pub const FETCH_BACKOFF: Duration = Duration::from_secs(300);
/// Longest back-off between refresh attempts of a failing domain.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// Never schedule a check sooner than this after the last one.
const MIN_CHECK_GAP: Duration = Duration::from_secs(60);

/// What a lookup concluded.
#[derive(Debug, Clone)]
pub enum Resolution {
    /// A policy to apply (any mode: the answer layer decides what testing/none mean).
    Policy(Arc<PolicyEntry>),
    /// The domain publishes no usable policy.
    NoPolicy,
    /// Nothing could be learnt (DNS or HTTPS failure, deadline) and nothing valid is cached.
    Failed(Arc<str>),
}

/// The result of one lookup, for the protocol layer.
#[derive(Debug, Clone)]
pub enum Lookup {
    /// The key is not something MTA-STS applies to (parent probe, IP literal, not a hostname).
    Skipped(Skip),
    Resolved {
        domain: String,
        resolution: Resolution,
    },
}

/// Timing rules of the resolver, from the config.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Longest wait of a cold lookup.
    pub deadline: Duration,
    pub negative_ttl: Duration,
    /// How often a cached domain's TXT record is checked.
    pub refresh_interval: Duration,
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

/// Next check time per domain, earliest first; the domain is the cache's own `Arc`.
type Schedule = BinaryHeap<Reverse<(SystemTime, Arc<str>)>>;

pub struct Resolver {
    cache: Cache,
    source: RwLock<Arc<dyn PolicySource>>,
    clock: Arc<dyn Clock>,
    settings: RwLock<Settings>,
    inflight: Mutex<HashMap<String, watch::Receiver<Option<Resolution>>>>,
    /// Next check times; stale entries (the domain was rescheduled or removed) are skipped when
    /// popped. Kept apart from the cache lock so the refresh task never scans the cache.
    schedule: Mutex<Schedule>,
    wake: Notify,
    jitter_seed: std::collections::hash_map::RandomState,
    /// Where new policies and negatives are made durable before they are first answered.
    store: Option<Store>,
    metrics: Arc<Metrics>,
}

impl Resolver {
    pub fn new(
        cache: Cache,
        source: Arc<dyn PolicySource>,
        clock: Arc<dyn Clock>,
        settings: Settings,
    ) -> Resolver {
        Resolver {
            cache,
            source: RwLock::new(source),
            clock,
            settings: RwLock::new(settings),
            inflight: Mutex::new(HashMap::new()),
            schedule: Mutex::new(BinaryHeap::new()),
            wake: Notify::new(),
            jitter_seed: std::collections::hash_map::RandomState::new(),
            store: None,
            metrics: Arc::new(Metrics::new()),
        }
    }

    /// Counts discoveries, cache hits, refreshes, downgrades and store errors in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Resolver {
        self.metrics = metrics;
        self
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Persists every new or changed policy and every "no policy" entry to `store`.
    pub fn with_store(mut self, store: Store) -> Resolver {
        self.store = Some(store);
        self
    }

    /// Writes a record and waits until it is on disk. A failing disk is logged and the answer is
    /// still given from memory: refusing to answer would defer all mail.
    async fn persist(&self, record: Record) {
        if let Some(store) = &self.store
            && let Err(e) = store.write(record).await
        {
            self.metrics.store_write_error();
            error!(error = %e, "cannot persist the policy cache; serving from memory");
        }
    }

    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// The timing rules in force.
    pub fn settings(&self) -> Settings {
        self.settings
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Applies a reloaded configuration: new DNS/HTTPS settings and timing rules. Discoveries
    /// already running finish with the old source; the cache and schedule are untouched.
    pub fn reconfigure(&self, source: Arc<dyn PolicySource>, settings: Settings) {
        *self.source.write().unwrap_or_else(|p| p.into_inner()) = source;
        *self.settings.write().unwrap_or_else(|p| p.into_inner()) = settings;
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Answers one Postfix key. Cached answers involve no network work and no waiting; a cold
    /// lookup waits at most the deadline, and the discovery it started goes on to fill the cache.
    pub async fn lookup(self: &Arc<Self>, key: &[u8]) -> Lookup {
        let domain = match key::policy_domain(key) {
            Ok(d) => d,
            Err(skip) => {
                debug!(key = %String::from_utf8_lossy(key), reason = %skip, "key skipped");
                return Lookup::Skipped(skip);
            }
        };
        let hit = self.cache.get(&domain, self.clock.now());
        self.metrics.cache(!matches!(hit, Hit::Miss));
        let resolution = match hit {
            Hit::Policy(entry) => Resolution::Policy(entry),
            Hit::Negative { failure: false, .. } => Resolution::NoPolicy,
            Hit::Negative {
                reason,
                failure: true,
            } => Resolution::Failed(reason),
            Hit::Miss => self.cold(&domain).await,
        };
        Lookup::Resolved { domain, resolution }
    }

    /// Joins the running discovery for `domain` or starts one, and waits for it up to the deadline.
    async fn cold(self: &Arc<Self>, domain: &str) -> Resolution {
        let mut rx = self.join_or_start(domain);
        let deadline = self.settings().deadline;
        match tokio::time::timeout(deadline, rx.wait_for(Option::is_some)).await {
            Ok(Ok(r)) => r.clone().unwrap_or(Resolution::NoPolicy),
            Ok(Err(_)) => Resolution::Failed("discovery task ended without a result".into()),
            Err(_) => {
                info!(
                    domain,
                    deadline_ms = deadline.as_millis() as u64,
                    "lookup deadline passed; answering without a policy, discovery continues"
                );
                Resolution::Failed("lookup deadline exceeded".into())
            }
        }
    }

    /// One discovery for `domain` now (or joins the running one) and waits for its result; used by
    /// the refresh task. Each step is bounded by the source's own timeouts.
    pub async fn refresh(self: &Arc<Self>, domain: &str) -> Resolution {
        let mut rx = self.join_or_start(domain);
        let r = match rx.wait_for(Option::is_some).await {
            Ok(r) => r.clone().unwrap_or(Resolution::NoPolicy),
            Err(_) => Resolution::Failed("discovery task ended without a result".into()),
        };
        let failed = self
            .cache
            .policy_state(domain)
            .is_some_and(|s| s.failures > 0);
        self.metrics
            .refresh(!failed && !matches!(r, Resolution::Failed(_)));
        r
    }

    fn join_or_start(self: &Arc<Self>, domain: &str) -> watch::Receiver<Option<Resolution>> {
        let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rx) = inflight.get(domain) {
            return rx.clone();
        }
        let (tx, rx) = watch::channel(None);
        inflight.insert(domain.to_string(), rx.clone());
        drop(inflight);
        let this = self.clone();
        let domain = domain.to_string();
        tokio::spawn(async move {
            // Removes the in-flight mark even if the discovery panics, so the domain is not
            // stuck behind a dead task.
            let _guard = InflightGuard {
                resolver: &this,
                domain: &domain,
            };
            let resolution = this.discover_and_apply(&domain).await;
            let _ = tx.send(Some(resolution));
        });
        rx
    }

    /// Removes a domain from the cache and the journal (operator's `evict`).
    pub fn evict(&self, domain: &str) -> bool {
        let removed = self.cache.remove(domain);
        if removed && let Some(store) = &self.store {
            store.write_nowait(Record::Remove {
                domain: domain.into(),
            });
        }
        removed
    }

    /// Empties the cache and the journal (operator's `purge`); returns the entries removed.
    pub async fn purge(&self) -> usize {
        let views = self.cache.views();
        let mut n = 0;
        for (domain, _) in &views {
            if self.evict(domain) {
                n += 1;
            }
        }
        if let Some(store) = &self.store
            && let Err(e) = store.flush().await
        {
            self.metrics.store_write_error();
            error!(error = %e, "purge: cannot flush the journal");
        }
        warn!(entries = n, "cache purged by the operator");
        n
    }

    /// Merges a policy from another host or an export (operator's `import`): taken when it is
    /// unexpired and fetched later than what the cache holds. Persisted like a fetched policy.
    pub async fn import(&self, domain: &str, entry: Arc<PolicyEntry>) -> bool {
        let now = self.clock.now();
        if !entry.is_valid(now) {
            return false;
        }
        if let Some(cur) = self.cache.valid_policy(domain, now)
            && cur.fetched >= entry.fetched
        {
            return false;
        }
        self.persist(Record::Policy {
            domain: domain.into(),
            entry: entry.clone(),
        })
        .await;
        let next = self.next_check(&entry, now);
        self.cache.insert_policy(domain, entry, next, now);
        self.schedule_at(domain, next);
        true
    }

    /// Makes room for `n` preloaded policies in the cache and the schedule at once.
    pub fn reserve(&self, n: usize) {
        self.cache.reserve(n);
        self.schedule
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .reserve(n);
    }

    /// Puts a policy loaded from disk into the cache (warm restart) and spreads its first check
    /// over the refresh interval, so that a large cache loaded at once causes no thundering herd.
    /// Takes the domain as an `Arc` so the cache and the schedule keep the caller's copy (the
    /// store's) instead of two more.
    pub fn preload(&self, domain: Arc<str>, entry: Arc<PolicyEntry>) {
        let now = self.clock.now();
        let spread = self.spread(&domain, self.settings().refresh_interval);
        let next = self.next_check(&entry, now).min(now + spread).max(now);
        self.cache
            .insert_policy_shared(domain.clone(), entry, next, now);
        self.push_schedule(domain, next);
    }

    /// Puts a remembered negative loaded from disk back into the cache.
    pub fn preload_negative(&self, domain: &str, reason: &str, until: SystemTime) {
        let now = self.clock.now();
        self.cache
            .insert_negative(domain, reason, false, now, until);
    }

    /// The earliest scheduled check, popped if it is due at `now`.
    pub fn pop_due(&self) -> Due {
        let now = self.clock.now();
        let mut heap = self.schedule.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(Reverse((at, _))) = heap.peek() {
            if *at > now {
                return Due::At(*at);
            }
            let Some(Reverse((at, domain))) = heap.pop() else {
                break;
            };
            // Only act on the entry that matches the cache's current schedule.
            if self
                .cache
                .policy_state(&domain)
                .is_some_and(|s| s.next_check <= now && s.next_check == at)
            {
                return Due::Domain(domain.to_string());
            }
        }
        Due::Idle
    }

    /// Resolves when the schedule gained an entry (so the refresh task can re-evaluate).
    pub async fn schedule_changed(&self) {
        self.wake.notified().await;
    }

    /// Scheduled checks, stale ones included (for tests and status).
    pub fn scheduled(&self) -> usize {
        self.schedule
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    fn schedule_at(&self, domain: &str, at: SystemTime) {
        let key = self.cache.key(domain).unwrap_or_else(|| domain.into());
        self.push_schedule(key, at);
    }

    fn push_schedule(&self, domain: Arc<str>, at: SystemTime) {
        self.schedule
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Reverse((at, domain)));
        self.wake.notify_one();
    }

    /// A uniformly spread duration in [0, d) that differs per domain and per process.
    fn spread(&self, domain: &str, d: Duration) -> Duration {
        let mut h = self.jitter_seed.build_hasher();
        h.write(domain.as_bytes());
        let frac = (h.finish() >> 11) as f64 / (1u64 << 53) as f64;
        d.mul_f64(frac)
    }

    /// When to look at a fresh policy next: about one refresh interval later (±10%), but early
    /// enough before expiry that the policy is fetched again while it is still valid (§10.2).
    fn next_check(&self, entry: &PolicyEntry, now: SystemTime) -> SystemTime {
        let interval = self.settings().refresh_interval;
        let jittered = interval.mul_f64(0.9) + self.spread(&entry.id, interval / 5);
        let before_expiry = entry
            .expires()
            .checked_sub(Self::lead(entry, interval))
            .unwrap_or(now);
        (now + jittered).min(before_expiry).max(now + MIN_CHECK_GAP)
    }

    /// How long before expiry the refresh fetches again whatever the TXT id says.
    fn lead(entry: &PolicyEntry, interval: Duration) -> Duration {
        interval.min(Duration::from_secs(u64::from(entry.policy.max_age)) / 2)
    }

    fn backoff(failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(8);
        (FETCH_BACKOFF * 2u32.pow(exp)).min(MAX_BACKOFF)
    }

    async fn discover_and_apply(&self, domain: &str) -> Resolution {
        let now = self.clock.now();
        let state = self.cache.policy_state(domain);
        let cached = state
            .as_ref()
            .filter(|s| s.entry.is_valid(now))
            .map(|s| s.entry.clone());
        // RFC 8461 §10.2: within the lead time before expiry, fetch whatever the TXT id says, so
        // a policy still published never drops out of the cache.
        let refetch = cached.as_ref().is_some_and(|e| {
            let left = e.expires().duration_since(now).unwrap_or_default();
            left <= Self::lead(e, self.settings().refresh_interval) + MIN_CHECK_GAP
        });
        let known = match &cached {
            None => Known::Nothing,
            Some(e) if refetch => Known::Refetch(&e.id),
            Some(e) => Known::Valid(&e.id),
        };
        let source = self
            .source
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let d = discovery::discover(&*source, domain, known).await;
        self.metrics.discovery(metrics::Outcome::from(&d.outcome));
        let now = self.clock.now();
        let elapsed_ms = d.elapsed.as_millis() as u64;
        let failure = match d.outcome {
            Outcome::Fetched { id, policy } => {
                if policy.max_age_clamped {
                    warn!(
                        domain,
                        id, "max_age above 31557600 clamped to one year (RFC 8461 §3.2)"
                    );
                }
                let entry = Arc::new(PolicyEntry::new(id, policy, now));
                if entry.policy.max_age == 0 {
                    // Spec A4.5: applies to this lookup, is not cached.
                    self.cache.remove(domain);
                    info!(domain, id = entry.id, mode = %entry.policy.mode, elapsed_ms,
                          "policy fetched with max_age 0: applied once, not cached");
                    return Resolution::Policy(entry);
                }
                // Durable before it is first answered: the waiting lookups get it only after this
                // (trust on first use must survive a crash, RFC 8461 §10.2).
                self.persist(Record::Policy {
                    domain: domain.into(),
                    entry: entry.clone(),
                })
                .await;
                let next = self.next_check(&entry, now);
                let old = self.cache.insert_policy(domain, entry.clone(), next, now);
                self.schedule_at(domain, next);
                if old
                    .as_deref()
                    .is_some_and(|o| is_weaker(&o.policy, &entry.policy))
                {
                    self.metrics.downgrade();
                }
                log_change(domain, old.as_deref(), &entry, elapsed_ms);
                return Resolution::Policy(entry);
            }
            Outcome::Unchanged { id } => match cached {
                Some(e) => {
                    debug!(domain, id, elapsed_ms, "TXT id unchanged");
                    let next = self.next_check(&e, now);
                    self.cache.record_check(domain, next, now, None);
                    self.schedule_at(domain, next);
                    return Resolution::Policy(e);
                }
                // Expired between the peek and now: nothing valid to return.
                None => return Resolution::NoPolicy,
            },
            Outcome::NoPolicy(reason) => {
                if cached.is_none() {
                    debug!(domain, reason = %reason, elapsed_ms, "no MTA-STS policy");
                    if state.is_some() {
                        info!(domain, reason = %reason, "cached policy expired and no policy is published now; dropped");
                    }
                    let reason = reason.to_string();
                    let until = now + self.settings().negative_ttl;
                    if self
                        .cache
                        .insert_negative(domain, &reason, false, now, until)
                    {
                        self.persist(Record::Negative {
                            domain: domain.into(),
                            reason,
                            until,
                        })
                        .await;
                    }
                    return Resolution::NoPolicy;
                }
                // RFC 8461 §3.1, §5.1: a vanished TXT record does not cancel a cached policy.
                format!("no usable TXT record now ({reason})")
            }
            Outcome::DnsTemp(reason) => {
                if cached.is_none() {
                    // Not remembered: a DNS hiccup must not hide a policy for an hour.
                    info!(
                        domain,
                        reason = %reason,
                        class = reason.label(),
                        elapsed_ms,
                        "TXT lookup failed; no policy cached"
                    );
                    if state.is_some() {
                        // The cached policy has expired: drop it, on disk too.
                        self.cache.remove(domain);
                        if let Some(store) = &self.store {
                            store.write_nowait(Record::Remove {
                                domain: domain.into(),
                            });
                        }
                    }
                    return Resolution::Failed(reason.to_string().into());
                }
                format!("TXT lookup failed: {reason}")
            }
            Outcome::FetchFailed { id, failure } => {
                let reason = failure.to_string();
                if cached.is_none() {
                    info!(
                        domain,
                        id,
                        class = failure.label(),
                        report = failure.report_class(),
                        reason,
                        elapsed_ms,
                        "policy fetch failed; no policy cached, retry in 5 minutes"
                    );
                    // RFC 8461 §3.3: back off at least five minutes before fetching again.
                    self.cache
                        .insert_negative(domain, &reason, true, now, now + FETCH_BACKOFF);
                    return Resolution::Failed(reason.into());
                }
                format!(
                    "policy fetch for id {id} failed [{}]: {reason}",
                    failure.report_class()
                )
            }
        };
        // A failure with a valid cached policy: keep serving it (RFC 8461 §3.3 / A3.9), back off,
        // and warn on the first failure and then only now and then (A5.7).
        let Some(e) = cached else {
            return Resolution::NoPolicy;
        };
        let failures = state.map(|s| s.failures + 1).unwrap_or(1);
        let next = (now + Self::backoff(failures)).min(e.expires().max(now + MIN_CHECK_GAP));
        let failures = self.cache.record_check(domain, next, now, Some(&failure));
        self.schedule_at(domain, next);
        if failures == 1 || failures.is_multiple_of(16) {
            warn!(domain, id = e.id, failures, reason = failure,
                  expires = %rfc3339(e.expires()),
                  "refresh failed; keeping the cached policy until it expires");
        } else {
            debug!(domain, failures, reason = failure, "refresh failed again");
        }
        Resolution::Policy(e)
    }
}

struct InflightGuard<'a> {
    resolver: &'a Resolver,
    domain: &'a str,
}

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        self.resolver
            .inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(self.domain);
    }
}

/// One log line per policy change; a weaker policy replacing a stronger one is a warning.
fn log_change(domain: &str, old: Option<&PolicyEntry>, new: &PolicyEntry, elapsed_ms: u64) {
    let new_mx = mx_list(&new.policy);
    match old {
        None => info!(domain, id = new.id, mode = %new.policy.mode, mx = new_mx,
                      max_age = new.policy.max_age, elapsed_ms, "policy fetched"),
        Some(old) if is_weaker(&old.policy, &new.policy) => warn!(
            domain, old_id = old.id, new_id = new.id,
            old_mode = %old.policy.mode, new_mode = %new.policy.mode,
            old_mx = mx_list(&old.policy), new_mx,
            "policy weakened"),
        Some(old) if old.id != new.id || old.policy != new.policy => info!(
            domain, old_id = old.id, new_id = new.id, mode = %new.policy.mode, mx = new_mx,
            max_age = new.policy.max_age, "policy updated"),
        Some(_) => debug!(domain, id = new.id, "policy re-fetched unchanged"),
    }
}

/// Enforce → testing or none, or an mx pattern removed.
pub fn is_weaker(old: &Policy, new: &Policy) -> bool {
    new.mode < old.mode || old.mx.iter().any(|m| !new.mx.contains(m))
}

fn mx_list(p: &Policy) -> String {
    p.mx.iter()
        .map(|m| m.policy_form())
        .collect::<Vec<_>>()
        .join(",")
}

/// Wall time `SystemTime` helper for logs and `query` output.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
pub(crate) mod tests {
    use std::num::NonZeroUsize;

    use super::*;
    use crate::clock::TokioClock;
    use crate::discovery::fake::FakeSource;
    use crate::discovery::{DnsError, FetchError, NoPolicy, TxtLookup};

    pub(crate) const INTERVAL: Duration = Duration::from_secs(86_400);

    pub(crate) fn policy(mode: &str, max_age: u32) -> String {
        format!("version: STSv1\nmode: {mode}\nmx: mx.example.test\nmax_age: {max_age}\n")
    }

    pub(crate) fn resolver(fake: &Arc<FakeSource>) -> Arc<Resolver> {
        Arc::new(Resolver::new(
            Cache::new(NonZeroUsize::new(100_000).unwrap()),
            fake.clone(),
            Arc::new(TokioClock::new()),
            Settings {
                deadline: Duration::from_secs(15),
                negative_ttl: Duration::from_secs(3600),
                refresh_interval: INTERVAL,
            },
        ))
    }

    pub(crate) async fn resolve(r: &Arc<Resolver>, key: &str) -> Resolution {
        match r.lookup(key.as_bytes()).await {
            Lookup::Resolved { resolution, .. } => resolution,
            Lookup::Skipped(s) => panic!("skipped: {s}"),
        }
    }

    pub(crate) fn id_of(r: &Resolution) -> Option<String> {
        match r {
            Resolution::Policy(e) => Some(e.id.to_string()),
            _ => None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn rfc8461_3_3_cached_policy_survives_dns_and_https_failure_until_expiry() {
        let fake = Arc::new(FakeSource::default());
        fake.publish("one", &policy("enforce", 7200));
        let r = resolver(&fake);
        assert_eq!(
            id_of(&resolve(&r, "example.test").await).as_deref(),
            Some("one")
        );
        fake.set_txt(TxtLookup::Temp(DnsError::ServFail));
        fake.set_fetch(Err(FetchError::Timeout));
        assert_eq!(
            id_of(&r.refresh("example.test").await).as_deref(),
            Some("one")
        );
        assert_eq!(
            id_of(&resolve(&r, "example.test").await).as_deref(),
            Some("one")
        );
        assert_eq!(fake.calls(), (2, 1), "hits never touch the network");
        // Backed off at least five minutes (RFC 8461 §3.3).
        let next = r.cache().policy_state("example.test").unwrap().next_check;
        assert!(next >= r.clock().now() + FETCH_BACKOFF);
        // After max_age (7200 s from the fetch) the policy is gone: no policy, not TEMP.
        tokio::time::advance(Duration::from_secs(7200)).await;
        assert!(matches!(
            resolve(&r, "example.test").await,
            Resolution::Failed(_)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn rfc8461_3_1_vanished_txt_record_keeps_the_cached_policy() {
        let fake = Arc::new(FakeSource::default());
        fake.publish("one", &policy("enforce", 86400));
        let r = resolver(&fake);
        resolve(&r, "example.test").await;
        fake.set_txt(TxtLookup::NoPolicy(NoPolicy::NxDomain));
        assert_eq!(
            id_of(&r.refresh("example.test").await).as_deref(),
            Some("one")
        );
        assert_eq!(
            id_of(&resolve(&r, "example.test").await).as_deref(),
            Some("one")
        );
        assert_eq!(fake.calls(), (2, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn rfc8461_3_1_new_id_fetches_and_replaces_the_policy() {
        let fake = Arc::new(FakeSource::default());
        fake.publish("one", &policy("enforce", 604800));
        let r = resolver(&fake);
        resolve(&r, "example.test").await;
        // Same id: the TXT check does not fetch.
        r.refresh("example.test").await;
        assert_eq!(fake.calls(), (2, 1));
        // New id with a weaker policy (the RFC 8461 §8.3 opt-out path): applied.
        fake.publish("two", &policy("testing", 604800));
        r.refresh("example.test").await;
        let now = resolve(&r, "example.test").await;
        assert_eq!(id_of(&now).as_deref(), Some("two"));
        let Resolution::Policy(e) = now else {
            unreachable!()
        };
        assert_eq!(e.policy.mode, crate::policy::Mode::Testing);
        assert_eq!(fake.calls(), (3, 2));
    }

    #[tokio::test(start_paused = true)]
    async fn rfc8461_3_3_fetch_failure_backs_off_five_minutes() {
        let fake = Arc::new(FakeSource::default());
        fake.publish("one", &policy("enforce", 86400));
        fake.set_fetch(Err(FetchError::Status {
            code: 500,
            location: None,
        }));
        let r = resolver(&fake);
        assert!(matches!(
            resolve(&r, "example.test").await,
            Resolution::Failed(_)
        ));
        tokio::time::advance(FETCH_BACKOFF - Duration::from_secs(1)).await;
        assert!(matches!(
            resolve(&r, "example.test").await,
            Resolution::Failed(_)
        ));
        assert_eq!(fake.calls(), (1, 1), "no new attempt within the back-off");
        fake.publish("one", &policy("enforce", 86400));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(
            id_of(&resolve(&r, "example.test").await).as_deref(),
            Some("one")
        );
        assert_eq!(fake.calls(), (2, 2));
    }

    #[tokio::test(start_paused = true)]
    async fn negative_answers_are_remembered_but_dns_errors_are_not() {
        let fake = Arc::new(FakeSource::default());
        let r = resolver(&fake);
        assert!(matches!(
            resolve(&r, "none.test").await,
            Resolution::NoPolicy
        ));
        assert!(matches!(
            resolve(&r, "none.test").await,
            Resolution::NoPolicy
        ));
        assert_eq!(fake.calls().0, 1);
        tokio::time::advance(Duration::from_secs(3600)).await;
        resolve(&r, "none.test").await;
        assert_eq!(fake.calls().0, 2, "asked again after negative_ttl");

        fake.set_txt(TxtLookup::Temp(DnsError::Timeout));
        assert!(matches!(
            resolve(&r, "temp.test").await,
            Resolution::Failed(_)
        ));
        assert!(matches!(
            resolve(&r, "temp.test").await,
            Resolution::Failed(_)
        ));
        assert_eq!(fake.calls().0, 4, "temporary DNS failures are not cached");
    }

    #[tokio::test(start_paused = true)]
    async fn spec_a4_5_max_age_zero_applies_once_and_is_not_cached() {
        let fake = Arc::new(FakeSource::default());
        fake.publish("one", &policy("enforce", 0));
        let r = resolver(&fake);
        assert_eq!(
            id_of(&resolve(&r, "example.test").await).as_deref(),
            Some("one")
        );
        assert_eq!(
            id_of(&resolve(&r, "example.test").await).as_deref(),
            Some("one")
        );
        assert_eq!(fake.calls(), (2, 2));
        assert!(r.cache().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn cold_lookup_answers_at_the_deadline_and_discovery_fills_the_cache() {
        let fake = Arc::new(FakeSource::default());
        fake.publish("one", &policy("enforce", 86400));
        fake.set_delay(Duration::from_secs(10));
        let r = resolver(&fake);
        let start = tokio::time::Instant::now();
        // TXT 10 s + fetch 10 s exceeds the 15 s deadline.
        assert!(matches!(
            resolve(&r, "example.test").await,
            Resolution::Failed(_)
        ));
        assert_eq!(start.elapsed(), Duration::from_secs(15));
        tokio::time::sleep(Duration::from_secs(6)).await;
        fake.set_delay(Duration::ZERO);
        assert_eq!(
            id_of(&resolve(&r, "example.test").await).as_deref(),
            Some("one")
        );
        assert_eq!(fake.calls(), (1, 1), "the late discovery filled the cache");
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_cold_lookups_share_one_discovery() {
        let fake = Arc::new(FakeSource::default());
        fake.publish("one", &policy("enforce", 86400));
        fake.set_delay(Duration::from_millis(100));
        let r = resolver(&fake);
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..1000 {
            let r = r.clone();
            set.spawn(async move { resolve(&r, "example.test").await });
        }
        while let Some(res) = set.join_next().await {
            assert_eq!(id_of(&res.unwrap()).as_deref(), Some("one"));
        }
        assert_eq!(fake.calls(), (1, 1));
    }

    #[test]
    fn weaker_means_lower_mode_or_a_removed_mx() {
        let p = |s: &str| crate::policy::parse_policy(s.as_bytes()).unwrap();
        let enforce = p("version: STSv1\nmode: enforce\nmx: a.test\nmx: b.test\nmax_age: 1\n");
        let testing = p("version: STSv1\nmode: testing\nmx: a.test\nmx: b.test\nmax_age: 1\n");
        let fewer = p("version: STSv1\nmode: enforce\nmx: a.test\nmax_age: 1\n");
        let more =
            p("version: STSv1\nmode: enforce\nmx: a.test\nmx: b.test\nmx: c.test\nmax_age: 1\n");
        assert!(is_weaker(&enforce, &testing));
        assert!(is_weaker(&enforce, &fewer));
        assert!(!is_weaker(&enforce, &more));
        assert!(!is_weaker(&testing, &enforce));
    }
}
