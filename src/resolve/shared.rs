//! What of a decision the fleet's shared cache gets (`[fleet]`): a fetched or re-confirmed
//! policy with the time it was confirmed, a "no policy" with its remaining time, the removal of
//! a `max_age: 0` policy (RFC 8461 §3.2: not to be kept anywhere). Failures are not shared: a
//! DNS or HTTPS failure may be this host's own network, and a cached policy outlives them
//! (RFC 8461 §3.3) on every host anyway.
//!
//! Pure apart from [`send`], which hands the result to the fleet in the background. Uses
//! `decide`'s types; `run` calls it.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::cache::Change;
use crate::cache::fleet::{Fleet, Shared};

use super::Resolution;
use super::decide::Event;

/// One change to the shared cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Share {
    Put(Shared),
    Forget,
}

/// The change a decision makes to the shared cache, if any; `now` is when it was decided.
pub fn to_share(
    resolution: &Resolution,
    event: &Event,
    change: &Change,
    now: SystemTime,
) -> Option<Share> {
    match (event, change) {
        // RFC 8461 §3.1: the TXT id is unchanged, so the cached policy is confirmed now.
        (Event::Unchanged { .. }, Change::Checked { error: None, .. }) => match resolution {
            Resolution::Policy(e) => Some(Share::Put(Shared::Policy {
                entry: e.clone(),
                checked: now,
            })),
            _ => None,
        },
        (Event::Fetched { new, .. }, Change::Policy { entry, .. }) if Arc::ptr_eq(new, entry) => {
            Some(Share::Put(Shared::Policy {
                entry: new.clone(),
                checked: new.fetched,
            }))
        }
        (Event::FetchedOnce { .. }, _) => Some(Share::Forget),
        (
            Event::NoPolicy { reason, .. },
            Change::Negative {
                failure: false,
                until,
                ..
            },
        ) => Some(Share::Put(Shared::Negative {
            reason: reason.clone(),
            until: *until,
        })),
        _ => None,
    }
}

/// Hands `share` to the fleet without waiting for the server.
pub fn send(fleet: &Arc<Fleet>, domain: &str, share: Share, now: SystemTime) {
    match share {
        Share::Put(s) => fleet.publish(domain, s, now),
        Share::Forget => {
            let fleet = fleet.clone();
            let domain = domain.to_string();
            tokio::spawn(async move {
                let _ = fleet.forget(&domain).await;
            });
        }
    }
}

/// Whether two times fall in the same second (the shared format keeps whole seconds).
pub fn same_second(a: SystemTime, b: SystemTime) -> bool {
    let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    secs(a) == secs(b)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::cache::PolicyEntry;
    use crate::policy::parse_policy;

    fn entry() -> Arc<PolicyEntry> {
        let p =
            parse_policy(b"version: STSv1\nmode: enforce\nmx: mx.example.test\nmax_age: 86400\n")
                .unwrap();
        Arc::new(PolicyEntry::new(
            "one".into(),
            p,
            UNIX_EPOCH + Duration::from_secs(1000),
        ))
    }

    #[test]
    fn fetched_policies_and_no_policy_are_shared_failures_are_not() {
        let e = entry();
        let r = Resolution::Policy(e.clone());
        let fetched = Event::Fetched {
            new: e.clone(),
            old: None,
            clamped: false,
            weaker: false,
        };
        let change = Change::Policy {
            entry: e.clone(),
            next_check: UNIX_EPOCH,
        };
        assert_eq!(
            to_share(&r, &fetched, &change, UNIX_EPOCH),
            Some(Share::Put(Shared::Policy {
                entry: e.clone(),
                checked: e.fetched
            }))
        );
        let until = UNIX_EPOCH + Duration::from_secs(5000);
        let none = Event::NoPolicy {
            reason: "NXDOMAIN".into(),
            dropped: false,
        };
        let negative = |failure| Change::Negative {
            reason: "NXDOMAIN".into(),
            failure,
            until,
        };
        assert_eq!(
            to_share(&r, &none, &negative(false), UNIX_EPOCH),
            Some(Share::Put(Shared::Negative {
                reason: "NXDOMAIN".into(),
                until
            }))
        );
        assert_eq!(to_share(&r, &none, &negative(true), UNIX_EPOCH), None);
        assert_eq!(
            to_share(
                &r,
                &Event::FetchedOnce { entry: e.clone() },
                &Change::Remove,
                UNIX_EPOCH
            ),
            Some(Share::Forget),
            "RFC 8461 §3.2: max_age 0 is kept nowhere"
        );
        let kept = Event::Kept {
            entry: e,
            failures: 1,
            reason: "timeout".into(),
        };
        let checked = Change::Checked {
            next_check: until,
            error: Some("timeout".into()),
        };
        assert_eq!(to_share(&r, &kept, &checked, UNIX_EPOCH), None);
        let now = UNIX_EPOCH + Duration::from_secs(2000);
        let unchanged = Event::Unchanged { id: "one".into() };
        let ok = Change::Checked {
            next_check: until,
            error: None,
        };
        assert_eq!(
            to_share(&r, &unchanged, &ok, now),
            Some(Share::Put(Shared::Policy {
                entry: entry(),
                checked: now
            })),
            "RFC 8461 §3.1: an unchanged id confirms the policy"
        );
    }
}
