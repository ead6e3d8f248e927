//! Background refresh (RFC 8461 §3.3, §10.2): every cached domain's TXT record is checked about
//! once per `[refresh] interval`, a changed id is fetched, and every policy is fetched again
//! before it expires. Never answers Postfix.
//!
//! The resolver keeps the schedule (next check per domain) and the rules for applying results;
//! this task only waits for the next due domain and runs at most `concurrency` discoveries at once.
//! In a fleet, [`due`] first lets another host's recent refresh or its lease stand for this one.
//! [`sweep`] is the task that takes expired entries out of memory, a bounded slice per minute.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

use crate::cache::fleet::{Command, Fleet, Found, Lease, Shared, channel};
use crate::cache::schedule::{Scheduled, drive};
use crate::key;
use crate::resolve::{Due, Resolver};

/// How often the expiry sweep runs.
pub const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// Table buckets one sweep looks at (a few milliseconds of work, under the read lock unless
/// something is to go): a full pass over 100,000 entries takes 2 runs, over 1,000,000 (2^21
/// buckets) 32 runs.
pub const SWEEP_BUCKETS: usize = 65_536;
/// How long an expired policy stays before the sweep drops it: the refresh due at its expiry
/// (the last retry is scheduled then, RFC 8461 §10.2) runs first and may still renew it.
pub const EXPIRED_POLICY_GRACE: Duration = Duration::from_secs(600);

impl Scheduled for Resolver {
    fn pop_due(&self) -> Due {
        Resolver::pop_due(self)
    }
    fn now(&self) -> SystemTime {
        self.clock().now()
    }
    fn changed(&self) -> impl std::future::Future<Output = ()> + Send {
        self.schedule_changed()
    }
    async fn check(self: Arc<Self>, domain: String) {
        debug!(domain, "refreshing");
        due(&self, &domain).await;
    }
}

/// Runs until `shutdown` turns true: the background refresh of the policies ([`drive`]).
pub async fn run(resolver: Arc<Resolver>, concurrency: usize, shutdown: watch::Receiver<bool>) {
    drive(resolver, concurrency, shutdown).await;
}

/// One due refresh. In a fleet (`[fleet]`), at most one host refreshes a domain per interval:
/// an entry another host confirmed within the last half interval is taken as this host's check;
/// otherwise the host that gets the domain's lease refreshes (and publishes the result) and the
/// others look again when the lease ends, by when the entry is there, or the holder vanished
/// and the lease is free. Without the server, every host refreshes on its own.
pub async fn due(resolver: &Arc<Resolver>, domain: &str) {
    if let Some(fleet) = resolver.fleet() {
        let now = resolver.clock().now();
        let half = resolver.settings().refresh_interval / 2;
        if let Found::Entry(Shared::Policy { entry, checked }) = fleet.get(domain, now, false).await
            && checked + half > now
            && resolver.take_refreshed(domain, entry, checked).await
        {
            debug!(domain, "refreshed by another host of the fleet");
            resolver.metrics().fleet().refresh_left_to_another_host();
            return;
        }
        if fleet.lease(domain).await == Lease::HeldElsewhere {
            debug!(domain, "another host of the fleet holds the refresh lease");
            resolver.check_at(domain, now + fleet.lease_duration());
            return;
        }
    }
    resolver.refresh(domain).await;
}

/// Runs until `shutdown` turns true or `replaced` does or is dropped: applies the operator verbs that other hosts
/// of the fleet publish on its channel (`cache/fleet/channel.rs`): `ctl evict`, `ctl refresh`,
/// `ctl purge`.
pub async fn follow(
    resolver: Arc<Resolver>,
    fleet: Arc<Fleet>,
    mut shutdown: watch::Receiver<bool>,
    mut replaced: watch::Receiver<bool>,
) {
    let (tx, mut rx) = mpsc::channel(64);
    let (stop, stopped) = watch::channel(false);
    let listener = tokio::spawn(channel::listen(fleet, tx, stopped));
    loop {
        let cmd = tokio::select! {
            c = rx.recv() => c,
            _ = shutdown.wait_for(|s| *s) => None,
            _ = replaced.wait_for(|s| *s) => None,
        };
        let Some(cmd) = cmd else {
            break;
        };
        let verb = cmd.verb();
        match cmd {
            Command::Evict(d) | Command::Refresh(d)
                if key::policy_domain(d.as_bytes()).is_err() =>
            {
                warn!(
                    verb,
                    "fleet command for something that is not a domain; ignored"
                );
            }
            Command::Evict(d) => {
                let dane = resolver.dane().evict(&d);
                if resolver.evict(&d) | dane {
                    warn!(domain = d, "evicted by an operator of the fleet");
                }
            }
            Command::Refresh(d) => {
                let r = resolver.clone();
                tokio::spawn(async move { r.refresh(&d).await });
            }
            Command::Purge => {
                resolver.purge().await;
            }
        }
    }
    let _ = stop.send(true);
    listener.abort();
}

