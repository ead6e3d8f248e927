//! The executor: one discovery per domain at a time (single flight), cold lookups bounded by the
//! deadline, and every [`Decision`] applied in one step — one cache lock, the journal write the
//! decision asks for, the schedule entry, the log line and the counters. Lookups, the refresh
//! task and the operator's verbs all go through here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use super::dane::{DaneLookup, DaneResolver};
use super::decide::{self, Decision, Event, Journal};
use super::shared;
use super::{Lookup, Resolution, Settings, rfc3339};
use crate::cache::Name;
use crate::cache::fleet::{Fleet, Found, Shared};
use crate::cache::journal::{Record, Store};
use crate::cache::schedule::{Due, Schedule, Timing};
use crate::cache::{Cache, Change, Hit, PolicyEntry, PolicyState};
use crate::clock::Clock;
use crate::discovery::{self, DaneSource, PolicySource};
use crate::key;
use crate::metrics::{self, Metrics};
use crate::policy::Policy;

pub struct Resolver {
    cache: Cache,
    source: RwLock<Arc<dyn PolicySource>>,
    clock: Arc<dyn Clock>,
    settings: RwLock<(Settings, Timing)>,
    inflight: Mutex<HashMap<String, watch::Receiver<Option<Resolution>>>>,
    schedule: Schedule,
    /// Where new policies and negatives are made durable.
    store: Option<Store>,
    metrics: Arc<Metrics>,
    /// DANE states (RFC 7672) of the destinations a `dane = true` map asks about.
    dane: Arc<DaneResolver>,
    /// The shared second level of a fleet of daemons (`[fleet]`); replaced on reload.
    fleet: RwLock<Option<Arc<Fleet>>>,
}

impl Resolver {
    pub fn new(
        cache: Cache,
        source: Arc<dyn PolicySource>,
        clock: Arc<dyn Clock>,
        settings: Settings,
    ) -> Resolver {
        let timing = Timing::new(settings.refresh_interval, settings.negative_ttl)
            .with_dns_failure_ttl(settings.dns_failure_ttl);
        let metrics = Arc::new(Metrics::new());
        let dane = Arc::new(DaneResolver::new(
            cache.capacity(),
            clock.clone(),
            metrics.clone(),
        ));
        Resolver {
            cache,
            source: RwLock::new(source),
            clock,
            settings: RwLock::new((settings, timing)),
            inflight: Mutex::new(HashMap::new()),
            schedule: Schedule::default(),
            store: None,
            metrics,
            dane,
            fleet: RwLock::new(None),
        }
    }

