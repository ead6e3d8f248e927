//! Resolving: Postfix key → policy domain → cached policy, or one shared discovery under a
//! deadline → [`Resolution`].
//!
//! Owns the rules for what the cache holds after a discovery (`decide.rs`, pure), the executor
//! that runs discoveries one per domain and applies decisions (`run.rs`: single flight,
//! deadlines, one cache lock per step) and the background refresh loop (`refresh.rs`). Lookups
//! never wait on the network for a cached domain. Never answers Postfix, never touches sockets.
//! `dane.rs` does the same for DANE states (RFC 7672): cached, discovered once per destination,
//! refreshed before their TTL runs out.
//!
//! May import: `cache`, `discovery`, `dane`, `key`, `policy`, `metrics`, `clock`. Inside:
//! `decide` uses nothing of `run`; `shared` (what the fleet's shared cache gets) reads `decide`'s
//! types; `run` applies both; `refresh` drives `run`; `dane` is the DANE side, on its own.

pub mod dane;
pub mod decide;
pub mod refresh;
mod run;
pub mod shared;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::cache::PolicyEntry;
use crate::key::Skip;
use crate::policy::Policy;

pub use crate::cache::schedule::{Due, FETCH_BACKOFF};
pub use dane::{DaneLookup, DaneResolver};
pub use run::Resolver;

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
    /// How long a failed TXT lookup of a domain with nothing valid cached is answered as a
    /// failure without asking DNS again (zero: asked on every lookup).
    pub dns_failure_ttl: Duration,
    /// How often a cached domain's TXT record is checked.
    pub refresh_interval: Duration,
}

/// Enforce → testing or none, or an mx pattern removed.
pub fn is_weaker(old: &Policy, new: &Policy) -> bool {
    new.mode < old.mode || old.mx.iter().any(|m| !new.mx.contains(m))
}

/// Wall time `SystemTime` helper for logs and `query` output.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
pub(crate) mod tests {
    use std::num::NonZeroUsize;

    use super::*;
    use crate::cache::Cache;
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
                dns_failure_ttl: Duration::from_secs(60),
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
    async fn negative_answers_are_remembered_for_negative_ttl_and_dns_errors_briefly() {
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
        let first = resolve(&r, "temp.test").await;
        let again = resolve(&r, "temp.test").await;
        match (&first, &again) {
            (Resolution::Failed(a), Resolution::Failed(b)) => {
                assert_eq!(a, b, "the remembered failure gives the same reason")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            fake.calls().0,
            3,
            "a DNS failure is remembered for dns_failure_ttl"
        );
        // A recovered resolver is seen once dns_failure_ttl (60 s here) has passed.
        fake.publish("one", &policy("enforce", 86_400));
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(matches!(
            resolve(&r, "temp.test").await,
            Resolution::Failed(_)
        ));
        assert_eq!(fake.calls().0, 3);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            id_of(&resolve(&r, "temp.test").await).as_deref(),
            Some("one")
        );
        assert_eq!(fake.calls().0, 4, "asked again after dns_failure_ttl");
    }

    #[tokio::test(start_paused = true)]
    async fn rfc8461_3_2_max_age_zero_applies_once_and_is_not_cached() {
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
