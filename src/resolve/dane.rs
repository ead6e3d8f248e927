//! DANE states for the lookup path (RFC 7672, RFC 8461 §2): a cached state is answered with no
//! network work; a miss starts one DANE discovery per destination (later lookups of the same
//! destination join it) and waits for it up to the lookup deadline; a background task checks
//! every cached state again before its TTL runs out. A failed discovery keeps a cached state
//! until it expires, and with nothing cached it is a failure the answer layer turns into TEMP:
//! Postfix itself defers a destination whose TLSA lookups fail (RFC 7672 §2.1.1).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::cache::DaneCache;
use crate::cache::dane::DaneEntry;
use crate::cache::fleet::Fleet;
use crate::cache::journal::{Record, Store};
use crate::cache::schedule::{Due, Schedule, Scheduled, drive};
use crate::clock::Clock;
use crate::dane::{DaneState, Destination};
use crate::discovery::{DaneSource, discover_dane};
use crate::key::Skip;
use crate::metrics::Metrics;

/// What a lookup learnt about a destination's DANE state.
#[derive(Debug, Clone)]
pub enum DaneLookup {
    /// The key is not a destination DANE applies to (address literal, parent-domain probe...).
    Skipped(Skip),
    State(Arc<DaneEntry>),
    /// Nothing valid is cached and it could not be learnt now (DNS failure, deadline, no
    /// DNSSEC-capable source configured).
    Failed(Arc<str>),
}

/// The DANE side of the resolver. Idle (no source) unless a map asks for DANE.
pub struct DaneResolver {
    cache: DaneCache,
    source: RwLock<Option<Arc<dyn DaneSource>>>,
    clock: Arc<dyn Clock>,
    inflight: Mutex<HashMap<String, watch::Receiver<Option<DaneLookup>>>>,
    schedule: Schedule,
    store: Option<Store>,
    metrics: Arc<Metrics>,
    /// The fleet's shared cache (`[fleet]`): asked before DNS, told every discovery.
    fleet: RwLock<Option<Arc<Fleet>>>,
}

impl DaneResolver {
    pub fn new(max_entries: usize, clock: Arc<dyn Clock>, metrics: Arc<Metrics>) -> DaneResolver {
        DaneResolver {
            cache: DaneCache::new(max_entries),
            source: RwLock::new(None),
            clock,
            inflight: Mutex::new(HashMap::new()),
            schedule: Schedule::default(),
            store: None,
            metrics,
            fleet: RwLock::new(None),
        }
    }

    /// Joins, leaves or changes the fleet (start and reload, with the policies' fleet).
    pub fn set_fleet(&self, fleet: Option<Arc<Fleet>>) {
        *self.fleet.write().unwrap_or_else(|p| p.into_inner()) = fleet;
    }

