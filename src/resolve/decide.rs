//! The resolver's rules, as a pure function: what the cache held, what a discovery found and
//! the time → the resolution to answer with and the changes to make to the cache, the journal
//! and the schedule. No I/O, no clock, no locks: `run.rs` applies a [`Decision`].
//!
//! Enforces RFC 8461 as it applies to a cache: a valid cached policy survives DNS and HTTPS
//! failures and a vanished TXT record (§3.1, §3.3, §5.1); an unchanged TXT id needs no fetch
//! (§3.1); a failed fetch is retried no sooner than five minutes later (§3.3) and a failed TXT
//! lookup no sooner than `[cache] dns_failure_ttl` later; a policy is fetched again before it
//! expires (§10.2); `max_age: 0` applies once and is not kept (§3.2).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::cache::journal::Record;
use crate::cache::schedule::{FETCH_BACKOFF, Timing};
use crate::cache::{Change, PolicyEntry, PolicyState};
use crate::discovery::{DnsError, FetchFailure, Known, NoPolicy, Outcome};

use super::{Resolution, is_weaker};

/// What to do after one discovery.
#[derive(Debug, Clone)]
pub struct Decision {
    /// The answer for the lookups waiting on the discovery.
    pub resolution: Resolution,
    /// The one change to the in-memory cache (its next check, if any, goes on the schedule).
    pub change: Change,
    pub journal: Journal,
    /// What happened, for the log and the counters.
    pub event: Event,
}

/// What the journal must record.
#[derive(Debug, Clone)]
pub enum Journal {
    Nothing,
    /// On disk before the waiting lookups are answered: trust on first use must survive a
    /// crash (RFC 8461 §10.2).
    BeforeAnswer(Record),
    /// Written in the background: losing it in a crash costs one discovery, so no lookup waits
    /// on the disk for it. Written only if the cache change was applied.
    Background(Record),
}

/// What a decision means, for logs and metrics.
#[derive(Debug, Clone)]
pub enum Event {
    /// A policy was fetched and cached. `old` is the valid policy it replaced.
    Fetched {
        new: Arc<PolicyEntry>,
        old: Option<Arc<PolicyEntry>>,
        /// `max_age` was above RFC 8461 §3.2's limit and was cut to one year.
        clamped: bool,
        /// The new policy is weaker than the one it replaced: a warning and a counted downgrade.
        weaker: bool,
    },
    /// `max_age: 0`: applied to this lookup only, removed from the cache and the journal.
    FetchedOnce { entry: Arc<PolicyEntry> },
    /// The TXT id matches the cached policy.
    Unchanged { id: String },
    /// Nothing usable is published and nothing valid is cached. `dropped` when an expired
    /// policy was still in the cache.
    NoPolicy { reason: String, dropped: bool },
    /// The TXT lookup failed and nothing valid is cached: remembered as a failure for
    /// `remembered` (`[cache] dns_failure_ttl`, short so that a DNS hiccup cannot hide a policy
    /// for long; zero: not remembered). `dropped` as above.
    DnsFailed {
        reason: String,
        /// The failure's one-word class (timeout, refused, servfail, ...).
        class: &'static str,
        remembered: Duration,
        dropped: bool,
    },
    /// The fetch failed and nothing valid is cached: backed off (RFC 8461 §3.3).
    FetchFailed { id: String, failure: FetchFailure },
    /// Something failed but a valid policy is cached: it stays (RFC 8461 §3.3, §5.1).
    Kept {
        entry: Arc<PolicyEntry>,
        failures: u32,
        reason: String,
    },
    /// The cached policy expired while the discovery ran; the TXT id was unchanged.
    ExpiredMeanwhile,
}

/// What to tell the discovery about the cached policy (RFC 8461 §3.1 id short-cut, §10.2
/// refetch before expiry).
pub fn known<'a>(state: Option<&'a PolicyState>, now: SystemTime, timing: &Timing) -> Known<'a> {
    match state.map(|s| &s.entry).filter(|e| e.is_valid(now)) {
        None => Known::Nothing,
        Some(e) if timing.must_refetch(e, now) => Known::Refetch(&e.id),
        Some(e) => Known::Valid(&e.id),
    }
}