    /// Counts discoveries, cache hits, refreshes, downgrades and store errors in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Resolver {
        if let Some(dane) = Arc::get_mut(&mut self.dane) {
            dane.set_metrics(metrics.clone());
        }
        self.metrics = metrics;
        self
    }

    /// Learns DANE states from `source` (the DNSSEC-aware resolver edge).
    pub fn with_dane_source(self, source: Arc<dyn DaneSource>) -> Resolver {
        self.dane.set_source(Some(source));
        self
    }

    /// The DANE side: cached states, discovery, refresh.
    pub fn dane(&self) -> &Arc<DaneResolver> {
        &self.dane
    }

    /// The DANE state for a Postfix key, within the lookup deadline (see [`DaneResolver`]).
    pub async fn lookup_dane(&self, key: &[u8]) -> DaneLookup {
        let deadline = self.rules().0.deadline;
        self.dane.lookup(key, deadline).await
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Persists every new or changed policy and every "no policy" entry to `store`.
    pub fn with_store(mut self, store: Store) -> Resolver {
        if let Some(dane) = Arc::get_mut(&mut self.dane) {
            dane.set_store(store.clone());
        }
        self.store = Some(store);
        self
    }

    pub fn store(&self) -> Option<&Store> {
        self.store.as_ref()
    }

    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    fn rules(&self) -> std::sync::RwLockReadGuard<'_, (Settings, Timing)> {
        // Replaced whole under the write lock: a poisoned lock still holds a consistent value.
        self.settings.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The timing rules in force.
    pub fn settings(&self) -> Settings {
        self.rules().0.clone()
    }

    fn timing(&self) -> Timing {
        self.rules().1.clone()
    }

    /// Applies a reloaded configuration: new DNS/HTTPS settings and timing rules. Discoveries
    /// already running finish with the old source; the cache and schedule are untouched.
    pub fn reconfigure(&self, source: Arc<dyn PolicySource>, settings: Settings) {
        *self.source.write().unwrap_or_else(|p| p.into_inner()) = source;
        let mut rules = self.settings.write().unwrap_or_else(|p| p.into_inner());
        let timing = rules
            .1
            .with(settings.refresh_interval, settings.negative_ttl)
            .with_dns_failure_ttl(settings.dns_failure_ttl);
        *rules = (settings, timing);
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
        let mut rx = self.join_or_start(domain, true);
        let deadline = self.rules().0.deadline;
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
    /// the refresh task and `ctl refresh`. Each step is bounded by the source's own timeouts.
    pub async fn refresh(self: &Arc<Self>, domain: &str) -> Resolution {
        let mut rx = self.join_or_start(domain, false);
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

    /// `shared_first`: a lookup's miss asks the fleet's shared cache before discovering; a
    /// refresh discovers.
    fn join_or_start(
        self: &Arc<Self>,
        domain: &str,
        shared_first: bool,
    ) -> watch::Receiver<Option<Resolution>> {
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
            let resolution = this.discover_and_apply(&domain, shared_first).await;
            let _ = tx.send(Some(resolution));
        });
        rx
    }

    /// Cache state (one read lock) → discovery → decision → [`Resolver::apply`].
    async fn discover_and_apply(&self, domain: &str, shared_first: bool) -> Resolution {
        let state = self.cache.policy_state(domain);
        if shared_first && let Some(r) = self.ask_fleet(domain, state.as_ref()).await {
            return r;
        }
        let timing = self.timing();
        let known = decide::known(state.as_ref(), self.clock.now(), &timing);
        let source = self
            .source
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let d = discovery::discover(&*source, domain, known).await;
        self.metrics.discovery(metrics::Outcome::from(&d.outcome));
        let elapsed_ms = d.elapsed.as_millis() as u64;
        let decision = decide::decide(domain, state.as_ref(), d.outcome, self.clock.now(), &timing);
        self.apply(domain, decision, elapsed_ms).await
    }

    /// Carries out a decision: the journal first where the decision needs it durable before
    /// anyone is answered, then the one cache change, its schedule entry, the log and counters.
    async fn apply(&self, domain: &str, decision: Decision, elapsed_ms: u64) -> Resolution {
        let Decision {
            resolution,
            change,
            journal,
            event,
        } = decision;
        let share = shared::to_share(&resolution, &event, &change, self.clock.now());
        if let Journal::BeforeAnswer(record) = &journal {
            self.persist(record.clone()).await;
        }
        let applied = self.cache.apply(domain, change, self.clock.now());
        if let (Some(fleet), Some(share)) = (self.fleet(), share) {
            shared::send(&fleet, domain, share, self.clock.now());
        }
        if let (Some(key), Some(at)) = (applied.key, applied.next_check) {
            self.schedule.push(key, at);
        }
        if let (Journal::Background(record), true) = (journal, applied.stored)
            && let Some(store) = &self.store
        {
            store.write_nowait(record);
        }
        self.log(domain, event, elapsed_ms);
        resolution
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

    /// One log line per decision; a weaker policy replacing a stronger one is a warning.
    fn log(&self, domain: &str, event: Event, elapsed_ms: u64) {
        match event {
            Event::Fetched {
                new,
                old,
                clamped,
                weaker,
            } => {
                if clamped {
                    warn!(
                        domain,
                        id = new.id,
                        "max_age above 31557600 clamped to one year (RFC 8461 §3.2)"
                    );
                }
                if weaker {
                    self.metrics.downgrade();
                }
                log_change(domain, old.as_deref(), &new, weaker, elapsed_ms);
            }
            Event::FetchedOnce { entry } => info!(
                domain, id = entry.id, mode = %entry.policy.mode, elapsed_ms,
                "policy fetched with max_age 0: applied once, not cached"
            ),
            Event::Unchanged { id } => debug!(domain, id, elapsed_ms, "TXT id unchanged"),
            Event::NoPolicy { reason, dropped } => {
                debug!(domain, reason, elapsed_ms, "no MTA-STS policy");
                if dropped {
                    info!(
                        domain,
                        reason, "cached policy expired and no policy is published now; dropped"
                    );
                }
            }
            Event::DnsFailed {
                reason,
                class,
                remembered,
                ..
            } => info!(
                domain,
                reason,
                class,
                elapsed_ms,
                remembered_s = remembered.as_secs(),
                "TXT lookup failed; no policy cached, answered as a failure until DNS is asked again"
            ),
            Event::FetchFailed { id, failure } => info!(
                domain,
                id,
                class = failure.label(),
                report = failure.report_class(),
                reason = %failure,
                elapsed_ms,
                "policy fetch failed; no policy cached, retry in 5 minutes"
            ),
            Event::Kept {
                entry,
                failures,
                reason,
            } => {
                // The first failure, then only now and then: a policy host down for a day must
                // not fill the log.
                if failures == 1 || failures.is_multiple_of(16) {
                    warn!(domain, id = entry.id, failures, reason,
                          expires = %rfc3339(entry.expires()),
                          "refresh failed; keeping the cached policy until it expires");
                } else {
                    debug!(domain, failures, reason, "refresh failed again");
                }
            }
            Event::ExpiredMeanwhile => {}
        }
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
        for (destination, _) in self.dane.cache().views() {
            if self.dane.evict(&destination) {
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
        self.import_many(vec![(domain.to_string(), entry)]).await == 1
    }

    /// [`Resolver::import`] for a batch, with the same outcome as importing the entries one by
    /// one in order (a domain repeated in the batch is judged against its earlier entry), but one
    /// journal commit for the batch and one cache lock: every taken policy is on disk before any
    /// is in the cache, as for a fetched policy (RFC 8461 §10.2). Returns how many were taken.
    pub async fn import_many(&self, entries: Vec<(String, Arc<PolicyEntry>)>) -> usize {
        let now = self.clock.now();
        let timing = self.timing();
        // Per domain, the index of its taken decision in `taken`.
        let mut pending: HashMap<String, usize> = HashMap::new();
        let mut taken: Vec<(String, Arc<PolicyEntry>, Decision)> = Vec::new();
        let mut count = 0;
        for (domain, entry) in entries {
            let earlier = pending.get(&domain).map(|&i| taken[i].1.clone());
            let cached = earlier.or_else(|| self.cache.valid_policy(&domain, now));
            let Some(decision) =
                decide::import(&domain, cached.as_deref(), entry.clone(), now, &timing)
            else {
                continue;
            };
            count += 1;
            match pending.get(&domain) {
                // A later line for the same domain supersedes the earlier one in the batch.
                Some(&i) => taken[i] = (domain, entry, decision),
                None => {
                    pending.insert(domain.clone(), taken.len());
                    taken.push((domain, entry, decision));
                }
            }
        }
        if taken.is_empty() {
            return 0;
        }
        let mut records = Vec::with_capacity(taken.len());
        let mut changes = Vec::with_capacity(taken.len());
        for (domain, _, decision) in taken {
            let Decision {
                change, journal, ..
            } = decision;
            if let Journal::BeforeAnswer(record) = journal {
                records.push(record);
            }
            changes.push((domain, change));
        }
        if let Some(store) = &self.store
            && let Err(e) = store.write_many(records).await
        {
            self.metrics.store_write_error();
            error!(error = %e, "cannot persist the policy cache; serving from memory");
        }
        for applied in self.cache.apply_many(changes, now) {
            if let (Some(key), Some(at)) = (applied.key, applied.next_check) {
                self.schedule.push(key, at);
            }
        }
        count
    }

    // ---- the fleet's shared cache (`[fleet]`, `cache/fleet/`) ----------------------------

    /// Shares discoveries with a fleet of daemons through `fleet`.
    pub fn with_fleet(self, fleet: Option<Arc<Fleet>>) -> Resolver {
        self.set_fleet(fleet);
        self
    }

    /// Joins, leaves or changes the fleet (reload).
    pub fn set_fleet(&self, fleet: Option<Arc<Fleet>>) {
        self.dane.set_fleet(fleet.clone());
        *self.fleet.write().unwrap_or_else(|p| p.into_inner()) = fleet;
    }

    pub fn fleet(&self) -> Option<Arc<Fleet>> {
        self.fleet.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A miss with no valid policy cached asks the shared cache (within `[fleet] timeout`); a
    /// valid shared entry is taken like a fetched policy (journal first) unless a newer one is
    /// cached here. None: discover.
    async fn ask_fleet(&self, domain: &str, state: Option<&PolicyState>) -> Option<Resolution> {
        let fleet = self.fleet()?;
        if state.is_some_and(|s| s.entry.is_valid(self.clock.now())) {
            return None;
        }
        let Found::Entry(found) = fleet.get(domain, self.clock.now(), true).await else {
            return None;
        };
        match found {
            Shared::Policy { entry, .. } => {
                if !self.import(domain, entry.clone()).await {
                    return None;
                }
                info!(domain, id = entry.id, mode = %entry.policy.mode,
                      "policy taken from the fleet cache");
                Some(Resolution::Policy(entry))
            }
            Shared::Negative { reason, until } => {
                self.remember_negative(domain, &reason, until);
                debug!(domain, reason, "no MTA-STS policy, as the fleet cache says");
                Some(Resolution::NoPolicy)
            }
        }
    }

    /// A "no policy" learnt from the fleet: in memory and in the journal (in the background, as
    /// for a discovery's).
    fn remember_negative(&self, domain: &str, reason: &str, until: SystemTime) {
        self.preload_negative(domain, reason, until);
        if let Some(store) = &self.store {
            store.write_nowait(Record::Negative {
                domain: domain.into(),
                reason: reason.into(),
                until,
            });
        }
    }

    /// A due refresh that another host of the fleet did: takes its entry when newer than the
    /// one cached here, or marks the cached one checked when it is the same, with the next check
    /// one interval after the other host's. False when the shared entry is of no use here.
    pub async fn take_refreshed(
        &self,
        domain: &str,
        entry: Arc<PolicyEntry>,
        checked: SystemTime,
    ) -> bool {
        let now = self.clock.now();
        let timing = self.timing();
        let next = timing
            .next_check(&entry, checked)
            .max(now + crate::cache::schedule::MIN_CHECK_GAP);
        match self.cache.valid_policy(domain, now) {
            // The shared value keeps whole seconds.
            Some(cur) if cur.id == entry.id && shared::same_second(cur.fetched, entry.fetched) => {
                self.check_at(domain, next);
                true
            }
            Some(cur) if cur.fetched >= entry.fetched => false,
            _ => {
                if self.import(domain, entry).await {
                    self.check_at(domain, next);
                    true
                } else {
                    false
                }
            }
        }
    }

    /// Moves the cached policy's next check to `at` (another host holds the refresh lease).
    pub fn check_at(&self, domain: &str, at: SystemTime) {
        let applied = self.cache.apply(
            domain,
            Change::Checked {
                next_check: at,
                error: None,
            },
            self.clock.now(),
        );
        if let (Some(key), Some(at)) = (applied.key, applied.next_check) {
            self.schedule.push(key, at);
        }
    }

    /// Makes room for `n` preloaded policies in the cache and the schedule at once.
    pub fn reserve(&self, n: usize) {
        self.cache.reserve(n);
        self.schedule.reserve(n);
    }

    /// Puts a policy loaded from disk into the cache (warm restart), its first check spread over
    /// the refresh interval. Takes the domain as an `Arc` so the cache and the schedule keep the
    /// caller's copy (the journal's) instead of two more.
    pub fn preload(&self, domain: Name, entry: Arc<PolicyEntry>) {
        let now = self.clock.now();
        let next = self.timing().first_check(&domain, &entry, now);
        self.cache
            .insert_policy_shared(domain.clone(), entry, next, now);
        self.schedule.push(domain, next);
    }

    /// Puts a remembered negative loaded from disk back into the cache.
    pub fn preload_negative(&self, domain: &str, reason: &str, until: SystemTime) {
        let now = self.clock.now();
        self.cache.apply(
            domain,
            Change::Negative {
                reason: reason.into(),
                failure: false,
                until,
            },
            now,
        );
    }

    /// The earliest scheduled check, popped if it is due now.
    pub fn pop_due(&self) -> Due {
        self.schedule.pop_due(self.clock.now(), |d| {
            self.cache.policy_state(d).map(|s| s.next_check)
        })
    }

    /// Resolves when the schedule gained an entry (so the refresh task can re-evaluate).
    pub async fn schedule_changed(&self) {
        self.schedule.changed().await;
    }

    /// Scheduled checks, stale ones included (for tests and status).
    pub fn scheduled(&self) -> usize {
        self.schedule.len()
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

fn log_change(
    domain: &str,
    old: Option<&PolicyEntry>,
    new: &PolicyEntry,
    weaker: bool,
    elapsed_ms: u64,
) {
    let new_mx = mx_list(&new.policy);
    match old {
        None => info!(domain, id = new.id, mode = %new.policy.mode, mx = new_mx,
                      max_age = new.policy.max_age, elapsed_ms, "policy fetched"),
        Some(old) if weaker => warn!(
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

fn mx_list(p: &Policy) -> String {
    p.mx.iter()
        .map(|m| m.policy_form())
        .collect::<Vec<_>>()
        .join(",")
}