    fn fleet(&self) -> Option<Arc<Fleet>> {
        self.fleet.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A state another host of the fleet learnt more recently than this one's and not yet due
    /// for a check: taken as if discovered here (journal first), so a fleet asks DNS about a
    /// destination about once per check interval, not once per host.
    async fn take_from_fleet(&self, key: &str) -> Option<Arc<DaneEntry>> {
        let fleet = self.fleet()?;
        let now = self.clock.now();
        let shared = fleet.get_dane(key, now).await?;
        let local = self.cache.peek(key);
        if shared.refresh_at() <= now || local.as_ref().is_some_and(|l| l.checked >= shared.checked)
        {
            return None;
        }
        let entry = Arc::new(shared);
        let old = self.keep(key, &entry, now).await;
        debug!(destination = key, verdict = %entry.state.verdict, "DANE state taken from the fleet cache");
        if old
            .as_ref()
            .is_some_and(|o| o.state.verdict != entry.state.verdict)
        {
            log_change(key, old.as_deref().map(|e| &e.state), &entry.state, 0);
        }
        Some(entry)
    }

    pub(super) fn set_store(&mut self, store: Store) {
        self.store = Some(store);
    }

    pub(super) fn set_metrics(&mut self, metrics: Arc<Metrics>) {
        self.metrics = metrics;
    }

    /// Puts a DNSSEC-aware source in place (at start and on reload); None switches DANE
    /// discovery off, cached states are still answered.
    pub fn set_source(&self, source: Option<Arc<dyn DaneSource>>) {
        *self.source.write().unwrap_or_else(|p| p.into_inner()) = source;
    }

    pub fn cache(&self) -> &DaneCache {
        &self.cache
    }

    /// The DANE state for a Postfix key: cached, or learnt now within `deadline`.
    pub async fn lookup(self: &Arc<Self>, key: &[u8], deadline: Duration) -> DaneLookup {
        let dest = match Destination::from_key(key) {
            Ok(d) => d,
            Err(skip) => return DaneLookup::Skipped(skip),
        };
        let k = dest.key_ref();
        if let Some(entry) = self.cache.get(&k, self.clock.now()) {
            return DaneLookup::State(entry);
        }
        let k = k.into_owned();
        let mut rx = self.join_or_start(k.clone(), dest);
        match tokio::time::timeout(deadline, rx.wait_for(Option::is_some)).await {
            Ok(Ok(r)) => r
                .clone()
                .unwrap_or_else(|| DaneLookup::Failed("no result".into())),
            Ok(Err(_)) => DaneLookup::Failed("DANE discovery ended without a result".into()),
            Err(_) => {
                info!(
                    destination = k,
                    deadline_ms = deadline.as_millis() as u64,
                    "DANE lookup deadline passed; answering TEMP, discovery continues"
                );
                DaneLookup::Failed("DANE lookup deadline exceeded".into())
            }
        }
    }

    /// Discovers the DANE state of the destination `key` (as [`Destination::key`] spells it)
    /// now, or joins the discovery running; for the refresh task and `ctl refresh`.
    pub async fn refresh(self: &Arc<Self>, key: &str) -> DaneLookup {
        let dest = match Destination::from_key(key.as_bytes()) {
            Ok(d) => d,
            Err(skip) => return DaneLookup::Skipped(skip),
        };
        let mut rx = self.join_or_start(key.to_string(), dest);
        match rx.wait_for(Option::is_some).await {
            Ok(r) => r
                .clone()
                .unwrap_or_else(|| DaneLookup::Failed("no result".into())),
            Err(_) => DaneLookup::Failed("DANE discovery ended without a result".into()),
        }
    }

    fn join_or_start(
        self: &Arc<Self>,
        key: String,
        dest: Destination,
    ) -> watch::Receiver<Option<DaneLookup>> {
        let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rx) = inflight.get(&key) {
            return rx.clone();
        }
        let (tx, rx) = watch::channel(None);
        inflight.insert(key.clone(), rx.clone());
        drop(inflight);
        let this = self.clone();
        tokio::spawn(async move {
            let _guard = Inflight {
                resolver: &this,
                key: &key,
            };
            let r = this.discover_and_apply(&key, &dest).await;
            let _ = tx.send(Some(r));
        });
        rx
    }

    async fn discover_and_apply(&self, key: &str, dest: &Destination) -> DaneLookup {
        let source = self
            .source
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some(source) = source else {
            return DaneLookup::Failed("DANE is not enabled (no map has dane = true)".into());
        };
        if let Some(entry) = self.take_from_fleet(key).await {
            return DaneLookup::State(entry);
        }
        let d = discover_dane(&*source, dest).await;
        let now = self.clock.now();
        let elapsed_ms = d.elapsed.as_millis() as u64;
        match d.outcome {
            Ok(state) => {
                self.metrics.dane.discovery(state.verdict.label());
                let entry = Arc::new(DaneEntry::new(state, now));
                let old = self.keep(key, &entry, now).await;
                if let Some(fleet) = self.fleet() {
                    fleet.publish_dane(key, &entry, now);
                }
                log_change(
                    key,
                    old.as_deref().map(|e| &e.state),
                    &entry.state,
                    elapsed_ms,
                );
                DaneLookup::State(entry)
            }
            Err(failure) => {
                self.metrics.dane.discovery("failed");
                match self.cache.failed(key, now) {
                    Some(kept) => {
                        self.schedule.push(key.into(), kept.next_check);
                        if kept.failures == 1 || kept.failures.is_multiple_of(16) {
                            warn!(destination = key, failures = kept.failures, reason = %failure,
                                  verdict = %kept.entry.state.verdict,
                                  "DANE refresh failed; keeping the cached DANE state until it expires");
                        }
                        DaneLookup::State(kept.entry)
                    }
                    None => {
                        info!(destination = key, reason = %failure, elapsed_ms,
                              "DANE state unknown (a lookup failed); answered TEMP until DNS answers");
                        DaneLookup::Failed(failure.to_string().into())
                    }
                }
            }
        }
    }