/// The rules. `state` is what the cache held when the discovery started; `now` is when it
/// ended.
pub fn decide(
    domain: &str,
    state: Option<&PolicyState>,
    outcome: Outcome,
    now: SystemTime,
    timing: &Timing,
) -> Decision {
    let cached = state.map(|s| s.entry.clone()).filter(|e| e.is_valid(now));
    let reason = match outcome {
        Outcome::Fetched { id, policy } => {
            let clamped = policy.max_age_clamped;
            let entry = Arc::new(PolicyEntry::new(id, policy, now));
            if entry.policy.max_age == 0 {
                // RFC 8461 §3.2: a max_age of 0 means the policy must not be kept; remove it
                // from disk too, or a restart would serve the previous policy again.
                return Decision {
                    resolution: Resolution::Policy(entry.clone()),
                    change: Change::Remove,
                    journal: Journal::Background(Record::Remove {
                        domain: domain.into(),
                    }),
                    event: Event::FetchedOnce { entry },
                };
            }
            let weaker = cached
                .as_deref()
                .is_some_and(|o| is_weaker(&o.policy, &entry.policy));
            return store_policy(domain, entry, cached, clamped, weaker, now, timing);
        }
        Outcome::Unchanged { id } => {
            return match cached {
                Some(e) => Decision {
                    resolution: Resolution::Policy(e.clone()),
                    change: Change::Checked {
                        next_check: timing.next_check(&e, now),
                        error: None,
                    },
                    journal: Journal::Nothing,
                    event: Event::Unchanged { id },
                },
                None => Decision {
                    resolution: Resolution::NoPolicy,
                    change: Change::None,
                    journal: Journal::Nothing,
                    event: Event::ExpiredMeanwhile,
                },
            };
        }
        Outcome::NoPolicy(why) => {
            if cached.is_none() {
                return no_policy(domain, state.is_some(), &why, now, timing);
            }
            // RFC 8461 §3.1, §5.1: a vanished TXT record does not cancel a cached policy.
            format!("no usable TXT record now ({why})")
        }
        Outcome::DnsTemp(why) => {
            if cached.is_none() {
                return dns_failed(domain, state.is_some(), &why, now, timing);
            }
            format!("TXT lookup failed: {why}")
        }
        Outcome::FetchFailed { id, failure } => {
            if cached.is_none() {
                let reason: Arc<str> = failure.to_string().into();
                return Decision {
                    resolution: Resolution::Failed(reason.clone()),
                    // RFC 8461 §3.3: back off at least five minutes before fetching again.
                    // Not journalled: a restart may try again at once.
                    change: Change::Negative {
                        reason,
                        failure: true,
                        until: now + FETCH_BACKOFF,
                    },
                    journal: Journal::Nothing,
                    event: Event::FetchFailed { id, failure },
                };
            }
            format!(
                "policy fetch for id {id} failed [{}]: {failure}",
                failure.report_class()
            )
        }
    };
    // A failure with a valid cached policy: keep serving it and back off.
    let Some(e) = cached else {
        return Decision {
            resolution: Resolution::NoPolicy,
            change: Change::None,
            journal: Journal::Nothing,
            event: Event::ExpiredMeanwhile,
        };
    };
    let failures = state.map_or(1, |s| s.failures.saturating_add(1));
    Decision {
        resolution: Resolution::Policy(e.clone()),
        change: Change::Checked {
            next_check: timing.retry_at(&e, failures, now),
            error: Some(reason.as_str().into()),
        },
        journal: Journal::Nothing,
        event: Event::Kept {
            entry: e,
            failures,
            reason,
        },
    }
}

/// A failed TXT lookup with nothing valid cached: answered as a failure, and remembered for
/// `dns_failure_ttl` so that a resolver outage costs one DNS timeout per domain per period, not
/// one per lookup. Memory only: a restart may ask again. An expired policy still cached is
/// dropped from memory and disk.
fn dns_failed(
    domain: &str,
    dropped: bool,
    why: &DnsError,
    now: SystemTime,
    timing: &Timing,
) -> Decision {
    let reason: Arc<str> = why.to_string().into();
    let ttl = timing.dns_failure_ttl;
    let change = if !ttl.is_zero() {
        Change::Negative {
            reason: reason.clone(),
            failure: true,
            until: now + ttl,
        }
    } else if dropped {
        Change::Remove
    } else {
        Change::None
    };
    Decision {
        resolution: Resolution::Failed(reason.clone()),
        change,
        journal: if dropped {
            Journal::Background(Record::Remove {
                domain: domain.into(),
            })
        } else {
            Journal::Nothing
        },
        event: Event::DnsFailed {
            reason: reason.to_string(),
            class: why.label(),
            remembered: ttl,
            dropped,
        },
    }
}

