//! The request path: Postfix key → policy domain → cached policy, or one shared discovery under a
//! deadline → [`Resolution`].
//!
//! Owns the rules for what the cache holds after a discovery (RFC 8461 §3.1, §3.3, §5.1, §10.2):
//! a valid cached policy survives DNS and HTTPS failures and a vanished TXT record; "no policy" and
//! fetch failures are remembered for a bounded time; concurrent lookups of one domain share one
//! discovery. Never answers Postfix itself and never touches sockets.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::cache::{Cache, Hit, PolicyEntry};
use crate::clock::Clock;
use crate::discovery::{self, Outcome};
use crate::key::{self, Skip};
use crate::policy::Policy;
use crate::source::PolicySource;

/// How long "no TXT record / no valid policy" is remembered, so that domains without MTA-STS cost
/// one DNS query per hour rather than one per delivery.
pub const NEGATIVE_TTL: Duration = Duration::from_secs(3600);
/// RFC 8461 §3.3: after a failed HTTPS GET, wait five minutes or longer before trying again.
pub const FETCH_BACKOFF: Duration = Duration::from_secs(300);
/// How often a cached policy's TXT record is looked at again when the domain is used (a new id
/// means a new policy, RFC 8461 §3.1). The lookup never waits for this check.
pub const RECHECK_INTERVAL: Duration = Duration::from_secs(3600);

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

pub struct Resolver {
    cache: Cache,
    source: Arc<dyn PolicySource>,
    clock: Arc<dyn Clock>,
    deadline: Duration,
    inflight: Mutex<HashMap<String, watch::Receiver<Option<Resolution>>>>,
}

impl Resolver {
    pub fn new(
        cache: Cache,
        source: Arc<dyn PolicySource>,
        clock: Arc<dyn Clock>,
        deadline: Duration,
    ) -> Resolver {
        Resolver {
            cache,
            source,
            clock,
            deadline,
            inflight: Mutex::new(HashMap::new()),
        }
    }

    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// Answers one Postfix key. Cached answers involve no network work; a cold lookup waits at
    /// most the deadline, and the discovery it started goes on to fill the cache.
    pub async fn lookup(self: &Arc<Self>, key: &[u8]) -> Lookup {
        let domain = match key::policy_domain(key) {
            Ok(d) => d,
            Err(skip) => {
                debug!(key = %String::from_utf8_lossy(key), reason = %skip, "key skipped");
                return Lookup::Skipped(skip);
            }
        };
        let now = self.clock.now();
        let resolution = match self.cache.get(&domain, now) {
            Hit::Policy { entry, check_due } => {
                if check_due {
                    self.nudge(&domain);
                }
                Resolution::Policy(entry)
            }
            Hit::Negative(_) => Resolution::NoPolicy,
            Hit::Miss => self.cold(&domain).await,
        };
        Lookup::Resolved { domain, resolution }
    }

    /// Joins the running discovery for `domain` or starts one, and waits for it up to the deadline.
    async fn cold(self: &Arc<Self>, domain: &str) -> Resolution {
        let mut rx = self.join_or_start(domain);
        let waited = tokio::time::timeout(self.deadline, rx.wait_for(Option::is_some)).await;
        match waited {
            Ok(Ok(r)) => r.clone().unwrap_or(Resolution::NoPolicy),
            Ok(Err(_)) => Resolution::Failed("discovery task ended without a result".into()),
            Err(_) => {
                info!(
                    domain,
                    deadline_ms = self.deadline.as_millis() as u64,
                    "lookup deadline passed; answering without a policy, discovery continues"
                );
                Resolution::Failed("lookup deadline exceeded".into())
            }
        }
    }