    /// Keeps a newly learnt state: on disk before it is answered, as for a new MTA-STS policy
    /// (a restart must not forget a destination's DANE and fall back to a weaker answer), then
    /// in memory with its next check scheduled. The state it replaced, if any.
    async fn keep(
        &self,
        key: &str,
        entry: &Arc<DaneEntry>,
        now: std::time::SystemTime,
    ) -> Option<Arc<DaneEntry>> {
        if let Some(store) = &self.store
            && let Err(e) = store.write(Record::dane(key, entry.clone())).await
        {
            self.metrics.store_write_error();
            warn!(error = %e, "cannot persist a DANE state; serving from memory");
        }
        let next = entry.refresh_at();
        let (stored, old) = self.cache.insert(key, entry.clone(), next, now);
        self.schedule.push(stored, next);
        old
    }

    /// Puts a state loaded from disk back (warm restart), checked again when it is due.
    pub fn preload(&self, key: &str, entry: Arc<DaneEntry>) {
        let now = self.clock.now();
        let at = entry.refresh_at().max(now);
        let (stored, _) = self.cache.insert(key, entry, at, now);
        self.schedule.push(stored, at);
    }

    /// Removes a destination's state from memory and the journal (`ctl evict`).
    pub fn evict(&self, key: &str) -> bool {
        let removed = self.cache.remove(key);
        if removed && let Some(store) = &self.store {
            store.write_nowait(Record::dane_remove(key));
        }
        removed
    }

    /// The earliest scheduled check, popped if it is due now.
    pub fn pop_due(&self) -> Due {
        self.schedule
            .pop_due(self.clock.now(), |k| self.cache.refresh_at(k))
    }

    pub async fn schedule_changed(&self) {
        self.schedule.changed().await;
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }
}

struct Inflight<'a> {
    resolver: &'a DaneResolver,
    key: &'a str,
}

impl Drop for Inflight<'_> {
    fn drop(&mut self) {
        self.resolver
            .inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(self.key);
    }
}

/// A changed verdict is worth a line; a weaker one (dane-only → dane or to MTA-STS) a warning.
fn log_change(key: &str, old: Option<&DaneState>, new: &DaneState, elapsed_ms: u64) {
    let hosts = new.hosts.len();
    let ttl_s = new.ttl.as_secs();
    match old {
        None => info!(destination = key, verdict = %new.verdict, hosts, ttl_s, elapsed_ms,
                      "DANE state learnt"),
        Some(o) if o.verdict == new.verdict => {
            debug!(destination = key, verdict = %new.verdict, "DANE state unchanged");
        }
        Some(o) if rank(new.verdict) < rank(o.verdict) => warn!(
            destination = key, old = %o.verdict, new = %new.verdict, hosts,
            "DANE state weakened"),
        Some(o) => info!(destination = key, old = %o.verdict, new = %new.verdict, hosts,
                         "DANE state changed"),
    }
}

fn rank(v: crate::dane::Verdict) -> u8 {
    use crate::dane::Verdict::*;
    match v {
        DaneOnly => 3,
        Dane => 2,
        NullMx | NxDomain => 1,
        Unsigned | NoTlsa => 0,
    }
}

impl Scheduled for DaneResolver {
    fn pop_due(&self) -> Due {
        DaneResolver::pop_due(self)
    }
    fn now(&self) -> SystemTime {
        self.clock.now()
    }
    fn changed(&self) -> impl std::future::Future<Output = ()> + Send {
        self.schedule.changed()
    }
    async fn check(self: Arc<Self>, key: String) {
        debug!(destination = key, "refreshing DANE state");
        self.refresh(&key).await;
    }
    fn after_wait(&self) {
        let swept = self.cache.sweep(self.clock.now());
        if swept > 0 {
            debug!(removed = swept, "expired DANE states removed from memory");
        }
    }
}

/// Runs until `shutdown` turns true: checks every cached DANE state again at three quarters of
/// its TTL (so one failed check still leaves time before it expires), at most `concurrency`
/// at once.
pub async fn refresh_loop(
    resolver: Arc<DaneResolver>,
    concurrency: usize,
    shutdown: watch::Receiver<bool>,
) {
    drive(resolver, concurrency, shutdown).await;
}

#[cfg(test)]
mod tests;