fn no_policy(
    domain: &str,
    dropped: bool,
    why: &NoPolicy,
    now: SystemTime,
    timing: &Timing,
) -> Decision {
    let reason = why.to_string();
    let until = now + timing.negative_ttl;
    Decision {
        resolution: Resolution::NoPolicy,
        change: Change::Negative {
            reason: reason.as_str().into(),
            failure: false,
            until,
        },
        journal: Journal::Background(Record::Negative {
            domain: domain.into(),
            reason: reason.clone(),
            until,
        }),
        event: Event::NoPolicy { reason, dropped },
    }
}

/// An operator's `import`: taken when unexpired and fetched later than the valid policy the
/// cache holds (a newer local fetch always wins). `None` when refused.
pub fn import(
    domain: &str,
    cached: Option<&PolicyEntry>,
    entry: Arc<PolicyEntry>,
    now: SystemTime,
    timing: &Timing,
) -> Option<Decision> {
    if !entry.is_valid(now) {
        return None;
    }
    if cached.is_some_and(|cur| cur.is_valid(now) && cur.fetched >= entry.fetched) {
        return None;
    }
    Some(store_policy(domain, entry, None, false, false, now, timing))
}

/// Cache `entry` and answer with it; on disk before anyone is answered (trust on first use must
/// survive a crash, RFC 8461 §10.2).
fn store_policy(
    domain: &str,
    entry: Arc<PolicyEntry>,
    old: Option<Arc<PolicyEntry>>,
    clamped: bool,
    weaker: bool,
    now: SystemTime,
    timing: &Timing,
) -> Decision {
    Decision {
        resolution: Resolution::Policy(entry.clone()),
        change: Change::Policy {
            entry: entry.clone(),
            next_check: timing.next_check(&entry, now),
        },
        journal: Journal::BeforeAnswer(Record::Policy {
            domain: domain.into(),
            entry: entry.clone(),
        }),
        event: Event::Fetched {
            new: entry,
            old,
            clamped,
            weaker,
        },
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::discovery::{DnsError, FetchError, NoPolicy};
    use crate::policy::{TxtError, parse_policy};

    const HOUR: Duration = Duration::from_secs(3600);

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn timing() -> Timing {
        Timing::new(HOUR * 24, HOUR)
    }

    fn policy(mode: &str, max_age: u32, mx: &str) -> crate::policy::Policy {
        let body = format!("version: STSv1\nmode: {mode}\nmx: {mx}\nmax_age: {max_age}\n");
        parse_policy(body.as_bytes()).unwrap()
    }

    fn state(id: &str, mode: &str, fetched: SystemTime, failures: u32) -> PolicyState {
        PolicyState {
            entry: Arc::new(PolicyEntry::new(
                id.into(),
                policy(mode, 86_400, "mx.example.test"),
                fetched,
            )),
            next_check: fetched,
            failures,
            last_error: None,
            hits: 0,
        }
    }

    fn kept_id(d: &Decision) -> Option<&str> {
        match &d.resolution {
            Resolution::Policy(e) => Some(&e.id),
            _ => None,
        }
    }

    #[test]
    fn rfc8461_3_1_new_policy_is_journalled_before_it_is_answered() {
        let d = decide(
            "example.test",
            None,
            Outcome::Fetched {
                id: "one".into(),
                policy: policy("enforce", 86_400, "mx.example.test"),
            },
            now(),
            &timing(),
        );
        assert_eq!(kept_id(&d), Some("one"));
        assert!(matches!(d.change, Change::Policy { .. }));
        assert!(matches!(
            d.journal,
            Journal::BeforeAnswer(Record::Policy { .. })
        ));
        assert!(matches!(
            d.event,
            Event::Fetched {
                old: None,
                weaker: false,
                ..
            }
        ));
    }

    #[test]
    fn rfc8461_3_1_unchanged_id_only_moves_the_next_check() {
        let s = state("one", "enforce", now() - HOUR, 2);
        let d = decide(
            "example.test",
            Some(&s),
            Outcome::Unchanged { id: "one".into() },
            now(),
            &timing(),
        );
        assert_eq!(kept_id(&d), Some("one"));
        assert!(matches!(d.change, Change::Checked { error: None, .. }));
        assert!(matches!(d.journal, Journal::Nothing));
    }

    #[test]
    fn rfc8461_5_1_vanished_txt_record_keeps_the_valid_policy_and_backs_off() {
        let s = state("one", "enforce", now() - HOUR, 0);
        let d = decide(
            "example.test",
            Some(&s),
            Outcome::NoPolicy(NoPolicy::NxDomain),
            now(),
            &timing(),
        );
        assert_eq!(kept_id(&d), Some("one"));
        match d.change {
            Change::Checked {
                next_check,
                error: Some(_),
            } => assert_eq!(next_check, now() + FETCH_BACKOFF),
            other => panic!("{other:?}"),
        }
        assert!(matches!(d.event, Event::Kept { failures: 1, .. }));
    }

    #[test]
    fn rfc8461_3_3_failures_in_a_row_back_off_longer_and_keep_the_policy() {
        let s = state("one", "enforce", now() - HOUR, 2);
        let d = decide(
            "example.test",
            Some(&s),
            Outcome::FetchFailed {
                id: "two".into(),
                failure: FetchFailure::Fetch(FetchError::Timeout),
            },
            now(),
            &timing(),
        );
        assert_eq!(kept_id(&d), Some("one"));
        match d.change {
            Change::Checked { next_check, .. } => {
                assert_eq!(next_check, now() + FETCH_BACKOFF * 4)
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(d.event, Event::Kept { failures: 3, .. }));
    }

    #[test]
    fn rfc8461_3_3_fetch_failure_with_nothing_cached_is_backed_off_not_journalled() {
        let d = decide(
            "example.test",
            None,
            Outcome::FetchFailed {
                id: "one".into(),
                failure: FetchFailure::Fetch(FetchError::Timeout),
            },
            now(),
            &timing(),
        );
        assert!(matches!(d.resolution, Resolution::Failed(_)));
        match d.change {
            Change::Negative { failure, until, .. } => {
                assert!(failure);
                assert_eq!(until, now() + FETCH_BACKOFF);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(d.journal, Journal::Nothing));
    }

    #[test]
    fn no_policy_is_remembered_for_negative_ttl_in_the_background() {
        let d = decide(
            "example.test",
            None,
            Outcome::NoPolicy(NoPolicy::Txt(TxtError::NoStsRecord)),
            now(),
            &timing(),
        );
        assert!(matches!(d.resolution, Resolution::NoPolicy));
        match &d.change {
            Change::Negative { failure, until, .. } => {
                assert!(!failure);
                assert_eq!(*until, now() + HOUR);
            }
            other => panic!("{other:?}"),
        }
        // Nobody waits on the disk for a negative: losing it costs one more discovery.
        assert!(matches!(
            d.journal,
            Journal::Background(Record::Negative { .. })
        ));
    }

    #[test]
    fn dns_failure_with_nothing_cached_is_remembered_in_memory_until_the_ttl() {
        let t = timing().with_dns_failure_ttl(Duration::from_secs(60));
        let d = decide(
            "example.test",
            None,
            Outcome::DnsTemp(DnsError::Timeout),
            now(),
            &t,
        );
        match &d.resolution {
            Resolution::Failed(r) => assert_eq!(&**r, "DNS timeout"),
            other => panic!("{other:?}"),
        }
        match &d.change {
            Change::Negative {
                reason,
                failure,
                until,
            } => {
                assert!(failure, "answered as a failure, not as \"no policy\"");
                assert_eq!(
                    &**reason, "DNS timeout",
                    "the same reason as the fresh failure"
                );
                assert_eq!(*until, now() + Duration::from_secs(60));
            }
            other => panic!("{other:?}"),
        }
        // Memory only: a restart may ask DNS again.
        assert!(matches!(d.journal, Journal::Nothing));
        assert!(matches!(
            d.event,
            Event::DnsFailed {
                class: "timeout",
                dropped: false,
                ..
            }
        ));
    }

    #[test]
    fn rfc8461_3_3_dns_failure_never_replaces_a_valid_policy() {
        let t = timing().with_dns_failure_ttl(Duration::from_secs(60));
        let s = state("one", "enforce", now() - HOUR, 0);
        let d = decide(
            "example.test",
            Some(&s),
            Outcome::DnsTemp(DnsError::ServFail),
            now(),
            &t,
        );
        assert_eq!(kept_id(&d), Some("one"));
        assert!(
            matches!(d.change, Change::Checked { error: Some(_), .. }),
            "{:?}",
            d.change
        );
        assert!(matches!(d.journal, Journal::Nothing));
        assert!(matches!(d.event, Event::Kept { failures: 1, .. }));
    }

    #[test]
    fn dns_failure_over_an_expired_policy_is_remembered_and_drops_it_from_disk() {
        let t = timing().with_dns_failure_ttl(Duration::from_secs(60));
        let expired = state("one", "enforce", now() - HOUR * 48, 0);
        let d = decide(
            "example.test",
            Some(&expired),
            Outcome::DnsTemp(DnsError::ServFail),
            now(),
            &t,
        );
        assert!(matches!(d.resolution, Resolution::Failed(_)));
        assert!(matches!(d.change, Change::Negative { failure: true, .. }));
        assert!(matches!(
            d.journal,
            Journal::Background(Record::Remove { .. })
        ));
        assert!(matches!(d.event, Event::DnsFailed { dropped: true, .. }));
    }

    #[test]
    fn dns_failure_ttl_zero_remembers_nothing_and_drops_an_expired_policy() {
        let t = timing().with_dns_failure_ttl(Duration::ZERO);
        let fresh = decide(
            "example.test",
            None,
            Outcome::DnsTemp(DnsError::ServFail),
            now(),
            &t,
        );
        assert!(matches!(fresh.resolution, Resolution::Failed(_)));
        assert!(matches!(fresh.change, Change::None));
        assert!(matches!(fresh.journal, Journal::Nothing));

        let expired = state("one", "enforce", now() - HOUR * 48, 0);
        let d = decide(
            "example.test",
            Some(&expired),
            Outcome::DnsTemp(DnsError::ServFail),
            now(),
            &t,
        );
        assert!(matches!(d.resolution, Resolution::Failed(_)));
        assert!(matches!(d.change, Change::Remove));
        assert!(matches!(
            d.journal,
            Journal::Background(Record::Remove { .. })
        ));
        assert!(matches!(d.event, Event::DnsFailed { dropped: true, .. }));
    }

    #[test]
    fn rfc8461_3_2_max_age_zero_applies_once_and_is_removed_from_memory_and_disk() {
        let s = state("one", "enforce", now() - HOUR, 0);
        let d = decide(
            "example.test",
            Some(&s),
            Outcome::Fetched {
                id: "two".into(),
                policy: policy("enforce", 0, "mx.example.test"),
            },
            now(),
            &timing(),
        );
        assert_eq!(kept_id(&d), Some("two"));
        assert!(matches!(d.change, Change::Remove));
        assert!(matches!(
            d.journal,
            Journal::Background(Record::Remove { .. })
        ));
    }

    #[test]
    fn a_weaker_replacement_is_flagged() {
        let s = state("one", "enforce", now() - HOUR, 0);
        let d = decide(
            "example.test",
            Some(&s),
            Outcome::Fetched {
                id: "two".into(),
                policy: policy("testing", 86_400, "mx.example.test"),
            },
            now(),
            &timing(),
        );
        assert!(matches!(
            d.event,
            Event::Fetched {
                weaker: true,
                old: Some(_),
                ..
            }
        ));
    }

    #[test]
    fn rfc8461_10_2_refetch_close_to_expiry_whatever_the_txt_id() {
        let t = timing();
        let s = state("one", "enforce", now() - HOUR, 0);
        assert_eq!(known(Some(&s), now(), &t), Known::Valid("one"));
        let late = now() + HOUR * 22;
        assert_eq!(known(Some(&s), late, &t), Known::Refetch("one"));
        let gone = now() + HOUR * 24;
        assert_eq!(known(Some(&s), gone, &t), Known::Nothing);
        assert_eq!(known(None, now(), &t), Known::Nothing);
    }

    #[test]
    fn import_takes_only_newer_unexpired_policies() {
        let t = timing();
        let cur = state("one", "enforce", now() - HOUR, 0).entry;
        let older = Arc::new(PolicyEntry::new(
            "old".into(),
            policy("enforce", 86_400, "mx.example.test"),
            now() - HOUR * 2,
        ));
        let newer = Arc::new(PolicyEntry::new(
            "new".into(),
            policy("enforce", 86_400, "mx.example.test"),
            now() - Duration::from_secs(60),
        ));
        let expired = Arc::new(PolicyEntry::new(
            "gone".into(),
            policy("enforce", 60, "mx.example.test"),
            now() - HOUR,
        ));
        assert!(import("example.test", Some(&cur), older, now(), &t).is_none());
        assert!(import("example.test", None, expired, now(), &t).is_none());
        let d = import("example.test", Some(&cur), newer, now(), &t).unwrap();
        assert_eq!(kept_id(&d), Some("new"));
        assert!(matches!(d.journal, Journal::BeforeAnswer(_)));
    }
}