    /// Starts a background TXT check for a cached domain unless one is running; never waits.
    fn nudge(self: &Arc<Self>, domain: &str) {
        drop(self.join_or_start(domain));
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

    async fn discover_and_apply(&self, domain: &str) -> Resolution {
        let now = self.clock.now();
        let cached = self.cache.valid_policy(domain, now);
        // RFC 8461 §10.2: fetch again, whatever the TXT id says, once a quarter of the lifetime
        // is left, so a policy still published never drops out of the cache.
        let refetch = cached.as_ref().is_some_and(|e| {
            let left = e.expires.duration_since(now).unwrap_or_default();
            left < Duration::from_secs(u64::from(e.policy.max_age) / 4)
        });
        let known_id = cached.as_ref().filter(|_| !refetch).map(|e| e.id.as_str());
        let d = discovery::discover(&*self.source, domain, known_id).await;
        let now = self.clock.now();
        let elapsed_ms = d.elapsed.as_millis() as u64;
        match d.outcome {
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
                let old = self
                    .cache
                    .insert_policy(domain, entry.clone(), now + RECHECK_INTERVAL);
                log_change(domain, old.as_deref(), &entry, elapsed_ms);
                Resolution::Policy(entry)
            }
            Outcome::Unchanged { id } => {
                debug!(domain, id, elapsed_ms, "TXT id unchanged");
                self.cache.set_next_check(domain, now + RECHECK_INTERVAL);
                match cached {
                    Some(e) => Resolution::Policy(e),
                    // Expired between the peek and now: nothing valid to return.
                    None => Resolution::NoPolicy,
                }
            }
            Outcome::NoPolicy(reason) => match cached {
                Some(e) => {
                    // RFC 8461 §3.1, §5.1: a vanished TXT record does not cancel a cached policy.
                    warn!(domain, id = e.id, reason = %reason, expires = %humantime::format_rfc3339_seconds(e.expires),
                          "no TXT record now; keeping the cached policy until it expires");
                    self.cache.set_next_check(domain, now + RECHECK_INTERVAL);
                    Resolution::Policy(e)
                }
                None => {
                    debug!(domain, reason = %reason, elapsed_ms, "no MTA-STS policy");
                    self.cache.insert_negative(
                        domain,
                        &reason.to_string(),
                        now,
                        now + NEGATIVE_TTL,
                    );
                    Resolution::NoPolicy
                }
            },
            Outcome::DnsTemp(reason) => match cached {
                Some(e) => {
                    // RFC 8461 §3.3 / A3.9: apply the cached policy.
                    warn!(
                        domain,
                        id = e.id,
                        reason,
                        "TXT lookup failed; keeping the cached policy"
                    );
                    self.cache.set_next_check(domain, now + FETCH_BACKOFF);
                    Resolution::Policy(e)
                }
                None => {
                    // Not remembered: a DNS hiccup must not hide a policy for an hour.
                    info!(
                        domain,
                        reason, elapsed_ms, "TXT lookup failed; no policy cached"
                    );
                    Resolution::Failed(reason.into())
                }
            },
            Outcome::FetchFailed { id, failure } => {
                let reason = failure.to_string();
                match cached {
                    Some(e) => {
                        warn!(
                            domain,
                            id,
                            cached_id = e.id,
                            class = failure.class(),
                            report = failure.report_class(),
                            reason,
                            "policy fetch failed; keeping the cached policy"
                        );
                        self.cache.set_next_check(domain, now + FETCH_BACKOFF);
                        Resolution::Policy(e)
                    }
                    None => {
                        info!(
                            domain,
                            id,
                            class = failure.class(),
                            report = failure.report_class(),
                            reason,
                            elapsed_ms,
                            "policy fetch failed; no policy cached, retry in 5 minutes"
                        );
                        // RFC 8461 §3.3: back off at least five minutes before fetching again.
                        self.cache
                            .insert_negative(domain, &reason, now, now + FETCH_BACKOFF);
                        Resolution::Failed(reason.into())
                    }
                }
            }
        }
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
mod tests {
    use std::num::NonZeroUsize;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::clock::TokioClock;
    use crate::policy::{StsRecord, parse_sts_record};
    use crate::source::{BoxFuture, FetchError, NoPolicy, TxtLookup};

    /// A scripted source: what DNS and HTTPS say now, how often they were asked, and an optional
    /// delay that makes both slow.
    #[derive(Default)]
    struct Fake {
        txt: Mutex<Option<TxtLookup>>,
        body: Mutex<Option<Result<Vec<u8>, FetchError>>>,
        delay: Mutex<Duration>,
        txt_calls: AtomicUsize,
        fetch_calls: AtomicUsize,
    }

    impl Fake {
        fn publish(&self, id: &str, body: &str) {
            let record: StsRecord = parse_sts_record(&format!("v=STSv1; id={id}")).unwrap();
            *self.txt.lock().unwrap() = Some(TxtLookup::Record {
                record,
                text: format!("v=STSv1; id={id}"),
            });
            *self.body.lock().unwrap() = Some(Ok(body.as_bytes().to_vec()));
        }
        fn set_txt(&self, t: TxtLookup) {
            *self.txt.lock().unwrap() = Some(t);
        }
        fn set_fetch(&self, r: Result<Vec<u8>, FetchError>) {
            *self.body.lock().unwrap() = Some(r);
        }
        fn calls(&self) -> (usize, usize) {
            (
                self.txt_calls.load(Ordering::SeqCst),
                self.fetch_calls.load(Ordering::SeqCst),
            )
        }
    }

    impl PolicySource for Fake {
        fn txt<'a>(&'a self, _domain: &'a str) -> BoxFuture<'a, TxtLookup> {
            Box::pin(async move {
                self.txt_calls.fetch_add(1, Ordering::SeqCst);
                let delay = *self.delay.lock().unwrap();
                tokio::time::sleep(delay).await;
                self.txt
                    .lock()
                    .unwrap()
                    .clone()
                    .unwrap_or(TxtLookup::NoPolicy(NoPolicy::NxDomain))
            })
        }
        fn fetch<'a>(&'a self, _domain: &'a str) -> BoxFuture<'a, Result<Vec<u8>, FetchError>> {
            Box::pin(async move {
                self.fetch_calls.fetch_add(1, Ordering::SeqCst);
                let delay = *self.delay.lock().unwrap();
                tokio::time::sleep(delay).await;
                self.body
                    .lock()
                    .unwrap()
                    .clone()
                    .unwrap_or(Err(FetchError::Timeout))
            })
        }
    }

    fn policy(mode: &str, max_age: u32) -> String {
        format!("version: STSv1\nmode: {mode}\nmx: mx.example.test\nmax_age: {max_age}\n")
    }

    fn resolver(fake: &Arc<Fake>) -> Arc<Resolver> {
        Arc::new(Resolver::new(
            Cache::new(NonZeroUsize::new(100).unwrap()),
            fake.clone(),
            Arc::new(TokioClock::new()),
            Duration::from_secs(15),
        ))
    }

    async fn resolve(r: &Arc<Resolver>, key: &str) -> Resolution {
        match r.lookup(key.as_bytes()).await {
            Lookup::Resolved { resolution, .. } => resolution,
            Lookup::Skipped(s) => panic!("skipped: {s}"),
        }
    }

    fn id_of(r: &Resolution) -> Option<String> {
        match r {
            Resolution::Policy(e) => Some(e.id.clone()),
            _ => None,
        }
    }

    /// Lets spawned background discoveries run to completion under paused time.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn rfc8461_3_3_cached_policy_survives_dns_and_https_failure_until_expiry() {
        let fake = Arc::new(Fake::default());
        fake.publish("one", &policy("enforce", 7200));
        let r = resolver(&fake);
        assert_eq!(
            id_of(&resolve(&r, "example.test").await).as_deref(),
            Some("one")
        );
        // Everything fails from now on.
        fake.set_txt(TxtLookup::Temp("SERVFAIL".into()));
        fake.set_fetch(Err(FetchError::Timeout));
        // Past the recheck interval: the hit still answers at once and starts a check.
        tokio::time::advance(RECHECK_INTERVAL + Duration::from_secs(1)).await;
        assert_eq!(
            id_of(&resolve(&r, "example.test").await).as_deref(),
            Some("one")
        );
        settle().await;
        assert_eq!(fake.calls().0, 2, "a background TXT check ran");
        assert_eq!(
            id_of(&resolve(&r, "example.test").await).as_deref(),
            Some("one")
        );
        // After max_age (7200 s from the fetch) the policy is gone: no policy, not TEMP.
        tokio::time::advance(Duration::from_secs(7200)).await;
        assert!(matches!(
            resolve(&r, "example.test").await,
            Resolution::Failed(_)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn rfc8461_3_1_vanished_txt_record_keeps_the_cached_policy() {
        let fake = Arc::new(Fake::default());
        fake.publish("one", &policy("enforce", 86400));
        let r = resolver(&fake);
        resolve(&r, "example.test").await;
        fake.set_txt(TxtLookup::NoPolicy(NoPolicy::NxDomain));
        tokio::time::advance(RECHECK_INTERVAL + Duration::from_secs(1)).await;
        resolve(&r, "example.test").await;
        settle().await;
        assert_eq!(
            id_of(&resolve(&r, "example.test").await).as_deref(),
            Some("one")
        );
        assert_eq!(fake.calls(), (2, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn rfc8461_3_1_new_id_fetches_and_replaces_the_policy() {
        let fake = Arc::new(Fake::default());
        fake.publish("one", &policy("enforce", 86400));
        let r = resolver(&fake);
        resolve(&r, "example.test").await;
        // Same id: the TXT check does not fetch.
        tokio::time::advance(RECHECK_INTERVAL + Duration::from_secs(1)).await;
        resolve(&r, "example.test").await;
        settle().await;
        assert_eq!(fake.calls(), (2, 1));
        // New id with a weaker policy (RFC 8461 §8.3 opt-out path): applied after the check.
        fake.publish("two", &policy("testing", 86400));
        tokio::time::advance(RECHECK_INTERVAL + Duration::from_secs(1)).await;
        resolve(&r, "example.test").await;
        settle().await;
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
        let fake = Arc::new(Fake::default());
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
            Resolution::NoPolicy
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
        let fake = Arc::new(Fake::default());
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
        tokio::time::advance(NEGATIVE_TTL).await;
        resolve(&r, "none.test").await;
        assert_eq!(fake.calls().0, 2, "asked again after negative_ttl");

        fake.set_txt(TxtLookup::Temp("timeout".into()));
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
        let fake = Arc::new(Fake::default());
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
        let fake = Arc::new(Fake::default());
        fake.publish("one", &policy("enforce", 86400));
        *fake.delay.lock().unwrap() = Duration::from_secs(10);
        let r = resolver(&fake);
        let start = tokio::time::Instant::now();
        // TXT 10 s + fetch 10 s exceeds the 15 s deadline.
        assert!(matches!(
            resolve(&r, "example.test").await,
            Resolution::Failed(_)
        ));
        assert_eq!(start.elapsed(), Duration::from_secs(15));
        tokio::time::advance(Duration::from_secs(6)).await;
        settle().await;
        *fake.delay.lock().unwrap() = Duration::ZERO;
        assert_eq!(
            id_of(&resolve(&r, "example.test").await).as_deref(),
            Some("one")
        );
        assert_eq!(fake.calls(), (1, 1), "the late discovery filled the cache");
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_cold_lookups_share_one_discovery() {
        let fake = Arc::new(Fake::default());
        fake.publish("one", &policy("enforce", 86400));
        *fake.delay.lock().unwrap() = Duration::from_millis(100);
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