/// Runs until `shutdown` turns true: every [`SWEEP_EVERY`], removes from memory the negatives
/// past their `until` and the policies expired for [`EXPIRED_POLICY_GRACE`], looking at
/// [`SWEEP_BUCKETS`] buckets of the cache's table and resuming where the last run stopped.
/// Without it, an entry nobody looks up again would stay until a full cache evicts it.
pub async fn sweep(resolver: Arc<Resolver>, mut shutdown: watch::Receiver<bool>) {
    let mut from = 0;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(SWEEP_EVERY) => {}
            _ = shutdown.wait_for(|s| *s) => break,
        }
        let now = resolver.clock().now();
        let swept = resolver
            .cache()
            .sweep(from, SWEEP_BUCKETS, now, EXPIRED_POLICY_GRACE);
        from = swept.next;
        if swept.removed > 0 {
            debug!(
                removed = swept.removed,
                examined = swept.examined,
                "expired cache entries removed from memory"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::cache::PolicyEntry;
    use crate::discovery::fake::FakeSource;
    use crate::discovery::{DnsError, FetchError, NoPolicy, TxtLookup};
    use crate::policy::{Mode, parse_policy};
    use crate::resolve::Resolution;
    use crate::resolve::tests::{id_of, policy, resolve, resolver};
    use crate::test_log::Logs;

    const HOUR: Duration = Duration::from_secs(3600);

    fn start(r: &Arc<Resolver>, concurrency: usize) -> watch::Sender<bool> {
        let (tx, rx) = watch::channel(false);
        tokio::spawn(run(r.clone(), concurrency, rx));
        tx
    }

    /// A resolver on `fake` (TXT id "one", each check taking `delay`) with `n` week-long
    /// enforce policies loaded as at start-up.
    fn loaded(fake: &Arc<FakeSource>, n: usize, delay: Duration) -> Arc<Resolver> {
        fake.set_id("one");
        fake.set_delay(delay);
        let r = resolver(fake);
        let week = policy("enforce", 604_800);
        let now = r.clock().now();
        for i in 0..n {
            let p = parse_policy(week.as_bytes()).unwrap();
            r.preload(
                format!("d{i}.test").into(),
                Arc::new(PolicyEntry::new("one".into(), p, now)),
            );
        }
        r
    }

    #[tokio::test(start_paused = true)]
    async fn the_sweep_removes_expired_entries_within_a_few_runs_and_never_valid_ones() {
        let fake = Arc::new(FakeSource::default());
        let r = resolver(&fake);
        let c = r.cache();
        let t0 = r.clock().now();
        let (two_min, day) = (policy("enforce", 120), policy("enforce", 86_400));
        for i in 0..100 {
            for (name, body) in [("short", &two_min), ("long", &day)] {
                let p = parse_policy(body.as_bytes()).unwrap();
                let e = Arc::new(PolicyEntry::new("one".into(), p, t0));
                c.insert_policy(&format!("{name}{i}.test"), e, t0 + HOUR, t0);
            }
            c.insert_negative(
                &format!("gone{i}.test"),
                "none",
                false,
                t0,
                t0 + SWEEP_EVERY / 2,
            );
            c.insert_negative(&format!("kept{i}.test"), "none", false, t0, t0 + 24 * HOUR);
        }
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(sweep(r.clone(), rx));
        let count = |prefix: &str| {
            (0..100)
                .filter(|i| c.view(&format!("{prefix}{i}.test")).is_some())
                .count()
        };
        // The first run, a minute in: the negatives past their `until` are gone.
        tokio::time::sleep(SWEEP_EVERY + Duration::from_secs(1)).await;
        assert_eq!(
            (count("gone"), count("short"), count("long"), count("kept")),
            (0, 100, 100, 100)
        );
        // The two-minute policies go at the first run past their expiry plus the grace.
        tokio::time::sleep(Duration::from_secs(120) + EXPIRED_POLICY_GRACE).await;
        assert_eq!(
            (count("short"), count("long"), count("kept")),
            (0, 100, 100)
        );
        assert!((0..100).all(|i| {
            c.valid_policy(&format!("long{i}.test"), r.clock().now())
                .is_some()
        }));
        assert_eq!(fake.calls(), (0, 0), "the sweep asks no one");
        tx.send(true).unwrap();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn loaded_cache_is_checked_spread_over_the_interval_within_concurrency() {
        let fake = Arc::new(FakeSource::default());
        let r = loaded(&fake, 2000, Duration::from_secs(2));
        let _stop = start(&r, 4);
        tokio::time::sleep(HOUR).await;
        let first_hour = fake.calls().0;
        // Uniform over 24 h: about 83 in the first hour; a herd would be all 2000.
        assert!(first_hour > 20 && first_hour < 200, "{first_hour}");
        tokio::time::sleep(23 * HOUR + Duration::from_secs(600)).await;
        let (txt, fetches) = fake.calls();
        assert!(
            (2000..2400).contains(&txt),
            "every domain checked once: {txt}"
        );
        assert_eq!(fetches, 0, "unchanged ids, far from expiry: no fetch");
        assert!(fake.max_running.load(Ordering::SeqCst) <= 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_round_of_100_000_loaded_entries_never_exceeds_the_concurrency() {
        // Issue 5: checks slower than they arrive (60 s each, ~1.2 due per second), so the
        // refresh task is saturated for the whole day and the bound is what limits it.
        let fake = Arc::new(FakeSource::default());
        let r = loaded(&fake, 100_000, Duration::from_secs(60));
        let _stop = start(&r, 16);
        tokio::time::sleep(25 * HOUR).await;
        let (txt, _) = fake.calls();
        // 16 at a time for 25 h at 60 s each: about 24,000 checks.
        assert!((20_000..=24_100).contains(&txt), "{txt} checks");
        assert_eq!(fake.max_running.load(Ordering::SeqCst), 16);
    }

    #[tokio::test(start_paused = true)]
    async fn rfc8461_10_2_refetched_before_expiry_even_when_the_txt_record_is_gone() {
        let fake = Arc::new(FakeSource::default());
        fake.publish("one", &policy("enforce", 172_800));
        let r = resolver(&fake);
        resolve(&r, "example.test").await;
        let _stop = start(&r, 2);
        fake.set_txt(TxtLookup::NoPolicy(NoPolicy::NxDomain));
        let renewed = "version: STSv1\nmode: enforce\nmx: mx2.example.test\nmax_age: 172800\n";
        fake.set_fetch(Ok(renewed.as_bytes().to_vec()));
        // Lead time is min(interval, max_age/2) = 24 h: fetched again by 24 h after the first fetch.
        tokio::time::sleep(25 * HOUR).await;
        let Resolution::Policy(e) = resolve(&r, "example.test").await else {
            panic!("policy lost");
        };
        assert_eq!(
            e.policy.mx.get(0).unwrap().policy_form(),
            "mx2.example.test"
        );
        assert_eq!(&*e.id, "one", "kept under the cached id");
        // Valid well past the first policy's expiry (48 h).
        tokio::time::sleep(30 * HOUR).await;
        assert!(matches!(
            resolve(&r, "example.test").await,
            Resolution::Policy(_)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn body_changed_while_the_id_stays_is_seen_at_the_refetch_before_expiry() {
        let fake = Arc::new(FakeSource::default());
        fake.publish("one", &policy("enforce", 604_800));
        let r = resolver(&fake);
        resolve(&r, "example.test").await;
        let _stop = start(&r, 2);
        let changed = "version: STSv1\nmode: enforce\nmx: other.example.test\nmax_age: 604800\n";
        fake.set_fetch(Ok(changed.as_bytes().to_vec()));
        // Daily TXT checks see the same id and do not fetch ...
        tokio::time::sleep(3 * 24 * HOUR).await;
        assert_eq!(fake.calls().1, 1);
        // ... until a day before expiry, when the policy is fetched whatever the id says.
        tokio::time::sleep(4 * 24 * HOUR).await;
        let Resolution::Policy(e) = resolve(&r, "example.test").await else {
            panic!("policy lost");
        };
        assert_eq!(
            e.policy.mx.get(0).unwrap().policy_form(),
            "other.example.test"
        );
    }

    /// The TXT re-check of RFC 8461 §3.3 runs on this schedule, never on the lookup path: a hit
    /// is answered from the cache at once however long ago the domain was checked, also while a
    /// scheduled check is still waiting for DNS.
    #[tokio::test(start_paused = true)]
    async fn hits_never_wait_for_dns_even_while_a_scheduled_check_hangs() {
        let fake = Arc::new(FakeSource::default());
        fake.publish("one", &policy("enforce", 604_800));
        let r = resolver(&fake);
        resolve(&r, "example.test").await;
        let _stop = start(&r, 2);
        // Every DNS and HTTPS answer now takes six hours.
        fake.set_delay(6 * HOUR);
        for hour in 1..=48 {
            tokio::time::sleep(HOUR).await;
            let asked = tokio::time::Instant::now();
            assert_eq!(
                id_of(&resolve(&r, "example.test").await).as_deref(),
                Some("one"),
                "hour {hour}"
            );
            assert_eq!(
                asked.elapsed(),
                Duration::ZERO,
                "hour {hour}: the hit waited"
            );
        }
        // Meanwhile the scheduled check did ask DNS.
        assert!(fake.calls().0 >= 2, "{:?}", fake.calls());
    }

    #[tokio::test(start_paused = true)]
    async fn expiry_with_every_refresh_failing_ends_in_no_policy_warned_once_per_backoff() {
        let (logs, _guard) = Logs::capture(tracing::Level::WARN);
        let fake = Arc::new(FakeSource::default());
        fake.publish("one", &policy("enforce", 7200));
        let r = resolver(&fake);
        resolve(&r, "example.test").await;
        let _stop = start(&r, 2);
        fake.set_txt(TxtLookup::Temp(DnsError::ServFail));
        fake.set_fetch(Err(FetchError::Timeout));
        tokio::time::sleep(HOUR + Duration::from_secs(1800)).await;
        // Still served while the failures are backed off.
        assert_eq!(
            id_of(&resolve(&r, "example.test").await).as_deref(),
            Some("one")
        );
        tokio::time::sleep(HOUR).await;
        assert!(matches!(
            resolve(&r, "example.test").await,
            Resolution::Failed(_)
        ));
        let (txt, _) = fake.calls();
        // First check 1 h before expiry, then back-offs of 5, 10, 20 min ... (RFC 8461 §3.3).
        assert!((3..=7).contains(&txt), "attempts: {txt}");
        assert_eq!(logs.count("refresh failed"), 1, "{}", logs.text());
    }

    #[tokio::test(start_paused = true)]
    async fn mode_none_with_a_new_id_cancels_and_the_downgrade_is_warned() {
        let (logs, _guard) = Logs::capture(tracing::Level::WARN);
        let fake = Arc::new(FakeSource::default());
        fake.publish("one", &policy("enforce", 604_800));
        let r = resolver(&fake);
        resolve(&r, "example.test").await;
        fake.publish("two", "version: STSv1\nmode: none\nmax_age: 604800\n");
        r.refresh("example.test").await;
        let Resolution::Policy(e) = resolve(&r, "example.test").await else {
            panic!("mode none is cached like any policy");
        };
        assert_eq!(e.policy.mode, Mode::None);
        let text = logs.text();
        assert_eq!(logs.count("policy weakened"), 1, "{text}");
        assert!(
            text.contains("old_mode=enforce") && text.contains("new_mode=none"),
            "{text}"
        );
        // A vanished TXT record alone is not a downgrade: nothing new is logged at warn for it
        // beyond the one refresh warning.
        fake.set_txt(TxtLookup::NoPolicy(NoPolicy::NxDomain));
        r.refresh("example.test").await;
        assert_eq!(logs.count("policy weakened"), 1);
    }
}
